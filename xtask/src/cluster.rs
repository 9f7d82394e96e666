//! `cargo xtask images | cluster up|down|status | demo`: the docker-compose cluster for users,
//! and the demo that shows each of the four filters at work through the front Envoy.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use envoy_harness::{build_images, docker_available, Cluster, Ports};

/// The compose project the README's commands use.
pub const PROJECT: &str = "edgewise";

/// Builds the .wasm modules the edges mount and both images.
pub fn images() -> Result<()> {
    if !docker_available() {
        bail!("Docker (engine and docker compose / docker-compose) is not available here");
    }
    crate::build_wasm()?;
    crate::step(
        "building images edgewise/{envoy,backend,ratelimit,redis,prometheus} (no registry)",
    );
    let started = Instant::now();
    build_images()?;
    println!("images built in {:.1?}", started.elapsed());
    Ok(())
}

/// `cluster up [--redis-cluster] | down | status`.
/// `cluster up [--redis-cluster]`: images, then the cluster, left running.
pub fn up_task(redis_cluster: bool) -> Result<()> {
    images()?;
    up(redis_cluster).map(Cluster::keep_running)
}

/// `cluster down`: containers, network and volumes removed.
pub fn down() -> Result<()> {
    let out = Cluster::attach(PROJECT, Ports::defaults()).compose(&[
        "down",
        "-v",
        "--remove-orphans",
        "--timeout",
        "5",
    ])?;
    print!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `cluster status`: each service's health.
pub fn status() -> Result<()> {
    let cluster = Cluster::attach(PROJECT, Ports::defaults());
    for (service, health) in cluster.health()? {
        println!("  {service:<9} {health}");
    }
    Ok(())
}

fn up(redis_cluster: bool) -> Result<Cluster> {
    crate::step("starting the cluster (compose -p edgewise up -d; Envoy configs rendered into target/compose with the modules' sha256) and waiting for health");
    if redis_cluster {
        println!("  global limits on a Redis Cluster: 3 masters + 3 replicas (docker-compose.redis-cluster.yml)");
    }
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        let cluster = Cluster::up_with(PROJECT, Ports::defaults(), redis_cluster);
        (cluster, started.elapsed())
    });
    let mut dots = 0;
    while !waiter.is_finished() {
        dots += 1;
        eprint!(
            "\r  waiting for {} services to be healthy {:<20}",
            envoy_harness::cluster::SERVICES.len(),
            ".".repeat(dots % 20)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!();
    let (cluster, elapsed) = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the start-up thread panicked"))?;
    let cluster = cluster?;
    println!("all healthy after {elapsed:.1?}: front on http://127.0.0.1:8080, admin 9900; edges' admin 9901, 9902; backends 18001-18004");
    println!("  metrics: http://127.0.0.1:9090 (Prometheus: try edgewise_circuit_breaker_state, edgewise_rate_limit_denied; alerts at /alerts)");
    println!("  modules: loaded by every Envoy from the artifact server by URI + sha256 (target/compose/dist/SHA256SUMS)");
    Ok(cluster)
}

/// The cluster demo: starts it, drives traffic, says what each filter did. Leaves it running
/// (`cargo xtask cluster down` removes it).
pub fn demo() -> Result<()> {
    images()?;
    let cluster = up(false)?;
    type Section = fn(&Cluster) -> Result<()>;
    let sections: [(&str, Section); 6] = [
        (
            "rate limiting: 10 per client per hour, per edge (/limited/) and global (/global/)",
            demo_rate_limit,
        ),
        (
            "response caching: the edges as one sharded tier, each URL cached on one edge",
            demo_cache,
        ),
        (
            "fleet purge: one call at the control API purges a tag on every Envoy",
            demo_purge,
        ),
        (
            "weighted routing: 90/10 between api-v1 and the api-v2 canary",
            demo_split,
        ),
        (
            "circuit breaking: flaky starts failing, then heals",
            demo_breaker,
        ),
        (
            "failover: api-v2 stops, traffic moves to api-v1, then returns",
            demo_failover,
        ),
    ];
    for (n, (title, section)) in sections.iter().enumerate() {
        crate::step(&format!("[{}/{}] {title}", n + 1, sections.len()));
        section(&cluster)?;
    }
    println!("\nThe cluster is still running: try http://127.0.0.1:8080/api/hello; the edges' metrics at http://127.0.0.1:9901/stats/prometheus (edgewise_*); Prometheus at http://127.0.0.1:9090 (query edgewise_circuit_breaker_state, sum by (rule) (rate(edgewise_rate_limit_denied[1m])); alerts at /alerts; Grafana: import deploy/grafana/edgewise.json). Remove it with `cargo xtask cluster down`.");
    cluster.keep_running();
    Ok(())
}

fn v1(cluster: &Cluster) -> Result<u64> {
    Ok(cluster.backend_requests("api-v1-a")? + cluster.backend_requests("api-v1-b")?)
}

fn demo_rate_limit(cluster: &Cluster) -> Result<()> {
    let (mut allowed, mut denied, mut retry) = (0, 0, String::new());
    for n in 0..30 {
        let r = cluster.get(&format!("/limited/demo-{n}"))?;
        if r.status == 429 {
            denied += 1;
            retry = r.header("retry-after").unwrap_or("-").to_string();
        } else {
            allowed += 1;
        }
    }
    println!("  /limited/: 30 requests, {allowed} allowed, {denied} denied with 429 (Retry-After: {retry} s)");
    println!(
        "  30 distinct paths, spread over both edges by the front; each edge allows 10 on its own (local limits are per Envoy): 2 × 10"
    );
    let (mut allowed, mut denied) = (0, 0);
    for n in 0..30 {
        if cluster.get(&format!("/global/demo-{n}"))?.status == 429 {
            denied += 1;
        } else {
            allowed += 1;
        }
    }
    println!("  /global/: 30 requests, {allowed} allowed, {denied} denied");
    println!("  a global rule asks edgewise-ratelimit, which counts in Redis: one limit of 10 across both edges");
    Ok(())
}

fn demo_cache(cluster: &Cluster) -> Result<()> {
    let before = v1(cluster)?;
    for page in ["home", "about", "pricing", "blog"] {
        let path = format!("/cache/{page}?cache_control=max-age%3D120&body=hello+from+the+origin");
        let statuses = (0..3)
            .map(|_| {
                Ok(cluster
                    .get(&path)?
                    .header("cache-status")
                    .unwrap_or("-")
                    .to_string())
            })
            .collect::<Result<Vec<_>>>()?;
        println!("  /cache/{page:<8} × 3: {}", statuses.join("  |  "));
    }
    println!(
        "  origin requests: {} for 4 pages × 3 GETs — the front hashes each URL to one edge, so each page is cached once in the cluster",
        v1(cluster)? - before
    );
    Ok(())
}

fn demo_purge(cluster: &Cluster) -> Result<()> {
    let page = |n: u32| {
        format!(
            "/cache/catalog-{n}?cache_control=max-age%3D600&header=surrogate-key%3A{}",
            if n < 2 { "product-1" } else { "product-2" }
        )
    };
    let status = |n: u32| -> Result<String> {
        Ok(cluster
            .get(&page(n))?
            .header("cache-status")
            .unwrap_or("-")
            .to_string())
    };
    for n in 0..4 {
        status(n)?;
    }
    for n in 0..4 {
        println!(
            "  catalog-{n} (tag {}): {}",
            if n < 2 { "product-1" } else { "product-2" },
            status(n)?
        );
    }
    let posted = std::time::Instant::now();
    let r = cluster.control("POST", "/v1/purge", r#"{"tags":["product-1"]}"#)?;
    println!(
        "  POST http://127.0.0.1:9080/v1/purge {{\"tags\":[\"product-1\"]}} -> {} {}",
        r.status,
        r.text().trim()
    );
    std::thread::sleep(Duration::from_millis(1_200));
    for n in 0..4 {
        println!(
            "  {:.1?} later, catalog-{n}: {}",
            posted.elapsed(),
            status(n)?
        );
    }
    println!("  the product-1 pages missed on whichever edge holds them, the others stayed hits");
    let r = cluster.control("POST", "/v1/purge", r#"{"tags":["product-2"],"soft":true}"#)?;
    println!("  soft purge of product-2 -> {}", r.status);
    std::thread::sleep(Duration::from_millis(1_200));
    println!("  catalog-2 after the soft purge: {}", status(2)?);
    println!("  (stale: revalidated with the origin before it is served fresh again)");
    Ok(())
}

fn demo_split(cluster: &Cluster) -> Result<()> {
    let (v1_before, v2_before) = (v1(cluster)?, cluster.backend_requests("api-v2")?);
    for n in 0..200 {
        cluster.get(&format!("/api/demo-{n}"))?;
    }
    println!(
        "  200 requests: api-v1 (2 replicas) counted {}, api-v2 counted {}",
        v1(cluster)? - v1_before,
        cluster.backend_requests("api-v2")? - v2_before
    );
    let pinned = cluster.request("GET", "/api/demo", &[("x-canary", "always")])?;
    println!(
        "  with x-canary: always -> {}",
        pinned.header("x-backend-name").unwrap_or("?")
    );
    Ok(())
}

fn demo_breaker(cluster: &Cluster) -> Result<()> {
    cluster.set_fault("flaky", r#"{"mode":"fail","ratio":1.0,"status":503}"#)?;
    let before = cluster.backend_requests("flaky")?;
    let mut fallbacks = 0;
    for n in 0..30 {
        if cluster
            .get(&format!("/flaky/demo-{n}"))?
            .header("x-edgewise-circuit")
            .is_some()
        {
            fallbacks += 1;
        }
    }
    println!(
        "  flaky failing: 30 requests, {} reached flaky (5 per edge trip its breaker), {fallbacks} answered by the open breaker",
        cluster.backend_requests("flaky")? - before
    );
    cluster.set_fault("flaky", r#"{"mode":"off"}"#)?;
    println!("  flaky healed; the breakers stay open 10 s, then a probe closes each");
    let started = Instant::now();
    let mut closed = [false, false];
    for n in 0.. {
        if closed.iter().all(|c| *c) || started.elapsed() > Duration::from_secs(40) {
            break;
        }
        cluster.get(&format!("/flaky/heal-{n}"))?;
        for (edge, done) in closed.iter_mut().enumerate() {
            let stats = cluster.edge_stats(edge)?;
            *done = stats
                .get("wasmcustom.edgewise.circuit_breaker.upstream=.=flaky;.;state")
                .is_some_and(|s| *s == 0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "  both breakers closed again after {:.1?}; flaky has served {} since the fault",
        started.elapsed(),
        cluster.backend_requests("flaky")? - before
    );
    Ok(())
}

fn demo_failover(cluster: &Cluster) -> Result<()> {
    cluster.docker("stop", "api-v2")?;
    println!("  docker stop api-v2");
    let (mut ok, mut failed) = (0, 0);
    for n in 0..300 {
        if cluster.get(&format!("/api/stop-{n}"))?.status == 200 {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    println!("  300 requests: {ok} served by api-v1, {failed} failed before each edge's api-v2 breaker tripped");
    cluster.docker("start", "api-v2")?;
    cluster.wait_service_healthy("api-v2", Duration::from_secs(60))?;
    println!("  docker start api-v2; waiting for a probe to close the breakers");
    let before = cluster.backend_requests("api-v2")?;
    let started = Instant::now();
    for n in 0.. {
        if cluster.backend_requests("api-v2")? != before {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("traffic did not return to api-v2");
        }
        cluster.get(&format!("/api/back-{n}"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  api-v2 serving again {:.1?} after it was healthy",
        started.elapsed()
    );
    Ok(())
}
