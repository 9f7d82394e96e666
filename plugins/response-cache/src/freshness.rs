//! Freshness (RFC 9111 §4.2): a stored response's freshness lifetime (§4.2.1, heuristics in
//! §4.2.2), its current age (§4.2.3), and whether it may satisfy a request as fresh or
//! stale given both sides' directives (§4.2.4, §5.2.1, RFC 5861).

use crate::cache_control::CacheControl;
use crate::storable::HEURISTICALLY_CACHEABLE;

/// What the cache recorded about a stored response; times in seconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub status: u16,
    pub request_time: i64,
    pub response_time: i64,
    /// Date header, if valid.
    pub date: Option<i64>,
    /// Age header (see [`parse_age`]).
    pub age: Option<u64>,
    /// Expires: None when absent; Some(None) when present but invalid (already expired, §5.3).
    pub expires: Option<Option<i64>>,
    pub last_modified: Option<i64>,
    pub cc: CacheControl,
    /// A soft purge marked it stale (`purge.rs`): never fresh, stale by zero seconds.
    pub purged_soft: bool,
}

impl Stored {
    /// The origin made it explicitly cacheable: `max-age`, `s-maxage`, `Expires` or `public`.
    /// Only such responses get the configured stale windows (`stale_while_revalidate`,
    /// `stale_if_error`): a configured default must not turn a page the origin said nothing
    /// about into a shared stale answer.
    pub fn explicitly_cacheable(&self) -> bool {
        self.cc.max_age.is_some()
            || self.cc.s_maxage.is_some()
            || self.expires.is_some()
            || self.cc.public
    }
}

/// The largest age the cache works with (RFC 9111 §1.2.2: 2^31 seconds).
pub const MAX_AGE: u64 = 2_147_483_648;

/// §5.1 Age from its first field line. A list (`Age: 5, 10`, or lines joined) is not what
/// §5.1 allows; the first member is used when it is a valid non-negative integer (Age is a
/// singleton: its first value is what a sender meant, the rest repeats or is junk). An
/// invalid first member (`Age: -5`, `Age: abc`, `Age: 7200.0`) is ignored, as if there were
/// no Age: §5.1 defines only the non-negative integer, and the http-tests cache-tests suite
/// (`age-parse-*`) expects such a response to be stored and reused like one without Age.
pub fn parse_age(value: Option<&[u8]>) -> Option<u64> {
    let first = std::str::from_utf8(value?)
        .ok()?
        .split(',')
        .next()
        .map(str::trim)?;
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(first.parse::<u64>().unwrap_or(MAX_AGE).min(MAX_AGE))
}

/// How long the response is fresh, and where that came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    Explicit(u64),
    Heuristic(u64),
    /// Nothing says it is fresh: it must be validated before use.
    Zero,
}

impl Lifetime {
    pub fn seconds(self) -> u64 {
        match self {
            Lifetime::Explicit(s) | Lifetime::Heuristic(s) => s,
            Lifetime::Zero => 0,
        }
    }
}

/// Heuristic freshness settings (§4.2.2): a fraction of the time since Last-Modified, capped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heuristic {
    pub enabled: bool,
    pub fraction: f64,
    pub max_seconds: u64,
    /// Lifetime for responses with no explicit freshness (configured `default_ttl`; 0 = none).
    pub default_ttl: u64,
    /// RFC 5861 §3 window assumed for responses that carry no `stale-while-revalidate`
    /// (configured `stale_while_revalidate`; 0 = none).
    pub stale_while_revalidate: u64,
}

impl Default for Heuristic {
    fn default() -> Self {
        Heuristic {
            enabled: true,
            fraction: 0.1,
            max_seconds: 86_400,
            default_ttl: 0,
            stale_while_revalidate: 0,
        }
    }
}

