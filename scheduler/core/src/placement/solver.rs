//! The search: candidate domains, then a depth-first search over members inside one.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{AllocationResult, ResourceClaim, ResourceClaimTemplate};
use phalanx_gang::{Gang, GangKey, KvPolicy, PdRole, PodRef};
use phalanx_topology::interconnect::classify;
use phalanx_topology::{
    ClusterTopology, DomainIdx, FreeCapacity, LevelScope, LinkClass, NodeIdx, TopologyConfig, names,
};

use super::claims::{self, ClaimIndex, ClaimKey, Demand, Locality};
use super::nodes::{Allocatable, PodRequests, node_selector_matches, static_misfit, static_signature};
use super::score::ScoreBreakdown;
use super::state::{ClusterState, NodeUsage, Transaction, result_devices};
use super::{
    ClaimAllocation, DomainReason, GangOutcome, KvEstimate, MemberPlacement, Pending, PlacementError, PlacementOptions,
    Plan, Snapshot,
};
use crate::dra::{AllocatedState, Allocator, DraSnapshot, Features};

/// Position in the free-count index: `(free devices, node)`.
type Cursor = (u32, NodeIdx);

/// Node-level candidates taken from the free-count index at a time.
const NODE_CHUNK: usize = 64;

/// Reasons kept per pending gang.
const MAX_REASONS: usize = 100;

/// Places gangs against a snapshot, keeping the devices of placed gangs taken.
pub struct Placer {
    topo: ClusterTopology,
    dra: DraSnapshot,
    nodes: Vec<Node>,
    alloc: Vec<Allocatable>,
    state: ClusterState,
    claims: ClaimIndex,
    templates: Vec<ResourceClaimTemplate>,
    /// Workload API PodGroups by (namespace, name): a member's group claims resolve through it.
    workload_groups: HashMap<(String, String), phalanx_gang::workload::WorkloadPodGroup>,
    class_driver: HashMap<String, Option<String>>,
    /// Static node rules per pod signature: signature → slot, slot → per node result.
    static_sigs: HashMap<String, usize>,
    static_cache: Vec<Vec<Option<Option<String>>>>,
    pods: HashMap<PodRef, Pod>,
    options: PlacementOptions,
}

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
    }
}

fn claim_key(c: &ResourceClaim) -> ClaimKey {
    (c.metadata.namespace.clone().unwrap_or_else(|| "default".into()), c.metadata.name.clone().unwrap_or_default())
}

