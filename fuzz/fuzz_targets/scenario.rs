//! Scenario files (`src/sim/scenario.rs`): any text is either a scenario or an error that names the file (and, for
//! a bad field, the line and the field), never a panic. A valid scenario can be scaled down, as `--scale` does.
#![no_main]

use berth::sim::scenario::{parse, ScenarioError};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(FILE, text, None) {
        Ok(scenario) => {
            let _ = scenario.scaled(0.1);
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with(FILE),
                "error does not name the file: {message}"
            );
            if let ScenarioError::Invalid { line, field, .. } = &e {
                assert!(!field.is_empty(), "error names no field: {message}");
                assert!(
                    *line <= text.lines().count().max(1),
                    "error names line {line} of a {}-line file",
                    text.lines().count()
                );
            }
        }
    }
});
