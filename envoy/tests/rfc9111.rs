//! RFC 9111 (HTTP caching), with RFC 9110 conditionals and HEAD, as a table of cases run
//! through real Envoy (2 workers) with response_cache.wasm in front of our backend. Each case
//! is an origin response (the backend's `/cache` query: caching headers, status, extra fields)
//! and a sequence of requests, each expected to reach the origin or not, with a status. The
//! origin's request counter tells which requests reached it.

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, WasmFilter};

struct Step {
    method: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// Whether this request reaches the origin.
    origin: bool,
    status: u16,
    /// A response header field and a text its value must contain ("" for none).
    field: (&'static str, &'static str),
}

impl Step {
    /// `name` must be absent from the response.
    const fn expect_no_field(self, name: &'static str) -> Step {
        Step {
            field: (name, ABSENT),
            ..self
        }
    }

    const fn expect_field(self, name: &'static str, contains: &'static str) -> Step {
        Step {
            field: (name, contains),
            ..self
        }
    }
}

const fn get(origin: bool, status: u16) -> Step {
    Step {
        method: "GET",
        headers: &[],
        origin,
        status,
        field: ("", ""),
    }
}

const fn get_with(
    headers: &'static [(&'static str, &'static str)],
    origin: bool,
    status: u16,
) -> Step {
    Step {
        method: "GET",
        headers,
        origin,
        status,
        field: ("", ""),
    }
}

const fn method(method: &'static str, origin: bool, status: u16) -> Step {
    Step {
        method,
        headers: &[],
        origin,
        status,
        field: ("", ""),
    }
}

struct Case {
    section: &'static str,
    what: &'static str,
    /// The backend's `/cache` query for this case's URL.
    origin: &'static str,
    steps: &'static [Step],
}

const AUTH: &[(&str, &str)] = &[("authorization", "Bearer secret")];

/// The `contains` of a field that must be absent.
const ABSENT: &str = "\u{0}absent";

