//! The rate limit service on a real Redis Cluster (3 masters, 3 replicas of Debian's
//! redis-server on loopback): keys spread over the masters, exact counts per key, per-slot
//! decisions, and a master's failover followed without a restart.

use std::time::{Duration, Instant};

use envoy_harness::{redis_available, RateLimitService, RedisCluster};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

const LIMITS: &str = r#"
domain: edgewise
descriptors:
  - key: rule
    value: per-client
    descriptors:
      - key: client_ip
        rate_limit: { unit: hour, requests_per_unit: 10 }
"#;

fn client_ip(ip: &str) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: [("rule", "per-client"), ("client_ip", ip)]
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The Redis key the service counts `client_ip(ip)` under.
fn key_of(ip: &str) -> String {
    format!("erl:edgewise|rule=per-client|client_ip={ip}")
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "edgewise".into(),
        descriptors,
        hits_addend: 0,
    }
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    req: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    client.should_rate_limit(req).await.map(|r| r.into_inner())
}

async fn setup() -> (
    RedisCluster,
    RateLimitService,
    RateLimitServiceClient<Channel>,
) {
    assert!(
        redis_available(),
        "needs redis-server (cargo xtask test installs it: apt-get install redis-server)"
    );
    let cluster = RedisCluster::start(3).unwrap();
    let service = RateLimitService::start(LIMITS, &cluster.url()).unwrap();
    let client = RateLimitServiceClient::connect(format!("http://{}", service.grpc))
        .await
        .unwrap();
    (cluster, service, client)
}

/// Client addresses whose keys are served by two different masters.
fn on_two_masters(cluster: &RedisCluster) -> (String, String) {
    let first = "198.51.100.0".to_string();
    let home = cluster.master_of(&key_of(&first)).unwrap();
    for n in 1..=255 {
        let other = format!("198.51.100.{n}");
        if cluster.master_of(&key_of(&other)).unwrap() != home {
            return (first, other);
        }
    }
    panic!("every key landed on one master");
}

/// A domain's keys are spread over the masters, each counted exactly under concurrency;
/// `/healthcheck` reports the cluster's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_masters_and_each_counts_exactly() {
    let (cluster, service, _) = setup().await;
    assert_eq!(service.healthcheck().unwrap().status, 200);
    let ips: Vec<String> = (1..=12).map(|n| format!("203.0.113.{n}")).collect();
    let masters: std::collections::BTreeSet<usize> = ips
        .iter()
        .map(|ip| cluster.master_of(&key_of(ip)).unwrap())
        .collect();
    assert!(
        masters.len() >= 2,
        "12 clients' keys all on master(s) {masters:?}: not spread"
    );
    // 8 callers × 5 calls for each of the 12 clients (limit 10 each): exactly 10 admitted
    // per client, whichever master counts it.
    let mut tasks = Vec::new();
    for caller in 0..8 {
        let ips = ips.clone();
        let grpc = service.grpc;
        tasks.push(tokio::spawn(async move {
            let mut c = RateLimitServiceClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            let mut admitted = vec![0u32; ips.len()];
            for round in 0..5 {
                for (i, ip) in ips
                    .iter()
                    .enumerate()
                    .cycle()
                    .skip(caller + round)
                    .take(ips.len())
                {
                    let r = ask(&mut c, request(vec![client_ip(ip)])).await.unwrap();
                    if r.overall_code == Code::Ok as i32 {
                        admitted[i] += 1;
                    }
                }
            }
            admitted
        }));
    }
    let mut totals = vec![0u32; ips.len()];
    for t in tasks {
        for (i, n) in t.await.unwrap().into_iter().enumerate() {
            totals[i] += n;
        }
    }
    assert_eq!(totals, vec![10; ips.len()], "admitted per client");
}

