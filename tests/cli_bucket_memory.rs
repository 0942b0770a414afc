//! The bucket source's memory does not grow with the bucket: the
//! no-change backup of 20,000 objects with long keys (Garage), which reuses
//! every object (no GET, nothing new stored, not even a list tree node),
//! peaks within one copy of the extra keys of a 5,000-object backup's
//! peak, and the first backup within two (the writer's pending pack
//! grows with new chunks) — a source that collects the listing, its
//! entries or the parent's entries holds several such copies. The
//! snapshot then restores byte-identical.
//!
//! A second test: objects of more than 1,024 chunks (a chunk tree of
//! their own) are reused by a no-change run and restore.
//!
//! Peak RSS is the child's own `ru_maxrss` (wait4), exact even for a peak
//! in its last moment. `USDCOP_DR_BUCKET_MEMORY_OBJECTS` sets the object
//! count; `USDCOP_DR_BUCKET_MEMORY_BIN` runs another build of the binary
//! (to measure an older version: the memory bounds are then reported, not
//! asserted).

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, PASSWORD};
use servers::{S3Server, ServerKind};

/// The fixture's keys (tests/data/s3_bucket_tool.py `create-long`): four
/// components, ~770 bytes, so that the keys dominate what a collecting
/// source would hold.
fn key(i: usize) -> String {
    format!(
        "{}/{}/{:02}/{}-{i:06}",
        "d".repeat(250),
        "e".repeat(250),
        i % 97,
        // A component of at most 255 bytes: a restore makes it a file name.
        "f".repeat(240)
    )
}

/// The fixture's content of object `i`.
fn body(i: usize) -> Vec<u8> {
    format!("{i:06}").repeat(1 + i % 7).into_bytes()
}

fn json_u64(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {v}"))
}

