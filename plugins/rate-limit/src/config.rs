//! The rate limiter's configuration: the JSON shape (`RawConfig`, unknown fields rejected)
//! and the validated, compiled form the data path uses.

use std::time::Duration;

use edgewise_support::config::{err, parse_config, ConfigError};
use edgewise_support::duration::parse_duration;
use edgewise_support::metrics::labelled_metric_name;
use edgewise_support::request::{Duplicates, Matcher, RawMatch};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub rules: Vec<RawRule>,
    pub mode: Option<String>,
    pub client_ip: Option<RawClientIp>,
    pub deny: Option<RawDeny>,
    pub response_headers: Option<String>,
    pub hash_seed: Option<String>,
    pub duplicates: Option<String>,
    pub key_prefix: Option<String>,
    pub metrics_flush: Option<String>,
    pub descriptor_value_max_bytes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub key: Option<RawKey>,
    pub algorithm: Option<String>,
    pub limit: Option<u64>,
    pub window: Option<String>,
    pub burst: Option<u64>,
    pub queue: Option<RawQueue>,
    pub max_keys: Option<u64>,
    pub global: Option<RawGlobal>,
    /// Requests this `match` selects are never limited by the rule (nor counted).
    pub exempt: Option<RawMatch>,
    /// `"enforce"` (default) or `"shadow"`: a dry run of this rule alone.
    pub mode: Option<String>,
    /// What a request costs (default 1 unit).
    pub cost: Option<RawCost>,
    /// Units charged when the response arrives.
    pub charge: Option<RawCharge>,
    /// For calendar windows: the UTC offset their days start in ("+02:00"; default "Z").
    pub utc_offset: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    pub request_header: String,
    pub max: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawCharge {
    pub response_header: Option<String>,
    pub response_trailer: Option<String>,
    pub statuses: Option<Vec<serde_json::Value>>,
}

/// A request's cost from a request header: a whole number from 1 to `max`; missing: 1; not
/// a whole number, 0 or over `max`: `max` (a malformed cost never buys more than it pays).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cost {
    pub header: String,
    pub max: u64,
}

/// What a response is charged after admission (it may take the key into debt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charge {
    /// The units a response header says (a whole number; missing or malformed: 0).
    ResponseHeader(String),
    /// The units a response trailer says (missing or malformed: 0).
    ResponseTrailer(String),
    /// The request's cost when the response status is in these ranges, else nothing.
    Statuses(Vec<(u16, u16)>),
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    pub cluster: String,
    pub domain: Option<String>,
    pub timeout: Option<String>,
    pub failure_mode: Option<String>,
    pub cache_over_limit: Option<bool>,
    pub batch: Option<u32>,
}

