//! Edgewise weighted routing: picks the upstream cluster for a request (overrides, then the
//! route's strategy, skipping targets whose circuit breaker is open) and names it in a
//! request header that Envoy's `cluster_header` route follows. Core here; the proxy-wasm
//! adapter in `adapter.rs`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod strategy;

#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
pub use adapter::new_root;

use edgewise_support::lease::LeasedCounts;
use edgewise_support::request::{cookie, RequestView};
use edgewise_support::store::{update_with_cas, CasStore};

pub use config::Config;
use config::{HashOn, OverrideSource, Route, Strategy};

/// Why this cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The strategy's pick.
    Picked,
    /// An override condition pinned it.
    Override,
    /// The strategy's pick had an open breaker; this is the next available target.
    Failover,
    /// Strategy hash without a key value: the weighted round-robin pick instead.
    HashKeyMissing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub route: usize,
    /// Index into the route's targets (None for an override to a cluster outside them).
    pub target: Option<usize>,
    pub cluster: String,
    pub reason: Reason,
}

/// Picks among the allowed targets of a least_requests route and counts the pick in flight.
pub type LeastPicker<'a> = &'a mut dyn FnMut(&Route, &dyn Fn(usize) -> bool) -> Option<usize>;

/// What selection needs from the host, supplied by the adapter (or a test).
pub struct Env<'a> {
    /// The peer IP (for hash_on client_ip and routes' match.client_cidrs).
    pub client_ip: &'a mut dyn FnMut() -> Option<Vec<u8>>,
    /// The next round-robin position for a route (per-worker counter, or shared cursor).
    pub cursor: &'a mut dyn FnMut(&Route) -> u64,
    /// A uniform random u64.
    pub random: &'a mut dyn FnMut() -> u64,
    /// Whether a cluster's circuit breaker is open (only asked for failover routes).
    pub is_open: &'a mut dyn FnMut(&str) -> bool,
    /// least_requests: picks among the allowed targets and counts the pick in flight.
    pub acquire_least: LeastPicker<'a>,
}

fn override_matches(
    source: &OverrideSource,
    equals: &[u8],
    request: &mut impl RequestView,
) -> bool {
    let value = match source {
        OverrideSource::Header(name) => request.header(name),
        OverrideSource::Cookie(name) => request.header("cookie").and_then(|c| cookie(&c, name)),
    };
    value.as_deref() == Some(equals)
}

/// Picks the cluster for a request: the first matching route; its first matching override;
/// else its strategy, skipping targets with an open breaker when `failover` is on (with every
/// target open, the normal pick stands and the breaker answers). None: no route matched.
pub fn select(
    config: &Config,
    request: &mut impl RequestView,
    env: &mut Env<'_>,
) -> Option<Selection> {
    let (route_index, route) = config
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.matcher.matches_with(request, &mut *env.client_ip))?;
    for o in &route.overrides {
        if override_matches(&o.source, &o.equals, request) {
            let target = route.targets.iter().position(|t| t.cluster == o.cluster);
            return Some(Selection {
                route: route_index,
                target,
                cluster: o.cluster.clone(),
                reason: Reason::Override,
            });
        }
    }
    let Env {
        client_ip,
        cursor,
        random,
        is_open,
        acquire_least,
    } = env;
    // Breaker states asked once per target per request.
    let mut open: Vec<Option<bool>> = vec![None; route.targets.len()];
    let mut available = |i: usize| -> bool {
        if !route.failover {
            return true;
        }
        !*open[i].get_or_insert_with(|| is_open(&route.targets[i].cluster))
    };
    let weights = &route.weights;
    let (target, reason) = match route.strategy {
        Strategy::WeightedRoundRobin => wrr(route, cursor(route), &mut available),
        Strategy::Random => {
            let pick = strategy::weighted_random(weights, random());
            if available(pick) {
                (pick, Reason::Picked)
            } else {
                let masked: Vec<u32> = weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| if available(i) { *w } else { 0 })
                    .collect();
                if masked.iter().any(|w| *w > 0) {
                    (
                        strategy::weighted_random(&masked, random()),
                        Reason::Failover,
                    )
                } else {
                    (pick, Reason::Picked)
                }
            }
        }
        Strategy::Hash => {
            let key = match &route.hash_on {
                Some(HashOn::Header(name)) => request.header(name),
                Some(HashOn::Cookie(name)) => {
                    request.header("cookie").and_then(|c| cookie(&c, name))
                }
                Some(HashOn::ClientIp) => client_ip(),
                None => None,
            };
            match key.filter(|k| !k.is_empty()) {
                None => {
                    let (pick, reason) = wrr(route, cursor(route), &mut available);
                    (
                        pick,
                        if reason == Reason::Picked {
                            Reason::HashKeyMissing
                        } else {
                            reason
                        },
                    )
                }
                Some(key) => {
                    let key_hash = edgewise_support::seed::stable_hash(&key) | 1;
                    let natural = strategy::rendezvous(weights, &route.seeds, key_hash, |_| true)
                        .unwrap_or(0);
                    if available(natural) {
                        (natural, Reason::Picked)
                    } else {
                        let states: Vec<bool> = (0..weights.len()).map(&mut available).collect();
                        match strategy::rendezvous(weights, &route.seeds, key_hash, |i| states[i]) {
                            Some(other) => (other, Reason::Failover),
                            None => (natural, Reason::Picked),
                        }
                    }
                }
            }
        }
        Strategy::LeastRequests => {
            // Picks only among available targets; every request made while some target is
            // skipped counts as a failover.
            let states: Vec<bool> = (0..weights.len()).map(&mut available).collect();
            let skipped = states.iter().zip(weights).any(|(ok, w)| !ok && *w > 0);
            match acquire_least(route, &|i| states[i]) {
                Some(i) => (
                    i,
                    if skipped {
                        Reason::Failover
                    } else {
                        Reason::Picked
                    },
                ),
                None => match acquire_least(route, &|_| true) {
                    Some(i) => (i, Reason::Picked),
                    // The shared counts cannot be read or written: the weighted round-robin
                    // pick keeps the split (never all traffic on one target).
                    None => wrr(route, cursor(route), &mut |_| true),
                },
            }
        }
    };
    Some(Selection {
        route: route_index,
        target: Some(target),
        cluster: route.targets[target].cluster.clone(),
        reason,
    })
}

