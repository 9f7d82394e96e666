//! HTTP callouts (`proxy_http_call`) and the status of a callout's answer (`proxy_get_status`).

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         token_ptr: i32|
         -> i32 {
            guard!(c, "proxy_http_call");
            if timeout < 0 {
                return Status::BadArgument.code();
            }
            let (upstream, headers, body, trailers) = match (
                read_str(&mut c, up, ul),
                read(&mut c, hp, hl),
                read(&mut c, bp, bl),
                read(&mut c, tp, tl),
            ) {
                (Ok(u), Ok(h), Ok(b), Ok(t)) => (u, h, b, t),
                (Err(s), ..) | (_, Err(s), ..) | (_, _, Err(s), _) | (.., Err(s)) => {
                    return s.code()
                }
            };
            let (Some(mut headers), Some(trailers)) =
                (Headers::decode(&headers), Headers::decode(&trailers))
            else {
                return Status::BadArgument.code();
            };
            if !c.data().world.lock().clusters.contains(&upstream) {
                return Status::BadArgument.code();
            }
            if !headers.contains(":path")
                || !headers.contains(":method")
                || !headers.contains(":authority")
            {
                return Status::BadArgument.code();
            }
            if !body.is_empty() {
                headers.replace("content-length", body.len().to_string());
            }
            let token = {
                let state = c.data_mut();
                let token = state.next_http_token;
                state.next_http_token += 1;
                let mut world = state.world.lock();
                let id = world.next_call_id;
                world.next_call_id += 1;
                let deadline = if timeout == 0 {
                    u64::MAX
                } else {
                    world.now_nanos + timeout as u64 * 1_000_000
                };
                world.http_calls.push(HttpCall {
                    id,
                    vm: state.index,
                    upstream,
                    headers,
                    body,
                    trailers,
                    timeout: std::time::Duration::from_millis(timeout as u64),
                    token,
                    context_id: state.effective_context,
                    deadline_nanos: deadline,
                });
                token
            };
            code(write_u32(&mut c, token_ptr, token))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_status");
            let (status, message) = c.data().status.clone();
            code(
                write_u32(&mut c, code_ptr, status)
                    .and_then(|_| give(&mut c, &message, ptr_ptr, size_ptr)),
            )
        },
    )?;
    Ok(())
}
