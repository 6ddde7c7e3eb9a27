//! The node agent: discovery, publishing, health and the kubelet plugin for one node,
//! wired together. `main` parses flags into an [`AgentConfig`] and calls [`run`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use tokio::sync::{Mutex, watch};

use crate::attributes::{self, GPU_DRIVER, NIC_DRIVER};
use crate::cdi::CdiWriter;
use crate::checkpoint::{self, Checkpoint};
use crate::discovery::nvml::NvmlDiscovery;
use crate::discovery::profile::{Profile, ProfileDiscovery};
use crate::discovery::sysfs::Sysfs;
use crate::discovery::{self, Discovery, NodeContext, NodeInventory};
use crate::health::{self, Faults};
use crate::mig::MigInventory;
use crate::plugin::{self, HealthSource, PluginConfig};
use crate::prepare::{self, NodeState};
use crate::publisher::{self, NodeRef, Publisher};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the Node failed.
    #[error("reading Node {node}: {source}")]
    Node {
        /// Node name.
        node: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// Discovery failed.
    #[error(transparent)]
    Discovery(#[from] discovery::Error),
    /// The checkpoint is unusable.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    /// Recovering from the checkpoint failed.
    #[error("recovering prepared claims: {0}")]
    Recover(#[from] prepare::Error),
    /// The kubelet plugin failed.
    #[error(transparent)]
    Plugin(#[from] plugin::Error),
    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] publisher::Error),
    /// The metrics/probe address could not be bound.
    #[error("serving /metrics on {addr}: {source}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kubelet answered NotifyRegistrationStatus with `plugin_registered: false`.
    #[error("the kubelet rejected the plugin registration (see the log for its reason); exiting so the pod restarts")]
    RegistrationRejected,
}

/// Where the devices come from.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Real GPUs through NVML, PCI facts from this sysfs root.
    Nvml {
        /// Usually `/sys`.
        sysfs: PathBuf,
        /// `libnvidia-ml.so` to load instead of the loader's default (a driver root such
        /// as `/run/nvidia/driver`, or the project's fake library in tests).
        library: Option<PathBuf>,
    },
    /// Fake hardware: a built-in profile name or a profile file.
    Profile(String),
}

impl Backend {
    /// Opens the backend; NVML fails here, clearly, where it is absent.
    pub fn open(&self) -> Result<Box<dyn Discovery>, discovery::Error> {
        Ok(match self {
            Backend::Nvml { sysfs, library } => Box::new(NvmlDiscovery::init(Sysfs::at(sysfs), library.as_deref())?),
            Backend::Profile(p) => Box::new(ProfileDiscovery::new(Profile::load(p)?)),
        })
    }
}

/// Everything the node agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name.
    pub node_name: String,
    /// Device source.
    pub backend: Backend,
    /// Kubelet root (`/var/lib/kubelet`).
    pub kubelet_root: PathBuf,
    /// CDI spec directory (`/var/run/cdi`).
    pub cdi_root: PathBuf,
    /// Checkpoint file; default `<kubelet root>/plugins/gpu.phalanx.dev/checkpoint.json`.
    pub checkpoint: Option<PathBuf>,
    /// Publish NICs under `nic.phalanx.dev` (profile backend).
    pub publish_nics: bool,
    /// Fault-injection file (profile backend).
    pub fault_file: Option<PathBuf>,
    /// How often the fault file (or the fault store) is re-read.
    pub fault_poll: Duration,
    /// How often NVML's remapped rows are polled (NVML backend).
    pub remap_poll: Duration,
    /// Delete our slices on shutdown.
    pub remove_slices_on_exit: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: not served.
    pub http_addr: Option<std::net::SocketAddr>,
    /// Persisted faults (NVML backend); default
    /// `<kubelet root>/plugins/gpu.phalanx.dev/faults.json`.
    pub fault_store: Option<PathBuf>,
    /// The host's driver files and device nodes (the base CDI device).
    pub driver_root: crate::driver_root::DriverRoot,
    /// Host path of this binary for the CDI hooks; default: a copy under the plugin
    /// directory.
    pub cdi_hook_path: Option<PathBuf>,
}

