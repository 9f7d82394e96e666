//! The proxy-wasm side: shared data as a `CasStore`, the panic hook that puts a panic's
//! message in Envoy's log before the VM aborts, and metric handles that never panic.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType};

use crate::request::RequestView;
use crate::store::{CasStore, SetOutcome, StoreError};

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

/// Sends `GET path` with `Authorization: Bearer token` to the control service's `cluster`
/// from `context` (a root context: a stream's callout would end with the stream). The
/// callout's token, or None when Envoy refused it.
pub fn poll_control_service(
    context: &dyn proxy_wasm::traits::Context,
    cluster: &str,
    path: &str,
    token: &str,
    timeout: std::time::Duration,
) -> Option<u32> {
    let authorization = format!("Bearer {token}");
    let headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", cluster),
        ("authorization", authorization.as_str()),
    ];
    context
        .dispatch_http_call(cluster, headers, None, vec![], timeout)
        .ok()
}

/// The body of a callout's answer when it is a 200 with 1 to `max_bytes` bytes; None for
/// anything else (no answer, another status, an empty or oversized body).
pub fn http_call_ok_body(
    num_headers: usize,
    body_size: usize,
    max_bytes: usize,
) -> Option<Vec<u8>> {
    if num_headers == 0 || body_size == 0 || body_size > max_bytes {
        return None;
    }
    let status = crate::abi::get_map_value(
        proxy_wasm::types::MapType::HttpCallResponseHeaders as u32,
        ":status",
    )?;
    if status != b"200" {
        return None;
    }
    crate::abi::get_buffer(
        proxy_wasm::types::BufferType::HttpCallResponseBody as u32,
        0,
        body_size,
    )
    .ok()
    .flatten()
}

/// Request headers read on demand, each at most once (one host call per header, bytes
/// getter: values need not be UTF-8). The whole map is copied only when every value of a
/// field is asked for (Envoy's single-value getter returns the first one), once per request.
#[derive(Default)]
pub struct RequestHeaders {
    /// The names read so far, back to back: one buffer per request, not a String per name.
    names: String,
    /// Per name read, in order: where its name ends in `names`, and its first value.
    cache: Vec<(usize, Option<Vec<u8>>)>,
    all: Option<crate::abi::RequestPairs>,
}

impl RequestView for RequestHeaders {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        let mut start = 0;
        for (end, value) in &self.cache {
            if self.names.get(start..*end) == Some(name) {
                return value.clone();
            }
            start = *end;
        }
        let value =
            crate::abi::get_map_value(proxy_wasm::types::MapType::HttpRequestHeaders as u32, name);
        // Sized once for a request's usual reads, so growing them rarely allocates again.
        if self.cache.capacity() == 0 {
            self.cache.reserve(8);
            self.names.reserve(128);
        }
        self.names.push_str(name);
        self.cache.push((self.names.len(), value.clone()));
        value
    }

    fn header_values(&mut self, name: &str) -> Vec<Vec<u8>> {
        self.all
            .get_or_insert_with(crate::abi::RequestPairs::read)
            .values(name)
    }
}

/// The host's wall clock in nanoseconds since the Unix epoch (HTTP dates and ages follow it,
/// corrections included). None when the host cannot tell the time.
pub fn wall_nanos() -> Option<u64> {
    crate::abi::current_time_nanos().ok()
}

thread_local! {
    /// (latest time handed out, offset added to the host's clock) for `now_nanos`.
    static STEADY: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Time for rate limits, windows, open periods and leases: the host's wall clock that never
/// runs backwards in this VM and keeps its pace through a step back. When the clock steps
/// back by Δ (NTP correcting a fast clock), the step is absorbed into an offset: time goes on
/// from the latest value handed out instead of repeating Δ (which would deny every recently
/// active key for Δ and keep breakers open Δ longer). Each VM absorbs a step on its first
/// read after it, so busy workers agree to within their gap between reads; forward steps
/// pass through. None when the host cannot tell the time (every filter then fails open).
pub fn now_nanos() -> Option<u64> {
    let host = wall_nanos()?;
    Some(STEADY.with(|steady| {
        let (latest, mut offset) = steady.get();
        let mut now = host.saturating_add(offset);
        if now < latest {
            offset += latest - now;
            now = latest;
        }
        steady.set((now, offset));
        now
    }))
}

/// A property of the stream or the plugin (`xds.route_name`, ...); None when absent or
/// when the host fails to give it (never a trap).
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    crate::abi::get_property(path).ok().flatten()
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

/// Logs panics at critical level (with location) through proxy_log, so the reason a VM
/// died is in Envoy's log, and logs the plugin's name and version once.
pub fn install_panic_hook(plugin: &'static str, version: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let _ = crate::abi::log(
            LogLevel::Critical as u32,
            &format!("{plugin} {version} panicked: {info}"),
        );
    }));
}

