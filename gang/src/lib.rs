//! Pure model of gangs: pods placed all-or-nothing, with roles and per-role minimums,
//! topology requirements and prefill/decode groups.
//!
//! A gang's definition comes from one of four sources (DESIGN.md), all normalised into
//! one [`Gang`]:
//! 1. annotations on the pods (`phalanx.dev/gang`, `phalanx.dev/gang-min-members`, …);
//! 2. a scheduler-plugins `PodGroup` (`scheduling.x-k8s.io/v1alpha1`, [`crd::CoschedulingPodGroup`]);
//! 3. an upstream Workload API `PodGroup` (`scheduling.k8s.io` v1beta1 on 1.37, v1alpha2
//!    on 1.36, [`workload::WorkloadPodGroup`]) named by `pod.spec.schedulingGroup`;
//! 4. a Grove `PodGang` (`scheduler.grove.io/v1alpha1`, [`crd::PodGang`]).
//!
//! A pod with none of these is a gang of one. [`assemble`] groups the pods of a snapshot
//! and reports every malformed definition as a [`GangProblem`] whose message says what
//! to change.

pub mod assemble;
pub mod crd;
pub mod error;
pub mod keys;
pub mod model;
pub mod workload;

pub use assemble::{Assembly, GangInputs, GangProblem, assemble};
pub use error::GangError;
pub use model::{Gang, GangKey, GangSource, KvPolicy, Member, PdGroup, PdRole, PodRef, Role, TopologyRequirement};
