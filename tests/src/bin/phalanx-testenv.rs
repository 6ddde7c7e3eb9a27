//! `phalanx-testenv up`: the test control plane as a foreground command, for `make demo`,
//! benchmarks and manual checks. Prints the kubeconfig path and runs until Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use phalanx_testenv::{FeatureSet, Options, TestEnv};

#[derive(Parser)]
#[command(about = "A real Kubernetes control plane on loopback (etcd, kube-apiserver, kube-controller-manager, kwok)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the control plane and stay in the foreground until Ctrl-C (or SIGTERM).
    Up {
        /// Turn on every alpha/beta feature gate and API group on every component.
        #[arg(long)]
        alpha: bool,
        /// Turn on every beta feature gate and beta API group (e.g. the 1.37 Workload API).
        #[arg(long, conflicts_with = "alpha")]
        beta: bool,
        /// Also run the upstream kube-scheduler.
        #[arg(long)]
        kube_scheduler: bool,
        /// Do not run kwok.
        #[arg(long)]
        no_kwok: bool,
        /// Also start N real nodes (`real-0`, …): a real kubelet and containerd each, in
        /// namespaces of their own (needs root and `make node-binaries`).
        #[arg(long, default_value_t = 0, value_name = "N")]
        real_nodes: usize,
        /// Also copy the admin kubeconfig to this path once the apiserver is ready.
        #[arg(long)]
        write_kubeconfig: Option<PathBuf>,
    },
    /// Build (or reuse) the control-plane binaries and print their directory.
    Binaries,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Binaries => {
            println!("{}", phalanx_testenv::binaries::bin_dir()?.display());
            Ok(())
        }
        Command::Up { alpha, beta, kube_scheduler, no_kwok, real_nodes, write_kubeconfig } => {
            let features = match (alpha, beta) {
                (true, _) => FeatureSet::Alpha,
                (_, true) => FeatureSet::Beta,
                _ => FeatureSet::Default,
            };
            let options = Options::default()
                .features(features)
                .kube_scheduler(kube_scheduler)
                .kwok(!no_kwok)
                .real_nodes(real_nodes);
            let mut env = TestEnv::start(options).await.context("starting the control plane")?;
            if let Some(path) = write_kubeconfig {
                std::fs::copy(env.kubeconfig_path(), &path).with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{}", env.kubeconfig_path().display());
            for node in env.real_nodes() {
                eprintln!(
                    "real node {} ({}) Ready; kubelet root {}, CDI dir {}",
                    node.name(),
                    node.ip(),
                    node.kubelet_root().display(),
                    node.cdi_dir().display()
                );
            }
            eprintln!(
                "control plane up at {}; logs in {}; Ctrl-C stops it",
                env.apiserver_url(),
                env.dir().join("logs").display()
            );
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut check = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = check.tick() => env.check_running().context("a component died")?,
                }
            }
            eprintln!("stopping");
            Ok(())
        }
    }
}
