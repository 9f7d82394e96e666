//! The decision, made inside Redis by one atomic Lua script for all of a request's limited
//! descriptors, with the local limiter's semantics: GCRA (`token_bucket`: `requests_per_unit`
//! tokens refilling evenly over the unit, burst = limit; the key holds the theoretical
//! arrival time in µs) or `sliding_window` (≤ limit by the two-window estimate: the previous
//! window weighted by its remaining overlap, plus the current; the key holds "window current
//! previous"). Every descriptor is checked first; only when all admit are their hits spent,
//! so a request denied by one limit costs no other (denied calls do not count). Time is
//! Redis's own clock (`TIME`), so any number of service replicas agree. Keys expire once
//! they no longer matter.

/// KEYS: one per limited descriptor. ARGV: per key its algorithm (0 GCRA, 1 sliding
/// window, 2 calendar quota), period (µs; for a quota the end of the current period, µs
/// since the epoch), limit and hits; then 1 to spend the hits whatever is left (a charge
/// after a response: into debt), else 0 or nothing. Returns per key: admitted (1/0), remaining, retry
/// after (ms, when not admitted), time until the key is back to full (ms).
pub const DECIDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local checked = {}
local all = true
-- A charge after a response (the caller's x-edgewise-charge metadata): spent whatever is
-- left, into debt if need be.
local force = ARGV[4 * #KEYS + 1] == '1'
for i = 1, #KEYS do
  local algorithm = tonumber(ARGV[4 * i - 3])
  local period = tonumber(ARGV[4 * i - 2])
  local limit = tonumber(ARGV[4 * i - 1])
  local hits = tonumber(ARGV[4 * i])
  local c = { algorithm = algorithm, period = period, limit = limit, hits = hits }
  if algorithm == 0 then
    local interval = period / limit
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    if tat < now then tat = now end
    c.tat = tat
    c.interval = interval
    c.new_tat = tat + hits * interval
    c.ok = c.new_tat - period <= now
  elseif algorithm == 2 then
    -- A calendar quota: `period` is the current period's end (µs); the key holds
    -- "end count", so a new period starts from zero.
    local count = 0
    local stored = redis.call('GET', KEYS[i])
    if stored then
      local e, n = string.match(stored, '^(%d+) (%d+)$')
      if tonumber(e) == period then count = tonumber(n) end
    end
    c.count = count
    c.ok = count + hits <= limit
  else
    local idx = math.floor(now / period)
    local cur, prev = 0, 0
    local stored = redis.call('GET', KEYS[i])
    if stored then
      local w, sc, sp = string.match(stored, '^(%d+) (%d+) (%d+)$')
      w, sc, sp = tonumber(w), tonumber(sc), tonumber(sp)
      if w == idx then cur, prev = sc, sp elseif w == idx - 1 then cur, prev = 0, sc end
    end
    local elapsed = (now - idx * period) / period
    local estimate = prev * (1 - elapsed) + cur
    c.idx, c.cur, c.prev, c.elapsed, c.estimate = idx, cur, prev, elapsed, estimate
    c.ok = estimate + hits <= limit
  end
  if not c.ok then all = false end
  checked[i] = c
end
local out = {}
for i = 1, #KEYS do
  local c = checked[i]
  local spend = all or force
  local admitted, remaining, retry, full
  if c.algorithm == 0 then
    if spend then
      redis.call('SET', KEYS[i], string.format('%.0f', c.new_tat), 'PX', math.ceil((c.new_tat - now) / 1000) + 1000)
      remaining = math.floor((c.period - (c.new_tat - now)) / c.interval)
      full = math.ceil((c.new_tat - now) / 1000)
      retry = 0
    else
      remaining = math.floor((c.period - (c.tat - now)) / c.interval)
      full = math.ceil((c.tat - now) / 1000)
      retry = c.ok and 0 or math.ceil((c.new_tat - c.period - now) / 1000)
    end
  elseif c.algorithm == 2 then
    local to_end = math.max(1, math.ceil((c.period - now) / 1000))
    local used = c.count
    if spend then
      used = used + c.hits
      redis.call('SET', KEYS[i], string.format('%.0f %.0f', c.period, used), 'PX', to_end + 1000)
    end
    remaining = c.limit - used
    full = to_end
    retry = c.ok and 0 or to_end
  else
    local used = c.estimate
    if spend then
      redis.call('SET', KEYS[i], string.format('%d %d %d', c.idx, c.cur + c.hits, c.prev), 'PX', math.ceil(2 * c.period / 1000) + 1000)
      used = used + c.hits
      retry = 0
    elseif c.ok then
      retry = 0
    else
      -- When the previous window's weight has decayed enough, else the next window.
      local room = c.limit - c.cur - c.hits
      local wait
      if room >= 0 and c.prev > 0 then
        wait = ((1 - room / c.prev) - c.elapsed) * c.period
      else
        wait = (c.idx + 1) * c.period - now
      end
      retry = math.max(1, math.ceil(wait / 1000))
    end
    remaining = math.floor(c.limit - used)
    full = math.ceil(((c.idx + 2) * c.period - now) / 1000)
  end
  if spend then admitted = 1 elseif c.ok then admitted = 2 else admitted = 0 end
  table.insert(out, admitted)
  table.insert(out, math.max(0, remaining))
  table.insert(out, retry)
  table.insert(out, full)
end
return out
"#;

/// One descriptor's outcome from [`DECIDE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub admitted: bool,
    pub remaining: u64,
    pub retry_after_ms: u64,
    pub full_in_ms: u64,
}

/// Reads the script's flat reply: four integers per key.
pub fn outcomes(reply: &[i64]) -> Option<Vec<Outcome>> {
    if !reply.len().is_multiple_of(4) {
        return None;
    }
    Some(
        reply
            .chunks(4)
            .map(|c| Outcome {
                // 1: admitted and spent; 2: under its limit but not spent (another
                // descriptor of the call was over); 0: over its limit.
                admitted: c[0] != 0,
                remaining: c[1].max(0) as u64,
                retry_after_ms: c[2].max(0) as u64,
                full_in_ms: c[3].max(0) as u64,
            })
            .collect(),
    )
}
