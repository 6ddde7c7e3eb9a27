//! The publisher against a real apiserver: slices of every profile are accepted, the
//! upstream kube-scheduler allocates from them, CEL selectors on our attributes pick
//! exactly the expected devices, drift is repaired, and slices go away when asked.

mod common;

use std::collections::BTreeSet;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, DeleteParams, PostParams};
use phalanx_dra_driver::attributes::{GPU_DRIVER, NIC_DRIVER};
use phalanx_dra_driver::discovery::NodeContext;
use phalanx_dra_driver::discovery::profile::BUILTIN;
use phalanx_dra_driver::publisher::{Outcome, Publisher};
use phalanx_testenv::{Options, TestEnv, wait};
use serde_json::json;

#[tokio::test]
async fn every_profile_is_accepted_and_republishing_is_a_no_op() {
    let env = TestEnv::start(Options::default().controller_manager(false)).await.expect("control plane");
    let client = env.client();
    let publisher = Publisher::new(client.clone());
    for (i, (profile, _)) in BUILTIN.iter().enumerate() {
        let node = create_node(&client, &format!("node-{profile}"), json!({})).await;
        let ctx = NodeContext { name: node.name.clone(), index: i, labels: Default::default() };
        let inv = set_profile_pools(&publisher, profile, &node, &ctx);
        let gpu_key = (GPU_DRIVER.to_owned(), node.name.clone());
        assert_eq!(publisher.reconcile(&gpu_key).await.expect("accepted by the apiserver"), Outcome::Written(1));
        let nic_key = (NIC_DRIVER.to_owned(), node.name.clone());
        assert_eq!(publisher.reconcile(&nic_key).await.expect("NIC slice accepted"), Outcome::Written(1));

        let slices = slices_of(&client, GPU_DRIVER, &node.name).await;
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s.spec.pool.name, node.name);
        assert_eq!(s.spec.pool.resource_slice_count, 1);
        assert_eq!(s.spec.devices.as_ref().unwrap().len(), inv.gpus.len());
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", node.uid.as_str()));
        assert_eq!(
            slices_of(&client, NIC_DRIVER, &node.name).await[0].spec.devices.as_ref().unwrap().len(),
            inv.nics.len()
        );

        // What the apiserver stored reads back equal: a second pass changes nothing.
        assert_eq!(publisher.reconcile(&gpu_key).await.unwrap(), Outcome::Unchanged, "{profile}");
        assert_eq!(publisher.reconcile(&nic_key).await.unwrap(), Outcome::Unchanged, "{profile}");
    }

    // A pool larger than one slice: 200 devices → 2 slices with resourceSliceCount 2;
    // shrinking it to 100 drops the second slice and bumps the generation.
    let big = create_node(&client, "big", json!({})).await;
    let inv = inventory("hgx-h100-8", &NodeContext::named("big"));
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let template = phalanx_dra_driver::attributes::gpu_devices(&inv, &Default::default(), &now);
    let many = |n: usize| -> Vec<_> {
        (0..n)
            .map(|i| {
                let mut d = template[i % 8].clone();
                d.name = format!("gpu-{i}");
                d
            })
            .collect()
    };
    publisher.set_pool(GPU_DRIVER, big.clone(), many(200));
    let key = (GPU_DRIVER.to_owned(), "big".to_owned());
    assert_eq!(publisher.reconcile(&key).await.expect("accepted"), Outcome::Written(1));
    let slices = slices_of(&client, GPU_DRIVER, "big").await;
    assert_eq!(slices.len(), 2);
    assert!(slices.iter().all(|s| s.spec.pool.resource_slice_count == 2 && s.spec.pool.generation == 1));
    assert_eq!(publisher.reconcile(&key).await.unwrap(), Outcome::Unchanged);
    publisher.set_pool(GPU_DRIVER, big, many(100));
    assert_eq!(publisher.reconcile(&key).await.unwrap(), Outcome::Written(2));
    let slices = slices_of(&client, GPU_DRIVER, "big").await;
    assert_eq!(slices.len(), 1);
    assert_eq!((slices[0].spec.pool.resource_slice_count, slices[0].spec.pool.generation), (1, 2));
}

