//! Groups the pods of a snapshot into gangs and checks their definitions.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;

use crate::crd::{CoschedulingPodGroup, GroveTopologyConstraint, PodGang};
use crate::error::GangError;
use crate::keys;
use crate::model::{Gang, GangKey, GangSource, KvPolicy, Member, PdGroup, PdRole, PodRef, Role, TopologyRequirement};
use crate::workload::{self, CompositePodGroup, WorkloadPodGroup};

/// What gangs are assembled from.
#[derive(Debug, Clone, Copy)]
pub struct GangInputs<'a> {
    /// Only pods with this `spec.schedulerName` are considered.
    pub scheduler_name: &'a str,
    /// All pods.
    pub pods: &'a [Pod],
    /// scheduler-plugins PodGroups.
    pub coscheduling_pod_groups: &'a [CoschedulingPodGroup],
    /// Workload API PodGroups.
    pub workload_pod_groups: &'a [WorkloadPodGroup],
    /// Workload API CompositePodGroups (1.37 alpha).
    pub composite_pod_groups: &'a [CompositePodGroup],
    /// Grove PodGangs.
    pub pod_gangs: &'a [PodGang],
}

/// A gang that cannot be placed because its definition is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct GangProblem {
    /// The gang.
    pub gang: GangKey,
    /// Its pending pods: each should carry the message.
    pub pods: Vec<PodRef>,
    /// What is wrong.
    pub error: GangError,
}

/// The gangs of a snapshot, and the definitions that could not be used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assembly {
    /// Well-formed gangs with at least one pending member, sorted by key.
    pub gangs: Vec<Gang>,
    /// Malformed ones; their pods stay pending.
    pub problems: Vec<GangProblem>,
}

fn ann<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata.annotations.as_ref()?.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn lab<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata.labels.as_ref()?.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().unwrap_or_default(),
    }
}

fn is_pending(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
}

fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Def {
    Grove(usize),
    Composite(usize),
    Workload(usize),
    Coscheduling(usize),
    Annotations,
    Single,
}

