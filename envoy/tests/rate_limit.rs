//! rate_limit.wasm in real Envoy 1.40 (2 workers) in front of our backend.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, WasmFilter};

fn build() {
    envoy_harness::build_wasm(&["rate-limit"]).unwrap();
}

fn start(config: &str) -> (Backend, Envoy) {
    build();
    let backend = Backend::start("rl-backend").unwrap();
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "rate_limit",
            wasm_path("rate_limit"),
            config,
        )),
    )
    .unwrap();
    (backend, envoy)
}

/// `threads` clients send requests (each on its own connection) until `total` are sent;
/// returns the count per (key, status).
fn hammer(
    envoy: &Envoy,
    threads: usize,
    total: usize,
    key_of: impl Fn(usize) -> String + Sync,
) -> BTreeMap<(String, u16), usize> {
    let next = AtomicUsize::new(0);
    let counts = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    break;
                }
                let key = key_of(n);
                let status = envoy
                    .request("GET", "/status/200", &[("x-api-key", &key)], b"")
                    .map(|r| r.status)
                    .unwrap_or(0);
                *counts.lock().unwrap().entry((key, status)).or_insert(0) += 1;
            });
        }
    });
    counts.into_inner().unwrap()
}

#[test]
fn exact_admitted_counts_per_key_under_64_concurrent_connections() {
    let (backend, envoy) = start(
        r#"{"rules":[{"name":"per-key","key":"header:x-api-key","limit":50,"window":"1h"}]}"#,
    );
    let counts = hammer(&envoy, 64, 900, |n| format!("key-{}", n % 3));
    for key in ["key-0", "key-1", "key-2"] {
        assert_eq!(
            counts.get(&(key.to_string(), 200)),
            Some(&50),
            "{key}: {counts:?}"
        );
        assert_eq!(
            counts.get(&(key.to_string(), 429)),
            Some(&250),
            "{key}: {counts:?}"
        );
    }
    assert_eq!(
        backend.requests().unwrap(),
        150,
        "denied requests never reached the backend"
    );
    assert_eq!(
        envoy
            .stat("edgewise.rate_limit.rule=.=per-key;.;allowed")
            .unwrap(),
        Some(150)
    );
    assert_eq!(
        envoy
            .stat("edgewise.rate_limit.rule=.=per-key;.;denied")
            .unwrap(),
        Some(750)
    );
}

