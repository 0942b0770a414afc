//! Every S3 request through a fault-injecting proxy (tests/common/faultproxy.rs):
//! `503 SlowDown` answers, connections reset before the answer, GET bodies
//! cut short. Writes survive through the SDK's retries; reads survive
//! because every S3 read resumes a body cut short with a ranged GET of the
//! same version (`ResumableGet`), and gives up with one clear error when
//! the cuts do not stop. PUTs whose answer is lost after the server
//! executed them (the retried create meets its own object) count as stored.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/servers.rs"]
mod servers;

use std::path::Path;
use std::time::Instant;

use common::{command, random_bytes, run_cmd, Run};
use faultproxy::{FaultCounts, FaultProxy, FaultRates};
use servers::{S3Server, ServerKind};

/// The CLI with the server's credentials, talking to `endpoint` (the
/// proxy) for the repository.
fn cli(server: &S3Server, endpoint: &str, repo: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut c = command(Path::new(repo));
    c.envs(server.env())
        .env("AWS_ENDPOINT_URL", endpoint)
        .args(args);
    run_cmd(c, stdin)
}

fn delta(after: FaultCounts, before: FaultCounts) -> FaultCounts {
    FaultCounts {
        requests: after.requests - before.requests,
        gets: after.gets - before.gets,
        forwarded: after.forwarded - before.forwarded,
        slow_down: after.slow_down - before.slow_down,
        reset: after.reset - before.reset,
        cut_body: after.cut_body - before.cut_body,
        reset_after: after.reset_after - before.reset_after,
        conflict: after.conflict - before.conflict,
    }
}

fn snapshot_count(server: &S3Server, repo: &str) -> usize {
    cli(
        server,
        &server.endpoint,
        repo,
        &["--json", "snapshots"],
        None,
    )
    .ok()
    .json()
    .as_array()
    .expect("snapshots --json is an array")
    .len()
}

/// PUT an object straight to the server (not through the proxy).
fn put_object(server: &S3Server, bucket: &str, key: &str, data: &[u8]) {
    let r = server
        .request("PUT", &format!("/{bucket}/{key}"), &[], data)
        .expect("PUT to the server");
    assert_eq!(
        r.0,
        200,
        "PUT {bucket}/{key}: {}",
        String::from_utf8_lossy(&r.2)
    );
}

fn get_object(server: &S3Server, bucket: &str, key: &str) -> Vec<u8> {
    let r = server
        .request("GET", &format!("/{bucket}/{key}"), &[], b"")
        .expect("GET from the server");
    assert_eq!(
        r.0,
        200,
        "GET {bucket}/{key}: {}",
        String::from_utf8_lossy(&r.2)
    );
    r.2
}

fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        ));
    }
    out.sort();
    out
}

