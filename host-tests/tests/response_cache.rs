//! response_cache.wasm in our host: several VMs of one world on the virtual clock.

use std::time::Duration;

use host_tests::{load_module, Action, FailureKind, Headers, PluginOptions, Stream, Vm, World};

fn start(world: &World, config: &str, workers: usize) -> Vec<Vm> {
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .plugin_name("response_cache")
        .configuration(config);
    world
        .start_vms(&load_module("response_cache"), &options, workers)
        .unwrap_or_else(|f| panic!("{f}"))
}

fn get(vm: &Vm, method: &str, path: &str, extra: &[(&str, &str)]) -> Stream {
    let mut h = Headers::from([
        (":method", method),
        (":path", path),
        (":authority", "shop.example.com"),
    ]);
    for (k, v) in extra {
        h.add(k, v);
    }
    let mut s = vm.stream();
    s.send_request_headers(h, true);
    s
}

/// A request the origin answers (if it reaches it) with `headers` and `body`; returns the
/// stream and whether the origin saw it.
fn exchange(
    vm: &Vm,
    path: &str,
    req: &[(&str, &str)],
    resp: &[(&str, &str)],
    body: &[u8],
) -> (Stream, bool) {
    let mut s = get(vm, "GET", path, req);
    let forwarded = s.upstream_request().is_some();
    if forwarded {
        s.respond(200, resp, body);
    }
    (s, forwarded)
}

fn header(s: &Stream, name: &str) -> Option<String> {
    s.response().and_then(|r| r.header(name))
}

const CACHEABLE: &[(&str, &str)] = &[
    ("cache-control", "max-age=60"),
    ("content-type", "text/html"),
    ("etag", "\"v1\""),
];

#[test]
fn a_miss_is_stored_and_then_served_without_the_origin_on_any_worker() {
    let world = World::new();
    let vms = start(&world, "{}", 2);
    let (first, forwarded) = exchange(&vms[0], "/p", &[], CACHEABLE, b"hello");
    assert!(forwarded);
    assert_eq!(
        header(&first, "cache-status").as_deref(),
        Some("edgewise; fwd=miss; stored")
    );
    for vm in &vms {
        let (hit, forwarded) = exchange(vm, "/p", &[], CACHEABLE, b"other");
        assert!(!forwarded, "a fresh hit never contacts the origin");
        let r = hit.response().unwrap();
        assert_eq!(
            (r.status(), r.body_text()),
            (Some(200), "hello".to_string())
        );
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/html"),
            "one content-type, the stored one"
        );
        assert_eq!(r.header("etag").as_deref(), Some("\"v1\""));
        assert_eq!(r.header("age").as_deref(), Some("0"));
        assert_eq!(
            r.header("cache-status").as_deref(),
            Some("edgewise; hit; ttl=60")
        );
    }
    assert_eq!(world.metric("edgewise.response_cache.hits"), Some(2));
    assert_eq!(world.metric("edgewise.response_cache.stored"), Some(1));
}

#[test]
fn age_grows_and_a_stale_entry_goes_back_to_the_origin() {
    let world = World::new();
    let vms = start(&world, "{}", 1);
    exchange(&vms[0], "/p", &[], CACHEABLE, b"v1");
    world.advance(Duration::from_secs(30)).unwrap();
    let (hit, _) = exchange(&vms[0], "/p", &[], CACHEABLE, b"v2");
    assert_eq!(header(&hit, "age").as_deref(), Some("30"));
    world.advance(Duration::from_secs(30)).unwrap();
    let (stale, forwarded) = exchange(&vms[0], "/p", &[], CACHEABLE, b"v2");
    assert!(forwarded, "60 s old: stale");
    assert_eq!(
        header(&stale, "cache-status").as_deref(),
        Some("edgewise; fwd=stale; stored")
    );
    assert_eq!(
        exchange(&vms[0], "/p", &[], CACHEABLE, b"v3")
            .0
            .response()
            .unwrap()
            .body_text(),
        "v2",
        "refreshed entry"
    );
}

#[test]
fn what_a_shared_cache_must_not_store() {
    let world = World::new();
    let vms = start(&world, "{}", 1);
    // (request headers, response headers)
    type Fields = &'static [(&'static str, &'static str)];
    let cases: &[(Fields, Fields)] = &[
        (&[], &[("cache-control", "no-store")]),
        (&[], &[("cache-control", "private, max-age=60")]),
        (
            &[],
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "session=abc"),
            ],
        ),
        (
            &[("authorization", "Bearer t")],
            &[("cache-control", "max-age=60")],
        ),
        (&[], &[("cache-control", "max-age=60"), ("vary", "*")]),
        (
            &[("cache-control", "no-store")],
            &[("cache-control", "max-age=60")],
        ),
    ];
    for (i, (req, resp)) in cases.iter().enumerate() {
        let path = format!("/private/{i}");
        let (first, _) = exchange(&vms[0], &path, req, resp, b"secret");
        assert_eq!(
            header(&first, "cache-status").as_deref(),
            Some("edgewise; fwd=miss"),
            "case {i}"
        );
        let (_, forwarded) = exchange(&vms[0], &path, &[], resp, b"secret");
        assert!(forwarded, "case {i} must not be served from cache");
    }
}

#[test]
fn vary_makes_variants_match_only_their_request() {
    let world = World::new();
    let vms = start(&world, "{}", 1);
    let resp = &[("cache-control", "max-age=60"), ("vary", "accept-encoding")];
    exchange(&vms[0], "/v", &[("accept-encoding", "gzip")], resp, b"gz");
    assert!(!exchange(&vms[0], "/v", &[("accept-encoding", "gzip")], resp, b"x").1);
    assert!(
        exchange(&vms[0], "/v", &[("accept-encoding", "br")], resp, b"br").1,
        "another encoding is a miss"
    );
}

