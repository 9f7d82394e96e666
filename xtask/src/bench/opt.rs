//! `cargo xtask bench opt`: the same filters built at several optimisation levels (and wasm
//! feature sets), measured in one interleaved run through real Envoy — which level to ship,
//! and what it costs in bytes. Writes `BENCHMARKS-opt.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use envoy_harness::{strip, target_dir, workspace_root, Backend, Envoy, EnvoyConfig};

use crate::bench::{ensure_wrk, median, run_wrk, Sample};

/// One build variant: a name, the release profile's `opt-level`, and extra rustc flags.
struct Variant {
    name: &'static str,
    opt_level: &'static str,
    rustflags: &'static str,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        name: "opt-level \"s\"",
        opt_level: "s",
        rustflags: "",
    },
    Variant {
        name: "opt-level 2",
        opt_level: "2",
        rustflags: "",
    },
    Variant {
        name: "opt-level 3",
        opt_level: "3",
        rustflags: "",
    },
    Variant {
        name: "opt-level 3 + simd128",
        opt_level: "3",
        rustflags: "-C target-feature=+simd128",
    },
];

/// The modules measured, with the stripped file name each variant produces.
const MODULES: [&str; 5] = [
    "rate_limit",
    "response_cache",
    "circuit_breaker",
    "weighted_router",
    "edge_chain",
];

fn variant_dir(index: usize) -> PathBuf {
    target_dir()
        .join("bench-opt")
        .join(format!("variant-{index}"))
}

/// Builds every module for one variant into its own directory (its own target dirs, so
/// the shipped build is untouched), post-link-stripped as the release is.
fn build_variant(index: usize, variant: &Variant) -> Result<()> {
    let dir = variant_dir(index);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |args: &[&str], target: &Path| -> Result<()> {
        let status = Command::new(&cargo)
            .current_dir(workspace_root())
            .args(args)
            .arg("--target-dir")
            .arg(target)
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", variant.opt_level)
            .env("RUSTFLAGS", variant.rustflags)
            .status()?;
        if !status.success() {
            bail!("building {} failed", variant.name);
        }
        Ok(())
    };
    let workspace_target = dir.join("target");
    run(
        &[
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip1",
            "-p",
            "rate-limit",
            "-p",
            "response-cache",
            "-p",
            "circuit-breaker",
            "-p",
            "weighted-router",
        ],
        &workspace_target,
    )?;
    let chain_target = dir.join("edge-chain");
    let manifest = workspace_root().join("plugins/edge-chain/Cargo.toml");
    run(
        &[
            "build",
            "--quiet",
            "--manifest-path",
            &manifest.to_string_lossy(),
            "--release",
            "--target",
            "wasm32-wasip1",
        ],
        &chain_target,
    )?;
    for module in MODULES {
        let built = if module == "edge_chain" {
            chain_target.join("wasm32-wasip1/release/edge_chain.wasm")
        } else {
            workspace_target.join(format!("wasm32-wasip1/release/{module}.wasm"))
        };
        let bytes = std::fs::read(&built).with_context(|| format!("reading {built:?}"))?;
        let unused = strip::unused_callbacks(module).unwrap_or_default();
        let stripped = strip::without_exports(&bytes, &unused)?;
        std::fs::write(dir.join(format!("{module}.wasm")), stripped)?;
    }
    Ok(())
}

/// The same Envoy configuration with every wasm filter loading its module from `dir`.
fn from_dir(config: &EnvoyConfig, dir: &Path) -> EnvoyConfig {
    let mut config = config.clone();
    for filter in &mut config.filters {
        if let Some(file) = filter.wasm.file_name() {
            filter.wasm = dir.join(file);
        }
    }
    config
}

pub fn run() -> Result<()> {
    ensure_wrk()?;
    for (i, v) in VARIANTS.iter().enumerate() {
        println!("\n==> building the modules with {}", v.name);
        build_variant(i, v)?;
    }
    let backend = Backend::start_for_benchmark("bench-origin", 1)?;
    let scenarios = crate::bench::opt_scenarios(backend.addr);
    println!(
        "\n==> starting {} Envoys (1 worker each, CPU 0)",
        scenarios.len() * VARIANTS.len()
    );
    // (scenario, variant, Envoy), interleaved by scenario.
    let mut runs = Vec::new();
    for (s, (name, config, path)) in scenarios.iter().enumerate() {
        for v in 0..VARIANTS.len() {
            let envoy = Envoy::start(&from_dir(config, &variant_dir(v)))
                .with_context(|| format!("{name} with {}", VARIANTS[v].name))?;
            let got = envoy.get(path)?.status;
            if got != 200 {
                bail!("{name} with {}: status {got}", VARIANTS[v].name);
            }
            runs.push((s, v, envoy));
        }
    }
    println!("\n==> warm-up (2 s each)");
    for (s, _, e) in &runs {
        run_wrk(e, scenarios[*s].2, 2)?;
    }
    let (rounds, seconds) = (3, 5);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); runs.len()];
    for round in 1..=rounds {
        println!("\n==> round {round}/{rounds}");
        for (i, (s, v, e)) in runs.iter().enumerate() {
            let sample = run_wrk(e, scenarios[*s].2, seconds)?;
            println!(
                "  {:<40} {:<24} {:>9.0} req/s",
                scenarios[*s].0, VARIANTS[*v].name, sample.rps
            );
            samples[i].push(sample);
        }
    }
    let medians: Vec<Sample> = samples.into_iter().map(median).collect();
    let mut md = String::from(
        "# Optimisation levels: measured\n\n\
         Written by `cargo xtask bench opt`: each module built at every level below (release \
         profile, LTO, the post-link step applied), then one interleaved run — Envoy 1.40.0, \
         1 worker pinned to CPU 0, wrk -t1 -c32 on CPU 1, medians of 3 rounds of 5 s. Ratios \
         are to opt-level \"s\" in the same run; compare ratios, not absolute numbers.\n\n\
         | Scenario |",
    );
    for v in &VARIANTS {
        md.push_str(&format!(" {} req/s (× \"s\") |", v.name));
    }
    md.push_str("\n|---|");
    for _ in &VARIANTS {
        md.push_str("---:|");
    }
    md.push('\n');
    for (s, (name, _, _)) in scenarios.iter().enumerate() {
        md.push_str(&format!("| {name} |"));
        let base = medians[s * VARIANTS.len()].rps.max(1.0);
        for v in 0..VARIANTS.len() {
            let m = medians[s * VARIANTS.len() + v];
            md.push_str(&format!(" {:.0} ({:.2}) |", m.rps, m.rps / base));
        }
        md.push('\n');
    }
    md.push_str("\n| Module size (bytes) |");
    for v in &VARIANTS {
        md.push_str(&format!(" {} |", v.name));
    }
    md.push_str("\n|---|");
    for _ in &VARIANTS {
        md.push_str("---:|");
    }
    md.push('\n');
    for module in MODULES {
        md.push_str(&format!("| {module}.wasm |"));
        let base = std::fs::metadata(variant_dir(0).join(format!("{module}.wasm")))?.len();
        for v in 0..VARIANTS.len() {
            let size = std::fs::metadata(variant_dir(v).join(format!("{module}.wasm")))?.len();
            md.push_str(&format!(
                " {size} ({:+.1}%) |",
                (size as f64 / base as f64 - 1.0) * 100.0
            ));
        }
        md.push('\n');
    }
    let path = workspace_root().join("BENCHMARKS-opt.md");
    std::fs::write(&path, md)?;
    println!("\nwrote {}", path.display());
    Ok(())
}
