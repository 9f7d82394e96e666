//! rate_limit.wasm in our host: one and four VMs of one world on the virtual clock.

use std::time::Duration;

use host_tests::{load_module, Action, FailureKind, Headers, PluginOptions, Stream, Vm, World};

const VM_ID: &str = "edgewise";

fn start(world: &World, config: &str, workers: usize) -> Vec<Vm> {
    let options = PluginOptions::new()
        .vm_id(VM_ID)
        .plugin_name("rate_limit")
        .configuration(config);
    world
        .start_vms(&load_module("rate_limit"), &options, workers)
        .unwrap_or_else(|f| panic!("{f}"))
}

fn request(path: &str, extra: &[(&str, &str)]) -> Headers {
    let mut headers = Headers::from([
        (":method", "GET"),
        (":path", path),
        (":authority", "api.example.com"),
    ]);
    for (k, v) in extra {
        headers.add(k, v);
    }
    headers
}

/// Sends a request; if it passes, the upstream answers 200. Returns the stream.
fn send(vm: &Vm, path: &str, extra: &[(&str, &str)]) -> Stream {
    let mut stream = vm.stream();
    if stream.send_request_headers(request(path, extra), true) == Action::Continue {
        stream.respond(200, &[], b"ok");
    }
    stream
}

fn status(stream: &Stream) -> u16 {
    stream.response().and_then(|r| r.status()).unwrap_or(0)
}

#[test]
fn burst_then_refill_with_exact_retry_after() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"rules":[{"name":"r","limit":2,"window":"1s"}]}"#,
        1,
    );
    assert_eq!(status(&send(&vms[0], "/", &[])), 200);
    assert_eq!(status(&send(&vms[0], "/", &[])), 200);
    let denied = send(&vms[0], "/", &[]);
    let reply = denied.response().unwrap();
    assert_eq!(reply.status(), Some(429));
    assert_eq!(reply.body_text(), "rate limited\n");
    assert_eq!(
        reply.header("retry-after").as_deref(),
        Some("1"),
        "500 ms rounded up"
    );
    assert!(
        denied.upstream_request().is_none(),
        "a denied request never reaches the upstream"
    );
    world.advance(Duration::from_millis(499)).unwrap();
    assert_eq!(status(&send(&vms[0], "/", &[])), 429);
    world.advance(Duration::from_millis(1)).unwrap();
    assert_eq!(
        status(&send(&vms[0], "/", &[])),
        200,
        "one token back after exactly T"
    );
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=r;.;allowed"),
        Some(3)
    );
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=r;.;denied"),
        Some(2)
    );
}

#[test]
fn four_workers_share_one_bucket_exactly() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"rules":[{"name":"g","limit":10,"window":"1m"}]}"#,
        4,
    );
    let allowed = (0..40)
        .filter(|i| status(&send(&vms[i % 4], "/", &[])) == 200)
        .count();
    assert_eq!(allowed, 10);
}

#[test]
fn contending_worker_threads_admit_exactly_the_burst() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"rules":[{"name":"g","limit":100,"window":"1h","key":"header:x-k"}]}"#,
        4,
    );
    let allowed: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = vms
            .iter()
            .map(|vm| {
                scope.spawn(move || {
                    (0..60)
                        .filter(|_| status(&send(vm, "/", &[("x-k", "same")])) == 200)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(allowed, 100, "240 requests from 4 threads, burst 100");
}

#[test]
fn lost_cas_races_are_retried_not_double_counted() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"rules":[{"name":"g","limit":3,"window":"1h"}]}"#,
        1,
    );
    assert_eq!(status(&send(&vms[0], "/", &[])), 200);
    let (count, _) = world.shared_data_footprint(VM_ID);
    assert_eq!(count, 2, "the key's set and the shared hash seed");
    let key = (0..2500)
        .map(|set| format!("edgewise.rl.g.{set}"))
        .find(|k| world.shared_data(VM_ID, k).is_some())
        .unwrap();
    world.interfere_with_next_sets(VM_ID, &key, 3);
    assert_eq!(status(&send(&vms[0], "/", &[])), 200);
    assert_eq!(status(&send(&vms[0], "/", &[])), 200);
    assert_eq!(
        status(&send(&vms[0], "/", &[])),
        429,
        "three admitted in all despite three lost races"
    );
}

