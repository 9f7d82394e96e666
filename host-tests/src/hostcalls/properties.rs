//! Stream and plugin properties: `proxy_get_property`, `proxy_set_property`.

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, pp: i32, pl: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_property");
            let raw = match read_str(&mut c, pp, pl) {
                Ok(p) => p,
                Err(s) => return s.code(),
            };
            let path: Vec<&str> = raw.split('\0').filter(|s| !s.is_empty()).collect();
            match property(c.data(), &path) {
                Some(value) => code(give(&mut c, &value, ptr_ptr, size_ptr)),
                None => Status::NotFound.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> i32 {
            guard!(c, "proxy_set_property");
            let (path, value) = match (read_str(&mut c, pp, pl), read(&mut c, vp, vl)) {
                (Ok(p), Ok(v)) => (p, v),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let state = c.data_mut();
            let context = state.effective_context;
            // Properties live in the stream's filter state; the root context has none.
            match state.streams.get_mut(&context) {
                Some(stream) => {
                    let key: Vec<&str> = path.split('\0').filter(|s| !s.is_empty()).collect();
                    stream.properties.insert(key.join("\0"), value);
                    Status::Ok.code()
                }
                None => Status::NotFound.code(),
            }
        },
    )?;
    Ok(())
}
