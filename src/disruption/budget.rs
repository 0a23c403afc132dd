//! Disruption budgets: how many of a group's nodes voluntary disruption may take at once.
//!
//! A budget is a number or a percentage of the group's nodes (rounded up, as Karpenter does: 20% of 19 nodes is
//! 4), active always or only inside a schedule window (five-field cron in UTC plus a duration). The most restrictive
//! active budget applies. When no budget is active (none configured, or every window closed) the group may lose
//! one node at a time: closing a window never means "unlimited".

use super::cron::Schedule;
use super::DisruptionError;
use chrono::{DateTime, Duration, Utc};

/// What a group may lose at once when no budget is active.
pub const DEFAULT_NODES_AT_ONCE: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLimit {
    Count(u32),
    /// 0 to 100.
    Percent(u32),
}

impl NodeLimit {
    /// Reads `3` or `20%`.
    pub fn parse(text: &str) -> Result<NodeLimit, DisruptionError> {
        let err = |reason: &str| DisruptionError::InvalidBudget {
            value: text.to_string(),
            reason: reason.to_string(),
        };
        match text.strip_suffix('%') {
            Some(p) => match p.parse::<u32>() {
                Ok(v) if v <= 100 => Ok(NodeLimit::Percent(v)),
                Ok(_) => Err(err("a percentage must be at most 100%")),
                Err(_) => Err(err("expected a whole percentage such as 20%")),
            },
            None => text
                .parse::<u32>()
                .map(NodeLimit::Count)
                .map_err(|_| err("expected a non-negative number or a percentage")),
        }
    }

    /// How many of `nodes` this allows.
    pub fn resolve(self, nodes: u32) -> u32 {
        match self {
            NodeLimit::Count(n) => n,
            NodeLimit::Percent(p) => ((nodes as u64 * p as u64).div_ceil(100)) as u32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub schedule: Schedule,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub nodes: NodeLimit,
    /// None: always active.
    pub window: Option<Window>,
}

impl Budget {
    pub fn always(nodes: NodeLimit) -> Budget {
        Budget {
            nodes,
            window: None,
        }
    }

    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        match &self.window {
            None => true,
            Some(w) => w.schedule.window_contains(now, w.duration),
        }
    }
}

/// How many nodes of a group of `nodes` may be disrupted at once at `now` (before subtracting those already going).
pub fn allowed_disruptions(budgets: &[Budget], nodes: u32, now: DateTime<Utc>) -> u32 {
    budgets
        .iter()
        .filter(|b| b.is_active(now))
        .map(|b| b.nodes.resolve(nodes))
        .min()
        .unwrap_or(DEFAULT_NODES_AT_ONCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_round_up() {
        assert_eq!(NodeLimit::parse("3").unwrap(), NodeLimit::Count(3));
        assert_eq!(NodeLimit::parse("20%").unwrap().resolve(19), 4);
        assert_eq!(NodeLimit::parse("0%").unwrap().resolve(19), 0);
        assert_eq!(NodeLimit::parse("100%").unwrap().resolve(7), 7);
        for bad in ["-1", "101%", "x%", "1.5"] {
            assert_eq!(
                NodeLimit::parse(bad).unwrap_err().category(),
                "invalid_budget",
                "{bad}"
            );
        }
    }
}
