//! A fake `libnvidia-ml.so`: the NVML entry points the Phalanx driver calls, answering
//! from a hardware profile instead of a GPU. Load it with nvml-wrapper's library path
//! (`phalanx-dra-driver --nvml-library target/debug/libphalanx_fake_nvml.so`).
//!
//! Configured by the environment of the process that loads it, read at `nvmlInit`:
//! - `PHALANX_FAKE_NVML_PROFILE`: a built-in profile name or a profile file (required);
//! - `PHALANX_FAKE_NVML_NODE`: the node whose identities (UUIDs, NVLink domain) to report
//!   (default `$NODE_NAME`, else `localhost`), `PHALANX_FAKE_NVML_NODE_INDEX` its index
//!   among the profile's nodes (default 0; gives the multi-node NVLink domain);
//! - `PHALANX_FAKE_NVML_EVENTS`: a file of events, one per line, `<gpu index> <event>`
//!   with `<event>` one of `xid <n>`, `ecc-sbe`, `ecc-dbe` (delivered, in file order, to
//!   every event set registered for that GPU and event type; lines appended later are
//!   delivered when they appear), `remap-pending` or `remap-failure` (reported by
//!   `nvmlDeviceGetRemappedRows` from then on);
//! - `PHALANX_FAKE_NVML_NO_EVENTS`: GPU indexes, comma-separated, whose event
//!   registration fails with `NOT_SUPPORTED` (a GPU that cannot be monitored).
//!
//! Anything not implemented here is absent from the library, so nvml-wrapper reports a
//! missing function rather than a made-up value.

pub mod machine;

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nvml_wrapper_sys::bindings as sys;
use phalanx_dra_driver::discovery::NodeContext;
use phalanx_dra_driver::discovery::profile::Profile;

use machine::{Fabric, Machine, Remote};

type Return = sys::nvmlReturn_t;

const SUCCESS: Return = sys::nvmlReturn_enum_NVML_SUCCESS;
const UNINITIALIZED: Return = sys::nvmlReturn_enum_NVML_ERROR_UNINITIALIZED;
const INVALID_ARGUMENT: Return = sys::nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT;
const NOT_SUPPORTED: Return = sys::nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED;
const INSUFFICIENT_SIZE: Return = sys::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_SIZE;
const TIMEOUT: Return = sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT;
const UNKNOWN: Return = sys::nvmlReturn_enum_NVML_ERROR_UNKNOWN;

/// One injected event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    gpu: usize,
    kind: u64,
    data: u64,
}

/// A line of the events file: an event, a row-remapping state, or nothing.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Event(Event),
    RemapPending(usize),
    RemapFailure(usize),
    Ignored,
}

fn parse_line(line: &str) -> Line {
    let fields: Vec<&str> = line.split('#').next().unwrap_or_default().split_whitespace().collect();
    let Some(gpu) = fields.first().and_then(|g| g.parse().ok()) else { return Line::Ignored };
    let event = |kind: u32, data: u64| Line::Event(Event { gpu, kind: u64::from(kind), data });
    match fields[1..] {
        ["xid", n] => n.parse().map(|n| event(sys::nvmlEventTypeXidCriticalError, n)).unwrap_or(Line::Ignored),
        ["ecc-sbe"] => event(sys::nvmlEventTypeSingleBitEccError, 0),
        ["ecc-dbe"] => event(sys::nvmlEventTypeDoubleBitEccError, 0),
        ["remap-pending"] => Line::RemapPending(gpu),
        ["remap-failure"] => Line::RemapFailure(gpu),
        _ => Line::Ignored,
    }
}

struct EventSet {
    registered: Vec<(usize, u64)>,
    /// Lines of the events file already looked at.
    seen: usize,
}

struct Loaded {
    machine: Arc<Machine>,
    refs: usize,
    events_file: Option<PathBuf>,
    no_events: Vec<usize>,
    sets: Vec<Option<EventSet>>,
}

