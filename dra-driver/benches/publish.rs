//! Publishing many fake nodes from one process against a real apiserver: 1,000 nodes ×
//! 8 GPUs (hgx-h100-8) by default. Target: ≤ 30 s for the GPU pools.
//!
//! `cargo bench -p phalanx-dra-driver --bench publish` (`PUBLISH_BENCH_NODES` to change
//! the node count).

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::api::{Api, ListParams, PostParams};
use phalanx_dra_driver::attributes::{self, GPU_DRIVER, NIC_DRIVER};
use phalanx_dra_driver::discovery::profile::{Profile, ProfileDiscovery};
use phalanx_dra_driver::discovery::{Discovery, NodeContext};
use phalanx_dra_driver::publisher::{NodeRef, Publisher};
use phalanx_testenv::{Options, TestEnv};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("PUBLISH_BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let env = TestEnv::start(Options::default().controller_manager(false).kwok(false).kube_scheduler(false)).await?;
    let client = env.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    let refs: Vec<NodeRef> = futures::stream::iter(0..n)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let node: Node =
                    serde_json::from_value(json!({ "metadata": { "name": format!("fake-{i:05}") } })).unwrap();
                let created = nodes.create(&PostParams::default(), &node).await.expect("node created");
                NodeRef { name: created.metadata.name.unwrap(), uid: created.metadata.uid.unwrap() }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    println!("created {n} Nodes in {:.2?}", started.elapsed());

    let discovery = ProfileDiscovery::new(Profile::load("hgx-h100-8")?);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let mut inventories = Vec::new();
    let publisher = Publisher::new(client.clone());
    for (index, node) in refs.iter().enumerate() {
        let inv = discovery.discover(&NodeContext { name: node.name.clone(), index, labels: Default::default() })?;
        publisher.set_pool(GPU_DRIVER, node.clone(), attributes::gpu_devices(&inv, &Default::default(), &now));
        inventories.push(inv);
    }
    let started = Instant::now();
    let written = publisher.sync_all().await?;
    let gpu_time = started.elapsed();
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let listed = slices.list(&ListParams::default().fields(&format!("spec.driver={GPU_DRIVER}"))).await?.items;
    let devices: usize = listed.iter().map(|s| s.spec.devices.as_ref().map_or(0, Vec::len)).sum();
    anyhow::ensure!(written == n && listed.len() == n && devices == 8 * n, "all pools published");
    println!("published {n} nodes x 8 GPUs ({} slices, {devices} devices) in {gpu_time:.2?}", listed.len());

    let started = Instant::now();
    let unchanged = publisher.sync_all().await?;
    println!("re-sync with nothing changed: {unchanged} pools written in {:.2?}", started.elapsed());

    for (node, inv) in refs.iter().zip(&inventories) {
        publisher.set_pool(NIC_DRIVER, node.clone(), attributes::nic_devices(inv));
    }
    let started = Instant::now();
    let written = publisher.sync_all().await?;
    println!("published {written} NIC pools (12 NICs each) in {:.2?}", started.elapsed());
    Ok(())
}
