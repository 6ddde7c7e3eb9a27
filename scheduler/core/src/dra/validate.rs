//! Independent check of a plan: what any set of allocation results must satisfy,
//! whoever produced them. The placement solver's property tests use it.

use super::device_claim;
use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::api::resource::v1::{AllocationResult, ResourceClaim};

use super::allocator::MAX_RESULTS;
use super::constraints::{AttrValue, lookup};
use super::quantity::Nanos;
use super::snapshot::DraSnapshot;
use super::state::{AllocatedState, DeviceId};

/// A rule a plan breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Claims and results differ in number.
    #[error("{claims} claims but {results} allocation results")]
    Arity {
        /// Claims.
        claims: usize,
        /// Results.
        results: usize,
    },
    /// A result names a device no slice publishes.
    #[error("claim {claim}: device {device} does not exist")]
    UnknownDevice {
        /// Claim.
        claim: String,
        /// Device.
        device: DeviceId,
    },
    /// A device is given twice (or is already allocated).
    #[error("claim {claim}: device {device} is allocated twice")]
    DoubleAllocation {
        /// Claim.
        claim: String,
        /// Device.
        device: DeviceId,
    },
    /// A request got the wrong number of devices, or a result names no request.
    #[error("claim {claim}, request {request}: {message}")]
    Request {
        /// Claim.
        claim: String,
        /// Request.
        request: String,
        /// What is wrong.
        message: String,
    },
    /// A constraint does not hold.
    #[error("claim {claim}, constraint #{index} on {attribute}: {message}")]
    Constraint {
        /// Claim.
        claim: String,
        /// Constraint index.
        index: usize,
        /// Attribute.
        attribute: String,
        /// What is wrong.
        message: String,
    },
    /// Shared counters are overdrawn.
    #[error("pool {pool}: counter {set}/{counter} overdrawn")]
    Counter {
        /// `driver/pool`.
        pool: String,
        /// Counter set.
        set: String,
        /// Counter.
        counter: String,
    },
}

/// Checks `results` (one per claim) against the snapshot and what is already
/// allocated: every device exists and is used once, each request got its count (within
/// the 32-result limit), matchAttribute/distinctAttribute hold, shared counters are not
/// overdrawn. Selectors are the allocator's business and are not re-evaluated.
pub fn validate(
    snap: &DraSnapshot,
    claims: &[&ResourceClaim],
    results: &[AllocationResult],
    allocated: &AllocatedState,
) -> Result<(), Violation> {
    if claims.len() != results.len() {
        return Err(Violation::Arity { claims: claims.len(), results: results.len() });
    }
    let mut used: HashSet<DeviceId> = HashSet::new();
    let mut new_devices: Vec<DeviceId> = Vec::new();
    for (claim, res) in claims.iter().zip(results) {
        let ck = super::allocator::claim_key(Some(claim));
        let rs = res.devices.as_ref().and_then(|d| d.results.as_deref()).unwrap_or_default();
        if rs.len() > MAX_RESULTS {
            return Err(Violation::Request {
                claim: ck,
                request: String::new(),
                message: format!("{} results exceed {MAX_RESULTS}", rs.len()),
            });
        }
        let requests = device_claim(claim).and_then(|d| d.requests.as_deref()).unwrap_or_default();
        let mut per_request: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        let mut attrs: Vec<(String, Option<String>, DeviceId)> = Vec::new();
        for r in rs {
            let id = DeviceId::new(&r.driver, &r.pool, &r.device);
            if snap.device(&id).is_none() {
                return Err(Violation::UnknownDevice { claim: ck, device: id });
            }
            let exclusive = r.admin_access != Some(true) && r.share_id.is_none();
            if exclusive && (allocated.is_allocated(&id) || !used.insert(id.clone())) {
                return Err(Violation::DoubleAllocation { claim: ck, device: id });
            }
            if exclusive {
                new_devices.push(id.clone());
            }
            // A result names "<request>" or "<request>/<subrequest>".
            let plain =
                requests.iter().any(|q| q.name == r.request && q.first_available.as_ref().is_none_or(|f| f.is_empty()));
            let (base, sub) = match r.request.split_once('/').filter(|_| !plain) {
                Some((b, s)) => (b.to_string(), Some(s.to_string())),
                None => (r.request.clone(), None),
            };
            per_request.entry(base.clone()).or_default().push(sub.as_deref().map_or("", |_| r.request.as_str()));
            attrs.push((base, sub, id));
        }
        for req in requests {
            let got = per_request.remove(&req.name).unwrap_or_default();
            let (mode, count) = if let Some(e) = &req.exactly {
                (e.allocation_mode.as_deref().unwrap_or("ExactCount"), e.count.unwrap_or(1))
            } else {
                let subs = req.first_available.as_deref().unwrap_or_default();
                let chosen: HashSet<&str> = got.iter().copied().collect();
                if chosen.len() != 1 {
                    return Err(Violation::Request {
                        claim: ck,
                        request: req.name.clone(),
                        message: format!("{} subrequests chosen, want 1", chosen.len()),
                    });
                }
                let name = chosen.into_iter().next().unwrap_or_default();
                let Some(s) = subs.iter().find(|s| format!("{}/{}", req.name, s.name) == name) else {
                    return Err(Violation::Request {
                        claim: ck,
                        request: req.name.clone(),
                        message: format!("unknown subrequest {name}"),
                    });
                };
                (s.allocation_mode.as_deref().unwrap_or("ExactCount"), s.count.unwrap_or(1))
            };
            let ok = if mode == "All" { !got.is_empty() } else { got.len() as i64 == count };
            if !ok {
                return Err(Violation::Request {
                    claim: ck,
                    request: req.name.clone(),
                    message: format!("{} devices for mode {mode} count {count}", got.len()),
                });
            }
        }
        if let Some((name, _)) = per_request.into_iter().next() {
            return Err(Violation::Request {
                claim: ck,
                request: name,
                message: "no such request in the claim".into(),
            });
        }
        for (index, c) in device_claim(claim).and_then(|d| d.constraints.as_ref()).into_iter().flatten().enumerate() {
            let scope: HashSet<&String> = c.requests.iter().flatten().collect();
            let covered = attrs.iter().filter(|(b, s, _)| {
                scope.is_empty() || scope.contains(b) || s.as_ref().is_some_and(|s| scope.contains(&format!("{b}/{s}")))
            });
            let (attribute, distinct) = match (&c.match_attribute, &c.distinct_attribute) {
                (Some(a), _) => (a.clone(), false),
                (None, Some(a)) => (a.clone(), true),
                _ => continue,
            };
            let mut seen: Vec<AttrValue> = Vec::new();
            for (_, _, id) in covered {
                let dev = snap.device(id).expect("checked above");
                let Some(Ok(v)) = lookup(dev, &id.driver, &attribute) else {
                    return Err(Violation::Constraint {
                        claim: ck,
                        index,
                        attribute,
                        message: format!("device {id} lacks the attribute"),
                    });
                };
                if distinct && seen.contains(&v) {
                    return Err(Violation::Constraint {
                        claim: ck,
                        index,
                        attribute,
                        message: format!("device {id} repeats value {v:?}"),
                    });
                }
                if !distinct && seen.first().is_some_and(|f| *f != v) {
                    return Err(Violation::Constraint {
                        claim: ck,
                        index,
                        attribute,
                        message: format!("device {id} has {v:?}, others {:?}", seen[0]),
                    });
                }
                seen.push(v);
            }
        }
    }
    check_counters(snap, allocated, &new_devices)
}

