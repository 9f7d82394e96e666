//! Compiling one rule: its key, algorithm, queue, quota (calendar windows), global settings, cost and charge, each refused with the field and the fix.

use super::*;

pub(super) fn parse_key_part(field: &str, text: &str) -> Result<KeyPart, ConfigError> {
    let named = |prefix: &str| -> Option<Result<String, ConfigError>> {
        text.strip_prefix(prefix).map(|name| {
            if name.is_empty() {
                Err(err(
                    field,
                    format!("{text:?} has no name after {prefix:?}"),
                    format!("write it like \"{prefix}x-api-key\""),
                ))
            } else {
                Ok(name.to_ascii_lowercase())
            }
        })
    };
    if let Some(name) = named("header:") {
        return name.map(KeyPart::Header);
    }
    if let Some(name) = named("cookie:") {
        // Cookie names are case-sensitive (RFC 6265 §4.1.1); keep the original spelling.
        return name.map(|_| KeyPart::Cookie(text["cookie:".len()..].to_string()));
    }
    if let Some(name) = named("query:") {
        return name.map(|_| KeyPart::Query(text["query:".len()..].to_string()));
    }
    Ok(match text {
        "global" => KeyPart::Global,
        "client_ip" => KeyPart::ClientIp,
        "path" => KeyPart::Path,
        "method" => KeyPart::Method,
        "host" => KeyPart::Host,
        other => {
            return Err(err(
                field,
                format!("{other:?} is not a key source"),
                "use global, client_ip, header:NAME, cookie:NAME, query:NAME, path, method or host (or a list of them)",
            ))
        }
    })
}

pub(super) fn compile_rule(index: usize, raw: &RawRule) -> Result<Rule, ConfigError> {
    let field = format!("rules[{index}]");
    let exempt = match &raw.exempt {
        Some(m) => Some(Matcher::compile(&format!("{field}.exempt"), Some(m))?),
        None => None,
    };
    // "shadow": a dry run of this rule.
    let shadow = one_of(
        &format!("{field}.mode"),
        raw.mode.as_deref(),
        "enforce",
        "a mode",
        &[("enforce", false), ("shadow", true)],
    )?;
    let mut rule = compile_rule_body(index, raw)?;
    rule.exempt = exempt;
    rule.shadow = shadow;
    if rule.global.is_some() && raw.utc_offset.is_some() {
        return Err(err(
            format!("{field}.utc_offset"),
            "is not supported on global rules yet",
            "use a calendar window on a local rule",
        ));
    }
    if rule.global.as_ref().is_some_and(|g| g.batch > 1)
        && (raw.cost.is_some() || raw.charge.is_some())
    {
        let name = if raw.cost.is_some() { "cost" } else { "charge" };
        return Err(err(
            format!("{field}.{name}"),
            "cannot be combined with global.batch (leased hits are single units)",
            "remove cost or batch",
        ));
    }
    let capacity = match rule.algorithm {
        // A global rule's capacity is the service's: its own limit when it gives one, else
        // the service's default --max-hits-addend bound.
        _ if rule.global.is_some() => {
            if rule.limit > 0 {
                rule.limit
            } else {
                1_000_000
            }
        }
        Algorithm::TokenBucket { burst, .. } => burst,
        Algorithm::FixedWindow { limit, .. }
        | Algorithm::SlidingWindow { limit, .. }
        | Algorithm::Calendar { limit, .. } => limit,
    };
    if let Some(cost) = &raw.cost {
        let header = header_name(
            &format!("{field}.cost.request_header"),
            &cost.request_header,
            "x-cost",
        )?;
        let max = cost.max.unwrap_or(capacity);
        if max == 0 || max > capacity {
            return Err(err(
                format!("{field}.cost.max"),
                format!("{max} is out of range"),
                format!("use 1 to the rule's capacity ({capacity}: its burst or limit); a larger cost could never be admitted"),
            ));
        }
        rule.cost = Some(Cost { header, max });
    }
    if let Some(charge) = &raw.charge {
        let name = |value: &str, which: &str| {
            header_name(&format!("{field}.charge.{which}"), value, "x-usage-tokens")
        };
        rule.charge = Some(
            match (&charge.response_header, &charge.response_trailer, &charge.statuses) {
                (Some(h), None, None) => Charge::ResponseHeader(name(h, "response_header")?),
                (None, Some(t), None) => Charge::ResponseTrailer(name(t, "response_trailer")?),
                (None, None, Some(list)) => Charge::Statuses(
                    edgewise_support::config::parse_statuses(
                        &format!("{field}.charge.statuses"),
                        list,
                    )?,
                ),
                _ => {
                    return Err(err(
                        format!("{field}.charge"),
                        "needs exactly one of response_header, response_trailer, statuses",
                        "e.g. {\"response_header\": \"x-usage-tokens\"} or {\"statuses\": [\"4xx\", \"5xx\"]}",
                    ))
                }
            },
        );
        if rule.queue.is_some() {
            return Err(err(
                format!("{field}.queue"),
                "cannot be combined with charge",
                "a charged rule admits or denies at once; remove queue or charge",
            ));
        }
    }
    Ok(rule)
}

