//! Where the control-plane binaries built by `hack/envtest/build.sh` live.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::Error;

/// Environment variable naming the directory that holds the binaries. `make test` sets
/// it; when it is absent the build script runs (and builds the binaries if needed).
pub const BIN_DIR_ENV: &str = "PHALANX_ENVTEST_BIN";

/// Environment variable choosing the Kubernetes version: `1.37` (default) or `1.36`.
pub const VERSION_ENV: &str = "PHALANX_K8S";

/// A Kubernetes minor version the test environment can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KubeVersion {
    /// Kubernetes 1.36.
    V1_36,
    /// Kubernetes 1.37, the default.
    V1_37,
}

impl KubeVersion {
    /// The version [`VERSION_ENV`] selects (1.37 when unset).
    pub fn selected() -> Result<Self, Error> {
        match std::env::var(VERSION_ENV).as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("1.37") => Ok(KubeVersion::V1_37),
            Ok("1.36") => Ok(KubeVersion::V1_36),
            Ok(other) => Err(Error::Binaries(format!("{VERSION_ENV}={other:?} is not supported; use 1.36 or 1.37"))),
        }
    }

    /// `1.36` or `1.37`.
    pub fn as_str(self) -> &'static str {
        match self {
            KubeVersion::V1_36 => "1.36",
            KubeVersion::V1_37 => "1.37",
        }
    }
}

impl std::fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every binary the environment may start.
pub const BINARIES: &[&str] =
    &["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"];

/// The directory holding the binaries of the [selected](KubeVersion::selected) version,
/// checked to contain every one of them and to be of that version.
pub fn bin_dir() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| locate().and_then(|d| check_version(&d).map(|()| d)).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Binaries)?;
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
        .env(VERSION_ENV, KubeVersion::selected()?.as_str())
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

/// Fails when the apiserver in `dir` is not the selected version (e.g. a stale
/// `PHALANX_ENVTEST_BIN` left from a run of the other version).
fn check_version(dir: &Path) -> Result<(), Error> {
    let want = KubeVersion::selected()?;
    let apiserver = dir.join("kube-apiserver");
    let out = Command::new(&apiserver)
        .arg("--version")
        .output()
        .map_err(|source| Error::Io { path: apiserver.clone(), source })?;
    let reported = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if reported.starts_with(&format!("Kubernetes v{want}.")) {
        Ok(())
    } else {
        Err(Error::Binaries(format!(
            "{} reports {reported:?}, but {VERSION_ENV} selects {want}; point {BIN_DIR_ENV} at the {want} binaries \
             (`PHALANX_K8S={want} bash hack/envtest/build.sh`) or unset it",
            apiserver.display()
        )))
    }
}

/// Runs a `hack/` build script and returns the path on the last line of its stdout.
pub(crate) fn run_script(script: &Path, args: &[&str]) -> Result<PathBuf, Error> {
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| Error::Io { path: script.to_owned(), source })?;
    if !out.status.success() {
        return Err(Error::Binaries(format!("{} failed ({})", script.display(), out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(stdout.lines().last().unwrap_or_default().trim()))
}

/// Environment variable naming the helm binary; `hack/helm/build.sh` runs when absent.
pub const HELM_ENV: &str = "PHALANX_HELM";

/// helm (4.3.2, built from the Go module proxy by `hack/helm/build.sh`).
pub fn helm() -> Result<PathBuf, Error> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| match std::env::var_os(HELM_ENV) {
        Some(p) => Ok(PathBuf::from(p)),
        None => run_script(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/helm/build.sh"), &[])
            .map_err(|e| e.to_string()),
    })
    .clone()
    .map_err(Error::Binaries)
}
