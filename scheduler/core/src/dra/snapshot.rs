//! The allocator's view of the cluster: DeviceClasses with compiled selectors and
//! ResourceSlices indexed by node. Built once per scheduling cycle.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{Device, DeviceClass, ResourceSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::cel::{CelEnv, DeviceValue, EvalError, Selector, SelectorProblem};
use super::constraints::{CompactAttrs, Interner};
use super::error::AllocateError;
use super::features::Features;
use super::hash::FastMap;
use super::pools::Pool;
use super::quantity::Nanos;
use super::state::DeviceId;

/// A compiled selector or why it cannot be used.
pub(crate) type Compiled = Arc<Result<Selector, SelectorProblem>>;

/// A DeviceClass with its selectors compiled once.
pub(crate) struct ClassEntry {
    pub class: DeviceClass,
    pub name: String,
    pub selectors: Vec<Option<Compiled>>,
    /// Per global device: did the class selectors match (or which selector failed).
    pub matches: Vec<OnceLock<Result<bool, (usize, EvalError)>>>,
}

/// A slice and its devices' precomputed ids and CEL values.
pub(crate) struct SliceEntry {
    pub slice: ResourceSlice,
    pub name: String,
    /// Global index of device 0.
    pub first: usize,
    pub ids: Vec<DeviceId>,
    /// Per device: attributes interned for constraints.
    pub attrs: Vec<CompactAttrs>,
    /// Per device: no capacity has a request policy or a negative value.
    pub plain_capacity: Vec<bool>,
    pub values: Vec<OnceLock<Result<DeviceValue, String>>>,
}

impl SliceEntry {
    pub fn devices(&self) -> &[Device] {
        self.slice.spec.devices.as_deref().unwrap_or_default()
    }
    pub fn has_counters(&self) -> bool {
        self.slice.spec.shared_counters.as_ref().is_some_and(|c| !c.is_empty())
    }
    pub fn per_device(&self) -> bool {
        self.slice.spec.per_device_node_selection == Some(true)
    }
    /// Some device declares compatibility groups on a counter consumption
    /// (DRADeviceCompatibilityGroups, 1.37 alpha).
    pub fn uses_compatibility_groups(&self) -> bool {
        self.devices().iter().any(|d| {
            d.consumes_counters.iter().flatten().any(|c| c.compatibility_groups.as_ref().is_some_and(|g| !g.is_empty()))
        })
    }
}

/// DeviceClasses and ResourceSlices, indexed for allocation.
pub struct DraSnapshot {
    pub(crate) features: Features,
    pub(crate) cel: &'static CelEnv,
    pub(crate) classes: FastMap<String, ClassEntry>,
    pub(crate) slices: Vec<SliceEntry>,
    /// Slices with a nodeName, by node; without shared counters where those apply to
    /// every node ([`Features::counter_slices_on_every_node`]).
    pub(crate) on_node: FastMap<String, Vec<usize>>,
    /// All other slices (node selectors, allNodes, per-device selection, counters).
    pub(crate) shared: Vec<usize>,
    /// All slices of a pool, any generation.
    pub(crate) by_pool: HashMap<(String, String), Vec<usize>>,
    pub(crate) nodes: BTreeMap<String, Node>,
    pub(crate) device_count: usize,
    pub(crate) interner: Interner,
    request_selectors: Mutex<HashMap<String, Compiled>>,
    /// Pools per node, when they depend on the node's name only (no slice selects
    /// nodes by label).
    pool_cache: Mutex<FastMap<String, Arc<Vec<Pool>>>>,
}

impl std::fmt::Debug for DraSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraSnapshot")
            .field("features", &self.features)
            .field("classes", &self.classes.len())
            .field("slices", &self.slices.len())
            .field("devices", &self.device_count)
            .finish()
    }
}

