//! Layer 4: the docker-compose cluster (front Envoy, two edges with the four filters, four
//! backend containers) under faults, asserted through the front on 127.0.0.1.
//!
//! One test runs the phases in order because they share one cluster and some of them stop
//! containers. Tolerances are stated where the number depends on load balancing across the
//! front's two workers; everything else is exact. The cluster is torn down on every exit
//! (Cluster's Drop runs during a panic too).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_harness::{build_images, build_wasm, docker_available, master_serving, Cluster, Ports};

fn stat(cluster: &Cluster, edge: usize, name: &str) -> i64 {
    let stats = cluster.edge_stats(edge).expect("edge stats");
    stats
        .get(name)
        .or_else(|| stats.get(&format!("wasmcustom.{name}")))
        .copied()
        .unwrap_or(0)
}

fn v1_requests(cluster: &Cluster) -> u64 {
    cluster.backend_requests("api-v1-a").unwrap() + cluster.backend_requests("api-v1-b").unwrap()
}

/// Builds what the compose cluster runs: the four modules, edge_chain and every image.
fn build_modules_and_images() {
    assert!(
        docker_available(),
        "layer 4 needs a Docker engine and docker-compose (see README, Test layers)"
    );
    build_wasm(&[
        "rate-limit",
        "response-cache",
        "weighted-router",
        "circuit-breaker",
    ])
    .unwrap();
    envoy_harness::build_edge_chain().unwrap();
    build_images().unwrap();
}

#[test]
fn compose_cluster_filters_and_faults() {
    let started = Instant::now();
    build_modules_and_images();
    println!("images ready after {:.0?}", started.elapsed());
    let cluster = Cluster::up(
        &format!("edgewise-test-{}", std::process::id()),
        Ports::ephemeral().unwrap(),
    )
    .unwrap();
    println!("cluster healthy after {:.0?}", started.elapsed());

    rate_limit_holds_per_edge(&cluster);
    global_rate_limit_holds_through_the_front(&cluster);
    cache_serves_repeated_gets(&cluster);
    edges_cache_each_url_once(&cluster);
    cache_hits_carry_only_their_own_rate_limit_fields(&cluster);
    fleet_purge_reaches_every_envoy(&cluster);
    front_routes_only_public_paths(&cluster);
    long_user_values_keep_redis_small(&cluster);
    weighted_split_counted_at_backends(&cluster);
    breaker_stops_traffic_to_failing_flaky(&cluster);
    every_envoy_loaded_its_modules_remotely(&cluster);
    prometheus_scrapes_every_envoy_with_labels_and_loads_the_alerts(&cluster);
    operator_forces_the_canary_out_and_back(&cluster);
    canary_stop_fails_over_and_start_returns(&cluster);
    canary_pause_costs_at_most_the_bulkheads(&cluster);
    stopping_an_edge_moves_only_its_urls(&cluster);
    edge_restart_keeps_front_serving(&cluster);
    println!("compose phases done after {:.0?}", started.elapsed());
}