impl Placer {
    /// Builds the topology, the DRA snapshot and the usage of bound pods.
    pub fn new(
        snapshot: &Snapshot,
        config: &TopologyConfig,
        options: PlacementOptions,
    ) -> Result<Self, PlacementError> {
        let mut seen = HashSet::new();
        for n in &snapshot.nodes {
            let name = n.metadata.name.as_deref().ok_or(PlacementError::UnnamedNode)?;
            if !seen.insert(name) {
                return Err(PlacementError::DuplicateNode(name.to_string()));
            }
        }
        let topo = ClusterTopology::build(config, &snapshot.nodes, &snapshot.resource_slices);
        let features = Features { release: options.release, ..Features::all() };
        let dra =
            DraSnapshot::new(&snapshot.device_classes, &snapshot.resource_slices, features).with_nodes(&snapshot.nodes);
        let allocated = AllocatedState::from_claims(&snapshot.resource_claims);
        let capacity = FreeCapacity::new(&topo, |k| allocated.is_allocated(&dra_id(k)));
        let by_name: HashMap<&str, &Node> =
            snapshot.nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n))).collect();
        let nodes: Vec<Node> = topo.nodes().iter().map(|e| by_name[e.name.as_str()].clone()).collect();
        let alloc = nodes.iter().map(Allocatable::of).collect();
        let mut usage = vec![NodeUsage::default(); nodes.len()];
        let mut pd_nodes: HashMap<(String, String), Vec<NodeIdx>> = HashMap::new();
        for p in &snapshot.pods {
            let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(|n| topo.node_index(n)) else {
                continue;
            };
            if matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
                continue;
            }
            let r = PodRequests::of(p);
            usage[n].cpu_milli += r.cpu_milli;
            usage[n].memory_milli += r.memory_milli;
            usage[n].pods += 1;
            if let Some(g) = p.metadata.labels.as_ref().and_then(|l| l.get(phalanx_gang::keys::PD_GROUP)) {
                pd_nodes.entry((pod_ref(p).namespace, g.clone())).or_default().push(n);
            }
        }
        let class_driver = snapshot
            .device_classes
            .iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), claims::class_driver(c)))
            .collect();
        Ok(Self {
            state: ClusterState { allocated, capacity, usage, claim_node: HashMap::new(), pd_nodes },
            topo,
            dra,
            nodes,
            alloc,
            claims: ClaimIndex::new(&snapshot.resource_claims),
            templates: snapshot.resource_claim_templates.clone(),
            workload_groups: snapshot
                .workload_pod_groups
                .iter()
                .map(|g| {
                    let m = &g.metadata;
                    ((m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default()), g.clone())
                })
                .collect(),
            class_driver,
            static_sigs: HashMap::new(),
            static_cache: Vec::new(),
            pods: snapshot.pods.iter().map(|p| (pod_ref(p), p.clone())).collect(),
            options,
        })
    }

    /// The topology placement works against.
    pub fn topology(&self) -> &ClusterTopology {
        &self.topo
    }

    /// The devices taken so far (snapshot allocations plus committed plans).
    pub fn allocated(&self) -> &AllocatedState {
        &self.state.allocated
    }

    /// Free capacity so far.
    pub fn capacity(&self) -> &FreeCapacity {
        &self.state.capacity
    }

    /// The DRA snapshot.
    pub fn dra(&self) -> &DraSnapshot {
        &self.dra
    }

    /// A claim as the placer sees it (generated ones included, with plan allocations).
    pub fn claim(&self, key: &ClaimKey) -> Option<&ResourceClaim> {
        self.claims.get(key)
    }

    /// A node by index.
    pub fn node(&self, n: NodeIdx) -> &Node {
        &self.nodes[n]
    }

    /// Places one gang. On success its devices, pods and claims are committed to the
    /// placer's state; on failure nothing changes.
    pub fn place_gang(&mut self, gang: &Gang) -> GangOutcome {
        let pending = |message: String, domains: Vec<DomainReason>| {
            GangOutcome::Pending(Pending {
                gang: gang.key.clone(),
                pods: gang.members.iter().map(|m| m.pod.clone()).collect(),
                message,
                domains,
            })
        };
        let missing = gang.missing_members();
        if missing > 0 {
            return pending(
                format!(
                    "waiting for {missing} more pod(s): the gang needs {} members, {} exist",
                    gang.min_members,
                    gang.bound as usize + gang.members.len()
                ),
                vec![],
            );
        }
        let prep = match self.prepare(gang) {
            Ok(p) => p,
            Err(msg) => return pending(msg, vec![]),
        };
        let mut txn = Transaction::default();
        let allocator = Allocator::new(&self.dra);
        let mut search = Search {
            topo: &self.topo,
            nodes: &self.nodes,
            alloc: &self.alloc,
            allocator: &allocator,
            static_cache: &mut self.static_cache,
            pods: &self.pods,
            prep: &prep,
            st: &mut self.state,
            txn: &mut txn,
            attempts: 0,
            budget: self.options.max_attempts,
            alternatives: self.options.alternatives,
            strict: false,
        };
        match search.run() {
            Ok(found) => {
                let plan = search.build_plan(gang, &found);
                for m in &found.placed {
                    for (k, r) in &m.results {
                        self.claims.set_allocation(k, r.clone());
                    }
                }
                txn.commit();
                GangOutcome::Placed(plan)
            }
            Err((message, domains)) => {
                txn.rollback_to(&mut self.state, &self.topo, 0);
                pending(message, domains)
            }
        }
    }

    /// Scores a complete assignment of the gang without keeping it: for each gang member
    /// index, its node and the allocations of the claims [`Placer::member_claims`]
    /// lists for it. Errors when the assignment breaks a placement rule. Used to check
    /// the solver against exhaustive search.
    pub fn evaluate(
        &mut self,
        gang: &Gang,
        choice: &HashMap<usize, (String, Vec<AllocationResult>)>,
    ) -> Result<ScoreBreakdown, String> {
        let prep = self.prepare(gang)?;
        let mut by_idx = HashMap::new();
        for (&i, (node, allocs)) in choice {
            let n = self.topo.node_index(node).ok_or_else(|| format!("unknown node {node}"))?;
            by_idx.insert(i, (n, allocs.clone()));
        }
        let mut txn = Transaction::default();
        let allocator = Allocator::new(&self.dra);
        let mut search = Search {
            topo: &self.topo,
            nodes: &self.nodes,
            alloc: &self.alloc,
            allocator: &allocator,
            static_cache: &mut self.static_cache,
            pods: &self.pods,
            prep: &prep,
            st: &mut self.state,
            txn: &mut txn,
            attempts: 0,
            budget: 0,
            alternatives: 0,
            strict: false,
        };
        search.evaluate(&by_idx)
    }

    /// The claims member `member` of the gang allocates (shared claims count for the
    /// first member that uses them), in order.
    pub fn member_claims(&mut self, gang: &Gang, member: usize) -> Result<Vec<ResourceClaim>, String> {
        let prep = self.prepare(gang)?;
        let spec = prep.specs.iter().find(|s| s.gang_index == member).ok_or("no such member")?;
        Ok(spec.own.iter().filter_map(|k| self.claims.get(k).cloned()).collect())
    }

    /// Resolves members, claims, variants and co-location groups.
    fn prepare(&mut self, gang: &Gang) -> Result<Prepared, String> {
        let config = self.topo.config().clone();
        let resolve = |s: &str| -> Result<usize, String> {
            let l = config.resolve(s).map_err(|e| e.to_string())?;
            // Device-scope levels (numa, pcie) between pods reduce to "same node".
            Ok(if config.levels()[l].scope() == LevelScope::Devices { config.node_level() } else { l })
        };
        let required = gang.topology.required.as_deref().map(resolve).transpose()?;
        let preferred = gang.topology.preferred.as_deref().map(resolve).transpose()?;

        // Which members must be placed: per role its minimum, then up to `needed`.
        let mut must = vec![false; gang.members.len()];
        let mut count = 0u32;
        for r in &gang.roles {
            for &i in r.members.iter().take(r.min.saturating_sub(r.bound) as usize) {
                if !must[i] {
                    must[i] = true;
                    count += 1;
                }
            }
        }
        for m in must.iter_mut() {
            if count >= gang.needed() {
                break;
            }
            if !*m {
                *m = true;
                count += 1;
            }
        }

        let mut specs = Vec::new();
        let mut owner: HashMap<ClaimKey, usize> = HashMap::new();
        for (gi, m) in gang.members.iter().enumerate() {
            let pod = self.pods.get(&m.pod).ok_or_else(|| format!("pod {} is not in the snapshot", m.pod))?;
            let group = pod
                .spec
                .as_ref()
                .and_then(|s| s.scheduling_group.as_ref())
                .and_then(|g| g.pod_group_name.clone())
                .and_then(|g| self.workload_groups.get(&(m.pod.namespace.clone(), g)));
            let keys =
                self.claims.resolve_pod(pod, group, &self.templates).map_err(|e| format!("pod {}: {e}", m.pod))?;
            let mut own = Vec::new();
            let mut follow = Vec::new();
            let mut preallocated = Vec::new();
            for k in keys {
                let c = self.claims.get(&k).expect("resolved claim exists");
                if let Some(a) = c.status.as_ref().and_then(|s| s.allocation.as_ref()) {
                    preallocated.push((k.clone(), a.node_selector.clone()));
                } else if owner.contains_key(&k) || own.contains(&k) {
                    follow.push(k);
                } else {
                    owner.insert(k.clone(), gi);
                    own.push(k);
                }
            }
            let mut demand = Demand::default();
            let mut per_claim: Vec<Vec<(Locality, ResourceClaim)>> = Vec::new();
            let mut island_need = 0;
            for k in &own {
                let c = self.claims.get(k).expect("resolved claim exists");
                let shapes = claims::request_shapes(c, &self.class_driver);
                let d = claims::demand(&shapes);
                if d.gpus() >= 2 {
                    island_need = island_need.max(d.gpus());
                }
                demand.add(&d);
                per_claim.push(claims::variants(c, &shapes));
            }
            let mut variants: Vec<(Locality, Vec<ResourceClaim>)> = Vec::new();
            let mut seen: HashSet<Vec<Locality>> = HashSet::new();
            for lvl in [Locality::IslandAndNic, Locality::Island, Locality::Plain] {
                let pick: Vec<&(Locality, ResourceClaim)> = per_claim
                    .iter()
                    .map(|vs| vs.iter().find(|(l, _)| *l >= lvl).unwrap_or_else(|| vs.last().expect("plain variant")))
                    .collect();
                let sig: Vec<Locality> = pick.iter().map(|(l, _)| *l).collect();
                if seen.insert(sig.clone()) {
                    let worst = sig.iter().copied().max().unwrap_or(Locality::Plain);
                    variants.push((worst, pick.into_iter().map(|(_, c)| c.clone()).collect()));
                }
            }
            let n_nodes = self.nodes.len();
            let next = self.static_sigs.len();
            let sig = *self.static_sigs.entry(static_signature(pod)).or_insert(next);
            if sig == self.static_cache.len() {
                self.static_cache.push(vec![None; n_nodes]);
            }
            specs.push(MemberSpec {
                gang_index: gi,
                pod: m.pod.clone(),
                req: PodRequests::of(pod),
                sig,
                own,
                follow,
                preallocated,
                variants,
                demand,
                island_need,
                required: must[gi],
                pd: m.pd_group.clone().map(|g| (m.pod.namespace.clone(), g)),
            });
        }
        // Search order: required first, biggest first; stable by gang order.
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by_key(|&i| {
            (!specs[i].required, std::cmp::Reverse(specs[i].demand.per_driver.values().sum::<u32>()), i)
        });
        // A shared claim is allocated by its first member in search order.
        let mut first_seen: HashMap<ClaimKey, usize> = HashMap::new();
        for &i in &order {
            let s = &mut specs[i];
            let mut keep = Vec::new();
            for k in std::mem::take(&mut s.own).into_iter().chain(std::mem::take(&mut s.follow)) {
                if first_seen.contains_key(&k) {
                    s.follow.push(k);
                } else {
                    first_seen.insert(k.clone(), i);
                    keep.push(k);
                }
            }
            if keep.len() != s.variants.first().map_or(0, |v| v.1.len()) {
                // Ownership moved between members: rebuild this member's variants to
                // its own claims only.
                let keep_set: HashSet<&ClaimKey> = keep.iter().collect();
                for v in &mut s.variants {
                    v.1.retain(|c| keep_set.contains(&claim_key(c)));
                }
            }
            s.own = keep;
        }
        let specs: Vec<MemberSpec> = order.iter().map(|&i| specs[i].clone()).collect();
        let pos_of: HashMap<usize, usize> = specs.iter().enumerate().map(|(p, s)| (s.gang_index, p)).collect();

        let mut groups = Vec::new();
        let all: Vec<usize> = (0..specs.len()).collect();
        if let Some(l) = required {
            groups.push(Coloc { members: all.clone(), level: l, required: true, anchor: None });
        }
        if let Some(l) = preferred {
            groups.push(Coloc { members: all.clone(), level: l, required: false, anchor: None });
        }
        for r in &gang.roles {
            let ms: Vec<usize> = r.members.iter().map(|i| pos_of[i]).collect();
            if let Some(l) = r.topology.required.as_deref().map(resolve).transpose()? {
                groups.push(Coloc { members: ms.clone(), level: l, required: true, anchor: None });
            }
            if let Some(l) = r.topology.preferred.as_deref().map(resolve).transpose()? {
                groups.push(Coloc { members: ms, level: l, required: false, anchor: None });
            }
        }
        let mut pd = Vec::new();
        for g in &gang.pd_groups {
            let ms: Vec<usize> = g.members.iter().map(|(i, _)| pos_of[i]).collect();
            let level = g.kv_domain.as_deref().map(resolve).transpose()?;
            if let Some(l) = level {
                let anchor = self
                    .state
                    .pd_nodes
                    .get(&(gang.key.namespace.clone(), g.name.clone()))
                    .and_then(|v| v.first())
                    .map(|&n| self.topo.domain_of(n, l));
                groups.push(Coloc { members: ms.clone(), level: l, required: g.policy == KvPolicy::Required, anchor });
            }
            pd.push(PdInfo {
                name: g.name.clone(),
                level,
                members: g.members.iter().map(|(i, r)| (pos_of[i], *r)).collect(),
                bytes_per_request: g.kv_bytes_per_request(),
            });
        }
        let primary = specs
            .iter()
            .flat_map(|s| s.demand.per_driver.iter())
            .fold(BTreeMap::<&String, u32>::new(), |mut m, (d, n)| {
                *m.entry(d).or_default() += n;
                m
            })
            .into_iter()
            .max_by_key(|(d, n)| (*n, d.as_str() == names::GPU_DRIVER))
            .and_then(|(d, _)| self.state.capacity.driver_index(d))
            .or_else(|| self.state.capacity.driver_index(names::GPU_DRIVER));
        let mut need: BTreeMap<usize, u32> = BTreeMap::new();
        for sp in specs.iter().filter(|s| s.required) {
            for (d, n) in &sp.demand.per_driver {
                *need.entry(self.state.capacity.driver_index(d).unwrap_or(usize::MAX)).or_default() += n;
            }
        }
        let ideal = (0..self.topo.config().node_levels()).rev().find(|&l| {
            self.topo.level_domains(l).iter().any(|&d| {
                need.iter().all(|(&drv, &n)| drv != usize::MAX && self.state.capacity.domain_total(d, drv) >= n)
            })
        });
        Ok(Prepared { key: gang.key.clone(), specs, groups, pd, required, preferred, primary, ideal })
    }
}

