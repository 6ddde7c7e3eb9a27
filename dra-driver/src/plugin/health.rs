//! `v1alpha1.DRAResourceHealth`: streams the health of every GPU of the node; each
//! message is the complete list, sent at once, again on every change, and again every
//! [`RESEND`] in any case: the kubelet turns a device's health to Unknown once
//! [`TIMEOUT_SECONDS`] pass after the `last_updated_time` it last heard.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{Mutex, watch};
use tonic::{Request, Response, Status};

use crate::health::Faults;
use crate::prepare::NodeState;
use crate::proto::health_v1alpha1::{
    DeviceHealth, DeviceIdentifier, HealthStatus, NodeWatchResourcesRequest, NodeWatchResourcesResponse,
    dra_resource_health_server::DraResourceHealth,
};

/// How long the kubelet may trust a report (`health_check_timeout_seconds`).
pub const TIMEOUT_SECONDS: i64 = 30;
/// How often the full report is sent again when nothing changed: well inside the timeout.
pub const RESEND: std::time::Duration = std::time::Duration::from_secs(10);

/// The health service.
#[derive(Clone)]
pub struct HealthService {
    node: String,
    state: Arc<Mutex<NodeState>>,
    faults: watch::Receiver<Faults>,
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for HealthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthService").field("node", &self.node).finish_non_exhaustive()
    }
}

impl HealthService {
    /// Reports the GPUs of `state` (pool `node`) as `faults` says; streams end when
    /// `stop` turns true (so a graceful shutdown does not wait on them forever).
    pub fn new(
        node: String,
        state: Arc<Mutex<NodeState>>,
        faults: watch::Receiver<Faults>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        HealthService { node, state, faults, stop }
    }

    async fn snapshot(&self, faults: &Faults) -> NodeWatchResourcesResponse {
        let unhealthy = faults.for_node(&self.node);
        let names = self.state.lock().await.device_names();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let devices = names
            .into_iter()
            .map(|(name, gpu)| {
                // A MIG device is as healthy as the GPU it is cut from.
                let reason = unhealthy.get(&name).or_else(|| unhealthy.get(&gpu));
                DeviceHealth {
                    device: Some(DeviceIdentifier { pool_name: self.node.clone(), device_name: name.clone() }),
                    health: if reason.is_some() { HealthStatus::Unhealthy } else { HealthStatus::Healthy } as i32,
                    last_updated_time: now,
                    health_check_timeout_seconds: TIMEOUT_SECONDS,
                    message: reason.cloned().unwrap_or_default(),
                }
            })
            .collect();
        NodeWatchResourcesResponse { devices }
    }
}

type HealthStream = Pin<Box<dyn Stream<Item = Result<NodeWatchResourcesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = HealthStream;

    async fn node_watch_resources(
        &self,
        _: Request<NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        let mut rx = self.faults.clone();
        rx.mark_changed();
        let service = self.clone();
        let mut resend = tokio::time::interval(RESEND);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resend.reset();
        let stream = futures::stream::unfold((rx, service, resend), |(mut rx, service, mut resend)| async move {
            let mut stop = service.stop.clone();
            tokio::select! {
                changed = rx.changed() => changed.ok()?,
                _ = resend.tick() => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
            resend.reset();
            let faults = rx.borrow_and_update().clone();
            let message = service.snapshot(&faults).await;
            Some((Ok(message), (rx, service, resend)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
