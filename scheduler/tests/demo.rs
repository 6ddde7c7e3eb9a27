//! The demo's cluster and workloads, checked: the fake nodes of `hack/demo-nodes.yaml`
//! with devices published from the driver's hardware profiles (the same publisher the
//! `publish` subcommand runs), `deploy/examples/demo/` applied, the scheduler in this
//! process. Every workload lands as its comments say; the gang that cannot fit waits
//! whole, says why, and holds nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use phalanx_dra_driver::agent::Backend;
use phalanx_dra_driver::fleet::{Fleet, NodeChoice};
use phalanx_dra_driver::health::Faults;
use phalanx_dra_driver::publisher::Publisher;
use phalanx_scheduler::service::{self, config::SchedulerConfig};
use phalanx_testenv::{TestEnv, apply, wait};

const NS: &str = "demo";
const TIMEOUT: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn publish(client: &Client, profile: &str) {
    let discovery = Backend::Profile(profile.into()).open().expect("built-in profile");
    let selector = format!("phalanx.dev/profile={profile}");
    let fleet = Fleet::discover(client, discovery.as_ref(), NodeChoice::Selector(&selector), true).await.unwrap();
    let publisher = Publisher::new(client.clone());
    fleet.set_pools(&publisher, &Faults::default());
    publisher.sync_all().await.unwrap();
}

/// `pool/device` → the device's string attributes, by qualified name.
async fn device_attributes(client: &Client) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for slice in Api::<ResourceSlice>::all(client.clone()).list(&ListParams::default()).await.unwrap() {
        let driver = slice.spec.driver.clone();
        for device in slice.spec.devices.unwrap_or_default() {
            // Unqualified names are in the driver's own domain.
            let qualified = |k: String| if k.contains('/') { k } else { format!("{driver}/{k}") };
            let attrs = device
                .attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.string.map(|s| (qualified(k), s)))
                .collect();
            out.insert(format!("{}/{}", slice.spec.pool.name, device.name), attrs);
        }
    }
    out
}

/// The devices allocated to a pod's claims, as `pool/device`.
async fn devices_of(client: &Client, pod: &Pod) -> Vec<String> {
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), NS);
    let mut out = Vec::new();
    for status in pod.status.as_ref().and_then(|s| s.resource_claim_statuses.clone()).unwrap_or_default() {
        let Some(name) = status.resource_claim_name else { continue };
        let claim = claims.get(&name).await.unwrap();
        for r in
            claim.status.and_then(|s| s.allocation).and_then(|a| a.devices).and_then(|d| d.results).unwrap_or_default()
        {
            out.push(format!("{}/{}", r.pool, r.device));
        }
    }
    out
}

fn gang_of(pod: &Pod) -> String {
    pod.labels().get("phalanx.dev/gang").cloned().unwrap_or_else(|| "-".into())
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

#[tokio::test]
async fn demo_workloads_land_as_described() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    apply::apply_file(&client, &workspace().join("deploy/dra-driver/deviceclasses.yaml")).await.unwrap();
    apply::apply_file(&client, &workspace().join("hack/demo-nodes.yaml")).await.unwrap();
    publish(&client, "gb200-nvl72").await;
    publish(&client, "hgx-h100-8").await;
    let attributes = device_attributes(&client).await;

    let config = SchedulerConfig {
        bind_address: "127.0.0.1:0".parse().unwrap(),
        leader_election: service::config::LeaderElectionConfig { enabled: false, ..Default::default() },
        ..Default::default()
    };
    let scheduler = service::start(client.clone(), config, "demo-test".into()).await.unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("deploy/examples/demo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in &files {
        apply::apply_file(&client, file).await.unwrap();
    }

    // 4 P/D workers + 16 training workers (an indexed Job) + 5 single pods fit; the
    // 40-worker gang does not, and every one of its pods says so.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let all = wait::poll(TIMEOUT, "25 pods bound and 40 told why they wait", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        let bound = list.iter().filter(|p| gang_of(p) != "too-big" && node_of(p).is_some()).count();
        let told = list
            .iter()
            .filter(|p| gang_of(p) == "too-big")
            .filter(|p| {
                p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
                    cs.iter().any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"))
                })
            })
            .count();
        (bound == 25 && told == 40).then_some(list)
    })
    .await;

    let mut by_gang: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in &all {
        by_gang.entry(gang_of(pod)).or_default().push(pod);
    }
    let mut every_device = Vec::new();
    for gang in ["llama-pd", "train"] {
        let mut domains = BTreeSet::new();
        for pod in &by_gang[gang] {
            let devices = devices_of(&client, pod).await;
            assert_eq!(devices.len(), 4, "{}: 4 GPUs", pod.name_any());
            for d in &devices {
                assert!(d.starts_with(&format!("{}/", node_of(pod).unwrap())), "{d} is on the pod's node");
                domains.insert(attributes[d]["gpu.phalanx.dev/nvlinkDomain"].clone());
            }
            every_device.extend(devices);
        }
        assert_eq!(domains.len(), 1, "gang {gang} inside one NVLink domain: {domains:?}");
    }
    assert_eq!(by_gang["train"].len(), 16);
    for pod in &by_gang["-"] {
        let devices = devices_of(&client, pod).await;
        let want = if pod.name_any().starts_with("hgx-job") { 8 } else { 1 };
        assert_eq!(devices.len(), want, "{}", pod.name_any());
        let islands: BTreeSet<_> =
            devices.iter().map(|d| attributes[d]["gpu.phalanx.dev/nvlinkIsland"].clone()).collect();
        assert_eq!(islands.len(), 1, "{}: one NVLink island", pod.name_any());
        every_device.extend(devices);
    }
    let distinct: BTreeSet<_> = every_device.iter().collect();
    assert_eq!(distinct.len(), every_device.len(), "no device given twice");

    let too_big = &by_gang["too-big"];
    assert_eq!(too_big.len(), 40);
    for pod in too_big {
        assert_eq!(node_of(pod), None, "{} not bound", pod.name_any());
        assert!(devices_of(&client, pod).await.is_empty(), "{} holds no device", pod.name_any());
    }
    let message = too_big[0]
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("nvlink"), "the reason names the required level: {message}");
    scheduler.shutdown().await;
}
