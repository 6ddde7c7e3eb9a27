//! Device health: sources of faults and the state they feed.
//!
//! A source reports which devices are unhealthy and why; the node agent turns that into
//! a `gpu.phalanx.dev/unhealthy` NoSchedule taint on the device in its ResourceSlice and
//! into the kubelet's `DRAResourceHealth` stream. Two sources: NVML on real GPUs
//! (critical XIDs, double-bit ECC events, row remapping), whose faults persist in a
//! [`FaultStore`] until cleared, and a fault file for fake hardware (profiles), re-read
//! when it changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::attributes::Unhealthy;
use crate::discovery::nvml;

/// Faults for the nodes one process serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Faults for every node served (`<device> <reason>` lines).
    pub all_nodes: Unhealthy,
    /// Faults for one node (`<node> <device> <reason>` lines).
    pub per_node: BTreeMap<String, Unhealthy>,
}

impl Faults {
    /// The unhealthy devices of `node`.
    pub fn for_node(&self, node: &str) -> Unhealthy {
        let mut u = self.all_nodes.clone();
        if let Some(n) = self.per_node.get(node) {
            u.extend(n.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        u
    }
}

/// Why a fault line was rejected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of the fault file is not `[node] <device> <reason>`.
    #[error("fault file line {line}: {text:?} is not `[<node>] <device> <reason>`")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// NVML event registration failed.
    #[error("NVML events: {0}")]
    Nvml(String),
    /// The fault store could not be read or written.
    #[error("fault store: {0}")]
    Store(String),
}

/// A reason becomes a taint value: at most 63 characters of `[A-Za-z0-9_.-]`.
fn taint_value(reason: &str) -> String {
    let v: String =
        reason.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).chars().take(63).collect()
}

/// Parses a fault file: `<device> <reason>` or `<node> <device> <reason>` per line,
/// `#` starts a comment.
pub fn parse_faults(text: &str) -> Result<Faults, Error> {
    let mut faults = Faults::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [device, reason] => {
                faults.all_nodes.insert((*device).to_owned(), taint_value(reason));
            }
            [node, device, reason] => {
                faults
                    .per_node
                    .entry((*node).to_owned())
                    .or_default()
                    .insert((*device).to_owned(), taint_value(reason));
            }
            _ => return Err(Error::BadLine { line: i + 1, text: line.to_owned() }),
        }
    }
    Ok(faults)
}

