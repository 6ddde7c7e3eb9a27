//! The driver's record of prepared claims, so unprepare works after a restart (the
//! kubelet sends only the claim's UID, namespace and name).
//!
//! One JSON file `{checksum, v1}` where `checksum` is the SHA-256 of the canonical JSON of
//! `v1`. It is replaced atomically (write a temp file, rename it over the old one), so a
//! crashed driver leaves either the old or the new state, never half of one; a file that
//! fails its checksum is reported, never silently trusted or dropped.
//!
//! No fsync, on purpose: only a kernel crash or power loss can lose what was written,
//! and both reboot the node, which undoes every preparation anyway (the entries carry
//! the boot ID and are dropped on the next boot). A file damaged by such a loss is
//! older than the current boot and is discarded with a warning; a damaged file written
//! during this boot is an error. This keeps NodePrepareResources off the disk's flush
//! latency.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why the checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the file failed.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is damaged.
    #[error(
        "checkpoint {path} is corrupt ({reason}); it records which devices are prepared for which claims, \
         so the driver will not guess: inspect it, and remove it only once no pod on this node uses a \
         gpu.phalanx.dev claim"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// How far preparing a claim got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimState {
    /// Prepare began; the CDI spec may be partly written.
    PrepareStarted,
    /// Prepare finished; the CDI spec is in place.
    PrepareCompleted,
}

/// One device prepared for a claim, as returned to the kubelet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    /// Requests the device was allocated for.
    pub request_names: Vec<String>,
    /// Pool (node) name.
    pub pool_name: String,
    /// Device name, e.g. `gpu-3`.
    pub device_name: String,
    /// CDI IDs the runtime injects.
    pub cdi_device_ids: Vec<String>,
    /// Allocated with admin access (does not hold the device exclusively).
    #[serde(default)]
    pub admin_access: bool,
}

/// One claim's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedClaim {
    /// How far prepare got.
    pub state: ClaimState,
    /// Claim namespace.
    pub namespace: String,
    /// Claim name.
    pub name: String,
    /// Devices prepared (empty while `PrepareStarted`, devices reserved are listed).
    pub devices: Vec<PreparedDevice>,
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Data {
    /// Boot ID of the node when written; a different one means the node rebooted and
    /// every preparation is gone.
    pub node_boot_id: String,
    /// Claims by UID.
    pub prepared_claims: BTreeMap<String, PreparedClaim>,
}

#[derive(Serialize, Deserialize)]
struct File {
    checksum: String,
    v1: Data,
}

fn checksum(data: &Data) -> String {
    let bytes = serde_json::to_vec(data).expect("checkpoint data serialises");
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

fn verify(bytes: &[u8]) -> Result<Data, String> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| format!("not a checkpoint: {e}"))?;
    let actual = checksum(&file.v1);
    if actual != file.checksum {
        return Err(format!("checksum {} does not match content ({actual})", file.checksum));
    }
    Ok(file.v1)
}

/// Whether `path` was last written before this boot (per `/proc/stat` btime).
fn written_before_boot(path: &Path) -> bool {
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<u64>().ok()));
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (boot, modified.and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())) {
        (Some(boot), Some(modified)) => modified.as_secs() < boot,
        _ => false,
    }
}

/// The checkpoint file and its current content.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    /// The current content; call [`Checkpoint::save`] after changing it.
    pub data: Data,
}

impl Checkpoint {
    /// Loads `path`, or starts empty when it does not exist. Entries from another boot
    /// are dropped (a reboot undid every preparation).
    pub fn load(path: &Path, boot_id: &str) -> Result<Checkpoint, Error> {
        let data = match std::fs::read(path) {
            Ok(bytes) => {
                let mut data = match verify(&bytes) {
                    Ok(data) => data,
                    Err(reason) if written_before_boot(path) => {
                        tracing::warn!(path = %path.display(), reason, "discarding a damaged checkpoint from before the last boot");
                        Data::default()
                    }
                    Err(reason) => return Err(Error::Corrupt { path: path.to_owned(), reason }),
                };
                if data.node_boot_id != boot_id {
                    data.prepared_claims.clear();
                    data.node_boot_id = boot_id.to_owned();
                }
                data
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Data { node_boot_id: boot_id.to_owned(), prepared_claims: BTreeMap::new() }
            }
            Err(source) => return Err(Error::Io { path: path.to_owned(), source }),
        };
        Ok(Checkpoint { path: path.to_owned(), data })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the current content atomically and durably.
    pub fn save(&self) -> Result<(), Error> {
        let file = File { checksum: checksum(&self.data), v1: self.data.clone() };
        let bytes = serde_json::to_vec_pretty(&file).expect("checkpoint serialises");
        write_atomic(&self.path, &bytes).map_err(|source| Error::Io { path: self.path.clone(), source })
    }
}

/// Replaces `path` with `bytes` atomically against process crashes: a temp file in the
/// same directory renamed over it (see the module docs for why there is no fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|f| f.to_str()).unwrap_or("checkpoint")));
    let mut f = match std::fs::File::create(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            std::fs::File::create(&tmp)?
        }
        other => other?,
    };
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// This boot's ID (`/proc/sys/kernel/random/boot_id`), or an empty string where the
/// kernel does not expose one.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> PreparedClaim {
        PreparedClaim {
            state: ClaimState::PrepareCompleted,
            namespace: "ns".into(),
            name: "c".into(),
            devices: vec![PreparedDevice {
                request_names: vec!["gpu".into()],
                pool_name: "node".into(),
                device_name: "gpu-0".into(),
                cdi_device_ids: vec!["k8s.gpu.phalanx.dev/gpu=u-gpu-0".into()],
                admin_access: false,
            }],
        }
    }

    #[test]
    fn round_trips_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        let mut cp = Checkpoint::load(&path, "boot-1").unwrap();
        assert!(cp.data.prepared_claims.is_empty());
        cp.data.prepared_claims.insert("uid-1".into(), claim());
        cp.save().unwrap();
        assert_eq!(Checkpoint::load(&path, "boot-1").unwrap().data, cp.data);

        let text = std::fs::read_to_string(&path).unwrap().replace("gpu-0", "gpu-1");
        std::fs::write(&path, text).unwrap();
        let err = Checkpoint::load(&path, "boot-1").unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("checksum"));

        std::fs::write(&path, b"{\"checks").unwrap();
        assert!(matches!(Checkpoint::load(&path, "boot-1"), Err(Error::Corrupt { .. })));

        // Damaged before the last boot (power loss): discarded, not fatal.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        assert!(Checkpoint::load(&path, "boot-1").unwrap().data.prepared_claims.is_empty());
    }

    #[test]
    fn another_boot_forgets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        let mut cp = Checkpoint::load(&path, "boot-1").unwrap();
        cp.data.prepared_claims.insert("uid-1".into(), claim());
        cp.save().unwrap();
        let after_reboot = Checkpoint::load(&path, "boot-2").unwrap();
        assert!(after_reboot.data.prepared_claims.is_empty());
        assert_eq!(after_reboot.data.node_boot_id, "boot-2");
    }
}
