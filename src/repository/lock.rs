//! Lock objects that expire by themselves.
//!
//! A running backup writes `locks/<id>` (kind `backup`) and rewrites it every
//! [`REFRESH`]; each copy says when it stops meaning anything ([`TTL`] later).
//! Nothing ever waits for a lock and no lock needs a human to remove it: a
//! crashed process's lock simply expires. The (later) prune reads live
//! backup locks to decide when condemned packs may really be deleted; see
//! docs/ARCHITECTURE.md, "Concurrency".
//!
//! The other side of expiry: a holder whose refreshes fail (store errors,
//! a suspended VM, a PUT slower than the TTL) looks dead to everyone else
//! once its last stored copy expires, so it must stop before that. The
//! guard's [`Lease`] says whether the last successfully stored copy is
//! still good for at least [`margin`]; the writer checks it before every
//! pack and index object, and the backup once more just before it writes
//! its snapshot (docs/FORMAT.md, "Locks").

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::Repository;
use crate::crypto::Domain;
use crate::error::{Error, ErrorKind, Result};
use crate::format::meta::{Lock, LockKind};
use crate::format::{names, Id};

pub const TTL: Duration = Duration::from_secs(30 * 60);
pub const REFRESH: Duration = Duration::from_secs(5 * 60);

/// Test-only overrides of [`TTL`] and [`REFRESH`] (whole seconds), so that
/// tests can see a lock lapse in seconds. Not a user setting: a short TTL
/// lets a slow store make a healthy backup look dead to others.
pub const TTL_ENV: &str = "USDCOP_DR_LOCK_TTL_SECS";
pub const REFRESH_ENV: &str = "USDCOP_DR_LOCK_REFRESH_SECS";

fn env_secs(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
}

/// How long a stored lock copy stays valid.
pub fn ttl() -> Duration {
    env_secs(TTL_ENV).unwrap_or(TTL)
}

/// How often a held lock is rewritten (never more than a third of the TTL,
/// so that two refreshes may fail before the holder has to stop).
pub fn refresh_interval() -> Duration {
    env_secs(REFRESH_ENV)
        .unwrap_or(REFRESH)
        .min(ttl() / 3)
        .max(Duration::from_millis(100))
}

/// What a holder keeps back from the TTL: it stops once its last stored
/// copy has less than this left. Covers the clock skew between hosts and
/// the time the last writes (a pack, the snapshot) take to land.
pub fn margin(ttl: Duration) -> Duration {
    ttl / 3
}

/// Whether the holder's lock is still surely live in everyone's eyes.
/// Cheap to clone and to check (no I/O): it only compares the time since
/// the last successfully stored copy with the TTL.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<std::sync::Mutex<LeaseState>>,
    ttl: Duration,
    lock: Arc<Mutex<Id>>,
}

struct LeaseState {
    /// Taken just before the last successfully stored copy was built, so
    /// no later than the moment its `expires` was computed from.
    stored_at: Instant,
    /// Set once the lease has lapsed: a refresh that succeeds afterwards
    /// does not revive it, since others may already have acted on our
    /// death (aborted our uploads, condemned our packs).
    lost: bool,
}

impl Lease {
    fn new(stored_at: Instant, ttl: Duration, lock: Arc<Mutex<Id>>) -> Lease {
        Lease {
            inner: Arc::new(std::sync::Mutex::new(LeaseState {
                stored_at,
                lost: false,
            })),
            ttl,
            lock,
        }
    }

    fn deadline(&self) -> Duration {
        self.ttl - margin(self.ttl)
    }

    /// `Ok` while the last stored copy has at least [`margin`] left;
    /// otherwise an error saying why the backup must stop.
    pub fn check(&self) -> Result<()> {
        let mut st = self.inner.lock().unwrap();
        let age = st.stored_at.elapsed();
        if !st.lost && age < self.deadline() {
            return Ok(());
        }
        st.lost = true;
        let lock = self.lock.try_lock().map(|id| *id).ok();
        Err(Error::io(format!(
            "lock {}: not refreshed for {}s (it expires {}s after each refresh): \
             other processes may already consider this backup dead, so it stops \
             without writing a snapshot; check that the repository's store is \
             reachable and writable (locks/), then run the backup again",
            lock.map_or_else(
                || names::LOCKS.to_owned(),
                |id| names::in_dir(names::LOCKS, &id)
            ),
            age.as_secs(),
            self.ttl.as_secs(),
        )))
    }

