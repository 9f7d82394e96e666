//! Starts our backend service as a real process on an ephemeral loopback port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

use crate::client::{http_request, HttpResponse};

/// A running `edgewise-backend`; killed on drop.
pub struct Backend {
    child: Child,
    pub addr: SocketAddr,
    pub name: String,
}

/// Path of the backend binary (debug build), building it once per process if needed.
pub fn backend_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_backend(false))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Path of the optimized backend binary, for benchmarks.
pub fn release_backend_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_backend(true))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_backend(release: bool) -> Result<PathBuf, String> {
    crate::build_binary("edgewise-backend", release)
}

impl Backend {
    /// Starts a backend named `name` on 127.0.0.1 with an ephemeral port.
    pub fn start(name: &str) -> Result<Backend> {
        Backend::start_on(name, "127.0.0.1:0")
    }

    pub fn start_on(name: &str, listen: &str) -> Result<Backend> {
        Backend::spawn(Command::new(backend_binary()?), name, listen)
    }

    /// A backend that also serves the files of `dir` under `/dist/<name>` (an artifact
    /// server for Envoy's remote code source).
    pub fn start_serving(name: &str, dir: &std::path::Path) -> Result<Backend> {
        let mut command = Command::new(backend_binary()?);
        command.arg("--serve-dir").arg(dir);
        Backend::spawn(command, name, "127.0.0.1:0")
    }

    /// The optimized backend pinned to `cpu`, for benchmarks.
    pub fn start_for_benchmark(name: &str, cpu: u32) -> Result<Backend> {
        let mut command = Command::new("taskset");
        command
            .args(["-c", &cpu.to_string()])
            .arg(release_backend_binary()?);
        Backend::spawn(command, name, "127.0.0.1:0")
    }

    fn spawn(mut command: Command, name: &str, listen: &str) -> Result<Backend> {
        let mut child = command
            .args(["--name", name, "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning edgewise-backend")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("backend {name} did not start: {line:?}");
        };
        let addr = addr
            .parse()
            .with_context(|| format!("bad address {addr:?}"))?;
        Ok(Backend {
            child,
            addr,
            name: name.to_string(),
        })
    }

    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        Ok(http_request(self.addr, "GET", path, &[], b"")?)
    }

    /// Requests this backend has served (control endpoints excluded).
    pub fn requests(&self) -> Result<u64> {
        let stats: serde_json::Value = serde_json::from_slice(&self.get("/stats")?.body)?;
        stats["requests"]
            .as_u64()
            .ok_or_else(|| anyhow!("no request count in {stats}"))
    }

    /// Sets the fault switch, e.g. `{"mode":"fail","ratio":1.0,"status":503}`.
    pub fn set_fault(&self, json: &str) -> Result<()> {
        set_fault_at(self.addr, json)
    }

    pub fn reset_counters(&self) -> Result<()> {
        http_request(self.addr, "POST", "/admin/reset", &[], b"")?;
        Ok(())
    }

    /// Stops the process (connections to it are then refused).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sets the fault switch of the backend at `addr` (a local process or a published container
/// port), e.g. `{"mode":"fail","ratio":1.0,"status":503}`.
pub(crate) fn set_fault_at(addr: std::net::SocketAddr, json: &str) -> Result<()> {
    let response = http_request(
        addr,
        "POST",
        "/admin/fault",
        &[("content-type", "application/json")],
        json.as_bytes(),
    )?;
    if response.status != 200 {
        bail!("fault switch refused {json}: {}", response.text());
    }
    Ok(())
}
