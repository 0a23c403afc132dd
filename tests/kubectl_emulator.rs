//! Real kubectl against `berth emulate`: apply, server-side apply, get -o yaml, get -w, the three patch types,
//! scale on a CRD, cordon, drain with a PodDisruptionBudget, delete with finalizers, label selectors, errors.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use support::{fixture, kubectl_available, kubectl_err, kubectl_ok, start_emulator};

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: nginx:1\n  - name: sidecar\n    image: envoy:1\n";

macro_rules! require_kubectl {
    ($name:expr) => {
        if !kubectl_available($name) {
            return;
        }
    };
}

#[test]
fn apply_get_yaml_and_reapply() {
    require_kubectl!("apply_get_yaml_and_reapply");
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    assert!(kubectl_ok(kc, &["apply", "-f", "-"], Some(POD)).contains("pod/web created"));
    let yaml = kubectl_ok(kc, &["get", "pod", "web", "-o", "yaml"], None);
    let v: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(v["metadata"]["generation"], 1);
    assert_eq!(v["status"]["phase"], "Pending");
    assert!(!v["metadata"]["uid"].as_str().unwrap().is_empty());
    assert!(v["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // Re-apply with a changed image: client-side apply computes a strategic merge patch.
    let changed = POD.replace("nginx:1", "nginx:2");
    assert!(kubectl_ok(kc, &["apply", "-f", "-"], Some(&changed)).contains("configured"));
    let image = kubectl_ok(kc, &["get", "pod", "web", "-o", "jsonpath={.spec.containers[0].image} {.spec.containers[1].image} {.metadata.generation}"], None);
    assert_eq!(image, "nginx:2 envoy:1 2");
    // Unchanged re-apply is a no-op.
    assert!(kubectl_ok(kc, &["apply", "-f", "-"], Some(&changed)).contains("unchanged"));
    // Dropping the sidecar from the manifest removes it: kubectl's patch deletes it by merge key.
    let without_sidecar = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: c\n    image: nginx:2\n";
    kubectl_ok(kc, &["apply", "-f", "-"], Some(without_sidecar));
    assert_eq!(
        kubectl_ok(
            kc,
            &[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.spec.containers[*].name}"
            ],
            None
        ),
        "c"
    );
    // Table output.
    let table = kubectl_ok(kc, &["get", "pods"], None);
    assert!(
        table.contains("NAME") && table.contains("STATUS") && table.contains("web"),
        "{table}"
    );
}

#[test]
fn server_side_apply_and_conflicts() {
    require_kubectl!("server_side_apply_and_conflicts");
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  size: small\n";
    assert!(
        kubectl_ok(kc, &["apply", "--server-side", "-f", "-"], Some(cm))
            .contains("serverside-applied")
    );
    let managed = kubectl_ok(
        kc,
        &[
            "get",
            "cm",
            "settings",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
        None,
    );
    assert_eq!(managed, "kubectl");
    // Another manager changes the field; applying the old value now conflicts.
    kubectl_ok(
        kc,
        &[
            "patch",
            "cm",
            "settings",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"size":"large"}}"#,
        ],
        None,
    );
    let err = kubectl_err(kc, &["apply", "--server-side", "-f", "-"], Some(cm));
    assert!(
        err.contains("conflict") && err.contains(".data.size"),
        "{err}"
    );
    kubectl_ok(
        kc,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(cm),
    );
    assert_eq!(
        kubectl_ok(
            kc,
            &["get", "cm", "settings", "-o", "jsonpath={.data.size}"],
            None
        ),
        "small"
    );
}

