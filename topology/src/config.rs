//! Which node label or device attribute names each topology level.

use serde::{Deserialize, Serialize};

use crate::error::TopologyError;
use crate::names;

/// Where the value of a level is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LevelSource {
    /// A node label; nodes without it form a domain of their own at this level.
    NodeLabel(String),
    /// A device attribute. For a node-scope level (e.g. a multi-node NVLink domain) the
    /// value of the node's GPUs is used, else the `fallback_node_label`; for a
    /// device-scope level (NUMA, PCIe root) devices are grouped inside the node.
    DeviceAttribute {
        /// Fully qualified attribute name.
        attribute: String,
        /// Node label to read when no device carries the attribute.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fallback_node_label: Option<String>,
        /// True when the attribute groups nodes (e.g. `nvlinkDomain`), false when it
        /// groups devices inside one node (e.g. `numaNode`).
        #[serde(default)]
        spans_nodes: bool,
    },
}

/// Whether a level groups nodes or devices inside a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelScope {
    /// The level's domains are sets of nodes.
    Nodes,
    /// The level's domains are sets of devices inside one node.
    Devices,
}

/// One level of the topology tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelSpec {
    /// Short name used in annotations (`rack`, `nvlink`, …).
    pub name: String,
    /// Where the level's value comes from.
    pub source: LevelSource,
}

impl LevelSpec {
    /// A level read from a node label.
    pub fn node_label(name: &str, label: &str) -> Self {
        Self { name: name.to_string(), source: LevelSource::NodeLabel(label.to_string()) }
    }

    /// A device-scope level read from a device attribute.
    pub fn device_attribute(name: &str, attribute: &str) -> Self {
        Self {
            name: name.to_string(),
            source: LevelSource::DeviceAttribute {
                attribute: attribute.to_string(),
                fallback_node_label: None,
                spans_nodes: false,
            },
        }
    }

    /// Whether the level groups nodes or devices.
    pub fn scope(&self) -> LevelScope {
        match &self.source {
            LevelSource::NodeLabel(_) => LevelScope::Nodes,
            LevelSource::DeviceAttribute { spans_nodes: true, .. } => LevelScope::Nodes,
            LevelSource::DeviceAttribute { .. } => LevelScope::Devices,
        }
    }

    /// The label key or attribute name, as Grove and KAI spell levels.
    pub fn key(&self) -> &str {
        match &self.source {
            LevelSource::NodeLabel(l) => l,
            LevelSource::DeviceAttribute { attribute, .. } => attribute,
        }
    }

    fn matches(&self, name_or_key: &str) -> bool {
        if self.name == name_or_key || self.key() == name_or_key {
            return true;
        }
        match &self.source {
            LevelSource::DeviceAttribute { fallback_node_label: Some(l), .. } => l == name_or_key,
            _ => false,
        }
    }
}

/// The ordered levels, widest first. Node-scope levels come first, the last of them is
/// the node itself; device-scope levels follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyConfig {
    levels: Vec<LevelSpec>,
}

impl Default for TopologyConfig {
    /// The defaults of DESIGN.md: zone, block, rack, nvlink, node, numa, pcie.
    fn default() -> Self {
        Self {
            levels: vec![
                LevelSpec::node_label("zone", "topology.kubernetes.io/zone"),
                LevelSpec::node_label("block", "phalanx.dev/block"),
                LevelSpec::node_label("rack", "phalanx.dev/rack"),
                LevelSpec {
                    name: "nvlink".into(),
                    source: LevelSource::DeviceAttribute {
                        attribute: names::NVLINK_DOMAIN.into(),
                        fallback_node_label: Some(names::CLIQUE_LABEL.into()),
                        spans_nodes: true,
                    },
                },
                LevelSpec::node_label("node", names::HOSTNAME_LABEL),
                LevelSpec::device_attribute("numa", names::NUMA_NODE),
                LevelSpec::device_attribute("pcie", names::PCIE_ROOT),
            ],
        }
    }
}

