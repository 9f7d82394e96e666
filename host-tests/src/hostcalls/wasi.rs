//! The WASI functions Envoy allows (`wasi_unstable`, `wasi_snapshot_preview1`): stdio into the log, clocks, random, args and environment.

use super::*;

/// Appends WASI stdout/stderr output, logging each complete line (Envoy logs stdout at
/// info and stderr at error).
fn write_stdio(c: &mut C<'_>, fd: i32, bytes: &[u8]) {
    let level = if fd == 1 {
        LogLevel::Info
    } else {
        LogLevel::Error
    };
    for line in String::from_utf8_lossy(bytes).split_inclusive('\n') {
        let line = line.trim_end_matches('\n');
        if !line.is_empty() {
            c.data().log(level, line.to_string());
        }
    }
}

pub(super) fn define_wasi(l: &mut Linker<VmState>, m: &str) -> wasmtime::Result<()> {
    l.func_wrap(
        m,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return errno::BADF;
            }
            let mut total = Vec::new();
            for i in 0..iovs_len {
                let Ok(iov) = read(&mut c, iovs + i * 8, 8) else {
                    return errno::INVAL;
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match read(&mut c, ptr, len) {
                    Ok(bytes) => total.extend(bytes),
                    Err(_) => return errno::INVAL,
                }
            }
            write_stdio(&mut c, fd, &total);
            match write_u32(&mut c, nwritten, total.len() as u32) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(m, "fd_read", |_: i32, _: i32, _: i32, _: i32| -> i32 {
        errno::NOSYS
    })?;
    l.func_wrap(m, "fd_seek", |_: i32, _: i64, _: i32, _: i32| -> i32 {
        errno::NOSYS
    })?;
    l.func_wrap(m, "fd_close", |_: i32| -> i32 { errno::NOSYS })?;
    l.func_wrap(
        m,
        "fd_fdstat_get",
        |mut c: C<'_>, fd: i32, stat: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return errno::BADF;
            }
            // fdstat: filetype u8 (2 = character device), flags u16, rights u64 × 2.
            let mut buf = [0u8; 24];
            buf[0] = 2;
            match write(&mut c, stat, &buf) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(
        m,
        "environ_sizes_get",
        |mut c: C<'_>, count_ptr: i32, size_ptr: i32| -> i32 {
            let env = c.data().options.environment.clone();
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            match write_u32(&mut c, count_ptr, env.len() as u32)
                .and_then(|_| write_u32(&mut c, size_ptr, size as u32))
            {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(
        m,
        "environ_get",
        |mut c: C<'_>, environ: i32, buf: i32| -> i32 {
            let env = c.data().options.environment.clone();
            let mut at = buf;
            for (i, (k, v)) in env.iter().enumerate() {
                let entry = format!("{k}={v}\0");
                if write_u32(&mut c, environ + i as i32 * 4, at as u32).is_err()
                    || write(&mut c, at, entry.as_bytes()).is_err()
                {
                    return errno::INVAL;
                }
                at += entry.len() as i32;
            }
            errno::SUCCESS
        },
    )?;
    l.func_wrap(
        m,
        "args_sizes_get",
        |mut c: C<'_>, count_ptr: i32, size_ptr: i32| -> i32 {
            match write_u32(&mut c, count_ptr, 0).and_then(|_| write_u32(&mut c, size_ptr, 0)) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(m, "args_get", |_: i32, _: i32| -> i32 { errno::SUCCESS })?;
    l.func_wrap(
        m,
        "clock_time_get",
        |mut c: C<'_>, clock: i32, _precision: i64, time_ptr: i32| -> i32 {
            let (now, base) = {
                let world = c.data().world.lock();
                (world.now_nanos, world.monotonic_base)
            };
            let value = match clock {
                0 => now,
                1 => now - base,
                _ => return 58, // ENOTSUP
            };
            match write(&mut c, time_ptr, &value.to_le_bytes()) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;
    l.func_wrap(m, "random_get", |mut c: C<'_>, buf: i32, len: i32| -> i32 {
        let mut bytes = Vec::with_capacity(len as usize);
        {
            let mut world = c.data().world.lock();
            while bytes.len() < len as usize {
                bytes.extend(world.random_u64().to_le_bytes());
            }
        }
        bytes.truncate(len as usize);
        match write(&mut c, buf, &bytes) {
            Ok(()) => errno::SUCCESS,
            Err(_) => errno::INVAL,
        }
    })?;
    l.func_wrap(m, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!(
            "module called proc_exit({code})"
        )))
    })?;
    l.func_wrap(
        m,
        "path_open",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| -> i32 {
            errno::NOTCAPABLE
        },
    )?;
    l.func_wrap(m, "fd_prestat_get", |_: i32, _: i32| -> i32 { errno::BADF })?;
    l.func_wrap(m, "fd_prestat_dir_name", |_: i32, _: i32, _: i32| -> i32 {
        errno::BADF
    })?;
    Ok(())
}
