//! The root context: configuration, the tick (slow-call watch, active probes, the control service's forced states) and the callouts' answers.

use super::*;

pub(super) struct BreakerRoot {
    pub(super) shared: Option<Rc<Shared>>,
    /// Polls of the control service's forced states in flight (by callout token).
    pub(super) control_polls: HashMap<u32, ()>,
}

impl Context for BreakerRoot {
    /// An active probe's answer (other filters' callouts, in edge_chain, are not ours).
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if self.control_polls.remove(&token_id).is_some() {
            control_answer(&shared, num_headers, body_size);
            return;
        }
        let Some((identity, episode)) = shared.probes_sent.borrow_mut().remove(&token_id) else {
            return;
        };
        let status = if num_headers == 0 {
            None
        } else {
            abi::get_map_value(MapType::HttpCallResponseHeaders as u32, ":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
        };
        let now = now_nanos().unwrap_or(0);
        record_probe(&shared, &identity, episode, status, now);
    }
}

impl BreakerRoot {
    /// Counts watched requests past their slow-call threshold as slow calls now (each once),
    /// and forgets those whose streams are done.
    fn watch_slow(&self, shared: &Shared) {
        let Some(now) = now_nanos() else { return };
        let mut watched = shared.watched.borrow_mut();
        watched.retain(|w| !w.done.get());
        for w in watched.iter() {
            let started = w.started.get();
            let params = shared.config.params(&w.identity);
            let Some(slow_ns) = params.slow_call_ns else {
                continue;
            };
            if w.counted.get() || started == 0 || now.saturating_sub(started) < slow_ns {
                continue;
            }
            w.counted.set(true);
            let outcome = crate::breaker::Outcome {
                failed: false,
                slow: true,
            };
            match table::record(
                &shared.store,
                w.identity.as_bytes(),
                shared.config.slots,
                params,
                outcome,
                w.probe,
                now,
            ) {
                Ok(Some(transition)) => report(shared, &w.identity, transition),
                Ok(None) => {}
                Err(_) => shared.errors.increment(1),
            }
        }
        if watched.is_empty() && shared.watching.replace(false) {
            drop(watched);
            schedule_ticks(shared);
        }
    }

    /// Sends the active probes that are due: for each upstream under probing, the breaker's
    /// own probe place (won by one worker per probe, with CAS) and a `GET path` to the
    /// upstream's cluster from this root context (a stream's callout would end with it).
    fn send_probes(&self, shared: &Shared) {
        let Some(now) = now_nanos() else { return };
        let identities: Vec<String> = shared.probing.borrow().iter().cloned().collect();
        for identity in identities {
            let in_flight = shared
                .probes_sent
                .borrow()
                .values()
                .any(|(i, _)| *i == identity);
            if in_flight {
                continue;
            }
            let params = shared.config.params(&identity);
            let Some(active) = params.active_probe.as_ref() else {
                shared.probing.borrow_mut().remove(&identity);
                continue;
            };
            let taken = table::take_active_probe(
                &shared.store,
                identity.as_bytes(),
                shared.config.slots,
                params,
                now,
            );
            let episode = match taken {
                Ok(Some((episode, transition, state))) => {
                    report(shared, &identity, transition);
                    if state == BreakerState::Closed {
                        shared.probing.borrow_mut().remove(&identity);
                        continue;
                    }
                    episode
                }
                // No breaker any more (its slot went to another upstream): nothing to probe.
                Ok(None) => {
                    shared.probing.borrow_mut().remove(&identity);
                    continue;
                }
                Err(_) => {
                    shared.errors.increment(1);
                    continue;
                }
            };
            let Some(episode) = episode else { continue };
            let headers = vec![
                (":method", "GET"),
                (":path", active.path.as_str()),
                (":authority", identity.as_str()),
                ("user-agent", "edgewise-circuit-breaker-probe"),
            ];
            let timeout = std::time::Duration::from_nanos(active.timeout_ns);
            match self.dispatch_http_call(&identity, headers, None, vec![], timeout) {
                Ok(token) => {
                    shared.metrics(&identity).probes.increment(1);
                    shared
                        .probes_sent
                        .borrow_mut()
                        .insert(token, (identity.clone(), episode));
                }
                // Envoy refused the callout (no such cluster): an unhealthy answer.
                Err(_) => {
                    shared.errors.increment(1);
                    record_probe(shared, &identity, episode, None, now);
                }
            }
        }
        if shared.probing.borrow().is_empty() {
            schedule_ticks(shared);
        }
    }
}

impl BreakerRoot {
    /// Operator controls: when this worker wins the poll lease, asks the control service for
    /// the forced breaker states (one poll per Envoy per period, from the root context).
    fn poll_control(&mut self, shared: &Shared) {
        let Some(control) = shared.config.control.as_ref() else {
            return;
        };
        if !self.control_polls.is_empty() {
            return;
        }
        let now_ms = now_nanos().unwrap_or(0) / 1_000_000;
        if !edgewise_support::store::take_lease(
            &shared.store,
            crate::control::LEASE_KEY,
            now_ms,
            control.poll_ms,
        ) {
            return;
        }
        match edgewise_support::wasm::poll_control_service(
            self,
            &control.cluster,
            &control.path,
            &control.token,
            std::time::Duration::from_millis(control.timeout_ms),
        ) {
            Some(token) => {
                self.control_polls.insert(token, ());
            }
            None => shared.errors.increment(1),
        }
    }
}

