//! Seeded scenario generator: small clusters around one node that exercise every
//! allocator feature, as JSON accepted by both the Go runner and our types.
//!
//! Scenarios for 1.37 also use what only its API has (compatibility groups, derived
//! attributes, skipNodeOperations), the DRAFractionalCapacityRange gate, and values
//! that 1.37's capacity arithmetic rejects (beyond int64, not whole milli-units,
//! negative); 1.36 scenarios leave those out, as a 1.36 API server would drop the
//! fields and 1.36's arithmetic on such values is not worth copying.

use phalanx_scheduler_core::dra::{Features, Release};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const GPU: &str = "gpu.example.com";
const NIC: &str = "nic.example.com";

/// A device that earlier claims may hold.
struct Dev {
    driver: &'static str,
    pool: String,
    name: String,
    /// allowMultipleAllocations: held as shares.
    multi: bool,
}

fn pick<'a, T>(r: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[r.random_range(0..xs.len())]
}

fn pick_str(r: &mut StdRng, xs: &[&'static str]) -> &'static str {
    xs[r.random_range(0..xs.len())]
}

fn chance(r: &mut StdRng, p: f64) -> bool {
    r.random_bool(p)
}

/// Scenario `index` of the newest release's run seeded with `seed`.
pub fn scenario(seed: u64, index: u64) -> Value {
    scenario_for(Release::default(), seed, index)
}

/// What a scenario may use beyond what every release has.
#[derive(Clone, Copy)]
struct Gen {
    /// 1.37: its API fields and the values its capacity arithmetic rejects.
    v1_37: bool,
}

/// Scenario `index` of the run for `release` seeded with `seed`.
pub fn scenario_for(release: Release, seed: u64, index: u64) -> Value {
    let mut r = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index);
    let r = &mut r;
    let g = Gen { v1_37: release >= Release::V1_37 };
    let features = if chance(r, 0.75) {
        Features::defaults(release)
    } else {
        let consumable_capacity = chance(r, 0.5);
        Features {
            release,
            admin_access: chance(r, 0.7),
            consumable_capacity,
            device_binding_and_status: chance(r, 0.5),
            device_taints: chance(r, 0.7),
            // The gate depends on DRAConsumableCapacity.
            fractional_capacity_range: g.v1_37 && consumable_capacity && chance(r, 0.7),
            list_type_attributes: false,
            partitionable_devices: chance(r, 0.7),
            prioritized_list: chance(r, 0.8),
        }
    };
    let zone = *pick(r, &["z1", "z2"]);
    let node = json!({"metadata": {"name": "n1", "labels": {"zone": zone, "rack": "r1", "gpus": "8"}}});
    let mut slices = Vec::new();
    let mut devices: Vec<Dev> = Vec::new();
    gpu_pool(r, g, "n1", &mut slices, &mut devices);
    if chance(r, 0.3) {
        gpu_pool(r, g, "n2", &mut slices, &mut Vec::new());
    }
    if chance(r, 0.5) {
        nic_pool(r, &mut slices, &mut devices);
    }
    if chance(r, 0.3) {
        network_pool(r, &mut slices, &mut devices);
    }
    let classes = classes(r);
    let allocated = allocated(r, &devices);
    let n_claims = *pick(r, &[1, 1, 1, 1, 2, 2, 2, 3]);
    let claims: Vec<Value> = (0..n_claims).map(|i| claim(r, g, i)).collect();
    json!({"id": format!("{seed}-{index}"), "features": features, "classes": classes, "slices": slices,
           "claims": claims, "allocated": allocated, "node": node})
}

fn gpu_attrs(r: &mut StdRng, i: usize) -> Value {
    let mut a = json!({
        "type": {"string": "gpu"},
        "model": {"string": pick(r, &["a100", "h100"])},
        "nvlink": {"string": if i % 8 < 4 { "island-a" } else { "island-b" }},
        "numa": {"int": (i / 4) % 2},
        "resource.kubernetes.io/pcieRoot": {"string": format!("pci{}", i / 2)},
        "driverVersion": {"version": pick(r, &["1.2.3", "2.0.0", "1.10.0-rc.1"])}
    });
    if chance(r, 0.1) {
        a.as_object_mut().unwrap().remove("nvlink");
    }
    if chance(r, 0.05) {
        a["nvlink"] = json!({"int": 1});
    }
    a
}

fn gpu_pool(r: &mut StdRng, g: Gen, node: &str, slices: &mut Vec<Value>, devices: &mut Vec<Dev>) {
    let n_slices = if chance(r, 0.7) { 1 } else { 2 };
    let generation = r.random_range(1..=2);
    let mut count = n_slices;
    if chance(r, 0.05) {
        count += 1; // incomplete pool
    }
    let counters = chance(r, 0.25);
    let multi = chance(r, 0.2);
    let duplicate = chance(r, 0.03);
    // 1.37 rejects a negative capacity instead of counting it.
    let negative = g.v1_37 && chance(r, 0.03);
    // DRADeviceCompatibilityGroups is off: a slice with them is ignored.
    let compatibility_groups = g.v1_37 && counters && chance(r, 0.1);
    let mut k = 0usize;
    for s in 0..n_slices {
        let n = r.random_range(2..=6);
        let mut devs = Vec::new();
        for _ in 0..n {
            let name = if duplicate && k == 1 { "gpu-0".to_string() } else { format!("gpu-{k}") };
            let mut d = json!({"name": name, "attributes": gpu_attrs(r, k),
                "capacity": {"memory": {"value": pick(r, &["40Gi", "80Gi"])}}});
            if multi && k.is_multiple_of(2) {
                d["allowMultipleAllocations"] = json!(true);
                d["capacity"]["memory"] = json!({"value": "80Gi", "requestPolicy": if chance(r, 0.5) {
                    json!({"default": "10Gi", "validRange": {"min": "10Gi", "max": "80Gi", "step": "10Gi"}})
                } else {
                    json!({"default": "20Gi", "validValues": ["20Gi", "40Gi", "80Gi"]})
                }});
                if chance(r, 0.7) {
                    // Fractional range: milli-unit rounding with DRAFractionalCapacityRange,
                    // whole units without.
                    d["capacity"]["cores"] = json!({"value": "4", "requestPolicy": {"default": "500m",
                        "validRange": {"min": pick(r, &["250m", "500m", "1"]), "max": "4", "step": pick(r, &["250m", "500m", "1"])}}});
                }
                if chance(r, 0.2) {
                    // Shared without capacity: its shares record no consumed capacity.
                    d.as_object_mut().unwrap().remove("capacity");
                }
            }
            if negative && k == 0 {
                d["capacity"]["scratch"] = json!({"value": "-1"});
            }
            if chance(r, 0.12) {
                d["taints"] = json!([{"key": pick(r, &["k1", "k2"]), "value": pick(r, &["", "v"]),
                    "effect": pick(r, &["NoSchedule", "NoExecute", "None"])}]);
            }
            if chance(r, 0.06) {
                d["bindingConditions"] = json!(["ready"]);
                d["bindingFailureConditions"] = json!(["failed"]);
                if chance(r, 0.5) {
                    d["bindsToNode"] = json!(true);
                }
            }
            if counters {
                d["consumesCounters"] =
                    json!([{"counterSet": "mem", "counters": {"slices": {"value": pick(r, &["1", "2", "4"])}}}]);
                if compatibility_groups && k == 1 {
                    d["consumesCounters"][0]["compatibilityGroups"] = json!(["g1"]);
                }
            }
            devices.push(Dev {
                driver: GPU,
                pool: node.into(),
                name: d["name"].as_str().unwrap().to_string(),
                multi: d["allowMultipleAllocations"] == json!(true),
            });
            devs.push(d);
            k += 1;
        }
        let mut slice = json!({"metadata": {"name": format!("{node}-gpu-{s}")}, "spec": {"driver": GPU, "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": count + usize::from(counters)}, "devices": devs}});
        if g.v1_37 && chance(r, 0.1) {
            // DRAOptionalNodeOperations is off: allocated as usual, not copied to results.
            slice["spec"]["skipNodeOperations"] = json!([pick(r, &["NodePrepareResources", "*"])]);
        }
        slices.push(slice);
    }
    if counters {
        let total = pick(r, &["4", "6", "8"]);
        let mut cs = json!({"metadata": {"name": format!("{node}-counters")}, "spec": {"driver": GPU, "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": count + 1},
            "sharedCounters": [{"name": "mem", "counters": {"slices": {"value": total}}}]}});
        if chance(r, 0.05) {
            cs["spec"]["sharedCounters"][0]["name"] = json!("other");
        }
        // Counter slices apply to every node before 1.37; from 1.37 by their node
        // selection, and a pool whose counters do not apply to the node is looked up
        // whole.
        match r.random_range(0..8) {
            0 => {
                cs["spec"].as_object_mut().unwrap().remove("nodeName");
                cs["spec"]["allNodes"] = json!(true);
            }
            1 => {
                cs["spec"].as_object_mut().unwrap().remove("nodeName");
                cs["spec"]["nodeSelector"] = json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": [pick(r, &["z1", "z2"])]}]}]});
            }
            2 => cs["spec"]["nodeName"] = json!("n3"),
            _ => {}
        }
        slices.push(cs);
    }
    if chance(r, 0.1) {
        // A stale slice of an older generation.
        slices.push(json!({"metadata": {"name": format!("{node}-gpu-old")}, "spec": {"driver": GPU, "nodeName": node,
            "pool": {"name": node, "generation": 0, "resourceSliceCount": 1},
            "devices": [{"name": "gpu-old", "attributes": gpu_attrs(r, 0)}]}}));
    }
}

