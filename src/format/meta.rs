//! The small JSON objects: repository config, key objects, lock objects.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::KdfParams;
use crate::error::{Error, Result};

pub const FORMAT_VERSION: u32 = 2;

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
}

pub fn decode_json<T: for<'de> Deserialize<'de>>(what: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::format(what, e))
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
