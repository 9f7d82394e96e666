//! The response cache's configuration: JSON shape (unknown fields rejected), validated.

use edgewise_support::config::{err, one_of, parse_config, ConfigError};
use edgewise_support::duration::{parse_duration, parse_whole_seconds};
use edgewise_support::Fields;
use serde::Deserialize;

use crate::freshness::Heuristic;
use crate::key::KeyRules;
use crate::storable::CookieRequests;
use crate::storage::{Eviction, Layout};

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub max_bytes: Option<u64>,
    pub max_entry_bytes: Option<u64>,
    pub max_inflight_bytes: Option<u64>,
    pub cookie_requests: Option<String>,
    pub unkeyed_headers: Option<RawUnkeyed>,
    pub max_entries: Option<u64>,
    pub eviction: Option<String>,
    pub key: Option<RawKey>,
    pub default_ttl: Option<String>,
    pub heuristic_freshness: Option<bool>,
    pub cache_status: Option<String>,
    pub cache_set_cookie: Option<bool>,
    pub stale_while_revalidate: Option<String>,
    pub stale_if_error: Option<String>,
    pub background_refresh: Option<RawBackgroundRefresh>,
    pub coalesce: Option<RawCoalesce>,
    pub purge: Option<RawPurge>,
    pub targeted_fields: Option<Vec<String>>,
    pub strip_targeted_fields: Option<Vec<String>>,
    pub serve_stale_when_unreachable: Option<bool>,
    pub key_prefix: Option<String>,
    pub metrics_flush: Option<String>,
    pub tags: Option<RawTags>,
    pub fleet: Option<RawFleet>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub cluster: String,
    pub token: String,
    pub path: Option<String>,
    pub poll: Option<String>,
    pub timeout: Option<String>,
    pub settle: Option<String>,
}

/// Fleet purges (`fleet.rs`): poll the control service's purge log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    /// The Envoy cluster of the control service (edgewise-ratelimit's HTTP port).
    pub cluster: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: String,
    pub path: String,
    pub poll_ms: u64,
    pub timeout_ms: u64,
    /// For a cache in front of another cache tier: how long after applying fleet purges
    /// what it stores stays subject to them (0: no window, for a single tier).
    pub settle_s: i64,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTags {
    pub headers: Option<Vec<String>>,
    pub max_per_entry: Option<u32>,
    pub max_length: Option<u32>,
    pub strip: Option<bool>,
}

/// Response tags for group purges (`tags`): read from `headers` (each value split on
/// spaces and commas: Fastly's `Surrogate-Key` is space-separated, Cloudflare's `Cache-Tag`
/// comma-separated), at most `max_per_entry` of at most `max_length` bytes each (a response
/// with more is not stored: a purge must never miss a tag that was dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tags {
    pub headers: Vec<String>,
    pub max_per_entry: usize,
    pub max_length: usize,
    /// Removed from what clients get (and from the stored fields).
    pub strip: bool,
}

impl Tags {
    /// The tags a response names; None when it names more or longer ones than allowed.
    pub fn of(&self, headers: &(impl Fields + ?Sized)) -> Option<Vec<Vec<u8>>> {
        let mut tags: Vec<Vec<u8>> = Vec::new();
        for (_, value) in headers
            .each_field()
            .filter(|(k, _)| self.headers.iter().any(|h| h == k))
        {
            for tag in value
                .split(|b| *b == b' ' || *b == b',' || *b == b'\t')
                .filter(|t| !t.is_empty())
            {
                if tag.len() > self.max_length {
                    return None;
                }
                if !tags.iter().any(|t| t == tag) {
                    tags.push(tag.to_vec());
                }
            }
        }
        (tags.len() <= self.max_per_entry).then_some(tags)
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawUnkeyed {
    pub names: Option<Vec<String>>,
    pub action: Option<String>,
}

/// Request header fields that are not part of the key but that origins commonly reflect
/// (web cache poisoning): origins build links from X-Forwarded-Host, -Scheme, -Port, -Prefix
/// and Forwarded (RFC 7239), route on X-Original-URL.
/// Forwarding fields an origin may build links from but that Envoy itself sets on every
/// request (X-Forwarded-Proto): a bypass would disable the cache, so by default they are
/// part of the key instead (a client that sends another value gets its own entry). Naming
/// one in `unkeyed_headers.names` takes it out of the key.
pub const DEFAULT_KEYED: [&str; 1] = ["x-forwarded-proto"];

pub const DEFAULT_UNKEYED: [&str; 12] = [
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "forwarded",
    "x-forwarded-server",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// What a request carrying one of the unkeyed headers gets (configuration
/// `unkeyed_headers.action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnkeyedAction {
    /// The request goes to the origin unchanged and its response is neither served from nor
    /// stored in the cache. The default.
    Bypass,
    /// The fields are removed before the origin sees the request; it is cached as usual.
    Strip,
}

/// Unkeyed request headers and what to do with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unkeyed {
    /// Lowercase names; fields named in `key.headers` are keyed and so left out.
    pub names: Vec<String>,
    pub action: UnkeyedAction,
}

/// The default RFC 9213 target list: this cache's own field first, then the CDN class.
pub const DEFAULT_TARGETED: [&str; 2] = ["edgewise-cache-control", "cdn-cache-control"];

/// Lowercase header names from `names`, each a token (RFC 9110 §5.1), at most `max`.
fn field_names(field: &str, names: &[String], max: usize) -> Result<Vec<String>, ConfigError> {
    if names.len() > max {
        return Err(err(
            field,
            format!("lists {} names", names.len()),
            format!("list at most {max}"),
        ));
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(err(
                format!("{field}[{i}]"),
                format!("{name:?} is not a header name"),
                "use names like \"cdn-cache-control\"",
            ));
        }
        let lower = name.to_ascii_lowercase();
        if lower == "cache-control" || lower == "expires" {
            return Err(err(
                format!("{field}[{i}]"),
                format!("{name:?} is what targeted fields take precedence over"),
                "list targeted fields only, e.g. \"cdn-cache-control\"",
            ));
        }
        out.push(lower);
    }
    Ok(out)
}

