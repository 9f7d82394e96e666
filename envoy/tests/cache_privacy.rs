//! response_cache.wasm in real Envoy 1.40 (2 workers): one user's page or cookie never
//! reaches another, in the default and the example configuration; unkeyed headers do not
//! poison entries; copies of responses being stored stay within max_inflight_bytes.

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, HttpResponse, WasmFilter};

/// The filter configuration of envoy/examples/response-cache.yaml (its cluster is the
/// harness's `backend` too).
fn example_config() -> String {
    let yaml = std::fs::read_to_string(
        envoy_harness::workspace_root().join("envoy/examples/response-cache.yaml"),
    )
    .unwrap();
    let start = yaml.find("value: |").unwrap() + "value: |".len();
    let rest = &yaml[start..];
    let end = rest.find("\n          - name:").unwrap();
    rest[..end].trim().to_string()
}

fn start(config: &str) -> (Backend, Envoy) {
    envoy_harness::build_wasm(&["response-cache"]).unwrap();
    let backend = Backend::start("origin").unwrap();
    let mut envoy_config = EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
        "response_cache",
        wasm_path("response_cache"),
        config,
    ));
    // 200 concurrent upstream connections on 2 busy cores: the harness's 1 s connect
    // timeout once expired in CI (503 "connection timeout"), which is not what is tested here.
    envoy_config.cluster_options = Some(serde_json::json!({ "connect_timeout": "10s" }));
    let envoy = Envoy::start(&envoy_config).unwrap();
    (backend, envoy)
}

fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    envoy.request("GET", path, headers, b"").unwrap()
}

fn set_cookies(r: &HttpResponse) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Issue scenario 1: a session page without cache headers, fetched with alice's Cookie; 20
/// later requests without it (plain and with max-stale, spread over both workers) must all
/// get the anonymous page from the origin.
#[test]
fn a_session_page_never_reaches_a_client_without_the_cookie() {
    for config in ["{}".to_string(), example_config()] {
        let (backend, envoy) = start(&config);
        let path = "/cache/account?personal=1";
        let alice = get(&envoy, path, &[("cookie", "session=alice")]);
        assert_eq!(alice.text(), "page for session=alice\n");
        for i in 0..20 {
            let extra: &[(&str, &str)] = if i % 2 == 0 {
                &[("cache-control", "max-stale")]
            } else {
                &[]
            };
            let other = get(&envoy, path, extra);
            assert_eq!(other.status, 200);
            assert_eq!(other.text(), "page for anonymous\n", "{config}: {extra:?}");
        }
        assert_eq!(backend.requests().unwrap(), 21, "{config}");
    }
}

/// Issue scenario 2: alice's revalidation is answered 304 with her Set-Cookie; she gets it,
/// no later client does — in-band (default config) and by the background refresh of
/// stale-while-revalidate (example config, whose refresh carries alice's request fields).
/// Timing: the entry has max-age=1 and is stale after a 2 s wait (wide margin).
#[test]
fn a_304_set_cookie_reaches_only_the_revalidating_client() {
    for config in ["{}".to_string(), example_config()] {
        let (_backend, envoy) = start(&config);
        let path = "/cache/home?cache_control=max-age%3D1&etag=v1&cookie_on_304=1";
        let first = get(&envoy, path, &[]);
        assert_eq!(first.status, 200);
        assert!(first.header("cache-status").unwrap().ends_with("stored"));
        std::thread::sleep(std::time::Duration::from_secs(2));
        let alice = get(&envoy, path, &[("cookie", "session=alice")]);
        assert_eq!(alice.text(), "cacheable /cache/home\n");
        if config == "{}" {
            // In-band: alice's own request was revalidated; her 304 fields are hers.
            assert_eq!(set_cookies(&alice), vec!["seen=session=alice"], "{config}");
        }
        for _ in 0..20 {
            let other = get(&envoy, path, &[]);
            assert_eq!(other.text(), "cacheable /cache/home\n");
            assert!(
                set_cookies(&other).iter().all(|c| !c.contains("alice")),
                "{config}: {:?}",
                other.headers
            );
        }
    }
}

/// Web cache poisoning: the origin builds the page from X-Forwarded-Host; an attacker's
/// request with it never becomes what others get (bypassed by default).
#[test]
fn a_reflected_unkeyed_header_never_poisons_the_entry() {
    let (_backend, envoy) = start("{}");
    let path = "/cache/landing?personal=1&cache_control=max-age%3D60";
    let attack = get(&envoy, path, &[("x-forwarded-host", "evil.example")]);
    assert_eq!(attack.text(), "page for anonymous via evil.example\n");
    assert_eq!(
        attack.header("cache-status"),
        Some("edgewise; fwd=bypass; detail=unkeyed-header")
    );
    for _ in 0..10 {
        assert_eq!(get(&envoy, path, &[]).text(), "page for anonymous\n");
    }
}

/// 200 concurrent 1 MB misses held by a slow origin (each body trickles out over ~1 s) with
/// max_inflight_bytes 4 MiB per worker: every client gets its whole body; the stores beyond
/// the budget are abandoned, so the copies stay bounded. Envoy's RSS growth is printed and
/// checked with a wide tolerance (it includes Envoy's own buffers for 200 MB passing through):
/// without the budget the two workers' Wasm heaps would also hold all 200 copies at once.
#[test]
fn two_hundred_large_misses_stay_within_the_inflight_budget() {
    let config = r#"{"max_bytes":8388608,"max_entry_bytes":1048576,"max_inflight_bytes":4194304,"coalesce":{"enabled":false}}"#;
    let (_backend, envoy) = start(config);
    let rss_before = envoy.rss_kib().unwrap();
    let addr = envoy.listener;
    let n = 200;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let path =
                    format!("/cache/big{i}?cache_control=max-age%3D60&size=1000000&trickle_ms=60");
                barrier.wait();
                envoy_harness::http_request(addr, "GET", &path, &[], b"").unwrap()
            })
        })
        .collect();
    for client in clients {
        let r = client.join().unwrap();
        assert_eq!(
            (r.status, r.body.len()),
            (200, 1_000_000),
            "{}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        );
    }
    let rss_after = envoy.rss_kib().unwrap();
    let abandoned = envoy
        .stat("edgewise.response_cache.store_abandoned")
        .unwrap()
        .unwrap_or(0);
    let stored = envoy
        .stat("edgewise.response_cache.stored")
        .unwrap()
        .unwrap_or(0);
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    println!(
        "200 x 1 MB misses: stored {stored}, abandoned {abandoned}, Envoy RSS {rss_before} KiB -> {rss_after} KiB (+{growth_mib} MiB)"
    );
    assert!(abandoned > 0, "the budget never applied");
    assert!(growth_mib < 150, "RSS grew {growth_mib} MiB");
}
