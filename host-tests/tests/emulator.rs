//! The host's own tests: the probe module driven through every host call, on a virtual
//! clock, with several VMs sharing one world.

mod common;

use std::time::Duration;

use common::{line, probe_lines, probe_options, probe_request, VM_ID};
use host_tests::{
    load_module, Action, FailureKind, GrpcEvent, Headers, PluginOptions, WasmModule, World,
};

fn start(world: &World) -> host_tests::Vm {
    world.add_cluster("backend");
    world
        .start_vm(&load_module("probe"), &probe_options())
        .unwrap()
}

#[test]
fn probe_imports_only_what_envoy_links_and_starts_in_order() {
    let module = load_module("probe");
    let imports = module.imports();
    // The probe calls every proxy-wasm host function Envoy provides.
    for function in host_tests::abi::ENVOY_ENV_FUNCTIONS
        .iter()
        .filter(|f| f.starts_with("proxy_"))
    {
        assert!(
            imports.contains(&format!("env.{function}")),
            "probe does not exercise {function}"
        );
    }
    let world = World::new();
    let _vm = start(&world);
    let root: Vec<String> = world
        .logs()
        .into_iter()
        .map(|l| l.message)
        .filter(|m| m.starts_with("PROBE[root]"))
        .collect();
    assert_eq!(root.len(), 2, "{root:?}");
    assert!(
        root[0].starts_with("PROBE[root] vm_start vm_config_status=0"),
        "{}",
        root[0]
    );
    assert!(
        root[1].contains("configure status=0 size=12 config=\"probe-config\""),
        "{}",
        root[1]
    );
}

#[test]
fn a_module_importing_something_envoy_lacks_fails_to_load_naming_it() {
    let wat = r#"(module
        (import "env" "proxy_get_configuration" (func (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0))"#;
    let failure = WasmModule::from_bytes("old-abi.wasm", wat.as_bytes())
        .err()
        .expect("must not load");
    assert_eq!(failure.kind, FailureKind::Load);
    assert!(
        failure
            .message
            .contains("missing import: env.proxy_get_configuration"),
        "{failure}"
    );

    let wasi = r#"(module
        (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0))"#;
    let failure = WasmModule::from_bytes("wasi.wasm", wasi.as_bytes())
        .err()
        .expect("must not load");
    assert!(
        failure
            .message
            .contains("missing import: wasi_snapshot_preview1.sock_accept"),
        "{failure}"
    );

    let no_abi = r#"(module (memory (export "memory") 1)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0))"#;
    let failure = WasmModule::from_bytes("no-abi.wasm", no_abi.as_bytes())
        .err()
        .expect("must not load");
    assert!(failure.message.contains("ABI version"), "{failure}");
}

#[test]
fn restricted_calls_fail_while_the_module_initializes() {
    let wat = r#"(module
        (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "status-was-10")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
        (func (export "_initialize")
            (if (i32.eq (call $tick (i32.const 100)) (i32.const 10))
                (then (drop (call $log (i32.const 2) (i32.const 16) (i32.const 13)))))))"#;
    let module = WasmModule::from_bytes("init.wasm", wat.as_bytes()).unwrap();
    let world = World::new();
    world.start_vm(&module, &PluginOptions::new()).unwrap();
    let logs: Vec<String> = world.logs().into_iter().map(|l| l.message).collect();
    assert!(
        logs.iter()
            .any(|l| l
                .contains("restricted proxy-wasm capability: proxy_set_tick_period_milliseconds")),
        "{logs:?}"
    );
    assert!(logs.contains(&"status-was-10".to_string()), "{logs:?}");
}

#[test]
fn a_panicking_module_fails_with_its_panic_message_and_a_wasm_backtrace() {
    let world = World::new();
    let vm = start(&world);
    let mut stream = vm.stream();
    let failure = stream
        .try_send_request_headers(probe_request("p1", "panic", "GET", "/"), true)
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(
        failure.message.contains("probe panic requested id=p1"),
        "{failure}"
    );
    assert!(
        failure.message.contains("proxy_on_request_headers"),
        "{failure}"
    );
    assert!(
        failure.message.to_lowercase().contains("backtrace"),
        "{failure}"
    );
    // Envoy marks the VM failed: later streams on it fail too.
    let again = vm
        .stream()
        .try_send_request_headers(probe_request("p2", "headers", "GET", "/"), true)
        .unwrap_err();
    assert_eq!(again.kind, FailureKind::VmFailed);
}

