//! The stream context: a request decided (passed, queued, denied, or sent to a rate limit service), its charge settled after the response, the RateLimit fields written.

use super::*;

pub(super) struct RateLimitStream {
    pub(super) context_id: u32,
    pub(super) shared: Option<Rc<Shared>>,
    pub(super) waiters: Waiters,
    pub(super) statuses: Vec<RuleStatus>,
    pub(super) replied: bool,
    pub(super) waits: Waits,
    /// Waiting for (or answered by) rate limit services.
    pub(super) wait: Option<global::Wait>,
    /// Rules that charge after the response, with this request's key and cost.
    pub(super) to_charge: Vec<Applicable>,
    /// Global rules that charge after the response: their call and descriptor.
    pub(super) to_charge_global: Vec<GlobalCharge>,
}

impl RateLimitStream {
    /// Charges the rules whose `charge` this response settles (`trailers`: the response
    /// trailers arrived; else its headers did). Nothing is charged for a request this
    /// filter refused. A charge that fails (shared data) counts in `errors`.
    fn settle(&mut self, trailers: bool) {
        if self.replied || (self.to_charge.is_empty() && self.to_charge_global.is_empty()) {
            return;
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(now) = now_nanos() else { return };
        // The units this response settles for a rule; None: not now (its trailer is still
        // to come) or never (no charge).
        let units =
            |rule: usize, cost: u64| settled_units(&shared.config, rule, cost, trailers, &WasmHost);
        let waits_for_trailer = |rule: usize| waits_for_trailer(&shared.config, rule, trailers);
        let mut keep = Vec::new();
        for a in std::mem::take(&mut self.to_charge) {
            if waits_for_trailer(a.rule) {
                keep.push(a);
                continue;
            }
            let Some(units) = units(a.rule, a.cost) else {
                continue;
            };
            let metrics = &shared.metrics[a.rule];
            if charge_after(&shared.config, &shared.store, &a, units, now) {
                if let Some(charged) = &metrics.charged {
                    charged.increment(units as i64);
                }
            } else {
                metrics.errors.increment(1);
            }
        }
        self.to_charge = keep;
        let mut keep = Vec::new();
        let mut queued = false;
        for mut charge in std::mem::take(&mut self.to_charge_global) {
            if waits_for_trailer(charge.rule) {
                keep.push(charge);
                continue;
            }
            match units(charge.rule, charge.cost) {
                Some(units) if units > 0 => {
                    charge.descriptor.hits = Some(units);
                    shared.global_charges.borrow_mut().push(charge);
                    queued = true;
                }
                _ => {}
            }
        }
        self.to_charge_global = keep;
        if queued {
            edgewise_support::wasm::set_tick_period(
                shared
                    .global_tick
                    .unwrap_or(std::time::Duration::from_millis(5)),
            );
        }
    }
    /// Asks the rate limit services for the request's global rules (after its local rules
    /// admitted it): denied at once by a remembered OVER_LIMIT answer, else paused until
    /// every call is answered or the deadline passes.
    fn check_global(
        &mut self,
        shared: &Rc<Shared>,
        calls: Vec<crate::limiter::GlobalCall>,
        now: u64,
    ) -> Action {
        if let Some((rule, retry_after_ns, status)) =
            global::remembered_denial(&shared.store, &calls, now)
        {
            self.statuses.push(status);
            if shared.config.shadowed(rule) {
                shared.metrics[rule].shadow_denied.increment(1);
                return Action::Continue;
            }
            shared.metrics[rule].denied.increment(1);
            self.replied = true;
            if !send_deny(shared, &self.statuses, retry_after_ns) {
                return Action::Continue;
            }
            return Action::Pause;
        }
        let mut calls = calls;
        for rule in global::spend_leases(&shared.config, &shared.store, &mut calls, now) {
            shared.metrics[rule].allowed.increment(1);
        }
        if calls.is_empty() {
            return Action::Continue;
        }
        // Global rules charged after the response: remember what to send then.
        for call in &calls {
            for (i, cost) in call.check_costs.iter().enumerate() {
                if let (Some(cost), Some(rule), Some(descriptor)) =
                    (cost, call.rules.get(i), call.descriptors.get(i))
                {
                    self.to_charge_global.push(GlobalCharge {
                        cluster: call.cluster.clone(),
                        domain: call.domain.clone(),
                        rule: *rule,
                        descriptor: descriptor.clone(),
                        cost: *cost,
                    });
                }
            }
        }
        let (service, method) = global::endpoint();
        let mut pending = Vec::new();
        let mut longest = std::time::Duration::ZERO;
        for call in calls {
            let timeout = global::call_timeout(&shared.config, &call);
            match self.dispatch_grpc_call(
                &call.cluster,
                service,
                method,
                Vec::new(),
                Some(&global::message(&call)),
                timeout,
            ) {
                Ok(token) => {
                    longest = longest.max(timeout);
                    pending.push((token, call));
                }
                Err(_) => {
                    for rule in &call.rules {
                        shared.metrics[*rule].errors.increment(1);
                    }
                    if let Some(rule) = global::failure(&shared.config, &call) {
                        if shared.config.shadowed(rule) {
                            shared.metrics[rule].shadow_denied.increment(1);
                            continue;
                        }
                        shared.metrics[rule].denied.increment(1);
                        self.replied = true;
                        if send_deny(shared, &self.statuses, 1_000_000_000) {
                            return Action::Pause;
                        }
                        return Action::Continue;
                    }
                }
            }
        }
        if pending.is_empty() {
            return Action::Continue;
        }
        let wait = Rc::new(RefCell::new(GlobalWait {
            context_id: self.context_id,
            deadline: now.saturating_add(longest.as_nanos() as u64),
            pending,
            statuses: Vec::new(),
            done: false,
        }));
        let deadline = wait.borrow().deadline;
        self.waits
            .borrow_mut()
            .park(self.context_id, deadline, (shared.clone(), wait.clone()));
        self.wait = Some(wait);
        if let Some(period) = shared.global_tick {
            edgewise_support::wasm::set_tick_period(period);
        }
        Action::Pause
    }
}

impl Context for RateLimitStream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let (Some(shared), Some(wait)) = (self.shared.clone(), self.wait.clone()) else {
            return;
        };
        let Some(now) = now_nanos() else { return };
        let body = if status_code == 0 {
            global::answer_body(response_size)
        } else {
            None
        };
        let (next, failed) = global::on_answer(
            &shared.config,
            &shared.store,
            &mut wait.borrow_mut(),
            token_id,
            body,
            now,
        );
        for rule in failed {
            shared.metrics[rule].errors.increment(1);
        }
        if let Next::Deny { rule, .. } | Next::DenyUnavailable { rule } = next {
            if !shared.config.shadowed(rule) {
                self.replied = true;
            }
        }
        let statuses = wait.borrow().statuses.clone();
        act(&shared, self.context_id, next, &statuses);
    }

    fn on_done(&mut self) -> bool {
        // A client that went away while waiting for a service: later answers are ignored.
        if let Some(wait) = &self.wait {
            wait.borrow_mut().done = true;
        }
        // A client that went away while queued frees its place.
        let left = self.waiters.borrow_mut().take(self.context_id);
        if let Some(waiter) = left {
            release_places(&waiter);
        }
        true
    }
}