/// Groups the live pods of `scheduler_name` into gangs.
pub fn assemble(inputs: &GangInputs<'_>) -> Assembly {
    let mut out = Assembly::default();
    let mut grove_of: HashMap<PodRef, (usize, String)> = HashMap::new();
    let mut early_problems: Vec<(GangKey, PodRef, GangError)> = Vec::new();
    for (gi, g) in inputs.pod_gangs.iter().enumerate() {
        let gns = g.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        for pg in &g.spec.podgroups {
            for r in &pg.pod_references {
                let ns = if r.namespace.is_empty() { gns.clone() } else { r.namespace.clone() };
                let pr = PodRef { namespace: ns, name: r.name.clone() };
                if let Some((first, _)) = grove_of.get(&pr) {
                    let first_name = inputs.pod_gangs[*first].metadata.name.clone().unwrap_or_default();
                    early_problems.push((
                        GangKey { namespace: gns.clone(), name: g.metadata.name.clone().unwrap_or_default() },
                        pr.clone(),
                        GangError::TwoGangs {
                            pod: pr.to_string(),
                            first: format!("PodGang {first_name}"),
                            second: format!("PodGang {}", g.metadata.name.clone().unwrap_or_default()),
                        },
                    ));
                    continue;
                }
                grove_of.insert(pr, (gi, pg.name.clone()));
            }
        }
    }
    // (definition, gang key) → pods
    let mut groups: BTreeMap<(GangKey, Def), Vec<&Pod>> = BTreeMap::new();
    let mut broken: BTreeMap<GangKey, (Vec<PodRef>, Vec<GangError>)> = BTreeMap::new();
    for (key, pr, err) in early_problems {
        let e = broken.entry(key).or_default();
        e.0.push(pr);
        e.1.push(err);
    }
    for pod in inputs.pods {
        if pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) != Some(inputs.scheduler_name) || !is_live(pod) {
            continue;
        }
        let pr = pod_ref(pod);
        let ns = pr.namespace.clone();
        let (def, name) = if let Some((gi, _)) = grove_of.get(&pr) {
            (Def::Grove(*gi), inputs.pod_gangs[*gi].metadata.name.clone().unwrap_or_default())
        } else if let Some(sg) =
            pod.spec.as_ref().and_then(|s| s.scheduling_group.as_ref()).and_then(|g| g.pod_group_name.clone())
        {
            match find_meta(inputs.workload_pod_groups.iter().map(|g| &g.metadata), &ns, &sg) {
                Some(i) => match composite_root(inputs, i) {
                    Ok(None) => (Def::Workload(i), sg),
                    Ok(Some(ci)) => {
                        (Def::Composite(ci), inputs.composite_pod_groups[ci].metadata.name.clone().unwrap_or_default())
                    }
                    Err(problem) => {
                        let (group, error) = *problem;
                        let e = broken.entry(GangKey { namespace: ns.clone(), name: group }).or_default();
                        e.1.push(error);
                        e.0.push(pr);
                        continue;
                    }
                },
                None => {
                    let key = GangKey { namespace: ns.clone(), name: sg.clone() };
                    let e = broken.entry(key).or_default();
                    e.1.push(GangError::MissingGroup {
                        pod: pr.to_string(),
                        via: "spec.schedulingGroup.podGroupName",
                        kind: "PodGroup (scheduling.k8s.io)",
                        group: sg,
                        namespace: ns,
                    });
                    e.0.push(pr);
                    continue;
                }
            }
        } else if let Some(pg) = lab(pod, keys::COSCHEDULING_POD_GROUP) {
            match find_meta(inputs.coscheduling_pod_groups.iter().map(|g| &g.metadata), &ns, pg) {
                Some(i) => (Def::Coscheduling(i), pg.to_string()),
                None => {
                    let key = GangKey { namespace: ns.clone(), name: pg.to_string() };
                    let e = broken.entry(key).or_default();
                    e.1.push(GangError::MissingGroup {
                        pod: pr.to_string(),
                        via: "label scheduling.x-k8s.io/pod-group",
                        kind: "PodGroup (scheduling.x-k8s.io/v1alpha1)",
                        group: pg.to_string(),
                        namespace: ns,
                    });
                    e.0.push(pr);
                    continue;
                }
            }
        } else if let Some(g) = lab(pod, keys::GANG) {
            (Def::Annotations, g.to_string())
        } else {
            (Def::Single, pr.name.clone())
        };
        groups.entry((GangKey { namespace: ns, name }, def)).or_default().push(pod);
    }

    for ((key, def), pods) in groups {
        match build(inputs, &key, def, &pods) {
            Ok(Some(g)) if !broken.contains_key(&key) => out.gangs.push(g),
            Ok(_) => {}
            Err(errs) => {
                let e = broken.entry(key).or_default();
                e.0.extend(pods.iter().filter(|p| is_pending(p)).map(|p| pod_ref(p)));
                e.1.extend(errs);
            }
        }
    }
    for (gang, (mut pods, errors)) in broken {
        pods.sort();
        pods.dedup();
        for error in errors {
            out.problems.push(GangProblem { gang: gang.clone(), pods: pods.clone(), error });
        }
    }
    out
}

