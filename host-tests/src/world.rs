//! The `World`: everything Envoy shares between worker VMs — shared data, queues, metrics,
//! logs, the virtual clock and pending callouts. Tests create one per scenario; no globals.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::abi::{LogLevel, MetricKind, Status};
use crate::failure::VmFailure;
use crate::headers::Headers;
use crate::vm::{PluginOptions, Vm, VmInner, WasmModule};

/// 2026-01-01T00:00:00Z: where every world's virtual clock starts.
pub const EPOCH_NANOS: u64 = 1_767_225_600_000_000_000;

/// One line a module logged (through `proxy_log` or WASI stdout/stderr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Index of the VM (simulated worker) that logged it.
    pub vm: usize,
    pub level: LogLevel,
    pub message: String,
}

/// An outgoing `proxy_http_call` waiting for the test to answer it.
#[derive(Clone, Debug)]
pub struct HttpCall {
    pub id: u64,
    pub vm: usize,
    pub upstream: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout: Duration,
    pub(crate) token: u32,
    pub(crate) context_id: u32,
    pub(crate) deadline_nanos: u64,
}

impl HttpCall {
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers.get(key)
    }
}

/// How a test answers a pending callout.
#[derive(Clone, Debug)]
pub enum CallOutcome {
    Response {
        headers: Headers,
        body: Vec<u8>,
        trailers: Headers,
    },
    /// The upstream stream was reset: the module sees zero headers and `get_status` = reset.
    Reset,
}

/// A `proxy_grpc_call` or `proxy_grpc_stream` waiting for the test.
#[derive(Clone, Debug)]
pub struct GrpcCall {
    pub id: u64,
    pub vm: usize,
    pub service: Vec<u8>,
    pub service_name: String,
    pub method: String,
    pub initial_metadata: Headers,
    /// Messages the module sent (one for a unary call; any number on a stream).
    pub messages: Vec<Vec<u8>>,
    pub is_stream: bool,
    pub closed_by_module: bool,
    pub cancelled: bool,
    pub(crate) token: u32,
    pub(crate) context_id: u32,
}

/// What the test sends back on a gRPC call or stream.
#[derive(Clone, Debug)]
pub enum GrpcEvent {
    InitialMetadata(Headers),
    Message(Vec<u8>),
    TrailingMetadata(Headers),
    Close { status: u32, message: String },
}

#[derive(Clone, Debug)]
pub(crate) struct SharedValue {
    pub value: Vec<u8>,
    pub cas: u32,
}

