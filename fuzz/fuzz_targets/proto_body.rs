//! The emulator's protobuf decoding (`src/emulator/proto.rs`) of the two kinds kubectl sends as protobuf,
//! DeleteOptions and Eviction: any bytes are decoded or refused, and what is decoded is the JSON form of one of
//! them (an Eviction says its kind; DeleteOptions carry only their options), holding only fields of those kinds.
#![no_main]

use berth::emulator::proto::decode;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const DELETE_OPTIONS: [&str; 5] = [
    "gracePeriodSeconds",
    "preconditions",
    "orphanDependents",
    "propagationPolicy",
    "dryRun",
];

fn assert_delete_options(options: &Value) {
    let fields = options
        .as_object()
        .unwrap_or_else(|| panic!("DeleteOptions decoded to {options}"));
    for key in fields.keys() {
        assert!(
            DELETE_OPTIONS.contains(&key.as_str()),
            "DeleteOptions decoded with a field {key:?}: {options}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(value) = decode(data) else {
        return;
    };
    match value.get("kind").and_then(Value::as_str) {
        Some("Eviction") => {
            if let Some(options) = value.get("deleteOptions") {
                assert_delete_options(options);
            }
        }
        Some(other) => panic!("decoded to kind {other:?}: {value}"),
        None => assert_delete_options(&value),
    }
});
