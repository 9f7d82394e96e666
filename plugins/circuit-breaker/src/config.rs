//! The circuit breaker's configuration: JSON shape (unknown fields rejected), per-upstream
//! overrides, and the validated parameters the state machine runs on.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use edgewise_support::config::{err, parse_config, parse_statuses, ConfigError};
use edgewise_support::duration::parse_duration;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub upstream: Option<String>,
    pub failure: Option<RawFailure>,
    pub trip: Option<RawTrip>,
    pub open: Option<RawOpen>,
    pub half_open: Option<RawHalfOpen>,
    pub fallback: Option<RawFallback>,
    pub overrides: Option<BTreeMap<String, RawOverride>>,
    pub max_upstreams: Option<u64>,
    pub stats_upstreams: Option<Vec<String>>,
    pub max_in_flight: Option<u32>,
    pub key_prefix: Option<String>,
    pub metrics_flush: Option<String>,
    pub control: Option<RawControl>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub cluster: String,
    pub token: String,
    pub path: Option<String>,
    pub poll: Option<String>,
    pub timeout: Option<String>,
}

/// Operator controls: forced breaker states polled from the control service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    pub cluster: String,
    pub token: String,
    pub path: String,
    pub poll_ms: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawFailure {
    pub statuses: Option<Vec<serde_json::Value>>,
    pub local_failures: Option<bool>,
    pub slow_call: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTrip {
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawOpen {
    pub duration: Option<String>,
    pub max_duration: Option<String>,
    pub backoff: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawHalfOpen {
    pub probes: Option<u32>,
    pub probe_timeout: Option<String>,
    pub probe: Option<RawActiveProbe>,
}

/// `half_open.probe`: the breaker probes the upstream itself instead of with clients.
#[derive(Debug, Default, Deserialize, Clone)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawActiveProbe {
    pub path: Option<String>,
    pub timeout: Option<String>,
    pub expect: Option<Vec<serde_json::Value>>,
}

/// An active half-open probe: `GET path` to the upstream's cluster, sent by the breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveProbe {
    pub path: String,
    pub timeout_ns: u64,
    /// Inclusive status ranges that count as healthy.
    pub expect: Vec<(u16, u16)>,
}

/// The `fallback` local reply's JSON shape (shared with the rate limiter's denial).
pub type RawFallback = edgewise_support::config::RawLocalReply;

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub failure: Option<RawFailure>,
    pub trip: Option<RawTrip>,
    pub open: Option<RawOpen>,
    pub half_open: Option<RawHalfOpen>,
    pub max_in_flight: Option<u32>,
}

/// What names one breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamKey {
    /// Envoy's route name (`xds.route_name`).
    Route,
    /// The request's `:authority`, without port, lowercased.
    Host,
    /// A request header's value (e.g. the cluster header the weighted router sets).
    Header(String),
}

/// The parameters one breaker runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Inclusive status ranges that count as failures.
    pub failure_statuses: Vec<(u16, u16)>,
    pub local_failures: bool,
    pub slow_call_ns: Option<u64>,
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub min_requests: u32,
    pub window_ns: u64,
    pub open_ns: u64,
    pub max_open_ns: u64,
    pub backoff: f64,
    pub probes: u32,
    /// Half-open gives its probes this long to succeed; past it the breaker opens again (a
    /// probe that hangs, or a client holding it, cannot keep half-open for ever).
    pub probe_timeout_ns: u64,
    /// Half-open probes sent by the breaker itself (None: the next client requests probe).
    pub active_probe: Option<ActiveProbe>,
    /// The bulkhead: at most this many requests in flight to the upstream across every
    /// worker (None: unbounded). Requests past it get the fallback without counting as
    /// failures.
    pub max_in_flight: Option<u32>,
}

impl Params {
    /// Whether `code` is in `failure.statuses`.
    pub fn counts_status(&self, code: u16) -> bool {
        self.failure_statuses
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&code))
    }
}

/// The local reply for a request the breaker rejects.
pub type Fallback = edgewise_support::config::LocalReply;

