//! response_cache.wasm in real Envoy 1.40 (2 workers) in front of our backend.

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, WasmFilter};

fn build() {
    envoy_harness::build_wasm(&["response-cache"]).unwrap();
}

fn start() -> (Backend, Envoy) {
    build();
    let backend = Backend::start("origin").unwrap();
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "response_cache",
            wasm_path("response_cache"),
            "{}",
        )),
    )
    .unwrap();
    (backend, envoy)
}

/// `n` GETs of `path` released together from `n` threads (a barrier), each on its own
/// connection; their responses.
fn concurrent_gets(
    envoy: &Envoy,
    path: &'static str,
    n: usize,
) -> Vec<envoy_harness::HttpResponse> {
    let addr = envoy.listener;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                envoy_harness::http_request(addr, "GET", path, &[], b"").unwrap()
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

const PATH: &str = "/cache/a?cache_control=max-age%3D60&etag=v1&body=cached-body";

#[test]
fn hits_are_served_from_shared_data_and_the_origin_counts_one_request() {
    let (backend, envoy) = start();
    let first = envoy.get(PATH).unwrap();
    assert_eq!((first.status, first.text().as_str()), (200, "cached-body"));
    assert_eq!(
        first.header("cache-status"),
        Some("edgewise; fwd=miss; stored")
    );
    // New connections land on either worker: every one must hit.
    for _ in 0..20 {
        let hit = envoy.get(PATH).unwrap();
        assert_eq!((hit.status, hit.text().as_str()), (200, "cached-body"));
        assert!(
            hit.header("cache-status")
                .unwrap()
                .starts_with("edgewise; hit"),
            "{:?}",
            hit.headers
        );
        assert!(hit.header("age").is_some());
        assert_eq!(
            hit.headers
                .iter()
                .filter(|(k, _)| k == "content-type")
                .count(),
            1,
            "{:?}",
            hit.headers
        );
        assert_eq!(hit.header("content-type"), Some("text/plain"));
        assert_eq!(hit.header("etag"), Some("\"v1\""));
    }
    assert_eq!(
        backend.requests().unwrap(),
        1,
        "the origin saw only the miss"
    );
    assert_eq!(
        envoy.stat("edgewise.response_cache.hits").unwrap(),
        Some(20)
    );
    let not_modified = envoy
        .request("GET", PATH, &[("if-none-match", "\"v1\"")], b"")
        .unwrap();
    assert_eq!(not_modified.status, 304);
    assert_eq!(
        backend.requests().unwrap(),
        1,
        "304 answered from the cache"
    );
}

#[test]
fn unsafe_methods_invalidate_and_no_store_is_never_cached() {
    let (backend, envoy) = start();
    envoy.get(PATH).unwrap();
    envoy.get(PATH).unwrap();
    assert_eq!(backend.requests().unwrap(), 1);
    assert_eq!(envoy.request("POST", PATH, &[], b"x").unwrap().status, 200);
    envoy.get(PATH).unwrap();
    assert_eq!(
        backend.requests().unwrap(),
        3,
        "POST went through and the next GET missed"
    );
    let never = "/cache/b?cache_control=no-store";
    envoy.get(never).unwrap();
    envoy.get(never).unwrap();
    assert_eq!(backend.requests().unwrap(), 5);
}

#[test]
fn purge_removes_an_entry_on_every_worker() {
    build();
    let backend = Backend::start("origin").unwrap();
    let config = r#"{"purge":{"token":"s3cret-purge-token"}}"#;
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "response_cache",
            wasm_path("response_cache"),
            config,
        )),
    )
    .unwrap();
    envoy.get(PATH).unwrap();
    envoy.get(PATH).unwrap();
    assert_eq!(backend.requests().unwrap(), 1);
    assert_eq!(
        envoy
            .request("PURGE", PATH, &[("x-purge-token", "wrong")], b"")
            .unwrap()
            .status,
        403
    );
    assert_eq!(
        envoy
            .request(
                "PURGE",
                PATH,
                &[("x-purge-token", "s3cret-purge-token")],
                b""
            )
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        backend.requests().unwrap(),
        1,
        "purge requests never reach the origin"
    );
    envoy.get(PATH).unwrap();
    assert_eq!(backend.requests().unwrap(), 2, "the next GET is a miss");
}

#[test]
fn stale_if_error_serves_the_stale_entry_when_the_origin_is_gone() {
    let (mut backend, envoy) = start();
    // max-age=0: stale at once, so no waiting; stale-if-error allows 60 s of staleness.
    let path = "/cache/s?cache_control=max-age%3D0%2C+stale-if-error%3D60&body=last-good";
    let first = envoy.get(path).unwrap();
    assert_eq!(first.text(), "last-good");
    backend.kill();
    let fallback = envoy.get(path).unwrap();
    assert_eq!(
        (fallback.status, fallback.text().as_str()),
        (200, "last-good"),
        "{:?}",
        fallback.headers
    );
    assert_eq!(
        fallback.header("cache-status"),
        Some("edgewise; hit; detail=stale-if-error")
    );
    assert_eq!(
        envoy.stat("edgewise.response_cache.stale_served").unwrap(),
        Some(1)
    );
}

