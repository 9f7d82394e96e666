//! Bounded per-rule key tables in shared data. A rule's keys hash into `sets` sets of
//! `WAYS` entries each; a whole set is one shared-data value, updated with one CAS. So a
//! rule never holds more than `sets` shared-data keys, however many clients appear.
//!
//! A slot is reused only when its state is fresh (the key would start from the same state
//! anyway), so an active client never gets a new bucket. When all entries of a set are
//! active, newcomers to that set share the set's overflow bucket (same limits) until an
//! entry frees up: they are limited together, never left unlimited.

use crate::algorithm::{is_fresh, State, FRESH};
use crate::config::{Algorithm, WAYS};

const WAYS_USIZE: usize = WAYS as usize;
const ENTRY_BYTES: usize = 8 + 16;
/// Encoded size of one set: entries, then the overflow state.
pub const SET_BYTES: usize = WAYS_USIZE * ENTRY_BYTES + 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// (fingerprint, state); fingerprint 0 = never used.
    pub entries: [(u64, State); WAYS_USIZE],
    pub overflow: State,
}

/// Where a key's state lives in its set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Entry(usize),
    Overflow,
}

impl Default for Set {
    fn default() -> Self {
        Set {
            entries: [(0, FRESH); WAYS_USIZE],
            overflow: FRESH,
        }
    }
}

impl Set {
    /// Decodes a stored set; anything malformed (or empty) reads as an empty set.
    pub fn decode(bytes: &[u8]) -> Set {
        let mut set = Set::default();
        let Ok(bytes) = <&[u8; SET_BYTES]>::try_from(bytes) else {
            return set;
        };
        for (entry, chunk) in set.entries.iter_mut().zip(bytes.chunks_exact(ENTRY_BYTES)) {
            let (fp, state) = chunk.split_at(8);
            entry.0 = u64::from_le_bytes(fp.try_into().unwrap_or_default());
            entry.1 = state.try_into().unwrap_or_default();
        }
        set.overflow = bytes[WAYS_USIZE * ENTRY_BYTES..]
            .try_into()
            .unwrap_or_default();
        set
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = [0u8; SET_BYTES];
        for ((fp, state), chunk) in self.entries.iter().zip(out.chunks_exact_mut(ENTRY_BYTES)) {
            chunk[..8].copy_from_slice(&fp.to_le_bytes());
            chunk[8..].copy_from_slice(state);
        }
        out[WAYS_USIZE * ENTRY_BYTES..].copy_from_slice(&self.overflow);
        out.to_vec()
    }

    /// The slot for `fingerprint`: its own entry, else a free or fresh entry (claimed by
    /// writing the fingerprint with the new state), else the overflow bucket.
    pub fn slot(&self, fingerprint: u64, algorithm: &Algorithm, now: u64) -> Slot {
        if let Some(i) = self.entries.iter().position(|(fp, _)| *fp == fingerprint) {
            return Slot::Entry(i);
        }
        match self
            .entries
            .iter()
            .position(|(fp, state)| *fp == 0 || is_fresh(algorithm, state, now))
        {
            Some(i) => Slot::Entry(i),
            None => Slot::Overflow,
        }
    }

    /// The state a key sees in `slot` (a claimed entry of another key reads as fresh).
    pub fn state(&self, slot: Slot, fingerprint: u64) -> State {
        match slot {
            Slot::Entry(i) if self.entries[i].0 == fingerprint => self.entries[i].1,
            Slot::Entry(_) => FRESH,
            Slot::Overflow => self.overflow,
        }
    }

    pub fn store(&mut self, slot: Slot, fingerprint: u64, state: State) {
        match slot {
            Slot::Entry(i) => self.entries[i] = (fingerprint, state),
            Slot::Overflow => self.overflow = state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{decide, Verdict};

    const SEC: u64 = 1_000_000_000;
    const NOW: u64 = 1_767_225_600 * SEC;
    const ALG: Algorithm = Algorithm::TokenBucket {
        interval_ns: SEC,
        burst: 2,
    };

    fn take(set: &mut Set, fp: u64, now: u64) -> (Slot, Verdict) {
        let slot = set.slot(fp, &ALG, now);
        let verdict = decide(&ALG, &set.state(slot, fp), now, 0);
        if let Verdict::Allow { state, .. } = verdict {
            set.store(slot, fp, state);
        }
        (slot, verdict)
    }

    #[test]
    fn round_trips_and_tolerates_garbage() {
        let mut set = Set::default();
        take(&mut set, 7, NOW);
        assert_eq!(Set::decode(&set.encode()), set);
        assert_eq!(Set::decode(b"short"), Set::default());
    }

    #[test]
    fn active_keys_keep_their_state_and_newcomers_overflow() {
        let mut set = Set::default();
        for fp in 1..=4 {
            assert_eq!(take(&mut set, fp, NOW).0, Slot::Entry(fp as usize - 1));
        }
        // A fifth key while all four are active: overflow bucket, never a reused entry.
        assert_eq!(take(&mut set, 5, NOW).0, Slot::Overflow);
        assert_eq!(take(&mut set, 6, NOW).0, Slot::Overflow);
        assert!(
            matches!(take(&mut set, 7, NOW).1, Verdict::Deny { .. }),
            "overflow keys share one bucket"
        );
        // Key 1 still has its own (spent-once) bucket.
        assert!(matches!(
            take(&mut set, 1, NOW).1,
            Verdict::Allow { remaining: 0, .. }
        ));
    }

    #[test]
    fn a_fresh_entry_is_reused_losslessly() {
        let mut set = Set::default();
        for fp in 1..=4 {
            take(&mut set, fp, NOW);
        }
        // One second later key 1..4 each regained a token; after 2 s they are full again.
        let later = NOW + 2 * SEC;
        assert_eq!(take(&mut set, 9, later).0, Slot::Entry(0));
        assert!(set.entries.iter().any(|(fp, _)| *fp == 9));
    }
}