fn nic_pool(r: &mut StdRng, slices: &mut Vec<Value>, devices: &mut Vec<Dev>) {
    let n = r.random_range(1..=4);
    // Counters with the same set and pool name as the GPU pool's: 1.36 mixes them up.
    let counters = chance(r, 0.3);
    let devs: Vec<Value> = (0..n)
        .map(|i| {
            devices.push(Dev { driver: NIC, pool: "n1".into(), name: format!("nic-{i}"), multi: false });
            let mut d = json!({"name": format!("nic-{i}"), "attributes": {"resource.kubernetes.io/pcieRoot": {"string": format!("pci{}", i * 2 / n.max(1))},
                "numa": {"int": i % 2}}});
            if counters {
                d["consumesCounters"] = json!([{"counterSet": "mem", "counters": {"slices": {"value": "1"}}}]);
            }
            d
        })
        .collect();
    let count = 1 + usize::from(counters);
    slices.push(json!({"metadata": {"name": "n1-nic"}, "spec": {"driver": NIC, "nodeName": "n1",
        "pool": {"name": "n1", "generation": 1, "resourceSliceCount": count}, "devices": devs}}));
    if counters {
        slices.push(json!({"metadata": {"name": "n1-nic-counters"}, "spec": {"driver": NIC, "nodeName": "n1",
            "pool": {"name": "n1", "generation": 1, "resourceSliceCount": count},
            "sharedCounters": [{"name": "mem", "counters": {"slices": {"value": pick(r, &["1", "2", "8"])}}}]}}));
    }
}

