//! The structured allocator: a depth-first search with backtracking over claims →
//! requests → devices, first complete solution wins, in the same deterministic device
//! order as upstream's incubating allocator (pools by driver/pool, slices by name,
//! devices in slice order).

use super::device_claim;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::api::resource::v1::{
    AllocationResult, CapacityRequirements, Device, DeviceAllocationConfiguration, DeviceAllocationResult,
    DeviceRequest, DeviceRequestAllocationResult, DeviceSelector, DeviceToleration, ResourceClaim,
};

use super::capacity;
use super::cel::{EvalError, SelectorProblem};
use super::constraints::{Constraint, Scope};
use super::error::AllocateError;
use super::features::Release;
use super::hash::FastMap;
use super::nodes::node_matches;
use super::pools::{CounterSets, Pool, gather};
use super::quantity::Nanos;
use super::snapshot::{ClassEntry, Compiled, DraSnapshot};
use super::state::AllocatedState;

/// At most this many results per claim (`AllocationResultsMaxSize`).
pub const MAX_RESULTS: usize = 32;

/// Upper bound on search steps per `allocate` call; beyond it the node counts as
/// infeasible (upstream relies on the scheduler's filter timeout instead).
pub const SEARCH_BUDGET: u64 = 2_000_000;

/// Allocates claims on nodes against one [`DraSnapshot`].
#[derive(Debug, Clone, Copy)]
pub struct Allocator<'a> {
    snap: &'a DraSnapshot,
    bugs: UpstreamBugs,
}

/// Bugs of an upstream release that Phalanx deliberately does not copy, because they
/// can allocate what the claim's constraints or the pool's counters forbid. Only the
/// differential test reproduces them, to tell them from real differences.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamBug {
    /// kubernetes/kubernetes#140438 (v0.36): distinctAttribute remembers one value
    /// per request name, so a request's later device may repeat an earlier one.
    DistinctPerRequest,
    /// v0.36: available and consumed counters are keyed by pool name alone, so pools
    /// of different drivers with the same name share one set of counters.
    CountersByPoolName,
}

#[derive(Debug, Clone, Copy, Default)]
struct UpstreamBugs {
    distinct_per_request: bool,
    counters_by_pool_name: bool,
}

/// Why claims do not fit a node, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsatisfied {
    /// Not enough free devices match a request.
    TooFewDevices {
        /// Request (or `request/subrequest`).
        request: String,
        /// Device class.
        class: String,
        /// Devices needed.
        needed: usize,
        /// Free devices that match class and request selectors.
        free: usize,
        /// Node.
        node: String,
    },
    /// Enough devices match each request, but not together (constraints, counters,
    /// capacity, taints or sharing between requests).
    Combination {
        /// Claim `namespace/name`.
        claim: String,
        /// Node.
        node: String,
    },
    /// A pool on the node is being updated or invalid and `All` mode needs it.
    PoolUnavailable {
        /// Node.
        node: String,
    },
}

impl std::fmt::Display for Unsatisfied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsatisfied::TooFewDevices { request, class, needed, free, node } => write!(
                f,
                "request {request}: {needed} device{} of class {class} needed, {free} free match on node {node}",
                if *needed == 1 { "" } else { "s" }
            ),
            Unsatisfied::Combination { claim, node } => write!(
                f,
                "claim {claim}: enough devices match each request on node {node}, but no combination satisfies the constraints, counters, capacity and taints together"
            ),
            Unsatisfied::PoolUnavailable { node } => {
                write!(f, "a resource pool on node {node} is incomplete or invalid")
            }
        }
    }
}

impl<'a> Allocator<'a> {
    /// An allocator over a snapshot.
    pub fn new(snap: &'a DraSnapshot) -> Self {
        Allocator { snap, bugs: UpstreamBugs::default() }
    }

    /// Reproduces an upstream bug. Only for classifying differential-test results.
    #[doc(hidden)]
    pub fn with_upstream_bug(mut self, bug: UpstreamBug) -> Self {
        match bug {
            UpstreamBug::DistinctPerRequest => self.bugs.distinct_per_request = true,
            UpstreamBug::CountersByPoolName => self.bugs.counters_by_pool_name = true,
        }
        self
    }

    /// Allocates every claim on `node`. `Ok(None)`: they do not fit; `Ok(Some(r))`: one
    /// result per claim, in claim order; `Err`: a problem in the user's objects.
    pub fn allocate(
        &self,
        node: &Node,
        claims: &[&ResourceClaim],
        allocated: &AllocatedState,
    ) -> Result<Option<Vec<AllocationResult>>, AllocateError> {
        Ok(self.search(node, claims, allocated)?.map(|s| s.results()))
    }

