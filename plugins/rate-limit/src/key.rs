//! Rate-limit keys: the client IP (peer or X-Forwarded-For with trusted hops), headers,
//! cookies (RFC 6265 §4.2.1), query parameters, path, method, host — alone or composed —
//! hashed with the configuration's seed into a table set and a fingerprint (`hash.rs`).

use edgewise_support::request::{host_only, normalize_path, pick, Duplicates, RequestView};

use crate::config::{ClientIpSource, KeyPart};

/// What a global descriptor value longer than `max` bytes is sent as: `sha256:` and the
/// first 16 bytes of SHA-256(len(key) ‖ key ‖ value) in hex (39 bytes). Collision-resistant,
/// so two clients never share a bucket, and the same on every Envoy with the same
/// `hash_seed` (the key), so a fleet's limit stays one limit. Shorter values pass unchanged.
pub fn bound_value(hash_key: &[u8], value: Vec<u8>, max: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    if value.len() <= max {
        return value;
    }
    let mut hasher = Sha256::new();
    hasher.update((hash_key.len() as u64).to_le_bytes());
    hasher.update(hash_key);
    hasher.update(&value);
    let digest = hasher.finalize();
    let mut out = b"sha256:".to_vec();
    for byte in digest.iter().take(16) {
        out.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    out
}

/// The client IP from `source.address` ("1.2.3.4:5678", "[::1]:80") or, with
/// `ForwardedFor`, the trusted_hops-th X-Forwarded-For entry from the right. When that
/// entry is missing or not an IP address, the peer address is used.
pub fn client_ip(
    source: ClientIpSource,
    peer: Option<&[u8]>,
    forwarded_for: Option<&[u8]>,
) -> Option<Vec<u8>> {
    if let ClientIpSource::ForwardedFor { trusted_hops } = source {
        if let Some(list) = forwarded_for {
            let entries: Vec<&[u8]> = list.split(|b| *b == b',').map(<[u8]>::trim_ascii).collect();
            if let Some(entry) = entries
                .len()
                .checked_sub(trusted_hops as usize)
                .and_then(|i| entries.get(i))
            {
                if let Some(ip) = parse_ip(entry) {
                    return Some(ip);
                }
            }
        }
    }
    let peer = peer?;
    let text = std::str::from_utf8(peer).ok()?;
    let host = match text.parse::<std::net::SocketAddr>() {
        Ok(addr) => return Some(addr.ip().to_string().into_bytes()),
        Err(_) => text,
    };
    parse_ip(host.as_bytes())
}

/// A canonical IP address from text, or None for anything else (names, garbage, ports on
/// IPv6 without brackets are refused).
fn parse_ip(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some(ip.to_string().into_bytes());
    }
    text.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_string().into_bytes())
}

pub use edgewise_support::request::cookie;

/// The address's network for keying: masked to `ipv4_prefix` / `ipv6_prefix` bits and written
/// "2001:db8:1:2::/64" (the address alone at /32 and /128). An IPv4-mapped IPv6 address
/// counts as IPv4. Text that is not an address is returned as it is.
pub fn ip_network(ip: &[u8], ipv4_prefix: u8, ipv6_prefix: u8) -> Vec<u8> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let Some(addr) = std::str::from_utf8(ip)
        .ok()
        .and_then(|t| t.parse::<IpAddr>().ok())
    else {
        return ip.to_vec();
    };
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    match addr {
        IpAddr::V4(v4) if ipv4_prefix < 32 => {
            let mask = u32::MAX << (32 - u32::from(ipv4_prefix));
            let net = Ipv4Addr::from(u32::from(v4) & mask);
            format!("{net}/{ipv4_prefix}").into_bytes()
        }
        IpAddr::V6(v6) if ipv6_prefix < 128 => {
            let mask = u128::MAX << (128 - u32::from(ipv6_prefix));
            let net = Ipv6Addr::from(u128::from(v6) & mask);
            format!("{net}/{ipv6_prefix}").into_bytes()
        }
        other => other.to_string().into_bytes(),
    }
}

/// The raw (not percent-decoded) values of query parameter `name`, split on `&` and `;`.
pub fn query_values(path: &[u8], name: &str) -> Vec<Vec<u8>> {
    let Some(start) = path.iter().position(|b| *b == b'?') else {
        return Vec::new();
    };
    path[start + 1..]
        .split(|b| *b == b'&' || *b == b';')
        .filter_map(|pair| {
            let (key, value) = match pair.iter().position(|b| *b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &b""[..]),
            };
            (key == name.as_bytes()).then(|| value.to_vec())
        })
        .collect()
}

/// The value of query parameter `name` (its first value).
pub fn query(path: &[u8], name: &str) -> Option<Vec<u8>> {
    query_values(path, name).into_iter().next()
}

/// Every value of cookie `name` across the request's Cookie fields.
fn cookie_values(request: &mut impl RequestView, name: &str) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    for field in request.header_values("cookie") {
        for pair in field.split(|b| *b == b';') {
            if let Some(value) = cookie(pair, name) {
                values.push(value);
            }
        }
    }
    values
}

