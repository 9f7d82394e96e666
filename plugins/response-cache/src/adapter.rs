//! The proxy-wasm adapter: looks requests up in shared data and answers hits with a local
//! reply; on a miss, lets the response stream through while copying it, and stores it when
//! complete and storable.

use std::rc::Rc;

use edgewise_support::metrics::metric_name;
use edgewise_support::wasm::{install_panic_hook, load_config, log, now_nanos, Metric, SharedData};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::cache::{entry_for, invalidates, on_request, storable, Pending, RequestDecision};
use crate::config::Config;
use crate::status::{cache_status, Outcome};
use crate::storage::{self, Insert};

const VERSION: &str = env!("CARGO_PKG_VERSION");

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CacheRoot { shared: None }) });
}}

struct Metrics {
    hits: Metric,
    misses: Metric,
    stored: Metric,
    evicted: Metric,
    not_stored: Metric,
    invalidated: Metric,
    purged: Metric,
    stale_served: Metric,
    bytes: Metric,
}

struct Shared {
    config: Config,
    metrics: Metrics,
}

struct CacheRoot {
    shared: Option<Rc<Shared>>,
}

fn now_seconds() -> i64 {
    (now_nanos().unwrap_or(0) / 1_000_000_000) as i64
}

impl Context for CacheRoot {}

impl RootContext for CacheRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        install_panic_hook("response_cache", VERSION);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) = load_config("response_cache", Config::from_json) else {
            return false;
        };
        let m = |what: &str| metric_name(&["response_cache", what]);
        let metrics = Metrics {
            hits: Metric::counter(&m("hits")),
            misses: Metric::counter(&m("misses")),
            stored: Metric::counter(&m("stored")),
            evicted: Metric::counter(&m("evicted")),
            not_stored: Metric::counter(&m("not_stored")),
            invalidated: Metric::counter(&m("invalidated")),
            purged: Metric::counter(&m("purged")),
            stale_served: Metric::counter(&m("stale_served")),
            bytes: Metric::gauge(&m("bytes_in_use")),
        };
        log(
            LogLevel::Info,
            &format!(
                "response_cache {VERSION}: {} bytes, {} entries",
                config.layout.max_bytes, config.layout.slots
            ),
        );
        self.shared = Some(Rc::new(Shared { config, metrics }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CacheStream {
            shared: self.shared.clone(),
            pending: None,
            request: Vec::new(),
            served: None,
            response: None,
            replacing: None,
        }))
    }
}

/// A response being copied for storage.
struct Filling {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

struct CacheStream {
    shared: Option<Rc<Shared>>,
    pending: Option<Pending>,
    /// The request's headers, kept for Vary on a storable miss.
    request: Vec<(String, Vec<u8>)>,
    /// Headers of our own cached reply, applied when Envoy sends it.
    served: Option<Vec<(String, Vec<u8>)>>,
    response: Option<Filling>,
    /// Body of a stale entry replacing an origin error's body (stale-if-error).
    replacing: Option<Vec<u8>>,
}

fn text_pairs(headers: &[(String, Vec<u8>)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter_map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (k.as_str(), v)))
        .collect()
}