#[test]
fn admitted_rate_stays_within_2_percent_of_the_configured_rate_under_overload() {
    let (backend, envoy) =
        start(r#"{"rules":[{"name":"global","limit":200,"window":"1s","burst":20}]}"#);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3);
    let admitted = AtomicUsize::new(0);
    let offered = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..64 {
            scope.spawn(|| {
                while Instant::now() < deadline {
                    offered.fetch_add(1, Ordering::SeqCst);
                    if envoy
                        .get("/status/200")
                        .map(|r| r.status == 200)
                        .unwrap_or(false)
                    {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::SeqCst) as f64;
    let offered = offered.load(Ordering::SeqCst) as f64;
    let ceiling = 20.0 + 200.0 * elapsed;
    println!("offered {offered}, admitted {admitted} in {elapsed:.2}s; ceiling {ceiling:.0}");
    assert!(
        offered > 1.5 * ceiling,
        "offered load must exceed the limit for this test to mean anything"
    );
    // The limiter measures time on Envoy's wall clock, this test on its monotonic clock:
    // two clocks that can disagree by a few ms over the run (seen: 624 admitted against a
    // ceiling of 623.6 on this one), so the bound carries the stated 2% as the lower one
    // does. A limiter admitting per worker instead of per Envoy would be near 2× the ceiling.
    assert!(
        admitted <= 1.02 * ceiling + 1.0,
        "admitted {admitted} > 102% of burst + rate × elapsed = {ceiling:.1}"
    );
    // Requests in flight at the deadline are still counted; the window we measure is wall
    // time of the whole run, so the tolerance is the stated 2% plus one interval.
    assert!(
        admitted >= 0.98 * ceiling - 1.0,
        "admitted {admitted} < 98% of {ceiling:.1}"
    );
    assert_eq!(backend.requests().unwrap() as f64, admitted);
}

#[test]
fn retry_after_is_honoured_and_headers_reach_the_client() {
    let (_backend, envoy) = start(r#"{"rules":[{"name":"slow","limit":1,"window":"1s"}]}"#);
    let first = envoy.get("/status/200").unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy"), Some("\"slow\";q=1;w=1"));
    let denied = envoy.get("/status/200").unwrap();
    assert_eq!(denied.status, 429);
    assert_eq!(denied.text(), "rate limited\n");
    let retry: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 1);
    // Honouring Retry-After is the behaviour under test: wait exactly what it says.
    std::thread::sleep(Duration::from_secs(retry));
    assert_eq!(
        envoy.get("/status/200").unwrap().status,
        200,
        "admitted at Retry-After"
    );
}

#[test]
fn shadow_mode_passes_everything_with_headers() {
    let (backend, envoy) =
        start(r#"{"mode":"shadow","rules":[{"name":"s","limit":2,"window":"1h"}]}"#);
    for _ in 0..6 {
        let response = envoy.get("/status/200").unwrap();
        assert_eq!(response.status, 200);
        assert!(response.header("ratelimit").is_some());
    }
    assert_eq!(backend.requests().unwrap(), 6);
    assert_eq!(
        envoy
            .stat("edgewise.rate_limit.rule=.=s;.;shadow_denied")
            .unwrap(),
        Some(4)
    );
}

/// Costs charged after the response, through real Envoy (2 workers): the backend reports
/// usage in a response header (150 tokens put the key 50 into debt: refused next, on
/// either worker) and failed logins are counted by status (successes are free).
#[test]
fn responses_charge_usage_and_failures_after_admission() {
    let (backend, envoy) = start(
        r#"{"rules":[
            {"name":"tokens","key":"header:x-user","algorithm":"fixed_window","limit":100,"window":"1h",
             "match":{"path_prefix":"/cache/llm"},"charge":{"response_header":"x-usage-tokens"}},
            {"name":"logins","key":"header:x-login","algorithm":"fixed_window","limit":3,"window":"1h",
             "match":{"path_prefix":"/cache/login"},"charge":{"statuses":["4xx"]}}]}"#,
    );
    let get = |path: &str, header: (&str, &str)| {
        envoy.request("GET", path, &[header], b"").unwrap().status
    };
    let llm = "/cache/llm?header=x-usage-tokens%3A150&body=answer";
    assert_eq!(get(llm, ("x-user", "alice")), 200);
    let after: Vec<u16> = (0..4).map(|_| get(llm, ("x-user", "alice"))).collect();
    assert_eq!(after, [429; 4], "in debt on both workers");
    assert_eq!(get(llm, ("x-user", "bob")), 200, "another key");
    let ok = "/cache/login?body=welcome";
    let failed = "/cache/login?status=401&body=no";
    for _ in 0..6 {
        assert_eq!(get(ok, ("x-login", "dave")), 200);
    }
    for _ in 0..3 {
        assert_eq!(get(failed, ("x-login", "dave")), 401);
    }
    assert_eq!(
        get(ok, ("x-login", "dave")),
        429,
        "three failures use the limit up"
    );
    let stats = envoy.stats().unwrap();
    let charged = |rule: &str| {
        stats
            .get(&format!(
                "wasmcustom.edgewise.rate_limit.rule=.={rule};.;charged"
            ))
            .copied()
    };
    // Counters flush on a tick: poll for the totals.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = (charged("tokens"), charged("logins"));
    while seen != (Some(300), Some(3)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let stats = envoy.stats().unwrap();
        let get = |rule: &str| {
            stats
                .get(&format!(
                    "wasmcustom.edgewise.rate_limit.rule=.={rule};.;charged"
                ))
                .copied()
        };
        seen = (get("tokens"), get("logins"));
    }
    assert_eq!(seen, (Some(300), Some(3)), "units charged");
    assert_eq!(
        backend.requests().unwrap(),
        2 + 9,
        "refused requests never reached the backend"
    );
}

#[test]
fn envoy_refuses_an_invalid_rate_limit_configuration() {
    build();
    let backend = Backend::start("b").unwrap();
    let config = EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
        "rate_limit",
        wasm_path("rate_limit"),
        r#"{"rules":[{"name":"x","limit":0,"window":"1s"}]}"#,
    ));
    let error = match Envoy::start(&config) {
        Ok(_) => panic!("Envoy started with limit 0"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("invalid configuration at `rules[0].limit`"),
        "{error}"
    );
}

#[test]
fn the_example_envoy_config_is_valid() {
    build();
    envoy_harness::validate_example("rate-limit.yaml", &["rate_limit"])
        .unwrap_or_else(|e| panic!("{e}"));
}
