//! Asynchronous `wal-push` (`[wal] async = true`; docs/FORMAT.md §13,
//! "Local spools"; docs/OPERATIONS.md, "Archive lag").
//!
//! PostgreSQL calls `archive_command` once per file, one call at a time.
//! With `async`, a call for file N (the *foreground*):
//!
//! 1. reads and hashes N; if the push spool has a record proving N (same
//!    name, content, cluster and repository) it exits 0 at once, without
//!    opening the repository;
//! 2. otherwise makes sure one *background pusher* runs (a detached
//!    `usdcop-dr wal-push --background <pg_wal>`; its `flock` keeps a
//!    second one from starting) and waits, bounded, for N's record;
//! 3. fails with the pusher's error when the pusher recorded one for N (or
//!    could not start) after this call began, and pushes N itself when no
//!    pusher brings N in time.
//!
//! The pusher reads `archive_status/*.ready`, pushes up to
//! `[wal] push_parallel` files at once, oldest first, writes a record
//! after each push has returned (the object is durable), and stops
//! scheduling new pushes at the first failure (recorded, and the process
//! exits non-zero: the next foreground call starts a new pusher, so every
//! retry by PostgreSQL is a fresh attempt). It exits after
//! [`IDLE`] without work. Records of files PostgreSQL no longer waits for
//! are removed. Nothing here ever tells PostgreSQL that a file is archived
//! unless a push of exactly that content returned.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::task::JoinSet;

use super::wal::{self, Prepared, SystemIdCache};
use super::wal_spool::{self, LagFile, PushFailure, PushRecord, PushSpool};
use crate::error::{Error, Result};
use crate::format::wal::WalName;
use crate::repository::Repository;

/// How long a foreground call waits for the background pusher before it
/// pushes its file itself.
pub const WAIT: Duration = Duration::from_secs(60);
/// A pusher with nothing to do for this long exits.
pub const IDLE: Duration = Duration::from_secs(20);
/// How often the pusher looks at `archive_status/`.
const SCAN: Duration = Duration::from_millis(100);

/// How a foreground call ended without an error.
#[derive(Debug)]
pub enum Foreground {
    /// A record proves the file durable in the store.
    Recorded(PushRecord),
    /// No pusher brought it: push it in this process.
    PushYourself(String),
}

/// Starts a background pusher process.
pub type Spawn<'a> = &'a dyn Fn() -> Result<std::process::Child>;

