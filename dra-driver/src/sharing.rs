//! Applying a claim's [`GpuConfig`](crate::config::GpuConfig) sharing strategy: what the
//! containers get (CDI edits) and what the GPUs get (on real GPUs).
//!
//! - **Exclusive**: nothing beyond the claim's own spec.
//! - **TimeSlicing**: each GPU's time slice is set with
//!   `nvidia-smi compute-policy -i <uuid> --set-timeslice=<0-3>`; the container sees
//!   `PHALANX_GPU_<i>_SHARING=TimeSlicing` and `PHALANX_GPU_<i>_TIMESLICE=<interval>`.
//! - **MPS**: a control daemon per claim (`nvidia-cuda-mps-control -d`, its pipe and log
//!   directories under the plugin directory, `CUDA_VISIBLE_DEVICES` = the claim's GPUs),
//!   its defaults set through its command interface (`set_default_active_thread_percentage`,
//!   `set_default_device_pinned_mem_limit <uuid> <MiB>M`), and stopped (`quit`) at
//!   unprepare; the containers get the pipe directory mounted at [`MPS_PIPE`] and
//!   `CUDA_MPS_PIPE_DIRECTORY`, plus `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` when set. A
//!   container can use one MPS claim (CUDA reads one pipe directory per process).
//!
//! On fake hardware (profiles) there is no GPU to configure: the container edits are
//! produced the same way and nothing is run ([`Control::FakeHardware`]). On the NVML
//! backend the tools come from the driver root; a strategy whose tool is missing fails the
//! prepare with a message naming the tool and where it was looked for.
//!
//! Limitation: the MPS daemon runs in the driver's container, so it stops when that
//! container restarts (NVIDIA's driver runs one Deployment per claim for this).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::config::{GpuConfig, Strategy, parse_bytes};
use crate::discovery::Gpu;
use crate::driver_root::{BINARY_DIRS, DriverRoot, LIBRARY_DIRS};

/// Where containers find an MPS claim's pipe directory.
pub const MPS_PIPE: &str = "/var/run/phalanx/mps";

/// Whether strategies act on GPUs.
#[derive(Debug, Clone)]
pub enum Control {
    /// Profiles: container edits only.
    FakeHardware,
    /// Real GPUs: tools from `root`.
    Gpus {
        /// The driver root.
        root: DriverRoot,
    },
}

/// The container edits of a claim's sharing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edits {
    /// Per device name: extra env entries.
    pub device_env: BTreeMap<String, Vec<String>>,
    /// Claim-wide env entries.
    pub env: Vec<String>,
    /// Claim-wide mounts (CDI mount objects).
    pub mounts: Vec<Value>,
}

impl Edits {
    /// Adds the edits to a claim spec built by [`crate::cdi::gpu_claim_spec`].
    pub fn extend_spec(&self, spec: &mut Value, claim_uid: &str) {
        if let Some(devices) = spec["devices"].as_array_mut() {
            for d in devices {
                let name = d["name"].as_str().unwrap_or_default().strip_prefix(&format!("{claim_uid}-")).unwrap_or("");
                if let Some(env) = self.device_env.get(name)
                    && let Some(list) = d["containerEdits"]["env"].as_array_mut()
                {
                    list.extend(env.iter().map(|e| json!(e)));
                }
            }
        }
        if let Some(list) = spec["containerEdits"]["env"].as_array_mut() {
            list.extend(self.env.iter().map(|e| json!(e)));
        }
        if !self.mounts.is_empty() {
            spec["containerEdits"]["mounts"] = Value::Array(self.mounts.clone());
        }
    }
}

/// Why sharing could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two devices of one claim ask for different MPS settings (one daemon per claim).
    #[error(
        "claim {0}: its GPUs ask for different MPS settings; one claim has one MPS daemon, so give its requests one config"
    )]
    MixedMps(String),
    /// A tool is missing from the driver root.
    #[error("{strategy} needs {tool}, which is not under the driver root {root} ({dirs})")]
    MissingTool {
        /// The strategy.
        strategy: &'static str,
        /// The binary.
        tool: &'static str,
        /// The driver root.
        root: String,
        /// Where it was looked for.
        dirs: String,
    },
    /// A tool ran and failed.
    #[error("{command} failed: {message}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status and stderr.
        message: String,
    },
    /// A state directory could not be made.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Exclusive => "Exclusive",
        Strategy::TimeSlicing => "TimeSlicing",
        Strategy::Mps => "MPS",
    }
}

