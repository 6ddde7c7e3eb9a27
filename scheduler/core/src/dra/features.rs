//! Allocator feature flags, named after upstream's `structured.Features`.

/// Which optional allocator features are on. Each field mirrors a field of upstream's
/// `k8s.io/dynamic-resource-allocation/structured.Features` (and the feature gate it
/// stands for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// `DRAAdminAccess`: requests may set `adminAccess`.
    pub admin_access: bool,
    /// `DRAConsumableCapacity`: `allowMultipleAllocations`, capacity requests, shareID.
    pub consumable_capacity: bool,
    /// `DRADeviceBindingConditions` + `DRAResourceClaimDeviceStatus`.
    pub device_binding_and_status: bool,
    /// `DRADeviceTaints`: device taints and request tolerations.
    pub device_taints: bool,
    /// `DRAListTypeAttributes`: list-valued attributes (alpha in 1.36).
    pub list_type_attributes: bool,
    /// `DRAPartitionableDevices`: shared counters and per-device node selection.
    pub partitionable_devices: bool,
    /// `DRAPrioritizedList`: `firstAvailable` subrequests.
    pub prioritized_list: bool,
}

impl Features {
    /// Every feature on.
    pub fn all() -> Self {
        Features {
            admin_access: true,
            consumable_capacity: true,
            device_binding_and_status: true,
            device_taints: true,
            list_type_attributes: true,
            partitionable_devices: true,
            prioritized_list: true,
        }
    }

    /// Every feature off.
    pub fn none() -> Self {
        Features {
            admin_access: false,
            consumable_capacity: false,
            device_binding_and_status: false,
            device_taints: false,
            list_type_attributes: false,
            partitionable_devices: false,
            prioritized_list: false,
        }
    }
}

impl Features {
    /// True when upstream would pick its "stable" allocator for these features (none of
    /// consumable capacity, binding conditions, list attributes): that variant has no
    /// distinctAttribute constraint and ignores capacity requests.
    pub fn stable_channel(&self) -> bool {
        !(self.consumable_capacity || self.device_binding_and_status || self.list_type_attributes)
    }
}

impl Default for Features {
    /// What Kubernetes 1.36 enables by default: everything GA or beta-on; list-type
    /// attributes (alpha) off.
    fn default() -> Self {
        Features { list_type_attributes: false, ..Features::all() }
    }
}