    /// Runs the search; the finished search on success.
    fn search<'s>(
        &self,
        node: &'s Node,
        claims: &'s [&'s ResourceClaim],
        allocated: &'s AllocatedState,
    ) -> Result<Option<Search<'s>>, AllocateError>
    where
        'a: 's,
    {
        let mut s = Search::new(self.snap, node, claims, allocated)?;
        s.bugs = self.bugs;
        if !s.prepare()? {
            return Ok(None);
        }
        let done = match s.allocate_one(Pos::default(), false, Loc::default()) {
            Ok(d) => d,
            Err(Halt::MaxSize) | Err(Halt::Budget) => false,
            Err(Halt::Fatal(e)) => return Err(e),
        };
        if !done {
            let invalid: Vec<String> = s
                .pools
                .iter()
                .filter_map(|p| p.invalid.as_ref().map(|r| format!("{}/{}: {r}", p.driver, p.name)))
                .collect();
            if !invalid.is_empty() {
                return Err(AllocateError::InvalidPools { reasons: invalid.join("; ") });
            }
            return Ok(None);
        }
        Ok(Some(s))
    }

    /// Names of the nodes on which `claim` alone can be allocated now.
    pub fn feasible_nodes(
        &self,
        claim: &ResourceClaim,
        allocated: &AllocatedState,
    ) -> Result<Vec<String>, AllocateError> {
        let mut out = Vec::new();
        let needed = min_devices(claim);
        let has_shared = !self.snap.shared.is_empty();
        for (name, node) in &self.snap.nodes {
            if !has_shared {
                // Index-based cut: a node whose own slices publish fewer devices than
                // the claim needs cannot work.
                let total: usize = self
                    .snap
                    .on_node
                    .get(name)
                    .map_or(0, |v| v.iter().map(|&i| self.snap.slices[i].devices().len()).sum());
                if total < needed {
                    continue;
                }
            }
            match self.search(node, &[claim], allocated) {
                Ok(Some(_)) => out.push(name.clone()),
                Ok(None) | Err(AllocateError::InvalidPools { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Why `claims` do not fit on `node` (call after `allocate` returned `Ok(None)`).
    /// `Ok(None)` if they do fit.
    pub fn explain(
        &self,
        node: &Node,
        claims: &[&ResourceClaim],
        allocated: &AllocatedState,
    ) -> Result<Option<Unsatisfied>, AllocateError> {
        if self.allocate(node, claims, allocated)?.is_some() {
            return Ok(None);
        }
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let mut s = Search::new(self.snap, node, claims, allocated)?;
        if !s.prepare()? {
            return Ok(Some(Unsatisfied::PoolUnavailable { node: node_name }));
        }
        for (ci, claim) in claims.iter().enumerate() {
            for ri in 0..s.reqs[ci].len() {
                // A request fails if none of its alternatives has enough free matches.
                let mut worst: Option<Unsatisfied> = None;
                let mut ok = false;
                for si in 0..s.reqs[ci][ri].alts.len() {
                    let key = (ci, ri, si);
                    let rd = &s.reqs[ci][ri].alts[si];
                    let (needed, class, name) = (rd.num_devices, rd.class_name, rd.full_name());
                    let mut free = 0usize;
                    for p in 0..s.pools.len() {
                        if s.pools[p].incomplete || s.pools[p].invalid.is_some() {
                            continue;
                        }
                        for sl in s.pools[p].slices.clone() {
                            for d in 0..self.snap.slices[sl].devices().len() {
                                let g = self.snap.slices[sl].first + d;
                                if allocated.is_allocated(&self.snap.slices[sl].ids[d])
                                    && !s.reqs[ci][ri].alts[si].admin
                                {
                                    continue;
                                }
                                if s.is_selectable(key, sl, d, g)? {
                                    free += 1;
                                }
                            }
                        }
                    }
                    if free >= needed && needed > 0 {
                        ok = true;
                        break;
                    }
                    worst.get_or_insert(Unsatisfied::TooFewDevices {
                        request: name,
                        class: class.to_string(),
                        needed: needed.max(1),
                        free,
                        node: node_name.clone(),
                    });
                }
                if !ok {
                    return Ok(worst);
                }
            }
            let _ = claim;
        }
        Ok(Some(Unsatisfied::Combination { claim: claim_key(claims.first().copied()), node: node_name }))
    }
}

fn min_devices(claim: &ResourceClaim) -> usize {
    let mut n = 0;
    for r in device_claim(claim).and_then(|d| d.requests.as_ref()).into_iter().flatten() {
        n += match (&r.exactly, &r.first_available) {
            (Some(e), _) if e.allocation_mode.as_deref().unwrap_or("ExactCount") == "ExactCount" => {
                e.count.unwrap_or(1).max(0) as usize
            }
            (_, Some(subs)) if !subs.is_empty() => subs
                .iter()
                .map(|s| {
                    if s.allocation_mode.as_deref().unwrap_or("ExactCount") == "ExactCount" {
                        s.count.unwrap_or(1).max(0) as usize
                    } else {
                        1
                    }
                })
                .min()
                .unwrap_or(0),
            _ => 1,
        };
    }
    n
}

pub(crate) fn claim_key(c: Option<&ResourceClaim>) -> String {
    match c {
        Some(c) => {
            format!("{}/{}", c.metadata.namespace.as_deref().unwrap_or(""), c.metadata.name.as_deref().unwrap_or(""))
        }
        None => String::new(),
    }
}

/// A request or subrequest, resolved.
struct ReqData<'s> {
    name: &'s str,
    parent: Option<&'s str>,
    class: &'s ClassEntry,
    class_name: &'s str,
    selectors: Vec<Option<Compiled>>,
    all: bool,
    num_devices: usize,
    all_devices: Vec<(usize, usize, usize)>,
    admin: bool,
    tolerations: &'s [DeviceToleration],
    capacity: Option<&'s CapacityRequirements>,
}

impl ReqData<'_> {
    fn full_name(&self) -> String {
        match &self.parent {
            Some(p) => format!("{p}/{}", self.name),
            None => self.name.to_string(),
        }
    }
    fn base(&self) -> &str {
        self.parent.unwrap_or(self.name)
    }
    fn sub(&self) -> Option<&str> {
        self.parent.map(|_| self.name)
    }
}

/// One request of a claim: a single alternative, or the subrequests of `firstAvailable`.
struct ReqSlot<'s> {
    alts: Vec<ReqData<'s>>,
    has_subs: bool,
    selected: usize,
}

/// Position in the search: claim, request, subrequest, device of the request.
#[derive(Debug, Clone, Copy, Default)]
struct Pos {
    claim: usize,
    request: usize,
    sub: usize,
    device: usize,
}

/// Position in the device order: pool, slice within the pool, device within the slice.
#[derive(Debug, Clone, Copy, Default)]
struct Loc {
    pool: usize,
    slice: usize,
    device: usize,
}

enum Halt {
    MaxSize,
    Budget,
    Fatal(AllocateError),
}

impl From<AllocateError> for Halt {
    fn from(e: AllocateError) -> Self {
        Halt::Fatal(e)
    }
}

struct DevResult {
    /// Request and alternative (subrequest) index within the claim.
    request: usize,
    alt: usize,
    slice: usize,
    device: usize,
    admin: bool,
    share: bool,
    consumed: Option<BTreeMap<String, Nanos>>,
}

/// Undo record of one `allocate_device`.
struct Undo {
    counters: Option<usize>,
    constraints: usize,
    marked: bool,
    capacity: Option<BTreeMap<String, Nanos>>,
    capacity_existed: bool,
    result: bool,
}

struct Search<'s> {
    snap: &'s DraSnapshot,
    node: &'s Node,
    claims: &'s [&'s ResourceClaim],
    allocated: &'s AllocatedState,
    pools: Arc<Vec<Pool>>,
    reqs: Vec<Vec<ReqSlot<'s>>>,
    constraints: Vec<Vec<Constraint>>,
    matches: FastMap<(usize, usize, usize, usize), bool>,
    /// Devices being allocated in this attempt → claims that got them.
    /// (device, claim) pairs; at most 32 per claim, so a list beats a map.
    allocating: Vec<(usize, usize)>,
    allocating_capacity: FastMap<usize, BTreeMap<String, Nanos>>,
    available_counters: HashMap<usize, CounterSets>,
    consumed_counters: HashMap<usize, CounterSets>,
    results: Vec<Vec<DevResult>>,
    steps: u64,
    bugs: UpstreamBugs,
    capacity_rules: capacity::Rules,
}

