//! Gangs from all four sources, and the messages malformed definitions produce.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSchedulingGroup, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use phalanx_gang::crd::*;
use phalanx_gang::workload::{
    CompositePodGroup, GangPolicy, PodGroupSpec, SchedulingConstraints, SchedulingPolicy, TopologyConstraint,
    WorkloadPodGroup,
};
use phalanx_gang::*;

const SCHED: &str = "phalanx-scheduler";

fn pod(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
    let m = |kv: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
        Some(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ml".into()),
            labels: m(labels),
            annotations: m(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec { scheduler_name: Some(SCHED.into()), ..Default::default() }),
        status: None,
    }
}

fn bound(mut p: Pod) -> Pod {
    p.spec.as_mut().unwrap().node_name = Some("n1".into());
    p
}

fn run(pods: &[Pod]) -> Assembly {
    assemble(&GangInputs {
        scheduler_name: SCHED,
        pods,
        coscheduling_pod_groups: &[],
        workload_pod_groups: &[],
        composite_pod_groups: &[],
        pod_gangs: &[],
    })
}

#[test]
fn annotation_gang_with_role_minimums_and_topology() {
    let a = |_role: &str| {
        [
            ("phalanx.dev/gang-min-members", "3"),
            ("phalanx.dev/gang-min-worker", "2"),
            ("phalanx.dev/topology-required", "rack"),
            ("phalanx.dev/topology-preferred", "nvlink"),
        ]
        .into_iter()
        .collect::<Vec<_>>()
    };
    let pods = vec![
        pod("w-1", &[("phalanx.dev/gang", "train"), ("phalanx.dev/role", "worker")], &a("worker")),
        pod("w-0", &[("phalanx.dev/gang", "train"), ("phalanx.dev/role", "worker")], &a("worker")),
        bound(pod("l-0", &[("phalanx.dev/gang", "train"), ("phalanx.dev/role", "leader")], &a("leader"))),
        pod("other", &[], &[]),
    ];
    let out = run(&pods);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(out.gangs.len(), 2);
    let g = out.gangs.iter().find(|g| g.key.name == "train").unwrap();
    assert_eq!(g.source, GangSource::Annotations);
    assert_eq!(g.members.iter().map(|m| m.pod.name.as_str()).collect::<Vec<_>>(), ["w-0", "w-1"]);
    assert_eq!((g.min_members, g.bound, g.needed(), g.missing_members()), (3, 1, 2, 0));
    assert_eq!(g.topology.required.as_deref(), Some("rack"));
    assert_eq!(g.topology.preferred.as_deref(), Some("nvlink"));
    let worker = g.roles.iter().find(|r| r.name == "worker").unwrap();
    assert_eq!((worker.min, worker.members.clone()), (2, vec![0, 1]));
    let leader = g.roles.iter().find(|r| r.name == "leader").unwrap();
    assert_eq!((leader.min, leader.bound), (0, 1));
    let single = out.gangs.iter().find(|g| g.key.name == "other").unwrap();
    assert_eq!((single.source, single.min_members), (GangSource::SinglePod, 1));
}

#[test]
fn missing_gang_min_means_all_pods_seen_and_missing_members_reported() {
    let pods = vec![pod("a", &[("phalanx.dev/gang", "g")], &[]), pod("b", &[("phalanx.dev/gang", "g")], &[])];
    let out = run(&pods);
    assert_eq!(out.gangs[0].min_members, 2);
    let pods = vec![pod("a", &[("phalanx.dev/gang", "g")], &[("phalanx.dev/gang-min-members", "4")])];
    let out = run(&pods);
    assert_eq!(out.gangs[0].missing_members(), 3);
}

#[test]
fn coscheduling_pod_group() {
    let pg = CoschedulingPodGroup {
        metadata: ObjectMeta {
            name: Some("pg".into()),
            namespace: Some("ml".into()),
            annotations: Some([("phalanx.dev/topology-required".to_string(), "block".to_string())].into()),
            ..Default::default()
        },
        spec: CoschedulingPodGroupSpec { min_member: 2, schedule_timeout_seconds: Some(60), ..Default::default() },
        status: None,
    };
    let pods: Vec<Pod> =
        (0..3).map(|i| pod(&format!("p{i}"), &[("scheduling.x-k8s.io/pod-group", "pg")], &[])).collect();
    let out = assemble(&GangInputs {
        scheduler_name: SCHED,
        pods: &pods,
        coscheduling_pod_groups: &[pg],
        workload_pod_groups: &[],
        composite_pod_groups: &[],
        pod_gangs: &[],
    });
    assert!(out.problems.is_empty());
    let g = &out.gangs[0];
    assert_eq!(
        (g.source, g.min_members, g.members.len(), g.schedule_timeout_seconds),
        (GangSource::CoschedulingPodGroup, 2, 3, Some(60))
    );
    assert_eq!(g.topology.required.as_deref(), Some("block"));
}

