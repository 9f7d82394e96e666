//! The stream context: admission (or the fallback), the upstream's outcome recorded, slow calls watched, probe places given back.

use super::*;

pub(super) struct BreakerStream {
    pub(super) shared: Option<Rc<Shared>>,
    pub(super) identity: Option<String>,
    pub(super) started: u64,
    pub(super) probe: Option<u32>,
    pub(super) replied: bool,
    pub(super) recorded: bool,
    /// (started, done, counted) shared with the root's slow-call watch.
    pub(super) watch: Option<WatchCells>,
    /// Counted in flight by the upstream's bulkhead: (key, identity hash, taken at).
    pub(super) bulkhead: Option<(String, u64, u64)>,
}

/// A watched request's cells: when it ended, whether it is done, whether it was counted.
pub(super) type WatchCells = (Rc<Cell<u64>>, Rc<Cell<bool>>, Rc<Cell<bool>>);

impl BreakerStream {
    /// Puts an admitted request under the slow-call watch (when slow calls are configured).
    fn watch(&mut self, shared: &Shared, identity: &str) {
        if shared.watch_period.is_none() {
            return;
        }
        let cells = (
            Rc::new(Cell::new(self.started)),
            Rc::new(Cell::new(false)),
            Rc::new(Cell::new(false)),
        );
        shared.watched.borrow_mut().push(Watched {
            identity: identity.to_string(),
            probe: self.probe,
            started: cells.0.clone(),
            done: cells.1.clone(),
            counted: cells.2.clone(),
        });
        self.watch = Some(cells);
        if !shared.watching.replace(true) {
            schedule_ticks(shared);
        }
    }

    /// Counted as slow by the watch already.
    fn counted_early(&self) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|(_, _, counted)| counted.get())
    }

    fn unwatch(&self) {
        if let Some((_, done, _)) = &self.watch {
            done.set(true);
        }
    }

    /// Answers with the fallback; `circuit` names why (`open`, `half-open`, `full`).
    fn reject(&mut self, shared: &Shared, circuit: &str) -> Action {
        let fallback = &shared.config.fallback;
        let mut headers: Vec<(&str, &str)> = fallback
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.push(("x-edgewise-circuit", circuit));
        self.replied = true;
        if !abi::send_local_response(fallback.status, &headers, fallback.body.as_bytes()) {
            return Action::Continue;
        }
        Action::Pause
    }
}

/// Gives back the half-open probe place of `episode` (its request will not be answered by
/// the upstream): the next request can probe at once.
pub(super) fn give_back_probe(shared: &Shared, identity: &str, episode: u32, now: u64) {
    let params = shared.config.params(identity);
    let _ = table::abandon_probe(
        &shared.store,
        identity.as_bytes(),
        shared.config.slots,
        params,
        episode,
        now,
    );
}

pub(super) fn report(shared: &Shared, identity: &str, transition: Transition) {
    if transition == Transition::None {
        return; // the common case: no stats touched, none defined
    }
    let metrics = shared.metrics(identity);
    let set_state = |state: BreakerState| {
        if let Some(gauge) = &metrics.state {
            gauge.set(state.code() as u64);
        }
    };
    if matches!(
        transition,
        Transition::Opened { .. } | Transition::Reopened { .. }
    ) {
        probe_later(shared, identity);
    }
    match transition {
        Transition::Opened { for_ns, reason } => {
            metrics.opened.increment(1);
            set_state(BreakerState::Open);
            log(
                LogLevel::Warn,
                &format!(
                    "circuit_breaker: {identity} opened for {}ms ({reason:?})",
                    for_ns / 1_000_000
                ),
            );
        }
        Transition::Reopened { for_ns } => {
            metrics.opened.increment(1);
            set_state(BreakerState::Open);
            log(
                LogLevel::Warn,
                &format!(
                    "circuit_breaker: {identity} failed a half-open probe, open again for {}ms",
                    for_ns / 1_000_000
                ),
            );
        }
        Transition::HalfOpened => {
            set_state(BreakerState::HalfOpen);
            log(
                LogLevel::Info,
                &format!("circuit_breaker: {identity} half-open, probing"),
            );
        }
        Transition::Closed => {
            set_state(BreakerState::Closed);
            log(
                LogLevel::Info,
                &format!("circuit_breaker: {identity} closed after successful probes"),
            );
        }
        Transition::None => {}
    }
}

impl Context for BreakerStream {
    fn on_done(&mut self) -> bool {
        self.unwatch();
        // Stream end or reset: its place in the bulkhead is free again.
        if let (Some(shared), Some((key, hash, taken_at))) = (&self.shared, self.bulkhead.take()) {
            let now = now_nanos().unwrap_or(taken_at);
            let _ = bulkhead::release(&shared.store, &key, hash, taken_at, now);
        }
        // A probe that ended without a response gives its place back, so half-open cannot
        // stall on clients that went away.
        if let (Some(shared), Some(identity), Some(episode), false) = (
            &self.shared,
            &self.identity,
            self.probe,
            self.recorded || self.counted_early(),
        ) {
            if let Some(now) = now_nanos() {
                give_back_probe(shared, identity, episode, now);
            }
        }
        true
    }
}

