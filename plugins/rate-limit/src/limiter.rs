//! The decision for one request across every matching rule, against the CAS store.
//!
//! Phase 1 reads each rule's set and decides without writing: if any rule denies, the
//! request is denied and no rule's tokens are taken (no shared-data write on the deny path).
//! Phase 2 commits each rule's new state with one CAS. If another worker won the race, that
//! rule is re-read and re-decided; should it now deny, the request is denied and the tokens
//! already taken from earlier rules stay taken (rare, and errs on the side of limiting).
//! Store errors and endless contention fail open for that rule (counted as errors).

use edgewise_support::lease::LeasedCounts;
use edgewise_support::request::RequestView;
use edgewise_support::store::{update_with_cas, CasStore, SetOutcome, CREATE_CAS};

use crate::algorithm::{decide_cost, Verdict};
use crate::config::{Config, Rule};
use crate::hash::fingerprint;
use crate::key::{build_key, client_ip, ip_network, KeyContext};
use crate::table::{Set, Slot};

/// Attempts per rule before giving up on a contended set (then fail open).
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// A rule that applies to this request, and where its key lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applicable {
    pub rule: usize,
    pub fingerprint: u64,
    pub set_key: String,
    /// What this request costs under the rule (`cost`; 1 by default).
    pub cost: u64,
    /// The rule charges after the response: admission checks `cost` without taking it.
    pub check_only: bool,
}

/// The request's cost under `rule`: its `cost.request_header` as a whole number from 1 to
/// `cost.max`; missing: 1; anything else (not a number, 0, over `max`, or the field sent
/// more than once — a client's own line before a trusted one): `max`.
pub fn request_cost(rule: &Rule, request: &mut impl RequestView) -> u64 {
    let Some(cost) = &rule.cost else { return 1 };
    let mut values = request.header_values(&cost.header);
    if values.len() > 1 {
        return cost.max;
    }
    let Some(value) = values.pop() else {
        return 1;
    };
    std::str::from_utf8(&value)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .filter(|n| (1..=cost.max).contains(n))
        .unwrap_or(cost.max)
}

