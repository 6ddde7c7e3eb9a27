//! Node-level Filter rules users expect from kube-scheduler: cordon, nodeSelector,
//! required node affinity, taints and tolerations, CPU / memory / pod-count capacity.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement, Pod, Taint, Toleration};

use super::quantity::milli;

/// What a pod asks of a node, beyond devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// CPU, millicores.
    pub cpu_milli: i128,
    /// Memory, milli-bytes (Kubernetes quantity thousandths).
    pub memory_milli: i128,
}

impl PodRequests {
    /// Effective requests: the sum over containers, or the largest init container if
    /// that is more (kube-scheduler's rule, without sidecars).
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = &pod.spec else { return Self::default() };
        let get = |c: &k8s_openapi::api::core::v1::Container, k: &str| -> i128 {
            c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(k)).and_then(milli).unwrap_or(0)
        };
        let mut me = Self::default();
        for c in &spec.containers {
            me.cpu_milli += get(c, "cpu");
            me.memory_milli += get(c, "memory");
        }
        for c in spec.init_containers.iter().flatten() {
            me.cpu_milli = me.cpu_milli.max(get(c, "cpu"));
            me.memory_milli = me.memory_milli.max(get(c, "memory"));
        }
        if let Some(o) = &spec.overhead {
            me.cpu_milli += o.get("cpu").and_then(milli).unwrap_or(0);
            me.memory_milli += o.get("memory").and_then(milli).unwrap_or(0);
        }
        me
    }
}

/// A node's allocatable resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU, millicores.
    pub cpu_milli: i128,
    /// Memory, milli-bytes.
    pub memory_milli: i128,
    /// Pods.
    pub pods: i64,
}

impl Allocatable {
    /// Reads `status.allocatable` (falls back to `capacity`; 110 pods if unset).
    pub fn of(node: &Node) -> Self {
        let st = node.status.as_ref();
        let m = st.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let get = |k: &str| m.and_then(|m| m.get(k)).and_then(milli);
        Self {
            cpu_milli: get("cpu").unwrap_or(0),
            memory_milli: get("memory").unwrap_or(0),
            pods: get("pods").map(|p| (p / 1000) as i64).unwrap_or(110),
        }
    }
}

/// Why a node is not eligible for a pod regardless of what else is placed.
pub fn static_misfit(pod: &Pod, node: &Node) -> Option<String> {
    let spec = pod.spec.as_ref();
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or("");
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let tolerated = spec
            .and_then(|s| s.tolerations.as_ref())
            .is_some_and(|t| t.iter().any(|t| tolerates(t, "node.kubernetes.io/unschedulable", None, "NoSchedule")));
        if !tolerated {
            return Some("node is cordoned (unschedulable)".into());
        }
    }
    if let Some(sel) = spec.and_then(|s| s.node_selector.as_ref()) {
        for (k, v) in sel {
            if labels.get(k) != Some(v) {
                return Some(format!("node does not match nodeSelector {k}={v}"));
            }
        }
    }
    if let Some(req) = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref())
        && !node_selector_matches(req, labels, name)
    {
        return Some("node does not match the pod's required node affinity".into());
    }
    for t in node.spec.as_ref().and_then(|s| s.taints.as_ref()).into_iter().flatten() {
        if !untolerated(t, spec.and_then(|s| s.tolerations.as_deref()).unwrap_or(&[])) {
            continue;
        }
        return Some(format!(
            "node has taint {}{}:{} that the pod does not tolerate",
            t.key,
            t.value.as_ref().map(|v| format!("={v}")).unwrap_or_default(),
            t.effect
        ));
    }
    None
}

fn untolerated(t: &Taint, tolerations: &[Toleration]) -> bool {
    matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
        && !tolerations.iter().any(|tol| tolerates(tol, &t.key, t.value.as_deref(), &t.effect))
}

