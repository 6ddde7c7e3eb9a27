//! CDI specs, one transient spec per claim: what the container runtime injects into
//! the containers that use the claim.
//!
//! Each driver has its own CDI kind: `k8s.gpu.phalanx.dev/gpu` and
//! `k8s.nic.phalanx.dev/nic`. File `<dir>/<vendor>-<class>_<claimUID>.json`, device
//! names `<claimUID>-<device>`, IDs `<vendor>/<class>=<claimUID>-<device>`.
//!
//! **Environment** (what the worker runtime reads). A container may use several claims
//! of one driver, and CDI merges every spec's edits into one environment where the last
//! writer of a name wins, so no two specs may set one name to different values:
//! - per GPU, keyed by its node-unique index `i` (a GPU in two claims is the same GPU):
//!   `PHALANX_GPU_<i>_UUID`, `_PCI_BUS_ID`, `_PCIE_ROOT`, `_NUMA_NODE`,
//!   `_NVLINK_DOMAIN`, `_NVLINK_ISLAND` (empty where unknown);
//! - per NIC `i`: `PHALANX_NIC_<i>_NAME` (`nic-<i>`), `_INTERFACE`, `_RDMA_DEVICE`,
//!   `_PCI_BUS_ID`, `_PCIE_ROOT`, `_NUMA_NODE`, `_ROLE`;
//! - per claim, keyed by its UID with `-` as `_`: `PHALANX_CLAIM_<uid>_GPUS` or
//!   `PHALANX_CLAIM_<uid>_NICS` (device names in allocation order) and
//!   `PHALANX_CLAIM_<uid>_NAME` (`namespace/name`);
//! - `PHALANX_NODE_NAME` (the same value in every spec of the node).
//!
//! The set of GPUs a container got is the set of `PHALANX_GPU_<i>_UUID` it sees.
//! `NVIDIA_VISIBLE_DEVICES` is not set: it is one list per container and would collide.
//!
//! **The base device** `k8s.gpu.phalanx.dev/gpu=base` (file
//! `k8s.gpu.phalanx.dev-gpu_base.json`, written when the agent starts): what every
//! container with a GPU needs from the host driver to run CUDA, as NVIDIA's toolkit
//! injects it: the control device nodes, the driver libraries and utility binaries
//! ([`crate::driver_root`]), and two `createContainer` hooks run by this binary
//! (`phalanx-dra-driver cdi-hook`): recreate the libraries' soname links, and update the
//! container's linker cache. Each prepared GPU claim lists it with its first device.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::attributes::{GPU_DRIVER, NIC_DRIVER};
use crate::discovery::{Gpu, Nic};
use crate::driver_root::DriverFiles;

/// Name of the node-wide base device of the GPU kind.
pub const BASE_DEVICE: &str = "base";

/// Mount options of driver files (as the NVIDIA toolkit mounts them).
const MOUNT_OPTIONS: [&str; 5] = ["ro", "nosuid", "nodev", "rbind", "rprivate"];

/// A device node edit: the container path is `/dev/<file name>` of the host path (the
/// host path may lie under a device root such as `/run/nvidia/driver`).
fn device_node(host: &str) -> Value {
    let name = Path::new(host).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    json!({ "path": format!("/dev/{name}"), "hostPath": host })
}

/// The base spec: `files` from the driver root; `hook` is the host path of this binary
/// for the `createContainer` hooks (none when there is nothing for them to do).
pub fn base_spec(files: &DriverFiles, hook: Option<&Path>, driver_version: &str) -> Value {
    let mut edits = json!({ "env": [format!("PHALANX_DRIVER_VERSION={driver_version}")] });
    if !files.device_nodes.is_empty() {
        edits["deviceNodes"] = files.device_nodes.iter().map(|p| device_node(&p.display().to_string())).collect();
    }
    if !files.mounts.is_empty() {
        edits["mounts"] = files
            .mounts
            .iter()
            .map(|m| {
                json!({
                    "hostPath": m.host_path,
                    "containerPath": m.container_path,
                    "options": MOUNT_OPTIONS,
                })
            })
            .collect();
    }
    let mut hooks = Vec::new();
    if let Some(hook) = hook {
        let program = hook.display().to_string();
        if !files.links.is_empty() {
            let mut args = vec![program.clone(), "cdi-hook".into(), "create-symlinks".into()];
            for l in &files.links {
                args.push("--link".into());
                args.push(format!("{}::{}", l.target.display(), l.link.display()));
            }
            hooks.push(json!({ "hookName": "createContainer", "path": program, "args": args }));
        }
        if !files.library_dirs.is_empty() {
            let mut args = vec![program.clone(), "cdi-hook".into(), "update-ldcache".into()];
            for d in &files.library_dirs {
                args.push("--folder".into());
                args.push(d.display().to_string());
            }
            hooks.push(json!({ "hookName": "createContainer", "path": program, "args": args }));
        }
    }
    if !hooks.is_empty() {
        edits["hooks"] = Value::Array(hooks);
    }
    json!({
        "cdiVersion": CDI_VERSION,
        "kind": format!("{}/{}", Kind::of(GPU_DRIVER).vendor, Kind::of(GPU_DRIVER).class),
        "devices": [{ "name": BASE_DEVICE, "containerEdits": edits }],
    })
}

