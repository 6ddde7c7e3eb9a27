//! The running scheduler: watch-fed cache → gang assembly → joint placement (the pure
//! core) → commit, under leader election, with events, conditions and metrics.
//!
//! A cycle runs when a watch event arrives (after a short batch window), never on a
//! timer: a gang that does not fit is retried when something changes that could let it.

pub mod cache;
pub mod config;
pub mod http;
pub mod metrics;
pub mod podgroup;
pub mod report;
pub mod workload;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::{Client, ResourceExt};
use phalanx_gang::{GangInputs, assemble};
use phalanx_scheduler_core::placement::{GangOutcome, PlacementOptions, Placer, Plan, Snapshot};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::commit::{self, ClaimPlan, Committer, GangPlan, MemberPlan, RecoveringGang, pod_claim_names, pod_claims};
use crate::leader::{LeaderConfig, LeaderElector};
use cache::{Cache, Key};
use config::SchedulerConfig;
use metrics::Metrics;
use report::Reporter;

/// A running scheduler's handles, for tests and the binary.
pub struct Running {
    /// Where `/metrics`, `/healthz`, `/readyz` are served.
    pub http_address: SocketAddr,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Stops gracefully: finishes the cycle in progress, releases the lease, stops serving.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the scheduler on `client` and returns once its HTTP endpoints listen. The
/// scheduling loop runs in the background until [`Running::shutdown`].
pub async fn start(client: Client, config: SchedulerConfig, identity: String) -> std::io::Result<Running> {
    let (stop_tx, stop) = watch::channel(false);
    let changed = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::default());
    let cache = Arc::new(Cache::start(&client, changed.clone(), metrics.clone(), config.api_discovery_period()).await);

    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let http_state = http::HttpState { metrics: metrics.clone(), ready: cache.ready_flag() };
    let http_stop = stop.clone();
    let bind = config.bind_address;
    let server = tokio::spawn(async move {
        if let Err(e) = http::serve(bind, http_state, http_stop, bound_tx).await {
            warn!(error = %e, "HTTP server failed");
        }
    });
    let http_address = bound_rx.await.map_err(|_| std::io::Error::other(format!("could not listen on {bind}")))?;

    let leading = if config.leader_election.enabled {
        let le = &config.leader_election;
        let elector = LeaderElector::new(
            client.clone(),
            LeaderConfig {
                namespace: le.namespace.clone(),
                name: le.name.clone(),
                identity: identity.clone(),
                lease_duration: std::time::Duration::from_secs(le.lease_duration_seconds),
                retry_period: std::time::Duration::from_secs(le.retry_period_seconds),
            },
        );
        let leading = elector.watch();
        tokio::spawn(elector.run(stop.clone()));
        leading
    } else {
        // Always leading; the sender lives as long as the loop (a dropped sender would
        // wake the loop forever).
        let (tx, rx) = watch::channel(true);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _tx = tx;
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        });
        rx
    };

    let release = cluster_release(&client).await;
    let scheduler = Scheduler {
        client: client.clone(),
        release,
        pod_groups: std::sync::OnceLock::new(),
        workload_groups: std::sync::OnceLock::new(),
        committer: {
            let cache = cache.clone();
            Committer::new(client.clone(), config.scheduler_name.clone())
                .with_cached_claims(Arc::new(move |ns: &str, name: &str| cache.claim(ns, name)))
        },
        reporter: Reporter::new(client.clone(), &config.scheduler_name, &identity),
        config,
        cache,
        metrics: metrics.clone(),
        changed,
    };
    let task = tokio::spawn(async move {
        scheduler.run(leading, stop).await;
        let _ = server.await;
    });
    Ok(Running { http_address, metrics, task, stop: stop_tx })
}

