//! The proxy-wasm adapter: Envoy's callbacks in, the core's decision out. Reads only the
//! headers the rules need, keeps buckets in shared data, answers denials with a local
//! reply, holds queued requests and releases them from the root context's tick.

use std::cell::RefCell;
use std::rc::Rc;

use edgewise_support::abi;
use edgewise_support::wasm::{
    install_panic_hook, load_config, log, now_nanos, Metric, RequestHeaders, SharedData,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

use crate::config::{Config, Mode};
use crate::headers::{rate_limit_headers, seconds_up};
use crate::limiter::{applicable_rules, decide, release_waiting, Outcome, RuleStatus};

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(not(feature = "embedded"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root());
}}

/// This filter's root context, for this module's entry point or a composed module.
pub fn new_root() -> Box<dyn RootContext> {
    Box::new(RateLimitRoot {
        shared: None,
        waiters: Rc::new(RefCell::new(Vec::new())),
    })
}

struct RuleMetrics {
    allowed: Metric,
    denied: Metric,
    shadow_denied: Metric,
    queued: Metric,
    errors: Metric,
}

struct Shared {
    config: Config,
    metrics: Vec<RuleMetrics>,
}

/// A request held by queueing, released by the tick at `release_at`.
struct Waiter {
    context_id: u32,
    release_at: u64,
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
            release_waiting(&SharedData, rule, waiter.taken_at, now);
        }
    }
}

type Waiters = Rc<RefCell<Vec<Waiter>>>;

struct RateLimitRoot {
    shared: Option<Rc<Shared>>,
    waiters: Waiters,
}

impl Context for RateLimitRoot {}

/// The key-hash seed every VM of this vm_id shares: random, created once in shared data by
/// the first VM to configure, and kept across reconfigurations and VM restarts (shared data
/// lives as long as Envoy), so a configuration change never resets rate limits. None when
/// shared data fails (the configuration-derived seed is used instead).
fn shared_seed() -> Option<u64> {
    use edgewise_support::store::update_with_cas;
    use std::hash::{BuildHasher, Hasher};
    let fresh = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        ^ now_nanos().unwrap_or(0);
    update_with_cas(
        &SharedData,
        "edgewise.rate_limit.seed",
        4,
        |current| match current.and_then(|v| <[u8; 8]>::try_from(v).ok()) {
            Some(seed) => (None, u64::from_le_bytes(seed)),
            None => (Some(fresh.to_le_bytes().to_vec()), fresh),
        },
    )
    .ok()
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
        if !config.hash_seed_configured {
            if let Some(seed) = shared_seed() {
                config.hash_seed = seed;
            }
        }
        let metrics = config
            .rules
            .iter()
            .map(|r| RuleMetrics {
                allowed: Metric::counter(&r.metric_allowed),
                denied: Metric::counter(&r.metric_denied),
                shadow_denied: Metric::counter(&r.metric_shadow_denied),
                queued: Metric::counter(&r.metric_queued),
                errors: Metric::counter(&r.metric_errors),
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
        self.shared = Some(Rc::new(Shared { config, metrics }));
        true
    }

    fn on_tick(&mut self) {
        let Some(now) = now_nanos() else { return };
        let due: Vec<Waiter> = {
            let mut waiters = self.waiters.borrow_mut();
            let (due, keep) = waiters.drain(..).partition(|w| w.release_at <= now);
            *waiters = keep;
            due
        };
        for waiter in due {
            release_places(&waiter);
            if hostcalls::set_effective_context(waiter.context_id).is_ok() {
                edgewise_support::wasm::resume_request(waiter.context_id);
            }
        }
        if self.waiters.borrow().is_empty() {
            edgewise_support::wasm::set_tick_period(std::time::Duration::ZERO);
        }
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
        }))
    }
}

struct RateLimitStream {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    waiters: Waiters,
    statuses: Vec<RuleStatus>,
    replied: bool,
}

impl Context for RateLimitStream {
    fn on_done(&mut self) -> bool {
        // A client that went away while queued frees its place.
        let mut waiters = self.waiters.borrow_mut();
        if let Some(position) = waiters.iter().position(|w| w.context_id == self.context_id) {
            let waiter = waiters.remove(position);
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
        if applicable.is_empty() {
            return Action::Continue;
        }
        let shadow = config.mode == Mode::Shadow;
        let decision = decide(config, &SharedData, &applicable, now, shadow);
        for rule in &decision.errors {
            shared.metrics[*rule].errors.increment(1);
        }
        self.statuses = decision.rules.clone();
        match decision.outcome {
            Outcome::Allowed => {
                for status in &decision.rules {
                    shared.metrics[status.rule].allowed.increment(1);
                }
                Action::Continue
            }
            Outcome::Delayed { delay_ns } => {
                for status in &decision.rules {
                    shared.metrics[status.rule].allowed.increment(1);
                }
                for rule in &decision.waiting {
                    shared.metrics[*rule].queued.increment(1);
                }
                self.waiters.borrow_mut().push(Waiter {
                    context_id: self.context_id,
                    release_at: now + delay_ns,
                    rules: decision.waiting.clone(),
                    shared: shared.clone(),
                    taken_at: decision.taken_at,
                });
                edgewise_support::wasm::set_tick_period(std::time::Duration::from_millis(1));
                Action::Pause
            }
            Outcome::Denied { retry_after_ns, .. } if shadow => {
                let _ = retry_after_ns;
                for status in decision.rules.iter().filter(|s| s.limited) {
                    shared.metrics[status.rule].shadow_denied.increment(1);
                }
                Action::Continue
            }
            Outcome::Denied {
                rule,
                retry_after_ns,
            } => {
                shared.metrics[rule].denied.increment(1);
                let deny = &config.deny;
                let retry_after = seconds_up(retry_after_ns).max(1).to_string();
                let mut headers: Vec<(&str, &str)> = deny
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let limit_headers = rate_limit_headers(config, &decision.rules);
                headers.extend(limit_headers.iter().map(|(k, v)| (*k, v.as_str())));
                headers.push(("retry-after", &retry_after));
                self.replied = true;
                if !abi::send_local_response(deny.status, &headers, deny.body.as_bytes()) {
                    // Could not reply: let the request through rather than hang it.
                    return Action::Continue;
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.replied || self.statuses.is_empty() {
            return Action::Continue;
        }
        if let Some(shared) = &self.shared {
            for (name, value) in rate_limit_headers(&shared.config, &self.statuses) {
                abi::replace_map_value(MapType::HttpResponseHeaders as u32, name, value.as_bytes());
            }
        }
        Action::Continue
    }
}
