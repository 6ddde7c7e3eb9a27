//! phalanx-scheduler end to end: the real control plane (etcd, kube-apiserver,
//! kube-controller-manager for claim templates, kwok nodes) and the scheduler service
//! running in this process.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use phalanx_scheduler::service::{self, config::SchedulerConfig};
use phalanx_testenv::{TestEnv, wait};
use serde_json::json;

mod common;
use common::*;

#[tokio::test]
async fn gang_of_eight_by_eight_lands_in_one_nvlink_domain_and_too_big_gang_waits() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    // Two NVLink domains of 9 nodes each: a 8-node gang fits in one of them.
    gpu_cluster(&client, 18, 9).await;
    let scheduler = start_scheduler(&env).await;

    let gang: Vec<String> = (0..8).map(|i| format!("train-{i}")).collect();
    for name in &gang {
        create_pod(&client, name, Some(("train", 8)), "eight-gpus").await;
    }
    // 20 pods × 8 GPUs cannot fit on 18 nodes.
    let huge: Vec<String> = (0..20).map(|i| format!("huge-{i}")).collect();
    for name in &huge {
        create_pod(&client, name, Some(("huge", 20)), "eight-gpus").await;
    }

    let bound = wait_bound(&client, &gang).await;
    let nodes: BTreeSet<String> = bound.iter().filter_map(node_of).collect();
    assert_eq!(nodes.len(), 8, "one pod per node: {nodes:?}");
    let domains: BTreeSet<usize> =
        nodes.iter().map(|n| n.trim_start_matches("gpu-node-").parse::<usize>().unwrap() / 9).collect();
    assert_eq!(domains.len(), 1, "all members in one NVLink domain: {nodes:?}");
    let mut all_devices = Vec::new();
    for pod in &bound {
        let devices = devices_of(&client, pod).await;
        assert_eq!(devices.len(), 8);
        assert!(devices.iter().all(|d| d.starts_with(&format!("{}/", node_of(pod).unwrap()))), "devices on its node");
        all_devices.extend(devices);
    }
    let distinct: BTreeSet<_> = all_devices.iter().collect();
    assert_eq!(distinct.len(), all_devices.len(), "no device twice");

    // The gang that cannot fit stays pending with a reason and holds nothing.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let waiting = wait::until(&pods, "huge-0", TIMEOUT, "marked unschedulable", told_unschedulable).await;
    let condition =
        waiting.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "PodScheduled").unwrap();
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
    let message = condition.message.unwrap_or_default();
    assert!(!message.is_empty(), "the condition explains why");
    for name in &huge {
        let pod = pods.get(name).await.unwrap();
        assert_eq!(node_of(&pod), None, "{name} not bound");
        assert!(devices_of(&client, &pod).await.is_empty(), "{name} holds no device");
    }
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let failed = wait::poll(TIMEOUT, "a FailedScheduling event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("FailedScheduling"))
    })
    .await;
    assert!(failed.message.is_some_and(|m| !m.is_empty()));

    let metrics = scheduler.metrics.encode();
    assert!(metrics.contains("phalanx_pods_bound_total 8"), "{metrics}");
    scheduler.shutdown().await;
}

#[tokio::test]
async fn gang_waits_for_its_last_member() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 4, 4).await;
    let scheduler = start_scheduler(&env).await;

    for i in 0..3 {
        create_pod(&client, &format!("p-{i}"), Some(("late", 4)), "one-gpu").await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait::until(&pods, "p-0", TIMEOUT, "told it waits for members", told_unschedulable).await;
    for i in 0..3 {
        assert_eq!(node_of(&pods.get(&format!("p-{i}")).await.unwrap()), None, "no partial gang");
    }
    create_pod(&client, "p-3", Some(("late", 4)), "one-gpu").await;
    let names: Vec<String> = (0..4).map(|i| format!("p-{i}")).collect();
    wait_bound(&client, &names).await;
    scheduler.shutdown().await;
}

