//! Operator controls: the forced breaker states the control service lists
//! (`GET /v1/breakers`, edgewise-ratelimit), turned into the changes to apply. What this
//! Envoy last applied lives in shared data, so an upstream dropped from the list goes back
//! to automatic, and a reloaded module does not apply everything again.

use edgewise_support::breaker_state::{FORCED_CLOSED, FORCED_OPEN};
use edgewise_support::store::{update_with_cas, CasStore};
use serde::Deserialize;

pub const APPLIED_KEY: &str = "edgewise.cb.control.applied";
pub const LEASE_KEY: &str = "edgewise.cb.control.lease";
/// Forced upstreams kept at most (the service refuses more).
pub const MAX_FORCED: usize = 256;

#[derive(Debug, Deserialize)]
pub struct Listed {
    pub breakers: Vec<ListedBreaker>,
}

#[derive(Debug, Deserialize)]
pub struct ListedBreaker {
    pub upstream: String,
    pub state: String,
    #[serde(default)]
    pub by: String,
}

/// One change: (upstream, forced state — 0 automatic, who).
pub type Change = (String, u8, String);

/// The forced states listed (bounded; unknown states ignored).
pub fn desired(listed: &Listed) -> Vec<Change> {
    listed
        .breakers
        .iter()
        .filter_map(|b| {
            let forced = match b.state.as_str() {
                "open" => FORCED_OPEN,
                "closed" => FORCED_CLOSED,
                _ => return None,
            };
            (!b.upstream.is_empty() && b.upstream.len() <= 128)
                .then(|| (b.upstream.clone(), forced, b.by.clone()))
        })
        .take(MAX_FORCED)
        .collect()
}

/// What to apply to go from `applied` to `desired`: new or changed states, and automatic
/// for upstreams no longer listed.
pub fn changes(applied: &[(String, u8)], desired: &[Change]) -> Vec<Change> {
    let mut out: Vec<Change> = desired
        .iter()
        .filter(|(u, f, _)| !applied.iter().any(|(a, s)| a == u && s == f))
        .cloned()
        .collect();
    for (upstream, _) in applied {
        if !desired.iter().any(|(u, _, _)| u == upstream) {
            out.push((upstream.clone(), 0, "control service".into()));
        }
    }
    out
}

/// What this Envoy applied last.
pub fn load_applied(store: &impl CasStore) -> Vec<(String, u8)> {
    let Ok(Some((bytes, _))) = store.get(APPLIED_KEY) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|line| {
            let (state, upstream) = line.split_once(' ')?;
            Some((upstream.to_string(), state.parse().ok()?))
        })
        .take(MAX_FORCED)
        .collect()
}

pub fn save_applied(store: &impl CasStore, desired: &[Change]) -> bool {
    let text: String = desired
        .iter()
        .map(|(u, f, _)| format!("{f} {u}\n"))
        .collect();
    update_with_cas(store, APPLIED_KEY, 4, |_| {
        (Some(text.clone().into_bytes()), ())
    })
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewise_support::store::MemoryStore;

    fn listed(json: &str) -> Listed {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn changes_follow_the_list_and_unlisted_upstreams_go_back_to_automatic() {
        let store = MemoryStore::new();
        let want = desired(&listed(
            r#"{"breakers":[{"upstream":"api-v2","state":"open","by":"alice"},{"upstream":"x","state":"bogus"}]}"#,
        ));
        assert_eq!(want, vec![("api-v2".into(), FORCED_OPEN, "alice".into())]);
        let first = changes(&load_applied(&store), &want);
        assert_eq!(first, want);
        assert!(save_applied(&store, &want));
        assert!(
            changes(&load_applied(&store), &want).is_empty(),
            "nothing new"
        );
        let none = desired(&listed(r#"{"breakers":[]}"#));
        assert_eq!(
            changes(&load_applied(&store), &none),
            vec![("api-v2".into(), 0, "control service".into())]
        );
        let closed = desired(&listed(
            r#"{"breakers":[{"upstream":"api-v2","state":"closed"}]}"#,
        ));
        assert_eq!(changes(&load_applied(&store), &closed)[0].1, FORCED_CLOSED);
    }
}