fn network_pool(r: &mut StdRng, slices: &mut Vec<Value>, devices: &mut Vec<Dev>) {
    let mode = r.random_range(0..3);
    let mut spec = json!({"driver": NIC, "pool": {"name": "fabric", "generation": 1, "resourceSliceCount": 1}});
    let mut devs = Vec::new();
    for i in 0..3 {
        let mut d = json!({"name": format!("fabric-{i}"), "attributes": {"numa": {"int": i % 2}}});
        if mode == 2 {
            d["nodeSelector"] = json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": [pick(r, &["z1", "z2"])]}]}]});
        }
        devices.push(Dev { driver: NIC, pool: "fabric".into(), name: format!("fabric-{i}"), multi: false });
        devs.push(d);
    }
    match mode {
        0 => spec["allNodes"] = json!(true),
        1 => {
            spec["nodeSelector"] = json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": pick(r, &["In", "NotIn"]), "values": ["z1"]}]}]})
        }
        _ => spec["perDeviceNodeSelection"] = json!(true),
    }
    spec["devices"] = json!(devs);
    slices.push(json!({"metadata": {"name": "fabric"}, "spec": spec}));
}

const BIG: &str = "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149]";

fn classes(r: &mut StdRng) -> Vec<Value> {
    let cost = format!("{BIG}.all(x, {BIG}.all(y, {BIG}.all(z, x + y + z >= 0)))");
    let cheap = "[1,2,3].all(x, [1,2,3].all(y, x * y > 0)) && device.driver == 'gpu.example.com'".to_string();
    let table: Vec<(&str, String)> = vec![
        ("gpu", "device.driver == 'gpu.example.com'".into()),
        ("gpu-h100", "device.driver == 'gpu.example.com' && device.attributes['gpu.example.com'].model == 'h100'".into()),
        ("nic", "device.driver == 'nic.example.com'".into()),
        ("any", "true".into()),
        ("big-mem", "device.driver == 'gpu.example.com' && device.capacity['gpu.example.com'].memory.compareTo(quantity('50Gi')) > 0".into()),
        ("new-driver", "device.driver == 'gpu.example.com' && device.attributes['gpu.example.com'].driverVersion.isGreaterThan(semver('1.5.0'))".into()),
        ("optional", "device.attributes['gpu.example.com'].?model.orValue('none') == 'a100'".into()),
        ("bind", "cel.bind(a, device.attributes['gpu.example.com'], device.driver == 'gpu.example.com' && a.numa == 0)".into()),
        ("std-numa", "device.attributes['other.example.com'].size() == 0 && 'numa' in device.attributes['gpu.example.com']".into()),
        ("cheap-loops", cheap),
        ("bad-syntax", "device.driver ==".into()),
        ("not-bool", "device.driver".into()),
        ("missing-attr", "device.attributes['gpu.example.com'].nope == 1".into()),
        ("too-costly", cost),
    ];
    table
        .into_iter()
        .map(|(name, expr)| {
            let mut c = json!({"metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": expr}}]}});
            if chance(r, 0.3) {
                c["spec"]["config"] = json!([{"opaque": {"driver": GPU, "parameters": {"class": name}}}]);
            }
            c
        })
        .collect()
}