#[tokio::test]
async fn two_hundred_single_gpu_pods() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 30, 10).await;
    let scheduler = start_scheduler(&env).await;
    let names: Vec<String> = (0..200).map(|i| format!("single-{i}")).collect();
    for name in &names {
        create_pod(&client, name, None, "one-gpu").await;
    }
    let bound = wait_bound(&client, &names).await;
    let mut all = Vec::new();
    for pod in &bound {
        let devices = devices_of(&client, pod).await;
        assert_eq!(devices.len(), 1, "{}", pod.name_any());
        all.extend(devices);
    }
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 200, "200 distinct GPUs");

    // What Prometheus and the kubelet probes see, over real HTTP.
    let addr = scheduler.http_address;
    assert_eq!(http_get(addr, "/healthz").await, (200, "ok".to_string()));
    assert_eq!(http_get(addr, "/readyz").await, (200, "ok".to_string()));
    let want = [
        "phalanx_pods_bound_total 200",
        "phalanx_scheduling_attempts_total{result=\"scheduled\"} 200",
        "phalanx_queue_depth 0",
        "phalanx_placement_score_count 200",
    ];
    // The queue gauge is set by the cycle after the last binding: poll, don't race it.
    let metrics = wait::poll(TIMEOUT, "the metrics to show 200 bound", || async {
        let (status, metrics) = http_get(addr, "/metrics").await;
        (status == 200 && want.iter().all(|w| metrics.lines().any(|l| l == *w))).then_some(metrics)
    })
    .await;
    for phase in ["snapshot", "place", "commit"] {
        let count = format!("phalanx_phase_duration_seconds_count{{phase=\"{phase}\"}}");
        assert!(metrics.lines().any(|l| l.starts_with(&count) && !l.ends_with(" 0")), "{count} missing:\n{metrics}");
    }
    assert_eq!(http_get(addr, "/nothing").await.0, 404);
    scheduler.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the endpoints stop with the scheduler");
}

/// The scheduler runs with exactly the RBAC of deploy/scheduler (as its service
/// account, with leader election on): a gang is scheduled, so the grants suffice.
#[tokio::test]
async fn deploy_rbac_is_enough_to_schedule_a_gang() {
    use kube::api::DynamicObject;
    let env = TestEnv::start_default().await.expect("control plane starts");
    let admin = env.client();
    gpu_cluster(&admin, 2, 2).await;
    let as_scheduler = as_deployed_scheduler(&env).await;
    // The gang is a scheduler-plugins PodGroup, so its status writes are covered too.
    let resource = install_crd(&admin, "coscheduling-podgroup-crd.yaml", ("scheduling.x-k8s.io", "PodGroup")).await;
    let groups: Api<DynamicObject> = Api::namespaced_with(admin.clone(), NS, &resource);
    let group: DynamicObject = from_json(json!({
        "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
        "metadata": { "name": "rbac", "namespace": NS }, "spec": { "minMember": 2 }
    }));
    groups.create(&PostParams::default(), &group).await.unwrap();
    let member = || BTreeMap::from([("scheduling.x-k8s.io/pod-group", "rbac".to_owned())]);

    // What it was not granted stays denied, e.g. deleting pods.
    let pods: Api<Pod> = Api::namespaced(as_scheduler.clone(), NS);
    create_pod_with(&admin, "rbac-0", member(), BTreeMap::new(), "one-gpu").await;
    assert!(
        matches!(pods.delete("rbac-0", &Default::default()).await, Err(kube::Error::Api(s)) if s.code == 403),
        "the scheduler may not delete pods"
    );
    create_pod_with(&admin, "rbac-1", member(), BTreeMap::new(), "one-gpu").await;

    let mut config = SchedulerConfig { bind_address: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    config.leader_election.namespace = "phalanx-system".into();
    config.leader_election.lease_duration_seconds = 4;
    config.leader_election.retry_period_seconds = 1;
    let scheduler = service::start(as_scheduler, config, "rbac-test".into()).await.unwrap();
    wait_bound(&admin, &["rbac-0".to_string(), "rbac-1".to_string()]).await;
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    wait::poll(TIMEOUT, "a Scheduled event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("Scheduled"))
    })
    .await;
    wait::poll(TIMEOUT, "the PodGroup status written as the scheduler", || async {
        let g = groups.get("rbac").await.ok()?;
        (g.data.get("status")?.get("scheduled")? == &json!(2)).then_some(())
    })
    .await;
    scheduler.shutdown().await;
}

