//! The WAL archive as recovery sees it: which segments are archived on
//! which timeline, how the timelines branch (their `.history` files), the
//! contiguous ranges recovery can replay and the exact segments missing
//! between them, and the newest time each range reaches (read from the
//! range's last segments). The rules are pure (`format::wal_timeline`,
//! `format::wal_records`); this module lists and downloads.
//!
//! [`load`] lists `wal/` page by page and keeps one small entry per
//! segment; it downloads the history files and, per range, its last
//! segment (walking back up to [`WALK_BACK`] segments when that one holds
//! no transaction end). [`ArchiveMap::covers`] answers "can a base backup
//! starting at this segment reach this time", for `restore --point-in-time`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::format::wal::{
    self, segment_name, segment_number, Lsn, SystemIdRecord, WalKind, WalName,
};
use crate::format::wal_records::{self, SegmentScan};
use crate::format::wal_timeline::{self, Gap, HistoryEntry, SegmentRange, TimelinePath};
use crate::format::Id;
use crate::repository::Repository;

/// Segments read back from the end of a range to find a transaction end.
pub const WALK_BACK: u64 = 4;
/// Ranges (newest first, per timeline) whose newest time is looked up.
pub const MAX_SCANNED_RANGES: usize = 8;

/// One range, with what its last segments say.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Range {
    #[serde(flatten)]
    pub segments: SegmentRange,
    /// The last transaction end (commit or abort) in the range: the newest
    /// time a `recovery_target_time` replaying this range can be given.
    /// `None`: none in its last [`WALK_BACK`] segments, or not looked up.
    pub newest_time: Option<DateTime<Utc>>,
    /// The record with that time, and the segment holding it.
    pub newest_time_lsn: Option<Lsn>,
    pub newest_time_segment: Option<String>,
    /// The end of the last valid record in the range's last segment.
    pub end_lsn: Option<Lsn>,
}

/// The path of one timeline: what recovery towards it reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineRanges {
    pub timeline: u32,
    /// Its history (empty for timeline 1), oldest ancestor first.
    pub history: Vec<HistoryEntry>,
    pub ranges: Vec<Range>,
    pub gaps: Vec<Gap>,
    /// The newest segment archived on this timeline.
    pub newest_segment: Option<String>,
}

/// Something in the archive that is wrong, by object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub object: String,
    pub message: String,
}

/// What the archive holds (docs/FORMAT.md, "Timelines, ranges and gaps").
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveMap {
    pub location: String,
    pub system_identifier: Option<String>,
    pub segment_size: u32,
    pub segments: u64,
    pub timelines: Vec<TimelineRanges>,
    /// Damage found while loading (an unreadable history file, a name
    /// archived twice with different content).
    pub problems: Vec<Problem>,
    /// Objects under `wal/` that are not archive objects (left alone).
    pub stray_objects: Vec<String>,
    #[serde(skip)]
    archived: BTreeMap<u32, BTreeSet<u64>>,
    #[serde(skip)]
    hashes: BTreeMap<(u32, u64), Id>,
    #[serde(skip)]
    histories: BTreeMap<u32, Vec<HistoryEntry>>,
}

/// What to recover to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Everything archived.
    Latest,
    Time(DateTime<Utc>),
}

/// Whether the archive carries a base backup to a target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coverage {
    pub covered: bool,
    /// The timeline recovery follows (the newest that descends from the
    /// base backup's).
    pub timeline: u32,
    pub start_segment: String,
    /// The contiguous range from the start segment (`None`: the start
    /// segment itself is not archived).
    pub range: Option<Range>,
    /// The newest time recovery from this start can reach.
    pub newest_time: Option<DateTime<Utc>>,
    /// The segments that would have to be archived to go on past the range
    /// (the next gap), or the start segment when it is missing.
    pub missing: Vec<String>,
}

impl ArchiveMap {
    /// Every timeline's ranges and gaps.
    pub fn ranges(&self) -> &[TimelineRanges] {
        &self.timelines
    }

