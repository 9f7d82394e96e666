//! Group invalidation (Fastly's purge by surrogate key, Cloudflare's purge by tag, prefix,
//! host and everything, Varnish's bans): a purge is a rule in a bounded list in shared
//! data, numbered by a sequence; every entry records the sequence at the time its request
//! went to the origin, and a lookup applies the rules numbered after it. Hard rules make the
//! entry a miss; soft rules make it stale (revalidated, or served stale while one request
//! revalidates, within the stale rules). No index: tags live in the entries (inside the
//! byte budget), and the rule list has a fixed size.

use crate::entry::Entry;
use edgewise_support::le;
use edgewise_support::store::{update_with_cas, CasStore};

/// The rule list's shared-data key, and the key of its sequence alone (8 bytes: read on
/// every lookup that finds an entry; the list only when a rule may apply).
pub const RULES_KEY: &str = "edgewise.cache.purges";
pub const SEQ_KEY: &str = "edgewise.cache.purge_seq";
/// Rules kept; when full, the oldest is dropped and every entry stored before it counts as
/// hard-purged (a purge is never lost; the cost is extra misses).
pub const MAX_RULES: usize = 128;
/// Longest tag, prefix or host in a rule (and longest tag an entry keeps).
pub const MAX_VALUE: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every variant of one URL (the entry's full primary key).
    Key(Vec<u8>),
    /// Entries whose tags include this one.
    Tag(Vec<u8>),
    /// Entries of `host` whose path starts with `prefix`.
    Prefix { host: Vec<u8>, prefix: Vec<u8> },
    /// Every entry of a host.
    Host(Vec<u8>),
    /// Entries of `host` with exactly this path, whatever their query (a fleet purge names
    /// a URL, not this cache's key with its keyed fields).
    Path { host: Vec<u8>, path: Vec<u8> },
    /// Everything.
    All,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub seq: u64,
    pub soft: bool,
    pub target: Target,
}

/// What the rules say about an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeState {
    Untouched,
    /// Stale: revalidate before use (or serve stale within stale-while-revalidate).
    Soft,
    /// Gone: a miss.
    Hard,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// The sequence the next rule gets (0: no purge ever).
    pub next_seq: u64,
    /// Entries stored before this sequence are hard-purged (rules dropped for room).
    pub floor: u64,
    pub rules: Vec<Rule>,
}

impl Rules {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.rules.len() * 48);
        out.extend_from_slice(&self.next_seq.to_le_bytes());
        out.extend_from_slice(&self.floor.to_le_bytes());
        out.extend_from_slice(&(self.rules.len() as u32).to_le_bytes());
        for rule in &self.rules {
            out.extend_from_slice(&rule.seq.to_le_bytes());
            out.push(rule.soft as u8);
            let (kind, a, b): (u8, &[u8], &[u8]) = match &rule.target {
                Target::Key(k) => (0, k, b""),
                Target::Tag(t) => (1, t, b""),
                Target::Prefix { host, prefix } => (2, host, prefix),
                Target::Host(h) => (3, h, b""),
                Target::All => (4, b"", b""),
                Target::Path { host, path } => (5, host, path),
            };
            out.push(kind);
            for part in [a, b] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }

    /// Decoding never trusts input: None for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<Rules> {
        let mut r = le::Reader::new(bytes);
        let next_seq = r.u64()?;
        let floor = r.u64()?;
        let count = r.u32()? as usize;
        if count > MAX_RULES {
            return None;
        }
        let mut rules = Vec::with_capacity(count);
        for _ in 0..count {
            let seq = r.u64()?;
            let soft = r.u8()? == 1;
            let kind = r.u8()?;
            let max = crate::config::MAX_ENTRY_BYTES_LIMIT as usize;
            let (a, b) = (r.bytes(max)?.to_vec(), r.bytes(max)?.to_vec());
            let target = match kind {
                0 => Target::Key(a),
                1 => Target::Tag(a),
                2 => Target::Prefix { host: a, prefix: b },
                3 => Target::Host(a),
                4 => Target::All,
                5 => Target::Path { host: a, path: b },
                _ => return None,
            };
            rules.push(Rule { seq, soft, target });
        }
        r.is_done().then_some(Rules {
            next_seq,
            floor,
            rules,
        })
    }

    /// What the rules numbered at or after `stored_seq` say about `entry` (the hardest
    /// applies).
    pub fn state(&self, entry: &Entry, stored_seq: u64) -> PurgeState {
        if stored_seq < self.floor {
            return PurgeState::Hard;
        }
        let mut state = PurgeState::Untouched;
        for rule in self.rules.iter().filter(|r| r.seq >= stored_seq) {
            if rule.matches(entry) {
                if !rule.soft {
                    return PurgeState::Hard;
                }
                state = PurgeState::Soft;
            }
        }
        state
    }
}

