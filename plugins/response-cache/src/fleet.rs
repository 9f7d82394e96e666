//! Fleet purges: what a cache does with a poll of the control service's purge log
//! (`GET /v1/purges?after=<cursor>`, answered by edgewise-ratelimit's control API). Each
//! logged purge becomes a local rule (`purge.rs`); the cursor — the last log id applied —
//! lives in shared data, so the workers of one Envoy poll in turn and a reloaded module
//! carries on where it was. A cursor older than what the log has trimmed means purges were
//! missed: everything is soft-purged (as on the first poll, for what was stored before it).

use edgewise_support::store::{update_with_cas, CasStore};
use serde::Deserialize;

use crate::purge::{add, host_only, Target};

/// The cursor (last applied log id) and the poll lease (who polls until when).
pub const CURSOR_KEY: &str = "edgewise.cache.fleet.cursor";
pub const LEASE_KEY: &str = "edgewise.cache.fleet.lease";

#[derive(Debug, Deserialize)]
pub struct Poll {
    pub last: String,
    pub trimmed: String,
    pub entries: Vec<Logged>,
}

#[derive(Debug, Deserialize)]
pub struct Logged {
    pub id: String,
    pub kind: String,
    pub host: String,
    pub value: String,
    pub soft: bool,
}

/// A log id as (milliseconds, sequence).
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The cursor, if this Envoy has one.
pub fn cursor(store: &impl CasStore) -> Option<String> {
    let (value, _) = store.get(CURSOR_KEY).ok()??;
    String::from_utf8(value)
        .ok()
        .filter(|c| parse_id(c).is_some())
}

/// Takes the poll for `period_ms` from `now_ms` when nobody holds it: true for the one
/// worker that should poll now.
pub fn take_lease(store: &impl CasStore, now_ms: u64, period_ms: u64) -> bool {
    edgewise_support::store::take_lease(store, LEASE_KEY, now_ms, period_ms)
}

/// Gives the poll up (the next tick on any worker may poll at once).
pub fn release_lease(store: &impl CasStore) {
    let _ = update_with_cas(store, LEASE_KEY, 4, |_| {
        (Some(0u64.to_le_bytes().to_vec()), ())
    });
}

/// What one poll did.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub purges: usize,
    /// The log trimmed purges this cache never saw: everything was soft-purged.
    pub gap: bool,
    /// More entries wait (the answer was full): poll again soon.
    pub more: bool,
}

/// Applies a poll's answer: the rules, then the new cursor. Without a cursor (a cache that
/// starts empty) nothing is applied: the cursor starts at the log's end. None when the
/// answer was for another cursor (a poll crossed by another worker's) or rules could not be
/// written (the cursor stays, the next poll retries).
/// `now` (seconds) and `settle` (seconds, 0: none): the settle window opened for the rules
/// applied (`purge::settle`: long enough for the cache tier behind this one to have polled
/// too).
pub fn apply(
    store: &impl CasStore,
    asked_after: Option<&str>,
    poll: &Poll,
    max_poll: usize,
    now: i64,
    settle: i64,
) -> Option<Applied> {
    let current = cursor(store);
    if current.as_deref() != asked_after {
        return None;
    }
    let Some(after) = asked_after.and_then(parse_id) else {
        // No cursor yet (the first poll since Envoy started): the log is followed from its
        // end, and whatever was stored before this answer — purges logged meanwhile were
        // not seen — is soft-purged, so none is missed (at start the cache is nearly empty).
        add(store, true, Target::All)?;
        set_cursor(store, &poll.last)?;
        return Some(Applied {
            purges: 0,
            gap: false,
            more: false,
        });
    };
    let gap = parse_id(&poll.trimmed).is_some_and(|trimmed| trimmed > after);
    let mut first_seq = None;
    if gap {
        first_seq = Some(add(store, true, Target::All)?);
    }
    let mut last = None;
    for logged in &poll.entries {
        if parse_id(&logged.id).is_none_or(|id| id <= after) {
            continue;
        }
        let host = host_only(logged.host.as_bytes());
        let value = logged.value.as_bytes().to_vec();
        let target = match logged.kind.as_str() {
            "tag" => Target::Tag(value),
            "url" => Target::Path {
                host,
                path: value
                    .split(|b| *b == b'?')
                    .next()
                    .unwrap_or_default()
                    .to_vec(),
            },
            "prefix" => Target::Prefix {
                host,
                prefix: value,
            },
            "host" => Target::Host(host),
            "all" => Target::All,
            // A kind this version does not know: purge everything softly rather than miss it.
            _ => Target::All,
        };
        let seq = add(store, logged.soft, target)?;
        first_seq.get_or_insert(seq);
        last = Some(logged.id.as_str());
    }
    if let (Some(seq), true) = (first_seq, settle > 0) {
        crate::purge::settle(store, seq, now + settle, now);
    }
    if let Some(last) = last {
        set_cursor(store, last)?;
    } else if !gap && poll.entries.is_empty() && parse_id(&poll.last).is_some_and(|l| l < after) {
        // The log restarted (Redis was emptied): follow it from its new end.
        set_cursor(store, &poll.last)?;
    }
    Some(Applied {
        purges: poll.entries.len(),
        gap,
        more: poll.entries.len() >= max_poll,
    })
}