/// RFC 9111 §4.1: several variants of one URL live side by side, each served to its own
/// requests on every worker; an unsafe method's invalidation drops them all.
#[test]
fn every_variant_of_a_url_is_kept_and_invalidated_together() {
    let world = World::new();
    let vms = start(&world, "{}", 2);
    let resp = &[("cache-control", "max-age=60"), ("vary", "Accept-Language")];
    let languages = ["en", "de", "fr", "ja"];
    for (i, lang) in languages.iter().enumerate() {
        let (_, forwarded) = exchange(
            &vms[i % 2],
            "/v",
            &[("accept-language", lang)],
            resp,
            lang.as_bytes(),
        );
        assert!(forwarded, "{lang}: first request misses");
    }
    for vm in &vms {
        for lang in languages {
            let (s, forwarded) = exchange(vm, "/v", &[("accept-language", lang)], resp, b"origin");
            assert!(!forwarded, "{lang}: a hit");
            assert_eq!(s.response().unwrap().body, lang.as_bytes());
        }
    }
    let mut post = get(&vms[0], "POST", "/v", &[]);
    post.respond(200, &[], b"");
    for lang in languages {
        let (_, forwarded) = exchange(
            &vms[1],
            "/v",
            &[("accept-language", lang)],
            resp,
            lang.as_bytes(),
        );
        assert!(forwarded, "{lang}: invalidated with the URL");
    }
}

#[test]
fn head_conditionals_and_only_if_cached() {
    let world = World::new();
    let vms = start(&world, "{}", 1);
    exchange(&vms[0], "/c", &[], CACHEABLE, b"body");
    let head = get(&vms[0], "HEAD", "/c", &[]);
    let r = head.response().unwrap();
    assert_eq!(
        (r.status(), r.body_text()),
        (Some(200), String::new()),
        "HEAD answered from the GET entry"
    );
    let not_modified = get(&vms[0], "GET", "/c", &[("if-none-match", "W/\"v1\"")]);
    assert_eq!(not_modified.response().unwrap().status(), Some(304));
    let changed = get(&vms[0], "GET", "/c", &[("if-none-match", "\"v0\"")]);
    assert_eq!(changed.response().unwrap().status(), Some(200));
    let absent = get(
        &vms[0],
        "GET",
        "/never",
        &[("cache-control", "only-if-cached")],
    );
    assert_eq!(absent.response().unwrap().status(), Some(504));
    assert!(absent.upstream_request().is_none());
    let no_cache = get(&vms[0], "GET", "/c", &[("cache-control", "no-cache")]);
    assert!(
        no_cache.upstream_request().is_some(),
        "request no-cache goes to the origin"
    );
}

#[test]
fn an_unsafe_method_invalidates_the_uri() {
    let world = World::new();
    let vms = start(&world, "{}", 1);
    exchange(&vms[0], "/item", &[], CACHEABLE, b"old");
    let mut post = get(&vms[0], "POST", "/item", &[]);
    post.respond(204, &[], b"");
    assert_eq!(world.metric("edgewise.response_cache.invalidated"), Some(1));
    assert!(
        exchange(&vms[0], "/item", &[], CACHEABLE, b"new").1,
        "gone from the cache"
    );
}

#[test]
fn memory_stays_within_the_byte_budget_and_key_set() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"max_bytes":4096,"max_entry_bytes":1024,"max_entries":16}"#,
        2,
    );
    for i in 0..300 {
        exchange(
            &vms[i % 2],
            &format!("/many/{i}"),
            &[],
            CACHEABLE,
            &[b'x'; 300],
        );
    }
    let (keys, bytes) = world.shared_data_footprint("edgewise");
    // 16 metadata + 16 entry slots, the byte counter, 16 fill locks (coalescing), the ring
    // of recent inserts (257 × 4 bytes).
    assert!(keys <= 3 * 16 + 2, "{keys} keys");
    assert!(bytes <= 4096 + 16 * 40 + 1024 + 1028, "{bytes} bytes");
    assert!(world.metric("edgewise.response_cache.evicted").unwrap_or(0) > 0);
    let (big, _) = exchange(&vms[0], "/big", &[], CACHEABLE, &[b'x'; 2000]);
    assert_eq!(
        big.response().unwrap().body.len(),
        2000,
        "passed through untouched"
    );
    assert!(
        exchange(&vms[0], "/big", &[], CACHEABLE, b"").1,
        "but not stored"
    );
}

