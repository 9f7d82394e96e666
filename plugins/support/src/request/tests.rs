//! The request view, the duplicates rule, path and host normalisation and the match grammar, tested natively.

use super::*;

fn request(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

fn matcher(json: &str) -> Result<Matcher, ConfigError> {
    let raw: RawMatch = serde_json::from_str(json).unwrap();
    Matcher::compile("rules[0].match", Some(&raw))
}

#[test]
fn every_condition_must_hold() {
    let m = matcher(r#"{"path_prefix":"/api/","methods":["get","POST"],"hosts":["API.example.com"],"headers":{"X-Tier":"free"}}"#).unwrap();
    let mut ok = request(&[
        (":path", b"/api/x?y=1"),
        (":method", b"GET"),
        (":authority", b"api.example.com:8080"),
        ("x-tier", b"free"),
    ]);
    assert!(m.matches(&mut ok));
    let mut wrong_tier = request(&[
        (":path", b"/api/x"),
        (":method", b"GET"),
        (":authority", b"api.example.com"),
        ("x-tier", b"paid"),
    ]);
    assert!(!m.matches(&mut wrong_tier));
    let mut query_not_path = request(&[
        (":path", b"/x?/api/"),
        (":method", b"GET"),
        (":authority", b"api.example.com"),
        ("x-tier", b"free"),
    ]);
    assert!(!m.matches(&mut query_not_path));
    let mut no_method = request(&[
        (":path", b"/api/x"),
        (":authority", b"api.example.com"),
        ("x-tier", b"free"),
    ]);
    assert!(!m.matches(&mut no_method));
}

#[test]
fn absent_match_matches_everything() {
    assert!(Matcher::compile("m", None)
        .unwrap()
        .matches(&mut request(&[])));
}

#[test]
fn bad_matches_name_the_field() {
    assert_eq!(
        matcher(r#"{"path_prefix":"api"}"#).unwrap_err().field,
        "rules[0].match.path_prefix"
    );
    assert_eq!(
        matcher(r#"{"methods":[]}"#).unwrap_err().field,
        "rules[0].match.methods"
    );
    assert_eq!(
        matcher(r#"{"methods":["G ET"]}"#).unwrap_err().field,
        "rules[0].match.methods"
    );
    assert!(
        serde_json::from_str::<RawMatch>(r#"{"path":"/"}"#).is_err(),
        "unknown fields are rejected"
    );
}

fn with_client(m: &Matcher, pairs: &[(&str, &[u8])], client: Option<&str>) -> bool {
    let client = client.map(|c| c.as_bytes().to_vec());
    m.matches_with(&mut request(pairs), &mut || client.clone())
}

/// `client_cidrs`: v4 and v6 ranges and single addresses; an IPv4-mapped IPv6 client is
/// its IPv4 address; no client address, or not an address: no range holds.
#[test]
fn client_ranges() {
    let m = matcher(r#"{"client_cidrs":["10.0.0.0/8","2001:db8::/32","192.0.2.7"]}"#).unwrap();
    assert!(m.needs_client());
    for (client, inside) in [
        ("10.1.2.3", true),
        ("11.0.0.1", false),
        ("::ffff:10.9.9.9", true),
        ("2001:db8:1::5", true),
        ("2001:db9::1", false),
        ("192.0.2.7", true),
        ("192.0.2.8", false),
        ("not-an-ip", false),
    ] {
        assert_eq!(with_client(&m, &[], Some(client)), inside, "{client}");
    }
    assert!(!with_client(&m, &[], None));
    assert!(
        !m.matches(&mut request(&[])),
        "no client known: no range holds"
    );
}

/// `not` holds when its match does not; `any` when one of its matches does; nested;
/// "everyone except the office" reads as not + client_cidrs.
#[test]
fn negation_and_alternatives() {
    let m = matcher(
        r#"{"path_prefix":"/api/","not":{"client_cidrs":["10.0.0.0/8"]},
            "any":[{"methods":["POST"]},{"headers":{"x-tier":"free"}}]}"#,
    )
    .unwrap();
    let post: &[(&str, &[u8])] = &[(":path", b"/api/x"), (":method", b"POST")];
    let free_get: &[(&str, &[u8])] = &[
        (":path", b"/api/x"),
        (":method", b"GET"),
        ("x-tier", b"free"),
    ];
    let paid_get: &[(&str, &[u8])] = &[
        (":path", b"/api/x"),
        (":method", b"GET"),
        ("x-tier", b"paid"),
    ];
    assert!(with_client(&m, post, Some("203.0.113.1")));
    assert!(with_client(&m, free_get, Some("203.0.113.1")));
    assert!(
        !with_client(&m, paid_get, Some("203.0.113.1")),
        "none of `any`"
    );
    assert!(
        !with_client(&m, post, Some("10.0.0.1")),
        "the office is exempt"
    );
    // Not asked for the client unless a range is configured.
    let plain = matcher(r#"{"not":{"methods":["GET"]}}"#).unwrap();
    assert!(!plain.needs_client());
    let mut asked = false;
    assert!(
        plain.matches_with(&mut request(&[(":method", b"POST")]), &mut || {
            asked = true;
            None
        })
    );
    assert!(!asked);
}

#[test]
fn bad_ranges_and_nesting_name_the_field() {
    let e = matcher(r#"{"client_cidrs":["10.1.2.3/8"]}"#).unwrap_err();
    assert_eq!(e.field, "rules[0].match.client_cidrs[0]");
    assert!(e.to_string().contains("10.0.0.0/8"), "{e}");
    assert_eq!(
        matcher(r#"{"client_cidrs":["ten/8"]}"#).unwrap_err().field,
        "rules[0].match.client_cidrs[0]"
    );
    assert_eq!(
        matcher(r#"{"client_cidrs":[]}"#).unwrap_err().field,
        "rules[0].match.client_cidrs"
    );
    assert_eq!(
        matcher(r#"{"any":[]}"#).unwrap_err().field,
        "rules[0].match.any"
    );
    assert_eq!(
        matcher(r#"{"any":[{"not":{"path_prefix":"x"}}]}"#)
            .unwrap_err()
            .field,
        "rules[0].match.any[0].not.path_prefix"
    );
    let deep = (0..=MAX_MATCH_DEPTH).fold(String::from("{}"), |inner, _| {
        format!(r#"{{"not":{inner}}}"#)
    });
    assert!(matcher(&deep).is_err(), "nested past the bound");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// `not` inverts: for any request and client, {"not": m} holds exactly when m does not.
    #[test]
    fn not_inverts(
        path in "/[a-z]{0,3}/?[a-z]{0,2}",
        method in proptest::sample::select(vec!["GET", "POST", "PUT"]),
        client in proptest::sample::select(vec!["10.0.0.1", "10.200.0.1", "192.0.2.1", "::ffff:10.0.0.9", "2001:db8::1", "x"]),
    ) {
        let inner = r#"{"path_prefix":"/a","methods":["GET"],"client_cidrs":["10.0.0.0/9","2001:db8::/48"]}"#;
        let m = matcher(inner).unwrap();
        let n = matcher(&format!(r#"{{"not":{inner}}}"#)).unwrap();
        let pairs: &[(&str, &[u8])] = &[(":path", path.as_bytes()), (":method", method.as_bytes())];
        proptest::prop_assert_eq!(with_client(&n, pairs, Some(client)), !with_client(&m, pairs, Some(client)));
    }
}

#[test]
fn hosts_compare_without_port_and_case() {
    assert_eq!(host_only(b"Api.Example.COM:443"), b"api.example.com");
    assert_eq!(host_only(b"[::1]:8080"), b"[::1]");
    assert_eq!(host_only(b"example.com"), b"example.com");
}

/// RFC 3986 §6.2.2: the spellings of one path an origin resolves alike.
#[test]
fn paths_are_normalised_before_matching() {
    for (raw, want) in [
        ("/api/x", "/api/x"),
        ("/%61pi/x", "/api/x"),
        ("//api//x", "/api/x"),
        ("/a/../api/x?q=/b", "/api/x"),
        ("/./api/./x/", "/api/x/"),
        ("/%2e%2e/api", "/api"),
        ("/api/%2f", "/api/%2F"),
        ("/api/%zz", "/api/%zz"),
        ("/..", "/"),
        ("", "/"),
        ("/api/x/..", "/api/"),
        ("/a%", "/a%"),
    ] {
        assert_eq!(
            String::from_utf8(normalize_path(raw.as_bytes())).unwrap(),
            want,
            "{raw}"
        );
    }
    let m = matcher(r#"{"path_prefix":"/api/","hosts":["api.example.com"]}"#).unwrap();
    for path in ["//api/x", "/%61pi/x", "/static/../api/x", "/API/../api/x"] {
        let mut r = request(&[
            (":path", path.as_bytes()),
            (":authority", b"api.example.com."),
        ]);
        assert!(m.matches(&mut r), "{path}");
    }
    let mut other = request(&[(":path", b"/apix"), (":authority", b"api.example.com")]);
    assert!(!m.matches(&mut other));
    assert_eq!(host_only(b"API.example.com.:443"), b"api.example.com");
}

#[test]
fn repeated_lines_combine_in_order() {
    let mut r = request(&[
        ("x-device", b"desktop"),
        ("a", b"1"),
        ("x-device", b"mobile"),
    ]);
    assert_eq!(r.combined("x-device"), Some(b"desktop, mobile".to_vec()));
    assert_eq!(r.combined("a"), Some(b"1".to_vec()));
    assert_eq!(r.combined("b"), None);
    assert_eq!(
        r.field_combined("x-device"),
        Some(b"desktop, mobile".to_vec())
    );
}

#[test]
fn duplicates_pick_by_rule() {
    let values = || vec![b"a".to_vec(), b"b".to_vec()];
    assert_eq!(
        pick(values(), Duplicates::SharedBucket),
        Some(AMBIGUOUS.to_vec())
    );
    assert_eq!(pick(values(), Duplicates::First), Some(b"a".to_vec()));
    assert_eq!(pick(values(), Duplicates::Last), Some(b"b".to_vec()));
    assert_eq!(
        pick(vec![b"a".to_vec(), b"a".to_vec()], Duplicates::SharedBucket),
        Some(b"a".to_vec()),
        "repeats of one value are not ambiguous"
    );
    assert_eq!(pick(vec![], Duplicates::Last), None);
}

#[test]
fn non_utf8_values_match_bytewise_without_panicking() {
    let m = matcher(r#"{"headers":{"x-a":"b"}}"#).unwrap();
    assert!(!m.matches(&mut request(&[("x-a", b"\xff\xfe")])));
}
