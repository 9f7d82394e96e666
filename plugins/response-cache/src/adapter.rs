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
use edgewise_support::wasm::{
    install_panic_hook, load_config, log, now_nanos, wall_nanos, Metric, SharedData,
};
use edgewise_support::HeaderMap;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::cache::PurgeKind;
use crate::cache::{
    self, decide, entry_for, error_answer, freshened_by_partial, invalidated_keys, invalidates,
    on_request, refresh_outcome, refresh_request, revalidated, storable, ErrorAnswer, Pending,
    Refreshed, RequestDecision, Revalidated, StaleFallback,
};
use crate::coalesce::{self, Fill};
use crate::config::Config;
use crate::entry::Entry;
use crate::status::{cache_status, Outcome};
use crate::storage::{self, Insert};
use edgewise_support::request::combined_in;

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

struct CacheRoot {
    shared: Option<Rc<Shared>>,
    /// Refreshes sent, by callout token.
    in_flight: HashMap<u32, Refresh>,
    /// Fleet purge polls sent, by callout token: the cursor each asked after.
    polls: HashMap<u32, Option<String>>,
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
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone());
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

impl CacheRoot {
    /// Fleet purges: when this worker wins the poll lease, asks the control service for the
    /// purge log after this Envoy's cursor (one poll per Envoy per period, from the root
    /// context). A poll that fails or never answers only delays purges: traffic is never
    /// held for it.
    fn poll_fleet(&mut self, shared: &Shared) {
        let Some(fleet) = shared.config.fleet.as_ref() else {
            return;
        };
        if !self.polls.is_empty() {
            return; // one in flight from this worker
        }
        let now_ms = now_millis();
        // Another worker's poll still in flight after a period is harmless: an answer for a
        // cursor that moved meanwhile is ignored (fleet::apply).
        if !crate::fleet::take_lease(&shared.store, now_ms, fleet.poll_ms) {
            return;
        }
        let asked_after = crate::fleet::cursor(&shared.store);
        let path = format!(
            "{}?after={}",
            fleet.path,
            asked_after.as_deref().unwrap_or("")
        );
        match edgewise_support::wasm::poll_control_service(
            self,
            &fleet.cluster,
            &path,
            &fleet.token,
            Duration::from_millis(fleet.timeout_ms),
        ) {
            Some(token) => {
                self.polls.insert(token, asked_after);
            }
            None => shared.metrics.fleet_poll_failed.increment(1),
        }
    }

    /// The control service's answer to a poll: its purges become rules, the cursor moves.
    fn fleet_answer(&mut self, asked_after: Option<String>, num_headers: usize, body_size: usize) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let body = edgewise_support::wasm::http_call_ok_body(num_headers, body_size, 4 << 20);
        let poll = body.and_then(|b| serde_json::from_slice::<crate::fleet::Poll>(&b).ok());
        let Some(fleet) = shared.config.fleet.clone() else {
            return;
        };
        let Some(poll) = poll else {
            shared.metrics.fleet_poll_failed.increment(1);
            return;
        };
        let settle = fleet.settle_s;
        match crate::fleet::apply(
            &shared.store,
            asked_after.as_deref(),
            &poll,
            500,
            now_seconds(),
            settle,
        ) {
            Some(applied) => {
                shared.metrics.fleet_polls.increment(1);
                shared.metrics.fleet_purges.increment(applied.purges as i64);
                if applied.gap {
                    log(
                        LogLevel::Warn,
                        "response_cache: the purge log was trimmed past this Envoy's cursor: everything soft-purged",
                    );
                }
                if applied.more {
                    // More waiting: the next tick may poll at once.
                    crate::fleet::release_lease(&shared.store);
                }
            }
            None => shared.metrics.fleet_poll_failed.increment(1),
        }
    }

    /// Sends queued refreshes (from the root context, so their answers outlive the streams
    /// that asked for them).
    fn send_refreshes(&mut self, shared: &Shared) {
        let queued: Vec<Refresh> = shared.refreshes.borrow_mut().drain(..).collect();
        let timeout = Duration::from_millis(shared.config.refresh.timeout_ms);
        for refresh in queued {
            match hostcalls::dispatch_http_call(
                &refresh.cluster,
                text_pairs(&refresh.request),
                None,
                vec![],
                timeout,
            ) {
                Ok(token) => {
                    self.in_flight.insert(token, refresh);
                }
                Err(status) => {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "response_cache: background refresh to cluster {:?} not sent: {status:?}",
                            refresh.cluster
                        ),
                    );
                    shared.metrics.refresh_failed.increment(1);
                    coalesce::release(
                        &shared.store,
                        shared.config.refresh.slots,
                        refresh.pending.key_hash,
                        refresh.nonce,
                    );
                }
            }
        }
    }
}

