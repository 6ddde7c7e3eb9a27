//! The upstream Workload API (`scheduling.k8s.io`) end to end, in the version the running
//! release serves: PodGroup gangs, PodGroup-level ResourceClaims (KEP-5729), Jobs with
//! `.spec.scheduling`, CompositePodGroups (1.37 alpha), and what the scheduler says about
//! definitions it cannot use.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Client, ResourceExt};
use phalanx_testenv::{FeatureSet, KubeVersion, Options, TestEnv, wait};
use serde_json::json;

mod common;
use common::*;

/// What each release needs for the Workload API: on 1.37 the beta API (`v1beta1`, with
/// beta features on: `GenericWorkload` and `DRAWorkloadResourceClaims` are beta but off
/// by default); on 1.36 the alpha one (`v1alpha2`, every alpha gate on).
fn workload_api() -> (FeatureSet, ApiResource) {
    let (features, version) = match KubeVersion::selected().expect("PHALANX_K8S") {
        KubeVersion::V1_37 => (FeatureSet::Beta, "v1beta1"),
        KubeVersion::V1_36 => (FeatureSet::Alpha, "v1alpha2"),
    };
    (features, resource(version, "PodGroup", "podgroups"))
}

fn resource(version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("scheduling.k8s.io", version, kind), plural)
}

fn initially_scheduled(group: &DynamicObject) -> Option<(String, String, String)> {
    let c =
        group.data["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "PodGroupInitiallyScheduled")?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

async fn create(client: &Client, resource: &ApiResource, object: serde_json::Value) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, resource);
    api.create(&PostParams::default(), &from_json(object))
        .await
        .unwrap_or_else(|e| panic!("creating {}: {e}", resource.kind))
}

