//! Properties of every placement on random small clusters: no device given twice, a
//! gang all or nothing, a required level never violated, every plan valid.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use phalanx_scheduler_core::placement::GangOutcome;
use phalanx_topology::{DeviceKey, names};
use proptest::prelude::*;

fn check(seed: u64) -> Result<(), TestCaseError> {
    let c = random_instance(seed, 6, 3);
    let gangs = c.gangs();
    let mut placer = c.placer();
    let gpu = placer.capacity().driver_index(names::GPU_DRIVER).unwrap();
    let mut owner: HashMap<DeviceKey, String> = HashMap::new();
    for claim in &c.snap.resource_claims {
        for r in claim
            .status
            .iter()
            .flat_map(|s| s.allocation.iter())
            .flat_map(|a| a.devices.iter())
            .flat_map(|d| d.results.iter().flatten())
        {
            owner.insert(
                DeviceKey { driver: r.driver.clone(), pool: r.pool.clone(), device: r.device.clone() },
                "snapshot".into(),
            );
        }
    }
    for g in &gangs {
        let free_before: Vec<u32> =
            (0..placer.topology().nodes().len()).map(|n| placer.capacity().node_free(n, gpu)).collect();
        match placer.place_gang(g) {
            GangOutcome::Placed(p) => {
                // all or nothing: every member placed (min = all in these gangs)
                prop_assert_eq!(p.members.len(), g.members.len(), "gang {} partly placed", g.key);
                prop_assert!(p.unplaced_optional.is_empty());
                // required level
                if let Some(req) = &g.topology.required {
                    let topo = placer.topology();
                    let level = topo.config().resolve(req).unwrap();
                    let nodes: Vec<usize> = p.members.iter().map(|m| topo.node_index(&m.node).unwrap()).collect();
                    prop_assert!(
                        topo.common_level(&nodes).is_some_and(|l| l >= level),
                        "gang {} breaks required {req}",
                        g.key
                    );
                }
                for m in &p.members {
                    let pod = c.snap.pods.iter().find(|x| x.metadata.name.as_deref() == Some(&m.pod.name)).unwrap();
                    let claim_name = format!("{}-c", m.pod.name);
                    let claim = c
                        .snap
                        .resource_claims
                        .iter()
                        .find(|x| x.metadata.name.as_deref() == Some(&claim_name))
                        .unwrap();
                    let want: i64 = claim
                        .spec
                        .as_ref()
                        .unwrap()
                        .devices
                        .as_ref()
                        .unwrap()
                        .requests
                        .as_ref()
                        .unwrap()
                        .iter()
                        .map(|r| r.exactly.as_ref().unwrap().count.unwrap())
                        .sum();
                    prop_assert_eq!(m.devices.len() as i64, want, "pod {} got a wrong device count", m.pod);
                    let _ = pod;
                    for ca in &m.claims {
                        // every plan passes the allocator's own validation
                        let claim = placer.claim(&(ca.namespace.clone(), ca.name.clone())).unwrap().clone();
                        validate(&placer, &m.node, &claim, &ca.allocation).map_err(TestCaseError::fail)?;
                    }
                    for d in &m.devices {
                        let mut it = d.splitn(3, '/');
                        let key = DeviceKey {
                            driver: it.next().unwrap().into(),
                            pool: it.next().unwrap().into(),
                            device: it.next().unwrap().into(),
                        };
                        prop_assert_eq!(&key.pool, &m.node, "device on another node");
                        if let Some(prev) = owner.insert(key.clone(), m.pod.to_string()) {
                            return Err(TestCaseError::fail(format!("{key} given to {prev} and {}", m.pod)));
                        }
                    }
                }
            }
            GangOutcome::Pending(_) => {
                let free_after: Vec<u32> =
                    (0..placer.topology().nodes().len()).map(|n| placer.capacity().node_free(n, gpu)).collect();
                prop_assert_eq!(free_before, free_after, "a pending gang {} holds devices", g.key);
            }
        }
    }
    let _: HashSet<()> = HashSet::new();
    Ok(())
}

/// The allocator's validation of a plan's allocation for a claim on a node.
fn validate(
    placer: &phalanx_scheduler_core::placement::Placer,
    node: &str,
    claim: &k8s_openapi::api::resource::v1::ResourceClaim,
    allocation: &k8s_openapi::api::resource::v1::AllocationResult,
) -> Result<(), String> {
    phalanx_scheduler_core::placement::validate_allocation(placer, node, claim, allocation)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn placements_keep_the_invariants(seed in any::<u64>()) {
        check(seed)?;
    }
}