fn check_counters(snap: &DraSnapshot, allocated: &AllocatedState, new: &[DeviceId]) -> Result<(), Violation> {
    let new: HashSet<&DeviceId> = new.iter().collect();
    for ((driver, pool), slices) in &snap.by_pool {
        let newest = slices.iter().map(|&i| snap.slices[i].slice.spec.pool.generation).max().unwrap_or(0);
        let current: Vec<usize> =
            slices.iter().copied().filter(|&i| snap.slices[i].slice.spec.pool.generation == newest).collect();
        let mut limits: HashMap<(&str, &str), Nanos> = HashMap::new();
        for &i in &current {
            for cs in snap.slices[i].slice.spec.shared_counters.iter().flatten() {
                for (n, c) in &cs.counters {
                    limits.insert((cs.name.as_str(), n.as_str()), Nanos::of(&c.value).unwrap_or_default());
                }
            }
        }
        if limits.is_empty() {
            continue;
        }
        let mut use_: HashMap<(&str, &str), Nanos> = HashMap::new();
        let mut touched = false;
        for &i in &current {
            let e = &snap.slices[i];
            for (d, dev) in e.devices().iter().enumerate() {
                let is_new = new.contains(&e.ids[d]);
                touched |= is_new;
                if !is_new && !allocated.is_in_use(&e.ids[d]) {
                    continue;
                }
                for c in dev.consumes_counters.iter().flatten() {
                    for (n, v) in &c.counters {
                        let x = use_.entry((c.counter_set.as_str(), n.as_str())).or_default();
                        *x = x.plus(Nanos::of(&v.value).unwrap_or_default());
                    }
                }
            }
        }
        if !touched {
            continue;
        }
        for (k, v) in &use_ {
            if limits.get(k).is_some_and(|l| v > l) {
                return Err(Violation::Counter {
                    pool: format!("{driver}/{pool}"),
                    set: k.0.to_string(),
                    counter: k.1.to_string(),
                });
            }
        }
    }
    Ok(())
}
