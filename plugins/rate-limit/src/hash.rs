//! Keyed 64-bit hashes: a key's fingerprint in the table, a rule name's seed, the configuration's hash seed.

use std::hash::{Hash, Hasher};

/// A 64-bit keyed hash (SipHash-1-3 over seed ‖ data); never 0 (0 marks a free entry).
pub fn fingerprint(seed: u64, data: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut hasher);
    data.hash(&mut hasher);
    hasher.finish() | 1
}

/// The seed a rule's name gives its keys, so two rules never share a bucket.
pub fn name_seed(name: &str) -> u64 {
    fingerprint(0x6e61_6d65, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_seeded_and_never_zero() {
        assert_ne!(fingerprint(1, b"k"), fingerprint(2, b"k"));
        assert_eq!(fingerprint(1, b"k") & 1, 1);
        assert_ne!(name_seed("a"), name_seed("b"));
    }
}
