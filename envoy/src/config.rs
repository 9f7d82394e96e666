//! Generates Envoy bootstrap configs (JSON, so no YAML 1.1 surprises): one loopback
//! listener with our wasm filters in order, routes, and static clusters.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{json, Value};

/// One `envoy.filters.http.wasm` entry.
#[derive(Clone, Debug)]
pub struct WasmFilter {
    /// Plugin name (Envoy's `config.name`, the `plugin_name` property).
    pub name: String,
    pub vm_id: String,
    pub wasm: PathBuf,
    /// The JSON (or any string) handed to `on_configure`.
    pub configuration: String,
    /// What Envoy does with a VM that failed (trapped): `FAIL_RELOAD` (default, as in the
    /// example configs: a new VM, state kept in shared data), `FAIL_CLOSED` (503) or
    /// `FAIL_OPEN` (skip the filter).
    pub failure_policy: &'static str,
    /// Load the module from this HTTP URI through cluster `.1` with sha256 `.2` (Envoy's
    /// `vm_config.code.remote`) instead of the local file.
    pub remote: Option<(String, String, String)>,
}

impl WasmFilter {
    pub fn new(name: &str, wasm: PathBuf, configuration: &str) -> WasmFilter {
        WasmFilter {
            name: name.into(),
            vm_id: name.into(),
            wasm,
            configuration: configuration.into(),
            failure_policy: "FAIL_RELOAD",
            remote: None,
        }
    }
    /// Loads the module from `uri` (served by `cluster`), checked against `sha256`.
    pub fn remote(mut self, uri: &str, cluster: &str, sha256: &str) -> Self {
        self.remote = Some((uri.into(), cluster.into(), sha256.into()));
        self
    }
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.into();
        self
    }
}

/// A route: requests whose path starts with `prefix` go to `cluster`, or to the cluster
/// named by `cluster_header` when set.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    pub prefix: String,
    pub cluster: String,
    pub cluster_header: Option<String>,
    /// Envoy's native weighted_clusters (cluster, weight) instead of one cluster.
    pub weighted: Vec<(String, u32)>,
    /// Answer directly with (status, body): no upstream at all.
    pub direct_response: Option<(u16, String)>,
    pub timeout_ms: u64,
}

impl Route {
    pub fn to_cluster(name: &str, prefix: &str, cluster: &str) -> Route {
        Route {
            name: name.into(),
            prefix: prefix.into(),
            cluster: cluster.into(),
            cluster_header: None,
            weighted: Vec::new(),
            direct_response: None,
            timeout_ms: 15_000,
        }
    }

    /// A route to the cluster named by a request header (set by the weighted router).
    pub fn by_header(name: &str, prefix: &str, header: &str) -> Route {
        Route {
            cluster_header: Some(header.into()),
            ..Route::to_cluster(name, prefix, "")
        }
    }

    /// A route Envoy answers itself (`direct_response`).
    pub fn direct(name: &str, prefix: &str, status: u16, body: &str) -> Route {
        Route {
            direct_response: Some((status, body.into())),
            ..Route::to_cluster(name, prefix, "")
        }
    }

    /// A route using Envoy's native weighted_clusters.
    pub fn native_weighted(name: &str, prefix: &str, clusters: &[(&str, u32)]) -> Route {
        Route {
            weighted: clusters.iter().map(|(c, w)| (c.to_string(), *w)).collect(),
            ..Route::to_cluster(name, prefix, "")
        }
    }
}

#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    pub workers: usize,
    pub filters: Vec<WasmFilter>,
    pub routes: Vec<Route>,
    pub clusters: Vec<(String, Vec<SocketAddr>)>,
    /// Extra native HTTP filters (JSON objects) placed before the wasm filters.
    pub native_filters: Vec<Value>,
    /// Pin Envoy to this CPU (taskset), for benchmarks.
    pub pin_cpu: Option<u32>,
    /// Extra fields for every cluster (e.g. `outlier_detection`), merged into its JSON.
    pub cluster_options: Option<Value>,
    /// Serve the listener through file-based LDS on this port (see `Envoy::update_listener`)
    /// instead of a static listener on an ephemeral port.
    pub lds_port: Option<u16>,
    /// Clusters that speak HTTP/2 to their endpoints (gRPC services).
    pub http2_clusters: Vec<String>,
}

impl EnvoyConfig {
    /// Envoy with `workers` worker threads, proxying everything to `backend`.
    pub fn proxy_to(backend: SocketAddr, workers: usize) -> EnvoyConfig {
        EnvoyConfig {
            workers,
            filters: Vec::new(),
            routes: vec![Route::to_cluster("default-route", "/", "backend")],
            clusters: vec![("backend".into(), vec![backend])],
            native_filters: Vec::new(),
            pin_cpu: None,
            cluster_options: None,
            lds_port: None,
            http2_clusters: Vec::new(),
        }
    }

    /// A cluster of gRPC endpoints (HTTP/2), e.g. a rate limit service.
    pub fn grpc_cluster(mut self, name: &str, endpoints: Vec<SocketAddr>) -> Self {
        self.clusters.push((name.into(), endpoints));
        self.http2_clusters.push(name.into());
        self
    }

    /// The listener comes from a watched file (`dynamic_resources.lds_config` with a
    /// `path_config_source`), on a free port picked now: Envoy applies a rewritten file as a
    /// live listener update, as a control plane's LDS push would.
    pub fn with_lds(mut self) -> Self {
        self.lds_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok();
        self
    }

    /// Adds a native HTTP filter (its JSON) before the wasm filters.
    pub fn native_filter(mut self, filter: Value) -> Self {
        self.native_filters.push(filter);
        self
    }

