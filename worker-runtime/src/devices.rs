//! The devices this container got, from the environment phalanx-dra-driver's CDI specs
//! inject (see `dra-driver/src/cdi.rs`): per GPU `PHALANX_GPU_<index>_*`, per NIC
//! `PHALANX_NIC_<index>_*`, per claim `PHALANX_CLAIM_<UID>_{NAME,GPUS,NICS}`.

use std::collections::BTreeMap;

use serde::Serialize;

/// One GPU as the driver describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Gpu {
    /// The node-wide index (`gpu-<index>` in the ResourceSlice).
    pub index: u32,
    /// `GPU-…`.
    pub uuid: String,
    /// PCI bus id.
    pub pci_bus_id: String,
    /// `pci<domain>:<bus>`.
    pub pcie_root: Option<String>,
    /// NUMA node.
    pub numa_node: Option<i64>,
    /// NVLink domain (multi-node NVLink spans nodes).
    pub nvlink_domain: Option<String>,
    /// NVLink island inside the node.
    pub nvlink_island: Option<String>,
}

/// One NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// The node-wide index (`nic-<index>`).
    pub index: u32,
    /// Network interface.
    pub interface: String,
    /// RDMA device, e.g. `mlx5_0`.
    pub rdma_device: String,
    /// PCI bus id.
    pub pci_bus_id: String,
    /// `pci<domain>:<bus>`.
    pub pcie_root: Option<String>,
    /// NUMA node.
    pub numa_node: Option<i64>,
    /// `compute` or `storage`.
    pub role: String,
}

/// One claim and the device names it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Claim {
    /// `namespace/name`.
    pub name: String,
    /// `gpu-<i>` names.
    pub gpus: Vec<String>,
    /// `nic-<i>` names.
    pub nics: Vec<String>,
}

/// Everything the container got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Devices {
    /// GPUs by index.
    pub gpus: Vec<Gpu>,
    /// NICs by index.
    pub nics: Vec<Nic>,
    /// Claims by UID key.
    pub claims: BTreeMap<String, Claim>,
}

fn opt(v: Option<&String>) -> Option<String> {
    v.filter(|s| !s.is_empty()).cloned()
}

impl Devices {
    /// Reads them from an environment.
    pub fn from_env(env: &BTreeMap<String, String>) -> Devices {
        let mut gpus: BTreeMap<u32, BTreeMap<&str, &String>> = BTreeMap::new();
        let mut nics: BTreeMap<u32, BTreeMap<&str, &String>> = BTreeMap::new();
        let mut claims: BTreeMap<String, Claim> = BTreeMap::new();
        for (key, value) in env {
            if let Some(rest) = key.strip_prefix("PHALANX_GPU_") {
                if let Some((i, field)) = rest.split_once('_')
                    && let Ok(i) = i.parse()
                {
                    gpus.entry(i).or_default().insert(field, value);
                }
            } else if let Some(rest) = key.strip_prefix("PHALANX_NIC_") {
                if let Some((i, field)) = rest.split_once('_')
                    && let Ok(i) = i.parse()
                {
                    nics.entry(i).or_default().insert(field, value);
                }
            } else if let Some(rest) = key.strip_prefix("PHALANX_CLAIM_") {
                let list = |v: &str| v.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
                if let Some(uid) = rest.strip_suffix("_GPUS") {
                    claims.entry(uid.to_owned()).or_default().gpus = list(value);
                } else if let Some(uid) = rest.strip_suffix("_NICS") {
                    claims.entry(uid.to_owned()).or_default().nics = list(value);
                } else if let Some(uid) = rest.strip_suffix("_NAME") {
                    claims.entry(uid.to_owned()).or_default().name = value.clone();
                }
            }
        }
        let num = |v: Option<&&String>| v.and_then(|s| s.parse::<i64>().ok());
        Devices {
            gpus: gpus
                .into_iter()
                .filter(|(_, f)| f.contains_key("UUID"))
                .map(|(index, f)| Gpu {
                    index,
                    uuid: f["UUID"].clone(),
                    pci_bus_id: f.get("PCI_BUS_ID").map(|s| s.to_string()).unwrap_or_default(),
                    pcie_root: opt(f.get("PCIE_ROOT").copied()),
                    numa_node: num(f.get("NUMA_NODE")),
                    nvlink_domain: opt(f.get("NVLINK_DOMAIN").copied()),
                    nvlink_island: opt(f.get("NVLINK_ISLAND").copied()),
                })
                .collect(),
            nics: nics
                .into_iter()
                .filter(|(_, f)| f.contains_key("NAME"))
                .map(|(index, f)| Nic {
                    index,
                    interface: f.get("INTERFACE").map(|s| s.to_string()).unwrap_or_default(),
                    rdma_device: f.get("RDMA_DEVICE").map(|s| s.to_string()).unwrap_or_default(),
                    pci_bus_id: f.get("PCI_BUS_ID").map(|s| s.to_string()).unwrap_or_default(),
                    pcie_root: opt(f.get("PCIE_ROOT").copied()),
                    numa_node: num(f.get("NUMA_NODE")),
                    role: f.get("ROLE").map(|s| s.to_string()).unwrap_or_default(),
                })
                .collect(),
            claims,
        }
    }

