//! weighted_router.wasm in our host: one and several VMs of one world.

use std::collections::BTreeMap;

use edgewise_support::breaker_state::{
    candidate_slots, identity_hash, slot_key, write_header, BreakerState, Published,
};
use edgewise_support::bulkhead::{bulkhead_key, BULKHEAD_LEASE_NS};
use edgewise_support::lease::LeasedCounts;
use host_tests::{load_module, Action, FailureKind, Headers, PluginOptions, Stream, Vm, World};

const VM_ID: &str = "edgewise";

fn start(world: &World, config: &str, workers: usize) -> Vec<Vm> {
    let options = PluginOptions::new()
        .vm_id(VM_ID)
        .plugin_name("weighted_router")
        .configuration(config);
    world
        .start_vms(&load_module("weighted_router"), &options, workers)
        .unwrap_or_else(|f| panic!("{f}"))
}

fn request(path: &str, extra: &[(&str, &str)]) -> Headers {
    let mut h = Headers::from([
        (":method", "GET"),
        (":path", path),
        (":authority", "shop.example.com"),
    ]);
    for (k, v) in extra {
        h.add(k, v);
    }
    h
}

fn route(vm: &Vm, path: &str, extra: &[(&str, &str)]) -> (Stream, Option<String>) {
    let mut s = vm.stream();
    assert_eq!(
        s.send_request_headers(request(path, extra), true),
        Action::Continue
    );
    let cluster = s.upstream_request().unwrap().header("x-route-cluster");
    (s, cluster)
}

fn split(vms: &[Vm], n: usize, extra: &[(&str, &str)]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let (_, cluster) = route(&vms[i % vms.len()], "/api/x", extra);
        *counts.entry(cluster.unwrap()).or_insert(0) += 1;
    }
    counts
}

const SPLIT: &str = r#"{"routes":[{"name":"api","match":{"path_prefix":"/api/"},
    "targets":[{"cluster":"api-v1","weight":70},{"cluster":"api-v2","weight":20},{"cluster":"api-v3","weight":10}]}]}"#;

#[test]
fn one_worker_is_within_one_of_the_exact_share_at_any_count() {
    let world = World::new();
    let vms = start(&world, SPLIT, 1);
    let mut counts = [0i64; 3];
    for n in 1..=997i64 {
        let (_, c) = route(&vms[0], "/api/x", &[]);
        counts[["api-v1", "api-v2", "api-v3"]
            .iter()
            .position(|t| Some(*t) == c.as_deref())
            .unwrap()] += 1;
        for (i, w) in [70, 20, 10].iter().enumerate() {
            assert!(
                (counts[i] as f64 - n as f64 * *w as f64 / 100.0).abs() < 1.0 + 1e-9,
                "after {n}: {counts:?}"
            );
        }
    }
    assert_eq!(
        world.metric("edgewise.weighted_router.route=.=api;.;cluster=.=api-v1;.;requests"),
        Some(counts[0])
    );
}

#[test]
fn four_workers_are_within_four_and_a_shared_cursor_is_exact() {
    let world = World::new();
    let vms = start(&world, SPLIT, 4);
    let counts = split(&vms, 1003, &[]);
    for (cluster, share) in [("api-v1", 0.7), ("api-v2", 0.2), ("api-v3", 0.1)] {
        assert!(
            (counts[cluster] as f64 - 1003.0 * share).abs() <= 4.0,
            "{counts:?}"
        );
    }
    let world = World::new();
    let shared = SPLIT.replace(r#""name":"api","#, r#""name":"api","shared_cursor":true,"#);
    let vms = start(&world, &shared, 4);
    let counts = split(&vms, 1000, &[]);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [700, 200, 100],
        "exact across workers"
    );
}