#[test]
fn ietf_headers_on_allowed_and_denied_responses() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"rules":[{"name":"per-key","key":"header:x-api-key","limit":2,"window":"1m"}]}"#,
        1,
    );
    let first = send(&vms[0], "/", &[("x-api-key", "k1")]);
    let response = first.response().unwrap();
    assert_eq!(
        response.header("ratelimit-policy").as_deref(),
        Some("\"per-key\";q=2;w=60")
    );
    assert_eq!(
        response.header("ratelimit").as_deref(),
        Some("\"per-key\";r=1;t=30")
    );
    send(&vms[0], "/", &[("x-api-key", "k1")]);
    let denied = send(&vms[0], "/", &[("x-api-key", "k1")]);
    let reply = denied.response().unwrap();
    assert_eq!(
        reply.header("ratelimit").as_deref(),
        Some("\"per-key\";r=0;t=60")
    );
    assert_eq!(reply.header("retry-after").as_deref(), Some("30"));
    // Another key has its own bucket.
    assert_eq!(status(&send(&vms[0], "/", &[("x-api-key", "k2")])), 200);
}

#[test]
fn x_ratelimit_headers_and_custom_deny_response() {
    let world = World::new();
    let config = r#"{"response_headers":"x-ratelimit","deny":{"status":503,"body":"busy","headers":{"x-why":"limit"}},
        "rules":[{"name":"r","limit":1,"window":"10s"}]}"#;
    let vms = start(&world, config, 1);
    let ok = send(&vms[0], "/", &[]).response().unwrap();
    assert_eq!(
        (
            ok.header("x-ratelimit-limit"),
            ok.header("x-ratelimit-remaining"),
            ok.header("x-ratelimit-reset")
        ),
        (Some("1".into()), Some("0".into()), Some("10".into()))
    );
    let denied = send(&vms[0], "/", &[]).response().unwrap();
    assert_eq!(
        (denied.status(), denied.body_text(), denied.header("x-why")),
        (Some(503), "busy".into(), Some("limit".into()))
    );
    assert_eq!(denied.header("retry-after").as_deref(), Some("10"));
}

#[test]
fn shadow_mode_passes_everything_with_headers_and_counts() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"mode":"shadow","rules":[{"name":"s","limit":1,"window":"1m"}]}"#,
        2,
    );
    for i in 0..5 {
        let stream = send(&vms[i % 2], "/", &[]);
        assert_eq!(status(&stream), 200);
        assert!(stream.response().unwrap().header("ratelimit").is_some());
    }
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=s;.;allowed"),
        Some(1)
    );
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=s;.;shadow_denied"),
        Some(4)
    );
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=s;.;denied"),
        Some(0)
    );
}

/// A rule's own dry run (`mode: "shadow"` on the rule) next to an enforcing rule, across
/// two workers: the dry-run rule never denies and never shows in RateLimit fields, its
/// would-be denials are counted; the enforcing rule still denies with 429. `exempt` by the
/// client's range (trusted X-Forwarded-For) spares the office from both.
#[test]
fn a_rule_in_a_dry_run_counts_while_another_enforces() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"client_ip":{"from":"x-forwarded-for","trusted_hops":1},"rules":[
            {"name":"trial","limit":1,"window":"1m","mode":"shadow","exempt":{"client_cidrs":["10.0.0.0/8"]}},
            {"name":"real","limit":3,"window":"1m","exempt":{"client_cidrs":["10.0.0.0/8"]}}]}"#,
        2,
    );
    let statuses: Vec<u16> = (0..5)
        .map(|i| {
            let stream = send(&vms[i % 2], "/", &[("x-forwarded-for", "203.0.113.9")]);
            let fields = stream
                .response()
                .unwrap()
                .header("ratelimit")
                .unwrap_or_default();
            assert!(!fields.contains("trial"), "{fields}");
            status(&stream)
        })
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let metric = |name: &str| world.metric(&format!("edgewise.rate_limit.rule=.=trial;.;{name}"));
    assert_eq!(metric("allowed"), Some(1));
    assert_eq!(metric("shadow_denied"), Some(4));
    assert_eq!(metric("denied"), Some(0));
    // The office: neither rule applies.
    for i in 0..5 {
        let stream = send(&vms[i % 2], "/", &[("x-forwarded-for", "10.1.1.1")]);
        assert_eq!(status(&stream), 200);
        assert!(stream.response().unwrap().header("ratelimit").is_none());
    }
    assert_eq!(metric("shadow_denied"), Some(4));
}

