//! `cargo xtask release`: the versioned artifacts users deploy, in `dist/` — every `.wasm`
//! named with the version, `SHA256SUMS` (Envoy's remote code source and Istio / Envoy
//! Gateway want the digest), and one OCI image per module built locally with Docker in the
//! Wasm "compat" layout: a single layer holding `plugin.wasm`, tagged with the version.

use std::process::Command;

use anyhow::{bail, Context, Result};
use envoy_harness::release::{write_dist, MODULES, VERSION};
use envoy_harness::{wasm_path, workspace_root};

/// The image tag of a module's OCI image.
pub fn image_tag(module: &str) -> String {
    format!("edgewise/{}:{VERSION}", module.replace('_', "-"))
}

pub fn run() -> Result<()> {
    crate::build_wasm()?;
    let dist = workspace_root().join("dist");
    crate::step(&format!("dist/: version {VERSION}"));
    for a in write_dist(&dist)? {
        println!("  {}  {} KiB  sha256 {}", a.file, a.bytes / 1024, a.sha256);
    }
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