#[test]
fn workload_pod_group_via_scheduling_group() {
    let wpg = WorkloadPodGroup {
        metadata: ObjectMeta { name: Some("decode".into()), namespace: Some("ml".into()), ..Default::default() },
        spec: PodGroupSpec {
            scheduling_policy: SchedulingPolicy { gang: Some(GangPolicy { min_count: 4 }), basic: None },
            scheduling_constraints: Some(SchedulingConstraints {
                topology: vec![TopologyConstraint { key: "phalanx.dev/rack".into() }],
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let pods: Vec<Pod> = (0..4)
        .map(|i| {
            let mut p = pod(&format!("d{i}"), &[], &[]);
            p.spec.as_mut().unwrap().scheduling_group =
                Some(PodSchedulingGroup { pod_group_name: Some("decode".into()) });
            p
        })
        .collect();
    let out = assemble(&GangInputs {
        scheduler_name: SCHED,
        pods: &pods,
        coscheduling_pod_groups: &[],
        workload_pod_groups: &[wpg],
        composite_pod_groups: &[],
        pod_gangs: &[],
    });
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let g = &out.gangs[0];
    assert_eq!((g.source, g.min_members), (GangSource::WorkloadPodGroup, 4));
    assert_eq!(g.topology.required.as_deref(), Some("phalanx.dev/rack"));
}

#[test]
fn grove_pod_gang_groups_become_roles() {
    let refs =
        |names: &[&str]| names.iter().map(|n| NamespacedName { namespace: "ml".into(), name: n.to_string() }).collect();
    let constraint = |req: &str| {
        Some(GroveTopologyConstraint {
            pack_constraint: Some(GrovePackConstraint {
                required: Some(req.into()),
                preferred: Some("kubernetes.io/hostname".into()),
            }),
        })
    };
    let gang = PodGang {
        metadata: ObjectMeta { name: Some("svc-0".into()), namespace: Some("ml".into()), ..Default::default() },
        spec: PodGangSpec {
            podgroups: vec![
                GrovePodGroup {
                    name: "prefill".into(),
                    pod_references: refs(&["p0", "p1"]),
                    min_replicas: 2,
                    topology_constraint: None,
                },
                GrovePodGroup {
                    name: "decode".into(),
                    pod_references: refs(&["d0"]),
                    min_replicas: 1,
                    topology_constraint: constraint("nvidia.com/gpu.clique"),
                },
            ],
            topology_constraint: constraint("phalanx.dev/rack"),
            ..Default::default()
        },
    };
    let pods = vec![pod("p0", &[], &[]), pod("p1", &[], &[]), pod("d0", &[], &[])];
    let out = assemble(&GangInputs {
        scheduler_name: SCHED,
        pods: &pods,
        coscheduling_pod_groups: &[],
        workload_pod_groups: &[],
        composite_pod_groups: &[],
        pod_gangs: &[gang],
    });
    assert!(out.problems.is_empty());
    let g = &out.gangs[0];
    assert_eq!((g.source, g.min_members, g.key.name.as_str()), (GangSource::GrovePodGang, 3, "svc-0"));
    assert_eq!(g.topology.required.as_deref(), Some("phalanx.dev/rack"));
    let d = g.roles.iter().find(|r| r.name == "decode").unwrap();
    assert_eq!(d.topology.required.as_deref(), Some("nvidia.com/gpu.clique"));
    assert_eq!(d.members.len(), 1);
}

#[test]
fn prefill_decode_groups_carry_kv_hints() {
    let ann = [
        ("phalanx.dev/kv-domain", "nvlink"),
        ("phalanx.dev/kv-domain-policy", "required"),
        ("phalanx.dev/kv-bytes-per-token", "327680"),
        ("phalanx.dev/typical-isl", "8192"),
    ];
    let pods = vec![
        pod("p", &[("phalanx.dev/gang", "s"), ("phalanx.dev/role", "prefill"), ("phalanx.dev/pd-group", "g0")], &ann),
        pod("d", &[("phalanx.dev/gang", "s"), ("phalanx.dev/role", "decode"), ("phalanx.dev/pd-group", "g0")], &ann),
    ];
    let out = run(&pods);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let pd = &out.gangs[0].pd_groups[0];
    assert_eq!(pd.policy, KvPolicy::Required);
    assert_eq!(pd.kv_domain.as_deref(), Some("nvlink"));
    assert_eq!(pd.kv_bytes_per_request(), Some(327680 * 8192));
    assert_eq!(pd.members, vec![(0, PdRole::Decode), (1, PdRole::Prefill)]);
}

/// Malformed definitions: the message names the object and says what to do.
#[test]
fn malformed_definitions_say_what_to_fix() {
    struct Case {
        pods: Vec<Pod>,
        expect: &'static [&'static str],
    }
    let g = ("phalanx.dev/gang", "g");
    let cases = vec![
        Case {
            pods: vec![pod("a", &[g], &[("phalanx.dev/gang-min-members", "two")])],
            expect: &["pod a", "phalanx.dev/gang-min-members=\"two\"", "whole number", "must start together"],
        },
        Case {
            pods: vec![
                pod("a", &[g], &[("phalanx.dev/gang-min-members", "2")]),
                pod("b", &[g], &[("phalanx.dev/gang-min-members", "3")]),
            ],
            expect: &["gang ml/g", "disagree", "\"2\" on a", "\"3\" on b", "same value on every pod"],
        },
        Case {
            pods: vec![pod("a", &[g], &[("phalanx.dev/gang-min-members", "1"), ("phalanx.dev/gang-min-worker", "1")])],
            expect: &["phalanx.dev/gang-min-worker", "no pod has phalanx.dev/role=\"worker\""],
        },
        Case {
            pods: vec![pod(
                "a",
                &[g, ("phalanx.dev/role", "worker")],
                &[("phalanx.dev/gang-min-members", "1"), ("phalanx.dev/gang-min-worker", "3")],
            )],
            expect: &["role minimums add up to 3", "raise gang-min-members"],
        },
        Case {
            pods: vec![pod("a", &[g, ("phalanx.dev/role", "router"), ("phalanx.dev/pd-group", "x")], &[])],
            expect: &["pod ml/a", "phalanx.dev/role=\"router\"", "prefill, decode, both"],
        },
        Case {
            pods: vec![pod(
                "a",
                &[g, ("phalanx.dev/role", "prefill"), ("phalanx.dev/pd-group", "x")],
                &[("phalanx.dev/kv-domain-policy", "always")],
            )],
            expect: &["phalanx.dev/kv-domain-policy=\"always\"", "required, preferred"],
        },
        Case {
            pods: vec![pod("a", &[("scheduling.x-k8s.io/pod-group", "nope")], &[])],
            expect: &["pod ml/a", "PodGroup (scheduling.x-k8s.io/v1alpha1) \"nope\"", "create it or remove"],
        },
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let out = run(&c.pods);
        assert!(out.gangs.is_empty(), "case {i}: a malformed gang must not be placed");
        assert!(!out.problems.is_empty(), "case {i}: expected a problem");
        let msg = out.problems.iter().map(|p| p.error.to_string()).collect::<Vec<_>>().join(" | ");
        for e in c.expect {
            assert!(msg.contains(e), "case {i}: {msg:?} lacks {e:?}");
        }
        assert!(!out.problems[0].pods.is_empty(), "case {i}: the pods to annotate are listed");
    }
}

#[test]
fn pods_of_other_schedulers_and_finished_pods_are_ignored() {
    let mut other = pod("x", &[], &[]);
    other.spec.as_mut().unwrap().scheduler_name = Some("default-scheduler".into());
    let mut done = pod("y", &[], &[]);
    done.status = Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
    assert_eq!(run(&[other, done]), Assembly::default());
}

fn group_pod(name: &str, group: &str) -> Pod {
    let mut p = pod(name, &[], &[]);
    p.spec.as_mut().unwrap().scheduling_group = Some(PodSchedulingGroup { pod_group_name: Some(group.into()) });
    p
}

fn workload_group(name: &str, min: i32, parent: Option<&str>, topology: Option<&str>) -> WorkloadPodGroup {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"parentCompositePodGroupName": parent, "schedulingPolicy": {"gang": {"minCount": min}},
                 "schedulingConstraints": {"topology": topology.map(|k| vec![serde_json::json!({"key": k})]).unwrap_or_default()}}
    }))
    .unwrap()
}