/// init, a stream backup with multipart packs, two files backups (the
/// second reads its parent snapshot), a stream restore and a files restore
/// compared byte for byte, and `verify --read-data`: every request through
/// the proxy at the issue's fault rates.
fn repository_survives_faults(kind: ServerKind) {
    let t0 = Instant::now();
    let server = S3Server::start(kind);
    server.create_bucket("backups");
    let proxy = FaultProxy::start(&server.endpoint, FaultRates::issue(), faultproxy::seed(8));
    let ep = proxy.endpoint.clone();
    let repo = "s3://backups/faults";
    let run = |args: &[&str], stdin: Option<&[u8]>| cli(&server, &ep, repo, args, stdin);

    // 20 MiB packs go up as multipart uploads (above 16 MiB); small chunks
    // make many ranged reads on restore.
    run(
        &[
            "init",
            "--kdf-memory-kib",
            "1024",
            "--chunk-avg-size",
            "262144",
            "--pack-size",
            "20971520",
        ],
        None,
    )
    .ok();

    let stream = random_bytes(64 << 20, 81);
    let b = run(
        &[
            "--json",
            "backup",
            "stdin",
            "--source",
            "pg",
            "--stdin-name",
            "db.dump",
        ],
        Some(&stream),
    )
    .ok()
    .json();
    assert!(
        b["requests"]["multipart"].as_u64().unwrap() > 0,
        "packs went up as multipart uploads: {b}"
    );

    let src = tempfile::tempdir().unwrap();
    for i in 0..6u64 {
        let data = random_bytes(1_500_000 + i as usize * 300_000, 100 + i);
        std::fs::write(src.path().join(format!("f{i}.bin")), data).unwrap();
    }
    let s = src.path().to_str().unwrap();
    run(&["--json", "backup", "files", "--source", "cfg", s], None).ok();
    std::fs::write(src.path().join("f0.bin"), random_bytes(1_000_000, 999)).unwrap();
    let before_reads = proxy.counts();
    let second = run(&["--json", "backup", "files", "--source", "cfg", s], None)
        .ok()
        .json();
    assert!(
        second["files_unchanged"].as_u64().unwrap() >= 5,
        "the second files backup used its parent snapshot: {second}"
    );

    let restored = run(
        &[
            "restore",
            "--snapshot",
            "latest",
            "--source",
            "pg",
            "--stdout",
        ],
        None,
    )
    .ok()
    .stdout;
    assert!(
        restored == stream,
        "restored stream differs ({} bytes)",
        restored.len()
    );

    let target = tempfile::tempdir().unwrap();
    let t = target.path().to_str().unwrap();
    run(
        &[
            "restore",
            "--snapshot",
            "latest",
            "--source",
            "cfg",
            "--target",
            t,
        ],
        None,
    )
    .ok();
    // Files are restored under their stored (absolute) path.
    let restored_dir = target.path().join(s.trim_start_matches('/'));
    assert!(
        read_tree(&restored_dir) == read_tree(src.path()),
        "restored files differ from the source (restored under {restored_dir:?})"
    );

    let v = run(&["--json", "verify", "--read-data"], None).ok().json();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");

    let all = proxy.counts();
    let reads = delta(all, before_reads);
    eprintln!(
        "{kind}: {all:?} in {:?}; during the reading half {reads:?}",
        t0.elapsed()
    );
    assert!(all.slow_down > 0, "no 503 SlowDown injected: {all:?}");
    assert!(all.reset > 0, "no connection reset injected: {all:?}");
    assert!(
        reads.cut_body > 0,
        "no GET body cut short while reading back: {reads:?}"
    );
}

#[test]
fn repository_survives_faults_on_moto() {
    repository_survives_faults(ServerKind::Moto);
}

/// Garage checks every signature: the proxy forwards the bytes the client
/// signed (Host is the proxy's address), so they still verify.
#[test]
fn repository_survives_faults_on_garage() {
    repository_survives_faults(ServerKind::Garage);
}

/// A bucket backup whose source bucket is behind its own faulty proxy
/// (objects of a few MiB, one body in five cut short), restored into
/// another bucket through the same proxy and compared byte for byte.
#[test]
fn bucket_source_survives_cut_bodies() {
    let server = S3Server::start(ServerKind::Moto);
    for b in ["raw", "backups", "restored"] {
        server.create_bucket(b);
    }
    let objects: Vec<(String, Vec<u8>)> = (0..16u64)
        .map(|i| {
            let size = (1 << 20) + (i as usize * 211_111) % (3 << 20);
            (format!("USDCOP/{i}.csv"), random_bytes(size, 500 + i))
        })
        .collect();
    for (k, d) in &objects {
        put_object(&server, "raw", k, d);
    }
    let repo_proxy = FaultProxy::start(&server.endpoint, FaultRates::issue(), faultproxy::seed(3));
    let src_proxy = FaultProxy::start(
        &server.endpoint,
        FaultRates {
            cut_body: 0.2,
            ..FaultRates::issue()
        },
        faultproxy::seed(4),
    );
    let repo = "s3://backups/b";
    let run = |args: &[&str]| cli(&server, &repo_proxy.endpoint, repo, args, None);
    run(&[
        "init",
        "--kdf-memory-kib",
        "1024",
        "--chunk-avg-size",
        "262144",
        "--pack-size",
        "4194304",
    ])
    .ok();
    let b = run(&[
        "--json",
        "backup",
        "bucket",
        "--source",
        "minio",
        "--endpoint",
        &src_proxy.endpoint,
        "--bucket",
        "raw",
    ])
    .ok()
    .json();
    assert_eq!(b["files"].as_u64(), Some(objects.len() as u64), "{b}");
    let after_backup = src_proxy.counts();
    assert!(
        after_backup.cut_body > 0,
        "no source body cut short during the backup: {after_backup:?}"
    );

    run(&[
        "--json",
        "restore",
        "bucket",
        "--endpoint",
        &src_proxy.endpoint,
        "--bucket",
        "restored",
    ])
    .ok();
    for (k, d) in &objects {
        assert!(
            get_object(&server, "restored", k) == *d,
            "restored/{k} differs"
        );
    }
    let src = src_proxy.counts();
    let repo_counts = repo_proxy.counts();
    eprintln!("source {src:?}; repository {repo_counts:?}");
    assert!(
        src.slow_down + repo_counts.slow_down > 0,
        "no SlowDown injected"
    );
    assert!(src.reset + repo_counts.reset > 0, "no reset injected");
}

