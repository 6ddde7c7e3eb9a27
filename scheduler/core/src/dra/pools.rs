//! Pool gathering for one node: which slices apply, newest generation wins,
//! incomplete and invalid pools, shared counters.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::core::v1::Node;

use super::error::AllocateError;
use super::nodes::node_matches;
use super::quantity::Nanos;
use super::snapshot::DraSnapshot;

/// Counter sets of a pool: set name → counter name → value.
pub(crate) type CounterSets = BTreeMap<String, BTreeMap<String, Nanos>>;

/// A pool as seen from one node.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub driver: String,
    pub name: String,
    pub incomplete: bool,
    pub invalid: Option<String>,
    /// Device slices that apply to the node, sorted by name.
    pub slices: Vec<usize>,
    /// Slices of the pool that do not apply to the node (for counter accounting).
    pub others: Vec<usize>,
    pub counters: CounterSets,
    pub binding_conditions: bool,
}

impl Pool {
    fn marker(driver: &str, name: &str) -> Pool {
        Pool {
            driver: driver.to_string(),
            name: name.to_string(),
            incomplete: false,
            invalid: None,
            slices: vec![],
            others: vec![],
            counters: BTreeMap::new(),
            binding_conditions: false,
        }
    }
}

/// Upstream's `GatherPools` for one node, deterministic order: pools by (driver, pool),
/// pools with binding conditions last.
pub(crate) fn gather(snap: &DraSnapshot, node: &Node) -> Result<Vec<Pool>, AllocateError> {
    let f = snap.features;
    let name = node.metadata.name.as_deref().unwrap_or("");
    let local = snap.on_node.get(name).map(Vec::as_slice).unwrap_or_default();
    let mut order: Vec<(String, String)> = Vec::new();
    let mut groups: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for &i in local.iter().chain(snap.shared.iter()) {
        let e = &snap.slices[i];
        let spec = &e.slice.spec;
        if !f.partitionable_devices && (spec.per_device_node_selection.is_some() || e.has_counters()) {
            continue;
        }
        // Without DRADeviceCompatibilityGroups nothing can check which devices may be
        // allocated together, so such a slice is left out and its pool is incomplete.
        if e.uses_compatibility_groups() {
            continue;
        }
        let node_name = spec.node_name.as_deref().unwrap_or("");
        let all = spec.all_nodes.unwrap_or(false);
        let relevant = if e.has_counters() && f.counter_slices_on_every_node() {
            true
        } else if !node_name.is_empty() || all || spec.node_selector.is_some() {
            node_matches(node, Some(node_name), all, spec.node_selector.as_ref())
                .map_err(|m| AllocateError::NodeSelector { slice: e.name.clone(), message: m })?
        } else if e.per_device() {
            let mut any = false;
            for d in e.devices() {
                if node_matches(node, d.node_name.as_deref(), d.all_nodes.unwrap_or(false), d.node_selector.as_ref())
                    .map_err(|m| AllocateError::NodeSelector { slice: e.name.clone(), message: m })?
                {
                    any = true;
                    break;
                }
            }
            any
        } else {
            false
        };
        if !relevant {
            continue;
        }
        let key = (spec.driver.clone(), spec.pool.name.clone());
        match groups.get_mut(&key) {
            None => {
                order.push(key.clone());
                groups.insert(key, vec![i]);
            }
            Some(g) => {
                let have = snap.slices[g[0]].slice.spec.pool.generation;
                let generation = spec.pool.generation;
                if generation > have {
                    *g = vec![i];
                } else if generation == have {
                    g.push(i);
                }
            }
        }
    }
    let mut plain = Vec::new();
    let mut binding = Vec::new();
    for key in order {
        let group = &groups[&key];
        let first = &snap.slices[group[0]].slice.spec.pool;
        let pool = if group.len() as i64 == first.resource_slice_count {
            build(snap, &key, group, None)
        } else {
            // Rescan every slice of the pool: a newer generation elsewhere makes the
            // local view obsolete; a wrong count means the pool is being updated.
            let all = snap.by_pool.get(&key).map(Vec::as_slice).unwrap_or_default();
            if all.iter().any(|&j| snap.slices[j].slice.spec.pool.generation > first.generation) {
                continue;
            }
            let same: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&j| {
                    snap.slices[j].slice.spec.pool.generation == first.generation
                        && !snap.slices[j].uses_compatibility_groups()
                })
                .collect();
            if same.len() as i64 != first.resource_slice_count {
                let mut p = Pool::marker(&key.0, &key.1);
                p.incomplete = true;
                plain.push(p);
                continue;
            }
            build(snap, &key, group, Some(&same))
        };
        if pool.binding_conditions { binding.push(pool) } else { plain.push(pool) }
    }
    let by_id = |a: &Pool, b: &Pool| (a.driver.as_str(), a.name.as_str()).cmp(&(b.driver.as_str(), b.name.as_str()));
    plain.sort_by(by_id);
    binding.sort_by(by_id);
    plain.extend(binding);
    Ok(plain)
}

