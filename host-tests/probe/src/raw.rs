//! Raw proxy-wasm 0.2.1 imports, so the probe can record every status a host returns
//! (the SDK's wrappers panic on statuses they do not expect).

#[link(wasm_import_module = "env")]
extern "C" {
    pub fn proxy_log(level: u32, ptr: *const u8, len: usize) -> u32;
    pub fn proxy_get_log_level(level: *mut u32) -> u32;
    pub fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    pub fn proxy_set_tick_period_milliseconds(ms: u32) -> u32;
    pub fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    pub fn proxy_get_buffer_status(kind: u32, len: *mut usize, flags: *mut u32) -> u32;
    pub fn proxy_set_buffer_bytes(
        kind: u32,
        start: usize,
        size: usize,
        ptr: *const u8,
        len: usize,
    ) -> u32;
    pub fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_len: *mut usize) -> u32;
    pub fn proxy_set_header_map_pairs(map: u32, ptr: *const u8, len: usize) -> u32;
    pub fn proxy_get_header_map_size(map: u32, size: *mut usize) -> u32;
    pub fn proxy_get_header_map_value(
        map: u32,
        k: *const u8,
        kn: usize,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    pub fn proxy_add_header_map_value(
        map: u32,
        k: *const u8,
        kn: usize,
        v: *const u8,
        vn: usize,
    ) -> u32;
    pub fn proxy_replace_header_map_value(
        map: u32,
        k: *const u8,
        kn: usize,
        v: *const u8,
        vn: usize,
    ) -> u32;
    pub fn proxy_remove_header_map_value(map: u32, k: *const u8, kn: usize) -> u32;
    pub fn proxy_get_property(
        p: *const u8,
        pn: usize,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    pub fn proxy_set_property(p: *const u8, pn: usize, v: *const u8, vn: usize) -> u32;
    pub fn proxy_get_shared_data(
        k: *const u8,
        kn: usize,
        out: *mut *mut u8,
        out_len: *mut usize,
        cas: *mut u32,
    ) -> u32;
    pub fn proxy_set_shared_data(k: *const u8, kn: usize, v: *const u8, vn: usize, cas: u32)
        -> u32;
    pub fn proxy_register_shared_queue(n: *const u8, nn: usize, token: *mut u32) -> u32;
    pub fn proxy_resolve_shared_queue(
        v: *const u8,
        vn: usize,
        n: *const u8,
        nn: usize,
        token: *mut u32,
    ) -> u32;
    pub fn proxy_dequeue_shared_queue(token: u32, out: *mut *mut u8, out_len: *mut usize) -> u32;
    pub fn proxy_enqueue_shared_queue(token: u32, v: *const u8, vn: usize) -> u32;
    pub fn proxy_continue_stream(kind: u32) -> u32;
    pub fn proxy_close_stream(kind: u32) -> u32;
    pub fn proxy_send_local_response(
        status: u32,
        d: *const u8,
        dn: usize,
        b: *const u8,
        bn: usize,
        h: *const u8,
        hn: usize,
        grpc: i32,
    ) -> u32;
    pub fn proxy_http_call(
        up: *const u8,
        un: usize,
        h: *const u8,
        hn: usize,
        b: *const u8,
        bn: usize,
        t: *const u8,
        tn: usize,
        timeout: u32,
        token: *mut u32,
    ) -> u32;
    pub fn proxy_grpc_call(
        s: *const u8,
        sn: usize,
        svc: *const u8,
        svcn: usize,
        m: *const u8,
        mn: usize,
        md: *const u8,
        mdn: usize,
        msg: *const u8,
        msgn: usize,
        timeout: u32,
        token: *mut u32,
    ) -> u32;
    pub fn proxy_grpc_stream(
        s: *const u8,
        sn: usize,
        svc: *const u8,
        svcn: usize,
        m: *const u8,
        mn: usize,
        md: *const u8,
        mdn: usize,
        token: *mut u32,
    ) -> u32;
    pub fn proxy_grpc_send(token: u32, msg: *const u8, msgn: usize, end: u32) -> u32;
    pub fn proxy_grpc_cancel(token: u32) -> u32;
    pub fn proxy_grpc_close(token: u32) -> u32;
    pub fn proxy_get_status(code: *mut u32, out: *mut *mut u8, out_len: *mut usize) -> u32;
    pub fn proxy_set_effective_context(id: u32) -> u32;
    pub fn proxy_done() -> u32;
    pub fn proxy_call_foreign_function(
        n: *const u8,
        nn: usize,
        a: *const u8,
        an: usize,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    pub fn proxy_define_metric(kind: u32, n: *const u8, nn: usize, id: *mut u32) -> u32;
    pub fn proxy_get_metric(id: u32, out: *mut u64) -> u32;
    pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
}

/// Takes ownership of host-allocated bytes (allocated through proxy_on_memory_allocate).
fn owned(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the host allocated exactly `len` bytes with our allocator and handed them over.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<u8> {
    if list.is_empty() {
        return Vec::new();
    }
    let mut out = (list.len() as u32).to_le_bytes().to_vec();
    for (k, v) in list {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in list {
        out.extend(k.as_bytes());
        out.push(0);
        out.extend(v.as_bytes());
        out.push(0);
    }
    out
}

pub fn decode_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let u32_at = |at: usize| -> usize {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(0)
    };
    if bytes.len() < 4 {
        return Vec::new();
    }
    let count = u32_at(0);
    let mut at = 4 + count * 8;
    let mut out = Vec::new();
    for i in 0..count {
        let (kn, vn) = (u32_at(4 + i * 8), u32_at(8 + i * 8));
        let key = String::from_utf8_lossy(bytes.get(at..at + kn).unwrap_or_default()).into_owned();
        at += kn + 1;
        let value =
            String::from_utf8_lossy(bytes.get(at..at + vn).unwrap_or_default()).into_owned();
        at += vn + 1;
        out.push((key, value));
    }
    out
}

pub fn log(level: u32, message: &str) -> u32 {
    unsafe { proxy_log(level, message.as_ptr(), message.len()) }
}

pub fn get_map_value(map: u32, key: &str) -> (u32, Option<String>) {
    let (mut p, mut n) = (std::ptr::null_mut(), 0);
    let s = unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut p, &mut n) };
    (
        s,
        (s == 0).then(|| String::from_utf8_lossy(&owned(p, n)).into_owned()),
    )
}

pub fn get_map_pairs(map: u32) -> (u32, Vec<(String, String)>) {
    let (mut p, mut n) = (std::ptr::null_mut(), 0);
    let s = unsafe { proxy_get_header_map_pairs(map, &mut p, &mut n) };
    (s, decode_pairs(&owned(p, n)))
}

pub fn set_map_pairs(map: u32, list: &[(&str, &str)]) -> u32 {
    let bytes = pairs(list);
    unsafe { proxy_set_header_map_pairs(map, bytes.as_ptr(), bytes.len()) }
}

pub fn map_size(map: u32) -> (u32, usize) {
    let mut n = 0;
    let s = unsafe { proxy_get_header_map_size(map, &mut n) };
    (s, n)
}

pub fn add_map_value(map: u32, k: &str, v: &str) -> u32 {
    unsafe { proxy_add_header_map_value(map, k.as_ptr(), k.len(), v.as_ptr(), v.len()) }
}

pub fn replace_map_value(map: u32, k: &str, v: &str) -> u32 {
    unsafe { proxy_replace_header_map_value(map, k.as_ptr(), k.len(), v.as_ptr(), v.len()) }
}

pub fn remove_map_value(map: u32, k: &str) -> u32 {
    unsafe { proxy_remove_header_map_value(map, k.as_ptr(), k.len()) }
}

pub fn get_buffer(kind: u32, start: usize, max: usize) -> (u32, Vec<u8>) {
    let (mut p, mut n) = (std::ptr::null_mut(), 0);
    let s = unsafe { proxy_get_buffer_bytes(kind, start, max, &mut p, &mut n) };
    (s, owned(p, n))
}

pub fn buffer_status(kind: u32) -> (u32, usize) {
    let (mut n, mut flags) = (0, 0);
    let s = unsafe { proxy_get_buffer_status(kind, &mut n, &mut flags) };
    (s, n)
}

pub fn set_buffer(kind: u32, start: usize, size: usize, data: &[u8]) -> u32 {
    unsafe { proxy_set_buffer_bytes(kind, start, size, data.as_ptr(), data.len()) }
}

pub fn get_property(path: &[&str]) -> (u32, Vec<u8>) {
    let joined = path.join("\0");
    let (mut p, mut n) = (std::ptr::null_mut(), 0);
    let s = unsafe { proxy_get_property(joined.as_ptr(), joined.len(), &mut p, &mut n) };
    (s, owned(p, n))
}

pub fn set_property(path: &[&str], value: &[u8]) -> u32 {
    let joined = path.join("\0");
    unsafe { proxy_set_property(joined.as_ptr(), joined.len(), value.as_ptr(), value.len()) }
}

pub fn get_shared(key: &str) -> (u32, Vec<u8>, u32) {
    let (mut p, mut n, mut cas) = (std::ptr::null_mut(), 0, 0);
    let s = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut p, &mut n, &mut cas) };
    (s, owned(p, n), cas)
}

