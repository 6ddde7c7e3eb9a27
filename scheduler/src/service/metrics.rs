//! Prometheus metrics of the running scheduler.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of `phalanx_scheduling_attempts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `scheduled`, `unschedulable` or `error`.
    pub result: String,
}

/// Label of `phalanx_phase_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// `snapshot`, `place`, `commit`, `cycle`.
    pub phase: String,
}

/// Label of `phalanx_gang_api_watched`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    /// e.g. `scheduler.grove.io/v1alpha1/PodGang`.
    pub api: String,
}

/// Every metric, registered in one registry.
pub struct Metrics {
    /// Gang scheduling attempts by result.
    pub attempts: Family<ResultLabel, Counter>,
    /// Latency per phase.
    pub phase_seconds: Family<PhaseLabel, Histogram>,
    /// Pending pods of this scheduler.
    pub queue_depth: Gauge,
    /// Gangs that wait (could not be placed in the last cycle).
    pub pending_gangs: Gauge,
    /// Placement score of placed gangs.
    pub placement_score: Histogram,
    /// Pods bound.
    pub pods_bound: Counter,
    /// 1 for each gang API the scheduler watches (served by the cluster), 0 otherwise.
    pub gang_api_watched: Family<ApiLabel, Gauge>,
    /// The registry to encode.
    pub registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("phalanx");
        let attempts = Family::<ResultLabel, Counter>::default();
        registry.register("scheduling_attempts", "Gang scheduling attempts by result", attempts.clone());
        let phase_seconds = Family::<PhaseLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register("phase_duration_seconds", "Latency of each scheduling phase", phase_seconds.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Pending pods that name this scheduler", queue_depth.clone());
        let pending_gangs = Gauge::default();
        registry.register("pending_gangs", "Gangs that could not be placed in the last cycle", pending_gangs.clone());
        let placement_score = Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]);
        registry.register("placement_score", "Placement score in [0, 1] of placed gangs", placement_score.clone());
        let pods_bound = Counter::default();
        registry.register("pods_bound", "Pods bound by this scheduler", pods_bound.clone());
        let gang_api_watched = Family::<ApiLabel, Gauge>::default();
        registry.register("gang_api_watched", "Gang APIs watched (1) or not served yet (0)", gang_api_watched.clone());
        Metrics {
            attempts,
            phase_seconds,
            queue_depth,
            pending_gangs,
            placement_score,
            pods_bound,
            gang_api_watched,
            registry,
        }
    }
}

impl Metrics {
    /// Counts one attempt with `result`.
    pub fn attempt(&self, result: &str) {
        self.attempts.get_or_create(&ResultLabel { result: result.into() }).inc();
    }

    /// Records `seconds` for `phase`.
    pub fn phase(&self, phase: &str, seconds: f64) {
        self.phase_seconds.get_or_create(&PhaseLabel { phase: phase.into() }).observe(seconds);
    }

    /// Records whether the gang API `api` is watched.
    pub fn gang_api(&self, api: &str, watched: bool) {
        self.gang_api_watched.get_or_create(&ApiLabel { api: api.into() }).set(i64::from(watched));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
