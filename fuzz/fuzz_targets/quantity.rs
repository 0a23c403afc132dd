//! Resource quantities (`src/model/quantity.rs`): any string either parses or is refused with an error, and a
//! parsed quantity is self-consistent: whole units and thousandths round the same way, the wrappers the planners
//! call agree with it, and its printed form parses back to the same amount.
#![no_main]

use berth::model::quantity::{parse_cpu_millis, parse_units, Quantity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let quantity = match Quantity::parse(text) {
        Ok(q) => q,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(
                parse_cpu_millis(text).is_err(),
                "{text:?}: cpu parse accepts what Quantity refuses"
            );
            assert!(
                parse_units(text).is_err(),
                "{text:?}: unit parse accepts what Quantity refuses"
            );
            return;
        }
    };
    let milli = quantity.milli_value();
    let whole = quantity.value();
    // Both round away from zero, so whole units are the thousandths rounded up again.
    if let (Some(whole), Some(milli)) = (whole, milli) {
        assert_eq!(
            whole.unsigned_abs(),
            milli.unsigned_abs().div_ceil(1000),
            "{text:?}: value() and milli_value() disagree"
        );
        assert_eq!(whole < 0, milli < 0, "{text:?}: sign differs");
    }
    if quantity.is_negative() {
        assert!(
            parse_cpu_millis(text).is_err(),
            "{text:?}: negative cpu accepted"
        );
        assert!(
            parse_units(text).is_err(),
            "{text:?}: negative amount accepted"
        );
    } else {
        assert_eq!(
            parse_cpu_millis(text).ok(),
            milli.map(|m| m as u64),
            "{text:?}: cpu millis"
        );
        assert_eq!(
            parse_units(text).ok(),
            whole.map(|v| v as u64),
            "{text:?}: units"
        );
    }
    // The printed form is exact whenever the amount fits in thousandths, so it must read back the same.
    if let Some(milli) = milli {
        let shown = quantity.to_string();
        let back = Quantity::parse(&shown)
            .unwrap_or_else(|e| panic!("{text:?} prints as {shown:?}, which does not parse: {e}"));
        assert_eq!(
            back.milli_value(),
            Some(milli),
            "{text:?} prints as {shown:?}"
        );
    }
});