async fn bound_count(client: &Client, prefix: &str) -> usize {
    let pods = Api::<Pod>::namespaced(client.clone(), NS).list(&ListParams::default()).await.unwrap();
    pods.items.iter().filter(|p| p.name_any().starts_with(prefix) && node_of(p).is_some()).count()
}

async fn allocated_claims_of(client: &Client, prefix: &str) -> usize {
    let pods = Api::<Pod>::namespaced(client.clone(), NS).list(&ListParams::default()).await.unwrap();
    let mut n = 0;
    for p in pods.items.iter().filter(|p| p.name_any().starts_with(prefix)) {
        n += devices_of(client, p).await.len();
    }
    n
}

#[tokio::test]
async fn two_gangs_competing_for_one_domain_never_both_partial() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    // One NVLink domain of 4 nodes × 8 GPUs: room for exactly one 4 × 8 gang.
    gpu_cluster(&client, 4, 4).await;
    let scheduler = start_scheduler(&env).await;
    for i in 0..4 {
        create_pod(&client, &format!("a-{i}"), Some(("a", 4)), "eight-gpus").await;
        create_pod(&client, &format!("b-{i}"), Some(("b", 4)), "eight-gpus").await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let (winner, loser) = wait::poll(TIMEOUT, "one gang bound", || async {
        match (bound_count(&client, "a-").await, bound_count(&client, "b-").await) {
            (4, 0) => Some(("a-", "b-")),
            (0, 4) => Some(("b-", "a-")),
            _ => None,
        }
    })
    .await;
    wait::until(&pods, &format!("{loser}0"), TIMEOUT, "told why it waits", told_unschedulable).await;
    assert_eq!(bound_count(&client, loser).await, 0, "the loser is not partly bound");
    assert_eq!(allocated_claims_of(&client, loser).await, 0, "the loser holds no device");

    // The winner finishes: its pods and (through garbage collection) claims go away, and
    // the waiting gang is placed on that event, whole.
    for i in 0..4 {
        pods.delete(&format!("{winner}{i}"), &Default::default()).await.unwrap();
    }
    let names: Vec<String> = (0..4).map(|i| format!("{loser}{i}")).collect();
    wait_bound(&client, &names).await;
    scheduler.shutdown().await;
}

#[tokio::test]
async fn kube_scheduler_pods_are_left_alone_and_their_devices_respected() {
    let env = TestEnv::start(phalanx_testenv::Options::default().kube_scheduler(true)).await.unwrap();
    let client = env.client();
    gpu_cluster(&client, 2, 2).await;
    // Four pods for the default scheduler, each with one GPU.
    for i in 0..4 {
        let pod: Pod = from_json(json!({
            "metadata": { "name": format!("upstream-{i}") },
            "spec": {
                "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
                "resourceClaims": [{ "name": "gpu", "resourceClaimTemplateName": "one-gpu" }],
                "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                                 "resources": { "claims": [{ "name": "gpu" }] } }]
            }
        }));
        Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &pod).await.unwrap();
    }
    let upstream: Vec<String> = (0..4).map(|i| format!("upstream-{i}")).collect();
    let before = wait_bound(&client, &upstream).await;
    let mut upstream_devices = Vec::new();
    for p in &before {
        upstream_devices.extend(devices_of(&client, p).await);
    }
    assert_eq!(upstream_devices.len(), 4);

    // Phalanx gets the 12 GPUs left, exactly, and one more single pod that cannot fit.
    let scheduler = start_scheduler(&env).await;
    let gang: Vec<String> = (0..12).map(|i| format!("ours-{i}")).collect();
    for name in &gang {
        create_pod(&client, name, Some(("ours", 12)), "one-gpu").await;
    }
    let ours = wait_bound(&client, &gang).await;
    create_pod(&client, "one-too-many", None, "one-gpu").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait::until(&pods, "one-too-many", TIMEOUT, "unschedulable", told_unschedulable).await;

    let mut all = upstream_devices.clone();
    for p in &ours {
        all.extend(devices_of(&client, p).await);
    }
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (16, 16), "every GPU once: {all:?}");
    for (p, old) in upstream.iter().zip(&before) {
        let now = pods.get(p).await.unwrap();
        assert_eq!(node_of(&now), node_of(old), "{p} untouched");
    }
    let mut again = Vec::new();
    for p in &before {
        again.extend(devices_of(&client, p).await);
    }
    assert_eq!(again, upstream_devices, "upstream allocations unchanged");
    scheduler.shutdown().await;
}

