//! Fake hardware from a profile file (`dra-driver/profiles/*.yaml`).
//!
//! A profile describes one machine: GPU models, the GPUs with their PCI placement,
//! NVLink islands (and, for multi-node NVLink, how nodes group into domains), and the
//! NICs. Per-node identities (UUIDs, the NVLink domain) are derived from the node's name,
//! index and labels, so one profile serves thousands of fake nodes.
//!
//! A model may declare what MIG can cut it into (`mig:`); a GPU slot with
//! `migEnabled: true` is in MIG mode and is published as partitionable devices
//! (see [`crate::mig`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::{Discovery, Error, Gpu, Nic, NodeContext, NodeInventory, bounded_attribute, sysfs};
use crate::mig::{MigCapability, MigGpu, MigInventory};

/// The profiles shipped inside the binary: `(name, YAML)`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("hgx-h100-8", include_str!("../../profiles/hgx-h100-8.yaml")),
    ("hgx-h100-8-mig", include_str!("../../profiles/hgx-h100-8-mig.yaml")),
    ("hgx-h200-8", include_str!("../../profiles/hgx-h200-8.yaml")),
    ("hgx-b200-8", include_str!("../../profiles/hgx-b200-8.yaml")),
    ("gb200-nvl72", include_str!("../../profiles/gb200-nvl72.yaml")),
    ("l40s-pcie-8", include_str!("../../profiles/l40s-pcie-8.yaml")),
    ("mixed-small", include_str!("../../profiles/mixed-small.yaml")),
];

/// A GPU model: what every GPU of that kind reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuModel {
    /// NVML product name.
    pub product_name: String,
    /// Architecture name.
    pub architecture: String,
    /// `major.minor`.
    pub cuda_compute_capability: String,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// What MIG can partition it into; absent for GPUs without MIG.
    #[serde(default)]
    pub mig: Option<MigCapability>,
}

/// One GPU slot of the machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuSlot {
    /// NVML index / minor.
    pub index: u32,
    /// Key into [`Profile::models`].
    pub model: String,
    /// Bus ID as NVML or sysfs prints it.
    #[serde(rename = "pciBusID")]
    pub pci_bus_id: String,
    /// `pci<domain>:<bus>`.
    pub pcie_root: String,
    /// NUMA node of the PCI device, if any.
    pub numa_node: Option<i64>,
    /// MIG mode is on (the model must declare `mig`); default off.
    #[serde(default)]
    pub mig_enabled: bool,
}

/// One NIC port.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NicSlot {
    /// Interface name.
    pub interface_name: String,
    /// RDMA device.
    pub rdma_device: String,
    /// Adapter model.
    pub model: String,
    /// `compute` or `storage`.
    pub role: String,
    /// Bus ID.
    #[serde(rename = "pciBusID")]
    pub pci_bus_id: String,
    /// `pci<domain>:<bus>`.
    pub pcie_root: String,
    /// NUMA node.
    pub numa_node: Option<i64>,
}

/// How nodes group into multi-node NVLink domains (e.g. 18 GB200 trays per NVL72 rack).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MultiNode {
    /// Nodes per domain; without the label, node `i` is in domain `i / nodesPerDomain`.
    pub nodes_per_domain: usize,
    /// Node label holding the domain (clique) ID when set, e.g. `nvidia.com/gpu.clique`.
    pub node_label: String,
}

/// NVLink wiring.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NvLink {
    /// GPU indexes that reach each other over NVLink inside the node.
    #[serde(default)]
    pub islands: Vec<Vec<u32>>,
    /// Multi-node NVLink: every island of the node joins the node's domain.
    pub multi_node: Option<MultiNode>,
}

/// A machine shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// What machine this is and where the facts come from.
    pub description: String,
    /// Kernel driver version.
    pub driver_version: String,
    /// CUDA driver version.
    pub cuda_driver_version: String,
    /// GPU models by key.
    pub models: BTreeMap<String, GpuModel>,
    /// The GPUs.
    pub gpus: Vec<GpuSlot>,
    /// NVLink wiring.
    #[serde(default)]
    pub nvlink: NvLink,
    /// The NICs.
    #[serde(default)]
    pub nics: Vec<NicSlot>,
}

