//! The machine the fake library reports: a hardware profile turned into what NVML
//! returns on such a machine, raw forms included (`00000000:1B:00.0` bus IDs, the
//! architecture code, the CUDA version as an integer, fabric info as bytes).
//!
//! What the profile does not say is made up the way the real machines show it:
//! - NVLink: 18 links per GPU (`NVML_NVLINK_MAX_LINKS`). A two-GPU island is a bridged
//!   pair (4 links to the peer); a larger island hangs off NVSwitches (every link to one
//!   of four switches, which HGX boards show on PCIe at bus `0xf0`–`0xf3`); a
//!   multi-node island's links go to NVLink switch trays that are not on this node's PCIe,
//!   so their remote PCI info is not available. GPUs outside any island have no link.
//! - Fabric info: multi-node NVLink gives `COMPLETED` with the domain's cluster UUID and
//!   clique ID; an NVSwitch board without multi-node NVLink gives `COMPLETED` with an
//!   all-zero UUID (as HGX H100 does, which is *not* multi-node NVLink); anything else
//!   gives `NOT_SUPPORTED`.

use nvml_wrapper_sys::bindings as sys;
use phalanx_dra_driver::discovery::profile::{Profile, ProfileDiscovery};
use phalanx_dra_driver::discovery::{Discovery, NodeContext};

/// `NVML_NVLINK_MAX_LINKS`.
pub const MAX_LINKS: usize = 18;

/// The far end of an active NVLink link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A device on this node's PCIe, by NVML bus ID.
    Pci(String),
    /// A switch not visible on this node's PCIe.
    OffNode,
}

/// GPU fabric info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fabric {
    /// `NVML_ERROR_NOT_SUPPORTED`.
    NotSupported,
    /// `NVML_GPU_FABRIC_STATE_COMPLETED`, status success.
    Completed {
        /// Cluster UUID bytes (all zero on single-node NVSwitch boards).
        cluster_uuid: [u8; 16],
        /// Clique ID.
        clique_id: u32,
    },
}

/// One GPU as NVML reports it.
#[derive(Debug, Clone)]
pub struct FakeGpu {
    /// Minor number (the profile's index).
    pub minor: u32,
    /// `GPU-…`.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// `NVML_DEVICE_ARCH_*`.
    pub architecture: u32,
    /// CUDA compute capability.
    pub compute_capability: (i32, i32),
    /// Total memory, bytes.
    pub memory_total: u64,
    /// `dddddddd:BB:DD.F`, upper-case hex, as NVML prints it.
    pub bus_id: String,
    /// PCI domain, bus, device numbers.
    pub pci: (u32, u32, u32),
    /// Per link, the far end when the link is active.
    pub links: Vec<Option<Remote>>,
    /// Fabric info.
    pub fabric: Fabric,
}

/// A machine: the driver and its GPUs in NVML index order.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `nvmlSystemGetDriverVersion`.
    pub driver_version: String,
    /// `nvmlSystemGetCudaDriverVersion_v2`: major × 1000 + minor × 10.
    pub cuda_driver_version: i32,
    /// The GPUs.
    pub gpus: Vec<FakeGpu>,
}

/// Why a profile cannot be turned into a machine.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The NVML architecture code of a profile's architecture name.
pub fn architecture_code(name: &str) -> Result<u32, Error> {
    Ok(match name {
        "Kepler" => sys::NVML_DEVICE_ARCH_KEPLER,
        "Maxwell" => sys::NVML_DEVICE_ARCH_MAXWELL,
        "Pascal" => sys::NVML_DEVICE_ARCH_PASCAL,
        "Volta" => sys::NVML_DEVICE_ARCH_VOLTA,
        "Turing" => sys::NVML_DEVICE_ARCH_TURING,
        "Ampere" => sys::NVML_DEVICE_ARCH_AMPERE,
        "Ada Lovelace" => sys::NVML_DEVICE_ARCH_ADA,
        "Hopper" => sys::NVML_DEVICE_ARCH_HOPPER,
        "Blackwell" => sys::NVML_DEVICE_ARCH_BLACKWELL,
        other => return Err(Error(format!("architecture {other:?} has no NVML code"))),
    })
}

fn parse_version(v: &str, what: &str) -> Result<(i32, i32), Error> {
    let mut parts = v.split('.').map(|p| p.parse::<i32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
        _ => Err(Error(format!("{what} {v:?} is not major.minor"))),
    }
}

/// `0008:01:00.0` → (`00000008:01:00.0`, domain, bus, device).
fn nvml_bus_id(bdf: &str) -> Result<(String, (u32, u32, u32)), Error> {
    let bad = || Error(format!("bus ID {bdf:?}"));
    let (domain, rest) = bdf.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (device, _function) = rest.split_once('.').ok_or_else(bad)?;
    let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad());
    let numbers = (hex(domain)?, hex(bus)?, hex(device)?);
    Ok((format!("{:08X}:{}", numbers.0, bdf[domain.len() + 1..].to_ascii_uppercase()), numbers))
}