    pub fn timeline(&self, tli: u32) -> Option<&TimelineRanges> {
        self.timelines.iter().find(|t| t.timeline == tli)
    }

    pub fn history(&self, tli: u32) -> &[HistoryEntry] {
        self.histories.get(&tli).map_or(&[], Vec::as_slice)
    }

    /// Is `name` archived (once)?
    pub fn has_segment(&self, tli: u32, segno: u64) -> bool {
        self.archived.get(&tli).is_some_and(|s| s.contains(&segno))
    }

    /// The object holding segment `segno` of `tli`, if archived.
    pub fn object_of(&self, tli: u32, segno: u64) -> Option<String> {
        let hash = self.hashes.get(&(tli, segno))?;
        let name = WalName::parse(&segment_name(tli, segno, self.segment_size)).ok()?;
        Some(name.object_name(hash))
    }

    /// The newest timeline that recovery from a backup on `base` at `at`
    /// follows (`recovery_target_timeline = latest`).
    pub fn latest_timeline_from(&self, base: u32, at: Lsn) -> u32 {
        self.timelines
            .iter()
            .map(|t| t.timeline)
            .chain(self.histories.keys().copied())
            .filter(|t| wal_timeline::descends_from(*t, self.history(*t), base, at))
            .max()
            .unwrap_or(base)
    }

    /// The ranges and gaps recovery towards `tli` reads from segment
    /// `from` on.
    pub fn path_from(&self, tli: u32, from: Option<u64>) -> TimelinePath {
        wal_timeline::path(
            tli,
            self.history(tli),
            &self.archived,
            from,
            self.segment_size,
        )
    }

    /// The newest recoverable time of the archive: that of the last range
    /// of the newest timeline that has one.
    pub fn newest_recoverable_time(&self) -> Option<DateTime<Utc>> {
        self.timelines
            .iter()
            .rev()
            .find_map(|t| t.ranges.last())
            .and_then(|r| r.newest_time)
    }

    /// The newest segment archived on the newest timeline.
    pub fn newest_segment(&self) -> Option<String> {
        self.timelines
            .iter()
            .rev()
            .find_map(|t| t.newest_segment.clone())
    }

    pub fn gap_count(&self) -> u64 {
        self.timelines
            .iter()
            .flat_map(|t| &t.gaps)
            .map(|g| g.count)
            .sum()
    }

    /// Can recovery from a base backup whose first segment is
    /// `start_segment` (on its timeline, starting at `start_lsn`) reach
    /// `target`, following the newest timeline that descends from it? The
    /// answer names the range it can replay, the newest time that range
    /// reaches, and what is missing to go further.
    pub fn covers(&self, start_segment: &str, start_lsn: Lsn, target: Target) -> Result<Coverage> {
        let (base_tli, segno) = segment_number(start_segment, self.segment_size)
            .ok_or_else(|| Error::usage(format!("{start_segment:?} is not a WAL segment name")))?;
        let tli = self.latest_timeline_from(base_tli, start_lsn);
        let path = self.path_from(tli, Some(segno));
        let mut cov = Coverage {
            covered: false,
            timeline: tli,
            start_segment: start_segment.to_owned(),
            range: None,
            newest_time: None,
            missing: Vec::new(),
        };
        let first = path.ranges.first().filter(|r| r.first_segno == segno);
        let Some(first) = first else {
            cov.missing = vec![segment_name(
                wal_timeline::timeline_for(tli, self.history(tli), segno, self.segment_size),
                segno,
                self.segment_size,
            )];
            return Ok(cov);
        };
        // The same range, with its time, as loaded (it ends where the
        // full path's range holding `segno` ends).
        let full = self.timeline(tli).and_then(|t| {
            t.ranges
                .iter()
                .find(|r| r.segments.first_segno <= segno && segno <= r.segments.last_segno)
        });
        let range = match full {
            Some(r) => Range {
                segments: first.clone(),
                ..r.clone()
            },
            None => Range {
                segments: first.clone(),
                newest_time: None,
                newest_time_lsn: None,
                newest_time_segment: None,
                end_lsn: None,
            },
        };
        cov.newest_time = range.newest_time;
        cov.missing = path
            .gaps
            .iter()
            .find(|g| g.first_segno > first.last_segno)
            .map(|g| g.missing.clone())
            .unwrap_or_default();
        cov.covered = match target {
            // Everything archived after the start, with nothing missing.
            Target::Latest => cov.missing.is_empty(),
            Target::Time(t) => range.newest_time.is_some_and(|n| n >= t),
        };
        cov.range = Some(range);
        Ok(cov)
    }
}

