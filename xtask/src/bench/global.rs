//! `cargo xtask bench global`: global rate limiting through real processes — Envoy (1 worker,
//! CPU 0) running rate_limit.wasm that asks edgewise-ratelimit (release build) counting in a
//! real Redis, beside a local rule and beside Envoy's native ratelimit filter on the same
//! service; and the service alone at saturation on one Redis node and on a 3-master Redis
//! Cluster — written to `BENCHMARKS-global.md`.

use anyhow::{bail, Context, Result};
use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, RateLimitService, Redis, WasmFilter};
use serde_json::json;

use crate::bench::{
    build_modules, ensure_wrk, median, perf_split, run_wrk, Sample, PERF_GROUPS, PLAIN_PROXY,
};

const LIMITS: &str = r#"
domain: bench
descriptors:
  - key: rule
    value: pass
    rate_limit: { unit: second, requests_per_unit: 1000000000 }
  - key: rule
    value: charged
    rate_limit: { unit: second, requests_per_unit: 1000000000 }
  - key: rule
    value: deny
    rate_limit: { unit: day, requests_per_unit: 1 }
  - key: rule
    value: deny-uncached
    rate_limit: { unit: day, requests_per_unit: 1 }
"#;

/// The rows other reports look up (BENCHMARKS.md's targets) and this one profiles.
pub(crate) const GLOBAL_PER_REQUEST: &str = "rate_limit, global rule, passing (a call per request)";
pub(crate) const NATIVE_RATELIMIT: &str = "native ratelimit filter, passing (same service)";

struct Scenario {
    name: &'static str,
    config: EnvoyConfig,
    expect: u16,
}

fn global_rule(name: &str, cache: bool, batch: u32) -> String {
    format!(
        r#"{{"rules":[{{"name":"{name}","global":{{"cluster":"ratelimit","domain":"bench","timeout":"250ms","cache_over_limit":{cache},"batch":{batch}}}}}]}}"#
    )
}

