//! Status of scheduler-plugins `PodGroup`s, kept the way coscheduling keeps it, so tools
//! and users that read `status.phase` / `status.scheduled` see the same thing whichever
//! scheduler placed the group.
//!
//! Phases move Pending → PreScheduling (enough members exist) → Scheduling (some bound)
//! → Scheduled (`minMember` bound) → Running (`minMember` running or done) and end in
//! Finished or Failed, which are never left (as upstream's controller does).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use phalanx_gang::crd::{CoschedulingPodGroup, CoschedulingPodGroupStatus};
use phalanx_gang::keys::COSCHEDULING_POD_GROUP;
use serde_json::json;
use tracing::warn;

/// The status a group should show, given its pods; `None` when it must not change (a
/// finished or failed group). `now` (RFC 3339) becomes `scheduleStartTime` the first time
/// the group has enough members.
pub fn desired_status(group: &CoschedulingPodGroup, pods: &[&Pod], now: &str) -> Option<CoschedulingPodGroupStatus> {
    let current = group.status.clone().unwrap_or_default();
    if matches!(current.phase.as_deref(), Some("Finished" | "Failed")) {
        return None;
    }
    let min = group.spec.min_member.max(0);
    let mut next = CoschedulingPodGroupStatus { occupied_by: current.occupied_by.clone(), ..Default::default() };
    for pod in pods {
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Running") => next.running += 1,
            Some("Succeeded") => next.succeeded += 1,
            Some("Failed") => next.failed += 1,
            _ => {}
        }
        if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
            next.scheduled += 1;
        }
    }
    let members = pods.len() as i32;
    let phase = if members == 0 {
        "Pending"
    } else if next.succeeded >= min {
        "Finished"
    } else if next.failed > 0 && next.failed + next.running + next.succeeded >= min {
        "Failed"
    } else if next.running + next.succeeded >= min {
        "Running"
    } else if next.scheduled >= min {
        "Scheduled"
    } else if next.scheduled > 0 {
        "Scheduling"
    } else if members >= min {
        "PreScheduling"
    } else {
        "Pending"
    };
    next.phase = Some(phase.to_owned());
    if phase != "Pending" {
        next.schedule_start_time = current.schedule_start_time.clone().or_else(|| Some(now.to_owned()));
        if next.occupied_by.is_none() {
            next.occupied_by = occupied_by(pods);
        }
    } else {
        next.schedule_start_time = current.schedule_start_time.clone();
    }
    (next != current).then_some(next)
}

/// `namespace/owner` of the first member's owners, sorted and comma-joined.
fn occupied_by(pods: &[&Pod]) -> Option<String> {
    let pod = pods.iter().min_by_key(|p| p.name_any())?;
    let namespace = pod.namespace().unwrap_or_default();
    let mut refs: Vec<String> = pod.owner_references().iter().map(|o| format!("{namespace}/{}", o.name)).collect();
    if refs.is_empty() {
        return None;
    }
    refs.sort();
    Some(refs.join(","))
}

/// Writes `PodGroup` status through the status subresource, only when it changes.
pub struct PodGroupStatusWriter {
    client: Client,
    resource: ApiResource,
}

impl PodGroupStatusWriter {
    /// Writes groups of `resource` (the served `scheduling.x-k8s.io` PodGroup).
    pub fn new(client: Client, resource: ApiResource) -> Self {
        PodGroupStatusWriter { client, resource }
    }

    /// Brings every group's status up to date with its pods.
    pub async fn sync(&self, groups: &[CoschedulingPodGroup], pods: &[Pod]) {
        let mut members: HashMap<(String, &str), Vec<&Pod>> = HashMap::new();
        for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            if let Some(group) = pod.labels().get(COSCHEDULING_POD_GROUP) {
                members.entry((pod.namespace().unwrap_or_default(), group.as_str())).or_default().push(pod);
            }
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        for group in groups {
            let namespace = group.metadata.namespace.clone().unwrap_or_default();
            let name = group.metadata.name.clone().unwrap_or_default();
            let pods = members.get(&(namespace.clone(), name.as_str())).map(Vec::as_slice).unwrap_or_default();
            let Some(status) = desired_status(group, pods, &now) else { continue };
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &namespace, &self.resource);
            let patch = json!({ "status": status });
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                warn!(podgroup = %format!("{namespace}/{name}"), error = %e, "updating PodGroup status failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn group(min: i32, phase: Option<&str>) -> CoschedulingPodGroup {
        serde_json::from_value(json!({
            "metadata": { "name": "g", "namespace": "ns" },
            "spec": { "minMember": min },
            "status": phase.map(|p| json!({ "phase": p, "scheduleStartTime": "2026-01-01T00:00:00Z" })),
        }))
        .unwrap()
    }

    fn pod(name: &str, node: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns",
                          "ownerReferences": [{ "apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "u" }] },
            "spec": { "nodeName": node, "containers": [] },
            "status": { "phase": phase },
        }))
        .unwrap()
    }

    fn phase_of(min: i32, pods: &[Pod]) -> String {
        let refs: Vec<&Pod> = pods.iter().collect();
        desired_status(&group(min, None), &refs, "now").unwrap().phase.unwrap()
    }

    #[test]
    fn phases_follow_the_members() {
        let pending = |n: &str| pod(n, None, "Pending");
        let bound = |n: &str| pod(n, Some("node"), "Pending");
        let running = |n: &str| pod(n, Some("node"), "Running");
        let rows: Vec<(&str, Vec<Pod>, &str)> = vec![
            ("no pods", vec![], "Pending"),
            ("too few", vec![pending("a")], "Pending"),
            ("enough, none bound", vec![pending("a"), pending("b")], "PreScheduling"),
            ("one bound", vec![bound("a"), pending("b")], "Scheduling"),
            ("all bound", vec![bound("a"), bound("b")], "Scheduled"),
            ("all running", vec![running("a"), running("b")], "Running"),
            ("one failed", vec![running("a"), pod("b", Some("node"), "Failed")], "Failed"),
            ("all done", vec![pod("a", Some("node"), "Succeeded"), pod("b", Some("node"), "Succeeded")], "Finished"),
        ];
        for (what, pods, want) in rows {
            assert_eq!(phase_of(2, &pods), want, "{what}");
        }
    }

    #[test]
    fn counts_owner_and_start_time() {
        let pods = [pod("a", Some("n1"), "Running"), pod("b", Some("n2"), "Pending"), pod("c", None, "Pending")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let s = desired_status(&group(2, None), &refs, "2026-12-01T00:00:00Z").unwrap();
        assert_eq!((s.scheduled, s.running, s.succeeded, s.failed), (2, 1, 0, 0));
        assert_eq!(s.occupied_by.as_deref(), Some("ns/train"));
        assert_eq!(s.schedule_start_time.as_deref(), Some("2026-12-01T00:00:00Z"));
        // An existing start time is kept.
        let s = desired_status(&group(2, Some("PreScheduling")), &refs, "later").unwrap();
        assert_eq!(s.schedule_start_time.as_deref(), Some("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn terminal_phases_and_unchanged_status_write_nothing() {
        let pods = [pod("a", None, "Pending")];
        let refs: Vec<&Pod> = pods.iter().collect();
        assert!(desired_status(&group(1, Some("Finished")), &refs, "now").is_none());
        assert!(desired_status(&group(1, Some("Failed")), &refs, "now").is_none());
        let first = desired_status(&group(1, None), &refs, "now").unwrap();
        let mut settled = group(1, None);
        settled.status = Some(first);
        assert!(desired_status(&settled, &refs, "later").is_none(), "no write when nothing changed");
    }
}
