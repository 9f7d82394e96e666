//! The root context: configuration, the tick (queued requests released, service waits past their deadline, global charges sent) and the service's answers.

use super::*;

pub(super) struct RateLimitRoot {
    pub(super) shared: Option<Rc<Shared>>,
    pub(super) waiters: Waiters,
    /// Requests waiting for a rate limit service, watched for their deadline.
    pub(super) waits: Waits,
    /// Charge calls in flight: token → (configuration, rule, units).
    pub(super) charging: std::collections::HashMap<u32, (Rc<Shared>, usize, u64)>,
}

impl RateLimitRoot {
    /// Ticks while anything waits: every 1 ms for queued requests, at the global rules'
    /// period for requests waiting on a service; not at all otherwise.
    fn schedule_ticks(&self) {
        let period = if !self.waiters.borrow().is_empty() {
            std::time::Duration::from_millis(1)
        } else if !self.waits.borrow().is_empty()
            || self
                .shared
                .as_ref()
                .is_some_and(|s| !s.global_charges.borrow().is_empty())
        {
            self.shared
                .as_ref()
                .and_then(|s| s.global_tick)
                .unwrap_or(std::time::Duration::from_millis(5))
        } else {
            std::time::Duration::ZERO
        };
        edgewise_support::wasm::set_tick_period(period);
    }

    /// Requests whose service calls passed their deadline: each unanswered call is a
    /// failure, and the request goes on or is denied by its rules' failure mode.
    fn expire_global_waits(&self, now: u64) {
        let expired = {
            let mut waits = self.waits.borrow_mut();
            waits.retain(|(_, w)| !w.borrow().done);
            waits.take_due(now)
        };
        for (_, (shared, wait)) in expired {
            let (next, failed, context_id) = {
                let mut w = wait.borrow_mut();
                let (next, failed) = global::on_deadline(&shared.config, &mut w);
                (next, failed, w.context_id)
            };
            for rule in failed {
                if let Some(m) = shared.metrics.get(rule) {
                    m.errors.increment(1);
                }
            }
            if hostcalls::set_effective_context(context_id).is_ok() {
                let statuses = wait.borrow().statuses.clone();
                act(&shared, context_id, next, &statuses);
            }
        }
    }
}

impl RateLimitRoot {
    /// Sends the queued charges of global rules (one call each; never waited for by a
    /// client). A call that cannot be sent counts in the rule's `errors`.
    fn send_global_charges(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let queued: Vec<GlobalCharge> = shared.global_charges.borrow_mut().drain(..).collect();
        let (service, method) = global::endpoint();
        for charge in queued {
            let units = charge.descriptor.hits.unwrap_or(0);
            let timeout = shared
                .config
                .rules
                .get(charge.rule)
                .and_then(|r| r.global.as_ref())
                .map_or(std::time::Duration::from_millis(100), |g| g.timeout);
            let message = crate::rls::encode_request(
                &charge.domain,
                std::slice::from_ref(&charge.descriptor),
                0,
            );
            // The metadata tells edgewise-ratelimit to spend the units even past the limit
            // (debt); envoyproxy/ratelimit's counters take them anyway.
            match self.dispatch_grpc_call(
                &charge.cluster,
                service,
                method,
                vec![("x-edgewise-charge", b"1".as_slice())],
                Some(&message),
                timeout,
            ) {
                Ok(token) => {
                    self.charging
                        .insert(token, (shared.clone(), charge.rule, units));
                }
                Err(_) => {
                    if let Some(m) = shared.metrics.get(charge.rule) {
                        m.errors.increment(1);
                    }
                }
            }
        }
    }
}

impl Context for RateLimitRoot {
    /// The answer to a charge call: counted in `charged` when the service took it, in
    /// `errors` when the call failed. Its verdict does not matter (the request is done).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        let Some((shared, rule, units)) = self.charging.remove(&token_id) else {
            return;
        };
        let Some(m) = shared.metrics.get(rule) else {
            return;
        };
        if status_code == 0 {
            if let Some(charged) = &m.charged {
                charged.increment(units as i64);
            }
        } else {
            m.errors.increment(1);
        }
    }
}

/// The key-hash seed every VM of this vm_id shares: random, created once in shared data by
/// the first VM to configure, and kept across reconfigurations and VM restarts (shared data
/// lives as long as Envoy), so a configuration change never resets rate limits. None when
/// shared data fails (the configuration-derived seed is used instead).
pub(super) fn shared_seed(store: &SharedData) -> Option<u64> {
    edgewise_support::wasm::shared_random_seed(store, "edgewise.rate_limit.seed")
}

impl RootContext for RateLimitRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        install_panic_hook("rate_limit", VERSION);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(mut config) = load_config("rate_limit", Config::from_json) else {
            return false;
        };
        let store = SharedData::with_prefix(&config.key_prefix);
        if !config.hash_seed_configured {
            if let Some(seed) = shared_seed(&store) {
                config.hash_seed = seed;
            }
        }
        let counter = |name: &str| Metric::counter_flushed_every(name, config.metrics_flush);
        let metrics = config
            .rules
            .iter()
            .map(|r| RuleMetrics {
                allowed: counter(&r.metric_allowed),
                denied: counter(&r.metric_denied),
                shadow_denied: counter(&r.metric_shadow_denied),
                queued: counter(&r.metric_queued),
                errors: counter(&r.metric_errors),
                charged: r.charge.as_ref().map(|_| {
                    counter(&edgewise_support::metrics::labelled_metric_name(
                        "rate_limit",
                        &[("rule", &r.name)],
                        "charged",
                    ))
                }),
            })
            .collect();
        log(
            LogLevel::Info,
            &format!(
                "rate_limit {VERSION}: {} rule(s), mode {:?}",
                config.rules.len(),
                config.mode
            ),
        );
        let global_tick = config
            .rules
            .iter()
            .any(|r| r.global.is_some())
            .then(|| global::tick_period(&config));
        self.shared = Some(Rc::new(Shared {
            store,
            config,
            metrics,
            global_tick,
            global_charges: RefCell::new(Vec::new()),
        }));
        true
    }

    fn on_tick(&mut self) {
        if !edgewise_support::wasm::tick() {
            return; // a tick only for the deferred metrics
        }
        let Some(now) = now_nanos() else { return };
        self.expire_global_waits(now);
        self.send_global_charges();
        let due = self.waiters.borrow_mut().take_due(now);
        for (context_id, waiter) in due {
            release_places(&waiter);
            edgewise_support::wasm::resume_parked(context_id);
        }
        self.schedule_ticks();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimitStream {
            context_id,
            shared: self.shared.clone(),
            waiters: self.waiters.clone(),
            statuses: Vec::new(),
            replied: false,
            waits: self.waits.clone(),
            wait: None,
            to_charge: Vec::new(),
            to_charge_global: Vec::new(),
        }))
    }
}
