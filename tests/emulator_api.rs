//! The emulator through kube-rs, in-process and over a socket: kube-runtime watchers surviving 410 Gone and dropped
//! connections, list/watch semantics (resourceVersion, limit/continue, bookmarks, timeouts), write semantics
//! (conflicts, generation, status subresource), garbage collection, eviction, and the Status errors.

mod support;

use berth::emulator::Emulator;
use futures::{StreamExt, TryStreamExt};
use http::Request;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::{json, Value};
use std::time::Duration;

async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .unwrap();
    let resp = client.send(req).await.expect("transport");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

fn cm(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn reflector_survives_410_and_dropped_connections() {
    let emu = Emulator::new();
    let client = emu.client();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..3 {
        api.create(&PostParams::default(), &cm(&format!("a{i}"), json!({})))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .applied_objects()
    .for_each(|_| async {});
    let task = tokio::spawn(stream);
    wait_for("initial list", || reader.state().len() == 3).await;
    // Dropped connection: the watcher resumes from its last resourceVersion.
    emu.drop_watches();
    api.create(&PostParams::default(), &cm("b0", json!({})))
        .await
        .unwrap();
    wait_for("event after a dropped watch", || reader.state().len() == 4).await;
    // History compacted and connection dropped: the resumed watch gets 410 and the watcher relists.
    emu.compact();
    emu.drop_watches();
    api.create(&PostParams::default(), &cm("c0", json!({})))
        .await
        .unwrap();
    api.delete("a0", &DeleteParams::default()).await.unwrap();
    wait_for("relist after 410", || {
        let names: Vec<String> = reader
            .state()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        names.len() == 4 && names.contains(&"c0".to_string()) && !names.contains(&"a0".to_string())
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn watcher_over_a_socket_with_streaming_list() {
    let env = support::start_in_process().await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&env.kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("x", json!({"app": "a"})))
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<ConfigMap>();
    let cfg = watcher::Config::default().streaming_lists().labels("app=a");
    let task = tokio::spawn(
        reflector(writer, watcher(api.clone(), cfg))
            .default_backoff()
            .applied_objects()
            .for_each(|_| async {}),
    );
    wait_for("streaming initial events", || reader.state().len() == 1).await;
    api.create(&PostParams::default(), &cm("y", json!({"app": "a"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("z", json!({"app": "b"})))
        .await
        .unwrap();
    wait_for("selected event", || reader.state().len() == 2).await;
    // Relabelling out of the selector is seen as a deletion.
    let patch = json!({"metadata": {"labels": {"app": "b"}}});
    api.patch(
        "y",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    wait_for("object leaving the selector", || reader.state().len() == 1).await;
    env.emulator.compact();
    env.emulator.drop_watches();
    api.create(&PostParams::default(), &cm("w", json!({"app": "a"})))
        .await
        .unwrap();
    wait_for("relist over the socket", || reader.state().len() == 2).await;
    task.abort();
}

#[tokio::test]
async fn watch_resource_versions_bookmarks_and_gone() {
    let emu = Emulator::with_clock(
        std::sync::Arc::new(berth::emulator::SystemClock),
        berth::emulator::Config {
            history_limit: 5,
            bookmark_interval: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let client = emu.client();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = api
        .create(&PostParams::default(), &cm("r0", json!({})))
        .await
        .unwrap();
    let rv0 = first.metadata.resource_version.clone().unwrap();
    for i in 1..4 {
        api.create(&PostParams::default(), &cm(&format!("r{i}"), json!({})))
            .await
            .unwrap();
    }
    // Watch from rv0 replays exactly the later events, in order.
    let wp = WatchParams {
        bookmarks: true,
        ..WatchParams::default().timeout(1)
    };
    let events: Vec<WatchEvent<ConfigMap>> = api
        .watch(&wp, &rv0)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let added: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Added(c) => c.metadata.name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(added, vec!["r1", "r2", "r3"]);
    assert!(
        events.iter().any(|e| matches!(e, WatchEvent::Bookmark(_))),
        "bookmarks were asked for"
    );
    // Resource versions only grow.
    let list = api.list(&ListParams::default()).await.unwrap();
    let mut rvs: Vec<u64> = list
        .items
        .iter()
        .map(|c| {
            c.metadata
                .resource_version
                .clone()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let sorted = {
        let mut s = rvs.clone();
        s.sort();
        s
    };
    assert_eq!(rvs, sorted);
    rvs.dedup();
    assert_eq!(rvs.len(), 4);
    // Push rv0 out of the 5-event history: watching from it gets an in-stream 410.
    for i in 4..10 {
        api.create(&PostParams::default(), &cm(&format!("r{i}"), json!({})))
            .await
            .unwrap();
    }
    let events: Vec<WatchEvent<ConfigMap>> = api
        .watch(&WatchParams::default().timeout(1), &rv0)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    match events.first() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
    // Exact list of an old version is gone too.
    let (status, body) = call(&client, "GET", &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv0}&resourceVersionMatch=Exact"), "application/json", "").await;
    assert_eq!((status, body["reason"].as_str()), (410, Some("Expired")));
}

#[tokio::test]
async fn pagination_with_limit_and_continue() {
    let emu = Emulator::new();
    let api: Api<ConfigMap> = Api::namespaced(emu.client(), "default");
    for i in 0..7 {
        api.create(
            &PostParams::default(),
            &cm(&format!("p{i}"), json!({"even": (i % 2 == 0).to_string()})),
        )
        .await
        .unwrap();
    }
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(3).labels("even=true");
    let mut pages = 0;
    loop {
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(names, vec!["p0", "p2", "p4", "p6"]);
    assert_eq!(pages, 2);
    let (status, body) = call(
        &emu.client(),
        "GET",
        "/api/v1/namespaces/default/configmaps?limit=2&continue=bogus",
        "application/json",
        "",
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn writes_conflicts_generation_and_status() {
    let emu = Emulator::new();
    let client = emu.client();
    crd(&client).await;
    let path = "/apis/berth.dev/v1alpha1/namespaces/default/testmachinesets";
    let (s, created) = call(&client, "POST", path, "application/json", r#"{"apiVersion":"berth.dev/v1alpha1","kind":"TestMachineSet","metadata":{"name":"m"},"spec":{"replicas":1,"instanceType":"m5.large"},"status":{"replicas":9}}"#).await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(
        created.get("status").is_none(),
        "status is dropped on create with a status subresource"
    );
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    // Status write does not bump generation and cannot change spec.
    let (s, after_status) = call(
        &client,
        "PATCH",
        &format!("{path}/m/status"),
        "application/merge-patch+json",
        r#"{"spec":{"replicas":50},"status":{"replicas":1}}"#,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            after_status["metadata"]["generation"].as_i64(),
            after_status["spec"]["replicas"].as_i64(),
            after_status["status"]["replicas"].as_i64()
        ),
        (Some(1), Some(1), Some(1))
    );
    // Spec change bumps generation; main-resource writes cannot change status.
    let (_, after_spec) = call(
        &client,
        "PATCH",
        &format!("{path}/m"),
        "application/merge-patch+json",
        r#"{"spec":{"replicas":2},"status":{"replicas":7}}"#,
    )
    .await;
    assert_eq!(
        (
            after_spec["metadata"]["generation"].as_i64(),
            after_spec["status"]["replicas"].as_i64()
        ),
        (Some(2), Some(1))
    );
    // Metadata-only change does not.
    let (_, after_label) = call(
        &client,
        "PATCH",
        &format!("{path}/m"),
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"a":"b"}}}"#,
    )
    .await;
    assert_eq!(after_label["metadata"]["generation"], 2);
    // Stale resourceVersion on update: 409 Conflict.
    let mut stale = after_label.clone();
    stale["metadata"]["resourceVersion"] = json!(rv);
    let (s, err) = call(
        &client,
        "PUT",
        &format!("{path}/m"),
        "application/json",
        &stale.to_string(),
    )
    .await;
    assert_eq!((s, err["reason"].as_str()), (409, Some("Conflict")));
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified"));
    // Schema violation on update: 422 naming the field.
    let mut bad = after_label.clone();
    bad["spec"]["replicas"] = json!("many");
    let (s, err) = call(
        &client,
        "PUT",
        &format!("{path}/m"),
        "application/json",
        &bad.to_string(),
    )
    .await;
    assert_eq!(s, 422);
    assert!(
        err["message"].as_str().unwrap().contains("spec.replicas"),
        "{err}"
    );
    // A no-op patch keeps the resourceVersion.
    let (_, same) = call(
        &client,
        "PATCH",
        &format!("{path}/m"),
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"a":"b"}}}"#,
    )
    .await;
    assert_eq!(
        same["metadata"]["resourceVersion"],
        after_label["metadata"]["resourceVersion"]
    );
    // Scale subresource.
    let (s, scale) = call(
        &client,
        "PATCH",
        &format!("{path}/m/scale"),
        "application/merge-patch+json",
        r#"{"spec":{"replicas":4}}"#,
    )
    .await;
    assert_eq!(
        (
            s,
            scale["kind"].as_str(),
            scale["spec"]["replicas"].as_i64()
        ),
        (200, Some("Scale"), Some(4))
    );
}

async fn crd(client: &kube::Client) {
    let yaml = std::fs::read_to_string(support::fixture("machineset-crd.yaml")).unwrap();
    let body: Value = serde_yaml::from_str(&yaml).unwrap();
    let (s, v) = call(
        client,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "application/json",
        &body.to_string(),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test]
async fn garbage_collection_background_orphan_foreground() {
    let emu = Emulator::new();
    let client = emu.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owned = |name: &str, owner: &ConfigMap, finalizers: Vec<&str>| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "finalizers": finalizers, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid, "blockOwnerDeletion": true}]}})).unwrap()
    };
    let names = |cms: &Api<ConfigMap>| {
        let cms = cms.clone();
        async move {
            cms.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|c| c.metadata.name.unwrap())
                .collect::<Vec<_>>()
        }
    };
    // Background: dependents (and their dependents) go with the owner.
    let owner = cms
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await
        .unwrap();
    let child = cms
        .create(&PostParams::default(), &owned("child", &owner, vec![]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned("grandchild", &child, vec![]))
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert!(names(&cms).await.is_empty());
    // Orphan: dependents stay without the owner reference.
    let owner = cms
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned("kept", &owner, vec![]))
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::orphan()).await.unwrap();
    let kept = cms.get("kept").await.unwrap();
    assert!(kept
        .metadata
        .owner_references
        .unwrap_or_default()
        .is_empty());
    cms.delete("kept", &DeleteParams::default()).await.unwrap();
    // Foreground: the owner waits (deletionTimestamp, foregroundDeletion) for a dependent held by a finalizer.
    let owner = cms
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &owned("held", &owner, vec!["berth.dev/hold"]),
    )
    .await
    .unwrap();
    cms.delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    let waiting = cms.get("owner").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        waiting.metadata.finalizers.unwrap_or_default(),
        vec!["foregroundDeletion".to_string()]
    );
    let held = cms.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let release = json!({"metadata": {"finalizers": null}});
    cms.patch(
        "held",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&release),
    )
    .await
    .unwrap();
    assert!(
        names(&cms).await.is_empty(),
        "owner goes once its last dependent is gone"
    );
}

