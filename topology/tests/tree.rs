//! The level tree, capacity and interconnect on HGX, GB200 and L40S fixtures.

use phalanx_topology::interconnect::classify;
use phalanx_topology::testing::*;
use phalanx_topology::{ClusterTopology, FreeCapacity, Interconnect, LinkClass, TopologyConfig, names};

fn cluster() -> ClusterTopology {
    let mut nodes = Vec::new();
    let mut slices = Vec::new();
    for (n, rack) in [("hgx-a", "r1"), ("hgx-b", "r1"), ("hgx-c", "r2")] {
        nodes.push(node(
            n,
            &[("topology.kubernetes.io/zone", "z1"), ("phalanx.dev/block", "b1"), ("phalanx.dev/rack", rack)],
        ));
        slices.push(gpu_slice(n, &hgx_h100_gpus(n)));
        slices.push(nic_slice(n, &hgx_h100_gpus(n)));
    }
    for n in ["tray-0", "tray-1"] {
        nodes.push(node(
            n,
            &[("topology.kubernetes.io/zone", "z1"), ("phalanx.dev/block", "b2"), ("phalanx.dev/rack", "nvl72-a")],
        ));
        slices.push(gpu_slice(n, &gb200_gpus(n, "cluster-uuid.1")));
    }
    nodes.push(node("l40s", &[]));
    slices.push(gpu_slice("l40s", &l40s_gpus()));
    ClusterTopology::build(&TopologyConfig::default(), &nodes, &slices)
}

#[test]
fn domains_follow_labels_and_nvlink_attributes() {
    let t = cluster();
    let idx = |n: &str| t.node_index(n).unwrap();
    let (a, b, c, t0, t1, l) = (idx("hgx-a"), idx("hgx-b"), idx("hgx-c"), idx("tray-0"), idx("tray-1"), idx("l40s"));
    // rack level = 2, nvlink = 3, node = 4
    assert_eq!(t.common_level(&[a, b]), Some(2));
    assert_eq!(t.common_level(&[a, c]), Some(1));
    assert_eq!(t.common_level(&[t0, t1]), Some(3), "GB200 trays share the multi-node NVLink domain");
    assert_eq!(t.common_level(&[a, t0]), Some(0));
    assert_eq!(t.common_level(&[a]), Some(4));
    assert_eq!(t.common_level(&[a, l]), None, "a node without labels shares no domain");
    assert_eq!(t.domain_name(t.domain_of(t0, 3)), "nvlink=cluster-uuid.1");
    assert!(t.domains()[t.domain_of(l, 2)].synthetic);
    assert_eq!(t.domains()[t.domain_of(a, 3)].nodes, vec![a]);
    // the tree is consistent: every domain's nodes are in its parent
    for d in t.domains() {
        if let Some(p) = d.parent {
            assert!(d.nodes.iter().all(|n| t.domains()[p].nodes.contains(n)));
        }
    }
}

#[test]
fn free_capacity_tracks_take_and_give() {
    let t = cluster();
    let mut cap = FreeCapacity::new(&t, |k| k.pool == "hgx-a" && k.device == "gpu-0");
    let gpu = cap.driver_index(names::GPU_DRIVER).unwrap();
    let a = t.node_index("hgx-a").unwrap();
    let rack = t.domain_of(a, 2);
    assert_eq!(cap.node_free(a, gpu), 7);
    assert_eq!(cap.domain_free(rack, gpu), 15);
    assert_eq!(cap.domain_total(rack, gpu), 16);
    assert_eq!(cap.max_island_free(a), 7);
    let d1 = t.nodes()[a].devices.iter().copied().find(|&d| t.devices()[d].info.key.device == "gpu-1").unwrap();
    assert!(cap.take(&t, d1));
    assert!(!cap.take(&t, d1), "taking twice is refused");
    assert_eq!(cap.node_free(a, gpu), 6);
    assert_eq!(cap.domain_free(rack, gpu), 14);
    // best-fit order: fullest first
    let first = cap.nodes_with_free(gpu, 1).next().unwrap();
    assert_eq!(first, (4, t.node_index("tray-0").unwrap()));
    assert!(cap.give(&t, d1));
    assert_eq!(cap.domain_free(rack, gpu), 15);
}

#[test]
fn widest_path_agrees_with_attribute_classification() {
    let t = cluster();
    let all: Vec<_> = (0..t.nodes().len()).collect();
    let g = Interconnect::build(&t, &all);
    for a in 0..t.devices().len() {
        for b in 0..t.devices().len() {
            if a == b {
                continue;
            }
            let fast = classify(&t, a, b);
            let slow = g.link_between(a, b).unwrap();
            assert_eq!(fast.class, slow.class, "{} ↔ {}", t.devices()[a].info.key, t.devices()[b].info.key);
            assert_eq!(fast.gbps, slow.gbps);
        }
    }
}

#[test]
fn link_classes_match_the_hardware() {
    let t = cluster();
    let dev =
        |n: &str, d: &str| t.devices().iter().position(|e| e.info.key.pool == n && e.info.key.device == d).unwrap();
    assert_eq!(classify(&t, dev("hgx-a", "gpu-0"), dev("hgx-a", "gpu-7")).class, LinkClass::NvLink);
    assert_eq!(classify(&t, dev("hgx-a", "gpu-0"), dev("hgx-a", "nic-0")).class, LinkClass::PcieSwitch);
    assert_eq!(classify(&t, dev("hgx-a", "gpu-0"), dev("hgx-a", "nic-1")).class, LinkClass::PcieHostBridge);
    assert_eq!(classify(&t, dev("hgx-a", "gpu-0"), dev("hgx-a", "nic-7")).class, LinkClass::CrossSocket);
    assert_eq!(classify(&t, dev("hgx-a", "gpu-0"), dev("hgx-b", "gpu-0")).class, LinkClass::Network);
    let mn = classify(&t, dev("tray-0", "gpu-0"), dev("tray-1", "gpu-3"));
    assert_eq!((mn.class, mn.gbps), (LinkClass::MultiNodeNvLink, 900.0));
    assert_eq!(classify(&t, dev("l40s", "gpu-0"), dev("l40s", "gpu-1")).class, LinkClass::PcieHostBridge);
    assert_eq!(classify(&t, dev("l40s", "gpu-0"), dev("l40s", "gpu-5")).class, LinkClass::CrossSocket);
}
