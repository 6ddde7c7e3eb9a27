//! `DRAPlugin` v1 and v1beta1: NodePrepareResources / NodeUnprepareResources.
//!
//! One response per requested claim, keyed by UID; per-claim failures go in `error`,
//! never as a gRPC error. Each claim is fetched from the apiserver and checked by
//! [`crate::prepare::NodeState`].

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::Api;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::checkpoint::PreparedDevice;
use crate::prepare::{ClaimRef, Error, NodeState};
use crate::proto::{dra_v1 as v1, dra_v1beta1 as v1beta1};

/// Serves both versions of the DRA plugin service.
#[derive(Clone)]
pub struct DraService {
    state: Arc<Mutex<NodeState>>,
    client: kube::Client,
    status: tokio::sync::mpsc::UnboundedSender<StatusWrite>,
}

/// One `status.devices` write: a claim's entries of one driver (empty: remove ours).
#[derive(Debug)]
struct StatusWrite {
    claim: ClaimRef,
    driver: String,
    entries: Vec<serde_json::Value>,
}

impl std::fmt::Debug for DraService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraService").finish_non_exhaustive()
    }
}

impl DraService {
    /// A service over `state`, fetching claims through `client`.
    ///
    /// `status.devices` is written off the prepare path by one task, in the order the
    /// claims were prepared and unprepared (so a removal never overtakes its write): the
    /// container does not need it, and the kubelet should not wait for an apiserver
    /// write it does not use.
    pub fn new(state: Arc<Mutex<NodeState>>, client: kube::Client) -> Self {
        let (status, mut writes) = tokio::sync::mpsc::unbounded_channel::<StatusWrite>();
        let writer = client.clone();
        tokio::spawn(async move {
            while let Some(w) = writes.recv().await {
                write_status(&writer, w).await;
            }
        });
        DraService { state, client, status }
    }

    /// Prepares each claim; the result per UID.
    pub async fn prepare_claims(&self, claims: Vec<ClaimRef>) -> Vec<(String, Result<Vec<PreparedDevice>, String>)> {
        let mut out = Vec::with_capacity(claims.len());
        let metrics = crate::metrics::get();
        for claim in claims {
            let started = std::time::Instant::now();
            let result = self.prepare_one(&claim).await.map_err(|e| e.to_string());
            let state = self.state.lock().await;
            metrics.prepared(state.driver(), result.is_ok(), started.elapsed());
            metrics.set_prepared_claims(state.driver(), state.prepared().len());
            drop(state);
            if let Err(e) = &result {
                tracing::warn!(
                    claim = format!("{}/{}", claim.namespace, claim.name),
                    uid = claim.uid,
                    error = e,
                    "prepare failed"
                );
            }
            out.push((claim.uid, result));
        }
        out
    }

    async fn prepare_one(&self, claim: &ClaimRef) -> Result<Vec<PreparedDevice>, Error> {
        if let Some(devices) = self.state.lock().await.already_prepared(&claim.uid) {
            return Ok(devices);
        }
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &claim.namespace);
        let fetched = api
            .get(&claim.name)
            .await
            .map_err(|source| Error::Fetch { claim: format!("{}/{}", claim.namespace, claim.name), source })?;
        let mut state = self.state.lock().await;
        let devices = state.prepare(claim, &fetched)?;
        let entries = status_entries(&state, &devices);
        self.report_status(claim, state.driver(), entries);
        Ok(devices)
    }

    /// Queues our entries of the claim's `status.devices` for the status writer.
    fn report_status(&self, claim: &ClaimRef, driver: &str, entries: Vec<serde_json::Value>) {
        let _ = self.status.send(StatusWrite { claim: claim.clone(), driver: driver.to_owned(), entries });
    }

    /// Unprepares each claim; the error per UID, if any. Our `status.devices` entries of
    /// a claim that still exists are removed.
    pub async fn unprepare_claims(&self, claims: Vec<ClaimRef>) -> Vec<(String, Option<String>)> {
        let out = self.unprepare_locked(&claims).await;
        let driver = self.state.lock().await.driver().to_owned();
        for (claim, (_, error)) in claims.iter().zip(&out) {
            if error.is_none() {
                self.report_status(claim, &driver, Vec::new());
            }
        }
        out
    }

    async fn unprepare_locked(&self, claims: &[ClaimRef]) -> Vec<(String, Option<String>)> {
        let mut state = self.state.lock().await;
        let metrics = crate::metrics::get();
        let out = claims
            .iter()
            .map(|c| {
                let error = state.unprepare(&c.uid).err().map(|e| e.to_string());
                metrics.unprepared(state.driver(), error.is_none());
                (c.uid.clone(), error)
            })
            .collect();
        metrics.set_prepared_claims(state.driver(), state.prepared().len());
        out
    }
}

