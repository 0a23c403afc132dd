//! Operating berth: logging (and, as they land, metrics, health and leader election).

pub mod logging;
pub mod metrics;
pub mod leader;
pub mod server;
