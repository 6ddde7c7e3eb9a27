//! Inventory → ResourceSlice devices: the attribute and capacity names the scheduler
//! and CEL selectors see.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{CounterSet, Device, DeviceAttribute, DeviceCapacity, DeviceTaint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::discovery::{Gpu, Nic, NodeInventory};
use crate::mig::{self, MigInventory};

/// The GPU driver's name and attribute domain.
pub const GPU_DRIVER: &str = "gpu.phalanx.dev";
/// The NIC driver the profile backend publishes beside the GPUs.
pub const NIC_DRIVER: &str = "nic.phalanx.dev";
/// Taint put on a device that the health source reports unhealthy.
pub const UNHEALTHY_TAINT: &str = "gpu.phalanx.dev/unhealthy";
/// Standard attribute: extended BDF.
pub const PCI_BUS_ID: &str = "resource.kubernetes.io/pciBusID";
/// Standard attribute: `pci<domain>:<bus>`.
pub const PCIE_ROOT: &str = "resource.kubernetes.io/pcieRoot";
/// Standard attribute: NUMA node (int).
pub const NUMA_NODE: &str = "resource.kubernetes.io/numaNode";

/// A device the health source reports unhealthy, with the reason (taint value).
pub type Unhealthy = BTreeMap<String, String>;

/// `9.0` → `9.0.0`, `570.124.06` → `570.124.6`: Kubernetes version attributes must be
/// semver, which has exactly three numeric parts without leading zeros.
pub fn semver(version: &str) -> String {
    let mut parts: Vec<u64> = version.split(['.', '-', '+']).map_while(|p| p.parse().ok()).take(3).collect();
    parts.resize(3, 0);
    format!("{}.{}.{}", parts[0], parts[1], parts[2])
}

/// Bytes as a Kubernetes quantity in canonical form (`81559Mi`), so what the apiserver
/// stores reads back unchanged.
pub fn bytes_quantity(bytes: u64) -> Quantity {
    const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut value = bytes;
    let mut suffix = "";
    for s in SUFFIXES {
        if value == 0 || !value.is_multiple_of(1024) {
            break;
        }
        value /= 1024;
        suffix = s;
    }
    Quantity(format!("{value}{suffix}"))
}

pub(crate) fn string(v: impl Into<String>) -> DeviceAttribute {
    DeviceAttribute { string: Some(v.into()), ..Default::default() }
}

pub(crate) fn version(v: &str) -> DeviceAttribute {
    DeviceAttribute { version: Some(semver(v)), ..Default::default() }
}

pub(crate) fn int(v: i64) -> DeviceAttribute {
    DeviceAttribute { int: Some(v), ..Default::default() }
}

pub(crate) fn boolean(v: bool) -> DeviceAttribute {
    DeviceAttribute { bool: Some(v), ..Default::default() }
}

fn pci_attributes(attrs: &mut BTreeMap<String, DeviceAttribute>, bus: &str, root: Option<&str>, numa: Option<i64>) {
    attrs.insert(PCI_BUS_ID.into(), string(bus));
    if let Some(root) = root {
        attrs.insert(PCIE_ROOT.into(), string(root));
    }
    if let Some(numa) = numa {
        attrs.insert(NUMA_NODE.into(), int(numa));
    }
}

pub(crate) fn taints(name: &str, unhealthy: &Unhealthy, now: &Time) -> Option<Vec<DeviceTaint>> {
    unhealthy.get(name).map(|reason| {
        vec![DeviceTaint {
            key: UNHEALTHY_TAINT.into(),
            value: Some(reason.clone()),
            effect: "NoSchedule".into(),
            time_added: Some(now.clone()),
        }]
    })
}

/// The ResourceSlice device for one GPU.
pub fn gpu_device(gpu: &Gpu, unhealthy: &Unhealthy, now: &Time) -> Device {
    let mut attrs = BTreeMap::from([
        ("type".to_owned(), string("gpu")),
        ("uuid".to_owned(), string(&gpu.uuid)),
        ("productName".to_owned(), string(&gpu.product_name)),
        ("architecture".to_owned(), string(&gpu.architecture)),
        ("cudaComputeCapability".to_owned(), version(&gpu.cuda_compute_capability)),
        ("driverVersion".to_owned(), version(&gpu.driver_version)),
        ("cudaDriverVersion".to_owned(), version(&gpu.cuda_driver_version)),
    ]);
    if let Some(domain) = &gpu.nvlink_domain {
        attrs.insert("nvlinkDomain".into(), string(domain));
    }
    if let Some(island) = &gpu.nvlink_island {
        attrs.insert("nvlinkIsland".into(), string(island));
    }
    pci_attributes(&mut attrs, &gpu.pci_bus_id, gpu.pcie_root.as_deref(), gpu.numa_node);
    let name = gpu.device_name();
    Device {
        taints: taints(&name, unhealthy, now),
        name,
        attributes: Some(attrs),
        capacity: Some(BTreeMap::from([(
            "memory".to_owned(),
            DeviceCapacity { value: bytes_quantity(gpu.memory_bytes), request_policy: None },
        )])),
        ..Default::default()
    }
}

/// The ResourceSlice device for one NIC (driver `nic.phalanx.dev`).
pub fn nic_device(nic: &Nic) -> Device {
    let mut attrs = BTreeMap::from([
        ("type".to_owned(), string("nic")),
        ("interfaceName".to_owned(), string(&nic.interface_name)),
        ("rdmaDevice".to_owned(), string(&nic.rdma_device)),
        ("model".to_owned(), string(&nic.model)),
        ("role".to_owned(), string(&nic.role)),
    ]);
    pci_attributes(&mut attrs, &nic.pci_bus_id, nic.pcie_root.as_deref(), nic.numa_node);
    Device { name: nic.device_name(), attributes: Some(attrs), ..Default::default() }
}