#[test]
fn invalid_configurations_are_refused_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        (r#"{"eviction":"random"}"#, "eviction"),
        (
            r#"{"targeted_fields":["bad header"]}"#,
            "targeted_fields[0]",
        ),
        (
            r#"{"targeted_fields":["cdn-cache-control","Cache-Control"]}"#,
            "targeted_fields[1]",
        ),
        (
            r#"{"targeted_fields":["a","b","c","d","e","f","g","h","i"]}"#,
            "targeted_fields",
        ),
        (
            r#"{"strip_targeted_fields":[""]}"#,
            "strip_targeted_fields[0]",
        ),
        (
            r#"{"max_bytes":2000,"max_entry_bytes":4000}"#,
            "max_entry_bytes",
        ),
        (r#"{"max_bytes":10}"#, "max_bytes"),
        (r#"{"max_entries":1}"#, "max_entries"),
        (r#"{"default_ttl":"forever"}"#, "default_ttl"),
        (r#"{"cache_status":"my cache"}"#, "cache_status"),
        (r#"{"key":{"headers":["bad header"]}}"#, "key.headers[0]"),
        (r#"{"key":{"include":true}}"#, "include"),
        (r#"{"purge":{"method":"PURGE"}}"#, "purge.token"),
        (
            r#"{"purge":{"method":"GET","token":"0123456789"}}"#,
            "purge.method",
        ),
        (r#"{"coalesce":{"wait":"0s"}}"#, "coalesce.wait"),
        (r#"{"coalesce":{"wait":"2m"}}"#, "coalesce.wait"),
        (r#"{"coalesce":{"wait":"soon"}}"#, "coalesce.wait"),
        (
            r#"{"coalesce":{"hit_for_miss":"2h"}}"#,
            "coalesce.hit_for_miss",
        ),
        (
            r#"{"stale_while_revalidate":"10"}"#,
            "stale_while_revalidate",
        ),
        (
            r#"{"background_refresh":{"timeout":"0s"}}"#,
            "background_refresh.timeout",
        ),
        (
            r#"{"background_refresh":{"cluster":" "}}"#,
            "background_refresh.cluster",
        ),
        (r#"{"stale_if_error":"a while"}"#, "stale_if_error"),
        (r#"{"ttl":"1s"}"#, "ttl"),
        (
            r#"{"max_bytes":1073741824,"max_entry_bytes":67108864}"#,
            "max_entry_bytes",
        ),
        (
            r#"{"max_entry_bytes":1048576,"max_inflight_bytes":1024}"#,
            "max_inflight_bytes",
        ),
        (r#"{"cookie_requests":"sometimes"}"#, "cookie_requests"),
        (r#"{"stale_if_error":"500ms"}"#, "stale_if_error"),
        (r#"{"default_ttl":"1500ms"}"#, "default_ttl"),
        (
            r#"{"unkeyed_headers":{"action":"drop"}}"#,
            "unkeyed_headers.action",
        ),
        (
            r#"{"unkeyed_headers":{"names":["x ok"]}}"#,
            "unkeyed_headers.names[0]",
        ),
    ];
    for (config, field) in cases {
        let world = World::new();
        let failure = world
            .start_vm(
                &load_module("response_cache"),
                &PluginOptions::new().configuration(config),
            )
            .err()
            .unwrap_or_else(|| panic!("accepted: {config}"));
        assert_eq!(failure.kind, FailureKind::Rejected, "{config}");
        let logged = world.logs_containing("response_cache: invalid configuration");
        assert!(
            logged
                .iter()
                .any(|l| l.message.contains(&format!("at `{field}`"))),
            "{config}: expected {field}, logged {logged:?}"
        );
    }
}

#[test]
fn hits_reply_with_pause_and_misses_continue() {
    let world = World::new();
    let vms = start(&world, "{}", 1);
    let mut s = vms[0].stream();
    let action = s.send_request_headers(
        Headers::from([(":method", "GET"), (":path", "/a"), (":authority", "h")]),
        true,
    );
    assert_eq!(action, Action::Continue);
    s.respond(200, CACHEABLE, b"x");
    let mut hit = vms[0].stream();
    assert_eq!(
        hit.send_request_headers(
            Headers::from([(":method", "GET"), (":path", "/a"), (":authority", "h")]),
            true
        ),
        Action::Pause
    );
}

#[test]
fn purge_with_the_token_removes_an_entry_and_never_reaches_the_origin() {
    let world = World::new();
    let vms = start(&world, r#"{"purge":{"token":"s3cret-purge-token"}}"#, 2);
    exchange(&vms[0], "/doc", &[], CACHEABLE, b"v1");
    let denied = get(&vms[1], "PURGE", "/doc", &[("x-purge-token", "guess")]);
    assert_eq!(denied.response().unwrap().status(), Some(403));
    assert!(denied.upstream_request().is_none());
    assert!(
        !exchange(&vms[0], "/doc", &[], CACHEABLE, b"v2").1,
        "still cached"
    );
    let purged = get(
        &vms[1],
        "PURGE",
        "/doc",
        &[("x-purge-token", "s3cret-purge-token")],
    );
    assert_eq!(purged.response().unwrap().status(), Some(200));
    assert!(purged.upstream_request().is_none());
    assert_eq!(
        get(
            &vms[1],
            "PURGE",
            "/doc",
            &[("x-purge-token", "s3cret-purge-token")]
        )
        .response()
        .unwrap()
        .status(),
        Some(404)
    );
    assert!(
        exchange(&vms[0], "/doc", &[], CACHEABLE, b"v2").1,
        "purged on every worker"
    );
    assert_eq!(world.metric("edgewise.response_cache.purged"), Some(1));
}

#[test]
fn stale_if_error_answers_an_origin_error_with_the_stale_entry() {
    let world = World::new();
    let vms = start(&world, "{}", 1);
    let allowing = &[
        ("cache-control", "max-age=1, stale-if-error=60"),
        ("content-type", "text/plain"),
    ];
    exchange(&vms[0], "/s", &[], allowing, b"last good");
    world.advance(Duration::from_secs(10)).unwrap();
    let mut s = get(&vms[0], "GET", "/s", &[]);
    assert!(s.upstream_request().is_some(), "stale: the origin is asked");
    s.send_response_headers([(":status", "503"), ("content-length", "11")], false);
    s.send_response_body(b"origin down", true);
    let r = s.response().unwrap();
    assert_eq!(
        (r.status(), r.body_text()),
        (Some(200), "last good".to_string())
    );
    assert_eq!(r.header("content-length").as_deref(), Some("9"));
    assert_eq!(
        r.header("cache-status").as_deref(),
        Some("edgewise; hit; detail=stale-if-error")
    );
    assert_eq!(
        world.metric("edgewise.response_cache.stale_served"),
        Some(1)
    );
    // Beyond the window, or with must-revalidate, the error goes through.
    world.advance(Duration::from_secs(60)).unwrap();
    let mut late = get(&vms[0], "GET", "/s", &[]);
    late.send_response_headers([(":status", "503"), ("content-length", "4")], false);
    late.send_response_body(b"down", true);
    assert_eq!(late.response().unwrap().status(), Some(503));
    exchange(
        &vms[0],
        "/strict",
        &[],
        &[(
            "cache-control",
            "max-age=1, stale-if-error=60, must-revalidate",
        )],
        b"x",
    );
    world.advance(Duration::from_secs(5)).unwrap();
    let mut strict = get(&vms[0], "GET", "/strict", &[]);
    strict.send_response_headers([(":status", "502"), ("content-length", "3")], false);
    strict.send_response_body(b"bad", true);
    assert_eq!(strict.response().unwrap().status(), Some(502));
}

/// Coalescing: concurrent misses for one key on three workers make one origin request; the
/// others wait (paused) and are answered from the stored result on their worker's tick.
#[test]
fn concurrent_misses_on_different_workers_make_one_origin_request() {
    let world = World::new();
    let vms = start(&world, r#"{"coalesce":{"wait":"2s"}}"#, 3);
    let mut leader = get(&vms[0], "GET", "/hot", &[]);
    assert!(
        leader.upstream_request().is_some(),
        "the first miss goes to the origin"
    );
    let followers: Vec<Stream> = (1..3).map(|i| get(&vms[i], "GET", "/hot", &[])).collect();
    for f in &followers {
        assert!(f.upstream_request().is_none(), "a concurrent miss waits");
        assert!(f.response().is_none());
    }
    world.advance(Duration::from_millis(50)).unwrap();
    for f in &followers {
        assert!(
            f.upstream_request().is_none() && f.response().is_none(),
            "still waiting"
        );
    }
    leader.respond(200, CACHEABLE, b"hot body");
    world.advance(Duration::from_millis(10)).unwrap();
    for f in &followers {
        let r = f.response().expect("served after the fill");
        assert_eq!(r.body, b"hot body");
        assert!(f.upstream_request().is_none(), "never reached the origin");
        let status = header(f, "cache-status").unwrap();
        assert!(status.ends_with("; collapsed"), "{status}");
        assert_eq!(header(f, "content-type").as_deref(), Some("text/html"));
    }
    assert_eq!(world.metric("edgewise.response_cache.coalesced"), Some(2));
}

/// A fill that ends without a storable response releases the waiters to the origin; one
/// that never ends holds them at most `coalesce.wait`; a waiter whose client left is dropped.
#[test]
fn waiters_go_to_the_origin_when_the_fill_fails_or_takes_too_long() {
    let world = World::new();
    let vms = start(&world, r#"{"coalesce":{"wait":"1s"}}"#, 2);
    // Not storable (private): the waiter is resumed to the origin.
    let mut leader = get(&vms[0], "GET", "/private-hot", &[]);
    let waiter = get(&vms[1], "GET", "/private-hot", &[]);
    assert!(waiter.upstream_request().is_none());
    leader.respond(200, &[("cache-control", "private, max-age=60")], b"mine");
    world.advance(Duration::from_millis(10)).unwrap();
    assert!(waiter.upstream_request().is_some(), "resumed to the origin");
    assert!(waiter.response().is_none());

    // The leader never answers: waiters go to the origin after the wait.
    let _stuck = get(&vms[0], "GET", "/slow", &[]);
    let waiter = get(&vms[1], "GET", "/slow", &[]);
    let gone = get(&vms[1], "GET", "/slow", &[]);
    drop(gone); // its client left while waiting
    world.advance(Duration::from_millis(900)).unwrap();
    assert!(
        waiter.upstream_request().is_none(),
        "waits up to coalesce.wait"
    );
    world.advance(Duration::from_millis(150)).unwrap();
    assert!(
        waiter.upstream_request().is_some(),
        "gave up waiting after 1 s"
    );
    assert_eq!(world.metric("edgewise.response_cache.coalesced"), Some(0));
}

/// Hit-for-miss: once a fill ends with a response the cache may not store, concurrent
/// misses for that URL go to the origin at once (they could not share the response) for
/// `coalesce.hit_for_miss`; after that, misses coalesce again.
#[test]
fn uncacheable_urls_are_not_coalesced_for_a_while() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"coalesce":{"wait":"2s","hit_for_miss":"10s"}}"#,
        2,
    );
    let mut leader = get(&vms[0], "GET", "/live", &[]);
    let waiter = get(&vms[1], "GET", "/live", &[]);
    assert!(
        waiter.upstream_request().is_none(),
        "the first pair coalesces"
    );
    leader.respond(200, &[("cache-control", "no-store")], b"now");
    world.advance(Duration::from_millis(10)).unwrap();
    assert!(waiter.upstream_request().is_some(), "let go after the fill");
    for round in 0..3 {
        let a = get(&vms[0], "GET", "/live", &[]);
        let b = get(&vms[1], "GET", "/live", &[]);
        assert!(
            a.upstream_request().is_some() && b.upstream_request().is_some(),
            "round {round}: both at once, no waiting"
        );
        world.advance(Duration::from_secs(3)).unwrap();
    }
    // 10 s later the marker is gone: the next pair coalesces again.
    world.advance(Duration::from_secs(2)).unwrap();
    let _first = get(&vms[0], "GET", "/live", &[]);
    let second = get(&vms[1], "GET", "/live", &[]);
    assert!(second.upstream_request().is_none(), "coalesced again");
}

/// RFC 9111 §4.3: a stale entry is revalidated with its validators; the 304 refreshes the
/// entry and the client gets the stored 200 with its body.
#[test]
fn a_stale_entry_is_revalidated_and_a_304_serves_the_stored_body() {
    let world = World::new();
    let vms = start(&world, "{}", 2);
    let resp = &[
        ("cache-control", "max-age=10"),
        ("content-type", "text/html"),
        ("etag", "\"v1\""),
    ];
    exchange(&vms[0], "/doc", &[], resp, b"stored body");
    world.advance(Duration::from_secs(11)).unwrap();
    let mut s = get(&vms[1], "GET", "/doc", &[]);
    let upstream = s.upstream_request().expect("stale: goes to the origin");
    assert_eq!(
        upstream.headers.get("if-none-match").as_deref(),
        Some("\"v1\"")
    );
    s.respond(
        304,
        &[("cache-control", "max-age=600"), ("etag", "\"v1\"")],
        b"",
    );
    let r = s.response().expect("answered");
    assert_eq!(r.status(), Some(200));
    assert_eq!(r.body, b"stored body");
    assert_eq!(
        header(&s, "cache-status").as_deref(),
        Some("edgewise; fwd=stale; ttl=600; stored; fwd-status=304")
    );
    // Refreshed: fresh for 600 s more, on any worker.
    let (hit, forwarded) = exchange(&vms[0], "/doc", &[], resp, b"");
    assert!(!forwarded);
    assert_eq!(hit.response().unwrap().body, b"stored body");
}

/// RFC 9111 §4.3.4 with §3.4: a Range request revalidating a stale 200 meets an origin that
/// answers with a 206 of the same representation (same strong ETag): the 206 reaches the
/// client unchanged, and the stored 200 is freshened from its fields — later GETs, on any
/// worker, are hits with the new fields and the stored body.
#[test]
fn a_206_of_the_same_representation_freshens_the_stored_200() {
    let world = World::new();
    let vms = start(&world, "{}", 2);
    let resp = &[
        ("cache-control", "max-age=10"),
        ("content-type", "text/plain"),
        ("etag", "\"v1\""),
        ("x-version", "1"),
    ];
    exchange(&vms[0], "/doc", &[], resp, b"0123456789");
    world.advance(Duration::from_secs(11)).unwrap();
    let mut s = get(&vms[1], "GET", "/doc", &[("range", "bytes=0-1")]);
    let upstream = s.upstream_request().expect("stale: goes to the origin");
    assert_eq!(upstream.headers.get("range").as_deref(), Some("bytes=0-1"));
    assert_eq!(
        upstream.headers.get("if-none-match").as_deref(),
        Some("\"v1\"")
    );
    s.respond(
        206,
        &[
            ("cache-control", "max-age=600"),
            ("etag", "\"v1\""),
            ("x-version", "2"),
            ("content-range", "bytes 0-1/10"),
        ],
        b"01",
    );
    let r = s.response().expect("answered");
    assert_eq!(r.status(), Some(206));
    assert_eq!(r.body, b"01");
    let hit = get(&vms[0], "GET", "/doc", &[]);
    assert!(hit.upstream_request().is_none(), "freshened: a hit");
    assert_eq!(hit.response().unwrap().body, b"0123456789");
    assert_eq!(header(&hit, "x-version").as_deref(), Some("2"));
    assert_eq!(header(&hit, "content-range"), None);
    // A 206 of another representation leaves the (stale) entry as it was.
    world.advance(Duration::from_secs(601)).unwrap();
    let mut s = get(&vms[1], "GET", "/doc", &[("range", "bytes=0-1")]);
    assert!(s.upstream_request().is_some());
    s.respond(
        206,
        &[
            ("cache-control", "max-age=600"),
            ("etag", "\"v2\""),
            ("content-range", "bytes 0-1/10"),
        ],
        b"ab",
    );
    assert_eq!(s.response().unwrap().status(), Some(206));
    let stale = get(&vms[0], "GET", "/doc", &[]);
    assert!(
        stale.upstream_request().is_some(),
        "still stale: revalidated"
    );
}

const SWR: &[(&str, &str)] = &[
    ("cache-control", "max-age=10, stale-while-revalidate=60"),
    ("content-type", "text/html"),
    ("etag", "\"v1\""),
];

/// RFC 5861 §3: within the window the stale entry is served at once on every worker, and the
/// origin is asked again exactly once, in the background, from a root context.
#[test]
fn stale_while_revalidate_serves_at_once_and_refreshes_once_in_the_background() {
    let world = World::new();
    world.add_cluster("origin");
    let vms = start(
        &world,
        r#"{"background_refresh":{"cluster":"origin","timeout":"2s"}}"#,
        2,
    );
    exchange(&vms[0], "/news", &[], SWR, b"v1 body");
    world.advance(Duration::from_secs(15)).unwrap();
    let mut served = Vec::new();
    for round in 0..3 {
        for vm in &vms {
            let (s, forwarded) = exchange(vm, "/news", &[("accept-language", "de")], SWR, b"");
            assert!(
                !forwarded,
                "round {round}: served without waiting for the origin"
            );
            let r = s.response().expect("answered at once");
            assert_eq!(
                (r.status(), r.body.as_slice()),
                (Some(200), b"v1 body".as_slice())
            );
            served.push(header(&s, "cache-status").unwrap_or_default());
        }
        world.advance(Duration::from_millis(20)).unwrap();
    }
    assert!(
        served
            .iter()
            .all(|s| s == "edgewise; hit; ttl=-5; detail=stale-while-revalidate"),
        "{served:?}"
    );
    let calls = world.pending_http_calls();
    assert_eq!(calls.len(), 1, "one refresh for 6 stale hits on 2 workers");
    let call = &calls[0];
    assert_eq!(call.upstream, "origin");
    assert_eq!(call.timeout, Duration::from_secs(2));
    assert_eq!(call.header(":method").as_deref(), Some("GET"));
    assert_eq!(call.header(":path").as_deref(), Some("/news"));
    assert_eq!(
        call.header(":authority").as_deref(),
        Some("shop.example.com")
    );
    assert_eq!(call.header("if-none-match").as_deref(), Some("\"v1\""));
    assert_eq!(call.header("accept-language").as_deref(), Some("de"));

    world
        .respond_http_call(
            call.id,
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"v2\"")],
            b"v2 body",
        )
        .unwrap();
    for vm in &vms {
        let (s, forwarded) = exchange(vm, "/news", &[], SWR, b"");
        assert!(!forwarded);
        assert_eq!(
            s.response().unwrap().body,
            b"v2 body",
            "the refreshed entry"
        );
        assert_eq!(
            header(&s, "cache-status").as_deref(),
            Some("edgewise; hit; ttl=60")
        );
    }
    assert_eq!(world.metric("edgewise.response_cache.refreshed"), Some(1));
    assert_eq!(
        world.metric("edgewise.response_cache.stale_served"),
        Some(6)
    );
    assert!(world.pending_http_calls().is_empty());
}

/// A 304 to the refresh renews the stored entry (RFC 9111 §4.3.4); a failed refresh keeps
/// the stale entry and frees the key, so the next stale hit tries again.
#[test]
fn a_304_refresh_renews_and_a_failed_refresh_is_retried_by_the_next_hit() {
    let world = World::new();
    world.add_cluster("origin");
    let vms = start(&world, r#"{"background_refresh":{"cluster":"origin"}}"#, 2);
    exchange(&vms[0], "/doc", &[], SWR, b"stored body");
    world.advance(Duration::from_secs(11)).unwrap();
    exchange(&vms[1], "/doc", &[], SWR, b"");
    world.advance(Duration::from_millis(10)).unwrap();
    let call = world.pending_http_calls().remove(0);
    world
        .respond_http_call(
            call.id,
            304,
            &[
                ("cache-control", "max-age=30, stale-while-revalidate=60"),
                ("etag", "\"v1\""),
            ],
            b"",
        )
        .unwrap();
    let (s, forwarded) = exchange(&vms[0], "/doc", &[], SWR, b"");
    assert!(!forwarded);
    assert_eq!(s.response().unwrap().body, b"stored body");
    assert_eq!(
        header(&s, "cache-status").as_deref(),
        Some("edgewise; hit; ttl=30"),
        "renewed by the 304"
    );
    assert_eq!(world.metric("edgewise.response_cache.revalidated"), Some(1));

    // Stale again; this refresh fails (reset), then the next one times out (the host answers
    // a call past its timeout as Envoy does); each later hit sends a new one.
    world.advance(Duration::from_secs(31)).unwrap();
    exchange(&vms[0], "/doc", &[], SWR, b"");
    world.advance(Duration::from_millis(10)).unwrap();
    let call = world.pending_http_calls().remove(0);
    world.reset_http_call(call.id).unwrap();
    let (s, forwarded) = exchange(&vms[1], "/doc", &[], SWR, b"");
    assert!(!forwarded, "still served stale after the failed refresh");
    assert_eq!(s.response().unwrap().body, b"stored body");
    world.advance(Duration::from_millis(10)).unwrap();
    assert_eq!(world.pending_http_calls().len(), 1, "tried again");
    world.advance(Duration::from_secs(6)).unwrap();
    assert!(world.pending_http_calls().is_empty(), "timed out");
    assert_eq!(
        world.metric("edgewise.response_cache.refresh_failed"),
        Some(2)
    );
    exchange(&vms[1], "/doc", &[], SWR, b"");
    world.advance(Duration::from_millis(10)).unwrap();
    assert_eq!(
        world.pending_http_calls().len(),
        1,
        "and again after the timeout"
    );
}

/// Without `background_refresh.cluster` the refresh goes to the cluster the route picked;
/// with neither, the stale entry is revalidated in-band (the request waits for the origin).
#[test]
fn the_refresh_goes_to_the_routes_cluster_or_falls_back_to_in_band_revalidation() {
    let world = World::new();
    world.add_cluster("shop");
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .configuration("{}")
        .cluster_name("shop");
    let vm = world
        .start_vm(&load_module("response_cache"), &options)
        .unwrap();
    exchange(&vm, "/a", &[], SWR, b"a");
    world.advance(Duration::from_secs(11)).unwrap();
    let (_, forwarded) = exchange(&vm, "/a", &[], SWR, b"");
    assert!(!forwarded);
    world.advance(Duration::from_millis(10)).unwrap();
    let calls = world.pending_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].upstream, "shop");

    let world = World::new();
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .configuration("{}")
        .cluster_name("");
    let vm = world
        .start_vm(&load_module("response_cache"), &options)
        .unwrap();
    exchange(&vm, "/a", &[], SWR, b"a");
    world.advance(Duration::from_secs(11)).unwrap();
    let s = get(&vm, "GET", "/a", &[]);
    let upstream = s.upstream_request().expect("revalidated in-band");
    assert_eq!(
        upstream.headers.get("if-none-match").as_deref(),
        Some("\"v1\"")
    );
    world.advance(Duration::from_millis(10)).unwrap();
    assert!(world.pending_http_calls().is_empty());
}

/// Bad input has a defined behaviour and never traps: a response whose stream ends before
/// its body does is never stored (no partial body); malformed or non-UTF-8 caching fields
/// and huge header values are handled (not stored, or stored with the stale/ignored value)
/// without a panic.
#[test]
fn bad_input_never_traps_and_never_stores_a_partial_body() {
    let world = World::new();
    let vms = start(&world, "{}", 1);
    // Reset mid-body: headers and one chunk, then the stream ends without end_of_stream.
    let mut cut = get(&vms[0], "GET", "/cut", &[]);
    let mut response = Headers::from([(":status", "200"), ("cache-control", "max-age=60")]);
    response.add("content-type", "text/plain");
    cut.send_response_headers(response, false);
    cut.send_response_body(b"first half", false);
    cut.finish();
    assert!(
        exchange(&vms[0], "/cut", &[], CACHEABLE, b"whole").1,
        "nothing was stored from the cut response"
    );
    assert!(
        !exchange(&vms[0], "/cut", &[], CACHEABLE, b"").1,
        "the whole one was"
    );

    // Malformed fields: each response passes through, and a request never traps.
    let huge = "x".repeat(64 * 1024);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "/cc",
            vec![("cache-control", "max-age=ten, s-maxage=, =, ,,")],
        ),
        (
            "/expires",
            vec![("expires", "not a date"), ("date", "yesterday")],
        ),
        ("/age", vec![("cache-control", "max-age=60"), ("age", "-5")]),
        (
            "/vary",
            vec![("cache-control", "max-age=60"), ("vary", ", ,accept,,")],
        ),
        (
            "/huge",
            vec![("cache-control", "max-age=60"), ("x-huge", &huge)],
        ),
    ];
    for (path, headers) in &cases {
        let (s, forwarded) = exchange(&vms[0], path, &[], headers, b"body");
        assert!(forwarded, "{path}");
        assert_eq!(s.response().unwrap().body, b"body", "{path}");
        let (again, _) = exchange(&vms[0], path, &[], headers, b"body");
        assert_eq!(again.response().unwrap().body, b"body", "{path}");
    }
    // Non-UTF-8 values in the request and the response.
    let mut s = vms[0].stream();
    let mut request = Headers::from([(":method", "GET"), (":path", "/bytes"), (":authority", "a")]);
    request.add("cache-control", [0xff, 0xfe, b'=', 0x80]);
    request.add("accept", [0xc3, 0x28]);
    s.send_request_headers(request, true);
    let mut response = Headers::from([(":status", "200"), ("cache-control", "max-age=60")]);
    response.add("x-binary", [0xff, 0x00, 0xfe]);
    s.send_response_headers(response, true);
    assert_eq!(s.response().unwrap().status(), Some(200));
    assert!(
        exchange(&vms[0], "/bytes", &[], CACHEABLE, b"x").1,
        "a response with a non-UTF-8 value is not stored"
    );
}

/// Group purges through the module: pages tagged by Surrogate-Key / Cache-Tag (stripped from
/// what clients get); a purge by tag on one worker makes exactly those pages misses on every
/// worker; a soft purge serves the page stale once while one request revalidates in the
/// background; purges by prefix and of everything; refusals without the token and for
/// malformed targets.
#[test]
fn purges_by_tag_prefix_and_everything_reach_every_worker() {
    let world = World::new();
    world.add_cluster("origin");
    let config = r#"{"purge":{"token":"s3cret-purge-token"},"stale_while_revalidate":"30s",
        "background_refresh":{"cluster":"origin"}}"#;
    let vms = start(&world, config, 2);
    let token = ("x-purge-token", "s3cret-purge-token");
    let tagged = |tags: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("surrogate-key", tags),
        ]
    };
    for (path, tags) in [
        ("/p/1", "product-1 listing"),
        ("/p/2", "product-2 listing"),
        ("/about", "site"),
    ] {
        let (s, forwarded) = exchange(&vms[0], path, &[], &tagged(tags), b"v1");
        assert!(forwarded);
        assert_eq!(
            header(&s, "surrogate-key"),
            None,
            "tags are not for clients"
        );
    }
    let cached = |path: &str| !exchange(&vms[1], path, &[], &tagged("x"), b"v2").1;
    assert!(cached("/p/1") && cached("/p/2") && cached("/about"));
    let purge = |extra: &[(&str, &str)]| {
        let mut fields = vec![token];
        fields.extend_from_slice(extra);
        let s = get(&vms[1], "PURGE", "/", &fields);
        assert!(s.upstream_request().is_none());
        s.response().unwrap().status()
    };
    assert_eq!(
        get(&vms[1], "PURGE", "/", &[("x-purge-tag", "product-1")])
            .response()
            .unwrap()
            .status(),
        Some(403)
    );
    assert_eq!(purge(&[("x-purge-tag", "product-1")]), Some(200));
    // Exactly the tagged page misses, on the other worker too.
    assert!(!cached("/p/1"), "purged by tag");
    assert!(cached("/p/2") && cached("/about"));
    // Soft: served stale at once, one background revalidation refreshes it.
    assert_eq!(
        purge(&[("x-purge-tag", "listing"), ("x-purge-soft", "1")]),
        Some(200)
    );
    let (stale, forwarded) = exchange(&vms[0], "/p/2", &[], &tagged("x"), b"v3");
    assert!(!forwarded, "answered stale, not from the origin");
    assert!(
        header(&stale, "cache-status").is_some_and(|s| s.contains("stale-while-revalidate")),
        "{:?}",
        header(&stale, "cache-status")
    );
    world.advance(std::time::Duration::from_millis(20)).unwrap();
    let calls = world.pending_http_calls();
    assert_eq!(calls.len(), 1, "one revalidation: {calls:?}");
    assert_eq!(calls[0].header("if-none-match").as_deref(), Some("\"v1\""));
    world
        .respond_http_call(calls[0].id, 304, &[("cache-control", "max-age=60")], b"")
        .unwrap();
    let fresh = get(&vms[1], "GET", "/p/2", &[]);
    assert!(fresh.upstream_request().is_none());
    assert!(
        header(&fresh, "cache-status").is_some_and(|s| s.contains("hit") && !s.contains("stale"))
    );
    // Prefix and everything.
    assert_eq!(purge(&[("x-purge-prefix", "/p/")]), Some(200));
    assert!(!cached("/p/2") && cached("/about"));
    assert_eq!(purge(&[("x-purge-all", "1")]), Some(200));
    assert!(!cached("/about"));
    // Malformed: refused, nothing purged.
    assert_eq!(purge(&[("x-purge-prefix", "p")]), Some(400));
    assert!(cached("/about"));
}

/// Fleet purges: one poll per Envoy per period (both workers share a lease), with the
/// token; the log's purges become rules on every worker and the cursor moves; a poll that
/// fails or times out never holds traffic and the next one retries; a log trimmed past the
/// cursor soft-purges everything.
#[test]
fn fleet_purges_are_polled_once_per_envoy_and_applied() {
    let world = World::new();
    world.add_cluster("control");
    let config =
        r#"{"fleet":{"cluster":"control","token":"a-control-token-of-length","poll":"1s"}}"#;
    let vms = start(&world, config, 2);
    let tagged: &[(&str, &str)] = &[
        ("cache-control", "max-age=600"),
        ("etag", "\"v1\""),
        ("surrogate-key", "product-1"),
    ];
    let poll = |after: &str| {
        world
            .advance(std::time::Duration::from_millis(1_100))
            .unwrap();
        let calls = world.pending_http_calls();
        assert_eq!(calls.len(), 1, "one poll for both workers: {calls:?}");
        let call = calls[0].clone();
        assert_eq!(call.upstream, "control");
        assert_eq!(
            call.header(":path").as_deref(),
            Some(format!("/v1/purges?after={after}").as_str())
        );
        assert_eq!(
            call.header("authorization").as_deref(),
            Some("Bearer a-control-token-of-length")
        );
        call
    };
    // Starting empty: from the end of the log, nothing applied.
    let first = poll("");
    world
        .respond_http_call(
            first.id,
            200,
            &[],
            br#"{"last":"100-0","trimmed":"0-0","entries":[]}"#,
        )
        .unwrap();
    assert!(exchange(&vms[0], "/p/1", &[], tagged, b"v1").1);
    assert!(
        exchange(
            &vms[1],
            "/p/2",
            &[],
            &[("cache-control", "max-age=600")],
            b"v1"
        )
        .1
    );
    let cached = |path: &str| !exchange(&vms[1], path, &[], tagged, b"v2").1;
    assert!(cached("/p/1") && cached("/p/2"));
    // A failing poll: nothing changes, traffic flows, the next poll asks again.
    let failing = poll("100-0");
    world.respond_http_call(failing.id, 503, &[], b"").unwrap();
    assert!(cached("/p/1"));
    let purge = poll("100-0");
    world
        .respond_http_call(
            purge.id,
            200,
            &[],
            br#"{"last":"101-0","trimmed":"0-0","entries":[{"id":"101-0","kind":"tag","host":"","value":"product-1","soft":false}]}"#,
        )
        .unwrap();
    assert!(
        !cached("/p/1"),
        "purged by the fleet, on the other worker too"
    );
    assert!(cached("/p/2"));
    assert_eq!(
        world.metric("edgewise.response_cache.fleet_purges"),
        Some(1)
    );
    // A gap: the log trimmed what this Envoy never saw — everything stale.
    let gap = poll("101-0");
    world
        .respond_http_call(
            gap.id,
            200,
            &[],
            br#"{"last":"900-0","trimmed":"500-0","entries":[]}"#,
        )
        .unwrap();
    let (stale, forwarded) = exchange(
        &vms[0],
        "/p/2",
        &[],
        &[("cache-control", "max-age=600")],
        b"v3",
    );
    assert!(forwarded, "revalidated after the gap");
    assert!(header(&stale, "cache-status").is_some_and(|s| s.contains("fwd=stale")));
    for vm in &vms {
        assert!(vm.failure().is_none());
    }
}

/// `fleet.settle` (a cache in front of another cache tier): for that long after a fleet
/// purge, what it stores stays subject to the purge — a copy refilled from a tier behind
/// that has not polled yet does not outlive the purge; after the window, refills stay.
#[test]
fn a_settle_window_keeps_refills_from_an_unpurged_tier_purged() {
    let world = World::new();
    world.add_cluster("control");
    let config = r#"{"fleet":{"cluster":"control","token":"a-control-token-of-length","poll":"1s","settle":"3s"}}"#;
    let vms = start(&world, config, 1);
    let tagged: &[(&str, &str)] = &[("cache-control", "max-age=600"), ("surrogate-key", "t")];
    let answer = |body: &[u8]| {
        world
            .advance(std::time::Duration::from_millis(1_100))
            .unwrap();
        let calls = world.pending_http_calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        world
            .respond_http_call(calls[0].id, 200, &[], body)
            .unwrap();
    };
    answer(br#"{"last":"100-0","trimmed":"0-0","entries":[]}"#);
    assert!(exchange(&vms[0], "/p", &[], tagged, b"v1").1);
    assert!(!exchange(&vms[0], "/p", &[], tagged, b"v1").1, "a hit");
    answer(br#"{"last":"101-0","trimmed":"0-0","entries":[{"id":"101-0","kind":"tag","host":"","value":"t","soft":false}]}"#);
    // The tier behind still answers with the old page: refilled, and purged again.
    assert!(exchange(&vms[0], "/p", &[], tagged, b"old").1, "purged");
    assert!(
        exchange(&vms[0], "/p", &[], tagged, b"old").1,
        "the refill is still purged"
    );
    // After the window, the refill stays.
    world.advance(std::time::Duration::from_secs(3)).unwrap();
    let _ = world
        .pending_http_calls()
        .iter()
        .map(|c| world.respond_http_call(c.id, 503, &[], b""))
        .count();
    assert!(exchange(&vms[0], "/p", &[], tagged, b"new").1);
    assert!(
        !exchange(&vms[0], "/p", &[], tagged, b"new").1,
        "a hit again"
    );
}
