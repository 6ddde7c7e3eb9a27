//! Pure model of the cluster topology Phalanx places against: the level tree
//! zone ▸ block ▸ rack ▸ NVLink domain ▸ node ▸ NUMA ▸ PCIe root ▸ device.
//!
//! * [`config`]: which node label or device attribute names each level.
//! * [`device`]: the devices published in `ResourceSlice`s, reduced to what topology needs.
//! * [`tree`]: [`ClusterTopology`], the domains of every node-scope level and the
//!   device groups (NVLink island, NUMA node, PCIe root) inside each node.
//! * [`capacity`]: free device counts per node and per domain, updated in place.
//! * [`interconnect`]: the GPU interconnect as a petgraph graph, link classes and
//!   nominal bandwidths between any two devices.

pub mod capacity;
pub mod config;
pub mod device;
pub mod error;
pub mod interconnect;
pub mod testing;
pub mod tree;

pub use capacity::FreeCapacity;
pub use config::{LevelScope, LevelSource, LevelSpec, TopologyConfig};
pub use device::{AttrValue, DeviceInfo, DeviceKey};
pub use error::TopologyError;
pub use interconnect::{Interconnect, Link, LinkClass};
pub use tree::{ClusterTopology, DevIdx, Domain, DomainIdx, NodeIdx};

/// Well-known attribute and label names (DESIGN.md).
pub mod names {
    /// Driver name of Phalanx GPUs.
    pub const GPU_DRIVER: &str = "gpu.phalanx.dev";
    /// Driver name of the NICs published beside the GPUs.
    pub const NIC_DRIVER: &str = "nic.phalanx.dev";
    /// Multi-node NVLink domain shared by all GPUs that reach each other over NVLink.
    pub const NVLINK_DOMAIN: &str = "gpu.phalanx.dev/nvlinkDomain";
    /// NVLink island inside one node.
    pub const NVLINK_ISLAND: &str = "gpu.phalanx.dev/nvlinkIsland";
    /// GPU architecture (`Hopper`, `Blackwell`, …).
    pub const ARCHITECTURE: &str = "gpu.phalanx.dev/architecture";
    /// Device type (`gpu`, …).
    pub const TYPE: &str = "gpu.phalanx.dev/type";
    /// Standard PCIe root attribute.
    pub const PCIE_ROOT: &str = "resource.kubernetes.io/pcieRoot";
    /// Standard NUMA node attribute.
    pub const NUMA_NODE: &str = "resource.kubernetes.io/numaNode";
    /// Node label of the hostname.
    pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
    /// Node label naming the NVLink clique (GPU feature discovery).
    pub const CLIQUE_LABEL: &str = "nvidia.com/gpu.clique";
}
