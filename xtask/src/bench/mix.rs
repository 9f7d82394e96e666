//! `cargo xtask bench mix`: an edge's day rather than one URL — 85% of requests to
//! cacheable pages (Zipf over 10,000 URLs, against a cache holding half of them), 15%
//! dynamic, 2,000 clients with per-client limits (ten heavy ones over theirs), weighted
//! across two clusters — through edge_chain (all four composed), through Envoy's native
//! chain doing the nearest job, and through the plain proxy. Writes `BENCHMARKS-mix.md`.

use anyhow::{bail, Context, Result};
use envoy_harness::{
    target_dir, wasm_path, workspace_root, Backend, Envoy, EnvoyConfig, Route, WasmFilter,
};
use serde_json::json;

use crate::bench::{build_modules, ensure_wrk, median, run_wrk_with, Sample, PLAIN_PROXY};

/// The request generator (wrk's Lua): a seeded stream, the same for every scenario.
const MIX_LUA: &str = r#"
local urls, users = 10000, 2000
local cdf = {}
init = function(args)
  local sum = 0
  for i = 1, urls do sum = sum + 1 / i end
  local acc = 0
  for i = 1, urls do acc = acc + (1 / i) / sum; cdf[i] = acc end
  math.randomseed(20261204)
end
-- Zipf (s = 1) over the page numbers: binary search of the cumulative weights.
local function page()
  local r = math.random()
  local lo, hi = 1, urls
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then lo = mid + 1 else hi = mid end
  end
  return lo
end
request = function()
  -- Ten heavy clients send 5% of the traffic (over their limit); 1,990 share the rest.
  local user
  if math.random() < 0.05 then user = math.random(1, 10) else user = math.random(11, users) end
  local path
  if math.random() < 0.85 then
    path = "/cache/p" .. page() .. "?cache_control=max-age%3D3600&body=page"
  else
    path = "/cache/d" .. math.random(1, 1000000000) .. "?cache_control=no-store&body=dynamic"
  end
  return wrk.format("GET", path, { ["x-user"] = "u" .. user })
end
"#;

/// The row BENCHMARKS.md's targets look up.
pub(crate) const MIX_EDGE_CHAIN: &str = "edge_chain (all four composed, 1 VM)";

struct Scenario {
    name: &'static str,
    config: EnvoyConfig,
    /// What this chain does of the mix's job, for the report.
    note: &'static str,
}

