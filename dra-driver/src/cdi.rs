//! CDI specs, one transient spec per claim: what the container runtime injects into
//! the containers that use the claim.
//!
//! File `<dir>/k8s.gpu.phalanx.dev-gpu_<claimUID>.json`, kind `k8s.gpu.phalanx.dev/gpu`,
//! device names `<claimUID>-<device>`, IDs `k8s.gpu.phalanx.dev/gpu=<claimUID>-<device>`.
//!
//! Environment the worker runtime reads (lists are comma-separated, in device order):
//! - spec-wide: `PHALANX_CLAIM_UID`, `PHALANX_NODE_NAME`, `PHALANX_GPU_DEVICES` (device
//!   names), `PHALANX_GPU_UUIDS`, `PHALANX_GPU_INDEXES`, `PHALANX_NVLINK_DOMAINS`,
//!   `PHALANX_NUMA_NODES`, `PHALANX_PCIE_ROOTS` (empty entries where unknown), and
//!   `NVIDIA_VISIBLE_DEVICES` (the UUIDs);
//! - per device `i` (its index): `PHALANX_GPU_<i>_UUID`, `PHALANX_GPU_<i>_PCI_BUS_ID`,
//!   `PHALANX_GPU_<i>_PCIE_ROOT`, `PHALANX_GPU_<i>_NUMA_NODE`,
//!   `PHALANX_GPU_<i>_NVLINK_DOMAIN`, `PHALANX_GPU_<i>_NVLINK_ISLAND`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::discovery::Gpu;

/// CDI vendor.
pub const VENDOR: &str = "k8s.gpu.phalanx.dev";
/// CDI class.
pub const CLASS: &str = "gpu";
/// Lowest CDI version with everything we use.
pub const CDI_VERSION: &str = "0.3.0";

/// Why a spec could not be written or removed.
#[derive(Debug, thiserror::Error)]
#[error("CDI spec {path}: {source}")]
pub struct Error {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: std::io::Error,
}

/// Writes and removes the per-claim specs in one directory (default `/var/run/cdi`).
#[derive(Debug, Clone)]
pub struct CdiWriter {
    dir: PathBuf,
}

/// The qualified CDI device ID of `device` prepared for claim `claim_uid`.
pub fn device_id(claim_uid: &str, device: &str) -> String {
    format!("{VENDOR}/{CLASS}={claim_uid}-{device}")
}

fn list(values: impl Iterator<Item = String>) -> String {
    values.collect::<Vec<_>>().join(",")
}

/// The spec for claim `claim_uid` on `node` holding `gpus`.
pub fn claim_spec(claim_uid: &str, node: &str, gpus: &[&Gpu]) -> Value {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let uuids = list(gpus.iter().map(|g| g.uuid.clone()));
    let env = vec![
        format!("PHALANX_CLAIM_UID={claim_uid}"),
        format!("PHALANX_NODE_NAME={node}"),
        format!("PHALANX_GPU_DEVICES={}", list(gpus.iter().map(|g| g.device_name()))),
        format!("PHALANX_GPU_UUIDS={uuids}"),
        format!("PHALANX_GPU_INDEXES={}", list(gpus.iter().map(|g| g.index.to_string()))),
        format!("PHALANX_NVLINK_DOMAINS={}", list(gpus.iter().map(|g| opt(g.nvlink_domain.clone())))),
        format!("PHALANX_NUMA_NODES={}", list(gpus.iter().map(|g| opt(g.numa_node.map(|n| n.to_string()))))),
        format!("PHALANX_PCIE_ROOTS={}", list(gpus.iter().map(|g| opt(g.pcie_root.clone())))),
        format!("NVIDIA_VISIBLE_DEVICES={uuids}"),
    ];
    let devices: Vec<Value> = gpus
        .iter()
        .map(|g| {
            let i = g.index;
            let mut edits = json!({ "env": [
                format!("PHALANX_GPU_{i}_UUID={}", g.uuid),
                format!("PHALANX_GPU_{i}_PCI_BUS_ID={}", g.pci_bus_id),
                format!("PHALANX_GPU_{i}_PCIE_ROOT={}", opt(g.pcie_root.clone())),
                format!("PHALANX_GPU_{i}_NUMA_NODE={}", opt(g.numa_node.map(|n| n.to_string()))),
                format!("PHALANX_GPU_{i}_NVLINK_DOMAIN={}", opt(g.nvlink_domain.clone())),
                format!("PHALANX_GPU_{i}_NVLINK_ISLAND={}", opt(g.nvlink_island.clone())),
            ] });
            if !g.device_nodes.is_empty() {
                edits["deviceNodes"] = g.device_nodes.iter().map(|p| json!({ "path": p })).collect();
            }
            json!({ "name": format!("{claim_uid}-{}", g.device_name()), "containerEdits": edits })
        })
        .collect();
    json!({
        "cdiVersion": CDI_VERSION,
        "kind": format!("{VENDOR}/{CLASS}"),
        "devices": devices,
        "containerEdits": { "env": env },
    })
}

