//! The simulated cloud through the `CloudProvider` trait: the launch sequence and every error path.

use berth::cloud::action::Action;
use berth::cloud::clock::{SharedClock, TokioClock};
use berth::cloud::metrics::{CloudMetrics, Outcome};
use berth::cloud::sim::fixtures::{request, small_catalog};
use berth::cloud::sim::{Fault, SimConfig, SimInstanceEvent, SimNodeGroup, SimulatedCloud};
use berth::cloud::{
    tags, ClassRevision, CloudError, CloudProvider, ImageSpec, InstanceTypeChoice, OfferingKey,
    ResourceSelector,
};
use berth::model::instance_type::CapacityType;
use berth::model::taints::{Taint, TaintEffect};
use chrono::DateTime;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn config() -> SimConfig {
    let clock: SharedClock = Arc::new(TokioClock::new(
        DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
    ));
    SimConfig::new(
        "us-east-1",
        "test-cluster",
        small_catalog(),
        clock,
        CloudMetrics::unregistered().unwrap(),
    )
}

fn cloud() -> SimulatedCloud {
    SimulatedCloud::new(config())
}

fn offering(t: &str, zone: &str, ct: CapacityType) -> OfferingKey {
    OfferingKey {
        instance_type: t.into(),
        zone: zone.into(),
        capacity_type: ct,
    }
}

