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

/// `path` inside `rootfs`, refusing `..` in it, and resolving symlinks of the image
/// *within* the root file system: the hook runs as root in the runtime's view of the host,
/// so an image whose `/usr/lib64` is a symlink to `/etc` must not make it write the
/// host's `/etc` (the class of bug of CVE-2024-0132 in NVIDIA's toolkit). The last
/// component is not followed (it is what gets created). `None` when the path is refused
/// or its symlinks go round in circles.
fn inside(rootfs: &Path, path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    let last = parts.pop()?;
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = parts.into();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        let here: PathBuf = resolved.iter().fold(rootfs.to_owned(), |p, c| p.join(c));
        let candidate = here.join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = std::fs::read_link(&candidate).ok()?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut next: Vec<std::ffi::OsString> = Vec::new();
                for c in target.components() {
                    match c {
                        Component::Normal(p) => next.push(p.to_owned()),
                        // `..` stops at the root of the container, as it would inside it.
                        Component::ParentDir if next.pop().is_none() => {
                            resolved.pop();
                        }
                        _ => {}
                    }
                }
                for p in next.into_iter().rev() {
                    pending.push_front(p);
                }
            }
            _ => resolved.push(part),
        }
    }
    Some(resolved.iter().fold(rootfs.to_owned(), |p, c| p.join(c)).join(last))
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
    let conf = inside(rootfs, Path::new(LD_CONF)).ok_or_else(|| Error::Io {
        path: rootfs.join(LD_CONF),
        source: std::io::Error::other("path escapes the container"),
    })?;
    if let Some(dir) = conf.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_owned(), source })?;
    }
    let text: String = folders.iter().map(|f| format!("{f}\n")).collect();
    // A fresh file (O_EXCL: never through a symlink the image put there) renamed over
    // whatever the path holds, so the write lands in the container, not where a link
    // points.
    let tmp = conf.with_extension(format!("tmp-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &conf));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Io { path: conf, source });
    }
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
    fn symlinks_of_the_image_never_lead_outside_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let outside = dir.path().join("host-etc");
        std::fs::create_dir_all(rootfs.join("usr")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An image whose /usr/lib64 points at an absolute path, and one climbing with `..`.
        std::os::unix::fs::symlink(&outside, rootfs.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink("../../../../host-etc", rootfs.join("usr/lib")).unwrap();
        let links = vec!["t::/usr/lib64/libcuda.so.1".to_owned(), "t::/usr/lib/libcuda.so.1".to_owned()];
        create_symlinks(&rootfs, &links).unwrap();
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "nothing written outside the rootfs");
        // Both resolve inside the rootfs instead (as they would inside the container).
        let abs = outside.strip_prefix("/").unwrap();
        assert!(rootfs.join(abs).join("libcuda.so.1").symlink_metadata().is_ok());
        assert!(rootfs.join("host-etc/libcuda.so.1").symlink_metadata().is_ok());
        // A relative link inside the image is followed as the image means it.
        std::fs::create_dir_all(rootfs.join("usr/lib/x86_64-linux-gnu")).ok();
        std::os::unix::fs::symlink("lib/x86_64-linux-gnu", rootfs.join("usr/multi")).unwrap();
        assert_eq!(inside(&rootfs, Path::new("/usr/multi/x")), Some(rootfs.join("host-etc/x86_64-linux-gnu/x")));
    }

    #[test]
    fn ldcache_conf_is_written_and_a_missing_ldconfig_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let folders = vec!["/usr/lib64".to_owned(), "/usr/lib/x86_64-linux-gnu".to_owned()];
        assert_eq!(update_ldcache(&rootfs, &folders, &["/nonexistent/ldconfig"]).unwrap(), None);
        assert_eq!(std::fs::read_to_string(rootfs.join(LD_CONF)).unwrap(), "/usr/lib64\n/usr/lib/x86_64-linux-gnu\n");
        // A conf the image made a symlink to a host file is replaced, not written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::remove_file(rootfs.join(LD_CONF)).unwrap();
        std::os::unix::fs::symlink(&victim, rootfs.join(LD_CONF)).unwrap();
        update_ldcache(&rootfs, &folders, &["/nonexistent/ldconfig"]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!rootfs.join(LD_CONF).symlink_metadata().unwrap().file_type().is_symlink());
    }
}