/// A pod of PodGroup `group` with its claims (`[(name, template)]`).
async fn group_member(client: &Client, name: &str, group: &str, claims: &[(&str, &str)]) {
    let resource_claims: Vec<_> =
        claims.iter().map(|(n, t)| json!({ "name": n, "resourceClaimTemplateName": t })).collect();
    let uses: Vec<_> = claims.iter().map(|(n, _)| json!({ "name": n })).collect();
    let pod: Pod = from_json(json!({
        "metadata": { "name": name },
        "spec": {
            "schedulerName": "phalanx-scheduler",
            "schedulingGroup": { "podGroupName": group },
            "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
            "resourceClaims": resource_claims,
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                             "resources": { "claims": uses } }]
        }
    }));
    Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &pod).await.unwrap();
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A Workload API PodGroup with a gang policy, pods joining it through
/// `spec.schedulingGroup`: held until `minCount` pods exist and fit, then placed whole.
/// Its `PodGroupInitiallyScheduled` condition says why it waits, then that it is scheduled.
#[tokio::test]
async fn workload_api_pod_group_is_a_gang() {
    let (features, podgroups) = workload_api();
    let env = TestEnv::start(Options::default().features(features)).await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 2, 2).await;
    create(
        &client,
        &podgroups,
        json!({
            "apiVersion": podgroups.api_version, "kind": "PodGroup",
            "metadata": { "name": "wl", "namespace": NS },
            "spec": { "schedulingPolicy": { "gang": { "minCount": 3 } } }
        }),
    )
    .await;
    let scheduler = start_scheduler(&env).await;
    let watched = "phalanx_gang_api_watched{api=\"scheduling.k8s.io/PodGroup\"} 1";
    assert!(scheduler.metrics.encode().contains(watched), "the served Workload API version is watched");

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for name in names("wl", 2) {
        group_member(&client, &name, "wl", &[("gpu", "eight-gpus")]).await;
    }
    wait::until(&pods, "wl-0", TIMEOUT, "told it waits for its PodGroup", told_unschedulable).await;
    assert_eq!(node_of(&pods.get("wl-1").await.unwrap()), None, "no partial gang");
    // 3 × 8 GPUs need a third node: the gang waits whole until it comes.
    group_member(&client, "wl-2", "wl", &[("gpu", "eight-gpus")]).await;
    let groups: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &podgroups);
    // First "waiting for 1 more pod", then, with all three there, what is short.
    let (status, reason, message) = wait::poll(TIMEOUT, "the PodGroup to say which devices are short", || async {
        initially_scheduled(&groups.get("wl").await.ok()?).filter(|(_, _, m)| m.contains("gpu.phalanx.dev"))
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Unschedulable"), "{message}");
    gpu_nodes(&client, 2..3, 2).await;
    wait_bound(&client, &names("wl", 3)).await;
    let (_, reason, _) = wait::poll(TIMEOUT, "the PodGroup to turn scheduled", || async {
        initially_scheduled(&groups.get("wl").await.ok()?).filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(reason, "Scheduled");
    scheduler.shutdown().await;
}

/// A claim the PodGroup shares (KEP-5729): kube-controller-manager makes one claim from
/// the template for the whole group; Phalanx allocates it once, reserves it for the
/// PodGroup (not for each pod), and places the members where that device is: one GPU on
/// one node, so the whole group lands on that node, each member with its own GPU too.
#[tokio::test]
async fn pod_group_claim_is_allocated_once_and_reserved_for_the_group() {
    let (features, podgroups) = workload_api();
    let env = TestEnv::start(Options::default().features(features)).await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 3, 1).await;
    let group = create(
        &client,
        &podgroups,
        json!({
            "apiVersion": podgroups.api_version, "kind": "PodGroup",
            "metadata": { "name": "shared", "namespace": NS },
            "spec": { "schedulingPolicy": { "gang": { "minCount": 3 } },
                      "resourceClaims": [{ "name": "common", "resourceClaimTemplateName": "one-gpu" }] }
        }),
    )
    .await;
    let scheduler = start_scheduler(&env).await;
    for name in names("shared", 3) {
        group_member(&client, &name, "shared", &[("common", "one-gpu"), ("own", "one-gpu")]).await;
    }
    let bound = wait_bound(&client, &names("shared", 3)).await;
    let nodes: std::collections::BTreeSet<_> = bound.iter().filter_map(node_of).collect();
    assert_eq!(nodes.len(), 1, "a node-local device shared by the group puts the group on its node: {nodes:?}");

    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), NS);
    // The group's claim, as the PodGroup lists it (1.37 lists it on each pod too, 1.36
    // on the PodGroup only).
    let groups: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &podgroups);
    let listed = groups.get("shared").await.unwrap().data["status"]["resourceClaimStatuses"].clone();
    let common_name = listed[0]["resourceClaimName"].as_str().expect("the PodGroup lists its claim").to_string();
    for pod in &bound {
        let on_pod = pod
            .status
            .as_ref()
            .and_then(|s| s.resource_claim_statuses.as_ref())
            .and_then(|ss| ss.iter().find(|s| s.name == "common").and_then(|s| s.resource_claim_name.clone()));
        assert!(on_pod.is_none_or(|n| n == common_name), "one claim for the whole group");
    }
    let common = claims.get(&common_name).await.unwrap();
    assert!(
        common.owner_references().iter().any(|o| o.kind == "PodGroup" && o.name == "shared"),
        "kube-controller-manager generated it for the PodGroup"
    );
    let reserved = common.status.as_ref().and_then(|s| s.reserved_for.clone()).unwrap_or_default();
    assert_eq!(reserved.len(), 1, "reserved once, for the group: {reserved:?}");
    assert_eq!(
        (reserved[0].api_group.as_deref(), reserved[0].resource.as_str(), reserved[0].name.as_str()),
        (Some("scheduling.k8s.io"), "podgroups", "shared")
    );
    assert_eq!(Some(&reserved[0].uid), group.metadata.uid.as_ref());
    let results = common.status.and_then(|s| s.allocation).and_then(|a| a.devices).and_then(|d| d.results).unwrap();
    assert_eq!(results.len(), 1, "allocated once");
    let mut devices = vec![format!("{}/{}", results[0].pool, results[0].device)];
    for pod in &bound {
        // Its own claim: the one generated for (owned by) the pod.
        let all = claims.list(&Default::default()).await.unwrap().items;
        let own = all
            .into_iter()
            .find(|c| c.owner_references().iter().any(|o| Some(&o.uid) == pod.uid().as_ref()))
            .expect("the pod's own claim");
        let reserved = own.status.as_ref().and_then(|s| s.reserved_for.clone()).unwrap_or_default();
        assert_eq!(reserved.iter().map(|r| r.uid.clone()).collect::<Vec<_>>(), vec![pod.uid().unwrap()]);
        let r = &own.status.unwrap().allocation.unwrap().devices.unwrap().results.unwrap()[0];
        devices.push(format!("{}/{}", r.pool, r.device));
    }
    let distinct: std::collections::BTreeSet<_> = devices.iter().collect();
    assert_eq!(distinct.len(), devices.len(), "no device in two claims: {devices:?}");
    scheduler.shutdown().await;
}

