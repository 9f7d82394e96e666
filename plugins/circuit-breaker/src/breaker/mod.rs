//! One breaker as a pure state machine over a fixed-size value: CLOSED counts outcomes in a
//! sliding window and trips to OPEN; OPEN rejects until its (backed-off) time is up; then
//! HALF-OPEN lets exactly `probes` requests through: all succeed → CLOSED, one fails → OPEN
//! with the next, longer duration (resilience4j semantics; Envoy-worker-wide via CAS). With
//! an active probe (`half_open.probe`) no client is a probe: the breaker's own requests
//! (`take_active_probe`) are, and clients are rejected (or failed over) until it closes.

use edgewise_support::breaker_state::{
    read_header, write_header, BreakerState, Published, HEADER_BYTES,
};
use edgewise_support::le;

use crate::config::Params;

pub const BUCKETS: usize = 10;
const BUCKET_BYTES: usize = 16;
const PRIVATE_BYTES: usize = 16;
pub const VALUE_BYTES: usize = HEADER_BYTES + PRIVATE_BYTES + BUCKETS * BUCKET_BYTES;

/// Counts for one tenth of the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Which tenth-of-window period this bucket holds (period index + 1; 0 = empty).
    pub period: u32,
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    pub identity_hash: u64,
    pub state: BreakerState,
    pub open_until: u64,
    /// Opens since the last close: the backoff exponent, and the half-open episode number.
    pub opens: u32,
    pub consecutive_failures: u32,
    pub probes_issued: u32,
    pub probes_succeeded: u32,
    /// Published: half-open with every probe place taken (the router's failover skips it).
    pub probes_full: bool,
    /// Published: only the breaker's own active probes close it (set from the parameters
    /// whenever the value is written).
    pub probe_only: bool,
    /// An operator's forced state (published; `FORCED_OPEN`, `FORCED_CLOSED`, 0: automatic).
    pub forced: u8,
    pub buckets: [Bucket; BUCKETS],
}

/// What the breaker says about a new request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Pass,
    /// A half-open trial request, in episode `episode` (compare when recording).
    Probe {
        episode: u32,
    },
    Reject {
        state: BreakerState,
    },
}

/// A response's classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub failed: bool,
    pub slow: bool,
}

/// What a record did to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened { for_ns: u64, reason: TripReason },
    Reopened { for_ns: u64 },
    HalfOpened,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripReason {
    ConsecutiveFailures(u32),
    FailureRate { failures: u32, calls: u32 },
    SlowCallRate { slow: u32, calls: u32 },
}

