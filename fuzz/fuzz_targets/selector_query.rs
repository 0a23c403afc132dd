//! Selector strings as clients send them (`?labelSelector=`, `?fieldSelector=`, `kubectl -l`), parsed by the
//! emulator (`src/emulator/selector.rs`), and node-selector operators as berth's planners read them
//! (`src/model/requirements.rs`). Any string is either parsed or refused with an error; a parsed label selector
//! that names only `key=value` pairs selects exactly the labels it names.
#![no_main]

use berth::emulator::selector::{FieldSelector, LabelSelector, Requirement};
use berth::model::requirements::{Operator, Requirement as NodeRequirement};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(selector) = LabelSelector::parse(text) {
        let equals: Vec<(String, String)> = selector
            .requirements
            .iter()
            .filter_map(|r| match r {
                Requirement::Equals(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect();
        if equals.len() == selector.requirements.len() {
            // Keys may repeat with different values (`a=1,a=2` selects nothing); only a consistent set must match.
            let consistent = equals
                .iter()
                .all(|(k, v)| equals.iter().all(|(k2, v2)| k != k2 || v == v2));
            if consistent {
                assert!(
                    selector.matches(&equals),
                    "{text:?} does not select the labels it names: {equals:?}"
                );
            }
        }
    }
    if let Ok(fields) = FieldSelector::parse(text) {
        let _ = fields.matches(|_| String::new());
    }
    // `<key> <operator> <value>,<value>...` as a node-selector expression.
    let mut words = text.splitn(3, ' ');
    if let (Some(key), Some(operator)) = (words.next(), words.next()) {
        let values: Vec<String> = words
            .next()
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        if let Ok(op) = Operator::parse(key, operator) {
            if let Ok(requirement) = NodeRequirement::new(key, op, &values) {
                for v in &values {
                    let _ = requirement.matches(Some(v));
                }
                let _ = requirement.matches(None);
                let _ = requirement.is_satisfiable();
                let both = requirement.intersect(&requirement);
                assert_eq!(
                    both.is_satisfiable(),
                    requirement.is_satisfiable(),
                    "{text:?}: a requirement intersected with itself changes satisfiability"
                );
            }
        }
    }
});
