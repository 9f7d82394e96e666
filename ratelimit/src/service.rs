//! The gRPC service: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`. Each
//! request's descriptors are looked up in the configuration (or carry their own `limit`
//! override), and all limited ones are decided together by one script call in Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit as ProtoUnit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tonic::{Request, Response, Status};

use crate::config::{Algorithm, Config, Limit, Unit};
use crate::script::{outcomes, Outcome, DECIDE};
use crate::store::{slot, Store};

/// Counters exported on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub over_limit: AtomicU64,
    pub redis_errors: AtomicU64,
    pub unlimited_descriptors: AtomicU64,
    /// Calls refused for exceeding the service's bounds (INVALID_ARGUMENT).
    pub refused: AtomicU64,
    /// Overrides ignored because their domain does not allow them.
    pub overrides_ignored: AtomicU64,
}

/// What one call may ask for: every caller-chosen byte that becomes a Redis key, and every
/// count that becomes a script argument, is bounded (flags of the same names).
#[derive(Clone, Debug)]
pub struct Bounds {
    /// `--max-descriptors`: descriptors in one call.
    pub max_descriptors: usize,
    /// `--max-entries`: entries in one descriptor.
    pub max_entries: usize,
    /// `--hash-values-over`: longer entry values are counted under their hash (SHA-256,
    /// keyed with `--hash-key`), so a key's size never follows a client's input.
    pub hash_values_over: usize,
    /// `--max-value-bytes`: a longer entry key or value (or domain) refuses the call.
    pub max_value_bytes: usize,
    /// `--max-hits-addend`: a larger `hits_addend` refuses the call.
    pub max_hits_addend: u64,
    /// The key of the value hash (`--hash-key`, or EDGEWISE_RATELIMIT_HASH_KEY).
    pub hash_key: Vec<u8>,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            max_descriptors: 32,
            max_entries: 16,
            hash_values_over: 64,
            max_value_bytes: 8192,
            max_hits_addend: 1_000_000,
            hash_key: Vec::new(),
        }
    }
}

impl Bounds {
    /// Why a call is refused, if it is.
    pub fn refusal(&self, request: &RateLimitRequest) -> Option<String> {
        if request.domain.len() > self.max_value_bytes {
            return Some(format!(
                "the domain is longer than --max-value-bytes {}",
                self.max_value_bytes
            ));
        }
        if request.descriptors.len() > self.max_descriptors {
            return Some(format!(
                "{} descriptors exceed --max-descriptors {}",
                request.descriptors.len(),
                self.max_descriptors
            ));
        }
        let hits = |h: u64| h > self.max_hits_addend;
        if hits(u64::from(request.hits_addend)) {
            return Some(format!(
                "hits_addend {} exceeds --max-hits-addend {}",
                request.hits_addend, self.max_hits_addend
            ));
        }
        for (i, d) in request.descriptors.iter().enumerate() {
            if d.entries.len() > self.max_entries {
                return Some(format!(
                    "descriptor {i} has {} entries, over --max-entries {}",
                    d.entries.len(),
                    self.max_entries
                ));
            }
            if let Some(h) = d.hits_addend.as_ref().filter(|h| hits(h.value)) {
                return Some(format!(
                    "descriptor {i}'s hits_addend {} exceeds --max-hits-addend {}",
                    h.value, self.max_hits_addend
                ));
            }
            if d.entries
                .iter()
                .any(|e| e.key.len() > self.max_value_bytes || e.value.len() > self.max_value_bytes)
            {
                return Some(format!(
                    "descriptor {i} has an entry longer than --max-value-bytes {}",
                    self.max_value_bytes
                ));
            }
        }
        None
    }

