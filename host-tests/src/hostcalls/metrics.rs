//! Metrics with Envoy's rules: define, increment, record, get.

use super::*;

pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, id_ptr: i32| -> i32 {
            guard!(c, "proxy_define_metric");
            let Some(kind) = MetricKind::from_raw(kind) else {
                return Status::BadArgument.code();
            };
            let name = match read_str(&mut c, np, nl) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let id = {
                let state = c.data_mut();
                state
                    .world
                    .lock()
                    .metrics
                    .entry(name.clone())
                    .or_insert(MetricState {
                        kind,
                        value: 0,
                        samples: Vec::new(),
                    });
                // Envoy keeps the metric type in the id's low two bits.
                let type_bits = match kind {
                    MetricKind::Counter => 0,
                    MetricKind::Gauge => 1,
                    MetricKind::Histogram => 2,
                };
                let id = (state.next_metric_id << 2) | type_bits;
                state.next_metric_id += 1;
                state.metric_ids.insert(id, (kind, name));
                id
            };
            code(write_u32(&mut c, id_ptr, id))
        },
    )?;
    /// Runs `f` on a defined metric. Unknown ids: `NotFound`, or `BadArgument` when the id's
    /// type bits name no metric type (Envoy decodes the type from the id first).
    fn with_metric(
        c: &mut C<'_>,
        id: i32,
        f: impl FnOnce(MetricKind, &mut MetricState) -> Status,
    ) -> i32 {
        let state = c.data();
        let Some((kind, name)) = state.metric_ids.get(&(id as u32)).cloned() else {
            return if id & 3 == 3 {
                Status::BadArgument.code()
            } else {
                Status::NotFound.code()
            };
        };
        let mut world = state.world.lock();
        match world.metrics.get_mut(&name) {
            Some(metric) => f(kind, metric).code(),
            None => Status::NotFound.code(),
        }
    }
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, offset: i64| -> i32 {
            guard!(c, "proxy_increment_metric");
            with_metric(&mut c, id, |kind, m| match kind {
                MetricKind::Counter if offset > 0 => {
                    m.value += offset;
                    Status::Ok
                }
                MetricKind::Counter => Status::BadArgument,
                MetricKind::Gauge => {
                    m.value = m.value.saturating_add(offset).max(0);
                    Status::Ok
                }
                MetricKind::Histogram => Status::BadArgument,
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: C<'_>, id: i32, value: i64| -> i32 {
            guard!(c, "proxy_record_metric");
            with_metric(&mut c, id, |kind, m| {
                match kind {
                    MetricKind::Counter => m.value += value,
                    MetricKind::Gauge => m.value = value,
                    MetricKind::Histogram => m.samples.push(value as u64),
                }
                Status::Ok
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, result_ptr: i32| -> i32 {
            guard!(c, "proxy_get_metric");
            let mut value = None;
            let status = with_metric(&mut c, id, |kind, m| {
                if kind == MetricKind::Histogram {
                    return Status::BadArgument;
                }
                value = Some(m.value as u64);
                Status::Ok
            });
            match value {
                Some(v) => code(write(&mut c, result_ptr, &v.to_le_bytes())),
                None => status,
            }
        },
    )?;
    Ok(())
}