#[tokio::test]
async fn publish_command_serves_many_nodes_from_one_process() {
    let env = TestEnv::start(Options::default().controller_manager(false).kwok(false)).await.expect("control plane");
    let client = env.client();
    for i in 0..20 {
        let clique = if i < 2 { json!({ "nvidia.com/gpu.clique": "rack-a.1" }) } else { json!({}) };
        let mut labels = json!({ "bulk": "yes" });
        labels.as_object_mut().unwrap().extend(clique.as_object().unwrap().clone());
        create_node(&client, &format!("tray-{i:02}"), labels).await;
    }
    create_node(&client, "other", json!({})).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_phalanx-dra-driver"))
        .args(["publish", "--profile", "gb200-nvl72", "--node-selector", "bulk=yes", "--once"])
        .env("KUBECONFIG", env.kubeconfig_path())
        .output()
        .await
        .expect("publish runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("published 40 pools"), "{stderr}");
    let domain = |node: &str| {
        let client = client.clone();
        let node = node.to_owned();
        async move {
            let slices = slices_of(&client, GPU_DRIVER, &node).await;
            let devices = slices[0].spec.devices.clone().unwrap();
            assert_eq!(devices.len(), 4);
            devices[0].attributes.as_ref().unwrap()["nvlinkDomain"].string.clone().unwrap()
        }
    };
    assert_eq!(domain("tray-00").await, "rack-a.1", "from the node label");
    // Without the label, nodes group 18 per domain in name order: tray-02..tray-17 with
    // indexes 2..17 share domain 0, tray-18 and tray-19 are in the next one.
    assert_eq!(domain("tray-02").await, domain("tray-17").await);
    assert_ne!(domain("tray-17").await, domain("tray-18").await);
    assert!(slices_of(&client, GPU_DRIVER, "other").await.is_empty());
    assert_eq!(slices_of(&client, NIC_DRIVER, "tray-05").await[0].spec.devices.as_ref().unwrap().len(), 4);
}

fn claim(name: &str, spec: serde_json::Value) -> ResourceClaim {
    from_json(json!({ "metadata": { "name": name }, "spec": { "devices": spec } }))
}

fn pod(name: &str, claim: &str) -> Pod {
    from_json(json!({
        "metadata": { "name": name },
        "spec": {
            "tolerations": [{ "operator": "Exists" }],
            "resourceClaims": [{ "name": "devices", "resourceClaimName": claim }],
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10", "resources": { "claims": [{ "name": "devices" }] } }]
        }
    }))
}

/// Allocation results of `claim` as `(request, pool, device)`, once kube-scheduler allocated it.
async fn allocated(claims: &Api<ResourceClaim>, pods: &Api<Pod>, name: &str) -> Vec<(String, String, String)> {
    let is_allocated =
        |c: Option<&ResourceClaim>| c.and_then(|c| c.status.as_ref()).is_some_and(|s| s.allocation.is_some());
    let watch = kube::runtime::wait::await_condition(claims.clone(), name, is_allocated);
    let claim = match tokio::time::timeout(TIMEOUT, watch).await {
        Ok(Ok(Some(claim))) => claim,
        other => {
            let pod = pods.get(name).await.ok().and_then(|p| p.status);
            let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(pods.clone().into_client())
                .list(&Default::default())
                .await;
            let taints: Vec<_> = nodes
                .into_iter()
                .flat_map(|l| l.items)
                .map(|n| (n.metadata.name, n.spec.and_then(|s| s.taints)))
                .collect();
            panic!("{name}: not allocated by kube-scheduler ({other:?}); pod status: {pod:#?}; node taints: {taints:?}")
        }
    };
    let results = claim.status.unwrap().allocation.unwrap().devices.unwrap().results.unwrap_or_default();
    results.into_iter().map(|r| (r.request, r.pool, r.device)).collect()
}

fn device_set(results: &[(String, String, String)]) -> BTreeSet<(String, String)> {
    results.iter().map(|(_, p, d)| (p.clone(), d.clone())).collect()
}

fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs.iter().map(|(p, d)| (p.to_string(), d.to_string())).collect()
}

