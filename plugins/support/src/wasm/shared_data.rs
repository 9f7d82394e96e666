//! Shared data as a `CasStore` (with the `key_prefix`), and the seeds every VM of a `vm_id` shares.

use super::*;

/// Sets this VM's hash seed (`seed.rs`) from shared data: the unprefixed key
/// `edgewise.hash_seed`, created at random by the first VM of the `vm_id` to configure and
/// read by every other one (shared data lives as long as Envoy, so the seed never changes
/// under stored entries or breakers). If shared data fails the seed stays as it was and the
/// failure is logged (hashes are then predictable, though still consistent in this VM).
pub fn init_hash_seed() {
    match shared_random_seed(&SharedData::default(), "edgewise.hash_seed") {
        Some(seed) => crate::seed::set(seed),
        None => log(
            LogLevel::Warn,
            "edgewise: shared data refused the hash seed (edgewise.hash_seed); placement hashes keep their previous seed",
        ),
    }
}

/// A random seed every VM of the `vm_id` shares: drawn by the first VM that asks (std's
/// random hash keys, from WASI `random_get`, and the clock), kept in shared data at `key`
/// and read by every later one. None when shared data fails.
pub fn shared_random_seed(store: &SharedData, key: &str) -> Option<u64> {
    use std::hash::{BuildHasher, Hasher};
    let fresh = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        ^ now_nanos().unwrap_or(0);
    crate::store::update_with_cas(store, key, 4, |current| {
        match current.and_then(|v| <[u8; 8]>::try_from(v).ok()) {
            Some(seed) => (None, u64::from_le_bytes(seed)),
            None => (Some(fresh.to_le_bytes().to_vec()), fresh),
        }
    })
    .ok()
}

/// proxy-wasm shared data (per `vm_id`, shared by every worker VM), with an optional key
/// prefix (`key_prefix`) so that two instances of one filter in one `vm_id` never share keys.
#[derive(Clone, Debug, Default)]
pub struct SharedData {
    /// `"<key_prefix>."`, or empty for the default (keys unchanged).
    prefix: String,
}

impl SharedData {
    /// The store for a filter's `key_prefix` (`""`: keys as they are).
    pub fn with_prefix(key_prefix: &str) -> SharedData {
        SharedData {
            prefix: if key_prefix.is_empty() {
                String::new()
            } else {
                format!("{key_prefix}.")
            },
        }
    }

    fn key<'a>(&self, key: &'a str) -> std::borrow::Cow<'a, str> {
        if self.prefix.is_empty() {
            std::borrow::Cow::Borrowed(key)
        } else {
            std::borrow::Cow::Owned(format!("{}{key}", self.prefix))
        }
    }
}

impl CasStore for SharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let key = self.key(key);
        crate::abi::get_shared_data(&key)
            .map_err(|status| StoreError(format!("get_shared_data({key}): status {}", status.0)))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<SetOutcome, StoreError> {
        let key = self.key(key);
        match crate::abi::set_shared_data(&key, value, cas.unwrap_or(0)) {
            Ok(true) => Ok(SetOutcome::Stored),
            Ok(false) => Ok(SetOutcome::CasMismatch),
            Err(status) => Err(StoreError(format!(
                "set_shared_data({key}): status {}",
                status.0
            ))),
        }
    }
}
