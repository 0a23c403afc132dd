use super::*;
use crate::cloud::InstanceState;
use crate::model::instance_type::CapacityType;

const CLUSTER: &str = "prod";
const REGION: &str = "us-east-1";

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

/// A running instance in this cluster's name, launched `age` ago for Machine `uid` (None: no machine tags).
fn instance(id: &str, age: chrono::Duration, uid: Option<&str>) -> Instance {
    let mut tags = BTreeMap::from([
        (tags::CLUSTER.to_string(), CLUSTER.to_string()),
        (tags::MANAGED.to_string(), "true".to_string()),
    ]);
    if let Some(uid) = uid {
        tags.insert(tags::MACHINE_UID.into(), uid.into());
        tags.insert(tags::MACHINE_NAMESPACE.into(), "default".into());
        tags.insert(tags::MACHINE_NAME.into(), format!("m-{uid}"));
    }
    Instance {
        instance_id: id.into(),
        instance_type: "m6i.large".into(),
        zone: "us-east-1a".into(),
        capacity_type: CapacityType::OnDemand,
        state: InstanceState::Running,
        image_id: "ami-1".into(),
        private_dns_name: None,
        launch_time: Some(now() - age),
        tags,
    }
}

fn machine(uid: &str) -> MachineView {
    MachineView {
        uid: uid.into(),
        ..MachineView::default()
    }
}

fn ids(plan: &InstancePlan) -> Vec<&str> {
    plan.terminate
        .iter()
        .map(|s| s.instance_id.as_str())
        .collect()
}

#[test]
fn an_old_instance_whose_machine_is_gone_is_terminated_and_says_which_machine() {
    let s = GarbageSettings::default();
    let plan = plan_instances(
        CLUSTER,
        &[instance("i-0a", secs(600), Some("u1"))],
        &[machine("u2")],
        &s,
        now(),
    );
    assert_eq!(ids(&plan), ["i-0a"]);
    assert_eq!(plan.terminate[0].machine.as_deref(), Some("default/m-u1"));
    assert!(plan.terminate[0].message().contains("default/m-u1"));
}

#[test]
fn an_instance_without_machine_tags_is_stray_once_old() {
    let s = GarbageSettings::default();
    let plan = plan_instances(
        CLUSTER,
        &[
            instance("i-0a", secs(600), None),
            instance("i-0b", secs(10), None),
        ],
        &[],
        &s,
        now(),
    );
    assert_eq!(ids(&plan), ["i-0a"]);
    assert_eq!(plan.kept["i-0b"], InstanceKept::Young);
}

#[test]
fn the_grace_is_measured_from_the_launch_time() {
    let s = GarbageSettings {
        instance_grace: secs(120),
        ..GarbageSettings::default()
    };
    let at = |age| plan_instances(CLUSTER, &[instance("i-0a", age, None)], &[], &s, now());
    assert!(at(secs(119)).terminate.is_empty());
    assert_eq!(ids(&at(secs(120))), ["i-0a"]);
}

#[test]
fn an_instance_a_machine_could_still_adopt_is_never_terminated() {
    // The Machine exists without any status (its launch call returned, its status write did not happen yet).
    let s = GarbageSettings::default();
    let plan = plan_instances(
        CLUSTER,
        &[instance("i-0a", secs(3600), Some("u1"))],
        &[machine("u1")],
        &s,
        now(),
    );
    assert!(plan.terminate.is_empty());
    assert_eq!(plan.kept["i-0a"], InstanceKept::Owned);
}

#[test]
fn an_instance_a_machine_recorded_is_owned_whatever_its_uid_tag() {
    let s = GarbageSettings::default();
    let by_id = MachineView {
        uid: "other".into(),
        instance_id: Some("i-0a".into()),
        ..MachineView::default()
    };
    let by_provider = MachineView {
        uid: "other2".into(),
        provider_id: Some("aws:///us-east-1a/i-0b".into()),
        ..MachineView::default()
    };
    let plan = plan_instances(
        CLUSTER,
        &[
            instance("i-0a", secs(3600), Some("u1")),
            instance("i-0b", secs(3600), None),
        ],
        &[by_id, by_provider],
        &s,
        now(),
    );
    assert!(plan.terminate.is_empty(), "{plan:?}");
}

