//! The `Cache-Status` response field (RFC 9211) and `Age` (RFC 9111 §5.1).

/// How the cache handled a request, for `Cache-Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served from cache without contacting the origin.
    Hit,
    /// Forwarded: nothing usable was stored.
    Miss,
    /// Forwarded to validate a stale entry (and `collapsed` when another request's forward
    /// was reused).
    Stale,
    /// Forwarded because the request asked (no-cache, no-store, method...).
    Request,
    /// Served stale (stale-while-revalidate, stale-if-error, max-stale).
    StaleServed,
    /// Forwarded and not stored, or a method the cache does not handle.
    Bypass,
}

/// A `Cache-Status` member for cache `name` (RFC 9211 §2): `name; hit; ttl=N`,
/// `name; fwd=miss; stored`, ...
pub fn cache_status(
    name: &str,
    outcome: Outcome,
    ttl: Option<i64>,
    stored: bool,
    detail: Option<&str>,
) -> String {
    let mut value = name.to_string();
    match outcome {
        Outcome::Hit | Outcome::StaleServed => value.push_str("; hit"),
        Outcome::Miss => value.push_str("; fwd=miss"),
        Outcome::Stale => value.push_str("; fwd=stale"),
        Outcome::Request => value.push_str("; fwd=request"),
        Outcome::Bypass => value.push_str("; fwd=bypass"),
    }
    if let Some(ttl) = ttl {
        value.push_str(&format!("; ttl={ttl}"));
    }
    if stored {
        value.push_str("; stored");
    }
    if let Some(detail) = detail {
        value.push_str(&format!("; detail={detail}"));
    }
    value
}

/// The `Age` value (RFC 9111 §5.1): the current age in whole seconds.
pub fn age_header(current_age: u64) -> String {
    current_age.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9211 §2 examples' shapes.
    #[test]
    fn members() {
        assert_eq!(
            cache_status("edgewise", Outcome::Hit, Some(376), false, None),
            "edgewise; hit; ttl=376"
        );
        assert_eq!(
            cache_status("edgewise", Outcome::Miss, None, true, None),
            "edgewise; fwd=miss; stored"
        );
        assert_eq!(
            cache_status(
                "edgewise",
                Outcome::StaleServed,
                Some(-5),
                false,
                Some("stale-while-revalidate")
            ),
            "edgewise; hit; ttl=-5; detail=stale-while-revalidate"
        );
        assert_eq!(age_header(42), "42");
    }
}
