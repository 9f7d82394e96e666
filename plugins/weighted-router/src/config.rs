//! The weighted router's configuration: routes (match, targets and weights, strategy,
//! overrides, failover), validated and compiled into tables at configure time.

use edgewise_support::config::{err, one_of, parse_config, ConfigError};
use edgewise_support::metrics::labelled_metric_name;
use edgewise_support::request::{Matcher, RawMatch};
use serde::Deserialize;

use crate::strategy::WrrTable;

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub cluster_header: Option<String>,
    pub routes: Vec<RawRoute>,
    pub breaker_slots: Option<u64>,
    pub key_prefix: Option<String>,
    pub metrics_flush: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub targets: Vec<RawTarget>,
    pub strategy: Option<String>,
    pub hash_on: Option<String>,
    pub overrides: Option<Vec<RawOverride>>,
    pub failover: Option<bool>,
    pub shared_cursor: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub cluster: String,
    pub weight: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub equals: String,
    pub cluster: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    WeightedRoundRobin,
    Random,
    LeastRequests,
    Hash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    ClientIp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverrideSource {
    Header(String),
    Cookie(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub source: OverrideSource,
    pub equals: Vec<u8>,
    pub cluster: String,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub cluster: String,
    pub weight: u32,
    pub metric_requests: String,
}

#[derive(Clone, Debug)]
pub struct Route {
    /// Position in `Config::routes` (per-worker cursors are kept by it).
    pub index: usize,
    pub name: String,
    pub matcher: Matcher,
    /// All targets, including weight 0 ones (kept for metrics; never picked).
    pub targets: Vec<Target>,
    pub strategy: Strategy,
    pub hash_on: Option<HashOn>,
    pub overrides: Vec<Override>,
    pub failover: bool,
    pub shared_cursor: bool,
    /// The weighted round-robin cycle over targets with weight > 0.
    pub wrr: WrrTable,
    pub weights: Vec<u32>,
    /// Per-target seeds for rendezvous hashing (hash of the cluster name).
    pub seeds: Vec<u64>,
    pub metric_failovers: String,
    pub metric_overrides: String,
    /// Shared-data key of this route's in-flight counts (least_requests) / shared cursor.
    pub state_key: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub cluster_header: String,
    pub routes: Vec<Route>,
    /// Must equal the circuit breaker's `max_upstreams` for failover lookups.
    pub breaker_slots: u64,
    /// Prepended (with a dot) to every shared-data key, so that two instances of this
    /// filter in one `vm_id` never share state; "" (the default): keys as they are.
    pub key_prefix: String,
    /// How long per-request counters may wait in the VM before reaching Envoy (zero:
    /// immediately); see `Metric::counter_flushed_every`.
    pub metrics_flush: std::time::Duration,
}

fn header_name(field: &str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(err(
            field,
            format!("{name:?} is not a header name"),
            "use a name like \"x-route-cluster\"",
        ));
    }
    Ok(name.to_ascii_lowercase())
}

impl Config {
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_config(bytes)?;
        Config::compile(&raw)
    }

    pub fn compile(raw: &RawConfig) -> Result<Config, ConfigError> {
        let cluster_header = header_name(
            "cluster_header",
            raw.cluster_header.as_deref().unwrap_or("x-route-cluster"),
        )?;
        if raw.routes.is_empty() {
            return Err(err(
                "routes",
                "is empty",
                "add at least one route with targets",
            ));
        }
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let route = compile_route(i, r)?;
            if routes.iter().any(|other| other.name == route.name) {
                return Err(err(
                    format!("routes[{i}].name"),
                    format!("{:?} is used by another route", route.name),
                    "give every route its own name",
                ));
            }
            routes.push(route);
        }
        let breaker_slots = raw.breaker_slots.unwrap_or(256);
        if !(1..=65_536).contains(&breaker_slots) {
            return Err(err(
                "breaker_slots",
                format!("{breaker_slots} is out of range"),
                "use the circuit breaker's max_upstreams (default 256)",
            ));
        }
        let key_prefix = edgewise_support::config::key_prefix(raw.key_prefix.as_deref())?;
        let metrics_flush =
            edgewise_support::duration::metrics_flush(raw.metrics_flush.as_deref())?;
        Ok(Config {
            key_prefix,
            metrics_flush,
            cluster_header,
            routes,
            breaker_slots,
        })
    }
}