impl Profile {
    /// Parses and checks a profile; `origin` names it in errors.
    pub fn parse(origin: &str, yaml: &str) -> Result<Profile, Error> {
        let invalid = |message: String| Error::InvalidProfile { path: origin.to_owned(), message };
        let mut profile: Profile = serde_yaml::from_str(yaml).map_err(|e| invalid(e.to_string()))?;
        for (key, model) in &profile.models {
            if let Some(mig) = &model.mig {
                mig.validate(model.memory_bytes).map_err(|m| invalid(format!("model {key}: mig: {m}")))?;
            }
        }
        let mut indexes = BTreeSet::new();
        for gpu in &mut profile.gpus {
            if !indexes.insert(gpu.index) {
                return Err(invalid(format!("GPU index {} appears twice", gpu.index)));
            }
            let Some(model) = profile.models.get(&gpu.model) else {
                return Err(invalid(format!("GPU {} uses unknown model {:?}", gpu.index, gpu.model)));
            };
            if gpu.mig_enabled && model.mig.is_none() {
                return Err(invalid(format!(
                    "GPU {} sets migEnabled but its model {:?} declares no mig (what MIG can partition it into)",
                    gpu.index, gpu.model
                )));
            }
            gpu.pci_bus_id = sysfs::normalize_bus_id(&gpu.pci_bus_id).map_err(|e| invalid(e.to_string()))?;
        }
        for nic in &mut profile.nics {
            nic.pci_bus_id = sysfs::normalize_bus_id(&nic.pci_bus_id).map_err(|e| invalid(e.to_string()))?;
        }
        let mut in_island = BTreeSet::new();
        for island in &profile.nvlink.islands {
            for index in island {
                if !indexes.contains(index) || !in_island.insert(*index) {
                    return Err(invalid(format!("NVLink island lists GPU {index}, unknown or already in an island")));
                }
            }
        }
        if profile.nvlink.multi_node.as_ref().is_some_and(|m| m.nodes_per_domain == 0) {
            return Err(invalid("multiNode.nodesPerDomain must be at least 1".into()));
        }
        Ok(profile)
    }

    /// A built-in profile by name, or a profile file by path.
    pub fn load(name_or_path: &str) -> Result<Profile, Error> {
        if let Some((name, yaml)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Profile::parse(name, yaml);
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            let yaml = std::fs::read_to_string(path)
                .map_err(|source| Error::ReadProfile { path: name_or_path.to_owned(), source })?;
            return Profile::parse(name_or_path, &yaml);
        }
        Err(Error::UnknownProfile {
            name: name_or_path.to_owned(),
            dir: "the built-in profiles (or a file path)".into(),
            available: BUILTIN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        })
    }

    fn island_of(&self, index: u32) -> Option<usize> {
        self.nvlink.islands.iter().position(|i| i.contains(&index))
    }

    /// The multi-node NVLink domain of `node`, from its label or its index.
    fn multi_node_domain(&self, node: &NodeContext) -> Option<String> {
        let multi = self.nvlink.multi_node.as_ref()?;
        if let Some(value) = node.labels.get(&multi.node_label).filter(|v| !v.is_empty()) {
            return Some(bounded_attribute(value));
        }
        // Like NVML's fabric info: "<clusterUuid>.<cliqueId>", the same for every tray of a rack.
        let domain = node.index / multi.nodes_per_domain;
        let cluster = super::uuid_from_seed(&format!("{}/nvlink-domain/{domain}", self.name));
        Some(format!("{cluster}.{}", domain + 1))
    }
}

/// Discovery backed by a [`Profile`].
#[derive(Debug, Clone)]
pub struct ProfileDiscovery {
    profile: Profile,
}

impl ProfileDiscovery {
    /// Serves `profile`.
    pub fn new(profile: Profile) -> Self {
        ProfileDiscovery { profile }
    }

    /// The profile served.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }
}