    /// Record a copy stored successfully, built at `built`.
    fn stored(&self, built: Instant) {
        let mut st = self.inner.lock().unwrap();
        if st.lost || st.stored_at.elapsed() >= self.deadline() {
            st.lost = true;
        } else {
            st.stored_at = built;
        }
    }
}

pub struct LockGuard {
    repo: Arc<Repository>,
    current: Arc<Mutex<Id>>,
    lease: Lease,
    refresher: JoinHandle<()>,
}

impl LockGuard {
    pub async fn acquire(repo: Arc<Repository>, kind: LockKind) -> Result<LockGuard> {
        // Only writers take locks: the writer gate applies.
        repo.check_writable()?;
        let started = Utc::now();
        let ttl = ttl();
        let built = Instant::now();
        let id = write_lock(&repo, kind, started, ttl).await?;
        let current = Arc::new(Mutex::new(id));
        let lease = Lease::new(built, ttl, current.clone());
        let refresher = tokio::spawn(refresh_loop(
            repo.clone(),
            kind,
            started,
            current.clone(),
            lease.clone(),
        ));
        Ok(LockGuard {
            repo,
            current,
            lease,
            refresher,
        })
    }

    /// The lease to check before each write that must not happen once
    /// others may judge this holder dead.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
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
    lease: Lease,
) {
    let every = refresh_interval();
    loop {
        tokio::time::sleep(every).await;
        let built = Instant::now();
        match write_lock(&repo, kind, started, lease.ttl).await {
            Ok(new) => {
                lease.stored(built);
                let old = std::mem::replace(&mut *current.lock().await, new);
                let _ = repo
                    .backend()
                    .delete_many(&[names::in_dir(names::LOCKS, &old)])
                    .await;
            }
            Err(e) => tracing::warn!(
                "could not refresh lock: {e} (the backup stops once its lock \
                 has gone {}s without a refresh)",
                lease.deadline().as_secs()
            ),
        }
    }
}

