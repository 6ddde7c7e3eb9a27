//! Gang placement: every member of a gang onto a node and every claim request onto
//! devices, jointly, with backtracking, as one transaction.
//!
//! [`Placer`] holds the cluster state built from a [`Snapshot`]; [`Placer::place_gang`]
//! returns a [`Plan`] (and keeps its devices taken for later gangs) or [`Pending`] with
//! the reason per candidate domain. Nothing of a failed attempt stays behind: every
//! tentative change goes through a [`state::Transaction`] and is rolled back.
//!
//! Search order (DESIGN.md): candidate domains from the narrowest level up to the
//! required level (or the whole cluster), best fit first inside a level; inside a domain
//! a depth-first search over members, trying first the claim variants that keep a
//! claim's GPUs in one NVLink island (and NICs on their PCIe root), nodes packed into the
//! fullest sub-domains. [`score`] defines the objective the plans are compared by.

pub mod claims;
pub mod nodes;
pub mod quantity;
pub mod score;
pub mod snapshot;
pub mod solver;
pub mod state;

use serde::Serialize;

pub use score::ScoreBreakdown;
pub use snapshot::Snapshot;
pub use solver::Placer;

use phalanx_gang::{GangKey, PodRef};

/// Tunables of the search.
#[derive(Debug, Clone)]
pub struct PlacementOptions {
    /// Only pods with this `spec.schedulerName` are placed.
    pub scheduler_name: String,
    /// Allocator calls allowed per gang before giving up.
    pub max_attempts: usize,
    /// After the first feasible domain of a level, how many more candidates of that
    /// level to evaluate for a better score.
    pub alternatives: usize,
    /// The Kubernetes release whose allocator rules apply (the cluster's, found at run time).
    pub release: crate::dra::Release,
}

impl Default for PlacementOptions {
    fn default() -> Self {
        Self {
            scheduler_name: "phalanx-scheduler".into(),
            max_attempts: 20_000,
            alternatives: 2,
            release: crate::dra::Release::default(),
        }
    }
}

impl PlacementOptions {
    /// Sets the scheduler name.
    #[must_use]
    pub fn scheduler_name(mut self, name: &str) -> Self {
        self.scheduler_name = name.into();
        self
    }

    /// Sets the Kubernetes release whose allocator rules apply.
    #[must_use]
    pub fn release(mut self, release: crate::dra::Release) -> Self {
        self.release = release;
        self
    }

    /// Sets the attempt budget.
    #[must_use]
    pub fn max_attempts(mut self, n: usize) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets how many alternative domains to score.
    #[must_use]
    pub fn alternatives(mut self, n: usize) -> Self {
        self.alternatives = n;
        self
    }
}

/// One claim's allocation in a plan.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimAllocation {
    /// Namespace.
    pub namespace: String,
    /// Claim name.
    pub name: String,
    /// What to write to `status.allocation`.
    pub allocation: k8s_openapi::api::resource::v1::AllocationResult,
}

/// Where one member goes.
#[derive(Debug, Clone, Serialize)]
pub struct MemberPlacement {
    /// The pod.
    pub pod: PodRef,
    /// Its node.
    pub node: String,
    /// The node's NVLink domain, if any.
    pub nvlink_domain: Option<String>,
    /// Devices allocated to it, `driver/pool/device`.
    pub devices: Vec<String>,
    /// The claims allocated with it (shared claims appear with their first member).
    pub claims: Vec<ClaimAllocation>,
    /// Locality variant its claims were allocated with.
    pub locality: claims::Locality,
}

/// Estimated KV transfer of one P/D group.
#[derive(Debug, Clone, Serialize)]
pub struct KvEstimate {
    /// The group.
    pub pd_group: String,
    /// Link class between prefill and decode.
    pub link: phalanx_topology::LinkClass,
    /// Its nominal bandwidth, GB/s.
    pub gbps: f64,
    /// Seconds per typical request (bytes per token × typical ISL ÷ bandwidth), if hinted.
    pub seconds_per_request: Option<f64>,
    /// Whether prefill and decode share the requested KV domain.
    pub in_kv_domain: bool,
}

/// A feasible placement of a gang.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The gang.
    pub gang: GangKey,
    /// Its members, in gang order.
    pub members: Vec<MemberPlacement>,
    /// The narrowest domain holding all members (`rack=r1`), or `cluster`.
    pub domain: String,
    /// Score in [0, 1].
    pub score: f64,
    /// Its components.
    pub breakdown: ScoreBreakdown,
    /// P/D transfer estimates.
    pub kv: Vec<KvEstimate>,
    /// Members left pending because they are beyond the gang minimum and did not fit.
    pub unplaced_optional: Vec<PodRef>,
}

/// Why a candidate domain could not hold the gang.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DomainReason {
    /// `level=value`, or `cluster`.
    pub domain: String,
    /// Why.
    pub reason: String,
}

/// A gang that stays pending.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    /// The gang.
    pub gang: GangKey,
    /// Its pending members (each gets the message).
    pub pods: Vec<PodRef>,
    /// One-line summary for events and `PodScheduled=False`.
    pub message: String,
    /// Per candidate domain.
    pub domains: Vec<DomainReason>,
}

/// The result of placing one gang.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum GangOutcome {
    /// Placed.
    Placed(Plan),
    /// Stays pending.
    Pending(Pending),
}

impl GangOutcome {
    /// The plan, if placed.
    pub fn plan(&self) -> Option<&Plan> {
        match self {
            Self::Placed(p) => Some(p),
            Self::Pending(_) => None,
        }
    }
}

/// Failures building a [`Placer`]: snapshots that cannot describe one cluster.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// Two Nodes share a name (e.g. snapshot files merged twice).
    #[error("node {0:?} appears twice in the snapshot; keep one copy of each Node")]
    DuplicateNode(String),
    /// A Node without `metadata.name`.
    #[error("a Node in the snapshot has no metadata.name")]
    UnnamedNode,
}

/// Checks one claim allocation of a plan with the DRA allocator's own validation.
pub fn validate_allocation(
    placer: &Placer,
    node: &str,
    claim: &k8s_openapi::api::resource::v1::ResourceClaim,
    allocation: &k8s_openapi::api::resource::v1::AllocationResult,
) -> Result<(), String> {
    let topo = placer.topology();
    let n = topo.node_index(node).ok_or_else(|| format!("unknown node {node}"))?;
    // The allocation is already counted in the placer's state: validate against the
    // state without it.
    let mut others = placer.allocated().clone();
    others.remove(allocation);
    crate::dra::validate(placer.dra(), &[claim], std::slice::from_ref(allocation), &others)
        .map_err(|e| e.to_string())?;
    // Node-local devices must be on the member's node.
    for r in allocation.devices.iter().flat_map(|d| d.results.iter().flatten()) {
        let key =
            phalanx_topology::DeviceKey { driver: r.driver.clone(), pool: r.pool.clone(), device: r.device.clone() };
        if let Some(d) = topo.device_index(&key)
            && topo.devices()[d].node != n
        {
            return Err(format!("device {key} is not on node {node}"));
        }
    }
    Ok(())
}
