//! Global rate limiting through real processes: two Envoys (2 workers each) running
//! rate_limit.wasm with a global rule, our rate limit service, a real Redis. One limit holds
//! across both Envoys exactly; the service's or Redis's failure applies the rule's failure
//! mode within its timeout, and limits hold again once they are back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_harness::{
    http_request, redis_available, wasm_path, Backend, Envoy, EnvoyConfig, RateLimitService, Redis,
    WasmFilter,
};

const LIMITS: &str = r#"
domain: edgewise
# The lease test's rule gives its own limit (a descriptor override): allowed here.
overrides: true
descriptors:
  - key: rule
    value: api
    rate_limit: { unit: hour, requests_per_unit: 100 }
  - key: rule
    value: metered
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: rule
    value: tokens
    descriptors:
      - key: header:x-user
        rate_limit: { unit: hour, requests_per_unit: 100 }
  - key: rule
    value: per-user
    descriptors:
      - key: header:x-user
        rate_limit: { unit: hour, requests_per_unit: 3 }
"#;

/// The service's control token (the usage endpoint needs it).
const CONTROL_TOKEN: &str = "global-tests-control-token";

fn filter_config(failure_mode: &str) -> String {
    format!(
        r#"{{"rules":[
          {{"name":"api","match":{{"path_prefix":"/api/"}},"global":{{"cluster":"ratelimit","timeout":"250ms","failure_mode":"{failure_mode}"}}}},
          {{"name":"per-user","match":{{"path_prefix":"/user/"}},"key":"header:x-user","global":{{"cluster":"ratelimit","timeout":"250ms","failure_mode":"{failure_mode}"}}}},
          {{"name":"metered","match":{{"path_prefix":"/metered/"}},"cost":{{"request_header":"x-cost","max":10}},"global":{{"cluster":"ratelimit","timeout":"250ms","failure_mode":"{failure_mode}"}}}},
          {{"name":"tokens","match":{{"path_prefix":"/cache/tokens"}},"key":"header:x-user","charge":{{"response_header":"x-usage-tokens"}},"global":{{"cluster":"ratelimit","timeout":"250ms","failure_mode":"{failure_mode}"}}}}
        ]}}"#
    )
}

fn envoy(backend: SocketAddr, service: &RateLimitService, failure_mode: &str) -> Envoy {
    Envoy::start(
        &EnvoyConfig::proxy_to(backend, 2)
            .grpc_cluster("ratelimit", vec![service.grpc])
            .filter(WasmFilter::new(
                "rate_limit",
                wasm_path("rate_limit"),
                &filter_config(failure_mode),
            )),
    )
    .unwrap()
}

fn setup() -> (Redis, RateLimitService, Backend) {
    assert!(
        redis_available(),
        "needs redis-server (cargo xtask test installs it: apt-get install redis-server)"
    );
    envoy_harness::build_wasm(&["rate-limit"]).unwrap();
    let redis = Redis::start().unwrap();
    let service =
        RateLimitService::start_with_control(LIMITS, &redis.url(), CONTROL_TOKEN).unwrap();
    let backend = Backend::start("origin").unwrap();
    (redis, service, backend)
}

