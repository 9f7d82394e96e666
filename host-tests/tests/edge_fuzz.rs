//! An adversary property test of the composed module (edge_chain.wasm: rate limit → router
//! → cache → breaker) through our host, on two worker VMs. Clients repeat keyed and varied
//! fields, force the canary with overrides (sometimes repeated), send sticky values, long
//! and many distinct key values, conditionals, Range and bodies; the configuration changes
//! mid-run and host calls fail now and then. The origin model answers per (routed cluster,
//! device and language as a framework reads them — the last line —, user for private pages).
//!
//! Invariants: every page a client receives is the one the origin model gives *that*
//! request routed where the router sent it; descriptor values sent to the rate limit service
//! are bounded; shared data and stats stay bounded; no VM traps; the cache still answers.
//!
//! CI runs a fixed-seed slice; `cargo xtask fuzz edge [steps] [seed]` runs a long one
//! (EDGEWISE_EDGE_FUZZ_STEPS, EDGEWISE_EDGE_FUZZ_SEED).

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use host_tests::{load_module, GrpcEvent, Headers, PluginOptions, Status, Stream, Vm, World};
use prost::Message;

/// splitmix64: a small seeded generator, so a failing run is replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const ROUTER: &str = r#""weighted_router": {"routes":[
    {"name":"sticky","match":{"path_prefix":"/s/"},"strategy":"hash","hash_on":"header:x-user",
     "targets":[{"cluster":"api-v1","weight":1},{"cluster":"api-v2","weight":1}]},
    {"name":"api","targets":[{"cluster":"api-v1","weight":3},{"cluster":"api-v2","weight":1}],
     "overrides":[{"header":"x-canary","equals":"always","cluster":"api-v2"}]}]}"#;

const BREAKER: &str = r#""circuit_breaker": {"upstream":"header:x-route-cluster",
    "trip":{"consecutive_failures":4},"open":{"duration":"2s"},
    "half_open":{"probes":1,"probe":{"path":"/health","timeout":"500ms"}}}"#;

/// Two configurations the run switches between: both key the cache on x-device (a
/// configuration that did not would be a different origin contract), the second has fewer
/// rate-limit rules (a waiting request's rule indices mean nothing in it).
fn configs() -> [String; 2] {
    [
        format!(
            r#"{{"rate_limit": {{"rules":[
                {{"name":"per-user","key":"header:x-user","limit":100000,"window":"1m","max_keys":256}},
                {{"name":"global","match":{{"path_prefix":"/g/"}},"key":"header:x-user",
                  "global":{{"cluster":"ratelimit","timeout":"50ms","failure_mode":"allow"}}}}],
                "response_headers":"ietf"}},
              {ROUTER},
              "response_cache": {{"max_bytes":65536,"max_entry_bytes":4096,"key":{{"headers":["x-device"]}},
                "coalesce":{{"wait":"1s"}}}},
              {BREAKER}}}"#
        ),
        format!(
            r#"{{"rate_limit": {{"rules":[
                {{"name":"global","match":{{"path_prefix":"/g/"}},"key":"header:x-user",
                  "global":{{"cluster":"ratelimit","timeout":"50ms","failure_mode":"deny"}}}}]}},
              {ROUTER},
              "response_cache": {{"max_bytes":65536,"max_entry_bytes":4096,"key":{{"headers":["x-device"]}},
                "cache_status":"b","unkeyed_headers":{{"action":"strip"}}}},
              {BREAKER}}}"#
        ),
    ]
}

const PATHS: &[&str] = &["/p/1", "/p/2", "/v/1", "/s/1", "/g/1", "/u/1", "/p/1?q=1"];
const CLUSTERS: [&str; 2] = ["api-v1", "api-v2"];

/// The last line of a field, as most frameworks read a repeated one; "-" when absent.
fn last_line(headers: &Headers, name: &str) -> String {
    headers
        .pairs()
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .next_back()
        .unwrap_or_else(|| "-".into())
}

