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
    UpstreamMetrics {
        state: with_state.then(|| Metric::gauge(&name("state"))),
        rejected: Metric::counter_flushed_every(&name("rejected"), flush),
        bulkhead_rejected: Metric::counter_flushed_every(&name("bulkhead_rejected"), flush),
        opened: Metric::counter_flushed_every(&name("opened"), flush),
        probes: Metric::counter_flushed_every(&name("half_open_probes"), flush),
        forced: with_state.then(|| Metric::gauge(&name("forced"))),
    }
}

struct BreakerRoot {
    shared: Option<Rc<Shared>>,
    /// Polls of the control service's forced states in flight (by callout token).
    control_polls: HashMap<u32, ()>,
}

impl Context for BreakerRoot {
    /// An active probe's answer (other filters' callouts, in edge_chain, are not ours).
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if self.control_polls.remove(&token_id).is_some() {
            control_answer(&shared, num_headers, body_size);
            return;
        }
        let Some((identity, episode)) = shared.probes_sent.borrow_mut().remove(&token_id) else {
            return;
        };
        let status = if num_headers == 0 {
            None
        } else {
            abi::get_map_value(MapType::HttpCallResponseHeaders as u32, ":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
        };
        let now = now_nanos().unwrap_or(0);
        record_probe(&shared, &identity, episode, status, now);
    }
}

impl BreakerRoot {
    /// Counts watched requests past their slow-call threshold as slow calls now (each once),
    /// and forgets those whose streams are done.
    fn watch_slow(&self, shared: &Shared) {
        let Some(now) = now_nanos() else { return };
        let mut watched = shared.watched.borrow_mut();
        watched.retain(|w| !w.done.get());
        for w in watched.iter() {
            let started = w.started.get();
            let params = shared.config.params(&w.identity);
            let Some(slow_ns) = params.slow_call_ns else {
                continue;
            };
            if w.counted.get() || started == 0 || now.saturating_sub(started) < slow_ns {
                continue;
            }
            w.counted.set(true);
            let outcome = crate::breaker::Outcome {
                failed: false,
                slow: true,
            };
            match table::record(
                &shared.store,
                w.identity.as_bytes(),
                shared.config.slots,
                params,
                outcome,
                w.probe,
                now,
            ) {
                Ok(Some(transition)) => report(shared, &w.identity, transition),
                Ok(None) => {}
                Err(_) => shared.errors.increment(1),
            }
        }
        if watched.is_empty() && shared.watching.replace(false) {
            drop(watched);
            schedule_ticks(shared);
        }
    }

    /// Sends the active probes that are due: for each upstream under probing, the breaker's
    /// own probe place (won by one worker per probe, with CAS) and a `GET path` to the
    /// upstream's cluster from this root context (a stream's callout would end with it).
    fn send_probes(&self, shared: &Shared) {
        let Some(now) = now_nanos() else { return };
        let identities: Vec<String> = shared.probing.borrow().iter().cloned().collect();
        for identity in identities {
            let in_flight = shared
                .probes_sent
                .borrow()
                .values()
                .any(|(i, _)| *i == identity);
            if in_flight {
                continue;
            }
            let params = shared.config.params(&identity);
            let Some(active) = params.active_probe.as_ref() else {
                shared.probing.borrow_mut().remove(&identity);
                continue;
            };
            let taken = table::take_active_probe(
                &shared.store,
                identity.as_bytes(),
                shared.config.slots,
                params,
                now,
            );
            let episode = match taken {
                Ok(Some((episode, transition, state))) => {
                    report(shared, &identity, transition);
                    if state == BreakerState::Closed {
                        shared.probing.borrow_mut().remove(&identity);
                        continue;
                    }
                    episode
                }
                // No breaker any more (its slot went to another upstream): nothing to probe.
                Ok(None) => {
                    shared.probing.borrow_mut().remove(&identity);
                    continue;
                }
                Err(_) => {
                    shared.errors.increment(1);
                    continue;
                }
            };
            let Some(episode) = episode else { continue };
            let headers = vec![
                (":method", "GET"),
                (":path", active.path.as_str()),
                (":authority", identity.as_str()),
                ("user-agent", "edgewise-circuit-breaker-probe"),
            ];
            let timeout = std::time::Duration::from_nanos(active.timeout_ns);
            match self.dispatch_http_call(&identity, headers, None, vec![], timeout) {
                Ok(token) => {
                    shared.metrics(&identity).probes.increment(1);
                    shared
                        .probes_sent
                        .borrow_mut()
                        .insert(token, (identity.clone(), episode));
                }
                // Envoy refused the callout (no such cluster): an unhealthy answer.
                Err(_) => {
                    shared.errors.increment(1);
                    record_probe(shared, &identity, episode, None, now);
                }
            }
        }
        if shared.probing.borrow().is_empty() {
            schedule_ticks(shared);
        }
    }
}

