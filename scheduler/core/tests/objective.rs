//! One table per rule of the objective (DESIGN.md "Best means, in order") and per
//! feasibility rule.

mod common;

use common::*;
use phalanx_scheduler_core::placement::{GangOutcome, Plan};
use phalanx_topology::{LinkClass, names};

fn plan(o: &GangOutcome) -> &Plan {
    match o {
        GangOutcome::Placed(p) => p,
        GangOutcome::Pending(p) => panic!("expected a placement, got pending: {} {:?}", p.message, p.domains),
    }
}

fn nodes(p: &Plan) -> Vec<&str> {
    p.members.iter().map(|m| m.node.as_str()).collect()
}

/// Two racks of two 8-GPU nodes in one block.
fn two_racks() -> Cluster {
    let mut c = Cluster::new();
    for (n, r) in [("a0", "ra"), ("a1", "ra"), ("b0", "rb"), ("b1", "rb")] {
        let l = rack("z", "b", r);
        c.node(n, &labels(&l), &gpus8(n, 1, None), false);
    }
    c
}

#[test]
fn rule_required_level_holds() {
    struct Case {
        required: &'static str,
        free_a1: bool,
        placed: bool,
        span: &'static str,
    }
    let cases = [
        // 3×8 GPUs: a rack has 16, the block 32.
        Case { required: "rack", free_a1: true, placed: false, span: "" },
        Case { required: "block", free_a1: true, placed: true, span: "block=b" },
        Case { required: "phalanx.dev/block", free_a1: true, placed: true, span: "block=b" },
        Case { required: "zone", free_a1: false, placed: false, span: "" },
    ];
    for (i, c) in cases.iter().enumerate() {
        let mut cl = two_racks();
        if !c.free_a1 {
            cl.allocated("a1", &["gpu-0"]).allocated("b1", &["gpu-0"]);
        }
        for k in 0..3 {
            cl.pod(
                &format!("w{k}"),
                8,
                0,
                &[("phalanx.dev/gang", "g")],
                &[("phalanx.dev/topology-required", c.required)],
            );
        }
        let (_, out) = cl.place(&["g"]);
        match (&out[0], c.placed) {
            (GangOutcome::Placed(p), true) => assert_eq!(p.domain, c.span, "case {i}"),
            (GangOutcome::Pending(p), false) => {
                assert!(!p.domains.is_empty(), "case {i}: reasons per domain");
                assert!(p.domains.iter().all(|d| d.reason.contains("gpu.phalanx.dev")), "case {i}: {:?}", p.domains);
            }
            (o, _) => panic!("case {i}: unexpected {o:?}"),
        }
    }
}

#[test]
fn rule_narrowest_domain_that_fits() {
    // gang size → the narrowest level its members share
    for (size, gpus_each, want) in [(2, 4, "node"), (3, 4, "rack"), (4, 8, "block")] {
        let mut c = two_racks();
        for k in 0..size {
            c.pod(&format!("w{k}"), gpus_each, 0, &[("phalanx.dev/gang", "g")], &[]);
        }
        let (_, out) = c.place(&["g"]);
        let p = plan(&out[0]);
        assert!(p.domain.starts_with(want), "{size}×{gpus_each}: {}", p.domain);
        assert_eq!(p.breakdown.domain, 1.0, "the narrowest span the cluster allows scores 1");
    }
}

#[test]
fn rule_best_fit_among_domains_of_one_level() {
    // Rack ra has 12 free (a1 half used), rb 16: a 3×4 gang goes to ra, the fullest
    // rack that fits; when ra cannot hold it, to rb.
    for (busy, want) in [
        (&["gpu-0", "gpu-1", "gpu-2", "gpu-3"][..], "rack=ra"),
        (&["gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-4"][..], "rack=rb"),
    ] {
        let mut c = two_racks();
        c.allocated("a1", busy);
        for k in 0..3 {
            c.pod(&format!("w{k}"), 4, 0, &[("phalanx.dev/gang", "g")], &[("phalanx.dev/topology-required", "rack")]);
        }
        let (_, out) = c.place(&["g"]);
        assert_eq!(plan(&out[0]).domain, want, "busy {busy:?}");
    }
}

