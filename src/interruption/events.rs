//! EventBridge events as EC2 and AWS Health send them: the simulated cloud delivers these to its queue, and tests
//! build messages with them. The shapes are AWS's (see the EventBridge event reference for EC2 and AWS Health).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

fn envelope(
    source: &str,
    detail_type: &str,
    region: &str,
    resources: Vec<String>,
    time: DateTime<Utc>,
    detail: Value,
) -> String {
    json!({
        "version": "0",
        "id": format!("{:x}", time.timestamp_nanos_opt().unwrap_or_default() ^ detail.to_string().len() as i64),
        "detail-type": detail_type,
        "source": source,
        "account": "123456789012",
        "time": time.to_rfc3339_opts(SecondsFormat::Secs, true),
        "region": region,
        "resources": resources,
        "detail": detail,
    })
    .to_string()
}

fn instance_arn(region: &str, instance_id: &str) -> String {
    format!("arn:aws:ec2:{region}:123456789012:instance/{instance_id}")
}

/// "EC2 Spot Instance Interruption Warning": the instance is reclaimed two minutes after `time`.
pub fn spot_interruption_warning(region: &str, instance_id: &str, time: DateTime<Utc>) -> String {
    envelope(
        "aws.ec2",
        "EC2 Spot Instance Interruption Warning",
        region,
        vec![instance_arn(region, instance_id)],
        time,
        json!({"instance-id": instance_id, "instance-action": "terminate"}),
    )
}

/// "EC2 Instance Rebalance Recommendation": the instance's spot pool is at elevated risk.
pub fn rebalance_recommendation(region: &str, instance_id: &str, time: DateTime<Utc>) -> String {
    envelope(
        "aws.ec2",
        "EC2 Instance Rebalance Recommendation",
        region,
        vec![instance_arn(region, instance_id)],
        time,
        json!({"instance-id": instance_id}),
    )
}

/// "EC2 Instance State-change Notification" (`state`: pending, running, stopping, stopped, shutting-down,
/// terminated).
pub fn state_change(region: &str, instance_id: &str, state: &str, time: DateTime<Utc>) -> String {
    envelope(
        "aws.ec2",
        "EC2 Instance State-change Notification",
        region,
        vec![instance_arn(region, instance_id)],
        time,
        json!({"instance-id": instance_id, "state": state}),
    )
}

/// An AWS Health scheduled change for EC2 instances (`code`: AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED,
/// AWS_EC2_SYSTEM_MAINTENANCE_EVENT, ...) starting at `start`.
pub fn scheduled_change(
    region: &str,
    instance_ids: &[&str],
    code: &str,
    start: DateTime<Utc>,
    time: DateTime<Utc>,
) -> String {
    let rfc2822 = |t: DateTime<Utc>| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    envelope(
        "aws.health",
        "AWS Health Event",
        region,
        instance_ids
            .iter()
            .map(|i| instance_arn(region, i))
            .collect(),
        time,
        json!({
            "eventArn": format!("arn:aws:health:{region}::event/EC2/{code}/{code}_{}", time.timestamp()),
            "service": "EC2",
            "eventTypeCode": code,
            "eventTypeCategory": "scheduledChange",
            "startTime": rfc2822(start),
            "endTime": rfc2822(start + chrono::Duration::hours(1)),
            "eventDescription": [{"language": "en_US", "latestDescription": "EC2 has detected degradation of the underlying hardware hosting your instance."}],
            "affectedEntities": instance_ids.iter().map(|i| json!({"entityValue": i})).collect::<Vec<_>>(),
        }),
    )
}
