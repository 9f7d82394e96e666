//! Edgewise composed module: the four filters in one Wasm VM per worker, run in the edge's
//! order (rate limiting → response caching → weighted routing → circuit breaking), so a
//! request crosses into V8 once per callback instead of once per filter and callback.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;

#[cfg(target_arch = "wasm32")]
mod adapter;
