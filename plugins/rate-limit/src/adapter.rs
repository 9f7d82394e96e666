//! The proxy-wasm adapter: Envoy's callbacks in, the core's decision out. Reads only the
//! headers the rules need, keeps buckets in shared data, answers denials with a local
//! reply, holds queued requests and releases them from the root context's tick.

use std::cell::RefCell;
use std::rc::Rc;

use edgewise_support::abi;
use edgewise_support::parked::Parked;
use edgewise_support::wasm::WasmHost;
use edgewise_support::wasm::{
    install_panic_hook, load_config, log, now_nanos, Metric, RequestHeaders, SharedData,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::{Config, Mode};
use crate::global::{self, GlobalWait, Next};
use crate::headers::{rate_limit_headers, seconds_up};
use crate::limiter::{
    applicable_rules, charge_after, decide, global_calls, release_waiting, Applicable, Outcome,
    RuleStatus,
};
use crate::response::{settled_units, waits_for_trailer, write_rate_limit_fields};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(not(feature = "embedded"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root());
}}

/// This filter's root context, for this module's entry point or a composed module.
pub fn new_root() -> Box<dyn RootContext> {
    Box::new(RateLimitRoot {
        charging: std::collections::HashMap::new(),
        shared: None,
        waiters: Rc::new(RefCell::new(Parked::default())),
        waits: Rc::new(RefCell::new(Parked::default())),
    })
}

struct RuleMetrics {
    allowed: Metric,
    denied: Metric,
    shadow_denied: Metric,
    queued: Metric,
    errors: Metric,
    /// Units charged after responses (rules with `charge`).
    charged: Option<Metric>,
}

struct Shared {
    /// Shared data under the configured `key_prefix`.
    store: SharedData,
    config: Config,
    metrics: Vec<RuleMetrics>,
    /// The tick period while requests wait on a rate limit service; None without global
    /// rules (computed once, at configure time).
    global_tick: Option<std::time::Duration>,
    /// Charges after responses for global rules, sent by the root context on its next tick
    /// (so a call outlives its stream).
    global_charges: RefCell<Vec<GlobalCharge>>,
}

/// A global rule's charge after a response: a second call to its service with the request's
/// descriptor and `units` as its hits_addend.
#[derive(Clone, Debug)]
struct GlobalCharge {
    cluster: String,
    domain: String,
    rule: usize,
    descriptor: crate::rls::Descriptor,
    /// The request's cost (what a status charge takes).
    cost: u64,
}

/// A request held by queueing (parked until its release time): the queue places it holds.
struct Waiter {
    /// Indices into the rules of `shared`: the configuration the places were taken under
    /// (a reconfiguration may change the rules while the request waits).
    rules: Vec<usize>,
    shared: Rc<Shared>,
    /// When the places were taken (their lease).
    taken_at: u64,
}

/// Gives back a waiter's queue places, under the configuration it took them in.
fn release_places(waiter: &Waiter) {
    let now = now_nanos().unwrap_or(waiter.taken_at);
    for rule in &waiter.rules {
        if let Some(rule) = waiter.shared.config.rules.get(*rule) {
            release_waiting(&waiter.shared.store, rule, waiter.taken_at, now);
        }
    }
}

type Waiters = Rc<RefCell<Parked<Waiter>>>;

/// Requests waiting for a rate limit service (parked until their deadline), each with the
/// configuration it started under: a reconfiguration while they wait must not judge them by
/// the new rules (whose indices differ).
type Waits = Rc<RefCell<Parked<(Rc<Shared>, global::Wait)>>>;

struct RateLimitRoot {
    shared: Option<Rc<Shared>>,
    waiters: Waiters,
    /// Requests waiting for a rate limit service, watched for their deadline.
    waits: Waits,
    /// Charge calls in flight: token → (configuration, rule, units).
    charging: std::collections::HashMap<u32, (Rc<Shared>, usize, u64)>,
}

