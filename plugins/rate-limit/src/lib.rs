//! Edgewise rate limiting: a host-independent core (config, algorithms, bounded key
//! tables, the cross-rule decision over a CAS store, headers) and a thin proxy-wasm
//! adapter that is the only code talking to Envoy.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod algorithm;
pub mod config;
pub mod hash;
pub mod headers;
pub mod key;
pub mod limiter;
pub mod remote;
pub mod response;
pub mod rls;
pub mod table;

#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
mod global;
#[cfg(target_arch = "wasm32")]
pub use adapter::new_root;

pub use config::Config;
pub use limiter::{applicable_rules, decide, Decision, Outcome};