#[tokio::test]
async fn eviction_binding_and_pdb() {
    let emu = Emulator::new();
    let client = emu.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let (s, v) = call(&client, "POST", &format!("/api/v1/namespaces/default/pods/{name}/binding"), "application/json", r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"x"},"target":{"kind":"Node","name":"n1"}}"#).await;
        assert_eq!(s, 201, "{v}");
        let running = json!({"status": {"phase": "Running"}});
        pods.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&running),
        )
        .await
        .unwrap();
    }
    let bound = pods.get("a").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("n1"));
    let (s, _) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/a/binding",
        "application/json",
        r#"{"target":{"kind":"Node","name":"n2"}}"#,
    )
    .await;
    assert_eq!(s, 409, "a bound pod cannot be bound again");
    let (s, v) = call(&client, "POST", "/apis/policy/v1/namespaces/default/poddisruptionbudgets", "application/json",
        r#"{"apiVersion":"policy/v1","kind":"PodDisruptionBudget","metadata":{"name":"p"},"spec":{"maxUnavailable":1,"selector":{"matchLabels":{"app":"x"}}}}"#).await;
    assert_eq!(s, 201, "{v}");
    let evict = |name: &str| {
        format!(
            r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{name}","namespace":"default"}}}}"#
        )
    };
    let (s, _) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/a/eviction",
        "application/json",
        &evict("a"),
    )
    .await;
    assert_eq!(s, 201, "one disruption allowed");
    let (s, v) = call(
        &client,
        "POST",
        "/api/v1/namespaces/default/pods/b/eviction",
        "application/json",
        &evict("b"),
    )
    .await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (429, Some("TooManyRequests")),
        "{v}"
    );
    assert!(
        pods.get("b").await.is_ok(),
        "a refused eviction keeps the pod"
    );
}

