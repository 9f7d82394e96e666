//! edge_chain.wasm (the four filters composed in one VM) in our host: the edge order, local
//! replies that stop the chain, and paused requests that run the rest of the chain when
//! their filter resumes them.

use std::time::Duration;

use host_tests::{load_module, Action, FailureKind, Headers, PluginOptions, Stream, Vm, World};

fn start(world: &World, config: &str, workers: usize) -> Vec<Vm> {
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .plugin_name("edge_chain")
        .configuration(config);
    world
        .start_vms(&load_module("edge_chain"), &options, workers)
        .unwrap_or_else(|f| panic!("{f}"))
}

fn send(vm: &Vm, path: &str, user: &str) -> (Stream, Action) {
    let mut s = vm.stream();
    let action = s.send_request_headers(
        Headers::from([
            (":method", "GET"),
            (":path", path),
            (":authority", "shop.example.com"),
            ("x-user", user),
        ]),
        true,
    );
    (s, action)
}

const ALL_FOUR: &str = r#"{
  "rate_limit": {"rules":[{"name":"per_user","key":"header:x-user","limit":3,"window":"1m"}]},
  "response_cache": {"coalesce":{"wait":"2s"}},
  "weighted_router": {"routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":1}]}]},
  "circuit_breaker": {"upstream":"header:x-route-cluster","stats_upstreams":["api-v1","api-v2"],"trip":{"consecutive_failures":2}}
}"#;

#[test]
fn the_filters_run_in_the_edge_order_and_a_local_reply_stops_the_chain() {
    let world = World::new();
    let vms = start(&world, ALL_FOUR, 2);
    // A miss: limited, not cached yet, routed, through the (closed) breaker.
    let (mut first, action) = send(&vms[0], "/p", "ann");
    assert_eq!(action, Action::Continue);
    let upstream = first.upstream_request().expect("forwarded");
    assert_eq!(
        upstream.headers.get("x-route-cluster").as_deref(),
        Some("api-v1"),
        "the router ran"
    );
    first.respond(200, &[("cache-control", "max-age=60")], b"page");
    let r = first.response().unwrap();
    assert_eq!(
        r.header("cache-status").as_deref(),
        Some("edgewise; fwd=miss; stored")
    );
    assert!(
        r.header("ratelimit").is_some(),
        "the limiter's headers: {r:?}"
    );
    // A hit on the other worker: the cache answers (keyed on the route the router chose
    // before it); the breaker never sees it.
    let (hit, action) = send(&vms[1], "/p", "ann");
    assert_eq!(action, Action::Pause);
    assert!(hit.upstream_request().is_none());
    assert_eq!(hit.response().unwrap().body, b"page");
    assert!(hit.response().unwrap().header("ratelimit").is_some());
    // The limiter comes first: over the limit, even a cached page is refused.
    send(&vms[0], "/p", "ann");
    let (denied, _) = send(&vms[0], "/p", "ann");
    assert_eq!(denied.response().unwrap().status(), Some(429));
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=per_user;.;allowed"),
        Some(3)
    );
    assert_eq!(world.metric("edgewise.response_cache.hits"), Some(2));
    assert_eq!(
        world.metric("edgewise.weighted_router.route=.=api;.;cluster=.=api-v1;.;requests"),
        Some(3),
        "the router runs before the cache: every admitted request (the miss, two hits) was routed, the denial not"
    );
}

/// A request the cache paused (coalescing) and then let go to the origin runs the router
/// and the breaker before Envoy forwards it.
#[test]
fn a_resumed_request_runs_the_rest_of_the_chain() {
    let world = World::new();
    let vms = start(&world, ALL_FOUR, 2);
    let (mut leader, _) = send(&vms[0], "/hot", "ann");
    let (waiter, action) = send(&vms[1], "/hot", "bob");
    assert_eq!(action, Action::Pause, "a concurrent miss waits");
    assert!(waiter.upstream_request().is_none());
    leader.respond(200, &[("cache-control", "private")], b"mine");
    world.advance(Duration::from_millis(10)).unwrap();
    let upstream = waiter.upstream_request().expect("resumed to the origin");
    assert_eq!(
        upstream.headers.get("x-route-cluster").as_deref(),
        Some("api-v1"),
        "routed after the resume"
    );
    assert_eq!(
        world.metric("edgewise.weighted_router.route=.=api;.;cluster=.=api-v1;.;requests"),
        Some(2)
    );
}

/// The breaker in the chain opens on failures and answers with its fallback.
#[test]
fn the_breaker_sees_the_routed_cluster() {
    let world = World::new();
    let vms = start(&world, ALL_FOUR, 1);
    for user in ["a", "b"] {
        let (mut s, _) = send(&vms[0], "/fail", user);
        s.respond(503, &[], b"down");
    }
    let (open, action) = send(&vms[0], "/fail", "c");
    assert_eq!(action, Action::Pause);
    assert_eq!(open.response().unwrap().status(), Some(503));
    assert!(
        open.upstream_request().is_none(),
        "the open breaker answered"
    );
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=api-v1;.;opened"),
        Some(1)
    );
}

