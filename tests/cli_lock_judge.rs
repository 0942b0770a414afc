//! How a backup's recovery judges other writers' locks (docs/FORMAT.md,
//! "Locks"): by the store's timestamps, never by the clock of the host
//! that wrote the lock, and by pid only within the judge's own pid
//! namespace on the same boot. Locks are forged as another process would
//! have written them (JSON, sealed with the repository's key).

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use common::{runtime, TestRepo};
use usdcop_dr::crypto::Domain;
use usdcop_dr::format::names;

/// Store `lock` (JSON) as a lock object; returns its file.
fn forge_lock(repo: &TestRepo, lock: serde_json::Value) -> PathBuf {
    let id = runtime().block_on(async {
        repo.open_lib()
            .await
            .save_sealed(
                names::LOCKS,
                Domain::Lock,
                &serde_json::to_vec(&lock).unwrap(),
            )
            .await
            .unwrap()
    });
    repo.path.join(names::in_dir(names::LOCKS, &id))
}

/// A backup lock as a writer whose clock reads `writer_now` writes it.
fn lock_json(host: &str, pid: u32, writer_now: chrono::DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "kind": "backup",
        "host": host,
        "pid": pid,
        "started": writer_now,
        "expires": writer_now + chrono::Duration::minutes(30),
        "nonce": "0011223344556677",
        "ttl_s": 1800,
    })
}

/// A backup; returns its `recovery` report (null: no dead lock found).
fn backup(repo: &TestRepo) -> serde_json::Value {
    let b = repo.backup_stdin("db", "dump.sql", b"some data");
    b["recovery"].clone()
}

fn hostname() -> String {
    usdcop_dr::repository::hostname()
}

/// A pid that is certainly not running: a child that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// This process's boot id and pid namespace (the CLI child shares them).
fn boot_and_ns() -> (String, String) {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    (boot.trim().to_owned(), ns.to_string_lossy().into_owned())
}

/// A live writer whose clock is 10 hours behind: its `expires` is long
/// past by ours, but the store wrote its lock just now. It is alive: the
/// backup leaves its lock alone (and defers nothing, as nothing is dead).
#[test]
fn a_fresh_lock_from_a_clock_hours_behind_is_live() {
    let repo = TestRepo::new();
    let behind = Utc::now() - chrono::Duration::hours(10);
    let lock = forge_lock(&repo, lock_json("other-host", 4242, behind));
    let rec = backup(&repo);
    assert!(rec.is_null(), "a live writer judged dead: {rec}");
    assert!(lock.exists(), "a live writer's lock was removed");
}

/// A writer whose clock is 10 hours ahead died 2 hours ago (the store
/// wrote its lock then: mtime): its `expires` is still 10 hours away by
/// our clock, but by the store's clock the lock expired 90 minutes ago.
/// The backup cleans up after it.
#[test]
fn a_stale_lock_from_a_clock_hours_ahead_has_expired() {
    let repo = TestRepo::new();
    let ahead = Utc::now() + chrono::Duration::hours(10);
    let lock = forge_lock(&repo, lock_json("other-host", 4242, ahead));
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
    filetime::set_file_mtime(&lock, filetime::FileTime::from_system_time(two_hours_ago)).unwrap();
    let rec = backup(&repo);
    assert_eq!(rec["dead_locks"], 1, "{rec}");
    assert_eq!(rec["deferred"], false, "{rec}");
    assert!(!lock.exists(), "the dead writer's lock is still there");
}

/// Containers sharing a hostname: a lock from this hostname but another
/// pid namespace names a pid that means nothing here (dead here, maybe
/// alive there). It is judged by age only: fresh, so alive.
#[test]
fn same_hostname_other_pid_namespace_is_not_judged_by_pid() {
    let repo = TestRepo::new();
    let (boot, _) = boot_and_ns();
    let mut l = lock_json(&hostname(), dead_pid(), Utc::now());
    l["process"] = serde_json::json!({
        "boot_id": boot,
        "pid_ns": "pid:[1]",
        "start_time": 1,
    });
    let lock = forge_lock(&repo, l);
    let rec = backup(&repo);
    assert!(
        rec.is_null(),
        "a writer in another container judged dead: {rec}"
    );
    assert!(lock.exists());
}

/// The same, without any process identity (an older lock format): age only.
#[test]
fn same_hostname_without_identity_is_not_judged_by_pid() {
    let repo = TestRepo::new();
    let lock = forge_lock(&repo, lock_json(&hostname(), dead_pid(), Utc::now()));
    let rec = backup(&repo);
    assert!(
        rec.is_null(),
        "judged dead by a pid of unknown namespace: {rec}"
    );
    assert!(lock.exists());
}

/// In our own pid namespace on this boot, a fresh lock whose process is
/// gone is dead, and so is one whose pid now belongs to another process
/// (pid reuse: the start time differs).
#[test]
fn same_pid_namespace_dead_or_reused_pid_is_dead() {
    let (boot, ns) = boot_and_ns();
    let identity =
        |start: u64| serde_json::json!({ "boot_id": boot, "pid_ns": ns, "start_time": start });
    // Gone.
    let repo = TestRepo::new();
    let mut l = lock_json(&hostname(), dead_pid(), Utc::now());
    l["process"] = identity(1);
    let lock = forge_lock(&repo, l);
    let rec = backup(&repo);
    assert_eq!(rec["dead_locks"], 1, "{rec}");
    assert!(!lock.exists());

    // Reused: this test process is alive, but started at another time
    // than the lock says.
    let repo = TestRepo::new();
    let mut l = lock_json(&hostname(), std::process::id(), Utc::now());
    l["process"] = identity(1);
    let lock = forge_lock(&repo, l);
    let rec = backup(&repo);
    assert_eq!(rec["dead_locks"], 1, "{rec}");
    assert!(!lock.exists());

    // Alive: this test process, with its real start time.
    let repo = TestRepo::new();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let mut l = lock_json(&hostname(), std::process::id(), Utc::now());
    l["process"] = identity(start);
    let lock = forge_lock(&repo, l);
    let rec = backup(&repo);
    assert!(rec.is_null(), "a live writer judged dead: {rec}");
    assert!(lock.exists());
}
