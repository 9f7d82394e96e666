//! `cargo xtask release` as a user runs it: versioned `.wasm` files in `dist/`, a
//! `SHA256SUMS` that `sha256sum -c` accepts, and one OCI image per module holding exactly
//! one layer with `/plugin.wasm` byte-identical to the released file.

use std::process::Command;

use envoy_harness::{docker_available, workspace_root};

const MODULES: [&str; 5] = [
    "rate_limit",
    "response_cache",
    "circuit_breaker",
    "weighted_router",
    "edge_chain",
];

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
