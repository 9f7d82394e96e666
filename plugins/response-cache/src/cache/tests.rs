//! The cache decisions, tested natively across phases (request, response, revalidation, refresh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use edgewise_support::store::MemoryStore;

fn request(extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "example.com"),
        (":path", "/doc"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    headers.sort();
    headers
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Stores a 200 for /doc at t=1000 and returns the forwarded decision at `at`.
fn stale_decision(
    config: &Config,
    store: &MemoryStore,
    response: &[(&str, &str)],
    at: i64,
    extra: &[(&str, &str)],
) -> Pending {
    store_doc(config, store, response);
    match on_request(config, store, &mut request(extra), at) {
        RequestDecision::Forward(pending) => *pending,
        other => panic!("expected a forward at {at}, got {other:?}"),
    }
}

/// Stores a 200 with body "body" for /doc at t=1000.
fn store_doc(config: &Config, store: &MemoryStore, response: &[(&str, &str)]) {
    let RequestDecision::Forward(pending) = on_request(config, store, &mut request(&[]), 1000)
    else {
        panic!("first request must be forwarded");
    };
    let headers = pairs(response);
    storable(config, &pending, 200, &headers).unwrap();
    let entry = entry_for(
        &config.tags,
        &pending,
        200,
        &headers,
        b"body".to_vec(),
        1000,
        &mut |_| None,
    )
    .unwrap();
    let mut seed = 7u64;
    let inserted = storage::insert(
        store,
        &config.layout,
        pending.key_hash,
        &entry.encode(),
        1000,
        &mut || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed
        },
    );
    assert!(matches!(inserted, storage::Insert::Stored { .. }));
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

/// Stores a response to `client` for /doc at t=1000 through `cache::store`.
fn store_variant(
    config: &Config,
    store_: &MemoryStore,
    client: &[(&str, &str)],
    response: &[(&str, &str)],
    body: &[u8],
) {
    // no-cache: forwarded whatever is stored, as a replacement would be.
    let mut request = request(&[client, &[("cache-control", "no-cache")]].concat());
    let RequestDecision::Forward(pending) = on_request(config, store_, &mut request, 1000) else {
        panic!("must be forwarded");
    };
    // As the adapter reads them: every line of a varied field.
    let mut header = |name: &str| request.field_combined(name);
    let entry = entry_for(
        &config.tags,
        &pending,
        200,
        &pairs(response),
        body.to_vec(),
        1000,
        &mut header,
    )
    .unwrap();
    static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(99);
    let mut seed = SEED.fetch_add(7919, std::sync::atomic::Ordering::Relaxed);
    let inserted = store(config, store_, pending.key_hash, entry, 1000, &mut || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        seed
    });
    assert!(matches!(inserted, storage::Insert::Stored { .. }));
}

fn served_body(config: &Config, store_: &MemoryStore, client: &[(&str, &str)]) -> Option<Vec<u8>> {
    match on_request(config, store_, &mut request(client), 1001) {
        RequestDecision::Serve { body, .. } => Some(body),
        _ => None,
    }
}

/// RFC 9111 §4.1: each Vary variant of a URL is stored and served to its own requests;
/// a variant replaces only itself; a change of the Vary fields, an invalidation or a
/// purge of the URL drops every variant.
#[test]
fn several_variants_of_one_url() {
    let config = Config::from_json(b"{}").unwrap();
    let s = MemoryStore::default();
    let vary = [("cache-control", "max-age=60"), ("vary", "Accept-Language")];
    let (en, de, fr) = (
        [("accept-language", "en")],
        [("accept-language", "de")],
        [("accept-language", "fr")],
    );
    store_variant(&config, &s, &en, &vary, b"hello");
    store_variant(&config, &s, &de, &vary, b"hallo");
    assert_eq!(
        served_body(&config, &s, &en).as_deref(),
        Some(b"hello".as_slice())
    );
    assert_eq!(
        served_body(&config, &s, &de).as_deref(),
        Some(b"hallo".as_slice())
    );
    assert_eq!(served_body(&config, &s, &fr), None, "no variant for fr");
    assert_eq!(served_body(&config, &s, &[]), None, "nor for no header");
    store_variant(&config, &s, &de, &vary, b"servus");
    assert_eq!(
        served_body(&config, &s, &de).as_deref(),
        Some(b"servus".as_slice())
    );
    assert_eq!(
        served_body(&config, &s, &en).as_deref(),
        Some(b"hello".as_slice())
    );

    // The origin now varies on another field: the old variants are gone.
    let other = [("cache-control", "max-age=60"), ("vary", "Accept-Encoding")];
    store_variant(&config, &s, &en, &other, b"by encoding");
    assert_eq!(
        served_body(&config, &s, &de),
        Some(b"by encoding".to_vec()),
        "de no longer varies"
    );

    // Removing the URL's own entry (invalidation, purge) makes its variants unreachable.
    let s = MemoryStore::default();
    store_variant(&config, &s, &en, &vary, b"hello");
    store_variant(&config, &s, &de, &vary, b"hallo");
    let key_hash = match on_request(&config, &s, &mut request(&en), 1001) {
        RequestDecision::Serve { .. } => {
            let RequestDecision::Forward(p) = on_request(
                &config,
                &s,
                &mut request(&[("accept-language", "xx")]),
                1001,
            ) else {
                panic!()
            };
            p.key_hash
        }
        other => panic!("{other:?}"),
    };
    assert!(storage::remove(&s, &config.layout, key_hash));
    assert_eq!(served_body(&config, &s, &en), None);
    assert_eq!(
        served_body(&config, &s, &de),
        None,
        "the variant went with it"
    );
    store_variant(&config, &s, &en, &vary, b"hello again");
    assert_eq!(served_body(&config, &s, &de), None, "and stays gone");
}