impl RateLimitRoot {
    /// Ticks while anything waits: every 1 ms for queued requests, at the global rules'
    /// period for requests waiting on a service; not at all otherwise.
    fn schedule_ticks(&self) {
        let period = if !self.waiters.borrow().is_empty() {
            std::time::Duration::from_millis(1)
        } else if !self.waits.borrow().is_empty()
            || self
                .shared
                .as_ref()
                .is_some_and(|s| !s.global_charges.borrow().is_empty())
        {
            self.shared
                .as_ref()
                .and_then(|s| s.global_tick)
                .unwrap_or(std::time::Duration::from_millis(5))
        } else {
            std::time::Duration::ZERO
        };
        edgewise_support::wasm::set_tick_period(period);
    }

    /// Requests whose service calls passed their deadline: each unanswered call is a
    /// failure, and the request goes on or is denied by its rules' failure mode.
    fn expire_global_waits(&self, now: u64) {
        let expired = {
            let mut waits = self.waits.borrow_mut();
            waits.retain(|(_, w)| !w.borrow().done);
            waits.take_due(now)
        };
        for (_, (shared, wait)) in expired {
            let (next, failed, context_id) = {
                let mut w = wait.borrow_mut();
                let (next, failed) = global::on_deadline(&shared.config, &mut w);
                (next, failed, w.context_id)
            };
            for rule in failed {
                if let Some(m) = shared.metrics.get(rule) {
                    m.errors.increment(1);
                }
            }
            if hostcalls::set_effective_context(context_id).is_ok() {
                let statuses = wait.borrow().statuses.clone();
                act(&shared, context_id, next, &statuses);
            }
        }
    }
}

/// Carries out what a request waiting on a service gets, from its own callback or from the
/// root's tick (after switching to its context).
fn act(shared: &Shared, context_id: u32, next: Next, statuses: &[RuleStatus]) {
    match next {
        Next::Wait => {}
        Next::Resume => {
            for s in statuses {
                if let Some(m) = shared.metrics.get(s.rule) {
                    m.allowed.increment(1);
                }
            }
            edgewise_support::wasm::resume_request(context_id);
        }
        Next::Deny {
            rule,
            retry_after_ns,
        } => deny_or_go_on(shared, context_id, rule, statuses, retry_after_ns),
        // Retry-After 1 s: the service may be back by then.
        Next::DenyUnavailable { rule } => {
            deny_or_go_on(shared, context_id, rule, statuses, 1_000_000_000)
        }
    }
}

/// Denies the request for `rule` (in shadow mode: counts it and lets it go on).
fn deny_or_go_on(
    shared: &Shared,
    context_id: u32,
    rule: usize,
    statuses: &[RuleStatus],
    retry_after_ns: u64,
) {
    let shadow = shared.config.shadowed(rule);
    if let Some(m) = shared.metrics.get(rule) {
        if shadow {
            m.shadow_denied.increment(1);
        } else {
            m.denied.increment(1);
        }
    }
    if shadow || !send_deny(shared, statuses, retry_after_ns) {
        edgewise_support::wasm::resume_request(context_id);
    }
}

/// The deny reply: the configured status, body and headers, the rate-limit headers and
/// Retry-After. False when the host refused it (the request then goes on).
fn send_deny(shared: &Shared, statuses: &[RuleStatus], retry_after_ns: u64) -> bool {
    let config = &shared.config;
    let deny = &config.deny;
    let retry_after = seconds_up(retry_after_ns).max(1).to_string();
    let mut headers: Vec<(&str, &str)> = deny
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let limit_headers = rate_limit_headers(config, statuses);
    headers.extend(limit_headers.iter().map(|(k, v)| (*k, v.as_str())));
    headers.push(("retry-after", &retry_after));
    abi::send_local_response(deny.status, &headers, deny.body.as_bytes())
}

