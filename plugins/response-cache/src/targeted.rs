//! Targeted cache control (RFC 9213): response fields such as `CDN-Cache-Control` that steer
//! one class of caches. The first field of this cache's target list with a valid, non-empty
//! value governs storage and freshness instead of `Cache-Control` and `Expires` (§2.2).

use sfv::visitor::{
    DictionaryVisitor, EntryVisitor, Ignored, InnerListVisitor, ItemVisitor, ParameterVisitor,
};
use sfv::{BareItemFromInput, KeyRef, Parser};

use crate::cache_control::CacheControl;

/// The largest delta-seconds (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 2_147_483_648;

/// The directives of one targeted field, from all its field lines (combined as RFC 8941 §4.2
/// says: joined with commas). None when the field is absent, empty or invalid (§2.1: a parse
/// error, or a known directive with a value of the wrong type — e.g. `max-age="60"`, a
/// decimal, a negative number), so it is ignored as if absent.
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<CacheControl> {
    let mut joined: Vec<u8> = Vec::new();
    for line in lines {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line);
    }
    // Visited straight from the input (no dictionary built); a later duplicate key
    // overrides an earlier one, as in a parsed Dictionary (RFC 8941 §4.2.2).
    let mut directives = Directives::default();
    Parser::new(&joined)
        .parse_dictionary_with_visitor(&mut directives)
        .ok()?;
    (directives.entries > 0).then_some(directives.cc)
}

/// What a dictionary visit collected.
#[derive(Default)]
struct Directives {
    cc: CacheControl,
    entries: usize,
}

/// A known directive with a value of the wrong type: the field is invalid.
#[derive(Debug)]
struct WrongType;

impl std::fmt::Display for WrongType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a directive's value has the wrong type")
    }
}

impl std::error::Error for WrongType {}

impl<'de> DictionaryVisitor<'de> for Directives {
    type Error = WrongType;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, WrongType> {
        self.entries += 1;
        Ok(Directive {
            name: key.as_str(),
            cc: &mut self.cc,
        })
    }
}

/// One dictionary member, applied to the directives as it is visited.
struct Directive<'a, 'de> {
    name: &'de str,
    cc: &'a mut CacheControl,
}

impl<'de> ItemVisitor<'de> for Directive<'_, 'de> {
    type Error = WrongType;

    /// §2.1: directives keep their Cache-Control meaning; their values take the types RFC
    /// 9213 infers (delta-seconds → Integer, bare → Boolean, field lists → String or Inner
    /// List). Parameters are ignored.
    fn bare_item(
        self,
        item: BareItemFromInput<'de>,
    ) -> Result<impl ParameterVisitor<'de>, WrongType> {
        let seconds = || match &item {
            BareItemFromInput::Integer(n) => u64::try_from(i64::from(*n))
                .map(|n| n.min(MAX_DELTA))
                .map_err(|_| WrongType),
            _ => Err(WrongType),
        };
        let flag = || match &item {
            BareItemFromInput::Boolean(b) => Ok(*b),
            _ => Err(WrongType),
        };
        let cc = self.cc;
        match self.name {
            "max-age" => cc.max_age = Some(seconds()?),
            "s-maxage" => cc.s_maxage = Some(seconds()?),
            "stale-while-revalidate" => cc.stale_while_revalidate = Some(seconds()?),
            "stale-if-error" => cc.stale_if_error = Some(seconds()?),
            "no-store" => cc.no_store = flag()?,
            "must-revalidate" => cc.must_revalidate = flag()?,
            "proxy-revalidate" => cc.proxy_revalidate = flag()?,
            "public" => cc.public = flag()?,
            "must-understand" => cc.must_understand = flag()?,
            "no-transform" => cc.no_transform = flag()?,
            // Qualified forms (a field list) are taken as the unqualified directive, as for
            // Cache-Control: the stricter reading.
            "private" | "no-cache" => {
                let set = match &item {
                    BareItemFromInput::Boolean(b) => *b,
                    BareItemFromInput::String(_) | BareItemFromInput::Token(_) => true,
                    _ => return Err(WrongType),
                };
                if self.name == "private" {
                    cc.private = set;
                } else {
                    cc.no_cache = set;
                }
            }
            // Unknown directives are ignored (RFC 9111 §5.2.3), e.g. RFC 9213's `none`.
            _ => {}
        }
        Ok(Ignored)
    }
}

