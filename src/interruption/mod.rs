//! Pure: what an EC2 interruption message says, and what berth does about it.
//!
//! EventBridge routes four kinds of event to the interruption queue (deploy/interruption-queue.yaml), each as its
//! JSON envelope (`version`, `id`, `detail-type`, `source`, `time`, `resources`, `detail`):
//!
//! | detail-type | source | what berth does |
//! |---|---|---|
//! | EC2 Spot Instance Interruption Warning | aws.ec2 | the pool is marked unavailable, the Machine is deleted at once: its pods count as pending (replacement capacity is planned while they still run) and the node drains through evictions within the two minutes |
//! | EC2 Instance Rebalance Recommendation | aws.ec2 | per MachineClass `spec.rebalance`: recorded (`Ignore`, the default) or the Machine is marked at risk and replaced first, then drained, within the disruption budget (`Replace`) |
//! | AWS Health Event, category scheduledChange, service EC2 | aws.health | the Machines are marked at risk with the event's start as deadline and replaced first, then drained, within the disruption budget |
//! | EC2 Instance State-change Notification (stopping, stopped, shutting-down, terminated) | aws.ec2 | the Machine controller looks at the instance afresh: the Machine fails now, not at its next poll |
//!
//! A message is read by [`parse`] into a [`Notice`]; [`decide`] turns a notice and the Machines that own its
//! instances into [`Decision`]s. Neither touches the cluster or the cloud: `controllers::interruption` does.
//! Nothing here trusts the message to be true beyond what it is used for: a forged state change makes berth look
//! at the cloud, never fail a Machine by itself.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

pub mod events;
#[cfg(test)]
mod tests;

/// How long EC2 waits between a spot interruption warning and the interruption (FACTS.md §8).
pub const SPOT_WARNING: Duration = Duration::minutes(2);

/// Why a message cannot be read. Each is logged, counted and the message deleted: it will not read better later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterruptionError {
    #[error("the message is not a JSON object: {0}")]
    NotJson(String),
    #[error("the message has no {0}")]
    Missing(&'static str),
    #[error("{field} is not {expected}: {value}")]
    Invalid {
        field: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error("unknown event {event_source}/{detail_type}")]
    UnknownKind {
        event_source: String,
        detail_type: String,
    },
}

/// What a message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoticeKind {
    SpotInterruption,
    RebalanceRecommendation,
    /// An AWS Health scheduled change for EC2 instances (maintenance, retirement).
    ScheduledChange,
    /// The instance is stopping, stopped, shutting down or terminated.
    StateChange,
}

impl NoticeKind {
    /// The `kind` label of berth_interruptions_total.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::SpotInterruption => "spot_interruption",
            NoticeKind::RebalanceRecommendation => "rebalance_recommendation",
            NoticeKind::ScheduledChange => "scheduled_change",
            NoticeKind::StateChange => "state_change",
        }
    }

    pub const ALL: [NoticeKind; 4] = [
        NoticeKind::SpotInterruption,
        NoticeKind::RebalanceRecommendation,
        NoticeKind::ScheduledChange,
        NoticeKind::StateChange,
    ];
}

/// One message, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The event's id (EventBridge's), for logs.
    pub id: String,
    pub kind: NoticeKind,
    /// The instances it is about (one, except for AWS Health events).
    pub instance_ids: Vec<String>,
    /// When EC2 emitted it.
    pub time: DateTime<Utc>,
    /// When the instance goes away, when known: two minutes after a spot warning, the start of a scheduled change.
    pub deadline: Option<DateTime<Utc>>,
    /// What it says, in a few words, for Events and conditions (the state, the health event's type code).
    pub detail: String,
}

/// The instance states an EC2 state-change event is acted on for (the others, pending and running, are news of
/// nothing berth must act on).
const ACTED_STATES: [&str; 4] = ["stopping", "stopped", "shutting-down", "terminated"];

/// Reads one message body. `Ok(None)` is a well-formed event berth deliberately ignores (a state change to
/// `running`, an AWS Health event that is not an EC2 scheduled change).
pub fn parse(body: &str) -> Result<Option<Notice>, InterruptionError> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| InterruptionError::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(InterruptionError::NotJson("not an object".into()));
    }
    let source = text(&v, "source")?;
    let detail_type = text(&v, "detail-type")?;
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let time = timestamp(text(&v, "time")?, "time")?;
    let detail = v
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or(InterruptionError::Missing("detail"))?;
    let notice = |kind, instance_ids, deadline, what: String| {
        Ok(Some(Notice {
            id: id.clone(),
            kind,
            instance_ids,
            time,
            deadline,
            detail: what,
        }))
    };
    match (source, detail_type) {
        ("aws.ec2", "EC2 Spot Instance Interruption Warning") => {
            let instance = instance_id(text(detail, "instance-id")?)?;
            let action = detail
                .get("instance-action")
                .and_then(Value::as_str)
                .unwrap_or("terminate");
            notice(
                NoticeKind::SpotInterruption,
                vec![instance],
                Some(time + SPOT_WARNING),
                format!("spot interruption warning ({action})"),
            )
        }
        ("aws.ec2", "EC2 Instance Rebalance Recommendation") => {
            let instance = instance_id(text(detail, "instance-id")?)?;
            notice(
                NoticeKind::RebalanceRecommendation,
                vec![instance],
                None,
                "rebalance recommendation".into(),
            )
        }
        ("aws.ec2", "EC2 Instance State-change Notification") => {
            let instance = instance_id(text(detail, "instance-id")?)?;
            let state = text(detail, "state")?;
            if !ACTED_STATES.contains(&state) {
                return Ok(None);
            }
            notice(
                NoticeKind::StateChange,
                vec![instance],
                None,
                format!("instance {state}"),
            )
        }
        ("aws.health", "AWS Health Event") => {
            if detail.get("service").and_then(Value::as_str) != Some("EC2")
                || detail.get("eventTypeCategory").and_then(Value::as_str)
                    != Some("scheduledChange")
            {
                return Ok(None);
            }
            let code = text(detail, "eventTypeCode")?.to_string();
            let entities = detail
                .get("affectedEntities")
                .and_then(Value::as_array)
                .ok_or(InterruptionError::Missing("detail.affectedEntities"))?;
            // Entities may be other things than instances (volumes, hosts): only instances are berth's business.
            let instance_ids: Vec<String> = entities
                .iter()
                .filter_map(|e| e.get("entityValue").and_then(Value::as_str))
                .filter(|e| e.starts_with("i-"))
                .map(instance_id)
                .collect::<Result<_, _>>()?;
            if instance_ids.is_empty() {
                return Ok(None);
            }
            let deadline = match detail.get("startTime").and_then(Value::as_str) {
                Some(t) => Some(timestamp(t, "detail.startTime")?),
                None => None,
            };
            notice(
                NoticeKind::ScheduledChange,
                instance_ids,
                deadline,
                format!("scheduled change {code}"),
            )
        }
        (source, detail_type) => Err(InterruptionError::UnknownKind {
            event_source: source.into(),
            detail_type: detail_type.into(),
        }),
    }
}

