//! Loading a cluster snapshot from YAML: multi-document files and `kind: List`, each
//! object dispatched by `apiVersion` and `kind`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use phalanx_scheduler_core::placement::Snapshot;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Reads and merges snapshot files.
pub fn load_files(paths: &[impl AsRef<Path>]) -> Result<Snapshot> {
    let mut snap = Snapshot::default();
    for p in paths {
        let p = p.as_ref();
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        add_yaml(&mut snap, &text).with_context(|| format!("in {}", p.display()))?;
    }
    Ok(snap)
}

/// Adds every object of a YAML text (several documents, `kind: List` allowed).
pub fn add_yaml(snap: &mut Snapshot, text: &str) -> Result<()> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(doc).with_context(|| format!("document {}", i + 1))?;
        if v.is_null() {
            continue;
        }
        add_value(snap, v).with_context(|| format!("document {}", i + 1))?;
    }
    Ok(())
}

fn take<T: DeserializeOwned>(v: serde_yaml::Value, what: &str, name: &str) -> Result<T> {
    serde_yaml::from_value(v).with_context(|| format!("{what} {name:?} does not parse"))
}

fn add_value(snap: &mut Snapshot, v: serde_yaml::Value) -> Result<()> {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
    let api = v.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_string();
    let name =
        v.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or("<unnamed>").to_string();
    if kind.ends_with("List") {
        if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
            for item in items.clone() {
                add_value(snap, item)?;
            }
        }
        return Ok(());
    }
    match (api.as_str(), kind.as_str()) {
        ("v1", "Node") => snap.nodes.push(take(v, &kind, &name)?),
        ("v1", "Pod") => snap.pods.push(take(v, &kind, &name)?),
        ("resource.k8s.io/v1", "ResourceSlice") => snap.resource_slices.push(take(v, &kind, &name)?),
        ("resource.k8s.io/v1", "DeviceClass") => snap.device_classes.push(take(v, &kind, &name)?),
        ("resource.k8s.io/v1", "ResourceClaim") => snap.resource_claims.push(take(v, &kind, &name)?),
        ("resource.k8s.io/v1", "ResourceClaimTemplate") => snap.resource_claim_templates.push(take(v, &kind, &name)?),
        ("scheduling.x-k8s.io/v1alpha1", "PodGroup") => snap.coscheduling_pod_groups.push(take(v, &kind, &name)?),
        ("scheduling.k8s.io/v1alpha2" | "scheduling.k8s.io/v1alpha3" | "scheduling.k8s.io/v1beta1", "PodGroup") => {
            snap.workload_pod_groups.push(take(v, &kind, &name)?)
        }
        ("scheduling.k8s.io/v1alpha3", "CompositePodGroup") => snap.composite_pod_groups.push(take(v, &kind, &name)?),
        ("scheduler.grove.io/v1alpha1", "PodGang") => snap.pod_gangs.push(take(v, &kind, &name)?),
        ("", _) | (_, "") => bail!("object {name:?} has no apiVersion or kind"),
        _ => bail!(
            "{api} {kind} {name:?} is not part of a snapshot; expected Nodes, Pods, ResourceSlices, DeviceClasses, \
             ResourceClaims(Templates), PodGroups or PodGangs"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_documents_are_read_and_unknown_kinds_rejected() {
        let mut s = Snapshot::default();
        add_yaml(
            &mut s,
            "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: []}\n",
        )
        .unwrap();
        assert_eq!((s.nodes.len(), s.pods.len()), (1, 1));
        let err = add_yaml(&mut s, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n").unwrap_err();
        assert!(format!("{err:#}").contains("apps/v1 Deployment \"d\" is not part of a snapshot"), "{err:#}");
    }
}
