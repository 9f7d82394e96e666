//! The response phase's policy, over the host's response fields (`edgewise_support::Host`):
//! how many units a response settles for a charged rule, and the RateLimit fields it
//! carries back to the client.

use edgewise_support::Host;

use crate::config::{Charge, Config};
use crate::headers::rate_limit_headers;
use crate::limiter::RuleStatus;

/// A response field read as a whole number (trimmed); 0 when absent or not a number, so a
/// malformed usage report charges nothing rather than failing the response.
fn number(host: &impl Host, trailers: bool, name: &str) -> u64 {
    host.response_field(trailers, name)
        .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// The units this response settles for `rule` admitted at `cost`, read from the headers
/// (`trailers` false) or the trailers: the charge header's number, the trailer's, or the
/// cost when the status is one of the charged ones (else 0). None: not at this point (a
/// trailer charge while reading headers) or never (the rule charges nothing).
pub fn settled_units(
    config: &Config,
    rule: usize,
    cost: u64,
    trailers: bool,
    host: &impl Host,
) -> Option<u64> {
    match (&config.rules.get(rule)?.charge, trailers) {
        (Some(Charge::ResponseHeader(name)), false) => Some(number(host, false, name)),
        (Some(Charge::ResponseTrailer(name)), true) => Some(number(host, true, name)),
        (Some(Charge::Statuses(ranges)), false) => {
            let code = number(host, false, ":status");
            let hit = ranges
                .iter()
                .any(|(lo, hi)| (u64::from(*lo)..=u64::from(*hi)).contains(&code));
            Some(if hit { cost } else { 0 })
        }
        _ => None,
    }
}

/// Whether `rule` settles on the trailers, not yet while the headers are read.
pub fn waits_for_trailer(config: &Config, rule: usize, trailers: bool) -> bool {
    !trailers
        && matches!(
            config.rules.get(rule).and_then(|r| r.charge.as_ref()),
            Some(Charge::ResponseTrailer(_))
        )
}

/// Writes the RateLimit fields of the matching rules' `statuses` on the response.
pub fn write_rate_limit_fields(config: &Config, statuses: &[RuleStatus], host: &mut impl Host) {
    for (name, value) in rate_limit_headers(config, statuses) {
        host.set_response_header(name, value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewise_support::{HeaderMap, MapHost};

    fn config(charge: &str) -> Config {
        let json = format!(
            r#"{{"rules":[{{"name":"llm","limit":100,"window":"1m","charge":{charge}}},{{"name":"plain","limit":5,"window":"1s"}}]}}"#
        );
        Config::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_header_charge_reads_the_reported_units() {
        let config = config(r#"{"response_header":"x-usage-tokens"}"#);
        let host = MapHost::with_headers(&[(":status", "200"), ("x-usage-tokens", " 42 ")]);
        assert_eq!(settled_units(&config, 0, 1, false, &host), Some(42));
        // Malformed or missing reports charge nothing; an uncharged rule settles nothing.
        let bad = MapHost::with_headers(&[("x-usage-tokens", "many")]);
        assert_eq!(settled_units(&config, 0, 1, false, &bad), Some(0));
        assert_eq!(
            settled_units(&config, 0, 1, false, &MapHost::default()),
            Some(0)
        );
        assert_eq!(settled_units(&config, 1, 1, false, &host), None);
        assert_eq!(settled_units(&config, 9, 1, false, &host), None);
    }

    #[test]
    fn a_trailer_charge_waits_for_the_trailers() {
        let config = config(r#"{"response_trailer":"x-usage-tokens"}"#);
        let mut host = MapHost::with_headers(&[(":status", "200"), ("x-usage-tokens", "5")]);
        host.trailers = HeaderMap::from_pairs(&[("x-usage-tokens", "17")]);
        assert!(waits_for_trailer(&config, 0, false));
        assert!(!waits_for_trailer(&config, 0, true));
        assert_eq!(settled_units(&config, 0, 1, false, &host), None);
        assert_eq!(settled_units(&config, 0, 1, true, &host), Some(17));
    }

    #[test]
    fn a_status_charge_costs_the_admitted_cost_on_matching_statuses() {
        let config = config(r#"{"statuses":["4xx",503]}"#);
        for (status, units) in [("401", 3), ("503", 3), ("200", 0), ("500", 0)] {
            let host = MapHost::with_headers(&[(":status", status)]);
            assert_eq!(
                settled_units(&config, 0, 3, false, &host),
                Some(units),
                "{status}"
            );
        }
    }

    #[test]
    fn the_rate_limit_fields_replace_any_the_origin_sent() {
        let config = config(r#"{"statuses":["5xx"]}"#);
        let statuses = [RuleStatus {
            rule: 1,
            limited: false,
            remaining: 4,
            reset_ns: 1_000_000_000,
            policy: None,
        }];
        let mut host = MapHost::with_headers(&[("ratelimit", "\"forged\";r=999;t=1")]);
        write_rate_limit_fields(&config, &statuses, &mut host);
        assert_eq!(
            host.response_field(false, "ratelimit"),
            Some(b"\"plain\";r=4;t=1".to_vec())
        );
        assert_eq!(
            host.response_field(false, "ratelimit-policy"),
            Some(b"\"plain\";q=5;w=1".to_vec())
        );
        assert_eq!(host.headers.all("ratelimit").count(), 1);
    }
}
