//! Callouts to the control service: the poll request and the answer's body.

/// Sends `GET path` with `Authorization: Bearer token` to the control service's `cluster`
/// from `context` (a root context: a stream's callout would end with the stream). The
/// callout's token, or None when Envoy refused it.
pub fn poll_control_service(
    context: &dyn proxy_wasm::traits::Context,
    cluster: &str,
    path: &str,
    token: &str,
    timeout: std::time::Duration,
) -> Option<u32> {
    let authorization = format!("Bearer {token}");
    let headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", cluster),
        ("authorization", authorization.as_str()),
    ];
    context
        .dispatch_http_call(cluster, headers, None, vec![], timeout)
        .ok()
}

/// The body of a callout's answer when it is a 200 with 1 to `max_bytes` bytes; None for
/// anything else (no answer, another status, an empty or oversized body).
pub fn http_call_ok_body(
    num_headers: usize,
    body_size: usize,
    max_bytes: usize,
) -> Option<Vec<u8>> {
    if num_headers == 0 || body_size == 0 || body_size > max_bytes {
        return None;
    }
    let status = crate::abi::get_map_value(
        proxy_wasm::types::MapType::HttpCallResponseHeaders as u32,
        ":status",
    )?;
    if status != b"200" {
        return None;
    }
    crate::abi::get_buffer(
        proxy_wasm::types::BufferType::HttpCallResponseBody as u32,
        0,
        body_size,
    )
    .ok()
    .flatten()
}