impl Discovery for ProfileDiscovery {
    fn discover(&self, node: &NodeContext) -> Result<NodeInventory, Error> {
        let p = &self.profile;
        let multi_domain = p.multi_node_domain(node);
        let gpus = p
            .gpus
            .iter()
            .map(|slot| {
                let model = &p.models[&slot.model];
                let island = p.island_of(slot.index);
                let nvlink_domain = island.map(|i| {
                    multi_domain.clone().unwrap_or_else(|| bounded_attribute(&format!("{}.island-{i}", node.name)))
                });
                Gpu {
                    index: slot.index,
                    uuid: format!("GPU-{}", super::uuid_from_seed(&format!("{}/{}/{}", p.name, node.name, slot.index))),
                    product_name: model.product_name.clone(),
                    architecture: model.architecture.clone(),
                    cuda_compute_capability: model.cuda_compute_capability.clone(),
                    memory_bytes: model.memory_bytes,
                    driver_version: p.driver_version.clone(),
                    cuda_driver_version: p.cuda_driver_version.clone(),
                    pci_bus_id: slot.pci_bus_id.clone(),
                    pcie_root: Some(slot.pcie_root.clone()),
                    numa_node: slot.numa_node,
                    nvlink_island: island.map(|i| format!("island-{i}")),
                    nvlink_domain,
                    device_nodes: Vec::new(),
                }
            })
            .collect();
        let nics = p
            .nics
            .iter()
            .enumerate()
            .map(|(i, slot)| Nic {
                index: i as u32,
                interface_name: slot.interface_name.clone(),
                rdma_device: slot.rdma_device.clone(),
                model: slot.model.clone(),
                role: slot.role.clone(),
                pci_bus_id: slot.pci_bus_id.clone(),
                pcie_root: Some(slot.pcie_root.clone()),
                numa_node: slot.numa_node,
            })
            .collect();
        Ok(NodeInventory { gpus, nics })
    }

