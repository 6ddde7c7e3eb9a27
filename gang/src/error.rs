//! What can be wrong with a gang's definition. Every message names the object and says
//! what to change.

/// A malformed gang definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GangError {
    /// A number annotation that is not a number.
    #[error("{object}: {key}={value:?} is not a whole number ≥ {min}; {hint}")]
    InvalidNumber {
        /// `pod ns/name`, `PodGroup ns/name`, …
        object: String,
        /// The annotation or field.
        key: String,
        /// What it holds.
        value: String,
        /// Smallest valid value.
        min: u64,
        /// What it means.
        hint: &'static str,
    },
    /// Members disagree on a gang-wide value.
    #[error("gang {gang}: members disagree on {key} ({values}); set the same value on every pod of the gang")]
    Conflict {
        /// The gang.
        gang: String,
        /// The key.
        key: String,
        /// The distinct values, with a pod holding each.
        values: String,
    },
    /// A value outside a fixed set.
    #[error("{object}: {key}={value:?} is not one of {allowed}")]
    NotOneOf {
        /// The object.
        object: String,
        /// The key.
        key: String,
        /// What it holds.
        value: String,
        /// Valid values.
        allowed: &'static str,
    },
    /// A pod names a group object that does not exist.
    #[error(
        "pod {pod}: {via} names {kind} {group:?}, which does not exist in namespace {namespace}; create it or remove the reference"
    )]
    MissingGroup {
        /// The pod.
        pod: String,
        /// Label or field that names the group.
        via: &'static str,
        /// Object kind.
        kind: &'static str,
        /// Its name.
        group: String,
        /// Namespace searched.
        namespace: String,
    },
    /// A pod claimed by two gang definitions.
    #[error("pod {pod} belongs to both {first} and {second}; a pod can be in one gang only")]
    TwoGangs {
        /// The pod.
        pod: String,
        /// First definition.
        first: String,
        /// Second definition.
        second: String,
    },
    /// A definition Kubernetes accepts that Phalanx cannot honour.
    #[error("{object}: {what}; {hint}")]
    Unsupported {
        /// The object.
        object: String,
        /// What cannot be mapped.
        what: String,
        /// What the user can do.
        hint: String,
    },
    /// The Workload PodGroup has neither policy.
    #[error("{object}: spec.schedulingPolicy sets neither gang nor basic; set gang.minCount or basic: {{}}")]
    NoPolicy {
        /// The PodGroup.
        object: String,
    },
    /// Role minimums that cannot all be met with the gang's minimum.
    #[error(
        "gang {gang}: role minimums add up to {sum}, more than gang-min-members {min}; raise gang-min-members or lower a role minimum"
    )]
    RolesExceedGang {
        /// The gang.
        gang: String,
        /// Sum of role minimums.
        sum: u32,
        /// Gang minimum.
        min: u32,
    },
    /// A role minimum for a role no member has.
    #[error("gang {gang}: {key} is set but no pod has {role_label}={role:?}; label the pods or remove the annotation")]
    RoleWithoutMembers {
        /// The gang.
        gang: String,
        /// The annotation.
        key: String,
        /// The role label key.
        role_label: &'static str,
        /// The role.
        role: String,
    },
}