#[test]
fn a_status_the_sdk_panics_on_fails_the_test_with_the_sdk_message() {
    let world = World::new();
    let vm = start(&world);
    let mut stream = vm.stream();
    assert_eq!(
        stream.send_request_headers(probe_request("u1", "sdk-misuse", "GET", "/"), true),
        Action::Continue
    );
    let failure = stream
        .try_send_response_headers([(":status", "200")], true)
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(
        failure.message.contains("proxy_on_response_headers"),
        "{failure}"
    );
    assert!(
        failure.message.contains("unexpected status: 2"),
        "{failure}"
    );
    assert!(
        failure.message.contains("get_map_value"),
        "backtrace names the SDK call: {failure}"
    );
}

#[test]
fn a_rejected_configuration_is_reported_with_the_modules_reason() {
    let world = World::new();
    let failure = world
        .start_vm(
            &load_module("probe"),
            &probe_options().configuration("please reject"),
        )
        .err()
        .expect("configuration must be rejected");
    assert_eq!(failure.kind, FailureKind::Rejected);
    assert!(
        failure
            .message
            .contains("configuration asks to be rejected"),
        "{failure}"
    );
}

#[test]
fn headers_are_read_mutated_and_forwarded_as_envoy_does() {
    let world = World::new();
    let vm = start(&world);
    let mut stream = vm.stream();
    let mut request = probe_request("h1", "headers", "GET", "/echo");
    request.add("x-multi", "a");
    request.add("x-multi", "b");
    request.add("x-replace", "old");
    request.add("x-remove", "gone");
    request.add("x-set-pairs", "1");
    assert_eq!(stream.send_request_headers(request, true), Action::Continue);
    let lines = probe_lines(&world, "h1");
    assert_eq!(
        line(&lines, "get"),
        "PROBE[h1] get method=0:GET multi=0:a missing=1"
    );
    assert!(line(&lines, "pairs").contains("names=:authority,:method,:path,:scheme,x-forwarded-proto,x-multi,x-multi,x-probe,x-probe-id,x-remove,x-replace,x-request-id,x-set-pairs"), "{lines:#?}");
    assert_eq!(
        line(&lines, "response_map_in_request_phase"),
        "PROBE[h1] response_map_in_request_phase get=2 pairs=0:0 add=2"
    );
    assert_eq!(
        line(&lines, "mutate"),
        "PROBE[h1] mutate add=0 replace=0 remove=0 remove_missing=0 size_status=0"
    );
    assert_eq!(
        line(&lines, "after"),
        "PROBE[h1] after x-added=yes x-replace=new x-remove=<none>"
    );
    assert_eq!(
        line(&lines, "set_pairs"),
        "PROBE[h1] set_pairs status=0 x-set-by-pairs=1"
    );
    let upstream = stream.upstream_request().expect("request forwarded");
    assert_eq!(upstream.header("x-added").as_deref(), Some("yes"));
    assert_eq!(upstream.header("x-remove"), None);
    assert!(upstream.complete);
    stream.respond(200, &[("content-type", "text/plain")], b"ok");
    let response = stream.response().unwrap();
    assert_eq!(response.header("x-probe-saw").as_deref(), Some("headers"));
    // After Continue Envoy drops the request map: response-phase reads get BadArgument.
    assert!(
        line(&probe_lines(&world, "h1"), "response_headers").ends_with("request_headers_status=2")
    );
    stream.finish();
    let lines = probe_lines(&world, "h1");
    let tail: Vec<&str> = lines
        .iter()
        .rev()
        .take(2)
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(
        tail,
        ["on_done", "on_log"],
        "log runs before done: {lines:#?}"
    );
    assert!(
        line(&lines, "on_log").contains("path=0:/echo status=0:200 request_trailers_status=1"),
        "{lines:#?}"
    );
}