/// §4.2.1 for a shared cache: s-maxage, else max-age, else Expires − Date; then §4.2.2.
pub fn lifetime(stored: &Stored, heuristic: &Heuristic) -> Lifetime {
    let cc = &stored.cc;
    if cc.invalid && (cc.max_age.is_some() || cc.s_maxage.is_some()) {
        // §4.2.1: with conflicting or malformed directives the response is considered stale.
        return Lifetime::Zero;
    }
    if let Some(s) = cc.s_maxage {
        return Lifetime::Explicit(s);
    }
    if let Some(s) = cc.max_age {
        return Lifetime::Explicit(s);
    }
    if let Some(expires) = stored.expires {
        // §5.3: an invalid Expires (e.g. "0") is in the past.
        let Some(expires) = expires else {
            return Lifetime::Zero;
        };
        // Without Date, the time the response was received stands in (RFC 9110 §6.6.1).
        let date = stored.date.unwrap_or(stored.response_time);
        return Lifetime::Explicit((expires - date).max(0) as u64);
    }
    if heuristic.default_ttl > 0 {
        return Lifetime::Explicit(heuristic.default_ttl);
    }
    // §4.2.2: only without explicit expiration, for heuristically cacheable statuses or
    // public responses; here from Last-Modified.
    if heuristic.enabled && (HEURISTICALLY_CACHEABLE.contains(&stored.status) || cc.public) {
        if let Some(modified) = stored.last_modified {
            let date = stored.date.unwrap_or(stored.response_time);
            if date > modified {
                let seconds = ((date - modified) as f64 * heuristic.fraction) as u64;
                return Lifetime::Heuristic(seconds.min(heuristic.max_seconds));
            }
        }
    }
    Lifetime::Zero
}

/// §4.2.3: the current age at `now`.
pub fn current_age(stored: &Stored, now: i64) -> u64 {
    let date = stored.date.unwrap_or(stored.response_time);
    let apparent_age = (stored.response_time - date).max(0);
    let response_delay = (stored.response_time - stored.request_time).max(0);
    let corrected_age_value = stored.age.unwrap_or(0) as i64 + response_delay;
    let corrected_initial_age = apparent_age.max(corrected_age_value);
    let resident_time = (now - stored.response_time).max(0);
    (corrected_initial_age + resident_time) as u64
}

/// What the cache may do with a stored response for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Serve it as is.
    Fresh,
    /// Serve it stale without contacting the origin first: the request allows it (max-stale).
    StaleAllowed,
    /// Serve it stale and refresh it in the background (RFC 5861 §3).
    StaleWhileRevalidate,
    /// Contact the origin with a conditional request; on an error, RFC 5861 §4 may allow
    /// serving it stale for `stale_if_error` seconds of staleness.
    Validate { stale_if_error: Option<u64> },
}

