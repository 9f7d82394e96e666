//! The response phase: whether a forwarded response is stored (RFC 9111 §3), the entry it becomes, invalidation by unsafe methods (§4.4), and how an origin error is answered (RFC 5861 §4).

use super::*;
use edgewise_support::fields::join_lines;

/// What the adapter does with a forwarded response's header fields: decided by
/// [`on_response_headers`], only applied by the adapter.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseAction {
    /// RFC 9111 §4.4: a non-error answer to an unsafe method removes these keys; the
    /// response goes on as it is.
    Invalidate(Vec<u64>),
    /// The cache stood aside (a bypass): the response goes on, with this Cache-Status
    /// (after upstream caches' entries) when the request's own reasons are worth saying.
    PassOn { cache_status: Option<String> },
    /// RFC 9111 §4.3.3: our revalidation came back 304. The entry is stored refreshed (or
    /// dropped, `store: None`), waiting requests look again, and the client gets the stored
    /// response as a local reply in place of the 304.
    Revalidated(Box<Revalidated>),
    /// RFC 5861 §4 / RFC 9111 §4.2.4: an origin error answered with the stale entry. The
    /// response's fields become `headers`, its body becomes `body` at its end.
    ServeStale {
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
    /// RFC 9111 §4.2.4: an unreachable origin and an entry that forbids serving stale: the
    /// response's fields become `headers` (a 504), its body is emptied at its end.
    GatewayTimeout { headers: Vec<(String, Vec<u8>)> },
    /// The response goes on to the client with `cache_status` after upstream caches'
    /// entries. `freshened` (RFC 9111 §4.3.4: a 206 of the stored representation answered
    /// our revalidation) is stored now; `storing` says whether the body is copied to store.
    Deliver {
        cache_status: String,
        freshened: Option<Box<Entry>>,
        storing: Storing,
    },
}

/// Whether a delivered response is copied for storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storing {
    /// Storable (RFC 9111 §3) and not declared over `max_entry_bytes`: the body is copied
    /// and the entry stored at its end.
    CopyBody,
    /// Not stored; the fill ends as said (an origin error is transient, so `Retry`).
    No(FillEnd),
}

