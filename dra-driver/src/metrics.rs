//! Prometheus metrics of the node agent and its HTTP endpoint (`--http-addr`):
//! `/metrics`, `/healthz` (the process serves), `/readyz` (the kubelet registered the
//! GPU plugin and the node's slices are published).
//!
//! One registry per process ([`get`]): the agent is one per node, and the plugin, health
//! and publishing code record into it without being handed a handle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get as route;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels `driver` and `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `gpu.phalanx.dev` or `nic.phalanx.dev`.
    pub driver: String,
    /// `success` or `error`.
    pub result: String,
}

/// Label `driver`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverLabel {
    /// The driver.
    pub driver: String,
}

/// Labels `driver` and `health`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    /// The driver.
    pub driver: String,
    /// `healthy` or `unhealthy`.
    pub health: String,
}

/// Label `device`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    /// e.g. `gpu-3`.
    pub device: String,
}

/// Every metric of the agent.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    prepares: Family<ResultLabels, Counter>,
    unprepares: Family<ResultLabels, Counter>,
    prepare_seconds: Family<DriverLabel, Histogram>,
    prepared_claims: Family<DriverLabel, Gauge>,
    devices: Family<HealthLabels, Gauge>,
    corrected_ecc: Family<DeviceLabel, Counter>,
    registered: Family<DriverLabel, Gauge>,
    published: AtomicBool,
    gpu_registered: AtomicBool,
    registry: Registry,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> Metrics {
    GLOBAL.clone()
}

fn result(ok: bool) -> String {
    if ok { "success" } else { "error" }.to_owned()
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("phalanx_dra");
        let prepares = Family::<ResultLabels, Counter>::default();
        registry.register("prepares", "Claims prepared (NodePrepareResources), by driver and result", prepares.clone());
        let unprepares = Family::<ResultLabels, Counter>::default();
        registry.register("unprepares", "Claims unprepared, by driver and result", unprepares.clone());
        let prepare_seconds = Family::<DriverLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "prepare_duration_seconds",
            "Time to prepare one claim, apiserver read included",
            prepare_seconds.clone(),
        );
        let prepared_claims = Family::<DriverLabel, Gauge>::default();
        registry.register("prepared_claims", "Claims prepared on this node now", prepared_claims.clone());
        let devices = Family::<HealthLabels, Gauge>::default();
        registry.register("devices", "Devices published, by health", devices.clone());
        let corrected_ecc = Family::<DeviceLabel, Counter>::default();
        registry.register(
            "corrected_ecc_errors",
            "Single-bit (corrected) ECC error events per GPU; counted, not a fault",
            corrected_ecc.clone(),
        );
        let registered = Family::<DriverLabel, Gauge>::default();
        registry.register(
            "kubelet_registered",
            "1 when the kubelet registered the driver's plugin",
            registered.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                prepares,
                unprepares,
                prepare_seconds,
                prepared_claims,
                devices,
                corrected_ecc,
                registered,
                published: AtomicBool::new(false),
                gpu_registered: AtomicBool::new(false),
                registry,
            }),
        }
    }

    fn driver(driver: &str) -> DriverLabel {
        DriverLabel { driver: driver.to_owned() }
    }

    /// One claim prepared (or not) in `took`.
    pub fn prepared(&self, driver: &str, ok: bool, took: Duration) {
        self.inner.prepares.get_or_create(&ResultLabels { driver: driver.into(), result: result(ok) }).inc();
        self.inner.prepare_seconds.get_or_create(&Self::driver(driver)).observe(took.as_secs_f64());
    }

    /// One claim unprepared (or not).
    pub fn unprepared(&self, driver: &str, ok: bool) {
        self.inner.unprepares.get_or_create(&ResultLabels { driver: driver.into(), result: result(ok) }).inc();
    }

    /// Claims prepared on the node now.
    pub fn set_prepared_claims(&self, driver: &str, n: usize) {
        self.inner.prepared_claims.get_or_create(&Self::driver(driver)).set(n as i64);
    }

    /// Devices published by `driver`: `total`, of which `unhealthy` are tainted.
    pub fn set_devices(&self, driver: &str, total: usize, unhealthy: usize) {
        let labels = |h: &str| HealthLabels { driver: driver.into(), health: h.into() };
        self.inner.devices.get_or_create(&labels("healthy")).set(total.saturating_sub(unhealthy) as i64);
        self.inner.devices.get_or_create(&labels("unhealthy")).set(unhealthy as i64);
    }

    /// A corrected ECC error on `device`.
    pub fn corrected_ecc(&self, device: &str) {
        self.inner.corrected_ecc.get_or_create(&DeviceLabel { device: device.into() }).inc();
    }

    /// The kubelet's registration verdict for `driver`.
    pub fn set_registered(&self, driver: &str, registered: bool) {
        self.inner.registered.get_or_create(&Self::driver(driver)).set(i64::from(registered));
        if driver == crate::attributes::GPU_DRIVER {
            self.inner.gpu_registered.store(registered, Ordering::SeqCst);
        }
    }

    /// The node's slices were written (or found in sync) at least once.
    pub fn set_published(&self) {
        self.inner.published.store(true, Ordering::SeqCst);
    }

    /// Why the agent is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.inner.gpu_registered.load(Ordering::SeqCst) {
            Some("the kubelet has not registered the gpu.phalanx.dev plugin")
        } else if !self.inner.published.load(Ordering::SeqCst) {
            Some("this node's ResourceSlices are not published yet")
        } else {
            None
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", route(|State(m): State<Metrics>| async move { m.encode() }))
        .route("/healthz", route(|| async { "ok" }))
        .route(
            "/readyz",
            route(|State(m): State<Metrics>| async move {
                match m.not_ready() {
                    None => (StatusCode::OK, "ok".to_owned()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_owned()),
                }
            }),
        )
        .with_state(metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_registration_then_publishing() {
        let m = Metrics::new();
        assert!(m.not_ready().unwrap().contains("registered"));
        m.set_registered(crate::attributes::GPU_DRIVER, true);
        assert!(m.not_ready().unwrap().contains("published"));
        m.set_published();
        assert_eq!(m.not_ready(), None);
        m.prepared("gpu.phalanx.dev", false, Duration::from_millis(3));
        m.set_devices("gpu.phalanx.dev", 8, 1);
        let text = m.encode();
        assert!(text.contains(r#"phalanx_dra_prepares_total{driver="gpu.phalanx.dev",result="error"} 1"#), "{text}");
        assert!(text.contains(r#"phalanx_dra_devices{driver="gpu.phalanx.dev",health="unhealthy"} 1"#), "{text}");
        assert!(text.contains(r#"phalanx_dra_devices{driver="gpu.phalanx.dev",health="healthy"} 7"#), "{text}");
    }
}
