//! criterion: one pick with 2 and 8 targets — smooth WRR (table lookup) and weighted
//! rendezvous hashing — the per-request work of the router's core.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use edgewise_support::seed::stable_hash as identity_hash;
use weighted_router::strategy::{rendezvous, WrrTable};

fn benches(c: &mut Criterion) {
    for n in [2usize, 8] {
        let weights: Vec<u32> = (0..n as u32).map(|i| 10 + 7 * i).collect();
        let seeds: Vec<u64> = (0..n)
            .map(|i| identity_hash(format!("cluster-{i}").as_bytes()))
            .collect();
        let table = WrrTable::build(&weights).unwrap();
        let mut position = 0u64;
        c.bench_function(&format!("pick/wrr/{n}_targets"), |b| {
            b.iter(|| {
                position += 1;
                table.at(black_box(position))
            })
        });
        c.bench_function(&format!("pick/hash/{n}_targets"), |b| {
            b.iter(|| {
                rendezvous(
                    &weights,
                    &seeds,
                    identity_hash(black_box(b"user-12345")),
                    |_| true,
                )
            })
        });
    }
}

criterion_group!(group, benches);
criterion_main!(group);
