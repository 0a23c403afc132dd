//! The AWS provider against moto_server (EC2 and Auto Scaling), and through a fault-injecting proxy in front of it
//! for what moto cannot do (throttling, 5xx, insufficient capacity). Needs moto: see tests/support/moto.rs.

#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/moto.rs"]
mod moto;

use aws_sdk_ec2::types as t;
use berth::cloud::action::Action;
use berth::cloud::aws::{AwsCloud, AwsConfig};
use berth::cloud::clock::{SharedClock, SystemClock};
use berth::cloud::metrics::{CloudMetrics, Outcome};
use berth::cloud::retry::Backoff;
use berth::cloud::sim::fixtures;
use berth::cloud::{
    tags, ClassRevision, CloudProvider, ImageSpec, InstanceTypeChoice, LaunchRequest,
    ResourceSelector,
};
use berth::model::instance_type::CapacityType;
use fault_proxy::{FaultKind, FaultProxy};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

async fn connect(endpoint: &str, cluster: &str) -> AwsCloud {
    let mut cfg = AwsConfig::new(cluster);
    cfg.region = Some("us-east-1".into());
    cfg.endpoint_url = Some(endpoint.to_string());
    cfg.backoff = Backoff {
        max_attempts: 4,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
    };
    let clock: SharedClock = Arc::new(SystemClock);
    AwsCloud::connect(cfg, clock, CloudMetrics::unregistered().unwrap())
        .await
        .expect("connect to moto")
}

/// A VPC with two tagged subnets (us-east-1a, us-east-1b), a tagged security group and a registered AMI.
struct Fixture {
    cluster: String,
    subnets: Vec<String>,
    security_group: String,
    image: String,
}

