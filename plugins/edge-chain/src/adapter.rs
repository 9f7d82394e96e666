//! The proxy-wasm adapter of the composed module: one root and one stream context per VM and
//! stream, each calling the configured filters' own contexts in the edge's order. A filter
//! that pauses a request stops the chain there; when it resumes the request (a queued or
//! coalesced request released on its tick), the filters after it run before Envoy continues.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use edgewise_support::wasm::{install_panic_hook, log, Composed, COMPOSED};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::Chain;

const VERSION: &str = env!("CARGO_PKG_VERSION");

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ChainRoot::default()) });
}}

/// The filters' stream contexts of one request, and how far the request got through them.
struct Streams {
    filters: Vec<Box<dyn HttpContext>>,
    /// The last filter that saw the request headers.
    reached: Option<usize>,
    /// The filter that paused the request headers, until it resumes them.
    paused_at: Option<usize>,
    num_headers: usize,
    end_of_stream: bool,
}

/// The VM's state the hooks reach: the open streams (to continue a resumed request) and the
/// tick period each filter asked for.
#[derive(Default)]
struct Vm {
    streams: HashMap<u32, Weak<RefCell<Streams>>>,
    tick_periods: Vec<Duration>,
    /// The filter being called, so its tick requests are attributed to it.
    current: usize,
    /// The period the host ticks at now.
    ticking: Duration,
    /// Streams a filter resumed from inside one of the stream's own callbacks (a gRPC
    /// answer): run on when that callback returns.
    deferred: Vec<u32>,
}

thread_local! {
    static VM: RefCell<Vm> = RefCell::new(Vm::default());
}

fn set_current(index: usize) {
    VM.with(|vm| vm.borrow_mut().current = index);
}

/// A filter asked for ticks every `period`: the VM ticks at the shortest period asked for.
fn request_ticks(period: Duration) {
    let host_period = VM.with(|vm| {
        let mut vm = vm.borrow_mut();
        let current = vm.current;
        if let Some(slot) = vm.tick_periods.get_mut(current) {
            *slot = period;
        }
        let shortest = vm
            .tick_periods
            .iter()
            .copied()
            .filter(|p| !p.is_zero())
            .min()
            .unwrap_or(Duration::ZERO);
        (shortest != vm.ticking).then(|| {
            vm.ticking = shortest;
            shortest
        })
    });
    if let Some(period) = host_period {
        edgewise_support::wasm::apply_wanted_tick_period(period);
    }
}

/// Runs the request headers through the filters from `start`; Pause when one pauses or
/// answers (the rest wait for it to resume).
fn run_request_headers(streams: &mut Streams, start: usize) -> Action {
    let (num_headers, end_of_stream) = (streams.num_headers, streams.end_of_stream);
    for index in start..streams.filters.len() {
        set_current(index);
        streams.reached = Some(index);
        let Some(filter) = streams.filters.get_mut(index) else {
            break;
        };
        let action = filter.on_http_request_headers(num_headers, end_of_stream);
        if action != Action::Continue {
            streams.paused_at = Some(index);
            return action;
        }
    }
    streams.paused_at = None;
    Action::Continue
}

/// The resume hook: the filter that paused stream `context_id` let it go; the filters after
/// it see the request, then Envoy continues it unless one of them pauses it again.
fn resume(context_id: u32) {
    let streams = VM.with(|vm| vm.borrow().streams.get(&context_id).and_then(Weak::upgrade));
    let Some(streams) = streams else {
        let _ = hostcalls::resume_http_request();
        return;
    };
    let Ok(mut streams) = streams.try_borrow_mut() else {
        // Resumed from inside this stream's own callback: run on once it returns.
        VM.with(|vm| vm.borrow_mut().deferred.push(context_id));
        return;
    };
    // The resuming filter is still running (its tick): its later requests stay its own.
    let resuming = VM.with(|vm| vm.borrow().current);
    let next = streams.paused_at.map_or(streams.filters.len(), |at| at + 1);
    let action = run_request_headers(&mut streams, next);
    set_current(resuming);
    if action == Action::Continue {
        let _ = hostcalls::resume_http_request();
    }
}

