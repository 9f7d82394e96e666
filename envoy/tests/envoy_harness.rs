//! The Envoy layer's ground truth: real Envoy 1.40 with 2 workers proxying to our real
//! backend, the backend's counter and fault switch seen through Envoy, and a wasm plugin
//! configuration Envoy refuses.

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, WasmFilter};

fn build_probe() {
    envoy_harness::build_wasm(&["probe"]).unwrap();
}

#[test]
fn envoy_proxies_to_the_backend_and_the_backend_counts_and_faults() {
    let backend = Backend::start("api-v1").unwrap();
    let envoy = Envoy::start(&EnvoyConfig::proxy_to(backend.addr, 2)).unwrap();

    let echo = envoy
        .request("GET", "/echo/x?y=1", &[("x-test", "1")], b"")
        .unwrap();
    assert_eq!(echo.status, 200);
    assert_eq!(echo.header("x-backend-name"), Some("api-v1"));
    let seen: serde_json::Value = serde_json::from_slice(&echo.body).unwrap();
    assert_eq!(seen["headers"]["x-test"], "1");
    assert!(
        seen["headers"]["x-request-id"].is_string(),
        "Envoy added a request id: {seen}"
    );

    assert_eq!(envoy.get("/status/418").unwrap().status, 418);
    assert_eq!(backend.requests().unwrap(), 2);

    // Conditional requests: 304 for a matching validator (RFC 9110 §13.1.2).
    let path = "/cache/a?cache_control=max-age%3D60&etag=v1";
    let first = envoy.get(path).unwrap();
    assert_eq!((first.status, first.header("etag")), (200, Some("\"v1\"")));
    let revalidated = envoy
        .request("GET", path, &[("if-none-match", "W/\"v1\"")], b"")
        .unwrap();
    assert_eq!(revalidated.status, 304);

    // The fault switch fails exactly the chosen share of requests.
    backend.reset_counters().unwrap();
    backend
        .set_fault(r#"{"mode":"fail","ratio":0.5,"status":503}"#)
        .unwrap();
    let statuses: Vec<u16> = (0..10)
        .map(|_| envoy.get("/status/200").unwrap().status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        5,
        "{statuses:?}"
    );
    backend.set_fault(r#"{"mode":"off"}"#).unwrap();
    assert_eq!(envoy.get("/status/200").unwrap().status, 200);
    assert_eq!(backend.requests().unwrap(), 11);

    let stats = envoy.stats().unwrap();
    assert!(
        stats
            .get("cluster.backend.upstream_rq_total")
            .copied()
            .unwrap_or(0)
            >= 15,
        "{:?}",
        stats.get("cluster.backend.upstream_rq_total")
    );
}

#[test]
fn a_stopped_backend_gives_envoys_connect_failure() {
    let mut backend = Backend::start("gone").unwrap();
    let envoy = Envoy::start(&EnvoyConfig::proxy_to(backend.addr, 2)).unwrap();
    assert_eq!(envoy.get("/status/200").unwrap().status, 200);
    backend.kill();
    let failed = envoy.get("/status/200").unwrap();
    assert_eq!(failed.status, 503);
    assert!(failed.text().contains("connect"), "{}", failed.text());
}

#[test]
fn envoy_refuses_a_plugin_whose_on_configure_returns_false() {
    build_probe();
    let backend = Backend::start("b").unwrap();
    let config = EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
        "probe",
        wasm_path("probe"),
        "please reject",
    ));
    let err = match Envoy::start(&config) {
        Ok(_) => panic!("Envoy started with a rejected plugin configuration"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("probe: configuration asks to be rejected"),
        "{err}"
    );
}

/// A VM that traps (the probe panics on request) behaves as the plugin's `failure_policy`
/// says, in real Envoy with 2 workers: FAIL_RELOAD (our configs) brings the filter back on a
/// new VM; FAIL_CLOSED answers 503 on the dead VM's worker from then on; FAIL_OPEN passes
/// that worker's requests without the filter. Waits are bounded by deadlines (10 s).
#[test]
fn a_trapped_vm_behaves_as_its_failure_policy_says() {
    build_probe();
    let backend = Backend::start("api-v1").unwrap();
    for policy in ["FAIL_RELOAD", "FAIL_CLOSED", "FAIL_OPEN"] {
        let mut filter = WasmFilter::new("probe", wasm_path("probe"), "policy");
        filter.failure_policy = policy;
        let envoy = Envoy::start(&EnvoyConfig::proxy_to(backend.addr, 2).filter(filter)).unwrap();
        let probe = |scenario: &str| {
            envoy
                .request(
                    "GET",
                    "/echo/x",
                    &[("x-probe", scenario), ("x-probe-id", "f")],
                    b"",
                )
                .unwrap()
        };
        let before = probe("headers");
        assert_eq!(before.status, 200);
        assert!(before.header("x-probe-saw").is_some(), "{policy}");
        let trapped = probe("panic");
        assert_eq!(trapped.status, 503, "{policy}: the trapping request");
        // What the next requests get, over both workers (each request a new connection).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen: Vec<(u16, bool)> = Vec::new();
        loop {
            let r = probe("headers");
            seen.push((r.status, r.header("x-probe-saw").is_some()));
            let window = &seen[seen.len().saturating_sub(20)..];
            let done = match policy {
                // Back on a new VM: 20 in a row filtered and served.
                "FAIL_RELOAD" => window.len() == 20 && window.iter().all(|s| *s == (200, true)),
                // The dead worker keeps failing: 503s keep coming after 2 s.
                "FAIL_CLOSED" => {
                    seen.len() >= 40 && seen[20..].iter().any(|(status, _)| *status == 503)
                }
                // The dead worker passes requests unfiltered; nothing fails.
                _ => seen.len() >= 40 && seen.contains(&(200, false)),
            };
            if done {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{policy}: not seen within 10 s: {seen:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if policy == "FAIL_OPEN" {
            assert!(seen.iter().all(|(status, _)| *status == 200), "{seen:?}");
        }
        println!("{policy}: {} requests until settled", seen.len());
    }
}
