//! Five-field cron schedules (minute, hour, day of month, month, day of week; UTC), as disruption budget windows
//! use them, with the usual forms: `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, month and
//! weekday names (`jan`, `mon`), and the macros `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`.
//!
//! As in Vixie cron, when both day of month and day of week are restricted, a day matching either one matches.

use super::DisruptionError;
use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

/// The longest budget window looked back over, in minutes: a window longer than a month would be open almost always
/// anyway, and the bound keeps the minute-by-minute look-back cheap.
pub const MAX_WINDOW_MINUTES: i64 = 31 * 24 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    dom_restricted: bool,
    dow_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, DisruptionError> {
        let err = |reason: String| DisruptionError::InvalidSchedule {
            schedule: text.to_string(),
            reason,
        };
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        }
        let minutes = field(fields[0], 0, 59, &[]).map_err(|r| err(format!("minute: {r}")))?;
        let hours = field(fields[1], 0, 23, &[]).map_err(|r| err(format!("hour: {r}")))?;
        let dom = field(fields[2], 1, 31, &[]).map_err(|r| err(format!("day of month: {r}")))?;
        let months = field(fields[3], 1, 12, &MONTHS).map_err(|r| err(format!("month: {r}")))?;
        // 7 is Sunday too.
        let mut dow =
            field(fields[4], 0, 7, &WEEKDAYS).map_err(|r| err(format!("day of week: {r}")))?;
        if dow & (1 << 7) != 0 {
            dow |= 1;
        }
        Ok(Schedule {
            text: text.to_string(),
            minutes,
            hours: hours as u32,
            days_of_month: dom as u32,
            months: months as u16,
            days_of_week: (dow & 0x7f) as u8,
            dom_restricted: !fields[2].starts_with('*'),
            dow_restricted: !fields[4].starts_with('*'),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the schedule fires at this minute.
    pub fn fires_at(&self, t: DateTime<Utc>) -> bool {
        let bit = |set: u64, v: u32| set & (1u64 << v) != 0;
        if !bit(self.minutes, t.minute())
            || !bit(self.hours as u64, t.hour())
            || !bit(self.months as u64, t.month())
        {
            return false;
        }
        let dom = bit(self.days_of_month as u64, t.day());
        let dow = bit(self.days_of_week as u64, t.weekday().num_days_from_sunday());
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            _ => dom && dow,
        }
    }

    /// Whether a window of `duration` opened by this schedule contains `now`: the schedule fired at some minute in
    /// (now - duration, now].
    pub fn window_contains(&self, now: DateTime<Utc>, duration: Duration) -> bool {
        let duration = duration.min(Duration::minutes(MAX_WINDOW_MINUTES));
        let Some(mut t) = now.with_second(0).and_then(|t| t.with_nanosecond(0)) else {
            return false;
        };
        while now - t < duration {
            if self.fires_at(t) {
                return true;
            }
            t -= Duration::minutes(1);
        }
        false
    }
}

/// One field as a bit set of the values it admits.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, weekday names from 0.
            return Ok(i as u32 + min);
        }
        let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        if v < min || v > max {
            return Err(format!("{v} is outside {min}-{max}"));
        }
        Ok(v)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step {s:?} is not a positive number"))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {range} runs backwards"));
            }
            (a, b)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step;
        }
    }
    if set == 0 {
        return Err(format!("{text:?} admits no value"));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn fields_and_windows() {
        // Weekdays at 09:00 UTC, for 8 hours.
        let s = Schedule::parse("0 9 * * mon-fri").unwrap();
        assert!(s.fires_at(at("2026-12-01T09:00:00Z")), "a Tuesday");
        assert!(!s.fires_at(at("2026-12-05T09:00:00Z")), "a Saturday");
        assert!(s.window_contains(at("2026-12-01T16:59:00Z"), Duration::hours(8)));
        assert!(
            !s.window_contains(at("2026-12-01T17:00:00Z"), Duration::hours(8)),
            "the window is half-open"
        );
        assert!(!s.window_contains(at("2026-12-01T08:59:00Z"), Duration::hours(8)));
        let every = Schedule::parse("*/15 * * * *").unwrap();
        assert!(
            every.fires_at(at("2026-12-01T10:45:00Z"))
                && !every.fires_at(at("2026-12-01T10:46:00Z"))
        );
        let list = Schedule::parse("5,10-12 0 1 jan,JUL 0").unwrap();
        assert!(
            list.fires_at(at("2026-01-01T00:11:00Z")),
            "day of month matches though Jan 1 2026 is a Thursday"
        );
        assert!(
            list.fires_at(at("2026-07-05T00:05:00Z")),
            "a Sunday in July matches through day of week"
        );
        assert!(!list.fires_at(at("2026-07-06T00:05:00Z")));
        assert!(Schedule::parse("@daily")
            .unwrap()
            .fires_at(at("2026-03-04T00:00:00Z")));
        assert!(
            Schedule::parse("0 0 * * 7")
                .unwrap()
                .fires_at(at("2026-12-06T00:00:00Z")),
            "7 is Sunday"
        );
    }

    #[test]
    fn malformed_schedules_are_errors() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
            "* * * foo *",
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert_eq!(e.category(), "invalid_schedule", "{bad:?}");
        }
    }
}
