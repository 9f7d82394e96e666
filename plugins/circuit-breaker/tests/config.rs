//! Configuration validation, natively: every refusal names its field, says what is wrong and
//! how to fix it (what `on_configure` logs before Envoy rejects the plugin).

#![allow(clippy::panic)]

use circuit_breaker::Config;
use edgewise_support::config::check_refusal;

/// Asserts `json` is refused at `field` with `problem` in its message, and a fix.
#[track_caller]
fn refused(json: &str, field: &str, problem: &str) {
    if let Err(e) = check_refusal(Config::from_json(json.as_bytes()), field, problem) {
        panic!("{json}: {e}");
    }
}

#[test]
fn the_defaults_compile() {
    assert!(Config::from_json(b"{}").is_ok());
    assert!(Config::from_json(
        br#"{"upstream":"header:x-route-cluster","half_open":{"probe":{}}}"#
    )
    .is_ok());
}

#[test]
fn identities_overrides_and_tables() {
    refused("[", "<json>", "");
    refused(r#"{"thresholds":{}}"#, "thresholds", "unknown field");
    refused(
        r#"{"upstream":"cluster"}"#,
        "upstream",
        "is not an upstream identity",
    );
    refused(
        r#"{"upstream":"header:"}"#,
        "upstream",
        "is not an upstream identity",
    );
    refused(
        r#"{"overrides":{"":{}}}"#,
        "overrides",
        "has an empty upstream name",
    );
    refused(
        r#"{"half_open":{"probe":{}}}"#,
        "half_open.probe",
        "needs upstream identities",
    );
    refused(r#"{"max_upstreams":0}"#, "max_upstreams", "out of range");
    refused(
        r#"{"max_upstreams":65537}"#,
        "max_upstreams",
        "out of range",
    );
    refused(
        r#"{"stats_upstreams":[""]}"#,
        "stats_upstreams[0]",
        "is not an upstream name",
    );
    refused(
        r#"{"fallback":{"status":700}}"#,
        "fallback.status",
        "is not a usable status",
    );
    refused(r#"{"max_in_flight":0}"#, "max_in_flight", "out of range");
}

#[test]
fn failure_trip_open_and_half_open() {
    refused(
        r#"{"failure":{"slow_call":"0s"}}"#,
        "failure.slow_call",
        "every call slow",
    );
    refused(
        r#"{"failure":{"statuses":["6xx"]}}"#,
        "failure.statuses[0]",
        "",
    );
    refused(
        r#"{"trip":{"consecutive_failures":0}}"#,
        "trip.consecutive_failures",
        "would trip on nothing",
    );
    refused(
        r#"{"trip":{"failure_rate":1.5}}"#,
        "trip.failure_rate",
        "outside (0, 1]",
    );
    refused(
        r#"{"trip":{"slow_call_rate":0.5}}"#,
        "trip.slow_call_rate",
        "needs failure.slow_call",
    );
    refused(
        r#"{"trip":{"failure_rate":0.5,"min_requests":0}}"#,
        "trip.min_requests",
        "single call",
    );
    refused(
        r#"{"trip":{"failure_rate":0.5,"window":"0s"}}"#,
        "trip.window",
        "out of range",
    );
    refused(
        r#"{"open":{"duration":"0s"}}"#,
        "open.duration",
        "would never reject",
    );
    refused(
        r#"{"open":{"duration":"10s","max_duration":"5s"}}"#,
        "open.max_duration",
        "is less than open.duration",
    );
    refused(
        r#"{"open":{"backoff":0.5}}"#,
        "open.backoff",
        "out of range",
    );
    refused(
        r#"{"half_open":{"probes":0}}"#,
        "half_open.probes",
        "out of range",
    );
    refused(
        r#"{"half_open":{"probe_timeout":"0s"}}"#,
        "half_open.probe_timeout",
        "out of range",
    );
    refused(
        r#"{"overrides":{"api":{"trip":{"consecutive_failures":0}}}}"#,
        "overrides.api.trip.consecutive_failures",
        "would trip on nothing",
    );
}

#[test]
fn active_probes() {
    let probe =
        |p: &str| format!(r#"{{"upstream":"header:x-route-cluster","half_open":{{"probe":{p}}}}}"#);
    refused(
        &probe(r#"{"path":"health"}"#),
        "half_open.probe.path",
        "is not a request path",
    );
    refused(
        &probe(r#"{"timeout":"61s"}"#),
        "half_open.probe.timeout",
        "out of range",
    );
    refused(
        &probe(r#"{"expect":[]}"#),
        "half_open.probe.expect",
        "is empty",
    );
}

#[test]
fn the_control_api() {
    let control = |c: &str| format!(r#"{{"control":{c}}}"#);
    refused(
        &control(r#"{"cluster":"","token":"0123456789abcdef"}"#),
        "control.cluster",
        "is empty",
    );
    refused(
        &control(r#"{"cluster":"ctl","token":"short"}"#),
        "control.token",
        "shorter than 16",
    );
    refused(
        &control(r#"{"cluster":"ctl","token":"0123456789abcdef","path":"v1"}"#),
        "control.path",
        "is not a path",
    );
    refused(
        &control(r#"{"cluster":"ctl","token":"0123456789abcdef","poll":"10ms"}"#),
        "control.poll",
        "out of range",
    );
    refused(
        &control(r#"{"cluster":"ctl","token":"0123456789abcdef","timeout":"31s"}"#),
        "control.timeout",
        "out of range",
    );
}
