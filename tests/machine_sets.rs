//! MachineDeployment and MachineSet controllers end to end in the emulator: scaling, rollout of a template change,
//! and invalid specs that must create or delete nothing. Machines here never launch (no Machine controller runs),
//! which is what these controllers must cope with: they own counts, not instances.

use berth::api::{crds, Machine, MachineClass, MachineDeployment, MachineSet};
use berth::clock::SystemClock;
use berth::controllers::{machine_deployment, machine_set, Context};
use berth::emulator::server::EmulatorService;
use berth::emulator::Emulator;
use berth::telemetry::metrics::Metrics;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn setup() -> (Client, tokio::sync::watch::Sender<bool>) {
    setup_with_machine_watch_lag(Duration::ZERO).await
}

/// The emulator and both controllers; the controllers' watches of Machines deliver every event `lag` late (a
/// controller's cache behind its own writes, as under a loaded API server). The returned client sees no lag.
async fn setup_with_machine_watch_lag(lag: Duration) -> (Client, tokio::sync::watch::Sender<bool>) {
    let emu = Emulator::new();
    let client = emu.client();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        crd_api.create(&PostParams::default(), &crd).await.unwrap();
    }
    let class: MachineClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
        "spec": {"image": {"id": "ami-0123456789abcdef0"}, "subnets": {"ids": ["subnet-1"]}, "securityGroups": {"ids": ["sg-1"]}, "instanceProfile": "node"}
    }))
    .unwrap();
    Api::<MachineClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let controller_client = if lag.is_zero() {
        client.clone()
    } else {
        Client::new(
            LaggingMachineWatches {
                inner: EmulatorService::new(emu.clone()),
                lag,
            },
            "default",
        )
    };
    let ctx = Arc::new(Context::new(
        controller_client,
        Arc::new(SystemClock),
        Metrics::new().unwrap(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for which in 0..2 {
        let ctx = ctx.clone();
        let mut rx = stop_rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(async move {
            if which == 0 {
                machine_deployment::run(ctx, stop).await
            } else {
                machine_set::run(ctx, stop).await
            }
        });
    }
    (client, stop_tx)
}

/// The in-process emulator, with each event of a Machine watch handed over `lag` after the server sent it.
#[derive(Clone)]
struct LaggingMachineWatches {
    inner: EmulatorService,
    lag: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Request<kube::client::Body>> for LaggingMachineWatches {
    type Response = http::Response<UnsyncBoxBody<Bytes, BoxError>>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let lagged = req.uri().path().ends_with("/machines")
            && req.uri().query().is_some_and(|q| q.contains("watch=true"));
        let lag = self.lag;
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                if !lagged {
                    return body.map_err(BoxError::from).boxed_unsync();
                }
                // Frames are stamped when the server sends them and handed over `lag` later, in order.
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let mut body = body;
                    while let Some(frame) = body.frame().await {
                        if tx.send((tokio::time::Instant::now() + lag, frame)).is_err() {
                            break;
                        }
                    }
                });
                let frames = futures::stream::unfold(rx, |mut rx| async move {
                    let (due, frame) = rx.recv().await?;
                    tokio::time::sleep_until(due).await;
                    Some((frame.map_err(BoxError::from), rx))
                });
                StreamBody::new(frames).boxed_unsync()
            }))
        })
    }
}

fn deployment(name: &str, replicas: u32, class: &str, extra_label: &str) -> MachineDeployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "MachineDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"group": name}},
            "template": {"metadata": {"labels": {"group": extra_label}}, "spec": {"classRef": {"name": class}}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}
        }
    }))
    .unwrap()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn live_machines(client: &Client) -> usize {
    Api::<Machine>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .count()
}

