//! Lock objects that expire by themselves.
//!
//! A running backup writes `locks/<id>` (kind `backup`) and rewrites it every
//! [`REFRESH`]; each copy stops meaning anything [`TTL`] after the store
//! wrote it, judged by the store's timestamps ([`Judge`]), never by
//! comparing the writer's clock with the judge's.
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
use crate::format::meta::{Lock, LockKind, ProcessIdentity};
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
    holder: String,
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
        let holder = hex::encode(crate::crypto::random_bytes::<8>());
        let id = write_lock(&repo, kind, started, ttl, &holder).await?;
        let current = Arc::new(Mutex::new(id));
        let lease = Lease::new(built, ttl, current.clone());
        let refresher = tokio::spawn(refresh_loop(
            repo.clone(),
            kind,
            started,
            current.clone(),
            lease.clone(),
            holder.clone(),
        ));
        Ok(LockGuard {
            repo,
            holder,
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

    /// This holder's id, the same in every copy of its lock.
    pub fn holder(&self) -> &str {
        &self.holder
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
    holder: String,
) {
    let every = refresh_interval();
    loop {
        tokio::time::sleep(every).await;
        let built = Instant::now();
        match write_lock(&repo, kind, started, lease.ttl, &holder).await {
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
    holder: &str,
) -> Result<Id> {
    let lock = Lock {
        version: 1,
        kind,
        host: super::hostname(),
        pid: std::process::id(),
        started,
        expires: Utc::now() + chrono::Duration::from_std(ttl).expect("TTL fits"),
        nonce: hex::encode(crate::crypto::random_bytes::<8>()),
        ttl_s: Some(ttl.as_secs().max(1)),
        process: own_identity().cloned(),
        holder: Some(holder.to_owned()),
    };
    save_lock(repo, &lock).await
}

async fn save_lock(repo: &Repository, lock: &Lock) -> Result<Id> {
    let plain = serde_json::to_vec(lock).expect("lock serializes");
    repo.save_sealed(names::LOCKS, Domain::Lock, &plain).await
}

/// Test support, not an API: store `lock` as a lock object as it is (e.g.
/// with an `expires` from a clock hours off), as another process would.
#[doc(hidden)]
pub async fn save_lock_for_tests(repo: &Repository, lock: &Lock) -> Result<Id> {
    save_lock(repo, lock).await
}

/// A lock object as listed: its id, content and the store's timestamp.
#[derive(Debug, Clone)]
pub struct StoredLock {
    pub id: Id,
    pub lock: Lock,
    /// When the store wrote it, by the store's clock (if the store says).
    pub stored: Option<DateTime<Utc>>,
}

/// Judges other processes' locks: expired or not by the store's clock,
/// holder gone or not by process identity. Built from a listing of the
/// locks taken after the judge stored its own lock, so that "now" can be
/// read off the store's clock: the timestamp of that own lock object is a
/// store time no later than the listing (docs/FORMAT.md, "Locks").
#[derive(Debug, Clone)]
pub struct Judge {
    /// The store's clock at (no later than) the listing: the newest
    /// timestamp of the judge's own lock objects in it.
    store_now: Option<DateTime<Utc>>,
    /// The judge's own clock, for the fallback by `expires`.
    local_now: DateTime<Utc>,
    host: String,
    me: Option<ProcessIdentity>,
}

impl Judge {
    /// `locks`: every lock, listed after the judge's own lock `own` was
    /// stored (it is among them unless a refresh replaced it meanwhile;
    /// the replacement, also this process's, then serves).
    pub fn after_own_lock(locks: &[StoredLock], own: &Id) -> Judge {
        let me = own_identity().cloned();
        let host = super::hostname();
        let store_now = locks
            .iter()
            .filter(|l| &l.id == own || is_this_process(&l.lock, &host, me.as_ref()))
            .filter_map(|l| l.stored)
            .max();
        Judge {
            store_now,
            local_now: Utc::now(),
            host,
            me,
        }
    }

    /// A judge at explicit times (tests, and stores without timestamps).
    pub fn at(store_now: Option<DateTime<Utc>>, local_now: DateTime<Utc>) -> Judge {
        Judge {
            store_now,
            local_now,
            host: super::hostname(),
            me: own_identity().cloned(),
        }
    }

    /// Whether `l` is a lock of this very process (never judged: a refresh
    /// may have replaced the copy the judge knows by id).
    pub fn is_mine(&self, l: &StoredLock) -> bool {
        is_this_process(&l.lock, &self.host, self.me.as_ref())
    }

    /// The store's "now" this judge works with, if the store gives times.
    pub fn store_now(&self) -> Option<DateTime<Utc>> {
        self.store_now
    }

    /// When `l` stops meaning anything, by the store's clock: its store
    /// timestamp plus its TTL. `None` if the store gave no timestamp or
    /// the lock records no TTL (then only [`Self::expired`]'s fallback
    /// applies).
    pub fn store_expiry(&self, l: &StoredLock) -> Option<DateTime<Utc>> {
        let ttl = chrono::Duration::try_seconds(i64::try_from(l.lock.ttl_s?).ok()?)?;
        l.stored?.checked_add_signed(ttl)
    }

    /// Whether `l` has expired: by the store's clock when both its
    /// timestamp and "now" are known; otherwise (a store without
    /// timestamps) by its `expires` against this host's clock.
    pub fn expired(&self, l: &StoredLock) -> bool {
        match (self.store_expiry(l), self.store_now) {
            (Some(expiry), Some(now)) => expiry <= now,
            _ => l.lock.expires <= self.local_now,
        }
    }

    /// Whether `l`'s holder is certainly gone: the lock expired, or the
    /// holder ran in this very pid namespace on this boot (same host, boot
    /// id and namespace) and its process no longer exists or is another
    /// process with the same pid (its start time differs). A lock from
    /// another host, container or boot, or without identity, is judged by
    /// age alone: its pid means nothing here.
    pub fn holder_is_gone(&self, l: &StoredLock) -> bool {
        self.expired(l) || (self.same_pid_space(&l.lock) && !holder_alive(&l.lock))
    }

    fn same_pid_space(&self, lock: &Lock) -> bool {
        match (&lock.process, &self.me) {
            (Some(theirs), Some(mine)) => {
                lock.host == self.host
                    && theirs.boot_id == mine.boot_id
                    && theirs.pid_ns == mine.pid_ns
            }
            _ => false,
        }
    }
}

fn is_this_process(lock: &Lock, host: &str, me: Option<&ProcessIdentity>) -> bool {
    lock.host == host
        && lock.pid == std::process::id()
        && me.is_some()
        && lock.process.as_ref() == me
}

/// Locks that have not expired in `judge`'s eyes.
pub async fn live_locks(repo: &Repository, judge: &Judge) -> Result<Vec<StoredLock>> {
    Ok(all_locks(repo)
        .await?
        .into_iter()
        .filter(|l| !judge.expired(l))
        .collect())
}

/// Whether the holder of `lock` (in our pid namespace) still runs: its pid
/// exists and, where readable, has the recorded start time.
fn holder_alive(lock: &Lock) -> bool {
    if !process_exists(lock.pid) {
        return false;
    }
    match (
        &lock.process,
        start_time(&format!("/proc/{}/stat", lock.pid)),
    ) {
        (Some(p), Some(now)) => p.start_time == now,
        // Cannot tell: alive, the safe side.
        _ => true,
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This process's identity ([`ProcessIdentity`]), or `None` where `/proc`
/// does not tell (another OS, /proc not mounted): its locks are then
/// judged by age only.
pub fn own_identity() -> Option<&'static ProcessIdentity> {
    static ME: std::sync::OnceLock<Option<ProcessIdentity>> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        Some(ProcessIdentity {
            boot_id: boot_id.trim().to_owned(),
            pid_ns: pid_ns.to_string_lossy().into_owned(),
            start_time: start_time("/proc/self/stat")?,
        })
    })
    .as_ref()
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` file.
fn start_time(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces
    // and parentheses itself: count from after the last ')' (field 3).
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Every lock object, expired or not, with its store timestamp, skipping
/// ones deleted while we read them (released) and damaged ones (reported).
/// Any other failure to read one (a transport error, a timeout, a refused
/// request) is an error: a live lock that cannot be read must not look
/// like no lock at all, or a clean-up or prune would act as if its writer
/// were gone.
pub async fn all_locks(repo: &Repository) -> Result<Vec<StoredLock>> {
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
            Ok(lock) => out.push(StoredLock {
                id,
                lock,
                stored: obj.last_modified,
            }),
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
        let judge = Judge::at(None, Utc::now());

        backend.failing.store(true, Ordering::SeqCst);
        let e = all_locks(&repo).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(e.to_string().contains(&id.to_string()), "{e}");
        assert!(live_locks(&repo, &judge).await.is_err());
        backend.failing.store(false, Ordering::SeqCst);

        // A damaged lock object is skipped, not fatal.
        let junk = names::in_dir(names::LOCKS, &Id::hash(b"junk"));
        backend
            .put(&junk, b"junk".to_vec().into(), PutMode::Create)
            .await
            .unwrap();
        let locks = all_locks(&repo).await.unwrap();
        assert_eq!(locks.iter().map(|l| l.id).collect::<Vec<_>>(), [id]);
        guard.release().await.unwrap();
        assert!(all_locks(&repo).await.unwrap().is_empty());
    }

    /// Expiry is decided by the store's clock (the lock object's timestamp
    /// plus its TTL against the judge's own lock's timestamp), whatever
    /// the writer's clock put in `expires`; `expires` only when the store
    /// gives no times.
    #[test]
    fn expiry_by_the_store_clock_with_expires_as_fallback() {
        let now = Utc::now();
        let h = chrono::Duration::hours;
        let lock = |expires, stored| StoredLock {
            id: Id([1; 32]),
            lock: Lock {
                version: 1,
                kind: LockKind::Backup,
                host: "elsewhere".into(),
                pid: 1,
                started: now,
                expires,
                nonce: "n".into(),
                ttl_s: Some(1800),
                process: None,
                holder: None,
            },
            stored,
        };
        let judge = Judge::at(Some(now), now);
        // A writer 10 h ahead, stored 2 h ago: expired 90 minutes ago.
        let ahead = lock(now + h(10), Some(now - h(2)));
        assert!(judge.expired(&ahead) && judge.holder_is_gone(&ahead));
        assert_eq!(
            judge.store_expiry(&ahead),
            Some(now - h(2) + chrono::Duration::minutes(30))
        );
        // A writer 10 h behind, stored just now: live.
        let behind = lock(now - h(10), Some(now));
        assert!(!judge.expired(&behind) && !judge.holder_is_gone(&behind));
        // No store timestamp, or no store "now": `expires` decides.
        assert!(judge.expired(&lock(now - chrono::Duration::seconds(1), None)));
        assert!(!Judge::at(None, now).expired(&ahead));
    }

    #[test]
    fn own_identity_reads_proc() {
        let me = own_identity().expect("Linux /proc");
        assert!(me.pid_ns.starts_with("pid:["), "{me:?}");
        assert_eq!(me.boot_id.len(), 36, "{me:?}");
        assert_eq!(
            start_time(&format!("/proc/{}/stat", std::process::id())),
            Some(me.start_time)
        );
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
