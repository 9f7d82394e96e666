//! The circuit breaker's published state layout in shared data, so any plugin on the same
//! `vm_id` (the weighted router's failover) can read a breaker without knowing its internals.
//!
//! Layout (documented in docs/circuit-breaker.md): a breaker for upstream identity `u` lives
//! in one of `slots` shared-data keys `edgewise.cb.<n>`, at n = (h + i) mod slots for the
//! first i in 0..4 whose value starts with h and ends with `u`, where h = the keyed hash of
//! `u` under the deployment's seed (`seed.rs`) | 1. A value starts with a 32-byte header:
//! bytes 0..8 h (u64 LE), byte 8 the state (0 closed, 1 open, 2 half-open), byte 9 = 1 when
//! half-open with every probe place taken (other requests get the fallback), bytes 10..12
//! the length L of the stored identity (u16 LE), byte 12 = 1 when only the breaker's own
//! active probe may close it (open past its time still rejects, for `ACTIVE_PROBE_GRACE_NS`),
//! byte 13 an operator's forced state (0 automatic, 1 forced open, 2 forced closed), bytes 16..24 `open_until` (ns since the
//! Unix epoch, u64 LE; while half-open, the probes' deadline); the value's last L bytes are
//! the identity (its first `MAX_STORED_IDENTITY` bytes), compared in full so two identities
//! with one hash never share a breaker; the rest is private.

use crate::store::CasStore;