/// A counter or gauge defined once at configure time. Failures are swallowed: metrics must
/// never take traffic down. A counter made `deferred` adds its increments up in the VM and
/// hands them to the host on the root context's tick (`metrics_flush`), one host call per
/// counter per flush instead of one per request.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    id: Option<u32>,
    deferred: bool,
}

impl Metric {
    pub fn counter(name: &str) -> Metric {
        Metric {
            id: crate::abi::define_metric(MetricType::Counter as u32, name).ok(),
            deferred: false,
        }
    }

    /// A counter whose increments reach Envoy at the next flush (at most `metrics_flush`
    /// late) when `flush` is non-zero; immediate otherwise.
    pub fn counter_flushed_every(name: &str, flush: std::time::Duration) -> Metric {
        if !flush.is_zero() {
            TICKS.with(|t| {
                let current = t.flush.get();
                if current.is_zero() || flush < current {
                    t.flush.set(flush);
                }
            });
        }
        Metric {
            deferred: !flush.is_zero(),
            ..Metric::counter(name)
        }
    }

    pub fn gauge(name: &str) -> Metric {
        Metric {
            id: crate::abi::define_metric(MetricType::Gauge as u32, name).ok(),
            deferred: false,
        }
    }

    pub fn increment(&self, by: i64) {
        let Some(id) = self.id else { return };
        if !self.deferred {
            let _ = crate::abi::increment_metric(id, by);
            return;
        }
        PENDING.with(|p| {
            let mut pending = p.borrow_mut();
            match pending.iter_mut().find(|(i, _)| *i == id) {
                Some((_, total)) => *total += by,
                None => pending.push((id, by)),
            }
        });
        // Counts wait: the tick must run. A host call only when the host's period is not
        // already right (the first count since a flush, or after a refused request) — once
        // per flush period, not per request.
        TICKS.with(|t| t.flush_armed.set(true));
        apply_tick_period();
    }

    pub fn set(&self, value: u64) {
        if let Some(id) = self.id {
            let _ = crate::abi::record_metric(id, value);
        }
    }
}

/// Hands every deferred increment to the host (one call per counter that moved).
pub fn flush_metrics() {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    for (id, total) in pending {
        if total != 0 {
            let _ = crate::abi::increment_metric(id, total);
        }
    }
}

/// The root context's tick period is shared by what the filter asks for
/// (`set_tick_period`) and the flush of deferred metrics: the host ticks at the shorter.
struct Ticks {
    /// What the filter (or, in a composed module, the shortest of its filters) asked for.
    wanted: std::cell::Cell<std::time::Duration>,
    /// The shortest `metrics_flush` configured in this VM (zero: none).
    flush: std::cell::Cell<std::time::Duration>,
    /// Deferred increments wait for a flush.
    flush_armed: std::cell::Cell<bool>,
    /// The period last given to the host.
    current: std::cell::Cell<std::time::Duration>,
}

thread_local! {
    static PENDING: std::cell::RefCell<Vec<(u32, i64)>> = const { std::cell::RefCell::new(Vec::new()) };
    static TICKS: Ticks = const {
        Ticks {
            wanted: std::cell::Cell::new(std::time::Duration::ZERO),
            flush: std::cell::Cell::new(std::time::Duration::ZERO),
            flush_armed: std::cell::Cell::new(false),
            current: std::cell::Cell::new(std::time::Duration::ZERO),
        }
    };
}

