//! Differential test against upstream's allocator of each supported Kubernetes
//! release (k8s.io/dynamic-resource-allocation v0.37.2 and v0.36.3, built from
//! hack/difftest/<release>): same verdict on every scenario, same devices and result
//! fields wherever upstream's order is deterministic. `make difftest N=100000 [K8S=1.36]`
//! runs more.

mod difftest;

use phalanx_scheduler_core::dra::Release;

fn agrees(release: Release, default_n: u64) {
    let n = std::env::var("DIFFTEST_N").ok().and_then(|v| v.parse().ok()).unwrap_or(default_n);
    let seed = std::env::var("DIFFTEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let report = difftest::run(release, n, seed);
    println!("{report}");
    assert!(report.devices_compared > n as usize / 6, "too few scenarios compared devices:\n{report}");
    assert!(report.verdicts.get("feasible").copied().unwrap_or(0) > n as usize / 10, "{report}");
    assert!(report.verdicts.get("error").copied().unwrap_or(0) > 0, "{report}");
    if let Some((id, what, scenario, _)) = report.disagreements.first() {
        panic!("{report}\nfirst disagreement {id}: {what}\nscenario: {scenario}");
    }
}

#[test]
fn agrees_with_upstream_allocator_1_37() {
    agrees(Release::V1_37, 3000);
}

#[test]
fn agrees_with_upstream_allocator_1_36() {
    agrees(Release::V1_36, 1000);
}