pub(super) fn compile_rule_body(index: usize, raw: &RawRule) -> Result<Rule, ConfigError> {
    let field = format!("rules[{index}]");
    if raw.name.is_empty()
        || raw.name.len() > 64
        || !raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(err(
            format!("{field}.name"),
            format!("{:?} is not a valid rule name", raw.name),
            "use 1-64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    let matcher = Matcher::compile(&format!("{field}.match"), raw.matcher.as_ref())?;
    let key = match &raw.key {
        None => vec![KeyPart::Global],
        Some(RawKey::One(text)) => vec![parse_key_part(&format!("{field}.key"), text)?],
        Some(RawKey::Many(list)) if list.is_empty() => {
            return Err(err(
                format!("{field}.key"),
                "is an empty list",
                "name at least one key source, or \"global\"",
            ))
        }
        Some(RawKey::Many(list)) => list
            .iter()
            .enumerate()
            .map(|(i, text)| parse_key_part(&format!("{field}.key[{i}]"), text))
            .collect::<Result<_, _>>()?,
    };
    if let Some(global) = &raw.global {
        return compile_global_rule(index, raw, global, matcher, key);
    }
    let Some(limit) = raw.limit else {
        return Err(err(
            format!("{field}.limit"),
            "is missing",
            "give the rule a limit, e.g. \"limit\": 100",
        ));
    };
    let Some(window_text) = raw.window.as_deref() else {
        return Err(err(
            format!("{field}.window"),
            "is missing",
            "give the rule a window, e.g. \"window\": \"1m\"",
        ));
    };
    if limit == 0 || limit > 1_000_000_000 {
        return Err(err(
            format!("{field}.limit"),
            format!("{limit} is out of range"),
            "use a whole number from 1 to 1000000000",
        ));
    }
    let calendar = match window_text {
        "calendar_day" => Some(edgewise_support::calendar::Unit::Day),
        "calendar_week" => Some(edgewise_support::calendar::Unit::Week),
        "calendar_month" => Some(edgewise_support::calendar::Unit::Month),
        _ => None,
    };
    if let Some(unit) = calendar {
        return compile_quota(index, raw, matcher, key, limit, unit);
    }
    if raw.utc_offset.is_some() {
        return Err(err(
            format!("{field}.utc_offset"),
            "applies to calendar windows only",
            "remove it, or use \"window\": \"calendar_day\" / \"calendar_week\" / \"calendar_month\"",
        ));
    }
    let window = parse_duration(&format!("{field}.window"), window_text)?;
    if window < Duration::from_millis(1) || window > Duration::from_secs(86_400) {
        return Err(err(
            format!("{field}.window"),
            format!("{window_text:?} is out of range"),
            "use a window from \"1ms\" to \"24h\", or a quota: \"calendar_day\", \"calendar_week\", \"calendar_month\"",
        ));
    }
    let window_ns = window.as_nanos() as u64;
    let algorithm_name = raw.algorithm.as_deref().unwrap_or("token_bucket");
    let algorithm = match algorithm_name {
        "token_bucket" => {
            let burst = raw.burst.unwrap_or(limit);
            if burst == 0 || burst > 1_000_000_000 {
                return Err(err(
                    format!("{field}.burst"),
                    format!("{burst} is out of range"),
                    "use a whole number from 1 to 1000000000 (default: limit)",
                ));
            }
            // Rounded up: the bucket never refills faster than configured.
            Algorithm::TokenBucket {
                interval_ns: window_ns.div_ceil(limit).max(1),
                burst,
            }
        }
        "fixed_window" | "sliding_window" => {
            if raw.burst.is_some() {
                return Err(err(
                    format!("{field}.burst"),
                    format!("burst applies to token_bucket, not {algorithm_name}"),
                    "remove burst or use algorithm token_bucket",
                ));
            }
            if algorithm_name == "fixed_window" {
                Algorithm::FixedWindow { limit, window_ns }
            } else {
                Algorithm::SlidingWindow { limit, window_ns }
            }
        }
        other => {
            return Err(err(
                format!("{field}.algorithm"),
                format!("{other:?} is not an algorithm"),
                "use token_bucket, fixed_window or sliding_window",
            ))
        }
    };
    let queue = match &raw.queue {
        None => None,
        Some(q) => {
            if !matches!(algorithm, Algorithm::TokenBucket { .. }) {
                return Err(err(
                    format!("{field}.queue"),
                    format!("queueing needs algorithm token_bucket, not {algorithm_name}"),
                    "remove queue or use token_bucket",
                ));
            }
            let max_delay = parse_duration(&format!("{field}.queue.max_delay"), &q.max_delay)?;
            if max_delay.is_zero() || max_delay > Duration::from_secs(60) {
                return Err(err(
                    format!("{field}.queue.max_delay"),
                    format!("{:?} is out of range", q.max_delay),
                    "use a delay from \"1ms\" to \"60s\"",
                ));
            }
            let max_waiting = q.max_waiting.unwrap_or(1000);
            if max_waiting == 0 || max_waiting > 1_000_000 {
                return Err(err(
                    format!("{field}.queue.max_waiting"),
                    format!("{max_waiting} is out of range"),
                    "use a whole number from 1 to 1000000 (default 1000)",
                ));
            }
            Some(Queue {
                max_delay_ns: max_delay.as_nanos() as u64,
                max_waiting,
            })
        }
    };
    let max_keys = max_keys(&field, raw)?;
    Ok(Rule {
        queue,
        sets: max_keys.div_ceil(WAYS),
        ..Rule::named(&raw.name, matcher, key, algorithm, limit, window)
    })
}

impl Rule {
    /// A rule named `name` (its metrics and key seed follow from the name), with no queue,
    /// one key set, and none of the options the configuration adds after (global, exempt,
    /// shadow, cost, charge).
    fn named(
        name: &str,
        matcher: Matcher,
        key: Vec<KeyPart>,
        algorithm: Algorithm,
        limit: u64,
        window: Duration,
    ) -> Rule {
        let metric = |what: &str| labelled_metric_name("rate_limit", &[("rule", name)], what);
        Rule {
            name: name.to_string(),
            matcher,
            key,
            algorithm,
            limit,
            window,
            queue: None,
            sets: 1,
            name_seed: crate::hash::name_seed(name),
            metric_allowed: metric("allowed"),
            metric_denied: metric("denied"),
            metric_shadow_denied: metric("shadow_denied"),
            metric_queued: metric("queued"),
            metric_errors: metric("errors"),
            global: None,
            exempt: None,
            shadow: false,
            cost: None,
            charge: None,
        }
    }
}

/// Refuses the first of `fields` (name, whether the rule sets it) that is set: `problem`
/// says why it does not apply, `fix(name)` what to do.
fn refuse_present(
    field: &str,
    fields: &[(&str, bool)],
    problem: &str,
    fix: impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    match fields.iter().find(|(_, present)| *present) {
        Some((name, _)) => Err(err(format!("{field}.{name}"), problem, fix(name))),
        None => Ok(()),
    }
}

/// A field naming a header (lower-cased): not empty, not a pseudo-header, no spaces or
/// controls; `example` goes into the fix.
pub(super) fn header_name(field: &str, value: &str, example: &str) -> Result<String, ConfigError> {
    let lower = value.to_ascii_lowercase();
    if lower.is_empty() || lower.starts_with(':') || lower.bytes().any(|b| b <= b' ') {
        return Err(err(
            field.to_string(),
            format!("{value:?} is not a header name"),
            format!("name the header, e.g. \"{example}\""),
        ));
    }
    Ok(lower)
}

/// A local rule's key table bound (`max_keys`, default 10,000).
pub(super) fn max_keys(field: &str, raw: &RawRule) -> Result<u64, ConfigError> {
    let max_keys = raw.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
    if !(WAYS..=MAX_MAX_KEYS).contains(&max_keys) {
        return Err(err(
            format!("{field}.max_keys"),
            format!("{max_keys} is out of range"),
            format!("use a number from {WAYS} to {MAX_MAX_KEYS} (default {DEFAULT_MAX_KEYS})"),
        ));
    }
    Ok(max_keys)
}

/// A quota: a fixed window of a calendar day, week or month in `utc_offset` (the
/// algorithm is always a fixed window; no burst, no queue).
pub(super) fn compile_quota(
    index: usize,
    raw: &RawRule,
    matcher: Matcher,
    key: Vec<KeyPart>,
    limit: u64,
    unit: edgewise_support::calendar::Unit,
) -> Result<Rule, ConfigError> {
    let field = format!("rules[{index}]");
    refuse_present(
        &field,
        &[
            ("burst", raw.burst.is_some()),
            ("queue", raw.queue.is_some()),
        ],
        "does not apply to a calendar window (a quota)",
        |name| format!("remove {name}"),
    )?;
    if raw
        .algorithm
        .as_deref()
        .is_some_and(|a| a != "fixed_window")
    {
        return Err(err(
            format!("{field}.algorithm"),
            "a calendar window is a fixed window",
            "remove algorithm or set it to \"fixed_window\"",
        ));
    }
    let offset_s = match raw.utc_offset.as_deref() {
        None => 0,
        Some(text) => edgewise_support::calendar::parse_offset(text).ok_or_else(|| {
            err(
                format!("{field}.utc_offset"),
                format!("{text:?} is not a UTC offset"),
                "write it like \"+02:00\", \"-05:30\" or \"Z\" (at most ±14:00)",
            )
        })?,
    };
    let period = edgewise_support::calendar::Period { unit, offset_s };
    let max_keys = max_keys(&field, raw)?;
    let algorithm = Algorithm::Calendar { limit, period };
    let window = Duration::from_secs(period.nominal_seconds());
    Ok(Rule {
        sets: max_keys.div_ceil(WAYS),
        ..Rule::named(&raw.name, matcher, key, algorithm, limit, window)
    })
}

/// A `global` rule: the service decides; `limit` and `window` (both or neither) become the
/// descriptor's own limit, so the window must be exactly one of the protocol's units.
pub(super) fn compile_global_rule(
    index: usize,
    raw: &RawRule,
    global: &RawGlobal,
    matcher: Matcher,
    key: Vec<KeyPart>,
) -> Result<Rule, ConfigError> {
    let field = format!("rules[{index}]");
    refuse_present(
        &field,
        &[
            ("algorithm", raw.algorithm.is_some()),
            ("burst", raw.burst.is_some()),
            ("queue", raw.queue.is_some()),
            ("max_keys", raw.max_keys.is_some()),
        ],
        "does not apply to a global rule (the service decides)",
        |name| format!("remove {name}, or remove global for a local rule"),
    )?;
    let g = format!("{field}.global");
    if global.cluster.is_empty() {
        return Err(err(
            format!("{g}.cluster"),
            "is empty",
            "name the Envoy cluster of the rate limit service (HTTP/2), e.g. \"ratelimit\"",
        ));
    }
    let domain = global.domain.clone().unwrap_or_else(|| "edgewise".into());
    if domain.is_empty() {
        return Err(err(
            format!("{g}.domain"),
            "is empty",
            "name the domain, e.g. \"edgewise\"",
        ));
    }
    let timeout = match &global.timeout {
        Some(text) => parse_duration(&format!("{g}.timeout"), text)?,
        None => Duration::from_millis(20),
    };
    if timeout.is_zero() || timeout > Duration::from_secs(10) {
        return Err(err(
            format!("{g}.timeout"),
            format!("{timeout:?} is out of range"),
            "use \"1ms\" to \"10s\" (default \"20ms\")",
        ));
    }
    let batch = global.batch.unwrap_or(1);
    if !(1..=1000).contains(&batch) {
        return Err(err(
            format!("{g}.batch"),
            format!("{batch} is out of range"),
            "use 1 (a call per request, default) to 1000",
        ));
    }
    // "allow": requests pass while the service fails.
    let deny_on_failure = one_of(
        &format!("{g}.failure_mode"),
        global.failure_mode.as_deref(),
        "allow",
        "a failure mode",
        &[("allow", false), ("deny", true)],
    )?;
    let limit = match (raw.limit, raw.window.as_deref()) {
        (None, None) => None,
        (Some(limit), Some(window)) => {
            let window = parse_duration(&format!("{field}.window"), window)?;
            let unit = crate::rls::unit_of(window.as_secs())
                .filter(|_| window.subsec_nanos() == 0)
                .ok_or_else(|| {
                    err(
                        format!("{field}.window"),
                        format!("{window:?} is not one of the protocol's units"),
                        "use \"1s\", \"1m\", \"1h\" or \"24h\" for a global rule",
                    )
                })?;
            if limit == 0 || limit > u64::from(u32::MAX) {
                return Err(err(
                    format!("{field}.limit"),
                    format!("{limit} is out of range"),
                    "use a whole number from 1 to 4294967295",
                ));
            }
            Some((limit as u32, unit))
        }
        _ => {
            return Err(err(
                format!("{field}.limit"),
                "a global rule takes limit and window together, or neither",
                "give both (the rule's own limit) or neither (the service's configuration)",
            ))
        }
    };
    let (limit_n, window) = match limit {
        Some((n, unit)) => (
            u64::from(n),
            Duration::from_secs(match unit {
                1 => 1,
                2 => 60,
                3 => 3600,
                _ => 86_400,
            }),
        ),
        None => (0, Duration::ZERO),
    };
    // The service decides; the local algorithm is never consulted.
    let algorithm = Algorithm::TokenBucket {
        interval_ns: 1,
        burst: 1,
    };
    Ok(Rule {
        global: Some(Global {
            cluster: global.cluster.clone(),
            domain,
            timeout,
            deny_on_failure,
            cache_over_limit: global.cache_over_limit.unwrap_or(true),
            batch,
            limit,
        }),
        ..Rule::named(&raw.name, matcher, key, algorithm, limit_n, window)
    })
}