/// 64 concurrent connections spread over both Envoys send 300 requests against one limit of
/// 100 per hour: exactly 100 pass in total (not 100 per Envoy, not per worker).
#[test]
fn one_limit_holds_exactly_across_two_envoys() {
    let (_redis, service, backend) = setup();
    let envoys = [
        envoy(backend.addr, &service, "allow"),
        envoy(backend.addr, &service, "allow"),
    ];
    let addrs: Vec<SocketAddr> = envoys.iter().map(|e| e.listener).collect();
    let (ok, denied, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let sent = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let (ok, denied, other, sent) =
                (ok.clone(), denied.clone(), other.clone(), sent.clone());
            let addr = addrs[i % 2];
            std::thread::spawn(move || {
                while sent.fetch_add(1, Ordering::SeqCst) < 300 {
                    match http_request(addr, "GET", "/api/x", &[], b"") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        Ok(r) if r.status == 429 => denied.fetch_add(1, Ordering::SeqCst),
                        _ => other.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (ok, denied, other) = (
        ok.load(Ordering::SeqCst),
        denied.load(Ordering::SeqCst),
        other.load(Ordering::SeqCst),
    );
    let per_envoy: Vec<i64> = envoys
        .iter()
        .map(|e| {
            e.stat("edgewise.rate_limit.rule=.=api;.;allowed")
                .ok()
                .flatten()
                .unwrap_or(0)
        })
        .collect();
    println!("global: 300 requests over 2 Envoys: {ok} allowed (per Envoy {per_envoy:?}), {denied} denied, {other} other");
    assert_eq!((ok, denied, other), (100, 200, 0));
    // A denied answer carries Retry-After and the service's numbers.
    let r = http_request(addrs[0], "GET", "/api/x", &[], b"").unwrap();
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=36).contains(&retry),
        "one token per 36 s: retry after {retry}"
    );
    assert!(
        r.header("ratelimit-policy")
            .is_some_and(|p| p.contains("q=100;w=3600")),
        "{:?}",
        r.header("ratelimit-policy")
    );
    // The remembered denial: the next request on that Envoy costs no call.
    let calls = service.metric("edgewise_ratelimit_requests_total").unwrap();
    for _ in 0..5 {
        assert_eq!(
            http_request(addrs[0], "GET", "/api/x", &[], b"")
                .unwrap()
                .status,
            429
        );
    }
    assert_eq!(
        service.metric("edgewise_ratelimit_requests_total").unwrap(),
        calls,
        "denied from shared data, no service call"
    );
    // Other keys are independent: 3 per user per hour, on either Envoy.
    for (user, expect) in [("ann", [200, 200, 200, 429]), ("bob", [200, 200, 200, 429])] {
        let got: Vec<u16> = (0..4)
            .map(|i| {
                http_request(addrs[i % 2], "GET", "/user/x", &[("x-user", user)], b"")
                    .unwrap()
                    .status
            })
            .collect();
        assert_eq!(got, expect, "{user}");
    }
}

/// The service stopped, hanging Redis aside: with `failure_mode: allow` requests pass, with
/// `deny` they are refused, each within the rule's timeout; once the service is back, the
/// limit holds again. Redis stopped: the service answers UNAVAILABLE at once, same result.
/// A global rule's cost reaches the service as the descriptor's hits_addend: 10 units per
/// hour, shared by two Envoys, spent 4 + 4 (then 4 more do not fit), 2, then nothing.
#[test]
fn a_global_rule_charges_the_request_cost_at_the_service() {
    let (_redis, service, backend) = setup();
    let envoys = [
        envoy(backend.addr, &service, "deny"),
        envoy(backend.addr, &service, "deny"),
    ];
    let send = |envoy: usize, cost: &str| {
        http_request(
            envoys[envoy].listener,
            "GET",
            "/metered/x",
            &[("x-cost", cost)],
            b"",
        )
        .unwrap()
        .status
    };
    let statuses = [
        send(0, "4"),
        send(1, "4"),
        send(0, "4"),
        send(1, "2"),
        send(0, "1"),
    ];
    assert_eq!(statuses, [200, 200, 429, 200, 429]);
}

/// A global rule charged after the response, across two Envoys: admission is a check (at
/// least the request's cost left, nothing spent); the usage the backend reports (60 tokens a
/// response) is sent to the service afterwards from the root context and spent even past the
/// limit of 100 — so after two answers (120) the user is refused on either Envoy.
#[test]
fn a_global_rule_charges_reported_usage_after_the_response() {
    let (_redis, service, backend) = setup();
    let envoys = [
        envoy(backend.addr, &service, "deny"),
        envoy(backend.addr, &service, "deny"),
    ];
    let send = |envoy: usize, user: &str| {
        http_request(
            envoys[envoy].listener,
            "GET",
            "/cache/tokens?header=x-usage-tokens%3A60&body=answer",
            &[("x-user", user)],
            b"",
        )
        .unwrap()
        .status
    };
    let charged = |envoy: usize| {
        envoys[envoy]
            .stats()
            .unwrap()
            .get("wasmcustom.edgewise.rate_limit.rule=.=tokens;.;charged")
            .copied()
            .unwrap_or(0)
    };
    // Waits until `envoy` reports `units` charged (the charge is sent on the root's next
    // tick, the counter flushed on another).
    let settled = |envoy: usize, units: i64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while charged(envoy) < units {
            assert!(Instant::now() < deadline, "charge of {units} not settled");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(send(0, "ann"), 200);
    settled(0, 60);
    assert_eq!(send(1, "ann"), 200, "40 left: admitted (cost 1)");
    settled(1, 60);
    assert_eq!(send(0, "ann"), 429, "120 charged: in debt");
    assert_eq!(send(1, "ann"), 429);
    assert_eq!(send(1, "ben"), 200, "another user");
    // The service's usage endpoint reads the key without spending: none left for ann.
    let usage = |user: &str| {
        let path = format!("/v1/usage?domain=edgewise&rule=tokens&header%3Ax-user={user}");
        let auth = format!("Bearer {CONTROL_TOKEN}");
        let r = http_request(service.http, "GET", &path, &[("authorization", &auth)], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_str::<serde_json::Value>(&r.text()).unwrap()
    };
    let ann = usage("ann");
    assert_eq!(
        (ann["limit"].as_u64(), ann["remaining"].as_u64()),
        (Some(100), Some(0)),
        "{ann}"
    );
    assert_eq!(ann["unit"], "hour");
    settled(1, 120); // ann's second answer and ben's
    let ben = usage("ben");
    assert_eq!(ben["remaining"].as_u64(), Some(40), "{ben}");
    assert_eq!(
        usage("ben")["remaining"].as_u64(),
        Some(40),
        "reading spends nothing"
    );
    let unknown = http_request(
        service.http,
        "GET",
        "/v1/usage?domain=edgewise&rule=nope",
        &[("authorization", &format!("Bearer {CONTROL_TOKEN}"))],
        b"",
    )
    .unwrap();
    assert_eq!(
        unknown.text().trim(),
        r#"{"domain":"edgewise","entries":[["rule","nope"]],"limited":false}"#
    );
    let anonymous = http_request(
        service.http,
        "GET",
        "/v1/usage?domain=edgewise&rule=tokens",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(anonymous.status, 401);
}

#[test]
fn failures_apply_the_failure_mode_within_the_timeout() {
    let (mut redis, mut service, backend) = setup();
    let allow = envoy(backend.addr, &service, "allow");
    let deny = envoy(backend.addr, &service, "deny");
    let timed = |e: &Envoy, path: &str, user: &str| {
        let started = Instant::now();
        let status = http_request(e.listener, "GET", path, &[("x-user", user)], b"")
            .unwrap()
            .status;
        (status, started.elapsed())
    };
    // Spend ann's 3 while all is well.
    for _ in 0..3 {
        assert_eq!(timed(&allow, "/user/x", "ann").0, 200);
    }
    assert_eq!(timed(&deny, "/user/x", "ann").0, 429);

    redis.stop();
    let (a, a_took) = timed(&allow, "/user/x", "cyd");
    let (d, d_took) = timed(&deny, "/user/x", "cyd");
    println!("redis down: allow {a} in {a_took:?}, deny {d} in {d_took:?}");
    assert_eq!((a, d), (200, 429));
    // Wide tolerance: the timeout is 250 ms; the service answers UNAVAILABLE sooner.
    assert!(a_took < Duration::from_secs(2) && d_took < Duration::from_secs(2));
    redis.restart().unwrap();

    service.stop();
    let (a, a_took) = timed(&allow, "/user/x", "dan");
    let (d, d_took) = timed(&deny, "/user/x", "dan");
    println!("service down: allow {a} in {a_took:?}, deny {d} in {d_took:?}");
    assert_eq!((a, d), (200, 429));
    assert!(a_took < Duration::from_secs(2) && d_took < Duration::from_secs(2));
    service.restart().unwrap();

    // Both back (Redis empty after its restart): the limit holds again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut statuses = Vec::new();
    for attempt in 0.. {
        // A fresh user each attempt: an attempt made while the service reconnects spends
        // nothing of the next one's budget.
        let user = format!("eve-{attempt}");
        statuses.clear();
        for _ in 0..4 {
            statuses.push(timed(&deny, "/user/x", &user).0);
        }
        if statuses == [200, 200, 200, 429] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "limits not enforced again: {statuses:?}"
        );
    }
}

/// Envoy's own `envoy.filters.http.ratelimit`, pointed at the same service with the same
/// descriptors, agrees with our filter on the same traffic: each user's 3 per hour, whichever
/// of the two Envoys (ours or native) a request goes through — one budget.
#[test]
fn envoys_native_ratelimit_filter_agrees_on_the_same_service() {
    let (_redis, service, backend) = setup();
    let ours = envoy(backend.addr, &service, "allow");
    let native = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2)
            .grpc_cluster("ratelimit", vec![service.grpc])
            .native_filter(serde_json::json!({
                "name": "envoy.filters.http.ratelimit",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                    "domain": "edgewise",
                    "timeout": "0.25s",
                    "failure_mode_deny": false,
                    "rate_limit_service": {
                        "grpc_service": { "envoy_grpc": { "cluster_name": "ratelimit" } },
                        "transport_api_version": "V3"
                    },
                    "rate_limits": [{ "actions": [
                        { "generic_key": { "descriptor_key": "rule", "descriptor_value": "per-user" } },
                        { "request_headers": { "header_name": "x-user", "descriptor_key": "header:x-user" } }
                    ] }]
                }
            })),
    )
    .unwrap();
    let get = |e: &Envoy, user: &str| {
        http_request(e.listener, "GET", "/user/x", &[("x-user", user)], b"")
            .unwrap()
            .status
    };
    // Alone, each gives a user exactly 3.
    let native_only: Vec<u16> = (0..4).map(|_| get(&native, "nat")).collect();
    let ours_only: Vec<u16> = (0..4).map(|_| get(&ours, "own")).collect();
    assert_eq!(native_only, [200, 200, 200, 429], "native");
    assert_eq!(ours_only, [200, 200, 200, 429], "ours");
    // Interleaved, they spend one budget.
    let mixed: Vec<u16> = (0..6)
        .map(|i| get(if i % 2 == 0 { &native } else { &ours }, "mix"))
        .collect();
    assert_eq!(mixed, [200, 200, 200, 429, 429, 429]);
}

/// Lease mode across two Envoys: calls take 10 hits each, and hits prepaid at the service
/// can never over-admit; near the limit a call for 10 is refused when fewer than 10 are
/// left, so up to 9 per Envoy may go unused (the stated bound: (batch − 1) × Envoys, the
/// workers of one Envoy share its lease).
#[test]
fn lease_mode_never_over_admits_and_under_admits_within_its_bound() {
    let (_redis, service, backend) = setup();
    let batch_config = r#"{"rules":[{"name":"leased","limit":95,"window":"1h","global":{"cluster":"ratelimit","timeout":"250ms","batch":10}}]}"#;
    let start = || {
        Envoy::start(
            &EnvoyConfig::proxy_to(backend.addr, 2)
                .grpc_cluster("ratelimit", vec![service.grpc])
                .filter(WasmFilter::new(
                    "rate_limit",
                    wasm_path("rate_limit"),
                    batch_config,
                )),
        )
        .unwrap()
    };
    let envoys = [start(), start()];
    let calls_before = service.metric("edgewise_ratelimit_requests_total").unwrap();
    let mut admitted = 0;
    for i in 0..300 {
        let r = http_request(envoys[i % 2].listener, "GET", "/x", &[], b"").unwrap();
        admitted += (r.status == 200) as u64;
    }
    let calls = service.metric("edgewise_ratelimit_requests_total").unwrap() - calls_before;
    println!("lease mode (batch 10, limit 95/h, 2 Envoys): {admitted} of 300 admitted with {calls} service calls");
    assert!(admitted <= 95, "never over the limit: {admitted}");
    assert!(
        admitted >= 95 - 2 * 9,
        "under-admission within (batch − 1) × Envoys: {admitted}"
    );
    assert!(
        calls <= 30,
        "about one call per 10 admitted, then remembered denials: {calls}"
    );
}

/// A service that accepts connections and never answers, and a cluster with no endpoint at
/// all (wasm-shim #425: calls that hang despite a short timeout): the rule's own deadline
/// answers by its failure mode within the timeout (+ one tick), on every request.
#[test]
fn a_hanging_service_or_no_endpoint_never_holds_a_request_past_the_timeout() {
    envoy_harness::build_wasm(&["rate-limit"]).unwrap();
    let backend = Backend::start("origin").unwrap();
    // Accepts and reads, never writes: the HTTP/2 handshake never completes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for conn in silent.incoming().flatten() {
                held.lock().unwrap().push(conn);
            }
        });
    }
    for (what, endpoints) in [("hanging", vec![silent_addr]), ("no endpoint", vec![])] {
        for (mode, expect) in [("allow", 200), ("deny", 429)] {
            let envoy = Envoy::start(
                &EnvoyConfig::proxy_to(backend.addr, 2)
                    .grpc_cluster("ratelimit", endpoints.clone())
                    .filter(WasmFilter::new(
                        "rate_limit",
                        wasm_path("rate_limit"),
                        &filter_config(mode),
                    )),
            )
            .unwrap();
            for _ in 0..3 {
                let started = Instant::now();
                let r = http_request(envoy.listener, "GET", "/api/x", &[], b"").unwrap();
                let took = started.elapsed();
                println!("{what}, {mode}: {} in {took:?}", r.status);
                assert_eq!(r.status, expect, "{what}, {mode}");
                // Timeout 250 ms + one tick (62 ms); wide tolerance for a loaded machine.
                assert!(
                    took < Duration::from_secs(2),
                    "{what}, {mode}: held {took:?}"
                );
            }
        }
    }
}

