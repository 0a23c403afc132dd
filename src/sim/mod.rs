//! Simulation: berth, unchanged, against the emulator and the simulated cloud.

pub mod dataplane;
