//! What a container needs from the host's NVIDIA driver to run CUDA, found the way the
//! NVIDIA container toolkit finds it: control device nodes, the user-space driver
//! libraries (the versioned file and the soname links beside it) and the utility
//! binaries, under a driver root (`/` for a driver installed on the host,
//! `/run/nvidia/driver` for the GPU operator's driver container).
//!
//! This becomes the node-wide base CDI device (`k8s.gpu.phalanx.dev/gpu=base`, see
//! [`crate::cdi::base_spec`]) that every prepared GPU claim adds to its containers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::discovery::NodeInventory;

/// Control device nodes, in the order the toolkit lists them.
pub const CONTROL_DEVICES: [&str; 4] = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"];

/// Driver libraries for the `compute` and `utility` capabilities (what CUDA and NVML
/// programs load).
pub const LIBRARIES: [&str; 11] = [
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so",
    "libnvidia-opencl.so",
    "libnvidia-allocator.so",
    "libnvidia-cfg.so",
    "libnvidia-pkcs11.so",
    "libnvidia-pkcs11-openssl3.so",
];

/// Library directories searched, in order.
pub const LIBRARY_DIRS: [&str; 7] = [
    "usr/lib64",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib",
];

/// Utility binaries (nvidia-smi, MPS).
pub const BINARIES: [&str; 5] =
    ["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"];

/// Binary directories searched, in order.
pub const BINARY_DIRS: [&str; 4] = ["usr/bin", "usr/sbin", "bin", "sbin"];

/// A file of the host mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mount {
    /// Where it is on the host (under the driver root).
    pub host_path: PathBuf,
    /// Where it goes in the container (the path without the driver root).
    pub container_path: PathBuf,
}

/// A symlink to recreate in the container: `link` → `target` (as the host has it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// The link's path in the container.
    pub link: PathBuf,
    /// What it points to (relative, as on the host).
    pub target: PathBuf,
}

/// What was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverFiles {
    /// Control device nodes (host paths under the device root).
    pub device_nodes: Vec<PathBuf>,
    /// Libraries and binaries.
    pub mounts: Vec<Mount>,
    /// Soname and development links beside the libraries.
    pub links: Vec<Link>,
    /// Container directories holding libraries (for the ldcache update).
    pub library_dirs: BTreeSet<PathBuf>,
}

/// The host's driver, rooted at `root`, with device nodes under `dev_root` (both host
/// paths, as the CDI spec names them). An agent in a container sees the host's `/` at
/// `host_mount` (e.g. `/host`) and reads there.
#[derive(Debug, Clone)]
pub struct DriverRoot {
    /// Driver root (host path).
    pub root: PathBuf,
    /// Device root (host path).
    pub dev_root: PathBuf,
    /// Where the host's `/` is visible to this process (`/` when it runs on the host).
    pub host_mount: PathBuf,
}

impl Default for DriverRoot {
    fn default() -> Self {
        DriverRoot { root: PathBuf::from("/"), dev_root: PathBuf::from("/"), host_mount: PathBuf::from("/") }
    }
}

fn strip(root: &Path, path: &Path) -> PathBuf {
    Path::new("/").join(path.strip_prefix(root).unwrap_or(path))
}

/// `libcuda.so.570.124.06` → (`libcuda.so`, `570.124.06`).
fn split_version(file: &str) -> Option<(&str, &str)> {
    let i = file.find(".so.")?;
    Some((&file[..i + 3], &file[i + 4..]))
}