#[derive(Clone, Debug)]
pub struct Config {
    pub upstream: UpstreamKey,
    pub defaults: Params,
    pub overrides: HashMap<String, Params>,
    pub fallback: Fallback,
    /// Shared-data slots for breakers (`edgewise.cb.0` .. `edgewise.cb.<n-1>`).
    pub slots: u64,
    /// Identities with their own stats when clients choose identities (`host`,
    /// `header:NAME`): `stats_upstreams` and the `overrides` names. Others share the
    /// `unlisted` stats, so a spray of identities never grows Envoy's stats.
    pub stats_upstreams: Vec<String>,
    /// Prepended (with a dot) to every shared-data key, so that two instances of this
    /// filter in one `vm_id` never share state; "" (the default): keys as they are.
    pub key_prefix: String,
    /// How long per-request counters may wait in the VM before reaching Envoy (zero:
    /// immediately); see `Metric::counter_flushed_every`.
    pub metrics_flush: std::time::Duration,
    pub control: Option<Control>,
}

/// The stats name the identities without their own stats share.
pub const UNLISTED: &str = "unlisted";

impl Config {
    pub fn params(&self, identity: &str) -> &Params {
        self.overrides.get(identity).unwrap_or(&self.defaults)
    }

    /// Whether `identity` has its own stats: every route (route names come from Envoy's
    /// configuration, a bounded set); for client-chosen identities only the listed ones.
    pub fn own_stats(&self, identity: &str) -> bool {
        self.upstream == UpstreamKey::Route || self.stats_upstreams.iter().any(|n| n == identity)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_config(bytes)?;
        Config::compile(&raw)
    }

