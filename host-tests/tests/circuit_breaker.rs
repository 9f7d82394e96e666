//! circuit_breaker.wasm in our host: several VMs of one world, on the virtual clock.

use std::time::Duration;

use host_tests::{
    load_module, Action, FailureKind, Headers, LogLevel, PluginOptions, Stream, Vm, World,
};

fn start(world: &World, config: &str, workers: usize) -> Vec<Vm> {
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .plugin_name("circuit_breaker")
        .route_name("payments")
        .configuration(config);
    world
        .start_vms(&load_module("circuit_breaker"), &options, workers)
        .unwrap_or_else(|f| panic!("{f}"))
}

fn request(extra: &[(&str, &str)]) -> Headers {
    let mut h = Headers::from([
        (":method", "GET"),
        (":path", "/pay"),
        (":authority", "pay.example.com"),
    ]);
    for (k, v) in extra {
        h.add(k, v);
    }
    h
}

/// A request; if it reaches the upstream, the upstream answers `status`. Returns the
/// stream and whether the upstream saw it.
fn call(vm: &Vm, status: u16, extra: &[(&str, &str)]) -> (Stream, bool) {
    let mut s = vm.stream();
    let forwarded = s.send_request_headers(request(extra), true) == Action::Continue;
    if forwarded {
        s.respond(status, &[], b"");
    }
    s.finish();
    (s, forwarded)
}

fn circuit(stream: &Stream) -> Option<String> {
    stream
        .response()
        .and_then(|r| r.header("x-edgewise-circuit"))
}

#[test]
fn consecutive_failures_open_the_breaker_and_the_fallback_is_served() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"trip":{"consecutive_failures":3},"fallback":{"status":503,"body":"later\n","headers":{"x-fallback":"1"}}}"#,
        2,
    );
    for i in 0..3 {
        assert!(
            call(&vms[i % 2], 500, &[]).1,
            "closed: reaches the upstream"
        );
    }
    for i in 0..4 {
        let (s, forwarded) = call(&vms[i % 2], 200, &[]);
        assert!(!forwarded, "open: the upstream sees nothing");
        let reply = s.response().unwrap();
        assert_eq!(
            (
                reply.status(),
                reply.body_text(),
                reply.header("x-fallback")
            ),
            (Some(503), "later\n".into(), Some("1".into()))
        );
        assert_eq!(circuit(&s).as_deref(), Some("open"));
    }
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;state"),
        Some(1)
    );
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;opened"),
        Some(1)
    );
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;rejected"),
        Some(4)
    );
    let warnings: Vec<_> = world
        .logs()
        .into_iter()
        .filter(|l| l.level == LogLevel::Warn)
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "logged once, by the worker that opened it: {warnings:?}"
    );
    assert!(
        warnings[0].message.contains("payments opened for 5000ms"),
        "{}",
        warnings[0].message
    );
}

#[test]
fn failure_rate_over_the_window_opens_it() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"trip":{"consecutive_failures":1000,"failure_rate":0.5,"min_requests":10,"window":"10s"}}"#,
        1,
    );
    for i in 0..9 {
        call(&vms[0], if i % 2 == 0 { 503 } else { 200 }, &[]);
    }
    assert!(
        call(&vms[0], 503, &[]).1,
        "10th call still goes through and trips it (6/10 failed)"
    );
    assert!(!call(&vms[0], 200, &[]).1);
}

#[test]
fn slow_calls_open_it() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"failure":{"slow_call":"1s"},"trip":{"consecutive_failures":1000,"slow_call_rate":1.0,"min_requests":3}}"#,
        1,
    );
    for _ in 0..3 {
        let mut s = vms[0].stream();
        assert_eq!(s.send_request_headers(request(&[]), true), Action::Continue);
        world.advance(Duration::from_millis(1500)).unwrap();
        s.respond(200, &[], b"");
    }
    assert!(!call(&vms[0], 200, &[]).1, "3 of 3 calls were slow");
}

