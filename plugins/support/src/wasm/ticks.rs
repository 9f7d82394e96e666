//! The root context's tick, shared by what the filter asks for and the metrics flush.

use super::*;

/// The root context's tick period is shared by what the filter asks for
/// (`set_tick_period`) and the flush of deferred metrics: the host ticks at the shorter.
pub(super) struct Ticks {
    /// What the filter (or, in a composed module, the shortest of its filters) asked for.
    pub(super) wanted: std::cell::Cell<std::time::Duration>,
    /// The shortest `metrics_flush` configured in this VM (zero: none).
    pub(super) flush: std::cell::Cell<std::time::Duration>,
    /// Deferred increments wait for a flush.
    pub(super) flush_armed: std::cell::Cell<bool>,
    /// The period last given to the host.
    pub(super) current: std::cell::Cell<std::time::Duration>,
}

thread_local! {
    pub(super) static PENDING: std::cell::RefCell<Vec<(u32, i64)>> = const { std::cell::RefCell::new(Vec::new()) };
    pub(super) static TICKS: Ticks = const {
        Ticks {
            wanted: std::cell::Cell::new(std::time::Duration::ZERO),
            flush: std::cell::Cell::new(std::time::Duration::ZERO),
            flush_armed: std::cell::Cell::new(false),
            current: std::cell::Cell::new(std::time::Duration::ZERO),
        }
    };
}

/// Gives the host the shorter of the wanted period and, while increments wait, the flush
/// period; no host call when that is what the host already has.
pub(super) fn apply_tick_period() {
    let period = TICKS.with(|t| {
        let wanted = t.wanted.get();
        let flush = if t.flush_armed.get() {
            t.flush.get()
        } else {
            std::time::Duration::ZERO
        };
        let period = match (wanted.is_zero(), flush.is_zero()) {
            (true, _) => flush,
            (false, true) => wanted,
            (false, false) => wanted.min(flush),
        };
        (period != t.current.get()).then_some(period)
    });
    // Recorded only once the host took it: a refused request is made again next time.
    if let Some(period) = period {
        if crate::abi::set_tick_period(period).is_ok() {
            TICKS.with(|t| t.current.set(period));
        }
    }
}

/// The root context's tick: flushes deferred metrics, and says whether the filter's own
/// tick work should run (it asked for ticks), so a tick that came only for the flush does
/// nothing else. Every root context's `on_tick` starts with it.
pub fn tick() -> bool {
    flush_metrics();
    TICKS.with(|t| t.flush_armed.set(false));
    apply_tick_period();
    TICKS.with(|t| !t.wanted.get().is_zero())
}

/// Sets the period the filter's root context wants ticks at (zero: none); the host ticks
/// at the shorter of it and a pending metrics flush. A composed module calls this with the
/// shortest period its filters asked for.
pub fn apply_wanted_tick_period(period: std::time::Duration) {
    TICKS.with(|t| t.wanted.set(period));
    apply_tick_period();
}