impl Control {
    fn tool(&self, strategy: &'static str, tool: &'static str) -> Result<Option<(PathBuf, Vec<PathBuf>)>, Error> {
        let Control::Gpus { root, .. } = self else { return Ok(None) };
        let found = BINARY_DIRS.iter().map(|d| root.seen(&root.root.join(d).join(tool))).find(|p| p.is_file());
        let Some(path) = found else {
            return Err(Error::MissingTool {
                strategy,
                tool,
                root: root.root.display().to_string(),
                dirs: BINARY_DIRS.join(", "),
            });
        };
        let libs = LIBRARY_DIRS.iter().map(|d| root.seen(&root.root.join(d))).filter(|p| p.is_dir()).collect();
        Ok(Some((path, libs)))
    }

    /// Applies the sharing of claim `claim_uid` whose devices `gpus` have `configs`
    /// (device name → effective config) and returns the container edits. Per-claim MPS
    /// state goes under `state_dir/<claim uid>` (a host path the agent sees at the same
    /// path: beside the checkpoint, in the plugin directory).
    pub fn apply(
        &self,
        claim: &str,
        claim_uid: &str,
        gpus: &[&Gpu],
        configs: &BTreeMap<String, GpuConfig>,
        state_dir: &Path,
    ) -> Result<Edits, Error> {
        let mut edits = Edits::default();
        let mut mps: Vec<&Gpu> = Vec::new();
        let mut mps_config: Option<crate::config::Mps> = None;
        for gpu in gpus {
            let Some(config) = configs.get(&gpu.device_name()) else { continue };
            let s = &config.sharing;
            let env = edits.device_env.entry(gpu.device_name()).or_default();
            env.push(format!("PHALANX_GPU_{}_SHARING={}", gpu.index, strategy_name(s.strategy)));
            match s.strategy {
                Strategy::Exclusive => {}
                Strategy::TimeSlicing => {
                    let interval = s.time_slicing.as_ref().map(|t| t.interval).unwrap_or_default();
                    env.push(format!("PHALANX_GPU_{}_TIMESLICE={interval:?}", gpu.index));
                    if let Some((smi, libs)) = self.tool("TimeSlicing", "nvidia-smi")? {
                        let args = [
                            "compute-policy".to_owned(),
                            "-i".into(),
                            gpu.uuid.clone(),
                            format!("--set-timeslice={}", interval.code()),
                        ];
                        run(&smi, &args, &libs, &[], None)?;
                    }
                }
                Strategy::Mps => {
                    let wanted = s.mps.clone().unwrap_or_default();
                    if mps_config.as_ref().is_some_and(|c| *c != wanted) {
                        return Err(Error::MixedMps(claim.to_owned()));
                    }
                    mps_config = Some(wanted);
                    mps.push(gpu);
                }
            }
        }
        if mps.is_empty() {
            return Ok(edits);
        }
        let settings = mps_config.unwrap_or_default();
        let (pipe, log) = mps_dirs(state_dir, claim_uid);
        for dir in [&pipe, &log] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        }
        if let Some((control, libs)) = self.tool("MPS", "nvidia-cuda-mps-control")? {
            let uuids: Vec<&str> = mps.iter().map(|g| g.uuid.as_str()).collect();
            let env = mps_env(&pipe, &log, &uuids);
            run(&control, &["-d".to_owned()], &libs, &env, None)?;
            let mut commands = String::new();
            if let Some(p) = settings.default_active_thread_percentage {
                commands.push_str(&format!("set_default_active_thread_percentage {p}\n"));
            }
            if let Some(limit) = settings.default_pinned_device_memory_limit.as_deref().and_then(parse_bytes) {
                for uuid in &uuids {
                    commands.push_str(&format!("set_default_device_pinned_mem_limit {uuid} {}M\n", limit >> 20));
                }
            }
            if !commands.is_empty() {
                run(&control, &[], &libs, &env, Some(&commands))?;
            }
        }
        edits.env.push(format!("CUDA_MPS_PIPE_DIRECTORY={MPS_PIPE}"));
        if let Some(p) = settings.default_active_thread_percentage {
            edits.env.push(format!("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={p}"));
        }
        edits.mounts.push(json!({
            "hostPath": pipe,
            "containerPath": MPS_PIPE,
            "options": ["rw", "nosuid", "nodev", "rbind"],
        }));
        Ok(edits)
    }

    /// Stops claim `claim_uid`'s MPS daemon, if it has one, and removes its directories.
    pub fn release(&self, claim_uid: &str, state_dir: &Path) -> Result<(), Error> {
        let (pipe, log) = mps_dirs(state_dir, claim_uid);
        let Some(dir) = pipe.parent().map(Path::to_owned) else { return Ok(()) };
        if !dir.exists() {
            return Ok(());
        }
        if let Ok(Some((control, libs))) = self.tool("MPS", "nvidia-cuda-mps-control") {
            let env = mps_env(&pipe, &log, &[]);
            if let Err(e) = run(&control, &[], &libs, &env, Some("quit\n")) {
                tracing::warn!(claim_uid, error = %e, "stopping the claim's MPS daemon");
            }
        }
        std::fs::remove_dir_all(&dir).map_err(|source| Error::Io { path: dir, source })
    }
}