#[test]
fn rule_one_claim_in_one_nvlink_island() {
    // 8 GPUs in 2 islands of 4; gpu-0..2 busy. First-fit would take gpu-3 (island 0) and
    // gpu-4..6; the solver keeps the claim inside island 1.
    let mut c = Cluster::new();
    c.node("n", &[], &gpus8("n", 2, None), false);
    c.allocated("n", &["gpu-0", "gpu-1", "gpu-2"]);
    c.pod("p", 4, 0, &[], &[]);
    let (_, out) = c.place(&["p"]);
    let p = plan(&out[0]);
    assert_eq!(p.members[0].devices.len(), 4);
    for d in &p.members[0].devices {
        let idx: usize = d.rsplit('-').next().unwrap().parse().unwrap();
        assert!(idx >= 4, "{d} is outside island 1");
    }
    assert_eq!(p.breakdown.locality, 1.0);
    // When no island can hold it, it is still placed, split, with locality 0.
    let mut c = Cluster::new();
    c.node("n", &[], &gpus8("n", 2, None), false);
    c.allocated("n", &["gpu-0", "gpu-1", "gpu-4", "gpu-5"]);
    c.pod("p", 3, 0, &[], &[]);
    let (_, out) = c.place(&["p"]);
    assert_eq!(plan(&out[0]).breakdown.locality, 0.0);
}

#[test]
fn rule_gpu_and_nic_on_one_pcie_root() {
    // gpu-0 busy: first-fit would pair gpu-1 with nic-0 (another root).
    let mut c = Cluster::new();
    c.node("n", &[], &gpus8("n", 1, None), true);
    c.allocated("n", &["gpu-0"]);
    c.pod("p", 1, 1, &[], &[]);
    let (placer, out) = c.place(&["p"]);
    let p = plan(&out[0]);
    let topo = placer.topology();
    let roots: Vec<_> = p.members[0]
        .devices
        .iter()
        .map(|d| {
            let mut it = d.splitn(3, '/');
            let key = phalanx_topology::DeviceKey {
                driver: it.next().unwrap().into(),
                pool: it.next().unwrap().into(),
                device: it.next().unwrap().into(),
            };
            topo.devices()[topo.device_index(&key).unwrap()].pcie_root.clone()
        })
        .collect();
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0], roots[1], "{:?}", p.members[0].devices);
    assert_eq!(p.breakdown.locality, 1.0);
}

#[test]
fn rule_prefill_and_decode_share_their_kv_domain() {
    // Two multi-node NVLink domains: x (x-0, x-1) and a (a-0, a-1). Prefill is pinned to
    // x-1; decode would go to a-0 by name order unless its KV domain pulls it to x-0.
    for (kv, policy, want) in
        [(Some("nvlink"), "required", "x-0"), (Some("nvlink"), "preferred", "x-0"), (None, "preferred", "a-0")]
    {
        let mut c = Cluster::new();
        for (n, d) in [("x-0", "dom-x"), ("x-1", "dom-x"), ("a-0", "dom-a"), ("a-1", "dom-a")] {
            c.node(n, &[], &gpus(n, 4, 1, Some(d)), false);
        }
        let mut ann = vec![("phalanx.dev/kv-domain-policy", policy)];
        if let Some(k) = kv {
            ann.push(("phalanx.dev/kv-domain", k));
        }
        let p = c.pod("prefill", 4, 0, &[("phalanx.dev/role", "prefill"), ("phalanx.dev/pd-group", "g")], &ann);
        p.spec.as_mut().unwrap().node_selector =
            Some([("kubernetes.io/hostname".to_string(), "x-1".to_string())].into());
        c.pod("decode", 4, 0, &[("phalanx.dev/role", "decode"), ("phalanx.dev/pd-group", "g")], &ann);
        let (_, out) = c.place(&["prefill", "decode"]);
        assert_eq!(nodes(plan(&out[0])), ["x-1"]);
        assert_eq!(nodes(plan(&out[1])), [want], "kv {kv:?} {policy}");
    }
}