impl HttpContext for RateLimitStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        // Fail open if the clock is unavailable: never take traffic down for the limiter.
        let Some(now) = now_nanos() else {
            return Action::Continue;
        };
        let config = &shared.config;
        let mut request = RequestHeaders::default();
        let mut peer = || edgewise_support::wasm::property(&["source", "address"]);
        let applicable = applicable_rules(config, &mut request, &mut peer);
        // Rules in a dry run of their own are decided apart (nothing held when they would
        // deny) and only counted; the others decide the request.
        // (Split only when some rule is in a dry run: the usual request keeps its one Vec.)
        let (dry_run, applicable): (Vec<_>, Vec<_>) =
            if applicable.iter().any(|a| config.rules[a.rule].shadow) {
                applicable
                    .into_iter()
                    .partition(|a| config.rules[a.rule].shadow)
            } else {
                (Vec::new(), applicable)
            };
        self.to_charge = applicable
            .iter()
            .chain(&dry_run)
            .filter(|a| a.check_only)
            .cloned()
            .collect();
        // Each on its own: one dry run's verdict never changes another's.
        for a in &dry_run {
            let decision = decide(config, &shared.store, std::slice::from_ref(a), now, true);
            for rule in &decision.errors {
                shared.metrics[*rule].errors.increment(1);
            }
            if matches!(decision.outcome, Outcome::Denied { .. }) {
                shared.metrics[a.rule].shadow_denied.increment(1);
            } else if decision.errors.is_empty() {
                shared.metrics[a.rule].allowed.increment(1);
            }
        }
        if applicable.is_empty() {
            // No local rule applies: only global ones may.
            if shared.global_tick.is_some() {
                let calls = global_calls(config, &mut request, &mut peer);
                if !calls.is_empty() {
                    return self.check_global(&shared, calls, now);
                }
            }
            return Action::Continue;
        }
        let shadow = config.mode == Mode::Shadow;
        let mut decision = decide(config, &shared.store, &applicable, now, shadow);
        for rule in &decision.errors {
            shared.metrics[*rule].errors.increment(1);
        }
        // Kept for the response's RateLimit fields (moved, not copied).
        self.statuses = std::mem::take(&mut decision.rules);
        match decision.outcome {
            Outcome::Allowed => {
                for status in &self.statuses {
                    shared.metrics[status.rule].allowed.increment(1);
                }
                if shared.global_tick.is_some() {
                    let calls = global_calls(config, &mut request, &mut peer);
                    if !calls.is_empty() {
                        return self.check_global(&shared, calls, now);
                    }
                }
                Action::Continue
            }
            Outcome::Delayed { delay_ns } => {
                for status in &self.statuses {
                    shared.metrics[status.rule].allowed.increment(1);
                }
                for rule in &decision.waiting {
                    shared.metrics[*rule].queued.increment(1);
                }
                self.waiters.borrow_mut().park(
                    self.context_id,
                    now + delay_ns,
                    Waiter {
                        rules: decision.waiting.clone(),
                        shared: shared.clone(),
                        taken_at: decision.taken_at,
                    },
                );
                edgewise_support::wasm::set_tick_period(std::time::Duration::from_millis(1));
                Action::Pause
            }
            Outcome::Denied { retry_after_ns, .. } if shadow => {
                let _ = retry_after_ns;
                for status in self.statuses.iter().filter(|s| s.limited) {
                    shared.metrics[status.rule].shadow_denied.increment(1);
                }
                Action::Continue
            }
            Outcome::Denied {
                rule,
                retry_after_ns,
            } => {
                shared.metrics[rule].denied.increment(1);
                self.replied = true;
                if !send_deny(&shared, &self.statuses, retry_after_ns) {
                    // Could not reply: let the request through rather than hang it.
                    return Action::Continue;
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.settle(false);
        if let Some(wait) = &self.wait {
            let answered = std::mem::take(&mut wait.borrow_mut().statuses);
            self.statuses.extend(answered);
        }
        if self.replied || self.statuses.is_empty() {
            return Action::Continue;
        }
        if let Some(shared) = &self.shared {
            write_rate_limit_fields(&shared.config, &self.statuses, &mut WasmHost);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.settle(true);
        Action::Continue
    }
}
