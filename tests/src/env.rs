//! The environment: start, clients, teardown.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::Error;
use crate::binaries::{self, KubeVersion};
use crate::node::{self, ControlPlane, Network, NodeAssets, RealNode};
use crate::pki::Pki;
use crate::process::Component;

/// Which feature gates and API groups every component runs with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FeatureSet {
    /// Kubernetes' defaults for the release.
    #[default]
    Default,
    /// Every beta feature gate on and every beta API served, as a cluster that opts in
    /// to beta features runs (e.g. the Workload API `scheduling.k8s.io/v1beta1` on 1.37,
    /// whose `GenericWorkload` gate is off by default). Set identically on every component.
    Beta,
    /// Every alpha and beta feature gate on, and every API group served (e.g. the
    /// Workload API `scheduling.k8s.io/v1alpha2` on 1.36, `v1alpha3` with
    /// CompositePodGroup on 1.37). Set identically on every component.
    Alpha,
}

impl FeatureSet {
    fn feature_gates(self) -> Option<&'static str> {
        match self {
            FeatureSet::Default => None,
            FeatureSet::Beta => Some("AllBeta=true"),
            FeatureSet::Alpha => Some("AllAlpha=true,AllBeta=true"),
        }
    }

    fn runtime_config(self) -> Option<&'static str> {
        match self {
            FeatureSet::Default => None,
            FeatureSet::Beta => Some("api/beta=true"),
            FeatureSet::Alpha => Some("api/all=true"),
        }
    }
}

/// What to start. `Options::default()` starts etcd, kube-apiserver,
/// kube-controller-manager and kwok with the default feature set.
#[derive(Debug, Clone)]
pub struct Options {
    features: FeatureSet,
    controller_manager: bool,
    kwok: bool,
    kube_scheduler: bool,
    real_nodes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            features: FeatureSet::Default,
            controller_manager: true,
            kwok: true,
            kube_scheduler: false,
            real_nodes: 0,
        }
    }
}

impl Options {
    /// Feature gates and API groups for every component.
    pub fn features(mut self, features: FeatureSet) -> Self {
        self.features = features;
        self
    }

    /// Whether to run kube-controller-manager (default: yes).
    pub fn controller_manager(mut self, on: bool) -> Self {
        self.controller_manager = on;
        self
    }

    /// Whether to run kwok (default: yes).
    pub fn kwok(mut self, on: bool) -> Self {
        self.kwok = on;
        self
    }

    /// Also start `n` real nodes (default 0): each a real kubelet and containerd of the
    /// control plane's release in namespaces of its own, named `real-0`, `real-1`, …,
    /// Ready before [`TestEnv::start`] returns, with the pause and test images imported
    /// (see [`crate::node`]). Needs root and `make node-binaries`.
    pub fn real_nodes(mut self, n: usize) -> Self {
        self.real_nodes = n;
        self
    }

    /// Whether to run the upstream kube-scheduler beside us (default: no).
    pub fn kube_scheduler(mut self, on: bool) -> Self {
        self.kube_scheduler = on;
        self
    }
}

/// Annotation that makes kwok manage a Node (see [`TestEnv::start`]).
pub const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// kwok's lifecycle stages (nodes turn Ready, pods turn Running, deleted pods vanish).
pub const KWOK_STAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/envtest/kwok-stages.yaml");

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A running control plane. Dropping it stops every component and removes its
/// directory (set `PHALANX_TESTENV_KEEP=1` to keep the directory and logs).
pub struct TestEnv {
    // Field order is drop order: real nodes go before the control plane, components
    // stop before the directory goes.
    nodes: Vec<RealNode>,
    components: Vec<Component>,
    admin: Client,
    apiserver_url: String,
    kubeconfig: PathBuf,
    pki: Pki,
    features: FeatureSet,
    version: KubeVersion,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv").field("apiserver_url", &self.apiserver_url).field("dir", &self.dir_path).finish()
    }
}

