//! `phalanx-dra-driver`: the DRA kubelet driver for `gpu.phalanx.dev`.
//!
//! - `run`: the node agent (DaemonSet): publish this node's devices, serve the kubelet
//!   plugin, report health;
//! - `publish`: publish fake devices for many nodes from one process (scale tests, demo);
//! - `discover`: print what discovery finds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use phalanx_dra_driver::agent::{self, AgentConfig, Backend};
use phalanx_dra_driver::attributes::{GPU_DRIVER, NIC_DRIVER};
use phalanx_dra_driver::discovery::{self, NodeContext};
use phalanx_dra_driver::fleet::{Fleet, NodeChoice};
use phalanx_dra_driver::health::{self, Faults};
use phalanx_dra_driver::publisher::Publisher;
use tokio::sync::watch;

#[derive(Parser)]
#[command(version, about = "DRA kubelet driver for NVIDIA GPUs (gpu.phalanx.dev)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct BackendArgs {
    /// Fake hardware: a built-in profile (hgx-h100-8, hgx-h100-8-mig, hgx-h200-8,
    /// hgx-b200-8, gb200-nvl72, l40s-pcie-8, mixed-small) or a profile file. Without it,
    /// devices come from NVML.
    #[arg(long, env = "PHALANX_PROFILE")]
    profile: Option<String>,
    /// sysfs root for PCI facts (NVML backend).
    #[arg(long, default_value = "/sys")]
    sysfs_root: PathBuf,
    /// NVML library to load (NVML backend) [default: libnvidia-ml.so.1 from the loader's
    /// path], e.g. under a driver root, or the project's fake library.
    #[arg(long, env = "PHALANX_NVML_LIBRARY")]
    nvml_library: Option<PathBuf>,
}

impl BackendArgs {
    fn backend(&self) -> Backend {
        match &self.profile {
            Some(p) => Backend::Profile(p.clone()),
            None => Backend::Nvml { sysfs: self.sysfs_root.clone(), library: self.nvml_library.clone() },
        }
    }
}