impl AgentConfig {
    /// The fault store this agent uses.
    pub fn fault_store(&self) -> health::FaultStore {
        let plugin = PluginConfig { driver: GPU_DRIVER.into(), kubelet_root: self.kubelet_root.clone() };
        health::FaultStore::new(self.fault_store.clone().unwrap_or_else(|| plugin.plugin_dir().join("faults.json")))
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn node_context(client: &kube::Client, name: &str) -> Result<(NodeRef, NodeContext), Error> {
    let node = Api::<Node>::all(client.clone())
        .get(name)
        .await
        .map_err(|source| Error::Node { node: name.to_owned(), source })?;
    let uid = node.metadata.uid.clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = node.metadata.labels.unwrap_or_default();
    Ok((NodeRef { name: name.to_owned(), uid }, NodeContext { name: name.to_owned(), index: 0, labels }))
}

/// The prepared-claim state of `driver`: its checkpoint (for the GPU driver
/// `--checkpoint` when given, else `<kubelet root>/plugins/<driver>/checkpoint.json`)
/// recovered, and its CDI writer.
fn open_state(
    driver: &str,
    config: &AgentConfig,
    inventory: &NodeInventory,
    mig: &MigInventory,
) -> Result<Arc<Mutex<NodeState>>, Error> {
    let plugin = PluginConfig { driver: driver.into(), kubelet_root: config.kubelet_root.clone() };
    let default_path = plugin.plugin_dir().join("checkpoint.json");
    let path = match (&config.checkpoint, driver) {
        (Some(path), GPU_DRIVER) => path.clone(),
        (Some(path), _) => path.with_file_name(format!("{driver}-checkpoint.json")),
        (None, _) => default_path,
    };
    let checkpoint = Checkpoint::load(&path, &checkpoint::boot_id())?;
    let (state, recovery) = NodeState::recover(
        driver,
        &config.node_name,
        inventory.clone(),
        checkpoint,
        CdiWriter::new(&config.cdi_root, driver),
    )?;
    tracing::info!(driver, completed = recovery.completed, abandoned = ?recovery.abandoned, "checkpoint recovered");
    // Sharing strategies act on real GPUs only; on fake hardware they edit containers.
    let sharing = match &config.backend {
        Backend::Nvml { .. } => crate::sharing::Control::Gpus { root: config.driver_root.clone() },
        Backend::Profile(_) => crate::sharing::Control::FakeHardware,
    };
    Ok(Arc::new(Mutex::new(state.with_mig(mig.clone()).with_sharing(sharing))))
}

/// Hands the node's GPU pool (MIG counter sets included) to the publisher and counts its
/// devices by health.
fn set_gpu_pool(
    publisher: &Publisher,
    metrics: &crate::metrics::Metrics,
    node: &NodeRef,
    inventory: &NodeInventory,
    mig: &MigInventory,
    unhealthy: &attributes::Unhealthy,
) {
    let pool = attributes::gpu_pool(inventory, mig, unhealthy, &now());
    let tainted = pool.devices.iter().filter(|d| d.taints.as_ref().is_some_and(|t| !t.is_empty())).count();
    metrics.set_devices(GPU_DRIVER, pool.devices.len(), tainted);
    publisher.set_pool_with_counters(GPU_DRIVER, node.clone(), pool.devices, pool.shared_counters);
}

/// Re-discovers when the Node's labels change (the NVLink clique label is a fallback
/// source of the NVLink domain) and sends the new inventory when it differs.
async fn follow_node_labels(
    client: kube::Client,
    mut ctx: NodeContext,
    discovery: Arc<dyn Discovery>,
    driver_root: crate::driver_root::DriverRoot,
    inventories: watch::Sender<NodeInventory>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let nodes = Api::<Node>::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", ctx.name));
    let mut events = std::pin::pin!(watcher::watcher(nodes, config));
    while let Some(event) = events.next().await {
        let node = match event {
            Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => node,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching this Node");
                continue;
            }
        };
        let labels = node.metadata.labels.unwrap_or_default();
        if labels == ctx.labels {
            continue;
        }
        ctx.labels = labels;
        match discovery.discover(&ctx) {
            Ok(mut inventory) => {
                driver_root.resolve_device_nodes(&mut inventory);
                inventories.send_if_modified(|current| {
                    let changed = *current != inventory;
                    if changed {
                        tracing::info!("node labels changed what is published; republishing");
                        *current = inventory;
                    }
                    changed
                });
            }
            Err(e) => tracing::error!(error = %e, "re-discovering after a label change"),
        }
    }
}

/// Writes the node-wide base CDI spec from the driver root, with this binary copied to
/// the hook path first; returns the writer to remove it with.
fn write_base_spec(config: &AgentConfig, inventory: &NodeInventory) -> Result<CdiWriter, Error> {
    let version = inventory.gpus.first().map(|g| g.driver_version.clone()).unwrap_or_default();
    let files = config.driver_root.discover(&version);
    let plugin = PluginConfig { driver: GPU_DRIVER.into(), kubelet_root: config.kubelet_root.clone() };
    let hook = match &config.cdi_hook_path {
        Some(path) => Some(path.clone()),
        None if files.links.is_empty() && files.library_dirs.is_empty() => None,
        None => {
            let target = plugin.plugin_dir().join("bin/phalanx-dra-driver");
            // The hook runs on the host, whatever its libc: the static build beside this
            // binary (`<exe>-static`, as the image ships it) when there is one.
            let copied = std::env::current_exe().and_then(|exe| {
                let static_build = exe.with_file_name(format!(
                    "{}-static",
                    exe.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
                ));
                let exe = if static_build.is_file() { static_build } else { exe };
                std::fs::create_dir_all(target.parent().unwrap_or(&target))?;
                let tmp = target.with_extension("new");
                std::fs::copy(&exe, &tmp)?;
                std::fs::rename(&tmp, &target)
            });
            match copied {
                Ok(()) => Some(target),
                Err(e) => {
                    tracing::error!(error = %e, path = %target.display(), "cannot install the CDI hook; containers get no soname links or ldcache update");
                    None
                }
            }
        }
    };
    let writer = CdiWriter::new(&config.cdi_root, GPU_DRIVER);
    let path =
        writer.write_base(&crate::cdi::base_spec(&files, hook.as_deref(), &version)).map_err(prepare::Error::from)?;
    tracing::info!(
        path = %path.display(),
        driver_root = %config.driver_root.root.display(),
        device_nodes = files.device_nodes.len(),
        mounts = files.mounts.len(),
        links = files.links.len(),
        "wrote the base CDI spec"
    );
    Ok(writer)
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let discovery: Arc<dyn Discovery> = Arc::from(config.backend.open()?);
    let (node_ref, ctx) = node_context(&client, &config.node_name).await?;
    let mut inventory: NodeInventory = discovery.discover(&ctx)?;
    config.driver_root.resolve_device_nodes(&mut inventory);
    let base = write_base_spec(&config, &inventory)?;
    tracing::info!(node = config.node_name, gpus = inventory.gpus.len(), nics = inventory.nics.len(), "discovered");
    let metrics = crate::metrics::get();
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let http = match config.http_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Http { addr, source })?;
            let bound = listener.local_addr().map_err(|source| Error::Http { addr, source })?;
            tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
            let mut rx = http_stop_rx;
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            Some(tokio::spawn(crate::metrics::serve(listener, metrics.clone(), stopped)))
        }
        None => None,
    };

    let mig = discovery.discover_mig(&ctx)?;
    let state = open_state(GPU_DRIVER, &config, &inventory, &mig)?;
    let gpu_state_for_exit = state.clone();
    let nic_state = if config.publish_nics && !inventory.nics.is_empty() {
        Some(open_state(NIC_DRIVER, &config, &inventory, &MigInventory::default())?)
    } else {
        None
    };

    // Only this node's slices are watched (and repaired).
    let publisher = Publisher::new(client.clone()).for_node(&config.node_name);
    // Faults persisted by an earlier run are published from the first write on: a
    // restarted agent never shows a faulty GPU as healthy, not even briefly.
    let persisted = match (&config.fault_file, &config.backend) {
        (None, Backend::Nvml { .. }) => config.fault_store().unhealthy().unwrap_or_else(|e| {
            tracing::error!(error = %e, "fault store unreadable; starting without its faults");
            Default::default()
        }),
        _ => Default::default(),
    };
    let (faults_tx, faults_rx) = watch::channel(Faults { all_nodes: persisted.clone(), ..Default::default() });
    set_gpu_pool(&publisher, &metrics, &node_ref, &inventory, &mig, &persisted);
    let mut drivers = vec![GPU_DRIVER];
    if config.publish_nics && !inventory.nics.is_empty() {
        publisher.set_pool(NIC_DRIVER, node_ref.clone(), attributes::nic_devices(&inventory));
        drivers.push(NIC_DRIVER);
    }
    // The first write happens here, before the publisher's own loop starts (two writers
    // racing to create the same slice would only conflict): readiness means the node's
    // devices are in the API.
    let first_sync = publisher.sync_all().await;
    match &first_sync {
        Ok(_) => metrics.set_published(),
        Err(e) => tracing::warn!(error = %e, "first publish failed; the publisher retries"),
    }
    let publishing = {
        let p = publisher.clone();
        tokio::spawn(async move { p.run(&drivers).await })
    };

    // Health: faults → taints on the slice (the health stream reads the same channel).
    let health_source = match (&config.fault_file, &config.backend) {
        (Some(path), _) => tokio::spawn(health::watch_fault_file(path.clone(), config.fault_poll, faults_tx)),
        (None, Backend::Nvml { sysfs, library }) => {
            // NVML faults go to the store (they outlive this process); the store is
            // what the slice and the kubelet are told, so an operator's clear reaches
            // both too.
            let store = config.fault_store();
            let names: BTreeMap<String, String> =
                inventory.gpus.iter().map(|g| (g.uuid.clone(), g.device_name())).collect();
            let (sysfs, library, remap_poll) = (sysfs.clone(), library.clone(), config.remap_poll);
            let sink = health::StoreSink {
                store: store.clone(),
                stop: http_stop_tx.subscribe(),
                metrics: Some(metrics.clone()),
            };
            tokio::task::spawn_blocking(move || {
                let result = NvmlDiscovery::init(Sysfs::at(sysfs), library.as_deref())
                    .map_err(|e| health::Error::Nvml(e.to_string()))
                    .and_then(|d| health::watch_nvml(d.nvml(), &names, &sink, remap_poll));
                if let Err(e) = result {
                    tracing::error!(error = %e, "GPU health monitoring stopped");
                }
            });
            tokio::spawn(health::follow_store(store, config.fault_poll, faults_tx))
        }
        (None, Backend::Profile(_)) => tokio::spawn(async move { faults_tx.closed().await }),
    };
    // What is published follows both the faults and the inventory (which changes when
    // a node label it derives from, the NVLink clique, changes).
    let (inventory_tx, inventory_rx) = watch::channel(inventory.clone());
    let tainting = {
        let (mut faults, mut inventories) = (faults_rx.clone(), inventory_rx.clone());
        let (publisher, node_ref, metrics, mig) = (publisher.clone(), node_ref.clone(), metrics.clone(), mig.clone());
        let states: Vec<Arc<Mutex<NodeState>>> = std::iter::once(state.clone()).chain(nic_state.clone()).collect();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = faults.changed() => if changed.is_err() { break },
                    changed = inventories.changed() => {
                        if changed.is_err() { break }
                        let inventory = inventories.borrow_and_update().clone();
                        for s in &states {
                            s.lock().await.set_inventory(inventory.clone());
                        }
                    }
                }
                let unhealthy = faults.borrow_and_update().for_node(&node_ref.name);
                let inventory = inventories.borrow().clone();
                tracing::info!(?unhealthy, "publishing device state");
                set_gpu_pool(&publisher, &metrics, &node_ref, &inventory, &mig, &unhealthy);
            }
        })
    };
    let relabelled =
        tokio::spawn(follow_node_labels(client.clone(), ctx, discovery, config.driver_root.clone(), inventory_tx));
    let published = {
        let (publisher, metrics) = (publisher.clone(), metrics.clone());
        tokio::spawn(async move {
            if first_sync.is_ok() {
                return;
            }
            'retry: loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for key in publisher.pools() {
                    if let Err(e) = publisher.reconcile(&key).await {
                        tracing::debug!(error = %e, "checking this node's slices for readiness");
                        continue 'retry;
                    }
                }
                return metrics.set_published();
            }
        })
    };

    // The kubelet rejecting a registration stops the agent (its pod restarts and
    // registers afresh) instead of serving a plugin nobody will call. One plugin per
    // driver: the kubelet calls a driver's plugin for the claims' results of that driver.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (gpu_registered_tx, gpu_registered) = watch::channel(None);
    {
        let (mut rx, metrics) = (gpu_registered.clone(), metrics.clone());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if let Some(verdict) = *rx.borrow_and_update() {
                    metrics.set_registered(GPU_DRIVER, verdict);
                }
            }
        });
    }
    let (nic_registered_tx, nic_registered) = watch::channel(None);
    let rejected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let rejected = rejected.clone();
        let watching_nics = nic_state.is_some();
        tokio::spawn(async move {
            let refused = |mut rx: watch::Receiver<Option<bool>>| async move {
                let _ = rx.wait_for(|r| *r == Some(false)).await;
            };
            let nic_refused =
                async move { if watching_nics { refused(nic_registered).await } else { std::future::pending().await } };
            tokio::select! {
                _ = shutdown => {}
                _ = refused(gpu_registered) => rejected.store(true, std::sync::atomic::Ordering::SeqCst),
                _ = nic_refused => rejected.store(true, std::sync::atomic::Ordering::SeqCst),
            }
            let _ = stop_tx.send(true);
        });
    }
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let gpu_plugin = PluginConfig { driver: GPU_DRIVER.into(), kubelet_root: config.kubelet_root.clone() };
    let health = HealthSource { faults: faults_rx, node: config.node_name.clone() };
    let gpu_served =
        plugin::serve(&gpu_plugin, state, client.clone(), Some(health), gpu_registered_tx, stopped(stop_rx.clone()));
    let nic_served = async {
        match nic_state {
            Some(nic_state) => {
                let nic_plugin = PluginConfig { driver: NIC_DRIVER.into(), kubelet_root: config.kubelet_root.clone() };
                plugin::serve(&nic_plugin, nic_state, client.clone(), None, nic_registered_tx, stopped(stop_rx)).await
            }
            None => Ok(()),
        }
    };
    let (gpu_served, nic_served) = tokio::join!(gpu_served, nic_served);
    let served = gpu_served.and(nic_served);
    publishing.abort();
    tainting.abort();
    relabelled.abort();
    published.abort();
    health_source.abort();
    let _ = http_stop_tx.send(true);
    if let Some(http) = http {
        let _ = http.await;
    }
    // The base spec stays while containers may still need it (a restart with running
    // pods); with no claim prepared it goes, so an uninstall leaves no CDI spec behind.
    if gpu_state_for_exit.lock().await.prepared().is_empty()
        && let Err(e) = base.remove_base()
    {
        tracing::warn!(error = %e, "removing the base CDI spec");
    }
    if config.remove_slices_on_exit {
        publisher.remove_all().await?;
        tracing::info!("removed our ResourceSlices");
    }
    served?;
    if rejected.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::RegistrationRejected);
    }
    Ok(())
}