#[tokio::test]
async fn upstream_kube_scheduler_allocates_from_our_slices_and_cel_selects_on_our_attributes() {
    let env = TestEnv::start(Options::default().kube_scheduler(true)).await.expect("control plane with kube-scheduler");
    let client = env.client();
    device_classes(&client).await;
    let publisher = Publisher::new(client.clone());
    let mut inventories = std::collections::BTreeMap::new();
    for (i, profile) in ["hgx-h100-8", "gb200-nvl72", "l40s-pcie-8", "mixed-small"].iter().enumerate() {
        let node = create_node(&client, &format!("n-{profile}"), json!({})).await;
        let ctx = NodeContext { name: node.name.clone(), index: i, labels: Default::default() };
        inventories.insert(*profile, set_profile_pools(&publisher, profile, &node, &ctx));
    }
    assert_eq!(publisher.sync_all().await.expect("published"), 8);

    let gb200_domain = inventories["gb200-nvl72"].gpus[0].nvlink_domain.clone().unwrap();
    let all = |selector: &str| {
        json!({ "requests": [{ "name": "gpus", "exactly": {
            "deviceClassName": "gpu.phalanx.dev", "allocationMode": "All",
            "selectors": [{ "cel": { "expression": selector } }]
        } }] })
    };
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cases = [
        (
            "by-pcie-root",
            all("device.attributes['resource.kubernetes.io'].pcieRoot == 'pci0000:17'"),
            set(&[("n-hgx-h100-8", "gpu-0")]),
        ),
        (
            "by-nvlink-domain",
            all(&format!("device.attributes['gpu.phalanx.dev'].?nvlinkDomain.orValue('') == '{gb200_domain}'")),
            set(&[
                ("n-gb200-nvl72", "gpu-0"),
                ("n-gb200-nvl72", "gpu-1"),
                ("n-gb200-nvl72", "gpu-2"),
                ("n-gb200-nvl72", "gpu-3"),
            ]),
        ),
        (
            "by-product",
            all("device.attributes['gpu.phalanx.dev'].productName == 'NVIDIA H100 NVL'"),
            set(&[("n-mixed-small", "gpu-0"), ("n-mixed-small", "gpu-1")]),
        ),
        (
            "l40s-numa0-memory",
            all("device.attributes['gpu.phalanx.dev'].productName == 'NVIDIA L40S' && \
                 device.attributes['resource.kubernetes.io'].numaNode == 0 && \
                 device.attributes['gpu.phalanx.dev'].cudaComputeCapability.isGreaterThan(semver('8.0.0')) && \
                 device.capacity['gpu.phalanx.dev'].memory.compareTo(quantity('40Gi')) > 0"),
            // The mixed node's L40S sit on NUMA 1: only the l40s node matches.
            set(&[
                ("n-l40s-pcie-8", "gpu-0"),
                ("n-l40s-pcie-8", "gpu-1"),
                ("n-l40s-pcie-8", "gpu-2"),
                ("n-l40s-pcie-8", "gpu-3"),
            ]),
        ),
    ];
    for (name, spec, _) in &cases {
        claims.create(&PostParams::default(), &claim(name, spec.clone())).await.expect("claim accepted");
        pods.create(&PostParams::default(), &pod(name, name)).await.expect("pod accepted");
    }
    for (name, _, expected) in &cases {
        let got = device_set(&allocated(&claims, &pods, name).await);
        assert_eq!(&got, expected, "{name}");
        let pod = wait::until(&pods, name, TIMEOUT, "bound", |p: Option<&Pod>| {
            p.and_then(|p| p.spec.as_ref()).is_some_and(|s| s.node_name.is_some())
        })
        .await;
        let node = pod.spec.unwrap().node_name.unwrap();
        assert!(got.iter().all(|(pool, _)| *pool == node), "{name}: pool is the node the pod landed on");
    }

    // GPU + NIC on one PCIe root, across two drivers, by the standard attribute.
    let aligned = json!({
        "requests": [
            { "name": "gpu", "exactly": { "deviceClassName": "gpu.phalanx.dev", "selectors": [{ "cel": { "expression":
                "device.attributes['gpu.phalanx.dev'].productName == 'NVIDIA H100 80GB HBM3' && device.attributes['resource.kubernetes.io'].numaNode == 1" } }] } },
            { "name": "nic", "exactly": { "deviceClassName": "nic.phalanx.dev", "selectors": [{ "cel": { "expression":
                "device.attributes['nic.phalanx.dev'].role == 'compute'" } }] } }
        ],
        "constraints": [{ "requests": ["gpu", "nic"], "matchAttribute": "resource.kubernetes.io/pcieRoot" }]
    });
    claims.create(&PostParams::default(), &claim("gpu-nic", aligned)).await.expect("claim accepted");
    pods.create(&PostParams::default(), &pod("gpu-nic", "gpu-nic")).await.expect("pod accepted");
    let results = allocated(&claims, &pods, "gpu-nic").await;
    let hgx = &inventories["hgx-h100-8"];
    let gpu = results.iter().find(|r| r.0 == "gpu").expect("gpu result");
    let nic = results.iter().find(|r| r.0 == "nic").expect("nic result");
    let gpu_root = hgx.gpus.iter().find(|g| g.device_name() == gpu.2).unwrap().pcie_root.clone();
    let nic_root = hgx.nics.iter().find(|n| n.device_name() == nic.2).unwrap().pcie_root.clone();
    assert_eq!(gpu_root, nic_root, "{results:?}");
    assert_eq!(hgx.gpus.iter().find(|g| g.device_name() == gpu.2).unwrap().numa_node, Some(1));
}