/// A rule decided by a rate limit service (Envoy's RLS protocol) instead of in shared data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    /// The Envoy cluster of the service (HTTP/2).
    pub cluster: String,
    pub domain: String,
    /// How long a request waits for the answer before `failure_mode` decides.
    pub timeout: Duration,
    /// Deny when the service fails or is late (`"deny"`); else let the request through.
    pub deny_on_failure: bool,
    /// Remember OVER_LIMIT answers in shared data until their reset: a denied client costs
    /// no call and is denied on every worker.
    pub cache_over_limit: bool,
    /// Lease mode: each call asks for this many hits; the extra ones are kept in shared
    /// data (shared by the workers) and spent without calls. 1: a call per request.
    pub batch: u32,
    /// The descriptor's own limit (`RateLimitOverride`: requests per unit) when the rule
    /// gives `limit` and `window`; else the service's configuration decides.
    pub limit: Option<(u32, u32)>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum RawKey {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub max_delay: String,
    pub max_waiting: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawClientIp {
    pub from: Option<String>,
    pub trusted_hops: Option<u32>,
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
}

/// The `deny` local reply's JSON shape (shared with the circuit breaker's fallback).
pub type RawDeny = edgewise_support::config::RawLocalReply;

/// Where a rule's key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    Global,
    ClientIp,
    Header(String),
    Cookie(String),
    Query(String),
    Path,
    Method,
    Host,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// GCRA: one token every `interval_ns`, at most `burst` at once.
    TokenBucket { interval_ns: u64, burst: u64 },
    /// At most `limit` per aligned window.
    FixedWindow { limit: u64, window_ns: u64 },
    /// A quota: at most `limit` per calendar day, week or month in a UTC offset.
    Calendar {
        limit: u64,
        period: edgewise_support::calendar::Period,
    },
    /// At most `limit` in the sliding window, estimated from the previous and current
    /// aligned windows (the previous one weighted by how much of it still overlaps).
    SlidingWindow { limit: u64, window_ns: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    pub max_delay_ns: u64,
    pub max_waiting: u64,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub key: Vec<KeyPart>,
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window: Duration,
    pub queue: Option<Queue>,
    /// Sets in this rule's key table (`max_keys / WAYS`).
    pub sets: u64,
    /// Mixed into the hash of this rule's keys: from the rule's name, so reordering rules or
    /// editing anything else keeps every key in its bucket.
    pub name_seed: u64,
    pub metric_allowed: String,
    pub metric_denied: String,
    pub metric_shadow_denied: String,
    pub metric_queued: String,
    pub metric_errors: String,
    /// Some: decided by a rate limit service; the local algorithm fields are unused.
    pub global: Option<Global>,
    /// Requests matching this are not limited by the rule (`exempt`).
    pub exempt: Option<Matcher>,
    /// `mode: "shadow"` on the rule: its denials are counted (`shadow_denied`) and logged,
    /// never enforced, and it adds no rate-limit header fields.
    pub shadow: bool,
    /// Where the request's cost comes from (None: every request costs 1).
    pub cost: Option<Cost>,
    /// A charge after the response: admission then only checks that the request's cost is
    /// available, and the units are taken when the response (or its trailers) arrive.
    pub charge: Option<Charge>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Shadow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIpSource {
    Peer,
    /// The `trusted_hops`-th address from the right of X-Forwarded-For.
    ForwardedFor {
        trusted_hops: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderStyle {
    Ietf,
    XRateLimit,
    None,
}

/// The local reply a denied request gets.
pub type DenyResponse = edgewise_support::config::LocalReply;

#[derive(Clone, Debug)]
pub struct Config {
    pub rules: Vec<Rule>,
    pub mode: Mode,
    pub client_ip: ClientIpSource,
    /// `client_ip` keys count per network: the address masked to these prefix lengths
    /// (IPv4 /32 — one address — and IPv6 /64 — one customer's subnet — by default).
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// What header/cookie/query keys take from ambiguous duplicate values.
    pub duplicates: Duplicates,
    pub deny: DenyResponse,
    pub response_headers: HeaderStyle,
    pub hash_seed: u64,
    /// `hash_seed` was configured; otherwise the adapter takes the random seed every VM of
    /// this vm_id shares (`shared_seed`), kept across reconfigurations.
    pub hash_seed_configured: bool,
    /// Some rule keys on the client IP taken from X-Forwarded-For: read that header.
    pub reads_forwarded_for: bool,
    /// Prepended (with a dot) to every shared-data key, so that two instances of this
    /// filter in one `vm_id` never share state; "" (the default): keys as they are.
    pub key_prefix: String,
    /// How long per-request counters may wait in the VM before reaching Envoy (zero:
    /// immediately); see `Metric::counter_flushed_every`.
    pub metrics_flush: std::time::Duration,
    /// Global descriptor values longer than this are sent as their hash (`key::bound_value`),
    /// so a client's header, cookie or query value never becomes a large Redis key.
    pub descriptor_value_max_bytes: usize,
    /// The configured `hash_seed`'s bytes (empty without one): the key of that hash, the
    /// same on every Envoy configured alike.
    pub value_hash_key: Vec<u8>,
}

/// The default of `descriptor_value_max_bytes`, and its bounds.
pub const DEFAULT_DESCRIPTOR_VALUE_MAX_BYTES: u32 = 64;
pub const DESCRIPTOR_VALUE_MAX_BYTES_RANGE: std::ops::RangeInclusive<u32> = 40..=4096;

/// Entries per set of a key table (see `table`).
pub const WAYS: u64 = 4;
pub const DEFAULT_MAX_KEYS: u64 = 10_000;
pub const MAX_MAX_KEYS: u64 = 1_000_000;

fn parse_key_part(field: &str, text: &str) -> Result<KeyPart, ConfigError> {
    let named = |prefix: &str| -> Option<Result<String, ConfigError>> {
        text.strip_prefix(prefix).map(|name| {
            if name.is_empty() {
                Err(err(
                    field,
                    format!("{text:?} has no name after {prefix:?}"),
                    format!("write it like \"{prefix}x-api-key\""),
                ))
            } else {
                Ok(name.to_ascii_lowercase())
            }
        })
    };
    if let Some(name) = named("header:") {
        return name.map(KeyPart::Header);
    }
    if let Some(name) = named("cookie:") {
        // Cookie names are case-sensitive (RFC 6265 §4.1.1); keep the original spelling.
        return name.map(|_| KeyPart::Cookie(text["cookie:".len()..].to_string()));
    }
    if let Some(name) = named("query:") {
        return name.map(|_| KeyPart::Query(text["query:".len()..].to_string()));
    }
    Ok(match text {
        "global" => KeyPart::Global,
        "client_ip" => KeyPart::ClientIp,
        "path" => KeyPart::Path,
        "method" => KeyPart::Method,
        "host" => KeyPart::Host,
        other => {
            return Err(err(
                field,
                format!("{other:?} is not a key source"),
                "use global, client_ip, header:NAME, cookie:NAME, query:NAME, path, method or host (or a list of them)",
            ))
        }
    })
}

fn compile_rule(index: usize, raw: &RawRule) -> Result<Rule, ConfigError> {
    let field = format!("rules[{index}]");
    let exempt = match &raw.exempt {
        Some(m) => Some(Matcher::compile(&format!("{field}.exempt"), Some(m))?),
        None => None,
    };
    let shadow = match raw.mode.as_deref() {
        None | Some("enforce") => false,
        Some("shadow") => true,
        Some(other) => {
            return Err(err(
                format!("{field}.mode"),
                format!("{other:?} is not a mode"),
                "use \"enforce\" or \"shadow\" (a dry run of this rule)",
            ))
        }
    };
    let mut rule = compile_rule_body(index, raw)?;
    rule.exempt = exempt;
    rule.shadow = shadow;
    if rule.global.is_some() && raw.utc_offset.is_some() {
        return Err(err(
            format!("{field}.utc_offset"),
            "is not supported on global rules yet",
            "use a calendar window on a local rule",
        ));
    }
    if rule.global.as_ref().is_some_and(|g| g.batch > 1)
        && (raw.cost.is_some() || raw.charge.is_some())
    {
        let name = if raw.cost.is_some() { "cost" } else { "charge" };
        return Err(err(
            format!("{field}.{name}"),
            "cannot be combined with global.batch (leased hits are single units)",
            "remove cost or batch",
        ));
    }
    let capacity = match rule.algorithm {
        // A global rule's capacity is the service's: its own limit when it gives one, else
        // the service's default --max-hits-addend bound.
        _ if rule.global.is_some() => {
            if rule.limit > 0 {
                rule.limit
            } else {
                1_000_000
            }
        }
        Algorithm::TokenBucket { burst, .. } => burst,
        Algorithm::FixedWindow { limit, .. }
        | Algorithm::SlidingWindow { limit, .. }
        | Algorithm::Calendar { limit, .. } => limit,
    };
    if let Some(cost) = &raw.cost {
        let header = header_name(
            &format!("{field}.cost.request_header"),
            &cost.request_header,
            "x-cost",
        )?;
        let max = cost.max.unwrap_or(capacity);
        if max == 0 || max > capacity {
            return Err(err(
                format!("{field}.cost.max"),
                format!("{max} is out of range"),
                format!("use 1 to the rule's capacity ({capacity}: its burst or limit); a larger cost could never be admitted"),
            ));
        }
        rule.cost = Some(Cost { header, max });
    }
    if let Some(charge) = &raw.charge {
        let name = |value: &str, which: &str| {
            header_name(&format!("{field}.charge.{which}"), value, "x-usage-tokens")
        };
        rule.charge = Some(
            match (&charge.response_header, &charge.response_trailer, &charge.statuses) {
                (Some(h), None, None) => Charge::ResponseHeader(name(h, "response_header")?),
                (None, Some(t), None) => Charge::ResponseTrailer(name(t, "response_trailer")?),
                (None, None, Some(list)) => Charge::Statuses(
                    edgewise_support::config::parse_statuses(
                        &format!("{field}.charge.statuses"),
                        list,
                    )?,
                ),
                _ => {
                    return Err(err(
                        format!("{field}.charge"),
                        "needs exactly one of response_header, response_trailer, statuses",
                        "e.g. {\"response_header\": \"x-usage-tokens\"} or {\"statuses\": [\"4xx\", \"5xx\"]}",
                    ))
                }
            },
        );
        if rule.queue.is_some() {
            return Err(err(
                format!("{field}.queue"),
                "cannot be combined with charge",
                "a charged rule admits or denies at once; remove queue or charge",
            ));
        }
    }
    Ok(rule)
}

fn compile_rule_body(index: usize, raw: &RawRule) -> Result<Rule, ConfigError> {
    let field = format!("rules[{index}]");
    if raw.name.is_empty()
        || raw.name.len() > 64
        || !raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(err(
            format!("{field}.name"),
            format!("{:?} is not a valid rule name", raw.name),
            "use 1-64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    let matcher = Matcher::compile(&format!("{field}.match"), raw.matcher.as_ref())?;
    let key = match &raw.key {
        None => vec![KeyPart::Global],
        Some(RawKey::One(text)) => vec![parse_key_part(&format!("{field}.key"), text)?],
        Some(RawKey::Many(list)) if list.is_empty() => {
            return Err(err(
                format!("{field}.key"),
                "is an empty list",
                "name at least one key source, or \"global\"",
            ))
        }
        Some(RawKey::Many(list)) => list
            .iter()
            .enumerate()
            .map(|(i, text)| parse_key_part(&format!("{field}.key[{i}]"), text))
            .collect::<Result<_, _>>()?,
    };
    if let Some(global) = &raw.global {
        return compile_global_rule(index, raw, global, matcher, key);
    }
    let Some(limit) = raw.limit else {
        return Err(err(
            format!("{field}.limit"),
            "is missing",
            "give the rule a limit, e.g. \"limit\": 100",
        ));
    };
    let Some(window_text) = raw.window.as_deref() else {
        return Err(err(
            format!("{field}.window"),
            "is missing",
            "give the rule a window, e.g. \"window\": \"1m\"",
        ));
    };
    if limit == 0 || limit > 1_000_000_000 {
        return Err(err(
            format!("{field}.limit"),
            format!("{limit} is out of range"),
            "use a whole number from 1 to 1000000000",
        ));
    }
    let calendar = match window_text {
        "calendar_day" => Some(edgewise_support::calendar::Unit::Day),
        "calendar_week" => Some(edgewise_support::calendar::Unit::Week),
        "calendar_month" => Some(edgewise_support::calendar::Unit::Month),
        _ => None,
    };
    if let Some(unit) = calendar {
        return compile_quota(index, raw, matcher, key, limit, unit);
    }
    if raw.utc_offset.is_some() {
        return Err(err(
            format!("{field}.utc_offset"),
            "applies to calendar windows only",
            "remove it, or use \"window\": \"calendar_day\" / \"calendar_week\" / \"calendar_month\"",
        ));
    }
    let window = parse_duration(&format!("{field}.window"), window_text)?;
    if window < Duration::from_millis(1) || window > Duration::from_secs(86_400) {
        return Err(err(
            format!("{field}.window"),
            format!("{window_text:?} is out of range"),
            "use a window from \"1ms\" to \"24h\", or a quota: \"calendar_day\", \"calendar_week\", \"calendar_month\"",
        ));
    }
    let window_ns = window.as_nanos() as u64;
    let algorithm_name = raw.algorithm.as_deref().unwrap_or("token_bucket");
    let algorithm = match algorithm_name {
        "token_bucket" => {
            let burst = raw.burst.unwrap_or(limit);
            if burst == 0 || burst > 1_000_000_000 {
                return Err(err(
                    format!("{field}.burst"),
                    format!("{burst} is out of range"),
                    "use a whole number from 1 to 1000000000 (default: limit)",
                ));
            }
            // Rounded up: the bucket never refills faster than configured.
            Algorithm::TokenBucket {
                interval_ns: window_ns.div_ceil(limit).max(1),
                burst,
            }
        }
        "fixed_window" | "sliding_window" => {
            if raw.burst.is_some() {
                return Err(err(
                    format!("{field}.burst"),
                    format!("burst applies to token_bucket, not {algorithm_name}"),
                    "remove burst or use algorithm token_bucket",
                ));
            }
            if algorithm_name == "fixed_window" {
                Algorithm::FixedWindow { limit, window_ns }
            } else {
                Algorithm::SlidingWindow { limit, window_ns }
            }
        }
        other => {
            return Err(err(
                format!("{field}.algorithm"),
                format!("{other:?} is not an algorithm"),
                "use token_bucket, fixed_window or sliding_window",
            ))
        }
    };
    let queue = match &raw.queue {
        None => None,
        Some(q) => {
            if !matches!(algorithm, Algorithm::TokenBucket { .. }) {
                return Err(err(
                    format!("{field}.queue"),
                    format!("queueing needs algorithm token_bucket, not {algorithm_name}"),
                    "remove queue or use token_bucket",
                ));
            }
            let max_delay = parse_duration(&format!("{field}.queue.max_delay"), &q.max_delay)?;
            if max_delay.is_zero() || max_delay > Duration::from_secs(60) {
                return Err(err(
                    format!("{field}.queue.max_delay"),
                    format!("{:?} is out of range", q.max_delay),
                    "use a delay from \"1ms\" to \"60s\"",
                ));
            }
            let max_waiting = q.max_waiting.unwrap_or(1000);
            if max_waiting == 0 || max_waiting > 1_000_000 {
                return Err(err(
                    format!("{field}.queue.max_waiting"),
                    format!("{max_waiting} is out of range"),
                    "use a whole number from 1 to 1000000 (default 1000)",
                ));
            }
            Some(Queue {
                max_delay_ns: max_delay.as_nanos() as u64,
                max_waiting,
            })
        }
    };
    let max_keys = max_keys(&field, raw)?;
    let metric = |what: &str| labelled_metric_name("rate_limit", &[("rule", &raw.name)], what);
    Ok(Rule {
        name: raw.name.clone(),
        matcher,
        key,
        algorithm,
        limit,
        window,
        queue,
        sets: max_keys.div_ceil(WAYS),
        name_seed: crate::key::fingerprint(0x6e61_6d65, raw.name.as_bytes()),
        metric_allowed: metric("allowed"),
        metric_denied: metric("denied"),
        metric_shadow_denied: metric("shadow_denied"),
        metric_queued: metric("queued"),
        metric_errors: metric("errors"),
        global: None,
        exempt: None,
        shadow: false,
        cost: None,
        charge: None,
    })
}

/// A field naming a header (lower-cased): not empty, not a pseudo-header, no spaces or
/// controls; `example` goes into the fix.
fn header_name(field: &str, value: &str, example: &str) -> Result<String, ConfigError> {
    let lower = value.to_ascii_lowercase();
    if lower.is_empty() || lower.starts_with(':') || lower.bytes().any(|b| b <= b' ') {
        return Err(err(
            field.to_string(),
            format!("{value:?} is not a header name"),
            format!("name the header, e.g. \"{example}\""),
        ));
    }
    Ok(lower)
}

/// A local rule's key table bound (`max_keys`, default 10,000).
fn max_keys(field: &str, raw: &RawRule) -> Result<u64, ConfigError> {
    let max_keys = raw.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if !(WAYS..=MAX_MAX_KEYS).contains(&max_keys) {
        return Err(err(
            format!("{field}.max_keys"),
            format!("{max_keys} is out of range"),
            format!("use a number from {WAYS} to {MAX_MAX_KEYS} (default {DEFAULT_MAX_KEYS})"),
        ));
    }
    Ok(max_keys)
}

/// A quota: a fixed window of a calendar day, week or month in `utc_offset` (the
/// algorithm is always a fixed window; no burst, no queue).
fn compile_quota(
    index: usize,
    raw: &RawRule,
    matcher: Matcher,
    key: Vec<KeyPart>,
    limit: u64,
    unit: edgewise_support::calendar::Unit,
) -> Result<Rule, ConfigError> {
    let field = format!("rules[{index}]");
    for (name, present) in [
        ("burst", raw.burst.is_some()),
        ("queue", raw.queue.is_some()),
    ] {
        if present {
            return Err(err(
                format!("{field}.{name}"),
                "does not apply to a calendar window (a quota)",
                format!("remove {name}"),
            ));
        }
    }
    if raw
        .algorithm
        .as_deref()
        .is_some_and(|a| a != "fixed_window")
    {
        return Err(err(
            format!("{field}.algorithm"),
            "a calendar window is a fixed window",
            "remove algorithm or set it to \"fixed_window\"",
        ));
    }
    let offset_s = match raw.utc_offset.as_deref() {
        None => 0,
        Some(text) => edgewise_support::calendar::parse_offset(text).ok_or_else(|| {
            err(
                format!("{field}.utc_offset"),
                format!("{text:?} is not a UTC offset"),
                "write it like \"+02:00\", \"-05:30\" or \"Z\" (at most ±14:00)",
            )
        })?,
    };
    let period = edgewise_support::calendar::Period { unit, offset_s };
    let max_keys = max_keys(&field, raw)?;
    let metric = |what: &str| labelled_metric_name("rate_limit", &[("rule", &raw.name)], what);
    Ok(Rule {
        name: raw.name.clone(),
        matcher,
        key,
        algorithm: Algorithm::Calendar { limit, period },
        limit,
        window: Duration::from_secs(period.nominal_seconds()),
        queue: None,
        sets: max_keys.div_ceil(WAYS),
        name_seed: crate::key::fingerprint(0x6e61_6d65, raw.name.as_bytes()),
        metric_allowed: metric("allowed"),
        metric_denied: metric("denied"),
        metric_shadow_denied: metric("shadow_denied"),
        metric_queued: metric("queued"),
        metric_errors: metric("errors"),
        global: None,
        exempt: None,
        shadow: false,
        cost: None,
        charge: None,
    })
}

/// A `global` rule: the service decides; `limit` and `window` (both or neither) become the
/// descriptor's own limit, so the window must be exactly one of the protocol's units.
fn compile_global_rule(
    index: usize,
    raw: &RawRule,
    global: &RawGlobal,
    matcher: Matcher,
    key: Vec<KeyPart>,
) -> Result<Rule, ConfigError> {
    let field = format!("rules[{index}]");
    for (name, present) in [
        ("algorithm", raw.algorithm.is_some()),
        ("burst", raw.burst.is_some()),
        ("queue", raw.queue.is_some()),
        ("max_keys", raw.max_keys.is_some()),
    ] {
        if present {
            return Err(err(
                format!("{field}.{name}"),
                "does not apply to a global rule (the service decides)",
                format!("remove {name}, or remove global for a local rule"),
            ));
        }
    }
    let g = format!("{field}.global");
    if global.cluster.is_empty() {
        return Err(err(
            format!("{g}.cluster"),
            "is empty",
            "name the Envoy cluster of the rate limit service (HTTP/2), e.g. \"ratelimit\"",
        ));
    }
    let domain = global.domain.clone().unwrap_or_else(|| "edgewise".into());
    if domain.is_empty() {
        return Err(err(
            format!("{g}.domain"),
            "is empty",
            "name the domain, e.g. \"edgewise\"",
        ));
    }
    let timeout = match &global.timeout {
        Some(text) => parse_duration(&format!("{g}.timeout"), text)?,
        None => Duration::from_millis(20),
    };
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        return Err(err(
            format!("{g}.timeout"),
            format!("{timeout:?} is out of range"),
            "use \"1ms\" to \"10s\" (default \"20ms\")",
        ));
    }
    let batch = global.batch.unwrap_or(1);
    if !(1..=1000).contains(&batch) {
        return Err(err(
            format!("{g}.batch"),
            format!("{batch} is out of range"),
            "use 1 (a call per request, default) to 1000",
        ));
    }
    let deny_on_failure = match global.failure_mode.as_deref().unwrap_or("allow") {
        "allow" => false,
        "deny" => true,
        other => {
            return Err(err(
                format!("{g}.failure_mode"),
                format!("{other:?} is not a failure mode"),
                "use \"allow\" (default: requests pass while the service fails) or \"deny\"",
            ))
        }
    };
    let limit = match (raw.limit, raw.window.as_deref()) {
        (None, None) => None,
        (Some(limit), Some(window)) => {
            let window = parse_duration(&format!("{field}.window"), window)?;
            let unit = crate::rls::unit_of(window.as_secs())
                .filter(|_| window.subsec_nanos() == 0)
                .ok_or_else(|| {
                    err(
                        format!("{field}.window"),
                        format!("{window:?} is not one of the protocol's units"),
                        "use \"1s\", \"1m\", \"1h\" or \"24h\" for a global rule",
                    )
                })?;
            if limit == 0 || limit > u64::from(u32::MAX) {
                return Err(err(
                    format!("{field}.limit"),
                    format!("{limit} is out of range"),
                    "use a whole number from 1 to 4294967295",
                ));
            }
            Some((limit as u32, unit))
        }
        _ => {
            return Err(err(
                format!("{field}.limit"),
                "a global rule takes limit and window together, or neither",
                "give both (the rule's own limit) or neither (the service's configuration)",
            ))
        }
    };
    let metric = |what: &str| labelled_metric_name("rate_limit", &[("rule", &raw.name)], what);
    let (limit_n, window) = match limit {
        Some((n, unit)) => (
            u64::from(n),
            Duration::from_secs(match unit {
                1 => 1,
                2 => 60,
                3 => 3600,
                _ => 86_400,
            }),
        ),
        None => (0, Duration::ZERO),
    };
    Ok(Rule {
        name: raw.name.clone(),
        matcher,
        key,
        algorithm: Algorithm::TokenBucket {
            interval_ns: 1,
            burst: 1,
        },
        limit: limit_n,
        window,
        queue: None,
        sets: 1,
        name_seed: crate::key::fingerprint(0x6e61_6d65, raw.name.as_bytes()),
        metric_allowed: metric("allowed"),
        metric_denied: metric("denied"),
        metric_shadow_denied: metric("shadow_denied"),
        metric_queued: metric("queued"),
        metric_errors: metric("errors"),
        global: Some(Global {
            cluster: global.cluster.clone(),
            domain,
            timeout,
            deny_on_failure,
            cache_over_limit: global.cache_over_limit.unwrap_or(true),
            batch,
            limit,
        }),
        exempt: None,
        shadow: false,
        cost: None,
        charge: None,
    })
}

impl Config {
    /// Whether `rule`'s denials are only counted: the filter's `mode` or the rule's is
    /// `"shadow"`.
    pub fn shadowed(&self, rule: usize) -> bool {
        self.mode == Mode::Shadow || self.rules.get(rule).is_some_and(|r| r.shadow)
    }

    /// Parses and validates a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_config(bytes)?;
        Config::compile(&raw, bytes)
    }

    pub fn compile(raw: &RawConfig, source: &[u8]) -> Result<Config, ConfigError> {
        if raw.rules.is_empty() {
            return Err(err("rules", "is empty", "add at least one rule"));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (index, raw_rule) in raw.rules.iter().enumerate() {
            let rule = compile_rule(index, raw_rule)?;
            if rules.iter().any(|r: &Rule| r.name == rule.name) {
                return Err(err(
                    format!("rules[{index}].name"),
                    format!("{:?} is used by another rule", rule.name),
                    "give every rule its own name",
                ));
            }
            rules.push(rule);
        }
        if let (Some(queued), true) = (
            rules.iter().position(|r| r.queue.is_some()),
            rules.iter().any(|r| r.global.is_some()),
        ) {
            return Err(err(
                format!("rules[{queued}].queue"),
                "cannot be combined with global rules in one filter (a queued request would wait for the service after its delay)",
                "remove queue, or put the global rules in a filter of their own",
            ));
        }
        let mode = match raw.mode.as_deref().unwrap_or("enforce") {
            "enforce" => Mode::Enforce,
            "shadow" => Mode::Shadow,
            other => {
                return Err(err(
                    "mode",
                    format!("{other:?} is not a mode"),
                    "use enforce or shadow",
                ))
            }
        };
        let client_ip = match &raw.client_ip {
            None => ClientIpSource::Peer,
            Some(c) => match c.from.as_deref().unwrap_or("peer") {
                "peer" => {
                    if c.trusted_hops.is_some() {
                        return Err(err("client_ip.trusted_hops", "only applies with from: x-forwarded-for", "remove it or set from to x-forwarded-for"));
                    }
                    ClientIpSource::Peer
                }
                "x-forwarded-for" => match c.trusted_hops.unwrap_or(1) {
                    0 => return Err(err("client_ip.trusted_hops", "0 trusts no proxy, so X-Forwarded-For could be forged", "set the number of proxies in front of Envoy (1 or more), or use from: peer")),
                    hops if hops > 16 => return Err(err("client_ip.trusted_hops", format!("{hops} is out of range"), "use 1 to 16")),
                    hops => ClientIpSource::ForwardedFor { trusted_hops: hops },
                },
                other => return Err(err("client_ip.from", format!("{other:?} is not a source"), "use peer or x-forwarded-for")),
            },
        };
        let ipv4_prefix = raw
            .client_ip
            .as_ref()
            .and_then(|c| c.ipv4_prefix)
            .unwrap_or(32);
        if !(8..=32).contains(&ipv4_prefix) {
            return Err(err(
                "client_ip.ipv4_prefix",
                format!("{ipv4_prefix} is out of range"),
                "use 8 to 32 (default 32: one address)",
            ));
        }
        let ipv6_prefix = raw
            .client_ip
            .as_ref()
            .and_then(|c| c.ipv6_prefix)
            .unwrap_or(64);
        if !(16..=128).contains(&ipv6_prefix) {
            return Err(err(
                "client_ip.ipv6_prefix",
                format!("{ipv6_prefix} is out of range"),
                "use 16 to 128 (default 64: a client can use every address of its /64)",
            ));
        }
        let duplicates = match raw.duplicates.as_deref().unwrap_or("shared_bucket") {
            "shared_bucket" => Duplicates::SharedBucket,
            "first" => Duplicates::First,
            "last" => Duplicates::Last,
            other => {
                return Err(err(
                    "duplicates",
                    format!("{other:?} is not a duplicates rule"),
                    "use shared_bucket (default), first or last",
                ))
            }
        };
        let deny = edgewise_support::config::local_reply(
            "deny",
            raw.deny.as_ref(),
            429,
            "rate limited\n",
        )?;
        let response_headers = match raw.response_headers.as_deref().unwrap_or("ietf") {
            "ietf" => HeaderStyle::Ietf,
            "x-ratelimit" => HeaderStyle::XRateLimit,
            "none" => HeaderStyle::None,
            other => {
                return Err(err(
                    "response_headers",
                    format!("{other:?} is not a header style"),
                    "use ietf, x-ratelimit or none",
                ))
            }
        };
        // Keys are hashed with a seed so clients cannot aim many keys at one table set. The
        // default is a random seed the adapter keeps in shared data (so a configuration change
        // never moves keys to fresh buckets); this one stands in if shared data fails.
        let seed_source = raw
            .hash_seed
            .as_deref()
            .map(str::as_bytes)
            .unwrap_or(source);
        let hash_seed = crate::key::fingerprint(0x5eed, seed_source);
        let hash_seed_configured = raw.hash_seed.is_some();
        let reads_forwarded_for = matches!(client_ip, ClientIpSource::ForwardedFor { .. })
            && rules.iter().any(|r| {
                r.key.contains(&KeyPart::ClientIp)
                    || r.matcher.needs_client()
                    || r.exempt.as_ref().is_some_and(Matcher::needs_client)
            });
        let key_prefix = edgewise_support::config::key_prefix(raw.key_prefix.as_deref())?;
        let metrics_flush = edgewise_support::config::metrics_flush(raw.metrics_flush.as_deref())?;
        let descriptor_value_max_bytes = raw
            .descriptor_value_max_bytes
            .unwrap_or(DEFAULT_DESCRIPTOR_VALUE_MAX_BYTES);
        if !DESCRIPTOR_VALUE_MAX_BYTES_RANGE.contains(&descriptor_value_max_bytes) {
            return Err(err(
                "descriptor_value_max_bytes",
                format!("{descriptor_value_max_bytes} is out of range"),
                "use 40 to 4096 (a hashed value takes 39 bytes); the default is 64",
            ));
        }
        let value_hash_key = raw
            .hash_seed
            .as_deref()
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default();
        Ok(Config {
            descriptor_value_max_bytes: descriptor_value_max_bytes as usize,
            value_hash_key,
            key_prefix,
            metrics_flush,
            reads_forwarded_for,
            rules,
            mode,
            client_ip,
            ipv4_prefix,
            ipv6_prefix,
            duplicates,
            deny,
            response_headers,
            hash_seed,
            hash_seed_configured,
        })
    }
}
