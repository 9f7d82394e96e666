//! The breaker's state machine, tested natively: trips, open periods, half-open probes, bulkheads, the shared layout.

use super::*;
use crate::config::Config;
use proptest::prelude::*;

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_767_225_600 * SEC;
const FAIL: Outcome = Outcome {
    failed: true,
    slow: false,
};
const OK: Outcome = Outcome {
    failed: false,
    slow: false,
};

fn params(json: &str) -> Params {
    Config::from_json(json.as_bytes()).unwrap().defaults
}

fn feed(b: &Breaker, p: &Params, outcomes: &[Outcome], now: u64) -> (Breaker, Vec<Transition>) {
    let mut b = b.clone();
    let mut transitions = Vec::new();
    for o in outcomes {
        let (next, t) = b.record(p, *o, None, now);
        if let Some(n) = next {
            b = n;
        }
        transitions.push(t);
    }
    (b, transitions)
}

/// `half_open.probe`: no client is ever a probe. Open (even past its time) and half-open
/// reject clients; the breaker takes its own probe place when the time is up, one probe
/// at a time; healthy answers close it, an unhealthy or missing one opens it again; an
/// open breaker nobody probes for the grace period falls back to client probes.
#[test]
fn active_probes_spare_the_clients() {
    let p = Config::from_json(
        br#"{"upstream":"header:x-route-cluster","trip":{"consecutive_failures":1},"open":{"duration":"5s"},
            "half_open":{"probes":2,"probe":{"path":"/health","timeout":"1s","expect":["2xx"]}}}"#,
    )
    .unwrap()
    .defaults;
    let (open, _) = feed(&Breaker::new(1), &p, &[FAIL], T0);
    assert_eq!(open.state, BreakerState::Open);
    let rejected = |b: &Breaker, now| matches!(b.admit(&p, now).0, Admission::Reject { .. });
    assert!(rejected(&open, T0 + SEC));
    assert!(
        rejected(&open, T0 + 6 * SEC),
        "past its time, clients still do not probe"
    );
    assert_eq!(open.take_active_probe(&p, T0 + SEC).1, None, "not yet");
    // Time is up: the breaker's own probe takes the place.
    let (half, episode, t) = open.take_active_probe(&p, T0 + 5 * SEC);
    let half = half.unwrap();
    assert_eq!(
        (half.state, t),
        (BreakerState::HalfOpen, Transition::HalfOpened)
    );
    let episode = episode.unwrap();
    assert!(rejected(&half, T0 + 5 * SEC), "clients wait for the probe");
    assert_eq!(
        half.take_active_probe(&p, T0 + 5 * SEC).1,
        None,
        "one at a time"
    );
    // Healthy: the second probe goes next; healthy again: closed.
    let (half, _) = half.record(&p, OK, Some(episode), T0 + 5 * SEC);
    let half = half.unwrap();
    let (half, second, _) = half.take_active_probe(&p, T0 + 5 * SEC);
    let (closed, t) = half.unwrap().record(&p, OK, second, T0 + 5 * SEC);
    assert_eq!(
        (closed.unwrap().state, t),
        (BreakerState::Closed, Transition::Closed)
    );
    // Unhealthy: open again, with backoff; a probe never answered: open at its deadline.
    let (half, episode, _) = open.take_active_probe(&p, T0 + 5 * SEC);
    let (reopened, t) = half.unwrap().record(&p, FAIL, episode, T0 + 5 * SEC);
    assert_eq!(reopened.unwrap().state, BreakerState::Open);
    assert!(matches!(t, Transition::Reopened { .. }));
    let (half, _, _) = open.take_active_probe(&p, T0 + 5 * SEC);
    let (late, _, t) = half.unwrap().take_active_probe(&p, T0 + 8 * SEC);
    assert_eq!(late.unwrap().state, BreakerState::Open);
    assert!(matches!(t, Transition::Reopened { .. }));
    // Nobody probed for the grace period: a client probes, as without active probing.
    let grace = edgewise_support::breaker_state::ACTIVE_PROBE_GRACE_NS;
    assert!(matches!(
        open.admit(&p, T0 + 5 * SEC + grace).0,
        Admission::Probe { .. }
    ));
}

