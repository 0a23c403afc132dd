//! The launch-shape queue: how the provisioner tells a node group what size each new Machine should be. A JSON list
//! in the `berth.dev/launch-shapes` annotation of a MachineDeployment (written by the provisioner and the
//! disruption controller), carried to its current MachineSet, and consumed by derivation: a shape is taken once a
//! Machine carries its id (`berth.dev/shape-id`). Its format lives here, below both the controllers that write and
//! read it and the scheduling snapshot that counts queued shapes as capacity on its way.

use super::MachineShape;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// On MachineDeployments and MachineSets: queued launch shapes (JSON).
pub const LAUNCH_SHAPES_ANNOTATION: &str = "berth.dev/launch-shapes";

/// One queued launch shape, as stored in the `berth.dev/launch-shapes` annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchShapeEntry {
    pub id: String,
    #[serde(flatten)]
    pub shape: MachineShape,
}

/// Reads the queue; a malformed annotation is treated as empty (it only steers sizes) and reported by the caller.
pub fn read_shape_queue(
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<LaunchShapeEntry>, String> {
    match annotations.get(LAUNCH_SHAPES_ANNOTATION) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            format!(
                "annotation {} is not a list of shapes: {e}",
                LAUNCH_SHAPES_ANNOTATION
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_queue_round_trips_and_rejects_garbage() {
        let entries = vec![LaunchShapeEntry {
            id: "p1-0".into(),
            shape: MachineShape {
                instance_types: vec!["m6i.large".into()],
                zones: vec!["us-east-1a".into()],
                capacity_types: vec![],
            },
        }];
        let mut annotations = BTreeMap::new();
        annotations.insert(
            LAUNCH_SHAPES_ANNOTATION.to_string(),
            serde_json::to_string(&entries).unwrap(),
        );
        assert_eq!(read_shape_queue(&annotations).unwrap(), entries);
        annotations.insert(LAUNCH_SHAPES_ANNOTATION.to_string(), "{not json".into());
        assert!(read_shape_queue(&annotations)
            .unwrap_err()
            .contains(LAUNCH_SHAPES_ANNOTATION));
        assert!(read_shape_queue(&BTreeMap::new()).unwrap().is_empty());
    }
}