impl<'s> Search<'s> {
    fn new(
        snap: &'s DraSnapshot,
        node: &'s Node,
        claims: &'s [&'s ResourceClaim],
        allocated: &'s AllocatedState,
    ) -> Result<Self, AllocateError> {
        let pools = snap.pools_for(node, gather)?;
        Ok(Search {
            snap,
            node,
            claims,
            allocated,
            pools,
            reqs: Vec::new(),
            constraints: Vec::new(),
            matches: FastMap::with_capacity_and_hasher(16, Default::default()),
            allocating: Vec::new(),
            allocating_capacity: FastMap::default(),
            available_counters: HashMap::new(),
            consumed_counters: HashMap::new(),
            results: claims.iter().map(|_| Vec::new()).collect(),
            steps: 0,
            bugs: UpstreamBugs::default(),
            capacity_rules: capacity::Rules::new(&snap.features),
        })
    }

    /// Upstream's pre-pass: resolve classes, check features, count devices, collect
    /// `All` devices, build constraints. Returns false if allocation cannot succeed.
    fn prepare(&mut self) -> Result<bool, AllocateError> {
        let f = self.snap.features;
        for (ci, claim) in self.claims.iter().enumerate() {
            let ckey = claim_key(Some(claim));
            let spec = device_claim(claim);
            let requests: &'s [DeviceRequest] = spec.and_then(|d| d.requests.as_deref()).unwrap_or_default();
            let mut min_total = 0usize;
            self.reqs.push(Vec::new());
            for (ri, req) in requests.iter().enumerate() {
                let subs = req.first_available.as_deref().unwrap_or_default();
                let has_subs = !subs.is_empty();
                let invalid = |m: &str| AllocateError::InvalidRequest {
                    claim: ckey.clone(),
                    request: req.name.clone(),
                    message: m.to_string(),
                };
                // Results are keyed by these names (`request/subrequest`); the API server
                // rejects a claim whose names are empty, repeated or not DNS labels, so
                // one that has them came from elsewhere.
                let bad = |n: &str| n.is_empty() || n.contains('/');
                if bad(&req.name) || requests[..ri].iter().any(|r| r.name == req.name) {
                    return Err(invalid("request names must be non-empty, unique within the claim and without '/'"));
                }
                if subs.iter().enumerate().any(|(i, s)| bad(&s.name) || subs[..i].iter().any(|t| t.name == s.name)) {
                    return Err(invalid(
                        "subrequest names must be non-empty, unique within the request and without '/'",
                    ));
                }
                if !f.prioritized_list && has_subs {
                    return Err(invalid("has subrequests, but the DRAPrioritizedList feature is disabled"));
                }
                if !f.consumable_capacity && !f.stable_channel() {
                    if req.exactly.as_ref().is_some_and(|e| e.capacity.is_some()) {
                        return Err(invalid(
                            "has capacity requests, but the DRAConsumableCapacity feature is disabled",
                        ));
                    }
                    if let Some(s) = subs.iter().find(|s| s.capacity.is_some()) {
                        return Err(AllocateError::InvalidRequest {
                            claim: ckey.clone(),
                            request: s.name.clone(),
                            message: "has capacity requests, but the DRAConsumableCapacity feature is disabled".into(),
                        });
                    }
                }
                let mut slot = ReqSlot { alts: Vec::new(), has_subs, selected: 0 };
                let min_devices;
                if has_subs {
                    let mut min = usize::MAX;
                    for (si, sub) in subs.iter().enumerate() {
                        let rd = self.validate(
                            (ci, ri, si),
                            &ckey,
                            RawReq {
                                name: &sub.name,
                                parent: Some(&req.name),
                                class: &sub.device_class_name,
                                selectors: sub.selectors.as_deref().unwrap_or_default(),
                                mode: sub.allocation_mode.as_deref(),
                                count: sub.count,
                                admin: None,
                                tolerations: sub.tolerations.as_deref().unwrap_or_default(),
                                capacity: sub.capacity.as_ref(),
                                derived: sub.derived_attributes.as_ref().is_some_and(|d| !d.is_empty()),
                            },
                        )?;
                        min = min.min(rd.num_devices);
                        slot.alts.push(rd);
                    }
                    min_devices = min;
                } else {
                    let Some(e) = &req.exactly else {
                        return Err(invalid("neither exactly nor firstAvailable is set (unsupported request type?)"));
                    };
                    let rd = self.validate(
                        (ci, ri, 0),
                        &ckey,
                        RawReq {
                            name: &req.name,
                            parent: None,
                            class: &e.device_class_name,
                            selectors: e.selectors.as_deref().unwrap_or_default(),
                            mode: e.allocation_mode.as_deref(),
                            count: e.count,
                            admin: e.admin_access,
                            tolerations: e.tolerations.as_deref().unwrap_or_default(),
                            capacity: e.capacity.as_ref(),
                            derived: e.derived_attributes.as_ref().is_some_and(|d| !d.is_empty()),
                        },
                    )?;
                    min_devices = rd.num_devices;
                    slot.alts.push(rd);
                }
                // Checked per request, comparing rather than adding, like 1.37 (a huge
                // count cannot wrap the sum).
                if min_devices > MAX_RESULTS - min_total {
                    return Err(AllocateError::TooManyDevices {
                        claim: ckey,
                        count: min_total.saturating_add(min_devices),
                        limit: MAX_RESULTS,
                    });
                }
                min_total += min_devices;
                // Push now so that `validate` of the next request sees this one's data.
                self.reqs[ci].push(slot);
            }
            let mut cs = Vec::new();
            for (i, c) in spec.and_then(|d| d.constraints.as_ref()).into_iter().flatten().enumerate() {
                let scope = Scope::new(c.requests.as_ref());
                if let Some(a) = &c.match_attribute {
                    cs.push(Constraint::Match { scope, attribute: self.snap.interner.name(a), value: None, count: 0 });
                } else if let Some(a) = c.distinct_attribute.as_ref().filter(|_| !f.stable_channel()) {
                    cs.push(Constraint::Distinct {
                        scope,
                        attribute: self.snap.interner.name(a),
                        values: Vec::new(),
                        per_request: self.bugs.distinct_per_request,
                    });
                } else {
                    return Err(AllocateError::EmptyConstraint { claim: ckey, index: i });
                }
            }
            self.constraints.push(cs);
        }
        Ok(true)
    }

    fn validate(
        &mut self,
        key: (usize, usize, usize),
        ckey: &str,
        raw: RawReq<'s>,
    ) -> Result<ReqData<'s>, AllocateError> {
        let f = self.snap.features;
        let invalid = |m: String| AllocateError::InvalidRequest {
            claim: ckey.to_string(),
            request: raw.name.to_string(),
            message: m,
        };
        if raw.derived {
            return Err(invalid(
                "has derived attributes, but the DRADerivedAttributes feature (alpha) is not supported".into(),
            ));
        }
        for (i, s) in raw.selectors.iter().enumerate() {
            if s.cel.is_none() {
                return Err(invalid(format!("selector #{i}: CEL expression empty (unsupported selector type?)")));
            }
        }
        if !f.admin_access && raw.admin.is_some() {
            return Err(invalid("admin access is requested, but the feature is disabled".into()));
        }
        if raw.class.is_empty() {
            return Err(invalid("missing device class name (unsupported request type?)".into()));
        }
        let Some(class) = self.snap.classes.get(raw.class) else {
            return Err(AllocateError::UnknownClass {
                claim: ckey.to_string(),
                request: raw.name.to_string(),
                class: raw.class.to_string(),
            });
        };
        let selectors =
            raw.selectors.iter().map(|s| s.cel.as_ref().map(|c| self.snap.compile_request(&c.expression))).collect();
        let mut rd = ReqData {
            name: raw.name,
            parent: raw.parent,
            class,
            class_name: raw.class,
            selectors,
            all: false,
            num_devices: 0,
            all_devices: Vec::new(),
            admin: raw.admin == Some(true),
            tolerations: raw.tolerations,
            capacity: raw.capacity,
        };
        match raw.mode.unwrap_or("ExactCount") {
            "ExactCount" => {
                let n = raw.count.unwrap_or(1);
                rd.num_devices = usize::try_from(n).map_err(|_| invalid(format!("exact count {n} is invalid")))?;
            }
            "All" => {
                rd.all = true;
                // Temporarily register the request so that `is_selectable` can find it.
                let (ci, ri, si) = key;
                for p in 0..self.pools.len() {
                    let pool = &self.pools[p];
                    let pid = format!("{}/{}", pool.driver, pool.name);
                    if pool.incomplete {
                        return Err(invalid(format!(
                            "asks for all devices, but resource pool {pid} is currently being updated"
                        )));
                    }
                    if pool.invalid.is_some() {
                        return Err(invalid(format!(
                            "asks for all devices, but resource pool {pid} is currently invalid"
                        )));
                    }
                    for sl in pool.slices.clone() {
                        for d in 0..self.snap.slices[sl].devices().len() {
                            let g = self.snap.slices[sl].first + d;
                            if !self.selectable_with(&rd, (ci, ri, si), sl, d, g)? {
                                continue;
                            }
                            if f.consumable_capacity && !self.all_mode_capacity_fits(&rd, ci, sl, d, g)? {
                                continue;
                            }
                            rd.all_devices.push((p, sl, d));
                        }
                    }
                }
                rd.num_devices = rd.all_devices.len();
            }
            other => return Err(invalid(format!("unsupported count mode {other}"))),
        }
        Ok(rd)
    }

    fn req(&self, ci: usize, ri: usize, si: usize) -> &ReqData<'s> {
        &self.reqs[ci][ri].alts[si]
    }

    fn device(&self, sl: usize, d: usize) -> &'s Device {
        &self.snap.slices[sl].devices()[d]
    }

    fn in_use(&self, sl: usize, d: usize, g: usize) -> bool {
        self.allocated.is_allocated(&self.snap.slices[sl].ids[d]) || self.allocating.iter().any(|&(x, _)| x == g)
    }

    fn allocating_for(&self, g: usize, ci: usize) -> bool {
        self.allocating.iter().any(|&(x, c)| x == g && c == ci)
    }

    fn is_selectable(
        &mut self,
        key: (usize, usize, usize),
        sl: usize,
        d: usize,
        g: usize,
    ) -> Result<bool, AllocateError> {
        if let Some(&m) = self.matches.get(&(key.0, key.1, key.2, g)) {
            return Ok(m);
        }
        let rd = &self.reqs[key.0][key.1].alts[key.2];
        let sel = Self::selectable_uncached(self.snap, self.node, self.claims, rd, key, sl, d, g)?;
        self.matches.insert((key.0, key.1, key.2, g), sel);
        Ok(sel)
    }

    fn selectable_with(
        &mut self,
        rd: &ReqData<'s>,
        key: (usize, usize, usize),
        sl: usize,
        d: usize,
        g: usize,
    ) -> Result<bool, AllocateError> {
        if let Some(&m) = self.matches.get(&(key.0, key.1, key.2, g)) {
            return Ok(m);
        }
        let sel = Self::selectable_uncached(self.snap, self.node, self.claims, rd, key, sl, d, g)?;
        self.matches.insert((key.0, key.1, key.2, g), sel);
        Ok(sel)
    }

    /// Class selectors, then request selectors, then per-device node selection.
    #[allow(clippy::too_many_arguments)]
    fn selectable_uncached(
        snap: &DraSnapshot,
        node: &Node,
        claims: &[&ResourceClaim],
        rd: &ReqData<'_>,
        key: (usize, usize, usize),
        sl: usize,
        d: usize,
        g: usize,
    ) -> Result<bool, AllocateError> {
        let entry = &snap.slices[sl];
        let device = &entry.devices()[d];
        if !snap.features.device_binding_and_status && device.binding_conditions.as_ref().is_some_and(|b| !b.is_empty())
        {
            return Ok(false);
        }
        let class = rd.class;
        let class_owner = || format!("class {}", class.name);
        let class_match = class.matches[g].get_or_init(|| eval_all(snap, &class.selectors, sl, d));
        match class_match {
            Ok(false) => return Ok(false),
            Ok(true) => {}
            Err((i, e)) => return Err(selector_error(class_owner(), *i, e.clone(), &class.selectors[*i])),
        }
        if !rd.selectors.is_empty() {
            match eval_all(snap, &rd.selectors, sl, d) {
                Ok(false) => return Ok(false),
                Ok(true) => {}
                Err((i, e)) => {
                    let owner = format!("claim {}, request {}", claim_key(claims.get(key.0).copied()), rd.full_name());
                    return Err(selector_error(owner, i, e, &rd.selectors[i]));
                }
            }
        }
        if entry.per_device() {
            let m = node_matches(
                node,
                device.node_name.as_deref(),
                device.all_nodes.unwrap_or(false),
                device.node_selector.as_ref(),
            )
            .map_err(|m| AllocateError::NodeSelector { slice: entry.name.clone(), message: m })?;
            if !m {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether what is left of the device's capacity holds the request.
    fn capacity_fits(&self, rd: &ReqData<'_>, ci: usize, sl: usize, d: usize, g: usize) -> Result<bool, AllocateError> {
        let id = &self.snap.slices[sl].ids[d];
        // Nothing requested and a device without request policies: its whole capacity
        // always fits, unless shares of it are in use.
        if rd.capacity.is_none()
            && self.snap.slices[sl].plain_capacity[d]
            && self.allocating_capacity.is_empty()
            && self.allocated.consumed_capacity(id).is_none()
        {
            return Ok(true);
        }
        capacity::fits(
            self.allocated.consumed_capacity(id),
            rd.capacity,
            self.device(sl, d),
            self.allocating_capacity.get(&g),
            self.capacity_rules,
        )
        .map_err(|message| self.capacity_error(rd, ci, sl, d, message))
    }

    /// Which devices `allocationMode: All` counts on: before 1.37 those whose capacity
    /// left holds the request (a device shared out is left out of "all"); from 1.37
    /// those whose whole capacity does (a device shared out then fails the request).
    fn all_mode_capacity_fits(
        &self,
        rd: &ReqData<'_>,
        ci: usize,
        sl: usize,
        d: usize,
        g: usize,
    ) -> Result<bool, AllocateError> {
        if self.snap.features.release < Release::V1_37 {
            return self.capacity_fits(rd, ci, sl, d, g);
        }
        capacity::fits(None, rd.capacity, self.device(sl, d), None, self.capacity_rules)
            .map_err(|message| self.capacity_error(rd, ci, sl, d, message))
    }

    fn capacity_error(&self, rd: &ReqData<'_>, ci: usize, sl: usize, d: usize, message: String) -> AllocateError {
        AllocateError::Capacity {
            claim: claim_key(self.claims.get(ci).copied()),
            request: rd.full_name(),
            device: self.snap.slices[sl].ids[d].to_string(),
            message,
        }
    }

    fn allocate_one(&mut self, r: Pos, allocate_sub: bool, start: Loc) -> Result<bool, Halt> {
        self.steps += 1;
        if self.steps > SEARCH_BUDGET {
            return Err(Halt::Budget);
        }
        if r.claim >= self.claims.len() {
            return Ok(true);
        }
        if r.request >= self.reqs[r.claim].len() {
            return match self.allocate_one(Pos { claim: r.claim + 1, ..Pos::default() }, false, Loc::default()) {
                Err(Halt::MaxSize) => Ok(false),
                other => other,
            };
        }
        if !allocate_sub && self.reqs[r.claim][r.request].has_subs {
            let mut all_exceeded = true;
            for si in 0..self.reqs[r.claim][r.request].alts.len() {
                match self.allocate_one(Pos { sub: si, ..r }, true, Loc::default()) {
                    Err(Halt::MaxSize) => continue,
                    Err(e) => return Err(e),
                    Ok(true) => {
                        self.reqs[r.claim][r.request].selected = si;
                        return Ok(true);
                    }
                    Ok(false) => all_exceeded = false,
                }
            }
            return if all_exceeded { Err(Halt::MaxSize) } else { Ok(false) };
        }
        let (all, num, admin) = {
            let rd = self.req(r.claim, r.request, r.sub);
            (rd.all, rd.num_devices, rd.admin)
        };
        if all && num == 0 {
            return Ok(false);
        }
        if r.device >= num {
            return self.allocate_one(
                Pos { claim: r.claim, request: r.request + 1, ..Pos::default() },
                false,
                Loc::default(),
            );
        }
        if self.results[r.claim].len() + num - r.device > MAX_RESULTS {
            return Err(Halt::MaxSize);
        }
        if all {
            let (p, sl, d) = self.req(r.claim, r.request, r.sub).all_devices[r.device];
            let Some(undo) = self.allocate_device(r, p, sl, d, true)? else { return Ok(false) };
            let next = self.allocate_one(Pos { device: r.device + 1, ..r }, allocate_sub, Loc::default());
            return match next {
                Ok(true) => Ok(true),
                other => {
                    self.rollback(r, sl, d, undo);
                    other
                }
            };
        }
        let key = (r.claim, r.request, r.sub);
        let cc = self.snap.features.consumable_capacity;
        for p in start.pool..self.pools.len() {
            if self.pools[p].incomplete || self.pools[p].invalid.is_some() {
                continue;
            }
            let slice_start = if p == start.pool { start.slice } else { 0 };
            for si in slice_start..self.pools[p].slices.len() {
                let sl = self.pools[p].slices[si];
                let dev_start = if p == start.pool && si == start.slice { start.device } else { 0 };
                for d in dev_start..self.snap.slices[sl].devices().len() {
                    let g = self.snap.slices[sl].first + d;
                    if admin && self.allocating_for(g, r.claim) {
                        continue;
                    }
                    if !admin && self.in_use(sl, d, g) {
                        continue;
                    }
                    if !self.is_selectable(key, sl, d, g)? {
                        continue;
                    }
                    if cc && !self.capacity_fits(self.req(r.claim, r.request, r.sub), r.claim, sl, d, g)? {
                        continue;
                    }
                    let Some(undo) = self.allocate_device(r, p, sl, d, false)? else { continue };
                    let next = self.allocate_one(
                        Pos { device: r.device + 1, ..r },
                        allocate_sub,
                        Loc { pool: p, slice: si, device: d + 1 },
                    );
                    match next {
                        Ok(true) => return Ok(true),
                        Ok(false) => self.rollback(r, sl, d, undo),
                        Err(e) => {
                            self.rollback(r, sl, d, undo);
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// Checks availability, counters, taints and constraints for one candidate and
    /// records it. `None`: not possible (state unchanged).
    fn allocate_device(&mut self, r: Pos, p: usize, sl: usize, d: usize, must: bool) -> Result<Option<Undo>, Halt> {
        let f = self.snap.features;
        let g = self.snap.slices[sl].first + d;
        let device = self.device(sl, d);
        let admin = self.req(r.claim, r.request, r.sub).admin;
        let multi = f.consumable_capacity && device.allow_multiple_allocations == Some(true);
        if !multi && admin && self.allocating_for(g, r.claim) {
            return Ok(None);
        }
        if !admin && self.in_use(sl, d, g) {
            return Ok(None);
        }
        let consumes = device.consumes_counters.as_ref().is_some_and(|c| !c.is_empty());
        if !f.partitionable_devices && consumes {
            return Ok(None);
        }
        // A further share of a device in use must not charge its counters again. 1.37
        // also sees the device in use when its shares recorded no consumed capacity.
        let id = &self.snap.slices[sl].ids[d];
        let shared_before = if f.release >= Release::V1_37 {
            self.allocated.is_shared(id)
        } else {
            self.allocated.consumed_capacity(id).is_some()
        };
        let skip_counters = multi && (shared_before || self.allocating_capacity.contains_key(&g));
        let mut undo = Undo {
            counters: None,
            constraints: 0,
            marked: false,
            capacity: None,
            capacity_existed: false,
            result: false,
        };
        if !skip_counters && consumes {
            if !self.reserve_counters(p, device) {
                return Ok(None);
            }
            undo.counters = Some(p);
        }
        if f.device_taints && taint_blocks(device, self.req(r.claim, r.request, r.sub).tolerations) {
            self.rollback(r, sl, d, undo);
            return Ok(None);
        }
        let n = self.constraints[r.claim].len();
        for i in 0..n {
            let rd = &self.reqs[r.claim][r.request].alts[r.sub];
            if !self.constraints[r.claim][i].add(rd.base(), rd.sub(), &self.snap.slices[sl].attrs[d]) {
                let full_name = rd.name;
                self.rollback(r, sl, d, undo);
                if must {
                    return Err(Halt::Fatal(AllocateError::AllModeConstraint {
                        claim: claim_key(Some(self.claims[r.claim])),
                        request: full_name.to_string(),
                        device: self.snap.slices[sl].ids[d].to_string(),
                    }));
                }
                return Ok(None);
            }
            undo.constraints += 1;
        }
        if !multi {
            self.allocating.push((g, r.claim));
            undo.marked = true;
        }
        let mut consumed = None;
        if f.consumable_capacity {
            match self.capacity_fits(self.req(r.claim, r.request, r.sub), r.claim, sl, d, g) {
                Ok(true) => {}
                Ok(false) => {
                    self.rollback(r, sl, d, undo);
                    return Ok(None);
                }
                Err(e) => {
                    self.rollback(r, sl, d, undo);
                    return Err(Halt::Fatal(e));
                }
            }
            if multi {
                let rd = self.req(r.claim, r.request, r.sub);
                let c = match capacity::consumed(rd.capacity, device, self.capacity_rules) {
                    Ok(c) => c,
                    Err(message) => {
                        let e = self.capacity_error(rd, r.claim, sl, d, message);
                        self.rollback(r, sl, d, undo);
                        return Err(Halt::Fatal(e));
                    }
                };
                undo.capacity_existed = self.allocating_capacity.contains_key(&g);
                let e = self.allocating_capacity.entry(g).or_default();
                for (k, v) in &c {
                    let x = e.entry(k.clone()).or_default();
                    *x = x.plus(*v);
                }
                undo.capacity = Some(c.clone());
                consumed = Some(c);
            }
        }
        self.results[r.claim].push(DevResult {
            request: r.request,
            alt: r.sub,
            slice: sl,
            device: d,
            admin,
            share: multi,
            consumed,
        });
        undo.result = true;
        Ok(Some(undo))
    }

    fn rollback(&mut self, r: Pos, sl: usize, d: usize, undo: Undo) {
        let g = self.snap.slices[sl].first + d;
        if undo.result {
            self.results[r.claim].pop();
        }
        if let Some(c) = undo.capacity
            && let Some(e) = self.allocating_capacity.get_mut(&g)
        {
            for (k, v) in &c {
                if let Some(x) = e.get_mut(k) {
                    *x = x.minus(*v);
                }
            }
            if !undo.capacity_existed {
                self.allocating_capacity.remove(&g);
            }
        }
        if undo.marked
            && let Some(i) = self.allocating.iter().rposition(|&(x, c)| x == g && c == r.claim)
        {
            self.allocating.remove(i);
        }
        if undo.constraints > 0 {
            let rd = &self.reqs[r.claim][r.request].alts[r.sub];
            for i in (0..undo.constraints).rev() {
                self.constraints[r.claim][i].remove(rd.base(), rd.sub());
            }
        }
        if let Some(p) = undo.counters {
            let device = self.device(sl, d);
            self.release_counters(p, device);
        }
    }

    /// Which counters a device of pool `p` draws on: its pool's (`p`), or with
    /// [`UpstreamBug::CountersByPoolName`] those of the first pool with its name.
    fn counter_key(&self, p: usize) -> usize {
        if !self.bugs.counters_by_pool_name {
            return p;
        }
        self.pools.iter().position(|x| x.name == self.pools[p].name).unwrap_or(p)
    }

    /// Counters left in the pool behind `key` after what allocated devices consume,
    /// computed from pool `p` the first time.
    fn available(&mut self, key: usize, p: usize) -> &CounterSets {
        if !self.available_counters.contains_key(&key) {
            let pool = &self.pools[p];
            let mut avail = pool.counters.clone();
            for &sl in pool.slices.iter().chain(pool.others.iter()) {
                let e = &self.snap.slices[sl];
                for (d, dev) in e.devices().iter().enumerate() {
                    if !self.allocated.is_in_use(&e.ids[d]) {
                        continue;
                    }
                    for c in dev.consumes_counters.iter().flatten() {
                        let Some(set) = avail.get_mut(&c.counter_set) else { continue };
                        for (name, v) in &c.counters {
                            if let Some(x) = set.get_mut(name) {
                                *x = x.minus(Nanos::of(&v.value).unwrap_or_default());
                            }
                        }
                    }
                }
            }
            self.available_counters.insert(key, avail);
        }
        &self.available_counters[&key]
    }

    fn reserve_counters(&mut self, p: usize, device: &Device) -> bool {
        let key = self.counter_key(p);
        self.available(key, p);
        let consumed = self.consumed_counters.entry(key).or_default();
        for c in device.consumes_counters.iter().flatten() {
            let set = consumed.entry(c.counter_set.clone()).or_default();
            for (name, v) in &c.counters {
                let x = set.entry(name.clone()).or_default();
                *x = x.plus(Nanos::of(&v.value).unwrap_or_default());
            }
        }
        let avail = &self.available_counters[&key];
        let consumed = &self.consumed_counters[&key];
        let over = avail.iter().any(|(set, counters)| {
            counters
                .iter()
                .any(|(name, a)| *a < consumed.get(set).and_then(|s| s.get(name)).copied().unwrap_or_default())
        });
        if over {
            self.release_counters(p, device);
            return false;
        }
        true
    }

    fn release_counters(&mut self, p: usize, device: &Device) {
        let key = self.counter_key(p);
        let Some(consumed) = self.consumed_counters.get_mut(&key) else { return };
        for c in device.consumes_counters.iter().flatten() {
            let Some(set) = consumed.get_mut(&c.counter_set) else { continue };
            for (name, v) in &c.counters {
                if let Some(x) = set.get_mut(name) {
                    *x = x.minus(Nanos::of(&v.value).unwrap_or_default());
                }
            }
        }
    }

    fn results(&self) -> Vec<AllocationResult> {
        let node_name = self.node.metadata.name.clone().unwrap_or_default();
        let f = self.snap.features;
        let mut out = Vec::with_capacity(self.claims.len());
        for (ci, claim) in self.claims.iter().enumerate() {
            let mut results = Vec::new();
            for (i, r) in self.results[ci].iter().enumerate() {
                let e = &self.snap.slices[r.slice];
                let device = &e.devices()[r.device];
                let id = &e.ids[r.device];
                let rd = Some(&self.reqs[ci][r.request].alts[r.alt]);
                let full = self.reqs[ci][r.request].alts[r.alt].full_name();
                results.push(DeviceRequestAllocationResult {
                    request: full,
                    driver: id.driver.clone(),
                    pool: id.pool.clone(),
                    device: id.device.clone(),
                    admin_access: r.admin.then_some(true),
                    tolerations: rd.map(|rd| rd.tolerations.to_vec()).filter(|t| !t.is_empty()),
                    share_id: r.share.then(|| share_id(claim, i, &id.to_string())),
                    // Only upstream's experimental allocator (DRAOptionalNodeOperations,
                    // 1.37 alpha, off by default) copies the slice's skipNodeOperations;
                    // the incubating one leaves it unset.
                    skip_node_operations: None,
                    consumed_capacity: r
                        .consumed
                        .as_ref()
                        .filter(|c| !c.is_empty())
                        .map(|c| c.iter().map(|(k, v)| (k.clone(), v.to_quantity())).collect()),
                    binding_conditions: if f.device_binding_and_status {
                        device.binding_conditions.clone()
                    } else {
                        None
                    },
                    binding_failure_conditions: if f.device_binding_and_status {
                        device.binding_failure_conditions.clone()
                    } else {
                        None
                    },
                });
            }
            let config = self.configs(ci, claim);
            out.push(AllocationResult {
                devices: Some(DeviceAllocationResult {
                    results: Some(results),
                    config: if config.is_empty() { None } else { Some(config) },
                }),
                node_selector: self.node_selector(ci, &node_name),
                allocation_timestamp: None,
            });
        }
        out
    }

    /// Class configs once per class (FromClass), then claim configs (FromClaim). Before
    /// 1.37 a claim config is repeated once per request it names; from 1.37 it comes
    /// once, and a config naming every request has its list cleared ("all").
    fn configs(&self, ci: usize, claim: &ResourceClaim) -> Vec<DeviceAllocationConfiguration> {
        let from_1_37 = self.snap.features.release >= Release::V1_37;
        let mut out: Vec<DeviceAllocationConfiguration> = Vec::new();
        let mut ranges: HashMap<&str, (usize, usize)> = HashMap::new();
        for slot in &self.reqs[ci] {
            let rd = &slot.alts[if slot.has_subs { slot.selected } else { 0 }];
            if let Some(&(a, b)) = ranges.get(rd.class_name) {
                for c in &mut out[a..b] {
                    c.requests.get_or_insert_with(Vec::new).push(rd.full_name());
                }
                continue;
            }
            let start = out.len();
            for c in rd.class.class.spec.iter().flat_map(|s| s.config.iter().flatten()) {
                out.push(DeviceAllocationConfiguration {
                    source: "FromClass".into(),
                    requests: Some(vec![rd.full_name()]),
                    opaque: c.opaque.clone(),
                });
            }
            ranges.insert(rd.class_name, (start, out.len()));
        }
        let requests = device_claim(claim).and_then(|d| d.requests.as_deref()).unwrap_or_default();
        // Named in `names`, by its own name or its chosen subrequest's.
        let named = |names: &[String], ri: usize, req: &DeviceRequest| {
            let slot = &self.reqs[ci][ri];
            names.contains(&req.name) || (slot.has_subs && names.contains(&slot.alts[slot.selected].full_name()))
        };
        for c in device_claim(claim).and_then(|d| d.config.as_ref()).into_iter().flatten() {
            let names = c.requests.as_deref().unwrap_or_default();
            if names.is_empty() {
                out.push(DeviceAllocationConfiguration {
                    source: "FromClaim".into(),
                    requests: None,
                    opaque: c.opaque.clone(),
                });
                continue;
            }
            let matching = requests.iter().enumerate().filter(|&(ri, req)| named(names, ri, req)).count();
            let copies = if from_1_37 { matching.min(1) } else { matching };
            for _ in 0..copies {
                out.push(DeviceAllocationConfiguration {
                    source: "FromClaim".into(),
                    requests: c.requests.clone(),
                    opaque: c.opaque.clone(),
                });
            }
        }
        if from_1_37 {
            for c in &mut out {
                let names = c.requests.as_deref().unwrap_or_default();
                if !names.is_empty() && requests.iter().enumerate().all(|(ri, req)| named(names, ri, req)) {
                    c.requests = None;
                }
            }
        }
        out
    }

    fn node_selector(&self, ci: usize, node_name: &str) -> Option<NodeSelector> {
        let mut term = NodeSelectorTerm::default();
        for r in &self.results[ci] {
            let e = &self.snap.slices[r.slice];
            let device = &e.devices()[r.device];
            let (name, sel) = if e.per_device() {
                (device.node_name.as_deref(), device.node_selector.as_ref())
            } else {
                (e.slice.spec.node_name.as_deref(), e.slice.spec.node_selector.as_ref())
            };
            if name.is_some() || device.binds_to_node == Some(true) {
                return Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![node_name.to_string()]),
                        }]),
                        match_expressions: None,
                    }],
                });
            }
            if let Some(sel) = sel
                && sel.node_selector_terms.len() == 1
            {
                let t = &sel.node_selector_terms[0];
                add_requirements(t.match_fields.as_deref().unwrap_or_default(), &mut term.match_fields);
                add_requirements(t.match_expressions.as_deref().unwrap_or_default(), &mut term.match_expressions);
            }
        }
        if term.match_fields.as_ref().is_some_and(|v| !v.is_empty())
            || term.match_expressions.as_ref().is_some_and(|v| !v.is_empty())
        {
            Some(NodeSelector { node_selector_terms: vec![term] })
        } else {
            None
        }
    }
}

