//! Where the control-plane binaries built by `hack/envtest/build.sh` live.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::Error;

/// Environment variable naming the directory that holds the binaries. `make test` sets
/// it; when it is absent the build script runs (and builds the binaries if needed).
pub const BIN_DIR_ENV: &str = "PHALANX_ENVTEST_BIN";

/// Every binary the environment may start.
pub const BINARIES: &[&str] =
    &["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"];

/// The directory holding the binaries, checked to contain every one of them.
pub fn bin_dir() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| locate().map_err(|e| e.to_string())).clone().map_err(Error::Binaries)?;
    for name in BINARIES {
        if !dir.join(name).is_file() {
            return Err(Error::Binaries(format!(
                "{} is missing from {}; run `make envtest` (or unset {BIN_DIR_ENV})",
                name,
                dir.display()
            )));
        }
    }
    Ok(dir)
}

fn locate() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/envtest/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| Error::Io { path: script.clone(), source })?;
    if !out.status.success() {
        return Err(Error::Binaries(format!("{} failed ({})", script.display(), out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    Ok(PathBuf::from(last))
}
