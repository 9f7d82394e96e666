//! An HTTP stream through the filter, driven the way Envoy's filter manager drives it:
//! request headers/body/trailers in, the filter's `Action` out, then the upstream's
//! response (or the filter's local reply), then log → done → delete.

use crate::abi::Action;
use crate::failure::VmFailure;
use crate::headers::Headers;
use crate::vm::{LocalReply, StreamState, Vm};

/// What crossed the filter in one direction: to the upstream, or to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passed {
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
    /// End of stream went through as well.
    pub complete: bool,
}

impl Passed {
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers.get(key)
    }
    pub fn status(&self) -> Option<u16> {
        self.header(":status").and_then(|s| s.parse().ok())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One downstream request on one VM.
pub struct Stream {
    vm: Vm,
    context: u32,
    created: bool,
    finished: bool,
    source_address: String,
}

fn expect<T>(result: Result<T, VmFailure>) -> T {
    match result {
        Ok(value) => value,
        Err(failure) => panic!("{failure}"),
    }
}

impl Stream {
    pub(crate) fn new(vm: Vm) -> Stream {
        let context = {
            let mut guard = vm.lock();
            let state = guard.store.data_mut();
            let id = state.next_context;
            state.next_context += 1;
            id
        };
        Stream {
            vm,
            context,
            created: false,
            finished: false,
            source_address: format!("127.0.0.1:{}", 40000 + context % 20000),
        }
    }

    /// The stream's context id in the module.
    pub fn id(&self) -> u32 {
        self.context
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Sets the downstream peer (`source.address`), e.g. "203.0.113.7:5555".
    pub fn with_source_address(mut self, address: &str) -> Stream {
        self.source_address = address.to_string();
        self
    }

    fn ensure_created(&mut self) -> Result<(), VmFailure> {
        if self.created {
            return Ok(());
        }
        self.created = true;
        let now = self.vm.world().now_nanos();
        let mut guard = self.vm.lock();
        let root = guard.store.data().root_context;
        guard.store.data_mut().streams.insert(
            self.context,
            StreamState {
                source_address: self.source_address.clone(),
                start_nanos: now,
                ..Default::default()
            },
        );
        guard.call(
            "proxy_on_context_create",
            &[
                wasmtime::Val::I32(self.context as i32),
                wasmtime::Val::I32(root as i32),
            ],
        )?;
        Ok(())
    }

    /// Request headers arrive. Envoy's connection manager has already added `:scheme`,
    /// `x-forwarded-proto` and `x-request-id` when absent; this does the same.
    pub fn try_send_request_headers(
        &mut self,
        headers: impl Into<Headers>,
        end_of_stream: bool,
    ) -> Result<Action, VmFailure> {
        self.ensure_created()?;
        let mut headers = headers.into();
        for (key, default) in [(":scheme", "http"), ("x-forwarded-proto", "http")] {
            if !headers.contains(key) {
                headers.add(key, default);
            }
        }
        if !headers.contains("x-request-id") {
            let mut world = self.vm.world().lock();
            let (a, b) = (world.random_u64(), world.random_u64());
            drop(world);
            headers.add(
                "x-request-id",
                format!(
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    b >> 52,
                    b & 0xffff_ffff_ffff
                ),
            );
        }
        let vm = self.vm.clone();
        let result = vm
            .lock()
            .request_headers(self.context, headers, end_of_stream);
        self.after(result)
    }

    pub fn send_request_headers(
        &mut self,
        headers: impl Into<Headers>,
        end_of_stream: bool,
    ) -> Action {
        expect(self.try_send_request_headers(headers, end_of_stream))
    }

    /// A request body chunk arrives; the filter sees everything buffered so far.
    pub fn try_send_request_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, VmFailure> {
        let vm = self.vm.clone();
        let result = vm.lock().request_body(self.context, chunk, end_of_stream);
        self.after(result)
    }

    pub fn send_request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        expect(self.try_send_request_body(chunk, end_of_stream))
    }

    pub fn try_send_request_trailers(
        &mut self,
        trailers: impl Into<Headers>,
    ) -> Result<Action, VmFailure> {
        let vm = self.vm.clone();
        let result = vm.lock().trailers(self.context, trailers.into(), true);
        self.after(result)
    }

    pub fn send_request_trailers(&mut self, trailers: impl Into<Headers>) -> Action {
        expect(self.try_send_request_trailers(trailers))
    }

    /// The upstream's response headers arrive.
    pub fn try_send_response_headers(
        &mut self,
        headers: impl Into<Headers>,
        end_of_stream: bool,
    ) -> Result<Action, VmFailure> {
        let vm = self.vm.clone();
        let result = vm
            .lock()
            .response_headers(self.context, headers.into(), end_of_stream);
        self.after(result)
    }

    pub fn send_response_headers(
        &mut self,
        headers: impl Into<Headers>,
        end_of_stream: bool,
    ) -> Action {
        expect(self.try_send_response_headers(headers, end_of_stream))
    }

    pub fn try_send_response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, VmFailure> {
        let vm = self.vm.clone();
        let result = vm.lock().response_body(self.context, chunk, end_of_stream);
        self.after(result)
    }

    pub fn send_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        expect(self.try_send_response_body(chunk, end_of_stream))
    }

    pub fn send_response_trailers(&mut self, trailers: impl Into<Headers>) -> Action {
        let vm = self.vm.clone();
        let result = vm.lock().trailers(self.context, trailers.into(), false);
        expect(self.after(result))
    }

    /// The upstream answers with a whole response: headers, then the body (if any) with
    /// end of stream. Returns the action of the last callback.
    pub fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Action {
        let mut all = Headers::from([(":status", status.to_string())]);
        for (k, v) in headers {
            all.add(k, v);
        }
        if body.is_empty() {
            return self.send_response_headers(all, true);
        }
        all.add("content-length", body.len().to_string());
        self.send_response_headers(all, false);
        self.send_response_body(body, true)
    }

    fn after<T>(&mut self, result: Result<T, VmFailure>) -> Result<T, VmFailure> {
        let value = result?;
        self.vm.world().deliver_posted()?;
        Ok(value)
    }

    fn state<T>(&self, f: impl FnOnce(&StreamState) -> T) -> Option<T> {
        let guard = self.vm.lock();
        guard.store.data().streams.get(&self.context).map(f)
    }

    /// The request headers as the filter has left them so far.
    pub fn request_headers(&self) -> Headers {
        self.state(|s| {
            s.request
                .headers
                .clone()
                .or_else(|| s.request.last_headers.clone())
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// What has gone on to the upstream (None while the filter holds the request).
    pub fn upstream_request(&self) -> Option<Passed> {
        self.state(|s| {
            s.request.forwarded_headers.clone().map(|headers| Passed {
                headers,
                body: s.request.forwarded_body.clone(),
                trailers: s.request.forwarded_trailers.clone(),
                complete: s.request.forwarded_complete,
            })
        })
        .flatten()
    }

    /// What has gone on to the client: the upstream response or local reply as the filter
    /// left it (None while nothing has been released).
    pub fn response(&self) -> Option<Passed> {
        self.state(|s| {
            s.response.forwarded_headers.clone().map(|headers| Passed {
                headers,
                body: s.response.forwarded_body.clone(),
                trailers: s.response.forwarded_trailers.clone(),
                complete: s.response.forwarded_complete,
            })
        })
        .flatten()
    }

    /// The local reply the filter sent, if any.
    pub fn local_reply(&self) -> Option<LocalReply> {
        self.state(|s| s.local_reply.clone()).flatten()
    }

    /// The filter closed (reset) the stream, or replied locally too late to do anything else.
    pub fn is_reset(&self) -> bool {
        self.state(|s| s.reset).unwrap_or(false)
    }

    /// Ends the stream: `on_log`, `on_done`, `on_delete`, in Envoy's order; pending callouts
    /// of the stream are cancelled. Also run on drop (ignoring failures there).
    pub fn try_finish(&mut self) -> Result<(), VmFailure> {
        if self.finished || !self.created {
            self.finished = true;
            return Ok(());
        }
        self.finished = true;
        let vm = self.vm.clone();
        let result = vm.lock().finish_stream(self.context);
        self.after(result)
    }

    pub fn finish(&mut self) {
        expect(self.try_finish())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.finished && self.created {
            let _ = self.try_finish();
        }
    }
}
