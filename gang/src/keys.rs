//! Label and annotation keys (DESIGN.md).

/// Label: the gang a pod belongs to.
pub const GANG: &str = "phalanx.dev/gang";
/// Annotation: how many members must be placed together.
pub const GANG_MIN_MEMBERS: &str = "phalanx.dev/gang-min-members";
/// Annotation prefix: `phalanx.dev/gang-min-<role>`, the minimum of one role.
pub const GANG_MIN_ROLE_PREFIX: &str = "phalanx.dev/gang-min-";
/// Label: the pod's role (`prefill`, `decode`, `both`, or any sub-group name).
pub const ROLE: &str = "phalanx.dev/role";
/// Annotation: the level all members must share.
pub const TOPOLOGY_REQUIRED: &str = "phalanx.dev/topology-required";
/// Annotation: the level all members should share.
pub const TOPOLOGY_PREFERRED: &str = "phalanx.dev/topology-preferred";
/// Label: the prefill/decode set whose members exchange KV.
pub const PD_GROUP: &str = "phalanx.dev/pd-group";
/// Annotation: the level prefill and decode of one group share.
pub const KV_DOMAIN: &str = "phalanx.dev/kv-domain";
/// Annotation: `required` or `preferred`.
pub const KV_DOMAIN_POLICY: &str = "phalanx.dev/kv-domain-policy";
/// Annotation: KV cache bytes per token.
pub const KV_BYTES_PER_TOKEN: &str = "phalanx.dev/kv-bytes-per-token";
/// Annotation: typical input sequence length, tokens.
pub const TYPICAL_ISL: &str = "phalanx.dev/typical-isl";
/// Label of scheduler-plugins coscheduling.
pub const COSCHEDULING_POD_GROUP: &str = "scheduling.x-k8s.io/pod-group";
/// KAI's required-placement annotation, read as `topology-required`.
pub const KAI_TOPOLOGY_REQUIRED: &str = "kai.scheduler/topology-required-placement";
/// KAI's preferred-placement annotation, read as `topology-preferred`.
pub const KAI_TOPOLOGY_PREFERRED: &str = "kai.scheduler/topology-preferred-placement";
