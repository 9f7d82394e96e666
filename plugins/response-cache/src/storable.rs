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
    /// No explicit freshness, no validator-free heuristic allowed, not `public` (§3, §4.2.2).
    NoFreshness,
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
        }
    }
}

/// What §3 looks at.
pub struct Exchange<'a> {
    pub method: &'a [u8],
    pub status: u16,
    pub request_cc: &'a CacheControl,
    pub response_cc: &'a CacheControl,
    pub request_has_authorization: bool,
    pub has_expires: bool,
    pub vary: Option<&'a [u8]>,
    pub has_set_cookie: bool,
    /// Configuration: store responses with Set-Cookie.
    pub cache_set_cookie: bool,
    /// Configuration: a default TTL applies to responses without explicit freshness.
    pub default_ttl: bool,
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
    // §3: one of Expires, max-age, s-maxage, public, a heuristically cacheable status; or
    // no-cache (stored, always revalidated). A configured default TTL counts as explicit.
    let explicit =
        e.has_expires || e.response_cc.max_age.is_some() || e.response_cc.s_maxage.is_some();
    if explicit
        || e.response_cc.public
        || e.response_cc.no_cache
        || e.default_ttl
        || HEURISTICALLY_CACHEABLE.contains(&e.status)
    {
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
            has_expires: false,
            vary: None,
            has_set_cookie: false,
            cache_set_cookie: false,
            default_ttl: false,
        }
    }

    fn cc(s: &str) -> CacheControl {
        CacheControl::parse([s.as_bytes()])
    }

    #[test]
    fn a_plain_200_is_storable_heuristically() {
        assert_eq!(check(&exchange(&cc(""), &cc(""))), Ok(()));
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

    /// §5.2.2.4: no-cache responses may be stored (they are always revalidated).
    #[test]
    fn no_cache_is_storable() {
        assert_eq!(
            check(&Exchange {
                status: 500,
                ..exchange(&cc(""), &cc("no-cache"))
            }),
            Ok(())
        );
    }
}
