//! criterion: the core decision per algorithm (one rule, per-client key, in-memory CAS
//! store), plus key extraction and config compilation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgewise_support::store::MemoryStore;
use rate_limit::{applicable_rules, decide, Config};

fn config(algorithm: &str) -> Config {
    let json = format!(
        r#"{{"rules":[{{"name":"r","key":"header:x-api-key","algorithm":"{algorithm}","limit":1000000000,"window":"1s"}}]}}"#
    );
    Config::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

/// The pure parts: the algorithm step alone, and a whole set round trip (decode, find the
/// slot, decide, store, encode) — the work done per rule between the two host calls.
fn pure_steps(c: &mut Criterion) {
    use rate_limit::algorithm::{decide as step, Verdict, FRESH};
    use rate_limit::config::Algorithm;
    use rate_limit::table::Set;
    let algorithm = Algorithm::TokenBucket {
        interval_ns: 1,
        burst: 1_000_000_000,
    };
    let mut state = FRESH;
    let mut now = 1_767_225_600_000_000_000u64;
    c.bench_function("algorithm/token_bucket_step", |b| {
        b.iter(|| {
            now += 1_000;
            if let Verdict::Allow { state: s, .. } = step(black_box(&algorithm), &state, now, 0) {
                state = s;
            }
        })
    });
    let mut encoded = Set::default().encode();
    c.bench_function("table/set_round_trip", |b| {
        b.iter(|| {
            now += 1_000;
            let mut set = Set::decode(black_box(&encoded));
            let slot = set.slot(0xabcdef01, &algorithm, now);
            if let Verdict::Allow { state, .. } =
                step(&algorithm, &set.state(slot, 0xabcdef01), now, 0)
            {
                set.store(slot, 0xabcdef01, state);
            }
            encoded = set.encode();
        })
    });
}

fn decision(c: &mut Criterion) {
    for algorithm in ["token_bucket", "fixed_window", "sliding_window"] {
        let config = config(algorithm);
        let store = MemoryStore::new();
        let mut request: Vec<(String, Vec<u8>)> = vec![("x-api-key".into(), b"client-42".to_vec())];
        let applicable = applicable_rules(&config, &mut request, &mut || None);
        let mut now = 1_767_225_600_000_000_000u64;
        c.bench_function(&format!("decide/{algorithm}"), |b| {
            b.iter(|| {
                now += 1_000;
                decide(&config, &store, black_box(&applicable), now, false)
            })
        });
    }
    let config = config("token_bucket");
    c.bench_function("applicable_rules/header_key", |b| {
        b.iter(|| {
            let mut request: Vec<(String, Vec<u8>)> =
                vec![("x-api-key".into(), b"client-42".to_vec())];
            applicable_rules(&config, black_box(&mut request), &mut || None)
        })
    });
    c.bench_function("config/compile", |b| {
        b.iter(|| Config::from_json(black_box(br#"{"rules":[{"name":"a","limit":100,"window":"1m","key":["client_ip","header:x-k"]},{"name":"b","limit":5,"window":"1s"}]}"#)))
    });
}

criterion_group!(benches, pure_steps, decision);
criterion_main!(benches);
