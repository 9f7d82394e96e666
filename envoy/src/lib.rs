//! Runs real Envoy (pinned 1.40.0, V8) and our backend on loopback for tests, the demo and
//! benchmarks: install on demand, ephemeral ports, wait for readiness, stats, logs, cleanup;
//! and the docker-compose cluster built from the same binaries.

pub mod backend;
pub mod client;
pub mod cluster;
pub mod config;
pub mod envoy;
pub mod ratelimit;
pub mod redis;
pub mod release;
pub mod strip;

pub use backend::Backend;
pub use client::{http_request, HttpResponse};
pub use cluster::{build_images, docker_available, Cluster, Ports};
pub use config::{EnvoyConfig, Route, WasmFilter};
pub use envoy::{ensure_envoy_installed, parse_prometheus, Envoy, Sample, ENVOY_VERSION};
pub use ratelimit::RateLimitService;
pub use redis::{master_serving, redis_available, redis_slot, Redis, RedisCluster};

use std::path::{Path, PathBuf};

/// The workspace root: the parent of the running crate's manifest directory (every crate that
/// uses the harness sits one level below the root). Read at run time, so a build shared
/// between checkouts through one CARGO_TARGET_DIR never points into another checkout.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
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

/// Builds the workspace binary `package` (whose binary has the same name), debug or
/// release, and returns its path.
pub(crate) fn build_binary(package: &str, release: bool) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build", "--quiet", "-p", package];
    if release {
        args.push("--release");
    }
    let status = std::process::Command::new(cargo)
        .current_dir(workspace_root())
        .args(&args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {package} failed"));
    }
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join(package))
}

/// A number unique within this process (for temporary file names).
pub fn unique_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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

/// Serializes builds of the .wasm modules and their post-link step across test threads and
/// processes: the step rewrites a module in place, which a concurrent reader must not see
/// half-written. Held until dropped.
fn wasm_build_lock() -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(target_dir())?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target_dir().join("wasm-build.lock"))?;
    lock.lock()?;
    Ok(lock)
}

/// Builds the given wasm crates (release, wasm32-wasip1); a no-op when up to date.
pub fn build_wasm(packages: &[&str]) -> anyhow::Result<()> {
    let _lock = wasm_build_lock()?;
    let mut args = vec!["build", "--quiet", "--release", "--target", "wasm32-wasip1"];
    for package in packages {
        args.extend(["-p", package]);
    }
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args(&args)
            .status()?;
    anyhow::ensure!(status.success(), "building {packages:?} failed");
    strip_modules()
}

/// The post-link step (see `strip`): every built filter module loses the callbacks it does
/// not use. Idempotent.
pub fn strip_built_modules() -> anyhow::Result<()> {
    let _lock = wasm_build_lock()?;
    strip_modules()
}

fn strip_modules() -> anyhow::Result<()> {
    for module in strip::STRIPPED_MODULES {
        if wasm_path(module).exists() {
            strip::strip_module(module)?;
        }
    }
    Ok(())
}

/// Where the composed module's own workspace builds: one directory per checkout (named by a
/// hash of its path), so two checkouts sharing `CARGO_TARGET_DIR` never mix their builds
/// (cargo's freshness check could take one tree's artifacts for the other's).
pub fn edge_chain_target_dir() -> PathBuf {
    let root = workspace_root();
    let hash = edgewise_support::breaker_state::identity_hash(root.to_string_lossy().as_bytes());
    target_dir().join(format!("edge-chain-{:08x}", hash as u32))
}

/// Builds the composed module (its own workspace, `plugins/edge-chain`, so its `embedded`
/// filter features never reach the standalone builds) into `edge_chain_target_dir()`, and
/// copies `edge_chain.wasm` next to the other modules.
pub fn build_edge_chain() -> anyhow::Result<()> {
    let _lock = wasm_build_lock()?;
    let target = edge_chain_target_dir();
    let manifest = workspace_root().join("plugins/edge-chain/Cargo.toml");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .arg("build")
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .args(["--quiet", "--release", "--target", "wasm32-wasip1"])
            .status()?;
    anyhow::ensure!(status.success(), "building {} failed", manifest.display());
    let built = std::fs::read(target.join("wasm32-wasip1/release/edge_chain.wasm"))?;
    std::fs::create_dir_all(target_dir().join("wasm32-wasip1/release"))?;
    // Written only when the build changed, and by rename, so an Envoy of a concurrent test
    // never reads a half-written module.
    let before = wasm_path("edge_chain_all_exports");
    if wasm_path("edge_chain").exists()
        && std::fs::read(&before).ok().as_deref() == Some(&built[..])
    {
        return Ok(());
    }
    let unused = strip::unused_callbacks("edge_chain").unwrap_or_default();
    let stripped = strip::without_exports(&built, &unused)?;
    write_by_rename(&before, &built)?;
    write_by_rename(&wasm_path("edge_chain"), &stripped)
}

/// Writes `path` through a temporary file and a rename: readers see the old or the new file.
pub fn write_by_rename(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

/// Validates an example config under `envoy/examples/` with Envoy, pointing the relative
/// `target/wasm32-wasip1/release/<module>.wasm` paths it names (each must appear) at
/// wherever the modules were built (CI builds outside the clone).
pub fn validate_example(file: &str, modules: &[&str]) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(workspace_root().join("envoy/examples").join(file))?;
    for module in modules {
        let relative = format!("target/wasm32-wasip1/release/{module}.wasm");
        anyhow::ensure!(text.contains(&relative), "{file} does not name {relative}");
        text = text.replace(&relative, &wasm_path(module).to_string_lossy());
    }
    let path = scratch_dir("example")?.join(file);
    std::fs::write(&path, text)?;
    envoy::validate_file(&path)
}
