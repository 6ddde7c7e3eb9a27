//! A pod's ResourceClaims: finding them (direct, or generated from a template), what
//! they ask for per driver, and the preference variants the solver tries first.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Pod, PodResourceClaim};
use k8s_openapi::api::resource::v1::{DeviceClass, DeviceConstraint, ResourceClaim, ResourceClaimTemplate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use phalanx_gang::workload::WorkloadPodGroup;

use crate::dra::device_claim;
use phalanx_topology::names;

/// The ResourceClaim kube-controller-manager generated for the pod's template claim
/// `claim`: from the pod's `status.resourceClaimStatuses`, else, when the claim is one
/// its PodGroup shares (same name and template, KEP-5729), from the PodGroup's
/// `status.resourceClaimStatuses` (1.36 lists a group claim there only). `group` is the
/// pod's Workload PodGroup, if any.
pub fn generated_claim_name(pod: &Pod, claim: &PodResourceClaim, group: Option<&WorkloadPodGroup>) -> Option<String> {
    let from_pod = pod
        .status
        .as_ref()
        .and_then(|s| s.resource_claim_statuses.as_ref())
        .and_then(|l| l.iter().find(|s| s.name == claim.name))
        .and_then(|s| s.resource_claim_name.clone());
    from_pod.or_else(|| {
        let group = group?;
        let shared = group.spec.resource_claims.iter().any(|c| {
            c.name == claim.name
                && c.resource_claim_name.is_none()
                && c.resource_claim_template_name == claim.resource_claim_template_name
        });
        let status = group.status.as_ref()?.resource_claim_statuses.iter().find(|s| s.name == claim.name);
        shared.then(|| status?.resource_claim_name.clone()).flatten()
    })
}

/// `namespace/name` of a claim.
pub type ClaimKey = (String, String);

/// The claims of a snapshot, with claims for template references that the
/// resourceclaim controller has not generated yet synthesised as it would.
#[derive(Debug, Clone, Default)]
pub struct ClaimIndex {
    claims: HashMap<ClaimKey, ResourceClaim>,
}

impl ClaimIndex {
    /// Indexes existing claims.
    pub fn new(claims: &[ResourceClaim]) -> Self {
        Self {
            claims: claims
                .iter()
                .map(|c| {
                    let k = (
                        c.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
                        c.metadata.name.clone().unwrap_or_default(),
                    );
                    (k, c.clone())
                })
                .collect(),
        }
    }

    /// A claim by key.
    pub fn get(&self, key: &ClaimKey) -> Option<&ResourceClaim> {
        self.claims.get(key)
    }

    /// Records an allocation made by a plan (so later gangs see it).
    pub fn set_allocation(&mut self, key: &ClaimKey, allocation: k8s_openapi::api::resource::v1::AllocationResult) {
        if let Some(c) = self.claims.get_mut(key) {
            c.status.get_or_insert_with(Default::default).allocation = Some(allocation);
        }
    }

    /// All claims.
    pub fn all(&self) -> impl Iterator<Item = &ResourceClaim> {
        self.claims.values()
    }

    /// Resolves the claims of a pod, in `spec.resourceClaims` order. A template
    /// reference uses `status.resourceClaimStatuses`, else a claim `<pod>-<name>` is
    /// generated from the template (what kube-controller-manager would create).
    pub fn resolve_pod(
        &mut self,
        pod: &Pod,
        group: Option<&WorkloadPodGroup>,
        templates: &[ResourceClaimTemplate],
    ) -> Result<Vec<ClaimKey>, String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let mut out = Vec::new();
        for rc in pod.spec.as_ref().and_then(|s| s.resource_claims.as_ref()).into_iter().flatten() {
            if let Some(name) = &rc.resource_claim_name {
                let key = (ns.clone(), name.clone());
                if !self.claims.contains_key(&key) {
                    return Err(format!("ResourceClaim {ns}/{name} (pod claim {:?}) does not exist", rc.name));
                }
                out.push(key);
                continue;
            }
            let Some(tmpl) = &rc.resource_claim_template_name else {
                return Err(format!(
                    "pod claim {:?} names neither resourceClaimName nor resourceClaimTemplateName",
                    rc.name
                ));
            };
            if let Some(name) = generated_claim_name(pod, rc, group) {
                let key = (ns.clone(), name.clone());
                if !self.claims.contains_key(&key) {
                    return Err(format!(
                        "generated ResourceClaim {ns}/{name} is listed in the pod status but does not exist"
                    ));
                }
                out.push(key);
                continue;
            }
            let Some(t) = templates.iter().find(|t| {
                t.metadata.name.as_deref() == Some(tmpl) && t.metadata.namespace.as_deref().unwrap_or("default") == ns
            }) else {
                return Err(format!("ResourceClaimTemplate {ns}/{tmpl} (pod claim {:?}) does not exist", rc.name));
            };
            let name = format!("{pod_name}-{}", rc.name);
            let key = (ns.clone(), name.clone());
            self.claims.entry(key.clone()).or_insert_with(|| ResourceClaim {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns.clone()),
                    labels: t.spec.as_ref().and_then(|s| s.metadata.as_ref()).and_then(|m| m.labels.clone()),
                    annotations: t.spec.as_ref().and_then(|s| s.metadata.as_ref()).and_then(|m| m.annotations.clone()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Pod".into(),
                        name: pod_name.clone(),
                        uid: pod.metadata.uid.clone().unwrap_or_default(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..Default::default()
                },
                spec: t.spec.as_ref().and_then(|s| s.spec.clone()),
                status: None,
            });
            out.push(key);
        }
        Ok(out)
    }
}