impl TestEnv {
    /// Starts a control plane with the default [`Options`].
    pub async fn start_default() -> Result<Self, Error> {
        Self::start(Options::default()).await
    }

    /// Starts a control plane and waits until the apiserver is ready.
    ///
    /// kwok manages Nodes annotated `kwok.x-k8s.io/node: fake` (see
    /// [`KWOK_NODE_ANNOTATION`]) and the pods bound to them.
    pub async fn start(options: Options) -> Result<Self, Error> {
        let bin = binaries::bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("phalanx-testenv-")
            .tempdir()
            .map_err(|source| Error::Io { path: std::env::temp_dir(), source })?;
        let dir_path = dir.path().to_owned();
        let logs = dir_path.join("logs");
        mkdir(&logs)?;
        let real_nodes = match options.real_nodes {
            0 => None,
            n => {
                node::preflight()?;
                Some((Network::choose(n)?, NodeAssets::locate(&bin)?))
            }
        };
        let host_ips: Vec<_> = match &real_nodes {
            Some((network, _)) => (0..options.real_nodes).map(|i| network.host_ip(i)).collect(),
            None => Vec::new(),
        };
        let pki = Pki::generate(&dir_path, &host_ips)?;

        let mut env = TestEnv {
            nodes: Vec::new(),
            components: Vec::new(),
            admin: placeholder_client()?,
            apiserver_url: String::new(),
            kubeconfig: dir_path.join("admin.kubeconfig"),
            pki,
            features: options.features,
            version: KubeVersion::selected()?,
            dir: Some(dir),
            dir_path,
        };

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        env.spawn(&bin, "etcd", etcd_args(&env.dir_path, etcd_port, etcd_peer_port), &logs)?;
        env.wait_for_port("etcd", etcd_port).await?;

        let api_port = free_port()?;
        env.apiserver_url = format!("https://127.0.0.1:{api_port}");
        let admin_token = random_token();
        let tokens = env.dir_path.join("tokens.csv");
        let mut token_lines = format!("{admin_token},admin,admin,\"system:masters\"\n");
        // Each kubelet authenticates as its Node (user system:node:<name>, group
        // system:nodes), so the Node authorizer applies to it as in a real cluster.
        let node_tokens: Vec<(String, String)> =
            (0..options.real_nodes).map(|i| (format!("real-{i}"), random_token())).collect();
        for (name, token) in &node_tokens {
            token_lines.push_str(&format!("{token},system:node:{name},node-{name},\"system:nodes\"\n"));
        }
        write(&tokens, &token_lines)?;
        let mut args = env.apiserver_args(api_port, etcd_port, &tokens);
        if real_nodes.is_some() {
            // Pods on real nodes get service-account tokens, as in a real cluster.
            args.retain(|a| !a.starts_with("--disable-admission-plugins="));
            args.push("--disable-admission-plugins=TaintNodesByCondition".into());
            // Kubelets in their own network namespaces reach the apiserver on their veth's
            // host end; the apiserver reaches them (logs, exec) on their InternalIP.
            args.retain(|a| !a.starts_with("--bind-address="));
            args.push("--bind-address=0.0.0.0".into());
            args.push("--kubelet-preferred-address-types=InternalIP".into());
        }
        env.spawn(&bin, "kube-apiserver", args, &logs)?;
        write(&env.kubeconfig, &kubeconfig_yaml(&env.apiserver_url, &env.pki.ca_cert, "admin", &admin_token))?;
        env.admin = client_from_kubeconfig(&env.kubeconfig).await?;
        env.wait_for_apiserver().await?;

        if options.controller_manager || real_nodes.is_some() {
            let args = env.controller_manager_args(real_nodes.is_some());
            env.spawn(&bin, "kube-controller-manager", args, &logs)?;
        }
        if real_nodes.is_some() {
            env.wait_for_default_service_account().await?;
        }
        if options.kwok {
            let args = env.kwok_args(free_port()?);
            env.spawn(&bin, "kwok", args, &logs)?;
        }
        if options.kube_scheduler {
            let args = env.kube_scheduler_args()?;
            env.spawn(&bin, "kube-scheduler", args, &logs)?;
        }
        if let Some((network, assets)) = real_nodes {
            let control_plane = ControlPlane {
                api_port,
                ca_cert: env.pki.ca_cert.clone(),
                feature_gates: env.features.feature_gates(),
            };
            for (i, (name, token)) in node_tokens.iter().enumerate() {
                let dir = env.dir_path.join("nodes").join(name);
                let node = RealNode::start(name, i, &dir, &network, &assets, &control_plane, token)?;
                env.nodes.push(node);
            }
            node::wait_all_ready(&mut env.nodes, &env.admin).await?;
        }
        Ok(env)
    }

