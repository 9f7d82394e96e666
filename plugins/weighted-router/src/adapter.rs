//! The proxy-wasm adapter: selects the cluster for each request and names it in the
//! cluster header (Envoy clears its route cache when a filter sets a request header, so a
//! `cluster_header` route follows it); least_requests in-flight counts are released when
//! the stream ends, however it ends.

use std::cell::RefCell;
use std::rc::Rc;

use edgewise_support::abi;
use edgewise_support::breaker_state::unavailable;
use edgewise_support::wasm::{
    install_panic_hook, load_config, log, now_nanos, Metric, RequestHeaders, SharedData,
};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

use crate::config::Config;
use crate::{acquire_least, release_least, select, shared_cursor, Env, Reason};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(not(feature = "embedded"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root());
}}

/// This filter's root context, for this module's entry point or a composed module.
pub fn new_root() -> Box<dyn RootContext> {
    Box::new(RouterRoot { shared: None })
}

struct RouteMetrics {
    requests: Vec<Metric>,
    failovers: Metric,
    overrides: Metric,
}

struct Shared {
    /// Shared data under the configured `key_prefix`.
    store: SharedData,
    config: Config,
    metrics: Vec<RouteMetrics>,
    /// Per-worker round-robin positions, one per route (reset by a config update).
    cursors: RefCell<Vec<u64>>,
    rng: RefCell<u64>,
}

struct RouterRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for RouterRoot {}

impl RootContext for RouterRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        install_panic_hook("weighted_router", VERSION);
        true
    }

    /// Only for deferred metrics (`metrics_flush`): the router has no timed work.
    fn on_tick(&mut self) {
        edgewise_support::wasm::tick();
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        // Before the configuration compiles: it may hash (breaker identities, routes).
        edgewise_support::wasm::init_hash_seed();
        let Some(config) = load_config("weighted_router", Config::from_json) else {
            return false;
        };
        let metrics = config
            .routes
            .iter()
            .map(|r| RouteMetrics {
                requests: r
                    .targets
                    .iter()
                    .map(|t| {
                        Metric::counter_flushed_every(&t.metric_requests, config.metrics_flush)
                    })
                    .collect(),
                failovers: Metric::counter_flushed_every(&r.metric_failovers, config.metrics_flush),
                overrides: Metric::counter_flushed_every(&r.metric_overrides, config.metrics_flush),
            })
            .collect();
        let seed = now_nanos().unwrap_or(0x5eed) | 1;
        log(
            LogLevel::Info,
            &format!(
                "weighted_router {VERSION}: {} route(s)",
                config.routes.len()
            ),
        );
        let routes = config.routes.len();
        self.shared = Some(Rc::new(Shared {
            store: SharedData::with_prefix(&config.key_prefix),
            config,
            metrics,
            cursors: RefCell::new(vec![0; routes]),
            rng: RefCell::new(seed),
        }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RouterStream {
            shared: self.shared.clone(),
            in_flight: None,
        }))
    }
}

struct RouterStream {
    shared: Option<Rc<Shared>>,
    /// (route, target, when) counted in flight by least_requests, released at stream end.
    in_flight: Option<(usize, usize, u64)>,
}

impl Context for RouterStream {
    fn on_done(&mut self) -> bool {
        if let (Some(shared), Some((route, target, taken_at))) =
            (&self.shared, self.in_flight.take())
        {
            if let Some(route) = shared.config.routes.get(route) {
                let now = now_nanos().unwrap_or(taken_at);
                release_least(&shared.store, route, target, taken_at, now);
            }
        }
        true
    }
}

impl HttpContext for RouterStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let config = &shared.config;
        // The clock is read only if a failover route asks about a breaker, or least_requests
        // counts a request (once either way).
        let now: std::cell::Cell<Option<u64>> = std::cell::Cell::new(None);
        let clock = || {
            let value = now.get().unwrap_or_else(|| now_nanos().unwrap_or(0));
            now.set(Some(value));
            value
        };
        let mut request = RequestHeaders::default();
        // The least_requests target counted in flight (always on the selected route).
        let mut acquired: Option<usize> = None;
        let mut client_ip = || {
            let peer = edgewise_support::wasm::property(&["source", "address"])?;
            let text = String::from_utf8(peer).ok()?;
            let ip = text
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or(text);
            Some(ip.into_bytes())
        };
        let mut cursor = |route: &crate::config::Route| -> u64 {
            let index = route.index;
            if route.shared_cursor {
                if let Some(n) = shared_cursor(&shared.store, route) {
                    return n;
                }
            }
            let mut cursors = shared.cursors.borrow_mut();
            let n = cursors.get(index).copied().unwrap_or(0);
            if let Some(c) = cursors.get_mut(index) {
                *c = n.wrapping_add(1);
            }
            n
        };
        let mut random = || {
            let mut x = *shared.rng.borrow();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *shared.rng.borrow_mut() = x;
            x
        };
        // Skipped: open and not yet due for probing, half-open with every probe place taken,
        // or its bulkhead full (the request would get the breaker's fallback while a healthy
        // target exists). A half-open target with places left keeps its share, so probes
        // reach it.
        let mut is_open = |cluster: &str| {
            unavailable(
                &shared.store,
                cluster.as_bytes(),
                config.breaker_slots,
                clock(),
            )
        };
        let mut least = |route: &crate::config::Route, allowed: &dyn Fn(usize) -> bool| {
            let pick = acquire_least(&shared.store, route, allowed, clock());
            if let Some(target) = pick {
                acquired = Some(target);
            }
            pick
        };
        let selection = {
            let mut env = Env {
                client_ip: &mut client_ip,
                cursor: &mut cursor,
                random: &mut random,
                is_open: &mut is_open,
                acquire_least: &mut least,
            };
            select(config, &mut request, &mut env)
        };
        match selection {
            Some(selection) => {
                abi::replace_map_value(
                    MapType::HttpRequestHeaders as u32,
                    &config.cluster_header,
                    selection.cluster.as_bytes(),
                );
                let metrics = &shared.metrics[selection.route];
                if let Some(target) = selection.target {
                    if let Some(m) = metrics.requests.get(target) {
                        m.increment(1);
                    }
                }
                match selection.reason {
                    Reason::Failover => metrics.failovers.increment(1),
                    Reason::Override => metrics.overrides.increment(1),
                    Reason::Picked | Reason::HashKeyMissing => {}
                }
                if let Some(target) = acquired {
                    self.in_flight = Some((selection.route, target, now.get().unwrap_or(0)));
                }
            }
            None => {
                // No route of ours: a client must not pick a cluster by sending the header.
                abi::remove_map_value(MapType::HttpRequestHeaders as u32, &config.cluster_header);
            }
        }
        Action::Continue
    }
}