/// The allocator rules to follow: those of the API server's release (1.36 or 1.37; a
/// newer release gets 1.37's, the newest Phalanx knows, and a warning).
async fn cluster_release(client: &Client) -> phalanx_scheduler_core::dra::Release {
    use phalanx_scheduler_core::dra::Release;
    let info = match client.apiserver_version().await {
        Ok(info) => info,
        Err(e) => {
            warn!(error = %e, "cannot read the API server's version; allocating with 1.37's rules");
            return Release::V1_37;
        }
    };
    let minor: u32 = info.minor.trim_end_matches('+').parse().unwrap_or(0);
    let release = if info.major == "1" && minor <= 36 { Release::V1_36 } else { Release::V1_37 };
    if info.major != "1" || !(36..=37).contains(&minor) {
        warn!(version = %info.git_version, "API server release not supported (1.36 and 1.37 are); allocating with {release:?} rules");
    } else {
        info!(version = %info.git_version, "API server release");
    }
    release
}

struct Scheduler {
    client: Client,
    /// The cluster's Kubernetes release: its allocator rules are the ones applied.
    release: phalanx_scheduler_core::dra::Release,
    /// Created once the cluster serves scheduler-plugins PodGroups.
    pod_groups: std::sync::OnceLock<podgroup::PodGroupStatusWriter>,
    workload_groups: std::sync::OnceLock<workload::WorkloadStatusWriter>,
    config: SchedulerConfig,
    cache: Arc<Cache>,
    committer: Committer,
    reporter: Reporter,
    metrics: Arc<Metrics>,
    changed: Arc<Notify>,
}

impl Scheduler {
    async fn run(self, mut leading: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
        self.cache.wait_until_ready().await;
        info!(scheduler = %self.config.scheduler_name, "caches synced");
        loop {
            if *stop.borrow() {
                break;
            }
            if *leading.borrow() {
                self.cycle().await;
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = leading.changed() => {}
                _ = stop.changed() => {}
            }
            // Let a burst of events land before looking again.
            tokio::time::sleep(self.config.batch_window()).await;
        }
        info!("scheduler stopped");
    }

    fn assemble(&self, snapshot: &Snapshot) -> phalanx_gang::Assembly {
        assemble(&GangInputs {
            scheduler_name: &self.config.scheduler_name,
            pods: &snapshot.pods,
            coscheduling_pod_groups: &snapshot.coscheduling_pod_groups,
            workload_pod_groups: &snapshot.workload_pod_groups,
            composite_pod_groups: &snapshot.composite_pod_groups,
            pod_gangs: &snapshot.pod_gangs,
        })
    }

    fn is_ours(&self, pod: &Pod) -> bool {
        pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(self.config.scheduler_name.as_str())
    }

    /// Finishes half-done commits: unbound pods of ours with an intent, and claims
    /// reserved for an unbound pod of ours without one (a gang of one records no intent).
    /// Between cycles no commit is in flight (a cycle awaits its commits, and successful
    /// ones are assumed bound in the snapshot), so either is left from a crashed leader or
    /// from a rollback that failed half-way. Returns the pods it worked on: their gangs'
    /// state is not what the snapshot shows, so they are placed again on a later cycle.
    async fn recover(&self, snapshot: &Snapshot) -> HashSet<(String, String)> {
        let mut touched = self.recover_intents(snapshot).await;
        touched.extend(self.release_orphan_reservations(snapshot).await);
        touched
    }

