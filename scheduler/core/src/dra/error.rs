//! The allocator's one error type: problems in the user's objects (bad CEL, unknown
//! class, unsupported request) that no other node would fix.

/// A fatal allocation problem. Each variant names the object to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    /// A request names a DeviceClass that does not exist.
    #[error(
        "claim {claim}, request {request}: could not retrieve device class {class}: not found (create the DeviceClass or fix deviceClassName)"
    )]
    UnknownClass {
        /// `namespace/name` of the claim.
        claim: String,
        /// Request (or `request/subrequest`).
        request: String,
        /// The missing class.
        class: String,
    },
    /// A CEL selector does not compile.
    #[error("{owner}: selector #{index}: CEL compile error: {message}")]
    CelCompile {
        /// `class <name>` or `claim <ns/name>, request <req>`.
        owner: String,
        /// Index of the selector.
        index: usize,
        /// The compiler's message.
        message: String,
    },
    /// A CEL selector failed while evaluating a device.
    #[error("{owner}: selector #{index}: CEL runtime error: {message}")]
    CelRuntime {
        /// `class <name>` or `claim <ns/name>, request <req>`.
        owner: String,
        /// Index of the selector.
        index: usize,
        /// What went wrong.
        message: String,
    },
    /// A CEL selector may cost more than the limit of 1,000,000 per evaluation.
    #[error(
        "{owner}: selector #{index}: CEL runtime error: operation cancelled: actual cost limit exceeded (estimated cost {cost} > limit {limit}); simplify the expression"
    )]
    CelCostLimit {
        /// `class <name>` or `claim <ns/name>, request <req>`.
        owner: String,
        /// Index of the selector.
        index: usize,
        /// Estimated worst-case cost.
        cost: u64,
        /// The limit.
        limit: u64,
    },
    /// A CEL selector produced a value that is not a bool.
    #[error("{owner}: selector #{index}: CEL result of type {found} could not be converted to bool")]
    CelNotBool {
        /// `class <name>` or `claim <ns/name>, request <req>`.
        owner: String,
        /// Index of the selector.
        index: usize,
        /// The result's type.
        found: String,
    },
    /// A request cannot be handled as written (feature off, empty selector, bad mode …).
    #[error("claim {claim}, request {request}: {message}")]
    InvalidRequest {
        /// `namespace/name` of the claim.
        claim: String,
        /// Request (or subrequest) name.
        request: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A claim has a constraint with neither matchAttribute nor distinctAttribute.
    #[error("claim {claim}, constraint #{index}: empty constraint (unsupported constraint type?)")]
    EmptyConstraint {
        /// `namespace/name` of the claim.
        claim: String,
        /// Index of the constraint.
        index: usize,
    },
    /// A claim needs more devices than an allocation result can hold.
    #[error("claim {claim}: number of requested devices {count} exceeds the claim limit of {limit}")]
    TooManyDevices {
        /// `namespace/name` of the claim.
        claim: String,
        /// Minimum number of devices needed.
        count: usize,
        /// The limit (32).
        limit: usize,
    },
    /// A capacity request cannot be checked against a device at all (1.37): it
    /// cannot be represented in the device's range arithmetic, or the capacity it
    /// would consume is negative.
    #[error("claim {claim}, request {request}: checking capacity for device {device}: {message}")]
    Capacity {
        /// `namespace/name` of the claim.
        claim: String,
        /// Request (or `request/subrequest`).
        request: String,
        /// `driver/pool/device`.
        device: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// `allocationMode: All` found a device that breaks a claim constraint.
    #[error(
        "claim {claim}, request {request}: cannot add device {device} because a claim constraint would not be satisfied"
    )]
    AllModeConstraint {
        /// `namespace/name` of the claim.
        claim: String,
        /// Request name.
        request: String,
        /// `driver/pool/device`.
        device: String,
    },
    /// A node selector in a ResourceSlice cannot be evaluated.
    #[error("node selection for slice {slice}: {message}")]
    NodeSelector {
        /// Slice name.
        slice: String,
        /// Why.
        message: String,
    },
    /// No solution on this node and some pools were invalid (upstream's
    /// `ErrFailedAllocationOnNode`: other nodes may still work).
    #[error("invalid resource pools were encountered: {reasons}")]
    InvalidPools {
        /// Pool ids and reasons.
        reasons: String,
    },
}

impl AllocateError {
    /// True for errors that concern only this node (upstream wraps them in
    /// `ErrFailedAllocationOnNode`); the scheduler may try other nodes.
    pub fn is_node_local(&self) -> bool {
        matches!(self, AllocateError::InvalidPools { .. })
    }
}