static STATE: Mutex<Option<Loaded>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<Loaded>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn load() -> Result<Loaded, String> {
    let profile_name = env("PHALANX_FAKE_NVML_PROFILE").ok_or("PHALANX_FAKE_NVML_PROFILE is not set")?;
    let profile = Profile::load(&profile_name).map_err(|e| e.to_string())?;
    let node = NodeContext {
        name: env("PHALANX_FAKE_NVML_NODE").or_else(|| env("NODE_NAME")).unwrap_or_else(|| "localhost".into()),
        index: env("PHALANX_FAKE_NVML_NODE_INDEX")
            .map(|i| i.parse().map_err(|_| format!("node index {i:?}")))
            .transpose()?
            .unwrap_or(0),
        ..Default::default()
    };
    let machine = Machine::from_profile(&profile, &node).map_err(|e| e.to_string())?;
    let no_events = env("PHALANX_FAKE_NVML_NO_EVENTS")
        .map(|v| v.split(',').filter_map(|i| i.trim().parse().ok()).collect())
        .unwrap_or_default();
    Ok(Loaded {
        machine: Arc::new(machine),
        refs: 0,
        events_file: env("PHALANX_FAKE_NVML_EVENTS").map(PathBuf::from),
        no_events,
        sets: Vec::new(),
    })
}

fn machine() -> Option<Arc<Machine>> {
    state().as_ref().map(|s| s.machine.clone())
}

fn event_lines(file: &Option<PathBuf>) -> Vec<Line> {
    file.as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|text| text.lines().map(parse_line).collect())
        .unwrap_or_default()
}

/// Device handles are the GPU's position plus one, never dereferenced.
fn handle_of(index: usize) -> sys::nvmlDevice_t {
    (index + 1) as sys::nvmlDevice_t
}

fn gpu_of(handle: sys::nvmlDevice_t) -> Option<(Arc<Machine>, usize)> {
    let machine = machine()?;
    let index = (handle as usize).checked_sub(1)?;
    (index < machine.gpus.len()).then_some((machine, index))
}

/// Runs `f` with the GPU behind `device`, or fails as NVML does.
fn with_gpu(device: sys::nvmlDevice_t, f: impl FnOnce(&machine::FakeGpu) -> Return) -> Return {
    match gpu_of(device) {
        Some((machine, i)) => f(&machine.gpus[i]),
        None if machine().is_none() => UNINITIALIZED,
        None => INVALID_ARGUMENT,
    }
}

/// Copies `value` and a terminating NUL into the caller's buffer of `length` bytes.
///
/// # Safety
/// `buf` must be valid for writes of `length` bytes (NVML's contract for every
/// string-returning call).
unsafe fn write_str(value: &str, buf: *mut c_char, length: c_uint) -> Return {
    if buf.is_null() {
        return INVALID_ARGUMENT;
    }
    let bytes = value.as_bytes();
    if bytes.len() + 1 > length as usize {
        return INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller guarantees `length` writable bytes; we write len + 1 ≤ length.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, bytes.len());
        *buf.add(bytes.len()) = 0;
    }
    SUCCESS
}

/// Writes `value` through `out` when it is not null.
///
/// # Safety
/// `out` must be null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T) -> Return {
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null and, by the caller's contract, valid for a write of T.
    unsafe { out.write(value) };
    SUCCESS
}

fn fill_bus_id<const N: usize>(field: &mut [c_char; N], bus_id: &str) {
    for (dst, src) in field.iter_mut().zip(bus_id.bytes().take(N - 1)) {
        *dst = src as c_char;
    }
}

fn pci_info(bus_id: &str, pci: (u32, u32, u32)) -> sys::nvmlPciInfo_t {
    let mut info = sys::nvmlPciInfo_t {
        busIdLegacy: [0; 16],
        domain: pci.0,
        bus: pci.1,
        device: pci.2,
        pciDeviceId: 0,
        pciSubSystemId: 0,
        busId: [0; 32],
    };
    fill_bus_id(&mut info.busId, bus_id);
    fill_bus_id(&mut info.busIdLegacy, bus_id.get(4..).unwrap_or(bus_id));
    info
}

