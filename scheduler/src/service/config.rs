//! The scheduler's configuration file (YAML). Every field has a default, so an empty
//! file (or none) is a valid configuration.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use phalanx_topology::TopologyConfig;
use serde::Deserialize;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is not a valid configuration.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with line and column.
        #[source]
        source: serde_yaml::Error,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Leader election settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Run the election (turn off only for a single replica in tests).
    pub enabled: bool,
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Seconds a lease holds without renewal.
    pub lease_duration_seconds: u64,
    /// Seconds between renewals and retries.
    pub retry_period_seconds: u64,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: true,
            namespace: "kube-system".into(),
            name: "phalanx-scheduler".into(),
            lease_duration_seconds: 15,
            retry_period_seconds: 2,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Pods whose `spec.schedulerName` equals this are ours.
    pub scheduler_name: String,
    /// Leader election.
    pub leader_election: LeaderElectionConfig,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub bind_address: SocketAddr,
    /// Topology levels (defaults: DESIGN.md).
    pub topology: TopologyConfig,
    /// Gang commits written to the API server at once.
    pub commit_concurrency: usize,
    /// After a change, wait this long for more before a cycle (batches bursts).
    pub batch_window_ms: u64,
    /// Allocator calls allowed per gang before it is declared unplaceable this cycle.
    pub max_attempts_per_gang: usize,
    /// How often to look for gang APIs (PodGroup, PodGang CRDs) the cluster did not serve
    /// yet, so installing one needs no restart.
    pub api_discovery_period_seconds: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            scheduler_name: "phalanx-scheduler".into(),
            leader_election: LeaderElectionConfig::default(),
            bind_address: SocketAddr::from(([0, 0, 0, 0], 10351)),
            topology: TopologyConfig::default(),
            commit_concurrency: 32,
            batch_window_ms: 20,
            max_attempts_per_gang: 20_000,
            api_discovery_period_seconds: 30,
        }
    }
}

impl SchedulerConfig {
    /// Reads `path`, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: shown, source },
            other => other,
        })
    }

    /// Parses YAML text and checks the values.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: SchedulerConfig = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Parse { path: "<config>".into(), source })?
        };
        if config.scheduler_name.is_empty() {
            return Err(ConfigError::Invalid("schedulerName must not be empty".into()));
        }
        if config.api_discovery_period_seconds == 0 {
            return Err(ConfigError::Invalid("apiDiscoveryPeriodSeconds must be at least 1".into()));
        }
        if config.commit_concurrency == 0 {
            return Err(ConfigError::Invalid("commitConcurrency must be at least 1".into()));
        }
        let le = &config.leader_election;
        if le.enabled && le.retry_period_seconds >= le.lease_duration_seconds {
            return Err(ConfigError::Invalid(format!(
                "leaderElection.retryPeriodSeconds ({}) must be shorter than leaseDurationSeconds ({})",
                le.retry_period_seconds, le.lease_duration_seconds
            )));
        }
        Ok(config)
    }

    /// The batch window.
    pub fn batch_window(&self) -> Duration {
        Duration::from_millis(self.batch_window_ms)
    }

    /// The gang API discovery period.
    pub fn api_discovery_period(&self) -> Duration {
        Duration::from_secs(self.api_discovery_period_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = SchedulerConfig::parse("").unwrap();
        assert_eq!(c.scheduler_name, "phalanx-scheduler");
        assert!(c.leader_election.enabled);
        assert_eq!(c.topology, TopologyConfig::default());
    }

    #[test]
    fn fields_override_defaults() {
        let c = SchedulerConfig::parse(
            "schedulerName: gpu-gangs\nleaderElection:\n  enabled: false\ncommitConcurrency: 4\n",
        )
        .unwrap();
        assert_eq!(
            (c.scheduler_name.as_str(), c.leader_election.enabled, c.commit_concurrency),
            ("gpu-gangs", false, 4)
        );
        assert_eq!(c.batch_window_ms, 20, "unset fields keep their defaults");
    }

    /// deploy/scheduler/config.yaml says it lists the defaults (but the Lease's namespace):
    /// keep it true.
    #[test]
    fn shipped_config_is_the_defaults() {
        let manifest = include_str!("../../../deploy/scheduler/config.yaml");
        let configmap: serde_yaml::Value = serde_yaml::from_str(manifest).unwrap();
        let text = configmap["data"]["config.yaml"].as_str().expect("data.config.yaml");
        let shipped = SchedulerConfig::parse(text).unwrap();
        let mut expected = SchedulerConfig::default();
        expected.leader_election.namespace = "phalanx-system".into(); // the namespace of deploy/scheduler
        assert_eq!(shipped, expected);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        let e = SchedulerConfig::parse("schedulerNmae: x\n").unwrap_err().to_string();
        assert!(e.contains("schedulerNmae"), "{e}");
        let e = SchedulerConfig::parse("commitConcurrency: 0\n").unwrap_err().to_string();
        assert!(e.contains("commitConcurrency"), "{e}");
        let e = SchedulerConfig::parse("leaderElection:\n  leaseDurationSeconds: 2\n  retryPeriodSeconds: 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retryPeriodSeconds"), "{e}");
    }
}
