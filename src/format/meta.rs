//! The small JSON objects: repository config, key objects, lock objects.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::KdfParams;
use crate::error::{Error, Result};

pub const FORMAT_VERSION: u32 = 2;

/// Features a writer must implement to write into a repository, all of
/// which this binary implements. A new repository's config lists them
/// (`write_features`); a binary that finds one it does not know there
/// refuses to write (docs/FORMAT.md, "The writer gate").
/// - `lock-lease`: a writer stops, and writes no snapshot, once its last
///   stored lock copy is older than TTL − TTL/3.
/// - `store-time-locks`: locks record their TTL (`ttl_s`) and are judged
///   by the store's timestamps, not by the writer's clock; unfinished
///   uploads are aborted by a store-clock cut-off.
/// - `lock-identity`: a lock records the holder's boot id, pid namespace
///   and process start time; pid liveness is used only when all match.
/// - `prune-v1`: a writer stores its lock (with a `holder` id that stays
///   the same across refreshes) before it reads `condemned/`, then the
///   index; it never deduplicates against, indexes or compacts a condemned
///   pack (docs/FORMAT.md §12, "Prune").
pub const WRITE_FEATURES: &[&str] = &[
    "lock-lease",
    "store-time-locks",
    "lock-identity",
    "prune-v1",
];

/// Features a reader must implement to read a repository; all known here.
/// None yet: format 1 is read by every binary that knows the version.
pub const READ_FEATURES: &[&str] = &[];

/// This binary's version, recorded as `min_writer_version` of new
/// repositories and compared with it when writing.
pub const WRITER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Content-defined chunking parameters (FastCDC 2020, normalization level 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub algorithm: ChunkerAlgorithm,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// Secret per-repository value XORed into the gear table, so chunk
    /// boundaries (and so pack sizes) do not fingerprint known content.
    pub seed: u64,
}

/// The only chunking algorithm of format v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkerAlgorithm {
    #[serde(rename = "fastcdc-2020")]
    FastCdc2020,
}

impl ChunkerParams {
    pub fn with_avg(avg_size: u32, seed: u64) -> Result<Self> {
        let p = ChunkerParams {
            algorithm: ChunkerAlgorithm::FastCdc2020,
            min_size: avg_size / 4,
            avg_size,
            max_size: avg_size * 4,
            seed,
        };
        p.check()?;
        Ok(p)
    }

