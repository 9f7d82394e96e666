//! The service's limits in envoyproxy/ratelimit's configuration format: per domain, a tree of
//! descriptors (`key`, optional `value`), each node optionally with a
//! `rate_limit: {unit, requests_per_unit}`; and the lookup of a request's descriptor in it.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: String,
    /// Whether callers may give a descriptor its own limit (`RateLimitOverride`). Off by
    /// default: an override from a caller this domain does not trust would set any limit.
    overrides: Option<bool>,
    descriptors: Vec<RawDescriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: String,
    value: Option<String>,
    rate_limit: Option<RawLimit>,
    descriptors: Option<Vec<RawDescriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    unit: String,
    requests_per_unit: u64,
    algorithm: Option<String>,
    /// For calendar units: the UTC offset their days start in ("+02:00"; default "Z").
    utc_offset: Option<String>,
}

/// A limit: `requests_per_unit` per `unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub requests_per_unit: u64,
    pub unit: Unit,
    pub algorithm: Algorithm,
}

/// How a limit counts (the local limiter's algorithms of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// GCRA: `requests_per_unit` tokens refilling evenly over the unit, burst = limit.
    TokenBucket,
    /// At most `requests_per_unit` by the two-window estimate.
    SlidingWindow,
    /// A quota: at most `requests_per_unit` per calendar period (the unit's), a fixed
    /// window that resets at the period's local end.
    Calendar(edgewise_support::calendar::Period),
}

/// RFC-free units, as envoyproxy/ratelimit and Envoy's `RateLimitResponse.RateLimit.Unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Unit {
    pub fn parse(text: &str) -> Option<Unit> {
        match text.to_ascii_lowercase().as_str() {
            "second" => Some(Unit::Second),
            "minute" => Some(Unit::Minute),
            "hour" => Some(Unit::Hour),
            "day" => Some(Unit::Day),
            _ => None,
        }
    }

    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
            // Nominal lengths: calendar quotas count by their own period ends.
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
        }
    }
}

/// One node of a domain's descriptor tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub key: String,
    /// None: matches any value of `key` (and each value is counted on its own).
    pub value: Option<String>,
    pub limit: Option<Limit>,
    pub children: Vec<Node>,
}

/// Every configured domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub domains: BTreeMap<String, Vec<Node>>,
    /// Domains whose callers may send `RateLimitOverride`s (`overrides: true`).
    pub overrides: std::collections::BTreeSet<String>,
}

/// A configuration error, naming the file, the descriptor path and the fix.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Adds one domain from a YAML document (`source` names it in errors).
    pub fn add_yaml(&mut self, source: &str, text: &str) -> Result<(), ConfigError> {
        let raw: RawDomain = serde_yaml::from_str(text)
            .map_err(|e| ConfigError(format!("{source}: {e}; fix the YAML there")))?;
        if raw.domain.is_empty() {
            return Err(ConfigError(format!("{source}: `domain` is empty; name it")));
        }
        if self.domains.contains_key(&raw.domain) {
            return Err(ConfigError(format!(
                "{source}: domain {:?} is configured twice; merge the files",
                raw.domain
            )));
        }
        let nodes = compile(source, &raw.domain, &raw.descriptors)?;
        if raw.overrides == Some(true) {
            self.overrides.insert(raw.domain.clone());
        }
        self.domains.insert(raw.domain, nodes);
        Ok(())
    }

    /// The limit for a request descriptor (its entries in order): walking the tree, each
    /// entry matches the node with its key and value, else the node with its key and no
    /// value; the last node's limit applies. None when no node matches or it has no limit.
    pub fn limit(&self, domain: &str, entries: &[(String, String)]) -> Option<Limit> {
        let mut level = self.domains.get(domain)?;
        let mut node: Option<&Node> = None;
        for (key, value) in entries {
            let found = level
                .iter()
                .find(|n| n.key == *key && n.value.as_deref() == Some(value.as_str()))
                .or_else(|| level.iter().find(|n| n.key == *key && n.value.is_none()))?;
            node = Some(found);
            level = &found.children;
        }
        node?.limit
    }
}