#[tokio::test]
async fn errors_match_the_real_server() {
    let emu = Emulator::with_clock(
        std::sync::Arc::new(berth::emulator::SystemClock),
        berth::emulator::Config {
            max_body_bytes: 4096,
            ..Default::default()
        },
    );
    let client = emu.client();
    let cases: Vec<(&str, &str, &str, String, u16, &str)> = vec![
        (
            "GET",
            "/api/v1/namespaces/default/widgets",
            "application/json",
            String::new(),
            404,
            "NotFound",
        ),
        (
            "GET",
            "/apis/nope.dev/v1/things",
            "application/json",
            String::new(),
            404,
            "NotFound",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps/missing",
            "application/json",
            String::new(),
            404,
            "NotFound",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            "{not json".into(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/yaml",
            "a: [unclosed".into(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":1}}"#
                .into(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
                "x".repeat(5000)
            ),
            413,
            "RequestEntityTooLarge",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#.into(),
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#.into(),
            422,
            "Invalid",
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            "{}".into(),
            405,
            "MethodNotAllowed",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x",
            "text/plain",
            "{}".into(),
            415,
            "UnsupportedMediaType",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            r#"{"apiVersion":"apps/v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.into(),
            400,
            "BadRequest",
        ),
    ];
    for (method, path, ct, body, code, reason) in cases {
        let (s, v) = call(&client, method, path, ct, &body).await;
        assert_eq!(
            (
                s,
                v["reason"].as_str(),
                v["kind"].as_str(),
                v["code"].as_u64()
            ),
            (code, Some(reason), Some("Status"), Some(u64::from(code))),
            "{method} {path} {body:.60}: {v}"
        );
        assert!(!v["message"].as_str().unwrap_or_default().is_empty());
    }
    // After all that, the default namespaces are intact and nothing was half-written.
    let (_, list) = call(
        &client,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        "",
    )
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let (_, ns) = call(&client, "GET", "/api/v1/namespaces", "application/json", "").await;
    assert_eq!(ns["items"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn namespace_deletion_takes_its_objects() {
    let emu = Emulator::new();
    let client = emu.client();
    let (s, _) = call(
        &client,
        "POST",
        "/api/v1/namespaces",
        "application/json",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team"}}"#,
    )
    .await;
    assert_eq!(s, 201);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    cms.create(&PostParams::default(), &cm("one", json!({})))
        .await
        .unwrap();
    let held: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "held", "finalizers": ["x/y"]}}))
            .unwrap();
    cms.create(&PostParams::default(), &held).await.unwrap();
    let (s, _) = call(
        &client,
        "DELETE",
        "/api/v1/namespaces/team",
        "application/json",
        "",
    )
    .await;
    assert!(s == 200 || s == 202);
    let (_, ns) = call(
        &client,
        "GET",
        "/api/v1/namespaces/team",
        "application/json",
        "",
    )
    .await;
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert!(cms.get("one").await.is_err());
    let (s, v) = call(
        &client,
        "POST",
        "/api/v1/namespaces/team/configmaps",
        "application/json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"late"}}"#,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    let release = json!({"metadata": {"finalizers": null}});
    cms.patch(
        "held",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&release),
    )
    .await
    .unwrap();
    let (s, _) = call(
        &client,
        "GET",
        "/api/v1/namespaces/team",
        "application/json",
        "",
    )
    .await;
    assert_eq!(s, 404, "the namespace goes with its last object");
}

#[tokio::test]
async fn kube_runtime_event_recorder_publishes_and_patches_series() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let emu = Emulator::new();
    let client = emu.client();
    let reporter = Reporter {
        controller: "berth".into(),
        instance: Some("berth-0".into()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: Some("u-1".into()),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Normal,
        reason: "Launched".into(),
        note: Some("launched i-0abc".into()),
        action: "Launch".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        list.items.len(),
        1,
        "the repeat becomes a series on the same event"
    );
    assert_eq!(list.items[0].reason.as_deref(), Some("Launched"));
    assert_eq!(list.items[0].series.as_ref().map(|s| s.count), Some(2));
}
