//! A property test of response_cache.wasm through our host: seeded random sequences of
//! requests from several users (Cookie, Authorization or neither; request cache directives,
//! HEAD, POST, Range, conditionals, unkeyed headers) on two worker VMs, against an origin
//! model that answers each request either with a page personal to its user — marked only in
//! ways that do not allow a shared cache to reuse it — or with a public page. Invariants: no
//! client ever gets a body or Set-Cookie personal to someone else, no VM traps, shared data
//! stays bounded, and the cache still answers hits (it is not trivially bypassing).
//!
//! CI runs a fixed budget; `cargo xtask fuzz [steps]` runs a long one
//! (EDGEWISE_CACHE_FUZZ_STEPS, EDGEWISE_CACHE_FUZZ_SEED).

use std::time::Duration;

use host_tests::{load_module, Headers, PluginOptions, Stream, Vm, World};

/// splitmix64: a small seeded generator, so a failing run is replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Who sent a request, as the origin can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Anonymous,
    Cookie(u64),
    Bearer(u64),
}

impl Who {
    fn user(self) -> Option<u64> {
        match self {
            Who::Anonymous => None,
            Who::Cookie(u) | Who::Bearer(u) => Some(u),
        }
    }
}

fn who(headers: &Headers) -> Who {
    let number = |v: String| v.rsplit('u').next().and_then(|n| n.parse().ok());
    if let Some(u) = headers.get("cookie").and_then(number) {
        return Who::Cookie(u);
    }
    if let Some(u) = headers.get("authorization").and_then(number) {
        return Who::Bearer(u);
    }
    Who::Anonymous
}

/// How an origin marks a page personal to a Cookie user without allowing a shared cache to
/// reuse it (under `cookie_requests: "explicit"`).
const PERSONAL_FOR_COOKIE: &[&[(&str, &str)]] = &[
    &[],
    &[("etag", "\"p\"")],
    &[("last-modified", "Sat, 21 Nov 2026 10:00:00 GMT")],
    &[("cache-control", "no-cache"), ("etag", "\"p\"")],
    &[("cache-control", "must-revalidate"), ("etag", "\"p\"")],
    &[("cache-control", "private, max-age=60")],
    &[("cache-control", "private"), ("etag", "\"p\"")],
    &[("cache-control", "no-store")],
    &[("cache-control", "max-age=60"), ("vary", "Cookie")],
];

/// ... and for an Authorization user (RFC 9111 §3.5: max-age alone does not allow it).
const PERSONAL_FOR_BEARER: &[&[(&str, &str)]] = &[
    &[("cache-control", "max-age=60")],
    &[
        ("cache-control", "max-age=60, stale-while-revalidate=30"),
        ("etag", "\"p\""),
    ],
    &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")],
    &[("cache-control", "max-age=60"), ("vary", "Authorization")],
];

const PUBLIC: &[&[(&str, &str)]] = &[
    &[("cache-control", "max-age=5"), ("etag", "\"v1\"")],
    &[("cache-control", "max-age=30")],
    &[("cache-control", "s-maxage=10, max-age=0")],
    &[("cache-control", "public, max-age=20"), ("etag", "\"v2\"")],
    &[
        ("cache-control", "max-age=2, stale-while-revalidate=30"),
        ("etag", "\"v1\""),
    ],
    &[("cache-control", "max-age=2, stale-if-error=60")],
    &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
    &[("etag", "\"v1\"")],
    &[],
    &[("cache-control", "max-age=10"), ("vary", "Accept-Language")],
];

const REQUEST_DIRECTIVES: &[Option<&str>] = &[
    None,
    None,
    None,
    Some("no-cache"),
    Some("max-stale"),
    Some("max-stale=100"),
    Some("max-age=0"),
    Some("min-fresh=5"),
    Some("only-if-cached"),
    Some("no-store"),
];

const PATHS: &[&str] = &["/a", "/b", "/c?x=1", "/c?x=1;y=2", "/d"];