fn parse_remote(bus_id: &str) -> (u32, u32, u32) {
    let mut parts = bus_id.split([':', '.']).map(|p| u32::from_str_radix(p, 16).unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `nvmlInit_v2`: reads the environment and loads the profile (reference counted).
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> Return {
    let mut guard = state();
    if guard.is_none() {
        match load() {
            Ok(loaded) => *guard = Some(loaded),
            Err(e) => {
                eprintln!("phalanx-fake-nvml: {e}");
                return UNKNOWN;
            }
        }
    }
    if let Some(s) = guard.as_mut() {
        s.refs += 1;
    }
    SUCCESS
}

/// `nvmlInitWithFlags`: flags are ignored.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Return {
    nvmlInit_v2()
}

/// `nvmlShutdown`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> Return {
    let mut guard = state();
    match guard.as_mut() {
        None => UNINITIALIZED,
        Some(s) => {
            s.refs = s.refs.saturating_sub(1);
            if s.refs == 0 {
                *guard = None;
            }
            SUCCESS
        }
    }
}

/// `nvmlErrorString`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: Return) -> *const c_char {
    let s: &'static CStr = match result {
        SUCCESS => c"Success",
        UNINITIALIZED => c"Uninitialized",
        INVALID_ARGUMENT => c"Invalid Argument",
        NOT_SUPPORTED => c"Not Supported",
        INSUFFICIENT_SIZE => c"Insufficient Size",
        TIMEOUT => c"Timeout",
        _ => c"Unknown Error",
    };
    s.as_ptr()
}

/// `nvmlSystemGetDriverVersion`.
///
/// # Safety
/// `version` must be valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Return {
    match machine() {
        // SAFETY: forwarded caller contract.
        Some(m) => unsafe { write_str(&m.driver_version, version, length) },
        None => UNINITIALIZED,
    }
}

/// `nvmlSystemGetCudaDriverVersion_v2`.
///
/// # Safety
/// `version` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> Return {
    match machine() {
        // SAFETY: forwarded caller contract.
        Some(m) => unsafe { put(version, m.cuda_driver_version) },
        None => UNINITIALIZED,
    }
}

/// `nvmlDeviceGetCount_v2`.
///
/// # Safety
/// `count` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Return {
    match machine() {
        // SAFETY: forwarded caller contract.
        Some(m) => unsafe { put(count, m.gpus.len() as c_uint) },
        None => UNINITIALIZED,
    }
}

/// `nvmlDeviceGetHandleByIndex_v2`.
///
/// # Safety
/// `device` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut sys::nvmlDevice_t) -> Return {
    match machine() {
        None => UNINITIALIZED,
        Some(m) if (index as usize) < m.gpus.len() => {
            // SAFETY: forwarded caller contract.
            unsafe { put(device, handle_of(index as usize)) }
        }
        Some(_) => INVALID_ARGUMENT,
    }
}

/// `nvmlDeviceGetIndex`.
///
/// # Safety
/// `index` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: sys::nvmlDevice_t, index: *mut c_uint) -> Return {
    match gpu_of(device) {
        // SAFETY: forwarded caller contract.
        Some((_, i)) => unsafe { put(index, i as c_uint) },
        None => INVALID_ARGUMENT,
    }
}

/// `nvmlDeviceGetUUID`.
///
/// # Safety
/// `uuid` must be valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(device: sys::nvmlDevice_t, uuid: *mut c_char, length: c_uint) -> Return {
    // SAFETY: forwarded caller contract.
    with_gpu(device, |g| unsafe { write_str(&g.uuid, uuid, length) })
}

/// `nvmlDeviceGetName`.
///
/// # Safety
/// `name` must be valid for `length` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(device: sys::nvmlDevice_t, name: *mut c_char, length: c_uint) -> Return {
    // SAFETY: forwarded caller contract.
    with_gpu(device, |g| unsafe { write_str(&g.name, name, length) })
}

