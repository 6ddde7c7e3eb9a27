//! Real nodes: Phalanx's scheduler places pods on real kubelets, our DRA driver is the
//! kubelet plugin that prepares their claims, containerd reads the CDI specs, and the
//! containers print what they got. The scheduler and the driver run as the binaries
//! users deploy (`target/<profile>/phalanx-scheduler`, `phalanx-dra-driver`).
//!
//! Needs root and `make node-binaries` (see `docs/real-nodes.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceClaimTemplate, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, ResourceExt};
use phalanx_testenv::{Options, RealNode, TESTBOX_IMAGE, TestEnv, wait};
use serde_json::json;

const NS: &str = "default";
const TIMEOUT: Duration = Duration::from_secs(90);
const PROFILE: &str = "hgx-h100-8";

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object matches the API type")
}

/// A binary of this workspace, built next to the test binary (`cargo build`/nextest).
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: build the workspace first (`cargo build --workspace`)", path.display());
    path
}

/// A host process with its output in a log file, killed on drop.
struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Process {
        let out = File::options().create(true).append(true).open(&log).expect("log file");
        let err = out.try_clone().unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
        Process { name: name.into(), child: Some(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("----- {} ({}) -----", self.name, self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// `phalanx-dra-driver run` on the host for one real node: registers with that node's
/// kubelet through its plugin directory and writes CDI specs where its containerd reads.
struct Driver {
    process: Process,
    node: String,
    kubelet_root: PathBuf,
    cdi: PathBuf,
    faults: PathBuf,
    driver_root: PathBuf,
    kubeconfig: PathBuf,
}

/// The profile's driver version: the fake driver's library files carry it.
const DRIVER_VERSION: &str = "570.124.06";
/// Where the fake driver's libraries go, as on Debian/Ubuntu hosts.
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// A fake NVIDIA driver installation for one node (fake hardware, as the profiles are):
/// the control device nodes and one `nvidia<i>` per GPU (character devices with
/// `/dev/null`'s numbers, so the runtime has real device nodes to create), two driver
/// libraries with their soname links, and `nvidia-smi`. The driver injects them through
/// the base CDI device exactly as it would the real ones.
fn fake_driver_root(dir: &Path) -> PathBuf {
    let root = dir.join("driver-root");
    let lib = root.join(LIB_DIR);
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    for name in ["libcuda.so", "libnvidia-ml.so"] {
        std::fs::write(lib.join(format!("{name}.{DRIVER_VERSION}")), format!("fake {name}\n")).unwrap();
        let _ = std::fs::remove_file(lib.join(format!("{name}.1")));
        std::os::unix::fs::symlink(format!("{name}.{DRIVER_VERSION}"), lib.join(format!("{name}.1"))).unwrap();
    }
    let smi = root.join("usr/bin/nvidia-smi");
    std::fs::write(&smi, "#!/bin/sh\necho fake nvidia-smi\n").unwrap();
    std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let nodes = ["nvidiactl", "nvidia-uvm"].into_iter().map(String::from).chain((0..8).map(|i| format!("nvidia{i}")));
    for node in nodes {
        let path = root.join("dev").join(&node);
        if !path.exists() {
            let status = Command::new("mknod").arg(&path).args(["c", "1", "3"]).status().unwrap();
            assert!(status.success(), "mknod {}", path.display());
        }
    }
    root
}

impl Driver {
    fn start(env: &TestEnv, node: &RealNode) -> Driver {
        let faults = node.dir().join("faults");
        std::fs::write(&faults, "").unwrap();
        let mut driver = Driver {
            process: Process { name: String::new(), child: None, log: node.dir().join("driver.log") },
            node: node.name().to_owned(),
            kubelet_root: node.kubelet_root(),
            cdi: node.cdi_dir(),
            faults,
            driver_root: fake_driver_root(node.dir()),
            kubeconfig: env.kubeconfig_path().to_owned(),
        };
        driver.spawn();
        driver
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(workspace_binary("phalanx-dra-driver"));
        cmd.args(["run", "--node-name", &self.node, "--profile", PROFILE, "--fault-poll-ms", "100"])
            .arg("--kubelet-root")
            .arg(&self.kubelet_root)
            .arg("--cdi-root")
            .arg(&self.cdi)
            .arg("--fault-file")
            .arg(&self.faults)
            .arg("--driver-root")
            .arg(&self.driver_root)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", std::env::var("PHALANX_DRIVER_LOG").unwrap_or_else(|_| "info".into()));
        let log = self.process.log.clone();
        self.process = Process::spawn(&format!("phalanx-dra-driver {}", self.node), cmd, log);
    }

    /// How many times the kubelet has confirmed a registration of `driver` so far.
    fn registrations(&self, driver: &str) -> usize {
        self.process.log().lines().filter(|l| l.contains("kubelet registered the plugin") && l.contains(driver)).count()
    }

    async fn wait_registered(&mut self, driver: &str, at_least: usize) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.registrations(driver) < at_least {
            self.process.assert_running();
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not registered with the kubelet of {} ({at_least}×) after {TIMEOUT:?}",
                driver,
                self.node
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn scheduler(env: &TestEnv) -> Process {
    let mut cmd = Command::new(workspace_binary("phalanx-scheduler"));
    cmd.args(["run", "--no-leader-election", "--bind-address", "127.0.0.1:0"])
        .env("KUBECONFIG", env.kubeconfig_path())
        .env("RUST_LOG", "info");
    Process::spawn("phalanx-scheduler", cmd, env.dir().join("logs/phalanx-scheduler.log"))
}

async fn setup(nodes: usize) -> (TestEnv, Vec<Driver>, Process) {
    let env = TestEnv::start(Options::default().real_nodes(nodes)).await.expect("control plane with real nodes");
    let client = env.client();
    let classes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dra-driver/deviceclasses.yaml");
    phalanx_testenv::apply::apply_file(&client, &classes).await.unwrap();
    let two_requests: ResourceClaimTemplate = from_json(json!({
        "metadata": { "name": "two-requests" },
        "spec": { "spec": { "devices": { "requests": [
            { "name": "first", "exactly": { "deviceClassName": "gpu.phalanx.dev", "count": 1 } },
            { "name": "second", "exactly": { "deviceClassName": "gpu.phalanx.dev", "count": 1 } }
        ] } } }
    }));
    Api::<ResourceClaimTemplate>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &two_requests)
        .await
        .unwrap();
    for (name, class, count) in
        [("one-gpu", "gpu.phalanx.dev", 1), ("eight-gpus", "gpu.phalanx.dev", 8), ("one-nic", "nic.phalanx.dev", 1)]
    {
        let template: ResourceClaimTemplate = from_json(json!({
            "metadata": { "name": name },
            "spec": { "spec": { "devices": { "requests": [
                { "name": "dev", "exactly": { "deviceClassName": class, "count": count } }
            ] } } }
        }));
        Api::<ResourceClaimTemplate>::namespaced(client.clone(), NS)
            .create(&PostParams::default(), &template)
            .await
            .unwrap();
    }
    let mut drivers: Vec<Driver> = env.real_nodes().iter().map(|n| Driver::start(&env, n)).collect();
    for d in &mut drivers {
        d.wait_registered("gpu.phalanx.dev", 1).await;
        d.wait_registered("nic.phalanx.dev", 1).await;
    }
    let scheduler = scheduler(&env);
    (env, drivers, scheduler)
}

/// What a test container prints: its `PHALANX_` environment (`K=V` lines), then what the
/// base CDI device gave it (`DEV:`, `LIB:`, `LINK:`, `SMI:`, `LDCONF:` lines), then READY.
const PRINT_DEVICES_AND_SLEEP: &str = "env | grep ^PHALANX_ | sort; \
    for d in /dev/nvidia*; do [ -e \"$d\" ] && echo DEV:${d#/dev/}; done; \
    cat /usr/lib/x86_64-linux-gnu/libcuda.so.570.124.06 | sed 's/^/LIB:/'; \
    echo LINK:$(readlink /usr/lib/x86_64-linux-gnu/libcuda.so.1); \
    /usr/bin/nvidia-smi | sed 's/^/SMI:/'; \
    sed 's/^/LDCONF:/' /etc/ld.so.conf.d/00-phalanx-cdi.conf; \
    echo READY; exec sleep 3600";

/// The `<prefix>:` lines a test container printed.
async fn printed(client: &Client, name: &str, container: Option<&str>, prefix: &str) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let params = LogParams { container: container.map(str::to_owned), ..Default::default() };
    let log = wait::poll(TIMEOUT, &format!("{name} printing what it got"), || async {
        pods.logs(name, &params).await.ok().filter(|l| l.contains("READY"))
    })
    .await;
    log.lines().filter_map(|l| l.strip_prefix(prefix)).map(|l| l.strip_prefix(':').unwrap_or(l).to_owned()).collect()
}

/// A pod of the test image that prints its `PHALANX_` environment, then sleeps.
async fn create_pod(client: &Client, name: &str, claims: &[(&str, &str)], extra: serde_json::Value) {
    let resource_claims: Vec<_> = claims
        .iter()
        .map(|(claim, template)| json!({ "name": claim, "resourceClaimTemplateName": template }))
        .collect();
    let uses: Vec<_> = claims.iter().map(|(claim, _)| json!({ "name": claim })).collect();
    let mut pod = json!({
        "metadata": { "name": name, "labels": {}, "annotations": {} },
        "spec": {
            "schedulerName": "phalanx-scheduler",
            "terminationGracePeriodSeconds": 1,
            "resourceClaims": resource_claims,
            "containers": [{
                "name": "main", "image": TESTBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", PRINT_DEVICES_AND_SLEEP],
                "resources": { "claims": uses }
            }]
        }
    });
    merge(&mut pod, extra);
    Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &from_json(pod)).await.unwrap();
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn running(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn wait_running(client: &Client, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait::until(&pods, name, TIMEOUT, "Running", running).await
}

/// The container's `PHALANX_` environment, as it printed it.
async fn container_env(client: &Client, name: &str) -> BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let log = wait::poll(TIMEOUT, &format!("{name} printing its environment"), || async {
        pods.logs(name, &LogParams::default()).await.ok().filter(|l| l.contains("READY"))
    })
    .await;
    log.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The claims of a pod (name in the pod spec → ResourceClaim).
async fn claims_of(client: &Client, pod: &Pod) -> BTreeMap<String, ResourceClaim> {
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), pod.metadata.namespace.as_deref().unwrap_or(NS));
    let mut out = BTreeMap::new();
    for status in pod.status.as_ref().and_then(|s| s.resource_claim_statuses.clone()).unwrap_or_default() {
        let claim = claims.get(status.resource_claim_name.as_deref().unwrap()).await.unwrap();
        out.insert(status.name, claim);
    }
    out
}

/// `(driver, pool, device)` of a claim's allocation.
fn allocated(claim: &ResourceClaim) -> Vec<(String, String, String)> {
    claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.driver, r.pool, r.device))
        .collect()
}

/// The published string attribute `attr` of `driver`'s device `device` in pool `pool`.
async fn slice_attribute(client: &Client, driver: &str, pool: &str, device: &str, attr: &str) -> String {
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    for slice in slices.list(&ListParams::default()).await.unwrap() {
        if slice.spec.driver != driver || slice.spec.pool.name != pool {
            continue;
        }
        for d in slice.spec.devices.unwrap_or_default() {
            if d.name == device {
                let attrs = d.attributes.unwrap_or_default();
                let key = format!("{driver}/{attr}");
                let value = attrs.get(&key).or_else(|| attrs.get(attr)).and_then(|a| a.string.clone());
                return value.unwrap_or_else(|| panic!("{pool}/{device} has no {attr}"));
            }
        }
    }
    panic!("no published device {driver} {pool}/{device}")
}

/// The GPU UUIDs a container sees (`PHALANX_GPU_<i>_UUID`).
fn seen_uuids(env: &BTreeMap<String, String>) -> BTreeSet<String> {
    env.iter().filter(|(k, _)| k.starts_with("PHALANX_GPU_") && k.ends_with("_UUID")).map(|(_, v)| v.clone()).collect()
}

/// The UUIDs the claims' allocations name, read from the published slices.
async fn allocated_uuids(client: &Client, claims: &BTreeMap<String, ResourceClaim>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for claim in claims.values() {
        for (driver, pool, device) in allocated(claim) {
            if driver == "gpu.phalanx.dev" {
                out.insert(slice_attribute(client, &driver, &pool, &device, "uuid").await);
            }
        }
    }
    out
}

fn cdi_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn node_of(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.node_name.clone()).expect("bound")
}

