//! `kubectl create -f` for tests: every document of a YAML file, created as the given
//! client (existing objects are left alone).

use std::path::Path;

use kube::api::{Api, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::{self, Scope};
use serde::Deserialize;

use crate::Error;

/// Creates every object in the YAML file at `path` (multi-document). Objects that
/// already exist are skipped; anything else that fails is an error naming the object.
pub async fn apply_file(client: &kube::Client, path: &Path) -> Result<usize, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    apply_yaml(client, &text).await.map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))
}

/// Creates every object in `text` (multi-document YAML). Returns how many were created.
pub async fn apply_yaml(client: &kube::Client, text: &str) -> Result<usize, String> {
    let mut created = 0;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
        let value = serde_json::to_value(value).map_err(|e| e.to_string())?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let types = obj.types.clone().ok_or("a document without apiVersion and kind")?;
        let (group, version) = types.api_version.rsplit_once('/').unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        let (resource, caps) =
            discovery::pinned_kind(client, &gvk).await.map_err(|e| format!("{} not served: {e}", types.kind))?;
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => created += 1,
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("creating {} {:?}: {e}", types.kind, obj.metadata.name)),
        }
    }
    Ok(created)
}