pub fn set_shared(key: &str, value: &[u8], cas: u32) -> u32 {
    unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) }
}

pub fn register_queue(name: &str) -> (u32, u32) {
    let mut token = 0;
    let s = unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut token) };
    (s, token)
}

pub fn resolve_queue(vm_id: &str, name: &str) -> (u32, u32) {
    let mut token = 0;
    let s = unsafe {
        proxy_resolve_shared_queue(
            vm_id.as_ptr(),
            vm_id.len(),
            name.as_ptr(),
            name.len(),
            &mut token,
        )
    };
    (s, token)
}

pub fn enqueue(token: u32, value: &[u8]) -> u32 {
    unsafe { proxy_enqueue_shared_queue(token, value.as_ptr(), value.len()) }
}

pub fn dequeue(token: u32) -> (u32, Vec<u8>) {
    let (mut p, mut n) = (std::ptr::null_mut(), 0);
    let s = unsafe { proxy_dequeue_shared_queue(token, &mut p, &mut n) };
    (s, owned(p, n))
}

pub fn send_local_response(
    status: u32,
    details: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> u32 {
    let h = pairs(headers);
    unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            -1,
        )
    }
}

pub fn http_call(
    upstream: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u32,
) -> (u32, u32) {
    let h = pairs(headers);
    let mut token = 0;
    let s = unsafe {
        proxy_http_call(
            upstream.as_ptr(),
            upstream.len(),
            h.as_ptr(),
            h.len(),
            body.as_ptr(),
            body.len(),
            std::ptr::null(),
            0,
            timeout_ms,
            &mut token,
        )
    };
    (s, token)
}

