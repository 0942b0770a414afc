//! Failure paths of the CLI: damaged packs, missing index objects, wrong
//! passphrases, refused `init`, killed backups, failing sources, bad flags
//! and partial data verification. Every failure must be loud (exit code and
//! a message naming the object), and must never leave wrong bytes behind.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{random_bytes, run_cmd, TestRepo, PASSWORD};

/// Every file and directory under `root`, with file contents: a
/// byte-for-byte picture of a repository.
fn dir_state(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let mut ents: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `data/xx/<hex>`: the object name of a pack file path.
fn object_name(repo: &TestRepo, path: &Path) -> String {
    path.strip_prefix(&repo.path)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

fn short(id: &serde_json::Value) -> String {
    id.as_str().unwrap()[..8].to_owned()
}

/// Files in `dir` (not recursive) whose names contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(needle))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- 1

#[test]
fn a_damaged_pack_is_named_and_never_restored_as_wrong_bytes() {
    let repo = TestRepo::new();
    let data_a = random_bytes(4_000_000, 11);
    let a = repo.backup_stdin("db", "a.dump", &data_a);
    let (a_id, a_short) = (
        a["snapshot_id"].as_str().unwrap().to_owned(),
        short(&a["snapshot_id"]),
    );
    let packs_a = repo.objects("data");
    assert!(
        packs_a.len() >= 3,
        "4 MB in 1 MiB packs gives several packs, got {packs_a:?}"
    );

    // Unrelated data, in packs of its own.
    let data_b = random_bytes(1_500_000, 12);
    let b = repo.backup_stdin("other", "b.dump", &data_b);
    let (b_id, b_short) = (
        b["snapshot_id"].as_str().unwrap().to_owned(),
        short(&b["snapshot_id"]),
    );
    assert!(repo.objects("data").len() > packs_a.len());

    // Flip one byte in the middle of snapshot a's largest pack.
    let victim = packs_a
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let victim_name = object_name(&repo, &victim);
    assert!(
        victim_name.starts_with("data/") && victim_name.len() == "data/xx/".len() + 64,
        "{victim_name}"
    );
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();

    // Metadata-only verify cannot see a flipped byte (sizes are intact).
    let meta = repo.run(&["verify"]);
    assert_eq!(
        meta.code,
        0,
        "metadata verify: {}\n{}",
        meta.stdout_str(),
        meta.stderr
    );

    let full = repo.run(&["verify", "--read-data"]);
    assert_eq!(
        full.code,
        3,
        "verify --read-data of a damaged pack: {}\n{}",
        full.stdout_str(),
        full.stderr
    );
    let text = full.stdout_str();
    assert!(
        text.contains(&victim_name),
        "verify output does not name {victim_name}:\n{text}"
    );
    assert!(
        text.contains(&a_short),
        "verify output does not name snapshot {a_short}:\n{text}"
    );
    assert!(
        !text.contains(&b_short),
        "snapshot {b_short} is not affected, yet named:\n{text}"
    );

    let js = repo.run(&["--json", "verify", "--read-data"]);
    assert_eq!(js.code, 3, "{}", js.stderr);
    let report = js.json();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "exactly one damaged object: {report}");
    assert_eq!(problems[0]["object"], victim_name.as_str(), "{report}");
    assert_eq!(
        problems[0]["snapshots"],
        serde_json::json!([a_short]),
        "{report}"
    );
    assert_eq!(
        report["packs_read"], report["packs"],
        "--read-data reads every pack: {report}"
    );

    // Streaming restore fails loudly, naming the pack; what it did write is
    // a correct prefix, never wrong bytes.
    let out = repo.run(&["restore", "--snapshot", &a_id, "--stdout"]);
    assert_ne!(out.code, 0, "restore of a damaged snapshot succeeded");
    assert_eq!(out.code, 3, "integrity failures exit 3: {}", out.stderr);
    assert!(
        out.stderr.contains(&victim_name),
        "stderr does not name the pack {victim_name}: {}",
        out.stderr
    );
    assert!(
        out.stdout.len() < data_a.len(),
        "the whole stream was written despite the damage"
    );
    assert!(
        out.stdout[..] == data_a[..out.stdout.len()],
        "restore --stdout wrote wrong bytes"
    );

    // Directory restore: the damaged file is absent, no temp file is left.
    let target = repo.scratch("restore-a");
    let r = repo.restore_into(&a_id, &target);
    assert_eq!(
        r.code, 3,
        "restore --target of a damaged snapshot: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("a.dump"),
        "stderr does not name the file: {}",
        r.stderr
    );
    assert!(
        !target.join("a.dump").exists(),
        "a damaged file was restored under its real name"
    );
    assert_eq!(
        files_containing(&target, "usdcop-dr"),
        Vec::<String>::new(),
        "temp files left behind"
    );

    // The unrelated snapshot is untouched.
    assert!(
        repo.restore_stdout(&b_id) == data_b,
        "snapshot b restored wrong bytes"
    );
    let target_b = repo.scratch("restore-b");
    repo.restore_into(&b_id, &target_b).ok();
    assert!(std::fs::read(target_b.join("b.dump")).unwrap() == data_b);
}

// ---------------------------------------------------------------- 2

#[test]
fn a_deleted_index_object_is_reported_and_restore_refuses() {
    let repo = TestRepo::new();
    let data = random_bytes(2_500_000, 21);
    let s = repo.backup_stdin("db", "d.dump", &data);
    let (id, id_short) = (
        s["snapshot_id"].as_str().unwrap().to_owned(),
        short(&s["snapshot_id"]),
    );
    let indexes = repo.objects("index");
    assert!(!indexes.is_empty());
    if indexes.len() == 1 {
        std::fs::remove_file(&indexes[0]).unwrap();
    } else {
        std::fs::remove_file(&indexes[indexes.len() / 2]).unwrap();
    }

    for args in [&["verify"][..], &["verify", "--read-data"][..]] {
        let v = repo.run(args);
        assert_eq!(
            v.code,
            3,
            "{args:?} with a missing index: {}\n{}",
            v.stdout_str(),
            v.stderr
        );
        let text = v.stdout_str();
        assert!(
            text.contains(&id_short),
            "{args:?} does not name snapshot {id_short}:\n{text}"
        );
        assert!(
            text.contains("not in any index"),
            "{args:?} does not say packs are unindexed:\n{text}"
        );
    }
    let js = repo.run(&["--json", "verify"]);
    assert_eq!(js.code, 3);
    let report = js.json();
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == id_short.as_str())),
        "no problem names snapshot {id_short}: {report}"
    );

    let out = repo.run(&["restore", "--snapshot", &id, "--stdout"]);
    assert_ne!(out.code, 0, "restore without an index succeeded");
    assert!(
        out.stderr.contains("not in the index"),
        "unclear error: {}",
        out.stderr
    );
    assert!(
        out.stdout[..] == data[..out.stdout.len()],
        "restore --stdout wrote wrong bytes"
    );

    let target = repo.scratch("restore");
    let r = repo.restore_into(&id, &target);
    assert_ne!(r.code, 0, "restore --target without an index succeeded");
    assert!(
        r.stderr.contains("not in the index"),
        "unclear error: {}",
        r.stderr
    );
    assert!(
        !target.join("d.dump").exists(),
        "a file was restored without its chunks"
    );
    assert_eq!(
        files_containing(&target, "usdcop-dr"),
        Vec::<String>::new(),
        "temp files left behind"
    );
}

