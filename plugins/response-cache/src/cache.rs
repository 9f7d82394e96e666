//! The cache's decisions for one exchange, over a request view and the CAS store: what to
//! do with a request (serve, 304, 504, forward) and whether and how to store the response.

use edgewise_support::breaker_state::identity_hash;
use edgewise_support::request::RequestView;
use edgewise_support::store::CasStore;

use crate::cache_control::CacheControl;
use crate::conditional::not_modified;
use crate::config::Config;
use crate::entry::Entry;
use crate::freshness::{current_age, lifetime, usable, Stored, Use};
use crate::key::{primary_key, vary_fields, vary_matches, vary_values};
use crate::status::{cache_status, Outcome};
use crate::storable::{self, Exchange, NotStorable};
use crate::{http_date, storage};

/// Header fields never stored or replayed (hop-by-hop, RFC 9110 §7.6.1; framing; Envoy's own).
const NOT_STORED: [&str; 11] = [
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
];

/// What to do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestDecision {
    /// Answer from the cache: status, headers (with Age and Cache-Status) and body.
    Serve {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
    /// `only-if-cached` and nothing usable stored (RFC 9111 §5.2.1.7): 504.
    GatewayTimeout { headers: Vec<(String, Vec<u8>)> },
    /// Forward to the origin; `pending` says how to treat the response.
    Forward(Pending),
    /// A purge request for the entry `key_hash`; `authorized` when its token matched.
    Purge { key_hash: u64, authorized: bool },
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// A ready reply: status, header fields, body.
pub type Reply = (u16, Vec<(String, Vec<u8>)>, Vec<u8>);

/// Remembered between request and response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub key: Vec<u8>,
    pub key_hash: u64,
    pub request_time: i64,
    pub method: Vec<u8>,
    pub request_cc: CacheControl,
    pub has_authorization: bool,
    /// The request's values of every header, for Vary (captured lazily by the adapter).
    pub outcome: Outcome,
    /// Unsafe method: a non-error response invalidates the key (RFC 9111 §4.4).
    pub invalidate: bool,
    /// A stale entry that may answer instead of an origin error (RFC 5861 §4), as a ready
    /// reply: status, headers, body.
    pub fallback: Option<Reply>,
}

fn is_unsafe(method: &[u8]) -> bool {
    !matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
}

/// The stored response's freshness inputs.
fn stored_view(entry: &Entry) -> Stored {
    let cc = CacheControl::parse(entry.headers_named("cache-control"));
    Stored {
        status: entry.status,
        request_time: entry.request_time,
        response_time: entry.response_time,
        date: entry.header("date").and_then(http_date::parse),
        age: entry
            .header("age")
            .and_then(|a| std::str::from_utf8(a).ok()?.trim().parse().ok()),
        expires: entry.header("expires").map(http_date::parse),
        last_modified: entry.header("last-modified").and_then(http_date::parse),
        cc,
    }
}