/// Group purges (purge.rs): each kind hard (a miss) and soft (stale: revalidated, or
/// served stale within stale-while-revalidate); tags are recorded from Surrogate-Key and
/// Cache-Tag and not kept among the stored fields; an entry stored after a purge is
/// untouched by it.
#[test]
fn group_purges_hard_and_soft() {
    use crate::purge::{add, Target};
    let config = Config::from_json(br#"{"purge":{"token":"a-long-secret"}}"#).unwrap();
    let page = [
        ("cache-control", "max-age=60"),
        ("surrogate-key", "product-1 listing"),
        ("cache-tag", "site"),
    ];
    for (target, purged) in [
        (Target::Tag(b"listing".to_vec()), true),
        (Target::Tag(b"site".to_vec()), true),
        (Target::Tag(b"product-2".to_vec()), false),
        (
            Target::Prefix {
                host: b"example.com".to_vec(),
                prefix: b"/do".to_vec(),
            },
            true,
        ),
        (
            Target::Prefix {
                host: b"example.com".to_vec(),
                prefix: b"/x".to_vec(),
            },
            false,
        ),
        (Target::Host(b"example.com".to_vec()), true),
        (Target::Host(b"other.com".to_vec()), false),
        (Target::All, true),
    ] {
        let s = MemoryStore::default();
        store_variant(&config, &s, &[], &page, b"page");
        assert!(served_body(&config, &s, &[]).is_some(), "stored");
        add(&s, false, target.clone()).unwrap();
        assert_eq!(
            served_body(&config, &s, &[]).is_none(),
            purged,
            "{target:?}"
        );
        // Stored again after the purge: served.
        store_variant(&config, &s, &[], &page, b"page 2");
        assert_eq!(
            served_body(&config, &s, &[]).as_deref(),
            Some(&b"page 2"[..])
        );
    }
    // Tags are kept in the entry, not among its fields.
    let s = MemoryStore::default();
    store_variant(&config, &s, &[], &page, b"page");
    let RequestDecision::Serve { headers, .. } = on_request(&config, &s, &mut request(&[]), 1001)
    else {
        panic!("a hit");
    };
    assert!(headers
        .iter()
        .all(|(k, _)| k != "surrogate-key" && k != "cache-tag"));
    // Soft: stale now — revalidated in-band without stale-while-revalidate ...
    add(&s, true, Target::Tag(b"site".to_vec())).unwrap();
    assert!(matches!(
        on_request(&config, &s, &mut request(&[]), 1001),
        RequestDecision::Forward(p) if p.outcome == Outcome::Stale
    ));
    // ... served stale with a background refresh within it.
    let s = MemoryStore::default();
    let swr = [
        ("cache-control", "max-age=60, stale-while-revalidate=30"),
        ("etag", "\"v1\""),
        ("surrogate-key", "product-1"),
    ];
    store_variant(&config, &s, &[], &swr, b"page");
    add(&s, true, Target::Tag(b"product-1".to_vec())).unwrap();
    assert!(matches!(
        on_request(&config, &s, &mut request(&[]), 1001),
        RequestDecision::Serve {
            refresh: Some(_),
            ..
        }
    ));
}

/// A purge request names what it purges with its fields; too many or too long tags are
/// refused; without any, it purges its URL (softly with x-purge-soft).
#[test]
fn purge_requests_name_their_targets() {
    use crate::purge::Target;
    let config = Config::from_json(br#"{"purge":{"token":"a-long-secret"}}"#).unwrap();
    let s = MemoryStore::default();
    let kind = |extra: &[(&str, &str)]| {
        let mut headers = vec![(":method", "PURGE"), ("x-purge-token", "a-long-secret")];
        headers.extend_from_slice(extra);
        let mut r = request(&[]);
        r.retain(|(k, _)| k != ":method");
        r.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
        );
        match on_request(&config, &s, &mut r, 1000) {
            RequestDecision::Purge {
                authorized: true,
                kind,
                ..
            } => kind,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(kind(&[]), PurgeKind::Url);
    assert_eq!(
        kind(&[("x-purge-tag", "a b,c")]),
        PurgeKind::Rules {
            targets: vec![
                Target::Tag(b"a".to_vec()),
                Target::Tag(b"b".to_vec()),
                Target::Tag(b"c".to_vec())
            ],
            soft: false
        }
    );
    assert_eq!(
        kind(&[("x-purge-prefix", "/p/"), ("x-purge-soft", "1")]),
        PurgeKind::Rules {
            targets: vec![Target::Prefix {
                host: b"example.com".to_vec(),
                prefix: b"/p/".to_vec()
            }],
            soft: true
        }
    );
    assert_eq!(
        kind(&[("x-purge-all", "1")]),
        PurgeKind::Rules {
            targets: vec![Target::All],
            soft: false
        }
    );
    assert!(matches!(
        kind(&[("x-purge-soft", "1")]),
        PurgeKind::Rules { soft: true, .. }
    ));
    let many = (0..33)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(matches!(
        kind(&[("x-purge-tag", &many)]),
        PurgeKind::Invalid(_)
    ));
    let long = "x".repeat(300);
    assert!(matches!(
        kind(&[("x-purge-tag", &long)]),
        PurgeKind::Invalid(_)
    ));
    assert!(matches!(
        kind(&[("x-purge-prefix", "no-slash")]),
        PurgeKind::Invalid(_)
    ));
}

/// RFC 9110 §14.2: one byte range of a stored 200 is a 206 with its Content-Range; an
/// If-Range that does not hold, several ranges or a repeated Range get the whole body.
#[test]
fn a_single_range_is_served_from_the_stored_response() {
    let config = Config::from_json(b"{}").unwrap();
    let s = MemoryStore::default();
    store_doc(
        &config,
        &s,
        &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
    );
    let served = |extra: &[(&str, &str)]| match on_request(&config, &s, &mut request(extra), 1001) {
        RequestDecision::Serve {
            status,
            headers,
            body,
            ..
        } => {
            let range = headers
                .iter()
                .find(|(k, _)| k == "content-range")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            (status, range, body)
        }
        other => panic!("expected a hit, got {other:?}"),
    };
    assert_eq!(
        served(&[("range", "bytes=1-2")]),
        (206, Some("bytes 1-2/4".into()), b"od".to_vec())
    );
    assert_eq!(
        served(&[("range", "bytes=-1")]),
        (206, Some("bytes 3-3/4".into()), b"y".to_vec())
    );
    assert_eq!(
        served(&[("range", "bytes=1-2"), ("if-range", "\"v1\"")]).0,
        206
    );
    for whole in [
        &[("range", "bytes=1-2"), ("if-range", "\"v0\"")][..],
        &[("range", "bytes=0-0,2-3")],
        &[("range", "bytes=0-0"), ("range", "bytes=2-3")],
        &[("range", "bytes=9-")],
    ] {
        assert_eq!(served(whole), (200, None, b"body".to_vec()), "{whole:?}");
    }
}

/// RFC 9110 §5.3: a repeated keyed or varied field is read as all its lines combined, as
/// the origin reads it: the answer to `x-device: desktop` + `x-device: mobile` (which a
/// last-value origin answered for mobile) never reaches a client who sent only desktop.
#[test]
fn repeated_keyed_and_varied_fields_never_poison() {
    let fresh = [("cache-control", "max-age=60")];
    let config = Config::from_json(br#"{"key":{"headers":["x-device"]}}"#).unwrap();
    let s = MemoryStore::default();
    let both = [("x-device", "desktop"), ("x-device", "mobile")];
    store_variant(&config, &s, &both, &fresh, b"mobile page");
    assert_eq!(served_body(&config, &s, &[("x-device", "desktop")]), None);
    assert_eq!(
        served_body(&config, &s, &both).as_deref(),
        Some(b"mobile page".as_slice())
    );

    let config = Config::from_json(b"{}").unwrap();
    let s = MemoryStore::default();
    let vary = [("cache-control", "max-age=60"), ("vary", "Accept-Language")];
    let two = [("accept-language", "en"), ("accept-language", "fr")];
    store_variant(&config, &s, &two, &vary, b"fr page");
    assert_eq!(served_body(&config, &s, &[("accept-language", "en")]), None);
    assert_eq!(
        served_body(&config, &s, &two).as_deref(),
        Some(b"fr page".as_slice())
    );
}

/// One client's rate-limit state is never stored nor served to another (a shield in
/// front of an edge's limiter).
#[test]
fn rate_limit_fields_are_not_stored() {
    let config = Config::from_json(b"{}").unwrap();
    let s = MemoryStore::default();
    let response = [
        ("cache-control", "max-age=60"),
        ("ratelimit", "\"per-user\";r=0;t=30"),
        ("ratelimit-policy", "\"per-user\";q=10;w=60"),
        ("retry-after", "30"),
        ("x-ratelimit-remaining", "0"),
        ("x-kept", "yes"),
    ];
    store_variant(&config, &s, &[], &response, b"page");
    let RequestDecision::Serve { headers, .. } = on_request(&config, &s, &mut request(&[]), 1001)
    else {
        panic!("expected a hit");
    };
    let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"x-kept"), "{names:?}");
    for gone in [
        "ratelimit",
        "ratelimit-policy",
        "retry-after",
        "x-ratelimit-remaining",
    ] {
        assert!(!names.contains(&gone), "{gone} was served: {names:?}");
    }
}

/// /doc stored at t=1000 with max-age=10, stale-while-revalidate=30, ETag "v1" and
/// `extra` header fields.
fn swr_doc(extra: &[(&str, &str)]) -> (Config, MemoryStore) {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let mut response = vec![
        ("cache-control", "max-age=10, stale-while-revalidate=30"),
        ("etag", "\"v1\""),
    ];
    response.extend_from_slice(extra);
    store_doc(&config, &store, &response);
    (config, store)
}

/// RFC 5861 §3: within the window a stale entry is served at once, with a refresh to
/// send in the background; past the window the request goes to the origin.
#[test]
fn stale_while_revalidate_serves_stale_and_asks_for_a_refresh() {
    let (config, store) = swr_doc(&[]);
    let RequestDecision::Serve {
        status,
        headers,
        body,
        refresh: Some(refresh),
    } = on_request(&config, &store, &mut request(&[]), 1025)
    else {
        panic!("expected a stale serve with a refresh");
    };
    assert_eq!((status, body.as_slice()), (200, b"body".as_slice()));
    assert_eq!(header(&headers, "age"), Some("25"));
    assert_eq!(
        header(&headers, "cache-status"),
        Some("edgewise; hit; ttl=-15; detail=stale-while-revalidate")
    );
    assert_eq!(refresh.outcome, Outcome::Stale);
    assert_eq!(refresh.validators, pairs(&[("if-none-match", "\"v1\"")]));
    assert!(refresh.revalidating.is_some());

    // Fresh: no refresh. Past the window (staleness 31 > 30): forwarded.
    assert!(matches!(
        on_request(&config, &store, &mut request(&[]), 1005),
        RequestDecision::Serve { refresh: None, .. }
    ));
    assert!(matches!(
        on_request(&config, &store, &mut request(&[]), 1041),
        RequestDecision::Forward(_)
    ));
}

/// The configured `stale_while_revalidate` stands in when the origin names no window.
#[test]
fn configured_window_applies_without_the_directive() {
    let config = Config::from_json(br#"{"stale_while_revalidate":"1m"}"#).unwrap();
    let store = MemoryStore::default();
    store_doc(&config, &store, &[("cache-control", "max-age=10")]);
    let decision = on_request(&config, &store, &mut request(&[]), 1060);
    let RequestDecision::Serve {
        refresh: Some(refresh),
        ..
    } = decision
    else {
        panic!("expected a stale serve, got {decision:?}");
    };
    assert!(refresh.validators.is_empty() && refresh.revalidating.is_none());
    assert!(matches!(
        on_request(&config, &store, &mut request(&[]), 1071),
        RequestDecision::Forward(_)
    ));
}

/// The refresh is a GET for the same target with the client's other fields (Vary) and
/// the entry's validators, never the client's own conditionals or cache directives.
#[test]
fn refresh_request_asks_for_the_entry() {
    let (config, store) = swr_doc(&[]);
    let client = request(&[
        ("accept-language", "de"),
        ("if-none-match", "\"other\""),
        ("cache-control", "max-stale=0"),
        ("x-request-id", "abc"),
        ("connection", "keep-alive"),
    ]);
    let RequestDecision::Serve {
        refresh: Some(refresh),
        ..
    } = on_request(&config, &store, &mut client.clone(), 1020)
    else {
        panic!("expected a stale serve");
    };
    let sent = refresh_request(&client, &refresh);
    assert_eq!(header(&sent, ":method"), Some("GET"));
    assert_eq!(header(&sent, ":path"), Some("/doc"));
    assert_eq!(header(&sent, ":authority"), Some("example.com"));
    assert_eq!(header(&sent, "accept-language"), Some("de"));
    assert_eq!(header(&sent, "if-none-match"), Some("\"v1\""));
    for gone in ["cache-control", "x-request-id", "connection"] {
        assert_eq!(header(&sent, gone), None, "{gone}");
    }
    assert_eq!(sent.iter().filter(|(k, _)| k == "if-none-match").count(), 1);
}

/// What the refresh's answer does: a 304 refreshes (RFC 9111 §4.3.4), a storable 200
/// replaces, an error or failure keeps the stale entry, anything unstorable removes it.
#[test]
fn refresh_outcomes() {
    let (config, store) = swr_doc(&[("x-version", "1")]);
    let RequestDecision::Serve {
        refresh: Some(refresh),
        ..
    } = on_request(&config, &store, &mut request(&[]), 1020)
    else {
        panic!("expected a stale serve");
    };
    let outcome = |status, headers: &[(&str, &str)], body: Option<&[u8]>| {
        refresh_outcome(
            &config,
            &refresh,
            status,
            &pairs(headers),
            body.map(|b| b.to_vec()),
            1021,
            &mut |_| None,
        )
    };
    let Refreshed::Store(entry) = outcome(304, &[("x-version", "2")], None) else {
        panic!("a 304 refreshes");
    };
    assert_eq!(entry.body, b"body");
    assert_eq!(entry.header("x-version"), Some(b"2".as_slice()));
    assert_eq!(entry.response_time, 1021);
    let Refreshed::Store(entry) = outcome(
        200,
        &[("cache-control", "max-age=10"), ("etag", "\"v2\"")],
        Some(b"new"),
    ) else {
        panic!("a storable 200 replaces");
    };
    assert_eq!(entry.body, b"new");
    assert_eq!(outcome(503, &[], Some(b"down")), Refreshed::Keep);
    assert_eq!(outcome(0, &[], None), Refreshed::Keep);
    assert_eq!(
        outcome(200, &[("cache-control", "no-store")], Some(b"x")),
        Refreshed::Remove
    );
    assert_eq!(
        outcome(200, &[("cache-control", "max-age=10")], None),
        Refreshed::Remove,
        "over max_entry_bytes"
    );
}

/// RFC 9111 §4.3.1: a stale entry is revalidated with its ETag and Last-Modified.
#[test]
fn stale_entry_is_revalidated_with_its_validators() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let response = [
        ("cache-control", "max-age=10"),
        ("etag", "\"v1\""),
        ("last-modified", "Sat, 21 Nov 2026 10:00:00 GMT"),
    ];
    let pending = stale_decision(&config, &store, &response, 1020, &[]);
    assert_eq!(pending.outcome, Outcome::Stale);
    assert!(pending.revalidating.is_some());
    assert_eq!(
        pending.validators,
        pairs(&[
            ("if-none-match", "\"v1\""),
            ("if-modified-since", "Sat, 21 Nov 2026 10:00:00 GMT")
        ])
    );
}

/// RFC 9111 §4.3.1: without validators there is nothing to revalidate with; a client's own
/// conditional request is forwarded as it is.
#[test]
fn no_revalidation_without_validators_or_with_client_conditionals() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let pending = stale_decision(
        &config,
        &store,
        &[("cache-control", "max-age=10")],
        1020,
        &[],
    );
    assert!(pending.revalidating.is_none() && pending.validators.is_empty());

    let store = MemoryStore::default();
    let response = [("cache-control", "max-age=10"), ("etag", "\"v1\"")];
    let pending = stale_decision(
        &config,
        &store,
        &response,
        1020,
        &[("if-none-match", "\"v0\"")],
    );
    assert!(pending.revalidating.is_none());
}

/// RFC 9111 §4.3.3–§4.3.4: a 304 refreshes the stored header fields (not framing) and the
/// client gets the full stored response, fresh again.
#[test]
fn not_modified_refreshes_and_serves_the_stored_response() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let response = [
        ("cache-control", "max-age=10"),
        ("etag", "\"v1\""),
        ("x-version", "1"),
    ];
    let pending = stale_decision(&config, &store, &response, 1020, &[]);
    let not_modified = pairs(&[
        (":status", "304"),
        ("cache-control", "max-age=600"),
        ("x-version", "2"),
        ("content-length", "0"),
    ]);
    let Some(Revalidated {
        store: Some(refreshed),
        reply: (status, headers, body),
    }) = revalidated(&config, &pending, &not_modified, 1021)
    else {
        panic!("a 304 refreshes a storable entry");
    };
    assert_eq!(status, 200);
    assert_eq!(body, b"body");
    assert_eq!(refreshed.header("x-version").unwrap(), b"2");
    assert_eq!(refreshed.header("cache-control").unwrap(), b"max-age=600");
    assert!(refreshed.header("content-length").is_none());
    assert_eq!(refreshed.response_time, 1021);
    let status_field = headers.iter().find(|(k, _)| k == "cache-status").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&status_field.1),
        "edgewise; fwd=stale; ttl=599; stored; fwd-status=304"
    );
    // Stored again, the refreshed entry is a fresh hit.
    let mut seed = 3u64;
    storage::insert(
        &store,
        &config.layout,
        pending.key_hash,
        &refreshed.encode(),
        1021,
        &mut || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed
        },
    );
    assert!(matches!(
        on_request(&config, &store, &mut request(&[]), 1030),
        RequestDecision::Serve { status: 200, .. }
    ));
}