fn wrr(route: &Route, n: u64, available: &mut impl FnMut(usize) -> bool) -> (usize, Reason) {
    let pick = route.wrr.at(n);
    if available(pick) {
        return (pick, Reason::Picked);
    }
    match route.wrr.next_available(n, &mut *available) {
        Some((other, _)) => (other, Reason::Failover),
        None => (pick, Reason::Picked),
    }
}

/// How long a least_requests in-flight count lasts without being given back: counts are
/// leases taken in windows of this length and counted through the next window, so counts of
/// a VM that died (trapped, was replaced) mid-stream expire instead of skewing the split for
/// ever. Streams longer than two windows stop counting (documented).
pub const IN_FLIGHT_LEASE_NS: u64 = 60_000_000_000;

/// least_requests: picks the allowed target with the fewest in-flight requests (shared across
/// workers) relative to its weight, and counts it, in one CAS, at `now`.
pub fn acquire_least(
    store: &impl CasStore,
    route: &Route,
    allowed: &dyn Fn(usize) -> bool,
    now: u64,
) -> Option<usize> {
    let key = format!("{}.inflight", route.state_key);
    let n = route.targets.len();
    let window = now / IN_FLIGHT_LEASE_NS;
    update_with_cas(store, &key, 16, |value| {
        let mut leased = LeasedCounts::decode(value, n).at(window);
        match strategy::least_requests(&route.weights, &leased.totals(), allowed) {
            Some(i) => {
                leased.take(i);
                (Some(leased.encode()), Some(i))
            }
            None => (None, None),
        }
    })
    .ok()
    .flatten()
}

/// Ends a least_requests stream counted at `taken_at`: its target has one fewer in flight
/// (nothing, when its lease already expired).
pub fn release_least(store: &impl CasStore, route: &Route, target: usize, taken_at: u64, now: u64) {
    let key = format!("{}.inflight", route.state_key);
    let n = route.targets.len();
    let (window, taken) = (
        now.max(taken_at) / IN_FLIGHT_LEASE_NS,
        taken_at / IN_FLIGHT_LEASE_NS,
    );
    let _ = update_with_cas(store, &key, 16, |value| {
        let mut leased = LeasedCounts::decode(value, n).at(window);
        if leased.give_back(target, taken) {
            (Some(leased.encode()), ())
        } else {
            (None, ())
        }
    });
}

/// In-flight counts of a least_requests route at `now`, for tests and diagnostics.
pub fn in_flight(store: &impl CasStore, route: &Route, now: u64) -> Vec<u32> {
    let key = format!("{}.inflight", route.state_key);
    let value = store.get(&key).ok().flatten().map(|(v, _)| v);
    LeasedCounts::decode(value.as_deref(), route.targets.len())
        .at(now / IN_FLIGHT_LEASE_NS)
        .totals()
}

/// The shared round-robin cursor: one CAS per pick makes the split exact across workers.
pub fn shared_cursor(store: &impl CasStore, route: &Route) -> Option<u64> {
    let key = format!("{}.cursor", route.state_key);
    update_with_cas(store, &key, 16, |value| {
        let n = value.and_then(edgewise_support::le::u64_exact).unwrap_or(0);
        (Some((n + 1).to_le_bytes().to_vec()), n)
    })
    .ok()
}