#[test]
fn composite_keys_and_match_conditions() {
    let world = World::new();
    let config = r#"{"rules":[{"name":"c","limit":1,"window":"1m","key":["header:x-user","client_ip"],
        "match":{"path_prefix":"/api/","methods":["GET"],"headers":{"x-tier":"free"}}}]}"#;
    let vms = start(&world, config, 1);
    let from = |addr: &str, user: &str| {
        let mut s = vms[0].stream().with_source_address(addr);
        if s.send_request_headers(
            request("/api/x", &[("x-user", user), ("x-tier", "free")]),
            true,
        ) == Action::Continue
        {
            s.respond(200, &[], b"");
        }
        status(&s)
    };
    assert_eq!(from("203.0.113.1:1000", "u1"), 200);
    assert_eq!(
        from("203.0.113.1:1001", "u1"),
        429,
        "same user, same IP (port ignored)"
    );
    assert_eq!(from("203.0.113.2:1000", "u1"), 200, "same user, other IP");
    assert_eq!(from("203.0.113.1:1000", "u2"), 200, "other user, same IP");
    // Not matching: never counted.
    for _ in 0..3 {
        assert_eq!(
            status(&send(
                &vms[0],
                "/other",
                &[("x-user", "u1"), ("x-tier", "free")]
            )),
            200
        );
        assert_eq!(
            status(&send(
                &vms[0],
                "/api/x",
                &[("x-user", "u1"), ("x-tier", "paid")]
            )),
            200
        );
    }
    // Without the key value: not counted either.
    for _ in 0..3 {
        assert_eq!(status(&send(&vms[0], "/api/x", &[("x-tier", "free")])), 200);
    }
}

#[test]
fn forwarded_for_with_trusted_hops_cannot_be_forged() {
    let world = World::new();
    let config = r#"{"client_ip":{"from":"x-forwarded-for","trusted_hops":1},"rules":[{"name":"ip","limit":1,"window":"1m","key":"client_ip"}]}"#;
    let vms = start(&world, config, 1);
    assert_eq!(
        status(&send(
            &vms[0],
            "/",
            &[("x-forwarded-for", "1.1.1.1, 198.51.100.9")]
        )),
        200
    );
    // The client changes the part it controls: still the same client for the limiter.
    assert_eq!(
        status(&send(
            &vms[0],
            "/",
            &[("x-forwarded-for", "2.2.2.2, 198.51.100.9")]
        )),
        429
    );
    // Garbage falls back to the peer address (127.0.0.1 here), a separate bucket.
    assert_eq!(
        status(&send(&vms[0], "/", &[("x-forwarded-for", "garbage")])),
        200
    );
}

#[test]
fn a_key_spray_stays_within_the_table_bound() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"rules":[{"name":"k","key":"header:x-k","limit":5,"window":"1m","max_keys":40}]}"#,
        2,
    );
    for i in 0..4000 {
        send(&vms[i % 2], "/", &[("x-k", &format!("attacker-{i}"))]);
    }
    let (keys, bytes) = world.shared_data_footprint(VM_ID);
    assert!(
        keys <= 10 + 1,
        "{keys} shared-data keys for max_keys 40 (10 sets, and the shared hash seed)"
    );
    assert!(bytes <= 10 * (112 + 24), "{bytes} bytes");
}