impl Context for CacheRoot {
    /// A background refresh came back: store what it brought, then free the key's lock.
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(asked_after) = self.polls.remove(&token_id) {
            self.fleet_answer(asked_after, num_headers, body_size);
            return;
        }
        let (Some(shared), Some(refresh)) = (self.shared.clone(), self.in_flight.remove(&token_id))
        else {
            return;
        };
        let headers = if num_headers == 0 {
            Vec::new() // reset or no answer
        } else {
            abi::get_map_pairs(MapType::HttpCallResponseHeaders as u32)
        };
        let status = status_of(&headers);
        let body = if (body_size as u64) > shared.config.layout.max_entry_bytes {
            None
        } else if body_size == 0 {
            Some(Vec::new())
        } else {
            abi::get_buffer(BufferType::HttpCallResponseBody as u32, 0, body_size)
                .ok()
                .map(Option::unwrap_or_default)
        };
        let request = &refresh.request;
        // Varied fields as all their lines combined, as the key and matching read them.
        let mut header = |name: &str| combined_in(request, name);
        let key_hash = refresh.pending.key_hash;
        match refresh_outcome(
            &shared.config,
            &refresh.pending,
            status,
            &headers,
            body,
            now_seconds(),
            &mut header,
        ) {
            Refreshed::Store(entry) => {
                shared.metrics.refreshed.increment(1);
                if status == 304 {
                    shared.metrics.revalidated.increment(1);
                }
                store_entry(&shared, key_hash, *entry);
            }
            Refreshed::Remove => {
                shared.metrics.not_stored.increment(1);
                if storage::remove(&shared.store, &shared.config.layout, key_hash) {
                    shared
                        .metrics
                        .bytes
                        .set(storage::bytes_in_use(&shared.store));
                }
            }
            Refreshed::Keep => shared.metrics.refresh_failed.increment(1),
        }
        coalesce::release(
            &shared.store,
            shared.config.refresh.slots,
            key_hash,
            refresh.nonce,
        );
    }
}

/// The numeric `:status` of a header list; 0 when absent or malformed.
fn status_of(headers: &[(String, Vec<u8>)]) -> u16 {
    headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
        .unwrap_or(0)
}

