//! Smoke tests proving the control plane from `hack/envtest` is real: kwok nodes turn
//! Ready, kube-controller-manager creates ResourceClaims from templates, the apiserver
//! validates ResourceSlices, and RBAC denies what it should.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceClaimTemplate, ResourceSlice};
use kube::api::{Api, ListParams, PostParams};
use phalanx_testenv::{FeatureSet, KubeVersion, Options, TestEnv, wait};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object matches the API type")
}

fn fake_node(name: &str) -> Node {
    from_json(json!({
        "metadata": {
            "name": name,
            "annotations": { "kwok.x-k8s.io/node": "fake" },
            "labels": { "kubernetes.io/hostname": name, "type": "kwok" }
        },
        "spec": { "taints": [{ "key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule" }] },
        "status": {
            "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "110" },
            "capacity": { "cpu": "32", "memory": "256Gi", "pods": "110" }
        }
    }))
}

fn node_ready(node: Option<&Node>) -> bool {
    node.and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn kwok_node_turns_ready() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let nodes: Api<Node> = Api::all(env.client());
    nodes.create(&PostParams::default(), &fake_node("kwok-0")).await.expect("node created");

    let node = wait::until(&nodes, "kwok-0", TIMEOUT, "Ready", node_ready).await;
    assert!(node_ready(Some(&node)));

    // A pod bound to the fake node runs there.
    let pods: Api<Pod> = Api::namespaced(env.client(), "default");
    pods.create(
        &PostParams::default(),
        &from_json(json!({
            "metadata": { "name": "bound" },
            "spec": {
                "nodeName": "kwok-0",
                "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule" }],
                "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10" }]
            }
        })),
    )
    .await
    .unwrap();
    let pod = wait::until(&pods, "bound", TIMEOUT, "Running", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    assert!(pod.status.unwrap().pod_ip.is_some(), "kwok gives the pod an IP");
}

#[test]
fn components_are_stopped_when_a_test_panics() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let env = runtime.block_on(TestEnv::start_default()).expect("control plane starts");
    let pids = env.component_pids();
    assert_eq!(pids.len(), 4, "etcd, kube-apiserver, kube-controller-manager, kwok: {pids:?}");
    let dir = env.dir().to_owned();

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _env = env;
        panic!("a failing test");
    }));
    assert!(outcome.is_err());
    for (name, pid) in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "{name} (pid {pid}) still runs");
    }
    assert!(dir.join("logs/kube-apiserver.log").exists(), "a failed test keeps its logs");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn claim_template_yields_claim_named_in_pod_status() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();

    let classes: Api<DeviceClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "gpu.example.com" },
                "spec": { "selectors": [{ "cel": { "expression": "device.driver == \"gpu.example.com\"" } }] }
            })),
        )
        .await
        .expect("DeviceClass with a CEL selector accepted");

    let slices: Api<ResourceSlice> = Api::all(client.clone());
    slices
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "node-a-gpu.example.com" },
                "spec": {
                    "driver": "gpu.example.com",
                    "nodeName": "node-a",
                    "pool": { "name": "node-a", "generation": 1, "resourceSliceCount": 1 },
                    "devices": [
                        { "name": "gpu-0", "attributes": { "index": { "int": 0 } }, "capacity": { "memory": { "value": "80Gi" } } },
                        { "name": "gpu-1", "attributes": { "index": { "int": 1 } }, "capacity": { "memory": { "value": "80Gi" } } }
                    ]
                }
            })),
        )
        .await
        .expect("ResourceSlice accepted");

    let templates: Api<ResourceClaimTemplate> = Api::namespaced(client.clone(), "default");
    templates
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "one-gpu" },
                "spec": { "spec": { "devices": { "requests": [
                    { "name": "gpu", "exactly": { "deviceClassName": "gpu.example.com" } }
                ] } } }
            })),
        )
        .await
        .expect("ResourceClaimTemplate accepted");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &from_json(json!({
            "metadata": { "name": "worker" },
            "spec": {
                "schedulerName": "nobody",
                "resourceClaims": [{ "name": "gpu", "resourceClaimTemplateName": "one-gpu" }],
                "containers": [{
                    "name": "main", "image": "registry.k8s.io/pause:3.10",
                    "resources": { "claims": [{ "name": "gpu" }] }
                }]
            }
        })),
    )
    .await
    .expect("pod accepted");

    let pod = wait::until(&pods, "worker", TIMEOUT, "given a claim by kube-controller-manager", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.resource_claim_statuses.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.name == "gpu" && c.resource_claim_name.is_some()))
    })
    .await;
    let claim_name = pod.status.unwrap().resource_claim_statuses.unwrap()[0].resource_claim_name.clone().unwrap();

    let claims: Api<ResourceClaim> = Api::namespaced(client, "default");
    let claim = claims.get(&claim_name).await.expect("the named claim exists");
    let owner = &claim.metadata.owner_references.as_ref().expect("claim is owned")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Pod", "worker"));
    assert_eq!(
        claim.metadata.annotations.unwrap_or_default().get("resource.kubernetes.io/pod-claim-name").map(String::as_str),
        Some("gpu")
    );
    let requests = wait::field(&claim.spec, "/devices/requests/0/exactly/deviceClassName");
    assert_eq!(requests, Some(json!("gpu.example.com")), "claim spec copied from the template");
}

