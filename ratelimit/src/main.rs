//! `edgewise-ratelimit`: a rate limit service for Envoy's global rate limiting (its
//! `envoy.filters.http.ratelimit` filter, or Edgewise's rate_limit filter with `global`
//! rules), counting in Redis. Stateless: any number of replicas can share one Redis.
//!
//! ```text
//! edgewise-ratelimit --config limits.yaml [--config more.yaml]
//!                    (--redis redis://127.0.0.1:6379 | --redis-cluster redis://a:6379,redis://b:6379)
//!                    [--listen 127.0.0.1:8081] [--http 127.0.0.1:8080]
//! ```
//! gRPC on `--listen`; on `--http`, `/healthcheck` (200 when Redis answers PING — on a
//! cluster, when it reports `cluster_state:ok` — else 503) and `/metrics` (Prometheus text). Prints `listening on ADDR` and `http on ADDR` once ready.

mod config;
mod control;
mod script;
mod service;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::routing::get;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

use crate::config::Config;
use crate::control::Control;
use crate::service::{Bounds, Limiter, Metrics};

struct Args {
    configs: Vec<String>,
    redis: String,
    /// `--redis-cluster`: seed nodes of a Redis Cluster (comma-separated URLs); instead of
    /// `--redis`.
    redis_cluster: Vec<String>,
    listen: String,
    http: String,
    bounds: Bounds,
    /// The control API's token (`--control-token`, or EDGEWISE_CONTROL_TOKEN); None: off.
    control_token: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        configs: Vec::new(),
        redis: "redis://127.0.0.1:6379".into(),
        redis_cluster: Vec::new(),
        listen: "127.0.0.1:8081".into(),
        http: "127.0.0.1:8080".into(),
        bounds: Bounds {
            hash_key: std::env::var("EDGEWISE_RATELIMIT_HASH_KEY")
                .unwrap_or_default()
                .into_bytes(),
            ..Bounds::default()
        },
        control_token: std::env::var("EDGEWISE_CONTROL_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let mut redis_given = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => args.configs.push(value()?),
            "--redis" => {
                args.redis = value()?;
                redis_given = true;
            }
            "--redis-cluster" => {
                args.redis_cluster = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from)
                    .collect();
                if args.redis_cluster.is_empty() {
                    return Err("--redis-cluster takes comma-separated redis:// URLs".into());
                }
            }
            "--listen" => args.listen = value()?,
            "--http" => args.http = value()?,
            "--hash-key" => args.bounds.hash_key = value()?.into_bytes(),
            "--control-token" => {
                let token = value()?;
                if token.len() < 16 {
                    return Err("--control-token: at least 16 characters".into());
                }
                args.control_token = Some(token);
            }
            "--max-descriptors" | "--max-entries" | "--hash-values-over" | "--max-value-bytes"
            | "--max-hits-addend" => {
                let text = value()?;
                let n: u64 = text
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("{flag} takes a positive number, not {text:?}"))?;
                let b = &mut args.bounds;
                match flag.as_str() {
                    "--max-descriptors" => b.max_descriptors = n as usize,
                    "--max-entries" => b.max_entries = n as usize,
                    "--hash-values-over" => b.hash_values_over = n as usize,
                    "--max-value-bytes" => b.max_value_bytes = n as usize,
                    _ => b.max_hits_addend = n,
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if redis_given && !args.redis_cluster.is_empty() {
        return Err("give --redis (one node) or --redis-cluster (a cluster), not both".into());
    }
    if args.configs.is_empty() {
        return Err("give at least one --config FILE".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("edgewise-ratelimit: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let mut config = Config::default();
    for path in &args.configs {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        config.add_yaml(path, &text)?;
    }
    // Reconnects on its own; a request while Redis is down fails at once (UNAVAILABLE).
    let redis = if args.redis_cluster.is_empty() {
        store::Store::node(&args.redis).await?
    } else {
        store::Store::cluster(&args.redis_cluster).await?
    };
    let metrics = Arc::new(Metrics::default());
    let limiter = Arc::new(Limiter {
        config,
        redis: redis.clone(),
        script: service::script(),
        metrics: metrics.clone(),
        bounds: args.bounds,
    });

    let grpc = tokio::net::TcpListener::bind(&args.listen).await?;
    let grpc_addr: SocketAddr = grpc.local_addr()?;
    let http = tokio::net::TcpListener::bind(&args.http).await?;
    let http_addr: SocketAddr = http.local_addr()?;

    let control = Arc::new(Control {
        redis: redis.clone(),
        token: args.control_token.clone(),
        purges: std::sync::atomic::AtomicU64::new(0),
    });
    let control_metrics = control.clone();
    let health_redis = redis.clone();
    let metrics_redis = redis.clone();
    let purge_control = control.clone();
    let poll_control = control.clone();
    let breaker_control = control.clone();
    let breakers_control = control.clone();
    let usage_control = control.clone();
    let usage_limiter = limiter.clone();
    let app = axum::Router::new()
        .route(
            "/v1/usage",
            get(
                move |headers: axum::http::HeaderMap,
                      axum::extract::RawQuery(query): axum::extract::RawQuery| {
                    let (control, limiter) = (usage_control.clone(), usage_limiter.clone());
                    async move {
                        if let Err(refused) = control::admitted(&control, &headers) {
                            return refused;
                        }
                        service::usage(limiter, query).await
                    }
                },
            ),
        )
        .route(
            "/v1/breaker",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                control::breaker(breaker_control.clone(), headers, body)
            }),
        )
        .route(
            "/v1/breakers",
            get(move |headers: axum::http::HeaderMap| {
                control::breakers(breakers_control.clone(), headers)
            }),
        )
        .route(
            "/v1/purge",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                control::purge(purge_control.clone(), headers, body)
            }),
        )
        .route(
            "/v1/purges",
            get(
                move |headers: axum::http::HeaderMap,
                      axum::extract::Query(query): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| {
                    control::purges(poll_control.clone(), headers, query.get("after").cloned())
                },
            ),
        )
        .route(
            "/healthcheck",
            get(move || {
                let redis = health_redis.clone();
                async move {
                    match redis.health().await {
                        Ok(()) => (axum::http::StatusCode::OK, "OK\n".to_string()),
                        Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                let metrics_redis = metrics_redis.clone();
                async move {
                    let line = |name: &str, help: &str, v: u64| {
                        format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n")
                    };
                    [
                        line(
                            "edgewise_ratelimit_requests_total",
                            "ShouldRateLimit calls.",
                            m.requests.load(Ordering::Relaxed),
                        ),
                        line(
                            "edgewise_ratelimit_over_limit_total",
                            "Calls answered OVER_LIMIT.",
                            m.over_limit.load(Ordering::Relaxed),
                        ),
                        line(
                            "edgewise_ratelimit_redis_errors_total",
                            "Calls failed because Redis did not answer (UNAVAILABLE).",
                            m.redis_errors.load(Ordering::Relaxed),
                        ),
                        line(
                            "edgewise_ratelimit_redis_reconnects_total",
                            "Redis Cluster connections rebuilt (slot map read afresh) after a lost connection.",
                            metrics_redis.rebuilds(),
                        ),
                        line(
                            "edgewise_control_purges_total",
                            "Purge targets logged through the control API.",
                            control_metrics.purges.load(Ordering::Relaxed),
                        ),
                        line(
                            "edgewise_ratelimit_refused_total",
                            "Calls refused for exceeding the service's bounds (INVALID_ARGUMENT).",
                            m.refused.load(Ordering::Relaxed),
                        ),
                        line(
                            "edgewise_ratelimit_overrides_ignored_total",
                            "Descriptor overrides ignored (their domain does not set overrides: true).",
                            m.overrides_ignored.load(Ordering::Relaxed),
                        ),
                        line(
                            "edgewise_ratelimit_unlimited_descriptors_total",
                            "Descriptors with no configured limit (answered OK).",
                            m.unlimited_descriptors.load(Ordering::Relaxed),
                        ),
                    ]
                    .concat()
                }
            }),
        );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.changed().await;
        }
    };
    let grpc_stop = {
        let mut rx = stop_rx;
        async move {
            let _ = rx.changed().await;
        }
    };
    let http_server = tokio::spawn(async move {
        axum::serve(http, app)
            .with_graceful_shutdown(http_stop)
            .await
    });
    let grpc_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::from_arc(limiter))
            .serve_with_incoming_shutdown(tokio_stream_listener(grpc), grpc_stop),
    );
    println!("listening on {grpc_addr}");
    println!("http on {http_addr}");
    shutdown.await;
    // Stop accepting; calls in flight get up to 5 s to finish. Connections kept open by
    // clients (Envoy keeps its HTTP/2 connection for ever) do not hold the exit.
    let _ = stop_tx.send(true);
    let grace = std::time::Duration::from_secs(5);
    let _ = tokio::time::timeout(grace, async {
        let _ = grpc_server.await;
        let _ = http_server.await;
    })
    .await;
    Ok(())
}

/// The bound listener as the incoming stream tonic serves.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}