    /// Releases claims reserved for unbound pods of ours that carry no intent.
    async fn release_orphan_reservations(&self, snapshot: &Snapshot) -> HashSet<(String, String)> {
        let unbound: HashMap<&str, &Pod> = snapshot
            .pods
            .iter()
            .filter(|p| self.is_ours(p) && p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
            .filter(|p| p.status.as_ref().is_none_or(|s| s.nominated_node_name.is_none()))
            .filter_map(|p| Some((p.metadata.uid.as_deref()?, p)))
            .collect();
        let mut touched = HashSet::new();
        if unbound.is_empty() {
            return touched;
        }
        for claim in &snapshot.resource_claims {
            let reserved = claim.status.as_ref().and_then(|s| s.reserved_for.as_ref());
            for consumer in reserved.into_iter().flatten().filter(|c| c.resource == "pods") {
                let Some(pod) = unbound.get(consumer.uid.as_str()) else { continue };
                let (ns, name) = (claim.namespace().unwrap_or_default(), claim.name_any());
                info!(claim = %format!("{ns}/{name}"), pod = %pod.name_any(), "releasing a reservation a half-done commit left");
                if let Err(e) = self.committer.release_reservation(&ns, &name, &consumer.uid).await {
                    warn!(claim = %name, error = %e, "releasing the reservation failed; retried on the next cycle");
                }
                touched.insert((pod.namespace().unwrap_or_default(), pod.name_any()));
            }
        }
        touched
    }

    /// Rolls gangs whose members carry an intent forward or back.
    async fn recover_intents(&self, snapshot: &Snapshot) -> HashSet<(String, String)> {
        let intents: Vec<Pod> = snapshot
            .pods
            .iter()
            .filter(|p| self.is_ours(p) && p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
            .filter(|p| p.status.as_ref().and_then(|s| s.nominated_node_name.as_ref()).is_some())
            .cloned()
            .collect();
        if intents.is_empty() {
            return HashSet::new();
        }
        let assembly = self.assemble(snapshot);
        let with_intent: HashSet<(String, String)> =
            intents.iter().map(|p| (p.namespace().unwrap_or_default(), p.name_any())).collect();
        let mut gangs = Vec::new();
        for gang in &assembly.gangs {
            let members: Vec<Pod> = gang
                .members
                .iter()
                .filter(|m| with_intent.contains(&(m.pod.namespace.clone(), m.pod.name.clone())))
                .filter_map(|m| {
                    snapshot
                        .pods
                        .iter()
                        .find(|p| {
                            p.name_any() == m.pod.name && p.namespace().as_deref() == Some(m.pod.namespace.as_str())
                        })
                        .cloned()
                })
                .collect();
            if !members.is_empty() {
                let groups = members
                    .iter()
                    .filter_map(|p| commit::group_of(p, &snapshot.workload_pod_groups))
                    .cloned()
                    .collect();
                gangs.push(RecoveringGang {
                    gang: gang.key.to_string(),
                    needed: gang.needed() as usize,
                    members,
                    groups,
                });
            }
        }
        info!(gangs = gangs.len(), "recovering half-done commits");
        self.committer.recover(&gangs).await;
        gangs.iter().flat_map(|g| &g.members).map(|p| (p.namespace().unwrap_or_default(), p.name_any())).collect()
    }

    async fn cycle(&self) {
        let started = Instant::now();
        let mut snapshot = self.cache.snapshot();
        // Pods held by scheduling gates are not ready to be scheduled (kube-scheduler's
        // SchedulingGates PreEnqueue); an unbound pod holds nothing, so dropping them
        // from the snapshot changes no one else's placement. The apiserver itself shows
        // them as `PodScheduled=False` / `SchedulingGated`.
        snapshot.pods.retain(|p| !is_gated(p));
        self.metrics.phase("snapshot", started.elapsed().as_secs_f64());
        let recovered = self.recover(&snapshot).await;
        let waiting: HashSet<(String, String)> = snapshot
            .pods
            .iter()
            .filter(|p| self.is_ours(p) && p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
            .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        self.reporter.retain_waiting(&waiting);
        let queue = waiting.len();
        self.metrics.queue_depth.set(queue as i64);
        if let Some(resource) = self.cache.coscheduling_resource() {
            let writer = self
                .pod_groups
                .get_or_init(|| podgroup::PodGroupStatusWriter::new(self.client.clone(), resource.clone()));
            writer.sync(&snapshot.coscheduling_pod_groups, &snapshot.pods).await;
        }
        // Groups whose pods the last passes bound turn `PodGroupInitiallyScheduled=True`.
        self.sync_workload_groups(&snapshot, &HashMap::new()).await;
        if queue == 0 {
            self.metrics.pending_gangs.set(0);
            return;
        }

        let place_started = Instant::now();
        let assembly = self.assemble(&snapshot);
        let options = PlacementOptions::default()
            .release(self.release)
            .scheduler_name(&self.config.scheduler_name)
            .max_attempts(self.config.max_attempts_per_gang);
        let mut placer = match Placer::new(&snapshot, &self.config.topology, options) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot build the placement state; waiting for the next change");
                self.metrics.attempt("error");
                return;
            }
        };
        let index = SnapshotIndex::new(&snapshot);
        // A gang whose claims kube-controller-manager has not created from their templates
        // yet waits without an attempt (as kube-scheduler's PreEnqueue does); the claims'
        // creation is the event that brings it back. Failures to create them are
        // kube-controller-manager's to report, on the pod.
        let (mut gangs, waiting_for_claims): (Vec<_>, Vec<_>) =
            assembly.gangs.into_iter().partition(|g| g.members.iter().all(|m| index.claims_generated(&m.pod)));
        // Gangs recovery just rolled forward or back are placed on a later snapshot, which
        // shows what recovery wrote (its writes' watch events bring that cycle).
        gangs.retain(|g| !g.members.iter().any(|m| recovered.contains(&(m.pod.namespace.clone(), m.pod.name.clone()))));
        crate::simulate::order(&mut gangs);
        debug!(
            queue,
            gangs = gangs.len(),
            waiting_for_claims = waiting_for_claims.len(),
            problems = assembly.problems.len(),
            "cycle"
        );
        let mut plans = Vec::new();
        let mut pending = 0;
        // Why pods wait, told after the commits (which is what users wait for), many at once.
        let mut waiting_reports: Vec<(&Pod, String)> = Vec::new();
        let mut waiting_groups: HashMap<workload::GroupKey, workload::Waiting> = HashMap::new();
        for gang in &gangs {
            match placer.place_gang(gang) {
                GangOutcome::Placed(plan) => match index.gang_plan(&plan) {
                    Ok(gang_plan) => plans.push((plan, gang_plan)),
                    Err(message) => {
                        warn!(gang = %gang.key, %message, "plan does not match the cache; retrying on the next change");
                        self.metrics.attempt("error");
                    }
                },
                GangOutcome::Pending(p) => {
                    debug!(gang = %gang.key, message = %p.message, domains = ?p.domains, "gang stays pending");
                    pending += 1;
                    self.metrics.attempt("unschedulable");
                    let message = pending_message(&p);
                    waiting_reports.extend(
                        p.pods
                            .iter()
                            .filter_map(|pod| index.pod(&pod.namespace, &pod.name))
                            .map(|live| (live, message.clone())),
                    );
                    for live in p.pods.iter().filter_map(|pod| index.pod(&pod.namespace, &pod.name)) {
                        if let Some(group) = workload::group_of(live) {
                            waiting_groups.insert(group, workload::Waiting::Unschedulable(message.clone()));
                        }
                    }
                }
            }
        }
        // A claim whose template does not exist is never generated: say so, or the gang
        // would wait without a word.
        for gang in &waiting_for_claims {
            let members: Vec<&Pod> =
                gang.members.iter().filter_map(|m| index.pod(&m.pod.namespace, &m.pod.name)).collect();
            let Some(message) = members.iter().find_map(|p| missing_template(p, &snapshot)) else { continue };
            pending += 1;
            self.metrics.attempt("unschedulable");
            let message = format!("gang {}: {message}", gang.key);
            for live in members {
                if let Some(group) = workload::group_of(live) {
                    waiting_groups.insert(group, workload::Waiting::Invalid(message.clone()));
                }
                waiting_reports.push((live, message.clone()));
            }
        }
        for problem in &assembly.problems {
            pending += 1;
            self.metrics.attempt("unschedulable");
            let message = format!("gang {}: {}", problem.gang, problem.error);
            waiting_reports.extend(
                problem
                    .pods
                    .iter()
                    .filter_map(|pod| index.pod(&pod.namespace, &pod.name))
                    .map(|live| (live, message.clone())),
            );
            for live in problem.pods.iter().filter_map(|pod| index.pod(&pod.namespace, &pod.name)) {
                if let Some(group) = workload::group_of(live) {
                    waiting_groups.insert(group, workload::Waiting::Invalid(message.clone()));
                }
            }
        }
        self.metrics.pending_gangs.set(pending);
        self.metrics.phase("place", place_started.elapsed().as_secs_f64());
        self.commit(plans, &index).await;
        // By index: a closure over borrowed items would not be `Send` for every lifetime.
        let waiting_reports = &waiting_reports;
        futures::stream::iter(0..waiting_reports.len())
            .map(|i| async move {
                let (pod, message) = &waiting_reports[i];
                self.reporter.unschedulable(pod, message).await
            })
            .buffer_unordered(REPORT_CONCURRENCY)
            .count()
            .await;
        self.sync_workload_groups(&snapshot, &waiting_groups).await;
        self.metrics.phase("cycle", started.elapsed().as_secs_f64());
    }

    /// Keeps `PodGroupInitiallyScheduled` of the Workload API PodGroups with pods of ours.
    async fn sync_workload_groups(
        &self,
        snapshot: &Snapshot,
        waiting: &HashMap<workload::GroupKey, workload::Waiting>,
    ) {
        let Some(resource) = self.cache.workload_resource() else { return };
        if snapshot.workload_pod_groups.is_empty() {
            return;
        }
        let writer = self
            .workload_groups
            .get_or_init(|| workload::WorkloadStatusWriter::new(self.client.clone(), resource.clone()));
        writer.sync(&snapshot.workload_pod_groups, &snapshot.pods, |p| self.is_ours(p), waiting).await;
    }

    /// Assumes every plan's writes in the cache, then commits the gangs,
    /// `commit_concurrency` at a time.
    async fn commit(&self, plans: Vec<(Plan, GangPlan)>, index: &SnapshotIndex<'_>) {
        if plans.is_empty() {
            return;
        }
        let commit_started = Instant::now();
        for (_, gp) in &plans {
            let (claims, pods) = assumptions(gp);
            self.cache.assume(claims, pods);
        }
        let committed: usize = futures::stream::iter(plans)
            .map(|(plan, gp)| self.commit_gang(plan, gp, index))
            .buffer_unordered(self.config.commit_concurrency)
            .count()
            .await;
        self.metrics.phase("commit", commit_started.elapsed().as_secs_f64());
        debug!(gangs = committed, "commits done");
    }
}

impl Scheduler {
    /// Writes one gang's plan (reserve, then bind), then tells its members where they
    /// landed; a failed commit drops the gang's assumptions so the next cycle retries it.
    async fn commit_gang(&self, plan: Plan, gp: GangPlan, index: &SnapshotIndex<'_>) {
        let result = match self.committer.reserve(&gp).await {
            Ok(()) => {
                failpoint_pause_after_reserve().await;
                self.committer.bind_all(&gp).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            warn!(gang = %plan.gang, error = %e, "commit failed; the gang is retried on the next change");
            self.metrics.attempt("error");
            let (claims, pods) = assumptions(&gp);
            let claims: Vec<Key> = claims.into_iter().map(|(k, _)| k).collect();
            let pods: Vec<Key> = pods.into_iter().map(|(k, _)| k).collect();
            self.cache.forget(&claims, &pods);
            return;
        }
        self.metrics.attempt("scheduled");
        self.metrics.placement_score.observe(plan.score);
        self.metrics.pods_bound.inc_by(gp.members.len() as u64);
        let reports = gp.members.iter().zip(&plan.members).filter_map(|(member, placement)| {
            let pod = index.pod(&member.namespace, &member.name)?;
            let devices = if placement.devices.is_empty() { "-".into() } else { placement.devices.join(", ") };
            let message = format!(
                "Successfully assigned {}/{} to {} (gang {}, domain {}, score {:.3}, devices {})",
                member.namespace, member.name, member.node, plan.gang, plan.domain, plan.score, devices
            );
            Some(async move { self.reporter.scheduled(pod, &message).await })
        });
        futures::future::join_all(reports).await;
    }
}

/// An unbound pod with scheduling gates left.
fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.node_name.is_none() && s.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty()))
}