#[test]
fn half_open_admits_exactly_the_probes_then_closes() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"trip":{"consecutive_failures":1},"open":{"duration":"5s"},"half_open":{"probes":3}}"#,
        4,
    );
    call(&vms[0], 500, &[]);
    world.advance(Duration::from_secs(5)).unwrap();
    // Hold 3 probes open on different workers; everything else is rejected meanwhile.
    let mut probes = Vec::new();
    for i in 0..6 {
        let mut s = vms[i % 4].stream();
        if s.send_request_headers(request(&[]), true) == Action::Continue {
            probes.push(s);
        } else {
            assert_eq!(circuit(&s).as_deref(), Some("half-open"));
        }
    }
    assert_eq!(probes.len(), 3);
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;state"),
        Some(2)
    );
    for mut p in probes {
        p.respond(200, &[], b"");
    }
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;state"),
        Some(0)
    );
    assert!(world
        .logs()
        .iter()
        .any(|l| l.level == LogLevel::Info && l.message.contains("payments closed")));
    assert!(
        (0..10).all(|i| call(&vms[i % 4], 200, &[]).1),
        "traffic flows again"
    );
}

#[test]
fn a_failed_probe_reopens_with_backoff() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"trip":{"consecutive_failures":1},"open":{"duration":"2s","backoff":3.0,"max_duration":"10s"},"half_open":{"probes":1}}"#,
        1,
    );
    call(&vms[0], 500, &[]);
    let mut opened_for = Vec::new();
    for _ in 0..3 {
        let open_at = world.elapsed();
        // Find when it starts probing again, to 100 ms resolution.
        loop {
            world.advance(Duration::from_millis(100)).unwrap();
            let (_, forwarded) = call(&vms[0], 500, &[]);
            if forwarded {
                break;
            }
        }
        opened_for.push((world.elapsed() - open_at).as_millis());
    }
    assert_eq!(opened_for, [2000, 6000, 10000], "2 s, ×3, capped at 10 s");
}

#[test]
fn an_abandoned_probe_frees_its_place() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"trip":{"consecutive_failures":1},"open":{"duration":"1s"},"half_open":{"probes":1}}"#,
        1,
    );
    call(&vms[0], 500, &[]);
    world.advance(Duration::from_secs(1)).unwrap();
    let mut probe = vms[0].stream();
    assert_eq!(
        probe.send_request_headers(request(&[]), true),
        Action::Continue
    );
    assert!(!call(&vms[0], 200, &[]).1, "the only probe is taken");
    probe.finish(); // the client went away before any response
    assert!(
        call(&vms[0], 200, &[]).1,
        "its place went to the next request"
    );
}

#[test]
fn one_breaker_per_upstream_by_header_with_overrides() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":5},"overrides":{"payments":{"trip":{"consecutive_failures":2}}}}"#,
        1,
    );
    for _ in 0..2 {
        call(&vms[0], 500, &[("x-route-cluster", "payments")]);
        call(&vms[0], 500, &[("x-route-cluster", "search")]);
    }
    assert!(
        !call(&vms[0], 200, &[("x-route-cluster", "payments")]).1,
        "override: 2 failures open it"
    );
    assert!(
        call(&vms[0], 200, &[("x-route-cluster", "search")]).1,
        "default: 5 needed"
    );
    assert!(call(&vms[0], 200, &[]).1, "no identity: no breaker");
}

#[test]
fn odd_statuses_are_failures_and_only_configured_codes_count() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"failure":{"statuses":["500-502"]},"trip":{"consecutive_failures":2}}"#,
        1,
    );
    call(&vms[0], 503, &[]);
    call(&vms[0], 503, &[]);
    assert!(
        call(&vms[0], 200, &[]).1,
        "503 is not in 500-502 (and came via the upstream)"
    );
    for _ in 0..2 {
        let mut s = vms[0].stream();
        s.send_request_headers(request(&[]), true);
        s.send_response_headers([(":status", "banana")], true);
    }
    assert!(
        !call(&vms[0], 200, &[]).1,
        "an unparseable status counts as a failure"
    );
}

