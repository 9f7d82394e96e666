//! A live configuration change while requests are paused in a filter: `on_configure` runs
//! again on the same root; nothing traps, no paused request is stranded, shared counters are
//! given back under the configuration they were taken in.

use std::time::Duration;

use edgewise_support::lease::LeasedCounts;
use host_tests::{load_module, Action, Headers, PluginOptions, Stream, Vm, World};

fn start(world: &World, module: &str, config: &str, workers: usize) -> Vec<Vm> {
    world
        .start_vms(
            &load_module(module),
            &PluginOptions::new()
                .vm_id("edgewise")
                .plugin_name(module)
                .configuration(config),
            workers,
        )
        .unwrap_or_else(|f| panic!("{module}: {f}"))
}

fn get(vm: &Vm, path: &str) -> (Stream, Action) {
    let mut s = vm.stream();
    let action = s.send_request_headers(
        Headers::from([
            (":method", "GET"),
            (":path", path),
            (":authority", "shop.example.com"),
        ]),
        true,
    );
    (s, action)
}

/// A request queued by two rules; the new configuration has one rule, named differently:
/// the tick still releases the request (no index into the new rules: that trapped) and the
/// queue places go back to the rules they were taken from.
#[test]
fn a_queued_request_survives_a_configuration_with_fewer_rules() {
    let world = World::new();
    let before = r#"{"rules":[
        {"name":"a","limit":1,"window":"1s","queue":{"max_delay":"2s"}},
        {"name":"b","limit":1,"window":"1s","queue":{"max_delay":"2s"}}]}"#;
    let vms = start(&world, "rate_limit", before, 1);
    let (mut first, action) = get(&vms[0], "/");
    assert_eq!(action, Action::Continue);
    first.respond(200, &[], b"ok");
    let (mut queued, action) = get(&vms[0], "/");
    assert_eq!(action, Action::Pause, "held by the queue");
    vms[0]
        .reconfigure(r#"{"rules":[{"name":"c","limit":100,"window":"1s"}]}"#)
        .unwrap();
    world.advance(Duration::from_secs(2)).unwrap();
    assert!(
        queued.upstream_request().is_some(),
        "released after the change"
    );
    queued.respond(200, &[], b"ok");
    assert!(vms[0].failure().is_none());
    for rule in ["a", "b"] {
        let key = format!("edgewise.rl.{rule}.waiting");
        let (value, _) = world
            .shared_data("edgewise", &key)
            .expect("place was taken");
        // Leased counts (edgewise_support::lease): every place given back.
        let places = LeasedCounts::decode(Some(&value), 1);
        assert_eq!(places.encode(), value, "{key}: one leased count");
        assert_eq!(places.totals(), vec![0], "{key} given back");
    }
}

/// Requests waiting for another request's fill are served from it after a configuration
/// change on their worker (they were stranded in the old configuration's list).
#[test]
fn cache_waiters_are_served_after_a_configuration_change() {
    for module in ["response_cache", "edge_chain"] {
        let world = World::new();
        let (before, after) = if module == "edge_chain" {
            (
                r#"{"response_cache":{}}"#,
                r#"{"response_cache":{"cache_status":"changed"}}"#,
            )
        } else {
            ("{}", r#"{"cache_status":"changed"}"#)
        };
        let vms = start(&world, module, before, 2);
        let (mut leader, action) = get(&vms[0], "/slow");
        assert_eq!(action, Action::Continue);
        let (waiter, action) = get(&vms[1], "/slow");
        assert_eq!(action, Action::Pause, "{module}: waits for the fill");
        vms[1].reconfigure(after).unwrap();
        leader.respond(200, &[("cache-control", "max-age=60")], b"filled");
        world.advance(Duration::from_millis(20)).unwrap();
        let response = waiter
            .response()
            .unwrap_or_else(|| panic!("{module}: the waiter was stranded"));
        assert_eq!(response.body_text(), "filled", "{module}");
        assert!(vms[1].failure().is_none(), "{module}");
    }
}

/// A request waiting on a fill lock keeps the configuration it started under: a new key
/// (or store prefix) on its worker does not make it look for another entry than the one its
/// leader fills.
#[test]
fn a_cache_waiter_is_decided_under_its_own_configuration() {
    for after in [
        r#"{"key":{"headers":["x-device"]}}"#,
        r#"{"key_prefix":"other"}"#,
    ] {
        let world = World::new();
        let vms = start(&world, "response_cache", "{}", 2);
        let (mut leader, _) = get(&vms[0], "/slow");
        let (waiter, action) = get(&vms[1], "/slow");
        assert_eq!(action, Action::Pause, "waits for the fill");
        vms[1].reconfigure(after).unwrap();
        leader.respond(200, &[("cache-control", "max-age=60")], b"filled");
        world.advance(Duration::from_millis(20)).unwrap();
        assert!(
            waiter.upstream_request().is_none(),
            "{after}: not re-decided"
        );
        assert_eq!(
            waiter.response().map(|r| r.body_text()).as_deref(),
            Some("filled"),
            "{after}"
        );
        assert!(vms[1].failure().is_none());
    }
}
