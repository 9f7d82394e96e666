//! What every Edgewise filter shares: config errors that name the field and the fix,
//! duration strings, the CAS store the cores keep shared state in, metric names, and
//! (on wasm) the panic hook and the proxy-wasm implementation of the store.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(target_arch = "wasm32")]
pub mod abi;
#[cfg(target_arch = "wasm32")]
pub mod alloc_count;
pub mod breaker_state;
pub mod bulkhead;
pub mod calendar;
pub mod config;
pub mod duration;
pub mod fields;
pub mod header_map;
pub mod host;
pub mod le;
pub mod lease;
pub mod metrics;
pub mod parked;
pub mod request;
pub mod seed;
pub mod store;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use config::{parse_config, ConfigError};
pub use duration::parse_duration;
pub use fields::Fields;
pub use header_map::HeaderMap;
pub use host::{Host, MapHost};
pub use request::{Matcher, RawMatch, RequestView};
pub use store::{
    update_with_cas, CasStore, MemoryStore, SetOutcome, StoreError, UpdateError, CREATE_CAS,
};