/// An operator's forced state: open rejects everything (and publishes it for the
/// router), closed admits everything and nothing trips it, automatic starts afresh.
#[test]
fn forced_states_override_the_automaton() {
    use edgewise_support::breaker_state::{FORCED_CLOSED, FORCED_OPEN};
    let p = params(r#"{"trip":{"consecutive_failures":1}}"#);
    let open = Breaker::new(1).forced_to(FORCED_OPEN);
    assert!(matches!(open.admit(&p, T0).0, Admission::Reject { .. }));
    assert!(read_header(&open.encode()).unwrap().rejects(T0));
    let closed = Breaker::new(1).forced_to(FORCED_CLOSED);
    let (after, t) = closed.record(&p, FAIL, None, T0);
    assert_eq!(
        (after, t),
        (None, Transition::None),
        "failures do not trip it"
    );
    assert_eq!(closed.admit(&p, T0).0, Admission::Pass);
    let (tripped, _) = feed(&Breaker::new(1), &p, &[FAIL], T0);
    assert_eq!(tripped.state, BreakerState::Open);
    let forced_closed = tripped.forced_to(FORCED_CLOSED);
    assert!(!read_header(&forced_closed.encode()).unwrap().rejects(T0));
    let auto = forced_closed.forced_to(0);
    assert_eq!((auto.state, auto.forced), (BreakerState::Closed, 0));
    assert!(!Breaker::new(1).forced_to(FORCED_OPEN).is_idle(&p, T0));
}

#[test]
fn active_probe_configuration_is_checked() {
    for (json, field) in [
        (r#"{"half_open":{"probe":{}}}"#, "half_open.probe"),
        (
            r#"{"upstream":"header:x","half_open":{"probe":{"path":"health"}}}"#,
            "half_open.probe.path",
        ),
        (
            r#"{"upstream":"header:x","half_open":{"probe":{"timeout":"2m"}}}"#,
            "half_open.probe.timeout",
        ),
        (
            r#"{"upstream":"header:x","half_open":{"probe":{"expect":[]}}}"#,
            "half_open.probe.expect",
        ),
        (
            r#"{"upstream":"header:x","half_open":{"probe":{"port":1}}}"#,
            "port",
        ),
    ] {
        let e = Config::from_json(json.as_bytes()).unwrap_err();
        assert!(e.to_string().contains(field), "{json}: {e}");
    }
    let p = Config::from_json(br#"{"upstream":"header:x","half_open":{"probe":{}}}"#)
        .unwrap()
        .defaults;
    let probe = p.active_probe.unwrap();
    assert_eq!((probe.path.as_str(), probe.timeout_ns), ("/", SEC));
    assert!(probe.healthy(204) && !probe.healthy(503));
}

/// Half-open has `probe_timeout` to show the upstream healthy: a probe that hangs (or is
/// held by a trickling client) opens the breaker again at the deadline, with backoff,
/// and its late answer counts for nothing.
#[test]
fn half_open_probes_have_a_deadline() {
    let p = params(
        r#"{"trip":{"consecutive_failures":1},"open":{"duration":"5s"},"half_open":{"probes":1,"probe_timeout":"2s"}}"#,
    );
    let (open, _) = feed(&Breaker::new(1), &p, &[FAIL], T0);
    let (admission, half, t) = open.admit(&p, T0 + 5 * SEC);
    let half = half.unwrap();
    assert_eq!(
        (admission, t),
        (Admission::Probe { episode: 1 }, Transition::HalfOpened)
    );
    // Before the deadline others are rejected as half-open; at it, the breaker reopens.
    assert_eq!(
        half.admit(&p, T0 + 6 * SEC).0,
        Admission::Reject {
            state: BreakerState::HalfOpen
        }
    );
    let (admission, reopened, t) = half.admit(&p, T0 + 7 * SEC);
    let reopened = reopened.unwrap();
    assert_eq!(
        admission,
        Admission::Reject {
            state: BreakerState::Open
        }
    );
    assert_eq!(t, Transition::Reopened { for_ns: 10 * SEC }, "backed off");
    assert_eq!(reopened.state, BreakerState::Open);
    // The hung probe's answer arrives late: ignored (another episode).
    let (late, _) = reopened.record(&p, OK, Some(1), T0 + 8 * SEC);
    assert!(late.is_none());
}

/// Half-open publishes when every probe place is taken (the router's failover then sends
/// other requests elsewhere instead of to the fallback); a place given back clears it.
#[test]
fn half_open_publishes_when_its_probe_places_are_taken() {
    let p = params(
        r#"{"trip":{"consecutive_failures":1},"open":{"duration":"1s"},"half_open":{"probes":2}}"#,
    );
    let (open, _) = feed(&Breaker::new(1), &p, &[FAIL], T0);
    let published = |b: &Breaker| read_header(&b.encode()).unwrap();
    let (_, first, _) = open.admit(&p, T0 + SEC);
    let first = first.unwrap();
    assert!(!published(&first).probes_full && !published(&first).rejects(T0 + SEC));
    let (_, second, _) = first.admit(&p, T0 + SEC);
    let second = second.unwrap();
    assert!(published(&second).probes_full && published(&second).rejects(T0 + SEC));
    let given_back = second.abandon_probe(second.opens).unwrap();
    assert!(!published(&given_back).probes_full);
    let closed = Breaker::decode(&given_back.encode()).unwrap();
    assert!(!closed.probes_full, "decoded as published");
}

#[test]
fn consecutive_failures_trip_and_a_success_resets_the_count() {
    let p = params(r#"{"trip":{"consecutive_failures":3}}"#);
    let (b, _) = feed(&Breaker::new(1), &p, &[FAIL, FAIL, OK, FAIL, FAIL], T0);
    assert_eq!(b.state, BreakerState::Closed);
    let (b, t) = feed(&b, &p, &[FAIL], T0);
    assert_eq!(b.state, BreakerState::Open);
    assert_eq!(
        t[0],
        Transition::Opened {
            for_ns: 5 * SEC,
            reason: TripReason::ConsecutiveFailures(3)
        }
    );
    assert_eq!(b.open_until, T0 + 5 * SEC);
}

#[test]
fn failure_rate_trips_only_with_min_requests_in_the_window() {
    let p = params(
        r#"{"trip":{"consecutive_failures":100,"failure_rate":0.5,"min_requests":10,"window":"10s"}}"#,
    );
    let (b, _) = feed(
        &Breaker::new(1),
        &p,
        &[FAIL, OK, FAIL, OK, FAIL, OK, FAIL, OK, FAIL],
        T0,
    );
    assert_eq!(b.state, BreakerState::Closed, "9 calls < min_requests");
    let (b, t) = feed(&b, &p, &[OK], T0);
    assert_eq!(b.state, BreakerState::Open);
    assert!(matches!(
        t[0],
        Transition::Opened {
            reason: TripReason::FailureRate {
                failures: 5,
                calls: 10
            },
            ..
        }
    ));
    // Old calls age out of the window.
    let (b, _) = feed(&Breaker::new(1), &p, &[FAIL; 9], T0);
    let (b, _) = feed(&b, &p, &[OK], T0 + 11 * SEC);
    assert_eq!(b.state, BreakerState::Closed);
    assert_eq!(b.totals(&p, T0 + 11 * SEC), (1, 0, 0));
}

#[test]
fn a_hung_call_counted_slow_that_times_out_is_also_a_failure_but_not_another_call() {
    let p = params(r#"{"failure":{"slow_call":"1s"},"trip":{"consecutive_failures":2}}"#);
    let slow = Outcome {
        failed: false,
        slow: true,
    };
    let (b, _) = feed(&Breaker::new(1), &p, &[slow, slow], T0);
    assert_eq!(
        b.state,
        BreakerState::Closed,
        "slow alone is no failure streak"
    );
    let (b, t) = b.record_late_failure(&p, T0);
    assert_eq!(t, Transition::None);
    let (b, t) = b.unwrap().record_late_failure(&p, T0);
    assert!(matches!(t, Transition::Opened { .. }), "{t:?}");
    let b = b.unwrap();
    let (calls, failures, _) = b.totals(&p, T0);
    assert!(
        calls <= 2 && failures <= calls,
        "{calls} calls, {failures} failures"
    );
    assert_eq!(b.record_late_failure(&p, T0), (None, Transition::None));
}

#[test]
fn slow_calls_trip_by_rate() {
    let p =
        params(r#"{"failure":{"slow_call":"1s"},"trip":{"slow_call_rate":0.8,"min_requests":5}}"#);
    let slow = Outcome {
        failed: false,
        slow: true,
    };
    let (b, t) = feed(&Breaker::new(1), &p, &[slow, slow, slow, OK, slow], T0);
    assert_eq!(b.state, BreakerState::Open);
    assert!(matches!(
        t[4],
        Transition::Opened {
            reason: TripReason::SlowCallRate { slow: 4, calls: 5 },
            ..
        }
    ));
}

#[test]
fn open_then_half_open_admits_exactly_probes_then_closes() {
    let p = params(r#"{"trip":{"consecutive_failures":1},"half_open":{"probes":2}}"#);
    let (b, _) = feed(&Breaker::new(1), &p, &[FAIL], T0);
    assert_eq!(
        b.admit(&p, T0 + SEC).0,
        Admission::Reject {
            state: BreakerState::Open
        }
    );
    let (a, b1, t) = b.admit(&p, T0 + 5 * SEC);
    assert_eq!(
        (a, t),
        (Admission::Probe { episode: 1 }, Transition::HalfOpened)
    );
    let b1 = b1.unwrap();
    let (a2, b2, _) = b1.admit(&p, T0 + 5 * SEC);
    assert_eq!(a2, Admission::Probe { episode: 1 });
    let b2 = b2.unwrap();
    assert_eq!(
        b2.admit(&p, T0 + 5 * SEC).0,
        Admission::Reject {
            state: BreakerState::HalfOpen
        }
    );
    let (b3, t3) = b2.record(&p, OK, Some(1), T0 + 6 * SEC);
    assert_eq!(t3, Transition::None);
    let (b4, t4) = b3.unwrap().record(&p, OK, Some(1), T0 + 6 * SEC);
    assert_eq!(t4, Transition::Closed);
    let b4 = b4.unwrap();
    assert_eq!((b4.state, b4.opens), (BreakerState::Closed, 0));
}

#[test]
fn a_failed_probe_reopens_with_backoff_up_to_the_cap() {
    let p = params(
        r#"{"trip":{"consecutive_failures":1},"open":{"duration":"5s","max_duration":"15s","backoff":2.0},"half_open":{"probes":1}}"#,
    );
    let (mut b, _) = feed(&Breaker::new(1), &p, &[FAIL], T0);
    let mut durations = vec![b.open_until - T0];
    for _ in 0..3 {
        let now = b.open_until;
        let (_, next, _) = b.admit(&p, now);
        let probing = next.unwrap();
        let (reopened, t) = probing.record(&p, FAIL, Some(probing.opens), now);
        assert!(matches!(t, Transition::Reopened { .. }));
        b = reopened.unwrap();
        durations.push(b.open_until - now);
    }
    assert_eq!(durations, [5 * SEC, 10 * SEC, 15 * SEC, 15 * SEC]);
}

#[test]
fn stale_outcomes_do_not_count() {
    let p = params(r#"{"trip":{"consecutive_failures":1},"half_open":{"probes":1}}"#);
    let (b, _) = feed(&Breaker::new(1), &p, &[FAIL], T0);
    // A response to a request admitted while closed arrives while open: ignored.
    assert_eq!(b.record(&p, FAIL, None, T0), (None, Transition::None));
    // A probe from an earlier episode: ignored.
    let (_, half, _) = b.admit(&p, T0 + 5 * SEC);
    assert_eq!(
        half.unwrap().record(&p, OK, Some(0), T0 + 5 * SEC),
        (None, Transition::None)
    );
}

#[test]
fn successes_in_a_healthy_closed_breaker_write_nothing() {
    let p = params(r#"{"trip":{"consecutive_failures":5}}"#);
    assert_eq!(
        Breaker::new(1).record(&p, OK, None, T0),
        (None, Transition::None)
    );
}

#[test]
fn values_round_trip() {
    let p = params(r#"{"trip":{"failure_rate":0.5}}"#);
    let (b, _) = feed(&Breaker::new(77), &p, &[FAIL, OK], T0);
    assert_eq!(Breaker::decode(&b.encode()), Some(b));
    assert_eq!(Breaker::decode(b"garbage"), None);
}

proptest! {
    /// No transition without its trigger, and never more than `probes` probes in flight.
    #[test]
    fn transitions_have_triggers(events in prop::collection::vec((0u8..4, 0u64..3 * SEC), 1..200), probes in 1u32..5) {
        let p = params(&format!(r#"{{"trip":{{"consecutive_failures":3}},"half_open":{{"probes":{probes}}},"open":{{"duration":"1s"}}}}"#));
        let mut b = Breaker::new(9);
        let mut now = T0;
        let mut in_flight: Vec<u32> = Vec::new();
        for (kind, gap) in events {
            now += gap;
            match kind {
                0 => {
                    let before = b.clone();
                    let (admission, next, t) = b.admit(&p, now);
                    if let Some(n) = next { b = n; }
                    match admission {
                        Admission::Probe { episode } => in_flight.push(episode),
                        Admission::Reject { .. } => prop_assert!(before.state != BreakerState::Closed),
                        Admission::Pass => prop_assert_eq!(before.state, BreakerState::Closed),
                    }
                    if t == Transition::HalfOpened { prop_assert!(before.state == BreakerState::Open && now >= before.open_until); }
                    prop_assert!(b.state != BreakerState::HalfOpen || b.probes_issued <= probes);
                }
                1 | 2 => {
                    let outcome = if kind == 1 { FAIL } else { OK };
                    let probe = in_flight.pop();
                    let before = b.clone();
                    let (next, t) = b.record(&p, outcome, probe, now);
                    if let Some(n) = next { b = n; }
                    match t {
                        Transition::Opened { .. } => prop_assert!(before.state == BreakerState::Closed && before.consecutive_failures + 1 >= 3 && outcome.failed),
                        Transition::Reopened { .. } => prop_assert!(before.state == BreakerState::HalfOpen && outcome.failed),
                        Transition::Closed => prop_assert!(before.state == BreakerState::HalfOpen && before.probes_succeeded + 1 == probes),
                        _ => {}
                    }
                }
                _ => {
                    if let Some(episode) = in_flight.pop() {
                        if let Some(n) = b.abandon_probe(episode) { b = n; }
                    }
                }
            }
        }
    }
}