/// RFC 9111 §4.3.4 with §3.4: a Range request revalidating a stale 200 gets a 206 of the
/// same representation (strong ETag equal): the entry's fields and freshness are updated
/// from it, its body kept, the part's own fields not taken; another ETag, a weak one or a
/// 206 that makes the entry unstorable leave the entry alone.
#[test]
fn a_partial_answer_to_our_revalidation_freshens_the_stored_200() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let response = [
        ("cache-control", "max-age=10"),
        ("etag", "\"v1\""),
        ("content-type", "text/plain"),
        ("a", "1"),
        ("b", "1"),
    ];
    let pending = stale_decision(&config, &store, &response, 1020, &[("range", "bytes=0-1")]);
    assert!(
        pending.revalidating.is_some(),
        "a Range request revalidates"
    );
    let partial = |etag: &str, extra: &[(&str, &str)]| {
        let mut fields = vec![
            (":status", "206"),
            ("cache-control", "max-age=600"),
            ("etag", etag),
            ("a", "2"),
            ("content-range", "bytes 0-1/4"),
            ("content-length", "2"),
        ];
        fields.extend_from_slice(extra);
        pairs(&fields)
    };
    let refreshed = freshened_by_partial(&config, &pending, &partial("\"v1\"", &[]), 1021)
        .expect("the same representation freshens the entry");
    assert_eq!(refreshed.status, 200);
    assert_eq!(refreshed.body, b"body");
    assert_eq!(refreshed.header("a").unwrap(), b"2", "updated from the 206");
    assert_eq!(
        refreshed.header("b").unwrap(),
        b"1",
        "kept from the stored 200"
    );
    assert_eq!(refreshed.header("cache-control").unwrap(), b"max-age=600");
    assert!(refreshed.header("content-range").is_none());
    assert_eq!(refreshed.response_time, 1021);
    // A multipart 206's Content-Type describes the parts, not the representation.
    let multipart = partial(
        "\"v1\"",
        &[("content-type", "multipart/byteranges; boundary=x")],
    );
    let refreshed = freshened_by_partial(&config, &pending, &multipart, 1021).unwrap();
    assert_eq!(refreshed.header("content-type").unwrap(), b"text/plain");
    // Another or a weak validator: not the stored representation.
    for etag in ["\"v2\"", "W/\"v1\""] {
        assert_eq!(
            freshened_by_partial(&config, &pending, &partial(etag, &[]), 1021),
            None
        );
    }
    // A 206 that says private makes the refreshed entry unstorable: left alone.
    let private = partial("\"v1\"", &[("cache-control", "private")]);
    assert_eq!(
        freshened_by_partial(&config, &pending, &private, 1021),
        None
    );
    // Not a revalidation of ours (no stored entry): nothing to freshen.
    let plain = Pending {
        revalidating: None,
        ..pending.clone()
    };
    assert_eq!(
        freshened_by_partial(&config, &plain, &partial("\"v1\"", &[]), 1021),
        None
    );
}

