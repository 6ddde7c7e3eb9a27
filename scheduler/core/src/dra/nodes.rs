//! Node selection: does a slice or device (nodeName / allNodes / nodeSelector) apply to a node.

use k8s_openapi::api::core::v1::{Node, NodeSelector, NodeSelectorRequirement};

/// Upstream's `NodeMatches`: nodeName first, then allNodes, then the selector.
pub fn node_matches(
    node: &Node,
    node_name: Option<&str>,
    all_nodes: bool,
    selector: Option<&NodeSelector>,
) -> Result<bool, String> {
    match (node_name.filter(|n| !n.is_empty()), all_nodes, selector) {
        (Some(n), _, _) => Ok(node.metadata.name.as_deref() == Some(n)),
        (None, true, _) => Ok(true),
        (None, false, Some(sel)) => selector_matches(sel, node),
        _ => Ok(false),
    }
}

/// A core `NodeSelector`: terms are ORed, requirements within a term ANDed; an empty
/// term matches nothing. Invalid requirements are errors, as in upstream's nodeaffinity.
pub fn selector_matches(sel: &NodeSelector, node: &Node) -> Result<bool, String> {
    let mut matched = false;
    for term in &sel.node_selector_terms {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        for r in exprs {
            validate_label_requirement(r)?;
        }
        for r in fields {
            validate_field_requirement(r)?;
        }
        if exprs.is_empty() && fields.is_empty() {
            continue;
        }
        if !matched && exprs.iter().all(|r| label_matches(r, node)) && fields.iter().all(|r| field_matches(r, node)) {
            matched = true;
        }
    }
    Ok(matched)
}

fn values(r: &NodeSelectorRequirement) -> &[String] {
    r.values.as_deref().unwrap_or_default()
}

fn validate_label_requirement(r: &NodeSelectorRequirement) -> Result<(), String> {
    let n = values(r).len();
    let ok = match r.operator.as_str() {
        "In" | "NotIn" => n > 0,
        "Exists" | "DoesNotExist" => n == 0,
        "Gt" | "Lt" => n == 1 && values(r)[0].parse::<i64>().is_ok(),
        _ => false,
    };
    if !ok || r.key.is_empty() {
        return Err(format!("invalid node selector requirement {} {} {:?}", r.key, r.operator, values(r)));
    }
    Ok(())
}

fn validate_field_requirement(r: &NodeSelectorRequirement) -> Result<(), String> {
    if values(r).len() != 1 {
        return Err(format!(
            "unexpected number of value ({}) for node field selector operator {:?}",
            values(r).len(),
            r.operator
        ));
    }
    if r.operator != "In" && r.operator != "NotIn" {
        return Err(format!("{:?} is not a valid node field selector operator", r.operator));
    }
    Ok(())
}

fn label_matches(r: &NodeSelectorRequirement, node: &Node) -> bool {
    let label = node.metadata.labels.as_ref().and_then(|l| l.get(&r.key));
    let vals = values(r);
    match r.operator.as_str() {
        "In" => label.is_some_and(|v| vals.contains(v)),
        "NotIn" => label.is_none_or(|v| !vals.contains(v)),
        "Exists" => label.is_some(),
        "DoesNotExist" => label.is_none(),
        "Gt" | "Lt" => {
            let (Some(l), Ok(want)) = (label.and_then(|l| l.parse::<i64>().ok()), vals[0].parse::<i64>()) else {
                return false;
            };
            if r.operator == "Gt" { l > want } else { l < want }
        }
        _ => false,
    }
}

fn field_matches(r: &NodeSelectorRequirement, node: &Node) -> bool {
    let value = if r.key == "metadata.name" { node.metadata.name.as_deref() } else { None };
    let want = values(r)[0].as_str();
    match r.operator.as_str() {
        "In" => value == Some(want),
        _ => value != Some(want),
    }
}
