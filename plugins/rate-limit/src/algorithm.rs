//! The three limiting algorithms as pure functions over a 16-byte state and `now`:
//! GCRA for the token bucket, aligned fixed windows, and the two-window sliding estimate.

use crate::config::Algorithm;

/// Per-key state, the same size for every algorithm so table entries are fixed-size.
/// TokenBucket: [tat u64, 0]; FixedWindow: [window index u64, count u64];
/// SlidingWindow: [window index u64, previous count u32, current count u32].
pub type State = [u8; 16];

pub const FRESH: State = [0; 16];

fn words(state: &State) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&state[..8]);
    b.copy_from_slice(&state[8..]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b))
}

fn from_words(a: u64, b: u64) -> State {
    let mut state = [0u8; 16];
    state[..8].copy_from_slice(&a.to_le_bytes());
    state[8..].copy_from_slice(&b.to_le_bytes());
    state
}

/// What a request would get, without changing anything yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admit now; store `state`.
    Allow {
        state: State,
        remaining: u64,
        reset_ns: u64,
    },
    /// Admit after `delay_ns` (queueing); store `state`, which reserves the slot.
    Delay {
        state: State,
        delay_ns: u64,
        reset_ns: u64,
    },
    /// Refuse; admitted if retried after `retry_after_ns` (with no other traffic).
    Deny { retry_after_ns: u64, reset_ns: u64 },
}

/// Decides one request of cost 1 at `now` (nanoseconds); see [`decide_cost`].
pub fn decide(algorithm: &Algorithm, state: &State, now: u64, max_delay_ns: u64) -> Verdict {
    decide_cost(algorithm, state, now, max_delay_ns, 1)
}

/// Decides one request costing `cost` units (≥ 1; at most the rule's capacity, which the
/// configuration guarantees) at `now` (nanoseconds): admitted when that many units are left.
/// `max_delay_ns` > 0 enables queueing (token bucket only): a request admissible within that
/// delay gets `Delay` instead of `Deny`.
pub fn decide_cost(
    algorithm: &Algorithm,
    state: &State,
    now: u64,
    max_delay_ns: u64,
    cost: u64,
) -> Verdict {
    let cost = cost.max(1);
    match *algorithm {
        Algorithm::TokenBucket { interval_ns, burst } => {
            gcra(interval_ns, burst, state, now, max_delay_ns, cost)
        }
        Algorithm::FixedWindow { limit, window_ns } => {
            let index = now / window_ns + 1; // +1: the fresh state (index 0) is an old window
            fixed(limit, index, index * window_ns - now, state, cost)
        }
        Algorithm::Calendar { limit, period } => {
            let (index, reset_ns) = calendar_window(&period, now);
            fixed(limit, index, reset_ns, state, cost)
        }
        Algorithm::SlidingWindow { limit, window_ns } => {
            sliding(limit, window_ns, state, now, cost)
        }
    }
}

/// Takes `units` from the key unconditionally (a charge after the response): the state may
/// go into debt — past the limit — so following requests are refused until it refills
/// (token bucket, sliding window) or the window ends (fixed window).
pub fn charge(algorithm: &Algorithm, state: &State, now: u64, units: u64) -> State {
    match *algorithm {
        Algorithm::TokenBucket { interval_ns, .. } => {
            let (tat, _) = words(state);
            from_words(
                tat.max(now)
                    .saturating_add(interval_ns.saturating_mul(units)),
                0,
            )
        }
        Algorithm::FixedWindow { window_ns, .. } => {
            let (stored_index, count) = words(state);
            let index = now / window_ns + 1;
            let count = if stored_index == index { count } else { 0 };
            from_words(index, count.saturating_add(units))
        }
        Algorithm::Calendar { period, .. } => {
            let (stored_index, count) = words(state);
            let (index, _) = calendar_window(&period, now);
            let count = if stored_index == index { count } else { 0 };
            from_words(index, count.saturating_add(units))
        }
        Algorithm::SlidingWindow { window_ns, .. } => {
            let index = now / window_ns + 1;
            let (previous, current) = sliding_counts(state, index);
            let current = current.saturating_add(units).min(u64::from(u32::MAX));
            from_words(index, previous | (current << 32))
        }
    }
}

