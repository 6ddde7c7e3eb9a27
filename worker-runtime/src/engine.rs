//! From placement to engine configuration: the environment and flags a real engine
//! needs to use exactly the devices this worker got, in its P/D role.
//!
//! - `CUDA_VISIBLE_DEVICES`: the GPUs' UUIDs (CUDA accepts UUIDs), in index order;
//! - `NCCL_IB_HCA` (`=` prefix: exact names) and `UCX_NET_DEVICES` (`<dev>:1`): the compute
//!   NICs, those on the GPUs' PCIe roots first;
//! - the KV side channel: `VLLM_NIXL_SIDE_CHANNEL_HOST`/`_PORT` (the pod IP and the KV
//!   port), and `PHALANX_KV_HOST`/`_PORT` for the built-in engine;
//! - flags per engine: **vLLM** `--tensor-parallel-size N` and, in a P/D role,
//!   `--kv-transfer-config` with the `NixlConnector` (`kv_producer` on prefill,
//!   `kv_consumer` on decode); **SGLang** `--tp-size N`, `--disaggregation-mode
//!   prefill|decode`, `--disaggregation-transfer-backend nixl` and
//!   `--disaggregation-ib-device`; **Dynamo** workers (`dynamo.vllm`, `dynamo.sglang`,
//!   `dynamo.trtllm`, which runs TensorRT-LLM) `--disaggregation-mode prefill|decode`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::devices::Devices;
use crate::identity::{Identity, Role};

/// The engines we know how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// vLLM (`vllm serve`).
    Vllm,
    /// SGLang (`python -m sglang.launch_server`).
    Sglang,
    /// NVIDIA Dynamo workers (`python -m dynamo.{vllm,sglang,trtllm}`).
    Dynamo,
    /// The built-in reference engine (`phalanx-worker serve`).
    Phalanx,
}

impl Engine {
    /// Guesses the engine from a command line.
    pub fn detect(command: &[String]) -> Option<Engine> {
        let text = command.join(" ");
        if text.contains("dynamo.") {
            Some(Engine::Dynamo)
        } else if text.contains("sglang") {
            Some(Engine::Sglang)
        } else if text.contains("vllm") {
            Some(Engine::Vllm)
        } else if text.contains("phalanx-worker") {
            Some(Engine::Phalanx)
        } else {
            None
        }
    }
}

/// The default port of the KV side channel (vLLM's NIXL default).
pub const KV_PORT: u16 = 5600;

/// What the engine is started with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Environment to set.
    pub env: BTreeMap<String, String>,
    /// Flags to append to the engine's command.
    pub args: Vec<String>,
}

