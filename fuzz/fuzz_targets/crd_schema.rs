//! CRD schema validation (`src/emulator/schema.rs`): pruning, defaulting and the structural checks the emulator
//! applies to every custom object. Input: a JSON object; optionally a NUL byte and a JSON schema to validate it
//! against, otherwise each of berth's own CRD schemas is used. Validation never panics; against berth's schemas it
//! is also idempotent: an object already pruned and defaulted has nothing left to prune, and its verdict does not
//! change. (An arbitrary schema may carry defaults its own rules refuse, which the real API server rejects when
//! the CRD is created, so idempotence is not asked of those.)
#![no_main]

use berth::emulator::schema::validate_object_root;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

/// The openAPIV3Schema of every version of every CRD berth installs.
fn berth_schemas() -> &'static [Value] {
    static SCHEMAS: OnceLock<Vec<Value>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        berth::api::crds()
            .into_iter()
            .flat_map(|crd| crd.spec.versions)
            .filter_map(|v| v.schema?.open_api_v3_schema)
            .map(|s| serde_json::to_value(s).expect("a CRD schema serializes"))
            .collect()
    })
}

fn check(object: &Value, schema: &Value, idempotent: bool) {
    let mut first = object.clone();
    let verdict = validate_object_root(&mut first, schema);
    if !idempotent {
        return;
    }
    let mut second = first.clone();
    let again = validate_object_root(&mut second, schema);
    assert!(
        again.unknown.is_empty(),
        "pruning left unknown fields {:?} in {first}",
        again.unknown
    );
    assert_eq!(
        second, first,
        "validating a pruned, defaulted object changed it again"
    );
    assert_eq!(
        again.invalid.is_empty(),
        verdict.invalid.is_empty(),
        "the verdict changed on revalidation: {:?} then {:?}",
        verdict.invalid,
        again.invalid
    );
}

fuzz_target!(|data: &[u8]| {
    let (object, schema) = match data.iter().position(|&b| b == 0) {
        Some(split) => (&data[..split], Some(&data[split + 1..])),
        None => (data, None),
    };
    let Ok(object) = serde_json::from_slice::<Value>(object) else {
        return;
    };
    match schema {
        Some(schema) => {
            if let Ok(schema) = serde_json::from_slice::<Value>(schema) {
                check(&object, &schema, false);
            }
        }
        None => {
            for schema in berth_schemas() {
                check(&object, schema, true);
            }
        }
    }
});
