//! `cargo xtask release`: the versioned artifacts users deploy, in `dist/` — every `.wasm`
//! named with the version, `SHA256SUMS` (Envoy's remote code source and Istio / Envoy
//! Gateway want the digest), and one OCI image per module built locally with Docker in the
//! Wasm "compat" layout: a single layer holding `plugin.wasm`, tagged with the version.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{bail, Context, Result};
use envoy_harness::{wasm_path, workspace_root};
use sha2::{Digest, Sha256};

/// The modules a release ships.
pub const MODULES: [&str; 5] = [
    "rate_limit",
    "response_cache",
    "circuit_breaker",
    "weighted_router",
    "edge_chain",
];

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The image tag of a module's OCI image.
pub fn image_tag(module: &str) -> String {
    format!("edgewise/{}:{VERSION}", module.replace('_', "-"))
}

pub fn run() -> Result<()> {
    crate::build_wasm()?;
    let dist = workspace_root().join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist)?;
    }
    std::fs::create_dir_all(&dist)?;
    let mut sums = String::new();
    crate::step(&format!("dist/: version {VERSION}"));
    for module in MODULES {
        let bytes = std::fs::read(wasm_path(module))
            .with_context(|| format!("reading {module}.wasm (built by cargo xtask build)"))?;
        let file = format!("{module}-{VERSION}.wasm");
        std::fs::write(dist.join(&file), &bytes)?;
        let digest = Sha256::digest(&bytes);
        let mut hex = String::with_capacity(64);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        // The format `sha256sum -c` reads.
        let _ = writeln!(sums, "{hex}  {file}");
        println!("  {file}  {} KiB  sha256 {hex}", bytes.len() / 1024);
    }
    std::fs::write(dist.join("SHA256SUMS"), &sums)?;
    crate::step("OCI images (compat layout: one layer, /plugin.wasm)");
    for module in MODULES {
        let context = dist.join("oci").join(module);
        std::fs::create_dir_all(&context)?;
        std::fs::copy(wasm_path(module), context.join("plugin.wasm"))?;
        std::fs::write(
            context.join("Dockerfile"),
            "# A Wasm module image in the compat layout (Istio WasmPlugin, Envoy Gateway).\nFROM scratch\nCOPY plugin.wasm ./\n",
        )?;
        let tag = image_tag(module);
        let status = Command::new("docker")
            .args(["build", "--quiet", "-t", &tag])
            .arg(&context)
            .status()
            .context("running docker build (a Docker engine is needed for the images)")?;
        if !status.success() {
            bail!("docker build of {tag} failed ({status})");
        }
        println!("  {tag}");
    }
    println!("\nrelease {VERSION}: dist/ and {} images", MODULES.len());
    Ok(())
}
