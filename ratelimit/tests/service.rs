//! The rate limit service as a real process against a real Redis: decisions over gRPC, exact
//! counts under concurrency, a denial spending nothing, overrides, Redis failures.

use envoy_harness::{redis_available, RateLimitService, Redis};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

const LIMITS: &str = r#"
domain: edgewise
descriptors:
  - key: rule
    value: per-client
    descriptors:
      - key: client_ip
        rate_limit: { unit: minute, requests_per_unit: 10 }
  - key: rule
    value: shared
    rate_limit: { unit: hour, requests_per_unit: 100 }
  - key: rule
    value: unlimited
"#;

/// LIMITS, with descriptor overrides allowed.
fn with_overrides() -> String {
    LIMITS.replace("domain: edgewise\n", "domain: edgewise\noverrides: true\n")
}

fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: pairs
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "edgewise".into(),
        descriptors,
        hits_addend: 0,
    }
}

async fn client(service: &RateLimitService) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{}", service.grpc))
        .await
        .expect("connect")
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    req: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    client.should_rate_limit(req).await.map(|r| r.into_inner())
}

fn setup() -> (Redis, RateLimitService) {
    assert!(
        redis_available(),
        "needs redis-server (cargo xtask test installs it: apt-get install redis-server)"
    );
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(LIMITS, &redis.url()).unwrap();
    (redis, service)
}

#[tokio::test]
async fn limits_per_descriptor_value_with_remaining_and_reset() {
    let (_redis, service) = setup();
    let mut c = client(&service).await;
    let ann = || {
        request(vec![descriptor(&[
            ("rule", "per-client"),
            ("client_ip", "192.0.2.1"),
        ])])
    };
    let mut remaining = Vec::new();
    for _ in 0..10 {
        let r = ask(&mut c, ann()).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
        let s = &r.statuses[0];
        assert_eq!(
            s.current_limit.as_ref().map(|l| l.requests_per_unit),
            Some(10)
        );
        remaining.push(s.limit_remaining);
    }
    assert_eq!(remaining, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    let denied = ask(&mut c, ann()).await.unwrap();
    assert_eq!(denied.overall_code, Code::OverLimit as i32);
    let wait = denied.statuses[0].duration_until_reset.unwrap();
    // One token refills every 6 s: the next hit fits in at most 6 s (wide tolerance).
    assert!(
        (4..=6).contains(&wait.seconds),
        "retry after {wait:?}, expected about 6 s"
    );
    // Another value of the same key has its own bucket.
    let bob = request(vec![descriptor(&[
        ("rule", "per-client"),
        ("client_ip", "192.0.2.2"),
    ])]);
    assert_eq!(
        ask(&mut c, bob).await.unwrap().overall_code,
        Code::Ok as i32
    );
    // A descriptor without a configured limit is OK and not counted.
    let free = ask(&mut c, request(vec![descriptor(&[("rule", "unlimited")])]))
        .await
        .unwrap();
    assert_eq!(free.overall_code, Code::Ok as i32);
    assert!(free.statuses[0].current_limit.is_none());
    assert_eq!(
        service
            .metric("edgewise_ratelimit_over_limit_total")
            .unwrap(),
        1
    );
}

/// 64 concurrent clients against one limit of 100: exactly 100 admitted (one atomic script
/// per decision), whichever connection asks.
#[tokio::test]
async fn concurrent_callers_get_exactly_the_limit() {
    let (_redis, service) = setup();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let mut c = client(&service).await;
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..4 {
                let r = ask(&mut c, request(vec![descriptor(&[("rule", "shared")])]))
                    .await
                    .unwrap();
                ok += (r.overall_code == Code::Ok as i32) as u32;
            }
            ok
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert_eq!(admitted, 100, "256 calls against 100 per hour");
}

/// A request denied by one of its descriptors spends nothing on the others; in a domain with
/// `overrides: true`, a descriptor's own `limit` override is used instead of the
/// configuration.
#[tokio::test]
async fn a_denial_spends_nothing_and_overrides_apply() {
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(&with_overrides(), &redis.url()).unwrap();
    let mut c = client(&service).await;
    let mut tight = descriptor(&[("rule", "shared"), ("tenant", "acme")]);
    tight.limit = Some(RateLimitOverride {
        requests_per_unit: 2,
        unit: 2, // minute
    });
    let both = || request(vec![descriptor(&[("rule", "shared")]), tight.clone()]);
    for _ in 0..2 {
        assert_eq!(
            ask(&mut c, both()).await.unwrap().overall_code,
            Code::Ok as i32
        );
    }
    for _ in 0..5 {
        let r = ask(&mut c, both()).await.unwrap();
        assert_eq!(r.overall_code, Code::OverLimit as i32);
        assert_eq!(r.statuses[0].code, Code::Ok as i32);
        assert_eq!(r.statuses[1].code, Code::OverLimit as i32);
        assert_eq!(
            r.statuses[1]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            2
        );
    }
    let alone = ask(&mut c, request(vec![descriptor(&[("rule", "shared")])]))
        .await
        .unwrap();
    assert_eq!(
        alone.statuses[0].limit_remaining, 97,
        "only the 2 admitted requests and this one were spent"
    );
}

/// Redis down: calls fail fast with UNAVAILABLE (the caller's failure mode decides) and the
/// health check says so; Redis back: decisions resume without restarting the service.
#[tokio::test]
async fn redis_failures_are_errors_and_recovery_needs_no_restart() {
    let (mut redis, service) = setup();
    let mut c = client(&service).await;
    let shared = || request(vec![descriptor(&[("rule", "shared")])]);
    assert!(ask(&mut c, shared()).await.is_ok());
    redis.stop();
    let started = std::time::Instant::now();
    let err = ask(&mut c, shared()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "failed in {:?}",
        started.elapsed()
    );
    assert_eq!(service.healthcheck().unwrap().status, 503);
    assert!(
        service
            .metric("edgewise_ratelimit_redis_errors_total")
            .unwrap()
            >= 1
    );
    redis.restart().unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        if ask(&mut c, shared()).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "the service reconnected to Redis");
    assert_eq!(service.healthcheck().unwrap().status, 200);
}