async fn delete_and_wait_gone(client: &Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.delete(name, &DeleteParams::default()).await.unwrap();
    wait::poll(TIMEOUT, &format!("pod {name} gone"), || async {
        matches!(pods.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}

/// The whole path on real nodes, in one environment (two real nodes) to keep the cost
/// down: placement → kubelet → our plugin → CDI → containerd → the container's env;
/// unprepare on deletion; a gang across both nodes; the driver killed under a running
/// pod; the kubelet restarted.
#[tokio::test]
async fn pods_run_on_real_nodes_with_exactly_the_devices_phalanx_allocated() {
    let (mut env, mut drivers, mut scheduler) = setup(2).await;
    let client = env.client();

    // One container, two GPU claims and a NIC claim of our drivers.
    create_pod(&client, "solo", &[("a", "one-gpu"), ("b", "one-gpu"), ("nic", "one-nic")], json!({})).await;
    let solo = wait_running(&client, "solo").await;
    let env_vars = container_env(&client, "solo").await;
    let claims = claims_of(&client, &solo).await;
    assert_eq!(claims.len(), 3);
    let want = allocated_uuids(&client, &claims).await;
    assert_eq!(want.len(), 2, "two claims of one GPU each: {claims:#?}");
    assert_eq!(seen_uuids(&env_vars), want, "the container sees exactly its claims' GPUs: {env_vars:#?}");
    for (name, claim) in &claims {
        let key = phalanx_dra_driver_claim_key(&claim.uid().unwrap());
        let devices: Vec<String> = allocated(claim).into_iter().map(|(_, _, d)| d).collect();
        let var = if name == "nic" { "NICS" } else { "GPUS" };
        assert_eq!(env_vars.get(&format!("PHALANX_CLAIM_{key}_{var}")), Some(&devices.join(",")), "{env_vars:#?}");
    }
    let nic = &allocated(&claims["nic"])[0];
    let index = nic.2.trim_start_matches("nic-");
    assert_eq!(
        env_vars.get(&format!("PHALANX_NIC_{index}_INTERFACE")),
        Some(&slice_attribute(&client, "nic.phalanx.dev", &nic.1, &nic.2, "interfaceName").await),
        "{env_vars:#?}"
    );
    assert_eq!(env_vars.get("PHALANX_NODE_NAME"), Some(&node_of(&solo)));

    // The base CDI device: the control nodes, exactly the two allocated GPUs' device
    // nodes, the driver library with the soname link the hook recreated, nvidia-smi, and
    // the linker configuration the ldcache hook wrote. (Two GPU claims each list the base
    // device: the runtime injects it once.)
    let gpus: BTreeSet<String> = ["a", "b"]
        .iter()
        .flat_map(|c| allocated(&claims[*c]))
        .map(|(_, _, device)| format!("nvidia{}", device.trim_start_matches("gpu-")))
        .collect();
    let want: BTreeSet<String> = gpus.iter().cloned().chain(["nvidiactl".into(), "nvidia-uvm".into()]).collect();
    assert_eq!(printed(&client, "solo", None, "DEV").await, want);
    assert_eq!(printed(&client, "solo", None, "LIB").await, BTreeSet::from(["fake libcuda.so".to_owned()]));
    assert_eq!(printed(&client, "solo", None, "LINK").await, BTreeSet::from([format!("libcuda.so.{DRIVER_VERSION}")]));
    assert_eq!(printed(&client, "solo", None, "SMI").await, BTreeSet::from(["fake nvidia-smi".to_owned()]));
    assert_eq!(printed(&client, "solo", None, "LDCONF").await, BTreeSet::from([format!("/{LIB_DIR}")]));

    // One claim with two requests, shared by an init container and the main container:
    // both see the same two GPUs, and the claim's list names both.
    let shared = json!({ "spec": { "initContainers": [{
        "name": "init", "image": TESTBOX_IMAGE, "imagePullPolicy": "Never",
        "command": ["sh", "-c", "env | grep ^PHALANX_GPU_ | grep _UUID= | sed 's/^/INIT:/'; echo READY"],
        "resources": { "claims": [{ "name": "pair" }] }
    }] } });
    create_pod(&client, "shared", &[("pair", "two-requests")], shared).await;
    let shared_pod = wait_running(&client, "shared").await;
    let shared_claims = claims_of(&client, &shared_pod).await;
    let main_env = container_env(&client, "shared").await;
    let main_seen = seen_uuids(&main_env);
    assert_eq!(main_seen.len(), 2, "{main_env:#?}");
    assert_eq!(main_seen, allocated_uuids(&client, &shared_claims).await);
    let init_seen: BTreeSet<String> = printed(&client, "shared", Some("init"), "INIT")
        .await
        .iter()
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.to_owned()))
        .collect();
    assert_eq!(init_seen, main_seen, "the init container shares the claim");
    let key = phalanx_dra_driver_claim_key(&shared_claims["pair"].uid().unwrap());
    let devices: Vec<String> = allocated(&shared_claims["pair"]).into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(main_env.get(&format!("PHALANX_CLAIM_{key}_GPUS")), Some(&devices.join(",")));
    delete_and_wait_gone(&client, "shared").await;

    // Deleting the pod unprepares its claims: the CDI specs go.
    let node = env.real_nodes().iter().find(|n| n.name() == node_of(&solo)).unwrap();
    let uids: Vec<String> = claims.values().map(|c| c.uid().unwrap()).collect();
    assert_eq!(cdi_files(&node.cdi_dir()).iter().filter(|f| uids.iter().any(|u| f.contains(u.as_str()))).count(), 3);
    delete_and_wait_gone(&client, "solo").await;
    wait::poll(TIMEOUT, "the CDI specs of solo's claims removed", || async {
        let left = cdi_files(&node.cdi_dir());
        (!left.iter().any(|f| uids.iter().any(|u| f.contains(u.as_str())))).then_some(())
    })
    .await;

    // A gang of two 8-GPU pods: one per real node, both running.
    for i in 0..2 {
        let gang = json!({ "metadata": {
            "labels": { "phalanx.dev/gang": "pair" }, "annotations": { "phalanx.dev/gang-min-members": "2" } } });
        create_pod(&client, &format!("pair-{i}"), &[("gpus", "eight-gpus")], gang).await;
    }
    let mut nodes = BTreeSet::new();
    for i in 0..2 {
        let name = format!("pair-{i}");
        let pod = wait_running(&client, &name).await;
        nodes.insert(node_of(&pod));
        let seen = seen_uuids(&container_env(&client, &name).await);
        assert_eq!(seen.len(), 8);
        assert_eq!(seen, allocated_uuids(&client, &claims_of(&client, &pod).await).await);
    }
    assert_eq!(nodes.len(), 2, "the gang spans both real nodes");

    // The driver of real-0 dies under a running pod: the pod keeps running; the
    // restarted driver prepares the next pod.
    drivers[0].process.kill();
    drivers[0].spawn();
    drivers[0].wait_registered("gpu.phalanx.dev", 2).await;
    // Through the driver's death and its re-registration, the pod ran on untouched.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let on_0 = if node_of(&pods.get("pair-0").await.unwrap()) == "real-0" { "pair-0" } else { "pair-1" };
    let pod = pods.get(on_0).await.unwrap();
    assert!(running(Some(&pod)), "{pod:#?}");
    let restarts = pod.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 0);
    delete_and_wait_gone(&client, "pair-0").await;
    delete_and_wait_gone(&client, "pair-1").await;
    let pin = |node: &str| json!({ "spec": { "nodeSelector": { "kubernetes.io/hostname": node } } });
    create_pod(&client, "after-driver-restart", &[("gpu", "one-gpu")], pin("real-0")).await;
    let pod = wait_running(&client, "after-driver-restart").await;
    assert_eq!(node_of(&pod), "real-0");
    assert_eq!(seen_uuids(&container_env(&client, "after-driver-restart").await).len(), 1);

    // The kubelet of real-1 restarts. A starting kubelet deletes every ResourceSlice of
    // its node (no driver has registered yet, `DRAPluginManager` in pkg/kubelet/cm/dra):
    // the plugin must register again and the driver publish the same devices again.
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let devices_of_node = |node: &'static str| {
        let slices = slices.clone();
        async move {
            let mut out: Vec<(String, String, String)> = Vec::new();
            for s in slices.list(&ListParams::default()).await.unwrap() {
                if s.spec.node_name.as_deref() != Some(node) {
                    continue;
                }
                for d in s.spec.devices.clone().unwrap_or_default() {
                    let uuid = d.attributes.unwrap_or_default().get("uuid").and_then(|a| a.string.clone());
                    out.push((s.spec.driver.clone(), d.name, uuid.unwrap_or_default()));
                }
            }
            out.sort();
            out
        }
    };
    let before = devices_of_node("real-1").await;
    assert_eq!(before.iter().filter(|(d, _, _)| d == "gpu.phalanx.dev").count(), 8, "{before:?}");
    let registered = drivers[1].registrations("gpu.phalanx.dev");
    env.real_node_mut(1).restart_kubelet().expect("kubelet restarted");
    let restarted = tokio::time::Instant::now();
    drivers[1].wait_registered("gpu.phalanx.dev", registered + 1).await;
    let nodes_api: Api<Node> = Api::all(client.clone());
    wait::until(&nodes_api, "real-1", TIMEOUT, "Ready again", |n: Option<&Node>| {
        n.and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await;
    wait::poll(TIMEOUT, "real-1's devices published again after the kubelet's restart", || async {
        (devices_of_node("real-1").await == before).then_some(())
    })
    .await;
    eprintln!("kubelet restart: plugin registered and slices back after {:?}", restarted.elapsed());
    create_pod(&client, "after-kubelet-restart", &[("gpu", "one-gpu")], pin("real-1")).await;
    wait_running(&client, "after-kubelet-restart").await;
    assert_eq!(seen_uuids(&container_env(&client, "after-kubelet-restart").await).len(), 1);
    scheduler.assert_running();
    for d in &mut drivers {
        d.process.assert_running();
    }
}

/// `allocatedResourcesStatus` on the pod comes from our health stream through the real
/// kubelet: Healthy for over two minutes (the kubelet's report timeout is 30 s, so the
/// stream must keep reporting), then Unhealthy once a fault is injected.
#[tokio::test]
async fn device_health_reaches_the_pod_status_and_stays_fresh() {
    let (env, drivers, _scheduler) = setup(1).await;
    let client = env.client();
    create_pod(&client, "watched", &[("gpu", "one-gpu")], json!({})).await;
    let pod = wait_running(&client, "watched").await;
    let claims = claims_of(&client, &pod).await;
    let (_, _, device) = allocated(&claims["gpu"])[0].clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let health = |pod: &Pod| -> Vec<String> {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|c| c.allocated_resources_status.clone().unwrap_or_default())
            .flat_map(|s| s.resources.unwrap_or_default())
            .filter(|r| r.resource_id.ends_with(&format!("-{device}")))
            .map(|r| r.health.unwrap_or_default())
            .collect()
    };
    wait::poll(TIMEOUT, "allocatedResourcesStatus Healthy", || async {
        let pod = pods.get("watched").await.ok()?;
        (health(&pod) == ["Healthy"]).then_some(())
    })
    .await;
    // Well past the kubelet's 30 s timeout, checked every 5 s.
    let until = tokio::time::Instant::now() + Duration::from_secs(125);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pod = pods.get("watched").await.unwrap();
        assert_eq!(health(&pod), ["Healthy"], "{:#?}", pod.status);
    }
    // `<device> <reason>`: the reason is one word.
    std::fs::write(&drivers[0].faults, format!("{device} XID-79-fallen-off-the-bus\n")).unwrap();
    let pod = wait::poll(TIMEOUT, "allocatedResourcesStatus Unhealthy after the fault", || async {
        let pod = pods.get("watched").await.ok()?;
        (health(&pod) == ["Unhealthy"]).then_some(pod)
    })
    .await;
    // The driver's reason reaches the pod (ResourceHealthStatusMessage, beta and on).
    let text = serde_json::to_string(&pod.status).unwrap();
    assert!(text.contains("XID-79-fallen-off-the-bus"), "{text}");
}

