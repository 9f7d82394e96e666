//! Conditional requests (RFC 9110 §13) answered from a stored response, and refreshing a
//! stored response from a 304 (RFC 9111 §4.3.4).

/// Strips a weak prefix: RFC 9110 §8.8.3.2 weak comparison ignores it.
fn opaque(tag: &[u8]) -> &[u8] {
    let tag = tag.trim_ascii();
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// RFC 9110 §13.1.2: If-None-Match matches (weak comparison) when `*` or any listed tag
/// matches the stored ETag.
pub fn if_none_match_matches(if_none_match: &[u8], etag: Option<&[u8]>) -> bool {
    if if_none_match.trim_ascii() == b"*" {
        return true;
    }
    let Some(etag) = etag else { return false };
    if_none_match
        .split(|b| *b == b',')
        .any(|candidate| !candidate.trim_ascii().is_empty() && opaque(candidate) == opaque(etag))
}

/// Whether a GET/HEAD with these conditionals gets 304 Not Modified from the stored
/// response (RFC 9110 §13.2.2: If-None-Match takes precedence; If-Modified-Since only
/// without it, and only with a valid date and a stored Last-Modified).
pub fn not_modified(
    if_none_match: Option<&[u8]>,
    if_modified_since: Option<i64>,
    etag: Option<&[u8]>,
    last_modified: Option<i64>,
) -> bool {
    match if_none_match {
        Some(inm) => if_none_match_matches(inm, etag),
        None => {
            matches!((if_modified_since, last_modified), (Some(since), Some(modified)) if modified <= since)
        }
    }
}

/// Header fields a 304 must not overwrite in the stored response (RFC 9111 §3.2: the
/// content-describing ones stay from the stored response).
const KEEP_FROM_STORED: [&str; 4] = [
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
];

/// RFC 9111 §4.3.4: the stored response's headers updated with those of a 304: every field
/// the 304 carries replaces the stored one, except framing/content fields.
pub fn refresh_headers(
    stored: &[(String, Vec<u8>)],
    not_modified: &[(String, Vec<u8>)],
) -> Vec<(String, Vec<u8>)> {
    let replaced = |name: &str| {
        !KEEP_FROM_STORED.contains(&name) && not_modified.iter().any(|(k, _)| k == name)
    };
    let mut headers: Vec<(String, Vec<u8>)> = stored
        .iter()
        .filter(|(k, _)| !replaced(k))
        .cloned()
        .collect();
    for (k, v) in not_modified {
        if !KEEP_FROM_STORED.contains(&k.as_str()) && k != ":status" {
            headers.push((k.clone(), v.clone()));
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewise_support::Fields;

    /// RFC 9110 §13.1.2 / §8.8.3.2.
    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert!(if_none_match_matches(b"\"v1\"", Some(b"\"v1\"")));
        assert!(if_none_match_matches(b"W/\"v1\"", Some(b"\"v1\"")));
        assert!(if_none_match_matches(b"\"x\", W/\"v1\"", Some(b"W/\"v1\"")));
        assert!(if_none_match_matches(b"*", None));
        assert!(!if_none_match_matches(b"\"v2\"", Some(b"\"v1\"")));
        assert!(!if_none_match_matches(b"\"v1\"", None));
    }

    /// RFC 9110 §13.2.2: precedence of If-None-Match over If-Modified-Since.
    #[test]
    fn precedence() {
        assert!(not_modified(None, Some(100), None, Some(100)));
        assert!(!not_modified(None, Some(99), None, Some(100)));
        assert!(
            !not_modified(Some(b"\"other\""), Some(200), Some(b"\"v1\""), Some(100)),
            "If-None-Match decides alone"
        );
        assert!(!not_modified(None, Some(100), None, None));
    }

    /// RFC 9111 §4.3.4: a 304 refreshes metadata, never the content's framing.
    #[test]
    fn a_304_refreshes_stored_headers() {
        let stored = vec![
            ("cache-control".to_string(), b"max-age=60".to_vec()),
            ("content-length".to_string(), b"5".to_vec()),
            ("etag".to_string(), b"\"v1\"".to_vec()),
            ("x-old".to_string(), b"1".to_vec()),
        ];
        let fresh = vec![
            (":status".to_string(), b"304".to_vec()),
            ("cache-control".to_string(), b"max-age=600".to_vec()),
            ("content-length".to_string(), b"0".to_vec()),
        ];
        let merged = refresh_headers(&stored, &fresh);
        let get = |n: &str| merged.field(n);
        assert_eq!(get("cache-control").unwrap(), b"max-age=600");
        assert_eq!(get("content-length").unwrap(), b"5");
        assert_eq!(get("x-old").unwrap(), b"1");
        assert!(get(":status").is_none());
    }
}