#[tokio::test]
async fn a_bad_limits_file_is_refused_naming_the_place() {
    let redis = Redis::start().unwrap();
    let err = RateLimitService::start(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
        &redis.url(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("did not start"), "{err}");
}

/// `algorithm: sliding_window`: at most the limit by the two-window estimate (the local
/// limiter's sliding_window), in the same atomic call as token buckets.
#[tokio::test]
async fn sliding_window_limits_hold_like_the_local_limiter() {
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(
        "domain: edgewise\ndescriptors:\n  - key: rule\n    value: sw\n    rate_limit: { unit: hour, requests_per_unit: 5, algorithm: sliding_window }\n",
        &redis.url(),
    )
    .unwrap();
    let mut c = client(&service).await;
    let sw = || request(vec![descriptor(&[("rule", "sw")])]);
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = ask(&mut c, sw()).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
        remaining.push(r.statuses[0].limit_remaining);
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let denied = ask(&mut c, sw()).await.unwrap();
    assert_eq!(denied.overall_code, Code::OverLimit as i32);
    let wait = denied.statuses[0].duration_until_reset.unwrap();
    assert!(wait.seconds > 0 && wait.seconds <= 3600, "{wait:?}");
    assert_eq!(
        service
            .metric("edgewise_ratelimit_over_limit_total")
            .unwrap(),
        1
    );
}

/// A calendar quota in the service: 3 per local month (+14:00, the earliest zone), then
/// OVER_LIMIT until the month's local end; a count stored for an earlier period is not
/// carried over (each period counts from zero).
#[tokio::test]
async fn a_calendar_quota_counts_per_local_month() {
    use edgewise_support::calendar::{Period, Unit};
    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(
        "domain: edgewise\ndescriptors:\n  - key: rule\n    value: quota\n    rate_limit: { unit: calendar_month, requests_per_unit: 3, utc_offset: \"+14:00\" }\n",
        &redis.url(),
    )
    .unwrap();
    // Last period's count, full: it must not count in this one.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let period = Period {
        unit: Unit::Month,
        offset_s: 14 * 3600,
    };
    let index = period.index(now_ns);
    let previous_end_us = period.end_ns(index - 1) / 1000;
    let set = |value: String| {
        let reply = redis
            .command(&format!("SET erl:edgewise|rule=quota \"{value}\""))
            .unwrap();
        assert_eq!(reply, "+OK");
    };
    set(format!("{previous_end_us} 3"));
    let mut c = client(&service).await;
    let quota = || request(vec![descriptor(&[("rule", "quota")])]);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = ask(&mut c, quota()).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
        remaining.push(r.statuses[0].limit_remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    let denied = ask(&mut c, quota()).await.unwrap();
    assert_eq!(denied.overall_code, Code::OverLimit as i32);
    let wait = denied.statuses[0].duration_until_reset.unwrap();
    let expected = (period.end_ns(index) - now_ns) / 1_000_000_000;
    // Tolerance: the seconds this test has run (stated: 5 s).
    assert!(
        (wait.seconds as i64 - expected as i64).abs() <= 5,
        "reset in {wait:?}, the local month ends in {expected} s"
    );
    // The key is the one the service reads: this period's count set back to 0 admits again.
    set(format!("{} 0", period.end_ns(index) / 1000));
    assert_eq!(
        ask(&mut c, quota()).await.unwrap().overall_code,
        Code::Ok as i32
    );
    let unit = denied.statuses[0].current_limit.as_ref().unwrap().unit;
    assert_eq!(
        unit,
        envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit::Month
            as i32
    );
}

/// SIGTERM: the service stops and exits 0 within its 5 s grace period, even while a client
/// (as Envoy does) keeps its HTTP/2 connection open.
#[tokio::test]
async fn sigterm_stops_it_gracefully() {
    let (_redis, mut service) = setup();
    let mut c = client(&service).await;
    assert!(
        ask(&mut c, request(vec![descriptor(&[("rule", "shared")])]))
            .await
            .is_ok()
    );
    let (status, took) = tokio::task::spawn_blocking(move || service.terminate())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < std::time::Duration::from_secs(8),
        "took {took:?} (grace period 5 s)"
    );
    drop(c);
}

