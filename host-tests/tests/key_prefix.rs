//! `key_prefix`: two instances of one filter in one `vm_id` (Envoy shares shared data per
//! vm_id) share state by default and never do with different prefixes; every filter puts
//! all of its shared-data keys under its prefix.

use host_tests::{load_module, Action, Headers, PluginOptions, Stream, Vm, World};

/// The deployment's hash seed: one per vm_id, deliberately outside every prefix (all the
/// filters of a VM hash alike, so the router finds the breaker's slots).
const SEED_KEY: &str = "edgewise.hash_seed";

const VM_ID: &str = "shared";

fn start(world: &World, module: &str, plugin: &str, config: &str) -> Vm {
    let options = PluginOptions::new()
        .vm_id(VM_ID)
        .plugin_name(plugin)
        .route_name("api")
        .configuration(config);
    world
        .start_vms(&load_module(module), &options, 1)
        .unwrap_or_else(|f| panic!("{f}"))
        .remove(0)
}

fn request(path: &str) -> Headers {
    let mut h = Headers::from([
        (":method", "GET"),
        (":path", path),
        (":authority", "api.example.com"),
    ]);
    h.add("x-route-cluster", "api-v1");
    h
}

/// Sends a request; if it passes, the upstream answers `status` with `headers`.
fn send(vm: &Vm, path: &str, status: u16, headers: &[(&str, &str)]) -> Stream {
    let mut s = vm.stream();
    if s.send_request_headers(request(path), true) == Action::Continue {
        s.respond(status, headers, b"body");
    }
    s
}

fn status(s: &Stream) -> u16 {
    s.response().and_then(|r| r.status()).unwrap_or(0)
}

const LIMIT_2: &str = r#""rules":[{"name":"r","limit":2,"window":"1m"}]"#;

#[test]
fn two_limiters_in_one_vm_id_share_buckets_unless_their_prefixes_differ() {
    // Default: the second instance's rule "r" is the first one's bucket.
    let world = World::new();
    let a = start(&world, "rate_limit", "a", &format!("{{{LIMIT_2}}}"));
    let b = start(&world, "rate_limit", "b", &format!("{{{LIMIT_2}}}"));
    assert_eq!(status(&send(&a, "/", 200, &[])), 200);
    assert_eq!(status(&send(&a, "/", 200, &[])), 200);
    assert_eq!(status(&send(&b, "/", 200, &[])), 429, "shared bucket");

    // Different prefixes: each instance has its own budget and its own keys.
    let world = World::new();
    let a = start(
        &world,
        "rate_limit",
        "a",
        &format!(r#"{{"key_prefix":"team-a",{LIMIT_2}}}"#),
    );
    let b = start(
        &world,
        "rate_limit",
        "b",
        &format!(r#"{{"key_prefix":"team-b",{LIMIT_2}}}"#),
    );
    let a_statuses: Vec<u16> = (0..3).map(|_| status(&send(&a, "/", 200, &[]))).collect();
    let b_statuses: Vec<u16> = (0..3).map(|_| status(&send(&b, "/", 200, &[]))).collect();
    assert_eq!(a_statuses, [200, 200, 429]);
    assert_eq!(b_statuses, [200, 200, 429]);
    let keys = world.shared_data_keys(VM_ID);
    assert!(
        keys.iter().any(|k| k.starts_with("team-a.edgewise."))
            && keys.iter().any(|k| k.starts_with("team-b.edgewise.")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .all(|k| k.starts_with("team-a.edgewise.") || k.starts_with("team-b.edgewise.")),
        "{keys:?}"
    );
}

#[test]
fn two_caches_with_different_prefixes_never_serve_each_others_entries() {
    let world = World::new();
    let a = start(&world, "response_cache", "a", r#"{"key_prefix":"a"}"#);
    let b = start(&world, "response_cache", "b", r#"{"key_prefix":"b"}"#);
    let cacheable = [("cache-control", "max-age=60")];
    let first = send(&a, "/page", 200, &cacheable);
    assert!(first.upstream_request().is_some());
    let hit = send(&a, "/page", 200, &cacheable);
    assert!(hit.upstream_request().is_none(), "a serves its own entry");
    let other = send(&b, "/page", 200, &cacheable);
    assert!(
        other.upstream_request().is_some(),
        "b must not see a's entry"
    );
    let keys = world.shared_data_keys(VM_ID);
    assert!(
        keys.iter()
            .all(|k| k.starts_with("a.edgewise.") || k.starts_with("b.edgewise.") || k == SEED_KEY),
        "{keys:?}"
    );
}

#[test]
fn the_breaker_and_router_keep_every_key_under_their_prefix() {
    let world = World::new();
    let breaker = start(
        &world,
        "circuit_breaker",
        "cb",
        r#"{"key_prefix":"p","upstream":"header:x-route-cluster","trip":{"consecutive_failures":2},"max_in_flight":4}"#,
    );
    let router = start(
        &world,
        "weighted_router",
        "wr",
        r#"{"key_prefix":"p","routes":[{"name":"api","strategy":"least_requests","failover":true,"targets":[{"cluster":"api-v1","weight":1},{"cluster":"api-v2","weight":1}]}]}"#,
    );
    for _ in 0..2 {
        send(&breaker, "/", 500, &[]);
    }
    assert_eq!(status(&send(&breaker, "/", 200, &[])), 503, "open");
    // The router reads the breaker's state under the same prefix: api-v1 is open, so
    // every pick is api-v2.
    for _ in 0..4 {
        let mut s = router.stream();
        s.send_request_headers(
            Headers::from([
                (":method", "GET"),
                (":path", "/"),
                (":authority", "api.example.com"),
            ]),
            true,
        );
        let upstream = s.upstream_request().expect("forwarded");
        assert_eq!(
            upstream.header("x-route-cluster").as_deref(),
            Some("api-v2"),
            "{:?}",
            world.shared_data_keys(VM_ID)
        );
        s.respond(200, &[], b"");
    }
    let keys = world.shared_data_keys(VM_ID);
    assert!(!keys.is_empty());
    assert!(
        keys.iter()
            .all(|k| k.starts_with("p.edgewise.") || k == SEED_KEY),
        "{keys:?}"
    );
}

#[test]
fn a_bad_prefix_is_refused_naming_the_field() {
    let world = World::new();
    for module in [
        "rate_limit",
        "response_cache",
        "circuit_breaker",
        "weighted_router",
    ] {
        let config = match module {
            "rate_limit" => format!(r#"{{"key_prefix":"a.b",{LIMIT_2}}}"#),
            "weighted_router" => {
                r#"{"key_prefix":"a.b","routes":[{"targets":[{"cluster":"x","weight":1}]}]}"#
                    .to_string()
            }
            _ => r#"{"key_prefix":"a.b"}"#.to_string(),
        };
        let options = PluginOptions::new().vm_id(VM_ID).configuration(&config);
        let failure = world
            .start_vms(&load_module(module), &options, 1)
            .err()
            .unwrap_or_else(|| panic!("{module} accepted key_prefix \"a.b\""));
        assert!(
            failure.to_string().contains("key_prefix"),
            "{module}: {failure}"
        );
    }
}