#[test]
fn sticky_users_stay_put_as_the_canary_grows() {
    let world = World::new();
    let config = |canary: u32| {
        format!(
            r#"{{"routes":[{{"name":"api","strategy":"hash","hash_on":"header:x-user",
            "targets":[{{"cluster":"stable","weight":{}}},{{"cluster":"canary","weight":{canary}}}]}}]}}"#,
            100 - canary
        )
    };
    let vms = start(&world, &config(10), 2);
    let users: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
    let place = |vms: &[Vm]| -> Vec<String> {
        users
            .iter()
            .enumerate()
            .map(|(i, u)| route(&vms[i % 2], "/", &[("x-user", u)]).1.unwrap())
            .collect()
    };
    let before = place(&vms);
    assert_eq!(
        before,
        place(&vms),
        "the same user always lands on the same side, on any worker"
    );
    let on_canary = before.iter().filter(|c| *c == "canary").count();
    assert!((30..=70).contains(&on_canary), "about 10%: {on_canary}");
    for vm in &vms {
        vm.reconfigure(config(30)).unwrap();
    }
    let after = place(&vms);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            b == a || a == "canary",
            "only moves towards the grown canary"
        );
    }
    let grown = after.iter().filter(|c| *c == "canary").count();
    assert!((110..=190).contains(&grown), "about 30%: {grown}");
    // Without the key: the weighted round-robin pick (documented fallback).
    assert!(route(&vms[0], "/", &[]).1.is_some());
}

/// The shared `match` grammar on routes: `client_cidrs` against the peer address (the
/// office network goes to the canary), `not` and `any`.
#[test]
fn routes_match_client_ranges_negation_and_alternatives() {
    let world = World::new();
    let config = r#"{"routes":[
        {"name":"office","match":{"client_cidrs":["10.0.0.0/8","2001:db8::/32"],"not":{"path_prefix":"/admin/"}},
         "targets":[{"cluster":"canary","weight":1}]},
        {"name":"writes","match":{"any":[{"methods":["POST"]},{"methods":["PUT"]}]},
         "targets":[{"cluster":"writer","weight":1}]},
        {"name":"rest","targets":[{"cluster":"stable","weight":1}]}]}"#;
    let vms = start(&world, config, 1);
    let from = |peer: &str, method: &str, path: &str| {
        let mut s = vms[0].stream().with_source_address(peer);
        let mut h = request(path, &[]);
        h.replace(":method", method);
        assert_eq!(s.send_request_headers(h, true), Action::Continue);
        s.upstream_request().unwrap().header("x-route-cluster")
    };
    assert_eq!(
        from("10.2.3.4:5000", "GET", "/x").as_deref(),
        Some("canary")
    );
    assert_eq!(
        from("[2001:db8::9]:443", "GET", "/x").as_deref(),
        Some("canary")
    );
    assert_eq!(
        from("10.2.3.4:5000", "GET", "/admin/x").as_deref(),
        Some("stable")
    );
    assert_eq!(
        from("10.2.3.4:5000", "PUT", "/admin/x").as_deref(),
        Some("writer")
    );
    assert_eq!(
        from("203.0.113.1:5000", "POST", "/x").as_deref(),
        Some("writer")
    );
    assert_eq!(
        from("203.0.113.1:5000", "GET", "/x").as_deref(),
        Some("stable")
    );
}

#[test]
fn overrides_pin_testers_to_the_canary() {
    let world = World::new();
    let config = r#"{"routes":[{"name":"api","targets":[{"cluster":"v1","weight":100},{"cluster":"v2","weight":0}],
        "overrides":[{"header":"x-canary","equals":"always","cluster":"v2"},{"cookie":"canary","equals":"1","cluster":"v2"}]}]}"#;
    let vms = start(&world, config, 1);
    assert_eq!(
        route(&vms[0], "/", &[("x-canary", "always")]).1.as_deref(),
        Some("v2")
    );
    assert_eq!(
        route(&vms[0], "/", &[("cookie", "a=b; canary=1")])
            .1
            .as_deref(),
        Some("v2")
    );
    assert_eq!(
        route(&vms[0], "/", &[("x-canary", "sometimes")])
            .1
            .as_deref(),
        Some("v1")
    );
    assert!(
        (0..20).all(|_| route(&vms[0], "/", &[]).1.as_deref() == Some("v1")),
        "weight 0 takes v2 out"
    );
    assert_eq!(
        world.metric("edgewise.weighted_router.route=.=api;.;overrides"),
        Some(2)
    );
}