#[test]
fn bad_input_has_defined_behaviour_and_never_traps() {
    let world = World::new();
    let config = r#"{"client_ip":{"from":"x-forwarded-for","trusted_hops":2},"rules":[
        {"name":"h","key":"header:x-k","limit":1,"window":"1m"},
        {"name":"ip","key":"client_ip","limit":1000,"window":"1m"},
        {"name":"q","key":["query:id","cookie:sid"],"limit":1000,"window":"1m"}]}"#;
    let vms = start(&world, config, 1);
    let mut binary = vms[0].stream();
    let mut headers = request("/?id=\u{1}", &[("cookie", "sid=;;;=")]);
    headers.add("x-k", b"\xff\xfe\x00binary".as_slice());
    headers.add("x-forwarded-for", b"\xff, ,,,".as_slice());
    assert_eq!(
        binary.send_request_headers(headers, true),
        Action::Continue,
        "non-UTF-8 keys are bytes like any other"
    );
    let huge = "v".repeat(1 << 20);
    assert_eq!(
        status(&send(&vms[0], "/", &[("x-k", &huge)])),
        200,
        "a 1 MiB key is hashed, not stored"
    );
    assert_eq!(status(&send(&vms[0], "/", &[("x-k", &huge)])), 429);
    let mut repeated = request("/", &[]);
    for i in 0..500 {
        repeated.add("x-k", format!("r{i}"));
    }
    let mut s = vms[0].stream();
    assert_eq!(
        s.send_request_headers(repeated, true),
        Action::Continue,
        "the first value is the key"
    );
}

#[test]
fn queueing_holds_requests_until_their_slot_and_frees_places_on_disconnect() {
    let world = World::new();
    let config = r#"{"rules":[{"name":"q","limit":10,"window":"1s","burst":1,"queue":{"max_delay":"300ms","max_waiting":2}}]}"#;
    let vms = start(&world, config, 1);
    assert_eq!(status(&send(&vms[0], "/", &[])), 200);
    let mut held = vms[0].stream();
    assert_eq!(
        held.send_request_headers(request("/", &[]), true),
        Action::Pause
    );
    assert!(held.local_reply().is_none() && held.upstream_request().is_none());
    let mut second = vms[0].stream();
    assert_eq!(
        second.send_request_headers(request("/", &[]), true),
        Action::Pause
    );
    assert_eq!(status(&send(&vms[0], "/", &[])), 429, "two already wait");
    world.advance(Duration::from_millis(99)).unwrap();
    assert!(held.upstream_request().is_none(), "not before its slot");
    world.advance(Duration::from_millis(2)).unwrap();
    assert!(
        held.upstream_request().is_some(),
        "released at its slot (100 ms)"
    );
    // The second client disconnects while waiting: its place frees at once.
    second.finish();
    let mut third = vms[0].stream();
    assert_eq!(
        third.send_request_headers(request("/", &[]), true),
        Action::Pause,
        "a place is free again"
    );
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=q;.;queued"),
        Some(3)
    );
}

#[test]
fn invalid_configurations_are_refused_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        ("{", "<json>"),
        (r#"{"rules":[],"extra":1}"#, "extra"),
        (r#"{"rules":[]}"#, "rules"),
        (
            r#"{"rules":[{"name":"a","limit":0,"window":"1s"}]}"#,
            "rules[0].limit",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s","burst":0}]}"#,
            "rules[0].burst",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"5x"}]}"#,
            "rules[0].window",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"0s"}]}"#,
            "rules[0].window",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s","key":"ip"}]}"#,
            "rules[0].key",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s","key":["global","header:"]}]}"#,
            "rules[0].key[1]",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s"},{"name":"a","limit":5,"window":"1s"}]}"#,
            "rules[1].name",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s","algorithm":"leaky"}]}"#,
            "rules[0].algorithm",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s","algorithm":"fixed_window","queue":{"max_delay":"1s"}}]}"#,
            "rules[0].queue",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s","algorithm":"sliding_window","burst":3}]}"#,
            "rules[0].burst",
        ),
        (
            r#"{"mode":"dry","rules":[{"name":"a","limit":5,"window":"1s"}]}"#,
            "mode",
        ),
        (
            r#"{"response_headers":"all","rules":[{"name":"a","limit":5,"window":"1s"}]}"#,
            "response_headers",
        ),
        (
            r#"{"client_ip":{"from":"x-forwarded-for","trusted_hops":0},"rules":[{"name":"a","limit":5,"window":"1s"}]}"#,
            "client_ip.trusted_hops",
        ),
        (
            r#"{"deny":{"status":99},"rules":[{"name":"a","limit":5,"window":"1s"}]}"#,
            "deny.status",
        ),
        (
            r#"{"rules":[{"name":"a b","limit":5,"window":"1s"}]}"#,
            "rules[0].name",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s","max_keys":1}]}"#,
            "rules[0].max_keys",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"1s","match":{"path_prefix":"api"}}]}"#,
            "rules[0].match.path_prefix",
        ),
    ];
    for (config, field) in cases {
        let world = World::new();
        let options = PluginOptions::new().vm_id(VM_ID).configuration(config);
        let failure = world
            .start_vm(&load_module("rate_limit"), &options)
            .err()
            .unwrap_or_else(|| panic!("accepted: {config}"));
        assert_eq!(failure.kind, FailureKind::Rejected, "{config}");
        let logged = world.logs_containing("rate_limit: invalid configuration");
        assert!(
            logged
                .iter()
                .any(|l| l.message.contains(&format!("at `{field}`"))),
            "{config}: expected field {field}, logged {logged:?}"
        );
    }
}

