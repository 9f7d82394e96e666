//! Duration strings in configs: a non-negative integer and a unit — `ms`, `s`, `m`, `h` —
//! like "250ms", "1s", "5m", "1h".

use std::time::Duration;

use crate::config::ConfigError;

/// Parses a duration string for the config field `field`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    let fix = "use a whole number followed by ms, s, m or h, like \"250ms\", \"1s\" or \"5m\"";
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{text:?} is not a duration"),
            fix,
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| ConfigError::new(field, format!("{text:?} is too large"), fix))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(ConfigError::new(
                field,
                format!("{text:?} has no unit"),
                fix,
            ))
        }
        other => {
            return Err(ConfigError::new(
                field,
                format!("{text:?} has unknown unit {other:?}"),
                fix,
            ))
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| ConfigError::new(field, format!("{text:?} is too large"), fix))
}

/// Parses a duration that must be whole seconds (HTTP ages and lifetimes are, RFC 9111
/// §1.2.2): "1500ms" is refused with a message rather than silently cut to 1 s — or "500ms"
/// to nothing. Returns the seconds.
pub fn parse_whole_seconds(field: &str, text: &str) -> Result<u64, ConfigError> {
    let duration = parse_duration(field, text)?;
    if duration.subsec_millis() != 0 {
        return Err(ConfigError::new(
            field,
            format!("{text:?} is not a whole number of seconds"),
            "HTTP ages are whole seconds: use a value like \"1s\", \"30s\" or \"5m\"",
        ));
    }
    Ok(duration.as_secs())
}

/// Formats a duration in the largest unit that represents it exactly.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Validates `metrics_flush`: how long per-request counters may wait in the VM before they
/// reach Envoy's stats (`"0s"`, the default: immediately); up to `"60s"`.
pub fn metrics_flush(raw: Option<&str>) -> Result<std::time::Duration, ConfigError> {
    let Some(text) = raw else {
        return Ok(std::time::Duration::ZERO);
    };
    let period = parse_duration("metrics_flush", text)?;
    if period > std::time::Duration::from_secs(60) {
        return Err(crate::config::err(
            "metrics_flush",
            format!("{text:?} is longer than 60s"),
            "use \"0s\" (immediate) up to \"60s\", e.g. \"1s\"",
        ));
    }
    Ok(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_refuse_fractions_instead_of_cutting_them() {
        assert_eq!(parse_whole_seconds("f", "2s").unwrap(), 2);
        assert_eq!(parse_whole_seconds("f", "2000ms").unwrap(), 2);
        assert_eq!(parse_whole_seconds("f", "0ms").unwrap(), 0);
        for bad in ["500ms", "1500ms"] {
            let e = parse_whole_seconds("stale_if_error", bad).unwrap_err();
            assert!(e.to_string().contains("whole number of seconds"), "{e}");
            assert!(e.to_string().contains("stale_if_error"), "{e}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(
            parse_duration("w", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("w", "1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("w", "5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_duration("w", "2h").unwrap(),
            Duration::from_secs(7200)
        );
        assert_eq!(parse_duration("w", "0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_with_the_field_named() {
        for bad in [
            "",
            "s",
            "5",
            "5x",
            "-1s",
            "1.5s",
            "99999999999999999999ms",
            "5 m",
        ] {
            let err = parse_duration("rules[0].window", bad).unwrap_err();
            assert_eq!(err.field, "rules[0].window", "{bad}");
        }
    }

    proptest! {
        #[test]
        fn formatting_round_trips(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration("f", &format_duration(d)).unwrap(), d);
        }

        #[test]
        fn never_panics(text in "\\PC{0,12}") {
            let _ = parse_duration("f", &text);
        }
    }

    #[test]
    fn metrics_flush_is_a_bounded_duration() {
        assert_eq!(metrics_flush(None).unwrap(), std::time::Duration::ZERO);
        assert_eq!(
            metrics_flush(Some("1s")).unwrap(),
            std::time::Duration::from_secs(1)
        );
        assert_eq!(
            metrics_flush(Some("2m")).unwrap_err().field,
            "metrics_flush"
        );
        assert_eq!(metrics_flush(Some("x")).unwrap_err().field, "metrics_flush");
    }
}