/// The foreground of an asynchronous push of `file` (steps 1–3 above).
/// `repository_id` gives the id of the repository last opened under this
/// URL (the WAL key cache's), read again each time a record is found.
pub async fn foreground(
    spool: &PushSpool,
    file: &Prepared,
    repository_id: &dyn Fn() -> Option<String>,
    spawn: Spawn<'_>,
    wait: Duration,
) -> Result<Foreground> {
    let name = file.name.name.as_str();
    let started = Utc::now();
    let deadline = Instant::now() + wait;
    let mut child: Option<std::process::Child> = None;
    let mut spawned = 0;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(r) = spool.record(name) {
            if repository_id().is_some_and(|id| r.proves(file, &id)) {
                return Ok(Foreground::Recorded(r));
            }
            // Another content, cluster or repository: not this file.
            spool.remove_record(name);
            return Ok(Foreground::PushYourself(format!(
                "the spool's record of {name} is not of this file"
            )));
        }
        for f in [Some(name), None] {
            if let Some(fail) = spool.failure(f).filter(|x| x.time >= started) {
                return Err(fail.to_error());
            }
        }
        let running = match &mut child {
            // Our pusher: running until it exits (it may still be taking
            // its lock; the lock alone would look free then).
            Some(c) => c.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => spool.pusher_running()?,
        };
        if !running {
            if child.take().is_some() {
                // It ended: look for its record or failure once more.
                continue;
            }
            if spawned == 2 {
                return Ok(Foreground::PushYourself(
                    "the background pusher ended without pushing it".into(),
                ));
            }
            spool.clear_failure(Some(name));
            spool.clear_failure(None);
            child = Some(spawn()?);
            spawned += 1;
        }
        if Instant::now() >= deadline {
            return Ok(Foreground::PushYourself(format!(
                "the background pusher did not push it within {wait:?}"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// What the background pusher is given.
#[derive(Debug, Clone)]
pub struct PusherOptions {
    /// `[wal] source`.
    pub source: String,
    /// `[wal] push_parallel`.
    pub parallel: usize,
    /// Exit after this long without work ([`IDLE`]).
    pub idle: Duration,
}

/// What a pusher did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PusherReport {
    pub pushed: u64,
    pub already_archived: u64,
    pub bytes: u64,
}

/// The background pusher's loop (the caller holds the spool's lock).
/// Returns when idle for `opts.idle`, or with the first failure once the
/// pushes under way have ended.
pub async fn run_pusher(
    repo: Arc<Repository>,
    spool: &PushSpool,
    pg_wal: &Path,
    lag: &LagFile,
    opts: &PusherOptions,
) -> Result<PusherReport> {
    let repository_id = repo.config().id.clone();
    let known = Arc::new(SystemIdCache::default());
    let mut tasks: JoinSet<(String, Result<(PushRecord, bool)>)> = JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut failure: Option<Error> = None;
    let mut report = PusherReport::default();
    let mut idle_since = Instant::now();
    let mut lag_noted = Instant::now() - Duration::from_secs(60);
    loop {
        let ready = match wal_spool::ready_files(pg_wal) {
            Ok(r) => r,
            Err(e) => {
                failure.get_or_insert(e);
                Vec::new()
            }
        };
        let waiting: HashSet<String> = ready.iter().map(|r| r.file.clone()).collect();
        spool.prune(
            &waiting.union(&in_flight).cloned().collect(),
            &repository_id,
        );
        let recorded = spool.recorded();
        if lag_noted.elapsed() >= Duration::from_secs(1) {
            lag.note(|g| g.pending(&ready, &recorded, Utc::now()));
            lag_noted = Instant::now();
        }
        if failure.is_none() {
            let next: Vec<&wal_spool::Ready> = ready
                .iter()
                .filter(|r| {
                    !recorded.contains(&r.file)
                        && !in_flight.contains(&r.file)
                        && WalName::parse(&r.file).is_ok()
                })
                .take(opts.parallel.saturating_sub(tasks.len()))
                .collect();
            for r in next {
                in_flight.insert(r.file.clone());
                let job = PushJob {
                    repo: repo.clone(),
                    known: known.clone(),
                    source: opts.source.clone(),
                    path: pg_wal.join(&r.file),
                    repository_id: repository_id.clone(),
                };
                let file = r.file.clone();
                tasks.spawn(async move { (file, job.run().await) });
            }
        }
        if tasks.is_empty() {
            if let Some(e) = failure {
                return Err(e);
            }
            if idle_since.elapsed() >= opts.idle {
                return Ok(report);
            }
            tokio::time::sleep(SCAN).await;
            continue;
        }
        idle_since = Instant::now();
        let done = tokio::select! {
            d = tasks.join_next() => d,
            _ = tokio::time::sleep(SCAN) => None,
        };
        let Some(done) = done else { continue };
        let (file, result) = match done {
            Ok(x) => x,
            Err(e) => {
                failure.get_or_insert(Error::io(format!("a push task failed: {e}")));
                continue;
            }
        };
        in_flight.remove(&file);
        let now = Utc::now();
        match result.and_then(|(r, stored)| spool.write_record(&r).map(|()| (r, stored))) {
            Ok((r, stored)) => {
                if stored {
                    report.pushed += 1;
                } else {
                    report.already_archived += 1;
                }
                report.bytes += r.stored_bytes;
                // Per file only with -vv: a pusher under constant load
                // never idles, and its log is rotated only at a start.
                tracing::debug!("pushed {} as {}", r.file, r.object);
                lag.note(|g| g.success(&file, now));
            }
            Err(e) => {
                tracing::warn!("could not push {file} (PostgreSQL retries it): {e}");
                // Counted in the lag file by the foreground call for it.
                spool.write_failure(&PushFailure::new(Some(&file), &e, now));
                failure.get_or_insert(e);
            }
        }
    }
}

/// One file for the pusher.
struct PushJob {
    repo: Arc<Repository>,
    known: Arc<SystemIdCache>,
    source: String,
    path: PathBuf,
    repository_id: String,
}

impl PushJob {
    /// The record, and whether this push stored the object (false: it
    /// was already archived).
    async fn run(self) -> Result<(PushRecord, bool)> {
        let path = self.path.clone();
        let prepared = tokio::task::spawn_blocking(move || wal::prepare(&path))
            .await
            .map_err(|e| Error::io(format!("a read task failed: {e}")))??;
        let sha256 = prepared.hash.to_hex();
        let sysid = prepared.segment_system_id;
        let out = wal::push_prepared(&self.repo, &self.source, prepared, &self.known).await?;
        let record = PushRecord {
            version: 1,
            repository_id: self.repository_id,
            system_identifier: sysid
                .map(|i| i.to_string())
                .unwrap_or(out.system_identifier),
            file: out.file,
            sha256,
            object: out.object,
            stored_bytes: out.stored_bytes,
            pushed: Utc::now(),
        };
        Ok((record, out.stored))
    }
}
