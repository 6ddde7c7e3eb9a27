//! `phalanx-scheduler simulate` on every shipped example snapshot, text and JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/snapshots")
}

fn simulate(file: &str, json: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phalanx-scheduler"));
    cmd.arg("simulate").arg(examples().join(file));
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run phalanx-scheduler");
    assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn gang<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["gangs"]
        .as_array()
        .expect("gangs")
        .iter()
        .find(|g| g["gang"]["name"] == name)
        .unwrap_or_else(|| panic!("no gang {name}"))
}

#[test]
fn every_example_snapshot_simulates() {
    let mut seen = 0;
    for entry in std::fs::read_dir(examples()).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_string();
        let text = simulate(&name, false);
        assert!(text.contains("gang(s) placed"), "{name}: {text}");
        let report: serde_json::Value = serde_json::from_str(&simulate(&name, true)).expect("valid JSON");
        for g in report["gangs"].as_array().expect("gangs") {
            match g["outcome"].as_str() {
                Some("placed") => {
                    let score = g["score"].as_f64().expect("score");
                    assert!((0.0..=1.0).contains(&score), "{name}: score {score}");
                }
                Some("pending") => {
                    assert!(!g["message"].as_str().unwrap_or("").is_empty(), "{name}: pending without reason")
                }
                other => panic!("{name}: outcome {other:?}"),
            }
        }
        seen += 1;
    }
    assert!(seen >= 3, "expected the three example snapshots, found {seen}");
}

#[test]
fn hgx_cluster_places_the_training_gang_in_one_rack_and_explains_the_huge_one() {
    let r: serde_json::Value = serde_json::from_str(&simulate("hgx-cluster.yaml", true)).unwrap();
    let train = gang(&r, "train");
    assert_eq!(train["outcome"], "placed");
    assert_eq!(train["domain"], "rack=r1");
    for m in train["members"].as_array().unwrap() {
        let devices = m["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 16, "8 GPUs and 8 NICs: {devices:?}");
    }
    let huge = gang(&r, "huge");
    assert_eq!(huge["outcome"], "pending");
    let domains = huge["domains"].as_array().unwrap();
    assert_eq!(domains.len(), 2, "one reason per rack");
    assert!(domains.iter().all(|d| d["reason"].as_str().unwrap().contains("needs 48 gpu.phalanx.dev devices")));
}

#[test]
fn nvl72_racks_keep_each_gang_in_one_nvlink_domain() {
    let r: serde_json::Value = serde_json::from_str(&simulate("nvl72-racks.yaml", true)).unwrap();
    for name in ["serve-0", "finetune"] {
        let g = gang(&r, name);
        assert_eq!(g["outcome"], "placed", "{name}");
        assert!(g["domain"].as_str().unwrap().starts_with("nvlink="), "{name}: {}", g["domain"]);
        let domains: std::collections::BTreeSet<&str> =
            g["members"].as_array().unwrap().iter().map(|m| m["nvlink_domain"].as_str().unwrap()).collect();
        assert_eq!(domains.len(), 1, "{name}");
    }
    assert_ne!(
        gang(&r, "serve-0")["domain"],
        gang(&r, "finetune")["domain"],
        "the second gang does not fit the first rack"
    );
    assert_eq!(gang(&r, "pretrain")["outcome"], "pending");
}

#[test]
fn mixed_cluster_places_prefill_and_decode_in_their_kv_domain() {
    let text = simulate("mixed-pd.yaml", false);
    assert!(text.contains("pd-group llama70b-0: MultiNodeNvLink 900 GB/s"), "{text}");
    assert!(text.contains("gang ml/broken: INVALID"), "{text}");
    assert!(text.contains("taint nvidia.com/gpu.product=L40S:NoSchedule"), "{text}");
    let r: serde_json::Value = serde_json::from_str(&simulate("mixed-pd.yaml", true)).unwrap();
    let llama = gang(&r, "llama70b");
    assert_eq!(llama["kv"][0]["in_kv_domain"], true);
    for m in llama["members"].as_array().unwrap() {
        assert!(m["node"].as_str().unwrap().starts_with("gb200-"), "the GB200 selector holds: {m}");
    }
}