#[test]
fn rule_kv_transfer_cost_is_estimated_from_the_shared_link() {
    let kv = [("phalanx.dev/kv-bytes-per-token", "327680"), ("phalanx.dev/typical-isl", "8192")];
    // (gpus each, cluster) → link
    for (gpus_each, multi_node_nvlink, want) in
        [(4, false, LinkClass::NvLink), (8, false, LinkClass::Network), (4, true, LinkClass::MultiNodeNvLink)]
    {
        let mut c = Cluster::new();
        for n in ["n0", "n1"] {
            let shape = if multi_node_nvlink { gpus(n, 4, 1, Some("nvl72")) } else { gpus8(n, 1, None) };
            c.node(n, &[], &shape, false);
        }
        for r in ["prefill", "decode"] {
            c.pod(
                r,
                gpus_each,
                0,
                &[("phalanx.dev/gang", "s"), ("phalanx.dev/role", r), ("phalanx.dev/pd-group", "g")],
                &kv,
            );
        }
        let (_, out) = c.place(&["s"]);
        let k = &plan(&out[0]).kv[0];
        assert_eq!(k.link, want);
        let secs = k.seconds_per_request.unwrap();
        assert!((secs - 327680.0 * 8192.0 / (k.gbps * 1e9)).abs() < 1e-12);
    }
}

#[test]
fn rule_least_fragmentation_best_fit_node() {
    let mut c = Cluster::new();
    for n in ["n0", "n1", "n2"] {
        c.node(n, &[], &gpus8(n, 1, None), false);
    }
    c.allocated("n1", &["gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-4"]); // 3 free
    c.allocated("n2", &["gpu-0", "gpu-1", "gpu-2"]); // 5 free
    for (gpus_each, want) in [(3, "n1"), (4, "n2"), (6, "n0")] {
        c.snap.pods.clear();
        c.pod("p", gpus_each, 0, &[], &[]);
        let (_, out) = c.place(&["p"]);
        assert_eq!(nodes(plan(&out[0])), [want], "{gpus_each} GPUs");
    }
}

#[test]
fn feasibility_node_rules() {
    struct Case {
        name: &'static str,
        setup: fn(&mut Cluster),
        want: Option<&'static str>,
        reason: &'static str,
    }
    let cases = [
        Case {
            name: "taint repels",
            setup: |c| {
                c.taint("n0", "gpu");
            },
            want: Some("n1"),
            reason: "",
        },
        Case {
            name: "toleration admits",
            setup: |c| {
                c.taint("n1", "gpu");
                let p = c.snap.pods.last_mut().unwrap();
                tolerate(p, "gpu");
            },
            want: Some("n0"),
            reason: "",
        },
        Case {
            name: "nodeSelector",
            setup: |c| {
                c.snap.pods.last_mut().unwrap().spec.as_mut().unwrap().node_selector =
                    Some([("kubernetes.io/hostname".to_string(), "n1".to_string())].into());
            },
            want: Some("n1"),
            reason: "",
        },
        Case {
            name: "cpu capacity",
            setup: |c| {
                let p = c.snap.pods.last_mut().unwrap();
                p.spec.as_mut().unwrap().containers[0].resources.as_mut().unwrap().requests = Some(
                    [("cpu".to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("500".into()))].into(),
                );
            },
            want: None,
            reason: "insufficient cpu",
        },
        Case {
            name: "pod count",
            setup: |c| {
                for n in &mut c.snap.nodes {
                    let a = n.status.as_mut().unwrap().allocatable.as_mut().unwrap();
                    a.insert("pods".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("0".into()));
                }
            },
            want: None,
            reason: "too many pods",
        },
        Case {
            name: "memory",
            setup: |c| {
                let p = c.snap.pods.last_mut().unwrap();
                p.spec.as_mut().unwrap().containers[0].resources.as_mut().unwrap().requests = Some(
                    [("memory".to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("3Ti".into()))]
                        .into(),
                );
            },
            want: None,
            reason: "insufficient memory",
        },
        Case {
            name: "both tainted",
            setup: |c| {
                c.taint("n0", "gpu").taint("n1", "gpu");
            },
            want: None,
            reason: "taint gpu:NoSchedule",
        },
    ];
    for case in cases {
        let mut c = Cluster::new();
        c.node("n0", &[], &gpus8("n0", 1, None), false).node("n1", &[], &gpus8("n1", 1, None), false);
        c.allocated("n0", &["gpu-0"]); // n0 is the best fit by default
        c.pod("p", 1, 0, &[], &[]);
        (case.setup)(&mut c);
        let (_, out) = c.place(&["p"]);
        match (case.want, &out[0]) {
            (Some(n), GangOutcome::Placed(p)) => assert_eq!(nodes(p), [n], "{}", case.name),
            (None, GangOutcome::Pending(p)) => {
                let all = format!("{} {:?}", p.message, p.domains);
                assert!(all.contains(case.reason), "{}: {all}", case.name);
            }
            (_, o) => panic!("{}: {o:?}", case.name),
        }
    }
}