/// A spray of `:authority` values (client-chosen identities) defines no stats beyond the
/// listed upstreams and the shared `unlisted` ones, healthy or tripping; the listed upstream
/// keeps its own.
#[test]
fn an_identity_spray_never_grows_the_stats() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"upstream":"host","max_upstreams":64,"stats_upstreams":["api.example.com"],"trip":{"consecutive_failures":2}}"#,
        2,
    );
    let send = |vm: &Vm, host: &str, status: u16| {
        let mut s = vm.stream();
        s.send_request_headers(
            Headers::from([(":method", "GET"), (":path", "/"), (":authority", host)]),
            true,
        );
        if s.local_reply().is_none() {
            s.respond(status, &[], b"");
        }
    };
    for _ in 0..2 {
        send(&vms[0], "api.example.com", 500);
    }
    for i in 0..3000 {
        let host = format!("h{i}.example.com");
        // Every third identity fails twice: it trips (a transition with stats).
        let status = if i % 3 == 0 { 500 } else { 200 };
        send(&vms[i % 2], &host, status);
        send(&vms[(i + 1) % 2], &host, status);
    }
    let names: Vec<String> = world
        .metrics()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.starts_with("edgewise.circuit_breaker."))
        .collect();
    assert!(names.len() <= 12, "{} stats: {names:?}", names.len());
    assert!(
        world
            .metric("edgewise.circuit_breaker.upstream=.=unlisted;.;opened")
            .unwrap_or(0)
            > 0
    );
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=api.example.com;.;opened"),
        Some(1)
    );
}

#[test]
fn upstream_identities_beyond_the_table_are_untracked_not_unbounded() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"upstream":"host","max_upstreams":4,"trip":{"consecutive_failures":3}}"#,
        1,
    );
    for i in 0..200 {
        let host = format!("h{i}.example.com");
        let mut s = vms[0].stream();
        let mut h = Headers::from([
            (":method", "GET"),
            (":path", "/"),
            (":authority", host.as_str()),
        ]);
        h.add("x-i", i.to_string());
        s.send_request_headers(h, true);
        s.respond(500, &[], b"");
    }
    // The table's 4 slots, and the deployment's hash seed.
    let (keys, _) = world.shared_data_footprint("edgewise");
    assert!(keys <= 5, "{keys}");
    assert!(
        world
            .metric("edgewise.circuit_breaker.untracked")
            .unwrap_or(0)
            > 0
    );
}

