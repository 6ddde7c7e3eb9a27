//! Preparing and unpreparing claims on this node: the decisions, over plain data.
//!
//! [`NodeState`] holds the node's GPUs, the checkpoint and the CDI writer. The kubelet
//! plugin fetches each claim and hands it here; this module checks it, refuses devices
//! held by another claim, records `PrepareStarted` → writes the CDI spec → records
//! `PrepareCompleted` with the devices, in that order, so a crash at any point is
//! recoverable from the checkpoint alone.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::ResourceClaim;

use crate::attributes::NIC_DRIVER;
use crate::cdi::{self, CdiWriter, ClaimIdentity};
use crate::checkpoint::{self, Checkpoint, ClaimState, PreparedClaim, PreparedDevice};
use crate::config;
use crate::discovery::NodeInventory;
use crate::mig::{self, MigInventory};
use crate::sharing;

/// Why a claim could not be prepared or unprepared (reported per claim to the kubelet).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The claim has no allocation.
    #[error("claim {0} is not allocated")]
    NotAllocated(String),
    /// The claim with this name has another UID: it was deleted and re-created.
    #[error("claim {name} has UID {got}, expected {expected}: it got replaced")]
    Replaced {
        /// Claim name.
        name: String,
        /// UID the kubelet asked for.
        expected: String,
        /// UID found.
        got: String,
    },
    /// The claim names a device this node does not have.
    #[error("device {pool}/{device} of claim {claim} is not a device of this driver on this node ({node})")]
    UnknownDevice {
        /// Claim.
        claim: String,
        /// Pool in the allocation.
        pool: String,
        /// Device in the allocation.
        device: String,
        /// This node.
        node: String,
    },
    /// A MIG device this node does not have (the driver creates none).
    #[error(transparent)]
    Mig(#[from] mig::Error),
    /// Another claim holds the device (or, for MIG, hardware it shares).
    #[error("device {device} is already prepared for claim {holder} ({holder_uid}); refusing to share it")]
    DeviceBusy {
        /// The device.
        device: String,
        /// `namespace/name` of the claim holding it.
        holder: String,
        /// Its UID.
        holder_uid: String,
    },
    /// Fetching the claim from the apiserver failed.
    #[error("fetching claim {claim}: {source}")]
    Fetch {
        /// `namespace/name`.
        claim: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The checkpoint could not be written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    /// The CDI spec could not be written or removed.
    #[error(transparent)]
    Cdi(#[from] cdi::Error),
    /// The claim's opaque `GpuConfig` is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The sharing strategy could not be applied.
    #[error(transparent)]
    Sharing(#[from] sharing::Error),
    /// A MIG device asks for sharing (only whole GPUs are shared).
    #[error(
        "claim {claim}: device {device} is a MIG device; its config asks for {strategy:?} sharing, which only whole GPUs support"
    )]
    MigSharing {
        /// `namespace/name`.
        claim: String,
        /// The device.
        device: String,
        /// The strategy asked for.
        strategy: config::Strategy,
    },
}

/// A claim as the kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
    /// Name.
    pub name: String,
}

/// What the node has prepared, and the means to prepare more.
#[derive(Debug)]
pub struct NodeState {
    driver: String,
    node: String,
    inventory: NodeInventory,
    mig: MigInventory,
    checkpoint: Checkpoint,
    cdi: CdiWriter,
    sharing: sharing::Control,
    sharing_dir: std::path::PathBuf,
}

/// What recovery at startup cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Claims whose prepare completed before the restart (kept).
    pub completed: usize,
    /// Claims whose prepare was cut short (their CDI spec removed, the entry dropped;
    /// the kubelet retries them).
    pub abandoned: Vec<String>,
}

