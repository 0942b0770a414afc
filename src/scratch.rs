//! Decrypted data on local disk: private scratch space, and its removal
//! however a run ends.
//!
//! A restore sometimes has to put plaintext of an encrypted backup on local
//! disk: `restore bucket` spools objects too large for memory, `restore
//! postgres --jobs N` stages the dump for a parallel pg_restore, a
//! directory restore writes each file under a temporary name beside its
//! destination. So:
//!
//! - spools and staged dumps live in a [`PrivateDir`]: a directory of mode
//!   0700 made for this run only (`usdcop-dr-<pid>-<random>` under
//!   `--staging-dir` or `$TMPDIR`), holding files of mode 0600 created
//!   with `O_EXCL` (never through a planted name or link);
//! - every such path is *registered* while it exists, and dropping its
//!   guard removes it: success, error paths, panics and cancelled tasks;
//! - [`remove_all`] removes every registered path and refuses any new one.
//!   The binary calls it from its SIGINT/SIGTERM handler
//!   ([`handle_signals`], which then exits 130/143) and once the command
//!   has returned, before the runtime drops tasks still running (their
//!   guards would not run then).
//!
//! A path is created while its shard of the registry is locked: it is
//! either created and registered before [`remove_all`] reaches that shard
//! (which then removes it), or refused after; never created unseen. The
//! registry has [`SHARDS`] shards, each thread using one of its own, so
//! that threads writing many small files side by side do not wait for one
//! another's `open(O_CREAT)` (one lock made a parallel restore no faster).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Exit code after SIGINT (128 + 2), as a shell reports it.
pub const EXIT_SIGINT: i32 = 130;
/// Exit code after SIGTERM (128 + 15).
pub const EXIT_SIGTERM: i32 = 143;

/// What a registration removes.
#[derive(Debug)]
enum Target {
    /// A directory and everything in it (a [`PrivateDir`]).
    Dir(PathBuf),
    /// A file named relative to an open directory (a restore's temporary
    /// file beside its destination): removed with `unlinkat`, so no link
    /// on the way to it is followed, whatever changed in the target since.
    FileAt(Arc<OwnedFd>, CString),
    /// A child process still running (pg_restore on a staged dump, say):
    /// sent SIGTERM, so that it does not go on against the database after
    /// the run was stopped. Registered only while it has not been waited
    /// for, so the pid cannot belong to another process yet.
    Child(u32),
}

/// Paths to remove if the run stops now.
struct Registry {
    next: u64,
    paths: BTreeMap<u64, Target>,
    /// Set by [`Registry::remove_all`]: the run is ending.
    closed: bool,
}

impl Registry {
    const fn new() -> Registry {
        Registry {
            next: 0,
            paths: BTreeMap::new(),
            closed: false,
        }
    }

    /// Create the target with `create` and register it, unless the run is
    /// ending. Both happen under the registry's lock, so [`remove_all`]
    /// either sees the target or refuses it.
    fn add<T>(&mut self, create: impl FnOnce() -> io::Result<(Target, T)>) -> io::Result<(u64, T)> {
        if self.closed {
            return Err(io::Error::other(
                "the run is stopping: no new temporary files",
            ));
        }
        let (target, made) = create()?;
        self.next += 1;
        self.paths.insert(self.next, target);
        Ok((self.next, made))
    }

    /// Forget `id`; remove its path too when `delete`. What is only
    /// forgotten is returned, to be dropped (a descriptor closed) after the
    /// lock is released.
    fn remove(&mut self, id: u64, delete: bool) -> Option<Target> {
        let target = self.paths.remove(&id)?;
        if delete {
            delete_target(&target);
        }
        Some(target)
    }

    fn remove_all(&mut self) -> usize {
        self.closed = true;
        let paths = std::mem::take(&mut self.paths);
        for target in paths.values() {
            delete_target(target);
        }
        paths.len()
    }
}

fn delete_target(target: &Target) {
    match target {
        Target::Dir(path) => {
            let _ = std::fs::remove_dir_all(path);
        }
        // SAFETY: the name is NUL-terminated and the descriptor open;
        // a failure (already renamed or removed) is ignored.
        Target::FileAt(dir, name) => unsafe {
            libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0);
        },
        // SAFETY: kill has no memory effects; the pid is an unreaped child.
        Target::Child(pid) => unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGTERM);
        },
    }
}

/// Shards of the registry (see the module's documentation).
const SHARDS: usize = 16;

static REGISTRY: [Mutex<Registry>; SHARDS] = [const { Mutex::new(Registry::new()) }; SHARDS];

/// Where a registration lives: its shard and its number there.
#[derive(Debug, Clone, Copy)]
struct Slot {
    shard: usize,
    id: u64,
}