/// A scheduler-plugins PodGroup (its CRD installed from a test fixture): the group is
/// held until `minMember` pods exist, then placed whole, and its status moves through
/// the coscheduling phases with `scheduled` counted.
#[tokio::test]
async fn coscheduling_pod_group_is_placed_whole_and_its_status_kept() {
    use kube::api::DynamicObject;
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 2, 2).await;
    let resource = install_crd(&client, "coscheduling-podgroup-crd.yaml", ("scheduling.x-k8s.io", "PodGroup")).await;
    let groups: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
    let group: DynamicObject = from_json(json!({
        "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
        "metadata": { "name": "cosched", "namespace": NS }, "spec": { "minMember": 3 }
    }));
    groups.create(&PostParams::default(), &group).await.unwrap();
    let scheduler = start_scheduler(&env).await;

    let member = |i: usize| format!("cosched-{i}");
    let labels = || BTreeMap::from([("scheduling.x-k8s.io/pod-group", "cosched".to_owned())]);
    for i in 0..2 {
        create_pod_with(&client, &member(i), labels(), BTreeMap::new(), "eight-gpus").await;
    }
    let phase_is = |want: &'static [&'static str]| {
        let groups = groups.clone();
        async move {
            wait::poll(TIMEOUT, "the PodGroup phase", || async {
                let g = groups.get("cosched").await.ok()?;
                let status = g.data.get("status")?.clone();
                let phase = status.get("phase")?.as_str()?.to_owned();
                want.contains(&phase.as_str()).then_some(status)
            })
            .await
        }
    };
    let status = phase_is(&["Pending"]).await;
    assert_eq!(status["scheduled"], json!(0), "{status}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..2 {
        assert_eq!(node_of(&pods.get(&member(i)).await.unwrap()), None, "held until minMember pods exist");
    }

    // The third member: 3 × 8 GPUs do not fit on 2 nodes, so the group waits whole...
    create_pod_with(&client, &member(2), labels(), BTreeMap::new(), "eight-gpus").await;
    let status = phase_is(&["PreScheduling"]).await;
    assert!(status.get("scheduleStartTime").is_some(), "{status}");
    wait::until(&pods, &member(2), TIMEOUT, "told why it waits", told_unschedulable).await;
    for i in 0..3 {
        assert_eq!(node_of(&pods.get(&member(i)).await.unwrap()), None, "no partial group");
    }

    // ...until a third node appears, then it is placed whole.
    gpu_nodes(&client, 2..3, 2).await;
    let names: Vec<String> = (0..3).map(member).collect();
    wait_bound(&client, &names).await;
    let status = phase_is(&["Scheduled", "Running"]).await;
    assert_eq!(status["scheduled"], json!(3), "{status}");
    scheduler.shutdown().await;
}

