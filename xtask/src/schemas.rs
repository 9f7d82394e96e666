//! `cargo xtask schemas`: a JSON Schema (draft 2020-12) per filter configuration and for
//! edge_chain's, generated from the configuration types the filters parse (schemars) and
//! checked in under `schemas/`; a test fails when they drift from the types.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::{json, Value};

/// The filters, in edge order, with their configuration type's schema.
fn filter_schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "rate_limit",
            schema_value(schemars::schema_for!(rate_limit::config::RawConfig)),
        ),
        (
            "response_cache",
            schema_value(schemars::schema_for!(response_cache::config::RawConfig)),
        ),
        (
            "weighted_router",
            schema_value(schemars::schema_for!(weighted_router::config::RawConfig)),
        ),
        (
            "circuit_breaker",
            schema_value(schemars::schema_for!(circuit_breaker::config::RawConfig)),
        ),
    ]
}

fn schema_value(schema: schemars::Schema) -> Value {
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

/// Every schema file: `<filter>.schema.json` and `edge_chain.schema.json`, whose sections
/// embed the four (each an embedded resource with its own `$id`, so its `$defs` stay its
/// own).
pub fn generate() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut sections = serde_json::Map::new();
    for (name, mut schema) in filter_schemas() {
        if let Value::Object(o) = &mut schema {
            o.insert("$id".into(), json!(format!("{name}.schema.json")));
            o.insert(
                "title".into(),
                json!(format!("Edgewise {name} configuration")),
            );
            o.insert(
                "description".into(),
                json!(format!(
                    "The JSON handed to {name}.wasm (plugin configuration). Reference: docs/{name}.md."
                )),
            );
        }
        files.push((format!("{name}.schema.json"), pretty(&schema)));
        let mut embedded = schema.clone();
        if let Value::Object(o) = &mut embedded {
            o.remove("$schema");
        }
        sections.insert(name.to_string(), embedded);
    }
    let chain = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "edge_chain.schema.json",
        "title": "Edgewise edge_chain configuration",
        "description": "The JSON handed to edge_chain.wasm: one optional section per filter, each exactly that filter's own configuration, run in the order rate_limit, weighted_router, response_cache, circuit_breaker (the cache keys on the cluster the router chose). Reference: docs/edge_chain.md.",
        "type": "object",
        "additionalProperties": false,
        "minProperties": 1,
        "properties": sections,
    });
    files.push(("edge_chain.schema.json".into(), pretty(&chain)));
    files
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

pub fn dir() -> PathBuf {
    envoy_harness::workspace_root().join("schemas")
}

pub fn run() -> Result<()> {
    std::fs::create_dir_all(dir())?;
    for (file, text) in generate() {
        std::fs::write(dir().join(&file), text)?;
        println!("  schemas/{file}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_schemas_match_the_config_types() {
        for (file, text) in generate() {
            let checked_in = std::fs::read_to_string(dir().join(&file))
                .unwrap_or_else(|e| panic!("schemas/{file}: {e} (run cargo xtask schemas)"));
            assert!(
                checked_in == text,
                "schemas/{file} differs from the configuration types: run cargo xtask schemas"
            );
        }
    }

    #[test]
    fn schemas_refuse_unknown_fields_and_name_every_option() {
        let files = generate();
        let rate_limit: Value = serde_json::from_str(&files[0].1).unwrap();
        assert_eq!(rate_limit["additionalProperties"], json!(false));
        for option in ["rules", "mode", "client_ip", "hash_seed", "key_prefix"] {
            assert!(
                rate_limit["properties"].get(option).is_some(),
                "rate_limit schema lacks {option}"
            );
        }
        assert_eq!(rate_limit["required"], json!(["rules"]));
        let chain: Value = serde_json::from_str(&files[4].1).unwrap();
        assert_eq!(
            chain["properties"]["circuit_breaker"]["$id"],
            json!("circuit_breaker.schema.json")
        );
    }
}
