//! The decision, made inside Redis by one atomic Lua script for all of a request's limited
//! descriptors: GCRA (a token bucket of `requests_per_unit` tokens refilling evenly over the
//! unit — the local limiter's `token_bucket` with `burst` = `limit`). Every descriptor is
//! checked first; only when all admit are their hits spent, so a request denied by one
//! limit costs no other (denied calls do not count). Time is Redis's own clock (`TIME`), so
//! any number of service replicas agree. Each key holds its theoretical arrival time (µs)
//! and expires once the bucket is full again.

/// KEYS: one per limited descriptor. ARGV: per key its period (µs), limit and hits.
/// Returns per key: admitted (1/0), remaining tokens, retry after (ms, when not admitted),
/// time until the bucket is full again (ms).
pub const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local checked = {}
local all = true
for i = 1, #KEYS do
  local period = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  local hits = tonumber(ARGV[3 * i])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local new_tat = tat + hits * interval
  local ok = new_tat - period <= now
  if not ok then all = false end
  checked[i] = { tat, new_tat, interval, period, ok }
end
local out = {}
for i = 1, #KEYS do
  local tat, new_tat, interval, period, ok = unpack(checked[i])
  if all then
    redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
    table.insert(out, 1)
    table.insert(out, math.max(0, math.floor((period - (new_tat - now)) / interval)))
    table.insert(out, 0)
    table.insert(out, math.ceil((new_tat - now) / 1000))
  else
    table.insert(out, ok and 1 or 0)
    table.insert(out, math.max(0, math.floor((period - (tat - now)) / interval)))
    table.insert(out, ok and 0 or math.ceil((new_tat - period - now) / 1000))
    table.insert(out, math.ceil((tat - now) / 1000))
  end
end
return out
"#;

/// One descriptor's outcome from [`GCRA`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub admitted: bool,
    pub remaining: u64,
    pub retry_after_ms: u64,
    pub full_in_ms: u64,
}

/// Reads the script's flat reply: four integers per key.
pub fn outcomes(reply: &[i64]) -> Option<Vec<Outcome>> {
    if reply.len() % 4 != 0 {
        return None;
    }
    Some(
        reply
            .chunks(4)
            .map(|c| Outcome {
                admitted: c[0] == 1,
                remaining: c[1].max(0) as u64,
                retry_after_ms: c[2].max(0) as u64,
                full_in_ms: c[3].max(0) as u64,
            })
            .collect(),
    )
}