/// The driver a DeviceClass selects, read from a `device.driver == "…"` clause of its
/// CEL selectors; `None` when no such clause exists (the class may match any driver).
pub fn class_driver(class: &DeviceClass) -> Option<String> {
    for sel in class.spec.iter().flat_map(|s| s.selectors.iter().flatten()) {
        let Some(cel) = &sel.cel else { continue };
        let e = cel.expression.as_str();
        let mut rest = e;
        while let Some(pos) = rest.find("device.driver") {
            let after = rest[pos + "device.driver".len()..].trim_start();
            if let Some(after) = after.strip_prefix("==") {
                let after = after.trim_start();
                if let Some(q) = after.chars().next().filter(|c| *c == '"' || *c == '\'')
                    && let Some(end) = after[1..].find(q)
                {
                    return Some(after[1..1 + end].to_string());
                }
            }
            rest = &rest[pos + 1..];
        }
    }
    None
}

/// What a set of claims needs, per driver, at the least.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// Driver → devices (a lower bound: `All` counts 1, `firstAvailable` its smallest).
    pub per_driver: BTreeMap<String, u32>,
}

impl Demand {
    /// Adds another demand.
    pub fn add(&mut self, other: &Demand) {
        for (d, n) in &other.per_driver {
            *self.per_driver.entry(d.clone()).or_default() += n;
        }
    }

    /// GPUs asked for.
    pub fn gpus(&self) -> u32 {
        self.per_driver.get(names::GPU_DRIVER).copied().unwrap_or(0)
    }
}

/// The per-request driver and count of a claim.
#[derive(Debug, Clone)]
pub struct RequestShape {
    /// Request name.
    pub name: String,
    /// Its driver if known.
    pub driver: Option<String>,
    /// Least devices it can be satisfied with.
    pub count: u32,
}

/// The shapes of a claim's requests.
pub fn request_shapes(claim: &ResourceClaim, classes: &HashMap<String, Option<String>>) -> Vec<RequestShape> {
    let mut out = Vec::new();
    for r in device_claim(claim).and_then(|d| d.requests.as_ref()).into_iter().flatten() {
        let count =
            |mode: Option<&str>, c: Option<i64>| if mode == Some("All") { 1 } else { c.unwrap_or(1).max(0) as u32 };
        if let Some(e) = &r.exactly {
            out.push(RequestShape {
                name: r.name.clone(),
                driver: classes.get(&e.device_class_name).cloned().flatten(),
                count: count(e.allocation_mode.as_deref(), e.count),
            });
        } else if let Some(subs) = &r.first_available {
            let drivers: Vec<Option<String>> =
                subs.iter().map(|s| classes.get(&s.device_class_name).cloned().flatten()).collect();
            let same = drivers.windows(2).all(|w| w[0] == w[1]);
            out.push(RequestShape {
                name: r.name.clone(),
                driver: if same { drivers.first().cloned().flatten() } else { None },
                count: subs.iter().map(|s| count(s.allocation_mode.as_deref(), s.count)).min().unwrap_or(0),
            });
        }
    }
    out
}

/// Lower-bound demand of a claim.
pub fn demand(shapes: &[RequestShape]) -> Demand {
    let mut d = Demand::default();
    for s in shapes {
        if let Some(drv) = &s.driver {
            *d.per_driver.entry(drv.clone()).or_default() += s.count;
        }
    }
    d
}

/// How strongly a variant asks for device locality; lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Locality {
    /// GPUs in one NVLink island and NICs on the GPUs' PCIe root (or NUMA node).
    IslandAndNic,
    /// GPUs in one NVLink island.
    Island,
    /// Only what the claim itself says.
    Plain,
}

fn has_constraint(claim: &ResourceClaim, attr: &str) -> bool {
    device_claim(claim)
        .and_then(|d| d.constraints.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.match_attribute.as_deref() == Some(attr)))
}

fn with_constraint(claim: &ResourceClaim, requests: Vec<String>, attr: &str) -> ResourceClaim {
    let mut c = claim.clone();
    let dev = c.spec.get_or_insert_with(Default::default).devices.get_or_insert_with(Default::default);
    dev.constraints.get_or_insert_with(Vec::new).push(DeviceConstraint {
        requests: Some(requests),
        match_attribute: Some(attr.to_string()),
        distinct_attribute: None,
    });
    c
}

