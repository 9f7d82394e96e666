//! The load benchmark: every scenario is a real Envoy (1 worker, pinned to CPU 0) in front
//! of the optimized backend; wrk (CPU 1, keep-alive, 32 connections) measures req/s and
//! latency. Warm-up, then 3 rounds with the scenarios interleaved so drift hits all alike;
//! the median round is reported. Writes BENCHMARKS.md and benchmarks.svg.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{bail, Context, Result};
use envoy_harness::{wasm_path, workspace_root, Backend, Envoy, EnvoyConfig, Route, WasmFilter};
use serde_json::json;

pub mod global;
mod memory;
pub mod mix;
pub mod opt;
mod profile;
mod report;
mod scenarios;
mod wrk;

use memory::*;
pub(crate) use profile::*;
use report::*;
pub(crate) use scenarios::*;
pub(crate) use wrk::*;

/// Builds every .wasm (release) and the composed module.
pub(crate) fn build_modules() -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(["build", "--release", "--target", "wasm32-wasip1"])
        .status()?;
    if !status.success() {
        bail!("building the .wasm modules failed");
    }
    envoy_harness::build_edge_chain()
}

pub fn run(seconds: u32, rounds: usize) -> Result<()> {
    ensure_wrk()?;
    println!("\n==> building: .wasm (release) and the optimized backend");
    build_modules()?;
    let backend = Backend::start_for_benchmark("bench-origin", 1)?;
    let scenarios = scenarios(backend.addr);
    println!(
        "\n==> starting {} Envoys (1 worker each, CPU 0)",
        scenarios.len()
    );
    let mut envoys = Vec::new();
    for s in &scenarios {
        let envoy = Envoy::start(&s.config).with_context(|| format!("scenario {}", s.name))?;
        // The open-breaker scenario needs one response to open; every scenario is checked.
        let _ = envoy.get(s.path);
        let got = envoy.get(s.path)?.status;
        if got != s.expect {
            bail!(
                "scenario {:?}: expected status {}, got {got}",
                s.name,
                s.expect
            );
        }
        envoys.push(envoy);
    }
    println!("\n==> warm-up (2 s each)");
    for (s, e) in scenarios.iter().zip(&envoys) {
        run_wrk(e, s.path, 2)?;
    }
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len()];
    for round in 1..=rounds {
        println!("\n==> round {round}/{rounds} ({seconds} s per scenario)");
        for (i, (s, e)) in scenarios.iter().zip(&envoys).enumerate() {
            let sample = run_wrk(e, s.path, seconds)?;
            println!(
                "  {:<48} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
                s.name, sample.rps, sample.p50_ms, sample.p99_ms
            );
            results[i].push(sample);
        }
    }
    let rss: Vec<Option<u64>> = envoys.iter().map(|e| e.rss_kib()).collect();
    drop(envoys);
    println!("\n==> Envoy RSS with 2 workers, per scenario (after a 1 s load)");
    let mut rss_two = Vec::new();
    for scenario in &scenarios {
        let mut config = scenario.config.clone();
        config.workers = 2;
        config.pin_cpu = None;
        let envoy = Envoy::start(&config)?;
        let _ = run_wrk(&envoy, scenario.path, 1);
        rss_two.push(envoy.rss_kib());
    }
    println!("\n==> shared-data memory: the cache full, 1,000,000 rate-limit keys");
    let memory = shared_data_memory(backend.addr)?;
    println!("\n==> perf profiles (8 s per scenario)");
    let (profiles, splits) = profile_table(backend.addr, None)?;
    println!("\n==> allocations per request (host-tests, the same modules in our wasmtime host)");
    let allocations = allocation_table()?;
    let measured = Measured {
        medians: results.into_iter().map(median).collect(),
        rss,
        rss_two,
        memory,
        profiles,
        splits,
        allocations,
    };
    write_report(&scenarios, &measured, seconds, rounds)
}

/// Everything one benchmark run measured, per scenario where it is a list.
struct Measured {
    medians: Vec<Sample>,
    /// Envoy RSS (KiB) with 1 worker, and with 2.
    rss: Vec<Option<u64>>,
    rss_two: Vec<Option<u64>>,
    /// Shared-data memory findings, one line each.
    memory: Vec<String>,
    /// The perf split table, and its numbers.
    profiles: String,
    splits: Vec<Split>,
    /// Allocations per request per path, as host-tests count them.
    allocations: String,
}
