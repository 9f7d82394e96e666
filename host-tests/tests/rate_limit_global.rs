//! rate_limit.wasm's global rules in our host: the gRPC call to a rate limit service
//! (Envoy's RLS protocol), answered by the test as a service would; OVER_LIMIT answers
//! remembered across workers; failure modes; the module's own deadline; edge_chain.

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use host_tests::{load_module, Action, GrpcEvent, Headers, PluginOptions, Stream, Vm, World};
use prost::Message;

const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";

fn start(world: &World, module: &str, config: &str, workers: usize) -> Vec<Vm> {
    world.add_cluster("ratelimit");
    world.add_cluster("api-v1");
    let options = PluginOptions::new()
        .vm_id("edgewise")
        .plugin_name(module)
        .configuration(config);
    world
        .start_vms(&load_module(module), &options, workers)
        .unwrap_or_else(|f| panic!("{f}"))
}

fn send(vm: &Vm, user: &str) -> (Stream, Action) {
    let mut s = vm.stream();
    let action = s.send_request_headers(
        Headers::from([
            (":method", "GET"),
            (":path", "/api/x"),
            (":authority", "shop.example.com"),
            ("x-user", user),
        ]),
        true,
    );
    (s, action)
}

/// The one pending call, decoded.
fn pending_call(world: &World) -> (u64, RateLimitRequest) {
    let calls = world.pending_grpc_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(
        (call.service_name.as_str(), call.method.as_str()),
        (SERVICE, "ShouldRateLimit")
    );
    let request = RateLimitRequest::decode(call.messages[0].as_slice()).unwrap();
    (call.id, request)
}

fn answer(world: &World, id: u64, code: Code, remaining: u32, reset_secs: i64) {
    let response = RateLimitResponse {
        overall_code: code as i32,
        statuses: vec![DescriptorStatus {
            code: code as i32,
            current_limit: Some(RateLimit {
                name: String::new(),
                requests_per_unit: 100,
                unit: 2,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(ProtoDuration {
                seconds: reset_secs,
                nanos: 0,
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    world
        .grpc_event(id, GrpcEvent::Message(response.encode_to_vec()))
        .unwrap();
    world
        .grpc_event(
            id,
            GrpcEvent::Close {
                status: 0,
                message: String::new(),
            },
        )
        .unwrap();
}

const GLOBAL: &str = r#"{"rules":[{"name":"api","key":"header:x-user",
  "global":{"cluster":"ratelimit","domain":"shop","timeout":"20ms"}}]}"#;

#[test]
fn the_service_is_asked_with_the_rules_descriptor_and_an_ok_lets_the_request_on() {
    let world = World::new();
    let vms = start(&world, "rate_limit", GLOBAL, 2);
    let (mut s, action) = send(&vms[0], "ann");
    assert_eq!(action, Action::Pause, "waits for the service");
    assert!(s.upstream_request().is_none());
    let (id, request) = pending_call(&world);
    assert_eq!(request.domain, "shop");
    let entries: Vec<(String, String)> = request.descriptors[0]
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert_eq!(
        entries,
        [
            ("rule".into(), "api".into()),
            ("header:x-user".into(), "ann".into())
        ]
    );
    assert!(
        request.descriptors[0].limit.is_none(),
        "the service's limit"
    );
    answer(&world, id, Code::Ok, 41, 36);
    assert!(s.upstream_request().is_some(), "resumed by the answer");
    s.respond(200, &[], b"ok");
    let r = s.response().unwrap();
    assert_eq!(
        r.header("ratelimit-policy").as_deref(),
        Some("\"api\";q=100;w=60")
    );
    assert_eq!(r.header("ratelimit").as_deref(), Some("\"api\";r=41;t=36"));
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=api;.;allowed"),
        Some(1)
    );
}

#[test]
fn an_over_limit_answer_denies_and_is_remembered_on_every_worker() {
    let world = World::new();
    let vms = start(&world, "rate_limit", GLOBAL, 2);
    let (s, _) = send(&vms[0], "bob");
    let (id, _) = pending_call(&world);
    answer(&world, id, Code::OverLimit, 0, 7);
    let r = s.response().expect("denied");
    assert_eq!(
        (r.status(), r.header("retry-after").as_deref()),
        (Some(429), Some("7"))
    );
    // The same client on the other worker: denied with no call.
    let (s2, action) = send(&vms[1], "bob");
    assert_eq!(action, Action::Pause);
    assert!(
        world.pending_grpc_calls().is_empty(),
        "no call for a remembered denial"
    );
    assert_eq!(s2.response().unwrap().status(), Some(429));
    // Another client is asked as usual; after the reset, so is bob.
    let _cyd = send(&vms[1], "cyd");
    assert_eq!(world.pending_grpc_calls().len(), 1);
    world.advance(Duration::from_secs(7)).unwrap();
    // (A stream's pending call ends with the stream, as in Envoy: keep it open.)
    let _bob_again = send(&vms[0], "bob");
    assert_eq!(
        world.pending_grpc_calls().len(),
        2,
        "asked again after the reset"
    );
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=api;.;denied"),
        Some(2)
    );
}

/// Service errors and silence: `failure_mode: allow` lets the request on, `deny` answers
/// with the deny reply; a service that never answers costs at most the timeout (+ a tick).
#[test]
fn failure_modes_apply_to_errors_and_to_silence() {
    for (mode, denied) in [("allow", false), ("deny", true)] {
        let world = World::new();
        let config = GLOBAL.replace(
            r#""timeout":"20ms""#,
            &format!(r#""timeout":"20ms","failure_mode":"{mode}""#),
        );
        let vms = start(&world, "rate_limit", &config, 1);
        // An error answer (UNAVAILABLE, no message).
        let (s, _) = send(&vms[0], "ann");
        let (id, _) = pending_call(&world);
        world
            .grpc_event(
                id,
                GrpcEvent::Close {
                    status: 14,
                    message: "unavailable".into(),
                },
            )
            .unwrap();
        assert_eq!(s.response().is_some(), denied, "{mode}: error");
        assert_eq!(s.upstream_request().is_some(), !denied, "{mode}: error");
        // Silence: nothing before the deadline, the failure mode right after it.
        let (s, action) = send(&vms[0], "bob");
        assert_eq!(action, Action::Pause);
        world.advance(Duration::from_millis(10)).unwrap();
        assert!(
            s.response().is_none() && s.upstream_request().is_none(),
            "{mode}: waiting"
        );
        world.advance(Duration::from_millis(15)).unwrap();
        assert_eq!(s.response().is_some(), denied, "{mode}: silence");
        assert_eq!(s.upstream_request().is_some(), !denied, "{mode}: silence");
        if denied {
            assert_eq!(s.response().unwrap().status(), Some(429));
        }
        assert_eq!(
            world.metric("edgewise.rate_limit.rule=.=api;.;errors"),
            Some(2)
        );
        // The late answer changes nothing and nothing traps.
        let late = world.pending_grpc_calls();
        if let Some(call) = late.first() {
            answer(&world, call.id, Code::OverLimit, 0, 1);
        }
        assert!(vms[0].failure().is_none());
    }
}

/// Local rules run first: a request they deny never costs a call; a rule's own limit and
/// window travel as the descriptor's override.
#[test]
fn local_rules_first_and_overrides_travel_with_the_descriptor() {
    let world = World::new();
    let vms = start(
        &world,
        "rate_limit",
        r#"{"rules":[
          {"name":"burst","key":"header:x-user","limit":1,"window":"1h"},
          {"name":"api","key":"header:x-user","limit":100,"window":"1m","global":{"cluster":"ratelimit"}}
        ]}"#,
        1,
    );
    let (_s, _) = send(&vms[0], "ann");
    let (id, request) = pending_call(&world);
    let limit = request.descriptors[0].limit.unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (100, 2));
    answer(&world, id, Code::Ok, 99, 1);
    let (denied, _) = send(&vms[0], "ann");
    assert_eq!(denied.response().unwrap().status(), Some(429));
    assert!(
        world.pending_grpc_calls().is_empty(),
        "denied locally: no call"
    );
}