/// The claim's part of CDI env names, as the driver documents it: the UID upper-cased,
/// anything else than letters and digits as `_`.
fn phalanx_dra_driver_claim_key(uid: &str) -> String {
    uid.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

/// An image of `make images` (`PHALANX_APP_IMAGES` names their directory; make test
/// builds them).
fn app_image(name: &str) -> PathBuf {
    let path = phalanx_testenv::node::app_images().expect("the Phalanx images").join(format!("{name}.tar"));
    assert!(path.is_file(), "{} is missing: `make images`", path.display());
    path
}

fn worker_image() -> PathBuf {
    app_image("phalanx-worker")
}

const WORKER_IMAGE: &str = "ghcr.io/phalanx-dev/phalanx-worker:0.1.0";

/// A phalanx-worker pod of P/D group `g1`, reaching the apiserver on the node's veth with
/// the `phalanx-worker` service account's token (the test control plane runs no
/// kube-proxy and no ServiceAccount admission).
/// `rack` goes to `PHALANX_TOPOLOGY_RACK` (as a chart sets it from the node's label);
/// `gpu` gives the pod a one-GPU claim; `spec` is merged into the pod's spec.
fn worker_pod(
    env: &TestEnv,
    name: &str,
    role: &str,
    annotations: serde_json::Value,
    rack: &str,
    gpu: bool,
    spec: serde_json::Value,
) -> Pod {
    let node = &env.real_nodes()[0];
    let field = |name: &str, path: &str| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } });
    let envs = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        field("NODE_NAME", "spec.nodeName"),
        json!({ "name": "KUBERNETES_SERVICE_HOST", "value": node.apiserver_host().to_string() }),
        json!({ "name": "KUBERNETES_SERVICE_PORT", "value": env.apiserver_port().to_string() }),
        json!({ "name": "PHALANX_TOPOLOGY_RACK", "value": rack }),
    ];
    let (claims, uses) = if gpu {
        (json!([{ "name": "gpu", "resourceClaimTemplateName": "one-gpu" }]), json!({ "claims": [{ "name": "gpu" }] }))
    } else {
        (json!([]), json!({}))
    };
    let args = if role == "decode" { json!(["serve", "--discover"]) } else { json!(["serve"]) };
    let mut pod = json!({
        "metadata": {
            "name": name,
            "labels": { "phalanx.dev/role": role, "phalanx.dev/pd-group": "g1" },
            "annotations": annotations,
        },
        "spec": {
            "schedulerName": "phalanx-scheduler",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "resourceClaims": claims,
            "volumes": [
                { "name": "podinfo", "downwardAPI": { "items": [
                    { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
                    { "path": "annotations", "fieldRef": { "fieldPath": "metadata.annotations" } } ] } },
                { "name": "token", "secret": { "secretName": "phalanx-worker-token" } }
            ],
            "containers": [{
                "name": "worker", "image": WORKER_IMAGE, "imagePullPolicy": "Never", "args": args, "env": envs,
                "resources": uses,
                "volumeMounts": [
                    { "name": "podinfo", "mountPath": "/etc/podinfo" },
                    { "name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" } ],
                "readinessProbe": { "httpGet": { "path": "/readyz", "port": 8000 }, "periodSeconds": 1 }
            }]
        }
    });
    merge(&mut pod, json!({ "spec": spec }));
    from_json(pod)
}

