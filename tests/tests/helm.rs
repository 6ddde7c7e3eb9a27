//! The Helm charts: `helm lint`, `helm template` against golden files for the default
//! values and a few value sets, schema rejections with clear messages, and the plain
//! manifests in deploy/ rendered from the chart (one source of truth).
//!
//! Golden files: `tests/golden/helm/`; `PHALANX_UPDATE_GOLDEN=1` rewrites them.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn helm() -> PathBuf {
    phalanx_testenv::binaries::helm().expect("helm (hack/helm/build.sh)")
}

/// Runs helm; (success, stdout, stderr).
fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm()).args(args).current_dir(repo()).output().expect("helm runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn template(chart: &str, set: &[&str]) -> Result<String, String> {
    let mut args = vec!["template", "rel", chart, "--namespace", "phalanx-system"];
    for s in set {
        args.extend(["--set", s]);
    }
    let (ok, out, err) = run(&args);
    if ok { Ok(out) } else { Err(err) }
}

fn golden(name: &str, rendered: &str) {
    let path = repo().join("tests/golden/helm").join(format!("{name}.yaml"));
    if std::env::var_os("PHALANX_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: PHALANX_UPDATE_GOLDEN=1 writes it", path.display()));
    assert!(
        want == rendered,
        "{name}: `helm template` differs from {} (PHALANX_UPDATE_GOLDEN=1 to accept)",
        path.display()
    );
}

/// Every rendered document parses as YAML with apiVersion, kind and a name.
fn documents(rendered: &str) -> Vec<serde_yaml::Value> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("rendered YAML parses");
        if v.is_null() {
            continue;
        }
        assert!(v["apiVersion"].is_string() && v["kind"].is_string() && v["metadata"]["name"].is_string(), "{v:?}");
        docs.push(v);
    }
    docs
}

