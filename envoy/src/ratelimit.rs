//! Starts our rate limit service (`edgewise-ratelimit`) as a real process on ephemeral
//! loopback ports, with a limits file written for the test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

use crate::client::{http_request, HttpResponse};

/// A running `edgewise-ratelimit`; killed on drop.
pub struct RateLimitService {
    child: Option<Child>,
    /// gRPC (`envoy.service.ratelimit.v3.RateLimitService`).
    pub grpc: SocketAddr,
    /// `/healthcheck`, `/metrics`, and the control API (`/v1/purge`, `/v1/purges`).
    pub http: SocketAddr,
    config: PathBuf,
    redis_url: String,
    binary: PathBuf,
    /// More command-line arguments (e.g. `--control-token`).
    extra: Vec<String>,
}

/// Path of the service binary (debug build), building it once per process if needed.
pub fn ratelimit_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build(false))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Path of the optimized service binary, for the compose image.
pub fn release_ratelimit_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build(true))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build(release: bool) -> Result<PathBuf, String> {
    crate::build_binary("edgewise-ratelimit", release)
}

impl RateLimitService {
    /// Starts the service with the limits in `yaml` (one domain), counting in `redis_url`.
    pub fn start(yaml: &str, redis_url: &str) -> Result<RateLimitService> {
        RateLimitService::start_binary(&ratelimit_binary()?, yaml, redis_url)
    }

    /// The service with its control API on (`--control-token token`).
    pub fn start_with_control(
        yaml: &str,
        redis_url: &str,
        token: &str,
    ) -> Result<RateLimitService> {
        let mut service = RateLimitService::start(yaml, redis_url)?;
        service.stop_child();
        service.extra = vec!["--control-token".into(), token.into()];
        service.spawn("127.0.0.1:0", "127.0.0.1:0")?;
        Ok(service)
    }

    fn stop_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The same with a given build of the service (e.g. the release one, for benchmarks).
    pub fn start_binary(
        binary: &std::path::Path,
        yaml: &str,
        redis_url: &str,
    ) -> Result<RateLimitService> {
        let dir = std::env::temp_dir().join(format!(
            "edgewise-ratelimit-{}-{}",
            std::process::id(),
            crate::unique_id()
        ));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("limits.yaml");
        std::fs::write(&config, yaml)?;
        let mut service = RateLimitService {
            child: None,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            config,
            redis_url: redis_url.to_string(),
            binary: binary.to_path_buf(),
            extra: Vec::new(),
        };
        service.spawn("127.0.0.1:0", "127.0.0.1:0")?;
        Ok(service)
    }

    fn spawn(&mut self, grpc: &str, http: &str) -> Result<()> {
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            // A RedisCluster's url (`cluster:redis://a,redis://b,…`) is a cluster's seeds.
            .args(match self.redis_url.strip_prefix("cluster:") {
                Some(seeds) => ["--redis-cluster", seeds],
                None => ["--redis", &self.redis_url],
            })
            .args(["--listen", grpc, "--http", http])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning edgewise-ratelimit")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut next = |prefix: &str| -> Result<SocketAddr> {
            let line = lines.next().transpose()?.unwrap_or_default();
            match line.trim().strip_prefix(prefix) {
                Some(addr) => Ok(addr.parse()?),
                None => bail!("edgewise-ratelimit did not start: {line:?}"),
            }
        };
        let started = next("listening on ").and_then(|g| Ok((g, next("http on ")?)));
        match started {
            Ok((g, h)) => {
                self.grpc = g;
                self.http = h;
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                Err(e)
            }
        }
    }

    pub fn healthcheck(&self) -> Result<HttpResponse> {
        Ok(http_request(self.http, "GET", "/healthcheck", &[], b"")?)
    }

    /// A counter from `/metrics`, e.g. `edgewise_ratelimit_over_limit_total`.
    pub fn metric(&self, name: &str) -> Result<u64> {
        let text = http_request(self.http, "GET", "/metrics", &[], b"")?.text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .ok_or_else(|| anyhow!("no {name} in /metrics"))
    }

    /// Sends SIGTERM and waits for the process to exit: its exit status, and how long the
    /// graceful shutdown took.
    pub fn terminate(&mut self) -> Result<(std::process::ExitStatus, std::time::Duration)> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let started = std::time::Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !sent.success() {
            bail!("kill -TERM failed");
        }
        // Bounded: a service that ignores SIGTERM is killed and reported.
        while started.elapsed() < std::time::Duration::from_secs(15) {
            if let Some(status) = child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("edgewise-ratelimit did not exit within 15 s of SIGTERM")
    }

    /// Stops the process (its port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let (grpc, http) = (self.grpc.to_string(), self.http.to_string());
        self.spawn(&grpc, &http)
    }
}

impl Drop for RateLimitService {
    fn drop(&mut self) {
        self.stop();
    }
}