/// A Job with `.spec.scheduling` (1.37 alpha, `WorkloadWithJob`): the job controller
/// makes the Workload and its PodGroup and puts every pod in it; Phalanx places the Job
/// whole.
#[tokio::test]
async fn job_with_scheduling_is_placed_as_one_gang() {
    let env = TestEnv::start(Options::default().features(FeatureSet::Alpha)).await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 4, 2).await;
    let scheduler = start_scheduler(&env).await;
    let job: k8s_openapi::api::batch::v1::Job = from_json(json!({
        "metadata": { "name": "train" },
        "spec": {
            "parallelism": 4, "completions": 4, "completionMode": "Indexed",
            "scheduling": { "schedulingPolicy": { "gang": { "minCount": 4 } } },
            "template": { "spec": {
                "schedulerName": "phalanx-scheduler",
                "restartPolicy": "Never",
                "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
                "resourceClaims": [{ "name": "gpu", "resourceClaimTemplateName": "eight-gpus" }],
                "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                                 "resources": { "claims": [{ "name": "gpu" }] } }]
            } }
        }
    }));
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), NS);
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    let scheduling = serde_json::to_value(&created).unwrap()["spec"]["scheduling"].clone();
    if env.kube_version() == KubeVersion::V1_36 {
        // Job `.spec.scheduling` arrived in 1.37: 1.36 drops it, and the pods are plain
        // pods, each a gang of one.
        assert!(scheduling.is_null(), "1.36 has no Job .spec.scheduling: {scheduling}");
        return scheduler.shutdown().await;
    }
    assert!(!scheduling.is_null(), "the apiserver keeps .spec.scheduling with WorkloadWithJob on");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let selector = kube::api::ListParams::default().labels("batch.kubernetes.io/job-name=train");
    let bound = wait::poll(TIMEOUT, "the Job's 4 pods bound", || async {
        let list = pods.list(&selector).await.ok()?;
        (list.items.len() == 4 && list.items.iter().all(|p| node_of(p).is_some())).then_some(list.items)
    })
    .await;
    let groups: std::collections::BTreeSet<_> = bound
        .iter()
        .map(|p| p.spec.as_ref().and_then(|s| s.scheduling_group.as_ref()).and_then(|g| g.pod_group_name.clone()))
        .collect();
    assert_eq!(groups.len(), 1, "the job controller put every pod in one PodGroup: {groups:?}");
    assert!(groups.first().unwrap().is_some());
    let domains: std::collections::BTreeSet<_> = bound
        .iter()
        .filter_map(node_of)
        .map(|n| n.trim_start_matches("gpu-node-").parse::<usize>().unwrap() / 2)
        .collect();
    assert_eq!(domains.len(), 2, "4 × 8 GPUs fill both 2-node domains: {domains:?}");
    scheduler.shutdown().await;
}