/// Everything key extraction may need besides headers.
pub struct KeyContext<'a> {
    pub client_ip: &'a mut dyn FnMut() -> Option<Vec<u8>>,
    /// What a part takes from a field, cookie or parameter sent with different values.
    pub duplicates: Duplicates,
}

/// Builds the key for one rule: each part's bytes, length-prefixed so composite keys cannot
/// collide by concatenation. None when any part has no value: the rule does not apply.
pub fn build_key(
    parts: &[KeyPart],
    request: &mut impl RequestView,
    context: &mut KeyContext<'_>,
) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    for part in parts {
        let value = part_value(part, request, context)?;
        key.extend_from_slice(&(value.len() as u32).to_le_bytes());
        key.extend_from_slice(&value);
    }
    Some(key)
}

/// One key part's value for a request; None when it has none.
fn part_value(
    part: &KeyPart,
    request: &mut impl RequestView,
    context: &mut KeyContext<'_>,
) -> Option<Vec<u8>> {
    Some(match part {
        KeyPart::Global => Vec::new(),
        KeyPart::ClientIp => (context.client_ip)()?,
        KeyPart::Header(name) => pick(request.header_values(name), context.duplicates)?,
        KeyPart::Cookie(name) => pick(cookie_values(request, name), context.duplicates)?,
        KeyPart::Query(name) => pick(
            query_values(&request.header(":path")?, name),
            context.duplicates,
        )?,
        KeyPart::Path => normalize_path(&request.header(":path")?),
        KeyPart::Method => request.header(":method")?,
        KeyPart::Host => host_only(&request.header(":authority")?),
    })
}

/// The descriptor entry key a part is sent under to a rate limit service: the part as it
/// is configured (`client_ip`, `header:x-api-key`, `path`, ...).
pub fn entry_label(part: &KeyPart) -> String {
    match part {
        KeyPart::Global => "global".into(),
        KeyPart::ClientIp => "client_ip".into(),
        KeyPart::Header(name) => format!("header:{name}"),
        KeyPart::Cookie(name) => format!("cookie:{name}"),
        KeyPart::Query(name) => format!("query:{name}"),
        KeyPart::Path => "path".into(),
        KeyPart::Method => "method".into(),
        KeyPart::Host => "host".into(),
    }
}

