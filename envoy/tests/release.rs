//! `cargo xtask release` as a user runs it: versioned `.wasm` files in `dist/`, a
//! `SHA256SUMS` that `sha256sum -c` accepts, and one OCI image per module holding exactly
//! one layer with `/plugin.wasm` byte-identical to the released file.

use std::path::PathBuf;
use std::process::Command;

use envoy_harness::{docker_available, workspace_root};

use envoy_harness::release::{Artifact, MODULES};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn release_writes_versioned_modules_checksums_and_compat_images() {
    assert!(
        docker_available(),
        "the release images need a Docker engine"
    );
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(&root)
        .args(["xtask", "release"]));
    let dist = root.join("dist");
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), MODULES.len(), "{sums}");
    let checked = run(Command::new("sha256sum")
        .current_dir(&dist)
        .args(["-c", "SHA256SUMS"]));
    assert_eq!(checked.matches(": OK").count(), MODULES.len(), "{checked}");
    for module in MODULES {
        let file = dist.join(format!("{module}-{version}.wasm"));
        let released = std::fs::read(&file).unwrap();
        assert_eq!(&released[..4], b"\0asm", "{file:?}");
        let tag = format!("edgewise/{}:{version}", module.replace('_', "-"));
        let layers = run(Command::new("docker").args([
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            &tag,
        ]));
        assert_eq!(layers, "1", "{tag}: one layer");
        let container = run(Command::new("docker").args(["create", &tag, "plugin.wasm"]));
        let copy = std::env::temp_dir().join(format!("edgewise-release-{module}.wasm"));
        run(Command::new("docker")
            .arg("cp")
            .arg(format!("{container}:/plugin.wasm"))
            .arg(&copy));
        run(Command::new("docker").args(["rm", &container]));
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            released,
            "{tag}: /plugin.wasm"
        );
        let _ = std::fs::remove_file(copy);
    }
}

/// Envoy loads a released module the way production does — `vm_config.code.remote`, an
/// HTTP URI plus its sha256 from `SHA256SUMS` — from an artifact server (our backend
/// serving a dist directory), and the filter works; with a wrong sha256 the module is
/// refused (never run; requests fail closed with 503), and a module whose bytes were
/// changed on the server after the release is refused the same way.
#[test]
fn envoy_loads_a_released_module_remotely_only_with_its_sha256() {
    let (dist, artifacts, server) = serve_a_release("remote-load-test");
    let released = artifacts
        .iter()
        .find(|a| a.module == "rate_limit")
        .unwrap()
        .clone();
    let origin = envoy_harness::Backend::start("origin").unwrap();
    let uri = format!("http://{}/dist/{}", server.addr, released.file);
    let config = |sha256: &str| {
        envoy_harness::EnvoyConfig::proxy_to(origin.addr, 2)
            .cluster("artifacts", vec![server.addr])
            .filter(
                envoy_harness::WasmFilter::new(
                    "rate_limit",
                    envoy_harness::wasm_path("rate_limit"),
                    r#"{"rules":[{"name":"all","limit":2,"window":"1m"}]}"#,
                )
                .remote(&uri, "artifacts", sha256),
            )
    };

    let envoy = envoy_harness::Envoy::start(&config(&released.sha256)).unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| envoy.get("/").unwrap().status).collect();
    assert_eq!(
        statuses,
        [200, 200, 429],
        "the remotely loaded limiter works"
    );
    assert_eq!(
        envoy.stat("wasm.remote_load_fetch_successes").unwrap(),
        Some(1)
    );
    drop(envoy);

    // A wrong sha256: Envoy fetches the module, finds the digest differs, retries and
    // gives up; the plugin never runs. Envoy itself starts (the failure is the plugin's), and
    // because our failure_policy is not FAIL_OPEN every request is refused with 503 rather
    // than passed unfiltered.
    let refused = |sha256: &str| {
        let envoy = envoy_harness::Envoy::start(&config(sha256)).unwrap();
        let before = origin.requests().unwrap();
        let statuses: Vec<u16> = (0..3).map(|_| envoy.get("/").unwrap().status).collect();
        assert_eq!(statuses, [503, 503, 503], "{}", envoy.log_tail(10));
        assert_eq!(
            origin.requests().unwrap(),
            before,
            "nothing reached the origin"
        );
        assert!(
            envoy.log().contains("Plugin rate_limit failed to load"),
            "{}",
            envoy.log_tail(10)
        );
        assert_eq!(
            envoy.stat("wasm.remote_load_fetch_successes").unwrap(),
            Some(0)
        );
    };
    refused(&"0".repeat(64));

    // The file changed on the server after the release (a tampered or stale artifact):
    // the published sha256 no longer matches, so Envoy refuses it.
    std::fs::write(
        dist.join(&released.file),
        std::fs::read(
            dist.join("edge_chain-".to_string() + envoy_harness::release::VERSION + ".wasm"),
        )
        .unwrap(),
    )
    .unwrap();
    refused(&released.sha256);
}

