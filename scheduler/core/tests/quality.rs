//! Quality against brute force: on random instances of at most 6 nodes, the solver's
//! score must equal the exhaustive optimum on at least 95 % of them. The gap on the
//! rest is printed (`cargo test -p phalanx-scheduler-core --test quality -- --nocapture`).

mod common;

use std::collections::HashMap;

use common::*;
use k8s_openapi::api::resource::v1::{AllocationResult, DeviceAllocationResult, DeviceRequestAllocationResult};
use phalanx_gang::Gang;
use phalanx_scheduler_core::placement::{GangOutcome, Placer};
use phalanx_topology::names;

/// Free GPUs of a node grouped by NVLink island, as device names.
fn free_by_island(p: &Placer, node: usize, taken: &[String]) -> Vec<Vec<String>> {
    let topo = p.topology();
    let mut groups: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for &d in &topo.nodes()[node].devices {
        let dev = &topo.devices()[d];
        if dev.info.key.driver != names::GPU_DRIVER || !p.capacity().is_free(d) {
            continue;
        }
        let full = format!("{}/{}", topo.nodes()[node].name, dev.info.key.device);
        if taken.contains(&full) {
            continue;
        }
        match groups.iter_mut().find(|(i, _)| *i == dev.island) {
            Some((_, v)) => v.push(dev.info.key.device.clone()),
            None => groups.push((dev.island.clone(), vec![dev.info.key.device.clone()])),
        }
    }
    groups.into_iter().map(|(_, v)| v).collect()
}

/// Ways to take `k` devices from groups: per group how many, first ones first (devices
/// inside an island are interchangeable for every rule and for the score).
fn compositions(groups: &[Vec<String>], k: usize) -> Vec<Vec<String>> {
    fn rec(groups: &[Vec<String>], k: usize, acc: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if groups.is_empty() {
            if k == 0 {
                out.push(acc.clone());
            }
            return;
        }
        for take in 0..=k.min(groups[0].len()) {
            let n = acc.len();
            acc.extend(groups[0][..take].iter().cloned());
            rec(&groups[1..], k - take, acc, out);
            acc.truncate(n);
        }
    }
    let mut out = Vec::new();
    rec(groups, k, &mut Vec::new(), &mut out);
    out
}

/// The best score over every assignment of members to nodes and GPUs.
fn brute_force(p: &mut Placer, g: &Gang) -> Option<f64> {
    let n_nodes = p.topology().nodes().len();
    let claims: Vec<_> = (0..g.members.len()).map(|i| p.member_claims(g, i).unwrap()).collect();
    let mut best: Option<f64> = None;
    let mut choice: HashMap<usize, (String, Vec<AllocationResult>)> = HashMap::new();
    #[allow(clippy::too_many_arguments)]
    fn rec(
        p: &mut Placer,
        g: &Gang,
        claims: &[Vec<k8s_openapi::api::resource::v1::ResourceClaim>],
        i: usize,
        n_nodes: usize,
        taken: &mut Vec<String>,
        choice: &mut HashMap<usize, (String, Vec<AllocationResult>)>,
        best: &mut Option<f64>,
    ) {
        if i == g.members.len() {
            if let Ok(b) = p.evaluate(g, choice) {
                let s = b.total();
                if best.is_none_or(|x| s > x) {
                    *best = Some(s);
                    if std::env::var("PHALANX_DEBUG_BRUTE").is_ok() {
                        let mut v: Vec<_> = choice
                            .iter()
                            .map(|(i, (n, a))| {
                                (
                                    *i,
                                    n.clone(),
                                    a[0].devices
                                        .as_ref()
                                        .unwrap()
                                        .results
                                        .as_ref()
                                        .unwrap()
                                        .iter()
                                        .map(|r| r.device.clone())
                                        .collect::<Vec<_>>(),
                                )
                            })
                            .collect();
                        v.sort();
                        eprintln!("brute best {s:.4} {b:?} {v:?}");
                    }
                }
            }
            return;
        }
        let claim = &claims[i][0];
        let k = claim.spec.as_ref().unwrap().devices.as_ref().unwrap().requests.as_ref().unwrap()[0]
            .exactly
            .as_ref()
            .unwrap()
            .count
            .unwrap() as usize;
        for n in 0..n_nodes {
            let node = p.topology().nodes()[n].name.clone();
            let groups = free_by_island(p, n, taken);
            for devs in compositions(&groups, k) {
                let results = devs
                    .iter()
                    .map(|d| DeviceRequestAllocationResult {
                        request: "gpu".into(),
                        driver: names::GPU_DRIVER.into(),
                        pool: node.clone(),
                        device: d.clone(),
                        ..Default::default()
                    })
                    .collect();
                let alloc = AllocationResult {
                    devices: Some(DeviceAllocationResult { results: Some(results), config: None }),
                    node_selector: None,
                    allocation_timestamp: None,
                };
                let before = taken.len();
                taken.extend(devs.iter().map(|d| format!("{node}/{d}")));
                choice.insert(i, (node.clone(), vec![alloc]));
                rec(p, g, claims, i + 1, n_nodes, taken, choice, best);
                choice.remove(&i);
                taken.truncate(before);
            }
        }
    }
    rec(p, g, &claims, 0, n_nodes, &mut Vec::new(), &mut choice, &mut best);
    best
}

#[test]
fn solver_matches_brute_force_on_95_percent() {
    let n: u64 = std::env::var("PHALANX_BRUTE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let first: u64 = std::env::var("PHALANX_BRUTE_FIRST").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let (mut equal, mut both_pending, mut gaps) = (0, 0, Vec::new());
    for seed in first..first + n {
        let c = random_instance(seed, 6, 1);
        let gangs = c.gangs();
        let g = &gangs[0];
        let mut placer = c.placer();
        let optimum = brute_force(&mut placer, g);
        let got = match placer.place_gang(g) {
            GangOutcome::Placed(p) => {
                if std::env::var("PHALANX_DEBUG_BRUTE").is_ok() {
                    eprintln!(
                        "solver {:.4} {:?} {:?}",
                        p.score,
                        p.breakdown,
                        p.members.iter().map(|m| (&m.node, &m.devices)).collect::<Vec<_>>()
                    );
                }
                Some(p.score)
            }
            GangOutcome::Pending(_) => None,
        };
        match (got, optimum) {
            (None, None) => {
                both_pending += 1;
                equal += 1;
            }
            (Some(s), Some(o)) if (s - o).abs() < 1e-9 => equal += 1,
            (Some(s), Some(o)) => {
                assert!(s <= o + 1e-9, "seed {seed}: solver {s} beats brute force {o}: the brute force misses a case");
                gaps.push((seed, o - s));
            }
            (None, Some(o)) => gaps.push((seed, o)),
            (Some(s), None) => panic!("seed {seed}: solver placed (score {s}) what brute force finds infeasible"),
        }
    }
    let share = f64::from(equal) / n as f64;
    println!("brute force: {equal}/{n} optimal ({:.1} %), {both_pending} infeasible for both", share * 100.0);
    for (seed, gap) in &gaps {
        println!("  seed {seed}: gap {gap:.4}");
    }
    if !gaps.is_empty() {
        let mean = gaps.iter().map(|g| g.1).sum::<f64>() / gaps.len() as f64;
        println!("  mean gap on the rest {mean:.4}, max {:.4}", gaps.iter().map(|g| g.1).fold(0.0, f64::max));
    }
    assert!(share >= 0.95, "only {:.1} % optimal", share * 100.0);
}
