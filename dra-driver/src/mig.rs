//! MIG (Multi-Instance GPU) as partitionable devices (KEP-4815).
//!
//! A GPU in MIG mode is published as one counter set, `gpu-<i>-counters`, holding what
//! the GPU can be cut into: one counter per memory slice (`memory-slice-<n>`, value 1),
//! `compute-slices`, `multiprocessors` and `memory` (bytes). Every (GPU instance profile,
//! placement) becomes a device `gpu-<i>-mig-<profile>-<start>` that consumes the memory
//! slices it covers plus its share of the other counters; the full GPU `gpu-<i>`
//! consumes all of them. The allocator keeps the sum of what allocated devices consume
//! within the counters, so a full GPU and any of its MIG devices exclude each other,
//! two MIG devices never share a memory slice, and no GPU's counters touch another's.
//!
//! The memory slices alone encode where instances may sit (NVIDIA's placements are in
//! memory-slice units); `compute-slices` also refuses a combination that would need more
//! compute slices than the GPU has, whatever placements a profile file lists.
//! [`MigCapability::validate`] checks the other way round: every combination the slices
//! allow also fits the `multiprocessors` and `memory` counters, so they refuse nothing
//! the hardware allows.
//!
//! Prepare creates nothing: on fake hardware (profiles with `migEnabled: true`) a MIG
//! device is prepared like a GPU, its CDI env naming the instance, its profile and its
//! parent. The driver never creates GPU instances; a MIG device that does not exist
//! fails with [`Error::NotCreated`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::resource::v1::{Counter, CounterSet, Device, DeviceCapacity, DeviceCounterConsumption};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::attributes::{self, NUMA_NODE, PCIE_ROOT, Unhealthy, bytes_quantity};
use crate::discovery::{Gpu, NodeInventory};

/// Counter: compute slices of the GPU.
pub const COMPUTE_SLICES: &str = "compute-slices";
/// Counter: streaming multiprocessors of the GPU.
pub const MULTIPROCESSORS: &str = "multiprocessors";
/// Counter (and device capacity): memory in bytes.
pub const MEMORY: &str = "memory";
/// Most memory slices a profile may declare: with the three other counters a counter set
/// stays within the API's 32, and the check that the counters refuse nothing the
/// hardware allows stays small. MIG GPUs have 4 (A30) or 8.
pub const MAX_MEMORY_SLICES: u32 = 16;
/// Longest profile part of a device name (`1g10gb`): with `gpu-<u32>-mig-` and
/// `-<start>` the name stays a DNS label (≤ 63).
const MAX_PROFILE_KEY: usize = 32;

/// The counter of memory slice `n`.
pub fn memory_slice_counter(n: u32) -> String {
    format!("memory-slice-{n}")
}

/// The counter set of GPU `index`.
pub fn counter_set_name(index: u32) -> String {
    format!("gpu-{index}-counters")
}

/// A profile name as a device name part: lower-case letters and digits (`1g.10gb` →
/// `1g10gb`).
pub fn profile_key(profile: &str) -> String {
    profile.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// The device name of profile `profile` placed at memory slice `start` of GPU `parent`.
pub fn device_name(parent: u32, profile: &str, start: u32) -> String {
    format!("gpu-{parent}-mig-{}-{start}", profile_key(profile))
}

/// `gpu-4-mig-1g10gb-0` → `(4, "1g10gb", 0)`; `None` for anything else.
fn parse_device_name(name: &str) -> Option<(u32, &str, u32)> {
    let (parent, rest) = name.strip_prefix("gpu-")?.split_once("-mig-")?;
    let (key, start) = rest.rsplit_once('-')?;
    Some((parent.parse().ok()?, key, start.parse().ok()?))
}

/// Why a MIG device could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device names a MIG instance this node does not have: the driver does not
    /// create MIG devices.
    #[error(
        "device {device} is a MIG device that does not exist on node {node} (GPU {parent} is not in MIG mode here): \
         this driver does not create MIG devices. Dynamic MIG creation needs a real GPU with MIG mode on and \
         something that creates the GPU instance (nvidia-smi mig -cgi, or NVIDIA's DRA driver); this driver \
         publishes and prepares MIG devices only for fake-hardware profiles whose GPU slots set migEnabled: true"
    )]
    NotCreated {
        /// The device asked for.
        device: String,
        /// Its parent GPU's index.
        parent: u32,
        /// This node.
        node: String,
    },
    /// GPU `parent` is in MIG mode but has no such profile or placement.
    #[error("device {device}: GPU {parent} has no MIG profile {key:?} placed at memory slice {start}; it has {known}")]
    UnknownPartition {
        /// The device asked for.
        device: String,
        /// Its parent GPU's index.
        parent: u32,
        /// The profile part of the name.
        key: String,
        /// The placement start in the name.
        start: u32,
        /// The devices the GPU does have.
        known: String,
    },
}

