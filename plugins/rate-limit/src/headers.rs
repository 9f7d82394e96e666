//! Response headers: `RateLimit-Policy` and `RateLimit` structured fields
//! (draft-ietf-httpapi-ratelimit-headers: `"name";q=quota;w=window` and
//! `"name";r=remaining;t=reset`), or `X-RateLimit-Limit/Remaining/Reset`; and
//! `Retry-After` in whole seconds, rounded up (RFC 9110 §10.2.3).

use crate::config::{Config, HeaderStyle};
use crate::limiter::RuleStatus;

const NANOS: u64 = 1_000_000_000;

/// Whole seconds, rounded up: a client that waits this long is admitted.
pub fn seconds_up(ns: u64) -> u64 {
    ns.div_ceil(NANOS)
}

/// The rate-limit headers for the matching rules (empty for style `none` or no rules).
pub fn rate_limit_headers(config: &Config, statuses: &[RuleStatus]) -> Vec<(&'static str, String)> {
    // Rules in a dry run (`mode: "shadow"` on the rule) stay invisible to clients.
    let visible: Vec<RuleStatus>;
    let statuses = if statuses
        .iter()
        .any(|s| config.rules.get(s.rule).is_some_and(|r| r.shadow))
    {
        visible = statuses
            .iter()
            .filter(|s| !config.rules.get(s.rule).is_some_and(|r| r.shadow))
            .cloned()
            .collect();
        visible.as_slice()
    } else {
        statuses
    };
    if statuses.is_empty() {
        return Vec::new();
    }
    match config.response_headers {
        HeaderStyle::None => Vec::new(),
        HeaderStyle::Ietf => {
            // Statuses of rules this configuration does not have are left out (never an
            // index out of bounds, whatever a caller passes).
            let statuses: Vec<&RuleStatus> = statuses
                .iter()
                .filter(|s| s.rule < config.rules.len())
                .collect();
            if statuses.is_empty() {
                return Vec::new();
            }
            let policy: Vec<String> = statuses
                .iter()
                .filter_map(|s| {
                    let rule = config.rules.get(s.rule)?;
                    let (limit, window) = s
                        .policy
                        .unwrap_or((rule.limit, seconds_up(rule.window.as_nanos() as u64).max(1)));
                    Some(format!("\"{}\";q={limit};w={window}", rule.name))
                })
                .collect();
            let current: Vec<String> = statuses
                .iter()
                .filter_map(|s| {
                    Some(format!(
                        "\"{}\";r={};t={}",
                        config.rules.get(s.rule)?.name,
                        s.remaining,
                        seconds_up(s.reset_ns)
                    ))
                })
                .collect();
            vec![
                ("ratelimit-policy", policy.join(", ")),
                ("ratelimit", current.join(", ")),
            ]
        }
        HeaderStyle::XRateLimit => {
            // The most restrictive rule: fewest remaining, then longest reset.
            let Some(tightest) = statuses
                .iter()
                .filter(|s| s.rule < config.rules.len())
                .min_by_key(|s| (s.remaining, u64::MAX - s.reset_ns))
            else {
                return Vec::new();
            };
            vec![
                (
                    "x-ratelimit-limit",
                    tightest
                        .policy
                        .or_else(|| config.rules.get(tightest.rule).map(|r| (r.limit, 0)))
                        .map_or(0, |(limit, _)| limit)
                        .to_string(),
                ),
                ("x-ratelimit-remaining", tightest.remaining.to_string()),
                (
                    "x-ratelimit-reset",
                    seconds_up(tightest.reset_ns).to_string(),
                ),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(style: &str) -> Config {
        Config::from_json(
            format!(r#"{{"response_headers":"{style}","rules":[{{"name":"a","limit":10,"window":"1m"}},{{"name":"b","limit":5,"window":"1s"}}]}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn ietf_lists_every_matching_rule() {
        let statuses = [
            RuleStatus {
                policy: None,
                rule: 0,
                limited: false,
                remaining: 9,
                reset_ns: 6 * NANOS,
            },
            RuleStatus {
                policy: None,
                rule: 1,
                limited: true,
                remaining: 0,
                reset_ns: 1,
            },
        ];
        let headers = rate_limit_headers(&config("ietf"), &statuses);
        assert_eq!(
            headers[0],
            (
                "ratelimit-policy",
                "\"a\";q=10;w=60, \"b\";q=5;w=1".to_string()
            )
        );
        assert_eq!(
            headers[1],
            ("ratelimit", "\"a\";r=9;t=6, \"b\";r=0;t=1".to_string())
        );
    }

    #[test]
    fn x_ratelimit_reports_the_tightest_rule() {
        let statuses = [
            RuleStatus {
                policy: None,
                rule: 0,
                limited: false,
                remaining: 9,
                reset_ns: NANOS,
            },
            RuleStatus {
                policy: None,
                rule: 1,
                limited: false,
                remaining: 2,
                reset_ns: NANOS / 2,
            },
        ];
        let headers = rate_limit_headers(&config("x-ratelimit"), &statuses);
        assert_eq!(
            headers,
            vec![
                ("x-ratelimit-limit", "5".into()),
                ("x-ratelimit-remaining", "2".into()),
                ("x-ratelimit-reset", "1".into())
            ]
        );
        assert!(rate_limit_headers(&config("none"), &statuses).is_empty());
    }

    #[test]
    fn statuses_of_rules_the_configuration_lacks_are_left_out() {
        let statuses = [RuleStatus {
            policy: None,
            rule: 7,
            limited: true,
            remaining: 0,
            reset_ns: NANOS,
        }];
        for style in ["ietf", "x-ratelimit"] {
            let headers = rate_limit_headers(&config(style), &statuses);
            assert!(headers.is_empty(), "{style}: {headers:?}");
        }
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds_up(1), 1);
        assert_eq!(seconds_up(NANOS), 1);
        assert_eq!(seconds_up(NANOS + 1), 2);
    }
}
