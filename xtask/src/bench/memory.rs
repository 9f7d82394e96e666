//! Shared-data memory under load: the cache filled to its budget, a spray of distinct rate-limit keys.

use super::*;

/// Envoy's resident memory before and after filling shared data: the cache to its byte
/// budget, and the rate limiter's key table with a spray of distinct keys (wrk + Lua, a new
/// `x-user` per request). Shared data lives in Envoy's heap, so its growth shows in RSS.
pub(crate) fn shared_data_memory(backend: std::net::SocketAddr) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let base = || pinned(backend);
    // The cache: 64 MiB budget, 96 × 1 MiB responses offered.
    let cache = r#"{"max_bytes":67108864,"max_entry_bytes":2097152,"max_entries":4096}"#;
    let envoy = Envoy::start(&base().filter(wasm("response_cache", cache)))?;
    let _ = envoy.get("/status/200");
    let before = envoy.rss_kib().unwrap_or(0);
    for n in 0..96 {
        let r = envoy.get(&format!(
            "/cache/big{n}?cache_control=max-age%3D3600&size=1048576"
        ))?;
        if r.status != 200 {
            bail!("cache fill: status {}", r.status);
        }
    }
    let after = envoy.rss_kib().unwrap_or(0);
    let in_use = envoy
        .stat("edgewise.response_cache.bytes_in_use")?
        .unwrap_or(0);
    let evicted = envoy.stat("edgewise.response_cache.evicted")?.unwrap_or(0);
    lines.push(format!(
        "response_cache full (max_bytes 64 MiB, 96 × 1 MiB responses offered): bytes_in_use {:.1} MiB, {evicted} evicted; Envoy RSS {} → {} MiB (+{} MiB: the stored entries plus the Wasm heap that copied them)",
        in_use as f64 / 1048576.0,
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    ));
    drop(envoy);

    // The rate limiter: max_keys 10000 (2,500 shared-data keys), a spray of distinct keys.
    let limiter = r#"{"rules":[{"name":"spray","key":"header:x-user","limit":1000000000,"window":"1m","max_keys":10000}]}"#;
    let config = base()
        .routes(vec![Route::direct("direct", "/", 200, "ok")])
        .filter(wasm("rate_limit", limiter));
    let envoy = Envoy::start(&config)?;
    let _ = envoy.get("/");
    let before = envoy.rss_kib().unwrap_or(0);
    let script = workspace_root().join("target/bench/spray.lua");
    std::fs::create_dir_all(workspace_root().join("target/bench"))?;
    std::fs::write(
        &script,
        "n = 0\ninit = function(args)\n  n = tonumber(args[1])\nend\nrequest = function()\n  n = n + 1\n  return wrk.format(\"GET\", \"/\", { [\"x-user\"] = \"user-\" .. n })\nend\n",
    )?;
    // Each wrk run starts its key counter where the previous runs stopped: every key new.
    let mut sprayed = 0u64;
    let mut spray_seconds = 0;
    while sprayed < 1_000_000 && spray_seconds < 180 {
        let out = Command::new("taskset")
            .args(["-c", "1", "wrk", "-t1", "-c32", "-d15s", "-s"])
            .arg(&script)
            .arg(format!("http://{}/", envoy.listener))
            .args(["--", &sprayed.to_string()])
            .output()
            .context("running wrk")?;
        spray_seconds += 15;
        let text = String::from_utf8_lossy(&out.stdout);
        let done = text
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.split_once(" requests in ")
                    .and_then(|(n, _)| n.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        if done == 0 {
            bail!("wrk spray gave no result:\n{text}");
        }
        sprayed += done;
    }
    let after = envoy.rss_kib().unwrap_or(0);
    let allowed = envoy
        .stat("edgewise.rate_limit.rule=.=spray;.;allowed")?
        .unwrap_or(0);
    lines.push(format!(
        "rate_limit key spray: {sprayed} requests with distinct `x-user` values ({allowed} counted) into max_keys 10000 — 2,500 shared-data keys by construction; Envoy RSS {} → {} MiB (+{} MiB)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024
    ));
    Ok(lines)
}
