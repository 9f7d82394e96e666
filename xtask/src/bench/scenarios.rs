//! The benchmark scenarios: each an Envoy configuration, the path wrk requests and the status it must get.

use super::*;

/// Scenario ids: the names reports print and look scenarios up by.
pub(crate) const PLAIN_PROXY: &str = "plain proxy";
pub(crate) const DIRECT_RESPONSE_NO_UPSTREAM: &str = "direct_response (no upstream)";
pub(crate) const WASM_DO_NOTHING_FILTER: &str = "wasm do-nothing filter";
pub(crate) const WASM_FLOOR_RAW_ABI_REQUEST_HEADERS_ONLY: &str =
    "wasm floor (raw ABI, request headers only)";
pub(crate) const FLOOR_8_SINGLE_HEADER_READS: &str = "floor + 8 single-header reads";
pub(crate) const FLOOR_1_HEADER_MAP_READ: &str = "floor + 1 header-map read";
pub(crate) const RATE_LIMIT_PASSING_ALL_SDK_EXPORTS: &str = "rate_limit, passing (all SDK exports)";
pub(crate) const RATE_LIMIT_PASSING: &str = "rate_limit, passing";
pub(crate) const NATIVE_LOCAL_RATELIMIT_PASSING: &str = "native local_ratelimit, passing";
pub(crate) const RATE_LIMIT_DENYING: &str = "rate_limit, denying";
pub(crate) const NATIVE_LOCAL_RATELIMIT_DENYING: &str = "native local_ratelimit, denying";
pub(crate) const CIRCUIT_BREAKER_CLOSED: &str = "circuit_breaker, closed";
pub(crate) const CIRCUIT_BREAKER_OPEN_FALLBACK: &str = "circuit_breaker, open (fallback)";
pub(crate) const WEIGHTED_ROUTER_WRR_PFAIR_CYCLE: &str = "weighted_router (WRR, Pfair cycle)";
pub(crate) const WEIGHTED_ROUTER_WRR_SHARED_CURSOR: &str = "weighted_router (WRR, shared cursor)";
pub(crate) const NATIVE_WEIGHTED_CLUSTERS: &str = "native weighted_clusters";
pub(crate) const RESPONSE_CACHE_EVERY_REQUEST_A_HIT: &str = "response_cache, every request a hit";
pub(crate) const RESPONSE_CACHE_HIT_ALL_SDK_EXPORTS: &str = "response_cache hit (all SDK exports)";
pub(crate) const RESPONSE_CACHE_EVERY_REQUEST_A_MISS_NO_STORE: &str =
    "response_cache, every request a miss (no-store)";
pub(crate) const NATIVE_CACHE_FILTER_EVERY_REQUEST_A_HIT: &str =
    "native cache filter, every request a hit";
pub(crate) const NATIVE_OUTLIER_DETECTION_HEALTHY: &str = "native outlier detection (healthy)";
pub(crate) const ALL_FOUR_CHAINED_4_VMS: &str = "all four chained (4 VMs)";
pub(crate) const ALL_FOUR_COMPOSED_EDGE_CHAIN_1_VM: &str = "all four composed (edge_chain, 1 VM)";
pub(crate) const ALL_FOUR_COMPOSED_EDGE_CHAIN_METRICS_FLUSH_1S: &str =
    "all four composed (edge_chain, metrics_flush 1s)";
pub(crate) const RATE_LIMIT_PASSING_METRICS_FLUSH_1S: &str =
    "rate_limit, passing, metrics_flush 1s";
pub(crate) const ALL_FOUR_COMPOSED_EDGE_CHAIN_ALL_SDK_EXPORTS: &str =
    "all four composed (edge_chain, all SDK exports)";
pub(crate) const RATE_LIMIT_WEIGHTED_ROUTER_CIRCUIT_BREAKER: &str =
    "rate_limit + weighted_router + circuit_breaker";

pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) group: &'static str,
    pub(crate) config: EnvoyConfig,
    pub(crate) path: &'static str,
    /// Status every measured request must get (checked once before measuring).
    pub(crate) expect: u16,
}

pub(crate) fn wasm(name: &str, config: &str) -> WasmFilter {
    WasmFilter::new(name, wasm_path(name), config).vm_id("edgewise")
}

/// A filter configuration (a JSON object) with `"metrics_flush": "1s"` added.
pub(crate) fn with_flush(config: &str) -> String {
    format!(
        r#"{{"metrics_flush":"1s",{}"#,
        config.trim_start().trim_start_matches('{')
    )
}

/// The module as linked, before the post-link step removed its unused callbacks (every
/// proxy_on_* export of the SDK): the "before" of that step, measured in the same run.
pub(crate) fn wasm_all_exports(name: &str, config: &str) -> WasmFilter {
    WasmFilter::new(name, wasm_path(&format!("{name}_all_exports")), config).vm_id("edgewise")
}

/// Envoy with 1 worker pinned to CPU 0 in front of `backend`: every scenario's base.
pub(crate) fn pinned(backend: std::net::SocketAddr) -> EnvoyConfig {
    let mut c = EnvoyConfig::proxy_to(backend, 1);
    c.pin_cpu = Some(0);
    c
}

