//! The load benchmark: every scenario is a real Envoy (1 worker, pinned to CPU 0) in front
//! of the optimized backend; wrk (CPU 1, keep-alive, 32 connections) measures req/s and
//! latency. Warm-up, then 3 rounds with the scenarios interleaved so drift hits all alike;
//! the median round is reported. Writes BENCHMARKS.md and benchmarks.svg.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{bail, Context, Result};
use envoy_harness::{wasm_path, workspace_root, Backend, Envoy, EnvoyConfig, Route, WasmFilter};
use serde_json::json;

struct Scenario {
    name: &'static str,
    group: &'static str,
    config: EnvoyConfig,
    path: &'static str,
    /// Status every measured request must get (checked once before measuring).
    expect: u16,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

fn wasm(name: &str, config: &str) -> WasmFilter {
    WasmFilter::new(name, wasm_path(name), config).vm_id("edgewise")
}

/// A filter configuration (a JSON object) with `"metrics_flush": "1s"` added.
fn with_flush(config: &str) -> String {
    format!(
        r#"{{"metrics_flush":"1s",{}"#,
        config.trim_start().trim_start_matches('{')
    )
}

/// The module as linked, before the post-link step removed its unused callbacks (every
/// proxy_on_* export of the SDK): the "before" of that step, measured in the same run.
fn wasm_all_exports(name: &str, config: &str) -> WasmFilter {
    WasmFilter::new(name, wasm_path(&format!("{name}_all_exports")), config).vm_id("edgewise")
}

/// Envoy with 1 worker pinned to CPU 0 in front of `backend`: every scenario's base.
fn pinned(backend: std::net::SocketAddr) -> EnvoyConfig {
    let mut c = EnvoyConfig::proxy_to(backend, 1);
    c.pin_cpu = Some(0);
    c
}

fn scenarios(backend: std::net::SocketAddr) -> Vec<Scenario> {
    let base = || pinned(backend);
    let three_clusters = |c: EnvoyConfig| {
        c.cluster("api-v1", vec![backend])
            .cluster("api-v2", vec![backend])
            .cluster("api-v3", vec![backend])
    };
    let router = r#"{"routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":70},{"cluster":"api-v2","weight":20},{"cluster":"api-v3","weight":10}]}]}"#;
    let limiter_pass =
        r#"{"rules":[{"name":"all","limit":1000000000,"window":"1s","key":"client_ip"}]}"#;
    let breaker = r#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":5}}"#;
    let local_ratelimit = |tokens: u64, fill: &str| {
        json!({
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "native_rl",
                "token_bucket": { "max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": fill },
                "filter_enabled": { "runtime_key": "rl_enabled", "default_value": { "numerator": 100, "denominator": "HUNDRED" } },
                "filter_enforced": { "runtime_key": "rl_enforced", "default_value": { "numerator": 100, "denominator": "HUNDRED" } }
            }
        })
    };
    vec![
        Scenario { name: "plain proxy", group: "baseline", config: base(), path: "/status/200", expect: 200 },
        Scenario { name: "direct_response (no upstream)", group: "baseline", config: base().routes(vec![Route::direct("direct", "/", 200, "ok")]), path: "/", expect: 200 },
        Scenario { name: "wasm do-nothing filter", group: "baseline", config: base().filter(wasm("noop", "")), path: "/status/200", expect: 200 },
        Scenario { name: "wasm floor (raw ABI, request headers only)", group: "baseline", config: base().filter(wasm("floor", "")), path: "/status/200", expect: 200 },
        Scenario { name: "floor + 8 single-header reads", group: "baseline", config: base().filter(wasm("floor", "headers:8")), path: "/status/200", expect: 200 },
        Scenario { name: "floor + 1 header-map read", group: "baseline", config: base().filter(wasm("floor", "pairs")), path: "/status/200", expect: 200 },
        Scenario { name: "rate_limit, passing (all SDK exports)", group: "rate limiting", config: base().filter(wasm_all_exports("rate_limit", limiter_pass)), path: "/status/200", expect: 200 },
        Scenario { name: "rate_limit, passing", group: "rate limiting", config: base().filter(wasm("rate_limit", limiter_pass)), path: "/status/200", expect: 200 },
        Scenario { name: "native local_ratelimit, passing", group: "rate limiting", config: base().native_filter(local_ratelimit(1_000_000_000, "1s")), path: "/status/200", expect: 200 },
        Scenario {
            name: "rate_limit, denying",
            group: "rate limiting",
            config: base().filter(wasm("rate_limit", r#"{"rules":[{"name":"none","limit":1,"window":"24h"}]}"#)),
            path: "/status/200",
            expect: 429,
        },
        Scenario { name: "native local_ratelimit, denying", group: "rate limiting", config: base().native_filter(local_ratelimit(1, "86400s")), path: "/status/200", expect: 429 },
        Scenario {
            name: "circuit_breaker, closed",
            group: "circuit breaking",
            config: base().route_name("payments").filter(wasm("circuit_breaker", r#"{"trip":{"consecutive_failures":5}}"#)),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            // 200 counts as a failure here, so the first response opens it for an hour.
            name: "circuit_breaker, open (fallback)",
            group: "circuit breaking",
            config: base().route_name("payments").filter(wasm("circuit_breaker", r#"{"failure":{"statuses":[200]},"trip":{"consecutive_failures":1},"open":{"duration":"1h"}}"#)),
            path: "/status/200",
            expect: 503,
        },
        Scenario {
            name: "weighted_router (WRR, Pfair cycle)",
            group: "weighted routing",
            config: three_clusters(base().routes(vec![Route::by_header("ours", "/", "x-route-cluster")]).filter(wasm("weighted_router", router))),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: "weighted_router (WRR, shared cursor)",
            group: "weighted routing",
            config: three_clusters(
                base().routes(vec![Route::by_header("ours", "/", "x-route-cluster")]).filter(wasm("weighted_router", &router.replace(r#""name":"api","#, r#""name":"api","shared_cursor":true,"#))),
            ),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: "native weighted_clusters",
            group: "weighted routing",
            config: three_clusters(base().routes(vec![Route::native_weighted("native", "/", &[("api-v1", 70), ("api-v2", 20), ("api-v3", 10)])])),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: "response_cache, every request a hit",
            group: "caching",
            config: base().filter(wasm("response_cache", "{}")),
            path: "/cache/bench?cache_control=max-age%3D86400&body=ok",
            expect: 200,
        },
        Scenario {
            name: "response_cache hit (all SDK exports)",
            group: "caching",
            config: base().filter(wasm_all_exports("response_cache", "{}")),
            path: "/cache/bench?cache_control=max-age%3D86400&body=ok",
            expect: 200,
        },
        Scenario {
            name: "response_cache, every request a miss (no-store)",
            group: "caching",
            config: base().filter(wasm("response_cache", "{}")),
            path: "/cache/miss?cache_control=no-store&body=ok",
            expect: 200,
        },
        Scenario {
            name: "native cache filter, every request a hit",
            group: "caching",
            config: base().native_filter(json!({
                "name": "envoy.filters.http.cache",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig" }
                }
            })),
            path: "/cache/bench?cache_control=max-age%3D86400&body=ok",
            expect: 200,
        },
        Scenario {
            name: "native outlier detection (healthy)",
            group: "circuit breaking",
            config: {
                let mut c = base();
                c.cluster_options = Some(json!({ "outlier_detection": { "consecutive_5xx": 5, "interval": "1s", "base_ejection_time": "30s" } }));
                c
            },
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: "all four chained (4 VMs)",
            group: "chained",
            config: three_clusters(
                base()
                    .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
                    .filter(wasm("rate_limit", limiter_pass))
                    .filter(wasm("response_cache", "{}"))
                    .filter(wasm("weighted_router", router))
                    .filter(wasm("circuit_breaker", breaker)),
            ),
            path: "/cache/miss?cache_control=no-store&body=ok",
            expect: 200,
        },
        Scenario {
            name: "all four composed (edge_chain, 1 VM)",
            group: "chained",
            config: three_clusters(
                base()
                    .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
                    .filter(wasm("edge_chain", &format!(
                        r#"{{"rate_limit":{limiter_pass},"response_cache":{{}},"weighted_router":{router},"circuit_breaker":{breaker}}}"#
                    ))),
            ),
            path: "/cache/miss?cache_control=no-store&body=ok",
            expect: 200,
        },
        Scenario {
            name: "all four composed (edge_chain, metrics_flush 1s)",
            group: "chained",
            config: three_clusters(
                base()
                    .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
                    .filter(wasm("edge_chain", &format!(
                        r#"{{"rate_limit":{},"response_cache":{{"metrics_flush":"1s"}},"weighted_router":{},"circuit_breaker":{}}}"#,
                        with_flush(limiter_pass), with_flush(router), with_flush(breaker)
                    ))),
            ),
            path: "/cache/miss?cache_control=no-store&body=ok",
            expect: 200,
        },
        Scenario {
            name: "rate_limit, passing, metrics_flush 1s",
            group: "rate limiting",
            config: base().filter(wasm("rate_limit", &with_flush(limiter_pass))),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: "all four composed (edge_chain, all SDK exports)",
            group: "chained",
            config: three_clusters(
                base()
                    .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
                    .filter(wasm_all_exports("edge_chain", &format!(
                        r#"{{"rate_limit":{limiter_pass},"response_cache":{{}},"weighted_router":{router},"circuit_breaker":{breaker}}}"#
                    ))),
            ),
            path: "/cache/miss?cache_control=no-store&body=ok",
            expect: 200,
        },
        Scenario {
            name: "rate_limit + weighted_router + circuit_breaker",
            group: "chained",
            config: three_clusters(
                base()
                    .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
                    .filter(wasm("rate_limit", limiter_pass))
                    .filter(wasm("weighted_router", router))
                    .filter(wasm("circuit_breaker", breaker)),
            ),
            path: "/status/200",
            expect: 200,
        },
    ]
}

/// The scenarios `bench opt` measures at each optimisation level: (name, config, path).
pub(crate) fn opt_scenarios(
    backend: std::net::SocketAddr,
) -> Vec<(&'static str, EnvoyConfig, &'static str)> {
    const CHOSEN: [&str; 5] = [
        "rate_limit, passing",
        "circuit_breaker, closed",
        "weighted_router (WRR, Pfair cycle)",
        "response_cache, every request a hit",
        "all four composed (edge_chain, 1 VM)",
    ];
    scenarios(backend)
        .into_iter()
        .filter(|s| CHOSEN.contains(&s.name))
        .map(|s| (s.name, s.config, s.path))
        .collect()
}

pub(crate) fn ensure_wrk() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    println!("installing wrk (Debian package)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "wrk"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        || (Command::new("apt-get").arg("update").status().is_ok()
            && Command::new("apt-get")
                .args(["install", "-y", "wrk"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false));
    if !ok {
        bail!("wrk is needed for the load benchmark: `apt-get install wrk`");
    }
    Ok(())
}

fn parse_ms(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => return None,
    })
}

pub(crate) fn run_wrk(envoy: &Envoy, path: &str, seconds: u32) -> Result<Sample> {
    run_wrk_with(envoy, path, seconds, None).map(|(sample, _)| sample)
}

/// wrk against `path` (or what the Lua `script` requests), returning the sample and the
/// count of answers that were not 2xx/3xx.
pub(crate) fn run_wrk_with(
    envoy: &Envoy,
    path: &str,
    seconds: u32,
    script: Option<&std::path::Path>,
) -> Result<(Sample, u64)> {
    let url = format!("http://{}{}", envoy.listener, path);
    let mut command = Command::new("taskset");
    command.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        "-c32",
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let out = command.arg(&url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sample = Sample::default();
    let mut non_2xx = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rps] => sample.rps = rps.parse().unwrap_or(0.0),
            ["50%", v] => sample.p50_ms = parse_ms(v).unwrap_or(0.0),
            ["99%", v] => sample.p99_ms = parse_ms(v).unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    if sample.rps == 0.0 {
        bail!(
            "wrk gave no result for {url}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((sample, non_2xx))
}

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

pub(crate) fn median(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    samples[samples.len() / 2]
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

fn write_report(
    scenarios: &[Scenario],
    measured: &Measured,
    seconds: u32,
    rounds: usize,
) -> Result<()> {
    let Measured {
        medians,
        rss,
        rss_two,
        memory,
        profiles,
        splits,
        allocations,
    } = measured;
    let find = |name: &str| {
        scenarios
            .iter()
            .position(|s| s.name == name)
            .map(|i| medians[i].rps)
            .unwrap_or(f64::NAN)
    };
    let plain = find("plain proxy");
    let noop = find("wasm do-nothing filter");
    let envoy_version = Command::new(envoy_harness::ensure_envoy_installed()?)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split("version:")
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "Generated by `cargo xtask bench` on {date}. Machine: {} CPUs ({cpu}); Envoy {envoy_version}.", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))?;
    writeln!(md, "Envoy: 1 worker pinned to CPU 0; load: wrk -t1 -c32 (keep-alive) pinned to CPU 1 with the optimized backend; {rounds} rounds of {seconds} s per scenario after a 2 s warm-up, scenarios interleaved; median round shown. Absolute numbers are noisy here — compare ratios from one run.\n")?;
    writeln!(md, "| Scenario | req/s | p50 ms | p99 ms | vs plain proxy | vs do-nothing wasm | Envoy RSS 1 worker (MiB) | 2 workers (MiB) |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    let mib = |r: &Option<u64>| {
        r.map(|k| format!("{:.0}", k as f64 / 1024.0))
            .unwrap_or_else(|| "-".into())
    };
    for (((s, m), r), r2) in scenarios.iter().zip(medians).zip(rss).zip(rss_two) {
        writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            s.name,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.rps / plain,
            m.rps / noop,
            mib(r),
            mib(r2)
        )?;
    }
    writeln!(
        md,
        "\n## Targets (issue 25; ratios from this run unless the row names its report)\n"
    )?;
    writeln!(md, "| Target | Measured | Met | Short by |")?;
    writeln!(md, "|---|---:|---|---:|")?;
    let root = workspace_root();
    let mix = report_ratio(&root.join("BENCHMARKS-mix.md"), "| edge_chain", 3);
    let global = match (
        report_ratio(
            &root.join("BENCHMARKS-global.md"),
            "| rate_limit, global rule, passing (a call per request)",
            1,
        ),
        report_ratio(
            &root.join("BENCHMARKS-global.md"),
            "| native ratelimit filter, passing",
            1,
        ),
    ) {
        (Some(ours), Some(native)) => ours / native,
        _ => f64::NAN,
    };
    let targets: Vec<(&str, f64, f64)> = vec![
        (
            "all four composed, passing miss ≥ 0.6 × plain",
            find("all four composed (edge_chain, 1 VM)") / plain,
            0.6,
        ),
        (
            "rate_limit passing ≥ 0.9 × SDK do-nothing",
            find("rate_limit, passing") / noop,
            0.9,
        ),
        (
            "circuit_breaker closed ≥ 0.9 × SDK do-nothing",
            find("circuit_breaker, closed") / noop,
            0.9,
        ),
        (
            "cache hit ≥ 0.8 × native cache hit",
            find("response_cache, every request a hit")
                / find("native cache filter, every request a hit"),
            0.8,
        ),
        (
            "realistic mix through edge_chain ≥ 0.75 × native chain (BENCHMARKS-mix.md)",
            mix.unwrap_or(f64::NAN),
            0.75,
        ),
        (
            "global per-request rule ≥ 1.0 × native ratelimit filter (BENCHMARKS-global.md)",
            global,
            1.0,
        ),
        (
            "rate_limit denying ≥ 1.5 × plain (earlier target)",
            find("rate_limit, denying") / plain,
            1.5,
        ),
        (
            "1 header-map read vs 8 single reads (earlier target)",
            find("floor + 1 header-map read") / find("floor + 8 single-header reads"),
            1.0,
        ),
    ];
    for (label, value, target) in targets {
        let met = value >= target;
        let short = if met || value.is_nan() {
            String::new()
        } else {
            format!(
                "{:.2} ({:.0}%)",
                target - value,
                100.0 * (target - value) / target
            )
        };
        writeln!(
            md,
            "| {label} | {value:.2} | {} | {short} |",
            if value.is_nan() {
                "not measured"
            } else if met {
                "yes"
            } else {
                "no"
            }
        )?;
    }
    writeln!(md, "\n{}", left_by_profile(splits))?;
    writeln!(md, "\n## Memory\n")?;
    for line in memory {
        writeln!(md, "- {line}")?;
    }
    writeln!(
        md,
        "\n.wasm sizes: {}",
        [
            "rate_limit",
            "circuit_breaker",
            "weighted_router",
            "response_cache",
            "edge_chain",
            "noop"
        ]
        .iter()
        .map(|n| format!(
            "{n} {} KiB",
            std::fs::metadata(wasm_path(n))
                .map(|m| m.len() / 1024)
                .unwrap_or(0)
        ))
        .collect::<Vec<_>>()
        .join(", ")
    )?;
    writeln!(md, "\n![req/s per scenario](benchmarks.svg)")?;
    writeln!(
        md,
        "\n## Where the time goes\n\n\
A filter's cost is mostly its crossings between Envoy and V8, not its logic (criterion: decisions \
of 5–600 ns). Host calls per request, counted in our host by `host-tests/tests/host_calls.rs` \
(which fails if any path makes more):\n\n\
| Path | Host calls per request | with `metrics_flush: \"1s\"` |\n|---|---|---|\n\
| do-nothing filter | 0 (the SDK's per-stream callbacks only) | |\n\
| rate_limit passing | 7: clock, key header map, shared-data get + CAS set, counter, 2 RateLimit response headers | 6 |\n\
| rate_limit denying | 5: clock, key header map, shared-data get, counter, local reply | |\n\
| circuit_breaker closed | 6: upstream header, clock + slot read on request and on response, `:status` | 6 (counts nothing on this path) |\n\
| weighted_router | 2: cluster header, counter | 1 |\n\
| response_cache hit | 6: request header map, clock, slot metadata + entry, counter, local reply (+1: its content-type) | 5 |\n\
| response_cache miss, not storable | 8: request and response header maps, clock, home slot + fill lock, 2 counters, Cache-Status | 6 |\n\
| all four, composed (edge_chain) | 19 (23 before its filters shared one clock and one request-header-map read per callback) | 15 |\n\n\
Entering the VM: Envoy calls only the callbacks a module exports; the post-link step of \
`cargo xtask build` (`envoy/src/strip.rs`) leaves each filter only those it implements (router 7, \
breaker 10, cache 11, rate limiter 13, edge_chain 16 of the SDK's 26), so a GET no longer enters \
the VM for the response body or the access-log phase of a filter that ignores them.\n\n\
`cargo xtask bench profile` samples Envoy with perf under the same load and splits a request's CPU \
time into Envoy's code (HTTP, the host side of every call, V8's runtime), the JIT's code (the \
compiled .wasm) and the kernel (table below; the perf runs are separate from the load rounds, so \
their req/s differ by the machine's run-to-run noise).")?;
    writeln!(md, "\n{profiles}")?;
    writeln!(
        md,
        "\n### The composed path before issue 25\n\n\
The same profile at commit 75a276a (release at `opt-level = \"s\"`, the request header map decoded \
into a String and a Vec per field, the limiter's statuses copied), measured on this machine on \
2026-12-04 — a separate run, so compare its split, not its req/s, with the table above:\n\n{}",
        include_str!("../data/profile-before-issue-25.md").trim_end()
    )?;
    writeln!(
        md,
        "\n## Allocations per request\n\n\
Counted by `host-tests/tests/host_calls.rs` (every module's global allocator counts; the test \
fails when a path allocates more than its bound). A buffer the host hands back is one \
allocation in the guest, so any path that reads has a floor above zero.\n\n{allocations}"
    )?;
    std::fs::write(workspace_root().join("BENCHMARKS.md"), md)?;
    std::fs::write(
        workspace_root().join("benchmarks.svg"),
        svg(scenarios, medians),
    )?;
    println!("\nwrote BENCHMARKS.md and benchmarks.svg");
    Ok(())
}

/// The allocations-per-request table `host_calls.rs` prints (it runs the built modules).
fn allocation_table() -> Result<String> {
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args([
            "test",
            "-q",
            "-p",
            "host-tests",
            "--test",
            "host_calls",
            "allocations_per_request",
            "--",
            "--nocapture",
        ])
        .output()
        .context("running the host-tests allocation count")?;
    if !output.status.success() {
        bail!(
            "host-tests allocation count failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("| path | allocations per request |"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    if table.is_empty() {
        bail!("the allocation count printed no table");
    }
    Ok(table.join("\n") + "\n")
}

/// Column `column` (0 = the row's label) of the first table row starting with `row` in a
/// report another bench task wrote; None when the report or the row is missing.
fn report_ratio(report: &std::path::Path, row: &str, column: usize) -> Option<f64> {
    let text = std::fs::read_to_string(report).ok()?;
    let line = text.lines().find(|l| l.starts_with(row))?;
    line.split('|').nth(column + 1)?.trim().parse().ok()
}

/// A horizontal bar chart of req/s, as plain SVG.
fn svg(scenarios: &[Scenario], medians: &[Sample]) -> String {
    let max = medians.iter().map(|m| m.rps).fold(1.0, f64::max);
    let (left, width, bar, gap) = (330.0, 420.0, 18.0, 8.0);
    let height = 40.0 + scenarios.len() as f64 * (bar + gap);
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n", left + width + 90.0);
    out.push_str("<text x=\"10\" y=\"20\" font-size=\"14\">req/s, Envoy 1 worker (median of rounds)</text>\n");
    for (i, (s, m)) in scenarios.iter().zip(medians).enumerate() {
        let y = 35.0 + i as f64 * (bar + gap);
        let color = match s.group {
            "baseline" => "#888888",
            "rate limiting" => "#3b7dd8",
            "circuit breaking" => "#d8793b",
            "weighted routing" => "#3bb07a",
            "caching" => "#c9a227",
            _ => "#8a4fd8",
        };
        let w = width * m.rps / max;
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 8.0,
            y + 13.0,
            s.name
        ));
        out.push_str(&format!(
            "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bar}\" fill=\"{color}\"/>\n"
        ));
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\">{:.0}</text>\n",
            left + w + 6.0,
            y + 13.0,
            m.rps
        ));
    }
    out.push_str("</svg>\n");
    out
}

/// `cargo xtask bench profile [scenario]`: Envoy under wrk load, sampled by `perf record`
/// (8 s) for each scenario whose name contains `scenario` (default: the local-reply and
/// caching scenarios). Envoy's binary is stripped and V8's wasm code has no symbols for perf,
/// so the split is by where the time is spent: Envoy's code (HTTP, host calls, V8's runtime),
/// the JIT's code (the compiled .wasm, V8 stubs), the kernel (sockets), libc. With the worker
/// core saturated, a share × 1/(req/s) is CPU time per request. Writes
/// `target/bench/profiles.md` and prints it.
pub fn profile(wanted: Option<&str>) -> Result<()> {
    ensure_wrk()?;
    build_modules()?;
    let backend = Backend::start_for_benchmark("bench-origin", 1)?;
    let (table, _) = profile_table(backend.addr, wanted)?;
    let out = workspace_root().join("target/bench/profiles.md");
    std::fs::write(&out, &table)?;
    println!("\n{table}\nwritten to {}", out.display());
    Ok(())
}

/// The perf split of each chosen scenario (see `profile`), as a markdown table.
/// One scenario's perf split: its name and CPU µs per request by `PERF_GROUPS`.
pub(crate) type Split = (String, [f64; 5]);

fn profile_table(
    backend: std::net::SocketAddr,
    wanted: Option<&str>,
) -> Result<(String, Vec<Split>)> {
    let all = scenarios(backend);
    let default_set = [
        "plain proxy",
        "direct_response (no upstream)",
        "wasm do-nothing filter",
        "rate_limit, passing",
        "rate_limit, denying",
        "circuit_breaker, closed",
        "weighted_router (WRR, Pfair cycle)",
        "response_cache, every request a hit",
        "response_cache, every request a miss (no-store)",
        "native cache filter, every request a hit",
        "all four chained (4 VMs)",
        "all four composed (edge_chain, 1 VM)",
    ];
    let chosen: Vec<&Scenario> = all
        .iter()
        .filter(|s| match wanted {
            Some(w) => s.name.contains(w),
            None => default_set.contains(&s.name),
        })
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        bail!("no scenario matches {wanted:?}; scenarios: {names:?}");
    }
    let groups = PERF_GROUPS;
    let mut splits = Vec::new();
    let mut table = format!(
        "### Where a request's CPU time goes (perf, Envoy 1 worker pinned, wrk -c32)\n\n\
         | Scenario | req/s | µs/request | {} |\n|---|---:|---:|{}\n",
        groups.map(|g| format!("{g} µs")).join(" | "),
        "---:|".repeat(groups.len())
    );
    for scenario in chosen {
        let envoy = Envoy::start(&scenario.config)?;
        let _ = envoy.get(scenario.path);
        run_wrk(&envoy, scenario.path, 2)?;
        let (sample, per_request_us) = perf_split(&envoy, scenario.path)?;
        splits.push((scenario.name.to_string(), per_request_us));
        let cells: Vec<String> = per_request_us.iter().map(|us| format!("{us:.1}")).collect();
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.1} | {} |",
            scenario.name,
            sample.rps,
            per_request_us.iter().sum::<f64>(),
            cells.join(" | ")
        );
        println!(
            "  {:<48} {:>9.0} req/s  {}",
            scenario.name,
            sample.rps,
            cells.join(" / ")
        );
    }
    Ok((table, splits))
}

