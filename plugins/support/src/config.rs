//! Configuration errors: which field is wrong, why, and how to fix it — what `on_configure`
//! logs before returning false so that Envoy rejects the plugin.

use std::fmt;

use serde::de::DeserializeOwned;

/// A rejected configuration, e.g. "`rules[0].window`: \"5x\" is not a duration; use a
/// number with ms, s, m or h, like \"250ms\" or \"1m\"".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON path of the field (`rules[2].limit`), or "<root>" / "<json>".
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl ConfigError {
    pub fn new(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration at `{}`: {}",
            self.field, self.problem
        )?;
        if !self.fix.is_empty() {
            write!(f, "; {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Parses a plugin configuration into the raw serde struct `T` (which should use
/// `deny_unknown_fields`). Empty input is treated as `{}` so defaults apply.
pub fn parse_config<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ConfigError::new(
            "<json>",
            format!("configuration is not UTF-8 ({e})"),
            "pass the configuration as a JSON string",
        )
    })?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    // Natively (`cargo xtask validate`), serde_path_to_error tracks where the deserializer
    // was when it failed, so a value of the wrong type is reported at its field
    // (`rules[0].limit`). In the module, the field comes from serde's message where it names
    // one (unknown, missing); a wrong type is reported with its line and column.
    #[cfg(not(target_arch = "wasm32"))]
    let parsed: Result<T, (String, serde_json::Error)> = {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| (e.path().to_string(), e.into_inner()))
            .and_then(|value| {
                // Anything after the document is an error of the document.
                deserializer
                    .end()
                    .map(|()| value)
                    .map_err(|e| (String::new(), e))
            })
    };
    #[cfg(target_arch = "wasm32")]
    let parsed: Result<T, (String, serde_json::Error)> =
        serde_json::from_str(text).map_err(|e| (String::new(), e));
    parsed.map_err(|(path, error)| {
        let message = error.to_string();
        // A syntax error is the document's (its message gives line and column). Otherwise
        // the path is where the deserializer stood: at an unknown field itself, or inside the
        // object that lacks a missing field (serde names it in the message).
        let at_root = matches!(path.as_str(), "" | "." | "?");
        let named = message.split('`').nth(1);
        let missing = named.filter(|_| message.contains("missing field"));
        let unknown = named.filter(|_| message.contains("unknown field"));
        let field = match (error.classify(), missing, unknown) {
            (serde_json::error::Category::Data, Some(name), _) if at_root => name.to_string(),
            (serde_json::error::Category::Data, Some(name), _) => format!("{path}.{name}"),
            (serde_json::error::Category::Data, None, _) if !at_root => path,
            (serde_json::error::Category::Data, None, Some(name)) => name.to_string(),
            _ => "<json>".into(),
        };
        let fix = if message.contains("unknown field") {
            "remove it or check its spelling against the configuration reference (docs/<filter>.md)"
        } else if message.contains("missing field") {
            "add it; see the configuration reference (docs/<filter>.md)"
        } else if message.contains("invalid type") || message.contains("invalid value") {
            "give it a value of the type the configuration reference names (docs/<filter>.md)"
        } else {
            "fix the JSON at the given line and column"
        };
        ConfigError::new(field, message, fix)
    })
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Raw {
        max_bytes: Option<u64>,
        rules: Option<Vec<Rule>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rule {
        name: String,
        limit: Option<u64>,
    }

    fn field_of(json: &str) -> String {
        parse_config::<Raw>(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn a_value_of_the_wrong_type_is_reported_at_its_field() {
        let e = parse_config::<Raw>(br#"{"max_bytes": "64MiB"}"#).unwrap_err();
        assert_eq!(e.field, "max_bytes");
        assert!(e.problem.contains("invalid type"), "{e}");
        assert!(e.fix.contains("type"), "{e}");
        assert_eq!(
            field_of(r#"{"rules": [{"name": "a"}, {"name": "b", "limit": -1}]}"#),
            "rules[1].limit"
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_named_where_they_are() {
        assert_eq!(field_of(r#"{"max_byte": 1}"#), "max_byte");
        assert_eq!(
            field_of(r#"{"rules": [{"name": "a", "limt": 1}]}"#),
            "rules[0].limt"
        );
        assert_eq!(field_of(r#"{"rules": [{"limit": 1}]}"#), "rules[0].name");
    }

    #[test]
    fn a_refusal_check_fails_on_anything_but_the_named_refusal() {
        let refused: Result<(), ConfigError> =
            Err(err("rules[0].limit", "0 is out of range", "use 1 or more"));
        assert_eq!(
            check_refusal(refused.clone(), "rules[0].limit", "out of range"),
            Ok(())
        );
        assert!(check_refusal(refused.clone(), "rules[0].window", "out of range").is_err());
        assert!(check_refusal(refused, "rules[0].limit", "missing").is_err());
        assert!(check_refusal(Ok(()), "rules[0].limit", "").is_err());
        let no_fix: Result<(), ConfigError> = Err(err("mode", "\"x\" is not a mode", ""));
        assert!(check_refusal(no_fix, "mode", "not a mode").is_err());
    }

    #[test]
    fn a_string_enum_names_every_allowed_value() {
        let choices = [("lru", 1), ("lfu", 2)];
        assert_eq!(one_of("eviction", None, "lru", "a policy", &choices), Ok(1));
        assert_eq!(
            one_of("eviction", Some("lfu"), "lru", "a policy", &choices),
            Ok(2)
        );
        let e = one_of("eviction", Some("mru"), "lru", "a policy", &choices).unwrap_err();
        assert_eq!(e.field, "eviction");
        assert_eq!(e.problem, "\"mru\" is not a policy");
        assert_eq!(e.fix, "use \"lru\" (default), \"lfu\"");
    }

    #[test]
    fn broken_json_is_reported_at_the_document() {
        assert_eq!(field_of(r#"{"max_bytes": 1"#), "<json>");
        assert_eq!(field_of(r#"{"max_bytes": 1} trailing"#), "<json>");
        assert!(parse_config::<Raw>(b"").is_ok());
    }
}

/// A string-enum field: `value` (or `default` when absent) looked up in `choices`. An unknown
/// value is refused at `field` as "not `what`", with every allowed value (the default
/// marked) in the fix.
pub fn one_of<T: Copy>(
    field: &str,
    value: Option<&str>,
    default: &str,
    what: &str,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let value = value.unwrap_or(default);
    if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == value) {
        return Ok(*choice);
    }
    let allowed: Vec<String> = choices
        .iter()
        .map(|(name, _)| match *name == default {
            true => format!("\"{name}\" (default)"),
            false => format!("\"{name}\""),
        })
        .collect();
    Err(err(
        field,
        format!("{value:?} is not {what}"),
        format!("use {}", allowed.join(", ")),
    ))
}

/// For tests of configuration refusals: Ok when `result` is refused at `field`, with
/// `problem` in its message and a fix; otherwise what differs.
pub fn check_refusal<T>(
    result: Result<T, ConfigError>,
    field: &str,
    problem: &str,
) -> Result<(), String> {
    match result {
        Ok(_) => Err("accepted".into()),
        Err(e) if e.field != field => Err(format!("refused at `{}`, not `{field}`: {e}", e.field)),
        Err(e) if !e.problem.contains(problem) => Err(format!("no {problem:?} in: {e}")),
        Err(e) if e.fix.is_empty() => Err(format!("no fix in: {e}")),
        Err(_) => Ok(()),
    }
}

/// A `ConfigError` naming `field`, what is wrong and how to fix it (shorthand for the
/// compile steps of every filter's configuration).
pub fn err(
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::new(field, problem, fix)
}

/// A configured local reply (the rate limiter's denial, the breaker's fallback): JSON shape.
#[derive(Debug, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawLocalReply {
    pub status: Option<u32>,
    pub body: Option<String>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// A validated local reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

/// Compiles the local reply configured at `field` (`deny`, `fallback`): a status from 200 to
/// 599, a body, valid header fields; absent parts take the defaults, whose headers are
/// `content-type: text/plain` when nothing is configured at all.
pub fn local_reply(
    field: &str,
    raw: Option<&RawLocalReply>,
    default_status: u32,
    default_body: &str,
) -> Result<LocalReply, ConfigError> {
    let Some(raw) = raw else {
        return Ok(LocalReply {
            status: default_status,
            body: default_body.into(),
            headers: vec![("content-type".into(), "text/plain".into())],
        });
    };
    let status = raw.status.unwrap_or(default_status);
    if !(200..=599).contains(&status) {
        return Err(err(
            format!("{field}.status"),
            format!("{status} is not a usable status"),
            format!("use a status from 200 to 599 (default {default_status})"),
        ));
    }
    Ok(LocalReply {
        status,
        body: raw.body.clone().unwrap_or_else(|| default_body.into()),
        headers: response_headers(&format!("{field}.headers"), raw.headers.as_ref())?,
    })
}

/// Validates configured response header fields (`field` names them in errors): names must
/// be visible ASCII and not pseudo-headers, values free of CR, LF and NUL. Names are
/// lowercased, as Envoy keeps them.
pub fn response_headers(
    field: &str,
    headers: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in headers.into_iter().flatten() {
        if name.is_empty() || name.starts_with(':') || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                field,
                format!("{name:?} is not a header name"),
                "use names like \"content-type\"",
            ));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ConfigError::new(
                format!("{field}.{name}"),
                "contains a control character",
                "remove CR, LF and NUL from the value",
            ));
        }
        out.push((name.to_ascii_lowercase(), value.clone()));
    }
    Ok(out)
}

/// Parses "5xx", "503" / 503, "500-504" into inclusive ranges.
pub fn parse_statuses(
    field: &str,
    values: &[serde_json::Value],
) -> Result<Vec<(u16, u16)>, ConfigError> {
    let fix =
        "use status codes (503), classes (\"5xx\") or ranges (\"500-504\") between 100 and 599";
    let mut ranges = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let text = match value {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.trim().to_string(),
            other => return Err(err(field, format!("{other} is not a status"), fix)),
        };
        let code = |s: &str| s.parse::<u16>().ok().filter(|c| (100..=599).contains(c));
        let range = if let Some(class) = text.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok())
        {
            if !(1..=5).contains(&class) {
                return Err(err(field, format!("{text:?} is not a status class"), fix));
            }
            (class * 100, class * 100 + 99)
        } else if let Some((low, high)) = text.split_once('-') {
            match (code(low.trim()), code(high.trim())) {
                (Some(l), Some(h)) if l <= h => (l, h),
                _ => {
                    return Err(err(
                        field,
                        format!("{text:?} is not a valid status range"),
                        fix,
                    ))
                }
            }
        } else {
            match code(&text) {
                Some(c) => (c, c),
                None => return Err(err(field, format!("{text:?} is not a status"), fix)),
            }
        };
        ranges.push(range);
    }
    if ranges.is_empty() {
        return Err(err(
            field,
            "is an empty list, so no status would match",
            "list at least one status, e.g. [\"5xx\"]",
        ));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Raw {
        limit: u32,
        #[serde(default)]
        name: String,
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse_config::<Raw>(br#"{"limit": 1, "limt": 2}"#).unwrap_err();
        assert_eq!(err.field, "limt");
        assert!(err.to_string().contains("check its spelling"), "{err}");
    }

    #[test]
    fn missing_fields_are_named() {
        let err = parse_config::<Raw>(br#"{"name": "x"}"#).unwrap_err();
        assert_eq!(err.field, "limit");
    }

    #[test]
    fn malformed_json_points_at_the_position() {
        let err = parse_config::<Raw>(b"{\"limit\": ").unwrap_err();
        assert_eq!(err.field, "<json>");
        assert!(err.problem.contains("line 1"), "{err}");
    }

    #[test]
    fn response_headers_name_the_bad_field() {
        let map =
            |k: &str, v: &str| std::collections::BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            response_headers("deny.headers", Some(&map("X-A", "1"))).unwrap(),
            vec![("x-a".to_string(), "1".to_string())]
        );
        assert_eq!(
            response_headers("deny.headers", Some(&map(":status", "1")))
                .unwrap_err()
                .field,
            "deny.headers"
        );
        assert_eq!(
            response_headers("deny.headers", Some(&map("a b", "1")))
                .unwrap_err()
                .field,
            "deny.headers"
        );
        assert_eq!(
            response_headers("deny.headers", Some(&map("x", "a\r\nb")))
                .unwrap_err()
                .field,
            "deny.headers.x"
        );
        assert!(response_headers("deny.headers", None).unwrap().is_empty());
    }

    #[test]
    fn non_utf8_is_rejected_not_panicked_on() {
        assert_eq!(
            parse_config::<Raw>(b"\xff\xfe").unwrap_err().field,
            "<json>"
        );
    }
}

/// Validates `key_prefix`: up to 64 of `[A-Za-z0-9_-]`; None or "" is the default (the
/// shared-data keys as they are).
pub fn key_prefix(raw: Option<&str>) -> Result<String, ConfigError> {
    let prefix = raw.unwrap_or("");
    if prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(err(
            "key_prefix",
            format!("{prefix:?} is not a valid key prefix"),
            "use up to 64 letters, digits, '_' or '-', e.g. \"team-a\"",
        ));
    }
    Ok(prefix.to_string())
}

#[cfg(test)]
mod key_prefix_tests {
    use super::key_prefix;

    #[test]
    fn accepts_names_and_refuses_separators() {
        assert_eq!(key_prefix(None).unwrap(), "");
        assert_eq!(key_prefix(Some("team-a_2")).unwrap(), "team-a_2");
        for bad in ["a.b", "a b", "ä", &"x".repeat(65)] {
            let e = key_prefix(Some(bad)).unwrap_err();
            assert_eq!(e.field, "key_prefix");
        }
    }
}