/// A configuration change keeps every client's budget (issue: the default hash seed came from
/// the whole configuration text, so any edit moved every key to a fresh bucket): the seed is
/// a random word the VMs share in shared data, and each rule's keys are hashed with its name,
/// so changing the deny body — or adding a rule before it — leaves the spent budget spent.
#[test]
fn a_configuration_change_keeps_the_spent_budget() {
    let world = World::new();
    let rule = r#"{"name":"per-user","key":"header:x-user","limit":10,"window":"1h"}"#;
    let before = format!(r#"{{"rules":[{rule}]}}"#);
    let vms = start(&world, &before, 2);
    for i in 0..6 {
        assert_eq!(status(&send(&vms[i % 2], "/", &[("x-user", "ann")])), 200);
    }
    let changed = [
        format!(r#"{{"rules":[{rule}],"deny":{{"body":"slow down\n"}}}}"#),
        format!(
            r#"{{"rules":[{{"name":"other","key":"header:x-team","limit":5,"window":"1m"}},{rule}],"deny":{{"body":"slow down\n"}}}}"#
        ),
    ];
    for vm in &vms {
        vm.reconfigure(&changed[0]).unwrap();
    }
    let mut allowed = 0;
    for i in 0..6 {
        if status(&send(&vms[i % 2], "/", &[("x-user", "ann")])) == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 4, "6 of 10 were spent before the change");
    for vm in &vms {
        vm.reconfigure(&changed[1]).unwrap();
    }
    let denied = send(&vms[0], "/", &[("x-user", "ann")]);
    assert_eq!(
        status(&denied),
        429,
        "still spent after a rule was added before it"
    );
    assert_eq!(denied.response().unwrap().body_text(), "slow down\n");
    // Another user still has a full budget.
    assert_eq!(status(&send(&vms[1], "/", &[("x-user", "bob")])), 200);
}

/// Bypasses that do not work: a second value of the keyed header (shared bucket for every
/// ambiguous request), other spellings of a matched path or host, and rotating addresses
/// within one IPv6 /64.
#[test]
fn rate_limit_bypasses_by_spelling_duplicates_or_ipv6_rotation_fail() {
    let world = World::new();
    let config = r#"{"rules":[
        {"name":"api","match":{"path_prefix":"/api/","hosts":["api.example.com"]},"key":"header:x-api-key","limit":2,"window":"1h"},
        {"name":"per-ip","match":{"path_prefix":"/ip/"},"key":"client_ip","limit":2,"window":"1h"}]}"#;
    let vms = start(&world, config, 2);
    let send_as = |vm: &Vm, path: &str, authority: &str, headers: &[(&str, &str)], peer: &str| {
        let mut h = Headers::from([
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
        ]);
        for (k, v) in headers {
            h.add(k, v);
        }
        let mut s = vm.stream().with_source_address(peer);
        if s.send_request_headers(h, true) == Action::Continue {
            s.respond(200, &[], b"ok");
        }
        status(&s)
    };
    let peer = "203.0.113.9:4000";
    // Spend key "k1" with spellings of the same path and host.
    assert_eq!(
        send_as(
            &vms[0],
            "/api/x",
            "api.example.com",
            &[("x-api-key", "k1")],
            peer
        ),
        200
    );
    assert_eq!(
        send_as(
            &vms[1],
            "//api/x",
            "API.example.com.",
            &[("x-api-key", "k1")],
            peer
        ),
        200
    );
    for (path, host) in [
        ("/%61pi/x", "api.example.com"),
        ("/static/../api/x", "api.example.com:443"),
    ] {
        assert_eq!(
            send_as(&vms[0], path, host, &[("x-api-key", "k1")], peer),
            429,
            "{path} {host}"
        );
    }
    // Duplicates: every request with two different values shares one bucket.
    let mut ambiguous = Vec::new();
    for i in 0..4 {
        let fresh = format!("fresh-{i}");
        ambiguous.push(send_as(
            &vms[i % 2],
            "/api/x",
            "api.example.com",
            &[("x-api-key", "k1"), ("x-api-key", &fresh)],
            peer,
        ));
    }
    assert_eq!(ambiguous, [200, 200, 429, 429]);
    // IPv6: every address of one /64 is one client.
    let statuses: Vec<u16> = (1..=4)
        .map(|i| {
            send_as(
                &vms[i % 2],
                "/ip/x",
                "h",
                &[],
                &format!("[2001:db8:1:2::{i:x}]:5000"),
            )
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(
        send_as(&vms[0], "/ip/x", "h", &[], "[2001:db8:1:3::1]:5000"),
        200,
        "another /64"
    );
}

/// Sends a request and, if it passes, answers it with `status` and `headers`.
fn answered(vm: &Vm, extra: &[(&str, &str)], status: u16, headers: &[(&str, &str)]) -> u16 {
    let mut stream = vm.stream();
    if stream.send_request_headers(request("/v1/chat", extra), true) != Action::Continue {
        return stream.local_reply().map_or(0, |r| r.status as u16);
    }
    stream.respond(status, headers, b"ok");
    status
}

/// `cost` from a request header: a request needs its whole cost; a malformed cost is
/// charged the maximum (never cheaper).
#[test]
fn a_request_costs_what_its_header_says() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"rules":[{"name":"costly","algorithm":"fixed_window","limit":10,"window":"1m",
            "cost":{"request_header":"x-cost"}}]}"#,
        2,
    );
    let cost = |vm: usize, value: &str| answered(&vms[vm], &[("x-cost", value)], 200, &[]);
    assert_eq!(cost(0, "7"), 200);
    assert_eq!(cost(1, "4"), 429, "only 3 left");
    assert_eq!(cost(1, "3"), 200);
    let world2 = World::new();
    let fresh = start(
        &world2,
        r#"{"rules":[{"name":"costly","algorithm":"fixed_window","limit":10,"window":"1m",
            "cost":{"request_header":"x-cost","max":5}}]}"#,
        1,
    );
    let fresh_cost = |value: &str| answered(&fresh[0], &[("x-cost", value)], 200, &[]);
    assert_eq!(fresh_cost("abc"), 200, "malformed: charged max = 5");
    assert_eq!(fresh_cost("0"), 200, "0: charged max = 5");
    assert_eq!(fresh_cost("1"), 429, "10 used");
    assert_eq!(
        answered(&fresh[0], &[], 200, &[]),
        429,
        "missing: 1, still over"
    );
}

