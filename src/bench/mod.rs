//! Benchmarks as commands (`berth bench NAME`): each prints a human table and, last, one JSON line.
//!
//! - [`launch`]: a burst of machine launches against the simulated cloud with EC2's real rate limits.

pub mod launch;