/// "What the profile says is left" for the targets: each target scenario's CPU time per
/// request beside its baseline's, by where it is spent (from this run's perf split).
fn left_by_profile(splits: &[Split]) -> String {
    let find = |name: &str| splits.iter().find(|(n, _)| n == name).map(|(_, us)| *us);
    let mut out = String::from(
        "### What the profile says is left\n\n\
         CPU µs per request in the perf runs below: the scenario, its baseline, and the \
         difference by where it is spent (Envoy's code holds the host side of every Wasm call; \
         the JIT's is our compiled Rust).\n\n\
         | Scenario | baseline | scenario µs | baseline µs | + Envoy's code | + JIT | + kernel |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for (scenario, baseline) in [
        ("all four composed (edge_chain, 1 VM)", "plain proxy"),
        ("rate_limit, passing", "wasm do-nothing filter"),
        ("circuit_breaker, closed", "wasm do-nothing filter"),
        (
            "response_cache, every request a hit",
            "native cache filter, every request a hit",
        ),
    ] {
        let (Some(s), Some(b)) = (find(scenario), find(baseline)) else {
            continue;
        };
        let total = |v: [f64; 5]| v.iter().sum::<f64>();
        out.push_str(&format!(
            "| {scenario} | {baseline} | {:.1} | {:.1} | {:+.1} | {:+.1} | {:+.1} |\n",
            total(s),
            total(b),
            s[0] - b[0],
            s[1] - b[1],
            s[2] - b[2]
        ));
    }
    out
}