/// `charge` after the response: from a response header (LLM tokens), from a trailer, or by
/// status class (failed logins). Admission checks only; the charge may go into debt, so
/// the next requests are refused on every worker until it refills. A request refused by the
/// limiter or reset before its response is charged nothing.
#[test]
fn responses_charge_the_key_after_admission() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"rules":[
            {"name":"tokens","key":"header:x-user","algorithm":"fixed_window","limit":100,"window":"1m",
             "match":{"path_prefix":"/v1/"},"charge":{"response_header":"x-usage-tokens"}},
            {"name":"streamed","key":"header:x-stream","algorithm":"fixed_window","limit":100,"window":"1m",
             "charge":{"response_trailer":"x-usage-tokens"}},
            {"name":"logins","key":"header:x-login","algorithm":"fixed_window","limit":3,"window":"1m",
             "charge":{"statuses":["4xx"]}}]}"#,
        2,
    );
    // Tokens: 150 reported by the first answer puts alice 50 into debt.
    assert_eq!(
        answered(
            &vms[0],
            &[("x-user", "alice")],
            200,
            &[("x-usage-tokens", "150")]
        ),
        200
    );
    assert_eq!(
        answered(&vms[1], &[("x-user", "alice")], 200, &[]),
        429,
        "in debt, on the other worker"
    );
    assert_eq!(
        answered(
            &vms[1],
            &[("x-user", "bob")],
            200,
            &[("x-usage-tokens", "junk")]
        ),
        200
    );
    assert_eq!(
        answered(&vms[0], &[("x-user", "bob")], 200, &[]),
        200,
        "a malformed charge is 0"
    );
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=tokens;.;charged"),
        Some(150)
    );
    // Trailers: 60 + 60 reported at the end of two streamed answers.
    for _ in 0..2 {
        let mut s = vms[0].stream();
        assert_eq!(
            s.send_request_headers(request("/stream", &[("x-stream", "carol")]), true),
            Action::Continue
        );
        s.send_response_headers(Headers::from([(":status", "200")]), false);
        s.send_response_body(b"chunk", false);
        s.send_response_trailers(Headers::from([("x-usage-tokens", "60")]));
    }
    assert_eq!(answered(&vms[1], &[("x-stream", "carol")], 200, &[]), 429);
    // Logins: successes cost nothing; three failures use the limit up.
    for _ in 0..5 {
        assert_eq!(answered(&vms[0], &[("x-login", "dave")], 200, &[]), 200);
    }
    for _ in 0..3 {
        assert_eq!(answered(&vms[1], &[("x-login", "dave")], 401, &[]), 401);
    }
    assert_eq!(answered(&vms[0], &[("x-login", "dave")], 200, &[]), 429);
    // Reset before the response: admitted, never answered, charged nothing.
    for _ in 0..3 {
        let mut s = vms[0].stream();
        assert_eq!(
            s.send_request_headers(request("/login", &[("x-login", "erin")]), true),
            Action::Continue
        );
        s.finish();
    }
    assert_eq!(
        answered(&vms[0], &[("x-login", "erin")], 401, &[]),
        401,
        "still admitted"
    );
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=logins;.;charged"),
        Some(4)
    );
}

