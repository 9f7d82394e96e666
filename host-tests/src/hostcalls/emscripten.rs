//! The two emscripten imports Envoy also links (threads and memory growth stubs).

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap("env", "pthread_equal", |a: i32, b: i32| -> i32 {
        (a == b) as i32
    })?;
    l.func_wrap("env", "emscripten_notify_memory_growth", |_: i32| {})?;
    Ok(())
}
