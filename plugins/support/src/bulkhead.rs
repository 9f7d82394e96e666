//! A breaker's bulkhead in shared data: how many requests are in flight to one upstream
//! across every worker, beside the breaker's slot, so the breaker can bound them and the
//! weighted router can route around a full one.
//!
//! Layout of `edgewise.cb.<n>.inflight` (next to breaker slot n): bytes 0..8 the identity
//! hash (u64 LE; another hash means another upstream took the slot: counts start again),
//! bytes 8..12 the configured `max_in_flight` (u32 LE, for readers that do not know the
//! breaker's configuration), then `lease::LeasedCounts` with one count. Counts are leases,
//! so the requests of a VM that died mid-stream stop counting after one to two lease windows.

use crate::lease::LeasedCounts;
use crate::store::{update_with_cas, CasStore, UpdateError};

/// A request counted in flight stops counting after one to two of these even if its stream
/// never reports its end (its VM trapped or was replaced).
pub const BULKHEAD_LEASE_NS: u64 = 60_000_000_000;

const CAS_ATTEMPTS: u32 = 16;

/// The bulkhead key of breaker slot key `slot_key`.
pub fn bulkhead_key(slot_key: &str) -> String {
    format!("{slot_key}.inflight")
}

/// A decoded bulkhead value.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bulkhead {
    hash: u64,
    max: u32,
    counts: LeasedCounts,
}

impl Bulkhead {
    /// The value for upstream `hash` at lease window `window` (fresh for another upstream).
    fn decode(value: Option<&[u8]>, hash: u64, window: u64) -> Bulkhead {
        use crate::le::{u32_at, u64_at};
        match value {
            Some(b) if u64_at(b, 0) == Some(hash) => Bulkhead {
                hash,
                max: u32_at(b, 8).unwrap_or(0),
                counts: LeasedCounts::decode(b.get(12..), 1).at(window),
            },
            _ => Bulkhead {
                hash,
                max: 0,
                counts: LeasedCounts::decode(None, 1).at(window),
            },
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.hash.to_le_bytes().to_vec();
        out.extend_from_slice(&self.max.to_le_bytes());
        out.extend_from_slice(&self.counts.encode());
        out
    }

    fn in_flight(&self) -> u32 {
        self.counts.totals().first().copied().unwrap_or(0)
    }
}

/// What [`acquire`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Counted in flight; give it back with [`release`] and this `taken_at`.
    Admitted { taken_at: u64 },
    /// `max` requests are in flight already.
    Full { in_flight: u32 },
}

/// Counts one more request in flight to upstream `hash` unless `max` are already, in one CAS.
pub fn acquire(
    store: &impl CasStore,
    key: &str,
    hash: u64,
    max: u32,
    now: u64,
) -> Result<Acquired, UpdateError> {
    let window = now / BULKHEAD_LEASE_NS;
    update_with_cas(store, key, CAS_ATTEMPTS, |value| {
        let mut bulkhead = Bulkhead::decode(value, hash, window);
        let in_flight = bulkhead.in_flight();
        if in_flight >= max {
            return (None, Acquired::Full { in_flight });
        }
        bulkhead.max = max;
        bulkhead.counts.take(0);
        (
            Some(bulkhead.encode()),
            Acquired::Admitted { taken_at: now },
        )
    })
}

/// Ends a request counted at `taken_at` (nothing, when its lease already expired or another
/// upstream took the slot since).
pub fn release(
    store: &impl CasStore,
    key: &str,
    hash: u64,
    taken_at: u64,
    now: u64,
) -> Result<(), UpdateError> {
    let window = now.max(taken_at) / BULKHEAD_LEASE_NS;
    update_with_cas(store, key, CAS_ATTEMPTS, |value| {
        if value.is_none() {
            return (None, ());
        }
        let mut bulkhead = Bulkhead::decode(value, hash, window);
        if bulkhead.max == 0 || !bulkhead.counts.give_back(0, taken_at / BULKHEAD_LEASE_NS) {
            return (None, ());
        }
        (Some(bulkhead.encode()), ())
    })
}

/// (in flight, max) of upstream `hash` at `now`; None without a bulkhead value for it.
pub fn in_flight(store: &impl CasStore, key: &str, hash: u64, now: u64) -> Option<(u32, u32)> {
    let (value, _) = store.get(key).ok().flatten()?;
    let bulkhead = Bulkhead::decode(Some(&value), hash, now / BULKHEAD_LEASE_NS);
    (bulkhead.max > 0).then(|| (bulkhead.in_flight(), bulkhead.max))
}

/// Whether a request to upstream `hash` would find its bulkhead full at `now`.
pub fn is_full(store: &impl CasStore, key: &str, hash: u64, now: u64) -> bool {
    in_flight(store, key, hash, now).is_some_and(|(n, max)| n >= max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const T0: u64 = 1_700_000_000_000_000_000;
    const KEY: &str = "edgewise.cb.7.inflight";

    #[test]
    fn admits_up_to_max_and_frees_on_release() {
        let store = MemoryStore::new();
        let a = acquire(&store, KEY, 11, 2, T0).unwrap();
        let b = acquire(&store, KEY, 11, 2, T0 + 1).unwrap();
        assert!(matches!(a, Acquired::Admitted { .. }));
        assert!(matches!(b, Acquired::Admitted { .. }));
        assert_eq!(
            acquire(&store, KEY, 11, 2, T0 + 2).unwrap(),
            Acquired::Full { in_flight: 2 }
        );
        assert!(is_full(&store, KEY, 11, T0 + 2));
        let Acquired::Admitted { taken_at } = a else {
            unreachable!()
        };
        release(&store, KEY, 11, taken_at, T0 + 3).unwrap();
        assert_eq!(in_flight(&store, KEY, 11, T0 + 3), Some((1, 2)));
        assert!(!is_full(&store, KEY, 11, T0 + 3));
    }

    #[test]
    fn counts_of_dead_streams_expire_and_another_upstream_starts_afresh() {
        let store = MemoryStore::new();
        for i in 0..3 {
            acquire(&store, KEY, 11, 3, T0 + i).unwrap();
        }
        assert!(is_full(&store, KEY, 11, T0 + BULKHEAD_LEASE_NS));
        let later = T0 + 2 * BULKHEAD_LEASE_NS;
        assert_eq!(in_flight(&store, KEY, 11, later), Some((0, 3)));
        assert!(matches!(
            acquire(&store, KEY, 13, 1, T0).unwrap(),
            Acquired::Admitted { .. }
        ));
        assert_eq!(in_flight(&store, KEY, 11, T0), None, "the slot moved on");
        release(&store, KEY, 11, T0, T0 + 1).unwrap();
        assert_eq!(in_flight(&store, KEY, 13, T0 + 1), Some((1, 1)));
    }
}