fn composite(name: &str, policy: serde_json::Value, parent: Option<&str>, topology: Option<&str>) -> CompositePodGroup {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "scheduling.k8s.io/v1alpha3", "kind": "CompositePodGroup",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"parentCompositePodGroupName": parent, "schedulingPolicy": policy,
                 "schedulingConstraints": {"topology": topology.map(|k| vec![serde_json::json!({"key": k})]).unwrap_or_default()}}
    }))
    .unwrap()
}

fn run_workload(pods: &[Pod], groups: &[WorkloadPodGroup], composites: &[CompositePodGroup]) -> Assembly {
    assemble(&GangInputs {
        scheduler_name: SCHED,
        pods,
        coscheduling_pod_groups: &[],
        workload_pod_groups: groups,
        composite_pod_groups: composites,
        pod_gangs: &[],
    })
}

/// A gang CompositePodGroup over two PodGroups is one gang: each PodGroup a role with
/// its minimum and topology key, the composite's key for the whole set.
#[test]
fn composite_pod_group_is_one_gang_with_a_role_per_pod_group() {
    let groups = [
        workload_group("prefill", 2, Some("svc"), Some("phalanx.dev/nvlink")),
        workload_group("decode", 3, Some("svc"), None),
    ];
    let composites =
        [composite("svc", serde_json::json!({"gang": {"minGroupCount": 2}}), None, Some("phalanx.dev/rack"))];
    let mut pods: Vec<Pod> = (0..2).map(|i| group_pod(&format!("p{i}"), "prefill")).collect();
    pods.extend((0..3).map(|i| group_pod(&format!("d{i}"), "decode")));
    let out = run_workload(&pods, &groups, &composites);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    assert_eq!(out.gangs.len(), 1, "one gang for the composite");
    let g = &out.gangs[0];
    assert_eq!((g.key.name.as_str(), g.min_members, g.members.len()), ("svc", 5, 5));
    assert_eq!(g.topology.required.as_deref(), Some("phalanx.dev/rack"));
    let role = |n: &str| g.roles.iter().find(|r| r.name == n).unwrap();
    assert_eq!((role("prefill").min, role("prefill").members.len()), (2, 2));
    assert_eq!(role("prefill").topology.required.as_deref(), Some("phalanx.dev/nvlink"));
    assert_eq!((role("decode").min, role("decode").members.len()), (3, 3));
    for i in &role("decode").members {
        assert!(g.members[*i].pod.name.starts_with('d'));
    }
}