/// Run `c` to completion within `timeout`; its output and its peak RSS
/// (KiB, the child's own `ru_maxrss` from wait4). Killed (its process
/// group) and the test failed past the deadline.
fn run_measured(mut c: Command, timeout: Duration) -> (Run, u64) {
    c.stdin(Stdio::null());
    let shown = common::guard_child(&mut c);
    // Reaped by wait4 below (which clippy does not see), or by wait()
    // after the kill.
    #[allow(clippy::zombie_processes)]
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {shown}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    let (status, rss) = loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child; `ru` is written by it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break (status, ru.ru_maxrss as u64);
        }
        if Instant::now() >= deadline {
            // SAFETY: the group we created; the child is not reaped yet.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = child.wait();
            panic!("command did not finish within {timeout:?} and was killed: {shown}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let run = Run {
        code,
        stdout: stdout.join().unwrap(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
    };
    (run, rss)
}

#[test]
fn bucket_backup_memory_is_bounded_and_a_no_change_run_reuses_everything() {
    let t0 = Instant::now();
    let objects: usize = std::env::var("USDCOP_DR_BUCKET_MEMORY_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // Large enough that the source's bounded buffers (listing pages ahead,
    // the window of objects in flight, the channel to the list builder)
    // fill in both runs: the difference is then what grows with the bucket.
    let small = objects / 4;
    let measuring = std::env::var_os("USDCOP_DR_BUCKET_MEMORY_BIN").is_some();
    let bin = std::env::var("USDCOP_DR_BUCKET_MEMORY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_usdcop-dr").to_owned());
    let server = S3Server::start(ServerKind::Garage);
    server.create_bucket("small-bucket");
    server.create_bucket("big-bucket");
    server.bucket_tool(&["create-long", "small-bucket", &small.to_string()]);
    let created = server.bucket_tool(&["create-long", "big-bucket", &objects.to_string()]);
    eprintln!("created {created} in {:?}", t0.elapsed());
    assert_eq!(json_u64(&created, "objects"), objects as u64);

    // A local repository: only the source is on Garage.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let cache = dir.path().join("cache");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.envs(server.env())
            .env("USDCOP_DR_PASSWORD", PASSWORD)
            .env("USDCOP_DR_CACHE_DIR", &cache)
            .env_remove("USDCOP_DR_PASSWORD_FILE")
            .env_remove("USDCOP_DR_REPO")
            .arg("--repo")
            .arg(&repo)
            .args(args);
        c
    };
    let timeout = Duration::from_secs(600);
    let (init, _) = run_measured(
        cmd(&["init", "--kdf-memory-kib", "1024", "--pack-size", "4194304"]),
        timeout,
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    let backup = |source: &str, bucket: &str| {
        let t = Instant::now();
        let (r, rss) = run_measured(
            cmd(&[
                "--json",
                "backup",
                "bucket",
                "--source",
                source,
                "--endpoint",
                &server.endpoint,
                "--bucket",
                bucket,
            ]),
            timeout,
        );
        assert_eq!(r.code, 0, "backup of {bucket} failed: {}", r.stderr);
        let v = r.json();
        eprintln!(
            "backup of {bucket}: {:?}, peak RSS {} KiB, files {} (unchanged {}), GETs {}",
            t.elapsed(),
            rss,
            v["files"],
            v["files_unchanged"],
            v["source_requests"]["get"]
        );
        (v, rss)
    };

    let (_, baseline) = backup("small", "small-bucket");
    let (first, first_rss) = backup("big", "big-bucket");
    assert_eq!(json_u64(&first, "files"), objects as u64);
    assert_eq!(json_u64(&first, "files_unchanged"), 0);
    assert_eq!(json_u64(&first, "bytes_in"), json_u64(&created, "bytes"));
    let (again, again_rss) = backup("big", "big-bucket");
    assert_eq!(json_u64(&again, "files"), objects as u64);
    assert_eq!(
        json_u64(&again, "files_unchanged"),
        objects as u64,
        "{again}"
    );
    assert_eq!(json_u64(&again["source_requests"], "get"), 0, "{again}");
    assert_eq!(json_u64(&again, "bytes_stored_new"), 0, "{again}");
    // Same entries in the same order: every list tree node is the parent's.
    assert_eq!(json_u64(&again, "tree_bytes_stored_new"), 0, "{again}");

    // One copy of the keys the big bucket has more: a source holding the
    // listing, its entries or the parent's entries whole holds several
    // (the listed key, the entry's path and key, the parent's path and key).
    let keys_kib = (small..objects).map(|i| key(i).len() as u64).sum::<u64>() / 1024;
    eprintln!(
        "peak RSS: {small} objects {baseline} KiB; {objects} objects: first {first_rss} KiB, \
         no-change {again_rss} KiB; the extra keys once: {keys_kib} KiB"
    );
    // The no-change run is the source's memory alone (the writer stores
    // nothing): within one copy of the extra keys (the collecting source
    // measured +82 MiB here). A first run also grows the writer's state
    // with the number of new chunks until their pack is written (pack
    // header, index records; bounded by the pack caps, not by the
    // bucket): within two copies (the collecting source: +48 MiB).
    for (what, rss, copies) in [("no-change", again_rss, 1), ("first", first_rss, 2)] {
        if measuring && rss >= baseline + copies * keys_kib {
            eprintln!("MEASURING: {what} backup exceeds the bound: {rss} KiB");
            continue;
        }
        assert!(
            rss < baseline + copies * keys_kib,
            "{what} backup of {objects} objects peaked at {rss} KiB, more than the \
             {small}-object backup's {baseline} KiB plus {copies} cop(ies) of the extra \
             keys ({keys_kib} KiB each)"
        );
    }

    // The no-change snapshot restores byte-identical.
    let target = dir.path().join("restored");
    let t = Instant::now();
    let snap = again["snapshot_id"].as_str().unwrap().to_owned();
    let (r, restore_rss) = run_measured(
        cmd(&[
            "--json",
            "restore",
            "--snapshot",
            &snap,
            "--target",
            target.to_str().unwrap(),
        ]),
        timeout,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    eprintln!(
        "restore of {objects} objects: {:?}, peak RSS {restore_rss} KiB",
        t.elapsed()
    );
    assert_eq!(json_u64(&r.json(), "files"), objects as u64);
    for i in 0..objects {
        let p = Path::new(&target).join("big-bucket").join(key(i));
        let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(got == body(i), "{} differs", p.display());
    }
    assert_eq!(common::files_under(&target).len(), objects);
    eprintln!("total {:?}", t0.elapsed());
}

/// Objects of more than 1,024 chunks keep their chunk list out of line
/// (`chunk_tree`). The streaming parent lookup does not expand it: the
/// source walks it to check its chunks and reuses it as it is. A no-change
/// run downloads nothing and stores nothing, and `restore bucket` (which
/// expands chunk trees object by object while streaming the list) and
/// `verify` accept the snapshot.
#[test]
fn objects_with_out_of_line_chunk_lists_are_reused_and_restore() {
    let server = S3Server::start(ServerKind::Moto);
    for b in ["source-bucket", "restored"] {
        server.create_bucket(b);
    }
    // Objects 100 and 200 are 20 MiB, 300-302 2-4 MiB (random bytes).
    let n = 303;
    let created = server.bucket_tool(&["create", "source-bucket", &n.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let run = |args: &[&str]| {
        let mut c = common::command(&repo);
        c.envs(server.env()).args(args);
        common::run_cmd_timeout(c, None, Duration::from_secs(300))
    };
    // 4 KiB chunks: a 20 MiB object has ~5,000, a chunk tree of its own.
    run(&[
        "init",
        "--kdf-memory-kib",
        "1024",
        "--chunk-avg-size",
        "4096",
    ])
    .ok();
    let backup = || {
        run(&[
            "--json",
            "backup",
            "bucket",
            "--source",
            "big",
            "--endpoint",
            &server.endpoint,
            "--bucket",
            "source-bucket",
        ])
        .ok()
        .json()
    };
    let first = backup();
    assert_eq!(json_u64(&first, "files"), n as u64);
    assert_eq!(json_u64(&first, "bytes_in"), json_u64(&created, "bytes"));
    let again = backup();
    assert_eq!(json_u64(&again, "files_unchanged"), n as u64, "{again}");
    assert_eq!(json_u64(&again["source_requests"], "get"), 0, "{again}");
    assert_eq!(json_u64(&again, "bytes_stored_new"), 0, "{again}");
    assert_eq!(json_u64(&again, "tree_bytes_stored_new"), 0, "{again}");
    // The entries really hold chunk trees.
    let out_of_line = common::runtime().block_on(async {
        let backend = std::sync::Arc::new(
            usdcop_dr::backend::local::LocalBackend::new(repo.clone()).unwrap(),
        );
        let r = usdcop_dr::repository::Repository::open(backend, PASSWORD.as_bytes())
            .await
            .unwrap();
        let id = again["snapshot_id"].as_str().unwrap();
        let (_, snap) = r.find_snapshot(id, None).await.unwrap();
        let index = r.load_index().await.unwrap();
        let mut stream = r.entries(&index, &snap);
        let mut count = 0;
        while let Some(e) = stream.next().await.unwrap() {
            count += e.chunk_tree.is_some() as u32;
        }
        count
    });
    assert_eq!(out_of_line, 2, "the two 20 MiB objects");
    let r = run(&[
        "--json",
        "restore",
        "bucket",
        "--snapshot",
        again["snapshot_id"].as_str().unwrap(),
        "--endpoint",
        &server.endpoint,
        "--bucket",
        "restored",
    ])
    .ok()
    .json();
    assert_eq!(json_u64(&r, "objects"), n as u64, "{r}");
    let cmp = server.bucket_tool(&["compare", "source-bucket", "restored"]);
    assert_eq!(cmp["problems"].as_array().unwrap().len(), 0, "{cmp}");
    assert_eq!(json_u64(&cmp, "compared"), n as u64);
    let v = run(&["verify"]);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout_str(), v.stderr);
}
