//! Adapters from the API's objects to the planners' plain data.

pub mod class;
pub mod cluster;
pub mod cluster_check;
pub mod disruption;
pub mod nomination;
pub mod snapshot;
