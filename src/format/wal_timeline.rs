//! Timelines and the segments recovery needs (docs/FORMAT.md, "WAL
//! archive", "Timelines, ranges and gaps"). Pure: history files parsed,
//! and the archived segments laid along a timeline's history into
//! contiguous ranges and exact gaps.
//!
//! Recovery towards timeline T reads segment `s` from the newest timeline
//! of T's history that began at or before `s` (PostgreSQL's
//! `XLogFileReadAnyTLI` over `expectedTLEs`): the segment holding a switch
//! point is read from the new timeline, whose copy of it holds the old
//! timeline's WAL up to the switch (the old one's is archived, if at all,
//! as `.partial`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::wal::{segment_name, Lsn};
use crate::error::{Error, Result};

/// Names listed per gap at most (the count is always exact).
pub const MAX_NAMES_PER_GAP: usize = 64;

/// One line of a `TTTTTTTT.history` file: timeline `parent` ended at
/// `switchpoint`, where its child began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    pub parent: u32,
    pub switchpoint: Lsn,
    pub reason: String,
}

/// Parse the history file of timeline `timeline`: one line per ancestor,
/// oldest first, `parentTLI <tab> switchpoint <tab> reason`; blank lines
/// and `#` comments are skipped (as PostgreSQL's `readTimeLineHistory`
/// does). Ancestors must be increasing timelines below `timeline` with
/// non-decreasing switch points.
pub fn parse_history(timeline: u32, text: &str) -> Result<Vec<HistoryEntry>> {
    let what = format!("{timeline:08X}.history");
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| Error::format(&what, format!("line {}: {why}: {line:?}", i + 1));
        let mut fields = line.splitn(3, ['\t', ' ']);
        let parent: u32 = fields
            .next()
            .and_then(|f| f.trim().parse().ok())
            .ok_or_else(|| bad("no parent timeline"))?;
        let switchpoint = fields
            .next()
            .map(str::trim)
            .and_then(|f| Lsn::parse(f).ok())
            .ok_or_else(|| bad("no switch point"))?;
        let reason = fields.next().unwrap_or("").trim().to_owned();
        if parent == 0 || parent >= timeline {
            return Err(bad("the parent timeline must be below the file's"));
        }
        if let Some(last) = out.last() {
            if parent <= last.parent || switchpoint < last.switchpoint {
                return Err(bad("timelines must increase and switch points not go back"));
            }
        }
        out.push(HistoryEntry {
            parent,
            switchpoint,
            reason,
        });
    }
    if out.is_empty() && timeline > 1 {
        return Err(Error::format(&what, "no parent timeline"));
    }
    Ok(out)
}

/// Timeline `target` and its ancestors, oldest first: `(timeline, first
/// segment read from it)`.
fn chain(target: u32, history: &[HistoryEntry], seg_size: u32) -> Vec<(u32, u64)> {
    let mut v = Vec::with_capacity(history.len() + 1);
    let mut begin = 0u64;
    for h in history {
        v.push((h.parent, begin));
        begin = h.switchpoint.segment(seg_size);
    }
    v.push((target, begin));
    v
}

/// The timeline segment `segno` is read from on the way to `target`.
pub fn timeline_for(target: u32, history: &[HistoryEntry], segno: u64, seg_size: u32) -> u32 {
    chain(target, history, seg_size)
        .iter()
        .rev()
        .find(|(_, begin)| *begin <= segno)
        .map_or(target, |(tli, _)| *tli)
}

/// Segments `first..=last` archived back to back along one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentRange {
    pub first: String,
    pub last: String,
    pub first_segno: u64,
    pub last_segno: u64,
    pub segments: u64,
}

/// Segments missing between two ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub first_segno: u64,
    pub last_segno: u64,
    pub count: u64,
    /// Their exact names (the first [`MAX_NAMES_PER_GAP`]).
    pub missing: Vec<String>,
}

/// The segments recovery towards one timeline reads, as ranges and gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelinePath {
    pub timeline: u32,
    pub ranges: Vec<SegmentRange>,
    pub gaps: Vec<Gap>,
}