    /// Starts the upstream kube-scheduler now (for environments started without it, e.g.
    /// a benchmark that creates its pods before any scheduler runs).
    pub fn start_kube_scheduler(&mut self) -> Result<(), Error> {
        if self.components.iter().any(|c| c.name() == "kube-scheduler") {
            return Ok(());
        }
        let args = self.kube_scheduler_args()?;
        let logs = self.dir_path.join("logs");
        self.spawn(&binaries::bin_dir()?, "kube-scheduler", args, &logs)
    }

    /// A client with cluster-admin rights (`system:masters`).
    pub fn client(&self) -> Client {
        self.admin.clone()
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn apiserver_url(&self) -> &str {
        &self.apiserver_url
    }

    /// Path of an admin kubeconfig for other processes (kubectl, our binaries).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster CA certificate (PEM), e.g. for a pod's service-account secret.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// The apiserver's port.
    pub fn apiserver_port(&self) -> u16 {
        self.apiserver_url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(443)
    }

    /// The environment's directory (PKI, kubeconfigs, `logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The feature set every component runs with.
    pub fn features(&self) -> FeatureSet {
        self.features
    }

    /// The Kubernetes version running (`PHALANX_K8S`).
    pub fn kube_version(&self) -> KubeVersion {
        self.version
    }

    /// Path of one of the envtest binaries, e.g. `kube-scheduler` or `kubectl`.
    pub fn binary(&self, name: &str) -> Result<PathBuf, Error> {
        Ok(binaries::bin_dir()?.join(name))
    }

    /// The real nodes (see [`Options::real_nodes`]), in name order.
    pub fn real_nodes(&self) -> &[RealNode] {
        &self.nodes
    }

    /// Real node `i`, to restart its kubelet or run commands in it.
    pub fn real_node_mut(&mut self, i: usize) -> &mut RealNode {
        &mut self.nodes[i]
    }

    /// The running components and their process ids.
    pub fn component_pids(&self) -> Vec<(String, u32)> {
        self.components.iter().filter_map(|c| Some((c.name().to_owned(), c.pid()?))).collect()
    }

    /// Fails with the log tail of any component that has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        self.components.iter_mut().try_for_each(Component::check_running)?;
        self.nodes.iter_mut().try_for_each(RealNode::check_running)
    }

