//! The DRA structured allocator: allocates ResourceClaims on a node from DeviceClasses
//! and ResourceSlices with Kubernetes 1.36 semantics, like kube-scheduler's
//! DynamicResources plugin does with `k8s.io/dynamic-resource-allocation/structured`.
//!
//! ```text
//! DraSnapshot::new(classes, slices, features)   pools indexed per node, CEL compiled once
//! Allocator::new(&snapshot).allocate(node, claims, &allocated) -> Ok(Some(results)) | Ok(None) | Err
//! ```

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
