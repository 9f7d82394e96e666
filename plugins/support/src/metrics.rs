//! Metric names: `edgewise.<filter>.<what>`, with labels (upstream, rule, route, cluster)
//! carried in the name in Istio's `name=.=value;.;` encoding for Envoy's tag extraction.
//!
//! Envoy stat names have no labels of their own; Envoy turns parts of a name into tags with
//! `stats_config.stats_tags` regexes, and Istio generates exactly the regex
//! `(NAME=\.=(.*?);\.;)` for every entry of `extraStatTags`. Encoding labels that way means
//! one set of names works in plain Envoy (the `stats_tags` block shipped in every example)
//! and in Istio (`extraStatTags: [upstream, rule, route, cluster]`) unchanged, and Prometheus
//! sees e.g. `edgewise_circuit_breaker_opened{upstream="api-v1"}`.

/// The label names Edgewise encodes, for the `stats_tags` block of an Envoy bootstrap.
pub const LABELS: [&str; 4] = ["upstream", "rule", "route", "cluster"];

/// `edgewise.<filter>.<what>` for a metric without labels; each part is reduced to
/// `[a-z0-9_-]` (others become `_`).
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

/// `edgewise.<filter>.<label>=.=<value>;.;…<what>`: the labels sit between the filter and
/// the metric, so extracting every label leaves `edgewise.<filter>.<what>` with no stray dot.
/// Values keep their case and `.`/`-`/`_`/`:` (so `api-v1`, `api_v1` and `API-v1` stay three
/// series); any other character, including the encoding's own `=` and `;`, becomes `_`, and
/// an empty value becomes `_`.
pub fn labelled_metric_name(filter: &str, labels: &[(&str, &str)], what: &str) -> String {
    let mut name = metric_name(&[filter]);
    name.push('.');
    for (label, value) in labels {
        name.push_str(label);
        name.push_str("=.=");
        if value.is_empty() {
            name.push('_');
        }
        name.extend(value.chars().map(|c| match c {
            c @ ('a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' | '.' | ':') => c,
            _ => '_',
        }));
        name.push_str(";.;");
    }
    name.push_str(what);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_parts() {
        assert_eq!(
            metric_name(&["rate_limit", "Per API key!", "allowed"]),
            "edgewise.rate_limit.per_api_key_.allowed"
        );
        assert_eq!(metric_name(&["x", "", "y"]), "edgewise.x._.y");
        assert_eq!(metric_name(&["a.b"]), "edgewise.a_b");
    }

    #[test]
    fn encodes_labels_last_in_istio_form() {
        assert_eq!(
            labelled_metric_name("circuit_breaker", &[("upstream", "api-v1")], "opened"),
            "edgewise.circuit_breaker.upstream=.=api-v1;.;opened"
        );
        assert_eq!(
            labelled_metric_name(
                "weighted_router",
                &[("route", "API"), ("cluster", "api.v1")],
                "requests"
            ),
            "edgewise.weighted_router.route=.=API;.;cluster=.=api.v1;.;requests"
        );
    }

    #[test]
    fn values_cannot_break_the_encoding_and_do_not_collide_by_case_or_dash() {
        assert_eq!(
            labelled_metric_name("f", &[("rule", "a;.;b=.=c d")], "m"),
            "edgewise.f.rule=.=a_._b_._c_d;.;m"
        );
        assert_eq!(
            labelled_metric_name("f", &[("rule", "")], "m"),
            "edgewise.f.rule=.=_;.;m"
        );
        let names: std::collections::HashSet<_> = ["api-v1", "api_v1", "API-v1"]
            .iter()
            .map(|v| labelled_metric_name("f", &[("upstream", v)], "m"))
            .collect();
        assert_eq!(names.len(), 3);
    }
}
