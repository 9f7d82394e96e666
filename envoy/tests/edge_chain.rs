//! edge_chain.wasm (the four filters in one VM) in real Envoy 1.40 (2 workers), routing by
//! its weighted router's cluster header to two backends.

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, Route, WasmFilter};

const CHAIN: &str = r#"{
  "rate_limit": {"rules":[{"name":"per_user","key":"header:x-user","limit":5,"window":"1m"}]},
  "response_cache": {},
  "weighted_router": {"routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":1},{"cluster":"api-v2","weight":1}]}]},
  "circuit_breaker": {"upstream":"header:x-route-cluster","trip":{"consecutive_failures":5}}
}"#;

#[test]
fn the_composed_module_limits_caches_routes_and_guards_in_one_vm() {
    envoy_harness::build_edge_chain().unwrap();
    let backends: Vec<Backend> = ["api-v1", "api-v2"]
        .iter()
        .map(|n| Backend::start(n).unwrap())
        .collect();
    let mut config = EnvoyConfig::proxy_to(backends[0].addr, 2)
        .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
        .filter(WasmFilter::new("edge_chain", wasm_path("edge_chain"), CHAIN).vm_id("edgewise"));
    for b in &backends {
        config = config.cluster(&b.name, vec![b.addr]);
    }
    let envoy = Envoy::start(&config).unwrap();
    let origin = |b: &[Backend]| -> u64 { b.iter().map(|b| b.requests().unwrap()).sum() };

    // One user, one cacheable page: routed before the cache, and cached per route target
    // (at most one miss per cluster), the rest hits, then the limiter says no.
    let page = "/cache/page?cache_control=max-age%3D60&body=page";
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = envoy
            .request("GET", page, &[("x-user", "ann")], b"")
            .unwrap();
        statuses.push(r.status);
        if r.status == 200 {
            assert_eq!(r.text(), "page");
            assert!(r.header("ratelimit").is_some(), "{:?}", r.headers);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    let misses = origin(&backends);
    assert!(
        backends.iter().all(|b| b.requests().unwrap() <= 1),
        "one miss per cluster at most"
    );
    assert_eq!(
        envoy.stat("edgewise.response_cache.hits").unwrap(),
        Some(5 - misses as i64)
    );

    // 20 users, uncacheable: split between both clusters by the router.
    for n in 0..20 {
        let user = format!("user-{n}");
        let r = envoy
            .request(
                "GET",
                "/cache/x?cache_control=no-store",
                &[("x-user", &user)],
                b"",
            )
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let per_backend: Vec<u64> = backends.iter().map(|b| b.requests().unwrap()).collect();
    assert_eq!(per_backend.iter().sum::<u64>(), 20 + misses);
    assert!(
        per_backend.iter().all(|n| (8..=13).contains(n)),
        "1:1 split (± workers): {per_backend:?}"
    );
    assert_eq!(
        envoy
            .stat("edgewise.rate_limit.rule=.=per_user;.;denied")
            .unwrap(),
        Some(1)
    );
}

#[test]
fn the_example_config_is_valid() {
    envoy_harness::build_edge_chain().unwrap();
    envoy_harness::validate_example("edge-chain.yaml", &["edge_chain"])
        .unwrap_or_else(|e| panic!("{e:#}"));
}
