//! `phalanx-dra-driver`: a DRA kubelet driver for NVIDIA GPUs (`gpu.phalanx.dev`).
//!
//! Two halves in one binary: the [`publisher`] turns what [`discovery`] finds into
//! ResourceSlices, and the kubelet [`plugin`] prepares claims over the kubelet's gRPC
//! API, writing [`cdi`] specs and a crash-safe [`checkpoint`]. [`health`] turns device
//! faults into slice taints and the kubelet's health stream.

pub mod agent;
pub mod attributes;
pub mod cdi;
pub mod cdi_hook;
pub mod checkpoint;
pub mod config;
pub mod discovery;
pub mod driver_root;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod mig;
pub mod plugin;
pub mod prepare;
pub mod publisher;
pub mod sharing;
pub mod uds;

/// Code generated from our own `.proto` files (see `proto/`).
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    /// Kubelet plugin registration, `pluginregistration` v1.
    pub mod pluginregistration {
        tonic::include_proto!("pluginregistration");
    }
    /// DRA plugin service v1.
    pub mod dra_v1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    /// DRA plugin service v1beta1.
    pub mod dra_v1beta1 {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
    }
    /// DRA device health v1alpha1.
    pub mod health_v1alpha1 {
        tonic::include_proto!("v1alpha1");
    }
}
