//! Checks that what the worker got matches what its pod asked for.
//!
//! - **one island**: the GPUs of each claim share one NVLink island (required; a claim
//!   whose GPUs span islands cannot run tensor parallelism over NVLink);
//! - **NIC alignment** (`phalanx.dev/nic-alignment`): every GPU has a compute NIC on its
//!   PCIe root;
//! - **KV domain** (`phalanx.dev/kv-domain` with its policy), once the P/D peers are
//!   known: this worker and every peer of the group are in the same domain of that level.
//!
//! A failed `required` check stops the worker with a termination message that says what
//! was asked and what was given; a failed `preferred` one is logged and counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::devices::Devices;
use crate::identity::{Hints, Policy};

/// Where a worker sits, as far as KV domains go: exchanged with peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Pod name.
    pub pod: String,
    /// Node name.
    pub node: String,
    /// NVLink domains of its GPUs (deduplicated).
    pub nvlink_domains: Vec<String>,
    /// NUMA nodes of its GPUs (deduplicated).
    pub numa_nodes: Vec<i64>,
    /// Topology labels of its node it knows (`phalanx.dev/rack`, …), from
    /// `PHALANX_TOPOLOGY_<LEVEL>` env.
    pub topology: BTreeMap<String, String>,
}

impl Facts {
    /// This worker's facts.
    pub fn of(pod: &str, node: &str, devices: &Devices, topology: BTreeMap<String, String>) -> Facts {
        let mut nvlink: Vec<String> = devices.gpus.iter().filter_map(|g| g.nvlink_domain.clone()).collect();
        nvlink.sort();
        nvlink.dedup();
        let mut numa: Vec<i64> = devices.gpus.iter().filter_map(|g| g.numa_node).collect();
        numa.sort_unstable();
        numa.dedup();
        Facts { pod: pod.into(), node: node.into(), nvlink_domains: nvlink, numa_nodes: numa, topology }
    }

