//! Helpers shared by the driver's integration tests.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceSlice};
use kube::api::{Api, ListParams, PostParams};
use phalanx_dra_driver::attributes::{self, GPU_DRIVER, NIC_DRIVER};
use phalanx_dra_driver::discovery::profile::{Profile, ProfileDiscovery};
use phalanx_dra_driver::discovery::{Discovery, NodeContext, NodeInventory};
use phalanx_dra_driver::publisher::{NodeRef, Publisher};
use serde_json::json;

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object matches the API type")
}

/// Creates a kwok-managed Node (the apiserver adds a not-ready taint that no node
/// lifecycle controller removes here: pods tolerate everything) with `labels` and returns its reference.
pub async fn create_node(client: &kube::Client, name: &str, labels: serde_json::Value) -> NodeRef {
    let mut all_labels = json!({ "kubernetes.io/hostname": name, "type": "kwok" });
    all_labels.as_object_mut().unwrap().extend(labels.as_object().cloned().unwrap_or_default());
    let node: Node = from_json(json!({
        "metadata": { "name": name, "annotations": { "kwok.x-k8s.io/node": "fake" }, "labels": all_labels },
        "status": {
            "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "110" },
            "capacity": { "cpu": "32", "memory": "256Gi", "pods": "110" }
        }
    }));
    let created = Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.expect("node created");
    NodeRef { name: name.into(), uid: created.metadata.uid.expect("uid") }
}

/// Applies every document of `deploy/<file>` with the admin client (create only).
pub async fn apply_deploy_file(client: &kube::Client, file: &str) {
    let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("deploy file readable");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).expect("yaml")).expect("json");
        if value.is_null() {
            continue;
        }
        let obj: kube::api::DynamicObject = serde_json::from_value(value.clone()).expect("object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let (group, version) = types.api_version.rsplit_once('/').unwrap_or(("", &types.api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await.expect("kind served");
        let api: Api<kube::api::DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (kube::discovery::Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("applying {} {:?} from {path}: {e}", types.kind, obj.metadata.name),
        }
    }
}

use serde::Deserialize;

pub async fn device_classes(client: &kube::Client) {
    apply_deploy_file(client, "dra-driver/deviceclasses.yaml").await;
    let classes: Api<DeviceClass> = Api::all(client.clone());
    assert!(classes.get_opt("gpu.phalanx.dev").await.unwrap().is_some());
}

pub fn inventory(profile: &str, node: &NodeContext) -> NodeInventory {
    ProfileDiscovery::new(Profile::load(profile).expect("profile")).discover(node).expect("discover")
}

/// Sets the GPU and NIC pools of `node` from `profile` on `publisher`.
pub fn set_profile_pools(publisher: &Publisher, profile: &str, node: &NodeRef, ctx: &NodeContext) -> NodeInventory {
    let inv = inventory(profile, ctx);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    publisher.set_pool(GPU_DRIVER, node.clone(), attributes::gpu_devices(&inv, &Default::default(), &now));
    publisher.set_pool(NIC_DRIVER, node.clone(), attributes::nic_devices(&inv));
    inv
}

pub async fn slices_of(client: &kube::Client, driver: &str, node: &str) -> Vec<ResourceSlice> {
    let params = ListParams::default().fields(&format!("spec.driver={driver},spec.nodeName={node}"));
    Api::<ResourceSlice>::all(client.clone()).list(&params).await.expect("list slices").items
}

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Patch, PatchParams};

/// Creates claim `name` asking for `devices.len()` GPUs and writes its allocation (as
/// a scheduler would) to those devices of pool `node`. Returns the claim's UID.
pub async fn allocated_claim(client: &kube::Client, ns: &str, name: &str, node: &str, devices: &[&str]) -> String {
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), ns);
    let claim: ResourceClaim = from_json(json!({
        "metadata": { "name": name },
        "spec": { "devices": { "requests": [
            { "name": "gpu", "exactly": { "deviceClassName": "gpu.phalanx.dev", "count": devices.len().max(1) } }
        ] } }
    }));
    let created = claims.create(&PostParams::default(), &claim).await.expect("claim created");
    if !devices.is_empty() {
        let results: Vec<_> = devices
            .iter()
            .map(|d| json!({ "request": "gpu", "driver": "gpu.phalanx.dev", "pool": node, "device": d }))
            .collect();
        let status = json!({ "status": { "allocation": {
            "devices": { "results": results },
            "nodeSelector": { "nodeSelectorTerms": [{ "matchFields": [
                { "key": "metadata.name", "operator": "In", "values": [node] }
            ] }] }
        } } });
        claims.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("allocation written");
    }
    created.metadata.uid.expect("uid")
}

/// The project's fake `libnvidia-ml.so` (`dra-driver/fake-nvml`), built if needed: the
/// driver's NVML backend loads it through `--nvml-library`.
pub fn fake_nvml_library() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin = std::path::Path::new(env!("CARGO_BIN_EXE_phalanx-dra-driver"));
            let dir = bin.parent().expect("target dir");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // A no-op when `make test` built the workspace; builds it for a narrower run.
            let status = std::process::Command::new(&cargo)
                .args(["build", "--quiet", "-p", "phalanx-fake-nvml"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the fake NVML library failed");
            let lib = dir.join("libphalanx_fake_nvml.so");
            assert!(lib.exists(), "{} missing after the build", lib.display());
            lib
        })
        .clone()
}
