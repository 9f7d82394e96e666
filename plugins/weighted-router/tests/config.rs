//! Configuration validation, natively: every refusal names its field, says what is wrong and
//! how to fix it (what `on_configure` logs before Envoy rejects the plugin).

#![allow(clippy::panic)]

use edgewise_support::config::check_refusal;
use weighted_router::Config;

/// Asserts `json` is refused at `field` with `problem` in its message, and a fix.
#[track_caller]
fn refused(json: &str, field: &str, problem: &str) {
    if let Err(e) = check_refusal(Config::from_json(json.as_bytes()), field, problem) {
        panic!("{json}: {e}");
    }
}

/// One route with `route` (its fields after the targets).
fn route(route: &str) -> String {
    let targets = r#""targets":[{"cluster":"a","weight":9},{"cluster":"b","weight":1}]"#;
    if route.is_empty() {
        format!(r#"{{"routes":[{{{targets}}}]}}"#)
    } else {
        format!(r#"{{"routes":[{{{targets},{route}}}]}}"#)
    }
}

#[test]
fn a_plain_split_compiles() {
    assert!(Config::from_json(route("").as_bytes()).is_ok());
}

#[test]
fn the_document_and_top_level_fields() {
    refused("{", "<json>", "");
    refused(r#"{"routes":[],"weights":{}}"#, "weights", "unknown field");
    refused(r#"{"routes":[]}"#, "routes", "is empty");
    refused(
        r#"{"cluster_header":"x route","routes":[{"targets":[{"cluster":"a","weight":1}]}]}"#,
        "cluster_header",
        "is not a header name",
    );
    refused(
        r#"{"breaker_slots":0,"routes":[{"targets":[{"cluster":"a","weight":1}]}]}"#,
        "breaker_slots",
        "out of range",
    );
    refused(r#"{"routes":"all"}"#, "routes", "invalid type");
}

#[test]
fn routes_and_targets() {
    let two = r#"{"name":"r","targets":[{"cluster":"a","weight":1}]}"#;
    refused(
        &format!(r#"{{"routes":[{two},{two}]}}"#),
        "routes[1].name",
        "is used by another route",
    );
    refused(
        r#"{"routes":[{"name":"a b","targets":[{"cluster":"a","weight":1}]}]}"#,
        "routes[0].name",
        "is not a valid route name",
    );
    refused(
        r#"{"routes":[{"targets":[]}]}"#,
        "routes[0].targets",
        "is empty",
    );
    let many: Vec<String> = (0..65)
        .map(|i| format!(r#"{{"cluster":"c{i}","weight":1}}"#))
        .collect();
    refused(
        &format!(r#"{{"routes":[{{"targets":[{}]}}]}}"#, many.join(",")),
        "routes[0].targets",
        "has 65 targets",
    );
    refused(
        r#"{"routes":[{"targets":[{"cluster":"","weight":1}]}]}"#,
        "routes[0].targets[0].cluster",
        "is not a cluster name",
    );
    refused(
        r#"{"routes":[{"targets":[{"cluster":"a","weight":1},{"cluster":"a","weight":2}]}]}"#,
        "routes[0].targets[1].cluster",
        "is listed twice",
    );
    refused(
        r#"{"routes":[{"targets":[{"cluster":"a","weight":-1}]}]}"#,
        "routes[0].targets[0].weight",
        "is not a weight",
    );
    refused(
        r#"{"routes":[{"targets":[{"cluster":"a","weight":"heavy"}]}]}"#,
        "routes[0].targets[0].weight",
        "is not a weight",
    );
    refused(
        r#"{"routes":[{"targets":[{"cluster":"a","weight":0}]}]}"#,
        "routes[0].targets",
        "all weights are 0",
    );
    refused(
        r#"{"routes":[{"targets":[{"cluster":"a","weight":999999},{"cluster":"b","weight":999998}]}]}"#,
        "routes[0].targets",
        "longer than 1000000 picks",
    );
    refused(
        &route(r#""match":{"path_prefix":"api"}"#),
        "routes[0].match.path_prefix",
        "",
    );
}

#[test]
fn strategies() {
    refused(
        &route(r#""strategy":"round_robin""#),
        "routes[0].strategy",
        "is not a strategy",
    );
    refused(
        &route(r#""strategy":"hash""#),
        "routes[0].hash_on",
        "is required by strategy hash",
    );
    refused(
        &route(r#""hash_on":"client_ip""#),
        "routes[0].hash_on",
        "only applies to strategy hash",
    );
    refused(
        &route(r#""strategy":"hash","hash_on":"session""#),
        "routes[0].hash_on",
        "is not a hash source",
    );
    refused(
        &route(r#""strategy":"hash","hash_on":"header:a b""#),
        "routes[0].hash_on",
        "is not a header name",
    );
    refused(
        &route(r#""strategy":"least_requests","shared_cursor":true"#),
        "routes[0].shared_cursor",
        "only applies to weighted_round_robin",
    );
}

#[test]
fn overrides() {
    refused(
        &route(r#""overrides":[{"equals":"1","cluster":"b"}]"#),
        "routes[0].overrides[0]",
        "needs exactly one of header or cookie",
    );
    refused(
        &route(r#""overrides":[{"header":"x-canary","cookie":"c","equals":"1","cluster":"b"}]"#),
        "routes[0].overrides[0]",
        "needs exactly one of header or cookie",
    );
    refused(
        &route(r#""overrides":[{"header":"x-canary","equals":"1","cluster":""}]"#),
        "routes[0].overrides[0].cluster",
        "is empty",
    );
    refused(
        &route(r#""overrides":[{"header":"x canary","equals":"1","cluster":"b"}]"#),
        "routes[0].overrides[0].header",
        "is not a header name",
    );
}