/// A global rule (10 per client per hour on /global/, counted by edgewise-ratelimit in
/// Redis) holds exactly through the front: 10 in total, not 10 per edge — the front shards
/// the 40 distinct paths over both edges. With Redis or the service stopped,
/// `failure_mode: allow` serves; once they are back, limits hold again.
fn global_rate_limit_holds_through_the_front(cluster: &Cluster) {
    let mut allowed = 0;
    for n in 0..40 {
        let r = cluster.get(&format!("/global/x{n}")).unwrap();
        match r.status {
            200 => allowed += 1,
            429 => assert!(r.header("retry-after").is_some(), "429 without Retry-After"),
            other => panic!("unexpected status {other}: {}", r.text()),
        }
    }
    let seen = [0, 1].map(|e| {
        stat(cluster, e, "edgewise.rate_limit.rule=.=global;.;allowed")
            + stat(cluster, e, "edgewise.rate_limit.rule=.=global;.;denied")
    });
    println!("global rate limit: 40 requests through the front, {allowed} allowed (per edge seen {seen:?})");
    assert_eq!(allowed, 10, "one limit across both edges");
    assert!(seen.iter().all(|&n| n > 0), "both edges served: {seen:?}");

    let user = |name: &str| {
        cluster
            .request("GET", "/global-user/x", &[("x-user", name)])
            .unwrap()
            .status
    };
    for (stopped, who) in [("redis", "zed-1"), ("ratelimit", "zed-2")] {
        cluster.docker("stop", stopped).unwrap();
        let statuses: Vec<u16> = (0..5).map(|_| user(who)).collect();
        println!("global rate limit, {stopped} stopped: {statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 200),
            "failure_mode allow serves while {stopped} is down: {statuses:?}"
        );
        cluster.docker("start", stopped).unwrap();
        cluster
            .wait_service_healthy(stopped, Duration::from_secs(60))
            .unwrap();
    }
    // Back: a fresh user gets exactly 3 (retried with another user while connections heal).
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let name = format!("amy-{attempt}");
        let statuses: Vec<u16> = (0..4).map(|_| user(&name)).collect();
        if statuses == [200, 200, 200, 429] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "limits not enforced again after the restarts: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each edge enforces its own limit (10 per client per hour on /limited/); rate-limit state is
/// per Envoy process. The front shards by URL, so a client's 40 distinct paths spread over
/// both edges and each edge allows exactly the first 10 it sees: at most 2 × 10 in total.
fn rate_limit_holds_per_edge(cluster: &Cluster) {
    let mut allowed = 0;
    for n in 0..40 {
        let r = cluster.get(&format!("/limited/x{n}")).unwrap();
        match r.status {
            200 => allowed += 1,
            429 => assert!(r.header("retry-after").is_some(), "429 without Retry-After"),
            other => panic!("unexpected status {other}: {}", r.text()),
        }
    }
    let per_edge = [0, 1].map(|e| stat(cluster, e, "edgewise.rate_limit.rule=.=limited;.;allowed"));
    let denied = [0, 1].map(|e| stat(cluster, e, "edgewise.rate_limit.rule=.=limited;.;denied"));
    println!("rate limit: 40 requests, {allowed} allowed; per edge allowed {per_edge:?} denied {denied:?}");
    for e in 0..2 {
        let seen = per_edge[e] + denied[e];
        assert!(seen > 0, "edge {e} saw none of 40 distinct paths");
        assert_eq!(per_edge[e], seen.min(10), "edge {e}: its own 10");
    }
    assert_eq!(allowed, per_edge[0] + per_edge[1]);
    assert_eq!(denied[0] + denied[1], 40 - allowed);
}

/// The name of the cache that answered (the first Cache-Status entry: the edge's own, as the
/// front caches nothing) and whether it was a hit.
fn answered_by(r: &envoy_harness::HttpResponse) -> (String, bool) {
    let status = r.header("cache-status").unwrap_or("");
    let name = status.split(';').next().unwrap_or("").trim().to_string();
    (name, status.contains("; hit"))
}

/// Repeated GETs of one URL: every one goes to the same edge, which misses once and answers
/// the rest from its cache — the origin sees one request for the whole cluster.
fn cache_serves_repeated_gets(cluster: &Cluster) {
    let path = "/cache/article?cache_control=max-age%3D300&etag=v1&body=cached+article";
    let before = v1_requests(cluster);
    let mut hits = 0;
    let mut edges = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let r = cluster.get(path).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "cached article");
        let (edge, hit) = answered_by(&r);
        edges.insert(edge);
        hits += usize::from(hit);
    }
    let origin = v1_requests(cluster) - before;
    println!("cache: 10 GETs, {hits} hits, origin saw {origin}, answered by {edges:?}");
    assert_eq!(origin, 1, "one miss per URL for the whole cluster");
    assert_eq!(hits, 9);
    assert_eq!(edges.len(), 1, "one URL, one edge: {edges:?}");
}

/// The sharded tier: N distinct URLs, each requested 4 times through the front, cost the
/// origin N requests, and the edges stored N entries between them — each URL on one edge
/// (the same for all of its requests), both edges holding a share.
fn edges_cache_each_url_once(cluster: &Cluster) {
    const URLS: usize = 16;
    let before = v1_requests(cluster);
    let stored =
        |cluster: &Cluster| [0, 1].map(|e| stat(cluster, e, "edgewise.response_cache.stored"));
    let stored_before = stored(cluster);
    let mut shares = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..URLS {
        let path = format!("/cache/shard-{n}?cache_control=max-age%3D300&body=sharded");
        let first = cluster.get(&path).unwrap();
        let (owner, hit) = answered_by(&first);
        assert!(!hit, "{path}: first request was a hit");
        for _ in 0..3 {
            let again = cluster.get(&path).unwrap();
            assert_eq!(answered_by(&again), (owner.clone(), true), "{path}");
        }
        *shares.entry(owner).or_default() += 1;
    }
    let origin = v1_requests(cluster) - before;
    let after = stored(cluster);
    let stored = [after[0] - stored_before[0], after[1] - stored_before[1]];
    println!("sharded tier: {URLS} URLs × 4 GETs, origin saw {origin}; stored per edge {stored:?}; URLs per edge {shares:?}");
    assert_eq!(origin, URLS as u64);
    assert_eq!(
        (stored[0] + stored[1]) as usize,
        URLS,
        "one entry per URL in the whole tier"
    );
    assert_eq!(
        shares.keys().collect::<Vec<_>>(),
        ["edge-1", "edge-2"],
        "both edges hold a share"
    );
    assert_eq!(shares["edge-1"] as i64, stored[0]);
}

