//! Global rules in the adapter: one gRPC call per (cluster, domain) to a rate limit service
//! (Envoy's RLS protocol), the request paused until every answer is in, this module's own
//! deadline for a service that is late or never answers (checked on the root's tick, so a
//! request waits at most `timeout` + one tick), and each rule's failure mode.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use edgewise_support::abi;
use edgewise_support::wasm::SharedData;
use proxy_wasm::types::BufferType;

use crate::config::Config;
use crate::limiter::{GlobalCall, RuleStatus};
use crate::remote::{add_leased, judge, remember, remembered, take_leased, Verdict};
use crate::rls::{decode_response, encode_request, METHOD, SERVICE};

/// A request waiting for rate limit services.
pub struct GlobalWait {
    pub context_id: u32,
    pub deadline: u64,
    /// Calls not answered yet: (token, call).
    pub pending: Vec<(u32, GlobalCall)>,
    /// Statuses of answered calls, for the RateLimit headers.
    pub statuses: Vec<RuleStatus>,
    /// Decided (resumed or answered): later answers are ignored.
    pub done: bool,
}

pub type Wait = Rc<RefCell<GlobalWait>>;

/// What the request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep waiting for other answers.
    Wait,
    /// Go on to the upstream.
    Resume,
    /// Denied by `rule` (over the limit): the deny reply with this Retry-After.
    Deny { rule: usize, retry_after_ns: u64 },
    /// A service failed for a rule whose failure mode is `deny`.
    DenyUnavailable { rule: usize },
}

/// Remembered OVER_LIMIT answers: the first rule of `calls` still denied at `now`, with
/// its retry delay and its status for the RateLimit headers.
pub fn remembered_denial(
    store: &SharedData,
    calls: &[GlobalCall],
    now: u64,
) -> Option<(usize, u64, RuleStatus)> {
    calls.iter().find_map(|call| {
        call.rules
            .iter()
            .zip(&call.fingerprints)
            .find_map(|(rule, fp)| {
                remembered(store, *fp, now).map(|r| {
                    let wait = r.until - now;
                    let status = RuleStatus {
                        rule: *rule,
                        limited: true,
                        remaining: 0,
                        reset_ns: wait,
                        policy: r.policy,
                    };
                    (*rule, wait, status)
                })
            })
    })
}

/// Rule `rule`'s global settings (None: a local rule, or no such rule).
fn settings(config: &Config, rule: usize) -> Option<&crate::config::Global> {
    config.rules.get(rule)?.global.as_ref()
}

/// Rule `rule`'s lease size (1: a call per request).
fn batch(config: &Config, rule: usize) -> u32 {
    settings(config, rule).map_or(1, |g| g.batch)
}

/// How long leased hits stay usable (lease mode).
const LEASE_NS: u64 = 60_000_000_000;

/// Lease mode: drops from `calls` every descriptor a leased hit pays for (one CAS each);
/// calls left with none are dropped. Returns the rules admitted that way.
pub fn spend_leases(
    config: &Config,
    store: &SharedData,
    calls: &mut Vec<GlobalCall>,
    now: u64,
) -> Vec<usize> {
    let mut admitted = Vec::new();
    for call in calls.iter_mut() {
        let mut i = 0;
        while i < call.rules.len() {
            let fp = call.fingerprints.get(i).copied();
            let aligned = i < call.descriptors.len();
            if let (true, true, Some(fp)) = (batch(config, call.rules[i]) > 1, aligned, fp) {
                if take_leased(store, fp, now) {
                    admitted.push(call.rules.remove(i));
                    call.descriptors.remove(i);
                    call.fingerprints.remove(i);
                    continue;
                }
            }
            i += 1;
        }
    }
    calls.retain(|c| !c.rules.is_empty());
    admitted
}

/// How long a call may take: the longest timeout of its rules.
pub fn call_timeout(config: &Config, call: &GlobalCall) -> Duration {
    call.rules
        .iter()
        .filter_map(|r| settings(config, *r).map(|g| g.timeout))
        .max()
        .unwrap_or(Duration::from_millis(20))
}