/// Re-reads `path` every `interval` and publishes the faults when they change. A
/// missing file means no faults; a malformed one is logged and ignored.
pub async fn watch_fault_file(path: PathBuf, interval: Duration, tx: watch::Sender<Faults>) {
    let mut last_text: Option<String> = None;
    loop {
        let text = read_optional(&path);
        if last_text.as_ref() != Some(&text) {
            match parse_faults(&text) {
                Ok(faults) => {
                    tracing::info!(path = %path.display(), ?faults, "fault file read");
                    tx.send_if_modified(|current| {
                        let changed = *current != faults;
                        *current = faults;
                        changed
                    });
                }
                Err(e) => tracing::warn!(error = %e, "ignoring malformed fault file"),
            }
            last_text = Some(text);
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

fn read_optional(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// XIDs caused by applications, not by the GPU (as the NVIDIA device plugin skips them).
pub const APPLICATION_XIDS: [u64; 5] = [13, 31, 43, 45, 68];

/// The taint value of a critical XID. The number is kept as is (`xid-79`); the
/// operator's documentation (docs/ARCHITECTURE.md, health) says what the common ones
/// mean: 48 double-bit ECC, 63/64 row remapping, 74 NVLink, 79 fallen off the bus, 92
/// high single-bit ECC rate, 94/95 contained/uncontained ECC, 119/120 GSP, 154 recovery
/// action.
pub fn xid_reason(xid: u64) -> Option<String> {
    (!APPLICATION_XIDS.contains(&xid)).then(|| format!("xid-{xid}"))
}

/// Reason for a double-bit (uncorrectable) ECC error event.
pub const ECC_DOUBLE_BIT: &str = "ecc-double-bit";
/// Reason for a GPU whose row remapping failed (out of spare rows).
pub const ROW_REMAP_FAILURE: &str = "row-remap-failure";
/// Reason for a GPU with a row remapping pending (needs a GPU reset).
pub const ROW_REMAP_PENDING: &str = "row-remap-pending";
/// Reason for a GPU whose events cannot be watched (registration not supported): as the
/// NVIDIA device plugin does, such a GPU is treated as unhealthy.
pub const EVENTS_UNSUPPORTED: &str = "events-unsupported";

/// Faults that outlive the agent: a JSON file (by default
/// `<kubelet root>/plugins/gpu.phalanx.dev/faults.json`, on the node's disk) mapping a
/// device to its reason and when it was first seen. A fault stays until an operator
/// clears it (`phalanx-dra-driver faults clear`), so a GPU that raised XID 79 does not
/// come back healthy because the driver pod restarted.
#[derive(Debug, Clone)]
pub struct FaultStore {
    path: PathBuf,
}

/// One persisted fault.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredFault {
    /// The taint value.
    pub reason: String,
    /// RFC 3339 time it was first recorded.
    pub since: String,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct StoreFile {
    devices: BTreeMap<String, StoredFault>,
}

impl FaultStore {
    /// The store in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FaultStore { path: path.into() }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<StoreFile, Error> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Store(format!("{} is not a fault store: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreFile::default()),
            Err(e) => Err(Error::Store(format!("reading {}: {e}", self.path.display()))),
        }
    }

    fn write(&self, file: &StoreFile) -> Result<(), Error> {
        let fail = |e: std::io::Error| Error::Store(format!("writing {}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(file).map_err(|e| Error::Store(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)
    }

    /// Every stored fault.
    pub fn load(&self) -> Result<BTreeMap<String, StoredFault>, Error> {
        Ok(self.read()?.devices)
    }

    /// The stored faults as device → reason.
    pub fn unhealthy(&self) -> Result<Unhealthy, Error> {
        Ok(self.load()?.into_iter().map(|(d, f)| (d, f.reason)).collect())
    }

    /// Records `reason` for `device` unless the device already has a fault (the first
    /// fault is the one that explains the others). Returns whether anything changed.
    pub fn record(&self, device: &str, reason: &str) -> Result<bool, Error> {
        let mut file = self.read()?;
        if file.devices.contains_key(device) {
            return Ok(false);
        }
        let since = k8s_openapi::jiff::Timestamp::now().to_string();
        file.devices.insert(device.to_owned(), StoredFault { reason: taint_value(reason), since });
        self.write(&file)?;
        Ok(true)
    }

    /// Clears `device`'s fault, or every fault with `None`; returns the devices cleared.
    pub fn clear(&self, device: Option<&str>) -> Result<Vec<String>, Error> {
        let mut file = self.read()?;
        let cleared: Vec<String> = match device {
            Some(d) => file.devices.remove(d).map(|_| vec![d.to_owned()]).unwrap_or_default(),
            None => std::mem::take(&mut file.devices).into_keys().collect(),
        };
        if !cleared.is_empty() {
            self.write(&file)?;
        }
        Ok(cleared)
    }
}

/// Publishes the store's faults (for every node this agent serves: one) whenever the
/// file changes, so faults recorded by the NVML watcher and clears by an operator both
/// reach the slice and the kubelet. A malformed store is logged and its last good
/// content kept.
pub async fn follow_store(store: FaultStore, interval: Duration, tx: watch::Sender<Faults>) {
    let mut last: Option<Unhealthy> = None;
    loop {
        match store.unhealthy() {
            Ok(unhealthy) if last.as_ref() != Some(&unhealthy) => {
                tracing::info!(path = %store.path().display(), ?unhealthy, "persisted faults");
                tx.send_modify(|f| f.all_nodes = unhealthy.clone());
                last = Some(unhealthy);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "fault store unreadable; keeping the last faults"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// What the NVML watcher does with what it sees (the store in production; tests
/// collect).
pub trait FaultSink {
    /// `device` has fault `reason`.
    fn fault(&self, device: &str, reason: &str);
    /// A single-bit (corrected) ECC error on `device`: counted, not a fault.
    fn corrected_ecc(&self, _device: &str) {}
    /// Whether the watcher should stop.
    fn closed(&self) -> bool;
}

/// Records into a [`FaultStore`] until `stop` is dropped.
#[derive(Debug)]
pub struct StoreSink {
    /// The store.
    pub store: FaultStore,
    /// Closed when the agent stops.
    pub stop: watch::Receiver<bool>,
    /// Counts corrected ECC errors per device.
    pub metrics: Option<crate::metrics::Metrics>,
}

impl FaultSink for StoreSink {
    fn fault(&self, device: &str, reason: &str) {
        match self.store.record(device, reason) {
            Ok(true) => tracing::warn!(device, reason, "GPU fault recorded; the device is tainted until cleared"),
            Ok(false) => tracing::info!(device, reason, "further fault on a device already marked unhealthy"),
            Err(e) => tracing::error!(device, reason, error = %e, "cannot persist a GPU fault"),
        }
    }
    fn corrected_ecc(&self, device: &str) {
        if let Some(m) = &self.metrics {
            m.corrected_ecc(device);
        }
    }
    fn closed(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }
}

/// How often remapped rows are polled (there is no event for them).
pub const REMAP_POLL: Duration = Duration::from_secs(30);

/// Watches every GPU through NVML until `sink` is closed (blocking; run it on a
/// blocking thread): critical XIDs and double-bit ECC events, and row remapping by
/// polling every `remap_poll`. `names` maps GPU UUIDs to device names.
///
/// Each GPU is registered on its own: one that cannot be watched is reported as
/// [`EVENTS_UNSUPPORTED`] and the others are watched still (nvml-wrapper frees the event
/// set when a registration fails, so the set is rebuilt with the GPUs registered so far).
pub fn watch_nvml(
    nvml: &nvml_wrapper::Nvml,
    names: &BTreeMap<String, String>,
    sink: &dyn FaultSink,
    remap_poll: Duration,
) -> Result<(), Error> {
    use nvml_wrapper::bitmasks::event::EventTypes;
    use nvml_wrapper::enums::event::XidError;
    use nvml_wrapper::error::NvmlError;

    let nvml_error = |call: &str, e: NvmlError| Error::Nvml(format!("{call}: {e}"));
    let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR | EventTypes::SINGLE_BIT_ECC_ERROR;
    let count = nvml.device_count().map_err(|e| nvml_error("nvmlDeviceGetCount", e))?;
    let mut devices = Vec::new();
    for i in 0..count {
        let device = nvml.device_by_index(i).map_err(|e| nvml_error("nvmlDeviceGetHandleByIndex", e))?;
        let uuid = device.uuid().map_err(|e| nvml_error("nvmlDeviceGetUUID", e))?;
        let Some(name) = names.get(&uuid).cloned() else { continue };
        devices.push((device, name));
    }
    let mut registered: Vec<(usize, EventTypes)> = Vec::new();
    let mut set = nvml.create_event_set().map_err(|e| nvml_error("nvmlEventSetCreate", e))?;
    for (i, (device, name)) in devices.iter().enumerate() {
        let types = match device.supported_event_types() {
            Ok(supported) => supported & wanted,
            Err(e) => {
                tracing::warn!(device = name, error = %e, "cannot query this GPU's event types");
                EventTypes::empty()
            }
        };
        if !types.contains(EventTypes::CRITICAL_XID_ERROR) {
            sink.fault(name, EVENTS_UNSUPPORTED);
            continue;
        }
        set = match device.register_events(types, set) {
            Ok(set) => {
                registered.push((i, types));
                set
            }
            Err(e) => {
                tracing::warn!(device = name, error = ?e.error, "cannot watch this GPU's events");
                sink.fault(name, EVENTS_UNSUPPORTED);
                let mut fresh = nvml.create_event_set().map_err(|e| nvml_error("nvmlEventSetCreate", e))?;
                for (j, t) in &registered {
                    fresh = devices[*j]
                        .0
                        .register_events(*t, fresh)
                        .map_err(|e| Error::Nvml(format!("re-registering {}: {:?}", devices[*j].1, e.error)))?;
                }
                fresh
            }
        };
    }
    tracing::info!(watched = registered.len(), of = devices.len(), "watching GPU events");
    let by_uuid: BTreeMap<&str, &str> = names.iter().map(|(u, n)| (u.as_str(), n.as_str())).collect();
    let mut next_remap_poll = std::time::Instant::now();
    while !sink.closed() {
        if std::time::Instant::now() >= next_remap_poll {
            for (device, name) in &devices {
                match nvml::ffi::remapped_rows(device) {
                    Ok(rows) if rows.failure => sink.fault(name, ROW_REMAP_FAILURE),
                    Ok(rows) if rows.pending => sink.fault(name, ROW_REMAP_PENDING),
                    Ok(_) | Err(nvml::ffi::CallError::NotSupported | nvml::ffi::CallError::Missing) => {}
                    Err(e) => tracing::warn!(device = name, error = ?e, "nvmlDeviceGetRemappedRows failed"),
                }
            }
            next_remap_poll += remap_poll;
        }
        let timeout = next_remap_poll.saturating_duration_since(std::time::Instant::now()).min(Duration::from_secs(1));
        match set.wait(timeout.as_millis().max(1) as u32) {
            Ok(event) => {
                let Some(name) = event.device.uuid().ok().and_then(|u| by_uuid.get(u.as_str()).copied()) else {
                    continue;
                };
                if event.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    let xid = match event.event_data {
                        Some(XidError::Value(v)) => v,
                        _ => continue,
                    };
                    match xid_reason(xid) {
                        Some(reason) => sink.fault(name, &reason),
                        None => tracing::info!(device = name, xid, "application XID; the GPU stays healthy"),
                    }
                } else if event.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                    sink.fault(name, ECC_DOUBLE_BIT);
                } else if event.event_type.contains(EventTypes::SINGLE_BIT_ECC_ERROR) {
                    sink.corrected_ecc(name);
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => return Err(nvml_error("nvmlEventSetWait", e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lines_for_all_nodes_and_one_node() {
        let f = parse_faults("# injected\ngpu-3 xid-79\nnode-b gpu-1 Xid 48?  # comment\n").unwrap_err();
        assert!(f.to_string().contains("line 3"), "{f}");
        let f = parse_faults("gpu-3 xid-79\nnode-b gpu-1 ecc!\n\n").unwrap();
        assert_eq!(f.for_node("node-a"), Unhealthy::from([("gpu-3".into(), "xid-79".into())]));
        assert_eq!(
            f.for_node("node-b"),
            Unhealthy::from([("gpu-3".into(), "xid-79".into()), ("gpu-1".into(), "ecc".into())])
        );
    }

    #[tokio::test]
    async fn the_fault_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let (tx, mut rx) = watch::channel(Faults::default());
        let task = tokio::spawn(watch_fault_file(path.clone(), Duration::from_millis(20), tx));
        std::fs::write(&path, "gpu-2 xid-79\n").unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|f| f.all_nodes.contains_key("gpu-2")))
            .await
            .unwrap()
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|f| f.all_nodes.is_empty())).await.unwrap().unwrap();
        task.abort();
    }
}
