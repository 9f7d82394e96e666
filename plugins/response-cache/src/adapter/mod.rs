//! The proxy-wasm adapter: looks requests up in shared data and answers hits with a local
//! reply; on a miss, lets the response stream through while copying it, and stores it when
//! complete and storable. Concurrent misses for one key wait (paused) for the first one's
//! result, checked on the worker's tick.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use edgewise_support::abi;
use edgewise_support::metrics::metric_name;
use edgewise_support::parked::Parked;
use edgewise_support::wasm::WasmHost;
use edgewise_support::wasm::{
    install_panic_hook, load_config, log, now_nanos, wall_nanos, Metric, SharedData,
};
use edgewise_support::{Fields, HeaderMap};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::cache::PurgeKind;
use crate::cache::{
    self, decide, entry_for, on_request, on_response_headers, refresh_outcome, refresh_request,
    status_of, strip_fields_for_this_cache, write_cache_status, FillEnd, Pending, Refreshed,
    RequestDecision, ResponseAction, Revalidated, StaleFallback, Storing,
};
use crate::coalesce::{self, Fill};
use crate::config::Config;
use crate::entry::Entry;
use crate::status::Outcome;
use crate::storage::{self, Insert};

mod root;
mod stream;
mod waiters;

use root::*;
use stream::*;
use waiters::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(not(feature = "embedded"))]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| new_root());
}}

/// This filter's root context, for this module's entry point or a composed module.
pub fn new_root() -> Box<dyn RootContext> {
    Box::new(CacheRoot {
        shared: None,
        in_flight: HashMap::new(),
        polls: HashMap::new(),
    })
}

struct Metrics {
    hits: Metric,
    misses: Metric,
    stored: Metric,
    evicted: Metric,
    not_stored: Metric,
    invalidated: Metric,
    purged: Metric,
    stale_served: Metric,
    revalidated: Metric,
    coalesced: Metric,
    refreshed: Metric,
    refresh_failed: Metric,
    bytes: Metric,
    abandoned: Metric,
    fleet_purges: Metric,
    fleet_polls: Metric,
    fleet_poll_failed: Metric,
}

/// Headers of a cached local reply still to be applied when Envoy sends it (see `reply`).
type Served = Rc<RefCell<Option<Vec<(String, Vec<u8>)>>>>;

/// A request paused while another request fills its key (parked until it gives up
/// waiting, at `coalesce.wait`).
struct Waiter {
    key_hash: u64,
    /// The client's request headers, to decide again once the entry is there.
    request: HeaderMap,
    served: Served,
    alive: Rc<Cell<bool>>,
    /// The configuration and store the request started under: a reconfiguration while it
    /// waits never judges it by another key, layout or fill-lock table.
    config: Rc<Config>,
    store: SharedData,
}

/// A background refresh (RFC 5861 §3) this worker holds the key's fill lock for.
struct Refresh {
    pending: Box<Pending>,
    /// The request to send, and to answer Vary from when storing.
    request: Vec<(String, Vec<u8>)>,
    cluster: String,
    nonce: u64,
}

/// How often a worker with waiting requests or queued refreshes looks at them.
const WAIT_TICK: Duration = Duration::from_millis(5);

struct Shared {
    /// Shared data under the configured `key_prefix`.
    store: SharedData,
    config: Rc<Config>,
    metrics: Metrics,
    waiters: RefCell<Parked<Waiter>>,
    /// Refreshes to send from the root context on the next tick: a callout made from a
    /// stream's context would be cancelled when that stream ends, which for a stale hit is
    /// at once.
    refreshes: RefCell<Vec<Refresh>>,
    ticking: Cell<bool>,
    /// Bytes this worker holds for responses being copied for storage, and for stale
    /// entries kept to revalidate or to answer an error (bounded by max_inflight_bytes).
    inflight: Cell<u64>,
}

impl Shared {
    fn start_ticking(&self) {
        if !self.ticking.replace(true) {
            edgewise_support::wasm::set_tick_period(WAIT_TICK);
        }
    }
}

/// The tick period when nothing waits: the fleet poll's, or none.
fn idle_tick(shared: &Shared) -> Duration {
    shared
        .config
        .fleet
        .as_ref()
        .map_or(Duration::ZERO, |f| Duration::from_millis(f.poll_ms))
}

fn now_seconds() -> i64 {
    // HTTP ages and dates follow the wall clock, corrections included (RFC 9111 §4.2.3).
    (wall_nanos().unwrap_or(0) / 1_000_000_000) as i64
}

fn now_millis() -> u64 {
    now_nanos().unwrap_or(0) / 1_000_000
}

thread_local! {
    /// This VM's random state: seeded once from WASI `random_get` (through std's hash keys)
    /// and the clock, so workers started at the same instant still draw different words.
    static RANDOM_STATE: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish()
            ^ now_nanos().unwrap_or(0)
    });
}

/// A fresh random word per call (splitmix64), for nonces, generations and sampling.
fn random_word() -> u64 {
    RANDOM_STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Answers the current stream with a stored response as a local reply. Stored fields go out
/// with the reply; Envoy adds its own content-type to a local reply, so the stored one
/// replaces it when the reply passes through on_http_response_headers (via `served`).
fn reply(served: &Served, status: u16, headers: Vec<(String, Vec<u8>)>, body: &[u8]) -> bool {
    let content_type = headers.field("content-type").map(<[u8]>::to_vec);
    let rest: Vec<(String, Vec<u8>)> = headers
        .into_iter()
        .filter(|(k, _)| k != "content-type")
        .collect();
    *served.borrow_mut() = Some(
        content_type
            .map(|v| vec![("content-type".to_string(), v)])
            .unwrap_or_default(),
    );
    if !abi::send_local_response(status as u32, &text_pairs(&rest), body) {
        *served.borrow_mut() = None;
        return false;
    }
    true
}

/// Stores an entry among its URL's variants, counting stored / evicted / not stored and the
/// bytes gauge.
fn store_entry(shared: &Shared, key_hash: u64, entry: Entry) {
    match cache::store(
        &shared.config,
        &shared.store,
        key_hash,
        entry,
        now_seconds() as u64,
        &mut random_word,
    ) {
        Insert::Stored { evicted } => {
            shared.metrics.stored.increment(1);
            if evicted > 0 {
                shared.metrics.evicted.increment(evicted as i64);
            }
            shared
                .metrics
                .bytes
                .set(storage::bytes_in_use(&shared.store));
        }
        Insert::NoRoom { evicted } => {
            shared.metrics.not_stored.increment(1);
            shared.metrics.evicted.increment(evicted as i64);
            shared
                .metrics
                .bytes
                .set(storage::bytes_in_use(&shared.store));
        }
        Insert::TooLarge | Insert::Raced => shared.metrics.not_stored.increment(1),
    }
}
