//! The cache's decisions for one exchange, over a request view and the CAS store: what to
//! do with a request (serve, 304, 504, forward) and whether and how to store the response.

use edgewise_support::breaker_state::identity_hash;
use edgewise_support::request::RequestView;
use edgewise_support::store::CasStore;

use crate::cache_control::CacheControl;
use crate::conditional::{not_modified, refresh_headers};
use crate::config::{Config, UnkeyedAction};
use crate::entry::Entry;
use crate::freshness::{current_age, lifetime, usable, Stored, Use};
use crate::key::{primary_key, variant_hash, vary_fields, vary_matches, vary_values};
use crate::status::{cache_status, Outcome};
use crate::storable::{self, CookieRequests, Exchange, NotStorable};
use crate::{http_date, storage};

/// Header fields never stored or replayed (hop-by-hop, RFC 9110 §7.6.1; framing; Envoy's own;
/// and one client's rate-limit state — the RateLimit fields of
/// draft-ietf-httpapi-ratelimit-headers, their X-RateLimit forms, Retry-After (RFC 9110
/// §10.2.3) and Envoy's x-envoy-ratelimited — which a shared cache in front of a limiter
/// (a shield) would otherwise serve to every other client).
const NOT_STORED: [&str; 18] = [
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

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
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

/// What a purge request asks for, from its fields (see the constants above): tags (split
/// on spaces and commas), a path prefix or the whole host of its `:authority`, everything;
/// else its URL. `x-purge-soft: 1` makes it soft.
fn purge_kind(request: &mut impl RequestView, key: &[u8], host: &[u8]) -> PurgeKind {
    let flag =
        |v: Option<Vec<u8>>| v.is_some_and(|v| matches!(v.trim_ascii(), b"1" | b"true" | b"yes"));
    let soft = flag(request.header(PURGE_SOFT));
    let host = crate::purge::host_only(host);
    let mut targets = Vec::new();
    let tags: Vec<Vec<u8>> = request
        .header_values(PURGE_TAG)
        .iter()
        .flat_map(|v| v.split(|b| *b == b' ' || *b == b',').map(<[u8]>::to_vec))
        .filter(|t| !t.is_empty())
        .collect();
    if tags.len() > MAX_PURGE_TAGS {
        return PurgeKind::Invalid("too many tags in one purge (at most 32)");
    }
    for tag in tags {
        if tag.len() > crate::purge::MAX_VALUE {
            return PurgeKind::Invalid("a tag longer than 256 bytes");
        }
        targets.push(crate::purge::Target::Tag(tag));
    }
    if let Some(prefix) = request.header(PURGE_PREFIX) {
        if prefix.len() > crate::purge::MAX_VALUE || !prefix.starts_with(b"/") {
            return PurgeKind::Invalid("a prefix must be a path of at most 256 bytes");
        }
        targets.push(crate::purge::Target::Prefix {
            host: host.clone(),
            prefix,
        });
    }
    if flag(request.header(PURGE_HOST)) {
        targets.push(crate::purge::Target::Host(host.clone()));
    }
    if flag(request.header(PURGE_ALL)) {
        targets.push(crate::purge::Target::All);
    }
    match (targets.is_empty(), soft) {
        (true, false) => PurgeKind::Url,
        (true, true) => PurgeKind::Rules {
            targets: vec![crate::purge::Target::Key(key.to_vec())],
            soft,
        },
        (false, _) => PurgeKind::Rules { targets, soft },
    }
}

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

/// How an origin error (a 5xx with a body, the origin's or Envoy's own) is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum ErrorAnswer<'a> {
    /// As the origin (or Envoy) answered it.
    Origin,
    /// With the stored response (its body replaces the error's at its end).
    Stale(&'a Reply),
    /// With 504: the origin could not be reached and the entry forbids serving stale.
    GatewayTimeout,
}

/// RFC 5861 §4 and RFC 9111 §4.2.4: how `fallback` answers an origin error; `unreachable`
/// tells whether Envoy generated the error because the origin could not be reached (asked
/// only when it matters: it costs the adapter a host call).
pub fn error_answer(
    fallback: &StaleFallback,
    unreachable: impl FnOnce() -> bool,
) -> ErrorAnswer<'_> {
    match fallback {
        StaleFallback::None => ErrorAnswer::Origin,
        StaleFallback::OnError(reply) => ErrorAnswer::Stale(reply),
        StaleFallback::WhenUnreachable(reply) => match unreachable() {
            true => ErrorAnswer::Stale(reply),
            false => ErrorAnswer::Origin,
        },
        StaleFallback::TimeoutWhenUnreachable => match unreachable() {
            true => ErrorAnswer::GatewayTimeout,
            false => ErrorAnswer::Origin,
        },
    }
}