#[test]
fn a_local_reply_runs_the_filters_response_callbacks_and_a_second_is_ignored() {
    let world = World::new();
    let vm = start(&world);
    let mut stream = vm.stream();
    assert_eq!(
        stream.send_request_headers(probe_request("l1", "local", "GET", "/"), true),
        Action::Pause
    );
    let reply = stream.local_reply().expect("local reply sent");
    assert_eq!(reply.status, 418);
    assert_eq!(reply.details, "probe_teapot");
    let response = stream.response().expect("client got the local reply");
    assert_eq!(response.status(), Some(418));
    assert_eq!(response.header("x-local").as_deref(), Some("1"));
    assert_eq!(response.header("x-probe-saw").as_deref(), Some("local"));
    assert_eq!(response.body_text(), "teapot\n");
    assert!(
        stream.upstream_request().is_none(),
        "nothing reaches the upstream"
    );
    let lines = probe_lines(&world, "l1");
    assert_eq!(
        line(&lines, "local_reply"),
        "PROBE[l1] local_reply first=0 second=0"
    );
    assert!(line(&lines, "response_headers").contains("status=418 content_type=Some(\"text/plain\") content_length=Some(\"7\") x_local=Some(\"1\")"), "{lines:#?}");
    assert_eq!(
        line(&lines, "response_body"),
        "PROBE[l1] response_body size=7 eos=true get=0:\"teapot\\n\""
    );
}

#[test]
fn shared_data_follows_envoys_cas_rules() {
    let world = World::new();
    let vm = start(&world);
    vm.stream()
        .send_request_headers(probe_request("s1", "shared", "GET", "/"), true);
    let lines = probe_lines(&world, "s1");
    assert_eq!(
        line(&lines, "shared"),
        "PROBE[s1] shared missing=1 set1=0 get1=0:v1 cas_nonzero=true set2=0 cas_changed=true stale=8 value_after_stale=v2 cas_on_missing=0 unconditional=0 last=v4 cas_grew=true"
    );
    // ABI 0.2.1 has no delete: setting an empty value keeps the key.
    assert_eq!(
        line(&lines, "shared_empty"),
        "PROBE[s1] shared_empty set=0 get=0 len=0"
    );
    assert!(world.shared_data(VM_ID, "probe-shared-s1").is_some());
    assert!(
        world
            .shared_data("other-vm-id", "probe-shared-s1")
            .is_none(),
        "shared data is per vm_id"
    );
}

#[test]
fn concurrent_vms_incrementing_with_cas_lose_no_update() {
    let world = World::new();
    let vms = {
        world.add_cluster("backend");
        world
            .start_vms(&load_module("probe"), &probe_options(), 4)
            .unwrap()
    };
    vms[0]
        .stream()
        .send_request_headers(probe_request("seed", "incr", "GET", "/"), true);
    let per_vm = 150;
    std::thread::scope(|scope| {
        for (n, vm) in vms.iter().enumerate() {
            scope.spawn(move || {
                for i in 0..per_vm {
                    let mut s = vm.stream();
                    s.send_request_headers(
                        probe_request(&format!("c{n}-{i}"), "incr", "GET", "/"),
                        true,
                    );
                    s.finish();
                }
            });
        }
    });
    let (value, _) = world.shared_data(VM_ID, "probe-counter").unwrap();
    assert_eq!(
        String::from_utf8(value).unwrap(),
        (1 + 4 * per_vm).to_string()
    );
}

#[test]
fn a_lost_cas_race_is_retried_deterministically() {
    let world = World::new();
    let vm = start(&world);
    vm.stream()
        .send_request_headers(probe_request("r0", "incr", "GET", "/"), true);
    world.interfere_with_next_sets(VM_ID, "probe-counter", 3);
    vm.stream()
        .send_request_headers(probe_request("r1", "incr", "GET", "/"), true);
    assert_eq!(
        line(&probe_lines(&world, "r1"), "incr"),
        "PROBE[r1] incr value=2 attempts=4"
    );
}

#[test]
fn ticks_fire_per_vm_as_the_virtual_clock_advances() {
    let world = World::new();
    world.add_cluster("backend");
    let module = load_module("probe");
    let _a = world
        .start_vm(&module, &probe_options().configuration("tick_ms=100"))
        .unwrap();
    world.advance(Duration::from_millis(50)).unwrap();
    let _b = world
        .start_vm(&module, &probe_options().configuration("tick_ms=300"))
        .unwrap();
    world.advance(Duration::from_millis(600)).unwrap();
    let ticks: Vec<(usize, String)> = world
        .logs()
        .into_iter()
        .filter(|l| l.message.contains(" tick "))
        .map(|l| (l.vm, l.message.rsplit('=').next().unwrap().to_string()))
        .collect();
    let at = |vm: usize| -> Vec<u64> {
        ticks
            .iter()
            .filter(|(v, _)| *v == vm)
            .map(|(_, t)| t.parse::<u64>().unwrap() % 100_000)
            .collect()
    };
    // VM 0 ticks every 100 ms from its start; VM 1 every 300 ms from 50 ms.
    assert_eq!(at(0).len(), 6, "{ticks:?}");
    assert_eq!(at(1).len(), 2, "{ticks:?}");
    let base = at(0)[0] - 100;
    assert_eq!(
        at(0).iter().map(|t| t - base).collect::<Vec<_>>(),
        [100, 200, 300, 400, 500, 600]
    );
    assert_eq!(
        at(1).iter().map(|t| t - base).collect::<Vec<_>>(),
        [350, 650]
    );
}

