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