pub(crate) struct Queue {
    pub token: u32,
    pub items: VecDeque<Vec<u8>>,
    pub owner_vm: usize,
    pub owner_context: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MetricState {
    pub kind: MetricKind,
    pub value: i64,
    pub samples: Vec<u64>,
}

pub(crate) enum Posted {
    QueueReady {
        vm: usize,
        context_id: u32,
        token: u32,
    },
}

pub(crate) struct WorldState {
    pub now_nanos: u64,
    pub monotonic_base: u64,
    pub shared_data: HashMap<(String, String), SharedValue>,
    pub next_cas: u32,
    /// Keys whose next conditional sets lose a race against a simulated concurrent writer.
    pub interference: HashMap<(String, String), u32>,
    pub queues: HashMap<(String, String), Queue>,
    pub next_queue_token: u32,
    pub posted: VecDeque<Posted>,
    pub metrics: BTreeMap<String, MetricState>,
    pub logs: Vec<LogEntry>,
    pub log_level: LogLevel,
    pub clusters: HashSet<String>,
    pub http_calls: Vec<HttpCall>,
    pub grpc_calls: Vec<GrpcCall>,
    pub next_call_id: u64,
    pub ticks: HashMap<usize, (u64, u64)>,
    pub vms: Vec<Weak<Mutex<VmInner>>>,
    pub rng_state: u64,
    pub foreign_functions: HashMap<String, ForeignFunction>,
    /// Injected host-call failures: ABI function name → (status code, calls left to fail).
    pub faults: HashMap<String, (i32, u32)>,
}

/// A test-registered function reachable through `proxy_call_foreign_function`.
pub(crate) type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;

impl WorldState {
    pub fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        // The CAS counter is global to the process, starts at 1 and skips 0 on wrap.
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    pub fn random_u64(&mut self) -> u64 {
        // splitmix64: deterministic per world, so runs repeat exactly.
        self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The shared universe of one simulated Envoy process. Cheap to clone (a handle).
#[derive(Clone)]
pub struct World {
    pub(crate) state: Arc<Mutex<WorldState>>,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    pub fn new() -> World {
        World {
            state: Arc::new(Mutex::new(WorldState {
                now_nanos: EPOCH_NANOS,
                monotonic_base: EPOCH_NANOS - 1_000_000_000_000,
                shared_data: HashMap::new(),
                next_cas: 1,
                interference: HashMap::new(),
                queues: HashMap::new(),
                next_queue_token: 1,
                posted: VecDeque::new(),
                metrics: BTreeMap::new(),
                logs: Vec::new(),
                log_level: LogLevel::Info,
                clusters: HashSet::new(),
                http_calls: Vec::new(),
                grpc_calls: Vec::new(),
                next_call_id: 1,
                ticks: HashMap::new(),
                vms: Vec::new(),
                rng_state: 0x5EED,
                foreign_functions: HashMap::new(),
                faults: HashMap::new(),
            })),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, WorldState> {
        // A test that panicked while holding the lock poisons it; the state is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts one VM (one simulated Envoy worker) running the module with these options:
    /// `_initialize`, then the root context's create, `on_vm_start` and `on_configure`.
    pub fn start_vm(&self, module: &WasmModule, options: &PluginOptions) -> Result<Vm, VmFailure> {
        Vm::start(self, module, options)
    }

    /// Starts `workers` VMs of the same plugin, as Envoy does with one VM per worker thread.
    pub fn start_vms(
        &self,
        module: &WasmModule,
        options: &PluginOptions,
        workers: usize,
    ) -> Result<Vec<Vm>, VmFailure> {
        (0..workers)
            .map(|_| self.start_vm(module, options))
            .collect()
    }

    /// Declares an upstream cluster that `proxy_http_call` / `proxy_grpc_call` may target.
    pub fn add_cluster(&self, name: &str) {
        self.lock().clusters.insert(name.to_string());
    }

    /// Sets the level below which `proxy_log` lines are dropped (Envoy's wasm log level).
    pub fn set_log_level(&self, level: LogLevel) {
        self.lock().log_level = level;
    }

    /// Registers a foreign function callable through `proxy_call_foreign_function`.
    pub fn register_foreign_function(
        &self,
        name: &str,
        function: impl Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync + 'static,
    ) {
        self.lock()
            .foreign_functions
            .insert(name.to_string(), Arc::new(function));
    }

    /// The virtual wall clock, in nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.lock().now_nanos
    }

    /// Time elapsed on the virtual clock since the world began.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.lock().now_nanos - EPOCH_NANOS)
    }

    /// Advances the virtual clock by `by`, in time order: firing each VM's ticks when due,
    /// timing out callouts whose deadline passes (as a 504, the way Envoy's async client
    /// answers), and delivering posted queue notifications.
    pub fn advance(&self, by: Duration) -> Result<(), VmFailure> {
        let target = self.lock().now_nanos + by.as_nanos() as u64;
        loop {
            self.deliver_posted()?;
            let next = {
                let state = self.lock();
                let next_tick = state
                    .ticks
                    .iter()
                    .map(|(vm, (_, at))| (*at, 0u8, *vm as u64))
                    .min();
                let next_timeout = state
                    .http_calls
                    .iter()
                    .map(|c| (c.deadline_nanos, 1u8, c.id))
                    .min();
                match (next_tick, next_timeout) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            match next {
                Some((at, kind, which)) if at <= target => {
                    {
                        let mut state = self.lock();
                        state.now_nanos = state.now_nanos.max(at);
                    }
                    if kind == 0 {
                        let vm = which as usize;
                        {
                            let mut state = self.lock();
                            if let Some((period, next_at)) = state.ticks.get_mut(&vm) {
                                *next_at += *period;
                            }
                        }
                        if let Some(vm) = self.vm_by_index(vm) {
                            vm.fire_tick()?;
                        }
                    } else {
                        let call = self.take_http_call(which);
                        if let Some(call) = call {
                            let headers = Headers::from([
                                (":status", "504"),
                                ("content-length", "24"),
                                ("content-type", "text/plain"),
                            ]);
                            self.deliver_http_call(
                                call,
                                CallOutcome::Response {
                                    headers,
                                    body: b"upstream request timeout".to_vec(),
                                    trailers: Headers::new(),
                                },
                            )?;
                        }
                    }
                }
                _ => break,
            }
        }
        self.lock().now_nanos = target;
        self.deliver_posted()
    }

    /// Delivers everything posted for later (shared-queue notifications), as each worker's
    /// event loop would once its current callback returned.
    pub fn deliver_posted(&self) -> Result<(), VmFailure> {
        loop {
            let posted = self.lock().posted.pop_front();
            let Some(Posted::QueueReady {
                vm,
                context_id,
                token,
            }) = posted
            else {
                return Ok(());
            };
            if let Some(vm) = self.vm_by_index(vm) {
                vm.on_queue_ready(context_id, token)?;
            }
        }
    }

    pub(crate) fn vm_by_index(&self, index: usize) -> Option<Vm> {
        let weak = self.lock().vms.get(index).cloned()?;
        weak.upgrade()
            .map(|inner| Vm::from_inner(inner, self.clone()))
    }

    /// Every line logged so far, in order, from every VM.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.lock().logs.clone()
    }

    /// Logged messages containing `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<LogEntry> {
        self.lock()
            .logs
            .iter()
            .filter(|l| l.message.contains(needle))
            .cloned()
            .collect()
    }

    /// A counter's or gauge's current value by its defined name (without Envoy's
    /// `wasmcustom.` prefix); `None` if no VM defined it.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.lock().metrics.get(name).map(|m| m.value)
    }

    /// Values recorded into a histogram.
    pub fn histogram_samples(&self, name: &str) -> Vec<u64> {
        self.lock()
            .metrics
            .get(name)
            .map(|m| m.samples.clone())
            .unwrap_or_default()
    }

    /// Every defined metric and its value, sorted by name.
    pub fn metrics(&self) -> Vec<(String, i64)> {
        self.lock()
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), v.value))
            .collect()
    }

    /// A shared-data value and its CAS, as the given vm_id sees it.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock()
            .shared_data
            .get(&(vm_id.to_string(), key.to_string()))
            .map(|v| (v.value.clone(), v.cas))
    }

    /// Writes shared data as another plugin on the same vm_id would (unconditional set).
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8]) {
        let mut state = self.lock();
        let cas = state.next_cas();
        state.shared_data.insert(
            (vm_id.to_string(), key.to_string()),
            SharedValue {
                value: value.to_vec(),
                cas,
            },
        );
    }

    /// The shared-data keys held for a vm_id, sorted.
    pub fn shared_data_keys(&self, vm_id: &str) -> Vec<String> {
        let state = self.lock();
        let mut keys: Vec<String> = state
            .shared_data
            .keys()
            .filter(|(id, _)| id == vm_id)
            .map(|(_, key)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Number of shared-data keys held for a vm_id, and their total bytes (keys + values).
    pub fn shared_data_footprint(&self, vm_id: &str) -> (usize, usize) {
        let state = self.lock();
        state
            .shared_data
            .iter()
            .filter(|((id, _), _)| id == vm_id)
            .fold((0, 0), |(n, bytes), ((_, key), v)| {
                (n + 1, bytes + key.len() + v.value.len())
            })
    }

    /// Makes the next `times` CAS-conditional sets of `key` lose a race: just before each
    /// one, a simulated concurrent worker writes the key, so the set gets `CasMismatch`
    /// exactly as it would under real contention.
    pub fn interfere_with_next_sets(&self, vm_id: &str, key: &str, times: u32) {
        self.lock()
            .interference
            .insert((vm_id.to_string(), key.to_string()), times);
    }

    /// Makes the next `times` calls of the ABI function `name` (e.g.
    /// "proxy_get_shared_data") from any VM fail with `status`, as Envoy can (u32::MAX
    /// times: until `clear_host_call_faults`). The call has no other effect.
    pub fn fail_host_call(&self, name: &str, status: Status, times: u32) {
        self.lock()
            .faults
            .insert(name.to_string(), (status.code(), times));
    }

    pub fn clear_host_call_faults(&self) {
        self.lock().faults.clear();
    }

    /// Steps the wall clock back by `by` (NTP correcting a fast clock): no tick fires, and
    /// the monotonic clock (WASI) does not move.
    pub fn step_clock_back(&self, by: Duration) {
        let mut state = self.lock();
        let by = (by.as_nanos() as u64).min(state.now_nanos);
        state.now_nanos -= by;
        state.monotonic_base -= by.min(state.monotonic_base);
    }

    /// Callouts dispatched and not yet answered, oldest first.
    pub fn pending_http_calls(&self) -> Vec<HttpCall> {
        self.lock().http_calls.clone()
    }

    fn take_http_call(&self, id: u64) -> Option<HttpCall> {
        let mut state = self.lock();
        let index = state.http_calls.iter().position(|c| c.id == id)?;
        Some(state.http_calls.remove(index))
    }

    /// Answers a pending callout with a response; the module's `on_http_call_response` runs.
    pub fn respond_http_call(
        &self,
        call_id: u64,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), VmFailure> {
        let mut all = Headers::from([(":status", status.to_string())]);
        for (k, v) in headers {
            all.add(k, v);
        }
        let call = self
            .take_http_call(call_id)
            .ok_or_else(|| VmFailure::usage(format!("no pending http call {call_id}")))?;
        self.deliver_http_call(
            call,
            CallOutcome::Response {
                headers: all,
                body: body.to_vec(),
                trailers: Headers::new(),
            },
        )
    }

    /// Resets a pending callout (upstream reset / connection failure).
    pub fn reset_http_call(&self, call_id: u64) -> Result<(), VmFailure> {
        let call = self
            .take_http_call(call_id)
            .ok_or_else(|| VmFailure::usage(format!("no pending http call {call_id}")))?;
        self.deliver_http_call(call, CallOutcome::Reset)
    }

    fn deliver_http_call(&self, call: HttpCall, outcome: CallOutcome) -> Result<(), VmFailure> {
        match self.vm_by_index(call.vm) {
            Some(vm) => vm.on_http_call_response(call.context_id, call.token, outcome),
            None => Ok(()),
        }
    }

    /// gRPC calls and streams opened and not finished.
    pub fn pending_grpc_calls(&self) -> Vec<GrpcCall> {
        self.lock().grpc_calls.clone()
    }

    /// Sends an event to the module on a pending gRPC call or stream. A `Close` ends it.
    pub fn grpc_event(&self, call_id: u64, event: GrpcEvent) -> Result<(), VmFailure> {
        let call = {
            let mut state = self.lock();
            let index = state
                .grpc_calls
                .iter()
                .position(|c| c.id == call_id)
                .ok_or_else(|| VmFailure::usage(format!("no pending grpc call {call_id}")))?;
            if matches!(event, GrpcEvent::Close { .. }) {
                state.grpc_calls.remove(index)
            } else {
                state.grpc_calls[index].clone()
            }
        };
        match self.vm_by_index(call.vm) {
            Some(vm) => vm.on_grpc_event(call.context_id, call.token, event),
            None => Ok(()),
        }
    }
}