/// The same limits on a Redis Cluster (3 masters, 3 replicas): per-user keys spread over
/// the masters hold exactly across two Envoys; the master holding one user's key is killed
/// — with `failure_mode: allow` requests keep passing (no 5xx) while its slot has no master,
/// and within 10 s of the replica's promotion that user's limit holds again, with the
/// count the replica had.
#[test]
fn limits_hold_on_a_redis_cluster_and_again_after_a_failover() {
    assert!(redis_available(), "needs redis-server");
    envoy_harness::build_wasm(&["rate-limit"]).unwrap();
    let mut cluster = envoy_harness::RedisCluster::start(3).unwrap();
    let service = RateLimitService::start(LIMITS, &cluster.url()).unwrap();
    let backend = Backend::start("origin").unwrap();
    let envoys = [
        envoy(backend.addr, &service, "allow"),
        envoy(backend.addr, &service, "allow"),
    ];
    let addrs: Vec<SocketAddr> = envoys.iter().map(|e| e.listener).collect();
    let users: Vec<String> = (0..8).map(|n| format!("user-{n}")).collect();
    let key = |user: &str| format!("erl:edgewise|rule=per-user|header:x-user={user}");
    let masters: std::collections::BTreeSet<usize> = users
        .iter()
        .map(|u| cluster.master_of(&key(u)).unwrap())
        .collect();
    assert!(masters.len() >= 2, "8 users' keys on master(s) {masters:?}");
    // 16 threads, 6 requests per user each, through both Envoys: 3 per user pass.
    let allowed = Arc::new(std::sync::Mutex::new(vec![0u32; users.len()]));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (users, allowed, addr) = (users.clone(), allowed.clone(), addrs[t % 2]);
            std::thread::spawn(move || {
                for _ in 0..6 {
                    for (i, user) in users.iter().enumerate() {
                        let r =
                            http_request(addr, "GET", "/user/x", &[("x-user", user)], b"").unwrap();
                        assert!(r.status == 200 || r.status == 429, "{}", r.status);
                        if r.status == 200 {
                            allowed.lock().unwrap()[i] += 1;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*allowed.lock().unwrap(), vec![3; users.len()]);

    // A fresh user spends 2 of 3; the master holding its key goes.
    let user = "fresh";
    for addr in &addrs {
        let r = http_request(*addr, "GET", "/user/x", &[("x-user", user)], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    let master = cluster.master_of(&key(user)).unwrap();
    // Another user on the same master, asked once the master is gone.
    let neighbour = (0..)
        .map(|n| format!("neighbour-{n}"))
        .find(|u| cluster.master_of(&key(u)).unwrap() == master)
        .unwrap();
    cluster.cli(master, &["wait", "1", "2000"]).unwrap();
    cluster.stop(master);
    // Until the promotion: failure_mode allow, so the neighbour passes (a fail-open), never
    // a 5xx.
    let r = http_request(addrs[0], "GET", "/user/x", &[("x-user", &neighbour)], b"").unwrap();
    assert!(r.status == 200, "during the failover: {}", r.status);
    cluster
        .wait_promoted(&key(user), master, Duration::from_secs(30))
        .unwrap();
    let promoted = Instant::now();
    // Within 10 s the user's third request passes and the fourth is refused again.
    let statuses = loop {
        let got: Vec<u16> = (0..2)
            .map(|i| {
                http_request(addrs[i % 2], "GET", "/user/x", &[("x-user", user)], b"")
                    .unwrap()
                    .status
            })
            .collect();
        if got.contains(&429) || promoted.elapsed() > Duration::from_secs(10) {
            break got;
        }
        // Both passed: the service still failing open on the old master (sent again).
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "limit held again {:?} after the promotion: {statuses:?}",
        promoted.elapsed()
    );
    assert!(
        statuses.contains(&429),
        "no denial within 10 s of the promotion"
    );
    assert!(promoted.elapsed() < Duration::from_secs(10));
}
