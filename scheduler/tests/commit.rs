//! The commit protocol against a real API server: all or nothing, rollback on conflict,
//! and recovery of a half-done commit from API state alone.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{AllocationResult, ResourceClaim, ResourceClaimConsumerReference};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use phalanx_scheduler::commit::{
    ClaimPlan, CommitError, Committer, DELETE_PROTECTION_FINALIZER, GangPlan, MemberPlan, RecoveringGang,
    RecoveryAction,
};
use phalanx_testenv::{Options, TestEnv, fixtures, wait};
use serde_json::json;

const NS: &str = "default";
const TIMEOUT: Duration = Duration::from_secs(30);

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test object matches the API type")
}

/// A kwok node with four fake GPUs, and `pods` pods each with one direct claim.
async fn cluster(env: &TestEnv, pods: usize) -> (Vec<Pod>, Vec<ResourceClaim>) {
    let client = env.client();
    fixtures::device_class(&client, "gpu.phalanx.dev", "device.driver == 'gpu.phalanx.dev'").await;
    let devices: Vec<_> = (0..4).map(|i| json!({ "name": format!("gpu-{i}") })).collect();
    let allocatable = json!({ "cpu": "32", "memory": "256Gi", "pods": "110" });
    fixtures::gpu_node(&client, "node-a", json!({}), allocatable, devices).await;

    let (mut out_pods, mut out_claims) = (Vec::new(), Vec::new());
    for i in 0..pods {
        let claim: ResourceClaim = from_json(json!({
            "metadata": { "name": format!("claim-{i}") },
            "spec": { "devices": { "requests": [{ "name": "gpu", "exactly": { "deviceClassName": "gpu.phalanx.dev" } }] } }
        }));
        out_claims.push(
            Api::<ResourceClaim>::namespaced(client.clone(), NS).create(&PostParams::default(), &claim).await.unwrap(),
        );
        let pod: Pod = from_json(json!({
            "metadata": { "name": format!("worker-{i}"), "labels": { "phalanx.dev/gang": "g" } },
            "spec": {
                "schedulerName": "phalanx-scheduler",
                "tolerations": [{ "operator": "Exists" }],
                "resourceClaims": [{ "name": "gpu", "resourceClaimName": format!("claim-{i}") }],
                "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10", "resources": { "claims": [{ "name": "gpu" }] } }]
            }
        }));
        out_pods.push(Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &pod).await.unwrap());
    }
    (out_pods, out_claims)
}