fn compile_route(i: usize, raw: &RawRoute) -> Result<Route, ConfigError> {
    let field = format!("routes[{i}]");
    let name = raw.name.clone().unwrap_or_else(|| format!("route{i}"));
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(err(
            format!("{field}.name"),
            format!("{name:?} is not a valid route name"),
            "use 1-64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    let matcher = Matcher::compile(&format!("{field}.match"), raw.matcher.as_ref())?;
    if raw.targets.is_empty() {
        return Err(err(
            format!("{field}.targets"),
            "is empty",
            "list at least one {\"cluster\", \"weight\"}",
        ));
    }
    if raw.targets.len() > 64 {
        return Err(err(
            format!("{field}.targets"),
            format!("has {} targets", raw.targets.len()),
            "use at most 64 targets",
        ));
    }
    let mut targets: Vec<Target> = Vec::new();
    for (j, t) in raw.targets.iter().enumerate() {
        let tf = format!("{field}.targets[{j}]");
        if t.cluster.is_empty() || t.cluster.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(err(
                format!("{tf}.cluster"),
                format!("{:?} is not a cluster name", t.cluster),
                "name an Envoy cluster",
            ));
        }
        if targets.iter().any(|o| o.cluster == t.cluster) {
            return Err(err(
                format!("{tf}.cluster"),
                format!("{:?} is listed twice", t.cluster),
                "list each cluster once and give it the combined weight",
            ));
        }
        let weight = match t.weight.as_u64() {
            Some(w) if w <= 1_000_000 => w as u32,
            _ => {
                return Err(err(
                    format!("{tf}.weight"),
                    format!("{} is not a weight", t.weight),
                    "use a whole number from 0 to 1000000 (0 takes the target out)",
                ))
            }
        };
        targets.push(Target {
            cluster: t.cluster.clone(),
            weight,
            metric_requests: labelled_metric_name(
                "weighted_router",
                &[("route", &name), ("cluster", &t.cluster)],
                "requests",
            ),
        });
    }
    if targets.iter().all(|t| t.weight == 0) {
        return Err(err(
            format!("{field}.targets"),
            "all weights are 0, so nothing could be picked",
            "give at least one target a positive weight",
        ));
    }
    let strategy = one_of(
        &format!("{field}.strategy"),
        raw.strategy.as_deref(),
        "weighted_round_robin",
        "a strategy",
        &[
            ("weighted_round_robin", Strategy::WeightedRoundRobin),
            ("random", Strategy::Random),
            ("least_requests", Strategy::LeastRequests),
            ("hash", Strategy::Hash),
        ],
    )?;
    let hash_on = match &raw.hash_on {
        None if strategy == Strategy::Hash => {
            return Err(err(
                format!("{field}.hash_on"),
                "is required by strategy hash",
                "set it to header:NAME, cookie:NAME or client_ip",
            ))
        }
        None => None,
        Some(_) if strategy != Strategy::Hash => {
            return Err(err(
                format!("{field}.hash_on"),
                "only applies to strategy hash",
                "remove it or use strategy hash",
            ))
        }
        Some(text) => Some(match text.as_str() {
            "client_ip" => HashOn::ClientIp,
            t => match (t.strip_prefix("header:"), t.strip_prefix("cookie:")) {
                (Some(h), _) => HashOn::Header(header_name(&format!("{field}.hash_on"), h)?),
                (_, Some(c)) if !c.is_empty() => HashOn::Cookie(c.to_string()),
                _ => {
                    return Err(err(
                        format!("{field}.hash_on"),
                        format!("{t:?} is not a hash source"),
                        "use header:NAME, cookie:NAME or client_ip",
                    ))
                }
            },
        }),
    };
    let mut overrides = Vec::new();
    for (k, o) in raw.overrides.iter().flatten().enumerate() {
        let of = format!("{field}.overrides[{k}]");
        let source = match (&o.header, &o.cookie) {
            (Some(h), None) => OverrideSource::Header(header_name(&format!("{of}.header"), h)?),
            (None, Some(c)) if !c.is_empty() => OverrideSource::Cookie(c.clone()),
            _ => return Err(err(
                of,
                "needs exactly one of header or cookie",
                "write {\"header\": \"x-canary\", \"equals\": \"always\", \"cluster\": \"api-v2\"}",
            )),
        };
        if o.cluster.is_empty() {
            return Err(err(
                format!("{of}.cluster"),
                "is empty",
                "name the cluster to pin these requests to",
            ));
        }
        overrides.push(Override {
            source,
            equals: o.equals.as_bytes().to_vec(),
            cluster: o.cluster.clone(),
        });
    }
    let shared_cursor = raw.shared_cursor.unwrap_or(false);
    if shared_cursor && strategy != Strategy::WeightedRoundRobin {
        return Err(err(
            format!("{field}.shared_cursor"),
            "only applies to weighted_round_robin",
            "remove it",
        ));
    }
    let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
    let seeds: Vec<u64> = targets
        .iter()
        .map(|t| edgewise_support::seed::stable_hash(t.cluster.as_bytes()) | 1)
        .collect();
    let wrr = WrrTable::build(&weights).ok_or_else(|| {
        err(
            format!("{field}.targets"),
            "the weights make a round-robin cycle longer than 1000000 picks",
            "use smaller weights or ones with a common divisor",
        )
    })?;
    let clusters: Vec<&str> = targets.iter().map(|t| t.cluster.as_str()).collect();
    let state_key = format!(
        "edgewise.wr.{name}.{:016x}",
        edgewise_support::seed::stable_hash(clusters.join("\0").as_bytes()) | 1
    );
    Ok(Route {
        metric_failovers: labelled_metric_name("weighted_router", &[("route", &name)], "failovers"),
        metric_overrides: labelled_metric_name("weighted_router", &[("route", &name)], "overrides"),
        index: i,
        name,
        matcher,
        targets,
        strategy,
        hash_on,
        overrides,
        failover: raw.failover.unwrap_or(false),
        shared_cursor,
        wrr,
        seeds,
        weights,
        state_key,
    })
}
