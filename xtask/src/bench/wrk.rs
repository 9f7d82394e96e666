//! wrk: installing it, one load run and its numbers (req/s, p50, p99), the median of rounds.

use super::*;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

pub(crate) fn ensure_wrk() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    println!("installing wrk (Debian package)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "wrk"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        || (Command::new("apt-get").arg("update").status().is_ok()
            && Command::new("apt-get")
                .args(["install", "-y", "wrk"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false));
    if !ok {
        bail!("wrk is needed for the load benchmark: `apt-get install wrk`");
    }
    Ok(())
}

pub(crate) fn parse_ms(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        _ => return None,
    })
}

pub(crate) fn run_wrk(envoy: &Envoy, path: &str, seconds: u32) -> Result<Sample> {
    run_wrk_with(envoy, path, seconds, None).map(|(sample, _)| sample)
}

/// wrk against `path` (or what the Lua `script` requests), returning the sample and the
/// count of answers that were not 2xx/3xx.
pub(crate) fn run_wrk_with(
    envoy: &Envoy,
    path: &str,
    seconds: u32,
    script: Option<&std::path::Path>,
) -> Result<(Sample, u64)> {
    let url = format!("http://{}{}", envoy.listener, path);
    let mut command = Command::new("taskset");
    command.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        "-c32",
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let out = command.arg(&url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sample = Sample::default();
    let mut non_2xx = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", rps] => sample.rps = rps.parse().unwrap_or(0.0),
            ["50%", v] => sample.p50_ms = parse_ms(v).unwrap_or(0.0),
            ["99%", v] => sample.p99_ms = parse_ms(v).unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    if sample.rps == 0.0 {
        bail!(
            "wrk gave no result for {url}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((sample, non_2xx))
}

pub(crate) fn median(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    samples[samples.len() / 2]
}
