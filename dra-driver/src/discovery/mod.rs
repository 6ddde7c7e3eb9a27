//! Device discovery: what GPUs and NICs a node has and how they are wired.
//!
//! One trait, [`Discovery`], with two implementations: [`nvml::NvmlDiscovery`] for real
//! GPUs and [`profile::ProfileDiscovery`] for fake hardware described by a profile file.
//! Both return a plain [`NodeInventory`]; turning it into ResourceSlice devices is the
//! job of [`crate::attributes`].

pub mod fake;
pub mod nvml;
pub mod profile;
pub mod sysfs;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NVML could not be loaded or initialised (no NVIDIA driver on this machine).
    #[error(
        "NVML is not available on this machine ({0}). Run on a node with the NVIDIA driver installed \
         (libnvidia-ml.so.1), or choose fake hardware with --profile <name>"
    )]
    NvmlUnavailable(String),
    /// An NVML query failed.
    #[error("NVML {call} failed: {message}")]
    Nvml {
        /// The NVML call.
        call: String,
        /// NVML's error.
        message: String,
    },
    /// A profile file could not be read.
    #[error("reading profile {path}: {source}")]
    ReadProfile {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A profile file is not valid.
    #[error("profile {path} is invalid: {message}")]
    InvalidProfile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No profile with that name exists.
    #[error("no profile named {name:?} in {dir}; available: {available}")]
    UnknownProfile {
        /// The name asked for.
        name: String,
        /// The directory searched.
        dir: String,
        /// The names found.
        available: String,
    },
    /// sysfs could not be read or parsed.
    #[error("sysfs: {0}")]
    Sysfs(#[from] sysfs::Error),
}

/// The node a discovery runs for: the profile backend derives per-node identities
/// (UUIDs, NVLink domain) from it.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    /// The Node's name.
    pub name: String,
    /// Position of the node among the fake nodes one publisher serves (0 for a real node).
    pub index: usize,
    /// The Node's labels, when known.
    pub labels: BTreeMap<String, String>,
}

impl NodeContext {
    /// A context for node `name` with no labels at index 0.
    pub fn named(name: impl Into<String>) -> Self {
        NodeContext { name: name.into(), ..Default::default() }
    }
}

/// One GPU, with what the scheduler needs to place work on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    /// Device minor / NVML index; the device is published as `gpu-<index>`.
    pub index: u32,
    /// `GPU-xxxxxxxx-...`.
    pub uuid: String,
    /// e.g. `NVIDIA H100 80GB HBM3`.
    pub product_name: String,
    /// e.g. `Hopper`.
    pub architecture: String,
    /// `major.minor`, e.g. `9.0`.
    pub cuda_compute_capability: String,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Kernel driver version, e.g. `570.124.06`.
    pub driver_version: String,
    /// Highest CUDA version the driver supports, e.g. `12.8`.
    pub cuda_driver_version: String,
    /// Extended BDF `dddd:bb:dd.f`, lower case.
    pub pci_bus_id: String,
    /// `pci<domain>:<bus>` of the PCIe root the GPU hangs off, when known.
    pub pcie_root: Option<String>,
    /// NUMA node of the PCI device; `None` where sysfs says -1.
    pub numa_node: Option<i64>,
    /// Name of the NVLink island inside the node (GPUs that reach each other over
    /// NVLink); `None` without active NVLink.
    pub nvlink_island: Option<String>,
    /// NVLink domain shared with every GPU reachable over NVLink, across nodes for
    /// multi-node NVLink; `None` without NVLink.
    pub nvlink_domain: Option<String>,
    /// Device nodes the container needs (`/dev/nvidia<minor>`); empty for fake GPUs.
    #[serde(default)]
    pub device_nodes: Vec<String>,
}

impl Gpu {
    /// The device name in the ResourceSlice.
    pub fn device_name(&self) -> String {
        format!("gpu-{}", self.index)
    }
}

/// One network adapter port (published under `nic.phalanx.dev` by the profile backend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    /// Position among the node's NICs; the device is published as `nic-<index>`.
    pub index: u32,
    /// Network interface, e.g. `ibp24s0`.
    pub interface_name: String,
    /// RDMA device, e.g. `mlx5_0`.
    pub rdma_device: String,
    /// Adapter model, e.g. `ConnectX-7`.
    pub model: String,
    /// `compute` (GPU traffic) or `storage`.
    pub role: String,
    /// Extended BDF `dddd:bb:dd.f`, lower case.
    pub pci_bus_id: String,
    /// `pci<domain>:<bus>`.
    pub pcie_root: Option<String>,
    /// NUMA node.
    pub numa_node: Option<i64>,
}

impl Nic {
    /// The device name in the ResourceSlice.
    pub fn device_name(&self) -> String {
        format!("nic-{}", self.index)
    }
}

/// Everything discovered on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInventory {
    /// GPUs, ordered by index.
    pub gpus: Vec<Gpu>,
    /// NICs, ordered by index (empty for NVML discovery).
    pub nics: Vec<Nic>,
}

impl NodeInventory {
    /// The GPU published as `name`, if any.
    pub fn gpu(&self, name: &str) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.device_name() == name)
    }
}

/// A source of device inventories.
pub trait Discovery: Send + Sync {
    /// Discovers the devices of `node`.
    fn discover(&self, node: &NodeContext) -> Result<NodeInventory, Error>;

    /// The GPUs of `node` in MIG mode, with what each can be partitioned into (published
    /// as partitionable devices, see [`crate::mig`]). None by default: only fake hardware
    /// (profiles with `migEnabled` GPU slots) publishes MIG devices.
    fn discover_mig(&self, node: &NodeContext) -> Result<crate::mig::MigInventory, Error> {
        let _ = node;
        Ok(crate::mig::MigInventory::default())
    }
}

/// 16 bytes in the UUID form NVML prints (`8-4-4-4-12` lower-case hex).
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let h = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A stable made-up UUID: the first 16 bytes of `sha256(seed)` (fake hardware's
/// identities, derived from node and device names).
pub fn uuid_from_seed(seed: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    format_uuid(&bytes)
}

/// Keeps an NVLink domain name within the 64 characters a string attribute may hold:
/// names that fit are kept, longer ones become a prefix plus a hash.
pub fn bounded_attribute(value: &str) -> String {
    use sha2::Digest;
    if value.len() <= 64 {
        return value.to_owned();
    }
    let digest = hex::encode(&sha2::Sha256::digest(value.as_bytes())[..8]);
    let keep: String = value.chars().take(64 - 17).collect();
    format!("{keep}-{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_attribute_keeps_short_and_hashes_long() {
        assert_eq!(bounded_attribute("node-a.island-0"), "node-a.island-0");
        let long = "n".repeat(200);
        let b = bounded_attribute(&long);
        assert_eq!(b.len(), 64);
        assert_ne!(b, bounded_attribute(&"n".repeat(201)), "different inputs stay distinct");
    }
}