/// `FailedScheduling` reports (an event and a status patch each) in flight at once.
const REPORT_CONCURRENCY: usize = 32;

/// Domain reasons shown in a pending pod's condition; the rest are counted.
const REASONS_SHOWN: usize = 6;

/// The summary with the first few per-domain reasons, e.g. `no nvlink domain can hold
/// the gang (...); nvlink=rack-a: needs 160 GPUs, 72 free; ...`.
fn pending_message(p: &phalanx_scheduler_core::placement::Pending) -> String {
    let mut message = p.message.clone();
    for d in p.domains.iter().take(REASONS_SHOWN) {
        message.push_str(&format!("; {}: {}", d.domain, d.reason));
    }
    if p.domains.len() > REASONS_SHOWN {
        message.push_str(&format!("; {} more", p.domains.len() - REASONS_SHOWN));
    }
    message
}

/// Crash testing: with `PHALANX_FAILPOINT_PAUSE_AFTER_RESERVE=<file>` set, the scheduler
/// writes `<file>` once every claim of a gang is written and then waits forever before
/// binding, so a test can SIGKILL it at exactly that point.
async fn failpoint_pause_after_reserve() {
    let Some(path) = std::env::var_os("PHALANX_FAILPOINT_PAUSE_AFTER_RESERVE") else { return };
    warn!("failpoint: paused after reserve, before binding");
    let _ = std::fs::write(&path, b"reserved\n");
    std::future::pending::<()>().await;
}