fn allocation(device: &str) -> AllocationResult {
    from_json(json!({
        "devices": { "results": [{ "request": "gpu", "driver": "gpu.phalanx.dev", "pool": "node-a", "device": device }] },
        "nodeSelector": { "nodeSelectorTerms": [{ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": ["node-a"] }] }] }
    }))
}

fn for_pod(pod: &Pod) -> ResourceClaimConsumerReference {
    ResourceClaimConsumerReference {
        api_group: None,
        resource: "pods".into(),
        name: pod.name_any(),
        uid: pod.uid().unwrap(),
    }
}

fn plan(pods: &[Pod], claims: &[ResourceClaim]) -> GangPlan {
    GangPlan {
        gang: "default/g".into(),
        members: pods
            .iter()
            .zip(claims)
            .enumerate()
            .map(|(i, (pod, claim))| MemberPlan {
                namespace: NS.into(),
                name: pod.name_any(),
                uid: pod.uid().unwrap(),
                node: "node-a".into(),
                claims: vec![ClaimPlan {
                    name: claim.name_any(),
                    uid: claim.uid().unwrap(),
                    allocation: Some(allocation(&format!("gpu-{i}"))),
                    consumer: for_pod(pod),
                }],
            })
            .collect(),
    }
}

async fn pod(client: &Client, name: &str) -> Pod {
    Api::<Pod>::namespaced(client.clone(), NS).get(name).await.unwrap()
}

async fn claim(client: &Client, name: &str) -> ResourceClaim {
    Api::<ResourceClaim>::namespaced(client.clone(), NS).get(name).await.unwrap()
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

fn nominated(pod: &Pod) -> Option<String> {
    pod.status.as_ref().and_then(|s| s.nominated_node_name.clone())
}

/// A claim this scheduler never touched: no allocation, no reservation, no finalizer.
fn assert_untouched(claim: &ResourceClaim) {
    let status = claim.status.clone().unwrap_or_default();
    assert!(status.allocation.is_none(), "{} still allocated", claim.name_any());
    assert!(status.reserved_for.unwrap_or_default().is_empty(), "{} still reserved", claim.name_any());
    assert!(
        !claim.finalizers().iter().any(|f| f == DELETE_PROTECTION_FINALIZER),
        "{} keeps finalizer",
        claim.name_any()
    );
}

async fn env() -> TestEnv {
    TestEnv::start(Options::default().controller_manager(false)).await.expect("control plane starts")
}

#[tokio::test]
async fn commit_writes_claims_then_binds_every_member() {
    let env = env().await;
    let client = env.client();
    let (pods, claims) = cluster(&env, 3).await;
    let committer = Committer::new(client.clone(), "phalanx-scheduler");

    committer.commit(&plan(&pods, &claims)).await.expect("commit succeeds");

    for (i, p) in pods.iter().enumerate() {
        let p = pod(&client, &p.name_any()).await;
        assert_eq!(node_of(&p).as_deref(), Some("node-a"));
        let c = claim(&client, &format!("claim-{i}")).await;
        assert!(c.finalizers().iter().any(|f| f == DELETE_PROTECTION_FINALIZER));
        let status = c.status.unwrap();
        let device = wait::field(&status, "/allocation/devices/results/0/device");
        assert_eq!(device, Some(json!(format!("gpu-{i}"))));
        let reserved = status.reserved_for.unwrap();
        assert_eq!(reserved.len(), 1);
        assert_eq!((reserved[0].resource.as_str(), reserved[0].uid.as_str()), ("pods", p.uid().unwrap().as_str()));
    }
}

#[tokio::test]
async fn claim_taken_meanwhile_rolls_back_everything() {
    let env = env().await;
    let client = env.client();
    let (pods, claims) = cluster(&env, 3).await;
    let plan = plan(&pods, &claims);

    // Someone else allocates the last claim after the plan was made.
    let claims_api: Api<ResourceClaim> = Api::namespaced(client.clone(), NS);
    let mut taken = claims_api.get("claim-2").await.unwrap();
    taken.status = Some(from_json(json!({ "allocation": allocation("gpu-3") })));
    claims_api.replace_status("claim-2", &PostParams::default(), &taken).await.unwrap();

    let err = Committer::new(client.clone(), "phalanx-scheduler").commit(&plan).await.expect_err("must fail");
    assert!(matches!(&err, CommitError::ClaimTaken { name, .. } if name == "claim-2"), "{err}");

    for i in 0..2 {
        assert_untouched(&claim(&client, &format!("claim-{i}")).await);
    }
    let other = claim(&client, "claim-2").await;
    assert_eq!(wait::field(&other.status, "/allocation/devices/results/0/device"), Some(json!("gpu-3")), "theirs kept");
    for p in &pods {
        let p = pod(&client, &p.name_any()).await;
        assert_eq!(node_of(&p), None, "no member bound");
        assert_eq!(nominated(&p), None, "intent cleared");
    }
}

#[tokio::test]
async fn vanished_pod_fails_before_anything_is_written() {
    let env = env().await;
    let client = env.client();
    let (pods, claims) = cluster(&env, 2).await;
    let mut plan = plan(&pods, &claims);
    plan.members[1].uid = "00000000-0000-0000-0000-000000000000".into(); // replaced since the plan

    let err = Committer::new(client.clone(), "phalanx-scheduler").commit(&plan).await.expect_err("must fail");
    assert!(matches!(err, CommitError::Vanished { kind: "Pod", .. }), "{err}");
    for c in &claims {
        assert_untouched(&claim(&client, &c.name_any()).await);
    }
    assert_eq!(nominated(&pod(&client, "worker-0").await), None);
}

async fn recovering(client: &Client, needed: usize) -> RecoveringGang {
    let pods = Api::<Pod>::namespaced(client.clone(), NS).list(&Default::default()).await.unwrap().items;
    let members: Vec<Pod> = pods.into_iter().filter(|p| nominated(p).is_some() && node_of(p).is_none()).collect();
    RecoveringGang { gang: "default/g".into(), needed, members, groups: Vec::new() }
}

#[tokio::test]
async fn recovery_rolls_a_fully_reserved_gang_forward() {
    let env = env().await;
    let client = env.client();
    let (pods, claims) = cluster(&env, 3).await;
    let committer = Committer::new(client.clone(), "phalanx-scheduler");
    // The previous scheduler reserved everything, then died before binding.
    committer.reserve(&plan(&pods, &claims)).await.unwrap();

    let gang = recovering(&client, 3).await;
    assert_eq!(gang.members.len(), 3, "intent is visible in the API");
    let done = Committer::new(client.clone(), "phalanx-scheduler").recover(&[gang]).await;
    assert_eq!(done[0].outcome.as_ref().ok(), Some(&RecoveryAction::RolledForward));
    for p in &pods {
        assert_eq!(node_of(&pod(&client, &p.name_any()).await).as_deref(), Some("node-a"));
    }
}

#[tokio::test]
async fn recovery_rolls_a_partly_reserved_gang_back() {
    let env = env().await;
    let client = env.client();
    let (pods, claims) = cluster(&env, 3).await;
    let committer = Committer::new(client.clone(), "phalanx-scheduler");
    // The previous scheduler recorded intent on all members but wrote only the first claim.
    let mut partial = plan(&pods, &claims);
    partial.members[1].claims.clear();
    partial.members[2].claims.clear();
    committer.reserve(&partial).await.unwrap();
    assert!(claim(&client, "claim-0").await.status.unwrap().allocation.is_some());

    let gang = recovering(&client, 3).await;
    let done = Committer::new(client.clone(), "phalanx-scheduler").recover(&[gang]).await;
    assert_eq!(done[0].outcome.as_ref().ok(), Some(&RecoveryAction::RolledBack));
    for c in &claims {
        assert_untouched(&claim(&client, &c.name_any()).await);
    }
    for p in &pods {
        let p = pod(&client, &p.name_any()).await;
        assert_eq!((node_of(&p), nominated(&p)), (None, None));
    }
    let _ = TIMEOUT;
}

/// Three members share one claim besides their own: the shared claim is allocated once
/// and reserved for every member, although members are written concurrently.
#[tokio::test]
async fn claim_shared_by_every_member_is_allocated_once_and_reserved_for_all() {
    let env = env().await;
    let client = env.client();
    let (pods, claims) = cluster(&env, 3).await;
    let shared: ResourceClaim = Api::<ResourceClaim>::namespaced(client.clone(), NS)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "shared" },
                "spec": { "devices": { "requests": [{ "name": "gpu", "exactly": { "deviceClassName": "gpu.phalanx.dev" } }] } }
            })),
        )
        .await
        .unwrap();
    let mut gang = plan(&pods, &claims);
    for (i, member) in gang.members.iter_mut().enumerate() {
        member.claims.push(ClaimPlan {
            name: "shared".into(),
            uid: shared.uid().unwrap(),
            allocation: (i == 0).then(|| allocation("gpu-3")),
            consumer: for_pod(&pods[i]),
        });
    }
    Committer::new(client.clone(), "phalanx-scheduler").commit(&gang).await.expect("commit succeeds");

    let status = claim(&client, "shared").await.status.unwrap();
    assert_eq!(wait::field(&status, "/allocation/devices/results/0/device"), Some(json!("gpu-3")));
    let reserved: BTreeSet<String> = status.reserved_for.unwrap().into_iter().map(|r| r.uid).collect();
    let members: BTreeSet<String> = pods.iter().map(|p| p.uid().unwrap()).collect();
    assert_eq!(reserved, members, "reserved for every member, once");
    for p in &pods {
        assert_eq!(node_of(&pod(&client, &p.name_any()).await).as_deref(), Some("node-a"));
    }
}