pub(crate) fn scenarios(backend: std::net::SocketAddr) -> Vec<Scenario> {
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
        Scenario { name: PLAIN_PROXY, group: "baseline", config: base(), path: "/status/200", expect: 200 },
        Scenario { name: DIRECT_RESPONSE_NO_UPSTREAM, group: "baseline", config: base().routes(vec![Route::direct("direct", "/", 200, "ok")]), path: "/", expect: 200 },
        Scenario { name: WASM_DO_NOTHING_FILTER, group: "baseline", config: base().filter(wasm("noop", "")), path: "/status/200", expect: 200 },
        Scenario { name: WASM_FLOOR_RAW_ABI_REQUEST_HEADERS_ONLY, group: "baseline", config: base().filter(wasm("floor", "")), path: "/status/200", expect: 200 },
        Scenario { name: FLOOR_8_SINGLE_HEADER_READS, group: "baseline", config: base().filter(wasm("floor", "headers:8")), path: "/status/200", expect: 200 },
        Scenario { name: FLOOR_1_HEADER_MAP_READ, group: "baseline", config: base().filter(wasm("floor", "pairs")), path: "/status/200", expect: 200 },
        Scenario { name: RATE_LIMIT_PASSING_ALL_SDK_EXPORTS, group: "rate limiting", config: base().filter(wasm_all_exports("rate_limit", limiter_pass)), path: "/status/200", expect: 200 },
        Scenario { name: RATE_LIMIT_PASSING, group: "rate limiting", config: base().filter(wasm("rate_limit", limiter_pass)), path: "/status/200", expect: 200 },
        Scenario { name: NATIVE_LOCAL_RATELIMIT_PASSING, group: "rate limiting", config: base().native_filter(local_ratelimit(1_000_000_000, "1s")), path: "/status/200", expect: 200 },
        Scenario {
            name: RATE_LIMIT_DENYING,
            group: "rate limiting",
            config: base().filter(wasm("rate_limit", r#"{"rules":[{"name":"none","limit":1,"window":"24h"}]}"#)),
            path: "/status/200",
            expect: 429,
        },
        Scenario { name: NATIVE_LOCAL_RATELIMIT_DENYING, group: "rate limiting", config: base().native_filter(local_ratelimit(1, "86400s")), path: "/status/200", expect: 429 },
        Scenario {
            name: CIRCUIT_BREAKER_CLOSED,
            group: "circuit breaking",
            config: base().route_name("payments").filter(wasm("circuit_breaker", r#"{"trip":{"consecutive_failures":5}}"#)),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            // 200 counts as a failure here, so the first response opens it for an hour.
            name: CIRCUIT_BREAKER_OPEN_FALLBACK,
            group: "circuit breaking",
            config: base().route_name("payments").filter(wasm("circuit_breaker", r#"{"failure":{"statuses":[200]},"trip":{"consecutive_failures":1},"open":{"duration":"1h"}}"#)),
            path: "/status/200",
            expect: 503,
        },
        Scenario {
            name: WEIGHTED_ROUTER_WRR_PFAIR_CYCLE,
            group: "weighted routing",
            config: three_clusters(base().routes(vec![Route::by_header("ours", "/", "x-route-cluster")]).filter(wasm("weighted_router", router))),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: WEIGHTED_ROUTER_WRR_SHARED_CURSOR,
            group: "weighted routing",
            config: three_clusters(
                base().routes(vec![Route::by_header("ours", "/", "x-route-cluster")]).filter(wasm("weighted_router", &router.replace(r#""name":"api","#, r#""name":"api","shared_cursor":true,"#))),
            ),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: NATIVE_WEIGHTED_CLUSTERS,
            group: "weighted routing",
            config: three_clusters(base().routes(vec![Route::native_weighted("native", "/", &[("api-v1", 70), ("api-v2", 20), ("api-v3", 10)])])),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: RESPONSE_CACHE_EVERY_REQUEST_A_HIT,
            group: "caching",
            config: base().filter(wasm("response_cache", "{}")),
            path: "/cache/bench?cache_control=max-age%3D86400&body=ok",
            expect: 200,
        },
        Scenario {
            name: RESPONSE_CACHE_HIT_ALL_SDK_EXPORTS,
            group: "caching",
            config: base().filter(wasm_all_exports("response_cache", "{}")),
            path: "/cache/bench?cache_control=max-age%3D86400&body=ok",
            expect: 200,
        },
        Scenario {
            name: RESPONSE_CACHE_EVERY_REQUEST_A_MISS_NO_STORE,
            group: "caching",
            config: base().filter(wasm("response_cache", "{}")),
            path: "/cache/miss?cache_control=no-store&body=ok",
            expect: 200,
        },
        Scenario {
            name: NATIVE_CACHE_FILTER_EVERY_REQUEST_A_HIT,
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
            name: NATIVE_OUTLIER_DETECTION_HEALTHY,
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
            name: ALL_FOUR_CHAINED_4_VMS,
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
            name: ALL_FOUR_COMPOSED_EDGE_CHAIN_1_VM,
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
            name: ALL_FOUR_COMPOSED_EDGE_CHAIN_METRICS_FLUSH_1S,
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
            name: RATE_LIMIT_PASSING_METRICS_FLUSH_1S,
            group: "rate limiting",
            config: base().filter(wasm("rate_limit", &with_flush(limiter_pass))),
            path: "/status/200",
            expect: 200,
        },
        Scenario {
            name: ALL_FOUR_COMPOSED_EDGE_CHAIN_ALL_SDK_EXPORTS,
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
            name: RATE_LIMIT_WEIGHTED_ROUTER_CIRCUIT_BREAKER,
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
        RATE_LIMIT_PASSING,
        CIRCUIT_BREAKER_CLOSED,
        WEIGHTED_ROUTER_WRR_PFAIR_CYCLE,
        RESPONSE_CACHE_EVERY_REQUEST_A_HIT,
        ALL_FOUR_COMPOSED_EDGE_CHAIN_1_VM,
    ];
    scenarios(backend)
        .into_iter()
        .filter(|s| CHOSEN.contains(&s.name))
        .map(|s| (s.name, s.config, s.path))
        .collect()
}