fn text<'a>(v: &'a Value, field: &'static str) -> Result<&'a str, InterruptionError> {
    match v.get(field) {
        None | Some(Value::Null) => Err(InterruptionError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(InterruptionError::Invalid {
            field,
            expected: "a string",
            value: other.to_string(),
        }),
    }
}

/// EventBridge's `time` is RFC 3339; AWS Health's `startTime` is RFC 2822 in AWS's examples ("Sat, 05 Jun 2016
/// 15:10:09 GMT") and RFC 3339 in others: both are read.
fn timestamp(s: &str, field: &'static str) -> Result<DateTime<Utc>, InterruptionError> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_rfc2822(s))
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| InterruptionError::Invalid {
            field,
            expected: "a timestamp",
            value: s.into(),
        })
}

fn instance_id(s: &str) -> Result<String, InterruptionError> {
    let ok = s.len() > 2
        && s.len() <= 32
        && s.starts_with("i-")
        && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(s.to_string())
    } else {
        Err(InterruptionError::Invalid {
            field: "instance-id",
            expected: "an EC2 instance id",
            value: s.into(),
        })
    }
}

/// What a class does with a rebalance recommendation (MachineClass `spec.rebalance.action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RebalancePolicy {
    #[default]
    Ignore,
    Replace,
}

/// A Machine that owns one of a notice's instances, as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedInstance {
    pub instance_id: String,
    pub machine_namespace: String,
    pub machine: String,
    /// The Machine is already being deleted: a second notice changes nothing about it.
    pub deleting: bool,
    /// Its class's answer to a rebalance recommendation.
    pub rebalance: RebalancePolicy,
    /// Where it runs, when known: the offering a spot interruption makes unavailable.
    pub instance_type: Option<String>,
    pub zone: Option<String>,
    pub spot: bool,
}

/// What to do for one instance of a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Spot interruption: mark the pool unavailable (when the Machine runs on spot and its offering is known),
    /// annotate the Machine interrupted (its pods count as pending from now), delete it (it drains at once).
    Interrupt {
        machine: OwnedInstance,
        deadline: DateTime<Utc>,
    },
    /// Rebalance (`Replace`) or scheduled change: the Machine is at risk; the disruption controller replaces it
    /// first and drains it after, within the group's budget.
    MarkAtRisk {
        machine: OwnedInstance,
        deadline: Option<DateTime<Utc>>,
    },
    /// A rebalance recommendation on an `Ignore` class: an Event and the metric, nothing more.
    Record { machine: OwnedInstance },
    /// A state change: the Machine controller looks at the cloud afresh.
    LookAgain { machine: OwnedInstance },
    /// The instance is no Machine's (another cluster's, an Auto Scaling group's, gone), or its Machine is already
    /// being deleted: nothing to do.
    NotOurs { instance_id: String },
}

/// Decides, per instance of the notice, from the Machines that own them (`owner_of` answers by instance id).
pub fn decide(notice: &Notice, owner_of: impl Fn(&str) -> Option<OwnedInstance>) -> Vec<Decision> {
    notice
        .instance_ids
        .iter()
        .map(|id| {
            // A Machine being deleted is drained already; only a state change still matters to it (its instance
            // may be gone before the drain ends).
            let owner =
                owner_of(id).filter(|m| !m.deleting || notice.kind == NoticeKind::StateChange);
            let Some(machine) = owner else {
                return Decision::NotOurs {
                    instance_id: id.clone(),
                };
            };
            match notice.kind {
                NoticeKind::SpotInterruption => Decision::Interrupt {
                    machine,
                    deadline: notice.deadline.unwrap_or(notice.time + SPOT_WARNING),
                },
                NoticeKind::RebalanceRecommendation => match machine.rebalance {
                    RebalancePolicy::Ignore => Decision::Record { machine },
                    RebalancePolicy::Replace => Decision::MarkAtRisk {
                        machine,
                        deadline: None,
                    },
                },
                NoticeKind::ScheduledChange => Decision::MarkAtRisk {
                    machine,
                    deadline: notice.deadline,
                },
                NoticeKind::StateChange => Decision::LookAgain { machine },
            }
        })
        .collect()
}
