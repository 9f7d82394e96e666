//! The RFC 9111 shared-cache core of Edgewise's response cache: header parsing, whether a
//! response may be stored, how long it stays fresh and how old it is. Pure functions over
//! header values and `now`; the storage, coalescing and proxy-wasm adapter build on these.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cache;
pub mod cache_control;
pub mod coalesce;
pub mod conditional;
pub mod config;
pub mod entry;
pub mod fleet;
pub mod freshness;
pub mod http_date;
pub mod key;
pub mod purge;
pub mod range;
pub mod status;
pub mod storage;
pub mod targeted;

#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
pub use adapter::new_root;
pub mod storable;