/// In edge_chain the service's answer resumes the request through the rest of the chain
/// (the router picks its cluster after the answer).
#[test]
fn in_edge_chain_the_answer_runs_the_rest_of_the_chain() {
    let world = World::new();
    let config = format!(
        r#"{{"rate_limit":{GLOBAL},"weighted_router":{{"routes":[{{"name":"api","targets":[{{"cluster":"api-v1","weight":1}}]}}]}}}}"#
    );
    let vms = start(&world, "edge_chain", &config, 1);
    let (s, action) = send(&vms[0], "ann");
    assert_eq!(action, Action::Pause);
    let (id, _) = pending_call(&world);
    answer(&world, id, Code::Ok, 5, 1);
    let upstream = s.upstream_request().expect("resumed");
    assert_eq!(
        upstream.headers.get("x-route-cluster").as_deref(),
        Some("api-v1"),
        "the router ran after the answer"
    );
    let (denied, _) = send(&vms[0], "bob");
    let (id, _) = pending_call(&world);
    answer(&world, id, Code::OverLimit, 0, 3);
    assert_eq!(denied.response().unwrap().status(), Some(429));
    assert!(vms[0].failure().is_none());
}

#[test]
fn invalid_global_rules_are_refused_naming_the_field() {
    let cases = [
        (
            r#"{"rules":[{"name":"a","global":{"cluster":""}}]}"#,
            "rules[0].global.cluster",
        ),
        (
            r#"{"rules":[{"name":"a","global":{"cluster":"rl","failure_mode":"maybe"}}]}"#,
            "rules[0].global.failure_mode",
        ),
        (
            r#"{"rules":[{"name":"a","global":{"cluster":"rl","timeout":"0s"}}]}"#,
            "rules[0].global.timeout",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"window":"90s","global":{"cluster":"rl"}}]}"#,
            "rules[0].window",
        ),
        (
            r#"{"rules":[{"name":"a","limit":5,"global":{"cluster":"rl"}}]}"#,
            "rules[0].limit",
        ),
        (
            r#"{"rules":[{"name":"a","burst":5,"global":{"cluster":"rl"}}]}"#,
            "rules[0].burst",
        ),
        (r#"{"rules":[{"name":"a"}]}"#, "rules[0].limit"),
        (
            r#"{"rules":[{"name":"q","limit":1,"window":"1s","queue":{"max_delay":"1s"}},{"name":"g","global":{"cluster":"rl"}}]}"#,
            "rules[0].queue",
        ),
    ];
    for (config, field) in cases {
        let world = World::new();
        let failure = world
            .start_vm(
                &load_module("rate_limit"),
                &PluginOptions::new().configuration(config),
            )
            .err()
            .unwrap_or_else(|| panic!("accepted: {config}"));
        let logs = world.logs();
        assert!(
            logs.iter()
                .any(|l| l.message.contains(&format!("`{field}`"))),
            "{config}: expected {field}, logged {logs:?} ({failure})"
        );
    }
}