impl Rule {
    fn matches(&self, entry: &Entry) -> bool {
        match &self.target {
            Target::Key(key) => entry.key == *key,
            Target::Tag(tag) => entry.tags.iter().any(|t| t == tag),
            Target::Prefix { host, prefix } => {
                let (h, path) = host_and_path(&entry.key);
                host_only(h) == *host && path.starts_with(prefix)
            }
            Target::Host(host) => host_only(host_and_path(&entry.key).0) == *host,
            Target::Path { host, path } => {
                let (h, p) = host_and_path(&entry.key);
                host_only(h) == *host && p == path.as_slice()
            }
            Target::All => true,
        }
    }
}

/// A host as purges name it: lowercased, without a port (`Shop.example.com:8443` and
/// `shop.example.com` are one host).
pub fn host_only(authority: &[u8]) -> Vec<u8> {
    edgewise_support::request::host_only(authority)
}

/// The host and path of a primary key (`scheme://host/path?query\0...`, see `key.rs`).
pub fn host_and_path(key: &[u8]) -> (&[u8], &[u8]) {
    let rest = key
        .windows(3)
        .position(|w| w == b"://")
        .map_or(key, |i| &key[i + 3..]);
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let rest = &rest[..end];
    let slash = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    let (host, path) = rest.split_at(slash);
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    (host, path)
}

/// The sequence key's value: the current sequence, and a settle window — while it lasts,
/// what is stored records `settle_seq` instead, so the fleet rules applied last still apply
/// to it (see [`settle`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqState {
    pub seq: u64,
    pub settle_seq: u64,
    /// Wall-clock seconds until which the window lasts (0: none).
    pub settle_until: i64,
}

