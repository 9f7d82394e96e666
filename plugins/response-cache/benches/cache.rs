//! criterion: the cache core's per-request work — primary key, Cache-Control and date
//! parsing, freshness decision, a whole lookup through the in-memory store, config compile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgewise_support::store::MemoryStore;
use response_cache::cache::{on_request, RequestDecision};
use response_cache::cache_control::CacheControl;
use response_cache::config::Config;
use response_cache::freshness::{usable, Heuristic, Stored};
use response_cache::http_date;
use response_cache::key::{primary_key, KeyRules};

fn request(path: &str) -> Vec<(String, Vec<u8>)> {
    [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "shop.example.com"),
        (":path", path),
        ("accept", "text/html"),
        ("user-agent", "bench"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect()
}

fn benches(c: &mut Criterion) {
    let rules = KeyRules {
        include_query: true,
        ignore_query_params: vec!["utm_source".into(), "utm_medium".into()],
        headers: Vec::new(),
    };
    c.bench_function("primary key (query sorted, 2 params ignored)", |b| {
        b.iter(|| {
            primary_key(
                &rules,
                b"https",
                b"Shop.Example.com",
                black_box(b"/products/42?utm_source=x&color=red&size=m&utm_medium=y"),
                &mut |_| None,
            )
        })
    });
    c.bench_function("Cache-Control parse (4 directives)", |b| {
        b.iter(|| {
            CacheControl::parse([black_box(
                &b"public, max-age=60, s-maxage=120, stale-if-error=30"[..],
            )])
        })
    });
    c.bench_function("HTTP-date parse (IMF-fixdate)", |b| {
        b.iter(|| http_date::parse(black_box(b"Sat, 21 Nov 2026 10:00:00 GMT")))
    });
    let stored = Stored {
        status: 200,
        request_time: 1_000,
        response_time: 1_001,
        date: Some(1_000),
        age: Some(3),
        expires: None,
        last_modified: Some(500),
        cc: CacheControl::parse([&b"max-age=60"[..]]),
        purged_soft: false,
    };
    let request_cc = CacheControl::default();
    let heuristic = Heuristic::default();
    c.bench_function("freshness decision (§4.2, fresh)", |b| {
        b.iter(|| {
            usable(
                black_box(&stored),
                &request_cc,
                &heuristic,
                black_box(1_030),
            )
        })
    });

    let config = Config::from_json(b"{}").unwrap();
    let store = MemoryStore::new();
    let mut miss = request("/bench");
    let RequestDecision::Forward(_) = on_request(&config, &store, &mut miss, 1_000) else {
        panic!("first request is a miss");
    };
    c.bench_function("lookup: miss decision through the in-memory store", |b| {
        b.iter(|| on_request(&config, &store, black_box(&mut miss), 1_000))
    });
    c.bench_function("config compile (defaults + purge + key rules)", |b| {
        b.iter(|| {
            Config::from_json(black_box(
                br#"{"max_bytes":67108864,"eviction":"lfu","key":{"ignore_query_params":["utm_source"]},"purge":{"token":"0123456789abcdef"},"coalesce":{"wait":"2s"}}"#,
            ))
        })
    });
}

criterion_group!(cache, benches);
criterion_main!(cache);
