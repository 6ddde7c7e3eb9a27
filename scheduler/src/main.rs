//! `phalanx-scheduler`: see DESIGN.md. Subcommands: `simulate` (offline placement of a
//! snapshot); `run` (the scheduler service) comes with the service.

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
