//! The versioned module files users deploy (`<module>-<version>.wasm` and `SHA256SUMS`,
//! the format `sha256sum -c` reads), written by `cargo xtask release` into `dist/` and by
//! the compose cluster into the directory its artifact server serves.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The modules a release ships.
pub const MODULES: [&str; 5] = [
    "rate_limit",
    "response_cache",
    "circuit_breaker",
    "weighted_router",
    "edge_chain",
];

/// The workspace version (every crate shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One module file written to a dist directory.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub module: &'static str,
    /// `<module>-<version>.wasm`
    pub file: String,
    /// Lowercase hex SHA-256 of the file (what Envoy's `remote.sha256` takes).
    pub sha256: String,
    pub bytes: usize,
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Replaces `dir` with the built modules (from `wasm_path`) named with the version, plus
/// `SHA256SUMS`. The modules must have been built (`cargo xtask build`).
pub fn write_dist(dir: &Path) -> Result<Vec<Artifact>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let mut sums = String::new();
    let mut artifacts = Vec::new();
    for module in MODULES {
        let bytes = std::fs::read(crate::wasm_path(module))
            .with_context(|| format!("reading {module}.wasm (built by cargo xtask build)"))?;
        let file = format!("{module}-{VERSION}.wasm");
        std::fs::write(dir.join(&file), &bytes)?;
        let sha256 = sha256_hex(&bytes);
        let _ = writeln!(sums, "{sha256}  {file}");
        artifacts.push(Artifact {
            module,
            file,
            sha256,
            bytes: bytes.len(),
        });
    }
    std::fs::write(dir.join("SHA256SUMS"), sums)?;
    Ok(artifacts)
}