/// When every body is cut, a read gives up with one clear error after a
/// bounded number of resumptions, and no snapshot is written: for the
/// repository (its config) and for a bucket source.
#[test]
fn every_body_cut_gives_up_clearly_and_writes_no_snapshot() {
    let server = S3Server::start(ServerKind::Moto);
    for b in ["raw", "backups"] {
        server.create_bucket(b);
    }
    put_object(&server, "raw", "USDCOP/12.csv", &random_bytes(3 << 20, 12));
    let repo = "s3://backups/cut";
    // Set up without faults.
    cli(
        &server,
        &server.endpoint,
        repo,
        &["init", "--kdf-memory-kib", "1024"],
        None,
    )
    .ok();
    let cutter = FaultProxy::start(&server.endpoint, FaultRates::cut_every_body(), 1);

    // The repository behind the cutter: reading its config gives up.
    let t = Instant::now();
    let r = cli(
        &server,
        &cutter.endpoint,
        repo,
        &["backup", "stdin", "--source", "s", "--stdin-name", "x"],
        Some(b"some data"),
    );
    assert_eq!(r.code, 1, "{} {:?}", r.stderr, cutter.counts());
    // The first object read is the key file.
    assert!(
        r.stderr.contains("s3://backups/cut/keys/")
            && r.stderr.contains(": body cut short 5 times after")
            && r.stderr.contains("bytes; giving up"),
        "{}",
        r.stderr
    );
    assert!(
        t.elapsed().as_secs() < 30,
        "gave up only after {:?}",
        t.elapsed()
    );
    let c = cutter.counts();
    assert_eq!(c.cut_body, 5, "five cuts, then no more tries: {c:?}");

    // A bucket source behind the cutter: the object read gives up.
    let r = cli(
        &server,
        &server.endpoint,
        repo,
        &[
            "backup",
            "bucket",
            "--source",
            "minio",
            "--endpoint",
            &cutter.endpoint,
            "--bucket",
            "raw",
        ],
        None,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("s3://raw/USDCOP/12.csv: body cut short 5 times after")
            && r.stderr.contains("of 3145728 bytes; giving up"),
        "{}",
        r.stderr
    );
    // Listings cut too: the SDK reads those bodies itself and retries the
    // request; when every attempt breaks, one clear line.
    let all = FaultProxy::start(
        &server.endpoint,
        FaultRates {
            cut_listings: true,
            ..FaultRates::cut_every_body()
        },
        1,
    );
    let r = cli(&server, &all.endpoint, repo, &["snapshots"], None);
    eprintln!("every body cut, listings too: {}", r.stderr);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("S3 LIST s3://backups/cut/")
            && r.stderr
                .contains("the connection broke while the answer was being read, on every attempt"),
        "{}",
        r.stderr
    );
    assert!(all.counts().cut_body >= 2, "{:?}", all.counts());
    assert_eq!(
        snapshot_count(&server, repo),
        0,
        "a failed backup wrote a snapshot"
    );
}

/// A proxy that cuts every body of `raw/k.bin` (at most `cuts` of them)
/// and replaces the object (seed 2, 3, …) right after each cut, before the
/// client can resume.
fn replacing_cutter(server: &std::sync::Arc<S3Server>, cuts: Option<u64>) -> FaultProxy {
    let s = server.clone();
    let version = std::sync::atomic::AtomicU64::new(2);
    FaultProxy::start_with(
        &server.endpoint,
        FaultRates {
            cut_limit: cuts,
            ..FaultRates::cut_every_body()
        },
        2,
        Some(Box::new(move |path: &str| {
            if path.split('?').next() == Some("/raw/k.bin") {
                let v = version.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                put_object(&s, "raw", "k.bin", &random_bytes(2 << 20, v));
            }
        })),
    )
}