    /// Requests a token for service account `namespace/name` (creating the namespace
    /// and the account when missing) with the given spec, e.g. audiences or a bound
    /// object. Returns the signed token.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        spec: TokenRequestSpec,
    ) -> Result<String, Error> {
        ensure_namespace(&self.admin, namespace).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
            ..Default::default()
        };
        match accounts.create(&PostParams::default(), &account).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let request = TokenRequest { spec: Some(spec), ..Default::default() };
        let issued: TokenRequest = accounts.create_subresource("token", name, &PostParams::default(), &request).await?;
        issued.status.and_then(|s| s.token).ok_or_else(|| Error::Kubeconfig("token request returned no token".into()))
    }

    /// A client authenticated as service account `namespace/name` (created when
    /// missing), with whatever RBAC grants that account: for testing permissions.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Result<Client, Error> {
        let token = self.service_account_token(namespace, name, TokenRequestSpec::default()).await?;
        self.client_for_token(&format!("{namespace}-{name}"), &token).await
    }

    /// A client that authenticates with a bearer `token`. `label` names its kubeconfig.
    pub async fn client_for_token(&self, label: &str, token: &str) -> Result<Client, Error> {
        let path = self.dir_path.join(format!("{label}.kubeconfig"));
        write(&path, &kubeconfig_yaml(&self.apiserver_url, &self.pki.ca_cert, label, token))?;
        client_from_kubeconfig(&path).await
    }

    fn spawn(&mut self, bin: &Path, name: &str, args: Vec<String>, logs: &Path) -> Result<(), Error> {
        self.components.push(Component::spawn(name, &bin.join(name), &args, logs)?);
        Ok(())
    }

    fn component_mut(&mut self, name: &str) -> &mut Component {
        self.components.iter_mut().find(|c| c.name() == name).expect("component was spawned")
    }

    async fn wait_for_port(&mut self, name: &str, port: u16) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            self.component_mut(name).check_running()?;
            if start.elapsed() > READY_TIMEOUT {
                let detail = self.component_mut(name).log_tail(20);
                return Err(Error::NotReady { component: name.into(), seconds: READY_TIMEOUT.as_secs(), detail });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_apiserver(&mut self) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let request = http::Request::get("/readyz").body(Vec::new()).expect("static request");
            let last = match self.admin.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => body,
                Err(e) => e.to_string(),
            };
            self.component_mut("kube-apiserver").check_running()?;
            if start.elapsed() > READY_TIMEOUT {
                return Err(Error::NotReady {
                    component: "kube-apiserver".into(),
                    seconds: READY_TIMEOUT.as_secs(),
                    detail: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn apiserver_args(&self, port: u16, etcd_port: u16, tokens: &Path) -> Vec<String> {
        let pki = &self.pki;
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            format!("--token-auth-file={}", tokens.display()),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-account-issuer=https://127.0.0.1:{port}"),
            format!("--service-account-key-file={}", pki.sa_public_key.display()),
            format!("--service-account-signing-key-file={}", pki.sa_signing_key.display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // TaintNodesByCondition would taint every new node not-ready until a node-lifecycle
            // controller clears it; kwok nodes are Ready at once and there is no kubelet.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition".into(),
            "--allow-privileged=true".into(),
            "--max-requests-inflight=2000".into(),
            "--max-mutating-requests-inflight=1000".into(),
            "--enable-priority-and-fairness=false".into(),
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ];
        if let Some(gates) = self.features.feature_gates() {
            args.push(format!("--feature-gates={gates}"));
        }
        if let Some(config) = self.features.runtime_config() {
            args.push(format!("--runtime-config={config}"));
        }
        args
    }

    /// With `real_nodes`, also what running workloads need: service accounts and the root
    /// CA ConfigMap for pods' tokens, and the workload controllers (DaemonSet, Deployment,
    /// ReplicaSet, StatefulSet, PodDisruptionBudget status) a Helm chart relies on.
    fn controller_manager_args(&self, real_nodes: bool) -> Vec<String> {
        let mut controllers =
            "resourceclaim-controller,garbage-collector-controller,namespace-controller,job-controller".to_owned();
        if real_nodes {
            controllers.push_str(
                ",serviceaccount-controller,root-ca-certificate-publisher-controller,daemonset-controller,\
                 deployment-controller,replicaset-controller,statefulset-controller,disruption-controller",
            );
        }
        let mut args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--leader-elect=false".into(),
            format!("--controllers={controllers}"),
            "--secure-port=0".into(),
            "--kube-api-qps=1000".into(),
            "--kube-api-burst=2000".into(),
            "--concurrent-gc-syncs=4".into(),
        ];
        if real_nodes {
            args.push(format!("--root-ca-file={}", self.pki.ca_cert.display()));
        }
        if let Some(gates) = self.features.feature_gates() {
            args.push(format!("--feature-gates={gates}"));
        }
        args
    }

    /// Pods are admitted only once their namespace's `default` ServiceAccount exists.
    async fn wait_for_default_service_account(&mut self) -> Result<(), Error> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), "default");
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = accounts.get_opt("default").await {
                return Ok(());
            }
            self.component_mut("kube-controller-manager").check_running()?;
            if start.elapsed() > READY_TIMEOUT {
                return Err(Error::NotReady {
                    component: "kube-controller-manager".into(),
                    seconds: READY_TIMEOUT.as_secs(),
                    detail: "the default ServiceAccount of namespace default was not created".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kwok_args(&self, port: u16) -> Vec<String> {
        vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--config={}", KWOK_STAGES),
            "--manage-all-nodes=false".into(),
            format!("--manage-nodes-with-annotation-selector={}={}", KWOK_NODE_ANNOTATION.0, KWOK_NODE_ANNOTATION.1),
            "--node-lease-duration-seconds=40".into(),
            "--cidr=10.0.0.0/16".into(),
            "--node-ip=10.0.0.1".into(),
            format!("--server-address=127.0.0.1:{port}"),
        ]
    }

    fn kube_scheduler_args(&self) -> Result<Vec<String>, Error> {
        let config = self.dir_path.join("kube-scheduler.yaml");
        write(
            &config,
            &format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
                 clientConnection:\n  kubeconfig: {}\n  qps: 1000\n  burst: 2000\n\
                 leaderElection:\n  leaderElect: false\n",
                self.kubeconfig.display()
            ),
        )?;
        let mut args = vec![format!("--config={}", config.display()), "--secure-port=0".into()];
        if let Some(gates) = self.features.feature_gates() {
            args.push(format!("--feature-gates={gates}"));
        }
        Ok(args)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            for node in &self.nodes {
                eprintln!("{}", node.log_tails(60));
            }
        }
        self.nodes.clear();
        for component in self.components.iter_mut().rev() {
            component.stop();
        }
        let keep = std::env::var_os("PHALANX_TESTENV_KEEP").is_some();
        if failed {
            for component in &self.components {
                eprintln!(
                    "----- {} ({}), last lines -----\n{}",
                    component.name(),
                    component.log_path().display(),
                    component.log_tail(60)
                );
            }
        }
        if (keep || failed)
            && let Some(dir) = self.dir.take()
        {
            eprintln!("testenv: kept {}", dir.keep().display());
        }
    }
}

