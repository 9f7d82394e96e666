//! The probe: a proxy-wasm module that exercises every host call and logs what it saw,
//! so the same requests can be replayed in our host and in real Envoy and compared.
//!
//! Each request picks a scenario with `x-probe: <name>` and tags its log lines with
//! `x-probe-id`. Every line is `PROBE[<id>] <event>`, with statuses as raw numbers.

mod raw;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

const REQUEST_HEADERS: u32 = 0;
const REQUEST_TRAILERS: u32 = 1;
const RESPONSE_HEADERS: u32 = 2;
const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const REQUEST_BODY: u32 = 0;
const RESPONSE_BODY: u32 = 1;
const HTTP_CALL_RESPONSE_BODY: u32 = 4;
const VM_CONFIGURATION: u32 = 6;
const PLUGIN_CONFIGURATION: u32 = 7;
const QUEUE_NAME: &str = "probe-queue";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot { queue: 0 }) });
}}

fn say(id: &str, event: &str) {
    raw::log(2, &format!("PROBE[{id}] {event}"));
}

struct ProbeRoot {
    queue: u32,
}

impl Context for ProbeRoot {
    fn on_done(&mut self) -> bool {
        let done = unsafe { raw::proxy_done() };
        say("root", &format!("root_done proxy_done={done}"));
        false
    }
}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let (status, config) = raw::get_buffer(VM_CONFIGURATION, 0, usize::MAX);
        let (queue_status, token) = raw::register_queue(QUEUE_NAME);
        self.queue = token;
        say(
            "root",
            &format!(
                "vm_start vm_config_status={status} vm_config={:?} queue_status={queue_status}",
                String::from_utf8_lossy(&config)
            ),
        );
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let (status, config) = raw::get_buffer(PLUGIN_CONFIGURATION, 0, size);
        let text = String::from_utf8_lossy(&config).into_owned();
        say(
            "root",
            &format!("configure status={status} size={size} config={text:?}"),
        );
        if text.contains("reject") {
            raw::log(4, "probe: configuration asks to be rejected");
            return false;
        }
        if let Some(ms) = text
            .split("tick_ms=")
            .nth(1)
            .and_then(|rest| rest.trim().parse::<u32>().ok())
        {
            unsafe { raw::proxy_set_tick_period_milliseconds(ms) };
        }
        true
    }

    fn on_tick(&mut self) {
        let (_, now) = raw::now();
        say("root", &format!("tick now_ms={}", now / 1_000_000));
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        loop {
            let (status, item) = raw::dequeue(queue_id);
            if status != 0 {
                say("queue", &format!("drained status={status}"));
                break;
            }
            let text = String::from_utf8_lossy(&item).into_owned();
            let id = text.strip_prefix("msg-").unwrap_or("?").to_string();
            say(&id, &format!("queue_ready item={text}"));
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeStream {
            context_id,
            id: String::new(),
            scenario: String::new(),
            queue: self.queue,
        }))
    }
}

struct ProbeStream {
    context_id: u32,
    id: String,
    scenario: String,
    queue: u32,
}

impl ProbeStream {
    fn say(&self, event: &str) {
        say(&self.id, event);
    }

