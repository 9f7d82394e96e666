//! criterion benchmarks of the shared pieces on the request path: a CAS read-modify-write
//! on the in-memory store (the shape of every shared-state update) and duration parsing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgewise_support::{parse_duration, update_with_cas, MemoryStore};

fn cas_update(c: &mut Criterion) {
    let store = MemoryStore::new();
    c.bench_function("memory_store_cas_increment", |b| {
        b.iter(|| {
            update_with_cas(&store, black_box("counter"), 8, |v| {
                let n = v
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    .unwrap_or(0)
                    + 1;
                (Some(n.to_le_bytes().to_vec()), n)
            })
        })
    });
}

fn durations(c: &mut Criterion) {
    c.bench_function("parse_duration", |b| {
        b.iter(|| parse_duration("window", black_box("250ms")))
    });
}

criterion_group!(benches, cas_update, durations);
criterion_main!(benches);