/// `nvmlDeviceGetMinorNumber`.
///
/// # Safety
/// `minor` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(device: sys::nvmlDevice_t, minor: *mut c_uint) -> Return {
    // SAFETY: forwarded caller contract.
    with_gpu(device, |g| unsafe { put(minor, g.minor) })
}

/// `nvmlDeviceGetArchitecture`.
///
/// # Safety
/// `arch` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetArchitecture(
    device: sys::nvmlDevice_t,
    arch: *mut sys::nvmlDeviceArchitecture_t,
) -> Return {
    // SAFETY: forwarded caller contract.
    with_gpu(device, |g| unsafe { put(arch, g.architecture) })
}

/// `nvmlDeviceGetCudaComputeCapability`.
///
/// # Safety
/// `major` and `minor` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: sys::nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> Return {
    with_gpu(device, |g| {
        // SAFETY: forwarded caller contract.
        match unsafe { put(major, g.compute_capability.0) } {
            // SAFETY: forwarded caller contract.
            SUCCESS => unsafe { put(minor, g.compute_capability.1) },
            e => e,
        }
    })
}

/// `nvmlDeviceGetMemoryInfo_v2`.
///
/// # Safety
/// `memory` must be null or valid for reads and writes of `nvmlMemory_v2_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: sys::nvmlDevice_t,
    memory: *mut sys::nvmlMemory_v2_t,
) -> Return {
    with_gpu(device, |g| {
        if memory.is_null() {
            return INVALID_ARGUMENT;
        }
        // SAFETY: non-null and valid by the caller's contract; the caller set `version`.
        let version = unsafe { (*memory).version };
        let reserved = 0;
        // SAFETY: as above.
        unsafe {
            memory.write(sys::nvmlMemory_v2_t {
                version,
                total: g.memory_total,
                reserved,
                free: g.memory_total,
                used: 0,
            })
        };
        SUCCESS
    })
}

/// `nvmlDeviceGetPciInfo_v3`.
///
/// # Safety
/// `pci` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(device: sys::nvmlDevice_t, pci: *mut sys::nvmlPciInfo_t) -> Return {
    // SAFETY: forwarded caller contract.
    with_gpu(device, |g| unsafe { put(pci, pci_info(&g.bus_id, g.pci)) })
}

/// `nvmlDeviceGetNvLinkState`.
///
/// # Safety
/// `active` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    device: sys::nvmlDevice_t,
    link: c_uint,
    active: *mut sys::nvmlEnableState_t,
) -> Return {
    with_gpu(device, |g| match g.links.get(link as usize) {
        None => INVALID_ARGUMENT,
        Some(l) => {
            let state = if l.is_some() {
                sys::nvmlEnableState_enum_NVML_FEATURE_ENABLED
            } else {
                sys::nvmlEnableState_enum_NVML_FEATURE_DISABLED
            };
            // SAFETY: forwarded caller contract.
            unsafe { put(active, state) }
        }
    })
}

/// `nvmlDeviceGetNvLinkRemotePciInfo_v2`: `NOT_SUPPORTED` for a link to a switch that
/// is not on this node's PCIe, `INVALID_ARGUMENT` for an inactive link.
///
/// # Safety
/// `pci` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkRemotePciInfo_v2(
    device: sys::nvmlDevice_t,
    link: c_uint,
    pci: *mut sys::nvmlPciInfo_t,
) -> Return {
    with_gpu(device, |g| match g.links.get(link as usize) {
        Some(Some(Remote::Pci(bus))) => {
            // SAFETY: forwarded caller contract.
            unsafe { put(pci, pci_info(bus, parse_remote(bus))) }
        }
        Some(Some(Remote::OffNode)) => NOT_SUPPORTED,
        _ => INVALID_ARGUMENT,
    })
}

