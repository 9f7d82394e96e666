//! Placement: where a response is stored among its URL's variants, and storing it.

use super::*;

/// Where `entry` (a response for the URL `primary_hash` keys) goes, with its generation set:
/// - the URL's own slot when it is empty, holds another URL, or holds a response with other
///   Vary fields (a new generation: earlier variants become unreachable);
/// - the URL's own slot, keeping the generation, when it replaces the same variant;
/// - a variant slot keyed by the generation of the entry in the URL's slot otherwise.
pub fn placement(
    config: &Config,
    store: &impl CasStore,
    primary_hash: u64,
    entry: &mut Entry,
    random: &mut dyn FnMut() -> u64,
) -> u64 {
    if entry.vary_fields.is_empty() {
        // No variants: the URL's own slot, and a generation no variant slot uses (any
        // variants of an earlier Vary response become unreachable).
        entry.generation = random() | 1;
        return primary_hash;
    }
    let current = storage::lookup(store, &config.layout, primary_hash)
        .and_then(|found| Entry::decode(&found.entry))
        .filter(|e| e.key == entry.key && e.vary_fields == entry.vary_fields);
    match current {
        Some(current) if current.vary_values != entry.vary_values => {
            entry.generation = current.generation;
            variant_hash(&entry.key, current.generation, &entry.vary_values)
        }
        Some(current) => {
            entry.generation = current.generation;
            primary_hash
        }
        None => {
            entry.generation = random() | 1;
            primary_hash
        }
    }
}

/// Stores `entry` for the URL `primary_hash` keys, among its variants (see `placement`).
pub fn store(
    config: &Config,
    store: &impl CasStore,
    primary_hash: u64,
    mut entry: Entry,
    now: u64,
    random: &mut dyn FnMut() -> u64,
) -> storage::Insert {
    let slot = placement(config, store, primary_hash, &mut entry, random);
    storage::insert(store, &config.layout, slot, &entry.encode(), now, random)
}
