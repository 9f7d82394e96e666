//! Fidelity of the host, proven: the same probe scenarios run in our wasmtime host and in
//! real Envoy 1.40 (2 workers, our backend as upstream), and the probe's observations —
//! every status and value it logged, and what the client and upstream received — must match.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{probe_lines, probe_options, probe_request};
use envoy_harness::{Backend, Envoy, EnvoyConfig, WasmFilter};
use host_tests::{load_module, World};

/// One request: scenario, method, path, extra headers, body.
struct Scenario {
    id: &'static str,
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "h",
        name: "headers",
        method: "GET",
        path: "/status/200",
        headers: &[
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("x-replace", "old"),
            ("x-remove", "gone"),
            ("x-set-pairs", "1"),
        ],
        body: b"",
    },
    Scenario {
        id: "l",
        name: "local",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "s",
        name: "shared",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "p",
        name: "props",
        method: "GET",
        path: "/status/200?q=1",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "m",
        name: "metrics",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "b",
        name: "body",
        method: "POST",
        path: "/status/200",
        headers: &[],
        body: b"hello world",
    },
    Scenario {
        id: "pb",
        name: "pause-body",
        method: "POST",
        path: "/status/200",
        headers: &[],
        body: b"data",
    },
    Scenario {
        id: "k",
        name: "callout",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "t",
        name: "callout-timeout",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "q",
        name: "queue",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "g",
        name: "log",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "x",
        name: "misc",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
    Scenario {
        id: "r",
        name: "grpc",
        method: "GET",
        path: "/status/200",
        headers: &[],
        body: b"",
    },
];

/// What one scenario produced: the probe's lines (sorted where threads may interleave) and
/// the client's view.
#[derive(Debug, PartialEq)]
struct Observed {
    lines: Vec<String>,
    client_status: u16,
    client_probe_saw: Option<String>,
    client_body: String,
}

fn backend_body(path: &str) -> (u16, String) {
    // Our backend's answer for /status/N.
    let code: u16 = path
        .trim_start_matches("/status/")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (code, format!("status {code}\n"))
}

fn run_in_host(module: &str) -> BTreeMap<&'static str, Observed> {
    let world = World::new();
    world.add_cluster("backend");
    let vms = world
        .start_vms(&load_module(module), &probe_options(), 2)
        .unwrap();
    let mut observed = BTreeMap::new();
    for (n, scenario) in SCENARIOS.iter().enumerate() {
        let mut request = probe_request(scenario.id, scenario.name, scenario.method, scenario.path);
        for (k, v) in scenario.headers {
            request.add(k, v);
        }
        if !scenario.body.is_empty() {
            request.add("content-length", scenario.body.len().to_string());
        }
        let mut stream = vms[n % 2].stream();
        stream.send_request_headers(request, scenario.body.is_empty());
        if !scenario.body.is_empty() {
            // Envoy's HTTP/1 codec hands over the data, then an empty end-of-stream chunk.
            stream.send_request_body(scenario.body, false);
            stream.send_request_body(b"", true);
        }
        // Play the callout's upstream as our backend would.
        for call in world.pending_http_calls() {
            let path = call.header(":path").unwrap();
            if path.starts_with("/delay/") {
                world.advance(call.timeout).unwrap();
            } else {
                let (code, body) = backend_body(&path);
                world
                    .respond_http_call(
                        call.id,
                        code,
                        &[("content-type", "text/plain")],
                        body.as_bytes(),
                    )
                    .unwrap();
            }
        }
        if stream.local_reply().is_none()
            && stream
                .upstream_request()
                .map(|u| u.complete)
                .unwrap_or(false)
        {
            let (code, body) = backend_body(scenario.path);
            stream.respond(code, &[("content-type", "text/plain")], body.as_bytes());
        }
        stream.finish();
        let response = stream.response().expect("a response reached the client");
        observed.insert(
            scenario.id,
            Observed {
                lines: normalize(scenario, probe_lines(&world, scenario.id)),
                client_status: response.status().unwrap(),
                client_probe_saw: response.header("x-probe-saw"),
                client_body: response.body_text(),
            },
        );
    }
    observed
}