/// The variants of one claim, best first: the claim with an added `matchAttribute` on
/// `gpu.phalanx.dev/nvlinkIsland` over its GPU requests (when it asks for 2 or more
/// GPUs) and on `resource.kubernetes.io/pcieRoot` (one GPU, one NIC) or
/// `resource.kubernetes.io/numaNode` (several) over GPU and NIC requests; then with the
/// island constraint only; then as written.
pub fn variants(claim: &ResourceClaim, shapes: &[RequestShape]) -> Vec<(Locality, ResourceClaim)> {
    let gpu: Vec<&RequestShape> = shapes.iter().filter(|s| s.driver.as_deref() == Some(names::GPU_DRIVER)).collect();
    let nic: Vec<&RequestShape> = shapes.iter().filter(|s| s.driver.as_deref() == Some(names::NIC_DRIVER)).collect();
    let gpus: u32 = gpu.iter().map(|s| s.count).sum();
    let nics: u32 = nic.iter().map(|s| s.count).sum();
    let mut out = Vec::new();
    let island = (gpus >= 2 && !has_constraint(claim, names::NVLINK_ISLAND))
        .then(|| with_constraint(claim, gpu.iter().map(|s| s.name.clone()).collect(), names::NVLINK_ISLAND));
    if gpus >= 1 && nics >= 1 {
        let attr = if gpus == 1 && nics == 1 { names::PCIE_ROOT } else { names::NUMA_NODE };
        if !has_constraint(claim, attr) {
            let base = island.as_ref().unwrap_or(claim);
            let reqs = gpu.iter().chain(nic.iter()).map(|s| s.name.clone()).collect();
            out.push((Locality::IslandAndNic, with_constraint(base, reqs, attr)));
        }
    }
    if let Some(i) = island {
        out.push((Locality::Island, i));
    }
    out.push((Locality::Plain, claim.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::{
        CELDeviceSelector, DeviceClaim, DeviceClassSpec, DeviceRequest, DeviceSelector, ExactDeviceRequest,
        ResourceClaimSpec,
    };

    fn class(name: &str, expr: &str) -> DeviceClass {
        DeviceClass {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(DeviceClassSpec {
                selectors: Some(vec![DeviceSelector { cel: Some(CELDeviceSelector { expression: expr.into() }) }]),
                ..Default::default()
            }),
        }
    }

    fn claim(reqs: &[(&str, &str, i64)]) -> ResourceClaim {
        ResourceClaim {
            metadata: ObjectMeta { name: Some("c".into()), ..Default::default() },
            spec: Some(ResourceClaimSpec {
                devices: Some(DeviceClaim {
                    requests: Some(
                        reqs.iter()
                            .map(|(n, c, k)| DeviceRequest {
                                name: n.to_string(),
                                exactly: Some(ExactDeviceRequest {
                                    device_class_name: c.to_string(),
                                    count: Some(*k),
                                    ..Default::default()
                                }),
                                first_available: None,
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
            }),
            status: None,
        }
    }

    #[test]
    fn class_driver_reads_the_driver_clause() {
        assert_eq!(class_driver(&class("g", "device.driver == 'gpu.phalanx.dev'")).as_deref(), Some("gpu.phalanx.dev"));
        assert_eq!(
            class_driver(&class("n", "device.attributes['x'].y == 1 && device.driver==\"nic.phalanx.dev\"")).as_deref(),
            Some("nic.phalanx.dev")
        );
        assert_eq!(class_driver(&class("any", "true")), None);
    }

    #[test]
    fn variants_add_island_then_nic_alignment() {
        let classes: HashMap<String, Option<String>> = [
            ("gpu".to_string(), Some(names::GPU_DRIVER.to_string())),
            ("nic".to_string(), Some(names::NIC_DRIVER.to_string())),
        ]
        .into();
        let c = claim(&[("g", "gpu", 4), ("n", "nic", 4)]);
        let shapes = request_shapes(&c, &classes);
        assert_eq!(demand(&shapes).gpus(), 4);
        let v = variants(&c, &shapes);
        assert_eq!(
            v.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            [Locality::IslandAndNic, Locality::Island, Locality::Plain]
        );
        let cons = |c: &ResourceClaim| {
            device_claim(c)
                .unwrap()
                .constraints
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.match_attribute.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(cons(&v[0].1), [names::NVLINK_ISLAND, names::NUMA_NODE]);
        assert_eq!(cons(&v[1].1), [names::NVLINK_ISLAND]);
        let one = claim(&[("g", "gpu", 1), ("n", "nic", 1)]);
        let v = variants(&one, &request_shapes(&one, &classes));
        assert_eq!(cons(&v[0].1), [names::PCIE_ROOT]);
        assert_eq!(v.len(), 2);
        let single = claim(&[("g", "gpu", 1)]);
        assert_eq!(variants(&single, &request_shapes(&single, &classes)).len(), 1);
    }
}
