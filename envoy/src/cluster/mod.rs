//! The docker-compose cluster: builds its images locally (no registry), starts it under a
//! project name with chosen 127.0.0.1 ports, waits for health, and always tears it down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::client::{http_request, HttpResponse};

mod images;
mod redis_cluster;
mod render;

pub use images::*;
pub use redis_cluster::REDIS_CLUSTER_NODES;
pub use render::*;

/// The Compose tool: `docker compose` (v2, the Docker CLI plugin) when present, else the
/// standalone `docker-compose` (v1). Both read docker-compose.yml the same way.
pub fn compose_command() -> Command {
    static V2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let v2 = *V2.get_or_init(|| {
        Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if v2 {
        let mut command = Command::new("docker");
        command.arg("compose");
        command
    } else {
        Command::new("docker-compose")
    }
}

/// Whether a Docker engine answers and a Compose tool (v2 or v1) is installed.
pub fn docker_available() -> bool {
    let ok = |cmd: &mut Command| cmd.output().map(|o| o.status.success()).unwrap_or(false);
    ok(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]))
        && ok(compose_command().arg("version"))
}

/// Where the cluster's rendered Envoy configs and its artifact directory live.
pub fn compose_dir() -> PathBuf {
    crate::target_dir().join("compose")
}

/// The host ports the cluster publishes on 127.0.0.1.
#[derive(Clone, Debug)]
pub struct Ports {
    pub front: u16,
    pub front_admin: u16,
    pub edge_admin: [u16; 2],
    pub api_v1: [u16; 2],
    pub api_v2: u16,
    pub flaky: u16,
    pub prometheus: u16,
    /// The control API (edgewise-ratelimit's HTTP port: purges for every cache).
    pub control: u16,
}

impl Ports {
    /// The documented defaults (README): 8080, 9900, 9901-9902, 18001-18004.
    pub fn defaults() -> Ports {
        Ports {
            front: 8080,
            front_admin: 9900,
            edge_admin: [9901, 9902],
            api_v1: [18001, 18002],
            api_v2: 18003,
            flaky: 18004,
            prometheus: 9090,
            control: 9080,
        }
    }

    /// Free ports chosen by the kernel, so a test cluster never collides with a running demo.
    pub fn ephemeral() -> Result<Ports> {
        let mut listeners = Vec::new();
        let mut next = || -> Result<u16> {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let port = l.local_addr()?.port();
            listeners.push(l);
            Ok(port)
        };
        Ok(Ports {
            front: next()?,
            front_admin: next()?,
            edge_admin: [next()?, next()?],
            api_v1: [next()?, next()?],
            api_v2: next()?,
            flaky: next()?,
            prometheus: next()?,
            control: next()?,
        })
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EDGEWISE_FRONT_PORT", self.front.to_string()),
            ("EDGEWISE_FRONT_ADMIN_PORT", self.front_admin.to_string()),
            ("EDGEWISE_EDGE_1_ADMIN_PORT", self.edge_admin[0].to_string()),
            ("EDGEWISE_EDGE_2_ADMIN_PORT", self.edge_admin[1].to_string()),
            ("EDGEWISE_API_V1_A_PORT", self.api_v1[0].to_string()),
            ("EDGEWISE_API_V1_B_PORT", self.api_v1[1].to_string()),
            ("EDGEWISE_API_V2_PORT", self.api_v2.to_string()),
            ("EDGEWISE_FLAKY_PORT", self.flaky.to_string()),
            ("EDGEWISE_PROMETHEUS_PORT", self.prometheus.to_string()),
            ("EDGEWISE_CONTROL_PORT", self.control.to_string()),
        ]
    }
}

/// A running compose project; dropping it runs `docker-compose down -v` (also on panic).
pub struct Cluster {
    pub project: String,
    pub ports: Ports,
    keep: bool,
    /// Container ids by service, once looked up (`docker-compose ps` is slow; a container
    /// keeps its id across stop and start).
    containers: std::sync::Mutex<BTreeMap<String, String>>,
    /// Global limits on a Redis Cluster (docker-compose.redis-cluster.yml over the base).
    pub redis_cluster: bool,
}

/// The compose services.
pub const SERVICES: [&str; 11] = [
    "front",
    "edge-1",
    "edge-2",
    "api-v1-a",
    "api-v1-b",
    "api-v2",
    "flaky",
    "ratelimit",
    "redis",
    "artifacts",
    "prometheus",
];