#[derive(Default)]
struct ChainRoot {
    filters: Vec<Box<dyn RootContext>>,
    /// Which filter each of `filters` is.
    names: Vec<&'static str>,
}

impl ChainRoot {
    fn each(&mut self, mut call: impl FnMut(&mut Box<dyn RootContext>)) {
        for (index, filter) in self.filters.iter_mut().enumerate() {
            set_current(index);
            call(filter);
        }
    }
}

impl Context for ChainRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        // Only the filter that sent the callout knows its token; the others ignore it.
        self.each(|f| f.on_http_call_response(token_id, num_headers, body_size, num_trailers));
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        // The rate limiter's charges after responses (global rules), sent from its root.
        self.each(|f| f.on_grpc_call_response(token_id, status_code, response_size));
    }
}

impl RootContext for ChainRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        install_panic_hook("edge_chain", VERSION);
        COMPOSED.with(|c| {
            *c.borrow_mut() = Composed {
                configuration: None,
                resume: Some(Rc::new(resume)),
                tick: Some(Rc::new(request_ticks)),
            }
        });
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let Some(chain) = edgewise_support::wasm::load_config("edge_chain", Chain::from_json)
        else {
            return false;
        };
        // Reconfigured with the same filters: each keeps its root (and what it looks after —
        // waiting requests, queued refreshes) and configures again; otherwise new roots.
        let names: Vec<&'static str> = chain.sections.iter().map(|(n, _)| *n).collect();
        let reuse = names == self.names;
        let mut previous = std::mem::take(&mut self.filters).into_iter();
        // One tick period per filter, kept across a reconfiguration (a filter may ask for
        // ticks while it configures: requests it carried over still wait).
        VM.with(|vm| {
            vm.borrow_mut()
                .tick_periods
                .resize(chain.sections.len(), Duration::ZERO)
        });
        let mut filters: Vec<Box<dyn RootContext>> = Vec::new();
        for (index, (name, section)) in chain.sections.iter().enumerate() {
            let (mut filter, fresh) = match previous.next().filter(|_| reuse) {
                Some(filter) => (filter, false),
                None => (
                    match *name {
                        "rate_limit" => rate_limit::new_root(),
                        "response_cache" => response_cache::new_root(),
                        "weighted_router" => weighted_router::new_root(),
                        _ => circuit_breaker::new_root(),
                    },
                    true,
                ),
            };
            set_current(index);
            COMPOSED.with(|c| c.borrow_mut().configuration = Some(section.clone()));
            let configured = (!fresh || filter.on_vm_start(0)) && filter.on_configure(size);
            COMPOSED.with(|c| c.borrow_mut().configuration = None);
            if !configured {
                log(
                    LogLevel::Error,
                    &format!("edge_chain: the \"{name}\" section was refused (see above)"),
                );
                return false;
            }
            filters.push(filter);
        }
        self.names = names;
        // The panic hook is the chain's, whichever filter started last.
        install_panic_hook("edge_chain", VERSION);
        log(
            LogLevel::Info,
            &format!(
                "edge_chain {VERSION}: {}",
                chain
                    .sections
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        );
        self.filters = filters;
        true
    }

    fn on_tick(&mut self) {
        // Deferred metrics of every filter; a tick only for them stops here.
        if !edgewise_support::wasm::tick() {
            return;
        }
        for (index, filter) in self.filters.iter_mut().enumerate() {
            let ticking = VM.with(|vm| {
                vm.borrow()
                    .tick_periods
                    .get(index)
                    .is_some_and(|p| !p.is_zero())
            });
            if ticking {
                set_current(index);
                filter.on_tick();
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let filters: Vec<Box<dyn HttpContext>> = self
            .filters
            .iter()
            .enumerate()
            .filter_map(|(index, f)| {
                set_current(index);
                f.create_http_context(context_id)
            })
            .collect();
        let streams = Rc::new(RefCell::new(Streams {
            filters,
            reached: None,
            paused_at: None,
            num_headers: 0,
            end_of_stream: false,
        }));
        VM.with(|vm| {
            let mut vm = vm.borrow_mut();
            // Streams leave in on_done; sweep any that ended without it, so the map stays
            // as small as the number of open streams.
            if vm.streams.len() >= 1024 {
                vm.streams.retain(|_, s| s.strong_count() > 0);
            }
            vm.streams.insert(context_id, Rc::downgrade(&streams))
        });
        Some(Box::new(ChainStream {
            context_id,
            streams,
        }))
    }
}

struct ChainStream {
    context_id: u32,
    streams: Rc<RefCell<Streams>>,
}

impl ChainStream {
    /// Calls the filters that saw the request — last first on the response path (Envoy's
    /// encoder order), first first on the request path — until one does not continue.
    fn each_seen(
        &mut self,
        response_path: bool,
        mut call: impl FnMut(&mut Box<dyn HttpContext>) -> Action,
    ) -> Action {
        let Ok(mut streams) = self.streams.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(reached) = streams.reached else {
            return Action::Continue;
        };
        for step in 0..=reached {
            let index = if response_path { reached - step } else { step };
            set_current(index);
            let Some(filter) = streams.filters.get_mut(index) else {
                continue;
            };
            let action = call(filter);
            if action != Action::Continue {
                return action;
            }
        }
        Action::Continue
    }
}

impl Context for ChainStream {
    fn on_done(&mut self) -> bool {
        let _shared = SharedReads::begin();
        if let Ok(mut streams) = self.streams.try_borrow_mut() {
            let reached = streams.reached;
            for (index, filter) in streams.filters.iter_mut().enumerate() {
                if reached.is_some_and(|r| index <= r) {
                    set_current(index);
                    filter.on_done();
                }
            }
        }
        VM.with(|vm| vm.borrow_mut().streams.remove(&self.context_id));
        true
    }

    /// A gRPC answer to a call one of the filters made (the rate limiter's global rules):
    /// every filter that saw the request is told; each ignores tokens it does not own.
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Ok(mut streams) = self.streams.try_borrow_mut() {
            let Some(reached) = streams.reached else {
                return;
            };
            for index in 0..=reached {
                set_current(index);
                if let Some(filter) = streams.filters.get_mut(index) {
                    filter.on_grpc_call_response(token_id, status_code, response_size);
                }
            }
        }
        let resumed = VM.with(|vm| {
            let mut vm = vm.borrow_mut();
            let before = vm.deferred.len();
            vm.deferred.retain(|id| *id != self.context_id);
            vm.deferred.len() != before
        });
        if resumed {
            resume(self.context_id);
        }
    }
}