#[test]
fn invalid_configurations_are_refused_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"upstream":"cluster"}"#, "upstream"),
        (r#"{"upstream":"header:"}"#, "upstream"),
        (r#"{"trip":{"failure_rate":1.5}}"#, "trip.failure_rate"),
        (r#"{"trip":{"failure_rate":0}}"#, "trip.failure_rate"),
        (r#"{"trip":{"slow_call_rate":0.5}}"#, "trip.slow_call_rate"),
        (
            r#"{"trip":{"consecutive_failures":0}}"#,
            "trip.consecutive_failures",
        ),
        (r#"{"trip":{"min_requests":0}}"#, "trip.min_requests"),
        (r#"{"half_open":{"probes":0}}"#, "half_open.probes"),
        (r#"{"open":{"backoff":0.5}}"#, "open.backoff"),
        (
            r#"{"open":{"duration":"10s","max_duration":"5s"}}"#,
            "open.max_duration",
        ),
        (r#"{"open":{"duration":"soon"}}"#, "open.duration"),
        (r#"{"failure":{"statuses":["6xx"]}}"#, "failure.statuses[0]"),
        (
            r#"{"failure":{"statuses":["504-500"]}}"#,
            "failure.statuses[0]",
        ),
        (r#"{"failure":{"statuses":[]}}"#, "failure.statuses"),
        (r#"{"fallback":{"status":700}}"#, "fallback.status"),
        (
            r#"{"overrides":{"p":{"half_open":{"probes":0}}}}"#,
            "overrides.p.half_open.probes",
        ),
        (r#"{"max_upstreams":0}"#, "max_upstreams"),
        (r#"{"max_in_flight":0}"#, "max_in_flight"),
        (
            r#"{"overrides":{"p":{"max_in_flight":0}}}"#,
            "overrides.p.max_in_flight",
        ),
        (r#"{"trips":{}}"#, "trips"),
    ];
    for (config, field) in cases {
        let world = World::new();
        let options = PluginOptions::new().configuration(config);
        let failure = world
            .start_vm(&load_module("circuit_breaker"), &options)
            .err()
            .unwrap_or_else(|| panic!("accepted: {config}"));
        assert_eq!(failure.kind, FailureKind::Rejected, "{config}");
        let logged = world.logs_containing("circuit_breaker: invalid configuration");
        assert!(
            logged
                .iter()
                .any(|l| l.message.contains(&format!("at `{field}`"))),
            "{config}: expected {field}, logged {logged:?}"
        );
    }
}

/// A hung upstream trips the breaker while its requests still hang: requests in flight past
/// `failure.slow_call` count as slow calls on the root's watch (not when — if ever — they
/// end), so with a slow-call rate the breaker opens about one threshold after the hang, not
/// one route timeout later; the hung requests' late answers count for nothing more.
#[test]
fn requests_hanging_past_the_slow_call_threshold_trip_before_they_end() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"failure":{"slow_call":"1s"},"trip":{"consecutive_failures":100,"slow_call_rate":0.5,"min_requests":4},"open":{"duration":"30s"}}"#,
        2,
    );
    // Four requests hang: the upstream never answers them (yet).
    let mut hung: Vec<Stream> = (0..4)
        .map(|i| {
            let mut s = vms[i % 2].stream();
            assert_eq!(s.send_request_headers(request(&[]), true), Action::Continue);
            s
        })
        .collect();
    world.advance(Duration::from_millis(500)).unwrap();
    assert!(call(&vms[0], 200, &[]).1, "not slow yet: still closed");
    world.advance(Duration::from_millis(800)).unwrap();
    let (rejected, forwarded) = call(&vms[1], 200, &[]);
    assert!(!forwarded, "open while the requests still hang");
    assert_eq!(circuit(&rejected).as_deref(), Some("open"));
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;opened"),
        Some(1)
    );
    // The hung requests finally fail: counted once already, nothing changes.
    for s in hung.iter_mut() {
        s.respond(504, &[], b"");
        s.finish();
    }
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;opened"),
        Some(1)
    );
    assert!(vms.iter().all(|vm| vm.failure().is_none()));
}

/// The bulkhead: at most `max_in_flight` requests to an upstream in flight across every
/// worker; the next gets the fallback (`x-edgewise-circuit: full`) without counting as a
/// failure; a place frees when its stream ends or is reset, and the place of a stream whose
/// VM died (its end never reported) expires with its lease (one to two minutes).
#[test]
fn the_bulkhead_bounds_requests_in_flight_across_workers() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"max_in_flight":2,"trip":{"consecutive_failures":1}}"#,
        2,
    );
    let hang = |vm: &Vm| {
        let mut s = vm.stream();
        assert_eq!(s.send_request_headers(request(&[]), true), Action::Continue);
        s
    };
    let mut first = hang(&vms[0]);
    let second = hang(&vms[1]);
    let (full, forwarded) = call(&vms[0], 200, &[]);
    assert!(!forwarded, "two in flight already, on either worker");
    assert_eq!(full.response().unwrap().status(), Some(503));
    assert_eq!(circuit(&full).as_deref(), Some("full"));
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;bulkhead_rejected"),
        Some(1)
    );
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=payments;.;opened"),
        Some(0),
        "a full bulkhead is no failure of the upstream"
    );
    first.respond(200, &[], b"");
    first.finish();
    let third = hang(&vms[1]);
    assert!(!call(&vms[0], 200, &[]).1, "full again");
    drop(second); // reset by its client
    let fourth = hang(&vms[0]);
    // Two streams whose VM died: their ends are never reported.
    std::mem::forget(third);
    std::mem::forget(fourth);
    assert!(!call(&vms[1], 200, &[]).1, "their places are still held");
    world.advance(Duration::from_secs(120)).unwrap();
    assert!(call(&vms[1], 200, &[]).1, "their leases expired");
    assert!(vms.iter().all(|vm| vm.failure().is_none()));
}

/// A half-open probe that finds the bulkhead full (a request from before the breaker opened
/// still streams its answer) gives its probe place back at once, so the next request probes.
#[test]
fn a_probe_refused_by_a_full_bulkhead_gives_its_place_back() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"max_in_flight":1,"trip":{"consecutive_failures":1},"open":{"duration":"1s"},"half_open":{"probes":1}}"#,
        1,
    );
    let mut old = vms[0].stream();
    assert_eq!(
        old.send_request_headers(request(&[]), true),
        Action::Continue
    );
    // Opens the breaker; the body still streams.
    old.send_response_headers(Headers::from([(":status", "500")]), false);
    world.advance(Duration::from_secs(1)).unwrap();
    let (refused, forwarded) = call(&vms[0], 200, &[]);
    assert!(!forwarded, "would be the probe, but the bulkhead is full");
    assert_eq!(circuit(&refused).as_deref(), Some("full"));
    old.finish();
    let (_, forwarded) = call(&vms[0], 200, &[]);
    assert!(
        forwarded,
        "the probe place was given back: this request probed"
    );
    assert!(call(&vms[0], 200, &[]).1, "and closed the breaker");
}