#[test]
fn patch_json_merge_strategic() {
    require_kubectl!("patch_json_merge_strategic");
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    kubectl_ok(kc, &["apply", "-f", "-"], Some(POD));
    kubectl_ok(
        kc,
        &[
            "patch",
            "pod",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/tier","value":"front"}]"#,
        ],
        None,
    );
    kubectl_ok(
        kc,
        &[
            "patch",
            "pod",
            "web",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"app":null,"team":"a"}}}"#,
        ],
        None,
    );
    // Strategic: containers merge by name, so the sidecar stays.
    kubectl_ok(
        kc,
        &[
            "patch",
            "pod",
            "web",
            "--type",
            "strategic",
            "-p",
            r#"{"spec":{"containers":[{"name":"c","image":"nginx:3"}]}}"#,
        ],
        None,
    );
    let got = kubectl_ok(
        kc,
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.metadata.labels} {.spec.containers[*].image}",
        ],
        None,
    );
    assert_eq!(got, r#"{"team":"a","tier":"front"} nginx:3 envoy:1"#);
    // A JSON patch whose test fails is rejected and changes nothing.
    let err = kubectl_err(
        kc,
        &[
            "patch",
            "pod",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/metadata/labels/team","value":"b"}]"#,
        ],
        None,
    );
    assert!(err.contains("test"), "{err}");
    // Status subresource patch.
    kubectl_ok(
        kc,
        &[
            "patch",
            "pod",
            "web",
            "--subresource",
            "status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ],
        None,
    );
    assert_eq!(
        kubectl_ok(
            kc,
            &["get", "pod", "web", "-o", "jsonpath={.status.phase}"],
            None
        ),
        "Running"
    );
}

#[test]
fn crd_scale_schema_and_explain() {
    require_kubectl!("crd_scale_schema_and_explain");
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    kubectl_ok(kc, &["apply", "-f", &fixture("machineset-crd.yaml")], None);
    kubectl_ok(kc, &["apply", "-f", &fixture("machineset.yaml")], None);
    let table = kubectl_ok(kc, &["get", "tms"], None);
    assert!(
        table.contains("REPLICAS") && table.contains("workers"),
        "{table}"
    );
    assert!(kubectl_ok(
        kc,
        &["scale", "testmachineset", "workers", "--replicas=5"],
        None
    )
    .contains("scaled"));
    assert_eq!(
        kubectl_ok(
            kc,
            &[
                "get",
                "tms",
                "workers",
                "-o",
                "jsonpath={.spec.replicas} {.spec.capacityType}"
            ],
            None
        ),
        "5 on-demand"
    );
    let scale = kubectl_ok(
        kc,
        &[
            "get",
            "--raw",
            "/apis/berth.dev/v1alpha1/namespaces/default/testmachinesets/workers/scale",
        ],
        None,
    );
    assert!(
        scale.contains("\"kind\":\"Scale\"") && scale.contains("\"replicas\":5"),
        "{scale}"
    );
    // Schema enforcement: the message names the fields.
    let bad = r#"{"apiVersion":"berth.dev/v1alpha1","kind":"TestMachineSet","metadata":{"name":"bad"},"spec":{"replicas":-1,"instanceType":"x","capacityType":"weird"}}"#;
    let err = kubectl_err(kc, &["apply", "-f", "-"], Some(bad));
    assert!(
        err.contains("spec.replicas")
            && err.contains("spec.capacityType")
            && err.contains("invalid"),
        "{err}"
    );
    let missing = r#"{"apiVersion":"berth.dev/v1alpha1","kind":"TestMachineSet","metadata":{"name":"bad"},"spec":{"replicas":1}}"#;
    assert!(kubectl_err(kc, &["apply", "-f", "-"], Some(missing))
        .contains("spec.instanceType: Required value"));
    let unknown = r#"{"apiVersion":"berth.dev/v1alpha1","kind":"TestMachineSet","metadata":{"name":"bad"},"spec":{"replicas":1,"instanceType":"x","bogus":1}}"#;
    assert!(kubectl_err(kc, &["apply", "-f", "-"], Some(unknown))
        .contains("unknown field \"spec.bogus\""));
    let explain = kubectl_ok(kc, &["explain", "tms.spec.replicas"], None);
    assert!(explain.contains("Number of machines"), "{explain}");
    let explain = kubectl_ok(kc, &["explain", "pods.spec.nodeName"], None);
    assert!(explain.contains("NodeName"), "{explain}");
    // Server-side apply on the custom kind.
    kubectl_ok(
        kc,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &fixture("machineset.yaml"),
        ],
        None,
    );
    assert_eq!(
        kubectl_ok(
            kc,
            &["get", "tms", "workers", "-o", "jsonpath={.spec.replicas}"],
            None
        ),
        "2"
    );
    // Deleting the CRD removes the kind.
    kubectl_ok(kc, &["delete", "crd", "testmachinesets.berth.dev"], None);
    assert!(kubectl_err(
        kc,
        &[
            "get",
            "--raw",
            "/apis/berth.dev/v1alpha1/namespaces/default/testmachinesets"
        ],
        None
    )
    .contains("NotFound"));
}

