//! Request coalescing across workers: one fill lock per key in a bounded set of shared-data
//! keys, so concurrent misses for a key make one origin request and the rest wait for it.
//!
//! Lock slot `edgewise.cache.f.<key_hash mod slots>` holds 24 bytes: the key hash, the time
//! (ms) until which the fill is trusted, and the leader's nonce. A slot whose time has passed
//! is free — a leader that died (worker crash, stream reset before release) delays its key's
//! followers by at most the coalescing wait. Two keys sharing a slot do not wait for each
//! other: the second is simply not coalesced while the first fills.
//!
//! Hit-for-miss: a fill that ends with a response the cache may not store leaves a marker
//! (nonce 0) in the slot for a while, so later misses for that key go to the origin at once
//! instead of queueing behind one another for a response they cannot share.

use edgewise_support::le;
use edgewise_support::store::{CasStore, SetOutcome, CREATE_CAS};

const LOCK_BYTES: usize = 24;
/// Attempts to win a free slot against racing workers before giving up on coalescing.
const ATTEMPTS: u32 = 4;

/// What a miss should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Go to the origin and release the lock when the response is stored (or not).
    Leader,
    /// Another request is filling this key until `until_ms`: wait for its result.
    Follow { until_ms: u64 },
    /// The slot is busy with another key, or the store failed: go to the origin uncoalesced.
    Alone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lock {
    key_hash: u64,
    until_ms: u64,
    nonce: u64,
}

