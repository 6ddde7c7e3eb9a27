//! The allocator never over-commits a GPU in MIG mode, on the slices phalanx-dra-driver
//! publishes for an HGX H100 with MIG mode on GPUs 4-7 (`fixtures/hgx-h100-8-mig-slices.yaml`,
//! checked against the driver by its test `the_scheduler_fixture_is_what_we_publish`):
//! a counter set per GPU in its own slice, the full GPU and every MIG profile placement
//! as devices consuming it, spread over two device slices.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{AllocationResult, DeviceClass, ResourceClaim, ResourceSlice};
use phalanx_scheduler_core::dra::{AllocatedState, Allocator, DraSnapshot, Features, Release, validate};
use serde_json::json;

const FIXTURE: &str = include_str!("fixtures/hgx-h100-8-mig-slices.yaml");

fn class(name: &str, kind: &str) -> DeviceClass {
    let expr = format!("device.driver == 'gpu.phalanx.dev' && device.attributes['gpu.phalanx.dev'].type == '{kind}'");
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": expr}}]}}))
        .unwrap()
}

fn snapshot(features: Features) -> DraSnapshot {
    let slices: Vec<ResourceSlice> = serde_yaml::from_str(FIXTURE).unwrap();
    assert_eq!(slices.iter().filter(|s| s.spec.shared_counters.is_some()).count(), 1, "one counter slice");
    DraSnapshot::new(&[class("gpu.phalanx.dev", "gpu"), class("mig.gpu.phalanx.dev", "mig")], &slices, features)
}

fn node() -> Node {
    serde_json::from_value(json!({"metadata": {"name": "node-a"}})).unwrap()
}

/// A claim for `count` MIG devices of `profile` on GPU `parent`.
fn mig(name: &str, profile: &str, parent: u32, count: i64) -> ResourceClaim {
    let expr = format!(
        "device.attributes['gpu.phalanx.dev'].migProfile == '{profile}' && device.attributes['gpu.phalanx.dev'].parentIndex == {parent}"
    );
    claim(name, "mig.gpu.phalanx.dev", &expr, count)
}

/// A claim for the full GPU `index`.
fn full(name: &str, index: u32) -> ResourceClaim {
    claim(
        name,
        "gpu.phalanx.dev",
        &format!("device.attributes['resource.kubernetes.io'].pciBusID == '{}'", bus(index)),
        1,
    )
}

fn bus(index: u32) -> &'static str {
    [
        "0000:1b:00.0",
        "0000:43:00.0",
        "0000:52:00.0",
        "0000:61:00.0",
        "0000:9d:00.0",
        "0000:c3:00.0",
        "0000:d1:00.0",
        "0000:df:00.0",
    ][index as usize]
}

fn claim(name: &str, class: &str, expr: &str, count: i64) -> ResourceClaim {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": class, "count": count,
            "selectors": [{"cel": {"expression": expr}}]}}]}}}))
    .unwrap()
}

fn devices(r: &AllocationResult) -> Vec<String> {
    r.devices.as_ref().unwrap().results.as_ref().unwrap().iter().map(|x| x.device.clone()).collect()
}

/// Allocates `claim` on top of `state`, checks the result against the API rules and
/// records it; `None` when it does not fit.
fn allocate(snap: &DraSnapshot, state: &mut AllocatedState, claim: &ResourceClaim) -> Option<Vec<String>> {
    let result = Allocator::new(snap).allocate(&node(), &[claim], state).unwrap()?;
    validate(snap, &[claim], &result, state).unwrap();
    state.add(&result[0]);
    Some(devices(&result[0]))
}

/// Both releases' rules: 1.36 treats a counter slice as relevant to every node, 1.37
/// applies its node selection.
fn releases() -> [Features; 2] {
    [Features::defaults(Release::V1_37), Features::defaults(Release::V1_36)]
}

#[test]
fn seven_1g_10gb_fit_on_a_gpu_and_an_eighth_does_not() {
    for features in releases() {
        let snap = snapshot(features);
        let mut state = AllocatedState::new();
        let mut got = Vec::new();
        for i in 0..7 {
            got.extend(allocate(&snap, &mut state, &mig(&format!("c{i}"), "1g.10gb", 4, 1)).expect("fits"));
        }
        got.sort();
        let want: Vec<String> = (0..7).map(|s| format!("gpu-4-mig-1g10gb-{s}")).collect();
        assert_eq!(got, want, "{:?}", features.release);
        assert_eq!(allocate(&snap, &mut state, &mig("c7", "1g.10gb", 4, 1)), None, "an eighth 1g.10gb");
        // The last memory slice is free, but nothing that fits it is left: a 1g.20gb
        // needs slices 6-7 and slice 6 is taken.
        assert_eq!(allocate(&snap, &mut state, &mig("c8", "1g.20gb", 4, 1)), None);
        let one = Allocator::new(&snap).allocate(&node(), &[&mig("all", "1g.10gb", 5, 8)], &state).unwrap();
        assert_eq!(one, None, "eight in one claim do not fit either");
        assert!(Allocator::new(&snap).allocate(&node(), &[&mig("all", "1g.10gb", 5, 7)], &state).unwrap().is_some());
    }
}

