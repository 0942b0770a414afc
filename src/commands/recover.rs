//! Clean up after writers that died: run at the start of every backup.
//!
//! A killed backup leaves three things behind, never a snapshot:
//! its lock object, unfinished writes (S3 multipart uploads, local temp
//! files) and packs it completed. Of those packs, the ones its last index
//! flush covered are already indexed and simply deduplicated against; the
//! ones uploaded after that flush are unindexed. When the next backup finds
//! such a dead lock (expired by the store's clock, or from this host's
//! pid namespace with its process gone: `lock::Judge`) and
//! no other writer is alive, it aborts the unfinished writes, indexes the
//! orphaned packs from their own headers (as `repair index` does, so their
//! chunks are reused instead of uploaded again) and deletes the dead locks.
//! Nothing that any snapshot needs is ever deleted; blobs that no snapshot
//! ends up referencing are prune's to remove.
//!
//! With another live writer present the clean-up waits for a later run: its
//! unfinished uploads are indistinguishable from the dead one's.

use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;

use crate::error::Result;
use crate::format::{names, Id};
use crate::repository::lock::{all_locks, Judge};
use crate::repository::Repository;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Locks of writers that are gone.
    pub dead_locks: u64,
    /// True when another live writer made us leave the clean-up for later.
    pub deferred: bool,
    pub unfinished_writes_aborted: u64,
    pub packs_indexed: u64,
}

/// `own` is the caller's own lock (never judged).
pub async fn after_dead_writers(
    repo: &Arc<Repository>,
    own: &Id,
) -> Result<Option<RecoveryReport>> {
    // It may write (abort uploads, an index object, delete locks).
    repo.check_writable()?;
    // Listed after our own lock was stored: its store timestamp is the
    // store's "now", against which the others' ages are judged.
    let locks = all_locks(repo).await?;
    let judge = Judge::after_own_lock(&locks, own);
    let (dead, live): (Vec<_>, Vec<_>) = locks
        .into_iter()
        .filter(|l| &l.id != own && !judge.is_mine(l))
        .partition(|l| judge.holder_is_gone(l));
    if dead.is_empty() {
        return Ok(None);
    }
    let mut report = RecoveryReport {
        dead_locks: dead.len() as u64,
        ..Default::default()
    };
    if let Some(l) = live.first() {
        tracing::info!(
            "{} abandoned lock(s) found; clean-up left for a later run because {} (pid {}) is still writing",
            dead.len(),
            l.lock.host,
            l.lock.pid
        );
        report.deferred = true;
        return Ok(Some(report));
    }
    // Abort only writes started before the cut-off, by the store's clock
    // (an upload's `Initiated`, a temp file's mtime): a dead writer began
    // none after its lock expired (a writer stops before its lock lapses),
    // and a writer that started after we listed the locks (so unseen above)
    // stored its lock, and began its writes, after our own lock was stored
    // (`store_now`). Younger writes survive. Without store timestamps, the
    // writers' own `expires` and this host's clock are the best we have.
    let now = judge.store_now().unwrap_or_else(Utc::now);
    let cutoff = dead
        .iter()
        .map(|l| judge.store_expiry(l).unwrap_or(l.lock.expires))
        .max()
        .map_or(now, |e| e.min(now));
    report.unfinished_writes_aborted = repo.backend().abort_unfinished_writes(cutoff).await?;
    let reindexed = super::repair::index(repo.clone()).await?;
    report.packs_indexed = reindexed.packs_reindexed;
    let names: Vec<String> = dead
        .iter()
        .map(|l| names::in_dir(names::LOCKS, &l.id))
        .collect();
    repo.backend().delete_many(&names).await?;
    tracing::info!(
        "cleaned up after {} dead writer(s): {} unfinished upload(s) aborted, {} orphaned pack(s) indexed",
        report.dead_locks,
        report.unfinished_writes_aborted,
        report.packs_indexed
    );
    Ok(Some(report))
}
