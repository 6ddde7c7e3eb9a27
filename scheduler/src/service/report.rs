//! What users see: Events (`Scheduled`, `FailedScheduling`) and the `PodScheduled`
//! condition, as kube-scheduler reports them.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter as EventSource};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

/// Posts events and conditions; repeats nothing a pod already shows.
pub struct Reporter {
    client: Client,
    recorder: Recorder,
    shown: Mutex<HashMap<(String, String), String>>,
}

impl Reporter {
    /// Reports as `scheduler_name`, instance `identity`.
    pub fn new(client: Client, scheduler_name: &str, identity: &str) -> Self {
        let source = EventSource { controller: scheduler_name.into(), instance: Some(identity.into()) };
        Reporter { recorder: Recorder::new(client.clone(), source), client, shown: Mutex::default() }
    }

    fn changed(&self, pod: &Pod, message: &str) -> bool {
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut shown = self.shown.lock().expect("shown lock");
        if shown.get(&key).map(String::as_str) == Some(message) {
            return false;
        }
        shown.insert(key, message.to_owned());
        true
    }

    /// Posts an event about `pod`; a failure is logged (events are best effort).
    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, action: &str, message: &str) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(message)),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pod.object_ref(&())).await {
            warn!(pod = %pod.name_any(), reason, error = %e, "posting event failed");
        }
    }

    /// A member was bound.
    pub async fn scheduled(&self, pod: &Pod, message: &str) {
        if !self.changed(pod, message) {
            return;
        }
        self.event(pod, EventType::Normal, "Scheduled", "Binding", message).await;
    }

    /// A member stays pending: `FailedScheduling` event and `PodScheduled=False` with
    /// the reason, each only when the message differs from what the pod shows.
    pub async fn unschedulable(&self, pod: &Pod, message: &str) {
        if !self.changed(pod, message) {
            return;
        }
        self.event(pod, EventType::Warning, "FailedScheduling", "Scheduling", message).await;
        let condition = json!({ "status": { "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": Timestamp::now().to_string(),
        }]}});
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        if let Err(e) = pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&condition)).await
        {
            warn!(pod = %pod.name_any(), error = %e, "setting PodScheduled=False failed");
        }
    }

    /// Forgets what was shown for pods that are no longer waiting (deleted or bound), so
    /// the memory kept is bounded by the pending pods.
    pub fn retain_waiting(&self, waiting: &std::collections::HashSet<(String, String)>) {
        self.shown.lock().expect("shown lock").retain(|key, _| waiting.contains(key));
    }
}

/// Event notes are limited to 1 KiB by the API server.
fn truncate(message: &str) -> String {
    if message.len() <= 1000 {
        return message.to_owned();
    }
    let mut end = 997;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}