/// All GPU devices of a node.
pub fn gpu_devices(inventory: &NodeInventory, unhealthy: &Unhealthy, now: &Time) -> Vec<Device> {
    inventory.gpus.iter().map(|g| gpu_device(g, unhealthy, now)).collect()
}

/// A pool's devices and the counter sets they draw on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuPool {
    /// Devices, GPU by GPU (a MIG-mode GPU followed by its MIG devices).
    pub devices: Vec<Device>,
    /// One counter set per MIG-mode GPU.
    pub shared_counters: Vec<CounterSet>,
}

/// The GPU pool of a node: GPUs not in MIG mode exactly as [`gpu_devices`] publishes
/// them; a GPU in MIG mode (per `mig`) as a counter set, its full-GPU device and its MIG
/// devices (see [`crate::mig`]).
pub fn gpu_pool(inventory: &NodeInventory, mig: &MigInventory, unhealthy: &Unhealthy, now: &Time) -> GpuPool {
    let mut pool = GpuPool::default();
    for gpu in &inventory.gpus {
        let device = gpu_device(gpu, unhealthy, now);
        let Some(capability) = mig.capability(gpu.index) else {
            pool.devices.push(device);
            continue;
        };
        pool.shared_counters.push(mig::counter_set(gpu, capability));
        pool.devices.push(mig::full_gpu_device(device, gpu, capability));
        pool.devices
            .extend(MigInventory::partitions(gpu, capability).map(|d| mig::partition_device(&d, unhealthy, now)));
    }
    pool
}

/// All NIC devices of a node.
pub fn nic_devices(inventory: &NodeInventory) -> Vec<Device> {
    inventory.nics.iter().map(nic_device).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::profile::{Profile, ProfileDiscovery};
    use crate::discovery::{Discovery, NodeContext};

    #[test]
    fn versions_become_semver() {
        assert_eq!(semver("9.0"), "9.0.0");
        assert_eq!(semver("570.124.06"), "570.124.6");
        assert_eq!(semver("12"), "12.0.0");
        assert_eq!(semver("10.0.1-rc1"), "10.0.1");
    }

    #[test]
    fn bytes_use_the_largest_exact_binary_suffix() {
        assert_eq!(bytes_quantity(85520809984).0, "81559Mi");
        assert_eq!(bytes_quantity(199715979264).0, "186Gi");
        assert_eq!(bytes_quantity(1000).0, "1000");
        assert_eq!(bytes_quantity(0).0, "0");
    }

    #[test]
    fn gpu_attributes_follow_the_design() {
        let inv =
            ProfileDiscovery::new(Profile::load("hgx-h100-8").unwrap()).discover(&NodeContext::named("n")).unwrap();
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut unhealthy = Unhealthy::new();
        unhealthy.insert("gpu-3".into(), "xid-79".into());
        let devices = gpu_devices(&inv, &unhealthy, &now);
        let d = &devices[0];
        assert_eq!(d.name, "gpu-0");
        let a = d.attributes.as_ref().unwrap();
        let keys: Vec<&str> = a.keys().map(String::as_str).collect();
        for k in [
            "type",
            "uuid",
            "productName",
            "architecture",
            "cudaComputeCapability",
            "driverVersion",
            "nvlinkDomain",
            "nvlinkIsland",
            PCI_BUS_ID,
            PCIE_ROOT,
            NUMA_NODE,
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(keys.len() < 32, "attributes + capacity within the API limit");
        assert_eq!(a[PCIE_ROOT].string.as_deref(), Some("pci0000:17"));
        assert_eq!(a[PCI_BUS_ID].string.as_deref(), Some("0000:1b:00.0"));
        assert_eq!(a["cudaComputeCapability"].version.as_deref(), Some("9.0.0"));
        assert_eq!(d.capacity.as_ref().unwrap()["memory"].value.0, "81559Mi");
        assert!(d.taints.is_none());
        let t = &devices[3].taints.as_ref().unwrap()[0];
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            (UNHEALTHY_TAINT, Some("xid-79"), "NoSchedule")
        );
    }

    #[test]
    fn gpus_without_mig_mode_publish_as_before() {
        let discovery = ProfileDiscovery::new(Profile::load("hgx-h100-8-mig").unwrap());
        let ctx = NodeContext::named("n");
        let (inv, mig) = (discovery.discover(&ctx).unwrap(), discovery.discover_mig(&ctx).unwrap());
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let plain = gpu_devices(&inv, &Unhealthy::new(), &now);
        let pool = gpu_pool(&inv, &mig, &Unhealthy::new(), &now);
        assert_eq!(pool.devices[..4], plain[..4], "GPUs 0-3 are not in MIG mode");
        assert_eq!(
            pool.shared_counters.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["gpu-4-counters", "gpu-5-counters", "gpu-6-counters", "gpu-7-counters"]
        );
        // 4 plain GPUs, then 4 x (the full GPU + 7 + 4 + 3 + 2 + 1 + 1 MIG devices).
        assert_eq!(pool.devices.len(), 4 + 4 * 19);
        assert_eq!(pool.devices[4].name, "gpu-4");
        assert_eq!(pool.devices[5].name, "gpu-4-mig-1g10gb-0");
        let names: std::collections::BTreeSet<&str> = pool.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names.len(), pool.devices.len(), "device names are unique in the pool");
        assert_eq!(gpu_pool(&inv, &MigInventory::default(), &Unhealthy::new(), &now).devices, plain);
    }
}
