//! The request as filters see it (a lazily read view, so adapters fetch only the headers a
//! rule needs) and the `match` grammar shared by the rate limiter and the router.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::fields::Fields;

/// Read access to request headers. Names are lowercase; pseudo-headers `:path`,
/// `:method`, `:authority` included. Values are raw bytes (they may not be UTF-8).
pub trait RequestView {
    /// The first value of `name`.
    fn header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Every value of `name`, in order (a field may be sent more than once).
    fn header_values(&mut self, name: &str) -> Vec<Vec<u8>> {
        self.header(name).into_iter().collect()
    }
    /// Every field line of `name` as one value, as an origin that combines them reads it
    /// (RFC 9110 §5.3: the lines in order, joined with ", "); None when absent. What a
    /// cache keys on or matches by Vary must be read this way: the first line alone lets a
    /// client be served under one value while the origin answered for another.
    fn combined(&mut self, name: &str) -> Option<Vec<u8>> {
        combine(self.header_values(name))
    }
}

/// Field lines joined with ", " (RFC 9110 §5.3); None for no line.
pub fn combine(values: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    let mut lines = values.into_iter();
    let mut joined = lines.next()?;
    for line in lines {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(&line);
    }
    Some(joined)
}

/// A test/native view over a list of headers.
impl RequestView for Vec<(String, Vec<u8>)> {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.field(name).map(<[u8]>::to_vec)
    }
    fn header_values(&mut self, name: &str) -> Vec<Vec<u8>> {
        self.field_lines(name).map(<[u8]>::to_vec).collect()
    }
}

/// What a key takes when a field, cookie or query parameter it names comes more than once
/// with different values — where frameworks disagree (some take the first, many the last),
/// so a client could be counted under one value and served under another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duplicates {
    /// Every such request shares one bucket per rule: sending duplicates never escapes a
    /// limit. The default.
    SharedBucket,
    First,
    Last,
}

/// The bucket value of requests with ambiguous duplicates (`Duplicates::SharedBucket`).
pub const AMBIGUOUS: &[u8] = b"\0ambiguous";

/// One value from `values` by the duplicates rule; None when there is none.
pub fn pick(values: Vec<Vec<u8>>, rule: Duplicates) -> Option<Vec<u8>> {
    let first = values.first()?;
    if values.iter().all(|v| v == first) {
        return values.into_iter().next();
    }
    match rule {
        Duplicates::SharedBucket => Some(AMBIGUOUS.to_vec()),
        Duplicates::First => values.into_iter().next(),
        Duplicates::Last => values.into_iter().last(),
    }
}

/// The path as an origin would resolve it (RFC 3986 §6.2.2): without the query,
/// percent-encoded unreserved characters decoded (`/%61pi` → `/api`), other escapes with
/// upper-case hex, repeated slashes merged, dot-segments removed (§5.2.4: `/a/../api` →
/// `/api`). Encoded slashes (`%2F`) stay encoded.
pub fn normalize_path(path: &[u8]) -> Vec<u8> {
    let path = path_only(path);
    let plain = !path.contains(&b'%')
        && !path.windows(2).any(|w| w == b"//" || w == b"/.")
        && path.first() == Some(&b'/');
    if plain {
        return path.to_vec();
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' && i + 2 < path.len() {
            if let (Some(h), Some(l)) = (hex(path[i + 1]), hex(path[i + 2])) {
                let c = h * 16 + l;
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    decoded.push(c);
                } else {
                    decoded.push(b'%');
                    decoded.push(path[i + 1].to_ascii_uppercase());
                    decoded.push(path[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        decoded.push(b);
        i += 1;
    }
    // Segments, with empty ones (repeated slashes) merged and dot-segments resolved.
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded.split(|b| *b == b'/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (index, segment) in segments.iter().enumerate() {
        match *segment {
            b"" => trailing_slash = index == last,
            b"." => trailing_slash = index == last,
            b".." => {
                out.pop();
                trailing_slash = index == last;
            }
            other => {
                out.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = Vec::with_capacity(decoded.len());
    for segment in &out {
        normalized.push(b'/');
        normalized.extend_from_slice(segment);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push(b'/');
    }
    normalized
}

/// The path without its query string.
pub fn path_only(path: &[u8]) -> &[u8] {
    path.split(|b| *b == b'?').next().unwrap_or_default()
}

/// The host without a port or a trailing dot, lowercased ("Api.Example.com.:8080" →
/// "api.example.com"): the forms a client can use for one host all compare equal.
pub fn host_only(authority: &[u8]) -> Vec<u8> {
    let mut host = host_with_dot(authority);
    if host.len() > 1 && host.last() == Some(&b'.') {
        host.pop();
    }
    host
}

fn host_with_dot(authority: &[u8]) -> Vec<u8> {
    let text = authority.to_ascii_lowercase();
    if text.first() == Some(&b'[') {
        // IPv6 literal: keep through the closing bracket.
        return text
            .iter()
            .position(|b| *b == b']')
            .map(|end| text[..=end].to_vec())
            .unwrap_or(text);
    }
    match text.iter().rposition(|b| *b == b':') {
        Some(colon) if text[colon + 1..].iter().all(u8::is_ascii_digit) => text[..colon].to_vec(),
        _ => text,
    }
}

/// The value of cookie `name` in a Cookie header ("a=1; b=2"), per RFC 6265 §4.2.1.
pub fn cookie(header: &[u8], name: &str) -> Option<Vec<u8>> {
    header
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .find_map(|pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes())
                .then(|| pair[eq + 1..].trim_ascii().to_vec())
        })
}

/// `match` as written in configs. Every given condition must hold; an absent `match`
/// matches every request. `not` holds when its `match` does not, `any` when at least one of
/// its `match`es does; they nest (at most [`MAX_MATCH_DEPTH`] deep).
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    pub methods: Option<Vec<String>>,
    pub hosts: Option<Vec<String>>,
    /// Header name → exact value.
    pub headers: Option<BTreeMap<String, String>>,
    /// The client address is in one of these ranges ("10.0.0.0/8", "2001:db8::/32", or one
    /// address).
    pub client_cidrs: Option<Vec<String>>,
    pub not: Option<Box<RawMatch>>,
    pub any: Option<Vec<RawMatch>>,
}

/// How deep `not` and `any` may nest.
pub const MAX_MATCH_DEPTH: usize = 8;

/// A compiled `match`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matcher {
    path_prefix: Option<Vec<u8>>,
    path_exact: Option<Vec<u8>>,
    methods: Vec<Vec<u8>>,
    hosts: Vec<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    client_cidrs: Vec<Cidr>,
    not: Option<Box<Matcher>>,
    any: Vec<Matcher>,
}

/// One `client_cidrs` range: an address and how many leading bits of it count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range's leading `prefix` bits of `bits` (of `width` bits).
    fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
        match prefix {
            0 => 0,
            p => bits & (u128::MAX << (width - p.min(width))),
        }
    }

    /// Whether `addr` is in the range (IPv4 ranges hold only IPv4 addresses, and so on).
    pub fn contains(&self, addr: &std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        match (self.addr, addr) {
            (V4(net), V4(a)) => {
                Self::mask(u128::from(u32::from(*a)), self.prefix, 32) == u128::from(u32::from(net))
            }
            (V6(net), V6(a)) => Self::mask(u128::from(*a), self.prefix, 128) == u128::from(net),
            _ => false,
        }
    }
}