/// A request counted slow while it hung, then failed by Envoy's route timeout, is a failure
/// too (for `consecutive_failures`), though not a second call.
#[test]
fn hung_requests_that_time_out_count_as_failures_too() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"failure":{"slow_call":"1s"},"trip":{"consecutive_failures":2}}"#,
        2,
    );
    let mut hung: Vec<Stream> = (0..2)
        .map(|i| {
            let mut s = vms[i].stream();
            assert_eq!(s.send_request_headers(request(&[]), true), Action::Continue);
            s
        })
        .collect();
    world.advance(Duration::from_millis(1_300)).unwrap();
    assert!(call(&vms[0], 200, &[]).1, "slow alone is no failure streak");
    for s in hung.iter_mut() {
        s.respond(504, &[], b"upstream request timeout");
        s.finish();
    }
    let (rejected, forwarded) = call(&vms[1], 200, &[]);
    assert!(!forwarded, "two timeouts in a row opened it");
    assert_eq!(circuit(&rejected).as_deref(), Some("open"));
}

/// `half_open.probe`: once the open time is up, the breaker sends its own `GET /health` to
/// the upstream's cluster — one probe across both workers — and no client request is ever a
/// probe: clients get the fallback until a healthy answer closes the breaker. An unhealthy
/// answer, or none, opens it again (with backoff) and the next probe follows.
#[test]
fn active_probes_cost_no_client() {
    let world = World::new();
    world.add_cluster("api-v2");
    let vms = start(
        &world,
        r#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":2},
            "open":{"duration":"5s","backoff":2.0},
            "half_open":{"probes":1,"probe":{"path":"/health","timeout":"1s"}}}"#,
        2,
    );
    let to_v2 = [("x-route-cluster", "api-v2")];
    assert!(call(&vms[0], 503, &to_v2).1);
    assert!(call(&vms[1], 503, &to_v2).1);
    let clients_never_reach_it = |label: &str| {
        for vm in &vms {
            let (s, forwarded) = call(vm, 200, &to_v2);
            assert!(!forwarded, "{label}: a client reached the upstream");
            assert_eq!(s.response().unwrap().status(), Some(503), "{label}");
        }
    };
    clients_never_reach_it("open");
    world.advance(Duration::from_millis(4_900)).unwrap();
    assert!(
        world.pending_http_calls().is_empty(),
        "not before the open time"
    );
    world.advance(Duration::from_millis(200)).unwrap();
    let calls = world.pending_http_calls();
    assert_eq!(calls.len(), 1, "one probe across both workers: {calls:?}");
    let probe = &calls[0];
    assert_eq!(probe.upstream, "api-v2");
    assert_eq!(probe.header(":path").as_deref(), Some("/health"));
    assert_eq!(probe.timeout, Duration::from_secs(1));
    // Past the open time, while the probe runs: clients are still not probes.
    clients_never_reach_it("probing");
    world.respond_http_call(probe.id, 503, &[], b"").unwrap();
    clients_never_reach_it("unhealthy answer: open again");
    // Backoff: the next probe after 10 s, not 5.
    world.advance(Duration::from_secs(6)).unwrap();
    assert!(world.pending_http_calls().is_empty(), "backed off to 10 s");
    world.advance(Duration::from_millis(4_200)).unwrap();
    let calls = world.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // No answer (reset): open again.
    world.reset_http_call(calls[0].id).unwrap();
    clients_never_reach_it("no answer: open again");
    world.advance(Duration::from_millis(20_300)).unwrap();
    let calls = world.pending_http_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    world
        .respond_http_call(calls[0].id, 200, &[], b"ok")
        .unwrap();
    for vm in &vms {
        assert!(call(vm, 200, &to_v2).1, "closed by the healthy probe");
    }
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=unlisted;.;half_open_probes"),
        Some(3)
    );
    for vm in &vms {
        assert!(vm.failure().is_none());
    }
}