    fn discover_mig(&self, _node: &NodeContext) -> Result<MigInventory, Error> {
        let p = &self.profile;
        let gpus = p
            .gpus
            .iter()
            .filter(|slot| slot.mig_enabled)
            .filter_map(|slot| {
                let capability = p.models[&slot.model].mig.clone()?;
                Some(MigGpu { index: slot.index, capability })
            })
            .collect();
        Ok(MigInventory { gpus })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(profile: &str, node: &NodeContext) -> NodeInventory {
        ProfileDiscovery::new(Profile::load(profile).unwrap()).discover(node).unwrap()
    }

    fn count_by<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> BTreeMap<K, usize> {
        let mut m = BTreeMap::new();
        for i in items {
            *m.entry(key(i)).or_default() += 1;
        }
        m
    }

    #[test]
    fn every_builtin_profile_parses() {
        for (name, _) in BUILTIN {
            let p = Profile::load(name).unwrap();
            assert_eq!(&p.name, name);
        }
    }

    #[test]
    fn hgx_h100_has_one_island_two_numa_nodes_and_eight_shared_roots() {
        let inv = inventory("hgx-h100-8", &NodeContext::named("node-a"));
        assert_eq!(inv.gpus.len(), 8);
        assert_eq!(count_by(&inv.gpus, |g| g.numa_node), BTreeMap::from([(Some(0), 4), (Some(1), 4)]));
        let islands: BTreeSet<_> = inv.gpus.iter().map(|g| g.nvlink_domain.clone()).collect();
        assert_eq!(islands.len(), 1);
        assert!(islands.iter().all(Option::is_some));
        let roots: BTreeSet<_> = inv.gpus.iter().map(|g| g.pcie_root.clone().unwrap()).collect();
        assert_eq!(roots.len(), 8, "each GPU on its own root");
        for root in &roots {
            let compute_nics = inv.nics.iter().filter(|n| n.role == "compute" && n.pcie_root.as_ref() == Some(root));
            assert_eq!(compute_nics.count(), 1, "exactly one compute NIC shares {root}");
        }
    }

    #[test]
    fn gb200_trays_share_a_domain_per_eighteen_nodes_or_by_label() {
        let node = |i: usize| NodeContext { name: format!("tray-{i}"), index: i, labels: BTreeMap::new() };
        let domain = |i: usize| inventory("gb200-nvl72", &node(i)).gpus[0].nvlink_domain.clone().unwrap();
        assert_eq!(domain(0), domain(17));
        assert_ne!(domain(17), domain(18));
        let inv = inventory("gb200-nvl72", &node(3));
        assert_eq!(inv.gpus.len(), 4);
        let domains: BTreeSet<_> = inv.gpus.iter().map(|g| &g.pci_bus_id[..4]).collect();
        assert_eq!(domains.len(), 4, "separate PCI domains");
        assert_eq!(count_by(&inv.gpus, |g| g.numa_node), BTreeMap::from([(Some(0), 2), (Some(1), 2)]));
        let mut labelled = node(40);
        labelled.labels.insert("nvidia.com/gpu.clique".into(), "abc.7".into());
        assert_eq!(inventory("gb200-nvl72", &labelled).gpus[2].nvlink_domain.as_deref(), Some("abc.7"));
    }

    #[test]
    fn l40s_has_no_nvlink() {
        let inv = inventory("l40s-pcie-8", &NodeContext::named("n"));
        assert_eq!(inv.gpus.len(), 8);
        assert!(inv.gpus.iter().all(|g| g.nvlink_domain.is_none() && g.nvlink_island.is_none()));
        assert_eq!(count_by(&inv.gpus, |g| g.numa_node), BTreeMap::from([(Some(0), 4), (Some(1), 4)]));
    }

    #[test]
    fn uuids_differ_per_node_and_are_stable() {
        let a = inventory("hgx-h100-8", &NodeContext::named("a"));
        let b = inventory("hgx-h100-8", &NodeContext::named("b"));
        assert_ne!(a.gpus[0].uuid, b.gpus[0].uuid);
        assert_eq!(a, inventory("hgx-h100-8", &NodeContext::named("a")));
    }

    #[test]
    fn the_mig_profile_is_the_hgx_h100_with_mig_mode_on_gpus_4_to_7() {
        let plain = Profile::load("hgx-h100-8").unwrap();
        let mig = Profile::load("hgx-h100-8-mig").unwrap();
        assert_eq!(plain.models, mig.models, "one set of H100 facts");
        let enabled: Vec<u32> = mig.gpus.iter().filter(|g| g.mig_enabled).map(|g| g.index).collect();
        assert_eq!(enabled, [4, 5, 6, 7]);
        assert!(plain.gpus.iter().all(|g| !g.mig_enabled), "MIG mode is off unless a slot turns it on");
        let ctx = NodeContext::named("n");
        assert_eq!(inventory("hgx-h100-8-mig", &ctx).gpus.len(), 8);
        let layout = ProfileDiscovery::new(mig).discover_mig(&ctx).unwrap();
        assert_eq!(layout.gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert!(ProfileDiscovery::new(plain).discover_mig(&ctx).unwrap().gpus.is_empty());
    }

    #[test]
    fn invalid_mig_settings_are_rejected_with_reasons() {
        // GPU 0's line (NIC 0 shares its root and comes later).
        let yaml = BUILTIN[0].1.replacen(
            "pcieRoot: \"pci0000:17\", numaNode: 0 }",
            "pcieRoot: \"pci0000:17\", numaNode: 0, migEnabled: true }",
            1,
        );
        assert!(Profile::parse("ok", &yaml).is_ok(), "the H100 model declares mig");
        let l40s = BUILTIN.iter().find(|(n, _)| *n == "l40s-pcie-8").unwrap().1;
        let yaml = l40s.replacen("model: l40s,", "model: l40s, migEnabled: true,", 1);
        let err = Profile::parse("l40s", &yaml).unwrap_err().to_string();
        assert!(err.contains("sets migEnabled but its model \"l40s\" declares no mig"), "{err}");
        let yaml = BUILTIN[0].1.replace("placements: [0, 4] }", "placements: [0, 5] }");
        let err = Profile::parse("bad", &yaml).unwrap_err().to_string();
        assert!(err.contains("model h100: mig: profile 3g.40gb: placement 5 covers memory slices 5..8"), "{err}");
    }

    #[test]
    fn invalid_profiles_are_rejected_with_reasons() {
        let yaml = BUILTIN[0].1.replace("index: 1,", "index: 0,");
        let err = Profile::parse("dup", &yaml).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
        assert!(Profile::load("no-such-profile").unwrap_err().to_string().contains("hgx-h100-8"));
    }
}