#[tokio::test(start_paused = true)]
async fn launch_picks_the_cheapest_spot_offering_tags_it_and_announces_it() {
    let c = cloud();
    let mut events = c.subscribe();
    let mut r = request("m-1");
    r.bootstrap.taints = vec![Taint::new("dedicated", "web", TaintEffect::NoSchedule).unwrap()];
    let out = c.launch(&r).await.unwrap();
    // c5.large is the cheapest type; zone a has the lowest spot factor.
    assert_eq!(out.instance.instance_type, "c5.large");
    assert_eq!(out.instance.zone, "us-east-1a");
    assert_eq!(out.instance.capacity_type, CapacityType::Spot);
    assert!(!out.fell_back_to_on_demand);
    assert_eq!(
        out.instance.provider_id(),
        format!("aws:///us-east-1a/{}", out.instance.instance_id)
    );
    assert_eq!(c.call_count(Action::CreateFleet), 1);
    assert_eq!(c.call_count(Action::CreateLaunchTemplate), 1);

    let described = c.describe_instances().await.unwrap();
    assert_eq!(described.len(), 1);
    let i = &described[0];
    assert_eq!(i.tags[tags::CLUSTER], "test-cluster");
    assert_eq!(i.tags[tags::MANAGED], "true");
    assert_eq!(i.tags[tags::MACHINE_NAME], "m-1");
    assert_eq!(i.tags[tags::MACHINE_NAMESPACE], "default");
    assert_eq!(i.tags[tags::MACHINE_DEPLOYMENT], "web");
    assert_eq!(i.tags["team"], "platform");
    assert_eq!(i.machine().unwrap().uid, "uid-m-1");
    assert_eq!(i.state.as_str(), "pending");

    let SimInstanceEvent::Launched(e) = events.recv().await.unwrap() else {
        panic!("expected a launch event")
    };
    assert_eq!(e.instance_id, out.instance.instance_id);
    assert_eq!(e.labels["node.kubernetes.io/instance-type"], "c5.large");
    assert_eq!(e.labels["topology.kubernetes.io/zone"], "us-east-1a");
    assert_eq!(e.labels["karpenter.sh/capacity-type"], "spot");
    assert_eq!(e.labels["berth.dev/machine-deployment"], "web");
    assert_eq!(e.taints, r.bootstrap.taints);
    assert_eq!(e.capacity["cpu"], "2");
    assert!(e.allocatable.contains_key("memory"));
    assert_eq!(e.boot_delay, Duration::from_secs(30));
    assert!(e.joins_cluster);

    let Some(berth::emulator::kubelet::InstanceEvent::Launched(k)) =
        berth::cloud::sim::kubelet_event(&SimInstanceEvent::Launched(e.clone()))
    else {
        panic!("a joining instance becomes a kubelet launch event")
    };
    assert_eq!(k.capacity_type, "spot");
    assert_eq!(k.taints[0].key, "dedicated");
    assert_eq!(k.taints[0].value.as_deref(), Some("web"));

    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        c.describe_instances().await.unwrap()[0].state.as_str(),
        "running"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_launch_returns_the_same_instance() {
    let c = cloud();
    let a = c.launch(&request("m-1")).await.unwrap();
    let b = c.launch(&request("m-1")).await.unwrap();
    assert_eq!(a.instance.instance_id, b.instance.instance_id);
    assert_eq!(c.live_instance_count(), 1);
    assert_eq!(
        c.call_count(Action::CreateLaunchTemplate),
        1,
        "the template is reused"
    );
    // The next attempt is a new launch.
    let mut r = request("m-1");
    r.attempt = 1;
    let d = c.launch(&r).await.unwrap();
    assert_ne!(d.instance.instance_id, a.instance.instance_id);
}

#[tokio::test(start_paused = true)]
async fn spot_shortage_falls_back_to_on_demand_and_is_cached() {
    let c = cloud();
    c.inject(
        Fault::InsufficientCapacity {
            instance_type: None,
            zone: None,
            capacity_type: Some(CapacityType::Spot),
        },
        None,
    );
    let out = c.launch(&request("m-1")).await.unwrap();
    assert_eq!(out.instance.capacity_type, CapacityType::OnDemand);
    assert!(out.fell_back_to_on_demand);
    // Every spot offering of the plan failed in one CreateFleet: 3 amd64 types × 3 zones.
    assert_eq!(out.failed_offerings.len(), 9);
    assert!(out
        .failed_offerings
        .iter()
        .all(|f| f.code == "InsufficientInstanceCapacity"));
    assert!(c.unavailable_offerings().is_unavailable(&offering(
        "c5.large",
        "us-east-1a",
        CapacityType::Spot
    )));
    let catalog = c.instance_types().await.unwrap();
    let o = catalog
        .get("c5.large")
        .unwrap()
        .offerings
        .iter()
        .find(|o| o.capacity_type == CapacityType::Spot)
        .unwrap();
    assert!(
        !o.available,
        "the catalog the planner reads marks cached offerings"
    );

    // While cached, the next launch does not ask for spot at all.
    c.clear_faults();
    let fleets_before = c.call_count(Action::CreateFleet);
    let out = c.launch(&request("m-2")).await.unwrap();
    assert_eq!(out.instance.capacity_type, CapacityType::OnDemand);
    assert_eq!(c.call_count(Action::CreateFleet), fleets_before + 1);

    // After the TTL (3 minutes) spot is tried again.
    tokio::time::advance(Duration::from_secs(181)).await;
    let out = c.launch(&request("m-3")).await.unwrap();
    assert_eq!(out.instance.capacity_type, CapacityType::Spot);
}

#[tokio::test(start_paused = true)]
async fn partial_fleet_results_launch_the_next_offering() {
    let c = cloud();
    c.inject(
        Fault::InsufficientCapacity {
            instance_type: Some("c5.large".into()),
            zone: Some("us-east-1a".into()),
            capacity_type: None,
        },
        None,
    );
    let out = c.launch(&request("m-1")).await.unwrap();
    assert_eq!(out.instance.capacity_type, CapacityType::Spot);
    assert_eq!(out.failed_offerings.len(), 1);
    assert_eq!(
        out.failed_offerings[0].offering,
        offering("c5.large", "us-east-1a", CapacityType::Spot)
    );
    assert!(!(out.instance.instance_type == "c5.large" && out.instance.zone == "us-east-1a"));
}

#[tokio::test(start_paused = true)]
async fn no_capacity_anywhere_is_insufficient_capacity_and_the_retry_makes_no_call() {
    let c = cloud();
    let mut r = request("m-1");
    r.fallback_to_on_demand = false;
    c.inject(
        Fault::InsufficientCapacity {
            instance_type: None,
            zone: None,
            capacity_type: None,
        },
        None,
    );
    let e = c.launch(&r).await.unwrap_err();
    let CloudError::InsufficientCapacity { offerings } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(offerings.len(), 9);
    assert!(!e.launch_may_have_happened());
    let fleets = c.call_count(Action::CreateFleet);
    r.attempt = 1;
    let e = c.launch(&r).await.unwrap_err();
    assert_eq!(e.category(), "insufficient-capacity");
    assert_eq!(
        c.call_count(Action::CreateFleet),
        fleets,
        "every offering is cached: no call"
    );
    assert_eq!(c.live_instance_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn per_offering_capacity_limits_run_out() {
    let mut cfg = config();
    for z in ["us-east-1a", "us-east-1b"] {
        cfg.capacity_limits
            .insert(offering("m5.large", z, CapacityType::OnDemand), 1);
    }
    cfg.capacity_limits.insert(
        offering("m5.large", "us-east-1c", CapacityType::OnDemand),
        0,
    );
    let c = SimulatedCloud::new(cfg);
    let mut r = request("m-1");
    r.instance_types = vec![InstanceTypeChoice::new("m5.large")];
    r.capacity_types = vec![CapacityType::OnDemand];
    // A single type: RunInstances, offering by offering.
    let a = c.launch(&r).await.unwrap();
    assert_eq!(c.call_count(Action::RunInstances), 1);
    assert_eq!(c.call_count(Action::CreateFleet), 0);
    let mut r2 = request("m-2");
    r2.instance_types = r.instance_types.clone();
    r2.capacity_types = r.capacity_types.clone();
    let b = c.launch(&r2).await.unwrap();
    assert_ne!(a.instance.zone, b.instance.zone);
    assert_eq!(b.failed_offerings.len(), 1, "the full zone failed first");
    let mut r3 = request("m-3");
    r3.instance_types = r.instance_types.clone();
    r3.capacity_types = r.capacity_types.clone();
    assert_eq!(
        c.launch(&r3).await.unwrap_err().category(),
        "insufficient-capacity"
    );
}

#[tokio::test(start_paused = true)]
async fn throttles_and_server_errors_are_retried_with_backoff() {
    let c = cloud();
    c.inject(
        Fault::Throttle {
            action: Action::CreateFleet,
        },
        Some(2),
    );
    c.inject(
        Fault::ServerError {
            action: Action::CreateFleet,
        },
        Some(1),
    );
    let start = tokio::time::Instant::now();
    let out = c.launch(&request("m-1")).await.unwrap();
    assert_eq!(c.live_instance_count(), 1);
    assert_eq!(
        c.metrics().calls(Action::CreateFleet, Outcome::Throttled),
        2
    );
    assert_eq!(
        c.metrics().calls(Action::CreateFleet, Outcome::ServerError),
        1
    );
    assert_eq!(c.metrics().calls(Action::CreateFleet, Outcome::Success), 1);
    assert_eq!(c.metrics().retries(Action::CreateFleet), 3);
    assert!(start.elapsed() > Duration::ZERO, "backoff waited");
    assert!(!out.instance.instance_id.is_empty());
}

#[tokio::test(start_paused = true)]
async fn endless_throttling_is_rate_limited_and_endless_5xx_is_transient() {
    let c = cloud();
    c.inject(
        Fault::Throttle {
            action: Action::CreateFleet,
        },
        None,
    );
    let e = c.launch(&request("m-1")).await.unwrap_err();
    assert_eq!(
        e,
        CloudError::RateLimited {
            action: "CreateFleet",
            attempts: 6
        }
    );
    assert!(e.is_retryable() && e.launch_may_have_happened());
    c.clear_faults();
    c.inject(
        Fault::ServerError {
            action: Action::CreateFleet,
        },
        None,
    );
    let e = c.launch(&request("m-2")).await.unwrap_err();
    assert_eq!(e.category(), "transient");
    c.clear_faults();
    c.inject(
        Fault::ApiError {
            action: Action::CreateFleet,
            code: "UnauthorizedOperation".into(),
            message: "no".into(),
        },
        Some(1),
    );
    let e = c.launch(&request("m-3")).await.unwrap_err();
    assert_eq!(e.category(), "api");
    assert_eq!(
        c.metrics().calls(Action::CreateFleet, Outcome::ClientError),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn slow_launches_take_their_time_and_boot_failures_never_join() {
    let c = cloud();
    let mut events = c.subscribe();
    c.inject(
        Fault::SlowCall {
            action: Action::CreateFleet,
            delay: Duration::from_secs(20),
        },
        Some(1),
    );
    c.inject(Fault::BootFailure, Some(1));
    let start = tokio::time::Instant::now();
    c.launch(&request("m-1")).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(20));
    let SimInstanceEvent::Launched(e) = events.recv().await.unwrap() else {
        panic!()
    };
    assert!(!e.joins_cluster);
    c.launch(&request("m-2")).await.unwrap();
    let SimInstanceEvent::Launched(e) = events.recv().await.unwrap() else {
        panic!()
    };
    assert!(e.joins_cluster);
}

#[tokio::test(start_paused = true)]
async fn bad_classes_are_invalid_configuration_without_a_launch_call() {
    let c = cloud();
    type Mutation = Box<dyn Fn(&mut berth::cloud::LaunchRequest)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|r| r.image = ImageSpec::Id("ami-missing".into())),
            "AMI ami-missing does not exist",
        ),
        (
            Box::new(|r| r.subnets = ResourceSelector::Ids(vec!["subnet-nope".into()])),
            "subnet subnet-nope does not exist",
        ),
        (
            Box::new(|r| r.security_groups = ResourceSelector::Ids(vec!["sg-nope".into()])),
            "security group sg-nope does not exist",
        ),
        (
            Box::new(|r| {
                r.subnets = ResourceSelector::Tags(BTreeMap::from([("tier".into(), "none".into())]))
            }),
            "no subnet matches",
        ),
        (
            Box::new(|r| r.instance_types = vec![InstanceTypeChoice::new("z9.mega")]),
            "z9.mega",
        ),
        (
            Box::new(|r| r.image = ImageSpec::Id("ami-sim-arm64".into())),
            "AMI ami-sim-arm64 is arm64, the instance types are amd64",
        ),
        (
            Box::new(|r| r.bootstrap.cluster_cidr.clear()),
            "clusterCIDR",
        ),
    ];
    for (i, (mutate, needle)) in cases.into_iter().enumerate() {
        let mut r = request(&format!("m-{i}"));
        mutate(&mut r);
        let e = c.launch(&r).await.unwrap_err();
        assert_eq!(e.category(), "invalid-configuration", "{e}");
        assert!(
            e.to_string().contains(needle),
            "{e} should mention {needle}"
        );
        assert!(!e.is_retryable());
    }
    assert_eq!(
        c.call_count(Action::CreateFleet) + c.call_count(Action::RunInstances),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn changed_parameters_under_the_same_token_adopt_the_machines_instance() {
    let c = cloud();
    let first = c.launch(&request("m-1")).await.unwrap();
    // Same Machine and attempt, but the plan changed (one offering now cached): EC2 would answer
    // IdempotentParameterMismatch; berth finds the instance by the Machine's uid tag instead of launching again.
    c.unavailable_offerings()
        .mark(offering("m5.xlarge", "us-east-1c", CapacityType::Spot));
    let again = c.launch(&request("m-1")).await.unwrap();
    assert_eq!(again.instance.instance_id, first.instance.instance_id);
    assert_eq!(c.live_instance_count(), 1);
    // With the instance gone, the conflict is reported so the controller moves to the next attempt.
    c.terminate(std::slice::from_ref(&first.instance.instance_id))
        .await
        .unwrap();
    c.unavailable_offerings()
        .mark(offering("m5.xlarge", "us-east-1b", CapacityType::Spot));
    let e = c.launch(&request("m-1")).await.unwrap_err();
    assert_eq!(e.category(), "idempotency-conflict");
    assert!(!e.launch_may_have_happened());
}

#[tokio::test(start_paused = true)]
async fn terminate_touches_only_this_clusters_instances() {
    let c = cloud();
    let mut events = c.subscribe();
    let ours = c
        .launch(&request("m-1"))
        .await
        .unwrap()
        .instance
        .instance_id;
    let _ = events.recv().await.unwrap();
    let foreign = c.add_foreign_instance(
        "m5.large",
        "us-east-1a",
        BTreeMap::from([(tags::CLUSTER.to_string(), "other".to_string())]),
    );
    let out = c
        .terminate(&[ours.clone(), foreign.clone(), "i-doesnotexist".into()])
        .await
        .unwrap();
    assert_eq!(out.terminating, vec![ours.clone()]);
    assert_eq!(
        out.not_owned_or_missing,
        vec![foreign.clone(), "i-doesnotexist".to_string()]
    );
    assert_eq!(c.live_instance_count(), 1, "the foreign instance lives on");
    assert!(
        matches!(events.recv().await.unwrap(), SimInstanceEvent::Terminated { instance_id, .. } if instance_id == ours)
    );
    assert!(c.describe_instances().await.unwrap().is_empty());
    let again = c.terminate(std::slice::from_ref(&ours)).await.unwrap();
    assert_eq!(again.already_terminated, vec![ours]);
}

#[tokio::test(start_paused = true)]
async fn node_groups_are_discovered_scaled_and_shrunk_with_decrement() {
    let mut cfg = config();
    let enabled = BTreeMap::from([
        (tags::ASG_ENABLED.to_string(), "true".to_string()),
        (tags::CLUSTER.to_string(), "test-cluster".to_string()),
    ]);
    cfg.node_groups = vec![
        SimNodeGroup {
            name: "ng-a".into(),
            min_size: 1,
            max_size: 5,
            desired_capacity: 2,
            instance_type: "m5.large".into(),
            zones: vec!["us-east-1a".into(), "us-east-1b".into()],
            tags: enabled,
        },
        SimNodeGroup {
            name: "not-ours".into(),
            min_size: 0,
            max_size: 5,
            desired_capacity: 1,
            instance_type: "m5.large".into(),
            zones: vec!["us-east-1a".into()],
            tags: BTreeMap::new(),
        },
    ];
    let c = SimulatedCloud::new(cfg);
    let groups = c.node_groups().await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "ng-a");
    assert_eq!(
        (
            groups[0].min_size,
            groups[0].max_size,
            groups[0].desired_capacity
        ),
        (1, 5, 2)
    );
    assert_eq!(groups[0].instance_types, vec!["m5.large".to_string()]);
    assert_eq!(groups[0].instances.len(), 2);

    c.set_node_group_desired_capacity("ng-a", 4).await.unwrap();
    assert_eq!(c.node_groups().await.unwrap()[0].instances.len(), 4);
    assert_eq!(
        c.set_node_group_desired_capacity("ng-a", 6)
            .await
            .unwrap_err()
            .category(),
        "invalid-configuration"
    );
    assert_eq!(
        c.set_node_group_desired_capacity("missing", 1)
            .await
            .unwrap_err()
            .category(),
        "not-found"
    );
    assert_eq!(
        c.set_node_group_desired_capacity("not-ours", 2)
            .await
            .unwrap_err()
            .category(),
        "not-found"
    );

    let victim = c.node_groups().await.unwrap()[0].instances[0]
        .instance_id
        .clone();
    c.terminate_node_group_instance("ng-a", &victim)
        .await
        .unwrap();
    let g = &c.node_groups().await.unwrap()[0];
    assert_eq!(g.desired_capacity, 3);
    assert_eq!(g.instances.len(), 3);
    assert!(g.instances.iter().all(|i| i.instance_id != victim));
    assert_eq!(
        c.terminate_node_group_instance("ng-a", &victim)
            .await
            .unwrap_err()
            .category(),
        "not-found"
    );
}

#[tokio::test(start_paused = true)]
async fn launch_templates_of_dead_class_revisions_are_collected() {
    let c = cloud();
    c.launch(&request("m-1")).await.unwrap();
    let mut r = request("m-2");
    r.class = ClassRevision {
        name: "general".into(),
        revision: "2".into(),
    };
    r.bootstrap.labels.insert("v".into(), "2".into());
    c.launch(&r).await.unwrap();
    assert_eq!(c.launch_template_names().len(), 2);
    assert!(c
        .launch_template_names()
        .iter()
        .all(|n| n.starts_with("berth/test-cluster/general/")));
    // Templates younger than the cut-off are kept, whatever their revision (a launch may be about to use them).
    let launched_at = c.all_instances()[0].launch_time.unwrap();
    let kept = c
        .garbage_collect_launch_templates(&[r.class.clone()], launched_at)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    assert_eq!(c.launch_template_names().len(), 2);
    let deleted = c
        .garbage_collect_launch_templates(
            &[r.class.clone()],
            launched_at + chrono::Duration::seconds(1),
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(c.launch_template_names().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_launches_queues_instead_of_being_throttled() {
    let c = Arc::new(cloud());
    let mut tasks = Vec::new();
    for i in 0..120 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.launch(&request(&format!("m-{i}"))).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(c.live_instance_count(), 120);
    assert_eq!(c.server_throttles(), 0, "EC2's buckets were never exceeded");
    assert_eq!(c.metrics().total_calls(Outcome::Throttled), 0);
    assert!(
        c.metrics().limiter_waits(Action::CreateFleet) > 0,
        "the client queued"
    );
}

#[tokio::test(start_paused = true)]
async fn without_client_pacing_ec2_would_throttle() {
    let mut cfg = config();
    cfg.client_rate_limits = false;
    let c = Arc::new(SimulatedCloud::new(cfg));
    let mut tasks = Vec::new();
    for i in 0..120 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.launch(&request(&format!("m-{i}"))).await
        }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    assert!(c.server_throttles() > 0, "the server-side buckets are real");
}

#[tokio::test(start_paused = true)]
async fn eventual_consistency_hides_new_instances_and_shows_terminated_ones_for_a_while() {
    let mut cfg = config();
    cfg.consistency = berth::cloud::sim::Consistency {
        launch_invisible_for: Duration::from_secs(60),
        terminated_visible_for: Duration::from_secs(60),
    };
    // Seeds draw each instance's own delay: find one that hides this instance for at least a second.
    let c = SimulatedCloud::new(cfg);
    let out = c.launch(&request("m-1")).await.unwrap();
    let id = out.instance.instance_id.clone();
    let mut hidden_for = 0;
    while c.describe_instances().await.unwrap().is_empty() {
        let by_id = c.lookup_instances(std::slice::from_ref(&id)).await.unwrap();
        assert_eq!(by_id[&id], berth::cloud::InstanceLookup::NotFound);
        tokio::time::sleep(Duration::from_secs(1)).await;
        hidden_for += 1;
        assert!(hidden_for <= 61, "visible within the configured delay");
    }
    // The launch call's answer, and the ground truth, knew it all along.
    assert_eq!(c.all_instances().len(), 1);

    let outcome = c.terminate(std::slice::from_ref(&id)).await.unwrap();
    assert_eq!(outcome.terminating, vec![id.clone()]);
    let mut shown_for = 0;
    loop {
        let shown = c.describe_instances().await.unwrap();
        if shown.is_empty() {
            break;
        }
        assert_ne!(shown[0].state, berth::cloud::InstanceState::Terminated);
        tokio::time::sleep(Duration::from_secs(1)).await;
        shown_for += 1;
        assert!(
            shown_for <= 61,
            "shown as terminated within the configured delay"
        );
    }
    assert!(
        hidden_for + shown_for > 0,
        "with up to 60 s each, the seed hid or kept the instance a while"
    );
}