/// Every value of a response field, in order, joined as one list.
fn all_values(r: &envoy_harness::HttpResponse, name: &str) -> String {
    r.headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The front limits before the edges' caches: a hit is counted (20 per user per minute,
/// global), and carries only its own client's RateLimit fields — never those of the client
/// whose request filled the entry.
fn cache_hits_carry_only_their_own_rate_limit_fields(cluster: &Cluster) {
    let path = "/cache/rl-private?cache_control=max-age%3D300&body=shared+page";
    let fill = cluster.request("GET", path, &[("x-user", "rl-a")]).unwrap();
    assert_eq!(fill.status, 200);
    assert!(all_values(&fill, "ratelimit").contains("\"front-user\";r=19;"));
    // A client the front's rule does not apply to: a hit without the filler's front-user field.
    let anonymous = cluster.get(path).unwrap();
    assert!(answered_by(&anonymous).1, "{:?}", anonymous.headers);
    for field in ["ratelimit", "ratelimit-policy"] {
        assert!(
            !all_values(&anonymous, field).contains("front-user"),
            "a hit carried the filler's {field}: {:?}",
            anonymous.headers
        );
    }
    assert!(anonymous.header("retry-after").is_none());
    // Another user: the front's rule with this user's own count.
    let other = cluster.request("GET", path, &[("x-user", "rl-b")]).unwrap();
    assert!(answered_by(&other).1);
    let fields = all_values(&other, "ratelimit");
    assert!(fields.contains("\"front-user\";r=19;"), "{fields}");
    // Hits count against the limit: 20 per minute, then 429 from the front.
    let statuses: Vec<u16> = (0..25)
        .map(|_| {
            cluster
                .request("GET", path, &[("x-user", "rl-c")])
                .unwrap()
                .status
        })
        .collect();
    println!("front limit on a cached page: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5);
}

/// A purge by tag posted once at the control API (its own port on 127.0.0.1) reaches both
/// edges: every tagged page goes back to the origin within 2 s (a wide, stated tolerance:
/// each Envoy polls every 500 ms), the untagged page stays a hit, and every cache counted
/// the purge — the edge that held none of the pages included.
fn fleet_purge_reaches_every_envoy(cluster: &Cluster) {
    let tagged: Vec<String> = (0..3)
        .map(|n| {
            format!("/cache/fleet-{n}?cache_control=max-age%3D600&body=tagged&header=surrogate-key%3Afleet-demo")
        })
        .collect();
    let untagged =
        "/cache/fleet-other?cache_control=max-age%3D600&body=untagged&header=surrogate-key%3Aother";
    let hit = |path: &str| answered_by(&cluster.get(path).unwrap()).1;
    for path in tagged.iter().map(String::as_str).chain([untagged]) {
        assert_eq!(cluster.get(path).unwrap().status, 200);
        assert!(hit(path), "{path} cached at its edge");
    }
    let refused = cluster
        .control("POST", "/v1/purge", r#"{"tags":[]}"#)
        .unwrap();
    assert_eq!(refused.status, 400);
    let posted = Instant::now();
    let answer = cluster
        .control("POST", "/v1/purge", r#"{"tags":["fleet-demo"]}"#)
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    // Each tagged page until a request of it reached the origin.
    for path in &tagged {
        loop {
            let status = cluster
                .get(path)
                .unwrap()
                .header("cache-status")
                .unwrap_or("")
                .to_string();
            if status.contains("fwd=miss") {
                break;
            }
            assert!(
                posted.elapsed() < Duration::from_secs(5),
                "{path} not purged after 5 s: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let reached = posted.elapsed();
    assert!(hit(untagged), "the untagged page stayed cached");
    // Every cache applies it.
    let per_edge = loop {
        let per_edge = [0, 1].map(|e| stat(cluster, e, "edgewise.response_cache.fleet_purges"));
        if per_edge.iter().all(|n| *n >= 1) || posted.elapsed() > Duration::from_secs(5) {
            break per_edge;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let everywhere = posted.elapsed();
    println!("fleet purge: every tagged page refetched {reached:?} after the POST; applied by both edges within {everywhere:?} ({per_edge:?})");
    assert!(per_edge.iter().all(|n| *n >= 1), "{per_edge:?}");
    assert!(everywhere < Duration::from_secs(2), "took {everywhere:?}");
}

/// The front routes only the demo's public paths: the backends' fault switch and the
/// status paths (which could open a shared breaker for everyone) never reach a backend.
fn front_routes_only_public_paths(cluster: &Cluster) {
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.ports.front));
    let before = v1_requests(cluster);
    for path in ["/admin/fault", "/api/../admin/fault", "//admin/fault"] {
        let r =
            envoy_harness::http_request(front, "POST", path, &[], br#"{"mode":"hang"}"#).unwrap();
        assert_eq!(r.status, 404, "POST {path}: {}", r.text());
    }
    for service in ["api-v1-a", "api-v1-b", "api-v2"] {
        let port = cluster.backend_port(service).unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let fault = envoy_harness::http_request(addr, "GET", "/admin/fault", &[], b"").unwrap();
        assert_eq!(fault.text().trim(), "Off", "{service}");
    }
    for _ in 0..10 {
        assert_eq!(cluster.get("/status/503").unwrap().status, 404);
    }
    assert_eq!(cluster.get("/stats").unwrap().status, 404);
    assert_eq!(
        v1_requests(cluster),
        before,
        "no control request reached api-v1"
    );
    let opened = [0, 1].map(|e| {
        stat(
            cluster,
            e,
            "edgewise.circuit_breaker.upstream=.=api-v1;.;opened",
        )
    });
    assert_eq!(opened, [0, 0]);
    println!("front: control and fault paths answer 404, no backend reached");
}

/// 300 distinct 30 KB `x-user` values through the front's and the edges' global rules:
/// the values reach Redis as 39-byte hashes, so Redis grows by well under 1 MiB.
fn long_user_values_keep_redis_small(cluster: &Cluster) {
    let (used_before, keys_before) = cluster.redis_memory().unwrap();
    for n in 0..300 {
        let user = format!("{n:05}{}", "u".repeat(30_000));
        let r = cluster
            .request("GET", "/global-user/x", &[("x-user", &user)])
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (used_after, keys_after) = cluster.redis_memory().unwrap();
    let grown = used_after.saturating_sub(used_before);
    println!(
        "redis: 300 distinct 30 KB x-user values grew it by {grown} bytes ({} keys)",
        keys_after.saturating_sub(keys_before)
    );
    assert!(grown < 1 << 20, "Redis grew by {grown} bytes");
    assert!(keys_after > keys_before, "the values were counted");
}

/// 90/10 weighted round robin (a proportionally fair cycle) per edge worker: 4 cursors (2 edges × 2 workers) each
/// deviate by at most one cycle position, so api-v2 gets 20 ± 8 of 200.
fn weighted_split_counted_at_backends(cluster: &Cluster) {
    let v1_before = v1_requests(cluster);
    let v2_before = cluster.backend_requests("api-v2").unwrap();
    // Distinct paths: the front spreads them over both edges.
    for n in 0..200 {
        assert_eq!(cluster.get(&format!("/api/split-{n}")).unwrap().status, 200);
    }
    let v1 = v1_requests(cluster) - v1_before;
    let v2 = cluster.backend_requests("api-v2").unwrap() - v2_before;
    let a = cluster.backend_requests("api-v1-a").unwrap();
    let b = cluster.backend_requests("api-v1-b").unwrap();
    println!("split: api-v1 {v1} (replicas a {a}, b {b} in total), api-v2 {v2}");
    assert_eq!(v1 + v2, 200);
    assert!(
        (12..=28).contains(&v2),
        "api-v2 got {v2} of 200 (90/10 split)"
    );
    assert!(a > 0 && b > 0, "both api-v1 replicas serve");
}

/// `flaky` fails every request (distinct paths, spread over both edges): each edge's breaker
/// opens after 5 consecutive failures, so exactly 10 requests reach flaky, then its counter stops while clients get the fallback.
fn breaker_stops_traffic_to_failing_flaky(cluster: &Cluster) {
    cluster
        .set_fault("flaky", r#"{"mode":"fail","ratio":1.0,"status":503}"#)
        .unwrap();
    let before = cluster.backend_requests("flaky").unwrap();
    let mut fallbacks = 0;
    for n in 0..40 {
        let r = cluster.get(&format!("/flaky/x{n}")).unwrap();
        assert_eq!(r.status, 503);
        if r.header("x-edgewise-circuit").is_some() {
            fallbacks += 1;
        }
    }
    let reached = cluster.backend_requests("flaky").unwrap() - before;
    println!("breaker: 40 requests, {reached} reached flaky, {fallbacks} fallbacks");
    assert_eq!(
        reached, 10,
        "5 consecutive failures per edge open each breaker"
    );
    assert_eq!(fallbacks, 30);
    for n in 40..80 {
        cluster.get(&format!("/flaky/x{n}")).unwrap();
    }
    assert_eq!(
        cluster.backend_requests("flaky").unwrap() - before,
        10,
        "flaky's counter rose while the breakers were open"
    );
    let opened = [0, 1].map(|e| {
        stat(
            cluster,
            e,
            "edgewise.circuit_breaker.upstream=.=flaky;.;opened",
        )
    });
    assert_eq!(opened, [1, 1]);
    cluster.set_fault("flaky", r#"{"mode":"off"}"#).unwrap();
}

/// Each Envoy fetched its modules from the artifact server by URI and sha256 (the configs
/// rendered from SHA256SUMS): the edges four modules, the front one, no failed fetch.
fn every_envoy_loaded_its_modules_remotely(cluster: &Cluster) {
    let mut all = vec![("front", cluster.front_stats().unwrap())];
    for e in [0, 1] {
        all.push((["edge-1", "edge-2"][e], cluster.edge_stats(e).unwrap()));
    }
    for (envoy, stats) in all {
        let got = |name: &str| stats.get(name).copied().unwrap_or(-1);
        let fetched = got("wasm.remote_load_fetch_successes");
        println!("remote loading: {envoy} fetched {fetched} module(s)");
        assert!(fetched >= 1, "{envoy}: no remote fetch");
        assert_eq!(got("wasm.remote_load_fetch_failures"), 0, "{envoy}");
    }
}

/// Percent-encodes a PromQL query for a URL.
fn query_string(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus (in the cluster) scrapes the three Envoys and the rate limit service, sees
/// Edgewise's metrics with their labels — the flaky breakers opened in the phase before,
/// one series per edge — and has the Edgewise alert rules loaded and healthy. Polls for up
/// to 60 s (scrapes every 2 s).
fn prometheus_scrapes_every_envoy_with_labels_and_loads_the_alerts(cluster: &Cluster) {
    let query = |q: &str| -> serde_json::Value {
        let r = cluster
            .prometheus_get(&format!("/api/v1/query?query={}", query_string(q)))
            .unwrap();
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        serde_json::from_str(&r.text()).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (up, opened) = loop {
        let up = query("up == 1");
        let opened = query(r#"edgewise_circuit_breaker_opened{upstream="flaky"}"#);
        let count = |v: &serde_json::Value| v["data"]["result"].as_array().map_or(0, Vec::len);
        if (count(&up) == 4 && count(&opened) == 2) || Instant::now() > deadline {
            break (up, opened);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut instances: Vec<String> = up["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"]["instance"].as_str().unwrap_or("").to_string())
        .collect();
    instances.sort();
    assert_eq!(
        instances,
        ["edge-1", "edge-2", "front", "ratelimit"],
        "{up}"
    );
    let mut per_edge: Vec<(String, String)> = opened["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"]["instance"].as_str().unwrap_or("").to_string(),
                s["value"][1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    per_edge.sort();
    assert_eq!(
        per_edge,
        [("edge-1".into(), "1".into()), ("edge-2".into(), "1".into())],
        "{opened}"
    );
    let rules: serde_json::Value =
        serde_json::from_str(&cluster.prometheus_get("/api/v1/rules").unwrap().text()).unwrap();
    let alerting: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter(|r| r["type"] == "alerting")
        .collect();
    assert_eq!(alerting.len(), 8, "{rules}");
    for rule in &alerting {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    println!(
        "prometheus: 4 targets up, flaky opened on both edges, {} alert rules loaded",
        alerting.len()
    );
}

/// An operator forces api-v2's breaker open at the control API: on both edges the router
/// sends nothing to the canary (all served by api-v1, no error) until it is given back.
fn operator_forces_the_canary_out_and_back(cluster: &Cluster) {
    let forced = |state: i64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while [0, 1].iter().any(|e| {
            stat(
                cluster,
                *e,
                "edgewise.circuit_breaker.upstream=.=api-v2;.;forced",
            ) != state
        }) {
            assert!(
                Instant::now() < deadline,
                "forced state {state} not on both edges"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let posted = Instant::now();
    let r = cluster
        .control(
            "POST",
            "/v1/breaker",
            r#"{"upstream":"api-v2","state":"open","by":"compose-test"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    forced(1);
    let took = posted.elapsed();
    let v2_before = cluster.backend_requests("api-v2").unwrap();
    for _ in 0..100 {
        assert_eq!(cluster.get("/api/forced").unwrap().status, 200);
    }
    assert_eq!(
        cluster.backend_requests("api-v2").unwrap(),
        v2_before,
        "the canary got traffic while forced open"
    );
    let r = cluster
        .control(
            "POST",
            "/v1/breaker",
            r#"{"upstream":"api-v2","state":"auto","by":"compose-test"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    forced(0);
    println!("operator: api-v2 forced open on both edges {took:?} after the POST; 100 requests, none to the canary; automatic again");
}

/// `docker stop api-v2`: requests the router sends to it fail until each edge's breaker for
/// api-v2 trips (5 each), then the router fails over to api-v1. Tolerance: one failed
/// half-open probe per edge if the phase outlasts the 10 s open duration. `docker start`
/// brings traffic back once a probe succeeds.
fn canary_stop_fails_over_and_start_returns(cluster: &Cluster) {
    cluster.docker("stop", "api-v2").unwrap();
    let started = Instant::now();
    let mut errors = 0;
    let mut served = 0;
    for n in 0..300 {
        let r = cluster.get(&format!("/api/failover-{n}")).unwrap();
        if r.status == 200 {
            served += 1;
        } else {
            errors += 1;
        }
    }
    let elapsed = started.elapsed();
    let failovers = [0, 1].map(|e| {
        stat(
            cluster,
            e,
            "edgewise.weighted_router.route=.=api;.;failovers",
        )
    });
    println!(
        "failover: api-v2 stopped, 300 requests in {elapsed:.1?}: {served} served, {errors} errors; failovers per edge {failovers:?}"
    );
    assert!(
        errors <= 12,
        "{errors} client errors; the breakers trip after 5 per edge"
    );
    assert!(errors >= 2, "no errors at all: was api-v2 really stopped?");
    assert!(failovers.iter().all(|&f| f > 0));

    cluster.docker("start", "api-v2").unwrap();
    cluster
        .wait_service_healthy("api-v2", Duration::from_secs(60))
        .unwrap();
    let back = Instant::now();
    let before = cluster.backend_requests("api-v2").unwrap();
    // The breakers stay open until their open duration (10 s, then 20 s after a failed probe)
    // ends; then one probe per edge closes them.
    while cluster.backend_requests("api-v2").unwrap() == before {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "traffic did not return to api-v2"
        );
        cluster
            .get(&format!("/api/return-{}", back.elapsed().as_millis()))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "failover: api-v2 back, serving again {:.1?} after it was healthy",
        back.elapsed()
    );
}

/// What the load of [`steady_load`] saw: (when it ended, status, backend that answered, when
/// it was sent) per request, in the order they ended.
type Seen = Arc<std::sync::Mutex<Vec<(Instant, u16, String, Instant)>>>;

/// Open-loop load: a new request every `gap` (each on its own thread, so requests that hang
/// do not slow the others down, as with many independent clients), GET
/// /api/pause/<n> (unique paths: no cache hits, no coalescing behind a hung request), until
/// `stop`. Returns the dispatcher; joining it waits for every request to end.
fn steady_load(
    cluster: &Cluster,
    gap: Duration,
    stop: &Arc<AtomicBool>,
    seen: &Seen,
) -> std::thread::JoinHandle<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.ports.front));
    let (stop, seen) = (stop.clone(), seen.clone());
    std::thread::spawn(move || {
        let mut requests = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let seen = seen.clone();
            let path = format!("/api/pause/{n}");
            n += 1;
            requests.push(std::thread::spawn(move || {
                let sent = Instant::now();
                let answer = match envoy_harness::http_request(addr, "GET", &path, &[], b"") {
                    Ok(r) => (
                        Instant::now(),
                        r.status,
                        r.header("x-backend-name").unwrap_or("").to_string(),
                        sent,
                    ),
                    Err(_) => (Instant::now(), 0, String::new(), sent),
                };
                seen.lock().unwrap().push(answer);
            }));
            std::thread::sleep(gap);
        }
        for r in requests {
            let _ = r.join();
        }
    })
}

/// `docker pause api-v2` for 12 s under ~50 requests/s: the canary accepts connections and
/// never answers. Per edge at most its bulkhead (5) of requests hang until the 5 s route
/// timeout; the router fails every other canary pick over to api-v1; the hung requests trip
/// the breaker by slow-call rate. So client errors ≤ 2 × 5 (the in-flight bound at the
/// hang), and none among requests sent after both breakers first tripped: when the 10 s open
/// period ends (inside the pause) the breakers probe api-v2 themselves (`half_open.probe`),
/// so no client request is a probe that hangs. `docker unpause`: api-v2 serves again after
/// a healthy probe.
fn canary_pause_costs_at_most_the_bulkheads(cluster: &Cluster) {
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let load = steady_load(cluster, Duration::from_millis(20), &stop, &seen);
    let count = |seen: &Seen| seen.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&seen) < 100 {
        assert!(Instant::now() < deadline, "no traffic before the pause");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before_pause = count(&seen);
    cluster.docker("pause", "api-v2").unwrap();
    let paused = Instant::now();
    // Load for 12 s: past the 5 s route timeout of every request that hung before the
    // breakers tripped, and past their 10 s open period (the half-open probe happens while
    // api-v2 still hangs). When both breakers have first tripped is read off the edges.
    let opened_stat = "edgewise.circuit_breaker.upstream=.=api-v2;.;opened";
    // The canary-stop phase opened these breakers before: count openings from here.
    let opened_before = [0, 1].map(|e| stat(cluster, e, opened_stat));
    let mut both_tripped: Option<Instant> = None;
    while paused.elapsed() < Duration::from_secs(12) {
        if both_tripped.is_none()
            && [0, 1]
                .iter()
                .all(|e| stat(cluster, *e, opened_stat) > opened_before[*e])
        {
            both_tripped = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let both_tripped = both_tripped.expect("both edges' api-v2 breakers tripped during the pause");
    let during_pause = count(&seen);
    let failovers = [0, 1].map(|e| {
        stat(
            cluster,
            e,
            "edgewise.weighted_router.route=.=api;.;failovers",
        )
    });
    let opened = [0, 1].map(|e| {
        stat(
            cluster,
            e,
            "edgewise.circuit_breaker.upstream=.=api-v2;.;opened",
        )
    });
    let full = [0, 1].map(|e| {
        stat(
            cluster,
            e,
            "edgewise.circuit_breaker.upstream=.=api-v2;.;bulkhead_rejected",
        )
    });
    cluster.docker("unpause", "api-v2").unwrap();
    let unpaused = Instant::now();
    // Load until api-v2 answers a client again (open period, then one probe per edge).
    let returned = loop {
        let served_by_v2 = seen.lock().unwrap()[during_pause..]
            .iter()
            .any(|(_, status, name, _)| *status == 200 && name == "api-v2");
        if served_by_v2 {
            break unpaused.elapsed();
        }
        assert!(
            unpaused.elapsed() < Duration::from_secs(60),
            "traffic did not return to api-v2 after unpause"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let seen = seen.lock().unwrap();
    let window = &seen[before_pause..];
    let errors: Vec<u16> = window
        .iter()
        .map(|(_, s, _, _)| *s)
        .filter(|s| *s != 200)
        .collect();
    let after_pause = &seen[during_pause..];
    let later_errors = after_pause.iter().filter(|(_, s, _, _)| *s != 200).count();
    // Requests sent after both breakers tripped (the poll reads stats every 50 ms, so allow
    // one poll's lag): none failed — no client was a half-open probe.
    let after_trip: Vec<String> = window
        .iter()
        .filter(|(_, s, _, sent)| *s != 200 && *sent > both_tripped + Duration::from_millis(100))
        .map(|(_, s, _, sent)| {
            format!(
                "{s} sent {}ms after the pause",
                sent.duration_since(paused).as_millis()
            )
        })
        .collect();
    // When (ms after the pause) each request api-v2 answered ended, and each error.
    let timeline: Vec<String> = window
        .iter()
        .filter(|(_, s, name, _)| *s != 200 || name == "api-v2")
        .map(|(at, s, _, _)| format!("{s}@{}", at.duration_since(paused).as_millis()))
        .collect();
    println!("pause timeline (status@ms after the pause): {timeline:?}");
    println!(
        "pause: {} requests from the pause to api-v2's return ({:.1?} after unpause); \
         client errors {:?}; failovers per edge {failovers:?}; breaker opened {opened:?}; \
         bulkhead full {full:?}; errors after the pause phase {later_errors}; both breakers \
         tripped {}ms after the pause",
        window.len(),
        returned,
        errors,
        both_tripped.duration_since(paused).as_millis()
    );
    assert!(
        after_trip.is_empty(),
        "client errors after the breakers tripped (a client was a probe?): {after_trip:?}"
    );
    assert!(
        errors.len() <= 10,
        "{} client errors; the bulkheads bound them at 2 × 5: {errors:?}",
        errors.len()
    );
    assert!(
        !errors.is_empty(),
        "no client error at all: did api-v2 really hang?"
    );
    assert!(
        errors.iter().all(|s| *s == 504),
        "only the hung requests fail, by the route timeout: {errors:?}"
    );
    assert!(failovers.iter().all(|&f| f > 0));
    assert!(
        opened.iter().all(|&o| o >= 1),
        "each edge's breaker tripped on the hung requests: {opened:?}"
    );
    assert_eq!(later_errors, 0, "none after the hung requests timed out");
}

/// The front's view of its edges: how many are healthy (in the ring).
fn healthy_edges(cluster: &Cluster) -> i64 {
    cluster
        .front_stats()
        .unwrap()
        .get("cluster.edges.membership_healthy")
        .copied()
        .unwrap_or(-1)
}

/// Waits until the front's health checks count `n` healthy edges.
fn wait_healthy_edges(cluster: &Cluster, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while healthy_edges(cluster) != n {
        assert!(
            Instant::now() < deadline,
            "the front never saw {n} healthy edges"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `docker stop edge-2`: once the front's health check takes it out of the ring, only its
/// URLs move — to edge-1, which misses each once (the origin sees each moved URL once) — and
/// edge-1's own URLs stay hits. `docker start edge-2`: its URLs come back to it (an empty
/// cache: the entries lived in the stopped process, so the origin sees each once more) while
/// edge-1 keeps answering its own from cache.
fn stopping_an_edge_moves_only_its_urls(cluster: &Cluster) {
    let paths: Vec<String> = (0..16)
        .map(|n| format!("/cache/move-{n}?cache_control=max-age%3D600&body=moving"))
        .collect();
    // A URL of edge-2's, apart from the 16: the sign that every front worker has it back.
    let probe = (0..64)
        .map(|n| format!("/cache/ring-probe-{n}?cache_control=max-age%3D600&body=probe"))
        .find(|p| answered_by(&cluster.get(p).unwrap()).0 == "edge-2")
        .expect("edge-2 owns one of 64 probe URLs");
    let owner: Vec<String> = paths
        .iter()
        .map(|p| answered_by(&cluster.get(p).unwrap()).0)
        .collect();
    let moved: Vec<usize> = (0..paths.len()).filter(|i| owner[*i] == "edge-2").collect();
    assert!(
        !moved.is_empty() && moved.len() < paths.len(),
        "both edges own some of 16 URLs: {owner:?}"
    );
    cluster.docker("stop", "edge-2").unwrap();
    wait_healthy_edges(cluster, 1);
    let before = v1_requests(cluster);
    for (i, path) in paths.iter().enumerate() {
        let first = answered_by(&cluster.get(path).unwrap());
        let second = answered_by(&cluster.get(path).unwrap());
        let expected_first = ("edge-1".to_string(), owner[i] == "edge-1");
        assert_eq!(first, expected_first, "{path} (owned by {})", owner[i]);
        assert_eq!(second, ("edge-1".to_string(), true), "{path}");
    }
    let refetched = v1_requests(cluster) - before;
    println!(
        "edge-2 stopped: {} of {} URLs moved to edge-1, origin saw {refetched}",
        moved.len(),
        paths.len()
    );
    assert_eq!(refetched, moved.len() as u64, "each moved URL once");

    cluster.docker("start", "edge-2").unwrap();
    cluster
        .wait_service_healthy("edge-2", Duration::from_secs(60))
        .unwrap();
    wait_healthy_edges(cluster, 2);
    // The health gauge moves before each front worker's ring is rebuilt: wait until the
    // probe URL lands on edge-2 ten times in a row (new connections, so both workers).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 10 {
        if answered_by(&cluster.get(&probe).unwrap()).0 == "edge-2" {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            assert!(
                Instant::now() < deadline,
                "the front's workers did not route edge-2's URLs back to it within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let before = v1_requests(cluster);
    for (i, path) in paths.iter().enumerate() {
        let (edge, hit) = answered_by(&cluster.get(path).unwrap());
        assert_eq!(edge, owner[i], "{path} back on its edge");
        assert_eq!(hit, owner[i] == "edge-1", "{path}");
    }
    let refetched = v1_requests(cluster) - before;
    println!(
        "edge-2 back: its {} URLs returned to it, origin saw {refetched}",
        moved.len()
    );
    assert_eq!(refetched, moved.len() as u64);
}

/// `docker restart edge-1` while a client keeps sending: the front's health checks and retries
/// (connect failure, reset; another edge) keep every request served. Tolerance: 1% errors.
fn edge_restart_keeps_front_serving(cluster: &Cluster) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let front = cluster.ports.front;
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], front));
            for n in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // Distinct paths: spread over both edges by the front's hash.
                let path = format!("/api/restart-{n}");
                match envoy_harness::http_request(addr, "GET", &path, &[], b"") {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    // Traffic is flowing before the restart.
    while ok.load(Ordering::SeqCst) < 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    cluster.docker("restart", "edge-1").unwrap();
    cluster
        .wait_service_healthy("edge-1", Duration::from_secs(60))
        .unwrap();
    // Serve until edge-1 takes traffic again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stat(cluster, 0, "http.edge.downstream_rq_completed") < 20 {
        assert!(
            Instant::now() < deadline,
            "edge-1 got no traffic after its restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("edge restart: {ok} served, {failed} failed");
    assert!(
        failed * 100 <= ok + failed,
        "{failed} of {} requests failed while edge-1 restarted",
        ok + failed
    );
}

/// The cluster with `--redis-cluster` (3 masters + 3 replicas): global limits exact through
/// the front with keys spread over the masters; then the master holding a limited user's
/// key is stopped under traffic — `failure_mode: allow` serves every request meanwhile (no
/// client error), and within 10 s of its replica's promotion the user's limit holds again
/// with the replicated count. The stopped node rejoins (as a replica) when started.
#[test]
fn compose_redis_cluster_failover() {
    let started = Instant::now();
    build_modules_and_images();
    println!("images ready after {:.0?}", started.elapsed());
    let cluster = Cluster::up_with(
        &format!("edgewise-rc-{}", std::process::id()),
        Ports::ephemeral().unwrap(),
        true,
    )
    .unwrap();
    println!(
        "cluster with a Redis Cluster healthy after {:.0?}",
        started.elapsed()
    );
    let key = |user: &str| format!("erl:edgewise|rule=global-user|header:x-user={user}");
    let user = |name: &str| {
        cluster
            .request("GET", "/global-user/x", &[("x-user", name)])
            .unwrap()
            .status
    };

    // Exact through the front: 3 per user per hour, users spread over the masters.
    let users: Vec<String> = (0..6).map(|n| format!("member-{n}")).collect();
    let slots = cluster.redis_cluster_masters().unwrap();
    let master_of =
        |slots: &[(u16, u16, String)], u: &str| master_serving(slots, &key(u)).map(String::from);
    let masters: std::collections::BTreeSet<Option<String>> =
        users.iter().map(|u| master_of(&slots, u)).collect();
    assert!(masters.len() >= 2, "6 users' keys on {masters:?}");
    for u in &users {
        let got: Vec<u16> = (0..4).map(|_| user(u)).collect();
        assert_eq!(got, [200, 200, 200, 429], "{u}");
    }

    // A user spends 2 of 3; steady traffic from fresh users whose keys share its master.
    let limited = "leader";
    assert_eq!([user(limited), user(limited)], [200, 200]);
    let master = master_of(&slots, limited).unwrap();
    let neighbours: Vec<String> = (0..)
        .map(|n| format!("neighbour-{n}"))
        .filter(|u| master_of(&slots, u).as_ref() == Some(&master))
        .take(40)
        .collect();
    // The replica has the user's count before its master goes.
    cluster
        .exec(&master, &["/usr/bin/redis-cli", "wait", "1", "2000"])
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (front, sent, bad) = (
        cluster.ports.front,
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let traffic = {
        let (stop, sent, bad) = (stop.clone(), sent.clone(), bad.clone());
        std::thread::spawn(move || {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], front));
            for u in neighbours.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = envoy_harness::http_request(
                    addr,
                    "GET",
                    "/global-user/x",
                    &[("x-user", u)],
                    b"",
                );
                sent.fetch_add(1, Ordering::SeqCst);
                // Each neighbour is asked at most 3 times in 120 requests spread over 40:
                // a 200 whether counted or failed open; anything else is a client error.
                if !matches!(r.map(|r| r.status), Ok(200) | Ok(429)) {
                    bad.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    cluster.docker("stop", &master).unwrap();
    let stopped = Instant::now();
    let new_master = loop {
        let now = cluster.redis_cluster_masters().unwrap_or_default();
        if let Some(m) = master_of(&now, limited).filter(|m| *m != master) {
            break m;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "no replica promoted for {master}'s slots within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let promoted = Instant::now();
    // The promoted replica has the user's count: 2 spent (read without spending; the
    // usage call fails like any other until the service follows the promotion). Probes
    // made before then may fail open — and may still be counted when the service's retry
    // lands after the edge stopped waiting: over, never under.
    let usage = format!("/v1/usage?domain=edgewise&rule=global-user&header%3Ax-user={limited}");
    let remaining = loop {
        let r = cluster.control("GET", &usage, "").unwrap();
        if r.status == 200 {
            let body: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
            break body["remaining"].as_u64().unwrap();
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "no usage answer within 10 s of the promotion: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let read_after = promoted.elapsed();
    assert!(
        remaining <= 1,
        "the replica lost the user's count: {remaining} of 3 left"
    );
    // Within 10 s of the promotion the user is refused again.
    let mut probes = Vec::new();
    while !probes.contains(&429) {
        probes.push(user(limited));
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "the limit did not hold again within 10 s of the promotion: {probes:?}"
        );
    }
    let held_after = promoted.elapsed();
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    println!(
        "redis cluster failover: {master} stopped; {new_master} promoted {:.1?} later; the count read {read_after:.1?} after the promotion ({remaining} of 3 left); limit held again {held_after:.1?} after it ({probes:?}); {} requests meanwhile, {} client errors",
        promoted - stopped,
        sent.load(Ordering::SeqCst),
        bad.load(Ordering::SeqCst)
    );
    assert_eq!(
        bad.load(Ordering::SeqCst),
        0,
        "failure_mode allow: no client errors"
    );

    // The old master comes back and rejoins; the cluster is whole again.
    cluster.docker("start", &master).unwrap();
    cluster
        .wait_service_healthy(&master, Duration::from_secs(60))
        .unwrap();
    cluster
        .wait_redis_cluster_ok(Duration::from_secs(60))
        .unwrap();
    // While it rejoins, a call may fail (the rule's 100 ms timeout; failure_mode allow
    // serves, spending nothing); within 10 s the user is refused again.
    let back = Instant::now();
    let mut failed_open = 0;
    while user(limited) != 429 {
        failed_open += 1;
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the limit did not hold within 10 s of {master} rejoining"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{master} rejoined; the limit held again ({failed_open} served meanwhile)");
    println!(
        "compose redis cluster phases done after {:.0?}",
        started.elapsed()
    );
}
