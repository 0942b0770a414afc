//! A backup killed in the middle of a multipart upload (moto) leaves no
//! snapshot, and the next backup cleans up everything it left: the
//! unfinished upload is aborted, its completed but unindexed packs are
//! indexed and re-used, its lock is removed. The restore is byte-exact.
//! At a bucket root, the clean-up spares uploads that are not its own.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{command, random_bytes, run_cmd, Run};
use servers::{S3Server, ServerKind};

const REPO: &str = "s3://repo-bucket/crash";
const BLOCK: usize = 1 << 20;

fn bin(server: &S3Server) -> Command {
    let mut c = command(std::path::Path::new(REPO));
    c.envs(server.env());
    c
}

fn cmd(server: &S3Server, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut c = bin(server);
    c.args(args);
    run_cmd(c, stdin)
}

fn tool(server: &S3Server, args: &[&str]) -> serde_json::Value {
    server.bucket_tool(args)
}

/// Block `i` of the endless deterministic input stream.
fn block(i: u64) -> Vec<u8> {
    random_bytes(BLOCK, 1000 + i)
}

fn keys_under(server: &S3Server, dir: &str) -> Vec<String> {
    let all = tool(server, &["keys", "repo-bucket"]);
    all.as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .filter(|k| k.starts_with(&format!("crash/{dir}/")))
        .map(str::to_owned)
        .collect()
}

