//! gRPC calls and streams: call, stream, send, cancel, close.

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    fn open_grpc(
        c: &mut C<'_>,
        service: Vec<u8>,
        service_name: String,
        method: String,
        metadata: Vec<u8>,
        message: Option<Vec<u8>>,
        token_ptr: i32,
    ) -> i32 {
        // Envoy accepts a serialized GrpcService or a cluster name; this host takes names.
        let cluster = String::from_utf8_lossy(&service).into_owned();
        if !c.data().world.lock().clusters.contains(&cluster) {
            return Status::ParseFailure.code();
        }
        let Some(initial_metadata) = Headers::decode(&metadata) else {
            return Status::BadArgument.code();
        };
        let state = c.data_mut();
        let token = state.next_grpc_token;
        state.next_grpc_token += 1;
        let mut world = state.world.lock();
        let id = world.next_call_id;
        world.next_call_id += 1;
        world.grpc_calls.push(GrpcCall {
            id,
            vm: state.index,
            service,
            service_name,
            method,
            initial_metadata,
            is_stream: message.is_none(),
            messages: message.into_iter().collect(),
            closed_by_module: false,
            cancelled: false,
            token,
            context_id: state.effective_context,
        });
        drop(world);
        code(write_u32(c, token_ptr, token))
    }
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         msgp: i32,
         msgl: i32,
         _timeout: i32,
         token_ptr: i32|
         -> i32 {
            guard!(c, "proxy_grpc_call");
            let parts = (
                read(&mut c, sp, sl),
                read_str(&mut c, np, nl),
                read_str(&mut c, mp, ml),
                read(&mut c, ip, il),
                read(&mut c, msgp, msgl),
            );
            match parts {
                (Ok(s), Ok(n), Ok(m), Ok(i), Ok(msg)) => {
                    open_grpc(&mut c, s, n, m, i, Some(msg), token_ptr)
                }
                _ => Status::InvalidMemoryAccess.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: C<'_>,
         sp: i32,
         sl: i32,
         np: i32,
         nl: i32,
         mp: i32,
         ml: i32,
         ip: i32,
         il: i32,
         token_ptr: i32|
         -> i32 {
            guard!(c, "proxy_grpc_stream");
            let parts = (
                read(&mut c, sp, sl),
                read_str(&mut c, np, nl),
                read_str(&mut c, mp, ml),
                read(&mut c, ip, il),
            );
            match parts {
                (Ok(s), Ok(n), Ok(m), Ok(i)) => open_grpc(&mut c, s, n, m, i, None, token_ptr),
                _ => Status::InvalidMemoryAccess.code(),
            }
        },
    )?;
    fn with_grpc(
        c: &mut C<'_>,
        token: i32,
        unknown: Status,
        f: impl FnOnce(&mut GrpcCall) -> bool,
    ) -> i32 {
        let state = c.data();
        let index = state.index;
        let mut world = state.world.lock();
        let Some(position) = world
            .grpc_calls
            .iter()
            .position(|g| g.vm == index && g.token == token as u32)
        else {
            return unknown.code();
        };
        if f(&mut world.grpc_calls[position]) {
            world.grpc_calls.remove(position);
        }
        Status::Ok.code()
    }
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: C<'_>, token: i32, mp: i32, ml: i32, end: i32| -> i32 {
            guard!(c, "proxy_grpc_send");
            let message = match read(&mut c, mp, ml) {
                Ok(m) => m,
                Err(s) => return s.code(),
            };
            with_grpc(&mut c, token, Status::BadArgument, |g| {
                g.messages.push(message);
                g.closed_by_module |= end != 0;
                false
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut c: C<'_>, token: i32| -> i32 {
            guard!(c, "proxy_grpc_cancel");
            with_grpc(&mut c, token, Status::NotFound, |g| {
                g.cancelled = true;
                true
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut c: C<'_>, token: i32| -> i32 {
            guard!(c, "proxy_grpc_close");
            with_grpc(&mut c, token, Status::NotFound, |g| {
                g.closed_by_module = true;
                false
            })
        },
    )?;
    Ok(())
}
