//! Host calls made straight through the proxy-wasm ABI, returning every status the host can
//! give: the SDK's wrappers panic on a status they do not expect (e.g. `set_shared_data` on
//! anything but Ok / CasMismatch, `get_current_time` on anything but Ok), which would trap
//! the VM exactly where a filter means to fail open.
#![allow(clashing_extern_declarations)] // the SDK declares these with its own Status enum

use std::ptr::{null, null_mut};

/// A proxy-wasm status code other than Ok (0), as the host returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStatus(pub u32);

/// ABI 0.2.1 status codes the filters look at.
pub const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

/// Takes ownership of a buffer the host allocated in our memory (through the SDK's
/// `proxy_on_memory_allocate`, a `Vec<u8>` of exactly `size`).
///
/// # Safety
/// `data` / `size` must come from the host for this call.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// The value and CAS of a shared-data key; Ok(None) when it does not exist.
pub fn get_shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: pointers to locals; the host writes a buffer it allocated through us.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        // SAFETY: the host filled `data` / `size` for this call.
        0 => Ok(Some((unsafe { take(data, size) }, cas))),
        NOT_FOUND => Ok(None),
        other => Err(HostStatus(other)),
    }
}

/// Sets a shared-data key; `cas` 0 is unconditional. Ok(false) on a CAS mismatch.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<bool, HostStatus> {
    let value_data = if value.is_empty() {
        null()
    } else {
        value.as_ptr()
    };
    // SAFETY: key and value outlive the call.
    match unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value_data, value.len(), cas) } {
        0 => Ok(true),
        CAS_MISMATCH => Ok(false),
        other => Err(HostStatus(other)),
    }
}

/// The host's wall clock in nanoseconds since the epoch.
pub fn current_time_nanos() -> Result<u64, HostStatus> {
    let mut now: u64 = 0;
    // SAFETY: pointer to a local.
    match unsafe { proxy_get_current_time_nanoseconds(&mut now) } {
        0 => Ok(now),
        other => Err(HostStatus(other)),
    }
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), HostStatus> {
    // SAFETY: plain values.
    match unsafe { proxy_increment_metric(id, by) } {
        0 => Ok(()),
        other => Err(HostStatus(other)),
    }
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostStatus> {
    // SAFETY: plain values.
    match unsafe { proxy_record_metric(id, value) } {
        0 => Ok(()),
        other => Err(HostStatus(other)),
    }
}

/// A property (path segments joined by NUL, as the ABI wants); Ok(None) when not found.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, HostStatus> {
    let mut joined = Vec::new();
    for (i, segment) in path.iter().enumerate() {
        if i > 0 {
            joined.push(0);
        }
        joined.extend_from_slice(segment.as_bytes());
    }
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: pointers to locals; the host writes a buffer it allocated through us.
    match unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut data, &mut size) } {
        // SAFETY: the host filled `data` / `size` for this call.
        0 => Ok(Some(unsafe { take(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(HostStatus(other)),
    }
}

/// Writes a line to the host's log (level as the ABI numbers it: 0 trace .. 5 critical).
pub fn log(level: u32, message: &str) -> Result<(), HostStatus> {
    // SAFETY: the message outlives the call.
    match unsafe { proxy_log(level, message.as_ptr(), message.len()) } {
        0 => Ok(()),
        other => Err(HostStatus(other)),
    }
}

/// Defines a metric (type as the ABI numbers it: 0 counter, 1 gauge, 2 histogram).
pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, HostStatus> {
    let mut id: u32 = 0;
    // SAFETY: the name outlives the call; pointer to a local.
    match unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) } {
        0 => Ok(id),
        other => Err(HostStatus(other)),
    }
}