struct RawReq<'s> {
    name: &'s str,
    parent: Option<&'s str>,
    class: &'s str,
    selectors: &'s [DeviceSelector],
    mode: Option<&'s str>,
    count: Option<i64>,
    admin: Option<bool>,
    tolerations: &'s [DeviceToleration],
    capacity: Option<&'s CapacityRequirements>,
    /// Has `derivedAttributes` (DRADerivedAttributes, 1.37 alpha).
    derived: bool,
}

fn add_requirements(from: &[NodeSelectorRequirement], to: &mut Option<Vec<NodeSelectorRequirement>>) {
    let to = to.get_or_insert_with(Vec::new);
    for r in from {
        let mut vals: Vec<&String> = r.values.iter().flatten().collect();
        vals.sort();
        vals.dedup();
        let present = to.iter().any(|x| {
            let mut xv: Vec<&String> = x.values.iter().flatten().collect();
            xv.sort();
            xv.dedup();
            x.key == r.key && x.operator == r.operator && xv == vals
        });
        if !present {
            to.push(r.clone());
        }
    }
}

/// Evaluates selectors in order; the first false or error ends it.
fn eval_all(
    snap: &DraSnapshot,
    selectors: &[Option<Compiled>],
    sl: usize,
    d: usize,
) -> Result<bool, (usize, EvalError)> {
    for (i, s) in selectors.iter().enumerate() {
        let Some(c) = s else { continue };
        let sel = match c.as_ref() {
            Ok(s) => s,
            // Compile problems surface on the first device, like upstream's lazy compile.
            Err(_) => return Err((i, EvalError::Runtime(String::new()))),
        };
        let value = match snap.device_value(sl, d) {
            Ok(v) => v,
            Err(m) => return Err((i, EvalError::Runtime(m.clone()))),
        };
        match snap.cel.eval(sel, value) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => return Err((i, e)),
        }
    }
    Ok(true)
}