impl BreakerRoot {
    /// Operator controls: when this worker wins the poll lease, asks the control service for
    /// the forced breaker states (one poll per Envoy per period, from the root context).
    fn poll_control(&mut self, shared: &Shared) {
        let Some(control) = shared.config.control.as_ref() else {
            return;
        };
        if !self.control_polls.is_empty() {
            return;
        }
        let now_ms = now_nanos().unwrap_or(0) / 1_000_000;
        if !edgewise_support::store::take_lease(
            &shared.store,
            crate::control::LEASE_KEY,
            now_ms,
            control.poll_ms,
        ) {
            return;
        }
        match edgewise_support::wasm::poll_control_service(
            self,
            &control.cluster,
            &control.path,
            &control.token,
            std::time::Duration::from_millis(control.timeout_ms),
        ) {
            Some(token) => {
                self.control_polls.insert(token, ());
            }
            None => shared.errors.increment(1),
        }
    }
}

/// The control service's forced states: each change applied to the upstream's breaker in
/// shared data (every worker sees it at once), logged with who set it, shown in the
/// upstream's `forced` gauge. A failed poll changes nothing (and counts in `errors`).
fn control_answer(shared: &Shared, num_headers: usize, body_size: usize) {
    let body = edgewise_support::wasm::http_call_ok_body(num_headers, body_size, 1 << 20);
    let Some(listed) = body.and_then(|b| serde_json::from_slice::<crate::control::Listed>(&b).ok())
    else {
        shared.errors.increment(1);
        return;
    };
    let desired = crate::control::desired(&listed);
    let applied = crate::control::load_applied(&shared.store);
    let now = now_nanos().unwrap_or(0);
    let mut all_applied = true;
    for (upstream, forced, by) in crate::control::changes(&applied, &desired) {
        let params = shared.config.params(&upstream);
        match table::force(
            &shared.store,
            upstream.as_bytes(),
            shared.config.slots,
            params,
            forced,
            now,
        ) {
            Ok(true) => {
                let state = ["automatic", "forced open", "forced closed"]
                    .get(forced as usize)
                    .unwrap_or(&"?");
                log(
                    LogLevel::Warn,
                    &format!("circuit_breaker: {upstream} {state} by {by}"),
                );
                if let Some(gauge) = &shared.metrics(&upstream).forced {
                    gauge.set(forced as u64);
                }
            }
            _ => {
                all_applied = false;
                shared.errors.increment(1);
            }
        }
    }
    // Applied states are remembered only when all went through: a failure retries next poll.
    if all_applied {
        crate::control::save_applied(&shared.store, &desired);
    }
}

/// Records an active probe's answer (`None`: no answer — reset, timeout, refused) under its
/// episode: healthy statuses count as a success, anything else as a failure.
fn record_probe(shared: &Shared, identity: &str, episode: u32, status: Option<u16>, now: u64) {
    let params = shared.config.params(identity);
    let healthy = params
        .active_probe
        .as_ref()
        .zip(status)
        .is_some_and(|(active, status)| active.healthy(status));
    let outcome = crate::breaker::Outcome {
        failed: !healthy,
        slow: false,
    };
    log(
        LogLevel::Info,
        &format!(
            "circuit_breaker: active probe of {identity}: {} ({})",
            status.map_or("no answer".to_string(), |s| s.to_string()),
            if healthy { "healthy" } else { "unhealthy" }
        ),
    );
    match table::record(
        &shared.store,
        identity.as_bytes(),
        shared.config.slots,
        params,
        outcome,
        Some(episode),
        now,
    ) {
        Ok(Some(transition)) => report(shared, identity, transition),
        Ok(None) => {}
        Err(_) => shared.errors.increment(1),
    }
}

