//! Byte ranges served from a stored complete response (RFC 9110 §14): one `bytes` range of
//! a `Range` request field, `If-Range` (§13.1.5), and the 206 answer's `Content-Range`
//! (§14.4). Anything else — several ranges, another unit, a range past the end — is answered
//! with the whole response, which §14.2 always allows.

/// The one satisfiable range `Range: bytes=...` asks of a representation of `len` bytes,
/// as inclusive (first, last) positions; None when the whole response is the answer.
pub fn single_range(value: &[u8], len: u64) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    // §14.1: the range unit is case-insensitive; "bytes" is the only one we know.
    let (unit, spec) = text.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // suffix-range: the last N bytes (§14.1.1).
        (true, false) => {
            let n = number(last)?;
            (n > 0).then(|| (len - n.min(len), len - 1))
        }
        // first-pos- : from first to the end.
        (false, true) => {
            let first = number(first)?;
            (first < len).then(|| (first, len - 1))
        }
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            (first <= last && first < len).then(|| (first, last.min(len - 1)))
        }
        (true, true) => None,
    }
}

/// §13.1.5: whether `If-Range` (if sent) lets the range apply to the stored response: an
/// entity tag must equal the stored strong ETag (strong comparison: a weak tag never
/// matches); a date must equal the stored Last-Modified exactly. Otherwise the whole
/// response is the answer.
pub fn if_range_holds(
    if_range: Option<&[u8]>,
    etag: Option<&[u8]>,
    last_modified: Option<i64>,
) -> bool {
    let Some(condition) = if_range.map(<[u8]>::trim_ascii) else {
        return true;
    };
    if condition.starts_with(b"\"") {
        return etag.is_some_and(|e| e.trim_ascii() == condition);
    }
    if condition.starts_with(b"W/") {
        return false;
    }
    match (crate::http_date::parse(condition), last_modified) {
        (Some(date), Some(modified)) => date == modified,
        _ => false,
    }
}

/// The `Content-Range` of a 206 for (first, last) of `len` bytes.
pub fn content_range(first: u64, last: u64, len: u64) -> String {
    format!("bytes {first}-{last}/{len}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_range_of_each_form() {
        assert_eq!(single_range(b"bytes=0-1", 11), Some((0, 1)));
        assert_eq!(single_range(b"bytes=1-", 11), Some((1, 10)));
        assert_eq!(single_range(b"bytes=-1", 11), Some((10, 10)));
        assert_eq!(single_range(b"bytes=-50", 11), Some((0, 10)));
        assert_eq!(single_range(b"bytes=5-500", 11), Some((5, 10)));
        assert_eq!(single_range(b"Bytes = 2-3 ", 11), Some((2, 3)));
    }

    #[test]
    fn anything_else_is_the_whole_response() {
        for value in [
            &b"bytes=0-1,3-4"[..],
            b"bytes=11-",
            b"bytes=5-2",
            b"bytes=-0",
            b"bytes=-",
            b"items=0-1",
            b"bytes=a-b",
            b"bytes=0x1-2",
            b"bytes 0-1",
            b"\xff",
        ] {
            assert_eq!(single_range(value, 11), None, "{value:?}");
        }
        assert_eq!(single_range(b"bytes=0-1", 0), None);
    }

    #[test]
    fn if_range_compares_strongly() {
        let etag = Some(&b"\"v1\""[..]);
        assert!(if_range_holds(None, etag, None));
        assert!(if_range_holds(Some(b"\"v1\""), etag, None));
        assert!(!if_range_holds(Some(b"\"v2\""), etag, None));
        assert!(!if_range_holds(Some(b"W/\"v1\""), etag, None));
        assert!(!if_range_holds(Some(b"\"v1\""), Some(b"W/\"v1\""), None));
        let date = b"Sat, 21 Nov 2026 10:00:00 GMT";
        let modified = crate::http_date::parse(date);
        assert!(if_range_holds(Some(date), None, modified));
        assert!(!if_range_holds(
            Some(b"Sun, 22 Nov 2026 10:00:00 GMT"),
            None,
            modified
        ));
        assert!(!if_range_holds(Some(b"junk"), None, modified));
    }

    #[test]
    fn content_range_names_the_slice_and_the_length() {
        assert_eq!(content_range(0, 1, 11), "bytes 0-1/11");
    }
}