/// A CompositePodGroup (1.37 alpha) over a prefill and a decode PodGroup is one gang:
/// both groups land together, inside the one rack the composite requires, each group
/// on its own required NVLink domain. On 1.36 the API does not exist and is not watched.
#[tokio::test]
async fn composite_pod_group_is_placed_as_one_gang() {
    let env = TestEnv::start(Options::default().features(FeatureSet::Alpha)).await.expect("control plane starts");
    let client = env.client();
    // Racks: domain-0 (nodes 0-1), domain-1 (nodes 2-3); the rack label is the domain.
    gpu_cluster(&client, 4, 2).await;
    let scheduler = start_scheduler(&env).await;
    let watched = |v: u8| format!("phalanx_gang_api_watched{{api=\"scheduling.k8s.io/CompositePodGroup\"}} {v}");
    if env.kube_version() == KubeVersion::V1_36 {
        assert!(scheduler.metrics.encode().contains(&watched(0)), "1.36 serves no CompositePodGroup");
        return scheduler.shutdown().await;
    }
    assert!(scheduler.metrics.encode().contains(&watched(1)));
    let (composites, podgroups) =
        (resource("v1alpha3", "CompositePodGroup", "compositepodgroups"), resource("v1beta1", "PodGroup", "podgroups"));
    create(
        &client,
        &resource("v1beta1", "Workload", "workloads"),
        json!({
            "apiVersion": "scheduling.k8s.io/v1beta1", "kind": "Workload",
            "metadata": { "name": "svc", "namespace": NS },
            "spec": { "compositePodGroupTemplates": [{
                "name": "svc",
                "schedulingPolicy": { "gang": { "minGroupCount": 2 } },
                "schedulingConstraints": { "topology": [{ "key": "phalanx.dev/rack" }] },
                "podGroupTemplates": [
                    { "name": "prefill", "schedulingPolicy": { "gang": { "minCount": 2 } } },
                    { "name": "decode", "schedulingPolicy": { "gang": { "minCount": 1 } } }
                ]
            }] }
        }),
    )
    .await;
    create(
        &client,
        &composites,
        json!({
            "apiVersion": "scheduling.k8s.io/v1alpha3", "kind": "CompositePodGroup",
            "metadata": { "name": "svc", "namespace": NS },
            "spec": { "workloadRef": { "workloadName": "svc", "templateName": "svc" },
                      "schedulingPolicy": { "gang": { "minGroupCount": 2 } },
                      "schedulingConstraints": { "topology": [{ "key": "phalanx.dev/rack" }] } }
        }),
    )
    .await;
    for (name, min) in [("prefill", 2), ("decode", 1)] {
        create(
            &client,
            &podgroups,
            json!({
                "apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup",
                "metadata": { "name": name, "namespace": NS },
                "spec": { "parentCompositePodGroupName": "svc",
                          "workloadRef": { "workloadName": "svc", "templateName": name },
                          "schedulingPolicy": { "gang": { "minCount": min } } }
            }),
        )
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    group_member(&client, "prefill-0", "prefill", &[("gpu", "eight-gpus")]).await;
    group_member(&client, "decode-0", "decode", &[("gpu", "eight-gpus")]).await;
    wait::until(&pods, "decode-0", TIMEOUT, "told it waits for the rest of its composite", told_unschedulable).await;
    assert_eq!(node_of(&pods.get("prefill-0").await.unwrap()), None, "no partial composite gang");
    group_member(&client, "prefill-1", "prefill", &[("gpu", "eight-gpus")]).await;
    // 3 × 8 GPUs, and each rack has 2 nodes × 8: the required rack cannot hold the set.
    let waiting = wait::until(&pods, "prefill-1", TIMEOUT, "told why it waits", told_unschedulable).await;
    assert_eq!(node_of(&waiting), None);
    assert!(pods.list(&Default::default()).await.unwrap().items.iter().all(|p| node_of(p).is_none()));
    // A third node in rack domain-1 (nodes 2, 3 and now 5) makes room for all three there;
    // without the composite's rack constraint they would have fitted across racks already.
    gpu_nodes(&client, 5..6, 3).await;
    let bound = wait_bound(&client, &["prefill-0".into(), "prefill-1".into(), "decode-0".into()]).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let mut racks = std::collections::BTreeSet::new();
    for pod in &bound {
        let node = nodes.get(&node_of(pod).unwrap()).await.unwrap();
        racks.insert(node.labels().get("phalanx.dev/rack").cloned().unwrap_or_default());
    }
    assert_eq!(
        racks.into_iter().collect::<Vec<_>>(),
        ["domain-1"],
        "the composite's required rack holds the whole set"
    );
    scheduler.shutdown().await;
}

/// Workload definitions Phalanx cannot use lose nothing: a PodGroup whose shared claim
/// names a template that does not exist, and (1.37) a CompositePodGroup tree deeper than
/// Phalanx maps, each give every pod a precise reason (and the PodGroup a
/// `SchedulerError` condition), while a healthy PodGroup beside them is placed.
#[tokio::test]
async fn unusable_workload_definitions_get_a_reason_and_others_are_placed() {
    let env = TestEnv::start(Options::default().features(FeatureSet::Alpha)).await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 2, 2).await;
    let version = match env.kube_version() {
        KubeVersion::V1_37 => "v1beta1",
        KubeVersion::V1_36 => "v1alpha2",
    };
    let podgroups = resource(version, "PodGroup", "podgroups");
    let group = |name: &str, extra: serde_json::Value| {
        let mut spec = json!({ "schedulingPolicy": { "gang": { "minCount": 2 } } });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({ "apiVersion": podgroups.api_version, "kind": "PodGroup",
                "metadata": { "name": name, "namespace": NS }, "spec": spec })
    };
    create(
        &client,
        &podgroups,
        group(
            "no-template",
            json!({
        "resourceClaims": [{ "name": "common", "resourceClaimTemplateName": "nope" }] }),
        ),
    )
    .await;
    create(&client, &podgroups, group("healthy", json!({}))).await;
    let scheduler = start_scheduler(&env).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for name in names("no-template", 2) {
        group_member(&client, &name, "no-template", &[("common", "nope"), ("gpu", "one-gpu")]).await;
    }
    for name in names("healthy", 2) {
        group_member(&client, &name, "healthy", &[("gpu", "eight-gpus")]).await;
    }
    let mut expected: Vec<(String, &str)> = names("no-template", 2)
        .into_iter()
        .map(|p| (p, "PodGroup default/no-template claim \"common\" names ResourceClaimTemplate \"nope\", which does not exist"))
        .collect();

    if env.kube_version() == KubeVersion::V1_37 {
        let composites = resource("v1alpha3", "CompositePodGroup", "compositepodgroups");
        for (name, parent) in [("top", None), ("mid", Some("top"))] {
            create(
                &client,
                &composites,
                json!({
                    "apiVersion": "scheduling.k8s.io/v1alpha3", "kind": "CompositePodGroup",
                    "metadata": { "name": name, "namespace": NS },
                    "spec": { "parentCompositePodGroupName": parent,
                              "workloadRef": { "workloadName": "deep", "templateName": name },
                              "schedulingPolicy": { "gang": { "minGroupCount": 1 } } }
                }),
            )
            .await;
        }
        create(
            &client,
            &podgroups,
            group(
                "leaf",
                json!({ "parentCompositePodGroupName": "mid",
            "workloadRef": { "workloadName": "deep", "templateName": "leaf" } }),
            ),
        )
        .await;
        for name in names("leaf", 2) {
            group_member(&client, &name, "leaf", &[("gpu", "one-gpu")]).await;
        }
        expected.extend(
            names("leaf", 2).into_iter().map(|p| (p, "CompositePodGroup tree is 3 levels deep (leaf ▸ mid ▸ top)")),
        );
    }

    wait_bound(&client, &names("healthy", 2)).await;
    for (pod, reason) in &expected {
        let p = wait::until(&pods, pod, TIMEOUT, "told why it waits", told_unschedulable).await;
        let message = condition_message(&p);
        assert!(message.contains(reason), "{pod}: {message:?} lacks {reason:?}");
        assert_eq!(node_of(&p), None);
    }
    let groups: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &podgroups);
    let (status, reason, message) = wait::poll(TIMEOUT, "the PodGroup's SchedulerError condition", || async {
        initially_scheduled(&groups.get("no-template").await.ok()?)
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SchedulerError"), "{message}");
    assert!(message.contains("\"nope\""), "{message}");
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), NS);
    let held =
        claims.list(&Default::default()).await.unwrap().items.into_iter().filter(|c| {
            c.status.as_ref().is_some_and(|s| s.allocation.is_some()) && !c.name_any().starts_with("healthy")
        });
    assert_eq!(held.count(), 0, "a gang that waits holds no device");
    scheduler.shutdown().await;
}

