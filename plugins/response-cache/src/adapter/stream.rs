//! The stream context: a request decided by the core (served, forwarded, purged), its response stored or passed on.

use super::*;

/// A response being copied for storage.
pub(super) struct Filling {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

pub(super) struct CacheStream {
    pub(super) context_id: u32,
    pub(super) shared: Option<Rc<Shared>>,
    pub(super) pending: Option<Pending>,
    /// The request's headers, kept for Vary on a storable miss.
    pub(super) request: HeaderMap,
    /// Headers of our own cached reply, applied when Envoy sends it.
    pub(super) served: Served,
    pub(super) response: Option<Filling>,
    /// Body of a stale entry replacing an origin error's body (stale-if-error).
    pub(super) replacing: Option<Vec<u8>>,
    /// The fill-lock nonce while this request fills its key for waiting requests.
    pub(super) leader: Option<u64>,
    /// Bytes this stream counts in the worker's in-flight budget.
    pub(super) held: u64,
    /// Cleared when the stream ends, so a waiter whose client left is dropped.
    pub(super) alive: Rc<Cell<bool>>,
    /// The clock when the request arrived (ms since the epoch).
    pub(super) now_ms: u64,
}

pub(super) fn text_pairs(headers: &[(String, Vec<u8>)]) -> Vec<(&str, &str)> {
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

    /// Replaces the response's header fields, and its body with `body` when the body ends.
    fn replace_response(&mut self, headers: &[(String, Vec<u8>)], body: Vec<u8>) -> Action {
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        abi::set_map_pairs(MapType::HttpResponseHeaders as u32, &pairs);
        self.replacing = Some(body);
        Action::Continue
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
        let Some(pending) = self.pending.as_ref() else {
            return Action::Continue;
        };
        let key_hash = pending.key_hash;
        // Read in place (one buffer): fields are copied out only into an entry being stored.
        let headers = abi::get_header_map(MapType::HttpResponseHeaders as u32);
        strip_fields_for_this_cache(&shared.config, &headers, &mut WasmHost);
        // Envoy's details are read (one host call) only for an error a stale entry may answer.
        let unreachable = || {
            edgewise_support::wasm::property(&["response", "code_details"])
                .is_some_and(|details| details != b"via_upstream")
        };
        let action = on_response_headers(
            &shared.config,
            pending,
            &headers,
            end_of_stream,
            now_seconds,
            unreachable,
        );
        match action {
            ResponseAction::Invalidate(keys) => {
                for key_hash in keys {
                    if storage::remove(&shared.store, &shared.config.layout, key_hash) {
                        shared.metrics.invalidated.increment(1);
                    }
                }
                Action::Continue
            }
            ResponseAction::PassOn { cache_status } => {
                if let Some(value) = cache_status {
                    write_cache_status(&headers, &value, &mut WasmHost);
                }
                Action::Continue
            }
            ResponseAction::Revalidated(revalidated) => {
                let Revalidated {
                    store,
                    reply: (status, headers, body),
                } = *revalidated;
                shared.metrics.revalidated.increment(1);
                match store {
                    Some(refreshed) => store_entry(&shared, key_hash, refreshed),
                    None => {
                        // The 304 made the entry unshareable: drop it (and its variants).
                        shared.metrics.not_stored.increment(1);
                        if storage::remove(&shared.store, &shared.config.layout, key_hash) {
                            shared
                                .metrics
                                .bytes
                                .set(storage::bytes_in_use(&shared.store));
                        }
                    }
                }
                // Waiting requests look again now (served, or sent on if it was dropped).
                self.end_fill(FillEnd::Retry);
                self.reply(status, headers, &body)
            }
            ResponseAction::ServeStale { headers, body } => {
                shared.metrics.stale_served.increment(1);
                self.replace_response(&headers, body)
            }
            ResponseAction::GatewayTimeout { headers } => {
                self.replace_response(&headers, Vec::new())
            }
            ResponseAction::Deliver {
                cache_status,
                freshened,
                storing,
            } => {
                if let Some(refreshed) = freshened {
                    shared.metrics.revalidated.increment(1);
                    store_entry(&shared, key_hash, *refreshed);
                }
                write_cache_status(&headers, &cache_status, &mut WasmHost);
                match storing {
                    Storing::CopyBody => {
                        self.response = Some(Filling {
                            status: status_of(&headers),
                            headers,
                            body: Vec::new(),
                        });
                        if end_of_stream {
                            self.finish_store(&shared);
                            self.release_held();
                        }
                    }
                    Storing::No(end) => {
                        shared.metrics.not_stored.increment(1);
                        self.end_fill(end);
                        self.release_held();
                    }
                }
                Action::Continue
            }
        }
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