/// Takes `units` from the request's key after its response (`charge`): unconditionally, so
/// the key may go into debt. A CAS loop like the admission's; false when shared data failed.
pub fn charge_after(
    config: &Config,
    store: &impl CasStore,
    a: &Applicable,
    units: u64,
    now: u64,
) -> bool {
    let Some(rule) = config.rules.get(a.rule) else {
        return false;
    };
    if units == 0 {
        return true;
    }
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (mut set, cas) = match store.get(&a.set_key) {
            Ok(Some((bytes, cas))) => (Set::decode(&bytes), Some(cas)),
            Ok(None) => (Set::default(), None),
            Err(_) => return false,
        };
        let slot = set.slot(a.fingerprint, &rule.algorithm, now);
        let state =
            crate::algorithm::charge(&rule.algorithm, &set.state(slot, a.fingerprint), now, units);
        set.store(slot, a.fingerprint, state);
        match store.set(&a.set_key, &set.encode(), Some(cas.unwrap_or(CREATE_CAS))) {
            Ok(SetOutcome::Stored) => return true,
            Ok(SetOutcome::CasMismatch) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Per-rule result, for headers and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleStatus {
    pub rule: usize,
    pub limited: bool,
    pub remaining: u64,
    pub reset_ns: u64,
    /// (limit, window seconds) a rate limit service reported for a global rule; None: the
    /// rule's own `limit` and `window`.
    pub policy: Option<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Admitted after a wait (queueing): hold the request for `delay_ns`.
    Delayed {
        delay_ns: u64,
    },
    /// `rule` refused; the request would be admitted after `retry_after_ns`.
    Denied {
        rule: usize,
        retry_after_ns: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub rules: Vec<RuleStatus>,
    /// Rules that failed open (store error or contention).
    pub errors: Vec<usize>,
    /// Rules whose waiting counter this request holds a place in (release when done).
    pub waiting: Vec<usize>,
    /// When those places were taken (the lease they belong to, see `take_waiting_place`).
    pub taken_at: u64,
}

/// The shared-data key of a rule's set.
pub fn set_key(rule: &Rule, set: u64) -> String {
    format!("edgewise.rl.{}.{}", rule.name, set)
}

fn waiting_key(rule: &Rule) -> String {
    format!("edgewise.rl.{}.waiting", rule.name)
}

/// The X-Forwarded-For value, read only when some rule keys or matches on a client IP
/// taken from it.
fn forwarded_for(config: &Config, request: &mut impl RequestView) -> Option<Vec<u8>> {
    if config.reads_forwarded_for {
        request.header("x-forwarded-for")
    } else {
        None
    }
}

/// One request's client address, worked out at most once and only when a rule asks: the
/// trusted address (`client_cidrs` match it) and its network (the value of `client_ip`
/// keys: the address masked to the configured prefix).
struct Client<'a> {
    config: &'a Config,
    peer: &'a mut dyn FnMut() -> Option<Vec<u8>>,
    forwarded: Option<Vec<u8>>,
    address: Option<Option<Vec<u8>>>,
    network: Option<Option<Vec<u8>>>,
}

impl<'a> Client<'a> {
    fn new(
        config: &'a Config,
        request: &mut impl RequestView,
        peer: &'a mut dyn FnMut() -> Option<Vec<u8>>,
    ) -> Client<'a> {
        Client {
            config,
            forwarded: forwarded_for(config, request),
            peer,
            address: None,
            network: None,
        }
    }

    fn address(&mut self) -> Option<Vec<u8>> {
        if self.address.is_none() {
            let peer = (self.peer)();
            self.address = Some(client_ip(
                self.config.client_ip,
                peer.as_deref(),
                self.forwarded.as_deref(),
            ));
        }
        self.address.clone().flatten()
    }

    fn network(&mut self) -> Option<Vec<u8>> {
        if self.network.is_none() {
            let (v4, v6) = (self.config.ipv4_prefix, self.config.ipv6_prefix);
            self.network = Some(self.address().map(|ip| ip_network(&ip, v4, v6)));
        }
        self.network.clone().flatten()
    }
}

/// Whether `rule` applies to the request: its `match` holds and its `exempt` does not. The
/// client address for `client_cidrs` is the same trusted address keys use, before masking
/// (`client`, read once per request and only if a range is configured).
fn rule_applies(
    rule: &crate::config::Rule,
    request: &mut impl RequestView,
    client: &mut dyn FnMut() -> Option<Vec<u8>>,
) -> bool {
    rule.matcher.matches_with(request, client)
        && !rule
            .exempt
            .as_ref()
            .is_some_and(|exempt| exempt.matches_with(request, client))
}

/// One call to a rate limit service: the global rules of one (cluster, domain) that apply
/// to a request, with their descriptors in rule order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalCall {
    pub cluster: String,
    pub domain: String,
    /// The applicable rules (indices) and their descriptors, in the same order.
    pub rules: Vec<usize>,
    pub descriptors: Vec<crate::rls::Descriptor>,
    /// Per rule, the descriptor's fingerprint (for remembered OVER_LIMIT answers).
    pub fingerprints: Vec<u64>,
    /// Per rule, Some(cost) for a rule charged after the response: its descriptor is sent
    /// with hits_addend 0 (a check) and it admits only with at least `cost` units left.
    pub check_costs: Vec<Option<u64>>,
}