    /// An entry value as counted: itself, or `sha256:` and 32 hex digits when long.
    pub fn bound_value(&self, value: &str) -> String {
        use sha2::{Digest, Sha256};
        if value.len() <= self.hash_values_over {
            return value.to_string();
        }
        let mut hasher = Sha256::new();
        hasher.update((self.hash_key.len() as u64).to_le_bytes());
        hasher.update(&self.hash_key);
        hasher.update(value.as_bytes());
        let digest = hasher.finalize();
        let mut out = String::from("sha256:");
        for byte in digest.iter().take(16) {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

pub struct Limiter {
    pub config: Config,
    pub redis: Store,
    pub script: redis::Script,
    pub metrics: Arc<Metrics>,
    pub bounds: Bounds,
}

/// The Redis key of a descriptor: the domain and its entries, with `%`, `=`, `|`, `{` and
/// `}` escaped so distinct descriptors never share a key. No hash tag: on a Redis Cluster
/// each descriptor's key is hashed whole, so a domain's keys spread over every master.
pub fn key(domain: &str, entries: &[(String, String)]) -> String {
    let escape = |s: &str| {
        s.replace('%', "%25")
            .replace('=', "%3D")
            .replace('|', "%7C")
            .replace('{', "%7B")
            .replace('}', "%7D")
    };
    let mut out = format!("erl:{}", escape(domain));
    for (k, v) in entries {
        out.push('|');
        out.push_str(&escape(k));
        out.push('=');
        out.push_str(&escape(v));
    }
    out
}

fn proto_unit(unit: Unit) -> i32 {
    match unit {
        Unit::Second => ProtoUnit::Second as i32,
        Unit::Minute => ProtoUnit::Minute as i32,
        Unit::Hour => ProtoUnit::Hour as i32,
        Unit::Day => ProtoUnit::Day as i32,
        Unit::Week => ProtoUnit::Week as i32,
        Unit::Month => ProtoUnit::Month as i32,
    }
}

/// The end of the calendar period `now` falls in, in µs since the Unix epoch (what the
/// script counts a quota's period by).
fn period_end_us(period: &edgewise_support::calendar::Period) -> u64 {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    period.end_ns(period.index(now_ns)) / 1_000
}

/// The limit a descriptor carries itself (RateLimitOverride), when valid.
fn override_limit(d: &RateLimitDescriptor) -> Option<Limit> {
    let o = d.limit.as_ref()?;
    let unit = match ProtoUnit::try_from(o.unit).ok()? {
        ProtoUnit::Second => Unit::Second,
        ProtoUnit::Minute => Unit::Minute,
        ProtoUnit::Hour => Unit::Hour,
        ProtoUnit::Day => Unit::Day,
        _ => return None,
    };
    (o.requests_per_unit > 0).then_some(Limit {
        requests_per_unit: u64::from(o.requests_per_unit),
        unit,
        algorithm: Algorithm::TokenBucket,
    })
}

fn millis(ms: u64) -> ProtoDuration {
    ProtoDuration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// One limited descriptor of a call: its index in the request, Redis key, limit and hits.
type Limited = (usize, String, Limit, u64);

impl Limiter {
    /// Decides a call's limited descriptors with the script, returning their outcomes in
    /// order. On one node, one script call decides them all at once (all admit, or none
    /// is spent). On a cluster the keys are grouped by hash slot and each group is one
    /// script call on the master serving it, all groups at once: each group is atomic on
    /// its own, so a denial in one slot does not return the hits another slot spent.
    async fn decide(&self, limited: &[Limited], force: bool) -> Result<Vec<Outcome>, Status> {
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (n, (_, key, _, _)) in limited.iter().enumerate() {
            let group = if self.redis.is_cluster() {
                slot(key)
            } else {
                0
            };
            match groups.iter_mut().find(|(g, _)| *g == group) {
                Some((_, members)) => members.push(n),
                None => groups.push((group, vec![n])),
            }
        }
        let calls = groups.iter().map(|(_, members)| {
            let mut invocation = self.script.prepare_invoke();
            for &n in members {
                let (_, key, limit, hits) = &limited[n];
                invocation
                    .key(key)
                    .arg(match limit.algorithm {
                        Algorithm::TokenBucket => 0,
                        Algorithm::SlidingWindow => 1,
                        Algorithm::Calendar(_) => 2,
                    })
                    .arg(match limit.algorithm {
                        // A quota's "period" is the end of the current one (µs): each
                        // period counts in its own window, whatever its length.
                        Algorithm::Calendar(period) => period_end_us(&period),
                        _ => limit.unit.seconds() * 1_000_000,
                    })
                    .arg(limit.requests_per_unit)
                    .arg(*hits);
            }
            invocation.arg(i64::from(force));
            let mut redis = self.redis.clone();
            async move {
                let reply: Result<Vec<i64>, _> = invocation.invoke_async(&mut redis).await;
                (reply, members.len())
            }
        });
        let replies = futures_util::future::join_all(calls).await;
        let mut decided = vec![None; limited.len()];
        for ((_, members), (reply, expected)) in groups.iter().zip(replies) {
            let reply = reply.map_err(|e| {
                self.metrics.redis_errors.fetch_add(1, Ordering::Relaxed);
                Status::unavailable(format!("redis: {e}"))
            })?;
            let outcomes = outcomes(&reply)
                .filter(|o| o.len() == expected)
                .ok_or_else(|| Status::internal("unexpected reply from the limit script"))?;
            for (&n, outcome) in members.iter().zip(outcomes) {
                decided[n] = Some(outcome);
            }
        }
        decided
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Status::internal("a descriptor was left undecided"))
    }
}

#[tonic::async_trait]
impl RateLimitService for Limiter {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        // `x-edgewise-charge: 1`: a charge after a response (the rate_limit filter's
        // `charge`) — its hits are spent even past the limit, so the key goes into debt.
        let force = request.metadata().get("x-edgewise-charge").is_some();
        let request = request.into_inner();
        if request.domain.is_empty() || request.descriptors.is_empty() {
            return Err(Status::invalid_argument(
                "a request names a domain and at least one descriptor",
            ));
        }
        if let Some(why) = self.bounds.refusal(&request) {
            self.metrics.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Status::invalid_argument(why));
        }
        let request_hits = u64::from(request.hits_addend.max(1));
        let overrides_allowed = self.config.overrides.contains(&request.domain);
        // (index in the request, key, limit, hits) of every limited descriptor.
        let mut limited = Vec::new();
        for (i, d) in request.descriptors.iter().enumerate() {
            let entries: Vec<(String, String)> = d
                .entries
                .iter()
                .map(|e| (e.key.clone(), self.bounds.bound_value(&e.value)))
                .collect();
            // An override counts in its own key: a caller's 1/day never moves the bucket of
            // the configured 10/hour (nor another override's).
            let overridden = match override_limit(d) {
                Some(limit) if overrides_allowed => Some(limit),
                Some(_) => {
                    self.metrics
                        .overrides_ignored
                        .fetch_add(1, Ordering::Relaxed);
                    None
                }
                None => None,
            };
            let limit = overridden.or_else(|| self.config.limit(&request.domain, &entries));
            let Some(limit) = limit else {
                self.metrics
                    .unlimited_descriptors
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let hits = d
                .hits_addend
                .as_ref()
                .map(|h| h.value)
                .unwrap_or(request_hits);
            let mut redis_key = key(&request.domain, &entries);
            if let Some(o) = overridden {
                redis_key.push_str(&format!(
                    "|%override={}/{}",
                    o.requests_per_unit,
                    o.unit.seconds()
                ));
            }
            limited.push((i, redis_key, limit, hits));
        }
        let mut statuses: Vec<DescriptorStatus> = request
            .descriptors
            .iter()
            .map(|_| DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            })
            .collect();
        let mut overall = Code::Ok;
        if !limited.is_empty() {
            let decided = self.decide(&limited, force).await?;
            for ((i, _, limit, _), outcome) in limited.iter().zip(decided) {
                if !outcome.admitted {
                    overall = Code::OverLimit;
                }
                statuses[*i] = DescriptorStatus {
                    code: if outcome.admitted {
                        Code::Ok as i32
                    } else {
                        Code::OverLimit as i32
                    },
                    current_limit: Some(RateLimit {
                        name: String::new(),
                        requests_per_unit: limit.requests_per_unit.min(u64::from(u32::MAX)) as u32,
                        unit: proto_unit(limit.unit),
                    }),
                    limit_remaining: outcome.remaining.min(u64::from(u32::MAX)) as u32,
                    // Over the limit: when this request's hits would fit; else when the
                    // bucket is full again.
                    duration_until_reset: Some(millis(if outcome.admitted {
                        outcome.full_in_ms
                    } else {
                        outcome.retry_after_ms
                    })),
                    ..Default::default()
                };
            }
        }
        if overall == Code::OverLimit {
            self.metrics.over_limit.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Response::new(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        }))
    }
}