    /// The GPU named `gpu-<i>`.
    pub fn gpu(&self, name: &str) -> Option<&Gpu> {
        let i: u32 = name.strip_prefix("gpu-")?.parse().ok()?;
        self.gpus.iter().find(|g| g.index == i)
    }

    /// The NIC named `nic-<i>`.
    pub fn nic(&self, name: &str) -> Option<&Nic> {
        let i: u32 = name.strip_prefix("nic-")?.parse().ok()?;
        self.nics.iter().find(|n| n.index == i)
    }
}

#[cfg(test)]
pub(crate) fn sample_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_owned(), v.to_owned());
    };
    for (i, root, numa) in [(0, "pci0000:17", "0"), (1, "pci0000:3f", "0")] {
        set(&format!("PHALANX_GPU_{i}_UUID"), &format!("GPU-{i}"));
        set(&format!("PHALANX_GPU_{i}_PCI_BUS_ID"), &format!("0000:{i}0:00.0"));
        set(&format!("PHALANX_GPU_{i}_PCIE_ROOT"), root);
        set(&format!("PHALANX_GPU_{i}_NUMA_NODE"), numa);
        set(&format!("PHALANX_GPU_{i}_NVLINK_DOMAIN"), "node-a.nvswitch");
        set(&format!("PHALANX_GPU_{i}_NVLINK_ISLAND"), "node-a.nvswitch");
    }
    for (i, root) in [(0, "pci0000:17"), (1, "pci0000:3f")] {
        set(&format!("PHALANX_NIC_{i}_NAME"), &format!("nic-{i}"));
        set(&format!("PHALANX_NIC_{i}_INTERFACE"), &format!("ibp{i}s0"));
        set(&format!("PHALANX_NIC_{i}_RDMA_DEVICE"), &format!("mlx5_{i}"));
        set(&format!("PHALANX_NIC_{i}_PCIE_ROOT"), root);
        set(&format!("PHALANX_NIC_{i}_ROLE"), "compute");
    }
    set("PHALANX_CLAIM_AAA_GPUS", "gpu-0,gpu-1");
    set("PHALANX_CLAIM_AAA_NAME", "default/gpus");
    set("PHALANX_CLAIM_BBB_NICS", "nic-0,nic-1");
    set("PHALANX_CLAIM_BBB_NAME", "default/nics");
    set("PHALANX_NODE_NAME", "node-a");
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drivers_env_becomes_devices_and_claims() {
        let d = Devices::from_env(&sample_env());
        assert_eq!(d.gpus.len(), 2);
        assert_eq!(d.gpu("gpu-1").unwrap().pcie_root.as_deref(), Some("pci0000:3f"));
        assert_eq!(d.gpu("gpu-1").unwrap().numa_node, Some(0));
        assert_eq!(d.nic("nic-0").unwrap().rdma_device, "mlx5_0");
        assert_eq!(d.claims["AAA"].gpus, ["gpu-0", "gpu-1"]);
        assert_eq!(d.claims["BBB"].name, "default/nics");
        assert!(Devices::from_env(&BTreeMap::new()).gpus.is_empty());
    }
}