impl Breaker {
    pub fn new(identity_hash: u64) -> Breaker {
        Breaker {
            identity_hash,
            state: BreakerState::Closed,
            open_until: 0,
            opens: 0,
            consecutive_failures: 0,
            probes_issued: 0,
            probes_succeeded: 0,
            probes_full: false,
            probe_only: false,
            forced: 0,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Breaker> {
        // The value may end with the identity it belongs to (`with_identity`).
        if bytes.len() < VALUE_BYTES {
            return None;
        }
        let header = read_header(bytes)?;
        let u32_at = |at: usize| le::u32_at(bytes, at).unwrap_or(0);
        let p = HEADER_BYTES;
        let mut breaker = Breaker {
            identity_hash: header.identity_hash,
            state: header.state,
            open_until: header.open_until,
            opens: u32_at(p),
            consecutive_failures: u32_at(p + 4),
            probes_issued: u32_at(p + 8),
            probes_succeeded: u32_at(p + 12),
            probes_full: header.probes_full,
            probe_only: header.probe_only,
            forced: header.forced,
            buckets: [Bucket::default(); BUCKETS],
        };
        for (i, bucket) in breaker.buckets.iter_mut().enumerate() {
            let at = HEADER_BYTES + PRIVATE_BYTES + i * BUCKET_BYTES;
            *bucket = Bucket {
                period: u32_at(at),
                calls: u32_at(at + 4),
                failures: u32_at(at + 8),
                slow: u32_at(at + 12),
            };
        }
        Some(breaker)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; VALUE_BYTES];
        write_header(
            &mut out,
            &Published {
                identity_hash: self.identity_hash,
                state: self.state,
                open_until: self.open_until,
                probes_full: self.state == BreakerState::HalfOpen && self.probes_full,
                probe_only: self.probe_only,
                forced: self.forced,
            },
        );
        let p = HEADER_BYTES;
        for (i, v) in [
            self.opens,
            self.consecutive_failures,
            self.probes_issued,
            self.probes_succeeded,
        ]
        .iter()
        .enumerate()
        {
            out[p + 4 * i..p + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        for (i, b) in self.buckets.iter().enumerate() {
            let at = HEADER_BYTES + PRIVATE_BYTES + i * BUCKET_BYTES;
            for (j, v) in [b.period, b.calls, b.failures, b.slow].iter().enumerate() {
                out[at + 4 * j..at + 4 * j + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Closed with nothing counted in the window: the same as a never-used breaker, so its
    /// slot may go to another upstream without losing anything.
    pub fn is_idle(&self, params: &Params, now: u64) -> bool {
        self.state == BreakerState::Closed
            && self.forced == 0
            && self.consecutive_failures == 0
            && self.totals(params, now) == (0, 0, 0)
    }

    fn period(params: &Params, now: u64) -> u32 {
        (now / (params.window_ns / BUCKETS as u64).max(1)) as u32 + 1
    }

    /// (calls, failures, slow) over the last window.
    pub fn totals(&self, params: &Params, now: u64) -> (u32, u32, u32) {
        let current = Breaker::period(params, now);
        self.buckets
            .iter()
            .filter(|b| b.period != 0 && current.wrapping_sub(b.period) < BUCKETS as u32)
            .fold((0, 0, 0), |(c, f, s), b| {
                (c + b.calls, f + b.failures, s + b.slow)
            })
    }

    /// Decides admission at `now`; returns the new value to store if it changed.
    pub fn admit(&self, params: &Params, now: u64) -> (Admission, Option<Breaker>, Transition) {
        // An operator's forced state overrides everything (maintenance, incidents).
        match self.forced {
            edgewise_support::breaker_state::FORCED_OPEN => {
                return (
                    Admission::Reject {
                        state: BreakerState::Open,
                    },
                    None,
                    Transition::None,
                )
            }
            edgewise_support::breaker_state::FORCED_CLOSED => {
                return (Admission::Pass, None, Transition::None)
            }
            _ => {}
        }
        if params.active_probe.is_some() {
            if let Some(decided) = self.admit_while_probing_actively(now) {
                return decided;
            }
        }
        match self.state {
            BreakerState::Closed => (Admission::Pass, None, Transition::None),
            BreakerState::Open if now < self.open_until => (
                Admission::Reject {
                    state: BreakerState::Open,
                },
                None,
                Transition::None,
            ),
            BreakerState::Open => {
                let mut next = self.clone();
                next.state = BreakerState::HalfOpen;
                next.probes_issued = 1;
                next.probes_succeeded = 0;
                next.probes_full = params.probes <= 1;
                // While half-open, `open_until` is the probes' deadline.
                next.open_until = now.saturating_add(params.probe_timeout_ns);
                (
                    Admission::Probe {
                        episode: next.opens,
                    },
                    Some(next),
                    Transition::HalfOpened,
                )
            }
            // The probes did not all succeed in time (one hangs, or its client trickles): the
            // upstream is not shown healthy, so it opens again.
            BreakerState::HalfOpen if now >= self.open_until => {
                let mut next = self.clone();
                let for_ns = next.open(params, now);
                (
                    Admission::Reject {
                        state: BreakerState::Open,
                    },
                    Some(next),
                    Transition::Reopened { for_ns },
                )
            }
            BreakerState::HalfOpen if self.probes_issued < params.probes => {
                let mut next = self.clone();
                next.probes_issued += 1;
                next.probes_full = next.probes_issued >= params.probes;
                (
                    Admission::Probe {
                        episode: next.opens,
                    },
                    Some(next),
                    Transition::None,
                )
            }
            BreakerState::HalfOpen => (
                Admission::Reject {
                    state: BreakerState::HalfOpen,
                },
                None,
                Transition::None,
            ),
        }
    }

    /// With an active probe, a client request never probes: it is rejected while open or
    /// half-open (the router fails it over). None: decide as without active probing — closed,
    /// a half-open deadline that passed, or an open breaker left unprobed for
    /// `ACTIVE_PROBE_GRACE_NS` past its time (no worker is left to probe it).
    fn admit_while_probing_actively(
        &self,
        now: u64,
    ) -> Option<(Admission, Option<Breaker>, Transition)> {
        let reject = |state| Some((Admission::Reject { state }, None, Transition::None));
        match self.state {
            BreakerState::Closed => None,
            BreakerState::Open
                if now
                    < self
                        .open_until
                        .saturating_add(edgewise_support::breaker_state::ACTIVE_PROBE_GRACE_NS) =>
            {
                reject(BreakerState::Open)
            }
            BreakerState::Open => None,
            BreakerState::HalfOpen if now >= self.open_until => None,
            BreakerState::HalfOpen => reject(BreakerState::HalfOpen),
        }
    }

    /// The breaker's own half-open probe at `now`: when it is open and its time is up, or
    /// half-open with every probe so far answered healthy and more to go, it takes the next
    /// probe place (returned: the episode to record the answer under); a half-open deadline
    /// that passed (a probe never answered) opens it again. One probe at a time, across every
    /// worker (the caller writes the result with CAS).
    pub fn take_active_probe(
        &self,
        params: &Params,
        now: u64,
    ) -> (Option<Breaker>, Option<u32>, Transition) {
        let Some(active) = params.active_probe.as_ref().filter(|_| self.forced == 0) else {
            return (None, None, Transition::None);
        };
        // The probe's own timeout, and a second for its answer to be recorded.
        let deadline = now
            .saturating_add(active.timeout_ns)
            .saturating_add(1_000_000_000);
        match self.state {
            BreakerState::Open if now >= self.open_until => {
                let mut next = self.clone();
                next.state = BreakerState::HalfOpen;
                next.probes_issued = 1;
                next.probes_succeeded = 0;
                next.probes_full = true;
                next.open_until = deadline;
                (Some(next), Some(self.opens), Transition::HalfOpened)
            }
            BreakerState::HalfOpen if now >= self.open_until => {
                let mut next = self.clone();
                let for_ns = next.open(params, now);
                (Some(next), None, Transition::Reopened { for_ns })
            }
            BreakerState::HalfOpen
                if self.probes_issued == self.probes_succeeded
                    && self.probes_issued < params.probes =>
            {
                let mut next = self.clone();
                next.probes_issued += 1;
                next.probes_full = true;
                next.open_until = deadline;
                (Some(next), Some(self.opens), Transition::None)
            }
            _ => (None, None, Transition::None),
        }
    }

    /// The breaker with an operator's forced state: open or closed (outcomes stop counting),
    /// or automatic again — a fresh closed breaker, counting from zero.
    pub fn forced_to(&self, forced: u8) -> Breaker {
        if forced == 0 {
            return Breaker::new(self.identity_hash);
        }
        Breaker {
            forced,
            ..self.clone()
        }
    }

    /// Records a response. `probe` is the admission's episode when it was a probe.
    pub fn record(
        &self,
        params: &Params,
        outcome: Outcome,
        probe: Option<u32>,
        now: u64,
    ) -> (Option<Breaker>, Transition) {
        if self.forced != 0 {
            return (None, Transition::None); // outcomes do not count while forced
        }
        match (self.state, probe) {
            (BreakerState::HalfOpen, Some(episode)) if episode == self.opens => {
                let mut next = self.clone();
                if outcome.failed || outcome.slow {
                    let for_ns = next.open(params, now);
                    return (Some(next), Transition::Reopened { for_ns });
                }
                next.probes_succeeded += 1;
                if next.probes_succeeded >= params.probes {
                    let mut closed = Breaker::new(self.identity_hash);
                    closed.state = BreakerState::Closed;
                    return (Some(closed), Transition::Closed);
                }
                (Some(next), Transition::None)
            }
            (BreakerState::Closed, _) => {
                let counting_rates =
                    params.failure_rate.is_some() || params.slow_call_rate.is_some();
                if !outcome.failed
                    && !outcome.slow
                    && self.consecutive_failures == 0
                    && !counting_rates
                {
                    return (None, Transition::None); // nothing would change: no write
                }
                let mut next = self.clone();
                next.consecutive_failures = if outcome.failed {
                    next.consecutive_failures.saturating_add(1)
                } else {
                    0
                };
                if counting_rates {
                    let period = Breaker::period(params, now);
                    let bucket = &mut next.buckets[(period as usize) % BUCKETS];
                    if bucket.period != period {
                        *bucket = Bucket {
                            period,
                            ..Bucket::default()
                        };
                    }
                    bucket.calls += 1;
                    bucket.failures += outcome.failed as u32;
                    bucket.slow += outcome.slow as u32;
                }
                if let Some(reason) = next.trip_reason(params, now) {
                    let for_ns = next.open(params, now);
                    return (Some(next), Transition::Opened { for_ns, reason });
                }
                (Some(next), Transition::None)
            }
            // Responses to requests admitted before the state changed do not count.
            _ => (None, Transition::None),
        }
    }

    /// A call the slow-call watch already counted (as slow, while it hung) ended failing —
    /// typically Envoy's route timeout: it is a failure too, for the consecutive count and
    /// the failure rate, but not another call.
    pub fn record_late_failure(&self, params: &Params, now: u64) -> (Option<Breaker>, Transition) {
        if self.state != BreakerState::Closed || self.forced != 0 {
            return (None, Transition::None);
        }
        let mut next = self.clone();
        next.consecutive_failures = next.consecutive_failures.saturating_add(1);
        let period = Breaker::period(params, now);
        let bucket = &mut next.buckets[(period as usize) % BUCKETS];
        if bucket.period == period && bucket.failures < bucket.calls {
            bucket.failures += 1;
        }
        if let Some(reason) = next.trip_reason(params, now) {
            let for_ns = next.open(params, now);
            return (Some(next), Transition::Opened { for_ns, reason });
        }
        (Some(next), Transition::None)
    }

    /// A probe that ended without a response (client went away): give its place back.
    pub fn abandon_probe(&self, episode: u32) -> Option<Breaker> {
        if self.state == BreakerState::HalfOpen
            && self.opens == episode
            && self.probes_issued > self.probes_succeeded
        {
            let mut next = self.clone();
            next.probes_issued -= 1;
            next.probes_full = false;
            return Some(next);
        }
        None
    }

    fn trip_reason(&self, params: &Params, now: u64) -> Option<TripReason> {
        if let Some(threshold) = params.consecutive_failures {
            if self.consecutive_failures >= threshold {
                return Some(TripReason::ConsecutiveFailures(self.consecutive_failures));
            }
        }
        let (calls, failures, slow) = self.totals(params, now);
        if calls >= params.min_requests && calls > 0 {
            if let Some(rate) = params.failure_rate {
                if failures as f64 >= rate * calls as f64 {
                    return Some(TripReason::FailureRate { failures, calls });
                }
            }
            if let Some(rate) = params.slow_call_rate {
                if slow as f64 >= rate * calls as f64 {
                    return Some(TripReason::SlowCallRate { slow, calls });
                }
            }
        }
        None
    }

    /// Moves to OPEN for duration × backoff^(opens so far), capped; returns the duration.
    fn open(&mut self, params: &Params, now: u64) -> u64 {
        let factor = params.backoff.powi(self.opens.min(64) as i32);
        let for_ns = ((params.open_ns as f64) * factor).min(params.max_open_ns as f64) as u64;
        self.state = BreakerState::Open;
        self.open_until = now.saturating_add(for_ns);
        self.opens = self.opens.saturating_add(1);
        self.consecutive_failures = 0;
        self.probes_issued = 0;
        self.probes_succeeded = 0;
        self.probes_full = false;
        self.buckets = [Bucket::default(); BUCKETS];
        for_ns
    }
}

#[cfg(test)]
mod tests;
