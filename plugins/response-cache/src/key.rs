//! Cache keys (RFC 9111 §4.1, §2): the primary key from scheme, host, path and the chosen
//! query parameters; `Vary` makes secondary keys from the named request headers, and a
//! stored response matches a request only if every varied header matches.

/// How the primary key is built (configuration `key`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRules {
    pub include_query: bool,
    /// Query parameters left out of the key (tracking parameters...).
    pub ignore_query_params: Vec<String>,
    /// Request headers added to the primary key (lowercase names).
    pub headers: Vec<String>,
}

/// The primary key: scheme, lowercased host, path, and — if configured — the query with
/// ignored parameters removed and the rest sorted (so `?a=1&b=2` and `?b=2&a=1` share an entry).
pub fn primary_key(
    rules: &KeyRules,
    scheme: &[u8],
    host: &[u8],
    path_and_query: &[u8],
    header: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Vec<u8> {
    let (path, query) = match path_and_query.iter().position(|b| *b == b'?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i + 1..])),
        None => (path_and_query, None),
    };
    let mut key = Vec::with_capacity(64 + path_and_query.len());
    key.extend_from_slice(scheme);
    key.extend_from_slice(b"://");
    key.extend(host.iter().map(u8::to_ascii_lowercase));
    key.extend_from_slice(path);
    if rules.include_query {
        if let Some(query) = query {
            push_query(&mut key, query, &rules.ignore_query_params);
        }
    }
    for name in &rules.headers {
        key.push(0);
        key.extend_from_slice(name.as_bytes());
        key.push(b'=');
        if let Some(value) = header(name) {
            key.extend_from_slice(&value);
        }
    }
    key
}

/// Appends the query to `key` without the ignored parameters. Parameters are split on both
/// `&` and `;` (frameworks such as Rails and many PHP/Java setups accept `;`), so a
/// parameter hidden behind `;` in an ignored one (`?utm_x=1;callback=evil`) stays keyed.
/// With `&` only, the kept parameters are sorted (`?a=1&b=2` and `?b=2&a=1` share an entry);
/// with any `;` they keep their order and separators, so `?a=1;b=2` never shares an entry
/// with `?a=1&b=2` (an origin that does not split on `;` sees them differently).
fn push_query(key: &mut Vec<u8>, query: &[u8], ignored: &[String]) {
    let is_separator = |b: &u8| *b == b'&' || *b == b';';
    let kept = |p: &&[u8]| {
        if p.is_empty() {
            return false;
        }
        let name = p.split(|b| *b == b'=').next().unwrap_or_default();
        !ignored.iter().any(|ignored| ignored.as_bytes() == name)
    };
    if !query.contains(&b';') {
        let mut params: Vec<&[u8]> = query.split(is_separator).filter(kept).collect();
        params.sort_unstable();
        if !params.is_empty() {
            key.push(b'?');
            key.extend_from_slice(&params.join(&b'&'));
        }
        return;
    }
    // Each kept parameter after the first is written with the separator that preceded it.
    let mut first = true;
    let mut preceding = b'&';
    let mut rest = query;
    loop {
        let end = rest.iter().position(is_separator).unwrap_or(rest.len());
        let param = &rest[..end];
        if kept(&param) {
            if first {
                key.push(b'?');
            } else {
                key.extend_from_slice(&[0x1f, preceding]);
            }
            key.extend_from_slice(param);
            first = false;
        }
        let Some(separator) = rest.get(end).copied() else {
            break;
        };
        preceding = separator;
        rest = &rest[end + 1..];
    }
}

/// The header names a response varies on (lowercased), or None for `Vary: *`.
pub fn vary_fields(vary: Option<&[u8]>) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for field in vary.unwrap_or_default().split(|b| *b == b',') {
        let name = String::from_utf8_lossy(field.trim_ascii()).to_ascii_lowercase();
        if name == "*" {
            return None;
        }
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort();
    Some(names)
}

/// The values of the varied headers in a request, normalized (§4.1: whitespace around
/// commas and case of the field name do not matter), as stored alongside the response.
pub fn vary_values(
    fields: &[String],
    header: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Vec<Option<Vec<u8>>> {
    fields
        .iter()
        .map(|name| {
            header(name).map(|v| {
                let parts: Vec<&[u8]> = v.split(|b| *b == b',').map(|p| p.trim_ascii()).collect();
                parts.join(&b","[..])
            })
        })
        .collect()
}

/// §4.1: a stored response matches when every varied header has the same normalized value
/// (absent in both counts as the same).
pub fn vary_matches(
    fields: &[String],
    stored: &[Option<Vec<u8>>],
    header: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> bool {
    stored.len() == fields.len() && vary_values(fields, header) == stored
}

/// The slot hash of one variant of a URL (RFC 9111 §4.1 secondary key): the primary key,
/// the generation of the URL's entry, and the request's normalized values of its Vary fields.
pub fn variant_hash(key: &[u8], generation: u64, values: &[Option<Vec<u8>>]) -> u64 {
    let mut bytes = Vec::with_capacity(key.len() + 16 + values.len() * 16);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(b"\0variant\0");
    bytes.extend_from_slice(&generation.to_le_bytes());
    for value in values {
        match value {
            Some(v) => {
                bytes.push(1);
                bytes.extend_from_slice(&(v.len() as u32).to_le_bytes());
                bytes.extend_from_slice(v);
            }
            None => bytes.push(0),
        }
    }
    edgewise_support::breaker_state::identity_hash(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_headers(_: &str) -> Option<Vec<u8>> {
        None
    }

    #[test]
    fn primary_key_normalizes_host_and_query() {
        let rules = KeyRules {
            include_query: true,
            ignore_query_params: vec!["utm_source".into()],
            headers: vec![],
        };
        let a = primary_key(
            &rules,
            b"https",
            b"Shop.Example.com",
            b"/p?b=2&utm_source=x&a=1",
            &mut no_headers,
        );
        let b = primary_key(
            &rules,
            b"https",
            b"shop.example.com",
            b"/p?a=1&b=2",
            &mut no_headers,
        );
        assert_eq!(a, b);
        assert_eq!(a, b"https://shop.example.com/p?a=1&b=2");
        let without = KeyRules {
            include_query: false,
            ..rules.clone()
        };
        assert_eq!(
            primary_key(&without, b"http", b"h", b"/p?a=1", &mut no_headers),
            b"http://h/p"
        );
        assert_ne!(
            primary_key(&rules, b"http", b"h", b"/p", &mut no_headers),
            primary_key(&rules, b"https", b"h", b"/p", &mut no_headers),
            "scheme is part of the key"
        );
    }

    /// Parameter cloaking: `;` separates parameters too, so an ignored parameter cannot hide
    /// a keyed one, and `;` / `&` forms never share an entry.
    #[test]
    fn semicolons_split_parameters_without_merging_forms() {
        let rules = KeyRules {
            include_query: true,
            ignore_query_params: vec!["utm_content".into()],
            headers: vec![],
        };
        let key = |q: &str| primary_key(&rules, b"http", b"h", q.as_bytes(), &mut no_headers);
        assert_ne!(
            key("/p?callback=a&utm_content=x;callback=evil"),
            key("/p?callback=a"),
            "the hidden callback stays in the key"
        );
        assert_eq!(key("/p?utm_content=x;a=1"), key("/p?a=1"));
        assert_ne!(key("/p?a=1;b=2"), key("/p?a=1&b=2"));
        assert_eq!(key("/p?a=1&utm_content=2&b=3"), key("/p?b=3&a=1"));
        assert_eq!(key("/p?utm_content=1;utm_content=2"), key("/p"));
    }

    #[test]
    fn configured_headers_join_the_key() {
        let rules = KeyRules {
            headers: vec!["x-device".into()],
            ..KeyRules::default()
        };
        let mut mobile = |n: &str| (n == "x-device").then(|| b"mobile".to_vec());
        assert_ne!(
            primary_key(&rules, b"http", b"h", b"/", &mut mobile),
            primary_key(&rules, b"http", b"h", b"/", &mut no_headers)
        );
    }

    /// §4.1: Vary matching, normalization, and `*`.
    #[test]
    fn vary() {
        assert_eq!(
            vary_fields(Some(b"Accept-Encoding, accept-language, ACCEPT-ENCODING")),
            Some(vec!["accept-encoding".into(), "accept-language".into()])
        );
        assert_eq!(vary_fields(Some(b"accept, *")), None);
        assert_eq!(vary_fields(None), Some(vec![]));
        let fields = vec!["accept-encoding".to_string()];
        let stored = vary_values(&fields, &mut |_| Some(b"gzip,  br".to_vec()));
        assert!(vary_matches(&fields, &stored, &mut |_| Some(
            b"gzip , br".to_vec()
        )));
        assert!(!vary_matches(&fields, &stored, &mut |_| Some(
            b"br".to_vec()
        )));
        assert!(!vary_matches(&fields, &stored, &mut no_headers));
        let absent = vary_values(&fields, &mut no_headers);
        assert!(
            vary_matches(&fields, &absent, &mut no_headers),
            "absent in both matches"
        );
    }
}
