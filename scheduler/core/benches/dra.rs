#![allow(missing_docs)]
//! Allocator benchmarks: one 8-GPU claim on one node, feasible nodes among 5,000
//! 8-GPU nodes, and 1,000 single-GPU claims allocated one after another.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use phalanx_scheduler_core::dra::{AllocatedState, Allocator, DraSnapshot, Features};
use serde_json::json;

fn class() -> DeviceClass {
    serde_json::from_value(
        json!({"metadata": {"name": "gpu.phalanx.dev"}, "spec": {"selectors": [{"cel": {"expression":
        "device.driver == 'gpu.phalanx.dev' && device.attributes['gpu.phalanx.dev'].type == 'gpu'"}}]}}),
    )
    .unwrap()
}

fn slice(node: &str) -> ResourceSlice {
    let devices: Vec<_> = (0..8)
        .map(|i| {
            json!({"name": format!("gpu-{i}"), "attributes": {
                "type": {"string": "gpu"}, "productName": {"string": "H100"},
                "nvlinkDomain": {"string": format!("{node}-nvl")},
                "resource.kubernetes.io/pcieRoot": {"string": format!("pci{i}")},
                "resource.kubernetes.io/numaNode": {"int": i / 4}
            }, "capacity": {"memory": {"value": "80Gi"}}})
        })
        .collect();
    serde_json::from_value(json!({"metadata": {"name": format!("{node}-gpu")}, "spec": {"driver": "gpu.phalanx.dev",
        "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}, "devices": devices}}))
    .unwrap()
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn claim(name: &str, count: i64, nvlink: bool) -> ResourceClaim {
    let constraints = if nvlink { json!([{"matchAttribute": "gpu.phalanx.dev/nvlinkDomain"}]) } else { json!([]) };
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "bench"}, "spec": {"devices": {
        "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.phalanx.dev", "count": count}}],
        "constraints": constraints}}}))
    .unwrap()
}

fn cluster(nodes: usize) -> (DraSnapshot, Vec<Node>) {
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    let slices: Vec<_> = names.iter().map(|n| slice(n)).collect();
    (DraSnapshot::new(&[class()], &slices, Features::default()), names.iter().map(|n| node(n)).collect())
}

fn benches(c: &mut Criterion) {
    let (one, one_nodes) = cluster(1);
    let c8 = claim("c8", 8, true);
    let empty = AllocatedState::new();
    c.bench_function("allocate 8-GPU claim, matchAttribute nvlinkDomain, 8-GPU node", |b| {
        let a = Allocator::new(&one);
        b.iter(|| black_box(a.allocate(&one_nodes[0], &[&c8], &empty).unwrap().unwrap()))
    });

    let (big, nodes) = cluster(5000);
    let mut group = c.benchmark_group("5000 nodes x 8 GPUs");
    group.sample_size(10);
    group.bench_function("feasible_nodes for one 8-GPU matchAttribute claim", |b| {
        let a = Allocator::new(&big);
        b.iter(|| {
            let n = a.feasible_nodes(&c8, &empty).unwrap();
            assert_eq!(n.len(), 5000);
            black_box(n)
        })
    });
    let singles: Vec<ResourceClaim> = (0..1000).map(|i| claim(&format!("s{i}"), 1, false)).collect();
    group.bench_function("1000 single-GPU claims one after another (first fit)", |b| {
        let a = Allocator::new(&big);
        b.iter(|| {
            let mut state = AllocatedState::new();
            let mut cursor = 0;
            for c in &singles {
                loop {
                    if let Some(r) = a.allocate(&nodes[cursor], &[c], &state).unwrap() {
                        state.add(&r[0]);
                        break;
                    }
                    cursor += 1;
                }
            }
            black_box(state)
        })
    });
    group.finish();
}

criterion_group!(dra, benches);
criterion_main!(dra);