/// Decides how a stored response may satisfy a request (§4.2.4, §5.2.1, §5.2.2, RFC 5861).
pub fn usable(stored: &Stored, request: &CacheControl, heuristic: &Heuristic, now: i64) -> Use {
    let cc = &stored.cc;
    let lifetime = lifetime(stored, heuristic).seconds();
    let age = current_age(stored, now);
    let stale_if_error = request.stale_if_error.or(cc.stale_if_error);
    let validate = Use::Validate {
        stale_if_error: if cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() {
            None
        } else {
            stale_if_error
        },
    };
    // §5.2.2.4 / §5.2.1.4: no-cache (either side) always validates.
    if cc.no_cache || request.no_cache {
        return validate;
    }
    // §5.2.1.1 max-age: not older than this; §5.2.1.3 min-fresh: fresh for at least this.
    // Ages here are whole seconds, rounded down: a stored response's true age is almost
    // always above its integer age, so integer age == max already exceeds max (and
    // `max-age=0` — a browser's reload — always goes to the origin).
    if request.max_age.is_some_and(|max| age >= max) {
        return validate;
    }
    // A soft purge: just stale, whatever its lifetime said (the stale rules below decide
    // whether it is served while one request revalidates).
    let remaining = if stored.purged_soft {
        0
    } else {
        lifetime as i64 - age as i64
    };
    if remaining > 0 {
        if request.min_fresh.is_some_and(|min| remaining < min as i64) {
            return validate;
        }
        return Use::Fresh;
    }
    // Stale. §4.2.4 / §5.2.2.2 / §5.2.2.8 / §5.2.2.10: must-revalidate, proxy-revalidate and
    // (for a shared cache) s-maxage forbid serving stale without validation.
    let staleness = (-remaining) as u64;
    let stale_forbidden = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    if !stale_forbidden {
        if request.max_stale.is_some_and(|max| staleness <= max) {
            return Use::StaleAllowed;
        }
        let configured = (heuristic.stale_while_revalidate > 0 && stored.explicitly_cacheable())
            .then_some(heuristic.stale_while_revalidate);
        let window = cc.stale_while_revalidate.or(configured);
        if window.is_some_and(|window| staleness <= window) {
            return Use::StaleWhileRevalidate;
        }
    }
    validate
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9111 §5.1: the first member of a list; an invalid first member is ignored.
    #[test]
    fn age_takes_the_first_valid_member_and_ignores_an_invalid_one() {
        assert_eq!(parse_age(None), None);
        assert_eq!(parse_age(Some(b"30")), Some(30));
        assert_eq!(parse_age(Some(b" 30 , 5")), Some(30));
        assert_eq!(parse_age(Some(b"99999999999999")), Some(MAX_AGE));
        for bad in [&b"-5"[..], b"abc", b"", b", 5", b"7200.0", b"\xff"] {
            assert_eq!(parse_age(Some(bad)), None, "{bad:?}");
        }
    }
    use proptest::prelude::*;

    const T: i64 = 1_767_225_600;

    fn stored(cc: &str) -> Stored {
        Stored {
            status: 200,
            request_time: T,
            response_time: T,
            date: Some(T),
            age: None,
            expires: None,
            last_modified: None,
            cc: CacheControl::parse([cc.as_bytes()]),
            purged_soft: false,
        }
    }

    /// A soft purge makes a fresh response stale by zero seconds: within any
    /// stale-while-revalidate window, validated otherwise, never fresh.
    #[test]
    fn a_soft_purge_makes_a_fresh_response_just_stale() {
        let heuristic = Heuristic::default();
        let now = T + 10;
        let mut fresh = stored("max-age=600");
        assert_eq!(usable(&fresh, &request(""), &heuristic, now), Use::Fresh);
        fresh.purged_soft = true;
        assert!(matches!(
            usable(&fresh, &request(""), &heuristic, now),
            Use::Validate { .. }
        ));
        let mut swr = stored("max-age=600, stale-while-revalidate=30");
        swr.purged_soft = true;
        assert_eq!(
            usable(&swr, &request(""), &heuristic, now),
            Use::StaleWhileRevalidate
        );
        let mut strict = stored("max-age=600, stale-while-revalidate=30, must-revalidate");
        strict.purged_soft = true;
        assert!(matches!(
            usable(&strict, &request(""), &heuristic, now),
            Use::Validate { .. }
        ));
    }

    fn request(cc: &str) -> CacheControl {
        CacheControl::parse([cc.as_bytes()])
    }

    /// §4.2.1: s-maxage over max-age over Expires.
    #[test]
    fn explicit_lifetime_precedence() {
        let h = Heuristic::default();
        assert_eq!(
            lifetime(&stored("max-age=60, s-maxage=120"), &h),
            Lifetime::Explicit(120)
        );
        let with_expires = Stored {
            expires: Some(Some(T + 300)),
            ..stored("max-age=60")
        };
        assert_eq!(lifetime(&with_expires, &h), Lifetime::Explicit(60));
        assert_eq!(
            lifetime(
                &Stored {
                    expires: Some(Some(T + 300)),
                    ..stored("")
                },
                &h
            ),
            Lifetime::Explicit(300)
        );
    }

    /// §5.3: an invalid Expires means already expired.
    #[test]
    fn invalid_expires_is_in_the_past() {
        assert_eq!(
            lifetime(
                &Stored {
                    expires: Some(None),
                    ..stored("")
                },
                &Heuristic::default()
            ),
            Lifetime::Zero
        );
    }

    /// §4.2.2: 10% of the time since Last-Modified, only without explicit freshness.
    #[test]
    fn heuristic_freshness() {
        let s = Stored {
            last_modified: Some(T - 10_000),
            ..stored("")
        };
        assert_eq!(
            lifetime(&s, &Heuristic::default()),
            Lifetime::Heuristic(1_000)
        );
        assert_eq!(
            lifetime(
                &s,
                &Heuristic {
                    enabled: false,
                    ..Heuristic::default()
                }
            ),
            Lifetime::Zero
        );
        let capped = Stored {
            last_modified: Some(T - 100_000_000),
            ..stored("")
        };
        assert_eq!(
            lifetime(&capped, &Heuristic::default()),
            Lifetime::Heuristic(86_400)
        );
        let not_cacheable = Stored {
            status: 500,
            last_modified: Some(T - 10_000),
            ..stored("")
        };
        assert_eq!(
            lifetime(&not_cacheable, &Heuristic::default()),
            Lifetime::Zero
        );
    }

    /// §4.2.1: conflicting max-age values make it stale.
    #[test]
    fn conflicting_directives_are_stale() {
        let s = Stored {
            cc: CacheControl::parse([&b"max-age=60"[..], b"max-age=600"]),
            ..stored("")
        };
        assert_eq!(lifetime(&s, &Heuristic::default()), Lifetime::Zero);
    }

    /// §4.2.3: apparent age, response delay and the Age header.
    #[test]
    fn current_age_calculation() {
        let s = Stored {
            request_time: T - 2,
            response_time: T,
            date: Some(T - 5),
            age: Some(10),
            ..stored("")
        };
        // apparent 5; corrected age value 10 + 2 = 12; initial 12; resident 30.
        assert_eq!(current_age(&s, T + 30), 42);
        let clock_skew = Stored {
            date: Some(T + 100),
            ..stored("")
        };
        assert_eq!(
            current_age(&clock_skew, T),
            0,
            "a Date in the future does not make age negative"
        );
    }

    /// RFC 5861 §3: the configured window applies only when the response names none, and
    /// never where stale is forbidden (must-revalidate, s-maxage) or the request wants
    /// validation (no-cache).
    #[test]
    fn configured_stale_while_revalidate_window() {
        let h = Heuristic {
            stale_while_revalidate: 30,
            ..Heuristic::default()
        };
        let validate = Use::Validate {
            stale_if_error: None,
        };
        let plain = stored("max-age=60");
        assert_eq!(
            usable(&plain, &request(""), &h, T + 90),
            Use::StaleWhileRevalidate
        );
        assert_eq!(usable(&plain, &request(""), &h, T + 91), validate);
        // Not explicitly cacheable (only a Last-Modified heuristic, or nothing): no configured
        // window, so a configured default never makes such a page a shared stale answer.
        let heuristic = Stored {
            last_modified: Some(T - 100),
            ..stored("")
        };
        assert_eq!(usable(&heuristic, &request(""), &h, T + 20), validate);
        assert!(!stored("no-cache").explicitly_cacheable());
        assert!(stored("public").explicitly_cacheable());
        let own = stored("max-age=60, stale-while-revalidate=5");
        assert_eq!(
            usable(&own, &request(""), &h, T + 66),
            validate,
            "the origin's own window wins"
        );
        for forbidden in [
            "max-age=60, must-revalidate",
            "s-maxage=60",
            "max-age=60, proxy-revalidate",
        ] {
            assert_eq!(
                usable(&stored(forbidden), &request(""), &h, T + 61),
                validate,
                "{forbidden}"
            );
        }
        assert_eq!(usable(&plain, &request("no-cache"), &h, T + 61), validate);
        assert_eq!(
            usable(&plain, &request(""), &Heuristic::default(), T + 61),
            validate,
            "no window configured"
        );
    }

    /// §4.2.4, §5.2.1, RFC 5861.
    #[test]
    fn using_stored_responses() {
        let h = Heuristic::default();
        let s = stored("max-age=60, stale-while-revalidate=30, stale-if-error=600");
        assert_eq!(usable(&s, &request(""), &h, T + 59), Use::Fresh);
        assert_eq!(
            usable(&s, &request(""), &h, T + 60),
            Use::StaleWhileRevalidate
        );
        assert_eq!(
            usable(&s, &request(""), &h, T + 91),
            Use::Validate {
                stale_if_error: Some(600)
            }
        );
        assert_eq!(
            usable(&s, &request("max-age=10"), &h, T + 20),
            Use::Validate {
                stale_if_error: Some(600)
            }
        );
        assert_eq!(
            usable(&s, &request("min-fresh=30"), &h, T + 40),
            Use::Validate {
                stale_if_error: Some(600)
            }
        );
        assert_eq!(
            usable(&s, &request("max-stale=100"), &h, T + 150),
            Use::StaleAllowed
        );
        assert_eq!(
            usable(&s, &request("no-cache"), &h, T),
            Use::Validate {
                stale_if_error: Some(600)
            }
        );
        let strict = stored("max-age=60, must-revalidate, stale-while-revalidate=30");
        assert_eq!(
            usable(&strict, &request("max-stale"), &h, T + 61),
            Use::Validate {
                stale_if_error: None
            },
            "must-revalidate forbids stale"
        );
        let shared = stored("s-maxage=60, stale-while-revalidate=30");
        assert_eq!(
            usable(&shared, &request(""), &h, T + 61),
            Use::Validate {
                stale_if_error: None
            },
            "s-maxage implies proxy-revalidate"
        );
        assert_eq!(
            usable(&stored("no-cache, max-age=600"), &request(""), &h, T),
            Use::Validate {
                stale_if_error: None
            }
        );
    }

    proptest! {
        /// A response is fresh exactly while its age is below its lifetime.
        #[test]
        fn fresh_until_lifetime(max_age in 0u64..10_000, elapsed in 0i64..20_000) {
            let s = stored(&format!("max-age={max_age}"));
            let fresh = usable(&s, &request(""), &Heuristic::default(), T + elapsed) == Use::Fresh;
            prop_assert_eq!(fresh, (elapsed as u64) < max_age);
        }
    }
}
