//! The composed module's configuration: one optional section per filter, each exactly the
//! JSON that filter takes on its own, run in a fixed order.

use edgewise_support::config::{parse_config, ConfigError};
use serde::Deserialize;

/// The filters a composed module can hold, in the order a request meets them.
///
/// The router runs before the cache, and the cache keys on the cluster the router chose (its
/// `cluster_header`, added to the cache's `key.headers`): a response stored from one target
/// (the canary a client forced with an override, or a sticky client's target) is only ever
/// served to requests routed to that same target.
pub const ORDER: [&str; 4] = [
    "rate_limit",
    "weighted_router",
    "response_cache",
    "circuit_breaker",
];

/// The router's default `cluster_header` (weighted_router's configuration).
const DEFAULT_CLUSTER_HEADER: &str = "x-route-cluster";

/// Adds the router's cluster header to the cache section's `key.headers` (once).
fn key_cache_on_route(cache: &mut serde_json::Value, router: &serde_json::Value) {
    let header = router
        .get("cluster_header")
        .and_then(|h| h.as_str())
        .unwrap_or(DEFAULT_CLUSTER_HEADER)
        .to_ascii_lowercase();
    let Some(cache) = cache.as_object_mut() else {
        return;
    };
    let key = cache.entry("key").or_insert_with(|| serde_json::json!({}));
    let Some(key) = key.as_object_mut() else {
        return; // not an object: the cache refuses it, naming the field
    };
    let headers = key
        .entry("headers")
        .or_insert_with(|| serde_json::json!([]));
    if let Some(headers) = headers.as_array_mut() {
        let present = headers
            .iter()
            .any(|h| h.as_str().is_some_and(|h| h.eq_ignore_ascii_case(&header)));
        if !present {
            headers.push(serde_json::Value::String(header));
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    rate_limit: Option<serde_json::Value>,
    response_cache: Option<serde_json::Value>,
    weighted_router: Option<serde_json::Value>,
    circuit_breaker: Option<serde_json::Value>,
}

/// Each present filter (by its name in `ORDER`) with its own configuration's JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct Chain {
    pub sections: Vec<(&'static str, Vec<u8>)>,
}

impl Chain {
    pub fn from_json(bytes: &[u8]) -> Result<Chain, ConfigError> {
        let raw: RawChain = parse_config(bytes)?;
        let mut values = [
            raw.rate_limit,
            raw.weighted_router,
            raw.response_cache,
            raw.circuit_breaker,
        ];
        if let [_, Some(router), Some(cache), _] = &mut values {
            key_cache_on_route(cache, router);
        }
        // The router skips targets whose breaker is open by reading the breaker's keys: both
        // must look under the same key_prefix or failover silently stops.
        let prefix = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .and_then(|v| v.get("key_prefix"))
                .and_then(|p| p.as_str())
                .unwrap_or("")
                .to_string()
        };
        if let (Some(_), Some(_)) = (&values[1], &values[3]) {
            let (router, breaker) = (prefix(&values[1]), prefix(&values[3]));
            if router != breaker {
                return Err(ConfigError::new(
                    "weighted_router.key_prefix",
                    format!("{router:?} differs from circuit_breaker.key_prefix {breaker:?}"),
                    "give the router and the breaker the same key_prefix, so the router sees the breaker's state",
                ));
            }
        }
        let mut sections = Vec::new();
        for (name, value) in ORDER.iter().zip(values) {
            let Some(value) = value else { continue };
            if !value.is_object() {
                return Err(ConfigError::new(
                    *name,
                    "must be an object: that filter's own configuration",
                    format!("write \"{name}\": {{ ... }} as you would configure {name}.wasm"),
                ));
            }
            sections.push((*name, value.to_string().into_bytes()));
        }
        if sections.is_empty() {
            return Err(ConfigError::new(
                "<json>",
                "names no filter",
                "add at least one of \"rate_limit\", \"response_cache\", \"weighted_router\", \"circuit_breaker\"",
            ));
        }
        Ok(Chain { sections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_come_in_the_edge_order() {
        let chain = Chain::from_json(
            br#"{"circuit_breaker":{"trip":{}},"rate_limit":{"rules":[]},"weighted_router":{}}"#,
        )
        .unwrap();
        let names: Vec<&str> = chain.sections.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["rate_limit", "weighted_router", "circuit_breaker"]);
        assert_eq!(chain.sections[0].1, br#"{"rules":[]}"#);
    }

    #[test]
    fn the_cache_keys_on_the_routers_choice() {
        let chain = Chain::from_json(
            br#"{"response_cache":{"key":{"headers":["x-device"]}},"weighted_router":{"routes":[]}}"#,
        )
        .unwrap();
        let names: Vec<&str> = chain.sections.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["weighted_router", "response_cache"]);
        assert_eq!(
            chain.sections[1].1,
            br#"{"key":{"headers":["x-device","x-route-cluster"]}}"#
        );
        let chain = Chain::from_json(
            br#"{"response_cache":{},"weighted_router":{"cluster_header":"X-Pick"}}"#,
        )
        .unwrap();
        assert_eq!(chain.sections[1].1, br#"{"key":{"headers":["x-pick"]}}"#);
        // Without a router the cache section is passed on as written.
        let chain = Chain::from_json(br#"{"response_cache":{}}"#).unwrap();
        assert_eq!(chain.sections[0].1, br#"{}"#);
    }

    #[test]
    fn router_and_breaker_must_share_a_key_prefix() {
        let e = Chain::from_json(
            br#"{"weighted_router":{"key_prefix":"a"},"circuit_breaker":{"key_prefix":"b"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "weighted_router.key_prefix");
        assert!(Chain::from_json(
            br#"{"weighted_router":{"key_prefix":"a"},"circuit_breaker":{"key_prefix":"a"}}"#
        )
        .is_ok());
        assert!(Chain::from_json(br#"{"weighted_router":{"key_prefix":"a"}}"#).is_ok());
    }

    #[test]
    fn bad_chains_name_the_field() {
        for (json, field) in [
            (r#"{}"#, "<json>"),
            (r#"{"rate_limiter":{}}"#, "rate_limiter"),
            (r#"{"response_cache":true}"#, "response_cache"),
        ] {
            let error = Chain::from_json(json.as_bytes()).unwrap_err();
            assert!(error.to_string().contains(field), "{json}: {error}");
        }
    }
}