impl Cluster {
    /// `docker-compose -p <project> up -d`, then waits until every service is healthy.
    pub fn up(project: &str, ports: Ports) -> Result<Cluster> {
        Cluster::up_with(project, ports, false)
    }

    /// The same, with global limits on a Redis Cluster of 3 masters and 3 replicas when
    /// `redis_cluster`: its six nodes start first and are joined (`redis-cli --cluster
    /// create` by their addresses on the compose network), then everything else.
    pub fn up_with(project: &str, ports: Ports, redis_cluster: bool) -> Result<Cluster> {
        let cluster = Cluster {
            project: project.to_string(),
            ports,
            keep: false,
            containers: Default::default(),
            redis_cluster,
        };
        // A leftover project of the same name (an interrupted run) is removed first.
        cluster.compose(&["down", "-v", "--remove-orphans"])?;
        render_compose_configs()?;
        if redis_cluster {
            cluster.create_redis_cluster()?;
        }
        let up = cluster.compose(&["up", "-d"])?;
        if !up.status.success() {
            bail!(
                "docker-compose up failed:\n{}",
                String::from_utf8_lossy(&up.stderr)
            );
        }
        cluster.wait_healthy(Duration::from_secs(120))?;
        Ok(cluster)
    }

    /// A service's address on the compose network.
    pub fn ip(&self, service: &str) -> Result<String> {
        let id = self.container(service)?;
        let out = Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &id,
            ])
            .output()?;
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if ip.is_empty() {
            bail!("{service} has no address (is it running?)");
        }
        Ok(ip)
    }

    /// Attaches to a running project without owning it (no tear-down on drop).
    pub fn attach(project: &str, ports: Ports) -> Cluster {
        // Started with --redis-cluster when its second Redis node exists.
        let redis_cluster = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=com.docker.compose.project={project}"))
            .args(["--filter", "label=com.docker.compose.service=redis-2"])
            .output()
            .is_ok_and(|o| !o.stdout.trim_ascii().is_empty());
        Cluster {
            project: project.to_string(),
            ports,
            keep: true,
            containers: Default::default(),
            redis_cluster,
        }
    }

    /// Leaves the cluster running when this handle is dropped.
    pub fn keep_running(mut self) {
        self.keep = true;
    }

    /// Runs docker-compose for this project with the port variables set.
    pub fn compose(&self, args: &[&str]) -> Result<Output> {
        let root = crate::workspace_root();
        let mut command = compose_command();
        command
            .current_dir(&root)
            .args(["-p", &self.project, "-f"])
            .arg(root.join("docker-compose.yml"));
        if self.redis_cluster {
            command
                .arg("-f")
                .arg(root.join("docker-compose.redis-cluster.yml"));
        }
        command
            .args(args)
            .envs(self.ports.environment())
            .env("EDGEWISE_COMPOSE_DIR", compose_dir())
            .output()
            .context("running docker compose / docker-compose")
    }

    /// The container id of a service.
    pub fn container(&self, service: &str) -> Result<String> {
        if let Some(id) = self.known_container(service) {
            return Ok(id);
        }
        let out = self.compose(&["ps", "-q", service])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if id.is_empty() {
            bail!("service {service} has no container");
        }
        if let Ok(mut known) = self.containers.lock() {
            known.insert(service.to_string(), id.clone());
        }
        Ok(id)
    }

    fn known_container(&self, service: &str) -> Option<String> {
        self.containers.lock().ok()?.get(service).cloned()
    }

    /// `docker <verb> <container of service>` (stop, start, restart, kill).
    pub fn docker(&self, verb: &str, service: &str) -> Result<()> {
        let id = self.container(service)?;
        let out = Command::new("docker").args([verb, &id]).output()?;
        if !out.status.success() {
            bail!(
                "docker {verb} {service}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `docker exec <container of service> <command...>`: its standard output.
    pub fn exec(&self, service: &str, command: &[&str]) -> Result<String> {
        let id = self.container(service)?;
        let out = Command::new("docker")
            .arg("exec")
            .arg(&id)
            .args(command)
            .output()?;
        if !out.status.success() {
            bail!(
                "docker exec {service} {command:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Redis's `used_memory` (bytes) and key count, from `redis-cli` in its container.
    pub fn redis_memory(&self) -> Result<(u64, u64)> {
        let info = self.exec("redis", &["/usr/bin/redis-cli", "INFO", "memory"])?;
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no used_memory in {info:?}"))?;
        let keys = self.exec("redis", &["/usr/bin/redis-cli", "DBSIZE"])?;
        Ok((used, keys.trim().parse().unwrap_or(0)))
    }

    /// Each service's health as Docker reports it ("healthy", "starting", "exited", ...).
    pub fn health(&self) -> Result<BTreeMap<String, String>> {
        let mut health = BTreeMap::new();
        let extra: &[&str] = if self.redis_cluster {
            &REDIS_CLUSTER_NODES[1..]
        } else {
            &[]
        };
        for service in SERVICES.iter().chain(extra) {
            let state = match self.container(service) {
                Ok(id) => {
                    let out = Command::new("docker")
                        .args([
                            "inspect",
                            "--format",
                            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                            &id,
                        ])
                        .output()?;
                    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    match text.split_once(' ') {
                        Some(("running", h)) => h.to_string(),
                        Some((s, _)) => s.to_string(),
                        None => text,
                    }
                }
                Err(_) => "absent".to_string(),
            };
            health.insert(service.to_string(), state);
        }
        Ok(health)
    }

    /// Polls Docker's health checks until every service is healthy.
    pub fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let health = self.health()?;
            if health.values().all(|h| h == "healthy") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs = self.compose(&["logs", "--tail", "20"])?;
                bail!(
                    "cluster not healthy after {limit:?}: {health:?}\n{}",
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Polls one service until Docker reports it healthy.
    pub fn wait_service_healthy(&self, service: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.health()?.get(service).map(String::as_str) != Some("healthy") {
            if Instant::now() > deadline {
                bail!("{service} not healthy after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A request through the front Envoy.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse> {
        Ok(http_request(
            Self::local(self.ports.front),
            method,
            path,
            headers,
            b"",
        )?)
    }

    /// A call to the control API with the control token (e.g. `POST /v1/purge`).
    pub fn control(&self, method: &str, path: &str, body: &str) -> Result<HttpResponse> {
        let auth = format!("Bearer {}", control_token()?);
        Ok(http_request(
            Self::local(self.ports.control),
            method,
            path,
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )?)
    }

    /// GET through the front Envoy.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        self.request("GET", path, &[])
    }

    /// The front Envoy's admin stats, counters and gauges by name.
    pub fn front_stats(&self) -> Result<BTreeMap<String, i64>> {
        let response = http_request(
            Self::local(self.ports.front_admin),
            "GET",
            "/stats",
            &[],
            b"",
        )?;
        Ok(crate::envoy::parse_stats(&response.text()))
    }

    /// A GET on the cluster's Prometheus (`/api/v1/query?query=...`, `/api/v1/rules`).
    pub fn prometheus_get(&self, path_and_query: &str) -> Result<HttpResponse> {
        Ok(http_request(
            Self::local(self.ports.prometheus),
            "GET",
            path_and_query,
            &[],
            b"",
        )?)
    }

    /// An edge's admin stats (`edge` is 0 or 1), counters and gauges by name.
    pub fn edge_stats(&self, edge: usize) -> Result<BTreeMap<String, i64>> {
        let port = self.ports.edge_admin[edge];
        let response = http_request(Self::local(port), "GET", "/stats", &[], b"")?;
        Ok(crate::envoy::parse_stats(&response.text()))
    }

    /// The backend port of a service (`api-v1-a`, `api-v1-b`, `api-v2`, `flaky`).
    pub fn backend_port(&self, service: &str) -> Result<u16> {
        Ok(match service {
            "api-v1-a" => self.ports.api_v1[0],
            "api-v1-b" => self.ports.api_v1[1],
            "api-v2" => self.ports.api_v2,
            "flaky" => self.ports.flaky,
            other => bail!("{other} is not a backend"),
        })
    }

    /// A backend's counted requests (its /stats endpoint, published on 127.0.0.1).
    pub fn backend_requests(&self, service: &str) -> Result<u64> {
        let port = self.backend_port(service)?;
        let response = http_request(Self::local(port), "GET", "/stats", &[], b"")?;
        let stats: serde_json::Value = serde_json::from_str(&response.text())?;
        stats["requests"]
            .as_u64()
            .ok_or_else(|| anyhow!("no request count in {stats}"))
    }

    /// Sets a backend's fault switch (`{"mode":"fail","ratio":1.0,"status":503}`, ...).
    pub fn set_fault(&self, service: &str, json: &str) -> Result<()> {
        let port = self.backend_port(service)?;
        crate::backend::set_fault_at(Self::local(port), json)
            .with_context(|| format!("fault switch of {service}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
        }
    }
}
