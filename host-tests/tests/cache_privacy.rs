//! response_cache.wasm never hands one user's response to another, and stays bounded under
//! hostile traffic: two clients on two worker VMs of one world; the second must never get the
//! first's body or Set-Cookie. Each test names the rule (and RFC section) it checks.

use std::time::Duration;

use host_tests::{load_module, Headers, PluginOptions, Stream, Vm, World};

fn start(world: &World, config: &str) -> Vec<Vm> {
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .plugin_name("response_cache")
        .configuration(config);
    world
        .start_vms(&load_module("response_cache"), &options, 2)
        .unwrap_or_else(|f| panic!("{f}"))
}

fn request(vm: &Vm, method: &str, path: &str, extra: &[(&str, &str)]) -> Stream {
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

/// One GET; the origin (when reached) answers 200 with `response` and `body`. Returns the
/// body the client got and whether the origin saw the request.
fn fetch(
    vm: &Vm,
    path: &str,
    req: &[(&str, &str)],
    response: &[(&str, &str)],
    body: &str,
) -> (Stream, bool) {
    let mut s = request(vm, "GET", path, req);
    let forwarded = s.upstream_request().is_some();
    if forwarded {
        s.respond(200, response, body.as_bytes());
    }
    (s, forwarded)
}

fn body(s: &Stream) -> String {
    s.response().map(|r| r.body_text()).unwrap_or_default()
}

fn header(s: &Stream, name: &str) -> Option<String> {
    s.response().and_then(|r| r.header(name))
}

/// The example config's stale windows (envoy/examples/response-cache.yaml).
const STALE_WINDOWS: &str = r#"{"stale_while_revalidate":"1m","stale_if_error":"5m"}"#;

/// Issue scenario 1: a session page with no cache headers, asked for with Cookie, never
/// reaches a client without the cookie — not with `max-stale` (RFC 9111 §4.2.4), not within
/// configured stale windows (RFC 5861), in the default, the example, or the "store" config.
#[test]
fn a_session_page_without_cache_headers_never_reaches_another_user() {
    for config in [
        "{}",
        STALE_WINDOWS,
        r#"{"cookie_requests":"store","stale_while_revalidate":"1m"}"#,
    ] {
        let world = World::new();
        let vms = start(&world, config);
        let (alice, forwarded) = fetch(
            &vms[0],
            "/account",
            &[("cookie", "session=alice")],
            &[("content-type", "text/html")],
            "alice's account",
        );
        assert!(forwarded);
        assert_eq!(body(&alice), "alice's account");
        world.advance(Duration::from_secs(1)).unwrap();
        for (vm, req) in [
            (&vms[1], &[("cache-control", "max-stale")][..]),
            (&vms[1], &[][..]),
            (&vms[0], &[("cache-control", "max-stale=3600")][..]),
        ] {
            let (bob, forwarded) = fetch(vm, "/account", req, &[], "guest page");
            assert!(forwarded, "{config}: {req:?} must reach the origin");
            assert_eq!(body(&bob), "guest page", "{config}");
        }
        assert_eq!(world.metric("edgewise.response_cache.stored"), Some(0));
    }
}

/// Even without Cookie: a response with neither freshness nor a validator is not stored
/// (it could only ever be served stale), so a client's max-stale never gets it.
#[test]
fn a_response_without_freshness_or_validator_is_not_stored() {
    let world = World::new();
    let vms = start(&world, STALE_WINDOWS);
    fetch(&vms[0], "/p", &[], &[], "first");
    let (s, forwarded) = fetch(
        &vms[1],
        "/p",
        &[("cache-control", "max-stale")],
        &[],
        "second",
    );
    assert!(forwarded);
    assert_eq!(body(&s), "second");
    assert_eq!(
        header(&s, "cache-status").as_deref(),
        Some("edgewise; fwd=miss")
    );
}

/// `cookie_requests: "explicit"` (default): a response to a Cookie request is shared only
/// with public, s-maxage, max-age or Expires; with only an ETag or a Last-Modified it is not.
/// RFC 9111 §3.5: Authorization takes public, s-maxage or must-revalidate.
#[test]
fn credentials_need_an_explicit_allowance_to_share() {
    let world = World::new();
    let vms = start(&world, "{}");
    let cases: &[(&[(&str, &str)], &[(&str, &str)], bool)] = &[
        (&[("cookie", "s=a")], &[("etag", "\"a\"")], false),
        (
            &[("cookie", "s=a")],
            &[("last-modified", "Sat, 21 Nov 2026 10:00:00 GMT")],
            false,
        ),
        (
            &[("cookie", "s=a")],
            &[("cache-control", "max-age=60")],
            true,
        ),
        (
            &[("cookie", "s=a")],
            &[("cache-control", "s-maxage=60")],
            true,
        ),
        (
            &[("authorization", "Bearer a")],
            &[("cache-control", "max-age=60")],
            false,
        ),
        (
            &[("authorization", "Bearer a")],
            &[("cache-control", "public, max-age=60")],
            true,
        ),
    ];
    for (i, (req, resp, shared)) in cases.iter().enumerate() {
        let path = format!("/c/{i}");
        fetch(&vms[0], &path, req, resp, "personal");
        let (other, forwarded) = fetch(&vms[1], &path, &[], resp, "anonymous");
        assert_eq!(!forwarded, *shared, "{req:?} {resp:?}");
        assert_eq!(
            body(&other),
            if *shared { "personal" } else { "anonymous" },
            "{req:?} {resp:?}"
        );
    }
    // "bypass": a Cookie request neither stores nor is served from the cache.
    let world = World::new();
    let vms = start(&world, r#"{"cookie_requests":"bypass"}"#);
    fetch(
        &vms[0],
        "/pub",
        &[],
        &[("cache-control", "max-age=60")],
        "public",
    );
    let (s, forwarded) = fetch(&vms[1], "/pub", &[("cookie", "s=b")], &[], "bob");
    assert!(forwarded);
    assert_eq!(body(&s), "bob");
    assert_eq!(
        header(&s, "cache-status").as_deref(),
        Some("edgewise; fwd=bypass; detail=cookie")
    );
}

const REVALIDATED: &[(&str, &str)] = &[("cache-control", "max-age=1"), ("etag", "\"v1\"")];

/// Issue scenario 2, in-band (RFC 9111 §4.3.4): alice's revalidation is answered 304 with her
/// Set-Cookie — she gets it, the stored entry does not, bob's hit never carries it.
#[test]
fn a_304_set_cookie_reaches_only_the_revalidating_client() {
    let world = World::new();
    let vms = start(&world, "{}");
    fetch(&vms[0], "/home", &[], REVALIDATED, "home page");
    world.advance(Duration::from_secs(2)).unwrap();
    let mut alice = request(&vms[0], "GET", "/home", &[("cookie", "s=alice")]);
    let sent = alice.upstream_request().expect("stale: revalidated");
    assert_eq!(sent.header("if-none-match").as_deref(), Some("\"v1\""));
    alice.respond(
        304,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("set-cookie", "session=alice-secret"),
        ],
        b"",
    );
    assert_eq!(body(&alice), "home page");
    assert_eq!(
        header(&alice, "set-cookie").as_deref(),
        Some("session=alice-secret"),
        "the revalidating client gets its own 304 fields"
    );
    let (bob, forwarded) = fetch(&vms[1], "/home", &[], &[], "");
    assert!(!forwarded, "renewed for 60 s by the 304");
    assert_eq!(body(&bob), "home page");
    assert_eq!(
        header(&bob, "set-cookie"),
        None,
        "never another user's cookie"
    );
}

/// A 304 that says `private` or `no-store`, or changes Vary, drops the entry: the next client
/// goes to the origin. The same rules for the background refresh of stale-while-revalidate.
#[test]
fn a_304_that_makes_the_entry_unshareable_drops_it() {
    for (i, fields) in [
        &[("cache-control", "private, max-age=60")][..],
        &[("cache-control", "no-store")][..],
        &[("cache-control", "max-age=60"), ("vary", "cookie")][..],
    ]
    .iter()
    .enumerate()
    {
        let world = World::new();
        let vms = start(&world, "{}");
        let path = format!("/d/{i}");
        fetch(&vms[0], &path, &[], REVALIDATED, "shared");
        world.advance(Duration::from_secs(2)).unwrap();
        let mut alice = request(&vms[0], "GET", &path, &[("cookie", "s=alice")]);
        assert!(alice.upstream_request().is_some());
        alice.respond(304, fields, b"");
        assert_eq!(body(&alice), "shared");
        let (bob, forwarded) = fetch(&vms[1], &path, &[], &[], "fresh from origin");
        assert!(
            forwarded,
            "{fields:?}: the entry was dropped, got {:?}",
            body(&bob)
        );
        assert_eq!(body(&bob), "fresh from origin");
    }

    // Background refresh (RFC 5861 §3): its 304's Set-Cookie is not stored either.
    let world = World::new();
    world.add_cluster("origin");
    let vms = start(&world, r#"{"background_refresh":{"cluster":"origin"}}"#);
    let swr = [
        ("cache-control", "max-age=10, stale-while-revalidate=60"),
        ("etag", "\"v1\""),
    ];
    fetch(&vms[0], "/swr", &[], &swr, "stored");
    world.advance(Duration::from_secs(11)).unwrap();
    let (stale, _) = fetch(&vms[1], "/swr", &[("cookie", "s=alice")], &[], "");
    assert_eq!(body(&stale), "stored");
    world.advance(Duration::from_millis(10)).unwrap();
    let call = world.pending_http_calls().remove(0);
    world
        .respond_http_call(
            call.id,
            304,
            &[
                ("cache-control", "max-age=30"),
                ("etag", "\"v1\""),
                ("set-cookie", "session=alice-secret"),
            ],
            b"",
        )
        .unwrap();
    let (bob, forwarded) = fetch(&vms[0], "/swr", &[], &[], "");
    assert!(!forwarded);
    assert_eq!(
        header(&bob, "cache-status").as_deref(),
        Some("edgewise; hit; ttl=30")
    );
    assert_eq!(header(&bob, "set-cookie"), None);
}

/// Web cache poisoning: an unkeyed header the origin reflects (X-Forwarded-Host here) never
/// puts the attacker's value in front of another user — bypassed by default, stripped before
/// the origin with `unkeyed_headers.action: "strip"`.
#[test]
fn unkeyed_headers_never_poison_the_shared_entry() {
    // The origin reflects X-Forwarded-Host into a link, with max-age=60.
    let origin = |s: &mut Stream| {
        let sent = s.upstream_request().expect("forwarded");
        let host = sent
            .header("x-forwarded-host")
            .unwrap_or_else(|| "shop.example.com".into());
        s.respond(
            200,
            &[("cache-control", "max-age=60")],
            format!("<script src=//{host}/app.js>").as_bytes(),
        );
    };
    for config in ["{}", r#"{"unkeyed_headers":{"action":"strip"}}"#] {
        let world = World::new();
        let vms = start(&world, config);
        let mut attacker = request(&vms[0], "GET", "/", &[("x-forwarded-host", "evil.example")]);
        origin(&mut attacker);
        let mut victim = request(&vms[1], "GET", "/", &[]);
        if victim.upstream_request().is_some() {
            origin(&mut victim);
        }
        assert_eq!(
            body(&victim),
            "<script src=//shop.example.com/app.js>",
            "{config}"
        );
    }
    // With strip, the attacker's request was cached — without the field ever reaching it.
    let world = World::new();
    let vms = start(&world, r#"{"unkeyed_headers":{"action":"strip"}}"#);
    let mut s = request(&vms[0], "GET", "/x", &[("x-original-url", "/admin")]);
    assert_eq!(s.upstream_request().unwrap().header("x-original-url"), None);
    s.respond(200, &[("cache-control", "max-age=60")], b"x");
    assert_eq!(world.metric("edgewise.response_cache.stored"), Some(1));
}

/// Parameter cloaking: a parameter behind `;` in an ignored one stays keyed.
#[test]
fn a_parameter_hidden_behind_a_semicolon_stays_in_the_key() {
    let world = World::new();
    let vms = start(&world, r#"{"key":{"ignore_query_params":["utm_content"]}}"#);
    let cacheable = [("cache-control", "max-age=60")];
    fetch(
        &vms[0],
        "/jsonp?callback=ok&utm_content=x;callback=evil",
        &[],
        &cacheable,
        "evil()",
    );
    let (victim, forwarded) = fetch(&vms[1], "/jsonp?callback=ok", &[], &cacheable, "ok()");
    assert!(forwarded);
    assert_eq!(body(&victim), "ok()");
}

/// A body on GET bypasses the cache (the origin may act on it); HEAD, Range, no-store and
/// conditional requests never mark the URL uncacheable for others (hit-for-miss), and a 206
/// is never stored as the URL's response.
#[test]
fn odd_requests_do_not_change_what_others_get() {
    let world = World::new();
    let vms = start(&world, "{}");
    let cacheable = [("cache-control", "max-age=60")];
    let mut with_body = vms[0].stream();
    with_body.send_request_headers(
        Headers::from([
            (":method", "GET"),
            (":path", "/b"),
            (":authority", "shop.example.com"),
        ]),
        false,
    );
    with_body.send_request_body(b"{\"user\":\"alice\"}", true);
    with_body.respond(200, &cacheable, b"alice's search");
    assert_eq!(
        header(&with_body, "cache-status").as_deref(),
        Some("edgewise; fwd=bypass; detail=request-body")
    );
    let (s, forwarded) = fetch(&vms[1], "/b", &[], &cacheable, "plain");
    assert!(forwarded);
    assert_eq!(body(&s), "plain");

    // Range answered 206: passed on, not stored; a HEAD, a no-store and a conditional miss
    // answered with uncacheable responses: none of them turns coalescing off for /r.
    let mut range = request(&vms[0], "GET", "/r", &[("range", "bytes=0-1")]);
    range.respond(
        206,
        &[
            ("cache-control", "max-age=60"),
            ("content-range", "bytes 0-1/4"),
        ],
        b"ab",
    );
    let mut head = request(&vms[0], "HEAD", "/r", &[]);
    head.respond(200, &[("cache-control", "no-store")], b"");
    let mut no_store = request(&vms[1], "GET", "/r", &[("cache-control", "no-store")]);
    no_store.respond(200, &cacheable, b"abcd");
    let mut conditional = request(&vms[1], "GET", "/r", &[("if-none-match", "\"x\"")]);
    conditional.respond(304, &[("etag", "\"x\"")], b"");
    assert_eq!(
        world.metric("edgewise.response_cache.stored"),
        Some(1),
        "only /b's plain GET"
    );
    // Two plain misses still coalesce: one origin request.
    let mut first = request(&vms[0], "GET", "/r", &[]);
    assert!(first.upstream_request().is_some());
    let second = request(&vms[1], "GET", "/r", &[]);
    assert!(second.upstream_request().is_none(), "waits for the fill");
    first.respond(200, &cacheable, b"abcd");
    world.advance(Duration::from_millis(10)).unwrap();
    assert_eq!(body(&second), "abcd");
    assert_eq!(world.metric("edgewise.response_cache.coalesced"), Some(1));
}

/// The copies of responses being stored on one worker share `max_inflight_bytes`: beyond it a
/// store is abandoned and the response still flows whole to its client.
#[test]
fn responses_being_stored_share_one_byte_budget_per_worker() {
    let world = World::new();
    let vms = start(
        &world,
        r#"{"max_entry_bytes":1100,"max_inflight_bytes":2048,"coalesce":{"enabled":false}}"#,
    );
    let mut streams: Vec<Stream> = (0..3)
        .map(|i| request(&vms[0], "GET", &format!("/big/{i}"), &[]))
        .collect();
    for s in streams.iter_mut() {
        let mut h = Headers::from([(":status", "200")]);
        h.add("cache-control", "max-age=60");
        s.send_response_headers(h, false);
        s.send_response_body(&[b'x'; 800], false);
    }
    assert_eq!(
        world.metric("edgewise.response_cache.store_abandoned"),
        Some(1),
        "the third copy does not fit 2048 bytes"
    );
    for s in streams.iter_mut() {
        s.send_response_body(&[b'y'; 100], true);
        assert_eq!(s.response().unwrap().body.len(), 900, "passed on whole");
    }
    assert_eq!(world.metric("edgewise.response_cache.stored"), Some(2));
    // The budget is given back: later stores fit again.
    for s in streams.iter_mut() {
        s.finish();
    }
    let (_, forwarded) = fetch(
        &vms[0],
        "/big/2",
        &[],
        &[("cache-control", "max-age=60")],
        "z",
    );
    assert!(forwarded);
    assert_eq!(world.metric("edgewise.response_cache.stored"), Some(3));
}

/// Coalescing waiters cost O(1) per tick while their fill goes on: 50 waiters on one worker
/// make one fill-lock read per tick, not a lookup and decode each.
#[test]
fn waiting_requests_cost_one_read_per_key_per_tick() {
    let world = World::new();
    let vms = start(&world, "{}");
    let mut leader = request(&vms[0], "GET", "/slow", &[]);
    assert!(leader.upstream_request().is_some());
    let waiters: Vec<Stream> = (0..50)
        .map(|_| request(&vms[1], "GET", "/slow", &[]))
        .collect();
    assert!(waiters.iter().all(|w| w.upstream_request().is_none()));
    vms[1].host_calls();
    world.advance(Duration::from_millis(50)).unwrap();
    let calls = vms[1].host_calls();
    let reads = calls.get("get_shared_data").copied().unwrap_or(0);
    assert!(
        reads <= 11,
        "{reads} shared-data reads for 10 ticks of 50 waiters"
    );
    leader.respond(200, &[("cache-control", "max-age=60")], b"done");
    world.advance(Duration::from_millis(10)).unwrap();
    assert!(waiters.iter().all(|w| body(w) == "done"));
}