#[test]
fn least_requests_counts_in_flight_across_workers_and_releases_on_end_and_reset() {
    let world = World::new();
    let config = r#"{"routes":[{"name":"lr","strategy":"least_requests","targets":[{"cluster":"a","weight":1},{"cluster":"b","weight":1}]}]}"#;
    let vms = start(&world, config, 2);
    let (mut s1, c1) = route(&vms[0], "/", &[]);
    let (s2, c2) = route(&vms[1], "/", &[]);
    assert_ne!(
        c1, c2,
        "the second goes where nothing is in flight, even on another worker"
    );
    s1.respond(200, &[], b"");
    s1.finish();
    let (_s3, c3) = route(&vms[1], "/", &[]);
    assert_eq!(c3, c1, "the finished stream released its target");
    drop(s2); // reset: the client went away before any response
    let (_s4, c4) = route(&vms[0], "/", &[]);
    assert_eq!(c4, c2, "a reset stream released its target too");
}

fn open_breaker(world: &World, cluster: &str, until: u64) {
    publish_breaker(world, cluster, BreakerState::Open, until, false);
}

/// Publishes a half-open breaker for `cluster`, with or without probe places left.
fn half_open_breaker(world: &World, cluster: &str, probes_full: bool) {
    let deadline = world.now_nanos() + 10_000_000_000;
    publish_breaker(
        world,
        cluster,
        BreakerState::HalfOpen,
        deadline,
        probes_full,
    );
}

/// Writes a breaker's published header for `cluster` where the router looks it up.
fn publish_breaker(
    world: &World,
    cluster: &str,
    state: BreakerState,
    open_until: u64,
    probes_full: bool,
) {
    // Placement is keyed with the deployment's seed, which the VMs keep in shared data.
    let (seed, _) = world
        .shared_data(VM_ID, "edgewise.hash_seed")
        .expect("the VMs created the hash seed");
    edgewise_support::seed::set(u64::from_le_bytes(seed.try_into().unwrap()));
    let hash = identity_hash(cluster.as_bytes());
    let slot = candidate_slots(hash, 256).next().unwrap();
    let mut value = vec![0u8; 208];
    write_header(
        &mut value,
        &Published {
            identity_hash: hash,
            state,
            open_until,
            probes_full,
            probe_only: false,
            forced: 0,
        },
    );
    let value = edgewise_support::breaker_state::with_identity(value, cluster.as_bytes());
    world.set_shared_data(VM_ID, &slot_key(slot), &value);
}

