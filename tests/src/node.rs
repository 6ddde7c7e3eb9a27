//! Real nodes: a real kubelet and containerd (with runc and CNI) per node, registered
//! with the test control plane, running real containers from locally built images.
//!
//! Each node lives in namespaces of its own, held by one "holder" process
//! (`unshare --mount --net`): its own network namespace (one veth pair to the host; the
//! node's InternalIP is the namespace end), and its own mount namespace in which the
//! host-global paths the kubelet and containerd hard-code (`/var/lib/kubelet`,
//! `/var/log/pods`, `/var/log/containers`, `/run/containerd`) are bind mounts of the
//! node's directory. Containers live under a cgroup root of their own
//! (`/phalanx-<run>-<i>` in every hierarchy). Teardown kills every process in the node's
//! cgroups and namespaces, then the holder: the namespaces, their mounts and the veth go
//! with it, and the cgroup directories are removed. Nothing is left on the machine.
//!
//! What this machine kind needs (each found the hard way, see `docs/real-nodes.md`):
//! cgroup v1 (`failCgroupV1: false`, `cgroupDriver: cgroupfs`), no `CAP_SYS_RESOURCE`
//! (`restrict_oom_score_adj`, `oomScoreAdj: 0`), swap tolerated, a non-loopback node IP,
//! a CNI config even for host-network pods, the sandbox image pinned to our pause image.
//! [`preflight`] checks what it can and says what is missing.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::Error;
use crate::binaries::run_script;
use crate::process::Component;

/// Environment variable naming the directory of the node binaries (containerd, runc,
/// crictl, CNI plugins); `hack/node/build.sh` runs when it is absent.
pub const NODE_BIN_ENV: &str = "PHALANX_NODE_BIN";
/// Environment variable naming the directory of the base images (`pause.tar`,
/// `testbox.tar`); `hack/images/build.sh base` runs when it is absent.
pub const IMAGES_ENV: &str = "PHALANX_IMAGES";

/// The pod sandbox image every real node is pinned to (built by `hack/images`).
pub const PAUSE_IMAGE: &str = "ghcr.io/phalanx-dev/pause:3.10";
/// A small image with a shell (Debian's static busybox) for test pods.
pub const TESTBOX_IMAGE: &str = "ghcr.io/phalanx-dev/testbox:1.35.0";

const NODE_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The `kubernetes` Service's ClusterIP (first address of the control plane's service range).
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// Environment variable set on every process a node starts, naming the node's run-unique id.
const NODE_MARKER: &str = "PHALANX_REAL_NODE";

/// The addresses of one run's nodes: a /24 of 10.0.0.0/8 not used on this machine;
/// node `i` gets the /30 at `4i` (host end `.4i+1`, node end `.4i+2`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Network {
    base: [u8; 3],
    /// A per-run tag for names (cgroups, veths).
    pub(crate) run: u16,
}

impl Network {
    /// Picks a free /24 for up to 63 nodes.
    pub(crate) fn choose(nodes: usize) -> Result<Network, Error> {
        if nodes > 16 {
            return Err(Error::RealNode(format!("{nodes} real nodes asked for; at most 16 per environment")));
        }
        let used = output("ip", &["-4", "-o", "addr", "show"])?;
        for _ in 0..64 {
            let r = RandomState::new().build_hasher().finish();
            // Veths in 10.200.0.0–10.239.255.255, pods in the matching 10.100–10.139 range.
            let base = [10, 200 + (r % 40) as u8, (r >> 8) as u8];
            let prefix = format!("inet {}.{}.{}.", base[0], base[1], base[2]);
            let pods = format!("{}.{}.{}.", base[0], base[1] - 100, base[2]);
            let routes = output("ip", &["-4", "route", "show"])?;
            if !used.contains(&prefix) && !routes.contains(&pods) {
                return Ok(Network { base, run: (r >> 16) as u16 });
            }
        }
        Err(Error::RealNode("no free 10.x.y.0/24 for the nodes' veths".into()))
    }

