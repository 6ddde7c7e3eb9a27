//! The binary's behaviour where there is no GPU.

use std::process::Command;

#[test]
fn without_nvml_the_binary_says_so_and_exits_non_zero_unless_a_profile_is_chosen() {
    let bin = env!("CARGO_BIN_EXE_phalanx-dra-driver");
    let out = Command::new(bin).arg("discover").output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // A machine with the NVIDIA driver: discovery must have found GPUs.
        assert!(String::from_utf8_lossy(&out.stdout).contains("gpus:"));
    } else {
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("NVML is not available") && stderr.contains("--profile"), "{stderr}");
        // `run` fails the same way before it contacts any apiserver.
        let run =
            Command::new(bin).args(["run", "--node-name", "n"]).env("KUBECONFIG", "/nonexistent").output().unwrap();
        assert_eq!(run.status.code(), Some(3), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let profile =
        Command::new(bin).args(["discover", "--profile", "l40s-pcie-8", "--node-name", "x"]).output().unwrap();
    assert!(profile.status.success());
    let yaml = String::from_utf8_lossy(&profile.stdout);
    assert_eq!(yaml.matches("productName: NVIDIA L40S").count(), 8, "{yaml}");
    let unknown = Command::new(bin).args(["discover", "--profile", "nope"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    for name in ["hgx-h100-8", "hgx-h200-8", "hgx-b200-8", "gb200-nvl72", "l40s-pcie-8"] {
        assert!(stderr.contains(name), "{name} missing from: {stderr}");
    }
}