#[tokio::test]
async fn publisher_repairs_drift_follows_changes_and_cleans_up() {
    let env = TestEnv::start(Options::default().kube_scheduler(false)).await.expect("control plane");
    let client = env.client();
    let publisher = Publisher::new(client.clone());
    let node = create_node(&client, "drift", json!({})).await;
    set_profile_pools(&publisher, "hgx-h100-8", &node, &NodeContext::named("drift"));
    let runner = publisher.clone();
    let task = tokio::spawn(async move { runner.run(&[GPU_DRIVER, NIC_DRIVER]).await });

    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let name = "drift-gpu-phalanx-dev-0";
    let generation_at_least = |g: i64, devices: usize| {
        move |s: Option<&ResourceSlice>| {
            s.is_some_and(|s| {
                s.spec.pool.generation >= g && s.spec.devices.as_ref().is_some_and(|d| d.len() == devices)
            })
        }
    };
    wait::until(&slices, name, TIMEOUT, "published", generation_at_least(1, 8)).await;

    // Someone deletes the slice: it comes back at a newer generation.
    slices.delete(name, &DeleteParams::default()).await.expect("deleted");
    wait::until(&slices, name, TIMEOUT, "re-created", generation_at_least(2, 8)).await;

    // Someone edits it (drops a device): the device comes back.
    let mut edited = slices.get(name).await.unwrap();
    edited.spec.devices.as_mut().unwrap().pop();
    slices.replace(name, &PostParams::default(), &edited).await.expect("edited");
    wait::until(&slices, name, TIMEOUT, "repaired", generation_at_least(3, 8)).await;

    // The inventory changes (a GPU taint): the pool is rewritten once.
    let inv = inventory("hgx-h100-8", &NodeContext::named("drift"));
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let unhealthy = [("gpu-2".to_owned(), "xid-79".to_owned())].into();
    publisher.set_pool(GPU_DRIVER, node.clone(), phalanx_dra_driver::attributes::gpu_devices(&inv, &unhealthy, &now));
    let tainted = wait::until(&slices, name, TIMEOUT, "tainted", |s: Option<&ResourceSlice>| {
        s.and_then(|s| s.spec.devices.as_ref()).is_some_and(|d| d[2].taints.is_some())
    })
    .await;
    let generation = tainted.spec.pool.generation;
    assert!(generation >= 4);

    // Stable: nothing rewrites the pool while nothing changes (checked through a fresh reconcile).
    let key = (GPU_DRIVER.to_owned(), "drift".to_owned());
    assert_eq!(publisher.reconcile(&key).await.unwrap(), Outcome::Unchanged);

    task.abort();
    publisher.remove_all().await.expect("removed");
    assert!(slices_of(&client, GPU_DRIVER, "drift").await.is_empty());
    assert!(slices_of(&client, NIC_DRIVER, "drift").await.is_empty());
}