/// The groups `perf_split` divides Envoy's CPU time into.
pub(crate) const PERF_GROUPS: [&str; 5] = ["envoy", "JIT", "kernel", "libc", "other"];

/// Envoy under wrk load on `path` for 9 s, sampled by `perf record` (8 s): the load's sample
/// and each group's CPU time per request in µs (`PERF_GROUPS`: Envoy's code, the JIT's code,
/// the kernel, libc, the rest): the CPU time Envoy used during the load (from
/// `/proc/<pid>/stat`) per request, split by perf's shares — true whether or not the worker
/// core is saturated (a load bound by latency elsewhere leaves it idle part of the time).
pub(crate) fn perf_split(envoy: &Envoy, path: &str) -> Result<(Sample, [f64; 5])> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("perf.data");
    let pid = envoy.pid().to_string();
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-F", "999", "-o"])
        .arg(&data)
        .args(["-p", &pid, "--", "sleep", "8"])
        .spawn()
        .context("running perf record")?;
    let cpu_before = cpu_ticks(envoy.pid());
    let sample = run_wrk(envoy, path, 9)?;
    let cpu_after = cpu_ticks(envoy.pid());
    perf.wait()?;
    let report = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "dso", "-i"])
        .arg(&data)
        .output()
        .context("running perf report")?;
    let mut shares = [0.0f64; 5];
    for line in String::from_utf8_lossy(&report.stdout).lines() {
        let line = line.trim();
        let Some((pct, dso)) = line.split_once("%  ") else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        let dso = dso.trim();
        let group = if dso == "envoy" {
            0
        } else if dso.starts_with("[JIT]") || dso.starts_with("perf-") || dso == "[unknown]" {
            1
        } else if dso.starts_with("[kernel") {
            2
        } else if dso.starts_with("libc") {
            3
        } else {
            4
        };
        shares[group] += pct / 100.0;
    }
    let _ = std::fs::remove_file(&data);
    // Clock ticks are 10 ms (USER_HZ 100 on Linux); without /proc, assume a saturated core.
    let per_request = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if after > before => {
            (after - before) as f64 * 10_000.0 / (sample.rps * 9.0)
        }
        _ => 1e6 / sample.rps,
    };
    let total: f64 = shares.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    Ok((sample, shares.map(|share| share / total * per_request)))
}