fn dra_id(k: &phalanx_topology::DeviceKey) -> crate::dra::DeviceId {
    crate::dra::DeviceId { driver: k.driver.clone(), pool: k.pool.clone(), device: k.device.clone() }
}

#[derive(Debug, Clone)]
struct MemberSpec {
    gang_index: usize,
    pod: PodRef,
    req: PodRequests,
    /// Slot of its static node rules in the placer's cache.
    sig: usize,
    /// Claims allocated together with this member.
    own: Vec<ClaimKey>,
    /// Claims shared with an earlier member: this member goes to that node.
    follow: Vec<ClaimKey>,
    /// Claims allocated before: their node selector must match.
    preallocated: Vec<(ClaimKey, Option<k8s_openapi::api::core::v1::NodeSelector>)>,
    variants: Vec<(Locality, Vec<ResourceClaim>)>,
    demand: Demand,
    island_need: u32,
    required: bool,
    pd: Option<(String, String)>,
}

/// Members that must (or should) share a domain at a level.
#[derive(Debug, Clone)]
struct Coloc {
    members: Vec<usize>,
    level: usize,
    required: bool,
    anchor: Option<DomainIdx>,
}

#[derive(Debug, Clone)]
struct PdInfo {
    name: String,
    level: Option<usize>,
    members: Vec<(usize, PdRole)>,
    bytes_per_request: Option<u64>,
}

struct Prepared {
    key: GangKey,
    specs: Vec<MemberSpec>,
    groups: Vec<Coloc>,
    pd: Vec<PdInfo>,
    required: Option<usize>,
    preferred: Option<usize>,
    primary: Option<usize>,
    /// The narrowest level with a domain big enough for the gang when empty: the best
    /// span the cluster's shape allows (`None`: only the whole cluster).
    ideal: Option<usize>,
}

#[derive(Debug, Clone)]
struct Placed {
    node: NodeIdx,
    locality: Locality,
    results: Vec<(ClaimKey, AllocationResult)>,
}

/// A complete assignment inside one domain.
#[derive(Debug, Clone)]
struct Found {
    placed: Vec<Placed>,
    /// Spec positions of `placed`, in order.
    who: Vec<usize>,
    breakdown: ScoreBreakdown,
    score: f64,
}

struct Search<'a> {
    topo: &'a ClusterTopology,
    nodes: &'a [Node],
    alloc: &'a [Allocatable],
    allocator: &'a Allocator<'a>,
    static_cache: &'a mut [Vec<Option<Option<String>>>],
    pods: &'a HashMap<PodRef, Pod>,
    prep: &'a Prepared,
    st: &'a mut ClusterState,
    txn: &'a mut Transaction,
    attempts: usize,
    budget: usize,
    alternatives: usize,
    /// Only each member's best locality variant (first pass of every level).
    strict: bool,
}

/// What trying a domain gave, kept for wider domains with the same nodes.
enum Tried {
    Misfit,
    Failed(String),
    Placed,
}

