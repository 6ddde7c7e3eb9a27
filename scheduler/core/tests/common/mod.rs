//! Builders shared by the placement tests and benchmarks.
#![allow(dead_code)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSpec, Pod, PodResourceClaim, PodSpec, ResourceRequirements, Taint, Toleration,
};
use k8s_openapi::api::resource::v1::{
    AllocationResult, CELDeviceSelector, DeviceAllocationResult, DeviceClaim, DeviceClass, DeviceClassSpec,
    DeviceRequest, DeviceRequestAllocationResult, DeviceSelector, ExactDeviceRequest, ResourceClaim, ResourceClaimSpec,
    ResourceClaimStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use phalanx_gang::{Gang, GangInputs, assemble};
use phalanx_scheduler_core::placement::{GangOutcome, PlacementOptions, Placer, Snapshot};
use phalanx_topology::testing::{GpuShape, gpu_slice, nic_slice, node};
use phalanx_topology::{TopologyConfig, names};

pub const SCHED: &str = "phalanx-scheduler";

pub fn classes() -> Vec<DeviceClass> {
    [names::GPU_DRIVER, names::NIC_DRIVER]
        .iter()
        .map(|d| DeviceClass {
            metadata: ObjectMeta { name: Some(d.to_string()), ..Default::default() },
            spec: Some(DeviceClassSpec {
                selectors: Some(vec![DeviceSelector {
                    cel: Some(CELDeviceSelector { expression: format!("device.driver == '{d}'") }),
                }]),
                ..Default::default()
            }),
        })
        .collect()
}

/// A growing snapshot.
#[derive(Default)]
pub struct Cluster {
    pub snap: Snapshot,
}

impl Cluster {
    pub fn new() -> Self {
        let mut c = Self::default();
        c.snap.device_classes = classes();
        c
    }

    /// A node with GPUs (and a NIC per GPU when `nics`).
    pub fn node(&mut self, name: &str, labels: &[(&str, &str)], gpus: &[GpuShape], nics: bool) -> &mut Self {
        self.snap.nodes.push(node(name, labels));
        self.snap.resource_slices.push(gpu_slice(name, gpus));
        if nics {
            self.snap.resource_slices.push(nic_slice(name, gpus));
        }
        self
    }

    pub fn taint(&mut self, node: &str, key: &str) -> &mut Self {
        let n: &mut Node = self.snap.nodes.iter_mut().find(|n| n.metadata.name.as_deref() == Some(node)).unwrap();
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint { key: key.into(), value: None, effect: "NoSchedule".into(), time_added: None }]),
            ..Default::default()
        });
        self
    }

    /// Marks devices of a node as allocated to a claim of a bound pod.
    pub fn allocated(&mut self, node: &str, devices: &[&str]) -> &mut Self {
        let name = format!("busy-{node}-{}", self.snap.resource_claims.len());
        let results = devices
            .iter()
            .map(|d| DeviceRequestAllocationResult {
                request: "gpu".into(),
                driver: if d.starts_with("nic") { names::NIC_DRIVER.into() } else { names::GPU_DRIVER.into() },
                pool: node.into(),
                device: d.to_string(),
                ..Default::default()
            })
            .collect();
        self.snap.resource_claims.push(ResourceClaim {
            metadata: ObjectMeta { name: Some(name), namespace: Some("ml".into()), ..Default::default() },
            spec: Some(ResourceClaimSpec::default()),
            status: Some(ResourceClaimStatus {
                allocation: Some(AllocationResult {
                    devices: Some(DeviceAllocationResult { results: Some(results), config: None }),
                    node_selector: None,
                    allocation_timestamp: None,
                }),
                ..Default::default()
            }),
        });
        self
    }

    /// A pending pod with one claim of `gpus` GPUs (and `nics` NICs).
    pub fn pod(
        &mut self,
        name: &str,
        gpus: i64,
        nics: i64,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> &mut Pod {
        let claim = format!("{name}-c");
        let mut reqs = Vec::new();
        let req = |n: &str, class: &str, count: i64| DeviceRequest {
            name: n.into(),
            exactly: Some(ExactDeviceRequest {
                device_class_name: class.into(),
                count: Some(count),
                ..Default::default()
            }),
            first_available: None,
        };
        if gpus > 0 {
            reqs.push(req("gpu", names::GPU_DRIVER, gpus));
        }
        if nics > 0 {
            reqs.push(req("nic", names::NIC_DRIVER, nics));
        }
        let has_claim = !reqs.is_empty();
        if has_claim {
            self.snap.resource_claims.push(ResourceClaim {
                metadata: ObjectMeta { name: Some(claim.clone()), namespace: Some("ml".into()), ..Default::default() },
                spec: Some(ResourceClaimSpec {
                    devices: Some(DeviceClaim { requests: Some(reqs), ..Default::default() }),
                }),
                status: None,
            });
        }
        let m = |kv: &[(&str, &str)]| {
            Some(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>())
        };
        self.snap.pods.push(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ml".into()),
                labels: m(labels),
                annotations: m(annotations),
                ..Default::default()
            },
            spec: Some(PodSpec {
                scheduler_name: Some(SCHED.into()),
                containers: vec![Container {
                    name: "main".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), Quantity("1".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                resource_claims: has_claim.then(|| {
                    vec![PodResourceClaim { name: "c".into(), resource_claim_name: Some(claim), ..Default::default() }]
                }),
                ..Default::default()
            }),
            status: None,
        });
        self.snap.pods.last_mut().unwrap()
    }

    pub fn gangs(&self) -> Vec<Gang> {
        let a = assemble(&GangInputs {
            scheduler_name: SCHED,
            pods: &self.snap.pods,
            coscheduling_pod_groups: &self.snap.coscheduling_pod_groups,
            workload_pod_groups: &self.snap.workload_pod_groups,
            composite_pod_groups: &self.snap.composite_pod_groups,
            pod_gangs: &self.snap.pod_gangs,
        });
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        a.gangs
    }

    pub fn placer(&self) -> Placer {
        Placer::new(&self.snap, &TopologyConfig::default(), PlacementOptions::default()).unwrap()
    }

    /// Places the named gangs in order; returns the placer and the outcomes.
    pub fn place(&self, order: &[&str]) -> (Placer, Vec<GangOutcome>) {
        let gangs = self.gangs();
        let mut p = self.placer();
        let out = order
            .iter()
            .map(|n| {
                let g = gangs.iter().find(|g| g.key.name == *n).unwrap_or_else(|| panic!("no gang {n}"));
                p.place_gang(g)
            })
            .collect();
        (p, out)
    }
}

