//! Device health: sources of faults and the state they feed.
//!
//! A source reports which devices are unhealthy and why; the node agent turns that into
//! a `gpu.phalanx.dev/unhealthy` NoSchedule taint on the device in its ResourceSlice and
//! into the kubelet's `DRAResourceHealth` stream. Two sources: NVML critical-XID events on
//! real GPUs, and a fault file for fake hardware (profiles), re-read when it changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::attributes::Unhealthy;

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

/// Watches NVML critical-XID events on every GPU (blocking; run it on a blocking
/// thread) and marks a GPU unhealthy with reason `xid-<n>`. `names` maps GPU UUIDs to
/// device names. Returns when `tx` has no receivers left.
pub fn watch_nvml_xids(
    nvml: &nvml_wrapper::Nvml,
    names: &BTreeMap<String, String>,
    tx: &watch::Sender<Faults>,
) -> Result<(), Error> {
    use nvml_wrapper::bitmasks::event::EventTypes;
    use nvml_wrapper::enums::event::XidError;
    use nvml_wrapper::error::NvmlError;

    let count = nvml.device_count().map_err(|e| Error::Nvml(e.to_string()))?;
    let mut set = nvml.create_event_set().map_err(|e| Error::Nvml(e.to_string()))?;
    for i in 0..count {
        let device = nvml.device_by_index(i).map_err(|e| Error::Nvml(e.to_string()))?;
        set = match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(set) => set,
            Err(e) => {
                // Registration failing frees the set; a GPU we cannot watch is reported.
                let uuid = device.uuid().unwrap_or_default();
                tracing::warn!(uuid, error = ?e.error, "cannot watch XID events of this GPU");
                if let Some(name) = names.get(&uuid) {
                    tx.send_modify(|f| {
                        f.all_nodes.insert(name.clone(), "unmonitored".into());
                    });
                }
                return Err(Error::Nvml(format!("registering XID events: {:?}", e.error)));
            }
        };
    }
    while !tx.is_closed() {
        match set.wait(5_000) {
            Ok(event) => {
                let xid = match event.event_data {
                    Some(XidError::Value(v)) => v,
                    _ => continue,
                };
                if APPLICATION_XIDS.contains(&xid) {
                    continue;
                }
                if let Some(name) = event.device.uuid().ok().and_then(|u| names.get(&u)) {
                    tracing::warn!(device = name, xid, "critical XID; marking the GPU unhealthy");
                    tx.send_modify(|f| {
                        f.all_nodes.insert(name.clone(), format!("xid-{xid}"));
                    });
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(e) => return Err(Error::Nvml(e.to_string())),
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
