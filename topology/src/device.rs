//! Devices published in `ResourceSlice`s, reduced to what topology needs.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::resource::v1::{DeviceAttribute, ResourceSlice};

/// `(driver, pool, device)`: how DRA names a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    /// Driver name.
    pub driver: String,
    /// Pool name.
    pub pool: String,
    /// Device name, unique in its pool.
    pub device: String,
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.driver, self.pool, self.device)
    }
}

/// A scalar attribute value (list attributes are kept as their first element).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttrValue {
    /// `string`.
    String(String),
    /// `int`.
    Int(i64),
    /// `bool`.
    Bool(bool),
    /// `version` (semver text).
    Version(String),
}

impl AttrValue {
    fn from_api(a: &DeviceAttribute) -> Option<Self> {
        if let Some(s) = &a.string {
            return Some(Self::String(s.clone()));
        }
        if let Some(i) = a.int {
            return Some(Self::Int(i));
        }
        if let Some(b) = a.bool {
            return Some(Self::Bool(b));
        }
        if let Some(v) = &a.version {
            return Some(Self::Version(v.clone()));
        }
        if let Some(s) = a.strings.as_ref().and_then(|l| l.first()) {
            return Some(Self::String(s.clone()));
        }
        if let Some(i) = a.ints.as_ref().and_then(|l| l.first()) {
            return Some(Self::Int(*i));
        }
        None
    }

    /// The value as text, for domain names.
    pub fn text(&self) -> String {
        match self {
            Self::String(s) | Self::Version(s) => s.clone(),
            Self::Int(i) => i.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

/// One device on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Its DRA name.
    pub key: DeviceKey,
    /// The node it is local to.
    pub node: String,
    /// Attributes under their fully qualified names.
    pub attributes: BTreeMap<String, AttrValue>,
}

impl DeviceInfo {
    /// Looks an attribute up by its fully qualified name, or by its bare id when the
    /// domain is the driver's own (as the allocator does).
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        if let Some(v) = self.attributes.get(name) {
            return Some(v);
        }
        let (domain, id) = name.split_once('/')?;
        if domain == self.key.driver { self.attributes.get(id) } else { None }
    }

    /// The attribute as text.
    pub fn attr_text(&self, name: &str) -> Option<String> {
        self.attr(name).map(AttrValue::text)
    }
}

/// Node-local devices of the newest generation of every pool, sorted by key.
/// Devices not bound to one node (network-attached) are left out: they have no place in
/// the node tree.
pub fn node_local_devices(slices: &[ResourceSlice]) -> Vec<DeviceInfo> {
    let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
    for s in slices {
        let g = newest.entry((&s.spec.driver, &s.spec.pool.name)).or_insert(s.spec.pool.generation);
        *g = (*g).max(s.spec.pool.generation);
    }
    let mut out = Vec::new();
    for s in slices {
        if newest[&(s.spec.driver.as_str(), s.spec.pool.name.as_str())] != s.spec.pool.generation {
            continue;
        }
        for d in s.spec.devices.iter().flatten() {
            let Some(node) = d.node_name.as_ref().or(s.spec.node_name.as_ref()) else {
                continue;
            };
            let attributes = d
                .attributes
                .iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let full = if k.contains('/') { k.clone() } else { format!("{}/{k}", s.spec.driver) };
                    AttrValue::from_api(v).map(|v| (full, v))
                })
                .collect();
            out.push(DeviceInfo {
                key: DeviceKey {
                    driver: s.spec.driver.clone(),
                    pool: s.spec.pool.name.clone(),
                    device: d.name.clone(),
                },
                node: node.clone(),
                attributes,
            });
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    out
}