/// The plan for `engine` given the worker's identity, role and devices.
pub fn plan(identity: &Identity, role: Role, devices: &Devices, engine: Option<Engine>, kv_port: u16) -> Plan {
    let mut env = BTreeMap::new();
    let mut gpus = devices.gpus.clone();
    gpus.sort_by_key(|g| g.index);
    if !gpus.is_empty() {
        env.insert(
            "CUDA_VISIBLE_DEVICES".to_owned(),
            gpus.iter().map(|g| g.uuid.clone()).collect::<Vec<_>>().join(","),
        );
    }
    // Compute NICs, the ones beside our GPUs first.
    let mut nics: Vec<_> = devices.nics.iter().filter(|n| n.role != "storage" && !n.rdma_device.is_empty()).collect();
    nics.sort_by_key(|n| (!gpus.iter().any(|g| g.pcie_root.is_some() && g.pcie_root == n.pcie_root), n.index));
    if !nics.is_empty() {
        let names: Vec<&str> = nics.iter().map(|n| n.rdma_device.as_str()).collect();
        env.insert("NCCL_IB_HCA".to_owned(), format!("={}", names.join(",")));
        env.insert("UCX_NET_DEVICES".to_owned(), names.iter().map(|n| format!("{n}:1")).collect::<Vec<_>>().join(","));
    }
    let host = identity.pod_ip.clone().unwrap_or_else(|| "127.0.0.1".into());
    env.insert("PHALANX_KV_HOST".to_owned(), host.clone());
    env.insert("PHALANX_KV_PORT".to_owned(), kv_port.to_string());
    let tp = gpus.len().max(1).to_string();
    let pd = match role {
        Role::Prefill => Some("prefill"),
        Role::Decode => Some("decode"),
        Role::Both => None,
    };
    let mut args = Vec::new();
    match engine {
        Some(Engine::Vllm) => {
            env.insert("VLLM_NIXL_SIDE_CHANNEL_HOST".to_owned(), host);
            env.insert("VLLM_NIXL_SIDE_CHANNEL_PORT".to_owned(), kv_port.to_string());
            args.extend(["--tensor-parallel-size".to_owned(), tp]);
            if let Some(pd) = pd {
                let kv_role = if pd == "prefill" { "kv_producer" } else { "kv_consumer" };
                args.push("--kv-transfer-config".to_owned());
                args.push(format!(r#"{{"kv_connector":"NixlConnector","kv_role":"{kv_role}"}}"#));
            }
        }
        Some(Engine::Sglang) => {
            args.extend(["--tp-size".to_owned(), tp]);
            if let Some(pd) = pd {
                args.extend(["--disaggregation-mode".to_owned(), pd.to_owned()]);
                args.extend(["--disaggregation-transfer-backend".to_owned(), "nixl".to_owned()]);
                if !nics.is_empty() {
                    let names: Vec<&str> = nics.iter().map(|n| n.rdma_device.as_str()).collect();
                    args.extend(["--disaggregation-ib-device".to_owned(), names.join(",")]);
                }
            }
        }
        Some(Engine::Dynamo) => {
            if let Some(pd) = pd {
                args.extend(["--disaggregation-mode".to_owned(), pd.to_owned()]);
            }
        }
        Some(Engine::Phalanx) | None => {}
    }
    Plan { env, args }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::sample_env;

    fn identity() -> Identity {
        Identity { pod: "p".into(), namespace: "ns".into(), pod_ip: Some("10.0.0.7".into()), ..Default::default() }
    }

    #[test]
    fn vllm_prefill_gets_its_gpus_nics_and_the_nixl_producer_role() {
        let d = Devices::from_env(&sample_env());
        let p = plan(&identity(), Role::Prefill, &d, Some(Engine::Vllm), KV_PORT);
        assert_eq!(p.env["CUDA_VISIBLE_DEVICES"], "GPU-0,GPU-1");
        assert_eq!(p.env["NCCL_IB_HCA"], "=mlx5_0,mlx5_1");
        assert_eq!(p.env["UCX_NET_DEVICES"], "mlx5_0:1,mlx5_1:1");
        assert_eq!(p.env["VLLM_NIXL_SIDE_CHANNEL_HOST"], "10.0.0.7");
        assert_eq!(p.args[..2], ["--tensor-parallel-size", "2"]);
        let config: serde_json::Value = serde_json::from_str(&p.args[3]).unwrap();
        assert_eq!(config["kv_connector"], "NixlConnector");
        assert_eq!(config["kv_role"], "kv_producer");
        let d2 = plan(&identity(), Role::Decode, &d, Some(Engine::Vllm), KV_PORT);
        assert!(d2.args[3].contains("kv_consumer"));
        let both = plan(&identity(), Role::Both, &d, Some(Engine::Vllm), KV_PORT);
        assert!(!both.args.contains(&"--kv-transfer-config".to_owned()), "aggregated: no KV connector");
    }

    #[test]
    fn sglang_and_dynamo_get_their_disaggregation_flags() {
        let d = Devices::from_env(&sample_env());
        let s = plan(&identity(), Role::Decode, &d, Some(Engine::Sglang), KV_PORT);
        let args = s.args.join(" ");
        assert!(args.contains("--disaggregation-mode decode"), "{args}");
        assert!(args.contains("--disaggregation-ib-device mlx5_0,mlx5_1"), "{args}");
        assert!(args.contains("--tp-size 2"), "{args}");
        let y = plan(&identity(), Role::Prefill, &d, Some(Engine::Dynamo), KV_PORT);
        assert_eq!(y.args, ["--disaggregation-mode", "prefill"]);
        assert_eq!(Engine::detect(&["python3".into(), "-m".into(), "dynamo.trtllm".into()]), Some(Engine::Dynamo));
        assert_eq!(Engine::detect(&["vllm".into(), "serve".into()]), Some(Engine::Vllm));
    }

    #[test]
    fn nics_beside_the_gpus_come_first() {
        let mut env = sample_env();
        env.insert("PHALANX_NIC_0_PCIE_ROOT".into(), "pci0000:aa".into());
        let d = Devices::from_env(&env);
        let p = plan(&identity(), Role::Both, &d, None, KV_PORT);
        assert_eq!(p.env["NCCL_IB_HCA"], "=mlx5_1,mlx5_0");
    }
}
