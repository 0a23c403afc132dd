//! Label selectors as objects (`matchLabels`, `matchExpressions`): berth's planners read them with
//! `model::label_selector::Selector::from_api`, the emulator's API server with `emulator::selector::LabelSelector`.
//! Both must accept the same valid selectors and select the same labels; berth's query form (`to_query`, written to
//! the scale subresource's `status.selector`) must parse in the emulator and select the same labels again.
//!
//! Input: a JSON object `{"selector": <LabelSelector>, "labels": {<key>: <value>, ...}}`.
#![no_main]

use berth::emulator::selector::LabelSelector as EmulatorSelector;
use berth::model::label_selector::Selector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(serde::Deserialize)]
struct Input {
    selector: serde_json::Value,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A label name (a value, or a key's name part) as the API server validates it: what a stored object can carry.
/// The query syntax cannot quote, so only such keys and values are expected to survive `to_query`.
fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// A label key: a name, optionally after a DNS-subdomain prefix and a `/`.
fn is_label_key(s: &str) -> bool {
    let (prefix, name) = s.split_once('/').unwrap_or(("", s));
    !name.is_empty()
        && is_label_value(name)
        && prefix.len() <= 253
        && (prefix.is_empty()
            || prefix
                .split('.')
                .all(|part| !part.is_empty() && is_label_value(part)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Input>(data) else {
        return;
    };
    let Ok(api) = serde_json::from_value::<LabelSelector>(input.selector.clone()) else {
        return;
    };
    let labels = input.labels;
    let label_pairs: Vec<(String, String)> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let ours = Selector::from_api(&api);
    let emulator = EmulatorSelector::from_object(&input.selector);
    let Ok(ours) = ours else {
        return;
    };
    let emulator = emulator.unwrap_or_else(|e| {
        panic!(
            "berth accepts selector {} but the emulator refuses it: {e}",
            input.selector
        )
    });
    assert_eq!(
        ours.matches(&labels),
        emulator.matches(&label_pairs),
        "selector {} on labels {labels:?}: berth and the emulator disagree",
        input.selector
    );

    let names_valid =
        api.match_labels
            .iter()
            .flatten()
            .all(|(k, v)| is_label_key(k) && is_label_value(v))
            && api.match_expressions.iter().flatten().all(|e| {
                is_label_key(&e.key) && e.values.iter().flatten().all(|v| is_label_value(v))
            });
    if !names_valid {
        return;
    }
    let query = ours.to_query();
    let parsed = EmulatorSelector::parse(&query).unwrap_or_else(|e| {
        panic!(
            "selector {} prints as {query:?}, which does not parse: {e}",
            input.selector
        )
    });
    assert_eq!(
        parsed.matches(&label_pairs),
        ours.matches(&labels),
        "selector {} prints as {query:?}, which selects differently on {labels:?}",
        input.selector
    );
});
