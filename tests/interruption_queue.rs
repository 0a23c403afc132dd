//! deploy/interruption-queue.yaml, the CloudFormation template of the SQS queue EventBridge feeds with interruption
//! events: cfn-lint passes on it, and in moto_server the stack it creates routes each of the four kinds of event to
//! the queue as EventBridge's envelope, and nothing else.
//!
//! AWS is driven through scripts/interruption_queue_fixture.py (boto3 from moto's .venv; its docstring is its
//! interface and lists where moto differs from AWS). What moto cannot show, and this test therefore does not claim:
//! - moto's CloudFormation skips AWS::SQS::QueuePolicy; the fixture sets the queue's Policy attribute from the
//!   template's document instead, and moto's SQS never evaluates it. The test checks the document (EventBridge may
//!   send to this queue only; non-TLS is denied), not its enforcement.
//! - Real EventBridge refuses PutEvents with an aws.* source; moto routes such events through the rules as AWS routes
//!   the services' own events, which is what is tested here.
//! - moto leaves "account" out of the envelope it delivers to SQS; AWS always sends it. Where present it must be the
//!   account; its absence is accepted, and only that field's.
//! - moto delivers inside PutEvents, so once the fixture returns, the queue holds every match: reading the queue
//!   until empty is deterministic here (AWS would deliver within about a second).

mod support;

