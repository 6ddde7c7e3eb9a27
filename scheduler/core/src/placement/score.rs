//! The objective: a placement's score in [0, 1], from the order in DESIGN.md.
//!
//! | component | weight | 1.0 means |
//! |---|---|---|
//! | `domain` | 0.40 | all members share a node (narrowest level); with a preferred level, half of it is "preferred level holds" |
//! | `fit` | 0.15 | the shared domain is full after placement (best fit keeps whole domains free) |
//! | `locality` | 0.20 | every multi-GPU claim sits in one NVLink island, every GPU+NIC claim on one PCIe root (NUMA node: half) |
//! | `kv` | 0.15 | every P/D group shares its KV domain; within it, the fastest link (transfer cost tie-break) |
//! | `packing` | 0.10 | every node touched is left with no free GPUs (least fragmentation) |
//!
//! The required level is not scored: a placement that breaks it is infeasible.

use serde::Serialize;

/// Weights of the components.
pub const WEIGHTS: Weights = Weights { domain: 0.40, fit: 0.15, locality: 0.20, kv: 0.15, packing: 0.10 };

/// Component weights.
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    /// Narrowest shared domain.
    pub domain: f64,
    /// Best fit of that domain.
    pub fit: f64,
    /// Device locality inside claims.
    pub locality: f64,
    /// P/D KV domain and transfer cost.
    pub kv: f64,
    /// Fragmentation left on touched nodes.
    pub packing: f64,
}

/// The components of a score, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreBreakdown {
    /// Narrowest shared domain (and preferred level).
    pub domain: f64,
    /// Fullness of the shared domain after placement.
    pub fit: f64,
    /// NVLink island / PCIe root alignment inside claims.
    pub locality: f64,
    /// P/D groups in their KV domain, transfer cost.
    pub kv: f64,
    /// Fullness of touched nodes after placement.
    pub packing: f64,
}

impl ScoreBreakdown {
    /// The weighted sum.
    pub fn total(&self) -> f64 {
        let w = WEIGHTS;
        let t = w.domain * self.domain
            + w.fit * self.fit
            + w.locality * self.locality
            + w.kv * self.kv
            + w.packing * self.packing;
        (t * 1e9).round() / 1e9
    }
}
