//! The edges' and the front's Envoy configs rendered from `envoy/compose` with the released modules' digests and the demo's (or your) tokens.

use anyhow::{bail, Result};

use super::compose_dir;

/// Writes the released modules (`<module>-<version>.wasm`, `SHA256SUMS`) into
/// `compose_dir()/dist` for the artifact server, and renders `envoy/compose/{edge,front}.yaml`
/// into `compose_dir()` (`edge-1.yaml`, `edge-2.yaml`, `front.yaml`; `{{node}}` is the
/// Envoy's name) with each `{{<module>.file}}` and `{{<module>.sha256}}` filled in,
/// so the Envoys load exactly these files by URI and digest; and `{{purge_token}}` with
/// `EDGEWISE_PURGE_TOKEN` (default [`DEMO_PURGE_TOKEN`]: set your own outside the demo).
pub fn render_compose_configs() -> Result<()> {
    let dir = compose_dir();
    let artifacts = crate::release::write_dist(&dir.join("dist"))?;
    let token = purge_token()?;
    let control = control_token()?;
    // Both edges from one template; each names its cache after itself in Cache-Status.
    for (name, template, node) in [
        ("edge-1.yaml", "edge.yaml", "edge-1"),
        ("edge-2.yaml", "edge.yaml", "edge-2"),
        ("front.yaml", "front.yaml", "front"),
    ] {
        let template = crate::workspace_root().join("envoy/compose").join(template);
        let mut text = std::fs::read_to_string(&template)?
            .replace("{{purge_token}}", &token)
            .replace("{{control_token}}", &control)
            .replace("{{node}}", node);
        for a in &artifacts {
            text = text
                .replace(&format!("{{{{{}.file}}}}", a.module), &a.file)
                .replace(&format!("{{{{{}.sha256}}}}", a.module), &a.sha256);
        }
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("{{") && !l.trim_start().starts_with('#'))
        {
            bail!("{template:?}: unknown placeholder in {:?}", line.trim());
        }
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// The demo's purge token when `EDGEWISE_PURGE_TOKEN` is not set.
pub const DEMO_PURGE_TOKEN: &str = "demo-token";

/// The purge token the edges are rendered with: `EDGEWISE_PURGE_TOKEN`, else the demo's.
pub fn purge_token() -> Result<String> {
    let token = std::env::var("EDGEWISE_PURGE_TOKEN").unwrap_or_else(|_| DEMO_PURGE_TOKEN.into());
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        bail!("EDGEWISE_PURGE_TOKEN must be non-empty and use only letters, digits and -._~+/=");
    }
    Ok(token)
}

/// The control API's token when `EDGEWISE_CONTROL_TOKEN` is not set (docker-compose.yml
/// has the same default).
pub const DEMO_CONTROL_TOKEN: &str = "demo-control-token";

/// The control token the service and the caches are given: `EDGEWISE_CONTROL_TOKEN`, else
/// the demo's.
pub fn control_token() -> Result<String> {
    let token =
        std::env::var("EDGEWISE_CONTROL_TOKEN").unwrap_or_else(|_| DEMO_CONTROL_TOKEN.into());
    if token.len() < 16
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        bail!(
            "EDGEWISE_CONTROL_TOKEN must be at least 16 characters of letters, digits and -._~+/="
        );
    }
    Ok(token)
}
