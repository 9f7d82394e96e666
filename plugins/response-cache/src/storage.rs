//! Bounded storage for cached responses in shared data: a fixed set of keys (so memory stays
//! bounded without a delete), a byte budget, and LRU / LFU / FIFO eviction by sampling.
//!
//! Slot n holds `edgewise.cache.m.<n>` (40-byte metadata) and `edgewise.cache.e.<n>` (the
//! entry); `edgewise.cache.bytes` counts the bytes of stored entries. A key lives in one of
//! the `PROBES` slots after its hash. Writers claim a slot's metadata with CAS (state
//! `writing`), write the entry, then mark it `ready`; readers use only `ready` slots.
//! Eviction empties the entry (setting "" frees the value) and the metadata.
//!
//! A key's first candidate is its home. Each slot's metadata also counts the keys homed
//! there that live in a later candidate (`displaced`), so a lookup whose home neither holds
//! the key nor has displaced keys ends after one read — a miss usually costs one read, not
//! one per candidate. The count may run high (a lost decrement: only extra reads) and is
//! repaired when it reads zero for a displaced key (an insert sets it again).

use edgewise_support::le;
use edgewise_support::store::{update_with_cas, CasStore, SetOutcome, CREATE_CAS};

/// Candidate slots per key: each costs a shared-data read on a miss, so few; 4-way
/// placement still keeps colliding hot keys apart.
pub const PROBES: u64 = 4;
const META_BYTES: usize = 40;
/// How long (s) a slot claimed for writing stays reserved for its writer.
const CLAIM_SECONDS: u64 = 10;

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
    /// Keys homed at this slot stored in a later candidate (belongs to the slot, not to the
    /// entry in it: every write of the slot's metadata keeps it).
    pub displaced: u8,
}

