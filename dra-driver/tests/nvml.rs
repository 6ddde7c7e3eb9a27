//! The NVML backend without a GPU: the driver loads the project's fake
//! `libnvidia-ml.so`, which answers from a hardware profile, and reads PCI facts from the
//! profile's fake sysfs tree. Discovery through NVML must publish exactly what the
//! profile backend publishes for the same machine; health (XIDs, ECC, row remapping, a
//! GPU that cannot be watched), persisted faults and the agent's metrics run through the
//! same real code paths as on a GPU node.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use k8s_openapi::api::resource::v1::Device;
use phalanx_dra_driver::attributes::{self, GPU_DRIVER};
use phalanx_dra_driver::discovery::profile::BUILTIN;
use phalanx_dra_driver::discovery::{NodeContext, NodeInventory};
use phalanx_testenv::{Options, TestEnv, wait};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DRIVER: &str = env!("CARGO_BIN_EXE_phalanx-dra-driver");

fn fake_sysfs(profile: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("sys-{}", profile.replace('/', "_")));
    let status = std::process::Command::new(DRIVER)
        .args(["fake-sysfs", "--profile", profile, "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// `phalanx-dra-driver discover` through the fake NVML library for node `node` (index
/// `index` among the profile's nodes), with `labels`.
fn discover_nvml(profile: &str, node: &str, index: usize, labels: &[&str], dir: &Path) -> NodeInventory {
    let sysfs = fake_sysfs(profile, dir);
    let mut cmd = std::process::Command::new(DRIVER);
    cmd.args(["discover", "--node-name", node, "--nvml-library"])
        .arg(fake_nvml_library())
        .arg("--sysfs-root")
        .arg(&sysfs)
        .env("PHALANX_FAKE_NVML_PROFILE", profile)
        .env("PHALANX_FAKE_NVML_NODE", node)
        .env("PHALANX_FAKE_NVML_NODE_INDEX", index.to_string())
        .env_remove("PHALANX_PROFILE");
    for l in labels {
        cmd.args(["--node-label", l]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "discover failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_yaml::from_slice(&out.stdout).expect("inventory YAML")
}

fn devices(inv: &NodeInventory) -> Vec<Device> {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    attributes::gpu_devices(inv, &Default::default(), &now)
}

#[test]
fn nvml_and_profiles_publish_identical_devices_for_every_profile() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (name, _) in BUILTIN {
        // Node 20 of an NVL72 profile is in the second rack: its domain comes from fabric info.
        for index in [0, 20] {
            let node = format!("node-{index}");
            let ctx = NodeContext { name: node.clone(), index, labels: BTreeMap::new() };
            let from_profile = inventory(name, &ctx);
            let from_nvml = discover_nvml(name, &node, index, &[], dir.path());
            assert_eq!(from_nvml.gpus.len(), from_profile.gpus.len(), "{name}");
            for (n, p) in from_nvml.gpus.iter().zip(&from_profile.gpus) {
                assert_eq!(
                    n.device_nodes,
                    vec![format!("/dev/nvidia{}", p.index)],
                    "{name}: NVML names the device node"
                );
            }
            assert_eq!(devices(&from_nvml), devices(&from_profile), "{name} node {index}: NVML and profile differ");
            checked += from_nvml.gpus.len();
        }
    }
    assert!(checked >= 2 * (8 + 4 + 8 + 4), "every built-in profile was compared ({checked} GPUs)");
}

#[test]
fn fabric_info_wins_over_the_label_and_the_label_is_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    // NVL72: fabric info gives the rack; a stale label does not override it.
    let nvl = discover_nvml("gb200-nvl72", "tray-3", 3, &["nvidia.com/gpu.clique=stale.9"], dir.path());
    let profile = inventory("gb200-nvl72", &NodeContext { name: "tray-3".into(), index: 3, ..Default::default() });
    assert_eq!(nvl.gpus[0].nvlink_domain, profile.gpus[0].nvlink_domain);
    assert!(nvl.gpus[0].nvlink_domain.as_deref().unwrap().ends_with(".1"), "{:?}", nvl.gpus[0].nvlink_domain);
    // HGX: COMPLETED with a zero cluster UUID is not multi-node NVLink, so the label applies.
    let hgx = discover_nvml("hgx-h100-8", "h", 0, &["nvidia.com/gpu.clique=abc.7"], dir.path());
    assert!(hgx.gpus.iter().all(|g| g.nvlink_domain.as_deref() == Some("abc.7")));
    // Without the label, the island is its own domain; without NVLink, none.
    let hgx = discover_nvml("hgx-h100-8", "h", 0, &[], dir.path());
    assert!(hgx.gpus.iter().all(|g| g.nvlink_domain.as_deref() == Some("h.island-0")));
    let l40s = discover_nvml("l40s-pcie-8", "l", 0, &["nvidia.com/gpu.clique=abc.7"], dir.path());
    assert!(l40s.gpus.iter().all(|g| g.nvlink_domain.is_none() && g.nvlink_island.is_none()));
}

struct Agent {
    child: tokio::process::Child,
    log: PathBuf,
}

/// A failing test shows the agent's log.
impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- agent log ({}) -----\n{}", self.log.display(), self.log());
        }
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port of `/metrics`, from the agent's log.
    async fn http_port(&self) -> u16 {
        let log = &self.log;
        wait::poll(TIMEOUT, "the agent serving HTTP", || async move {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let line = text.lines().find(|l| l.contains("serving /metrics"))?;
            let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
            addr.rsplit(':').next()?.parse().ok()
        })
        .await
    }
}

