//! The DRA structured allocator: allocates ResourceClaims on a node from DeviceClasses
//! and ResourceSlices like kube-scheduler's DynamicResources plugin does with
//! `k8s.io/dynamic-resource-allocation/structured`, following Kubernetes 1.37 or 1.36
//! ([`Features::release`]).
//!
//! ```text
//! DraSnapshot::new(classes, slices, features)   pools indexed per node, CEL compiled once
//! Allocator::new(&snapshot).allocate(node, claims, &allocated) -> Ok(Some(results)) | Ok(None) | Err
//! ```
//!
//! Device order and search follow upstream's incubating allocator, which kube-scheduler
//! uses with its default features; with a feature set upstream serves with its stable
//! allocator, the stable rules apply (no distinctAttribute, capacity requests ignored).
//! `hack/difftest/<release>` and `tests/dra_difftest.rs` compare ours with upstream's of
//! each release (v0.37.2 and v0.36.3).
//!
//! What each release does. [`Features::defaults`] gives a release's default gates: 1.36
//! has DRAAdminAccess, DRAConsumableCapacity, DRADeviceBindingConditions with
//! DRAResourceClaimDeviceStatus, DRADeviceTaints, DRAPartitionableDevices and
//! DRAPrioritizedList on; 1.37 adds DRAFractionalCapacityRange (beta). Beyond the gates,
//! 1.37 changed these rules, and `release: V1_36` keeps 1.36's:
//! - Claim configs: 1.36 repeats a claim config once per request it names; 1.37 adds it
//!   once, and clears the request list of any config (class or claim) that names every
//!   request of the claim.
//! - `allocationMode: All` with consumable capacity: 1.36 counts only devices whose
//!   remaining capacity holds the request; 1.37 counts every device whose capacity does,
//!   so one already shared out makes the request fail.
//! - Capacity arithmetic: 1.37 aborts the allocation (error) on a request beyond int64 or
//!   rounding past it, and on a negative consumed capacity; with
//!   DRAFractionalCapacityRange, ranges whose bounds are whole milli-units round in
//!   milli-units (a request that is not one is an error) instead of whole units.
//! - Counters: a further share of an allow-multiple device in use does not charge its
//!   counters again; 1.37 also knows the device in use when its shares recorded no
//!   consumed capacity, 1.36 only when they did.
//! - Counter slices: 1.36 treats a slice with shared counters as relevant to every node;
//!   1.37's incubating allocator applies its node selection (a pool whose counter slice
//!   does not apply to the node is looked up whole). The stable allocator keeps 1.36's
//!   rule in both.
//!
//! Two 1.36 bugs that can allocate what constraints or counters forbid are not copied;
//! 1.37 fixed both: distinctAttribute kept one value per request name
//! (kubernetes/kubernetes#140438), and counters were keyed by pool name alone, so
//! same-named pools of two drivers shared them.
//!
//! 1.37 API fields of alpha features that only upstream's experimental allocator
//! implements are treated as with the gates off, as 1.37 does by default: a slice whose
//! devices declare counter `compatibilityGroups` is ignored (its pool is incomplete), a
//! request with `derivedAttributes` is an error, and a slice's `skipNodeOperations` is
//! not copied to results. A 1.36 API server drops these fields.
//!
//! Known limits:
//! - The CEL cost limit is enforced on a static worst-case estimate, not on the actual
//!   cost of one evaluation as upstream does; expressions near the limit may be judged
//!   differently.
//! - CEL libraries beyond what the `cel` crate offers plus `quantity`, `semver`,
//!   `cel.bind` and optionals (e.g. `url`, `ip`, `cidr`, `format`, regex `find`) fail to
//!   compile here.
//! - List-valued attributes (DRAListTypeAttributes, alpha) are exposed to CEL as lists
//!   (as 1.37 does; 1.36 without the gate fails on them), but constraints treat them like
//!   upstream's non-experimental allocators do.
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

pub use allocator::{Allocator, MAX_RESULTS, SEARCH_BUDGET, Unsatisfied, UpstreamBug, tolerates};
pub use constraints::AttrValue;
pub use error::AllocateError;
pub use features::{Features, Release};
pub use nodes::{node_matches, selector_matches};
pub use snapshot::DraSnapshot;
pub use state::{AllocatedState, DeviceId};
pub use validate::{Violation, validate};

/// The device part of a claim's spec (both are optional in the API types).
pub fn device_claim(
    claim: &k8s_openapi::api::resource::v1::ResourceClaim,
) -> Option<&k8s_openapi::api::resource::v1::DeviceClaim> {
    claim.spec.as_ref()?.devices.as_ref()
}
