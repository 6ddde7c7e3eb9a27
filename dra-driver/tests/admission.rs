//! deploy/dra-driver against a real apiserver: the manifests are accepted, and the
//! ValidatingAdmissionPolicy lets the driver's service account write ResourceSlices of
//! its own node only, with real node-bound service-account tokens.

mod common;

use common::*;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequestSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, PostParams};
use phalanx_dra_driver::attributes::GPU_DRIVER;
use phalanx_dra_driver::discovery::NodeContext;
use phalanx_dra_driver::publisher::{NodeRef, Outcome, Publisher};
use phalanx_testenv::{Options, TestEnv, wait};
use serde_json::json;

const NS: &str = "phalanx-system";
const SA: &str = "phalanx-dra-driver";

async fn token_for_node(env: &TestEnv, node: &NodeRef) -> String {
    let spec = TokenRequestSpec {
        bound_object_ref: Some(BoundObjectReference {
            kind: Some("Node".into()),
            api_version: Some("v1".into()),
            name: Some(node.name.clone()),
            uid: Some(node.uid.clone()),
        }),
        expiration_seconds: Some(3600),
        ..Default::default()
    };
    env.service_account_token(NS, SA, spec).await.expect("node-bound token")
}

fn denied_by_policy(result: Result<impl std::fmt::Debug, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(s)) if s.message.contains("phalanx-dra-driver") => s.message,
        other => panic!("expected a denial by the admission policy, got {other:?}"),
    }
}

#[tokio::test]
async fn driver_identity_may_write_only_its_own_nodes_slices() {
    let env = TestEnv::start(Options::default().kwok(false)).await.expect("control plane");
    let admin = env.client();
    apply_deploy_file(&admin, "namespace.yaml").await;
    for file in ["rbac.yaml", "admission-policy.yaml", "deviceclasses.yaml", "daemonset.yaml"] {
        apply_deploy_file(&admin, &format!("dra-driver/{file}")).await;
    }
    let node_a = create_node(&admin, "node-a", json!({})).await;
    let node_b = create_node(&admin, "node-b", json!({})).await;

    // B's slices exist (published by B's driver, here the admin).
    let admin_publisher = Publisher::new(admin.clone());
    set_profile_pools(&admin_publisher, "l40s-pcie-8", &node_b, &NodeContext::named("node-b"));
    admin_publisher.sync_all().await.expect("admin publishes B");

    // A token without a node binding: RBAC allows the write, the policy does not. Wait
    // until the policy is in force (policies load asynchronously).
    let unbound = env.service_account_token(NS, SA, TokenRequestSpec::default()).await.unwrap();
    let unbound = env.client_for_token("unbound", &unbound).await.unwrap();
    let unbound_publisher = Publisher::new(unbound.clone());
    set_profile_pools(&unbound_publisher, "l40s-pcie-8", &node_a, &NodeContext::named("node-a"));
    let key_a = (GPU_DRIVER.to_owned(), "node-a".to_owned());
    let message = wait::poll(TIMEOUT, "the admission policy to deny an unbound token", || {
        let (p, admin) = (unbound_publisher.clone(), admin.clone());
        let key = key_a.clone();
        async move {
            match p.reconcile(&key).await {
                Ok(_) => {
                    // Written before the policy loaded: undo and try again.
                    let slices: Api<ResourceSlice> = Api::all(admin);
                    let _ = slices.delete("node-a-gpu-phalanx-dev-0", &DeleteParams::default()).await;
                    None
                }
                Err(e) => Some(e.to_string()),
            }
        }
    })
    .await;
    assert!(message.contains("no node association"), "{message}");

    // A token bound to node A (what a DaemonSet pod on A gets).
    let token_a = token_for_node(&env, &node_a).await;
    let as_a = env.client_for_token("driver-on-a", &token_a).await.unwrap();
    let publisher_a = Publisher::new(as_a.clone());
    set_profile_pools(&publisher_a, "l40s-pcie-8", &node_a, &NodeContext::named("node-a"));
    assert!(
        matches!(publisher_a.reconcile(&key_a).await.expect("A writes its own slices"), Outcome::Written(_)),
        "A's slice created"
    );

    // ... but not B's: create, update and delete are all refused.
    let slices_as_a: Api<ResourceSlice> = Api::all(as_a.clone());
    let mut b_slice = Api::<ResourceSlice>::all(admin.clone()).get("node-b-gpu-phalanx-dev-0").await.unwrap();
    let message =
        denied_by_policy(slices_as_a.replace("node-b-gpu-phalanx-dev-0", &PostParams::default(), &b_slice).await);
    assert!(message.contains("on node 'node-a' may not write ResourceSlices of node 'node-b'"), "{message}");
    denied_by_policy(slices_as_a.delete("node-b-gpu-phalanx-dev-0", &DeleteParams::default()).await);
    b_slice.metadata = kube::api::ObjectMeta { name: Some("forged-b".into()), ..Default::default() };
    denied_by_policy(slices_as_a.create(&PostParams::default(), &b_slice).await);
    // RBAC: the driver can read claims but not write their allocation, nor touch pods.
    let claims: Api<ResourceClaim> = Api::namespaced(as_a.clone(), "default");
    assert!(claims.get_opt("nothing").await.is_ok(), "get on claims allowed");
    let pods: Api<Pod> = Api::namespaced(as_a.clone(), "default");
    match pods.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("pods must be off limits: {other:?}"),
    }

    // The production path: the DaemonSet pod's token, bound to a Pod on node B, carries
    // B's name; with it, B's slice may be written and A's may not.
    let pod: Pod = from_json(json!({
        "metadata": { "name": "driver-on-b", "namespace": NS },
        "spec": { "nodeName": "node-b", "serviceAccountName": SA,
                  "containers": [{ "name": "driver", "image": "phalanx-dra-driver:dev" }] }
    }));
    let pod = Api::<Pod>::namespaced(admin.clone(), NS).create(&PostParams::default(), &pod).await.unwrap();
    let spec = TokenRequestSpec {
        bound_object_ref: Some(BoundObjectReference {
            kind: Some("Pod".into()),
            api_version: Some("v1".into()),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
        }),
        expiration_seconds: Some(3600),
        ..Default::default()
    };
    let token_b = env.service_account_token(NS, SA, spec).await.expect("pod-bound token");
    let as_b = env.client_for_token("driver-pod-on-b", &token_b).await.unwrap();
    let slices_as_b: Api<ResourceSlice> = Api::all(as_b);
    let own = slices_as_b.get("node-b-gpu-phalanx-dev-0").await.unwrap();
    slices_as_b
        .replace("node-b-gpu-phalanx-dev-0", &PostParams::default(), &own)
        .await
        .expect("B updates its own slice");
    let message = denied_by_policy(slices_as_b.delete("node-a-gpu-phalanx-dev-0", &DeleteParams::default()).await);
    assert!(message.contains("on node 'node-b' may not write ResourceSlices of node 'node-a'"), "{message}");

    // Its own slices it may delete (shutdown cleanup).
    publisher_a.remove_all().await.expect("A removes its own slices");
    assert!(slices_of(&admin, GPU_DRIVER, "node-a").await.is_empty());
    assert_eq!(slices_of(&admin, GPU_DRIVER, "node-b").await.len(), 1, "B untouched");
}

