//! Configuration validation, natively: every refusal names its field, says what is wrong and
//! how to fix it (what `on_configure` logs before Envoy rejects the plugin).

#![allow(clippy::panic)]

use edgewise_support::config::check_refusal;
use rate_limit::Config;

/// A rule that compiles, to build refusals from: `{R}` stands for its fields.
const R: &str = r#""name":"a","limit":5,"window":"1s""#;

fn rule(extra: &str) -> String {
    if extra.is_empty() {
        format!(r#"{{"rules":[{{{R}}}]}}"#)
    } else {
        format!(r#"{{"rules":[{{{R},{extra}}}]}}"#)
    }
}

fn global(extra: &str) -> String {
    format!(r#"{{"rules":[{{"name":"g","global":{{"cluster":"rls"{extra}}}}}]}}"#)
}

/// Asserts `json` is refused at `field` with `problem` in its message, and a fix.
#[track_caller]
fn refused(json: &str, field: &str, problem: &str) {
    if let Err(e) = check_refusal(Config::from_json(json.as_bytes()), field, problem) {
        panic!("{json}: {e}");
    }
}

#[test]
fn the_starting_points_compile() {
    for json in [
        rule(""),
        global(""),
        r#"{"rules":[{"name":"q","limit":3,"window":"calendar_day"}]}"#.to_string(),
    ] {
        assert!(Config::from_json(json.as_bytes()).is_ok(), "{json}");
    }
}

#[test]
fn the_document_and_top_level_fields() {
    refused("{", "<json>", "EOF");
    refused(r#"{"rules":[],"extra":1}"#, "extra", "unknown field");
    refused(r#"{"rules":[]}"#, "rules", "is empty");
    refused(
        &format!(r#"{{"mode":"dry","rules":[{{{R}}}]}}"#),
        "mode",
        "is not a mode",
    );
    refused(
        &format!(r#"{{"response_headers":"all","rules":[{{{R}}}]}}"#),
        "response_headers",
        "is not a header style",
    );
    refused(
        &format!(r#"{{"duplicates":"any","rules":[{{{R}}}]}}"#),
        "duplicates",
        "is not a duplicates rule",
    );
    refused(
        &format!(r#"{{"deny":{{"status":99}},"rules":[{{{R}}}]}}"#),
        "deny.status",
        "is not a usable status",
    );
    refused(
        &format!(r#"{{"descriptor_value_max_bytes":0,"rules":[{{{R}}}]}}"#),
        "descriptor_value_max_bytes",
        "out of range",
    );
    refused(
        &format!(r#"{{"metrics_flush":"soon","rules":[{{{R}}}]}}"#),
        "metrics_flush",
        "",
    );
}

#[test]
fn client_ip() {
    let with = |client_ip: &str| format!(r#"{{"client_ip":{client_ip},"rules":[{{{R}}}]}}"#);
    refused(
        &with(r#"{"from":"x-real-ip"}"#),
        "client_ip.from",
        "is not a source",
    );
    refused(
        &with(r#"{"from":"x-forwarded-for","trusted_hops":0}"#),
        "client_ip.trusted_hops",
        "trusts no proxy",
    );
    refused(
        &with(r#"{"from":"x-forwarded-for","trusted_hops":17}"#),
        "client_ip.trusted_hops",
        "out of range",
    );
    refused(
        &with(r#"{"trusted_hops":1}"#),
        "client_ip.trusted_hops",
        "only applies",
    );
    refused(
        &with(r#"{"ipv4_prefix":33}"#),
        "client_ip.ipv4_prefix",
        "out of range",
    );
    refused(
        &with(r#"{"ipv6_prefix":129}"#),
        "client_ip.ipv6_prefix",
        "out of range",
    );
}

#[test]
fn a_rule_s_own_fields() {
    refused(
        &format!(r#"{{"rules":[{{{R}}},{{{R}}}]}}"#),
        "rules[1].name",
        "used by another rule",
    );
    refused(
        r#"{"rules":[{"name":"a b","limit":5,"window":"1s"}]}"#,
        "rules[0].name",
        "not a valid rule name",
    );
    refused(
        r#"{"rules":[{"name":"a","window":"1s"}]}"#,
        "rules[0].limit",
        "is missing",
    );
    refused(
        r#"{"rules":[{"name":"a","limit":5}]}"#,
        "rules[0].window",
        "is missing",
    );
    refused(
        r#"{"rules":[{"name":"a","limit":0,"window":"1s"}]}"#,
        "rules[0].limit",
        "out of range",
    );
    refused(
        r#"{"rules":[{"name":"a","limit":5,"window":"5x"}]}"#,
        "rules[0].window",
        "unknown unit",
    );
    refused(
        r#"{"rules":[{"name":"a","limit":5,"window":"0s"}]}"#,
        "rules[0].window",
        "out of range",
    );
    refused(&rule(r#""burst":0"#), "rules[0].burst", "out of range");
    refused(
        &rule(r#""algorithm":"sliding_window","burst":3"#),
        "rules[0].burst",
        "burst applies to token_bucket",
    );
    refused(
        &rule(r#""algorithm":"leaky""#),
        "rules[0].algorithm",
        "is not an algorithm",
    );
    refused(&rule(r#""mode":"dry""#), "rules[0].mode", "is not a mode");
    refused(
        &rule(r#""max_keys":1"#),
        "rules[0].max_keys",
        "out of range",
    );
    refused(
        &rule(r#""utc_offset":"+01:00""#),
        "rules[0].utc_offset",
        "calendar windows only",
    );
    refused(
        &rule(r#""match":{"path_prefix":"api"}"#),
        "rules[0].match.path_prefix",
        "",
    );
    refused(
        &rule(r#""exempt":{"client_cidrs":["10.0.0.1/8"]}"#),
        "rules[0].exempt.client_cidrs[0]",
        "",
    );
}

#[test]
fn keys() {
    refused(
        &rule(r#""key":"ip""#),
        "rules[0].key",
        "is not a key source",
    );
    refused(&rule(r#""key":[]"#), "rules[0].key", "is an empty list");
    refused(
        &rule(r#""key":["global","header:"]"#),
        "rules[0].key[1]",
        "has no name after",
    );
}

#[test]
fn queues() {
    refused(
        &rule(r#""algorithm":"fixed_window","queue":{"max_delay":"1s"}"#),
        "rules[0].queue",
        "queueing needs algorithm token_bucket",
    );
    refused(
        &rule(r#""queue":{"max_delay":"0s"}"#),
        "rules[0].queue.max_delay",
        "out of range",
    );
    refused(
        &rule(r#""queue":{"max_delay":"1s","max_waiting":0}"#),
        "rules[0].queue.max_waiting",
        "out of range",
    );
    refused(
        &rule(r#""queue":{"max_delay":"1s"},"charge":{"statuses":["5xx"]}"#),
        "rules[0].queue",
        "cannot be combined with charge",
    );
}

#[test]
fn costs_and_charges() {
    refused(
        &rule(r#""cost":{"request_header":"x-cost","max":6}"#),
        "rules[0].cost.max",
        "out of range",
    );
    refused(
        &rule(r#""cost":{"request_header":":path"}"#),
        "rules[0].cost.request_header",
        "is not a header name",
    );
    refused(
        &rule(r#""charge":{}"#),
        "rules[0].charge",
        "needs exactly one of",
    );
    refused(
        &rule(r#""charge":{"response_header":"x-a","statuses":["5xx"]}"#),
        "rules[0].charge",
        "needs exactly one of",
    );
    refused(
        &rule(r#""charge":{"response_trailer":"a b"}"#),
        "rules[0].charge.response_trailer",
        "is not a header name",
    );
}

#[test]
fn quotas() {
    let quota = |extra: &str| {
        format!(r#"{{"rules":[{{"name":"q","limit":3,"window":"calendar_day",{extra}}}]}}"#)
    };
    refused(
        &quota(r#""burst":2"#),
        "rules[0].burst",
        "does not apply to a calendar window",
    );
    refused(
        &quota(r#""queue":{"max_delay":"1s"}"#),
        "rules[0].queue",
        "does not apply to a calendar window",
    );
    refused(
        &quota(r#""algorithm":"token_bucket""#),
        "rules[0].algorithm",
        "a calendar window is a fixed window",
    );
    refused(
        &quota(r#""utc_offset":"+15:00""#),
        "rules[0].utc_offset",
        "is not a UTC offset",
    );
}

#[test]
fn global_rules() {
    refused(
        r#"{"rules":[{"name":"g","global":{"cluster":""}}]}"#,
        "rules[0].global.cluster",
        "is empty",
    );
    refused(
        &global(r#","domain":"""#),
        "rules[0].global.domain",
        "is empty",
    );
    refused(
        &global(r#","timeout":"11s""#),
        "rules[0].global.timeout",
        "out of range",
    );
    refused(
        &global(r#","batch":0"#),
        "rules[0].global.batch",
        "out of range",
    );
    refused(
        &global(r#","failure_mode":"open""#),
        "rules[0].global.failure_mode",
        "is not a failure mode",
    );
    refused(
        r#"{"rules":[{"name":"g","algorithm":"fixed_window","global":{"cluster":"rls"}}]}"#,
        "rules[0].algorithm",
        "does not apply to a global rule",
    );
    refused(
        r#"{"rules":[{"name":"g","max_keys":100,"global":{"cluster":"rls"}}]}"#,
        "rules[0].max_keys",
        "does not apply to a global rule",
    );
    refused(
        r#"{"rules":[{"name":"g","limit":5,"window":"90s","global":{"cluster":"rls"}}]}"#,
        "rules[0].window",
        "is not one of the protocol's units",
    );
    refused(
        r#"{"rules":[{"name":"g","limit":5,"global":{"cluster":"rls"}}]}"#,
        "rules[0].limit",
        "limit and window together",
    );
    refused(
        r#"{"rules":[{"name":"g","cost":{"request_header":"x-cost"},"global":{"cluster":"rls","batch":10}}]}"#,
        "rules[0].cost",
        "cannot be combined with global.batch",
    );
    refused(
        r#"{"rules":[{"name":"g","utc_offset":"Z","global":{"cluster":"rls"}}]}"#,
        "rules[0].utc_offset",
        "not supported on global rules",
    );
    refused(
        &format!(
            r#"{{"rules":[{{"name":"g","global":{{"cluster":"rls"}}}},{{{R},"queue":{{"max_delay":"1s"}}}}]}}"#
        ),
        "rules[1].queue",
        "cannot be combined with global rules",
    );
}
