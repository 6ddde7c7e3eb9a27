//! Custom resources Phalanx reads gangs from that k8s-openapi does not carry: the
//! scheduler-plugins coscheduling `PodGroup` and the Grove `PodGang`. Only the fields
//! Phalanx uses are modelled; unknown fields are ignored.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// `scheduling.x-k8s.io/v1alpha1` `PodGroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoschedulingPodGroup {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: CoschedulingPodGroupSpec,
    /// The status, as coscheduling writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CoschedulingPodGroupStatus>,
}

impl CoschedulingPodGroup {
    /// API group/version.
    pub const API_VERSION: &'static str = "scheduling.x-k8s.io/v1alpha1";
}

/// Spec of a coscheduling `PodGroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoschedulingPodGroupSpec {
    /// Pods that must be scheduled together.
    #[serde(default)]
    pub min_member: i32,
    /// Resources the group needs at minimum (informational here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_resources:
        Option<std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    /// How long to wait for the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_timeout_seconds: Option<i32>,
}

/// Status of a coscheduling `PodGroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoschedulingPodGroupStatus {
    /// `Pending`, `PreScheduling`, `Scheduling`, `Scheduled`, `Running`, `Finished`, `Failed`, `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Owner that occupies the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupied_by: Option<String>,
    /// Members bound to a node.
    #[serde(default)]
    pub scheduled: i32,
    /// Running pods.
    #[serde(default)]
    pub running: i32,
    /// Succeeded pods.
    #[serde(default)]
    pub succeeded: i32,
    /// Failed pods.
    #[serde(default)]
    pub failed: i32,
    /// When the group first had enough members to be scheduled (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_start_time: Option<String>,
}

/// `scheduler.grove.io/v1alpha1` `PodGang`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodGang {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: PodGangSpec,
}

impl PodGang {
    /// API group/version.
    pub const API_VERSION: &'static str = "scheduler.grove.io/v1alpha1";
}

/// Spec of a `PodGang`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodGangSpec {
    /// The groups of pods (one per PodClique replica).
    #[serde(default)]
    pub podgroups: Vec<GrovePodGroup>,
    /// Constraint on the whole gang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_constraint: Option<GroveTopologyConstraint>,
    /// Constraints on subsets of the groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_constraint_group_configs: Vec<GroveTopologyConstraintGroupConfig>,
    /// Priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// A group of a `PodGang`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrovePodGroup {
    /// Group name.
    pub name: String,
    /// Its pods.
    #[serde(default)]
    pub pod_references: Vec<NamespacedName>,
    /// How many must be placed together.
    #[serde(default)]
    pub min_replicas: i32,
    /// The group's own constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_constraint: Option<GroveTopologyConstraint>,
}

/// `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamespacedName {
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Grove topology constraint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroveTopologyConstraint {
    /// Packing levels (node-label keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_constraint: Option<GrovePackConstraint>,
}

/// `packConstraint{required, preferred}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrovePackConstraint {
    /// Hard requirement (label key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<String>,
    /// Best effort (label key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred: Option<String>,
}

/// Constraint on a subset of groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroveTopologyConstraintGroupConfig {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Groups it applies to.
    #[serde(default)]
    pub pod_group_names: Vec<String>,
    /// The constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_constraint: Option<GroveTopologyConstraint>,
}