pub fn run() -> Result<()> {
    ensure_wrk()?;
    println!("\n==> building: .wasm (release), the optimized backend and rate limit service");
    build_modules()?;
    let service_binary = envoy_harness::ratelimit::release_ratelimit_binary()?;
    let backend = Backend::start_for_benchmark("bench-origin", 1)?;
    let redis = Redis::start()?;
    let service = RateLimitService::start_binary(&service_binary, LIMITS, &redis.url())?;
    let base = || {
        let mut c =
            EnvoyConfig::proxy_to(backend.addr, 1).grpc_cluster("ratelimit", vec![service.grpc]);
        c.pin_cpu = Some(0);
        c
    };
    let wasm = |config: &str| WasmFilter::new("rate_limit", wasm_path("rate_limit"), config);
    let native = json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": "bench",
            "timeout": "0.25s",
            "rate_limit_service": {
                "grpc_service": { "envoy_grpc": { "cluster_name": "ratelimit" } },
                "transport_api_version": "V3"
            },
            "rate_limits": [{ "actions": [
                { "generic_key": { "descriptor_key": "rule", "descriptor_value": "pass" } }
            ] }]
        }
    });
    let scenarios = vec![
        Scenario {
            name: PLAIN_PROXY,
            config: base(),
            expect: 200,
        },
        Scenario {
            name: "rate_limit, local rule, passing",
            config: base().filter(wasm(
                r#"{"rules":[{"name":"all","limit":1000000000,"window":"1s"}]}"#,
            )),
            expect: 200,
        },
        Scenario {
            name: GLOBAL_PER_REQUEST,
            config: base().filter(wasm(&global_rule("pass", true, 1))),
            expect: 200,
        },
        Scenario {
            name: "rate_limit, global rule, passing, lease mode (batch 100)",
            config: base().filter(wasm(&global_rule("pass", true, 100))),
            expect: 200,
        },
        Scenario {
            name: "rate_limit, local rule, charged after the response (2xx: a CAS after each)",
            config: base().filter(wasm(
                r#"{"rules":[{"name":"all","limit":1000000000,"window":"1s","charge":{"statuses":["2xx"]}}]}"#,
            )),
            expect: 200,
        },
        Scenario {
            name: "rate_limit, global rule, charged after the response (a check and a charge call each)",
            config: base().filter(wasm(
                r#"{"rules":[{"name":"charged","charge":{"statuses":["2xx"]},"global":{"cluster":"ratelimit","domain":"bench","timeout":"250ms"}}]}"#,
            )),
            expect: 200,
        },
        Scenario {
            name: NATIVE_RATELIMIT,
            config: base().native_filter(native),
            expect: 200,
        },
        Scenario {
            name: "rate_limit, global rule, denying, remembered (no call)",
            config: base().filter(wasm(&global_rule("deny", true, 1))),
            expect: 429,
        },
        Scenario {
            name: "rate_limit, global rule, denying, cache_over_limit off (a call each)",
            config: base().filter(wasm(&global_rule("deny-uncached", false, 1))),
            expect: 429,
        },
    ];
    let mut envoys = Vec::new();
    for s in &scenarios {
        let envoy = Envoy::start(&s.config).with_context(|| format!("scenario {}", s.name))?;
        // The denying scenarios spend their one request first.
        let _ = envoy.get("/status/200");
        let got = envoy.get("/status/200")?.status;
        if got != s.expect {
            bail!("scenario {:?}: expected {}, got {got}", s.name, s.expect);
        }
        envoys.push(envoy);
    }
    println!("\n==> warm-up (2 s each)");
    for e in &envoys {
        run_wrk(e, "/status/200", 2)?;
    }
    let (rounds, seconds) = (3, 5);
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len()];
    for round in 1..=rounds {
        println!("\n==> round {round}/{rounds} ({seconds} s per scenario)");
        for (i, (s, e)) in scenarios.iter().zip(&envoys).enumerate() {
            let sample = run_wrk(e, "/status/200", seconds)?;
            println!(
                "  {:<70} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
                s.name, sample.rps, sample.p50_ms, sample.p99_ms
            );
            results[i].push(sample);
        }
    }
    let calls = service.metric("edgewise_ratelimit_requests_total")?;
    let medians: Vec<Sample> = results.into_iter().map(median).collect();
    let plain = medians[0].rps.max(1.0);
    let mut report = String::from(
        "# Global rate limiting: measured\n\n\
         Written by `cargo xtask bench global` on this machine (2 cores): Envoy 1.40.0 with 1 \
         worker pinned to CPU 0, wrk (1 thread, 32 connections) on CPU 1; the backend, \
         edgewise-ratelimit (release) and Redis share CPU 1 with wrk, so the global rows pay \
         for the service's and Redis's CPU as well — a lower bound of what a dedicated \
         service machine gives. Medians of 3 rounds of 5 s, `GET /status/200`.\n\n\
         | Scenario | req/s | × plain proxy | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|\n",
    );
    for (s, m) in scenarios.iter().zip(&medians) {
        report.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} |\n",
            s.name,
            m.rps,
            m.rps / plain,
            m.p50_ms,
            m.p99_ms
        ));
    }
    report.push_str(&format!(
        "\nThe service answered {calls} ShouldRateLimit calls in the whole run (every passing \
         request of the global and native rows — one per 100 in lease mode, two per request \
         in the charged global row (the check at admission, the charge after the response, \
         sent from the root context) — and every request of the uncached denying row; the \
         remembered denying row made one).\n"
    ));
    println!(
        "\n==> perf: Envoy's CPU time per request, a global rule per request vs the native filter"
    );
    report.push_str(&format!(
        "\n## Where Envoy's time goes: the per-request global rule vs the native filter\n\n\
         Envoy's CPU time per request during 9 s of the same load (from `/proc`), split by \
         `perf record` into Envoy's code (HTTP, the gRPC client, the host side of every Wasm \
         call), the JIT's code (the compiled .wasm) and the kernel. Both rows wait on the same \
         service, so req/s here is bound by the service's latency as much as by Envoy.\n\n\
         | Scenario | req/s | Envoy CPU µs/request | {} |\n|---|---:|---:|{}\n",
        PERF_GROUPS.map(|g| format!("{g} µs")).join(" | "),
        "---:|".repeat(PERF_GROUPS.len())
    ));
    for name in [GLOBAL_PER_REQUEST, NATIVE_RATELIMIT, PLAIN_PROXY] {
        let Some(i) = scenarios.iter().position(|s| s.name == name) else {
            continue;
        };
        let (sample, us) = perf_split(&envoys[i], "/status/200")?;
        let cells: Vec<String> = us.iter().map(|v| format!("{v:.1}")).collect();
        println!(
            "  {name:<70} {:>9.0} req/s  {}",
            sample.rps,
            cells.join(" / ")
        );
        report.push_str(&format!(
            "| {name} | {:.0} | {:.1} | {} |\n",
            sample.rps,
            us.iter().sum::<f64>(),
            cells.join(" | ")
        ));
    }
    drop(envoys);
    report.push_str(&service_saturation(&service_binary)?);
    let path = envoy_harness::workspace_root().join("BENCHMARKS-global.md");
    std::fs::write(&path, report)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// Limits for the saturation rows: a per-client limit no run reaches.