/// Lowest CDI version with everything we use: device names start with the claim UID,
/// which may begin with a digit, and CDI allows that from 0.5.0 on (containerd refuses
/// the whole spec, "the spec version must be at least v0.5.0", otherwise).
pub const CDI_VERSION: &str = "0.5.0";

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

/// A driver's CDI kind: vendor `k8s.<driver>` and a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    /// e.g. `k8s.gpu.phalanx.dev`.
    pub vendor: String,
    /// e.g. `gpu`.
    pub class: &'static str,
}

impl Kind {
    /// The kind of one of our drivers (`gpu.phalanx.dev` or `nic.phalanx.dev`).
    pub fn of(driver: &str) -> Kind {
        let class = if driver == NIC_DRIVER { "nic" } else { "gpu" };
        debug_assert!(driver == GPU_DRIVER || driver == NIC_DRIVER || cfg!(test));
        Kind { vendor: format!("k8s.{driver}"), class }
    }

    /// The qualified CDI device ID of `device` prepared for claim `claim_uid`.
    pub fn device_id(&self, claim_uid: &str, device: &str) -> String {
        format!("{}/{}={claim_uid}-{device}", self.vendor, self.class)
    }

    /// The qualified ID of the node-wide base device.
    pub fn base_id(&self) -> String {
        format!("{}/{}={BASE_DEVICE}", self.vendor, self.class)
    }
}

/// Writes and removes one driver's per-claim specs in one directory (default
/// `/var/run/cdi`).
#[derive(Debug, Clone)]
pub struct CdiWriter {
    dir: PathBuf,
    kind: Kind,
}

fn list(values: impl Iterator<Item = String>) -> String {
    values.collect::<Vec<_>>().join(",")
}

/// The claim's part of env names: its UID with `-` as `_`.
pub fn claim_key(claim_uid: &str) -> String {
    claim_uid.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// One claim as the spec names it.
#[derive(Debug, Clone, Copy)]
pub struct ClaimIdentity<'a> {
    /// UID.
    pub uid: &'a str,
    /// `namespace/name`.
    pub name: &'a str,
}

fn spec(kind: &Kind, claim: ClaimIdentity<'_>, node: &str, list_var: &str, devices: Vec<(String, Value)>) -> Value {
    let key = claim_key(claim.uid);
    let names = list(devices.iter().map(|(name, _)| name.clone()));
    let env = vec![
        format!("PHALANX_NODE_NAME={node}"),
        format!("PHALANX_CLAIM_{key}_NAME={}", claim.name),
        format!("PHALANX_CLAIM_{key}_{list_var}={names}"),
    ];
    let devices: Vec<Value> = devices
        .into_iter()
        .map(|(name, edits)| json!({ "name": format!("{}-{name}", claim.uid), "containerEdits": edits }))
        .collect();
    json!({
        "cdiVersion": CDI_VERSION,
        "kind": format!("{}/{}", kind.vendor, kind.class),
        "devices": devices,
        "containerEdits": { "env": env },
    })
}

/// The GPU spec for `claim` on `node` holding `gpus`.
pub fn gpu_claim_spec(claim: ClaimIdentity<'_>, node: &str, gpus: &[&Gpu]) -> Value {
    let devices = gpus
        .iter()
        .map(|g| {
            let i = g.index;
            let mut edits = json!({ "env": [
                format!("PHALANX_GPU_{i}_UUID={}", g.uuid),
                format!("PHALANX_GPU_{i}_PCI_BUS_ID={}", g.pci_bus_id),
                format!("PHALANX_GPU_{i}_PCIE_ROOT={}", opt(&g.pcie_root)),
                format!("PHALANX_GPU_{i}_NUMA_NODE={}", opt(&g.numa_node)),
                format!("PHALANX_GPU_{i}_NVLINK_DOMAIN={}", opt(&g.nvlink_domain)),
                format!("PHALANX_GPU_{i}_NVLINK_ISLAND={}", opt(&g.nvlink_island)),
            ] });
            if !g.device_nodes.is_empty() {
                edits["deviceNodes"] = g.device_nodes.iter().map(|p| device_node(p)).collect();
            }
            (g.device_name(), edits)
        })
        .collect();
    spec(&Kind::of(GPU_DRIVER), claim, node, "GPUS", devices)
}