fn etcd_args(dir: &Path, port: u16, peer_port: u16) -> Vec<String> {
    vec![
        "--name=default".into(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls=http://127.0.0.1:{port}"),
        format!("--advertise-client-urls=http://127.0.0.1:{port}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
        format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ]
}

fn kubeconfig_yaml(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: {user}\n  user:\n    token: {token}\n\
         contexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: {user}\n    namespace: default\n\
         current-context: testenv\n",
        ca = ca.display()
    )
}

async fn client_from_kubeconfig(path: &Path) -> Result<Client, Error> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Client::try_from(config).map_err(Error::Kube)
}

/// A client pointed nowhere, replaced before `start` returns.
fn placeholder_client() -> Result<Client, Error> {
    let config = Config::new("https://127.0.0.1:1".parse().expect("static url"));
    Client::try_from(config).map_err(Error::Kube)
}

async fn ensure_namespace(client: &Client, name: &str) -> Result<(), Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(name.to_owned()), ..Default::default() }, ..Default::default() };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16, Error> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io { path: "127.0.0.1:0".into(), source })?;
    listener.local_addr().map(|a| a.port()).map_err(|source| Error::Io { path: "127.0.0.1:0".into(), source })
}

fn random_token() -> String {
    let a = RandomState::new().build_hasher().finish();
    let mut h = RandomState::new().build_hasher();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io { path: path.to_owned(), source })
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Io { path: path.to_owned(), source })
}
