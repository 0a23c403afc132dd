//! Types shared by several kinds: conditions, references, taints, machine templates, bounds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A condition on a berth object, in the shape of metav1.Condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The kind of condition, in CamelCase (for example Ready, Available, Progressing, InstanceLaunched).
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// A one-word CamelCase reason for the last transition, used as the Event reason too.
    #[serde(default)]
    pub reason: String,
    /// A human-readable message with details of the last transition.
    #[serde(default)]
    pub message: String,
    /// When the condition last changed status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The metadata.generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

/// A reference to a cluster-scoped MachineClass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassReference {
    /// Name of the MachineClass.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A reference to a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeReference {
    /// Name of the Node.
    pub name: String,
    /// UID of the Node, so a Node recreated with the same name is not mistaken for this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A Kubernetes taint, as on a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaintSpec {
    /// The taint key.
    #[schemars(length(min = 1, max = 316))]
    pub key: String,
    /// The taint value (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// NoSchedule, PreferNoSchedule or NoExecute.
    pub effect: TaintEffectSpec,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffectSpec {
    #[default]
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// Labels and annotations given to objects created from a template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels of the created Machines; they must match the owner's selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the created Machines.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What every Machine of a group is: its class, and the labels and taints its Node gets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplateSpec {
    /// The MachineClass that says how to launch the instance.
    pub class_ref: ClassReference,
    /// Labels put on the Node when it registers (in addition to the well-known ones).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// Taints the Node registers with and keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<TaintSpec>,
    /// Taints the Node registers with that a node agent removes once it is ready (for example a CNI or a GPU
    /// driver), or berth itself when the class sets removeStartupTaintsWhenReady. The planner ignores them when
    /// deciding whether pods fit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_taints: Vec<TaintSpec>,
}

/// A template for Machines: their metadata and spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplate {
    /// Labels and annotations of the Machines.
    #[serde(default)]
    pub metadata: TemplateMetadata,
    /// The Machines' spec.
    pub spec: MachineTemplateSpec,
}

/// An inclusive integer range. Either bound may be omitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must be less than or equal to max"}]))]
pub struct Range {
    /// The smallest accepted value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// The largest accepted value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

impl Range {
    pub fn contains(&self, v: u32) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

/// Pattern of a Go duration (`30s`, `10m`, `1h30m`), as metav1.Duration accepts.
pub(crate) const DURATION_PATTERN: &str = crate::model::duration::DURATION_PATTERN;

/// Pattern of a Kubernetes quantity.
pub(crate) const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Pattern of an int-or-percent string such as `25%`.
pub(crate) const PERCENT_RULE: &str =
    "type(self) == int ? self >= 0 : (self.matches('^[0-9]+%$') && int(self.replace('%', '')) <= 100)";

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets a condition, keeping lastTransitionTime when the status did not change. Returns whether anything changed
/// (ignoring timestamps), so a controller writes status only when it must.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: Time) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            let changed = existing.status != new.status
                || existing.reason != new.reason
                || existing.message != new.message
                || existing.observed_generation != new.observed_generation;
            if existing.status != new.status || existing.last_transition_time.is_none() {
                new.last_transition_time = Some(now);
            } else {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
            changed
        }
        None => {
            new.last_transition_time = Some(now);
            conditions.push(new);
            true
        }
    }
}