/// A plain HTTP/1.0 GET: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A member held by a scheduling gate holds the whole gang back; removing the gate lets
/// it be placed, whole.
#[tokio::test]
async fn scheduling_gate_on_one_member_holds_the_gang() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 2, 2).await;
    let scheduler = start_scheduler(&env).await;
    create_pod(&client, "gated-0", Some(("gated", 2)), "one-gpu").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let gated: Pod = from_json(json!({
        "metadata": { "name": "gated-1", "labels": { "phalanx.dev/gang": "gated" },
                      "annotations": { "phalanx.dev/gang-min-members": "2" } },
        "spec": {
            "schedulerName": "phalanx-scheduler",
            "schedulingGates": [{ "name": "example.com/quota" }],
            "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
            "resourceClaims": [{ "name": "gpu", "resourceClaimTemplateName": "one-gpu" }],
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                             "resources": { "claims": [{ "name": "gpu" }] } }]
        }
    }));
    pods.create(&PostParams::default(), &gated).await.unwrap();
    wait::until(&pods, "gated-0", TIMEOUT, "told it waits for its gang", told_unschedulable).await;
    let held = pods.get("gated-1").await.unwrap();
    assert_eq!(node_of(&held), None);
    let reason =
        held.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "PodScheduled");
    assert_eq!(
        reason.and_then(|c| c.reason).as_deref(),
        Some("SchedulingGated"),
        "the gated pod is not ours to report on"
    );
    assert_eq!(node_of(&pods.get("gated-0").await.unwrap()), None, "no partial gang");

    let patch = json!({ "spec": { "schedulingGates": null } });
    pods.patch("gated-1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    wait_bound(&client, &["gated-0".to_string(), "gated-1".to_string()]).await;
    scheduler.shutdown().await;
}

/// A Grove PodGang (its CRD from a test fixture), as Dynamo/Grove would create it: two
/// pod groups (prefill, decode) with their own minimums and a required pack constraint
/// on the rack label. The gang lands whole inside the one rack that can hold it. The CRD
/// is installed after the scheduler started: it finds the new API without a restart.
#[tokio::test]
async fn grove_pod_gang_lands_whole_in_its_required_rack() {
    use kube::api::DynamicObject;
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    // domain-0: nodes 0-3 (32 GPUs); domain-1: nodes 4-5 (16 GPUs).
    gpu_cluster(&client, 6, 4).await;
    let mut config = SchedulerConfig { bind_address: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    config.leader_election.enabled = false;
    config.api_discovery_period_seconds = 1;
    let scheduler = service::start(env.client(), config, "grove".into()).await.unwrap();
    let watched = "phalanx_gang_api_watched{api=\"scheduler.grove.io/v1alpha1/PodGang\"}";
    assert!(scheduler.metrics.encode().contains(&format!("{watched} 0")), "not served when the scheduler started");
    let resource = install_crd(&client, "grove-podgang-crd.yaml", ("scheduler.grove.io", "PodGang")).await;
    wait::poll(TIMEOUT, "the scheduler to watch PodGangs", || async {
        scheduler.metrics.encode().contains(&format!("{watched} 1")).then_some(())
    })
    .await;
    let refs =
        |role: &str| (0..2).map(|i| json!({ "namespace": NS, "name": format!("{role}-{i}") })).collect::<Vec<_>>();
    let gang: DynamicObject = from_json(json!({
        "apiVersion": "scheduler.grove.io/v1alpha1", "kind": "PodGang",
        "metadata": { "name": "serving", "namespace": NS },
        "spec": {
            "podgroups": [
                { "name": "prefill", "podReferences": refs("prefill"), "minReplicas": 2 },
                { "name": "decode", "podReferences": refs("decode"), "minReplicas": 2 }
            ],
            "topologyConstraint": { "packConstraint": { "required": "phalanx.dev/rack" } }
        }
    }));
    Api::<DynamicObject>::namespaced_with(client.clone(), NS, &resource)
        .create(&PostParams::default(), &gang)
        .await
        .unwrap();
    let names: Vec<String> =
        ["prefill", "decode"].iter().flat_map(|r| (0..2).map(move |i| format!("{r}-{i}"))).collect();
    for name in &names {
        create_pod(&client, name, None, "eight-gpus").await;
    }
    let bound = wait_bound(&client, &names).await;
    let nodes: BTreeSet<String> = bound.iter().filter_map(node_of).collect();
    assert_eq!(nodes.len(), 4, "one pod per node: {nodes:?}");
    let racks: BTreeSet<usize> =
        nodes.iter().map(|n| n.trim_start_matches("gpu-node-").parse::<usize>().unwrap() / 4).collect();
    assert_eq!(racks, BTreeSet::from([0]), "all inside domain-0, the only rack that fits: {nodes:?}");
    // Placed as one gang (not four pods that happened to fit): the events name it.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let scheduled = wait::poll(TIMEOUT, "Scheduled events for the members", || async {
        let list = events.list(&ListParams::default()).await.ok()?.items;
        let notes: Vec<String> =
            list.into_iter().filter(|e| e.reason.as_deref() == Some("Scheduled")).filter_map(|e| e.message).collect();
        (notes.len() >= 4).then_some(notes)
    })
    .await;
    assert!(scheduled.iter().all(|n| n.contains("gang default/serving")), "{scheduled:?}");
    scheduler.shutdown().await;
}