/// A node agent's publisher watches only its own node's slices: the slices of 20 other
/// nodes, published meanwhile, never reach it; its own are still repaired.
#[tokio::test]
async fn a_node_agent_watches_only_its_own_nodes_slices() {
    let env = TestEnv::start(Options::default().kube_scheduler(false)).await.expect("control plane");
    let client = env.client();
    let mine = create_node(&client, "mine", json!({})).await;
    let agent = Publisher::new(client.clone()).for_node("mine");
    set_profile_pools(&agent, "hgx-h100-8", &mine, &NodeContext::named("mine"));
    let runner = agent.clone();
    let task = tokio::spawn(async move { runner.run(&[GPU_DRIVER, NIC_DRIVER]).await });
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    wait::until(&slices, "mine-gpu-phalanx-dev-0", TIMEOUT, "published", |s: Option<&ResourceSlice>| s.is_some()).await;

    // Twenty other nodes, published by another (fleet) publisher, twice.
    let fleet = Publisher::new(client.clone());
    for i in 0..20 {
        let name = format!("other-{i}");
        let node = create_node(&client, &name, json!({})).await;
        set_profile_pools(&fleet, "l40s-pcie-8", &node, &NodeContext::named(&name));
    }
    fleet.sync_all().await.unwrap();

    // A barrier instead of a sleep: watch events arrive in resourceVersion order, so once
    // the agent has repaired a deletion of its own slice (written after every other
    // node's), any of their events that reached its watch would have been counted.
    slices.delete("mine-gpu-phalanx-dev-0", &DeleteParams::default()).await.unwrap();
    wait::until(&slices, "mine-gpu-phalanx-dev-0", TIMEOUT, "re-created", |s: Option<&ResourceSlice>| {
        s.is_some_and(|s| s.spec.pool.generation >= 2)
    })
    .await;
    let seen = agent.observed_events();
    assert!(seen >= 3, "its own slices' events arrive: {seen}");
    assert!(
        seen <= 8,
        "the agent heard {seen} slice events; only its own 2 slices (and their echoes) are its business"
    );
    task.abort();
}