/// One `client_cidrs` entry: a range with no host bits set, or one address (/32, /128).
fn parse_cidr(field: &str, text: &str) -> Result<Cidr, ConfigError> {
    let bad = |why: String, fix: String| Err(ConfigError::new(field.to_string(), why, fix));
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let Ok(addr) = addr_text.parse::<std::net::IpAddr>() else {
        return bad(
            format!("{text:?} is not an address range"),
            "write ranges like \"10.0.0.0/8\" or \"2001:db8::/32\"".into(),
        );
    };
    let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text.map(|p| p.parse::<u8>()) {
        None => width,
        Some(Ok(p)) if p <= width => p,
        Some(_) => {
            return bad(
                format!("{text:?} has no valid prefix length"),
                format!("use a prefix length from 0 to {width}"),
            )
        }
    };
    let bits = match addr {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
        std::net::IpAddr::V6(a) => u128::from(a),
    };
    let masked = Cidr::mask(bits, prefix, width);
    if masked != bits {
        let meant: std::net::IpAddr = match addr {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::from(masked as u32).into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::from(masked).into(),
        };
        return bad(
            format!("{text:?} has bits set past its prefix length"),
            format!("did you mean \"{meant}/{prefix}\"?"),
        );
    }
    Ok(Cidr { addr, prefix })
}

/// The client address as an IP, an IPv4-mapped IPv6 address as IPv4 (so "::ffff:10.1.2.3"
/// is in 10.0.0.0/8).
fn client_addr(text: &[u8]) -> Option<std::net::IpAddr> {
    let addr = std::str::from_utf8(text)
        .ok()?
        .trim()
        .parse::<std::net::IpAddr>()
        .ok()?;
    Some(match addr {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, std::net::IpAddr::V4),
        v4 => v4,
    })
}

impl Matcher {
    /// Validates and compiles; `field` is the config path of this `match` (for errors).
    pub fn compile(field: &str, raw: Option<&RawMatch>) -> Result<Matcher, ConfigError> {
        Self::compile_at(field, raw, 0)
    }

