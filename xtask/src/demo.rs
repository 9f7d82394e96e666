//! `cargo xtask demo local`: each filter in its own local Envoy (2 workers) in front of a backend, driven with requests that show it at work.

use super::*;

pub fn demo() -> Result<()> {
    setup()?;
    build_wasm()?;
    step("starting the backend and Envoy (2 workers) with the probe filter");
    let backend = Backend::start("demo-backend")?;
    let config = EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
        "probe",
        wasm_path("probe"),
        "demo",
    ));
    let envoy = Envoy::start(&config)?;
    println!(
        "Envoy on http://{}, admin on http://{}",
        envoy.listener, envoy.admin
    );
    step("a request through Envoy and the wasm filter");
    let response = envoy.request(
        "GET",
        "/echo/hello",
        &[("x-probe", "headers"), ("x-probe-id", "demo")],
        b"",
    )?;
    println!(
        "GET /echo/hello -> {} from backend {:?}",
        response.status,
        response.header("x-backend-name").unwrap_or("?")
    );
    println!(
        "  the filter added a header the client sees:  x-probe-saw: {}",
        response.header("x-probe-saw").unwrap_or("(missing!)")
    );
    let seen: serde_json::Value = serde_json::from_slice(&response.body)?;
    println!(
        "  the filter added a header the backend saw:  x-added: {}",
        seen["headers"]["x-added"]
    );
    step("a local reply from the filter (the backend never sees it)");
    let before = backend.requests()?;
    let local = envoy.request(
        "GET",
        "/anything",
        &[("x-probe", "local"), ("x-probe-id", "demo2")],
        b"",
    )?;
    println!(
        "GET /anything -> {} {:?}; backend requests before/after: {before}/{}",
        local.status,
        local.text().trim(),
        backend.requests()?
    );
    step("what the filter logged in Envoy");
    envoy.wait_for_log(std::time::Duration::from_secs(10), |log| {
        log.contains("PROBE[demo2] on_done")
    })?;
    for line in envoy.log().lines().filter(|l| l.contains("PROBE[demo")) {
        if let Some(at) = line.find("PROBE[") {
            println!("  {}", &line[at..]);
        }
    }
    drop(envoy);
    demo_rate_limit()?;
    demo_circuit_breaker()?;
    demo_weighted_router()?;
    demo_response_cache()?;
    println!("\nLocal demo done. With Docker, `cargo xtask demo` runs the four filters together in the compose cluster.");
    Ok(())
}

fn demo_response_cache() -> Result<()> {
    step("response caching: the first request goes to the origin, the rest come from shared data");
    let backend = Backend::start("origin")?;
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "response_cache",
            wasm_path("response_cache"),
            "{}",
        )),
    )?;
    let path = "/cache/article?cache_control=max-age%3D60&etag=v1&body=an+article";
    for n in 1..=4 {
        let r = envoy.get(path)?;
        println!(
            "  GET #{n}: {} {:?}  Cache-Status: {}  Age: {}  (origin has served {})",
            r.status,
            r.text(),
            r.header("cache-status").unwrap_or("-"),
            r.header("age").unwrap_or("-"),
            backend.requests()?
        );
    }
    let conditional = envoy.request("GET", path, &[("if-none-match", "\"v1\"")], b"")?;
    println!(
        "  GET with If-None-Match: \"v1\" -> {} from the cache (origin still at {})",
        conditional.status,
        backend.requests()?
    );
    Ok(())
}

fn demo_weighted_router() -> Result<()> {
    use envoy_harness::Route;
    step("weighted routing: 70/20/10 across three backends, sticky users, a canary override");
    let backends: Vec<Backend> = ["api-v1", "api-v2", "api-v3"]
        .iter()
        .map(|n| Backend::start(n))
        .collect::<Result<_>>()?;
    let rules = r#"{"routes":[{"name":"api","match":{"path_prefix":"/api/"},"targets":[{"cluster":"api-v1","weight":70},{"cluster":"api-v2","weight":20},{"cluster":"api-v3","weight":10}],"overrides":[{"header":"x-canary","equals":"always","cluster":"api-v3"}]},
      {"name":"users","strategy":"hash","hash_on":"header:x-user","targets":[{"cluster":"api-v1","weight":70},{"cluster":"api-v2","weight":20},{"cluster":"api-v3","weight":10}]}]}"#;
    let mut config = EnvoyConfig::proxy_to(backends[0].addr, 2)
        .routes(vec![
            Route::native_weighted(
                "native",
                "/native/",
                &[("api-v1", 70), ("api-v2", 20), ("api-v3", 10)],
            ),
            Route::by_header("ours", "/", "x-route-cluster"),
        ])
        .filter(WasmFilter::new(
            "weighted_router",
            wasm_path("weighted_router"),
            rules,
        ));
    for b in &backends {
        config = config.cluster(&b.name, vec![b.addr]);
    }
    let envoy = Envoy::start(&config)?;
    let counted = || -> Result<Vec<u64>> { backends.iter().map(|b| b.requests()).collect() };
    for _ in 0..200 {
        envoy.get("/api/x")?;
    }
    println!(
        "  200 requests, weighted round robin (Pfair cycle): backends counted {:?}",
        counted()?
    );
    for b in &backends {
        b.reset_counters()?;
    }
    for _ in 0..200 {
        envoy.get("/native/x")?;
    }
    println!(
        "  200 requests, Envoy's native weighted_clusters:   backends counted {:?}",
        counted()?
    );
    for user in ["ana", "bo", "chen", "dana", "eve", "finn", "gus", "hal"] {
        let sides: Vec<String> = (0..3)
            .map(|_| {
                envoy
                    .request("GET", "/u", &[("x-user", user)], b"")
                    .map(|r| r.header("x-backend-name").unwrap_or("?").to_string())
            })
            .collect::<Result<_>>()?;
        println!("  user {user:<5} (hash on x-user) -> {}", sides.join(", "));
    }
    let pinned = envoy.request("GET", "/api/x", &[("x-canary", "always")], b"")?;
    println!(
        "  x-canary: always -> {}",
        pinned.header("x-backend-name").unwrap_or("?")
    );
    Ok(())
}