/// RFC 9111 §4.3: a stale entry (max-age=0) is revalidated with If-None-Match; the origin's
/// 304 refreshes it and the client gets the stored 200 with its body, counted at the origin as
/// one conditional request each time.
#[test]
fn stale_entries_are_revalidated_with_a_304_and_served_whole() {
    let (backend, envoy) = start();
    let path = "/cache/r?cache_control=max-age%3D0&etag=v7&body=the-stored-body";
    let first = envoy.get(path).unwrap();
    assert_eq!(
        first.header("cache-status"),
        Some("edgewise; fwd=miss; stored")
    );
    for n in 2..=4 {
        let again = envoy.get(path).unwrap();
        assert_eq!(
            (again.status, again.text().as_str()),
            (200, "the-stored-body"),
            "{:?}",
            again.headers
        );
        assert_eq!(
            again.header("cache-status"),
            Some("edgewise; fwd=stale; ttl=0; stored; fwd-status=304"),
            "{:?}",
            again.headers
        );
        assert_eq!(again.header("etag"), Some("\"v7\""));
        assert_eq!(
            again
                .headers
                .iter()
                .filter(|(k, _)| k == "content-type")
                .count(),
            1,
            "{:?}",
            again.headers
        );
        assert_eq!(
            backend.requests().unwrap(),
            n,
            "one conditional request per revalidation"
        );
    }
    assert_eq!(
        envoy.stat("edgewise.response_cache.revalidated").unwrap(),
        Some(3)
    );
}

/// Coalescing across Envoy's workers: 50 concurrent misses for one URL (the origin takes
/// 1 s to answer: a window wide enough for all 50 to arrive while it fills, even on a loaded
/// machine) make exactly one origin request; every client gets the body.
#[test]
fn fifty_concurrent_misses_make_one_origin_request() {
    let (backend, envoy) = start();
    let path = "/cache/hot?cache_control=max-age%3D60&delay_ms=1000&body=hot-body";
    let responses = concurrent_gets(&envoy, path, 50);
    for r in &responses {
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hot-body"),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(
        backend.requests().unwrap(),
        1,
        "one origin request for 50 misses"
    );
    let coalesced = envoy
        .stat("edgewise.response_cache.coalesced")
        .unwrap()
        .unwrap_or(0);
    let hits = envoy
        .stat("edgewise.response_cache.hits")
        .unwrap()
        .unwrap_or(0);
    println!("50 concurrent misses: {coalesced} coalesced, {hits} later hits, 1 origin request");
    assert_eq!(coalesced + hits, 49);
    assert!(
        coalesced > 0,
        "no request waited: the misses did not overlap"
    );
}

/// RFC 5861 §3 across Envoy's workers: 20 concurrent requests for a stale entry (the origin
/// takes 1 s to answer) are all served the stale entry at once; the origin sees exactly one
/// background refresh, a conditional GET sent to the route's cluster, answered 304.
#[test]
fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let (backend, envoy) = start();
    let path = "/cache/swr?cache_control=max-age%3D0%2C+stale-while-revalidate%3D60&etag=v3&delay_ms=1000&body=swr-body";
    let first = envoy.get(path).unwrap();
    assert_eq!(
        first.header("cache-status"),
        Some("edgewise; fwd=miss; stored")
    );
    for r in concurrent_gets(&envoy, path, 20) {
        assert_eq!((r.status, r.text().as_str()), (200, "swr-body"));
        let status = r.header("cache-status").unwrap_or_default();
        assert!(
            status.starts_with("edgewise; hit;")
                && status.ends_with("detail=stale-while-revalidate"),
            "{status}"
        );
    }
    // The refresh is still at the origin (1 s); wait for it to land (polled, bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while envoy
        .stat("edgewise.response_cache.refreshed")
        .unwrap()
        .unwrap_or(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no refresh landed in 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(backend.requests().unwrap(), 2, "the miss and one refresh");
    assert_eq!(
        envoy.stat("edgewise.response_cache.revalidated").unwrap(),
        Some(1)
    );
    assert_eq!(
        envoy.stat("edgewise.response_cache.stale_served").unwrap(),
        Some(20)
    );
    assert_eq!(
        envoy
            .stat("edgewise.response_cache.refresh_failed")
            .unwrap()
            .unwrap_or(0),
        0
    );
}