/// Lay the archived segments (`archived[timeline]`: segment numbers)
/// along `target`'s history: from `from` (default: the first archived
/// segment on the path) to the newest on `target` (or, when `target` has
/// none yet, the newest on the path). `Ok` with no ranges when nothing is
/// archived on the path.
pub fn path(
    target: u32,
    history: &[HistoryEntry],
    archived: &BTreeMap<u32, BTreeSet<u64>>,
    from: Option<u64>,
    seg_size: u32,
) -> TimelinePath {
    let chain = chain(target, history, seg_size);
    // The segments each timeline contributes: [begin, next begin).
    let mut on_path: Vec<(u32, u64)> = Vec::new();
    for (i, (tli, begin)) in chain.iter().enumerate() {
        let end = chain.get(i + 1).map(|(_, b)| *b);
        let Some(set) = archived.get(tli) else {
            continue;
        };
        let lo = (*begin).max(from.unwrap_or(0));
        if end.is_some_and(|e| lo >= e) {
            continue;
        }
        let it = set.range(lo..);
        match end {
            Some(e) => on_path.extend(it.take_while(|s| **s < e).map(|s| (*tli, *s))),
            None => on_path.extend(it.map(|s| (*tli, *s))),
        }
    }
    let mut out = TimelinePath {
        timeline: target,
        ranges: Vec::new(),
        gaps: Vec::new(),
    };
    let Some(&(_, first)) = on_path.first() else {
        return out;
    };
    let name = |s: u64| segment_name(timeline_for(target, history, s, seg_size), s, seg_size);
    // A start asked for that is not archived: the gap opens the path.
    if let Some(f) = from {
        if f < first {
            out.gaps.push(gap(f, first - 1, &name));
        }
    }
    let mut run_start = first;
    let mut prev = first;
    for &(_, s) in &on_path[1..] {
        if s != prev + 1 {
            out.ranges.push(range(run_start, prev, &name));
            out.gaps.push(gap(prev + 1, s - 1, &name));
            run_start = s;
        }
        prev = s;
    }
    out.ranges.push(range(run_start, prev, &name));
    out
}

fn range(first: u64, last: u64, name: &impl Fn(u64) -> String) -> SegmentRange {
    SegmentRange {
        first: name(first),
        last: name(last),
        first_segno: first,
        last_segno: last,
        segments: last - first + 1,
    }
}

fn gap(first: u64, last: u64, name: &impl Fn(u64) -> String) -> Gap {
    let count = last - first + 1;
    Gap {
        first_segno: first,
        last_segno: last,
        count,
        missing: (first..=last).take(MAX_NAMES_PER_GAP).map(name).collect(),
    }
}

