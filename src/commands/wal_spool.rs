//! The WAL archive's local files in the state directory (docs/FORMAT.md
//! §13, "Local spools"; docs/OPERATIONS.md, "Archive lag"):
//!
//! - `wal-spool/push-<key>/`, key = the repository URL and the cluster's
//!   `pg_wal` directory: the background pusher's `pusher.lock` (a
//!   `flock(2)`: one pusher at a time, released by the kernel however it
//!   ends), its `pusher.log`, `ok/<file>.json` (a [`PushRecord`]: this file
//!   with this SHA-256 is durable in the store) and `error/<file>.json`
//!   (a [`PushFailure`]; `error/_pusher.json` when the pusher could not
//!   start).
//! - `wal-spool/fetch-<key>/`, key = the repository URL: files `wal-fetch`
//!   prefetched, each `<file>` with its [`FetchRecord`] `<file>.json`.
//! - `wal-<key>.json`, key = the repository URL as in `runs-<key>.json`:
//!   the archive lag ([`WalLag`]) that `status` and the metrics show.
//!
//! A record is a claim about the store that only this user wrote; it is
//! believed only for the same file name, the same content hash (the file
//! is hashed again), the same cluster (system identifier of the segment)
//! and the same repository (the id of the repository last opened under
//! this URL, from the WAL key cache file).

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::wal::Prepared;
use crate::error::{Error, ErrorKind, Result};
use crate::format::wal::{WalKind, WalName};
use crate::format::Id;

/// Folder of the spools in the state directory.
pub const SPOOL_DIR: &str = "wal-spool";
const VERSION: u32 = 1;
/// Name of the error record of a pusher that failed before any file.
const PUSHER_ERROR: &str = "_pusher";
/// A prefetched file older than this is never served (a restore that
/// stopped and started again much later fetches anew).
pub const FETCH_MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(6);

/// First 16 hex digits of SHA-256 of `parts` joined by NUL bytes.
fn key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p);
    }
    hex::encode(h.finalize())[..16].to_owned()
}

fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).expect("serializable");
    text.push(b'\n');
    crate::metrics::write_atomic(path, &text, 0o600)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

fn names_in(dir: &Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(suffix))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---- the push spool ---------------------------------------------------------

/// "This file, with this content, is durable in the store."
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushRecord {
    pub version: u32,
    pub repository_id: String,
    /// The cluster's, as a decimal string.
    pub system_identifier: String,
    pub file: String,
    /// SHA-256 of the file's content, hex.
    pub sha256: String,
    /// The object holding it (`wal/<timeline>/<file>-<sha256>`).
    pub object: String,
    pub stored_bytes: u64,
    pub pushed: DateTime<Utc>,
}

impl PushRecord {
    /// Whether this record proves that `file` (as read now) is archived in
    /// the repository `repository_id`.
    pub fn proves(&self, file: &Prepared, repository_id: &str) -> bool {
        self.version == VERSION
            && self.file == file.name.name
            && self.repository_id == repository_id
            && self.sha256 == file.hash.to_hex()
            && file.name.hash_of(&self.object) == Some(file.hash)
            && file
                .segment_system_id
                .is_none_or(|id| self.system_identifier == id.to_string())
    }
}

/// A push that failed in the background pusher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushFailure {
    /// `None`: the pusher failed before any file (opening the repository).
    pub file: Option<String>,
    pub time: DateTime<Utc>,
    pub exit_code: i32,
    pub message: String,
    pub hint: Option<String>,
}

impl PushFailure {
    pub fn new(file: Option<&str>, e: &Error, time: DateTime<Utc>) -> PushFailure {
        PushFailure {
            file: file.map(str::to_owned),
            time,
            exit_code: e.exit_code(),
            message: e.to_string(),
            hint: e.hint().map(str::to_owned),
        }
    }