pub fn tolerate(pod: &mut Pod, key: &str) {
    pod.spec.as_mut().unwrap().tolerations =
        Some(vec![Toleration { key: Some(key.into()), operator: Some("Exists".into()), ..Default::default() }]);
}

/// An 8-GPU node shape with `islands` NVLink islands of equal size, 2 NUMA nodes, a PCIe
/// root per GPU.
pub fn gpus8(node: &str, islands: usize, domain: Option<&str>) -> Vec<GpuShape> {
    gpus(node, 8, islands, domain)
}

pub fn gpus(node: &str, n: usize, islands: usize, domain: Option<&str>) -> Vec<GpuShape> {
    (0..n)
        .map(|g| GpuShape {
            product: "NVIDIA H100 80GB HBM3",
            architecture: "Hopper",
            island: (islands > 0).then(|| format!("{node}-isl{}", g * islands / n)),
            nvlink_domain: Some(domain.map(str::to_string).unwrap_or_else(|| format!("{node}-nvl"))),
            numa: (g * 2 / n) as i64,
            pcie_root: format!("pci0000:{:02x}", 0x10 + g * 0x10),
        })
        .collect()
}

pub fn rack(zone: &str, block: &str, rack: &str) -> Vec<(&'static str, String)> {
    vec![
        ("topology.kubernetes.io/zone", zone.to_string()),
        ("phalanx.dev/block", block.to_string()),
        ("phalanx.dev/rack", rack.to_string()),
    ]
}

pub fn labels<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A random small instance: up to `max_nodes` nodes of 4 GPUs (one or two NVLink
/// islands) in two racks, some GPUs busy, and 1–3 gangs of 1–3 pods asking 1–3 GPUs,
/// with random required / preferred levels and P/D groups.
pub fn random_instance(seed: u64, max_nodes: usize, max_gangs: usize) -> Cluster {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = Cluster::new();
    let n_nodes = rng.random_range(2..=max_nodes);
    for i in 0..n_nodes {
        let name = format!("n{i}");
        let r = if rng.random_bool(0.5) { "r0" } else { "r1" };
        let l = rack("z", "b", r);
        let islands = rng.random_range(1..=2);
        c.node(&name, &labels(&l), &gpus(&name, 4, islands, None), false);
        let busy: Vec<String> = (0..4).filter(|_| rng.random_bool(0.3)).map(|g| format!("gpu-{g}")).collect();
        if !busy.is_empty() {
            let b: Vec<&str> = busy.iter().map(String::as_str).collect();
            c.allocated(&name, &b);
        }
    }
    let n_gangs = rng.random_range(1..=max_gangs);
    for g in 0..n_gangs {
        let size = rng.random_range(1..=3);
        let gang = format!("g{g}");
        let mut ann: Vec<(&str, &str)> = vec![];
        match rng.random_range(0..4) {
            0 => ann.push(("phalanx.dev/topology-required", "rack")),
            1 => ann.push(("phalanx.dev/topology-required", "node")),
            _ => {}
        }
        if rng.random_bool(0.3) {
            ann.push(("phalanx.dev/topology-preferred", "node"));
        }
        let pd = size >= 2 && rng.random_bool(0.4);
        if pd {
            ann.push(("phalanx.dev/kv-domain", "rack"));
            ann.push(("phalanx.dev/kv-domain-policy", if rng.random_bool(0.5) { "required" } else { "preferred" }));
            ann.push(("phalanx.dev/kv-bytes-per-token", "131072"));
            ann.push(("phalanx.dev/typical-isl", "4096"));
        }
        for k in 0..size {
            let gpus = rng.random_range(1..=3);
            let role = if k == 0 { "prefill" } else { "decode" };
            let mut l = vec![("phalanx.dev/gang", gang.as_str())];
            if pd {
                l.push(("phalanx.dev/role", role));
                l.push(("phalanx.dev/pd-group", "pd"));
            }
            c.pod(&format!("{gang}-{k}"), gpus, 0, &l, &ann);
        }
    }
    c
}