/// User + system CPU time of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3: utime is 14,
    // stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Envoy's resident memory before and after filling shared data: the cache to its byte
/// budget, and the rate limiter's key table with a spray of distinct keys (wrk + Lua, a new
/// `x-user` per request). Shared data lives in Envoy's heap, so its growth shows in RSS.
fn shared_data_memory(backend: std::net::SocketAddr) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let base = || pinned(backend);
    // The cache: 64 MiB budget, 96 × 1 MiB responses offered.
    let cache = r#"{"max_bytes":67108864,"max_entry_bytes":2097152,"max_entries":4096}"#;
    let envoy = Envoy::start(&base().filter(wasm("response_cache", cache)))?;
    let _ = envoy.get("/status/200");
    let before = envoy.rss_kib().unwrap_or(0);
    for n in 0..96 {
        let r = envoy.get(&format!(
            "/cache/big{n}?cache_control=max-age%3D3600&size=1048576"
        ))?;
        if r.status != 200 {
            bail!("cache fill: status {}", r.status);
        }
    }
    let after = envoy.rss_kib().unwrap_or(0);
    let in_use = envoy
        .stat("edgewise.response_cache.bytes_in_use")?
        .unwrap_or(0);
    let evicted = envoy.stat("edgewise.response_cache.evicted")?.unwrap_or(0);
    lines.push(format!(
        "response_cache full (max_bytes 64 MiB, 96 × 1 MiB responses offered): bytes_in_use {:.1} MiB, {evicted} evicted; Envoy RSS {} → {} MiB (+{} MiB: the stored entries plus the Wasm heap that copied them)",
        in_use as f64 / 1048576.0,
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    ));
    drop(envoy);

    // The rate limiter: max_keys 10000 (2,500 shared-data keys), a spray of distinct keys.
    let limiter = r#"{"rules":[{"name":"spray","key":"header:x-user","limit":1000000000,"window":"1m","max_keys":10000}]}"#;
    let config = base()
        .routes(vec![Route::direct("direct", "/", 200, "ok")])
        .filter(wasm("rate_limit", limiter));
    let envoy = Envoy::start(&config)?;
    let _ = envoy.get("/");
    let before = envoy.rss_kib().unwrap_or(0);
    let script = workspace_root().join("target/bench/spray.lua");
    std::fs::create_dir_all(workspace_root().join("target/bench"))?;
    std::fs::write(
        &script,
        "n = 0\ninit = function(args)\n  n = tonumber(args[1])\nend\nrequest = function()\n  n = n + 1\n  return wrk.format(\"GET\", \"/\", { [\"x-user\"] = \"user-\" .. n })\nend\n",
    )?;
    // Each wrk run starts its key counter where the previous runs stopped: every key new.
    let mut sprayed = 0u64;
    let mut spray_seconds = 0;
    while sprayed < 1_000_000 && spray_seconds < 180 {
        let out = Command::new("taskset")
            .args(["-c", "1", "wrk", "-t1", "-c32", "-d15s", "-s"])
            .arg(&script)
            .arg(format!("http://{}/", envoy.listener))
            .args(["--", &sprayed.to_string()])
            .output()
            .context("running wrk")?;
        spray_seconds += 15;
        let text = String::from_utf8_lossy(&out.stdout);
        let done = text
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.split_once(" requests in ")
                    .and_then(|(n, _)| n.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        if done == 0 {
            bail!("wrk spray gave no result:\n{text}");
        }
        sprayed += done;
    }
    let after = envoy.rss_kib().unwrap_or(0);
    let allowed = envoy
        .stat("edgewise.rate_limit.rule=.=spray;.;allowed")?
        .unwrap_or(0);
    lines.push(format!(
        "rate_limit key spray: {sprayed} requests with distinct `x-user` values ({allowed} counted) into max_keys 10000 — 2,500 shared-data keys by construction; Envoy RSS {} → {} MiB (+{} MiB)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    ));
    Ok(lines)
}