#[test]
fn other_clusters_auto_scaling_groups_terminating_and_undated_instances_are_kept() {
    let s = GarbageSettings::default();
    let mut other = instance("i-01", secs(3600), None);
    other.tags.insert(tags::CLUSTER.into(), "staging".into());
    let mut asg = instance("i-02", secs(3600), None);
    asg.tags.insert(ASG_GROUP_TAG.into(), "ng-a".into());
    let mut going = instance("i-03", secs(3600), None);
    going.state = InstanceState::ShuttingDown;
    let mut undated = instance("i-04", secs(3600), None);
    undated.launch_time = None;
    let plan = plan_instances(CLUSTER, &[other, asg, going, undated], &[], &s, now());
    assert!(plan.terminate.is_empty());
    assert_eq!(plan.kept["i-01"], InstanceKept::OtherCluster);
    assert_eq!(plan.kept["i-02"], InstanceKept::AutoScalingGroup);
    assert_eq!(plan.kept["i-03"], InstanceKept::Terminating);
    assert_eq!(plan.kept["i-04"], InstanceKept::LaunchTimeUnknown);
}

#[test]
fn provider_ids_parse_only_as_ec2_instances() {
    assert_eq!(
        parse_provider_id("aws:///us-east-1a/i-0abc123"),
        Some(("us-east-1a", "i-0abc123"))
    );
    for bad in [
        "",
        "gce://project/zone/vm-1",
        "aws://us-east-1a/i-0abc",
        "aws:///us-east-1a/",
        "aws:///us-east-1a/fargate-ip-10-0-0-1",
        "aws:///i-0abc",
        "aws:////i-0abc",
        "aws:///us-east-1a/i-zz",
        "kind://docker/kind/kind-worker",
    ] {
        assert_eq!(parse_provider_id(bad), None, "{bad}");
    }
}

fn node(name: &str, provider: Option<&str>) -> NodeView {
    NodeView {
        name: name.into(),
        uid: format!("uid-{name}"),
        provider_id: provider.map(str::to_string),
        deleting: false,
    }
}

fn gone(ids: &[&str]) -> BTreeMap<String, InstanceLookup> {
    ids.iter()
        .map(|id| (id.to_string(), InstanceLookup::NotFound))
        .collect()
}

#[test]
fn only_unowned_ec2_nodes_of_this_region_are_looked_up() {
    let nodes = [
        node("a", Some("aws:///us-east-1a/i-0a")),
        node("b", Some("aws:///us-east-1b/i-0b")),
        node("c", Some("aws:///us-east-1c/i-0c")),
        node("d", Some("aws:///eu-west-1a/i-0d")),
        node("e", None),
        node("f", Some("gce://p/us-east1-b/vm")),
        node("g", Some("aws:///us-east-1a/i-0f")),
    ];
    let machines = [
        MachineView {
            uid: "1".into(),
            provider_id: Some("aws:///us-east-1b/i-0b".into()),
            ..MachineView::default()
        },
        MachineView {
            uid: "2".into(),
            node_name: Some("c".into()),
            ..MachineView::default()
        },
        MachineView {
            uid: "3".into(),
            instance_id: Some("i-0f".into()),
            ..MachineView::default()
        },
    ];
    assert_eq!(nodes_to_look_up(REGION, &nodes, &machines), ["i-0a"]);
    // No region known: nothing can be judged.
    assert!(nodes_to_look_up("", &nodes, &machines).is_empty());
}