thread_local! {
    /// This thread's shard, handed out in turn.
    static SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS
    };
}

fn shard(i: usize) -> MutexGuard<'static, Registry> {
    // A panic elsewhere while holding the lock leaves the map consistent
    // (every change is one insert or remove): keep using it.
    REGISTRY[i].lock().unwrap_or_else(|p| p.into_inner())
}

/// Create and register a target in this thread's shard ([`Registry::add`]).
fn add<T>(create: impl FnOnce() -> io::Result<(Target, T)>) -> io::Result<(Slot, T)> {
    let i = SHARD.with(|s| *s);
    let (id, made) = shard(i).add(create)?;
    Ok((Slot { shard: i, id }, made))
}

/// Forget a registration (removing its path when `delete`); a descriptor
/// it held is closed after the shard's lock is released.
fn remove(slot: Slot, delete: bool) {
    let target = shard(slot.shard).remove(slot.id, delete);
    drop(target);
}

/// Remove every registered file and directory now, and refuse new ones
/// from here on (the process is about to exit). Returns how many paths
/// were registered.
pub fn remove_all() -> usize {
    (0..SHARDS).map(|i| shard(i).remove_all()).sum()
}

/// A directory of mode 0700 for this run's decrypted spools, removed with
/// everything in it when dropped (or by [`remove_all`]).
#[derive(Debug)]
pub struct PrivateDir {
    slot: Slot,
    path: PathBuf,
}