/// Per-domain DFS state.
struct Dfs {
    order: Vec<NodeIdx>,
    domain: Option<DomainIdx>,
    placed: Vec<Option<Placed>>,
    group_dom: Vec<Option<DomainIdx>>,
    group_cnt: Vec<u32>,
    /// Undo-log position before member `i` was placed.
    marks: Vec<usize>,
    /// Why the search was cut before placing anyone.
    prune_reason: Option<String>,
    fail_member: usize,
    fail_reasons: BTreeMap<String, u32>,
    exhausted: bool,
}

type Failure = (String, Vec<DomainReason>);

impl Search<'_> {
    fn n_levels(&self) -> usize {
        self.topo.config().node_levels()
    }

    fn total_demand(&self, from: usize, only_required: bool) -> BTreeMap<usize, u32> {
        let mut m = BTreeMap::new();
        for s in &self.prep.specs[from..] {
            if only_required && !s.required {
                continue;
            }
            for (d, n) in &s.demand.per_driver {
                if let Some(di) = self.st.capacity.driver_index(d) {
                    *m.entry(di).or_default() += n;
                } else if *n > 0 {
                    *m.entry(usize::MAX).or_default() += n;
                }
            }
        }
        m
    }

    fn domain_free(&self, dom: Option<DomainIdx>, drv: usize) -> u32 {
        if drv == usize::MAX {
            return 0;
        }
        match dom {
            Some(d) => self.st.capacity.domain_free(d, drv),
            None => self.topo.level_domains(0).iter().map(|&d| self.st.capacity.domain_free(d, drv)).sum(),
        }
    }

    fn domain_total(&self, dom: Option<DomainIdx>, drv: usize) -> u32 {
        match dom {
            Some(d) => self.st.capacity.domain_total(d, drv),
            None => self.topo.level_domains(0).iter().map(|&d| self.st.capacity.domain_total(d, drv)).sum(),
        }
    }

    fn domain_label(&self, dom: Option<DomainIdx>) -> String {
        dom.map_or_else(|| "cluster".to_string(), |d| self.topo.domain_name(d))
    }

    fn driver_name(&self, drv: usize) -> String {
        self.st.capacity.drivers().get(drv).cloned().unwrap_or_else(|| "unpublished driver".into())
    }

    /// Whether the domain's free devices can hold `need`.
    fn aggregate_fits(&self, dom: Option<DomainIdx>, need: &BTreeMap<usize, u32>) -> bool {
        need.iter().all(|(&drv, &n)| self.domain_free(dom, drv) >= n)
    }

    /// Why a domain cannot hold the required members by free-device counts alone.
    fn aggregate_misfit(&self, dom: Option<DomainIdx>, need: &BTreeMap<usize, u32>) -> Option<String> {
        for (&drv, &n) in need {
            let free = self.domain_free(dom, drv);
            if free < n {
                return Some(format!(
                    "needs {n} {} devices, {free} free of {}",
                    self.driver_name(drv),
                    if drv == usize::MAX { 0 } else { self.domain_total(dom, drv) }
                ));
            }
        }
        None
    }

    /// Candidate domains from the node level up to the required level (or the cluster).
    fn run(&mut self) -> Result<Found, Failure> {
        let need = self.total_demand(0, true);
        let node_level = self.n_levels() - 1;
        let top = self.prep.required.unwrap_or(0);
        let mut reasons: Vec<DomainReason> = Vec::new();
        let mut all_tried: HashMap<(NodeIdx, usize), Tried> = HashMap::new();
        let n_required = self.prep.specs.iter().filter(|s| s.required).count();
        for level in (top..=node_level).rev() {
            // A level whose every domain is a single node (e.g. HGX NVLink domains) was
            // tried at the node level already; only its reasons may be needed.
            if level != node_level && level != top && self.topo.level_domains(level).len() == self.topo.nodes().len() {
                continue;
            }
            let mut best: Option<Found> = None;
            let mut level_tried: HashMap<(NodeIdx, usize), Tried> = HashMap::new();
            // First only each member's best locality variant (a claim's GPUs in one
            // island…), then anything the claims allow: locality ranks above best fit.
            for strict in [true, false] {
                self.strict = strict;
                let mut extra = 0;
                let mut cursor = None;
                loop {
                    let (cands, next) = self.candidates(level, &need, n_required, cursor);
                    let mut stop = false;
                    for (dom, agg) in cands {
                        let d = &self.topo.domains()[dom];
                        let key = (d.nodes[0], d.nodes.len());
                        if let Some(prev) = all_tried.get(&key) {
                            // Same nodes as a narrower domain already tried.
                            if !strict && level == top {
                                let why = match prev {
                                    Tried::Misfit => self.aggregate_misfit(Some(dom), &need),
                                    Tried::Failed(w) => Some(w.clone()),
                                    Tried::Placed => None,
                                };
                                if let Some(why) = why {
                                    reasons.push(DomainReason { domain: self.topo.domain_name(dom), reason: why });
                                }
                            }
                            continue;
                        }
                        if agg {
                            if !strict {
                                if level == top
                                    && let Some(why) = self.aggregate_misfit(Some(dom), &need)
                                {
                                    reasons.push(DomainReason { domain: self.topo.domain_name(dom), reason: why });
                                }
                                level_tried.insert(key, Tried::Misfit);
                            }
                            continue;
                        }
                        match self.solve_in(Some(dom)) {
                            Ok(found) => {
                                level_tried.insert(key, Tried::Placed);
                                let perfect = found.breakdown.locality >= 1.0 && found.breakdown.kv >= 1.0;
                                if best.as_ref().is_none_or(|b| found.score > b.score) {
                                    best = Some(found);
                                }
                                extra += 1;
                                if perfect || extra > self.alternatives {
                                    stop = true;
                                    break;
                                }
                            }
                            Err(why) => {
                                if !strict {
                                    if level == top {
                                        reasons.push(DomainReason {
                                            domain: self.topo.domain_name(dom),
                                            reason: why.clone(),
                                        });
                                    }
                                    level_tried.insert(key, Tried::Failed(why));
                                }
                            }
                        }
                        if self.attempts >= self.budget {
                            stop = true;
                            break;
                        }
                    }
                    match next {
                        Some(n) if !stop => cursor = Some(n),
                        _ => break,
                    }
                }
                if best.is_some() || self.attempts >= self.budget {
                    break;
                }
            }
            self.strict = false;
            all_tried.extend(level_tried);
            if let Some(b) = best {
                self.apply(&b);
                return Ok(b);
            }
            if self.attempts >= self.budget {
                break;
            }
        }
        if self.prep.required.is_none() && self.attempts < self.budget {
            match self.aggregate_misfit(None, &need) {
                Some(why) => reasons.push(DomainReason { domain: "cluster".into(), reason: why }),
                None => match self.solve_in(None) {
                    Ok(found) => {
                        self.apply(&found);
                        return Ok(found);
                    }
                    Err(why) => reasons.push(DomainReason { domain: "cluster".into(), reason: why }),
                },
            }
        }
        if reasons.len() > MAX_REASONS {
            let more = reasons.len() - MAX_REASONS;
            reasons.truncate(MAX_REASONS);
            reasons.push(DomainReason { domain: "…".into(), reason: format!("{more} more domains rejected") });
        }
        let level_name = self.topo.config().levels()[top].name.clone();
        let msg = if self.attempts >= self.budget {
            format!("search budget of {} allocation attempts exhausted; no placement found", self.budget)
        } else if let Some(r) = self.prep.required {
            format!(
                "no {} domain can hold the gang (required level {}); {} domain(s) checked",
                level_name,
                self.topo.config().levels()[r].name,
                reasons.len()
            )
        } else {
            "no domain, nor the whole cluster, can hold the gang".to_string()
        };
        Err((msg, reasons))
    }

    /// Domains of a level, with the aggregate misfit (if any), best fit first.
    /// At the node level the candidates come from the free-count index in chunks:
    /// `cursor` resumes after the previous chunk, and the second value is the cursor of
    /// the next one (`None`: no more).
    fn candidates(
        &self,
        level: usize,
        need: &BTreeMap<usize, u32>,
        n_required: usize,
        cursor: Option<Cursor>,
    ) -> (Vec<(DomainIdx, bool)>, Option<Cursor>) {
        let node_level = self.n_levels() - 1;
        let primary = self.prep.primary;
        let primary_need = primary.and_then(|p| need.get(&p).copied()).unwrap_or(0);
        if level == node_level && primary_need > 0 && n_required > 0 {
            // Best fit from the free-count index, no scan of every node.
            let p = primary.expect("primary driver");
            // Other drivers are checked per node by the search.
            let start = cursor.unwrap_or((primary_need, 0));
            let chunk: Vec<(u32, NodeIdx)> =
                self.st.capacity.nodes_with_free(p, start.0).skip_while(|&x| x < start).take(NODE_CHUNK).collect();
            let next = (chunk.len() == NODE_CHUNK).then(|| chunk.last().map(|&(f, n)| (f, n + 1))).flatten();
            if chunk.is_empty() && cursor.is_none() && level == self.prep.required.unwrap_or(0) {
                let all =
                    self.topo.level_domains(level).iter().map(|&d| (d, !self.aggregate_fits(Some(d), need))).collect();
                return (all, None);
            }
            return (chunk.into_iter().map(|(_, n)| (self.topo.domain_of(n, level), false)).collect(), next);
        }
        let mut v: Vec<(DomainIdx, bool, u32)> = self
            .topo
            .level_domains(level)
            .iter()
            .map(|&d| {
                let free = primary.map_or(0, |p| self.st.capacity.domain_free(d, p));
                (d, !self.aggregate_fits(Some(d), need), free)
            })
            .collect();
        // Feasible first, then fullest (fewest free), then name.
        v.sort_by(|a, b| {
            // Ties by domain index: domains are numbered in node-name order.
            a.1.cmp(&b.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0))
        });
        (v.into_iter().map(|(d, a, _)| (d, a)).collect(), None)
    }

    /// Node order inside a domain: the sub-domains with the most free devices first
    /// (pack the gang into few of them), and inside the narrowest one, the fullest node
    /// first (best fit).
    fn node_order(&self, dom: Option<DomainIdx>) -> Vec<NodeIdx> {
        let nodes: Vec<NodeIdx> = match dom {
            Some(d) => self.topo.domains()[d].nodes.clone(),
            None => (0..self.topo.nodes().len()).collect(),
        };
        let from = dom.map_or(0, |d| self.topo.domains()[d].level + 1);
        let node_level = self.n_levels() - 1;
        let free = |d: DomainIdx| self.prep.primary.map_or(0, |p| self.st.capacity.domain_free(d, p));
        type Key = (Vec<(std::cmp::Reverse<u32>, DomainIdx)>, u32, NodeIdx);
        let mut keyed: Vec<Key> = nodes
            .into_iter()
            .map(|n| {
                // Sub-domains that are just this node (e.g. an HGX node's own NVLink
                // domain) are ordered as nodes, by best fit, not as sub-domains.
                let path = (from..node_level)
                    .map(|l| self.topo.domain_of(n, l))
                    .filter(|&d| self.topo.domains()[d].nodes.len() > 1)
                    .map(|d| (std::cmp::Reverse(free(d)), d));
                (path.collect(), free(self.topo.domain_of(n, node_level)), n)
            })
            .collect();
        keyed.sort();
        keyed.into_iter().map(|(_, _, n)| n).collect()
    }

    fn solve_in(&mut self, dom: Option<DomainIdx>) -> Result<Found, String> {
        let mark = self.txn.mark();
        let mut dfs = Dfs {
            order: self.node_order(dom),
            domain: dom,
            placed: vec![None; self.prep.specs.len()],
            group_dom: self.prep.groups.iter().map(|g| g.anchor).collect(),
            group_cnt: vec![0; self.prep.groups.len()],
            marks: vec![0; self.prep.specs.len()],
            prune_reason: None,
            fail_member: 0,
            fail_reasons: BTreeMap::new(),
            exhausted: false,
        };
        let n_required = self.prep.specs.iter().take_while(|s| s.required).count();
        let ok = self.place_from(&mut dfs, 0, n_required);
        if !ok {
            self.txn.rollback_to(self.st, self.topo, mark);
            if dfs.exhausted {
                return Err(format!("search budget exhausted in {}", self.domain_label(dom)));
            }
            if let Some(why) = dfs.prune_reason {
                return Err(why);
            }
            let s = &self.prep.specs[dfs.fail_member];
            let total: u32 = dfs.fail_reasons.values().sum();
            let detail = dfs.fail_reasons.iter().map(|(r, n)| format!("{n}× {r}")).collect::<Vec<_>>().join("; ");
            return Err(if total == 0 {
                format!("member {} has no candidate node left", s.pod)
            } else {
                format!("member {}: no node fits ({detail})", s.pod)
            });
        }
        // Optional members: greedily, no backtracking.
        for i in n_required..self.prep.specs.len() {
            let _ = self.try_member(&mut dfs, i, None);
        }
        let who: Vec<usize> = (0..dfs.placed.len()).filter(|&i| dfs.placed[i].is_some()).collect();
        let placed: Vec<Placed> = who.iter().map(|&i| dfs.placed[i].clone().expect("placed")).collect();
        let breakdown = self.score(&placed, &who);
        self.txn.rollback_to(self.st, self.topo, mark);
        Ok(Found { score: breakdown.total(), breakdown, placed, who })
    }

    /// Re-applies a found plan to the state (after alternatives were rolled back).
    fn apply(&mut self, f: &Found) {
        for (p, &i) in f.placed.iter().zip(&f.who) {
            let s = &self.prep.specs[i];
            self.txn.add_pod(self.st, p.node, &s.req);
            for (k, r) in &p.results {
                self.txn.allocate(self.st, self.topo, k.clone(), p.node, r.clone());
            }
            if let Some(pd) = &s.pd {
                self.txn.add_pd_node(self.st, pd.clone(), p.node);
            }
        }
    }

    /// Depth-first over required members `i..n`.
    fn place_from(&mut self, dfs: &mut Dfs, i: usize, n: usize) -> bool {
        if i == n {
            return true;
        }
        // Prune: what the remaining required members need must still be free here.
        let rest = self.total_demand(i, true);
        if !self.aggregate_fits(dfs.domain, &rest) {
            return false;
        }
        if let Err(why) = self.slots_suffice(dfs, i, n) {
            if i == 0 {
                dfs.prune_reason = Some(why);
            }
            return false;
        }
        let mut skip_after: Option<(usize, usize)> = None;
        loop {
            let Some(resume) = self.try_member(dfs, i, skip_after) else { return false };
            if self.place_from(dfs, i + 1, n) {
                return true;
            }
            if dfs.exhausted {
                return false;
            }
            self.unplace(dfs, i);
            skip_after = Some(resume);
        }
    }

    /// Prune: a pod's devices come from one node, so the domain's nodes must offer at
    /// least as many "slots" of the smallest remaining per-pod demand as there are
    /// members left (free totals alone miss fragmentation, and the search would try
    /// every permutation before giving up).
    fn slots_suffice(&self, dfs: &Dfs, from: usize, n: usize) -> Result<(), String> {
        let Some(p) = self.prep.primary else { return Ok(()) };
        let driver = &self.st.capacity.drivers()[p];
        let rest = &self.prep.specs[from..n];
        let Some(d_min) = rest.iter().map(|s| s.demand.per_driver.get(driver).copied().unwrap_or(0)).min() else {
            return Ok(());
        };
        if d_min == 0 {
            return Ok(());
        }
        let mut slots = 0usize;
        for &node in &dfs.order {
            slots += (self.st.capacity.node_free(node, p) / d_min) as usize;
            if slots >= rest.len() {
                return Ok(());
            }
        }
        Err(format!(
            "{} member(s) need at least {d_min} {driver} devices each on one node; the nodes here have room for {slots}",
            rest.len()
        ))
    }

    fn unplace(&mut self, dfs: &mut Dfs, i: usize) {
        if dfs.placed[i].take().is_none() {
            return;
        }
        for (g, grp) in self.prep.groups.iter().enumerate() {
            if grp.members.contains(&i) {
                dfs.group_cnt[g] -= 1;
                if dfs.group_cnt[g] == 0 {
                    dfs.group_dom[g] = grp.anchor;
                }
            }
        }
        self.txn.rollback_to(self.st, self.topo, dfs.marks[i]);
    }

    /// Places member `i` on the first feasible (variant, node) after `after`; returns
    /// the position to resume from when backtracking.
    fn try_member(&mut self, dfs: &mut Dfs, i: usize, after: Option<(usize, usize)>) -> Option<(usize, usize)> {
        let spec = &self.prep.specs[i];
        let n_var = spec.variants.len().max(1);
        let (v0, p0) = after.map_or((0, 0), |(v, p)| (v, p + 1));
        // Preferred groups with a domain set: their nodes first; nodes already holding
        // members of this gang before others (packing).
        let prefer: Vec<(usize, DomainIdx)> = self
            .prep
            .groups
            .iter()
            .enumerate()
            .filter(|(g, grp)| !grp.required && grp.members.contains(&i) && dfs.group_dom[*g].is_some())
            .map(|(g, grp)| (grp.level, dfs.group_dom[g].expect("set")))
            .collect();
        let used: HashSet<NodeIdx> = dfs.placed.iter().flatten().map(|p| p.node).collect();
        let cands: Vec<NodeIdx> = if prefer.is_empty() && used.is_empty() {
            dfs.order.clone()
        } else {
            let tier = |node: NodeIdx| {
                let out_pref = !prefer.iter().all(|&(l, d)| self.topo.domain_of(node, l) == d);
                2 * usize::from(out_pref) + usize::from(!used.contains(&node))
            };
            let mut by_tier: [Vec<NodeIdx>; 4] = Default::default();
            for &n in &dfs.order {
                by_tier[tier(n)].push(n);
            }
            by_tier.concat()
        };
        let n_var = if self.strict { 1 } else { n_var };
        for v in v0..n_var {
            let start = if v == v0 { p0 } else { 0 };
            for (pos, &node) in cands.iter().enumerate().skip(start) {
                let last_pass = v + 1 == n_var;
                match self.try_node(dfs, i, v, node) {
                    Ok(true) => return Some((v, pos)),
                    Ok(false) => {}
                    Err(reason) => {
                        if last_pass && i >= dfs.fail_member {
                            if i > dfs.fail_member {
                                dfs.fail_member = i;
                                dfs.fail_reasons.clear();
                            }
                            *dfs.fail_reasons.entry(reason).or_default() += 1;
                        }
                    }
                }
                if dfs.exhausted {
                    return None;
                }
            }
        }
        if i > dfs.fail_member || (i == dfs.fail_member && dfs.fail_reasons.is_empty()) {
            dfs.fail_member = i;
        }
        None
    }

    /// Every rule but the devices: co-location, shared and pre-allocated claims, the
    /// node's static rules, CPU / memory / pods, and free device counts.
    fn check_node(&mut self, dfs: &Dfs, i: usize, node: NodeIdx) -> Result<(), String> {
        let spec = &self.prep.specs[i];
        for (g, grp) in self.prep.groups.iter().enumerate() {
            if grp.required
                && grp.members.contains(&i)
                && let Some(d) = dfs.group_dom[g]
                && self.topo.domain_of(node, grp.level) != d
            {
                return Err(format!("outside {} where other members of its group are", self.topo.domain_name(d)));
            }
        }
        for k in &spec.follow {
            if let Some(&n) = self.st.claim_node.get(k)
                && n != node
            {
                return Err(format!("shared claim {}/{} is allocated on {}", k.0, k.1, self.topo.nodes()[n].name));
            }
        }
        let name = &self.topo.nodes()[node].name;
        for (k, sel) in &spec.preallocated {
            if let Some(sel) = sel {
                let empty = Default::default();
                let labels = self.nodes[node].metadata.labels.as_ref().unwrap_or(&empty);
                if !node_selector_matches(sel, labels, name) {
                    return Err(format!("claim {}/{} is already allocated for other nodes", k.0, k.1));
                }
            }
        }
        // Static rules, cached per pod signature.
        let cache = &mut self.static_cache[spec.sig];
        if cache[node].is_none() {
            let pod = &self.pods[&spec.pod];
            cache[node] = Some(static_misfit(pod, &self.nodes[node]));
        }
        if let Some(Some(why)) = &cache[node] {
            return Err(why.clone());
        }
        let a = self.alloc[node];
        let u = self.st.usage[node];
        if a.pods <= u.pods {
            return Err("too many pods".into());
        }
        if spec.req.cpu_milli > 0 && u.cpu_milli + spec.req.cpu_milli > a.cpu_milli {
            return Err("insufficient cpu".into());
        }
        if spec.req.memory_milli > 0 && u.memory_milli + spec.req.memory_milli > a.memory_milli {
            return Err("insufficient memory".into());
        }
        for (d, n) in &spec.demand.per_driver {
            let free = self.st.capacity.driver_index(d).map_or(0, |di| self.st.capacity.node_free(node, di));
            if free < *n {
                return Err(format!("not enough free {d} devices (needs {n}, {free} free)"));
            }
        }
        Ok(())
    }

    /// `Ok(true)` placed, `Ok(false)` skipped quietly (a stronger variant that cannot
    /// hold here), `Err(reason)` the node does not fit.
    fn try_node(&mut self, dfs: &mut Dfs, i: usize, v: usize, node: NodeIdx) -> Result<bool, String> {
        self.check_node(dfs, i, node)?;
        let spec = &self.prep.specs[i];
        let (locality, claims) = match spec.variants.get(v) {
            Some((l, c)) => (*l, c.clone()),
            None => (Locality::Plain, Vec::new()),
        };
        if locality <= Locality::Island
            && spec.island_need >= 2
            && self.st.capacity.max_island_free(node) < spec.island_need
        {
            return Ok(false);
        }
        let mut results = Vec::new();
        if !claims.is_empty() {
            if self.attempts >= self.budget {
                dfs.exhausted = true;
                return Ok(false);
            }
            self.attempts += 1;
            let refs: Vec<&ResourceClaim> = claims.iter().collect();
            match self.allocator.allocate(&self.nodes[node], &refs, &self.st.allocated) {
                Ok(Some(r)) => results = claims.iter().map(claim_key).zip(r).collect(),
                Ok(None) if locality == Locality::Plain => {
                    return Err("the DRA allocator finds no devices for its claims".into());
                }
                Ok(None) => return Ok(false),
                Err(e) => return Err(format!("DRA allocation error: {e}")),
            }
        }
        self.accept(dfs, i, node, locality, results);
        Ok(true)
    }

    /// Records member `i` on `node` with its allocations, in the undo log.
    fn accept(
        &mut self,
        dfs: &mut Dfs,
        i: usize,
        node: NodeIdx,
        locality: Locality,
        results: Vec<(ClaimKey, AllocationResult)>,
    ) {
        let spec = &self.prep.specs[i];
        let mark = self.txn.mark();
        self.txn.add_pod(self.st, node, &spec.req);
        for (k, r) in &results {
            self.txn.allocate(self.st, self.topo, k.clone(), node, r.clone());
        }
        if let Some(pd) = &spec.pd {
            self.txn.add_pd_node(self.st, pd.clone(), node);
        }
        dfs.marks[i] = mark;
        for (g, grp) in self.prep.groups.iter().enumerate() {
            if grp.members.contains(&i) {
                if dfs.group_dom[g].is_none() {
                    dfs.group_dom[g] = Some(self.topo.domain_of(node, grp.level));
                }
                dfs.group_cnt[g] += 1;
            }
        }
        dfs.placed[i] = Some(Placed { node, locality, results });
    }

    /// Checks and scores a given assignment (spec position → node, allocations of its
    /// own claims), then rolls it back.
    fn evaluate(
        &mut self,
        choice: &HashMap<usize, (NodeIdx, Vec<AllocationResult>)>,
    ) -> Result<ScoreBreakdown, String> {
        let mark = self.txn.mark();
        let mut dfs = Dfs {
            order: Vec::new(),
            domain: None,
            placed: vec![None; self.prep.specs.len()],
            group_dom: self.prep.groups.iter().map(|g| g.anchor).collect(),
            group_cnt: vec![0; self.prep.groups.len()],
            marks: vec![0; self.prep.specs.len()],
            prune_reason: None,
            fail_member: 0,
            fail_reasons: BTreeMap::new(),
            exhausted: false,
        };
        let mut res = Ok(());
        for i in 0..self.prep.specs.len() {
            let spec = &self.prep.specs[i];
            let Some((node, allocs)) = choice.get(&spec.gang_index) else {
                if spec.required {
                    res = Err(format!("required member {} is not placed", spec.pod));
                    break;
                }
                continue;
            };
            if allocs.len() != spec.own.len() {
                res = Err(format!("member {}: {} allocations for {} claims", spec.pod, allocs.len(), spec.own.len()));
                break;
            }
            if let Err(e) = self.check_node(&dfs, i, *node) {
                res = Err(format!("member {}: {e}", spec.pod));
                break;
            }
            let taken =
                allocs.iter().flat_map(|r| result_devices(self.topo, r)).find(|&d| !self.st.capacity.is_free(d));
            if let Some(d) = taken {
                res = Err(format!("device {} is already taken", self.topo.devices()[d].info.key));
                break;
            }
            let results = spec.own.iter().cloned().zip(allocs.iter().cloned()).collect();
            self.accept(&mut dfs, i, *node, Locality::Plain, results);
        }
        let out = res.map(|()| {
            let who: Vec<usize> = (0..dfs.placed.len()).filter(|&i| dfs.placed[i].is_some()).collect();
            let placed: Vec<Placed> = who.iter().map(|&i| dfs.placed[i].clone().expect("placed")).collect();
            self.score(&placed, &who)
        });
        self.txn.rollback_to(self.st, self.topo, mark);
        out
    }

    fn score(&self, placed: &[Placed], who: &[usize]) -> ScoreBreakdown {
        let nodes: Vec<NodeIdx> = placed.iter().map(|p| p.node).collect();
        let n_levels = self.n_levels();
        let _ = n_levels;
        let span = self.topo.common_level(&nodes);
        // Relative to the narrowest span the cluster's shape allows for this gang.
        let rank = |l: Option<usize>| l.map_or(0, |l| l + 1) as f64;
        let ideal = rank(self.prep.ideal);
        let narrow = if ideal == 0.0 { 1.0 } else { (rank(span) / ideal).min(1.0) };
        let domain = match self.prep.preferred {
            Some(p) => {
                let p = self.prep.ideal.map_or(p, |i| p.min(i));
                0.5 * f64::from(u8::from(span.is_some_and(|s| s >= p))) + 0.5 * narrow
            }
            None => narrow,
        };
        let span_dom = span.map(|l| self.topo.domain_of(nodes[0], l));
        let fullness = |free: u32, total: u32| if total == 0 { 1.0 } else { 1.0 - f64::from(free) / f64::from(total) };
        let fit =
            self.prep.primary.map_or(1.0, |p| fullness(self.domain_free(span_dom, p), self.domain_total(span_dom, p)));
        let mut touched: Vec<NodeIdx> = nodes.clone();
        touched.sort_unstable();
        touched.dedup();
        let packing = match self.prep.primary {
            Some(p) if !touched.is_empty() => {
                touched
                    .iter()
                    .map(|&n| fullness(self.st.capacity.node_free(n, p), self.st.capacity.node_total(n, p)))
                    .sum::<f64>()
                    / touched.len() as f64
            }
            _ => 1.0,
        };
        let mut items = Vec::new();
        for p in placed {
            for (_, r) in &p.results {
                items.extend(claim_locality(self.topo, r));
            }
        }
        let locality = if items.is_empty() { 1.0 } else { items.iter().sum::<f64>() / items.len() as f64 };
        let kv_items: Vec<f64> = self
            .kv_estimates(placed, who)
            .iter()
            .map(|(_, e)| {
                let shared = if e.in_kv_domain { 1.0 } else { 0.0 };
                0.8 * shared + 0.2 * (e.gbps / 900.0).min(1.0)
            })
            .collect();
        let kv = if kv_items.is_empty() { 1.0 } else { kv_items.iter().sum::<f64>() / kv_items.len() as f64 };
        ScoreBreakdown { domain, fit, locality, kv, packing }
    }

    fn kv_estimates(&self, placed: &[Placed], who: &[usize]) -> Vec<(usize, KvEstimate)> {
        let at = |spec_pos: usize| who.iter().position(|&w| w == spec_pos).map(|k| &placed[k]);
        let mut out = Vec::new();
        for (gi, g) in self.prep.pd.iter().enumerate() {
            let members: Vec<(&Placed, PdRole)> = g.members.iter().filter_map(|(p, r)| Some((at(*p)?, *r))).collect();
            if members.is_empty() {
                continue;
            }
            let mut group_nodes: Vec<NodeIdx> = members.iter().map(|(p, _)| p.node).collect();
            if let Some(v) = self.st.pd_nodes.get(&(self.prep.key.namespace.clone(), g.name.clone())) {
                group_nodes.extend(v.iter().copied());
            }
            let in_kv_domain = g.level.is_none_or(|l| {
                group_nodes.iter().all(|&n| self.topo.domain_of(n, l) == self.topo.domain_of(group_nodes[0], l))
            });
            let senders: Vec<&Placed> = members.iter().filter(|(_, r)| *r != PdRole::Decode).map(|(p, _)| *p).collect();
            let receivers: Vec<&Placed> =
                members.iter().filter(|(_, r)| *r != PdRole::Prefill).map(|(p, _)| *p).collect();
            let mut worst: Option<phalanx_topology::Link> = None;
            for s in &senders {
                for r in &receivers {
                    if std::ptr::eq(*s, *r) {
                        continue;
                    }
                    let l = self.link(s, r);
                    if worst.is_none_or(|w| l.gbps < w.gbps) {
                        worst = Some(l);
                    }
                }
            }
            let link = worst.unwrap_or(phalanx_topology::Link { class: LinkClass::NvLink, gbps: 900.0 });
            out.push((
                gi,
                KvEstimate {
                    pd_group: g.name.clone(),
                    link: link.class,
                    gbps: link.gbps,
                    seconds_per_request: g.bytes_per_request.map(|b| b as f64 / (link.gbps * 1e9)),
                    in_kv_domain,
                },
            ));
        }
        out
    }

    /// Link between two members: between their first GPUs, else by node.
    fn link(&self, a: &Placed, b: &Placed) -> phalanx_topology::Link {
        let gpu = |p: &Placed| {
            p.results
                .iter()
                .flat_map(|(_, r)| result_devices(self.topo, r))
                .find(|&d| self.topo.devices()[d].info.key.driver == names::GPU_DRIVER)
        };
        match (gpu(a), gpu(b)) {
            (Some(x), Some(y)) => classify(self.topo, x, y),
            _ if a.node == b.node => phalanx_topology::Link::nominal(LinkClass::CrossSocket, None),
            _ => phalanx_topology::Link::nominal(LinkClass::Network, None),
        }
    }

    fn build_plan(&self, gang: &Gang, f: &Found) -> Plan {
        let mut members: Vec<(usize, MemberPlacement)> = f
            .placed
            .iter()
            .zip(&f.who)
            .map(|(p, &i)| {
                let s = &self.prep.specs[i];
                let node = &self.topo.nodes()[p.node];
                let nvl_level = self.topo.config().resolve("nvlink").ok().filter(|&l| l < self.n_levels());
                let nvlink_domain = nvl_level
                    .map(|l| &self.topo.domains()[self.topo.domain_of(p.node, l)])
                    .filter(|d| !d.synthetic)
                    .map(|d| d.value.clone());
                let devices = p
                    .results
                    .iter()
                    .flat_map(|(_, r)| r.devices.as_ref().and_then(|d| d.results.clone()).unwrap_or_default())
                    .map(|r| format!("{}/{}/{}", r.driver, r.pool, r.device))
                    .collect();
                let claims = p
                    .results
                    .iter()
                    .map(|(k, r)| ClaimAllocation { namespace: k.0.clone(), name: k.1.clone(), allocation: r.clone() })
                    .collect();
                (
                    s.gang_index,
                    MemberPlacement {
                        pod: s.pod.clone(),
                        node: node.name.clone(),
                        nvlink_domain,
                        devices,
                        claims,
                        locality: p.locality,
                    },
                )
            })
            .collect();
        members.sort_by_key(|(i, _)| *i);
        let nodes: Vec<NodeIdx> = f.placed.iter().map(|p| p.node).collect();
        let domain = match self.topo.common_level(&nodes) {
            Some(l) => self.topo.domain_name(self.topo.domain_of(nodes[0], l)),
            None => "cluster".into(),
        };
        let placed_set: HashSet<usize> = f.who.iter().copied().collect();
        Plan {
            gang: gang.key.clone(),
            members: members.into_iter().map(|(_, m)| m).collect(),
            domain,
            score: f.score,
            breakdown: f.breakdown,
            kv: self.kv_estimates(&f.placed, &f.who).into_iter().map(|(_, e)| e).collect(),
            unplaced_optional: self
                .prep
                .specs
                .iter()
                .enumerate()
                .filter(|(i, _)| !placed_set.contains(i))
                .map(|(_, s)| s.pod.clone())
                .collect(),
        }
    }
}