/// `v1.Toleration.ToleratesTaint`.
fn tolerates(tol: &Toleration, key: &str, value: Option<&str>, effect: &str) -> bool {
    if let Some(e) = tol.effect.as_deref().filter(|e| !e.is_empty())
        && e != effect
    {
        return false;
    }
    let tkey = tol.key.as_deref().unwrap_or("");
    if !tkey.is_empty() && tkey != key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => !tkey.is_empty() && tol.value.as_deref().unwrap_or("") == value.unwrap_or(""),
        _ => false,
    }
}

/// Whether a `NodeSelector` (terms ORed, requirements ANDed) matches the node.
pub fn node_selector_matches(sel: &NodeSelector, labels: &BTreeMap<String, String>, name: &str) -> bool {
    sel.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
        let fields = term.match_fields.as_deref().unwrap_or(&[]);
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        exprs.iter().all(|r| requirement(r, labels.get(&r.key).map(String::as_str)))
            && fields.iter().all(|r| r.key == "metadata.name" && requirement(r, Some(name)))
    })
}

fn requirement(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let vals = r.values.as_deref().unwrap_or(&[]);
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| vals.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !vals.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => matches!((value.and_then(num), vals.first().and_then(|s| num(s))), (Some(a), Some(b)) if a > b),
        "Lt" => matches!((value.and_then(num), vals.first().and_then(|s| num(s))), (Some(a), Some(b)) if a < b),
        _ => false,
    }
}

/// A key that is equal for pods whose static node rules are equal, to cache
/// [`static_misfit`] per node.
pub fn static_signature(pod: &Pod) -> String {
    let Some(s) = &pod.spec else { return String::new() };
    format!(
        "{:?}|{:?}|{:?}",
        s.node_selector,
        s.affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
        s.tolerations
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSelectorTerm, NodeSpec, PodSpec};
    use phalanx_topology::testing::node;

    fn pod(spec: PodSpec) -> Pod {
        Pod { spec: Some(spec), ..Default::default() }
    }

    #[test]
    fn filter_rules_table() {
        let mut tainted = node("t", &[("pool", "gpu")]);
        tainted.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "gpu".into(),
                value: Some("true".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }]),
            ..Default::default()
        });
        let mut cordoned = node("c", &[]);
        cordoned.spec = Some(NodeSpec { unschedulable: Some(true), ..Default::default() });
        let plain = node("p", &[("pool", "cpu"), ("gen", "5")]);
        let tol = Toleration { key: Some("gpu".into()), operator: Some("Exists".into()), ..Default::default() };
        let affinity = |op: &str, vals: &[&str]| Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "gen".into(),
                            operator: op.into(),
                            values: Some(vals.iter().map(|s| s.to_string()).collect()),
                        }]),
                        match_fields: None,
                    }],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases: Vec<(&str, PodSpec, &Node, Option<&str>)> = vec![
            ("no rules fit a plain node", PodSpec::default(), &plain, None),
            ("untolerated taint", PodSpec::default(), &tainted, Some("taint gpu=true:NoSchedule")),
            ("tolerated taint", PodSpec { tolerations: Some(vec![tol.clone()]), ..Default::default() }, &tainted, None),
            ("cordoned", PodSpec::default(), &cordoned, Some("cordoned")),
            (
                "nodeSelector mismatch",
                PodSpec { node_selector: Some([("pool".to_string(), "gpu".to_string())].into()), ..Default::default() },
                &plain,
                Some("nodeSelector pool=gpu"),
            ),
            (
                "affinity In holds",
                PodSpec { affinity: Some(affinity("In", &["5"])), ..Default::default() },
                &plain,
                None,
            ),
            (
                "affinity Gt fails",
                PodSpec { affinity: Some(affinity("Gt", &["7"])), ..Default::default() },
                &plain,
                Some("required node affinity"),
            ),
            (
                "affinity on missing label",
                PodSpec { affinity: Some(affinity("Exists", &[])), ..Default::default() },
                &cordoned,
                Some("cordoned"),
            ),
        ];
        for (name, spec, n, want) in cases {
            let got = static_misfit(&pod(spec), n);
            match want {
                None => assert_eq!(got, None, "{name}"),
                Some(w) => assert!(got.as_deref().is_some_and(|g| g.contains(w)), "{name}: {got:?}"),
            }
        }
    }
}
