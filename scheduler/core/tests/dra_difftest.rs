//! Differential test against upstream's allocator (k8s.io/dynamic-resource-allocation
//! v0.36.3, built from hack/difftest): same verdict on every scenario, same devices
//! wherever upstream's order is deterministic. `make difftest N=100000` runs more.

mod difftest;

#[test]
fn agrees_with_upstream_allocator() {
    let n = std::env::var("DIFFTEST_N").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let seed = std::env::var("DIFFTEST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let report = difftest::run(n, seed);
    println!("{report}");
    assert!(report.devices_compared > n as usize / 5, "too few scenarios compared devices:\n{report}");
    assert!(report.verdicts.get("feasible").copied().unwrap_or(0) > n as usize / 10, "{report}");
    assert!(report.verdicts.get("error").copied().unwrap_or(0) > 0, "{report}");
    if let Some((id, what, scenario, _)) = report.disagreements.first() {
        panic!("{report}\nfirst disagreement {id}: {what}\nscenario: {scenario}");
    }
}