#[test]
fn a_node_is_deleted_only_after_its_instance_was_seen_gone_for_the_grace() {
    let s = GarbageSettings {
        node_grace: secs(60),
        ..GarbageSettings::default()
    };
    let nodes = [node("a", Some("aws:///us-east-1a/i-0a"))];
    let first = plan_nodes(
        REGION,
        &nodes,
        &[],
        &gone(&["i-0a"]),
        &BTreeMap::new(),
        &s,
        now(),
    );
    assert!(first.delete.is_empty());
    assert_eq!(first.gone_since["a"], now());
    let early = plan_nodes(
        REGION,
        &nodes,
        &[],
        &gone(&["i-0a"]),
        &first.gone_since,
        &s,
        now() + secs(59),
    );
    assert!(early.delete.is_empty());
    let later = plan_nodes(
        REGION,
        &nodes,
        &[],
        &gone(&["i-0a"]),
        &first.gone_since,
        &s,
        now() + secs(60),
    );
    assert_eq!(later.delete.len(), 1);
    assert_eq!(later.delete[0].name, "a");
    assert_eq!(later.delete[0].uid, "uid-a");
    assert_eq!(later.delete[0].instance_id, "i-0a");
}

#[test]
fn terminated_counts_as_gone_but_running_or_no_answer_resets_the_clock() {
    let s = GarbageSettings {
        node_grace: secs(60),
        ..GarbageSettings::default()
    };
    let nodes = [node("a", Some("aws:///us-east-1a/i-0a"))];
    let since = BTreeMap::from([("a".to_string(), now() - secs(600))]);
    let terminated = BTreeMap::from([(
        "i-0a".to_string(),
        InstanceLookup::Found(InstanceState::Terminated),
    )]);
    assert_eq!(
        plan_nodes(REGION, &nodes, &[], &terminated, &since, &s, now())
            .delete
            .len(),
        1
    );
    for answer in [
        InstanceLookup::Found(InstanceState::Running),
        InstanceLookup::Found(InstanceState::ShuttingDown),
        InstanceLookup::Found(InstanceState::Stopped),
    ] {
        let lookups = BTreeMap::from([("i-0a".to_string(), answer)]);
        let plan = plan_nodes(REGION, &nodes, &[], &lookups, &since, &s, now());
        assert!(plan.delete.is_empty(), "{answer:?}");
        assert!(plan.gone_since.is_empty(), "{answer:?}");
    }
    // No answer at all (a malformed id, a failed lookup): never evidence.
    let plan = plan_nodes(REGION, &nodes, &[], &BTreeMap::new(), &since, &s, now());
    assert!(plan.delete.is_empty());
    assert!(plan.gone_since.is_empty());
}

#[test]
fn nodes_without_ec2_provider_ids_owned_or_deleting_are_never_deleted() {
    let s = GarbageSettings {
        node_grace: secs(1),
        ..GarbageSettings::default()
    };
    let mut deleting = node("d", Some("aws:///us-east-1a/i-0d"));
    deleting.deleting = true;
    let nodes = [
        node("none", None),
        node("gce", Some("gce://p/z/i-0a")),
        node("kind", Some("kind://docker/kind/i-0a")),
        node("owned", Some("aws:///us-east-1a/i-0b")),
        node("other-region", Some("aws:///eu-west-1a/i-0c")),
        deleting,
    ];
    let machines = [MachineView {
        uid: "1".into(),
        node_name: Some("owned".into()),
        ..MachineView::default()
    }];
    let lookups = gone(&["i-0a", "i-0b", "i-0c", "i-0d"]);
    let since: BTreeMap<String, DateTime<Utc>> = nodes
        .iter()
        .map(|n| (n.name.clone(), now() - secs(3600)))
        .collect();
    let plan = plan_nodes(REGION, &nodes, &machines, &lookups, &since, &s, now());
    assert!(plan.delete.is_empty(), "{plan:?}");
}

#[test]
fn settings_must_be_positive() {
    assert!(GarbageSettings::default().validate().is_ok());
    let s = GarbageSettings {
        node_grace: chrono::Duration::zero(),
        ..GarbageSettings::default()
    };
    assert_eq!(
        s.validate(),
        Err(GarbageError::InvalidSettings {
            field: "node_grace"
        })
    );
}
