//! The kubelet plugin: registration and the DRA services over unix sockets at the
//! kubelet's paths.
//!
//! - `<root>/plugins_registry/<driver>-reg.sock`: `pluginregistration.Registration`;
//! - `<root>/plugins/<driver>/dra.sock`: `v1.DRAPlugin`, `v1beta1.DRAPlugin` and
//!   `v1alpha1.DRAResourceHealth`.
//!
//! The service impls are thin: they convert messages and call [`crate::prepare`].

pub mod authority;
pub mod dra;
pub mod health;
pub mod registration;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Mutex, watch};
use tokio_stream::wrappers::UnixListenerStream;

use crate::health::Faults;
use crate::prepare::NodeState;
use crate::proto;
use crate::uds;

/// The services advertised in `GetInfo`, most preferred first (the health service only
/// where [`serve`] is given a health source).
pub const SUPPORTED_SERVICES: [&str; 3] = ["v1.DRAPlugin", "v1beta1.DRAPlugin", "v1alpha1.DRAResourceHealth"];

/// What the health service reports: the faults, for the pool named after the node.
#[derive(Debug, Clone)]
pub struct HealthSource {
    /// Current faults.
    pub faults: watch::Receiver<Faults>,
    /// The node (= pool) name.
    pub node: String,
}

/// Why the plugin could not serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket could not be bound.
    #[error(transparent)]
    Socket(#[from] uds::Error),
    /// A gRPC server failed.
    #[error("gRPC server on {path}: {source}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where the plugin listens.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Driver name.
    pub driver: String,
    /// The kubelet's root directory (default `/var/lib/kubelet`).
    pub kubelet_root: PathBuf,
}

impl PluginConfig {
    /// Registration socket: `<root>/plugins_registry/<driver>-reg.sock`.
    pub fn registration_socket(&self) -> PathBuf {
        self.kubelet_root.join("plugins_registry").join(format!("{}-reg.sock", self.driver))
    }

    /// Service socket: `<root>/plugins/<driver>/dra.sock`.
    pub fn service_socket(&self) -> PathBuf {
        self.plugin_dir().join("dra.sock")
    }

    /// The driver's directory under the kubelet's plugins dir (also holds the checkpoint).
    pub fn plugin_dir(&self) -> PathBuf {
        self.kubelet_root.join("plugins").join(&self.driver)
    }
}

/// Serves the DRA services and then registration until `shutdown` resolves; removes
/// both sockets afterwards. `registered` reports the kubelet's registration verdicts.
pub async fn serve(
    config: &PluginConfig,
    state: Arc<Mutex<NodeState>>,
    client: kube::Client,
    health: Option<HealthSource>,
    registered: watch::Sender<Option<bool>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let service_path = config.service_socket();
    let registration_path = config.registration_socket();
    let service_listener = uds::bind(&service_path)?;
    let registration_listener = uds::bind(&registration_path)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let dra = dra::DraService::new(state.clone(), client);
    let services = if health.is_some() { &SUPPORTED_SERVICES[..] } else { &SUPPORTED_SERVICES[..2] };
    let health =
        health.map(|h| {
            proto::health_v1alpha1::dra_resource_health_server::DraResourceHealthServer::new(
                health::HealthService::new(h.node, state, h.faults, stop_rx.clone()),
            )
        });
    let registration = registration::RegistrationService::new(
        proto::pluginregistration::PluginInfo {
            r#type: "DRAPlugin".into(),
            name: config.driver.clone(),
            endpoint: service_path.display().to_string(),
            supported_versions: services.iter().map(|s| s.to_string()).collect(),
        },
        registered,
    );

    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let service_server = tonic::transport::Server::builder()
        .add_service(proto::dra_v1::dra_plugin_server::DraPluginServer::new(dra.clone()))
        .add_service(proto::dra_v1beta1::dra_plugin_server::DraPluginServer::new(dra))
        .add_optional_service(health)
        .serve_with_incoming_shutdown(UnixListenerStream::new(service_listener), stopped(stop_rx.clone()));
    let registration_server = tonic::transport::Server::builder()
        .add_service(proto::pluginregistration::registration_server::RegistrationServer::new(registration))
        // The kubelet's registration client sends an authority h2 refuses: see `authority`.
        .serve_with_incoming_shutdown(authority::incoming(registration_listener), stopped(stop_rx));
    let (a, b) = tokio::join!(service_server, registration_server);
    let _ = std::fs::remove_file(&registration_path);
    let _ = std::fs::remove_file(&service_path);
    a.map_err(|source| Error::Serve { path: service_path, source })?;
    b.map_err(|source| Error::Serve { path: registration_path, source })?;
    Ok(())
}
