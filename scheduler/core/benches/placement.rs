//! Placement benchmarks on a 5,000-node HGX snapshot (8 GPUs per node, 16 nodes per
//! rack, 16 racks per block, seeded random occupancy):
//! * one 64-pod × 8-GPU gang (target ≤ 50 ms, goal 20 ms);
//! * 1,000 single-GPU pods placed one after another (target ≥ 5,000 decisions/s).
#![allow(missing_docs)] // criterion_group! generates undocumented items

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use criterion::{Criterion, criterion_group, criterion_main};
use phalanx_gang::Gang;
use phalanx_scheduler_core::placement::Placer;
use phalanx_topology::testing::hgx_h100_gpus;
use rand::{Rng, SeedableRng};

const NODES: usize = 5_000;

/// The cluster; `busy` = share of nodes with some GPUs already allocated.
fn cluster(busy: f64) -> Cluster {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut c = Cluster::new();
    for i in 0..NODES {
        let name = format!("hgx-{i:05}");
        let (rack, block, zone) = (format!("r{}", i / 16), format!("b{}", i / 256), format!("z{}", i / 2_500));
        let labels = [
            ("topology.kubernetes.io/zone", zone.as_str()),
            ("phalanx.dev/block", block.as_str()),
            ("phalanx.dev/rack", rack.as_str()),
        ];
        c.node(&name, &labels, &hgx_h100_gpus(&name), false);
        if rng.random_bool(busy) {
            let n = rng.random_range(1..8);
            let devs: Vec<String> = (0..n).map(|g| format!("gpu-{g}")).collect();
            let d: Vec<&str> = devs.iter().map(String::as_str).collect();
            c.allocated(&name, &d);
        }
    }
    c
}

fn gang_bench(c: &mut Criterion) {
    let mut cl = cluster(0.3);
    for k in 0..64 {
        cl.pod(&format!("train-{k:02}"), 8, 0, &[("phalanx.dev/gang", "train")], &[]);
    }
    let gangs = cl.gangs();
    let gang: &Gang = &gangs[0];
    assert_eq!(gang.members.len(), 64);
    let mut group = c.benchmark_group("gang");
    group.sample_size(20).measurement_time(Duration::from_secs(20));
    group.bench_function("64x8-gpu gang on 5000 nodes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut placer: Option<Placer> = None;
            for i in 0..iters {
                // A fresh cluster every 20 gangs (not timed), so there is always room.
                if i % 20 == 0 {
                    placer = Some(cl.placer());
                }
                let p = placer.as_mut().expect("placer");
                let t = Instant::now();
                let out = p.place_gang(gang);
                total += t.elapsed();
                assert!(out.plan().is_some(), "the gang fits");
            }
            total
        })
    });
    group.finish();
}

fn singles_bench(c: &mut Criterion) {
    let mut cl = cluster(0.3);
    for k in 0..1_000 {
        cl.pod(&format!("nb-{k:04}"), 1, 0, &[], &[]);
    }
    let gangs = cl.gangs();
    assert_eq!(gangs.len(), 1_000);
    let mut group = c.benchmark_group("singles");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(criterion::Throughput::Elements(1_000));
    group.bench_function("1000 single-gpu pods on 5000 nodes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut p = cl.placer();
                let t = Instant::now();
                for g in &gangs {
                    assert!(p.place_gang(g).plan().is_some());
                }
                total += t.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, gang_bench, singles_bench);
criterion_main!(benches);
