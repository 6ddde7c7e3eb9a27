//! Table tests of the DRA allocator on small, hand-written clusters.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use phalanx_scheduler_core::dra::{
    AllocateError, AllocatedState, Allocator, DraSnapshot, Features, Unsatisfied, validate,
};
use serde_json::json;

fn class(name: &str, expr: &str) -> DeviceClass {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": expr}}]}}))
        .unwrap()
}

/// An 8-GPU node: GPUs 0-3 in nvlink island a, 4-7 in island b.
fn gpu_slice(node: &str) -> ResourceSlice {
    let devices: Vec<_> = (0..8)
        .map(|i| {
            json!({"name": format!("gpu-{i}"), "attributes": {
                "type": {"string": "gpu"},
                "nvlinkDomain": {"string": if i < 4 { format!("{node}-a") } else { format!("{node}-b") }},
                "resource.kubernetes.io/pcieRoot": {"string": format!("pci{}", i / 2)}
            }, "capacity": {"memory": {"value": "80Gi"}}})
        })
        .collect();
    serde_json::from_value(json!({"metadata": {"name": format!("{node}-gpus")}, "spec": {
        "driver": "gpu.phalanx.dev", "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
        "devices": devices}}))
    .unwrap()
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn claim(name: &str, count: i64, constraints: serde_json::Value) -> ResourceClaim {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}, "spec": {"devices": {
        "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.phalanx.dev", "allocationMode": "ExactCount", "count": count}}],
        "constraints": constraints}}}))
    .unwrap()
}

fn devices(r: &k8s_openapi::api::resource::v1::AllocationResult) -> Vec<String> {
    r.devices.as_ref().unwrap().results.as_ref().unwrap().iter().map(|x| x.device.clone()).collect()
}

fn snapshot() -> DraSnapshot {
    DraSnapshot::new(
        &[class("gpu.phalanx.dev", "device.driver == 'gpu.phalanx.dev'")],
        &[gpu_slice("n1"), gpu_slice("n2")],
        Features::default(),
    )
}

#[test]
fn allocates_first_fit_with_node_selector() {
    let snap = snapshot();
    let a = Allocator::new(&snap);
    let c = claim("c", 2, json!([]));
    let r = a.allocate(&node("n1"), &[&c], &AllocatedState::new()).unwrap().unwrap();
    assert_eq!(devices(&r[0]), ["gpu-0", "gpu-1"]);
    let sel = r[0].node_selector.as_ref().unwrap();
    assert_eq!(
        sel.node_selector_terms[0].match_fields.as_ref().unwrap()[0].values.as_ref().unwrap(),
        &["n1".to_string()]
    );
    validate(&snap, &[&c], &r, &AllocatedState::new()).unwrap();
}

#[test]
fn match_attribute_keeps_gpus_in_one_island() {
    let snap = snapshot();
    let a = Allocator::new(&snap);
    let mut state = AllocatedState::new();
    let one = claim("one", 1, json!([]));
    state.add(&a.allocate(&node("n1"), &[&one], &state).unwrap().unwrap()[0]);
    let c = claim("c", 4, json!([{"matchAttribute": "gpu.phalanx.dev/nvlinkDomain"}]));
    let r = a.allocate(&node("n1"), &[&c], &state).unwrap().unwrap();
    assert_eq!(devices(&r[0]), ["gpu-4", "gpu-5", "gpu-6", "gpu-7"]);
    validate(&snap, &[&c], &r, &state).unwrap();
    let c5 = claim("c5", 5, json!([{"matchAttribute": "gpu.phalanx.dev/nvlinkDomain"}]));
    assert_eq!(a.allocate(&node("n1"), &[&c5], &state).unwrap(), None);
    let c8 = claim("c8", 8, json!([]));
    assert_eq!(a.allocate(&node("n1"), &[&c8], &state).unwrap(), None);
    let why = a.explain(&node("n1"), &[&c8], &state).unwrap().unwrap();
    assert!(matches!(why, Unsatisfied::TooFewDevices { needed: 8, free: 7, .. }), "{why}");
    assert_eq!(why.to_string(), "request gpu: 8 devices of class gpu.phalanx.dev needed, 7 free match on node n1");
}

