//! The upstream Workload API (`scheduling.k8s.io`) objects Phalanx reads gangs from, in
//! one version-neutral shape: `PodGroup` as served by Kubernetes 1.36 (`v1alpha2`) and
//! 1.37 (`v1beta1`, also `v1alpha3`), and `CompositePodGroup` (1.37 `v1alpha3`, alpha).
//!
//! The versions share the fields Phalanx uses (`schedulingPolicy`, `schedulingConstraints`,
//! `resourceClaims`, `priority`); where they differ (`podGroupTemplateRef` in v1alpha2,
//! `workloadRef` and `parentCompositePodGroupName` in v1beta1) both are modelled and the
//! absent one stays empty. The scheduler discovers which version the cluster serves at
//! run time and parses whichever it gets into these types; unknown fields are ignored.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use serde::{Deserialize, Serialize};

/// API group of the Workload API.
pub const GROUP: &str = "scheduling.k8s.io";

/// Versions of the Workload API that serve `PodGroup`, in the order Phalanx prefers them.
pub const POD_GROUP_VERSIONS: &[&str] = &["v1beta1", "v1alpha3", "v1alpha2"];

/// Versions that serve `CompositePodGroup`.
pub const COMPOSITE_POD_GROUP_VERSIONS: &[&str] = &["v1alpha3"];

/// The deepest CompositePodGroup hierarchy Kubernetes accepts (`WorkloadMaxTreeDepth`),
/// counting the PodGroup itself as one level.
pub const MAX_TREE_DEPTH: usize = 4;

/// Condition type a scheduler sets on a PodGroup once it was scheduled the first time.
pub const CONDITION_INITIALLY_SCHEDULED: &str = "PodGroupInitiallyScheduled";

/// Reason of a `False` [`CONDITION_INITIALLY_SCHEDULED`] when the group does not fit.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";

/// Reason of a `False` [`CONDITION_INITIALLY_SCHEDULED`] when the group's definition is wrong.
pub const REASON_SCHEDULER_ERROR: &str = "SchedulerError";

/// A Workload API `PodGroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPodGroup {
    /// `scheduling.k8s.io/<version>` it was read in.
    #[serde(default)]
    pub api_version: String,
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: PodGroupSpec,
    /// The status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodGroupStatus>,
}

/// Spec of a Workload API `PodGroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupSpec {
    /// `basic` (pod by pod) or `gang` (all of `minCount` or none).
    #[serde(default)]
    pub scheduling_policy: SchedulingPolicy,
    /// Topology the whole group must share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_constraints: Option<SchedulingConstraints>,
    /// Claims shared by every pod of the group (KEP-5729).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_claims: Vec<PodGroupResourceClaim>,
    /// The CompositePodGroup this group belongs to (v1beta1 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_composite_pod_group_name: Option<String>,
    /// The Workload and template this group was made from (v1beta1 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<WorkloadReference>,
    /// The same, as v1alpha2 names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_group_template_ref: Option<serde_json::Value>,
    /// Priority of the group, resolved from `priorityClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// PriorityClass of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// `basic` or `gang`; exactly one is set in a valid object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingPolicy {
    /// Pod-by-pod scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<serde_json::Value>,
    /// All-or-nothing scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangPolicy>,
}

/// The gang policy of a PodGroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GangPolicy {
    /// Pods that must be placed together.
    #[serde(default)]
    pub min_count: i32,
}

/// The gang policy of a CompositePodGroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeGangPolicy {
    /// Child groups that must be placed together.
    #[serde(default)]
    pub min_group_count: i32,
}

/// `basic` or `gang` for a CompositePodGroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositeSchedulingPolicy {
    /// Each child group on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<serde_json::Value>,
    /// `minGroupCount` child groups together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<CompositeGangPolicy>,
}

/// Topology constraints of a group: upstream allows one required key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingConstraints {
    /// Node-label keys every member must share a value of.
    #[serde(default)]
    pub topology: Vec<TopologyConstraint>,
}

/// One topology constraint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyConstraint {
    /// A node-label key, e.g. `topology.kubernetes.io/zone`.
    pub key: String,
}

