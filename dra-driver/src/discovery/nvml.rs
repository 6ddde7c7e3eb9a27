//! Discovery on real GPUs through NVML (`nvml-wrapper`).
//!
//! NVML gives identity, model, memory and PCI placement; sysfs gives the PCIe root and
//! the NUMA node (as Kubernetes' helpers compute them); active NVLink links and their
//! remote PCI addresses give the islands inside the node. The multi-node NVLink domain
//! comes from NVML's GPU fabric info (cluster UUID + clique ID, [`ffi::fabric_info`],
//! which `nvml-wrapper` 0.13 does not wrap) when the GPU is attached to a fabric; else
//! from the node label `nvidia.com/gpu.clique` (GPU feature discovery writes it from the
//! same call, format `<clusterUuid>.<cliqueId>`); else the island is a domain of its own.
//!
//! Tested without a GPU through the project's fake `libnvidia-ml.so`
//! (`dra-driver/fake-nvml`), loaded with [`NvmlDiscovery::init`]'s library path.

pub mod ffi;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::DeviceArchitecture;

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
    library: Option<PathBuf>,
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
    /// Loads and initialises NVML from `library` (default: `libnvidia-ml.so.1` from the
    /// loader's search path); fails with [`Error::NvmlUnavailable`] where the library or
    /// the driver is missing.
    pub fn init(sysfs: Sysfs, library: Option<&Path>) -> Result<Self, Error> {
        let nvml = match library {
            Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
            None => Nvml::init(),
        }
        .map_err(|e| {
            let from = library.map(|p| format!(" from {}", p.display())).unwrap_or_default();
            Error::NvmlUnavailable(format!("loading NVML{from}: {e}"))
        })?;
        Ok(NvmlDiscovery { nvml, sysfs, library: library.map(Path::to_owned) })
    }

    /// The library path it was loaded from, when not the default.
    pub fn library(&self) -> Option<&Path> {
        self.library.as_deref()
    }

    /// The NVML handle, for the health source.
    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }
}