/// What a GPU model can be partitioned into: the profile file's `mig:` of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigCapability {
    /// Memory slices of the GPU (8 on A100, H100, H200, B200).
    pub memory_slices: u32,
    /// Compute slices (7 on those GPUs).
    pub compute_slices: u32,
    /// Streaming multiprocessors available to MIG instances (the full-GPU instance's).
    pub multiprocessors: u32,
    /// The GPU instance profiles.
    pub profiles: Vec<MigProfile>,
}

/// One GPU instance profile, e.g. `1g.10gb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigProfile {
    /// NVIDIA's name, `<compute slices>g.<memory>gb`.
    pub name: String,
    /// Memory slices one instance uses (the placement size).
    pub memory_slices: u32,
    /// Compute slices one instance uses.
    pub compute_slices: u32,
    /// Streaming multiprocessors of one instance.
    pub multiprocessors: u32,
    /// Memory of one instance in bytes.
    pub memory_bytes: u64,
    /// Memory slices an instance may start at (`nvidia-smi mig -lgipp`).
    pub placements: Vec<u32>,
}

impl MigCapability {
    /// Checks the facts hang together, for a GPU with `gpu_memory` bytes.
    pub fn validate(&self, gpu_memory: u64) -> Result<(), String> {
        if !(1..=MAX_MEMORY_SLICES).contains(&self.memory_slices) {
            return Err(format!("memorySlices must be 1 to {MAX_MEMORY_SLICES}, got {}", self.memory_slices));
        }
        if self.compute_slices == 0 || self.multiprocessors == 0 {
            return Err("computeSlices and multiprocessors must be at least 1".into());
        }
        if self.profiles.is_empty() {
            return Err("profiles must list at least one GPU instance profile".into());
        }
        let mut keys = BTreeSet::new();
        for p in &self.profiles {
            let key = profile_key(&p.name);
            if key.is_empty() || key.len() > MAX_PROFILE_KEY {
                return Err(format!("profile name {:?} must hold 1 to {MAX_PROFILE_KEY} letters or digits", p.name));
            }
            if !keys.insert(key.clone()) {
                return Err(format!("profile {:?}: another profile also gives device names ...-mig-{key}-...", p.name));
            }
            let within = |what: &str, got: u64, max: u64| {
                if got == 0 || got > max {
                    Err(format!("profile {}: {what} must be 1 to {max} (the GPU's), got {got}", p.name))
                } else {
                    Ok(())
                }
            };
            within("memorySlices", p.memory_slices.into(), self.memory_slices.into())?;
            within("computeSlices", p.compute_slices.into(), self.compute_slices.into())?;
            within("multiprocessors", p.multiprocessors.into(), self.multiprocessors.into())?;
            within("memoryBytes", p.memory_bytes, gpu_memory)?;
            if p.placements.is_empty() {
                return Err(format!("profile {}: placements must list at least one start slice", p.name));
            }
            let mut starts = BTreeSet::new();
            for &start in &p.placements {
                if !starts.insert(start) {
                    return Err(format!("profile {}: placement {start} appears twice", p.name));
                }
                if start + p.memory_slices > self.memory_slices {
                    return Err(format!(
                        "profile {}: placement {start} covers memory slices {start}..{} but the GPU has {}",
                        p.name,
                        start + p.memory_slices - 1,
                        self.memory_slices
                    ));
                }
            }
        }
        let (multiprocessors, memory) = self.largest_fill();
        if multiprocessors > u64::from(self.multiprocessors) {
            return Err(format!(
                "instances that fit together in the memory and compute slices use up to {multiprocessors} \
                 multiprocessors, more than the {} given: the counter would refuse combinations the GPU allows",
                self.multiprocessors
            ));
        }
        if memory > gpu_memory {
            return Err(format!(
                "instances that fit together in the memory and compute slices use up to {memory} bytes of memory, \
                 more than the GPU's {gpu_memory}: the counter would refuse combinations the GPU allows"
            ));
        }
        Ok(())
    }