impl RootContext for CacheRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        install_panic_hook("response_cache", VERSION);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        // Before the configuration compiles: it may hash (breaker identities, routes).
        edgewise_support::wasm::init_hash_seed();
        let Some(config) = load_config("response_cache", Config::from_json) else {
            return false;
        };
        let m = |what: &str| metric_name(&["response_cache", what]);
        let metrics = Metrics {
            hits: Metric::counter_flushed_every(&m("hits"), config.metrics_flush),
            misses: Metric::counter_flushed_every(&m("misses"), config.metrics_flush),
            stored: Metric::counter_flushed_every(&m("stored"), config.metrics_flush),
            evicted: Metric::counter_flushed_every(&m("evicted"), config.metrics_flush),
            not_stored: Metric::counter_flushed_every(&m("not_stored"), config.metrics_flush),
            invalidated: Metric::counter_flushed_every(&m("invalidated"), config.metrics_flush),
            purged: Metric::counter_flushed_every(&m("purged"), config.metrics_flush),
            stale_served: Metric::counter_flushed_every(&m("stale_served"), config.metrics_flush),
            revalidated: Metric::counter_flushed_every(&m("revalidated"), config.metrics_flush),
            coalesced: Metric::counter_flushed_every(&m("coalesced"), config.metrics_flush),
            refreshed: Metric::counter_flushed_every(&m("refreshed"), config.metrics_flush),
            refresh_failed: Metric::counter_flushed_every(
                &m("refresh_failed"),
                config.metrics_flush,
            ),
            bytes: Metric::gauge(&m("bytes_in_use")),
            abandoned: Metric::counter_flushed_every(&m("store_abandoned"), config.metrics_flush),
            fleet_purges: Metric::counter_flushed_every(&m("fleet_purges"), config.metrics_flush),
            fleet_polls: Metric::counter_flushed_every(&m("fleet_polls"), config.metrics_flush),
            fleet_poll_failed: Metric::counter_flushed_every(
                &m("fleet_poll_failed"),
                config.metrics_flush,
            ),
        };
        // The budget beside bytes_in_use, so a dashboard or alert can show how full it is.
        Metric::gauge(&m("max_bytes")).set(config.layout.max_bytes);
        log(
            LogLevel::Info,
            &format!(
                "response_cache {VERSION}: {} bytes, {} entries",
                config.layout.max_bytes, config.layout.slots
            ),
        );
        // A reconfiguration keeps the requests waiting for a fill and the queued refreshes:
        // they are looked after under the new configuration (never stranded).
        let (waiters, refreshes, inflight) = match self.shared.take() {
            Some(old) => (old.waiters.take(), old.refreshes.take(), old.inflight.get()),
            None => (Parked::default(), Vec::new(), 0),
        };
        let waiting = !waiters.is_empty() || !refreshes.is_empty();
        let shared = Rc::new(Shared {
            store: SharedData::with_prefix(&config.key_prefix),
            config: Rc::new(config),
            metrics,
            waiters: RefCell::new(waiters),
            refreshes: RefCell::new(refreshes),
            ticking: Cell::new(false),
            inflight: Cell::new(inflight),
        });
        if waiting {
            shared.start_ticking();
        } else {
            edgewise_support::wasm::set_tick_period(idle_tick(&shared));
        }
        self.shared = Some(shared);
        true
    }

    /// Sends queued background refreshes and looks after waiting requests.
    fn on_tick(&mut self) {
        if !edgewise_support::wasm::tick() {
            return; // a tick only for the deferred metrics
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        self.send_refreshes(&shared);
        serve_waiters(&shared);
        self.poll_fleet(&shared);
        if shared.waiters.borrow().is_empty() && shared.refreshes.borrow().is_empty() {
            edgewise_support::wasm::set_tick_period(idle_tick(&shared));
            shared.ticking.set(false);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CacheStream {
            context_id,
            shared: self.shared.clone(),
            pending: None,
            request: HeaderMap::default(),
            served: Served::default(),
            response: None,
            replacing: None,
            leader: None,
            held: 0,
            now_ms: 0,
            alive: Rc::new(Cell::new(true)),
        }))
    }
}

/// Looks after waiting requests at O(1) per waiter: one fill-lock read per key per tick
/// while their fill goes on; only once it ended (or their wait ran out) is the entry looked
/// up and decoded — served when usable, else the request goes to the origin itself.
fn serve_waiters(shared: &Shared) {
    let now_ms = now_millis();
    let now_s = (now_ms / 1000) as i64;
    let waiting = shared.waiters.borrow_mut().take_all();
    let mut still = Parked::default();
    let mut filling: HashMap<(usize, u64), bool> = HashMap::new();
    for (context_id, until_ms, waiter) in waiting {
        if !waiter.alive.get() {
            continue;
        }
        let slots = waiter.config.coalesce.map_or(1, |c| c.slots);
        if now_ms < until_ms
            && *filling
                .entry((Rc::as_ptr(&waiter.config) as usize, waiter.key_hash))
                .or_insert_with(|| coalesce::filling(&waiter.store, slots, waiter.key_hash, now_ms))
        {
            still.park(context_id, until_ms, waiter);
            continue;
        }
        let mut request = waiter.request.clone();
        let decision = on_request(&waiter.config, &waiter.store, &mut request, now_s);
        if let RequestDecision::Serve {
            status,
            mut headers,
            body,
            ..
        } = decision
        {
            for (name, value) in headers.iter_mut() {
                if name == "cache-status" {
                    value.extend_from_slice(b"; collapsed");
                }
            }
            if hostcalls::set_effective_context(context_id).is_ok()
                && reply(&waiter.served, status, headers, &body)
            {
                shared.metrics.coalesced.increment(1);
                continue;
            }
        }
        // The fill ended without a usable entry (not storable, failed) or took too long:
        // this request goes to the origin itself.
        edgewise_support::wasm::resume_parked(context_id);
    }
    let mut waiters = shared.waiters.borrow_mut();
    for (context_id, until_ms, waiter) in still.take_all() {
        waiters.park(context_id, until_ms, waiter);
    }
}