impl CacheStream {
    fn finish_store(&mut self, shared: &Shared) {
        let (Some(filling), Some(pending)) = (self.response.take(), self.pending.as_ref()) else {
            return;
        };
        let request = &self.request;
        let mut header = |name: &str| {
            request
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let Some(entry) = entry_for(
            pending,
            filling.status,
            &filling.headers,
            filling.body,
            now_seconds(),
            &mut header,
        ) else {
            shared.metrics.not_stored.increment(1);
            return;
        };
        let mut seed = now_nanos().unwrap_or(1) | 1;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        match storage::insert(
            &SharedData,
            &shared.config.layout,
            pending.key_hash,
            &entry.encode(),
            now_seconds() as u64,
            &mut random,
        ) {
            Insert::Stored { evicted } => {
                shared.metrics.stored.increment(1);
                if evicted > 0 {
                    shared.metrics.evicted.increment(evicted as i64);
                }
                shared.metrics.bytes.set(storage::bytes_in_use(&SharedData));
            }
            Insert::TooLarge | Insert::Raced => shared.metrics.not_stored.increment(1),
        }
    }
}

impl Context for CacheStream {}

impl HttpContext for CacheStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        // The cache looks at many request headers: one map read beats a call per header.
        let mut request: Vec<(String, Vec<u8>)> =
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        match on_request(&shared.config, &SharedData, &mut request, now_seconds()) {
            RequestDecision::Serve {
                status,
                headers,
                body,
            } => {
                shared.metrics.hits.increment(1);
                // Stored fields go out with the reply; Envoy adds its own content-type to a
                // local reply, so the stored one replaces it when the reply passes through.
                let content_type = headers
                    .iter()
                    .find(|(k, _)| k == "content-type")
                    .map(|(_, v)| v.clone());
                let rest: Vec<(String, Vec<u8>)> = headers
                    .into_iter()
                    .filter(|(k, _)| k != "content-type")
                    .collect();
                self.served = Some(
                    content_type
                        .map(|v| vec![("content-type".to_string(), v)])
                        .unwrap_or_default(),
                );
                if hostcalls::send_http_response(status as u32, text_pairs(&rest), Some(&body))
                    .is_err()
                {
                    return Action::Continue;
                }
                Action::Pause
            }
            RequestDecision::GatewayTimeout { headers } => {
                shared.metrics.misses.increment(1);
                let _ = hostcalls::send_http_response(504, text_pairs(&headers), Some(b""));
                Action::Pause
            }
            RequestDecision::Purge {
                key_hash,
                authorized,
            } => {
                let (status, body): (u32, &[u8]) = if !authorized {
                    (403, b"purge not allowed\n")
                } else if storage::remove(&SharedData, &shared.config.layout, key_hash) {
                    shared.metrics.purged.increment(1);
                    shared.metrics.bytes.set(storage::bytes_in_use(&SharedData));
                    (200, b"purged\n")
                } else {
                    (404, b"not cached\n")
                };
                let _ = hostcalls::send_http_response(status, vec![], Some(body));
                Action::Pause
            }
            RequestDecision::Forward(pending) => {
                if matches!(pending.outcome, Outcome::Miss | Outcome::Stale) {
                    shared.metrics.misses.increment(1);
                    // Vary is only known from the response, when request headers are gone.
                    self.request =
                        hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
                }
                self.pending = Some(*pending);
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        if let Some(served) = self.served.take() {
            for (name, value) in text_pairs(&served) {
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
            }
            return Action::Continue;
        }
        let Some(pending) = self.pending.clone() else {
            return Action::Continue;
        };
        let headers = hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default();
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        if invalidates(&pending, status) {
            if storage::remove(&SharedData, &shared.config.layout, pending.key_hash) {
                shared.metrics.invalidated.increment(1);
            }
            return Action::Continue;
        }
        if pending.outcome == Outcome::Bypass {
            return Action::Continue;
        }
        // RFC 5861 §4: an origin error (or Envoy's own, e.g. connect failure) with a stale entry
        // in its window is answered with the entry. The error's body is replaced at its end, so
        // this needs an error with a body (Envoy's local errors have one).
        if let (Some((stored_status, stored_headers, body)), true, false) =
            (pending.fallback.clone(), status >= 500, end_of_stream)
        {
            shared.metrics.stale_served.increment(1);
            let mut pairs: Vec<(String, Vec<u8>)> = vec![
                (":status".into(), stored_status.to_string().into_bytes()),
                ("content-length".into(), body.len().to_string().into_bytes()),
            ];
            pairs.extend(stored_headers);
            let _ = hostcalls::set_map(MapType::HttpResponseHeaders, text_pairs(&pairs));
            self.replacing = Some(body);
            return Action::Continue;
        }
        let storing = storable(&shared.config, &pending, status, &headers).is_ok();
        let value = cache_status(
            &shared.config.cache_status,
            pending.outcome,
            None,
            storing,
            None,
        );
        let _ =
            hostcalls::set_map_value(MapType::HttpResponseHeaders, "cache-status", Some(&value));
        if storing {
            self.response = Some(Filling {
                status,
                headers,
                body: Vec::new(),
            });
            if end_of_stream {
                self.finish_store(&shared);
            }
        } else {
            shared.metrics.not_stored.increment(1);
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
                let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &body);
            }
            return Action::Continue;
        }
        if let Some(filling) = self.response.as_mut() {
            // Each chunk passes on at once; we keep a copy until the end.
            if let Ok(Some(chunk)) =
                hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
            {
                filling.body.extend_from_slice(&chunk);
            }
            if filling.body.len() as u64 > shared.config.layout.max_entry_bytes {
                self.response = None;
                shared.metrics.not_stored.increment(1);
            } else if end_of_stream {
                self.finish_store(&shared);
            }
        }
        Action::Continue
    }
}
