//! Where the counters live: one Redis node (`--redis`) or a Redis Cluster
//! (`--redis-cluster`), behind one connection type the rest of the service uses alike.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// The number of hash slots of a Redis Cluster (the key space is split into these).
pub const SLOTS: u16 = 16384;

/// A connection to the counters' Redis: a single node, or every master of a cluster (a
/// command goes to the master serving its first key's slot; MOVED and ASK replies are
/// followed, and a lost connection rebuilds the slot map, so a failover is followed once a
/// replica has been promoted).
#[derive(Clone)]
pub enum Store {
    Node(ConnectionManager),
    Cluster(Arc<Cluster>),
}

/// A Redis Cluster connection that is rebuilt — its slot map read afresh from the nodes —
/// when a call fails for want of a connection (a master that stopped answering: a crashed
/// host's address may time out instead of refusing, and the redis crate then only
/// reconnects to the same address). At most one rebuild at a time, at most one per
/// [`REBUILD_EVERY`].
pub struct Cluster {
    client: ClusterClient,
    current: RwLock<ClusterConnection>,
    rebuilding: AtomicBool,
    /// When the last rebuild started (ms since `started`).
    last_rebuild_ms: AtomicU64,
    started: Instant,
    /// Rebuilds done (`edgewise_ratelimit_redis_reconnects_total`).
    pub rebuilds: AtomicU64,
}

/// The shortest time between two rebuilds of a cluster connection.
const REBUILD_EVERY: Duration = Duration::from_millis(500);

impl Cluster {
    fn connection(&self) -> Option<ClusterConnection> {
        self.current.read().ok().map(|c| c.clone())
    }

    /// A command's result, passed on; a lost connection starts a rebuild.
    fn watch<T>(self: &Arc<Self>, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if result.as_ref().is_err_and(connection_lost) {
            self.rebuild_soon();
        }
        result
    }

    /// Starts a rebuild in the background unless one runs or one started recently.
    fn rebuild_soon(self: &Arc<Self>) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_rebuild_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < REBUILD_EVERY.as_millis() as u64
            || self.rebuilding.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.last_rebuild_ms.store(now_ms, Ordering::Relaxed);
        let cluster = self.clone();
        tokio::spawn(async move {
            if let Ok(fresh) = cluster.client.get_async_connection().await {
                if let Ok(mut current) = cluster.current.write() {
                    *current = fresh;
                    cluster.rebuilds.fetch_add(1, Ordering::Relaxed);
                }
            }
            cluster.rebuilding.store(false, Ordering::Release);
        });
    }
}

/// Whether an error means the connection (not the command) failed: the slot map may be
/// stale.
fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::ClusterDown | redis::ErrorKind::ClusterConnectionNotFound
        )
}

/// How long a connection attempt and a reply may take before the call fails (UNAVAILABLE):
/// a limit decision never waits long on a Redis that is away.
const TIMEOUT: Duration = Duration::from_millis(500);

impl Store {
    /// Connects to one node (`redis://host:port`); reconnects on its own later.
    pub async fn node(url: &str) -> redis::RedisResult<Store> {
        let client = redis::Client::open(url)?;
        let manager = ConnectionManager::new_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(TIMEOUT)
                .set_response_timeout(TIMEOUT)
                .set_number_of_retries(1),
        )
        .await?;
        Ok(Store::Node(manager))
    }

    /// Connects to a cluster through any of its nodes (each `redis://host:port`): the slot
    /// map is read from them and kept current.
    pub async fn cluster(urls: &[String]) -> redis::RedisResult<Store> {
        let client = redis::cluster::ClusterClient::builder(urls.to_vec())
            .connection_timeout(TIMEOUT)
            .response_timeout(TIMEOUT)
            // A redirect or a dead master's connection is retried a few times, briefly
            // (10–100 ms apart): during a failover a call fails within a second instead
            // of waiting for the promotion.
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()?;
        let connection = client.get_async_connection().await?;
        Ok(Store::Cluster(Arc::new(Cluster {
            client,
            current: RwLock::new(connection),
            rebuilding: AtomicBool::new(false),
            last_rebuild_ms: AtomicU64::new(0),
            started: Instant::now(),
            rebuilds: AtomicU64::new(0),
        })))
    }

    /// Whether keys are spread over a cluster's slots (a script's keys must share one).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Store::Cluster(_))
    }

    /// Times a cluster connection was rebuilt after a lost connection (0 for one node).
    pub fn rebuilds(&self) -> u64 {
        match self {
            Store::Node(_) => 0,
            Store::Cluster(c) => c.rebuilds.load(Ordering::Relaxed),
        }
    }

    /// The health `/healthcheck` reports: a node answers PING; a cluster answers
    /// `CLUSTER INFO` with `cluster_state:ok` (every slot served by a reachable master).
    pub async fn health(&self) -> Result<(), String> {
        let mut conn = self.clone();
        match self {
            Store::Node(_) => redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| format!("redis: {e}")),
            Store::Cluster(_) => {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("redis cluster: {e}"))?;
                let state = info
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("cluster_state:"))
                    .unwrap_or("unknown");
                if state == "ok" {
                    Ok(())
                } else {
                    Err(format!("redis cluster: cluster_state {state}"))
                }
            }
        }
    }
}

/// The hash slot of a key (CRC16/XMODEM modulo 16384) — Edgewise's keys carry no hash tag
/// (`{` and `}` are escaped), so the whole key is hashed.
pub fn slot(key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(key.as_bytes()) % SLOTS
}

impl ConnectionLike for Store {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Store::Node(c) => c.req_packed_command(cmd),
            Store::Cluster(cluster) => {
                let cluster = cluster.clone();
                Box::pin(async move {
                    let mut connection = cluster.connection().ok_or_else(poisoned)?;
                    cluster.watch(connection.req_packed_command(cmd).await)
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Store::Node(c) => c.req_packed_commands(cmd, offset, count),
            Store::Cluster(cluster) => {
                let cluster = cluster.clone();
                Box::pin(async move {
                    let mut connection = cluster.connection().ok_or_else(poisoned)?;
                    cluster.watch(connection.req_packed_commands(cmd, offset, count).await)
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Store::Node(c) => c.get_db(),
            Store::Cluster(_) => 0,
        }
    }
}

/// The error for a connection lock poisoned by a panic elsewhere (never expected).
fn poisoned() -> RedisError {
    RedisError::from((
        redis::ErrorKind::ClientError,
        "the cluster connection's lock is poisoned",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster_spec() {
        // The Redis Cluster specification's example: "123456789" hashes to 0x31C3.
        assert_eq!(
            crc16::State::<crc16::XMODEM>::calculate(b"123456789"),
            0x31C3
        );
        assert_eq!(slot("123456789"), 0x31C3 % SLOTS);
        assert!(slot("erl:edgewise|rule=a") < SLOTS);
    }
}
