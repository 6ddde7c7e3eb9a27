//! Discovery on real GPUs through NVML (`nvml-wrapper`).
//!
//! NVML gives identity, model, memory and PCI placement; sysfs gives the PCIe root and
//! the NUMA node (as Kubernetes' helpers compute them); active NVLink links and their
//! remote PCI addresses give the islands inside the node. The multi-node NVLink domain
//! (NVML fabric info: cluster UUID + clique) is not wrapped by `nvml-wrapper` 0.13 and
//! calling it raw needs `unsafe`, which this workspace forbids; it is taken from the
//! node label `nvidia.com/gpu.clique` (written by GPU feature discovery from the same
//! NVML call, format `<clusterUuid>.<cliqueId>`) when that is set.

use std::collections::BTreeMap;

use nvml_wrapper::Nvml;

use super::sysfs::{self, Sysfs};
use super::{Discovery, Error, Gpu, NodeContext, NodeInventory, bounded_attribute};

/// The node label that carries the multi-node NVLink clique.
pub const CLIQUE_LABEL: &str = "nvidia.com/gpu.clique";

/// NVLink links per GPU NVML can report (`NVML_NVLINK_MAX_LINKS`).
const MAX_LINKS: u32 = 18;

/// Discovery through NVML.
pub struct NvmlDiscovery {
    nvml: Nvml,
    sysfs: Sysfs,
}

impl std::fmt::Debug for NvmlDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlDiscovery").field("sysfs", &self.sysfs).finish()
    }
}

fn nvml_err(call: &str) -> impl Fn(nvml_wrapper::error::NvmlError) -> Error + '_ {
    move |e| Error::Nvml { call: call.to_owned(), message: e.to_string() }
}

impl NvmlDiscovery {
    /// Loads and initialises NVML; fails with [`Error::NvmlUnavailable`] where the
    /// library or the driver is missing.
    pub fn init(sysfs: Sysfs) -> Result<Self, Error> {
        let nvml = Nvml::init().map_err(|e| Error::NvmlUnavailable(e.to_string()))?;
        Ok(NvmlDiscovery { nvml, sysfs })
    }

    /// The NVML handle, for the health source.
    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }
}

/// Which GPUs share an NVLink island, from each GPU's active links.
///
/// `links[i]` holds the normalised bus IDs at the far end of GPU `i`'s active links.
/// A link to another local GPU joins the two; links to anything else (an NVSwitch,
/// visible on HGX PCIe or not at all on NVL72 trays) join every such GPU into one
/// switch island. GPUs without active links get `None`.
pub fn islands_from_links(bus_ids: &[String], links: &[Vec<String>]) -> Vec<Option<usize>> {
    let n = bus_ids.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut switch_member: Option<usize> = None;
    for (i, remotes) in links.iter().enumerate() {
        for remote in remotes {
            let other = match bus_ids.iter().position(|b| b == remote) {
                Some(j) => j,
                None => *switch_member.get_or_insert(i),
            };
            let (a, b) = (find(&mut parent, i), find(&mut parent, other));
            parent[a] = b;
        }
    }
    let mut roots: BTreeMap<usize, usize> = BTreeMap::new();
    (0..n)
        .map(|i| {
            if links[i].is_empty() {
                return None;
            }
            let root = find(&mut parent, i);
            let next = roots.len();
            Some(*roots.entry(root).or_insert(next))
        })
        .collect()
}

/// Turns `570.124.06` into the numeric form used in names and checks.
fn cuda_version(v: i32) -> String {
    format!("{}.{}", nvml_wrapper::cuda_driver_version_major(v), nvml_wrapper::cuda_driver_version_minor(v))
}

