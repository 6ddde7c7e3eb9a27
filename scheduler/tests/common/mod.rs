//! Helpers the scheduler's end-to-end tests share: a kwok GPU cluster, claim templates,
//! the scheduler under test, and waits on what the scheduler writes.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceClaimTemplate};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use phalanx_scheduler::service::{self, config::SchedulerConfig};
use phalanx_testenv::{TestEnv, wait};
use serde_json::json;

pub const NS: &str = "default";
pub const TIMEOUT: Duration = Duration::from_secs(90);

pub fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object matches the API type")
}

/// `nodes` kwok nodes with 8 GPUs each; every `per_domain` consecutive nodes share an
/// NVLink domain (like trays of an NVL72 rack).
pub async fn gpu_cluster(client: &Client, nodes: usize, per_domain: usize) {
    phalanx_testenv::fixtures::device_class(client, "gpu.phalanx.dev", "device.driver == 'gpu.phalanx.dev'").await;
    gpu_nodes(client, 0..nodes, per_domain).await;
    claim_template(client, "eight-gpus", "gpu.phalanx.dev", 8).await;
    claim_template(client, "one-gpu", "gpu.phalanx.dev", 1).await;
}

/// A template of one request `gpu` for `count` devices of `class`.
pub async fn claim_template(client: &Client, name: &str, class: &str, count: u32) {
    let template: ResourceClaimTemplate = from_json(json!({
        "metadata": { "name": name },
        "spec": { "spec": { "devices": { "requests": [
            { "name": "gpu", "exactly": { "deviceClassName": class, "count": count } }
        ] } } }
    }));
    Api::<ResourceClaimTemplate>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
}

/// Kwok nodes `range` with 8 GPUs each (see [`gpu_cluster`]).
pub async fn gpu_nodes(client: &Client, range: std::ops::Range<usize>, per_domain: usize) {
    for n in range {
        let name = format!("gpu-node-{n}");
        let domain = format!("domain-{}", n / per_domain);
        let devices: Vec<_> = (0..8)
            .map(|i| {
                json!({
                    "name": format!("gpu-{i}"),
                    "attributes": {
                        "gpu.phalanx.dev/type": { "string": "gpu" },
                        "gpu.phalanx.dev/productName": { "string": "NVIDIA H100 80GB HBM3" },
                        "gpu.phalanx.dev/nvlinkDomain": { "string": domain },
                        "gpu.phalanx.dev/nvlinkIsland": { "string": format!("{name}-nvswitch") },
                        "resource.kubernetes.io/numaNode": { "int": i / 4 },
                        "resource.kubernetes.io/pcieRoot": { "string": format!("pci0000:{:02x}", i) }
                    },
                    "capacity": { "memory": { "value": "80Gi" } }
                })
            })
            .collect();
        let labels = json!({ "phalanx.dev/rack": domain });
        let allocatable = json!({ "cpu": "128", "memory": "2Ti", "pods": "110" });
        phalanx_testenv::fixtures::gpu_node(client, &name, labels, allocatable, devices).await;
    }
}

pub async fn create_pod(client: &Client, name: &str, gang: Option<(&str, usize)>, template: &str) {
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    if let Some((g, min)) = gang {
        labels.insert("phalanx.dev/gang", g.to_owned());
        annotations.insert("phalanx.dev/gang-min-members", min.to_string());
    }
    create_pod_with(client, name, labels, annotations, template).await;
}

pub async fn create_pod_with(
    client: &Client,
    name: &str,
    labels: BTreeMap<&str, String>,
    annotations: BTreeMap<&str, String>,
    template: &str,
) {
    let pod: Pod = from_json(json!({
        "metadata": { "name": name, "labels": labels, "annotations": annotations },
        "spec": {
            "schedulerName": "phalanx-scheduler",
            "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
            "resourceClaims": [{ "name": "gpu", "resourceClaimTemplateName": template }],
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                             "resources": { "requests": { "cpu": "1" }, "claims": [{ "name": "gpu" }] } }]
        }
    }));
    Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &pod).await.unwrap();
}

pub async fn start_scheduler(env: &TestEnv) -> service::Running {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info,phalanx_scheduler=debug").try_init();
    let mut config = SchedulerConfig { bind_address: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    config.leader_election.enabled = false;
    service::start(env.client(), config, "test".into()).await.expect("scheduler starts")
}

/// Installs a CRD from `tests/fixtures/` and waits until its `group`/v1alpha1 `kind` is
/// served (the scheduler discovers gang APIs when it starts).
pub async fn install_crd(client: &Client, fixture: &str, (group, kind): (&str, &str)) -> kube::api::ApiResource {
    let crd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    phalanx_testenv::apply::apply_file(client, &crd).await.unwrap();
    let gvk = kube::api::GroupVersionKind::gvk(group, "v1alpha1", kind);
    wait::poll(TIMEOUT, &format!("the {kind} CRD served"), || async {
        kube::discovery::pinned_kind(client, &gvk).await.ok().map(|(r, _)| r)
    })
    .await
}

/// The pod carries `PodScheduled=False` with reason `Unschedulable`: the scheduler told it
/// why it waits (the apiserver's own `SchedulingGated` does not count).
pub fn told_unschedulable(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref()).and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
    })
}

pub fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

pub async fn wait_bound(client: &Client, names: &[String]) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut out = Vec::new();
    for name in names {
        out.push(wait::until(&pods, name, TIMEOUT, "bound", |p: Option<&Pod>| p.and_then(node_of).is_some()).await);
    }
    out
}

/// Devices allocated to a bound pod's claims, as `pool/device`.
pub async fn devices_of(client: &Client, pod: &Pod) -> Vec<String> {
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), NS);
    let mut out = Vec::new();
    for status in pod.status.as_ref().and_then(|s| s.resource_claim_statuses.clone()).unwrap_or_default() {
        let claim = claims.get(status.resource_claim_name.as_deref().unwrap()).await.unwrap();
        let reserved = claim.status.as_ref().and_then(|s| s.reserved_for.clone()).unwrap_or_default();
        let allocated = claim.status.as_ref().is_some_and(|s| s.allocation.is_some());
        assert_eq!(
            allocated,
            reserved.iter().any(|r| Some(&r.uid) == pod.uid().as_ref()),
            "an allocated claim is reserved for its pod, an unallocated one for nobody"
        );
        for r in
            claim.status.and_then(|s| s.allocation).and_then(|a| a.devices).and_then(|d| d.results).unwrap_or_default()
        {
            out.push(format!("{}/{}", r.pool, r.device));
        }
    }
    out
}

/// The message of the pod's `PodScheduled` condition (empty when it has none).
pub fn condition_message(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

/// Applies the scheduler's RBAC from `deploy/` and returns a client of its ServiceAccount:
/// the scheduler under test then has exactly what a deployment grants it.
pub async fn as_deployed_scheduler(env: &TestEnv) -> Client {
    let admin = env.client();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    phalanx_testenv::apply::apply_file(&admin, &deploy.join("namespace.yaml")).await.unwrap();
    phalanx_testenv::apply::apply_file(&admin, &deploy.join("scheduler/rbac.yaml")).await.unwrap();
    env.service_account_client("phalanx-system", "phalanx-scheduler").await.unwrap()
}