/// Decides a request at `now` (seconds since the epoch).
pub fn on_request(
    config: &Config,
    store: &impl CasStore,
    request: &mut impl RequestView,
    now: i64,
) -> RequestDecision {
    let method = request.header(":method").unwrap_or_default();
    let scheme = request
        .header(":scheme")
        .unwrap_or_else(|| b"http".to_vec());
    let host = request.header(":authority").unwrap_or_default();
    let path = request.header(":path").unwrap_or_default();
    let key = primary_key(&config.key, &scheme, &host, &path, &mut |name| {
        request.header(name)
    });
    let key_hash = identity_hash(&key);
    let mut request_cc = CacheControl::parse(request.header("cache-control").as_deref());
    // RFC 9111 §5.4: Pragma: no-cache counts only without Cache-Control.
    if request.header("cache-control").is_none()
        && request
            .header("pragma")
            .is_some_and(|p| p.eq_ignore_ascii_case(b"no-cache"))
    {
        request_cc.no_cache = true;
    }
    let pending = |outcome| Pending {
        key: key.clone(),
        key_hash,
        request_time: now,
        method: method.clone(),
        request_cc: request_cc.clone(),
        has_authorization: false,
        outcome,
        invalidate: false,
        fallback: None,
    };
    if let Some(purge) = config.purge.as_ref().filter(|p| p.method == method) {
        let authorized = request
            .header(&purge.token_header)
            .is_some_and(|t| same_secret(&t, &purge.token));
        return RequestDecision::Purge {
            key_hash,
            authorized,
        };
    }
    if method != b"GET" && method != b"HEAD" {
        return RequestDecision::Forward(Pending {
            invalidate: is_unsafe(&method),
            ..pending(Outcome::Bypass)
        });
    }
    let has_authorization = request.header("authorization").is_some();
    let found = storage::lookup(store, &config.layout, key_hash)
        .and_then(|found| Entry::decode(&found.entry).map(|e| (found, e)));
    let usable_entry = found.filter(|(_, e)| {
        e.key == key
            && vary_matches(&e.vary_fields, &e.vary_values, &mut |name| {
                request.header(name)
            })
    });
    let Some((found, entry)) = usable_entry else {
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
        return RequestDecision::Forward(Pending {
            has_authorization,
            ..pending(Outcome::Miss)
        });
    };
    let view = stored_view(&entry);
    let decision = usable(&view, &request_cc, &config.heuristic, now);
    if !matches!(decision, Use::Fresh | Use::StaleAllowed) {
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
        let window = match decision {
            Use::Validate {
                stale_if_error: Some(window),
            } => Some(window),
            _ if !forbidden && config.stale_if_error > 0 => Some(config.stale_if_error),
            _ => None,
        };
        let fallback = window.filter(|w| staleness <= *w).map(|_| {
            let mut headers: Vec<(String, Vec<u8>)> = entry
                .headers
                .iter()
                .filter(|(k, _)| k != "age" && k != "cache-status")
                .cloned()
                .collect();
            headers.push(("age".into(), age.to_string().into_bytes()));
            headers.push((
                "cache-status".into(),
                cache_status(
                    &config.cache_status,
                    Outcome::StaleServed,
                    None,
                    false,
                    Some("stale-if-error"),
                )
                .into_bytes(),
            ));
            (entry.status, headers, entry.body.clone())
        });
        // Not yet: conditional revalidation; the origin's full response replaces the entry.
        return RequestDecision::Forward(Pending {
            has_authorization,
            fallback,
            ..pending(Outcome::Stale)
        });
    }
    storage::touch(store, &config.layout, &found, now as u64);
    let age = current_age(&view, now);
    let ttl = lifetime(&view, &config.heuristic).seconds() as i64 - age as i64;
    let mut headers: Vec<(String, Vec<u8>)> = entry
        .headers
        .iter()
        .filter(|(k, _)| k != "age" && k != "cache-status")
        .cloned()
        .collect();
    headers.push(("age".into(), age.to_string().into_bytes()));
    let detail = (decision == Use::StaleAllowed).then_some("max-stale");
    headers.push((
        "cache-status".into(),
        cache_status(&config.cache_status, Outcome::Hit, Some(ttl), false, detail).into_bytes(),
    ));
    // Client conditionals answered from the stored validators (RFC 9110 §13.2.2).
    let if_none_match = request.header("if-none-match");
    let if_modified_since = request
        .header("if-modified-since")
        .and_then(|d| http_date::parse(&d));
    if (if_none_match.is_some() || if_modified_since.is_some())
        && not_modified(
            if_none_match.as_deref(),
            if_modified_since,
            entry.header("etag"),
            view.last_modified,
        )
    {
        return RequestDecision::Serve {
            status: 304,
            headers,
            body: Vec::new(),
        };
    }
    let body = if method == b"HEAD" {
        Vec::new()
    } else {
        entry.body
    };
    RequestDecision::Serve {
        status: entry.status,
        headers,
        body,
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
        // Replayed through a host call that takes text; such responses pass uncached.
        return Err(NotStorable::Status);
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    let response_cc = CacheControl::parse(
        headers
            .iter()
            .filter(|(k, _)| k == "cache-control")
            .map(|(_, v)| v.as_slice()),
    );
    storable::check(&Exchange {
        method: &pending.method,
        status,
        request_cc: &pending.request_cc,
        response_cc: &response_cc,
        request_has_authorization: pending.has_authorization,
        has_expires: get("expires").is_some(),
        vary: get("vary"),
        has_set_cookie: get("set-cookie").is_some(),
        cache_set_cookie: config.cache_set_cookie,
        default_ttl: config.heuristic.default_ttl > 0,
    })
}

/// Builds the entry to store from a complete response.
pub fn entry_for(
    pending: &Pending,
    status: u16,
    headers: &[(String, Vec<u8>)],
    body: Vec<u8>,
    now: i64,
    request: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Option<Entry> {
    let vary = headers
        .iter()
        .find(|(k, _)| k == "vary")
        .map(|(_, v)| v.as_slice());
    let fields = vary_fields(vary)?;
    let values = vary_values(&fields, request);
    Some(Entry {
        key: pending.key.clone(),
        status,
        headers: headers
            .iter()
            .filter(|(k, _)| !k.starts_with(':') && !NOT_STORED.contains(&k.as_str()))
            .cloned()
            .collect(),
        request_time: pending.request_time,
        response_time: now,
        vary_fields: fields,
        vary_values: values,
        body,
    })
}

/// RFC 9111 §4.4: a non-error response to an unsafe method invalidates the target URI.
pub fn invalidates(pending: &Pending, status: u16) -> bool {
    pending.invalidate && (200..400).contains(&status)
}