/// A body cut short, then the object replaced before the resumption: the
/// ranged GET carries If-Match, so the two versions are never joined; the
/// new version is read again from its first byte and backed up whole.
fn object_replaced_during_a_cut_is_not_spliced(kind: ServerKind) {
    let server = std::sync::Arc::new(S3Server::start(kind));
    for b in ["raw", "backups", "restored"] {
        server.create_bucket(b);
    }
    put_object(&server, "raw", "k.bin", &random_bytes(2 << 20, 1));
    let repo = "s3://backups/r";
    let direct = |args: &[&str]| cli(&server, &server.endpoint, repo, args, None);
    direct(&["init", "--kdf-memory-kib", "1024"]).ok();
    let proxy = replacing_cutter(&server, Some(1));
    let b = direct(&[
        "--json",
        "backup",
        "bucket",
        "--source",
        "minio",
        "--endpoint",
        &proxy.endpoint,
        "--bucket",
        "raw",
    ])
    .ok()
    .json();
    assert_eq!(proxy.counts().cut_body, 1, "{:?}", proxy.counts());
    assert_eq!(
        b["source_requests"]["get"].as_u64(),
        Some(3),
        "first GET, the resumption refused with 412, the new version whole: {b}"
    );
    direct(&[
        "restore",
        "bucket",
        "--endpoint",
        &server.endpoint,
        "--bucket",
        "restored",
    ])
    .ok();
    assert!(
        get_object(&server, "restored", "k.bin") == random_bytes(2 << 20, 2),
        "the backup holds the second version, whole"
    );

    // Replaced again after every cut: two fresh starts, then a clear error
    // and no snapshot.
    let before = snapshot_count(&server, repo);
    put_object(&server, "raw", "k.bin", &random_bytes(2 << 20, 10));
    let always = replacing_cutter(&server, None);
    let r = direct(&[
        "backup",
        "bucket",
        "--source",
        "minio",
        "--endpoint",
        &always.endpoint,
        "--bucket",
        "raw",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("s3://raw/k.bin: the object changed while it was being read"),
        "{}",
        r.stderr
    );
    assert_eq!(always.counts().cut_body, 3, "{:?}", always.counts());
    assert_eq!(snapshot_count(&server, repo), before);
}

#[test]
fn object_replaced_during_a_cut_is_not_spliced_on_moto() {
    object_replaced_during_a_cut_is_not_spliced(ServerKind::Moto);
}

#[test]
fn object_replaced_during_a_cut_is_not_spliced_on_garage() {
    object_replaced_during_a_cut_is_not_spliced(ServerKind::Garage);
}

/// A PUT that the store executed but whose answer was lost (the connection
/// dropped after the store answered): the SDK retries it, and the retry of
/// a create (`If-None-Match: *`) meets the object it stored itself (412).
/// For objects named by the hash of their bytes (keys, locks, indexes,
/// snapshots) that is success: the backup succeeds with exactly one
/// snapshot, restores byte for byte and verifies; `init` succeeds too.
fn lost_write_answers_do_not_fail_the_backup(kind: ServerKind) {
    let server = S3Server::start(kind);
    server.create_bucket("backups");
    let repo = "s3://backups/lost";
    // 20 MiB packs: the first goes up as a multipart upload (above 16 MiB),
    // the last in one PUT.
    cli(
        &server,
        &server.endpoint,
        repo,
        &[
            "init",
            "--kdf-memory-kib",
            "1024",
            "--chunk-avg-size",
            "262144",
            "--pack-size",
            "20971520",
        ],
        None,
    )
    .ok();
    const LOST: &[&str] = &[
        "/backups/lost/data/",
        "/backups/lost/locks/",
        "/backups/lost/index/",
        "/backups/lost/snapshots/",
    ];
    let proxy = FaultProxy::start(
        &server.endpoint,
        FaultRates::lose_first_write_answer(LOST),
        1,
    );
    let stream = random_bytes(24 << 20, 77);
    let b = cli(
        &server,
        &proxy.endpoint,
        repo,
        &[
            "--json",
            "backup",
            "stdin",
            "--source",
            "pg",
            "--stdin-name",
            "db.dump",
        ],
        Some(&stream),
    )
    .ok()
    .json();
    let c = proxy.counts();
    eprintln!("{kind}: backup {b}; {c:?}");
    // The multipart upload (its create, first part and complete), the
    // other pack, the lock, the index and the snapshot each lost an answer.
    assert!(b["requests"]["multipart"].as_u64().unwrap() > 0, "{b}");
    assert!(b["index_objects_written"].as_u64().unwrap() >= 1, "{b}");
    assert!(c.reset_after >= 7, "answers lost: {c:?}");
    assert_eq!(snapshot_count(&server, repo), 1, "one backup, one snapshot");
    let direct = |args: &[&str]| cli(&server, &server.endpoint, repo, args, None);
    let restored = direct(&["restore", "--snapshot", "latest", "--stdout"])
        .ok()
        .stdout;
    assert!(restored == stream, "restored stream differs");
    let v = direct(&["--json", "verify", "--read-data"]).ok().json();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");

    // init: the atomic-create probe (under locks/), `config` and the key
    // file lose their answers. (`config` is not named by its content: its
    // retried create meets it, and init tells its own from another's by
    // reading it back.)
    const LOST_INIT: &[&str] = &[
        "/backups/init/locks/",
        "/backups/init/config",
        "/backups/init/keys/",
    ];
    let proxy = FaultProxy::start(
        &server.endpoint,
        FaultRates::lose_first_write_answer(LOST_INIT),
        1,
    );
    let init = "s3://backups/init";
    cli(
        &server,
        &proxy.endpoint,
        init,
        &["init", "--kdf-memory-kib", "1024"],
        None,
    )
    .ok();
    let c = proxy.counts();
    assert!(c.reset_after >= 3, "answers lost: {c:?}");
    let b = cli(
        &server,
        &server.endpoint,
        init,
        &[
            "--json",
            "backup",
            "stdin",
            "--source",
            "s",
            "--stdin-name",
            "x",
        ],
        Some(b"after a lossy init"),
    )
    .ok()
    .json();
    assert_eq!(b["bytes_in"].as_u64(), Some(18), "{b}");
    // Another init there is still refused: for `config` a taken name is a
    // real conflict.
    let again = cli(
        &server,
        &server.endpoint,
        init,
        &["init", "--kdf-memory-kib", "1024"],
        None,
    );
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains("already holds a repository"),
        "{}",
        again.stderr
    );
}