    fn compile_at(
        field: &str,
        raw: Option<&RawMatch>,
        depth: usize,
    ) -> Result<Matcher, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Matcher::default());
        };
        if depth > MAX_MATCH_DEPTH {
            return Err(ConfigError::new(
                field.to_string(),
                format!("nests `not`/`any` more than {MAX_MATCH_DEPTH} deep"),
                "flatten the match",
            ));
        }
        let client_cidrs = match &raw.client_cidrs {
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    format!("{field}.client_cidrs"),
                    "is an empty list, which would match nothing",
                    "remove `client_cidrs` to match all, or list at least one range",
                ))
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, text)| parse_cidr(&format!("{field}.client_cidrs[{i}]"), text))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let not = match &raw.not {
            Some(inner) => Some(Box::new(Self::compile_at(
                &format!("{field}.not"),
                Some(inner),
                depth + 1,
            )?)),
            None => None,
        };
        let any = match &raw.any {
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    format!("{field}.any"),
                    "is an empty list, which would match nothing",
                    "remove `any`, or list at least one match",
                ))
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, m)| Self::compile_at(&format!("{field}.any[{i}]"), Some(m), depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        for (name, value) in [
            ("path_prefix", &raw.path_prefix),
            ("path_exact", &raw.path_exact),
        ] {
            if let Some(path) = value {
                if !path.starts_with('/') {
                    return Err(ConfigError::new(
                        format!("{field}.{name}"),
                        format!("{path:?} does not start with '/'"),
                        "write a path like \"/api/\"",
                    ));
                }
            }
        }
        let list = |name: &str, values: &Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
            match values {
                Some(v) if v.is_empty() => Err(ConfigError::new(
                    format!("{field}.{name}"),
                    "is an empty list, which would match nothing",
                    format!("remove `{name}` to match all, or list at least one"),
                )),
                Some(v) => Ok(v.clone()),
                None => Ok(Vec::new()),
            }
        };
        let methods = list("methods", &raw.methods)?;
        for method in &methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ConfigError::new(
                    format!("{field}.methods"),
                    format!("{method:?} is not an HTTP method"),
                    "use names like \"GET\" or \"POST\"",
                ));
            }
        }
        let hosts = list("hosts", &raw.hosts)?;
        let mut headers = Vec::new();
        for (name, value) in raw.headers.iter().flatten() {
            if name.is_empty()
                || name
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b == b':' && name.len() == 1)
            {
                return Err(ConfigError::new(
                    format!("{field}.headers"),
                    format!("{name:?} is not a header name"),
                    "use a header name like \"x-tier\"",
                ));
            }
            headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        }
        Ok(Matcher {
            // A prefix keeps its trailing slash ("/api/" must not match "/apix").
            path_prefix: raw.path_prefix.as_ref().map(|p| {
                let mut n = normalize_path(p.as_bytes());
                if p.ends_with('/') && n.last() != Some(&b'/') {
                    n.push(b'/');
                }
                n
            }),
            path_exact: raw
                .path_exact
                .as_ref()
                .map(|p| normalize_path(p.as_bytes())),
            methods: methods
                .iter()
                .map(|m| m.to_ascii_uppercase().into_bytes())
                .collect(),
            hosts: hosts.iter().map(|h| host_only(h.as_bytes())).collect(),
            headers,
            client_cidrs,
            not,
            any,
        })
    }

    /// Whether any condition (here or nested) asks for the client address.
    pub fn needs_client(&self) -> bool {
        !self.client_cidrs.is_empty()
            || self.not.as_ref().is_some_and(|m| m.needs_client())
            || self.any.iter().any(Matcher::needs_client)
    }

    /// [`Matcher::matches_with`] without a client address: `client_cidrs` never hold.
    pub fn matches(&self, request: &mut impl RequestView) -> bool {
        self.matches_with(request, &mut || None)
    }

    /// True when every condition holds. Paths are compared normalised (`normalize_path`:
    /// without the query string, unreserved escapes decoded, slashes merged, dot-segments
    /// removed); methods exactly (upper case); hosts without port or trailing dot,
    /// case-insensitively; headers by exact value of the first occurrence; `client_cidrs`
    /// against `client()` — the filter's client address as text, asked for only when a
    /// range is configured (no address, or not an address: no range holds).
    pub fn matches_with(
        &self,
        request: &mut impl RequestView,
        client: &mut dyn FnMut() -> Option<Vec<u8>>,
    ) -> bool {
        if self.path_prefix.is_some() || self.path_exact.is_some() {
            let Some(path) = request.header(":path") else {
                return false;
            };
            let path = normalize_path(&path);
            let path = path.as_slice();
            if let Some(prefix) = &self.path_prefix {
                if !path.starts_with(prefix) {
                    return false;
                }
            }
            if let Some(exact) = &self.path_exact {
                if path != exact.as_slice() {
                    return false;
                }
            }
        }
        if !self.methods.is_empty() {
            let Some(method) = request.header(":method") else {
                return false;
            };
            if !self.methods.contains(&method) {
                return false;
            }
        }
        if !self.hosts.is_empty() {
            let Some(authority) = request.header(":authority") else {
                return false;
            };
            if !self.hosts.contains(&host_only(&authority)) {
                return false;
            }
        }
        if !self
            .headers
            .iter()
            .all(|(name, value)| request.header(name).as_deref() == Some(value.as_slice()))
        {
            return false;
        }
        // The client address last: it may cost host calls.
        if !self.client_cidrs.is_empty() {
            let Some(addr) = client().as_deref().and_then(client_addr) else {
                return false;
            };
            if !self.client_cidrs.iter().any(|net| net.contains(&addr)) {
                return false;
            }
        }
        if let Some(not) = &self.not {
            if not.matches_with(request, client) {
                return false;
            }
        }
        if !self.any.is_empty() && !self.any.iter().any(|m| m.matches_with(request, client)) {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests;