/// Gives the host the shorter of the wanted period and, while increments wait, the flush
/// period; no host call when that is what the host already has.
fn apply_tick_period() {
    let period = TICKS.with(|t| {
        let wanted = t.wanted.get();
        let flush = if t.flush_armed.get() {
            t.flush.get()
        } else {
            std::time::Duration::ZERO
        };
        let period = match (wanted.is_zero(), flush.is_zero()) {
            (true, _) => flush,
            (false, true) => wanted,
            (false, false) => wanted.min(flush),
        };
        (period != t.current.get()).then_some(period)
    });
    // Recorded only once the host took it: a refused request is made again next time.
    if let Some(period) = period {
        if crate::abi::set_tick_period(period).is_ok() {
            TICKS.with(|t| t.current.set(period));
        }
    }
}

/// The root context's tick: flushes deferred metrics, and says whether the filter's own
/// tick work should run (it asked for ticks), so a tick that came only for the flush does
/// nothing else. Every root context's `on_tick` starts with it.
pub fn tick() -> bool {
    flush_metrics();
    TICKS.with(|t| t.flush_armed.set(false));
    apply_tick_period();
    TICKS.with(|t| !t.wanted.get().is_zero())
}

/// Sets the period the filter's root context wants ticks at (zero: none); the host ticks
/// at the shorter of it and a pending metrics flush. A composed module calls this with the
/// shortest period its filters asked for.
pub fn apply_wanted_tick_period(period: std::time::Duration) {
    TICKS.with(|t| t.wanted.set(period));
    apply_tick_period();
}

/// Writes a line to Envoy's log (a failure to log is not worth failing traffic for).
pub fn log(level: LogLevel, message: &str) {
    let _ = crate::abi::log(level as u32, message);
}

/// Reads the plugin configuration and compiles it with `compile`. On failure, logs
/// "`plugin`: <error>" at error level and returns None, so `on_configure` can return false
/// and Envoy refuses the configuration.
pub fn load_config<T>(
    plugin: &str,
    compile: impl FnOnce(&[u8]) -> Result<T, crate::config::ConfigError>,
) -> Option<T> {
    let composed = COMPOSED.with(|c| c.borrow().configuration.clone());
    let read = match composed {
        Some(section) => Ok(Some(section)),
        None => crate::abi::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration as u32,
            0,
            usize::MAX,
        ),
    };
    let bytes = match read {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            log(
                LogLevel::Error,
                &format!("{plugin}: cannot read the plugin configuration: {status:?}"),
            );
            return None;
        }
    };
    match compile(&bytes) {
        Ok(config) => Some(config),
        Err(error) => {
            log(LogLevel::Error, &format!("{plugin}: {error}"));
            None
        }
    }
}

/// What a composed module (several filters in one VM, see `plugins/edge-chain`) provides
/// to the filters inside it: each filter's own configuration section, and hooks for the
/// two things a filter does on its own initiative — resuming a paused request (the rest of
/// the composed chain must run first) and asking for ticks (one period per VM).
#[derive(Default)]
pub struct Composed {
    pub configuration: Option<Vec<u8>>,
    pub resume: Option<std::rc::Rc<dyn Fn(u32)>>,
    pub tick: Option<std::rc::Rc<dyn Fn(std::time::Duration)>>,
}

thread_local! {
    pub static COMPOSED: std::cell::RefCell<Composed> = std::cell::RefCell::new(Composed::default());
}

/// Resumes the paused request of stream `context_id` (the effective context must already be
/// that stream). In a composed module the filters after this one run first.
pub fn resume_request(context_id: u32) {
    let hook = COMPOSED.with(|c| c.borrow().resume.clone());
    match hook {
        Some(resume) => resume(context_id),
        None => {
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// Asks for the root context's tick every `period` (zero: no more ticks). In a composed
/// module the VM ticks at the shortest period any of its filters asks for.
pub fn set_tick_period(period: std::time::Duration) {
    let hook = COMPOSED.with(|c| c.borrow().tick.clone());
    match hook {
        Some(tick) => tick(period),
        None => apply_wanted_tick_period(period),
    }
}