impl SeqState {
    fn decode(bytes: &[u8]) -> SeqState {
        let u64_at = |at: usize| le::u64_at(bytes, at);
        SeqState {
            seq: u64_at(0).unwrap_or(0),
            settle_seq: u64_at(8).unwrap_or(0),
            settle_until: u64_at(16).unwrap_or(0) as i64,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = self.seq.to_le_bytes().to_vec();
        out.extend_from_slice(&self.settle_seq.to_le_bytes());
        out.extend_from_slice(&(self.settle_until as u64).to_le_bytes());
        out
    }

    /// The sequence a response whose request is decided at `now` records.
    pub fn for_store(&self, now: i64) -> u64 {
        if now < self.settle_until {
            self.settle_seq.min(self.seq)
        } else {
            self.seq
        }
    }
}

/// The sequence key's state (all zero when nothing was ever purged or shared data fails:
/// an entry stored then counts as older than every later rule, which is safe).
pub fn seq_state(store: &impl CasStore) -> SeqState {
    store
        .get(SEQ_KEY)
        .ok()
        .flatten()
        .map(|(v, _)| SeqState::decode(&v))
        .unwrap_or_default()
}

/// The current purge sequence.
pub fn current_seq(store: &impl CasStore) -> u64 {
    seq_state(store).seq
}

/// Opens (or extends) a settle window until `until` (seconds) for the rules from `from_seq`
/// on: responses stored meanwhile stay subject to them. For fleet purges: another cache
/// tier may still answer with what a purge removed until it has polled too, and a copy
/// refilled from it must not outlive the purge.
pub fn settle(store: &impl CasStore, from_seq: u64, until: i64, now: i64) {
    let _ = update_with_cas(store, SEQ_KEY, 16, |current| {
        let mut state = current.map(SeqState::decode).unwrap_or_default();
        state.settle_seq = if state.settle_until > now {
            state.settle_seq.min(from_seq)
        } else {
            from_seq
        };
        state.settle_until = state.settle_until.max(until);
        (Some(state.encode()), ())
    });
}

/// The rule list (empty when absent or unreadable).
pub fn load(store: &impl CasStore) -> Rules {
    store
        .get(RULES_KEY)
        .ok()
        .flatten()
        .and_then(|(v, _)| Rules::decode(&v))
        .unwrap_or_default()
}

/// Adds a rule (CAS on the list; then the sequence key, which readers check first). Returns
/// the rule's sequence, or None when shared data refused it.
pub fn add(store: &impl CasStore, soft: bool, target: Target) -> Option<u64> {
    let seq = update_with_cas(store, RULES_KEY, 16, |current| {
        let mut rules = current.and_then(Rules::decode).unwrap_or_default();
        // Sequences start at 1: an entry stored before any purge has 0... and the first
        // rule must apply to it.
        let seq = rules.next_seq.max(1);
        rules.rules.push(Rule {
            seq,
            soft,
            target: target.clone(),
        });
        while rules.rules.len() > MAX_RULES {
            let dropped = rules.rules.remove(0);
            rules.floor = rules.floor.max(dropped.seq + 1);
        }
        rules.next_seq = seq + 1;
        (Some(rules.encode()), seq)
    })
    .ok()?;
    // The sequence key only grows: a reader that saw it may skip the list for entries
    // stored after it.
    let _ = update_with_cas(store, SEQ_KEY, 16, |current| {
        let mut state = current.map(SeqState::decode).unwrap_or_default();
        let next = state.seq.max(seq + 1);
        if next == state.seq {
            return (None, ());
        }
        state.seq = next;
        (Some(state.encode()), ())
    });
    Some(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewise_support::store::MemoryStore;

    fn entry(key: &str, tags: &[&str]) -> Entry {
        Entry {
            key: key.as_bytes().to_vec(),
            status: 200,
            headers: Vec::new(),
            request_time: 0,
            response_time: 0,
            generation: 0,
            vary_fields: Vec::new(),
            vary_values: Vec::new(),
            body: Vec::new(),
            tags: tags.iter().map(|t| t.as_bytes().to_vec()).collect(),
            purge_seq: 0,
        }
    }

    #[test]
    fn keys_split_into_host_and_path() {
        assert_eq!(
            host_and_path(b"https://shop.example.com/p/1?x=1\0x-device=m"),
            (&b"shop.example.com"[..], &b"/p/1"[..])
        );
        assert_eq!(host_and_path(b"http://h"), (&b"h"[..], &b""[..]));
    }

    #[test]
    fn rules_apply_only_to_entries_stored_before_them() {
        let store = MemoryStore::new();
        let before = current_seq(&store);
        let product = entry("http://shop/p/1", &["product-1", "listing"]);
        let other = entry("http://shop/q/2", &["product-2"]);
        let seq = add(&store, false, Target::Tag(b"product-1".to_vec())).unwrap();
        let rules = load(&store);
        assert_eq!(rules.state(&product, before), PurgeState::Hard);
        assert_eq!(rules.state(&other, before), PurgeState::Untouched);
        // Stored after the purge: untouched.
        assert!(current_seq(&store) > seq);
        assert_eq!(
            rules.state(&product, current_seq(&store)),
            PurgeState::Untouched
        );
    }

    #[test]
    fn each_kind_matches_what_it_names_and_hard_wins_over_soft() {
        let store = MemoryStore::new();
        let e = entry("http://Shop:8080/p/1?a=1", &["t"]);
        for (target, hits) in [
            (Target::Key(b"http://Shop:8080/p/1?a=1".to_vec()), true),
            (Target::Key(b"http://shop/p/1".to_vec()), false),
            (Target::Tag(b"t".to_vec()), true),
            (Target::Tag(b"u".to_vec()), false),
            (
                Target::Prefix {
                    host: b"shop".to_vec(),
                    prefix: b"/p/".to_vec(),
                },
                true,
            ),
            (
                Target::Prefix {
                    host: b"other".to_vec(),
                    prefix: b"/p/".to_vec(),
                },
                false,
            ),
            (
                Target::Prefix {
                    host: b"shop".to_vec(),
                    prefix: b"/q/".to_vec(),
                },
                false,
            ),
            (Target::Host(b"shop".to_vec()), true),
            (
                Target::Path {
                    host: b"shop".to_vec(),
                    path: b"/p/1".to_vec(),
                },
                true,
            ),
            (
                Target::Path {
                    host: b"shop".to_vec(),
                    path: b"/p/12".to_vec(),
                },
                false,
            ),
            (Target::Host(b"shops".to_vec()), false),
            (Target::Host(b"shop".to_vec()), true),
            (
                Target::Path {
                    host: b"shop".to_vec(),
                    path: b"/p/1".to_vec(),
                },
                true,
            ),
            (
                Target::Path {
                    host: b"shop".to_vec(),
                    path: b"/p/12".to_vec(),
                },
                false,
            ),
            (Target::All, true),
        ] {
            let rule = Rule {
                seq: 1,
                soft: false,
                target: target.clone(),
            };
            assert_eq!(rule.matches(&e), hits, "{target:?}");
        }
        add(&store, true, Target::All).unwrap();
        assert_eq!(load(&store).state(&e, 0), PurgeState::Soft);
        add(&store, false, Target::Tag(b"t".to_vec())).unwrap();
        assert_eq!(load(&store).state(&e, 0), PurgeState::Hard);
    }

    #[test]
    fn the_list_is_bounded_and_never_loses_a_purge() {
        let store = MemoryStore::new();
        let old = entry("http://shop/p/1", &["first"]);
        add(&store, false, Target::Tag(b"first".to_vec())).unwrap();
        for i in 0..(MAX_RULES as u64 * 2) {
            add(&store, true, Target::Tag(format!("t{i}").into_bytes())).unwrap();
        }
        let rules = load(&store);
        assert_eq!(rules.rules.len(), MAX_RULES);
        assert!(store.get(RULES_KEY).unwrap().unwrap().0.len() < 64 * 1024);
        assert_eq!(
            rules.state(&old, 0),
            PurgeState::Hard,
            "dropped, folded into the floor"
        );
        let fresh = current_seq(&store);
        assert_eq!(rules.state(&old, fresh), PurgeState::Untouched);
    }

    /// While a settle window lasts, what is stored stays subject to the rules it covers;
    /// after it, stored responses are untouched by them.
    #[test]
    fn a_settle_window_keeps_refills_subject_to_the_latest_fleet_rules() {
        let store = MemoryStore::new();
        let seq = add(&store, false, Target::Tag(b"product-1".to_vec())).unwrap();
        settle(&store, seq, 110, 100);
        let state = seq_state(&store);
        assert_eq!(state.seq, seq + 1);
        let refill = Entry {
            purge_seq: state.for_store(105),
            ..entry("http://shop/p/1", &["product-1"])
        };
        assert_eq!(
            load(&store).state(&refill, refill.purge_seq),
            PurgeState::Hard
        );
        let later = Entry {
            purge_seq: state.for_store(110),
            ..entry("http://shop/p/1", &["product-1"])
        };
        assert_eq!(
            load(&store).state(&later, later.purge_seq),
            PurgeState::Untouched
        );
        // A purge during the window keeps the window's start; the sequence still grows.
        add(&store, false, Target::Tag(b"other".to_vec())).unwrap();
        assert_eq!(seq_state(&store).for_store(105), seq);
        assert_eq!(seq_state(&store).seq, seq + 2);
    }

    #[test]
    fn garbage_never_decodes_into_rules() {
        assert_eq!(Rules::decode(b"short"), None);
        let mut bytes = Rules::default().encode();
        bytes.push(0);
        assert_eq!(Rules::decode(&bytes), None);
        let mut huge = Rules::default().encode();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Rules::decode(&huge), None);
    }
}