impl DriverRoot {
    /// Everything the toolkit would inject for a driver of `driver_version`: for each
    /// library the file `<name>.<driver_version>` if present, else the highest
    /// `<name>.<n>` that is a regular file; the symlinks in the same directory that
    /// resolve to a mounted library; each binary found first in [`BINARY_DIRS`].
    pub fn discover(&self, driver_version: &str) -> DriverFiles {
        let mut files = DriverFiles::default();
        for name in CONTROL_DEVICES {
            let path = self.dev_root.join("dev").join(name);
            if self.seen(&path).exists() {
                files.device_nodes.push(path);
            }
        }
        let mut found: BTreeSet<&str> = BTreeSet::new();
        for dir in LIBRARY_DIRS {
            let host_dir = self.root.join(dir);
            let Ok(entries) = std::fs::read_dir(self.seen(&host_dir)) else { continue };
            let mut regular: Vec<(String, PathBuf)> = Vec::new();
            let mut symlinks: Vec<(String, PathBuf)> = Vec::new();
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_symlink() {
                    symlinks.push((file.clone(), host_dir.join(&file)));
                } else if kind.is_file() {
                    regular.push((file.clone(), host_dir.join(&file)));
                }
            }
            let mut mounted_here: BTreeSet<String> = BTreeSet::new();
            for lib in LIBRARIES {
                if found.contains(lib) {
                    continue;
                }
                let mut candidates: Vec<&(String, PathBuf)> =
                    regular.iter().filter(|(f, _)| split_version(f).is_some_and(|(base, _)| base == lib)).collect();
                candidates.sort_by(|a, b| a.0.cmp(&b.0));
                let exact = candidates.iter().find(|(f, _)| split_version(f).map(|(_, v)| v) == Some(driver_version));
                if let Some((file, path)) = exact.copied().or(candidates.last().copied()) {
                    files.mounts.push(Mount { host_path: path.clone(), container_path: strip(&self.root, path) });
                    files.library_dirs.insert(strip(&self.root, &host_dir));
                    mounted_here.insert(file.clone());
                    found.insert(lib);
                }
            }
            // Links resolving (through other links) to a mounted library.
            for (file, path) in &symlinks {
                let Ok(target) = std::fs::read_link(self.seen(path)) else { continue };
                let mut end = target.clone();
                for _ in 0..8 {
                    match symlinks.iter().find(|(f, _)| Path::new(f) == end.as_path()) {
                        Some((_, p)) => match std::fs::read_link(self.seen(p)) {
                            Ok(next) => end = next,
                            Err(_) => break,
                        },
                        None => break,
                    }
                }
                if end.to_str().is_some_and(|e| mounted_here.contains(e)) {
                    files.links.push(Link { link: strip(&self.root, &host_dir.join(file)), target });
                }
            }
        }
        for bin in BINARIES {
            if let Some(path) = BINARY_DIRS.iter().map(|d| self.root.join(d).join(bin)).find(|p| self.seen(p).is_file())
            {
                files.mounts.push(Mount { host_path: path, container_path: Path::new("/usr/bin").join(bin) });
            }
        }
        files.links.sort();
        files
    }

    /// Sets each GPU's device node to `<dev root>/dev/nvidia<index>` where that exists,
    /// and to none where it does not (fake hardware without a fake device root).
    pub fn resolve_device_nodes(&self, inventory: &mut NodeInventory) {
        for gpu in &mut inventory.gpus {
            let node = self.dev_root.join("dev").join(format!("nvidia{}", gpu.index));
            gpu.device_nodes = if self.seen(&node).exists() { vec![node.display().to_string()] } else { Vec::new() };
        }
    }

    /// Where this process sees the host path `host`.
    pub fn seen(&self, host: &Path) -> PathBuf {
        self.host_mount.join(host.strip_prefix("/").unwrap_or(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, path: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x").unwrap();
    }

    #[test]
    fn finds_the_versioned_libraries_their_links_and_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        touch(r, "usr/lib/x86_64-linux-gnu/libcuda.so.570.124.06");
        touch(r, "usr/lib/x86_64-linux-gnu/libcuda.so.535.1.1");
        touch(r, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.570.124.06");
        touch(r, "usr/lib/x86_64-linux-gnu/libunrelated.so.1");
        let libdir = r.join("usr/lib/x86_64-linux-gnu");
        std::os::unix::fs::symlink("libcuda.so.570.124.06", libdir.join("libcuda.so.1")).unwrap();
        std::os::unix::fs::symlink("libcuda.so.1", libdir.join("libcuda.so")).unwrap();
        std::os::unix::fs::symlink("libcuda.so.535.1.1", libdir.join("libcuda.so.old")).unwrap();
        touch(r, "usr/bin/nvidia-smi");
        touch(r, "dev/nvidiactl");
        touch(r, "dev/nvidia0");
        let root = DriverRoot { root: r.to_owned(), dev_root: r.to_owned(), ..Default::default() };
        let files = root.discover("570.124.06");
        let containers: Vec<_> = files.mounts.iter().map(|m| m.container_path.display().to_string()).collect();
        assert_eq!(
            containers,
            [
                "/usr/lib/x86_64-linux-gnu/libcuda.so.570.124.06",
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.570.124.06",
                "/usr/bin/nvidia-smi"
            ]
        );
        assert_eq!(files.device_nodes, vec![r.join("dev/nvidiactl")]);
        let links: Vec<_> =
            files.links.iter().map(|l| (l.link.display().to_string(), l.target.display().to_string())).collect();
        assert_eq!(
            links,
            [
                ("/usr/lib/x86_64-linux-gnu/libcuda.so".to_owned(), "libcuda.so.1".to_owned()),
                ("/usr/lib/x86_64-linux-gnu/libcuda.so.1".to_owned(), "libcuda.so.570.124.06".to_owned()),
            ]
        );
        assert_eq!(files.library_dirs, BTreeSet::from([PathBuf::from("/usr/lib/x86_64-linux-gnu")]));
    }

    #[test]
    fn in_a_container_the_host_is_read_under_its_mount_and_named_by_host_paths() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path();
        touch(host, "run/nvidia/driver/usr/lib64/libcuda.so.570.124.06");
        touch(host, "dev/nvidia-uvm");
        let root = DriverRoot { root: "/run/nvidia/driver".into(), dev_root: "/".into(), host_mount: host.to_owned() };
        let files = root.discover("570.124.06");
        assert_eq!(files.mounts[0].host_path, Path::new("/run/nvidia/driver/usr/lib64/libcuda.so.570.124.06"));
        assert_eq!(files.mounts[0].container_path, Path::new("/usr/lib64/libcuda.so.570.124.06"));
        assert_eq!(files.device_nodes, vec![PathBuf::from("/dev/nvidia-uvm")]);
    }

    #[test]
    fn an_empty_root_gives_nothing_and_other_versions_are_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let root = DriverRoot { root: dir.path().to_owned(), dev_root: dir.path().to_owned(), ..Default::default() };
        assert_eq!(root.discover("570.124.06"), DriverFiles::default());
        touch(dir.path(), "usr/lib64/libcuda.so.580.1.2");
        let files = root.discover("570.124.06");
        assert_eq!(files.mounts[0].container_path, Path::new("/usr/lib64/libcuda.so.580.1.2"));
    }
}
