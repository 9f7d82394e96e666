//! Bounded storage for cached responses in shared data: a fixed set of keys (so memory stays
//! bounded without a delete), a byte budget, and LRU / LFU / FIFO eviction by sampling.
//!
//! Slot n holds `edgewise.cache.m.<n>` (40-byte metadata) and `edgewise.cache.e.<n>` (the
//! entry); `edgewise.cache.bytes` counts the bytes of stored entries. A key lives in one of
//! the `PROBES` slots after its hash. Writers claim a slot's metadata with CAS (state
//! `writing`), write the entry, then mark it `ready`; readers use only `ready` slots.
//! Eviction empties the entry (setting "" frees the value) and the metadata.

use edgewise_support::store::{update_with_cas, CasStore, SetOutcome, CREATE_CAS};

/// Candidate slots per key: each costs a shared-data read on a miss, so few; 4-way
/// placement still keeps colliding hot keys apart.
pub const PROBES: u64 = 4;
const META_BYTES: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    Lru,
    Lfu,
    Fifo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub slots: u64,
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
    pub eviction: Eviction,
    /// Slots sampled to pick a victim when over budget.
    pub sample: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub key_hash: u64,
    /// 0 empty, 1 writing, 2 ready.
    pub state: u8,
    pub size: u64,
    pub inserted: u64,
    pub last_access: u64,
    pub hits: u32,
}

impl Meta {
    fn decode(bytes: &[u8]) -> Meta {
        if bytes.len() != META_BYTES {
            return Meta::default();
        }
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        };
        Meta {
            key_hash: u64_at(0),
            state: bytes[8],
            hits: bytes
                .get(12..16)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .unwrap_or(0),
            size: u64_at(16),
            inserted: u64_at(24),
            last_access: u64_at(32),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; META_BYTES];
        out[..8].copy_from_slice(&self.key_hash.to_le_bytes());
        out[8] = self.state;
        out[12..16].copy_from_slice(&self.hits.to_le_bytes());
        out[16..24].copy_from_slice(&self.size.to_le_bytes());
        out[24..32].copy_from_slice(&self.inserted.to_le_bytes());
        out[32..40].copy_from_slice(&self.last_access.to_le_bytes());
        out
    }

    /// Lower ranks are evicted first.
    fn rank(&self, eviction: Eviction) -> u64 {
        match eviction {
            Eviction::Lru => self.last_access,
            Eviction::Lfu => self.hits as u64,
            Eviction::Fifo => self.inserted,
        }
    }
}

fn meta_key(slot: u64) -> String {
    format!("edgewise.cache.m.{slot}")
}

fn entry_key(slot: u64) -> String {
    format!("edgewise.cache.e.{slot}")
}

const BYTES_KEY: &str = "edgewise.cache.bytes";

fn candidates(layout: &Layout, key_hash: u64) -> impl Iterator<Item = u64> + '_ {
    (0..PROBES.min(layout.slots)).map(move |i| (key_hash % layout.slots + i) % layout.slots)
}

fn read_meta(store: &impl CasStore, slot: u64) -> (Meta, Option<u32>) {
    match store.get(&meta_key(slot)) {
        Ok(Some((bytes, cas))) => (Meta::decode(&bytes), Some(cas)),
        _ => (Meta::default(), None),
    }
}