/// While a target's breaker is half-open with every probe place taken, the router sends its
/// share elsewhere (it would get the fallback); with places left, its share goes to it (the
/// probes that close it).
#[test]
fn half_open_targets_get_traffic_only_while_probe_places_are_left() {
    let world = World::new();
    let config = SPLIT.replace(r#""name":"api","#, r#""name":"api","failover":true,"#);
    let vms = start(&world, &config, 2);
    half_open_breaker(&world, "api-v2", true);
    let counts = split(&vms, 100, &[]);
    assert_eq!(counts.get("api-v2"), None, "{counts:?}");
    half_open_breaker(&world, "api-v2", false);
    assert_eq!(split(&vms, 100, &[])["api-v2"], 20);
}

/// Writes `cluster`'s bulkhead (beside its breaker's slot) with `in_flight` of `max` taken
/// now, in the layout of `edgewise_support::bulkhead`.
fn fill_bulkhead(world: &World, cluster: &str, in_flight: u32, max: u32) {
    let hash = identity_hash(cluster.as_bytes());
    let slot = candidate_slots(hash, 256).next().unwrap();
    let mut counts = LeasedCounts::decode(None, 1).at(world.now_nanos() / BULKHEAD_LEASE_NS);
    for _ in 0..in_flight {
        counts.take(0);
    }
    let mut value = hash.to_le_bytes().to_vec();
    value.extend_from_slice(&max.to_le_bytes());
    value.extend_from_slice(&counts.encode());
    world.set_shared_data(VM_ID, &bulkhead_key(&slot_key(slot)), &value);
}

/// A target whose breaker's bulkhead is full would answer with the fallback: the router
/// sends its share elsewhere, and back once a place is free.
#[test]
fn failover_skips_targets_whose_bulkhead_is_full() {
    let world = World::new();
    let config = SPLIT.replace(r#""name":"api","#, r#""name":"api","failover":true,"#);
    let vms = start(&world, &config, 2);
    publish_breaker(&world, "api-v2", BreakerState::Closed, 0, false);
    fill_bulkhead(&world, "api-v2", 8, 8);
    let counts = split(&vms, 100, &[]);
    assert_eq!(counts.get("api-v2"), None, "{counts:?}");
    assert_eq!(
        world.metric("edgewise.weighted_router.route=.=api;.;failovers"),
        Some(20)
    );
    fill_bulkhead(&world, "api-v2", 7, 8);
    assert_eq!(split(&vms, 100, &[])["api-v2"], 20);
}

#[test]
fn failover_skips_targets_whose_breaker_is_open_and_returns_when_it_closes() {
    let world = World::new();
    let config = SPLIT.replace(r#""name":"api","#, r#""name":"api","failover":true,"#);
    let vms = start(&world, &config, 2);
    let until = world.now_nanos() + 10_000_000_000;
    open_breaker(&world, "api-v2", until);
    let counts = split(&vms, 100, &[]);
    assert_eq!(counts.get("api-v2"), None, "{counts:?}");
    assert_eq!(counts["api-v1"] + counts["api-v3"], 100);
    assert_eq!(
        world.metric("edgewise.weighted_router.route=.=api;.;failovers"),
        Some(20)
    );
    // With every target open, the normal pick stands (the breaker answers).
    open_breaker(&world, "api-v1", until);
    open_breaker(&world, "api-v3", until);
    let all_open = split(&vms, 20, &[]);
    assert_eq!(
        all_open.values().copied().collect::<Vec<_>>(),
        [14, 4, 2],
        "a full cycle per worker, as if no breaker: {all_open:?}"
    );
    // Past open_until the breaker will probe: traffic returns.
    world.advance(std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(split(&vms, 100, &[])["api-v2"], 20);
}

#[test]
fn unmatched_requests_cannot_choose_a_cluster_themselves() {
    let world = World::new();
    let vms = start(&world, SPLIT, 1);
    let mut s = vms[0].stream();
    s.send_request_headers(
        request("/other", &[("x-route-cluster", "admin-internal")]),
        true,
    );
    assert_eq!(
        s.upstream_request().unwrap().header("x-route-cluster"),
        None
    );
    let (_, forced) = route(&vms[0], "/api/x", &[("x-route-cluster", "admin-internal")]);
    assert_ne!(
        forced.as_deref(),
        Some("admin-internal"),
        "overwritten by the pick"
    );
}

#[test]
fn invalid_configurations_are_refused_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"routes":[]}"#, "routes"),
        (r#"{"routes":[{"targets":[]}]}"#, "routes[0].targets"),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":-1}]}]}"#,
            "routes[0].targets[0].weight",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":0},{"cluster":"b","weight":0}]}]}"#,
            "routes[0].targets",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":1}],"strategy":"fastest"}]}"#,
            "routes[0].strategy",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":1}],"strategy":"hash"}]}"#,
            "routes[0].hash_on",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"","weight":1}]}]}"#,
            "routes[0].targets[0].cluster",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":1},{"cluster":"a","weight":2}]}]}"#,
            "routes[0].targets[1].cluster",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":1.5}]}]}"#,
            "routes[0].targets[0].weight",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":1}],"hash_on":"header:x"}]}"#,
            "routes[0].hash_on",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":1}],"strategy":"hash","hash_on":"ip"}]}"#,
            "routes[0].hash_on",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":1}],"overrides":[{"equals":"x","cluster":"a"}]}]}"#,
            "routes[0].overrides[0]",
        ),
        (
            r#"{"cluster_header":"bad header","routes":[{"targets":[{"cluster":"a","weight":1}]}]}"#,
            "cluster_header",
        ),
        (
            r#"{"routes":[{"name":"r","targets":[{"cluster":"a","weight":1}]},{"name":"r","targets":[{"cluster":"a","weight":1}]}]}"#,
            "routes[1].name",
        ),
        (
            r#"{"routes":[{"targets":[{"cluster":"a","weight":1}],"strategy":"random","shared_cursor":true}]}"#,
            "routes[0].shared_cursor",
        ),
    ];
    for (config, field) in cases {
        let world = World::new();
        let failure = world
            .start_vm(
                &load_module("weighted_router"),
                &PluginOptions::new().configuration(config),
            )
            .err()
            .unwrap_or_else(|| panic!("accepted: {config}"));
        assert_eq!(failure.kind, FailureKind::Rejected, "{config}");
        let logged = world.logs_containing("weighted_router: invalid configuration");
        assert!(
            logged
                .iter()
                .any(|l| l.message.contains(&format!("at `{field}`"))),
            "{config}: expected {field}, logged {logged:?}"
        );
    }
}