/// Can recovery towards timeline `tli` (with `history`) start from a
/// backup taken on timeline `base` at `at`: is `tli` `base`, or did
/// `tli`'s history leave `base` at or after `at` (PostgreSQL's check that
/// the backup's checkpoint precedes the switch point)?
pub fn descends_from(tli: u32, history: &[HistoryEntry], base: u32, at: Lsn) -> bool {
    tli == base
        || history
            .iter()
            .any(|h| h.parent == base && h.switchpoint >= at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MB16: u32 = 16 << 20;

    fn lsn(s: &str) -> Lsn {
        Lsn::parse(s).unwrap()
    }

    #[test]
    fn parses_history_files_as_postgres_writes_them() {
        let h = parse_history(
            3,
            "1\t0/5000000\tno recovery target specified\n\n# c\n2\t0/7A000A0\tbefore 2026-12-03 07:00:00+00\n",
        )
        .unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].parent, 1);
        assert_eq!(h[0].switchpoint, lsn("0/5000000"));
        assert_eq!(h[1].reason, "before 2026-12-03 07:00:00+00");
        for bad in [
            "",
            "x\t0/1\tr",
            "1\tzz\tr",
            "3\t0/1\tr",
            "0\t0/1\tr",
            "2\t0/5\tr\n1\t0/6\tr",
            "1\t0/6\tr\n2\t0/5\tr",
        ] {
            assert!(parse_history(3, bad).is_err(), "{bad:?}");
        }
        assert!(parse_history(1, "").unwrap().is_empty());
    }

    fn set(v: &[(u32, &[u64])]) -> BTreeMap<u32, BTreeSet<u64>> {
        v.iter()
            .map(|(t, s)| (*t, s.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn ranges_and_gaps_on_one_timeline() {
        let a = set(&[(1, &[2, 3, 4, 6, 7, 10])]);
        let p = path(1, &[], &a, None, MB16);
        let r: Vec<(u64, u64)> = p
            .ranges
            .iter()
            .map(|r| (r.first_segno, r.last_segno))
            .collect();
        assert_eq!(r, [(2, 4), (6, 7), (10, 10)]);
        assert_eq!(p.gaps[0].missing, ["000000010000000000000005"]);
        assert_eq!(
            p.gaps[1].missing,
            ["000000010000000000000008", "000000010000000000000009"]
        );
        assert_eq!(p.ranges[0].first, "000000010000000000000002");
        // from a later start; and from a start not archived
        let p = path(1, &[], &a, Some(6), MB16);
        assert_eq!(p.ranges.len(), 2);
        let p = path(1, &[], &a, Some(0), MB16);
        assert_eq!(
            p.gaps[0].missing,
            ["000000010000000000000000", "000000010000000000000001"]
        );
        assert!(path(2, &[], &a, None, MB16).ranges.is_empty());
    }

    #[test]
    fn paths_follow_the_switch_point() {
        // timeline 2 began inside segment 5 of timeline 1: 1..=4 from
        // timeline 1, 5.. from timeline 2 (timeline 1's segment 5 and 6,
        // written after the switch by the old primary, are not on it)
        let h = parse_history(2, "1\t0/5000100\tx").unwrap();
        let a = set(&[(1, &[1, 2, 3, 4, 5, 6]), (2, &[5, 6, 7])]);
        let p = path(2, &h, &a, None, MB16);
        assert_eq!(p.ranges.len(), 1, "{p:?}");
        assert_eq!(p.ranges[0].first, "000000010000000000000001");
        assert_eq!(p.ranges[0].last, "000000020000000000000007");
        assert_eq!(timeline_for(2, &h, 4, MB16), 1);
        assert_eq!(timeline_for(2, &h, 5, MB16), 2);
        // timeline 2's copy of segment 5 missing: named on timeline 2
        let a = set(&[(1, &[1, 2, 3, 4, 5]), (2, &[6])]);
        let p = path(2, &h, &a, None, MB16);
        assert_eq!(p.gaps.len(), 1);
        assert_eq!(p.gaps[0].missing, ["000000020000000000000005"]);
        // timeline 1 alone keeps its own 5
        assert!(path(1, &[], &a, None, MB16).gaps.is_empty());
        assert!(descends_from(2, &h, 1, lsn("0/3000028")));
        assert!(descends_from(2, &h, 1, lsn("0/5000028")));
        assert!(!descends_from(2, &h, 1, lsn("0/5000200")));
        assert!(!descends_from(1, &[], 2, lsn("0/5000028")));
    }

    #[test]
    fn three_timelines_and_a_gap_listing_is_bounded() {
        let h = parse_history(3, "1\t0/2000000\ta\n2\t0/3000028\tb\n").unwrap();
        let a = set(&[(1, &[0, 1]), (2, &[2]), (3, &[3, 1000])]);
        let p = path(3, &h, &a, None, MB16);
        assert_eq!(p.ranges[0].first, "000000010000000000000000");
        assert_eq!(p.ranges[0].last, "000000030000000000000003");
        assert_eq!(p.gaps[0].count, 996);
        assert_eq!(p.gaps[0].missing.len(), MAX_NAMES_PER_GAP);
    }

    proptest! {
        /// Ranges and gaps tile the path exactly, in order.
        #[test]
        fn ranges_and_gaps_tile(segs in proptest::collection::btree_set(0u64..200, 1..60)) {
            let a: BTreeMap<u32, BTreeSet<u64>> = [(1u32, segs.clone())].into();
            let p = path(1, &[], &a, None, MB16);
            let covered: u64 = p.ranges.iter().map(|r| r.segments).sum();
            prop_assert_eq!(covered, segs.len() as u64);
            let missing: u64 = p.gaps.iter().map(|g| g.count).sum();
            prop_assert_eq!(covered + missing, segs.iter().max().unwrap() - segs.iter().min().unwrap() + 1);
            prop_assert_eq!(p.ranges.len(), p.gaps.len() + 1);
        }

        #[test]
        fn history_parse_never_panics(s in "\\PC{0,80}", tl in 0u32..5) {
            let _ = parse_history(tl, &s);
        }
    }
}