    /// The most multiprocessors and the most memory any set of instances uses that fits
    /// the memory slices (no overlap) and the compute slices.
    fn largest_fill(&self) -> (u64, u64) {
        let parts: Vec<Part> = self
            .profiles
            .iter()
            .flat_map(|p| {
                p.placements.iter().map(move |&start| Part {
                    slices: ((1u64 << p.memory_slices) - 1) << start,
                    compute: p.compute_slices,
                    multiprocessors: p.multiprocessors.into(),
                    memory: p.memory_bytes,
                })
            })
            .collect();
        let mut fill = Fill { parts: &parts, compute_limit: self.compute_slices, best: (0, 0) };
        fill.walk(0, Part::default());
        fill.best
    }

    /// The profile whose device-name part is `key`.
    fn profile(&self, key: &str) -> Option<&MigProfile> {
        self.profiles.iter().find(|p| profile_key(&p.name) == key)
    }
}

/// One placed instance, or the sum of several.
#[derive(Debug, Clone, Copy, Default)]
struct Part {
    slices: u64,
    compute: u32,
    multiprocessors: u64,
    memory: u64,
}

/// Depth-first search over non-overlapping sets of placed instances.
struct Fill<'a> {
    parts: &'a [Part],
    compute_limit: u32,
    best: (u64, u64),
}

impl Fill<'_> {
    fn walk(&mut self, from: usize, used: Part) {
        self.best = (self.best.0.max(used.multiprocessors), self.best.1.max(used.memory));
        for (i, p) in self.parts.iter().enumerate().skip(from) {
            if p.slices & used.slices == 0 && used.compute + p.compute <= self.compute_limit {
                let next = Part {
                    slices: used.slices | p.slices,
                    compute: used.compute + p.compute,
                    multiprocessors: used.multiprocessors + p.multiprocessors,
                    memory: used.memory + p.memory,
                };
                self.walk(i + 1, next);
            }
        }
    }
}

/// One GPU of a node in MIG mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigGpu {
    /// The GPU's index (`gpu-<index>`).
    pub index: u32,
    /// What it can be partitioned into.
    pub capability: MigCapability,
}

/// The GPUs of a node in MIG mode (empty: none, or MIG not known to the backend).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigInventory {
    /// MIG-mode GPUs, by index.
    pub gpus: Vec<MigGpu>,
}

/// One possible MIG instance: a profile placed on a GPU.
#[derive(Debug, Clone, Copy)]
pub struct MigDevice<'a> {
    /// The GPU it is cut from.
    pub parent: &'a Gpu,
    /// Its profile.
    pub profile: &'a MigProfile,
    /// The first memory slice it covers.
    pub start: u32,
}

impl MigDevice<'_> {
    /// The device name in the ResourceSlice.
    pub fn name(&self) -> String {
        device_name(self.parent.index, &self.profile.name, self.start)
    }

    /// Memory slices it covers, as a bit set.
    fn slices(&self) -> u64 {
        ((1u64 << self.profile.memory_slices) - 1) << self.start
    }

    /// A stable made-up `MIG-<uuid>` for fake hardware (a real one exists only once the
    /// instance is created).
    pub fn fake_uuid(&self) -> String {
        let seed = format!("{}/{}/{}", self.parent.uuid, self.profile.name, self.start);
        format!("MIG-{}", crate::discovery::uuid_from_seed(&seed))
    }
}