    pub fn check(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.avg_size.is_power_of_two();
        if ok {
            Ok(())
        } else {
            Err(Error::usage(format!(
                "chunk sizes min {} / avg {} / max {} are invalid: avg must be a power of two between {AVERAGE_MIN} and {AVERAGE_MAX}",
                self.min_size, self.avg_size, self.max_size
            )))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    /// Random repository id (hex), shown by `stats` and recorded in reports.
    pub id: String,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u32,
    /// Features every writer must implement ([`WRITE_FEATURES`]): a binary
    /// that does not know one of them refuses to write here.
    #[serde(default)]
    pub write_features: Vec<String>,
    /// Features every reader must implement ([`READ_FEATURES`]): a binary
    /// that does not know one of them refuses to open the repository.
    #[serde(default)]
    pub read_features: Vec<String>,
    /// The oldest usdcop-dr version that may write here (semver): named in
    /// the refusal, and an older binary refuses to write even when it
    /// knows every listed feature.
    #[serde(default)]
    pub min_writer_version: String,
}

impl Config {
    pub fn check(&self) -> Result<()> {
        if self.version == 1 {
            return Err(Error::usage(
                "this repository is format v1, created by an older usdcop-dr; this version reads format 2: init a new repository and back up again",
            ));
        }
        if self.version != FORMAT_VERSION {
            return Err(Error::usage(format!(
                "repository format version {} is not supported by this usdcop-dr (supports {FORMAT_VERSION})",
                self.version
            ))
            .with_hint("upgrade usdcop-dr"));
        }
        self.chunker.check()?;
        let unknown = unknown(&self.read_features, READ_FEATURES);
        if !unknown.is_empty() {
            return Err(Error::usage(format!(
                "this repository needs read features that usdcop-dr {WRITER_VERSION} does not \
                 know: {}; it refuses to read it",
                unknown.join(", ")
            ))
            .with_hint(self.upgrade_hint(false)));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_size)
            || !(-7..=22).contains(&self.compression_level)
        {
            return Err(Error::format(
                "config",
                "pack size or compression level out of range",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The gate every writer passes before writing anything (backup,
    /// repair, recovery, new keys, prune): the binary must know every
    /// feature in `write_features` and be at least `min_writer_version`.
    /// A usage error (exit 2) naming what is missing otherwise.
    pub fn check_writable(&self) -> Result<()> {
        self.check_writable_by(WRITE_FEATURES, WRITER_VERSION)
    }

    /// [`Self::check_writable`] for a writer that knows `known` and is
    /// version `version` (an older binary, in tests).
    pub fn check_writable_by(&self, known: &[&str], version: &str) -> Result<()> {
        let unknown = unknown(&self.write_features, known);
        if !unknown.is_empty() {
            return Err(Error::usage(format!(
                "this repository needs write features that usdcop-dr {version} does not \
                 know: {}; it refuses to write to it",
                unknown.join(", ")
            ))
            .with_hint(self.upgrade_hint(true)));
        }
        if let Some(min) = self.min_writer()? {
            let ours = semver::Version::parse(version)
                .map_err(|e| Error::usage(format!("writer version {version:?}: {e}")))?;
            if ours < min {
                return Err(Error::usage(format!(
                    "this repository may only be written by usdcop-dr {min} or later; \
                     this is {version}, which refuses to write to it"
                ))
                .with_hint(self.upgrade_hint(true)));
            }
        }
        Ok(())
    }

    fn min_writer(&self) -> Result<Option<semver::Version>> {
        if self.min_writer_version.is_empty() {
            return Ok(None);
        }
        semver::Version::parse(&self.min_writer_version)
            .map(Some)
            .map_err(|e| {
                Error::format(
                    "config",
                    format!("min_writer_version {:?}: {e}", self.min_writer_version),
                )
            })
    }

    /// "upgrade usdcop-dr to ≥ X" (X: `min_writer_version`, when recorded).
    fn upgrade_hint(&self, writing: bool) -> String {
        let to = match self.min_writer_version.as_str() {
            "" => "a version that knows these features".to_owned(),
            v => format!("≥ {v}"),
        };
        let reading = if writing {
            "; reading (`snapshots`, `restore`, `verify`) still works with this version"
        } else {
            ""
        };
        format!("upgrade usdcop-dr to {to}{reading}")
    }
}

/// Entries of `listed` not in `known`, in their listed order.
fn unknown<'a>(listed: &'a [String], known: &[&str]) -> Vec<&'a str> {
    listed
        .iter()
        .map(String::as_str)
        .filter(|f| !known.contains(f))
        .collect()
}

/// A key object: the master key sealed with a passphrase-derived key.
/// Stored in plaintext JSON (only `sealed_master_key` is secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    pub created: DateTime<Utc>,
    pub host: String,
    pub kdf: String,
    pub kdf_params: KdfParams,
    /// hex
    pub salt: String,
    /// hex of the sealed box (Domain::MasterKey) holding the 32-byte master key
    pub sealed_master_key: String,
}

/// Lock kinds. Backups take shared locks; a future prune reads them to know
/// which backups may still reference data it wants to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Backup,
    Prune,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub version: u32,
    pub kind: LockKind,
    pub host: String,
    pub pid: u32,
    /// When the operation holding the lock started (stays the same across refreshes).
    pub started: DateTime<Utc>,
    /// The lock means nothing after this instant: a crashed holder's lock
    /// expires by itself, nobody has to remove it.
    pub expires: DateTime<Utc>,
    /// Random, so that two refreshes in one second are distinct objects.
    pub nonce: String,
    /// Random, chosen when the lock is first taken and the same in every
    /// refresh: identifies the holder across its lock copies (prune
    /// records which holders were live when it condemned packs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// How long this copy stays valid after the store wrote it (seconds).
    /// A judge compares the lock object's store timestamp plus this with
    /// the store's "now", so that no two hosts' clocks are ever compared;
    /// `expires` (the writer's clock) is the fallback for stores that give
    /// no timestamps (docs/FORMAT.md, "Locks").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// The holding process, comparable only within one pid namespace on
    /// one boot: with `host` and `pid`, lets a judge on the same host and
    /// in the same namespace tell a dead holder from a live one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
}

/// Who holds a lock, precisely enough to check on the same machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// `/proc/sys/kernel/random/boot_id`: changes at every boot.
    pub boot_id: String,
    /// The pid namespace (`readlink /proc/self/ns/pid`, e.g.
    /// `pid:[4026531836]`): pids are only comparable within one.
    pub pid_ns: String,
    /// The process's start time (clock ticks after boot, field 22 of
    /// `/proc/<pid>/stat`): a reused pid has another.
    pub start_time: u64,
}

pub fn decode_json<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::format(what, e))
}

impl Lock {
    /// Who holds this lock, the same in all its copies: `holder`, or (for
    /// a lock written without one) host, pid and start together.
    pub fn holder_key(&self) -> String {
        match &self.holder {
            Some(h) => h.clone(),
            None => format!("{}/{}/{}", self.host, self.pid, self.started.to_rfc3339()),
        }
    }
}

#[cfg(test)]
mod format_version_tests {
    use super::*;

    #[test]
    fn a_format_1_repository_is_refused_with_what_to_do() {
        let mut c = Config {
            version: FORMAT_VERSION,
            id: "x".into(),
            created: Utc::now(),
            chunker: ChunkerParams::with_avg(1 << 20, 1).unwrap(),
            compression_level: 3,
            pack_size: 32 << 20,
            write_features: vec![],
            read_features: vec![],
            min_writer_version: String::new(),
        };
        c.check().unwrap();
        c.version = 1;
        let e = c.check().unwrap_err().to_string();
        assert!(
            e.contains("format v1") && e.contains("init a new repository and back up again"),
            "{e}"
        );
        c.version = 3;
        assert!(c.check().is_err());
    }
}