const SATURATION_LIMITS: &str = r#"
domain: bench
descriptors:
  - key: client
    rate_limit: { unit: second, requests_per_unit: 1000000000 }
"#;

/// One saturation row: decisions per second of edgewise-ratelimit (release) driven by 64
/// concurrent gRPC callers, each call carrying `per_call` limited descriptors of distinct
/// clients (keys spread over a cluster's slots).
struct Saturation {
    name: String,
    calls_per_s: f64,
    descriptors_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn saturate(name: &str, service: &RateLimitService, per_call: usize) -> Result<Saturation> {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let grpc = service.grpc;
    runtime.block_on(async move {
        let (callers, seconds) = (64usize, 5u64);
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))?
            .connect()
            .await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for caller in 0..callers {
            let mut client = RateLimitServiceClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0u64;
                while std::time::Instant::now() < deadline {
                    let descriptors = (0..per_call)
                        .map(|d| RateLimitDescriptor {
                            entries: vec![Entry {
                                key: "client".into(),
                                value: format!("c{caller}-{d}-{}", n % 1000),
                            }],
                            ..Default::default()
                        })
                        .collect();
                    let started = std::time::Instant::now();
                    let answer = client
                        .should_rate_limit(RateLimitRequest {
                            domain: "bench".into(),
                            descriptors,
                            hits_addend: 0,
                        })
                        .await;
                    if answer.is_err() {
                        return Err(anyhow::anyhow!("a call failed: {answer:?}"));
                    }
                    latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                    n += 1;
                }
                Ok(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        latencies.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
        let calls_per_s = latencies.len() as f64 / seconds as f64;
        Ok(Saturation {
            name: name.to_string(),
            calls_per_s,
            descriptors_per_s: calls_per_s * per_call as f64,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
        })
    })
}

/// The service at saturation on one Redis node and on a Redis Cluster of 3 masters (+3
/// replicas), with 1 and 3 descriptors per call: a markdown section.
fn service_saturation(binary: &std::path::Path) -> Result<String> {
    println!("\n==> the service at saturation: one node vs a 3-master cluster");
    let node = Redis::start()?;
    let cluster = envoy_harness::RedisCluster::start(3)?;
    let on_node = RateLimitService::start_binary(binary, SATURATION_LIMITS, &node.url())?;
    let on_cluster = RateLimitService::start_binary(binary, SATURATION_LIMITS, &cluster.url())?;
    let mut rows = Vec::new();
    for per_call in [1, 3] {
        for (store, service) in [
            ("one Redis node (--redis)", &on_node),
            ("Redis Cluster, 3 masters + 3 replicas", &on_cluster),
        ] {
            // Warm-up, then the measured run.
            saturate("warm-up", service, per_call)?;
            let row = saturate(
                &format!("{store}, {per_call} descriptor(s) per call"),
                service,
                per_call,
            )?;
            println!(
                "  {:<62} {:>8.0} calls/s {:>8.0} decisions/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
                row.name, row.calls_per_s, row.descriptors_per_s, row.p50_ms, row.p99_ms
            );
            rows.push(row);
        }
    }
    let mut out = String::from(
        "\n## The service at saturation: one Redis node vs a Redis Cluster\n\n\
         64 concurrent gRPC callers (one runtime thread, 5 s after a 5 s warm-up) calling \
         edgewise-ratelimit (release) directly, each call carrying 1 or 3 limited descriptors \
         of distinct clients. Everything shares this machine's 2 cores — the callers, the \
         service and every Redis process — so the cluster's masters compete for the same \
         CPUs the single node has to itself: these rows show the cost of the cluster path \
         (slot grouping, a script call per slot, the cluster client), not the added capacity \
         of masters on their own machines.\n\n\
         | Store, descriptors per call | calls/s | decisions/s | p50 ms | p99 ms |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} |\n",
            r.name, r.calls_per_s, r.descriptors_per_s, r.p50_ms, r.p99_ms
        ));
    }
    Ok(out)
}
