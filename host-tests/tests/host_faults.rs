//! Host faults: every filter and edge_chain, with each host call they rely on failing with
//! each status Envoy can return, and with the wall clock stepping back. The documented
//! behaviour — fail open: the request goes on to the upstream — must hold, and no VM traps
//! (the SDK's wrappers would panic on an unexpected status; the filters call the ABI
//! directly for these calls).

use std::time::Duration;

use host_tests::{load_module, Action, Headers, PluginOptions, Status, Vm, World};

/// The host calls whose failure each filter must survive.
const CALLS: [&str; 8] = [
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_get_current_time_nanoseconds",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_property",
    "proxy_log",
    "proxy_define_metric",
];

/// Statuses Envoy's host returns for these calls besides Ok (proxy-wasm-cpp-host
/// exports.cc: missing keys, bad arguments, memory it cannot write, internal failures,
/// unimplemented calls), and the CAS mismatch.
const STATUSES: [Status; 7] = [
    Status::NotFound,
    Status::BadArgument,
    Status::SerializationFailure,
    Status::InvalidMemoryAccess,
    Status::CasMismatch,
    Status::InternalFailure,
    Status::Unimplemented,
];

const MODULES: [(&str, &str); 5] = [
    (
        "rate_limit",
        r#"{"rules":[{"name":"r","key":"client_ip","limit":1000,"window":"1s"}]}"#,
    ),
    ("response_cache", "{}"),
    (
        "circuit_breaker",
        r#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":3}}"#,
    ),
    (
        "weighted_router",
        r#"{"routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":1},{"cluster":"api-v2","weight":1}],"strategy":"least_requests","failover":true}]}"#,
    ),
    (
        "edge_chain",
        r#"{"rate_limit":{"rules":[{"name":"r","key":"client_ip","limit":1000,"window":"1s"}]},"response_cache":{},"weighted_router":{"routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":1}],"failover":true}]},"circuit_breaker":{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":3}}}"#,
    ),
];

fn start(world: &World, module: &str, config: &str) -> Vm {
    world.add_cluster("api-v1");
    world.add_cluster("api-v2");
    world
        .start_vm(
            &load_module(module),
            &PluginOptions::new()
                .vm_id("edgewise")
                .plugin_name(module)
                .route_name("api")
                .configuration(config),
        )
        .unwrap_or_else(|f| panic!("{module}: {f}"))
}

/// One request through `vm`; the upstream answers 200 (or 500) when reached. Returns whether
/// the request reached the upstream; panics on a trap.
fn request(vm: &Vm, path: &str, status: u16, context: &str) -> bool {
    let mut s = vm.stream();
    let action = s
        .try_send_request_headers(
            Headers::from([
                (":method", "GET"),
                (":path", path),
                (":authority", "shop.example.com"),
                ("x-route-cluster", "api-v1"),
            ]),
            true,
        )
        .unwrap_or_else(|f| panic!("trap on request headers ({context}): {f}"));
    let reached = action == Action::Continue && s.upstream_request().is_some();
    if reached {
        let mut h = Headers::from([(":status", status.to_string())]);
        h.add("cache-control", "max-age=60");
        h.add("content-length", "2");
        s.try_send_response_headers(h, false)
            .unwrap_or_else(|f| panic!("trap on response headers ({context}): {f}"));
        s.try_send_response_body(b"ok", true)
            .unwrap_or_else(|f| panic!("trap on response body ({context}): {f}"));
    }
    s.try_finish()
        .unwrap_or_else(|f| panic!("trap at stream end ({context}): {f}"));
    reached
}

/// Each call failing with each status, from the first request on (and at configure time for
/// the calls made there): the request still reaches the upstream and nothing traps.
#[test]
fn every_filter_fails_open_on_every_host_call_status() {
    for (module, config) in MODULES {
        for call in CALLS {
            for status in STATUSES {
                let context = format!("{module}, {call} -> {status:?}");
                let world = World::new();
                if call == "proxy_define_metric" {
                    // Metrics are defined at configure time: the plugin must still start.
                    world.fail_host_call(call, status, u32::MAX);
                }
                let vm = start(&world, module, config);
                world.fail_host_call(call, status, u32::MAX);
                for i in 0..3 {
                    assert!(
                        request(&vm, &format!("/p{i}"), 200, &context),
                        "{context}: request {i} did not reach the upstream"
                    );
                }
                if module == "rate_limit"
                    && call == "proxy_get_shared_data"
                    && status != Status::NotFound
                {
                    // The fault reached the filter's fail-open branch (not a silent success).
                    assert_eq!(
                        world.metric("edgewise.rate_limit.rule=.=r;.;errors"),
                        Some(3),
                        "{context}"
                    );
                }
                // And once the host is well again, the filter works as before.
                world.clear_host_call_faults();
                assert!(request(&vm, "/after", 200, &context), "{context}");
                assert!(vm.failure().is_none(), "{context}");
            }
        }
    }
}