/// The NIC spec for `claim` on `node` holding `nics`.
pub fn nic_claim_spec(claim: ClaimIdentity<'_>, node: &str, nics: &[&Nic]) -> Value {
    let devices = nics
        .iter()
        .map(|n| {
            let i = n.index;
            let edits = json!({ "env": [
                format!("PHALANX_NIC_{i}_NAME={}", n.device_name()),
                format!("PHALANX_NIC_{i}_INTERFACE={}", n.interface_name),
                format!("PHALANX_NIC_{i}_RDMA_DEVICE={}", n.rdma_device),
                format!("PHALANX_NIC_{i}_PCI_BUS_ID={}", n.pci_bus_id),
                format!("PHALANX_NIC_{i}_PCIE_ROOT={}", opt(&n.pcie_root)),
                format!("PHALANX_NIC_{i}_NUMA_NODE={}", opt(&n.numa_node)),
                format!("PHALANX_NIC_{i}_ROLE={}", n.role),
            ] });
            (n.device_name(), edits)
        })
        .collect();
    spec(&Kind::of(NIC_DRIVER), claim, node, "NICS", devices)
}

impl CdiWriter {
    /// `driver`'s specs go to `dir`.
    pub fn new(dir: impl Into<PathBuf>, driver: &str) -> Self {
        CdiWriter { dir: dir.into(), kind: Kind::of(driver) }
    }