async fn write_lock(
    repo: &Repository,
    kind: LockKind,
    started: DateTime<Utc>,
    ttl: Duration,
) -> Result<Id> {
    let lock = Lock {
        version: 1,
        kind,
        host: super::hostname(),
        pid: std::process::id(),
        started,
        expires: Utc::now() + chrono::Duration::from_std(ttl).expect("TTL fits"),
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

/// Every lock object, expired or not, skipping ones deleted while we read
/// them (released) and damaged ones (reported). Any other failure to read
/// one (a transport error, a timeout, a refused request) is an error: a
/// live lock that cannot be read must not look like no lock at all, or a
/// clean-up or prune would act as if its writer were gone.
pub async fn all_locks(repo: &Repository) -> Result<Vec<(Id, Lock)>> {
    let mut out = Vec::new();
    for obj in crate::backend::list_all(repo.backend(), names::LOCKS).await? {
        let Some(id) = names::id_of(&obj.name) else {
            continue;
        };
        let plain = match repo.load_sealed(&obj.name, Domain::Lock).await {
            Ok(plain) => plain,
            // Deleted between list and get: simply released.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) if e.kind() == ErrorKind::Integrity => {
                tracing::warn!("skipping damaged lock {}: {e}", obj.name);
                continue;
            }
            Err(e) => return Err(e.context(format!("reading lock {}", obj.name))),
        };
        match crate::format::meta::decode_json::<Lock>("lock", &plain) {
            Ok(lock) => out.push((id, lock)),
            Err(e) => tracing::warn!("skipping damaged lock {}: {e}", obj.name),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::{Backend, ListPage, ObjectMeta, Payload, PutMode};
    use crate::crypto::KdfParams;
    use crate::error::Error;
    use crate::repository::InitOptions;

    /// A local store whose reads of lock objects fail like a dropped
    /// connection while `failing` is set.
    #[derive(Debug)]
    struct FlakyLocks {
        inner: LocalBackend,
        failing: AtomicBool,
    }

    #[async_trait]
    impl Backend for FlakyLocks {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn put(&self, name: &str, payload: Payload, mode: PutMode) -> Result<()> {
            self.inner.put(name, payload, mode).await
        }
        async fn get(&self, name: &str) -> Result<Bytes> {
            if name.starts_with(names::LOCKS) && self.failing.load(Ordering::SeqCst) {
                return Err(Error::io(format!("GET {name}: connection reset by peer")));
            }
            self.inner.get(name).await
        }
        async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes> {
            self.inner.get_range(name, offset, len).await
        }
        async fn head(&self, name: &str) -> Result<ObjectMeta> {
            self.inner.head(name).await
        }
        async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
            self.inner.list_page(prefix, token).await
        }
        async fn delete_many(&self, names: &[String]) -> Result<()> {
            self.inner.delete_many(names).await
        }
    }

    /// A lock that cannot be read because of a store error is an error,
    /// never silently "no lock" (which would let recovery or prune treat
    /// its live writer as gone); a deleted or damaged one is skipped.
    #[tokio::test]
    async fn unreadable_lock_is_an_error_not_an_absent_lock() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(FlakyLocks {
            inner: LocalBackend::new(dir.path()).unwrap(),
            failing: AtomicBool::new(false),
        });
        let opts = InitOptions {
            kdf: KdfParams {
                m_cost_kib: 1024,
                t_cost: 1,
                p_cost: 1,
            },
            ..Default::default()
        };
        let repo = Arc::new(
            Repository::init(backend.clone(), b"pw", &opts)
                .await
                .unwrap(),
        );
        let guard = LockGuard::acquire(repo.clone(), LockKind::Backup)
            .await
            .unwrap();
        let id = guard.id().await;
        assert_eq!(all_locks(&repo).await.unwrap().len(), 1);

        backend.failing.store(true, Ordering::SeqCst);
        let e = all_locks(&repo).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(e.to_string().contains(&id.to_string()), "{e}");
        assert!(live_locks(&repo, Utc::now()).await.is_err());
        backend.failing.store(false, Ordering::SeqCst);

        // A damaged lock object is skipped, not fatal.
        let junk = names::in_dir(names::LOCKS, &Id::hash(b"junk"));
        backend
            .put(&junk, b"junk".to_vec().into(), PutMode::Create)
            .await
            .unwrap();
        let locks = all_locks(&repo).await.unwrap();
        assert_eq!(locks.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [id]);
        guard.release().await.unwrap();
        assert!(all_locks(&repo).await.unwrap().is_empty());
    }

    fn lease(age: Duration, ttl: Duration) -> Lease {
        let stored_at = Instant::now() - age;
        Lease::new(stored_at, ttl, Arc::new(Mutex::new(Id([7; 32]))))
    }

    #[test]
    fn lease_holds_until_ttl_minus_margin() {
        let ttl = Duration::from_secs(30);
        assert!(lease(Duration::from_secs(19), ttl).check().is_ok());
        let err = lease(Duration::from_secs(21), ttl).check().unwrap_err();
        assert!(
            err.to_string().contains("not refreshed for 21s")
                && err
                    .to_string()
                    .contains(&names::in_dir(names::LOCKS, &Id([7; 32]))),
            "{err}"
        );
    }

    #[test]
    fn a_lapsed_lease_is_not_revived_by_a_late_refresh() {
        let l = lease(Duration::from_secs(25), Duration::from_secs(30));
        // The refresh that finally got through was built after the lapse:
        // others may already have acted on our death.
        l.stored(Instant::now());
        assert!(l.check().is_err());
        // A refresh in time moves the lease on.
        let l = lease(Duration::from_secs(15), Duration::from_secs(30));
        l.stored(Instant::now());
        assert!(lease_age(&l) < Duration::from_secs(1));
        assert!(l.check().is_ok());
    }

    fn lease_age(l: &Lease) -> Duration {
        l.inner.lock().unwrap().stored_at.elapsed()
    }
}
