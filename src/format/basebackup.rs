//! Physical base backups (docs/FORMAT.md, "Base backups"). Pure: what a
//! base backup snapshot records in its metadata, and the parsers for the
//! two files of PostgreSQL's that say where the backup starts and ends
//! (`backup_label`, and the `WAL-Ranges` of `backup_manifest`).
//!
//! A base backup is a snapshot of kind `wal` (the start of a PITR chain:
//! the base backup plus the WAL archived after it), whose entries are the
//! files of the data directory and whose metadata key
//! [`METADATA_KEY`] holds a [`BaseBackupInfo`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::wal::{segment_name, Lsn};
use crate::error::{Error, Result};

/// The snapshot metadata key of a [`BaseBackupInfo`].
pub const METADATA_KEY: &str = "postgres_base";

/// What a restore needs to know about a base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBackupInfo {
    /// The checkpoint's redo location: replay starts here.
    pub start_lsn: Lsn,
    /// Replay must reach this location for the cluster to be consistent.
    pub stop_lsn: Lsn,
    pub timeline: u32,
    /// The timeline `stop_lsn` is on (the same unless the server was
    /// promoted during the backup).
    pub stop_timeline: u32,
    /// Decimal, as `pg_controldata` prints it.
    pub system_identifier: String,
    /// The server's major version (its `PG_VERSION` file).
    pub pg_version: String,
    pub segment_size: u32,
    /// The first and the last WAL segment the backup needs.
    pub start_segment: String,
    pub stop_segment: String,
    /// When the backup started (`backup_label`) and when it was known to
    /// be complete: a recovery target earlier than `stop_time` cannot be
    /// reached from this backup.
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    #[serde(default)]
    pub label: String,
}

impl BaseBackupInfo {
    pub fn from_metadata(
        metadata: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Result<Option<BaseBackupInfo>> {
        match metadata.get(METADATA_KEY) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                Error::format("snapshot", format!("bad {METADATA_KEY} metadata: {e}"))
            }),
        }
    }
}

/// The facts of a `backup_label` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: Lsn,
    pub start_segment: String,
    pub checkpoint_lsn: Lsn,
    pub timeline: u32,
    pub start_time: Option<DateTime<Utc>>,
    pub label: String,
}

/// Parse a `backup_label` file:
/// ```text
/// START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
/// CHECKPOINT LOCATION: 0/2000060
/// BACKUP METHOD: streamed
/// BACKUP FROM: primary
/// START TIME: 2026-12-03 07:40:00 UTC
/// LABEL: usdcop-dr
/// START TIMELINE: 1
/// ```
pub fn parse_backup_label(text: &str) -> Result<BackupLabel> {
    let bad = |why: String| Error::format("backup_label", why);
    let field = |key: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim()))
    };
    let start = field("START WAL LOCATION:").ok_or_else(|| bad("no START WAL LOCATION".into()))?;
    let (lsn, rest) = start
        .split_once(' ')
        .ok_or_else(|| bad(format!("bad START WAL LOCATION {start:?}")))?;
    let start_lsn = Lsn::parse(lsn)?;
    let start_segment = rest
        .trim()
        .strip_prefix("(file ")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(format!("bad START WAL LOCATION {start:?}")))?
        .to_owned();
    let checkpoint_lsn = Lsn::parse(
        field("CHECKPOINT LOCATION:").ok_or_else(|| bad("no CHECKPOINT LOCATION".into()))?,
    )?;
    let timeline = match field("START TIMELINE:") {
        Some(t) => t
            .parse()
            .map_err(|_| bad(format!("bad START TIMELINE {t:?}")))?,
        None => u32::from_str_radix(start_segment.get(..8).unwrap_or(""), 16)
            .map_err(|_| bad(format!("bad start segment {start_segment:?}")))?,
    };
    let start_time = field("START TIME:").and_then(parse_pg_time);
    Ok(BackupLabel {
        start_lsn,
        start_segment,
        checkpoint_lsn,
        timeline,
        start_time,
        label: field("LABEL:").unwrap_or("").to_owned(),
    })
}