/// A claim's MPS pipe and log directories.
fn mps_dirs(state_dir: &Path, claim_uid: &str) -> (PathBuf, PathBuf) {
    let d = state_dir.join(claim_uid);
    (d.join("pipe"), d.join("log"))
}

fn mps_env(pipe: &Path, log: &Path, uuids: &[&str]) -> Vec<(String, String)> {
    let mut env = vec![
        ("CUDA_MPS_PIPE_DIRECTORY".to_owned(), pipe.display().to_string()),
        ("CUDA_MPS_LOG_DIRECTORY".to_owned(), log.display().to_string()),
    ];
    if !uuids.is_empty() {
        env.push(("CUDA_VISIBLE_DEVICES".to_owned(), uuids.join(",")));
    }
    env
}

fn run(
    tool: &Path,
    args: &[String],
    libs: &[PathBuf],
    env: &[(String, String)],
    stdin: Option<&str>,
) -> Result<(), Error> {
    use std::io::Write;
    let command = format!("{} {}", tool.display(), args.join(" "));
    let ld_path = std::env::join_paths(libs).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let mut child = Command::new(tool)
        .args(args)
        .env("LD_LIBRARY_PATH", ld_path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool { command: command.clone(), message: e.to_string() })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Error::Tool { command: command.clone(), message: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Tool {
            command,
            message: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{API_VERSION, Interval, KIND, Mps, Sharing, TimeSlicing};
    use crate::discovery::profile::{Profile, ProfileDiscovery};
    use crate::discovery::{Discovery, NodeContext};

    fn gpus() -> Vec<Gpu> {
        ProfileDiscovery::new(Profile::load("hgx-h100-8").unwrap()).discover(&NodeContext::named("n")).unwrap().gpus
    }

    fn config(sharing: Sharing) -> GpuConfig {
        GpuConfig { api_version: API_VERSION.into(), kind: KIND.into(), sharing }
    }

    /// A driver root whose tools are shell scripts that append their arguments (and
    /// stdin) to `calls`.
    fn recording_root(dir: &Path) -> Control {
        let bin = dir.join("root/usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["nvidia-smi", "nvidia-cuda-mps-control"] {
            let script = format!(
                "#!/bin/sh\necho \"{tool} $* pipe=$CUDA_MPS_PIPE_DIRECTORY visible=$CUDA_VISIBLE_DEVICES\" >> {calls}\n[ -t 0 ] || [ \"$1\" = -d ] || [ \"$1\" = compute-policy ] || cat >> {calls}\n",
                calls = dir.join("calls").display()
            );
            let path = bin.join(tool);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let root = DriverRoot { root: dir.join("root"), dev_root: dir.join("root"), ..Default::default() };
        Control::Gpus { root }
    }

    #[test]
    fn time_slicing_sets_each_gpu_and_says_so_in_the_env() {
        let dir = tempfile::tempdir().unwrap();
        let control = recording_root(dir.path());
        let all = gpus();
        let ts = config(Sharing {
            strategy: Strategy::TimeSlicing,
            time_slicing: Some(TimeSlicing { interval: Interval::Long }),
            mps: None,
        });
        let configs = BTreeMap::from([("gpu-2".to_owned(), ts)]);
        let edits = control.apply("ns/c", "u", &[&all[2]], &configs, dir.path()).unwrap();
        assert_eq!(edits.device_env["gpu-2"], ["PHALANX_GPU_2_SHARING=TimeSlicing", "PHALANX_GPU_2_TIMESLICE=Long"]);
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert!(calls.contains(&format!("nvidia-smi compute-policy -i {} --set-timeslice=3", all[2].uuid)), "{calls}");
    }

    #[test]
    fn mps_starts_a_daemon_per_claim_sets_its_defaults_and_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let control = recording_root(dir.path());
        let all = gpus();
        let mps = config(Sharing {
            strategy: Strategy::Mps,
            time_slicing: None,
            mps: Some(Mps {
                default_active_thread_percentage: Some(40),
                default_pinned_device_memory_limit: Some("2Gi".into()),
            }),
        });
        let configs = BTreeMap::from([("gpu-0".to_owned(), mps.clone()), ("gpu-1".to_owned(), mps)]);
        let edits = control.apply("ns/c", "u1", &[&all[0], &all[1]], &configs, &dir.path().join("mps")).unwrap();
        let pipe = dir.path().join("mps/u1/pipe");
        assert!(pipe.is_dir());
        assert_eq!(
            edits.env,
            [format!("CUDA_MPS_PIPE_DIRECTORY={MPS_PIPE}"), "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=40".to_owned()]
        );
        assert_eq!(edits.mounts[0]["hostPath"], pipe.display().to_string());
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        let visible = format!("visible={},{}", all[0].uuid, all[1].uuid);
        assert!(calls.contains(&format!("nvidia-cuda-mps-control -d pipe={} {visible}", pipe.display())), "{calls}");
        assert!(calls.contains("set_default_active_thread_percentage 40"), "{calls}");
        assert!(calls.contains(&format!("set_default_device_pinned_mem_limit {} 2048M", all[1].uuid)), "{calls}");
        control.release("u1", &dir.path().join("mps")).unwrap();
        assert!(std::fs::read_to_string(dir.path().join("calls")).unwrap().contains("quit"));
        assert!(!dir.path().join("mps/u1").exists());
    }

    #[test]
    fn a_missing_tool_or_mixed_mps_settings_fail_clearly_and_fake_hardware_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let all = gpus();
        let empty = Control::Gpus {
            root: DriverRoot { root: dir.path().join("none"), dev_root: dir.path().join("none"), ..Default::default() },
        };
        let mps = |p| {
            config(Sharing {
                strategy: Strategy::Mps,
                time_slicing: None,
                mps: Some(Mps { default_active_thread_percentage: Some(p), default_pinned_device_memory_limit: None }),
            })
        };
        let one = BTreeMap::from([("gpu-0".to_owned(), mps(50))]);
        let err = empty.apply("ns/c", "u", &[&all[0]], &one, dir.path()).unwrap_err().to_string();
        assert!(err.contains("MPS needs nvidia-cuda-mps-control") && err.contains("usr/bin"), "{err}");
        let mixed = BTreeMap::from([("gpu-0".to_owned(), mps(50)), ("gpu-1".to_owned(), mps(60))]);
        let err = Control::FakeHardware.apply("ns/c", "u", &[&all[0], &all[1]], &mixed, dir.path()).unwrap_err();
        assert!(matches!(err, Error::MixedMps(_)), "{err}");
        let edits = Control::FakeHardware.apply("ns/c", "u", &[&all[0]], &one, dir.path()).unwrap();
        assert_eq!(edits.env[0], format!("CUDA_MPS_PIPE_DIRECTORY={MPS_PIPE}"));
        Control::FakeHardware.release("u", dir.path()).unwrap();
    }
}