/// Largest `max_entry_bytes`: an entry is copied into the worker's Wasm heap while it is
/// stored and when it is served, so it stays far below the 4 GiB wasm32 address space.
pub const MAX_ENTRY_BYTES_LIMIT: u64 = 32 << 20;

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawPurge {
    pub method: Option<String>,
    pub token_header: Option<String>,
    pub token: Option<String>,
}

/// Purge requests: `method` with `token_header: token` removes the entry for the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purge {
    pub method: Vec<u8>,
    pub token_header: String,
    pub token: Vec<u8>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawCoalesce {
    pub enabled: Option<bool>,
    pub wait: Option<String>,
    pub hit_for_miss: Option<String>,
}

/// Coalescing of concurrent misses across workers (see `coalesce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce {
    /// How long followers wait for the leader's response before going to the origin.
    pub wait_ms: u64,
    /// Fill-lock keys in shared data.
    pub slots: u64,
    /// After a response the cache may not store, misses for its key skip coalescing this
    /// long (0: never skip).
    pub hit_for_miss_ms: u64,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawBackgroundRefresh {
    pub cluster: Option<String>,
    pub timeout: Option<String>,
}

/// Background refreshes of entries served under stale-while-revalidate (RFC 5861 §3): sent
/// from the worker's root context, one per key at a time (the fill locks of `coalesce`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackgroundRefresh {
    /// Envoy cluster to send refreshes to; None: the cluster the request's route picked.
    pub cluster: Option<String>,
    pub timeout_ms: u64,
    /// Fill-lock keys in shared data (shared with coalescing).
    pub slots: u64,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub include_query: Option<bool>,
    pub ignore_query_params: Option<Vec<String>>,
    pub headers: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub layout: Layout,
    pub key: KeyRules,
    pub heuristic: Heuristic,
    pub cache_status: String,
    pub cache_set_cookie: bool,
    pub cookie_requests: CookieRequests,
    pub unkeyed: Unkeyed,
    /// Bytes of responses being copied for storage across all streams of one worker.
    pub max_inflight_bytes: u64,
    pub purge: Option<Purge>,
    pub tags: Tags,
    pub fleet: Option<Fleet>,
    /// RFC 5861 §4 window when the origin sends no stale-if-error (0: none).
    pub stale_if_error: u64,
    /// None when coalescing is disabled.
    pub coalesce: Option<Coalesce>,
    pub refresh: BackgroundRefresh,
    /// RFC 9213 target list, in order: lowercase field names.
    pub targeted_fields: Vec<String>,
    /// Targeted fields removed from responses sent downstream (lowercase).
    pub strip_targeted_fields: Vec<String>,
    /// RFC 9111 §4.2.4: serve a stale entry when the origin cannot be reached.
    pub serve_stale_when_unreachable: bool,
    /// Prepended (with a dot) to every shared-data key, so that two instances of this
    /// filter in one `vm_id` never share state; "" (the default): keys as they are.
    pub key_prefix: String,
    /// How long per-request counters may wait in the VM before reaching Envoy (zero:
    /// immediately); see `Metric::counter_flushed_every`.
    pub metrics_flush: std::time::Duration,
}