#[test]
fn callouts_can_be_inspected_answered_reset_and_timed_out() {
    let world = World::new();
    let vm = start(&world);

    let mut answered = vm.stream();
    assert_eq!(
        answered.send_request_headers(probe_request("k1", "callout", "GET", "/"), true),
        Action::Pause
    );
    let lines = probe_lines(&world, "k1");
    assert_eq!(
        line(&lines, "callout_errors"),
        "PROBE[k1] callout_errors unknown_cluster=2 missing_path=2"
    );
    let calls = world.pending_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].upstream, "backend");
    assert_eq!(calls[0].header(":path").as_deref(), Some("/status/201"));
    assert_eq!(calls[0].timeout, Duration::from_secs(5));
    assert!(
        answered.upstream_request().is_none(),
        "held while the callout runs"
    );
    world
        .respond_http_call(
            calls[0].id,
            201,
            &[("content-type", "text/plain")],
            b"status 201\n",
        )
        .unwrap();
    let lines = probe_lines(&world, "k1");
    assert_eq!(line(&lines, "call_response"), "PROBE[k1] call_response token_nonzero=true has_headers=true trailers=0 status=0:201 body_size=11 body=0:\"status 201\\n\"");
    assert_eq!(
        line(&lines, "resumed"),
        "PROBE[k1] resumed add=0 continue=0"
    );
    assert_eq!(
        line(&lines, "after_continue"),
        "PROBE[k1] after_continue request_headers_status=2"
    );
    let upstream = answered
        .upstream_request()
        .expect("released after the callout");
    assert_eq!(upstream.header("x-callout-status").as_deref(), Some("201"));

    let mut reset = vm.stream();
    reset.send_request_headers(probe_request("k2", "callout", "GET", "/"), true);
    let id = world.pending_http_calls()[0].id;
    world.reset_http_call(id).unwrap();
    let lines = probe_lines(&world, "k2");
    assert!(
        line(&lines, "call_response").contains("has_headers=false"),
        "{lines:#?}"
    );
    assert_eq!(
        line(&lines, "call_failed"),
        "PROBE[k2] call_failed get_status=0 code=11 message=reset"
    );

    let mut slow = vm.stream();
    slow.send_request_headers(probe_request("k3", "callout-timeout", "GET", "/"), true);
    world.advance(Duration::from_millis(199)).unwrap();
    assert!(probe_lines(&world, "k3")
        .iter()
        .all(|l| !l.contains("call_response")));
    world.advance(Duration::from_millis(1)).unwrap();
    let lines = probe_lines(&world, "k3");
    assert!(
        line(&lines, "call_response")
            .contains("status=0:504 body_size=24 body=0:\"upstream request timeout\""),
        "{lines:#?}"
    );
    assert!(world.pending_http_calls().is_empty());

    // A stream that ends cancels its callout.
    let mut gone = vm.stream();
    gone.send_request_headers(probe_request("k4", "callout", "GET", "/"), true);
    gone.finish();
    assert!(world.pending_http_calls().is_empty());
}

#[test]
fn queue_notifications_arrive_asynchronously_on_the_registrant() {
    let world = World::new();
    world.add_cluster("backend");
    let module = load_module("probe");
    let vms = world.start_vms(&module, &probe_options(), 2).unwrap();
    vms[0]
        .stream()
        .send_request_headers(probe_request("q1", "queue", "GET", "/"), true);
    let lines = probe_lines(&world, "q1");
    assert_eq!(
        line(&lines, "queue"),
        "PROBE[q1] queue resolve=0 same_token=true missing=1 enqueue=0 enqueue_bad_token=1"
    );
    let ready: Vec<_> = world
        .logs()
        .into_iter()
        .filter(|l| l.message.contains("queue_ready item=msg-q1"))
        .collect();
    assert_eq!(ready.len(), 1);
    assert_eq!(
        ready[0].vm, 1,
        "the last VM to register the queue receives it"
    );
    let request_line = world
        .logs()
        .iter()
        .position(|l| l.message.starts_with("PROBE[q1] queue "))
        .unwrap();
    let ready_line = world
        .logs()
        .iter()
        .position(|l| l.message.contains("queue_ready item=msg-q1"))
        .unwrap();
    assert!(
        ready_line > request_line,
        "delivered after the enqueuing callback returned"
    );
    assert!(world
        .logs()
        .iter()
        .any(|l| l.message == "PROBE[queue] drained status=7"));
}