    /// The domain of `level` this worker is in, when it is one domain and known.
    pub fn domain(&self, level: &str) -> Option<String> {
        match level {
            "node" | "host" => Some(self.node.clone()).filter(|n| !n.is_empty()),
            "nvlink" => match self.nvlink_domains.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            "numa" => match self.numa_nodes.as_slice() {
                [one] => Some(format!("{}/numa{one}", self.node)),
                _ => None,
            },
            other => self.topology.get(other).cloned(),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// e.g. `one-island`, `nic-alignment`, `kv-domain`.
    pub name: &'static str,
    /// How strictly it must hold.
    pub policy: Policy,
    /// Whether it holds.
    pub ok: bool,
    /// What the pod asked for.
    pub asked: String,
    /// What it was given.
    pub given: String,
}

impl Check {
    /// The line a person reads (termination message, log).
    pub fn describe(&self) -> String {
        let verdict = if self.ok { "ok" } else { "VIOLATED" };
        let policy = match self.policy {
            Policy::Required => "required",
            Policy::Preferred => "preferred",
        };
        format!("{} ({policy}) {verdict}: asked {}; given {}", self.name, self.asked, self.given)
    }
}

/// Checks on the devices alone (before peers are known).
pub fn local_checks(hints: &Hints, devices: &Devices) -> Vec<Check> {
    let mut checks = Vec::new();
    for (uid, claim) in &devices.claims {
        if claim.gpus.len() < 2 {
            continue;
        }
        let islands: Vec<String> = claim
            .gpus
            .iter()
            .map(|name| {
                devices.gpu(name).and_then(|g| g.nvlink_island.clone()).unwrap_or_else(|| format!("{name}: none"))
            })
            .collect();
        let mut distinct = islands.clone();
        distinct.sort();
        distinct.dedup();
        let label = if claim.name.is_empty() { uid.clone() } else { claim.name.clone() };
        checks.push(Check {
            name: "one-island",
            policy: Policy::Required,
            ok: distinct.len() == 1 && !distinct[0].ends_with(": none"),
            asked: format!("the {} GPUs of claim {label} in one NVLink island", claim.gpus.len()),
            given: format!("islands {}", distinct.join(", ")),
        });
    }
    if let Some(policy) = hints.nic_alignment {
        let mut missing = Vec::new();
        for gpu in &devices.gpus {
            let aligned = gpu.pcie_root.is_some()
                && devices.nics.iter().any(|n| n.pcie_root == gpu.pcie_root && n.role != "storage");
            if !aligned {
                missing.push(format!("gpu-{} on {}", gpu.index, gpu.pcie_root.as_deref().unwrap_or("an unknown root")));
            }
        }
        let nic_roots: Vec<String> = devices
            .nics
            .iter()
            .map(|n| format!("nic-{} on {}", n.index, n.pcie_root.as_deref().unwrap_or("?")))
            .collect();
        checks.push(Check {
            name: "nic-alignment",
            policy,
            ok: missing.is_empty() && !devices.gpus.is_empty(),
            asked: "a compute NIC on the PCIe root of every GPU".into(),
            given: if missing.is_empty() {
                format!("{} GPU(s) aligned ({})", devices.gpus.len(), nic_roots.join(", "))
            } else {
                format!(
                    "no NIC for {} (NICs: {})",
                    missing.join(", "),
                    if nic_roots.is_empty() { "none".into() } else { nic_roots.join(", ") }
                )
            },
        });
    }
    checks
}

/// The KV-domain check against the group's peers.
pub fn kv_domain_check(hints: &Hints, me: &Facts, peers: &[Facts]) -> Option<Check> {
    let level = hints.kv_domain.as_deref()?;
    let mine = me.domain(level);
    let mut others: Vec<String> = Vec::new();
    let mut ok = mine.is_some();
    for peer in peers {
        let theirs = peer.domain(level);
        ok &= theirs.is_some() && theirs == mine;
        others.push(format!("{} in {}", peer.pod, theirs.as_deref().unwrap_or("no single domain")));
    }
    Some(Check {
        name: "kv-domain",
        policy: hints.kv_domain_policy,
        ok,
        asked: format!(
            "the P/D group {} in one {level} domain",
            hints.pd_group.as_deref().unwrap_or("(no phalanx.dev/pd-group)")
        ),
        given: format!(
            "{} in {}{}{}",
            me.pod,
            mine.as_deref().unwrap_or("no single domain"),
            if others.is_empty() { "" } else { "; " },
            others.join("; ")
        ),
    })
}

/// The termination message for the failed required checks, if any.
pub fn termination_message(checks: &[Check]) -> Option<String> {
    let failed: Vec<String> =
        checks.iter().filter(|c| !c.ok && c.policy == Policy::Required).map(Check::describe).collect();
    (!failed.is_empty()).then(|| format!("placement does not match the pod's required hints:\n{}", failed.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{Devices, sample_env};
    use crate::identity::{Identity, Role};

    fn hints() -> Hints {
        Identity::default().hints().unwrap()
    }

    #[test]
    fn one_island_and_nic_alignment_hold_on_a_good_placement() {
        let d = Devices::from_env(&sample_env());
        let mut h = hints();
        h.nic_alignment = Some(Policy::Required);
        let checks = local_checks(&h, &d);
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
        assert_eq!(termination_message(&checks), None);
    }

    #[test]
    fn a_split_claim_and_a_missing_nic_are_reported_with_what_was_given() {
        let mut env = sample_env();
        env.insert("PHALANX_GPU_1_NVLINK_ISLAND".into(), "node-a.island-1".into());
        env.insert("PHALANX_NIC_1_PCIE_ROOT".into(), "pci0000:bf".into());
        let d = Devices::from_env(&env);
        let mut h = hints();
        h.nic_alignment = Some(Policy::Preferred);
        let checks = local_checks(&h, &d);
        let island = checks.iter().find(|c| c.name == "one-island").unwrap();
        assert!(!island.ok);
        assert!(island.given.contains("node-a.island-1") && island.given.contains("node-a.nvswitch"), "{island:?}");
        let nic = checks.iter().find(|c| c.name == "nic-alignment").unwrap();
        assert!(!nic.ok && nic.given.contains("gpu-1 on pci0000:3f"), "{nic:?}");
        let message = termination_message(&checks).unwrap();
        assert!(message.contains("one-island (required) VIOLATED"), "{message}");
        assert!(!message.contains("nic-alignment"), "a preferred check never terminates: {message}");
    }

    #[test]
    fn kv_domain_compares_every_peer_at_the_level() {
        let d = Devices::from_env(&sample_env());
        let mut h = hints();
        h.role = Role::Decode;
        h.pd_group = Some("g".into());
        h.kv_domain = Some("nvlink".into());
        h.kv_domain_policy = Policy::Required;
        let me = Facts::of("decode-0", "node-a", &d, BTreeMap::new());
        let same =
            Facts { pod: "prefill-0".into(), nvlink_domains: vec!["node-a.nvswitch".into()], ..Default::default() };
        let other =
            Facts { pod: "prefill-1".into(), nvlink_domains: vec!["node-b.nvswitch".into()], ..Default::default() };
        assert!(kv_domain_check(&h, &me, std::slice::from_ref(&same)).unwrap().ok);
        let bad = kv_domain_check(&h, &me, &[same, other]).unwrap();
        assert!(!bad.ok);
        assert!(bad.given.contains("prefill-1 in node-b.nvswitch"), "{bad:?}");
        assert!(termination_message(&[bad]).unwrap().contains("kv-domain (required)"));
        h.kv_domain = Some("rack".into());
        let mut topo = BTreeMap::new();
        topo.insert("rack".to_owned(), "r1".to_owned());
        let me = Facts::of("decode-0", "node-a", &d, topo.clone());
        let peer = Facts { pod: "p".into(), node: "node-b".into(), topology: topo, ..Default::default() };
        assert!(kv_domain_check(&h, &me, &[peer]).unwrap().ok, "same rack, different nodes");
        h.kv_domain = None;
        assert!(kv_domain_check(&h, &me, &[]).is_none());
    }
}
