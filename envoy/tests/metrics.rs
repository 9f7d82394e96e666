//! Labelled metrics through real Envoy 1.40 (2 workers): Edgewise's stat names carry their
//! labels in Istio's `label=.=value;.;` encoding, and the harness bootstrap's `stats_tags`
//! (the same block as every example) turn them into Prometheus labels on `/stats/prometheus`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_harness::{wasm_path, Backend, Envoy, EnvoyConfig, Route, Sample, WasmFilter};

const CHAIN: &str = r#"{
  "rate_limit": {"rules":[{"name":"Per-User","key":"header:x-user","limit":3,"window":"1m"}]},
  "response_cache": {},
  "weighted_router": {"routes":[{"name":"api","targets":[{"cluster":"api-v1","weight":1},{"cluster":"api_v1","weight":1}]}]},
  "circuit_breaker": {"upstream":"header:x-route-cluster","stats_upstreams":["api-v1","api_v1"],"trip":{"consecutive_failures":2}}
}"#;

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == wanted)
}

#[test]
fn prometheus_sees_edgewise_metrics_with_labels_and_no_encoded_names() {
    envoy_harness::build_edge_chain().unwrap();
    // Two clusters whose names differ only by '-' and '_': they must stay two series.
    let backends: Vec<Backend> = ["api-v1", "api_v1"]
        .iter()
        .map(|n| Backend::start(n).unwrap())
        .collect();
    let mut config = EnvoyConfig::proxy_to(backends[0].addr, 2)
        .routes(vec![Route::by_header("ours", "/", "x-route-cluster")])
        .filter(WasmFilter::new("edge_chain", wasm_path("edge_chain"), CHAIN).vm_id("edgewise"));
    for b in &backends {
        config = config.cluster(&b.name, vec![b.addr]);
    }
    let envoy = Envoy::start(&config).unwrap();
    // Every request fails upstream (500): both breakers open after 2 failures each; the
    // limiter allows 3 per user and denies the rest.
    let mut statuses = BTreeMap::new();
    for n in 0..8 {
        let user = format!("user-{}", n % 2);
        let r = envoy
            .request("GET", "/status/500", &[("x-user", &user)], b"")
            .unwrap();
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&429), Some(&2), "{statuses:?}");

    let samples = envoy.prometheus().unwrap();
    if std::env::var_os("EDGEWISE_DUMP_METRICS").is_some() {
        for s in &samples {
            if s.name.contains("wasm") || s.name.starts_with("edgewise") {
                println!("{} {:?} {}", s.name, s.labels, s.value);
            }
        }
    }
    let edgewise: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name.starts_with("edgewise_"))
        .collect();
    assert!(
        !edgewise.is_empty(),
        "no edgewise metrics on /stats/prometheus"
    );
    for s in &edgewise {
        assert!(
            !s.name.contains("=_=") && !s.name.contains("_=_"),
            "an encoded label left in a name: {s:?}"
        );
    }
    let value = |name: &str, labels: &[(&str, &str)]| {
        find(&samples, name, labels)
            .unwrap_or_else(|| {
                panic!(
                    "{name}{labels:?} missing; edgewise series: {:#?}",
                    edgewise
                        .iter()
                        .map(|s| (&s.name, &s.labels))
                        .collect::<Vec<_>>()
                )
            })
            .value
    };
    assert_eq!(
        value("edgewise_rate_limit_allowed", &[("rule", "Per-User")]),
        6.0
    );
    assert_eq!(
        value("edgewise_rate_limit_denied", &[("rule", "Per-User")]),
        2.0
    );
    let routed_to = |cluster: &str| {
        find(
            &samples,
            "edgewise_weighted_router_requests",
            &[("route", "api"), ("cluster", cluster)],
        )
        .map_or(0.0, |s| s.value)
    };
    assert_eq!(routed_to("api-v1") + routed_to("api_v1"), 6.0);
    let mut checked = 0;
    for upstream in ["api-v1", "api_v1"] {
        if routed_to(upstream) < 2.0 {
            continue; // a breaker defines its series when it first changes state
        }
        // Two failures in a row opened it (every request fails); one open period lasts
        // longer than this test. Gauge: 0 closed, 1 open, 2 half-open (README).
        assert_eq!(
            value("edgewise_circuit_breaker_state", &[("upstream", upstream)]),
            1.0
        );
        assert_eq!(
            value("edgewise_circuit_breaker_opened", &[("upstream", upstream)]),
            1.0
        );
        checked += 1;
    }
    assert!(checked > 0, "6 requests over 2 targets: one got at least 3");
    // Unlabelled metrics keep their plain names.
    assert!(find(&samples, "edgewise_response_cache_misses", &[]).is_some());

    // Every metric the alert rules and the Grafana dashboard query exists under that name
    // in what this Envoy exposes (the four filters have all been through a request).
    let exposed: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    let root = envoy_harness::workspace_root();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/edgewise.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let queried = metric_names_in(&text);
        assert!(queried.len() >= 5, "{file}: {queried:?}");
        for name in &queried {
            let found = match name.split_once(".+") {
                // A `{__name__=~"prefix.+suffix"}` selector: some exposed name matches.
                Some((prefix, suffix)) => exposed.iter().any(|e| {
                    e.len() > prefix.len() + suffix.len()
                        && e.starts_with(prefix)
                        && e.ends_with(suffix)
                }),
                None => exposed.contains(name.as_str()),
            };
            assert!(found, "{file} queries {name}, which Envoy does not expose");
        }
    }
}

/// Metric names in PromQL expressions inside `text`: identifiers starting `edgewise_` or
/// `envoy_` (and `__name__=~` patterns with `.+`), excluding label names.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let starts = (rest.starts_with("edgewise_") || rest.starts_with("envoy_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '+'))
                .unwrap_or(rest.len());
            let name = rest[..len].trim_end_matches('.');
            names.insert(name.to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    // `envoy_wasm_<plugin>_vm_reload` in prose is documentation, not a query.
    names.retain(|n| !n.contains('<') && !n.ends_with('_'));
    names
}

/// The alert rules pass `promtool check rules` and their unit tests (`promtool test
/// rules`): each alert fires on the series that should trigger it and not on its
/// healthy neighbours. promtool is Debian's `prometheus` package (installed by
/// `cargo xtask setup`).
#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let dir = envoy_harness::workspace_root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"][..],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (apt-get install prometheus; cargo xtask setup does)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_prometheus_text_parser_reads_labels_and_escapes() {
    let samples =
        envoy_harness::parse_prometheus("# TYPE a counter\na{x=\"1\",y=\"q\\\"uote\"} 3\nb 4.5\n");
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].labels["y"], "q\"uote");
    assert_eq!(samples[1].value, 4.5);
}
