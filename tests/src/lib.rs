//! Test support: a real Kubernetes control plane on loopback.
//!
//! [`TestEnv::start`] runs etcd, kube-apiserver (TLS, RBAC, service-account signing),
//! kube-controller-manager (resource claims, garbage collection, namespaces), kwok (fake
//! nodes and pods) and optionally kube-scheduler, each on free ports in a temp dir of its
//! own, so several environments can run at once. Everything is torn down on drop, also
//! when a test panics, and the logs of every component are printed when it does.
//!
//! The binaries come from `hack/envtest/` (see [`binaries`]).

pub mod apply;
pub mod binaries;
mod env;
pub mod fixtures;
pub mod node;
pub mod pki;
pub mod process;
pub mod wait;

use std::path::PathBuf;

pub use binaries::KubeVersion;
pub use env::{FeatureSet, KWOK_NODE_ANNOTATION, KWOK_STAGES, Options, TestEnv};
pub use node::{PAUSE_IMAGE, RealNode, TESTBOX_IMAGE};

/// Why the environment could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binaries from `hack/envtest` are missing or could not be built.
    #[error("control-plane binaries: {0}")]
    Binaries(String),
    /// Generating certificates or keys failed.
    #[error("generating PKI: {0}")]
    Pki(String),
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A component could not be started.
    #[error("starting {component} ({binary}): {source}")]
    Spawn {
        /// The component, e.g. `etcd`.
        component: String,
        /// Path of its binary.
        binary: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A component exited while it should be running.
    #[error("{component} exited ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        /// The component.
        component: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// A component did not become ready in time.
    #[error("{component} not ready after {seconds}s: {detail}")]
    NotReady {
        /// The component.
        component: String,
        /// How long we waited.
        seconds: u64,
        /// The last error seen, or the log tail.
        detail: String,
    },
    /// Talking to the apiserver failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A real node could not be set up or torn down, or this machine cannot run one.
    #[error("real node: {0}")]
    RealNode(String),
    /// Building a client from a kubeconfig failed.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}
