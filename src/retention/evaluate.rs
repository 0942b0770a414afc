//! The policy function: snapshots + policies + now → a decision for every
//! snapshot, with every rule that keeps it. Pure: no clock, no storage.
//!
//! Snapshots are grouped by source name and kind; the host is not part of
//! the group (the same source backed up from a failover host is the same
//! source: its history continues there). In each group, walked newest first
//! (ordered by time, then id, so that the input order never matters):
//!
//! - rules no policy can override: the newest snapshot is kept; snapshots
//!   younger than `min_age` are kept; every snapshot of a source no policy
//!   covers is kept;
//! - `keep_last = N`: the N newest;
//! - `keep_hourly/daily/weekly/monthly/yearly = N` (restic's semantics): a
//!   snapshot is kept when its bucket — the local date and hour, the local
//!   date, the ISO week, the month, the year, all in the configured time
//!   zone — is one the rule has not kept yet and the rule has kept fewer
//!   than N buckets ("all": no limit). So each rule keeps the newest
//!   snapshot of each of the N newest buckets that have snapshots;
//! - `keep_within = d`: snapshots taken after now − d;
//! - `keep_tags`: snapshots with any of the tags;
//! - `pitr_window = d`, for sources of a point-in-time kind (`wal`) only:
//!   every snapshot after now − d, and the newest one at or before it (the
//!   base the window's replay starts from).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use serde::{Deserialize, Serialize};

use super::policy::{Count, PolicySet, Rules};
use crate::config::duration_text;
use crate::format::snapshot::{Snapshot, SourceKind};
use crate::format::Id;

/// What the policy function needs to know of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: Id,
    pub time: DateTime<Utc>,
    pub source_name: String,
    pub source_kind: SourceKind,
    pub host: String,
    pub tags: Vec<String>,
}

impl SnapshotInfo {
    pub fn new(id: Id, snap: &Snapshot) -> Self {
        SnapshotInfo {
            id,
            time: snap.time,
            source_name: snap.source.name.clone(),
            source_kind: snap.source.kind,
            host: snap.host.clone(),
            tags: snap.tags.clone(),
        }
    }
}

/// Kinds whose snapshots point-in-time recovery replays from: the only
/// ones `pitr_window` applies to.
pub fn is_pitr_kind(kind: SourceKind) -> bool {
    matches!(kind, SourceKind::Wal)
}

/// Keep or remove one snapshot, and every rule that keeps it (none: it is
/// removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub id: Id,
    pub keep: bool,
    pub reasons: Vec<Reason>,
}

/// A rule that keeps a snapshot. JSON: `{"rule": "daily", "n": 3,
/// "bucket": "2026-11-30"}`; Display: the words of the Markdown report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Reason {
    /// The newest snapshot of its source (no policy overrides this).
    Newest,
    /// Younger than `[retention] min_age` (no policy overrides this).
    MinAge {
        min_age: String,
    },
    /// No policy covers its source: everything is kept.
    Uncovered {
        source: String,
    },
    /// `keep_last`: the n-th newest.
    Last {
        n: u32,
    },
    /// The newest of the n-th newest hour with snapshots.
    Hourly {
        n: u32,
        bucket: String,
    },
    Daily {
        n: u32,
        bucket: String,
    },
    Weekly {
        n: u32,
        bucket: String,
    },
    Monthly {
        n: u32,
        bucket: String,
    },
    Yearly {
        n: u32,
        bucket: String,
    },
    /// `keep_within`.
    Within {
        within: String,
    },
    /// `keep_tags`: the first of the policy's tags the snapshot carries.
    Tag {
        tag: String,
    },
    /// `pitr_window`: a point-in-time window still needs it.
    Pitr {
        window: String,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Newest => f.write_str("newest of its source"),
            Reason::MinAge { min_age } => write!(f, "younger than min_age {min_age}"),
            Reason::Uncovered { source } => write!(f, "no policy covers source {source}: kept"),
            Reason::Last { n } => write!(f, "last #{n}"),
            Reason::Hourly { n, bucket } => write!(f, "hourly #{n} ({bucket})"),
            Reason::Daily { n, bucket } => write!(f, "daily #{n} ({bucket})"),
            Reason::Weekly { n, bucket } => write!(f, "weekly #{n} ({bucket})"),
            Reason::Monthly { n, bucket } => write!(f, "monthly #{n} ({bucket})"),
            Reason::Yearly { n, bucket } => write!(f, "yearly #{n} ({bucket})"),
            Reason::Within { within } => write!(f, "within {within}"),
            Reason::Tag { tag } => write!(f, "tag {tag}"),
            Reason::Pitr { window } => write!(f, "pitr window {window}"),
        }
    }
}

/// The instant `d` before `now`; `None` when that is before any time there
/// is (then every snapshot is after it).
pub(crate) fn before(now: DateTime<Utc>, d: Duration) -> Option<DateTime<Utc>> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
}

fn after(time: DateTime<Utc>, cutoff: Option<DateTime<Utc>>) -> bool {
    cutoff.is_none_or(|c| time > c)
}