impl MigInventory {
    /// The MIG capability of GPU `index` when it is in MIG mode.
    pub fn capability(&self, index: u32) -> Option<&MigCapability> {
        self.gpus.iter().find(|g| g.index == index).map(|g| &g.capability)
    }

    /// Every MIG device of `gpu` (in MIG mode with `capability`), profile by profile.
    pub fn partitions<'a>(gpu: &'a Gpu, capability: &'a MigCapability) -> impl Iterator<Item = MigDevice<'a>> + 'a {
        capability.profiles.iter().flat_map(move |profile| {
            profile.placements.iter().map(move |&start| MigDevice { parent: gpu, profile, start })
        })
    }

    /// The MIG device published as `name`, if this node has it.
    pub fn device<'a>(&'a self, inventory: &'a NodeInventory, name: &str) -> Option<MigDevice<'a>> {
        let (parent, key, start) = parse_device_name(name)?;
        let profile = self.capability(parent)?.profile(key).filter(|p| p.placements.contains(&start))?;
        Some(MigDevice { parent: inventory.gpus.iter().find(|g| g.index == parent)?, profile, start })
    }

    /// Why `name`, which this node does not publish, cannot be prepared, when it names
    /// a MIG device; `None` for other names.
    pub fn why_missing(&self, inventory: &NodeInventory, node: &str, name: &str) -> Option<Error> {
        let (parent, key, start) = parse_device_name(name)?;
        let gpu = inventory.gpus.iter().find(|g| g.index == parent);
        match (gpu, self.capability(parent)) {
            (Some(gpu), Some(capability)) => Some(Error::UnknownPartition {
                device: name.to_owned(),
                parent,
                key: key.to_owned(),
                start,
                known: Self::partitions(gpu, capability).map(|d| d.name()).collect::<Vec<_>>().join(", "),
            }),
            _ => Some(Error::NotCreated { device: name.to_owned(), parent, node: node.to_owned() }),
        }
    }

    /// Whether devices `a` and `b` of this node use the same hardware: the same device,
    /// a MIG-mode GPU and one of its MIG devices, or two MIG devices sharing a memory slice.
    pub fn overlap(&self, inventory: &NodeInventory, a: &str, b: &str) -> bool {
        if a == b {
            return true;
        }
        let slices = |name: &str| match self.device(inventory, name) {
            Some(d) => Some((d.parent.index, d.slices())),
            None => inventory.gpu(name).filter(|g| self.capability(g.index).is_some()).map(|g| (g.index, u64::MAX)),
        };
        matches!((slices(a), slices(b)), (Some((pa, sa)), Some((pb, sb))) if pa == pb && sa & sb != 0)
    }
}

fn count(n: impl Into<u64>) -> Counter {
    Counter { value: Quantity(n.into().to_string()) }
}

/// The counter set of `gpu` in MIG mode: everything it can be cut into.
pub fn counter_set(gpu: &Gpu, capability: &MigCapability) -> CounterSet {
    let mut counters: BTreeMap<String, Counter> =
        (0..capability.memory_slices).map(|n| (memory_slice_counter(n), count(1u32))).collect();
    counters.insert(COMPUTE_SLICES.into(), count(capability.compute_slices));
    counters.insert(MULTIPROCESSORS.into(), count(capability.multiprocessors));
    counters.insert(MEMORY.into(), Counter { value: bytes_quantity(gpu.memory_bytes) });
    CounterSet { name: counter_set_name(gpu.index), counters }
}

/// The full-GPU device of a MIG-mode GPU: `device` (as [`attributes::gpu_device`] makes
/// it) consuming the whole counter set, and `migEnabled: true`.
pub fn full_gpu_device(mut device: Device, gpu: &Gpu, capability: &MigCapability) -> Device {
    let set = counter_set(gpu, capability);
    device.attributes.get_or_insert_default().insert("migEnabled".into(), attributes::boolean(true));
    device.consumes_counters = Some(vec![DeviceCounterConsumption {
        counter_set: set.name,
        counters: set.counters,
        compatibility_groups: None,
    }]);
    device
}

