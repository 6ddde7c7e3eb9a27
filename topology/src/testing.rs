//! Builders of `Node`s and `ResourceSlice`s shaped like the machines in
//! reference/hardware.md, for tests, benchmarks and examples.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, DeviceCapacity, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::names;

/// A ready node with the given labels (plus `kubernetes.io/hostname`), 224 CPUs,
/// 2 TiB memory and 110 pods allocatable.
pub fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.insert(names::HOSTNAME_LABEL.into(), name.into());
    let alloc: BTreeMap<String, Quantity> = [("cpu", "224"), ("memory", "2Ti"), ("pods", "110")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
    Node {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(l), ..Default::default() },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus { allocatable: Some(alloc.clone()), capacity: Some(alloc), ..Default::default() }),
    }
}

fn s(v: &str) -> DeviceAttribute {
    DeviceAttribute { string: Some(v.into()), ..Default::default() }
}

fn i(v: i64) -> DeviceAttribute {
    DeviceAttribute { int: Some(v), ..Default::default() }
}

/// What one fake GPU looks like.
#[derive(Debug, Clone)]
pub struct GpuShape {
    /// Product name.
    pub product: &'static str,
    /// Architecture.
    pub architecture: &'static str,
    /// NVLink island inside the node (`None`: PCIe only).
    pub island: Option<String>,
    /// Multi-node NVLink domain.
    pub nvlink_domain: Option<String>,
    /// NUMA node.
    pub numa: i64,
    /// PCIe root.
    pub pcie_root: String,
}

fn gpu_device(node: &str, idx: usize, g: &GpuShape) -> Device {
    let mut a = BTreeMap::new();
    a.insert("type".to_string(), s("gpu"));
    a.insert("uuid".to_string(), s(&format!("GPU-{node}-{idx}")));
    a.insert("productName".to_string(), s(g.product));
    a.insert("architecture".to_string(), s(g.architecture));
    if let Some(isl) = &g.island {
        a.insert("nvlinkIsland".to_string(), s(isl));
    }
    if let Some(d) = &g.nvlink_domain {
        a.insert("nvlinkDomain".to_string(), s(d));
    }
    a.insert(names::NUMA_NODE.to_string(), i(g.numa));
    a.insert(names::PCIE_ROOT.to_string(), s(&g.pcie_root));
    let mut cap = BTreeMap::new();
    cap.insert("memory".to_string(), DeviceCapacity { value: Quantity("80Gi".into()), ..Default::default() });
    Device { name: format!("gpu-{idx}"), attributes: Some(a), capacity: Some(cap), ..Default::default() }
}

fn nic_device(idx: usize, numa: i64, root: &str) -> Device {
    let mut a = BTreeMap::new();
    a.insert("type".to_string(), s("nic"));
    a.insert(names::NUMA_NODE.to_string(), i(numa));
    a.insert(names::PCIE_ROOT.to_string(), s(root));
    Device { name: format!("nic-{idx}"), attributes: Some(a), ..Default::default() }
}

/// A one-slice pool for `node` under `driver`.
pub fn slice(driver: &str, node: &str, devices: Vec<Device>) -> ResourceSlice {
    ResourceSlice {
        metadata: ObjectMeta {
            name: Some(format!("{node}-{}", driver.split('.').next().unwrap_or(driver))),
            ..Default::default()
        },
        spec: ResourceSliceSpec {
            driver: driver.into(),
            pool: ResourcePool { name: node.into(), generation: 1, resource_slice_count: 1 },
            node_name: Some(node.into()),
            devices: Some(devices),
            ..Default::default()
        },
    }
}

/// GPU shapes of an HGX H100: 8 GPUs in one NVSwitch island, 8 PCIe roots, 4 GPUs per
/// NUMA node; the island (and NVLink domain) is the node's own.
pub fn hgx_h100_gpus(node: &str) -> Vec<GpuShape> {
    (0..8)
        .map(|g| GpuShape {
            product: "NVIDIA H100 80GB HBM3",
            architecture: "Hopper",
            island: Some(format!("{node}-nvl0")),
            nvlink_domain: Some(format!("{node}-nvl")),
            numa: (g / 4) as i64,
            pcie_root: format!("pci0000:{:02x}", 0x10 + g * 0x10),
        })
        .collect()
}

/// GPU shapes of a GB200 compute tray in NVLink domain `domain`: 4 GPUs in separate PCI
/// domains, all in one NVLink island, 2 per Grace NUMA node.
pub fn gb200_gpus(node: &str, domain: &str) -> Vec<GpuShape> {
    ["0008", "0009", "0018", "0019"]
        .iter()
        .enumerate()
        .map(|(g, d)| GpuShape {
            product: "NVIDIA GB200",
            architecture: "Blackwell",
            island: Some(format!("{node}-nvl0")),
            nvlink_domain: Some(domain.to_string()),
            numa: (g / 2) as i64,
            pcie_root: format!("pci{d}:00"),
        })
        .collect()
}

/// GPU shapes of an 8× L40S PCIe server: no NVLink, 8 roots, 2 NUMA nodes.
pub fn l40s_gpus() -> Vec<GpuShape> {
    (0..8)
        .map(|g| GpuShape {
            product: "NVIDIA L40S",
            architecture: "Ada",
            island: None,
            nvlink_domain: None,
            numa: (g / 4) as i64,
            pcie_root: format!("pci0000:{:02x}", 0x20 * g + 0x01),
        })
        .collect()
}

/// The GPU slice of a node with these GPU shapes.
pub fn gpu_slice(node: &str, gpus: &[GpuShape]) -> ResourceSlice {
    slice(names::GPU_DRIVER, node, gpus.iter().enumerate().map(|(i, g)| gpu_device(node, i, g)).collect())
}

/// The NIC slice of a node: one NIC on the PCIe root (and NUMA node) of every GPU.
pub fn nic_slice(node: &str, gpus: &[GpuShape]) -> ResourceSlice {
    slice(names::NIC_DRIVER, node, gpus.iter().enumerate().map(|(i, g)| nic_device(i, g.numa, &g.pcie_root)).collect())
}