/// How many consecutive slots a breaker may occupy from its home slot.
pub const PROBE_SLOTS: u64 = 4;
pub const HEADER_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    pub fn from_code(code: u8) -> BreakerState {
        match code {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// The keyed hash of the identity under the deployment's seed, with the low bit set (0
/// never names a breaker). Also the cache's slot hash: nobody without the seed can choose
/// inputs that land in a victim's slots.
pub fn identity_hash(identity: &[u8]) -> u64 {
    crate::seed::keyed_hash(crate::seed::get(), identity) | 1
}

/// How much of an identity a breaker value stores for the full comparison (longer ones are
/// compared by this prefix and the keyed hash).
pub const MAX_STORED_IDENTITY: usize = 512;

/// `value` with `identity` appended and its length in the header (see the layout above).
pub fn with_identity(mut value: Vec<u8>, identity: &[u8]) -> Vec<u8> {
    let stored = &identity[..identity.len().min(MAX_STORED_IDENTITY)];
    if value.len() >= HEADER_BYTES {
        value[10..12].copy_from_slice(&(stored.len() as u16).to_le_bytes());
        value.extend_from_slice(stored);
    }
    value
}

/// The identity stored at the end of a breaker value (empty when none is).
pub fn stored_identity(value: &[u8]) -> &[u8] {
    let len = crate::le::u16_at(value, 10).map_or(0, usize::from);
    match value.len().checked_sub(len) {
        Some(start) if start >= HEADER_BYTES => &value[start..],
        _ => &[],
    }
}

/// Whether a breaker value belongs to `identity`: same hash and same stored identity.
pub fn belongs_to(value: &[u8], published: &Published, identity: &[u8], hash: u64) -> bool {
    published.identity_hash == hash
        && stored_identity(value) == &identity[..identity.len().min(MAX_STORED_IDENTITY)]
}

pub fn slot_key(slot: u64) -> String {
    format!("edgewise.cb.{slot}")
}

/// The candidate slots for a hash, in probing order.
pub fn candidate_slots(hash: u64, slots: u64) -> impl Iterator<Item = u64> {
    let slots = slots.max(1);
    (0..PROBE_SLOTS.min(slots)).map(move |i| (hash % slots + i) % slots)
}

/// The published part of a breaker value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub identity_hash: u64,
    pub state: BreakerState,
    pub open_until: u64,
    /// Half-open with every probe place taken: a request sent there now gets the fallback.
    pub probes_full: bool,
    /// Closed only by the breaker's own active probe: clients are not sent there to probe.
    pub probe_only: bool,
    /// An operator's forced state (`FORCED_OPEN`, `FORCED_CLOSED`; 0: automatic).
    pub forced: u8,
}

/// Forced states an operator can set through the control service.
pub const FORCED_OPEN: u8 = 1;
pub const FORCED_CLOSED: u8 = 2;

/// How long past its open time a breaker that probes actively keeps rejecting while no
/// probe has started (the workers that would send it are gone): then client requests probe
/// it, as without active probing, so it can never stay open for ever.
pub const ACTIVE_PROBE_GRACE_NS: u64 = 10_000_000_000;

impl Published {
    /// Whether a request routed to this upstream now would be answered with the breaker's
    /// fallback: open and not yet due to probe, or half-open with every probe place taken.
    pub fn rejects(&self, now: u64) -> bool {
        match self.forced {
            FORCED_OPEN => return true,
            FORCED_CLOSED => return false,
            _ => {}
        }
        match self.state {
            BreakerState::Open if self.probe_only => {
                now < self.open_until.saturating_add(ACTIVE_PROBE_GRACE_NS)
            }
            BreakerState::Open => now < self.open_until,
            BreakerState::HalfOpen => self.probes_full || self.probe_only,
            BreakerState::Closed => false,
        }
    }
}

pub fn read_header(bytes: &[u8]) -> Option<Published> {
    let header = bytes.get(..HEADER_BYTES)?;
    let u64_at = |at: usize| crate::le::u64_at(header, at);
    Some(Published {
        identity_hash: u64_at(0)?,
        state: BreakerState::from_code(header[8]),
        open_until: u64_at(16)?,
        probes_full: header[9] == 1,
        probe_only: header[12] == 1,
        forced: header[13],
    })
}

pub fn write_header(out: &mut [u8], published: &Published) {
    if out.len() < HEADER_BYTES {
        return;
    }
    out[..8].copy_from_slice(&published.identity_hash.to_le_bytes());
    out[8] = published.state.code();
    out[9] = published.probes_full as u8;
    out[12] = published.probe_only as u8;
    out[13] = published.forced;
    out[16..24].copy_from_slice(&published.open_until.to_le_bytes());
}

/// Whether traffic to `identity` would be rejected by its breaker at `now`: open and not
/// yet due for probing. (Half-open admits only the breaker's own probes; callers that can
/// choose another upstream should treat half-open as unavailable too.)
pub fn lookup(store: &impl CasStore, identity: &[u8], slots: u64, now: u64) -> Option<Published> {
    let _ = now;
    lookup_slot(store, identity, slots).map(|(_, published)| published)
}

/// The breaker's slot and published header, when `identity` has a breaker.
fn lookup_slot(store: &impl CasStore, identity: &[u8], slots: u64) -> Option<(u64, Published)> {
    let hash = identity_hash(identity);
    candidate_slots(hash, slots).find_map(|slot| {
        let (bytes, _) = store.get(&slot_key(slot)).ok().flatten()?;
        read_header(&bytes)
            .filter(|p| belongs_to(&bytes, p, identity, hash))
            .map(|p| (slot, p))
    })
}

/// Whether a request sent to `identity` now would get its breaker's fallback: the breaker
/// rejects (see [`Published::rejects`]) or its bulkhead is full (one more read, only when
/// the breaker would admit). Unknown upstreams are available.
pub fn unavailable(store: &impl CasStore, identity: &[u8], slots: u64, now: u64) -> bool {
    let Some((slot, published)) = lookup_slot(store, identity, slots) else {
        return false;
    };
    published.rejects(now)
        || crate::bulkhead::is_full(
            store,
            &crate::bulkhead::bulkhead_key(&slot_key(slot)),
            published.identity_hash,
            now,
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn identity_hashes_are_keyed_and_never_zero() {
        crate::seed::set(1);
        let one = identity_hash(b"api-v2");
        crate::seed::set(2);
        let two = identity_hash(b"api-v2");
        crate::seed::set(0);
        assert_ne!(one, two);
        assert_eq!(one & 1, 1);
    }

    #[test]
    fn a_value_with_the_same_hash_but_another_identity_is_not_ours() {
        let hash = identity_hash(b"api-v2");
        let mut value = vec![0u8; 64];
        let published = Published {
            identity_hash: hash,
            state: BreakerState::Open,
            open_until: 42,
            probes_full: false,
            probe_only: false,
            forced: 0,
        };
        write_header(&mut value, &published);
        let theirs = with_identity(value.clone(), b"evil");
        let ours = with_identity(value, b"api-v2");
        assert_eq!(stored_identity(&ours), b"api-v2");
        assert!(belongs_to(&ours, &published, b"api-v2", hash));
        assert!(!belongs_to(&theirs, &published, b"api-v2", hash));
        let long = vec![b'x'; MAX_STORED_IDENTITY + 10];
        let stored = with_identity(vec![0u8; 64], &long);
        assert_eq!(stored_identity(&stored).len(), MAX_STORED_IDENTITY);
        assert_eq!(stored_identity(b"short"), b"");
    }

    #[test]
    fn probing_wraps_and_is_bounded() {
        assert_eq!(
            candidate_slots(10, 12).collect::<Vec<_>>(),
            vec![10, 11, 0, 1]
        );
        assert_eq!(candidate_slots(5, 2).collect::<Vec<_>>(), vec![1, 0]);
    }

    #[test]
    fn a_published_header_can_be_found_by_identity() {
        let store = MemoryStore::new();
        let hash = identity_hash(b"api-v2");
        let mut value = vec![0u8; 64];
        write_header(
            &mut value,
            &Published {
                identity_hash: hash,
                state: BreakerState::Open,
                open_until: 42,
                probes_full: false,
                probe_only: false,
                forced: 0,
            },
        );
        let slot = candidate_slots(hash, 256).nth(1).unwrap();
        store
            .set(&slot_key(slot), &with_identity(value, b"api-v2"), None)
            .unwrap();
        let found = lookup(&store, b"api-v2", 256, 0).unwrap();
        assert_eq!((found.state, found.open_until), (BreakerState::Open, 42));
        assert!(lookup(&store, b"api-v1", 256, 0).is_none());
    }
}