/// The ResourceSlice device of one MIG instance. It carries its parent's identity and
/// PCIe/NUMA placement (for alignment with NICs) but no NVLink attributes: MIG instances
/// have no GPU peer-to-peer over NVLink. A fault on the parent taints it too.
pub fn partition_device(mig: &MigDevice<'_>, unhealthy: &Unhealthy, now: &Time) -> Device {
    let (gpu, p) = (mig.parent, mig.profile);
    let mut attrs = BTreeMap::from([
        ("type".to_owned(), attributes::string("mig")),
        ("migProfile".to_owned(), attributes::string(&p.name)),
        ("migPlacementStart".to_owned(), attributes::int(mig.start.into())),
        ("parentUUID".to_owned(), attributes::string(&gpu.uuid)),
        ("parentIndex".to_owned(), attributes::int(gpu.index.into())),
        ("parentPciBusID".to_owned(), attributes::string(&gpu.pci_bus_id)),
        ("productName".to_owned(), attributes::string(&gpu.product_name)),
        ("architecture".to_owned(), attributes::string(&gpu.architecture)),
        ("cudaComputeCapability".to_owned(), attributes::version(&gpu.cuda_compute_capability)),
        ("driverVersion".to_owned(), attributes::version(&gpu.driver_version)),
        ("cudaDriverVersion".to_owned(), attributes::version(&gpu.cuda_driver_version)),
    ]);
    if let Some(root) = &gpu.pcie_root {
        attrs.insert(PCIE_ROOT.into(), attributes::string(root));
    }
    if let Some(numa) = gpu.numa_node {
        attrs.insert(NUMA_NODE.into(), attributes::int(numa));
    }
    let mut counters: BTreeMap<String, Counter> =
        (mig.start..mig.start + p.memory_slices).map(|n| (memory_slice_counter(n), count(1u32))).collect();
    counters.insert(COMPUTE_SLICES.into(), count(p.compute_slices));
    counters.insert(MULTIPROCESSORS.into(), count(p.multiprocessors));
    counters.insert(MEMORY.into(), Counter { value: bytes_quantity(p.memory_bytes) });
    let name = mig.name();
    Device {
        taints: attributes::taints(&name, unhealthy, now)
            .or_else(|| attributes::taints(&gpu.device_name(), unhealthy, now)),
        name,
        attributes: Some(attrs),
        capacity: Some(BTreeMap::from([
            (MEMORY.to_owned(), DeviceCapacity { value: bytes_quantity(p.memory_bytes), request_policy: None }),
            (
                MULTIPROCESSORS.to_owned(),
                DeviceCapacity { value: Quantity(p.multiprocessors.to_string()), request_policy: None },
            ),
        ])),
        consumes_counters: Some(vec![DeviceCounterConsumption {
            counter_set: counter_set_name(gpu.index),
            counters,
            compatibility_groups: None,
        }]),
        ..Default::default()
    }
}