#[tokio::test]
async fn scale_up_and_down() {
    let (client, _stop) = setup().await;
    let mds: Api<MachineDeployment> = Api::namespaced(client.clone(), "default");
    mds.create(
        &PostParams::default(),
        &deployment("general", 0, "general", "general"),
    )
    .await
    .unwrap();
    mds.patch(
        "general",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 10}})),
    )
    .await
    .unwrap();
    eventually("10 machines", || async {
        live_machines(&client).await == 10
    })
    .await;
    let sets = Api::<MachineSet>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 1);
    let machines = Api::<Machine>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    for m in &machines {
        let owner = &m.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "MachineSet");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(m.spec.class_ref.name, "general");
        assert_eq!(
            m.metadata.labels.as_ref().unwrap()["berth.dev/machine-deployment"],
            "general"
        );
    }
    mds.patch(
        "general",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    eventually("3 machines", || async { live_machines(&client).await == 3 }).await;
    eventually("status replicas 3", || async {
        mds.get("general")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.replicas == 3 && s.observed_generation == Some(3))
    })
    .await;
}

#[tokio::test]
async fn template_change_creates_a_new_revision() {
    let (client, _stop) = setup().await;
    let mds: Api<MachineDeployment> = Api::namespaced(client.clone(), "default");
    mds.create(
        &PostParams::default(),
        &deployment("web", 2, "general", "web"),
    )
    .await
    .unwrap();
    eventually("2 machines", || async { live_machines(&client).await == 2 }).await;
    let patch =
        serde_json::json!({"spec": {"template": {"spec": {"nodeLabels": {"tier": "new"}}}}});
    mds.patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let sets: Api<MachineSet> = Api::namespaced(client.clone(), "default");
    eventually("a second MachineSet of revision 2", || async {
        let items = sets.list(&ListParams::default()).await.unwrap().items;
        items.len() == 2
            && items.iter().any(|s| {
                s.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a["berth.dev/revision"] == "2")
            })
    })
    .await;
    // maxSurge 1: at most 3 Machines exist at any time while the new ones never become available.
    for _ in 0..20 {
        assert!(live_machines(&client).await <= 3);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn invalid_specs_create_nothing_and_say_why() {
    let (client, _stop) = setup().await;
    let mds: Api<MachineDeployment> = Api::namespaced(client.clone(), "default");
    mds.create(
        &PostParams::default(),
        &deployment("nolass", 2, "missing-class", "nolass"),
    )
    .await
    .unwrap();
    mds.create(
        &PostParams::default(),
        &deployment("mismatch", 2, "general", "other"),
    )
    .await
    .unwrap();
    for (name, reason) in [
        ("nolass", "ClassNotFound"),
        ("mismatch", "SelectorMismatch"),
    ] {
        eventually(reason, || async {
            mds.get(name).await.unwrap().status.is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Valid" && c.reason == reason && !c.message.is_empty())
            })
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        Api::<MachineSet>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    assert_eq!(live_machines(&client).await, 0);
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ClassNotFound")),
        "an Event says why"
    );
}

#[tokio::test]
async fn rollout_commands_pause_history_undo() {
    use berth::rollout_cli::{run, RolloutCommand};
    let (client, _stop) = setup().await;
    let mds: Api<MachineDeployment> = Api::namespaced(client.clone(), "default");
    mds.create(
        &PostParams::default(),
        &deployment("web", 2, "general", "web"),
    )
    .await
    .unwrap();
    eventually("2 machines", || async { live_machines(&client).await == 2 }).await;

    let out = run(
        client.clone(),
        "default",
        RolloutCommand::Pause { name: "web".into() },
    )
    .await
    .unwrap();
    assert!(out.contains("paused"), "{out}");
    assert!(mds.get("web").await.unwrap().spec.paused);
    run(
        client.clone(),
        "default",
        RolloutCommand::Resume { name: "web".into() },
    )
    .await
    .unwrap();
    assert!(!mds.get("web").await.unwrap().spec.paused);

    let patch =
        serde_json::json!({"spec": {"template": {"spec": {"nodeLabels": {"tier": "new"}}}}});
    mds.patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    eventually("revision 2 observed", || async {
        mds.get("web")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.revision == Some(2))
    })
    .await;
    let history = run(
        client.clone(),
        "default",
        RolloutCommand::History { name: "web".into() },
    )
    .await
    .unwrap();
    assert!(
        history
            .lines()
            .filter(|l| l.starts_with('1') || l.starts_with('2'))
            .count()
            == 2,
        "{history}"
    );

    let out = run(
        client.clone(),
        "default",
        RolloutCommand::Undo {
            name: "web".into(),
            to_revision: None,
        },
    )
    .await
    .unwrap();
    assert!(out.contains("rolled back to revision 1"), "{out}");
    let md = mds.get("web").await.unwrap();
    assert!(
        md.spec.template.spec.node_labels.is_empty(),
        "the revision-1 template is back"
    );
    assert!(!md
        .spec
        .template
        .metadata
        .labels
        .contains_key("berth.dev/template-hash"));
    eventually("the revision-1 MachineSet is current again", || async {
        mds.get("web")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.revision == Some(1))
    })
    .await;

    let err = run(
        client.clone(),
        "default",
        RolloutCommand::Undo {
            name: "web".into(),
            to_revision: Some(9),
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no revision 9"), "{err}");
    let err = run(
        client.clone(),
        "default",
        RolloutCommand::Status {
            name: "missing".into(),
            watch: false,
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

/// The controllers' Machine cache lags their own writes by far more than a reconcile takes, and replicas change in
/// bursts: every Machine ever created is one replica asked for (none created twice, then deleted as surplus), and a
/// scale-down deletes the surplus once (not again, and not other Machines, while the cache still shows it alive).
#[tokio::test]
async fn a_lagging_machine_cache_never_creates_or_deletes_twice() {
    let (client, _stop) = setup_with_machine_watch_lag(Duration::from_millis(400)).await;
    // Every Machine ever created and ever deleted, seen through a watch without lag.
    let created = Arc::new(Mutex::new(BTreeSet::new()));
    let deleted = Arc::new(Mutex::new(BTreeSet::new()));
    let recorder = {
        let (created, deleted) = (created.clone(), deleted.clone());
        watcher(
            Api::<Machine>::namespaced(client.clone(), "default"),
            watcher::Config::default(),
        )
        .for_each(move |event| {
            match event {
                Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                    created.lock().unwrap().insert(m.name_any());
                }
                Ok(watcher::Event::Delete(m)) => {
                    deleted.lock().unwrap().insert(m.name_any());
                }
                _ => {}
            }
            async {}
        })
    };
    let recorder = tokio::spawn(recorder);
    let mds: Api<MachineDeployment> = Api::namespaced(client.clone(), "default");
    mds.create(
        &PostParams::default(),
        &deployment("burst", 0, "general", "burst"),
    )
    .await
    .unwrap();
    let scale = |replicas: u32| {
        let mds = mds.clone();
        async move {
            mds.patch(
                "burst",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    };
    for replicas in [2, 4, 5, 7] {
        scale(replicas).await;
    }
    eventually("7 machines", || async { live_machines(&client).await == 7 }).await;
    // Past several watch lags: nothing more is created once the cache catches up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(live_machines(&client).await, 7);
    assert_eq!(
        created.lock().unwrap().len(),
        7,
        "Machines created for 7 replicas, scaled up only"
    );
    assert!(deleted.lock().unwrap().is_empty());

    for replicas in [5, 3] {
        scale(replicas).await;
    }
    eventually("3 machines", || async { live_machines(&client).await == 3 }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(live_machines(&client).await, 3);
    assert_eq!(
        deleted.lock().unwrap().len(),
        4,
        "Machines deleted going from 7 to 3 replicas"
    );
    assert_eq!(created.lock().unwrap().len(), 7, "none created again");
    recorder.abort();
}