/// moto honours `If-None-Match: *`: a retried create meets its own object.
#[test]
fn lost_write_answers_do_not_fail_the_backup_on_moto() {
    lost_write_answers_do_not_fail_the_backup(ServerKind::Moto);
}

/// Garage overwrites instead (same bytes); its multipart uploads lose
/// their answers too.
#[test]
fn lost_write_answers_do_not_fail_the_backup_on_garage() {
    lost_write_answers_do_not_fail_the_backup(ServerKind::Garage);
}

/// S3 answers `409 ConditionalRequestConflict` to a conditional PUT while
/// another conditional write of that name is in progress: the object is
/// not stored (not yet, or maybe never). It is not "already exists": the
/// PUT is retried, and only what the store finally says counts. Every
/// pack, lock, index and snapshot object's first PUT is answered 409 here
/// (by the proxy, not forwarded): the backup still succeeds, every pack the
/// index names is really stored, and restore and `verify --read-data` pass.
#[test]
fn conflicting_conditional_writes_are_retried_not_counted_as_stored() {
    let server = S3Server::start(ServerKind::Moto);
    server.create_bucket("backups");
    let repo = "s3://backups/conflict";
    cli(
        &server,
        &server.endpoint,
        repo,
        &[
            "init",
            "--kdf-memory-kib",
            "1024",
            "--chunk-avg-size",
            "262144",
            "--pack-size",
            "1048576",
        ],
        None,
    )
    .ok();
    const CONFLICT: &[&str] = &[
        "/backups/conflict/data/",
        "/backups/conflict/locks/",
        "/backups/conflict/index/",
        "/backups/conflict/snapshots/",
    ];
    let proxy = FaultProxy::start(
        &server.endpoint,
        FaultRates::conflict_on_first_put(CONFLICT),
        1,
    );
    let stream = random_bytes(5 << 20, 409);
    let b = cli(
        &server,
        &proxy.endpoint,
        repo,
        &[
            "--json",
            "backup",
            "stdin",
            "--source",
            "pg",
            "--stdin-name",
            "db.dump",
        ],
        Some(&stream),
    )
    .ok()
    .json();
    let c = proxy.counts();
    eprintln!("backup {b}; {c:?}");
    let packs = b["packs_written"].as_u64().unwrap();
    assert!(packs >= 4, "{b}");
    // Every pack, the lock, the index and the snapshot met a 409 first.
    assert!(c.conflict >= packs + 3, "{c:?}");
    assert_eq!(snapshot_count(&server, repo), 1);
    let direct = |args: &[&str]| cli(&server, &server.endpoint, repo, args, None);
    let restored = direct(&["restore", "--snapshot", "latest", "--stdout"])
        .ok()
        .stdout;
    assert!(restored == stream, "restored stream differs");
    let v = direct(&["--json", "verify", "--read-data"]).ok().json();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    assert!(v["packs"].as_u64().unwrap() >= 4, "{v}");
}