async fn fixture(cloud: &AwsCloud, cluster: &str) -> Fixture {
    let ec2 = cloud.ec2_client();
    let discovery = t::Tag::builder()
        .key("berth.dev/discovery")
        .value(cluster)
        .build();
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc
        .unwrap()
        .vpc_id
        .unwrap();
    let mut subnets = Vec::new();
    for (i, zone) in ["us-east-1a", "us-east-1b"].iter().enumerate() {
        let s = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.0.{i}.0/24"))
            .availability_zone(*zone)
            .tag_specifications(
                t::TagSpecification::builder()
                    .resource_type(t::ResourceType::Subnet)
                    .tags(discovery.clone())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        subnets.push(s.subnet.unwrap().subnet_id.unwrap());
    }
    let sg = ec2
        .create_security_group()
        .group_name(unique("nodes"))
        .description("berth test nodes")
        .vpc_id(&vpc)
        .tag_specifications(
            t::TagSpecification::builder()
                .resource_type(t::ResourceType::SecurityGroup)
                .tags(discovery)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    let image = ec2
        .register_image()
        .name(format!("berth-test-{cluster}-al2023"))
        .architecture(t::ArchitectureValues::X8664)
        .root_device_name("/dev/xvda")
        .virtualization_type("hvm")
        .send()
        .await
        .unwrap()
        .image_id
        .unwrap();
    Fixture {
        cluster: cluster.into(),
        subnets,
        security_group: sg,
        image,
    }
}

fn request(f: &Fixture, name: &str, types: &[&str]) -> LaunchRequest {
    let mut r = fixtures::request(name);
    r.machine.uid = unique("uid");
    r.cluster_name = f.cluster.clone();
    r.bootstrap.cluster_name = f.cluster.clone();
    let discovery = BTreeMap::from([("berth.dev/discovery".to_string(), f.cluster.clone())]);
    r.subnets = ResourceSelector::Tags(discovery.clone());
    r.security_groups = ResourceSelector::Tags(discovery);
    // By id: moto's RegisterImage drops the architecture, so a selector (which filters by architecture) finds
    // nothing there; selectors are covered against the simulated cloud.
    r.image = ImageSpec::Id(f.image.clone());
    r.instance_types = types.iter().map(|t| InstanceTypeChoice::new(*t)).collect();
    r.capacity_types = vec![CapacityType::OnDemand];
    r.fallback_to_on_demand = false;
    r.class = ClassRevision {
        name: "general".into(),
        revision: "1".into(),
    };
    r
}

async fn instance(cloud: &AwsCloud, id: &str) -> t::Instance {
    let r = cloud
        .ec2_client()
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    r.reservations()[0].instances()[0].clone()
}

fn tag_map(tags: &[t::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or("").to_string(),
                t.value().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn create_fleet_launches_tagged_instances_from_a_hardened_launch_template() {
    let cluster = unique("fleet");
    let cloud = connect(&moto::endpoint(), &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    let r = request(&f, "m-1", &["m5.large", "c5.large"]);
    let out = cloud.launch(&r).await.unwrap();
    assert!(["m5.large", "c5.large"].contains(&out.instance.instance_type.as_str()));
    assert!(out.instance.instance_id.starts_with("i-"));
    assert_eq!(
        cloud.metrics().calls(Action::CreateFleet, Outcome::Success),
        1
    );
    assert_eq!(
        cloud
            .metrics()
            .calls(Action::RunInstances, Outcome::Success),
        0
    );

    let i = instance(&cloud, &out.instance.instance_id).await;
    let tags = tag_map(i.tags());
    assert_eq!(tags[tags::CLUSTER], cluster);
    assert_eq!(tags[tags::MANAGED], "true");
    assert_eq!(tags[tags::MACHINE_NAME], "m-1");
    assert_eq!(tags[tags::MACHINE_NAMESPACE], "default");
    assert_eq!(tags[tags::MACHINE_DEPLOYMENT], "web");
    assert_eq!(i.image_id(), Some(f.image.as_str()));
    assert!(f.subnets.contains(&i.subnet_id().unwrap().to_string()));

    // The template: IMDSv2 required, encrypted root volume, the bootstrap user data, the security group.
    let lts = cloud
        .ec2_client()
        .describe_launch_templates()
        .filters(
            t::Filter::builder()
                .name(format!("tag:{}", tags::CLUSTER))
                .values(&cluster)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(lts.launch_templates().len(), 1);
    let name = lts.launch_templates()[0]
        .launch_template_name()
        .unwrap()
        .to_string();
    assert!(name.starts_with(&format!("berth/{cluster}/general/")));
    let v = cloud
        .ec2_client()
        .describe_launch_template_versions()
        .launch_template_name(&name)
        .send()
        .await
        .unwrap();
    let data = v.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(
        data.metadata_options().unwrap().http_tokens(),
        Some(&t::LaunchTemplateHttpTokensState::Required)
    );
    let ebs = data.block_device_mappings()[0].ebs().unwrap();
    assert_eq!(ebs.encrypted(), Some(true));
    assert_eq!(
        data.security_group_ids(),
        std::slice::from_ref(&f.security_group)
    );
    use base64::Engine;
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data.user_data().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(user_data.contains("kind: NodeConfig") && user_data.contains(&cluster));

    let vols = cloud
        .ec2_client()
        .describe_volumes()
        .filters(
            t::Filter::builder()
                .name("attachment.instance-id")
                .values(&out.instance.instance_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let v = vols
        .volumes()
        .first()
        .expect("moto gives the instance its root volume");
    assert_eq!(
        tag_map(v.tags()).get(tags::CLUSTER),
        Some(&cluster),
        "volumes carry the cluster tag"
    );

    // Described by this cluster's tags, and terminated.
    let mine = cloud.describe_instances().await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].machine().unwrap().name, "m-1");
    let t = cloud
        .terminate(std::slice::from_ref(&out.instance.instance_id))
        .await
        .unwrap();
    assert_eq!(t.terminating, vec![out.instance.instance_id.clone()]);
    let state = instance(&cloud, &out.instance.instance_id)
        .await
        .state()
        .unwrap()
        .name()
        .unwrap()
        .as_str()
        .to_string();
    assert!(state == "shutting-down" || state == "terminated", "{state}");
}

#[tokio::test]
async fn a_single_type_uses_run_instances_and_a_restart_repeats_the_same_client_token() {
    let cluster = unique("run");
    let proxy = FaultProxy::start(moto::endpoint()).await;
    let cloud = connect(&proxy.endpoint, &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    let r = request(&f, "m-1", &["m5.large"]);
    let a = cloud.launch(&r).await.unwrap();
    assert_eq!(a.instance.instance_type, "m5.large");
    assert_eq!(
        cloud
            .metrics()
            .calls(Action::RunInstances, Outcome::Success),
        1
    );
    assert_eq!(
        cloud.metrics().calls(Action::CreateFleet, Outcome::Success),
        0
    );
    // A restarted controller (a new provider, the launch template already there) launching the same Machine and
    // attempt sends the very same request: same ClientToken, same parameters, which EC2 answers with the instance
    // it launched the first time. moto ignores ClientToken; the proxy applies EC2's rule in front of it.
    let restarted = connect(&proxy.endpoint, &cluster).await;
    let again = restarted.launch(&r).await.unwrap();
    assert_eq!(
        again.instance.instance_id, a.instance.instance_id,
        "the repeated token gets the first launch's instance"
    );
    let launches = proxy.launches();
    assert_eq!(launches.len(), 2);
    assert!(!launches[0].replayed && launches[1].replayed);
    assert_eq!(
        launches[1].instance_ids,
        vec![a.instance.instance_id.clone()]
    );
    assert_eq!(
        proxy.bodies("CreateLaunchTemplate").len(),
        2,
        "the restarted provider found the template by name"
    );
    // The same token with other parameters is EC2's IdempotentParameterMismatch. (Another instance type is
    // another token: the offering is part of the call tag.) Other tags keep the token; EC2 refuses the call, and
    // berth adopts the instance its Machine already has instead of launching a second one.
    let mut other = r.clone();
    other.tags.insert("extra".into(), "1".into());
    let adopted = restarted.launch(&other).await.unwrap();
    assert_eq!(
        adopted.instance.instance_id, a.instance.instance_id,
        "a parameter mismatch adopts the Machine's instance"
    );
    assert_eq!(
        proxy.launches().len(),
        2,
        "the refused call launched nothing"
    );
    let bodies = proxy.bodies("RunInstances");
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0], bodies[1]);
    let token = format!("ClientToken={}", r.machine.uid);
    assert!(bodies[0].contains(&token), "{}", bodies[0]);
    let vols = cloud
        .ec2_client()
        .describe_volumes()
        .filters(
            t::Filter::builder()
                .name("attachment.instance-id")
                .values(&a.instance.instance_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let v = vols
        .volumes()
        .first()
        .expect("moto gives the instance its root volume");
    assert_eq!(
        tag_map(v.tags()).get(tags::CLUSTER),
        Some(&cluster),
        "volumes carry the cluster tag"
    );
    assert_eq!(
        tag_map(v.tags())
            .get(tags::MACHINE_NAME)
            .map(String::as_str),
        Some("m-1")
    );
}

#[tokio::test]
async fn only_this_clusters_instances_are_terminated() {
    let cluster = unique("own");
    let cloud = connect(&moto::endpoint(), &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    let foreign = cloud
        .ec2_client()
        .run_instances()
        .image_id(&f.image)
        .instance_type(t::InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    let out = cloud
        .terminate(std::slice::from_ref(&foreign))
        .await
        .unwrap();
    assert_eq!(out.not_owned_or_missing, vec![foreign.clone()]);
    assert!(out.terminating.is_empty());
    assert_eq!(
        instance(&cloud, &foreign)
            .await
            .state()
            .unwrap()
            .name()
            .unwrap()
            .as_str(),
        "running"
    );
}

#[tokio::test]
async fn missing_ami_subnet_or_security_group_is_invalid_configuration() {
    let cluster = unique("bad");
    let cloud = connect(&moto::endpoint(), &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    let mut r = request(&f, "m-1", &["m5.large"]);
    r.image = ImageSpec::Id("ami-12345678".into());
    let e = cloud.launch(&r).await.unwrap_err();
    assert_eq!(e.category(), "invalid-configuration");
    assert!(e.to_string().contains("ami-12345678"), "{e}");
    let mut r = request(&f, "m-2", &["m5.large"]);
    r.subnets = ResourceSelector::Ids(vec!["subnet-00000000".into()]);
    let e = cloud.launch(&r).await.unwrap_err();
    assert!(e.to_string().contains("subnet-00000000"), "{e}");
    let mut r = request(&f, "m-3", &["m5.large"]);
    r.security_groups = ResourceSelector::Ids(vec!["sg-00000000".into()]);
    let e = cloud.launch(&r).await.unwrap_err();
    assert!(e.to_string().contains("sg-00000000"), "{e}");
    let r = request(&f, "m-4", &["q9.enormous"]);
    let e = cloud.launch(&r).await.unwrap_err();
    assert_eq!(e.category(), "invalid-configuration");
    assert_eq!(
        cloud.metrics().calls(Action::CreateFleet, Outcome::Success)
            + cloud
                .metrics()
                .calls(Action::RunInstances, Outcome::Success),
        0
    );
}

#[tokio::test]
async fn the_catalog_comes_from_ec2_with_bundled_on_demand_prices() {
    let cluster = unique("catalog");
    let cloud = connect(&moto::endpoint(), &cluster).await;
    let c = cloud.instance_types().await.unwrap();
    let m5 = c.get("m5.large").expect("m5.large in moto's catalog");
    assert_eq!((m5.vcpu, m5.memory_mib), (2, 8192));
    let od = m5
        .offerings
        .iter()
        .find(|o| o.capacity_type == CapacityType::OnDemand)
        .unwrap();
    assert_eq!(od.price, 0.096);
    assert!(m5.offerings.iter().any(|o| o.zone == "us-east-1a"));
    // Cached: a second read makes no call.
    let calls = cloud
        .metrics()
        .calls(Action::DescribeInstanceTypes, Outcome::Success);
    cloud.instance_types().await.unwrap();
    assert_eq!(
        cloud
            .metrics()
            .calls(Action::DescribeInstanceTypes, Outcome::Success),
        calls
    );
}

#[tokio::test]
async fn launch_templates_of_dead_revisions_are_deleted() {
    let cluster = unique("gc");
    let cloud = connect(&moto::endpoint(), &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    cloud
        .launch(&request(&f, "m-1", &["m5.large"]))
        .await
        .unwrap();
    let mut r = request(&f, "m-2", &["m5.large"]);
    r.class.revision = "2".into();
    cloud.launch(&r).await.unwrap();
    // A cut-off before the templates were made keeps them all (moto stamps CreateTime with its own clock).
    let before = chrono::Utc::now() - chrono::Duration::minutes(10);
    assert_eq!(
        cloud
            .garbage_collect_launch_templates(&[r.class.clone()], before)
            .await
            .unwrap(),
        0
    );
    let after = chrono::Utc::now() + chrono::Duration::minutes(10);
    assert_eq!(
        cloud
            .garbage_collect_launch_templates(&[r.class.clone()], after)
            .await
            .unwrap(),
        1
    );
    let lts = cloud
        .ec2_client()
        .describe_launch_templates()
        .filters(
            t::Filter::builder()
                .name(format!("tag:{}", tags::CLUSTER))
                .values(&cluster)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(lts.launch_templates().len(), 1);
}

#[tokio::test]
async fn auto_scaling_groups_are_discovered_scaled_and_shrunk_with_decrement() {
    let cluster = unique("asg");
    let cloud = connect(&moto::endpoint(), &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    let lt_name = unique("asg-lt");
    cloud
        .ec2_client()
        .create_launch_template()
        .launch_template_name(&lt_name)
        .launch_template_data(
            t::RequestLaunchTemplateData::builder()
                .image_id(&f.image)
                .instance_type(t::InstanceType::M5Large)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let asg = cloud.autoscaling_client();
    use aws_sdk_autoscaling::types as a;
    let ours = unique("ng");
    let other = unique("ng-other");
    for (name, tagged) in [(&ours, true), (&other, false)] {
        let mut b = asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .min_size(1)
            .max_size(5)
            .desired_capacity(2)
            .vpc_zone_identifier(f.subnets.join(","))
            .launch_template(
                a::LaunchTemplateSpecification::builder()
                    .launch_template_name(&lt_name)
                    .version("$Latest")
                    .build(),
            );
        if tagged {
            b = b
                .tags(
                    a::Tag::builder()
                        .key(tags::ASG_ENABLED)
                        .value("true")
                        .resource_id(name)
                        .resource_type("auto-scaling-group")
                        .build(),
                )
                .tags(
                    a::Tag::builder()
                        .key(tags::CLUSTER)
                        .value(&cluster)
                        .resource_id(name)
                        .resource_type("auto-scaling-group")
                        .build(),
                );
        }
        b.send().await.unwrap();
    }
    let groups = cloud.node_groups().await.unwrap();
    assert_eq!(
        groups.iter().map(|g| g.name.clone()).collect::<Vec<_>>(),
        vec![ours.clone()]
    );
    let g = &groups[0];
    assert_eq!((g.min_size, g.max_size, g.desired_capacity), (1, 5, 2));
    assert_eq!(g.instance_types, vec!["m5.large".to_string()]);
    assert_eq!(g.instances.len(), 2);

    cloud
        .set_node_group_desired_capacity(&ours, 3)
        .await
        .unwrap();
    assert_eq!(cloud.node_groups().await.unwrap()[0].desired_capacity, 3);
    assert_eq!(
        cloud
            .set_node_group_desired_capacity(&ours, 9)
            .await
            .unwrap_err()
            .category(),
        "invalid-configuration"
    );
    // Unknown and untagged groups are refused before any call that would change them (moto answers 500 there).
    assert_eq!(
        cloud
            .set_node_group_desired_capacity("no-such-group", 1)
            .await
            .unwrap_err()
            .category(),
        "not-found"
    );
    assert_eq!(
        cloud
            .set_node_group_desired_capacity(&other, 1)
            .await
            .unwrap_err()
            .category(),
        "not-found"
    );

    let victim = cloud.node_groups().await.unwrap()[0].instances[0]
        .instance_id
        .clone();
    cloud
        .terminate_node_group_instance(&ours, &victim)
        .await
        .unwrap();
    let g = &cloud.node_groups().await.unwrap()[0];
    assert_eq!(g.desired_capacity, 2);
    assert!(g.instances.iter().all(|i| i.instance_id != victim));

    // Down to the minimum (1), then never below it: the last decrement is refused before any call.
    let next = g.instances[0].instance_id.clone();
    cloud
        .terminate_node_group_instance(&ours, &next)
        .await
        .unwrap();
    let g = &cloud.node_groups().await.unwrap()[0];
    assert_eq!(g.desired_capacity, 1);
    let last = g.instances[0].instance_id.clone();
    let calls = cloud.metrics().calls(
        Action::TerminateInstanceInAutoScalingGroup,
        Outcome::Success,
    );
    assert_eq!(
        cloud
            .terminate_node_group_instance(&ours, &last)
            .await
            .unwrap_err()
            .category(),
        "invalid-configuration"
    );
    assert_eq!(
        cloud.metrics().calls(
            Action::TerminateInstanceInAutoScalingGroup,
            Outcome::Success
        ),
        calls
    );
    let g = &cloud.node_groups().await.unwrap()[0];
    assert_eq!(g.desired_capacity, 1);
    assert!(g.instances.iter().any(|i| i.instance_id == last));
}

#[tokio::test]
async fn through_the_fault_proxy_spot_shortage_falls_back_to_on_demand() {
    let cluster = unique("ice");
    let proxy = FaultProxy::start(moto::endpoint()).await;
    let cloud = connect(&proxy.endpoint, &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    let mut r = request(&f, "m-1", &["m5.large", "c5.large"]);
    r.capacity_types = vec![CapacityType::Spot];
    r.fallback_to_on_demand = true;
    proxy.add(
        "CreateFleet",
        &[(
            "TargetCapacitySpecification.DefaultTargetCapacityType",
            "spot",
        )],
        FaultKind::FleetCapacityErrors,
        None,
    );
    let out = cloud.launch(&r).await.unwrap();
    assert_eq!(proxy.count("CreateFleet", "FleetCapacityErrors"), 1);
    assert_eq!(out.instance.capacity_type, CapacityType::OnDemand);
    assert!(out.fell_back_to_on_demand);
    assert!(!out.failed_offerings.is_empty());
    assert!(out
        .failed_offerings
        .iter()
        .all(|o| o.offering.capacity_type == CapacityType::Spot
            && o.code == "InsufficientInstanceCapacity"));
    // The failed spot offerings are cached: the next Machine goes straight to on-demand.
    for o in &out.failed_offerings {
        assert!(cloud.unavailable_offerings().is_unavailable(&o.offering));
    }
    let r2 = {
        let mut r2 = request(&f, "m-2", &["m5.large", "c5.large"]);
        r2.capacity_types = r.capacity_types.clone();
        r2.fallback_to_on_demand = true;
        r2
    };
    cloud.launch(&r2).await.unwrap();
    assert_eq!(
        proxy.count("CreateFleet", "FleetCapacityErrors"),
        1,
        "no spot request while the offerings are cached"
    );
}

#[tokio::test]
async fn through_the_fault_proxy_run_instances_capacity_errors_move_to_the_next_zone() {
    let cluster = unique("ice-run");
    let proxy = FaultProxy::start(moto::endpoint()).await;
    let cloud = connect(&proxy.endpoint, &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    proxy.add(
        "RunInstances",
        &[],
        FaultKind::InsufficientCapacityError,
        Some(1),
    );
    let out = cloud
        .launch(&request(&f, "m-1", &["m5.large"]))
        .await
        .unwrap();
    assert_eq!(proxy.count("RunInstances", "InsufficientCapacityError"), 1);
    assert_eq!(out.failed_offerings.len(), 1);
    assert_ne!(out.failed_offerings[0].offering.zone, out.instance.zone);
    assert_eq!(
        cloud.metrics().retries(Action::RunInstances),
        0,
        "a capacity error is not retried"
    );
}

#[tokio::test]
async fn through_the_fault_proxy_throttles_and_5xx_are_retried_with_backoff() {
    let cluster = unique("throttle");
    let proxy = FaultProxy::start(moto::endpoint()).await;
    let cloud = connect(&proxy.endpoint, &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    proxy.add("CreateFleet", &[], FaultKind::Throttle, Some(2));
    proxy.add("DescribeSubnets", &[], FaultKind::ServerError, Some(1));
    let started = std::time::Instant::now();
    let out = cloud
        .launch(&request(&f, "m-1", &["m5.large", "c5.large"]))
        .await
        .unwrap();
    assert!(out.instance.instance_id.starts_with("i-"));
    assert_eq!(proxy.count("CreateFleet", "Throttle"), 2);
    assert_eq!(proxy.count("DescribeSubnets", "ServerError"), 1);
    let m = cloud.metrics();
    assert_eq!(m.calls(Action::CreateFleet, Outcome::Throttled), 2);
    assert_eq!(m.calls(Action::DescribeSubnets, Outcome::ServerError), 1);
    assert_eq!(m.retries(Action::CreateFleet), 2);
    assert!(started.elapsed() < Duration::from_secs(20));
    // A throttle that does not stop: RateLimited after the configured attempts (4), no instance.
    proxy.add("CreateFleet", &[], FaultKind::Throttle, None);
    let e = cloud
        .launch(&request(&f, "m-2", &["m5.large", "c5.large"]))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        berth::cloud::CloudError::RateLimited {
            action: "CreateFleet",
            attempts: 4
        }
    );
}

/// The garbage collector's round against moto through the SDK, with the emulator as the API server: a stray
/// instance (this cluster's tag, its Machine gone) is terminated, the instance of an existing Machine and another
/// cluster's instance are not; the launch template of a revision no MachineClass has is deleted, the current one's
/// is kept; a Node whose instance EC2 does not know is deleted after its grace, one whose instance runs is not.
#[tokio::test]
async fn the_garbage_collector_collects_through_the_sdk_and_spares_what_is_not_garbage() {
    use berth::api::{Machine, MachineClass};
    use berth::clock::ManualClock;
    use berth::controllers::garbage_collector::{self, GarbageCollectorConfig, Memory};
    use berth::controllers::Context;
    use berth::garbage::GarbageSettings;
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, PostParams};
    use kube::ResourceExt;

    let cluster = unique("gcr");
    let cloud = connect(&moto::endpoint(), &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    let emulator = berth::emulator::Emulator::new();
    let client = emulator.client();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in berth::api::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    // MachineClass "general" at generation 1: revision "1" is live, "2" is not.
    let class: MachineClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "MachineClass", "metadata": {"name": "general"},
        "spec": {"image": {"id": f.image}, "instanceRequirements": {"families": ["m5"]}, "subnets": {"ids": f.subnets},
                 "securityGroups": {"ids": [f.security_group]}, "instanceProfile": "node"}
    }))
    .unwrap();
    Api::<MachineClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let machine: Machine = serde_json::from_value(serde_json::json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Machine", "metadata": {"name": "kept", "namespace": "default"},
        "spec": {"classRef": {"name": "general"}}
    }))
    .unwrap();
    let machine = Api::<Machine>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &machine)
        .await
        .unwrap();

    // An instance whose Machine exists (no status yet: the Machine controller could still adopt it)...
    let mut owned = request(&f, "kept", &["m5.large"]);
    owned.machine.uid = machine.uid().unwrap();
    let owned = cloud.launch(&owned).await.unwrap().instance.instance_id;
    // ... one whose Machine is gone, launched with a revision no class has any more ...
    let mut stray = request(&f, "gone", &["m5.large"]);
    stray.class.revision = "2".into();
    stray.bootstrap.labels.insert("v".into(), "2".into());
    let stray = cloud.launch(&stray).await.unwrap().instance.instance_id;
    // ... and another cluster's.
    let foreign = cloud
        .ec2_client()
        .run_instances()
        .image_id(&f.image)
        .instance_type(t::InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            t::TagSpecification::builder()
                .resource_type(t::ResourceType::Instance)
                .tags(
                    t::Tag::builder()
                        .key(tags::CLUSTER)
                        .value("another-cluster")
                        .build(),
                )
                .tags(
                    t::Tag::builder()
                        .key(tags::MACHINE_UID)
                        .value("nobody")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    // Nodes: one whose instance EC2 does not know, one on the owned (running) instance with no Machine naming it.
    for (name, id) in [("orphan", "i-0123456789abcdef0"), ("alive", owned.as_str())] {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"providerID": format!("aws:///us-east-1a/{id}")}
        }))
        .unwrap();
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .unwrap();
    }

    // The collector's clock is an hour ahead, so every instance and template is past its grace.
    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::hours(1));
    let ctx = Context::new(
        client.clone(),
        Arc::new(clock.clone()),
        berth::telemetry::metrics::Metrics::new().unwrap(),
    );
    let mut config = GarbageCollectorConfig::new(&cluster);
    config.settings = GarbageSettings {
        node_grace: chrono::Duration::seconds(30),
        ..GarbageSettings::default()
    };
    let mut memory = Memory::default();
    let first = garbage_collector::round(&ctx, &cloud, &config, &mut memory)
        .await
        .unwrap();
    assert_eq!(first.instances, vec![stray.clone()]);
    assert_eq!(first.launch_templates, 1);
    assert!(first.nodes.is_empty(), "the orphan waits for its grace");
    let state = |i: t::Instance| i.state().unwrap().name().unwrap().as_str().to_string();
    assert!(
        ["shutting-down", "terminated"].contains(&state(instance(&cloud, &stray).await).as_str())
    );
    assert_eq!(state(instance(&cloud, &owned).await), "running");
    assert_eq!(state(instance(&cloud, &foreign).await), "running");
    let lts = cloud
        .ec2_client()
        .describe_launch_templates()
        .filters(
            t::Filter::builder()
                .name(format!("tag:{}", tags::CLUSTER))
                .values(&cluster)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(lts.launch_templates().len(), 1);

    clock.advance(chrono::Duration::seconds(30));
    let second = garbage_collector::round(&ctx, &cloud, &config, &mut memory)
        .await
        .unwrap();
    assert_eq!(second.nodes, vec!["orphan".to_string()]);
    assert!(second.instances.is_empty());
    let names: Vec<String> = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert_eq!(names, vec!["alive".to_string()]);
    assert_eq!(state(instance(&cloud, &owned).await), "running");
    assert_eq!(
        ctx.metrics
            .garbage_collected
            .with_label_values(&["instance"])
            .get(),
        1
    );
}

/// Looked up by id, whatever the tags: a terminated instance and an unknown id are gone (the unknown one fails its
/// batch with InvalidInstanceID.NotFound, so the batch is asked again id by id), a running one is found running.
#[tokio::test]
async fn instances_are_looked_up_by_id_and_unknown_ids_are_gone() {
    use berth::cloud::{InstanceLookup, InstanceState};
    let cluster = unique("look");
    let cloud = connect(&moto::endpoint(), &cluster).await;
    let f = fixture(&cloud, &cluster).await;
    let running = cloud
        .launch(&request(&f, "m-1", &["m5.large"]))
        .await
        .unwrap()
        .instance
        .instance_id;
    let dead = cloud
        .launch(&request(&f, "m-2", &["m5.large"]))
        .await
        .unwrap()
        .instance
        .instance_id;
    cloud.terminate(std::slice::from_ref(&dead)).await.unwrap();
    let unknown = "i-0fedcba9876543210".to_string();
    let answers = cloud
        .lookup_instances(&[running.clone(), dead.clone(), unknown.clone()])
        .await
        .unwrap();
    assert!(matches!(
        answers[&running],
        InstanceLookup::Found(InstanceState::Running | InstanceState::Pending)
    ));
    assert!(answers[&dead].is_gone(), "{:?}", answers[&dead]);
    assert_eq!(answers[&unknown], InstanceLookup::NotFound);
}