impl RateLimitRoot {
    /// Sends the queued charges of global rules (one call each; never waited for by a
    /// client). A call that cannot be sent counts in the rule's `errors`.
    fn send_global_charges(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let queued: Vec<GlobalCharge> = shared.global_charges.borrow_mut().drain(..).collect();
        let (service, method) = global::endpoint();
        for charge in queued {
            let units = charge.descriptor.hits.unwrap_or(0);
            let timeout = shared
                .config
                .rules
                .get(charge.rule)
                .and_then(|r| r.global.as_ref())
                .map_or(std::time::Duration::from_millis(100), |g| g.timeout);
            let message = crate::rls::encode_request(
                &charge.domain,
                std::slice::from_ref(&charge.descriptor),
                0,
            );
            // The metadata tells edgewise-ratelimit to spend the units even past the limit
            // (debt); envoyproxy/ratelimit's counters take them anyway.
            match self.dispatch_grpc_call(
                &charge.cluster,
                service,
                method,
                vec![("x-edgewise-charge", b"1".as_slice())],
                Some(&message),
                timeout,
            ) {
                Ok(token) => {
                    self.charging
                        .insert(token, (shared.clone(), charge.rule, units));
                }
                Err(_) => {
                    if let Some(m) = shared.metrics.get(charge.rule) {
                        m.errors.increment(1);
                    }
                }
            }
        }
    }
}

impl Context for RateLimitRoot {
    /// The answer to a charge call: counted in `charged` when the service took it, in
    /// `errors` when the call failed. Its verdict does not matter (the request is done).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        let Some((shared, rule, units)) = self.charging.remove(&token_id) else {
            return;
        };
        let Some(m) = shared.metrics.get(rule) else {
            return;
        };
        if status_code == 0 {
            if let Some(charged) = &m.charged {
                charged.increment(units as i64);
            }
        } else {
            m.errors.increment(1);
        }
    }
}

/// The key-hash seed every VM of this vm_id shares: random, created once in shared data by
/// the first VM to configure, and kept across reconfigurations and VM restarts (shared data
/// lives as long as Envoy), so a configuration change never resets rate limits. None when
/// shared data fails (the configuration-derived seed is used instead).
fn shared_seed(store: &SharedData) -> Option<u64> {
    edgewise_support::wasm::shared_random_seed(store, "edgewise.rate_limit.seed")
}

impl RootContext for RateLimitRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        install_panic_hook("rate_limit", VERSION);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(mut config) = load_config("rate_limit", Config::from_json) else {
            return false;
        };
        let store = SharedData::with_prefix(&config.key_prefix);
        if !config.hash_seed_configured {
            if let Some(seed) = shared_seed(&store) {
                config.hash_seed = seed;
            }
        }
        let metrics = config
            .rules
            .iter()
            .map(|r| RuleMetrics {
                allowed: Metric::counter_flushed_every(&r.metric_allowed, config.metrics_flush),
                denied: Metric::counter_flushed_every(&r.metric_denied, config.metrics_flush),
                shadow_denied: Metric::counter_flushed_every(
                    &r.metric_shadow_denied,
                    config.metrics_flush,
                ),
                queued: Metric::counter_flushed_every(&r.metric_queued, config.metrics_flush),
                errors: Metric::counter_flushed_every(&r.metric_errors, config.metrics_flush),
                charged: r.charge.as_ref().map(|_| {
                    Metric::counter_flushed_every(
                        &edgewise_support::metrics::labelled_metric_name(
                            "rate_limit",
                            &[("rule", &r.name)],
                            "charged",
                        ),
                        config.metrics_flush,
                    )
                }),
            })
            .collect();
        log(
            LogLevel::Info,
            &format!(
                "rate_limit {VERSION}: {} rule(s), mode {:?}",
                config.rules.len(),
                config.mode
            ),
        );
        let global_tick = config
            .rules
            .iter()
            .any(|r| r.global.is_some())
            .then(|| global::tick_period(&config));
        self.shared = Some(Rc::new(Shared {
            store,
            config,
            metrics,
            global_tick,
            global_charges: RefCell::new(Vec::new()),
        }));
        true
    }

    fn on_tick(&mut self) {
        if !edgewise_support::wasm::tick() {
            return; // a tick only for the deferred metrics
        }
        let Some(now) = now_nanos() else { return };
        self.expire_global_waits(now);
        self.send_global_charges();
        let due = self.waiters.borrow_mut().take_due(now);
        for (context_id, waiter) in due {
            release_places(&waiter);
            edgewise_support::wasm::resume_parked(context_id);
        }
        self.schedule_ticks();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitStream {
            context_id,
            shared: self.shared.clone(),
            waiters: self.waiters.clone(),
            statuses: Vec::new(),
            replied: false,
            waits: self.waits.clone(),
            wait: None,
            to_charge: Vec::new(),
            to_charge_global: Vec::new(),
        }))
    }
}