struct Machine {
    root: PathBuf,
    sysfs: PathBuf,
}

impl Machine {
    fn events(&self) -> PathBuf {
        self.root.join("events")
    }
    fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    fn inject(&self, line: &str) {
        let mut text = std::fs::read_to_string(self.events()).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        std::fs::write(self.events(), text).unwrap();
    }
}

fn spawn_agent(env: &TestEnv, m: &Machine, node: &str, run: usize) -> Agent {
    let log = m.root.join(format!("agent-{run}.log"));
    let mut cmd = tokio::process::Command::new(DRIVER);
    cmd.args(["run", "--node-name", node, "--no-nics", "--fault-poll-ms", "50", "--remap-poll-ms", "200"])
        .args(["--http-addr", "127.0.0.1:0", "--nvml-library"])
        .arg(fake_nvml_library())
        .arg("--sysfs-root")
        .arg(&m.sysfs)
        .arg("--kubelet-root")
        .arg(m.kubelet())
        .arg("--cdi-root")
        .arg(m.root.join("cdi"))
        .env("KUBECONFIG", env.kubeconfig_path())
        .env("RUST_LOG", "info")
        .env("PHALANX_FAKE_NVML_PROFILE", "hgx-h100-8")
        .env("PHALANX_FAKE_NVML_NODE", node)
        .env("PHALANX_FAKE_NVML_EVENTS", m.events())
        // GPU 3's events cannot be watched.
        .env("PHALANX_FAKE_NVML_NO_EVENTS", "3")
        .env_remove("PHALANX_PROFILE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    Agent { child: cmd.spawn().expect("agent starts"), log }
}

/// device → taint value of `node`'s GPU slices (devices without a taint omitted).
async fn taints(client: &kube::Client, node: &str) -> Option<BTreeMap<String, String>> {
    let slices = slices_of(client, GPU_DRIVER, node).await;
    if slices.is_empty() {
        return None;
    }
    let mut out = BTreeMap::new();
    for d in slices.iter().flat_map(|s| s.spec.devices.clone().unwrap_or_default()) {
        if let Some(t) = d.taints.as_ref().and_then(|t| t.first()) {
            out.insert(d.name.clone(), t.value.clone().unwrap_or_default());
        }
    }
    Some(out)
}

async fn wait_taints(client: &kube::Client, node: &str, want: &[(&str, &str)]) {
    let want: BTreeMap<String, String> = want.iter().map(|(d, r)| (d.to_string(), r.to_string())).collect();
    let what = format!("{node}'s taints to become {want:?}");
    wait::poll(TIMEOUT, &what, || async { (taints(client, node).await.as_ref() == Some(&want)).then_some(()) }).await;
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

#[tokio::test]
async fn nvml_health_is_per_gpu_persisted_until_cleared_and_measured() {
    let env = TestEnv::start(Options::default().controller_manager(false).kwok(false)).await.expect("control plane");
    let client = env.client();
    let node = "node-nvml";
    create_node(&client, node, json!({})).await;
    let dir = tempfile::Builder::new().prefix("nvml").tempdir_in("/tmp").unwrap();
    let m = Machine { root: dir.path().to_owned(), sysfs: fake_sysfs("hgx-h100-8", dir.path()) };
    std::fs::write(m.events(), "").unwrap();

    let mut agent = spawn_agent(&env, &m, node, 0);
    // The published devices are the profile's, and the GPU that cannot be watched is
    // tainted while the others are watched still.
    wait_taints(&client, node, &[("gpu-3", "events-unsupported")]).await;
    let published: Vec<Device> = slices_of(&client, GPU_DRIVER, node)
        .await
        .iter()
        .flat_map(|s| s.spec.devices.clone().unwrap_or_default())
        .map(|mut d| {
            d.taints = None;
            d
        })
        .collect();
    assert_eq!(published, devices(&inventory("hgx-h100-8", &NodeContext::named(node))));

    m.inject("5 xid 79");
    m.inject("6 xid 13 # an application XID: not a GPU fault");
    m.inject("2 ecc-dbe");
    m.inject("4 ecc-sbe # corrected: counted only");
    m.inject("1 remap-failure");
    let faulty = [
        ("gpu-1", "row-remap-failure"),
        ("gpu-2", "ecc-double-bit"),
        ("gpu-3", "events-unsupported"),
        ("gpu-5", "xid-79"),
    ];
    wait_taints(&client, node, &faulty).await;

    let port = agent.http_port().await;
    let (status, metrics) = http_get(port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"phalanx_dra_devices{driver="gpu.phalanx.dev",health="unhealthy"} 4"#), "{metrics}");
    assert!(metrics.contains(r#"phalanx_dra_corrected_ecc_errors_total{device="gpu-4"} 1"#), "{metrics}");
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    let (status, why) = http_get(port, "/readyz").await;
    assert_eq!((status, why.contains("kubelet has not registered")), (503, true), "no kubelet here: {why}");

    // Restarted with no new events, the faults are still there (they were persisted).
    agent.child.kill().await.unwrap();
    std::fs::write(m.events(), "").unwrap();
    let agent = spawn_agent(&env, &m, node, 1);
    wait::poll(TIMEOUT, "the restarted agent reading its fault store", || async {
        agent.log().contains("persisted faults").then_some(())
    })
    .await;
    wait_taints(&client, node, &faulty).await;

    // An operator clears one GPU; the running agent untaints it, the rest stay.
    let out = std::process::Command::new(DRIVER)
        .args(["faults", "clear", "--device", "gpu-5", "--kubelet-root"])
        .arg(m.kubelet())
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("cleared gpu-5"));
    let list = std::process::Command::new(DRIVER)
        .args(["faults", "list", "--kubelet-root"])
        .arg(m.kubelet())
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("gpu-1\trow-remap-failure") && !list.contains("gpu-5"), "{list}");
    wait_taints(&client, node, &faulty[..3]).await;

    // HGX fabric info is no multi-node NVLink, so the clique label is the NVLink domain's
    // fallback: labelling the Node republishes every GPU with it, without a restart.
    let domains = || async {
        let slices = slices_of(&client, GPU_DRIVER, node).await;
        slices
            .iter()
            .flat_map(|s| s.spec.devices.clone().unwrap_or_default())
            .filter_map(|d| d.attributes?.get("nvlinkDomain")?.string.clone())
            .collect::<std::collections::BTreeSet<String>>()
    };
    assert_eq!(domains().await, [format!("{node}.island-0")].into());
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let label = json!({ "metadata": { "labels": { "nvidia.com/gpu.clique": "4f2c.12" } } });
    nodes.patch(node, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label)).await.unwrap();
    wait::poll(TIMEOUT, "the clique label to reach every GPU's nvlinkDomain", || async {
        (domains().await == ["4f2c.12".to_owned()].into()).then_some(())
    })
    .await;
}