fn fabric_parts(fabric: Fabric) -> Option<([u8; 16], u32)> {
    match fabric {
        Fabric::NotSupported => None,
        Fabric::Completed { cluster_uuid, clique_id } => Some((cluster_uuid, clique_id)),
    }
}

/// `nvmlDeviceGetGpuFabricInfo` (the unversioned struct).
///
/// # Safety
/// `info` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfo(
    device: sys::nvmlDevice_t,
    info: *mut sys::nvmlGpuFabricInfo_t,
) -> Return {
    with_gpu(device, |g| match fabric_parts(g.fabric) {
        None => NOT_SUPPORTED,
        Some((cluster_uuid, clique_id)) => {
            let value = sys::nvmlGpuFabricInfo_t {
                clusterUuid: cluster_uuid,
                status: SUCCESS,
                cliqueId: clique_id,
                state: sys::NVML_GPU_FABRIC_STATE_COMPLETED as sys::nvmlGpuFabricState_t,
            };
            // SAFETY: forwarded caller contract.
            unsafe { put(info, value) }
        }
    })
}

/// `nvmlDeviceGetGpuFabricInfoV` (versioned struct, v3 layout; the caller's version is
/// kept).
///
/// # Safety
/// `info` must be null or valid for reads and writes of `nvmlGpuFabricInfo_v3_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuFabricInfoV(
    device: sys::nvmlDevice_t,
    info: *mut sys::nvmlGpuFabricInfoV_t,
) -> Return {
    with_gpu(device, |g| match fabric_parts(g.fabric) {
        None => NOT_SUPPORTED,
        Some(_) if info.is_null() => INVALID_ARGUMENT,
        Some((cluster_uuid, clique_id)) => {
            // SAFETY: non-null and valid by the caller's contract.
            let version = unsafe { (*info).version };
            let value = sys::nvmlGpuFabricInfoV_t {
                version,
                clusterUuid: cluster_uuid,
                status: SUCCESS,
                cliqueId: clique_id,
                state: sys::NVML_GPU_FABRIC_STATE_COMPLETED as sys::nvmlGpuFabricState_t,
                healthMask: 0,
                healthSummary: 0,
            };
            // SAFETY: as above.
            unsafe { info.write(value) };
            SUCCESS
        }
    })
}

/// `nvmlDeviceGetRemappedRows`: pending / failure as the events file says.
///
/// # Safety
/// Every pointer must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: sys::nvmlDevice_t,
    corr_rows: *mut c_uint,
    unc_rows: *mut c_uint,
    is_pending: *mut c_uint,
    failure_occurred: *mut c_uint,
) -> Return {
    let Some((_, gpu)) = gpu_of(device) else { return INVALID_ARGUMENT };
    let file = state().as_ref().and_then(|s| s.events_file.clone());
    let lines = event_lines(&file);
    let pending = lines.contains(&Line::RemapPending(gpu));
    let failure = lines.contains(&Line::RemapFailure(gpu));
    // SAFETY: forwarded caller contract.
    unsafe {
        for r in [
            put(corr_rows, 0),
            put(unc_rows, c_uint::from(pending || failure)),
            put(is_pending, c_uint::from(pending)),
            put(failure_occurred, c_uint::from(failure)),
        ] {
            if r != SUCCESS {
                return r;
            }
        }
    }
    SUCCESS
}

/// `nvmlDeviceGetSupportedEventTypes`.
///
/// # Safety
/// `types` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: sys::nvmlDevice_t,
    types: *mut c_ulonglong,
) -> Return {
    let Some((_, gpu)) = gpu_of(device) else { return INVALID_ARGUMENT };
    if state().as_ref().is_some_and(|s| s.no_events.contains(&gpu)) {
        return NOT_SUPPORTED;
    }
    let all =
        sys::nvmlEventTypeXidCriticalError | sys::nvmlEventTypeSingleBitEccError | sys::nvmlEventTypeDoubleBitEccError;
    // SAFETY: forwarded caller contract.
    unsafe { put(types, c_ulonglong::from(all)) }
}

