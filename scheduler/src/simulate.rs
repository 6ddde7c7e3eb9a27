//! `phalanx simulate`: assemble the gangs of a snapshot, place them one after another
//! with the core's solver, and report where every member lands or why it waits.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use phalanx_gang::{Gang, GangInputs, GangKey, GangSource, assemble};
use phalanx_scheduler_core::placement::{GangOutcome, PlacementOptions, Placer, Snapshot};
use phalanx_topology::TopologyConfig;
use serde::Serialize;

/// One gang's result.
#[derive(Debug, Serialize)]
pub struct GangReport {
    /// The gang.
    pub gang: GangKey,
    /// Where it was defined.
    pub source: GangSource,
    /// Its pending members.
    pub pending_members: usize,
    /// Members that must be placed together (pending and bound).
    pub min_members: u32,
    /// Placed or pending.
    #[serde(flatten)]
    pub outcome: GangOutcome,
}

/// A gang whose definition is malformed.
#[derive(Debug, Serialize)]
pub struct ProblemReport {
    /// The gang.
    pub gang: GangKey,
    /// Its pods.
    pub pods: Vec<String>,
    /// What to fix.
    pub message: String,
}

/// The whole simulation.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Per gang, in placement order.
    pub gangs: Vec<GangReport>,
    /// Malformed gang definitions.
    pub problems: Vec<ProblemReport>,
    /// Gangs placed.
    pub placed: usize,
    /// Gangs pending.
    pub pending: usize,
}

/// Placement order: multi-pod gangs before single pods, bigger first, then by name:
/// large gangs are the hardest to fit, so they choose first.
pub fn order(gangs: &mut [Gang]) {
    gangs.sort_by(|a, b| {
        let big = |g: &Gang| (g.source != GangSource::SinglePod, g.members.len());
        big(b).cmp(&big(a)).then_with(|| a.key.cmp(&b.key))
    });
}

/// Runs the simulation on a snapshot.
pub fn run(snapshot: &Snapshot, config: &TopologyConfig, scheduler_name: &str) -> Result<Report> {
    let assembly = assemble(&GangInputs {
        scheduler_name,
        pods: &snapshot.pods,
        coscheduling_pod_groups: &snapshot.coscheduling_pod_groups,
        workload_pod_groups: &snapshot.workload_pod_groups,
        composite_pod_groups: &snapshot.composite_pod_groups,
        pod_gangs: &snapshot.pod_gangs,
    });
    let mut placer = Placer::new(snapshot, config, PlacementOptions::default().scheduler_name(scheduler_name))?;
    let mut gangs = assembly.gangs;
    order(&mut gangs);
    let mut out = Report { gangs: Vec::new(), problems: Vec::new(), placed: 0, pending: 0 };
    for g in &gangs {
        let outcome = placer.place_gang(g);
        match outcome {
            GangOutcome::Placed(_) => out.placed += 1,
            GangOutcome::Pending(_) => out.pending += 1,
        }
        out.gangs.push(GangReport {
            gang: g.key.clone(),
            source: g.source,
            pending_members: g.members.len(),
            min_members: g.min_members,
            outcome,
        });
    }
    for p in assembly.problems {
        out.pending += 1;
        out.problems.push(ProblemReport {
            gang: p.gang,
            pods: p.pods.iter().map(ToString::to_string).collect(),
            message: p.error.to_string(),
        });
    }
    Ok(out)
}

/// Loads files, runs, renders.
pub fn run_files(
    paths: &[impl AsRef<Path>],
    topology: Option<&Path>,
    scheduler_name: &str,
    json: bool,
) -> Result<String> {
    let snapshot = crate::snapshot::load_files(paths)?;
    let config = match topology {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_yaml::from_str(&text).with_context(|| format!("topology configuration {}", p.display()))?
        }
        None => TopologyConfig::default(),
    };
    let report = run(&snapshot, &config, scheduler_name)?;
    Ok(if json { serde_json::to_string_pretty(&report)? + "\n" } else { render(&report) })
}

fn source_name(s: GangSource) -> &'static str {
    match s {
        GangSource::Annotations => "annotations",
        GangSource::CoschedulingPodGroup => "PodGroup scheduling.x-k8s.io",
        GangSource::WorkloadPodGroup => "PodGroup scheduling.k8s.io",
        GangSource::GrovePodGang => "Grove PodGang",
        GangSource::SinglePod => "single pod",
    }
}

/// Devices grouped by driver and pool: `gpu.phalanx.dev hgx-a: gpu-0,gpu-1`.
fn devices(list: &[String]) -> String {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for d in list {
        let mut it = d.splitn(3, '/');
        let (drv, pool, dev) = (it.next().unwrap_or(""), it.next().unwrap_or(""), it.next().unwrap_or(""));
        let key = format!("{drv} {pool}");
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(dev.to_string()),
            None => groups.push((key, vec![dev.to_string()])),
        }
    }
    if groups.is_empty() {
        return "-".into();
    }
    groups.into_iter().map(|(k, v)| format!("{k}: {}", v.join(","))).collect::<Vec<_>>().join("; ")
}

/// Human-readable report.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    for g in &r.gangs {
        let _ = write!(
            s,
            "gang {} ({}, {} pending, min {})",
            g.gang,
            source_name(g.source),
            g.pending_members,
            g.min_members
        );
        match &g.outcome {
            GangOutcome::Placed(p) => {
                let _ = writeln!(s, ": placed in {}, score {:.3}", p.domain, p.score);
                let b = &p.breakdown;
                let _ = writeln!(
                    s,
                    "  score: domain {:.2} fit {:.2} locality {:.2} kv {:.2} packing {:.2}",
                    b.domain, b.fit, b.locality, b.kv, b.packing
                );
                for m in &p.members {
                    let _ = writeln!(
                        s,
                        "  {:<28} → {:<14} nvlink {:<18} {}",
                        m.pod.to_string(),
                        m.node,
                        m.nvlink_domain.as_deref().unwrap_or("-"),
                        devices(&m.devices)
                    );
                }
                for k in &p.kv {
                    let _ = writeln!(
                        s,
                        "  pd-group {}: {:?} {:.0} GB/s{}{}",
                        k.pd_group,
                        k.link,
                        k.gbps,
                        k.seconds_per_request
                            .map(|t| format!(", ~{:.1} ms KV per request", t * 1e3))
                            .unwrap_or_default(),
                        if k.in_kv_domain { "" } else { ", outside its KV domain" }
                    );
                }
                for u in &p.unplaced_optional {
                    let _ = writeln!(s, "  {u}: beyond the minimum, did not fit; stays pending");
                }
            }
            GangOutcome::Pending(p) => {
                let _ = writeln!(s, ": PENDING — {}", p.message);
                for d in p.domains.iter().take(20) {
                    let _ = writeln!(s, "  {}: {}", d.domain, d.reason);
                }
                if p.domains.len() > 20 {
                    let _ = writeln!(s, "  … and {} more domains (see --json)", p.domains.len() - 20);
                }
            }
        }
    }
    for p in &r.problems {
        let _ = writeln!(s, "gang {}: INVALID — {}", p.gang, p.message);
        let _ = writeln!(s, "  pods: {}", p.pods.join(", "));
    }
    let _ = writeln!(s, "{} gang(s) placed, {} pending", r.placed, r.pending);
    s
}
