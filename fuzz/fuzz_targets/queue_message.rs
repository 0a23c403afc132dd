//! Interruption queue messages (`src/interruption/`, `parse`): any message body is read into a notice, ignored as
//! a well-formed event berth does not act on, or refused with an error naming what is wrong; never a panic. A
//! notice names at least one instance, and a deadline is never before the event. Events as EventBridge sends them
//! (`interruption::events`) for an instance id and time taken from the input read back to that id and time.
#![no_main]

use berth::interruption::{events, parse, NoticeKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    match parse(body) {
        Ok(Some(notice)) => {
            assert!(
                !notice.instance_ids.is_empty(),
                "a notice about no instance: {body}"
            );
            if let Some(deadline) = notice.deadline {
                if notice.kind == NoticeKind::SpotInterruption {
                    assert!(
                        deadline >= notice.time,
                        "a spot warning's deadline before its event: {body}"
                    );
                }
            }
        }
        Ok(None) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    // The same input as an instance id and a time: a well-formed warning must read back exactly.
    if data.len() >= 8 {
        let seconds = i64::from_le_bytes(data[..8].try_into().unwrap()) % 32_503_680_000;
        let Some(time) = chrono::DateTime::from_timestamp(seconds.abs(), 0) else {
            return;
        };
        let id: String = data[8..]
            .iter()
            .map(|b| char::from(b"0123456789abcdef"[usize::from(b % 16)]))
            .take(17)
            .collect();
        let id = format!("i-{id}0");
        let message = events::spot_interruption_warning("us-east-1", &id, time);
        let notice = parse(&message)
            .unwrap_or_else(|e| panic!("berth's own spot warning does not parse ({e}): {message}"))
            .expect("a spot warning is acted on");
        assert_eq!(notice.kind, NoticeKind::SpotInterruption);
        assert_eq!(notice.instance_ids, vec![id]);
        assert_eq!(notice.time, time);
    }
});