fn selector_error(owner: String, index: usize, e: EvalError, compiled: &Option<Compiled>) -> AllocateError {
    if let Some(c) = compiled {
        match c.as_ref() {
            Err(SelectorProblem::Compile(m)) => return AllocateError::CelCompile { owner, index, message: m.clone() },
            Err(SelectorProblem::Cost(cost)) => {
                return AllocateError::CelCostLimit { owner, index, cost: *cost, limit: super::cel::COST_LIMIT };
            }
            Ok(_) => {}
        }
    }
    match e {
        EvalError::Runtime(message) => AllocateError::CelRuntime { owner, index, message },
        EvalError::NotBool(found) => AllocateError::CelNotBool { owner, index, found },
    }
}

/// A NoSchedule or NoExecute taint that no toleration tolerates blocks the device.
fn taint_blocks(device: &Device, tolerations: &[DeviceToleration]) -> bool {
    device.taints.iter().flatten().any(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerations.iter().any(|tol| tolerates(tol, t))
    })
}

/// Upstream's `ToleratesTaint`.
pub fn tolerates(tol: &DeviceToleration, taint: &k8s_openapi::api::resource::v1::DeviceTaint) -> bool {
    if tol.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    if tol.key.as_deref().is_some_and(|k| !k.is_empty() && k != taint.key) {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("") {
        "" | "Equal" => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// A deterministic UID for a share (the core has no randomness): FNV-1a of the claim,
/// result index and device, formatted as a version-4-style UUID.
fn share_id(claim: &ResourceClaim, index: usize, device: &str) -> String {
    let seed = format!(
        "{}|{}|{}|{index}|{device}",
        claim.metadata.uid.as_deref().unwrap_or(""),
        claim.metadata.namespace.as_deref().unwrap_or(""),
        claim.metadata.name.as_deref().unwrap_or("")
    );
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in seed.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let h = (h & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let x = format!("{h:032x}");
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}
