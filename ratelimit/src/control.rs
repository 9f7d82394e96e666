//! The control API for a fleet's caches: `POST /v1/purge` appends purges to a log in Redis
//! (a stream of bounded length); every cache polls `GET /v1/purges?after=<id>` and applies
//! what it has not seen. Authenticated with `Authorization: Bearer <token>` (constant-time
//! comparison); off without a token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

/// The stream purges are logged in.
pub const STREAM: &str = "edgewise:purges";
/// Entries kept; older ones are trimmed (a cache whose cursor falls behind them sees a gap
/// and soft-purges everything, so no purge is ever missed).
pub const MAX_LEN: usize = 10_000;
/// Targets one purge request may name, and the longest value.
pub const MAX_TARGETS: usize = 32;
pub const MAX_VALUE: usize = 256;
/// Entries one poll returns at most.
pub const MAX_POLL: usize = 500;

pub struct Control {
    pub redis: crate::store::Store,
    pub token: Option<String>,
    pub purges: AtomicU64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    pub prefix: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub soft: bool,
}

/// One entry of the stream as XRANGE returns it: its id and its field/value pairs.
type LogEntry = (String, Vec<(String, String)>);

/// One target as logged: (kind, host, value).
pub type Target = (&'static str, String, String);

impl PurgeRequest {
    /// The targets to log, or why the request is refused.
    pub fn targets(&self) -> Result<Vec<Target>, String> {
        let mut targets: Vec<Target> = Vec::new();
        let long = |v: &str| v.len() > MAX_VALUE || v.is_empty();
        for tag in &self.tags {
            if long(tag) || tag.contains([' ', ',']) {
                return Err(format!(
                    "tag {tag:?}: 1 to {MAX_VALUE} bytes, no spaces or commas"
                ));
            }
            targets.push(("tag", String::new(), tag.clone()));
        }
        for url in &self.urls {
            let Some((host, path)) = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .and_then(|rest| rest.find('/').map(|i| rest.split_at(i)))
            else {
                return Err(format!(
                    "url {url:?}: give an absolute URL, e.g. http://shop.example.com/p/1"
                ));
            };
            if long(url) {
                return Err(format!("url {url:?}: at most {MAX_VALUE} bytes"));
            }
            targets.push(("url", host.to_ascii_lowercase(), path.to_string()));
        }
        match (&self.prefix, &self.host) {
            (Some(prefix), Some(host))
                if !long(prefix) && prefix.starts_with('/') && !long(host) =>
            {
                targets.push(("prefix", host.to_ascii_lowercase(), prefix.clone()))
            }
            (Some(_), _) => {
                return Err("a prefix needs a host and starts with /, at most 256 bytes".into())
            }
            (None, Some(host)) if !long(host) => {
                targets.push(("host", host.to_ascii_lowercase(), String::new()))
            }
            (None, Some(_)) => return Err("host: 1 to 256 bytes".into()),
            (None, None) => {}
        }
        if self.all {
            targets.push(("all", String::new(), String::new()));
        }
        if targets.is_empty() {
            return Err("name tags, urls, a prefix with its host, a host, or all".into());
        }
        if targets.len() > MAX_TARGETS {
            return Err(format!("at most {MAX_TARGETS} targets per request"));
        }
        Ok(targets)
    }
}

/// Whether the request carries the control token (constant-time comparison).
pub fn authorized(control: &Control, headers: &HeaderMap) -> bool {
    let Some(token) = control.token.as_deref() else {
        return false;
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The hash of forced breaker states: upstream → "state by".
pub const BREAKERS: &str = "edgewise:breakers";
/// Upstreams that may be forced at once.
pub const MAX_FORCED: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerRequest {
    pub upstream: String,
    pub state: String,
    #[serde(default)]
    pub by: String,
}

impl BreakerRequest {
    /// (upstream, state, by) to record, or why not.
    pub fn checked(&self) -> Result<(String, &'static str, String), String> {
        let name_ok = |v: &str| {
            !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        };
        if !name_ok(&self.upstream) {
            return Err("upstream: 1 to 128 visible characters (the breaker's identity)".into());
        }
        let state = match self.state.as_str() {
            "open" => "open",
            "closed" => "closed",
            "auto" => "auto",
            other => return Err(format!("state {other:?}: use open, closed or auto")),
        };
        let by = if self.by.is_empty() {
            "operator".to_string()
        } else {
            self.by.clone()
        };
        if !name_ok(&by) {
            return Err("by: 1 to 128 visible characters (who sets it)".into());
        }
        Ok((self.upstream.clone(), state, by))
    }
}

/// `POST /v1/breaker`: forces an upstream's breaker open or closed on every Envoy, or
/// gives it back to its automaton (`auto`).
pub async fn breaker(
    control: Arc<Control>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let request: BreakerRequest = match admitted_json(&control, &headers, &body) {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let (upstream, state, by) = match request.checked() {
        Ok(checked) => checked,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let mut redis = control.redis.clone();
    let result: Result<(), redis::RedisError> = if state == "auto" {
        redis::cmd("HDEL")
            .arg(BREAKERS)
            .arg(&upstream)
            .query_async(&mut redis)
            .await
    } else {
        let count: Result<usize, _> = redis::cmd("HLEN")
            .arg(BREAKERS)
            .query_async(&mut redis)
            .await;
        let exists: Result<bool, _> = redis::cmd("HEXISTS")
            .arg(BREAKERS)
            .arg(&upstream)
            .query_async(&mut redis)
            .await;
        match (count, exists) {
            (Ok(n), Ok(false)) if n >= MAX_FORCED => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("at most {MAX_FORCED} upstreams forced at once\n"),
                )
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
            _ => {
                redis::cmd("HSET")
                    .arg(BREAKERS)
                    .arg(&upstream)
                    .arg(format!("{state} {by}"))
                    .query_async(&mut redis)
                    .await
            }
        }
    };
    match result {
        Ok(()) => (
            StatusCode::OK,
            serde_json::json!({ "upstream": upstream, "state": state, "by": by }).to_string(),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")),
    }
}

/// `GET /v1/breakers`: every forced breaker, `{"breakers": [{"upstream", "state", "by"}]}`.
pub async fn breakers(control: Arc<Control>, headers: HeaderMap) -> (StatusCode, String) {
    if let Err(refused) = admitted(&control, &headers) {
        return refused;
    }
    let mut redis = control.redis.clone();
    let all: Result<Vec<(String, String)>, _> = redis::cmd("HGETALL")
        .arg(BREAKERS)
        .query_async(&mut redis)
        .await;
    match all {
        Ok(pairs) => {
            let list: Vec<serde_json::Value> = pairs
                .iter()
                .map(|(upstream, value)| {
                    let (state, by) = value.split_once(' ').unwrap_or((value.as_str(), ""));
                    serde_json::json!({ "upstream": upstream, "state": state, "by": by })
                })
                .collect();
            (
                StatusCode::OK,
                serde_json::json!({ "breakers": list }).to_string(),
            )
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")),
    }
}

/// Why a call to the control API is refused: the API is off (no token configured: 404) or
/// the call lacks the token (401).
pub fn admitted(control: &Control, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    if control.token.is_none() {
        return Err((
            StatusCode::NOT_FOUND,
            "the control API is off (no --control-token)\n".into(),
        ));
    }
    if !authorized(control, headers) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "Authorization: Bearer <control token> required\n".into(),
        ));
    }
    Ok(())
}

/// A control call's JSON body, once the call is admitted (`admitted`); 400 with serde's
/// message (naming the field) when it does not parse.
fn admitted_json<T: serde::de::DeserializeOwned>(
    control: &Control,
    headers: &HeaderMap,
    body: &str,
) -> Result<T, (StatusCode, String)> {
    admitted(control, headers)?;
    serde_json::from_str(body).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))
}

/// A stream id as (milliseconds, sequence), for ordering; "0-0" for none.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// `POST /v1/purge`: logs the targets; `{"id": "<last entry id>", "targets": n}`.
pub async fn purge(
    control: Arc<Control>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let request: PurgeRequest = match admitted_json(&control, &headers, &body) {
        Ok(r) => r,
        Err(refused) => return refused,
    };
    let targets = match request.targets() {
        Ok(t) => t,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let mut redis = control.redis.clone();
    let mut last = String::new();
    for (kind, host, value) in &targets {
        let added: Result<String, _> = redis::cmd("XADD")
            .arg(STREAM)
            .arg("MAXLEN")
            .arg(MAX_LEN)
            .arg("*")
            .arg("kind")
            .arg(*kind)
            .arg("host")
            .arg(host)
            .arg("value")
            .arg(value)
            .arg("soft")
            .arg(if request.soft { "1" } else { "0" })
            .query_async(&mut redis)
            .await;
        match added {
            Ok(id) => last = id,
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")),
        }
    }
    control
        .purges
        .fetch_add(targets.len() as u64, Ordering::Relaxed);
    (
        StatusCode::OK,
        serde_json::json!({ "id": last, "targets": targets.len() }).to_string(),
    )
}

/// `GET /v1/purges?after=<id>`: the log after `id` (at most `MAX_POLL` entries), with the
/// stream's last id and the largest id trimmed from it (a cursor below that missed entries).
/// `after` empty: nothing, only the ids (a cache starting empty begins from the end).
pub async fn purges(
    control: Arc<Control>,
    headers: HeaderMap,
    after: Option<String>,
) -> (StatusCode, String) {
    if let Err(refused) = admitted(&control, &headers) {
        return refused;
    }
    let after = after.unwrap_or_default();
    if !after.is_empty() && parse_id(&after).is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "after: a stream id such as 1733300000000-0\n".into(),
        );
    }
    let mut redis = control.redis.clone();
    let info: Result<redis::Value, _> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(STREAM)
        .query_async(&mut redis)
        .await;
    let (last, trimmed) = match info {
        Ok(value) => (
            info_field(&value, "last-generated-id"),
            info_field(&value, "max-deleted-entry-id"),
        ),
        // No stream yet: nothing was ever purged.
        Err(e) if e.to_string().contains("no such key") => ("0-0".to_string(), "0-0".to_string()),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")),
    };
    let mut entries = Vec::new();
    if !after.is_empty() {
        let range: Result<Vec<LogEntry>, _> = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(MAX_POLL)
            .query_async(&mut redis)
            .await;
        match range {
            Ok(items) => {
                for (id, fields) in items {
                    let field = |name: &str| {
                        fields
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    entries.push(serde_json::json!({
                        "id": id,
                        "kind": field("kind"),
                        "host": field("host"),
                        "value": field("value"),
                        "soft": field("soft") == "1",
                    }));
                }
            }
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {e}\n")),
        }
    }
    (
        StatusCode::OK,
        serde_json::json!({ "last": last, "trimmed": trimmed, "entries": entries }).to_string(),
    )
}

/// A string field of XINFO STREAM's reply (a flat list of names and values); "0-0" if absent.
fn info_field(value: &redis::Value, name: &str) -> String {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    if let redis::Value::Array(items) | redis::Value::Set(items) = value {
        for pair in items.chunks(2) {
            if let [k, v] = pair {
                if text(k).as_deref() == Some(name) {
                    return text(v).unwrap_or_else(|| "0-0".into());
                }
            }
        }
    }
    if let redis::Value::Map(pairs) = value {
        for (k, v) in pairs {
            if text(k).as_deref() == Some(name) {
                return text(v).unwrap_or_else(|| "0-0".into());
            }
        }
    }
    "0-0".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> PurgeRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn purge_requests_name_bounded_targets() {
        assert_eq!(
            request(r#"{"tags":["a","b"],"soft":true}"#)
                .targets()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            request(r#"{"urls":["http://Shop.example.com/p/1?x=1"]}"#)
                .targets()
                .unwrap(),
            vec![("url", "shop.example.com".into(), "/p/1?x=1".into())]
        );
        assert_eq!(
            request(r#"{"prefix":"/p/","host":"shop"}"#)
                .targets()
                .unwrap(),
            vec![("prefix", "shop".into(), "/p/".into())]
        );
        assert_eq!(request(r#"{"all":true}"#).targets().unwrap()[0].0, "all");
        for bad in [
            r#"{}"#,
            r#"{"tags":["a b"]}"#,
            r#"{"tags":[""]}"#,
            r#"{"urls":["/p/1"]}"#,
            r#"{"prefix":"/p/"}"#,
            r#"{"prefix":"p","host":"h"}"#,
        ] {
            assert!(request(bad).targets().is_err(), "{bad}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        let json = serde_json::json!({ "tags": many }).to_string();
        assert!(request(&json).targets().is_err());
        assert!(serde_json::from_str::<PurgeRequest>(r#"{"tag":["a"]}"#).is_err());
    }

    #[test]
    fn breaker_requests_are_checked() {
        let r = |json: &str| {
            serde_json::from_str::<BreakerRequest>(json)
                .unwrap()
                .checked()
        };
        assert_eq!(
            r(r#"{"upstream":"api-v2","state":"open","by":"alice"}"#).unwrap(),
            ("api-v2".into(), "open", "alice".into())
        );
        assert_eq!(
            r(r#"{"upstream":"api-v2","state":"auto"}"#).unwrap().2,
            "operator"
        );
        for bad in [
            r#"{"upstream":"","state":"open"}"#,
            r#"{"upstream":"a b","state":"open"}"#,
            r#"{"upstream":"api","state":"half-open"}"#,
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_ids_order_numerically() {
        assert!(parse_id("1733300000000-10") > parse_id("1733300000000-9"));
        assert!(parse_id("9-0") < parse_id("10-0"));
        assert_eq!(parse_id("nope"), None);
    }
}
