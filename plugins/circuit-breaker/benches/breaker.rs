//! criterion: the breaker's pure decide (admit) and record steps, and a full closed-state
//! admit + record through the in-memory CAS store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use circuit_breaker::breaker::{Breaker, Outcome};
use circuit_breaker::config::Config;
use circuit_breaker::table;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgewise_support::store::MemoryStore;

fn benches(c: &mut Criterion) {
    let config = Config::from_json(
        br#"{"trip":{"consecutive_failures":5,"failure_rate":0.5,"min_requests":20}}"#,
    )
    .unwrap();
    let params = config.params("api");
    let breaker = Breaker::new(42);
    let mut now = 1_767_225_600_000_000_000u64;
    c.bench_function("breaker/admit_closed", |b| {
        b.iter(|| black_box(&breaker).admit(params, now))
    });
    let ok = Outcome {
        failed: false,
        slow: false,
    };
    c.bench_function("breaker/record_success_with_rates", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(&breaker).record(params, ok, None, now)
        })
    });
    let store = MemoryStore::new();
    c.bench_function("table/admit_and_record_closed", |b| {
        b.iter(|| {
            now += 1_000;
            table::admit(&store, b"api", config.slots, params, now).unwrap();
            table::record(&store, b"api", config.slots, params, ok, None, now).unwrap()
        })
    });
}

criterion_group!(group, benches);
criterion_main!(group);
