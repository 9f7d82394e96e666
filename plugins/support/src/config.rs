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
    serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        // serde names the offending field in its message ("unknown field `x`", "missing
        // field `y`"); surface it as the field.
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field"))
            .map(str::to_string)
            .unwrap_or_else(|| "<json>".into());
        let fix = if message.contains("unknown field") {
            "remove it or check its spelling against the README config reference"
        } else if message.contains("missing field") {
            "add it; see the README config reference"
        } else {
            "fix the JSON at the given line and column"
        };
        ConfigError::new(field, message, fix)
    })
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
    fn non_utf8_is_rejected_not_panicked_on() {
        assert_eq!(
            parse_config::<Raw>(b"\xff\xfe").unwrap_err().field,
            "<json>"
        );
    }
}