/// For the length of one stream callback, the filters share their reads of the clock and
/// of the request header map (`abi::begin_shared_reads`): one host call each instead of
/// one per filter.
struct SharedReads;

impl SharedReads {
    fn begin() -> SharedReads {
        edgewise_support::abi::begin_shared_reads();
        SharedReads
    }
}

impl Drop for SharedReads {
    fn drop(&mut self) {
        edgewise_support::abi::end_shared_reads();
    }
}

impl HttpContext for ChainStream {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        let _shared = SharedReads::begin();
        let Ok(mut streams) = self.streams.try_borrow_mut() else {
            return Action::Continue;
        };
        streams.num_headers = num_headers;
        streams.end_of_stream = end_of_stream;
        run_request_headers(&mut streams, 0)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let _shared = SharedReads::begin();
        self.each_seen(false, |f| f.on_http_request_body(body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, num_trailers: usize) -> Action {
        self.each_seen(false, |f| f.on_http_request_trailers(num_trailers))
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        let _shared = SharedReads::begin();
        self.each_seen(true, |f| {
            f.on_http_response_headers(num_headers, end_of_stream)
        })
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let _shared = SharedReads::begin();
        self.each_seen(true, |f| f.on_http_response_body(body_size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, num_trailers: usize) -> Action {
        self.each_seen(true, |f| f.on_http_response_trailers(num_trailers))
    }

    fn on_log(&mut self) {
        if let Ok(mut streams) = self.streams.try_borrow_mut() {
            let Some(reached) = streams.reached else {
                return;
            };
            for index in 0..=reached {
                set_current(index);
                if let Some(filter) = streams.filters.get_mut(index) {
                    filter.on_log();
                }
            }
        }
    }
}
