//! The commit protocol: turn a gang's plan into API state, all or nothing.
//!
//! Binding is irreversible; claim allocations are not. So, for one gang:
//! 1. record the intent: `status.nominatedNodeName` on every member (a gang of one needs
//!    none: its claims' `reservedFor` records it);
//! 2. for every claim: add the `resource.kubernetes.io/delete-protection` finalizer,
//!    then write `status.allocation` and append the member to `status.reservedFor`,
//!    with optimistic concurrency (abort if someone else allocated the claim);
//! 3. only when every claim of every member is written, bind every member.
//!
//! A failure before 3 rolls back what this attempt wrote. A scheduler that died half-way
//! finds the intent on the pods and [`Committer::recover`] rolls the gang forward (every
//! claim written: bind) or back (release the claims, clear the intent), from API state
//! alone; a single pod's claims reserved for it while it is unbound are released by
//! [`Committer::release_reservation`] and the pod is placed again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod, PodResourceClaim};
use k8s_openapi::api::resource::v1::{AllocationResult, ResourceClaim, ResourceClaimConsumerReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use phalanx_gang::workload::{self, WorkloadPodGroup};
use phalanx_scheduler_core::placement::claims::generated_claim_name;
use serde_json::json;
use tracing::{debug, info, warn};

/// The finalizer that keeps an allocated claim from vanishing under a running pod.
pub const DELETE_PROTECTION_FINALIZER: &str = "resource.kubernetes.io/delete-protection";

const CONFLICT_RETRIES: usize = 5;

/// Requests one gang's commit has in flight at once (members are independent objects).
const MEMBER_CONCURRENCY: usize = 16;

/// Where one member goes and what its claims get.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberPlan {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID (the claims' `reservedFor` and the binding name it).
    pub uid: String,
    /// The node the pod is bound to.
    pub node: String,
    /// Every claim the pod uses, in the pod's order.
    pub claims: Vec<ClaimPlan>,
}

/// What to write on one claim for one member.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimPlan {
    /// The claim's name (in the member's namespace).
    pub name: String,
    /// The claim's UID as the plan saw it; a different UID means the claim was replaced.
    pub uid: String,
    /// The allocation to write, or `None` when the claim is already allocated (a shared
    /// claim) and only needs the member in `reservedFor`.
    pub allocation: Option<AllocationResult>,
    /// Whom `reservedFor` names: the pod, or its PodGroup for a PodGroup claim
    /// (KEP-5729; see [`consumer_for`]).
    pub consumer: ResourceClaimConsumerReference,
}

/// A gang's whole plan.
#[derive(Debug, Clone, PartialEq)]
pub struct GangPlan {
    /// Name of the gang, for logs and errors.
    pub gang: String,
    /// Every member.
    pub members: Vec<MemberPlan>,
}

