//! The input of a placement: a point-in-time copy of the objects the scheduler watches.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice};
use phalanx_gang::crd::{CoschedulingPodGroup, PodGang};
use phalanx_gang::workload::{CompositePodGroup, WorkloadPodGroup};

/// Everything placement reads, as plain data.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// ResourceSlices (all generations; the newest per pool is used).
    pub resource_slices: Vec<ResourceSlice>,
    /// DeviceClasses.
    pub device_classes: Vec<DeviceClass>,
    /// ResourceClaims, allocated or not.
    pub resource_claims: Vec<ResourceClaim>,
    /// ResourceClaimTemplates.
    pub resource_claim_templates: Vec<ResourceClaimTemplate>,
    /// Pods: pending ones to place, bound ones that use node capacity.
    pub pods: Vec<Pod>,
    /// scheduler-plugins PodGroups.
    pub coscheduling_pod_groups: Vec<CoschedulingPodGroup>,
    /// Workload API PodGroups.
    pub workload_pod_groups: Vec<WorkloadPodGroup>,
    /// Workload API CompositePodGroups.
    pub composite_pod_groups: Vec<CompositePodGroup>,
    /// Grove PodGangs.
    pub pod_gangs: Vec<PodGang>,
}
