//! Consumable capacity: request policies, rounding, and whether a request fits what
//! is left of a device.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{CapacityRequestPolicyRange, CapacityRequirements, Device, DeviceCapacity};

use super::features::{Features, Release};
use super::quantity::Nanos;

fn q(x: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Nanos {
    Nanos::of(x).unwrap_or_default()
}

/// How capacity arithmetic works for a feature set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// DRAFractionalCapacityRange: ranges whose bounds are whole milli-units round in
    /// milli-units.
    fractional: bool,
    /// 1.37: a request the range arithmetic cannot represent, or a negative consumed
    /// capacity, aborts the allocation instead of letting the value through.
    strict: bool,
}

impl Rules {
    pub fn new(f: &Features) -> Self {
        Rules { fractional: f.fractional_capacity_range, strict: f.release >= Release::V1_37 }
    }
}

const NANOS_PER_MILLI: i128 = 1_000_000;
const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// The value in milli-units if that is exact and fits an int64 (upstream's
/// `safeMilliValue`).
fn milli(n: Nanos) -> Option<i64> {
    if n.0 % NANOS_PER_MILLI != 0 {
        return None;
    }
    i64::try_from(n.0 / NANOS_PER_MILLI).ok()
}

/// Upstream's `useMilli`: with the feature on, a range whose bounds are all whole
/// milli-units (and whose step is at least 1m) is computed in milli-units.
fn use_milli(range: &CapacityRequestPolicyRange, rules: Rules) -> bool {
    if !rules.fractional {
        return false;
    }
    let bounds = [Some(&range.min), range.max.as_ref(), range.step.as_ref()];
    if bounds.iter().flatten().any(|b| milli(q(b)).is_none()) {
        return false;
    }
    range.step.as_ref().is_none_or(|s| milli(q(s)).is_some_and(|s| s >= 1))
}

/// Rounds a request at or above the range's minimum up to the next step.
fn round_up_range(req: Nanos, range: &CapacityRequestPolicyRange, step: Nanos, rules: Rules) -> Result<Nanos, String> {
    let too_big =
        || format!("rounding request {req} up to the next step passes the largest representable value; request less");
    if use_milli(range, rules) {
        let r =
            milli(req).ok_or_else(|| format!("request {req} is not a whole number of milli-units; round it to 1m"))?;
        let (step, min) = (milli(step).unwrap_or(1), milli(q(&range.min)).unwrap_or(0));
        let added = r - min;
        let n = added / step + i64::from(added % step != 0);
        if n > (i64::MAX - min) / step {
            return Err(too_big());
        }
        return Ok(Nanos(i128::from(min + step * n) * NANOS_PER_MILLI));
    }
    if rules.strict && req.0 > i128::from(i64::MAX) * NANOS_PER_UNIT {
        return Err(format!("request {req} is above the largest representable value (2^63-1); request less"));
    }
    let (r, step, min) = (req.value_ceil(), step.value_ceil(), q(&range.min).value_ceil());
    if step == 0 {
        return Ok(req);
    }
    let added = r - min;
    let n = added / step + i128::from(added % step != 0);
    if rules.strict && min >= 0 && n > (i128::from(i64::MAX) - min) / step {
        return Err(too_big());
    }
    Ok(Nanos::from_int(min + step * n))
}

/// Capacity a request consumes from one capacity of a device: the request rounded up
/// to the policy, or the policy default, or (no request) the whole capacity.
fn consume(requested: Option<Nanos>, cap: &DeviceCapacity, rules: Rules) -> Result<Nanos, String> {
    let Some(req) = requested else {
        return Ok(cap.request_policy.as_ref().and_then(|p| p.default.as_ref()).map_or(q(&cap.value), q));
    };
    let Some(policy) = &cap.request_policy else { return Ok(req) };
    if let Some(range) = &policy.valid_range {
        if req < q(&range.min) {
            return Ok(q(&range.min));
        }
        return match &range.step {
            None => Ok(req),
            Some(step) => round_up_range(req, range, q(step), rules),
        };
    }
    if let Some(values) = &policy.valid_values {
        for v in values {
            if req <= q(v) {
                return Ok(q(v));
            }
        }
    }
    Ok(req)
}