/// `2026-12-03 07:40:00 UTC` (or another zone abbreviation PostgreSQL
/// printed: only UTC and numeric offsets are understood).
fn parse_pg_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Some(t) = s.strip_suffix(" UTC").or_else(|| s.strip_suffix(" GMT")) {
        return chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
            .ok()
            .map(|n| n.and_utc());
    }
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z")
        .or_else(|_| DateTime::parse_from_str(&format!("{s}00"), "%Y-%m-%d %H:%M:%S %z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One `WAL-Ranges` item of a backup manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// The `WAL-Ranges` of a backup manifest, read from its tail (the ranges
/// come last, before the manifest's checksum): `tail` is the last bytes of
/// the manifest, enough to hold the ranges.
pub fn parse_manifest_wal_ranges(tail: &[u8]) -> Result<Vec<WalRange>> {
    let bad = |why: &str| Error::format("backup_manifest", why.to_owned());
    let text = String::from_utf8_lossy(tail);
    let at = text
        .rfind("\"WAL-Ranges\"")
        .ok_or_else(|| bad("no WAL-Ranges in the manifest's tail"))?;
    let rest = &text[at..];
    let open = rest.find('[').ok_or_else(|| bad("bad WAL-Ranges"))?;
    let close = rest.find(']').ok_or_else(|| bad("bad WAL-Ranges"))?;
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "Start-LSN")]
        start: String,
        #[serde(rename = "End-LSN")]
        end: String,
    }
    let raw: Vec<Raw> = serde_json::from_str(&rest[open..=close])
        .map_err(|e| bad(&format!("bad WAL-Ranges: {e}")))?;
    if raw.is_empty() {
        return Err(bad("empty WAL-Ranges"));
    }
    raw.into_iter()
        .map(|r| {
            Ok(WalRange {
                timeline: r.timeline,
                start: Lsn::parse(&r.start)?,
                end: Lsn::parse(&r.end)?,
            })
        })
        .collect()
}

/// The segment holding the last byte before `end` (the end location of a
/// backup's WAL is exclusive: a backup ending exactly at a segment
/// boundary needs nothing of the next segment).
pub fn stop_segment(timeline: u32, end: Lsn, seg_size: u32) -> String {
    segment_name(
        timeline,
        end.0.saturating_sub(1) / seg_size as u64,
        seg_size,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
START TIME: 2026-12-03 07:40:00 UTC\nLABEL: usdcop-dr base backup\nSTART TIMELINE: 1\n";

    #[test]
    fn backup_label() {
        let l = parse_backup_label(LABEL).unwrap();
        assert_eq!(l.start_lsn, Lsn(0x200_0028));
        assert_eq!(l.start_segment, "000000010000000000000002");
        assert_eq!(l.checkpoint_lsn, Lsn(0x200_0060));
        assert_eq!(l.timeline, 1);
        assert_eq!(
            l.start_time.unwrap().to_rfc3339(),
            "2026-12-03T07:40:00+00:00"
        );
        assert_eq!(l.label, "usdcop-dr base backup");
        let bogota = LABEL.replace("07:40:00 UTC", "02:40:00 -05");
        assert_eq!(
            parse_backup_label(&bogota).unwrap().start_time.unwrap(),
            l.start_time.unwrap()
        );
        for bad in [
            "",
            "START WAL LOCATION: 0/2000028\nCHECKPOINT LOCATION: 0/1\n",
            "START WAL LOCATION: x (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/1\n",
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
        ] {
            assert!(parse_backup_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manifest_ranges() {
        let tail = br#"{ "Path": "global/pg_control", "Size": 8192 } ],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "4a7f"}
"#;
        let r = parse_manifest_wal_ranges(tail).unwrap();
        assert_eq!(
            r,
            vec![WalRange {
                timeline: 1,
                start: Lsn(0x200_0028),
                end: Lsn(0x200_0100)
            }]
        );
        assert!(parse_manifest_wal_ranges(b"{\"Files\": []}").is_err());
        assert!(parse_manifest_wal_ranges(b"\"WAL-Ranges\": []").is_err());
        assert!(parse_manifest_wal_ranges(b"\"WAL-Ranges\": [ {\"Timeline\": 1").is_err());
    }

    #[test]
    fn stop_segment_is_exclusive() {
        let mb16 = 16 << 20;
        assert_eq!(
            stop_segment(1, Lsn(0x200_0100), mb16),
            "000000010000000000000002"
        );
        assert_eq!(
            stop_segment(1, Lsn(0x300_0000), mb16),
            "000000010000000000000002"
        );
        assert_eq!(
            stop_segment(1, Lsn(0x300_0001), mb16),
            "000000010000000000000003"
        );
    }

    #[test]
    fn metadata_round_trip() {
        let info = BaseBackupInfo {
            start_lsn: Lsn(0x200_0028),
            stop_lsn: Lsn(0x200_0100),
            timeline: 1,
            stop_timeline: 1,
            system_identifier: "7312345678901234567".into(),
            pg_version: "15".into(),
            segment_size: 16 << 20,
            start_segment: "000000010000000000000002".into(),
            stop_segment: "000000010000000000000002".into(),
            start_time: Utc::now(),
            stop_time: Utc::now(),
            label: "x".into(),
        };
        let mut m = std::collections::BTreeMap::new();
        assert_eq!(BaseBackupInfo::from_metadata(&m).unwrap(), None);
        m.insert(
            METADATA_KEY.to_owned(),
            serde_json::to_value(&info).unwrap(),
        );
        assert_eq!(m[METADATA_KEY]["start_lsn"], "0/2000028");
        assert_eq!(BaseBackupInfo::from_metadata(&m).unwrap(), Some(info));
    }
}
