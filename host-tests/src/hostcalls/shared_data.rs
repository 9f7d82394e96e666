//! Shared data with Envoy's CAS rules: `proxy_get_shared_data`, `proxy_set_shared_data`.

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| -> i32 {
            guard!(c, "proxy_get_shared_data");
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => k,
                Err(s) => return s.code(),
            };
            let found = {
                let state = c.data();
                state
                    .world
                    .lock()
                    .shared_data
                    .get(&(state.options.vm_id.clone(), key))
                    .cloned()
            };
            match found {
                None => Status::NotFound.code(),
                Some(SharedValue { value, cas }) => code(
                    give(&mut c, &value, ptr_ptr, size_ptr)
                        .and_then(|_| write_u32(&mut c, cas_ptr, cas)),
                ),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
            guard!(c, "proxy_set_shared_data");
            let (key, value) = match (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(s), _) | (_, Err(s)) => return s.code(),
            };
            let state = c.data();
            let id = (state.options.vm_id.clone(), key);
            let mut world = state.world.lock();
            let cas = cas as u32;
            if cas != 0 && world.shared_data.contains_key(&id) {
                if let Some(left) = world.interference.get_mut(&id).filter(|n| **n > 0) {
                    *left -= 1;
                    let bumped = world.next_cas();
                    if let Some(existing) = world.shared_data.get_mut(&id) {
                        existing.cas = bumped;
                    }
                }
                if world.shared_data.get(&id).map(|v| v.cas) != Some(cas) {
                    return Status::CasMismatch.code();
                }
            }
            let new_cas = world.next_cas();
            world.shared_data.insert(
                id,
                SharedValue {
                    value,
                    cas: new_cas,
                },
            );
            Status::Ok.code()
        },
    )?;
    Ok(())
}