/// Bytes of stored entries (all workers).
pub fn bytes_in_use(store: &impl CasStore) -> u64 {
    store
        .get(BYTES_KEY)
        .ok()
        .flatten()
        .and_then(|(v, _)| v.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn add_bytes(store: &impl CasStore, delta: i64) {
    let _ = update_with_cas(store, BYTES_KEY, 64, |v| {
        let current = v
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        (
            Some((current as i64 + delta).max(0).to_le_bytes().to_vec()),
            (),
        )
    });
}

/// A found entry: where it is, its metadata as read (with CAS, for `touch`), the bytes.
pub struct Found {
    pub slot: u64,
    pub meta: Meta,
    pub meta_cas: Option<u32>,
    pub entry: Vec<u8>,
}

/// The ready entry for `key_hash`.
pub fn lookup(store: &impl CasStore, layout: &Layout, key_hash: u64) -> Option<Found> {
    candidates(layout, key_hash).find_map(|slot| {
        let (meta, meta_cas) = read_meta(store, slot);
        if meta.state != 2 || meta.key_hash != key_hash {
            return None;
        }
        let (entry, _) = store.get(&entry_key(slot)).ok().flatten()?;
        (entry.len() as u64 == meta.size).then_some(Found {
            slot,
            meta,
            meta_cas,
            entry,
        })
    })
}

/// Records a hit for LRU / LFU with the metadata read by `lookup` (one write; FIFO needs
/// none, LRU none when the entry was already used this second — its clock's resolution).
/// Best effort: losing a race only loses one count.
pub fn touch(store: &impl CasStore, layout: &Layout, found: &Found, now: u64) {
    match layout.eviction {
        Eviction::Fifo => return,
        Eviction::Lru if found.meta.last_access == now => return,
        _ => {}
    }
    let mut meta = found.meta;
    meta.last_access = now;
    meta.hits = meta.hits.saturating_add(1);
    let _ = store.set(&meta_key(found.slot), &meta.encode(), found.meta_cas);
}

/// Empties a slot if it still holds what `expected` describes; returns the bytes freed.
fn evict(store: &impl CasStore, slot: u64, expected: &Meta, cas: Option<u32>) -> u64 {
    match store.set(
        &meta_key(slot),
        &Meta::default().encode(),
        Some(cas.unwrap_or(CREATE_CAS)),
    ) {
        Ok(SetOutcome::Stored) => {
            let _ = store.set(&entry_key(slot), b"", None);
            if expected.state == 2 {
                add_bytes(store, -(expected.size as i64));
                return expected.size;
            }
            0
        }
        _ => 0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    Stored {
        evicted: u32,
    },
    TooLarge,
    /// Another worker was writing this slot at the same moment.
    Raced,
}

/// Stores an entry for `key_hash`: replaces its own slot, else takes an empty one among its
/// candidates, else evicts the candidate ranked lowest by the policy; then evicts sampled
/// slots until the byte budget holds. `random` picks samples.
pub fn insert(
    store: &impl CasStore,
    layout: &Layout,
    key_hash: u64,
    entry: &[u8],
    now: u64,
    random: &mut dyn FnMut() -> u64,
) -> Insert {
    let size = entry.len() as u64;
    if size > layout.max_entry_bytes || size > layout.max_bytes {
        return Insert::TooLarge;
    }
    let mut evicted = 0;
    let slots: Vec<(u64, Meta, Option<u32>)> = candidates(layout, key_hash)
        .map(|s| {
            let (m, c) = read_meta(store, s);
            (s, m, c)
        })
        .collect();
    if slots
        .iter()
        .any(|(_, m, _)| m.state == 1 && m.key_hash == key_hash)
    {
        return Insert::Raced; // another worker is storing this key right now
    }
    let chosen = slots
        .iter()
        .find(|(_, m, _)| m.key_hash == key_hash && m.state == 2)
        .or_else(|| slots.iter().find(|(_, m, _)| m.state == 0))
        .or_else(|| {
            slots
                .iter()
                .filter(|(_, m, _)| m.state == 2)
                .min_by_key(|(_, m, _)| m.rank(layout.eviction))
        })
        .copied();
    let Some((slot, old, cas)) = chosen else {
        return Insert::Raced;
    };
    if old.state == 2 && old.key_hash != key_hash {
        evicted += 1;
    }
    // Claim the slot (a nonce in `hits` makes the claim ours alone): readers ignore it while
    // it is being written. The replaced entry's bytes are released with the claim.
    let nonce = (random() as u32) | 1;
    let claim = Meta {
        key_hash,
        state: 1,
        size,
        inserted: now,
        last_access: now,
        hits: nonce,
    };
    match store.set(
        &meta_key(slot),
        &claim.encode(),
        Some(cas.unwrap_or(CREATE_CAS)),
    ) {
        Ok(SetOutcome::Stored) => {}
        _ => return Insert::Raced,
    }
    if old.state == 2 {
        add_bytes(store, -(old.size as i64));
    }
    let _ = store.set(&entry_key(slot), entry, None);
    // Mark it ready only if the claim is still ours; count its bytes only then.
    let (current, current_cas) = read_meta(store, slot);
    if current != claim {
        return Insert::Raced;
    }
    let ready = Meta {
        state: 2,
        hits: 0,
        ..claim
    };
    match store.set(&meta_key(slot), &ready.encode(), current_cas) {
        Ok(SetOutcome::Stored) => add_bytes(store, size as i64),
        _ => return Insert::Raced,
    }
    // Keep within the byte budget: evict the lowest-ranked of a random sample.
    let mut rounds = 0;
    while bytes_in_use(store) > layout.max_bytes && rounds < 64 {
        rounds += 1;
        // A window of distinct slots from a random start (the whole table if sample ≥ slots).
        let start = random() % layout.slots;
        let victim = (0..layout.sample.clamp(1, layout.slots))
            .map(|i| (start + i) % layout.slots)
            .filter(|s| *s != slot)
            .map(|s| {
                let (m, c) = read_meta(store, s);
                (s, m, c)
            })
            .filter(|(_, m, _)| m.state == 2)
            .min_by_key(|(_, m, _)| m.rank(layout.eviction));
        if let Some((s, m, c)) = victim {
            if evict(store, s, &m, c) > 0 {
                evicted += 1;
            }
        }
    }
    Insert::Stored { evicted }
}

/// Removes the entry for `key_hash` (invalidation, purge). True if one was removed.
pub fn remove(store: &impl CasStore, layout: &Layout, key_hash: u64) -> bool {
    candidates(layout, key_hash).any(|slot| {
        let (meta, cas) = read_meta(store, slot);
        meta.key_hash == key_hash && meta.state == 2 && evict(store, slot, &meta, cas) > 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewise_support::store::MemoryStore;

    fn layout(eviction: Eviction) -> Layout {
        Layout {
            slots: 64,
            max_bytes: 1000,
            max_entry_bytes: 400,
            eviction,
            sample: 64,
        }
    }

    fn rng() -> impl FnMut() -> u64 {
        let mut x = 0x1234_5678_9abc_def1u64;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn stores_finds_replaces_and_removes() {
        let store = MemoryStore::new();
        let l = layout(Eviction::Lru);
        assert_eq!(
            insert(&store, &l, 7, b"hello", 1, &mut rng()),
            Insert::Stored { evicted: 0 }
        );
        assert_eq!(lookup(&store, &l, 7).unwrap().entry, b"hello");
        insert(&store, &l, 7, b"hello, world", 2, &mut rng());
        assert_eq!(lookup(&store, &l, 7).unwrap().entry, b"hello, world");
        assert_eq!(bytes_in_use(&store), 12, "replacing adjusts the byte count");
        assert!(remove(&store, &l, 7));
        assert!(lookup(&store, &l, 7).is_none());
        assert_eq!(bytes_in_use(&store), 0);
        assert_eq!(
            insert(&store, &l, 8, &[0u8; 401], 3, &mut rng()),
            Insert::TooLarge
        );
    }

    #[test]
    fn the_byte_budget_and_key_count_hold_under_a_spray() {
        let store = MemoryStore::new();
        let l = layout(Eviction::Fifo);
        let mut r = rng();
        for i in 0..5_000u64 {
            insert(
                &store,
                &l,
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                &[1u8; 100],
                i,
                &mut r,
            );
            assert!(bytes_in_use(&store) <= l.max_bytes, "over budget after {i}");
        }
        assert!(
            store.len() <= 2 * l.slots as usize + 1,
            "{} keys",
            store.len()
        );
    }

    fn survivors(eviction: Eviction, touch_first: bool) -> Vec<u64> {
        let store = MemoryStore::new();
        let l = Layout {
            slots: 64,
            max_bytes: 500,
            max_entry_bytes: 100,
            eviction,
            sample: 64,
        };
        let mut r = rng();
        for k in 1..=5u64 {
            insert(&store, &l, k * 1000 + 1, &[0u8; 100], k, &mut r);
        }
        if touch_first {
            // Key 1 (the oldest) is used a lot and recently.
            for t in 10..20 {
                let found = lookup(&store, &l, 1001).unwrap();
                touch(&store, &l, &found, t);
            }
        }
        insert(&store, &l, 6001, &[0u8; 100], 30, &mut r);
        (1..=6u64)
            .map(|k| k * 1000 + 1)
            .filter(|k| lookup(&store, &l, *k).is_some())
            .collect()
    }

    #[test]
    fn each_policy_evicts_its_own_victim() {
        assert!(
            !survivors(Eviction::Fifo, true).contains(&1001),
            "FIFO evicts the oldest insert, used or not"
        );
        let lru = survivors(Eviction::Lru, true);
        assert!(
            lru.contains(&1001) && !lru.contains(&2001),
            "LRU keeps the recently used one: {lru:?}"
        );
        let lfu = survivors(Eviction::Lfu, true);
        assert!(
            lfu.contains(&1001),
            "LFU keeps the frequently used one: {lfu:?}"
        );
    }

    #[test]
    fn concurrent_writers_keep_the_accounting_exact() {
        let store = MemoryStore::new();
        let l = Layout {
            slots: 32,
            max_bytes: 10_000,
            max_entry_bytes: 1_000,
            eviction: Eviction::Lru,
            sample: 8,
        };
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let store = &store;
                s.spawn(move || {
                    let mut r = rng();
                    for i in 0..300u64 {
                        insert(
                            store,
                            &l,
                            (t * 7 + i % 40) | 1,
                            &vec![0u8; (i % 50 + 10) as usize],
                            i,
                            &mut r,
                        );
                    }
                });
            }
        });
        let stored: u64 = (0..l.slots)
            .map(|s| read_meta(&store, s).0)
            .filter(|m| m.state == 2)
            .map(|m| m.size)
            .sum();
        assert_eq!(
            bytes_in_use(&store),
            stored,
            "the byte counter matches the ready entries"
        );
        assert!(stored <= l.max_bytes);
    }
}
