//! Host calls made straight through the proxy-wasm ABI, returning every status the host can
//! give: the SDK's wrappers panic on a status they do not expect (e.g. `set_shared_data` on
//! anything but Ok / CasMismatch, `get_current_time` on anything but Ok), which would trap
//! the VM exactly where a filter means to fail open.
#![allow(clashing_extern_declarations)] // the SDK declares these with its own Status enum

use crate::HeaderMap;
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
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
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
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_set_header_map_pairs(map_type: u32, map_data: *const u8, map_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
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

/// Reads the filters of a composed module share within one callback (one request, one
/// instant): the clock and the request header map are read from the host once and served
/// to every filter after; the filters' own request-header changes keep the copy current.
/// Active only between `begin_shared_reads` and `end_shared_reads` (the composed module
/// brackets each stream callback); everything else always asks the host.
#[derive(Default)]
struct SharedReads {
    now: Option<u64>,
    request_headers: Option<HeaderMap>,
}

const REQUEST_HEADERS: u32 = 0;

thread_local! {
    static SHARED_READS: std::cell::RefCell<Option<SharedReads>> =
        const { std::cell::RefCell::new(None) };
}

/// Starts sharing reads among the filters of one callback.
pub fn begin_shared_reads() {
    SHARED_READS.with(|r| *r.borrow_mut() = Some(SharedReads::default()));
}

/// Stops sharing: the next reads go to the host.
pub fn end_shared_reads() {
    SHARED_READS.with(|r| *r.borrow_mut() = None);
}

fn shared<T>(f: impl FnOnce(&mut SharedReads) -> T) -> Option<T> {
    SHARED_READS.with(|r| r.borrow_mut().as_mut().map(f))
}

/// `f` applied to the request header map of this callback, read from the host once (None
/// when not sharing). Lookups borrow the shared copy instead of cloning it.
fn with_shared_request_headers<T>(f: impl FnOnce(&HeaderMap) -> T) -> Option<T> {
    SHARED_READS.with(|r| {
        let mut reads = r.borrow_mut();
        let reads = reads.as_mut()?;
        let headers = reads.request_headers.get_or_insert_with(|| {
            HeaderMap::from_serialized(host_map_serialized(REQUEST_HEADERS))
        });
        Some(f(headers))
    })
}

/// The host's wall clock in nanoseconds since the epoch (read once per callback while a
/// composed module shares reads).
pub fn current_time_nanos() -> Result<u64, HostStatus> {
    if let Some(Some(now)) = shared(|r| r.now) {
        return Ok(now);
    }
    let mut now: u64 = 0;
    // SAFETY: pointer to a local.
    match unsafe { proxy_get_current_time_nanoseconds(&mut now) } {
        0 => {
            shared(|r| r.now = Some(now));
            Ok(now)
        }
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

/// Asks the host to call the root context's tick every `period` (zero: stop). Periods
/// beyond u32 milliseconds are clamped.
pub fn set_tick_period(period: std::time::Duration) -> Result<(), HostStatus> {
    let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: a plain value.
    match unsafe { proxy_set_tick_period_milliseconds(millis) } {
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

/// A header map's value for `key` (the first, as Envoy returns it); None when absent or when
/// the map cannot be read now (any status: the caller treats the header as missing).
pub fn get_map_value(map_type: u32, key: &str) -> Option<Vec<u8>> {
    if map_type == REQUEST_HEADERS {
        let found = with_shared_request_headers(|headers| headers.get(key).map(<[u8]>::to_vec));
        if let Some(value) = found {
            return value;
        }
    }
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: pointers to locals; the host writes a buffer it allocated through us.
    let status = unsafe {
        proxy_get_header_map_value(map_type, key.as_ptr(), key.len(), &mut data, &mut size)
    };
    // SAFETY: the host filled `data` / `size` for this call.
    (status == 0).then(|| unsafe { take(data, size) })
}

/// Sets `key` to `value` (replacing every value it had); false when the host refused.
pub fn replace_map_value(map_type: u32, key: &str, value: &[u8]) -> bool {
    // SAFETY: the host only reads the given ranges.
    let status = unsafe {
        proxy_replace_header_map_value(
            map_type,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    if status == 0 && map_type == REQUEST_HEADERS {
        shared(|r| {
            if let Some(headers) = &mut r.request_headers {
                headers.replace(key, value);
            }
        });
    }
    status == 0
}

/// Removes `key`; false when the host refused.
pub fn remove_map_value(map_type: u32, key: &str) -> bool {
    // SAFETY: the host only reads the given range.
    let removed = unsafe { proxy_remove_header_map_value(map_type, key.as_ptr(), key.len()) == 0 };
    if removed && map_type == REQUEST_HEADERS {
        shared(|r| {
            if let Some(headers) = &mut r.request_headers {
                headers.remove(key);
            }
        });
    }
    removed
}

/// Every (name, value) of a header map, in order; empty when it cannot be read now.
pub fn get_map_pairs(map_type: u32) -> Vec<(String, Vec<u8>)> {
    if map_type == REQUEST_HEADERS {
        if let Some(headers) = with_shared_request_headers(HeaderMap::to_pairs) {
            return headers;
        }
    }
    crate::header_map::decode_serialized(&host_map_serialized(map_type)).unwrap_or_default()
}

/// A header map, held in one buffer (the composed module's shared copy of the request
/// headers while it shares reads); empty when it cannot be read now.
pub fn get_header_map(map_type: u32) -> HeaderMap {
    if map_type == REQUEST_HEADERS {
        if let Some(headers) = with_shared_request_headers(HeaderMap::clone) {
            return headers;
        }
    }
    HeaderMap::from_serialized(host_map_serialized(map_type))
}

/// A header map as the host serializes it (empty when it cannot be read now).
fn host_map_serialized(map_type: u32) -> Vec<u8> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: pointers to locals; the host writes a buffer it allocated through us.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    if status != 0 {
        return Vec::new();
    }
    // SAFETY: the host filled `data` / `size` for this call.
    unsafe { take(data, size) }
}

/// The request header map, for reading every value of a field: the composed module's
/// shared copy while it shares reads, else the host's serialized map read in place — one
/// buffer, where decoding it costs two allocations per field.
pub enum RequestPairs {
    Shared,
    Own(Vec<u8>),
}

impl RequestPairs {
    /// Reads the map (once; look fields up with [`RequestPairs::values`]).
    pub fn read() -> RequestPairs {
        if shared(|_| ()).is_some() {
            RequestPairs::Shared
        } else {
            RequestPairs::Own(host_map_serialized(REQUEST_HEADERS))
        }
    }

    /// Every value of `name`, in order.
    pub fn values(&self, name: &str) -> Vec<Vec<u8>> {
        match self {
            RequestPairs::Shared => {
                with_shared_request_headers(|map| map.all(name).map(<[u8]>::to_vec).collect())
                    .unwrap_or_default()
            }
            RequestPairs::Own(bytes) => crate::header_map::serialized_pairs(bytes)
                .filter(|(k, _)| *k == name.as_bytes())
                .map(|(_, v)| v.to_vec())
                .collect(),
        }
    }
}

/// Replaces a whole header map; false when the host refused.
pub fn set_map_pairs(map_type: u32, pairs: &[(&str, &[u8])]) -> bool {
    let bytes = encode_pairs(pairs);
    // SAFETY: the host only reads the given range.
    let set = unsafe { proxy_set_header_map_pairs(map_type, bytes.as_ptr(), bytes.len()) == 0 };
    if map_type == REQUEST_HEADERS {
        // Whatever the outcome, the next read asks the host.
        shared(|r| r.request_headers = None);
    }
    set
}

/// Up to `max_size` bytes of a buffer from `start`; Ok(None) when there is none,
/// Err with the host's status when it cannot be read.
pub fn get_buffer(
    buffer_type: u32,
    start: usize,
    max_size: usize,
) -> Result<Option<Vec<u8>>, HostStatus> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: pointers to locals; the host writes a buffer it allocated through us.
    let status =
        unsafe { proxy_get_buffer_bytes(buffer_type, start, max_size, &mut data, &mut size) };
    match status {
        // SAFETY: the host filled `data` / `size` for this call.
        0 => Ok((!data.is_null()).then(|| unsafe { take(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(HostStatus(other)),
    }
}

/// Replaces `size` bytes of a buffer from `start` with `value`; false when refused.
pub fn set_buffer(buffer_type: u32, start: usize, size: usize, value: &[u8]) -> bool {
    // SAFETY: the host only reads the given range.
    unsafe { proxy_set_buffer_bytes(buffer_type, start, size, value.as_ptr(), value.len()) == 0 }
}

/// Sends a local reply; false when the host refused it (the request then goes on).
pub fn send_local_response(status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    let headers = encode_pairs(&pairs);
    // SAFETY: the host only reads the given ranges.
    let status = unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    status == 0
}

/// The ABI's header-map encoding: count (u32 LE), (name size, value size) per pair, then
/// each name and value followed by a NUL.
fn encode_pairs(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}
