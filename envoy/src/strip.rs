//! Post-link step of `cargo xtask build`: removes the `proxy_on_*` exports a module does not
//! use, so Envoy never enters its VM for those events (a host skips a callback the module
//! does not export: proxy-wasm-cpp-host treats it as "continue", and so does our host).
//!
//! The Rust SDK exports every callback of ABI 0.2.1, so without this step Envoy calls into
//! every filter for the response body, trailers and the access-log phase even when the
//! filter ignores them. Only the export entries are removed; the code stays (unreachable).

use anyhow::{Context, Result};
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// Callbacks no Edgewise filter implements: request trailers, the access-log phase,
/// TCP-level events, queues and foreign functions.
const NEVER_USED: [&str; 9] = [
    "proxy_on_request_trailers",
    "proxy_on_log",
    "proxy_on_queue_ready",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_data",
    "proxy_on_upstream_connection_close",
    "proxy_on_foreign_function",
];

const GRPC: [&str; 4] = [
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
];

/// The callbacks a module does not use, beyond `NEVER_USED`, read off its adapter (the
/// `Context`/`HttpContext`/`RootContext` methods it implements). A module not listed here
/// (the probe, the SDK do-nothing filter) keeps every export.
pub fn unused_callbacks(module: &str) -> Option<Vec<&'static str>> {
    let extra: Vec<&'static str> = match module {
        // request/response headers, response trailers (`charge.response_trailer`), done,
        // tick (queue, global deadline), gRPC (global rules)
        "rate_limit" => vec![
            "proxy_on_request_body",
            "proxy_on_response_body",
            "proxy_on_http_call_response",
        ],
        // request headers + body (slow-call timing), response headers, done, tick, and
        // http call responses (active half-open probes)
        "circuit_breaker" => [
            &["proxy_on_response_body", "proxy_on_response_trailers"][..],
            &GRPC[..],
        ]
        .concat(),
        // request headers, done, and tick (only for deferred metrics)
        "weighted_router" => [
            &[
                "proxy_on_request_body",
                "proxy_on_response_headers",
                "proxy_on_response_body",
                "proxy_on_response_trailers",
                "proxy_on_http_call_response",
            ][..],
            &GRPC[..],
        ]
        .concat(),
        // request headers, response headers + body (storing), done, tick, HTTP callouts
        "response_cache" => [
            &["proxy_on_request_body", "proxy_on_response_trailers"][..],
            &GRPC[..],
        ]
        .concat(),
        // the union of the four
        "edge_chain" => Vec::new(),
        _ => return None,
    };
    Some([&NEVER_USED[..], &extra[..]].concat())
}

/// The module's exported function names.
pub fn exports(wasm: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::ExportSection(reader) = payload? {
            for export in reader {
                names.push(export?.name.to_string());
            }
        }
    }
    Ok(names)
}

/// `wasm` without the exports named in `remove`; every other section is copied as is.
pub fn without_exports(wasm: &[u8], remove: &[&str]) -> Result<Vec<u8>> {
    let mut module = Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::ExportSection(reader) = &payload {
            let mut kept = ExportSection::new();
            for export in reader.clone() {
                let export = export?;
                if remove.contains(&export.name) {
                    continue;
                }
                let kind = match export.kind {
                    ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                    ExternalKind::Table => ExportKind::Table,
                    ExternalKind::Memory => ExportKind::Memory,
                    ExternalKind::Global => ExportKind::Global,
                    ExternalKind::Tag => ExportKind::Tag,
                };
                kept.export(export.name, kind, export.index);
            }
            module.section(&kept);
        } else if let Some((id, range)) = payload.as_section() {
            let start = usize::try_from(range.start)?;
            let end = usize::try_from(range.end)?;
            let data = wasm
                .get(start..end)
                .context("a section outside the module")?;
            module.section(&RawSection { id, data });
        }
    }
    Ok(module.finish())
}

/// Strips `module`'s unused callbacks in place (`target/wasm32-wasip1/release/<module>.wasm`,
/// written through the same file so cargo's hard-linked copy in `deps/` matches and cargo
/// keeps both as fresh; replacing the file instead makes cargo link the unstripped one
/// back). A no-op when they are already gone or the module keeps every export; callers hold
/// the build lock, so only the first build after a change writes.
pub fn strip_module(module: &str) -> Result<()> {
    let Some(unused) = unused_callbacks(module) else {
        return Ok(());
    };
    let path = crate::wasm_path(module);
    let wasm = std::fs::read(&path).with_context(|| format!("reading {path:?}"))?;
    let present = exports(&wasm)?;
    if !unused.iter().any(|u| present.iter().any(|p| p == u)) {
        return Ok(());
    }
    let stripped = without_exports(&wasm, &unused)?;
    // The module as linked, kept beside it so the benchmark can show before and after.
    crate::write_by_rename(&crate::wasm_path(&format!("{module}_all_exports")), &wasm)?;
    std::fs::write(&path, stripped).with_context(|| format!("writing {path:?}"))?;
    Ok(())
}

/// The modules the post-link step looks after.
pub const STRIPPED_MODULES: [&str; 5] = [
    "rate_limit",
    "response_cache",
    "circuit_breaker",
    "weighted_router",
    "edge_chain",
];
