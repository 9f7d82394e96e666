//! The rate limiter's configuration: the JSON shape (`RawConfig`, unknown fields rejected)
//! and the validated, compiled form the data path uses.

use std::time::Duration;

use edgewise_support::config::{err, one_of, parse_config, ConfigError};
use edgewise_support::duration::parse_duration;
use edgewise_support::metrics::labelled_metric_name;
use edgewise_support::request::{Duplicates, Matcher, RawMatch};
use serde::Deserialize;

mod rule;

use rule::*;

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
        let mode = one_of(
            "mode",
            raw.mode.as_deref(),
            "enforce",
            "a mode",
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        )?;
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
        let duplicates = one_of(
            "duplicates",
            raw.duplicates.as_deref(),
            "shared_bucket",
            "a duplicates rule",
            &[
                ("shared_bucket", Duplicates::SharedBucket),
                ("first", Duplicates::First),
                ("last", Duplicates::Last),
            ],
        )?;
        let deny = edgewise_support::config::local_reply(
            "deny",
            raw.deny.as_ref(),
            429,
            "rate limited\n",
        )?;
        let response_headers = one_of(
            "response_headers",
            raw.response_headers.as_deref(),
            "ietf",
            "a header style",
            &[
                ("ietf", HeaderStyle::Ietf),
                ("x-ratelimit", HeaderStyle::XRateLimit),
                ("none", HeaderStyle::None),
            ],
        )?;
        // Keys are hashed with a seed so clients cannot aim many keys at one table set. The
        // default is a random seed the adapter keeps in shared data (so a configuration change
        // never moves keys to fresh buckets); this one stands in if shared data fails.
        let seed_source = raw
            .hash_seed
            .as_deref()
            .map(str::as_bytes)
            .unwrap_or(source);
        let hash_seed = crate::hash::fingerprint(0x5eed, seed_source);
        let hash_seed_configured = raw.hash_seed.is_some();
        let reads_forwarded_for = matches!(client_ip, ClientIpSource::ForwardedFor { .. })
            && rules.iter().any(|r| {
                r.key.contains(&KeyPart::ClientIp)
                    || r.matcher.needs_client()
                    || r.exempt.as_ref().is_some_and(Matcher::needs_client)
            });
        let key_prefix = edgewise_support::config::key_prefix(raw.key_prefix.as_deref())?;
        let metrics_flush =
            edgewise_support::duration::metrics_flush(raw.metrics_flush.as_deref())?;
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