#[test]
fn a_gang_that_does_not_fit_leaves_nothing_behind() {
    let mut c = two_racks();
    c.pod("single", 2, 0, &[], &[]);
    for k in 0..5 {
        c.pod(&format!("w{k}"), 8, 0, &[("phalanx.dev/gang", "big")], &[]);
    }
    let gangs = c.gangs();
    let mut p = c.placer();
    let gpu = p.capacity().driver_index(names::GPU_DRIVER).unwrap();
    let free = |p: &phalanx_scheduler_core::placement::Placer| {
        (0..p.topology().nodes().len()).map(|n| p.capacity().node_free(n, gpu)).collect::<Vec<_>>()
    };
    let before = free(&p);
    let big = gangs.iter().find(|g| g.key.name == "big").unwrap();
    match p.place_gang(big) {
        GangOutcome::Pending(pd) => {
            assert_eq!(pd.pods.len(), 5);
            assert!(pd.message.contains("cluster"), "{}", pd.message);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(free(&p), before, "a pending gang holds no devices");
    // and the next gang still sees everything free
    let single = gangs.iter().find(|g| g.key.name == "single").unwrap();
    assert!(p.place_gang(single).plan().is_some());
}

#[test]
fn missing_members_wait_with_a_clear_message() {
    let mut c = two_racks();
    c.pod("w0", 1, 0, &[("phalanx.dev/gang", "g")], &[("phalanx.dev/gang-min-members", "3")]);
    let (_, out) = c.place(&["g"]);
    match &out[0] {
        GangOutcome::Pending(p) => assert!(p.message.contains("waiting for 2 more pod(s)"), "{}", p.message),
        o => panic!("{o:?}"),
    }
}

#[test]
fn unknown_topology_level_is_reported() {
    let mut c = two_racks();
    c.pod("w0", 1, 0, &[("phalanx.dev/gang", "g")], &[("phalanx.dev/topology-required", "galaxy")]);
    let (_, out) = c.place(&["g"]);
    match &out[0] {
        GangOutcome::Pending(p) => assert!(p.message.contains("unknown topology level \"galaxy\""), "{}", p.message),
        o => panic!("{o:?}"),
    }
}

#[test]
fn members_beyond_the_minimum_are_placed_when_they_fit() {
    // 3 pods, min 2, room for 2 × 8 GPUs: the gang starts with 2; the third waits.
    let mut c = Cluster::new();
    c.node("n0", &[], &gpus8("n0", 1, None), false).node("n1", &[], &gpus8("n1", 1, None), false);
    for k in 0..3 {
        c.pod(&format!("w{k}"), 8, 0, &[("phalanx.dev/gang", "g")], &[("phalanx.dev/gang-min-members", "2")]);
    }
    let (_, out) = c.place(&["g"]);
    let p = plan(&out[0]);
    assert_eq!(p.members.len(), 2);
    assert_eq!(p.unplaced_optional.len(), 1);
    // min 3: nothing at all
    let mut c = Cluster::new();
    c.node("n0", &[], &gpus8("n0", 1, None), false).node("n1", &[], &gpus8("n1", 1, None), false);
    for k in 0..3 {
        c.pod(&format!("w{k}"), 8, 0, &[("phalanx.dev/gang", "g")], &[("phalanx.dev/gang-min-members", "3")]);
    }
    let (_, out) = c.place(&["g"]);
    assert!(matches!(out[0], GangOutcome::Pending(_)));
}

#[test]
fn a_role_minimum_is_met_before_other_members() {
    // Room for one 8-GPU pod. Role "leader" needs 1; the workers are optional.
    let mut c = Cluster::new();
    c.node("n0", &[], &gpus8("n0", 1, None), false);
    let ann = [("phalanx.dev/gang-min-members", "1"), ("phalanx.dev/gang-min-leader", "1")];
    c.pod("a-worker", 8, 0, &[("phalanx.dev/gang", "g"), ("phalanx.dev/role", "worker")], &ann);
    c.pod("z-leader", 8, 0, &[("phalanx.dev/gang", "g"), ("phalanx.dev/role", "leader")], &ann);
    let (_, out) = c.place(&["g"]);
    let p = plan(&out[0]);
    assert_eq!(p.members.iter().map(|m| m.pod.name.as_str()).collect::<Vec<_>>(), ["z-leader"]);
}

#[test]
fn a_role_level_requirement_holds_inside_a_wider_gang() {
    // Grove-style: the gang may span racks, the "tp" role must share a node.
    let mut c = two_racks();
    c.allocated("a0", &["gpu-0", "gpu-1", "gpu-2", "gpu-3"]);
    let pods: Vec<String> = (0..2).map(|k| format!("tp-{k}")).collect();
    for p in &pods {
        c.pod(p, 4, 0, &[], &[]);
    }
    c.pod("other", 8, 0, &[], &[]);
    let refs = |names: &[&str]| {
        names
            .iter()
            .map(|n| phalanx_gang::crd::NamespacedName { namespace: "ml".into(), name: n.to_string() })
            .collect()
    };
    c.snap.pod_gangs.push(phalanx_gang::crd::PodGang {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("pg".into()),
            namespace: Some("ml".into()),
            ..Default::default()
        },
        spec: phalanx_gang::crd::PodGangSpec {
            podgroups: vec![
                phalanx_gang::crd::GrovePodGroup {
                    name: "tp".into(),
                    pod_references: refs(&["tp-0", "tp-1"]),
                    min_replicas: 2,
                    topology_constraint: Some(phalanx_gang::crd::GroveTopologyConstraint {
                        pack_constraint: Some(phalanx_gang::crd::GrovePackConstraint {
                            required: Some("kubernetes.io/hostname".into()),
                            preferred: None,
                        }),
                    }),
                },
                phalanx_gang::crd::GrovePodGroup {
                    name: "other".into(),
                    pod_references: refs(&["other"]),
                    min_replicas: 1,
                    topology_constraint: None,
                },
            ],
            ..Default::default()
        },
    });
    let (_, out) = c.place(&["pg"]);
    let p = plan(&out[0]);
    let node_of = |n: &str| p.members.iter().find(|m| m.pod.name == n).unwrap().node.clone();
    assert_eq!(node_of("tp-0"), node_of("tp-1"), "the tp role shares a node");
}

#[test]
fn a_snapshot_with_a_node_twice_is_refused() {
    let mut c = two_racks();
    let dup = c.snap.nodes[0].clone();
    c.snap.nodes.push(dup);
    let err = phalanx_scheduler_core::placement::Placer::new(
        &c.snap,
        &phalanx_topology::TopologyConfig::default(),
        Default::default(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("node \"a0\" appears twice"), "{err}");
}

#[test]
fn best_fit_search_reaches_past_the_first_chunk_of_nodes() {
    // 150 nodes; the fullest 149 are excluded by the pod's nodeSelector, so the search
    // must go past the first chunks of the best-fit index.
    let mut c = Cluster::new();
    for i in 0..150 {
        let n = format!("n{i:03}");
        c.node(&n, &[], &gpus(&n, 4, 1, None), false);
        if i != 149 {
            c.allocated(&n, &["gpu-0", "gpu-1"]);
        }
    }
    let p = c.pod("p", 1, 0, &[], &[]);
    p.spec.as_mut().unwrap().node_selector = Some([("kubernetes.io/hostname".to_string(), "n149".to_string())].into());
    let (_, out) = c.place(&["p"]);
    assert_eq!(nodes(plan(&out[0])), ["n149"]);
}

#[test]
fn fragmentation_is_caught_without_trying_every_permutation() {
    // 12 pods × 5 GPUs on 11 nodes of 8: 88 free GPUs ≥ 60 needed, but each node holds
    // one pod only. The gang must be refused quickly, not after 11! attempts.
    let mut c = Cluster::new();
    for i in 0..11 {
        let n = format!("n{i:02}");
        c.node(&n, &[], &gpus8(&n, 1, None), false);
    }
    for k in 0..12 {
        c.pod(&format!("w{k:02}"), 5, 0, &[("phalanx.dev/gang", "g")], &[]);
    }
    let t = std::time::Instant::now();
    let (_, out) = c.place(&["g"]);
    assert!(matches!(out[0], GangOutcome::Pending(_)), "{:?}", out[0]);
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "took {:?}", t.elapsed());
}