/// The page the origin gives `request` (as it reaches it, or as the client sent it with the
/// router's cluster): path, cluster, device, language (only /v/ varies on it), user (only
/// the private /u/ pages).
fn page(request: &Headers, cluster: &str) -> String {
    let path = request.get(":path").unwrap_or_default();
    let lang = if path.starts_with("/v/") {
        last_line(request, "accept-language")
    } else {
        "-".into()
    };
    let user: String = if path.starts_with("/u/") {
        let u = last_line(request, "x-user");
        u.chars().take(16).collect()
    } else {
        "-".into()
    };
    format!(
        "page:{path}:{cluster}:{}:{lang}:{user}",
        last_line(request, "x-device")
    )
}

/// The origin model's answer to a forwarded request: status, headers, body.
fn origin(rng: &mut Rng, request: &Headers) -> (u16, Vec<(String, String)>, String) {
    let cluster = request
        .get("x-route-cluster")
        .unwrap_or_else(|| "none".into());
    let path = request.get(":path").unwrap_or_default();
    if request.get(":method").as_deref() == Some("POST") {
        return (204, Vec::new(), String::new());
    }
    if rng.chance(3) {
        return (503, Vec::new(), "busy".into());
    }
    let body = page(request, &cluster);
    let etag = format!("\"e{}\"", body.len() % 7);
    let mut headers = vec![
        (
            "cache-control".to_string(),
            if path.starts_with("/u/") {
                "private, max-age=60".to_string()
            } else {
                "max-age=60".to_string()
            },
        ),
        ("etag".to_string(), etag.clone()),
    ];
    if path.starts_with("/v/") {
        headers.push(("vary".into(), "Accept-Language".into()));
    }
    if request.get("if-none-match").as_deref() == Some(etag.as_str()) && rng.chance(50) {
        return (304, headers, String::new());
    }
    if request.contains("range") && rng.chance(50) {
        headers.push(("content-range".into(), format!("bytes 0-3/{}", body.len())));
        return (206, headers, body.chars().take(4).collect());
    }
    (200, headers, body)
}

/// A client request, as an adversary might shape it.
fn client_request(rng: &mut Rng, serial: u64) -> Headers {
    let method = match rng.below(20) {
        0 => "HEAD",
        1 => "POST",
        _ => "GET",
    };
    let mut h = Headers::from([
        (":method", method),
        (":path", *rng.pick(PATHS)),
        (":authority", "shop.example.com"),
    ]);
    // Users: a few regulars, and long, one-off values (a key spray).
    if rng.chance(10) {
        let len = 65 + rng.below(3_000) as usize;
        h.add("x-user", format!("{serial:08}{}", "z".repeat(len)));
    } else if rng.chance(90) {
        h.add("x-user", format!("u{}", rng.below(4)));
    }
    for _ in 0..rng.below(3) {
        h.add("x-device", *rng.pick(&["desktop", "mobile"]));
    }
    for _ in 0..rng.below(3) {
        h.add("accept-language", *rng.pick(&["en", "fr"]));
    }
    match rng.below(10) {
        0 | 1 => h.add("x-canary", "always"),
        2 => {
            h.add("x-canary", "always");
            h.add("x-canary", "never");
        }
        3 => {
            h.add("x-canary", "never");
            h.add("x-canary", "always");
        }
        _ => {}
    }
    if rng.chance(10) {
        h.add("if-none-match", *rng.pick(&["\"e1\"", "\"e3\"", "\"zz\""]));
    }
    if rng.chance(10) {
        h.add("range", "bytes=0-3");
    }
    if rng.chance(5) {
        h.add("cache-control", "no-cache");
    }
    if rng.chance(5) {
        h.add("x-forwarded-host", "evil.example");
    }
    h
}

struct InFlight {
    stream: Stream,
    /// The request as the client sent it.
    sent: Headers,
    /// The cluster the router chose (read once the request headers were decided).
    cluster: Option<String>,
    answered: bool,
}