    pub fn compile(raw: &RawConfig) -> Result<Config, ConfigError> {
        let upstream = match raw.upstream.as_deref().unwrap_or("route") {
            "route" => UpstreamKey::Route,
            "host" => UpstreamKey::Host,
            other => match other.strip_prefix("header:") {
                Some(name) if !name.is_empty() => UpstreamKey::Header(name.to_ascii_lowercase()),
                _ => {
                    return Err(err(
                        "upstream",
                        format!("{other:?} is not an upstream identity"),
                        "use route, host or header:NAME",
                    ))
                }
            },
        };
        let empty = RawOverride::default();
        let base = RawOverride {
            failure: raw.failure.clone(),
            trip: raw.trip.clone(),
            open: raw.open.clone(),
            half_open: raw.half_open.clone(),
            max_in_flight: raw.max_in_flight,
        };
        let defaults = compile_params("", &base, &empty)?;
        let mut overrides = HashMap::new();
        for (identity, over) in raw.overrides.iter().flatten() {
            if identity.is_empty() {
                return Err(err(
                    "overrides",
                    "has an empty upstream name",
                    "name the upstream as the `upstream` mode identifies it",
                ));
            }
            overrides.insert(
                identity.clone(),
                compile_params(&format!("overrides.{identity}."), over, &base)?,
            );
        }
        let probing = std::iter::once(&defaults)
            .chain(overrides.values())
            .any(|p| p.active_probe.is_some());
        if probing && !matches!(upstream, UpstreamKey::Header(_)) {
            return Err(err(
                "half_open.probe",
                "needs upstream identities that are Envoy cluster names",
                "use \"upstream\": \"header:x-route-cluster\" (the router's cluster header), or drop half_open.probe",
            ));
        }
        let fallback = edgewise_support::config::local_reply(
            "fallback",
            raw.fallback.as_ref(),
            503,
            "upstream temporarily unavailable\n",
        )?;
        let slots = raw.max_upstreams.unwrap_or(256);
        if !(1..=65_536).contains(&slots) {
            return Err(err(
                "max_upstreams",
                format!("{slots} is out of range"),
                "use 1 to 65536 (default 256)",
            ));
        }
        let mut stats_upstreams: Vec<String> = overrides.keys().cloned().collect();
        for (i, name) in raw.stats_upstreams.iter().flatten().enumerate() {
            if name.is_empty() || name.len() > 128 {
                return Err(err(
                    format!("stats_upstreams[{i}]"),
                    format!("{name:?} is not an upstream name"),
                    "name the upstream as the `upstream` mode identifies it (1 to 128 characters)",
                ));
            }
            if !stats_upstreams.contains(name) {
                stats_upstreams.push(name.clone());
            }
        }
        if stats_upstreams.iter().any(|n| n == UNLISTED) {
            return Err(err(
                "stats_upstreams",
                format!("{UNLISTED:?} names the shared stats of unlisted upstreams"),
                "rename that upstream",
            ));
        }
        let key_prefix = edgewise_support::config::key_prefix(raw.key_prefix.as_deref())?;
        let metrics_flush =
            edgewise_support::duration::metrics_flush(raw.metrics_flush.as_deref())?;
        let control = match &raw.control {
            None => None,
            Some(c) => {
                if c.cluster.is_empty() {
                    return Err(err(
                        "control.cluster",
                        "is empty",
                        "name the Envoy cluster of the control service",
                    ));
                }
                if c.token.len() < 16 {
                    return Err(err(
                        "control.token",
                        "is shorter than 16 characters",
                        "use the control service's --control-token",
                    ));
                }
                let path = c.path.clone().unwrap_or_else(|| "/v1/breakers".into());
                if !path.starts_with('/') || path.contains([' ', '?']) {
                    return Err(err(
                        "control.path",
                        format!("{path:?} is not a path"),
                        "use \"/v1/breakers\" (the default)",
                    ));
                }
                let poll = match c.poll.as_deref() {
                    Some(text) => parse_duration("control.poll", text)?,
                    None => std::time::Duration::from_secs(1),
                };
                if poll.as_millis() < 100 || poll.as_secs() > 60 {
                    return Err(err(
                        "control.poll",
                        format!("{poll:?} is out of range"),
                        "use \"100ms\" to \"60s\" (default \"1s\")",
                    ));
                }
                let timeout = match c.timeout.as_deref() {
                    Some(text) => parse_duration("control.timeout", text)?,
                    None => std::time::Duration::from_secs(1),
                };
                if timeout.is_zero() || timeout.as_secs() > 30 {
                    return Err(err(
                        "control.timeout",
                        format!("{timeout:?} is out of range"),
                        "use \"1ms\" to \"30s\" (default \"1s\")",
                    ));
                }
                Some(Control {
                    cluster: c.cluster.clone(),
                    token: c.token.clone(),
                    path,
                    poll_ms: poll.as_millis() as u64,
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        };
        Ok(Config {
            control,
            key_prefix,
            metrics_flush,
            upstream,
            defaults,
            overrides,
            fallback,
            slots,
            stats_upstreams,
        })
    }
}

fn rate(field: String, value: Option<f64>) -> Result<Option<f64>, ConfigError> {
    match value {
        None => Ok(None),
        Some(r) if r > 0.0 && r <= 1.0 => Ok(Some(r)),
        Some(r) => Err(err(
            field,
            format!("{r} is outside (0, 1]"),
            "use a fraction like 0.5; omit it to disable this trigger",
        )),
    }
}

/// Compiles one parameter set: fields from `own`, falling back to `base`, then defaults.
fn compile_params(
    prefix: &str,
    own: &RawOverride,
    base: &RawOverride,
) -> Result<Params, ConfigError> {
    let failure = own
        .failure
        .clone()
        .or_else(|| base.failure.clone())
        .unwrap_or_default();
    let base_failure = base.failure.clone().unwrap_or_default();
    let trip = own.trip.clone().unwrap_or_default();
    let base_trip = base.trip.clone().unwrap_or_default();
    let open = own.open.clone().unwrap_or_default();
    let base_open = base.open.clone().unwrap_or_default();
    let half = own.half_open.clone().unwrap_or_default();
    let base_half = base.half_open.clone().unwrap_or_default();

    let statuses = failure.statuses.clone().or(base_failure.statuses.clone());
    let failure_statuses = match statuses {
        Some(list) => parse_statuses(&format!("{prefix}failure.statuses"), &list)?,
        None => vec![(500, 599)],
    };
    let slow_call_ns = match failure
        .slow_call
        .as_ref()
        .or(base_failure.slow_call.as_ref())
    {
        Some(text) => {
            let d = parse_duration(&format!("{prefix}failure.slow_call"), text)?;
            if d.is_zero() {
                return Err(err(
                    format!("{prefix}failure.slow_call"),
                    "0 would make every call slow",
                    "use a positive duration, or omit it",
                ));
            }
            Some(d.as_nanos() as u64)
        }
        None => None,
    };
    let consecutive_failures = match trip.consecutive_failures.or(base_trip.consecutive_failures) {
        Some(0) => {
            return Err(err(
                format!("{prefix}trip.consecutive_failures"),
                "0 would trip on nothing",
                "use 1 or more; omit it to disable this trigger",
            ))
        }
        Some(n) => Some(n),
        None => Some(5),
    };
    let failure_rate = rate(
        format!("{prefix}trip.failure_rate"),
        trip.failure_rate.or(base_trip.failure_rate),
    )?;
    let slow_call_rate = rate(
        format!("{prefix}trip.slow_call_rate"),
        trip.slow_call_rate.or(base_trip.slow_call_rate),
    )?;
    if slow_call_rate.is_some() && slow_call_ns.is_none() {
        return Err(err(
            format!("{prefix}trip.slow_call_rate"),
            "needs failure.slow_call to know what is slow",
            "set failure.slow_call, e.g. \"2s\"",
        ));
    }
    let min_requests = trip.min_requests.or(base_trip.min_requests).unwrap_or(20);
    if min_requests == 0 {
        return Err(err(
            format!("{prefix}trip.min_requests"),
            "0 would trip on a single call",
            "use 1 or more (default 20)",
        ));
    }
    let window = match trip.window.as_ref().or(base_trip.window.as_ref()) {
        Some(text) => parse_duration(&format!("{prefix}trip.window"), text)?,
        None => Duration::from_secs(10),
    };
    if window < Duration::from_millis(100) || window > Duration::from_secs(3600) {
        return Err(err(
            format!("{prefix}trip.window"),
            format!("{window:?} is out of range"),
            "use \"100ms\" to \"1h\" (default \"10s\")",
        ));
    }
    let duration = match open.duration.as_ref().or(base_open.duration.as_ref()) {
        Some(text) => parse_duration(&format!("{prefix}open.duration"), text)?,
        None => Duration::from_secs(5),
    };
    if duration.is_zero() {
        return Err(err(
            format!("{prefix}open.duration"),
            "0 would never reject",
            "use a positive duration (default \"5s\")",
        ));
    }
    let max_duration = match open
        .max_duration
        .as_ref()
        .or(base_open.max_duration.as_ref())
    {
        Some(text) => parse_duration(&format!("{prefix}open.max_duration"), text)?,
        None => duration.max(Duration::from_secs(60)),
    };
    if max_duration < duration {
        return Err(err(
            format!("{prefix}open.max_duration"),
            format!("{max_duration:?} is less than open.duration {duration:?}"),
            "make max_duration at least duration",
        ));
    }
    let backoff = open.backoff.or(base_open.backoff).unwrap_or(2.0);
    if !(1.0..=100.0).contains(&backoff) || backoff.is_nan() {
        return Err(err(
            format!("{prefix}open.backoff"),
            format!("{backoff} is out of range"),
            "use 1.0 (no growth) to 100 (default 2.0)",
        ));
    }
    let probes = half.probes.or(base_half.probes).unwrap_or(3);
    if probes == 0 || probes > 1000 {
        return Err(err(
            format!("{prefix}half_open.probes"),
            format!("{probes} is out of range"),
            "use 1 to 1000 (default 3)",
        ));
    }
    let probe_timeout = match half
        .probe_timeout
        .as_deref()
        .or(base_half.probe_timeout.as_deref())
    {
        Some(text) => parse_duration(&format!("{prefix}half_open.probe_timeout"), text)?,
        None => std::time::Duration::from_secs(10),
    };
    if probe_timeout.is_zero() || probe_timeout.as_secs() > 600 {
        return Err(err(
            format!("{prefix}half_open.probe_timeout"),
            format!("{probe_timeout:?} is out of range"),
            "use \"1ms\" to \"10m\" (default \"10s\")",
        ));
    }
    let active_probe = match half.probe.as_ref().or(base_half.probe.as_ref()) {
        None => None,
        Some(raw) => Some(compile_active_probe(
            &format!("{prefix}half_open.probe"),
            raw,
        )?),
    };
    let max_in_flight = own.max_in_flight.or(base.max_in_flight);
    if let Some(n) = max_in_flight {
        if !(1..=1_000_000).contains(&n) {
            return Err(err(
                format!("{prefix}max_in_flight"),
                format!("{n} is out of range"),
                "use 1 to 1000000, or omit it for no bulkhead",
            ));
        }
    }
    Ok(Params {
        failure_statuses,
        local_failures: failure
            .local_failures
            .or(base_failure.local_failures)
            .unwrap_or(true),
        slow_call_ns,
        consecutive_failures,
        failure_rate,
        slow_call_rate,
        min_requests,
        window_ns: window.as_nanos() as u64,
        open_ns: duration.as_nanos() as u64,
        max_open_ns: max_duration.as_nanos() as u64,
        backoff,
        probes,
        probe_timeout_ns: probe_timeout.as_nanos() as u64,
        active_probe,
        max_in_flight,
    })
}

fn compile_active_probe(field: &str, raw: &RawActiveProbe) -> Result<ActiveProbe, ConfigError> {
    let path = raw.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.len() > 1024 || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(err(
            format!("{field}.path"),
            format!("{path:?} is not a request path"),
            "use an absolute path such as \"/health\" (no spaces, at most 1024 bytes)",
        ));
    }
    let timeout = match raw.timeout.as_deref() {
        Some(text) => parse_duration(&format!("{field}.timeout"), text)?,
        None => std::time::Duration::from_secs(1),
    };
    if timeout.is_zero() || timeout.as_secs() > 60 {
        return Err(err(
            format!("{field}.timeout"),
            format!("{timeout:?} is out of range"),
            "use \"1ms\" to \"60s\" (default \"1s\")",
        ));
    }
    let expect = match &raw.expect {
        Some(values) if values.is_empty() => {
            return Err(err(
                format!("{field}.expect"),
                "is empty, so no answer would close the breaker",
                "list the healthy statuses, e.g. [\"2xx\"] (the default)",
            ))
        }
        Some(values) => parse_statuses(&format!("{field}.expect"), values)?,
        None => vec![(200, 299)],
    };
    Ok(ActiveProbe {
        path,
        timeout_ns: timeout.as_nanos() as u64,
        expect,
    })
}

impl ActiveProbe {
    /// Whether a probe's answer shows the upstream healthy.
    pub fn healthy(&self, status: u16) -> bool {
        self.expect
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_codes_classes_and_ranges() {
        let v: Vec<serde_json::Value> =
            serde_json::from_str(r#"["5xx", 429, "500-504", " 418 "]"#).unwrap();
        assert_eq!(
            parse_statuses("s", &v).unwrap(),
            vec![(500, 599), (429, 429), (500, 504), (418, 418)]
        );
        for bad in [
            r#"["6xx"]"#,
            r#"["504-500"]"#,
            r#"["abc"]"#,
            r#"[99]"#,
            r#"[true]"#,
            "[]",
        ] {
            let v: Vec<serde_json::Value> = serde_json::from_str(bad).unwrap();
            assert!(parse_statuses("s", &v).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_inherit_from_the_top_level() {
        let c = Config::from_json(br#"{"trip":{"consecutive_failures":7,"min_requests":3},"overrides":{"payments":{"trip":{"consecutive_failures":2}}}}"#).unwrap();
        assert_eq!(c.params("other").consecutive_failures, Some(7));
        let p = c.params("payments");
        assert_eq!((p.consecutive_failures, p.min_requests), (Some(2), 3));
    }
}