    fn header(&self, name: &str) -> String {
        raw::get_map_value(REQUEST_HEADERS, name)
            .1
            .unwrap_or_default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn int(bytes: &[u8]) -> i64 {
    bytes
        .get(..8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .unwrap_or(-1)
}

impl Context for ProbeStream {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        let (status_status, status) = raw::get_map_value(HTTP_CALL_RESPONSE_HEADERS, ":status");
        let (body_status, body) = raw::get_buffer(HTTP_CALL_RESPONSE_BODY, 0, body_size);
        let has_headers = num_headers > 0;
        self.say(&format!(
            "call_response token_nonzero={} has_headers={has_headers} trailers={num_trailers} status={status_status}:{} body_size={body_size} body={body_status}:{:?}",
            token_id != 0,
            status.clone().unwrap_or_default(),
            text(&body)
        ));
        if !has_headers {
            let (s, code, message) = raw::get_status();
            self.say(&format!(
                "call_failed get_status={s} code={code} message={message}"
            ));
        }
        // Request headers are still ours while the request is paused.
        let add = raw::add_map_value(
            REQUEST_HEADERS,
            "x-callout-status",
            &status.unwrap_or_else(|| "none".into()),
        );
        let resume = unsafe { raw::proxy_continue_stream(0) };
        self.say(&format!("resumed add={add} continue={resume}"));
        let after = raw::get_map_value(REQUEST_HEADERS, ":path").0;
        self.say(&format!("after_continue request_headers_status={after}"));
    }

    fn on_done(&mut self) -> bool {
        self.say("on_done");
        true
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let (s, message) = raw::get_buffer(5, 0, response_size);
        let (gs, code, text_status) = raw::get_status();
        self.say(&format!("grpc_response token_nonzero={} status={status_code} message={s}:{:?} get_status={gs}:{code}:{text_status}", token_id != 0, text(&message)));
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token_id: u32, num_elements: u32) {
        let value = raw::get_map_value(4, "x-meta").1.unwrap_or_default();
        self.say(&format!(
            "grpc_stream_initial_metadata n={num_elements} x-meta={value}"
        ));
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        let (_, message) = raw::get_buffer(5, 0, message_size);
        let reply = raw::grpc_send(token_id, b"pong", false);
        self.say(&format!(
            "grpc_stream_message {:?} reply={reply}",
            text(&message)
        ));
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token_id: u32, num_elements: u32) {
        let value = raw::get_map_value(5, "x-trail").1.unwrap_or_default();
        self.say(&format!(
            "grpc_stream_trailing_metadata n={num_elements} x-trail={value}"
        ));
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        let close = raw::grpc_close(token_id);
        self.say(&format!(
            "grpc_stream_close status={status_code} close_after={close}"
        ));
    }
}

impl HttpContext for ProbeStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.id = self.header("x-probe-id");
        self.scenario = self.header("x-probe");
        if self.id.is_empty() {
            return Action::Continue;
        }
        self.say(&format!(
            "request_headers scenario={} eos={end_of_stream}",
            self.scenario
        ));
        match self.scenario.as_str() {
            "headers" => self.headers_scenario(),
            "local" => self.local_scenario(),
            "shared" => self.shared_scenario(),
            "props" => self.properties_scenario(),
            "metrics" => self.metrics_scenario(),
            "body" => Action::Continue,
            "pause-body" => self.callout_scenario(),
            "callout" => self.callout_scenario(),
            "callout-timeout" => self.callout_timeout_scenario(),
            "queue" => self.queue_scenario(),
            "log" => self.log_scenario(),
            "misc" => self.misc_scenario(),
            "grpc" => self.grpc_scenario(),
            "grpc-live" => self.grpc_live_scenario(),
            "incr" => self.increment_scenario(),
            "close" => {
                let close = unsafe { raw::proxy_close_stream(0) };
                self.say(&format!("close status={close}"));
                Action::Pause
            }
            "panic" => panic!("probe panic requested id={}", self.id),
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.id.is_empty() {
            return Action::Continue;
        }
        let (status, body) = raw::get_buffer(REQUEST_BODY, 0, body_size);
        let (status_status, status_len) = raw::buffer_status(REQUEST_BODY);
        self.say(&format!(
            "request_body size={body_size} eos={end_of_stream} get={status}:{:?} buffer_status={status_status}:{status_len}",
            text(&body)
        ));
        if self.scenario == "body" && !end_of_stream {
            return Action::Pause;
        }
        if self.scenario == "body" {
            let upper = text(&body).to_uppercase();
            let set = raw::set_buffer(REQUEST_BODY, 0, body.len(), upper.as_bytes());
            let (_, after) = raw::get_buffer(REQUEST_BODY, 0, usize::MAX);
            self.say(&format!(
                "request_body_replaced set={set} now={:?}",
                text(&after)
            ));
            let trailers = raw::get_map_value(REQUEST_TRAILERS, "x-none").0;
            self.say(&format!("request_trailers_get={trailers}"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.id.is_empty() {
            return Action::Continue;
        }
        let status = raw::get_map_value(RESPONSE_HEADERS, ":status")
            .1
            .unwrap_or_default();
        let content_type = raw::get_map_value(RESPONSE_HEADERS, "content-type");
        let content_length = raw::get_map_value(RESPONSE_HEADERS, "content-length");
        let local = raw::get_map_value(RESPONSE_HEADERS, "x-local");
        let request_path = raw::get_map_value(REQUEST_HEADERS, ":path").0;
        let local_details = if self.scenario == "local" {
            format!(
                " content_length={:?} x_local={:?}",
                content_length.1, local.1
            )
        } else {
            String::new()
        };
        self.say(&format!(
            "response_headers status={status} content_type={:?}{local_details} request_headers_status={request_path}",
            content_type.1
        ));
        if self.scenario == "sdk-misuse" {
            // Request headers are gone after Continue: Envoy answers BadArgument, which the
            // SDK's getter does not expect, so it panics. Tests must see why.
            let path = self.get_http_request_header(":path");
            self.say(&format!("unreachable {path:?}"));
        }
        if self.scenario == "props" {
            let (s, code) = raw::get_property(&["response", "code"]);
            let (cs, cluster) = raw::get_property(&["xds", "cluster_name"]);
            self.say(&format!(
                "response_props code={s}:{} cluster={cs}:{}",
                int(&code),
                text(&cluster)
            ));
        }
        let add = raw::add_map_value(RESPONSE_HEADERS, "x-probe-saw", &self.scenario);
        self.say(&format!("response_header_added status={add}"));
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.id.is_empty() {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let (status, body) = raw::get_buffer(RESPONSE_BODY, 0, body_size);
        if self.scenario == "local" {
            self.say(&format!(
                "response_body size={body_size} eos={end_of_stream} get={status}:{:?}",
                text(&body)
            ));
        } else {
            self.say(&format!("response_body eos={end_of_stream} get={status}"));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let path = raw::get_map_value(REQUEST_HEADERS, ":path");
        let status = raw::get_map_value(RESPONSE_HEADERS, ":status");
        let trailers = raw::get_map_value(REQUEST_TRAILERS, "x-none").0;
        self.say(&format!(
            "on_log path={}:{} status={}:{} request_trailers_status={trailers}",
            path.0,
            path.1.unwrap_or_default(),
            status.0,
            status.1.unwrap_or_default()
        ));
    }
}

impl ProbeStream {
    fn headers_scenario(&mut self) -> Action {
        let method = raw::get_map_value(REQUEST_HEADERS, ":method");
        let multi = raw::get_map_value(REQUEST_HEADERS, "x-multi");
        let missing = raw::get_map_value(REQUEST_HEADERS, "x-missing");
        self.say(&format!(
            "get method={}:{} multi={}:{} missing={}",
            method.0,
            method.1.unwrap_or_default(),
            multi.0,
            multi.1.unwrap_or_default(),
            missing.0
        ));
        let (pairs_status, pairs) = raw::get_map_pairs(REQUEST_HEADERS);
        let mut names: Vec<String> = pairs
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k.starts_with(':') || k.starts_with("x-"))
            .collect();
        names.sort();
        self.say(&format!(
            "pairs status={pairs_status} names={}",
            names.join(",")
        ));
        let response = raw::get_map_value(RESPONSE_HEADERS, ":status").0;
        let response_pairs = raw::get_map_pairs(RESPONSE_HEADERS);
        let response_add = raw::add_map_value(RESPONSE_HEADERS, "x-nope", "1");
        self.say(&format!(
            "response_map_in_request_phase get={response} pairs={}:{} add={response_add}",
            response_pairs.0,
            response_pairs.1.len()
        ));
        let add = raw::add_map_value(REQUEST_HEADERS, "x-added", "yes");
        let replace = raw::replace_map_value(REQUEST_HEADERS, "x-replace", "new");
        let remove = raw::remove_map_value(REQUEST_HEADERS, "x-remove");
        let remove_missing = raw::remove_map_value(REQUEST_HEADERS, "x-never-there");
        let (size_status, _) = raw::map_size(REQUEST_HEADERS);
        self.say(&format!("mutate add={add} replace={replace} remove={remove} remove_missing={remove_missing} size_status={size_status}"));
        let check = |name: &str| {
            raw::get_map_value(REQUEST_HEADERS, name)
                .1
                .unwrap_or_else(|| "<none>".into())
        };
        self.say(&format!(
            "after x-added={} x-replace={} x-remove={}",
            check("x-added"),
            check("x-replace"),
            check("x-remove")
        ));
        let trailers = raw::get_map_value(REQUEST_TRAILERS, "x-none").0;
        let trailers_pairs = raw::get_map_pairs(REQUEST_TRAILERS).0;
        self.say(&format!(
            "request_trailers_in_headers get={trailers} pairs={trailers_pairs}"
        ));
        if self.header("x-set-pairs") == "1" {
            let current = raw::get_map_pairs(REQUEST_HEADERS).1;
            let mut kept: Vec<(&str, &str)> = current
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            kept.push(("x-set-by-pairs", "1"));
            let set = raw::set_map_pairs(REQUEST_HEADERS, &kept);
            self.say(&format!(
                "set_pairs status={set} x-set-by-pairs={}",
                check("x-set-by-pairs")
            ));
        }
        Action::Continue
    }

    fn local_scenario(&mut self) -> Action {
        let first = raw::send_local_response(418, "probe teapot", b"teapot\n", &[("x-local", "1")]);
        let second = raw::send_local_response(500, "probe second", b"second\n", &[]);
        self.say(&format!("local_reply first={first} second={second}"));
        Action::Pause
    }

    fn shared_scenario(&mut self) -> Action {
        let key = format!("probe-shared-{}", self.id);
        let (missing, _, _) = raw::get_shared(&key);
        let set1 = raw::set_shared(&key, b"v1", 0);
        let (get1, v1, cas1) = raw::get_shared(&key);
        let set2 = raw::set_shared(&key, b"v2", cas1);
        let (_, _, cas2) = raw::get_shared(&key);
        let stale = raw::set_shared(&key, b"v3", cas1);
        let (_, now, _) = raw::get_shared(&key);
        let fresh_key = format!("probe-fresh-{}", self.id);
        let cas_on_missing = raw::set_shared(&fresh_key, b"x", 12345);
        let uncond = raw::set_shared(&key, b"v4", 0);
        let (_, last, cas4) = raw::get_shared(&key);
        self.say(&format!(
            "shared missing={missing} set1={set1} get1={get1}:{} cas_nonzero={} set2={set2} cas_changed={} stale={stale} value_after_stale={} cas_on_missing={cas_on_missing} unconditional={uncond} last={} cas_grew={}",
            text(&v1), cas1 != 0, cas2 != cas1, text(&now), text(&last), cas4 > cas2
        ));
        let empty = raw::set_shared(&key, b"", 0);
        let (after_empty, value, _) = raw::get_shared(&key);
        self.say(&format!(
            "shared_empty set={empty} get={after_empty} len={}",
            value.len()
        ));
        Action::Continue
    }

    fn properties_scenario(&mut self) -> Action {
        let show = |path: &[&str]| {
            let (s, v) = raw::get_property(path);
            format!("{}={s}:{}", path.join("."), text(&v))
        };
        for group in [
            vec![
                show(&["request", "path"]),
                show(&["request", "url_path"]),
                show(&["request", "method"]),
                show(&["request", "host"]),
            ],
            vec![
                show(&["request", "scheme"]),
                show(&["request", "protocol"]),
                show(&["request", "query"]),
            ],
            vec![
                show(&["xds", "route_name"]),
                show(&["plugin_name"]),
                show(&["plugin_vm_id"]),
                show(&["plugin_root_id"]),
            ],
        ] {
            self.say(&format!("props {}", group.join(" ")));
        }
        let (ts, time) = raw::get_property(&["request", "time"]);
        let (as_, address) = raw::get_property(&["source", "address"]);
        let address = text(&address);
        let (ps, port) = raw::get_property(&["source", "port"]);
        let (cs, _) = raw::get_property(&["response", "code"]);
        let (us, _) = raw::get_property(&["no", "such", "thing"]);
        let (is, id) = raw::get_property(&["request", "id"]);
        self.say(&format!(
            "props_shape time={ts}:{} source={as_}:{} port={ps}:{} response_code_in_request={cs} unknown={us} request_id={is}:{}",
            time.len(),
            address.starts_with("127.0.0.1:"),
            int(&port) > 0,
            id.len() == 36
        ));
        let set = raw::set_property(&["probe_flag"], b"yes");
        let (gs, got) = raw::get_property(&["probe_flag"]);
        self.say(&format!("props_set set={set} get={gs}:{}", text(&got)));
        Action::Continue
    }

    fn metrics_scenario(&mut self) -> Action {
        let (cs, counter) = raw::define_metric(0, "probe_counter");
        let (gs, gauge) = raw::define_metric(1, "probe_gauge");
        let (hs, histogram) = raw::define_metric(2, "probe_histogram");
        let (bad, _) = raw::define_metric(7, "probe_bad");
        let inc = unsafe { raw::proxy_increment_metric(counter, 1) };
        let inc_negative = unsafe { raw::proxy_increment_metric(counter, -1) };
        let record_counter = unsafe { raw::proxy_record_metric(counter, 4) };
        let counter_value = raw::get_metric(counter);
        let gauge_up = unsafe { raw::proxy_increment_metric(gauge, 5) };
        let gauge_down = unsafe { raw::proxy_increment_metric(gauge, -2) };
        let gauge_after_inc = raw::get_metric(gauge);
        let gauge_record = unsafe { raw::proxy_record_metric(gauge, 10) };
        let gauge_value = raw::get_metric(gauge);
        let hist_record = unsafe { raw::proxy_record_metric(histogram, 7) };
        let hist_inc = unsafe { raw::proxy_increment_metric(histogram, 1) };
        let hist_get = raw::get_metric(histogram).0;
        let unknown = raw::get_metric(999_999).0;
        self.say(&format!(
            "metrics define={cs},{gs},{hs} bad_type={bad} counter inc={inc} inc_negative={inc_negative} record={record_counter} value={}:{} gauge inc={gauge_up} dec={gauge_down} after={}:{} record={gauge_record} value={}:{} histogram record={hist_record} inc={hist_inc} get={hist_get} unknown_get={unknown}",
            counter_value.0, counter_value.1, gauge_after_inc.0, gauge_after_inc.1, gauge_value.0, gauge_value.1
        ));
        Action::Continue
    }

    fn callout_scenario(&mut self) -> Action {
        let bad_cluster = raw::http_call(
            "no_such_cluster",
            &[(":method", "GET"), (":path", "/"), (":authority", "x")],
            b"",
            1000,
        )
        .0;
        let no_path = raw::http_call(
            "backend",
            &[(":method", "GET"), (":authority", "x")],
            b"",
            1000,
        )
        .0;
        self.say(&format!(
            "callout_errors unknown_cluster={bad_cluster} missing_path={no_path}"
        ));
        match self.dispatch_http_call(
            "backend",
            vec![
                (":method", "GET"),
                (":path", "/status/201"),
                (":authority", "backend"),
            ],
            None,
            vec![],
            std::time::Duration::from_secs(5),
        ) {
            Ok(token) => self.say(&format!("callout dispatched token_nonzero={}", token != 0)),
            Err(status) => self.say(&format!("callout failed status={status:?}")),
        }
        Action::Pause
    }

    fn callout_timeout_scenario(&mut self) -> Action {
        match self.dispatch_http_call(
            "backend",
            vec![
                (":method", "GET"),
                (":path", "/delay/3000"),
                (":authority", "backend"),
            ],
            None,
            vec![],
            std::time::Duration::from_millis(200),
        ) {
            Ok(_) => self.say("callout_timeout dispatched"),
            Err(status) => self.say(&format!("callout_timeout failed status={status:?}")),
        }
        Action::Pause
    }

    fn queue_scenario(&mut self) -> Action {
        let vm_id = text(&raw::get_property(&["plugin_vm_id"]).1);
        let (rs, token) = raw::resolve_queue(&vm_id, QUEUE_NAME);
        let (missing, _) = raw::resolve_queue(&vm_id, "no-such-queue");
        let enq = raw::enqueue(token, format!("msg-{}", self.id).as_bytes());
        let bad = raw::enqueue(987_654, b"x");
        self.say(&format!("queue resolve={rs} same_token={} missing={missing} enqueue={enq} enqueue_bad_token={bad}", token == self.queue));
        Action::Continue
    }

    fn log_scenario(&mut self) -> Action {
        let (s, level) = raw::log_level();
        self.say(&format!("log_level status={s} level={level}"));
        for (lvl, name) in [
            (0, "trace"),
            (1, "debug"),
            (2, "info"),
            (3, "warn"),
            (4, "error"),
            (5, "critical"),
        ] {
            raw::log(lvl, &format!("PROBE[{}] level_line {name}", self.id));
        }
        let bad = raw::log(9, "bad level");
        self.say(&format!("log_bad_level={bad}"));
        Action::Continue
    }

    fn misc_scenario(&mut self) -> Action {
        let (ts, now) = raw::now();
        let plausible = now > 1_700_000_000_000_000_000;
        let own = unsafe { raw::proxy_set_effective_context(self.context_id) };
        let bad_ctx = unsafe { raw::proxy_set_effective_context(4_000_000) };
        let (fs, _) = raw::foreign("probe_no_such_function", b"");
        let cont_bad = unsafe { raw::proxy_continue_stream(9) };
        let (vs, _) = raw::get_buffer(VM_CONFIGURATION, 0, 100);
        let (pcs, _) = raw::get_buffer(PLUGIN_CONFIGURATION, 0, 100);
        let (cbs, _) = raw::get_buffer(HTTP_CALL_RESPONSE_BODY, 0, 100);
        let (rbs, _) = raw::get_buffer(REQUEST_BODY, 0, 100);
        let (bad_buf, _) = raw::get_buffer(42, 0, 100);
        self.say(&format!(
            "misc time={ts}:{plausible} effective_own={own} effective_bad={bad_ctx} foreign_unknown={fs} continue_bad_type={cont_bad} vm_config={vs} plugin_config_outside_configure={pcs} call_body_outside_call={cbs} request_body_in_headers={rbs} bad_buffer_type={bad_buf}"
        ));
        let call_headers = raw::get_map_value(HTTP_CALL_RESPONSE_HEADERS, ":status").0;
        let call_pairs = raw::get_map_pairs(HTTP_CALL_RESPONSE_HEADERS);
        self.say(&format!(
            "misc_call_maps get={call_headers} pairs={}:{}",
            call_pairs.0,
            call_pairs.1.len()
        ));
        Action::Continue
    }

    fn grpc_live_scenario(&mut self) -> Action {
        let cluster = self.header("x-grpc-cluster");
        let call = self.dispatch_grpc_call(
            &cluster,
            "probe.Service",
            "Unary",
            vec![("x-md", b"1".as_slice())],
            Some(b"ping".as_slice()),
            std::time::Duration::from_secs(1),
        );
        let stream = self.open_grpc_stream(&cluster, "probe.Service", "Stream", vec![]);
        let sent = match stream {
            Ok(token) => raw::grpc_send(token, b"hello", false),
            Err(_) => 99,
        };
        self.say(&format!(
            "grpc_live call={} stream={} first_send={sent}",
            call.is_ok(),
            stream.is_ok()
        ));
        if let (Ok(token), true) = (stream, self.header("x-grpc-cancel") == "1") {
            let cancel = raw::grpc_cancel(token);
            self.say(&format!("grpc_live cancel={cancel}"));
        }
        Action::Continue
    }

    /// Increments a shared counter with get + CAS set, retrying on CasMismatch: the pattern
    /// every filter's shared state uses. Logs how many attempts it took.
    fn increment_scenario(&mut self) -> Action {
        let key = "probe-counter";
        for attempt in 1..=64 {
            let (status, value, cas) = raw::get_shared(key);
            let current = if status == 0 {
                text(&value).parse::<u64>().unwrap_or(0)
            } else {
                0
            };
            let set = raw::set_shared(
                key,
                (current + 1).to_string().as_bytes(),
                if status == 0 { cas } else { 0 },
            );
            if set == 0 {
                self.say(&format!("incr value={} attempts={attempt}", current + 1));
                return Action::Continue;
            }
        }
        self.say("incr gave_up");
        Action::Continue
    }

    fn grpc_scenario(&mut self) -> Action {
        let unknown = raw::grpc_call("no_such_cluster", "Method", b"x").0;
        let unknown_stream = raw::grpc_stream("no_such_cluster", "Method").0;
        let send_bad = raw::grpc_send(77_777, b"x", false);
        let cancel_bad = raw::grpc_cancel(77_777);
        let close_bad = raw::grpc_close(77_777);
        self.say(&format!("grpc unknown_cluster={unknown} unknown_cluster_stream={unknown_stream} send_bad={send_bad} cancel_bad={cancel_bad} close_bad={close_bad}"));
        Action::Continue
    }
}