fn is_unsafe(method: &[u8]) -> bool {
    !matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// The stored response's freshness inputs: its governing directives (a targeted field of
/// ours, RFC 9213, else Cache-Control and Expires).
fn stored_view(config: &Config, entry: &Entry) -> Stored {
    let (cc, expires_applies) = crate::targeted::governing(&config.targeted_fields, |name| {
        entry
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
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
fn reply_headers(
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

/// Request header fields that make a request conditional (RFC 9110 §13.1).
const CONDITIONALS: [&str; 5] = [
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
];

/// Decides a request at `now` (seconds since the epoch).
pub fn on_request(
    config: &Config,
    store: &impl CasStore,
    request: &mut impl RequestView,
    now: i64,
) -> RequestDecision {
    decide(config, store, request, now, false)
}

/// Decides a request at `now`; `has_body` when the request's headers did not end the stream
/// (a body follows, even without Content-Length on HTTP/2).
pub fn decide(
    config: &Config,
    store: &impl CasStore,
    request: &mut impl RequestView,
    now: i64,
    has_body: bool,
) -> RequestDecision {
    let method = request.header(":method").unwrap_or_default();
    let scheme = request
        .header(":scheme")
        .unwrap_or_else(|| b"http".to_vec());
    let host = request.header(":authority").unwrap_or_default();
    let path = request.header(":path").unwrap_or_default();
    // Keyed and varied fields are read as all their lines combined (RFC 9110 §5.3), as the
    // origin reads them: a repeated field never stores one client's answer under another's.
    let key = primary_key(&config.key, &scheme, &host, &path, &mut |name| {
        request.combined(name)
    });
    let key_hash = identity_hash(&key);
    let mut request_cc = CacheControl::parse(request.combined("cache-control").as_deref());
    // RFC 9111 §5.4: Pragma: no-cache counts only without Cache-Control.
    if request.header("cache-control").is_none()
        && request
            .header("pragma")
            .is_some_and(|p| p.eq_ignore_ascii_case(b"no-cache"))
    {
        request_cc.no_cache = true;
    }
    let has_authorization = request.header("authorization").is_some();
    let has_cookie = request.header("cookie").is_some();
    // Only a cache that takes purges can have purge rules (one small read per request).
    let seqs = if config.purge.is_some() || config.fleet.is_some() {
        crate::purge::seq_state(store)
    } else {
        crate::purge::SeqState::default()
    };
    // What this request stores records (within a fleet settle window, an older number).
    let purge_seq = seqs.for_store(now);
    let pending = |outcome| Pending {
        key: key.clone(),
        key_hash,
        purge_seq,
        request_time: now,
        method: method.clone(),
        request_cc: request_cc.clone(),
        has_authorization,
        has_cookie,
        fills: false,
        detail: None,
        strip: Vec::new(),
        outcome,
        invalidate: false,
        origin: (scheme.clone(), host.clone()),
        key_header_values: Vec::new(),
        fallback: StaleFallback::None,
        revalidating: None,
        validators: Vec::new(),
    };
    if let Some(purge) = config.purge.as_ref().filter(|p| p.method == method) {
        let authorized = request
            .header(&purge.token_header)
            .is_some_and(|t| same_secret(&t, &purge.token));
        return RequestDecision::Purge {
            key_hash,
            authorized,
            kind: purge_kind(request, &key, &host),
        };
    }
    if method != b"GET" && method != b"HEAD" {
        let key_header_values = config
            .key
            .headers
            .iter()
            .filter_map(|name| Some((name.clone(), request.combined(name)?)))
            .collect();
        return RequestDecision::Forward(Box::new(Pending {
            invalidate: is_unsafe(&method),
            key_header_values,
            ..pending(Outcome::Bypass)
        }));
    }
    // Requests whose answer may not be the shared one go to the origin untouched, and their
    // responses are not stored: a body on GET/HEAD (RFC 9110 §9.3.1: no defined meaning, but
    // an origin may act on it), Cookie under `cookie_requests: "bypass"`, and unkeyed header
    // fields an origin may reflect (web cache poisoning) under `unkeyed_headers: "bypass"`.
    let bypass = |detail| {
        RequestDecision::Forward(Box::new(Pending {
            detail: Some(detail),
            ..pending(Outcome::Bypass)
        }))
    };
    let has_body = has_body
        || request.header("transfer-encoding").is_some()
        || request
            .header("content-length")
            .is_some_and(|n| n.trim_ascii() != b"0");
    if has_body {
        return bypass("request-body");
    }
    if has_cookie && config.cookie_requests == CookieRequests::Bypass {
        return bypass("cookie");
    }
    let mut strip = Vec::new();
    for name in &config.unkeyed.names {
        if request.header(name).is_some() {
            match config.unkeyed.action {
                UnkeyedAction::Bypass => return bypass("unkeyed-header"),
                UnkeyedAction::Strip => strip.push(name.clone()),
            }
        }
    }
    let client_conditional = CONDITIONALS.iter().any(|c| request.header(c).is_some());
    let fills = method == b"GET"
        && !client_conditional
        && !request_cc.no_store
        && request.header("range").is_none();
    let pending = |outcome| Pending {
        fills,
        strip: strip.clone(),
        ..pending(outcome)
    };
    let usable_entry = find_variant(config, store, key_hash, &key, &mut |name| {
        request.combined(name)
    });
    // Purges (purge.rs): the rules numbered from the entry's own request on apply to it —
    // a hard one makes it a miss, a soft one stale.
    let (usable_entry, purged_soft) = match usable_entry {
        Some((found, entry)) if entry.purge_seq < seqs.seq => {
            match crate::purge::load(store).state(&entry, entry.purge_seq) {
                crate::purge::PurgeState::Hard => (None, false),
                crate::purge::PurgeState::Soft => (Some((found, entry)), true),
                crate::purge::PurgeState::Untouched => (Some((found, entry)), false),
            }
        }
        other => (other, false),
    };
    let Some((found, mut entry)) = usable_entry else {
        if request_cc.only_if_cached {
            return RequestDecision::GatewayTimeout {
                headers: vec![(
                    "cache-status".into(),
                    cache_status(
                        &config.cache_status,
                        Outcome::Miss,
                        None,
                        false,
                        Some("only-if-cached"),
                    )
                    .into_bytes(),
                )],
            };
        }
        return RequestDecision::Forward(Box::new(pending(Outcome::Miss)));
    };
    let mut view = stored_view(config, &entry);
    view.purged_soft = purged_soft;
    let decision = usable(&view, &request_cc, &config.heuristic, now);
    if !matches!(
        decision,
        Use::Fresh | Use::StaleAllowed | Use::StaleWhileRevalidate
    ) {
        if request_cc.only_if_cached {
            return RequestDecision::GatewayTimeout {
                headers: vec![(
                    "cache-status".into(),
                    cache_status(
                        &config.cache_status,
                        Outcome::Stale,
                        None,
                        false,
                        Some("only-if-cached"),
                    )
                    .into_bytes(),
                )],
            };
        }
        // RFC 5861 §4: keep the stale entry to answer an origin error within the window (the
        // origin's or request's stale-if-error, else the configured default; never when
        // must-revalidate, proxy-revalidate or s-maxage forbid stale).
        let age = current_age(&view, now);
        let staleness = age.saturating_sub(lifetime(&view, &config.heuristic).seconds());
        let forbidden =
            view.cc.must_revalidate || view.cc.proxy_revalidate || view.cc.s_maxage.is_some();
        // The configured window only for responses the origin made explicitly cacheable.
        let window = match decision {
            Use::Validate {
                stale_if_error: Some(window),
            } => Some(window),
            _ if !forbidden && config.stale_if_error > 0 && view.explicitly_cacheable() => {
                Some(config.stale_if_error)
            }
            _ => None,
        };
        let stale_reply = |detail: &str| {
            let status = cache_status(
                &config.cache_status,
                Outcome::StaleServed,
                None,
                false,
                Some(detail),
            );
            let headers = reply_headers(config, entry.headers.clone(), age, status);
            (entry.status, headers, entry.body.clone())
        };
        // RFC 9111 §4.2.4: a disconnected cache may serve stale, except what must not be
        // served without validation (§5.2.2.2, §5.2.2.4, §5.2.2.8, §5.2.2.10): 504.
        let fallback = match window.filter(|w| staleness <= *w) {
            Some(_) => StaleFallback::OnError(stale_reply("stale-if-error")),
            None if !config.serve_stale_when_unreachable => StaleFallback::None,
            None if forbidden || view.cc.no_cache => StaleFallback::TimeoutWhenUnreachable,
            None => StaleFallback::WhenUnreachable(stale_reply("origin-unreachable")),
        };
        // RFC 9111 §4.3.1: revalidate with the stored validators, unless the client sent its
        // own conditionals (then its request goes as it is and a 200 replaces the entry).
        let validators = if client_conditional {
            Vec::new()
        } else {
            validators(&entry)
        };
        return RequestDecision::Forward(Box::new(Pending {
            fallback,
            revalidating: (!validators.is_empty()).then(|| Box::new(entry)),
            validators,
            ..pending(Outcome::Stale)
        }));
    }
    storage::touch(store, &config.layout, &found, now as u64);
    let age = current_age(&view, now);
    let ttl = lifetime(&view, &config.heuristic).seconds() as i64 - age as i64;
    let detail = match decision {
        Use::StaleAllowed => Some("max-stale"),
        Use::StaleWhileRevalidate => Some("stale-while-revalidate"),
        _ => None,
    };
    // RFC 5861 §3: served stale now, refreshed in the background — conditionally when the
    // entry has validators, so a 304 refreshes it without a body.
    let refresh = (decision == Use::StaleWhileRevalidate).then(|| {
        let validators = validators(&entry);
        Box::new(Pending {
            method: b"GET".to_vec(),
            fills: true,
            revalidating: (!validators.is_empty()).then(|| Box::new(entry.clone())),
            validators,
            ..pending(Outcome::Stale)
        })
    });
    // Client conditionals answered from the stored validators (RFC 9110 §13.2.2).
    let if_none_match = request.header("if-none-match");
    let if_modified_since = request
        .header("if-modified-since")
        .and_then(|d| http_date::parse(&d));
    let unchanged = (if_none_match.is_some() || if_modified_since.is_some())
        && not_modified(
            if_none_match.as_deref(),
            if_modified_since,
            entry.header("etag"),
            view.last_modified,
        );
    // RFC 9110 §14.2: one byte range of a stored complete 200 is answered with 206 and its
    // Content-Range (a repeated Range field, several ranges or If-Range not holding: the
    // whole response, which a cache may always send).
    let wanted = if unchanged || method == b"HEAD" {
        None
    } else {
        let ranges = request.header_values("range");
        match (ranges.as_slice(), entry.status) {
            ([range], 200) => {
                crate::range::single_range(range, entry.body.len() as u64).filter(|_| {
                    crate::range::if_range_holds(
                        request.header("if-range").as_deref(),
                        entry.header("etag"),
                        view.last_modified,
                    )
                })
            }
            _ => None,
        }
    };
    // The entry's fields move into the reply (only its status and body are read after).
    let headers = reply_headers(
        config,
        std::mem::take(&mut entry.headers),
        age,
        cache_status(&config.cache_status, Outcome::Hit, Some(ttl), false, detail),
    );
    if unchanged {
        return RequestDecision::Serve {
            status: 304,
            headers,
            body: Vec::new(),
            refresh,
        };
    }
    if method == b"HEAD" {
        return RequestDecision::Serve {
            status: entry.status,
            headers,
            body: Vec::new(),
            refresh,
        };
    }
    if let Some((first, last)) = wanted {
        let len = entry.body.len() as u64;
        let mut headers = headers;
        headers.push((
            "content-range".into(),
            crate::range::content_range(first, last, len).into_bytes(),
        ));
        let body = entry
            .body
            .get(first as usize..=last as usize)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        return RequestDecision::Serve {
            status: 206,
            headers,
            body,
            refresh,
        };
    }
    RequestDecision::Serve {
        status: entry.status,
        headers,
        body: entry.body,
        refresh,
    }
}

/// RFC 9111 §4.1: the stored response for `key` whose Vary fields match the request. The
/// URL's own slot holds one variant; when the request wants another, its slot follows from
/// that entry's Vary fields and generation.
fn find_variant(
    config: &Config,
    store: &impl CasStore,
    key_hash: u64,
    key: &[u8],
    header: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Option<(storage::Found, Entry)> {
    let (found, entry) = storage::lookup(store, &config.layout, key_hash)
        .and_then(|found| Entry::decode(&found.entry).map(|e| (found, e)))
        .filter(|(_, e)| e.key == key)?;
    let values = vary_values(&entry.vary_fields, header);
    if values == entry.vary_values {
        return Some((found, entry));
    }
    if entry.vary_fields.is_empty() {
        return None;
    }
    let generation = entry.generation;
    let slot = variant_hash(key, generation, &values);
    storage::lookup(store, &config.layout, slot)
        .and_then(|found| Entry::decode(&found.entry).map(|e| (found, e)))
        .filter(|(_, e)| {
            e.key == key
                && e.generation == generation
                && vary_matches(&e.vary_fields, &e.vary_values, header)
        })
}

/// Where `entry` (a response for the URL `primary_hash` keys) goes, with its generation set:
/// - the URL's own slot when it is empty, holds another URL, or holds a response with other
///   Vary fields (a new generation: earlier variants become unreachable);
/// - the URL's own slot, keeping the generation, when it replaces the same variant;
/// - a variant slot keyed by the generation of the entry in the URL's slot otherwise.
pub fn placement(
    config: &Config,
    store: &impl CasStore,
    primary_hash: u64,
    entry: &mut Entry,
    random: &mut dyn FnMut() -> u64,
) -> u64 {
    if entry.vary_fields.is_empty() {
        // No variants: the URL's own slot, and a generation no variant slot uses (any
        // variants of an earlier Vary response become unreachable).
        entry.generation = random() | 1;
        return primary_hash;
    }
    let current = storage::lookup(store, &config.layout, primary_hash)
        .and_then(|found| Entry::decode(&found.entry))
        .filter(|e| e.key == entry.key && e.vary_fields == entry.vary_fields);
    match current {
        Some(current) if current.vary_values != entry.vary_values => {
            entry.generation = current.generation;
            variant_hash(&entry.key, current.generation, &entry.vary_values)
        }
        Some(current) => {
            entry.generation = current.generation;
            primary_hash
        }
        None => {
            entry.generation = random() | 1;
            primary_hash
        }
    }
}

/// Stores `entry` for the URL `primary_hash` keys, among its variants (see `placement`).
pub fn store(
    config: &Config,
    store: &impl CasStore,
    primary_hash: u64,
    mut entry: Entry,
    now: u64,
    random: &mut dyn FnMut() -> u64,
) -> storage::Insert {
    let slot = placement(config, store, primary_hash, &mut entry, random);
    storage::insert(store, &config.layout, slot, &entry.encode(), now, random)
}

/// RFC 9111 §4.3.1: the conditional header fields that validate `entry` — If-None-Match with
/// its entity tag, and If-Modified-Since with its Last-Modified date.
pub fn validators(entry: &Entry) -> Vec<(String, Vec<u8>)> {
    let mut fields = Vec::new();
    if let Some(etag) = entry.header("etag") {
        fields.push(("if-none-match".to_string(), etag.to_vec()));
    }
    if let Some(last_modified) = entry.header("last-modified") {
        if http_date::parse(last_modified).is_some() {
            fields.push(("if-modified-since".to_string(), last_modified.to_vec()));
        }
    }
    fields
}

/// What a 304 to our revalidation does (RFC 9111 §4.3.3–§4.3.4).
#[derive(Debug, PartialEq, Eq)]
pub struct Revalidated {
    /// The entry refreshed with the 304's fields, to store; None when the refreshed entry
    /// would not be storable (the 304 says `private` or `no-store`, changes `Vary`, or the
    /// revalidating request's credentials do not allow sharing it): the entry is dropped.
    pub store: Option<Entry>,
    /// The full response for the revalidating client: the refreshed entry, plus the 304's
    /// own fields the entry does not keep (its Set-Cookie).
    pub reply: Reply,
}

/// RFC 9111 §4.3.3–§4.3.4: the origin answered our revalidation with 304. The stored header
/// fields are updated from the 304, except fields personal to the revalidating client
/// (Set-Cookie, unless `cache_set_cookie`), which reach only that client. The refreshed
/// entry passes the same storability rules as a new response (§3). None when this exchange
/// was not a revalidation of ours.
pub fn revalidated(
    config: &Config,
    pending: &Pending,
    not_modified_headers: &[(String, Vec<u8>)],
    now: i64,
) -> Option<Revalidated> {
    let stored = pending.revalidating.as_deref()?;
    let personal = |name: &str| name == "set-cookie" && !config.cache_set_cookie;
    let (refreshed, keep) = freshened(config, pending, stored, not_modified_headers, |_| true, now);
    let view = stored_view(config, &refreshed);
    let age = current_age(&view, now);
    let ttl = lifetime(&view, &config.heuristic).seconds() as i64 - age as i64;
    let mut status_value =
        cache_status(&config.cache_status, Outcome::Stale, Some(ttl), keep, None);
    status_value.push_str("; fwd-status=304");
    let mut headers = reply_headers(config, refreshed.headers.clone(), age, status_value);
    headers.extend(
        not_modified_headers
            .iter()
            .filter(|(k, _)| personal(k))
            .cloned(),
    );
    let body = if pending.method == b"HEAD" {
        Vec::new()
    } else {
        refreshed.body.clone()
    };
    let reply = (refreshed.status, headers, body);
    Some(Revalidated {
        store: keep.then_some(refreshed),
        reply,
    })
}

/// RFC 9111 §4.3.4: `stored` with its header fields updated from a response that validated
/// it (a 304, or a 206 of the same representation) — every field the response carries
/// replaces the stored one, except pseudo-headers, fields never stored, fields the
/// response's Connection nominates, Set-Cookie (unless `cache_set_cookie`: it is personal to
/// the revalidating client) and those `take` refuses — with fresh times. And whether it may
/// be kept (§3): still a response a shared cache may store, for the same variant (other
/// Vary fields describe another resource shape).
fn freshened(
    config: &Config,
    pending: &Pending,
    stored: &Entry,
    response_headers: &[(String, Vec<u8>)],
    take: impl Fn(&str) -> bool,
    now: i64,
) -> (Entry, bool) {
    let nominated = connection_nominated(response_headers);
    let update: Vec<(String, Vec<u8>)> = response_headers
        .iter()
        .filter(|(k, _)| !k.starts_with(':') && !NOT_STORED.contains(&k.as_str()))
        .filter(|(k, _)| !nominated.iter().any(|n| n == k))
        .filter(|(k, _)| k != "set-cookie" || config.cache_set_cookie)
        .filter(|(k, _)| take(k))
        .cloned()
        .collect();
    let refreshed = Entry {
        headers: refresh_headers(&stored.headers, &update),
        request_time: pending.request_time,
        response_time: now,
        // Revalidated after any purge that made it stale: those no longer apply.
        purge_seq: pending.purge_seq,
        ..stored.clone()
    };
    let vary = refreshed
        .headers
        .iter()
        .find(|(k, _)| k == "vary")
        .map(|(_, v)| v.as_slice());
    let same_variant = vary_fields(vary).is_some_and(|fields| fields == stored.vary_fields);
    let check = Pending {
        method: b"GET".to_vec(),
        outcome: Outcome::Stale,
        ..pending.clone()
    };
    let keep =
        same_variant && storable(config, &check, refreshed.status, &refreshed.headers).is_ok();
    (refreshed, keep)
}

/// The strong entity tag of a header list, when it has one (RFC 9110 §8.8.3: not `W/`).
fn strong_etag(headers: &[(String, Vec<u8>)]) -> Option<&[u8]> {
    let (_, value) = headers.iter().find(|(k, _)| k == "etag")?;
    let value = value.trim_ascii();
    (value.len() >= 2 && value.starts_with(b"\"") && value.ends_with(b"\"")).then_some(value)
}

/// RFC 9111 §4.3.4 with §3.4: our revalidation of a stored 200 came back as a 206 (a Range
/// request; the origin sent part of the representation instead of a 304). When its strong
/// validator is the stored one's (strong comparison, RFC 9110 §8.8.3.2), it describes the
/// same representation, so the stored header fields are updated from it — freshness
/// included — except the fields that describe this part (`Content-Range`, its
/// `Content-Length`, a multipart `Content-Type`) and, as for a 304, fields personal to the
/// client. The 206 itself goes to the client unchanged. None when this was no revalidation
/// of a stored 200, the validators differ (another representation: the stale entry stays as
/// it was), or the updated entry would not be storable.
pub fn freshened_by_partial(
    config: &Config,
    pending: &Pending,
    partial_headers: &[(String, Vec<u8>)],
    now: i64,
) -> Option<Entry> {
    let stored = pending.revalidating.as_deref()?;
    if stored.status != 200 || strong_etag(partial_headers)? != strong_etag(&stored.headers)? {
        return None;
    }
    let multipart = partial_headers.iter().any(|(k, v)| {
        k == "content-type" && v.trim_ascii_start().starts_with(b"multipart/byteranges")
    });
    // The part's own Content-Range and Content-Length stay out (refresh_headers keeps the
    // stored ones); so does a multipart Content-Type.
    let (refreshed, keep) = freshened(
        config,
        pending,
        stored,
        partial_headers,
        |k| k != "content-type" || !multipart,
        now,
    );
    keep.then_some(refreshed)
}

/// Request header fields a background refresh does not copy from the client's request:
/// hop-by-hop and framing (RFC 9110 §7.6.1), the client's own conditionals and cache
/// directives (the refresh asks for the entry, not for what this client wanted), its id.
const NOT_REFRESHED: [&str; 17] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    "content-length",
    "expect",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
    "cache-control",
    "pragma",
];

/// RFC 5861 §3: the request a background refresh sends — a GET for the same target with the
/// client's other header fields (so Vary selects the same variant) and the entry's
/// validators (RFC 9111 §4.3.1).
pub fn refresh_request(
    client_request: &[(String, Vec<u8>)],
    refresh: &Pending,
) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = vec![(":method".into(), b"GET".to_vec())];
    headers.extend(
        client_request
            .iter()
            .filter(|(k, _)| {
                k != ":method" && k != "x-request-id" && !NOT_REFRESHED.contains(&k.as_str())
            })
            .cloned(),
    );
    headers.extend(refresh.validators.iter().cloned());
    headers
}

/// What the response to a background refresh does to the stored entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// Store this: the entry refreshed by a 304 (RFC 9111 §4.3.4), or the new response.
    Store(Box<Entry>),
    /// The origin now answers with something not storable: drop the stale entry so it is
    /// not served again.
    Remove,
    /// An error, a reset or a timeout: the stale entry stays as it is (its windows still
    /// bound how long it is served).
    Keep,
}

/// Decides what a background refresh's response (`status` 0: none, the call failed) does.
/// `body` is None when the response's body was over the entry limit.
pub fn refresh_outcome(
    config: &Config,
    refresh: &Pending,
    status: u16,
    headers: &[(String, Vec<u8>)],
    body: Option<Vec<u8>>,
    now: i64,
    request: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Refreshed {
    if status == 304 {
        return match revalidated(config, refresh, headers, now) {
            Some(Revalidated {
                store: Some(entry), ..
            }) => Refreshed::Store(Box::new(entry)),
            Some(Revalidated { store: None, .. }) => Refreshed::Remove,
            None => Refreshed::Keep,
        };
    }
    if status == 0 || status >= 500 {
        return Refreshed::Keep;
    }
    if storable(config, refresh, status, headers).is_err() {
        return Refreshed::Remove;
    }
    match body
        .and_then(|body| entry_for(&config.tags, refresh, status, headers, body, now, request))
    {
        Some(entry) => Refreshed::Store(Box::new(entry)),
        None => Refreshed::Remove,
    }
}

/// Whether a forwarded response may be stored (RFC 9111 §3), given its headers.
pub fn storable(
    config: &Config,
    pending: &Pending,
    status: u16,
    headers: &[(String, Vec<u8>)],
) -> Result<(), NotStorable> {
    if pending.outcome == Outcome::Bypass {
        return Err(NotStorable::Method);
    }
    if headers.iter().any(|(_, v)| std::str::from_utf8(v).is_err()) {
        return Err(NotStorable::HeaderNotText);
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    // RFC 9213 §2.2: a targeted field of ours replaces Cache-Control and Expires.
    let (response_cc, expires_applies) =
        crate::targeted::governing(&config.targeted_fields, |name| {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
                .collect()
        });
    storable::check(&Exchange {
        method: &pending.method,
        status,
        request_cc: &pending.request_cc,
        response_cc: &response_cc,
        request_has_authorization: pending.has_authorization,
        request_has_cookie: pending.has_cookie,
        has_expires: expires_applies && get("expires").is_some(),
        has_validator: get("etag").is_some()
            || get("last-modified").is_some_and(|d| http_date::parse(d).is_some()),
        vary: get("vary"),
        has_set_cookie: get("set-cookie").is_some(),
        cache_set_cookie: config.cache_set_cookie,
        default_ttl: config.heuristic.default_ttl > 0,
        cookie_requests: config.cookie_requests,
    })
}

/// RFC 9111 §3.1 (RFC 9110 §7.6.1): the fields a response's `Connection` header nominates
/// are hop-by-hop and are not stored. Lowercased names from every Connection line.
fn connection_nominated(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k == "connection")
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Builds the entry to store from a complete response.
/// None when it cannot be stored: `Vary: *`, or more or longer tags than `tags` allows.
pub fn entry_for(
    tags: &crate::config::Tags,
    pending: &Pending,
    status: u16,
    headers: &[(String, Vec<u8>)],
    body: Vec<u8>,
    now: i64,
    request: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Option<Entry> {
    let entry_tags = tags.of(headers)?;
    let vary = headers
        .iter()
        .find(|(k, _)| k == "vary")
        .map(|(_, v)| v.as_slice());
    let fields = vary_fields(vary)?;
    let values = vary_values(&fields, request);
    let nominated = connection_nominated(headers);
    Some(Entry {
        key: pending.key.clone(),
        status,
        headers: headers
            .iter()
            .filter(|(k, _)| {
                let tag_field = tags.strip && tags.headers.contains(k);
                !k.starts_with(':')
                    && !NOT_STORED.contains(&k.as_str())
                    && !nominated.iter().any(|n| n == k)
                    && !tag_field
            })
            .cloned()
            .collect(),
        request_time: pending.request_time,
        response_time: now,
        generation: 0,
        vary_fields: fields,
        vary_values: values,
        body,
        tags: entry_tags,
        purge_seq: pending.purge_seq,
    })
}

/// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI.
pub fn invalidates(pending: &Pending, status: u16) -> bool {
    pending.invalidate && (200..400).contains(&status)
}

/// RFC 9111 §4.4: the key hashes a non-error response to an unsafe method invalidates — the
/// target URI, and the URIs in `Location` and `Content-Location` when they have the same
/// origin (a path, or an absolute URI with the request's scheme and host).
pub fn invalidated_keys(
    config: &Config,
    pending: &Pending,
    status: u16,
    response_headers: &[(String, Vec<u8>)],
) -> Vec<u64> {
    if !invalidates(pending, status) {
        return Vec::new();
    }
    let (scheme, host) = &pending.origin;
    let mut keys = vec![pending.key_hash];
    for field in ["location", "content-location"] {
        let Some((_, value)) = response_headers.iter().find(|(k, _)| k == field) else {
            continue;
        };
        let mut origin_form = scheme.clone();
        origin_form.extend_from_slice(b"://");
        origin_form.extend_from_slice(host);
        let path = if value.starts_with(b"/") && !value.starts_with(b"//") {
            value.as_slice()
        } else if value.len() > origin_form.len()
            && value[..origin_form.len()].eq_ignore_ascii_case(&origin_form)
            && value[origin_form.len()] == b'/'
        {
            &value[origin_form.len()..]
        } else {
            continue; // another origin, or a relative reference we do not resolve
        };
        let key = primary_key(&config.key, scheme, host, path, &mut |name| {
            pending
                .key_header_values
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        });
        keys.push(identity_hash(&key));
    }
    keys
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use edgewise_support::store::MemoryStore;

    fn request(extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        let mut headers: Vec<(String, Vec<u8>)> = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", "/doc"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        headers.sort();
        headers
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Stores a 200 for /doc at t=1000 and returns the forwarded decision at `at`.
    fn stale_decision(
        config: &Config,
        store: &MemoryStore,
        response: &[(&str, &str)],
        at: i64,
        extra: &[(&str, &str)],
    ) -> Pending {
        store_doc(config, store, response);
        match on_request(config, store, &mut request(extra), at) {
            RequestDecision::Forward(pending) => *pending,
            other => panic!("expected a forward at {at}, got {other:?}"),
        }
    }

    /// Stores a 200 with body "body" for /doc at t=1000.
    fn store_doc(config: &Config, store: &MemoryStore, response: &[(&str, &str)]) {
        let RequestDecision::Forward(pending) = on_request(config, store, &mut request(&[]), 1000)
        else {
            panic!("first request must be forwarded");
        };
        let headers = pairs(response);
        storable(config, &pending, 200, &headers).unwrap();
        let entry = entry_for(
            &config.tags,
            &pending,
            200,
            &headers,
            b"body".to_vec(),
            1000,
            &mut |_| None,
        )
        .unwrap();
        let mut seed = 7u64;
        let inserted = storage::insert(
            store,
            &config.layout,
            pending.key_hash,
            &entry.encode(),
            1000,
            &mut || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                seed
            },
        );
        assert!(matches!(inserted, storage::Insert::Stored { .. }));
    }

    fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    /// Stores a response to `client` for /doc at t=1000 through `cache::store`.
    fn store_variant(
        config: &Config,
        store_: &MemoryStore,
        client: &[(&str, &str)],
        response: &[(&str, &str)],
        body: &[u8],
    ) {
        // no-cache: forwarded whatever is stored, as a replacement would be.
        let mut request = request(&[client, &[("cache-control", "no-cache")]].concat());
        let RequestDecision::Forward(pending) = on_request(config, store_, &mut request, 1000)
        else {
            panic!("must be forwarded");
        };
        // As the adapter reads them: every line of a varied field.
        let mut header = |name: &str| edgewise_support::request::combined_in(&request, name);
        let entry = entry_for(
            &config.tags,
            &pending,
            200,
            &pairs(response),
            body.to_vec(),
            1000,
            &mut header,
        )
        .unwrap();
        static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(99);
        let mut seed = SEED.fetch_add(7919, std::sync::atomic::Ordering::Relaxed);
        let inserted = store(config, store_, pending.key_hash, entry, 1000, &mut || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed
        });
        assert!(matches!(inserted, storage::Insert::Stored { .. }));
    }

    fn served_body(
        config: &Config,
        store_: &MemoryStore,
        client: &[(&str, &str)],
    ) -> Option<Vec<u8>> {
        match on_request(config, store_, &mut request(client), 1001) {
            RequestDecision::Serve { body, .. } => Some(body),
            _ => None,
        }
    }

    /// RFC 9111 §4.1: each Vary variant of a URL is stored and served to its own requests;
    /// a variant replaces only itself; a change of the Vary fields, an invalidation or a
    /// purge of the URL drops every variant.
    #[test]
    fn several_variants_of_one_url() {
        let config = Config::from_json(b"{}").unwrap();
        let s = MemoryStore::default();
        let vary = [("cache-control", "max-age=60"), ("vary", "Accept-Language")];
        let (en, de, fr) = (
            [("accept-language", "en")],
            [("accept-language", "de")],
            [("accept-language", "fr")],
        );
        store_variant(&config, &s, &en, &vary, b"hello");
        store_variant(&config, &s, &de, &vary, b"hallo");
        assert_eq!(
            served_body(&config, &s, &en).as_deref(),
            Some(b"hello".as_slice())
        );
        assert_eq!(
            served_body(&config, &s, &de).as_deref(),
            Some(b"hallo".as_slice())
        );
        assert_eq!(served_body(&config, &s, &fr), None, "no variant for fr");
        assert_eq!(served_body(&config, &s, &[]), None, "nor for no header");
        store_variant(&config, &s, &de, &vary, b"servus");
        assert_eq!(
            served_body(&config, &s, &de).as_deref(),
            Some(b"servus".as_slice())
        );
        assert_eq!(
            served_body(&config, &s, &en).as_deref(),
            Some(b"hello".as_slice())
        );

        // The origin now varies on another field: the old variants are gone.
        let other = [("cache-control", "max-age=60"), ("vary", "Accept-Encoding")];
        store_variant(&config, &s, &en, &other, b"by encoding");
        assert_eq!(
            served_body(&config, &s, &de),
            Some(b"by encoding".to_vec()),
            "de no longer varies"
        );

        // Removing the URL's own entry (invalidation, purge) makes its variants unreachable.
        let s = MemoryStore::default();
        store_variant(&config, &s, &en, &vary, b"hello");
        store_variant(&config, &s, &de, &vary, b"hallo");
        let key_hash = match on_request(&config, &s, &mut request(&en), 1001) {
            RequestDecision::Serve { .. } => {
                let RequestDecision::Forward(p) = on_request(
                    &config,
                    &s,
                    &mut request(&[("accept-language", "xx")]),
                    1001,
                ) else {
                    panic!()
                };
                p.key_hash
            }
            other => panic!("{other:?}"),
        };
        assert!(storage::remove(&s, &config.layout, key_hash));
        assert_eq!(served_body(&config, &s, &en), None);
        assert_eq!(
            served_body(&config, &s, &de),
            None,
            "the variant went with it"
        );
        store_variant(&config, &s, &en, &vary, b"hello again");
        assert_eq!(served_body(&config, &s, &de), None, "and stays gone");
    }

    /// Group purges (purge.rs): each kind hard (a miss) and soft (stale: revalidated, or
    /// served stale within stale-while-revalidate); tags are recorded from Surrogate-Key and
    /// Cache-Tag and not kept among the stored fields; an entry stored after a purge is
    /// untouched by it.
    #[test]
    fn group_purges_hard_and_soft() {
        use crate::purge::{add, Target};
        let config = Config::from_json(br#"{"purge":{"token":"a-long-secret"}}"#).unwrap();
        let page = [
            ("cache-control", "max-age=60"),
            ("surrogate-key", "product-1 listing"),
            ("cache-tag", "site"),
        ];
        for (target, purged) in [
            (Target::Tag(b"listing".to_vec()), true),
            (Target::Tag(b"site".to_vec()), true),
            (Target::Tag(b"product-2".to_vec()), false),
            (
                Target::Prefix {
                    host: b"example.com".to_vec(),
                    prefix: b"/do".to_vec(),
                },
                true,
            ),
            (
                Target::Prefix {
                    host: b"example.com".to_vec(),
                    prefix: b"/x".to_vec(),
                },
                false,
            ),
            (Target::Host(b"example.com".to_vec()), true),
            (Target::Host(b"other.com".to_vec()), false),
            (Target::All, true),
        ] {
            let s = MemoryStore::default();
            store_variant(&config, &s, &[], &page, b"page");
            assert!(served_body(&config, &s, &[]).is_some(), "stored");
            add(&s, false, target.clone()).unwrap();
            assert_eq!(
                served_body(&config, &s, &[]).is_none(),
                purged,
                "{target:?}"
            );
            // Stored again after the purge: served.
            store_variant(&config, &s, &[], &page, b"page 2");
            assert_eq!(
                served_body(&config, &s, &[]).as_deref(),
                Some(&b"page 2"[..])
            );
        }
        // Tags are kept in the entry, not among its fields.
        let s = MemoryStore::default();
        store_variant(&config, &s, &[], &page, b"page");
        let RequestDecision::Serve { headers, .. } =
            on_request(&config, &s, &mut request(&[]), 1001)
        else {
            panic!("a hit");
        };
        assert!(headers
            .iter()
            .all(|(k, _)| k != "surrogate-key" && k != "cache-tag"));
        // Soft: stale now — revalidated in-band without stale-while-revalidate ...
        add(&s, true, Target::Tag(b"site".to_vec())).unwrap();
        assert!(matches!(
            on_request(&config, &s, &mut request(&[]), 1001),
            RequestDecision::Forward(p) if p.outcome == Outcome::Stale
        ));
        // ... served stale with a background refresh within it.
        let s = MemoryStore::default();
        let swr = [
            ("cache-control", "max-age=60, stale-while-revalidate=30"),
            ("etag", "\"v1\""),
            ("surrogate-key", "product-1"),
        ];
        store_variant(&config, &s, &[], &swr, b"page");
        add(&s, true, Target::Tag(b"product-1".to_vec())).unwrap();
        assert!(matches!(
            on_request(&config, &s, &mut request(&[]), 1001),
            RequestDecision::Serve {
                refresh: Some(_),
                ..
            }
        ));
    }

    /// A purge request names what it purges with its fields; too many or too long tags are
    /// refused; without any, it purges its URL (softly with x-purge-soft).
    #[test]
    fn purge_requests_name_their_targets() {
        use crate::purge::Target;
        let config = Config::from_json(br#"{"purge":{"token":"a-long-secret"}}"#).unwrap();
        let s = MemoryStore::default();
        let kind = |extra: &[(&str, &str)]| {
            let mut headers = vec![(":method", "PURGE"), ("x-purge-token", "a-long-secret")];
            headers.extend_from_slice(extra);
            let mut r = request(&[]);
            r.retain(|(k, _)| k != ":method");
            r.extend(
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
            );
            match on_request(&config, &s, &mut r, 1000) {
                RequestDecision::Purge {
                    authorized: true,
                    kind,
                    ..
                } => kind,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(kind(&[]), PurgeKind::Url);
        assert_eq!(
            kind(&[("x-purge-tag", "a b,c")]),
            PurgeKind::Rules {
                targets: vec![
                    Target::Tag(b"a".to_vec()),
                    Target::Tag(b"b".to_vec()),
                    Target::Tag(b"c".to_vec())
                ],
                soft: false
            }
        );
        assert_eq!(
            kind(&[("x-purge-prefix", "/p/"), ("x-purge-soft", "1")]),
            PurgeKind::Rules {
                targets: vec![Target::Prefix {
                    host: b"example.com".to_vec(),
                    prefix: b"/p/".to_vec()
                }],
                soft: true
            }
        );
        assert_eq!(
            kind(&[("x-purge-all", "1")]),
            PurgeKind::Rules {
                targets: vec![Target::All],
                soft: false
            }
        );
        assert!(matches!(
            kind(&[("x-purge-soft", "1")]),
            PurgeKind::Rules { soft: true, .. }
        ));
        let many = (0..33)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(matches!(
            kind(&[("x-purge-tag", &many)]),
            PurgeKind::Invalid(_)
        ));
        let long = "x".repeat(300);
        assert!(matches!(
            kind(&[("x-purge-tag", &long)]),
            PurgeKind::Invalid(_)
        ));
        assert!(matches!(
            kind(&[("x-purge-prefix", "no-slash")]),
            PurgeKind::Invalid(_)
        ));
    }

    /// RFC 9110 §14.2: one byte range of a stored 200 is a 206 with its Content-Range; an
    /// If-Range that does not hold, several ranges or a repeated Range get the whole body.
    #[test]
    fn a_single_range_is_served_from_the_stored_response() {
        let config = Config::from_json(b"{}").unwrap();
        let s = MemoryStore::default();
        store_doc(
            &config,
            &s,
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
        );
        let served =
            |extra: &[(&str, &str)]| match on_request(&config, &s, &mut request(extra), 1001) {
                RequestDecision::Serve {
                    status,
                    headers,
                    body,
                    ..
                } => {
                    let range = headers
                        .iter()
                        .find(|(k, _)| k == "content-range")
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
                    (status, range, body)
                }
                other => panic!("expected a hit, got {other:?}"),
            };
        assert_eq!(
            served(&[("range", "bytes=1-2")]),
            (206, Some("bytes 1-2/4".into()), b"od".to_vec())
        );
        assert_eq!(
            served(&[("range", "bytes=-1")]),
            (206, Some("bytes 3-3/4".into()), b"y".to_vec())
        );
        assert_eq!(
            served(&[("range", "bytes=1-2"), ("if-range", "\"v1\"")]).0,
            206
        );
        for whole in [
            &[("range", "bytes=1-2"), ("if-range", "\"v0\"")][..],
            &[("range", "bytes=0-0,2-3")],
            &[("range", "bytes=0-0"), ("range", "bytes=2-3")],
            &[("range", "bytes=9-")],
        ] {
            assert_eq!(served(whole), (200, None, b"body".to_vec()), "{whole:?}");
        }
    }

    /// RFC 9110 §5.3: a repeated keyed or varied field is read as all its lines combined, as
    /// the origin reads it: the answer to `x-device: desktop` + `x-device: mobile` (which a
    /// last-value origin answered for mobile) never reaches a client who sent only desktop.
    #[test]
    fn repeated_keyed_and_varied_fields_never_poison() {
        let fresh = [("cache-control", "max-age=60")];
        let config = Config::from_json(br#"{"key":{"headers":["x-device"]}}"#).unwrap();
        let s = MemoryStore::default();
        let both = [("x-device", "desktop"), ("x-device", "mobile")];
        store_variant(&config, &s, &both, &fresh, b"mobile page");
        assert_eq!(served_body(&config, &s, &[("x-device", "desktop")]), None);
        assert_eq!(
            served_body(&config, &s, &both).as_deref(),
            Some(b"mobile page".as_slice())
        );

        let config = Config::from_json(b"{}").unwrap();
        let s = MemoryStore::default();
        let vary = [("cache-control", "max-age=60"), ("vary", "Accept-Language")];
        let two = [("accept-language", "en"), ("accept-language", "fr")];
        store_variant(&config, &s, &two, &vary, b"fr page");
        assert_eq!(served_body(&config, &s, &[("accept-language", "en")]), None);
        assert_eq!(
            served_body(&config, &s, &two).as_deref(),
            Some(b"fr page".as_slice())
        );
    }

    /// One client's rate-limit state is never stored nor served to another (a shield in
    /// front of an edge's limiter).
    #[test]
    fn rate_limit_fields_are_not_stored() {
        let config = Config::from_json(b"{}").unwrap();
        let s = MemoryStore::default();
        let response = [
            ("cache-control", "max-age=60"),
            ("ratelimit", "\"per-user\";r=0;t=30"),
            ("ratelimit-policy", "\"per-user\";q=10;w=60"),
            ("retry-after", "30"),
            ("x-ratelimit-remaining", "0"),
            ("x-kept", "yes"),
        ];
        store_variant(&config, &s, &[], &response, b"page");
        let RequestDecision::Serve { headers, .. } =
            on_request(&config, &s, &mut request(&[]), 1001)
        else {
            panic!("expected a hit");
        };
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"x-kept"), "{names:?}");
        for gone in [
            "ratelimit",
            "ratelimit-policy",
            "retry-after",
            "x-ratelimit-remaining",
        ] {
            assert!(!names.contains(&gone), "{gone} was served: {names:?}");
        }
    }

    /// /doc stored at t=1000 with max-age=10, stale-while-revalidate=30, ETag "v1" and
    /// `extra` header fields.
    fn swr_doc(extra: &[(&str, &str)]) -> (Config, MemoryStore) {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let mut response = vec![
            ("cache-control", "max-age=10, stale-while-revalidate=30"),
            ("etag", "\"v1\""),
        ];
        response.extend_from_slice(extra);
        store_doc(&config, &store, &response);
        (config, store)
    }

    /// RFC 5861 §3: within the window a stale entry is served at once, with a refresh to
    /// send in the background; past the window the request goes to the origin.
    #[test]
    fn stale_while_revalidate_serves_stale_and_asks_for_a_refresh() {
        let (config, store) = swr_doc(&[]);
        let RequestDecision::Serve {
            status,
            headers,
            body,
            refresh: Some(refresh),
        } = on_request(&config, &store, &mut request(&[]), 1025)
        else {
            panic!("expected a stale serve with a refresh");
        };
        assert_eq!((status, body.as_slice()), (200, b"body".as_slice()));
        assert_eq!(header(&headers, "age"), Some("25"));
        assert_eq!(
            header(&headers, "cache-status"),
            Some("edgewise; hit; ttl=-15; detail=stale-while-revalidate")
        );
        assert_eq!(refresh.outcome, Outcome::Stale);
        assert_eq!(refresh.validators, pairs(&[("if-none-match", "\"v1\"")]));
        assert!(refresh.revalidating.is_some());

        // Fresh: no refresh. Past the window (staleness 31 > 30): forwarded.
        assert!(matches!(
            on_request(&config, &store, &mut request(&[]), 1005),
            RequestDecision::Serve { refresh: None, .. }
        ));
        assert!(matches!(
            on_request(&config, &store, &mut request(&[]), 1041),
            RequestDecision::Forward(_)
        ));
    }

    /// The configured `stale_while_revalidate` stands in when the origin names no window.
    #[test]
    fn configured_window_applies_without_the_directive() {
        let config = Config::from_json(br#"{"stale_while_revalidate":"1m"}"#).unwrap();
        let store = MemoryStore::default();
        store_doc(&config, &store, &[("cache-control", "max-age=10")]);
        let decision = on_request(&config, &store, &mut request(&[]), 1060);
        let RequestDecision::Serve {
            refresh: Some(refresh),
            ..
        } = decision
        else {
            panic!("expected a stale serve, got {decision:?}");
        };
        assert!(refresh.validators.is_empty() && refresh.revalidating.is_none());
        assert!(matches!(
            on_request(&config, &store, &mut request(&[]), 1071),
            RequestDecision::Forward(_)
        ));
    }

    /// The refresh is a GET for the same target with the client's other fields (Vary) and
    /// the entry's validators, never the client's own conditionals or cache directives.
    #[test]
    fn refresh_request_asks_for_the_entry() {
        let (config, store) = swr_doc(&[]);
        let client = request(&[
            ("accept-language", "de"),
            ("if-none-match", "\"other\""),
            ("cache-control", "max-stale=0"),
            ("x-request-id", "abc"),
            ("connection", "keep-alive"),
        ]);
        let RequestDecision::Serve {
            refresh: Some(refresh),
            ..
        } = on_request(&config, &store, &mut client.clone(), 1020)
        else {
            panic!("expected a stale serve");
        };
        let sent = refresh_request(&client, &refresh);
        assert_eq!(header(&sent, ":method"), Some("GET"));
        assert_eq!(header(&sent, ":path"), Some("/doc"));
        assert_eq!(header(&sent, ":authority"), Some("example.com"));
        assert_eq!(header(&sent, "accept-language"), Some("de"));
        assert_eq!(header(&sent, "if-none-match"), Some("\"v1\""));
        for gone in ["cache-control", "x-request-id", "connection"] {
            assert_eq!(header(&sent, gone), None, "{gone}");
        }
        assert_eq!(sent.iter().filter(|(k, _)| k == "if-none-match").count(), 1);
    }

    /// What the refresh's answer does: a 304 refreshes (RFC 9111 §4.3.4), a storable 200
    /// replaces, an error or failure keeps the stale entry, anything unstorable removes it.
    #[test]
    fn refresh_outcomes() {
        let (config, store) = swr_doc(&[("x-version", "1")]);
        let RequestDecision::Serve {
            refresh: Some(refresh),
            ..
        } = on_request(&config, &store, &mut request(&[]), 1020)
        else {
            panic!("expected a stale serve");
        };
        let outcome = |status, headers: &[(&str, &str)], body: Option<&[u8]>| {
            refresh_outcome(
                &config,
                &refresh,
                status,
                &pairs(headers),
                body.map(|b| b.to_vec()),
                1021,
                &mut |_| None,
            )
        };
        let Refreshed::Store(entry) = outcome(304, &[("x-version", "2")], None) else {
            panic!("a 304 refreshes");
        };
        assert_eq!(entry.body, b"body");
        assert_eq!(entry.header("x-version"), Some(b"2".as_slice()));
        assert_eq!(entry.response_time, 1021);
        let Refreshed::Store(entry) = outcome(
            200,
            &[("cache-control", "max-age=10"), ("etag", "\"v2\"")],
            Some(b"new"),
        ) else {
            panic!("a storable 200 replaces");
        };
        assert_eq!(entry.body, b"new");
        assert_eq!(outcome(503, &[], Some(b"down")), Refreshed::Keep);
        assert_eq!(outcome(0, &[], None), Refreshed::Keep);
        assert_eq!(
            outcome(200, &[("cache-control", "no-store")], Some(b"x")),
            Refreshed::Remove
        );
        assert_eq!(
            outcome(200, &[("cache-control", "max-age=10")], None),
            Refreshed::Remove,
            "over max_entry_bytes"
        );
    }

    /// RFC 9111 §4.3.1: a stale entry is revalidated with its ETag and Last-Modified.
    #[test]
    fn stale_entry_is_revalidated_with_its_validators() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let response = [
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("last-modified", "Sat, 21 Nov 2026 10:00:00 GMT"),
        ];
        let pending = stale_decision(&config, &store, &response, 1020, &[]);
        assert_eq!(pending.outcome, Outcome::Stale);
        assert!(pending.revalidating.is_some());
        assert_eq!(
            pending.validators,
            pairs(&[
                ("if-none-match", "\"v1\""),
                ("if-modified-since", "Sat, 21 Nov 2026 10:00:00 GMT")
            ])
        );
    }

    /// RFC 9111 §4.3.1: without validators there is nothing to revalidate with; a client's own
    /// conditional request is forwarded as it is.
    #[test]
    fn no_revalidation_without_validators_or_with_client_conditionals() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let pending = stale_decision(
            &config,
            &store,
            &[("cache-control", "max-age=10")],
            1020,
            &[],
        );
        assert!(pending.revalidating.is_none() && pending.validators.is_empty());

        let store = MemoryStore::default();
        let response = [("cache-control", "max-age=10"), ("etag", "\"v1\"")];
        let pending = stale_decision(
            &config,
            &store,
            &response,
            1020,
            &[("if-none-match", "\"v0\"")],
        );
        assert!(pending.revalidating.is_none());
    }

    /// RFC 9111 §4.3.3–§4.3.4: a 304 refreshes the stored header fields (not framing) and the
    /// client gets the full stored response, fresh again.
    #[test]
    fn not_modified_refreshes_and_serves_the_stored_response() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let response = [
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("x-version", "1"),
        ];
        let pending = stale_decision(&config, &store, &response, 1020, &[]);
        let not_modified = pairs(&[
            (":status", "304"),
            ("cache-control", "max-age=600"),
            ("x-version", "2"),
            ("content-length", "0"),
        ]);
        let Some(Revalidated {
            store: Some(refreshed),
            reply: (status, headers, body),
        }) = revalidated(&config, &pending, &not_modified, 1021)
        else {
            panic!("a 304 refreshes a storable entry");
        };
        assert_eq!(status, 200);
        assert_eq!(body, b"body");
        assert_eq!(refreshed.header("x-version").unwrap(), b"2");
        assert_eq!(refreshed.header("cache-control").unwrap(), b"max-age=600");
        assert!(refreshed.header("content-length").is_none());
        assert_eq!(refreshed.response_time, 1021);
        let status_field = headers.iter().find(|(k, _)| k == "cache-status").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&status_field.1),
            "edgewise; fwd=stale; ttl=599; stored; fwd-status=304"
        );
        // Stored again, the refreshed entry is a fresh hit.
        let mut seed = 3u64;
        storage::insert(
            &store,
            &config.layout,
            pending.key_hash,
            &refreshed.encode(),
            1021,
            &mut || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                seed
            },
        );
        assert!(matches!(
            on_request(&config, &store, &mut request(&[]), 1030),
            RequestDecision::Serve { status: 200, .. }
        ));
    }

    /// RFC 9111 §4.3.4 with §3.4: a Range request revalidating a stale 200 gets a 206 of the
    /// same representation (strong ETag equal): the entry's fields and freshness are updated
    /// from it, its body kept, the part's own fields not taken; another ETag, a weak one or a
    /// 206 that makes the entry unstorable leave the entry alone.
    #[test]
    fn a_partial_answer_to_our_revalidation_freshens_the_stored_200() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let response = [
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("content-type", "text/plain"),
            ("a", "1"),
            ("b", "1"),
        ];
        let pending = stale_decision(&config, &store, &response, 1020, &[("range", "bytes=0-1")]);
        assert!(
            pending.revalidating.is_some(),
            "a Range request revalidates"
        );
        let partial = |etag: &str, extra: &[(&str, &str)]| {
            let mut fields = vec![
                (":status", "206"),
                ("cache-control", "max-age=600"),
                ("etag", etag),
                ("a", "2"),
                ("content-range", "bytes 0-1/4"),
                ("content-length", "2"),
            ];
            fields.extend_from_slice(extra);
            pairs(&fields)
        };
        let refreshed = freshened_by_partial(&config, &pending, &partial("\"v1\"", &[]), 1021)
            .expect("the same representation freshens the entry");
        assert_eq!(refreshed.status, 200);
        assert_eq!(refreshed.body, b"body");
        assert_eq!(refreshed.header("a").unwrap(), b"2", "updated from the 206");
        assert_eq!(
            refreshed.header("b").unwrap(),
            b"1",
            "kept from the stored 200"
        );
        assert_eq!(refreshed.header("cache-control").unwrap(), b"max-age=600");
        assert!(refreshed.header("content-range").is_none());
        assert_eq!(refreshed.response_time, 1021);
        // A multipart 206's Content-Type describes the parts, not the representation.
        let multipart = partial(
            "\"v1\"",
            &[("content-type", "multipart/byteranges; boundary=x")],
        );
        let refreshed = freshened_by_partial(&config, &pending, &multipart, 1021).unwrap();
        assert_eq!(refreshed.header("content-type").unwrap(), b"text/plain");
        // Another or a weak validator: not the stored representation.
        for etag in ["\"v2\"", "W/\"v1\""] {
            assert_eq!(
                freshened_by_partial(&config, &pending, &partial(etag, &[]), 1021),
                None
            );
        }
        // A 206 that says private makes the refreshed entry unstorable: left alone.
        let private = partial("\"v1\"", &[("cache-control", "private")]);
        assert_eq!(
            freshened_by_partial(&config, &pending, &private, 1021),
            None
        );
        // Not a revalidation of ours (no stored entry): nothing to freshen.
        let plain = Pending {
            revalidating: None,
            ..pending.clone()
        };
        assert_eq!(
            freshened_by_partial(&config, &plain, &partial("\"v1\"", &[]), 1021),
            None
        );
    }

    /// RFC 9111 §4.4: a POST's success invalidates its target and same-origin Location /
    /// Content-Location, never another origin's URI; an error invalidates nothing.
    #[test]
    fn unsafe_methods_invalidate_target_and_same_origin_locations() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let mut post = request(&[]);
        post.retain(|(k, _)| k != ":method");
        post.push((":method".into(), b"POST".to_vec()));
        let RequestDecision::Forward(pending) = on_request(&config, &store, &mut post, 1000) else {
            panic!("POST is forwarded");
        };
        let key_of = |path: &str| {
            let mut get: Vec<(String, Vec<u8>)> = request(&[])
                .into_iter()
                .map(|(k, v)| {
                    if k == ":path" {
                        (k, path.as_bytes().to_vec())
                    } else {
                        (k, v)
                    }
                })
                .collect();
            let RequestDecision::Forward(p) = on_request(&config, &store, &mut get, 1000) else {
                panic!("GET miss is forwarded");
            };
            p.key_hash
        };
        let response = pairs(&[
            ("location", "/doc/42"),
            ("content-location", "http://example.com/doc/latest"),
        ]);
        assert_eq!(
            invalidated_keys(&config, &pending, 201, &response),
            vec![pending.key_hash, key_of("/doc/42"), key_of("/doc/latest")]
        );
        let elsewhere = pairs(&[
            ("location", "http://other.example/doc/42"),
            ("content-location", "//other.example/x"),
        ]);
        assert_eq!(
            invalidated_keys(&config, &pending, 303, &elsewhere),
            vec![pending.key_hash]
        );
        assert!(invalidated_keys(&config, &pending, 500, &response).is_empty());
    }

    fn forwarded(config: &Config, store: &MemoryStore, extra: &[(&str, &str)]) -> Box<Pending> {
        match on_request(config, store, &mut request(extra), 1000) {
            RequestDecision::Forward(p) => p,
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    /// Requests whose answer may not be the shared one: a body on GET, Cookie under
    /// `cookie_requests: "bypass"`, unkeyed fields an origin may reflect (bypassed, or
    /// stripped and cached); which requests may fill a key for others.
    #[test]
    fn requests_that_bypass_strip_or_do_not_fill() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        for (extra, detail) in [
            (&[("content-length", "5")][..], "request-body"),
            (&[("transfer-encoding", "chunked")][..], "request-body"),
            (
                &[("x-forwarded-host", "evil.example")][..],
                "unkeyed-header",
            ),
            (&[("x-original-url", "/admin")][..], "unkeyed-header"),
            (
                &[("x-http-method-override", "DELETE")][..],
                "unkeyed-header",
            ),
        ] {
            let p = forwarded(&config, &store, extra);
            assert_eq!(
                (p.outcome, p.detail, p.invalidate, p.fills),
                (Outcome::Bypass, Some(detail), false, false),
                "{extra:?}"
            );
        }
        assert!(matches!(
            decide(&config, &store, &mut request(&[]), 1000, true),
            RequestDecision::Forward(p) if p.detail == Some("request-body")
        ));
        assert_eq!(
            forwarded(&config, &store, &[("content-length", "0")]).outcome,
            Outcome::Miss
        );
        assert_eq!(
            forwarded(&config, &store, &[("cookie", "s=1")]).outcome,
            Outcome::Miss,
            "Cookie is looked up by default (only what may be shared is stored)"
        );
        let bypass = Config::from_json(br#"{"cookie_requests":"bypass"}"#).unwrap();
        assert_eq!(
            forwarded(&bypass, &store, &[("cookie", "s=1")]).detail,
            Some("cookie")
        );
        let strip = Config::from_json(
            br#"{"unkeyed_headers":{"action":"strip","names":["X-Forwarded-Host","x-tenant"]}}"#,
        )
        .unwrap();
        let p = forwarded(
            &strip,
            &store,
            &[("x-forwarded-host", "evil"), ("x-tenant", "a")],
        );
        assert_eq!(p.outcome, Outcome::Miss);
        assert_eq!(p.strip, vec!["x-forwarded-host", "x-tenant"]);
        let keyed = Config::from_json(br#"{"key":{"headers":["x-forwarded-host"]}}"#).unwrap();
        assert_eq!(
            forwarded(&keyed, &store, &[("x-forwarded-host", "a")]).outcome,
            Outcome::Miss,
            "a keyed field is not unkeyed"
        );
        // Only a plain GET fills a key for others (leads coalescing, sets hit-for-miss).
        assert!(forwarded(&config, &store, &[]).fills);
        for extra in [
            ("range", "bytes=0-10"),
            ("if-none-match", "\"x\""),
            ("if-modified-since", "Sat, 21 Nov 2026 10:00:00 GMT"),
            ("cache-control", "no-store"),
        ] {
            assert!(!forwarded(&config, &store, &[extra]).fills, "{extra:?}");
        }
        let mut head = request(&[]);
        head.retain(|(k, _)| k != ":method");
        head.push((":method".into(), b"HEAD".to_vec()));
        let RequestDecision::Forward(p) = on_request(&config, &store, &mut head, 1000) else {
            panic!("HEAD miss is forwarded");
        };
        assert!(!p.fills);
    }

    /// A response to a request with Cookie or Authorization is stored only with an explicit
    /// allowance (RFC 9111 §3.5; `cookie_requests: "explicit"`); a page without any cache
    /// header or validator is never stored.
    #[test]
    fn credentials_and_pages_without_cache_headers() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let cookie = forwarded(&config, &store, &[("cookie", "session=alice")]);
        let auth = forwarded(&config, &store, &[("authorization", "Bearer a")]);
        let plain = forwarded(&config, &store, &[]);
        let check =
            |p: &Pending, response: &[(&str, &str)]| storable(&config, p, 200, &pairs(response));
        assert_eq!(check(&cookie, &[]), Err(NotStorable::Cookie));
        assert_eq!(
            check(&cookie, &[("etag", "\"a\"")]),
            Err(NotStorable::Cookie)
        );
        assert_eq!(check(&cookie, &[("cache-control", "max-age=60")]), Ok(()));
        assert_eq!(
            check(&cookie, &[("cache-control", "public")]),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            check(&auth, &[("cache-control", "max-age=60")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(check(&auth, &[("cache-control", "s-maxage=60")]), Ok(()));
        assert_eq!(check(&plain, &[]), Err(NotStorable::NoFreshness));
        assert_eq!(check(&plain, &[("etag", "\"a\"")]), Ok(()));
        // A header value that is not text passes uncached, and says so (not "status").
        let mut binary = pairs(&[("cache-control", "max-age=60")]);
        binary.push(("x-raw".into(), vec![0xff, 0xfe]));
        assert_eq!(
            storable(&config, &plain, 200, &binary),
            Err(NotStorable::HeaderNotText)
        );
    }

    /// RFC 9111 §4.3.4 with §3: a 304's Set-Cookie reaches the revalidating client only;
    /// a 304 with `private`, `no-store` or another Vary drops the entry; the revalidating
    /// request's credentials apply to the refreshed entry.
    #[test]
    fn a_304_refresh_keeps_personal_fields_out_of_the_entry() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let response = [("cache-control", "max-age=10"), ("etag", "\"v1\"")];
        let pending = stale_decision(&config, &store, &response, 1020, &[]);
        let refresh = |fields: &[(&str, &str)]| {
            let mut not_modified = pairs(&[(":status", "304")]);
            not_modified.extend(pairs(fields));
            revalidated(&config, &pending, &not_modified, 1021).unwrap()
        };
        let r = refresh(&[("set-cookie", "session=alice"), ("x-version", "2")]);
        let entry = r.store.expect("still storable");
        assert_eq!(entry.header("set-cookie"), None, "never stored");
        assert_eq!(entry.header("x-version"), Some(b"2".as_slice()));
        assert_eq!(header(&r.reply.1, "set-cookie"), Some("session=alice"));
        for dropping in [
            &[("cache-control", "private, max-age=10")][..],
            &[("cache-control", "no-store")][..],
            &[("vary", "cookie")][..],
        ] {
            let r = refresh(dropping);
            assert!(r.store.is_none(), "{dropping:?}");
            assert_eq!(r.reply.2, b"body", "the client still gets the response");
            assert!(!header(&r.reply.1, "cache-status")
                .unwrap()
                .contains("stored"));
        }
        // The revalidating request had Authorization: the refreshed entry needs §3.5.
        let auth = Pending {
            has_authorization: true,
            ..pending.clone()
        };
        let mut not_modified = pairs(&[(":status", "304")]);
        not_modified.extend(pairs(&[("cache-control", "max-age=10")]));
        assert!(revalidated(&config, &auth, &not_modified, 1021)
            .unwrap()
            .store
            .is_none());
        // Background refreshes follow the same rule.
        assert_eq!(
            refresh_outcome(
                &config,
                &pending,
                304,
                &pairs(&[(":status", "304"), ("cache-control", "private")]),
                None,
                1021,
                &mut |_| None
            ),
            Refreshed::Remove
        );
    }

    /// A 304 to a request that was not our revalidation is not turned into a stored reply.
    #[test]
    fn a_304_without_revalidation_is_left_alone() {
        let config = Config::from_json(b"{}").unwrap();
        let store = MemoryStore::default();
        let RequestDecision::Forward(pending) =
            on_request(&config, &store, &mut request(&[]), 1000)
        else {
            panic!("miss must be forwarded");
        };
        assert!(revalidated(&config, &pending, &pairs(&[(":status", "304")]), 1001).is_none());
    }
}
