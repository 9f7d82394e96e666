//! The post-link step (`envoy_harness::strip`): every built filter module exports only the
//! proxy-wasm callbacks its adapter implements, stays a valid module, and keeps what Envoy
//! needs to run it. That behaviour is unchanged is shown by every other test layer, which
//! all run the stripped modules (host-tests, probe parity, Envoy tests, compose).

use envoy_harness::strip::{exports, unused_callbacks, without_exports, STRIPPED_MODULES};

fn build_all() {
    envoy_harness::build_wasm(&[
        "rate-limit",
        "response-cache",
        "circuit-breaker",
        "weighted-router",
        "noop",
    ])
    .unwrap();
    envoy_harness::build_edge_chain().unwrap();
}

fn callbacks(wasm: &[u8]) -> Vec<String> {
    exports(wasm)
        .unwrap()
        .into_iter()
        .filter(|e| e.starts_with("proxy_on_"))
        .collect()
}

#[test]
fn each_filter_exports_only_the_callbacks_it_uses() {
    build_all();
    let sdk_callbacks = callbacks(&std::fs::read(envoy_harness::wasm_path("noop")).unwrap());
    assert!(sdk_callbacks.len() >= 20, "{sdk_callbacks:?}");
    for module in STRIPPED_MODULES {
        let wasm = std::fs::read(envoy_harness::wasm_path(module)).unwrap();
        wasmparser::Validator::new()
            .validate_all(&wasm)
            .unwrap_or_else(|e| panic!("{module} is no longer valid: {e}"));
        let kept = callbacks(&wasm);
        for unused in unused_callbacks(module).unwrap() {
            assert!(
                !kept.iter().any(|k| k == unused),
                "{module} still exports {unused}"
            );
        }
        for needed in [
            "proxy_on_context_create",
            "proxy_on_vm_start",
            "proxy_on_configure",
            "proxy_on_request_headers",
            "proxy_on_done",
            "proxy_on_delete",
            "proxy_on_memory_allocate",
        ] {
            assert!(kept.iter().any(|k| k == needed), "{module} lost {needed}");
        }
        println!(
            "{module}: {} of the SDK's {} callbacks exported",
            kept.len(),
            sdk_callbacks.len()
        );
    }
}

#[test]
fn stripping_removes_exactly_the_named_exports_and_is_idempotent() {
    build_all();
    let noop = std::fs::read(envoy_harness::wasm_path("noop")).unwrap();
    let remove = ["proxy_on_log", "proxy_on_response_body"];
    let stripped = without_exports(&noop, &remove).unwrap();
    wasmparser::Validator::new()
        .validate_all(&stripped)
        .unwrap();
    let mut expected = exports(&noop).unwrap();
    expected.retain(|e| !remove.contains(&e.as_str()));
    assert_eq!(exports(&stripped).unwrap(), expected);
    assert_eq!(without_exports(&stripped, &remove).unwrap(), stripped);
}
