//! Runs real Envoy (pinned 1.40.0, V8) and our backend on loopback for tests, the demo and
//! benchmarks: install on demand, ephemeral ports, wait for readiness, stats, logs, cleanup.

pub mod backend;
pub mod client;
pub mod config;
pub mod envoy;

pub use backend::Backend;
pub use client::{http_request, HttpResponse};
pub use config::{EnvoyConfig, Route, WasmFilter};
pub use envoy::{ensure_envoy_installed, Envoy, ENVOY_VERSION};

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The cargo target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path of one of our built .wasm modules.
pub fn wasm_path(name: &str) -> PathBuf {
    target_dir()
        .join("wasm32-wasip1")
        .join("release")
        .join(format!("{name}.wasm"))
}

/// A fresh scratch directory under the target dir (configs, logs), unique per call.
pub fn scratch_dir(label: &str) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = target_dir().join("envoy-runs").join(format!(
        "{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