    /// The CDI kind written.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The transient spec file of claim `claim_uid`.
    pub fn spec_path(&self, claim_uid: &str) -> PathBuf {
        self.dir.join(format!("{}-{}_{claim_uid}.json", self.kind.vendor, self.kind.class))
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

    /// Writes the node-wide base spec (see [`base_spec`]).
    pub fn write_base(&self, spec: &Value) -> Result<PathBuf, Error> {
        self.write(BASE_DEVICE, spec)
    }

    /// Removes the base spec.
    pub fn remove_base(&self) -> Result<(), Error> {
        self.remove(BASE_DEVICE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::profile::{Profile, ProfileDiscovery};
    use crate::discovery::{Discovery, NodeContext};
    use std::collections::BTreeMap;

    fn env_of(spec: &Value) -> Vec<String> {
        let mut env: Vec<String> = spec["containerEdits"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .chain(
                spec["devices"].as_array().unwrap().iter().flat_map(|d| d["containerEdits"]["env"].as_array().unwrap()),
            )
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        env.sort();
        env
    }

    #[test]
    fn spec_carries_uuids_indexes_and_topology() {
        let inv =
            ProfileDiscovery::new(Profile::load("hgx-h100-8").unwrap()).discover(&NodeContext::named("n")).unwrap();
        let gpus = [&inv.gpus[1], &inv.gpus[5]];
        let spec = gpu_claim_spec(ClaimIdentity { uid: "uid-1", name: "ns/c" }, "n", &gpus);
        assert_eq!(spec["kind"], "k8s.gpu.phalanx.dev/gpu");
        assert_eq!(spec["devices"][0]["name"], "uid-1-gpu-1");
        let env = env_of(&spec);
        assert!(env.contains(&"PHALANX_CLAIM_UID_1_GPUS=gpu-1,gpu-5".to_owned()), "{env:?}");
        assert!(env.contains(&"PHALANX_CLAIM_UID_1_NAME=ns/c".to_owned()));
        assert!(env.contains(&format!("PHALANX_GPU_1_UUID={}", inv.gpus[1].uuid)));
        assert!(env.contains(&"PHALANX_GPU_5_NUMA_NODE=1".to_owned()));
        assert!(env.contains(&"PHALANX_GPU_5_PCIE_ROOT=pci0000:bf".to_owned()));
        assert_eq!(Kind::of(GPU_DRIVER).device_id("uid-1", "gpu-1"), "k8s.gpu.phalanx.dev/gpu=uid-1-gpu-1");
        assert_eq!(Kind::of(NIC_DRIVER).device_id("u", "nic-0"), "k8s.nic.phalanx.dev/nic=u-nic-0");
    }

    /// Two claims' specs merged into one container (as CDI merges them) never give one
    /// name two values.
    #[test]
    fn two_claims_in_one_container_do_not_collide() {
        let inv =
            ProfileDiscovery::new(Profile::load("hgx-h100-8").unwrap()).discover(&NodeContext::named("n")).unwrap();
        let a = gpu_claim_spec(ClaimIdentity { uid: "a", name: "ns/a" }, "n", &[&inv.gpus[0], &inv.gpus[1]]);
        let b = gpu_claim_spec(ClaimIdentity { uid: "b", name: "ns/b" }, "n", &[&inv.gpus[2]]);
        let nic = nic_claim_spec(ClaimIdentity { uid: "c", name: "ns/c" }, "n", &[&inv.nics[0]]);
        let mut merged: BTreeMap<String, String> = BTreeMap::new();
        for entry in [env_of(&a), env_of(&b), env_of(&nic)].concat() {
            let (k, v) = entry.split_once('=').unwrap();
            if let Some(old) = merged.insert(k.to_owned(), v.to_owned()) {
                assert_eq!(old, v, "{k} set to two values");
            }
        }
        let uuids: Vec<&String> = merged.iter().filter(|(k, _)| k.ends_with("_UUID")).map(|(_, v)| v).collect();
        assert_eq!(uuids.len(), 3, "every GPU of both claims is visible: {merged:?}");
        assert_eq!(merged["PHALANX_CLAIM_A_GPUS"], "gpu-0,gpu-1");
        assert_eq!(merged["PHALANX_CLAIM_B_GPUS"], "gpu-2");
        assert_eq!(merged["PHALANX_CLAIM_C_NICS"], "nic-0");
        assert_eq!(merged["PHALANX_NIC_0_INTERFACE"], inv.nics[0].interface_name);
    }

    #[test]
    fn the_base_spec_injects_driver_files_and_hooks() {
        use crate::driver_root::{Link, Mount};
        let files = DriverFiles {
            device_nodes: vec![PathBuf::from("/run/nvidia/driver/dev/nvidiactl")],
            mounts: vec![Mount {
                host_path: "/run/nvidia/driver/usr/lib64/libcuda.so.570.124.06".into(),
                container_path: "/usr/lib64/libcuda.so.570.124.06".into(),
            }],
            links: vec![Link { link: "/usr/lib64/libcuda.so.1".into(), target: "libcuda.so.570.124.06".into() }],
            library_dirs: [PathBuf::from("/usr/lib64")].into(),
        };
        let spec =
            base_spec(&files, Some(Path::new("/var/lib/kubelet/plugins/gpu.phalanx.dev/bin/hook")), "570.124.06");
        let edits = &spec["devices"][0]["containerEdits"];
        assert_eq!(spec["devices"][0]["name"], BASE_DEVICE);
        assert_eq!(
            edits["deviceNodes"][0],
            json!({ "path": "/dev/nvidiactl", "hostPath": "/run/nvidia/driver/dev/nvidiactl" })
        );
        assert_eq!(edits["mounts"][0]["containerPath"], "/usr/lib64/libcuda.so.570.124.06");
        let hooks = edits["hooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0]["args"][4], "libcuda.so.570.124.06::/usr/lib64/libcuda.so.1");
        assert_eq!(hooks[1]["args"][2], "update-ldcache");
        assert_eq!(Kind::of(GPU_DRIVER).base_id(), "k8s.gpu.phalanx.dev/gpu=base");
        // With nothing found there is still a valid device (CDI refuses one without edits).
        let empty = base_spec(&DriverFiles::default(), None, "1.2.3");
        assert_eq!(empty["devices"][0]["containerEdits"], json!({ "env": ["PHALANX_DRIVER_VERSION=1.2.3"] }));
    }

    #[test]
    fn write_and_remove_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let cdi = CdiWriter::new(dir.path(), GPU_DRIVER);
        let path = cdi.write("u", &json!({"cdiVersion": CDI_VERSION})).unwrap();
        assert!(path.ends_with("k8s.gpu.phalanx.dev-gpu_u.json"));
        cdi.write("u", &json!({"cdiVersion": CDI_VERSION})).unwrap();
        cdi.remove("u").unwrap();
        assert!(!path.exists());
        cdi.remove("u").unwrap();
        let nics = CdiWriter::new(dir.path(), NIC_DRIVER);
        assert!(nics.spec_path("u").ends_with("k8s.nic.phalanx.dev-nic_u.json"));
    }
}
