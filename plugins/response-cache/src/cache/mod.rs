//! The cache's decisions for one exchange, over a request view and the CAS store: what to
//! do with a request (serve, 304, 504, forward) and whether and how to store the response.

use edgewise_support::breaker_state::identity_hash;
use edgewise_support::request::RequestView;
use edgewise_support::store::CasStore;
use edgewise_support::{Fields, Host};

use crate::cache_control::CacheControl;
use crate::conditional::{not_modified, refresh_headers};
use crate::config::{Config, UnkeyedAction};
use crate::entry::Entry;
use crate::freshness::{current_age, lifetime, usable, Stored, Use};
use crate::key::{primary_key, variant_hash, vary_fields, vary_matches, vary_values};
use crate::status::{cache_status, Outcome};
use crate::storable::{self, CookieRequests, Exchange, NotStorable};
use crate::{http_date, storage};

mod placement;
mod refresh;
mod request;
mod response;
mod revalidate;

pub use placement::*;
pub use refresh::*;
pub use request::*;
pub use response::*;
pub use revalidate::*;

/// Header fields never stored or replayed (hop-by-hop, RFC 9110 §7.6.1; framing; Envoy's own;
/// and one client's rate-limit state — the RateLimit fields of
/// draft-ietf-httpapi-ratelimit-headers, their X-RateLimit forms, Retry-After (RFC 9110
/// §10.2.3) and Envoy's x-envoy-ratelimited — which a shared cache in front of a limiter
/// (a shield) would otherwise serve to every other client).
pub(super) const NOT_STORED: [&str; 18] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "content-length",
    "x-envoy-upstream-service-time",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-envoy-ratelimited",
];

/// What to do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestDecision {
    /// Answer from the cache: status, headers (with Age and Cache-Status) and body. With
    /// `refresh`, the entry was served stale under stale-while-revalidate (RFC 5861 §3) and
    /// the origin should be asked again in the background as `refresh` describes.
    Serve {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        refresh: Option<Box<Pending>>,
    },
    /// `only-if-cached` and nothing usable stored (RFC 9111 §5.2.1.7): 504.
    GatewayTimeout { headers: Vec<(String, Vec<u8>)> },
    /// Forward to the origin; `pending` says how to treat the response.
    Forward(Box<Pending>),
    /// A purge request for the entry `key_hash`; `authorized` when its token matched.
    Purge {
        key_hash: u64,
        authorized: bool,
        kind: PurgeKind,
    },
}

/// How a request's fill of its key ends, for the requests waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillEnd {
    /// Stored, not storable for a passing reason (an origin error, a budget), or never
    /// filled: waiting and later requests look again (and may fill the key themselves).
    Retry,
    /// The response may not be stored (`no-store`, `private`, too large, `Vary: *`): later
    /// misses skip coalescing for `coalesce.hit_for_miss` (they could not share it).
    Uncacheable,
}

/// What a purge request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PurgeKind {
    /// Remove the URL's entry (and with it every variant) at once: the purge of 0.2.0.
    Url,
    /// Add rules (tags, prefix, host, everything; or the URL, soft), hard or soft.
    Rules {
        targets: Vec<crate::purge::Target>,
        soft: bool,
    },
    /// Malformed (a value too long, too many tags): 400, nothing purged.
    Invalid(&'static str),
}

/// The request fields a purge request names its targets with.
pub const PURGE_TAG: &str = "x-purge-tag";
pub const PURGE_PREFIX: &str = "x-purge-prefix";
pub const PURGE_HOST: &str = "x-purge-host";
pub const PURGE_ALL: &str = "x-purge-all";
pub const PURGE_SOFT: &str = "x-purge-soft";
/// Tags one purge request may name.
pub const MAX_PURGE_TAGS: usize = 32;

/// A ready reply: status, header fields, body.
pub type Reply = (u16, Vec<(String, Vec<u8>)>, Vec<u8>);

