//! The kubelet plugin over real unix sockets, driven by a test client that speaks the
//! kubelet's side (registration, DRA v1/v1beta1, health), against claims allocated on a
//! real apiserver; the driver binary is killed and restarted to prove crash safety.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams};
use phalanx_dra_driver::proto::dra_v1::dra_plugin_client::DraPluginClient as V1Client;
use phalanx_dra_driver::proto::dra_v1beta1::dra_plugin_client::DraPluginClient as V1beta1Client;
use phalanx_dra_driver::proto::health_v1alpha1::dra_resource_health_client::DraResourceHealthClient;
use phalanx_dra_driver::proto::pluginregistration::registration_client::RegistrationClient;
use phalanx_dra_driver::proto::{dra_v1 as v1, dra_v1beta1 as v1beta1, health_v1alpha1 as health, pluginregistration};
use phalanx_dra_driver::uds;
use phalanx_testenv::{Options, TestEnv, wait};
use serde_json::json;
use tokio::process::{Child, Command};

const NODE: &str = "node-p";

struct Driver {
    child: Child,
    stderr: PathBuf,
}

impl Driver {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

struct Paths {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Paths {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("drv").tempdir_in("/tmp").unwrap();
        let root = dir.path().to_owned();
        Paths { _dir: dir, root }
    }
    fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    fn cdi(&self) -> PathBuf {
        self.root.join("cdi")
    }
    fn faults(&self) -> PathBuf {
        self.root.join("faults")
    }
    fn registration(&self) -> PathBuf {
        self.kubelet().join("plugins_registry/gpu.phalanx.dev-reg.sock")
    }
    fn service(&self) -> PathBuf {
        self.kubelet().join("plugins/gpu.phalanx.dev/dra.sock")
    }
    fn checkpoint(&self) -> PathBuf {
        self.kubelet().join("plugins/gpu.phalanx.dev/checkpoint.json")
    }
    fn cdi_spec(&self, uid: &str) -> PathBuf {
        self.cdi().join(format!("k8s.gpu.phalanx.dev-gpu_{uid}.json"))
    }
}

fn spawn_driver(env: &TestEnv, paths: &Paths, stall: bool) -> Driver {
    spawn_driver_with(env, paths, stall, &[])
}

fn spawn_driver_with(env: &TestEnv, paths: &Paths, stall: bool, extra: &[&str]) -> Driver {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let stderr = paths.root.join(format!("driver-{n}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phalanx-dra-driver"));
    cmd.args(["run", "--node-name", NODE, "--profile", "hgx-h100-8", "--fault-poll-ms", "50"])
        .arg("--kubelet-root")
        .arg(paths.kubelet())
        .arg("--cdi-root")
        .arg(paths.cdi())
        .arg("--fault-file")
        .arg(paths.faults())
        .args(extra)
        .env("KUBECONFIG", env.kubeconfig_path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .kill_on_drop(true);
    if stall {
        cmd.env("PHALANX_DRA_STALL_AT", "prepare-started");
    }
    Driver { child: cmd.spawn().expect("driver starts"), stderr }
}

/// Waits until the registration socket answers GetInfo.
async fn registered(driver: &mut Driver, paths: &Paths) -> pluginregistration::PluginInfo {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Ok(channel) = uds::connect(&paths.registration()).await
            && let Ok(info) = RegistrationClient::new(channel).get_info(pluginregistration::InfoRequest {}).await
        {
            return info.into_inner();
        }
        if let Ok(Some(status)) = driver.child.try_wait() {
            panic!("driver exited ({status}) before registering:\n{}", driver.stderr());
        }
        assert!(tokio::time::Instant::now() < deadline, "driver did not register:\n{}", driver.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn claim(ns: &str, name: &str, uid: &str) -> v1::Claim {
    v1::Claim { namespace: ns.into(), uid: uid.into(), name: name.into() }
}

async fn v1_client(paths: &Paths) -> V1Client<tonic::transport::Channel> {
    V1Client::new(uds::connect(&paths.service()).await.expect("service socket"))
}

async fn prepare(
    paths: &Paths,
    claims: Vec<v1::Claim>,
) -> std::collections::HashMap<String, v1::NodePrepareResourceResponse> {
    let mut client = v1_client(paths).await;
    client.node_prepare_resources(v1::NodePrepareResourcesRequest { claims }).await.expect("rpc").into_inner().claims
}

async fn unprepare(paths: &Paths, claims: Vec<v1::Claim>) -> std::collections::HashMap<String, String> {
    let mut client = v1_client(paths).await;
    let response = client.node_unprepare_resources(v1::NodeUnprepareResourcesRequest { claims }).await.expect("rpc");
    response.into_inner().claims.into_iter().map(|(k, v)| (k, v.error)).collect()
}

async fn setup() -> (TestEnv, Paths) {
    let env = TestEnv::start(Options::default().controller_manager(false).kwok(false)).await.expect("control plane");
    let client = env.client();
    create_node(&client, NODE, json!({})).await;
    device_classes(&client).await;
    (env, Paths::new())
}

/// Every env entry of a spec: the spec-wide ones and each device's.
fn read_env(spec: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(spec).expect("spec exists")).expect("json");
    let device_env =
        v["devices"].as_array().unwrap().iter().flat_map(|d| d["containerEdits"]["env"].as_array().unwrap());
    v["containerEdits"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .chain(device_env)
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn kubelet_protocol_prepare_unprepare_cdi_and_health() {
    let (env, paths) = setup().await;
    let client = env.client();
    let mut driver = spawn_driver_with(&env, &paths, false, &["--remove-slices-on-exit"]);

    let info = registered(&mut driver, &paths).await;
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, "gpu.phalanx.dev");
    assert_eq!(PathBuf::from(&info.endpoint), paths.service());
    assert_eq!(info.supported_versions, ["v1.DRAPlugin", "v1beta1.DRAPlugin", "v1alpha1.DRAResourceHealth"]);
    let mut reg = RegistrationClient::new(uds::connect(&paths.registration()).await.unwrap());
    reg.notify_registration_status(pluginregistration::RegistrationStatus {
        plugin_registered: true,
        error: String::new(),
    })
    .await
    .expect("status accepted");

    let a = allocated_claim(&client, "default", "a", NODE, &["gpu-0", "gpu-1"]).await;
    let b = allocated_claim(&client, "default", "b", NODE, &["gpu-1"]).await;
    let unallocated = allocated_claim(&client, "default", "unallocated", NODE, &[]).await;

    let responses = prepare(
        &paths,
        vec![
            claim("default", "a", &a),
            claim("default", "b", &b),
            claim("default", "unallocated", &unallocated),
            claim("default", "a", "not-the-uid-of-a"),
            claim("default", "missing", "uid-missing"),
        ],
    )
    .await;
    assert_eq!(responses.len(), 5, "one response per claim: {responses:?}");
    let ra = &responses[&a];
    assert_eq!(ra.error, "");
    let names: Vec<&str> = ra.devices.iter().map(|d| d.device_name.as_str()).collect();
    assert_eq!(names, ["gpu-0", "gpu-1"]);
    assert_eq!(
        ra.devices[0].cdi_device_ids,
        [format!("k8s.gpu.phalanx.dev/gpu={a}-gpu-0"), "k8s.gpu.phalanx.dev/gpu=base".to_owned()]
    );
    assert!(paths.cdi().join("k8s.gpu.phalanx.dev-gpu_base.json").exists(), "the base spec is written at start");
    assert_eq!((ra.devices[0].pool_name.as_str(), ra.devices[0].request_names.clone()), (NODE, vec!["gpu".to_owned()]));
    assert!(responses[&b].error.contains("already prepared for claim default/a"), "{:?}", responses[&b]);
    assert!(responses[&unallocated].error.contains("not allocated"), "{:?}", responses[&unallocated]);
    assert!(responses["not-the-uid-of-a"].error.contains("replaced"), "{:?}", responses["not-the-uid-of-a"]);
    assert!(
        responses["uid-missing"].error.contains("fetching claim default/missing"),
        "{:?}",
        responses["uid-missing"]
    );

    // The CDI spec carries UUIDs, indexes and topology; b left nothing behind.
    let env_a = read_env(&paths.cdi_spec(&a));
    let inv = inventory("hgx-h100-8", &phalanx_dra_driver::discovery::NodeContext::named(NODE));
    let key = phalanx_dra_driver::cdi::claim_key(&a);
    assert!(env_a.contains(&format!("PHALANX_CLAIM_{key}_GPUS=gpu-0,gpu-1")), "{env_a:?}");
    assert!(env_a.contains(&format!("PHALANX_GPU_0_UUID={}", inv.gpus[0].uuid)), "{env_a:?}");
    assert!(env_a.contains(&format!("PHALANX_GPU_1_UUID={}", inv.gpus[1].uuid)));
    assert!(env_a.contains(&"PHALANX_GPU_0_PCIE_ROOT=pci0000:17".to_owned()));
    assert!(env_a.contains(&"PHALANX_GPU_1_PCIE_ROOT=pci0000:3f".to_owned()));
    assert!(env_a.contains(&"PHALANX_GPU_1_NUMA_NODE=0".to_owned()));
    let domain = inv.gpus[0].nvlink_domain.clone().unwrap();
    assert!(env_a.contains(&format!("PHALANX_GPU_0_NVLINK_DOMAIN={domain}")));
    assert!(!paths.cdi_spec(&b).exists());

    // status.devices: one Ready entry per prepared device, with the GPU's identity.
    let claims_api: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let status_devices = |c: &ResourceClaim| c.status.as_ref().and_then(|s| s.devices.clone()).unwrap_or_default();
    // Written off the prepare path, so wait for it.
    let written = wait::poll(TIMEOUT, "status.devices of a written", || async {
        claims_api.get("a").await.ok().filter(|c| !status_devices(c).is_empty())
    })
    .await;
    let entries = status_devices(&written);
    let names: Vec<(&str, &str, &str)> =
        entries.iter().map(|d| (d.driver.as_str(), d.pool.as_str(), d.device.as_str())).collect();
    assert_eq!(names, [("gpu.phalanx.dev", NODE, "gpu-0"), ("gpu.phalanx.dev", NODE, "gpu-1")]);
    let ready = entries[0].conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Prepared"));
    assert_eq!(entries[1].data.as_ref().unwrap().0["uuid"], inv.gpus[1].uuid.as_str());

    // Idempotent, and v1beta1 answers the same.
    let again = prepare(&paths, vec![claim("default", "a", &a)]).await;
    assert_eq!(again[&a], *ra);
    let mut beta = V1beta1Client::new(uds::connect(&paths.service()).await.unwrap());
    let beta_a = beta
        .node_prepare_resources(v1beta1::NodePrepareResourcesRequest {
            claims: vec![v1beta1::Claim { namespace: "default".into(), uid: a.clone(), name: "a".into() }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(beta_a.claims[&a].devices[1].cdi_device_ids, ra.devices[1].cdi_device_ids);

    // Unprepare removes the spec, is idempotent, and unknown UIDs succeed; the device is free again.
    let errors = unprepare(&paths, vec![claim("default", "a", &a), claim("default", "x", "unknown-uid")]).await;
    assert_eq!(errors.len(), 2);
    assert!(errors.values().all(String::is_empty), "{errors:?}");
    assert!(!paths.cdi_spec(&a).exists());
    wait::poll(TIMEOUT, "our status.devices entries of a removed", || async {
        claims_api.get("a").await.ok().filter(|c| status_devices(c).is_empty()).map(|_| ())
    })
    .await;
    assert!(unprepare(&paths, vec![claim("default", "a", &a)]).await[&a].is_empty());
    assert_eq!(prepare(&paths, vec![claim("default", "b", &b)]).await[&b].error, "");

    // Health: a fault becomes an UNHEALTHY device on the stream and a taint on the slice.
    let mut health_client = DraResourceHealthClient::new(uds::connect(&paths.service()).await.unwrap());
    let mut stream =
        health_client.node_watch_resources(health::NodeWatchResourcesRequest {}).await.unwrap().into_inner();
    let first = tokio::time::timeout(TIMEOUT, stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.devices.len(), 8);
    assert!(first.devices.iter().all(|d| d.health == health::HealthStatus::Healthy as i32));
    std::fs::write(paths.faults(), "gpu-3 xid-79\n").unwrap();
    let next = tokio::time::timeout(TIMEOUT, stream.message()).await.unwrap().unwrap().unwrap();
    let gpu3 = next.devices.iter().find(|d| d.device.as_ref().unwrap().device_name == "gpu-3").unwrap();
    assert_eq!((gpu3.health, gpu3.message.as_str()), (health::HealthStatus::Unhealthy as i32, "xid-79"));
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let tainted = wait::until(&slices, "node-p-gpu-phalanx-dev-0", TIMEOUT, "tainted", |s: Option<&ResourceSlice>| {
        s.and_then(|s| s.spec.devices.as_ref()).is_some_and(|d| d[3].taints.is_some())
    })
    .await;
    let taint = &tainted.spec.devices.unwrap()[3].taints.clone().unwrap()[0];
    assert_eq!((taint.key.as_str(), taint.effect.as_str()), ("gpu.phalanx.dev/unhealthy", "NoSchedule"));
    std::fs::write(paths.faults(), "").unwrap();
    wait::until(&slices, "node-p-gpu-phalanx-dev-0", TIMEOUT, "untainted", |s: Option<&ResourceSlice>| {
        s.and_then(|s| s.spec.devices.as_ref()).is_some_and(|d| d.iter().all(|d| d.taints.is_none()))
    })
    .await;

    // SIGTERM with --remove-slices-on-exit: the slices go, the sockets go, exit 0.
    let pid = driver.child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(TIMEOUT, driver.child.wait()).await.expect("driver stops").unwrap();
    assert!(status.success(), "{status}:\n{}", driver.stderr());
    assert!(slices_of(&client, "gpu.phalanx.dev", NODE).await.is_empty());
    assert!(slices_of(&client, "nic.phalanx.dev", NODE).await.is_empty());
    assert!(!paths.registration().exists() && !paths.service().exists());
}

#[tokio::test]
async fn driver_recovers_after_sigkill_and_reports_a_corrupt_checkpoint() {
    let (env, paths) = setup().await;
    let client = env.client();
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let a = allocated_claim(&client, "default", "a", NODE, &["gpu-4"]).await;
    let b = allocated_claim(&client, "default", "b", NODE, &["gpu-5"]).await;

    // 1. Killed after a completed prepare: the restarted driver knows the claim from its
    //    checkpoint alone (the claim is even gone from the apiserver).
    let mut driver = spawn_driver(&env, &paths, false);
    registered(&mut driver, &paths).await;
    let first = prepare(&paths, vec![claim("default", "a", &a)]).await;
    assert_eq!(first[&a].error, "");
    driver.child.kill().await.unwrap(); // SIGKILL
    claims.delete("a", &DeleteParams::default()).await.unwrap();
    let mut driver = spawn_driver(&env, &paths, false);
    registered(&mut driver, &paths).await;
    assert_eq!(prepare(&paths, vec![claim("default", "a", &a)]).await[&a], first[&a], "same answer after restart");
    let taken = allocated_claim(&client, "default", "a2", NODE, &["gpu-4"]).await;
    assert!(prepare(&paths, vec![claim("default", "a2", &taken)]).await[&taken].error.contains("already prepared"));
    assert!(paths.cdi_spec(&a).exists());
    assert_eq!(unprepare(&paths, vec![claim("default", "a", &a)]).await[&a], "");
    assert!(!paths.cdi_spec(&a).exists());
    driver.child.kill().await.unwrap();

    // 2. Killed mid-prepare (stalled after the CDI spec, before PrepareCompleted): the
    //    restart cleans the half-done claim up and a retry succeeds.
    let mut driver = spawn_driver(&env, &paths, true);
    registered(&mut driver, &paths).await;
    let service = paths.service();
    let b2 = b.clone();
    let pending = tokio::spawn(async move {
        let mut client = V1Client::new(uds::connect(&service).await.unwrap());
        client
            .node_prepare_resources(v1::NodePrepareResourcesRequest { claims: vec![claim("default", "b", &b2)] })
            .await
    });
    let checkpoint = paths.checkpoint();
    let spec_b = paths.cdi_spec(&b);
    wait::poll(TIMEOUT, "claim b recorded as PrepareStarted", || {
        let text = std::fs::read_to_string(&checkpoint).unwrap_or_default();
        let ready = text.contains(&b) && text.contains("PrepareStarted") && spec_b.exists();
        async move { ready.then_some(()) }
    })
    .await;
    driver.child.kill().await.unwrap(); // SIGKILL mid-way
    assert!(pending.await.unwrap().is_err(), "the kubelet sees the call fail");
    let mut driver = spawn_driver(&env, &paths, false);
    registered(&mut driver, &paths).await;
    assert!(!paths.cdi_spec(&b).exists(), "half-written spec removed on recovery");
    assert!(!std::fs::read_to_string(paths.checkpoint()).unwrap().contains(&b));
    assert!(driver.stderr().contains("abandoned"), "{}", driver.stderr());
    let retried = prepare(&paths, vec![claim("default", "b", &b)]).await;
    assert_eq!(retried[&b].error, "");
    assert!(paths.cdi_spec(&b).exists());
    driver.child.kill().await.unwrap();

    // 3. The kubelet rejecting the registration makes the driver exit non-zero.
    let mut driver = spawn_driver(&env, &paths, false);
    registered(&mut driver, &paths).await;
    let mut reg = RegistrationClient::new(uds::connect(&paths.registration()).await.unwrap());
    let rejection =
        pluginregistration::RegistrationStatus { plugin_registered: false, error: "duplicate endpoint".into() };
    reg.notify_registration_status(rejection).await.expect("status delivered");
    let status = tokio::time::timeout(TIMEOUT, driver.child.wait()).await.expect("driver exits").unwrap();
    assert!(!status.success());
    let stderr = driver.stderr();
    assert!(stderr.contains("duplicate endpoint") && stderr.contains("rejected the plugin registration"), "{stderr}");

    // 4. A corrupted checkpoint is detected and reported; the driver refuses to guess.
    let text = std::fs::read_to_string(paths.checkpoint()).unwrap();
    std::fs::write(paths.checkpoint(), text.replace("gpu-5", "gpu-6")).unwrap();
    let _ = std::fs::remove_file(paths.registration()); // left by a killed run, if any
    let mut driver = spawn_driver(&env, &paths, false);
    let status = tokio::time::timeout(TIMEOUT, driver.child.wait()).await.expect("driver exits").unwrap();
    assert!(!status.success());
    let stderr = driver.stderr();
    assert!(stderr.contains("is corrupt") && stderr.contains("checksum"), "{stderr}");
    assert!(!paths.registration().exists(), "no registration with an unusable checkpoint");
}