/// Locality items of one claim allocation: 1 per multi-GPU claim in one island, 1 per
/// GPU+NIC claim whose NICs share a GPU's PCIe root (0.5: NUMA node).
pub(crate) fn claim_locality(topo: &ClusterTopology, r: &AllocationResult) -> Vec<f64> {
    let devs = result_devices(topo, r);
    let gpus: Vec<_> =
        devs.iter().map(|&d| &topo.devices()[d]).filter(|d| d.info.key.driver == names::GPU_DRIVER).collect();
    let nics: Vec<_> =
        devs.iter().map(|&d| &topo.devices()[d]).filter(|d| d.info.key.driver == names::NIC_DRIVER).collect();
    let mut out = Vec::new();
    if gpus.len() >= 2 {
        let one = gpus[0].island.is_some() && gpus.iter().all(|g| g.island == gpus[0].island);
        out.push(if one { 1.0 } else { 0.0 });
    }
    if !gpus.is_empty() && !nics.is_empty() {
        let root = nics.iter().all(|n| n.pcie_root.is_some() && gpus.iter().any(|g| g.pcie_root == n.pcie_root));
        let numa = nics.iter().all(|n| n.numa.is_some() && gpus.iter().any(|g| g.numa == n.numa));
        out.push(if root {
            1.0
        } else if numa {
            0.5
        } else {
            0.0
        });
    }
    out
}
