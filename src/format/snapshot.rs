//! Snapshot objects: what was backed up, when, from where, and how to put
//! it back. Stored as a sealed box (Domain::Snapshot) of zstd-compressed
//! JSON; the JSON shape is documented in docs/FORMAT.md.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::codec;
use super::Id;
use crate::error::{Error, Result};

pub const VERSION: u32 = 1;
/// Decompressed snapshot documents larger than this are refused.
pub const MAX_PLAIN_LEN: usize = 1 << 30;

/// What kind of source produced a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Files,
    Stdin,
    Postgres,
    Bucket,
    Wal,
}

impl SourceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Stdin => "stdin",
            SourceKind::Postgres => "postgres",
            SourceKind::Bucket => "bucket",
            SourceKind::Wal => "wal",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
}

/// One file, directory or symlink (or the single stream of a stdin source).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path with `/` separators, no `..`, no leading `/`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub mtime_ns: i64,
    /// Change time and inode: used only to detect unchanged files.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ctime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    #[serde(default)]
    pub size: u64,
    /// SHA-256 of the whole content, checked end to end on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Id>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub kind: SourceKind,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of content read from (or referenced in) the source.
    pub bytes: u64,
    pub chunks: u64,
    pub chunks_new: u64,
    /// Stored (compressed, encrypted) bytes this backup added.
    pub bytes_stored_new: u64,
    pub files_unchanged: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: DateTime<Utc>,
    pub host: String,
    #[serde(default)]
    pub username: String,
    pub source: Source,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// What was asked for: paths given to `backup files`, the stdin name, …
    #[serde(default)]
    pub paths: Vec<String>,
    pub entries: Vec<Entry>,
    pub totals: Totals,
    /// When the backup started and how long it took.
    pub started: DateTime<Utc>,
    pub duration_s: f64,
    pub program_version: String,
    /// Free-form facts a source records (pg_dump version, row counts, …).
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Snapshot {
    /// Every chunk the snapshot needs, in entry order.
    pub fn chunk_ids(&self) -> impl Iterator<Item = &Id> {
        self.entries.iter().flat_map(|e| e.chunks.iter())
    }
    pub fn validate(&self) -> Result<()> {
        if self.version != VERSION {
            return Err(Error::format(
                "snapshot",
                format!("unsupported version {}", self.version),
            ));
        }
        for e in &self.entries {
            validate_path(&e.path)?;
        }
        Ok(())
    }
}

/// Refuse paths that could escape a restore target.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::format(
            "snapshot",
            format!("unsafe entry path {path:?}"),
        ));
    }
    Ok(())
}

pub fn encode_compressed(s: &Snapshot) -> Vec<u8> {
    codec::compress(&serde_json::to_vec(s).expect("snapshot serializes"), 3)
}

pub fn decode(plain: &[u8]) -> Result<Snapshot> {
    let s: Snapshot = serde_json::from_slice(plain).map_err(|e| Error::format("snapshot", e))?;
    s.validate()?;
    Ok(s)
}

pub fn decode_compressed(data: &[u8]) -> Result<Snapshot> {
    decode(&codec::decompress(data, MAX_PLAIN_LEN, "snapshot")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_path_safety() {
        let t = Utc::now();
        let s = Snapshot {
            version: VERSION,
            time: t,
            host: "h".into(),
            username: "u".into(),
            source: Source {
                kind: SourceKind::Files,
                name: "config".into(),
            },
            tags: vec!["nightly".into()],
            parent: None,
            paths: vec!["/etc".into()],
            entries: vec![Entry {
                path: "etc/hosts".into(),
                kind: EntryType::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 1,
                ctime_ns: 2,
                inode: 3,
                size: 4,
                sha256: Some(Id([1; 32])),
                chunks: vec![Id([2; 32])],
                target: None,
            }],
            totals: Totals::default(),
            started: t,
            duration_s: 1.5,
            program_version: "x".into(),
            metadata: BTreeMap::new(),
        };
        assert_eq!(decode_compressed(&encode_compressed(&s)).unwrap(), s);
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a/.."] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        validate_path("a/b c/ñ.txt").unwrap();
    }
}