// ---------------------------------------------------------------- 3

const WRONG: &str = "hunter2-Zq9vK7-not-it";

#[test]
fn a_wrong_passphrase_exits_2_and_writes_nothing() {
    let repo = TestRepo::new();
    let data = random_bytes(300_000, 31);
    repo.backup_stdin("db", "d.dump", &data);
    let before = dir_state(&repo.path);
    let target = repo.dir.path().join("never-created");

    let cases: Vec<(Vec<&str>, Option<&[u8]>)> = vec![
        (vec!["snapshots"], None),
        (vec!["--json", "snapshots"], None),
        (
            vec![
                "backup",
                "stdin",
                "--source",
                "db",
                "--stdin-name",
                "d.dump",
            ],
            Some(&data[..]),
        ),
        (vec!["restore", "--stdout"], None),
        (vec!["restore", "--target", target.to_str().unwrap()], None),
        (vec!["verify", "--read-data"], None),
    ];
    for (args, stdin) in cases {
        let mut c = repo.cmd();
        c.env("USDCOP_DR_PASSWORD", WRONG).args(&args);
        let r = run_cmd(c, stdin);
        assert_eq!(r.code, 2, "{args:?} with a wrong passphrase: {}", r.stderr);
        assert!(
            r.stderr.contains("wrong passphrase"),
            "{args:?}: stderr does not say so: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains(WRONG) && !r.stdout_str().contains(WRONG),
            "{args:?} printed the passphrase: {}{}",
            r.stdout_str(),
            r.stderr
        );
        assert!(
            dir_state(&repo.path) == before,
            "{args:?} with a wrong passphrase changed the repository"
        );
    }
    assert!(
        !target.exists(),
        "restore with a wrong passphrase created its target"
    );

    // No passphrase at all: exit 2 with a hint naming the variables.
    let mut c = repo.cmd();
    c.env_remove("USDCOP_DR_PASSWORD").arg("snapshots");
    let r = run_cmd(c, None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("hint") && r.stderr.contains("USDCOP_DR_PASSWORD"),
        "no hint: {}",
        r.stderr
    );

    // Both sources set is ambiguous: exit 2.
    let pwfile = repo.dir.path().join("pw");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
    let mut c = repo.cmd();
    c.env("USDCOP_DR_PASSWORD_FILE", &pwfile).arg("snapshots");
    assert_eq!(run_cmd(c, None).code, 2);
    assert!(
        dir_state(&repo.path) == before,
        "a refused command changed the repository"
    );

    // The passphrase from a file (trailing newline stripped) opens the repository.
    let mut c = repo.cmd();
    c.env_remove("USDCOP_DR_PASSWORD")
        .env("USDCOP_DR_PASSWORD_FILE", &pwfile)
        .args(["--json", "snapshots"]);
    let snaps = run_cmd(c, None).ok().json();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    let mut c = repo.cmd();
    c.env_remove("USDCOP_DR_PASSWORD")
        .env("USDCOP_DR_PASSWORD_FILE", &pwfile)
        .args(["restore", "--stdout"]);
    assert!(run_cmd(c, None).ok().stdout == data);

    // A wrong passphrase in the file is refused the same way.
    std::fs::write(&pwfile, format!("{WRONG}\n")).unwrap();
    let mut c = repo.cmd();
    c.env_remove("USDCOP_DR_PASSWORD")
        .env("USDCOP_DR_PASSWORD_FILE", &pwfile)
        .arg("snapshots");
    let r = run_cmd(c, None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("wrong passphrase") && !r.stderr.contains(WRONG),
        "{}",
        r.stderr
    );
    assert!(dir_state(&repo.path) == before);
}