impl HttpContext for BreakerStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let mut request = RequestHeaders::default();
        let identity = match &shared.config.upstream {
            UpstreamKey::Route => edgewise_support::wasm::property(&["xds", "route_name"]),
            UpstreamKey::Host => request.header(":authority").map(|a| host_only(&a)),
            UpstreamKey::Header(name) => request.header(name),
        };
        // No identity (unnamed route, missing header): no breaker applies.
        let Some(identity) = identity
            .filter(|i| !i.is_empty())
            .map(|i| String::from_utf8_lossy(&i).into_owned())
        else {
            return Action::Continue;
        };
        let Some(now) = now_nanos() else {
            return Action::Continue;
        };
        let params = shared.config.params(&identity);
        let (admission, slot_key) = match table::admit(
            &shared.store,
            identity.as_bytes(),
            shared.config.slots,
            params,
            now,
        ) {
            Ok(Some((admission, transition, slot_key))) => {
                report(&shared, &identity, transition);
                (admission, slot_key)
            }
            Ok(None) => {
                shared.untracked.increment(1);
                return Action::Continue;
            }
            Err(_) => {
                // Fail open: a broken breaker must not take traffic down.
                shared.errors.increment(1);
                return Action::Continue;
            }
        };
        // Slow-call time runs from the end of the request (the upstream's time to answer),
        // so a client trickling its body cannot make a healthy upstream look slow.
        self.started = if end_of_stream { now } else { 0 };
        // The bulkhead bounds what an admitted request may add to the upstream's load.
        if let (Some(max), Admission::Pass | Admission::Probe { .. }) =
            (params.max_in_flight, admission)
        {
            let key = bulkhead_key(&slot_key);
            let hash = identity_hash(identity.as_bytes());
            match bulkhead::acquire(&shared.store, &key, hash, max, now) {
                Ok(Acquired::Admitted { taken_at }) => self.bulkhead = Some((key, hash, taken_at)),
                Ok(Acquired::Full { .. }) => {
                    if let Admission::Probe { episode } = admission {
                        give_back_probe(&shared, &identity, episode, now);
                    }
                    shared.metrics(&identity).bulkhead_rejected.increment(1);
                    return self.reject(&shared, "full");
                }
                // Fail open, as for the breaker itself.
                Err(_) => shared.errors.increment(1),
            }
        }
        match admission {
            Admission::Pass => {
                self.watch(&shared, &identity);
                self.identity = Some(identity);
                Action::Continue
            }
            Admission::Probe { episode } => {
                shared.metrics(&identity).probes.increment(1);
                self.probe = Some(episode);
                self.watch(&shared, &identity);
                self.identity = Some(identity);
                Action::Continue
            }
            Admission::Reject { state } => {
                probe_later(&shared, &identity);
                shared.metrics(&identity).rejected.increment(1);
                self.reject(&shared, state.name())
            }
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream && self.identity.is_some() && self.started == 0 {
            self.started = now_nanos().unwrap_or(0);
            if let Some((started, _, _)) = &self.watch {
                started.set(self.started);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.replied || self.recorded {
            return Action::Continue;
        }
        let (Some(shared), Some(identity)) = (self.shared.clone(), self.identity.clone()) else {
            return Action::Continue;
        };
        self.recorded = true;
        self.unwatch();
        let Some(now) = now_nanos() else {
            return Action::Continue;
        };
        let status = abi::get_map_value(MapType::HttpResponseHeaders as u32, ":status")
            .and_then(|s| {
                std::str::from_utf8(&s)
                    .ok()
                    .and_then(|s| s.parse::<u16>().ok())
            })
            .filter(|code| (100..=599).contains(code));
        let params = shared.config.params(&identity);
        // Envoy's response details only matter for a 5xx the status list does not already
        // count: read them (one host call) only then.
        let needs_details = params.local_failures
            && status.is_some_and(|code| code >= 500 && !params.counts_status(code));
        let details = if needs_details {
            edgewise_support::wasm::property(&["response", "code_details"])
        } else {
            None
        };
        let outcome = crate::classify(
            params,
            status,
            details.as_deref(),
            if self.started == 0 {
                0 // answered before the request ended: no upstream time to judge
            } else {
                now.saturating_sub(self.started)
            },
        );
        let recorded = if !self.counted_early() {
            table::record(
                &shared.store,
                identity.as_bytes(),
                shared.config.slots,
                params,
                outcome,
                self.probe,
                now,
            )
        } else if outcome.failed {
            // Counted as slow while it hung; ending in a failure (e.g. the route timeout)
            // makes it a failure too, not another call.
            table::record_late_failure(
                &shared.store,
                identity.as_bytes(),
                shared.config.slots,
                params,
                now,
            )
        } else {
            Ok(None)
        };
        match recorded {
            Ok(Some(transition)) => report(&shared, &identity, transition),
            Ok(None) => {}
            Err(_) => shared.errors.increment(1),
        }
        Action::Continue
    }
}
