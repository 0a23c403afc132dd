//! Adapters from the API's objects to the planners' plain data.

pub mod class;
pub mod cluster;
pub mod snapshot;