#[test]
fn metrics_follow_envoys_rules_and_are_shared_across_vms() {
    let world = World::new();
    world.add_cluster("backend");
    let vms = world
        .start_vms(&load_module("probe"), &probe_options(), 2)
        .unwrap();
    vms[0]
        .stream()
        .send_request_headers(probe_request("m1", "metrics", "GET", "/"), true);
    assert_eq!(
        line(&probe_lines(&world, "m1"), "metrics"),
        "PROBE[m1] metrics define=0,0,0 bad_type=2 counter inc=0 inc_negative=2 record=0 value=0:5 gauge inc=0 dec=0 after=0:3 record=0 value=0:10 histogram record=0 inc=2 get=2 unknown_get=2"
    );
    vms[1]
        .stream()
        .send_request_headers(probe_request("m2", "metrics", "GET", "/"), true);
    assert_eq!(
        world.metric("probe_counter"),
        Some(10),
        "one stat per name across workers"
    );
    assert_eq!(world.metric("probe_gauge"), Some(10));
    assert_eq!(world.histogram_samples("probe_histogram"), vec![7, 7]);
}

#[test]
fn bodies_are_buffered_cumulatively_and_replaced() {
    let world = World::new();
    let vm = start(&world);
    let mut stream = vm.stream();
    assert_eq!(
        stream.send_request_headers(probe_request("b1", "body", "POST", "/echo"), false),
        Action::Continue
    );
    assert_eq!(stream.send_request_body(b"hello ", false), Action::Pause);
    assert_eq!(stream.send_request_body(b"world", true), Action::Continue);
    let lines = probe_lines(&world, "b1");
    let bodies: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" request_body "))
        .collect();
    assert!(
        bodies[0].contains("size=6 eos=false get=0:\"hello \" buffer_status=0:6"),
        "{bodies:?}"
    );
    assert!(
        bodies[1].contains("size=11 eos=true get=0:\"hello world\" buffer_status=0:11"),
        "{bodies:?}"
    );
    assert_eq!(
        line(&lines, "request_body_replaced"),
        "PROBE[b1] request_body_replaced set=0 now=\"HELLO WORLD\""
    );
    let upstream = stream.upstream_request().unwrap();
    assert_eq!(upstream.body_text(), "HELLO WORLD");
    assert!(upstream.complete);
}

#[test]
fn body_waits_while_headers_are_paused_and_reaches_the_filter_on_resume() {
    let world = World::new();
    let vm = start(&world);
    let mut stream = vm.stream();
    assert_eq!(
        stream.send_request_headers(probe_request("pb", "pause-body", "POST", "/echo"), false),
        Action::Pause
    );
    assert_eq!(
        stream.send_request_body(b"data", true),
        Action::Pause,
        "held, not delivered"
    );
    assert!(probe_lines(&world, "pb")
        .iter()
        .all(|l| !l.contains("request_body")));
    let call = world.pending_http_calls()[0].id;
    world.respond_http_call(call, 201, &[], b"").unwrap();
    let lines = probe_lines(&world, "pb");
    assert!(
        line(&lines, "request_body").contains("size=4 eos=true get=0:\"data\""),
        "{lines:#?}"
    );
    let upstream = stream.upstream_request().expect("released by the callout");
    assert_eq!(upstream.body_text(), "data");
    assert!(upstream.complete);
}

#[test]
fn close_stream_resets_the_stream_after_the_callback() {
    let world = World::new();
    let vm = start(&world);
    let mut stream = vm.stream();
    stream.send_request_headers(probe_request("x1", "close", "GET", "/"), true);
    assert!(stream.is_reset());
    assert_eq!(
        line(&probe_lines(&world, "x1"), "close"),
        "PROBE[x1] close status=0"
    );
}

