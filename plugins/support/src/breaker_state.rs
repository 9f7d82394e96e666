//! The circuit breaker's published state layout in shared data, so any plugin on the same
//! `vm_id` (the weighted router's failover) can read a breaker without knowing its internals.
//!
//! Layout (documented in the README): a breaker for upstream identity `u` lives in one of
//! `slots` shared-data keys `edgewise.cb.<n>`, at n = (h + i) mod slots for the first
//! i in 0..4 whose value starts with h, where h = FNV-1a-64(u) | 1. A value starts with a
//! 32-byte header: bytes 0..8 h (u64 LE), byte 8 the state (0 closed, 1 open, 2 half-open),
//! byte 9 = 1 when half-open with every probe place taken (other requests get the fallback),
//! bytes 16..24 `open_until` (ns since the Unix epoch, u64 LE; while half-open, the probes'
//! deadline); the rest is private.

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

/// FNV-1a 64 of the identity, with the low bit set (0 never names a breaker).
pub fn identity_hash(identity: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in identity {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash | 1
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
}

impl Published {
    /// Whether a request routed to this upstream now would be answered with the breaker's
    /// fallback: open and not yet due to probe, or half-open with every probe place taken.
    pub fn rejects(&self, now: u64) -> bool {
        match self.state {
            BreakerState::Open => now < self.open_until,
            BreakerState::HalfOpen => self.probes_full,
            BreakerState::Closed => false,
        }
    }
}

pub fn read_header(bytes: &[u8]) -> Option<Published> {
    let header = bytes.get(..HEADER_BYTES)?;
    let u64_at = |at: usize| {
        header
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    Some(Published {
        identity_hash: u64_at(0)?,
        state: BreakerState::from_code(header[8]),
        open_until: u64_at(16)?,
        probes_full: header[9] == 1,
    })
}

pub fn write_header(out: &mut [u8], published: &Published) {
    if out.len() < HEADER_BYTES {
        return;
    }
    out[..8].copy_from_slice(&published.identity_hash.to_le_bytes());
    out[8] = published.state.code();
    out[9] = published.probes_full as u8;
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
            .filter(|p| p.identity_hash == hash)
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
    fn fnv1a_matches_the_reference_vectors() {
        // FNV-1a 64 of "" and "a" (reference values), with the low bit forced to 1.
        assert_eq!(identity_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(identity_hash(b"a"), 0xaf63_dc4c_8601_ec8c | 1);
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
            },
        );
        let slot = candidate_slots(hash, 256).nth(1).unwrap();
        store.set(&slot_key(slot), &value, None).unwrap();
        let found = lookup(&store, b"api-v2", 256, 0).unwrap();
        assert_eq!((found.state, found.open_until), (BreakerState::Open, 42));
        assert!(lookup(&store, b"api-v1", 256, 0).is_none());
    }
}
