//! perf profiles under load: where a request's CPU time goes (Envoy's code, the JIT, the kernel).

use super::*;

/// `cargo xtask bench profile [scenario]`: Envoy under wrk load, sampled by `perf record`
/// (8 s) for each scenario whose name contains `scenario` (default: the local-reply and
/// caching scenarios). Envoy's binary is stripped and V8's wasm code has no symbols for perf,
/// so the split is by where the time is spent: Envoy's code (HTTP, host calls, V8's runtime),
/// the JIT's code (the compiled .wasm, V8 stubs), the kernel (sockets), libc. With the worker
/// core saturated, a share × 1/(req/s) is CPU time per request. Writes
/// `target/bench/profiles.md` and prints it.
pub(crate) fn profile(wanted: Option<&str>) -> Result<()> {
    ensure_wrk()?;
    build_modules()?;
    let backend = Backend::start_for_benchmark("bench-origin", 1)?;
    let (table, _) = profile_table(backend.addr, wanted)?;
    let out = workspace_root().join("target/bench/profiles.md");
    std::fs::write(&out, &table)?;
    println!("\n{table}\nwritten to {}", out.display());
    Ok(())
}

/// The perf split of each chosen scenario (see `profile`), as a markdown table.
/// One scenario's perf split: its name and CPU µs per request by `PERF_GROUPS`.
pub(crate) type Split = (String, [f64; 5]);

pub(crate) fn profile_table(
    backend: std::net::SocketAddr,
    wanted: Option<&str>,
) -> Result<(String, Vec<Split>)> {
    let all = scenarios(backend);
    let default_set = [
        PLAIN_PROXY,
        DIRECT_RESPONSE_NO_UPSTREAM,
        WASM_DO_NOTHING_FILTER,
        RATE_LIMIT_PASSING,
        RATE_LIMIT_DENYING,
        CIRCUIT_BREAKER_CLOSED,
        WEIGHTED_ROUTER_WRR_PFAIR_CYCLE,
        RESPONSE_CACHE_EVERY_REQUEST_A_HIT,
        RESPONSE_CACHE_EVERY_REQUEST_A_MISS_NO_STORE,
        NATIVE_CACHE_FILTER_EVERY_REQUEST_A_HIT,
        ALL_FOUR_CHAINED_4_VMS,
        ALL_FOUR_COMPOSED_EDGE_CHAIN_1_VM,
    ];
    let chosen: Vec<&Scenario> = all
        .iter()
        .filter(|s| match wanted {
            Some(w) => s.name.contains(w),
            None => default_set.contains(&s.name),
        })
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        bail!("no scenario matches {wanted:?}; scenarios: {names:?}");
    }
    let groups = PERF_GROUPS;
    let mut splits = Vec::new();
    let mut table = format!(
        "### Where a request's CPU time goes (perf, Envoy 1 worker pinned, wrk -c32)\n\n\
         | Scenario | req/s | µs/request | {} |\n|---|---:|---:|{}\n",
        groups.map(|g| format!("{g} µs")).join(" | "),
        "---:|".repeat(groups.len())
    );
    for scenario in chosen {
        let envoy = Envoy::start(&scenario.config)?;
        let _ = envoy.get(scenario.path);
        run_wrk(&envoy, scenario.path, 2)?;
        let (sample, per_request_us) = perf_split(&envoy, scenario.path)?;
        splits.push((scenario.name.to_string(), per_request_us));
        let cells: Vec<String> = per_request_us.iter().map(|us| format!("{us:.1}")).collect();
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.1} | {} |",
            scenario.name,
            sample.rps,
            per_request_us.iter().sum::<f64>(),
            cells.join(" | ")
        );
        println!(
            "  {:<48} {:>9.0} req/s  {}",
            scenario.name,
            sample.rps,
            cells.join(" / ")
        );
    }
    Ok((table, splits))
}

/// The groups `perf_split` divides Envoy's CPU time into.
pub(crate) const PERF_GROUPS: [&str; 5] = ["envoy", "JIT", "kernel", "libc", "other"];

/// Envoy under wrk load on `path` for 9 s, sampled by `perf record` (8 s): the load's sample
/// and each group's CPU time per request in µs (`PERF_GROUPS`: Envoy's code, the JIT's code,
/// the kernel, libc, the rest): the CPU time Envoy used during the load (from
/// `/proc/<pid>/stat`) per request, split by perf's shares — true whether or not the worker
/// core is saturated (a load bound by latency elsewhere leaves it idle part of the time).
pub(crate) fn perf_split(envoy: &Envoy, path: &str) -> Result<(Sample, [f64; 5])> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("perf.data");
    let pid = envoy.pid().to_string();
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-F", "999", "-o"])
        .arg(&data)
        .args(["-p", &pid, "--", "sleep", "8"])
        .spawn()
        .context("running perf record")?;
    let cpu_before = cpu_ticks(envoy.pid());
    let sample = run_wrk(envoy, path, 9)?;
    let cpu_after = cpu_ticks(envoy.pid());
    perf.wait()?;
    let report = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "dso", "-i"])
        .arg(&data)
        .output()
        .context("running perf report")?;
    let mut shares = [0.0f64; 5];
    for line in String::from_utf8_lossy(&report.stdout).lines() {
        let line = line.trim();
        let Some((pct, dso)) = line.split_once("%  ") else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        let dso = dso.trim();
        let group = if dso == "envoy" {
            0
        } else if dso.starts_with("[JIT]") || dso.starts_with("perf-") || dso == "[unknown]" {
            1
        } else if dso.starts_with("[kernel") {
            2
        } else if dso.starts_with("libc") {
            3
        } else {
            4
        };
        shares[group] += pct / 100.0;
    }
    let _ = std::fs::remove_file(&data);
    // Clock ticks are 10 ms (USER_HZ 100 on Linux); without /proc, assume a saturated core.
    let per_request = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if after > before => {
            (after - before) as f64 * 10_000.0 / (sample.rps * 9.0)
        }
        _ => 1e6 / sample.rps,
    };
    let total: f64 = shares.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    Ok((sample, shares.map(|share| share / total * per_request)))
}

/// User + system CPU time of process `pid` so far, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3: utime is 14,
    // stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
