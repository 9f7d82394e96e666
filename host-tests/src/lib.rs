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
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--release", "--target", "wasm32-wasip1", "--quiet"])
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => panic!("building the wasm modules failed ({other:?}); run `cargo build --release --target wasm32-wasip1` to see why"),
        }
        if let Err(failure) = build_edge_chain() {
            panic!("building edge_chain.wasm failed: {failure}");
        }
    });
}

/// Builds the composed module (its own workspace, `plugins/edge-chain`) into
/// `<target>/edge-chain-<hash of the checkout's path>` and copies `edge_chain.wasm` next to the other modules.
pub fn build_edge_chain() -> Result<(), String> {
    let target = wasm_dir()
        .parent()
        .and_then(|p| p.parent())
        .map(|t| {
            // One directory per checkout (as envoy-harness's edge_chain_target_dir).
            let root = workspace_root();
            let hash =
                edgewise_support::breaker_state::identity_hash(root.to_string_lossy().as_bytes());
            t.join(format!("edge-chain-{:08x}", hash as u32))
        })
        .ok_or("no target directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = workspace_root().join("plugins/edge-chain/Cargo.toml");
    let status = std::process::Command::new(cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .args(["--release", "--target", "wasm32-wasip1", "--quiet"])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "cargo build --manifest-path {} failed",
            manifest.display()
        ));
    }
    std::fs::create_dir_all(wasm_dir()).map_err(|e| e.to_string())?;
    std::fs::copy(
        target.join("wasm32-wasip1/release/edge_chain.wasm"),
        wasm_dir().join("edge_chain.wasm"),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
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