/// The global rules that match the request and have key values, grouped into one call per
/// (cluster, domain), in rule order.
pub fn global_calls(
    config: &Config,
    request: &mut impl RequestView,
    peer: &mut dyn FnMut() -> Option<Vec<u8>>,
) -> Vec<GlobalCall> {
    let mut calls: Vec<GlobalCall> = Vec::new();
    let mut client = Client::new(config, request, peer);
    for (index, rule) in config.rules.iter().enumerate() {
        let Some(global) = &rule.global else { continue };
        if !rule_applies(rule, request, &mut || client.address()) {
            continue;
        }
        let mut ip = || client.network();
        let mut context = KeyContext {
            client_ip: &mut ip,
            duplicates: config.duplicates,
        };
        let Some(mut entries) =
            crate::key::build_entries(&rule.name, &rule.key, request, &mut context)
        else {
            continue;
        };
        // Client-chosen values become Redis keys in the service: bounded here.
        for (_, value) in entries.iter_mut() {
            *value = crate::key::bound_value(
                &config.value_hash_key,
                std::mem::take(value),
                config.descriptor_value_max_bytes,
            );
        }
        let mut material = Vec::new();
        for (k, v) in &entries {
            material.extend_from_slice(&(k.len() as u32).to_le_bytes());
            material.extend_from_slice(k.as_bytes());
            material.extend_from_slice(&(v.len() as u32).to_le_bytes());
            material.extend_from_slice(v);
        }
        let fp = fingerprint(config.hash_seed ^ rule.name_seed, &material);
        let check_cost = rule.charge.as_ref().map(|_| request_cost(rule, request));
        let descriptor = crate::rls::Descriptor {
            entries,
            limit: global.limit.map(|(n, unit)| crate::rls::Override {
                requests_per_unit: n,
                unit,
            }),
            // A rule charged after the response checks (hits_addend 0); lease mode asks
            // for the batch; otherwise the request's cost when above 1 (the RLS
            // per-descriptor hits_addend).
            hits: if rule.charge.is_some() {
                Some(0)
            } else if global.batch > 1 {
                Some(u64::from(global.batch))
            } else {
                Some(request_cost(rule, request)).filter(|cost| *cost > 1)
            },
        };
        match calls
            .iter_mut()
            .find(|c| c.cluster == global.cluster && c.domain == global.domain)
        {
            Some(call) => {
                call.rules.push(index);
                call.descriptors.push(descriptor);
                call.fingerprints.push(fp);
                call.check_costs.push(check_cost);
            }
            None => calls.push(GlobalCall {
                cluster: global.cluster.clone(),
                domain: global.domain.clone(),
                rules: vec![index],
                descriptors: vec![descriptor],
                fingerprints: vec![fp],
                check_costs: vec![check_cost],
            }),
        }
    }
    calls
}

/// The rules that match the request and have a key value, with their table location.
pub fn applicable_rules(
    config: &Config,
    request: &mut impl RequestView,
    peer: &mut dyn FnMut() -> Option<Vec<u8>>,
) -> Vec<Applicable> {
    let mut client = Client::new(config, request, peer);
    let mut applicable = Vec::new();
    for (index, rule) in config.rules.iter().enumerate() {
        if rule.global.is_some() || !rule_applies(rule, request, &mut || client.address()) {
            continue;
        }
        let mut ip = || client.network();
        let mut context = KeyContext {
            client_ip: &mut ip,
            duplicates: config.duplicates,
        };
        let Some(key) = build_key(&rule.key, request, &mut context) else {
            continue;
        };
        let fp = fingerprint(config.hash_seed ^ rule.name_seed, &key);
        applicable.push(Applicable {
            rule: index,
            fingerprint: fp,
            set_key: set_key(rule, (fp >> 32) % rule.sets),
            cost: request_cost(rule, request),
            check_only: rule.charge.is_some(),
        });
    }
    applicable
}

struct Pending {
    at: usize,
    set: Set,
    slot: Slot,
    cas: Option<u32>,
    verdict: Verdict,
}

fn read(
    store: &impl CasStore,
    rule: &Rule,
    a: &Applicable,
    now: u64,
    queueing: bool,
) -> Result<Pending, ()> {
    let (set, cas) = match store.get(&a.set_key) {
        Ok(Some((bytes, cas))) => (Set::decode(&bytes), Some(cas)),
        Ok(None) => (Set::default(), None),
        Err(_) => return Err(()),
    };
    let slot = set.slot(a.fingerprint, &rule.algorithm, now);
    let max_delay = if queueing {
        rule.queue.map(|q| q.max_delay_ns).unwrap_or(0)
    } else {
        0
    };
    let verdict = decide_cost(
        &rule.algorithm,
        &set.state(slot, a.fingerprint),
        now,
        max_delay,
        a.cost,
    );
    Ok(Pending {
        at: 0,
        set,
        slot,
        cas,
        verdict,
    })
}

fn status(rule: usize, verdict: &Verdict, consumed: bool, cost: u64) -> RuleStatus {
    match *verdict {
        Verdict::Allow {
            remaining,
            reset_ns,
            ..
        } => RuleStatus {
            policy: None,
            rule,
            limited: false,
            remaining: if consumed {
                remaining
            } else {
                remaining + cost
            },
            reset_ns,
        },
        Verdict::Delay { reset_ns, .. } => RuleStatus {
            policy: None,
            rule,
            limited: false,
            remaining: 0,
            reset_ns,
        },
        Verdict::Deny { reset_ns, .. } => RuleStatus {
            policy: None,
            rule,
            limited: true,
            remaining: 0,
            reset_ns,
        },
    }
}

