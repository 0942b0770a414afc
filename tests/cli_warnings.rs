//! Warnings a cron job can see: every `--json` report carries a `warnings`
//! array of `{kind, path, message}`, `--quiet` still prints them on stderr,
//! and a warning about data the user asked for that is not in the snapshot
//! (a name that is not UTF-8) fails the run with exit 1, the snapshot of
//! everything else written and restorable (docs/CLI.md, "Warnings").

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{random_bytes, TestRepo};

/// Every JSON document on stdout, in order (a failed command prints its
/// report, then the error object).
fn documents(stdout: &[u8]) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_slice(stdout)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(stdout)
            )
        })
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

fn kinds(report: &serde_json::Value) -> Vec<(String, String)> {
    report["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings array: {report}"))
        .iter()
        .map(|w| {
            assert!(w["message"].as_str().is_some_and(|m| !m.is_empty()), "{w}");
            (
                w["kind"].as_str().unwrap().to_owned(),
                w["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn non_utf8_name_fails_quiet_json_backup_and_the_rest_restores() {
    let repo = TestRepo::new();
    let src = repo.scratch("src");
    let a = random_bytes(300_000, 1);
    let b = random_bytes(5_000, 2);
    std::fs::write(src.join("a.bin"), &a).unwrap();
    std::fs::create_dir(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/b.txt"), &b).unwrap();
    let bad = src.join(OsStr::from_bytes(b"caf\xe9.csv"));
    std::fs::write(&bad, b"latin-1 name").unwrap();
    let fifo = src.join("pipe");
    mkfifo(&fifo);

    let run = repo.run(&[
        "--quiet",
        "--json",
        "backup",
        "files",
        "--source",
        "cfg",
        src.to_str().unwrap(),
    ]);
    assert_eq!(
        run.code,
        1,
        "a skipped non-UTF-8 name must fail the run: {}\n{}",
        run.stdout_str(),
        run.stderr
    );
    let docs = documents(&run.stdout);
    assert_eq!(docs.len(), 2, "report then error: {docs:?}");
    let (report, error) = (&docs[0], &docs[1]);
    let mut got = kinds(report);
    got.sort();
    assert_eq!(
        got,
        [
            (
                "not_utf8_name".to_owned(),
                bad.to_string_lossy().into_owned()
            ),
            ("special_file".to_owned(), fifo.to_str().unwrap().to_owned()),
        ],
        "{report}"
    );
    assert_eq!(error["error"]["exit_code"], 1, "{error}");
    let snap = report["snapshot_id"].as_str().expect("snapshot written");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&snap[..8]),
        "the error names the snapshot that was written: {error}"
    );
    // --quiet silences progress, not problems.
    for needle in [
        "usdcop-dr: warning: ",
        "is not UTF-8",
        "a FIFO",
        "usdcop-dr: error: ",
    ] {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            run.stderr
        );
    }
    assert_eq!(report["files"], 2, "{report}");

    // Everything else is in the snapshot, byte for byte.
    let out = repo.scratch("out");
    let r = repo
        .run(&[
            "--json",
            "restore",
            "--snapshot",
            snap,
            "--target",
            out.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(r["warnings"], serde_json::json!([]), "{r}");
    let restored = out.join(src.strip_prefix("/").unwrap());
    assert!(std::fs::read(restored.join("a.bin")).unwrap() == a);
    assert!(std::fs::read(restored.join("sub/b.txt")).unwrap() == b);
    let mut names: Vec<_> = std::fs::read_dir(&restored)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.bin", "sub"]);
}

#[test]
fn special_and_changed_files_warn_but_succeed() {
    let repo = TestRepo::new();
    let src = repo.scratch("src");
    let a = random_bytes(70_000, 3);
    std::fs::write(src.join("a.bin"), &a).unwrap();
    let fifo = src.join("pipe");
    mkfifo(&fifo);
    let sock_path = src.join("app.sock");
    let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    // /proc files say 0 bytes and read as more: a file that changed while
    // being read, every time.
    let run = repo.run(&[
        "-q",
        "--json",
        "backup",
        "files",
        "--source",
        "cfg",
        src.to_str().unwrap(),
        "/proc/version",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout_str(), run.stderr);
    let report = run.json();
    let mut got = kinds(&report);
    got.sort();
    assert_eq!(
        got,
        [
            ("changed".to_owned(), "/proc/version".to_owned()),
            (
                "special_file".to_owned(),
                sock_path.to_str().unwrap().to_owned()
            ),
            ("special_file".to_owned(), fifo.to_str().unwrap().to_owned()),
        ],
        "{report}"
    );
    for needle in [
        "a socket",
        "a FIFO",
        "/proc/version: changed while being read",
    ] {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("error"), "{}", run.stderr);

    // A clean backup has an empty array, not a missing one.
    std::fs::remove_file(&fifo).unwrap();
    drop(_sock);
    std::fs::remove_file(&sock_path).unwrap();
    let clean = repo
        .run(&[
            "-q",
            "--json",
            "backup",
            "files",
            "--source",
            "cfg",
            src.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(clean.json()["warnings"], serde_json::json!([]));
    assert_eq!(clean.stderr, "", "a clean quiet run prints nothing");
}

#[test]
fn verify_warnings_have_the_same_shape() {
    let repo = TestRepo::new();
    repo.backup_stdin("db", "d.dump", &random_bytes(200_000, 4));
    // A copy of a pack under another name: a pack no index lists.
    let pack = repo.objects("data").remove(0);
    let other = "ab".repeat(32);
    let dir = repo.path.join("data").join(&other[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&pack, dir.join(&other)).unwrap();
    let v = repo.run(&["--json", "verify"]).ok().json();
    assert_eq!(
        kinds(&v),
        [("unindexed_packs".to_owned(), "data".to_owned())],
        "{v}"
    );
}
