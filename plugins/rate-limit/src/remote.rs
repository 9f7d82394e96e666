//! Global rules' decisions from a rate limit service's answer (host-free): the verdict for
//! the request, the statuses for the RateLimit headers, and OVER_LIMIT answers remembered
//! in shared data until their reset (a bounded table), so a denied client costs no call and
//! is denied on every worker.

use edgewise_support::le;
use edgewise_support::store::CasStore;

use crate::config::Config;
use crate::limiter::{GlobalCall, RuleStatus};
use crate::rls::{Answer, CODE_OK, CODE_OVER_LIMIT};

/// Slots of the remembered-denials table (keys `edgewise.rl.over.<n>`): bounded whatever
/// clients send; a collision only forgets a denial (that client then costs a call again).
pub const REMEMBERED_SLOTS: u64 = 4096;

/// The shortest denial worth remembering, and the longest a remembered one is kept.
const MIN_REMEMBER_NS: u64 = 1_000_000;
const MAX_REMEMBER_NS: u64 = 3_600_000_000_000;

fn slot_key(fingerprint: u64) -> String {
    format!("edgewise.rl.over.{}", fingerprint % REMEMBERED_SLOTS)
}

/// A remembered OVER_LIMIT answer: until when, and the limit the service reported
/// (requests, window seconds), for the RateLimit headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remembered {
    pub until: u64,
    pub policy: Option<(u64, u64)>,
}

/// The descriptor with `fingerprint`, if remembered as over its limit at `now` (None: not
/// remembered, expired, or the store failed — then the service is asked). Value layout:
/// fingerprint, until (ns), limit, window seconds (u64 LE each; 0 when unknown).
pub fn remembered(store: &impl CasStore, fingerprint: u64, now: u64) -> Option<Remembered> {
    let (value, _) = store.get(&slot_key(fingerprint)).ok().flatten()?;
    let word = |at: usize| le::u64_at(&value, at);
    if word(0)? != fingerprint || word(8)? <= now {
        return None;
    }
    let policy = match (word(16).unwrap_or(0), word(24).unwrap_or(0)) {
        (0, _) | (_, 0) => None,
        pair => Some(pair),
    };
    Some(Remembered {
        until: word(8)?,
        policy,
    })
}

/// Remembers an OVER_LIMIT answer (last writer wins the slot).
pub fn remember(store: &impl CasStore, fingerprint: u64, remembered: Remembered) {
    let (limit, window) = remembered.policy.unwrap_or((0, 0));
    let mut value = fingerprint.to_le_bytes().to_vec();
    for word in [remembered.until, limit, window] {
        value.extend_from_slice(&word.to_le_bytes());
    }
    let _ = store.set(&slot_key(fingerprint), &value, None);
}

/// Lease mode (`batch`): hits a worker took from the service beyond the one it needed,
/// kept per descriptor in shared data (shared by every worker) until spent or stale. Slots
/// `edgewise.rl.lease.<n>` (bounded like the remembered denials; a collision only strands
/// a lease). Value: fingerprint, hits left (u64 LE each), usable until (ns).
fn lease_key(fingerprint: u64) -> String {
    format!("edgewise.rl.lease.{}", fingerprint % REMEMBERED_SLOTS)
}

fn decode_lease(value: &[u8], fingerprint: u64) -> Option<(u64, u64)> {
    let word = |at: usize| le::u64_at(value, at);
    (word(0)? == fingerprint).then_some((word(8)?, word(16)?))
}

fn encode_lease(fingerprint: u64, hits: u64, until: u64) -> Vec<u8> {
    let mut value = fingerprint.to_le_bytes().to_vec();
    value.extend_from_slice(&hits.to_le_bytes());
    value.extend_from_slice(&until.to_le_bytes());
    value
}

/// Spends one leased hit of the descriptor with `fingerprint` (one CAS): true when there
/// was one — the request is admitted with no call.
pub fn take_leased(store: &impl CasStore, fingerprint: u64, now: u64) -> bool {
    edgewise_support::store::update_with_cas(store, &lease_key(fingerprint), 8, |value| match value
        .and_then(|v| decode_lease(v, fingerprint))
    {
        Some((hits, until)) if hits > 0 && until > now => {
            (Some(encode_lease(fingerprint, hits - 1, until)), true)
        }
        _ => (None, false),
    })
    .unwrap_or(false)
}

