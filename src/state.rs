//! Local state of `backup --all`, one pair of files per repository in the
//! state directory (`USDCOP_DR_STATE_DIR`, else systemd's `STATE_DIRECTORY`,
//! else `/var/lib/usdcop-dr`):
//!
//! - `runs-<key>.json`: each source's last run (start, result, error,
//!   bytes). `status` and the metrics need it for a run that failed and
//!   wrote no snapshot, and to show the last success when the repository
//!   cannot be reached. Snapshots in the repository stay the truth for
//!   "last success"; this file only fills in what the repository cannot say.
//! - `backup-all-<key>.lock`: a `flock(2)` held for the whole run, so a
//!   second `backup --all` of the same repository does not start. The
//!   kernel releases it when the process ends, however it ends: no stale
//!   lock to clean up.
//!
//! `<key>` is the first 16 hex digits of SHA-256 of the repository as
//! given (`--repo` or `[repository] url`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const ENV_VAR: &str = "USDCOP_DR_STATE_DIR";
pub const DEFAULT_DIR: &str = "/var/lib/usdcop-dr";
const VERSION: u32 = 1;

/// The state directory this process uses.
pub fn dir() -> PathBuf {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(|v| PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or("")))
            .filter(|p| !p.as_os_str().is_empty())
    };
    from(ENV_VAR)
        .or_else(|| from("STATE_DIRECTORY"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// The last runs of every source of one repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    pub version: u32,
    pub repository: String,
    pub sources: BTreeMap<String, LastRun>,
    /// The last `prune` (or `forget`) that was not a dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<LastPrune>,
}

/// The last prune's result (metrics, `status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastPrune {
    pub started: DateTime<Utc>,
    pub success: bool,
    pub duration_s: f64,
    pub snapshots_removed: u64,
    /// Bytes of packs deleted.
    pub bytes_freed: u64,
    /// Bytes of packs condemned (freed by a later run).
    pub bytes_condemned: u64,
    pub error: Option<String>,
}

/// One source's last `backup --all` (or `backup --source`) run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastRun {
    pub started: DateTime<Utc>,
    pub success: bool,
    pub duration_s: f64,
    /// The snapshot it wrote, if it wrote one.
    pub snapshot_id: Option<String>,
    pub bytes_read: u64,
    pub bytes_stored_new: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// Time of the source's newest snapshot as far as this host knows
    /// (kept across failed runs).
    pub last_success: Option<DateTime<Utc>>,
}

/// Where one repository's state lives.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    key: String,
    repository: String,
}

/// A second run is going on; what its lock file says about it.
#[derive(Debug)]
pub struct Busy {
    pub holder: String,
    pub lock_file: PathBuf,
}

/// Held while `backup --all` runs; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>, repository: &str) -> StateStore {
        let digest = Sha256::digest(repository.as_bytes());
        StateStore {
            dir: dir.into(),
            key: hex::encode(&digest[..8]),
            repository: repository.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn runs_path(&self) -> PathBuf {
        self.dir.join(format!("runs-{}.json", self.key))
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("backup-all-{}.lock", self.key))
    }

    fn ensure_dir(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&self.dir)
            .map_err(|e| {
                Error::usage(format!(
                    "cannot create the state directory {}: {e}",
                    self.dir.display()
                ))
                .with_hint(format!(
                    "create it for the backup user (install -d -o USER -m 0750 {}), or set {ENV_VAR}",
                    self.dir.display()
                ))
            })
    }

    /// The recorded runs; none when the file does not exist yet.
    pub fn load(&self) -> Result<RunState> {
        let path = self.runs_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RunState {
                    version: VERSION,
                    repository: self.repository.clone(),
                    sources: BTreeMap::new(),
                    last_prune: None,
                })
            }
            Err(e) => return Err(Error::io(format!("cannot read {}: {e}", path.display()))),
        };
        let state: RunState = serde_json::from_str(&text).map_err(|e| {
            Error::io(format!("{} is not a run state file: {e}", path.display()))
                .with_hint("remove it: the next backup --all writes a new one")
        })?;
        Ok(state)
    }

    pub fn save(&self, state: &RunState) -> Result<()> {
        self.ensure_dir()?;
        let mut state = state.clone();
        state.version = VERSION;
        state.repository = self.repository.clone();
        let mut text = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::io(format!("encoding the run state: {e}")))?;
        text.push(b'\n');
        crate::metrics::write_atomic(&self.runs_path(), &text, 0o640)
    }

    /// Take the run lock, or say who holds it.
    pub fn try_lock(&self) -> Result<std::result::Result<RunLock, Busy>> {
        self.ensure_dir()?;
        let path = self.lock_path();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open the lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.set_len(0);
                let _ = file.rewind();
                let _ = writeln!(
                    file,
                    "pid {} since {}",
                    std::process::id(),
                    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                Ok(Ok(RunLock { _file: file }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Ok(Err(Busy {
                    holder: holder.trim().to_owned(),
                    lock_file: path,
                }))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("cannot lock {}: {e}", path.display())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_a_second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"), "s3://b/p");
        let mut state = store.load().unwrap();
        assert!(state.sources.is_empty());
        state.sources.insert(
            "pg".into(),
            LastRun {
                started: Utc::now(),
                success: false,
                duration_s: 1.5,
                snapshot_id: None,
                bytes_read: 0,
                bytes_stored_new: 0,
                error: Some("refused".into()),
                last_success: None,
            },
        );
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        // Another repository has its own files.
        let other = StateStore::new(dir.path().join("state"), "/srv/repo");
        assert_ne!(other.runs_path(), store.runs_path());
        assert!(other.load().unwrap().sources.is_empty());

        let held = store.try_lock().unwrap().expect("first lock");
        let busy = store.try_lock().unwrap().expect_err("second lock refused");
        assert!(
            busy.holder
                .starts_with(&format!("pid {} since ", std::process::id())),
            "{busy:?}"
        );
        assert!(other.try_lock().unwrap().is_ok(), "other repository: free");
        drop(held);
        assert!(store.try_lock().unwrap().is_ok(), "released on drop");
    }
}
