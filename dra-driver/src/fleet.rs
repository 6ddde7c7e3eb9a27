//! One process publishing a hardware profile's devices for many (fake) nodes: the
//! `publish` subcommand, scale benchmarks and the local demo.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::ListParams;

use crate::attributes::{self, GPU_DRIVER, NIC_DRIVER};
use crate::discovery::{Discovery, NodeContext, NodeInventory};
use crate::health::Faults;
use crate::mig::MigInventory;
use crate::publisher::{NodeRef, Publisher};

/// Why a fleet could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Listing the Nodes failed.
    #[error("listing Nodes: {0}")]
    ListNodes(#[source] kube::Error),
    /// Nothing matched.
    #[error("no Nodes to publish for: pass --nodes or a --node-selector that matches")]
    NoNodes,
    /// The profile could not describe one of the nodes.
    #[error("discovering devices for node {node}: {source}")]
    Discover {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: crate::discovery::Error,
    },
}

/// The nodes a fleet publishes for, each with the inventory the profile gives it.
pub struct Fleet {
    targets: Vec<(NodeRef, NodeInventory, MigInventory)>,
    nics: bool,
}

/// Which Nodes a fleet serves.
pub enum NodeChoice<'a> {
    /// Nodes matching a label selector.
    Selector(&'a str),
    /// Nodes by name.
    Names(&'a [String]),
}

impl Fleet {
    /// Lists the chosen Nodes (sorted by name, so a node's index is stable) and discovers
    /// each one's devices from `discovery`. `nics` also publishes the profile's NICs
    /// under `nic.phalanx.dev`.
    pub async fn discover(
        client: &kube::Client,
        discovery: &dyn Discovery,
        choice: NodeChoice<'_>,
        nics: bool,
    ) -> Result<Self, FleetError> {
        let api: Api<Node> = Api::all(client.clone());
        let selector = match choice {
            NodeChoice::Selector(s) => Some(s.to_owned()),
            NodeChoice::Names(_) => None,
        };
        let mut listed = api
            .list(&ListParams { label_selector: selector, ..Default::default() })
            .await
            .map_err(FleetError::ListNodes)?
            .items;
        if let NodeChoice::Names(names) = choice {
            listed.retain(|n| n.metadata.name.as_ref().is_some_and(|name| names.contains(name)));
        }
        listed.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        if listed.is_empty() {
            return Err(FleetError::NoNodes);
        }
        let mut targets = Vec::with_capacity(listed.len());
        for (index, node) in listed.into_iter().enumerate() {
            let name = node.metadata.name.clone().unwrap_or_default();
            let node_ref = NodeRef { name: name.clone(), uid: node.metadata.uid.clone().unwrap_or_default() };
            let ctx =
                NodeContext { name: name.clone(), index, labels: node.metadata.labels.clone().unwrap_or_default() };
            let discovered =
                discovery.discover(&ctx).and_then(|inventory| Ok((inventory, discovery.discover_mig(&ctx)?)));
            let (inventory, mig) = discovered.map_err(|source| FleetError::Discover { node: name, source })?;
            targets.push((node_ref, inventory, mig));
        }
        Ok(Fleet { targets, nics })
    }

    /// How many nodes the fleet serves.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True when it serves none (never, after [`Fleet::discover`]).
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Sets every node's pools on `publisher`, with `faults` as device taints.
    pub fn set_pools(&self, publisher: &Publisher, faults: &Faults) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for (node, inventory, mig) in &self.targets {
            let pool = attributes::gpu_pool(inventory, mig, &faults.for_node(&node.name), &now);
            publisher.set_pool_with_counters(GPU_DRIVER, node.clone(), pool.devices, pool.shared_counters);
            if self.nics && !inventory.nics.is_empty() {
                publisher.set_pool(NIC_DRIVER, node.clone(), attributes::nic_devices(inventory));
            }
        }
    }
}
