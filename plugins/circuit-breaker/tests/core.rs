//! The breaker table against the in-memory CAS store (Envoy's shared-data rules).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use circuit_breaker::breaker::{Admission, Outcome, Transition};
use circuit_breaker::config::Config;
use circuit_breaker::table::{admit, record};
use edgewise_support::breaker_state::{lookup, BreakerState};
use edgewise_support::store::MemoryStore;

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

fn config(json: &str) -> Config {
    Config::from_json(json.as_bytes()).unwrap()
}

fn trip(store: &MemoryStore, c: &Config, identity: &str, now: u64) {
    let p = c.params(identity);
    for _ in 0..p.consecutive_failures.unwrap() {
        record(store, identity.as_bytes(), c.slots, p, FAIL, None, now).unwrap();
    }
}

#[test]
fn half_open_admits_exactly_probes_across_contending_threads() {
    let c = config(
        r#"{"trip":{"consecutive_failures":2},"half_open":{"probes":5},"open":{"duration":"1s"}}"#,
    );
    let store = MemoryStore::new();
    trip(&store, &c, "api", T0);
    let p = c.params("api");
    let probes: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..100)
                        .filter(|_| {
                            matches!(
                                admit(&store, b"api", c.slots, p, T0 + SEC).unwrap(),
                                Some((Admission::Probe { .. }, _, _))
                            )
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(probes, 5);
}

#[test]
fn trips_publishes_open_state_and_recovers_through_probes() {
    let c = config(
        r#"{"trip":{"consecutive_failures":3},"half_open":{"probes":2},"open":{"duration":"5s"}}"#,
    );
    let store = MemoryStore::new();
    let p = c.params("payments");
    assert_eq!(
        admit(&store, b"payments", c.slots, p, T0)
            .unwrap()
            .map(|(a, t, _)| (a, t)),
        Some((Admission::Pass, Transition::None))
    );
    assert_eq!(
        store.len(),
        1,
        "the first request claims the upstream's slot"
    );
    let written = store.last_cas();
    admit(&store, b"payments", c.slots, p, T0).unwrap();
    record(&store, b"payments", c.slots, p, OK, None, T0).unwrap();
    assert_eq!(
        store.last_cas(),
        written,
        "then a healthy upstream writes nothing"
    );
    record(&store, b"payments", c.slots, p, FAIL, None, T0).unwrap();
    record(&store, b"payments", c.slots, p, FAIL, None, T0).unwrap();
    let t = record(&store, b"payments", c.slots, p, FAIL, None, T0).unwrap();
    assert!(matches!(t, Some(Transition::Opened { .. })));
    // Another plugin on the same vm_id sees it open.
    let published = lookup(&store, b"payments", c.slots, T0).unwrap();
    assert_eq!(
        (published.state, published.open_until),
        (BreakerState::Open, T0 + 5 * SEC)
    );
    assert_eq!(
        admit(&store, b"payments", c.slots, p, T0 + SEC)
            .unwrap()
            .unwrap()
            .0,
        Admission::Reject {
            state: BreakerState::Open
        }
    );
    let (first, t, _) = admit(&store, b"payments", c.slots, p, T0 + 5 * SEC)
        .unwrap()
        .unwrap();
    assert_eq!(
        (first, t),
        (Admission::Probe { episode: 1 }, Transition::HalfOpened)
    );
    let (second, _, _) = admit(&store, b"payments", c.slots, p, T0 + 5 * SEC)
        .unwrap()
        .unwrap();
    assert_eq!(
        admit(&store, b"payments", c.slots, p, T0 + 5 * SEC)
            .unwrap()
            .unwrap()
            .0,
        Admission::Reject {
            state: BreakerState::HalfOpen
        }
    );
    for probe in [first, second] {
        let Admission::Probe { episode } = probe else {
            panic!()
        };
        record(
            &store,
            b"payments",
            c.slots,
            p,
            OK,
            Some(episode),
            T0 + 6 * SEC,
        )
        .unwrap();
    }
    assert_eq!(
        lookup(&store, b"payments", c.slots, T0).unwrap().state,
        BreakerState::Closed
    );
}

#[test]
fn the_slot_table_stays_bounded_and_active_breakers_keep_their_slots() {
    let c = config(r#"{"max_upstreams":8,"trip":{"consecutive_failures":2}}"#);
    let store = MemoryStore::new();
    trip(&store, &c, "important", T0);
    let p = c.params("x");
    let mut untracked = 0;
    for i in 0..10_000 {
        let identity = format!("junk-{i}");
        // Each junk upstream fails once (active: it has a failure counted).
        match record(&store, identity.as_bytes(), c.slots, p, FAIL, None, T0).unwrap() {
            Some(_) => {}
            None => untracked += 1,
        }
    }
    assert!(store.len() <= 8, "{} slots used", store.len());
    assert!(
        untracked > 9_000,
        "once every slot is active, newcomers are untracked: {untracked}"
    );
    assert_eq!(
        lookup(&store, b"important", c.slots, T0).unwrap().state,
        BreakerState::Open,
        "never evicted while active"
    );
}

#[test]
fn idle_slots_are_taken_over_without_loss() {
    let c = config(r#"{"max_upstreams":1,"trip":{"consecutive_failures":3}}"#);
    let store = MemoryStore::new();
    let p = c.params("a");
    record(&store, b"a", c.slots, p, FAIL, None, T0).unwrap();
    assert_eq!(
        record(&store, b"b", c.slots, p, FAIL, None, T0).unwrap(),
        None,
        "slot held by a's active breaker"
    );
    record(&store, b"a", c.slots, p, OK, None, T0).unwrap();
    // a is closed with nothing counted: idle, so b may take the slot.
    assert_eq!(
        record(&store, b"b", c.slots, p, FAIL, None, T0).unwrap(),
        Some(Transition::None)
    );
    assert!(lookup(&store, b"a", c.slots, T0).is_none());
    assert!(lookup(&store, b"b", c.slots, T0).is_some());
}
