//! least_requests in-flight counts in shared data (the in-memory CAS store): counted, given
//! back, and leased — counts of a VM that died expire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use edgewise_support::store::MemoryStore;
use weighted_router::config::Config;
use weighted_router::{acquire_least, in_flight, release_least, IN_FLIGHT_LEASE_NS};

const T0: u64 = 1_767_225_600_000_000_000;

#[test]
fn in_flight_counts_are_leases() {
    let config = Config::from_json(
        br#"{"routes":[{"name":"api","strategy":"least_requests","targets":[{"cluster":"a","weight":1},{"cluster":"b","weight":1}]}]}"#,
    )
    .unwrap();
    let route = &config.routes[0];
    let store = MemoryStore::new();
    let first = acquire_least(&store, route, &|_| true, T0).unwrap();
    let second = acquire_least(&store, route, &|_| true, T0).unwrap();
    assert_ne!(first, second, "the least loaded target");
    assert_eq!(in_flight(&store, route, T0), vec![1, 1]);
    release_least(&store, route, first, T0, T0 + 1);
    assert_eq!(
        in_flight(&store, route, T0 + 1),
        vec![(first == 1) as u32, (first == 0) as u32]
    );
    // The other count's VM dies: nobody gives it back. In the next lease window it still
    // counts (the stream might be alive); after that it is gone.
    assert_eq!(
        in_flight(&store, route, T0 + IN_FLIGHT_LEASE_NS)
            .iter()
            .sum::<u32>(),
        1
    );
    let later = T0 + 2 * IN_FLIGHT_LEASE_NS + 1;
    assert_eq!(in_flight(&store, route, later), vec![0, 0]);
    // A count taken now and a late give-back of the expired one: the live one stays.
    let live = acquire_least(&store, route, &|_| true, later).unwrap();
    release_least(&store, route, second, T0, later);
    let mut expected = vec![0, 0];
    expected[live] = 1;
    assert_eq!(in_flight(&store, route, later), expected);
    // A stream that spans a window boundary is given back from the previous window.
    release_least(&store, route, live, later, later + IN_FLIGHT_LEASE_NS);
    assert_eq!(
        in_flight(&store, route, later + IN_FLIGHT_LEASE_NS),
        vec![0, 0]
    );
}
