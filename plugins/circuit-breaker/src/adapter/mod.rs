//! The proxy-wasm adapter: names the upstream, asks its breaker for admission, answers with
//! the fallback while open, classifies responses, and logs and exports state changes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use edgewise_support::abi;
use edgewise_support::breaker_state::{identity_hash, BreakerState};
use edgewise_support::bulkhead::{self, bulkhead_key, Acquired};
use edgewise_support::metrics::{labelled_metric_name, metric_name};
use edgewise_support::request::{host_only, RequestView};
use edgewise_support::wasm::{
    install_panic_hook, load_config, log, now_nanos, Metric, RequestHeaders, SharedData,
};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

use crate::breaker::{Admission, Transition};
use crate::config::{Config, UpstreamKey};
use crate::table;

mod root;
mod stream;

use root::*;
use stream::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(not(feature = "embedded"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root());
}}

/// This filter's root context, for this module's entry point or a composed module.
pub fn new_root() -> Box<dyn RootContext> {
    Box::new(BreakerRoot {
        shared: None,
        control_polls: HashMap::new(),
    })
}

/// Metrics of one upstream (or of all unlisted ones), defined on first use in this VM.
struct UpstreamMetrics {
    /// None for the unlisted upstreams together (a state of many breakers is no number).
    state: Option<Metric>,
    rejected: Metric,
    bulkhead_rejected: Metric,
    opened: Metric,
    probes: Metric,
    /// The operator's forced state (0 automatic, 1 open, 2 closed); None for the unlisted.
    forced: Option<Metric>,
}

/// A request watched for taking longer than `failure.slow_call`: a hung upstream must count
/// toward tripping while its requests still hang, not when (if ever) they end.
struct Watched {
    identity: String,
    probe: Option<u32>,
    /// When the request ended (0 until then): slow-call time runs from there.
    started: Rc<Cell<u64>>,
    /// The stream recorded its outcome or ended: no longer watched.
    done: Rc<Cell<bool>>,
    /// Counted as slow by the watch (the response then records nothing more).
    counted: Rc<Cell<bool>>,
}

struct Shared {
    /// Shared data under the configured `key_prefix`.
    store: SharedData,
    config: Config,
    watched: RefCell<Vec<Watched>>,
    /// How often the watch looks, when any params have `failure.slow_call` (None: never).
    watch_period: Option<std::time::Duration>,
    watching: Cell<bool>,
    /// Bounded: routes (from Envoy's configuration) or the listed identities only.
    upstreams: RefCell<HashMap<String, Rc<UpstreamMetrics>>>,
    unlisted: Rc<UpstreamMetrics>,
    untracked: Metric,
    errors: Metric,
    /// Upstreams whose open breaker this worker probes itself (`half_open.probe`): bounded
    /// by `MAX_PROBING` (and by the table: only tracked upstreams have breakers).
    probing: RefCell<BTreeSet<String>>,
    /// Active probes sent and not answered yet: callout token → (identity, episode).
    probes_sent: RefCell<HashMap<u32, (String, u32)>>,
}

/// How often a worker looks for open breakers due for an active probe.
const PROBE_TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// At most this many upstreams probed actively by one worker.
const MAX_PROBING: usize = 1024;

/// Ticks while anything needs them: the slow-call watch at its period, active probing every
/// `PROBE_TICK`; not at all otherwise.
fn schedule_ticks(shared: &Shared) {
    let watch = shared
        .watching
        .get()
        .then_some(shared.watch_period)
        .flatten();
    let probe = (!shared.probing.borrow().is_empty()).then_some(PROBE_TICK);
    let control = shared
        .config
        .control
        .as_ref()
        .map(|c| std::time::Duration::from_millis(c.poll_ms));
    let period = [watch, probe, control]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(std::time::Duration::ZERO);
    edgewise_support::wasm::set_tick_period(period);
}

/// Puts an upstream whose breaker is open under this worker's active probing (when its
/// parameters have `half_open.probe`).
fn probe_later(shared: &Shared, identity: &str) {
    if shared.config.params(identity).active_probe.is_none() {
        return;
    }
    let added = {
        let mut probing = shared.probing.borrow_mut();
        probing.len() < MAX_PROBING && probing.insert(identity.to_string())
    };
    if added {
        schedule_ticks(shared);
    }
}

impl Shared {
    fn metrics(&self, identity: &str) -> Rc<UpstreamMetrics> {
        if !self.config.own_stats(identity) {
            return self.unlisted.clone();
        }
        let mut map = self.upstreams.borrow_mut();
        if let Some(m) = map.get(identity) {
            return m.clone();
        }
        let metrics = Rc::new(upstream_metrics(identity, true, self.config.metrics_flush));
        map.insert(identity.to_string(), metrics.clone());
        metrics
    }
}

fn upstream_metrics(
    identity: &str,
    with_state: bool,
    flush: std::time::Duration,
) -> UpstreamMetrics {
    let name =
        |what: &str| labelled_metric_name("circuit_breaker", &[("upstream", identity)], what);
    let counter = |what: &str| Metric::counter_flushed_every(&name(what), flush);
    UpstreamMetrics {
        state: with_state.then(|| Metric::gauge(&name("state"))),
        rejected: counter("rejected"),
        bulkhead_rejected: counter("bulkhead_rejected"),
        opened: counter("opened"),
        probes: counter("half_open_probes"),
        forced: with_state.then(|| Metric::gauge(&name("forced"))),
    }
}
