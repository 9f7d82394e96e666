//! Metric handles that never panic, with deferred (flushed) counters.

use super::*;

/// A counter or gauge defined once at configure time. Failures are swallowed: metrics must
/// never take traffic down. A counter made `deferred` adds its increments up in the VM and
/// hands them to the host on the root context's tick (`metrics_flush`), one host call per
/// counter per flush instead of one per request.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    id: Option<u32>,
    deferred: bool,
}

impl Metric {
    pub fn counter(name: &str) -> Metric {
        Metric {
            id: crate::abi::define_metric(MetricType::Counter as u32, name).ok(),
            deferred: false,
        }
    }

    /// A counter whose increments reach Envoy at the next flush (at most `metrics_flush`
    /// late) when `flush` is non-zero; immediate otherwise.
    pub fn counter_flushed_every(name: &str, flush: std::time::Duration) -> Metric {
        if !flush.is_zero() {
            TICKS.with(|t| {
                let current = t.flush.get();
                if current.is_zero() || flush < current {
                    t.flush.set(flush);
                }
            });
        }
        Metric {
            deferred: !flush.is_zero(),
            ..Metric::counter(name)
        }
    }

    pub fn gauge(name: &str) -> Metric {
        Metric {
            id: crate::abi::define_metric(MetricType::Gauge as u32, name).ok(),
            deferred: false,
        }
    }

    pub fn increment(&self, by: i64) {
        let Some(id) = self.id else { return };
        if !self.deferred {
            let _ = crate::abi::increment_metric(id, by);
            return;
        }
        PENDING.with(|p| {
            let mut pending = p.borrow_mut();
            match pending.iter_mut().find(|(i, _)| *i == id) {
                Some((_, total)) => *total += by,
                None => pending.push((id, by)),
            }
        });
        // Counts wait: the tick must run. A host call only when the host's period is not
        // already right (the first count since a flush, or after a refused request) — once
        // per flush period, not per request.
        TICKS.with(|t| t.flush_armed.set(true));
        apply_tick_period();
    }

    pub fn set(&self, value: u64) {
        if let Some(id) = self.id {
            let _ = crate::abi::record_metric(id, value);
        }
    }
}

/// Hands every deferred increment to the host (one call per counter that moved).
pub fn flush_metrics() {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    for (id, total) in pending {
        if total != 0 {
            let _ = crate::abi::increment_metric(id, total);
        }
    }
}
