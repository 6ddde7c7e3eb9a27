//! The GPU interconnect as a graph, and the link class and nominal bandwidth between
//! any two devices.
//!
//! Vertices are devices, PCIe roots, NUMA nodes, hosts, NVLink islands (the NVSwitch
//! plane inside a node), multi-node NVLink fabrics and the scale-out network; edges carry
//! a [`Link`]. The link between two devices is the widest path between them: its
//! bandwidth is the path's narrowest edge and its class that edge's class.

use std::collections::{BinaryHeap, HashMap};

use petgraph::graph::{NodeIndex, UnGraph};
use petgraph::visit::EdgeRef;

use crate::names;
use crate::tree::{ClusterTopology, DevIdx, NodeIdx};

/// What kind of hop a link is; declared from fastest to slowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkClass {
    /// NVLink through the node's NVSwitch plane (same NVLink island).
    NvLink,
    /// NVLink across nodes of one multi-node NVLink domain (e.g. an NVL72 rack).
    MultiNodeNvLink,
    /// Behind one PCIe root (nvidia-smi `PIX`/`PXB`).
    PcieSwitch,
    /// Across host bridges inside one NUMA node (`NODE`).
    PcieHostBridge,
    /// Across CPU sockets (`SYS`).
    CrossSocket,
    /// Over the scale-out network between nodes.
    Network,
}

/// A link class with its nominal one-way bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Link {
    /// The class of the narrowest hop.
    pub class: LinkClass,
    /// Nominal bandwidth per direction, GB/s.
    pub gbps: f64,
}

impl Link {
    /// Nominal bandwidths (GB/s per direction), from reference/prefill-decode.md:
    /// NVLink4 (Hopper) 450, NVLink5 (Blackwell) 900, PCIe Gen5 x16 64; host-bridge and
    /// socket crossings are derated; the network is one 200 Gb/s rail.
    pub fn nominal(class: LinkClass, architecture: Option<&str>) -> Self {
        let gbps = match class {
            LinkClass::NvLink | LinkClass::MultiNodeNvLink => nvlink_gbps(architecture),
            LinkClass::PcieSwitch => 64.0,
            LinkClass::PcieHostBridge => 56.0,
            LinkClass::CrossSocket => 40.0,
            LinkClass::Network => 25.0,
        };
        Self { class, gbps }
    }
}

fn nvlink_gbps(architecture: Option<&str>) -> f64 {
    match architecture.map(str::to_ascii_lowercase).as_deref() {
        Some("blackwell") => 900.0,
        Some("ampere") => 300.0,
        _ => 450.0,
    }
}

/// A vertex of the interconnect graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Vertex {
    /// A device.
    Device(DevIdx),
    /// A PCIe root of a node.
    PcieRoot(NodeIdx, String),
    /// A NUMA node of a node.
    Numa(NodeIdx, String),
    /// The host (CPU complex) of a node.
    Host(NodeIdx),
    /// The NVSwitch plane of one NVLink island in a node.
    NvLinkIsland(NodeIdx, String),
    /// A multi-node NVLink fabric.
    Fabric(String),
    /// The scale-out network.
    Network,
}

/// The interconnect graph of a set of nodes.
#[derive(Debug, Clone)]
pub struct Interconnect {
    graph: UnGraph<Vertex, Link>,
    index: HashMap<Vertex, NodeIndex>,
}

impl Interconnect {
    /// Builds the graph of `nodes` (e.g. one node, or the nodes of an NVLink domain).
    pub fn build(topo: &ClusterTopology, nodes: &[NodeIdx]) -> Self {
        let mut me = Self { graph: UnGraph::new_undirected(), index: HashMap::new() };
        let net = me.vertex(Vertex::Network);
        for &n in nodes {
            let host = me.vertex(Vertex::Host(n));
            me.edge(host, net, Link::nominal(LinkClass::Network, None));
            for &d in &topo.nodes()[n].devices {
                let dev = &topo.devices()[d];
                let arch = dev.info.attr_text(names::ARCHITECTURE);
                let v = me.vertex(Vertex::Device(d));
                let numa = match &dev.numa {
                    Some(numa) => {
                        let nv = me.vertex(Vertex::Numa(n, numa.clone()));
                        me.edge(nv, host, Link::nominal(LinkClass::CrossSocket, None));
                        nv
                    }
                    None => host,
                };
                match &dev.pcie_root {
                    Some(root) => {
                        let r = me.vertex(Vertex::PcieRoot(n, root.clone()));
                        me.edge(v, r, Link::nominal(LinkClass::PcieSwitch, None));
                        me.edge(r, numa, Link::nominal(LinkClass::PcieHostBridge, None));
                    }
                    None => me.edge(v, numa, Link::nominal(LinkClass::PcieHostBridge, None)),
                }
                let nvl = Link::nominal(LinkClass::NvLink, arch.as_deref());
                let mnnvl = Link::nominal(LinkClass::MultiNodeNvLink, arch.as_deref());
                let island = dev.island.as_ref().map(|i| {
                    let iv = me.vertex(Vertex::NvLinkIsland(n, i.clone()));
                    me.edge(v, iv, nvl);
                    iv
                });
                if let Some(fabric) = &dev.nvlink_domain {
                    let f = me.vertex(Vertex::Fabric(fabric.clone()));
                    me.edge(island.unwrap_or(v), f, mnnvl);
                }
            }
        }
        me
    }