/// The decision script, for [`Limiter::script`].
pub fn script() -> redis::Script {
    redis::Script::new(DECIDE)
}

/// `GET /v1/usage?domain=D&k1=v1&k2=v2…`: a descriptor's usage without spending any of it
/// (the decision with `hits_addend` 0) — the limit, what is left and when it is full again,
/// or `"limited": false` when no configured limit matches. The query's pairs after `domain`
/// are the descriptor's entries, in order, percent-decoded.
pub async fn usage(
    limiter: Arc<Limiter>,
    query: Option<String>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let mut domain = None;
    let mut entries = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == "domain" && domain.is_none() {
            domain = Some(v.into_owned());
        } else {
            entries.push(Entry {
                key: k.into_owned(),
                value: v.into_owned(),
            });
        }
    }
    let (Some(domain), false) = (domain, entries.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "name a domain and the descriptor's entries: ?domain=edgewise&rule=api&client_ip=203.0.113.7\n".into(),
        );
    };
    let request = RateLimitRequest {
        domain: domain.clone(),
        descriptors: vec![RateLimitDescriptor {
            entries: entries.clone(),
            hits_addend: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let answer = match limiter.should_rate_limit(Request::new(request)).await {
        Ok(a) => a.into_inner(),
        Err(e) if e.code() == tonic::Code::InvalidArgument => {
            return (StatusCode::BAD_REQUEST, format!("{}\n", e.message()))
        }
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", e.message()),
            )
        }
    };
    let pairs: Vec<[String; 2]> = entries.into_iter().map(|e| [e.key, e.value]).collect();
    let body = match answer
        .statuses
        .first()
        .and_then(|s| s.current_limit.clone().map(|l| (s, l)))
    {
        Some((status, limit)) => serde_json::json!({
            "domain": domain,
            "entries": pairs,
            "limited": true,
            "limit": limit.requests_per_unit,
            "unit": format!("{:?}", limit.unit()).to_ascii_lowercase(),
            "remaining": status.limit_remaining,
            "full_in_ms": status.duration_until_reset.as_ref().map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000),
        }),
        None => serde_json::json!({ "domain": domain, "entries": pairs, "limited": false }),
    };
    (StatusCode::OK, format!("{body}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_collide_across_escaping() {
        let a = key("d", &[("k".into(), "a|b=c".into())]);
        let b = key("d", &[("k".into(), "a".into()), ("b".into(), "c".into())]);
        assert_ne!(a, b);
        assert_eq!(
            key("edgewise", &[("rule".into(), "x".into())]),
            "erl:edgewise|rule=x"
        );
        assert_eq!(key("{x}", &[]), "erl:%7Bx%7D");
    }
}
