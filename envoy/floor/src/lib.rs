//! The floor of a proxy-wasm filter in Envoy: no SDK, only the exports Envoy needs plus
//! `proxy_on_request_headers` (every other event is skipped by the host), written against
//! the raw ABI 0.2.1. Test and benchmark only.
//!
//! Its plugin configuration picks what a request costs, for the benchmark's micro-scenarios:
//! `""` nothing (one VM entry per request), `"headers:N"` N single-header reads
//! (`proxy_get_header_map_value`), `"pairs"` one read of the whole request header map
//! (`proxy_get_header_map_pairs`).

use std::alloc::{alloc, dealloc, Layout};
use std::cell::Cell;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

const PLUGIN_CONFIGURATION: u32 = 7;
const REQUEST_HEADERS: u32 = 0;
/// Headers a request through the benchmark carries (and a few it may not): a filter's
/// typical single reads.
const NAMES: [&str; 8] = [
    ":path",
    ":method",
    ":authority",
    "user-agent",
    "accept",
    ":scheme",
    "x-request-id",
    "x-forwarded-for",
];

#[derive(Clone, Copy)]
enum Mode {
    Nothing,
    SingleReads(usize),
    Pairs,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Nothing) };
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host's buffers for data it hands the module (configuration, header values).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    match Layout::from_size_align(size.max(1), 1) {
        // SAFETY: a non-zero size with alignment 1; freed by `release` with the same layout.
        Ok(layout) => unsafe { alloc(layout) },
        Err(_) => std::ptr::null_mut(),
    }
}

fn release(data: *mut u8, size: usize) {
    if data.is_null() {
        return;
    }
    if let Ok(layout) = Layout::from_size_align(size.max(1), 1) {
        // SAFETY: `data` came from `proxy_on_memory_allocate(size)`.
        unsafe { dealloc(data, layout) }
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_context_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_context_id: u32, size: usize) -> u32 {
    let mut data = std::ptr::null_mut();
    let mut len = 0;
    // SAFETY: the out-pointers are valid for the call; the host fills them.
    let status =
        unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) };
    let text = if status == 0 && !data.is_null() {
        // SAFETY: the host wrote `len` bytes at `data`.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        String::new()
    };
    release(data, len);
    let mode = match text.trim() {
        "" => Mode::Nothing,
        "pairs" => Mode::Pairs,
        other => match other.strip_prefix("headers:").and_then(|n| n.parse().ok()) {
            Some(n) => Mode::SingleReads(n),
            None => return 0,
        },
    };
    MODE.with(|m| m.set(mode));
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _eos: u32) -> u32 {
    match MODE.with(Cell::get) {
        Mode::Nothing => {}
        Mode::SingleReads(n) => {
            for i in 0..n {
                let name = NAMES[i % NAMES.len()];
                let mut data = std::ptr::null_mut();
                let mut len = 0;
                // SAFETY: name is valid for the call; the out-pointers are valid.
                unsafe {
                    proxy_get_header_map_value(
                        REQUEST_HEADERS,
                        name.as_ptr(),
                        name.len(),
                        &mut data,
                        &mut len,
                    )
                };
                release(data, len);
            }
        }
        Mode::Pairs => {
            let mut data = std::ptr::null_mut();
            let mut len = 0;
            // SAFETY: the out-pointers are valid for the call.
            unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut len) };
            release(data, len);
        }
    }
    0 // Continue
}
