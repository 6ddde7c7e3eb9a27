//! Allocator feature flags, named after upstream's `structured.Features`, and the
//! Kubernetes release whose allocator to follow.

/// A Kubernetes minor release whose DRA allocator Phalanx can follow. Releases differ
/// in feature gate defaults ([`Features::defaults`]) and, beyond the gates, in a few
/// allocation rules that 1.37 changed (see the `dra` module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Release {
    /// Kubernetes 1.36 (`k8s.io/dynamic-resource-allocation` v0.36).
    #[serde(rename = "1.36")]
    V1_36,
    /// Kubernetes 1.37 (`k8s.io/dynamic-resource-allocation` v0.37).
    #[default]
    #[serde(rename = "1.37")]
    V1_37,
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Release::V1_36 => "1.36",
            Release::V1_37 => "1.37",
        })
    }
}

impl std::str::FromStr for Release {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1.36" => Ok(Release::V1_36),
            "1.37" => Ok(Release::V1_37),
            other => Err(format!("unsupported Kubernetes release {other:?} (supported: 1.36, 1.37)")),
        }
    }
}

/// Which optional allocator features are on. Each flag mirrors a field of upstream's
/// `k8s.io/dynamic-resource-allocation/structured.Features` (and the feature gate it
/// stands for); `release` picks the release's allocation rules.
///
/// The alpha gates that only upstream's experimental allocator implements
/// (DRADeviceCompatibilityGroups, DRADerivedAttributes, DRAOptionalNodeOperations, all
/// off by default in 1.37) have no flag: Phalanx always behaves as with them off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// The release whose allocation rules apply where releases differ beyond gates.
    #[serde(default)]
    pub release: Release,
    /// `DRAAdminAccess`: requests may set `adminAccess`.
    pub admin_access: bool,
    /// `DRAConsumableCapacity`: `allowMultipleAllocations`, capacity requests, shareID.
    pub consumable_capacity: bool,
    /// `DRADeviceBindingConditions` + `DRAResourceClaimDeviceStatus`.
    pub device_binding_and_status: bool,
    /// `DRADeviceTaints`: device taints and request tolerations.
    pub device_taints: bool,
    /// `DRAFractionalCapacityRange` (1.37, beta): capacity ranges with fractional
    /// min, max or step are rounded in milli-units instead of whole units.
    #[serde(default)]
    pub fractional_capacity_range: bool,
    /// `DRAListTypeAttributes`: list-valued attributes (alpha).
    pub list_type_attributes: bool,
    /// `DRAPartitionableDevices`: shared counters and per-device node selection.
    pub partitionable_devices: bool,
    /// `DRAPrioritizedList`: `firstAvailable` subrequests.
    pub prioritized_list: bool,
}

impl Features {
    /// Every feature on, with the newest release's rules.
    pub fn all() -> Self {
        Features {
            release: Release::default(),
            admin_access: true,
            consumable_capacity: true,
            device_binding_and_status: true,
            device_taints: true,
            fractional_capacity_range: true,
            list_type_attributes: true,
            partitionable_devices: true,
            prioritized_list: true,
        }
    }

    /// Every feature off, with the newest release's rules.
    pub fn none() -> Self {
        Features {
            release: Release::default(),
            admin_access: false,
            consumable_capacity: false,
            device_binding_and_status: false,
            device_taints: false,
            fractional_capacity_range: false,
            list_type_attributes: false,
            partitionable_devices: false,
            prioritized_list: false,
        }
    }

    /// What kube-scheduler of `release` enables by default: everything GA or beta-on,
    /// alpha off. 1.37 adds DRAFractionalCapacityRange (beta, on); the gates that
    /// went GA in 1.37 (DRADeviceTaints, DRAResourceClaimDeviceStatus, DRAPrioritizedList
    /// locked) were on by default in 1.36 already.
    pub fn defaults(release: Release) -> Self {
        Features {
            release,
            list_type_attributes: false,
            fractional_capacity_range: release >= Release::V1_37,
            ..Features::all()
        }
    }

    /// True when upstream would pick its "stable" allocator for these features (none of
    /// consumable capacity, binding conditions, list attributes, fractional ranges):
    /// that variant has no distinctAttribute constraint and ignores capacity requests.
    pub fn stable_channel(&self) -> bool {
        !(self.consumable_capacity
            || self.device_binding_and_status
            || self.list_type_attributes
            || self.fractional_capacity_range)
    }

    /// Upstream's stable allocator, and before 1.37 also the incubating one, treat a
    /// slice with shared counters as relevant to every node; 1.37's incubating
    /// allocator applies the slice's node selection like for any other slice.
    pub(crate) fn counter_slices_on_every_node(&self) -> bool {
        self.release < Release::V1_37 || self.stable_channel()
    }
}

impl Default for Features {
    /// What the newest supported release, Kubernetes 1.37, enables by default.
    fn default() -> Self {
        Features::defaults(Release::default())
    }
}
