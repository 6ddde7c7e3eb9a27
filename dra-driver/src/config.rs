//! Opaque device configuration of `gpu.phalanx.dev`: `GpuConfig`
//! (`gpu.phalanx.dev/v1alpha1`), how a claim or a DeviceClass asks for GPU sharing.
//!
//! ```yaml
//! config:
//! - requests: [gpu]            # optional: every request when absent
//!   opaque:
//!     driver: gpu.phalanx.dev
//!     parameters:
//!       apiVersion: gpu.phalanx.dev/v1alpha1
//!       kind: GpuConfig
//!       sharing:
//!         strategy: MPS          # Exclusive (default) | TimeSlicing | MPS
//!         mps:
//!           defaultActiveThreadPercentage: 50
//!           defaultPinnedDeviceMemoryLimit: 10Gi
//! ```
//!
//! **Which config applies** (upstream's order, as the scheduler copies it into
//! `status.allocation.devices.config`): the class's entries first, then the claim's; an
//! entry applies to a device when it names the device's request (or its parent request,
//! for a `firstAvailable` subrequest `parent/sub`) or names none; of the entries that
//! apply, the last one wins. Entries of other drivers are not ours to read.
//!
//! **Validation** happens at prepare, and a bad config fails that claim's prepare with a
//! message naming the entry and the field (the kubelet shows it in the pod's events):
//! unknown `apiVersion`/`kind`/fields, a strategy's settings given for another strategy,
//! a thread percentage outside 1–100, a memory limit that is not a quantity.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::DeviceAllocationConfiguration;
use serde::{Deserialize, Serialize};

use crate::attributes::GPU_DRIVER;

/// The only version of the config API.
pub const API_VERSION: &str = "gpu.phalanx.dev/v1alpha1";
/// Its kind.
pub const KIND: &str = "GpuConfig";

/// `GpuConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GpuConfig {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// How the claim's GPUs are shared.
    #[serde(default)]
    pub sharing: Sharing,
}

/// Sharing strategies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// One claim, one GPU (the default).
    #[default]
    Exclusive,
    /// The GPU's time-slice scheduler, with an interval.
    TimeSlicing,
    /// A per-claim MPS control daemon.
    #[serde(rename = "MPS")]
    Mps,
}

/// `sharing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sharing {
    /// The strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// Settings of `TimeSlicing`.
    pub time_slicing: Option<TimeSlicing>,
    /// Settings of `MPS`.
    pub mps: Option<Mps>,
}

/// Time-slice lengths, as `nvidia-smi compute-policy --set-timeslice` numbers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interval {
    /// The driver's default (0).
    #[default]
    Default,
    /// 1.
    Short,
    /// 2.
    Medium,
    /// 3.
    Long,
}

impl Interval {
    /// The `--set-timeslice` value.
    pub fn code(self) -> u8 {
        match self {
            Interval::Default => 0,
            Interval::Short => 1,
            Interval::Medium => 2,
            Interval::Long => 3,
        }
    }
}

/// `timeSlicing`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeSlicing {
    /// The slice length.
    #[serde(default)]
    pub interval: Interval,
}

/// `mps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mps {
    /// `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` for every client, 1–100.
    pub default_active_thread_percentage: Option<u32>,
    /// Pinned device memory per client and GPU, a quantity (`10Gi`).
    pub default_pinned_device_memory_limit: Option<String>,
}

/// Why a claim's config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claim {claim}: device config entry {index} ({source_kind}): {message}")]
pub struct Error {
    /// `namespace/name`.
    pub claim: String,
    /// Position in `status.allocation.devices.config`.
    pub index: usize,
    /// `FromClass` or `FromClaim`.
    pub source_kind: String,
    /// What is wrong.
    pub message: String,
}

/// A validated config with the requests it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    requests: Vec<String>,
    config: GpuConfig,
}

