//! The scheduler's view of the cluster: one reflector per kind, fed by watch events (no
//! periodic relist), plus the allocations and bindings this scheduler has made but not
//! yet seen come back through its watches ("assumed", as kube-scheduler calls it).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{
    AllocationResult, DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice,
};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use phalanx_gang::workload;
use phalanx_scheduler_core::placement::Snapshot;

use super::metrics::Metrics;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Claim key: (namespace, name).
pub type Key = (String, String);

/// What this scheduler wrote (or is writing) and its watches have not shown yet.
#[derive(Debug, Default)]
struct Assumed {
    claims: HashMap<Key, AllocationResult>,
    pods: HashMap<Key, String>,
}

/// Watches of the optional gang APIs, each set once the cluster serves it: at start, or
/// later, when its CRD is installed or its API group turned on. The Workload API is
/// watched in the first version of [`workload::POD_GROUP_VERSIONS`] the cluster serves
/// (v1beta1 on 1.37, v1alpha2 on 1.36): the same objects, whichever version is read.
#[derive(Default)]
struct GangApis {
    workload: OnceLock<(Store<DynamicObject>, ApiResource)>,
    composite: OnceLock<(Store<DynamicObject>, ApiResource)>,
    coscheduling: OnceLock<(Store<DynamicObject>, ApiResource)>,
    pod_gangs: OnceLock<(Store<DynamicObject>, ApiResource)>,
}

/// One optional gang API: where it lives and the versions to look for, best first.
struct GangApi {
    label: &'static str,
    group: &'static str,
    versions: &'static [&'static str],
    kind: &'static str,
}

const WORKLOAD: GangApi = GangApi {
    label: "scheduling.k8s.io/PodGroup",
    group: workload::GROUP,
    versions: workload::POD_GROUP_VERSIONS,
    kind: "PodGroup",
};
const COMPOSITE: GangApi = GangApi {
    label: "scheduling.k8s.io/CompositePodGroup",
    group: workload::GROUP,
    versions: workload::COMPOSITE_POD_GROUP_VERSIONS,
    kind: "CompositePodGroup",
};
const COSCHEDULING: GangApi = GangApi {
    label: "scheduling.x-k8s.io/v1alpha1/PodGroup",
    group: "scheduling.x-k8s.io",
    versions: &["v1alpha1"],
    kind: "PodGroup",
};
const GROVE: GangApi = GangApi {
    label: "scheduler.grove.io/v1alpha1/PodGang",
    group: "scheduler.grove.io",
    versions: &["v1alpha1"],
    kind: "PodGang",
};

impl GangApi {
    /// The first version of this API the cluster serves.
    async fn served(&self, client: &Client) -> Option<ApiResource> {
        for version in self.versions {
            if let Some(r) = served(client, self.group, version, self.kind).await {
                return Some(r);
            }
        }
        None
    }

    /// Watches it in `slot` if it is served and not watched yet; true when it started.
    async fn watch(
        &self,
        slot: &OnceLock<(Store<DynamicObject>, ApiResource)>,
        client: &Client,
        changed: &Arc<Notify>,
    ) -> bool {
        if slot.get().is_some() {
            return false;
        }
        let Some(r) = self.served(client).await else { return false };
        let store = spawn_dynamic(client, &r, changed.clone());
        let _ = store.wait_until_ready().await;
        info!(api = %format!("{}/{}", r.api_version, r.kind), "watching gang API");
        slot.set((store, r)).is_ok()
    }
}

impl GangApis {
    fn all_watched(&self) -> bool {
        self.workload.get().is_some()
            && self.composite.get().is_some()
            && self.coscheduling.get().is_some()
            && self.pod_gangs.get().is_some()
    }

    /// Starts a watch for every gang API now served and not yet watched; returns the names
    /// of those started. Each store has its initial list when this returns.
    async fn discover(&self, client: &Client, changed: &Arc<Notify>, metrics: &Metrics) -> Vec<&'static str> {
        let mut started = Vec::new();
        for (api, slot) in [
            (&WORKLOAD, &self.workload),
            (&COMPOSITE, &self.composite),
            (&COSCHEDULING, &self.coscheduling),
            (&GROVE, &self.pod_gangs),
        ] {
            if api.watch(slot, client, changed).await {
                started.push(api.label);
            }
            metrics.gang_api(api.label, slot.get().is_some());
        }
        started
    }
}