async fn raw_http(address: &str, request: String) -> String {
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap_or_else(|e| panic!("{address}: {e}"));
    tokio::io::AsyncWriteExt::write_all(&mut s, request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out).await.unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or(out)
}

/// A 1-prefill + 1-decode gang of the worker image on a real node: scheduled by Phalanx,
/// GPUs prepared by our driver, the decode worker finds its prefill peer through the API,
/// a completion moves the KV between the pods and gives exactly the tokens of one
/// process; a worker placed against a required KV-domain hint stops with the reason.
#[tokio::test]
async fn a_prefill_decode_gang_of_worker_pods_serves_a_completion() {
    let image = worker_image();
    let (env, _drivers, _scheduler) = setup(1).await;
    let client = env.client();
    env.real_nodes()[0].import_image(&image).expect("worker image imported");
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/worker/rbac.yaml");
    phalanx_testenv::apply::apply_file(&client, &rbac).await.unwrap();
    let token = env
        .service_account_token(NS, "phalanx-worker", Default::default())
        .await
        .expect("a token for the worker's service account");
    let secret: k8s_openapi::api::core::v1::Secret = from_json(json!({
        "metadata": { "name": "phalanx-worker-token" },
        "stringData": { "token": token, "ca.crt": env.ca_pem(), "namespace": NS }
    }));
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let gang = json!({ "phalanx.dev/gang-min-members": "2", "phalanx.dev/kv-domain": "node", "phalanx.dev/kv-domain-policy": "required" });
    for (name, role) in [("prefill-0", "prefill"), ("decode-0", "decode")] {
        let mut pod = worker_pod(&env, name, role, gang.clone(), "r1", true, json!({}));
        pod.metadata.labels.get_or_insert_default().insert("phalanx.dev/gang".into(), "pd".into());
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let ready = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    wait::until(&pods, "prefill-0", TIMEOUT, "Ready", ready).await;
    let decode = wait::until(&pods, "decode-0", TIMEOUT, "Ready (its prefill peer found and checked)", ready).await;
    let ip = decode.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    let address = format!("{ip}:8000");

    let prompt = "Phalanx places prefill and decode in one KV domain";
    let body = format!(r#"{{"prompt":"{prompt}","max_tokens":24}}"#);
    let answer = raw_http(
        &address,
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    let tokens: Vec<u8> = serde_json::from_value(answer["choices"][0]["tokens"].clone()).unwrap();
    let config = phalanx_worker::model::ModelConfig::default();
    let aggregated = phalanx_worker::model::Model::new(config).generate(prompt.as_bytes(), 24).unwrap();
    assert_eq!(tokens, aggregated, "disaggregated across two pods = one process: {answer}");
    let layout = config.layout();
    let bytes = prompt.len() * layout.bytes_per_token();
    assert_eq!(answer["kv_transfer"]["bytes"], bytes);
    assert_eq!(answer["kv_transfer"]["transport"], "tcp", "two pods share no memory");
    let metrics = raw_http(&address, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()).await;
    assert!(
        metrics.contains(&format!("phalanx_worker_kv_transfer_bytes_total{{transport=\"tcp\"}} {bytes}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("phalanx_worker_placement_checks_total{check=\"kv-domain\",verdict=\"ok\"} "),
        "{metrics}"
    );

    // Placed by hand (nodeName, no scheduler) against a required rack-level KV domain: the
    // prefill worker is in rack r1, this one in r2.
    let far = json!({ "phalanx.dev/kv-domain": "rack", "phalanx.dev/kv-domain-policy": "required" });
    let by_hand = json!({ "nodeName": "real-0", "restartPolicy": "Never" });
    pods.create(&PostParams::default(), &worker_pod(&env, "decode-far", "decode", far, "r2", false, by_hand))
        .await
        .unwrap();
    let stopped = wait::until(&pods, "decode-far", TIMEOUT, "terminated", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some())))
    })
    .await;
    let terminated = stopped.status.unwrap().container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
    let message = terminated.message.unwrap_or_default();
    assert_eq!(terminated.exit_code, 1, "{message}");
    assert!(message.contains("kv-domain (required) VIOLATED"), "{message}");
    assert!(message.contains("decode-far in r2") && message.contains("in r1"), "{message}");
    let _ = pods.delete("decode-far", &DeleteParams::default()).await;
}

/// Runs helm against the environment; panics with its output when it fails.
fn helm(env: &TestEnv, args: &[&str]) -> String {
    let helm = phalanx_testenv::binaries::helm().expect("helm (hack/helm/build.sh)");
    let out = Command::new(&helm)
        .args(args)
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "helm {}:\n{text}", args.join(" "));
    text
}

