//! Consumable capacity: request policies, rounding, and whether a request fits what
//! is left of a device.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{CapacityRequirements, Device, DeviceCapacity};

use super::quantity::Nanos;

fn q(x: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Nanos {
    Nanos::of(x).unwrap_or_default()
}

/// Capacity a request consumes from one capacity of a device: the request rounded up
/// to the policy, or the policy default, or (no request) the whole capacity.
fn consume(requested: Option<Nanos>, cap: &DeviceCapacity) -> Nanos {
    let Some(req) = requested else {
        return cap.request_policy.as_ref().and_then(|p| p.default.as_ref()).map_or(q(&cap.value), q);
    };
    let Some(policy) = &cap.request_policy else { return req };
    if let Some(range) = &policy.valid_range {
        let min = q(&range.min);
        if req < min {
            return min;
        }
        let Some(step) = &range.step else { return req };
        let (r, step, min) = (req.value_ceil(), q(step).value_ceil(), min.value_ceil());
        if step == 0 {
            return req;
        }
        let added = r - min;
        let mut n = added / step;
        if added % step != 0 {
            n += 1;
        }
        return Nanos::from_int(min + step * n);
    }
    if let Some(values) = &policy.valid_values {
        for v in values {
            if req <= q(v) {
                return q(v);
            }
        }
    }
    req
}

fn violates(v: Nanos, cap: &DeviceCapacity) -> bool {
    let Some(policy) = &cap.request_policy else { return false };
    if policy.default.as_ref().is_some_and(|d| q(d) == v) {
        return false;
    }
    if let Some(range) = &policy.valid_range {
        if range.max.as_ref().is_some_and(|m| v > q(m)) {
            return true;
        }
        if let Some(step) = &range.step {
            let step = q(step).value_ceil();
            if step != 0 && (v.value_ceil() - q(&range.min).value_ceil()) % step != 0 {
                return true;
            }
        }
        return false;
    }
    if let Some(values) = policy.valid_values.as_ref().filter(|v| !v.is_empty()) {
        return !values.iter().any(|x| q(x) == v);
    }
    false
}

fn requested(req: Option<&CapacityRequirements>, name: &str) -> Option<Nanos> {
    req.and_then(|r| r.requests.as_ref()).and_then(|m| m.get(name)).map(q)
}

/// Upstream's `CmpRequestOverCapacity`: every capacity of the device must still hold
/// what is consumed already (`used`), what this attempt consumes (`allocating`) and
/// this request. A request for a capacity the device lacks never fits.
pub fn fits(
    used: Option<&BTreeMap<String, Nanos>>,
    req: Option<&CapacityRequirements>,
    device: &Device,
    allocating: Option<&BTreeMap<String, Nanos>>,
) -> bool {
    let caps = device.capacity.as_ref();
    // Common case: nothing requested, nothing consumed, no policies: a device's
    // whole capacity always fits itself.
    if req.is_none()
        && used.is_none()
        && allocating.is_none()
        && caps.is_none_or(|c| c.values().all(|cap| cap.request_policy.is_none()))
    {
        return true;
    }
    if let Some(r) = req.and_then(|r| r.requests.as_ref())
        && r.keys().any(|k| !caps.is_some_and(|c| c.contains_key(k)))
    {
        return false;
    }
    for (name, cap) in caps.into_iter().flatten() {
        let c = consume(requested(req, name), cap);
        if violates(c, cap) {
            return false;
        }
        let mut total = used.and_then(|u| u.get(name)).copied().unwrap_or_default().plus(c);
        if let Some(a) = allocating.and_then(|a| a.get(name)) {
            total = total.plus(*a);
        }
        if total > q(&cap.value) {
            return false;
        }
    }
    true
}

/// Capacity consumed by one share of a device.
pub fn consumed(req: Option<&CapacityRequirements>, device: &Device) -> BTreeMap<String, Nanos> {
    device.capacity.iter().flatten().map(|(name, cap)| (name.clone(), consume(requested(req, name), cap))).collect()
}
