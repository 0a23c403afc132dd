//! berth's API through real kubectl against the emulator: the generated CRDs install (and pass client-side
//! dry-run), the chart's examples apply, malformed objects are refused with the offending field named, and
//! `kubectl explain`, `kubectl scale` and the printer columns work on berth's kinds.

mod support;

use support::*;

fn crds_yaml() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("crds")
        .output()
        .expect("berth crds runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn crds_dry_run_apply_examples_and_explain() {
    if !kubectl_available("crds_dry_run_apply_examples_and_explain") {
        return;
    }
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    let crds = crds_yaml();
    let dry = kubectl_ok(kc, &["apply", "--dry-run=client", "-f", "-"], Some(&crds));
    assert_eq!(dry.matches("(dry run)").count(), 5, "{dry}");
    kubectl_ok(kc, &["apply", "-f", "-"], Some(&crds));
    // `kubectl apply` (JSON) rather than `kubectl create namespace`, which sends protobuf the emulator refuses.
    kubectl_ok(
        kc,
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: berth-system}\n"),
    );
    let examples = format!("{}/charts/berth/examples", env!("CARGO_MANIFEST_DIR"));
    let applied = kubectl_ok(kc, &["apply", "-f", &examples], None);
    assert!(
        applied.contains("machinedeployment.berth.dev/general created"),
        "{applied}"
    );

    let explain = kubectl_ok(
        kc,
        &[
            "explain",
            "machinedeployments.spec.strategy.rollingUpdate.maxSurge",
        ],
        None,
    );
    assert!(
        explain.contains("Machines that may exist above replicas during the rollout"),
        "{explain}"
    );

    kubectl_ok(
        kc,
        &[
            "-n",
            "berth-system",
            "scale",
            "machinedeployment/general",
            "--replicas=7",
        ],
        None,
    );
    let replicas = kubectl_ok(
        kc,
        &[
            "-n",
            "berth-system",
            "get",
            "md",
            "general",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        None,
    );
    assert_eq!(replicas, "7");

    let header = kubectl_ok(kc, &["get", "machines", "-A"], None);
    let table = kubectl_ok(
        kc,
        &["get", "machinedeployments", "-n", "berth-system"],
        None,
    );
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .starts_with(&["NAME", "REPLICAS", "READY", "UPDATED", "AVAILABLE"]),
        "{table}"
    );
    assert!(
        header.is_empty() || header.contains("No resources"),
        "{header}"
    );
    let all = kubectl_ok(kc, &["get", "berth", "-A"], None);
    assert!(
        all.contains("machineclass.berth.dev/general")
            && all.contains("machinedeployment.berth.dev/general"),
        "category berth lists every kind: {all}"
    );
}

#[test]
fn malformed_objects_are_refused_naming_the_field() {
    if !kubectl_available("malformed_objects_are_refused_naming_the_field") {
        return;
    }
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    kubectl_ok(kc, &["apply", "-f", "-"], Some(&crds_yaml()));
    let cases = [
        (
            "missing classRef",
            "apiVersion: berth.dev/v1alpha1\nkind: Machine\nmetadata: {name: m1, namespace: default}\nspec: {nodeLabels: {a: b}}\n",
            "spec.classRef",
        ),
        (
            "capacity type not in the enum",
            "apiVersion: berth.dev/v1alpha1\nkind: MachineClass\nmetadata: {name: c1}\nspec:\n  image: {id: ami-0123}\n  capacityTypes: [cheap]\n  subnets: {ids: [s]}\n  securityGroups: {ids: [g]}\n  instanceProfile: p\n",
            "spec.capacityTypes[0]",
        ),
        (
            "replicas of the wrong type",
            "apiVersion: berth.dev/v1alpha1\nkind: MachineSet\nmetadata: {name: s1, namespace: default}\nspec:\n  replicas: many\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {classRef: {name: c}}}\n",
            "spec.replicas",
        ),
        (
            "negative replicas",
            "apiVersion: berth.dev/v1alpha1\nkind: MachineDeployment\nmetadata: {name: d1, namespace: default}\nspec:\n  replicas: -1\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {classRef: {name: c}}}\n",
            "spec.replicas",
        ),
    ];
    for (what, yaml, field) in cases {
        let err = kubectl_err(kc, &["apply", "-f", "-"], Some(yaml));
        assert!(
            err.contains(field),
            "{what}: the error should name {field}: {err}"
        );
    }
}
