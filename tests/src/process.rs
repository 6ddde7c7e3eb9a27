//! One control-plane component as a child process whose output goes to a log file.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::Error;

/// A running component. Killed (and reaped) on drop.
#[derive(Debug)]
pub struct Component {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Component {
    /// Starts `binary` with `args`, sending stdout and stderr to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, binary: &Path, args: &[String], log_dir: &Path) -> Result<Self, Error> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|source| Error::Io { path: log.clone(), source })?;
        let err = out.try_clone().map_err(|source| Error::Io { path: log.clone(), source })?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn { component: name.to_owned(), binary: binary.to_owned(), source })?;
        Ok(Component { name: name.to_owned(), child: Some(child), log })
    }

    /// Starts a prepared command (e.g. one run inside a node's namespaces), output
    /// appended to `<log_dir>/<name>.log` (a restarted component keeps its earlier log).
    pub fn spawn_command(name: &str, mut command: Command, log_dir: &Path) -> Result<Self, Error> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| Error::Io { path: log.clone(), source })?;
        let err = out.try_clone().map_err(|source| Error::Io { path: log.clone(), source })?;
        let program = PathBuf::from(command.get_program());
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|source| Error::Spawn {
            component: name.to_owned(),
            binary: program,
            source,
        })?;
        Ok(Component { name: name.to_owned(), child: Some(child), log })
    }

    /// The component's name, e.g. `kube-apiserver`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the component's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails with the tail of the log if the process has already exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        let Some(child) = self.child.as_mut() else {
            return Err(self.exited("stopped"));
        };
        match child.try_wait() {
            Ok(Some(status)) => Err(self.exited(&status.to_string())),
            Ok(None) => Ok(()),
            Err(source) => Err(Error::Io { path: self.log.clone(), source }),
        }
    }

    fn exited(&self, status: &str) -> Error {
        Error::Exited { component: self.name.clone(), status: status.to_owned(), log_tail: self.log_tail(40) }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(file) = File::open(&self.log) else {
            return String::new();
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.stop();
    }
}
