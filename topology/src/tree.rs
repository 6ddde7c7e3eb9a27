//! The level tree: domains of every node-scope level, and device groups inside nodes.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;

use crate::config::{LevelScope, LevelSource, TopologyConfig};
use crate::device::{DeviceInfo, DeviceKey, node_local_devices};
use crate::names;

/// Index of a node in [`ClusterTopology::nodes`].
pub type NodeIdx = usize;
/// Index of a domain in [`ClusterTopology::domains`].
pub type DomainIdx = usize;
/// Index of a device in [`ClusterTopology::devices`].
pub type DevIdx = usize;

/// A set of nodes that share a value at one node-scope level.
#[derive(Debug, Clone)]
pub struct Domain {
    /// The level (index into the configuration).
    pub level: usize,
    /// The label or attribute value; `<unset>` for nodes without one.
    pub value: String,
    /// The domain's parent one level up, if any.
    pub parent: Option<DomainIdx>,
    /// Its children one level down.
    pub children: Vec<DomainIdx>,
    /// All nodes in it, ascending.
    pub nodes: Vec<NodeIdx>,
    /// True when its nodes have no value at this level.
    pub synthetic: bool,
}

/// One node.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// `metadata.name`.
    pub name: String,
    /// Its domain at every node-scope level, widest first (last = the node's own).
    pub domains: Vec<DomainIdx>,
    /// Its devices, ascending.
    pub devices: Vec<DevIdx>,
}

/// One device and its place in the node.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    /// What the slice said.
    pub info: DeviceInfo,
    /// The node it sits in.
    pub node: NodeIdx,
    /// NVLink island inside the node, if any.
    pub island: Option<String>,
    /// Multi-node NVLink domain, if any.
    pub nvlink_domain: Option<String>,
    /// NUMA node, if published.
    pub numa: Option<String>,
    /// PCIe root, if published.
    pub pcie_root: Option<String>,
}

/// The cluster's topology: nodes, devices, and the domains of every node-scope level.
#[derive(Debug, Clone)]
pub struct ClusterTopology {
    config: TopologyConfig,
    nodes: Vec<NodeEntry>,
    node_by_name: HashMap<String, NodeIdx>,
    domains: Vec<Domain>,
    level_domains: Vec<Vec<DomainIdx>>,
    devices: Vec<DeviceEntry>,
    device_by_key: HashMap<DeviceKey, DevIdx>,
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

impl ClusterTopology {
    /// Builds the tree from nodes and the newest `ResourceSlice`s.
    pub fn build(config: &TopologyConfig, nodes: &[Node], slices: &[ResourceSlice]) -> Self {
        let mut names: Vec<&str> = nodes.iter().filter_map(|n| n.metadata.name.as_deref()).collect();
        names.sort_unstable();
        names.dedup();
        let node_obj: HashMap<&str, &Node> =
            nodes.iter().filter_map(|n| Some((n.metadata.name.as_deref()?, n))).collect();
        let node_by_name: HashMap<String, NodeIdx> =
            names.iter().enumerate().map(|(i, n)| (n.to_string(), i)).collect();

        let mut devices = Vec::new();
        let mut per_node: Vec<Vec<DevIdx>> = vec![Vec::new(); names.len()];
        for info in node_local_devices(slices) {
            let Some(&node) = node_by_name.get(&info.node) else {
                continue;
            };
            let idx = devices.len();
            per_node[node].push(idx);
            devices.push(DeviceEntry {
                island: info.attr_text(names::NVLINK_ISLAND),
                nvlink_domain: info.attr_text(names::NVLINK_DOMAIN),
                numa: info.attr_text(names::NUMA_NODE),
                pcie_root: info.attr_text(names::PCIE_ROOT),
                node,
                info,
            });
        }
        let device_by_key = devices.iter().enumerate().map(|(i, d)| (d.info.key.clone(), i)).collect();

        let node_levels = config.node_levels();
        let mut domains: Vec<Domain> = Vec::new();
        let mut level_domains: Vec<Vec<DomainIdx>> = vec![Vec::new(); node_levels];
        let mut by_path: BTreeMap<(Option<DomainIdx>, String), DomainIdx> = BTreeMap::new();
        let mut entries = Vec::with_capacity(names.len());
        for (ni, name) in names.iter().enumerate() {
            let node = node_obj[name];
            let mut parent = None;
            let mut doms = Vec::with_capacity(node_levels);
            for (level, spec) in config.levels().iter().enumerate().take(node_levels) {
                let value = if level == node_levels - 1 {
                    Some(name.to_string())
                } else {
                    level_value(&spec.source, node, per_node[ni].iter().map(|&d| &devices[d]))
                };
                // Nodes without a value share one `<unset>` domain under their parent.
                let (value, synthetic) = match value {
                    Some(v) => (v, false),
                    None => ("<unset>".to_string(), true),
                };
                let idx = *by_path.entry((parent, value.clone())).or_insert_with(|| {
                    let idx = domains.len();
                    domains.push(Domain { level, value, parent, children: Vec::new(), nodes: Vec::new(), synthetic });
                    level_domains[level].push(idx);
                    if let Some(p) = parent {
                        domains[p].children.push(idx);
                    }
                    idx
                });
                domains[idx].nodes.push(ni);
                doms.push(idx);
                parent = Some(idx);
            }
            entries.push(NodeEntry {
                name: name.to_string(),
                domains: doms,
                devices: std::mem::take(&mut per_node[ni]),
            });
        }
        Self { config: config.clone(), nodes: entries, node_by_name, domains, level_domains, devices, device_by_key }
    }

