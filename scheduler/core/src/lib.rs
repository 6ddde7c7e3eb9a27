//! The scheduler's pure decision core. It takes a snapshot and returns a plan: no
//! Kubernetes client, no async runtime, no clock.

pub mod dra;
pub mod placement;
