//! berth: a Kubernetes node provisioner for EC2.
//!
//! One controller does two jobs other systems split: the autoscaling loop (pending pods in, capacity decisions
//! out) and the machine lifecycle (Machine, MachineSet and MachineDeployment reconciliation that launches and
//! terminates instances itself). The folders mirror the architecture in DESIGN.md:
//! pure planners (`model`, `scheduling`, `disruption`, `rollout`) over plain data, thin controllers around them.
#![forbid(unsafe_code)]

pub mod api;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod cloud;
pub mod controllers;
pub mod disruption;
pub mod emulator;
pub mod fx;
pub mod garbage;
pub mod health;
pub mod interruption;
pub mod lifecycle;
pub mod model;
pub mod operator;
pub mod rollout;
pub mod rollout_cli;
pub mod scheduling;
pub mod shutdown;
pub mod sim;
pub mod state;
pub mod telemetry;
