//! The composed edge against an adversary, through real Envoy 1.40 (2 workers): requests
//! crafted to poison a shared cache — a repeated keyed field, a repeated varied field, a
//! routing override — never change what another client is served.

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, Route, WasmFilter};

fn cache_envoy(backend: &Backend, config: &str) -> Envoy {
    Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "response_cache",
            wasm_path("response_cache"),
            config,
        )),
    )
    .unwrap()
}

/// `key.headers: ["x-device"]`: a request with `desktop` and `mobile` lines (the origin
/// answers for the last) must not fill the entry desktop clients are served.
#[test]
fn a_repeated_keyed_field_does_not_poison_the_cache() {
    let backend = Backend::start("origin").unwrap();
    let envoy = cache_envoy(&backend, r#"{"key":{"headers":["x-device"]}}"#);
    let page = "/cache/home?cache_control=max-age%3D60&reflect=x-device";
    let poison = envoy
        .request(
            "GET",
            page,
            &[("x-device", "desktop"), ("x-device", "mobile")],
            b"",
        )
        .unwrap();
    assert_eq!(poison.text(), "origin x-device=mobile\n");
    for _ in 0..4 {
        let r = envoy
            .request("GET", page, &[("x-device", "desktop")], b"")
            .unwrap();
        assert_eq!(r.text(), "origin x-device=desktop\n", "{:?}", r.headers);
    }
    assert_eq!(
        backend.requests().unwrap(),
        2,
        "one fill per key, then hits"
    );
}

/// `Vary: Accept-Language` with two Accept-Language lines: the variant stored is the
/// combined value's, never the first line's.
#[test]
fn a_repeated_varied_field_does_not_poison_the_cache() {
    let backend = Backend::start("origin").unwrap();
    let envoy = cache_envoy(&backend, "{}");
    let page =
        "/cache/lang?cache_control=max-age%3D60&vary=Accept-Language&reflect=accept-language";
    let poison = envoy
        .request(
            "GET",
            page,
            &[("accept-language", "en"), ("accept-language", "fr")],
            b"",
        )
        .unwrap();
    assert_eq!(poison.text(), "origin accept-language=fr\n");
    for _ in 0..4 {
        let r = envoy
            .request("GET", page, &[("accept-language", "en")], b"")
            .unwrap();
        assert_eq!(r.text(), "origin accept-language=en\n", "{:?}", r.headers);
    }
}

/// edge_chain: one request forced to the canary with `x-canary: always` fills only the
/// canary's entry; everyone else is routed to api-v1 and served api-v1's page.
#[test]
fn a_routing_override_does_not_poison_the_cache() {
    envoy_harness::build_edge_chain().unwrap();
    let v1 = Backend::start("api-v1").unwrap();
    let v2 = Backend::start("api-v2").unwrap();
    let chain = r#"{
      "response_cache": {},
      "weighted_router": {"routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":1}],
        "overrides":[{"header":"x-canary","equals":"always","cluster":"api-v2"}]}]}
    }"#;
    let config = EnvoyConfig::proxy_to(v1.addr, 2)
        .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
        .filter(WasmFilter::new("edge_chain", wasm_path("edge_chain"), chain).vm_id("edgewise"))
        .cluster("api-v1", vec![v1.addr])
        .cluster("api-v2", vec![v2.addr]);
    let envoy = Envoy::start(&config).unwrap();
    let page = "/cache/home?cache_control=max-age%3D60&reflect=x-canary";
    let canary = envoy
        .request("GET", page, &[("x-canary", "always")], b"")
        .unwrap();
    assert_eq!(canary.text(), "api-v2 x-canary=always\n");
    for _ in 0..6 {
        let r = envoy.request("GET", page, &[], b"").unwrap();
        assert_eq!(r.text(), "api-v1 x-canary=-\n", "{:?}", r.headers);
    }
    assert_eq!(v1.requests().unwrap(), 1, "api-v1's page filled once");
    // The canary's own clients are still served the canary's page (from its entry).
    let again = envoy
        .request("GET", page, &[("x-canary", "always")], b"")
        .unwrap();
    assert_eq!(again.text(), "api-v2 x-canary=always\n");
    assert_eq!(v2.requests().unwrap(), 1);
}