fn compile(source: &str, path: &str, raw: &[RawDescriptor]) -> Result<Vec<Node>, ConfigError> {
    let mut nodes: Vec<Node> = Vec::new();
    for d in raw {
        let here = match &d.value {
            Some(v) => format!("{path} > {}={v}", d.key),
            None => format!("{path} > {}", d.key),
        };
        if d.key.is_empty() {
            return Err(ConfigError(format!(
                "{source}: {here}: `key` is empty; name the descriptor key"
            )));
        }
        if nodes.iter().any(|n| n.key == d.key && n.value == d.value) {
            return Err(ConfigError(format!(
                "{source}: {here} is listed twice at this level; keep one"
            )));
        }
        let limit = match &d.rate_limit {
            None => None,
            Some(l) => {
                use edgewise_support::calendar::{parse_offset, Period, Unit as Calendar};
                let calendar = match l.unit.to_ascii_lowercase().as_str() {
                    "calendar_day" => Some((Calendar::Day, Unit::Day)),
                    "calendar_week" => Some((Calendar::Week, Unit::Week)),
                    "calendar_month" => Some((Calendar::Month, Unit::Month)),
                    _ => None,
                };
                let unit = match calendar {
                    Some((_, unit)) => Some(unit),
                    None => Unit::parse(&l.unit),
                }
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{source}: {here}: rate_limit.unit {:?} is not a unit; use second, minute, hour, day, or a quota: calendar_day, calendar_week, calendar_month",
                        l.unit
                    ))
                })?;
                let offset_s = match (&l.utc_offset, calendar) {
                    (None, _) => 0,
                    (Some(text), Some(_)) => parse_offset(text).ok_or_else(|| {
                        ConfigError(format!(
                            "{source}: {here}: rate_limit.utc_offset {text:?} is not a UTC offset; write it like \"+02:00\", \"-05:30\" or \"Z\""
                        ))
                    })?,
                    (Some(_), None) => {
                        return Err(ConfigError(format!(
                            "{source}: {here}: rate_limit.utc_offset applies to calendar units only; remove it or use calendar_day, calendar_week or calendar_month"
                        )))
                    }
                };
                if l.requests_per_unit == 0 || l.requests_per_unit > 1_000_000_000 {
                    return Err(ConfigError(format!(
                        "{source}: {here}: rate_limit.requests_per_unit {} is out of range; use 1 to 1000000000",
                        l.requests_per_unit
                    )));
                }
                let algorithm = match (calendar, l.algorithm.as_deref()) {
                    (Some((period, _)), None | Some("fixed_window")) => {
                        Algorithm::Calendar(Period { unit: period, offset_s })
                    }
                    (Some(_), Some(other)) => {
                        return Err(ConfigError(format!(
                            "{source}: {here}: rate_limit.algorithm {other:?} does not apply to a calendar unit (a quota is a fixed window); remove it"
                        )))
                    }
                    (None, algorithm) => match algorithm.unwrap_or("token_bucket") {
                    "token_bucket" => Algorithm::TokenBucket,
                    "sliding_window" => Algorithm::SlidingWindow,
                    other => {
                        return Err(ConfigError(format!(
                            "{source}: {here}: rate_limit.algorithm {other:?} is not an algorithm; use token_bucket (default) or sliding_window"
                        )))
                    }
                    },
                };
                Some(Limit {
                    requests_per_unit: l.requests_per_unit,
                    unit,
                    algorithm,
                })
            }
        };
        let children = compile(source, &here, d.descriptors.as_deref().unwrap_or(&[]))?;
        nodes.push(Node {
            key: d.key.clone(),
            value: d.value.clone(),
            limit,
            children,
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
domain: edgewise
descriptors:
  - key: rule
    value: per-client
    descriptors:
      - key: client_ip
        rate_limit: { unit: minute, requests_per_unit: 100 }
      - key: client_ip
        value: 10.0.0.1
        rate_limit: { unit: second, requests_per_unit: 5 }
  - key: generic_key
    value: login
    rate_limit: { unit: hour, requests_per_unit: 10 }
"#;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn descriptors_match_value_first_then_any_value() {
        let mut c = Config::default();
        c.add_yaml("example.yaml", EXAMPLE).unwrap();
        let any = c.limit(
            "edgewise",
            &entries(&[("rule", "per-client"), ("client_ip", "192.0.2.7")]),
        );
        assert_eq!(
            any,
            Some(Limit {
                requests_per_unit: 100,
                unit: Unit::Minute,
                algorithm: Algorithm::TokenBucket,
            })
        );
        let exact = c.limit(
            "edgewise",
            &entries(&[("rule", "per-client"), ("client_ip", "10.0.0.1")]),
        );
        assert_eq!(exact.map(|l| l.unit), Some(Unit::Second));
        assert_eq!(
            c.limit("edgewise", &entries(&[("rule", "per-client")])),
            None,
            "a node without its own limit"
        );
        assert_eq!(c.limit("edgewise", &entries(&[("rule", "other")])), None);
        assert_eq!(
            c.limit("other", &entries(&[("generic_key", "login")])),
            None
        );
        assert_eq!(
            c.limit("edgewise", &entries(&[("generic_key", "login")]))
                .map(|l| l.requests_per_unit),
            Some(10)
        );
    }

    #[test]
    fn bad_configurations_name_the_place_and_the_fix() {
        let cases = [
            ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n", "d > k: rate_limit.unit"),
            ("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 0}\n", "requests_per_unit 0"),
            ("domain: d\ndescriptors:\n  - key: k\n  - key: k\n", "listed twice"),
            ("domain: d\ndescriptors:\n  - key: k\n    limit: 5\n", "unknown field `limit`"),
            ("domain: ''\ndescriptors: []\n", "`domain` is empty"),
        ];
        for (yaml, expected) in cases {
            let err = Config::default().add_yaml("f.yaml", yaml).unwrap_err();
            assert!(
                err.0.contains(expected) && err.0.starts_with("f.yaml"),
                "{yaml}: {err}"
            );
        }
        let mut c = Config::default();
        c.add_yaml("a.yaml", "domain: d\ndescriptors: []\n")
            .unwrap();
        assert!(c
            .add_yaml("b.yaml", "domain: d\ndescriptors: []\n")
            .unwrap_err()
            .0
            .contains("twice"));
    }
}
