//! weighted_router.wasm in real Envoy 1.40 (2 workers), three backends as three clusters,
//! side by side with Envoy's native weighted_clusters; failover with the circuit breaker
//! in the same filter chain.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, Route, WasmFilter};

fn build() {
    envoy_harness::build_wasm(&["weighted-router", "circuit-breaker"]).unwrap();
}

const ROUTER: &str = r#"{"cluster_header":"x-route-cluster","routes":[{"name":"api","match":{"path_prefix":"/api/"},
    "targets":[{"cluster":"api-v1","weight":70},{"cluster":"api-v2","weight":20},{"cluster":"api-v3","weight":10}],
    "overrides":[{"header":"x-canary","equals":"always","cluster":"api-v2"}], "failover": true},
  {"name":"sticky","match":{"path_prefix":"/sticky/"},"strategy":"hash","hash_on":"header:x-user",
    "targets":[{"cluster":"api-v1","weight":70},{"cluster":"api-v2","weight":20},{"cluster":"api-v3","weight":10}]}]}"#;

struct Cluster {
    backends: Vec<Backend>,
    envoy: Envoy,
}

fn cluster(breaker: Option<&str>) -> Cluster {
    build();
    let backends: Vec<Backend> = ["api-v1", "api-v2", "api-v3"]
        .iter()
        .map(|n| Backend::start(n).unwrap())
        .collect();
    let mut config = EnvoyConfig::proxy_to(backends[0].addr, 2)
        .routes(vec![
            Route::native_weighted(
                "native",
                "/native/",
                &[("api-v1", 70), ("api-v2", 20), ("api-v3", 10)],
            ),
            Route::by_header("ours", "/", "x-route-cluster"),
        ])
        .filter(
            WasmFilter::new("weighted_router", wasm_path("weighted_router"), ROUTER)
                .vm_id("edgewise"),
        );
    if let Some(breaker) = breaker {
        config = config.filter(
            WasmFilter::new("circuit_breaker", wasm_path("circuit_breaker"), breaker)
                .vm_id("edgewise"),
        );
    }
    for b in &backends {
        config = config.cluster(&b.name, vec![b.addr]);
    }
    let envoy = Envoy::start(&config).unwrap();
    Cluster { backends, envoy }
}

fn counts(c: &Cluster) -> Vec<i64> {
    c.backends
        .iter()
        .map(|b| b.requests().unwrap() as i64)
        .collect()
}

#[test]
fn a_70_20_10_split_counted_at_the_backends_beside_envoys_native_split() {
    let c = cluster(None);
    let n = 1000;
    for _ in 0..n {
        assert_eq!(c.envoy.get("/api/x").unwrap().status, 200);
    }
    let ours = counts(&c);
    for b in &c.backends {
        b.reset_counters().unwrap();
    }
    for _ in 0..n {
        assert_eq!(c.envoy.get("/native/x").unwrap().status, 200);
    }
    let native = counts(&c);
    let deviation = |got: &[i64]| -> f64 {
        got.iter()
            .zip([0.7, 0.2, 0.1])
            .map(|(g, s)| (*g as f64 - n as f64 * s).abs())
            .fold(0.0, f64::max)
    };
    println!("N={n}: ours {ours:?} (max deviation {}), Envoy weighted_clusters {native:?} (max deviation {})", deviation(&ours), deviation(&native));
    // Each of the 2 workers is within 1 of its share: overall within 2.
    assert!(deviation(&ours) <= 2.0, "{ours:?}");
    assert_eq!(native.iter().sum::<i64>(), n as i64);
}

#[test]
fn sticky_users_and_the_override_header() {
    let c = cluster(None);
    for user in 0..40 {
        let user = format!("user-{user}");
        let sides: Vec<String> = (0..4)
            .map(|_| {
                c.envoy
                    .request("GET", "/sticky/x", &[("x-user", &user)], b"")
                    .unwrap()
                    .header("x-backend-name")
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(sides.iter().all(|s| *s == sides[0]), "{user}: {sides:?}");
    }
    for _ in 0..10 {
        let r = c
            .envoy
            .request("GET", "/api/x", &[("x-canary", "always")], b"")
            .unwrap();
        assert_eq!(r.header("x-backend-name"), Some("api-v2"));
    }
    assert_eq!(
        c.envoy
            .stat("edgewise.weighted_router.route=.=api;.;overrides")
            .unwrap(),
        Some(10)
    );
}

#[test]
fn failover_when_a_backends_breaker_opens_and_return_after_it_closes() {
    let breaker = r#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":3},"open":{"duration":"1s"},"half_open":{"probes":1}}"#;
    let c = cluster(Some(breaker));
    c.backends[1]
        .set_fault(r#"{"mode":"fail","ratio":1.0,"status":503}"#)
        .unwrap();
    let mut failed = 0;
    for _ in 0..200 {
        if c.envoy.get("/api/x").unwrap().status != 200 {
            failed += 1;
        }
    }
    // Only the requests that tripped the breaker failed; then api-v2's share went elsewhere.
    assert_eq!(failed, 3, "client errors beyond the trip count");
    assert_eq!(
        c.backends[1].requests().unwrap(),
        3,
        "api-v2 received only the tripping requests"
    );
    assert!(
        c.envoy
            .stat("edgewise.weighted_router.route=.=api;.;failovers")
            .unwrap()
            .unwrap()
            > 0
    );
    // Healed: once the open duration is over, traffic returns to api-v2 and the probe closes it.
    c.backends[1].set_fault(r#"{"mode":"off"}"#).unwrap();
    let started = Instant::now();
    while c.backends[1].requests().unwrap() == 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "api-v2 never came back"
        );
        c.envoy.get("/api/x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for b in &c.backends {
        b.reset_counters().unwrap();
    }
    let statuses: BTreeMap<u16, usize> = (0..100)
        .map(|_| c.envoy.get("/api/x").unwrap().status)
        .fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s).or_insert(0) += 1;
            m
        });
    assert_eq!(statuses.get(&200), Some(&100), "{statuses:?}");
    let back = counts(&c);
    assert!(
        (back[1] - 20).abs() <= 2,
        "api-v2 has its share again: {back:?}"
    );
}

#[test]
fn the_example_envoy_config_is_valid() {
    build();
    envoy_harness::validate_example(
        "weighted-router.yaml",
        &["weighted_router", "circuit_breaker"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
