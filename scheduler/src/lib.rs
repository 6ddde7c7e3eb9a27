//! `phalanx-scheduler`: the parts of the running scheduler that talk to the API server
//! (the commit protocol, leader election), snapshot loading and `simulate`. The
//! decisions themselves live in `phalanx-scheduler-core`.

pub mod commit;
pub mod leader;
pub mod simulate;
pub mod snapshot;