    /// The configuration the tree was built from.
    pub fn config(&self) -> &TopologyConfig {
        &self.config
    }

    /// All nodes, sorted by name.
    pub fn nodes(&self) -> &[NodeEntry] {
        &self.nodes
    }

    /// A node by name.
    pub fn node_index(&self, name: &str) -> Option<NodeIdx> {
        self.node_by_name.get(name).copied()
    }

    /// All domains of all node-scope levels.
    pub fn domains(&self) -> &[Domain] {
        &self.domains
    }

    /// The domains of one node-scope level.
    pub fn level_domains(&self, level: usize) -> &[DomainIdx] {
        self.level_domains.get(level).map(Vec::as_slice).unwrap_or(&[])
    }

    /// All devices.
    pub fn devices(&self) -> &[DeviceEntry] {
        &self.devices
    }

    /// A device by its DRA name.
    pub fn device_index(&self, key: &DeviceKey) -> Option<DevIdx> {
        self.device_by_key.get(key).copied()
    }

    /// The node's domain at a node-scope level.
    pub fn domain_of(&self, node: NodeIdx, level: usize) -> DomainIdx {
        self.nodes[node].domains[level]
    }

    /// `level=value`, for messages.
    pub fn domain_name(&self, d: DomainIdx) -> String {
        let dom = &self.domains[d];
        format!("{}={}", self.config.levels()[dom.level].name, dom.value)
    }

    /// The narrowest node-scope level at which all `nodes` share one domain; `None`
    /// when they share none (they span the cluster) or the list is empty.
    pub fn common_level(&self, nodes: &[NodeIdx]) -> Option<usize> {
        let first = *nodes.first()?;
        (0..self.config.node_levels())
            .rev()
            .find(|&l| nodes.iter().all(|&n| self.domain_of(n, l) == self.domain_of(first, l)))
    }

    /// The group two devices share at a device-scope level (`numa`, `pcie`), if both
    /// publish the attribute and it is equal and they sit in one node.
    pub fn share_device_level(&self, a: DevIdx, b: DevIdx, level: usize) -> bool {
        let (da, db) = (&self.devices[a], &self.devices[b]);
        if da.node != db.node || self.config.levels()[level].scope() != LevelScope::Devices {
            return false;
        }
        let attr = self.config.levels()[level].key();
        matches!((da.info.attr(attr), db.info.attr(attr)), (Some(x), Some(y)) if x == y)
    }
}

fn level_value<'a>(
    source: &LevelSource,
    node: &Node,
    mut devices: impl Iterator<Item = &'a DeviceEntry>,
) -> Option<String> {
    match source {
        LevelSource::NodeLabel(key) => label(node, key).map(str::to_string),
        LevelSource::DeviceAttribute { attribute, fallback_node_label, .. } => devices
            .find_map(|d| d.info.attr_text(attribute))
            .or_else(|| fallback_node_label.as_deref().and_then(|k| label(node, k)).map(str::to_string)),
    }
}
