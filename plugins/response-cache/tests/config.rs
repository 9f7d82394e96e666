//! Configuration validation, natively: every refusal names its field, says what is wrong and
//! how to fix it (what `on_configure` logs before Envoy rejects the plugin).

#![allow(clippy::panic)]

use edgewise_support::config::check_refusal;
use response_cache::config::Config;

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
    assert!(Config::from_json(b"").is_ok());
}

#[test]
fn the_document_and_budgets() {
    refused("{", "<json>", "");
    refused(r#"{"max_size":1}"#, "max_size", "unknown field");
    refused(r#"{"max_bytes":"64MiB"}"#, "max_bytes", "invalid type");
    refused(r#"{"max_bytes":1000}"#, "max_bytes", "out of range");
    refused(
        r#"{"max_entry_bytes":0}"#,
        "max_entry_bytes",
        "must be between 1 and max_bytes",
    );
    refused(
        r#"{"max_bytes":1048576,"max_entry_bytes":2097152}"#,
        "max_entry_bytes",
        "must be between 1 and max_bytes",
    );
    refused(
        r#"{"max_entry_bytes":67108864}"#,
        "max_entry_bytes",
        "is above 33554432",
    );
    refused(
        r#"{"max_entry_bytes":2097152,"max_inflight_bytes":1048576}"#,
        "max_inflight_bytes",
        "",
    );
    refused(r#"{"max_entries":1}"#, "max_entries", "out of range");
    refused(
        r#"{"eviction":"random"}"#,
        "eviction",
        "is not an eviction policy",
    );
    refused(
        r#"{"cookie_requests":"always"}"#,
        "cookie_requests",
        "is not a cookie rule",
    );
}

#[test]
fn keys_and_unkeyed_fields() {
    refused(
        r#"{"key":{"headers":["x device"]}}"#,
        "key.headers[0]",
        "is not a header name",
    );
    refused(
        r#"{"unkeyed_headers":{"names":["a b"]}}"#,
        "unkeyed_headers.names[0]",
        "is not a header name",
    );
    refused(
        r#"{"unkeyed_headers":{"action":"drop"}}"#,
        "unkeyed_headers.action",
        "is not an action",
    );
}

#[test]
fn freshness_and_staleness() {
    refused(r#"{"default_ttl":"5x"}"#, "default_ttl", "");
    refused(
        r#"{"stale_while_revalidate":"1500ms"}"#,
        "stale_while_revalidate",
        "",
    );
    refused(r#"{"stale_if_error":"soon"}"#, "stale_if_error", "");
    refused(
        r#"{"background_refresh":{"timeout":"0s"}}"#,
        "background_refresh.timeout",
        "out of range",
    );
    refused(
        r#"{"background_refresh":{"cluster":""}}"#,
        "background_refresh.cluster",
        "is empty",
    );
    refused(
        r#"{"coalesce":{"wait":"0s"}}"#,
        "coalesce.wait",
        "out of range",
    );
    refused(
        r#"{"coalesce":{"hit_for_miss":"2h"}}"#,
        "coalesce.hit_for_miss",
        "out of range",
    );
}

#[test]
fn targeted_fields_and_cache_status() {
    refused(
        r#"{"targeted_fields":["a","b","c","d","e","f","g","h","i"]}"#,
        "targeted_fields",
        "lists 9 names",
    );
    refused(
        r#"{"targeted_fields":["cdn cache control"]}"#,
        "targeted_fields[0]",
        "is not a header name",
    );
    refused(
        r#"{"targeted_fields":["cache-control"]}"#,
        "targeted_fields[0]",
        "is what targeted fields take precedence over",
    );
    refused(
        r#"{"strip_targeted_fields":["a b"]}"#,
        "strip_targeted_fields[0]",
        "is not a header name",
    );
    refused(
        r#"{"cache_status":""}"#,
        "cache_status",
        "is not a usable cache name",
    );
}

#[test]
fn purges_tags_and_the_fleet() {
    refused(
        r#"{"purge":{"method":"PUR GE","token":"secret-token"}}"#,
        "purge.method",
        "is not a usable purge method",
    );
    refused(
        r#"{"purge":{"token_header":"x token","token":"secret-token"}}"#,
        "purge.token_header",
        "is not a header name",
    );
    refused(
        r#"{"purge":{"token":"short"}}"#,
        "purge.token",
        "shorter than 8 characters",
    );
    refused(r#"{"purge":{}}"#, "purge.token", "is missing");
    refused(
        r#"{"tags":{"max_per_entry":0}}"#,
        "tags.max_per_entry",
        "out of range",
    );
    refused(
        r#"{"tags":{"max_length":0}}"#,
        "tags.max_length",
        "out of range",
    );
    let fleet = |f: &str| format!(r#"{{"fleet":{f}}}"#);
    refused(
        &fleet(r#"{"cluster":"","token":"0123456789abcdef"}"#),
        "fleet.cluster",
        "is empty",
    );
    refused(
        &fleet(r#"{"cluster":"ctl","token":"short"}"#),
        "fleet.token",
        "shorter than 16",
    );
    refused(
        &fleet(r#"{"cluster":"ctl","token":"0123456789abcdef","path":"v1"}"#),
        "fleet.path",
        "is not a path",
    );
    refused(
        &fleet(r#"{"cluster":"ctl","token":"0123456789abcdef","poll":"1ms"}"#),
        "fleet.poll",
        "out of range",
    );
    refused(
        &fleet(r#"{"cluster":"ctl","token":"0123456789abcdef","timeout":"0s"}"#),
        "fleet.timeout",
        "out of range",
    );
    refused(
        &fleet(r#"{"cluster":"ctl","token":"0123456789abcdef","settle":"11m"}"#),
        "fleet.settle",
        "whole number of seconds",
    );
}