/// Writes a claim's entries of one driver in `status.devices` by server-side apply with
/// the driver as field manager (each driver owns its own entries; an empty list removes
/// ours). Best effort: a failure is logged, and a claim gone or replaced (404, or 409 on
/// the UID precondition) is nothing to report.
async fn write_status(client: &kube::Client, w: StatusWrite) {
    let api: Api<ResourceClaim> = Api::namespaced(client.clone(), &w.claim.namespace);
    let patch = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": { "name": w.claim.name, "uid": w.claim.uid },
        "status": { "devices": w.entries },
    });
    let params = kube::api::PatchParams::apply(&w.driver).force();
    if let Err(e) = api.patch_status(&w.claim.name, &params, &kube::api::Patch::Apply(&patch)).await {
        let gone = matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409);
        if !gone {
            let claim = format!("{}/{}", w.claim.namespace, w.claim.name);
            tracing::warn!(claim, error = %e, "writing status.devices");
        }
    }
}

/// `status.devices` entries of prepared `devices`: Ready, with the device's identity.
fn status_entries(state: &NodeState, devices: &[PreparedDevice]) -> Vec<serde_json::Value> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    devices
        .iter()
        .map(|d| {
            let mut entry = serde_json::json!({
                "driver": state.driver(), "pool": d.pool_name, "device": d.device_name,
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "Prepared", "lastTransitionTime": now,
                    "message": format!("prepared by {} on this node", state.driver()),
                }],
            });
            if let Some(data) = state.device_data(&d.device_name) {
                entry["data"] = data;
            }
            entry
        })
        .collect()
}

macro_rules! claim_refs {
    ($claims:expr) => {
        $claims.into_iter().map(|c| ClaimRef { namespace: c.namespace, uid: c.uid, name: c.name }).collect()
    };
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        request: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        let results = self.prepare_claims(claim_refs!(request.into_inner().claims)).await;
        let claims: HashMap<String, v1::NodePrepareResourceResponse> = results
            .into_iter()
            .map(|(uid, r)| {
                let response = match r {
                    Ok(devices) => v1::NodePrepareResourceResponse {
                        devices: devices
                            .into_iter()
                            .map(|d| v1::Device {
                                request_names: d.request_names,
                                pool_name: d.pool_name,
                                device_name: d.device_name,
                                cdi_device_ids: d.cdi_device_ids,
                                share_id: None,
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => v1::NodePrepareResourceResponse { devices: vec![], error },
                };
                (uid, response)
            })
            .collect();
        Ok(Response::new(v1::NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let results = self.unprepare_claims(claim_refs!(request.into_inner().claims)).await;
        let claims = results
            .into_iter()
            .map(|(uid, e)| (uid, v1::NodeUnprepareResourceResponse { error: e.unwrap_or_default() }))
            .collect();
        Ok(Response::new(v1::NodeUnprepareResourcesResponse { claims }))
    }
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        request: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let results = self.prepare_claims(claim_refs!(request.into_inner().claims)).await;
        let claims = results
            .into_iter()
            .map(|(uid, r)| {
                let response = match r {
                    Ok(devices) => v1beta1::NodePrepareResourceResponse {
                        devices: devices
                            .into_iter()
                            .map(|d| v1beta1::Device {
                                request_names: d.request_names,
                                pool_name: d.pool_name,
                                device_name: d.device_name,
                                cdi_device_ids: d.cdi_device_ids,
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => v1beta1::NodePrepareResourceResponse { devices: vec![], error },
                };
                (uid, response)
            })
            .collect();
        Ok(Response::new(v1beta1::NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let results = self.unprepare_claims(claim_refs!(request.into_inner().claims)).await;
        let claims = results
            .into_iter()
            .map(|(uid, e)| (uid, v1beta1::NodeUnprepareResourceResponse { error: e.unwrap_or_default() }))
            .collect();
        Ok(Response::new(v1beta1::NodeUnprepareResourcesResponse { claims }))
    }
}
