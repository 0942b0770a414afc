//! Prune's records of condemned packs (`condemned/<id>`), and the pure
//! rules that decide what a later prune may do with each pack.
//! docs/FORMAT.md §12 is the prose version, with the argument for why
//! the two-phase protocol never deletes what a snapshot needs.
//!
//! A record is the whole condemned set as one prune left it: it lists the
//! records it replaces in `supersedes` (readers skip those), so normally
//! one record is current. Each pack carries the store time at which it was
//! first condemned (`since`; absent in the record that condemned it, whose
//! own store timestamp then counts) and the lock holders that were live
//! just after that record was stored (`writers`; absent in a *pending*
//! record, written before that listing: such a pack is condemned — writers
//! avoid it — but never deleted on that record's word).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Id;
use crate::error::{Error, Result};

pub const VERSION: u32 = 1;
/// Readers refuse a record whose plaintext is larger (about 300,000 packs).
pub const MAX_PLAIN_LEN: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// No kept snapshot needs a blob of it.
    Unreferenced,
    /// No index object lists it (left by a killed backup).
    Unindexed,
    /// Its needed blobs were copied into new packs (it was mostly unused).
    Repacked,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreferenced => "unreferenced",
            Reason::Unindexed => "unindexed",
            Reason::Repacked => "repacked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CondemnedPack {
    pub id: Id,
    /// Stored size in bytes (for reports).
    pub size: u64,
    pub reason: Reason,
    /// Store time at which it was first condemned; absent: the store
    /// timestamp of the record holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Lock holders live when it was condemned; absent: not known yet
    /// (a pending record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writers: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CondemnedRecord {
    pub version: u32,
    /// Records this one replaces.
    #[serde(default)]
    pub supersedes: Vec<Id>,
    pub packs: Vec<CondemnedPack>,
}

pub fn encode(r: &CondemnedRecord) -> Vec<u8> {
    serde_json::to_vec(r).expect("a record serializes")
}

pub fn decode(plain: &[u8]) -> Result<CondemnedRecord> {
    if plain.len() > MAX_PLAIN_LEN {
        return Err(Error::format(
            "condemned record",
            format!("{} bytes, more than {MAX_PLAIN_LEN}", plain.len()),
        ));
    }
    let r: CondemnedRecord = serde_json::from_slice(plain)
        .map_err(|e| Error::format("condemned record", e.to_string()))?;
    if r.version != VERSION {
        return Err(Error::format(
            "condemned record",
            format!("version {} (this usdcop-dr reads {VERSION})", r.version),
        ));
    }
    Ok(r)
}

/// A condemned pack as the current records say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackState {
    pub size: u64,
    pub reason: Reason,
    /// Store time of its condemnation; `None` when the store gave none.
    pub since: Option<DateTime<Utc>>,
    /// Holders live at condemnation; `None`: unknown (pending).
    pub writers: Option<BTreeSet<String>>,
}

/// The current condemned set: the packs of every record that no other
/// listed record supersedes. `records`: (record id, its store timestamp,
/// the record). A pack in two current records (two prunes that ran at
/// once) takes the later `since` and the union of writers, unknown if
/// either is: the cautious reading of both.
pub fn current(
    records: &[(Id, Option<DateTime<Utc>>, CondemnedRecord)],
) -> BTreeMap<Id, PackState> {
    let superseded: HashSet<Id> = records
        .iter()
        .flat_map(|(_, _, r)| r.supersedes.iter().copied())
        .collect();
    let mut out: BTreeMap<Id, PackState> = BTreeMap::new();
    for (id, stored, r) in records {
        if superseded.contains(id) {
            continue;
        }
        for p in &r.packs {
            let since = p.since.or(*stored);
            let writers = p
                .writers
                .as_ref()
                .map(|w| w.iter().cloned().collect::<BTreeSet<_>>());
            let state = PackState {
                size: p.size,
                reason: p.reason,
                since,
                writers,
            };
            out.entry(p.id)
                .and_modify(|s| {
                    s.since = match (s.since, since) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                    s.writers = match (s.writers.take(), &state.writers) {
                        (Some(mut a), Some(b)) => {
                            a.extend(b.iter().cloned());
                            Some(a)
                        }
                        _ => None,
                    };
                })
                .or_insert(state);
        }
    }
    out
}

/// What a prune does with a condemned pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delete it now: the grace period has passed, every holder live at
    /// its condemnation is gone, and no snapshot needs it.
    Delete,
    /// A snapshot needs a blob that only this pack holds: not condemned
    /// any more.
    Reprieve,
    /// Keep it condemned for now (why).
    Wait(String),
}