pub fn run() -> Result<()> {
    ensure_wrk()?;
    println!("\n==> building: .wasm (release) and the optimized backend");
    build_modules()?;
    let backend = Backend::start_for_benchmark("bench-origin", 1)?;
    let script = target_dir().join("bench").join("mix.lua");
    std::fs::create_dir_all(script.parent().unwrap_or(&target_dir()))?;
    std::fs::write(&script, MIX_LUA)?;
    let base = || {
        let mut c = EnvoyConfig::proxy_to(backend.addr, 1);
        c.pin_cpu = Some(0);
        c
    };
    let two_clusters = |c: EnvoyConfig| {
        c.cluster("api-v1", vec![backend.addr])
            .cluster("api-v2", vec![backend.addr])
    };
    let chain = json!({
        "rate_limit": { "rules": [ { "name": "per-client", "key": "header:x-user",
                                     "limit": 20, "window": "1s", "max_keys": 4096 } ] },
        "response_cache": { "max_entries": 5000 },
        "weighted_router": { "routes": [ { "name": "api", "targets": [
            { "cluster": "api-v1", "weight": 70 }, { "cluster": "api-v2", "weight": 30 } ] } ] },
        "circuit_breaker": { "upstream": "header:x-route-cluster",
                             "trip": { "consecutive_failures": 5 } }
    });
    let native_rate_limit = json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "native_rl",
            "token_bucket": { "max_tokens": 1000000000u64, "tokens_per_fill": 1000000000u64, "fill_interval": "1s" },
            "filter_enabled": { "runtime_key": "rl_enabled", "default_value": { "numerator": 100, "denominator": "HUNDRED" } },
            "filter_enforced": { "runtime_key": "rl_enforced", "default_value": { "numerator": 100, "denominator": "HUNDRED" } }
        }
    });
    let native_cache = json!({
        "name": "envoy.filters.http.cache",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig" }
        }
    });
    let scenarios = vec![
        Scenario {
            name: PLAIN_PROXY,
            config: base(),
            note: "no limits, no cache, one cluster",
        },
        Scenario {
            name: MIX_EDGE_CHAIN,
            config: two_clusters(
                base()
                    .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
                    .filter(
                        WasmFilter::new("edge_chain", wasm_path("edge_chain"), &chain.to_string())
                            .vm_id("edgewise"),
                    ),
            ),
            note: "20/s per x-user (10 heavy users refused), a 5,000-entry cache, 70/30 split, a breaker per cluster",
        },
        Scenario {
            name: "Envoy's native chain",
            config: {
                let mut c = two_clusters(
                    base()
                        .routes(vec![Route::native_weighted(
                            "native",
                            "/",
                            &[("api-v1", 70), ("api-v2", 30)],
                        )])
                        .native_filter(native_rate_limit)
                        .native_filter(native_cache),
                );
                c.cluster_options = Some(json!({ "outlier_detection": {
                    "consecutive_5xx": 5, "interval": "1s", "base_ejection_time": "30s" } }));
                c
            },
            note: "local_ratelimit (one bucket: per-client buckets need each value configured), the simple cache (unbounded: holds all 10,000), weighted_clusters 70/30, outlier detection",
        },
    ];
    let mut envoys = Vec::new();
    for s in &scenarios {
        let envoy = Envoy::start(&s.config).with_context(|| format!("scenario {}", s.name))?;
        let got = envoy
            .get("/cache/p1?cache_control=max-age%3D3600&body=page")?
            .status;
        if got != 200 {
            bail!("scenario {:?}: status {got}", s.name);
        }
        envoys.push(envoy);
    }
    // Warm-up long enough to fill the caches with the popular pages.
    println!("\n==> warm-up (5 s each)");
    for e in &envoys {
        run_wrk_with(e, "/", 5, Some(&script))?;
    }
    let (rounds, seconds) = (3, 8);
    let mut samples: Vec<Vec<(Sample, u64)>> = vec![Vec::new(); scenarios.len()];
    for round in 1..=rounds {
        println!("\n==> round {round}/{rounds} ({seconds} s per scenario)");
        for (i, (s, e)) in scenarios.iter().zip(&envoys).enumerate() {
            let (sample, refused) = run_wrk_with(e, "/", seconds, Some(&script))?;
            println!(
                "  {:<40} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  non-2xx {refused}",
                s.name, sample.rps, sample.p50_ms, sample.p99_ms
            );
            samples[i].push((sample, refused));
        }
    }
    let origin_seen = backend_requests(&backend)?;
    let hits: Vec<String> = envoys
        .iter()
        .map(|e| {
            let stats = e.stats().unwrap_or_default();
            let find = |suffix: &str| {
                stats
                    .iter()
                    .filter(|(k, _)| k.contains("response_cache") && k.ends_with(suffix))
                    .map(|(_, v)| *v)
                    .sum::<i64>()
            };
            let (hit, miss) = (find("hits"), find("misses"));
            if hit + miss == 0 {
                "—".to_string()
            } else {
                format!("{:.0}%", 100.0 * hit as f64 / (hit + miss) as f64)
            }
        })
        .collect();
    let medians: Vec<(Sample, u64)> = samples
        .into_iter()
        .map(|runs| {
            let refused = {
                let mut r: Vec<u64> = runs.iter().map(|(_, n)| *n).collect();
                r.sort_unstable();
                r[r.len() / 2]
            };
            (median(runs.into_iter().map(|(s, _)| s).collect()), refused)
        })
        .collect();
    let plain = medians[0].0.rps.max(1.0);
    let native = medians[2].0.rps.max(1.0);
    let mut md = format!(
        "# A realistic edge mix: measured\n\n\
         Written by `cargo xtask bench mix`: Envoy 1.40.0, 1 worker pinned to CPU 0; wrk -t1 \
         -c32 on CPU 1 running `mix.lua` (seeded): 85% of requests to cacheable pages (Zipf, \
         s = 1, over 10,000 URLs; `max-age=3600`), 15% to dynamic pages (`no-store`, all \
         distinct), 2,000 clients by `x-user` of which ten heavy ones send 5% of the traffic \
         (over a 20/s limit); 5 s warm-up, then 3 rounds of {seconds} s, scenarios \
         interleaved, median round. The backend (CPU 1, with wrk) answers every miss.\n\n\
         | Scenario | req/s | × plain proxy | × native chain | p50 ms | p99 ms | non-2xx per round | cache hits | what it does |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|\n"
    );
    for (i, s) in scenarios.iter().enumerate() {
        let (m, refused) = medians[i];
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {refused} | {} | {} |\n",
            s.name,
            m.rps,
            m.rps / plain,
            m.rps / native,
            m.p50_ms,
            m.p99_ms,
            hits[i],
            s.note
        ));
    }
    md.push_str(&format!(
        "\nThe origin answered {origin_seen} requests in the whole run (every scenario's \
         misses and the plain proxy's every request). Target (issue 25): the mix through \
         edge_chain ≥ 0.75× the native chain — measured {:.2}.\n",
        medians[1].0.rps / native
    ));
    let path = workspace_root().join("BENCHMARKS-mix.md");
    std::fs::write(&path, md)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// Requests the backend answered (its /stats).
fn backend_requests(backend: &Backend) -> Result<u64> {
    let r = envoy_harness::http_request(backend.addr, "GET", "/stats", &[], b"")?;
    let stats: serde_json::Value = serde_json::from_str(&r.text())?;
    Ok(stats["requests"].as_u64().unwrap_or(0))
}
