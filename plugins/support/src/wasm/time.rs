//! Time: the host's wall clock, and the per-VM clock that never runs backwards.

/// The host's wall clock in nanoseconds since the Unix epoch (HTTP dates and ages follow it,
/// corrections included). None when the host cannot tell the time.
pub fn wall_nanos() -> Option<u64> {
    crate::abi::current_time_nanos().ok()
}

thread_local! {
    /// (latest time handed out, offset added to the host's clock) for `now_nanos`.
    pub(super) static STEADY: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Time for rate limits, windows, open periods and leases: the host's wall clock that never
/// runs backwards in this VM and keeps its pace through a step back. When the clock steps
/// back by Δ (NTP correcting a fast clock), the step is absorbed into an offset: time goes on
/// from the latest value handed out instead of repeating Δ (which would deny every recently
/// active key for Δ and keep breakers open Δ longer). Each VM absorbs a step on its first
/// read after it, so busy workers agree to within their gap between reads; forward steps
/// pass through. None when the host cannot tell the time (every filter then fails open).
pub fn now_nanos() -> Option<u64> {
    let host = wall_nanos()?;
    Some(STEADY.with(|steady| {
        let (latest, mut offset) = steady.get();
        let mut now = host.saturating_add(offset);
        if now < latest {
            offset += latest - now;
            now = latest;
        }
        steady.set((now, offset));
        now
    }))
}