fn run_in_envoy(module: &str) -> BTreeMap<&'static str, Observed> {
    let backend = Backend::start("probe-backend").unwrap();
    let config = EnvoyConfig::proxy_to(backend.addr, 2)
        .route_name("probe-route")
        .filter(
            WasmFilter::new("probe", envoy_harness::wasm_path(module), "probe-config")
                .vm_id("probe-vm"),
        );
    let envoy = Envoy::start(&config).unwrap();
    let mut observed = BTreeMap::new();
    for scenario in SCENARIOS {
        let mut headers = vec![
            ("host", "probe.test"),
            ("x-probe", scenario.name),
            ("x-probe-id", scenario.id),
        ];
        headers.extend_from_slice(scenario.headers);
        let response = envoy
            .request(scenario.method, scenario.path, &headers, scenario.body)
            .unwrap();
        let done = format!("PROBE[{}] on_done", scenario.id);
        let log = envoy
            .wait_for_log(Duration::from_secs(10), |log| log.contains(&done))
            .unwrap();
        if scenario.name == "queue" {
            let ready = format!("PROBE[{}] queue_ready", scenario.id);
            envoy
                .wait_for_log(Duration::from_secs(10), |log| log.contains(&ready))
                .unwrap();
        }
        drop(log);
        let log = envoy.log();
        let tag = format!("PROBE[{}] ", scenario.id);
        let lines: Vec<String> = log
            .lines()
            .filter_map(|l| l.find(&tag).map(|at| l[at..].to_string()))
            .collect();
        observed.insert(
            scenario.id,
            Observed {
                lines: normalize(scenario, lines),
                client_status: response.status,
                client_probe_saw: response.header("x-probe-saw").map(str::to_string),
                client_body: response.text(),
            },
        );
    }
    // A panic in the module: Envoy answers 503 and logs the module's panic message.
    let failed = envoy
        .request(
            "GET",
            "/status/200",
            &[("x-probe", "panic"), ("x-probe-id", "z")],
            b"",
        )
        .unwrap();
    assert_eq!(failed.status, 503, "a trapped VM fails the stream with 503");
    envoy
        .wait_for_log(Duration::from_secs(10), |log| {
            log.contains("probe panic requested id=z")
        })
        .unwrap();
    observed
}

/// Lines from different threads (queue delivery) may interleave: compare those sorted.
fn normalize(scenario: &Scenario, mut lines: Vec<String>) -> Vec<String> {
    if scenario.name == "queue" {
        lines.sort();
    }
    lines
}

#[test]
fn probe_observations_match_between_the_host_and_real_envoy() {
    let host = run_in_host("probe");
    let envoy = run_in_envoy("probe");
    assert_same(&host, &envoy);
}

/// The post-link step's premise, checked against Envoy: a module that does not export a
/// callback is never entered for that event, and everything else happens as before. The
/// probe without its response-body, trailer and access-log exports runs every scenario in
/// our host and in Envoy with identical observations, and neither delivers those events.
#[test]
fn a_probe_without_some_callbacks_sees_the_same_in_our_host_and_in_envoy() {
    host_tests::build_wasm_modules();
    let full = std::fs::read(envoy_harness::wasm_path("probe")).unwrap();
    let removed = [
        "proxy_on_response_body",
        "proxy_on_request_trailers",
        "proxy_on_response_trailers",
        "proxy_on_log",
    ];
    let stripped = envoy_harness::strip::without_exports(&full, &removed).unwrap();
    envoy_harness::write_by_rename(&envoy_harness::wasm_path("probe_stripped"), &stripped).unwrap();
    let host = run_in_host("probe_stripped");
    let envoy = run_in_envoy("probe_stripped");
    assert_same(&host, &envoy);
    let all_lines = |observed: &BTreeMap<&str, Observed>| -> Vec<String> {
        observed.values().flat_map(|o| o.lines.clone()).collect()
    };
    for line in all_lines(&host).iter().chain(all_lines(&envoy).iter()) {
        assert!(
            !line.contains("] response_body") && !line.contains("] on_log"),
            "an event of a callback the module does not export: {line}"
        );
    }
    let with_all = all_lines(&run_in_host("probe"));
    assert!(
        with_all.iter().any(|l| l.contains("] on_log"))
            && with_all.iter().any(|l| l.contains("] response_body")),
        "the full probe does see those events"
    );
}

fn assert_same(host: &BTreeMap<&str, Observed>, envoy: &BTreeMap<&str, Observed>) {
    let mut mismatches = Vec::new();
    for scenario in SCENARIOS {
        let (h, e) = (&host[scenario.id], &envoy[scenario.id]);
        if h != e {
            mismatches.push(format!(
                "scenario {} ({}):\n  host:  {h:#?}\n  envoy: {e:#?}",
                scenario.id, scenario.name
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} scenarios differ:\n{}",
        mismatches.len(),
        SCENARIOS.len(),
        mismatches.join("\n")
    );
}