#[test]
fn the_full_gpu_and_its_mig_devices_exclude_each_other() {
    for features in releases() {
        let snap = snapshot(features);
        let mut state = AllocatedState::new();
        allocate(&snap, &mut state, &mig("small", "1g.10gb", 4, 1)).expect("a MIG device");
        assert_eq!(allocate(&snap, &mut state, &full("whole", 4)), None, "GPU 4 is partly in use");
        assert_eq!(allocate(&snap, &mut state, &full("whole", 5)), Some(vec!["gpu-5".to_owned()]));
        assert_eq!(allocate(&snap, &mut state, &mig("part", "7g.80gb", 5, 1)), None, "GPU 5 is taken whole");
        assert_eq!(allocate(&snap, &mut state, &mig("part", "1g.10gb", 5, 1)), None);
        // GPUs not in MIG mode carry no counters and allocate as ever.
        assert_eq!(allocate(&snap, &mut state, &full("plain", 0)), Some(vec!["gpu-0".to_owned()]));
    }
}

#[test]
fn placements_never_overlap() {
    for features in releases() {
        let snap = snapshot(features);
        let mut state = AllocatedState::new();
        let a = allocate(&snap, &mut state, &mig("a", "3g.40gb", 6, 1)).unwrap();
        let b = allocate(&snap, &mut state, &mig("b", "3g.40gb", 6, 1)).unwrap();
        let mut both = [a, b].concat();
        both.sort();
        assert_eq!(both, ["gpu-6-mig-3g40gb-0", "gpu-6-mig-3g40gb-4"]);
        for (name, profile) in [("c", "3g.40gb"), ("d", "4g.40gb"), ("e", "1g.10gb"), ("f", "2g.20gb")] {
            assert_eq!(allocate(&snap, &mut state, &mig(name, profile, 6, 1)), None, "{profile} after two 3g.40gb");
        }

        // A 4g.40gb (slices 0-3) leaves room for what fits slices 4-7 only.
        let mut state = AllocatedState::new();
        assert_eq!(allocate(&snap, &mut state, &mig("big", "4g.40gb", 7, 1)), Some(vec!["gpu-7-mig-4g40gb-0".into()]));
        assert_eq!(allocate(&snap, &mut state, &mig("x", "3g.40gb", 7, 1)), Some(vec!["gpu-7-mig-3g40gb-4".into()]));
        assert_eq!(allocate(&snap, &mut state, &mig("y", "1g.10gb", 7, 1)), None, "4g + 3g fill GPU 7");
    }
}

#[test]
fn counters_of_one_gpu_do_not_touch_another() {
    for features in releases() {
        let snap = snapshot(features);
        let mut state = AllocatedState::new();
        allocate(&snap, &mut state, &mig("fill4", "1g.10gb", 4, 7)).expect("GPU 4 full of 1g.10gb");
        allocate(&snap, &mut state, &mig("whole6", "7g.80gb", 6, 1)).expect("GPU 6 as one instance");
        let got = allocate(&snap, &mut state, &mig("fill5", "1g.20gb", 5, 4)).expect("GPU 5 untouched");
        assert_eq!(got.len(), 4);
        assert_eq!(allocate(&snap, &mut state, &full("seven", 7)), Some(vec!["gpu-7".to_owned()]));
        // Mixed sizes on one GPU, in one claim: 2g.20gb x3 and a 1g.20gb fill all 8 slices and 7 compute slices.
        let mut state = AllocatedState::new();
        let mixed: ResourceClaim = serde_json::from_value(json!({"metadata": {"name": "mixed", "namespace": "default", "uid": "uid-mixed"},
            "spec": {"devices": {"requests": [
                {"name": "a", "exactly": {"deviceClassName": "mig.gpu.phalanx.dev", "count": 3, "selectors": [{"cel": {"expression":
                    "device.attributes['gpu.phalanx.dev'].migProfile == '2g.20gb' && device.attributes['gpu.phalanx.dev'].parentIndex == 4"}}]}},
                {"name": "b", "exactly": {"deviceClassName": "mig.gpu.phalanx.dev", "count": 1, "selectors": [{"cel": {"expression":
                    "device.attributes['gpu.phalanx.dev'].migProfile == '1g.20gb' && device.attributes['gpu.phalanx.dev'].parentIndex == 4"}}]}}
            ]}}}))
        .unwrap();
        let mut got = allocate(&snap, &mut state, &mixed).expect("a valid MIG layout");
        got.sort();
        assert_eq!(got, ["gpu-4-mig-1g20gb-6", "gpu-4-mig-2g20gb-0", "gpu-4-mig-2g20gb-2", "gpu-4-mig-2g20gb-4"]);
    }
}