/// Retry-After of a refused request: when every rule would admit it (the longest wait
/// among them).
fn longest_wait(pending: &[Pending]) -> u64 {
    pending
        .iter()
        .map(|p| match p.verdict {
            Verdict::Deny { retry_after_ns, .. } => retry_after_ns,
            Verdict::Delay { delay_ns, .. } => delay_ns,
            Verdict::Allow { .. } => 0,
        })
        .max()
        .unwrap_or(0)
}

/// Decides one request. In shadow mode nothing is held: a request that would wait or be
/// denied is reported as denied (the adapter lets it through) and consumes nothing.
pub fn decide(
    config: &Config,
    store: &impl CasStore,
    applicable: &[Applicable],
    now: u64,
    shadow: bool,
) -> Decision {
    let mut errors = Vec::new();
    let mut pending = Vec::with_capacity(applicable.len());
    for (at, a) in applicable.iter().enumerate() {
        match read(store, &config.rules[a.rule], a, now, !shadow) {
            Ok(mut p) => {
                p.at = at;
                pending.push(p);
            }
            Err(()) => errors.push(a.rule),
        }
    }
    let wait_of = |v: &Verdict| match *v {
        Verdict::Deny { retry_after_ns, .. } => Some(retry_after_ns),
        Verdict::Delay { delay_ns, .. } if shadow => Some(delay_ns),
        _ => None,
    };
    if let Some(denier) = pending.iter().find(|p| wait_of(&p.verdict).is_some()) {
        let retry_after_ns = longest_wait(&pending);
        let rules = pending
            .iter()
            .map(|p| {
                let a = &applicable[p.at];
                status(a.rule, &p.verdict, false, a.cost)
            })
            .collect();
        return Decision {
            outcome: Outcome::Denied {
                rule: applicable[denier.at].rule,
                retry_after_ns,
            },
            rules,
            errors,
            waiting: Vec::new(),
            taken_at: now,
        };
    }

    // Queue places first, for every rule that would delay the request: a full queue denies it
    // before any rule's token is taken (no rule is charged for a request that is refused).
    let mut waiting = Vec::new();
    for p in &pending {
        let a = &applicable[p.at];
        if matches!(p.verdict, Verdict::Delay { .. }) && !waiting.contains(&a.rule) {
            if !take_waiting_place(store, &config.rules[a.rule], now) {
                release_all(config, store, &waiting, now);
                let retry_after_ns = longest_wait(&pending);
                let rules = pending
                    .iter()
                    .map(|q| {
                        let qa = &applicable[q.at];
                        let mut s = status(qa.rule, &q.verdict, false, qa.cost);
                        s.limited |= q.at == p.at;
                        s
                    })
                    .collect();
                return Decision {
                    outcome: Outcome::Denied {
                        rule: a.rule,
                        retry_after_ns,
                    },
                    rules,
                    errors,
                    waiting: Vec::new(),
                    taken_at: now,
                };
            }
            waiting.push(a.rule);
        }
    }
    let mut statuses = Vec::with_capacity(pending.len());
    let mut delay = 0u64;
    for mut p in pending {
        let a = &applicable[p.at];
        let rule = &config.rules[a.rule];
        let mut attempts = 0;
        loop {
            attempts += 1;
            if let Verdict::Deny { retry_after_ns, .. } = p.verdict {
                statuses.push(status(a.rule, &p.verdict, false, a.cost));
                release_all(config, store, &waiting, now);
                return Decision {
                    outcome: Outcome::Denied {
                        rule: a.rule,
                        retry_after_ns,
                    },
                    rules: statuses,
                    errors,
                    waiting: Vec::new(),
                    taken_at: now,
                };
            }
            let (Verdict::Allow { state, .. } | Verdict::Delay { state, .. }) = p.verdict else {
                break;
            };
            if let Verdict::Delay { delay_ns, .. } = p.verdict {
                if !waiting.contains(&a.rule) && !take_waiting_place(store, rule, now) {
                    statuses.push(RuleStatus {
                        policy: None,
                        rule: a.rule,
                        limited: true,
                        remaining: 0,
                        reset_ns: 0,
                    });
                    release_all(config, store, &waiting, now);
                    return Decision {
                        outcome: Outcome::Denied {
                            rule: a.rule,
                            retry_after_ns: delay_ns,
                        },
                        rules: statuses,
                        errors,
                        waiting: Vec::new(),
                        taken_at: now,
                    };
                }
                if !waiting.contains(&a.rule) {
                    waiting.push(a.rule);
                }
            }
            // A rule charged after the response only checks here: the units are taken when
            // the response arrives (`charge_after`); its status shows what is left before.
            if a.check_only {
                statuses.push(status(a.rule, &p.verdict, false, a.cost));
                break;
            }
            let mut set = p.set.clone();
            set.store(p.slot, a.fingerprint, state);
            match store.set(&a.set_key, &set.encode(), Some(p.cas.unwrap_or(CREATE_CAS))) {
                Ok(SetOutcome::Stored) => {
                    if let Verdict::Delay { delay_ns, .. } = p.verdict {
                        delay = delay.max(delay_ns);
                    } else if waiting.contains(&a.rule) {
                        // Lost a race, re-decided, and no longer needs to wait.
                        release_waiting(store, rule, now, now);
                        waiting.retain(|r| *r != a.rule);
                    }
                    statuses.push(status(a.rule, &p.verdict, true, a.cost));
                    break;
                }
                Ok(SetOutcome::CasMismatch) if attempts < MAX_CAS_ATTEMPTS => {
                    match read(store, rule, a, now, true) {
                        Ok(fresh) => p = Pending { at: p.at, ..fresh },
                        Err(()) => {
                            errors.push(a.rule);
                            break;
                        }
                    }
                }
                _ => {
                    errors.push(a.rule);
                    break;
                }
            }
        }
    }
    let outcome = if delay > 0 {
        Outcome::Delayed { delay_ns: delay }
    } else {
        Outcome::Allowed
    };
    if delay == 0 {
        release_all(config, store, &waiting, now);
        waiting.clear();
    }
    Decision {
        outcome,
        rules: statuses,
        errors,
        waiting,
        taken_at: now,
    }
}