fn class_name(r: &mut StdRng) -> &'static str {
    if chance(r, 0.04) {
        return pick_str(r, &["bad-syntax", "not-bool", "missing-attr", "too-costly", "missing-class"]);
    }
    pick_str(
        r,
        &[
            "gpu",
            "gpu",
            "gpu",
            "gpu-h100",
            "nic",
            "any",
            "big-mem",
            "new-driver",
            "optional",
            "bind",
            "std-numa",
            "cheap-loops",
        ],
    )
}

fn request_body(r: &mut StdRng, g: Gen, sub: bool) -> Value {
    let class = class_name(r);
    let mut e = json!({"deviceClassName": class});
    if chance(r, 0.08) {
        e["allocationMode"] = json!("All");
    } else {
        e["allocationMode"] = json!("ExactCount");
        // Broad classes with large counts make the exhaustive search (ours and
        // upstream's) explode when a later claim cannot be satisfied.
        let counts: &[i64] = if class == "any" { &[1, 2] } else { &[1, 1, 1, 2, 2, 3, 4] };
        e["count"] = json!(*pick(r, counts));
    }
    if chance(r, 0.15) {
        e["selectors"] = json!([{"cel": {"expression": pick(r, &[
            "device.attributes['gpu.example.com'].numa == 1",
            "device.attributes['gpu.example.com'].?nvlink.orValue('') == 'island-a'",
            "device.attributes['resource.kubernetes.io'].?pcieRoot.orValue('').startsWith('pci')",
            "!device.allowMultipleAllocations",
        ])}}]);
    }
    if chance(r, 0.15) {
        e["tolerations"] = json!([{"key": pick(r, &["k1", "k2", ""]), "operator": pick(r, &["Exists", "Equal"]), "value": "v",
            "effect": pick(r, &["NoSchedule", "NoExecute", ""])}]);
    }
    if chance(r, 0.1) {
        e["capacity"] = json!({"requests": {"memory": pick(r, &["5Gi", "10Gi", "30Gi", "50Gi"])}});
    }
    if chance(r, 0.06) {
        e["capacity"]["requests"]["cores"] = json!(pick(r, &["300m", "1", "1500m", "750m"]));
    }
    if g.v1_37 && chance(r, 0.01) {
        // Beyond int64, not whole milli-units, negative: 1.37 aborts.
        let (name, value) = *pick(r, &[("memory", "10E"), ("cores", "1250500u"), ("memory", "-5Gi")]);
        e["capacity"]["requests"][name] = json!(value);
    }
    if g.v1_37 && chance(r, 0.005) {
        // DRADerivedAttributes is off: the request cannot be allocated.
        e["derivedAttributes"] = json!([{"name": "gpu.example.com/numaPlusOne", "expression": "device.attributes['gpu.example.com'].numa + 1"}]);
    }
    if !sub && chance(r, 0.05) {
        e["adminAccess"] = json!(true);
    }
    e
}