fn set_cursor(store: &impl CasStore, id: &str) -> Option<()> {
    update_with_cas(store, CURSOR_KEY, 4, |_| (Some(id.as_bytes().to_vec()), ())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::purge::load;
    use edgewise_support::store::MemoryStore;

    fn poll(json: &str) -> Poll {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_cache_starting_empty_begins_at_the_end_of_the_log() {
        let store = MemoryStore::new();
        let answer = poll(r#"{"last":"100-0","trimmed":"0-0","entries":[]}"#);
        assert_eq!(
            apply(&store, None, &answer, 500, 1_000, 3).unwrap().purges,
            0
        );
        assert_eq!(cursor(&store).as_deref(), Some("100-0"));
        let rules = load(&store).rules;
        assert_eq!(
            rules.len(),
            1,
            "what was stored before the first poll is soft-purged"
        );
        assert_eq!((rules[0].soft, &rules[0].target), (true, &Target::All));
    }

    #[test]
    fn logged_purges_become_rules_and_move_the_cursor() {
        let store = MemoryStore::new();
        apply(
            &store,
            None,
            &poll(r#"{"last":"100-0","trimmed":"0-0","entries":[]}"#),
            500,
            1_000,
            3,
        );
        let answer = poll(
            r#"{"last":"102-0","trimmed":"0-0","entries":[
              {"id":"101-0","kind":"tag","host":"","value":"product-1","soft":false},
              {"id":"102-0","kind":"url","host":"Shop:80","value":"/p/1?x=1","soft":true}]}"#,
        );
        let applied = apply(&store, Some("100-0"), &answer, 500, 1_000, 3).unwrap();
        assert_eq!(
            applied,
            Applied {
                purges: 2,
                gap: false,
                more: false
            }
        );
        assert_eq!(cursor(&store).as_deref(), Some("102-0"));
        let rules = load(&store).rules;
        assert_eq!(rules[1].target, Target::Tag(b"product-1".to_vec()));
        assert_eq!(
            (rules[2].soft, &rules[2].target),
            (
                true,
                &Target::Path {
                    host: b"shop".to_vec(),
                    path: b"/p/1".to_vec()
                }
            )
        );
        // A stale answer (for an older cursor) is ignored.
        assert!(apply(&store, Some("100-0"), &answer, 500, 1_000, 3).is_none());
    }

    #[test]
    fn a_trimmed_log_soft_purges_everything() {
        let store = MemoryStore::new();
        apply(
            &store,
            None,
            &poll(r#"{"last":"100-0","trimmed":"0-0","entries":[]}"#),
            500,
            1_000,
            3,
        );
        let answer = poll(r#"{"last":"900-0","trimmed":"500-0","entries":[]}"#);
        assert!(
            apply(&store, Some("100-0"), &answer, 500, 1_000, 3)
                .unwrap()
                .gap
        );
        let rules = load(&store).rules;
        assert_eq!(rules.len(), 2);
        assert_eq!((rules[1].soft, &rules[1].target), (true, &Target::All));
    }

    #[test]
    fn one_worker_holds_the_poll_at_a_time() {
        let store = MemoryStore::new();
        assert!(take_lease(&store, 1_000, 1_000));
        assert!(!take_lease(&store, 1_500, 1_000));
        assert!(take_lease(&store, 2_000, 1_000));
    }
}