#[test]
fn cordon_and_drain_respect_pdb() {
    require_kubectl!("cordon_and_drain_respect_pdb");
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\nstatus:\n  conditions:\n  - type: Ready\n    status: \"True\"\n";
    kubectl_ok(kc, &["apply", "-f", "-"], Some(node));
    for p in ["db-1", "db-2"] {
        let pod = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {p}\n  labels: {{app: db}}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: postgres\n");
        kubectl_ok(kc, &["apply", "-f", "-"], Some(&pod));
        kubectl_ok(
            kc,
            &[
                "patch",
                "pod",
                p,
                "--subresource",
                "status",
                "--type",
                "merge",
                "-p",
                r#"{"status":{"phase":"Running"}}"#,
            ],
            None,
        );
    }
    let pdb = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: db\nspec:\n  minAvailable: 2\n  selector:\n    matchLabels: {app: db}\n";
    kubectl_ok(kc, &["apply", "-f", "-"], Some(pdb));
    kubectl_ok(kc, &["cordon", "n1"], None);
    assert!(kubectl_ok(kc, &["get", "nodes"], None).contains("SchedulingDisabled"));
    assert_eq!(
        kubectl_ok(
            kc,
            &["get", "node", "n1", "-o", "jsonpath={.spec.unschedulable}"],
            None
        ),
        "true"
    );
    // The budget blocks: drain times out and both pods remain.
    let err = kubectl_err(kc, &["drain", "n1", "--force", "--timeout=3s"], None);
    assert!(
        err.contains("timeout") || err.contains("disruption budget"),
        "{err}"
    );
    assert_eq!(
        kubectl_ok(kc, &["get", "pods", "-o", "name"], None)
            .lines()
            .count(),
        2
    );
    // Direct eviction returns 429 with the real reason.
    let eviction = r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"db-1","namespace":"default"}}"#;
    let err = kubectl_err(
        kc,
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/db-1/eviction",
            "-f",
            "-",
        ],
        Some(eviction),
    );
    assert!(
        err.contains("disruption budget") || err.contains("TooManyRequests") || err.contains("429"),
        "{err}"
    );
    kubectl_ok(kc, &["delete", "pdb", "db"], None);
    let out = kubectl_ok(kc, &["drain", "n1", "--force", "--timeout=20s"], None);
    assert!(out.contains("drained"), "{out}");
    assert_eq!(kubectl_ok(kc, &["get", "pods", "-o", "name"], None), "");
    kubectl_ok(kc, &["uncordon", "n1"], None);
    assert_eq!(
        kubectl_ok(
            kc,
            &["get", "node", "n1", "-o", "jsonpath={.spec.unschedulable}"],
            None
        ),
        ""
    );
}