/// Start a backup fed by an endless stream; kill it (SIGKILL) once a pack
/// is complete and another is in the middle of its multipart upload.
/// Returns how many bytes were fed before the kill.
fn kill_mid_upload(server: &S3Server) -> u64 {
    let mut c = bin(server);
    c.args([
        "backup",
        "stdin",
        "--source",
        "crash",
        "--stdin-name",
        "dump.bin",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn backup");
    let mut stdin = child.stdin.take().unwrap();
    let fed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (fed, stop) = (fed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if stdin.write_all(&block(i)).is_err() {
                    break;
                }
                i += 1;
                fed.store(i * BLOCK as u64, Ordering::SeqCst);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(
            Instant::now() < deadline,
            "no multipart upload seen in time"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it could be killed"
        );
        let pending = tool(server, &["uploads", "repo-bucket"]);
        if !pending.as_array().unwrap().is_empty() && !keys_under(server, "data").is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    fed.load(Ordering::SeqCst)
}

/// The unfinished uploads once the store has finished what the killed
/// process had already sent: a CompleteMultipartUpload that left before
/// the kill may still be at work in the server (moto is slow with large
/// parts), and would complete an upload seen as pending a moment before.
fn settled_uploads(server: &S3Server) -> Vec<serde_json::Value> {
    let list = || {
        tool(server, &["uploads", "repo-bucket"])
            .as_array()
            .unwrap()
            .clone()
    };
    let mut last = list();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = list();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

#[test]
fn killed_multipart_backup_leaves_nothing_the_next_backup_does_not_clean() {
    let server = S3Server::start(ServerKind::Moto);
    server.create_bucket("repo-bucket");
    // 24 MiB packs: above the 16 MiB multipart threshold.
    cmd(
        &server,
        &[
            "init",
            "--kdf-memory-kib",
            "1024",
            "--pack-size",
            "25165824",
        ],
        None,
    )
    .ok();

    // A kill can land between two uploads (more often on a loaded
    // machine, where an upload may finish between the poll that saw it
    // and the kill); try until one lands inside.
    let mut fed = 0;
    let mut pending = vec![];
    for _ in 0..6 {
        fed = kill_mid_upload(&server);
        pending = settled_uploads(&server);
        if !pending.is_empty() {
            break;
        }
    }
    assert!(
        !pending.is_empty(),
        "never killed inside a multipart upload"
    );
    let packs_before = keys_under(&server, "data");
    assert!(!packs_before.is_empty());
    assert_eq!(
        keys_under(&server, "locks").len(),
        1,
        "the dead backup's lock"
    );
    let snaps = cmd(&server, &["--json", "snapshots"], None).ok().json();
    assert_eq!(snaps.as_array().unwrap().len(), 0, "no snapshot: {snaps}");

    // The next backup: the same stream, as far as the killed one was fed.
    let blocks = fed.div_ceil(BLOCK as u64);
    let mut input = Vec::with_capacity((blocks as usize) * BLOCK);
    for i in 0..blocks {
        input.extend_from_slice(&block(i));
    }
    let b = cmd(
        &server,
        &[
            "--json",
            "backup",
            "stdin",
            "--source",
            "crash",
            "--stdin-name",
            "dump.bin",
        ],
        Some(&input),
    )
    .ok()
    .json();
    eprintln!(
        "killed after {fed} bytes fed, {} pending upload(s), {} pack(s) complete; next backup: {b}",
        pending.len(),
        packs_before.len()
    );
    let rec = &b["recovery"];
    assert_eq!(rec["dead_locks"], 1, "{b}");
    assert_eq!(rec["deferred"], false, "{b}");
    assert!(
        rec["unfinished_writes_aborted"].as_u64().unwrap() >= 1,
        "{b}"
    );
    // The killed run's completed packs are re-used, not uploaded again.
    let stored = b["bytes_stored_new"].as_u64().unwrap();
    let bytes_in = b["bytes_in"].as_u64().unwrap();
    assert!(
        stored + 16 * (1 << 20) < bytes_in,
        "stored {stored} of {bytes_in}: completed packs were not re-used"
    );

    // Nothing left behind: no unfinished upload, no lock, no unindexed pack.
    let pending = tool(&server, &["uploads", "repo-bucket"]);
    assert_eq!(pending.as_array().unwrap().len(), 0, "{pending}");
    assert!(keys_under(&server, "locks").is_empty());
    let repair = cmd(&server, &["--json", "repair", "index"], None)
        .ok()
        .json();
    assert_eq!(repair["packs_unindexed"], 0, "{repair}");

    let snaps = cmd(&server, &["--json", "snapshots"], None).ok().json();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    let id = b["snapshot_id"].as_str().unwrap();
    let restored = cmd(&server, &["restore", "--snapshot", id, "--stdout"], None).ok();
    assert!(restored.stdout == input, "restored bytes differ");
    cmd(&server, &["verify", "--read-data"], None).ok();
}

/// A repository at the root of a shared bucket (empty prefix): the clean-up
/// after a killed backup aborts its own pack uploads only. Another
/// application's upload and a nested repository's pack upload in the same
/// bucket survive. (Age is covered in tests/backend_s3.rs on Garage: moto
/// answers one fixed `Initiated` for every upload.)
#[test]
fn recovery_at_a_bucket_root_spares_foreign_and_nested_uploads() {
    let server = S3Server::start(ServerKind::Moto);
    server.create_bucket("shared");
    let root = std::path::Path::new("s3://shared");
    let run = |args: &[&str], stdin: Option<&[u8]>| {
        let mut c = command(root);
        c.envs(server.env()).args(args);
        run_cmd(c, stdin)
    };
    run(&["init", "--kdf-memory-kib", "1024"], None).ok();

    // A backup killed while it holds its lock (waiting for its input).
    let mut c = command(root);
    c.envs(server.env())
        .args(["backup", "stdin", "--source", "s", "--stdin-name", "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn backup");
    let deadline = Instant::now() + Duration::from_secs(60);
    let has_lock = || {
        tool(&server, &["keys", "shared"])
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k.as_str().unwrap().starts_with("locks/"))
    };
    while !has_lock() {
        assert!(Instant::now() < deadline, "the backup never took its lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Its unfinished pack upload, and two that are not ours.
    let hex = |c: char| c.to_string().repeat(64);
    let ours = format!("data/aa/{}", hex('a'));
    let nested = format!("sub/data/bb/{}", hex('b'));
    for key in [ours.as_str(), "other-app/big.bin", nested.as_str()] {
        tool(&server, &["start-upload", "shared", key]);
    }

    let b = run(
        &[
            "--json",
            "backup",
            "stdin",
            "--source",
            "s",
            "--stdin-name",
            "x",
        ],
        Some(b"after the crash"),
    )
    .ok()
    .json();
    assert_eq!(b["recovery"]["dead_locks"], 1, "{b}");
    assert_eq!(b["recovery"]["unfinished_writes_aborted"], 1, "{b}");
    let mut left: Vec<String> = tool(&server, &["uploads", "shared"])
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["other-app/big.bin".to_owned(), nested]);
}