impl Lock {
    fn encode(&self) -> [u8; LOCK_BYTES] {
        let mut out = [0u8; LOCK_BYTES];
        out[0..8].copy_from_slice(&self.key_hash.to_le_bytes());
        out[8..16].copy_from_slice(&self.until_ms.to_le_bytes());
        out[16..24].copy_from_slice(&self.nonce.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Lock> {
        let word = |at: usize| le::u64_at(bytes, at);
        (bytes.len() == LOCK_BYTES).then_some(())?;
        Some(Lock {
            key_hash: word(0)?,
            until_ms: word(8)?,
            nonce: word(16)?,
        })
    }
}

/// The fill-lock key for `key_hash` among `slots` keys.
pub fn lock_key(key_hash: u64, slots: u64) -> String {
    format!("edgewise.cache.f.{}", key_hash % slots.max(1))
}

/// Tries to become the one request filling `key_hash` for `wait_ms` from `now_ms`.
pub fn acquire(
    store: &impl CasStore,
    slots: u64,
    key_hash: u64,
    now_ms: u64,
    wait_ms: u64,
    nonce: u64,
) -> Fill {
    let key = lock_key(key_hash, slots);
    let mine = Lock {
        key_hash,
        until_ms: now_ms.saturating_add(wait_ms),
        nonce,
    };
    for _ in 0..ATTEMPTS {
        let (current, cas) = match store.get(&key) {
            Ok(Some((bytes, cas))) => (Lock::decode(&bytes), cas),
            Ok(None) => (None, CREATE_CAS),
            Err(_) => return Fill::Alone,
        };
        if let Some(lock) = current.filter(|l| l.until_ms > now_ms) {
            return if lock.key_hash == key_hash && lock.nonce != UNCACHEABLE {
                Fill::Follow {
                    until_ms: lock.until_ms,
                }
            } else {
                Fill::Alone
            };
        }
        match store.set(&key, &mine.encode(), Some(cas)) {
            Ok(SetOutcome::Stored) => return Fill::Leader,
            Ok(SetOutcome::CasMismatch) => continue,
            Err(_) => return Fill::Alone,
        }
    }
    Fill::Alone
}

/// Whether a fill of `key_hash` is in progress at `now_ms`.
pub fn filling(store: &impl CasStore, slots: u64, key_hash: u64, now_ms: u64) -> bool {
    matches!(
        store.get(&lock_key(key_hash, slots)),
        Ok(Some((bytes, _))) if Lock::decode(&bytes).is_some_and(|l| {
            l.key_hash == key_hash && l.until_ms > now_ms && l.nonce != UNCACHEABLE
        })
    )
}

/// The nonce of a hit-for-miss marker; leaders' nonces are never 0 (see `leader_nonce`).
const UNCACHEABLE: u64 = 0;

/// A leader's nonce from a random word: never the hit-for-miss marker's.
pub fn leader_nonce(random: u64) -> u64 {
    random | 1
}

/// Releases the leader's lock (only if it is still the leader's): followers stop waiting.
pub fn release(store: &impl CasStore, slots: u64, key_hash: u64, nonce: u64) {
    end_fill(store, slots, key_hash, nonce, 0);
}

/// Releases the leader's lock after a response the cache may not store: followers stop
/// waiting, and misses for the key skip coalescing until `until_ms` (hit-for-miss).
pub fn release_uncacheable(
    store: &impl CasStore,
    slots: u64,
    key_hash: u64,
    nonce: u64,
    until_ms: u64,
) {
    end_fill(store, slots, key_hash, nonce, until_ms);
}

fn end_fill(store: &impl CasStore, slots: u64, key_hash: u64, nonce: u64, uncacheable_until: u64) {
    let key = lock_key(key_hash, slots);
    for _ in 0..ATTEMPTS {
        let Ok(Some((bytes, cas))) = store.get(&key) else {
            return;
        };
        let Some(lock) =
            Lock::decode(&bytes).filter(|l| l.key_hash == key_hash && l.nonce == nonce)
        else {
            return;
        };
        let released = Lock {
            until_ms: uncacheable_until,
            nonce: if uncacheable_until > 0 {
                UNCACHEABLE
            } else {
                nonce
            },
            ..lock
        };
        match store.set(&key, &released.encode(), Some(cas)) {
            Ok(SetOutcome::CasMismatch) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewise_support::store::MemoryStore;

    #[test]
    fn first_miss_leads_the_rest_follow_until_release() {
        let store = MemoryStore::new();
        assert_eq!(acquire(&store, 64, 7, 1_000, 5_000, 1), Fill::Leader);
        assert_eq!(
            acquire(&store, 64, 7, 1_001, 5_000, 2),
            Fill::Follow { until_ms: 6_000 }
        );
        assert!(filling(&store, 64, 7, 1_002));
        release(&store, 64, 7, 2); // not the leader's nonce: ignored
        assert!(filling(&store, 64, 7, 1_002));
        release(&store, 64, 7, 1);
        assert!(!filling(&store, 64, 7, 1_002));
        assert_eq!(acquire(&store, 64, 7, 1_003, 5_000, 3), Fill::Leader);
    }

    /// Hit-for-miss: after an unstorable response, misses for the key go to the origin
    /// uncoalesced until the marker expires; then the next miss leads again.
    #[test]
    fn an_uncacheable_fill_lets_later_misses_through() {
        let store = MemoryStore::new();
        let nonce = leader_nonce(6);
        assert_eq!(acquire(&store, 64, 7, 1_000, 5_000, nonce), Fill::Leader);
        release_uncacheable(&store, 64, 7, nonce, 11_000);
        assert!(!filling(&store, 64, 7, 1_001), "waiters are let go");
        assert_eq!(acquire(&store, 64, 7, 1_001, 5_000, 3), Fill::Alone);
        assert_eq!(acquire(&store, 64, 7, 10_999, 5_000, 5), Fill::Alone);
        assert_eq!(acquire(&store, 64, 7, 11_000, 5_000, 7), Fill::Leader);
        assert_eq!(leader_nonce(0), 1);
    }

    #[test]
    fn an_abandoned_lock_expires_after_the_wait() {
        let store = MemoryStore::new();
        assert_eq!(acquire(&store, 64, 7, 0, 5_000, 1), Fill::Leader);
        assert!(filling(&store, 64, 7, 4_999));
        assert!(!filling(&store, 64, 7, 5_000));
        assert_eq!(acquire(&store, 64, 7, 5_000, 5_000, 2), Fill::Leader);
    }

    #[test]
    fn another_key_in_the_same_slot_is_not_coalesced() {
        let store = MemoryStore::new();
        assert_eq!(acquire(&store, 64, 7, 0, 5_000, 1), Fill::Leader);
        assert_eq!(acquire(&store, 64, 7 + 64, 1, 5_000, 2), Fill::Alone);
        assert!(!filling(&store, 64, 7 + 64, 1));
    }

    /// Workers racing for one key on threads: exactly one leader.
    #[test]
    fn exactly_one_leader_among_racing_workers() {
        use std::sync::{Arc, Barrier};
        for round in 0..200u64 {
            let store = Arc::new(MemoryStore::new());
            let barrier = Arc::new(Barrier::new(4));
            let handles: Vec<_> = (0..4u64)
                .map(|worker| {
                    let (store, barrier) = (store.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        acquire(&*store, 64, round, 10, 5_000, worker + 1)
                    })
                })
                .collect();
            let fills: Vec<Fill> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let leaders = fills.iter().filter(|f| **f == Fill::Leader).count();
            assert_eq!(leaders, 1, "round {round}: {fills:?}");
            assert!(fills
                .iter()
                .all(|f| matches!(f, Fill::Leader | Fill::Follow { until_ms: 5_010 })));
        }
    }
}