/// The time buckets of the counted rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Bucket {
    pub const ALL: [Bucket; 5] = [
        Bucket::Hourly,
        Bucket::Daily,
        Bucket::Weekly,
        Bucket::Monthly,
        Bucket::Yearly,
    ];

    /// The bucket `time` falls in, in zone `tz`, as shown in reports
    /// ("2026-11-30 21h", "2026-11-30", "2026-W48", "2026-11", "2026").
    /// Hours are the local date and hour: the hour a DST change repeats is
    /// one bucket, the one it skips none.
    pub fn of(self, time: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
        let l = time.with_timezone(&tz);
        match self {
            Bucket::Hourly => format!("{} {:02}h", l.date_naive(), l.hour()),
            Bucket::Daily => l.date_naive().to_string(),
            Bucket::Weekly => {
                let w = l.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
            Bucket::Monthly => format!("{:04}-{:02}", l.year(), l.month()),
            Bucket::Yearly => format!("{:04}", l.year()),
        }
    }

    fn count(self, rules: &Rules) -> Option<Count> {
        match self {
            Bucket::Hourly => rules.keep_hourly,
            Bucket::Daily => rules.keep_daily,
            Bucket::Weekly => rules.keep_weekly,
            Bucket::Monthly => rules.keep_monthly,
            Bucket::Yearly => rules.keep_yearly,
        }
    }

    fn reason(self, n: u32, bucket: String) -> Reason {
        match self {
            Bucket::Hourly => Reason::Hourly { n, bucket },
            Bucket::Daily => Reason::Daily { n, bucket },
            Bucket::Weekly => Reason::Weekly { n, bucket },
            Bucket::Monthly => Reason::Monthly { n, bucket },
            Bucket::Yearly => Reason::Yearly { n, bucket },
        }
    }
}

/// Decide every snapshot: one [`Decision`] per snapshot, in input order.
/// Buckets are taken in `tz`; snapshots younger than `min_age` are kept.
pub fn evaluate(
    snapshots: &[SnapshotInfo],
    policies: &PolicySet,
    now: DateTime<Utc>,
    tz: chrono_tz::Tz,
    min_age: Duration,
) -> Vec<Decision> {
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); snapshots.len()];
    let mut groups: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, s) in snapshots.iter().enumerate() {
        groups
            .entry((s.source_name.as_str(), s.source_kind.as_str()))
            .or_default()
            .push(i);
    }
    let young = before(now, min_age);
    for mut order in groups.into_values() {
        // Newest first; ties by id, so that input order never matters.
        order.sort_by(|&a, &b| {
            let (a, b) = (&snapshots[a], &snapshots[b]);
            (b.time, b.id).cmp(&(a.time, a.id))
        });
        let first = &snapshots[order[0]];
        reasons[order[0]].push(Reason::Newest);
        for &i in &order {
            if after(snapshots[i].time, young) {
                reasons[i].push(Reason::MinAge {
                    min_age: duration_text(min_age),
                });
            }
        }
        match policies.policy_for(&first.source_name, first.source_kind) {
            None => {
                for &i in &order {
                    reasons[i].push(Reason::Uncovered {
                        source: first.source_name.clone(),
                    });
                }
            }
            Some(p) => apply(
                &p.rules,
                first.source_kind,
                snapshots,
                &order,
                now,
                tz,
                &mut reasons,
            ),
        }
    }
    snapshots
        .iter()
        .zip(reasons)
        .map(|(s, reasons)| Decision {
            id: s.id,
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect()
}

/// One policy's rules over one group (`order`: newest first).
fn apply(
    rules: &Rules,
    kind: SourceKind,
    snapshots: &[SnapshotInfo],
    order: &[usize],
    now: DateTime<Utc>,
    tz: chrono_tz::Tz,
    reasons: &mut [Vec<Reason>],
) {
    if let Some(c) = rules.keep_last {
        for (k, &i) in order.iter().enumerate() {
            if !c.allows(k) {
                break;
            }
            reasons[i].push(Reason::Last { n: k as u32 + 1 });
        }
    }
    for b in Bucket::ALL {
        let Some(c) = b.count(rules) else { continue };
        let mut kept: HashSet<String> = HashSet::new();
        for &i in order {
            if !c.allows(kept.len()) {
                break;
            }
            let bucket = b.of(snapshots[i].time, tz);
            if !kept.contains(&bucket) {
                kept.insert(bucket.clone());
                reasons[i].push(b.reason(kept.len() as u32, bucket));
            }
        }
    }
    if let Some(d) = rules.keep_within {
        let cutoff = before(now, d);
        let within = duration_text(d);
        for &i in order {
            if after(snapshots[i].time, cutoff) {
                reasons[i].push(Reason::Within {
                    within: within.clone(),
                });
            }
        }
    }
    if !rules.keep_tags.is_empty() {
        for &i in order {
            if let Some(tag) = rules
                .keep_tags
                .iter()
                .find(|t| snapshots[i].tags.contains(t))
            {
                reasons[i].push(Reason::Tag { tag: tag.clone() });
            }
        }
    }
    if let (Some(d), true) = (rules.pitr_window, is_pitr_kind(kind)) {
        let cutoff = before(now, d);
        let window = duration_text(d);
        let mut base_found = false;
        for &i in order {
            let inside = after(snapshots[i].time, cutoff);
            // The newest at or before the window's start: replay begins there.
            if inside || !base_found {
                base_found |= !inside;
                reasons[i].push(Reason::Pitr {
                    window: window.clone(),
                });
            }
        }
    }
}
