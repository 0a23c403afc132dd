use super::*;

fn envelope(source: &str, detail_type: &str, detail: serde_json::Value) -> String {
    serde_json::json!({
        "version": "0",
        "id": "7e0f3b4a-1111-2222-3333-444455556666",
        "detail-type": detail_type,
        "source": source,
        "account": "123456789012",
        "time": "2026-12-08T10:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1a:instance/i-0abc123def4567890"],
        "detail": detail,
    })
    .to_string()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn a_spot_warning_gives_the_instance_and_a_deadline_two_minutes_on() {
    let n = parse(&envelope(
        "aws.ec2",
        "EC2 Spot Instance Interruption Warning",
        serde_json::json!({"instance-id": "i-0abc123def4567890", "instance-action": "terminate"}),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(n.kind, NoticeKind::SpotInterruption);
    assert_eq!(n.instance_ids, vec!["i-0abc123def4567890"]);
    assert_eq!(n.deadline, Some(at("2026-12-08T10:02:00Z")));
    assert!(n.detail.contains("terminate"));
}

#[test]
fn each_kind_is_read_and_uninteresting_events_are_ignored() {
    let rebalance = parse(&envelope(
        "aws.ec2",
        "EC2 Instance Rebalance Recommendation",
        serde_json::json!({"instance-id": "i-0abc"}),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(rebalance.kind, NoticeKind::RebalanceRecommendation);
    assert_eq!(rebalance.deadline, None);
    for state in ["stopping", "stopped", "shutting-down", "terminated"] {
        let n = parse(&envelope(
            "aws.ec2",
            "EC2 Instance State-change Notification",
            serde_json::json!({"instance-id": "i-0abc", "state": state}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(n.kind, NoticeKind::StateChange);
        assert!(n.detail.contains(state));
    }
    for state in ["pending", "running"] {
        assert_eq!(
            parse(&envelope(
                "aws.ec2",
                "EC2 Instance State-change Notification",
                serde_json::json!({"instance-id": "i-0abc", "state": state}),
            )),
            Ok(None)
        );
    }
    let health = parse(&envelope(
        "aws.health",
        "AWS Health Event",
        serde_json::json!({
            "eventArn": "arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/x",
            "service": "EC2",
            "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
            "eventTypeCategory": "scheduledChange",
            "startTime": "Tue, 15 Dec 2026 10:00:00 GMT",
            "affectedEntities": [{"entityValue": "i-0abc"}, {"entityValue": "vol-0123"}, {"entityValue": "i-0def"}],
        }),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(health.kind, NoticeKind::ScheduledChange);
    assert_eq!(health.instance_ids, vec!["i-0abc", "i-0def"]);
    assert_eq!(health.deadline, Some(at("2026-12-15T10:00:00Z")));
    assert!(health.detail.contains("RETIREMENT"));
    // An AWS Health event of another service or category is not berth's business.
    assert_eq!(
        parse(&envelope(
            "aws.health",
            "AWS Health Event",
            serde_json::json!({"service": "RDS", "eventTypeCategory": "scheduledChange"}),
        )),
        Ok(None)
    );
}

#[test]
fn malformed_and_unknown_messages_say_what_is_wrong() {
    assert!(matches!(
        parse("not json"),
        Err(InterruptionError::NotJson(_))
    ));
    assert!(matches!(parse("[1,2]"), Err(InterruptionError::NotJson(_))));
    assert_eq!(
        parse(r#"{"source":"aws.ec2","time":"2026-12-08T10:00:00Z","detail":{}}"#),
        Err(InterruptionError::Missing("detail-type"))
    );
    assert_eq!(
        parse(&envelope(
            "aws.ec2",
            "EC2 Spot Instance Interruption Warning",
            serde_json::json!({})
        )),
        Err(InterruptionError::Missing("instance-id"))
    );
    assert!(matches!(
        parse(&envelope(
            "aws.ec2",
            "EC2 Spot Instance Interruption Warning",
            serde_json::json!({"instance-id": "../etc/passwd"}),
        )),
        Err(InterruptionError::Invalid {
            field: "instance-id",
            ..
        })
    ));
    assert!(matches!(
        parse(&envelope(
            "aws.ec2",
            "EC2 Instance State-change Notification",
            serde_json::json!({"instance-id": "i-0abc", "state": 7}),
        )),
        Err(InterruptionError::Invalid { field: "state", .. })
    ));
    assert_eq!(
        parse(&envelope("aws.s3", "Object Created", serde_json::json!({}))),
        Err(InterruptionError::UnknownKind {
            event_source: "aws.s3".into(),
            detail_type: "Object Created".into()
        })
    );
    let bad_time = r#"{"source":"aws.ec2","detail-type":"x","time":"yesterday","detail":{}}"#;
    assert!(matches!(
        parse(bad_time),
        Err(InterruptionError::Invalid { field: "time", .. })
    ));
}

fn owned(id: &str, rebalance: RebalancePolicy, deleting: bool) -> OwnedInstance {
    OwnedInstance {
        instance_id: id.into(),
        machine_namespace: "default".into(),
        machine: format!("m-{id}"),
        deleting,
        rebalance,
        instance_type: Some("m7i.large".into()),
        zone: Some("us-east-1a".into()),
        spot: true,
    }
}

fn notice(kind: NoticeKind, ids: &[&str]) -> Notice {
    Notice {
        id: "e".into(),
        kind,
        instance_ids: ids.iter().map(|s| s.to_string()).collect(),
        time: at("2026-12-08T10:00:00Z"),
        deadline: None,
        detail: String::new(),
    }
}

#[test]
fn decisions_follow_the_kind_the_owner_and_the_class() {
    let owner = |id: &str| match id {
        "i-1" => Some(owned(id, RebalancePolicy::Ignore, false)),
        "i-2" => Some(owned(id, RebalancePolicy::Replace, false)),
        "i-3" => Some(owned(id, RebalancePolicy::Replace, true)),
        _ => None,
    };
    let d = decide(
        &notice(NoticeKind::SpotInterruption, &["i-1", "i-9", "i-3"]),
        owner,
    );
    assert!(
        matches!(&d[0], Decision::Interrupt { deadline, .. } if *deadline == at("2026-12-08T10:02:00Z"))
    );
    assert_eq!(
        d[1],
        Decision::NotOurs {
            instance_id: "i-9".into()
        }
    );
    // Already being deleted: a warning changes nothing.
    assert_eq!(
        d[2],
        Decision::NotOurs {
            instance_id: "i-3".into()
        }
    );
    let d = decide(
        &notice(NoticeKind::RebalanceRecommendation, &["i-1", "i-2"]),
        owner,
    );
    assert!(matches!(&d[0], Decision::Record { .. }));
    assert!(matches!(&d[1], Decision::MarkAtRisk { deadline: None, .. }));
    // Scheduled changes are acted on whatever the class says of rebalancing.
    let d = decide(&notice(NoticeKind::ScheduledChange, &["i-1"]), owner);
    assert!(matches!(&d[0], Decision::MarkAtRisk { .. }));
    // A state change is worth a look even for a Machine being deleted.
    let d = decide(&notice(NoticeKind::StateChange, &["i-3"]), owner);
    assert!(matches!(&d[0], Decision::LookAgain { .. }));
}

#[test]
fn the_events_berth_builds_read_back_as_what_they_announce() {
    let t = at("2026-12-08T10:00:00Z");
    let n = parse(&events::spot_interruption_warning("us-east-1", "i-0a1", t))
        .unwrap()
        .unwrap();
    assert_eq!(
        (n.kind, n.deadline),
        (NoticeKind::SpotInterruption, Some(t + SPOT_WARNING))
    );
    let n = parse(&events::rebalance_recommendation("us-east-1", "i-0a1", t))
        .unwrap()
        .unwrap();
    assert_eq!(n.kind, NoticeKind::RebalanceRecommendation);
    let n = parse(&events::state_change("us-east-1", "i-0a1", "terminated", t))
        .unwrap()
        .unwrap();
    assert_eq!(n.kind, NoticeKind::StateChange);
    let start = at("2026-12-10T04:00:00Z");
    let n = parse(&events::scheduled_change(
        "us-east-1",
        &["i-0a1", "i-0b2"],
        "AWS_EC2_SYSTEM_MAINTENANCE_EVENT",
        start,
        t,
    ))
    .unwrap()
    .unwrap();
    assert_eq!(n.instance_ids, vec!["i-0a1", "i-0b2"]);
    assert_eq!(n.deadline, Some(start));
}