struct RateLimitStream {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    waiters: Waiters,
    statuses: Vec<RuleStatus>,
    replied: bool,
    waits: Waits,
    /// Waiting for (or answered by) rate limit services.
    wait: Option<global::Wait>,
    /// Rules that charge after the response, with this request's key and cost.
    to_charge: Vec<Applicable>,
    /// Global rules that charge after the response: their call and descriptor.
    to_charge_global: Vec<GlobalCharge>,
}

impl RateLimitStream {
    /// Charges the rules whose `charge` this response settles (`trailers`: the response
    /// trailers arrived; else its headers did). Nothing is charged for a request this
    /// filter refused. A charge that fails (shared data) counts in `errors`.
    fn settle(&mut self, trailers: bool) {
        if self.replied || (self.to_charge.is_empty() && self.to_charge_global.is_empty()) {
            return;
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(now) = now_nanos() else { return };
        // The units this response settles for a rule; None: not now (its trailer is still
        // to come) or never (no charge).
        let units =
            |rule: usize, cost: u64| settled_units(&shared.config, rule, cost, trailers, &WasmHost);
        let waits_for_trailer = |rule: usize| waits_for_trailer(&shared.config, rule, trailers);
        let mut keep = Vec::new();
        for a in std::mem::take(&mut self.to_charge) {
            if waits_for_trailer(a.rule) {
                keep.push(a);
                continue;
            }
            let Some(units) = units(a.rule, a.cost) else {
                continue;
            };
            let metrics = &shared.metrics[a.rule];
            if charge_after(&shared.config, &shared.store, &a, units, now) {
                if let Some(charged) = &metrics.charged {
                    charged.increment(units as i64);
                }
            } else {
                metrics.errors.increment(1);
            }
        }
        self.to_charge = keep;
        let mut keep = Vec::new();
        let mut queued = false;
        for mut charge in std::mem::take(&mut self.to_charge_global) {
            if waits_for_trailer(charge.rule) {
                keep.push(charge);
                continue;
            }
            match units(charge.rule, charge.cost) {
                Some(units) if units > 0 => {
                    charge.descriptor.hits = Some(units);
                    shared.global_charges.borrow_mut().push(charge);
                    queued = true;
                }
                _ => {}
            }
        }
        self.to_charge_global = keep;
        if queued {
            edgewise_support::wasm::set_tick_period(
                shared
                    .global_tick
                    .unwrap_or(std::time::Duration::from_millis(5)),
            );
        }
    }
    /// Asks the rate limit services for the request's global rules (after its local rules
    /// admitted it): denied at once by a remembered OVER_LIMIT answer, else paused until
    /// every call is answered or the deadline passes.
    fn check_global(
        &mut self,
        shared: &Rc<Shared>,
        calls: Vec<crate::limiter::GlobalCall>,
        now: u64,
    ) -> Action {
        if let Some((rule, retry_after_ns, status)) =
            global::remembered_denial(&shared.store, &calls, now)
        {
            self.statuses.push(status);
            if shared.config.shadowed(rule) {
                shared.metrics[rule].shadow_denied.increment(1);
                return Action::Continue;
            }
            shared.metrics[rule].denied.increment(1);
            self.replied = true;
            if !send_deny(shared, &self.statuses, retry_after_ns) {
                return Action::Continue;
            }
            return Action::Pause;
        }
        let mut calls = calls;
        for rule in global::spend_leases(&shared.config, &shared.store, &mut calls, now) {
            shared.metrics[rule].allowed.increment(1);
        }
        if calls.is_empty() {
            return Action::Continue;
        }
        // Global rules charged after the response: remember what to send then.
        for call in &calls {
            for (i, cost) in call.check_costs.iter().enumerate() {
                if let (Some(cost), Some(rule), Some(descriptor)) =
                    (cost, call.rules.get(i), call.descriptors.get(i))
                {
                    self.to_charge_global.push(GlobalCharge {
                        cluster: call.cluster.clone(),
                        domain: call.domain.clone(),
                        rule: *rule,
                        descriptor: descriptor.clone(),
                        cost: *cost,
                    });
                }
            }
        }
        let (service, method) = global::endpoint();
        let mut pending = Vec::new();
        let mut longest = std::time::Duration::ZERO;
        for call in calls {
            let timeout = global::call_timeout(&shared.config, &call);
            match self.dispatch_grpc_call(
                &call.cluster,
                service,
                method,
                Vec::new(),
                Some(&global::message(&call)),
                timeout,
            ) {
                Ok(token) => {
                    longest = longest.max(timeout);
                    pending.push((token, call));
                }
                Err(_) => {
                    for rule in &call.rules {
                        shared.metrics[*rule].errors.increment(1);
                    }
                    if let Some(rule) = global::failure(&shared.config, &call) {
                        if shared.config.shadowed(rule) {
                            shared.metrics[rule].shadow_denied.increment(1);
                            continue;
                        }
                        shared.metrics[rule].denied.increment(1);
                        self.replied = true;
                        if send_deny(shared, &self.statuses, 1_000_000_000) {
                            return Action::Pause;
                        }
                        return Action::Continue;
                    }
                }
            }
        }
        if pending.is_empty() {
            return Action::Continue;
        }
        let wait = Rc::new(RefCell::new(GlobalWait {
            context_id: self.context_id,
            deadline: now.saturating_add(longest.as_nanos() as u64),
            pending,
            statuses: Vec::new(),
            done: false,
        }));
        let deadline = wait.borrow().deadline;
        self.waits
            .borrow_mut()
            .park(self.context_id, deadline, (shared.clone(), wait.clone()));
        self.wait = Some(wait);
        if let Some(period) = shared.global_tick {
            edgewise_support::wasm::set_tick_period(period);
        }
        Action::Pause
    }
}

impl Context for RateLimitStream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let (Some(shared), Some(wait)) = (self.shared.clone(), self.wait.clone()) else {
            return;
        };
        let Some(now) = now_nanos() else { return };
        let body = if status_code == 0 {
            global::answer_body(response_size)
        } else {
            None
        };
        let (next, failed) = global::on_answer(
            &shared.config,
            &shared.store,
            &mut wait.borrow_mut(),
            token_id,
            body,
            now,
        );
        for rule in failed {
            shared.metrics[rule].errors.increment(1);
        }
        if let Next::Deny { rule, .. } | Next::DenyUnavailable { rule } = next {
            if !shared.config.shadowed(rule) {
                self.replied = true;
            }
        }
        let statuses = wait.borrow().statuses.clone();
        act(&shared, self.context_id, next, &statuses);
    }

    fn on_done(&mut self) -> bool {
        // A client that went away while waiting for a service: later answers are ignored.
        if let Some(wait) = &self.wait {
            wait.borrow_mut().done = true;
        }
        // A client that went away while queued frees its place.
        let left = self.waiters.borrow_mut().take(self.context_id);
        if let Some(waiter) = left {
            release_places(&waiter);
        }
        true
    }
}

