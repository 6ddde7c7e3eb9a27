//! The scheduler binary SIGKILLed between claim writes and bindings, then restarted:
//! the gang ends fully bound, no device is in two claims.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use phalanx_testenv::{TestEnv, fixtures, wait};
use serde_json::json;

const NS: &str = "default";
const TIMEOUT: Duration = Duration::from_secs(90);

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object matches the API type")
}

/// The scheduler process, killed on drop (also when the test fails).
struct Scheduler(Child);

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scheduler(env: &TestEnv, failpoint: Option<&std::path::Path>, log: &str) -> Scheduler {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phalanx-scheduler"));
    cmd.args(["run", "--bind-address", "127.0.0.1:0", "--identity", log])
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .env("RUST_LOG", "info,phalanx_scheduler=debug")
        .env_remove("PHALANX_FAILPOINT_PAUSE_AFTER_RESERVE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(env.dir().join(format!("logs/{log}.log"))).unwrap())
        .stderr(std::fs::File::create(env.dir().join(format!("logs/{log}.err"))).unwrap());
    if let Some(path) = failpoint {
        cmd.env("PHALANX_FAILPOINT_PAUSE_AFTER_RESERVE", path);
    }
    Scheduler(cmd.spawn().expect("scheduler binary starts"))
}

/// Two kwok nodes with four GPUs each.
async fn nodes(client: &Client) {
    fixtures::device_class(client, "gpu.phalanx.dev", "device.driver == 'gpu.phalanx.dev'").await;
    for n in 0..2 {
        let devices: Vec<_> = (0..4).map(|i| json!({ "name": format!("gpu-{i}") })).collect();
        let allocatable = json!({ "cpu": "64", "memory": "512Gi", "pods": "110" });
        fixtures::gpu_node(client, &format!("node-{n}"), json!({}), allocatable, devices).await;
    }
}

/// A gang of four pods with two GPUs each: all eight GPUs.
async fn cluster(client: &Client) {
    nodes(client).await;
    for i in 0..4 {
        let claim: ResourceClaim = from_json(json!({
            "metadata": { "name": format!("claim-{i}") },
            "spec": { "devices": { "requests": [{ "name": "gpu", "exactly": { "deviceClassName": "gpu.phalanx.dev", "count": 2 } }] } }
        }));
        Api::<ResourceClaim>::namespaced(client.clone(), NS).create(&PostParams::default(), &claim).await.unwrap();
        let pod: Pod = from_json(json!({
            "metadata": { "name": format!("member-{i}"), "labels": { "phalanx.dev/gang": "crash" },
                          "annotations": { "phalanx.dev/gang-min-members": "4" } },
            "spec": {
                "schedulerName": "phalanx-scheduler",
                "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
                "resourceClaims": [{ "name": "gpu", "resourceClaimName": format!("claim-{i}") }],
                "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10", "resources": { "claims": [{ "name": "gpu" }] } }]
            }
        }));
        Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &pod).await.unwrap();
    }
}

#[tokio::test]
async fn sigkill_between_claims_and_bindings_then_restart_binds_the_whole_gang() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    cluster(&client).await;

    let marker = env.dir().join("reserved");
    let mut first = scheduler(&env, Some(&marker), "scheduler-1");
    wait::poll(TIMEOUT, "the scheduler to reach the failpoint", || async { marker.exists().then_some(()) }).await;
    first.0.kill().expect("SIGKILL");
    first.0.wait().unwrap();

    // Half-done: every claim written, nobody bound.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), NS);
    for p in pods.list(&ListParams::default()).await.unwrap() {
        assert!(p.spec.unwrap().node_name.is_none(), "nobody bound before the kill");
        assert!(p.status.unwrap().nominated_node_name.is_some(), "intent recorded");
    }
    for c in claims.list(&ListParams::default()).await.unwrap() {
        assert!(c.status.as_ref().unwrap().allocation.is_some(), "{} written before the kill", c.name_any());
    }

    let _second = scheduler(&env, None, "scheduler-2");
    for i in 0..4 {
        let name = format!("member-{i}");
        wait::until(&pods, &name, TIMEOUT, "bound after restart", |p: Option<&Pod>| {
            p.and_then(|p| p.spec.as_ref()).and_then(|s| s.node_name.as_ref()).is_some()
        })
        .await;
    }
    let mut devices = Vec::new();
    for c in claims.list(&ListParams::default()).await.unwrap() {
        let status = c.status.unwrap();
        assert_eq!(status.reserved_for.unwrap_or_default().len(), 1, "one reservation per claim");
        for r in status.allocation.unwrap().devices.unwrap().results.unwrap_or_default() {
            devices.push(format!("{}/{}", r.pool, r.device));
        }
    }
    let distinct: BTreeSet<_> = devices.iter().collect();
    assert_eq!((devices.len(), distinct.len()), (8, 8), "no device in two claims: {devices:?}");
}

/// A gang of one records no intent; killed between its claim write and its binding, the
/// restarted scheduler finds the claim reserved for an unbound pod, releases it and
/// places the pod again: bound once, its claim allocated and reserved for it alone.
#[tokio::test]
async fn sigkill_between_claim_and_binding_of_a_single_pod_then_restart_binds_it() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    nodes(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), NS);
    let solo: ResourceClaim = from_json(json!({
        "metadata": { "name": "solo" },
        "spec": { "devices": { "requests": [{ "name": "gpu", "exactly": { "deviceClassName": "gpu.phalanx.dev", "count": 2 } }] } }
    }));
    claims.create(&PostParams::default(), &solo).await.unwrap();
    let pod: Pod = from_json(json!({
        "metadata": { "name": "solo" },
        "spec": {
            "schedulerName": "phalanx-scheduler",
            "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
            "resourceClaims": [{ "name": "gpu", "resourceClaimName": "solo" }],
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10", "resources": { "claims": [{ "name": "gpu" }] } }]
        }
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let marker = env.dir().join("reserved");
    let mut first = scheduler(&env, Some(&marker), "solo-1");
    wait::poll(TIMEOUT, "the scheduler to reach the failpoint", || async { marker.exists().then_some(()) }).await;
    first.0.kill().expect("SIGKILL");
    first.0.wait().unwrap();

    let half = pods.get("solo").await.unwrap();
    assert!(half.spec.as_ref().unwrap().node_name.is_none(), "not bound before the kill");
    assert!(half.status.as_ref().unwrap().nominated_node_name.is_none(), "a gang of one records no intent");
    let status = claims.get("solo").await.unwrap().status.unwrap();
    assert!(status.allocation.is_some(), "claim written before the kill");
    assert_eq!(status.reserved_for.unwrap_or_default().len(), 1);

    let _second = scheduler(&env, None, "solo-2");
    let bound = wait::until(&pods, "solo", TIMEOUT, "bound after restart", |p: Option<&Pod>| {
        p.and_then(|p| p.spec.as_ref()).and_then(|s| s.node_name.as_ref()).is_some()
    })
    .await;
    let status = claims.get("solo").await.unwrap().status.unwrap();
    let reserved = status.reserved_for.unwrap_or_default();
    assert_eq!(reserved.len(), 1, "reserved once");
    assert_eq!(Some(&reserved[0].uid), bound.uid().as_ref());
    let results = status.allocation.unwrap().devices.unwrap().results.unwrap_or_default();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| Some(&r.pool) == node_of(&bound).as_ref()), "devices on the pod's node");
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}