/// RFC 9111 §4.4: a POST's success invalidates its target and same-origin Location /
/// Content-Location, never another origin's URI; an error invalidates nothing.
#[test]
fn unsafe_methods_invalidate_target_and_same_origin_locations() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let mut post = request(&[]);
    post.retain(|(k, _)| k != ":method");
    post.push((":method".into(), b"POST".to_vec()));
    let RequestDecision::Forward(pending) = on_request(&config, &store, &mut post, 1000) else {
        panic!("POST is forwarded");
    };
    let key_of = |path: &str| {
        let mut get: Vec<(String, Vec<u8>)> = request(&[])
            .into_iter()
            .map(|(k, v)| {
                if k == ":path" {
                    (k, path.as_bytes().to_vec())
                } else {
                    (k, v)
                }
            })
            .collect();
        let RequestDecision::Forward(p) = on_request(&config, &store, &mut get, 1000) else {
            panic!("GET miss is forwarded");
        };
        p.key_hash
    };
    let response = pairs(&[
        ("location", "/doc/42"),
        ("content-location", "http://example.com/doc/latest"),
    ]);
    assert_eq!(
        invalidated_keys(&config, &pending, 201, &response),
        vec![pending.key_hash, key_of("/doc/42"), key_of("/doc/latest")]
    );
    let elsewhere = pairs(&[
        ("location", "http://other.example/doc/42"),
        ("content-location", "//other.example/x"),
    ]);
    assert_eq!(
        invalidated_keys(&config, &pending, 303, &elsewhere),
        vec![pending.key_hash]
    );
    assert!(invalidated_keys(&config, &pending, 500, &response).is_empty());
}

