//! `metrics_flush`: per-request counters add up inside the VM and reach the host on the
//! root context's tick — one `increment_metric` per counter per flush instead of one per
//! request — never later than the flush period, never lost, and without disturbing the
//! filter's own ticks. On the virtual clock.

use std::time::Duration;

use host_tests::{load_module, Action, Headers, PluginOptions, Status, Vm, World};

fn start(world: &World, module: &str, config: &str) -> Vm {
    world.add_cluster("api-v1");
    world.add_cluster("api-v2");
    world
        .start_vm(
            &load_module(module),
            &PluginOptions::new().vm_id("edgewise").configuration(config),
        )
        .unwrap_or_else(|f| panic!("{f}"))
}

fn send(vm: &Vm) -> u16 {
    let mut s = vm.stream();
    let headers = Headers::from([
        (":method", "GET"),
        (":path", "/"),
        (":authority", "api.example.com"),
        ("x-user", "ann"),
    ]);
    if s.send_request_headers(headers, true) == Action::Continue {
        s.respond(200, &[], b"ok");
    }
    s.finish();
    s.response().and_then(|r| r.status()).unwrap_or(0)
}

const ALLOWED: &str = "edgewise.rate_limit.rule=.=r;.;allowed";
const DENIED: &str = "edgewise.rate_limit.rule=.=r;.;denied";

#[test]
fn deferred_counters_reach_the_host_on_the_next_flush_in_one_call_each() {
    let world = World::new();
    let vm = start(
        &world,
        "rate_limit",
        r#"{"metrics_flush":"1s","rules":[{"name":"r","key":"header:x-user","limit":8,"window":"1h"}]}"#,
    );
    vm.host_calls();
    let statuses: Vec<u16> = (0..10).map(|_| send(&vm)).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2);
    let calls = vm.host_calls();
    assert_eq!(calls.get("proxy_increment_metric"), None, "{calls:?}");
    assert_eq!(
        calls.get("proxy_set_tick_period_milliseconds"),
        Some(&1),
        "one tick asked for, by the first deferred increment: {calls:?}"
    );
    assert_eq!(world.metric(ALLOWED).unwrap_or(0), 0, "not flushed yet");

    world.advance(Duration::from_millis(999)).unwrap();
    assert_eq!(
        world.metric(ALLOWED).unwrap_or(0),
        0,
        "999 ms: still waiting"
    );
    world.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(world.metric(ALLOWED), Some(8));
    assert_eq!(world.metric(DENIED), Some(2));
    let calls = vm.host_calls();
    assert_eq!(
        calls.get("proxy_increment_metric"),
        Some(&2),
        "one call per counter that moved: {calls:?}"
    );

    // Nothing pending: the flush tick stops (no idle wake-ups), and the next request arms it
    // again.
    world.advance(Duration::from_secs(5)).unwrap();
    assert_eq!(vm.host_calls().get("proxy_increment_metric"), None);
    send(&vm);
    world.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(world.metric(DENIED), Some(3));
}

#[test]
fn immediate_counters_by_default() {
    let world = World::new();
    let vm = start(
        &world,
        "rate_limit",
        r#"{"rules":[{"name":"r","key":"header:x-user","limit":8,"window":"1h"}]}"#,
    );
    send(&vm);
    assert_eq!(world.metric(ALLOWED), Some(1));
}

/// The limiter's own 1 ms queue tick and the 1 s flush share the root's tick: queued
/// requests are released on time, and the counters still arrive.
#[test]
fn the_flush_does_not_disturb_a_filters_own_ticks() {
    let world = World::new();
    let vm = start(
        &world,
        "rate_limit",
        r#"{"metrics_flush":"1s","rules":[{"name":"r","key":"header:x-user","limit":1,"window":"100ms","burst":1,"queue":{"max_delay":"500ms"}}]}"#,
    );
    assert_eq!(send(&vm), 200);
    let mut queued = vm.stream();
    let action = queued.send_request_headers(
        Headers::from([
            (":method", "GET"),
            (":path", "/"),
            (":authority", "api.example.com"),
            ("x-user", "ann"),
        ]),
        true,
    );
    assert_eq!(action, Action::Pause, "held in the queue");
    world.advance(Duration::from_millis(100)).unwrap();
    assert!(queued.upstream_request().is_some(), "released at its slot");
    queued.respond(200, &[], b"ok");
    queued.finish();
    world.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(world.metric(ALLOWED), Some(2));
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=r;.;queued"),
        Some(1)
    );
}