/// A claim allocation the cache assumes until its watch shows it.
type AssumedClaim = (Key, k8s_openapi::api::resource::v1::AllocationResult);
/// A binding (pod → node) the cache assumes until its watch shows it.
type AssumedBinding = (Key, String);

fn assumptions(gp: &GangPlan) -> (Vec<AssumedClaim>, Vec<AssumedBinding>) {
    let mut claims = Vec::new();
    let mut pods = Vec::new();
    for m in &gp.members {
        pods.push(((m.namespace.clone(), m.name.clone()), m.node.clone()));
        for c in &m.claims {
            if let Some(a) = &c.allocation {
                claims.push(((m.namespace.clone(), c.name.clone()), a.clone()));
            }
        }
    }
    (claims, pods)
}

/// Lookups by key into one snapshot.
/// Why a claim of `pod` cannot be generated: its template (the pod's own, or one its
/// PodGroup shares) does not exist. `None` when every template is there.
fn missing_template(pod: &Pod, snapshot: &Snapshot) -> Option<String> {
    let ns = pod.namespace().unwrap_or_default();
    let exists = |name: &str| {
        snapshot
            .resource_claim_templates
            .iter()
            .any(|t| t.metadata.name.as_deref() == Some(name) && t.metadata.namespace.as_deref() == Some(ns.as_str()))
    };
    for (rc, generated) in pod_claims(pod, commit::group_of(pod, &snapshot.workload_pod_groups)) {
        let Some(template) = rc.resource_claim_template_name.as_deref() else { continue };
        if generated.is_some() || exists(template) {
            continue;
        }
        let group = workload::group_of(pod).and_then(|(gns, g)| {
            snapshot.workload_pod_groups.iter().find(|pg| {
                pg.metadata.name.as_deref() == Some(g.as_str())
                    && pg.metadata.namespace.as_deref() == Some(gns.as_str())
                    && pg.spec.resource_claims.iter().any(|c| c.name == rc.name)
            })
        });
        let owner = match group {
            Some(g) => format!("PodGroup {ns}/{} claim {:?}", g.metadata.name.as_deref().unwrap_or_default(), rc.name),
            None => format!("pod {ns}/{} claim {:?}", pod.name_any(), rc.name),
        };
        return Some(format!(
            "{owner} names ResourceClaimTemplate {template:?}, which does not exist in namespace {ns}; create it \
             (the claim is generated from it) or fix the name"
        ));
    }
    None
}

