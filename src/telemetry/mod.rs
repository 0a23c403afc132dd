//! Operating berth: logging (and, as they land, metrics, health and leader election).

pub mod logging;