fn kinds(docs: &[serde_yaml::Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect()
}

#[test]
fn charts_lint_clean() {
    for chart in ["deploy/helm/phalanx", "deploy/helm/phalanx-pd"] {
        let (ok, out, err) = run(&["lint", "--strict", chart]);
        assert!(ok, "helm lint {chart}:\n{out}\n{err}");
    }
}

#[test]
fn the_phalanx_chart_renders_as_recorded() {
    let default = template("deploy/helm/phalanx", &[]).unwrap();
    golden("phalanx-default", &default);
    let docs = documents(&default);
    let k = kinds(&docs);
    for want in [
        "Deployment/phalanx-scheduler",
        "PodDisruptionBudget/phalanx-scheduler",
        "ConfigMap/phalanx-scheduler",
        "DaemonSet/phalanx-dra-driver",
        "ValidatingAdmissionPolicy/phalanx-dra-driver-resourceslices",
        "DeviceClass/gpu.phalanx.dev",
        "DeviceClass/nic.phalanx.dev",
        "Service/phalanx-scheduler-metrics",
    ] {
        assert!(k.contains(&want.to_owned()), "{want} missing from {k:?}");
    }
    assert!(!k.iter().any(|k| k.starts_with("ServiceMonitor/")), "off by default");
    let daemonset = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert_eq!(daemonset["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.present"], "true");

    let single = template("deploy/helm/phalanx", &["scheduler.replicas=1"]).unwrap();
    golden("phalanx-single-replica", &single);
    assert!(!kinds(&documents(&single)).contains(&"PodDisruptionBudget/phalanx-scheduler".to_owned()));

    let monitored = template("deploy/helm/phalanx", &["scheduler.metrics.serviceMonitor.enabled=true"]).unwrap();
    golden("phalanx-servicemonitor", &monitored);
    assert!(kinds(&documents(&monitored)).contains(&"ServiceMonitor/phalanx-scheduler".to_owned()));

    let fake = template("deploy/helm/phalanx", &["driver.profile=hgx-h100-8", "scheduler.enabled=false"]).unwrap();
    golden("phalanx-fake-hardware-driver-only", &fake);
    let docs = documents(&fake);
    assert!(!kinds(&docs).iter().any(|k| k.contains("phalanx-scheduler")), "{:?}", kinds(&docs));
    assert!(fake.contains("PHALANX_PROFILE") && fake.contains("hgx-h100-8"));

    // A changed configuration changes the pods' checksum, so they roll.
    let tuned = template("deploy/helm/phalanx", &["scheduler.config.commitConcurrency=8"]).unwrap();
    let checksum = |r: &str| r.lines().find(|l| l.contains("checksum/config")).map(str::to_owned);
    assert_ne!(checksum(&tuned), checksum(&default));
}

#[test]
fn the_pd_chart_renders_as_recorded() {
    let default = template("deploy/helm/phalanx-pd", &[]).unwrap();
    golden("phalanx-pd-default", &default);
    let big =
        template("deploy/helm/phalanx-pd", &["prefill.replicas=4", "decode.replicas=2", "decode.gpusPerWorker=4"])
            .unwrap();
    golden("phalanx-pd-4p2d", &big);
    let docs = documents(&big);
    let decode = docs.iter().find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "rel-decode").unwrap();
    let annotations = &decode["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["phalanx.dev/gang-min-members"], "6", "the whole set is one gang");
    assert_eq!(annotations["phalanx.dev/kv-domain"], "nvlink");
    let template = docs
        .iter()
        .find(|d| d["kind"] == "ResourceClaimTemplate" && d["metadata"]["name"] == "rel-decode-gpus")
        .unwrap();
    assert_eq!(template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"], 4);
    assert_eq!(template["spec"]["spec"]["devices"]["constraints"][0]["matchAttribute"], "gpu.phalanx.dev/nvlinkIsland");
}

#[test]
fn wrong_values_fail_with_a_clear_message() {
    for (chart, set, expect) in [
        ("deploy/helm/phalanx", "scheduler.replicas=0", "/scheduler/replicas"),
        ("deploy/helm/phalanx", "driver.profile=dgx-a100", "/driver/profile"),
        ("deploy/helm/phalanx", "scheduler.replica=3", "'replica'"),
        ("deploy/helm/phalanx", "image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("deploy/helm/phalanx", "driver.kubeletRoot=var/lib/kubelet", "/driver/kubeletRoot"),
        ("deploy/helm/phalanx-pd", "kvTransfer.domain=galaxy", "/kvTransfer/domain"),
        ("deploy/helm/phalanx-pd", "decode.gpusPerWorker=0", "/decode/gpusPerWorker"),
    ] {
        let err = template(chart, &[set]).expect_err(set);
        assert!(err.contains("values don't meet the specifications of the schema"), "{set}: {err}");
        assert!(err.contains(expect), "{set}: the message names {expect}: {err}");
    }
}

#[test]
fn the_plain_manifests_are_rendered_from_the_chart() {
    let out = Command::new("bash")
        .arg(repo().join("hack/manifests.sh"))
        .arg("--check")
        .env("PHALANX_HELM", helm())
        .output()
        .unwrap();
    assert!(out.status.success(), "deploy/ differs from the chart:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Both charts, rendered, are accepted by a real 1.37 apiserver (every kind served, every
/// field valid): the scheduler and driver chart with its namespace, then a P/D set in it.
#[tokio::test]
async fn the_rendered_charts_are_accepted_by_the_apiserver() {
    let env = phalanx_testenv::TestEnv::start(phalanx_testenv::Options::default().kwok(false)).await.unwrap();
    let client = env.client();
    let phalanx = template("deploy/helm/phalanx", &["namespace.create=true"]).unwrap();
    let created = phalanx_testenv::apply::apply_yaml(&client, &phalanx).await.expect("the apiserver takes the chart");
    assert_eq!(created, documents(&phalanx).len());
    let pd = template("deploy/helm/phalanx-pd", &["prefill.replicas=2", "decode.gpusPerWorker=2"]).unwrap();
    let created = phalanx_testenv::apply::apply_yaml(&client, &pd).await.expect("the apiserver takes the P/D chart");
    assert_eq!(created, documents(&pd).len());
}