struct SnapshotIndex<'s> {
    pods: HashMap<(String, String), &'s Pod>,
    claims: HashMap<(String, String), &'s ResourceClaim>,
    workload_groups: HashMap<(String, String), &'s phalanx_gang::workload::WorkloadPodGroup>,
}

impl<'s> SnapshotIndex<'s> {
    fn new(snapshot: &'s Snapshot) -> Self {
        let key =
            |m: &kube::api::ObjectMeta| (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default());
        SnapshotIndex {
            pods: snapshot.pods.iter().map(|p| (key(&p.metadata), p)).collect(),
            claims: snapshot.resource_claims.iter().map(|c| (key(&c.metadata), c)).collect(),
            workload_groups: snapshot.workload_pod_groups.iter().map(|g| (key(&g.metadata), g)).collect(),
        }
    }

    fn group(&self, pod: &Pod) -> Option<&'s phalanx_gang::workload::WorkloadPodGroup> {
        workload::group_of(pod).and_then(|k| self.workload_groups.get(&k).copied())
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<&'s Pod> {
        self.pods.get(&(namespace.to_owned(), name.to_owned())).copied()
    }

    /// True unless the pod is unbound and a claim of its is still to be generated
    /// from a template.
    fn claims_generated(&self, pod: &phalanx_gang::PodRef) -> bool {
        let Some(pod) = self.pod(&pod.namespace, &pod.name) else { return true };
        pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
            || pod_claim_names(pod, self.group(pod)).iter().all(Option::is_some)
    }

    /// The commit plan for a placement: UIDs from the snapshot, and for claims the
    /// placement did not allocate (shared, already allocated) a reservation only.
    fn gang_plan(&self, plan: &Plan) -> Result<GangPlan, String> {
        let mut allocated_here: HashSet<(String, String)> = HashSet::new();
        let mut members = Vec::new();
        for m in &plan.members {
            let (ns, name) = (m.pod.namespace.as_str(), m.pod.name.as_str());
            let pod = self.pod(ns, name).ok_or_else(|| format!("pod {ns}/{name} left the cache"))?;
            let uid = pod.uid().ok_or_else(|| format!("pod {ns}/{name} has no UID"))?;
            let ours: HashMap<&str, _> = m.claims.iter().map(|c| (c.name.as_str(), &c.allocation)).collect();
            let mut claims = Vec::new();
            let group = self.group(pod);
            for (pod_claim, claim_name) in pod_claims(pod, group) {
                let claim_name = claim_name.ok_or_else(|| format!("pod {ns}/{name}: a claim is not generated yet"))?;
                let claim = self
                    .claims
                    .get(&(ns.to_owned(), claim_name.clone()))
                    .ok_or_else(|| format!("claim {ns}/{claim_name} left the cache"))?;
                let key = (ns.to_owned(), claim_name.clone());
                let allocation = match ours.get(claim_name.as_str()) {
                    Some(a) if allocated_here.insert(key.clone()) => Some((*a).clone()),
                    Some(_) => None,
                    None if allocated_here.contains(&key) => None,
                    None if claim.status.as_ref().and_then(|s| s.allocation.as_ref()).is_some() => None,
                    None => return Err(format!("claim {ns}/{claim_name} of pod {name} was not allocated by the plan")),
                };
                let consumer = commit::consumer_for(pod, group, pod_claim);
                claims.push(ClaimPlan { name: claim_name, uid: claim.uid().unwrap_or_default(), allocation, consumer });
            }
            members.push(MemberPlan { namespace: ns.into(), name: name.into(), uid, node: m.node.clone(), claims });
        }
        Ok(GangPlan { gang: plan.gang.to_string(), members })
    }
}