fn forwarded(config: &Config, store: &MemoryStore, extra: &[(&str, &str)]) -> Box<Pending> {
    match on_request(config, store, &mut request(extra), 1000) {
        RequestDecision::Forward(p) => p,
        other => panic!("expected a forward, got {other:?}"),
    }
}

/// Requests whose answer may not be the shared one: a body on GET, Cookie under
/// `cookie_requests: "bypass"`, unkeyed fields an origin may reflect (bypassed, or
/// stripped and cached); which requests may fill a key for others.
#[test]
fn requests_that_bypass_strip_or_do_not_fill() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    for (extra, detail) in [
        (&[("content-length", "5")][..], "request-body"),
        (&[("transfer-encoding", "chunked")][..], "request-body"),
        (
            &[("x-forwarded-host", "evil.example")][..],
            "unkeyed-header",
        ),
        (&[("x-original-url", "/admin")][..], "unkeyed-header"),
        (
            &[("x-http-method-override", "DELETE")][..],
            "unkeyed-header",
        ),
    ] {
        let p = forwarded(&config, &store, extra);
        assert_eq!(
            (p.outcome, p.detail, p.invalidate, p.fills),
            (Outcome::Bypass, Some(detail), false, false),
            "{extra:?}"
        );
    }
    assert!(matches!(
        decide(&config, &store, &mut request(&[]), 1000, true),
        RequestDecision::Forward(p) if p.detail == Some("request-body")
    ));
    assert_eq!(
        forwarded(&config, &store, &[("content-length", "0")]).outcome,
        Outcome::Miss
    );
    assert_eq!(
        forwarded(&config, &store, &[("cookie", "s=1")]).outcome,
        Outcome::Miss,
        "Cookie is looked up by default (only what may be shared is stored)"
    );
    let bypass = Config::from_json(br#"{"cookie_requests":"bypass"}"#).unwrap();
    assert_eq!(
        forwarded(&bypass, &store, &[("cookie", "s=1")]).detail,
        Some("cookie")
    );
    let strip = Config::from_json(
        br#"{"unkeyed_headers":{"action":"strip","names":["X-Forwarded-Host","x-tenant"]}}"#,
    )
    .unwrap();
    let p = forwarded(
        &strip,
        &store,
        &[("x-forwarded-host", "evil"), ("x-tenant", "a")],
    );
    assert_eq!(p.outcome, Outcome::Miss);
    assert_eq!(p.strip, vec!["x-forwarded-host", "x-tenant"]);
    let keyed = Config::from_json(br#"{"key":{"headers":["x-forwarded-host"]}}"#).unwrap();
    assert_eq!(
        forwarded(&keyed, &store, &[("x-forwarded-host", "a")]).outcome,
        Outcome::Miss,
        "a keyed field is not unkeyed"
    );
    // Only a plain GET fills a key for others (leads coalescing, sets hit-for-miss).
    assert!(forwarded(&config, &store, &[]).fills);
    for extra in [
        ("range", "bytes=0-10"),
        ("if-none-match", "\"x\""),
        ("if-modified-since", "Sat, 21 Nov 2026 10:00:00 GMT"),
        ("cache-control", "no-store"),
    ] {
        assert!(!forwarded(&config, &store, &[extra]).fills, "{extra:?}");
    }
    let mut head = request(&[]);
    head.retain(|(k, _)| k != ":method");
    head.push((":method".into(), b"HEAD".to_vec()));
    let RequestDecision::Forward(p) = on_request(&config, &store, &mut head, 1000) else {
        panic!("HEAD miss is forwarded");
    };
    assert!(!p.fills);
}

/// A response to a request with Cookie or Authorization is stored only with an explicit
/// allowance (RFC 9111 §3.5; `cookie_requests: "explicit"`); a page without any cache
/// header or validator is never stored.
#[test]
fn credentials_and_pages_without_cache_headers() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let cookie = forwarded(&config, &store, &[("cookie", "session=alice")]);
    let auth = forwarded(&config, &store, &[("authorization", "Bearer a")]);
    let plain = forwarded(&config, &store, &[]);
    let check =
        |p: &Pending, response: &[(&str, &str)]| storable(&config, p, 200, &pairs(response));
    assert_eq!(check(&cookie, &[]), Err(NotStorable::Cookie));
    assert_eq!(
        check(&cookie, &[("etag", "\"a\"")]),
        Err(NotStorable::Cookie)
    );
    assert_eq!(check(&cookie, &[("cache-control", "max-age=60")]), Ok(()));
    assert_eq!(
        check(&cookie, &[("cache-control", "public")]),
        Err(NotStorable::NoFreshness)
    );
    assert_eq!(
        check(&auth, &[("cache-control", "max-age=60")]),
        Err(NotStorable::Authorization)
    );
    assert_eq!(check(&auth, &[("cache-control", "s-maxage=60")]), Ok(()));
    assert_eq!(check(&plain, &[]), Err(NotStorable::NoFreshness));
    assert_eq!(check(&plain, &[("etag", "\"a\"")]), Ok(()));
    // A header value that is not text passes uncached, and says so (not "status").
    let mut binary = pairs(&[("cache-control", "max-age=60")]);
    binary.push(("x-raw".into(), vec![0xff, 0xfe]));
    assert_eq!(
        storable(&config, &plain, 200, &binary),
        Err(NotStorable::HeaderNotText)
    );
}

