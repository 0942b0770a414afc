//! A backup whose lock can no longer be refreshed must stop before others
//! may judge it dead, and write no snapshot; a slow backup whose refreshes
//! work goes on past many TTLs and commits. The TTL and the refresh
//! interval are shortened through the test-only environment variables
//! (src/repository/lock.rs).

mod common;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{random_bytes, TestRepo};

/// A 6 s TTL, refreshed every second: the writer must stop once its last
/// stored lock copy is 4 s old (TTL minus a third).
const TTL_SECS: &str = "6";
const REFRESH_SECS: &str = "1";
const PIECE: usize = 64 * 1024;

struct SlowBackup {
    child: Child,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    feeder: JoinHandle<()>,
}

/// `backup stdin` fed `data` at the given pace: the first `burst` bytes at
/// once, then one piece every `pause`.
fn slow_backup(repo: &TestRepo, data: Arc<Vec<u8>>, burst: usize, pause: Duration) -> SlowBackup {
    let mut c = repo.cmd();
    c.args([
        "--json",
        "backup",
        "stdin",
        "--source",
        "slow",
        "--stdin-name",
        "slow.bin",
    ])
    .env("USDCOP_DR_LOCK_TTL_SECS", TTL_SECS)
    .env("USDCOP_DR_LOCK_REFRESH_SECS", REFRESH_SECS)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            if pipe.write_all(&data[..burst]).is_err() {
                return;
            }
            sent.store(burst, Ordering::SeqCst);
            for piece in data[burst..].chunks(PIECE) {
                std::thread::sleep(pause);
                if stop.load(Ordering::SeqCst) || pipe.write_all(piece).is_err() {
                    return;
                }
                sent.fetch_add(piece.len(), Ordering::SeqCst);
            }
        })
    };
    SlowBackup {
        child,
        stop,
        sent,
        feeder,
    }
}

/// Wait for the child (at most `limit`); returns (success, stdout, stderr).
fn wait(b: &mut SlowBackup, limit: Duration) -> (bool, String, String) {
    let clock = Instant::now();
    let status = loop {
        if let Some(s) = b.child.try_wait().unwrap() {
            break s;
        }
        if clock.elapsed() > limit {
            let _ = b.child.kill();
            b.stop.store(true, Ordering::SeqCst);
            panic!("backup still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    b.stop.store(true, Ordering::SeqCst);
    let (mut out, mut err) = (String::new(), String::new());
    b.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    b.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), out, err)
}

#[test]
fn backup_whose_lock_refreshes_fail_stops_and_writes_no_snapshot() {
    let repo = TestRepo::new();
    // 3 MiB at once (packs are 1 MiB: the writer is surely past its start
    // and its recovery once one is stored), then 64 KiB every 100 ms for
    // about 40 s: far longer than the lease may outlive a failed refresh.
    let data = Arc::new(random_bytes((3 << 20) + 400 * PIECE, 7));
    let mut b = slow_backup(&repo, data.clone(), 3 << 20, Duration::from_millis(100));
    let clock = Instant::now();
    while repo.objects("data").is_empty() || repo.objects("locks").is_empty() {
        assert!(
            b.child.try_wait().unwrap().is_none(),
            "backup ended before its first pack was stored"
        );
        assert!(
            clock.elapsed() < Duration::from_secs(60),
            "no pack stored within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every later lock write fails: `locks` is now a file, so no object can
    // be created under it (chmod would not stop root).
    let locks = repo.path.join("locks");
    std::fs::rename(&locks, repo.path.join("locks.moved")).unwrap();
    std::fs::write(&locks, b"not a directory").unwrap();
    let broken = Instant::now();

    let (ok, out, err) = wait(&mut b, Duration::from_secs(60));
    let stopped_after = broken.elapsed();
    let sent = b.sent.load(Ordering::SeqCst);
    eprintln!("stopped {stopped_after:?} after the break, {sent} bytes fed: {err}");
    b.feeder.join().unwrap();
    assert!(!ok, "backup succeeded with a lapsed lock: {out}\n{err}");
    assert!(
        err.contains("not refreshed for") && err.contains("without writing a snapshot"),
        "unclear error: {err}"
    );
    // It stopped while the source still had data: the lapse, not the end
    // of the input, ended it.
    assert!(
        sent < data.len(),
        "the backup read its whole input ({sent} bytes) instead of stopping"
    );
    assert!(
        stopped_after < Duration::from_secs(30),
        "stopped only {stopped_after:?} after its lock could no longer be refreshed"
    );
    assert!(
        repo.objects("snapshots").is_empty(),
        "a snapshot was written: {:?}",
        repo.objects("snapshots")
    );
}

#[test]
fn slow_backup_with_working_refreshes_outlives_its_ttl_and_commits() {
    let repo = TestRepo::new();
    // 1 MiB at once, then 64 KiB every 100 ms for about 12 s: twice the TTL,
    // so only refreshed lock copies keep the lease alive.
    let data = Arc::new(random_bytes((1 << 20) + 120 * PIECE, 8));
    let mut b = slow_backup(&repo, data.clone(), 1 << 20, Duration::from_millis(100));
    let clock = Instant::now();
    let (ok, out, err) = wait(&mut b, Duration::from_secs(120));
    b.feeder.join().unwrap();
    assert!(ok, "healthy slow backup failed: {err}");
    assert!(
        clock.elapsed() > Duration::from_secs(8),
        "the backup did not outlive its TTL ({:?}): the test proves nothing",
        clock.elapsed()
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = summary["snapshot_id"].as_str().unwrap().to_owned();
    assert_eq!(repo.objects("snapshots").len(), 1);
    assert!(
        repo.restore_stdout(&id) == *data,
        "restored bytes differ from the input"
    );
    // The lock was released at the end.
    assert!(
        repo.objects("locks").is_empty(),
        "{:?}",
        repo.objects("locks")
    );
}