/// The response phase of a forwarded request, given the response's header fields (as the
/// origin or Envoy sent them): whether it invalidates (RFC 9111 §4.4), refreshes an entry
/// (§4.3.3–§4.3.4), is replaced by a stale entry or a 504 (RFC 5861 §4, RFC 9111 §4.2.4),
/// or goes on and is stored (§3). `end_of_stream` when the fields end the response (no body
/// to replace). `now` (seconds) and `unreachable` (whether Envoy generated an error because
/// the origin could not be reached) are asked only when they matter: each costs the adapter
/// a host call.
pub fn on_response_headers(
    config: &Config,
    pending: &Pending,
    headers: &(impl Fields + ?Sized),
    end_of_stream: bool,
    now: impl Fn() -> i64,
    unreachable: impl FnOnce() -> bool,
) -> ResponseAction {
    let status = status_of(headers);
    if invalidates(pending, status) {
        return ResponseAction::Invalidate(invalidated_keys(config, pending, status, headers));
    }
    if pending.outcome == Outcome::Bypass {
        let cache_status = pending.detail.map(|detail| {
            cache_status(
                &config.cache_status,
                Outcome::Bypass,
                None,
                false,
                Some(detail),
            )
        });
        return ResponseAction::PassOn { cache_status };
    }
    if status == 304 {
        if let Some(revalidated) = revalidated(config, pending, headers, now()) {
            return ResponseAction::Revalidated(Box::new(revalidated));
        }
    }
    let freshened = match status {
        206 => freshened_by_partial(config, pending, headers, now()).map(Box::new),
        _ => None,
    };
    // The error's body is replaced at its end, so this needs an error with a body (Envoy's
    // local errors have one).
    let answer = match status >= 500 && !end_of_stream {
        true => error_answer(&pending.fallback, unreachable),
        false => ErrorAnswer::Origin,
    };
    match answer {
        ErrorAnswer::Origin => {}
        ErrorAnswer::GatewayTimeout => {
            let value = cache_status(
                &config.cache_status,
                Outcome::Stale,
                None,
                false,
                Some("origin-unreachable"),
            );
            let headers = vec![
                (":status".to_string(), b"504".to_vec()),
                ("content-length".to_string(), b"0".to_vec()),
                ("cache-status".to_string(), value.into_bytes()),
            ];
            return ResponseAction::GatewayTimeout { headers };
        }
        ErrorAnswer::Stale((stored_status, stored_headers, body)) => {
            let mut headers = Vec::with_capacity(stored_headers.len() + 2);
            headers.push((
                ":status".to_string(),
                stored_status.to_string().into_bytes(),
            ));
            headers.push((
                "content-length".to_string(),
                body.len().to_string().into_bytes(),
            ));
            headers.extend(stored_headers.iter().cloned());
            return ResponseAction::ServeStale {
                headers,
                body: body.clone(),
            };
        }
    }
    let declared = headers
        .field("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
    let storing = storable(config, pending, status, headers).is_ok()
        && declared.is_none_or(|n| n <= config.layout.max_entry_bytes);
    ResponseAction::Deliver {
        cache_status: cache_status(
            &config.cache_status,
            pending.outcome,
            None,
            storing,
            pending.detail,
        ),
        freshened,
        storing: match (storing, status < 500) {
            (true, _) => Storing::CopyBody,
            (false, true) => Storing::No(FillEnd::Uncacheable),
            (false, false) => Storing::No(FillEnd::Retry),
        },
    }
}

/// The numeric `:status` of a header list; 0 when absent or malformed.
pub fn status_of(headers: &(impl Fields + ?Sized)) -> u16 {
    headers
        .field(":status")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
        .unwrap_or(0)
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

/// Whether a forwarded response may be stored (RFC 9111 §3), given its headers.
pub fn storable(
    config: &Config,
    pending: &Pending,
    status: u16,
    headers: &(impl Fields + ?Sized),
) -> Result<(), NotStorable> {
    if pending.outcome == Outcome::Bypass {
        return Err(NotStorable::Method);
    }
    if headers
        .each_field()
        .any(|(_, v)| std::str::from_utf8(v).is_err())
    {
        return Err(NotStorable::HeaderNotText);
    }
    let get = |name: &str| headers.field(name);
    // RFC 9213 §2.2: a targeted field of ours replaces Cache-Control and Expires.
    let (response_cc, expires_applies) =
        crate::targeted::governing(&config.targeted_fields, |name| {
            headers.field_lines(name).collect()
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
pub(super) fn connection_nominated(headers: &(impl Fields + ?Sized)) -> Vec<String> {
    headers
        .field_lines("connection")
        .filter_map(|v| std::str::from_utf8(v).ok())
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
    headers: &(impl Fields + ?Sized),
    body: Vec<u8>,
    now: i64,
    request: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Option<Entry> {
    let entry_tags = tags.of(headers)?;
    let fields = vary_fields(headers.field("vary"))?;
    let values = vary_values(&fields, request);
    let nominated = connection_nominated(headers);
    Some(Entry {
        key: pending.key.clone(),
        status,
        headers: headers
            .each_field()
            .filter(|(k, _)| {
                let tag_field = tags.strip && tags.headers.iter().any(|t| t == k);
                !k.starts_with(':')
                    && !NOT_STORED.contains(k)
                    && !nominated.iter().any(|n| n == k)
                    && !tag_field
            })
            .map(|(k, v)| (k.to_string(), v.to_vec()))
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
    response_headers: &(impl Fields + ?Sized),
) -> Vec<u64> {
    if !invalidates(pending, status) {
        return Vec::new();
    }
    let (scheme, host) = &pending.origin;
    let mut keys = vec![pending.key_hash];
    for field in ["location", "content-location"] {
        let Some(value) = response_headers.field(field) else {
            continue;
        };
        let mut origin_form = scheme.clone();
        origin_form.extend_from_slice(b"://");
        origin_form.extend_from_slice(host);
        let path = if value.starts_with(b"/") && !value.starts_with(b"//") {
            value
        } else if value.len() > origin_form.len()
            && value[..origin_form.len()].eq_ignore_ascii_case(&origin_form)
            && value[origin_form.len()] == b'/'
        {
            &value[origin_form.len()..]
        } else {
            continue; // another origin, or a relative reference we do not resolve
        };
        let key = primary_key(&config.key, scheme, host, path, &mut |name| {
            pending.key_header_values.field(name).map(<[u8]>::to_vec)
        });
        keys.push(identity_hash(&key));
    }
    keys
}

/// Removes what the response carries for this cache only: its tags (`tags.strip`: they are
/// for this cache's purges, not for clients) and the RFC 9213 targeted fields meant for it
/// (they stay in the stored entry, whose freshness they govern). `headers` is the response
/// as the origin sent it; only fields it has are removed (a host call each).
pub fn strip_fields_for_this_cache(
    config: &Config,
    headers: &(impl Fields + ?Sized),
    host: &mut impl Host,
) {
    let tags = config.tags.headers.iter().filter(|_| config.tags.strip);
    for name in tags.chain(&config.strip_targeted_fields) {
        if headers.has_field(name) {
            host.remove_response_header(name);
        }
    }
}

/// RFC 9211 §2: Cache-Status is a list, nearest the origin first — `ours` goes after the
/// entries of caches upstream of us (a shield tier, an edge behind a front cache).
pub fn write_cache_status(headers: &(impl Fields + ?Sized), ours: &str, host: &mut impl Host) {
    let mut value = join_lines(headers.field_lines("cache-status")).unwrap_or_default();
    if !value.is_empty() {
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(ours.as_bytes());
    host.set_response_header("cache-status", &value);
}
