//! Breakers in shared data: placement in the bounded slot table (see
//! `edgewise_support::breaker_state` for the published layout), and the CAS loops around the
//! pure state machine. One read per request while closed (an upstream's first request claims
//! an empty slot); at most one CAS per response.

use edgewise_support::breaker_state::{
    belongs_to, candidate_slots, identity_hash, read_header, slot_key, with_identity,
};
use edgewise_support::store::{CasStore, SetOutcome, CREATE_CAS};

use crate::breaker::{Admission, Breaker, Outcome, Transition};
use crate::config::Params;
use edgewise_support::breaker_state::BreakerState;

pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// Why a breaker could not be read or updated (the adapter fails open on either).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The host's shared data refused the operation.
    Store,
    /// Lost the CAS race `MAX_CAS_ATTEMPTS` times in a row.
    Contended,
}

/// Where a breaker lives (or would live).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub key: String,
    pub breaker: Breaker,
    /// CAS of the stored value; None when the slot was empty.
    pub cas: Option<u32>,
    /// The slot held another upstream's idle breaker that this one may take over.
    pub takeover: bool,
}

/// Finds the upstream's breaker: its own slot if it has one, else the first empty or idle
/// slot among its candidates (a fresh breaker, written only once there is something to
/// record). None when every candidate slot is held by another active breaker: the
/// upstream is then not tracked (requests pass; counted by the adapter).
pub fn locate(
    store: &impl CasStore,
    identity: &[u8],
    slots: u64,
    params: &Params,
    now: u64,
) -> Result<Option<Located>, TableError> {
    let hash = identity_hash(identity);
    let mut free: Option<Located> = None;
    for slot in candidate_slots(hash, slots) {
        let key = slot_key(slot);
        match store.get(&key).map_err(|_| TableError::Store)? {
            Some((bytes, cas)) => match Breaker::decode(&bytes) {
                Some(b)
                    if read_header(&bytes)
                        .is_some_and(|p| belongs_to(&bytes, &p, identity, hash)) =>
                {
                    return Ok(Some(Located {
                        key,
                        breaker: b,
                        cas: Some(cas),
                        takeover: false,
                    }))
                }
                Some(other) if free.is_none() && other.is_idle(params, now) => {
                    free = Some(Located {
                        key,
                        breaker: Breaker::new(hash),
                        cas: Some(cas),
                        takeover: true,
                    })
                }
                None if free.is_none() => {
                    free = Some(Located {
                        key,
                        breaker: Breaker::new(hash),
                        cas: Some(cas),
                        takeover: true,
                    })
                }
                _ => {}
            },
            None if free.is_none() => {
                free = Some(Located {
                    key,
                    breaker: Breaker::new(hash),
                    cas: None,
                    takeover: false,
                })
            }
            None => {}
        }
    }
    Ok(free)
}

/// Applies `change` to the upstream's breaker with CAS, retrying lost races; with the result,
/// the breaker's slot key.
fn update<T>(
    store: &impl CasStore,
    identity: &[u8],
    slots: u64,
    params: &Params,
    now: u64,
    claim_empty: bool,
    mut change: impl FnMut(&Breaker) -> (Option<Breaker>, T),
) -> Result<Option<(T, String)>, TableError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some(located) = locate(store, identity, slots, params, now)? else {
            return Ok(None);
        };
        let (next, result) = change(&located.breaker);
        // A fresh breaker in an empty slot is written once even with nothing to record, so
        // later requests find it at its slot instead of reading every candidate.
        let claim = (claim_empty && located.cas.is_none()).then(|| located.breaker.clone());
        let Some(mut next) = next.or(claim) else {
            return Ok(Some((result, located.key)));
        };
        next.probe_only = params.active_probe.is_some();
        match store
            .set(
                &located.key,
                &with_identity(next.encode(), identity),
                Some(located.cas.unwrap_or(CREATE_CAS)),
            )
            .map_err(|_| TableError::Store)?
        {
            SetOutcome::Stored => return Ok(Some((result, located.key))),
            SetOutcome::CasMismatch => continue,
        }
    }
    Err(TableError::Contended)
}

/// Admission for a new request, with the breaker's slot key (its bulkhead sits beside it).
/// `Ok(None)`: the upstream is not tracked (table full).
pub fn admit(
    store: &impl CasStore,
    identity: &[u8],
    slots: u64,
    params: &Params,
    now: u64,
) -> Result<Option<(Admission, Transition, String)>, TableError> {
    update(store, identity, slots, params, now, true, |b| {
        let (admission, next, transition) = b.admit(params, now);
        (next, (admission, transition))
    })
    .map(|found| found.map(|((admission, transition), key)| (admission, transition, key)))
}

/// Records a response outcome; returns the transition it caused.
pub fn record(
    store: &impl CasStore,
    identity: &[u8],
    slots: u64,
    params: &Params,
    outcome: Outcome,
    probe: Option<u32>,
    now: u64,
) -> Result<Option<Transition>, TableError> {
    update(store, identity, slots, params, now, false, |b| {
        b.record(params, outcome, probe, now)
    })
    .map(|found| found.map(|(transition, _)| transition))
}

/// Records the failure of a call the slow-call watch already counted as slow.
pub fn record_late_failure(
    store: &impl CasStore,
    identity: &[u8],
    slots: u64,
    params: &Params,
    now: u64,
) -> Result<Option<Transition>, TableError> {
    update(store, identity, slots, params, now, false, |b| {
        b.record_late_failure(params, now)
    })
    .map(|found| found.map(|(transition, _)| transition))
}

/// The breaker's own half-open probe (see `Breaker::take_active_probe`): the episode to
/// send a probe under, if this caller won the place; the transition; the state after.
/// `Ok(None)`: the upstream has no breaker (never tripped, or its slot was taken over).
pub fn take_active_probe(
    store: &impl CasStore,
    identity: &[u8],
    slots: u64,
    params: &Params,
    now: u64,
) -> Result<Option<(Option<u32>, Transition, BreakerState)>, TableError> {
    update(store, identity, slots, params, now, false, |b| {
        let (next, episode, transition) = b.take_active_probe(params, now);
        let state = next.as_ref().map_or(b.state, |n| n.state);
        (next, (episode, transition, state))
    })
    .map(|found| found.map(|(result, _)| result))
}

/// Sets an operator's forced state (see `Breaker::forced_to`), claiming a slot if the
/// upstream has none. `Ok(false)`: the table is full of other active breakers.
pub fn force(
    store: &impl CasStore,
    identity: &[u8],
    slots: u64,
    params: &Params,
    forced: u8,
    now: u64,
) -> Result<bool, TableError> {
    update(store, identity, slots, params, now, true, |b| {
        (
            (b.forced != forced || forced == 0).then(|| b.forced_to(forced)),
            (),
        )
    })
    .map(|found| found.is_some())
}

/// Gives back the place of a probe whose request ended without a response.
pub fn abandon_probe(
    store: &impl CasStore,
    identity: &[u8],
    slots: u64,
    params: &Params,
    episode: u32,
    now: u64,
) -> Result<(), TableError> {
    update(store, identity, slots, params, now, false, |b| {
        (b.abandon_probe(episode), ())
    })
    .map(|_| ())
}
