//! Stream control: continue, close, local replies, the effective context, `proxy_done`, foreign functions.

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, kind: i32| -> i32 {
            guard!(c, "proxy_continue_stream");
            match kind {
                stream_type::REQUEST | stream_type::RESPONSE => {
                    let state = c.data_mut();
                    let context = state.effective_context;
                    if let Some(stream) = state.streams.get_mut(&context) {
                        // Envoy drops its pointers to the request maps at once; the resume itself
                        // runs after the VM call returns.
                        if let Some(h) = stream.request.headers.take() {
                            stream.request.last_headers = Some(h);
                        }
                        stream.request.body_visible = false;
                    }
                    state.deferred.push(Deferred::Continue {
                        context,
                        stream: kind,
                    });
                    Status::Ok.code()
                }
                2 => Status::Ok.code(),
                3 => Status::Unimplemented.code(),
                _ => Status::BadArgument.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: C<'_>, kind: i32| -> i32 {
            guard!(c, "proxy_close_stream");
            if !(0..=3).contains(&kind) {
                return Status::BadArgument.code();
            }
            let state = c.data_mut();
            let context = state.effective_context;
            state.deferred.push(Deferred::Close { context });
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         status: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> i32 {
            guard!(c, "proxy_send_local_response");
            let (details, body, headers) = match (
                read_str(&mut c, dp, dl),
                read(&mut c, bp, bl),
                read(&mut c, hp, hl),
            ) {
                (Ok(d), Ok(b), Ok(h)) => (d, b, h),
                (Err(s), _, _) | (_, Err(s), _) | (_, _, Err(s)) => return s.code(),
            };
            let Some(headers) = Headers::decode(&headers) else {
                return Status::BadArgument.code();
            };
            let state = c.data_mut();
            let context = state.effective_context;
            if state.streams.contains_key(&context) {
                let reply = LocalReply {
                    status: status as u32,
                    // Envoy replaces whitespace in details with underscores.
                    details: details
                        .chars()
                        .map(|ch| if ch.is_whitespace() { '_' } else { ch })
                        .collect(),
                    body,
                    headers,
                    grpc_status: (0..=16).contains(&grpc).then_some(grpc as u32),
                };
                state.deferred.push(Deferred::LocalReply { context, reply });
            }
            Status::Ok.code()
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: C<'_>, context: i32| -> i32 {
            guard!(c, "proxy_set_effective_context");
            let state = c.data_mut();
            let context = context as u32;
            if context == state.root_context || state.streams.contains_key(&context) {
                state.effective_context = context;
                Status::Ok.code()
            } else {
                Status::BadArgument.code()
            }
        },
    )?;
    l.func_wrap("env", "proxy_done", |mut c: C<'_>| -> i32 {
        guard!(c, "proxy_done");
        c.data_mut().done_called = true;
        Status::Ok.code()
    })?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: C<'_>, np: i32, nl: i32, ap: i32, al: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_call_foreign_function");
            let (name, args) = match (read_str(&mut c, np, nl), read(&mut c, ap, al)) {
                (Ok(n), Ok(a)) => (n, a),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let function = c.data().world.lock().foreign_functions.get(&name).cloned();
            match function.map(|f| f(&args)) {
                None => Status::NotFound.code(),
                Some(Err(s)) => s.code(),
                Some(Ok(result)) => code(give(&mut c, &result, ptr_ptr, size_ptr)),
            }
        },
    )?;
    Ok(())
}
