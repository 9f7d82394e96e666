//! Body and call buffers: `proxy_get_buffer_bytes`, `proxy_get_buffer_status`, `proxy_set_buffer_bytes`.

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_buffer_bytes");
            // Arguments are unsigned 32-bit words (cpp-host `Word`).
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            match buffer(c.data(), kind) {
                Err(s) => s.code(),
                Ok(None) => Status::NotFound.code(),
                Ok(Some(bytes)) => {
                    if start > bytes.len() {
                        return Status::BadArgument.code();
                    }
                    let end = bytes.len().min(start.saturating_add(max));
                    code(give(&mut c, &bytes[start..end], ptr_ptr, size_ptr))
                }
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: C<'_>, kind: i32, len_ptr: i32, flags_ptr: i32| -> i32 {
            guard!(c, "proxy_get_buffer_status");
            match buffer(c.data(), kind) {
                Err(s) => s.code(),
                Ok(None) => Status::NotFound.code(),
                Ok(Some(bytes)) => code(
                    write_u32(&mut c, len_ptr, bytes.len() as u32)
                        .and_then(|_| write_u32(&mut c, flags_ptr, 0)),
                ),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            guard!(c, "proxy_set_buffer_bytes");
            let data = match read(&mut c, ptr, len) {
                Ok(d) => d,
                Err(s) => return s.code(),
            };
            let state = c.data_mut();
            let context = state.effective_context;
            let Some(stream) = state.streams.get_mut(&context) else {
                return Status::NotFound.code();
            };
            let direction = match kind {
                buffer_type::HTTP_REQUEST_BODY => &mut stream.request,
                buffer_type::HTTP_RESPONSE_BODY => &mut stream.response,
                _ => return Status::NotFound.code(),
            };
            if !direction.body_visible {
                return Status::NotFound.code();
            }
            // Envoy's buffer copyFrom: start 0 drains `size` bytes then prepends; a start at or
            // past the end appends; anything else is not supported.
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            let body = &mut direction.body;
            if start == 0 {
                let drain = size.min(body.len());
                body.drain(..drain);
                body.splice(0..0, data);
            } else if start >= body.len() {
                body.extend(data);
            } else {
                return Status::BadArgument.code();
            }
            Status::Ok.code()
        },
    )?;
    Ok(())
}