fn claim(r: &mut StdRng, g: Gen, i: usize) -> Value {
    let n = *pick(r, &[1, 1, 2, 2, 3]);
    let mut requests = Vec::new();
    let mut names = Vec::new();
    for j in 0..n {
        let name = format!("r{j}");
        if chance(r, 0.2) {
            let subs: Vec<Value> = (0..r.random_range(2..=3))
                .map(|k| {
                    let mut b = request_body(r, g, true);
                    b["name"] = json!(format!("s{k}"));
                    if g.v1_37 && chance(r, 0.03) {
                        // Could never fit a claim: 1.37 passes over it without overflowing.
                        b["allocationMode"] = json!("ExactCount");
                        b["count"] = json!(i64::MAX);
                    }
                    b
                })
                .collect();
            names.push(format!("{name}/s0"));
            requests.push(json!({"name": name, "firstAvailable": subs}));
        } else {
            requests.push(json!({"name": name, "exactly": request_body(r, g, false)}));
        }
        names.push(name);
    }
    let mut constraints = Vec::new();
    if chance(r, 0.35) {
        let attr = *pick(
            r,
            &[
                "gpu.example.com/nvlink",
                "gpu.example.com/numa",
                "resource.kubernetes.io/pcieRoot",
                "gpu.example.com/model",
            ],
        );
        let reqs: Vec<&String> = names.iter().filter(|_| chance(r, 0.5)).collect();
        constraints.push(json!({"requests": reqs, "matchAttribute": attr}));
    }
    if chance(r, 0.15) {
        let attr = *pick(r, &["resource.kubernetes.io/pcieRoot", "gpu.example.com/numa", "gpu.example.com/nvlink"]);
        constraints.push(json!({"distinctAttribute": attr}));
    }
    let mut config = Vec::new();
    if chance(r, 0.2) {
        let reqs: Vec<&String> = names.iter().filter(|_| chance(r, 0.5)).collect();
        config.push(json!({"requests": reqs, "opaque": {"driver": GPU, "parameters": {"claim": i}}}));
    }
    json!({"metadata": {"name": format!("claim-{i}"), "namespace": "default", "uid": format!("uid-{i}")},
           "spec": {"devices": {"requests": requests, "constraints": constraints, "config": config}}})
}

fn allocated(r: &mut StdRng, devices: &[Dev]) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        if !chance(r, if d.multi { 0.4 } else { 0.15 }) {
            continue;
        }
        let mut res = json!({"request": "r", "driver": d.driver, "pool": d.pool, "device": d.name});
        // Shares of a shareable device, with and without consumed capacity, mostly.
        let kind = if d.multi && chance(r, 0.8) { r.random_range(1..3) } else { r.random_range(0..5) };
        match kind {
            0 => res["adminAccess"] = json!(true),
            1 => {
                res["shareID"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
                res["consumedCapacity"] = json!({"memory": pick(r, &["10Gi", "40Gi", "60Gi"])});
            }
            2 => res["shareID"] = json!(format!("00000000-0000-4000-8000-{i:012}")),
            _ => {}
        }
        out.push(json!({"metadata": {"name": format!("old-{i}"), "namespace": "default"},
            "spec": {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "gpu"}}]}},
            "status": {"allocation": {"devices": {"results": [res]}}}}));
    }
    out
}