// Parsed once per process; boxing the large `run` variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the node agent: publisher + kubelet plugin + health.
    Run {
        /// This node's name.
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        #[command(flatten)]
        backend: BackendArgs,
        /// The kubelet's root directory (sockets go under plugins_registry/ and plugins/).
        #[arg(long, default_value = "/var/lib/kubelet")]
        kubelet_root: PathBuf,
        /// Where per-claim CDI specs are written.
        #[arg(long, default_value = "/var/run/cdi")]
        cdi_root: PathBuf,
        /// Checkpoint file [default: <kubelet-root>/plugins/gpu.phalanx.dev/checkpoint.json].
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Do not publish the profile's NICs under nic.phalanx.dev.
        #[arg(long)]
        no_nics: bool,
        /// Fault-injection file: lines `<device> <reason>` mark devices unhealthy.
        #[arg(long)]
        fault_file: Option<PathBuf>,
        /// How often the fault file (or the fault store) is re-read, in milliseconds.
        #[arg(long, default_value_t = 500)]
        fault_poll_ms: u64,
        /// How often row remapping is polled through NVML, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        remap_poll_ms: u64,
        /// Delete this node's ResourceSlices when stopping.
        #[arg(long)]
        remove_slices_on_exit: bool,
        /// Serve /metrics, /healthz and /readyz on this address, e.g. 0.0.0.0:9464 (the
        /// chart's); empty: not served.
        #[arg(long, env = "PHALANX_HTTP_ADDR", default_value = "")]
        http_addr: String,
        /// Persisted GPU faults [default: <kubelet-root>/plugins/gpu.phalanx.dev/faults.json].
        #[arg(long)]
        fault_store: Option<PathBuf>,
        /// Root of the host's NVIDIA driver files (libraries, nvidia-smi), injected into
        /// GPU containers by the base CDI device: `/` for a driver installed on the
        /// host, `/run/nvidia/driver` for the GPU operator's driver container.
        #[arg(long, env = "PHALANX_DRIVER_ROOT", default_value = "/")]
        driver_root: PathBuf,
        /// Root under which `dev/nvidia*` device nodes are found [default: the driver root].
        #[arg(long, env = "PHALANX_DEV_ROOT")]
        dev_root: Option<PathBuf>,
        /// Where the host's `/` is mounted in this container (the DaemonSet mounts it at
        /// /host); the driver and device roots are read there.
        #[arg(long, env = "PHALANX_HOST_MOUNT", default_value = "/")]
        host_mount: PathBuf,
        /// Host path of this binary for the CDI hooks [default: a copy at
        /// <kubelet-root>/plugins/gpu.phalanx.dev/bin/phalanx-dra-driver].
        #[arg(long)]
        cdi_hook_path: Option<PathBuf>,
    },
    /// OCI createContainer hooks of the base CDI device (run by the container runtime,
    /// with the container's state on stdin).
    CdiHook {
        #[command(subcommand)]
        hook: HookCommand,
    },
    /// List or clear the GPU faults this node's agent persisted (they taint a device
    /// until cleared); the running agent picks up a clear within a second.
    Faults {
        #[command(subcommand)]
        action: FaultsAction,
        /// The kubelet's root directory.
        #[arg(long, default_value = "/var/lib/kubelet", global = true)]
        kubelet_root: PathBuf,
        /// The fault store [default: <kubelet-root>/plugins/gpu.phalanx.dev/faults.json].
        #[arg(long, global = true)]
        fault_store: Option<PathBuf>,
    },
    /// Publish a profile's devices for many (fake) nodes from one process.
    Publish {
        /// The profile (required: there is no NVML for other nodes).
        #[arg(long)]
        profile: String,
        /// Nodes to publish for, comma-separated.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Publish for every Node matching this label selector (in name order).
        #[arg(long)]
        node_selector: Option<String>,
        /// Do not publish NICs.
        #[arg(long)]
        no_nics: bool,
        /// Fault file: `<device> <reason>` or `<node> <device> <reason>` lines.
        #[arg(long)]
        fault_file: Option<PathBuf>,
        /// Publish once, print how long it took, and exit.
        #[arg(long)]
        once: bool,
        /// Delete the published slices when stopping.
        #[arg(long)]
        remove_slices_on_exit: bool,
    },
    /// Write the sysfs tree (PCI links and NUMA nodes) of a profile's machine into a
    /// directory: with the fake NVML library, the NVML backend then runs without a GPU.
    FakeSysfs {
        /// The profile.
        #[arg(long)]
        profile: String,
        /// The directory to write (used as --sysfs-root).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the devices discovery finds, as YAML.
    Discover {
        #[command(flatten)]
        backend: BackendArgs,
        /// Node name the profile derives identities from.
        #[arg(long, env = "NODE_NAME", default_value = "localhost")]
        node_name: String,
        /// Node labels discovery may read (`key=value`, repeatable), e.g. the NVLink
        /// clique `nvidia.com/gpu.clique=<cluster>.<clique>`.
        #[arg(long = "node-label", value_parser = parse_label)]
        node_labels: Vec<(String, String)>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not key=value"))
}

#[derive(Subcommand)]
enum HookCommand {
    /// Recreate the driver libraries' soname links in the container.
    CreateSymlinks {
        /// `<target>::<link>`, repeatable.
        #[arg(long = "link")]
        links: Vec<String>,
    },
    /// Name the library folders for the container's linker and rebuild its cache.
    UpdateLdcache {
        /// A library folder, repeatable.
        #[arg(long = "folder")]
        folders: Vec<String>,
    },
}

#[derive(Subcommand)]
enum FaultsAction {
    /// Print the persisted faults.
    List,
    /// Clear one device's fault, or all with --all.
    Clear {
        /// The device, e.g. gpu-3.
        #[arg(long, required_unless_present = "all")]
        device: Option<String>,
        /// Clear every fault.
        #[arg(long, conflicts_with = "device")]
        all: bool,
    },
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs written to files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phalanx-dra-driver: {e:#}");
            let nvml_missing = e.chain().any(|c| {
                c.downcast_ref::<discovery::Error>().is_some_and(|d| matches!(d, discovery::Error::NvmlUnavailable(_)))
                    || c.downcast_ref::<agent::Error>()
                        .is_some_and(|a| matches!(a, agent::Error::Discovery(discovery::Error::NvmlUnavailable(_))))
            });
            ExitCode::from(if nvml_missing { 3 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Discover { backend, node_name, node_labels } => {
            let ctx = NodeContext { labels: node_labels.into_iter().collect(), ..NodeContext::named(node_name) };
            let inventory = backend.backend().open()?.discover(&ctx)?;
            print!("{}", serde_yaml::to_string(&inventory)?);
            Ok(())
        }
        Command::Run {
            node_name,
            backend,
            kubelet_root,
            cdi_root,
            checkpoint,
            no_nics,
            fault_file,
            fault_poll_ms,
            remap_poll_ms,
            remove_slices_on_exit,
            http_addr,
            fault_store,
            driver_root,
            dev_root,
            host_mount,
            cdi_hook_path,
        } => {
            let http_addr = match http_addr.trim() {
                "" => None,
                addr => Some(addr.parse().with_context(|| format!("--http-addr {addr:?} is not host:port"))?),
            };
            let backend = backend.backend();
            // Fail fast, before touching the apiserver, where NVML is missing.
            backend.open()?;
            let client = kube::Client::try_default().await.context("connecting to the apiserver")?;
            let config = AgentConfig {
                node_name,
                backend,
                kubelet_root,
                cdi_root,
                checkpoint,
                publish_nics: !no_nics,
                fault_file,
                fault_poll: Duration::from_millis(fault_poll_ms),
                remap_poll: Duration::from_millis(remap_poll_ms),
                remove_slices_on_exit,
                http_addr,
                fault_store,
                driver_root: phalanx_dra_driver::driver_root::DriverRoot {
                    dev_root: dev_root.unwrap_or_else(|| driver_root.clone()),
                    root: driver_root,
                    host_mount,
                },
                cdi_hook_path,
            };
            agent::run(config, client, shutdown_signal()).await?;
            Ok(())
        }
        Command::CdiHook { hook } => {
            use phalanx_dra_driver::cdi_hook;
            let rootfs = cdi_hook::rootfs_from_stdin()?;
            match hook {
                HookCommand::CreateSymlinks { links } => {
                    cdi_hook::create_symlinks(&rootfs, &links)?;
                }
                HookCommand::UpdateLdcache { folders } => {
                    cdi_hook::update_ldcache(&rootfs, &folders, &cdi_hook::LDCONFIGS)?;
                }
            }
            Ok(())
        }
        Command::FakeSysfs { profile, out } => {
            let profile = discovery::profile::Profile::load(&profile)?;
            discovery::fake::write_sysfs(&profile, &out)
                .with_context(|| format!("writing a fake sysfs tree into {}", out.display()))?;
            Ok(())
        }
        Command::Faults { action, kubelet_root, fault_store } => {
            let store = health::FaultStore::new(
                fault_store.unwrap_or_else(|| kubelet_root.join("plugins").join(GPU_DRIVER).join("faults.json")),
            );
            match action {
                FaultsAction::List => {
                    for (device, fault) in store.load()? {
                        println!("{device}\t{}\tsince {}", fault.reason, fault.since);
                    }
                }
                FaultsAction::Clear { device, all: _ } => {
                    let cleared = store.clear(device.as_deref())?;
                    if cleared.is_empty() {
                        eprintln!("no fault to clear in {}", store.path().display());
                    }
                    for d in cleared {
                        println!("cleared {d}");
                    }
                }
            }
            Ok(())
        }
        Command::Publish { profile, nodes, node_selector, no_nics, fault_file, once, remove_slices_on_exit } => {
            let client = kube::Client::try_default().await.context("connecting to the apiserver")?;
            let discovery = Backend::Profile(profile).open()?;
            let choice = match &node_selector {
                Some(selector) => NodeChoice::Selector(selector),
                None => NodeChoice::Names(&nodes),
            };
            let started = Instant::now();
            let fleet = Fleet::discover(&client, discovery.as_ref(), choice, !no_nics).await?;
            let (faults_tx, mut faults_rx) = watch::channel(Faults::default());
            let publisher = Publisher::new(client.clone());
            fleet.set_pools(&publisher, &Faults::default());
            let written = publisher.sync_all().await?;
            eprintln!("published {} pools ({written} written) in {:.2?}", publisher.pools().len(), started.elapsed());
            if once {
                return Ok(());
            }
            if let Some(path) = fault_file {
                tokio::spawn(health::watch_fault_file(path, Duration::from_millis(500), faults_tx));
            }
            let runner = publisher.clone();
            let running = tokio::spawn(async move { runner.run(&[GPU_DRIVER, NIC_DRIVER]).await });
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    changed = faults_rx.changed() => {
                        if changed.is_err() { shutdown.as_mut().await; break; }
                        let faults = faults_rx.borrow_and_update().clone();
                        fleet.set_pools(&publisher, &faults);
                    }
                }
            }
            running.abort();
            if remove_slices_on_exit {
                publisher.remove_all().await?;
            }
            Ok(())
        }
    }
}