/// Bad input loses nothing: a selector that fails at runtime, a malformed gang
/// annotation and a pod pinned to a node that vanished each get a precise reason, and
/// the scheduler keeps placing everyone else.
#[tokio::test]
async fn bad_input_gets_a_reason_and_everyone_else_is_served() {
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 2, 2).await;
    // Valid CEL (the apiserver compiles it), but it fails on every device: no such key.
    phalanx_testenv::fixtures::device_class(
        &client,
        "broken.phalanx.dev",
        "device.attributes['gpu.phalanx.dev'].noSuchAttribute > 1",
    )
    .await;
    claim_template(&client, "broken", "broken.phalanx.dev", 1).await;
    let scheduler = start_scheduler(&env).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    create_pod(&client, "bad-selector", None, "broken").await;
    let mut annotations = BTreeMap::new();
    annotations.insert("phalanx.dev/gang-min-members", "three".to_owned());
    let labels = BTreeMap::from([("phalanx.dev/gang", "typo".to_owned())]);
    create_pod_with(&client, "bad-annotation", labels, annotations, "one-gpu").await;
    Api::<Node>::all(client.clone()).delete("gpu-node-1", &Default::default()).await.unwrap();
    let pinned: Pod = from_json(json!({
        "metadata": { "name": "pinned-to-gone-node" },
        "spec": {
            "schedulerName": "phalanx-scheduler",
            "nodeSelector": { "kubernetes.io/hostname": "gpu-node-1" },
            "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
            "resourceClaims": [{ "name": "gpu", "resourceClaimTemplateName": "one-gpu" }],
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                             "resources": { "claims": [{ "name": "gpu" }] } }]
        }
    }));
    pods.create(&PostParams::default(), &pinned).await.unwrap();
    create_pod(&client, "healthy", None, "one-gpu").await;

    let healthy = wait_bound(&client, &["healthy".to_string()]).await;
    assert_eq!(node_of(&healthy[0]).as_deref(), Some("gpu-node-0"), "not on the vanished node");
    let selector = wait::until(&pods, "bad-selector", TIMEOUT, "a reason", told_unschedulable).await;
    let message = condition_message(&selector);
    assert!(message.contains("broken.phalanx.dev") && message.contains("noSuchAttribute"), "{message}");
    let annotation = wait::until(&pods, "bad-annotation", TIMEOUT, "a reason", told_unschedulable).await;
    let message = condition_message(&annotation);
    assert!(message.contains("phalanx.dev/gang-min-members") && message.contains("three"), "{message}");
    let pinned = wait::until(&pods, "pinned-to-gone-node", TIMEOUT, "a reason", told_unschedulable).await;
    let message = condition_message(&pinned);
    assert!(!message.is_empty(), "the pinned pod says why it waits");
    for name in ["bad-selector", "bad-annotation", "pinned-to-gone-node"] {
        let pod = pods.get(name).await.unwrap();
        assert_eq!(node_of(&pod), None, "{name} not bound");
        assert!(devices_of(&client, &pod).await.is_empty(), "{name} holds no device");
    }
    scheduler.shutdown().await;
}