impl RootContext for BreakerRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        install_panic_hook("circuit_breaker", VERSION);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        // Before the configuration compiles: it may hash (breaker identities, routes).
        edgewise_support::wasm::init_hash_seed();
        let Some(config) = load_config("circuit_breaker", Config::from_json) else {
            return false;
        };
        log(
            LogLevel::Info,
            &format!(
                "circuit_breaker {VERSION}: upstream by {:?}, {} override(s)",
                config.upstream,
                config.overrides.len()
            ),
        );
        // The watch looks every quarter of the shortest slow-call threshold (10 ms – 1 s).
        let watch_period = std::iter::once(&config.defaults)
            .chain(config.overrides.values())
            .filter_map(|p| p.slow_call_ns)
            .min()
            .map(|ns| std::time::Duration::from_nanos((ns / 4).clamp(10_000_000, 1_000_000_000)));
        let flush = config.metrics_flush;
        // A reconfiguration keeps the upstreams under probing and the probes in flight.
        let (probing, probes_sent) = match self.shared.take() {
            Some(old) => (old.probing.take(), old.probes_sent.take()),
            None => (BTreeSet::new(), HashMap::new()),
        };
        self.shared = Some(Rc::new(Shared {
            probing: RefCell::new(probing),
            probes_sent: RefCell::new(probes_sent),
            store: SharedData::with_prefix(&config.key_prefix),
            watched: RefCell::new(Vec::new()),
            watch_period,
            watching: Cell::new(false),
            config,
            upstreams: RefCell::new(HashMap::new()),
            unlisted: Rc::new(upstream_metrics(crate::config::UNLISTED, false, flush)),
            untracked: Metric::counter_flushed_every(
                &metric_name(&["circuit_breaker", "untracked"]),
                flush,
            ),
            errors: Metric::counter_flushed_every(
                &metric_name(&["circuit_breaker", "errors"]),
                flush,
            ),
        }));
        // Operator controls poll from the start; probing carried over keeps its ticks.
        if let Some(shared) = &self.shared {
            schedule_ticks(shared);
        }
        true
    }

    fn on_tick(&mut self) {
        if !edgewise_support::wasm::tick() {
            return; // a tick only for the deferred metrics
        }
        if let Some(shared) = self.shared.clone() {
            self.watch_slow(&shared);
            self.send_probes(&shared);
            self.poll_control(&shared);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BreakerStream {
            shared: self.shared.clone(),
            identity: None,
            started: 0,
            probe: None,
            replied: false,
            recorded: false,
            watch: None,
            bulkhead: None,
        }))
    }
}

struct BreakerStream {
    shared: Option<Rc<Shared>>,
    identity: Option<String>,
    started: u64,
    probe: Option<u32>,
    replied: bool,
    recorded: bool,
    /// (started, done, counted) shared with the root's slow-call watch.
    watch: Option<WatchCells>,
    /// Counted in flight by the upstream's bulkhead: (key, identity hash, taken at).
    bulkhead: Option<(String, u64, u64)>,
}

/// A watched request's cells: when it ended, whether it is done, whether it was counted.
type WatchCells = (Rc<Cell<u64>>, Rc<Cell<bool>>, Rc<Cell<bool>>);

impl BreakerStream {
    /// Puts an admitted request under the slow-call watch (when slow calls are configured).
    fn watch(&mut self, shared: &Shared, identity: &str) {
        if shared.watch_period.is_none() {
            return;
        }
        let cells = (
            Rc::new(Cell::new(self.started)),
            Rc::new(Cell::new(false)),
            Rc::new(Cell::new(false)),
        );
        shared.watched.borrow_mut().push(Watched {
            identity: identity.to_string(),
            probe: self.probe,
            started: cells.0.clone(),
            done: cells.1.clone(),
            counted: cells.2.clone(),
        });
        self.watch = Some(cells);
        if !shared.watching.replace(true) {
            schedule_ticks(shared);
        }
    }

