//! Fleet purges through real processes: edgewise-ratelimit's control API on a real Redis,
//! two Envoys (2 workers each) whose caches poll its purge log. A purge by tag posted once
//! reaches both Envoys within about a second, and only the tagged pages miss.

use std::time::{Duration, Instant};

use envoy_harness::{
    http_request, redis_available, wasm_path, Backend, Envoy, EnvoyConfig, RateLimitService, Redis,
    WasmFilter,
};

const LIMITS: &str = "domain: edgewise\ndescriptors:\n  - key: rule\n    value: unused\n";
const TOKEN: &str = "a-control-token-for-tests";

#[test]
fn a_purge_by_tag_reaches_every_envoy_within_a_second() {
    assert!(redis_available(), "needs redis-server (cargo xtask setup)");
    envoy_harness::build_wasm(&["response-cache"]).unwrap();
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start_with_control(LIMITS, &redis.url(), TOKEN).unwrap();
    let backend = Backend::start("origin").unwrap();
    let cache = format!(r#"{{"fleet":{{"cluster":"control","token":"{TOKEN}","poll":"200ms"}}}}"#);
    let start = || {
        Envoy::start(
            &EnvoyConfig::proxy_to(backend.addr, 2)
                .cluster("control", vec![service.http])
                .filter(WasmFilter::new(
                    "response_cache",
                    wasm_path("response_cache"),
                    &cache,
                )),
        )
        .unwrap()
    };
    let envoys = [start(), start()];
    let pages = [
        "/cache/p/1?cache_control=max-age%3D600&header=surrogate-key%3Aproduct-1%20listing",
        "/cache/p/2?cache_control=max-age%3D600&header=surrogate-key%3Aproduct-2%20listing",
    ];
    let origin = || backend.requests().unwrap();
    // Each Envoy has polled the log once (it follows the log from its end), then fills both
    // pages.
    let first_polls = Instant::now();
    for envoy in &envoys {
        while envoy
            .stat("edgewise.response_cache.fleet_polls")
            .unwrap()
            .unwrap_or(0)
            < 1
        {
            assert!(first_polls.elapsed() < Duration::from_secs(10), "no poll");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for envoy in &envoys {
        for page in pages {
            assert_eq!(envoy.get(page).unwrap().status, 200);
        }
    }
    let filled = origin();
    assert_eq!(filled, 4);
    let post = |token: &str, body: &str| {
        let auth = format!("Bearer {token}");
        http_request(
            service.http,
            "POST",
            "/v1/purge",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(
        post("wrong-token-wrong-token", r#"{"tags":["product-1"]}"#).status,
        401
    );
    assert_eq!(post(TOKEN, r#"{"tagz":["product-1"]}"#).status, 400);
    let posted = Instant::now();
    let answer = post(TOKEN, r#"{"tags":["product-1"]}"#);
    assert_eq!(answer.status, 200, "{}", answer.text());
    // Until both Envoys miss /p/1 (each miss refills it there): a wide, stated tolerance.
    let mut missed = [false, false];
    while missed != [true, true] {
        assert!(
            posted.elapsed() < Duration::from_secs(5),
            "the purge did not reach both Envoys: {missed:?}"
        );
        for (i, envoy) in envoys.iter().enumerate() {
            if !missed[i] {
                let r = envoy.get(pages[0]).unwrap();
                missed[i] = r
                    .header("cache-status")
                    .is_some_and(|s| s.contains("fwd=miss"));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reached = posted.elapsed();
    println!("fleet purge: both Envoys missed the tagged page {reached:?} after the POST");
    assert!(reached < Duration::from_secs(2), "took {reached:?}");
    assert_eq!(
        origin(),
        filled + 2,
        "one miss per Envoy for the tagged page"
    );
    for envoy in &envoys {
        assert!(envoy
            .get(pages[1])
            .unwrap()
            .header("cache-status")
            .is_some_and(|s| s.contains("hit")));
    }
    assert_eq!(
        origin(),
        filled + 2,
        "the untagged page stayed cached everywhere"
    );
    let metrics = http_request(service.http, "GET", "/metrics", &[], b"")
        .unwrap()
        .text();
    assert!(
        metrics.contains("edgewise_control_purges_total 1"),
        "{metrics}"
    );
}

/// Operator controls through real processes: `POST /v1/breaker` forces an upstream's breaker
/// open on an Envoy that polls the control service (every 200 ms) — its requests get the
/// fallback without reaching the backend — and `auto` gives it back.
#[test]
fn a_forced_breaker_state_reaches_envoy_and_is_given_back() {
    assert!(redis_available(), "needs redis-server (cargo xtask setup)");
    envoy_harness::build_wasm(&["circuit-breaker"]).unwrap();
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start_with_control(LIMITS, &redis.url(), TOKEN).unwrap();
    let backend = Backend::start("payments").unwrap();
    let breaker = format!(
        r#"{{"upstream":"header:x-cluster","stats_upstreams":["backend"],
            "control":{{"cluster":"control","token":"{TOKEN}","poll":"200ms"}}}}"#
    );
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2)
            .cluster("control", vec![service.http])
            .filter(WasmFilter::new(
                "circuit_breaker",
                wasm_path("circuit_breaker"),
                &breaker,
            )),
    )
    .unwrap();
    let get = || {
        envoy
            .request("GET", "/status/200", &[("x-cluster", "backend")], b"")
            .unwrap()
    };
    assert_eq!(get().status, 200);
    let force = |state: &str| {
        let auth = format!("Bearer {TOKEN}");
        let body = format!(r#"{{"upstream":"backend","state":"{state}","by":"test"}}"#);
        http_request(
            service.http,
            "POST",
            "/v1/breaker",
            &[("authorization", auth.as_str())],
            body.as_bytes(),
        )
        .unwrap()
        .status
    };
    assert_eq!(force("sideways"), 400);
    assert_eq!(force("open"), 200);
    let forced = Instant::now();
    while get().header("x-edgewise-circuit").is_none() {
        assert!(
            forced.elapsed() < Duration::from_secs(5),
            "never forced open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = forced.elapsed();
    let before = backend.requests().unwrap();
    for _ in 0..10 {
        assert_eq!(get().status, 503);
    }
    assert_eq!(
        backend.requests().unwrap(),
        before,
        "nothing reached the backend"
    );
    assert_eq!(force("auto"), 200);
    let released = Instant::now();
    while get().header("x-edgewise-circuit").is_some() {
        assert!(
            released.elapsed() < Duration::from_secs(5),
            "never given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "operator control: forced open {took:?} after the POST, automatic again {:?} after",
        released.elapsed()
    );
    assert!(took < Duration::from_secs(2));
}
