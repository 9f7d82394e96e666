//! Background refresh (RFC 5861 §3): the request a refresh sends, and what its answer does to the entry.

use super::*;

/// Request header fields a background refresh does not copy from the client's request:
/// hop-by-hop and framing (RFC 9110 §7.6.1), the client's own conditionals and cache
/// directives (the refresh asks for the entry, not for what this client wanted), its id.
pub(super) const NOT_REFRESHED: [&str; 17] = [
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