/// `uuid-string` → 16 bytes.
fn uuid_bytes(uuid: &str) -> Result<[u8; 16], Error> {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return Err(Error(format!("cluster UUID {uuid:?}")));
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| Error(format!("cluster UUID {uuid:?}")))?;
    }
    Ok(out)
}

impl Machine {
    /// What NVML reports on node `node` of `profile`'s shape.
    pub fn from_profile(profile: &Profile, node: &NodeContext) -> Result<Machine, Error> {
        let inventory =
            ProfileDiscovery::new(profile.clone()).discover(node).map_err(|e| Error(format!("profile: {e}")))?;
        let (cuda_major, cuda_minor) = parse_version(&profile.cuda_driver_version, "cudaDriverVersion")?;
        let multi_node = profile.nvlink.multi_node.is_some();
        let bus_of = |index: u32| -> Result<String, Error> {
            let gpu = inventory.gpus.iter().find(|g| g.index == index).ok_or_else(|| Error(format!("GPU {index}")))?;
            Ok(nvml_bus_id(&gpu.pci_bus_id)?.0)
        };
        let mut gpus = Vec::new();
        for gpu in &inventory.gpus {
            let (bus_id, pci) = nvml_bus_id(&gpu.pci_bus_id)?;
            let island = profile.nvlink.islands.iter().find(|i| i.contains(&gpu.index));
            let mut links = vec![None; MAX_LINKS];
            let mut fabric = Fabric::NotSupported;
            match island {
                None => {}
                Some(members) if multi_node => {
                    links.iter_mut().for_each(|l| *l = Some(Remote::OffNode));
                    let domain = gpu.nvlink_domain.as_deref().unwrap_or_default();
                    let (uuid, clique) =
                        domain.rsplit_once('.').ok_or_else(|| Error(format!("NVLink domain {domain:?}")))?;
                    let clique_id = clique.parse().map_err(|_| Error(format!("clique of {domain:?}")))?;
                    fabric = Fabric::Completed { cluster_uuid: uuid_bytes(uuid)?, clique_id };
                    debug_assert!(members.contains(&gpu.index));
                }
                Some(members) if members.len() == 2 => {
                    let peer = members.iter().find(|m| **m != gpu.index).copied().unwrap_or(gpu.index);
                    for link in links.iter_mut().take(4) {
                        *link = Some(Remote::Pci(bus_of(peer)?));
                    }
                }
                Some(_) => {
                    for (l, link) in links.iter_mut().enumerate() {
                        *link = Some(Remote::Pci(format!("00000000:{:02X}:00.0", 0xf0 + l % 4)));
                    }
                    fabric = Fabric::Completed { cluster_uuid: [0; 16], clique_id: 0 };
                }
            }
            gpus.push(FakeGpu {
                minor: gpu.index,
                uuid: gpu.uuid.clone(),
                name: gpu.product_name.clone(),
                architecture: architecture_code(&gpu.architecture)?,
                compute_capability: parse_version(&gpu.cuda_compute_capability, "cudaComputeCapability")?,
                memory_total: gpu.memory_bytes,
                bus_id,
                pci,
                links,
                fabric,
            });
        }
        Ok(Machine {
            driver_version: profile.driver_version.clone(),
            cuda_driver_version: cuda_major * 1000 + cuda_minor * 10,
            gpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids_take_nvml_form() {
        assert_eq!(nvml_bus_id("0000:1b:00.0").unwrap(), ("00000000:1B:00.0".into(), (0, 0x1b, 0)));
        assert_eq!(nvml_bus_id("0008:01:00.0").unwrap().0, "00000008:01:00.0");
    }

    #[test]
    fn hgx_is_an_nvswitch_board_with_a_zero_cluster_uuid() {
        let p = Profile::load("hgx-h100-8").unwrap();
        let m = Machine::from_profile(&p, &NodeContext::named("n")).unwrap();
        assert_eq!(m.gpus.len(), 8);
        assert_eq!(m.cuda_driver_version, 12080);
        assert!(m.gpus.iter().all(|g| g.fabric == Fabric::Completed { cluster_uuid: [0; 16], clique_id: 0 }));
        assert!(
            m.gpus
                .iter()
                .all(|g| g.links.iter().all(|l| matches!(l, Some(Remote::Pci(b)) if b.starts_with("00000000:F"))))
        );
    }

    #[test]
    fn nvl72_trays_report_their_rack_as_fabric_info() {
        let p = Profile::load("gb200-nvl72").unwrap();
        let node = |i| NodeContext { name: format!("tray-{i}"), index: i, ..Default::default() };
        let a = Machine::from_profile(&p, &node(0)).unwrap();
        let b = Machine::from_profile(&p, &node(17)).unwrap();
        let c = Machine::from_profile(&p, &node(18)).unwrap();
        assert_eq!(a.gpus[0].fabric, b.gpus[3].fabric);
        assert_ne!(a.gpus[0].fabric, c.gpus[0].fabric);
        assert!(matches!(a.gpus[0].fabric, Fabric::Completed { cluster_uuid, .. } if cluster_uuid != [0; 16]));
    }
}
