//! Revalidation (RFC 9111 §4.3): the stored validators, and an entry freshened by a 304 or by a 206 of the same representation.

use super::*;

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
    not_modified_headers: &(impl Fields + ?Sized),
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
            .each_field()
            .filter(|(k, _)| personal(k))
            .map(|(k, v)| (k.to_string(), v.to_vec())),
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
pub(super) fn freshened(
    config: &Config,
    pending: &Pending,
    stored: &Entry,
    response_headers: &(impl Fields + ?Sized),
    take: impl Fn(&str) -> bool,
    now: i64,
) -> (Entry, bool) {
    let nominated = connection_nominated(response_headers);
    let update: Vec<(String, Vec<u8>)> = response_headers
        .each_field()
        .filter(|(k, _)| !k.starts_with(':') && !NOT_STORED.contains(k))
        .filter(|(k, _)| !nominated.iter().any(|n| n == k))
        .filter(|(k, _)| *k != "set-cookie" || config.cache_set_cookie)
        .filter(|(k, _)| take(k))
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    let refreshed = Entry {
        headers: refresh_headers(&stored.headers, &update),
        request_time: pending.request_time,
        response_time: now,
        // Revalidated after any purge that made it stale: those no longer apply.
        purge_seq: pending.purge_seq,
        ..stored.clone()
    };
    let same_variant =
        vary_fields(refreshed.header("vary")).is_some_and(|fields| fields == stored.vary_fields);
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
pub(super) fn strong_etag(headers: &(impl Fields + ?Sized)) -> Option<&[u8]> {
    let value = headers.field("etag")?.trim_ascii();
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
    partial_headers: &(impl Fields + ?Sized),
    now: i64,
) -> Option<Entry> {
    let stored = pending.revalidating.as_deref()?;
    if stored.status != 200 || strong_etag(partial_headers)? != strong_etag(&stored.headers)? {
        return None;
    }
    let multipart = partial_headers.each_field().any(|(k, v)| {
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
