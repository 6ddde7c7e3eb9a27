//! `phalanx-worker`: `plan`, `check`, `exec -- <engine…>`, `serve`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use phalanx_worker::devices::Devices;
use phalanx_worker::engine::{self, Engine, KV_PORT};
use phalanx_worker::identity::{Hints, Identity, Policy, Role};
use phalanx_worker::model::{Model, ModelConfig};
use phalanx_worker::server::{self, AppState, CheckLabel, Metrics};
use phalanx_worker::transfer::{self, PrefillServer};
use phalanx_worker::verify::{self, Check, Facts};

#[derive(Parser)]
#[command(version, about = "Runtime of the Phalanx prefill/decode worker images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Downward API volume with `labels` and `annotations`.
    #[arg(long, env = "PHALANX_PODINFO", default_value = "/etc/podinfo")]
    podinfo: PathBuf,
    /// Where a failed required check is written for the kubelet.
    #[arg(long, env = "PHALANX_TERMINATION_LOG", default_value = "/dev/termination-log")]
    termination_log: PathBuf,
    /// The KV side-channel port.
    #[arg(long, env = "PHALANX_KV_PORT", default_value_t = KV_PORT)]
    kv_port: u16,
}

#[derive(Subcommand)]
enum Command {
    /// Print identity, hints, devices, checks and the engine configuration as JSON.
    Plan {
        #[command(flatten)]
        common: Common,
        /// The engine to configure.
        #[arg(long, value_enum)]
        engine: Option<Engine>,
    },
    /// Check the placement; exit 1 with a termination message if a required hint is violated.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Check, configure and exec an engine: `phalanx-worker exec -- vllm serve <model>`.
    Exec {
        #[command(flatten)]
        common: Common,
        /// The engine (default: guessed from the command).
        #[arg(long, value_enum)]
        engine: Option<Engine>,
        /// The engine's command line.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Serve the built-in reference engine (OpenAI-compatible `/v1/completions`).
    Serve {
        #[command(flatten)]
        common: Common,
        /// HTTP address.
        #[arg(long, env = "PHALANX_LISTEN", default_value = "0.0.0.0:8000")]
        listen: String,
        /// Prefill peers `host:port` (decode role); without them, `--discover` finds them.
        #[arg(long = "prefill-peer", env = "PHALANX_PREFILL_PEERS", value_delimiter = ',')]
        prefill_peers: Vec<String>,
        /// Find prefill peers through the API: pods of this namespace with the same
        /// `phalanx.dev/pd-group` and `phalanx.dev/role=prefill`.
        #[arg(long, env = "PHALANX_DISCOVER")]
        discover: bool,
        /// Shared-memory directory for same-node KV handoff (empty: none).
        #[arg(long, env = "PHALANX_SHM_DIR", default_value = "/dev/shm")]
        shm_dir: String,
        /// Model layers.
        #[arg(long, default_value_t = ModelConfig::default().layers)]
        layers: usize,
        /// Attention heads.
        #[arg(long, default_value_t = ModelConfig::default().heads)]
        heads: usize,
        /// Head width.
        #[arg(long, default_value_t = ModelConfig::default().head_dim)]
        head_dim: usize,
        /// Longest sequence.
        #[arg(long, default_value_t = ModelConfig::default().max_tokens)]
        max_tokens: usize,
        /// Weight seed.
        #[arg(long, default_value_t = ModelConfig::default().seed)]
        seed: u64,
    },
}

struct Placement {
    identity: Identity,
    hints: Hints,
    devices: Devices,
    checks: Vec<Check>,
}

fn env_map() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

/// Node topology known from `PHALANX_TOPOLOGY_<LEVEL>` (e.g. set from node labels by a chart).
fn topology(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    env.iter()
        .filter_map(|(k, v)| k.strip_prefix("PHALANX_TOPOLOGY_").map(|l| (l.to_ascii_lowercase(), v.clone())))
        .collect()
}

fn terminate(path: &Path, message: &str) -> ExitCode {
    eprintln!("phalanx-worker: {message}");
    if let Err(e) = std::fs::write(path, message) {
        eprintln!("phalanx-worker: (could not write {}: {e})", path.display());
    }
    ExitCode::from(1)
}

/// Reads and checks the placement; `Err` is the termination message.
fn placement(common: &Common) -> Result<Placement, String> {
    let env = env_map();
    let identity = Identity::read(&env, &common.podinfo).map_err(|e| format!("reading the Downward API: {e}"))?;
    let hints = identity.hints().map_err(|e| format!("invalid placement hint: {e}"))?;
    let devices = Devices::from_env(&env);
    let checks = verify::local_checks(&hints, &devices);
    for c in &checks {
        if c.ok {
            tracing::info!(check = c.name, "{}", c.describe());
        } else {
            tracing::warn!(check = c.name, "{}", c.describe());
        }
    }
    if let Some(message) = verify::termination_message(&checks) {
        return Err(message);
    }
    Ok(Placement { identity, hints, devices, checks })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Plan { common, engine } => {
            let env = env_map();
            let identity = match Identity::read(&env, &common.podinfo) {
                Ok(i) => i,
                Err(e) => return terminate(&common.termination_log, &e.to_string()),
            };
            let hints = match identity.hints() {
                Ok(h) => h,
                Err(e) => return terminate(&common.termination_log, &format!("invalid placement hint: {e}")),
            };
            let devices = Devices::from_env(&env);
            let checks = verify::local_checks(&hints, &devices);
            let plan = engine::plan(&identity, hints.role, &devices, engine, common.kv_port);
            let out = serde_json::json!({ "identity": identity, "hints": hints, "devices": devices, "checks": checks, "plan": plan });
            println!("{}", serde_json::to_string_pretty(&out).expect("serialises"));
            ExitCode::SUCCESS
        }
        Command::Check { common } => match placement(&common) {
            Ok(p) => {
                println!("placement ok: {} check(s) passed", p.checks.iter().filter(|c| c.ok).count());
                ExitCode::SUCCESS
            }
            Err(message) => terminate(&common.termination_log, &message),
        },
        Command::Exec { common, engine, command } => {
            let p = match placement(&common) {
                Ok(p) => p,
                Err(message) => return terminate(&common.termination_log, &message),
            };
            let engine = engine.or_else(|| Engine::detect(&command));
            let plan = engine::plan(&p.identity, p.hints.role, &p.devices, engine, common.kv_port);
            tracing::info!(?engine, env = ?plan.env, args = ?plan.args, "starting the engine");
            let mut cmd = std::process::Command::new(&command[0]);
            cmd.args(&command[1..]).args(&plan.args).envs(&plan.env);
            let err = std::os::unix::process::CommandExt::exec(&mut cmd);
            terminate(&common.termination_log, &format!("exec {}: {err}", command[0]))
        }
        Command::Serve {
            common,
            listen,
            prefill_peers,
            discover,
            shm_dir,
            layers,
            heads,
            head_dim,
            max_tokens,
            seed,
        } => {
            let config = ModelConfig { layers, heads, head_dim, ffn: ModelConfig::default().ffn, max_tokens, seed };
            let shm_dir = Some(PathBuf::from(shm_dir)).filter(|p| !p.as_os_str().is_empty() && p.is_dir());
            match serve(common.clone(), listen, prefill_peers, discover, shm_dir, config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(Failure::Placement(message)) => terminate(&common.termination_log, &message),
                Err(Failure::Other(e)) => {
                    eprintln!("phalanx-worker: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

enum Failure {
    Placement(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn count(metrics: &Metrics, check: &Check) {
    let verdict = if check.ok { "ok" } else { "violated" };
    metrics.checks.get_or_create(&CheckLabel { check: check.name.into(), verdict: verdict.into() }).inc();
}

async fn serve(
    common: Common,
    listen: String,
    static_peers: Vec<String>,
    discover: bool,
    shm_dir: Option<PathBuf>,
    config: ModelConfig,
) -> Result<(), Failure> {
    let p = placement(&common).map_err(Failure::Placement)?;
    let metrics = Metrics::new();
    p.checks.iter().for_each(|c| count(&metrics, c));
    let model = Arc::new(Model::new(config));
    let env = env_map();
    let facts = Facts::of(&p.identity.pod, &p.identity.node, &p.devices, topology(&env));
    let state = AppState::new(model.clone(), p.hints.role, shm_dir.clone(), metrics.clone());

    if p.hints.role != Role::Decode {
        let shm = match &shm_dir {
            Some(dir) => PrefillServer::shm_marker(dir, &p.identity.pod).ok(),
            None => None,
        };
        let sent = metrics.clone();
        let server = Arc::new(PrefillServer {
            model: model.clone(),
            facts: facts.clone(),
            shm,
            on_sent: Arc::new(move |bytes, seconds, transport| sent.moved(bytes, seconds, transport)),
        });
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", common.kv_port))
            .await
            .with_context(|| format!("binding the KV port {}", common.kv_port))?;
        tracing::info!(port = common.kv_port, "serving KV to decode workers");
        tokio::spawn(server.serve(listener));
        state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    } else {
        // Decode: find the prefill peers, check the KV domain with them, then ready.
        let app_state = state.clone();
        let hints = p.hints.clone();
        let identity = p.identity.clone();
        let metrics = metrics.clone();
        let me = facts.clone();
        let (fail_tx, mut fail_rx) = tokio::sync::mpsc::channel::<String>(1);
        tokio::spawn(async move {
            loop {
                let addresses = if static_peers.is_empty() && discover {
                    discover_peers(&identity, &hints, common.kv_port).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "finding prefill peers");
                        Vec::new()
                    })
                } else {
                    static_peers.clone()
                };
                let mut peers = Vec::new();
                for address in &addresses {
                    match transfer::peer_facts(address, state.shm_dir.as_deref()).await {
                        Ok(peer) => peers.push(peer),
                        Err(e) => tracing::info!(%address, error = %e, "prefill peer not answering yet"),
                    }
                }
                if !peers.is_empty() {
                    let facts: Vec<Facts> = peers.iter().map(|p| p.facts.clone()).collect();
                    if let Some(check) = verify::kv_domain_check(&hints, &me, &facts) {
                        count(&metrics, &check);
                        tracing::info!("{}", check.describe());
                        if !check.ok && check.policy == Policy::Required {
                            let _ = fail_tx.send(verify::termination_message(&[check]).expect("a failed check")).await;
                            return;
                        }
                    }
                    let shared = peers.iter().filter(|p| p.shares_memory).count();
                    tracing::info!(peers = peers.len(), shared_memory = shared, "prefill peers known");
                    *state.peers.write().await = peers;
                    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
                } else {
                    *state.not_ready.write().await = format!("no prefill peer answers yet (asked: {addresses:?})");
                }
                tokio::time::sleep(Duration::from_secs(if state.ready.load(std::sync::atomic::Ordering::SeqCst) {
                    15
                } else {
                    1
                }))
                .await;
            }
        });
        let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
        tracing::info!(%listen, role = p.hints.role.as_str(), "serving /v1/completions");
        let app = server::router(app_state);
        tokio::select! {
            served = axum::serve(listener, app) => served.context("HTTP server")?,
            Some(message) = fail_rx.recv() => return Err(Failure::Placement(message)),
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, role = p.hints.role.as_str(), "serving /v1/completions");
    tokio::select! {
        served = axum::serve(listener, server::router(state)) => served.context("HTTP server")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Pods of our namespace with our `pd-group` and role `prefill`, Running, with an IP.
async fn discover_peers(identity: &Identity, hints: &Hints, kv_port: u16) -> anyhow::Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Pod;
    let group = hints.pd_group.as_deref().context("--discover needs the label phalanx.dev/pd-group")?;
    let client = kube::Client::try_default().await.context("connecting to the apiserver")?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, &identity.namespace);
    let selector = format!("phalanx.dev/pd-group={group},phalanx.dev/role=prefill");
    let list = pods.list(&kube::api::ListParams::default().labels(&selector)).await.context("listing prefill pods")?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| {
            let status = p.status?;
            (status.phase.as_deref() == Some("Running")).then_some(())?;
            Some(format!("{}:{kv_port}", status.pod_ip?))
        })
        .collect())
}