/// A global rule's descriptor entries: `("rule", name)`, then one `(label, value)` per key
/// part (none for `global`). None when a part has no value: the rule does not apply.
pub fn build_entries(
    rule_name: &str,
    parts: &[KeyPart],
    request: &mut impl RequestView,
    context: &mut KeyContext<'_>,
) -> Option<Vec<(String, Vec<u8>)>> {
    let mut entries = vec![("rule".to_string(), rule_name.as_bytes().to_vec())];
    for part in parts {
        let value = part_value(part, request, context)?;
        if *part != KeyPart::Global {
            entries.push((entry_label(part), value));
        }
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_descriptor_values_become_a_bounded_hash() {
        assert_eq!(bound_value(b"", b"short".to_vec(), 64), b"short");
        let long = vec![b'u'; 30_000];
        let hashed = bound_value(b"", long.clone(), 64);
        assert_eq!(hashed.len(), 39);
        assert!(hashed.starts_with(b"sha256:"));
        assert_eq!(
            hashed,
            bound_value(b"", long.clone(), 64),
            "the same on every Envoy"
        );
        let mut other = long.clone();
        other[29_999] = b'v';
        assert_ne!(hashed, bound_value(b"", other, 64));
        assert_ne!(hashed, bound_value(b"seed", long, 64), "keyed by hash_seed");
        assert_eq!(bound_value(b"", vec![b'x'; 64], 64).len(), 64);
    }

    #[test]
    fn client_ip_from_peer() {
        assert_eq!(
            client_ip(ClientIpSource::Peer, Some(b"203.0.113.7:5555"), None).unwrap(),
            b"203.0.113.7"
        );
        assert_eq!(
            client_ip(ClientIpSource::Peer, Some(b"[2001:db8::1]:80"), None).unwrap(),
            b"2001:db8::1"
        );
        assert_eq!(
            client_ip(ClientIpSource::Peer, Some(b"garbage"), None),
            None
        );
    }

    #[test]
    fn client_ip_from_forwarded_for_honours_trusted_hops() {
        let xff = Some(b"6.6.6.6, 203.0.113.7, 10.0.0.2".as_slice());
        let peer = Some(b"10.0.0.9:1".as_slice());
        let hops = |n| ClientIpSource::ForwardedFor { trusted_hops: n };
        assert_eq!(client_ip(hops(1), peer, xff).unwrap(), b"10.0.0.2");
        assert_eq!(client_ip(hops(2), peer, xff).unwrap(), b"203.0.113.7");
        // The client-forged leftmost entry is only used if the operator trusts 3 hops.
        assert_eq!(client_ip(hops(3), peer, xff).unwrap(), b"6.6.6.6");
        // Too few entries, or garbage: the peer address.
        assert_eq!(client_ip(hops(4), peer, xff).unwrap(), b"10.0.0.9");
        assert_eq!(
            client_ip(hops(1), peer, Some(b"not-an-ip")).unwrap(),
            b"10.0.0.9"
        );
        assert_eq!(
            client_ip(hops(1), peer, Some(b"\xff\xfe")).unwrap(),
            b"10.0.0.9"
        );
    }

    #[test]
    fn cookies_and_queries() {
        assert_eq!(cookie(b"a=1; session=abc ;b=2", "session").unwrap(), b"abc");
        assert_eq!(cookie(b"sessionx=1", "session"), None);
        assert_eq!(query(b"/p?a=1&key=v%20x&key=2", "key").unwrap(), b"v%20x");
        assert_eq!(query(b"/p?flag", "flag").unwrap(), b"");
        assert_eq!(query(b"/p", "a"), None);
    }

    /// Per-network client keys: a client rotating within its IPv6 /64 stays one key.
    #[test]
    fn client_networks() {
        let net = |ip: &str, v4, v6| String::from_utf8(ip_network(ip.as_bytes(), v4, v6)).unwrap();
        assert_eq!(net("2001:db8:1:2:aaaa::1", 32, 64), "2001:db8:1:2::/64");
        assert_eq!(
            net("2001:db8:1:2:ffff:ffff:ffff:ffff", 32, 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(net("2001:db8::1", 32, 128), "2001:db8::1");
        assert_eq!(net("203.0.113.7", 32, 64), "203.0.113.7");
        assert_eq!(net("203.0.113.7", 24, 64), "203.0.113.0/24");
        assert_eq!(net("::ffff:203.0.113.7", 32, 64), "203.0.113.7", "mapped");
        assert_eq!(net("garbage", 32, 64), "garbage");
    }

    /// Duplicates: a second value never moves a client to a bucket of its choosing.
    #[test]
    fn duplicate_values_share_one_bucket_by_default() {
        let key = |request: &[(&str, &str)], part: KeyPart, rule: Duplicates| {
            let mut request: Vec<(String, Vec<u8>)> = request
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            let mut ip = || None;
            let mut context = KeyContext {
                client_ip: &mut ip,
                duplicates: rule,
            };
            build_key(&[part], &mut request, &mut context)
        };
        let header = || KeyPart::Header("x-api-key".into());
        let two = [("x-api-key", "victim"), ("x-api-key", "mine")];
        let three = [("x-api-key", "victim"), ("x-api-key", "other")];
        assert_eq!(
            key(&two, header(), Duplicates::SharedBucket),
            key(&three, header(), Duplicates::SharedBucket),
            "every ambiguous request shares one bucket"
        );
        assert_ne!(
            key(&two, header(), Duplicates::SharedBucket),
            key(
                &[("x-api-key", "victim")],
                header(),
                Duplicates::SharedBucket
            )
        );
        assert_eq!(
            key(&two, header(), Duplicates::Last),
            key(&[("x-api-key", "mine")], header(), Duplicates::Last)
        );
        let cookie = || KeyPart::Cookie("sid".into());
        assert_eq!(
            key(&[("cookie", "sid=a; sid=b")], cookie(), Duplicates::First),
            key(&[("cookie", "sid=a")], cookie(), Duplicates::First)
        );
        assert_eq!(
            key(
                &[("cookie", "sid=a"), ("cookie", "sid=b")],
                cookie(),
                Duplicates::SharedBucket
            ),
            key(
                &[("cookie", "sid=c; sid=d")],
                cookie(),
                Duplicates::SharedBucket
            )
        );
        let query = || KeyPart::Query("k".into());
        assert_eq!(
            key(&[(":path", "/?k=a;k=b")], query(), Duplicates::Last),
            key(&[(":path", "/?k=b")], query(), Duplicates::Last)
        );
        let path = || KeyPart::Path;
        assert_eq!(
            key(
                &[(":path", "//%61pi/./x?q")],
                path(),
                Duplicates::SharedBucket
            ),
            key(&[(":path", "/api/x")], path(), Duplicates::SharedBucket)
        );
    }

    #[test]
    fn composite_keys_do_not_collide_by_concatenation() {
        let mut ip = || Some(b"1.2.3.4".to_vec());
        let mut context = KeyContext {
            client_ip: &mut ip,
            duplicates: Duplicates::SharedBucket,
        };
        let parts = [KeyPart::Header("a".into()), KeyPart::Header("b".into())];
        let mut r1: Vec<(String, Vec<u8>)> =
            vec![("a".into(), b"xy".to_vec()), ("b".into(), b"z".to_vec())];
        let mut r2: Vec<(String, Vec<u8>)> =
            vec![("a".into(), b"x".to_vec()), ("b".into(), b"yz".to_vec())];
        assert_ne!(
            build_key(&parts, &mut r1, &mut context),
            build_key(&parts, &mut r2, &mut context)
        );
        let mut missing: Vec<(String, Vec<u8>)> = vec![("a".into(), b"x".to_vec())];
        assert_eq!(
            build_key(&parts, &mut missing, &mut context),
            None,
            "a missing part means the rule does not apply"
        );
    }
}
