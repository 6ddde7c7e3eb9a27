//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews the lease; another candidate takes it over only after it has seen the same
//! record unchanged for a whole lease duration (measured on its own clock, so clock skew
//! between machines does not matter). Every write is an optimistic-concurrency update.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// Lease settings. `Default` matches kube-scheduler's (15 s lease, renew every 2 s).
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity (e.g. the pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews and others retry.
    pub retry_period: Duration,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            namespace: "kube-system".into(),
            name: "phalanx-scheduler".into(),
            identity: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| format!("phalanx-scheduler-{}", std::process::id())),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Runs the election. Cheap to clone the receiver of [`LeaderElector::watch`].
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderConfig,
    observed: Option<(String, Instant)>,
    leading: watch::Sender<bool>,
}

impl LeaderElector {
    /// A candidate for `config.name`.
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        let api = Api::namespaced(client, &config.namespace);
        LeaderElector { api, config, observed: None, leading: watch::channel(false).0 }
    }

    /// Whether this candidate currently leads; changes are pushed.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// One round: acquire or renew. Returns whether this candidate leads afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = self.config.identity.clone();
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(self.set_leading(true)),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.set_leading(false)),
                Err(e) => Err(e),
            };
        };

        let version = lease.resource_version().unwrap_or_default();
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(me.as_str());
        if !held_by_me && holder.is_some() {
            // Someone else holds it: wait until their record has not changed for a lease duration.
            let unchanged_since = match &self.observed {
                Some((v, at)) if *v == version => *at,
                _ => {
                    self.observed = Some((version, Instant::now()));
                    return Ok(self.set_leading(false));
                }
            };
            let their_duration = spec
                .lease_duration_seconds
                .map_or(self.config.lease_duration, |s| Duration::from_secs(u64::try_from(s).unwrap_or(0)));
            if unchanged_since.elapsed() < their_duration {
                return Ok(self.set_leading(false));
            }
        }
        if !held_by_me {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(me);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration);
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                self.observed = Some((updated.resource_version().unwrap_or_default(), Instant::now()));
                Ok(self.set_leading(true))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.set_leading(false)),
            Err(e) => Err(e),
        }
    }

    fn set_leading(&self, leading: bool) -> bool {
        self.leading.send_if_modified(|was| {
            let changed = *was != leading;
            if changed {
                info!(identity = %self.config.identity, leading, "leadership changed");
            }
            *was = leading;
            changed
        });
        leading
    }

    /// Runs rounds every retry period until `stop` turns true, then releases the lease
    /// if held (so a successor does not wait a full lease duration).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.retry_period);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.try_acquire_or_renew().await {
                        warn!(error = %e, "leader election round failed");
                        // A leader that cannot renew must assume it lost the lease once it expires.
                        if self.observed.as_ref().is_some_and(|(_, at)| at.elapsed() >= self.config.lease_duration) {
                            self.set_leading(false);
                        }
                    }
                }
                _ = stop.changed() => {
                    if *stop.borrow() { break; }
                }
            }
        }
        if *self.leading.borrow() {
            self.release().await;
        }
    }

    /// Gives the lease up: clears the holder so another candidate takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else { return };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            warn!(error = %e, "releasing the lease failed; it expires on its own");
        }
        self.set_leading(false);
    }
}
