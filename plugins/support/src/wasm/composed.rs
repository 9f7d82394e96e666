//! What a composed module (several filters in one VM) provides to the filters inside it.

use super::*;

/// What a composed module (several filters in one VM, see `plugins/edge-chain`) provides
/// to the filters inside it: each filter's own configuration section, and hooks for the
/// two things a filter does on its own initiative — resuming a paused request (the rest of
/// the composed chain must run first) and asking for ticks (one period per VM).
#[derive(Default)]
pub struct Composed {
    pub configuration: Option<Vec<u8>>,
    pub resume: Option<std::rc::Rc<dyn Fn(u32)>>,
    pub tick: Option<std::rc::Rc<dyn Fn(std::time::Duration)>>,
}

thread_local! {
    pub static COMPOSED: std::cell::RefCell<Composed> = std::cell::RefCell::new(Composed::default());
}

/// Resumes the paused request of stream `context_id` (the effective context must already be
/// that stream). In a composed module the filters after this one run first.
pub fn resume_request(context_id: u32) {
    let hook = COMPOSED.with(|c| c.borrow().resume.clone());
    match hook {
        Some(resume) => resume(context_id),
        None => {
            let _ = hostcalls::resume_http_request();
        }
    }
}

/// Asks for the root context's tick every `period` (zero: no more ticks). In a composed
/// module the VM ticks at the shortest period any of its filters asks for.
pub fn set_tick_period(period: std::time::Duration) {
    let hook = COMPOSED.with(|c| c.borrow().tick.clone());
    match hook {
        Some(tick) => tick(period),
        None => apply_wanted_tick_period(period),
    }
}

/// Resumes a request this filter parked, from the root context's tick: the stream's context
/// first becomes the effective one (a stream that is gone is skipped), then
/// [`resume_request`].
pub fn resume_parked(context_id: u32) {
    if hostcalls::set_effective_context(context_id).is_ok() {
        resume_request(context_id);
    }
}
