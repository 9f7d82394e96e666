//! The request phase: a request decided against the store — served, forwarded (to fill, revalidate or bypass), a purge, or a 504 (RFC 9111 §4).

use super::*;

/// Compares secrets in time independent of where they differ.
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// What a purge request asks for, from its fields (see the constants above): tags (split
/// on spaces and commas), a path prefix or the whole host of its `:authority`, everything;
/// else its URL. `x-purge-soft: 1` makes it soft.
pub(super) fn purge_kind(request: &mut impl RequestView, key: &[u8], host: &[u8]) -> PurgeKind {
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

/// Request header fields that make a request conditional (RFC 9110 §13.1).
pub(super) const CONDITIONALS: [&str; 5] = [
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
pub(super) fn find_variant(
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