/// Parses a Kubernetes quantity of bytes (`10Gi`, `512Mi`, `1G`, `1048576`).
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let digits = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, suffix) = q.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl GpuConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.api_version != API_VERSION {
            return Err(format!("apiVersion {:?} is not {API_VERSION}", self.api_version));
        }
        if self.kind != KIND {
            return Err(format!("kind {:?} is not {KIND}", self.kind));
        }
        let s = &self.sharing;
        match s.strategy {
            Strategy::Exclusive if s.time_slicing.is_some() || s.mps.is_some() => {
                return Err("sharing.strategy is Exclusive but sharing.timeSlicing or sharing.mps is set".into());
            }
            Strategy::TimeSlicing if s.mps.is_some() => {
                return Err("sharing.strategy is TimeSlicing but sharing.mps is set".into());
            }
            Strategy::Mps if s.time_slicing.is_some() => {
                return Err("sharing.strategy is MPS but sharing.timeSlicing is set".into());
            }
            _ => {}
        }
        if let Some(mps) = &s.mps {
            if let Some(p) = mps.default_active_thread_percentage
                && !(1..=100).contains(&p)
            {
                return Err(format!("sharing.mps.defaultActiveThreadPercentage {p} is not within 1-100"));
            }
            if let Some(limit) = &mps.default_pinned_device_memory_limit
                && parse_bytes(limit).is_none_or(|b| b == 0)
            {
                return Err(format!(
                    "sharing.mps.defaultPinnedDeviceMemoryLimit {limit:?} is not a positive quantity (e.g. 10Gi)"
                ));
            }
        }
        Ok(())
    }
}

