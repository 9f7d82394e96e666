//! May a shared cache store this response? RFC 9111 §3 (and §3.5 for Authorization), with
//! the reason for a refusal, so it can name a metric.

use crate::cache_control::CacheControl;

/// Status codes defined as heuristically cacheable (RFC 9110 §15.1).
pub const HEURISTICALLY_CACHEABLE: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStorable {
    /// Only GET responses are stored (HEAD is answered from them).
    Method,
    /// 206 (no range support yet), 304, 1xx, or a status this cache does not understand.
    Status,
    /// `no-store` in the request or the response (§5.2.1.5, §5.2.2.5).
    NoStore,
    /// `private` (§5.2.2.7): a shared cache must not store it.
    Private,
    /// The request had Authorization and the response does not allow sharing it (§3.5).
    Authorization,
    /// `Vary: *` never matches a later request (§4.1).
    VaryStar,
    /// Set-Cookie, unless configured otherwise: one user's cookie must not reach another.
    SetCookie,
    /// Neither explicit freshness (max-age, s-maxage, Expires, a configured default TTL) nor
    /// a validator (ETag, Last-Modified): it could only ever be served stale, so it is not
    /// stored (§3, §4.2.2, §4.2.4).
    NoFreshness,
    /// The request had Cookie and the response does not explicitly allow a shared cache to
    /// reuse it (configuration `cookie_requests`).
    Cookie,
    /// Not the plain request a shared entry is filled from: Range, a body on GET, an unkeyed
    /// header the origin may reflect, a client conditional the origin answered.
    Request,
    /// A header value that is not text (not UTF-8): a stored response is replayed through a
    /// host call that takes text, so such a response passes uncached.
    HeaderNotText,
}

impl NotStorable {
    pub fn label(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no_store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::VaryStar => "vary_star",
            NotStorable::SetCookie => "set_cookie",
            NotStorable::NoFreshness => "no_freshness",
            NotStorable::Cookie => "cookie",
            NotStorable::Request => "request",
            NotStorable::HeaderNotText => "header_not_text",
        }
    }
}

/// What a response to a request carrying `Cookie` needs before a shared cache stores it
/// (configuration `cookie_requests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieRequests {
    /// Requests with Cookie never use the cache: not looked up, not stored (Varnish's
    /// built-in logic).
    Bypass,
    /// Stored only with an explicit allowance from the origin: `public`, `s-maxage`,
    /// `max-age` or `Expires` (a configured `default_ttl` does not count). The default.
    Explicit,
    /// Cookie makes no difference (nginx's default; safe only when the origin marks every
    /// personal page `private` or `no-store`).
    Store,
}

/// What §3 looks at.
pub struct Exchange<'a> {
    pub method: &'a [u8],
    pub status: u16,
    pub request_cc: &'a CacheControl,
    pub response_cc: &'a CacheControl,
    pub request_has_authorization: bool,
    pub request_has_cookie: bool,
    pub has_expires: bool,
    /// The response carries ETag or a valid Last-Modified (it can be revalidated).
    pub has_validator: bool,
    pub vary: Option<&'a [u8]>,
    pub has_set_cookie: bool,
    /// Configuration: store responses with Set-Cookie.
    pub cache_set_cookie: bool,
    /// Configuration: a default TTL applies to responses without explicit freshness.
    pub default_ttl: bool,
    /// Configuration: the rule for responses to requests with Cookie.
    pub cookie_requests: CookieRequests,
}