impl NodeState {
    /// Loads the checkpoint and finishes what a crash left half done.
    pub fn recover(
        driver: &str,
        node: &str,
        inventory: NodeInventory,
        checkpoint: Checkpoint,
        cdi: CdiWriter,
    ) -> Result<(NodeState, Recovery), Error> {
        let mig = MigInventory::default();
        // Per-claim sharing state (MPS pipes) beside the checkpoint.
        let sharing_dir = checkpoint.path().parent().unwrap_or(std::path::Path::new("/")).join("mps");
        let mut state = NodeState {
            driver: driver.into(),
            node: node.into(),
            inventory,
            mig,
            checkpoint,
            cdi,
            sharing: sharing::Control::FakeHardware,
            sharing_dir,
        };
        let abandoned: Vec<String> = state
            .checkpoint
            .data
            .prepared_claims
            .iter()
            .filter(|(_, c)| c.state == ClaimState::PrepareStarted)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &abandoned {
            state.cdi.remove(uid)?;
            state.sharing.release(uid, &state.sharing_dir)?;
            state.checkpoint.data.prepared_claims.remove(uid);
        }
        if !abandoned.is_empty() {
            state.checkpoint.save()?;
        }
        let completed = state.checkpoint.data.prepared_claims.len();
        Ok((state, Recovery { completed, abandoned }))
    }

    /// Claims currently recorded, by UID.
    pub fn prepared(&self) -> &BTreeMap<String, PreparedClaim> {
        &self.checkpoint.data.prepared_claims
    }

    /// What `status.devices[].data` says about `device` (identity and placement, as the
    /// container's environment does), or `None` for a device this node does not have.
    pub fn device_data(&self, device: &str) -> Option<serde_json::Value> {
        if let Some(g) = self.inventory.gpu(device) {
            return Some(serde_json::json!({
                "uuid": g.uuid, "productName": g.product_name, "pciBusID": g.pci_bus_id,
                "pcieRoot": g.pcie_root, "numaNode": g.numa_node, "nvlinkDomain": g.nvlink_domain,
            }));
        }
        if let Some(n) = self.inventory.nics.iter().find(|n| n.device_name() == device) {
            return Some(serde_json::json!({
                "interfaceName": n.interface_name, "rdmaDevice": n.rdma_device, "pciBusID": n.pci_bus_id,
                "pcieRoot": n.pcie_root, "numaNode": n.numa_node,
            }));
        }
        self.mig.device(&self.inventory, device).map(
            |m| serde_json::json!({ "uuid": m.fake_uuid(), "migProfile": m.profile.name, "parentUUID": m.parent.uuid }),
        )
    }