/// GCRA (the token bucket as a "theoretical arrival time"): a request at `now` moves TAT to
/// max(TAT, now) + T; it conforms while that stays within burst·T of now.
fn gcra(interval: u64, burst: u64, state: &State, now: u64, max_delay: u64, cost: u64) -> Verdict {
    let (tat, _) = words(state);
    let tolerance = interval.saturating_mul(burst);
    let new_tat = tat.max(now).saturating_add(interval.saturating_mul(cost));
    let ahead = new_tat - now;
    if ahead <= tolerance {
        return Verdict::Allow {
            state: from_words(new_tat, 0),
            remaining: (tolerance - ahead) / interval,
            reset_ns: ahead,
        };
    }
    let excess = ahead - tolerance;
    if excess <= max_delay {
        return Verdict::Delay {
            state: from_words(new_tat, 0),
            delay_ns: excess,
            reset_ns: ahead,
        };
    }
    Verdict::Deny {
        retry_after_ns: excess,
        reset_ns: tat.saturating_sub(now),
    }
}

/// The stored index of the calendar period `now` is in (never 0, the fresh state's) and
/// the time until it ends.
fn calendar_window(period: &edgewise_support::calendar::Period, now: u64) -> (u64, u64) {
    let index = period.index(now);
    // Periods since 1970 are non-negative; +1 keeps 0 for the fresh state.
    let stored = (index.max(0) as u64).saturating_add(1);
    (stored, period.end_ns(index).saturating_sub(now))
}

/// A fixed window (aligned, or a calendar period) whose stored index is `index`, ending in
/// `reset_ns`.
fn fixed(limit: u64, index: u64, reset_ns: u64, state: &State, cost: u64) -> Verdict {
    let (stored_index, stored_count) = words(state);
    let count = if stored_index == index {
        stored_count
    } else {
        0
    };
    if count.saturating_add(cost) <= limit {
        Verdict::Allow {
            state: from_words(index, count + cost),
            remaining: limit - count - cost,
            reset_ns,
        }
    } else {
        Verdict::Deny {
            retry_after_ns: reset_ns,
            reset_ns,
        }
    }
}

fn sliding_counts(state: &State, index: u64) -> (u64, u64) {
    let (stored_index, packed) = words(state);
    let (previous, current) = (packed & 0xffff_ffff, packed >> 32);
    if stored_index == index {
        (previous, current)
    } else if stored_index + 1 == index {
        (current, 0)
    } else {
        (0, 0)
    }
}

/// The request is admitted when floor(previous · (W − e) / W) + current < limit, where e is
/// the time elapsed in the current window.
fn sliding(limit: u64, window: u64, state: &State, now: u64, cost: u64) -> Verdict {
    let index = now / window + 1;
    let elapsed = now - (index - 1) * window;
    let (previous, current) = sliding_counts(state, index);
    let weighted = (previous as u128 * (window - elapsed) as u128 / window as u128) as u64;
    let reset_ns = index * window - now;
    if weighted.saturating_add(current).saturating_add(cost) <= limit {
        let packed = previous | ((current + cost) << 32);
        let remaining = limit - (weighted + current) - cost;
        return Verdict::Allow {
            state: from_words(index, packed),
            remaining,
            reset_ns,
        };
    }
    // Admitting `cost` units is admitting one with the limit lowered by cost − 1.
    let room = limit.saturating_sub(cost - 1).max(1);
    Verdict::Deny {
        retry_after_ns: sliding_wait(room, window, previous, current, elapsed),
        reset_ns,
    }
}

