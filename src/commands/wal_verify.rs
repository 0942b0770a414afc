//! `wal-verify`: can every base backup be recovered up to the newest
//! archived WAL, on every timeline? From each base backup (a snapshot of
//! kind `wal` with [`BaseBackupInfo`]; with none, from the oldest archived
//! segment) to the newest segment of each timeline: no segment missing,
//! every one listed (and, with `read_data`, downloaded, decoded and its
//! page headers and records read). Reports the ranges, the gaps by exact
//! name, and the newest recoverable time: the real RPO now.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;

use crate::error::Result;
use crate::format::basebackup::BaseBackupInfo;
use crate::format::snapshot::SourceKind;
use crate::format::wal_timeline::{self, Gap};
use crate::repository::wal_archive::{self, ArchiveMap, Problem, Target, TimelineRanges};
use crate::repository::Repository;

/// Segments downloaded at once with `read_data` (each up to a segment in memory).
pub const READ_CONCURRENCY: usize = 3;

#[derive(Debug, Clone)]
pub struct WalVerifyOptions {
    pub read_data: bool,
    pub now: DateTime<Utc>,
}

/// One base backup, checked against the archive.
#[derive(Debug, Clone, Serialize)]
pub struct BaseBackupCheck {
    pub snapshot: String,
    pub short_id: String,
    pub source: String,
    pub time: DateTime<Utc>,
    pub timeline: u32,
    pub start_segment: String,
    pub stop_segment: String,
    /// The timeline recovery from it follows (the newest descending from it).
    pub follows_timeline: u32,
    /// The WAL from its start through its stop segment is archived: it can
    /// be made consistent.
    pub consistent: bool,
    /// The newest time recovery from it reaches.
    pub recoverable_to: Option<DateTime<Utc>>,
    /// What is missing to go further (the first gap after its range).
    pub missing: Vec<String>,
}

/// A gap recovery needs filled.
#[derive(Debug, Clone, Serialize)]
pub struct NeededGap {
    pub timeline: u32,
    #[serde(flatten)]
    pub gap: Gap,
    /// Where recovery must start from for this gap to matter: a base
    /// backup's snapshot id, or "oldest archived segment".
    pub needed_from: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WalVerifyReport {
    pub checked_at: DateTime<Utc>,
    pub location: String,
    pub system_identifier: Option<String>,
    pub segment_size: u32,
    /// Segments listed in the archive.
    pub segments: u64,
    pub timelines: Vec<TimelineRanges>,
    pub base_backups: Vec<BaseBackupCheck>,
    /// Segments missing where recovery needs them (exit 3).
    pub gaps: Vec<NeededGap>,
    pub newest_segment: Option<String>,
    /// The last transaction end archived on the newest timeline.
    pub newest_recoverable_time: Option<DateTime<Utc>>,
    pub newest_recoverable_age_s: Option<f64>,
    /// Segments downloaded and read (`read_data`).
    pub segments_read: u64,
    pub bytes_read: u64,
    /// Damage (exit 3).
    pub problems: Vec<Problem>,
    /// Worth a look, not damage: a segment whose valid WAL ends early.
    pub warnings: Vec<Problem>,
}

impl WalVerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.gaps.is_empty()
    }
}