/// The CompositePodGroup whose gang the Workload PodGroup `i` joins: `None` when it has
/// no parent or its parent schedules its children one by one (`basic`). Phalanx maps one
/// CompositePodGroup level over PodGroups (the composite is the gang, each PodGroup a
/// role with its own minimum and topology); anything it cannot map is an error naming
/// the object, with the group the pods should report it under.
fn composite_root(inputs: &GangInputs<'_>, i: usize) -> Result<Option<usize>, Box<(String, GangError)>> {
    let pg = &inputs.workload_pod_groups[i];
    let ns = pg.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let pg_name = pg.metadata.name.clone().unwrap_or_default();
    let Some(parent) = pg.spec.parent_composite_pod_group_name.as_deref().filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let find = |name: &str| find_meta(inputs.composite_pod_groups.iter().map(|c| &c.metadata), &ns, name);
    let Some(ci) = find(parent) else {
        return Err(Box::new((
            parent.to_string(),
            GangError::Unsupported {
                object: format!("PodGroup {ns}/{pg_name}"),
                what: format!(
                    "spec.parentCompositePodGroupName names CompositePodGroup {parent:?}, which does not exist (or the \
                     cluster does not serve CompositePodGroup, alpha in 1.37)"
                ),
                hint: "create it, or remove parentCompositePodGroupName".into(),
            },
        )));
    };
    // Depth of the tree above the PodGroup, as upstream counts it (the PodGroup is level 1).
    let mut chain = vec![parent.to_string()];
    let mut at = ci;
    while let Some(up) = inputs.composite_pod_groups[at].spec.parent_composite_pod_group_name.as_deref() {
        if up.is_empty() || chain.iter().any(|c| c == up) || chain.len() >= workload::MAX_TREE_DEPTH {
            break;
        }
        chain.push(up.to_string());
        match find(up) {
            Some(next) => at = next,
            None => break,
        }
    }
    let root = chain.last().cloned().unwrap_or_default();
    let c = &inputs.composite_pod_groups[ci];
    if chain.len() > 1 {
        return Err(Box::new((
            root,
            GangError::Unsupported {
                object: format!("PodGroup {ns}/{pg_name}"),
                what: format!(
                    "its CompositePodGroup tree is {} levels deep ({pg_name} ▸ {}); Phalanx places one \
                     CompositePodGroup level over PodGroups",
                    chain.len() + 1,
                    chain.join(" ▸ ")
                ),
                hint: "flatten the tree to CompositePodGroup ▸ PodGroup (the composite's topology key for the \
                       whole set, each PodGroup's for its own pods)"
                    .into(),
            },
        )));
    }
    match (&c.spec.scheduling_policy.gang, &c.spec.scheduling_policy.basic) {
        (Some(_), _) => Ok(Some(ci)),
        (None, _) if c.topology_key().is_some() => Err(Box::new((
            parent.to_string(),
            GangError::Unsupported {
                object: format!("CompositePodGroup {ns}/{parent}"),
                what: "a basic policy with a topology constraint: its PodGroups are scheduled one by one, so Phalanx \
                       cannot keep them in one domain"
                    .into(),
                hint: "use schedulingPolicy.gang to place them together, or drop schedulingConstraints".into(),
            },
        ))),
        (None, _) => Ok(None),
    }
}

fn find_meta<'a>(
    mut metas: impl Iterator<Item = &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    ns: &str,
    name: &str,
) -> Option<usize> {
    metas.position(|m| m.name.as_deref() == Some(name) && m.namespace.as_deref().unwrap_or("default") == ns)
}

/// The roles of a gang CompositePodGroup: one per child PodGroup, with the child's
/// minimum and topology key; and the gang's minimum (the sum). `pending` is in member order.
fn composite_roles(
    inputs: &GangInputs<'_>,
    ci: usize,
    pending: &[&Pod],
    bound_pods: &[&Pod],
) -> (Vec<Role>, u32, Vec<GangError>) {
    let c = &inputs.composite_pod_groups[ci];
    let ns = c.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = c.metadata.name.clone().unwrap_or_default();
    let object = format!("CompositePodGroup {ns}/{name}");
    let mut errs = Vec::new();
    let mut children: Vec<&WorkloadPodGroup> = inputs
        .workload_pod_groups
        .iter()
        .filter(|g| {
            g.metadata.namespace.as_deref().unwrap_or("default") == ns
                && g.spec.parent_composite_pod_group_name.as_deref() == Some(name.as_str())
        })
        .collect();
    children.sort_by_key(|g| g.metadata.name.clone());
    let want = c.spec.scheduling_policy.gang.as_ref().map_or(0, |g| g.min_group_count);
    if want < 1 {
        errs.push(GangError::InvalidNumber {
            object: object.clone(),
            key: "spec.schedulingPolicy.gang.minGroupCount".into(),
            value: want.to_string(),
            min: 1,
            hint: "set it to how many PodGroups must start together",
        });
    } else if (want as usize) < children.len() {
        errs.push(GangError::Unsupported {
            object: object.clone(),
            what: format!(
                "minGroupCount {want} of {} PodGroups: Phalanx places every PodGroup of a gang CompositePodGroup",
                children.len()
            ),
            hint: format!("set minGroupCount to {}, or split the PodGroups into separate composites", children.len()),
        });
    } else if (want as usize) > children.len() {
        errs.push(GangError::Unsupported {
            object: object.clone(),
            what: format!("minGroupCount {want} but only {} PodGroup(s) name it as parent", children.len()),
            hint: "create the missing PodGroups (the gang waits for them)".into(),
        });
    }
    let group_of = |p: &Pod| p.spec.as_ref()?.scheduling_group.as_ref()?.pod_group_name.clone();
    let mut roles = Vec::new();
    let mut sum = 0u32;
    for g in children {
        let gname = g.metadata.name.clone().unwrap_or_default();
        let min = pod_group_min(g, &format!("PodGroup {ns}/{gname}"), &mut errs);
        sum += min;
        let idx = (0..pending.len()).filter(|&i| group_of(pending[i]).as_deref() == Some(gname.as_str())).collect();
        let bound = bound_pods.iter().filter(|p| group_of(p).as_deref() == Some(gname.as_str())).count() as u32;
        let topology = TopologyRequirement { required: g.topology_key().map(str::to_string), preferred: None };
        roles.push(Role { name: gname, min, topology, members: idx, bound });
    }
    (roles, sum.max(1), errs)
}