/// `status.devices` with the chart's RBAC (1.36+ granular status authorization): the
/// driver on node A writes its own driver's entries of claims allocated on A, and nothing
/// else: not another driver's entries, not a claim on node B, not the allocation.
#[tokio::test]
async fn driver_identity_writes_only_its_own_devices_status_on_its_own_node() {
    let env = TestEnv::start(Options::default().kwok(false)).await.expect("control plane");
    let admin = env.client();
    apply_deploy_file(&admin, "namespace.yaml").await;
    apply_deploy_file(&admin, "dra-driver/rbac.yaml").await;
    let node_a = create_node(&admin, "node-a", json!({})).await;
    create_node(&admin, "node-b", json!({})).await;
    allocated_claim(&admin, "default", "on-a", "node-a", &["gpu-0"]).await;
    allocated_claim(&admin, "default", "on-b", "node-b", &["gpu-0"]).await;
    let as_a = env.client_for_token("driver-on-a", &token_for_node(&env, &node_a).await).await.unwrap();
    let claims: Api<ResourceClaim> = Api::namespaced(as_a, "default");
    let apply = |name: &str, driver: &str| {
        let patch = json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": { "name": name },
            "status": { "devices": [{ "driver": driver, "pool": "node-a", "device": "gpu-0",
                "conditions": [{ "type": "Ready", "status": "True", "reason": "Prepared", "message": "",
                                 "lastTransitionTime": "2026-12-04T00:00:00Z" }] }] }
        });
        let (claims, name) = (claims.clone(), name.to_owned());
        async move {
            claims
                .patch_status(
                    &name,
                    &kube::api::PatchParams::apply(GPU_DRIVER).force(),
                    &kube::api::Patch::Apply(&patch),
                )
                .await
        }
    };
    // Refused by RBAC (403) or by the granular status check, which the apiserver reports
    // as an invalid field naming the permission it lacks (422, "requires resource=...").
    let forbidden = |r: Result<ResourceClaim, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 || (s.code == 422 && s.message.contains("requires resource=")) => {}
        other => panic!("{what} must be forbidden, got {other:?}"),
    };
    apply("on-a", GPU_DRIVER).await.expect("its own driver's entry of a claim on its node");
    forbidden(apply("on-a", "other.example.com").await, "another driver's entry");
    forbidden(apply("on-b", GPU_DRIVER).await, "a claim allocated on another node");
    let clear = json!({ "status": { "allocation": null } });
    forbidden(
        claims.patch_status("on-a", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&clear)).await,
        "the allocation",
    );
}
