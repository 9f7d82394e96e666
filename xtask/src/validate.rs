//! `cargo xtask validate FILE [FILTER]`: checks plugin configurations with the filters' own
//! validators — the same code `on_configure` runs — before Envoy sees them: a JSON plugin
//! configuration (FILTER names the filter), or every Wasm filter of an Envoy YAML config
//! (each filter known by its module file name or remote URI), printing the field and the fix
//! on error.

use anyhow::{bail, Context, Result};

/// The filters and edge_chain's sections, by module name.
const FILTERS: [&str; 5] = [
    "rate_limit",
    "response_cache",
    "circuit_breaker",
    "weighted_router",
    "edge_chain",
];

/// Checks one plugin configuration of `filter`; Err carries the validator's message.
pub fn check(filter: &str, json: &[u8]) -> std::result::Result<(), String> {
    let one = |name: &str, bytes: &[u8]| -> std::result::Result<(), String> {
        match name {
            "rate_limit" => rate_limit::Config::from_json(bytes).map(|_| ()),
            "response_cache" => response_cache::config::Config::from_json(bytes).map(|_| ()),
            "circuit_breaker" => circuit_breaker::Config::from_json(bytes).map(|_| ()),
            "weighted_router" => weighted_router::Config::from_json(bytes).map(|_| ()),
            other => return Err(format!("unknown filter {other:?}")),
        }
        .map_err(|e| e.to_string())
    };
    if filter != "edge_chain" {
        return one(filter, json);
    }
    // edge_chain: each section is that filter's own configuration.
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(sections) = value.as_object() else {
        return Err("edge_chain's configuration must be an object of filter sections".into());
    };
    if sections.is_empty() {
        return Err("edge_chain's configuration names no filter".into());
    }
    for (name, section) in sections {
        if !FILTERS[..4].contains(&name.as_str()) {
            return Err(format!(
                "`{name}` is not a section; use rate_limit, response_cache, weighted_router or circuit_breaker"
            ));
        }
        one(name, section.to_string().as_bytes()).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Every Wasm filter of an Envoy YAML/JSON config: (module name, its configuration JSON).
pub fn wasm_filters(config: &serde_yaml::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    walk(config, &mut found);
    found
}

fn walk(value: &serde_yaml::Value, found: &mut Vec<(String, String)>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            let get = |k: &str| map.get(serde_yaml::Value::from(k));
            if let (Some(vm), Some(configuration)) = (get("vm_config"), get("configuration")) {
                let module = vm.get("code").map(module_of_code).unwrap_or_default();
                let json = configuration
                    .get("value")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                found.push((module, json));
                return;
            }
            for v in map.values() {
                walk(v, found);
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| walk(v, found)),
        _ => {}
    }
}

/// The module a `vm_config.code` loads: the local file's stem, or the last segment of a
/// remote URI — a released name (`edge_chain-0.2.0.wasm`) or the compose templates'
/// placeholder (`{{edge_chain.file}}`) — without its version.
fn module_of_code(code: &serde_yaml::Value) -> String {
    let path = code
        .get("local")
        .and_then(|l| l.get("filename"))
        .or_else(|| {
            code.get("remote")
                .and_then(|r| r.get("http_uri"))
                .and_then(|h| h.get("uri"))
        })
        .and_then(|f| f.as_str())
        .unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    let last = last
        .trim_start_matches("{{")
        .trim_end_matches("}}")
        .trim_end_matches(".file")
        .trim_end_matches(".wasm");
    // `<module>-<version>`: the module names have no '-'.
    last.split('-').next().unwrap_or("").to_string()
}

/// The command: prints one line per configuration checked; fails if any is invalid.
pub fn run(path: &str, filter: Option<&str>) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let configs: Vec<(String, String)> = match filter {
        Some(f) => vec![(f.to_string(), text)],
        None => {
            let yaml: serde_yaml::Value =
                serde_yaml::from_str(&text).with_context(|| format!("{path}: not YAML/JSON"))?;
            let found = wasm_filters(&yaml);
            if found.is_empty() {
                bail!("{path}: no Wasm filter found; for a plugin configuration give the filter: cargo xtask validate FILE rate_limit");
            }
            found
        }
    };
    let mut failed = 0;
    for (module, json) in &configs {
        if !FILTERS.contains(&module.as_str()) {
            println!("skip  {path}: {module:?} is not an Edgewise module");
            continue;
        }
        match check(module, json.as_bytes()) {
            Ok(()) => println!("ok    {path}: {module}"),
            Err(e) => {
                failed += 1;
                println!("error {path}: {module}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} invalid configuration(s) in {path}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Every example and compose Envoy config carries only valid plugin configurations.
    #[test]
    fn every_shipped_envoy_config_is_valid() {
        let mut files: Vec<_> = std::fs::read_dir(root().join("envoy/examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.push(root().join("envoy/compose/edge.yaml"));
        files.push(root().join("envoy/compose/front.yaml"));
        let mut checked = 0;
        for file in files {
            // The compose templates' per-Envoy name, as the cluster renders it.
            let text = std::fs::read_to_string(&file)
                .unwrap()
                .replace("{{node}}", "edge-1");
            let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            for (module, json) in wasm_filters(&yaml) {
                check(&module, json.as_bytes())
                    .unwrap_or_else(|e| panic!("{file:?} {module}: {e}"));
                checked += 1;
            }
        }
        assert!(
            checked >= 7,
            "found only {checked} Wasm filter configurations"
        );
    }

    /// The module a platform manifest loads, from its image or file URL:
    /// `oci://…/edgewise/rate-limit:0.2.0`, `…/edge-chain:0.2.0`, `…/rate_limit-0.2.0.wasm`.
    fn module_of_url(url: &str) -> String {
        let last = url.rsplit('/').next().unwrap_or("");
        let name = last.split(':').next().unwrap_or("");
        let name = name.trim_end_matches(".wasm");
        let name = name.split("-0.").next().unwrap_or(name);
        name.replace('-', "_")
    }

    /// What Istio and Envoy Gateway hand the filter: the YAML pluginConfig as a protobuf
    /// Struct printed as JSON, where every number is a double and whole ones print as
    /// integers.
    fn as_struct_json(yaml: &serde_yaml::Value) -> serde_json::Value {
        match yaml {
            serde_yaml::Value::Number(n) => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                    serde_json::json!(f as i64)
                } else {
                    serde_json::json!(f)
                }
            }
            serde_yaml::Value::Mapping(m) => serde_json::Value::Object(
                m.iter()
                    .map(|(k, v)| (k.as_str().unwrap_or("").to_string(), as_struct_json(v)))
                    .collect(),
            ),
            serde_yaml::Value::Sequence(items) => {
                serde_json::Value::Array(items.iter().map(as_struct_json).collect())
            }
            other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Every plugin configuration inside the Istio WasmPlugin and Envoy Gateway
    /// EnvoyExtensionPolicy manifests passes the filters' own parser, after the YAML → Struct
    /// → JSON trip those platforms make.
    #[test]
    fn platform_manifests_carry_valid_plugin_configurations() {
        let mut checked = Vec::new();
        for dir in ["deploy/istio", "deploy/envoy-gateway"] {
            for entry in std::fs::read_dir(root().join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                for doc in serde_yaml::Deserializer::from_str(&text) {
                    let doc = serde_yaml::Value::deserialize(doc).unwrap();
                    let spec = &doc["spec"];
                    let plugins: Vec<(String, &serde_yaml::Value)> = match doc["kind"].as_str() {
                        Some("WasmPlugin") => vec![(
                            module_of_url(spec["url"].as_str().unwrap_or("")),
                            &spec["pluginConfig"],
                        )],
                        Some("EnvoyExtensionPolicy") => spec["wasm"]
                            .as_sequence()
                            .unwrap()
                            .iter()
                            .map(|w| {
                                let code = &w["code"];
                                let url = code["image"]["url"]
                                    .as_str()
                                    .or(code["http"]["url"].as_str())
                                    .unwrap_or("");
                                (module_of_url(url), &w["config"])
                            })
                            .collect(),
                        _ => continue,
                    };
                    for (module, config) in plugins {
                        let json = as_struct_json(config).to_string();
                        check(&module, json.as_bytes())
                            .unwrap_or_else(|e| panic!("{path:?} {module}: {e}\n{json}"));
                        checked.push(module.clone());
                    }
                }
            }
        }
        checked.sort();
        checked.dedup();
        assert_eq!(
            checked,
            [
                "circuit_breaker",
                "edge_chain",
                "rate_limit",
                "response_cache",
                "weighted_router"
            ]
            .map(String::from)
        );
    }

    #[test]
    fn whole_struct_numbers_still_parse_and_fractions_are_refused() {
        let yaml: serde_yaml::Value =
            serde_yaml::from_str("rules: [{name: a, limit: 100.0, window: 1m}]").unwrap();
        let json = as_struct_json(&yaml).to_string();
        assert!(json.contains("\"limit\":100"), "{json}");
        check("rate_limit", json.as_bytes()).unwrap();
        let yaml: serde_yaml::Value =
            serde_yaml::from_str("rules: [{name: a, limit: 2.5, window: 1m}]").unwrap();
        let json = as_struct_json(&yaml).to_string();
        assert!(check("rate_limit", json.as_bytes()).is_err(), "{json}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = check(
            "rate_limit",
            br#"{"rules":[{"name":"a","limit":0,"window":"1s"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("`rules[0].limit`"), "{err}");
        let err = check(
            "edge_chain",
            br#"{"circuit_breaker":{"trip":{"failure_rate":2}}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("circuit_breaker: ") && err.contains("trip.failure_rate"),
            "{err}"
        );
        assert!(check("edge_chain", br#"{"router":{}}"#)
            .unwrap_err()
            .contains("not a section"));
    }
}
