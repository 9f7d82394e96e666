//! Rate-limit keys: the client IP (peer or X-Forwarded-For with trusted hops), headers,
//! cookies (RFC 6265 §4.2.1), query parameters, path, method, host — alone or composed —
//! hashed with the configuration's seed into a table set and a fingerprint.

use std::hash::{Hash, Hasher};

use edgewise_support::request::{host_only, path_only, RequestView};

use crate::config::{ClientIpSource, KeyPart};

/// A 64-bit keyed hash (SipHash-1-3 over seed ‖ data); never 0 (0 marks a free entry).
pub fn fingerprint(seed: u64, data: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut hasher);
    data.hash(&mut hasher);
    hasher.finish() | 1
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
            let entries: Vec<&[u8]> = list.split(|b| *b == b',').map(trim).collect();
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

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map(|e| e + 1)
        .unwrap_or(start);
    &bytes[start..end]
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

/// The raw (not percent-decoded) value of the first query parameter `name`.
pub fn query(path: &[u8], name: &str) -> Option<Vec<u8>> {
    let start = path.iter().position(|b| *b == b'?')? + 1;
    path[start..].split(|b| *b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        (key == name.as_bytes()).then(|| value.to_vec())
    })
}

/// Everything key extraction may need besides headers.
pub struct KeyContext<'a> {
    pub client_ip: &'a mut dyn FnMut() -> Option<Vec<u8>>,
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
        let value = match part {
            KeyPart::Global => Vec::new(),
            KeyPart::ClientIp => (context.client_ip)()?,
            KeyPart::Header(name) => request.header(name)?,
            KeyPart::Cookie(name) => cookie(&request.header("cookie")?, name)?,
            KeyPart::Query(name) => query(&request.header(":path")?, name)?,
            KeyPart::Path => path_only(&request.header(":path")?).to_vec(),
            KeyPart::Method => request.header(":method")?,
            KeyPart::Host => host_only(&request.header(":authority")?),
        };
        key.extend_from_slice(&(value.len() as u32).to_le_bytes());
        key.extend_from_slice(&value);
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn composite_keys_do_not_collide_by_concatenation() {
        let mut ip = || Some(b"1.2.3.4".to_vec());
        let mut context = KeyContext { client_ip: &mut ip };
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

    #[test]
    fn fingerprints_are_seeded_and_never_zero() {
        assert_ne!(fingerprint(1, b"k"), fingerprint(2, b"k"));
        assert_eq!(fingerprint(1, b"k") & 1, 1);
    }
}
