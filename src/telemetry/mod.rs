//! Operating berth: logging, metrics (and the fleet's gauges), health endpoints and leader election.

pub mod fleet;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod server;
