//! Metric names: `edgewise.<filter>.<scope>.<what>`, with user-chosen parts (rule names,
//! upstreams) reduced to characters safe in Envoy stat names and Prometheus output.

/// Builds a metric name from parts, sanitizing each to `[a-z0-9_-]` (others become `_`).
pub fn metric_name(parts: &[&str]) -> String {
    let mut name = String::from("edgewise");
    for part in parts {
        name.push('.');
        if part.is_empty() {
            name.push('_');
        }
        name.extend(part.chars().map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '_',
        }));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_user_parts() {
        assert_eq!(
            metric_name(&["rate_limit", "Per API key!", "allowed"]),
            "edgewise.rate_limit.per_api_key_.allowed"
        );
        assert_eq!(metric_name(&["x", "", "y"]), "edgewise.x._.y");
        assert_eq!(metric_name(&["a.b"]), "edgewise.a_b");
    }
}