/// The message a call sends.
pub fn message(call: &GlobalCall) -> Vec<u8> {
    encode_request(&call.domain, &call.descriptors, 0)
}

/// The tick period while requests wait: a quarter of the shortest timeout (1–50 ms).
pub fn tick_period(config: &Config) -> Duration {
    config
        .rules
        .iter()
        .filter_map(|r| r.global.as_ref().map(|g| g.timeout / 4))
        .min()
        .unwrap_or(Duration::from_millis(5))
        .clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// The failure of `call` (no answer, an error status, a malformed or late answer): its
/// first rule with failure mode `deny` denies; otherwise the call counts for nothing.
pub fn failure(config: &Config, call: &GlobalCall) -> Option<usize> {
    call.rules
        .iter()
        .copied()
        .find(|r| settings(config, *r).is_some_and(|g| g.deny_on_failure))
}

/// Handles the answer (or failure) to the call with `token`; `body` is None for a failed
/// call. Returns what the request gets now, and the rules whose calls failed (for metrics).
pub fn on_answer(
    config: &Config,
    store: &SharedData,
    wait: &mut GlobalWait,
    token: u32,
    body: Option<Vec<u8>>,
    now: u64,
) -> (Next, Vec<usize>) {
    if wait.done {
        return (Next::Wait, Vec::new());
    }
    let Some(index) = wait.pending.iter().position(|(t, _)| *t == token) else {
        return (Next::Wait, Vec::new());
    };
    let (_, call) = wait.pending.remove(index);
    let verdict = body
        .as_deref()
        .and_then(decode_response)
        .map_or(Verdict::Failed, |answer| judge(config, &call, &answer, now));
    let mut failed = Vec::new();
    match verdict {
        Verdict::Allowed { statuses } => {
            // Lease mode: the call took `batch` hits; the ones beyond this request's are
            // kept for the next requests (of any worker), usable for at most a minute.
            for (i, rule) in call.rules.iter().enumerate() {
                let size = batch(config, *rule);
                if let (true, Some(fp)) = (size > 1, call.fingerprints.get(i)) {
                    let until = now.saturating_add(LEASE_NS);
                    add_leased(store, *fp, u64::from(size) - 1, until, now);
                }
            }
            wait.statuses.extend(statuses)
        }
        Verdict::Denied {
            rule,
            retry_after_ns,
            statuses,
            remember: pairs,
        } => {
            for (fp, r) in pairs {
                remember(store, fp, r);
            }
            wait.statuses.extend(statuses);
            wait.done = true;
            return (
                Next::Deny {
                    rule,
                    retry_after_ns,
                },
                failed,
            );
        }
        Verdict::Failed => {
            failed.extend(call.rules.iter().copied());
            if let Some(rule) = failure(config, &call) {
                wait.done = true;
                return (Next::DenyUnavailable { rule }, failed);
            }
        }
    }
    if wait.pending.is_empty() {
        wait.done = true;
        (Next::Resume, failed)
    } else {
        (Next::Wait, failed)
    }
}

/// The deadline passed with calls unanswered: each is a failure.
pub fn on_deadline(config: &Config, wait: &mut GlobalWait) -> (Next, Vec<usize>) {
    if wait.done {
        return (Next::Wait, Vec::new());
    }
    wait.done = true;
    let mut failed = Vec::new();
    let mut next = Next::Resume;
    for (_, call) in wait.pending.drain(..) {
        failed.extend(call.rules.iter().copied());
        if let (Next::Resume, Some(rule)) = (&next, failure(config, &call)) {
            next = Next::DenyUnavailable { rule };
        }
    }
    (next, failed)
}

/// The answer's message, read straight through the ABI (an error answer has no body).
pub fn answer_body(size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    abi::get_buffer(BufferType::GrpcReceiveBuffer as u32, 0, size)
        .ok()
        .flatten()
}

/// The gRPC service and method every call names.
pub const fn endpoint() -> (&'static str, &'static str) {
    (SERVICE, METHOD)
}