/// Memory stays bounded under many distinct URLs: 3,000 URLs of 4 KiB each through a cache
/// of 256 KiB. The cache's byte gauge never exceeds its budget, and Envoy's resident memory
/// grows by far less between the first 1,000 and all 3,000 than the 8 MiB an unbounded cache
/// would add (tolerance: 4 MiB, for allocator noise).
#[test]
fn memory_stays_bounded_under_many_distinct_urls() {
    build();
    let backend = Backend::start("origin").unwrap();
    let config = r#"{"max_bytes":262144,"max_entry_bytes":8192,"max_entries":256}"#;
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "response_cache",
            wasm_path("response_cache"),
            config,
        )),
    )
    .unwrap();
    let mut rss_after_1000 = 0;
    for n in 0..3000 {
        let path = format!("/cache/u{n}?cache_control=max-age%3D600&size=4096");
        let r = envoy.get(&path).unwrap();
        assert_eq!((r.status, r.body.len()), (200, 4096));
        if n == 999 {
            rss_after_1000 = envoy.rss_kib().unwrap();
        }
    }
    let rss_after_3000 = envoy.rss_kib().unwrap();
    let bytes = envoy
        .stat("edgewise.response_cache.bytes_in_use")
        .unwrap()
        .unwrap_or(0);
    let stored = envoy
        .stat("edgewise.response_cache.stored")
        .unwrap()
        .unwrap_or(0);
    let evicted = envoy
        .stat("edgewise.response_cache.evicted")
        .unwrap()
        .unwrap_or(0);
    println!(
        "3000 URLs x 4 KiB: stored {stored}, evicted {evicted}, bytes in use {bytes}, \
         Envoy RSS {rss_after_1000} KiB -> {rss_after_3000} KiB"
    );
    assert!(bytes > 0 && bytes <= 262_144, "bytes in use {bytes}");
    assert_eq!(stored, 3000);
    assert!(evicted >= 3000 - 64, "evicted {evicted}");
    let growth = rss_after_3000.saturating_sub(rss_after_1000);
    assert!(growth < 4096, "RSS grew {growth} KiB over 2,000 more URLs");
    // The newest URL is still served from the cache.
    let last = envoy
        .get("/cache/u2999?cache_control=max-age%3D600&size=4096")
        .unwrap();
    assert!(last
        .header("cache-status")
        .unwrap_or_default()
        .starts_with("edgewise; hit"));
}

#[test]
fn the_example_config_is_valid() {
    build();
    envoy_harness::validate_example("response-cache.yaml", &["response_cache"])
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Group purges in real Envoy (2 workers): pages tagged with Surrogate-Key and Cache-Tag
/// (neither reaches the client), a purge by tag makes exactly those pages misses — whichever
/// worker takes each request — and the rest stay hits; then a purge by prefix.
#[test]
fn purge_by_tag_reaches_every_worker_and_only_the_tagged_pages() {
    build();
    let backend = Backend::start("origin").unwrap();
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "response_cache",
            wasm_path("response_cache"),
            r#"{"purge":{"token":"s3cret-purge-token"}}"#,
        )),
    )
    .unwrap();
    let pages = [
        "/cache/p/1?cache_control=max-age%3D600&header=surrogate-key%3Aproduct-1%20listing",
        "/cache/p/2?cache_control=max-age%3D600&header=surrogate-key%3Aproduct-2%20listing",
        "/cache/about?cache_control=max-age%3D600&header=cache-tag%3Asite%2Cabout",
    ];
    for page in pages {
        let r = envoy.get(page).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.header("surrogate-key").is_none() && r.header("cache-tag").is_none());
    }
    let origin = || backend.requests().unwrap();
    let filled = origin();
    // Several requests per page: both workers serve them from the cache.
    for _ in 0..4 {
        for page in pages {
            assert_eq!(envoy.get(page).unwrap().status, 200);
        }
    }
    assert_eq!(origin(), filled, "all hits");
    let purge = |fields: &[(&str, &str)]| {
        let mut all = vec![("x-purge-token", "s3cret-purge-token")];
        all.extend_from_slice(fields);
        envoy.request("PURGE", "/", &all, b"").unwrap().status
    };
    assert_eq!(purge(&[("x-purge-tag", "product-1")]), 200);
    for _ in 0..4 {
        for page in pages {
            envoy.get(page).unwrap();
        }
    }
    assert_eq!(origin(), filled + 1, "exactly the tagged page missed, once");
    assert_eq!(purge(&[("x-purge-prefix", "/cache/p/")]), 200);
    for _ in 0..4 {
        for page in pages {
            envoy.get(page).unwrap();
        }
    }
    assert_eq!(
        origin(),
        filled + 3,
        "both /cache/p/ pages missed once, /about stayed"
    );
    assert_eq!(
        envoy
            .request("PURGE", "/", &[("x-purge-tag", "site")], b"")
            .unwrap()
            .status,
        403
    );
}