/// The wall clock steps back an hour (NTP correcting it) while a client is limited: inside
/// the filter time neither runs backwards nor repeats the hour — the client's budget refills
/// at its pace as if nothing happened, and a breaker opened before the step half-opens after
/// its open duration of real progress.
#[test]
fn a_clock_stepping_back_neither_reverses_nor_repeats_time() {
    let world = World::new();
    let vm = start(
        &world,
        "rate_limit",
        r#"{"rules":[{"name":"r","limit":2,"window":"10s"}]}"#,
    );
    assert!(request(&vm, "/", 200, "first"));
    assert!(request(&vm, "/", 200, "second"));
    assert!(!request(&vm, "/", 200, "limited"));
    world.step_clock_back(Duration::from_secs(3600));
    assert!(!request(
        &vm,
        "/",
        200,
        "still limited right after the step"
    ));
    // 5 s of real progress after the step refill one token (2 per 10 s), as without it.
    world.advance(Duration::from_secs(5)).unwrap();
    let admitted = (0..3).filter(|_| request(&vm, "/", 200, "after")).count();
    assert_eq!(admitted, 1, "one token after 5 s, not none for an hour");

    let world = World::new();
    let vm = start(
        &world,
        "circuit_breaker",
        r#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":2},"open":{"duration":"5s"},"half_open":{"probes":1}}"#,
    );
    assert!(request(&vm, "/", 500, "fail 1"));
    assert!(request(&vm, "/", 500, "fail 2"));
    assert!(!request(&vm, "/", 200, "open"));
    world.step_clock_back(Duration::from_secs(3600));
    assert!(!request(&vm, "/", 200, "open after the step"));
    world.advance(Duration::from_secs(6)).unwrap();
    assert!(
        request(&vm, "/", 200, "probe"),
        "half-open after 5 s of progress, not an hour"
    );
}

/// With shared data failing, the router still splits by weight (per-worker round robin) for
/// `least_requests` and a shared cursor, instead of sending everything to one target.
#[test]
fn the_router_keeps_splitting_when_shared_data_fails() {
    for strategy in [
        r#""strategy":"least_requests""#,
        r#""strategy":"weighted_round_robin","shared_cursor":true"#,
    ] {
        let world = World::new();
        let config = format!(
            r#"{{"routes":[{{"name":"api","targets":[{{"cluster":"api-v1","weight":1}},{{"cluster":"api-v2","weight":1}}],{strategy}}}]}}"#
        );
        let vm = start(&world, "weighted_router", &config);
        world.fail_host_call("proxy_get_shared_data", Status::InternalFailure, u32::MAX);
        let mut v2 = 0;
        for i in 0..10 {
            let mut s = vm.stream();
            s.try_send_request_headers(
                Headers::from([(":method", "GET"), (":path", "/"), (":authority", "a")]),
                true,
            )
            .unwrap_or_else(|f| panic!("trap ({strategy}, request {i}): {f}"));
            let sent = s.upstream_request().expect("routed");
            if sent.header("x-route-cluster").as_deref() == Some("api-v2") {
                v2 += 1;
            }
            s.respond(200, &[], b"ok");
        }
        assert_eq!(v2, 5, "{strategy}: 1:1 split kept");
    }
}

/// Request- and response-path calls (header maps, bodies) failing
/// with each status Envoy's host returns for them (NotFound for a missing value, BadArgument
/// for a map or buffer not reachable now, InternalFailure, InvalidMemoryAccess): no filter
/// traps, and the request still reaches the upstream (fail open).
#[test]
fn every_filter_survives_failing_header_body_and_reply_calls() {
    // (proxy_http_call stays with the SDK, which must register the callout's token: Envoy
    // returns BadArgument or InternalFailure for it, which the SDK hands back as errors.)
    const STREAM_CALLS: [&str; 8] = [
        "proxy_get_header_map_value",
        "proxy_replace_header_map_value",
        "proxy_add_header_map_value",
        "proxy_remove_header_map_value",
        "proxy_get_header_map_pairs",
        "proxy_set_header_map_pairs",
        "proxy_get_buffer_bytes",
        "proxy_set_buffer_bytes",
    ];
    const STREAM_STATUSES: [Status; 4] = [
        Status::NotFound,
        Status::BadArgument,
        Status::InternalFailure,
        Status::InvalidMemoryAccess,
    ];
    let mut traps = Vec::new();
    for (module, config) in MODULES {
        for call in STREAM_CALLS {
            for status in STREAM_STATUSES {
                let context = format!("{module}, {call} -> {status:?}");
                let world = World::new();
                let vm = start(&world, module, config);
                world.fail_host_call(call, status, u32::MAX);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (0..3).all(|i| request(&vm, &format!("/p{i}"), 200, &context))
                }));
                match outcome {
                    Ok(true) if vm.failure().is_none() => {}
                    Ok(reached) => {
                        traps.push(format!("{context}: reached {reached}, {:?}", vm.failure()))
                    }
                    Err(_) => traps.push(format!("{context}: trapped")),
                }
            }
        }
    }
    assert!(
        traps.is_empty(),
        "{} failures:\n{}",
        traps.len(),
        traps.join("\n")
    );
}

/// A local reply the host refuses (the limiter's 429, the breaker's fallback): the request
/// goes on to the upstream rather than hang, and nothing traps.
#[test]
fn a_refused_local_reply_lets_the_request_through() {
    for (module, config, setup_status) in [
        (
            "rate_limit",
            r#"{"rules":[{"name":"r","key":"client_ip","limit":1,"window":"1h","burst":1}]}"#,
            200,
        ),
        (
            "circuit_breaker",
            r#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":1}}"#,
            500,
        ),
    ] {
        for status in [Status::BadArgument, Status::InternalFailure] {
            let context = format!("{module}, proxy_send_local_response -> {status:?}");
            let world = World::new();
            let vm = start(&world, module, config);
            // The first request uses the budget (or opens the breaker)...
            assert!(request(&vm, "/a", setup_status, &context));
            world.fail_host_call("proxy_send_local_response", status, u32::MAX);
            // ...the next would get a local reply, which the host refuses.
            assert!(request(&vm, "/b", 200, &context), "{context}");
            assert!(vm.failure().is_none(), "{context}");
            world.clear_host_call_faults();
            assert!(
                !request(&vm, "/c", 200, &context),
                "{context}: replied again"
            );
        }
    }
}