#[test]
fn distinct_attribute_spreads_over_pcie_roots() {
    let snap = snapshot();
    let a = Allocator::new(&snap);
    let c = claim("c", 3, json!([{"distinctAttribute": "resource.kubernetes.io/pcieRoot"}]));
    let r = a.allocate(&node("n1"), &[&c], &AllocatedState::new()).unwrap().unwrap();
    assert_eq!(devices(&r[0]), ["gpu-0", "gpu-2", "gpu-4"]);
}

#[test]
fn feasible_nodes_and_remove_is_inverse() {
    let snap = snapshot();
    let a = Allocator::new(&snap);
    let c = claim("c", 8, json!([]));
    let mut state = AllocatedState::new();
    assert_eq!(a.feasible_nodes(&c, &state).unwrap(), ["n1", "n2"]);
    let r = a.allocate(&node("n2"), &[&c], &state).unwrap().unwrap();
    state.add(&r[0]);
    assert_eq!(a.feasible_nodes(&c, &state).unwrap(), ["n1"]);
    state.remove(&r[0]);
    assert_eq!(state, AllocatedState::new());
}

#[test]
fn bad_cel_names_the_class() {
    let snap = DraSnapshot::new(&[class("broken", "device.driver ==")], &[gpu_slice("n1")], Features::default());
    let mut c = claim("c", 1, json!([]));
    c.spec.as_mut().unwrap().devices.as_mut().unwrap().requests.as_mut().unwrap()[0]
        .exactly
        .as_mut()
        .unwrap()
        .device_class_name = "broken".into();
    let err = Allocator::new(&snap).allocate(&node("n1"), &[&c], &AllocatedState::new()).unwrap_err();
    assert!(matches!(&err, AllocateError::CelCompile { owner, .. } if owner == "class broken"), "{err}");
    let snap = DraSnapshot::new(&[class("str", "device.driver")], &[gpu_slice("n1")], Features::default());
    c.spec.as_mut().unwrap().devices.as_mut().unwrap().requests.as_mut().unwrap()[0]
        .exactly
        .as_mut()
        .unwrap()
        .device_class_name = "str".into();
    let err = Allocator::new(&snap).allocate(&node("n1"), &[&c], &AllocatedState::new()).unwrap_err();
    assert!(matches!(&err, AllocateError::CelNotBool { .. }), "{err}");
    c.spec.as_mut().unwrap().devices.as_mut().unwrap().requests.as_mut().unwrap()[0]
        .exactly
        .as_mut()
        .unwrap()
        .device_class_name = "missing".into();
    let err = Allocator::new(&snap).allocate(&node("n1"), &[&c], &AllocatedState::new()).unwrap_err();
    assert!(err.to_string().contains("could not retrieve device class missing"), "{err}");
}

