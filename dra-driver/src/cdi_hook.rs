//! `phalanx-dra-driver cdi-hook`: the OCI `createContainer` hooks of the base CDI device.
//!
//! The runtime runs them after the container's mounts are in place, before its process
//! starts, with the container's OCI state on stdin; the root file system is found from
//! the state's bundle (`config.json`, `root.path`). Two hooks:
//! - `create-symlinks --link <target>::<link>…`: the soname links of the mounted driver
//!   libraries (`libcuda.so.1` → `libcuda.so.570.124.06`), which a bind mount of the
//!   versioned file alone does not give;
//! - `update-ldcache --folder <dir>…`: names the folders in
//!   `/etc/ld.so.conf.d/00-phalanx-cdi.conf` and rebuilds the container's linker cache
//!   with the host's `ldconfig -r <rootfs>` where the host has one.
//!
//! A hook never fails the container for what is only a convenience: an existing file is
//! left alone, a missing `ldconfig` is reported and skipped. It fails only when it
//! cannot find the container at all (bad state on stdin).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Why the hook could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stdin is not an OCI state.
    #[error("the OCI state on stdin is not valid: {0}")]
    State(String),
    /// The bundle's config could not be read.
    #[error("reading the bundle config {path}: {message}")]
    Config {
        /// config.json.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A `--link` argument is not `target::link`.
    #[error("--link {0:?} is not <target>::<link>")]
    BadLink(String),
    /// A file in the root file system could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The conf file the ldcache hook writes.
pub const LD_CONF: &str = "etc/ld.so.conf.d/00-phalanx-cdi.conf";

/// The container's root file system from its OCI state (JSON).
pub fn rootfs_from_state(state: &str) -> Result<PathBuf, Error> {
    let state: serde_json::Value = serde_json::from_str(state).map_err(|e| Error::State(e.to_string()))?;
    let bundle = state["bundle"].as_str().ok_or_else(|| Error::State("no \"bundle\"".into()))?;
    let config_path = Path::new(bundle).join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| Error::Config { path: config_path.clone(), message: e.to_string() })?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Config { path: config_path.clone(), message: e.to_string() })?;
    let root = config["root"]["path"].as_str().unwrap_or("rootfs");
    Ok(Path::new(bundle).join(root))
}

/// `path` inside `rootfs`, refusing `..` so that nothing is written outside it.
fn inside(rootfs: &Path, path: &Path) -> Option<PathBuf> {
    let mut out = rootfs.to_owned();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates each `target::link` under `rootfs`; returns the links created.
pub fn create_symlinks(rootfs: &Path, links: &[String]) -> Result<Vec<PathBuf>, Error> {
    let mut created = Vec::new();
    for spec in links {
        let (target, link) = spec.split_once("::").ok_or_else(|| Error::BadLink(spec.clone()))?;
        let Some(path) = inside(rootfs, Path::new(link)) else { return Err(Error::BadLink(spec.clone())) };
        match std::fs::read_link(&path) {
            Ok(existing) if existing == Path::new(target) => continue,
            _ if path.symlink_metadata().is_ok() => {
                eprintln!("phalanx cdi-hook: {link} exists in the container; leaving it");
                continue;
            }
            _ => {}
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_owned(), source })?;
        }
        std::os::unix::fs::symlink(target, &path).map_err(|source| Error::Io { path: path.clone(), source })?;
        created.push(path);
    }
    Ok(created)
}

/// Writes the folders into [`LD_CONF`] under `rootfs`, then runs the first of
/// `ldconfigs` that exists as `ldconfig -r <rootfs> <folders>`; returns the one run.
pub fn update_ldcache(rootfs: &Path, folders: &[String], ldconfigs: &[&str]) -> Result<Option<PathBuf>, Error> {
    let conf = rootfs.join(LD_CONF);
    if let Some(dir) = conf.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_owned(), source })?;
    }
    let text: String = folders.iter().map(|f| format!("{f}\n")).collect();
    std::fs::write(&conf, text).map_err(|source| Error::Io { path: conf.clone(), source })?;
    let Some(ldconfig) = ldconfigs.iter().map(PathBuf::from).find(|p| p.is_file()) else {
        eprintln!(
            "phalanx cdi-hook: no ldconfig on the host; the linker cache is not updated (the soname links still resolve)"
        );
        return Ok(None);
    };
    match std::process::Command::new(&ldconfig).arg("-r").arg(rootfs).args(folders).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "phalanx cdi-hook: {} -r {} failed ({}): {}",
            ldconfig.display(),
            rootfs.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("phalanx cdi-hook: running {}: {e}", ldconfig.display()),
    }
    Ok(Some(ldconfig))
}

/// Host `ldconfig` candidates, in order.
pub const LDCONFIGS: [&str; 3] = ["/sbin/ldconfig", "/usr/sbin/ldconfig", "/sbin/ldconfig.real"];

/// Reads the OCI state from stdin.
pub fn rootfs_from_stdin() -> Result<PathBuf, Error> {
    let mut state = String::new();
    std::io::stdin().read_to_string(&mut state).map_err(|e| Error::State(e.to_string()))?;
    rootfs_from_state(&state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, root: &str) -> String {
        std::fs::create_dir_all(dir.join(root)).unwrap();
        std::fs::write(dir.join("config.json"), format!(r#"{{"root":{{"path":"{root}"}}}}"#)).unwrap();
        format!(r#"{{"ociVersion":"1.2.0","id":"c","status":"creating","bundle":"{}"}}"#, dir.display())
    }

    #[test]
    fn the_rootfs_comes_from_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let state = bundle(dir.path(), "rootfs");
        assert_eq!(rootfs_from_state(&state).unwrap(), dir.path().join("rootfs"));
        assert!(rootfs_from_state("{}").unwrap_err().to_string().contains("bundle"));
    }

    #[test]
    fn links_are_created_inside_the_rootfs_only() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let links = vec!["libcuda.so.570.124.06::/usr/lib64/libcuda.so.1".to_owned()];
        assert_eq!(create_symlinks(&rootfs, &links).unwrap().len(), 1);
        assert_eq!(
            std::fs::read_link(rootfs.join("usr/lib64/libcuda.so.1")).unwrap(),
            Path::new("libcuda.so.570.124.06")
        );
        assert!(create_symlinks(&rootfs, &links).unwrap().is_empty(), "idempotent");
        assert!(create_symlinks(&rootfs, &["x::/../../etc/passwd".to_owned()]).is_err());
        assert!(create_symlinks(&rootfs, &["no-separator".to_owned()]).is_err());
    }

    #[test]
    fn ldcache_conf_is_written_and_a_missing_ldconfig_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let folders = vec!["/usr/lib64".to_owned(), "/usr/lib/x86_64-linux-gnu".to_owned()];
        assert_eq!(update_ldcache(&rootfs, &folders, &["/nonexistent/ldconfig"]).unwrap(), None);
        assert_eq!(std::fs::read_to_string(rootfs.join(LD_CONF)).unwrap(), "/usr/lib64\n/usr/lib/x86_64-linux-gnu\n");
    }
}