    /// The host end of node `i`'s veth (the apiserver is reached there).
    pub(crate) fn host_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.base[0], self.base[1], self.base[2], (4 * i + 1) as u8)
    }

    /// Node `i`'s pod range: a /28 (13 pods beside the bridge's gateway), unique on the
    /// machine so the host can route replies to pods (e.g. from the apiserver).
    pub(crate) fn pod_cidr(&self, i: usize) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(self.base[0], self.base[1] - 100, self.base[2], (16 * i) as u8), 28)
    }

    /// Node `i`'s InternalIP (the namespace end).
    pub(crate) fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.base[0], self.base[1], self.base[2], (4 * i + 2) as u8)
    }
}

/// Checks that this machine can run real nodes; the error says what is missing.
pub fn preflight() -> Result<(), Error> {
    let fail = |what: String| Err(Error::RealNode(what));
    // /proc/self is owned by the effective user.
    let euid = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self").map_err(|source| Error::Io { path: "/proc/self".into(), source })?,
    );
    if euid != 0 {
        return fail(
            "real nodes need root (kubelet, containerd and runc create namespaces, mounts and cgroups)".into(),
        );
    }
    for (tool, package) in [
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("mount", "mount"),
        ("iptables", "iptables"),
    ] {
        if Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return fail(format!(
                "`{tool}` is not installed (Debian package {package}; `make node-binaries` installs it)"
            ));
        }
    }
    let mode = cgroup_mode()?;
    if mode == CgroupMode::None {
        return fail("no cgroup file system is mounted under /sys/fs/cgroup".into());
    }
    if !Path::new("/proc/self/ns/net").exists() || !Path::new("/proc/self/ns/mnt").exists() {
        return fail("the kernel has no network or mount namespaces".into());
    }
    let overlay = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !overlay.lines().any(|l| l.trim_end().ends_with("overlay")) {
        // containerd's overlayfs snapshotter; `modprobe overlay` loads it where it is a module.
        let _ = Command::new("modprobe").arg("overlay").status();
        let again = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !again.lines().any(|l| l.trim_end().ends_with("overlay")) {
            return fail("the kernel has no overlay file system (containerd's snapshotter needs it)".into());
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgroupMode {
    /// cgroup v1 controllers (maybe with cgroup2 at `/sys/fs/cgroup/unified`).
    V1,
    /// Only cgroup v2 at `/sys/fs/cgroup`.
    V2,
    None,
}

/// One mounted cgroup hierarchy: its mount point, and whether it is cgroup v1.
fn cgroup_mounts() -> Result<Vec<(PathBuf, bool, String)>, Error> {
    let info = read("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in info.lines() {
        // `id parent major:minor root mountpoint options... - fstype source superoptions`
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let mut fields = right.split(' ');
        let fstype = fields.next().unwrap_or_default();
        let super_options = fields.nth(1).unwrap_or_default().to_owned();
        match fstype {
            "cgroup" => out.push((PathBuf::from(mount_point), true, super_options)),
            "cgroup2" => out.push((PathBuf::from(mount_point), false, super_options)),
            _ => {}
        }
    }
    Ok(out)
}

fn cgroup_mode() -> Result<CgroupMode, Error> {
    let mounts = cgroup_mounts()?;
    Ok(if mounts.iter().any(|(_, v1, _)| *v1) {
        CgroupMode::V1
    } else if mounts.iter().any(|(p, v1, _)| !v1 && p == Path::new("/sys/fs/cgroup")) {
        CgroupMode::V2
    } else {
        CgroupMode::None
    })
}

/// Where the node binaries and base images are.
#[derive(Debug, Clone)]
pub(crate) struct NodeAssets {
    pub(crate) bin: PathBuf,
    pub(crate) kubelet: PathBuf,
    pub(crate) images: PathBuf,
}

impl NodeAssets {
    pub(crate) fn locate(kube_bin: &Path) -> Result<NodeAssets, Error> {
        let kubelet = kube_bin.join("kubelet");
        if !kubelet.is_file() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/envtest/build.sh");
            run_script(&script, &["kubelet"])?;
            if !kubelet.is_file() {
                return Err(Error::Binaries(format!(
                    "the kubelet is missing from {}; run `make node-binaries`",
                    kube_bin.display()
                )));
            }
        }
        let bin = match std::env::var_os(NODE_BIN_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => run_script(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/node/build.sh"), &[])?,
        };
        for name in ["containerd", "containerd-shim-runc-v2", "runc", "ctr", "bridge", "host-local"] {
            if !bin.join(name).is_file() {
                return Err(Error::Binaries(format!(
                    "{name} is missing from {}; run `make node-binaries` (or unset {NODE_BIN_ENV})",
                    bin.display()
                )));
            }
        }
        let images = match std::env::var_os(IMAGES_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => run_script(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/images/build.sh"), &["base"])?,
        };
        for name in ["pause.tar", "testbox.tar"] {
            if !images.join(name).is_file() {
                return Err(Error::Binaries(format!(
                    "{name} is missing from {}; run `bash hack/images/build.sh base` (or unset {IMAGES_ENV})",
                    images.display()
                )));
            }
        }
        Ok(NodeAssets { bin, kubelet, images })
    }
}

/// The directory of the Phalanx images (`phalanx-scheduler.tar`, `phalanx-dra-driver.tar`,
/// `phalanx-worker.tar`): `PHALANX_APP_IMAGES`, else built by `hack/images/build.sh phalanx`.
pub fn app_images() -> Result<PathBuf, Error> {
    match std::env::var_os(APP_IMAGES_ENV) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => run_script(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/images/build.sh"), &["phalanx"]),
    }
}

/// Environment variable naming the directory of the Phalanx images (`make images`).
pub const APP_IMAGES_ENV: &str = "PHALANX_APP_IMAGES";

/// What a node needs from the control plane.
#[derive(Debug, Clone)]
pub(crate) struct ControlPlane {
    pub(crate) api_port: u16,
    pub(crate) ca_cert: PathBuf,
    pub(crate) feature_gates: Option<&'static str>,
}

/// One real node. Dropping it tears it down (see the module docs).
#[derive(Debug)]
pub struct RealNode {
    name: String,
    index: usize,
    dir: PathBuf,
    node_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    pod_cidr: (Ipv4Addr, u8),
    api_port: u16,
    run: u16,
    assets: NodeAssets,
    holder: Option<Child>,
    containerd: Option<Component>,
    kubelet: Option<Component>,
    cgroup_dirs: Vec<PathBuf>,
}

/// The host paths bind-mounted, inside a node's mount namespace (on private tmpfs parents),
/// from its directory.
const PRIVATE_PATHS: [(&str, &str); 5] = [
    ("/var/lib/kubelet", "kubelet"),
    ("/var/log/pods", "log/pods"),
    ("/var/log/containers", "log/containers"),
    ("/run/containerd", "run/containerd"),
    // Where a DRA driver's DaemonSet pod writes CDI specs (hostPath) and containerd reads them.
    ("/run/cdi", "cdi"),
];

impl RealNode {
    /// Starts node `index` named `name` under `dir`; returns once containerd runs and the
    /// kubelet has started (see [`RealNode::wait_ready`]).
    pub(crate) fn start(
        name: &str,
        index: usize,
        dir: &Path,
        network: &Network,
        assets: &NodeAssets,
        control_plane: &ControlPlane,
        token: &str,
    ) -> Result<RealNode, Error> {
        let mut node = RealNode {
            name: name.to_owned(),
            index,
            dir: dir.to_owned(),
            node_ip: network.node_ip(index),
            host_ip: network.host_ip(index),
            pod_cidr: network.pod_cidr(index),
            api_port: control_plane.api_port,
            run: network.run,
            assets: assets.clone(),
            holder: None,
            containerd: None,
            kubelet: None,
            cgroup_dirs: Vec::new(),
        };
        for sub in
            ["kubelet", "log/pods", "log/containers", "run/containerd", "containerd", "cni/net.d", "cni/data", "cdi"]
        {
            mkdir(&dir.join(sub))?;
        }
        node.namespaces()?;
        node.cgroups()?;
        node.write_configs(control_plane, token)?;
        node.start_containerd()?;
        node.import_images()?;
        node.start_kubelet()?;
        Ok(node)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubelet's root directory as seen from the host (inside the node it is
    /// `/var/lib/kubelet`): a DRA driver run on the host registers under
    /// `<this>/plugins_registry`.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    /// The directory containerd reads CDI specs from.
    pub fn cdi_dir(&self) -> PathBuf {
        self.dir.join("cdi")
    }

    /// containerd's socket, as seen from the host.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("run/containerd/containerd.sock")
    }

    /// The node's InternalIP.
    pub fn ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// Where this node's pods reach the apiserver: the host end of its veth (the
    /// apiserver listens there; there is no kube-proxy for the `kubernetes` Service).
    pub fn apiserver_host(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The kubelet's log file.
    pub fn kubelet_log(&self) -> Option<&Path> {
        self.kubelet.as_ref().map(Component::log_path)
    }

    /// The kubelet's process id, while it runs.
    pub fn kubelet_pid(&self) -> Option<u32> {
        self.kubelet.as_ref().and_then(Component::pid)
    }

    /// Runs `program args` inside the node's network and mount namespaces (as a command
    /// the caller spawns), e.g. `crictl`.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={}", self.holder_pid())).args(["--mount", "--net", "--"]).arg(program);
        cmd.env("PATH", path_with(&self.assets.bin));
        // Inherited by everything containerd starts (shims run in namespaces of their own,
        // re-parented to init): teardown finds them by it.
        cmd.env(NODE_MARKER, self.cgroup_root());
        cmd
    }

    /// `crictl` against this node's containerd.
    pub fn crictl(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = self.command(&self.assets.bin.join("crictl"));
        cmd.args(["--runtime-endpoint", "unix:///run/containerd/containerd.sock"]).args(args);
        command_output(cmd, "crictl")
    }

    /// Stops the kubelet (SIGKILL) and starts it again with the same configuration:
    /// running containers are untouched, plugins must re-register.
    pub fn restart_kubelet(&mut self) -> Result<(), Error> {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop();
        }
        self.start_kubelet()
    }

    /// Fails with the log tail if containerd or the kubelet exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        for c in [self.containerd.as_mut(), self.kubelet.as_mut()].into_iter().flatten() {
            c.check_running()?;
        }
        Ok(())
    }

    /// The components' logs, for a failed test.
    pub(crate) fn log_tails(&self, lines: usize) -> String {
        [&self.containerd, &self.kubelet]
            .into_iter()
            .flatten()
            .map(|c| {
                format!("----- {} {} ({}) -----\n{}", self.name, c.name(), c.log_path().display(), c.log_tail(lines))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the Node is registered and Ready.
    pub(crate) async fn wait_ready(&mut self, client: &kube::Client) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(client.clone());
        let start = Instant::now();
        loop {
            let last = match nodes.get_opt(&self.name).await {
                Ok(Some(node)) => {
                    let ready = node
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .map(|c| (c.status.clone(), c.message.clone().unwrap_or_default()));
                    match ready {
                        Some((status, _)) if status == "True" => return Ok(()),
                        Some((status, message)) => format!("Ready={status}: {message}"),
                        None => "registered, no Ready condition yet".into(),
                    }
                }
                Ok(None) => "not registered yet".into(),
                Err(e) => e.to_string(),
            };
            self.check_running()?;
            if start.elapsed() > NODE_READY_TIMEOUT {
                return Err(Error::NotReady {
                    component: format!("real node {}", self.name),
                    seconds: NODE_READY_TIMEOUT.as_secs(),
                    detail: format!("{last}\n{}", self.log_tails(30)),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map(Child::id).expect("holder runs while the node exists")
    }

    fn veth(&self) -> String {
        format!("phx{:04x}n{}", self.run, self.index)
    }

    fn cgroup_root(&self) -> String {
        format!("phalanx-{:04x}-{}", self.run, self.index)
    }

    /// The holder process and its namespaces: veth, addresses, routes, bind mounts.
    fn namespaces(&mut self) -> Result<(), Error> {
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "--net", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn { component: "node namespaces".into(), binary: "unshare".into(), source })?;
        let pid = holder.id();
        self.holder = Some(holder);
        // The namespaces exist once the holder has exec'd `sleep`.
        let start = Instant::now();
        let own = std::fs::read_link("/proc/self/ns/net").ok();
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() == own {
            if start.elapsed() > Duration::from_secs(5) {
                return Err(Error::RealNode("the node's namespace holder did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let veth = self.veth();
        let pid_s = pid.to_string();
        run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid_s])?;
        run("ip", &["addr", "add", &format!("{}/30", self.host_ip), "dev", &veth])?;
        run("ip", &["link", "set", &veth, "up"])?;
        let inside = |args: &[&str]| -> Result<(), Error> {
            let mut all = vec!["--target", &pid_s, "--net", "--mount", "--"];
            all.extend_from_slice(args);
            run("nsenter", &all)
        };
        inside(&["ip", "link", "set", "lo", "up"])?;
        // The node routes between its veth and its pods' bridge (this namespace only).
        inside(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        inside(&["ip", "addr", "add", &format!("{}/30", self.node_ip), "dev", "eth0"])?;
        inside(&["ip", "link", "set", "eth0", "up"])?;
        inside(&["ip", "route", "add", "default", "via", &self.host_ip.to_string()])?;
        // The `kubernetes` Service, as kube-proxy would make it: its ClusterIP to the
        // apiserver on this node's veth host end (pods: PREROUTING; host network: OUTPUT).
        let to = format!("{}:{}", self.host_ip, self.api_port);
        for chain in ["PREROUTING", "OUTPUT"] {
            inside(&[
                "iptables",
                "-t",
                "nat",
                "-A",
                chain,
                "-d",
                KUBERNETES_SERVICE_IP,
                "-p",
                "tcp",
                "--dport",
                "443",
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ])?;
        }
        // Replies from the host (the apiserver) to this node's pods; the route goes with the veth.
        let (net, bits) = self.pod_cidr;
        run("ip", &["route", "add", &format!("{net}/{bits}"), "via", &self.node_ip.to_string(), "dev", &veth])?;
        // Private tmpfs over the parents of every host-global path the kubelet, containerd and
        // the CNI plugins use (`/var/lib/cni` too), inside this mount namespace only: nothing
        // is created on the host, and no other environment's mounts depend on it.
        // As on a systemd host, the node's `/` is a shared mount (a peer group of this
        // namespace alone: the host's mounts stay private): pods' `HostToContainer`
        // hostPath mounts (the driver's view of the host's `/`) need a shared or slave
        // source.
        inside(&["mount", "--make-rshared", "/"])?;
        for parent in ["/run", "/var/lib", "/var/log"] {
            inside(&["mount", "-t", "tmpfs", "-o", "mode=755", "phalanx-node", parent])?;
        }
        for (path, sub) in PRIVATE_PATHS {
            let source = self.dir.join(sub);
            inside(&["mkdir", "-p", path])?;
            inside(&["mount", "--bind", &source.display().to_string(), path])?;
        }
        Ok(())
    }

    /// The node's cgroup root in every hierarchy (cpuset values copied from the parent).
    fn cgroups(&mut self) -> Result<(), Error> {
        let root = self.cgroup_root();
        for (mount, v1, options) in cgroup_mounts()? {
            let dir = mount.join(&root);
            if dir.exists() {
                continue;
            }
            mkdir(&dir)?;
            self.cgroup_dirs.push(dir.clone());
            if v1 && options.split(',').any(|o| o == "cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = read(mount.join(file))?;
                    std::fs::write(dir.join(file), value.trim())
                        .map_err(|source| Error::Io { path: dir.join(file), source })?;
                }
            }
        }
        Ok(())
    }

    fn write_configs(&self, control_plane: &ControlPlane, token: &str) -> Result<(), Error> {
        let dir = &self.dir;
        let bin = self.assets.bin.display();
        let cgroup_v1 = cgroup_mode()? == CgroupMode::V1;
        write(
            &dir.join("containerd/config.toml"),
            &format!(
                r#"version = 3
root = "{root}"
state = "/run/containerd"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "/run/containerd/containerd.sock"

[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"

[plugins.'io.containerd.cri.v1.runtime']
  # This machine's root lacks CAP_SYS_RESOURCE: never lower a container's OOM score.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = ["/var/run/cdi"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{bin}/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{bin}"]
    conf_dir = "{cni}/net.d"
    use_internal_loopback = true
"#,
                root = dir.join("containerd/root").display(),
                pause = PAUSE_IMAGE,
                cni = dir.join("cni").display(),
            ),
        )?;
        // Pods on the node's own bridge, in the node's own /28.
        write(
            &dir.join("cni/net.d/10-phalanx.conflist"),
            &format!(
                r#"{{"cniVersion": "1.0.0", "name": "phalanx", "plugins": [{{
  "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
  "ipam": {{"type": "host-local", "dataDir": "{data}", "ranges": [[{{"subnet": "{subnet}"}}]],
           "routes": [{{"dst": "0.0.0.0/0"}}]}}
}}]}}
"#,
                data = dir.join("cni/data").display(),
                subnet = format_args!("{}/{}", self.pod_cidr.0, self.pod_cidr.1),
            ),
        )?;
        write(
            &dir.join("kubelet.kubeconfig"),
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: https://{host}:{port}\n    certificate-authority: {ca}\n\
                 users:\n- name: {user}\n  user:\n    token: {token}\n\
                 contexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: {user}\n\
                 current-context: testenv\n",
                host = self.host_ip,
                port = control_plane.api_port,
                ca = control_plane.ca_cert.display(),
                user = format_args!("system:node:{}", self.name),
            ),
        )?;
        let gates = control_plane
            .feature_gates
            .map(|g| {
                let entries: Vec<String> =
                    g.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| format!("  {k}: {v}")).collect();
                format!("featureGates:\n{}\n", entries.join("\n"))
            })
            .unwrap_or_default();
        write(
            &dir.join("kubelet.yaml"),
            &format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine kind has a cgroup v1 hierarchy and no systemd in charge of cgroups.
failCgroupV1: {fail_v1}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
# No CAP_SYS_RESOURCE: the kubelet must not lower its own OOM score.
oomScoreAdj: 0
failSwapOn: false
memorySwap: {{}}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
volumePluginDir: {volume_plugins}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
makeIPTablesUtilChains: false
registerNode: true
# The node's pod range is a /28: 13 addresses.
maxPods: 12
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
{gates}"#,
                fail_v1 = !cgroup_v1,
                cgroup_root = self.cgroup_root(),
                ip = self.node_ip,
                volume_plugins = dir.join("volume-plugins").display(),
            ),
        )?;
        Ok(())
    }

    fn start_containerd(&mut self) -> Result<(), Error> {
        let mut cmd = self.command(&self.assets.bin.join("containerd"));
        cmd.arg(format!("--config={}", self.dir.join("containerd/config.toml").display()));
        let logs = self.dir.join("logs");
        mkdir(&logs)?;
        let component = Component::spawn_command(&format!("{}-containerd", self.name), cmd, &logs)?;
        self.containerd = Some(component);
        let socket = self.containerd_socket();
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            self.containerd.as_mut().expect("just set").check_running()?;
            if start.elapsed() > Duration::from_secs(30) {
                return Err(Error::NotReady {
                    component: format!("{} containerd", self.name),
                    seconds: 30,
                    detail: self.log_tails(30),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Imports the pause and test images (and any `*.tar` in the images directory).
    fn import_images(&self) -> Result<(), Error> {
        let dir = std::fs::read_dir(&self.assets.images)
            .map_err(|source| Error::Io { path: self.assets.images.clone(), source })?;
        let mut archives: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect();
        archives.sort();
        for archive in archives {
            self.import_image(&archive)?;
        }
        Ok(())
    }

    /// Imports one OCI archive into the node's containerd (namespace `k8s.io`).
    pub fn import_image(&self, archive: &Path) -> Result<(), Error> {
        let mut cmd = Command::new(self.assets.bin.join("ctr"));
        cmd.arg(format!("--address={}", self.containerd_socket().display()))
            .args(["--namespace=k8s.io", "images", "import", "--platform=linux/amd64"])
            .arg(archive);
        command_output(cmd, "ctr images import").map(drop)
    }

    fn start_kubelet(&mut self) -> Result<(), Error> {
        let mut cmd = self.command(&self.assets.kubelet);
        cmd.args([
            format!("--config={}", self.dir.join("kubelet.yaml").display()),
            format!("--kubeconfig={}", self.dir.join("kubelet.kubeconfig").display()),
            format!("--hostname-override={}", self.name),
            format!("--node-ip={}", self.node_ip),
            "--v=2".into(),
        ]);
        let logs = self.dir.join("logs");
        let component = Component::spawn_command(&format!("{}-kubelet", self.name), cmd, &logs)?;
        self.kubelet = Some(component);
        Ok(())
    }

    /// Every process in the node's namespaces or cgroups, except the holder.
    fn processes(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Some(holder) = self.holder.as_ref().map(Child::id) else { return pids };
        let mnt = std::fs::read_link(format!("/proc/{holder}/ns/mnt")).ok();
        let net = std::fs::read_link(format!("/proc/{holder}/ns/net")).ok();
        let marker = format!("{NODE_MARKER}={}", self.cgroup_root()).into_bytes();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                if pid == holder {
                    continue;
                }
                let same = |ns: &str, want: &Option<PathBuf>| {
                    want.is_some() && std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok() == *want
                };
                let marked = || {
                    std::fs::read(format!("/proc/{pid}/environ"))
                        .is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == marker.as_slice()))
                };
                if same("mnt", &mnt) || same("net", &net) || marked() {
                    pids.push(pid);
                }
            }
        }
        for dir in &self.cgroup_dirs {
            collect_cgroup_pids(dir, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn teardown(&mut self) {
        for c in [self.kubelet.as_mut(), self.containerd.as_mut()].into_iter().flatten() {
            c.stop();
        }
        // Shims, containers and anything else started inside: kill until none is left.
        for _ in 0..50 {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            let _ = Command::new("kill").arg("-9").args(pids.iter().map(u32::to_string)).stderr(Stdio::null()).status();
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        // The holder was the namespaces' last process: its mounts and veth are gone.
        // Remove the cgroup directories deepest first (a just-killed task may linger).
        for dir in self.cgroup_dirs.drain(..) {
            for _ in 0..50 {
                if remove_cgroup_tree(&dir) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // A veth whose namespace end lingered (it goes with the namespace; belt and braces).
        let _ = Command::new("ip").args(["link", "delete", &self.veth()]).stderr(Stdio::null()).status();
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn collect_cgroup_pids(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_cgroup_pids(&entry.path(), out);
            }
        }
    }
}

/// Removes a cgroup directory and its children; true when it is gone.
fn remove_cgroup_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

/// Waits for every node to be Ready.
pub(crate) async fn wait_all_ready(nodes: &mut [RealNode], client: &kube::Client) -> Result<(), Error> {
    for node in nodes {
        node.wait_ready(client).await?;
    }
    Ok(())
}

fn path_with(bin: &Path) -> String {
    match std::env::var("PATH") {
        Ok(p) => format!("{}:{p}", bin.display()),
        Err(_) => format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    command_output(cmd, &format!("{program} {}", args.join(" "))).map(drop)
}

fn output(program: &str, args: &[&str]) -> Result<String, Error> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    command_output(cmd, program)
}

fn command_output(mut cmd: Command, what: &str) -> Result<String, Error> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| Error::RealNode(format!("running {what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::RealNode(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read(path: impl AsRef<Path>) -> Result<String, Error> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Io { path: path.to_owned(), source })
}