/// RFC 9111 §3: Ok when a shared cache may store the response.
pub fn check(e: &Exchange<'_>) -> Result<(), NotStorable> {
    if e.method != b"GET" {
        return Err(NotStorable::Method);
    }
    // §3: the status must be final and understood; 206 needs range support, 304 is not a
    // complete response.
    if !(200..=599).contains(&e.status) || e.status == 206 || e.status == 304 {
        return Err(NotStorable::Status);
    }
    if e.request_cc.no_store || e.response_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if e.response_cc.private {
        return Err(NotStorable::Private);
    }
    // §3.5: a shared cache may reuse a response to a request with Authorization only if the
    // response has must-revalidate, public or s-maxage.
    if e.request_has_authorization
        && !(e.response_cc.must_revalidate
            || e.response_cc.public
            || e.response_cc.s_maxage.is_some())
    {
        return Err(NotStorable::Authorization);
    }
    if e.vary
        .is_some_and(|v| v.split(|b| *b == b',').any(|f| f.trim_ascii() == b"*"))
    {
        return Err(NotStorable::VaryStar);
    }
    if e.has_set_cookie && !e.cache_set_cookie {
        return Err(NotStorable::SetCookie);
    }
    // Freshness the origin gave explicitly (§4.2.1).
    let explicit =
        e.has_expires || e.response_cc.max_age.is_some() || e.response_cc.s_maxage.is_some();
    // A request with Cookie is usually a personal page: it takes an explicit allowance.
    if e.request_has_cookie {
        match e.cookie_requests {
            CookieRequests::Bypass => return Err(NotStorable::Cookie),
            CookieRequests::Explicit if !(explicit || e.response_cc.public) => {
                return Err(NotStorable::Cookie)
            }
            _ => {}
        }
    }
    // §3: one of Expires, max-age, s-maxage, public or a heuristically cacheable status
    // makes it storable; but a response with no freshness (explicit, configured, or
    // heuristic from Last-Modified) and no validator could only ever be served stale —
    // to a client's max-stale, or within a stale window — so it is not stored at all.
    let storable_status = explicit
        || e.response_cc.public
        || e.response_cc.no_cache
        || e.default_ttl
        || HEURISTICALLY_CACHEABLE.contains(&e.status);
    if storable_status && (explicit || e.default_ttl || e.has_validator) {
        return Ok(());
    }
    Err(NotStorable::NoFreshness)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange<'a>(req: &'a CacheControl, resp: &'a CacheControl) -> Exchange<'a> {
        Exchange {
            method: b"GET",
            status: 200,
            request_cc: req,
            response_cc: resp,
            request_has_authorization: false,
            request_has_cookie: false,
            has_expires: false,
            has_validator: false,
            vary: None,
            has_set_cookie: false,
            cache_set_cookie: false,
            default_ttl: false,
            cookie_requests: CookieRequests::Explicit,
        }
    }

    fn cc(s: &str) -> CacheControl {
        CacheControl::parse([s.as_bytes()])
    }

    /// §4.2.2: a plain 200 with a validator is stored (heuristic freshness, or revalidated);
    /// without any freshness or validator it could only be served stale: not stored.
    #[test]
    fn a_plain_200_needs_a_validator_or_freshness() {
        assert_eq!(
            check(&Exchange {
                has_validator: true,
                ..exchange(&cc(""), &cc(""))
            }),
            Ok(())
        );
        assert_eq!(
            check(&exchange(&cc(""), &cc(""))),
            Err(NotStorable::NoFreshness)
        );
        for (response, ok) in [("public", false), ("no-cache", false), ("max-age=0", true)] {
            assert_eq!(
                check(&exchange(&cc(""), &cc(response))).is_ok(),
                ok,
                "{response}"
            );
        }
        assert_eq!(
            check(&Exchange {
                default_ttl: true,
                ..exchange(&cc(""), &cc(""))
            }),
            Ok(()),
            "a configured default TTL is freshness"
        );
    }

    /// Requests with Cookie: `cookie_requests` decides; the default takes an explicit
    /// allowance from the origin (public, s-maxage, max-age, Expires), never the configured
    /// default TTL nor a heuristic.
    #[test]
    fn cookie_requests_need_an_explicit_allowance() {
        let req = cc("");
        let cases: [(&str, bool, bool, bool, bool); 7] = [
            // (response Cache-Control, has Expires, bypass, explicit, store)
            ("", false, false, false, true),
            ("max-age=60", false, false, true, true),
            ("s-maxage=60", false, false, true, true),
            ("public", false, false, true, true),
            ("", true, false, true, true),
            ("no-cache", false, false, false, true),
            ("private, max-age=60", false, false, false, false),
        ];
        for (response, has_expires, bypass, explicit, store) in cases {
            let r = cc(response);
            for (rule, want) in [
                (CookieRequests::Bypass, bypass),
                (CookieRequests::Explicit, explicit),
                (CookieRequests::Store, store),
            ] {
                let got = check(&Exchange {
                    request_has_cookie: true,
                    has_expires,
                    has_validator: true,
                    default_ttl: true,
                    cookie_requests: rule,
                    ..exchange(&req, &r)
                });
                assert_eq!(
                    got.is_ok(),
                    want,
                    "{response:?} expires={has_expires} {rule:?}"
                );
            }
        }
    }

    /// §3: only what the cache understands; we store GET.
    #[test]
    fn method_and_status() {
        let (a, b) = (cc(""), cc("max-age=60"));
        assert_eq!(
            check(&Exchange {
                method: b"POST",
                ..exchange(&a, &b)
            }),
            Err(NotStorable::Method)
        );
        for status in [100, 206, 304, 600] {
            assert_eq!(
                check(&Exchange {
                    status,
                    ..exchange(&a, &b)
                }),
                Err(NotStorable::Status),
                "{status}"
            );
        }
        assert_eq!(
            check(&Exchange {
                status: 500,
                ..exchange(&a, &cc(""))
            }),
            Err(NotStorable::NoFreshness),
            "500 is not heuristically cacheable"
        );
        assert_eq!(
            check(&Exchange {
                status: 500,
                ..exchange(&a, &b)
            }),
            Ok(()),
            "but may be stored with explicit freshness"
        );
    }

    /// §5.2.1.5 / §5.2.2.5 / §5.2.2.7.
    #[test]
    fn no_store_and_private() {
        assert_eq!(
            check(&exchange(&cc("no-store"), &cc("max-age=60"))),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            check(&exchange(&cc(""), &cc("no-store, max-age=60"))),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            check(&exchange(&cc(""), &cc("private, max-age=60"))),
            Err(NotStorable::Private)
        );
        assert_eq!(
            check(&exchange(&cc(""), &cc("private=\"x\""))),
            Err(NotStorable::Private)
        );
    }

    /// §3.5.
    #[test]
    fn authorization_needs_an_explicit_allowance() {
        let req = cc("");
        for (resp, ok) in [
            ("max-age=60", false),
            ("public", true),
            ("s-maxage=10", true),
            ("must-revalidate, max-age=5", true),
        ] {
            let r = cc(resp);
            let got = check(&Exchange {
                request_has_authorization: true,
                has_validator: true,
                ..exchange(&req, &r)
            });
            assert_eq!(got.is_ok(), ok, "{resp}");
        }
    }

    /// §4.1: `Vary: *` never matches; storing it is pointless.
    #[test]
    fn vary_star_and_set_cookie() {
        let (a, b) = (cc(""), cc("max-age=60"));
        assert_eq!(
            check(&Exchange {
                vary: Some(b"accept, *"),
                ..exchange(&a, &b)
            }),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(
            check(&Exchange {
                vary: Some(b"accept-encoding"),
                ..exchange(&a, &b)
            }),
            Ok(())
        );
        assert_eq!(
            check(&Exchange {
                has_set_cookie: true,
                ..exchange(&a, &b)
            }),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            check(&Exchange {
                has_set_cookie: true,
                cache_set_cookie: true,
                ..exchange(&a, &b)
            }),
            Ok(())
        );
    }

    /// §5.2.2.4: no-cache responses may be stored (they are always revalidated), when they
    /// can be revalidated.
    #[test]
    fn no_cache_is_storable() {
        assert_eq!(
            check(&Exchange {
                status: 500,
                has_validator: true,
                ..exchange(&cc(""), &cc("no-cache"))
            }),
            Ok(())
        );
    }
}