/// A claim of a PodGroup, shared by the pods that name it the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupResourceClaim {
    /// Name of the claim inside the group (and inside each pod that uses it).
    pub name: String,
    /// An existing ResourceClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_claim_name: Option<String>,
    /// A template the resourceclaim controller makes one claim from for the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_claim_template_name: Option<String>,
}

/// Which Workload template a PodGroup was made from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReference {
    /// The Workload.
    #[serde(default)]
    pub workload_name: String,
    /// Its template.
    #[serde(default)]
    pub template_name: String,
}

/// Status of a PodGroup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupStatus {
    /// Conditions, e.g. [`CONDITION_INITIALLY_SCHEDULED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The claims generated for the group's templates, by claim name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_claim_statuses: Vec<PodGroupResourceClaimStatus>,
}

/// Where a group claim's ResourceClaim is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupResourceClaimStatus {
    /// The group claim's name.
    pub name: String,
    /// The generated ResourceClaim, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_claim_name: Option<String>,
}

/// A Workload API `CompositePodGroup` (1.37 alpha): a group of PodGroups or of other
/// CompositePodGroups, with a policy over its children.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositePodGroup {
    /// `scheduling.k8s.io/<version>` it was read in.
    #[serde(default)]
    pub api_version: String,
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: CompositePodGroupSpec,
}

/// Spec of a `CompositePodGroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompositePodGroupSpec {
    /// The CompositePodGroup above this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_composite_pod_group_name: Option<String>,
    /// How its children are scheduled.
    #[serde(default)]
    pub scheduling_policy: CompositeSchedulingPolicy,
    /// Topology all its pods must share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_constraints: Option<SchedulingConstraints>,
    /// Priority, resolved from `priorityClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

impl WorkloadPodGroup {
    /// The first required topology key, if any.
    pub fn topology_key(&self) -> Option<&str> {
        topology_key(self.spec.scheduling_constraints.as_ref())
    }
}

impl CompositePodGroup {
    /// The first required topology key, if any.
    pub fn topology_key(&self) -> Option<&str> {
        topology_key(self.spec.scheduling_constraints.as_ref())
    }
}

fn topology_key(c: Option<&SchedulingConstraints>) -> Option<&str> {
    c?.topology.first().map(|t| t.key.as_str()).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1alpha2_and_v1beta1_alike() {
        let alpha2 = serde_json::json!({
            "apiVersion": "scheduling.k8s.io/v1alpha2", "kind": "PodGroup",
            "metadata": {"name": "g", "namespace": "ns"},
            "spec": {"podGroupTemplateRef": {"workload": {"workloadName": "w", "podGroupTemplateName": "t"}},
                     "schedulingPolicy": {"gang": {"minCount": 4}},
                     "schedulingConstraints": {"topology": [{"key": "phalanx.dev/rack"}]}}
        });
        let beta1 = serde_json::json!({
            "apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup",
            "metadata": {"name": "g", "namespace": "ns"},
            "spec": {"workloadRef": {"workloadName": "w", "templateName": "t"},
                     "parentCompositePodGroupName": "parent",
                     "schedulingPolicy": {"gang": {"minCount": 4}},
                     "schedulingConstraints": {"topology": [{"key": "phalanx.dev/rack"}]},
                     "resourceClaims": [{"name": "shared", "resourceClaimTemplateName": "gpus"}],
                     "disruptionMode": {"all": {}}},
            "status": {"resourceClaimStatuses": [{"name": "shared", "resourceClaimName": "g-shared-x"}]}
        });
        let a: WorkloadPodGroup = serde_json::from_value(alpha2).unwrap();
        let b: WorkloadPodGroup = serde_json::from_value(beta1).unwrap();
        for g in [&a, &b] {
            assert_eq!(g.spec.scheduling_policy.gang.as_ref().map(|p| p.min_count), Some(4));
            assert_eq!(g.topology_key(), Some("phalanx.dev/rack"));
        }
        assert!(a.spec.pod_group_template_ref.is_some() && a.spec.workload_ref.is_none());
        assert_eq!(b.spec.parent_composite_pod_group_name.as_deref(), Some("parent"));
        assert_eq!(b.spec.resource_claims[0].resource_claim_template_name.as_deref(), Some("gpus"));
        let st = b.status.unwrap().resource_claim_statuses;
        assert_eq!(st[0].resource_claim_name.as_deref(), Some("g-shared-x"));
    }
}