impl Discovery for NvmlDiscovery {
    fn discover(&self, node: &NodeContext) -> Result<NodeInventory, Error> {
        let nvml = &self.nvml;
        let driver_version = nvml.sys_driver_version().map_err(nvml_err("nvmlSystemGetDriverVersion"))?;
        let cuda = nvml.sys_cuda_driver_version().map_err(nvml_err("nvmlSystemGetCudaDriverVersion"))?;
        let count = nvml.device_count().map_err(nvml_err("nvmlDeviceGetCount"))?;
        let mut gpus = Vec::new();
        let mut links = Vec::new();
        for i in 0..count {
            let d = nvml.device_by_index(i).map_err(nvml_err("nvmlDeviceGetHandleByIndex"))?;
            let pci = d.pci_info().map_err(nvml_err("nvmlDeviceGetPciInfo"))?;
            let bdf = sysfs::normalize_bus_id(&pci.bus_id)?;
            let cc = d.cuda_compute_capability().map_err(nvml_err("nvmlDeviceGetCudaComputeCapability"))?;
            let minor = d.minor_number().map_err(nvml_err("nvmlDeviceGetMinorNumber"))?;
            let mut remotes = Vec::new();
            for l in 0..MAX_LINKS {
                let link = d.link_wrapper_for(l);
                if link.is_active().unwrap_or(false)
                    && let Ok(remote) = link.remote_pci_info()
                    && let Ok(r) = sysfs::normalize_bus_id(&remote.bus_id)
                {
                    remotes.push(r);
                }
            }
            links.push(remotes);
            gpus.push(Gpu {
                index: minor,
                uuid: d.uuid().map_err(nvml_err("nvmlDeviceGetUUID"))?,
                product_name: d.name().map_err(nvml_err("nvmlDeviceGetName"))?,
                architecture: d.architecture().map(|a| format!("{a:?}")).unwrap_or_else(|_| "Unknown".into()),
                cuda_compute_capability: format!("{}.{}", cc.major, cc.minor),
                memory_bytes: d.memory_info().map_err(nvml_err("nvmlDeviceGetMemoryInfo"))?.total,
                driver_version: driver_version.clone(),
                cuda_driver_version: cuda_version(cuda),
                pcie_root: self.sysfs.pcie_root(&bdf).ok(),
                numa_node: self.sysfs.numa_node(&bdf)?,
                pci_bus_id: bdf,
                nvlink_island: None,
                nvlink_domain: None,
                device_nodes: vec![format!("/dev/nvidia{minor}")],
            });
        }
        let bus_ids: Vec<String> = gpus.iter().map(|g| g.pci_bus_id.clone()).collect();
        let clique = node.labels.get(CLIQUE_LABEL).filter(|c| !c.is_empty()).map(|c| bounded_attribute(c));
        for (gpu, island) in gpus.iter_mut().zip(islands_from_links(&bus_ids, &links)) {
            gpu.nvlink_island = island.map(|i| format!("island-{i}"));
            gpu.nvlink_domain = island
                .map(|i| clique.clone().unwrap_or_else(|| bounded_attribute(&format!("{}.island-{i}", node.name))));
        }
        gpus.sort_by_key(|g| g.index);
        Ok(NodeInventory { gpus, nics: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nvswitch_links_make_one_island() {
        let bus = ids(&["0000:1b:00.0", "0000:43:00.0", "0000:52:00.0"]);
        let sw = ids(&["0000:05:00.0"]);
        let links = vec![sw.clone(), sw.clone(), sw];
        assert_eq!(islands_from_links(&bus, &links), vec![Some(0), Some(0), Some(0)]);
    }

    #[test]
    fn bridged_pairs_make_separate_islands_and_unlinked_gpus_none() {
        let bus = ids(&["0000:01:00.0", "0000:21:00.0", "0000:81:00.0", "0000:a1:00.0", "0000:c1:00.0"]);
        let links = vec![
            ids(&["0000:21:00.0", "0000:21:00.0"]),
            ids(&["0000:01:00.0"]),
            ids(&["0000:a1:00.0"]),
            ids(&["0000:81:00.0"]),
            vec![],
        ];
        assert_eq!(islands_from_links(&bus, &links), vec![Some(0), Some(0), Some(1), Some(1), None]);
    }

    #[test]
    fn nvml_absent_is_reported_clearly() {
        // This machine has no NVIDIA driver; on one that has, this test proves nothing.
        if let Err(e) = NvmlDiscovery::init(Sysfs::default()) {
            let msg = e.to_string();
            assert!(msg.contains("NVML is not available") && msg.contains("--profile"), "{msg}");
        }
    }
}