fn build(snap: &DraSnapshot, key: &(String, String), group: &[usize], all: Option<&[usize]>) -> Pool {
    let mut sorted = group.to_vec();
    sorted.sort_by(|&a, &b| snap.slices[a].name.cmp(&snap.slices[b].name));
    let mut pool = Pool::marker(&key.0, &key.1);
    let (counter_slices, device_slices): (Vec<usize>, Vec<usize>) = if snap.features.partitionable_devices {
        sorted.iter().partition(|&&i| snap.slices[i].has_counters())
    } else {
        (vec![], sorted.clone())
    };
    let mut names = HashSet::new();
    for &i in &device_slices {
        for d in snap.slices[i].devices() {
            if !names.insert(d.name.as_str()) {
                pool.invalid = Some(format!("duplicate device name {}", d.name));
                return pool;
            }
        }
    }
    pool.binding_conditions =
        device_slices.iter().any(|&i| snap.slices[i].devices().iter().any(|d| d.binding_conditions.is_some()));
    if !snap.features.partitionable_devices {
        pool.slices = device_slices;
        return pool;
    }
    // Slices of the pool that do not apply to the node: their devices consume the
    // pool's counters too; a counter slice among them (1.37 applies node selection to
    // counter slices) still defines counters for the node's devices.
    let (other_counters, others): (Vec<usize>, Vec<usize>) = match all.filter(|a| a.len() != group.len()) {
        Some(all) => {
            let mine: HashSet<&str> = group.iter().map(|&i| snap.slices[i].name.as_str()).collect();
            all.iter()
                .copied()
                .filter(|&j| !mine.contains(snap.slices[j].name.as_str()))
                .partition(|&j| snap.slices[j].has_counters())
        }
        None => (vec![], vec![]),
    };
    for &i in counter_slices.iter().chain(&other_counters) {
        for cs in snap.slices[i].slice.spec.shared_counters.iter().flatten() {
            if pool.counters.contains_key(&cs.name) {
                pool.invalid = Some(format!("duplicate counter set name {}", cs.name));
                pool.binding_conditions = false;
                return pool;
            }
            let counters =
                cs.counters.iter().map(|(k, c)| (k.clone(), Nanos::of(&c.value).unwrap_or_default())).collect();
            pool.counters.insert(cs.name.clone(), counters);
        }
    }
    if let Err(m) = check_consumption(snap, &pool.counters, &device_slices) {
        pool.invalid = Some(m);
        pool.binding_conditions = false;
        return pool;
    }
    if let Err(m) = check_consumption(snap, &pool.counters, &others) {
        pool.invalid = Some(m);
        pool.binding_conditions = false;
        return pool;
    }
    pool.slices = device_slices;
    pool.others = others;
    pool
}

fn check_consumption(snap: &DraSnapshot, sets: &CounterSets, slices: &[usize]) -> Result<(), String> {
    for &i in slices {
        for d in snap.slices[i].devices() {
            for c in d.consumes_counters.iter().flatten() {
                let Some(set) = sets.get(&c.counter_set) else {
                    return Err(format!("counter set {} not found", c.counter_set));
                };
                for name in c.counters.keys() {
                    if !set.contains_key(name) {
                        return Err(format!("counter {name} not found in counter set {}", c.counter_set));
                    }
                }
            }
        }
    }
    Ok(())
}
