//! The emulator's request decoding (`emulator::http::decode_body`): the first byte picks the Content-Type (JSON,
//! YAML, protobuf), the rest is the body. A body is decoded or refused with an error the API server would send;
//! what is decoded is a JSON value the emulator can store and send back.
#![no_main]

use berth::emulator::http::decode_body;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 3] = [
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[selector as usize % CONTENT_TYPES.len()];
    let Ok(value) = decode_body(content_type, body) else {
        return;
    };
    let stored = serde_json::to_vec(&value).expect("a decoded body serializes");
    let back: serde_json::Value = serde_json::from_slice(&stored).unwrap_or_else(|e| {
        panic!("the emulator's own JSON for a {content_type} body does not parse: {e}")
    });
    // serde_json's float parsing is not exactly round-trip, so compare shapes only for numbers.
    assert_eq!(back.is_object(), value.is_object());
    assert_eq!(back.is_array(), value.is_array());
});