const CASES: &[Case] = &[
    Case { section: "9111 §3", what: "a 200 with max-age is stored and served", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), get(false, 200), get(false, 200)] },
    Case { section: "9111 §5.2.2.5", what: "no-store is never stored", origin: "cache_control=no-store", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §5.2.2.5", what: "no-store among other directives", origin: "cache_control=max-age%3D60%2C%20no-store", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §5.2.2.7", what: "private is not stored by a shared cache", origin: "cache_control=private%2C%20max-age%3D60", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §3.5", what: "Authorization without an allowance is not stored", origin: "cache_control=max-age%3D60", steps: &[get_with(AUTH, true, 200), get_with(AUTH, true, 200)] },
    Case { section: "9111 §3.5", what: "Authorization with public is stored", origin: "cache_control=public%2C%20max-age%3D60", steps: &[get_with(AUTH, true, 200), get_with(AUTH, false, 200)] },
    Case { section: "9111 §3.5", what: "Authorization with s-maxage is stored", origin: "cache_control=s-maxage%3D60", steps: &[get_with(AUTH, true, 200), get_with(AUTH, false, 200)] },
    Case { section: "9111 §3 (Set-Cookie)", what: "a response with Set-Cookie is not stored (cache_set_cookie off)", origin: "cache_control=max-age%3D60&header=set-cookie%3Asession%3D1", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §4.2.1", what: "s-maxage overrides max-age in a shared cache", origin: "cache_control=max-age%3D0%2C%20s-maxage%3D60", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §4.2.1", what: "max-age overrides Expires", origin: "cache_control=max-age%3D60&expires_in=-100", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.3", what: "a future Expires gives freshness", origin: "expires_in=100", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.3", what: "a past Expires is stale", origin: "expires_in=-100", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §5.3", what: "an invalid Expires (\"0\") is in the past", origin: "header=expires%3A0", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §4.2.1", what: "conflicting max-age values make the response stale", origin: "cache_control=max-age%3D60%2C%20max-age%3D120", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §4.2.3", what: "an Age beyond max-age arrives stale", origin: "cache_control=max-age%3D60&header=age%3A100", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §4.2.2", what: "heuristic freshness from an old Last-Modified", origin: "last_modified=Mon%2C%2001%20Jan%202024%2000%3A00%3A00%20GMT", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §4.2.2", what: "no freshness information: stale at once", origin: "body=plain", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §4.2.2", what: "a 404 is heuristically cacheable", origin: "status=404&last_modified=Mon%2C%2001%20Jan%202024%2000%3A00%3A00%20GMT", steps: &[get(true, 404), get(false, 404)] },
    Case { section: "9111 §3", what: "a 404 with max-age is stored", origin: "status=404&cache_control=max-age%3D60", steps: &[get(true, 404), get(false, 404)] },
    Case { section: "9111 §4.2.2", what: "a 302 is not heuristically cacheable", origin: "status=302&last_modified=Mon%2C%2001%20Jan%202024%2000%3A00%3A00%20GMT&header=location%3A%2Fx", steps: &[get(true, 302), get(true, 302)] },
    Case { section: "9111 §3", what: "a 302 with explicit freshness is stored", origin: "status=302&cache_control=max-age%3D60&header=location%3A%2Fx", steps: &[get(true, 302), get(false, 302)] },
    Case { section: "9111 §3", what: "a 206 is never stored", origin: "status=206&cache_control=max-age%3D60", steps: &[get(true, 206), get(true, 206)] },
    Case { section: "9111 §5.2.2.4", what: "no-cache is stored but revalidated every time", origin: "cache_control=no-cache&etag=v1", steps: &[get(true, 200), get(true, 200), get(true, 200)] },
    Case { section: "9111 §5.2.1.4", what: "a request's no-cache goes to the origin", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), get_with(&[("cache-control", "no-cache")], true, 200), get(false, 200)] },
    Case { section: "9111 §5.4", what: "Pragma: no-cache without Cache-Control", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), get_with(&[("pragma", "no-cache")], true, 200)] },
    Case { section: "9111 §5.2.1.1", what: "a request's max-age=0", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), get_with(&[("cache-control", "max-age=0")], true, 200)] },
    Case { section: "9111 §5.2.1.3", what: "a request's min-fresh beyond the remaining lifetime", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), get_with(&[("cache-control", "min-fresh=120")], true, 200), get_with(&[("cache-control", "min-fresh=10")], false, 200)] },
    Case { section: "9111 §5.2.1.2", what: "a request's max-stale accepts a stale response", origin: "cache_control=max-age%3D0", steps: &[get(true, 200), get_with(&[("cache-control", "max-stale=100")], false, 200), get(true, 200)] },
    Case { section: "9111 §5.2.2.2", what: "must-revalidate forbids max-stale", origin: "cache_control=max-age%3D0%2C%20must-revalidate", steps: &[get(true, 200), get_with(&[("cache-control", "max-stale=100")], true, 200)] },
    Case { section: "9111 §5.2.1.7", what: "only-if-cached with nothing stored: 504", origin: "cache_control=max-age%3D60", steps: &[get_with(&[("cache-control", "only-if-cached")], false, 504), get(true, 200), get_with(&[("cache-control", "only-if-cached")], false, 200)] },
    Case { section: "9111 §5.2.1.5", what: "a request's no-store: its response is not stored", origin: "cache_control=max-age%3D60", steps: &[get_with(&[("cache-control", "no-store")], true, 200), get(true, 200), get(false, 200)] },
    Case { section: "9111 §4.1", what: "Vary selects the variant", origin: "cache_control=max-age%3D60&vary=accept-language", steps: &[
        get_with(&[("accept-language", "en")], true, 200),
        get_with(&[("accept-language", "en")], false, 200),
        get_with(&[("accept-language", "de")], true, 200),
        get_with(&[("accept-language", "de")], false, 200),
        get_with(&[("accept-language", "en")], false, 200),
        get(true, 200),
    ] },
    Case { section: "9110 §14.2", what: "one byte range of a stored 200: 206 from the cache", origin: "cache_control=max-age%3D60&etag=v1&body=0123456789A", steps: &[
        get(true, 200),
        get_with(&[("range", "bytes=0-1")], false, 206).expect_field("content-range", "bytes 0-1/11"),
        get_with(&[("range", "bytes=1-")], false, 206).expect_field("content-range", "bytes 1-10/11"),
        get_with(&[("range", "bytes=-1")], false, 206).expect_field("content-range", "bytes 10-10/11"),
    ] },
    Case { section: "9110 §13.1.5", what: "If-Range that does not hold: the whole stored response", origin: "cache_control=max-age%3D60&etag=v1&body=0123456789A", steps: &[
        get(true, 200),
        get_with(&[("range", "bytes=0-1"), ("if-range", "\"v1\"")], false, 206),
        get_with(&[("range", "bytes=0-1"), ("if-range", "\"v2\"")], false, 200).expect_no_field("content-range"),
        get_with(&[("range", "bytes=0-1,4-5")], false, 200).expect_no_field("content-range"),
    ] },
    Case { section: "9111 §4.1", what: "Vary: * never matches", origin: "cache_control=max-age%3D60&vary=*", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9110 §13.1.2", what: "If-None-Match with the stored ETag: 304 from the cache", origin: "cache_control=max-age%3D60&etag=v1", steps: &[get(true, 200), get_with(&[("if-none-match", "\"v1\"")], false, 304), get_with(&[("if-none-match", "W/\"v1\"")], false, 304)] },
    Case { section: "9110 §13.1.2", what: "If-None-Match with another ETag: 200 from the cache", origin: "cache_control=max-age%3D60&etag=v1", steps: &[get(true, 200), get_with(&[("if-none-match", "\"v2\"")], false, 200)] },
    Case { section: "9110 §13.1.3", what: "If-Modified-Since after Last-Modified: 304", origin: "cache_control=max-age%3D60&last_modified=Mon%2C%2001%20Jan%202024%2000%3A00%3A00%20GMT", steps: &[get(true, 200), get_with(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")], false, 304), get_with(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")], false, 200)] },
    Case { section: "9111 §4.3.1", what: "a stale entry is revalidated; the 304 serves the stored 200", origin: "cache_control=max-age%3D0&etag=v1", steps: &[get(true, 200), get(true, 200), get(true, 200)] },
    Case { section: "9110 §9.3.2", what: "HEAD is answered from the GET entry", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), method("HEAD", false, 200)] },
    Case { section: "9111 §4.4", what: "POST invalidates the target URI", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), get(false, 200), method("POST", true, 200), get(true, 200), get(false, 200)] },
    Case { section: "9111 §4.4", what: "PUT invalidates the target URI", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), method("PUT", true, 200), get(true, 200)] },
    Case { section: "9111 §4.4", what: "DELETE invalidates the target URI", origin: "cache_control=max-age%3D60", steps: &[get(true, 200), method("DELETE", true, 200), get(true, 200)] },
    Case { section: "9111 §3", what: "a POST response is not stored", origin: "cache_control=max-age%3D60", steps: &[method("POST", true, 200), method("POST", true, 200)] },
    Case { section: "9111 §3", what: "a HEAD response is not stored as the GET entry", origin: "cache_control=max-age%3D60", steps: &[method("HEAD", true, 200), get(true, 200), method("HEAD", false, 200)] },
    Case { section: "9111 §5.2.2.2", what: "must-revalidate does not stop a fresh hit", origin: "cache_control=max-age%3D60%2C%20must-revalidate", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.2.2.8", what: "proxy-revalidate forbids max-stale in a shared cache", origin: "cache_control=max-age%3D0%2C%20proxy-revalidate", steps: &[get(true, 200), get_with(&[("cache-control", "max-stale=100")], true, 200)] },
    Case { section: "9111 §5.2.2.10", what: "s-maxage forbids serving stale (max-stale)", origin: "cache_control=s-maxage%3D0", steps: &[get(true, 200), get_with(&[("cache-control", "max-stale=100")], true, 200)] },
    Case { section: "9111 §5.2.3", what: "unknown directives are ignored", origin: "cache_control=max-age%3D60%2C%20x-ext%3D%22a%2Cb%22%2C%20x-flag", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.2.2.4", what: "qualified no-cache=\"field\" is taken as no-cache", origin: "cache_control=no-cache%3D%22set-cookie%22%2C%20max-age%3D60&etag=v1", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §5.2.2.7", what: "qualified private=\"field\" is taken as private", origin: "cache_control=private%3D%22x-user%22%2C%20max-age%3D60", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §4.1", what: "Vary on two fields, names in any case", origin: "cache_control=max-age%3D60&vary=Accept-Language%2C%20X-Tier", steps: &[
        get_with(&[("accept-language", "en"), ("x-tier", "gold")], true, 200),
        get_with(&[("accept-language", "en"), ("x-tier", "gold")], false, 200),
        get_with(&[("accept-language", "en"), ("x-tier", "free")], true, 200),
        get_with(&[("accept-language", "en")], true, 200),
    ] },
    Case { section: "9110 §13.1.2", what: "If-None-Match: * matches a stored response", origin: "cache_control=max-age%3D60&etag=v1", steps: &[get(true, 200), get_with(&[("if-none-match", "*")], false, 304)] },
    Case { section: "9111 §5.1 / 9211", what: "hits carry Age and Cache-Status; misses Cache-Status", origin: "cache_control=max-age%3D60", steps: &[
        get(true, 200).expect_field("cache-status", "fwd=miss"),
        get(false, 200).expect_field("age", "0").expect_field("cache-status", "edgewise; hit"),
    ] },
    Case { section: "9211 §2.7", what: "the Cache-Status of a stored miss says stored", origin: "cache_control=max-age%3D60", steps: &[get(true, 200).expect_field("cache-status", "stored")] },
    Case { section: "9111 §4.3.3", what: "a revalidated response says fwd=stale and fwd-status=304", origin: "cache_control=max-age%3D0&etag=v1", steps: &[get(true, 200), get(true, 200).expect_field("cache-status", "fwd-status=304")] },
    // RFC 9213: targeted fields (default target list: Edgewise-Cache-Control, CDN-Cache-Control).
    Case { section: "9213 §2.2", what: "CDN-Cache-Control max-age=0 overrides a long Cache-Control", origin: "cache_control=max-age%3D600&header=cdn-cache-control%3Amax-age%3D0", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9213 §2.2", what: "CDN-Cache-Control private keeps it out of this cache", origin: "cache_control=max-age%3D600&header=cdn-cache-control%3Aprivate", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9213 §2.2", what: "CDN-Cache-Control no-store keeps it out of this cache", origin: "cache_control=public%2C%20max-age%3D600&header=cdn-cache-control%3Ano-store", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9213 §2.2", what: "a fresh targeted max-age stores it despite Cache-Control: no-store", origin: "cache_control=no-store&header=cdn-cache-control%3Amax-age%3D60", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9213 §2.2", what: "the first valid field of the target list governs (Edgewise-Cache-Control before CDN-Cache-Control)", origin: "header=edgewise-cache-control%3Amax-age%3D60&header=cdn-cache-control%3Ano-store", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9213 §2.1", what: "an invalid targeted field (a String max-age) is ignored: Cache-Control governs", origin: "cache_control=no-store&header=cdn-cache-control%3Amax-age%3D%2260%22", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9213 §2.1", what: "an invalid targeted field (a Decimal max-age) is ignored: Cache-Control governs", origin: "cache_control=max-age%3D60&header=cdn-cache-control%3Amax-age%3D1.5", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9213 §2.1", what: "an invalid first target falls through to the next one", origin: "cache_control=no-store&header=edgewise-cache-control%3Amax-age%3D-1&header=cdn-cache-control%3Amax-age%3D60", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9213 §2.2", what: "with a targeted field, Expires is ignored", origin: "expires_in=100&header=cdn-cache-control%3Amust-revalidate", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9213 §2.2", what: "targeted must-revalidate forbids max-stale", origin: "cache_control=max-age%3D600&header=cdn-cache-control%3Amax-age%3D0%2C%20must-revalidate&etag=v1", steps: &[get(true, 200), get_with(&[("cache-control", "max-stale=100")], true, 200)] },
    Case { section: "9213 §3.1", what: "`none` is a valid field with no directive: no freshness, so not stored", origin: "cache_control=max-age%3D600&header=cdn-cache-control%3Anone", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9213 §2", what: "our own field is stripped downstream (miss and hit); CDN-Cache-Control passes", origin: "header=edgewise-cache-control%3Amax-age%3D60&header=cdn-cache-control%3Amax-age%3D5", steps: &[
        get(true, 200).expect_no_field("edgewise-cache-control"),
        get(false, 200).expect_no_field("edgewise-cache-control"),
        get(false, 200).expect_field("cdn-cache-control", "max-age=5"),
    ] },
    // RFC 9111 edges.
    Case { section: "9111 §5.1", what: "Age as a list: the first member counts (fresh)", origin: "cache_control=max-age%3D60&header=age%3A5%2C%20100", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.1", what: "Age as a list: the first member counts (stale)", origin: "cache_control=max-age%3D60&header=age%3A100%2C%205", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §5.1", what: "a negative Age is ignored (age-parse-negative)", origin: "cache_control=max-age%3D3600&header=age%3A-7200", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.1", what: "a non-numeric Age is ignored (age-parse-nonnumeric)", origin: "cache_control=max-age%3D3600&header=age%3Aabc", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.1", what: "a float Age is ignored (age-parse-float)", origin: "cache_control=max-age%3D3600&header=age%3A7200.0", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.3", what: "an Expires that is exactly an HTTP-date gives freshness", origin: "header=expires%3AThu%2C%2001%20Jan%202099%2000%3A00%3A00%20GMT", steps: &[get(true, 200), get(false, 200)] },
    Case { section: "9111 §5.3", what: "an Expires with an extra space is invalid: already expired", origin: "header=expires%3AThu%2C%20%2001%20Jan%202099%2000%3A00%3A00%20GMT", steps: &[get(true, 200), get(true, 200)] },
    Case { section: "9111 §3.1", what: "fields the Connection header nominates are not stored", origin: "cache_control=max-age%3D60&header=connection%3Ax-hop&header=x-hop%3Asecret", steps: &[get(true, 200).expect_field("x-hop", "secret"), get(false, 200).expect_no_field("x-hop")] },
];