fn big_slice(n: usize) -> ResourceSlice {
    let devices: Vec<_> = (0..n).map(|i| json!({"name": format!("d-{i}")})).collect();
    serde_json::from_value(json!({"metadata": {"name": "big"}, "spec": {"driver": "gpu.phalanx.dev", "nodeName": "n1",
        "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 1}, "devices": devices}}))
    .unwrap()
}

#[test]
fn at_most_32_results_per_claim() {
    let snap = DraSnapshot::new(&[class("gpu.phalanx.dev", "true")], &[big_slice(40)], Features::default());
    let a = Allocator::new(&snap);
    let err = a.allocate(&node("n1"), &[&claim("c", 33, json!([]))], &AllocatedState::new()).unwrap_err();
    assert!(matches!(err, AllocateError::TooManyDevices { count: 33, limit: 32, .. }), "{err}");
    assert!(a.allocate(&node("n1"), &[&claim("c", 32, json!([]))], &AllocatedState::new()).unwrap().is_some());
    // firstAvailable: the 20-device alternative would push the claim past 32 results
    // together with the 16-device request, so the 8-device alternative is chosen.
    let c: ResourceClaim = serde_json::from_value(
        json!({"metadata": {"name": "f", "namespace": "default"}, "spec": {"devices": {"requests": [
        {"name": "a", "exactly": {"deviceClassName": "gpu.phalanx.dev", "count": 16}},
        {"name": "b", "firstAvailable": [
            {"name": "big", "deviceClassName": "gpu.phalanx.dev", "count": 20},
            {"name": "small", "deviceClassName": "gpu.phalanx.dev", "count": 8}]}]}}}),
    )
    .unwrap();
    let r = a.allocate(&node("n1"), &[&c], &AllocatedState::new()).unwrap().unwrap();
    let rs = r[0].devices.as_ref().unwrap().results.as_ref().unwrap();
    assert_eq!(rs.len(), 24);
    assert_eq!(rs.last().unwrap().request, "b/small");
}

#[test]
fn shared_counters_and_taints() {
    // Two partitions of one GPU share 8 memory slices; each needs 5, so only one fits.
    let slices: Vec<ResourceSlice> = vec![
        serde_json::from_value(json!({"metadata": {"name": "a-counters"}, "spec": {"driver": "gpu.phalanx.dev", "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 2},
            "sharedCounters": [{"name": "gpu-0", "counters": {"slices": {"value": "8"}}}]}}))
        .unwrap(),
        serde_json::from_value(json!({"metadata": {"name": "b-devices"}, "spec": {"driver": "gpu.phalanx.dev", "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": 2}, "devices": [
                {"name": "p0", "consumesCounters": [{"counterSet": "gpu-0", "counters": {"slices": {"value": "5"}}}],
                 "taints": [{"key": "gpu.phalanx.dev/xid", "value": "79", "effect": "NoSchedule"}]},
                {"name": "p1", "consumesCounters": [{"counterSet": "gpu-0", "counters": {"slices": {"value": "5"}}}]},
                {"name": "p2", "consumesCounters": [{"counterSet": "gpu-0", "counters": {"slices": {"value": "5"}}}]}]}}))
        .unwrap(),
    ];
    let snap = DraSnapshot::new(&[class("gpu.phalanx.dev", "true")], &slices, Features::default());
    let a = Allocator::new(&snap);
    let r = a.allocate(&node("n1"), &[&claim("one", 1, json!([]))], &AllocatedState::new()).unwrap().unwrap();
    assert_eq!(devices(&r[0]), ["p1"], "p0 is tainted");
    assert_eq!(a.allocate(&node("n1"), &[&claim("two", 2, json!([]))], &AllocatedState::new()).unwrap(), None);
    let mut state = AllocatedState::new();
    state.add(&r[0]);
    assert_eq!(a.allocate(&node("n1"), &[&claim("again", 1, json!([]))], &state).unwrap(), None, "counters used up");
    let mut tolerant = claim("tolerant", 1, json!([]));
    tolerant.spec.as_mut().unwrap().devices.as_mut().unwrap().requests.as_mut().unwrap()[0]
        .exactly
        .as_mut()
        .unwrap()
        .tolerations =
        Some(vec![serde_json::from_value(json!({"key": "gpu.phalanx.dev/xid", "operator": "Exists"})).unwrap()]);
    let r = a.allocate(&node("n1"), &[&tolerant], &AllocatedState::new()).unwrap().unwrap();
    assert_eq!(devices(&r[0]), ["p0"]);
    let t = &r[0].devices.as_ref().unwrap().results.as_ref().unwrap()[0].tolerations;
    assert_eq!(t.as_ref().map(Vec::len), Some(1), "tolerations are copied into the result");
}
