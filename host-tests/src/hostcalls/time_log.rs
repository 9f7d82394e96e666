//! Logging, the clock and tick periods (`proxy_log`, `proxy_get_current_time_nanoseconds`, ...).

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let Some(level) = LogLevel::from_raw(level) else {
                return Status::BadArgument.code();
            };
            match read_str(&mut c, ptr, len) {
                Ok(message) => {
                    c.data().log(level, message);
                    Status::Ok.code()
                }
                Err(s) => s.code(),
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: C<'_>, ptr: i32| -> i32 {
            guard!(c, "proxy_get_log_level");
            let level = c.data().world.lock().log_level as u32;
            code(write_u32(&mut c, ptr, level))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ptr: i32| -> i32 {
            guard!(c, "proxy_get_current_time_nanoseconds");
            let now = c.data().world.now_nanos();
            code(write(&mut c, ptr, &now.to_le_bytes()))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> i32 {
            guard!(c, "proxy_set_tick_period_milliseconds");
            let index = c.data().index;
            let mut world = c.data().world.lock();
            if ms == 0 {
                world.ticks.remove(&index);
            } else {
                let period = ms as u32 as u64 * 1_000_000;
                let first = world.now_nanos + period;
                world.ticks.insert(index, (period, first));
            }
            Status::Ok.code()
        },
    )?;
    Ok(())
}
