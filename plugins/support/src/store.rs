//! The compare-and-swap store the filter cores keep cross-worker state in. On wasm it is
//! proxy-wasm shared data; natively, `MemoryStore` follows the same rules (Envoy's): the
//! CAS token is a global counter starting at 1 that skips 0, a set with cas 0 is
//! unconditional, a non-zero cas is compared only when the key exists.

use std::collections::HashMap;
use std::sync::Mutex;

/// The CAS to create a key with. Envoy compares a non-zero CAS only when the key exists, so
/// this creates an absent key, and fails with `CasMismatch` if another worker created it
/// first (unless that key's CAS is exactly u32::MAX: one value in 4 billion). A cas of 0
/// would overwrite the other worker's value and lose its update.
pub const CREATE_CAS: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    Stored,
    /// Someone wrote the key since it was read: read again and retry.
    CasMismatch,
}

/// The host refused the operation for a reason other than a CAS race.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

pub trait CasStore {
    /// The value and its CAS token, or None if the key was never set.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Stores `value`; `cas` None (or 0) is unconditional.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<SetOutcome, StoreError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// Lost the race `attempts` times in a row.
    Contended {
        attempts: u32,
    },
    Store(StoreError),
}

/// Read-modify-write with CAS: `update` maps the current value (None if absent) to the new
/// value, or to None to leave the key as it is. Retries on `CasMismatch` up to
/// `max_attempts`. Returns what `update` produced on the winning attempt.
pub fn update_with_cas<S: CasStore + ?Sized, T>(
    store: &S,
    key: &str,
    max_attempts: u32,
    mut update: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
) -> Result<T, UpdateError> {
    for _ in 0..max_attempts {
        let current = store.get(key).map_err(UpdateError::Store)?;
        let (new_value, result) = update(current.as_ref().map(|(v, _)| v.as_slice()));
        let Some(new_value) = new_value else {
            return Ok(result);
        };
        // An absent key is created with CREATE_CAS, so a racing creator is not overwritten.
        let cas = Some(current.map(|(_, cas)| cas).unwrap_or(CREATE_CAS));
        match store
            .set(key, &new_value, cas)
            .map_err(UpdateError::Store)?
        {
            SetOutcome::Stored => return Ok(result),
            SetOutcome::CasMismatch => continue,
        }
    }
    Err(UpdateError::Contended {
        attempts: max_attempts,
    })
}

/// Values with their CAS tokens, and the last token handed out.
type Entries = (HashMap<String, (Vec<u8>, u32)>, u32);

/// An in-process store with Envoy's shared-data rules, for native tests and benchmarks.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Entries>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.0.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last CAS token handed out: unchanged exactly when nothing was written.
    pub fn last_cas(&self) -> u32 {
        self.inner.lock().map(|g| g.1).unwrap_or(0)
    }
}

impl CasStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| StoreError("store lock poisoned".into()))?;
        Ok(guard.0.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<SetOutcome, StoreError> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| StoreError("store lock poisoned".into()))?;
        let (map, counter) = &mut *guard;
        if let (Some(expected), Some((_, current))) = (cas.filter(|c| *c != 0), map.get(key)) {
            if *current != expected {
                return Ok(SetOutcome::CasMismatch);
            }
        }
        *counter = counter.wrapping_add(1);
        if *counter == 0 {
            *counter = 1;
        }
        map.insert(key.to_string(), (value.to_vec(), *counter));
        Ok(SetOutcome::Stored)
    }
}

/// A poll lease in shared data: true for the one caller that should poll now (nobody holds
/// the lease at `now_ms`); it then holds it for `period_ms`. Workers of one Envoy poll a
/// control service in turn this way.
pub fn take_lease(store: &impl CasStore, key: &str, now_ms: u64, period_ms: u64) -> bool {
    update_with_cas(store, key, 4, |current| {
        let until = current.and_then(crate::le::u64_exact).unwrap_or(0);
        if until > now_ms {
            return (None, false);
        }
        let next = now_ms.saturating_add(period_ms);
        (Some(next.to_le_bytes().to_vec()), true)
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_envoys_cas_rules() {
        let store = MemoryStore::new();
        assert_eq!(store.get("k").unwrap(), None);
        assert_eq!(
            store.set("k", b"1", Some(999)).unwrap(),
            SetOutcome::Stored,
            "cas is ignored for a missing key"
        );
        let (_, cas) = store.get("k").unwrap().unwrap();
        assert_eq!(
            store.set("k", b"2", Some(cas + 1)).unwrap(),
            SetOutcome::CasMismatch
        );
        assert_eq!(store.set("k", b"2", Some(cas)).unwrap(), SetOutcome::Stored);
        assert_eq!(store.set("k", b"3", None).unwrap(), SetOutcome::Stored);
        assert_eq!(store.get("k").unwrap().unwrap().0, b"3");
    }

    #[test]
    fn creating_a_key_does_not_overwrite_a_racing_creator() {
        let store = MemoryStore::new();
        assert_eq!(
            store.set("k", b"first", Some(CREATE_CAS)).unwrap(),
            SetOutcome::Stored
        );
        assert_eq!(
            store.set("k", b"second", Some(CREATE_CAS)).unwrap(),
            SetOutcome::CasMismatch
        );
        assert_eq!(store.get("k").unwrap().unwrap().0, b"first");
    }

    #[test]
    fn threads_incrementing_lose_no_update() {
        let store = MemoryStore::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        update_with_cas(&store, "n", u32::MAX, |v| {
                            let n = v
                                .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
                                .unwrap_or(0)
                                + 1;
                            (Some(n.to_string().into_bytes()), ())
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(
            store.get("n").unwrap().unwrap().0,
            b"2000",
            "including the racing creation of the key"
        );
    }

    /// A store whose sets lose the race a given number of times first.
    struct Racy {
        inner: MemoryStore,
        losses: Mutex<u32>,
    }

    impl CasStore for Racy {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<SetOutcome, StoreError> {
            let mut losses = self.losses.lock().unwrap();
            if *losses > 0 && cas.is_some() {
                *losses -= 1;
                return Ok(SetOutcome::CasMismatch);
            }
            self.inner.set(key, value, cas)
        }
    }

    proptest! {
        #[test]
        fn retries_exactly_until_it_wins_or_gives_up(losses in 0u32..20, max in 1u32..12) {
            let store = Racy { inner: MemoryStore::new(), losses: Mutex::new(0) };
            store.inner.set("k", b"0", None).unwrap();
            *store.losses.lock().unwrap() = losses;
            let mut calls = 0;
            let result = update_with_cas(&store, "k", max, |_| { calls += 1; (Some(b"x".to_vec()), ()) });
            if losses < max {
                prop_assert!(result.is_ok());
                prop_assert_eq!(calls, losses + 1);
            } else {
                prop_assert_eq!(result, Err(UpdateError::Contended { attempts: max }));
                prop_assert_eq!(calls, max);
            }
        }
    }
}
