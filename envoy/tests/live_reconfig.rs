//! Live reconfiguration in real Envoy 1.40 (2 workers): the listener comes from a watched
//! LDS file (`path_config_source`, no control plane), and a rewrite of that file changes all
//! four filters' configurations under continuous traffic. No request fails, rate-limit
//! budgets and cache entries survive, the new weights take effect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, Route, WasmFilter};

/// The four filters, in the edge order, with the deny body, the cache's name and the
/// router's weights given.
fn config(
    v1: &Backend,
    v2: &Backend,
    deny: &str,
    cache_name: &str,
    weights: (u32, u32),
) -> EnvoyConfig {
    let rate_limit = format!(
        r#"{{"rules":[{{"name":"per-user","match":{{"path_prefix":"/limited/"}},"key":"header:x-user","limit":10,"window":"1h"}}],"deny":{{"body":"{deny}"}}}}"#
    );
    let cache = format!(r#"{{"cache_status":"{cache_name}"}}"#);
    let router = format!(
        r#"{{"routes":[{{"name":"api","targets":[{{"cluster":"api-v1","weight":{}}},{{"cluster":"api-v2","weight":{}}}]}}]}}"#,
        weights.0, weights.1
    );
    let breaker = r#"{"upstream":"header:x-route-cluster","stats_upstreams":["api-v1","api-v2"],"trip":{"consecutive_failures":5}}"#;
    let filter = |name: &str, module: &str, json: &str| {
        WasmFilter::new(name, wasm_path(module), json).vm_id("edgewise")
    };
    EnvoyConfig::proxy_to(v1.addr, 2)
        .routes(vec![Route::by_header("api", "/", "x-route-cluster")])
        .cluster("api-v1", vec![v1.addr])
        .cluster("api-v2", vec![v2.addr])
        .filter(filter("rate_limit", "rate_limit", &rate_limit))
        .filter(filter("response_cache", "response_cache", &cache))
        .filter(filter("weighted_router", "weighted_router", &router))
        .filter(filter("circuit_breaker", "circuit_breaker", breaker))
        .with_lds()
}

#[test]
fn a_listener_update_changes_every_filter_under_traffic_and_keeps_their_state() {
    envoy_harness::build_wasm(&[
        "rate-limit",
        "response-cache",
        "weighted-router",
        "circuit-breaker",
    ])
    .unwrap();
    let v1 = Backend::start("api-v1").unwrap();
    let v2 = Backend::start("api-v2").unwrap();
    let before = config(&v1, &v2, "slow down\\n", "edge", (100, 0));
    let envoy = Envoy::start(&before).unwrap();
    let ann = |envoy: &Envoy| {
        envoy
            .request("GET", "/limited/x", &[("x-user", "ann")], b"")
            .unwrap()
    };
    for _ in 0..6 {
        assert_eq!(ann(&envoy).status, 200);
    }
    let cached = "/cache/page?cache_control=max-age%3D600";
    let first = envoy.get(cached).unwrap();
    assert_eq!(first.header("cache-status"), Some("edge; fwd=miss; stored"));

    // Continuous traffic on both workers while the listener changes.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = envoy.listener;
    let traffic: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = envoy_harness::http_request(addr, "GET", "/echo/live", &[], b"");
                    statuses.push(r.map(|r| r.status).unwrap_or(0));
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut after = config(&v1, &v2, "changed\\n", "edge2", (0, 100));
    after.lds_port = before.lds_port; // the same listener (name and address), new filters
    envoy
        .update_listener(&after, Duration::from_secs(20))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500)); // traffic on the new listener too

    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = traffic
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let failed = statuses.iter().filter(|s| **s != 200).count();
    let mut by_status = std::collections::BTreeMap::new();
    for s in &statuses {
        *by_status.entry(*s).or_insert(0) += 1;
    }
    let first_failure = statuses.iter().position(|s| *s != 200);
    println!(
        "listener update under traffic: {} requests, {failed} not 200: {by_status:?}, first failure at {first_failure:?}",
        statuses.len()
    );
    assert!(statuses.len() > 20, "traffic ran: {}", statuses.len());
    assert_eq!(failed, 0, "no request fails during the change");

    // The rate-limit budget survived: 4 of 10 left, then the new deny body.
    let allowed = (0..6).filter(|_| ann(&envoy).status == 200).count();
    assert_eq!(allowed, 4, "6 of 10 were spent before the change");
    let denied = ann(&envoy);
    assert_eq!((denied.status, denied.text().as_str()), (429, "changed\n"));
    // The cache entry survived (a hit under the new cache name; no origin saw it).
    let origins = (v1.requests().unwrap(), v2.requests().unwrap());
    let hit = envoy.get(cached).unwrap();
    assert_eq!((v1.requests().unwrap(), v2.requests().unwrap()), origins);
    assert!(
        hit.header("cache-status")
            .unwrap_or_default()
            .starts_with("edge2; hit"),
        "{:?}",
        hit.headers
    );
    // The new weights: everything to api-v2.
    for _ in 0..10 {
        let r = envoy.get("/echo/after").unwrap();
        assert_eq!(r.header("x-backend-name"), Some("api-v2"));
    }
}