impl DraSnapshot {
    /// Indexes classes and slices; compiles every class selector once. Compile errors
    /// are kept and reported when a claim uses the class.
    pub fn new(classes: &[DeviceClass], slices: &[ResourceSlice], features: Features) -> DraSnapshot {
        let cel = CelEnv::shared(!features.stable_channel());
        let mut compiled: HashMap<String, Compiled> = HashMap::new();
        let mut entries = Vec::with_capacity(slices.len());
        let mut on_node: FastMap<String, Vec<usize>> = FastMap::default();
        let mut shared = Vec::new();
        let mut by_pool: HashMap<(String, String), Vec<usize>> = HashMap::new();
        let mut nodes = BTreeMap::new();
        let mut next = 0usize;
        let mut interner = Interner::default();
        for (i, s) in slices.iter().enumerate() {
            let spec = &s.spec;
            let devs = spec.devices.as_deref().unwrap_or_default();
            let ids = devs.iter().map(|d| DeviceId::new(&spec.driver, &spec.pool.name, &d.name)).collect();
            let entry = SliceEntry {
                slice: s.clone(),
                name: s.metadata.name.clone().unwrap_or_default(),
                first: next,
                ids,
                attrs: devs.iter().map(|d| interner.device(d, &spec.driver)).collect(),
                plain_capacity: devs
                    .iter()
                    .map(|d| {
                        d.capacity.iter().flatten().all(|(_, c)| {
                            c.request_policy.is_none() && Nanos::of(&c.value).is_none_or(|v| v >= Nanos::ZERO)
                        })
                    })
                    .collect(),
                values: devs.iter().map(|_| OnceLock::new()).collect(),
            };
            next += devs.len();
            let node_name = spec.node_name.as_deref().unwrap_or("");
            if node_name.is_empty() || (entry.has_counters() && features.counter_slices_on_every_node()) {
                shared.push(i);
            } else {
                on_node.entry(node_name.to_string()).or_default().push(i);
            }
            for n in std::iter::once(node_name).chain(devs.iter().filter_map(|d| d.node_name.as_deref())) {
                if !n.is_empty() && !nodes.contains_key(n) {
                    nodes.insert(
                        n.to_string(),
                        Node {
                            metadata: ObjectMeta { name: Some(n.to_string()), ..Default::default() },
                            ..Default::default()
                        },
                    );
                }
            }
            by_pool.entry((spec.driver.clone(), spec.pool.name.clone())).or_default().push(i);
            entries.push(entry);
        }
        let mut class_map = FastMap::default();
        for c in classes {
            let name = c.metadata.name.clone().unwrap_or_default();
            let selectors = c
                .spec
                .iter()
                .flat_map(|s| s.selectors.iter().flatten())
                .map(|s| {
                    s.cel.as_ref().map(|cel_sel| {
                        compiled
                            .entry(cel_sel.expression.clone())
                            .or_insert_with(|| cel.compile_cached(&cel_sel.expression))
                            .clone()
                    })
                })
                .collect();
            let matches = (0..next).map(|_| OnceLock::new()).collect();
            class_map.insert(name.clone(), ClassEntry { class: c.clone(), name, selectors, matches });
        }
        DraSnapshot {
            features,
            cel,
            classes: class_map,
            slices: entries,
            on_node,
            shared,
            by_pool,
            nodes,
            device_count: next,
            interner,
            request_selectors: Mutex::new(compiled),
            pool_cache: Mutex::new(FastMap::default()),
        }
    }

    /// Registers the cluster's Nodes (with labels), so that `feasible_nodes` also
    /// considers slices that select nodes by label or apply to all nodes.
    pub fn with_nodes(mut self, nodes: &[Node]) -> Self {
        for n in nodes {
            if let Some(name) = &n.metadata.name {
                self.nodes.insert(name.clone(), n.clone());
            }
        }
        self
    }

    /// The features this snapshot was built with.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Number of devices in all slices.
    pub fn device_count(&self) -> usize {
        self.device_count
    }

    /// Names of the nodes the snapshot knows (from slices and [`DraSnapshot::with_nodes`]).
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// The device with this id, if some slice publishes it.
    pub fn device(&self, id: &DeviceId) -> Option<&Device> {
        let idx = self.by_pool.get(&(id.driver.clone(), id.pool.clone()))?;
        idx.iter().find_map(|&i| self.slices[i].devices().iter().find(|d| d.name == id.device))
    }

    /// The node's pools, gathered once per node when only node names matter.
    pub(crate) fn pools_for(
        &self,
        node: &Node,
        gather: impl Fn(&DraSnapshot, &Node) -> Result<Vec<Pool>, AllocateError>,
    ) -> Result<Arc<Vec<Pool>>, AllocateError> {
        let Some(name) = node.metadata.name.as_ref().filter(|_| self.shared.is_empty()) else {
            return gather(self, node).map(Arc::new);
        };
        if let Some(p) = self.pool_cache.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(p.clone());
        }
        let pools = Arc::new(gather(self, node)?);
        self.pool_cache.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), pools.clone());
        Ok(pools)
    }

    /// Compiles a request selector, once per distinct expression.
    pub(crate) fn compile_request(&self, expr: &str) -> Compiled {
        let mut cache = self.request_selectors.lock().unwrap_or_else(|e| e.into_inner());
        cache.entry(expr.to_string()).or_insert_with(|| self.cel.compile_cached(expr)).clone()
    }

    /// The CEL value of a device, built on first use.
    pub(crate) fn device_value(&self, slice: usize, dev: usize) -> &Result<DeviceValue, String> {
        let e = &self.slices[slice];
        e.values[dev].get_or_init(|| self.cel.device_value(&e.slice.spec.driver, &e.devices()[dev]))
    }
}
