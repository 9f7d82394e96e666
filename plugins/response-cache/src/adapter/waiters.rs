//! Requests waiting for another request's fill of their key: served from the entry once it is there, or sent on.

use super::*;

/// Looks after waiting requests at O(1) per waiter: one fill-lock read per key per tick
/// while their fill goes on; only once it ended (or their wait ran out) is the entry looked
/// up and decoded — served when usable, else the request goes to the origin itself.
pub(super) fn serve_waiters(shared: &Shared) {
    let now_ms = now_millis();
    let now_s = (now_ms / 1000) as i64;
    let waiting = shared.waiters.borrow_mut().take_all();
    let mut still = Parked::default();
    let mut filling: HashMap<(usize, u64), bool> = HashMap::new();
    for (context_id, until_ms, waiter) in waiting {
        if !waiter.alive.get() {
            continue;
        }
        let slots = waiter.config.coalesce.map_or(1, |c| c.slots);
        if now_ms < until_ms
            && *filling
                .entry((Rc::as_ptr(&waiter.config) as usize, waiter.key_hash))
                .or_insert_with(|| coalesce::filling(&waiter.store, slots, waiter.key_hash, now_ms))
        {
            still.park(context_id, until_ms, waiter);
            continue;
        }
        let mut request = waiter.request.clone();
        let decision = on_request(&waiter.config, &waiter.store, &mut request, now_s);
        if let RequestDecision::Serve {
            status,
            mut headers,
            body,
            ..
        } = decision
        {
            for (name, value) in headers.iter_mut() {
                if name == "cache-status" {
                    value.extend_from_slice(b"; collapsed");
                }
            }
            if hostcalls::set_effective_context(context_id).is_ok()
                && reply(&waiter.served, status, headers, &body)
            {
                shared.metrics.coalesced.increment(1);
                continue;
            }
        }
        // The fill ended without a usable entry (not storable, failed) or took too long:
        // this request goes to the origin itself.
        edgewise_support::wasm::resume_parked(context_id);
    }
    let mut waiters = shared.waiters.borrow_mut();
    for (context_id, until_ms, waiter) in still.take_all() {
        waiters.park(context_id, until_ms, waiter);
    }
}