fn violates(v: Nanos, cap: &DeviceCapacity, rules: Rules) -> bool {
    let Some(policy) = &cap.request_policy else { return false };
    if policy.default.as_ref().is_some_and(|d| q(d) == v) {
        return false;
    }
    if let Some(range) = &policy.valid_range {
        if range.max.as_ref().is_some_and(|m| v > q(m)) {
            return true;
        }
        if let Some(step) = &range.step {
            if use_milli(range, rules) {
                let (Some(v), Some(step), Some(min)) = (milli(v), milli(q(step)), milli(q(&range.min))) else {
                    return true;
                };
                return (v - min) % step != 0;
            }
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

/// What each capacity of the device gives up to the request. `Err` (1.37): a value
/// that cannot be used at all, which aborts the allocation.
fn consumed_all(
    req: Option<&CapacityRequirements>,
    device: &Device,
    rules: Rules,
) -> Result<BTreeMap<String, Nanos>, String> {
    let mut out = BTreeMap::new();
    for (name, cap) in device.capacity.iter().flatten() {
        let c = consume(requested(req, name), cap, rules).map_err(|m| format!("capacity {name}: {m}"))?;
        if rules.strict && c < Nanos::ZERO {
            return Err(format!(
                "capacity {name}: consumed capacity {c} is negative; fix the request or the device's capacity"
            ));
        }
        out.insert(name.clone(), c);
    }
    Ok(out)
}

/// Upstream's `CmpRequestOverCapacity`: every capacity of the device must still hold
/// what is consumed already (`used`), what this attempt consumes (`allocating`) and
/// this request. A request for a capacity the device lacks never fits. `Err` (1.37
/// rules): the request or the device's capacity cannot be used at all.
pub(crate) fn fits(
    used: Option<&BTreeMap<String, Nanos>>,
    req: Option<&CapacityRequirements>,
    device: &Device,
    allocating: Option<&BTreeMap<String, Nanos>>,
    rules: Rules,
) -> Result<bool, String> {
    let caps = device.capacity.as_ref();
    // Common case: nothing requested, nothing consumed, no policies: a device's
    // whole capacity always fits itself (unless it is negative, which 1.37 rejects).
    if req.is_none()
        && used.is_none()
        && allocating.is_none()
        && caps.is_none_or(|c| {
            c.values().all(|cap| cap.request_policy.is_none() && !(rules.strict && q(&cap.value) < Nanos::ZERO))
        })
    {
        return Ok(true);
    }
    if let Some(r) = req.and_then(|r| r.requests.as_ref())
        && r.keys().any(|k| !caps.is_some_and(|c| c.contains_key(k)))
    {
        return Ok(false);
    }
    // All values first: whether a problem aborts must not depend on which capacity
    // happens to be checked first.
    let consumed = consumed_all(req, device, rules)?;
    for (name, cap) in caps.into_iter().flatten() {
        let c = consumed[name];
        if violates(c, cap, rules) {
            return Ok(false);
        }
        let mut total = used.and_then(|u| u.get(name)).copied().unwrap_or_default().plus(c);
        if let Some(a) = allocating.and_then(|a| a.get(name)) {
            total = total.plus(*a);
        }
        if total > q(&cap.value) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Capacity consumed by one share of a device.
pub(crate) fn consumed(
    req: Option<&CapacityRequirements>,
    device: &Device,
    rules: Rules,
) -> Result<BTreeMap<String, Nanos>, String> {
    consumed_all(req, device, rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::CapacityRequestPolicy;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn range(min: &str, step: &str) -> DeviceCapacity {
        DeviceCapacity {
            value: Quantity("4".into()),
            request_policy: Some(CapacityRequestPolicy {
                valid_range: Some(CapacityRequestPolicyRange {
                    min: Quantity(min.into()),
                    step: Some(Quantity(step.into())),
                    max: None,
                }),
                ..Default::default()
            }),
        }
    }

    fn rules(fractional: bool, strict: bool) -> Rules {
        Rules { fractional, strict }
    }

    fn consume_str(req: &str, cap: &DeviceCapacity, rules: Rules) -> Result<String, String> {
        consume(Nanos::parse(req), cap, rules).map(|n| n.to_string())
    }

    #[test]
    fn fractional_ranges_round_in_milli_units_only_with_the_feature() {
        // Upstream's consumable-capacity-fractional-range-gate-* cases.
        let cap = range("200m", "100m");
        assert_eq!(consume_str("250m", &cap, rules(true, true)), Ok("300m".into()));
        assert_eq!(consume_str("250m", &cap, rules(false, true)), Ok("1".into()));
        assert!(!violates(Nanos::parse("300m").unwrap(), &cap, rules(true, true)));
    }

    #[test]
    fn unrepresentable_requests_abort_from_1_37() {
        let cap = range("1", "1");
        assert!(consume_str("10E", &cap, rules(false, true)).is_err());
        assert!(consume_str("10E", &cap, rules(false, false)).is_ok());
        assert!(consume_str("250500u", &range("200m", "100m"), rules(true, true)).is_err());
        assert!(consume_str("250500u", &range("200m", "100m"), rules(false, true)).is_ok());
    }
}