    /// Counted as slow by the watch already.
    fn counted_early(&self) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|(_, _, counted)| counted.get())
    }

    fn unwatch(&self) {
        if let Some((_, done, _)) = &self.watch {
            done.set(true);
        }
    }

    /// Answers with the fallback; `circuit` names why (`open`, `half-open`, `full`).
    fn reject(&mut self, shared: &Shared, circuit: &str) -> Action {
        let fallback = &shared.config.fallback;
        let mut headers: Vec<(&str, &str)> = fallback
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.push(("x-edgewise-circuit", circuit));
        self.replied = true;
        if !abi::send_local_response(fallback.status, &headers, fallback.body.as_bytes()) {
            return Action::Continue;
        }
        Action::Pause
    }
}

/// Gives back the half-open probe place of `episode` (its request will not be answered by
/// the upstream): the next request can probe at once.
fn give_back_probe(shared: &Shared, identity: &str, episode: u32, now: u64) {
    let params = shared.config.params(identity);
    let _ = table::abandon_probe(
        &shared.store,
        identity.as_bytes(),
        shared.config.slots,
        params,
        episode,
        now,
    );
}

fn report(shared: &Shared, identity: &str, transition: Transition) {
    if transition == Transition::None {
        return; // the common case: no stats touched, none defined
    }
    let metrics = shared.metrics(identity);
    let set_state = |state: BreakerState| {
        if let Some(gauge) = &metrics.state {
            gauge.set(state.code() as u64);
        }
    };
    if matches!(
        transition,
        Transition::Opened { .. } | Transition::Reopened { .. }
    ) {
        probe_later(shared, identity);
    }
    match transition {
        Transition::Opened { for_ns, reason } => {
            metrics.opened.increment(1);
            set_state(BreakerState::Open);
            log(
                LogLevel::Warn,
                &format!(
                    "circuit_breaker: {identity} opened for {}ms ({reason:?})",
                    for_ns / 1_000_000
                ),
            );
        }
        Transition::Reopened { for_ns } => {
            metrics.opened.increment(1);
            set_state(BreakerState::Open);
            log(
                LogLevel::Warn,
                &format!(
                    "circuit_breaker: {identity} failed a half-open probe, open again for {}ms",
                    for_ns / 1_000_000
                ),
            );
        }
        Transition::HalfOpened => {
            set_state(BreakerState::HalfOpen);
            log(
                LogLevel::Info,
                &format!("circuit_breaker: {identity} half-open, probing"),
            );
        }
        Transition::Closed => {
            set_state(BreakerState::Closed);
            log(
                LogLevel::Info,
                &format!("circuit_breaker: {identity} closed after successful probes"),
            );
        }
        Transition::None => {}
    }
}

impl Context for BreakerStream {
    fn on_done(&mut self) -> bool {
        self.unwatch();
        // Stream end or reset: its place in the bulkhead is free again.
        if let (Some(shared), Some((key, hash, taken_at))) = (&self.shared, self.bulkhead.take()) {
            let now = now_nanos().unwrap_or(taken_at);
            let _ = bulkhead::release(&shared.store, &key, hash, taken_at, now);
        }
        // A probe that ended without a response gives its place back, so half-open cannot
        // stall on clients that went away.
        if let (Some(shared), Some(identity), Some(episode), false) = (
            &self.shared,
            &self.identity,
            self.probe,
            self.recorded || self.counted_early(),
        ) {
            if let Some(now) = now_nanos() {
                give_back_probe(shared, identity, episode, now);
            }
        }
        true
    }
}

