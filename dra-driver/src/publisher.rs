//! Publishes device inventories as ResourceSlices: one pool per (driver, node), named
//! after the node, split into slices of at most 128 devices (64 when any is tainted or
//! consumes counters). A pool's shared counters (MIG, see [`crate::mig`]) go in slices
//! of their own, at most 8 counter sets each, after the device slices: the API allows
//! no devices beside `sharedCounters`.
//!
//! [`desired_slices`] and [`in_sync`] are pure; [`Publisher`] applies them against the
//! apiserver and keeps them applied: a watch on the driver's slices notices slices that
//! someone else edited or deleted and queues their pool for repair. Every rewrite of a
//! pool bumps its generation, so readers never mix old and new slices.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::resource::v1::{CounterSet, Device, ResourcePool, ResourceSlice, ResourceSliceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use sha2::Digest;
use tokio::sync::mpsc;

/// Label on every slice this program writes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "phalanx-dra-driver");
/// Devices per slice without taints (API limit).
pub const MAX_DEVICES: usize = 128;
/// Devices per slice when any device has taints or consumes counters (API limit).
pub const MAX_DEVICES_TAINTED: usize = 64;
/// Counter sets per slice (API limit).
pub const MAX_COUNTER_SETS: usize = 8;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An apiserver call failed.
    #[error("{step} for pool {pool}: {source}")]
    Api {
        /// What we were doing.
        step: &'static str,
        /// `driver/node`.
        pool: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The Node to publish for does not exist.
    #[error("node {0} not found: slices are owned by their Node, create it first")]
    NodeMissing(String),
}

/// The Node a pool belongs to (slices carry an owner reference to it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef {
    /// Node name (also the pool name).
    pub name: String,
    /// Node UID.
    pub uid: String,
}

/// Identifies a pool: `(driver, node name)`.
pub type PoolKey = (String, String);

/// A slice name: `<node>-<driver>-<i>`, shortened with a hash when it would not fit.
pub fn slice_name(node: &str, driver: &str, index: usize) -> String {
    let name = format!("{node}-{}-{index}", driver.replace('.', "-"));
    if name.len() <= 253 {
        return name;
    }
    let digest = hex::encode(&sha2::Sha256::digest(format!("{node}/{driver}").as_bytes())[..8]);
    format!("{}-{digest}-{index}", &node[..200.min(node.len())].trim_end_matches(['-', '.']))
}

/// The slices that publish `devices` of `driver` for `node` at `generation`.
pub fn desired_slices(driver: &str, node: &NodeRef, devices: &[Device], generation: i64) -> Vec<ResourceSlice> {
    desired_pool_slices(driver, node, devices, &[], generation)
}

/// What one slice of a pool holds.
enum Part<'a> {
    Devices(&'a [Device]),
    Counters(&'a [CounterSet]),
}

/// The slices that publish `devices` and the `shared_counters` they consume: device
/// slices first, then counter slices.
pub fn desired_pool_slices(
    driver: &str,
    node: &NodeRef,
    devices: &[Device],
    shared_counters: &[CounterSet],
    generation: i64,
) -> Vec<ResourceSlice> {
    let limited = devices.iter().any(|d| {
        d.taints.as_ref().is_some_and(|t| !t.is_empty()) || d.consumes_counters.as_ref().is_some_and(|c| !c.is_empty())
    });
    let per_slice = if limited { MAX_DEVICES_TAINTED } else { MAX_DEVICES };
    let mut parts: Vec<Part<'_>> = devices.chunks(per_slice).map(Part::Devices).collect();
    parts.extend(shared_counters.chunks(MAX_COUNTER_SETS).map(Part::Counters));
    if parts.is_empty() {
        parts.push(Part::Devices(&[]));
    }
    let count = parts.len() as i64;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(&node.name, driver, i)),
                labels: Some(BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node.name.clone(),
                    uid: node.uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            spec: ResourceSliceSpec {
                driver: driver.to_owned(),
                node_name: Some(node.name.clone()),
                pool: ResourcePool { name: node.name.clone(), generation, resource_slice_count: count },
                devices: match part {
                    Part::Devices(chunk) => Some(chunk.to_vec()),
                    Part::Counters(_) => None,
                },
                shared_counters: match part {
                    Part::Devices(_) => None,
                    Part::Counters(sets) => Some(sets.to_vec()),
                },
                ..Default::default()
            },
        })
        .collect()
}