    /// The error again, with its kind (by exit code) and hint.
    pub fn to_error(&self) -> Error {
        let kind = match self.exit_code {
            2 => ErrorKind::Usage,
            3 => ErrorKind::Integrity,
            _ => ErrorKind::Io,
        };
        let e = Error::new(
            kind,
            format!(
                "background pusher: {} ({})",
                self.message,
                self.time.to_rfc3339()
            ),
        );
        match &self.hint {
            Some(h) => e.with_hint(h.clone()),
            None => e,
        }
    }
}

/// One cluster's push spool for one repository.
#[derive(Debug, Clone)]
pub struct PushSpool {
    dir: PathBuf,
}

impl PushSpool {
    pub fn new(state_dir: &Path, repository: &str, pg_wal: &Path) -> PushSpool {
        let k = key(&[repository.as_bytes(), pg_wal.as_os_str().as_encoded_bytes()]);
        PushSpool {
            dir: state_dir.join(SPOOL_DIR).join(format!("push-{k}")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn create(&self) -> Result<()> {
        ensure_dir(&self.dir.join("ok"))?;
        ensure_dir(&self.dir.join("error"))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pusher.log")
    }

    fn ok_path(&self, file: &str) -> PathBuf {
        self.dir.join("ok").join(format!("{file}.json"))
    }

    fn error_path(&self, file: Option<&str>) -> PathBuf {
        self.dir
            .join("error")
            .join(format!("{}.json", file.unwrap_or(PUSHER_ERROR)))
    }

    pub fn record(&self, file: &str) -> Option<PushRecord> {
        read_json(&self.ok_path(file))
    }

    pub fn write_record(&self, r: &PushRecord) -> Result<()> {
        write_json(&self.ok_path(&r.file), r)
    }

    pub fn remove_record(&self, file: &str) {
        remove(&self.ok_path(file));
    }

    /// File names with an ok record.
    pub fn recorded(&self) -> HashSet<String> {
        names_in(&self.dir.join("ok"), ".json")
            .into_iter()
            .collect()
    }

    /// Remove the records of files PostgreSQL no longer waits for (not
    /// in `keep`), and those of another repository.
    pub fn prune(&self, keep: &HashSet<String>, repository_id: &str) {
        for f in self.recorded() {
            let foreign = self
                .record(&f)
                .is_none_or(|r| r.repository_id != repository_id);
            if foreign || !keep.contains(&f) {
                self.remove_record(&f);
            }
        }
    }

    /// The failure recorded for `file` (`None`: the pusher's own).
    pub fn failure(&self, file: Option<&str>) -> Option<PushFailure> {
        read_json(&self.error_path(file))
    }

    pub fn write_failure(&self, f: &PushFailure) {
        if let Err(e) = write_json(&self.error_path(f.file.as_deref()), f) {
            tracing::warn!("cannot record a push failure: {e}");
        }
    }

    pub fn clear_failure(&self, file: Option<&str>) {
        remove(&self.error_path(file));
    }

    /// The pusher's lock, when no other process holds it (the file then
    /// says `pid N since TIME`, for operators and tests).
    pub fn try_lock(&self) -> Result<Option<File>> {
        let path = self.dir.join("pusher.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("cannot lock {}: {e}", path.display())))
            }
        }
    }

    /// Whether a pusher holds the lock now.
    pub fn pusher_running(&self) -> Result<bool> {
        Ok(self.try_lock()?.is_none())
    }

    /// [`try_lock`](Self::try_lock) for the pusher itself: the lock file
    /// then names this process.
    pub fn lock_as_pusher(&self) -> Result<Option<File>> {
        let Some(mut f) = self.try_lock()? else {
            return Ok(None);
        };
        let _ = f.set_len(0);
        let _ = writeln!(
            f,
            "pid {} since {}",
            std::process::id(),
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        Ok(Some(f))
    }
}

/// A file PostgreSQL waits to archive (`archive_status/<file>.ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub file: String,
    pub bytes: u64,
}

/// The files of `pg_wal` PostgreSQL has marked ready, oldest name first.
pub fn ready_files(pg_wal: &Path) -> Result<Vec<Ready>> {
    let status = pg_wal.join("archive_status");
    let rd = std::fs::read_dir(&status)
        .map_err(|e| Error::io(format!("cannot list {}: {e}", status.display())))?;
    let mut out: Vec<Ready> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name();
            let file = n.to_str()?.strip_suffix(".ready")?.to_owned();
            let bytes = std::fs::metadata(pg_wal.join(&file)).ok()?.len();
            Some(Ready { file, bytes })
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// Whether `path` is a file PostgreSQL asks to archive: its directory has
/// `archive_status/<file>.ready`.
pub fn is_ready(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let mut ready = name.to_os_string();
    ready.push(".ready");
    dir.join("archive_status").join(ready).exists()
}

// ---- the archive lag ----------------------------------------------------------

/// What `status` and the metrics show of the WAL archive (`wal-<key>.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WalLag {
    pub version: u32,
    pub repository: String,
    pub last_success: Option<DateTime<Utc>>,
    pub last_success_file: Option<String>,
    pub last_failure: Option<DateTime<Utc>>,
    pub last_failure_file: Option<String>,
    pub last_failure_message: Option<String>,
    /// Failed pushes since the last success.
    pub consecutive_failures: u64,
    /// Files PostgreSQL marked ready that are not in the store yet.
    pub pending_files: u64,
    pub pending_bytes: u64,
    pub oldest_pending: Option<String>,
    pub pending_checked: Option<DateTime<Utc>>,
}

impl WalLag {
    pub fn success(&mut self, file: &str, now: DateTime<Utc>) {
        self.last_success = Some(now);
        self.last_success_file = Some(file.to_owned());
        self.consecutive_failures = 0;
    }

    pub fn failure(&mut self, file: Option<&str>, message: &str, now: DateTime<Utc>) {
        self.last_failure = Some(now);
        self.last_failure_file = file.map(str::to_owned);
        self.last_failure_message = Some(message.to_owned());
        self.consecutive_failures += 1;
    }

    /// Ready files minus those in `stored` (already in the store).
    pub fn pending(&mut self, ready: &[Ready], stored: &HashSet<String>, now: DateTime<Utc>) {
        let waiting: Vec<&Ready> = ready.iter().filter(|r| !stored.contains(&r.file)).collect();
        self.pending_files = waiting.len() as u64;
        self.pending_bytes = waiting.iter().map(|r| r.bytes).sum();
        self.oldest_pending = waiting.first().map(|r| r.file.clone());
        self.pending_checked = Some(now);
    }
}

/// The lag file of one repository, and the metrics textfile it feeds.
#[derive(Debug, Clone)]
pub struct LagFile {
    path: PathBuf,
    repository: String,
    /// `<stem>_wal_push.prom` next to `[metrics] textfile`, when configured.
    metrics: Option<PathBuf>,
}

impl LagFile {
    pub fn new(state_dir: &Path, repository: &str, metrics_textfile: Option<&Path>) -> LagFile {
        let store = crate::state::StateStore::new(state_dir, repository);
        let runs = store.runs_path();
        let k = runs
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("runs-"))
            .and_then(|n| n.strip_suffix(".json"))
            .unwrap_or("x")
            .to_owned();
        LagFile {
            path: state_dir.join(format!("wal-{k}.json")),
            repository: repository.to_owned(),
            metrics: metrics_textfile.map(wal_textfile),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Option<WalLag> {
        read_json(&self.path)
    }

    /// Read, change and write the file under its lock (foreground and
    /// background pushes update it at once), then the metrics textfile.
    pub fn update(&self, f: impl FnOnce(&mut WalLag)) -> Result<WalLag> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        ensure_dir(dir)?;
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.lock()
            .map_err(|e| Error::io(format!("cannot lock {}: {e}", lock_path.display())))?;
        let mut lag = self.load().unwrap_or_default();
        f(&mut lag);
        lag.version = VERSION;
        lag.repository = self.repository.clone();
        let mut text = serde_json::to_vec_pretty(&lag).expect("serializable");
        text.push(b'\n');
        crate::metrics::write_atomic(&self.path, &text, 0o640)?;
        if let Some(m) = &self.metrics {
            crate::metrics::render_wal_lag(&lag)
                .and_then(|t| crate::metrics::write_textfile(m, &t))?;
        }
        drop(lock);
        Ok(lag)
    }

    /// [`update`](Self::update); a failure only warns (the push itself is
    /// what PostgreSQL waits for).
    pub fn note(&self, f: impl FnOnce(&mut WalLag)) {
        if let Err(e) = self.update(f) {
            tracing::warn!("WAL lag not recorded: {e}");
        }
    }
}

/// `<dir>/<stem>_wal_push.prom` for the textfile `<dir>/<stem>.prom`: the
/// push series live in a file of their own, written by every push, apart
/// from the nightly run's file and wal-verify's `<stem>_wal.prom`
/// (node_exporter reads every `*.prom`).
pub fn wal_textfile(textfile: &Path) -> PathBuf {
    let stem = textfile
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "usdcop_dr".into());
    textfile.with_file_name(format!("{stem}_wal_push.prom"))
}

// ---- the fetch spool ----------------------------------------------------------

/// "This file, fetched from this object of this repository, has this
/// content."
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FetchRecord {
    pub version: u32,
    pub repository_id: String,
    pub file: String,
    pub object: String,
    pub sha256: String,
    pub bytes: u64,
    pub fetched: DateTime<Utc>,
}

/// Prefetched files of one repository.
#[derive(Debug, Clone)]
pub struct FetchSpool {
    dir: PathBuf,
}

/// A file served from the fetch spool.
#[derive(Debug, Clone)]
pub struct Served {
    pub record: FetchRecord,
}

impl FetchSpool {
    pub fn new(state_dir: &Path, repository: &str) -> FetchSpool {
        FetchSpool {
            dir: state_dir
                .join(SPOOL_DIR)
                .join(format!("fetch-{}", key(&[repository.as_bytes()]))),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn create(&self) -> Result<()> {
        ensure_dir(&self.dir)
    }

    fn data(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn meta(&self, file: &str) -> PathBuf {
        self.dir.join(format!("{file}.json"))
    }

    fn drop_entry(&self, file: &str) {
        remove(&self.data(file));
        remove(&self.meta(file));
    }

    /// The record of `file` when it is of `repository_id` and young enough.
    pub fn record(
        &self,
        file: &str,
        repository_id: &str,
        now: DateTime<Utc>,
    ) -> Option<FetchRecord> {
        let r: FetchRecord = read_json(&self.meta(file))?;
        (r.version == VERSION
            && r.file == file
            && r.repository_id == repository_id
            && now.signed_duration_since(r.fetched) < FETCH_MAX_AGE)
            .then_some(r)
    }

    /// Store a fetched, checked file: data (temp, fsync, rename), then its
    /// record; the record is written last, so a file without one is never
    /// served.
    pub fn put(&self, r: &FetchRecord, plain: &[u8]) -> Result<()> {
        super::wal::write_atomic(&self.data(&r.file), plain)?;
        write_json(&self.meta(&r.file), r)
    }

    /// Move `name` into `dest` if the spool holds it for `repository_id`
    /// and its content still hashes to the object's name; a file that
    /// does not is removed and `None` returned (then it is fetched).
    pub fn take(
        &self,
        name: &WalName,
        dest: &Path,
        repository_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Served>> {
        let Some(r) = self.record(&name.name, repository_id, now) else {
            return Ok(None);
        };
        let data = self.data(&name.name);
        let Ok(bytes) = std::fs::read(&data) else {
            self.drop_entry(&name.name);
            return Ok(None);
        };
        let hash = Id::hash(&bytes);
        if name.hash_of(&r.object) != Some(hash)
            || r.sha256 != hash.to_hex()
            || bytes.len() as u64 != r.bytes
        {
            tracing::warn!(
                "{}: prefetched {} does not match {}; fetching it again",
                self.dir.display(),
                name.name,
                r.object
            );
            self.drop_entry(&name.name);
            return Ok(None);
        }
        match std::fs::rename(&data, dest) {
            Ok(()) => super::wal::sync_dir_of(dest)?,
            // Another file system: write it whole (one segment).
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                super::wal::write_atomic(dest, &bytes)?
            }
            Err(e) => {
                return Err(Error::io(format!(
                    "cannot move {} to {}: {e}",
                    data.display(),
                    dest.display()
                )))
            }
        }
        self.drop_entry(&name.name);
        Ok(Some(Served { record: r }))
    }

    /// Remove what will not be asked for again: segments before
    /// `requested` (recovery moves forward), entries of another
    /// repository or too old, and leftover temporary files.
    pub fn clean(&self, requested: &WalName, repository_id: Option<&str>, now: DateTime<Utc>) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') && n.ends_with(".tmp") {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|a| a.as_secs() > 3600));
                if old {
                    remove(&e.path());
                }
                continue;
            }
            let Some(file) = n.strip_suffix(".json") else {
                if !self.meta(&n).exists() {
                    remove(&e.path());
                }
                continue;
            };
            let before = requested.kind == WalKind::Segment
                && file.len() == 24
                && file[8..] < requested.name[8..];
            let stale = match read_json::<FetchRecord>(&e.path()) {
                None => true,
                Some(r) => {
                    now.signed_duration_since(r.fetched) >= FETCH_MAX_AGE
                        || repository_id.is_some_and(|id| r.repository_id != id)
                }
            };
            if before || stale {
                self.drop_entry(file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(name: &str, bytes: &[u8], sysid: Option<u64>) -> Prepared {
        Prepared {
            name: WalName::parse(name).unwrap(),
            plain: bytes.to_vec(),
            hash: Id::hash(bytes),
            segment_system_id: sysid,
        }
    }

    #[test]
    fn a_push_record_proves_only_its_own_file_cluster_and_repository() {
        let f = prepared("000000010000000000000003", b"segment", Some(42));
        let r = PushRecord {
            version: VERSION,
            repository_id: "repo-a".into(),
            system_identifier: "42".into(),
            file: f.name.name.clone(),
            sha256: f.hash.to_hex(),
            object: f.name.object_name(&f.hash),
            stored_bytes: 10,
            pushed: Utc::now(),
        };
        assert!(r.proves(&f, "repo-a"));
        assert!(!r.proves(&f, "repo-b"), "another repository");
        let other = prepared("000000010000000000000003", b"other content", Some(42));
        assert!(!r.proves(&other, "repo-a"), "another content");
        let foreign = prepared("000000010000000000000003", b"segment", Some(7));
        assert!(!r.proves(&foreign, "repo-a"), "another cluster");
        let renamed = prepared("000000010000000000000004", b"segment", Some(42));
        assert!(!r.proves(&renamed, "repo-a"), "another name");
        let mut lying = r.clone();
        lying.object = f.name.object_name(&Id::hash(b"x"));
        assert!(!lying.proves(&f, "repo-a"), "object of other content");
    }

    #[test]
    fn spool_records_failures_lock_and_prune() {
        let t = tempfile::tempdir().unwrap();
        let s = PushSpool::new(t.path(), "s3://b/p", Path::new("/pg/pg_wal"));
        assert_ne!(
            s.dir(),
            PushSpool::new(t.path(), "s3://b/p", Path::new("/pg2/pg_wal")).dir()
        );
        s.create().unwrap();
        let f = prepared("000000010000000000000003", b"x", Some(1));
        let r = PushRecord {
            version: VERSION,
            repository_id: "r".into(),
            system_identifier: "1".into(),
            file: f.name.name.clone(),
            sha256: f.hash.to_hex(),
            object: f.name.object_name(&f.hash),
            stored_bytes: 1,
            pushed: Utc::now(),
        };
        s.write_record(&r).unwrap();
        assert_eq!(s.record(&r.file), Some(r.clone()));
        s.prune(&[r.file.clone()].into_iter().collect(), "r");
        assert!(s.record(&r.file).is_some(), "still ready: kept");
        s.prune(&[r.file.clone()].into_iter().collect(), "other");
        assert!(s.record(&r.file).is_none(), "another repository: removed");

        let e = Error::usage("no").with_hint("h");
        s.write_failure(&PushFailure::new(Some("F"), &e, Utc::now()));
        let back = s.failure(Some("F")).unwrap().to_error();
        assert_eq!((back.kind(), back.hint()), (ErrorKind::Usage, Some("h")));
        s.clear_failure(Some("F"));
        assert!(s.failure(Some("F")).is_none());

        let held = s.try_lock().unwrap().expect("free");
        assert!(s.pusher_running().unwrap());
        drop(held);
        assert!(!s.pusher_running().unwrap());
    }

    #[test]
    fn lag_counts_failures_and_pending_files() {
        let t = tempfile::tempdir().unwrap();
        let prom = t.path().join("m/usdcop_dr.prom");
        std::fs::create_dir(t.path().join("m")).unwrap();
        let l = LagFile::new(t.path(), "/srv/repo", Some(&prom));
        let now = Utc::now();
        l.update(|g| g.failure(Some("A"), "down", now)).unwrap();
        let ready = [
            Ready {
                file: "A".into(),
                bytes: 16,
            },
            Ready {
                file: "B".into(),
                bytes: 16,
            },
        ];
        let g = l
            .update(|g| {
                g.failure(Some("A"), "down", now);
                g.pending(&ready, &["B".to_owned()].into_iter().collect(), now);
            })
            .unwrap();
        assert_eq!(
            (g.consecutive_failures, g.pending_files, g.pending_bytes),
            (2, 1, 16)
        );
        let g = l.update(|g| g.success("A", now)).unwrap();
        assert_eq!(g.consecutive_failures, 0);
        assert_eq!(l.load().unwrap(), g);
        let text = std::fs::read_to_string(t.path().join("m/usdcop_dr_wal_push.prom")).unwrap();
        assert!(text.contains("usdcop_dr_wal_pending_files 1"), "{text}");
    }

    #[test]
    fn the_fetch_spool_serves_only_checked_files_and_cleans_older_ones() {
        let t = tempfile::tempdir().unwrap();
        let s = FetchSpool::new(&t.path().join("state"), "/srv/repo");
        s.create().unwrap();
        let now = Utc::now();
        let put = |name: &str, bytes: &[u8]| {
            let n = WalName::parse(name).unwrap();
            let h = Id::hash(bytes);
            let r = FetchRecord {
                version: VERSION,
                repository_id: "r".into(),
                file: name.into(),
                object: n.object_name(&h),
                sha256: h.to_hex(),
                bytes: bytes.len() as u64,
                fetched: now,
            };
            s.put(&r, bytes).unwrap();
            n
        };
        let dest = t.path().join("RECOVERYXLOG");
        let a = put("000000010000000000000005", b"five");
        assert!(
            s.take(&a, &dest, "other", now).unwrap().is_none(),
            "other repo"
        );
        assert!(s.take(&a, &dest, "r", now).unwrap().is_some());
        assert_eq!(std::fs::read(&dest).unwrap(), b"five");
        assert!(s.take(&a, &dest, "r", now).unwrap().is_none(), "moved out");
        // Damaged in the spool: not served, removed.
        let b = put("000000010000000000000006", b"six");
        std::fs::write(s.data(&b.name), b"sIx").unwrap();
        assert!(s.take(&b, &dest, "r", now).unwrap().is_none());
        assert!(!s.meta(&b.name).exists());
        // Too old: not served.
        let c = put("000000010000000000000007", b"seven");
        let later = now + FETCH_MAX_AGE;
        assert!(s.take(&c, &dest, "r", later).unwrap().is_none());
        // Older segments are cleaned when a newer one is asked for.
        let d = put("000000010000000000000008", b"eight");
        s.clean(&d, Some("r"), now);
        assert!(!s.data(&c.name).exists() && s.data(&d.name).exists());
        s.clean(&d, Some("another"), now);
        assert!(!s.data(&d.name).exists(), "another repository's entry");
    }
}