/// The base backups of the repository (snapshots of kind `wal` whose
/// metadata says so), oldest first.
async fn base_backups(
    repo: &Repository,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(crate::format::Id, String, DateTime<Utc>, BaseBackupInfo)>> {
    let mut out = Vec::new();
    for (id, s) in repo.snapshots().await? {
        if s.source.kind != SourceKind::Wal {
            continue;
        }
        match BaseBackupInfo::from_metadata(&s.metadata) {
            Ok(Some(info)) => out.push((id, s.source.name.clone(), s.time, info)),
            Ok(None) => {}
            Err(e) => problems.push(Problem {
                object: format!("snapshot {}", id.short()),
                message: e.to_string(),
            }),
        }
    }
    out.sort_by_key(|b| b.2);
    Ok(out)
}

pub async fn run(repo: &Repository, opts: WalVerifyOptions) -> Result<WalVerifyReport> {
    let map = wal_archive::load(repo).await?;
    let mut problems = map.problems.clone();
    let mut warnings = Vec::new();
    let bases = base_backups(repo, &mut problems).await?;
    let seg = map.segment_size;

    if map.segments == 0 {
        problems.push(Problem {
            object: crate::format::wal::DIR.to_owned(),
            message: "no WAL segment is archived".into(),
        });
    }

    // Per timeline: from where recovery may start, the gaps after it.
    let mut gaps: Vec<NeededGap> = Vec::new();
    let mut seen_gaps = BTreeSet::new();
    let mut needed: BTreeSet<(u32, u64)> = BTreeSet::new();
    for t in &map.timelines {
        let history = map.history(t.timeline);
        let start = bases
            .iter()
            .filter(|b| {
                wal_timeline::descends_from(t.timeline, history, b.3.timeline, b.3.start_lsn)
            })
            .min_by_key(|b| b.3.start_lsn);
        let (from, why) = match start {
            Some(b) => (Some(b.3.start_lsn.segment(seg)), b.0.short()),
            None => (None, "oldest archived segment".to_owned()),
        };
        let path = map.path_from(t.timeline, from);
        for g in path.gaps {
            if seen_gaps.insert(g.missing.first().cloned()) {
                gaps.push(NeededGap {
                    timeline: t.timeline,
                    gap: g,
                    needed_from: why.clone(),
                });
            }
        }
        for r in path.ranges.iter().filter(|_| opts.read_data) {
            for s in r.first_segno..=r.last_segno {
                needed.insert((wal_timeline::timeline_for(t.timeline, history, s, seg), s));
            }
        }
    }

    let mut checks = Vec::new();
    for (id, source, time, info) in &bases {
        if map
            .system_identifier
            .as_ref()
            .is_some_and(|s| *s != info.system_identifier)
        {
            problems.push(Problem {
                object: format!("snapshot {}", id.short()),
                message: format!(
                    "base backup of the cluster {}, but the WAL archive holds the cluster {}",
                    info.system_identifier,
                    map.system_identifier.as_deref().unwrap_or("")
                ),
            });
        }
        let cov = map.covers(&info.start_segment, info.start_lsn, Target::Latest)?;
        let stop = info.stop_lsn.segment(seg);
        let consistent = cov
            .range
            .as_ref()
            .is_some_and(|r| r.segments.last_segno >= stop);
        if !consistent {
            let reach = cov
                .range
                .as_ref()
                .map(|r| format!("archived only through {}", r.segments.last))
                .unwrap_or_else(|| format!("{} is not archived", info.start_segment));
            problems.push(Problem {
                object: format!("snapshot {}", id.short()),
                message: format!(
                    "base backup {} needs the WAL from {} through {} to be consistent, but it is {reach}",
                    id.short(),
                    info.start_segment,
                    info.stop_segment
                ),
            });
        }
        checks.push(BaseBackupCheck {
            snapshot: id.to_string(),
            short_id: id.short(),
            source: source.clone(),
            time: *time,
            timeline: info.timeline,
            start_segment: info.start_segment.clone(),
            stop_segment: info.stop_segment.clone(),
            follows_timeline: cov.timeline,
            consistent,
            recoverable_to: cov.newest_time,
            missing: cov.missing,
        });
    }

    let (mut segments_read, mut bytes_read) = (0u64, 0u64);
    if opts.read_data {
        let record_id: Option<u64> = map.system_identifier.as_ref().and_then(|s| s.parse().ok());
        let last_of_path: BTreeSet<(u32, u64)> = map
            .timelines
            .iter()
            .flat_map(|t| {
                t.ranges.iter().map(|r| {
                    let s = r.segments.last_segno;
                    (
                        wal_timeline::timeline_for(t.timeline, map.history(t.timeline), s, seg),
                        s,
                    )
                })
            })
            .collect();
        let mut results = futures::stream::iter(needed.iter().copied())
            .map(|(tli, s)| read_one(repo, &map, tli, s))
            .buffer_unordered(READ_CONCURRENCY);
        while let Some((tli, s, r)) = results.next().await {
            let object = map.object_of(tli, s).unwrap_or_default();
            match r {
                Ok((scan, len)) => {
                    segments_read += 1;
                    bytes_read += len;
                    if record_id.is_some_and(|id| id != scan.system_id) {
                        problems.push(Problem {
                            object,
                            message: format!(
                                "segment of the cluster {}, not of the archive's {}",
                                scan.system_id,
                                map.system_identifier.as_deref().unwrap_or("")
                            ),
                        });
                    } else if !scan.stop.is_clean() && !last_of_path.contains(&(tli, s)) {
                        warnings.push(Problem {
                            object,
                            message: format!(
                                "its valid WAL ends before the segment does: {}",
                                scan.stop_detail
                            ),
                        });
                    }
                }
                Err(e) if e.kind() == crate::error::ErrorKind::Io => return Err(e),
                Err(e) => problems.push(Problem {
                    object,
                    message: e.to_string(),
                }),
            }
        }
    }

    let newest = map.newest_recoverable_time();
    Ok(WalVerifyReport {
        checked_at: opts.now,
        location: map.location.clone(),
        system_identifier: map.system_identifier.clone(),
        segment_size: seg,
        segments: map.segments,
        newest_segment: map.newest_segment(),
        newest_recoverable_time: newest,
        newest_recoverable_age_s: newest
            .map(|t| opts.now.signed_duration_since(t).num_milliseconds() as f64 / 1000.0),
        timelines: map.timelines,
        base_backups: checks,
        gaps,
        segments_read,
        bytes_read,
        problems,
        warnings,
    })
}

async fn read_one(
    repo: &Repository,
    map: &ArchiveMap,
    tli: u32,
    segno: u64,
) -> (
    u32,
    u64,
    Result<(crate::format::wal_records::SegmentScan, u64)>,
) {
    let r = wal_archive::scan_segment(repo, map, tli, segno)
        .await
        .map(|s| (s, map.segment_size as u64));
    (tli, segno, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::{Snapshot, Source, Totals, VERSION};
    use crate::format::wal::segment_name;
    use crate::format::wal_records::pg_time;
    use crate::repository::wal_archive::tests::{lsn, repo, segment, MB16};

    fn base(start: u64, stop: u64, sysid: &str) -> Snapshot {
        let info = BaseBackupInfo {
            start_lsn: lsn(start, 40),
            stop_lsn: lsn(stop, 100),
            timeline: 1,
            stop_timeline: 1,
            system_identifier: sysid.into(),
            pg_version: "15".into(),
            segment_size: MB16,
            start_segment: segment_name(1, start, MB16),
            stop_segment: segment_name(1, stop, MB16),
            start_time: Utc::now(),
            stop_time: Utc::now(),
            label: String::new(),
        };
        Snapshot {
            version: VERSION,
            time: Utc::now(),
            host: "h".into(),
            username: String::new(),
            source: Source {
                kind: SourceKind::Wal,
                name: "pg".into(),
            },
            tags: vec![],
            parent: None,
            paths: vec![],
            tree: crate::format::Id::hash(b"no tree"),
            entry_count: 0,
            totals: Totals::default(),
            started: Utc::now(),
            duration_s: 0.0,
            program_version: String::new(),
            metadata: [(
                crate::format::basebackup::METADATA_KEY.to_owned(),
                serde_json::to_value(&info).unwrap(),
            )]
            .into(),
        }
    }

    fn opts(read_data: bool) -> WalVerifyOptions {
        WalVerifyOptions {
            read_data,
            now: Utc::now(),
        }
    }

    #[tokio::test]
    async fn gaps_count_from_the_base_backups_on() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let empty = run(&repo, opts(false)).await.unwrap();
        assert!(!empty.ok() && empty.problems[0].message.contains("no WAL segment"));
        for s in [1u64, 2, 4, 5, 6] {
            segment(&repo, dir.path(), 1, s, Some(s as i64 * 1000)).await;
        }
        // No base backup: from the oldest segment, 3 is missing.
        let r = run(&repo, opts(true)).await.unwrap();
        assert!(!r.ok());
        assert_eq!(r.gaps[0].gap.missing, ["000000010000000000000003"]);
        assert_eq!(r.gaps[0].needed_from, "oldest archived segment");
        assert_eq!(r.segments_read, 5);
        assert_eq!(r.newest_recoverable_time, pg_time(6000));

        // A base backup from segment 4: 3 is not needed any more.
        let sysid = "7300000000000000001";
        repo.save_snapshot(&base(4, 5, sysid)).await.unwrap();
        let r = run(&repo, opts(true)).await.unwrap();
        assert!(r.ok(), "{:?} {:?}", r.gaps, r.problems);
        assert_eq!(r.segments_read, 3, "only what recovery from it needs");
        let b = &r.base_backups[0];
        assert!(b.consistent && b.missing.is_empty());
        assert_eq!(b.recoverable_to, pg_time(6000));
        assert_eq!(r.timelines[0].gaps.len(), 1, "the hole is still shown");

        // One that needs WAL past the archive's end, one of another cluster.
        repo.save_snapshot(&base(5, 9, sysid)).await.unwrap();
        repo.save_snapshot(&base(5, 5, "42")).await.unwrap();
        let r = run(&repo, opts(false)).await.unwrap();
        assert!(!r.ok());
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        let all = format!("{:?}", r.problems);
        assert!(
            all.contains("archived only through 000000010000000000000006"),
            "{all}"
        );
        assert!(all.contains("cluster 42"), "{all}");
    }
}
