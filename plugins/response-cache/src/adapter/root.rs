//! The root context: configuration, the tick (waiters, background refreshes, fleet purge polls) and the callouts' answers.

use super::*;

pub(super) struct CacheRoot {
    pub(super) shared: Option<Rc<Shared>>,
    /// Refreshes sent, by callout token.
    pub(super) in_flight: HashMap<u32, Refresh>,
    /// Fleet purge polls sent, by callout token: the cursor each asked after.
    pub(super) polls: HashMap<u32, Option<String>>,
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
        let mut header = |name: &str| request.field_combined(name);
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
        // Counters are flushed to the host every `metrics_flush` (0: at once).
        let counter = |what: &str| Metric::counter_flushed_every(&m(what), config.metrics_flush);
        let metrics = Metrics {
            hits: counter("hits"),
            misses: counter("misses"),
            stored: counter("stored"),
            evicted: counter("evicted"),
            not_stored: counter("not_stored"),
            invalidated: counter("invalidated"),
            purged: counter("purged"),
            stale_served: counter("stale_served"),
            revalidated: counter("revalidated"),
            coalesced: counter("coalesced"),
            refreshed: counter("refreshed"),
            refresh_failed: counter("refresh_failed"),
            bytes: Metric::gauge(&m("bytes_in_use")),
            abandoned: counter("store_abandoned"),
            fleet_purges: counter("fleet_purges"),
            fleet_polls: counter("fleet_polls"),
            fleet_poll_failed: counter("fleet_poll_failed"),
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