impl CdiWriter {
    /// Specs go to `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CdiWriter { dir: dir.into() }
    }

    /// The transient spec file of claim `claim_uid`.
    pub fn spec_path(&self, claim_uid: &str) -> PathBuf {
        self.dir.join(format!("{VENDOR}-{CLASS}_{claim_uid}.json"))
    }

    /// Writes (or rewrites) the spec of a claim, atomically.
    pub fn write(&self, claim_uid: &str, spec: &Value) -> Result<PathBuf, Error> {
        let path = self.spec_path(claim_uid);
        let bytes = serde_json::to_vec_pretty(spec).expect("spec serialises");
        crate::checkpoint::write_atomic(&path, &bytes).map_err(|source| Error { path: path.clone(), source })?;
        Ok(path)
    }

    /// Removes the spec of a claim; a missing file is fine.
    pub fn remove(&self, claim_uid: &str) -> Result<(), Error> {
        let path = self.spec_path(claim_uid);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error { path, source }),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::profile::{Profile, ProfileDiscovery};
    use crate::discovery::{Discovery, NodeContext};

    #[test]
    fn spec_carries_uuids_indexes_and_topology() {
        let inv =
            ProfileDiscovery::new(Profile::load("hgx-h100-8").unwrap()).discover(&NodeContext::named("n")).unwrap();
        let gpus = [&inv.gpus[1], &inv.gpus[5]];
        let spec = claim_spec("uid-1", "n", &gpus);
        assert_eq!(spec["kind"], "k8s.gpu.phalanx.dev/gpu");
        assert_eq!(spec["devices"][0]["name"], "uid-1-gpu-1");
        let env: Vec<&str> =
            spec["containerEdits"]["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(env.contains(&format!("PHALANX_GPU_UUIDS={},{}", inv.gpus[1].uuid, inv.gpus[5].uuid).as_str()));
        assert!(env.contains(&"PHALANX_GPU_INDEXES=1,5"));
        assert!(env.contains(&"PHALANX_NUMA_NODES=0,1"));
        assert!(env.contains(&"PHALANX_PCIE_ROOTS=pci0000:3f,pci0000:bf"));
        let d1: Vec<&str> = spec["devices"][1]["containerEdits"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(d1.contains(&"PHALANX_GPU_5_NUMA_NODE=1"));
        assert_eq!(device_id("uid-1", "gpu-1"), "k8s.gpu.phalanx.dev/gpu=uid-1-gpu-1");
    }

    #[test]
    fn write_and_remove_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let cdi = CdiWriter::new(dir.path());
        let path = cdi.write("u", &json!({"cdiVersion": CDI_VERSION})).unwrap();
        assert!(path.ends_with("k8s.gpu.phalanx.dev-gpu_u.json"));
        cdi.write("u", &json!({"cdiVersion": CDI_VERSION})).unwrap();
        cdi.remove("u").unwrap();
        assert!(!path.exists());
        cdi.remove("u").unwrap();
    }
}
