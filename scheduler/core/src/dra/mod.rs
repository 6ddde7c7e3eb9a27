//! The DRA structured allocator: allocates ResourceClaims on a node from DeviceClasses
//! and ResourceSlices with Kubernetes 1.36 semantics, like kube-scheduler's
//! DynamicResources plugin does with `k8s.io/dynamic-resource-allocation/structured`.
//!
//! ```text
//! DraSnapshot::new(classes, slices, features)   pools indexed per node, CEL compiled once
//! Allocator::new(&snapshot).allocate(node, claims, &allocated) -> Ok(Some(results)) | Ok(None) | Err
//! ```
//!
//! Device order and search follow upstream's incubating allocator, which kube-scheduler
//! 1.36 uses with its default features; with a feature set upstream serves with its
//! stable allocator, the stable rules apply (no distinctAttribute, capacity requests
//! ignored). `hack/difftest` and `tests/dra_difftest.rs` compare the two.
//!
//! Known limits:
//! - The CEL cost limit is enforced on a static worst-case estimate, not on the actual
//!   cost of one evaluation as upstream does; expressions near the limit may be judged
//!   differently.
//! - CEL libraries beyond what the `cel` crate offers plus `quantity`, `semver`,
//!   `cel.bind` and optionals (e.g. `url`, `ip`, `cidr`, `format`, regex `find`) fail to
//!   compile here.
//! - List-valued attributes (DRAListTypeAttributes, alpha) are exposed to CEL as lists,
//!   but constraints treat them like upstream's non-experimental allocators do.
//! - A search that takes more than [`SEARCH_BUDGET`] steps counts as infeasible
//!   (upstream stops at the scheduler's filter timeout instead).
//! - `shareID`s are derived deterministically from claim, result index and device.

mod allocator;
mod capacity;
pub mod cel;
mod constraints;
mod error;
mod features;
mod hash;
mod nodes;
mod pools;
pub mod quantity;
mod snapshot;
mod state;
mod validate;

pub use allocator::{Allocator, MAX_RESULTS, SEARCH_BUDGET, Unsatisfied, tolerates};
pub use constraints::AttrValue;
pub use error::AllocateError;
pub use features::Features;
pub use nodes::{node_matches, selector_matches};
pub use snapshot::DraSnapshot;
pub use state::{AllocatedState, DeviceId};
pub use validate::{Violation, validate};