#[test]
fn properties_use_envoys_names_and_encodings() {
    let world = World::new();
    let vm = start(&world);
    let mut stream = vm.stream();
    stream.send_request_headers(probe_request("pr", "props", "GET", "/p/a?q=1"), true);
    stream.respond(204, &[], b"");
    let lines = probe_lines(&world, "pr");
    let props: Vec<&String> = lines.iter().filter(|l| l.contains(" props ")).collect();
    assert_eq!(props[0], "PROBE[pr] props request.path=0:/p/a?q=1 request.url_path=0:/p/a request.method=0:GET request.host=0:probe.test");
    assert_eq!(
        props[1],
        "PROBE[pr] props request.scheme=0:http request.protocol=0:HTTP/1.1 request.query=0:q=1"
    );
    assert_eq!(props[2], "PROBE[pr] props xds.route_name=0:probe-route plugin_name=0:probe plugin_vm_id=0:probe-vm plugin_root_id=0:");
    assert_eq!(line(&lines, "props_shape"), "PROBE[pr] props_shape time=0:8 source=0:true port=0:true response_code_in_request=1 unknown=1 request_id=0:true");
    assert_eq!(
        line(&lines, "props_set"),
        "PROBE[pr] props_set set=0 get=0:yes"
    );
    assert_eq!(
        line(&lines, "response_props"),
        "PROBE[pr] response_props code=0:204 cluster=0:backend"
    );
}

#[test]
fn grpc_calls_and_streams_can_be_driven_by_the_test() {
    let world = World::new();
    world.add_cluster("grpc-backend");
    let vm = start(&world);
    let mut stream = vm.stream();
    let mut request = probe_request("g1", "grpc-live", "GET", "/");
    request.add("x-grpc-cluster", "grpc-backend");
    stream.send_request_headers(request, true);
    assert_eq!(
        line(&probe_lines(&world, "g1"), "grpc_live"),
        "PROBE[g1] grpc_live call=true stream=true first_send=0"
    );
    let calls = world.pending_grpc_calls();
    let unary = calls.iter().find(|c| !c.is_stream).unwrap();
    assert_eq!(
        (unary.service_name.as_str(), unary.method.as_str()),
        ("probe.Service", "Unary")
    );
    assert_eq!(unary.messages, vec![b"ping".to_vec()]);
    assert_eq!(unary.initial_metadata.get("x-md").as_deref(), Some("1"));
    let streaming = calls.iter().find(|c| c.is_stream).unwrap().clone();
    assert_eq!(streaming.messages, vec![b"hello".to_vec()]);
    world
        .grpc_event(unary.id, GrpcEvent::Message(b"pong-unary".to_vec()))
        .unwrap();
    world
        .grpc_event(
            streaming.id,
            GrpcEvent::InitialMetadata(Headers::from([("x-meta", "m")])),
        )
        .unwrap();
    world
        .grpc_event(streaming.id, GrpcEvent::Message(b"ping".to_vec()))
        .unwrap();
    world
        .grpc_event(
            streaming.id,
            GrpcEvent::TrailingMetadata(Headers::from([("x-trail", "t")])),
        )
        .unwrap();
    let after = world
        .pending_grpc_calls()
        .into_iter()
        .find(|c| c.id == streaming.id)
        .unwrap();
    assert_eq!(after.messages, vec![b"hello".to_vec(), b"pong".to_vec()]);
    world
        .grpc_event(
            streaming.id,
            GrpcEvent::Close {
                status: 0,
                message: String::new(),
            },
        )
        .unwrap();
    let lines = probe_lines(&world, "g1");
    assert!(
        line(&lines, "grpc_response").contains("status=0 message=0:\"pong-unary\""),
        "{lines:#?}"
    );
    assert_eq!(
        line(&lines, "grpc_stream_initial_metadata"),
        "PROBE[g1] grpc_stream_initial_metadata n=1 x-meta=m"
    );
    assert_eq!(
        line(&lines, "grpc_stream_message"),
        "PROBE[g1] grpc_stream_message \"ping\" reply=0"
    );
    assert_eq!(
        line(&lines, "grpc_stream_trailing_metadata"),
        "PROBE[g1] grpc_stream_trailing_metadata n=1 x-trail=t"
    );
    assert_eq!(
        line(&lines, "grpc_stream_close"),
        "PROBE[g1] grpc_stream_close status=0 close_after=1"
    );
}

#[test]
fn the_root_context_shuts_down_through_proxy_done() {
    let world = World::new();
    let vm = start(&world);
    assert!(
        vm.shutdown().unwrap(),
        "on_done returned false but proxy_done was called"
    );
    assert!(world
        .logs()
        .iter()
        .any(|l| l.message == "PROBE[root] root_done proxy_done=0"));
}
