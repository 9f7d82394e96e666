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
            let field_ok =
                field.is_empty() || r.header(field).is_some_and(|v| v.contains(contains));
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
