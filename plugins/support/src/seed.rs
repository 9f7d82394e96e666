//! The deployment's hash seed: every hash whose input a client can choose and whose value
//! decides placement (cache slots, fill locks, breaker slots) is keyed with it, so nobody
//! outside the proxy can compute which inputs collide.
//!
//! The adapters set it at configure time from shared data (`wasm::init_hash_seed`): random,
//! created once by the first VM of a `vm_id` and read by every other, so all workers place
//! the same key in the same slot. Natively (tests, benchmarks) it is 0 unless set.

use std::cell::Cell;
use std::hash::Hasher;

thread_local! {
    static SEED: Cell<u64> = const { Cell::new(0) };
}

/// Sets this VM's seed (every hash after this uses it).
pub fn set(seed: u64) {
    SEED.with(|s| s.set(seed));
}

/// This VM's seed.
pub fn get() -> u64 {
    SEED.with(Cell::get)
}

/// SipHash-1-3 over seed ‖ len(data) ‖ data (std's hasher with fixed keys; the secret is
/// the seed). Lengths are written as u64, so wasm32 and native builds agree.
pub fn keyed_hash(seed: u64, data: &[u8]) -> u64 {
    #[allow(deprecated)]
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write_u64(seed);
    hasher.write_u64(data.len() as u64);
    hasher.write(data);
    hasher.finish()
}

/// FNV-1a 64, unkeyed: for placements that must agree across Envoy instances (sticky
/// routing, shared-data key names) and that no client can exploit by colliding.
pub fn stable_hash(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in data {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn the_seed_changes_every_hash() {
        let inputs: [&[u8]; 3] = [b"", b"a", b"https://example.com/"];
        for input in inputs {
            assert_ne!(keyed_hash(1, input), keyed_hash(2, input), "{input:?}");
            assert_eq!(keyed_hash(7, input), keyed_hash(7, input));
        }
    }

    #[test]
    fn the_vm_seed_is_what_was_set() {
        set(99);
        assert_eq!(get(), 99);
        set(0);
    }
}
