//! The normalised gang model.

use serde::Serialize;

/// `namespace/name` of a gang.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct GangKey {
    /// Namespace of the gang's pods.
    pub namespace: String,
    /// Gang name (label value, PodGroup or PodGang name, or the pod's own name).
    pub name: String,
}

impl std::fmt::Display for GangKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where the gang's definition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum GangSource {
    /// `phalanx.dev/gang` label and annotations.
    Annotations,
    /// scheduler-plugins `PodGroup`.
    CoschedulingPodGroup,
    /// Workload API `scheduling.k8s.io` `PodGroup`.
    WorkloadPodGroup,
    /// Grove `PodGang`.
    GrovePodGang,
    /// A pod with no gang: a gang of one.
    SinglePod,
}

/// A pod, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The role of a member inside a prefill/decode group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PdRole {
    /// Computes the KV cache.
    Prefill,
    /// Consumes it.
    Decode,
    /// Does both.
    Both,
}

/// One pending pod of a gang.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The pod.
    pub pod: PodRef,
    /// Its role (sub-group), if any.
    pub role: Option<String>,
    /// Its prefill/decode group, if any.
    pub pd_group: Option<String>,
}

/// A level requirement, as written by the user: a level name (`rack`) or a node-label
/// key (`phalanx.dev/rack`); the placement resolves it against the topology config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopologyRequirement {
    /// All members must share one domain at this level.
    pub required: Option<String>,
    /// All members should share one domain at this level.
    pub preferred: Option<String>,
}

impl TopologyRequirement {
    /// True when neither level is set.
    pub fn is_empty(&self) -> bool {
        self.required.is_none() && self.preferred.is_none()
    }
}

/// A sub-group of the gang with its own minimum and topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    /// Role name.
    pub name: String,
    /// How many of its members must be placed (pending and already bound together).
    pub min: u32,
    /// Its topology requirement.
    pub topology: TopologyRequirement,
    /// Indices into [`Gang::members`].
    pub members: Vec<usize>,
    /// Members of this role already bound to nodes.
    pub bound: u32,
}

/// Whether a KV domain is a must or a wish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum KvPolicy {
    /// Prefill and decode must share the domain.
    Required,
    /// They should; the transfer cost breaks ties.
    #[default]
    Preferred,
}

/// Prefill and decode members that exchange KV.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PdGroup {
    /// `phalanx.dev/pd-group` value.
    pub name: String,
    /// Level they share (`phalanx.dev/kv-domain`).
    pub kv_domain: Option<String>,
    /// Whether it is required.
    pub policy: KvPolicy,
    /// KV cache bytes per token.
    pub kv_bytes_per_token: Option<u64>,
    /// Typical input length, tokens.
    pub typical_isl: Option<u64>,
    /// Indices into [`Gang::members`], with their P/D role.
    pub members: Vec<(usize, PdRole)>,
}

impl PdGroup {
    /// Bytes moved per request from prefill to decode, if both hints are given.
    pub fn kv_bytes_per_request(&self) -> Option<u64> {
        Some(self.kv_bytes_per_token?.saturating_mul(self.typical_isl?))
    }
}

/// A gang, normalised from any source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gang {
    /// Its name.
    pub key: GangKey,
    /// Where it was defined.
    pub source: GangSource,
    /// Pending members, sorted by pod name.
    pub members: Vec<Member>,
    /// Members already bound to nodes.
    pub bound: u32,
    /// Members (pending and bound) that must be placed together.
    pub min_members: u32,
    /// Sub-groups with their own minimums.
    pub roles: Vec<Role>,
    /// The whole gang's topology requirement.
    pub topology: TopologyRequirement,
    /// Prefill/decode groups among the members.
    pub pd_groups: Vec<PdGroup>,
    /// `scheduleTimeoutSeconds` of a coscheduling PodGroup.
    pub schedule_timeout_seconds: Option<i32>,
}

impl Gang {
    /// How many pending members must be placed in this attempt.
    pub fn needed(&self) -> u32 {
        self.min_members.saturating_sub(self.bound)
    }

    /// How many more pods must be created before the gang can be placed at all.
    pub fn missing_members(&self) -> u32 {
        let have = self.bound + self.members.len() as u32;
        let by_roles = self.roles.iter().map(|r| r.min.saturating_sub(r.bound + r.members.len() as u32)).sum();
        self.min_members.saturating_sub(have).max(by_roles)
    }

    /// The role of member `i`, if it has one.
    pub fn role_of(&self, i: usize) -> Option<&Role> {
        self.roles.iter().find(|r| r.members.contains(&i))
    }
}
