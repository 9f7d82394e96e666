//! Cache-Control (RFC 9111 §5.2) with the RFC 5861 extensions, parsed from every field line
//! of a request or response. Unknown directives are ignored (§5.2.3); a directive whose
//! argument is invalid, or that appears twice with different values, is treated as the most
//! conservative reading (§4.2.1 allows "considered stale").

/// The parsed directives. Durations are delta-seconds (§1.2.2), saturating at 2^31.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// §5.2.2.4 (response) / §5.2.1.4 (request).
    pub no_cache: bool,
    pub no_store: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub no_transform: bool,
    /// Request: `max-stale` with no value accepts any staleness (§5.2.1.2).
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
    /// RFC 5861 §3, §4.
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// Some directive was malformed or contradicted itself: freshness from it is not trusted.
    pub invalid: bool,
}

const MAX_DELTA: u64 = 2_147_483_648;

/// delta-seconds = 1*DIGIT; larger values are taken as 2^31 (§1.2.2).
fn delta_seconds(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
}

/// Splits on commas outside quoted strings (RFC 9110 §5.6.1, §5.6.4).
fn split_list(text: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl CacheControl {
    /// Parses all Cache-Control field lines (each a comma-separated list).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> CacheControl {
        let mut cc = CacheControl::default();
        for line in lines {
            let Ok(text) = std::str::from_utf8(line) else {
                cc.invalid = true;
                continue;
            };
            for item in split_list(text) {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (
                        n.trim().to_ascii_lowercase(),
                        Some(v.trim().trim_matches('"')),
                    ),
                    None => (item.to_ascii_lowercase(), None),
                };
                cc.apply(&name, value);
            }
        }
        cc
    }

    fn set_delta(slot: &mut Option<u64>, invalid: &mut bool, value: Option<&str>) {
        match value.and_then(delta_seconds) {
            Some(v) => match *slot {
                Some(existing) if existing != v => {
                    // Conflicting values: keep the most conservative (smallest) and mark it.
                    *slot = Some(existing.min(v));
                    *invalid = true;
                }
                _ => *slot = Some(v),
            },
            None => *invalid = true,
        }
    }

    fn apply(&mut self, name: &str, value: Option<&str>) {
        match name {
            "max-age" => CacheControl::set_delta(&mut self.max_age, &mut self.invalid, value),
            "s-maxage" => CacheControl::set_delta(&mut self.s_maxage, &mut self.invalid, value),
            "min-fresh" => CacheControl::set_delta(&mut self.min_fresh, &mut self.invalid, value),
            "stale-while-revalidate" => {
                CacheControl::set_delta(&mut self.stale_while_revalidate, &mut self.invalid, value)
            }
            "stale-if-error" => {
                CacheControl::set_delta(&mut self.stale_if_error, &mut self.invalid, value)
            }
            "max-stale" => match value {
                None => self.max_stale = Some(MAX_DELTA),
                Some(v) => CacheControl::set_delta(&mut self.max_stale, &mut self.invalid, Some(v)),
            },
            // The qualified forms (`no-cache="Set-Cookie"`, `private="..."`) are treated as the
            // unqualified ones: stricter, and always allowed (§5.2.2.4, §5.2.2.7).
            "no-cache" => self.no_cache = true,
            "no-store" => self.no_store = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "no-transform" => self.no_transform = true,
            "only-if-cached" => self.only_if_cached = true,
            _ => {} // §5.2.3: unrecognized directives are ignored
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cc(lines: &[&str]) -> CacheControl {
        CacheControl::parse(lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn directives_from_several_lines_and_cases() {
        let c = cc(&[
            "Max-Age=60, public",
            "s-maxage=\"120\", stale-while-revalidate=30, stale-if-error=600",
        ]);
        assert_eq!(
            (c.max_age, c.s_maxage, c.public),
            (Some(60), Some(120), true)
        );
        assert_eq!(
            (c.stale_while_revalidate, c.stale_if_error),
            (Some(30), Some(600))
        );
        assert!(!c.invalid);
    }

    #[test]
    fn qualified_no_cache_and_private_are_taken_unqualified() {
        let c = cc(&["private=\"x-a, x-b\", no-cache=\"set-cookie\""]);
        assert!(
            c.private && c.no_cache,
            "commas inside quotes do not split: {c:?}"
        );
    }

    /// §1.2.2: a delta-seconds too large is 2^31; a malformed one is invalid.
    #[test]
    fn delta_seconds_rules() {
        assert_eq!(
            cc(&["max-age=99999999999999999999"]).max_age,
            Some(MAX_DELTA)
        );
        let bad = cc(&["max-age=-1"]);
        assert!(bad.invalid && bad.max_age.is_none());
        assert!(cc(&["max-age=1.5"]).invalid);
        assert!(cc(&["max-age"]).invalid);
    }

    /// §4.2.1: conflicting duplicates — the conservative reading.
    #[test]
    fn conflicting_duplicates_are_conservative() {
        let c = cc(&["max-age=600", "max-age=60"]);
        assert_eq!(c.max_age, Some(60));
        assert!(c.invalid);
        assert!(
            !cc(&["max-age=60, max-age=60"]).invalid,
            "identical duplicates are fine"
        );
    }

    /// §5.2.1.2: max-stale without a value accepts any staleness.
    #[test]
    fn request_directives() {
        let c = cc(&["max-stale, min-fresh=5, only-if-cached, no-cache"]);
        assert_eq!(
            (c.max_stale, c.min_fresh, c.only_if_cached, c.no_cache),
            (Some(MAX_DELTA), Some(5), true, true)
        );
    }

    #[test]
    fn unknown_directives_are_ignored_and_non_utf8_is_invalid() {
        assert_eq!(cc(&["foo=bar, x"]), CacheControl::default());
        assert!(CacheControl::parse([&b"max-age=\xff"[..]]).invalid);
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = CacheControl::parse([bytes.as_slice()]);
        }
    }
}
