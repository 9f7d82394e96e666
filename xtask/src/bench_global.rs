//! `cargo xtask bench global`: global rate limiting through real processes — Envoy (1 worker,
//! CPU 0) running rate_limit.wasm that asks edgewise-ratelimit (release build) counting in a
//! real Redis, beside a local rule and beside Envoy's native ratelimit filter on the same
//! service — written to `BENCHMARKS-global.md`.

use anyhow::{bail, Context, Result};
use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, RateLimitService, Redis, WasmFilter};
use serde_json::json;

use crate::bench::{build_modules, ensure_wrk, median, run_wrk, Sample};

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
            name: "plain proxy",
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
            name: "rate_limit, global rule, passing (a call per request)",
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
            name: "native ratelimit filter, passing (same service)",
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
    let path = envoy_harness::workspace_root().join("BENCHMARKS-global.md");
    std::fs::write(&path, report)?;
    println!("\nwrote {}", path.display());
    Ok(())
}