/// How many pods of Workload PodGroup `pg` must be placed together: `minCount` of a gang
/// policy, 1 for a basic one; a missing or invalid policy is reported on `errs`.
fn pod_group_min(pg: &WorkloadPodGroup, object: &str, errs: &mut Vec<GangError>) -> u32 {
    let policy = &pg.spec.scheduling_policy;
    match (&policy.gang, &policy.basic) {
        (Some(g), _) if g.min_count >= 1 => g.min_count as u32,
        (Some(g), _) => {
            errs.push(GangError::InvalidNumber {
                object: object.into(),
                key: "spec.schedulingPolicy.gang.minCount".into(),
                value: g.min_count.to_string(),
                min: 1,
                hint: "set it to how many pods must start together",
            });
            1
        }
        (None, Some(_)) => 1,
        (None, None) => {
            errs.push(GangError::NoPolicy { object: object.into() });
            1
        }
    }
}

/// Collects one value that all pods must agree on.
fn agree(
    gang: &GangKey,
    key: &str,
    pods: &[&Pod],
    get: impl Fn(&Pod) -> Option<String>,
) -> Result<Option<String>, GangError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for p in pods {
        if let Some(v) = get(p) {
            seen.entry(v).or_insert_with(|| pod_ref(p).name);
        }
    }
    match seen.len() {
        0 => Ok(None),
        1 => Ok(seen.into_keys().next()),
        _ => Err(GangError::Conflict {
            gang: gang.to_string(),
            key: key.to_string(),
            values: seen.iter().map(|(v, p)| format!("{v:?} on {p}")).collect::<Vec<_>>().join(", "),
        }),
    }
}

fn parse_num(object: &str, key: &str, value: &str, min: u64, hint: &'static str) -> Result<u64, GangError> {
    match value.trim().parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(GangError::InvalidNumber { object: object.into(), key: key.into(), value: value.into(), min, hint }),
    }
}

fn pack(c: &Option<GroveTopologyConstraint>) -> TopologyRequirement {
    let p = c.as_ref().and_then(|c| c.pack_constraint.as_ref());
    TopologyRequirement {
        required: p.and_then(|p| p.required.clone()).filter(|s| !s.is_empty()),
        preferred: p.and_then(|p| p.preferred.clone()).filter(|s| !s.is_empty()),
    }
}

