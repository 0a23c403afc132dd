//! The emulator's patches (`src/emulator/patch.rs`): JSON merge patch (RFC 7386), strategic merge patch and JSON
//! patch (RFC 6902) applied to a JSON document. Input: the document, a NUL byte, the patch. Every patch applies or
//! is refused with an error; a merge patch applied twice gives what it gave once (RFC 7386 patches are
//! idempotent), an empty JSON patch changes nothing.
#![no_main]

use berth::emulator::patch::{json_patch, merge_patch, strategic_merge};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (Ok(doc), Ok(patch)) = (
        serde_json::from_slice::<Value>(&data[..split]),
        serde_json::from_slice::<Value>(&data[split + 1..]),
    ) else {
        return;
    };

    let once = merge_patch(&doc, &patch);
    let twice = merge_patch(&once, &patch);
    assert_eq!(
        once, twice,
        "merge patch {patch} is not idempotent on {doc}"
    );

    if let Ok(merged) = strategic_merge(&doc, &patch) {
        serde_json::to_vec(&merged).expect("a strategic merge result serializes");
    }

    match json_patch(&doc, &patch) {
        Ok(patched) => {
            if patch.as_array().is_some_and(|ops| ops.is_empty()) {
                assert_eq!(patched, doc, "an empty JSON patch changed the document");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
