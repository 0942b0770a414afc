//! Which archived WAL files prune may delete (docs/FORMAT.md §14, "WAL
//! retention"). Pure: object names and the kept base backups in, the
//! names to delete out.
//!
//! Replay from a base backup starts at its `start_lsn` and only moves
//! forward, on its timeline and the timelines after it. So a segment
//! older (by number, on any timeline) than the start of the *oldest kept*
//! base backup is needed by no kept base backup, and neither is a `.backup`
//! file of such a segment. `.history` files are kept (tiny, and recovery
//! reads every one of them to pick a timeline); so is `wal/system-id`.
//! With no base backup kept, nothing is deleted: the WAL may be all a
//! restore has (and a base backup may be on its way).

use serde::Serialize;

use crate::format::basebackup::BaseBackupInfo;
use crate::format::wal::{segment_number, DIR};

/// What WAL retention decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalExpiry {
    /// The first segment kept (of the oldest kept base backup), if any.
    pub keep_from: Option<String>,
    /// Objects to delete, in name order.
    pub delete: Vec<String>,
}

/// The objects of `names` (full object names under `wal/`) that no base
/// backup of `kept` needs.
pub fn expire(names: &[String], kept: &[BaseBackupInfo]) -> WalExpiry {
    let Some(oldest) = kept.iter().min_by_key(|b| b.start_lsn) else {
        return WalExpiry::default();
    };
    let seg = oldest.segment_size;
    let first = oldest.start_lsn.segment(seg);
    let mut delete: Vec<String> = names
        .iter()
        .filter(|object| {
            let Some(rest) = object.strip_prefix(DIR) else {
                return false;
            };
            // wal/<timeline>/<file>-<hash>
            let Some((_, file_hash)) = rest.split_once('/') else {
                return false;
            };
            let Some((file, _hash)) = file_hash.rsplit_once('-') else {
                return false;
            };
            let segment = match (file.strip_suffix(".backup"), file.strip_suffix(".partial")) {
                (Some(b), _) => b.get(..24).unwrap_or(""),
                (_, Some(p)) => p,
                _ => file,
            };
            matches!(segment_number(segment, seg), Some((_, n)) if n < first)
        })
        .cloned()
        .collect();
    delete.sort();
    WalExpiry {
        keep_from: Some(oldest.start_segment.clone()),
        delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::wal::{segment_name, Lsn};

    fn base(start_seg: u64, tl: u32) -> BaseBackupInfo {
        let seg = 16u32 << 20;
        BaseBackupInfo {
            start_lsn: Lsn(start_seg * seg as u64 + 0x28),
            stop_lsn: Lsn(start_seg * seg as u64 + 0x1000),
            timeline: tl,
            stop_timeline: tl,
            system_identifier: "1".into(),
            pg_version: "15".into(),
            segment_size: seg,
            start_segment: segment_name(tl, start_seg, seg),
            stop_segment: segment_name(tl, start_seg, seg),
            start_time: chrono::Utc::now(),
            stop_time: chrono::Utc::now(),
            label: String::new(),
        }
    }

    fn obj(tl: u32, file: &str) -> String {
        format!("wal/{tl:08X}/{file}-{}", "ab".repeat(32))
    }

    #[test]
    fn keeps_from_the_oldest_kept_base_backup() {
        let seg = 16u32 << 20;
        let mut names: Vec<String> = (1..=10).map(|n| obj(1, &segment_name(1, n, seg))).collect();
        names.push(obj(2, &segment_name(2, 3, seg))); // an old branch
        names.push(obj(2, &segment_name(2, 8, seg)));
        names.push(obj(2, "00000002.history"));
        names.push(obj(
            1,
            &format!("{}.00000028.backup", segment_name(1, 4, seg)),
        ));
        names.push(obj(
            1,
            &format!("{}.00000028.backup", segment_name(1, 6, seg)),
        ));
        names.push(obj(1, &format!("{}.partial", segment_name(1, 2, seg))));
        names.push(obj(1, &format!("{}.partial", segment_name(1, 9, seg))));
        names.push("wal/system-id".into());
        // No base backup kept: nothing goes.
        assert_eq!(expire(&names, &[]), WalExpiry::default());
        let e = expire(&names, &[base(7, 1), base(6, 1)]);
        assert_eq!(e.keep_from.as_deref(), Some("000000010000000000000006"));
        let mut want: Vec<String> = (1..=5).map(|n| obj(1, &segment_name(1, n, seg))).collect();
        want.push(obj(2, &segment_name(2, 3, seg)));
        want.push(obj(
            1,
            &format!("{}.00000028.backup", segment_name(1, 4, seg)),
        ));
        want.push(obj(1, &format!("{}.partial", segment_name(1, 2, seg))));
        want.sort();
        assert_eq!(e.delete, want);
        // Foreign names are never touched.
        let e = expire(
            &[
                "wal/x".into(),
                "data/ab/cd".into(),
                "wal/00000001/junk".into(),
            ],
            &[base(7, 1)],
        );
        assert!(e.delete.is_empty());
    }
}
