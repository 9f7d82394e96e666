//! Calls into the module: each `proxy_on_*` export Envoy calls, with Envoy's order of
//! callbacks, the effective context and what a trap leaves behind.

use super::*;

impl VmInner {
    pub(crate) fn reject(&mut self, why: &str) -> VmFailure {
        let failure = VmFailure {
            kind: FailureKind::Rejected,
            message: self.with_recent_logs(why.to_string()),
        };
        self.failed = Some(failure.clone());
        failure
    }

    pub(crate) fn with_recent_logs(&self, mut message: String) -> String {
        let index = self.store.data().index;
        let logs = self.store.data().world.logs();
        let recent: Vec<&LogEntry> = logs
            .iter()
            .filter(|l| l.vm == index)
            .rev()
            .take(8)
            .collect();
        if !recent.is_empty() {
            message.push_str("\nlast lines the module logged (newest last):");
            for entry in recent.into_iter().rev() {
                message.push_str(&format!("\n  [{:?}] {}", entry.level, entry.message));
            }
        }
        message
    }

    /// Calls an export if the module has it. `Ok(None)` when absent (Envoy skips it).
    pub(crate) fn call(&mut self, name: &str, args: &[Val]) -> Result<Option<i32>, VmFailure> {
        if let Some(failure) = &self.failed {
            return Err(VmFailure {
                kind: FailureKind::VmFailed,
                message: format!(
                    "the VM failed earlier; Envoy answers 503 wasm_fail_stream. First failure:\n{}",
                    failure.message
                ),
            });
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let ty = func.ty(&self.store);
        let mut results = vec![Val::I32(0); ty.results().len()];
        let effective_before = self.store.data().effective_context;
        if let Some(Val::I32(context)) = args.first() {
            if name != "main" {
                self.store.data_mut().effective_context = *context as u32;
            }
        }
        let outcome = func.call(&mut self.store, args, &mut results);
        self.store.data_mut().effective_context = effective_before;
        match outcome {
            Ok(()) => Ok(match results.first() {
                Some(Val::I32(v)) => Some(*v),
                _ => Some(1),
            }),
            Err(error) => {
                let index = self.store.data().index;
                let message =
                    self.with_recent_logs(format!("wasm VM #{index} trapped in {name}: {error:?}"));
                let failure = VmFailure {
                    kind: FailureKind::Trap,
                    message,
                };
                self.failed = Some(failure.clone());
                Err(failure)
            }
        }
    }

    /// Runs the actions Envoy defers until the VM call returns: local replies, continue and
    /// close. A local reply drives the filter's own response callbacks, which may defer more.
    pub(crate) fn run_deferred(&mut self) -> Result<(), VmFailure> {
        loop {
            let deferred = std::mem::take(&mut self.store.data_mut().deferred);
            if deferred.is_empty() {
                return Ok(());
            }
            for action in deferred {
                match action {
                    Deferred::LocalReply { context, reply } => {
                        self.apply_local_reply(context, reply)?
                    }
                    Deferred::Continue { context, stream } => {
                        self.apply_continue(context, stream)?
                    }
                    Deferred::Close { context } => {
                        if let Some(s) = self.store.data_mut().streams.get_mut(&context) {
                            s.reset = true;
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn apply_continue(&mut self, context: u32, stream: i32) -> Result<(), VmFailure> {
        let Some(s) = self.store.data_mut().streams.get_mut(&context) else {
            return Ok(());
        };
        if s.reset || s.local_reply.is_some() {
            return Ok(());
        }
        let request = stream == stream_type::REQUEST;
        let direction = if request {
            &mut s.request
        } else {
            &mut s.response
        };
        let was_holding = std::mem::take(&mut direction.headers_paused);
        let held = std::mem::take(&mut direction.held);
        let held_end = std::mem::take(&mut direction.held_end);
        direction.forward_body();
        if direction.trailers.is_some() && direction.forwarded_trailers.is_none() {
            direction.forwarded_trailers = direction.trailers.take();
            direction.forwarded_complete = true;
        }
        // Data that arrived while the headers were paused now reaches the filter.
        if was_holding && (!held.is_empty() || held_end) {
            self.body(context, &held, held_end, request)?;
        }
        Ok(())
    }

    pub(crate) fn apply_local_reply(
        &mut self,
        context: u32,
        reply: LocalReply,
    ) -> Result<(), VmFailure> {
        let Some(s) = self.store.data_mut().streams.get_mut(&context) else {
            return Ok(());
        };
        if s.reset || s.local_reply.is_some() {
            return Ok(());
        }
        if s.response.forwarded_headers.is_some() {
            // Response headers already went downstream: Envoy can only reset the stream.
            s.reset = true;
            return Ok(());
        }
        s.local_reply = Some(reply.clone());
        s.request.body_visible = false;
        s.response = Direction::default();
        s.response_code = Some(reply.status);
        let mut headers = Headers::from([(":status", reply.status.to_string())]);
        if !reply.body.is_empty() {
            headers.add("content-length", reply.body.len().to_string());
            headers.add("content-type", "text/plain");
        }
        for (k, v) in reply.headers.pairs() {
            headers.add(k, v);
        }
        let end_of_stream = reply.body.is_empty();
        self.response_headers(context, headers, end_of_stream)?;
        if !end_of_stream {
            self.response_body(context, &reply.body, true)?;
        }
        Ok(())
    }

    pub(crate) fn stream_mut(&mut self, context: u32) -> &mut StreamState {
        self.store.data_mut().streams.entry(context).or_default()
    }

    pub(crate) fn request_headers(
        &mut self,
        context: u32,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action, VmFailure> {
        let n = headers.len() as i32;
        {
            let s = self.stream_mut(context);
            s.request.headers = Some(headers);
            s.request.end_of_stream = end_of_stream;
        }
        let raw = self.call(
            "proxy_on_request_headers",
            &[
                Val::I32(context as i32),
                Val::I32(n),
                Val::I32(end_of_stream as i32),
            ],
        )?;
        let action = Action::from_raw(raw.unwrap_or(0));
        let continued =
            self.store.data().deferred.iter().any(
                |d| matches!(d, Deferred::Continue { context: c, stream: 0 } if *c == context),
            );
        if action == Action::Pause && !continued {
            self.stream_mut(context).request.headers_paused = true;
        }
        if action == Action::Continue {
            let s = self.stream_mut(context);
            if s.local_reply.is_none() {
                s.request.forward_headers();
                if end_of_stream {
                    s.request.forwarded_complete = true;
                }
            }
        }
        self.run_deferred()?;
        Ok(action)
    }

    pub(crate) fn request_body(
        &mut self,
        context: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, VmFailure> {
        self.body(context, chunk, end_of_stream, true)
    }

    pub(crate) fn response_body(
        &mut self,
        context: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, VmFailure> {
        self.body(context, chunk, end_of_stream, false)
    }

    pub(crate) fn body(
        &mut self,
        context: u32,
        chunk: &[u8],
        end_of_stream: bool,
        request: bool,
    ) -> Result<Action, VmFailure> {
        {
            let s = self.stream_mut(context);
            let d = if request {
                &mut s.request
            } else {
                &mut s.response
            };
            if d.headers_paused {
                d.held.extend_from_slice(chunk);
                d.held_end |= end_of_stream;
                return Ok(Action::Pause);
            }
        }
        let size = {
            let s = self.stream_mut(context);
            let d = if request {
                &mut s.request
            } else {
                &mut s.response
            };
            if !d.buffering {
                d.body.clear();
            }
            d.body.extend_from_slice(chunk);
            d.body_visible = true;
            d.end_of_stream = end_of_stream;
            d.body.len()
        };
        let export = if request {
            "proxy_on_request_body"
        } else {
            "proxy_on_response_body"
        };
        let raw = self.call(
            export,
            &[
                Val::I32(context as i32),
                Val::I32(size as i32),
                Val::I32(end_of_stream as i32),
            ],
        )?;
        let action = Action::from_raw(raw.unwrap_or(0));
        {
            let s = self.stream_mut(context);
            let blocked = s.local_reply.is_some() && request;
            let d = if request {
                &mut s.request
            } else {
                &mut s.response
            };
            match action {
                Action::Continue if !blocked => d.forward_body(),
                Action::Continue => {}
                Action::Pause => d.buffering = true,
            }
        }
        self.run_deferred()?;
        Ok(action)
    }

    pub(crate) fn trailers(
        &mut self,
        context: u32,
        trailers: Headers,
        request: bool,
    ) -> Result<Action, VmFailure> {
        let n = trailers.len() as i32;
        {
            let s = self.stream_mut(context);
            let d = if request {
                &mut s.request
            } else {
                &mut s.response
            };
            d.trailers = Some(trailers);
            d.end_of_stream = true;
        }
        let export = if request {
            "proxy_on_request_trailers"
        } else {
            "proxy_on_response_trailers"
        };
        let raw = self.call(export, &[Val::I32(context as i32), Val::I32(n)])?;
        let action = Action::from_raw(raw.unwrap_or(0));
        if action == Action::Continue {
            let s = self.stream_mut(context);
            let d = if request {
                &mut s.request
            } else {
                &mut s.response
            };
            d.forward_body();
            d.forwarded_trailers = d.trailers.take();
            d.forwarded_complete = true;
        }
        self.run_deferred()?;
        Ok(action)
    }

    pub(crate) fn response_headers(
        &mut self,
        context: u32,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action, VmFailure> {
        let n = headers.len() as i32;
        {
            let s = self.stream_mut(context);
            if s.response_code.is_none() || s.local_reply.is_none() {
                s.response_code = headers.get(":status").and_then(|v| v.parse().ok());
            }
            s.response.headers = Some(headers);
            s.response.end_of_stream = end_of_stream;
        }
        let raw = self.call(
            "proxy_on_response_headers",
            &[
                Val::I32(context as i32),
                Val::I32(n),
                Val::I32(end_of_stream as i32),
            ],
        )?;
        let action = Action::from_raw(raw.unwrap_or(0));
        let continued =
            self.store.data().deferred.iter().any(
                |d| matches!(d, Deferred::Continue { context: c, stream: 1 } if *c == context),
            );
        if action == Action::Pause && !continued {
            self.stream_mut(context).response.headers_paused = true;
        }
        if action == Action::Continue {
            let s = self.stream_mut(context);
            s.response.forward_headers();
            if end_of_stream {
                s.response.forwarded_complete = true;
            }
        }
        self.run_deferred()?;
        Ok(action)
    }

    /// Stream end in Envoy's order: on_log (access-log phase), on_done, on_delete.
    /// Callouts still pending for the stream are cancelled.
    pub(crate) fn finish_stream(&mut self, context: u32) -> Result<(), VmFailure> {
        {
            let s = self.stream_mut(context);
            if s.finished {
                return Ok(());
            }
            s.finished = true;
            s.in_log_phase = true;
        }
        let ctx = Val::I32(context as i32);
        let logged = self.call("proxy_on_log", &[ctx]);
        self.stream_mut(context).in_log_phase = false;
        logged?;
        self.call("proxy_on_done", &[ctx])?;
        self.call("proxy_on_delete", &[ctx])?;
        let index = self.store.data().index;
        let mut world = self.store.data().world.lock();
        world
            .http_calls
            .retain(|c| !(c.vm == index && c.context_id == context));
        world
            .grpc_calls
            .retain(|c| !(c.vm == index && c.context_id == context));
        drop(world);
        self.store.data_mut().deferred.clear();
        Ok(())
    }
}
