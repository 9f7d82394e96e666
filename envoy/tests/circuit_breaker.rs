//! circuit_breaker.wasm in real Envoy 1.40 (2 workers) in front of our backend, driven by
//! the backend's fault switch and by killing the backend.

use std::time::{Duration, Instant};

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, WasmFilter};

fn build() {
    envoy_harness::build_wasm(&["circuit-breaker"]).unwrap();
}

fn start(backend: &Backend, config: &str) -> Envoy {
    build();
    let cfg = EnvoyConfig::proxy_to(backend.addr, 2)
        .route_name("payments")
        .filter(WasmFilter::new(
            "circuit_breaker",
            wasm_path("circuit_breaker"),
            config,
        ));
    Envoy::start(&cfg).unwrap()
}

/// Polls until a request is let through to the backend (not the fallback); returns how long
/// that took. Waiting out the open duration is the behaviour under test.
fn wait_until_admitted(envoy: &Envoy, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let r = envoy.get("/status/200").unwrap();
        if r.header("x-edgewise-circuit").is_none() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "still rejected after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failing_backend_opens_the_breaker_then_probes_close_it() {
    let backend = Backend::start("payments-v1").unwrap();
    let envoy = start(
        &backend,
        r#"{"trip":{"consecutive_failures":5},"open":{"duration":"1s"},"half_open":{"probes":2}}"#,
    );
    assert_eq!(envoy.get("/status/200").unwrap().status, 200);
    backend
        .set_fault(r#"{"mode":"fail","ratio":1.0,"status":503}"#)
        .unwrap();
    backend.reset_counters().unwrap();
    let statuses: Vec<(u16, Option<String>)> = (0..20)
        .map(|_| envoy.get("/status/200").unwrap())
        .map(|r| (r.status, r.header("x-edgewise-circuit").map(str::to_string)))
        .collect();
    assert!(
        statuses[..5].iter().all(|(s, c)| *s == 503 && c.is_none()),
        "{statuses:?}"
    );
    assert!(
        statuses[5..]
            .iter()
            .all(|(s, c)| *s == 503 && c.as_deref() == Some("open")),
        "{statuses:?}"
    );
    assert_eq!(
        backend.requests().unwrap(),
        5,
        "the backend stops receiving requests once open"
    );
    assert_eq!(
        envoy
            .stat("edgewise.circuit_breaker.upstream=.=payments;.;state")
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        envoy
            .stat("edgewise.circuit_breaker.upstream=.=payments;.;rejected")
            .unwrap(),
        Some(15)
    );

    // Healed: after the open duration, probes go through and it closes.
    backend.set_fault(r#"{"mode":"off"}"#).unwrap();
    let waited = wait_until_admitted(&envoy, Duration::from_secs(10));
    // Stated tolerance: the first request after 1 s is admitted (we poll every 50 ms from the
    // moment of the last rejection, so it may come earlier than 1 s after this point).
    assert!(waited <= Duration::from_secs(3), "{waited:?}");
    assert_eq!(
        envoy.get("/status/200").unwrap().status,
        200,
        "second probe"
    );
    for _ in 0..10 {
        let r = envoy.get("/status/200").unwrap();
        assert_eq!((r.status, r.header("x-edgewise-circuit")), (200, None));
    }
    assert_eq!(
        envoy
            .stat("edgewise.circuit_breaker.upstream=.=payments;.;state")
            .unwrap(),
        Some(0)
    );
    let log = envoy.log();
    assert_eq!(
        log.matches("payments opened for 1000ms").count(),
        1,
        "logged once"
    );
    assert_eq!(
        log.matches("payments closed after successful probes")
            .count(),
        1
    );
}

#[test]
fn a_killed_backend_opens_it_through_envoys_own_failures() {
    let mut backend = Backend::start("payments-v1").unwrap();
    // Only 500 counts by status: the 503s Envoy generates must count as local failures.
    let envoy = start(
        &backend,
        r#"{"failure":{"statuses":[500],"local_failures":true},"trip":{"consecutive_failures":3},"open":{"duration":"30s"}}"#,
    );
    assert_eq!(envoy.get("/status/200").unwrap().status, 200);
    backend.kill();
    let statuses: Vec<(u16, Option<String>)> = (0..6)
        .map(|_| envoy.get("/status/200").unwrap())
        .map(|r| (r.status, r.header("x-edgewise-circuit").map(str::to_string)))
        .collect();
    assert_eq!(
        statuses[..3]
            .iter()
            .filter(|(s, c)| *s == 503 && c.is_none())
            .count(),
        3,
        "{statuses:?}"
    );
    assert!(
        statuses[3..]
            .iter()
            .all(|(_, c)| c.as_deref() == Some("open")),
        "{statuses:?}"
    );
}

#[test]
fn envoy_refuses_an_invalid_breaker_configuration() {
    build();
    let backend = Backend::start("b").unwrap();
    let config = EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
        "circuit_breaker",
        wasm_path("circuit_breaker"),
        r#"{"half_open":{"probes":0}}"#,
    ));
    let error = match Envoy::start(&config) {
        Ok(_) => panic!("Envoy started with probes 0"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("invalid configuration at `half_open.probes`"),
        "{error}"
    );
}

#[test]
fn the_example_envoy_config_is_valid() {
    build();
    envoy_harness::validate_example("circuit-breaker.yaml", &["circuit_breaker"])
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Sends `n` GETs on one keep-alive connection, each with its own `:authority`
/// (`h<i>.spray.test`, i from `first`), to /status/500 for every third host and
/// /status/200 otherwise; returns the statuses seen.
fn spray(addr: std::net::SocketAddr, first: usize, n: usize) -> Vec<u16> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut statuses = Vec::with_capacity(n);
    for i in first..first + n {
        let path = if i % 3 == 0 {
            "/status/500"
        } else {
            "/status/200"
        };
        // One write per request: `write!` sends each piece as its own segment, and the
        // request then waits on delayed ACKs (~40 ms each).
        let request = format!("GET {path} HTTP/1.1\r\nhost: h{i}.spray.test\r\n\r\n");
        writer.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        statuses.push(
            line.split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        );
        let mut length = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
    }
    statuses
}

/// An attacker sprays 50,000 distinct `:authority` values (a third of them failing, so their
/// breakers trip) at a breaker keyed on `host`: Envoy's breaker stats stay at the listed
/// upstream plus the shared `unlisted` ones, and Envoy's RSS does not grow with the spray
/// (wide tolerance: 16 MiB between 10,000 and 50,000 hosts).
#[test]
fn a_host_spray_leaves_stats_and_memory_bounded() {
    let backend = Backend::start("origin").unwrap();
    let envoy = start(
        &backend,
        r#"{"upstream":"host","max_upstreams":64,"stats_upstreams":["api.example.com"],"trip":{"consecutive_failures":1}}"#,
    );
    let breaker_stats = || {
        envoy
            .stats()
            .unwrap()
            .keys()
            .filter(|k| k.contains("edgewise.circuit_breaker"))
            .count()
    };
    let addr = envoy.listener;
    let run = |first: usize, total: usize| {
        let threads = 4;
        let each = total / threads;
        let handles: Vec<_> = (0..threads)
            .map(|t| std::thread::spawn(move || spray(addr, first + t * each, each)))
            .collect();
        for h in handles {
            let statuses = h.join().unwrap();
            assert!(statuses.iter().all(|s| *s == 200 || *s == 500 || *s == 503));
        }
    };
    let t = Instant::now();
    run(0, 10_000);
    println!("10,000 hosts in {:?}", t.elapsed());
    let rss_10k = envoy.rss_kib().unwrap();
    let stats_10k = breaker_stats();
    run(10_000, 40_000);
    let rss_50k = envoy.rss_kib().unwrap();
    let stats_50k = breaker_stats();
    let stat = |name: &str| envoy.stat(name).unwrap().unwrap_or(0);
    let opened = stat("edgewise.circuit_breaker.upstream=.=unlisted;.;opened");
    let untracked = stat("edgewise.circuit_breaker.untracked");
    println!(
        "50,000 hosts: breaker stats {stats_10k} -> {stats_50k}, unlisted opened {opened}, \
         untracked {untracked}, Envoy RSS {rss_10k} KiB -> {rss_50k} KiB"
    );
    // Open breakers are never evicted: once the 64 slots hold tripped ones, further hosts
    // pass untracked (fail open) until those half-open and close.
    assert!(opened >= 64, "the spray tripped breakers: {opened}");
    assert!(untracked > 0);
    assert!(stats_50k <= 12, "{stats_50k} breaker stats");
    assert_eq!(stats_50k, stats_10k, "no stat added by 40,000 more hosts");
    assert!(
        rss_50k.saturating_sub(rss_10k) < 16 * 1024,
        "RSS grew {} KiB",
        rss_50k.saturating_sub(rss_10k)
    );
}

/// Probe capture: a client makes itself the half-open probe and trickles its request body
/// (it never ends). Everyone else gets the half-open fallback only until
/// `half_open.probe_timeout` (1 s); then the breaker opens again and the next probe — an
/// ordinary request — closes it while the trickler is still sending. Tolerance: served
/// within 8 s of the capture (probe timeout 1 s + open 0.5 s, polled every 50 ms).
#[test]
fn a_trickling_probe_cannot_hold_the_breaker() {
    use std::io::Write;
    let backend = Backend::start("payments-v1").unwrap();
    let envoy = start(
        &backend,
        r#"{"trip":{"consecutive_failures":2},"open":{"duration":"500ms","backoff":1.0},"half_open":{"probes":1,"probe_timeout":"1s"}}"#,
    );
    backend
        .set_fault(r#"{"mode":"fail","ratio":1.0,"status":503}"#)
        .unwrap();
    for _ in 0..2 {
        assert_eq!(envoy.get("/status/200").unwrap().status, 503);
    }
    backend.set_fault(r#"{"mode":"off"}"#).unwrap();
    // Capture the probe: after the open period, a request whose body never ends. While the
    // breaker is open it is answered at once (503); once admitted, no answer comes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut trickler = loop {
        let mut stream = std::net::TcpStream::connect(envoy.listener).unwrap();
        stream
            .write_all(
                b"POST /echo/trickle HTTP/1.1\r\nhost: payments\r\ncontent-length: 100000\r\n\r\nx",
            )
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut first = [0u8; 1];
        let answered = std::io::Read::read(&mut stream, &mut first).is_ok();
        if !answered {
            break stream; // admitted: the only probe place is the trickler's
        }
        assert!(Instant::now() < deadline, "never captured the probe");
    };
    let other = envoy.get("/status/200").unwrap();
    assert_eq!(
        other.header("x-edgewise-circuit"),
        Some("half-open"),
        "others are held off while the probe is out"
    );
    let captured = Instant::now();
    let waited = wait_until_admitted(&envoy, Duration::from_secs(8));
    // The trickler is still sending: its connection is open and takes more bytes.
    trickler.write_all(b"yyyy").unwrap();
    println!("trickled probe: others served again after {waited:?}");
    assert!(captured.elapsed() < Duration::from_secs(8));
    for _ in 0..5 {
        let r = envoy.get("/status/200").unwrap();
        assert_eq!(
            (r.status, r.header("x-edgewise-circuit")),
            (200, None),
            "closed"
        );
    }
}

/// `half_open.probe` in real Envoy: when the open time is up the breaker sends its own
/// `GET /health` to the cluster (dispatch_http_call) — no client request reaches the backend
/// while the breaker is open or probing — and a healthy answer closes it. The backend's
/// counter does not count /health, so it shows exactly what clients sent.
#[test]
fn active_probes_close_the_breaker_without_a_client() {
    let backend = Backend::start("payments-v1").unwrap();
    let envoy = start(
        &backend,
        r#"{"upstream":"header:x-cluster","trip":{"consecutive_failures":3},"open":{"duration":"1s"},
            "half_open":{"probes":1,"probe":{"path":"/health","timeout":"500ms"}}}"#,
    );
    let get = || {
        envoy
            .request("GET", "/status/200", &[("x-cluster", "backend")], b"")
            .unwrap()
    };
    assert_eq!(get().status, 200);
    backend
        .set_fault(r#"{"mode":"fail","ratio":1.0,"status":503}"#)
        .unwrap();
    for _ in 0..3 {
        assert_eq!(get().status, 503);
    }
    // Open: the backend healthy again, but only the breaker's probe may find that out.
    backend.set_fault(r#"{"mode":"off"}"#).unwrap();
    backend.reset_counters().unwrap();
    let started = Instant::now();
    let mut rejected = 0;
    loop {
        let r = get();
        if r.header("x-edgewise-circuit").is_none() {
            assert_eq!(r.status, 200);
            break;
        }
        rejected += 1;
        assert_eq!(
            backend.requests().unwrap(),
            0,
            "a client reached the backend while the breaker was open or probing"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the probe never closed the breaker"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed_after = started.elapsed();
    println!(
        "active probe: closed {closed_after:?} after the trip, {rejected} fallbacks meanwhile"
    );
    assert!(rejected > 0, "the breaker was open");
    assert_eq!(backend.requests().unwrap(), 1, "only the admitted request");
    assert!(
        envoy
            .stat("edgewise.circuit_breaker.upstream=.=unlisted;.;half_open_probes")
            .unwrap()
            .unwrap_or(0)
            >= 1
    );
}