impl TopologyConfig {
    /// Checked constructor: distinct names, node-scope levels before device-scope ones,
    /// at least one node-scope level.
    pub fn new(levels: Vec<LevelSpec>) -> Result<Self, TopologyError> {
        if levels.is_empty() {
            return Err(TopologyError::NoLevels);
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut device_seen = false;
        for l in &levels {
            if !seen.insert(l.name.clone()) {
                return Err(TopologyError::DuplicateLevel(l.name.clone()));
            }
            match l.scope() {
                LevelScope::Devices => device_seen = true,
                LevelScope::Nodes if device_seen => {
                    return Err(TopologyError::LevelOrder(l.name.clone()));
                }
                LevelScope::Nodes => {}
            }
        }
        if levels[0].scope() != LevelScope::Nodes {
            return Err(TopologyError::NoNodeLevel);
        }
        Ok(Self { levels })
    }

    /// All levels, widest first.
    pub fn levels(&self) -> &[LevelSpec] {
        &self.levels
    }

    /// Number of node-scope levels; levels `0..node_levels()` group nodes and level
    /// `node_levels() - 1` is the node itself.
    pub fn node_levels(&self) -> usize {
        self.levels.iter().take_while(|l| l.scope() == LevelScope::Nodes).count()
    }

    /// Index of the node level.
    pub fn node_level(&self) -> usize {
        self.node_levels() - 1
    }

    /// Finds a level by its name (`rack`) or its key (`phalanx.dev/rack`).
    pub fn resolve(&self, name_or_key: &str) -> Result<usize, TopologyError> {
        self.levels.iter().position(|l| l.matches(name_or_key.trim())).ok_or_else(|| TopologyError::UnknownLevel {
            name: name_or_key.to_string(),
            known: self.levels.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// Index of the first device-scope level with this attribute, if any.
    pub fn device_level_for(&self, attribute: &str) -> Option<usize> {
        self.levels.iter().position(|l| l.scope() == LevelScope::Devices && l.key() == attribute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve_by_name_and_key() {
        let c = TopologyConfig::default();
        assert_eq!(c.node_levels(), 5);
        assert_eq!(c.node_level(), 4);
        assert_eq!(c.resolve("rack"), Ok(2));
        assert_eq!(c.resolve("phalanx.dev/rack"), Ok(2));
        assert_eq!(c.resolve("nvidia.com/gpu.clique"), Ok(3));
        assert_eq!(c.resolve("kubernetes.io/hostname"), Ok(4));
        assert_eq!(c.resolve("pcie"), Ok(6));
        let err = c.resolve("galaxy").unwrap_err();
        assert!(err.to_string().contains("zone, block, rack, nvlink, node, numa, pcie"), "{err}");
    }

    #[test]
    fn checked_constructor_rejects_bad_orders() {
        assert_eq!(TopologyConfig::new(vec![]), Err(TopologyError::NoLevels));
        let dup = vec![LevelSpec::node_label("a", "x"), LevelSpec::node_label("a", "y")];
        assert_eq!(TopologyConfig::new(dup), Err(TopologyError::DuplicateLevel("a".into())));
        let order = vec![
            LevelSpec::node_label("node", "kubernetes.io/hostname"),
            LevelSpec::device_attribute("numa", names::NUMA_NODE),
            LevelSpec::node_label("rack", "r"),
        ];
        assert_eq!(TopologyConfig::new(order), Err(TopologyError::LevelOrder("rack".into())));
        let no_node = vec![LevelSpec::device_attribute("numa", names::NUMA_NODE)];
        assert_eq!(TopologyConfig::new(no_node), Err(TopologyError::NoNodeLevel));
    }

    #[test]
    fn config_round_trips_through_yaml() {
        let c = TopologyConfig::default();
        let y = serde_yaml::to_string(&c).unwrap();
        let back: TopologyConfig = serde_yaml::from_str(&y).unwrap();
        assert_eq!(back, c);
    }
}