/// Overrides are honoured only where the domain allows them, and an override counts in its
/// own key: a caller's 1/day never moves the configured bucket.
#[tokio::test]
async fn overrides_are_opt_in_and_never_share_the_configured_bucket() {
    let (_redis, service) = setup();
    let mut c = client(&service).await;
    let mut daily = descriptor(&[("rule", "shared")]);
    daily.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 4, // day
    });
    for _ in 0..3 {
        let r = ask(&mut c, request(vec![daily.clone()])).await.unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32, "the override is ignored");
        assert_eq!(
            r.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            100
        );
    }
    assert_eq!(
        service
            .metric("edgewise_ratelimit_overrides_ignored_total")
            .unwrap(),
        3
    );

    let redis = Redis::start().unwrap();
    let service = RateLimitService::start(&with_overrides(), &redis.url()).unwrap();
    let mut c = client(&service).await;
    let codes: Vec<i32> = {
        let mut codes = Vec::new();
        for _ in 0..2 {
            codes.push(
                ask(&mut c, request(vec![daily.clone()]))
                    .await
                    .unwrap()
                    .overall_code,
            );
        }
        codes
    };
    assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32]);
    let plain = ask(&mut c, request(vec![descriptor(&[("rule", "shared")])]))
        .await
        .unwrap();
    assert_eq!(plain.overall_code, Code::Ok as i32);
    assert_eq!(
        plain.statuses[0].limit_remaining, 99,
        "the configured bucket is its own: only this request spent from it"
    );
}

/// Calls over the service's bounds are refused with INVALID_ARGUMENT naming the bound; long
/// values are counted under a bounded hash, so client input never makes large Redis keys.
#[tokio::test]
async fn calls_over_the_bounds_are_refused_and_long_values_are_hashed() {
    let (redis, service) = setup();
    let mut c = client(&service).await;
    let refused = |r: Result<RateLimitResponse, tonic::Status>, bound: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(bound), "{e}");
    };
    let many = (0..33).map(|_| descriptor(&[("rule", "shared")])).collect();
    refused(ask(&mut c, request(many)).await, "--max-descriptors");
    let wide: Vec<(String, String)> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    let wide: Vec<(&str, &str)> = wide.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    refused(
        ask(&mut c, request(vec![descriptor(&wide)])).await,
        "--max-entries",
    );
    let mut heavy = request(vec![descriptor(&[("rule", "shared")])]);
    heavy.hits_addend = 2_000_000;
    refused(ask(&mut c, heavy).await, "--max-hits-addend");
    let huge = "x".repeat(10_000);
    refused(
        ask(
            &mut c,
            request(vec![descriptor(&[
                ("rule", "per-client"),
                ("client_ip", &huge),
            ])]),
        )
        .await,
        "--max-value-bytes",
    );
    assert_eq!(
        service.metric("edgewise_ratelimit_refused_total").unwrap(),
        4
    );

    // 300 distinct 5 KB values: 300 keys, each short.
    for i in 0..300 {
        let value = format!("{i:05}{}", "u".repeat(5_000));
        let r = ask(
            &mut c,
            request(vec![descriptor(&[
                ("rule", "per-client"),
                ("client_ip", &value),
            ])]),
        )
        .await
        .unwrap();
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    assert_eq!(redis.command("DBSIZE").unwrap(), ":300");
    for _ in 0..20 {
        // A bulk reply starts with "$<length>".
        let line = redis.command("RANDOMKEY").unwrap();
        let length: usize = line.trim_start_matches('$').parse().unwrap();
        assert!(length < 128, "a {length}-byte key");
    }
    // The same long value is one bucket: its 10th request in the minute is the last admitted.
    let value = "y".repeat(5_000);
    let mut codes = Vec::new();
    for _ in 0..11 {
        let r = ask(
            &mut c,
            request(vec![descriptor(&[
                ("rule", "per-client"),
                ("client_ip", &value),
            ])]),
        )
        .await
        .unwrap();
        codes.push(r.overall_code);
    }
    assert_eq!(codes.iter().filter(|c| **c == Code::Ok as i32).count(), 10);
}
