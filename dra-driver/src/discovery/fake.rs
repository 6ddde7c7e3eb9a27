//! The parts of a fake machine NVML does not cover: the sysfs tree (PCI device links and
//! NUMA nodes) a profile's machine would have. With the project's fake NVML library
//! (`dra-driver/fake-nvml`) the NVML backend then discovers a profile's machine exactly
//! as on real hardware, and both backends can be compared.

use std::path::Path;

use super::profile::Profile;

/// Writes `<root>/devices/<pcieRoot>/<root port>/<bdf>/numa_node` and the link
/// `<root>/bus/pci/devices/<bdf>` (relative, as the kernel's) for every GPU and NIC of
/// `profile`. The root port is `<domain>:<root bus>:00.0`, one bridge below the root
/// complex, as a device behind a PCIe switch or root port shows.
pub fn write_sysfs(profile: &Profile, root: &Path) -> std::io::Result<()> {
    let devices = profile
        .gpus
        .iter()
        .map(|g| (&g.pci_bus_id, &g.pcie_root, g.numa_node))
        .chain(profile.nics.iter().map(|n| (&n.pci_bus_id, &n.pcie_root, n.numa_node)));
    let links = root.join("bus/pci/devices");
    std::fs::create_dir_all(&links)?;
    for (bdf, pcie_root, numa) in devices {
        let port = pcie_root.strip_prefix("pci").map(|r| format!("{r}:00.0")).unwrap_or_else(|| "0000:00:00.0".into());
        let relative = format!("devices/{pcie_root}/{port}/{bdf}");
        let device = root.join(&relative);
        std::fs::create_dir_all(&device)?;
        std::fs::write(device.join("numa_node"), format!("{}\n", numa.unwrap_or(-1)))?;
        let link = links.join(bdf);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(format!("../../../{relative}"), link)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::sysfs::Sysfs;

    #[test]
    fn the_tree_gives_back_every_profile_fact() {
        for (name, _) in crate::discovery::profile::BUILTIN {
            let profile = Profile::load(name).unwrap();
            let dir = tempfile::tempdir().unwrap();
            write_sysfs(&profile, dir.path()).unwrap();
            let sysfs = Sysfs::at(dir.path());
            for gpu in &profile.gpus {
                assert_eq!(sysfs.pcie_root(&gpu.pci_bus_id).unwrap(), gpu.pcie_root, "{name} GPU {}", gpu.index);
                assert_eq!(sysfs.numa_node(&gpu.pci_bus_id).unwrap(), gpu.numa_node, "{name} GPU {}", gpu.index);
            }
        }
    }
}
