//! Header and trailer maps: pairs, single values, size, add / replace / remove.

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_header_map_pairs");
            let encoded = const_map(c.data(), map)
                .map(|h| h.encode())
                .unwrap_or_default();
            code(give(&mut c, &encoded, ptr_ptr, size_ptr))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr: i32, len: i32| -> i32 {
            guard!(c, "proxy_set_header_map_pairs");
            let bytes = match read(&mut c, ptr, len) {
                Ok(b) => b,
                Err(s) => return s.code(),
            };
            let Some(pairs) = Headers::decode(&bytes) else {
                return Status::BadArgument.code();
            };
            match mutable_map(c.data_mut(), map) {
                Some(target) => {
                    *target = pairs;
                    Status::Ok.code()
                }
                None => Status::BadArgument.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: C<'_>, map: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_header_map_size");
            let size = match mutable_map(c.data_mut(), map) {
                Some(h) => h
                    .pairs()
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>(),
                None => return Status::BadArgument.code(),
            };
            code(write_u32(&mut c, size_ptr, size as u32))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32| -> i32 {
            guard!(c, "proxy_get_header_map_value");
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(s) => return s.code(),
            };
            let state = c.data();
            let log_phase = state
                .streams
                .get(&state.effective_context)
                .map(|s| s.in_log_phase)
                .unwrap_or(false);
            let Some(headers) = const_map(state, map) else {
                return if log_phase {
                    Status::NotFound.code()
                } else {
                    Status::BadArgument.code()
                };
            };
            // Envoy returns only the first value of a repeated header.
            match headers.pairs().iter().find(|(k, _)| *k == key) {
                Some((_, value)) => {
                    let value = value.clone();
                    code(give(&mut c, &value, ptr_ptr, size_ptr))
                }
                None => Status::NotFound.code(),
            }
        },
    )?;
    fn mutate(
        c: &mut C<'_>,
        map: i32,
        kp: i32,
        kl: i32,
        vp: i32,
        vl: i32,
        op: fn(&mut Headers, &str, &[u8]),
    ) -> i32 {
        let key = match read_str(c, kp, kl) {
            Ok(k) => k,
            Err(s) => return s.code(),
        };
        let value = match read(c, vp, vl) {
            Ok(v) => v,
            Err(s) => return s.code(),
        };
        match mutable_map(c.data_mut(), map) {
            Some(headers) => {
                op(headers, &key, &value);
                Status::Ok.code()
            }
            None => Status::BadArgument.code(),
        }
    }
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            guard!(c, "proxy_add_header_map_value");
            mutate(&mut c, map, kp, kl, vp, vl, |h, k, v| h.add(k, v))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
            guard!(c, "proxy_replace_header_map_value");
            mutate(&mut c, map, kp, kl, vp, vl, |h, k, v| h.replace(k, v))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map: i32, kp: i32, kl: i32| -> i32 {
            guard!(c, "proxy_remove_header_map_value");
            mutate(&mut c, map, kp, kl, 0, 0, |h, k, _| h.remove(k))
        },
    )?;
    Ok(())
}
