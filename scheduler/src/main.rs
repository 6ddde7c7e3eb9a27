//! `phalanx-scheduler`: see DESIGN.md. Subcommands: `run` (the scheduler service) and
//! `simulate` (offline placement of a snapshot).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "phalanx-scheduler", version, about = "Gang-scheduling, topology-aware GPU scheduler")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler against the cluster of the current kubeconfig (or in-cluster).
    Run {
        /// Configuration file (YAML); every field has a default.
        #[arg(long, env = "PHALANX_CONFIG")]
        config: Option<PathBuf>,
        /// Kubeconfig to use instead of the default lookup.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// This replica's identity in leader election (default: POD_NAME or HOSTNAME).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Override the configuration's bindAddress (e.g. 127.0.0.1:0).
        #[arg(long)]
        bind_address: Option<std::net::SocketAddr>,
        /// Turn leader election off (a single replica).
        #[arg(long)]
        no_leader_election: bool,
    },
    /// Place the pending gangs of a cluster snapshot and print where they land.
    Simulate {
        /// YAML file(s) of Nodes, ResourceSlices, DeviceClasses, ResourceClaims and
        /// templates, PodGroups / PodGangs and Pods (multi-document or `kind: List`).
        #[arg(required = true)]
        snapshot: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Topology levels (YAML of a TopologyConfig); defaults per DESIGN.md.
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Place pods with this schedulerName.
        #[arg(long, default_value = "phalanx-scheduler")]
        scheduler_name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, kubeconfig, identity, bind_address, no_leader_election } => {
            match run(config, kubeconfig, identity, bind_address, no_leader_election) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("phalanx-scheduler run: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Simulate { snapshot, json, topology, scheduler_name } => {
            match phalanx_scheduler::simulate::run_files(&snapshot, topology.as_deref(), &scheduler_name, json) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("phalanx-scheduler simulate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(
    config: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    identity: Option<String>,
    bind_address: Option<std::net::SocketAddr>,
    no_leader_election: bool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use phalanx_scheduler::service::{self, config::SchedulerConfig};

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube_client=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs written to files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = SchedulerConfig::load(config.as_deref())?;
    if let Some(addr) = bind_address {
        config.bind_address = addr;
    }
    if no_leader_election {
        config.leader_election.enabled = false;
    }
    let identity = identity.unwrap_or_else(crate_identity);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(&path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                kube::Client::try_from(cfg)?
            }
            None => kube::Client::try_default().await.context("no kubeconfig and not in a cluster")?,
        };
        let running = service::start(client, config, identity).await.context("starting the scheduler")?;
        tracing::info!(address = %running.http_address, "serving /metrics, /healthz, /readyz");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

fn crate_identity() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("phalanx-scheduler-{}", std::process::id()))
}