impl HttpContext for BreakerStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let mut request = RequestHeaders::default();
        let identity = match &shared.config.upstream {
            UpstreamKey::Route => edgewise_support::wasm::property(&["xds", "route_name"]),
            UpstreamKey::Host => request.header(":authority").map(|a| host_only(&a)),
            UpstreamKey::Header(name) => request.header(name),
        };
        // No identity (unnamed route, missing header): no breaker applies.
        let Some(identity) = identity
            .filter(|i| !i.is_empty())
            .map(|i| String::from_utf8_lossy(&i).into_owned())
        else {
            return Action::Continue;
        };
        let Some(now) = now_nanos() else {
            return Action::Continue;
        };
        let params = shared.config.params(&identity);
        let (admission, slot_key) = match table::admit(
            &shared.store,
            identity.as_bytes(),
            shared.config.slots,
            params,
            now,
        ) {
            Ok(Some((admission, transition, slot_key))) => {
                report(&shared, &identity, transition);
                (admission, slot_key)
            }
            Ok(None) => {
                shared.untracked.increment(1);
                return Action::Continue;
            }
            Err(_) => {
                // Fail open: a broken breaker must not take traffic down.
                shared.errors.increment(1);
                return Action::Continue;
            }
        };
        // Slow-call time runs from the end of the request (the upstream's time to answer),
        // so a client trickling its body cannot make a healthy upstream look slow.
        self.started = if end_of_stream { now } else { 0 };
        // The bulkhead bounds what an admitted request may add to the upstream's load.
        if let (Some(max), Admission::Pass | Admission::Probe { .. }) =
            (params.max_in_flight, admission)
        {
            let key = bulkhead_key(&slot_key);
            let hash = identity_hash(identity.as_bytes());
            match bulkhead::acquire(&shared.store, &key, hash, max, now) {
                Ok(Acquired::Admitted { taken_at }) => self.bulkhead = Some((key, hash, taken_at)),
                Ok(Acquired::Full { .. }) => {
                    if let Admission::Probe { episode } = admission {
                        give_back_probe(&shared, &identity, episode, now);
                    }
                    shared.metrics(&identity).bulkhead_rejected.increment(1);
                    return self.reject(&shared, "full");
                }
                // Fail open, as for the breaker itself.
                Err(_) => shared.errors.increment(1),
            }
        }
        match admission {
            Admission::Pass => {
                self.watch(&shared, &identity);
                self.identity = Some(identity);
                Action::Continue
            }
            Admission::Probe { episode } => {
                shared.metrics(&identity).probes.increment(1);
                self.probe = Some(episode);
                self.watch(&shared, &identity);
                self.identity = Some(identity);
                Action::Continue
            }
            Admission::Reject { state } => {
                probe_later(&shared, &identity);
                shared.metrics(&identity).rejected.increment(1);
                self.reject(&shared, state.name())
            }
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream && self.identity.is_some() && self.started == 0 {
            self.started = now_nanos().unwrap_or(0);
            if let Some((started, _, _)) = &self.watch {
                started.set(self.started);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.replied || self.recorded {
            return Action::Continue;
        }
        let (Some(shared), Some(identity)) = (self.shared.clone(), self.identity.clone()) else {
            return Action::Continue;
        };
        self.recorded = true;
        self.unwatch();
        let Some(now) = now_nanos() else {
            return Action::Continue;
        };
        let status = abi::get_map_value(MapType::HttpResponseHeaders as u32, ":status")
            .and_then(|s| {
                std::str::from_utf8(&s)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
            })
            .filter(|code| (100..=599).contains(code));
        let params = shared.config.params(&identity);
        // Envoy's response details only matter for a 5xx the status list does not already
        // count: read them (one host call) only then.
        let needs_details = params.local_failures
            && status.is_some_and(|code| code >= 500 && !params.counts_status(code));
        let details = if needs_details {
            edgewise_support::wasm::property(&["response", "code_details"])
        } else {
            None
        };
        let outcome = crate::classify(
            params,
            status,
            details.as_deref(),
            if self.started == 0 {
                0 // answered before the request ended: no upstream time to judge
            } else {
                now.saturating_sub(self.started)
            },
        );
        let recorded = if !self.counted_early() {
            table::record(
                &shared.store,
                identity.as_bytes(),
                shared.config.slots,
                params,
                outcome,
                self.probe,
                now,
            )
        } else if outcome.failed {
            // Counted as slow while it hung; ending in a failure (e.g. the route timeout)
            // makes it a failure too, not another call.
            table::record_late_failure(
                &shared.store,
                identity.as_bytes(),
                shared.config.slots,
                params,
                now,
            )
        } else {
            Ok(None)
        };
        match recorded {
            Ok(Some(transition)) => report(&shared, &identity, transition),
            Ok(None) => {}
            Err(_) => shared.errors.increment(1),
        }
        Action::Continue
    }
}