/// What the client got must be the page the origin gives this very request.
fn check(f: &InFlight, context: &str) {
    let Some(response) = f.stream.response() else {
        return;
    };
    let body = response.body_text();
    if !body.starts_with("page:") {
        return; // 503s, fallbacks, 429s, 304s and HEADs carry no page
    }
    // The cluster the router chose for this request. A client that forced the canary (on the
    // api route; the sticky route has no override) must get the canary's page; without a routing decision (a cache answering before the
    // router, as before 0.3.0) the page's own cluster stands, and the rest of it is checked.
    let forced = !f.sent.get(":path").unwrap_or_default().starts_with("/s/")
        && f.sent
            .pairs()
            .iter()
            .find(|(k, _)| k == "x-canary")
            .is_some_and(|(_, v)| v.as_slice() == b"always");
    let page_cluster = body.split(':').nth(2).unwrap_or("").to_string();
    let cluster = f.cluster.clone().unwrap_or(page_cluster);
    assert!(
        CLUSTERS.contains(&cluster.as_str()),
        "routed to {cluster:?} ({context})"
    );
    if forced {
        assert_eq!(
            cluster, "api-v2",
            "a client that forced the canary was served from elsewhere: router {:?}, sent {:?} ({context})",
            f.cluster,
            f.sent
        );
    }
    let expected = page(&f.sent, &cluster);
    match response.status() {
        Some(206) => assert!(
            expected.starts_with(&body),
            "206 {body:?} is not part of {expected:?} ({context})"
        ),
        _ => assert_eq!(
            body, expected,
            "a client got another request's page; sent {:?} ({context})",
            f.sent
        ),
    }
}

const FAULTY_CALLS: [&str; 4] = [
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_get_current_time_nanoseconds",
    "proxy_increment_metric",
];

