//! hack/kind/cluster.yaml is a configuration kind accepts: read strictly into kind's own
//! v1alpha4 types (sigs.k8s.io/kind, built from the Go module proxy) by hack/kind/check.
//! Creating the cluster needs Docker, which this machine does not have; the chart values
//! hack/kind/up.sh installs are the ones the real-node helm test installs.

use std::path::Path;
use std::process::Command;

fn check(config: &Path) -> (bool, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/kind/check");
    let out = Command::new("go")
        .args(["run", "."])
        .arg(config)
        .current_dir(&dir)
        .env("GOTOOLCHAIN", "go1.27.3")
        .env("GOFLAGS", "-mod=mod")
        .output()
        .expect("go runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_kind_config_is_one_kind_accepts_and_a_typo_is_not() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/kind/cluster.yaml");
    let (ok, out) = check(&config);
    assert!(ok, "{out}");
    assert!(out.contains("3 node(s), 2 GPU worker(s)"), "{out}");
    assert!(out.contains("GenericWorkload:true"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("cluster.yaml");
    std::fs::write(&typo, std::fs::read_to_string(&config).unwrap().replace("featureGates:", "featureGate:")).unwrap();
    let (ok, out) = check(&typo);
    assert!(!ok && out.contains("unknown field \"featureGate\""), "{out}");
}