/// Why a commit failed. Everything written before the failure has been rolled back.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A claim was allocated by someone else after the plan was made.
    #[error("claim {namespace}/{name} was allocated by someone else meanwhile")]
    ClaimTaken {
        /// The claim's namespace.
        namespace: String,
        /// The claim's name.
        name: String,
    },
    /// A claim or pod the plan names is gone or was replaced (different UID).
    #[error("{kind} {namespace}/{name} is gone or was replaced")]
    Vanished {
        /// `Pod` or `ResourceClaim`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A write kept conflicting with concurrent writers.
    #[error("claim {namespace}/{name}: still conflicting after {CONFLICT_RETRIES} attempts")]
    Contended {
        /// The claim's namespace.
        namespace: String,
        /// The claim's name.
        name: String,
    },
    /// The API server refused or failed a request.
    #[error("{step}: {source}")]
    Api {
        /// The step that failed, e.g. `writing allocation of default/c1`.
        step: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Some members were bound but binding another failed; the gang is rolled forward,
    /// not back (a binding cannot be undone), and the rest is retried by recovery.
    #[error("binding {namespace}/{name} failed after other members were bound: {source}")]
    PartiallyBound {
        /// The member that failed.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

fn api_err(step: impl Into<String>) -> impl FnOnce(kube::Error) -> CommitError {
    let step = step.into();
    move |source| CommitError::Api { step, source }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// What one successful claim write did, so it can be undone exactly.
#[derive(Debug, Clone)]
struct Written {
    namespace: String,
    claim: String,
    /// The `reservedFor` entry written: the pod's UID, or its PodGroup's.
    consumer_uid: String,
    allocated_by_us: bool,
}

/// Looks a claim up (namespace, name) in a watch cache.
pub type ClaimLookup = Arc<dyn Fn(&str, &str) -> Option<Arc<ResourceClaim>> + Send + Sync>;

/// Writes plans to the API server.
#[derive(Clone)]
pub struct Committer {
    client: Client,
    field_manager: String,
    cached_claims: Option<ClaimLookup>,
}

impl Committer {
    /// A committer writing as `field_manager` (the scheduler's name).
    pub fn new(client: Client, field_manager: impl Into<String>) -> Self {
        Committer { client, field_manager: field_manager.into(), cached_claims: None }
    }

    /// Makes the first write of each claim from the watch cache's copy (its
    /// `resourceVersion` keeps the write conditional) instead of a fresh GET; a stale copy
    /// costs one conflict and a GET, exactly as without the cache.
    pub fn with_cached_claims(mut self, lookup: ClaimLookup) -> Self {
        self.cached_claims = Some(lookup);
        self
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn claims(&self, namespace: &str) -> Api<ResourceClaim> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Commits `plan` all or nothing: intent, claims, then bindings. On an error before
    /// binding, everything this call wrote is rolled back before it returns.
    pub async fn commit(&self, plan: &GangPlan) -> Result<(), CommitError> {
        self.reserve(plan).await?;
        self.bind_all(plan).await
    }

    /// Steps 1 and 2 (kube-scheduler's Reserve and PreBind for the whole gang): intent on
    /// every member, then every claim written. Rolled back before returning an error.
    pub async fn reserve(&self, plan: &GangPlan) -> Result<(), CommitError> {
        let mut written = Vec::new();
        let mut nominated = Vec::new();
        let prepared = self.prepare(plan, &mut nominated, &mut written).await;
        if let Err(e) = prepared {
            warn!(gang = %plan.gang, error = %e, "commit failed before binding; rolling back");
            self.roll_back(&written, &nominated).await;
            return Err(e);
        }
        Ok(())
    }

    /// Steps 1 and 2: intent on every member, then every claim written. Members are
    /// written concurrently (up to [`MEMBER_CONCURRENCY`] requests at once); the members
    /// of one shared claim are written to it one after another. Every write that
    /// succeeded is recorded in `nominated` / `written`, also when another failed.
    async fn prepare(
        &self,
        plan: &GangPlan,
        nominated: &mut Vec<(String, String)>,
        written: &mut Vec<Written>,
    ) -> Result<(), CommitError> {
        // A gang of one records no intent: its claims' `reservedFor` already names it, and
        // recovery releases a reservation held by an unbound pod without an intent (see
        // [`Committer::release_reservation`]). That saves one write per single pod.
        let members_with_intent = if plan.members.len() > 1 { plan.members.len() } else { 0 };
        // Indices, not references, into the plan: a closure over `&MemberPlan` arguments
        // would make the future not `Send` for every lifetime (a known rustc limitation).
        let intents: Vec<(&MemberPlan, Result<(), CommitError>)> = stream::iter(0..members_with_intent)
            .map(|i| async move { (&plan.members[i], self.write_intent(&plan.members[i]).await) })
            .buffer_unordered(MEMBER_CONCURRENCY)
            .collect()
            .await;
        let mut failed = None;
        for (member, result) in intents {
            match result {
                Ok(()) => nominated.push((member.namespace.clone(), member.name.clone())),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }

        let mut by_claim: BTreeMap<(&str, &str), Vec<(&MemberPlan, &ClaimPlan)>> = BTreeMap::new();
        for member in &plan.members {
            for claim in &member.claims {
                by_claim.entry((member.namespace.as_str(), claim.name.as_str())).or_default().push((member, claim));
            }
        }
        let by_claim: Vec<Vec<(&MemberPlan, &ClaimPlan)>> = by_claim.into_values().collect();
        let by_claim = &by_claim;
        let groups: Vec<(Vec<Written>, Option<CommitError>)> = stream::iter(0..by_claim.len())
            .map(|g| async move {
                let mut done = Vec::new();
                for &(member, claim) in &by_claim[g] {
                    match self.write_claim(member, claim).await {
                        Ok(w) => done.extend(w),
                        Err(e) => return (done, Some(e)),
                    }
                }
                (done, None)
            })
            .buffer_unordered(MEMBER_CONCURRENCY)
            .collect()
            .await;
        for (done, error) in groups {
            written.extend(done);
            failed = failed.or(error);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Sets `status.nominatedNodeName` on the planned pod. The patch carries the pod's UID,
    /// which the apiserver refuses to change (422), so a pod deleted or replaced since the
    /// plan is never marked; no read is needed. A pod bound meanwhile by someone else is
    /// caught by its binding, before which everything is still rolled back.
    async fn write_intent(&self, member: &MemberPlan) -> Result<(), CommitError> {
        let patch = json!({
            "metadata": { "uid": member.uid },
            "status": { "nominatedNodeName": member.node },
        });
        match self
            .pods(&member.namespace)
            .patch_status(&member.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => {
                Err(vanished("Pod", &member.namespace, &member.name))
            }
            Err(e) => Err(api_err(format!("recording intent on pod {}/{}", member.namespace, member.name))(e)),
        }
    }

    /// Finalizer, then allocation and reservation, on one claim. Returns what it wrote
    /// (None when the member was already in `reservedFor`: an idempotent retry).
    async fn write_claim(&self, member: &MemberPlan, plan: &ClaimPlan) -> Result<Option<Written>, CommitError> {
        let ns = &member.namespace;
        let claims = self.claims(ns);
        let mut cached = self.cached_claims.as_ref().and_then(|lookup| lookup(ns, &plan.name));
        for _ in 0..CONFLICT_RETRIES {
            // A cached copy is only trusted for a write (its resourceVersion makes the write
            // fail if it is stale); every decision that writes nothing is taken on a fresh GET.
            let (claim, from_cache) = match cached.take() {
                Some(c) => (Some((*c).clone()), true),
                None => {
                    let fresh = claims
                        .get_opt(&plan.name)
                        .await
                        .map_err(api_err(format!("reading claim {ns}/{}", plan.name)))?;
                    (fresh, false)
                }
            };
            let Some(mut claim) = claim else {
                return Err(vanished("ResourceClaim", ns, &plan.name));
            };
            if claim.uid().as_deref() != Some(plan.uid.as_str()) || claim.metadata.deletion_timestamp.is_some() {
                if from_cache {
                    continue;
                }
                return Err(vanished("ResourceClaim", ns, &plan.name));
            }
            let status = claim.status.get_or_insert_with(Default::default);
            let reserved = status.reserved_for.get_or_insert_with(Vec::new);
            if reserved.iter().any(|r| r.uid == plan.consumer.uid) {
                if from_cache {
                    continue;
                }
                return Ok(None);
            }
            let allocated_by_us = match (&status.allocation, &plan.allocation) {
                (Some(_), Some(_)) if from_cache => continue,
                (Some(_), Some(_)) => {
                    return Err(CommitError::ClaimTaken { namespace: ns.clone(), name: plan.name.clone() });
                }
                (None, None) if from_cache => continue,
                (None, None) => return Err(vanished("ResourceClaim", ns, &plan.name)),
                (Some(_), None) => false,
                (None, Some(allocation)) => {
                    status.allocation = Some(allocation.clone());
                    true
                }
            };
            reserved.push(plan.consumer.clone());

            if allocated_by_us && !claim.finalizers().iter().any(|f| f == DELETE_PROTECTION_FINALIZER) {
                // The finalizer goes first, in its own write: an allocation must never be
                // visible on a claim that can be deleted under it.
                let finalizers = claim.metadata.finalizers.get_or_insert_with(Vec::new);
                finalizers.push(DELETE_PROTECTION_FINALIZER.into());
                let status = claim.status.clone();
                match claims.replace(&plan.name, &PostParams::default(), &claim).await {
                    Ok(updated) => {
                        claim = updated;
                        claim.status = status;
                    }
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(api_err(format!("adding finalizer to claim {ns}/{}", plan.name))(e)),
                }
            }
            match claims.replace_status(&plan.name, &PostParams::default(), &claim).await {
                Ok(_) => {
                    debug!(claim = %plan.name, pod = %member.name, "claim written");
                    return Ok(Some(Written {
                        namespace: ns.clone(),
                        claim: plan.name.clone(),
                        consumer_uid: plan.consumer.uid.clone(),
                        allocated_by_us,
                    }));
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(api_err(format!("writing allocation of claim {ns}/{}", plan.name))(e)),
            }
        }
        Err(CommitError::Contended { namespace: ns.clone(), name: plan.name.clone() })
    }

    /// Step 3: bind every member (concurrently). Once one member is bound there is no way
    /// back: a failure beside it is [`CommitError::PartiallyBound`] and recovery retries
    /// the rest; when every bind failed, the gang is rolled back.
    pub async fn bind_all(&self, plan: &GangPlan) -> Result<(), CommitError> {
        let results: Vec<(&MemberPlan, Result<(), kube::Error>)> = stream::iter(0..plan.members.len())
            .map(|i| async move { (&plan.members[i], self.bind(&plan.members[i]).await) })
            .buffer_unordered(MEMBER_CONCURRENCY)
            .collect()
            .await;
        let bound_any = results.iter().any(|(_, r)| r.is_ok());
        if let Some((member, Err(source))) = results.into_iter().find(|(_, r)| r.is_err()) {
            if bound_any {
                return Err(CommitError::PartiallyBound {
                    namespace: member.namespace.clone(),
                    name: member.name.clone(),
                    source,
                });
            }
            // Nothing bound: still all or nothing.
            let written = self.written_for(plan).await;
            let nominated: Vec<_> = plan.members.iter().map(|m| (m.namespace.clone(), m.name.clone())).collect();
            self.roll_back(&written, &nominated).await;
            return Err(api_err(format!("binding pod {}/{}", member.namespace, member.name))(source));
        }
        info!(gang = %plan.gang, members = plan.members.len(), "gang bound");
        Ok(())
    }

    async fn bind(&self, member: &MemberPlan) -> Result<(), kube::Error> {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(member.name.clone()),
                namespace: Some(member.namespace.clone()),
                uid: Some(member.uid.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(member.node.clone()),
                ..Default::default()
            },
        };
        let pp = PostParams { field_manager: Some(self.field_manager.clone()), ..Default::default() };
        match self
            .pods(&member.namespace)
            .create_subresource::<_, serde_json::Value>("binding", &member.name, &pp, &binding)
            .await
        {
            Ok(_) => Ok(()),
            // A retried bind to the same node (after a crash or a lost response) is fine.
            Err(e) if is_conflict(&e) && self.is_bound_to(member).await => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn is_bound_to(&self, member: &MemberPlan) -> bool {
        let pod = self.pods(&member.namespace).get_opt(&member.name).await.ok().flatten();
        pod.and_then(|p| p.spec).and_then(|s| s.node_name).as_deref() == Some(member.node.as_str())
    }

    /// The claim writes of `plan` that are visible in the API (for a rollback after a
    /// failed first bind, when this process no longer knows which writes were its own).
    async fn written_for(&self, plan: &GangPlan) -> Vec<Written> {
        let mut out = Vec::new();
        for member in &plan.members {
            for claim in &member.claims {
                // A PodGroup's reservation this plan did not allocate may be what bound
                // members of the group run on: it is not this attempt's to undo.
                if claim.allocation.is_none() && claim.consumer.uid != member.uid {
                    continue;
                }
                out.push(Written {
                    namespace: member.namespace.clone(),
                    claim: claim.name.clone(),
                    consumer_uid: claim.consumer.uid.clone(),
                    allocated_by_us: claim.allocation.is_some(),
                });
            }
        }
        out
    }

    /// Undoes claim writes (newest first) and clears the intent. Best effort: a failure
    /// is logged, and recovery on the next start finishes the job from API state.
    async fn roll_back(&self, written: &[Written], nominated: &[(String, String)]) {
        for w in written.iter().rev() {
            if let Err(e) = self.release_claim(&w.namespace, &w.claim, &w.consumer_uid, w.allocated_by_us).await {
                warn!(claim = %w.claim, error = %e, "rollback of claim failed; recovery will retry");
            }
        }
        for (ns, name) in nominated {
            let patch = json!({ "status": { "nominatedNodeName": null } });
            if let Err(e) = self.pods(ns).patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await
                && !is_not_found(&e)
            {
                warn!(pod = %name, error = %e, "clearing intent failed; recovery will retry");
            }
        }
    }

    /// Removes `consumer_uid` (a pod's or a PodGroup's) from the claim's `reservedFor`; when nobody else holds the claim
    /// and `deallocate` is set, clears the allocation and drops our finalizer.
    async fn release_claim(
        &self,
        ns: &str,
        name: &str,
        consumer_uid: &str,
        deallocate: bool,
    ) -> Result<(), CommitError> {
        let claims = self.claims(ns);
        for _ in 0..CONFLICT_RETRIES {
            let Some(mut claim) = claims.get_opt(name).await.map_err(api_err(format!("reading claim {ns}/{name}")))?
            else {
                return Ok(());
            };
            let status = claim.status.get_or_insert_with(Default::default);
            let reserved = status.reserved_for.get_or_insert_with(Vec::new);
            let before = reserved.len();
            reserved.retain(|r| r.uid != consumer_uid);
            let nobody_left = reserved.is_empty();
            let clear = deallocate && nobody_left && status.allocation.is_some();
            if before != reserved.len() || clear {
                if clear {
                    status.allocation = None;
                }
                if nobody_left {
                    status.reserved_for = None;
                }
                match claims.replace_status(name, &PostParams::default(), &claim).await {
                    Ok(updated) => claim = updated,
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(api_err(format!("releasing claim {ns}/{name}"))(e)),
                }
            }
            if claim.status.as_ref().is_none_or(|s| s.allocation.is_none())
                && claim.finalizers().iter().any(|f| f == DELETE_PROTECTION_FINALIZER)
            {
                claim.metadata.finalizers.get_or_insert_with(Vec::new).retain(|f| f != DELETE_PROTECTION_FINALIZER);
                match claims.replace(name, &PostParams::default(), &claim).await {
                    Ok(_) => {}
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(api_err(format!("removing finalizer from claim {ns}/{name}"))(e)),
                }
            }
            return Ok(());
        }
        Err(CommitError::Contended { namespace: ns.into(), name: name.into() })
    }

    /// Releases a claim's reservation for an unbound pod that carries no intent: what a
    /// gang of one leaves when its commit stopped between the claim writes and the
    /// binding. Clears the allocation (and our finalizer) when nobody else holds the claim.
    pub async fn release_reservation(&self, namespace: &str, claim: &str, pod_uid: &str) -> Result<(), CommitError> {
        self.release_claim(namespace, claim, pod_uid, true).await
    }

    /// Finishes commits a previous scheduler left half-done. `pending` are this
    /// scheduler's unbound pods that carry an intent (`status.nominatedNodeName`),
    /// grouped by gang, each group with the number of members the gang needs. A gang
    /// whose every needed member has all its claims allocated and reserved for it is
    /// bound (rolled forward); any other gang is released (rolled back).
    pub async fn recover(&self, gangs: &[RecoveringGang]) -> Vec<Recovery> {
        let mut out = Vec::new();
        for gang in gangs {
            let outcome = self.recover_gang(gang).await;
            match &outcome {
                Ok(RecoveryAction::RolledForward) => info!(gang = %gang.gang, "half-done commit rolled forward"),
                Ok(RecoveryAction::RolledBack) => info!(gang = %gang.gang, "half-done commit rolled back"),
                Err(e) => warn!(gang = %gang.gang, error = %e, "recovery failed"),
            }
            out.push(Recovery { gang: gang.gang.clone(), outcome });
        }
        out
    }

    async fn recover_gang(&self, gang: &RecoveringGang) -> Result<RecoveryAction, CommitError> {
        // The members as the API server has them now (the caller's copies may be stale):
        // a member bound meanwhile is done, and its claims are never touched.
        let mut fresh = Vec::new();
        let mut bound = 0;
        for pod in &gang.members {
            let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            let now = self.pods(&ns).get_opt(&name).await.map_err(api_err(format!("reading pod {ns}/{name}")))?;
            match now {
                Some(p) if p.uid() == pod.uid() && p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) => bound += 1,
                Some(p) if p.uid() == pod.uid() => fresh.push(p),
                _ => {}
            }
        }
        let mut complete = bound + fresh.len() >= gang.needed;
        let mut plan = GangPlan { gang: gang.gang.clone(), members: Vec::new() };
        let mut written = Vec::new();
        for pod in &fresh {
            let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            let uid = pod.uid().unwrap_or_default();
            let node = pod.status.as_ref().and_then(|s| s.nominated_node_name.clone()).unwrap_or_default();
            let mut member = MemberPlan { namespace: ns.clone(), name, uid: uid.clone(), node, claims: Vec::new() };
            for claim_name in pod_claim_names(pod, group_of(pod, &gang.groups)) {
                let claim = match claim_name {
                    Some(c) => {
                        self.claims(&ns).get_opt(&c).await.map_err(api_err(format!("reading claim {ns}/{c}")))?
                    }
                    None => None,
                };
                let Some(claim) = claim else {
                    complete = false;
                    continue;
                };
                let reservation = reservation_of(pod, &claim);
                let allocated = claim.status.as_ref().and_then(|s| s.allocation.as_ref()).is_some();
                // A PodGroup's reservation is shared with members bound before: a rollback
                // leaves it alone unless no member of the gang is bound.
                if let Some(r) = reservation.as_ref().filter(|r| r.uid == uid || bound == 0) {
                    written.push(Written {
                        namespace: ns.clone(),
                        claim: claim.name_any(),
                        consumer_uid: r.uid.clone(),
                        allocated_by_us: true,
                    });
                }
                if !(reservation.is_some() && allocated) {
                    complete = false;
                }
                member.claims.push(ClaimPlan {
                    name: claim.name_any(),
                    uid: claim.uid().unwrap_or_default(),
                    allocation: None,
                    consumer: reservation.unwrap_or_else(|| pod_consumer(pod)),
                });
            }
            if member.node.is_empty() {
                complete = false;
            }
            plan.members.push(member);
        }
        if complete {
            self.bind_all(&plan).await?;
            Ok(RecoveryAction::RolledForward)
        } else {
            // Only unbound members are in the plan: a member already bound keeps its claims
            // (a binding cannot be undone), and the next cycle places the rest beside it.
            let nominated: Vec<_> = plan.members.iter().map(|m| (m.namespace.clone(), m.name.clone())).collect();
            self.roll_back(&written, &nominated).await;
            Ok(RecoveryAction::RolledBack)
        }
    }
}

/// A gang found half-committed at startup.
#[derive(Debug, Clone)]
pub struct RecoveringGang {
    /// The gang's name.
    pub gang: String,
    /// How many members must be placed for the gang to run.
    pub needed: usize,
    /// The gang's unbound pods that carry an intent.
    pub members: Vec<Pod>,
    /// The Workload API PodGroups of its members (their shared claims resolve through them).
    pub groups: Vec<WorkloadPodGroup>,
}

/// What recovery did to one gang.
#[derive(Debug)]
pub struct Recovery {
    /// The gang.
    pub gang: String,
    /// Forward, back, or why neither worked.
    pub outcome: Result<RecoveryAction, CommitError>,
}

/// The direction a half-done commit was finished in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Every claim was written: the members were bound.
    RolledForward,
    /// Something was missing: claims released, intent cleared.
    RolledBack,
}

/// The claim names a pod uses, in `spec.resourceClaims` order: direct names, or the
/// names kube-controller-manager generated from templates (from
/// `status.resourceClaimStatuses`; `None` while not generated yet).
pub fn pod_claim_names(pod: &Pod, group: Option<&WorkloadPodGroup>) -> Vec<Option<String>> {
    pod_claims(pod, group).into_iter().map(|(_, name)| name).collect()
}

/// The Workload PodGroup `pod` joins, among `groups`.
pub fn group_of<'g>(pod: &Pod, groups: &'g [WorkloadPodGroup]) -> Option<&'g WorkloadPodGroup> {
    let name = pod.spec.as_ref()?.scheduling_group.as_ref()?.pod_group_name.as_deref()?;
    groups.iter().find(|g| g.metadata.name.as_deref() == Some(name) && g.metadata.namespace == pod.metadata.namespace)
}

/// Each claim entry of the pod (first of each name) with its ResourceClaim's name, in
/// the pod's order: `None` while the claim is not generated from its template yet.
/// `group` is the pod's Workload PodGroup, through which its shared claims resolve.
pub fn pod_claims<'p>(pod: &'p Pod, group: Option<&WorkloadPodGroup>) -> Vec<(&'p PodResourceClaim, Option<String>)> {
    let mut seen = BTreeSet::new();
    pod.spec
        .as_ref()
        .and_then(|s| s.resource_claims.as_ref())
        .map(|rcs| {
            rcs.iter()
                .filter(|rc| seen.insert(rc.name.clone()))
                .map(|rc| {
                    let name = match &rc.resource_claim_name {
                        Some(direct) => Some(direct.clone()),
                        None => generated_claim_name(pod, rc, group),
                    };
                    (rc, name)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whom a claim of `pod` is reserved for, as upstream's `resourceclaim.BindTo` decides:
/// the pod's PodGroup when the pod's claim entry is one of the group's claims (same name,
/// same claim or template), else the pod (KEP-5729, PodGroup claims).
pub fn consumer_for(
    pod: &Pod,
    group: Option<&WorkloadPodGroup>,
    pod_claim: &PodResourceClaim,
) -> ResourceClaimConsumerReference {
    let in_group = group.filter(|g| {
        g.metadata.namespace == pod.metadata.namespace
            && g.metadata.name.is_some()
            && g.metadata.name
                == pod.spec.as_ref().and_then(|s| s.scheduling_group.as_ref()).and_then(|g| g.pod_group_name.clone())
    });
    match in_group.and_then(|g| {
        g.spec
            .resource_claims
            .iter()
            .any(|c| {
                c.name == pod_claim.name
                    && c.resource_claim_name == pod_claim.resource_claim_name
                    && c.resource_claim_template_name == pod_claim.resource_claim_template_name
            })
            .then_some(g)
    }) {
        Some(g) => ResourceClaimConsumerReference {
            api_group: Some(workload::GROUP.into()),
            resource: "podgroups".into(),
            name: g.metadata.name.clone().unwrap_or_default(),
            uid: g.metadata.uid.clone().unwrap_or_default(),
        },
        None => pod_consumer(pod),
    }
}

fn pod_consumer(pod: &Pod) -> ResourceClaimConsumerReference {
    ResourceClaimConsumerReference {
        api_group: None,
        resource: "pods".into(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
    }
}

/// The `reservedFor` entry that holds `claim` for `pod`: its own, or its PodGroup's
/// (which pods know by name, not UID: upstream's `IsReservedForPod`).
pub fn reservation_of(pod: &Pod, claim: &ResourceClaim) -> Option<ResourceClaimConsumerReference> {
    let uid = pod.uid()?;
    let group = pod.spec.as_ref().and_then(|s| s.scheduling_group.as_ref()).and_then(|g| g.pod_group_name.as_deref());
    claim
        .status
        .as_ref()?
        .reserved_for
        .as_ref()?
        .iter()
        .find(|r| {
            r.uid == uid
                || (r.api_group.as_deref() == Some(workload::GROUP)
                    && r.resource == "podgroups"
                    && Some(r.name.as_str()) == group)
        })
        .cloned()
}

fn vanished(kind: &'static str, namespace: &str, name: &str) -> CommitError {
    CommitError::Vanished { kind, namespace: namespace.to_owned(), name: name.to_owned() }
}