/// A call whose descriptors hash to slots on different masters is decided per slot: each
/// slot's descriptors are atomic together, but one slot's denial does not undo another
/// slot's spend (on one node, nothing is spent when any descriptor is over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_on_different_slots_are_decided_per_slot() {
    let (cluster, _service, mut c) = setup().await;
    let (a, b) = on_two_masters(&cluster);
    for _ in 0..10 {
        let r = ask(&mut c, request(vec![client_ip(&a)])).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    // `a` is spent; a call for both is over, and `b`'s hit is spent all the same.
    let both = ask(&mut c, request(vec![client_ip(&a), client_ip(&b)]))
        .await
        .unwrap();
    assert_eq!(both.overall_code, Code::OverLimit as i32);
    assert_eq!(both.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(both.statuses[1].code, Code::Ok as i32);
    assert_eq!(both.statuses[1].limit_remaining, 9);
    let alone = ask(&mut c, request(vec![client_ip(&b)])).await.unwrap();
    assert_eq!(
        alone.statuses[0].limit_remaining, 8,
        "b's earlier hit was spent"
    );
}

/// The master holding a limited key is killed: calls for that key fail (UNAVAILABLE — the
/// filter's failure_mode decides) until its replica is promoted; within 10 s of the
/// promotion the service decides again with the replicated count, without a restart, and
/// `/healthcheck` is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_is_followed_within_ten_seconds() {
    let (mut cluster, service, mut c) = setup().await;
    let ip = "192.0.2.77";
    for _ in 0..6 {
        let r = ask(&mut c, request(vec![client_ip(ip)])).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    let master = cluster.master_of(&key_of(ip)).unwrap();
    // The replica has the count before the master goes (WAIT: replicated to one replica).
    cluster.cli(master, &["wait", "1", "2000"]).unwrap();
    cluster.stop(master);
    let stopped = Instant::now();
    // A call now fails fast (or, had the promotion already happened, is decided): it
    // never hangs on the dead master (wide tolerance: 5 s).
    match ask(&mut c, request(vec![client_ip("192.0.2.78")])).await {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e}"),
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "a call hung on the dead master"
    );
    // The replica is promoted once the others agree the master failed (node timeout 1 s).
    cluster
        .wait_promoted(&key_of(ip), master, Duration::from_secs(30))
        .unwrap();
    let promoted = Instant::now();
    let mut errors = 0u32;
    let recovered = loop {
        match ask(&mut c, request(vec![client_ip(ip)])).await {
            Ok(r) => break r,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
                errors += 1;
            }
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "no decision within 10 s of the promotion ({errors} calls failed)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "promotion {:?} after the stop; decisions again {:?} after it ({errors} calls failed)",
        promoted - stopped,
        promoted.elapsed()
    );
    // The promoted replica had the 6 hits: this was the 7th, 3 left — less any failed call
    // the cluster client's retry still spent after the caller had its error (never more).
    assert_eq!(recovered.overall_code, Code::Ok as i32);
    let left = recovered.statuses[0].limit_remaining;
    assert!(
        left <= 3 && left + errors >= 3,
        "{left} left after 7 hits and {errors} failed calls (limit 10)"
    );
    for _ in 0..left {
        let r = ask(&mut c, request(vec![client_ip(ip)])).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    let over = ask(&mut c, request(vec![client_ip(ip)])).await.unwrap();
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.healthcheck().unwrap().status != 200 {
        assert!(
            Instant::now() < deadline,
            "/healthcheck not 200 after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A slot moved to another master while in use (the live resharding `redis-cli --cluster
/// reshard` does, one slot by hand): while it migrates, a key still on the old master is
/// counted there and a new key of the slot is sent on with ASK; once moved, MOVED takes the
/// service to the new master — counts kept (MIGRATE moves the keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_between_masters_is_followed_with_ask_and_moved() {
    let (cluster, _service, mut c) = setup().await;
    let ip = "192.0.2.200";
    let slot = envoy_harness::redis_slot(&key_of(ip));
    // Another client whose key shares the slot (a new key during the migration).
    let sibling = (0..200_000)
        .map(|n| format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255))
        .find(|other| envoy_harness::redis_slot(&key_of(other)) == slot)
        .expect("a key in the same slot");
    for _ in 0..4 {
        let r = ask(&mut c, request(vec![client_ip(ip)])).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    let from = cluster.master_of(&key_of(ip)).unwrap();
    let to = (0..cluster.nodes.len())
        .find(|n| {
            *n != from
                && cluster
                    .cli(*n, &["info", "replication"])
                    .is_ok_and(|i| i.contains("role:master"))
        })
        .unwrap();
    let id = |n: usize| {
        cluster
            .cli(n, &["cluster", "myid"])
            .unwrap()
            .trim()
            .to_string()
    };
    let (from_id, to_id) = (id(from), id(to));
    let slot = slot.to_string();
    let ok = |n: usize, args: &[&str]| {
        let out = cluster.cli(n, args).unwrap();
        assert!(
            out.trim() == "OK" || out.trim() == "NOKEY",
            "{args:?}: {out}"
        );
    };
    ok(to, &["cluster", "setslot", &slot, "importing", &from_id]);
    ok(from, &["cluster", "setslot", &slot, "migrating", &to_id]);
    // Migrating: the existing key is still counted on the old master (5th hit)…
    let r = ask(&mut c, request(vec![client_ip(ip)])).await.unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 5);
    // …and a key the old master does not have is asked of the new one (ASK).
    let r = ask(&mut c, request(vec![client_ip(&sibling)]))
        .await
        .unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 9);
    assert!(
        cluster
            .cli(to, &["exists", &key_of(&sibling)])
            .unwrap()
            .contains('1'),
        "the new key was written on the importing master"
    );
    // Move the remaining key, then hand the slot over on every master.
    let to_port = cluster.nodes[to].addr.port().to_string();
    let moved = cluster
        .cli(
            from,
            &["migrate", "127.0.0.1", &to_port, &key_of(ip), "0", "5000"],
        )
        .unwrap();
    assert_eq!(moved.trim(), "OK", "MIGRATE: {moved}");
    for n in 0..cluster.nodes.len() {
        if cluster
            .cli(n, &["info", "replication"])
            .is_ok_and(|i| i.contains("role:master"))
        {
            ok(n, &["cluster", "setslot", &slot, "node", &to_id]);
        }
    }
    // Moved: the service is sent on (MOVED) and finds both counts on the new master.
    let r = ask(&mut c, request(vec![client_ip(ip)])).await.unwrap();
    assert_eq!(
        r.statuses[0].limit_remaining, 4,
        "6th hit, on the new master"
    );
    let r = ask(&mut c, request(vec![client_ip(&sibling)]))
        .await
        .unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 8);
    assert_eq!(cluster.master_of(&key_of(ip)).unwrap(), to);
}