impl PrivateDir {
    /// A new directory `usdcop-dr-<pid>-<random>` under `base`, or under
    /// the temporary directory (`$TMPDIR`, else `/tmp`).
    pub fn create(base: Option<&Path>) -> Result<PrivateDir> {
        let base = base.map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        remove_dead_runs(&base);
        let path = base.join(format!(
            "usdcop-dr-{}-{}",
            std::process::id(),
            hex::encode(crate::crypto::random_bytes::<6>())
        ));
        let (slot, ()) = add(|| {
                // mkdir fails on any existing name (a link included), and
                // the mode is set again in case the umask took bits away.
                DirBuilder::new().mode(0o700).create(&path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
                Ok((Target::Dir(path.clone()), ()))
            })
            .map_err(|e| {
                Error::io(format!(
                    "cannot create a private directory in {} for temporary data: {e}",
                    base.display()
                ))
                .with_hint("point TMPDIR (or, for restores, --staging-dir) at a writable directory with room for it")
            })?;
        Ok(PrivateDir { slot, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new empty file of mode 0600 in this directory, open for writing.
    /// `name` must be unique within the run (callers add a counter or a
    /// random part).
    pub fn create_file(&self, name: &str) -> Result<(PathBuf, File)> {
        let path = self.path.join(name);
        let reg = shard(self.slot.shard);
        if reg.closed || !reg.paths.contains_key(&self.slot.id) {
            return Err(Error::io(format!(
                "cannot create {}: the run is stopping",
                path.display()
            )));
        }
        let file = create_private(&path)
            .map_err(|e| Error::io(format!("cannot create {}: {e}", path.display())))?;
        drop(reg);
        Ok((path, file))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        remove(self.slot, true);
    }
}

/// A file created relative to an open directory by [`create_at`]: a
/// signal removes it ([`remove_all`]). Dropping the guard only forgets it:
/// its owner renames it into place or removes it.
#[derive(Debug)]
pub struct Registered {
    slot: Slot,
}

/// Create file `name` in directory `dir` with `create` (which must use
/// `O_EXCL | O_NOFOLLOW`) and register it for removal on a signal, both
/// under the registry's lock: never created unseen. The registration
/// shares `dir` (no descriptor is duplicated per file).
pub fn create_at<T>(
    dir: &Arc<OwnedFd>,
    name: &CStr,
    create: impl FnOnce() -> io::Result<T>,
) -> io::Result<(Registered, T)> {
    let (slot, made) = add(|| {
        let made = create()?;
        Ok((Target::FileAt(dir.clone(), name.to_owned()), made))
    })?;
    Ok((Registered { slot }, made))
}

impl Drop for Registered {
    fn drop(&mut self) {
        remove(self.slot, false);
    }
}

/// Register a child process just started, so that a signal stopping the
/// run stops it too ([`remove_all`] sends it SIGTERM). Drop the guard
/// *before* waiting for the child: once reaped, its pid may be reused.
/// Refused (the caller kills the child) once the run is stopping.
pub fn register_child(pid: u32) -> io::Result<Registered> {
    let (slot, ()) = add(|| Ok((Target::Child(pid), ())))?;
    Ok(Registered { slot })
}

/// Register an existing directory (a drill's restore target, say) for
/// removal by a signal. Dropping the guard only forgets it: its owner
/// removes it. Refused once the run is stopping.
pub fn register_path(path: &Path) -> io::Result<Registered> {
    let (slot, ()) = add(|| Ok((Target::Dir(path.to_owned()), ())))?;
    Ok(Registered { slot })
}

/// An asynchronous clean-up (drop a scratch database, empty a scratch
/// bucket) the signal handler runs before the process exits.
pub type Cleanup =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

static CLEANUPS: Mutex<BTreeMap<u64, Cleanup>> = Mutex::new(BTreeMap::new());
static NEXT_CLEANUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long the signal handler waits for the clean-ups, in all.
pub const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// While the guard lives, a SIGINT/SIGTERM runs `cleanup` (at most
/// [`CLEANUP_TIMEOUT`] for all of them) before the process exits.
/// Dropping the guard forgets it: its owner cleans up on the normal path.
#[must_use]
pub struct CleanupGuard {
    id: u64,
}

pub fn register_cleanup(cleanup: Cleanup) -> CleanupGuard {
    let id = NEXT_CLEANUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    CLEANUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, cleanup);
    CleanupGuard { id }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        CLEANUPS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Run (and forget) every registered clean-up, concurrently, for at most
/// [`CLEANUP_TIMEOUT`]; returns how many there were.
pub async fn run_cleanups() -> usize {
    let all: Vec<Cleanup> =
        std::mem::take(&mut *CLEANUPS.lock().unwrap_or_else(|p| p.into_inner()))
            .into_values()
            .collect();
    let n = all.len();
    let futures: Vec<_> = all.into_iter().map(|c| c()).collect();
    let _ = tokio::time::timeout(CLEANUP_TIMEOUT, futures::future::join_all(futures)).await;
    n
}

/// A run's directory is left behind only when its process was killed
/// with SIGKILL (the OOM killer, `timeout -s KILL`), which no handler
/// sees. Such a directory is removed by a later run when it is ours (same
/// owner, a real directory, not a link), its process is gone, and it has
/// not changed for [`DEAD_RUN_AGE`] (a process of another PID namespace
/// sharing the directory would look gone; the age keeps its live spool).
const DEAD_RUN_AGE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

fn remove_dead_runs(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let Some(pid) = run_pid(&e.file_name().to_string_lossy()) else {
            continue;
        };
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let old = m
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > DEAD_RUN_AGE);
        if !m.is_dir() || m.uid() != me || !old {
            continue;
        }
        // SAFETY: signal 0 sends nothing; it only asks whether `pid` exists.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The PID in a [`PrivateDir`] name `usdcop-dr-<pid>-<12 hex>`.
fn run_pid(name: &str) -> Option<i32> {
    let (pid, random) = name.strip_prefix("usdcop-dr-")?.split_once('-')?;
    if random.len() != 12 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a SIGINT/SIGTERM is being handled: the process exits once the
/// handler is done (the command's own end, and records of a failure it
/// caused, must wait or be skipped).
pub fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Install the SIGINT/SIGTERM handler on the current tokio runtime: on
/// either signal, run the registered clean-ups ([`run_cleanups`]), then
/// remove every registered path ([`remove_all`]), call
/// `report(signal name, exit code, paths removed)` (the binary prints
/// there; this library does not) and exit with [`EXIT_SIGINT`] /
/// [`EXIT_SIGTERM`].
///
/// The handler runs as its own task on a worker thread, so it acts even
/// while the command's own future is busy or blocked (waiting for
/// pg_restore, for instance). Must be called inside the runtime.
pub fn handle_signals(report: impl FnOnce(&str, i32, usize) + Send + 'static) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Error::io(format!("cannot handle {name}: {e}")))
    };
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    tokio::spawn(async move {
        let (name, code) = tokio::select! {
            _ = int.recv() => ("SIGINT", EXIT_SIGINT),
            _ = term.recv() => ("SIGTERM", EXIT_SIGTERM),
        };
        STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
        // The clean-ups first: one may stop a server running on a
        // registered directory (a drill's recovered copy), which must not
        // lose its data directory under it. They take a second or two
        // (at most CLEANUP_TIMEOUT).
        let cleaned = run_cleanups().await;
        let removed = remove_all() + cleaned;
        report(name, code, removed);
        std::process::exit(code);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_dir_is_0700_its_files_0600_and_both_vanish_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let dir = PrivateDir::create(Some(base.path())).unwrap();
        assert!(dir.path().starts_with(base.path()));
        assert_eq!(mode(dir.path()), 0o700);
        let (p, mut f) = dir.create_file("spool-1").unwrap();
        io::Write::write_all(&mut f, b"plaintext").unwrap();
        assert_eq!(mode(&p), 0o600);
        // The same name twice is refused (O_EXCL), not truncated.
        assert!(dir.create_file("spool-1").is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"plaintext");
        drop(dir);
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    }

    #[test]
    fn directories_of_killed_runs_are_removed_by_the_next_one() {
        let base = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - DEAD_RUN_AGE * 2;
        let make = |name: &str, age: std::time::SystemTime| {
            let d = base.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("spool-1"), b"plaintext").unwrap();
            File::open(&d).unwrap().set_modified(age).unwrap();
            d
        };
        // No process has a PID above the kernel's maximum (2^22).
        let dead = make("usdcop-dr-2000000000-0123456789ab", old);
        let alive = make(
            &format!("usdcop-dr-{}-0123456789ab", std::process::id()),
            old,
        );
        let recent = make(
            "usdcop-dr-2000000001-0123456789ab",
            std::time::SystemTime::now(),
        );
        let other = make("usdcop-dr-2000000002-not-a-run", old);
        let target = make("elsewhere", old);
        let link = base.path().join("usdcop-dr-2000000003-0123456789ab");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dir = PrivateDir::create(Some(base.path())).unwrap();
        assert!(!dead.exists(), "a killed run's directory is removed");
        for kept in [&alive, &recent, &other, &target] {
            assert!(
                kept.join("spool-1").exists(),
                "{} was removed",
                kept.display()
            );
        }
        assert!(link.symlink_metadata().is_ok(), "a link is never followed");
        drop(dir);
    }

    #[test]
    fn private_dir_creation_names_the_base_on_failure() {
        let e = PrivateDir::create(Some(Path::new("/nonexistent/usdcop-dr-base"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/usdcop-dr-base"), "{e}");
        assert!(e.hint().unwrap().contains("--staging-dir"));
    }

    /// `openat(dir, name, O_CREAT | O_EXCL | O_NOFOLLOW, 0600)`.
    fn create_in(dir: &File, name: &CStr) -> io::Result<OwnedFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: name NUL-terminated, dir open; the fd is owned on success.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    #[test]
    fn a_file_created_at_a_directory_is_removed_there_even_after_the_path_changed() {
        use std::os::fd::AsFd;
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let dir = File::open(&real).unwrap();
        let mut reg = Registry::new();
        let name = CString::new("a.tmp").unwrap();
        reg.add(|| {
            let fd = create_in(&dir, &name)?;
            Ok((
                Target::FileAt(Arc::new(dir.as_fd().try_clone_to_owned()?), name.clone()),
                fd,
            ))
        })
        .unwrap();
        assert_eq!(mode(&real.join("a.tmp")), 0o600);
        // The directory's path now leads elsewhere (a link planted in its
        // place, with a file of the same name behind it): the removal
        // still hits the file that was created, and only that one.
        let moved = base.path().join("moved");
        std::fs::rename(&real, &moved).unwrap();
        let decoy = base.path().join("decoy");
        std::fs::create_dir(&decoy).unwrap();
        std::fs::write(decoy.join("a.tmp"), b"not ours").unwrap();
        std::os::unix::fs::symlink(&decoy, &real).unwrap();
        assert_eq!(reg.remove_all(), 1);
        assert!(!moved.join("a.tmp").exists());
        assert_eq!(std::fs::read(decoy.join("a.tmp")).unwrap(), b"not ours");
    }

    #[test]
    fn remove_all_removes_everything_registered_and_refuses_new_paths() {
        // A registry of its own: the global one must stay open for the
        // other tests of this process.
        let base = tempfile::tempdir().unwrap();
        let dir = File::open(base.path()).unwrap();
        let mut reg = Registry::new();
        let d = base.path().join("d");
        reg.add(|| Ok((Target::Dir(d.clone()), std::fs::create_dir(&d)?)))
            .unwrap();
        std::fs::write(d.join("inner"), b"x").unwrap();
        let f = CString::new("f").unwrap();
        reg.add(|| {
            let fd = create_in(&dir, &f)?;
            Ok((Target::FileAt(Arc::new(fd_of(&dir)?), f.clone()), fd))
        })
        .unwrap();
        assert_eq!(reg.remove_all(), 2);
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
        let g = CString::new("g").unwrap();
        let refused = reg
            .add(|| {
                let fd = create_in(&dir, &g)?;
                Ok((Target::FileAt(Arc::new(fd_of(&dir)?), g.clone()), fd))
            })
            .unwrap_err();
        assert!(refused.to_string().contains("stopping"), "{refused}");
        assert!(
            !base.path().join("g").exists(),
            "nothing is created once the run is stopping"
        );
    }

    fn fd_of(f: &File) -> io::Result<OwnedFd> {
        use std::os::fd::AsFd;
        f.as_fd().try_clone_to_owned()
    }
}
