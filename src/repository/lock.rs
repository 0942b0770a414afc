//! Lock objects that expire by themselves.
//!
//! A running backup writes `locks/<id>` (kind `backup`) and rewrites it every
//! [`REFRESH`]; each copy says when it stops meaning anything ([`TTL`] later).
//! Nothing ever waits for a lock and no lock needs a human to remove it: a
//! crashed process's lock simply expires. The (later) prune reads live
//! backup locks to decide when condemned packs may really be deleted; see
//! docs/ARCHITECTURE.md, "Concurrency".

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::Repository;
use crate::crypto::Domain;
use crate::error::Result;
use crate::format::meta::{Lock, LockKind};
use crate::format::{names, Id};

pub const TTL: Duration = Duration::from_secs(30 * 60);
pub const REFRESH: Duration = Duration::from_secs(5 * 60);

pub struct LockGuard {
    repo: Arc<Repository>,
    current: Arc<Mutex<Id>>,
    refresher: JoinHandle<()>,
}

impl LockGuard {
    pub async fn acquire(repo: Arc<Repository>, kind: LockKind) -> Result<LockGuard> {
        let started = Utc::now();
        let id = write_lock(&repo, kind, started).await?;
        let current = Arc::new(Mutex::new(id));
        let refresher = tokio::spawn(refresh_loop(repo.clone(), kind, started, current.clone()));
        Ok(LockGuard {
            repo,
            current,
            refresher,
        })
    }

    /// The lock object's current id (it changes at every refresh).
    pub async fn id(&self) -> Id {
        *self.current.lock().await
    }

    /// Remove the lock. Dropping the guard without calling this leaves the
    /// lock to expire on its own, which is safe.
    pub async fn release(self) -> Result<()> {
        self.refresher.abort();
        let id = *self.current.lock().await;
        self.repo
            .backend()
            .delete_many(&[names::in_dir(names::LOCKS, &id)])
            .await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn refresh_loop(
    repo: Arc<Repository>,
    kind: LockKind,
    started: DateTime<Utc>,
    current: Arc<Mutex<Id>>,
) {
    loop {
        tokio::time::sleep(REFRESH).await;
        match write_lock(&repo, kind, started).await {
            Ok(new) => {
                let old = std::mem::replace(&mut *current.lock().await, new);
                let _ = repo
                    .backend()
                    .delete_many(&[names::in_dir(names::LOCKS, &old)])
                    .await;
            }
            Err(e) => tracing::warn!("could not refresh lock: {e}"),
        }
    }
}

async fn write_lock(repo: &Repository, kind: LockKind, started: DateTime<Utc>) -> Result<Id> {
    let lock = Lock {
        version: 1,
        kind,
        host: super::hostname(),
        pid: std::process::id(),
        started,
        expires: Utc::now() + chrono::Duration::from_std(TTL).expect("TTL fits"),
        nonce: hex::encode(crate::crypto::random_bytes::<8>()),
    };
    let plain = serde_json::to_vec(&lock).expect("lock serializes");
    repo.save_sealed(names::LOCKS, Domain::Lock, &plain).await
}

/// Locks that have not expired at `now`.
pub async fn live_locks(repo: &Repository, now: DateTime<Utc>) -> Result<Vec<(Id, Lock)>> {
    Ok(all_locks(repo)
        .await?
        .into_iter()
        .filter(|(_, l)| l.expires > now)
        .collect())
}

/// Whether a lock's holder is certainly gone: the lock expired, or it was
/// taken on this host by a process that no longer exists. A lock from
/// another host is only ever judged by its expiry; a reused pid makes a
/// dead holder look alive, which errs on the safe side.
pub fn holder_is_gone(lock: &Lock, now: DateTime<Utc>) -> bool {
    lock.expires <= now || (lock.host == super::hostname() && !process_exists(lock.pid))
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Every lock object, expired or not, skipping ones deleted or damaged
/// while we read them.
pub async fn all_locks(repo: &Repository) -> Result<Vec<(Id, Lock)>> {
    let mut out = Vec::new();
    for obj in crate::backend::list_all(repo.backend(), names::LOCKS).await? {
        let Some(id) = names::id_of(&obj.name) else {
            continue;
        };
        // A lock deleted between list and get has simply been released.
        let Ok(plain) = repo.load_sealed(&obj.name, Domain::Lock).await else {
            continue;
        };
        let Ok(lock) = crate::format::meta::decode_json::<Lock>("lock", &plain) else {
            continue;
        };
        out.push((id, lock));
    }
    Ok(out)
}