/// The control service's forced states: each change applied to the upstream's breaker in
/// shared data (every worker sees it at once), logged with who set it, shown in the
/// upstream's `forced` gauge. A failed poll changes nothing (and counts in `errors`).
pub(super) fn control_answer(shared: &Shared, num_headers: usize, body_size: usize) {
    let body = edgewise_support::wasm::http_call_ok_body(num_headers, body_size, 1 << 20);
    let Some(listed) = body.and_then(|b| serde_json::from_slice::<crate::control::Listed>(&b).ok())
    else {
        shared.errors.increment(1);
        return;
    };
    let desired = crate::control::desired(&listed);
    let applied = crate::control::load_applied(&shared.store);
    let now = now_nanos().unwrap_or(0);
    let mut all_applied = true;
    for (upstream, forced, by) in crate::control::changes(&applied, &desired) {
        let params = shared.config.params(&upstream);
        match table::force(
            &shared.store,
            upstream.as_bytes(),
            shared.config.slots,
            params,
            forced,
            now,
        ) {
            Ok(true) => {
                let state = ["automatic", "forced open", "forced closed"]
                    .get(forced as usize)
                    .unwrap_or(&"?");
                log(
                    LogLevel::Warn,
                    &format!("circuit_breaker: {upstream} {state} by {by}"),
                );
                if let Some(gauge) = &shared.metrics(&upstream).forced {
                    gauge.set(forced as u64);
                }
            }
            _ => {
                all_applied = false;
                shared.errors.increment(1);
            }
        }
    }
    // Applied states are remembered only when all went through: a failure retries next poll.
    if all_applied {
        crate::control::save_applied(&shared.store, &desired);
    }
}

/// Records an active probe's answer (`None`: no answer — reset, timeout, refused) under its
/// episode: healthy statuses count as a success, anything else as a failure.
pub(super) fn record_probe(
    shared: &Shared,
    identity: &str,
    episode: u32,
    status: Option<u16>,
    now: u64,
) {
    let params = shared.config.params(identity);
    let healthy = params
        .active_probe
        .as_ref()
        .zip(status)
        .is_some_and(|(active, status)| active.healthy(status));
    let outcome = crate::breaker::Outcome {
        failed: !healthy,
        slow: false,
    };
    log(
        LogLevel::Info,
        &format!(
            "circuit_breaker: active probe of {identity}: {} ({})",
            status.map_or("no answer".to_string(), |s| s.to_string()),
            if healthy { "healthy" } else { "unhealthy" }
        ),
    );
    match table::record(
        &shared.store,
        identity.as_bytes(),
        shared.config.slots,
        params,
        outcome,
        Some(episode),
        now,
    ) {
        Ok(Some(transition)) => report(shared, identity, transition),
        Ok(None) => {}
        Err(_) => shared.errors.increment(1),
    }
}

impl RootContext for BreakerRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        install_panic_hook("circuit_breaker", VERSION);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        // Before the configuration compiles: it may hash (breaker identities, routes).
        edgewise_support::wasm::init_hash_seed();
        let Some(config) = load_config("circuit_breaker", Config::from_json) else {
            return false;
        };
        log(
            LogLevel::Info,
            &format!(
                "circuit_breaker {VERSION}: upstream by {:?}, {} override(s)",
                config.upstream,
                config.overrides.len()
            ),
        );
        // The watch looks every quarter of the shortest slow-call threshold (10 ms – 1 s).
        let watch_period = std::iter::once(&config.defaults)
            .chain(config.overrides.values())
            .filter_map(|p| p.slow_call_ns)
            .min()
            .map(|ns| std::time::Duration::from_nanos((ns / 4).clamp(10_000_000, 1_000_000_000)));
        let flush = config.metrics_flush;
        // A reconfiguration keeps the upstreams under probing and the probes in flight.
        let (probing, probes_sent) = match self.shared.take() {
            Some(old) => (old.probing.take(), old.probes_sent.take()),
            None => (BTreeSet::new(), HashMap::new()),
        };
        self.shared = Some(Rc::new(Shared {
            probing: RefCell::new(probing),
            probes_sent: RefCell::new(probes_sent),
            store: SharedData::with_prefix(&config.key_prefix),
            watched: RefCell::new(Vec::new()),
            watch_period,
            watching: Cell::new(false),
            config,
            upstreams: RefCell::new(HashMap::new()),
            unlisted: Rc::new(upstream_metrics(crate::config::UNLISTED, false, flush)),
            untracked: Metric::counter_flushed_every(
                &metric_name(&["circuit_breaker", "untracked"]),
                flush,
            ),
            errors: Metric::counter_flushed_every(
                &metric_name(&["circuit_breaker", "errors"]),
                flush,
            ),
        }));
        // Operator controls poll from the start; probing carried over keeps its ticks.
        if let Some(shared) = &self.shared {
            schedule_ticks(shared);
        }
        true
    }

    fn on_tick(&mut self) {
        if !edgewise_support::wasm::tick() {
            return; // a tick only for the deferred metrics
        }
        if let Some(shared) = self.shared.clone() {
            self.watch_slow(&shared);
            self.send_probes(&shared);
            self.poll_control(&shared);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BreakerStream {
            shared: self.shared.clone(),
            identity: None,
            started: 0,
            probe: None,
            replied: false,
            recorded: false,
            watch: None,
            bulkhead: None,
        }))
    }
}