/// A canary that hangs (accepts requests, never answers): the bulkhead bounds the requests
/// stuck on it, the router fails the rest over instead of handing clients the breaker's
/// fallback, and the hung requests trip the breaker about one slow-call threshold later.
/// Client errors: only the requests in flight on the canary when it hung.
#[test]
fn a_hung_canary_costs_only_its_bulkhead_then_traffic_fails_over() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{
          "weighted_router": {"routes":[{"name":"api","failover":true,
            "targets":[{"cluster":"api-v1","weight":1},{"cluster":"api-v2","weight":1}]}]},
          "circuit_breaker": {"upstream":"header:x-route-cluster","max_in_flight":2,
            "failure":{"slow_call":"1s"},"trip":{"slow_call_rate":0.5,"min_requests":2,"window":"2s"},
            "open":{"duration":"30s"}}
        }"#,
        2,
    );
    let mut hung = Vec::new();
    // Sends n requests; the canary's are left hanging. Returns how many got a local reply.
    let run = |n: usize, hung: &mut Vec<Stream>| {
        let mut local_replies = 0;
        for i in 0..n {
            let (mut s, action) = send(&vms[i % 2], "/api/x", "u");
            if action != Action::Continue {
                local_replies += 1;
                continue;
            }
            let upstream = s.upstream_request().expect("forwarded");
            match upstream.headers.get("x-route-cluster").as_deref() {
                Some("api-v2") => hung.push(s), // the canary never answers
                _ => {
                    s.respond(200, &[], b"ok");
                }
            }
        }
        local_replies
    };
    let local_replies = run(20, &mut hung);
    assert_eq!(
        hung.len(),
        2,
        "no more than the bulkhead hang on the canary"
    );
    assert_eq!(local_replies, 0, "past it, requests fail over");
    assert!(
        world
            .metric("edgewise.weighted_router.route=.=api;.;failovers")
            .unwrap_or(0)
            >= 8
    );
    world.advance(Duration::from_millis(1_300)).unwrap();
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=unlisted;.;opened"),
        Some(1),
        "the hung requests tripped it while they hang"
    );
    // The hung requests time out (Envoy's route timeout) and free their places; the
    // breaker is open, so traffic keeps failing over.
    for mut s in hung.drain(..) {
        s.respond(504, &[], b"upstream request timeout");
    }
    assert_eq!(run(20, &mut hung), 0);
    assert!(hung.is_empty(), "none routed to the open canary");
    assert!(vms.iter().all(|vm| vm.failure().is_none()));
}

#[test]
fn invalid_chains_are_refused_naming_the_section_and_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{}"#, "edge_chain: invalid configuration at `<json>`"),
        (
            r#"{"rate_limiter":{}}"#,
            "edge_chain: invalid configuration at `rate_limiter`",
        ),
        (
            r#"{"rate_limit":{"rules":[{"name":"r","limit":0,"window":"1s"}]}}"#,
            "rate_limit: invalid configuration",
        ),
        (
            r#"{"weighted_router":{"routes":[{"targets":[]}]},"rate_limit":{"rules":[]}}"#,
            "invalid configuration",
        ),
    ];
    for (config, logged) in cases {
        let world = World::new();
        let failure = world
            .start_vm(
                &load_module("edge_chain"),
                &PluginOptions::new().configuration(config),
            )
            .err()
            .unwrap_or_else(|| panic!("accepted: {config}"));
        assert_eq!(failure.kind, FailureKind::Rejected, "{config}");
        assert!(
            !world.logs_containing(logged).is_empty(),
            "{config}: expected {logged:?} in {:?}",
            world.logs()
        );
    }
}

/// Router and breaker with `half_open.probe` in one VM: once api-v2's breaker opens, every
/// request fails over to api-v1 — past the open time too, while the breaker's own probe
/// runs — and none is sent to api-v2 as a probe; a healthy probe brings api-v2 back.
#[test]
fn with_active_probes_no_client_is_sent_to_a_broken_target() {
    let world = World::new();
    world.add_cluster("api-v1");
    world.add_cluster("api-v2");
    let config = r#"{
      "weighted_router": {"routes":[{"name":"api","failover":true,
        "targets":[{"cluster":"api-v1","weight":1},{"cluster":"api-v2","weight":1}]}]},
      "circuit_breaker": {"upstream":"header:x-route-cluster","trip":{"consecutive_failures":2},
        "open":{"duration":"5s"},"half_open":{"probes":1,"probe":{"path":"/health","timeout":"1s"}}}
    }"#;
    let vms = start(&world, config, 2);
    // Round robin: api-v2 answers 503 until its breaker opens.
    let mut to_v2 = 0;
    for i in 0..8 {
        let (mut s, _) = send(&vms[i % 2], &format!("/p/{i}"), "ann");
        let cluster = s
            .upstream_request()
            .unwrap()
            .header("x-route-cluster")
            .unwrap();
        if cluster == "api-v2" {
            to_v2 += 1;
            s.respond(503, &[], b"");
        } else {
            s.respond(200, &[], b"");
        }
    }
    assert_eq!(
        to_v2, 2,
        "two failures open api-v2's breaker, then failover"
    );
    let routed = |label: &str| {
        for i in 0..6 {
            let (mut s, _) = send(&vms[i % 2], &format!("/q/{i}"), "bob");
            let upstream = s.upstream_request().expect(label);
            assert_eq!(
                upstream.header("x-route-cluster").as_deref(),
                Some("api-v1"),
                "{label}"
            );
            s.respond(200, &[], b"");
        }
    };
    routed("open");
    world.advance(Duration::from_millis(5_200)).unwrap();
    let calls = world.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].upstream, "api-v2");
    routed("probing");
    world
        .respond_http_call(calls[0].id, 200, &[], b"ok")
        .unwrap();
    let mut back = 0;
    for i in 0..6 {
        let (mut s, _) = send(&vms[i % 2], &format!("/r/{i}"), "cat");
        if s.upstream_request()
            .unwrap()
            .header("x-route-cluster")
            .as_deref()
            == Some("api-v2")
        {
            back += 1;
        }
        s.respond(200, &[], b"");
    }
    assert!(back > 0, "api-v2 serves again after the healthy probe");
}