// ---------------------------------------------------------------- 4

#[test]
fn init_refuses_an_existing_repository() {
    let repo = TestRepo::new();
    repo.backup_stdin("db", "d.dump", &random_bytes(100_000, 41));
    let before = dir_state(&repo.path);
    for pass in [PASSWORD, WRONG] {
        let mut c = repo.cmd();
        c.env("USDCOP_DR_PASSWORD", pass)
            .args(["init", "--kdf-memory-kib", "1024"]);
        let r = run_cmd(c, None);
        assert_eq!(r.code, 2, "init over an existing repository: {}", r.stderr);
        assert!(r.stderr.contains("already"), "unclear error: {}", r.stderr);
        assert!(
            dir_state(&repo.path) == before,
            "init changed an existing repository"
        );
    }
    assert_eq!(
        repo.run(&["--json", "snapshots"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// ---------------------------------------------------------------- 5

#[test]
fn a_killed_backup_leaves_no_snapshot_and_its_uploads_are_reused() {
    let repo = TestRepo::new();
    let data = Arc::new(random_bytes(40 << 20, 51));
    let args = [
        "--json",
        "--quiet",
        "backup",
        "stdin",
        "--source",
        "big",
        "--stdin-name",
        "big.dump",
    ];

    let mut c = repo.cmd();
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (data, stop) = (data.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = 0usize;
            for piece in data.chunks(1 << 20) {
                if stop.load(Ordering::SeqCst) || pipe.write_all(piece).is_err() {
                    break;
                }
                sent += piece.len();
                std::thread::sleep(Duration::from_millis(40));
            }
            sent
        })
    };
    let clock = Instant::now();
    loop {
        if repo.objects("data").len() >= 4 && !repo.objects("index").is_empty() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("backup ended ({status}) before it could be killed: {err}");
        }
        assert!(
            clock.elapsed() < Duration::from_secs(60),
            "no pack and index appeared within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    let sent = feeder.join().unwrap();
    assert!(!status.success(), "the backup was not killed");
    assert!(
        sent < data.len(),
        "the whole stream was sent before the kill"
    );

    assert!(
        repo.objects("snapshots").is_empty(),
        "a killed backup left a snapshot"
    );
    let stale_locks = repo.objects("locks");
    assert!(!stale_locks.is_empty(), "the killed backup held no lock");
    let v = repo.run(&["verify"]);
    assert_eq!(
        v.code,
        0,
        "verify after a killed backup: {}\n{}",
        v.stdout_str(),
        v.stderr
    );

    // The lock left behind does not block the next backup, which reuses
    // the chunks whose packs were indexed before the kill.
    let second = repo.backup_stdin("big", "big.dump", &data);
    let stored_new = second["bytes_stored_new"].as_u64().unwrap();
    let (chunks, chunks_new) = (
        second["chunks"].as_u64().unwrap(),
        second["chunks_new"].as_u64().unwrap(),
    );
    assert!(chunks_new < chunks, "nothing was reused: {second}");
    // It cleaned up after the dead writer: lock gone, temp files gone.
    assert_eq!(second["recovery"]["dead_locks"], 1, "{second}");
    assert_eq!(second["recovery"]["deferred"], false, "{second}");
    assert!(
        repo.objects("locks").is_empty(),
        "the dead lock was not removed"
    );
    let tmp: Vec<_> = std::fs::read_dir(repo.path.join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    // At least 4 packs of ≥ 1 MiB were indexed before the kill.
    assert!(
        stored_new + (3 << 20) < data.len() as u64,
        "second backup stored {stored_new} new bytes of a {} byte stream: uploads of the killed run were not reused",
        data.len()
    );
    assert!(
        repo.restore_stdout(second["snapshot_id"].as_str().unwrap()) == *data,
        "restored stream differs"
    );
    assert_eq!(repo.objects("snapshots").len(), 1);
    let v = repo.run(&["verify"]);
    assert_eq!(
        v.code,
        0,
        "verify after the second backup: {}\n{}",
        v.stdout_str(),
        v.stderr
    );
}

// ---------------------------------------------------------------- 6

#[test]
fn a_missing_source_path_fails_without_a_snapshot() {
    let repo = TestRepo::new();
    let missing = repo.dir.path().join("no such dir/nothing-here");
    let r = repo.run(&[
        "backup",
        "files",
        "--source",
        "cfg",
        missing.to_str().unwrap(),
    ]);
    assert!(
        r.code == 1 || r.code == 2,
        "backup of a missing path exited {}: {}",
        r.code,
        r.stderr
    );
    assert!(
        r.stderr.contains("nothing-here"),
        "error does not name the path: {}",
        r.stderr
    );
    assert!(
        repo.objects("snapshots").is_empty(),
        "a failed backup wrote a snapshot"
    );
    assert!(
        repo.objects("locks").is_empty(),
        "a failed backup left its lock"
    );

    // One good root and one missing root: still no (partial) snapshot.
    let good = repo.scratch("good");
    std::fs::write(good.join("f"), b"x").unwrap();
    let r = repo.run(&[
        "backup",
        "files",
        "--source",
        "cfg",
        good.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert!(r.code == 1 || r.code == 2, "exit {}: {}", r.code, r.stderr);
    assert!(r.stderr.contains("nothing-here"), "{}", r.stderr);
    assert!(
        repo.objects("snapshots").is_empty(),
        "a failed backup wrote a partial snapshot"
    );
}

// ---------------------------------------------------------------- 7

#[test]
fn bad_flags_are_usage_errors() {
    let repo = TestRepo::new();
    repo.backup_stdin("db", "d.dump", b"hello");
    let before = dir_state(&repo.path);
    for args in [
        &["restore"][..],
        &["restore", "--snapshot", "latest"][..],
        &["restore", "--stdout", "--target", "/tmp/x"][..],
        &["verify", "--read-data-subset", "150"][..],
        &["verify", "--read-data-subset", "abc"][..],
        &["verify", "--read-data", "--read-data-subset", "50"][..],
    ] {
        let r = repo.run(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.is_empty(), "{args:?} gave no message");
    }
    assert!(
        dir_state(&repo.path) == before,
        "a usage error changed the repository"
    );
}

// ---------------------------------------------------------------- 8

#[test]
fn verify_read_data_subset_reads_some_packs_but_not_all() {
    let repo = TestRepo::new();
    repo.backup_stdin("db", "d.dump", &random_bytes(6_000_000, 81));
    let v = repo
        .run(&["--json", "verify", "--read-data-subset", "50"])
        .ok()
        .json();
    let (packs, read) = (
        v["packs"].as_u64().unwrap(),
        v["packs_read"].as_u64().unwrap(),
    );
    assert!(packs >= 4, "want several packs: {v}");
    assert!(read >= 1, "a 50 % subset read no pack: {v}");
    assert!(read < packs, "a 50 % subset read all {packs} packs: {v}");
    assert!(
        read >= packs / 2,
        "a 50 % subset read only {read} of {packs} packs: {v}"
    );
    assert!(
        v["chunks_read"].as_u64().unwrap() > 0 && v["bytes_read"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["problems"], serde_json::json!([]));

    let all = repo.run(&["--json", "verify", "--read-data"]).ok().json();
    assert_eq!(all["packs_read"], all["packs"]);
    assert_eq!(all["chunks_read"], all["chunks"]);
}

// ---------------------------------------------------------------- damage isolation

/// One damaged snapshot object must not take every other snapshot (and
/// every later `backup files`) down with it: a disaster-recovery tool has
/// to restore whatever is intact. `verify` names the damaged object.
#[test]
fn a_damaged_snapshot_object_does_not_block_other_snapshots() {
    let repo = TestRepo::new();
    let data_a = random_bytes(200_000, 91);
    let a = repo.backup_stdin("db", "a.dump", &data_a);
    let a_id = a["snapshot_id"].as_str().unwrap().to_owned();
    let b = repo.backup_stdin("other", "b.dump", &random_bytes(200_000, 92));
    let b_id = b["snapshot_id"].as_str().unwrap().to_owned();

    let b_obj = repo.path.join("snapshots").join(&b_id);
    let mut bytes = std::fs::read(&b_obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&b_obj, &bytes).unwrap();

    let v = repo.run(&["verify"]);
    assert_eq!(v.code, 3, "{}", v.stdout_str());
    assert!(
        v.stdout_str().contains(&format!("snapshots/{b_id}")),
        "{}",
        v.stdout_str()
    );

    // The intact snapshot, by id and as the latest of its source.
    let r = repo.run(&["restore", "--snapshot", &a_id, "--stdout"]);
    assert_eq!(
        r.code, 0,
        "restore of intact snapshot {a_id} fails because of damaged {b_id}: {}",
        r.stderr
    );
    assert!(r.stdout == data_a);
    let r = repo.run(&[
        "restore",
        "--snapshot",
        "latest",
        "--source",
        "db",
        "--stdout",
    ]);
    assert_eq!(
        r.code, 0,
        "restore of the latest `db` snapshot fails: {}",
        r.stderr
    );
    assert!(r.stdout == data_a);

    // New file backups keep working.
    let src = repo.scratch("cfg");
    std::fs::write(src.join("f"), b"config").unwrap();
    let r = repo.run(&["backup", "files", "--source", "cfg", src.to_str().unwrap()]);
    assert_eq!(
        r.code, 0,
        "backup files fails because of an unrelated damaged snapshot: {}",
        r.stderr
    );
}

// ---------------------------------------------------------------- 10

/// A directory restore that cannot go on (every write past 48 KiB fails,
/// as on a full disk) while several writers run side by side stops with
/// the error and leaves no partly written file behind: every file in the
/// target is whole and equal to its source, and no temporary file remains.
#[test]
fn a_restore_that_cannot_write_stops_and_leaves_only_whole_files() {
    use std::os::unix::process::CommandExt;
    let repo = TestRepo::new();
    let src = repo.scratch("many");
    let mut sources = BTreeMap::new();
    for d in 0..6u64 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100u64 {
            // Small files, and one of 64 KiB in each directory.
            let size = if f == 60 {
                64 << 10
            } else {
                100 + ((d * 100 + f) * 37 % 4000) as usize
            };
            let data = random_bytes(size, d * 1000 + f);
            std::fs::write(dir.join(format!("f{f:03}")), &data).unwrap();
            sources.insert(format!("d{d}/f{f:03}"), data);
        }
    }
    let id = repo
        .run(&[
            "--json",
            "backup",
            "files",
            "--source",
            "many",
            src.to_str().unwrap(),
        ])
        .ok()
        .json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let target = repo.scratch("out");
    let mut c = common::command(&repo.path);
    c.args(["restore", "--snapshot", &id, "--target"])
        .arg(&target);
    // SAFETY: setrlimit and signal are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 48 << 10,
                rlim_max: 48 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let r = run_cmd(c, None);
    assert!(
        r.code != 0 && r.stderr.contains("File too large"),
        "exit {}: {}",
        r.code,
        r.stderr
    );

    let restored = target.join(src.strip_prefix("/").unwrap());
    let mut whole = 0;
    for (rel, data) in &sources {
        let p = restored.join(rel);
        match std::fs::read(&p) {
            Ok(got) => {
                assert!(got == *data, "{rel} is in the target but not whole");
                whole += 1;
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{rel}: {e}"),
        }
    }
    assert!(whole < sources.len(), "the restore did not stop");
    for d in 0..6 {
        let left = files_containing(&restored.join(format!("d{d}")), "usdcop-dr-");
        assert!(left.is_empty(), "temporary files left in d{d}: {left:?}");
        assert!(
            !restored.join(format!("d{d}/f060")).exists(),
            "a file larger than the limit was restored"
        );
    }
}
