//! NodePrepareResources latency on the profile backend, over the real unix socket,
//! against claims on a real apiserver (each prepare fetches its claim, writes the
//! checkpoint twice with fsync and a CDI spec). Target: p99 ≤ 5 ms.
//!
//! `cargo bench -p phalanx-dra-driver --bench prepare` (PHALANX_ENVTEST_BIN set, or the
//! binaries built by hack/envtest). `PREPARE_BENCH_CLAIMS` sets the number of claims.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, Patch, PatchParams, PostParams};
use phalanx_dra_driver::attributes::GPU_DRIVER;
use phalanx_dra_driver::cdi::CdiWriter;
use phalanx_dra_driver::checkpoint::Checkpoint;
use phalanx_dra_driver::discovery::profile::{Profile, ProfileDiscovery};
use phalanx_dra_driver::discovery::{Discovery, NodeContext};
use phalanx_dra_driver::health::Faults;
use phalanx_dra_driver::plugin::{self, PluginConfig};
use phalanx_dra_driver::prepare::NodeState;
use phalanx_dra_driver::proto::dra_v1 as v1;
use phalanx_dra_driver::uds;
use phalanx_testenv::{Options, TestEnv};
use serde_json::json;
use tokio::sync::{Mutex, watch};

const NODE: &str = "bench-node";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<28} n={:<5} p50={:>8.3?} p90={:>8.3?} p99={:>8.3?} max={:>8.3?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples.last().unwrap()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("PREPARE_BENCH_CLAIMS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let env = TestEnv::start(Options::default().controller_manager(false).kwok(false).kube_scheduler(false)).await?;
    let client = env.client();
    let node: Node = serde_json::from_value(json!({ "metadata": { "name": NODE } }))?;
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await?;

    // Claims i → gpu-(i % 8), allocated as a scheduler would write it.
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let mut uids = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("c-{i}");
        let claim: ResourceClaim = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "devices": { "requests": [{ "name": "gpu", "exactly": { "deviceClassName": "gpu.phalanx.dev" } }] } }
        }))?;
        let created = claims.create(&PostParams::default(), &claim).await?;
        let status = json!({ "status": { "allocation": { "devices": { "results": [
            { "request": "gpu", "driver": GPU_DRIVER, "pool": NODE, "device": format!("gpu-{}", i % 8) }
        ] } } } });
        claims.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        uids.push(created.metadata.uid.unwrap());
    }

    let dir =
        tempfile::Builder::new().prefix("prep").tempdir_in(std::env::var("BENCH_DIR").unwrap_or("/tmp".into()))?;
    let config = PluginConfig { driver: GPU_DRIVER.into(), kubelet_root: dir.path().join("kubelet") };
    let inventory = ProfileDiscovery::new(Profile::load("hgx-h100-8")?).discover(&NodeContext::named(NODE))?;
    let checkpoint = Checkpoint::load(&config.plugin_dir().join("checkpoint.json"), "bench")?;
    let (state, _) = NodeState::recover(
        GPU_DRIVER,
        NODE,
        inventory,
        checkpoint,
        CdiWriter::new(dir.path().join("cdi"), GPU_DRIVER),
    )?;
    let (_faults_tx, faults_rx) = watch::channel(Faults::default());
    let (registered, _) = watch::channel(None);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let (config, client) = (config.clone(), client.clone());
        tokio::spawn(async move {
            let health = plugin::HealthSource { faults: faults_rx, node: NODE.into() };
            plugin::serve(&config, Arc::new(Mutex::new(state)), client, Some(health), registered, async {
                let _ = stop_rx.await;
            })
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let channel = loop {
        match uds::connect(&config.service_socket()).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut client = v1::dra_plugin_client::DraPluginClient::new(channel);
    let claim =
        |i: usize, uid: &str| v1::Claim { namespace: "default".into(), uid: uid.into(), name: format!("c-{i}") };

    let (mut prepare, mut repeat, mut unprepare, mut get) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, uid) in uids.iter().enumerate() {
        // Baseline: the apiserver GET every new prepare makes.
        let start = Instant::now();
        claims.get(&format!("c-{i}")).await?;
        get.push(start.elapsed());
        let start = Instant::now();
        let r = client.node_prepare_resources(v1::NodePrepareResourcesRequest { claims: vec![claim(i, uid)] }).await?;
        prepare.push(start.elapsed());
        let error = &r.get_ref().claims[uid].error;
        anyhow::ensure!(error.is_empty(), "prepare c-{i}: {error}");
        let start = Instant::now();
        client.node_prepare_resources(v1::NodePrepareResourcesRequest { claims: vec![claim(i, uid)] }).await?;
        repeat.push(start.elapsed());
        let start = Instant::now();
        client.node_unprepare_resources(v1::NodeUnprepareResourcesRequest { claims: vec![claim(i, uid)] }).await?;
        unprepare.push(start.elapsed());
    }
    println!("NodePrepareResources on hgx-h100-8 (profile), state in {}:", dir.path().display());
    report("prepare (new claim)", prepare);
    report("prepare (repeat, idempotent)", repeat);
    report("unprepare", unprepare);
    report("baseline: GET of the claim", get);
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
