//! The mutable state a placement changes, and the undo log that makes a gang's
//! placement one transaction.

use std::collections::HashMap;

use k8s_openapi::api::resource::v1::AllocationResult;
use phalanx_topology::{ClusterTopology, DevIdx, DeviceKey, FreeCapacity, NodeIdx};

use super::claims::ClaimKey;
use super::nodes::PodRequests;
use crate::dra::AllocatedState;

/// CPU, memory and pods used on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// Millicores requested.
    pub cpu_milli: i128,
    /// Memory requested, milli-bytes.
    pub memory_milli: i128,
    /// Pods.
    pub pods: i64,
}

/// Devices in use, free capacity, node usage, and where claims and P/D groups sit.
pub struct ClusterState {
    /// What the DRA allocator sees as taken.
    pub allocated: AllocatedState,
    /// Free devices per node, island and domain.
    pub capacity: FreeCapacity,
    /// Per node.
    pub usage: Vec<NodeUsage>,
    /// Claims allocated by plans of this session, and their node.
    pub claim_node: HashMap<ClaimKey, NodeIdx>,
    /// `(namespace, pd-group)` → nodes of members already placed.
    pub pd_nodes: HashMap<(String, String), Vec<NodeIdx>>,
}

/// The devices of an allocation that the topology knows.
pub fn result_devices(topo: &ClusterTopology, r: &AllocationResult) -> Vec<DevIdx> {
    r.devices
        .as_ref()
        .and_then(|d| d.results.as_ref())
        .into_iter()
        .flatten()
        .filter(|x| x.admin_access != Some(true))
        .filter_map(|x| {
            topo.device_index(&DeviceKey { driver: x.driver.clone(), pool: x.pool.clone(), device: x.device.clone() })
        })
        .collect()
}

enum Undo {
    Allocation { claim: ClaimKey, result: Box<AllocationResult>, devices: Vec<DevIdx> },
    Pod { node: NodeIdx, req: PodRequests },
    PdNode { key: (String, String) },
}

/// Tentative changes to a [`ClusterState`], undone in reverse order unless committed.
#[derive(Default)]
pub struct Transaction {
    log: Vec<Undo>,
}

impl Transaction {
    /// A position to roll back to.
    pub fn mark(&self) -> usize {
        self.log.len()
    }

    /// Records a claim allocation: devices become taken.
    pub fn allocate(
        &mut self,
        st: &mut ClusterState,
        topo: &ClusterTopology,
        claim: ClaimKey,
        node: NodeIdx,
        result: AllocationResult,
    ) {
        st.allocated.add(&result);
        let devices = result_devices(topo, &result);
        for &d in &devices {
            st.capacity.take(topo, d);
        }
        st.claim_node.insert(claim.clone(), node);
        self.log.push(Undo::Allocation { claim, result: Box::new(result), devices });
    }

    /// Records a pod on a node.
    pub fn add_pod(&mut self, st: &mut ClusterState, node: NodeIdx, req: &PodRequests) {
        let u = &mut st.usage[node];
        u.cpu_milli += req.cpu_milli;
        u.memory_milli += req.memory_milli;
        u.pods += 1;
        self.log.push(Undo::Pod { node, req: req.clone() });
    }

    /// Records a P/D group member on a node.
    pub fn add_pd_node(&mut self, st: &mut ClusterState, key: (String, String), node: NodeIdx) {
        st.pd_nodes.entry(key.clone()).or_default().push(node);
        self.log.push(Undo::PdNode { key });
    }

    /// Undoes everything after `mark`, newest first.
    pub fn rollback_to(&mut self, st: &mut ClusterState, topo: &ClusterTopology, mark: usize) {
        while self.log.len() > mark {
            match self.log.pop() {
                Some(Undo::Allocation { claim, result, devices }) => {
                    st.allocated.remove(&result);
                    for d in devices {
                        st.capacity.give(topo, d);
                    }
                    st.claim_node.remove(&claim);
                }
                Some(Undo::Pod { node, req }) => {
                    let u = &mut st.usage[node];
                    u.cpu_milli -= req.cpu_milli;
                    u.memory_milli -= req.memory_milli;
                    u.pods -= 1;
                }
                Some(Undo::PdNode { key }) => {
                    if let Some(v) = st.pd_nodes.get_mut(&key) {
                        v.pop();
                        if v.is_empty() {
                            st.pd_nodes.remove(&key);
                        }
                    }
                }
                None => break,
            }
        }
    }

    /// Keeps every change.
    pub fn commit(self) {}
}
