//! Status of Workload API `PodGroup`s (`scheduling.k8s.io`), written the way
//! kube-scheduler 1.37 writes it: one `PodGroupInitiallyScheduled` condition, `False`
//! with reason `Unschedulable` (does not fit) or `SchedulerError` (a definition that
//! cannot be used) while the group waits, and `True` with reason `Scheduled` once its
//! `minCount` pods are bound; after that it never changes (upstream's terminal state).
//! Other conditions (e.g. `DisruptionTarget`) are kept as they are.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use phalanx_gang::workload::{
    CONDITION_INITIALLY_SCHEDULED, REASON_SCHEDULER_ERROR, REASON_UNSCHEDULABLE, WorkloadPodGroup,
};
use serde_json::json;
use tracing::warn;

/// Why a group's pods wait, as the pass found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// No placement fits.
    Unschedulable(String),
    /// The gang's definition cannot be used.
    Invalid(String),
}

/// `(namespace, PodGroup name)`.
pub type GroupKey = (String, String);

/// The Workload PodGroup a pod joins through `spec.schedulingGroup`.
pub fn group_of(pod: &Pod) -> Option<GroupKey> {
    let name = pod.spec.as_ref()?.scheduling_group.as_ref()?.pod_group_name.clone()?;
    Some((pod.namespace().unwrap_or_default(), name))
}

/// The condition `group` should show, or `None` when it must not change: it is already
/// `True` (terminal), it has no pods of ours, or it already says this. `bound` counts
/// its pods bound to a node; `waiting` is why its pods wait, if they do.
pub fn desired_condition(
    group: &WorkloadPodGroup,
    bound: u32,
    waiting: Option<&Waiting>,
    now: &Time,
) -> Option<Condition> {
    let current =
        group.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_INITIALLY_SCHEDULED));
    if current.is_some_and(|c| c.status == "True") {
        return None;
    }
    let min = group.spec.scheduling_policy.gang.as_ref().map_or(1, |g| g.min_count.max(1) as u32);
    let (status, reason, message) = if bound >= min {
        ("True", "Scheduled", format!("{bound} pod(s) bound, minCount {min}"))
    } else {
        match waiting? {
            Waiting::Unschedulable(m) => ("False", REASON_UNSCHEDULABLE, m.clone()),
            Waiting::Invalid(m) => ("False", REASON_SCHEDULER_ERROR, m.clone()),
        }
    };
    if current.is_some_and(|c| c.status == status && c.reason == reason && c.message == message) {
        return None;
    }
    let changed_status = current.is_none_or(|c| c.status != status);
    Some(Condition {
        type_: CONDITION_INITIALLY_SCHEDULED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: group.metadata.generation,
        last_transition_time: if changed_status {
            now.clone()
        } else {
            current.map(|c| c.last_transition_time.clone()).unwrap_or_else(|| now.clone())
        },
    })
}

/// Writes `PodGroupInitiallyScheduled` through the status subresource of the Workload
/// API version the scheduler watches, only when it changes.
pub struct WorkloadStatusWriter {
    client: Client,
    resource: ApiResource,
}

impl WorkloadStatusWriter {
    /// Writes groups of `resource` (the watched `scheduling.k8s.io` PodGroup version).
    pub fn new(client: Client, resource: ApiResource) -> Self {
        WorkloadStatusWriter { client, resource }
    }

    /// Brings the condition of every group that has pods of ours up to date. `ours`
    /// says whether a pod is this scheduler's; `waiting` holds why groups wait.
    pub async fn sync(
        &self,
        groups: &[WorkloadPodGroup],
        pods: &[Pod],
        ours: impl Fn(&Pod) -> bool,
        waiting: &HashMap<GroupKey, Waiting>,
    ) {
        let mut bound: HashMap<GroupKey, (u32, bool)> = HashMap::new();
        for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let Some(key) = group_of(pod) else { continue };
            let e = bound.entry(key).or_default();
            e.1 |= ours(pod);
            if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                e.0 += 1;
            }
        }
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for group in groups {
            let key =
                (group.metadata.namespace.clone().unwrap_or_default(), group.metadata.name.clone().unwrap_or_default());
            let Some(&(n, true)) = bound.get(&key) else { continue };
            let Some(condition) = desired_condition(group, n, waiting.get(&key), &now) else { continue };
            let mut conditions: Vec<Condition> = group
                .status
                .iter()
                .flat_map(|s| s.conditions.iter())
                .filter(|c| c.type_ != CONDITION_INITIALLY_SCHEDULED)
                .cloned()
                .collect();
            conditions.push(condition);
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &key.0, &self.resource);
            let patch = json!({ "status": { "conditions": conditions } });
            if let Err(e) = api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(&patch)).await {
                warn!(podgroup = %format!("{}/{}", key.0, key.1), error = %e, "updating PodGroup status failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(min: i32, condition: Option<(&str, &str, &str)>) -> WorkloadPodGroup {
        let conditions: Vec<serde_json::Value> = condition
            .map(|(s, r, m)| {
                json!({"type": CONDITION_INITIALLY_SCHEDULED, "status": s, "reason": r, "message": m,
                       "lastTransitionTime": "2026-01-01T00:00:00Z"})
            })
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "g", "namespace": "ns", "generation": 2},
            "spec": {"schedulingPolicy": {"gang": {"minCount": min}}},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn conditions_move_from_waiting_to_scheduled_and_stay() {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let full = Waiting::Unschedulable("needs 24 GPUs, 16 free".into());
        let c = desired_condition(&group(3, None), 0, Some(&full), &now).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str(), c.observed_generation), ("False", "Unschedulable", Some(2)));
        assert_eq!(desired_condition(&group(3, None), 0, None, &now), None, "nothing to say while not waiting");
        let same = group(3, Some(("False", "Unschedulable", "needs 24 GPUs, 16 free")));
        assert_eq!(desired_condition(&same, 0, Some(&full), &now), None, "no rewrite of the same condition");
        let bad = Waiting::Invalid("minCount 0".into());
        let c = desired_condition(&same, 0, Some(&bad), &now).unwrap();
        assert_eq!(c.reason, "SchedulerError");
        assert_eq!(c.last_transition_time.0.to_string(), "2026-01-01T00:00:00Z", "status unchanged: time kept");
        let c = desired_condition(&same, 3, None, &now).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Scheduled"));
        assert_eq!(c.last_transition_time, now);
        let done = group(3, Some(("True", "Scheduled", "3 pod(s) bound, minCount 3")));
        assert_eq!(desired_condition(&done, 1, Some(&full), &now), None, "True is terminal");
    }
}
