//! Free device counts per node, per NVLink island and per domain, updated in place as
//! devices are taken and given back.

use std::collections::BTreeSet;

use crate::device::DeviceKey;
use crate::tree::{ClusterTopology, DevIdx, DomainIdx, NodeIdx};

/// Free devices per driver, for every node and every domain.
#[derive(Debug, Clone)]
pub struct FreeCapacity {
    drivers: Vec<String>,
    device_driver: Vec<usize>,
    free: Vec<bool>,
    node_total: Vec<Vec<u32>>,
    node_free: Vec<Vec<u32>>,
    domain_total: Vec<Vec<u32>>,
    domain_free: Vec<Vec<u32>>,
    /// Per node: (island, free GPUs in it).
    islands: Vec<Vec<(String, u32)>>,
    device_island: Vec<Option<usize>>,
    /// Per driver: (free, node), ascending, for best-fit lookups.
    by_free: Vec<BTreeSet<(u32, NodeIdx)>>,
}

impl FreeCapacity {
    /// Counts every device of `topo` as free unless `is_allocated` says otherwise.
    pub fn new(topo: &ClusterTopology, is_allocated: impl Fn(&DeviceKey) -> bool) -> Self {
        let mut drivers: Vec<String> = topo.devices().iter().map(|d| d.info.key.driver.clone()).collect();
        drivers.sort_unstable();
        drivers.dedup();
        let nd = drivers.len();
        let n_nodes = topo.nodes().len();
        let mut me = Self {
            device_driver: topo
                .devices()
                .iter()
                .map(|d| drivers.binary_search(&d.info.key.driver).unwrap_or(0))
                .collect(),
            drivers,
            free: vec![false; topo.devices().len()],
            node_total: vec![vec![0; nd]; n_nodes],
            node_free: vec![vec![0; nd]; n_nodes],
            domain_total: vec![vec![0; nd]; topo.domains().len()],
            domain_free: vec![vec![0; nd]; topo.domains().len()],
            islands: vec![Vec::new(); n_nodes],
            device_island: vec![None; topo.devices().len()],
            by_free: vec![BTreeSet::new(); nd],
        };
        for (i, d) in topo.devices().iter().enumerate() {
            let drv = me.device_driver[i];
            me.node_total[d.node][drv] += 1;
            for &dom in &topo.nodes()[d.node].domains {
                me.domain_total[dom][drv] += 1;
            }
            if let Some(island) = &d.island {
                let isl = &mut me.islands[d.node];
                let pos = isl.iter().position(|(n, _)| n == island).unwrap_or_else(|| {
                    isl.push((island.clone(), 0));
                    isl.len() - 1
                });
                me.device_island[i] = Some(pos);
            }
        }
        for drv in 0..nd {
            for n in 0..n_nodes {
                me.by_free[drv].insert((0, n));
            }
        }
        for (i, d) in topo.devices().iter().enumerate() {
            if !is_allocated(&d.info.key) {
                me.give(topo, i);
            }
        }
        me
    }

    /// Driver names, indexed as in the per-driver counts.
    pub fn drivers(&self) -> &[String] {
        &self.drivers
    }

    /// Index of a driver, if any device of it exists.
    pub fn driver_index(&self, driver: &str) -> Option<usize> {
        self.drivers.iter().position(|d| d == driver)
    }

    /// Whether the device is free.
    pub fn is_free(&self, dev: DevIdx) -> bool {
        self.free[dev]
    }

    /// Marks a device taken. Returns false (and changes nothing) if it already was.
    pub fn take(&mut self, topo: &ClusterTopology, dev: DevIdx) -> bool {
        if !self.free[dev] {
            return false;
        }
        self.free[dev] = false;
        self.adjust(topo, dev, false);
        true
    }

    /// Marks a device free again. Returns false (and changes nothing) if it already was.
    pub fn give(&mut self, topo: &ClusterTopology, dev: DevIdx) -> bool {
        if self.free[dev] {
            return false;
        }
        self.free[dev] = true;
        self.adjust(topo, dev, true);
        true
    }

    fn adjust(&mut self, topo: &ClusterTopology, dev: DevIdx, up: bool) {
        let drv = self.device_driver[dev];
        let node = topo.devices()[dev].node;
        let old = self.node_free[node][drv];
        let new = if up { old + 1 } else { old - 1 };
        self.by_free[drv].remove(&(old, node));
        self.by_free[drv].insert((new, node));
        self.node_free[node][drv] = new;
        for &dom in &topo.nodes()[node].domains {
            let c = &mut self.domain_free[dom][drv];
            *c = if up { *c + 1 } else { *c - 1 };
        }
        if let Some(i) = self.device_island[dev] {
            let c = &mut self.islands[node][i].1;
            *c = if up { *c + 1 } else { *c - 1 };
        }
    }

    /// Free devices of a driver on a node.
    pub fn node_free(&self, node: NodeIdx, driver: usize) -> u32 {
        self.node_free[node][driver]
    }

    /// All devices of a driver on a node.
    pub fn node_total(&self, node: NodeIdx, driver: usize) -> u32 {
        self.node_total[node][driver]
    }

    /// Free devices of a driver in a domain.
    pub fn domain_free(&self, domain: DomainIdx, driver: usize) -> u32 {
        self.domain_free[domain][driver]
    }

    /// All devices of a driver in a domain.
    pub fn domain_total(&self, domain: DomainIdx, driver: usize) -> u32 {
        self.domain_total[domain][driver]
    }

    /// The most free devices in any one NVLink island of the node (0 without islands).
    pub fn max_island_free(&self, node: NodeIdx) -> u32 {
        self.islands[node].iter().map(|(_, c)| *c).max().unwrap_or(0)
    }

    /// Nodes with at least `min` free devices of `driver`, fullest (fewest free) first.
    pub fn nodes_with_free(&self, driver: usize, min: u32) -> impl Iterator<Item = (u32, NodeIdx)> + '_ {
        self.by_free[driver].range((min, 0)..).copied()
    }
}
