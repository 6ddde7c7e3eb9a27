//! NVML calls `nvml-wrapper` 0.13 does not wrap, made through its raw symbol table:
//! GPU fabric info (the multi-node NVLink domain) and remapped rows (HBM row
//! remapping). The only `unsafe` in the driver; each block says why it is sound.
#![allow(unsafe_code)]

use std::mem::size_of;

use nvml_wrapper::Device;
use nvml_wrapper_sys::bindings as sys;

/// A GPU's fabric state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FabricInfo {
    /// The NVLink partition's cluster UUID; all zero on single-node NVSwitch boards.
    pub cluster_uuid: [u8; 16],
    /// The clique (partition) ID within the cluster.
    pub clique_id: u32,
    /// `NVML_GPU_FABRIC_STATE_*`.
    pub state: u8,
    /// The registration's own result code (`NVML_SUCCESS` when registered).
    pub status: u32,
}

impl FabricInfo {
    /// Whether the GPU is in a multi-node NVLink partition, as go-nvlib's
    /// `IsFabricAttached` decides: registration completed, successfully, with a
    /// non-zero cluster UUID (HGX H100 reports COMPLETED with a zero UUID, which is not
    /// multi-node NVLink).
    pub fn attached(&self) -> bool {
        u32::from(self.state) == sys::NVML_GPU_FABRIC_STATE_COMPLETED
            && self.status == sys::nvmlReturn_enum_NVML_SUCCESS
            && self.cluster_uuid != [0; 16]
    }

    /// `<cluster uuid>.<clique id>`, the form of GPU feature discovery's
    /// `nvidia.com/gpu.clique` label and of NVIDIA's DRA driver.
    pub fn clique(&self) -> String {
        format!("{}.{}", crate::discovery::format_uuid(&self.cluster_uuid), self.clique_id)
    }
}

/// Why a raw call failed: NVML's return code, or the symbol is absent from the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The library has no such function (an older driver).
    Missing,
    /// `NVML_ERROR_NOT_SUPPORTED`.
    NotSupported,
    /// Any other return code.
    Code(u32),
}

fn check(code: sys::nvmlReturn_t) -> Result<(), CallError> {
    match code {
        sys::nvmlReturn_enum_NVML_SUCCESS => Ok(()),
        sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED => Err(CallError::NotSupported),
        other => Err(CallError::Code(other)),
    }
}

/// `nvmlDeviceGetGpuFabricInfoV` (v3 struct), falling back to the unversioned
/// `nvmlDeviceGetGpuFabricInfo` where the versioned symbol is missing.
pub fn fabric_info(device: &Device<'_>) -> Result<FabricInfo, CallError> {
    let lib = device.nvml().lib();
    // SAFETY: the handle is only passed back to NVML, which owns it.
    let handle = unsafe { device.handle() };
    if let Ok(f) = lib.nvmlDeviceGetGpuFabricInfoV.as_ref() {
        // SAFETY: a plain C struct of integers and a byte array; all-zero is a valid value.
        let mut info: sys::nvmlGpuFabricInfoV_t = unsafe { std::mem::zeroed() };
        // NVML's versioned-struct convention: size | version << 24 (0x03000028 for v3).
        info.version = size_of::<sys::nvmlGpuFabricInfoV_t>() as u32 | (3 << 24);
        // SAFETY: `f` is NVML's function with this signature (from the bindings); `handle`
        // is a live device handle of the initialised library; `info` is a valid,
        // writable struct of the version we declared.
        check(unsafe { f(handle, &mut info) })?;
        return Ok(FabricInfo {
            cluster_uuid: info.clusterUuid,
            clique_id: info.cliqueId,
            state: info.state,
            status: info.status,
        });
    }
    let f = lib.nvmlDeviceGetGpuFabricInfo.as_ref().map_err(|_| CallError::Missing)?;
    // SAFETY: as above, for the unversioned struct.
    let mut info: sys::nvmlGpuFabricInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { f(handle, &mut info) })?;
    Ok(FabricInfo { cluster_uuid: info.clusterUuid, clique_id: info.cliqueId, state: info.state, status: info.status })
}

/// HBM row remapping state of a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemappedRows {
    /// A remapping is pending: the GPU needs a reset to apply it.
    pub pending: bool,
    /// A remapping failed: the GPU has run out of spare rows.
    pub failure: bool,
}

/// `nvmlDeviceGetRemappedRows`.
pub fn remapped_rows(device: &Device<'_>) -> Result<RemappedRows, CallError> {
    let f = device.nvml().lib().nvmlDeviceGetRemappedRows.as_ref().map_err(|_| CallError::Missing)?;
    let (mut corrected, mut uncorrected, mut pending, mut failure) = (0, 0, 0, 0);
    // SAFETY: `f` has this signature (bindings); the handle is live; the four pointers are
    // to local integers, valid for writes.
    check(unsafe { f(device.handle(), &mut corrected, &mut uncorrected, &mut pending, &mut failure) })?;
    Ok(RemappedRows { pending: pending != 0, failure: failure != 0 })
}