impl<'de> EntryVisitor<'de> for Directive<'_, 'de> {
    /// An Inner List: a field list for `private` / `no-cache`, meaningless for the others.
    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, WrongType> {
        match self.name {
            "private" => self.cc.private = true,
            "no-cache" => self.cc.no_cache = true,
            "max-age"
            | "s-maxage"
            | "stale-while-revalidate"
            | "stale-if-error"
            | "no-store"
            | "must-revalidate"
            | "proxy-revalidate"
            | "public"
            | "must-understand"
            | "no-transform" => return Err(WrongType),
            _ => {}
        }
        Ok(Ignored)
    }
}

/// The directives governing this cache for a response, and whether `Expires` still applies:
/// the first field of `targets` (in order) that is present and valid, else `Cache-Control`
/// with `Expires` (§2.2). `field` gives a field's lines.
pub fn governing<'a>(
    targets: &[String],
    field: impl Fn(&str) -> Vec<&'a [u8]>,
) -> (CacheControl, bool) {
    for name in targets {
        if let Some(cc) = parse(field(name)) {
            return (cc, false);
        }
    }
    (CacheControl::parse(field("cache-control")), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes an origin sends: a defined answer, never a panic; a field that parses
        /// is one sfv accepts as a dictionary.
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
            let _ = parse([bytes.as_slice()]);
        }

        #[test]
        fn delta_seconds_round_trip(n in 0u64..10_000_000) {
            let cc = parse([format!("max-age={n}, s-maxage={n}").as_bytes()]).unwrap();
            prop_assert_eq!((cc.max_age, cc.s_maxage), (Some(n), Some(n)));
        }
    }

    fn targeted(value: &str) -> Option<CacheControl> {
        parse([value.as_bytes()])
    }

    /// RFC 9213 §2.1: a Structured Field Dictionary with the Cache-Control directives.
    #[test]
    fn directives_parse_as_a_dictionary() {
        let cc = targeted("max-age=60, must-revalidate, private=?0, stale-if-error=30").unwrap();
        assert_eq!(cc.max_age, Some(60));
        assert_eq!(cc.stale_if_error, Some(30));
        assert!(cc.must_revalidate && !cc.private);
        assert!(targeted("no-store").unwrap().no_store);
        assert!(targeted("private=\"set-cookie\"").unwrap().private);
        assert!(targeted("no-cache=(\"set-cookie\")").unwrap().no_cache);
        // §3.1's example: `none` is no directive, but the field is valid and non-empty.
        assert_eq!(targeted("none"), Some(CacheControl::default()));
        // Lines combine (RFC 8941 §4.2).
        let cc = parse([&b"max-age=5"[..], b"public"]).unwrap();
        assert!(cc.public && cc.max_age == Some(5));
    }

    /// §2.1: invalid fields are ignored as if absent.
    #[test]
    fn invalid_or_empty_fields_are_ignored() {
        for bad in [
            "",
            "max-age=\"60\"",
            "max-age=1.5",
            "max-age=-1",
            "max-age=60,",
            "no-store=1",
            "Max-Age=60",
            "max-age=60 s",
            "private=1",
        ] {
            assert_eq!(targeted(bad), None, "{bad:?}");
        }
        assert_eq!(parse(std::iter::empty()), None);
    }

    #[test]
    fn the_first_valid_target_governs_and_expires_then_does_not_count() {
        let targets = vec![
            "edgewise-cache-control".to_string(),
            "cdn-cache-control".to_string(),
        ];
        let headers = [
            ("cache-control", "max-age=600"),
            ("edgewise-cache-control", "max-age=\"bad\""),
            ("cdn-cache-control", "max-age=5"),
        ];
        let field = |name: &str| {
            headers
                .iter()
                .filter(move |(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
                .collect::<Vec<_>>()
        };
        let (cc, expires_applies) = governing(&targets, field);
        assert_eq!((cc.max_age, expires_applies), (Some(5), false));
        let (cc, expires_applies) = governing(&[], field);
        assert_eq!((cc.max_age, expires_applies), (Some(600), true));
    }
}