/// One seeded run of `steps` steps; returns the cache hits it saw.
fn run(seed: u64, steps: usize) -> i64 {
    let mut rng = Rng(seed);
    let world = World::new();
    for cluster in ["api-v1", "api-v2", "ratelimit"] {
        world.add_cluster(cluster);
    }
    let configs = configs();
    let mut current = 0;
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .plugin_name("edge_chain")
        .configuration(&configs[current]);
    let vms: Vec<Vm> = world
        .start_vms(&load_module("edge_chain"), &options, 2)
        .unwrap_or_else(|f| panic!("{f}"));
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut descriptor_values = 0u64;
    for step in 0..steps {
        let context = format!("seed {seed}, step {step}, config {current}");
        match rng.below(20) {
            // A new request (at most 6 in flight).
            0..=8 if in_flight.len() < 6 => {
                let sent = client_request(&mut rng, step as u64);
                let mut stream = vms[rng.below(2) as usize].stream();
                let with_body = sent.get(":method").as_deref() == Some("POST");
                stream
                    .try_send_request_headers(sent.clone(), !with_body)
                    .unwrap_or_else(|f| panic!("trap: {f} ({context})"));
                if with_body {
                    stream
                        .try_send_request_body(b"form=1", true)
                        .unwrap_or_else(|f| panic!("trap: {f} ({context})"));
                }
                in_flight.push(InFlight {
                    stream,
                    sent,
                    cluster: None,
                    answered: false,
                });
            }
            // The origin answers one forwarded request.
            9..=12 if !in_flight.is_empty() => {
                let i = rng.below(in_flight.len() as u64) as usize;
                let f = &mut in_flight[i];
                if let (false, Some(forwarded)) = (f.answered, f.stream.upstream_request()) {
                    f.answered = true;
                    let (status, headers, body) = origin(&mut rng, &forwarded.headers);
                    let mut all = Headers::from([(":status", status.to_string())]);
                    for (k, v) in &headers {
                        all.add(k, v);
                    }
                    let empty = body.is_empty()
                        || forwarded.headers.get(":method").as_deref() == Some("HEAD");
                    if !empty {
                        all.add("content-length", body.len().to_string());
                    }
                    f.stream
                        .try_send_response_headers(all, empty)
                        .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
                    if !empty {
                        f.stream
                            .try_send_response_body(body.as_bytes(), true)
                            .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
                    }
                }
            }
            // The rate limit service answers (or fails) pending calls; every descriptor
            // value it is sent is bounded.
            13 => {
                for call in world.pending_grpc_calls() {
                    let request = RateLimitRequest::decode(call.messages[0].as_slice())
                        .unwrap_or_else(|e| panic!("undecodable call: {e} ({context})"));
                    for entry in request.descriptors.iter().flat_map(|d| &d.entries) {
                        descriptor_values += 1;
                        assert!(
                            entry.value.len() <= 64,
                            "a {}-byte descriptor value reached the service ({context})",
                            entry.value.len()
                        );
                    }
                    let event = if rng.chance(10) {
                        GrpcEvent::Close {
                            status: 14,
                            message: "unavailable".into(),
                        }
                    } else {
                        let code = if rng.chance(20) {
                            Code::OverLimit
                        } else {
                            Code::Ok
                        };
                        let response = RateLimitResponse {
                            overall_code: code as i32,
                            statuses: request
                                .descriptors
                                .iter()
                                .map(|_| DescriptorStatus {
                                    code: code as i32,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        };
                        GrpcEvent::Message(response.encode_to_vec())
                    };
                    let close = matches!(event, GrpcEvent::Message(_));
                    world
                        .grpc_event(call.id, event)
                        .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
                    if close {
                        let _ = world.grpc_event(
                            call.id,
                            GrpcEvent::Close {
                                status: 0,
                                message: String::new(),
                            },
                        );
                    }
                }
            }
            // Callouts (the breaker's active probes) are answered healthy.
            14 => {
                for call in world.pending_http_calls() {
                    world
                        .respond_http_call(call.id, 200, &[], b"ok")
                        .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
                }
            }
            // The configuration changes on every worker.
            15 if rng.chance(10) => {
                current = 1 - current;
                for vm in &vms {
                    vm.reconfigure(&configs[current])
                        .unwrap_or_else(|e| panic!("reconfigure: {e} ({context})"));
                }
            }
            // A host call fails a few times.
            16 if rng.chance(20) => {
                let status = *rng.pick(&[
                    Status::NotFound,
                    Status::CasMismatch,
                    Status::InternalFailure,
                ]);
                let call = *rng.pick(&FAULTY_CALLS);
                world.fail_host_call(call, status, 1 + rng.below(3) as u32);
            }
            // Time passes (ticks: queues, deadlines, probes, waiting requests).
            _ => {
                let by = Duration::from_millis(rng.below(1_500));
                world
                    .advance(by)
                    .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
            }
        }
        // The router's choice, once the request headers are decided.
        for f in in_flight.iter_mut() {
            if f.cluster.is_none() {
                f.cluster = f.stream.request_headers().get("x-route-cluster");
            }
        }
        // Finished exchanges are checked and ended.
        in_flight.retain_mut(|f| {
            let done = f.stream.response().is_some_and(|r| r.complete) || f.stream.is_reset();
            if done {
                check(f, &context);
                f.stream
                    .try_finish()
                    .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
            }
            !done
        });
    }
    for mut f in in_flight.drain(..) {
        let _ = f.stream.try_finish();
    }
    world.clear_host_call_faults();
    for vm in &vms {
        assert!(vm.failure().is_none(), "{:?} (seed {seed})", vm.failure());
    }
    // Bounded whatever the clients sent: the cache's slots and fill locks, the limiter's
    // key table, remembered denials and leases, the breakers, the seed.
    let (keys, bytes) = world.shared_data_footprint("edgewise");
    assert!(keys <= 1_200, "{keys} shared-data keys (seed {seed})");
    assert!(bytes <= 1 << 20, "{bytes} shared-data bytes (seed {seed})");
    let stats = world.metrics().len();
    assert!(stats <= 200, "{stats} stats (seed {seed})");
    assert!(
        descriptor_values > 0 || steps < 200,
        "the service was never asked"
    );
    world.metric("edgewise.response_cache.hits").unwrap_or(0)
}

#[test]
fn no_client_is_served_a_page_the_origin_would_not_have_given_it() {
    let steps: usize = std::env::var("EDGEWISE_EDGE_FUZZ_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6_000);
    let seed: u64 = std::env::var("EDGEWISE_EDGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xed6e);
    let runs = 6;
    let mut hits = 0;
    for run_index in 0..runs {
        hits += run(seed.wrapping_add(run_index as u64), steps / runs);
    }
    assert!(
        hits > 0,
        "the cache never answered: the property would hold vacuously"
    );
    println!("{steps} steps, {hits} hits");
}