/// A probe that times out (the upstream hangs, as a paused container does) opens the
/// breaker again; the next probe follows the next open period; clients are spared throughout.
#[test]
fn a_probe_that_times_out_opens_it_again() {
    let world = World::new();
    world.add_cluster("api-v2");
    let vms = start(
        &world,
        r#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":1},
            "open":{"duration":"5s","backoff":1.0},
            "half_open":{"probe":{"timeout":"1s"}}}"#,
        1,
    );
    let to_v2 = [("x-route-cluster", "api-v2")];
    assert!(call(&vms[0], 503, &to_v2).1);
    world.advance(Duration::from_millis(5_100)).unwrap();
    let first = world.pending_http_calls();
    assert_eq!(first.len(), 1);
    // Nothing answers: Envoy times the callout out after 1 s.
    world.advance(Duration::from_millis(1_100)).unwrap();
    assert!(world.pending_http_calls().is_empty(), "timed out");
    assert!(
        !call(&vms[0], 200, &to_v2).1,
        "open again, clients still spared"
    );
    world.advance(Duration::from_millis(4_900)).unwrap();
    let calls = world.pending_http_calls();
    assert_eq!(
        calls.len(),
        1,
        "a new probe after the next open period: {calls:?}"
    );
    assert!(vms[0].failure().is_none());
}

/// Operator controls: the breaker polls the control service's forced states (one poll for
/// both workers, with the token); forced open rejects every request on every worker, forced
/// closed lets failures through without tripping, and an upstream dropped from the list is
/// automatic again. Who set it is logged; the state shows in the `forced` gauge.
#[test]
fn forced_states_from_the_control_service_reach_every_worker() {
    let world = World::new();
    world.add_cluster("control");
    let vms = start(
        &world,
        r#"{"upstream":"header:x-route-cluster","stats_upstreams":["api-v2"],
            "trip":{"consecutive_failures":1},"open":{"duration":"60s"},
            "control":{"cluster":"control","token":"a-control-token-of-length","poll":"1s"}}"#,
        2,
    );
    let to_v2 = [("x-route-cluster", "api-v2")];
    let answer = |body: &str| {
        for _ in 0..30 {
            if !world.pending_http_calls().is_empty() {
                break;
            }
            world.advance(Duration::from_millis(100)).unwrap();
        }
        let calls = world.pending_http_calls();
        assert_eq!(calls.len(), 1, "one poll for both workers: {calls:?}");
        assert_eq!(calls[0].header(":path").as_deref(), Some("/v1/breakers"));
        assert_eq!(
            calls[0].header("authorization").as_deref(),
            Some("Bearer a-control-token-of-length")
        );
        world
            .respond_http_call(calls[0].id, 200, &[], body.as_bytes())
            .unwrap();
    };
    answer(r#"{"breakers":[{"upstream":"api-v2","state":"open","by":"alice"}]}"#);
    for vm in &vms {
        let (s, forwarded) = call(vm, 200, &to_v2);
        assert!(!forwarded, "forced open: nothing reaches api-v2");
        assert_eq!(s.response().unwrap().status(), Some(503));
    }
    assert!(!world
        .logs_containing("api-v2 forced open by alice")
        .is_empty());
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=api-v2;.;forced"),
        Some(1)
    );
    // A poll the service fails (Redis down: 503) changes nothing: still forced open.
    for _ in 0..30 {
        if !world.pending_http_calls().is_empty() {
            break;
        }
        world.advance(Duration::from_millis(100)).unwrap();
    }
    let failed = world.pending_http_calls();
    assert_eq!(failed.len(), 1);
    world
        .respond_http_call(failed[0].id, 503, &[], b"redis: down")
        .unwrap();
    assert!(!call(&vms[0], 200, &to_v2).1, "still forced open");
    answer(r#"{"breakers":[{"upstream":"api-v2","state":"closed","by":"bob"}]}"#);
    for vm in vms.iter().chain(&vms) {
        assert!(
            call(vm, 503, &to_v2).1,
            "forced closed: failures do not trip it"
        );
    }
    answer(r#"{"breakers":[]}"#);
    assert_eq!(
        world.metric("edgewise.circuit_breaker.upstream=.=api-v2;.;forced"),
        Some(0)
    );
    assert!(call(&vms[0], 503, &to_v2).1);
    assert!(
        !call(&vms[1], 200, &to_v2).1,
        "automatic again: one failure trips it"
    );
    for vm in &vms {
        assert!(vm.failure().is_none());
    }
}
