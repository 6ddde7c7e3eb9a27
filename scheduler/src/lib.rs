//! The `phalanx-scheduler` binary's modules: snapshot loading and `simulate`, and the
//! parts of the running scheduler that talk to the API server (the commit protocol,
//! leader election). The decisions themselves live in `phalanx-scheduler-core`.

pub mod commit;
pub mod leader;
pub mod service;
pub mod simulate;
pub mod snapshot;