/// One archived object's name, parsed.
enum Listed {
    Segment(u32, u64, Id),
    History(u32, String),
    Other,
}

fn classify(object: &str, seg_size: Option<u32>) -> Option<Listed> {
    let rest = object.strip_prefix(wal::DIR)?;
    if object == wal::SYSTEM_ID {
        return Some(Listed::Other);
    }
    let (dir, file) = rest.split_once('/')?;
    let (file, _) = file.rsplit_once('-')?;
    let name = WalName::parse(file).ok()?;
    if format!("{:08X}", name.timeline) != dir {
        return None;
    }
    let hash = name.hash_of(object)?;
    match name.kind {
        WalKind::Segment => {
            // Without a known size, 16 MiB places it (re-read once known).
            let (tli, segno) = segment_number(&name.name, seg_size.unwrap_or(16 << 20))?;
            Some(Listed::Segment(tli, segno, hash))
        }
        WalKind::History => Some(Listed::History(name.timeline, object.to_owned())),
        WalKind::Backup | WalKind::Partial => Some(Listed::Other),
    }
}

/// The archive's cluster record (`wal/system-id`), if any push made it.
pub async fn load_system_id(repo: &Repository) -> Result<Option<SystemIdRecord>> {
    match repo.backend().get(wal::SYSTEM_ID).await {
        Ok(b) => Ok(Some(SystemIdRecord::open(repo.key(), &b)?)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Download, check and decode one archived file.
pub async fn read_object(repo: &Repository, file: &str, object: &str) -> Result<Vec<u8>> {
    let name = WalName::parse(file)?;
    let sealed = repo.backend().get(object).await?;
    Ok(wal::decode(repo.key(), &name, object, &sealed)?.plain)
}

/// Download segment `segno` of `tli` and scan it (checking that it is the
/// segment its name says).
pub async fn scan_segment(
    repo: &Repository,
    map: &ArchiveMap,
    tli: u32,
    segno: u64,
) -> Result<SegmentScan> {
    let file = segment_name(tli, segno, map.segment_size);
    let object = map
        .object_of(tli, segno)
        .ok_or_else(|| Error::not_found(format!("WAL segment {file} is not archived")))?;
    let plain = read_object(repo, &file, &object).await?;
    let start = Lsn(segno * map.segment_size as u64);
    wal_records::scan(&plain, Some(start)).map_err(|e| e.context(format!("object {object}")))
}

/// List the archive and work out its ranges (see the module's comment).
pub async fn load(repo: &Repository) -> Result<ArchiveMap> {
    let backend = repo.backend();
    let record = load_system_id(repo).await?;
    let mut seg_size = record.as_ref().and_then(|r| r.segment_size);
    let mut map = ArchiveMap {
        location: backend.location(),
        system_identifier: record.as_ref().map(|r| r.system_identifier.clone()),
        segment_size: seg_size.unwrap_or(16 << 20),
        segments: 0,
        timelines: Vec::new(),
        problems: Vec::new(),
        stray_objects: Vec::new(),
        archived: BTreeMap::new(),
        hashes: BTreeMap::new(),
        histories: BTreeMap::new(),
    };
    // Listed page by page; one entry kept per segment. Without a recorded
    // size, segment names are kept as text until the first segment says.
    let mut unplaced: Vec<String> = Vec::new();
    let mut history_objects: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut token = None;
    loop {
        let page = backend.list_page(wal::DIR, token).await?;
        for o in page.objects {
            if seg_size.is_none() {
                if let Some(Listed::Segment(..)) = classify(&o.name, None) {
                    unplaced.push(o.name);
                    continue;
                }
            }
            place(&mut map, &mut history_objects, o.name, seg_size);
        }
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    if seg_size.is_none() {
        if let Some(first) = unplaced.iter().min() {
            let file = first
                .strip_prefix(wal::DIR)
                .and_then(|r| r.split_once('/'))
                .and_then(|(_, f)| f.rsplit_once('-'))
                .map(|(f, _)| f.to_owned())
                .unwrap_or_default();
            let plain = read_object(repo, &file, first).await?;
            seg_size = Some(wal::segment_size_of(&file, &plain)?);
            map.segment_size = seg_size.expect("set");
        }
        for name in unplaced {
            place(&mut map, &mut history_objects, name, seg_size);
        }
    }
    for (tli, objects) in history_objects {
        if objects.len() > 1 {
            map.problems.push(Problem {
                object: objects.join(", "),
                message: format!(
                    "{tli:08X}.history is archived {} times with different content",
                    objects.len()
                ),
            });
        }
        let object = &objects[0];
        let file = format!("{tli:08X}.history");
        let parsed = read_object(repo, &file, object).await.and_then(|plain| {
            let text =
                String::from_utf8(plain).map_err(|_| Error::format(&file, "not UTF-8 text"))?;
            wal_timeline::parse_history(tli, &text)
        });
        match parsed {
            Ok(h) => {
                map.histories.insert(tli, h);
            }
            Err(e) => map.problems.push(Problem {
                object: object.clone(),
                message: e.to_string(),
            }),
        }
    }
    let timelines: Vec<u32> = map.archived.keys().copied().collect();
    for tli in timelines {
        if tli > 1 && !map.histories.contains_key(&tli) {
            map.problems.push(Problem {
                object: format!("{}{tli:08X}/{tli:08X}.history", wal::DIR),
                message: format!(
                    "timeline {tli} has segments but its history file {tli:08X}.history is not archived: recovery cannot follow it"
                ),
            });
        }
        let path = map.path_from(tli, None);
        let newest = map
            .archived
            .get(&tli)
            .and_then(|s| s.iter().next_back())
            .map(|s| segment_name(tli, *s, map.segment_size));
        let t = TimelineRanges {
            timeline: tli,
            history: map.history(tli).to_vec(),
            ranges: path
                .ranges
                .into_iter()
                .map(|r| Range {
                    segments: r,
                    newest_time: None,
                    newest_time_lsn: None,
                    newest_time_segment: None,
                    end_lsn: None,
                })
                .collect(),
            gaps: path.gaps,
            newest_segment: newest,
        };
        map.timelines.push(t);
    }
    find_times(repo, &mut map).await?;
    Ok(map)
}

fn place(
    map: &mut ArchiveMap,
    histories: &mut BTreeMap<u32, Vec<String>>,
    name: String,
    seg_size: Option<u32>,
) {
    match classify(&name, seg_size) {
        Some(Listed::Segment(tli, segno, hash)) => {
            map.segments += 1;
            if let Some(other) = map.hashes.insert((tli, segno), hash) {
                map.problems.push(Problem {
                    object: name,
                    message: format!(
                        "segment {} is archived twice with different content (also {})",
                        segment_name(tli, segno, map.segment_size),
                        other.to_hex()
                    ),
                });
            }
            map.archived.entry(tli).or_default().insert(segno);
        }
        Some(Listed::History(tli, object)) => histories.entry(tli).or_default().push(object),
        Some(Listed::Other) => {}
        None => map.stray_objects.push(name),
    }
}

/// Fill in each range's newest time from its last segments (the newest
/// [`MAX_SCANNED_RANGES`] ranges of each timeline; one download per
/// segment, shared between timelines).
async fn find_times(repo: &Repository, map: &mut ArchiveMap) -> Result<()> {
    let mut cache: BTreeMap<(u32, u64), Option<SegmentScan>> = BTreeMap::new();
    for ti in 0..map.timelines.len() {
        let tli = map.timelines[ti].timeline;
        let n = map.timelines[ti].ranges.len();
        for ri in (n.saturating_sub(MAX_SCANNED_RANGES)..n).rev() {
            let (first, last) = {
                let r = &map.timelines[ti].ranges[ri].segments;
                (r.first_segno, r.last_segno)
            };
            let mut segno = last;
            let mut found = None;
            let mut end_lsn = None;
            for step in 0..WALK_BACK {
                let on = wal_timeline::timeline_for(tli, map.history(tli), segno, map.segment_size);
                let key = (on, segno);
                if let std::collections::btree_map::Entry::Vacant(slot) = cache.entry(key) {
                    let s = match scan_segment(repo, map, on, segno).await {
                        Ok(s) => Some(s),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::Integrity | ErrorKind::NotFound) =>
                        {
                            let object = map.object_of(on, segno).unwrap_or_default();
                            map.problems.push(Problem {
                                object,
                                message: e.to_string(),
                            });
                            None
                        }
                        Err(e) => return Err(e),
                    };
                    slot.insert(s);
                }
                let scan = cache[&key].as_ref();
                if step == 0 {
                    end_lsn = scan.and_then(|s| s.end_lsn);
                }
                if let Some(x) = scan.and_then(|s| s.last_xact.clone()) {
                    found = Some((x, segment_name(on, segno, map.segment_size)));
                    break;
                }
                if segno == first {
                    break;
                }
                segno -= 1;
            }
            let r = &mut map.timelines[ti].ranges[ri];
            r.end_lsn = end_lsn;
            if let Some((x, seg)) = found {
                r.newest_time = x.time;
                r.newest_time_lsn = Some(x.lsn);
                r.newest_time_segment = Some(seg);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::crypto::KdfParams;
    use crate::format::wal_records::{pg_time, synth::Writer};
    use crate::repository::InitOptions;

    pub(crate) const MB16: u32 = 16 << 20;

    pub(crate) async fn repo(dir: &Path) -> Repository {
        let opts = InitOptions {
            kdf: KdfParams {
                m_cost_kib: 1024,
                t_cost: 1,
                p_cost: 1,
            },
            ..Default::default()
        };
        let backend = Arc::new(LocalBackend::new(dir.join("repo")).unwrap());
        Repository::init(backend, b"pw", &opts).await.unwrap()
    }

    /// Archive segment `segno` of `tli` (two pages), with one commit at
    /// `commit` µs when given.
    pub(crate) async fn segment(
        repo: &Repository,
        dir: &Path,
        tli: u32,
        segno: u64,
        commit: Option<i64>,
    ) {
        let mut w = Writer::new(segno * MB16 as u64, MB16, tli, 2 * 8192, 0);
        w.filler(100);
        if let Some(t) = commit {
            w.xact(0x00, 5, t, false);
        }
        let p = dir.join(segment_name(tli, segno, MB16));
        std::fs::write(&p, &w.bytes).unwrap();
        crate::commands::wal::push(repo, "pg", &p).await.unwrap();
    }

    async fn history(repo: &Repository, dir: &Path, tli: u32, text: &str) {
        let p = dir.join(format!("{tli:08X}.history"));
        std::fs::write(&p, text).unwrap();
        crate::commands::wal::push(repo, "pg", &p).await.unwrap();
    }

    pub(crate) fn lsn(segno: u64, off: u64) -> Lsn {
        Lsn(segno * MB16 as u64 + off)
    }

    #[tokio::test]
    async fn ranges_times_and_coverage_follow_the_timelines() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        // Timeline 1: 1, 2, (3 missing), 4, 5, 6 (6 without a commit);
        // timeline 2 began inside segment 5: 5, 6, 7.
        for s in [1u64, 2, 4, 5, 6] {
            let commit = (s != 6).then_some(s as i64 * 1000);
            segment(&repo, dir.path(), 1, s, commit).await;
        }
        history(
            &repo,
            dir.path(),
            2,
            "1\t0/5000100\tno recovery target specified\n",
        )
        .await;
        for s in [5u64, 6, 7] {
            segment(&repo, dir.path(), 2, s, Some(s as i64 * 1000 + 500)).await;
        }
        let map = load(&repo).await.unwrap();
        assert_eq!(map.segment_size, MB16);
        assert_eq!(map.segments, 8);
        assert!(map.problems.is_empty(), "{:?}", map.problems);
        let tl1 = map.timeline(1).unwrap();
        let r: Vec<(&str, &str)> = tl1
            .ranges
            .iter()
            .map(|r| (r.segments.first.as_str(), r.segments.last.as_str()))
            .collect();
        assert_eq!(
            r,
            [
                ("000000010000000000000001", "000000010000000000000002"),
                ("000000010000000000000004", "000000010000000000000006")
            ]
        );
        assert_eq!(tl1.gaps[0].missing, ["000000010000000000000003"]);
        // segment 6 has no commit: the time comes from segment 5
        assert_eq!(tl1.ranges[1].newest_time, pg_time(5000));
        assert_eq!(
            tl1.ranges[1].newest_time_segment.as_deref(),
            Some("000000010000000000000005")
        );
        assert_eq!(tl1.ranges[0].newest_time, pg_time(2000));
        let tl2 = map.timeline(2).unwrap();
        assert_eq!(tl2.history[0].parent, 1);
        assert_eq!(tl2.ranges[1].segments.first, "000000010000000000000004");
        assert_eq!(tl2.ranges[1].segments.last, "000000020000000000000007");
        assert_eq!(map.newest_recoverable_time(), pg_time(7500));
        assert_eq!(
            map.newest_segment().as_deref(),
            Some("000000020000000000000007")
        );
        assert_eq!(map.gap_count(), 2, "one gap on each timeline's path");

        // A base backup in segment 4 reaches timeline 2's end.
        let c = map
            .covers(
                "000000010000000000000004",
                lsn(4, 40),
                Target::Time(pg_time(6000).unwrap()),
            )
            .unwrap();
        assert!(c.covered && c.missing.is_empty(), "{c:?}");
        assert_eq!(c.timeline, 2);
        assert_eq!(c.newest_time, pg_time(7500));
        assert!(
            map.covers("000000010000000000000004", lsn(4, 40), Target::Latest)
                .unwrap()
                .covered
        );
        // One in segment 1 stops at the gap, which it names.
        let c = map
            .covers(
                "000000010000000000000001",
                lsn(1, 40),
                Target::Time(pg_time(6000).unwrap()),
            )
            .unwrap();
        assert!(!c.covered);
        assert_eq!(c.newest_time, pg_time(2000));
        assert_eq!(c.missing, ["000000010000000000000003"]);
        assert_eq!(c.range.unwrap().segments.last, "000000010000000000000002");
        assert!(
            map.covers(
                "000000010000000000000001",
                lsn(1, 40),
                Target::Time(pg_time(2000).unwrap())
            )
            .unwrap()
            .covered
        );
        // Its start segment missing.
        let c = map
            .covers("000000010000000000000003", lsn(3, 40), Target::Latest)
            .unwrap();
        assert_eq!(
            (c.covered, c.missing.as_slice()),
            (false, &["000000010000000000000003".to_owned()][..])
        );
        // A backup on timeline 1 after the switch point stays on timeline 1.
        assert_eq!(map.latest_timeline_from(1, lsn(5, 0x200)), 1);
        let c = map
            .covers("000000010000000000000005", lsn(5, 0x200), Target::Latest)
            .unwrap();
        assert_eq!((c.timeline, c.newest_time), (1, pg_time(5000)));

        // A timeline without its history file is named as a problem.
        segment(&repo, dir.path(), 3, 9, Some(9000)).await;
        let map = load(&repo).await.unwrap();
        assert_eq!(map.problems.len(), 1, "{:?}", map.problems);
        assert!(map.problems[0].message.contains("00000003.history"));
    }
}