#[tokio::test]
async fn apiserver_rejects_invalid_resource_slice() {
    let env =
        TestEnv::start(Options::default().controller_manager(false).kwok(false)).await.expect("control plane starts");
    let slices: Api<ResourceSlice> = Api::all(env.client());
    let slice = |attribute: &str| -> ResourceSlice {
        from_json(json!({
            "metadata": { "name": format!("s-{}", attribute.len()) },
            "spec": {
                "driver": "gpu.example.com",
                "nodeName": "node-a",
                "pool": { "name": "node-a", "generation": 1, "resourceSliceCount": 1 },
                "devices": [{ "name": "gpu-0", "attributes": { attribute: { "int": 0 } } }]
            }
        }))
    };

    let err = slices
        .create(&PostParams::default(), &slice("not a C identifier"))
        .await
        .expect_err("an attribute name with spaces must be rejected");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "rejected as Invalid: {status:?}");
            assert!(status.message.contains("attributes"), "the message names the field: {}", status.message);
        }
        other => panic!("expected an API error, got {other}"),
    }
    // The same slice with a valid name is accepted, so the rejection was about the name.
    slices.create(&PostParams::default(), &slice("index")).await.expect("valid slice accepted");
    assert_eq!(slices.list(&ListParams::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn rbac_denies_unprivileged_service_account() {
    let env =
        TestEnv::start(Options::default().controller_manager(false).kwok(false)).await.expect("control plane starts");
    let admin = env.client();
    let sa = env.service_account_client("team-a", "reader").await.expect("service-account client");

    let as_sa: Api<ConfigMap> = Api::namespaced(sa.clone(), "team-a");
    let cm: ConfigMap = from_json(json!({ "metadata": { "name": "settings" }, "data": { "k": "v" } }));
    match as_sa.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "forbidden: {status:?}"),
        other => panic!("an account without rights must be denied, got {other:?}"),
    }
    match as_sa.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("list must be denied before the grant, got {other:?}"),
    }

    // Grant read only: list now works (the token is real and authenticates), create still fails.
    let roles: Api<Role> = Api::namespaced(admin.clone(), "team-a");
    roles
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "configmap-reader" },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"] }]
            })),
        )
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(admin, "team-a");
    bindings
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "reader" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader" },
                "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": "team-a" }]
            })),
        )
        .await
        .unwrap();
    let listed = wait::poll(TIMEOUT, "the RoleBinding to take effect", || async {
        as_sa.list(&ListParams::default()).await.ok()
    })
    .await;
    assert!(listed.items.is_empty());
    match as_sa.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("read-only grant must not allow create, got {other:?}"),
    }
}

/// The Workload API is served in the version the running release has: v1beta1 (with
/// the beta feature set) and v1alpha3 on 1.37, v1alpha2 on 1.36; not at all by default.
#[tokio::test]
async fn feature_sets_serve_the_workload_api_of_the_release() {
    let get = |env: &TestEnv, path: &str| {
        let request = http::Request::get(path).body(Vec::new()).unwrap();
        let client = env.client();
        async move { client.request_text(request).await }
    };
    let alpha = TestEnv::start(Options::default().features(FeatureSet::Alpha).controller_manager(false).kwok(false))
        .await
        .expect("control plane starts with every alpha gate");
    let version = get(&alpha, "/version").await.unwrap();
    assert!(version.contains(&format!("\"v{}.", alpha.kube_version())), "{version}");
    let alpha_path = match alpha.kube_version() {
        KubeVersion::V1_36 => "/apis/scheduling.k8s.io/v1alpha2",
        KubeVersion::V1_37 => "/apis/scheduling.k8s.io/v1alpha3",
    };
    let body = get(&alpha, alpha_path).await.expect("the alpha Workload API is served");
    assert!(body.contains("\"podgroups\""), "the Workload API's PodGroup is served: {body}");
    if alpha.kube_version() == KubeVersion::V1_37 {
        assert!(body.contains("\"compositepodgroups\""), "CompositePodGroup is alpha in 1.37: {body}");
        let beta = TestEnv::start(Options::default().features(FeatureSet::Beta).controller_manager(false).kwok(false))
            .await
            .expect("control plane starts with every beta gate");
        let body = get(&beta, "/apis/scheduling.k8s.io/v1beta1").await.expect("v1beta1 served with beta gates");
        assert!(body.contains("\"podgroups\"") && body.contains("\"workloads\""), "{body}");
        assert!(get(&beta, "/apis/scheduling.k8s.io/v1alpha3").await.is_err(), "alpha stays off with beta gates");
    }

    let default_env = TestEnv::start(Options::default().controller_manager(false).kwok(false)).await.unwrap();
    assert!(get(&default_env, alpha_path).await.is_err(), "not served without the switch");
}

#[tokio::test]
async fn environments_run_side_by_side() {
    let (a, b) = tokio::join!(TestEnv::start_default(), TestEnv::start_default());
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_ne!(a.apiserver_url(), b.apiserver_url());
    let nodes_a: Api<Node> = Api::all(a.client());
    nodes_a.create(&PostParams::default(), &fake_node("only-in-a")).await.unwrap();
    let nodes_b: Api<Node> = Api::all(b.client());
    assert!(nodes_b.get_opt("only-in-a").await.unwrap().is_none(), "separate etcd per environment");
}