/// Bound to a node (`true`) or reported unschedulable (`false`), once kube-scheduler decided.
async fn scheduled(pods: &Api<Pod>, name: &str) -> bool {
    let decided = |p: Option<&Pod>| {
        p.is_some_and(|p| {
            p.spec.as_ref().is_some_and(|s| s.node_name.is_some())
                || p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                    c.iter().any(|c| {
                        c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
        })
    };
    let pod = wait::until(pods, name, TIMEOUT, "scheduled or unschedulable", decided).await;
    pod.spec.and_then(|s| s.node_name).is_some()
}

/// MIG as partitionable devices on the real apiserver: the counter slice and the two
/// device slices of an hgx-h100-8-mig node are accepted and read back unchanged, and the
/// upstream kube-scheduler keeps within the counters: seven 1g.10gb on GPU 4 fit, an
/// eighth does not, nor does GPU 4 whole; GPU 5 whole still does.
#[tokio::test]
async fn mig_gpus_publish_shared_counters_and_kube_scheduler_never_over_commits_them() {
    use k8s_openapi::api::resource::v1::DeviceClass;
    use phalanx_dra_driver::attributes;
    use phalanx_dra_driver::discovery::Discovery;
    use phalanx_dra_driver::discovery::profile::{Profile, ProfileDiscovery};

    let env = TestEnv::start(Options::default().kube_scheduler(true)).await.expect("control plane with kube-scheduler");
    let client = env.client();
    // The deployed classes include mig.gpu.phalanx.dev (type == 'mig').
    device_classes(&client).await;
    let mig_class =
        Api::<DeviceClass>::all(client.clone()).get("mig.gpu.phalanx.dev").await.expect("MIG class deployed");
    let selector = &mig_class.spec.as_ref().unwrap().selectors.as_ref().unwrap()[0];
    assert!(selector.cel.as_ref().unwrap().expression.contains("type == 'mig'"));

    let node = create_node(&client, "mig-node", json!({})).await;
    let ctx = NodeContext::named("mig-node");
    let discovery = ProfileDiscovery::new(Profile::load("hgx-h100-8-mig").expect("profile"));
    let inv = discovery.discover(&ctx).expect("inventory");
    let mig = discovery.discover_mig(&ctx).expect("MIG GPUs");
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let pool = attributes::gpu_pool(&inv, &mig, &Default::default(), &now);
    let publisher = Publisher::new(client.clone());
    publisher.set_pool_with_counters(GPU_DRIVER, node.clone(), pool.devices.clone(), pool.shared_counters.clone());
    let key = (GPU_DRIVER.to_owned(), node.name.clone());
    assert_eq!(publisher.reconcile(&key).await.expect("accepted by the apiserver"), Outcome::Written(1));

    let mut slices = slices_of(&client, GPU_DRIVER, &node.name).await;
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    assert_eq!(slices.len(), 3, "80 devices consuming counters (64 per slice) and one counter slice");
    assert!(slices.iter().all(|s| s.spec.pool.resource_slice_count == 3 && s.spec.pool.generation == 1));
    let devices: Vec<_> = slices.iter().flat_map(|s| s.spec.devices.clone().unwrap_or_default()).collect();
    assert_eq!(devices, pool.devices, "devices read back as written");
    let counters: Vec<_> = slices.iter().flat_map(|s| s.spec.shared_counters.clone().unwrap_or_default()).collect();
    assert_eq!(counters, pool.shared_counters, "counter sets read back as written");
    assert!(
        slices.iter().all(|s| s.spec.devices.is_none() || s.spec.shared_counters.is_none()),
        "never both in one slice"
    );
    assert_eq!(publisher.reconcile(&key).await.unwrap(), Outcome::Unchanged);

    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let request = |class: &str, expr: String| {
        json!({ "requests": [{ "name": "gpu", "exactly": {
            "deviceClassName": class, "selectors": [{ "cel": { "expression": expr } }]
        } }] })
    };
    let small = request(
        "mig.gpu.phalanx.dev",
        "device.attributes['gpu.phalanx.dev'].migProfile == '1g.10gb' && device.attributes['gpu.phalanx.dev'].parentIndex == 4".into(),
    );
    let names: Vec<String> = (0..8).map(|i| format!("small-{i}")).collect();
    for name in &names {
        claims.create(&PostParams::default(), &claim(name, small.clone())).await.expect("claim accepted");
        pods.create(&PostParams::default(), &pod(name, name)).await.expect("pod accepted");
    }
    let mut bound = Vec::new();
    for name in &names {
        if scheduled(&pods, name).await {
            bound.extend(allocated(&claims, &pods, name).await.into_iter().map(|(_, _, device)| device));
        }
    }
    bound.sort();
    let expected: Vec<String> = (0..7).map(|s| format!("gpu-4-mig-1g10gb-{s}")).collect();
    assert_eq!(bound, expected, "seven 1g.10gb on GPU 4, each once; the eighth stays pending");

    let whole = |name: &str, index: usize| {
        (
            name.to_owned(),
            request(
                "gpu.phalanx.dev",
                format!("device.attributes['gpu.phalanx.dev'].uuid == '{}'", inv.gpus[index].uuid),
            ),
        )
    };
    for (name, spec) in [whole("whole-4", 4), whole("whole-5", 5)] {
        claims.create(&PostParams::default(), &claim(&name, spec)).await.expect("claim accepted");
        pods.create(&PostParams::default(), &pod(&name, &name)).await.expect("pod accepted");
    }
    assert!(!scheduled(&pods, "whole-4").await, "GPU 4 is in use by its MIG devices");
    assert!(scheduled(&pods, "whole-5").await, "GPU 5's counters are its own");
    assert_eq!(device_set(&allocated(&claims, &pods, "whole-5").await), set(&[("mig-node", "gpu-5")]));
}

/// The sharing and MIG examples are accepted by the apiserver as written (their configs
/// are also valid `GpuConfig`s: `config::tests::the_examples_configs_are_valid`).
#[tokio::test]
async fn the_gpu_sharing_examples_are_accepted_by_the_apiserver() {
    let env = TestEnv::start(Options::default().controller_manager(false).kwok(false)).await.expect("control plane");
    let client = env.client();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/gpu-sharing");
    let mut applied = 0;
    for file in ["mps.yaml", "time-slicing-class.yaml", "mig.yaml"] {
        applied += phalanx_testenv::apply::apply_file(&client, &dir.join(file)).await.expect("example applies");
    }
    assert_eq!(applied, 5, "claim, two pods, class, template");
    let claim = Api::<ResourceClaim>::namespaced(client.clone(), "default").get("shared-gpu").await.unwrap();
    let config = claim.spec.unwrap().devices.unwrap().config.unwrap();
    assert_eq!(config[0].opaque.as_ref().unwrap().parameters.0["sharing"]["strategy"], "MPS");
    let class = Api::<k8s_openapi::api::resource::v1::DeviceClass>::all(client.clone())
        .get("timesliced.gpu.phalanx.dev")
        .await
        .unwrap();
    assert_eq!(class.spec.unwrap().config.unwrap()[0].opaque.as_ref().unwrap().parameters.0["kind"], "GpuConfig");
}
