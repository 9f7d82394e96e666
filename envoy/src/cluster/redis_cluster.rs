//! Global limits on a Redis Cluster in compose (docker-compose.redis-cluster.yml): its six nodes joined, its state and masters read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::Cluster;

/// The nodes of the Redis Cluster (docker-compose.redis-cluster.yml): `redis` and five more.
pub const REDIS_CLUSTER_NODES: [&str; 6] = [
    "redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6",
];

impl Cluster {
    /// Starts the six Redis nodes, joins them into a cluster (the first three masters,
    /// one replica each) and waits until it reports `cluster_state:ok`.
    pub(super) fn create_redis_cluster(&self) -> Result<()> {
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
}