/// RFC 9111 §4.3.4 with §3: a 304's Set-Cookie reaches the revalidating client only;
/// a 304 with `private`, `no-store` or another Vary drops the entry; the revalidating
/// request's credentials apply to the refreshed entry.
#[test]
fn a_304_refresh_keeps_personal_fields_out_of_the_entry() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let response = [("cache-control", "max-age=10"), ("etag", "\"v1\"")];
    let pending = stale_decision(&config, &store, &response, 1020, &[]);
    let refresh = |fields: &[(&str, &str)]| {
        let mut not_modified = pairs(&[(":status", "304")]);
        not_modified.extend(pairs(fields));
        revalidated(&config, &pending, &not_modified, 1021).unwrap()
    };
    let r = refresh(&[("set-cookie", "session=alice"), ("x-version", "2")]);
    let entry = r.store.expect("still storable");
    assert_eq!(entry.header("set-cookie"), None, "never stored");
    assert_eq!(entry.header("x-version"), Some(b"2".as_slice()));
    assert_eq!(header(&r.reply.1, "set-cookie"), Some("session=alice"));
    for dropping in [
        &[("cache-control", "private, max-age=10")][..],
        &[("cache-control", "no-store")][..],
        &[("vary", "cookie")][..],
    ] {
        let r = refresh(dropping);
        assert!(r.store.is_none(), "{dropping:?}");
        assert_eq!(r.reply.2, b"body", "the client still gets the response");
        assert!(!header(&r.reply.1, "cache-status")
            .unwrap()
            .contains("stored"));
    }
    // The revalidating request had Authorization: the refreshed entry needs §3.5.
    let auth = Pending {
        has_authorization: true,
        ..pending.clone()
    };
    let mut not_modified = pairs(&[(":status", "304")]);
    not_modified.extend(pairs(&[("cache-control", "max-age=10")]));
    assert!(revalidated(&config, &auth, &not_modified, 1021)
        .unwrap()
        .store
        .is_none());
    // Background refreshes follow the same rule.
    assert_eq!(
        refresh_outcome(
            &config,
            &pending,
            304,
            &pairs(&[(":status", "304"), ("cache-control", "private")]),
            None,
            1021,
            &mut |_| None
        ),
        Refreshed::Remove
    );
}