/// A monthly quota in +02:00 on the virtual clock (which starts 2026-01-01T00:00Z, 02:00
/// local): 2 per month, shared by both workers; refused until local midnight of February 1
/// (January 31 22:00Z), with Retry-After and RateLimit's reset saying exactly that.
#[test]
fn a_monthly_quota_resets_at_local_month_end() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"response_headers":"ietf","rules":[{"name":"monthly","key":"header:x-api-key","limit":2,
            "window":"calendar_month","utc_offset":"+02:00"}]}"#,
        2,
    );
    let key = [("x-api-key", "k1")];
    assert_eq!(status(&send(&vms[0], "/", &key)), 200);
    assert_eq!(status(&send(&vms[1], "/", &key)), 200);
    let denied = send(&vms[0], "/", &key);
    let reply = denied.local_reply().expect("denied");
    assert_eq!(reply.status, 429);
    // From 2026-01-01T00:00Z to 2026-01-31T22:00Z: 30 days 22 hours.
    let until_reset = 30 * 86_400 + 22 * 3600;
    assert_eq!(
        reply.headers.get("retry-after").as_deref(),
        Some(until_reset.to_string().as_str())
    );
    let fields = reply.headers.get("ratelimit").unwrap_or_default();
    assert!(fields.contains(&format!("t={until_reset}")), "{fields}");
    world.advance(Duration::from_secs(until_reset - 1)).unwrap();
    assert_eq!(
        status(&send(&vms[1], "/", &key)),
        429,
        "still January locally"
    );
    world.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(status(&send(&vms[1], "/", &key)), 200, "February, locally");
    assert_eq!(status(&send(&vms[0], "/", &key)), 200);
    assert_eq!(status(&send(&vms[0], "/", &key)), 429);
}