/// `nvmlEventSetCreate`.
///
/// # Safety
/// `set` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut sys::nvmlEventSet_t) -> Return {
    let mut guard = state();
    let Some(s) = guard.as_mut() else { return UNINITIALIZED };
    s.sets.push(Some(EventSet { registered: Vec::new(), seen: 0 }));
    let handle = s.sets.len() as sys::nvmlEventSet_t;
    // SAFETY: forwarded caller contract.
    unsafe { put(set, handle) }
}

fn set_index(set: sys::nvmlEventSet_t) -> Option<usize> {
    (set as usize).checked_sub(1)
}

/// `nvmlDeviceRegisterEvents`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: sys::nvmlDevice_t,
    types: c_ulonglong,
    set: sys::nvmlEventSet_t,
) -> Return {
    let Some((_, gpu)) = gpu_of(device) else { return INVALID_ARGUMENT };
    let mut guard = state();
    let Some(s) = guard.as_mut() else { return UNINITIALIZED };
    if s.no_events.contains(&gpu) {
        return NOT_SUPPORTED;
    }
    match set_index(set).and_then(|i| s.sets.get_mut(i)).and_then(Option::as_mut) {
        Some(es) => {
            es.registered.push((gpu, types));
            SUCCESS
        }
        None => INVALID_ARGUMENT,
    }
}

/// The next event of set `index` from the events file, if one is there.
fn next_event(index: usize) -> Result<Option<Event>, Return> {
    let mut guard = state();
    let s = guard.as_mut().ok_or(UNINITIALIZED)?;
    let lines = event_lines(&s.events_file);
    let es = s.sets.get_mut(index).and_then(Option::as_mut).ok_or(INVALID_ARGUMENT)?;
    while es.seen < lines.len() {
        let line = &lines[es.seen];
        es.seen += 1;
        if let Line::Event(e) = line
            && es.registered.iter().any(|(gpu, types)| *gpu == e.gpu && types & e.kind != 0)
        {
            return Ok(Some(e.clone()));
        }
    }
    Ok(None)
}

/// `nvmlEventSetWait_v2`: the next matching line of the events file, waiting up to
/// `timeout_ms` for one to be appended.
///
/// # Safety
/// `data` must be null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: sys::nvmlEventSet_t,
    data: *mut sys::nvmlEventData_t,
    timeout_ms: c_uint,
) -> Return {
    let Some(index) = set_index(set) else { return INVALID_ARGUMENT };
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    loop {
        match next_event(index) {
            Err(e) => return e,
            Ok(Some(e)) => {
                let value = sys::nvmlEventData_t {
                    device: handle_of(e.gpu),
                    eventType: e.kind,
                    eventData: e.data,
                    gpuInstanceId: 0,
                    computeInstanceId: 0,
                };
                // SAFETY: forwarded caller contract.
                return unsafe { put(data, value) };
            }
            Ok(None) if Instant::now() >= deadline => return TIMEOUT,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `nvmlEventSetFree`.
#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(set: sys::nvmlEventSet_t) -> Return {
    let mut guard = state();
    let Some(s) = guard.as_mut() else { return UNINITIALIZED };
    match set_index(set).and_then(|i| s.sets.get_mut(i)) {
        Some(slot @ Some(_)) => {
            *slot = None;
            SUCCESS
        }
        _ => INVALID_ARGUMENT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_parse() {
        assert_eq!(parse_line("3 xid 79"), Line::Event(Event { gpu: 3, kind: 8, data: 79 }));
        assert_eq!(parse_line("0 ecc-dbe # injected"), Line::Event(Event { gpu: 0, kind: 2, data: 0 }));
        assert_eq!(parse_line("2 remap-failure"), Line::RemapFailure(2));
        assert_eq!(parse_line("x xid 79"), Line::Ignored);
        assert_eq!(parse_line("1 xid many"), Line::Ignored);
    }
}
