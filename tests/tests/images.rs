//! The base images are reproducible: two builds from scratch give the same manifest
//! digests, and each archive names its image for `ctr images import`.

use std::path::Path;
use std::process::Command;

fn build_base(cache: &Path) -> std::path::PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/images/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("base")
        .env("PHALANX_IMAGES_CACHE", cache)
        .output()
        .expect("hack/images/build.sh runs");
    assert!(out.status.success(), "build failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::path::PathBuf::from(stdout.lines().last().expect("prints the directory").trim())
}

/// The archive's `index.json`.
fn index(archive: &Path) -> serde_json::Value {
    let out = Command::new("tar").arg("-xOf").arg(archive).arg("./index.json").output().expect("tar runs");
    assert!(out.status.success(), "{} has no index.json", archive.display());
    serde_json::from_slice(&out.stdout).expect("index.json is JSON")
}

#[test]
fn base_images_build_reproducibly_and_carry_their_names() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = build_base(a.path());
    let second = build_base(b.path());
    for (file, name) in
        [("pause.tar", "ghcr.io/phalanx-dev/pause:3.10"), ("testbox.tar", "ghcr.io/phalanx-dev/testbox:1.35.0")]
    {
        let (x, y) = (index(&first.join(file)), index(&second.join(file)));
        let digest = &x["manifests"][0]["digest"];
        assert!(digest.as_str().is_some_and(|d| d.starts_with("sha256:")), "{x}");
        assert_eq!(digest, &y["manifests"][0]["digest"], "{file}: two builds, two digests");
        assert_eq!(x["manifests"][0]["annotations"]["io.containerd.image.name"], name);
        let bytes_a = std::fs::read(first.join(file)).unwrap();
        let bytes_b = std::fs::read(second.join(file)).unwrap();
        assert!(bytes_a == bytes_b, "{file}: the archives differ byte for byte");
    }
}