/// The least wait after which the sliding estimate admits one more request.
fn sliding_wait(limit: u64, window: u64, previous: u64, current: u64, elapsed: u64) -> u64 {
    let (limit, window, previous, current, elapsed) = (
        limit as u128,
        window as u128,
        previous as u128,
        current as u128,
        elapsed as u128,
    );
    // Within this window: need previous·(W − e) < (limit − current)·W.
    if current < limit && previous > 0 {
        let k = (limit - current) * window;
        let e_min = window.saturating_sub((k - 1) / previous);
        if e_min < window {
            return (e_min.saturating_sub(elapsed)).max(1) as u64;
        }
    }
    // Next window: previous' = current, current' = 0: need current·(W − e') < limit·W.
    let to_next = window - elapsed;
    let e_next = (limit * window - 1)
        .checked_div(current)
        .map_or(0, |fits| window.saturating_sub(fits));
    (to_next + e_next) as u64
}

/// True when the state is what a never-seen key would have at `now`: forgetting it loses
/// nothing, so its table slot can be reused.
pub fn is_fresh(algorithm: &Algorithm, state: &State, now: u64) -> bool {
    let (first, second) = words(state);
    match *algorithm {
        Algorithm::TokenBucket { .. } => first <= now,
        Algorithm::FixedWindow { window_ns, .. } => first != now / window_ns + 1 || second == 0,
        Algorithm::Calendar { period, .. } => {
            first != calendar_window(&period, now).0 || second == 0
        }
        Algorithm::SlidingWindow { window_ns, .. } => {
            sliding_counts(state, now / window_ns + 1) == (0, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_767_225_600 * SEC;

    fn bucket(limit: u64, window: u64, burst: u64) -> Algorithm {
        Algorithm::TokenBucket {
            interval_ns: window.div_ceil(limit),
            burst,
        }
    }

    /// Runs requests at the given times; returns (admitted times, verdicts).
    fn run(algorithm: &Algorithm, times: &[u64]) -> Vec<Verdict> {
        let mut state = FRESH;
        times
            .iter()
            .map(|&t| {
                let v = decide(algorithm, &state, t, 0);
                if let Verdict::Allow { state: s, .. } = v {
                    state = s;
                }
                v
            })
            .collect()
    }

    #[test]
    fn token_bucket_bursts_then_refills_one_interval_at_a_time() {
        let alg = bucket(10, SEC, 3); // a token every 100 ms, 3 at once
        let v = run(&alg, &[T0, T0, T0, T0]);
        assert!(matches!(v[0], Verdict::Allow { remaining: 2, .. }));
        assert!(matches!(v[2], Verdict::Allow { remaining: 0, .. }));
        assert_eq!(
            v[3],
            Verdict::Deny {
                retry_after_ns: SEC / 10,
                reset_ns: 3 * SEC / 10
            }
        );
    }

    #[test]
    fn retry_after_is_exact_for_the_token_bucket() {
        let alg = bucket(5, 60 * SEC, 5);
        let mut state = FRESH;
        for _ in 0..5 {
            let Verdict::Allow { state: s, .. } = decide(&alg, &state, T0, 0) else {
                panic!()
            };
            state = s;
        }
        let Verdict::Deny { retry_after_ns, .. } = decide(&alg, &state, T0 + 1, 0) else {
            panic!()
        };
        assert_eq!(retry_after_ns, 12 * SEC - 1);
        assert!(matches!(
            decide(&alg, &state, T0 + 1 + retry_after_ns - 1, 0),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            decide(&alg, &state, T0 + 1 + retry_after_ns, 0),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn queueing_reserves_future_slots_at_the_configured_rate() {
        let alg = bucket(10, SEC, 1);
        let mut state = FRESH;
        let mut delays = Vec::new();
        for _ in 0..4 {
            match decide(&alg, &state, T0, 250_000_000) {
                Verdict::Allow { state: s, .. } => {
                    state = s;
                    delays.push(0)
                }
                Verdict::Delay {
                    state: s, delay_ns, ..
                } => {
                    state = s;
                    delays.push(delay_ns)
                }
                Verdict::Deny { .. } => delays.push(u64::MAX),
            }
        }
        assert_eq!(delays, [0, 100_000_000, 200_000_000, u64::MAX]);
    }

    #[test]
    fn fixed_window_counts_per_aligned_window() {
        let alg = Algorithm::FixedWindow {
            limit: 2,
            window_ns: 10 * SEC,
        };
        let base = T0 - T0 % (10 * SEC);
        let v = run(
            &alg,
            &[base + SEC, base + 2 * SEC, base + 3 * SEC, base + 10 * SEC],
        );
        assert!(matches!(v[1], Verdict::Allow { remaining: 0, .. }));
        assert_eq!(
            v[2],
            Verdict::Deny {
                retry_after_ns: 7 * SEC,
                reset_ns: 7 * SEC
            }
        );
        assert!(matches!(v[3], Verdict::Allow { .. }));
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let alg = Algorithm::SlidingWindow {
            limit: 10,
            window_ns: 10 * SEC,
        };
        let base = T0 - T0 % (10 * SEC);
        let mut state = FRESH;
        for _ in 0..10 {
            let Verdict::Allow { state: s, .. } = decide(&alg, &state, base + 9 * SEC, 0) else {
                panic!()
            };
            state = s;
        }
        // 5 s into the next window, half of the previous 10 still count: 5 more fit.
        let mut admitted = 0;
        while let Verdict::Allow { state: s, .. } = decide(&alg, &state, base + 15 * SEC, 0) {
            state = s;
            admitted += 1;
        }
        assert_eq!(admitted, 5);
    }

    #[test]
    fn fresh_states_are_recognised() {
        let alg = bucket(10, SEC, 10);
        assert!(is_fresh(&alg, &FRESH, T0));
        let Verdict::Allow { state, .. } = decide(&alg, &FRESH, T0, 0) else {
            panic!()
        };
        assert!(!is_fresh(&alg, &state, T0));
        assert!(is_fresh(&alg, &state, T0 + SEC / 10));
    }

    fn algorithms() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            (1u64..50, 1u64..20, 1u64..30).prop_map(|(limit, secs, burst)| bucket(
                limit,
                secs * SEC,
                burst
            )),
            (1u64..50, 1u64..20).prop_map(|(limit, secs)| Algorithm::FixedWindow {
                limit,
                window_ns: secs * SEC
            }),
            (1u64..50, 1u64..20).prop_map(|(limit, secs)| Algorithm::SlidingWindow {
                limit,
                window_ns: secs * SEC
            }),
        ]
    }

    proptest! {
        /// Never admits more than the algorithm allows.
        #[test]
        fn admits_no_more_than_allowed(alg in algorithms(), gaps in prop::collection::vec(0u64..3 * SEC, 1..300)) {
            let mut t = T0;
            let times: Vec<u64> = gaps.iter().map(|g| { t += g; t }).collect();
            let verdicts = run(&alg, &times);
            let admitted: Vec<u64> = times.iter().zip(&verdicts).filter(|(_, v)| matches!(v, Verdict::Allow { .. })).map(|(t, _)| *t).collect();
            match alg {
                Algorithm::TokenBucket { interval_ns, burst } => {
                    // In any interval [a, b]: admitted ≤ burst + (b − a) / T.
                    for (i, a) in admitted.iter().enumerate() {
                        for (j, b) in admitted.iter().enumerate().skip(i) {
                            prop_assert!((j - i + 1) as u64 <= burst + (b - a) / interval_ns);
                        }
                    }
                }
                Algorithm::Calendar { limit, period } => {
                    let mut per_period = std::collections::HashMap::new();
                    for t in &admitted {
                        *per_period.entry(period.index(*t)).or_insert(0u64) += 1;
                    }
                    prop_assert!(per_period.values().all(|n| *n <= limit));
                }
                Algorithm::FixedWindow { limit, window_ns } | Algorithm::SlidingWindow { limit, window_ns } => {
                    // At most `limit` in any aligned window.
                    let mut per_window = std::collections::HashMap::new();
                    for t in &admitted {
                        *per_window.entry(t / window_ns).or_insert(0u64) += 1;
                    }
                    prop_assert!(per_window.values().all(|n| *n <= limit));
                    if let Algorithm::SlidingWindow { .. } = alg {
                        // And at most 2·limit in any sliding window of length W.
                        for (i, a) in admitted.iter().enumerate() {
                            let within = admitted[i..].iter().take_while(|b| **b < a + window_ns).count() as u64;
                            prop_assert!(within <= 2 * limit);
                        }
                    }
                }
            }
        }

        /// Retry-After is exact: denied just before it, admitted at it.
        #[test]
        fn retry_after_is_exact(alg in algorithms(), n in 1usize..120, offset in 0u64..20 * SEC) {
            let now = T0 + offset;
            let mut state = FRESH;
            let mut denial = None;
            for _ in 0..n {
                match decide(&alg, &state, now, 0) {
                    Verdict::Allow { state: s, .. } => state = s,
                    Verdict::Deny { retry_after_ns, .. } => { denial = Some(retry_after_ns); break; }
                    Verdict::Delay { .. } => prop_assert!(false, "no queue configured"),
                }
            }
            if let Some(wait) = denial {
                prop_assert!(wait > 0);
                prop_assert!(matches!(decide(&alg, &state, now + wait, 0), Verdict::Allow { .. }), "admitted at retry-after");
                prop_assert!(matches!(decide(&alg, &state, now + wait - 1, 0), Verdict::Deny { .. }), "not earlier");
            }
        }

        /// A state reported fresh decides exactly like a never-seen key.
        #[test]
        fn fresh_means_lossless(alg in algorithms(), n in 0usize..40, later in 0u64..40 * SEC) {
            let mut state = FRESH;
            for _ in 0..n {
                if let Verdict::Allow { state: s, .. } = decide(&alg, &state, T0, 0) { state = s; }
            }
            let t = T0 + later;
            if is_fresh(&alg, &state, t) {
                prop_assert_eq!(decide(&alg, &state, t, 0), decide(&alg, &FRESH, t, 0));
            }
        }
    }

    /// The capacity of an algorithm: how many units a fresh key admits at once.
    fn capacity(alg: &Algorithm) -> u64 {
        match *alg {
            Algorithm::TokenBucket { burst, .. } => burst,
            Algorithm::FixedWindow { limit, .. }
            | Algorithm::SlidingWindow { limit, .. }
            | Algorithm::Calendar { limit, .. } => limit,
        }
    }

    #[test]
    fn a_costly_request_needs_its_whole_cost_and_a_charge_goes_into_debt() {
        let alg = Algorithm::FixedWindow {
            limit: 10,
            window_ns: 60 * SEC,
        };
        let Verdict::Allow {
            state, remaining, ..
        } = decide_cost(&alg, &FRESH, T0, 0, 7)
        else {
            panic!()
        };
        assert_eq!(remaining, 3);
        assert!(matches!(
            decide_cost(&alg, &state, T0, 0, 4),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            decide_cost(&alg, &state, T0, 0, 3),
            Verdict::Allow { remaining: 0, .. }
        ));
        // 25 units charged after a response: 22 over; refused until the window ends.
        let debt = charge(&alg, &state, T0, 25);
        assert!(matches!(
            decide(&alg, &debt, T0 + 59 * SEC, 0),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            decide(&alg, &debt, T0 + 60 * SEC, 0),
            Verdict::Allow { .. }
        ));
        // A token bucket's debt drains at its rate: 10 per second, 30 units over → 3 s.
        let bucket = bucket(10, SEC, 10);
        let debt = charge(&bucket, &FRESH, T0, 40);
        assert!(matches!(
            decide(&bucket, &debt, T0 + 3 * SEC, 0),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            decide(&bucket, &debt, T0 + 3 * SEC + SEC / 10, 0),
            Verdict::Allow { .. }
        ));
    }

    proptest! {
        /// Quotas across month ends in any offset: requests every few minutes from two days
        /// before a month's end (local time) to two days after — each month admits exactly
        /// `limit` (there is traffic enough), and the new month starts full at its first
        /// local instant.
        #[test]
        fn a_monthly_quota_resets_at_the_local_month_end(
            limit in 1u64..20,
            month in 0i64..24,
            offset_min in -14i64 * 60..=14 * 60,
            step_min in 1u64..30,
        ) {
            use edgewise_support::calendar::{days_from_civil, Period, Unit};
            let period = Period { unit: Unit::Month, offset_s: offset_min * 60 };
            let alg = Algorithm::Calendar { limit, period };
            let (year, m) = (2026 + month / 12, (month % 12) as u32 + 1);
            let first_of_next = if m == 12 { days_from_civil(year + 1, 1, 1) } else { days_from_civil(year, m + 1, 1) };
            let boundary = ((first_of_next * 86_400 - offset_min * 60) as u64) * SEC;
            let mut state = FRESH;
            let (mut before, mut after) = (0u64, 0u64);
            let mut t = boundary - 2 * 86_400 * SEC;
            let mut first_after = None;
            while t < boundary + 2 * 86_400 * SEC {
                if let Verdict::Allow { state: s, .. } = decide(&alg, &state, t, 0) {
                    state = s;
                    if t < boundary { before += 1 } else { after += 1; first_after.get_or_insert(t); }
                }
                t += step_min * 60 * SEC;
            }
            prop_assert_eq!(before, limit);
            prop_assert_eq!(after, limit);
            let first_after = first_after.unwrap_or(0);
            prop_assert!(first_after >= boundary && first_after < boundary + step_min * 60 * SEC);
        }

        /// A request of cost c is admitted exactly when c single-unit requests in a row would
        /// all be admitted at the same instant (same state, same time).
        #[test]
        fn a_cost_is_that_many_units_at_once(alg in algorithms(), used in 0u64..40, cost in 1u64..30, at in 0u64..30 * SEC) {
            let cost = cost.min(capacity(&alg));
            let mut state = FRESH;
            for _ in 0..used {
                if let Verdict::Allow { state: s, .. } = decide(&alg, &state, T0, 0) { state = s; }
            }
            let now = T0 + at;
            let at_once = matches!(decide_cost(&alg, &state, now, 0, cost), Verdict::Allow { .. });
            let mut one_by_one = state;
            let mut all = true;
            for _ in 0..cost {
                match decide(&alg, &one_by_one, now, 0) {
                    Verdict::Allow { state: s, .. } => one_by_one = s,
                    _ => { all = false; break; }
                }
            }
            prop_assert_eq!(at_once, all);
        }

        /// Admission checks the request's own cost and the charge comes after the response
        /// (into debt): within one fixed window the units charged for admitted requests never
        /// exceed the limit plus one request's after-charge.
        #[test]
        fn charges_after_admission_exceed_the_limit_by_at_most_one_charge(
            limit in 1u64..50,
            requests in prop::collection::vec((1u64..5, 0u64..40, 0u64..60), 1..200),
        ) {
            let alg = Algorithm::FixedWindow { limit, window_ns: 60 * SEC };
            let mut state = FRESH;
            let (mut charged, mut largest) = (0u64, 0u64);
            for (cost, after, second) in requests {
                let now = T0 + second * SEC / 60; // all inside one window
                let cost = cost.min(limit);
                if matches!(decide_cost(&alg, &state, now, 0, cost), Verdict::Allow { .. }) {
                    state = charge(&alg, &state, now, after);
                    charged += after;
                    largest = largest.max(after);
                }
            }
            prop_assert!(charged <= limit - 1 + largest, "charged {} with limit {} and largest {}", charged, limit, largest);
        }
    }
}
