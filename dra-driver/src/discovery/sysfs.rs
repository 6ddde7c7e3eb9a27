//! PCI facts from sysfs: bus-ID normalisation, the PCIe root of a device and its NUMA
//! node, computed the way Kubernetes' `deviceattribute` helpers do.

use std::path::{Component, Path, PathBuf};

/// Why a sysfs fact could not be derived.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bus ID is not `dddd:bb:dd.f` (or NVML's `dddddddd:BB:DD.F`).
    #[error("PCI bus ID {0:?} is not of the form dddd:bb:dd.f")]
    BadBusId(String),
    /// The device's sysfs link could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The link does not point under `<sysfs>/devices/pci…/…/<bdf>`.
    #[error("{link} points to {target}, which is not a PCI device path under {root}/devices/pci*")]
    NotPciPath {
        /// The symlink.
        link: PathBuf,
        /// Where it points.
        target: PathBuf,
        /// The sysfs root.
        root: PathBuf,
    },
    /// `numa_node` does not hold an integer.
    #[error("{path} holds {content:?}, not an integer")]
    BadNumaNode {
        /// The file.
        path: PathBuf,
        /// Its content.
        content: String,
    },
}

/// Turns NVML's `00000000:1B:00.0` (or an already short `0000:1b:00.0`) into the
/// lower-case extended BDF sysfs and Kubernetes use.
pub fn normalize_bus_id(bus_id: &str) -> Result<String, Error> {
    let lower = bus_id.trim().to_ascii_lowercase();
    let short = match lower.split_once(':') {
        Some((domain, rest)) if domain.len() == 8 && domain.starts_with("0000") => format!("{}:{rest}", &domain[4..]),
        _ => lower,
    };
    if is_bdf(&short) { Ok(short) } else { Err(Error::BadBusId(bus_id.to_owned())) }
}

/// Whether `s` matches `^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$`.
pub fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        && hex(11..12)
}

/// Parses the content of a `numa_node` file; `-1` (no affinity) gives `None`.
pub fn parse_numa_node(content: &str) -> Option<Result<i64, ()>> {
    match content.trim().parse::<i64>() {
        Ok(n) if n < 0 => None,
        Ok(n) => Some(Ok(n)),
        Err(_) => Some(Err(())),
    }
}

/// The PCIe root (`pci<domain>:<bus>`) from the target of `<sysfs>/bus/pci/devices/<bdf>`.
///
/// A relative target is resolved against the link's directory; the result must lie
/// under `<sysfs>/devices/pci…` and end with `<bdf>`. The root is the first path
/// component after `<sysfs>/devices/`.
pub fn pcie_root_from_link(sysfs: &Path, link: &Path, target: &Path, bdf: &str) -> Result<String, Error> {
    let absolute =
        if target.is_absolute() { target.to_owned() } else { link.parent().unwrap_or(Path::new("/")).join(target) };
    let resolved = lexical_normalize(&absolute);
    let not_pci = || Error::NotPciPath { link: link.to_owned(), target: resolved.clone(), root: sysfs.to_owned() };
    let rest = resolved.strip_prefix(sysfs.join("devices")).map_err(|_| not_pci())?;
    let first = rest.components().next().and_then(|c| c.as_os_str().to_str()).ok_or_else(not_pci)?;
    if !first.starts_with("pci") || resolved.file_name().and_then(|f| f.to_str()) != Some(bdf) {
        return Err(not_pci());
    }
    Ok(first.to_owned())
}

fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Reads PCI facts from a sysfs tree (normally `/sys`; a directory of fake links in tests).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs { root: PathBuf::from("/sys") }
    }
}