/// The sweep rule (docs/FORMAT.md §12). `store_now`: the store's clock at
/// the prune's lock listing; `live`: holders of live locks in that
/// listing; `needed`: whether a snapshot listed after that listing needs
/// a blob of the pack that no non-condemned pack holds.
pub fn verdict(
    state: &PackState,
    store_now: Option<DateTime<Utc>>,
    grace: Duration,
    live: &HashSet<String>,
    needed: bool,
) -> Verdict {
    if needed {
        return Verdict::Reprieve;
    }
    let Some(writers) = &state.writers else {
        return Verdict::Wait("condemned by a prune that did not finish: writers unknown".into());
    };
    let (Some(since), Some(now)) = (state.since, store_now) else {
        return Verdict::Wait("the store gives no timestamps to measure the grace period".into());
    };
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    if now < since + grace {
        return Verdict::Wait(format!(
            "grace period until {}",
            (since + grace).format("%Y-%m-%d %H:%M:%SZ")
        ));
    }
    if let Some(w) = writers.iter().find(|w| live.contains(*w)) {
        return Verdict::Wait(format!(
            "a writer live at its condemnation ({w}) still runs"
        ));
    }
    Verdict::Delete
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8, since: Option<DateTime<Utc>>, writers: Option<&[&str]>) -> CondemnedPack {
        CondemnedPack {
            id: Id([n; 32]),
            size: 100,
            reason: Reason::Unreferenced,
            since,
            writers: writers.map(|w| w.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn roundtrip_and_limits() {
        let r = CondemnedRecord {
            version: VERSION,
            supersedes: vec![Id([9; 32])],
            packs: vec![
                pack(1, None, None),
                pack(2, Some(Utc::now()), Some(&["h1"])),
            ],
        };
        assert_eq!(decode(&encode(&r)).unwrap(), r);
        let mut v2 = r.clone();
        v2.version = 2;
        assert!(decode(&encode(&v2)).is_err());
        assert!(decode(b"{").is_err());
    }

    #[test]
    fn superseded_records_do_not_count_and_duplicates_merge_cautiously() {
        let t0 = Utc::now();
        let h = chrono::Duration::hours;
        let old = CondemnedRecord {
            version: 1,
            supersedes: vec![],
            packs: vec![pack(1, None, Some(&["a"])), pack(2, None, Some(&["a"]))],
        };
        let new = CondemnedRecord {
            version: 1,
            supersedes: vec![Id([10; 32])],
            packs: vec![pack(1, Some(t0), Some(&["a"]))],
        };
        // Another prune's record, at the same time, holding pack 1 too.
        let other = CondemnedRecord {
            version: 1,
            supersedes: vec![],
            packs: vec![pack(1, None, Some(&["b"])), pack(3, None, None)],
        };
        let recs = vec![
            (Id([10; 32]), Some(t0), old),
            (Id([11; 32]), Some(t0 + h(1)), new),
            (Id([12; 32]), Some(t0 + h(2)), other),
        ];
        let cur = current(&recs);
        assert_eq!(
            cur.len(),
            2,
            "pack 2 was reprieved by the superseding record"
        );
        let p1 = &cur[&Id([1; 32])];
        assert_eq!(p1.since, Some(t0 + h(2)));
        assert_eq!(
            p1.writers
                .as_ref()
                .unwrap()
                .iter()
                .cloned()
                .collect::<Vec<_>>(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(cur[&Id([3; 32])].writers, None);
        assert_eq!(cur[&Id([3; 32])].since, Some(t0 + h(2)));
    }

    #[test]
    fn verdicts() {
        let t0 = Utc::now();
        let grace = Duration::from_secs(3600);
        let live: HashSet<String> = ["w1".to_string()].into();
        let st = |writers: Option<&[&str]>| PackState {
            size: 1,
            reason: Reason::Unreferenced,
            since: Some(t0),
            writers: writers.map(|w| w.iter().map(|s| s.to_string()).collect()),
        };
        let later = Some(t0 + chrono::Duration::seconds(3600));
        let early = Some(t0 + chrono::Duration::seconds(3599));
        assert_eq!(
            verdict(&st(Some(&["w2"])), later, grace, &live, false),
            Verdict::Delete
        );
        assert_eq!(
            verdict(&st(Some(&["w2"])), later, grace, &live, true),
            Verdict::Reprieve
        );
        assert!(matches!(
            verdict(&st(Some(&["w2"])), early, grace, &live, false),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            verdict(&st(Some(&["w1"])), later, grace, &live, false),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            verdict(&st(None), later, grace, &live, false),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            verdict(&st(Some(&[])), None, grace, &live, false),
            Verdict::Wait(_)
        ));
        // Grace zero: deletable at once, if no writer.
        assert_eq!(
            verdict(&st(Some(&[])), Some(t0), Duration::ZERO, &live, false),
            Verdict::Delete
        );
    }
}
