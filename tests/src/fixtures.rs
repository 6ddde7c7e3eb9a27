//! Objects many tests create: a DeviceClass, a kwok Node with one ResourceSlice of GPUs.
//! Shapes are the API's; values are the tests' to choose.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceSlice};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("fixture matches the API type")
}

/// Creates DeviceClass `name` with one CEL selector.
pub async fn device_class(client: &kube::Client, name: &str, expression: &str) {
    let class: DeviceClass = from_json(
        json!({ "metadata": { "name": name }, "spec": { "selectors": [{ "cel": { "expression": expression } }] } }),
    );
    Api::<DeviceClass>::all(client.clone()).create(&PostParams::default(), &class).await.expect("DeviceClass created");
}

/// Creates a kwok-managed Node `name` with `labels` (plus `kubernetes.io/hostname`) and
/// `allocatable` as its allocatable and capacity, and one ResourceSlice of `devices` for
/// driver `gpu.phalanx.dev` in pool `name`.
pub async fn gpu_node(client: &kube::Client, name: &str, labels: Value, allocatable: Value, devices: Vec<Value>) {
    let mut labels = labels;
    labels["kubernetes.io/hostname"] = json!(name);
    let node: Node = from_json(json!({
        "metadata": { "name": name, "annotations": { "kwok.x-k8s.io/node": "fake" }, "labels": labels },
        "status": { "allocatable": allocatable, "capacity": allocatable }
    }));
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.expect("Node created");
    let slice: ResourceSlice = from_json(json!({
        "metadata": { "name": format!("{name}-gpu") },
        "spec": { "driver": "gpu.phalanx.dev", "nodeName": name,
                  "pool": { "name": name, "generation": 1, "resourceSliceCount": 1 }, "devices": devices }
    }));
    Api::<ResourceSlice>::all(client.clone())
        .create(&PostParams::default(), &slice)
        .await
        .expect("ResourceSlice created");
}