    /// Names of the node's GPUs, each followed by its MIG devices (for a GPU in MIG
    /// mode), with the GPU whose health each one has.
    pub fn device_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for gpu in &self.inventory.gpus {
            out.push((gpu.device_name(), gpu.device_name()));
            if let Some(capability) = self.mig.capability(gpu.index) {
                out.extend(MigInventory::partitions(gpu, capability).map(|d| (d.name(), gpu.device_name())));
            }
        }
        out
    }

    /// Sets the node's GPUs in MIG mode (none by default): their MIG devices can then be
    /// prepared, and a MIG device and its GPU, or two MIG devices sharing a memory slice,
    /// count as one device for [`Error::DeviceBusy`].
    pub fn with_mig(mut self, mig: MigInventory) -> Self {
        self.mig = mig;
        self
    }

    /// Sets how sharing strategies act on the GPUs (default: fake hardware, container
    /// edits only).
    pub fn with_sharing(mut self, control: sharing::Control) -> Self {
        self.sharing = control;
        self
    }

    /// Replaces the inventory (health changes do not change what is prepared).
    pub fn set_inventory(&mut self, inventory: NodeInventory) {
        self.inventory = inventory;
    }

    /// Devices of a claim already completed: a repeated prepare returns them unchanged.
    pub fn already_prepared(&self, uid: &str) -> Option<Vec<PreparedDevice>> {
        self.prepared().get(uid).filter(|c| c.state == ClaimState::PrepareCompleted).map(|c| c.devices.clone())
    }

    /// Prepares `claim` (fetched from the apiserver for `wanted`).
    pub fn prepare(&mut self, wanted: &ClaimRef, claim: &ResourceClaim) -> Result<Vec<PreparedDevice>, Error> {
        if let Some(devices) = self.already_prepared(&wanted.uid) {
            return Ok(devices);
        }
        let got = claim.metadata.uid.clone().unwrap_or_default();
        if got != wanted.uid {
            return Err(Error::Replaced { name: wanted.name.clone(), expected: wanted.uid.clone(), got });
        }
        let allocation = claim.status.as_ref().and_then(|s| s.allocation.as_ref());
        let Some(allocation) = allocation else { return Err(Error::NotAllocated(wanted.name.clone())) };
        let results = allocation.devices.as_ref().and_then(|d| d.results.clone()).unwrap_or_default();

        // Group ours by device (one device may serve several requests).
        let mut devices: Vec<PreparedDevice> = Vec::new();
        for r in results.iter().filter(|r| r.driver == self.driver) {
            if r.pool != self.node || !self.has_device(&r.device) {
                if let Some(e) =
                    self.mig.why_missing(&self.inventory, &self.node, &r.device).filter(|_| r.pool == self.node)
                {
                    return Err(e.into());
                }
                return Err(Error::UnknownDevice {
                    claim: format!("{}/{}", wanted.namespace, wanted.name),
                    pool: r.pool.clone(),
                    device: r.device.clone(),
                    node: self.node.clone(),
                });
            }
            let admin = r.admin_access.unwrap_or(false);
            match devices.iter_mut().find(|d| d.device_name == r.device) {
                Some(d) => d.request_names.push(r.request.clone()),
                None => devices.push(PreparedDevice {
                    request_names: vec![r.request.clone()],
                    pool_name: r.pool.clone(),
                    device_name: r.device.clone(),
                    cdi_device_ids: vec![self.cdi.kind().device_id(&wanted.uid, &r.device)],
                    admin_access: admin,
                }),
            }
        }
        // The GPU claim's containers also get the node-wide base device (the driver's
        // control nodes, libraries and hooks); once per claim is enough.
        if self.driver != NIC_DRIVER
            && let Some(first) = devices.first_mut()
        {
            first.cdi_device_ids.push(self.cdi.kind().base_id());
        }
        for d in devices.iter().filter(|d| !d.admin_access) {
            if let Some((uid, holder, held)) = self.holder_of(&d.device_name, &wanted.uid) {
                let device = if held == d.device_name {
                    held
                } else {
                    format!("{} (it shares hardware with {held})", d.device_name)
                };
                return Err(Error::DeviceBusy {
                    device,
                    holder: format!("{}/{}", holder.namespace, holder.name),
                    holder_uid: uid,
                });
            }
        }

        // The claim's GpuConfig, per device (a device serving several requests takes its
        // first request's), validated before anything is recorded or run.
        let claim_name = format!("{}/{}", wanted.namespace, wanted.name);
        let device_configs = if self.driver == NIC_DRIVER {
            BTreeMap::new()
        } else {
            let configs = allocation.devices.as_ref().and_then(|d| d.config.clone()).unwrap_or_default();
            let requests: Vec<String> = devices.iter().flat_map(|d| d.request_names.iter().cloned()).collect();
            let by_request = config::effective(&claim_name, &configs, &requests)?;
            let mut out = BTreeMap::new();
            for d in &devices {
                let Some(c) = d.request_names.first().and_then(|r| by_request.get(r)) else { continue };
                if self.inventory.gpu(&d.device_name).is_none() && c.sharing.strategy != config::Strategy::Exclusive {
                    return Err(Error::MigSharing {
                        claim: claim_name,
                        device: d.device_name.clone(),
                        strategy: c.sharing.strategy,
                    });
                }
                out.insert(d.device_name.clone(), c.clone());
            }
            out
        };

        let record = |state| PreparedClaim {
            state,
            namespace: wanted.namespace.clone(),
            name: wanted.name.clone(),
            devices: devices.clone(),
        };
        self.checkpoint.data.prepared_claims.insert(wanted.uid.clone(), record(ClaimState::PrepareStarted));
        self.checkpoint.save()?;
        if !devices.is_empty() {
            let name = format!("{}/{}", wanted.namespace, wanted.name);
            let identity = ClaimIdentity { uid: &wanted.uid, name: &name };
            let spec = if self.driver == NIC_DRIVER {
                let nics: Vec<_> = devices
                    .iter()
                    .filter_map(|d| self.inventory.nics.iter().find(|n| n.device_name() == d.device_name))
                    .collect();
                cdi::nic_claim_spec(identity, &self.node, &nics)
            } else {
                let gpus: Vec<_> = devices.iter().filter_map(|d| self.inventory.gpu(&d.device_name)).collect();
                let migs: Vec<_> =
                    devices.iter().filter_map(|d| self.mig.device(&self.inventory, &d.device_name)).collect();
                let mut spec = cdi::gpu_claim_spec(identity, &self.node, &gpus);
                mig::extend_claim_spec(&mut spec, &wanted.uid, &migs);
                let edits = self.sharing.apply(&claim_name, &wanted.uid, &gpus, &device_configs, &self.sharing_dir);
                match edits {
                    Ok(edits) => edits.extend_spec(&mut spec, &wanted.uid),
                    Err(e) => {
                        // Nothing half-applied stays: the record goes, the kubelet retries.
                        let _ = self.sharing.release(&wanted.uid, &self.sharing_dir);
                        self.checkpoint.data.prepared_claims.remove(&wanted.uid);
                        self.checkpoint.save()?;
                        return Err(e.into());
                    }
                }
                spec
            };
            self.cdi.write(&wanted.uid, &spec)?;
        }
        stall_if_asked("prepare-started");
        self.checkpoint.data.prepared_claims.insert(wanted.uid.clone(), record(ClaimState::PrepareCompleted));
        self.checkpoint.save()?;
        Ok(devices)
    }

    /// Whether this node has `device` under this state's driver.
    fn has_device(&self, device: &str) -> bool {
        if self.driver == NIC_DRIVER {
            self.inventory.nics.iter().any(|n| n.device_name() == device)
        } else {
            self.inventory.gpu(device).is_some() || self.mig.device(&self.inventory, device).is_some()
        }
    }

    /// The driver whose claims this state prepares.
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Another claim holding `device` or hardware it shares: `(uid, claim, its device)`.
    fn holder_of(&self, device: &str, except_uid: &str) -> Option<(String, PreparedClaim, String)> {
        self.prepared().iter().filter(|(uid, _)| uid.as_str() != except_uid).find_map(|(uid, c)| {
            c.devices
                .iter()
                .find(|d| !d.admin_access && self.mig.overlap(&self.inventory, &d.device_name, device))
                .map(|d| (uid.clone(), c.clone(), d.device_name.clone()))
        })
    }

    /// Unprepares claim `uid`: removes its CDI spec and its record. Unknown UIDs succeed.
    pub fn unprepare(&mut self, uid: &str) -> Result<(), Error> {
        if !self.prepared().contains_key(uid) {
            return Ok(());
        }
        self.cdi.remove(uid)?;
        self.sharing.release(uid, &self.sharing_dir)?;
        self.checkpoint.data.prepared_claims.remove(uid);
        self.checkpoint.save()?;
        Ok(())
    }
}