/// A spec with what may legitimately differ between writes removed: the generation and
/// the time a taint was added.
fn comparable(spec: &ResourceSliceSpec) -> ResourceSliceSpec {
    let mut spec = spec.clone();
    spec.pool.generation = 0;
    for d in spec.devices.iter_mut().flatten() {
        for t in d.taints.iter_mut().flatten() {
            t.time_added = None;
        }
        if d.taints.as_ref().is_some_and(Vec::is_empty) {
            d.taints = None;
        }
    }
    if spec.devices.as_ref().is_some_and(Vec::is_empty) {
        spec.devices = None;
    }
    if spec.shared_counters.as_ref().is_some_and(Vec::is_empty) {
        spec.shared_counters = None;
    }
    spec
}

/// Whether `existing` already publishes `desired`: same slice names, one generation,
/// equal specs apart from the generation, our label in place.
pub fn in_sync(existing: &[ResourceSlice], desired: &[ResourceSlice]) -> bool {
    if existing.len() != desired.len() {
        return false;
    }
    let generations: BTreeSet<i64> = existing.iter().map(|s| s.spec.pool.generation).collect();
    if generations.len() > 1 {
        return false;
    }
    let by_name: HashMap<&str, &ResourceSlice> =
        existing.iter().filter_map(|s| s.metadata.name.as_deref().map(|n| (n, s))).collect();
    desired.iter().all(|d| {
        by_name.get(d.metadata.name.as_deref().unwrap_or_default()).is_some_and(|e| {
            comparable(&e.spec) == comparable(&d.spec)
                && e.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str)
                    == Some(MANAGED_BY.1)
        })
    })
}

/// What one reconcile of a pool did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do.
    Unchanged,
    /// The pool was (re)written at this generation.
    Written(i64),
    /// The pool's slices were deleted.
    Removed,
}

#[derive(Debug, Clone)]
struct Pool {
    node: NodeRef,
    devices: Vec<Device>,
    shared_counters: Vec<CounterSet>,
}

#[derive(Default)]
struct State {
    pools: BTreeMap<PoolKey, Pool>,
    /// resourceVersion of every slice we last wrote, to ignore our own watch events.
    written: HashMap<String, String>,
    /// Generation each pool was last written at: the next write goes above it even
    /// when someone deleted every slice of the pool.
    generations: HashMap<PoolKey, i64>,
}

/// Keeps the pools it is given published and repaired.
#[derive(Clone)]
pub struct Publisher {
    api: Api<ResourceSlice>,
    state: Arc<Mutex<State>>,
    queue: mpsc::UnboundedSender<PoolKey>,
    receiver: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<PoolKey>>>,
    concurrency: usize,
    node: Option<String>,
    observed: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("concurrency", &self.concurrency).finish()
    }
}

fn pool_label(key: &PoolKey) -> String {
    format!("{}/{}", key.0, key.1)
}