/// Remembered between request and response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub key: Vec<u8>,
    pub key_hash: u64,
    /// The purge sequence when the request was decided (`purge.rs`): what it stores
    /// records it, so purges issued from then on apply to the response.
    pub purge_seq: u64,
    pub request_time: i64,
    pub method: Vec<u8>,
    pub request_cc: CacheControl,
    pub has_authorization: bool,
    /// The request carried Cookie (configuration `cookie_requests`).
    pub has_cookie: bool,
    /// A plain GET that may fill the key for others (lead coalescing, mark hit-for-miss):
    /// not HEAD, Range, a conditional or `no-store` request, whose answer is not the
    /// shared one.
    pub fills: bool,
    /// Why the cache was bypassed (Cache-Status `detail`), when it was.
    pub detail: Option<&'static str>,
    /// Unkeyed request header fields to remove before the origin sees the request
    /// (`unkeyed_headers.action: "strip"`).
    pub strip: Vec<String>,
    /// The request's values of every header, for Vary (captured lazily by the adapter).
    pub outcome: Outcome,
    /// Unsafe method: a non-error response invalidates the key (RFC 9111 §4.4).
    pub invalidate: bool,
    /// The request's scheme and host, and its values of the configured key headers, to key
    /// same-origin `Location` / `Content-Location` targets of an invalidation.
    pub origin: (Vec<u8>, Vec<u8>),
    pub key_header_values: Vec<(String, Vec<u8>)>,
    /// What answers an origin error instead of the error itself, if anything.
    pub fallback: StaleFallback,
    /// A stale entry being revalidated (RFC 9111 §4.3.1): the adapter adds `validators` to the
    /// forwarded request; a 304 then refreshes and serves the entry.
    pub revalidating: Option<Box<Entry>>,
    pub validators: Vec<(String, Vec<u8>)>,
}

/// What answers an origin error (or Envoy's own, e.g. a connect failure) on a request that
/// found a stale entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StaleFallback {
    /// Nothing: the error goes to the client.
    None,
    /// Any 5xx is answered with the stored response (RFC 5861 §4 stale-if-error), as a ready
    /// reply: status, headers, body.
    OnError(Reply),
    /// Only an error Envoy generated because the origin could not be reached is answered
    /// with the stored response: RFC 9111 §4.2.4's disconnected cache
    /// (`serve_stale_when_unreachable`).
    WhenUnreachable(Reply),
    /// `serve_stale_when_unreachable` with a stale entry that forbids serving stale
    /// (must-revalidate, proxy-revalidate, no-cache, s-maxage): an unreachable origin is
    /// answered with 504 (RFC 9111 §4.2.4, §5.2.2.2).
    TimeoutWhenUnreachable,
}

impl StaleFallback {
    /// The stored reply it would answer with, if any.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            StaleFallback::OnError(reply) | StaleFallback::WhenUnreachable(reply) => Some(reply),
            StaleFallback::None | StaleFallback::TimeoutWhenUnreachable => None,
        }
    }
}

pub(super) fn is_unsafe(method: &[u8]) -> bool {
    !matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// The stored response's freshness inputs: its governing directives (a targeted field of
/// ours, RFC 9213, else Cache-Control and Expires).
pub(super) fn stored_view(config: &Config, entry: &Entry) -> Stored {
    let (cc, expires_applies) = crate::targeted::governing(&config.targeted_fields, |name| {
        entry.headers.field_lines(name).collect()
    });
    Stored {
        status: entry.status,
        request_time: entry.request_time,
        response_time: entry.response_time,
        date: entry.header("date").and_then(http_date::parse),
        age: crate::freshness::parse_age(entry.header("age")),
        expires: entry
            .header("expires")
            .filter(|_| expires_applies)
            .map(http_date::parse),
        last_modified: entry.header("last-modified").and_then(http_date::parse),
        cc,
        purged_soft: false,
    }
}

/// The header fields of a reply from a stored response: the stored ones with our own `Age`
/// (RFC 9111 §5.1) and `Cache-Status` (RFC 9211) in place of any stored copies, without the
/// targeted fields configured to be stripped (RFC 9213: they were meant for this cache).
pub(super) fn reply_headers(
    config: &Config,
    stored: Vec<(String, Vec<u8>)>,
    age: u64,
    cache_status: String,
) -> Vec<(String, Vec<u8>)> {
    let mut headers = stored;
    headers.retain(|(k, _)| {
        k != "age"
            && k != "cache-status"
            && !NOT_STORED.contains(&k.as_str())
            && !config.strip_targeted_fields.contains(k)
    });
    headers.push(("age".into(), age.to_string().into_bytes()));
    headers.push(("cache-status".into(), cache_status.into_bytes()));
    headers
}

#[cfg(test)]
mod tests;
