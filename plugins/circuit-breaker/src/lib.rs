//! Edgewise circuit breaking: a host-independent core (config, the breaker state machine,
//! its bounded slot table in shared data) and a thin proxy-wasm adapter.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod breaker;
pub mod config;
pub mod control;
pub mod table;

#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
pub use adapter::new_root;

pub use breaker::{Admission, Breaker, Outcome, Transition};
pub use config::Config;

/// Classifies a response: a failure if its status is in the configured set, or, with
/// `local_failures`, if Envoy generated it (connect failure, reset, timeout: its response
/// code details are not `via_upstream`) with a 5xx status. Slow if it took `slow_call` or more.
pub fn classify(
    params: &config::Params,
    status: Option<u16>,
    details: Option<&[u8]>,
    elapsed_ns: u64,
) -> Outcome {
    let failed = match status {
        // A response without a usable status counts as a failure.
        None => true,
        Some(code) => {
            params.counts_status(code)
                || (params.local_failures
                    && code >= 500
                    && details.is_some_and(|d| d != b"via_upstream"))
        }
    };
    let slow = params.slow_call_ns.is_some_and(|limit| elapsed_ns >= limit);
    Outcome { failed, slow }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let p = Config::from_json(br#"{"failure":{"statuses":["500-502"],"slow_call":"2s"}}"#)
            .unwrap()
            .defaults;
        assert!(classify(&p, Some(502), Some(b"via_upstream"), 0).failed);
        assert!(
            !classify(&p, Some(503), Some(b"via_upstream"), 0).failed,
            "503 is not in the set"
        );
        assert!(
            classify(
                &p,
                Some(503),
                Some(b"upstream_reset_before_response_started{connection_failure}"),
                0
            )
            .failed,
            "Envoy's own 503"
        );
        assert!(!classify(&p, Some(404), Some(b"route_not_found"), 0).failed);
        assert!(classify(&p, None, None, 0).failed);
        assert!(classify(&p, Some(200), None, 2_000_000_000).slow);
    }
}
