//! The proxy-wasm side of the adapter kit, by concern: the plugin's life (panic hook, log,
//! configuration), shared data as a `CasStore`, request headers and properties, time,
//! metrics, ticks, control-service callouts and the composed module's hooks. Every host
//! call goes through `crate::abi` and never panics.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType};

use crate::request::RequestView;
use crate::store::{CasStore, SetOutcome, StoreError};

mod composed;
mod control;
mod host;
mod lifecycle;
mod metrics;
mod request;
mod shared_data;
mod ticks;
mod time;

pub use composed::*;
pub use control::*;
pub use host::*;
pub use lifecycle::*;
pub use metrics::*;
pub use request::*;
pub use shared_data::*;
pub use ticks::*;
pub use time::*;