/// Adds a claim's MIG devices to its GPU spec (as [`crate::cdi::gpu_claim_spec`] makes
/// it): one CDI device each, and `PHALANX_CLAIM_<uid>_MIGS` listing them.
///
/// Per MIG device, keyed by parent index `p` and first memory slice `n` (two instances
/// allocated at once never share a slice, so no two claims set one name differently):
/// `PHALANX_MIG_<p>_<n>_NAME` (device name), `_PROFILE`, `_UUID`, `_PARENT_UUID`,
/// `_MEMORY_BYTES`, `_MULTIPROCESSORS`, `_PCIE_ROOT`, `_NUMA_NODE`. Not
/// `PHALANX_GPU_<p>_*`: the container did not get the whole GPU.
pub fn extend_claim_spec(spec: &mut Value, claim_uid: &str, devices: &[MigDevice<'_>]) {
    if devices.is_empty() {
        return;
    }
    let opt = |v: Option<String>| v.unwrap_or_default();
    if let Some(list) = spec["devices"].as_array_mut() {
        for d in devices {
            let (p, n, g) = (d.parent.index, d.start, d.parent);
            list.push(json!({ "name": format!("{claim_uid}-{}", d.name()), "containerEdits": { "env": [
                format!("PHALANX_MIG_{p}_{n}_NAME={}", d.name()),
                format!("PHALANX_MIG_{p}_{n}_PROFILE={}", d.profile.name),
                format!("PHALANX_MIG_{p}_{n}_UUID={}", d.fake_uuid()),
                format!("PHALANX_MIG_{p}_{n}_PARENT_UUID={}", g.uuid),
                format!("PHALANX_MIG_{p}_{n}_MEMORY_BYTES={}", d.profile.memory_bytes),
                format!("PHALANX_MIG_{p}_{n}_MULTIPROCESSORS={}", d.profile.multiprocessors),
                format!("PHALANX_MIG_{p}_{n}_PCIE_ROOT={}", opt(g.pcie_root.clone())),
                format!("PHALANX_MIG_{p}_{n}_NUMA_NODE={}", opt(g.numa_node.map(|n| n.to_string()))),
            ] } }));
        }
    }
    let names: Vec<String> = devices.iter().map(MigDevice::name).collect();
    if let Some(env) = spec["containerEdits"]["env"].as_array_mut() {
        env.push(json!(format!("PHALANX_CLAIM_{}_MIGS={}", crate::cdi::claim_key(claim_uid), names.join(","))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::profile::{Profile, ProfileDiscovery};
    use crate::discovery::{Discovery, NodeContext};

    fn h100() -> MigCapability {
        Profile::load("hgx-h100-8").unwrap().models["h100"].mig.clone().expect("the H100 model is MIG capable")
    }

    fn node() -> (NodeInventory, MigInventory) {
        node_named("n")
    }

    #[test]
    fn names_are_dns_labels_and_parse_back() {
        assert_eq!(device_name(4, "1g.10gb", 0), "gpu-4-mig-1g10gb-0");
        assert_eq!(device_name(12, "1g.10gb+me", 6), "gpu-12-mig-1g10gbme-6");
        assert_eq!(parse_device_name("gpu-4-mig-3g40gb-4"), Some((4, "3g40gb", 4)));
        assert_eq!(parse_device_name("gpu-4"), None);
        assert_eq!(parse_device_name("gpu-x-mig-1g10gb-0"), None);
        let (inv, mig) = node();
        for d in MigInventory::partitions(&inv.gpus[4], mig.capability(4).unwrap()) {
            let name = d.name();
            assert!(name.len() <= 63 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
    }

    #[test]
    fn h100_facts_pass_validation_and_fill_the_gpu_exactly() {
        let cap = h100();
        cap.validate(85520809984).unwrap();
        // 7g.80gb alone uses every multiprocessor and the most memory (more than 3g.40gb x2).
        assert_eq!(cap.largest_fill(), (132, 85094039552));
        let instances: BTreeMap<&str, usize> =
            cap.profiles.iter().map(|p| (p.name.as_str(), p.placements.len())).collect();
        assert_eq!(
            instances,
            BTreeMap::from([
                ("1g.10gb", 7),
                ("1g.20gb", 4),
                ("2g.20gb", 3),
                ("3g.40gb", 2),
                ("4g.40gb", 1),
                ("7g.80gb", 1)
            ])
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let gpu_memory = 85520809984;
        let check = |edit: &dyn Fn(&mut MigCapability)| {
            let mut cap = h100();
            edit(&mut cap);
            cap.validate(gpu_memory).unwrap_err()
        };
        let err = check(&|c| c.profiles[3].placements = vec![0, 6]);
        assert!(err.contains("3g.40gb: placement 6 covers memory slices 6..9 but the GPU has 8"), "{err}");
        let err = check(&|c| c.profiles[0].placements.push(3));
        assert!(err.contains("1g.10gb: placement 3 appears twice"), "{err}");
        let err = check(&|c| c.profiles[1].name = "1g-10gb".into());
        assert!(err.contains("another profile also gives device names ...-mig-1g10gb-..."), "{err}");
        let err = check(&|c| c.profiles[0].memory_bytes = gpu_memory + 1);
        assert!(err.contains("1g.10gb: memoryBytes must be 1 to"), "{err}");
        let err = check(&|c| c.profiles[5].multiprocessors = 140);
        assert!(err.contains("7g.80gb: multiprocessors must be 1 to 132"), "{err}");
        // With 20 SMs, six 1g.10gb and a 1g.20gb (7 compute slices) need 6 x 20 + 26 = 146.
        let err = check(&|c| c.profiles[0].multiprocessors = 20);
        assert!(err.contains("up to 146 multiprocessors, more than the 132 given"), "{err}");
        let err = check(&|c| c.memory_slices = 40);
        assert!(err.contains("memorySlices must be 1 to 16, got 40"), "{err}");
        let err = check(&|c| c.profiles.clear());
        assert!(err.contains("at least one GPU instance profile"), "{err}");
    }

    #[test]
    fn counters_cover_the_gpu_and_partitions_consume_their_slices() {
        let (inv, mig) = node();
        let gpu = &inv.gpus[4];
        let cap = mig.capability(4).unwrap();
        let set = counter_set(gpu, cap);
        assert_eq!(set.name, "gpu-4-counters");
        assert_eq!(set.counters.len(), 8 + 3);
        assert_eq!(set.counters["memory"].value.0, "81559Mi");
        assert_eq!(set.counters["multiprocessors"].value.0, "132");
        let full = full_gpu_device(attributes::gpu_device(gpu, &Unhealthy::new(), &now()), gpu, cap);
        assert_eq!(full.consumes_counters.as_ref().unwrap()[0].counters, set.counters, "the full GPU takes it all");
        assert_eq!(full.attributes.as_ref().unwrap()["migEnabled"].bool, Some(true));

        let d = mig.device(&inv, "gpu-4-mig-3g40gb-4").unwrap();
        let dev = partition_device(&d, &Unhealthy::new(), &now());
        let used = &dev.consumes_counters.as_ref().unwrap()[0];
        assert_eq!(used.counter_set, "gpu-4-counters");
        let slices: Vec<&str> =
            used.counters.keys().filter(|k| k.starts_with("memory-slice-")).map(String::as_str).collect();
        assert_eq!(slices, ["memory-slice-4", "memory-slice-5", "memory-slice-6", "memory-slice-7"]);
        assert_eq!(used.counters["compute-slices"].value.0, "3");
        let a = dev.attributes.as_ref().unwrap();
        assert_eq!(a["type"].string.as_deref(), Some("mig"));
        assert_eq!(a["migProfile"].string.as_deref(), Some("3g.40gb"));
        assert_eq!(a["parentUUID"].string.as_deref(), Some(gpu.uuid.as_str()));
        assert_eq!(a["parentIndex"].int, Some(4));
        assert_eq!(a[PCIE_ROOT].string, gpu.pcie_root);
        assert!(!a.contains_key("nvlinkDomain") && !a.contains_key("uuid"));
        assert!(a.len() + dev.capacity.as_ref().unwrap().len() <= 32);
        assert_eq!(dev.capacity.as_ref().unwrap()["memory"].value.0, "40448Mi");
    }

    #[test]
    fn a_fault_on_the_parent_taints_its_mig_devices() {
        let (inv, mig) = node();
        let unhealthy = Unhealthy::from([("gpu-5".to_owned(), "xid-79".to_owned())]);
        let on5 = partition_device(&mig.device(&inv, "gpu-5-mig-1g10gb-2").unwrap(), &unhealthy, &now());
        assert_eq!(on5.taints.unwrap()[0].value.as_deref(), Some("xid-79"));
        assert!(
            partition_device(&mig.device(&inv, "gpu-6-mig-1g10gb-2").unwrap(), &unhealthy, &now()).taints.is_none()
        );
    }

    #[test]
    fn overlap_follows_the_memory_slices() {
        let (inv, mig) = node();
        let o = |a, b| mig.overlap(&inv, a, b);
        assert!(o("gpu-4", "gpu-4-mig-1g10gb-6"), "the full GPU overlaps all its instances");
        assert!(o("gpu-4-mig-3g40gb-4", "gpu-4-mig-1g20gb-6"));
        assert!(!o("gpu-4-mig-3g40gb-0", "gpu-4-mig-3g40gb-4"));
        assert!(!o("gpu-4-mig-1g10gb-0", "gpu-5-mig-1g10gb-0"), "another GPU");
        assert!(!o("gpu-4", "gpu-5"));
        assert!(o("gpu-0", "gpu-0"));
    }

    #[test]
    fn missing_mig_devices_are_explained() {
        let (inv, mig) = node();
        let err = mig.why_missing(&inv, "n", "gpu-0-mig-1g10gb-0").unwrap().to_string();
        assert!(err.contains("GPU 0 is not in MIG mode here"), "{err}");
        assert!(err.contains("needs a real GPU with MIG mode on"), "{err}");
        let err = mig.why_missing(&inv, "n", "gpu-4-mig-3g40gb-2").unwrap().to_string();
        assert!(err.contains("no MIG profile \"3g40gb\" placed at memory slice 2"), "{err}");
        assert!(err.contains("gpu-4-mig-3g40gb-4"), "{err}");
        assert!(mig.why_missing(&inv, "n", "gpu-9").is_none());
        let nvml = MigInventory::default();
        assert!(matches!(nvml.why_missing(&inv, "n", "gpu-4-mig-1g10gb-0"), Some(Error::NotCreated { parent: 4, .. })));
    }

    /// The scheduler core's MIG tests (`scheduler/core/tests/dra_mig.rs`) allocate from
    /// this fixture: it must be what the driver publishes. `PHALANX_UPDATE_GOLDEN=1`
    /// rewrites it.
    #[test]
    fn the_scheduler_fixture_is_what_we_publish() {
        use k8s_openapi::api::resource::v1::ResourceSlice;
        let (inv, mig) = node_named("node-a");
        let pool = attributes::gpu_pool(&inv, &mig, &Unhealthy::new(), &now());
        let node = crate::publisher::NodeRef { name: "node-a".into(), uid: "uid-node-a".into() };
        let slices = crate::publisher::desired_pool_slices(
            attributes::GPU_DRIVER,
            &node,
            &pool.devices,
            &pool.shared_counters,
            1,
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scheduler/core/tests/fixtures/hgx-h100-8-mig-slices.yaml");
        if std::env::var_os("PHALANX_UPDATE_GOLDEN").is_some() {
            let header = "# ResourceSlices phalanx-dra-driver publishes for node-a with the hgx-h100-8-mig profile\n\
                          # (written by its test the_scheduler_fixture_is_what_we_publish; PHALANX_UPDATE_GOLDEN=1).\n";
            std::fs::write(path, format!("{header}{}", serde_yaml::to_string(&slices).unwrap())).unwrap();
        }
        let text = std::fs::read_to_string(path).expect("fixture present (PHALANX_UPDATE_GOLDEN=1 writes it)");
        let stored: Vec<ResourceSlice> = serde_yaml::from_str(&text).unwrap();
        assert!(stored == slices, "{path} is stale: PHALANX_UPDATE_GOLDEN=1 rewrites it");
        // Two device slices (80 devices, 64 at most with counters) and one counter slice.
        assert_eq!(slices.len(), 3);
        assert_eq!(slices[2].spec.shared_counters.as_ref().map(Vec::len), Some(4));
    }

    fn node_named(name: &str) -> (NodeInventory, MigInventory) {
        let d = ProfileDiscovery::new(Profile::load("hgx-h100-8-mig").unwrap());
        let ctx = NodeContext::named(name);
        (d.discover(&ctx).unwrap(), d.discover_mig(&ctx).unwrap())
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
    }
}