fn build(inputs: &GangInputs<'_>, key: &GangKey, def: Def, pods: &[&Pod]) -> Result<Option<Gang>, Vec<GangError>> {
    let mut errs = Vec::new();
    let mut pending: Vec<&Pod> = pods.iter().copied().filter(|p| is_pending(p)).collect();
    pending.sort_by_key(|p| pod_ref(p));
    if pending.is_empty() {
        return Ok(None);
    }
    let bound_pods: Vec<&Pod> = pods.iter().copied().filter(|p| !is_pending(p)).collect();
    let members: Vec<Member> = pending
        .iter()
        .map(|p| Member {
            pod: pod_ref(p),
            role: lab(p, keys::ROLE).map(str::to_string),
            pd_group: lab(p, keys::PD_GROUP).map(str::to_string),
        })
        .collect();

    // Topology from the pods (phalanx or KAI annotations); a group object may override.
    let mut topo = TopologyRequirement::default();
    match agree(key, keys::TOPOLOGY_REQUIRED, pods, |p| {
        ann(p, keys::TOPOLOGY_REQUIRED).or_else(|| ann(p, keys::KAI_TOPOLOGY_REQUIRED)).map(str::to_string)
    }) {
        Ok(v) => topo.required = v,
        Err(e) => errs.push(e),
    }
    match agree(key, keys::TOPOLOGY_PREFERRED, pods, |p| {
        ann(p, keys::TOPOLOGY_PREFERRED).or_else(|| ann(p, keys::KAI_TOPOLOGY_PREFERRED)).map(str::to_string)
    }) {
        Ok(v) => topo.preferred = v,
        Err(e) => errs.push(e),
    }
    let group_ann = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, k: &str| {
        m.annotations.as_ref().and_then(|a| a.get(k)).map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    };

    let total_seen = pods.len() as u32;
    let mut timeout = None;
    let mut role_mins: BTreeMap<String, u32> = BTreeMap::new();
    let mut roles: Vec<Role> = Vec::new();
    let source;
    let min_members: u32;
    match def {
        Def::Single => {
            source = GangSource::SinglePod;
            min_members = 1;
        }
        Def::Annotations | Def::Coscheduling(_) | Def::Workload(_) => {
            let group_meta = match def {
                Def::Coscheduling(i) => Some(&inputs.coscheduling_pod_groups[i].metadata),
                Def::Workload(i) => Some(&inputs.workload_pod_groups[i].metadata),
                _ => None,
            };
            if let Some(m) = group_meta {
                if let Some(v) = group_ann(m, keys::TOPOLOGY_REQUIRED) {
                    topo.required = Some(v);
                }
                if let Some(v) = group_ann(m, keys::TOPOLOGY_PREFERRED) {
                    topo.preferred = Some(v);
                }
            }
            min_members = match def {
                Def::Coscheduling(i) => {
                    let pg = &inputs.coscheduling_pod_groups[i];
                    source = GangSource::CoschedulingPodGroup;
                    timeout = pg.spec.schedule_timeout_seconds;
                    if pg.spec.min_member < 1 {
                        errs.push(GangError::InvalidNumber {
                            object: format!("PodGroup {key}"),
                            key: "spec.minMember".into(),
                            value: pg.spec.min_member.to_string(),
                            min: 1,
                            hint: "set it to how many pods must start together",
                        });
                    }
                    pg.spec.min_member.max(1) as u32
                }
                Def::Workload(i) => {
                    let pg = &inputs.workload_pod_groups[i];
                    source = GangSource::WorkloadPodGroup;
                    if let Some(t) = pg.topology_key() {
                        topo.required = Some(t.to_string());
                    }
                    pod_group_min(pg, &format!("PodGroup {key}"), &mut errs)
                }
                _ => {
                    source = GangSource::Annotations;
                    match agree(key, keys::GANG_MIN_MEMBERS, pods, |p| {
                        ann(p, keys::GANG_MIN_MEMBERS).map(str::to_string)
                    }) {
                        Ok(Some(v)) => {
                            let obj = format!("pod {}", pending[0].metadata.name.as_deref().unwrap_or(""));
                            match parse_num(
                                &obj,
                                keys::GANG_MIN_MEMBERS,
                                &v,
                                1,
                                "set it to how many pods of the gang must start together",
                            ) {
                                Ok(n) => n as u32,
                                Err(e) => {
                                    errs.push(e);
                                    1
                                }
                            }
                        }
                        Ok(None) => total_seen,
                        Err(e) => {
                            errs.push(e);
                            1
                        }
                    }
                }
            };
            // Per-role minimums: phalanx.dev/gang-min-<role> on the pods or the group object.
            let mut role_keys: Vec<String> = pods
                .iter()
                .flat_map(|p| p.metadata.annotations.iter().flatten().map(|(k, _)| k.clone()))
                .chain(group_meta.iter().flat_map(|m| m.annotations.iter().flatten().map(|(k, _)| k.clone())))
                .filter(|k| k.starts_with(keys::GANG_MIN_ROLE_PREFIX) && k != keys::GANG_MIN_MEMBERS)
                .collect();
            role_keys.sort();
            role_keys.dedup();
            for rk in role_keys {
                let role = rk[keys::GANG_MIN_ROLE_PREFIX.len()..].to_string();
                let from_group = group_meta.and_then(|m| group_ann(m, &rk));
                let v = match from_group {
                    Some(v) => Ok(Some(v)),
                    None => agree(key, &rk, pods, |p| ann(p, &rk).map(str::to_string)),
                };
                match v {
                    Ok(Some(v)) => match parse_num(
                        &format!("gang {key}"),
                        &rk,
                        &v,
                        0,
                        "set it to how many pods of this role must start together",
                    ) {
                        Ok(n) => {
                            role_mins.insert(role, n as u32);
                        }
                        Err(e) => errs.push(e),
                    },
                    Ok(None) => {}
                    Err(e) => errs.push(e),
                }
            }
            let mut by_role: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (i, m) in members.iter().enumerate() {
                if let Some(r) = &m.role {
                    by_role.entry(r.clone()).or_default().push(i);
                }
            }
            let mut bound_by_role: BTreeMap<String, u32> = BTreeMap::new();
            for p in &bound_pods {
                if let Some(r) = lab(p, keys::ROLE) {
                    *bound_by_role.entry(r.to_string()).or_default() += 1;
                }
            }
            for (role, min) in &role_mins {
                if !by_role.contains_key(role) && !bound_by_role.contains_key(role) {
                    errs.push(GangError::RoleWithoutMembers {
                        gang: key.to_string(),
                        key: format!("{}{role}", keys::GANG_MIN_ROLE_PREFIX),
                        role_label: keys::ROLE,
                        role: role.clone(),
                    });
                    continue;
                }
                roles.push(Role {
                    name: role.clone(),
                    min: *min,
                    topology: TopologyRequirement::default(),
                    members: by_role.remove(role).unwrap_or_default(),
                    bound: bound_by_role.get(role).copied().unwrap_or(0),
                });
            }
            for (role, idx) in by_role {
                roles.push(Role {
                    name: role.clone(),
                    min: 0,
                    topology: TopologyRequirement::default(),
                    members: idx,
                    bound: bound_by_role.get(&role).copied().unwrap_or(0),
                });
            }
            for (role, n) in bound_by_role {
                if !roles.iter().any(|r| r.name == role) {
                    roles.push(Role {
                        name: role,
                        min: 0,
                        topology: TopologyRequirement::default(),
                        members: vec![],
                        bound: n,
                    });
                }
            }
            let sum: u32 = role_mins.values().sum();
            if sum > min_members && source == GangSource::Annotations {
                errs.push(GangError::RolesExceedGang { gang: key.to_string(), sum, min: min_members });
            }
        }
        Def::Composite(ci) => {
            source = GangSource::WorkloadPodGroup;
            let (r, min, problems) = composite_roles(inputs, ci, &pending, &bound_pods);
            roles = r;
            errs.extend(problems);
            if let Some(k) = inputs.composite_pod_groups[ci].topology_key() {
                topo.required = Some(k.to_string());
            }
            min_members = min;
        }
        Def::Grove(gi) => {
            let g = &inputs.pod_gangs[gi];
            source = GangSource::GrovePodGang;
            let gang_pack = pack(&g.spec.topology_constraint);
            if gang_pack.required.is_some() {
                topo.required = gang_pack.required;
            }
            if gang_pack.preferred.is_some() {
                topo.preferred = gang_pack.preferred;
            }
            let mut sum = 0u32;
            for pg in &g.spec.podgroups {
                if pg.min_replicas < 0 {
                    errs.push(GangError::InvalidNumber {
                        object: format!("PodGang {key} podgroup {}", pg.name),
                        key: "minReplicas".into(),
                        value: pg.min_replicas.to_string(),
                        min: 0,
                        hint: "set it to how many pods of the group must start together",
                    });
                }
                let min = pg.min_replicas.max(0) as u32;
                sum += min;
                let mut t = pack(&pg.topology_constraint);
                // A constraint group narrows each of its groups (approximation: per group).
                for cg in &g.spec.topology_constraint_group_configs {
                    if cg.pod_group_names.contains(&pg.name) {
                        let c = pack(&cg.topology_constraint);
                        t.required = t.required.or(c.required);
                        t.preferred = t.preferred.or(c.preferred);
                    }
                }
                let names: Vec<&str> = pg.pod_references.iter().map(|r| r.name.as_str()).collect();
                let idx: Vec<usize> = members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| names.contains(&m.pod.name.as_str()))
                    .map(|(i, _)| i)
                    .collect();
                let bound = bound_pods.iter().filter(|p| names.contains(&pod_ref(p).name.as_str())).count() as u32;
                roles.push(Role { name: pg.name.clone(), min, topology: t, members: idx, bound });
            }
            min_members = sum.max(1);
        }
    }

    // Prefill/decode groups.
    let mut pd: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        if let Some(g) = &m.pd_group {
            pd.entry(g.clone()).or_default().push(i);
        }
    }
    let mut pd_groups = Vec::new();
    for (name, idx) in pd {
        let group_pods: Vec<&Pod> = idx.iter().map(|&i| pending[i]).collect();
        let mut ms = Vec::new();
        for &i in &idx {
            let r = match members[i].role.as_deref() {
                Some("prefill") => PdRole::Prefill,
                Some("decode") => PdRole::Decode,
                Some("both") | None => PdRole::Both,
                Some(other) => {
                    errs.push(GangError::NotOneOf {
                        object: format!("pod {}", members[i].pod),
                        key: keys::ROLE.into(),
                        value: other.into(),
                        allowed: "prefill, decode, both (required on pods with phalanx.dev/pd-group)",
                    });
                    continue;
                }
            };
            ms.push((i, r));
        }
        let gk = GangKey { namespace: key.namespace.clone(), name: format!("{} pd-group {name}", key.name) };
        let mut get = |k: &'static str| match agree(&gk, k, &group_pods, |p| ann(p, k).map(str::to_string)) {
            Ok(v) => v,
            Err(e) => {
                errs.push(e);
                None
            }
        };
        let kv_domain = get(keys::KV_DOMAIN);
        let policy_s = get(keys::KV_DOMAIN_POLICY);
        let bytes_s = get(keys::KV_BYTES_PER_TOKEN);
        let isl_s = get(keys::TYPICAL_ISL);
        let obj = format!("pd-group {name} of gang {key}");
        let policy = match policy_s.as_deref() {
            None | Some("preferred") => KvPolicy::Preferred,
            Some("required") => KvPolicy::Required,
            Some(other) => {
                errs.push(GangError::NotOneOf {
                    object: obj.clone(),
                    key: keys::KV_DOMAIN_POLICY.into(),
                    value: other.into(),
                    allowed: "required, preferred",
                });
                KvPolicy::Preferred
            }
        };
        let mut num = |s: Option<String>, k: &str, hint| {
            s.and_then(|s| parse_num(&obj, k, &s, 1, hint).map_err(|e| errs.push(e)).ok())
        };
        let kv_bytes_per_token =
            num(bytes_s, keys::KV_BYTES_PER_TOKEN, "give the model's KV cache size per token in bytes");
        let typical_isl = num(isl_s, keys::TYPICAL_ISL, "give the typical prompt length in tokens");
        pd_groups.push(PdGroup { name, kv_domain, policy, kv_bytes_per_token, typical_isl, members: ms });
    }

    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Some(Gang {
        key: key.clone(),
        source,
        members,
        bound: bound_pods.len() as u32,
        min_members,
        roles,
        topology: topo,
        pd_groups,
        schedule_timeout_seconds: timeout,
    }))
}
