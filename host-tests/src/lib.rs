//! A proxy-wasm ABI 0.2.1 host on wasmtime that plays Envoy 1.40 for tests.
//!
//! A test builds a [`World`] (shared data, queues, metrics, logs, a virtual clock, pending
//! callouts), starts one or more [`Vm`]s in it — one per simulated Envoy worker thread —
//! and drives HTTP [`Stream`]s through them. Only the imports Envoy links are provided, and
//! statuses follow Envoy's `context.cc`, so a module that passes here loads and behaves the
//! same in Envoy; the probe-parity tests check that claim against a real Envoy.

pub mod abi;
mod failure;
mod headers;
mod hostcalls;
mod module;
mod stream;
mod vm;
mod world;

pub use abi::{Action, LogLevel, MetricKind, Status};
pub use failure::{FailureKind, VmFailure};
pub use headers::Headers;
pub use module::WasmModule;
pub use stream::{Passed, Stream};
pub use vm::{LocalReply, PluginOptions, Vm};
pub use world::{CallOutcome, GrpcCall, GrpcEvent, HttpCall, LogEntry, World, EPOCH_NANOS};

use std::path::PathBuf;
use std::sync::OnceLock;

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    // At run time (cargo sets it for test binaries): a build reused from another checkout
    // sharing CARGO_TARGET_DIR would otherwise build and load that checkout's modules.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Where `cargo build --release --target wasm32-wasip1` puts the modules.
pub fn wasm_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("wasm32-wasip1").join("release")
}

/// Builds the workspace's wasm modules once per test process (a no-op when up to date),
/// so tests never run against a stale .wasm.
pub fn build_wasm_modules() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        // The same build as every other layer: the workspace's modules with the post-link
        // step (each filter exports only the callbacks it uses), then edge_chain.
        if let Err(failure) = envoy_harness::build_wasm(&[]) {
            panic!("building the wasm modules failed ({failure:#}); run `cargo xtask build` to see why");
        }
        if let Err(failure) = envoy_harness::build_edge_chain() {
            panic!("building edge_chain.wasm failed: {failure:#}");
        }
    });
}

/// Loads one of our built modules by artifact name ("probe", "rate_limit", ...).
pub fn load_module(name: &str) -> WasmModule {
    build_wasm_modules();
    let path = wasm_dir().join(format!("{name}.wasm"));
    match WasmModule::load(&path) {
        Ok(module) => module,
        Err(failure) => panic!("{failure}"),
    }
}