/// The origin model's answer to `request`: status, headers, body. Personal bodies and
/// cookies name their user ("personal:u1", "sid=u1").
fn origin(rng: &mut Rng, request: &Headers) -> (u16, Vec<(String, String)>, String) {
    let requester = who(request);
    let method = request.get(":method").unwrap_or_default();
    let path = request.get(":path").unwrap_or_default();
    let mut headers: Vec<(String, String)> = Vec::new();
    let set_cookie = |headers: &mut Vec<(String, String)>| {
        if let Some(u) = requester.user() {
            headers.push(("set-cookie".into(), format!("sid=u{u}")));
        }
    };
    if method == "POST" {
        return (204, headers, String::new());
    }
    let marks = |set: &[(&str, &str)]| -> Vec<(String, String)> {
        set.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // A revalidation (ours or the client's): 304 half the time, with the requester's
    // cookie now and then and any caching marks.
    if request.contains("if-none-match") && rng.chance(50) {
        headers = marks(match requester {
            Who::Cookie(_) if rng.chance(50) => *rng.pick(PERSONAL_FOR_COOKIE),
            Who::Bearer(_) if rng.chance(50) => *rng.pick(PERSONAL_FOR_BEARER),
            _ => *rng.pick(PUBLIC),
        });
        if rng.chance(50) {
            set_cookie(&mut headers);
        }
        return (304, headers, String::new());
    }
    let personal = match requester {
        Who::Anonymous => None,
        Who::Cookie(_) => Some(*rng.pick(PERSONAL_FOR_COOKIE)),
        Who::Bearer(_) => Some(*rng.pick(PERSONAL_FOR_BEARER)),
    }
    .filter(|_| rng.chance(60));
    let body = match personal {
        Some(set) => {
            headers = marks(set);
            format!("personal:u{}:{path}", requester.user().unwrap_or(99))
        }
        None => {
            headers = marks(*rng.pick(PUBLIC));
            format!("public:{path}")
        }
    };
    if rng.chance(20) {
        set_cookie(&mut headers);
    }
    if request.contains("range") && rng.chance(50) {
        headers.push(("content-range".into(), "bytes 0-3/100".into()));
        return (206, headers, body.chars().take(4).collect());
    }
    let status = if rng.chance(5) { 503 } else { 200 };
    (status, headers, body)
}

/// A client request from `requester`, with random directives and odd parts.
fn client_request(rng: &mut Rng, requester: Who) -> Headers {
    let method = match rng.below(20) {
        0 => "HEAD",
        1 => "POST",
        _ => "GET",
    };
    let mut h = Headers::from([
        (":method", method),
        (":path", *rng.pick(PATHS)),
        (":authority", "shop.example.com"),
    ]);
    match requester {
        Who::Anonymous => {}
        Who::Cookie(u) => h.add("cookie", format!("session=u{u}")),
        Who::Bearer(u) => h.add("authorization", format!("Bearer u{u}")),
    }
    if let Some(cc) = rng.pick(REQUEST_DIRECTIVES) {
        h.add("cache-control", cc);
    }
    if rng.chance(10) {
        h.add("range", "bytes=0-3");
    }
    if rng.chance(10) {
        h.add("if-none-match", *rng.pick(&["\"v1\"", "\"p\"", "\"zz\""]));
    }
    if rng.chance(5) {
        h.add("x-forwarded-host", "evil.example");
    }
    if rng.chance(30) {
        h.add("accept-language", *rng.pick(&["en", "de"]));
    }
    h
}

/// What the client `requester` got must not be personal to anyone else.
fn check(requester: Who, response: &host_tests::Passed, context: &str) {
    let body = response.body_text();
    let mine = requester.user();
    for other in 0..3u64 {
        if Some(other) == mine {
            continue;
        }
        assert!(
            !body.contains(&format!("personal:u{other}:")),
            "{requester:?} got u{other}'s page {body:?} ({context})"
        );
        for (name, value) in response.headers.pairs() {
            if name == "set-cookie" {
                assert!(
                    String::from_utf8_lossy(value) != format!("sid=u{other}"),
                    "{requester:?} got u{other}'s cookie ({context})"
                );
            }
        }
    }
}

struct InFlight {
    stream: Stream,
    requester: Who,
    answered: bool,
}

/// One seeded run of `steps` steps under `config`; returns the hits it saw.
fn run(seed: u64, steps: usize, config: &str) -> i64 {
    let mut rng = Rng(seed);
    let world = World::new();
    world.add_cluster("origin");
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .plugin_name("response_cache")
        .configuration(config);
    let vms: Vec<Vm> = world
        .start_vms(&load_module("response_cache"), &options, 2)
        .unwrap_or_else(|f| panic!("{f}"));
    let mut in_flight: Vec<InFlight> = Vec::new();
    for step in 0..steps {
        let context = format!("seed {seed}, step {step}, config {config}");
        match rng.below(10) {
            // A new request (at most 4 in flight).
            0..=4 if in_flight.len() < 4 => {
                let requester = match rng.below(3) {
                    0 => Who::Anonymous,
                    1 => Who::Cookie(rng.below(3)),
                    _ => Who::Bearer(rng.below(3)),
                };
                let headers = client_request(&mut rng, requester);
                let mut stream = vms[rng.below(2) as usize].stream();
                stream
                    .try_send_request_headers(headers, true)
                    .unwrap_or_else(|f| panic!("trap: {f} ({context})"));
                in_flight.push(InFlight {
                    stream,
                    requester,
                    answered: false,
                });
            }
            // The origin answers one forwarded request.
            5..=7 if !in_flight.is_empty() => {
                let i = rng.below(in_flight.len() as u64) as usize;
                let f = &mut in_flight[i];
                if let (false, Some(sent)) = (f.answered, f.stream.upstream_request()) {
                    f.answered = true;
                    let (status, headers, body) = origin(&mut rng, &sent.headers);
                    let mut all = Headers::from([(":status", status.to_string())]);
                    for (k, v) in &headers {
                        all.add(k, v);
                    }
                    let empty =
                        body.is_empty() || sent.header(":method").as_deref() == Some("HEAD");
                    if !empty {
                        all.add("content-length", body.len().to_string());
                    }
                    f.stream
                        .try_send_response_headers(all, empty)
                        .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
                    if !empty {
                        f.stream
                            .try_send_response_body(body.as_bytes(), true)
                            .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
                    }
                }
            }
            // Background refreshes answered by the origin model.
            8 => {
                for call in world.pending_http_calls() {
                    let (status, headers, body) = origin(&mut rng, &call.headers);
                    let pairs: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    world
                        .respond_http_call(call.id, status, &pairs, body.as_bytes())
                        .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
                }
            }
            // Time passes (ticks serve waiting requests).
            _ => {
                let by = Duration::from_millis(rng.below(4_000));
                world
                    .advance(by)
                    .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
            }
        }
        // Finished exchanges are checked and ended.
        in_flight.retain_mut(|f| {
            let done = f.stream.response().is_some_and(|r| r.complete) || f.stream.is_reset();
            if done {
                if let Some(response) = f.stream.response() {
                    check(f.requester, &response, &context);
                }
                f.stream
                    .try_finish()
                    .unwrap_or_else(|e| panic!("trap: {e} ({context})"));
            }
            !done
        });
    }
    // Everything still waiting is let go; shared data stays within the configured bounds.
    for mut f in in_flight.drain(..) {
        let _ = f.stream.try_finish();
    }
    let (keys, bytes) = world.shared_data_footprint("edgewise");
    assert!(keys <= 3 * 64 + 2, "{keys} keys (seed {seed})");
    assert!(
        bytes <= 16_384 + 64 * 40 + 64 * 64 + 1028,
        "{bytes} bytes (seed {seed})"
    );
    world.metric("edgewise.response_cache.hits").unwrap_or(0)
}

const CONFIGS: &[&str] = &[
    r#"{"max_entries":64,"max_bytes":16384,"max_entry_bytes":4096}"#,
    r#"{"max_entries":64,"max_bytes":16384,"max_entry_bytes":4096,"stale_while_revalidate":"1m","stale_if_error":"5m","background_refresh":{"cluster":"origin"}}"#,
    r#"{"max_entries":64,"max_bytes":16384,"max_entry_bytes":4096,"default_ttl":"30s","unkeyed_headers":{"action":"strip"}}"#,
    r#"{"max_entries":64,"max_bytes":16384,"max_entry_bytes":4096,"cookie_requests":"bypass","coalesce":{"enabled":false}}"#,
];

#[test]
fn no_user_ever_gets_another_users_page_or_cookie() {
    let steps: usize = std::env::var("EDGEWISE_CACHE_FUZZ_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6_000);
    let seed: u64 = std::env::var("EDGEWISE_CACHE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let runs = 8;
    let mut hits = 0;
    for run_index in 0..runs {
        let config = CONFIGS[run_index % CONFIGS.len()];
        hits += run(seed.wrapping_add(run_index as u64), steps / runs, config);
    }
    assert!(
        hits > 0,
        "the cache never answered: the property would hold vacuously"
    );
    println!("{steps} steps, {hits} hits");
}