/// How a request's fill of its key ends, for the requests waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FillEnd {
    /// Stored, not storable for a passing reason (an origin error, a budget), or never
    /// filled: waiting and later requests look again (and may fill the key themselves).
    Retry,
    /// The response may not be stored (`no-store`, `private`, too large, `Vary: *`): later
    /// misses skip coalescing for `coalesce.hit_for_miss` (they could not share it).
    Uncacheable,
}

/// A response being copied for storage.
struct Filling {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

struct CacheStream {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    pending: Option<Pending>,
    /// The request's headers, kept for Vary on a storable miss.
    request: HeaderMap,
    /// Headers of our own cached reply, applied when Envoy sends it.
    served: Served,
    response: Option<Filling>,
    /// Body of a stale entry replacing an origin error's body (stale-if-error).
    replacing: Option<Vec<u8>>,
    /// The fill-lock nonce while this request fills its key for waiting requests.
    leader: Option<u64>,
    /// Bytes this stream counts in the worker's in-flight budget.
    held: u64,
    /// Cleared when the stream ends, so a waiter whose client left is dropped.
    alive: Rc<Cell<bool>>,
    /// The clock when the request arrived (ms since the epoch).
    now_ms: u64,
}

/// RFC 9211 §2: Cache-Status is a list, nearest the origin first — our entry goes after
/// those of caches upstream of us (a shield tier, an edge behind a front cache).
fn after_upstream_caches(headers: &[(String, Vec<u8>)], ours: &str) -> Vec<u8> {
    let upstream: Vec<&[u8]> = headers
        .iter()
        .filter(|(k, _)| k == "cache-status")
        .map(|(_, v)| v.as_slice())
        .collect();
    let mut value = upstream.join(&b", "[..]);
    if !value.is_empty() {
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(ours.as_bytes());
    value
}

fn text_pairs(headers: &[(String, Vec<u8>)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter_map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (k.as_str(), v)))
        .collect()
}

impl CacheStream {
    fn reply(&mut self, status: u16, headers: Vec<(String, Vec<u8>)>, body: &[u8]) -> Action {
        if reply(&self.served, status, headers, body) {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// Ends this request's fill, so waiting requests look again (at once on their tick).
    /// Remembers a forwarded request: its decision, its headers (Vary is only known from the
    /// response, when request headers are gone), and adds revalidation's validators.
    fn prepare_forward(&mut self, shared: &Shared, pending: Pending, request: HeaderMap) {
        // RFC 9111 §4.3.1: a stale entry goes to the origin as a conditional request.
        for (name, value) in text_pairs(&pending.validators) {
            abi::replace_map_value(MapType::HttpRequestHeaders as u32, name, value.as_bytes());
        }
        // Unkeyed fields an origin may reflect never reach it (`unkeyed_headers: "strip"`).
        for name in &pending.strip {
            abi::remove_map_value(MapType::HttpRequestHeaders as u32, name);
        }
        if matches!(pending.outcome, Outcome::Miss | Outcome::Stale) {
            shared.metrics.misses.increment(1);
            self.request = request;
        }
        self.pending = Some(pending);
    }

    fn release_fill(&mut self) {
        self.end_fill(FillEnd::Retry);
    }

    /// Counts `bytes` more in the worker's in-flight budget; false (nothing counted) when
    /// they do not fit.
    fn hold(&mut self, shared: &Shared, bytes: u64) -> bool {
        let inflight = shared.inflight.get();
        if inflight.saturating_add(bytes) > shared.config.max_inflight_bytes {
            return false;
        }
        shared.inflight.set(inflight + bytes);
        self.held += bytes;
        true
    }

    /// Gives back everything this stream counted in the in-flight budget.
    fn release_held(&mut self) {
        if let Some(shared) = self.shared.as_ref() {
            shared
                .inflight
                .set(shared.inflight.get().saturating_sub(self.held));
        }
        self.held = 0;
    }

    /// Ends this request's fill; after a response the cache may not store, later misses for
    /// the key skip coalescing for `coalesce.hit_for_miss` (they could not share it).
    fn end_fill(&mut self, end: FillEnd) {
        let uncacheable = end == FillEnd::Uncacheable;
        if let (Some(nonce), Some(shared), Some(pending)) = (
            self.leader.take(),
            self.shared.as_ref(),
            self.pending.as_ref(),
        ) {
            if let Some(coalescing) = shared.config.coalesce {
                let slots = coalescing.slots;
                if uncacheable && coalescing.hit_for_miss_ms > 0 {
                    let until = now_millis().saturating_add(coalescing.hit_for_miss_ms);
                    coalesce::release_uncacheable(
                        &shared.store,
                        slots,
                        pending.key_hash,
                        nonce,
                        until,
                    );
                } else {
                    coalesce::release(&shared.store, slots, pending.key_hash, nonce);
                }
            }
        }
    }

    /// Sends a request on to the origin. The first miss for a key fills it; later ones, on
    /// any worker, wait (paused) for its result.
    fn forward(&mut self, shared: &Shared, pending: Box<Pending>, request: HeaderMap) -> Action {
        let mut pending = pending;
        // A stale entry kept to revalidate or to answer an error costs its body on this
        // worker until the response: within the budget, else the request goes as a miss.
        let kept = pending.fallback.reply().map_or(0, |(_, _, b)| b.len())
            + pending.revalidating.as_ref().map_or(0, |e| e.body.len());
        if kept > 0 && !self.hold(shared, kept as u64) {
            shared.metrics.abandoned.increment(1);
            pending.fallback = StaleFallback::None;
            pending.revalidating = None;
            pending.validators.clear();
        }
        if let (true, Some(coalescing)) = (pending.fills, shared.config.coalesce) {
            let nonce = coalesce::leader_nonce(random_word());
            match coalesce::acquire(
                &shared.store,
                coalescing.slots,
                pending.key_hash,
                self.now_ms,
                coalescing.wait_ms,
                nonce,
            ) {
                Fill::Leader => self.leader = Some(nonce),
                Fill::Follow { until_ms } => {
                    shared.waiters.borrow_mut().park(
                        self.context_id,
                        until_ms,
                        Waiter {
                            key_hash: pending.key_hash,
                            request: request.clone(),
                            served: self.served.clone(),
                            alive: self.alive.clone(),
                            config: shared.config.clone(),
                            store: shared.store.clone(),
                        },
                    );
                    shared.start_ticking();
                    self.prepare_forward(shared, *pending, request);
                    return Action::Pause;
                }
                Fill::Alone => {}
            }
        }
        self.prepare_forward(shared, *pending, request);
        Action::Continue
    }

    /// RFC 5861 §3: queues the background refresh of an entry served stale, unless another
    /// request (on any worker) already refreshes it. False when there is no cluster to send
    /// it to (none configured and the route names none).
    fn queue_refresh(&self, shared: &Shared, refresh: &Pending, request: &HeaderMap) -> bool {
        let cluster = shared.config.refresh.cluster.clone().or_else(|| {
            edgewise_support::wasm::property(&["xds", "cluster_name"])
                .and_then(|name| String::from_utf8(name).ok())
                .filter(|name| !name.is_empty())
        });
        let Some(cluster) = cluster else {
            return false;
        };
        let nonce = coalesce::leader_nonce(random_word());
        let lock_ms = shared.config.refresh.timeout_ms.saturating_add(1_000);
        if coalesce::acquire(
            &shared.store,
            shared.config.refresh.slots,
            refresh.key_hash,
            self.now_ms,
            lock_ms,
            nonce,
        ) == Fill::Leader
        {
            shared.refreshes.borrow_mut().push(Refresh {
                pending: Box::new(refresh.clone()),
                request: refresh_request(&request.to_pairs(), refresh),
                cluster,
                nonce,
            });
            shared.start_ticking();
        }
        true
    }

    /// Stores the complete response (if it can be), then lets waiting requests look.
    fn finish_store(&mut self, shared: &Shared) {
        let stored = self.store_response(shared);
        self.end_fill(if stored {
            FillEnd::Retry
        } else {
            FillEnd::Uncacheable
        });
    }

    /// Stores the complete response; false when it turned out not storable (`Vary: *`).
    fn store_response(&mut self, shared: &Shared) -> bool {
        let (Some(filling), Some(pending)) = (self.response.take(), self.pending.as_ref()) else {
            return false;
        };
        let request = &self.request;
        // Varied fields as all their lines combined, as the key and matching read them.
        let mut header = |name: &str| request.combined(name);
        let Some(entry) = entry_for(
            &shared.config.tags,
            pending,
            filling.status,
            &filling.headers,
            filling.body,
            now_seconds(),
            &mut header,
        ) else {
            shared.metrics.not_stored.increment(1);
            return false;
        };
        store_entry(shared, pending.key_hash, entry);
        true
    }
}

impl Context for CacheStream {
    fn on_done(&mut self) -> bool {
        self.alive.set(false);
        self.release_fill();
        self.release_held();
        true
    }
}

impl HttpContext for CacheStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        // The cache looks at many request headers: one map read beats a call per header.
        let mut request = abi::get_header_map(MapType::HttpRequestHeaders as u32);
        // One clock read per request: the decision and the fill lock use the same instant.
        self.now_ms = now_millis();
        let now = (self.now_ms / 1000) as i64;
        match decide(
            &shared.config,
            &shared.store,
            &mut request,
            now,
            !end_of_stream,
        ) {
            RequestDecision::Serve {
                status,
                headers,
                body,
                refresh,
            } => {
                if let Some(refresh) = refresh {
                    if !self.queue_refresh(&shared, &refresh, &request) {
                        // No cluster to refresh from: revalidate in-band instead.
                        return self.forward(&shared, refresh, request);
                    }
                    shared.metrics.stale_served.increment(1);
                }
                shared.metrics.hits.increment(1);
                self.reply(status, headers, &body)
            }
            RequestDecision::GatewayTimeout { headers } => {
                shared.metrics.misses.increment(1);
                abi::send_local_response(504, &text_pairs(&headers), b"");
                Action::Pause
            }
            RequestDecision::Purge {
                key_hash,
                authorized,
                kind,
            } => {
                let (status, body): (u32, &[u8]) = if !authorized {
                    (403, b"purge not allowed\n")
                } else if let PurgeKind::Invalid(why) = kind {
                    abi::send_local_response(400, &[], format!("{why}\n").as_bytes());
                    return Action::Pause;
                } else if let PurgeKind::Rules { targets, soft } = kind {
                    let added = targets
                        .into_iter()
                        .all(|target| crate::purge::add(&shared.store, soft, target).is_some());
                    if added {
                        shared.metrics.purged.increment(1);
                        (200, if soft { b"soft-purged\n" } else { b"purged\n" })
                    } else {
                        (503, b"purge not recorded: shared data refused it\n")
                    }
                } else if storage::remove(&shared.store, &shared.config.layout, key_hash) {
                    shared.metrics.purged.increment(1);
                    shared
                        .metrics
                        .bytes
                        .set(storage::bytes_in_use(&shared.store));
                    (200, b"purged\n")
                } else {
                    (404, b"not cached\n")
                };
                abi::send_local_response(status, &[], body);
                Action::Pause
            }
            RequestDecision::Forward(pending) => self.forward(&shared, pending, request),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let served = self.served.borrow_mut().take();
        if let Some(served) = served {
            for (name, value) in text_pairs(&served) {
                abi::replace_map_value(MapType::HttpResponseHeaders as u32, name, value.as_bytes());
            }
            return Action::Continue;
        }
        let Some(pending) = self.pending.clone() else {
            return Action::Continue;
        };
        let headers = abi::get_map_pairs(MapType::HttpResponseHeaders as u32);
        // Tags are for this cache's purges, not for clients (`tags.strip`).
        if shared.config.tags.strip {
            for name in &shared.config.tags.headers {
                if headers.iter().any(|(k, _)| k == name) {
                    abi::remove_map_value(MapType::HttpResponseHeaders as u32, name);
                }
            }
        }
        // RFC 9213: targeted fields meant for this cache go no further (they stay in the
        // stored entry, whose freshness they govern).
        for name in &shared.config.strip_targeted_fields {
            if headers.iter().any(|(k, _)| k == name) {
                abi::remove_map_value(MapType::HttpResponseHeaders as u32, name);
            }
        }
        let status = status_of(&headers);
        if invalidates(&pending, status) {
            for key_hash in invalidated_keys(&shared.config, &pending, status, &headers) {
                if storage::remove(&shared.store, &shared.config.layout, key_hash) {
                    shared.metrics.invalidated.increment(1);
                }
            }
            return Action::Continue;
        }
        if pending.outcome == Outcome::Bypass {
            // Say why the cache stood aside, when it was for the request's own reasons.
            if let Some(detail) = pending.detail {
                let value = cache_status(
                    &shared.config.cache_status,
                    Outcome::Bypass,
                    None,
                    false,
                    Some(detail),
                );
                abi::replace_map_value(
                    MapType::HttpResponseHeaders as u32,
                    "cache-status",
                    &after_upstream_caches(&headers, &value),
                );
            }
            return Action::Continue;
        }
        // RFC 9111 §4.3.3: our revalidation came back 304: refresh the entry and answer with
        // the stored response (a local reply replaces the 304 before it goes downstream).
        if status == 304 {
            if let Some(Revalidated {
                store,
                reply: (status, headers, body),
            }) = revalidated(&shared.config, &pending, &headers, now_seconds())
            {
                shared.metrics.revalidated.increment(1);
                match store {
                    Some(refreshed) => store_entry(&shared, pending.key_hash, refreshed),
                    None => {
                        // The 304 made the entry unshareable: drop it (and its variants).
                        shared.metrics.not_stored.increment(1);
                        if storage::remove(&shared.store, &shared.config.layout, pending.key_hash) {
                            shared
                                .metrics
                                .bytes
                                .set(storage::bytes_in_use(&shared.store));
                        }
                    }
                }
                // Waiting requests look again now (served, or sent on if it was dropped).
                self.end_fill(FillEnd::Retry);
                return self.reply(status, headers, &body);
            }
        }
        // RFC 9111 §4.3.4: our revalidation of a stored 200 came back as a 206 of the same
        // representation: the entry is freshened from its fields; the 206 goes on as it is.
        if status == 206 {
            if let Some(refreshed) =
                freshened_by_partial(&shared.config, &pending, &headers, now_seconds())
            {
                shared.metrics.revalidated.increment(1);
                store_entry(&shared, pending.key_hash, refreshed);
            }
        }
        // RFC 5861 §4: an origin error (or Envoy's own, e.g. connect failure) with a stale entry
        // in its window is answered with the entry; with `serve_stale_when_unreachable`, an
        // error Envoy generated because the origin could not be reached (RFC 9111 §4.2.4) is
        // answered with the stale entry or, where the entry forbids that, a 504. The error's
        // body is replaced at its end, so this needs an error with a body (Envoy's local
        // errors have one). Envoy's details are read (one host call) only for those cases.
        let unreachable = || {
            edgewise_support::wasm::property(&["response", "code_details"])
                .is_some_and(|details| details != b"via_upstream")
        };
        let answer = if status >= 500 && !end_of_stream {
            error_answer(&pending.fallback, unreachable)
        } else {
            ErrorAnswer::Origin
        };
        match answer {
            ErrorAnswer::Origin => {}
            ErrorAnswer::GatewayTimeout => {
                let value = cache_status(
                    &shared.config.cache_status,
                    Outcome::Stale,
                    None,
                    false,
                    Some("origin-unreachable"),
                );
                let pairs: [(&str, &[u8]); 3] = [
                    (":status", b"504"),
                    ("content-length", b"0"),
                    ("cache-status", value.as_bytes()),
                ];
                abi::set_map_pairs(MapType::HttpResponseHeaders as u32, &pairs);
                self.replacing = Some(Vec::new());
                return Action::Continue;
            }
            ErrorAnswer::Stale((stored_status, stored_headers, body)) => {
                shared.metrics.stale_served.increment(1);
                let status = stored_status.to_string();
                let length = body.len().to_string();
                let mut pairs: Vec<(&str, &[u8])> = vec![
                    (":status", status.as_bytes()),
                    ("content-length", length.as_bytes()),
                ];
                pairs.extend(
                    stored_headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_slice())),
                );
                abi::set_map_pairs(MapType::HttpResponseHeaders as u32, &pairs);
                self.replacing = Some(body.clone());
                return Action::Continue;
            }
        }
        let mut storing = storable(&shared.config, &pending, status, &headers).is_ok();
        let declared = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
        if storing && declared.is_some_and(|n| n > shared.config.layout.max_entry_bytes) {
            storing = false; // over max_entry_bytes: not copied at all
        }
        let value = cache_status(
            &shared.config.cache_status,
            pending.outcome,
            None,
            storing,
            pending.detail,
        );
        abi::replace_map_value(
            MapType::HttpResponseHeaders as u32,
            "cache-status",
            &after_upstream_caches(&headers, &value),
        );
        if storing {
            self.response = Some(Filling {
                status,
                headers,
                body: Vec::new(),
            });
            if end_of_stream {
                self.finish_store(&shared);
                self.release_held();
            }
        } else {
            shared.metrics.not_stored.increment(1);
            // An origin error is transient: the next miss may fill again.
            self.end_fill(if status < 500 {
                FillEnd::Uncacheable
            } else {
                FillEnd::Retry
            });
            self.release_held();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        if self.replacing.is_some() {
            if !end_of_stream {
                return Action::Pause; // hold the error body until its end
            }
            if let Some(body) = self.replacing.take() {
                abi::set_buffer(BufferType::HttpResponseBody as u32, 0, body_size, &body);
            }
            return Action::Continue;
        }
        if let Some(copied) = self.response.as_ref().map(|f| f.body.len() as u64) {
            let limit = shared.config.layout.max_entry_bytes;
            if copied.saturating_add(body_size as u64) > limit {
                self.response = None;
                shared.metrics.not_stored.increment(1);
                self.end_fill(FillEnd::Uncacheable);
                self.release_held();
                return Action::Continue;
            }
            // The worker's copies of responses being stored share one budget: beyond it this
            // store is abandoned (the response still flows to the client).
            if !self.hold(&shared, body_size as u64) {
                self.response = None;
                shared.metrics.not_stored.increment(1);
                shared.metrics.abandoned.increment(1);
                self.end_fill(FillEnd::Retry);
                self.release_held();
                return Action::Continue;
            }
            // Each chunk passes on at once; we keep a copy until the end.
            if let (Ok(Some(chunk)), Some(filling)) = (
                abi::get_buffer(BufferType::HttpResponseBody as u32, 0, body_size),
                self.response.as_mut(),
            ) {
                filling.body.extend_from_slice(&chunk);
            }
            if end_of_stream {
                self.finish_store(&shared);
                self.release_held();
            }
        }
        Action::Continue
    }
}