/// Lease mode (`batch`): a call asks for N hits; the N − 1 beyond the request's are spent by
/// the next requests of any worker with no call; then a call again.
#[test]
fn lease_mode_spends_prepaid_hits_across_workers_without_calls() {
    let world = World::new();
    let config = GLOBAL.replace(r#""timeout":"20ms""#, r#""timeout":"20ms","batch":5"#);
    let vms = start(&world, "rate_limit", &config, 2);
    let (first, _) = send(&vms[0], "ann");
    let (id, request) = pending_call(&world);
    assert_eq!(
        request.descriptors[0].hits_addend.map(|h| h.value),
        Some(5),
        "asks for the batch"
    );
    answer(&world, id, Code::Ok, 95, 1);
    assert!(first.upstream_request().is_some());
    let mut streams = Vec::new();
    for i in 0..4 {
        let (s, action) = send(&vms[i % 2], "ann");
        assert_eq!(action, Action::Continue, "leased hit {i}: no call");
        streams.push(s);
    }
    assert!(world.pending_grpc_calls().is_empty());
    let (_s, action) = send(&vms[1], "ann");
    assert_eq!(action, Action::Pause, "the lease is spent: a call again");
    assert_eq!(world.pending_grpc_calls().len(), 1);
    assert_eq!(
        world.metric("edgewise.rate_limit.rule=.=api;.;allowed"),
        Some(5)
    );
}

/// A reconfiguration while requests wait on the service: each waiting request is judged by
/// the configuration it started under (its rule indices mean nothing in the new one), by its
/// deadline as by an answer — never the new rules, never a trap.
#[test]
fn waiting_requests_keep_their_configuration_across_a_reconfiguration() {
    let world = World::new();
    let three = r#"{"rules":[
      {"name":"a","match":{"path_prefix":"/a/"},"global":{"cluster":"ratelimit"}},
      {"name":"b","match":{"path_prefix":"/b/"},"global":{"cluster":"ratelimit"}},
      {"name":"api","key":"header:x-user","global":{"cluster":"ratelimit","domain":"shop","timeout":"20ms","failure_mode":"deny"}}],
      "response_headers":"ietf"}"#;
    let vms = start(&world, "rate_limit", three, 1);
    let (silent, action) = send(&vms[0], "ann");
    assert_eq!(action, Action::Pause);
    let (answered, _) = send(&vms[0], "bob");
    let calls = world.pending_grpc_calls();
    assert_eq!(calls.len(), 2);
    // One rule, failing open: had the waiting requests been judged by it, both would go on.
    let one = GLOBAL.replace(
        r#""timeout":"20ms""#,
        r#""timeout":"20ms","failure_mode":"allow""#,
    );
    vms[0].reconfigure(one).unwrap();
    answer(&world, calls[1].id, Code::OverLimit, 0, 30);
    let denied = answered.response().expect("denied by its own rule");
    assert_eq!(denied.status(), Some(429));
    assert_eq!(
        denied.header("ratelimit").as_deref(),
        Some("\"api\";r=0;t=30"),
        "the headers name the rule it waited on"
    );
    world.advance(Duration::from_millis(30)).unwrap();
    assert_eq!(
        silent.response().and_then(|r| r.status()),
        Some(429),
        "its deadline applies its own failure_mode: deny"
    );
    assert!(silent.upstream_request().is_none());
    assert!(vms[0].failure().is_none(), "{:?}", vms[0].failure());
    // New requests follow the new configuration.
    let (next, _) = send(&vms[0], "cat");
    // The silent call is still open (never answered): the new one is the last.
    let id = world.pending_grpc_calls().last().unwrap().id;
    world
        .grpc_event(
            id,
            GrpcEvent::Close {
                status: 14,
                message: "unavailable".into(),
            },
        )
        .unwrap();
    assert!(next.upstream_request().is_some(), "failure_mode allow");
}