/// Adds `hits` leased hits for the descriptor, usable until `until` (a lease of another
/// descriptor in the slot, or a stale one, is replaced).
pub fn add_leased(store: &impl CasStore, fingerprint: u64, hits: u64, until: u64, now: u64) {
    let _ = edgewise_support::store::update_with_cas(store, &lease_key(fingerprint), 8, |value| {
        let current = value
            .and_then(|v| decode_lease(v, fingerprint))
            .filter(|(_, u)| *u > now)
            .map_or(0, |(h, _)| h);
        (
            Some(encode_lease(
                fingerprint,
                current.saturating_add(hits),
                until,
            )),
            (),
        )
    });
}

/// What a service's answer means for the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every descriptor under its limit.
    Allowed { statuses: Vec<RuleStatus> },
    /// `rule` is over its limit; retry after `retry_after_ns`.
    Denied {
        rule: usize,
        retry_after_ns: u64,
        statuses: Vec<RuleStatus>,
        /// What to remember per fingerprint (rules with `cache_over_limit`).
        remember: Vec<(u64, Remembered)>,
    },
    /// No usable answer (a malformed one, or not one status per descriptor): the rules'
    /// failure mode decides.
    Failed,
}

/// Judges `answer` to `call` at `now`.
pub fn judge(config: &Config, call: &GlobalCall, answer: &Answer, now: u64) -> Verdict {
    if !matches!(answer.overall, CODE_OK | CODE_OVER_LIMIT)
        || answer.statuses.len() != call.rules.len()
    {
        return Verdict::Failed;
    }
    let statuses: Vec<RuleStatus> = call
        .rules
        .iter()
        .zip(&answer.statuses)
        .map(|(rule, s)| RuleStatus {
            rule: *rule,
            limited: s.code == CODE_OVER_LIMIT,
            remaining: s.remaining,
            reset_ns: s.reset_ns.unwrap_or(0),
            policy: s.limit.and_then(|(rpu, unit)| {
                let window = match unit {
                    1 => 1,
                    2 => 60,
                    3 => 3600,
                    4 => 86_400,
                    _ => return None,
                };
                Some((rpu, window))
            }),
        })
        .collect();
    // A rule charged after the response was only checked (hits_addend 0): it admits with
    // at least its request's cost left.
    let mut statuses = statuses;
    let mut checked_out = false;
    for (status, cost) in statuses.iter_mut().zip(&call.check_costs) {
        if let Some(cost) = cost {
            if !status.limited && status.remaining < *cost {
                status.limited = true;
                checked_out = true;
            }
        }
    }
    if answer.overall == CODE_OK && !checked_out {
        return Verdict::Allowed { statuses };
    }
    let over: Vec<(usize, &RuleStatus)> = statuses
        .iter()
        .enumerate()
        .filter(|(_, s)| s.limited)
        .collect();
    // The denying rule: the first over the limit that enforces (a rule in a dry run denies
    // only when no enforcing one does: the adapter then lets the request go on). OVER_LIMIT
    // overall with no descriptor over: the service's word stands, retry in 1 s.
    let shadow = |rule: usize| config.rules.get(rule).is_some_and(|r| r.shadow);
    let rule = over
        .iter()
        .find(|(_, s)| !shadow(s.rule))
        .or_else(|| over.first())
        .map_or(call.rules[0], |(_, s)| s.rule);
    let retry_after_ns = over
        .iter()
        .map(|(_, s)| s.reset_ns)
        .max()
        .unwrap_or(1_000_000_000);
    // A dry-run rule's denial is never remembered: remembered denials are enforced. Nor
    // is a check's (a charged rule): it is re-checked, its debt changes with every charge.
    let checked = |rule: usize| config.rules.get(rule).is_some_and(|r| r.charge.is_some());
    let remember = over
        .iter()
        .filter(|(_, s)| {
            !shadow(s.rule)
                && !checked(s.rule)
                && config.rules[s.rule]
                    .global
                    .as_ref()
                    .is_some_and(|g| g.cache_over_limit)
                && s.reset_ns >= MIN_REMEMBER_NS
        })
        .map(|(i, s)| {
            (
                call.fingerprints[*i],
                Remembered {
                    until: now.saturating_add(s.reset_ns.min(MAX_REMEMBER_NS)),
                    policy: s.policy,
                },
            )
        })
        .collect();
    Verdict::Denied {
        rule,
        retry_after_ns,
        statuses,
        remember,
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;
    use edgewise_support::store::MemoryStore;

    #[test]
    fn leased_hits_are_spent_once_each_and_go_stale() {
        let store = MemoryStore::new();
        assert!(!take_leased(&store, 7, 100));
        add_leased(&store, 7, 2, 1_000, 100);
        assert!(take_leased(&store, 7, 200));
        assert!(take_leased(&store, 7, 300));
        assert!(!take_leased(&store, 7, 400), "spent");
        add_leased(&store, 7, 5, 1_000, 500);
        assert!(
            !take_leased(&store, 7 + REMEMBERED_SLOTS, 600),
            "another descriptor"
        );
        assert!(!take_leased(&store, 7, 1_000), "stale");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rls::Status;
    use edgewise_support::store::MemoryStore;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn setup() -> (Config, GlobalCall) {
        let config = Config::from_json(
            br#"{"rules":[
              {"name":"a","key":"client_ip","global":{"cluster":"rl"}},
              {"name":"b","key":"header:x-k","global":{"cluster":"rl","cache_over_limit":false}}
            ]}"#,
        )
        .unwrap();
        let call = GlobalCall {
            cluster: "rl".into(),
            domain: "edgewise".into(),
            rules: vec![0, 1],
            descriptors: Vec::new(),
            fingerprints: vec![11, 22],
            check_costs: vec![None, None],
        };
        (config, call)
    }

    fn status(code: u64, remaining: u64, reset_ns: u64) -> Status {
        Status {
            code,
            limit: Some((100, 2)),
            remaining,
            reset_ns: Some(reset_ns),
        }
    }

    #[test]
    fn an_over_limit_answer_denies_and_remembers_only_cached_rules() {
        let (config, call) = setup();
        let answer = Answer {
            overall: CODE_OVER_LIMIT,
            statuses: vec![
                status(CODE_OVER_LIMIT, 0, 6_000_000_000),
                status(CODE_OVER_LIMIT, 0, 2_000_000_000),
            ],
        };
        let Verdict::Denied {
            rule,
            retry_after_ns,
            statuses,
            remember,
        } = judge(&config, &call, &answer, T0)
        else {
            panic!("denied")
        };
        assert_eq!((rule, retry_after_ns), (0, 6_000_000_000));
        assert_eq!(statuses[0].policy, Some((100, 60)));
        let expected = Remembered {
            until: T0 + 6_000_000_000,
            policy: Some((100, 60)),
        };
        assert_eq!(remember, vec![(11, expected)], "rule b does not cache");
        let store = MemoryStore::new();
        remember_all(&store, &remember);
        assert_eq!(remembered(&store, 11, T0 + 1), Some(expected));
        assert_eq!(remembered(&store, 11, T0 + 6_000_000_000), None, "expired");
        assert_eq!(
            remembered(&store, 11 + REMEMBERED_SLOTS, T0),
            None,
            "another descriptor in the slot"
        );
    }

    fn remember_all(store: &MemoryStore, pairs: &[(u64, Remembered)]) {
        for (fp, r) in pairs {
            remember(store, *fp, *r);
        }
    }

    #[test]
    fn ok_answers_allow_and_bad_ones_fail() {
        let (config, call) = setup();
        let ok = Answer {
            overall: CODE_OK,
            statuses: vec![status(CODE_OK, 5, 1), status(CODE_OK, 7, 1)],
        };
        assert!(matches!(
            judge(&config, &call, &ok, T0),
            Verdict::Allowed { .. }
        ));
        let short = Answer {
            overall: CODE_OK,
            statuses: vec![status(CODE_OK, 5, 1)],
        };
        assert_eq!(judge(&config, &call, &short, T0), Verdict::Failed);
        let unknown = Answer {
            overall: 0,
            statuses: ok.statuses.clone(),
        };
        assert_eq!(judge(&config, &call, &unknown, T0), Verdict::Failed);
    }
}