#[test]
fn delete_waits_for_finalizers() {
    require_kubectl!("delete_waits_for_finalizers");
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: [berth.dev/test]\ndata: {a: b}\n";
    kubectl_ok(kc, &["apply", "-f", "-"], Some(cm));
    kubectl_ok(kc, &["delete", "cm", "held", "--wait=false"], None);
    let ts = kubectl_ok(
        kc,
        &[
            "get",
            "cm",
            "held",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
        None,
    );
    assert!(
        ts.ends_with('Z'),
        "deletionTimestamp should be set, got {ts:?}"
    );
    // New finalizers cannot be added while deleting.
    kubectl_err(
        kc,
        &[
            "patch",
            "cm",
            "held",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":["berth.dev/test","x/y"]}}"#,
        ],
        None,
    );
    kubectl_ok(
        kc,
        &[
            "patch",
            "cm",
            "held",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
        None,
    );
    let err = kubectl_err(kc, &["get", "cm", "held"], None);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

#[test]
fn label_selectors_and_field_selectors() {
    require_kubectl!("label_selectors_and_field_selectors");
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    for (name, labels) in [
        ("a", "app: web, tier: front"),
        ("b", "app: web, tier: back"),
        ("c", "app: db"),
    ] {
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\n"
        );
        kubectl_ok(kc, &["apply", "-f", "-"], Some(&cm));
    }
    let names = |sel: &str| -> String {
        kubectl_ok(
            kc,
            &[
                "get",
                "cm",
                "-l",
                sel,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
        )
    };
    assert_eq!(names("app=web"), "a b");
    assert_eq!(names("app==web,tier!=back"), "a");
    assert_eq!(names("tier in (front,back)"), "a b");
    assert_eq!(names("tier notin (front)"), "b c");
    assert_eq!(names("!tier"), "c");
    assert_eq!(names("tier"), "a b");
    let by_field = kubectl_ok(
        kc,
        &[
            "get",
            "cm",
            "--field-selector",
            "metadata.name=b",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(by_field.trim(), "configmap/b");
    let err = kubectl_err(kc, &["get", "cm", "--field-selector", "data.x=1"], None);
    assert!(err.contains("field label not supported"), "{err}");
}

#[test]
fn get_watch_streams_changes() {
    require_kubectl!("get_watch_streams_changes");
    let emu = start_emulator();
    let kc = emu.kubeconfig.clone();
    kubectl_ok(
        &kc,
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\n"),
    );
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "configmaps", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn kubectl get -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("a watch line within 20s")
    };
    // Table output with an EVENT column: header, the initial list, then the watch events.
    let header = next();
    assert!(
        header.starts_with("EVENT") && header.contains("NAME"),
        "{header}"
    );
    let words = |l: String| {
        l.split_whitespace()
            .take(2)
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(words(next()), "ADDED first");
    kubectl_ok(
        &kc,
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: second\n"),
    );
    assert_eq!(words(next()), "ADDED second");
    kubectl_ok(&kc, &["label", "cm", "second", "x=1"], None);
    assert_eq!(words(next()), "MODIFIED second");
    kubectl_ok(&kc, &["delete", "cm", "first"], None);
    assert_eq!(words(next()), "DELETED first");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn errors_are_statuses() {
    require_kubectl!("errors_are_statuses");
    let emu = start_emulator();
    let kc = &emu.kubeconfig;
    assert!(kubectl_err(kc, &["get", "widgets"], None).contains("doesn't have a resource type"));
    assert!(kubectl_err(kc, &["get", "pod", "nope"], None).contains("pods \"nope\" not found"));
    let err = kubectl_err(
        kc,
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            "-",
        ],
        Some("{not json"),
    );
    assert!(
        err.contains("BadRequest") || err.contains("400") || err.contains("json"),
        "{err}"
    );
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"}}"#;
    kubectl_ok(kc, &["create", "-f", "-"], Some(cm));
    assert!(kubectl_err(kc, &["create", "-f", "-"], Some(cm)).contains("already exists"));
    let pod =
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"empty"},"spec":{"containers":[]}}"#;
    assert!(kubectl_err(kc, &["create", "-f", "-"], Some(pod))
        .contains("spec.containers: Required value"));
    assert!(
        kubectl_err(kc, &["create", "-n", "missing", "-f", "-"], Some(cm))
            .contains("namespaces \"missing\" not found")
    );
}