    fn vertex(&mut self, v: Vertex) -> NodeIndex {
        if let Some(&i) = self.index.get(&v) {
            return i;
        }
        let i = self.graph.add_node(v.clone());
        self.index.insert(v, i);
        i
    }

    fn edge(&mut self, a: NodeIndex, b: NodeIndex, link: Link) {
        if self.graph.find_edge(a, b).is_none() {
            self.graph.add_edge(a, b, link);
        }
    }

    /// The underlying graph.
    pub fn graph(&self) -> &UnGraph<Vertex, Link> {
        &self.graph
    }

    /// The widest path between two devices of the graph; `None` if either is not in it.
    pub fn link_between(&self, a: DevIdx, b: DevIdx) -> Option<Link> {
        let (&sa, &sb) = (self.index.get(&Vertex::Device(a))?, self.index.get(&Vertex::Device(b))?);
        if sa == sb {
            return Some(Link { class: LinkClass::NvLink, gbps: f64::INFINITY });
        }
        // Max-bottleneck Dijkstra; bandwidths are finite positive, so ordering by the
        // bits of an f64 is monotone.
        let mut best: HashMap<NodeIndex, Link> = HashMap::new();
        let mut heap = BinaryHeap::new();
        best.insert(sa, Link { class: LinkClass::NvLink, gbps: f64::INFINITY });
        heap.push((u64::MAX, sa.index()));
        while let Some((bits, v)) = heap.pop() {
            let v = NodeIndex::new(v);
            let cur = best[&v];
            if bits != cur.gbps.to_bits() && bits != u64::MAX {
                continue;
            }
            if v == sb {
                return Some(cur);
            }
            // Do not route through other devices.
            if v != sa && matches!(self.graph[v], Vertex::Device(_)) {
                continue;
            }
            for e in self.graph.edges(v) {
                let w = e.target();
                let l = *e.weight();
                let cand = if l.gbps < cur.gbps { l } else { Link { class: cur.class.max(l.class), gbps: cur.gbps } };
                let better =
                    best.get(&w).is_none_or(|b| cand.gbps > b.gbps || (cand.gbps == b.gbps && cand.class < b.class));
                if better {
                    best.insert(w, cand);
                    heap.push((cand.gbps.to_bits(), w.index()));
                }
            }
        }
        None
    }
}

/// The link between two devices from their attributes alone (no graph): the fast path
/// the solver uses; agrees with [`Interconnect::link_between`].
pub fn classify(topo: &ClusterTopology, a: DevIdx, b: DevIdx) -> Link {
    let (da, db) = (&topo.devices()[a], &topo.devices()[b]);
    let arch = da.info.attr_text(names::ARCHITECTURE);
    if da.node == db.node {
        if da.island.is_some() && da.island == db.island {
            return Link::nominal(LinkClass::NvLink, arch.as_deref());
        }
        if da.nvlink_domain.is_some() && da.nvlink_domain == db.nvlink_domain {
            return Link::nominal(LinkClass::MultiNodeNvLink, arch.as_deref());
        }
        if da.pcie_root.is_some() && da.pcie_root == db.pcie_root {
            return Link::nominal(LinkClass::PcieSwitch, None);
        }
        if da.numa == db.numa {
            return Link::nominal(LinkClass::PcieHostBridge, None);
        }
        return Link::nominal(LinkClass::CrossSocket, None);
    }
    if da.nvlink_domain.is_some() && da.nvlink_domain == db.nvlink_domain {
        return Link::nominal(LinkClass::MultiNodeNvLink, arch.as_deref());
    }
    Link::nominal(LinkClass::Network, None)
}