impl HttpContext for RateLimitStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        // Fail open if the clock is unavailable: never take traffic down for the limiter.
        let Some(now) = now_nanos() else {
            return Action::Continue;
        };
        let config = &shared.config;
        let mut request = RequestHeaders::default();
        let mut peer = || edgewise_support::wasm::property(&["source", "address"]);
        let applicable = applicable_rules(config, &mut request, &mut peer);
        // Rules in a dry run of their own are decided apart (nothing held when they would
        // deny) and only counted; the others decide the request.
        // (Split only when some rule is in a dry run: the usual request keeps its one Vec.)
        let (dry_run, applicable): (Vec<_>, Vec<_>) =
            if applicable.iter().any(|a| config.rules[a.rule].shadow) {
                applicable
                    .into_iter()
                    .partition(|a| config.rules[a.rule].shadow)
            } else {
                (Vec::new(), applicable)
            };
        self.to_charge = applicable
            .iter()
            .chain(&dry_run)
            .filter(|a| a.check_only)
            .cloned()
            .collect();
        // Each on its own: one dry run's verdict never changes another's.
        for a in &dry_run {
            let decision = decide(config, &shared.store, std::slice::from_ref(a), now, true);
            for rule in &decision.errors {
                shared.metrics[*rule].errors.increment(1);
            }
            if matches!(decision.outcome, Outcome::Denied { .. }) {
                shared.metrics[a.rule].shadow_denied.increment(1);
            } else if decision.errors.is_empty() {
                shared.metrics[a.rule].allowed.increment(1);
            }
        }
        if applicable.is_empty() {
            // No local rule applies: only global ones may.
            if shared.global_tick.is_some() {
                let calls = global_calls(config, &mut request, &mut peer);
                if !calls.is_empty() {
                    return self.check_global(&shared, calls, now);
                }
            }
            return Action::Continue;
        }
        let shadow = config.mode == Mode::Shadow;
        let mut decision = decide(config, &shared.store, &applicable, now, shadow);
        for rule in &decision.errors {
            shared.metrics[*rule].errors.increment(1);
        }
        // Kept for the response's RateLimit fields (moved, not copied).
        self.statuses = std::mem::take(&mut decision.rules);
        match decision.outcome {
            Outcome::Allowed => {
                for status in &self.statuses {
                    shared.metrics[status.rule].allowed.increment(1);
                }
                if shared.global_tick.is_some() {
                    let calls = global_calls(config, &mut request, &mut peer);
                    if !calls.is_empty() {
                        return self.check_global(&shared, calls, now);
                    }
                }
                Action::Continue
            }
            Outcome::Delayed { delay_ns } => {
                for status in &self.statuses {
                    shared.metrics[status.rule].allowed.increment(1);
                }
                for rule in &decision.waiting {
                    shared.metrics[*rule].queued.increment(1);
                }
                self.waiters.borrow_mut().park(
                    self.context_id,
                    now + delay_ns,
                    Waiter {
                        rules: decision.waiting.clone(),
                        shared: shared.clone(),
                        taken_at: decision.taken_at,
                    },
                );
                edgewise_support::wasm::set_tick_period(std::time::Duration::from_millis(1));
                Action::Pause
            }
            Outcome::Denied { retry_after_ns, .. } if shadow => {
                let _ = retry_after_ns;
                for status in self.statuses.iter().filter(|s| s.limited) {
                    shared.metrics[status.rule].shadow_denied.increment(1);
                }
                Action::Continue
            }
            Outcome::Denied {
                rule,
                retry_after_ns,
            } => {
                shared.metrics[rule].denied.increment(1);
                self.replied = true;
                if !send_deny(&shared, &self.statuses, retry_after_ns) {
                    // Could not reply: let the request through rather than hang it.
                    return Action::Continue;
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.settle(false);
        if let Some(wait) = &self.wait {
            let answered = std::mem::take(&mut wait.borrow_mut().statuses);
            self.statuses.extend(answered);
        }
        if self.replied || self.statuses.is_empty() {
            return Action::Continue;
        }
        if let Some(shared) = &self.shared {
            write_rate_limit_fields(&shared.config, &self.statuses, &mut WasmHost);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.settle(true);
        Action::Continue
    }
}