/// The RBAC in `deploy/` is enough to schedule a Workload API gang and write its
/// PodGroup condition.
#[tokio::test]
async fn deploy_rbac_covers_the_workload_api() {
    use phalanx_scheduler::service::{self, config::SchedulerConfig};
    let (features, podgroups) = workload_api();
    let env = TestEnv::start(Options::default().features(features)).await.expect("control plane starts");
    let admin = env.client();
    gpu_cluster(&admin, 2, 2).await;
    let as_scheduler = as_deployed_scheduler(&env).await;
    create(
        &admin,
        &podgroups,
        json!({
            "apiVersion": podgroups.api_version, "kind": "PodGroup",
            "metadata": { "name": "rbac", "namespace": NS },
            "spec": { "schedulingPolicy": { "gang": { "minCount": 2 } } }
        }),
    )
    .await;
    for name in names("rbac", 2) {
        group_member(&admin, &name, "rbac", &[("gpu", "one-gpu")]).await;
    }
    let mut config = SchedulerConfig { bind_address: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    config.leader_election.enabled = false;
    let scheduler = service::start(as_scheduler, config, "rbac-test".into()).await.unwrap();
    wait_bound(&admin, &names("rbac", 2)).await;
    let groups: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &podgroups);
    wait::poll(TIMEOUT, "the PodGroup condition written as the scheduler", || async {
        initially_scheduled(&groups.get("rbac").await.ok()?).filter(|(s, _, _)| s == "True")
    })
    .await;
    scheduler.shutdown().await;
}