// A rule's queue places are leases (`edgewise_support::lease`): every place is taken in a
// lease window of `max_delay + 1 s` and must be given back by the end of the next one (a held
// request waits at most `max_delay`). Places of older windows belonged to a VM that died
// (trapped, was replaced) while holding them; they are dropped, so a leak never blocks the
// queue for good.

/// The lease window (ns) of a rule's queue places.
fn lease_window(rule: &Rule) -> u64 {
    rule.queue
        .map(|q| q.max_delay_ns)
        .unwrap_or(0)
        .saturating_add(1_000_000_000)
}

fn take_waiting_place(store: &impl CasStore, rule: &Rule, now: u64) -> bool {
    let Some(queue) = rule.queue else {
        return false;
    };
    let window = now / lease_window(rule);
    let result = update_with_cas(store, &waiting_key(rule), MAX_CAS_ATTEMPTS, |value| {
        let mut places = LeasedCounts::decode(value, 1).at(window);
        if u64::from(places.totals()[0]) >= queue.max_waiting {
            (None, false)
        } else {
            places.take(0);
            (Some(places.encode()), true)
        }
    });
    result.unwrap_or(false)
}

/// Frees a place in a rule's queue, taken at `taken_at` (the held request was released or
/// went away). A place whose lease already expired is gone: nothing to free.
pub fn release_waiting(store: &impl CasStore, rule: &Rule, taken_at: u64, now: u64) {
    let lease = lease_window(rule);
    let (window, taken) = (now.max(taken_at) / lease, taken_at / lease);
    let _ = update_with_cas(store, &waiting_key(rule), MAX_CAS_ATTEMPTS, |value| {
        let mut places = LeasedCounts::decode(value, 1).at(window);
        if places.give_back(0, taken) {
            (Some(places.encode()), ())
        } else {
            (None, ())
        }
    });
}

fn release_all(config: &Config, store: &impl CasStore, rules: &[usize], now: u64) {
    for rule in rules {
        release_waiting(store, &config.rules[*rule], now, now);
    }
}

/// Requests currently holding places in a rule's queue at `now` (all workers; expired
/// leases not counted).
pub fn waiting_count(store: &impl CasStore, rule: &Rule, now: u64) -> u64 {
    let value = store.get(&waiting_key(rule)).ok().flatten();
    let places = LeasedCounts::decode(value.as_ref().map(|(v, _)| v.as_slice()), 1);
    u64::from(places.at(now / lease_window(rule)).totals()[0])
}