/// A 304 to a request that was not our revalidation is not turned into a stored reply.
#[test]
fn a_304_without_revalidation_is_left_alone() {
    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::default();
    let RequestDecision::Forward(pending) = on_request(&config, &store, &mut request(&[]), 1000)
    else {
        panic!("miss must be forwarded");
    };
    assert!(revalidated(&config, &pending, &pairs(&[(":status", "304")]), 1001).is_none());
}

/// What the response phase changes on the host's response, natively (`MapHost`): tags and
/// targeted fields for this cache are removed, Cache-Status lists upstream caches first
/// (RFC 9211 §2).
#[test]
fn response_fields_for_this_cache_are_stripped_and_cache_status_appended() {
    use edgewise_support::MapHost;
    let config = Config::from_json(
        br#"{"tags":{"headers":["surrogate-key"],"strip":true},"strip_targeted_fields":["edgewise-cache-control"]}"#,
    )
    .unwrap();
    let response = [
        (":status", "200"),
        ("surrogate-key", "product-1"),
        ("edgewise-cache-control", "max-age=600"),
        ("cache-status", "shield; hit"),
        ("x-other", "kept"),
    ];
    let mut host = MapHost::with_headers(&response);
    let headers = pairs(&response);
    strip_fields_for_this_cache(&config, &headers, &mut host);
    write_cache_status(&headers, "edge; fwd=miss; stored", &mut host);
    assert_eq!(host.response_field(false, "surrogate-key"), None);
    assert_eq!(host.response_field(false, "edgewise-cache-control"), None);
    assert_eq!(
        host.response_field(false, "x-other"),
        Some(b"kept".to_vec())
    );
    assert_eq!(
        host.response_field(false, "cache-status"),
        Some(b"shield; hit, edge; fwd=miss; stored".to_vec())
    );
    // Tags stay when the configuration keeps them for clients.
    let keep =
        Config::from_json(br#"{"tags":{"headers":["surrogate-key"],"strip":false}}"#).unwrap();
    let mut host = MapHost::with_headers(&response);
    strip_fields_for_this_cache(&keep, &headers, &mut host);
    assert_eq!(
        host.response_field(false, "surrogate-key"),
        Some(b"product-1".to_vec())
    );
}

/// The response phase as one decision the adapter only applies: stored, not stored (and how
/// the fill ends), invalidation, a bypass's reason, a 304 or a 206 to our revalidation, and an
/// origin error answered with the stale entry or a 504.
#[test]
fn the_response_phase_is_one_decision_the_adapter_applies() {
    let config = Config::from_json(br#"{"max_entry_bytes":1000}"#).unwrap();
    let store = MemoryStore::default();
    let never_asked = || -> bool { panic!("Envoy's details are asked for only when they matter") };
    let deliver = |pending: &Pending, response: &[(&str, &str)], end: bool| {
        on_response_headers(
            &config,
            pending,
            &pairs(response),
            end,
            || 1000,
            never_asked,
        )
    };
    let miss = forwarded(&config, &store, &[]);
    let fresh = [(":status", "200"), ("cache-control", "max-age=60")];
    assert_eq!(
        deliver(&miss, &fresh, false),
        ResponseAction::Deliver {
            cache_status: "edgewise; fwd=miss; stored".into(),
            freshened: None,
            storing: Storing::CopyBody,
        }
    );
    // Declared over max_entry_bytes: not copied at all; the key cannot be shared.
    let large = [
        (":status", "200"),
        ("cache-control", "max-age=60"),
        ("content-length", "1001"),
    ];
    assert_eq!(
        deliver(&miss, &large, false),
        ResponseAction::Deliver {
            cache_status: "edgewise; fwd=miss".into(),
            freshened: None,
            storing: Storing::No(FillEnd::Uncacheable),
        }
    );
    let private = [(":status", "200"), ("cache-control", "private")];
    assert!(matches!(
        deliver(&miss, &private, true),
        ResponseAction::Deliver {
            storing: Storing::No(FillEnd::Uncacheable),
            ..
        }
    ));
    // An origin error is transient: the next miss may fill the key again. Without a stale
    // entry nothing answers it instead. (With explicit freshness an error may be stored.)
    let error = [(":status", "503")];
    let stored_error = [(":status", "503"), ("cache-control", "max-age=60")];
    assert!(matches!(
        deliver(&miss, &stored_error, false),
        ResponseAction::Deliver {
            storing: Storing::CopyBody,
            ..
        }
    ));
    for end in [false, true] {
        assert!(matches!(
            deliver(&miss, &error, end),
            ResponseAction::Deliver {
                storing: Storing::No(FillEnd::Retry),
                ..
            }
        ));
    }

    // A bypass says why, when the request's own reasons were why.
    let with_body = forwarded(&config, &store, &[("content-length", "5")]);
    assert_eq!(
        deliver(&with_body, &fresh, true),
        ResponseAction::PassOn {
            cache_status: Some("edgewise; fwd=bypass; detail=request-body".into())
        }
    );

    // RFC 9111 §4.4: a POST's success invalidates its target; its failure does not.
    let mut post = request(&[]);
    post.retain(|(k, _)| k != ":method");
    post.push((":method".into(), b"POST".to_vec()));
    let RequestDecision::Forward(post) = on_request(&config, &store, &mut post, 1000) else {
        panic!("a POST is forwarded");
    };
    assert_eq!(
        deliver(&post, &[(":status", "201")], true),
        ResponseAction::Invalidate(vec![post.key_hash])
    );
    assert!(!matches!(
        deliver(&post, &[(":status", "500")], true),
        ResponseAction::Invalidate(_)
    ));

    // RFC 9111 §4.3.3: a 304 to our revalidation refreshes the entry and serves it.
    let store = MemoryStore::default();
    let stale = [("cache-control", "max-age=10"), ("etag", "\"v1\"")];
    let revalidating = stale_decision(&config, &store, &stale, 1020, &[]);
    let not_modified = [(":status", "304"), ("cache-control", "max-age=600")];
    let ResponseAction::Revalidated(revalidated) = deliver(&revalidating, &not_modified, true)
    else {
        panic!("a 304 to our revalidation refreshes the entry");
    };
    assert!(revalidated.store.is_some());
    assert_eq!(
        (revalidated.reply.0, &revalidated.reply.2[..]),
        (200, &b"body"[..])
    );
    // RFC 9111 §4.3.4: a 206 of the same representation freshens it and goes on.
    let store = MemoryStore::default();
    let ranged = stale_decision(&config, &store, &stale, 1020, &[("range", "bytes=0-1")]);
    let partial = [
        (":status", "206"),
        ("etag", "\"v1\""),
        ("cache-control", "max-age=600"),
        ("content-range", "bytes 0-1/4"),
    ];
    let ResponseAction::Deliver {
        freshened: Some(freshened),
        storing: Storing::No(_),
        ..
    } = deliver(&ranged, &partial, false)
    else {
        panic!("a 206 of the stored representation freshens it, and is not stored itself");
    };
    assert_eq!(freshened.body, b"body");

    // RFC 5861 §4: an error with a body is answered with the stale entry in its window;
    // without a body there is nothing to replace.
    let store = MemoryStore::default();
    let if_error = [("cache-control", "max-age=10, stale-if-error=60")];
    let on_error = stale_decision(&config, &store, &if_error, 1020, &[]);
    let ResponseAction::ServeStale { headers, body } = deliver(&on_error, &error, false) else {
        panic!("stale-if-error answers an origin error");
    };
    assert_eq!(body, b"body");
    assert_eq!(header(&headers, ":status"), Some("200"));
    assert_eq!(header(&headers, "content-length"), Some("4"));
    assert!(header(&headers, "cache-status").is_some_and(|v| v.contains("stale-if-error")));
    assert!(matches!(
        deliver(&on_error, &error, true),
        ResponseAction::Deliver { .. }
    ));

    // RFC 9111 §4.2.4: `serve_stale_when_unreachable` answers only Envoy's own error for an
    // unreachable origin: with the entry, or with a 504 where the entry forbids serving stale.
    let disconnected = Config::from_json(br#"{"serve_stale_when_unreachable":true}"#).unwrap();
    let store = MemoryStore::default();
    let strict = [("cache-control", "max-age=10, must-revalidate")];
    let forbidden = stale_decision(&disconnected, &store, &strict, 1020, &[]);
    let answer = |pending: &Pending, unreachable: bool| {
        on_response_headers(
            &disconnected,
            pending,
            &pairs(&error),
            false,
            || 1020,
            || unreachable,
        )
    };
    let ResponseAction::GatewayTimeout { headers } = answer(&forbidden, true) else {
        panic!("an unreachable origin and a must-revalidate entry: 504");
    };
    assert_eq!(header(&headers, ":status"), Some("504"));
    assert!(header(&headers, "cache-status").is_some_and(|v| v.contains("origin-unreachable")));
    assert!(matches!(
        answer(&forbidden, false),
        ResponseAction::Deliver { .. }
    ));
    let store = MemoryStore::default();
    let allowed = stale_decision(&disconnected, &store, &stale, 1020, &[]);
    assert!(matches!(
        answer(&allowed, true),
        ResponseAction::ServeStale { .. }
    ));
    assert!(matches!(
        answer(&allowed, false),
        ResponseAction::Deliver { .. }
    ));
}

/// The adapter reads a response's fields in place (`HeaderMap`); a background refresh has
/// them as pairs. Both decide the same, and store the same entry.
#[test]
fn a_response_read_in_place_decides_and_stores_as_its_pairs() {
    use edgewise_support::HeaderMap;
    let config =
        Config::from_json(br#"{"tags":{"headers":["surrogate-key"],"strip":true}}"#).unwrap();
    let store = MemoryStore::default();
    let pending = forwarded(&config, &store, &[]);
    let response = pairs(&[
        (":status", "200"),
        ("cache-control", "max-age=60"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("surrogate-key", "a b"),
        ("etag", "\"1\""),
        ("set-cookie", "s=1"),
        ("set-cookie", "t=2"),
    ]);
    let map = HeaderMap::from_pairs(&response);
    assert_eq!(
        on_response_headers(&config, &pending, &response, false, || 1000, || false),
        on_response_headers(&config, &pending, &map, false, || 1000, || false),
    );
    let mut no_request = |_: &str| None;
    let from_pairs = entry_for(
        &config.tags,
        &pending,
        200,
        &response,
        b"x".to_vec(),
        1000,
        &mut no_request,
    );
    let from_map = entry_for(
        &config.tags,
        &pending,
        200,
        &map,
        b"x".to_vec(),
        1000,
        &mut no_request,
    );
    assert_eq!(from_pairs, from_map);
    let entry = from_map.expect("a cacheable 200 with tags makes an entry");
    assert_eq!(entry.tags, vec![b"a".to_vec(), b"b".to_vec()]);
    let names: Vec<&str> = entry.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["cache-control", "etag", "set-cookie", "set-cookie"],
        "no pseudo, hop-by-hop, nominated or tag field is stored"
    );
}
