//! What is already allocated in the cluster, whoever allocated it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::resource::v1::{AllocationResult, ResourceClaim};

use super::hash::FastMap;
use super::quantity::Nanos;

/// A device: `driver/pool/device`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct DeviceId {
    /// Driver name.
    pub driver: String,
    /// Pool name.
    pub pool: String,
    /// Device name within the pool.
    pub device: String,
}

impl DeviceId {
    /// Builds an id.
    pub fn new(driver: impl Into<String>, pool: impl Into<String>, device: impl Into<String>) -> Self {
        DeviceId { driver: driver.into(), pool: pool.into(), device: device.into() }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.driver, self.pool, self.device)
    }
}

/// Use of a device that allows multiple allocations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SharedUse {
    /// Share ids (multiset, so `add` twice then `remove` once keeps one).
    shares: BTreeMap<String, u32>,
    /// Number of results that reported consumed capacity; upstream keeps an aggregated
    /// capacity entry for the device exactly while this is non-zero.
    capacity_entries: u32,
    /// Sum of consumed capacity per capacity name.
    capacity: BTreeMap<String, Nanos>,
    /// Number of results that reported each capacity name, so that `remove` drops a
    /// name exactly when the last result naming it goes.
    capacity_names: BTreeMap<String, u32>,
}

/// Devices in use, capacity consumed by shared devices. Built from every allocated
/// claim in the cluster; `add`/`remove` are exact inverses for an undo log.
///
/// Like kube-scheduler: results with `adminAccess: true` are not counted; results
/// with a `shareID` count as a share of the device and add their consumed capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocatedState {
    dedicated: FastMap<DeviceId, u32>,
    shared: FastMap<DeviceId, SharedUse>,
}

impl AllocatedState {
    /// Nothing allocated.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of the given claims' `status.allocation`.
    pub fn from_claims(claims: &[ResourceClaim]) -> Self {
        let mut s = Self::default();
        for c in claims {
            if let Some(a) = c.status.as_ref().and_then(|s| s.allocation.as_ref()) {
                s.add(a);
            }
        }
        s
    }

    /// Records an allocation.
    pub fn add(&mut self, result: &AllocationResult) {
        for r in results(result) {
            if r.admin_access == Some(true) {
                continue;
            }
            let id = DeviceId::new(&r.driver, &r.pool, &r.device);
            match &r.share_id {
                Some(share) => {
                    let u = self.shared.entry(id).or_default();
                    *u.shares.entry(share.clone()).or_default() += 1;
                    if let Some(cc) = &r.consumed_capacity {
                        u.capacity_entries += 1;
                        for (k, q) in cc {
                            let v = u.capacity.entry(k.clone()).or_default();
                            *v = v.plus(Nanos::of(q).unwrap_or_default());
                            *u.capacity_names.entry(k.clone()).or_default() += 1;
                        }
                    }
                }
                None => *self.dedicated.entry(id).or_default() += 1,
            }
        }
    }

    /// Undoes [`AllocatedState::add`] of the same result.
    pub fn remove(&mut self, result: &AllocationResult) {
        for r in results(result) {
            if r.admin_access == Some(true) {
                continue;
            }
            let id = DeviceId::new(&r.driver, &r.pool, &r.device);
            match &r.share_id {
                Some(share) => {
                    let Some(u) = self.shared.get_mut(&id) else { continue };
                    if let Some(n) = u.shares.get_mut(share) {
                        *n -= 1;
                        if *n == 0 {
                            u.shares.remove(share);
                        }
                    }
                    if let Some(cc) = &r.consumed_capacity {
                        u.capacity_entries = u.capacity_entries.saturating_sub(1);
                        for (k, q) in cc {
                            if let Some(v) = u.capacity.get_mut(k) {
                                *v = v.minus(Nanos::of(q).unwrap_or_default());
                            }
                            if let Some(n) = u.capacity_names.get_mut(k) {
                                *n -= 1;
                                if *n == 0 {
                                    u.capacity_names.remove(k);
                                    u.capacity.remove(k);
                                }
                            }
                        }
                        if u.capacity_entries == 0 {
                            u.capacity.clear();
                            u.capacity_names.clear();
                        }
                    }
                    if u.shares.is_empty() && u.capacity_entries == 0 {
                        self.shared.remove(&id);
                    }
                }
                None => {
                    if let Some(n) = self.dedicated.get_mut(&id) {
                        *n -= 1;
                        if *n == 0 {
                            self.dedicated.remove(&id);
                        }
                    }
                }
            }
        }
    }

    /// True if the device is allocated exclusively (no other claim may get it).
    pub fn is_allocated(&self, id: &DeviceId) -> bool {
        !self.dedicated.is_empty() && self.dedicated.contains_key(id)
    }

    /// True if the device has any allocation, exclusive or shared (upstream's
    /// `IsDeviceAllocated`, used for counter accounting).
    pub fn is_in_use(&self, id: &DeviceId) -> bool {
        self.is_allocated(id) || (!self.shared.is_empty() && self.shared.contains_key(id))
    }

    /// True if some claim holds a share of the device (upstream's
    /// `AllocatedSharedDeviceIDs`), with or without consumed capacity.
    pub fn is_shared(&self, id: &DeviceId) -> bool {
        !self.shared.is_empty() && self.shared.contains_key(id)
    }

    /// Capacity consumed on a shared device, if any share reported consumed capacity.
    pub fn consumed_capacity(&self, id: &DeviceId) -> Option<&BTreeMap<String, Nanos>> {
        if self.shared.is_empty() {
            return None;
        }
        self.shared.get(id).filter(|u| u.capacity_entries > 0).map(|u| &u.capacity)
    }

    /// Number of exclusively allocated devices.
    pub fn allocated_count(&self) -> usize {
        self.dedicated.len()
    }
}

fn results(
    a: &AllocationResult,
) -> impl Iterator<Item = &k8s_openapi::api::resource::v1::DeviceRequestAllocationResult> {
    a.devices.iter().flat_map(|d| d.results.iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::{DeviceAllocationResult, DeviceRequestAllocationResult};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn alloc(rs: Vec<DeviceRequestAllocationResult>) -> AllocationResult {
        AllocationResult {
            devices: Some(DeviceAllocationResult { results: Some(rs), config: None }),
            ..Default::default()
        }
    }

    fn res(dev: &str) -> DeviceRequestAllocationResult {
        DeviceRequestAllocationResult {
            driver: "d".into(),
            pool: "p".into(),
            device: dev.into(),
            request: "r".into(),
            ..Default::default()
        }
    }

    #[test]
    fn add_remove_are_inverse() {
        let mut shared = res("s");
        shared.share_id = Some("u1".into());
        shared.consumed_capacity = Some([("mem".to_string(), Quantity("1Gi".into()))].into());
        let mut admin = res("a");
        admin.admin_access = Some(true);
        let a = alloc(vec![res("x"), shared, admin]);
        let mut s = AllocatedState::new();
        s.add(&a);
        assert!(s.is_allocated(&DeviceId::new("d", "p", "x")));
        assert!(!s.is_allocated(&DeviceId::new("d", "p", "a")));
        assert!(!s.is_allocated(&DeviceId::new("d", "p", "s")));
        assert!(s.is_in_use(&DeviceId::new("d", "p", "s")));
        s.add(&a);
        s.remove(&a);
        assert!(s.is_allocated(&DeviceId::new("d", "p", "x")));
        s.remove(&a);
        assert_eq!(s, AllocatedState::new());
    }
}