impl Sysfs {
    /// A reader rooted at `root` instead of `/sys`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    fn device_link(&self, bdf: &str) -> PathBuf {
        self.root.join("bus/pci/devices").join(bdf)
    }

    /// The PCIe root of device `bdf`.
    pub fn pcie_root(&self, bdf: &str) -> Result<String, Error> {
        if !is_bdf(bdf) {
            return Err(Error::BadBusId(bdf.to_owned()));
        }
        let link = self.device_link(bdf);
        let target = std::fs::read_link(&link).map_err(|source| Error::Read { path: link.clone(), source })?;
        pcie_root_from_link(&self.root, &link, &target, bdf)
    }

    /// The NUMA node of device `bdf`; `None` when the kernel reports -1.
    pub fn numa_node(&self, bdf: &str) -> Result<Option<i64>, Error> {
        let path = self.device_link(bdf).join("numa_node");
        let content = std::fs::read_to_string(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
        match parse_numa_node(&content) {
            None => Ok(None),
            Some(Ok(n)) => Ok(Some(n)),
            Some(Err(())) => Err(Error::BadNumaNode { path, content }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_are_normalised_like_the_device_plugin() {
        assert_eq!(normalize_bus_id("00000000:1B:00.0").unwrap(), "0000:1b:00.0");
        assert_eq!(normalize_bus_id("00000008:01:00.0").unwrap(), "0008:01:00.0");
        assert_eq!(normalize_bus_id("0000:c3:00.0").unwrap(), "0000:c3:00.0");
        assert!(normalize_bus_id("1b:00.0").is_err());
        assert!(normalize_bus_id("0000:1g:00.0").is_err());
    }

    #[test]
    fn numa_node_minus_one_means_none() {
        assert_eq!(parse_numa_node("-1\n"), None);
        assert_eq!(parse_numa_node("1\n"), Some(Ok(1)));
        assert_eq!(parse_numa_node("x"), Some(Err(())));
    }

    #[test]
    fn pcie_root_from_absolute_and_relative_targets() {
        let sys = Path::new("/sys");
        let link = Path::new("/sys/bus/pci/devices/0000:04:1f.0");
        let abs = Path::new("/sys/devices/pci0000:00/0000:00:01.0/0000:04:1f.0");
        assert_eq!(pcie_root_from_link(sys, link, abs, "0000:04:1f.0").unwrap(), "pci0000:00");
        let rel = Path::new("../../../devices/pci0008:00/0008:00:00.0/0008:01:00.0");
        let link = Path::new("/sys/bus/pci/devices/0008:01:00.0");
        assert_eq!(pcie_root_from_link(sys, link, rel, "0008:01:00.0").unwrap(), "pci0008:00");
    }

    #[test]
    fn non_pci_targets_are_rejected() {
        let sys = Path::new("/sys");
        let link = Path::new("/sys/bus/pci/devices/0000:04:1f.0");
        let vmbus = Path::new("/sys/devices/LNXSYSTM:00/VMBUS:00/pci0000:00/0000:04:1f.0");
        assert!(pcie_root_from_link(sys, link, vmbus, "0000:04:1f.0").is_err());
        let other = Path::new("/sys/devices/pci0000:00/0000:00:01.0/0000:05:00.0");
        assert!(pcie_root_from_link(sys, link, other, "0000:04:1f.0").is_err(), "must end with the bdf");
    }

    #[test]
    fn reads_a_fake_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("devices/pci0000:1a/0000:1a:00.0/0000:1b:00.0");
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(device.join("numa_node"), "0\n").unwrap();
        let links = dir.path().join("bus/pci/devices");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink("../../../devices/pci0000:1a/0000:1a:00.0/0000:1b:00.0", links.join("0000:1b:00.0"))
            .unwrap();
        let sysfs = Sysfs::at(dir.path());
        assert_eq!(sysfs.pcie_root("0000:1b:00.0").unwrap(), "pci0000:1a");
        assert_eq!(sysfs.numa_node("0000:1b:00.0").unwrap(), Some(0));
        assert!(sysfs.pcie_root("0000:99:00.0").is_err());
    }
}