/// Reflector stores of every kind placement reads.
pub struct Cache {
    nodes: Store<Node>,
    pods: Store<Pod>,
    slices: Store<ResourceSlice>,
    claims: Store<ResourceClaim>,
    classes: Store<DeviceClass>,
    templates: Store<ResourceClaimTemplate>,
    gang_apis: Arc<GangApis>,
    assumed: Mutex<Assumed>,
    ready: Arc<AtomicBool>,
}

fn spawn_reflector<K>(api: Api<K>, changed: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).to_string();
    drive(reflector::reflector(writer, watcher(api, watcher::Config::default())), kind, changed);
    reader
}

fn spawn_dynamic(client: &Client, resource: &ApiResource, changed: Arc<Notify>) -> Store<DynamicObject> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let writer = reflector::store::Writer::new(resource.clone());
    let reader = writer.as_reader();
    drive(reflector::reflector(writer, watcher(api, watcher::Config::default())), resource.kind.clone(), changed);
    reader
}

/// Runs a reflector's watch in the background (retrying with backoff), notifying
/// `changed` on every event.
fn drive<K, S>(stream: S, kind: String, changed: Arc<Notify>)
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        stream
            .default_backoff()
            .for_each(|event| {
                match event {
                    Ok(_) => changed.notify_one(),
                    Err(e) => warn!(kind = %kind, error = %e, "watch failed; retrying with backoff"),
                }
                std::future::ready(())
            })
            .await;
    });
}

/// The resource for `group/version` `kind`, when the API server serves it.
async fn served(client: &Client, group: &str, version: &str, kind: &str) -> Option<ApiResource> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok((resource, _)) => Some(resource),
        Err(_) => None,
    }
}