/// The effective config of each request of a claim, from its allocation's config list.
///
/// `requests` are the request names of our devices in the allocation (`parent/sub` for
/// subrequests). Requests no entry applies to get the default (Exclusive).
pub fn effective(
    claim: &str,
    configs: &[DeviceAllocationConfiguration],
    requests: &[String],
) -> Result<BTreeMap<String, GpuConfig>, Error> {
    let mut entries = Vec::new();
    for (index, c) in configs.iter().enumerate() {
        let Some(opaque) = c.opaque.as_ref().filter(|o| o.driver == GPU_DRIVER) else { continue };
        let fail = |message: String| Error { claim: claim.to_owned(), index, source_kind: c.source.clone(), message };
        let config: GpuConfig =
            serde_json::from_value(opaque.parameters.0.clone()).map_err(|e| fail(format!("not a GpuConfig: {e}")))?;
        config.validate().map_err(fail)?;
        entries.push(Entry { requests: c.requests.clone().unwrap_or_default(), config });
    }
    let mut out = BTreeMap::new();
    for request in requests {
        let parent = request.split('/').next().unwrap_or(request);
        let config = entries
            .iter()
            .rev()
            .find(|e| e.requests.is_empty() || e.requests.iter().any(|r| r == request || r == parent))
            .map(|e| e.config.clone())
            .unwrap_or_else(|| GpuConfig {
                api_version: API_VERSION.into(),
                kind: KIND.into(),
                sharing: Sharing::default(),
            });
        out.insert(request.clone(), config);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::resource::v1::OpaqueDeviceConfiguration;
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
    use serde_json::json;

    fn entry(
        source: &str,
        requests: &[&str],
        driver: &str,
        params: serde_json::Value,
    ) -> DeviceAllocationConfiguration {
        DeviceAllocationConfiguration {
            source: source.into(),
            requests: (!requests.is_empty()).then(|| requests.iter().map(|r| r.to_string()).collect()),
            opaque: Some(OpaqueDeviceConfiguration { driver: driver.into(), parameters: RawExtension(params) }),
        }
    }

    fn gpu_config(sharing: serde_json::Value) -> serde_json::Value {
        json!({ "apiVersion": API_VERSION, "kind": KIND, "sharing": sharing })
    }

    fn reqs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn class_then_claim_the_last_matching_entry_wins() {
        let configs = vec![
            entry("FromClass", &[], GPU_DRIVER, gpu_config(json!({ "strategy": "TimeSlicing" }))),
            entry(
                "FromClaim",
                &["b"],
                GPU_DRIVER,
                gpu_config(json!({ "strategy": "MPS", "mps": { "defaultActiveThreadPercentage": 25 } })),
            ),
            entry("FromClaim", &[], "other.example.com", json!({ "anything": true })),
        ];
        let got = effective("ns/c", &configs, &reqs(&["a", "b/small", "c"])).unwrap();
        assert_eq!(got["a"].sharing.strategy, Strategy::TimeSlicing, "the class applies where the claim says nothing");
        assert_eq!(got["b/small"].sharing.strategy, Strategy::Mps, "a subrequest matches its parent's name");
        assert_eq!(got["b/small"].sharing.mps.as_ref().unwrap().default_active_thread_percentage, Some(25));
        assert_eq!(got["c"].sharing.strategy, Strategy::TimeSlicing);
        let none = effective("ns/c", &[], &reqs(&["a"])).unwrap();
        assert_eq!(none["a"].sharing.strategy, Strategy::Exclusive);
    }

    #[test]
    fn bad_configs_name_the_entry_and_the_field() {
        let cases = [
            (json!({ "apiVersion": "gpu.phalanx.dev/v9", "kind": KIND }), "apiVersion \"gpu.phalanx.dev/v9\""),
            (gpu_config(json!({ "strategy": "Sometimes" })), "unknown variant `Sometimes`"),
            (
                gpu_config(json!({ "strategy": "MPS", "mps": { "defaultActiveThreadPercentage": 0 } })),
                "not within 1-100",
            ),
            (
                gpu_config(json!({ "strategy": "MPS", "mps": { "defaultPinnedDeviceMemoryLimit": "lots" } })),
                "\"lots\" is not a positive quantity",
            ),
            (gpu_config(json!({ "strategy": "Exclusive", "mps": {} })), "strategy is Exclusive but"),
            (
                gpu_config(json!({ "strategy": "TimeSlicing", "timeSlicing": { "interval": "Long" }, "extra": 1 })),
                "unknown field `extra`",
            ),
        ];
        for (params, want) in cases {
            let configs = vec![
                entry("FromClass", &[], GPU_DRIVER, gpu_config(json!({}))),
                entry("FromClaim", &[], GPU_DRIVER, params),
            ];
            let err = effective("ns/c", &configs, &reqs(&["a"])).unwrap_err();
            assert_eq!((err.index, err.source_kind.as_str()), (1, "FromClaim"));
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("ns/c") && msg.contains("entry 1"), "{msg}");
        }
    }

    /// The shipped examples are valid configs (and say what they claim to).
    #[test]
    fn the_examples_configs_are_valid() {
        use serde::Deserialize;
        let mut seen = Vec::new();
        for text in [
            include_str!("../../deploy/examples/gpu-sharing/mps.yaml"),
            include_str!("../../deploy/examples/gpu-sharing/time-slicing-class.yaml"),
        ] {
            for doc in serde_yaml::Deserializer::from_str(text) {
                let v = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
                let configs = v["spec"]["devices"]["config"].as_array().or(v["spec"]["config"].as_array()).cloned();
                for c in configs.unwrap_or_default() {
                    let config: GpuConfig = serde_json::from_value(c["opaque"]["parameters"].clone()).unwrap();
                    config.validate().unwrap();
                    seen.push(config.sharing.strategy);
                }
            }
        }
        assert_eq!(seen, [Strategy::Mps, Strategy::TimeSlicing]);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("10Gi"), Some(10 << 30));
        assert_eq!(parse_bytes("512Mi"), Some(512 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("7"), Some(7));
        assert_eq!(parse_bytes("1.5Gi"), None);
        assert_eq!(Interval::Long.code(), 3);
    }
}