/// The charts installed the way users install them, onto a real node: the scheduler and
/// the driver run as pods of the locally built images (the driver registers with the
/// kubelet and publishes the node's devices), the P/D chart's workers are scheduled by the
/// installed scheduler, prepared by the installed driver and serve a completion; an
/// upgrade with changed values rolls the scheduler, which still schedules; uninstalling
/// leaves no slices, CDI specs or finalizers behind.
#[tokio::test]
async fn helm_install_upgrade_and_uninstall_on_a_real_node() {
    let images: Vec<PathBuf> = ["phalanx-scheduler", "phalanx-dra-driver", "phalanx-worker"].map(app_image).to_vec();
    // kube-scheduler places the chart's own pods (the scheduler Deployment, the driver's
    // DaemonSet), as in any cluster; Phalanx is the second scheduler.
    let options = Options::default().real_nodes(1).kube_scheduler(true);
    let env = TestEnv::start(options).await.expect("control plane with a real node");
    let client = env.client();
    let node = &env.real_nodes()[0];
    for image in &images {
        node.import_image(image).expect("image imported");
    }
    // The label NVIDIA's GPU feature discovery puts on GPU nodes: the driver's DaemonSet
    // selects it by default.
    let nodes: Api<Node> = Api::all(client.clone());
    let label = json!({ "metadata": { "labels": { "nvidia.com/gpu.present": "true" } } });
    nodes.patch("real-0", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label)).await.unwrap();
    let base = [
        "--namespace",
        "phalanx-system",
        "--create-namespace",
        "--wait",
        "--timeout",
        "120s",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "driver.profile=hgx-h100-8",
        "--set-json",
        "driver.nodeSelector={}",
        "--set",
        "scheduler.replicas=1",
        "--set",
        "scheduler.resources.requests.cpu=50m",
        "--set",
        "scheduler.resources.requests.memory=64Mi",
    ];
    let mut install = vec!["install", "phalanx", "deploy/helm/phalanx"];
    install.extend(base);
    let notes = helm(&env, &install);
    assert!(notes.contains("schedulerName: phalanx-scheduler"), "NOTES tell how to opt in: {notes}");

    // The driver pod registered with the kubelet and published real-0's devices.
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    wait::poll(TIMEOUT, "real-0's slices published by the driver pod", || async {
        let list = slices.list(&ListParams::default()).await.ok()?;
        (list.items.iter().filter(|s| s.spec.node_name.as_deref() == Some("real-0")).count() == 2).then_some(())
    })
    .await;

    // A P/D set from the second chart: scheduled by the installed scheduler, GPUs prepared
    // by the installed driver, a completion through the decode worker.
    helm(
        &env,
        &[
            "install",
            "llama",
            "deploy/helm/phalanx-pd",
            "--namespace",
            "serving",
            "--create-namespace",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "kvTransfer.domain=node",
        ],
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "serving");
    let ready = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    wait::until(&pods, "llama-prefill-0", TIMEOUT, "Ready", ready).await;
    let decode = wait::until(&pods, "llama-decode-0", TIMEOUT, "Ready", ready).await;
    assert_eq!(decode.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("real-0"));
    let address = format!("{}:8000", decode.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap());
    let prompt = "Installed with helm";
    let body = format!(r#"{{"prompt":"{prompt}","max_tokens":8}}"#);
    let answer = raw_http(&address, format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
    .await;
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    let tokens: Vec<u8> = serde_json::from_value(answer["choices"][0]["tokens"].clone()).unwrap();
    let model = phalanx_worker::model::Model::new(phalanx_worker::model::ModelConfig::default());
    assert_eq!(tokens, model.generate(prompt.as_bytes(), 8).unwrap());

    // The installed driver, with the chart's RBAC and a node-bound token, wrote the
    // decode worker's claim's status.devices; its readiness probe passed (it is Ready).
    let entries = wait::poll(TIMEOUT, "the decode worker's claim's status.devices", || async {
        let entries: Vec<_> = claims_of(&client, &decode)
            .await
            .values()
            .flat_map(|c| c.status.as_ref().and_then(|s| s.devices.clone()).unwrap_or_default())
            .collect();
        (!entries.is_empty()).then_some(entries)
    })
    .await;
    assert!(
        !entries.is_empty() && entries.iter().all(|d| d.driver == "gpu.phalanx.dev" && d.data.is_some()),
        "{entries:#?}"
    );
    let driver_pods: Api<Pod> = Api::namespaced(client.clone(), "phalanx-system");
    let driver_pod = driver_pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=phalanx-dra-driver"))
        .await
        .unwrap()
        .items
        .remove(0);
    let conditions = driver_pod.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{conditions:#?}");

    // The driver image loads an NVML library (dlopen, which its glibc build can do): the
    // project's fake libnvidia-ml.so and a fake sysfs from the host, through hostPath,
    // give exactly the profile's GPUs for this node.
    let fake = env.real_nodes().iter().find(|n| n.name() == "real-0").unwrap().dir().join("fake-nvml");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::copy(workspace_binary("libphalanx_fake_nvml.so"), fake.join("libnvidia-ml.so.1")).unwrap();
    let status = Command::new(workspace_binary("phalanx-dra-driver"))
        .args(["fake-sysfs", "--profile", PROFILE, "--out"])
        .arg(fake.join("sys"))
        .status()
        .unwrap();
    assert!(status.success());
    let probe: Pod = from_json(json!({
        "metadata": { "name": "nvml-in-the-image", "namespace": "phalanx-system" },
        "spec": {
            "nodeName": "real-0", "restartPolicy": "Never",
            "containers": [{
                "name": "discover", "image": "ghcr.io/phalanx-dev/phalanx-dra-driver:0.1.0", "imagePullPolicy": "Never",
                "args": ["discover", "--node-name", "real-0", "--nvml-library", "/fake/libnvidia-ml.so.1", "--sysfs-root", "/fake/sys"],
                "env": [
                    { "name": "PHALANX_FAKE_NVML_PROFILE", "value": PROFILE },
                    { "name": "PHALANX_FAKE_NVML_NODE", "value": "real-0" }
                ],
                "volumeMounts": [{ "name": "fake", "mountPath": "/fake", "readOnly": true }]
            }],
            "volumes": [{ "name": "fake", "hostPath": { "path": fake.display().to_string(), "type": "Directory" } }]
        }
    }));
    let driver_ns: Api<Pod> = Api::namespaced(client.clone(), "phalanx-system");
    driver_ns.create(&PostParams::default(), &probe).await.unwrap();
    wait::until(&driver_ns, "nvml-in-the-image", TIMEOUT, "finished", |p: Option<&Pod>| {
        matches!(p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
    })
    .await;
    let printed = driver_ns.logs("nvml-in-the-image", &LogParams::default()).await.unwrap();
    let uuids = |yaml: &str| -> Vec<String> {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
        v["gpus"]
            .as_sequence()
            .map(|g| g.iter().filter_map(|g| g["uuid"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let expected = Command::new(workspace_binary("phalanx-dra-driver"))
        .args(["discover", "--profile", PROFILE, "--node-name", "real-0"])
        .output()
        .unwrap();
    let expected = uuids(&String::from_utf8_lossy(&expected.stdout));
    assert_eq!(expected.len(), 8);
    assert_eq!(uuids(&printed), expected, "NVML in the image: {printed}");

    // Upgrade with a changed configuration: the scheduler pod is replaced and schedules.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "phalanx-system");
    let before = deployments.get("phalanx-scheduler").await.unwrap().spec.template.metadata.unwrap().annotations;
    let mut upgrade =
        vec!["upgrade", "phalanx", "deploy/helm/phalanx", "--set", "scheduler.config.commitConcurrency=8"];
    upgrade.extend(base);
    helm(&env, &upgrade);
    let after = deployments.get("phalanx-scheduler").await.unwrap().spec.template.metadata.unwrap().annotations;
    assert_ne!(before, after, "the config checksum changed, so the pods roll");
    let config: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "phalanx-system");
    let data = config.get("phalanx-scheduler").await.unwrap().data.unwrap();
    assert!(data["config.yaml"].contains("commitConcurrency: 8"));
    let template: ResourceClaimTemplate = from_json(json!({
        "metadata": { "name": "one-gpu-after" },
        "spec": { "spec": { "devices": { "requests": [
            { "name": "dev", "exactly": { "deviceClassName": "gpu.phalanx.dev", "count": 1 } } ] } } }
    }));
    Api::<ResourceClaimTemplate>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
    create_pod(&client, "after-upgrade", &[("gpu", "one-gpu-after")], json!({})).await;
    wait_running(&client, "after-upgrade").await;
    delete_and_wait_gone(&client, "after-upgrade").await;

    // Uninstall: nothing of ours is left.
    helm(&env, &["uninstall", "llama", "--namespace", "serving", "--wait", "--timeout", "60s"]);
    wait::poll(TIMEOUT, "the P/D pods gone", || async {
        pods.list(&ListParams::default()).await.ok().filter(|l| l.items.is_empty()).map(|_| ())
    })
    .await;
    helm(&env, &["uninstall", "phalanx", "--namespace", "phalanx-system", "--wait", "--timeout", "60s"]);
    wait::poll(TIMEOUT, "the driver's slices removed", || async {
        let list = slices.list(&ListParams::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    let claims: Api<ResourceClaim> = Api::all(client.clone());
    wait::poll(TIMEOUT, "no claim left (no finalizer held them)", || async {
        claims.list(&ListParams::default()).await.ok().filter(|l| l.items.is_empty()).map(|_| ())
    })
    .await;
    let left = cdi_files(&node.cdi_dir());
    assert!(left.is_empty(), "CDI specs left behind: {left:?}");
}