impl Cache {
    /// Starts every watch. Gang APIs the cluster does not serve yet are looked for again
    /// every `discovery_period` (a discovery call, not a relist) and watched once they
    /// appear. `changed` is notified on every watch event.
    pub async fn start(
        client: &Client,
        changed: Arc<Notify>,
        metrics: Arc<Metrics>,
        discovery_period: Duration,
    ) -> Self {
        let all = |c: &Client| c.clone();
        let cache = Cache {
            nodes: spawn_reflector(Api::all(all(client)), changed.clone()),
            pods: spawn_reflector(Api::all(all(client)), changed.clone()),
            slices: spawn_reflector(Api::all(all(client)), changed.clone()),
            claims: spawn_reflector(Api::all(all(client)), changed.clone()),
            classes: spawn_reflector(Api::all(all(client)), changed.clone()),
            templates: spawn_reflector(Api::all(all(client)), changed.clone()),
            gang_apis: Arc::default(),
            assumed: Mutex::default(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let found = cache.gang_apis.discover(client, &changed, &metrics).await;
        info!(watched = ?found, "gang APIs served by this cluster");
        let (apis, client) = (cache.gang_apis.clone(), client.clone());
        tokio::spawn(async move {
            while !apis.all_watched() {
                tokio::time::sleep(discovery_period).await;
                let found = apis.discover(&client, &changed, &metrics).await;
                if !found.is_empty() {
                    info!(watched = ?found, "gang API appeared; watching it");
                    changed.notify_one();
                }
            }
        });
        cache
    }

    /// Waits until every watch has delivered its initial list (gang APIs found at start
    /// already have).
    pub async fn wait_until_ready(&self) {
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.claims.wait_until_ready().await;
        let _ = self.classes.wait_until_ready().await;
        let _ = self.templates.wait_until_ready().await;
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The scheduler-plugins `PodGroup` resource, when the cluster serves it.
    pub fn coscheduling_resource(&self) -> Option<&ApiResource> {
        self.gang_apis.coscheduling.get().map(|(_, r)| r)
    }

    /// The Workload API `PodGroup` resource in the version watched, when the cluster serves it.
    pub fn workload_resource(&self) -> Option<&ApiResource> {
        self.gang_apis.workload.get().map(|(_, r)| r)
    }

    /// Set once the initial lists are in (for `/readyz`).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Records a plan's allocations and bindings before they are written, so the next
    /// snapshot does not hand the same devices out again.
    pub fn assume(
        &self,
        claims: impl IntoIterator<Item = (Key, AllocationResult)>,
        pods: impl IntoIterator<Item = (Key, String)>,
    ) {
        let mut a = self.assumed.lock().expect("assumed lock");
        a.claims.extend(claims);
        a.pods.extend(pods);
    }

    /// Drops assumptions (after a failed commit, or once the watches show the writes).
    pub fn forget(&self, claims: &[Key], pods: &[Key]) {
        let mut a = self.assumed.lock().expect("assumed lock");
        for c in claims {
            a.claims.remove(c);
        }
        for p in pods {
            a.pods.remove(p);
        }
    }

    /// A point-in-time copy for the core, with assumptions applied on top; assumptions
    /// the watches have caught up with are dropped.
    pub fn snapshot(&self) -> Snapshot {
        let mut pods: Vec<Pod> = self.pods.state().iter().map(|p| (**p).clone()).collect();
        let mut claims: Vec<ResourceClaim> = self.claims.state().iter().map(|c| (**c).clone()).collect();
        {
            let mut a = self.assumed.lock().expect("assumed lock");
            let mut seen_claims = Vec::new();
            for claim in &mut claims {
                let key = (claim.namespace().unwrap_or_default(), claim.name_any());
                let Some(allocation) = a.claims.get(&key) else { continue };
                let status = claim.status.get_or_insert_with(Default::default);
                if status.allocation.is_some() {
                    seen_claims.push(key);
                } else {
                    status.allocation = Some(allocation.clone());
                }
            }
            let mut seen_pods = Vec::new();
            for pod in &mut pods {
                let key = (pod.namespace().unwrap_or_default(), pod.name_any());
                let Some(node) = a.pods.get(&key) else { continue };
                let spec = pod.spec.get_or_insert_with(Default::default);
                if spec.node_name.is_some() {
                    seen_pods.push(key);
                } else {
                    spec.node_name = Some(node.clone());
                }
            }
            for k in seen_claims {
                a.claims.remove(&k);
            }
            for k in seen_pods {
                a.pods.remove(&k);
            }
        }
        Snapshot {
            nodes: self.nodes.state().iter().map(|n| (**n).clone()).collect(),
            resource_slices: self.slices.state().iter().map(|s| (**s).clone()).collect(),
            device_classes: self.classes.state().iter().map(|c| (**c).clone()).collect(),
            resource_claims: claims,
            resource_claim_templates: self.templates.state().iter().map(|t| (**t).clone()).collect(),
            pods,
            workload_pod_groups: typed(self.gang_apis.workload.get().map(|(s, _)| s)),
            composite_pod_groups: typed(self.gang_apis.composite.get().map(|(s, _)| s)),
            coscheduling_pod_groups: typed(self.gang_apis.coscheduling.get().map(|(s, _)| s)),
            pod_gangs: typed(self.gang_apis.pod_gangs.get().map(|(s, _)| s)),
        }
    }

    /// The live pod, from the cache.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&reflector::ObjectRef::new(name).within(namespace))
    }

    /// The live claim, from the cache.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<Arc<ResourceClaim>> {
        self.claims.get(&reflector::ObjectRef::new(name).within(namespace))
    }
}

/// Custom resources converted to the gang crate's types; malformed ones are skipped
/// with a warning (the gang assembler reports what it can).
fn typed<T: DeserializeOwned>(store: Option<&Store<DynamicObject>>) -> Vec<T> {
    let Some(store) = store else { return Vec::new() };
    store
        .state()
        .iter()
        .filter_map(|o| {
            let value = serde_json::to_value(&**o).ok()?;
            match serde_json::from_value(value) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(object = %o.name_any(), error = %e, "skipping malformed gang object");
                    None
                }
            }
        })
        .collect()
}