/// Fault injection for crash tests: with `PHALANX_DRA_STALL_AT=<point>` in the
/// environment the driver stops forever at that point (so a test can SIGKILL it there).
/// The only point is `prepare-started`: after the CDI spec is written, before the
/// checkpoint records the claim as completed.
fn stall_if_asked(point: &str) {
    if std::env::var("PHALANX_DRA_STALL_AT").is_ok_and(|p| p == point) {
        tracing::warn!(point, "PHALANX_DRA_STALL_AT: stalling here for a crash test");
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::profile::{Profile, ProfileDiscovery};
    use crate::discovery::{Discovery, NodeContext};
    use serde_json::json;

    fn claim(uid: &str, devices: &[&str], admin: bool) -> ResourceClaim {
        let results: Vec<_> = devices
            .iter()
            .map(|d| json!({ "request": "gpu", "driver": "gpu.phalanx.dev", "pool": "n", "device": d, "adminAccess": admin }))
            .chain([json!({ "request": "nic", "driver": "nic.phalanx.dev", "pool": "n", "device": "nic-0" })])
            .collect();
        serde_json::from_value(json!({
            "metadata": { "name": format!("c-{uid}"), "namespace": "ns", "uid": uid },
            "spec": {},
            "status": { "allocation": { "devices": { "results": results } } }
        }))
        .unwrap()
    }

    fn wanted(uid: &str) -> ClaimRef {
        ClaimRef { namespace: "ns".into(), uid: uid.into(), name: format!("c-{uid}") }
    }

    fn state(dir: &std::path::Path) -> NodeState {
        let inv =
            ProfileDiscovery::new(Profile::load("hgx-h100-8").unwrap()).discover(&NodeContext::named("n")).unwrap();
        let cp = Checkpoint::load(&dir.join("checkpoint.json"), "boot").unwrap();
        NodeState::recover("gpu.phalanx.dev", "n", inv, cp, CdiWriter::new(dir.join("cdi"), "gpu.phalanx.dev"))
            .unwrap()
            .0
    }

    fn with_config(mut claim: ResourceClaim, sharing: serde_json::Value) -> ResourceClaim {
        let config = json!([
            { "source": "FromClass", "opaque": { "driver": "gpu.phalanx.dev", "parameters": {
                "apiVersion": "gpu.phalanx.dev/v1alpha1", "kind": "GpuConfig", "sharing": { "strategy": "TimeSlicing" } } } },
            { "source": "FromClaim", "requests": ["gpu"], "opaque": { "driver": "gpu.phalanx.dev", "parameters": {
                "apiVersion": "gpu.phalanx.dev/v1alpha1", "kind": "GpuConfig", "sharing": sharing } } }
        ]);
        let devices = claim.status.as_mut().unwrap().allocation.as_mut().unwrap().devices.as_mut().unwrap();
        devices.config = Some(serde_json::from_value(config).unwrap());
        claim
    }

    #[test]
    fn the_claims_gpu_config_reaches_the_spec_and_a_bad_one_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        let mps = json!({ "strategy": "MPS", "mps": { "defaultActiveThreadPercentage": 30 } });
        s.prepare(&wanted("a"), &with_config(claim("a", &["gpu-1"], false), mps)).unwrap();
        let spec = std::fs::read_to_string(dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_a.json")).unwrap();
        for want in [
            "CUDA_MPS_PIPE_DIRECTORY=/var/run/phalanx/mps",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
            "PHALANX_GPU_1_SHARING=MPS",
        ] {
            assert!(spec.contains(want), "{want} missing: {spec}");
        }
        assert!(dir.path().join("mps/a/pipe").is_dir(), "the claim's pipe directory beside the checkpoint");
        s.unprepare("a").unwrap();
        assert!(!dir.path().join("mps/a").exists());

        let bad = json!({ "strategy": "MPS", "mps": { "defaultActiveThreadPercentage": 300 } });
        let err = s.prepare(&wanted("b"), &with_config(claim("b", &["gpu-2"], false), bad)).unwrap_err().to_string();
        assert!(err.contains("entry 1 (FromClaim)") && err.contains("300 is not within 1-100"), "{err}");
        assert!(!s.prepared().contains_key("b"), "nothing recorded");
        assert!(!dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_b.json").exists());
        // The class's TimeSlicing applies where the claim's entry does not name the request.
        let mut c = with_config(claim("c", &["gpu-3"], false), json!({ "strategy": "Exclusive" }));
        c.status.as_mut().unwrap().allocation.as_mut().unwrap().devices.as_mut().unwrap().config.as_mut().unwrap()[1]
            .requests = Some(vec!["other".into()]);
        s.prepare(&wanted("c"), &c).unwrap();
        let spec = std::fs::read_to_string(dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_c.json")).unwrap();
        assert!(
            spec.contains("PHALANX_GPU_3_SHARING=TimeSlicing") && spec.contains("PHALANX_GPU_3_TIMESLICE=Default"),
            "{spec}"
        );
    }

    #[test]
    fn prepare_is_idempotent_and_only_prepares_our_driver() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        let a = s.prepare(&wanted("a"), &claim("a", &["gpu-0", "gpu-1"], false)).unwrap();
        assert_eq!(a.len(), 2, "the NIC result belongs to another driver");
        assert_eq!(a[0].cdi_device_ids, vec!["k8s.gpu.phalanx.dev/gpu=a-gpu-0", "k8s.gpu.phalanx.dev/gpu=base"]);
        assert!(dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_a.json").exists());
        assert_eq!(s.prepare(&wanted("a"), &claim("a", &["gpu-0", "gpu-1"], false)).unwrap(), a);
    }

    #[test]
    fn the_nic_driver_prepares_only_nics() {
        let dir = tempfile::tempdir().unwrap();
        let inv =
            ProfileDiscovery::new(Profile::load("hgx-h100-8").unwrap()).discover(&NodeContext::named("n")).unwrap();
        let cp = Checkpoint::load(&dir.path().join("nic.json"), "boot").unwrap();
        let mut s =
            NodeState::recover(NIC_DRIVER, "n", inv, cp, CdiWriter::new(dir.path().join("cdi"), NIC_DRIVER)).unwrap().0;
        let got = s.prepare(&wanted("a"), &claim("a", &["gpu-0"], false)).unwrap();
        assert_eq!(got.len(), 1, "only the nic.phalanx.dev result: {got:?}");
        assert_eq!(got[0].cdi_device_ids, vec!["k8s.nic.phalanx.dev/nic=a-nic-0"]);
        let spec = std::fs::read_to_string(dir.path().join("cdi/k8s.nic.phalanx.dev-nic_a.json")).unwrap();
        assert!(spec.contains("PHALANX_CLAIM_A_NICS=nic-0"), "{spec}");
    }

    #[test]
    fn busy_devices_unallocated_and_replaced_claims_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        s.prepare(&wanted("a"), &claim("a", &["gpu-0"], false)).unwrap();
        let err = s.prepare(&wanted("b"), &claim("b", &["gpu-0"], false)).unwrap_err();
        assert!(matches!(err, Error::DeviceBusy { .. }), "{err}");
        assert!(!dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_b.json").exists());
        s.prepare(&wanted("adm"), &claim("adm", &["gpu-0"], true)).expect("admin access may share");
        let err = s.prepare(&wanted("x"), &claim("y", &["gpu-2"], false)).unwrap_err();
        assert!(matches!(err, Error::Replaced { .. }), "{err}");
        let mut unallocated = claim("u", &[], false);
        unallocated.status = None;
        assert!(matches!(s.prepare(&wanted("u"), &unallocated), Err(Error::NotAllocated(_))));
        let err = s.prepare(&wanted("z"), &claim("z", &["gpu-9"], false)).unwrap_err();
        assert!(matches!(err, Error::UnknownDevice { .. }), "{err}");
    }

    fn mig_state(dir: &std::path::Path, profile: &str) -> NodeState {
        let discovery = ProfileDiscovery::new(Profile::load(profile).unwrap());
        let ctx = NodeContext::named("n");
        let cp = Checkpoint::load(&dir.join("checkpoint.json"), "boot").unwrap();
        let cdi = CdiWriter::new(dir.join("cdi"), "gpu.phalanx.dev");
        let (state, _) =
            NodeState::recover("gpu.phalanx.dev", "n", discovery.discover(&ctx).unwrap(), cp, cdi).unwrap();
        state.with_mig(discovery.discover_mig(&ctx).unwrap())
    }

    #[test]
    fn health_covers_mig_devices_through_their_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let names = mig_state(dir.path(), "hgx-h100-8-mig").device_names();
        assert!(names.contains(&("gpu-4-mig-1g10gb-0".to_owned(), "gpu-4".to_owned())), "{names:?}");
        assert!(names.contains(&("gpu-0".to_owned(), "gpu-0".to_owned())));
        assert!(!names.iter().any(|(n, _)| n.starts_with("gpu-0-mig")), "GPU 0 is not in MIG mode");
    }

    #[test]
    fn mig_devices_are_prepared_like_gpus_on_fake_hardware() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = mig_state(dir.path(), "hgx-h100-8-mig");
        let got = s.prepare(&wanted("a"), &claim("a", &["gpu-4-mig-1g10gb-0", "gpu-4-mig-3g40gb-4"], false)).unwrap();
        assert_eq!(
            got[0].cdi_device_ids,
            vec!["k8s.gpu.phalanx.dev/gpu=a-gpu-4-mig-1g10gb-0", "k8s.gpu.phalanx.dev/gpu=base"]
        );
        let spec = std::fs::read_to_string(dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_a.json")).unwrap();
        let parent = s.inventory.gpus[4].uuid.clone();
        for want in [
            "\"name\": \"a-gpu-4-mig-1g10gb-0\"",
            "PHALANX_MIG_4_0_NAME=gpu-4-mig-1g10gb-0",
            "PHALANX_MIG_4_0_PROFILE=1g.10gb",
            &format!("PHALANX_MIG_4_4_PARENT_UUID={parent}"),
            "PHALANX_MIG_4_4_PROFILE=3g.40gb",
            "PHALANX_CLAIM_A_MIGS=gpu-4-mig-1g10gb-0,gpu-4-mig-3g40gb-4",
        ] {
            assert!(spec.contains(want), "{want} missing from {spec}");
        }
        assert!(!spec.contains("PHALANX_GPU_4_"), "the claim did not get the whole GPU: {spec}");

        // The same hardware is refused to another claim, whichever name it goes by.
        let err = s.prepare(&wanted("b"), &claim("b", &["gpu-4"], false)).unwrap_err();
        assert!(err.to_string().contains("gpu-4 (it shares hardware with gpu-4-mig-1g10gb-0)"), "{err}");
        let err = s.prepare(&wanted("c"), &claim("c", &["gpu-4-mig-1g20gb-4"], false)).unwrap_err();
        assert!(matches!(err, Error::DeviceBusy { .. }), "{err}");
        s.prepare(&wanted("d"), &claim("d", &["gpu-4-mig-1g10gb-1", "gpu-5"], false)).expect("disjoint slices");
        let err = s.prepare(&wanted("e"), &claim("e", &["gpu-4-mig-3g40gb-2"], false)).unwrap_err();
        assert!(matches!(err, Error::Mig(mig::Error::UnknownPartition { .. })), "{err}");
    }

    #[test]
    fn mig_devices_that_do_not_exist_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        // The NVML backend (and a profile without MIG mode) publishes no MIG devices and creates none.
        let mut s = state(dir.path());
        let err = s.prepare(&wanted("a"), &claim("a", &["gpu-4-mig-1g10gb-0"], false)).unwrap_err();
        assert!(matches!(err, Error::Mig(mig::Error::NotCreated { parent: 4, .. })), "{err}");
        let text = err.to_string();
        assert!(text.contains("Dynamic MIG creation needs a real GPU with MIG mode on"), "{text}");
        assert!(text.contains("this driver does not create MIG devices"), "{text}");
        assert!(!dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_a.json").exists());
        assert!(s.prepared().is_empty(), "nothing recorded");
    }

    #[test]
    fn unprepare_frees_the_device_and_unknown_uids_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        s.prepare(&wanted("a"), &claim("a", &["gpu-0"], false)).unwrap();
        s.unprepare("a").unwrap();
        assert!(!dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_a.json").exists());
        s.unprepare("a").unwrap();
        s.unprepare("never-seen").unwrap();
        s.prepare(&wanted("b"), &claim("b", &["gpu-0"], false)).expect("device free again");
    }

    #[test]
    fn recovery_keeps_completed_and_drops_started_claims() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = state(dir.path());
        s.prepare(&wanted("a"), &claim("a", &["gpu-0"], false)).unwrap();
        // Simulate a crash between PrepareStarted and PrepareCompleted for claim b.
        s.checkpoint.data.prepared_claims.insert(
            "b".into(),
            PreparedClaim {
                state: ClaimState::PrepareStarted,
                namespace: "ns".into(),
                name: "c-b".into(),
                devices: vec![],
            },
        );
        s.checkpoint.save().unwrap();
        std::fs::write(dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_b.json"), "{").unwrap();
        let inv = s.inventory.clone();
        let cp = Checkpoint::load(&dir.path().join("checkpoint.json"), "boot").unwrap();
        let (s2, rec) = NodeState::recover(
            "gpu.phalanx.dev",
            "n",
            inv,
            cp,
            CdiWriter::new(dir.path().join("cdi"), "gpu.phalanx.dev"),
        )
        .unwrap();
        assert_eq!(rec, Recovery { completed: 1, abandoned: vec!["b".into()] });
        assert!(!dir.path().join("cdi/k8s.gpu.phalanx.dev-gpu_b.json").exists());
        assert!(s2.already_prepared("a").is_some());
    }
}