impl Config {
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_config(bytes)?;
        let max_bytes = raw.max_bytes.unwrap_or(64 << 20);
        if !(1024..=(1 << 34)).contains(&max_bytes) {
            return Err(err(
                "max_bytes",
                format!("{max_bytes} is out of range"),
                "use 1024 to 17179869184 (default 67108864)",
            ));
        }
        let max_entry_bytes = raw.max_entry_bytes.unwrap_or(1 << 20);
        if max_entry_bytes == 0 || max_entry_bytes > max_bytes {
            return Err(err(
                "max_entry_bytes",
                format!("{max_entry_bytes} must be between 1 and max_bytes ({max_bytes})"),
                "lower it or raise max_bytes (default 1048576)",
            ));
        }
        if max_entry_bytes > MAX_ENTRY_BYTES_LIMIT {
            return Err(err(
                "max_entry_bytes",
                format!("{max_entry_bytes} is above 33554432 (32 MiB)"),
                "entries are copied into the Wasm heap; use at most 33554432 (default 1048576)",
            ));
        }
        let max_inflight_bytes = raw.max_inflight_bytes.unwrap_or(32 << 20);
        if max_inflight_bytes < max_entry_bytes || max_inflight_bytes > (1 << 30) {
            return Err(err(
                "max_inflight_bytes",
                format!(
                    "{max_inflight_bytes} must be between max_entry_bytes ({max_entry_bytes}) and 1073741824"
                ),
                "use at least max_entry_bytes, at most 1 GiB (default 33554432)",
            ));
        }
        let cookie_requests = one_of(
            "cookie_requests",
            raw.cookie_requests.as_deref(),
            "explicit",
            "a cookie rule",
            &[
                ("bypass", CookieRequests::Bypass),
                ("explicit", CookieRequests::Explicit),
                ("store", CookieRequests::Store),
            ],
        )?;
        let slots = raw.max_entries.unwrap_or(4096);
        if !(8..=1_000_000).contains(&slots) {
            return Err(err(
                "max_entries",
                format!("{slots} is out of range"),
                "use 8 to 1000000 (default 4096)",
            ));
        }
        let eviction = one_of(
            "eviction",
            raw.eviction.as_deref(),
            "lru",
            "an eviction policy",
            &[
                ("lru", Eviction::Lru),
                ("lfu", Eviction::Lfu),
                ("fifo", Eviction::Fifo),
            ],
        )?;
        let raw_key = raw.key.unwrap_or_default();
        let mut headers = Vec::new();
        for (i, h) in raw_key.headers.unwrap_or_default().iter().enumerate() {
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err(
                    format!("key.headers[{i}]"),
                    format!("{h:?} is not a header name"),
                    "use names like \"x-device\"",
                ));
            }
            headers.push(h.to_ascii_lowercase());
        }
        let raw_unkeyed = raw.unkeyed_headers.as_ref();
        let mut unkeyed_names = Vec::new();
        match raw_unkeyed.and_then(|u| u.names.as_ref()) {
            None => unkeyed_names.extend(DEFAULT_UNKEYED.iter().map(|n| n.to_string())),
            Some(names) => {
                for (i, name) in names.iter().enumerate() {
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(err(
                            format!("unkeyed_headers.names[{i}]"),
                            format!("{name:?} is not a header name"),
                            "use names like \"x-forwarded-host\"",
                        ));
                    }
                    unkeyed_names.push(name.to_ascii_lowercase());
                }
            }
        }
        for name in DEFAULT_KEYED {
            if !headers.iter().any(|h| h == name) && !unkeyed_names.iter().any(|n| n == name) {
                headers.push(name.to_string());
            }
        }
        unkeyed_names.retain(|n| !headers.contains(n));
        let unkeyed = Unkeyed {
            names: unkeyed_names,
            action: one_of(
                "unkeyed_headers.action",
                raw_unkeyed.and_then(|u| u.action.as_deref()),
                "bypass",
                "an action",
                &[
                    ("bypass", UnkeyedAction::Bypass),
                    ("strip", UnkeyedAction::Strip),
                ],
            )?,
        };
        let key = KeyRules {
            include_query: raw_key.include_query.unwrap_or(true),
            ignore_query_params: raw_key.ignore_query_params.unwrap_or_default(),
            headers,
        };
        let default_ttl = match &raw.default_ttl {
            Some(text) => parse_whole_seconds("default_ttl", text)?,
            None => 0,
        };
        let cache_status = raw.cache_status.unwrap_or_else(|| "edgewise".into());
        if cache_status.is_empty()
            || !cache_status
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(err(
                "cache_status",
                format!("{cache_status:?} is not a usable cache name"),
                "use letters, digits, - _ .",
            ));
        }
        let purge = match &raw.purge {
            None => None,
            Some(p) => {
                let method = p.method.clone().unwrap_or_else(|| "PURGE".into());
                if method.is_empty()
                    || !method.bytes().all(|b| b.is_ascii_uppercase())
                    || ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
                        .contains(&method.as_str())
                {
                    return Err(err(
                        "purge.method",
                        format!("{method:?} is not a usable purge method"),
                        "use an upper-case method of its own, like \"PURGE\"",
                    ));
                }
                let token_header = p
                    .token_header
                    .clone()
                    .unwrap_or_else(|| "x-purge-token".into());
                if token_header.is_empty()
                    || !token_header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(err(
                        "purge.token_header",
                        format!("{token_header:?} is not a header name"),
                        "use a name like \"x-purge-token\"",
                    ));
                }
                let token = p.token.clone().unwrap_or_default();
                if token.len() < 8 {
                    return Err(err(
                        "purge.token",
                        "is missing or shorter than 8 characters: anyone could purge",
                        "set a long random secret",
                    ));
                }
                Some(Purge {
                    method: method.into_bytes(),
                    token_header: token_header.to_ascii_lowercase(),
                    token: token.into_bytes(),
                })
            }
        };
        let stale_if_error = match &raw.stale_if_error {
            Some(text) => parse_whole_seconds("stale_if_error", text)?,
            None => 0,
        };
        let stale_while_revalidate = match &raw.stale_while_revalidate {
            Some(text) => parse_whole_seconds("stale_while_revalidate", text)?,
            None => 0,
        };
        let refresh = {
            let raw_refresh = raw.background_refresh.as_ref();
            let timeout = match raw_refresh.and_then(|r| r.timeout.as_deref()) {
                Some(text) => parse_duration("background_refresh.timeout", text)?,
                None => std::time::Duration::from_secs(5),
            };
            if timeout.is_zero() || timeout.as_secs() > 60 {
                return Err(err(
                    "background_refresh.timeout",
                    format!("{timeout:?} is out of range"),
                    "use a duration from \"1ms\" to \"60s\" (default \"5s\")",
                ));
            }
            let cluster = raw_refresh.and_then(|r| r.cluster.clone());
            if cluster.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(err(
                    "background_refresh.cluster",
                    "is empty",
                    "name an Envoy cluster, or leave it out to use the route's cluster",
                ));
            }
            BackgroundRefresh {
                cluster,
                timeout_ms: timeout.as_millis() as u64,
                slots: slots.min(4096),
            }
        };
        let coalesce = match &raw.coalesce {
            Some(RawCoalesce {
                enabled: Some(false),
                ..
            }) => None,
            other => {
                let wait = match other.as_ref().and_then(|c| c.wait.as_deref()) {
                    Some(text) => parse_duration("coalesce.wait", text)?,
                    None => std::time::Duration::from_secs(5),
                };
                if wait.is_zero() || wait.as_secs() > 60 {
                    return Err(err(
                        "coalesce.wait",
                        format!("{wait:?} is out of range"),
                        "use a duration from \"1ms\" to \"60s\" (default \"5s\"), or \"enabled\": false",
                    ));
                }
                let hit_for_miss = match other.as_ref().and_then(|c| c.hit_for_miss.as_deref()) {
                    Some(text) => parse_duration("coalesce.hit_for_miss", text)?,
                    None => std::time::Duration::from_secs(10),
                };
                if hit_for_miss.as_secs() > 3600 {
                    return Err(err(
                        "coalesce.hit_for_miss",
                        format!("{hit_for_miss:?} is out of range"),
                        "use a duration from \"0s\" (off) to \"1h\" (default \"10s\")",
                    ));
                }
                Some(Coalesce {
                    wait_ms: wait.as_millis() as u64,
                    slots: slots.min(4096),
                    hit_for_miss_ms: hit_for_miss.as_millis() as u64,
                })
            }
        };
        let targeted_fields = match &raw.targeted_fields {
            Some(names) => field_names("targeted_fields", names, 8)?,
            None => DEFAULT_TARGETED.iter().map(|n| n.to_string()).collect(),
        };
        let strip_targeted_fields = match &raw.strip_targeted_fields {
            Some(names) => field_names("strip_targeted_fields", names, 8)?,
            None => vec![DEFAULT_TARGETED[0].to_string()],
        };
        let key_prefix = edgewise_support::config::key_prefix(raw.key_prefix.as_deref())?;
        let metrics_flush =
            edgewise_support::duration::metrics_flush(raw.metrics_flush.as_deref())?;
        let raw_tags = raw.tags.as_ref();
        let tags = Tags {
            headers: match raw_tags.and_then(|t| t.headers.as_ref()) {
                Some(names) => field_names("tags.headers", names, 4)?,
                None => vec!["surrogate-key".into(), "cache-tag".into()],
            },
            max_per_entry: match raw_tags.and_then(|t| t.max_per_entry).unwrap_or(32) {
                n @ 1..=256 => n as usize,
                n => {
                    return Err(err(
                        "tags.max_per_entry",
                        format!("{n} is out of range"),
                        "use 1 to 256 (default 32)",
                    ))
                }
            },
            max_length: match raw_tags.and_then(|t| t.max_length).unwrap_or(128) {
                n @ 1..=256 => n as usize,
                n => {
                    return Err(err(
                        "tags.max_length",
                        format!("{n} is out of range"),
                        "use 1 to 256 bytes (default 128)",
                    ))
                }
            },
            strip: raw_tags.and_then(|t| t.strip).unwrap_or(true),
        };
        let fleet = match &raw.fleet {
            None => None,
            Some(f) => {
                if f.cluster.is_empty() {
                    return Err(err(
                        "fleet.cluster",
                        "is empty",
                        "name the Envoy cluster of the control service",
                    ));
                }
                if f.token.len() < 16 {
                    return Err(err(
                        "fleet.token",
                        "is shorter than 16 characters",
                        "use the control service's --control-token",
                    ));
                }
                let path = f.path.clone().unwrap_or_else(|| "/v1/purges".into());
                if !path.starts_with('/') || path.contains(['?', ' ']) {
                    return Err(err(
                        "fleet.path",
                        format!("{path:?} is not a path"),
                        "use \"/v1/purges\" (the default)",
                    ));
                }
                let poll = match f.poll.as_deref() {
                    Some(text) => parse_duration("fleet.poll", text)?,
                    None => std::time::Duration::from_secs(1),
                };
                if poll.as_millis() < 100 || poll.as_secs() > 60 {
                    return Err(err(
                        "fleet.poll",
                        format!("{poll:?} is out of range"),
                        "use \"100ms\" to \"60s\" (default \"1s\")",
                    ));
                }
                let timeout = match f.timeout.as_deref() {
                    Some(text) => parse_duration("fleet.timeout", text)?,
                    None => std::time::Duration::from_secs(1),
                };
                if timeout.is_zero() || timeout.as_secs() > 30 {
                    return Err(err(
                        "fleet.timeout",
                        format!("{timeout:?} is out of range"),
                        "use \"1ms\" to \"30s\" (default \"1s\")",
                    ));
                }
                let settle = match f.settle.as_deref() {
                    Some(text) => parse_duration("fleet.settle", text)?,
                    None => std::time::Duration::ZERO,
                };
                if settle.as_secs() > 600 || settle.subsec_nanos() != 0 {
                    return Err(err(
                        "fleet.settle",
                        format!("{settle:?} is not a whole number of seconds up to 10m"),
                        "use e.g. \"3s\" (twice the other tier's poll and timeout), or omit it",
                    ));
                }
                Some(Fleet {
                    settle_s: settle.as_secs() as i64,
                    cluster: f.cluster.clone(),
                    token: f.token.clone(),
                    path,
                    poll_ms: poll.as_millis() as u64,
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        };
        Ok(Config {
            fleet,
            tags,
            key_prefix,
            metrics_flush,
            targeted_fields,
            strip_targeted_fields,
            serve_stale_when_unreachable: raw.serve_stale_when_unreachable.unwrap_or(false),
            coalesce,
            refresh,
            stale_if_error,
            purge,
            layout: Layout {
                slots,
                max_bytes,
                max_entry_bytes,
                eviction,
                sample: 16,
            },
            key,
            heuristic: Heuristic {
                enabled: raw.heuristic_freshness.unwrap_or(true),
                default_ttl,
                stale_while_revalidate,
                ..Heuristic::default()
            },
            cache_status,
            cache_set_cookie: raw.cache_set_cookie.unwrap_or(false),
            cookie_requests,
            unkeyed,
            max_inflight_bytes,
        })
    }
}