/// What cannot be mapped gets a precise reason on the pods; other gangs still assemble.
#[test]
fn composite_pod_groups_that_cannot_be_mapped_are_reported() {
    let gang2 = serde_json::json!({"gang": {"minGroupCount": 1}});
    let groups = [
        workload_group("deep", 1, Some("mid"), None),
        workload_group("partial-a", 1, Some("some"), None),
        workload_group("partial-b", 1, Some("some"), None),
        workload_group("orphan", 1, Some("nope"), None),
        workload_group("fine", 1, None, None),
    ];
    let composites = [
        composite("top", gang2.clone(), None, Some("topology.kubernetes.io/zone")),
        composite("mid", gang2.clone(), Some("top"), Some("phalanx.dev/rack")),
        composite("some", gang2, None, None),
    ];
    let pods = vec![
        group_pod("a", "deep"),
        group_pod("b", "partial-a"),
        group_pod("c", "partial-b"),
        group_pod("d", "orphan"),
        group_pod("e", "fine"),
    ];
    let out = run_workload(&pods, &groups, &composites);
    assert_eq!(out.gangs.iter().map(|g| g.key.name.as_str()).collect::<Vec<_>>(), ["fine"]);
    let msg = |pod: &str| {
        out.problems
            .iter()
            .filter(|p| p.pods.iter().any(|r| r.name == pod))
            .map(|p| p.error.to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(msg("a").contains("3 levels deep (deep ▸ mid ▸ top)"), "{}", msg("a"));
    assert!(msg("b").contains("minGroupCount 1 of 2 PodGroups") && msg("b").contains("set minGroupCount to 2"));
    assert_eq!(msg("b"), msg("c"), "both members of the composite carry its reason");
    assert!(msg("d").contains("CompositePodGroup \"nope\", which does not exist"), "{}", msg("d"));
}