/// A half-done commit appearing while the scheduler leads (as a rollback that failed
/// half-way leaves it): one member's claim allocated and reserved, both members with an
/// intent, the other claim never written. The next cycle rolls it back: the gang (16
/// GPUs, 15 free) cannot fit and waits holding nothing; placement alone would have kept
/// the stray allocation as if someone else held it.
#[tokio::test]
async fn half_done_commit_found_while_leading_is_rolled_back() {
    use kube::api::{Patch, PatchParams};
    let env = TestEnv::start_default().await.expect("control plane starts");
    let client = env.client();
    gpu_cluster(&client, 2, 2).await;
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for m in ["a", "b"] {
        let claim: ResourceClaim = from_json(json!({
            "metadata": { "name": format!("claim-{m}") },
            "spec": { "devices": { "requests": [{ "name": "gpu", "exactly": { "deviceClassName": "gpu.phalanx.dev", "count": 8 } }] } }
        }));
        claims.create(&PostParams::default(), &claim).await.unwrap();
        let pod: Pod = from_json(json!({
            "metadata": { "name": format!("half-{m}"), "labels": { "phalanx.dev/gang": "half" },
                          "annotations": { "phalanx.dev/gang-min-members": "2" } },
            "spec": {
                "schedulerName": "phalanx-scheduler",
                "schedulingGates": [{ "name": "test.phalanx.dev/hold" }],
                "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists" }],
                "resourceClaims": [{ "name": "gpu", "resourceClaimName": format!("claim-{m}") }],
                "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10",
                                 "resources": { "claims": [{ "name": "gpu" }] } }]
            }
        }));
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let scheduler = start_scheduler(&env).await;
    // A witness bound: the scheduler is past its start-up recovery and cycling.
    create_pod(&client, "witness", None, "one-gpu").await;
    let witness = wait_bound(&client, &["witness".to_string()]).await;
    let node = if node_of(&witness[0]).as_deref() == Some("gpu-node-0") { "gpu-node-1" } else { "gpu-node-0" };

    // The half-done state, on the node without the witness, as a failed rollback leaves it.
    let a = pods.get("half-a").await.unwrap();
    for m in ["half-a", "half-b"] {
        let intent = json!({ "status": { "nominatedNodeName": node } });
        pods.patch_status(m, &PatchParams::default(), &Patch::Merge(&intent)).await.unwrap();
    }
    let finalizer = json!({ "metadata": { "finalizers": ["resource.kubernetes.io/delete-protection"] } });
    claims.patch("claim-a", &PatchParams::default(), &Patch::Merge(&finalizer)).await.unwrap();
    let results: Vec<_> = (0..8)
        .map(|i| json!({ "request": "gpu", "driver": "gpu.phalanx.dev", "pool": node, "device": format!("gpu-{i}") }))
        .collect();
    let status = json!({ "status": {
        "allocation": { "devices": { "results": results },
            "nodeSelector": { "nodeSelectorTerms": [{ "matchFields": [
                { "key": "metadata.name", "operator": "In", "values": [node] }] }] } },
        "reservedFor": [{ "resource": "pods", "name": "half-a", "uid": a.uid().unwrap() }]
    }});
    claims.patch_status("claim-a", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    for m in ["half-a", "half-b"] {
        let ungate = json!({ "spec": { "schedulingGates": null } });
        pods.patch(m, &PatchParams::default(), &Patch::Merge(&ungate)).await.unwrap();
    }

    // Released: no allocation, no reservation, and (a second write) no finalizer.
    wait::until(&claims, "claim-a", TIMEOUT, "released", |c: Option<&ResourceClaim>| {
        c.is_some_and(|c| {
            c.status
                .as_ref()
                .is_none_or(|s| s.allocation.is_none() && s.reserved_for.as_ref().is_none_or(Vec::is_empty))
                && !c.finalizers().iter().any(|f| f == "resource.kubernetes.io/delete-protection")
        })
    })
    .await;
    for m in ["half-a", "half-b"] {
        let cleared =
            |p: Option<&Pod>| p.is_some_and(|p| p.status.as_ref().is_none_or(|s| s.nominated_node_name.is_none()));
        wait::until(&pods, m, TIMEOUT, "intent cleared", cleared).await;
        let pod = wait::until(&pods, m, TIMEOUT, "told why it waits", told_unschedulable).await;
        assert_eq!(node_of(&pod), None, "{m} not bound");
    }
    assert!(claims.get("claim-b").await.unwrap().status.and_then(|s| s.allocation).is_none());
    scheduler.shutdown().await;
}