/// Pins an Envoy 1.40 behaviour the platform notes rely on: two *different* modules loaded
/// remotely under one vm_id get one VM — one plugin is configured on the other's module
/// (whichever fetch completes first), which refuses the configuration, so remotely loaded
/// filters that must share state are deployed as edge_chain. With
/// local files the code is part of the VM key and the same pair works (the examples).
#[test]
fn two_remote_modules_under_one_vm_id_get_one_vm_in_envoy_1_40() {
    let (_dist, artifacts, server) = serve_a_release("remote-vm-id-test");
    let origin = envoy_harness::Backend::start("origin").unwrap();
    let remote = |module: &str, config: &str| {
        let a = artifacts.iter().find(|a| a.module == module).unwrap();
        envoy_harness::WasmFilter::new(module, envoy_harness::wasm_path(module), config)
            .vm_id("edgewise")
            .remote(
                &format!("http://{}/dist/{}", server.addr, a.file),
                "artifacts",
                &a.sha256,
            )
    };
    let config = envoy_harness::EnvoyConfig::proxy_to(origin.addr, 2)
        .cluster("artifacts", vec![server.addr])
        .filter(remote(
            "weighted_router",
            r#"{"routes":[{"name":"api","targets":[{"cluster":"backend","weight":1}]}]}"#,
        ))
        .filter(remote(
            "circuit_breaker",
            r#"{"upstream":"route","trip":{"consecutive_failures":5}}"#,
        ));
    let envoy = envoy_harness::Envoy::start(&config).unwrap();
    let log = envoy.log();
    // Whichever fetch completes first owns the VM; the other plugin's configuration reaches
    // that module, which refuses it.
    let router_got_breaker_config = log
        .contains("weighted_router: invalid configuration at `upstream`")
        && log.contains("Plugin circuit_breaker failed to load");
    let breaker_got_router_config = log
        .contains("circuit_breaker: invalid configuration at `routes`")
        && log.contains("Plugin weighted_router failed to load");
    assert!(
        router_got_breaker_config || breaker_got_router_config,
        "one plugin's configuration should have reached the other's module:\n{}",
        envoy.log_tail(15)
    );
    assert_eq!(envoy.get("/").unwrap().status, 503, "fail closed");
}

/// Builds every module, writes a dist directory `target/<label>/dist` and serves it from an
/// artifact server (our backend with `--serve-dir`).
fn serve_a_release(label: &str) -> (PathBuf, Vec<Artifact>, envoy_harness::Backend) {
    envoy_harness::build_wasm(&[
        "rate-limit",
        "response-cache",
        "circuit-breaker",
        "weighted-router",
    ])
    .unwrap();
    envoy_harness::build_edge_chain().unwrap();
    let dist = envoy_harness::target_dir().join(label).join("dist");
    let artifacts = envoy_harness::release::write_dist(&dist).unwrap();
    let server = envoy_harness::Backend::start_serving("artifacts", &dist).unwrap();
    (dist, artifacts, server)
}