#[test]
fn rfc9111_cases_through_envoy() {
    envoy_harness::build_wasm(&["response-cache"]).unwrap();
    let backend = Backend::start("origin").unwrap();
    let envoy = Envoy::start(
        &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
            "response_cache",
            wasm_path("response_cache"),
            "{}",
        )),
    )
    .unwrap();
    let mut failures = Vec::new();
    let mut steps = 0;
    for (i, case) in CASES.iter().enumerate() {
        let path = format!("/cache/rfc{i}?{}", case.origin);
        for (n, step) in case.steps.iter().enumerate() {
            steps += 1;
            let before = backend.requests().unwrap();
            let r = envoy
                .request(step.method, &path, step.headers, b"")
                .unwrap();
            let reached = backend.requests().unwrap() > before;
            let (field, contains) = step.field;
            let field_ok = field.is_empty()
                || if contains == ABSENT {
                    r.header(field).is_none()
                } else {
                    r.header(field).is_some_and(|v| v.contains(contains))
                };
            if reached != step.origin || r.status != step.status || !field_ok {
                failures.push(format!(
                    "{} {} — step {}: {} {:?}: expected origin={} status {} {field}~{contains:?}, got origin={} status {} (cache-status {:?}, age {:?})",
                    case.section,
                    case.what,
                    n + 1,
                    step.method,
                    step.headers,
                    step.origin,
                    step.status,
                    reached,
                    r.status,
                    r.header("cache-status"),
                    r.header("age")
                ));
            }
        }
    }
    println!(
        "{} cases, {steps} requests, {} failed",
        CASES.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RFC 9111 §4.2.4: a disconnected cache may serve stale. With `serve_stale_when_unreachable`,
/// an origin that cannot be reached (its process gone: Envoy's own 503) is answered with the
/// stale entry — except entries that forbid stale (must-revalidate, proxy-revalidate,
/// no-cache, s-maxage), answered with 504 (§5.2.2.2). Without the option the 503 passes.
#[test]
fn stale_is_served_when_the_origin_is_unreachable_only_if_configured() {
    envoy_harness::build_wasm(&["response-cache"]).unwrap();
    let mut backend = Backend::start("origin").unwrap();
    let start = |config: &str| {
        Envoy::start(
            &EnvoyConfig::proxy_to(backend.addr, 2).filter(WasmFilter::new(
                "response_cache",
                wasm_path("response_cache"),
                config,
            )),
        )
        .unwrap()
    };
    let on = start(r#"{"serve_stale_when_unreachable": true}"#);
    let off = start("{}");
    // Stored and stale at once (max-age=0 with a validator).
    let plain = "/cache/unreachable-plain?cache_control=max-age%3D0&etag=v1";
    let strict = [
        "/cache/unreachable-mr?cache_control=max-age%3D0%2C%20must-revalidate&etag=v1",
        "/cache/unreachable-pr?cache_control=max-age%3D0%2C%20proxy-revalidate&etag=v1",
        "/cache/unreachable-nc?cache_control=no-cache&etag=v1",
        "/cache/unreachable-sm?cache_control=s-maxage%3D0&etag=v1",
    ];
    for envoy in [&on, &off] {
        for path in std::iter::once(plain).chain(strict) {
            assert_eq!(envoy.get(path).unwrap().status, 200, "{path}");
        }
    }
    backend.kill();
    let stale = on.get(plain).unwrap();
    assert_eq!(
        (stale.status, stale.header("cache-status")),
        (200, Some("edgewise; hit; detail=origin-unreachable")),
        "§4.2.4: the stale entry"
    );
    assert!(
        stale.text().contains("cacheable /cache/unreachable-plain"),
        "the stored body: {}",
        stale.text()
    );
    for path in strict {
        let r = on.get(path).unwrap();
        assert_eq!(r.status, 504, "{path}: must not be served stale");
        assert!(r
            .header("cache-status")
            .is_some_and(|v| v.contains("origin-unreachable")));
    }
    let passed = off.get(plain).unwrap();
    assert_eq!(passed.status, 503, "off: Envoy's own error passes");
}
