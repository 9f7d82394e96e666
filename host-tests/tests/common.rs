//! Helpers shared by the host-tests integration tests: the probe's options and requests.
#![allow(dead_code)]

use host_tests::{Headers, LogLevel, PluginOptions, World};

pub const VM_ID: &str = "probe-vm";

pub fn probe_options() -> PluginOptions {
    PluginOptions::new()
        .vm_id(VM_ID)
        .plugin_name("probe")
        .route_name("probe-route")
        .cluster_name("backend")
        .configuration("probe-config")
}

/// The request the parity tests also send to Envoy for `scenario`.
pub fn probe_request(id: &str, scenario: &str, method: &str, path: &str) -> Headers {
    Headers::from([
        (":method", method),
        (":path", path),
        (":authority", "probe.test"),
        ("x-probe", scenario),
        ("x-probe-id", id),
    ])
}

/// The probe's lines for one request id, in order, at info level and above.
pub fn probe_lines(world: &World, id: &str) -> Vec<String> {
    let tag = format!("PROBE[{id}] ");
    world
        .logs()
        .into_iter()
        .filter(|l| l.level >= LogLevel::Info && l.message.starts_with(&tag))
        .map(|l| l.message)
        .collect()
}

pub fn line<'a>(lines: &'a [String], event: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.split(' ').nth(1) == Some(event))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no `{event}` line in {lines:#?}"))
}
