//! Starts a real Redis (Debian's `redis-server`) on an ephemeral loopback port, without
//! persistence, for tests of global rate limiting. `cargo xtask test` installs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `redis-server`; killed on drop. `stop` / `start` keep its port.
pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// More redis-server arguments (a cluster node's).
    extra: Vec<String>,
}

/// Whether `redis-server` can be run here.
pub fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl Redis {
    /// Starts Redis on a free loopback port.
    pub fn start() -> Result<Redis> {
        Redis::start_with(&[])
    }

    /// Starts Redis on a free loopback port with more arguments.
    fn start_with(extra: &[String]) -> Result<Redis> {
        for _ in 0..5 {
            // Redis has no "port 0": take a free port from the kernel, then hand it over.
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut redis = Redis {
                child: None,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                extra: extra.to_vec(),
            };
            if redis.spawn().is_ok() {
                return Ok(redis);
            }
        }
        bail!("redis-server did not start on any of 5 free ports")
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning redis-server (apt-get install redis-server)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    let _ = stdout.read_to_string(&mut out);
                }
                bail!("redis-server exited ({status}): {out}");
            }
            if self.ping().is_ok() {
                // Drain its log so a full pipe never blocks it.
                if let Some(stdout) = child.stdout.take() {
                    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
                }
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        bail!("redis-server did not answer PING within 10 s")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Sends one inline command and returns the first line of the reply.
    pub fn command(&self, command: &str) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    pub fn ping(&self) -> Result<()> {
        match self.command("PING")?.as_str() {
            "+PONG" => Ok(()),
            other => bail!("PING answered {other:?}"),
        }
    }

    /// Stops the process (connections are then refused); its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Redis Cluster hash slot of a key without a hash tag (CRC16/XMODEM modulo 16384), as
/// edgewise-ratelimit's keys are.
pub fn redis_slot(key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(key.as_bytes()) % 16384
}

/// The masters' slot ranges from `CLUSTER NODES` output: (first, last, "ip:port") of every
/// master not flagged as failed.
pub fn masters_from_cluster_nodes(nodes: &str) -> Vec<(u16, u16, String)> {
    let mut ranges = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        // "ip:port@bus" names the node.
        let addr = fields[1].split('@').next().unwrap_or_default().to_string();
        for range in &fields[8..] {
            let mut ends = range.splitn(2, '-').map(|p| p.parse::<u16>());
            match (ends.next(), ends.next()) {
                (Some(Ok(a)), Some(Ok(b))) => ranges.push((a, b, addr.clone())),
                (Some(Ok(a)), None) => ranges.push((a, a, addr.clone())),
                _ => {}
            }
        }
    }
    ranges
}

/// The master serving `key` in a slot map from [`masters_from_cluster_nodes`].
pub fn master_serving<'a>(masters: &'a [(u16, u16, String)], key: &str) -> Option<&'a str> {
    let slot = redis_slot(key);
    masters
        .iter()
        .find(|(a, b, _)| (*a..=*b).contains(&slot))
        .map(|(_, _, addr)| addr.as_str())
}

/// A Redis Cluster of real `redis-server` processes on loopback: `masters` masters, each
/// with one replica, created with `redis-cli --cluster create`. A 1 s node timeout and no
/// replica validity limit, so a stopped master's replica is promoted within a few seconds.
/// Killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts `masters` masters and as many replicas, and waits until the cluster reports
    /// `cluster_state:ok` on every node.
    pub fn start(masters: usize) -> Result<RedisCluster> {
        let dir = std::env::temp_dir().join(format!(
            "edgewise-redis-cluster-{}-{}",
            std::process::id(),
            crate::unique_id()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut nodes = Vec::new();
        for n in 0..masters * 2 {
            // The cluster bus on its own free port (by default it is the port + 10000,
            // which may not exist for a high ephemeral port).
            let bus = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &dir.join(format!("nodes-{n}.conf")).to_string_lossy(),
                "--cluster-node-timeout",
                "1000",
                // A replica may always take over (counters: availability over the last
                // few writes), however long its link was down.
                "--cluster-replica-validity-factor",
                "0",
                "--dir",
                &dir.to_string_lossy(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            nodes.push(Redis::start_with(&extra)?);
        }
        let cluster = RedisCluster { nodes, dir };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(node.addr.to_string());
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_ok(Duration::from_secs(30))?;
        // Every replica in sync with its master before the cluster is handed out.
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in 0..cluster.nodes.len() {
            loop {
                let info = cluster.cli(n, &["info", "replication"])?;
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("replica {n} did not sync with its master within 30 s: {info}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// `cluster:redis://a,redis://b,…` — the harness's RateLimitService passes it on as
    /// `--redis-cluster`.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Redis::url).collect();
        format!("cluster:{}", urls.join(","))
    }

    /// `redis-cli -p PORT args…` against node `n`: its whole output.
    pub fn cli(&self, n: usize, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.nodes[n].addr.port().to_string(),
            ])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_ok(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<usize> = (0..self.nodes.len())
                .filter(|n| self.nodes[*n].child.is_some())
                .collect();
            let ok = running.iter().all(|n| {
                self.cli(*n, &["cluster", "info"])
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the Redis Cluster did not reach cluster_state:ok within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node serving `key`'s slot as master, asked of a running node.
    pub fn master_of(&self, key: &str) -> Result<usize> {
        let asker = (0..self.nodes.len())
            .find(|n| self.nodes[*n].child.is_some())
            .ok_or_else(|| anyhow::anyhow!("no node is running"))?;
        let masters = masters_from_cluster_nodes(&self.cli(asker, &["cluster", "nodes"])?);
        let addr = master_serving(&masters, key)
            .ok_or_else(|| anyhow::anyhow!("no master serves {key:?}"))?;
        self.nodes
            .iter()
            .position(|r| r.addr.to_string() == addr)
            .ok_or_else(|| anyhow::anyhow!("{addr} is not one of the cluster's nodes"))
    }

    /// Waits until a node other than `old` serves `key`'s slot as master (its replica was
    /// promoted) and the cluster is ok again; returns the new master.
    pub fn wait_promoted(&self, key: &str, old: usize, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(n) = self.master_of(key) {
                if n != old {
                    self.wait_ok(deadline.saturating_duration_since(Instant::now()))?;
                    return Ok(n);
                }
            }
            if Instant::now() > deadline {
                bail!("no replica was promoted for {key:?} within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops node `n` (its process is killed, as a crashed master).
    pub fn stop(&mut self, n: usize) {
        self.nodes[n].stop();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