pub fn grpc_call(service: &str, method: &str, message: &[u8]) -> (u32, u32) {
    let (svc, name) = ("probe.Service", "");
    let _ = name;
    let mut token = 0;
    let s = unsafe {
        proxy_grpc_call(
            service.as_ptr(),
            service.len(),
            svc.as_ptr(),
            svc.len(),
            method.as_ptr(),
            method.len(),
            std::ptr::null(),
            0,
            message.as_ptr(),
            message.len(),
            1000,
            &mut token,
        )
    };
    (s, token)
}

pub fn grpc_stream(service: &str, method: &str) -> (u32, u32) {
    let svc = "probe.Service";
    let mut token = 0;
    let s = unsafe {
        proxy_grpc_stream(
            service.as_ptr(),
            service.len(),
            svc.as_ptr(),
            svc.len(),
            method.as_ptr(),
            method.len(),
            std::ptr::null(),
            0,
            &mut token,
        )
    };
    (s, token)
}

pub fn grpc_send(token: u32, message: &[u8], end: bool) -> u32 {
    unsafe { proxy_grpc_send(token, message.as_ptr(), message.len(), end as u32) }
}

pub fn grpc_cancel(token: u32) -> u32 {
    unsafe { proxy_grpc_cancel(token) }
}

pub fn grpc_close(token: u32) -> u32 {
    unsafe { proxy_grpc_close(token) }
}

pub fn get_status() -> (u32, u32, String) {
    let (mut code, mut p, mut n) = (0, std::ptr::null_mut(), 0);
    let s = unsafe { proxy_get_status(&mut code, &mut p, &mut n) };
    (s, code, String::from_utf8_lossy(&owned(p, n)).into_owned())
}

pub fn foreign(name: &str, args: &[u8]) -> (u32, Vec<u8>) {
    let (mut p, mut n) = (std::ptr::null_mut(), 0);
    let s = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            args.as_ptr(),
            args.len(),
            &mut p,
            &mut n,
        )
    };
    (s, owned(p, n))
}

pub fn define_metric(kind: u32, name: &str) -> (u32, u32) {
    let mut id = 0;
    let s = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (s, id)
}

pub fn get_metric(id: u32) -> (u32, u64) {
    let mut v = 0;
    let s = unsafe { proxy_get_metric(id, &mut v) };
    (s, v)
}

pub fn now() -> (u32, u64) {
    let mut v = 0;
    let s = unsafe { proxy_get_current_time_nanoseconds(&mut v) };
    (s, v)
}

pub fn log_level() -> (u32, u32) {
    let mut v = 0;
    let s = unsafe { proxy_get_log_level(&mut v) };
    (s, v)
}