/// Which GPUs share an NVLink island, from each GPU's active links.
///
/// `links[i]` holds, per active link of GPU `i`, the normalised bus ID at its far end
/// (`None` where NVML cannot say: a switch that is not on this node's PCIe, as on NVL72
/// trays). A link to another local GPU joins the two; links to anything else (an
/// NVSwitch, visible on HGX PCIe or not at all) join every such GPU into one switch
/// island. GPUs without active links get `None`.
pub fn islands_from_links(bus_ids: &[String], links: &[Vec<Option<String>>]) -> Vec<Option<usize>> {
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
            let other = match remote.as_ref().and_then(|r| bus_ids.iter().position(|b| b == r)) {
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

/// The architecture's name as the profiles and NVIDIA's documentation write it
/// (`Ada Lovelace`, not the enum's `Ada`); `None` where NVML does not know it.
pub fn architecture_name(a: &DeviceArchitecture) -> Option<&'static str> {
    Some(match a {
        DeviceArchitecture::Kepler => "Kepler",
        DeviceArchitecture::Maxwell => "Maxwell",
        DeviceArchitecture::Pascal => "Pascal",
        DeviceArchitecture::Volta => "Volta",
        DeviceArchitecture::Turing => "Turing",
        DeviceArchitecture::Ampere => "Ampere",
        DeviceArchitecture::Ada => "Ada Lovelace",
        DeviceArchitecture::Hopper => "Hopper",
        DeviceArchitecture::Blackwell => "Blackwell",
        DeviceArchitecture::Unknown => return None,
    })
}

/// Turns the CUDA driver version integer (12080) into `12.8`.
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
        let mut cliques = Vec::new();
        for i in 0..count {
            let d = nvml.device_by_index(i).map_err(nvml_err("nvmlDeviceGetHandleByIndex"))?;
            let pci = d.pci_info().map_err(nvml_err("nvmlDeviceGetPciInfo"))?;
            let bdf = sysfs::normalize_bus_id(&pci.bus_id)?;
            let cc = d.cuda_compute_capability().map_err(nvml_err("nvmlDeviceGetCudaComputeCapability"))?;
            let minor = d.minor_number().map_err(nvml_err("nvmlDeviceGetMinorNumber"))?;
            let mut remotes = Vec::new();
            for l in 0..MAX_LINKS {
                let link = d.link_wrapper_for(l);
                if link.is_active().unwrap_or(false) {
                    remotes.push(link.remote_pci_info().ok().and_then(|r| sysfs::normalize_bus_id(&r.bus_id).ok()));
                }
            }
            links.push(remotes);
            // A GPU without fabric support (PCIe cards, older drivers) is simply not attached.
            cliques.push(ffi::fabric_info(&d).ok().filter(ffi::FabricInfo::attached).map(|f| f.clique()));
            let architecture = d.architecture().ok();
            gpus.push(Gpu {
                index: minor,
                uuid: d.uuid().map_err(nvml_err("nvmlDeviceGetUUID"))?,
                product_name: d.name().map_err(nvml_err("nvmlDeviceGetName"))?,
                architecture: architecture.as_ref().and_then(architecture_name).unwrap_or("Unknown").to_owned(),
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
        let label = node.labels.get(CLIQUE_LABEL).filter(|c| !c.is_empty()).map(|c| bounded_attribute(c));
        for ((gpu, island), clique) in gpus.iter_mut().zip(islands_from_links(&bus_ids, &links)).zip(cliques) {
            gpu.nvlink_island = island.map(|i| format!("island-{i}"));
            gpu.nvlink_domain = island.map(|i| {
                clique
                    .map(|c| bounded_attribute(&c))
                    .or_else(|| label.clone())
                    .unwrap_or_else(|| bounded_attribute(&format!("{}.island-{i}", node.name)))
            });
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
        let sw = vec![Some("0000:05:00.0".to_string())];
        let links = vec![sw.clone(), sw.clone(), sw];
        assert_eq!(islands_from_links(&bus, &links), vec![Some(0), Some(0), Some(0)]);
    }

    #[test]
    fn links_whose_far_end_is_unknown_are_switch_links() {
        let bus = ids(&["0008:01:00.0", "0009:01:00.0"]);
        assert_eq!(islands_from_links(&bus, &[vec![None, None], vec![None]]), vec![Some(0), Some(0)]);
    }

    #[test]
    fn architecture_names_match_the_profiles() {
        assert_eq!(architecture_name(&DeviceArchitecture::Ada), Some("Ada Lovelace"));
        assert_eq!(architecture_name(&DeviceArchitecture::Blackwell), Some("Blackwell"));
        assert_eq!(architecture_name(&DeviceArchitecture::Unknown), None);
    }

    #[test]
    fn bridged_pairs_make_separate_islands_and_unlinked_gpus_none() {
        let bus = ids(&["0000:01:00.0", "0000:21:00.0", "0000:81:00.0", "0000:a1:00.0", "0000:c1:00.0"]);
        let some = |v: &[&str]| ids(v).into_iter().map(Some).collect::<Vec<_>>();
        let links = vec![
            some(&["0000:21:00.0", "0000:21:00.0"]),
            some(&["0000:01:00.0"]),
            some(&["0000:a1:00.0"]),
            some(&["0000:81:00.0"]),
            vec![],
        ];
        assert_eq!(islands_from_links(&bus, &links), vec![Some(0), Some(0), Some(1), Some(1), None]);
    }

    #[test]
    fn nvml_absent_is_reported_clearly() {
        // This machine has no NVIDIA driver; on one that has, this test proves nothing.
        if let Err(e) = NvmlDiscovery::init(Sysfs::default(), None) {
            let msg = e.to_string();
            assert!(msg.contains("NVML is not available") && msg.contains("--profile"), "{msg}");
        }
    }
}