#[path = "support/moto.rs"]
mod moto;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const TEMPLATE: &str = "deploy/interruption-queue.yaml";
const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// cfn-lint (`.venv/bin/cfn-lint`, or BERTH_CFN_LINT), installed by scripts/test.sh. Without it the test is skipped,
/// or fails under BERTH_REQUIRE_TOOLS=1.
#[test]
fn cfn_lint_passes_on_the_template() {
    let lint = std::env::var_os("BERTH_CFN_LINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/cfn-lint"));
    if !lint.exists() {
        assert!(
            !support::tools_required(),
            "cfn-lint is not at {}, and BERTH_REQUIRE_TOOLS=1: run `bash scripts/test.sh` (it installs it) or set \
             BERTH_CFN_LINT",
            lint.display()
        );
        eprintln!(
            "SKIPPED cfn_lint_passes_on_the_template: cfn-lint is not at {} (bash scripts/test.sh installs it)",
            lint.display()
        );
        return;
    }
    let out = Command::new(&lint)
        .arg(TEMPLATE)
        .current_dir(root())
        .output()
        .expect("cfn-lint runs");
    assert!(
        out.status.success(),
        "cfn-lint {TEMPLATE} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the fixture script against moto and parses the JSON it prints.
fn fixture(endpoint: &str, args: &[&str]) -> Value {
    let python = root().join(".venv/bin/python");
    let out = Command::new(&python)
        .arg(root().join("scripts/interruption_queue_fixture.py"))
        .args(["--endpoint", endpoint, "--region", REGION])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", python.display()));
    assert!(
        out.status.success(),
        "interruption_queue_fixture.py {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fixture printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A name no other run against the same moto has used (BERTH_MOTO_ENDPOINT may name a long-lived server).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

#[test]
fn the_stack_routes_each_interruption_event_to_the_queue_as_eventbridges_envelope() {
    let endpoint = moto::endpoint();
    let cluster = unique("it");
    let stack = fixture(&endpoint, &["create-stack", "--cluster-name", &cluster]);

    // The queue: named for the cluster, five minutes' retention, SSE, and the outputs.
    let queue_name = format!("berth-{cluster}-interruptions");
    let queue_arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{queue_name}");
    assert_eq!(stack["QueueName"], queue_name.as_str());
    assert_eq!(stack["QueueArn"], queue_arn.as_str());
    let queue_url = stack["QueueUrl"].as_str().unwrap().to_string();
    assert!(
        queue_url.ends_with(&format!("/{ACCOUNT}/{queue_name}")),
        "{queue_url}"
    );
    let attributes = &stack["QueueAttributes"];
    assert_eq!(attributes["QueueArn"], queue_arn.as_str());
    assert_eq!(attributes["MessageRetentionPeriod"], "300");
    assert_eq!(attributes["SqsManagedSseEnabled"], "true");

    // The policy: EventBridge (and SQS, as Karpenter allows) may send to this queue only; non-TLS is denied.
    let policy: Value = serde_json::from_str(attributes["Policy"].as_str().unwrap()).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 2, "{policy}");
    let allow = statements.iter().find(|s| s["Effect"] == "Allow").unwrap();
    assert_eq!(
        allow["Principal"],
        json!({"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]})
    );
    assert_eq!(allow["Action"], "sqs:SendMessage");
    assert_eq!(allow["Resource"], queue_arn.as_str());
    let deny = statements.iter().find(|s| s["Effect"] == "Deny").unwrap();
    assert_eq!(deny["Principal"], "*");
    assert_eq!(deny["Action"], "sqs:*");
    assert_eq!(deny["Resource"], queue_arn.as_str());
    assert_eq!(
        deny["Condition"],
        json!({"Bool": {"aws:SecureTransport": "false"}})
    );

    // The four rules, each enabled, with the queue as its one target.
    let rules: BTreeMap<&str, &Value> = stack["Rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["LogicalId"].as_str().unwrap(), r))
        .collect();
    let expected_patterns = BTreeMap::from([
        (
            "InstanceStateChangeRule",
            json!({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"],
                   "detail": {"state": ["stopping", "stopped", "shutting-down", "terminated"]}}),
        ),
        (
            "RebalanceRule",
            json!({"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]}),
        ),
        (
            "ScheduledChangeRule",
            json!({"source": ["aws.health"], "detail-type": ["AWS Health Event"],
                   "detail": {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"]}}),
        ),
        (
            "SpotInterruptionRule",
            json!({"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]}),
        ),
    ]);
    assert_eq!(
        rules.keys().collect::<Vec<_>>(),
        expected_patterns.keys().collect::<Vec<_>>()
    );
    for (id, pattern) in &expected_patterns {
        let rule = rules[id];
        assert_eq!(&rule["EventPattern"], pattern, "{id}");
        assert_eq!(rule["State"], "ENABLED", "{id}");
        let targets = rule["Targets"].as_array().unwrap();
        assert_eq!(targets.len(), 1, "{id}: {targets:?}");
        assert_eq!(targets[0]["Arn"], queue_arn.as_str(), "{id}");
    }

    // One event of each kind, each about its own instance, and three the rules must not pass: a state change to
    // running, a Health event of another service, and an EC2 Health event that is an issue, not a scheduled change.
    // Instance ids as EC2 writes them (i- and 17 hex digits), unique to this run.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id()) << 40;
    let instance = |n: u32| format!("i-{:015x}{n:02x}", run & 0x0fff_ffff_ffff_ffff);
    let matching = [
        ("spot-interruption", instance(1), vec![]),
        ("rebalance", instance(2), vec![]),
        ("state-change", instance(3), vec!["--state", "stopping"]),
        ("scheduled-change", instance(4), vec![]),
    ];
    let filtered = [
        ("state-change", instance(5), vec!["--state", "running"]),
        ("scheduled-change", instance(6), vec!["--service", "RDS"]),
        ("scheduled-change", instance(7), vec!["--category", "issue"]),
    ];
    let mut sent = BTreeMap::new();
    for (kind, id, extra) in matching.iter().chain(&filtered) {
        let mut args = vec!["put-event", kind, id.as_str()];
        args.extend(extra);
        sent.insert(id.clone(), fixture(&endpoint, &args));
    }

    // Other tests' stacks on moto's default bus may route their events here too: only this test's instances count.
    let received = fixture(&endpoint, &["receive", &queue_url]);
    let mut delivered = BTreeMap::new();
    for message in received.as_array().unwrap() {
        let body = &message["Body"];
        let Some(id) = sent
            .keys()
            .find(|id| body.to_string().contains(id.as_str()))
        else {
            continue;
        };
        assert!(
            delivered.insert(id.clone(), body.clone()).is_none(),
            "{id} delivered twice"
        );
    }
    let mut expected_ids: Vec<&String> = matching.iter().map(|(_, id, _)| id).collect();
    expected_ids.sort();
    assert_eq!(
        delivered.keys().collect::<Vec<_>>(),
        expected_ids,
        "exactly the four matching events arrive"
    );

    for (kind, id, _) in &matching {
        let put = &sent[id];
        let body = &delivered[id];
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut envelope = vec![
            "detail",
            "detail-type",
            "id",
            "region",
            "resources",
            "source",
            "time",
            "version",
        ];
        if body.get("account").is_some() {
            // AWS always sends it; moto 5 does not (see the top of this file).
            assert_eq!(body["account"], ACCOUNT, "{kind}");
            envelope.push("account");
            envelope.sort();
        }
        assert_eq!(keys, envelope, "{kind}: {body}");
        assert_eq!(body["version"], "0", "{kind}");
        assert_eq!(body["id"], put["EventId"], "{kind}");
        assert_eq!(body["detail-type"], put["DetailType"], "{kind}");
        assert_eq!(body["source"], put["Source"], "{kind}");
        assert_eq!(body["time"], put["Time"], "{kind}");
        assert_eq!(body["region"], REGION, "{kind}");
        assert_eq!(body["resources"], put["Resources"], "{kind}");
        assert_eq!(body["detail"], put["Detail"], "{kind}");
    }

    // What a consumer reads from each, in EventBridge's shapes.
    let instance_arn = |id: &str| json!([format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{id}")]);
    let spot = &delivered[&matching[0].1];
    assert_eq!(spot["source"], "aws.ec2");
    assert_eq!(
        spot["detail-type"],
        "EC2 Spot Instance Interruption Warning"
    );
    assert_eq!(
        spot["detail"],
        json!({"instance-id": matching[0].1, "instance-action": "terminate"})
    );
    assert_eq!(spot["resources"], instance_arn(&matching[0].1));
    let rebalance = &delivered[&matching[1].1];
    assert_eq!(
        rebalance["detail-type"],
        "EC2 Instance Rebalance Recommendation"
    );
    assert_eq!(rebalance["detail"], json!({"instance-id": matching[1].1}));
    assert_eq!(rebalance["resources"], instance_arn(&matching[1].1));
    let state = &delivered[&matching[2].1];
    assert_eq!(
        state["detail-type"],
        "EC2 Instance State-change Notification"
    );
    assert_eq!(
        state["detail"],
        json!({"instance-id": matching[2].1, "state": "stopping"})
    );
    let health = &delivered[&matching[3].1];
    assert_eq!(health["source"], "aws.health");
    assert_eq!(health["detail-type"], "AWS Health Event");
    assert_eq!(health["resources"], json!([matching[3].1]));
    let detail = &health["detail"];
    assert_eq!(detail["service"], "EC2");
    assert_eq!(detail["eventTypeCategory"], "scheduledChange");
    assert_eq!(
        detail["eventTypeCode"],
        "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED"
    );
    assert_eq!(
        detail["affectedEntities"],
        json!([{"entityValue": matching[3].1}])
    );
    for field in ["startTime", "endTime", "lastUpdatedTime"] {
        // AWS Health writes RFC 1123 times: "Wed, 16 Aug 2023 23:18:51 GMT".
        let t = detail[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {detail}"));
        assert!(
            chrono::DateTime::parse_from_rfc2822(t).is_ok() && t.ends_with(" GMT"),
            "{field} {t:?}"
        );
    }
    assert!(detail["eventArn"]
        .as_str()
        .unwrap()
        .starts_with("arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/"));
}

mod berth_consumes {
    //! The whole path with berth at its end: the stack's rules → PutEvents → the SQS queue → berth's interruption
    //! controller (the AWS provider against moto) → the Machine in the emulator. The Machine controller, the drain
    //! and the replacement are tested against the simulated cloud (tests/autoscaling.rs); here what matters is that
    //! real SQS messages from real EventBridge routing are read, acted on once and deleted.

    use super::{fixture, moto, unique, REGION};
    use berth::api::{crds, Cluster, Machine};
    use berth::cloud::aws::{AwsCloud, AwsConfig};
    use berth::cloud::clock::{SharedClock, SystemClock};
    use berth::cloud::metrics::CloudMetrics;
    use berth::cloud::CloudProvider;
    use berth::controllers::interruption::InterruptionConfig;
    use berth::controllers::Context;
    use berth::emulator::Emulator;
    use berth::model::instance_type::CapacityType;
    use berth::state::cluster::ClusterCache;
    use berth::telemetry::metrics::Metrics;
    use k8s_openapi::api::core::v1::Event;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
    use std::sync::Arc;
    use std::time::Duration;

    async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    struct Setup {
        client: kube::Client,
        cloud: Arc<AwsCloud>,
        metrics: Metrics,
        _emulator: Emulator,
        stop: tokio::sync::watch::Sender<bool>,
    }

    /// An emulated cluster whose Cluster names `queue`, a spot Machine owning `instance`, and berth's interruption
    /// and Cluster controllers running against moto.
    async fn start(cluster: &str, queue: &str, instance: &str) -> Setup {
        let emulator = Emulator::new();
        let client = emulator.client();
        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crds() {
            crd_api.create(&PostParams::default(), &crd).await.unwrap();
        }
        let object = |v: serde_json::Value| serde_json::from_value::<serde_json::Value>(v).unwrap();
        Api::<Cluster>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(object(serde_json::json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": cluster},
                "spec": {"clusterName": cluster, "apiServerEndpoint": "https://example.invalid",
                         "certificateAuthority": "Q0E=", "serviceCidr": "10.100.0.0/16", "interruptionQueue": queue}
            }))).unwrap())
            .await
            .unwrap();
        let machines: Api<Machine> = Api::namespaced(client.clone(), "default");
        machines
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "apiVersion": "berth.dev/v1alpha1", "kind": "Machine",
                    "metadata": {"name": "spot-1", "namespace": "default"},
                    "spec": {"classRef": {"name": "general"}}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        machines
            .patch_status(
                "spot-1",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": {
                    "phase": "Running", "instanceID": instance, "instanceType": "m7i.large",
                    "zone": "us-east-1a", "capacityType": "spot",
                    "providerID": format!("aws:///us-east-1a/{instance}")
                }})),
            )
            .await
            .unwrap();
        let mut config = AwsConfig::new(cluster);
        config.region = Some(REGION.into());
        config.endpoint_url = Some(moto::endpoint());
        let clock: SharedClock = Arc::new(SystemClock);
        let cloud = Arc::new(
            AwsCloud::connect(config, clock.clone(), CloudMetrics::unregistered().unwrap())
                .await
                .expect("connect to moto"),
        );
        let metrics = Metrics::new().unwrap();
        let ctx = Arc::new(Context::new(client.clone(), clock, metrics.clone()));
        let cache = ClusterCache::start(&client);
        let (stop, rx) = tokio::sync::watch::channel(false);
        let signal = |rx: tokio::sync::watch::Receiver<bool>| async move {
            let mut rx = rx;
            let _ = rx.wait_for(|s| *s).await;
        };
        tokio::spawn(berth::controllers::interruption::run(
            ctx.clone(),
            cache.clone(),
            cloud.clone(),
            InterruptionConfig {
                queue: None,
                cluster_name: cluster.into(),
            },
            signal(rx.clone()),
        ));
        tokio::spawn(berth::controllers::cluster::run(
            ctx,
            cache,
            Arc::new(berth::model::aws_catalog::bundled_catalog("us-east-1").unwrap()),
            cluster.into(),
            signal(rx),
        ));
        Setup {
            client,
            cloud,
            metrics,
            _emulator: emulator,
            stop,
        }
    }

    /// Whether the Cluster's InterruptionQueueReady condition has this status and, when given, reason.
    async fn queue_condition(
        clusters: &Api<Cluster>,
        cluster: &str,
        status: &str,
        reason: Option<&str>,
    ) -> bool {
        clusters
            .get(cluster)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .conditions
            .iter()
            .any(|c| {
                c.type_ == "InterruptionQueueReady"
                    && format!("{:?}", c.status) == status
                    && reason.is_none_or(|r| c.reason == r)
            })
    }

    fn counter(metrics: &Metrics, family: &str, label: &str) -> f64 {
        let text = metrics.encode().unwrap();
        text.lines()
            .find(|l| l.starts_with(family) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spot_warning_routed_by_eventbridge_is_acted_on_once_and_deleted() {
        let endpoint = moto::endpoint();
        let cluster = unique("e2e");
        let stack = fixture(&endpoint, &["create-stack", "--cluster-name", &cluster]);
        let queue = stack["QueueName"].as_str().unwrap().to_string();
        let instance = format!("i-0{:016x}", std::process::id() as u64 * 7919 + 17);
        let s = start(&cluster, &queue, &instance).await;
        let clusters: Api<Cluster> = Api::all(s.client.clone());
        eventually("InterruptionQueueReady=True on the Cluster", 30, || async {
            queue_condition(&clusters, &cluster, "True", None).await
        })
        .await;

        // A state change first: the Machine is told to look again, and stays.
        fixture(
            &endpoint,
            &[
                "put-event",
                "state-change",
                &instance,
                "--state",
                "stopping",
            ],
        );
        let machines: Api<Machine> = Api::namespaced(s.client.clone(), "default");
        eventually("the state-change notice on the Machine", 60, || async {
            machines
                .get("spot-1")
                .await
                .unwrap()
                .metadata
                .annotations
                .unwrap_or_default()
                .get("berth.dev/instance-state-notice")
                .is_some_and(|n| n.ends_with("instance stopping"))
        })
        .await;

        // The warning: the Machine is marked and deleted, the pool unavailable, the message gone from the queue.
        fixture(&endpoint, &["put-event", "spot-interruption", &instance]);
        eventually("the interrupted Machine deleted", 60, || async {
            machines.get_opt("spot-1").await.unwrap().is_none()
        })
        .await;
        let events: Vec<Event> = Api::<Event>::all(s.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        assert!(events
            .iter()
            .any(|e| e.reason.as_deref() == Some("SpotInterrupted")
                && e.message.as_deref().unwrap_or_default().contains(&instance)));
        assert!(s
            .cloud
            .unavailable_offerings()
            .current()
            .iter()
            .any(|o| o.instance_type == "m7i.large"
                && o.zone == "us-east-1a"
                && o.capacity_type == CapacityType::Spot));
        eventually("both messages deleted from the queue", 60, || async {
            counter(
                &s.metrics,
                "berth_interruption_messages_total",
                "result=\"acted\"",
            ) >= 2.0
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let left = fixture(&endpoint, &["receive", stack["QueueUrl"].as_str().unwrap()]);
        assert_eq!(left, serde_json::json!([]), "the queue is empty");
        assert_eq!(
            counter(
                &s.metrics,
                "berth_interruptions_total",
                "kind=\"spot_interruption\""
            ),
            1.0
        );
        let _ = s.stop.send(true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_queue_is_told_on_the_cluster_and_berth_keeps_trying() {
        let cluster = unique("nq");
        let s = start(
            &cluster,
            &format!("berth-{cluster}-does-not-exist"),
            "i-0abc",
        )
        .await;
        let clusters: Api<Cluster> = Api::all(s.client.clone());
        eventually(
            "InterruptionQueueReady=False, QueueNotFound",
            30,
            || async { queue_condition(&clusters, &cluster, "False", Some("QueueNotFound")).await },
        )
        .await;
        eventually("a Warning Event on the Cluster", 10, || async {
            Api::<Event>::all(s.client.clone())
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("InterruptionQueueUnavailable"))
        })
        .await;
        // The queue appears (the stack is deployed late): berth finds it on its next try.
        let stack = fixture(
            &moto::endpoint(),
            &["create-stack", "--cluster-name", &cluster],
        );
        clusters
            .patch(
                &cluster,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "spec": {"interruptionQueue": stack["QueueName"]}
                })),
            )
            .await
            .unwrap();
        eventually(
            "InterruptionQueueReady=True once the queue exists",
            60,
            || async { queue_condition(&clusters, &cluster, "True", None).await },
        )
        .await;
        let _ = s.stop.send(true);
    }
}