impl Publisher {
    /// A publisher writing through `client`.
    pub fn new(client: kube::Client) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        Publisher {
            api: Api::all(client),
            state: Arc::default(),
            queue,
            receiver: Arc::new(tokio::sync::Mutex::new(receiver)),
            concurrency: 32,
            node: None,
            observed: Arc::default(),
        }
    }

    /// Watches only the slices of `node` (a node agent): each agent then hears about its
    /// own node's slices, not every node's, so N agents cost O(N) watch traffic, not O(N²).
    pub fn for_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// How many slice events the watches have delivered so far.
    pub fn observed_events(&self) -> u64 {
        self.observed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many pools are written at once (default 32).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets (or replaces) what pool `(driver, node)` should hold and queues it.
    pub fn set_pool(&self, driver: &str, node: NodeRef, devices: Vec<Device>) {
        self.set_pool_with_counters(driver, node, devices, Vec::new());
    }

    /// Like [`Publisher::set_pool`], for devices that consume `shared_counters`
    /// (partitionable devices).
    pub fn set_pool_with_counters(
        &self,
        driver: &str,
        node: NodeRef,
        devices: Vec<Device>,
        shared_counters: Vec<CounterSet>,
    ) {
        let key = (driver.to_owned(), node.name.clone());
        self.state.lock().expect("publisher state").pools.insert(key.clone(), Pool { node, devices, shared_counters });
        let _ = self.queue.send(key);
    }

    /// The keys of every pool this publisher holds.
    pub fn pools(&self) -> Vec<PoolKey> {
        self.state.lock().expect("publisher state").pools.keys().cloned().collect()
    }

    async fn existing(&self, key: &PoolKey) -> Result<Vec<ResourceSlice>, Error> {
        let params = ListParams::default().fields(&format!("spec.driver={},spec.nodeName={}", key.0, key.1));
        let list = self.api.list(&params).await.map_err(|source| Error::Api {
            step: "listing slices",
            pool: pool_label(key),
            source,
        })?;
        Ok(list.items)
    }

    /// Brings pool `key` in line with what was set for it: writes all its slices at a
    /// new generation when anything differs, deletes slices it no longer needs.
    pub async fn reconcile(&self, key: &PoolKey) -> Result<Outcome, Error> {
        let pool = self.state.lock().expect("publisher state").pools.get(key).cloned();
        let Some(pool) = pool else { return Ok(Outcome::Unchanged) };
        let existing = self.existing(key).await?;
        let desired = desired_pool_slices(&key.0, &pool.node, &pool.devices, &pool.shared_counters, 0);
        if in_sync(&existing, &desired) {
            return Ok(Outcome::Unchanged);
        }
        let last = self.state.lock().expect("publisher state").generations.get(key).copied().unwrap_or(0);
        let generation = existing.iter().map(|s| s.spec.pool.generation).max().unwrap_or(0).max(last) + 1;
        self.state.lock().expect("publisher state").generations.insert(key.clone(), generation);
        let desired = desired_pool_slices(&key.0, &pool.node, &pool.devices, &pool.shared_counters, generation);
        let by_name: HashMap<String, &ResourceSlice> =
            existing.iter().filter_map(|s| s.metadata.name.clone().map(|n| (n, s))).collect();
        let err = |step| move |source| Error::Api { step, pool: pool_label(key), source };
        for mut slice in desired.iter().cloned() {
            let name = slice.metadata.name.clone().unwrap_or_default();
            let written = match by_name.get(&name) {
                Some(old) => {
                    slice.metadata.resource_version = old.metadata.resource_version.clone();
                    self.api.replace(&name, &PostParams::default(), &slice).await.map_err(err("replacing a slice"))?
                }
                None => self.api.create(&PostParams::default(), &slice).await.map_err(err("creating a slice"))?,
            };
            if let Some(rv) = written.metadata.resource_version {
                self.state.lock().expect("publisher state").written.insert(name, rv);
            }
        }
        let keep: BTreeSet<String> = desired.iter().filter_map(|s| s.metadata.name.clone()).collect();
        for name in by_name.keys().filter(|n| !keep.contains(*n)) {
            self.delete_slice(name).await.map_err(err("deleting a surplus slice"))?;
        }
        Ok(Outcome::Written(generation))
    }

    async fn delete_slice(&self, name: &str) -> Result<(), kube::Error> {
        self.state.lock().expect("publisher state").written.remove(name);
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reconciles every pool once, `concurrency` at a time; returns the first error
    /// after trying them all.
    pub async fn sync_all(&self) -> Result<usize, Error> {
        let keys = self.pools();
        let results: Vec<Result<Outcome, Error>> = futures::stream::iter(keys.iter())
            .map(|k| self.reconcile(k))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut written = 0;
        for r in results {
            if let Outcome::Written(_) = r? {
                written += 1;
            }
        }
        Ok(written)
    }

    /// Deletes the slices of every pool this publisher holds (on shutdown, when asked).
    pub async fn remove_all(&self) -> Result<(), Error> {
        for key in self.pools() {
            for slice in self.existing(&key).await? {
                let name = slice.metadata.name.unwrap_or_default();
                self.delete_slice(&name).await.map_err(|source| Error::Api {
                    step: "deleting a slice on shutdown",
                    pool: pool_label(&key),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Runs until cancelled: reconciles queued pools and watches the slices of
    /// `drivers`, queueing any pool whose slices someone else changed or deleted.
    pub async fn run(&self, drivers: &[&str]) {
        let watches = drivers.iter().map(|d| self.watch(d.to_string()));
        tokio::join!(futures::future::join_all(watches), self.work());
    }

    async fn watch(&self, driver: String) {
        let fields = match &self.node {
            Some(node) => format!("spec.driver={driver},spec.nodeName={node}"),
            None => format!("spec.driver={driver}"),
        };
        let config = watcher::Config::default().fields(&fields);
        let mut events = std::pin::pin!(watcher(self.api.clone(), config));
        loop {
            match events.try_next().await {
                Ok(Some(event)) => self.observe(&driver, event),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, driver, "slice watch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn observe(&self, driver: &str, event: watcher::Event<ResourceSlice>) {
        if matches!(event, watcher::Event::Apply(_) | watcher::Event::InitApply(_) | watcher::Event::Delete(_)) {
            self.observed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let (slice, deleted) = match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => (s, false),
            watcher::Event::Delete(s) => (s, true),
            watcher::Event::Init => return,
            watcher::Event::InitDone => {
                // A (re)list shows what exists, not what went away before it: a slice
                // deleted before the first list, or while the watch was down, sends no
                // Delete. So every pool of this driver is checked (writing only on drift).
                let keys: Vec<PoolKey> = {
                    let state = self.state.lock().expect("publisher state");
                    state.pools.keys().filter(|(d, _)| d == driver).cloned().collect()
                };
                for key in keys {
                    let _ = self.queue.send(key);
                }
                return;
            }
        };
        let Some(node) = slice.spec.node_name.clone() else { return };
        let key = (slice.spec.driver.clone(), node);
        let name = slice.metadata.name.clone().unwrap_or_default();
        let ours = {
            let state = self.state.lock().expect("publisher state");
            if !state.pools.contains_key(&key) {
                return;
            }
            !deleted && state.written.get(&name).is_some_and(|rv| Some(rv) == slice.metadata.resource_version.as_ref())
        };
        if !ours {
            tracing::debug!(slice = name, deleted, "slice changed by someone else; repairing its pool");
            let _ = self.queue.send(key);
        }
    }

    async fn work(&self) {
        let mut receiver = self.receiver.lock().await;
        while let Some(first) = receiver.recv().await {
            let mut batch = BTreeSet::from([first]);
            while let Ok(k) = receiver.try_recv() {
                batch.insert(k);
            }
            let failed: Vec<PoolKey> = futures::stream::iter(batch)
                .map(|k| async move {
                    match self.reconcile(&k).await {
                        Ok(Outcome::Written(g)) => {
                            tracing::info!(pool = pool_label(&k), generation = g, "published");
                            None
                        }
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(error = %e, "publishing failed; will retry");
                            Some(k)
                        }
                    }
                })
                .buffer_unordered(self.concurrency)
                .filter_map(|k| async move { k })
                .collect()
                .await;
            if !failed.is_empty() {
                let queue = self.queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    for k in failed {
                        let _ = queue.send(k);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::DeviceTaint;

    fn device(i: usize, tainted: bool) -> Device {
        Device {
            name: format!("gpu-{i}"),
            taints: tainted.then(|| {
                vec![DeviceTaint { key: "k".into(), effect: "NoSchedule".into(), value: None, time_added: None }]
            }),
            ..Default::default()
        }
    }

    fn node() -> NodeRef {
        NodeRef { name: "node-a".into(), uid: "u".into() }
    }

    #[test]
    fn slices_hold_at_most_128_devices_with_a_correct_count() {
        let devices: Vec<Device> = (0..300).map(|i| device(i, false)).collect();
        let slices = desired_slices("gpu.phalanx.dev", &node(), &devices, 4);
        assert_eq!(slices.len(), 3);
        assert!(slices.iter().all(|s| s.spec.pool.resource_slice_count == 3 && s.spec.pool.generation == 4));
        assert_eq!(slices.iter().map(|s| s.spec.devices.as_ref().unwrap().len()).sum::<usize>(), 300);
        assert_eq!(slices[0].spec.pool.name, "node-a");
        assert_eq!(slices[0].spec.node_name.as_deref(), Some("node-a"));
    }

    #[test]
    fn tainted_devices_halve_the_slice_size() {
        let mut devices: Vec<Device> = (0..128).map(|i| device(i, false)).collect();
        devices[5] = device(5, true);
        assert_eq!(desired_slices("d", &node(), &devices, 1).len(), 2);
    }

    #[test]
    fn counter_sets_get_slices_of_their_own_and_count_in_the_pool() {
        use k8s_openapi::api::resource::v1::{Counter, DeviceCounterConsumption};
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let set = |i: usize| CounterSet {
            name: format!("gpu-{i}-counters"),
            counters: BTreeMap::from([("memory-slice-0".to_owned(), Counter { value: Quantity("1".into()) })]),
        };
        let sets: Vec<CounterSet> = (0..10).map(set).collect();
        let devices: Vec<Device> = (0..70)
            .map(|i| Device {
                consumes_counters: Some(vec![DeviceCounterConsumption {
                    counter_set: format!("gpu-{}-counters", i % 10),
                    counters: set(0).counters,
                    compatibility_groups: None,
                }]),
                ..device(i, false)
            })
            .collect();
        let slices = desired_pool_slices("d", &node(), &devices, &sets, 3);
        // 70 devices consuming counters: 64 + 6; 10 counter sets: 8 + 2.
        let shape: Vec<(usize, usize)> = slices
            .iter()
            .map(|s| (s.spec.devices.as_ref().map_or(0, Vec::len), s.spec.shared_counters.as_ref().map_or(0, Vec::len)))
            .collect();
        assert_eq!(shape, [(64, 0), (6, 0), (0, 8), (0, 2)]);
        assert!(slices.iter().all(|s| s.spec.pool.resource_slice_count == 4 && s.spec.pool.generation == 3));
        assert!(slices.iter().all(|s| s.spec.node_name.as_deref() == Some("node-a")));
        assert!(in_sync(&slices, &desired_pool_slices("d", &node(), &devices, &sets, 9)));
        assert!(!in_sync(&slices, &desired_pool_slices("d", &node(), &devices, &sets[..9], 9)));
        assert_eq!(desired_pool_slices("d", &node(), &[], &sets[..1], 1).len(), 1, "counters alone: one slice");
        assert_eq!(desired_slices("d", &node(), &[], 1)[0].spec.devices.as_deref(), Some(&[][..]), "an empty pool");
    }

    #[test]
    fn in_sync_ignores_generation_but_not_content() {
        let devices: Vec<Device> = (0..4).map(|i| device(i, false)).collect();
        let a = desired_slices("d", &node(), &devices, 1);
        let b = desired_slices("d", &node(), &devices, 7);
        assert!(in_sync(&a, &b));
        let mut edited = a.clone();
        edited[0].spec.devices.as_mut().unwrap().pop();
        assert!(!in_sync(&edited, &b));
        assert!(!in_sync(&[], &b));
    }

    #[test]
    fn long_node_names_still_give_valid_slice_names() {
        let long = "n".repeat(250);
        let name = slice_name(&long, "gpu.phalanx.dev", 0);
        assert!(name.len() <= 253);
        assert_ne!(name, slice_name(&long, "nic.phalanx.dev", 0));
    }
}