impl Meta {
    fn decode(bytes: &[u8]) -> Meta {
        if bytes.len() != META_BYTES {
            return Meta::default();
        }
        let u64_at = |at: usize| le::u64_at(bytes, at).unwrap_or(0);
        Meta {
            key_hash: u64_at(0),
            state: bytes[8],
            displaced: bytes[9],
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
        out[9] = self.displaced;
        out[12..16].copy_from_slice(&self.hits.to_le_bytes());
        out[16..24].copy_from_slice(&self.size.to_le_bytes());
        out[24..32].copy_from_slice(&self.inserted.to_le_bytes());
        out[32..40].copy_from_slice(&self.last_access.to_le_bytes());
        out
    }

    fn with_displaced(self, displaced: u8) -> Meta {
        Meta { displaced, ..self }
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

/// The slots of the most recent inserts (a ring of RECENT little-endian u32 after a u32
/// write position): victims for a table too sparse for random windows to find entries.
const RECENT_KEY: &str = "edgewise.cache.recent";
const RECENT: usize = 256;

/// Records `slot` in the ring of recent inserts.
fn remember_insert(store: &impl CasStore, slot: u64) {
    let _ = update_with_cas(store, RECENT_KEY, 8, |v| {
        let mut ring = v
            .filter(|v| v.len() == 4 * (RECENT + 1))
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| vec![0xff; 4 * (RECENT + 1)]);
        let at = le::u32_at(&ring, 0).unwrap_or(0) as usize % RECENT;
        ring[4 + 4 * at..8 + 4 * at].copy_from_slice(&(slot as u32).to_le_bytes());
        ring[..4].copy_from_slice(&(((at + 1) % RECENT) as u32).to_le_bytes());
        (Some(ring), ())
    });
}

/// The slots in the ring of recent inserts.
fn recent_inserts(store: &impl CasStore, layout: &Layout) -> Vec<u64> {
    let Ok(Some((ring, _))) = store.get(RECENT_KEY) else {
        return Vec::new();
    };
    ring.get(4..)
        .unwrap_or_default()
        .chunks_exact(4)
        .filter_map(|c| le::u32_at(c, 0).map(u64::from))
        .filter(|slot| *slot < layout.slots)
        .collect()
}

fn home(layout: &Layout, key_hash: u64) -> u64 {
    key_hash % layout.slots.max(1)
}

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
        .and_then(|(v, _)| le::u64_exact(&v))
        .unwrap_or(0)
}

fn add_bytes(store: &impl CasStore, delta: i64) {
    let _ = update_with_cas(store, BYTES_KEY, 64, |v| {
        let current = v.and_then(le::u64_exact).unwrap_or(0);
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

/// The ready entry for `key_hash`: its home slot, then — only when keys homed there were
/// displaced — the other candidates.
pub fn lookup(store: &impl CasStore, layout: &Layout, key_hash: u64) -> Option<Found> {
    let mut displaced = true;
    candidates(layout, key_hash).find_map(|slot| {
        if !displaced {
            return None;
        }
        let (meta, meta_cas) = read_meta(store, slot);
        if slot == home(layout, key_hash) {
            displaced = meta.displaced > 0;
        }
        if meta.state != 2 || meta.key_hash != key_hash {
            return None;
        }
        let entry = store
            .get(&entry_key(slot))
            .ok()
            .flatten()
            .map(|(bytes, _)| bytes)
            .unwrap_or_default();
        if entry.len() as u64 != meta.size {
            // The entry was wiped under a ready slot (an eviction's clear that landed after
            // a new writer's entry): never served; free the slot and its budget now.
            evict(store, layout, slot, &meta, meta_cas);
            return None;
        }
        Some(Found {
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

/// Empties a slot if it still holds what `expected` describes (keeping the slot's own
/// displaced count); returns the bytes freed.
fn evict(
    store: &impl CasStore,
    layout: &Layout,
    slot: u64,
    expected: &Meta,
    cas: Option<u32>,
) -> u64 {
    let empty = Meta::default().with_displaced(expected.displaced);
    match store.set(
        &meta_key(slot),
        &empty.encode(),
        Some(cas.unwrap_or(CREATE_CAS)),
    ) {
        Ok(SetOutcome::Stored) => {
            let _ = store.set(&entry_key(slot), b"", None);
            if expected.state == 2 {
                add_bytes(store, -(expected.size as i64));
                if slot != home(layout, expected.key_hash) {
                    adjust_displaced(store, home(layout, expected.key_hash), -1);
                }
                return expected.size;
            }
            0
        }
        _ => 0,
    }
}

/// Changes a slot's displaced count by `delta` (CAS, a few attempts: a lost update only
/// costs extra reads, or is repaired by the next insert).
fn adjust_displaced(store: &impl CasStore, slot: u64, delta: i8) {
    for _ in 0..8 {
        let (meta, cas) = read_meta(store, slot);
        let count = if delta > 0 {
            meta.displaced.saturating_add(delta as u8)
        } else {
            meta.displaced.saturating_sub(delta.unsigned_abs())
        };
        if count == meta.displaced {
            return;
        }
        match store.set(
            &meta_key(slot),
            &meta.with_displaced(count).encode(),
            Some(cas.unwrap_or(CREATE_CAS)),
        ) {
            Ok(SetOutcome::CasMismatch) => continue,
            _ => return,
        }
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
    /// Over the byte budget and no victim found within the bounded search (a sparse table
    /// of large entries): the new entry was removed again, so `max_bytes` still holds.
    NoRoom {
        evicted: u32,
    },
}

/// Slot reads one insert may spend looking for victims when over the byte budget.
const VICTIM_READS: u64 = 4096;

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
    // A claim older than CLAIM_SECONDS belongs to a writer that died (its worker crashed
    // between claim and publish): its slot is free again.
    let abandoned = |m: &Meta| m.state == 1 && now.saturating_sub(m.inserted) > CLAIM_SECONDS;
    if slots
        .iter()
        .any(|(_, m, _)| m.state == 1 && m.key_hash == key_hash && !abandoned(m))
    {
        return Insert::Raced; // another worker is storing this key right now
    }
    let chosen = slots
        .iter()
        .find(|(_, m, _)| m.key_hash == key_hash && m.state == 2)
        .or_else(|| slots.iter().find(|(_, m, _)| m.state == 0 || abandoned(m)))
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
        displaced: old.displaced,
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
        if old.key_hash != key_hash && slot != home(layout, old.key_hash) {
            adjust_displaced(store, home(layout, old.key_hash), -1);
        }
    }
    let _ = store.set(&entry_key(slot), entry, None);
    // Mark it ready only if the claim is still ours (the slot's displaced count may have
    // moved meanwhile: it is not part of the claim); count its bytes only then.
    let mut published = false;
    for _ in 0..8 {
        let (current, current_cas) = read_meta(store, slot);
        if current.with_displaced(0) != claim.with_displaced(0) {
            return Insert::Raced;
        }
        let ready = Meta {
            state: 2,
            hits: 0,
            displaced: current.displaced,
            ..claim
        };
        match store.set(&meta_key(slot), &ready.encode(), current_cas) {
            Ok(SetOutcome::Stored) => {
                add_bytes(store, size as i64);
                published = true;
                break;
            }
            Ok(SetOutcome::CasMismatch) => continue, // its displaced count moved
            Err(_) => break,
        }
    }
    if !published {
        return Insert::Raced;
    }
    // Away from home: count it there (new here, or the count was lost).
    let home_slot = home(layout, key_hash);
    let home_count = slots.first().map(|(_, m, _)| m.displaced).unwrap_or(0);
    if slot != home_slot && (old.key_hash != key_hash || old.state != 2 || home_count == 0) {
        adjust_displaced(store, home_slot, 1);
    }
    remember_insert(store, slot);
    // Keep within the byte budget: evict the lowest-ranked of a random window of slots. The
    // window doubles each time it holds no entry (a sparse table), up to VICTIM_READS reads.
    let mut reads = 0;
    let mut window = layout.sample.clamp(1, layout.slots);
    let mut over = bytes_in_use(store) > layout.max_bytes;
    while over && reads < VICTIM_READS {
        window = window.min(layout.slots).min(VICTIM_READS - reads);
        reads += window;
        // A window of distinct slots from a random start (the whole table if sample ≥ slots).
        let start = random() % layout.slots;
        let victim = (0..window)
            .map(|i| (start + i) % layout.slots)
            .filter(|s| *s != slot)
            .map(|s| {
                let (m, c) = read_meta(store, s);
                (s, m, c)
            })
            .filter(|(_, m, _)| m.state == 2)
            .min_by_key(|(_, m, _)| m.rank(layout.eviction));
        match victim {
            Some((s, m, c)) => {
                if evict(store, layout, s, &m, c) > 0 {
                    evicted += 1;
                }
                over = bytes_in_use(store) > layout.max_bytes;
            }
            None => window = window.saturating_mul(2),
        }
    }
    // Still over: the table is sparse; the recent inserts are where its entries are.
    if over {
        let mut recent: Vec<(u64, Meta, Option<u32>)> = recent_inserts(store, layout)
            .into_iter()
            .filter(|s| *s != slot)
            .map(|s| {
                let (m, c) = read_meta(store, s);
                (s, m, c)
            })
            .filter(|(_, m, _)| m.state == 2)
            .collect();
        recent.sort_by_key(|(_, m, _)| m.rank(layout.eviction));
        for (s, m, c) in recent {
            if evict(store, layout, s, &m, c) > 0 {
                evicted += 1;
                over = bytes_in_use(store) > layout.max_bytes;
                if !over {
                    break;
                }
            }
        }
    }
    if over {
        // No victim within the search: the budget wins over the new entry.
        let (meta, cas) = read_meta(store, slot);
        if meta.key_hash == key_hash && meta.state == 2 {
            evict(store, layout, slot, &meta, cas);
        }
        return Insert::NoRoom { evicted };
    }
    Insert::Stored { evicted }
}

/// Removes the entry for `key_hash` (invalidation, purge). True if one was removed.
pub fn remove(store: &impl CasStore, layout: &Layout, key_hash: u64) -> bool {
    candidates(layout, key_hash).any(|slot| {
        let (meta, cas) = read_meta(store, slot);
        meta.key_hash == key_hash && meta.state == 2 && evict(store, layout, slot, &meta, cas) > 0
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
            store.len() <= 2 * l.slots as usize + 2,
            "{} keys",
            store.len()
        );
    }

    /// A sparse table (a million slots, entries of a tenth of the budget, a sample of 16)
    /// still finds victims — the window grows while it finds none — and the byte budget
    /// holds after every insert; the newest entry is kept whenever a victim was found.
    #[test]
    fn the_byte_budget_holds_in_a_sparse_table() {
        let store = MemoryStore::new();
        let l = Layout {
            slots: 1_000_000,
            max_bytes: 10_000,
            max_entry_bytes: 1_000,
            eviction: Eviction::Lru,
            sample: 16,
        };
        let mut r = rng();
        let mut kept = 0;
        for i in 0..300u64 {
            let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            match insert(&store, &l, key, &[1u8; 1_000], i, &mut r) {
                Insert::Stored { .. } => kept += 1,
                Insert::NoRoom { .. } => {}
                other => panic!("{other:?}"),
            }
            assert!(bytes_in_use(&store) <= l.max_bytes, "over budget after {i}");
        }
        assert!(kept > 250, "only {kept} of 300 stored");
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

    /// Counts reads, to show what a lookup costs.
    struct Counting<'a>(&'a MemoryStore, std::cell::Cell<u32>);

    impl CasStore for Counting<'_> {
        fn get(
            &self,
            key: &str,
        ) -> Result<Option<(Vec<u8>, u32)>, edgewise_support::store::StoreError> {
            self.1.set(self.1.get() + 1);
            self.0.get(key)
        }
        fn set(
            &self,
            key: &str,
            value: &[u8],
            cas: Option<u32>,
        ) -> Result<SetOutcome, edgewise_support::store::StoreError> {
            self.0.set(key, value, cas)
        }
    }

    fn reads(store: &MemoryStore, l: &Layout, key_hash: u64) -> (bool, u32) {
        let counting = Counting(store, std::cell::Cell::new(0));
        let found = lookup(&counting, l, key_hash).is_some();
        (found, counting.1.get())
    }

    /// A miss reads one slot unless keys homed there were displaced; displaced keys are
    /// found, counted at their home, and uncounted when they leave.
    #[test]
    fn misses_read_one_slot_and_displaced_keys_are_found() {
        let store = MemoryStore::new();
        let l = layout(Eviction::Lru);
        insert(&store, &l, 5, b"five", 1, &mut rng());
        assert_eq!(reads(&store, &l, 6), (false, 1), "empty home: one read");
        assert_eq!(
            reads(&store, &l, 5 + 64),
            (false, 1),
            "home holds another key"
        );
        assert_eq!(reads(&store, &l, 5), (true, 2), "a hit: metadata and entry");
        // Three more keys homed at slot 5 go to its other candidates.
        for k in [5 + 64, 5 + 128, 5 + 192] {
            assert!(matches!(
                insert(&store, &l, k, b"x", 2, &mut rng()),
                Insert::Stored { .. }
            ));
        }
        assert_eq!(read_meta(&store, 5).0.displaced, 3);
        for k in [5, 5 + 64, 5 + 128, 5 + 192] {
            assert!(reads(&store, &l, k).0, "{k} found");
        }
        assert_eq!(
            reads(&store, &l, 5 + 256),
            (false, 4),
            "displaced: all candidates"
        );
        assert!(remove(&store, &l, 5 + 128));
        assert_eq!(read_meta(&store, 5).0.displaced, 2);
        assert!(remove(&store, &l, 5 + 64) && remove(&store, &l, 5 + 192));
        assert_eq!(read_meta(&store, 5).0.displaced, 0);
        assert_eq!(reads(&store, &l, 5 + 256), (false, 1), "back to one read");
        assert!(reads(&store, &l, 5).0);
        // A lost count is repaired by the next insert of a displaced key.
        insert(&store, &l, 5 + 64, b"y", 3, &mut rng());
        let (meta, cas) = read_meta(&store, 5);
        store
            .set(&meta_key(5), &meta.with_displaced(0).encode(), cas)
            .unwrap();
        assert!(!reads(&store, &l, 5 + 64).0, "hidden by the lost count");
        insert(&store, &l, 5 + 64, b"z", 4, &mut rng());
        assert_eq!(lookup(&store, &l, 5 + 64).unwrap().entry, b"z");
    }

    /// A slot claimed by a writer that died is free again after CLAIM_SECONDS.
    #[test]
    fn an_abandoned_claim_is_reclaimed() {
        let store = MemoryStore::new();
        let l = layout(Eviction::Lru);
        let claim = Meta {
            key_hash: 9,
            state: 1,
            inserted: 100,
            ..Meta::default()
        };
        store.set(&meta_key(9), &claim.encode(), None).unwrap();
        assert_eq!(insert(&store, &l, 9, b"v", 105, &mut rng()), Insert::Raced);
        assert!(matches!(
            insert(&store, &l, 9, b"v", 111, &mut rng()),
            Insert::Stored { .. }
        ));
        assert_eq!(lookup(&store, &l, 9).unwrap().entry, b"v");
    }

    /// The sizes of all ready entries, from their metadata.
    fn ready_bytes(store: &MemoryStore, l: &Layout) -> u64 {
        (0..l.slots)
            .map(|s| read_meta(store, s).0)
            .filter(|m| m.state == 2)
            .map(|m| m.size)
            .sum()
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
        let stored = ready_bytes(&store, &l);
        assert_eq!(
            bytes_in_use(&store),
            stored,
            "the byte counter matches the ready entries"
        );
        assert!(stored <= l.max_bytes);
        // Every ready entry is found — or, when a racing eviction wiped its bytes, the lookup
        // frees its slot (never serving it).
        for slot in 0..l.slots {
            let meta = read_meta(&store, slot).0;
            if meta.state == 2 && lookup(&store, &l, meta.key_hash).is_none() {
                assert_ne!(
                    read_meta(&store, slot).0.state,
                    2,
                    "key {} in slot {slot} is neither found nor freed",
                    meta.key_hash
                );
            }
        }
        let stored = ready_bytes(&store, &l);
        assert_eq!(
            bytes_in_use(&store),
            stored,
            "still exact after the repairs"
        );
    }
}
