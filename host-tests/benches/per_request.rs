//! criterion: the cost of one whole HTTP stream through each of our .wasm modules in the
//! wasmtime host (context create, request headers, upstream response, log/done/delete) —
//! the module's own per-request work plus this host's crossings, comparable across modules.

use criterion::{criterion_group, criterion_main, Criterion};
use host_tests::{load_module, Headers, PluginOptions, World};

fn request() -> Headers {
    Headers::from([
        (":method", "GET"),
        (":path", "/api/x"),
        (":authority", "api.example.com"),
        ("x-api-key", "client-1"),
    ])
}

fn benches(c: &mut Criterion) {
    let cases: &[(&str, &str, &str)] = &[
        ("noop", "noop", ""),
        (
            "rate_limit (pass)",
            "rate_limit",
            r#"{"rules":[{"name":"r","key":"header:x-api-key","limit":1000000000,"window":"1s"}]}"#,
        ),
        (
            "circuit_breaker (closed)",
            "circuit_breaker",
            r#"{"trip":{"consecutive_failures":5}}"#,
        ),
        (
            "weighted_router (WRR)",
            "weighted_router",
            r#"{"routes":[{"targets":[{"cluster":"a","weight":70},{"cluster":"b","weight":30}]}]}"#,
        ),
        ("response_cache (hit)", "response_cache", "{}"),
        (
            "edge_chain (rate_limit + response_cache hit)",
            "edge_chain",
            r#"{"rate_limit":{"rules":[{"name":"r","key":"header:x-api-key","limit":1000000000,"window":"1s"}]},"response_cache":{}}"#,
        ),
        (
            "edge_chain (all four, pass path: the 2-byte body is over max_entry_bytes)",
            "edge_chain",
            r#"{"rate_limit":{"rules":[{"name":"r","key":"header:x-api-key","limit":1000000000,"window":"1s"}]},"response_cache":{"max_bytes":1024,"max_entry_bytes":1},"weighted_router":{"routes":[{"targets":[{"cluster":"a","weight":70},{"cluster":"b","weight":30}]}]},"circuit_breaker":{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":5}}}"#,
        ),
    ];
    for (label, module, config) in cases {
        let world = World::new();
        let vm = world
            .start_vm(
                &load_module(module),
                &PluginOptions::new().configuration(*config),
            )
            .unwrap_or_else(|f| panic!("{f}"));
        c.bench_function(&format!("stream/{label}"), |b| {
            b.iter(|| {
                let mut s = vm.stream();
                s.send_request_headers(request(), true);
                if s.local_reply().is_none() {
                    s.respond(200, &[("cache-control", "max-age=3600")], b"ok");
                }
                s.finish();
            })
        });
    }
}

criterion_group!(group, benches);
criterion_main!(group);