/// Every filter and the composed module defer their per-request counters the same way.
#[test]
fn every_filter_defers_and_flushes() {
    for (module, config, metric) in [
        (
            "weighted_router",
            r#"{"metrics_flush":"1s","routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":1}]}]}"#,
            "edgewise.weighted_router.route=.=api;.;cluster=.=api-v1;.;requests",
        ),
        (
            "response_cache",
            r#"{"metrics_flush":"1s"}"#,
            "edgewise.response_cache.misses",
        ),
        (
            "edge_chain",
            r#"{"rate_limit":{"metrics_flush":"1s","rules":[{"name":"r","limit":100,"window":"1s"}]},"weighted_router":{"metrics_flush":"1s","routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":1}]}]}}"#,
            "edgewise.rate_limit.rule=.=r;.;allowed",
        ),
    ] {
        let world = World::new();
        let vm = start(&world, module, config);
        vm.host_calls();
        for _ in 0..5 {
            send(&vm);
        }
        let calls = vm.host_calls();
        assert_eq!(
            calls.get("proxy_increment_metric"),
            None,
            "{module}: {calls:?}"
        );
        world.advance(Duration::from_secs(1)).unwrap();
        assert_eq!(world.metric(metric), Some(5), "{module}");
    }
}

/// Host calls of the flush that fail: a refused tick request is asked again by the next
/// counted request (the counts are not stranded), a failed flush costs those counts and no
/// traffic; no trap anywhere.
#[test]
fn failing_flush_host_calls_never_trap_and_never_strand_the_counts() {
    let world = World::new();
    let vm = start(
        &world,
        "rate_limit",
        r#"{"metrics_flush":"1s","rules":[{"name":"r","key":"header:x-user","limit":100,"window":"1h"}]}"#,
    );
    world.fail_host_call(
        "proxy_set_tick_period_milliseconds",
        Status::InternalFailure,
        1,
    );
    assert_eq!(
        send(&vm),
        200,
        "the refused tick request does not touch the request"
    );
    assert_eq!(send(&vm), 200);
    world.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(
        world.metric(ALLOWED),
        Some(2),
        "the second request asked again"
    );

    world.fail_host_call("proxy_increment_metric", Status::InternalFailure, 1);
    assert_eq!(send(&vm), 200);
    world.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(
        world.metric(ALLOWED),
        Some(2),
        "that flush failed: its count is lost"
    );
    assert_eq!(send(&vm), 200);
    world.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(world.metric(ALLOWED), Some(3), "later counts arrive");
}

/// A live configuration change from deferred to immediate counters: what waited is still
/// flushed, and new counts arrive at once.
#[test]
fn a_reconfiguration_to_immediate_counters_still_flushes_what_waited() {
    let world = World::new();
    let vm = start(
        &world,
        "rate_limit",
        r#"{"metrics_flush":"1s","rules":[{"name":"r","key":"header:x-user","limit":100,"window":"1h"}]}"#,
    );
    for _ in 0..3 {
        send(&vm);
    }
    vm.reconfigure(r#"{"rules":[{"name":"r","key":"header:x-user","limit":100,"window":"1h"}]}"#)
        .unwrap();
    send(&vm);
    assert_eq!(
        world.metric(ALLOWED),
        Some(1),
        "the new counter is immediate"
    );
    world.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(
        world.metric(ALLOWED),
        Some(4),
        "the 3 that waited were flushed"
    );
}