fn demo_circuit_breaker() -> Result<()> {
    step("circuit breaking: the backend starts failing, the breaker opens, then heals");
    let backend = Backend::start("payments")?;
    let rules =
        r#"{"trip":{"consecutive_failures":3},"open":{"duration":"2s"},"half_open":{"probes":2}}"#;
    let config = EnvoyConfig::proxy_to(backend.addr, 2)
        .route_name("payments")
        .filter(WasmFilter::new(
            "circuit_breaker",
            wasm_path("circuit_breaker"),
            rules,
        ));
    let envoy = Envoy::start(&config)?;
    println!("config: {rules}");
    let show = |label: &str| -> Result<()> {
        let r = envoy.get("/status/200")?;
        let who = match r.header("x-edgewise-circuit") {
            Some(state) => format!("fallback from the breaker ({state})"),
            None => format!(
                "from the backend ({} requests so far)",
                backend.requests().unwrap_or(0)
            ),
        };
        println!("  {label:<22} -> {} {who}", r.status);
        Ok(())
    };
    show("healthy")?;
    backend.set_fault(r#"{"mode":"fail","ratio":1.0,"status":503}"#)?;
    println!("  (backend fault switch: every request now fails with 503)");
    for n in 1..=5 {
        show(&format!("failing, request {n}"))?;
    }
    backend.set_fault(r#"{"mode":"off"}"#)?;
    println!("  (backend healed; the breaker stays open for 2 s, then lets 2 probes through)");
    let started = Instant::now();
    while envoy
        .get("/status/200")?
        .header("x-edgewise-circuit")
        .is_some()
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!(
        "  first probe admitted after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for n in 1..=3 {
        show(&format!("after recovery {n}"))?;
    }
    let stat = |name: &str| envoy.stat(name).ok().flatten().unwrap_or(-1);
    println!(
        "  Prometheus (admin /stats/prometheus), upstream=\"payments\": edgewise_circuit_breaker_state = {} (0 closed), _opened = {}, _rejected = {}",
        stat("edgewise.circuit_breaker.upstream=.=payments;.;state"),
        stat("edgewise.circuit_breaker.upstream=.=payments;.;opened"),
        stat("edgewise.circuit_breaker.upstream=.=payments;.;rejected")
    );
    Ok(())
}

fn demo_rate_limit() -> Result<()> {
    step("rate limiting: 5 requests per minute per API key, Envoy with 2 workers");
    let backend = Backend::start("demo-api")?;
    let rules =
        r#"{"rules":[{"name":"per-api-key","key":"header:x-api-key","limit":5,"window":"1m"}]}"#;
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "rate_limit",
            wasm_path("rate_limit"),
            rules,
        )),
    )?;
    println!("config: {rules}");
    for n in 1..=7 {
        let r = envoy.request("GET", "/status/200", &[("x-api-key", "alice")], b"")?;
        let detail = match r.header("retry-after") {
            Some(retry) => format!("denied, Retry-After: {retry}s"),
            None => "allowed".to_string(),
        };
        println!(
            "  alice request {n}: {} {detail:<26} RateLimit: {}",
            r.status,
            r.header("ratelimit").unwrap_or("-")
        );
    }
    let bob = envoy.request("GET", "/status/200", &[("x-api-key", "bob")], b"")?;
    println!("  bob   request 1: {} (his own bucket)", bob.status);
    println!(
        "  the backend received {} requests: denied ones never reached it",
        backend.requests()?
    );
    let stat = |name: &str| envoy.stat(name).ok().flatten().unwrap_or(0);
    println!(
        "  Prometheus (admin /stats/prometheus): edgewise_rate_limit_allowed{{rule=\"per-api-key\"}} = {}, edgewise_rate_limit_denied{{rule=\"per-api-key\"}} = {}",
        stat("edgewise.rate_limit.rule=.=per-api-key;.;allowed"),
        stat("edgewise.rate_limit.rule=.=per-api-key;.;denied")
    );
    Ok(())
}