    pub fn filter(mut self, filter: WasmFilter) -> Self {
        self.filters.push(filter);
        self
    }

    pub fn route_name(mut self, name: &str) -> Self {
        if let Some(route) = self.routes.last_mut() {
            route.name = name.into();
        }
        self
    }

    /// Replaces the routes (first match wins).
    pub fn routes(mut self, routes: Vec<Route>) -> Self {
        self.routes = routes;
        self
    }

    pub fn cluster(mut self, name: &str, endpoints: Vec<SocketAddr>) -> Self {
        self.clusters.push((name.into(), endpoints));
        self
    }

    /// The bootstrap Envoy starts with (with LDS, the listener comes from `lds.json` beside
    /// it; see `bootstrap_and_lds`).
    pub fn to_json(&self) -> Value {
        self.bootstrap_and_lds(std::path::Path::new("lds.json")).0
    }

    /// The bootstrap with the listener also under a top-level `listener` key.
    fn full_json(&self) -> Value {
        let mut http_filters: Vec<Value> = self.native_filters.clone();
        for f in &self.filters {
            http_filters.push(json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": f.name,
                        "root_id": "",
                        "failure_policy": f.failure_policy,
                        "vm_config": {
                            "vm_id": f.vm_id,
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": match &f.remote {
                                None => json!({ "local": { "filename": f.wasm.to_string_lossy() } }),
                                Some((uri, cluster, sha256)) => json!({ "remote": {
                                    "http_uri": { "uri": uri, "cluster": cluster, "timeout": "10s" },
                                    "sha256": sha256,
                                    "retry_policy": { "num_retries": 3 }
                                } }),
                            }
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": f.configuration
                        }
                    }
                }
            }));
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
        }));
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut action = json!({ "timeout": format!("{}s", r.timeout_ms as f64 / 1000.0) });
                if !r.weighted.is_empty() {
                    let clusters: Vec<Value> = r.weighted.iter().map(|(c, w)| json!({ "name": c, "weight": w })).collect();
                    action["weighted_clusters"] = json!({ "clusters": clusters });
                } else {
                    match &r.cluster_header {
                        Some(header) => action["cluster_header"] = json!(header),
                        None => action["cluster"] = json!(r.cluster),
                    }
                }
                if let Some((status, body)) = &r.direct_response {
                    return json!({ "name": r.name, "match": { "prefix": r.prefix }, "direct_response": { "status": status, "body": { "inline_string": body } } });
                }
                json!({ "name": r.name, "match": { "prefix": r.prefix }, "route": action })
            })
            .collect();
        let clusters: Vec<Value> = self
            .clusters
            .iter()
            .map(|(name, endpoints)| {
                let lb_endpoints: Vec<Value> = endpoints
                    .iter()
                    .map(|a| json!({ "endpoint": { "address": { "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } } } }))
                    .collect();
                let mut cluster = json!({
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": lb_endpoints } ] }
                });
                if let (Some(Value::Object(extra)), Value::Object(fields)) =
                    (&self.cluster_options, &mut cluster)
                {
                    fields.extend(extra.clone());
                }
                if self.http2_clusters.iter().any(|c| c == name) {
                    cluster["typed_extension_protocol_options"] = json!({
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": { "http2_protocol_options": {} }
                        }
                    });
                }
                cluster
            })
            .collect();
        let listener = json!({
                    "name": "ingress",
                    "address": { "socket_address": { "address": "127.0.0.1", "port_value": self.lds_port.unwrap_or(0) } },
                    "filter_chains": [{
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": "ingress",
                                "route_config": { "name": "local", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] },
                                "http_filters": http_filters
                            }
                        }]
                    }]
        });
        json!({
            "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
            "stats_config": stats_config(),
            "static_resources": {
                "listeners": if self.lds_port.is_some() { json!([]) } else { json!([listener]) },
                "clusters": clusters
            },
            "listener": listener
        })
    }

    /// The bootstrap (and, with LDS, the listener resource file's contents) for Envoy.
    pub fn bootstrap_and_lds(&self, lds_path: &std::path::Path) -> (Value, Option<Value>) {
        let mut all = self.full_json();
        let listener = all
            .as_object_mut()
            .and_then(|o| o.remove("listener"))
            .unwrap_or(Value::Null);
        if self.lds_port.is_none() {
            return (all, None);
        }
        if let Some(o) = all.as_object_mut() {
            o.insert(
                "dynamic_resources".into(),
                json!({ "lds_config": { "path_config_source": { "path": lds_path.to_string_lossy() }, "resource_api_version": "V3" } }),
            );
            // Dynamic resources need a node identity.
            o.insert(
                "node".into(),
                json!({ "id": "edgewise-test", "cluster": "edgewise" }),
            );
        }
        let mut resource = listener;
        if let Some(o) = resource.as_object_mut() {
            o.insert(
                "@type".into(),
                json!("type.googleapis.com/envoy.config.listener.v3.Listener"),
            );
        }
        (all, Some(json!({ "resources": [resource] })))
    }
}

/// The `stats_config` every Edgewise bootstrap carries (the examples and compose configs
/// have the same block): one tag per label Edgewise encodes in its stat names, with the
/// regex Istio generates for `extraStatTags`.
pub fn stats_config() -> Value {
    let tags: Vec<Value> = ["upstream", "rule", "route", "cluster"]
        .iter()
        .map(|label| json!({ "tag_name": label, "regex": format!("({label}=\\.=(.*?);\\.;)") }))
        .collect();
    json!({ "stats_tags": tags })
}
