//! A restore never writes outside its target, whatever the snapshot says
//! and whatever the target already holds; `restore --stdout` of a
//! `backup postgres --globals` snapshot streams the dump; `latest` is the
//! latest snapshot of the kind the command restores.
//!
//! Crafted snapshots are written through the library (a real repository on
//! disk, sealed with its key, as someone holding the key or a bug could);
//! the real binary restores them, as root when the tests run as root. A
//! sentinel directory beside the target is recorded before and compared
//! after: names, types, contents, link targets, modes, owners and mtimes.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/servers.rs"]
mod servers;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{run_cmd, runtime, Run, TestRepo};
use usdcop_dr::format::snapshot::{Entry, EntryType};
use usdcop_dr::format::Id;
use usdcop_dr::repository::Repository;

fn open(repo: &TestRepo) -> Repository {
    runtime().block_on(repo.open_lib())
}

/// Save snapshot `base` with its entries replaced by `edit(its entries)`
/// as a new snapshot (a second later); returns its id in hex.
fn craft(repo: &TestRepo, base: &str, edit: impl FnOnce(&mut Vec<Entry>)) -> String {
    let r = Arc::new(open(repo));
    runtime().block_on(async {
        let (_, mut snap) = r.find_snapshot(base, None).await.unwrap();
        let index = r.load_index().await.unwrap();
        let mut entries = r.load_entries(&index, &snap).await.unwrap();
        snap.time += chrono::Duration::seconds(1);
        edit(&mut entries);
        usdcop_dr::commands::backup::save_snapshot_with_entries(&r, &mut snap, entries)
            .await
            .unwrap()
            .to_hex()
    })
}

fn symlink_entry(path: &str, to: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryType::Symlink,
        mode: 0o777,
        uid: 0,
        gid: 0,
        mtime_ns: 1_000_000_000,
        ctime_ns: 0,
        inode: 0,
        size: 0,
        sha256: None,
        chunks: vec![],
        target: Some(to.into()),
        chunk_tree: None,
        object: None,
    }
}

/// Everything observable about a tree, without following links.
fn record_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let m = std::fs::symlink_metadata(dir).unwrap();
        let rel = dir.strip_prefix(root).unwrap().display().to_string();
        let what = if m.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(dir).unwrap())
        } else if m.is_file() {
            format!("file {:?}", std::fs::read(dir).unwrap())
        } else {
            "dir".into()
        };
        out.insert(
            rel,
            format!(
                "{what} mode {:o} owner {}:{} mtime {}.{}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            ),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(dir).unwrap() {
                walk(root, &e.unwrap().path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A directory outside every restore target, with a file named like the
/// snapshot's, and an old mtime so any change shows.
fn sentinel(repo: &TestRepo) -> PathBuf {
    let s = repo.scratch("sentinel");
    std::fs::write(s.join("evil"), b"the original, not the snapshot's").unwrap();
    std::fs::write(s.join("passwd"), b"root:x:0:0").unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o751)).unwrap();
    for p in [s.join("evil"), s.join("passwd"), s.clone()] {
        filetime::set_file_mtime(&p, filetime::FileTime::from_unix_time(1_500_000_000, 0)).unwrap();
    }
    s
}

fn backup_files(repo: &TestRepo, source: &str, path: &Path) -> String {
    repo.run(&[
        "--json",
        "backup",
        "files",
        "--source",
        source,
        path.to_str().unwrap(),
    ])
    .ok()
    .json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The snapshot path of an absolute path (files snapshots store absolute
/// paths without the leading `/`).
fn rel(p: &Path) -> String {
    p.to_str().unwrap().trim_start_matches('/').to_owned()
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_symlink_then_an_entry_below_it_is_refused_before_anything_is_written() {
    let repo = TestRepo::new();
    let src = repo.scratch("src");
    std::fs::write(src.join("evil"), b"written through the link").unwrap();
    let base = backup_files(&repo, "config", &src);
    let outside = sentinel(&repo);
    let before = record_tree(&outside);
    let target = repo.dir.path().join("target");
    // The issue's case: `x -> <sentinel>`, then a symlink `x/passwd`,
    // whose restore used to delete <sentinel>/passwd and create a link there.
    let links_only = craft(&repo, &base, |s| {
        *s = vec![
            symlink_entry("x", outside.to_str().unwrap()),
            symlink_entry("x/passwd", "pwned"),
        ];
    });
    let r = repo.restore_into(&links_only, &target);
    assert_eq!(
        record_tree(&outside),
        before,
        "written through the link: {}",
        r.stderr
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(r#"entry "x/passwd" lies below symlink entry "x""#),
        "{}",
        r.stderr
    );
    assert!(!target.exists(), "the target was created");
    // `x -> <sentinel>` (absolute) and `y -> ../../sentinel` (relative,
    // from target/y), each followed by entries below it: a file and a
    // symlink (whose restore would first delete what is there).
    let id = craft(&repo, &base, |s| {
        let file = s
            .iter()
            .find(|e| e.kind == EntryType::File)
            .unwrap()
            .clone();
        *s = vec![
            symlink_entry("x", outside.to_str().unwrap()),
            Entry {
                path: "x/evil".into(),
                ..file.clone()
            },
            symlink_entry("x/passwd", "pwned"),
            symlink_entry("y", "../sentinel"),
            Entry {
                path: "y/evil".into(),
                ..file
            },
        ];
    });
    let r = repo.restore_into(&id, &target);
    assert_eq!(r.code, 3, "{}", r.stderr);
    for needle in [
        "3 unsafe entries",
        r#"entry "x/evil" lies below symlink entry "x""#,
        r#"entry "x/passwd" lies below symlink entry "x""#,
        r#"entry "y/evil" lies below symlink entry "y""#,
    ] {
        assert!(r.stderr.contains(needle), "{needle:?} not in: {}", r.stderr);
    }
    assert_eq!(record_tree(&outside), before, "the sentinel changed");
    assert!(
        !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
        "something was restored: {:?}",
        record_tree(&target)
    );
    // The library does not trust a snapshot value handed to it either.
    let r = Arc::new(open(&repo));
    let e = runtime().block_on(async {
        let (id, mut snap) = r.find_snapshot(&base, None).await.unwrap();
        let index = r.load_index().await.unwrap();
        let file = r
            .load_entries(&index, &snap)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.kind == EntryType::File)
            .unwrap();
        let forged = vec![
            symlink_entry("x", outside.to_str().unwrap()),
            Entry {
                path: "x/evil".into(),
                ..file
            },
        ];
        usdcop_dr::commands::backup::save_snapshot_with_entries(&r, &mut snap, forged)
            .await
            .unwrap();
        usdcop_dr::commands::restore::run(
            r.clone(),
            id,
            &snap,
            usdcop_dr::commands::restore::RestoreOptions {
                sync: Default::default(),
                target: usdcop_dr::commands::restore::RestoreTarget::Dir(target.clone()),
                include: vec![],
                read_concurrency: None,
            },
            Arc::new(usdcop_dr::progress::Silent),
        )
        .await
        .unwrap_err()
    });
    assert_eq!(e.kind(), usdcop_dr::ErrorKind::Integrity, "{e}");
    assert!(
        e.to_string()
            .contains(r#""x/evil" lies below symlink entry "x""#),
        "{e}"
    );
    assert!(e.hint().unwrap().contains("nothing was restored"), "{e:?}");
    assert!(!target.exists(), "the target was created");
    assert_eq!(record_tree(&outside), before, "the sentinel changed");
    // `verify` reports the forged snapshots as damaged.
    let v = repo.run(&["verify"]);
    assert_eq!(v.code, 3, "{}", v.stderr);
    assert!(
        v.stdout_str()
            .contains(&format!("affects snapshots: {}", &id[..8])),
        "{}",
        v.stdout_str()
    );
    // `latest` is chosen from the snapshots' summaries alone (format v2:
    // entry lists are not read to list snapshots), so it is a forged one:
    // refused, nothing written. The original restores safely by id.
    let r = repo.run(&["restore", "--target", target.to_str().unwrap()]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("lies below symlink entry"),
        "{}",
        r.stderr
    );
    assert_eq!(record_tree(&outside), before, "the sentinel changed");
    let r = repo.restore_into(&base, &target);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(target.join(rel(&src)).join("evil")).unwrap(),
        b"written through the link"
    );
    assert_eq!(record_tree(&outside), before, "the sentinel changed");
}

/// Restore streams the entry list (never holding it), so the whole-list
/// check reads it twice: an entry that comes *before* the symlink it lies
/// below (a forged order, far apart in the list: other leaves between)
/// is still refused before anything is written, every problem named.
#[test]
fn an_entry_before_the_symlink_it_lies_below_is_refused_before_anything_is_written() {
    let repo = TestRepo::new();
    let src = repo.scratch("src");
    std::fs::write(src.join("evil"), b"written through the link").unwrap();
    let base = backup_files(&repo, "config", &src);
    let outside = sentinel(&repo);
    let before = record_tree(&outside);
    let target = repo.dir.path().join("target");
    let id = craft(&repo, &base, |s| {
        let file = s
            .iter()
            .find(|e| e.kind == EntryType::File)
            .unwrap()
            .clone();
        let mut forged = vec![
            Entry {
                path: "x/evil".into(),
                ..file.clone()
            },
            Entry {
                path: "y/deep/evil".into(),
                ..file.clone()
            },
        ];
        // Harmless files in between: several leaves of the list tree.
        for i in 0..5000 {
            forged.push(Entry {
                path: format!("z/file-{i:05}"),
                ..file.clone()
            });
        }
        forged.push(symlink_entry("x", outside.to_str().unwrap()));
        forged.push(symlink_entry("y", "../sentinel"));
        *s = forged;
    });
    let r = repo.restore_into(&id, &target);
    assert_eq!(r.code, 3, "{}", r.stderr);
    for needle in [
        "2 unsafe entries",
        r#"entry "x/evil" lies below symlink entry "x""#,
        r#"entry "y/deep/evil" lies below symlink entry "y""#,
        "nothing was restored",
    ] {
        assert!(r.stderr.contains(needle), "{needle:?} not in: {}", r.stderr);
    }
    assert_eq!(record_tree(&outside), before, "the sentinel changed");
    assert!(
        !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
        "something was restored: {:?}",
        record_tree(&target)
    );
}

#[test]
fn dotdot_absolute_and_unnormalised_paths_are_refused() {
    let repo = TestRepo::new();
    let src = repo.scratch("src");
    std::fs::write(src.join("f"), b"payload").unwrap();
    let base = backup_files(&repo, "config", &src);
    let workdir = repo.scratch("work");
    let before = record_tree(repo.dir.path().join("work").as_path());
    let paths = ["../../escaped", "/tmp/absolute", "a/./b", "a//b", "a/"];
    let id = craft(&repo, &base, |s| {
        let file = s
            .iter()
            .find(|e| e.kind == EntryType::File)
            .unwrap()
            .clone();
        *s = paths
            .iter()
            .map(|p| Entry {
                path: (*p).into(),
                ..file.clone()
            })
            .collect();
    });
    let target = workdir.join("deep/target");
    for json in [false, true] {
        let mut args = vec!["restore", "--snapshot", &id[..12]];
        if json {
            args.insert(0, "--json");
        }
        let t = target.to_str().unwrap();
        args.extend(["--target", t]);
        let r = repo.run(&args);
        assert_eq!(r.code, 3, "{}", r.stderr);
        for p in paths {
            assert!(
                r.stderr.contains(&format!("entry path {p:?}")),
                "{p} not named: {}",
                r.stderr
            );
        }
        if json {
            let v = r.json();
            assert_eq!(v["error"]["exit_code"], 3, "{v}");
            assert!(v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unsafe entries"));
        }
    }
    assert!(!repo.dir.path().join("escaped").exists());
    assert!(!workdir.join("escaped").exists());
    assert!(!Path::new("/tmp/absolute").exists());
    assert_eq!(record_tree(&workdir), before);
    // `--stdout` of the same snapshot is refused too.
    let r = repo.run(&["restore", "--snapshot", &id, "--stdout", "--path", "a/./b"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

/// A tree whose `srv` is a directory of mode 0700 owned by 4321 (when root).
fn tree_with_srv(root: &Path) {
    let srv = root.join("srv");
    std::fs::create_dir_all(srv.join("sub")).unwrap();
    std::fs::write(srv.join("secret"), b"from the snapshot").unwrap();
    std::fs::write(srv.join("sub/deeper"), b"also").unwrap();
    std::fs::write(root.join("beside"), b"restored fine").unwrap();
    std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&srv, Some(4321), Some(4321)).unwrap();
    }
}

#[test]
fn a_symlink_already_in_the_target_is_not_followed() {
    let repo = TestRepo::new();
    let src = repo.scratch("src");
    tree_with_srv(&src);
    let id = backup_files(&repo, "config", &src);
    let outside = sentinel(&repo);
    let before = record_tree(&outside);
    // Someone (or an earlier restore) left `srv -> <sentinel>` in the target.
    let target = repo.scratch("target");
    let in_target = target.join(rel(&src));
    std::fs::create_dir_all(&in_target).unwrap();
    std::os::unix::fs::symlink(&outside, in_target.join("srv")).unwrap();
    let r = repo.run(&[
        "--json",
        "restore",
        "--snapshot",
        &id,
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(record_tree(&outside), before, "written through the link");
    let srv = format!("{}/srv", rel(&src));
    for p in [
        srv.clone(),
        format!("{srv}/secret"),
        format!("{srv}/sub"),
        format!("{srv}/sub/deeper"),
    ] {
        assert!(
            r.stderr.contains(&format!("not restored: {p}: ")),
            "{p} not reported: {}",
            r.stderr
        );
        // Once: as it happened, not again at the end.
        assert_eq!(
            r.stderr
                .lines()
                .filter(|l| l.contains(&format!("{p}: ")))
                .count(),
            1,
            "{p} reported more than once: {}",
            r.stderr
        );
    }
    assert!(r.stderr.contains("is a symlink"), "{}", r.stderr);
    assert!(r.stderr.contains("not followed"), "{}", r.stderr);
    // The summary, then the error object (docs/CLI.md).
    let v: serde_json::Value = serde_json::Deserializer::from_slice(&r.stdout)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 4, "{v}");
    assert!(failed.iter().all(|f| f["reason"] == "blocked"), "{v}");
    // The rest is restored, and the link is left as it was.
    assert_eq!(
        std::fs::read(in_target.join("beside")).unwrap(),
        b"restored fine"
    );
    assert_eq!(std::fs::read_link(in_target.join("srv")).unwrap(), outside);
}

#[test]
fn a_link_restored_earlier_is_not_chmodded_or_chowned_through_later() {
    let repo = TestRepo::new();
    let outside = sentinel(&repo);
    let before = record_tree(&outside);
    // Monday: `srv` is a link to the sentinel; Tuesday: a directory of mode
    // 0700 owned by 4321. Both restored into one target, in that order.
    let src = repo.scratch("src");
    std::os::unix::fs::symlink(&outside, src.join("srv")).unwrap();
    let monday = backup_files(&repo, "config", &src);
    std::fs::remove_file(src.join("srv")).unwrap();
    tree_with_srv(&src);
    let tuesday = backup_files(&repo, "config", &src);
    let target = repo.scratch("target");
    repo.restore_into(&monday, &target).ok();
    let link = target.join(rel(&src)).join("srv");
    assert_eq!(std::fs::read_link(&link).unwrap(), outside);
    let r = repo.restore_into(&tuesday, &target);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is a symlink"), "{}", r.stderr);
    assert_eq!(
        record_tree(&outside),
        before,
        "mode, owner, mtime or content changed through the link"
    );
    // Into an empty target the same snapshot restores whole, with its
    // modes (and owners as root).
    let clean = repo.scratch("clean");
    repo.restore_into(&tuesday, &clean).ok();
    let srv = clean.join(rel(&src)).join("srv");
    let m = std::fs::symlink_metadata(&srv).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o700);
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (4321, 4321));
    }
    assert_eq!(
        std::fs::read(srv.join("secret")).unwrap(),
        b"from the snapshot"
    );
}

// ---- --stdout of a postgres snapshot; `latest` by kind ----------------------

fn with_pg(mut c: std::process::Command, pg: &postgres::PgServer) -> std::process::Command {
    for (k, v) in pg.env() {
        c.env(k, v);
    }
    c.env_remove("USDCOP_DR_PG_DSN")
        .env_remove("USDCOP_DR_PG_TARGET_DSN")
        .env("PGPASSFILE", "/nonexistent");
    c
}

fn dr(repo: &TestRepo, pg: &postgres::PgServer, args: &[&str]) -> Run {
    let mut c = with_pg(repo.cmd(), pg);
    c.args(args);
    run_cmd(c, None)
}

#[test]
fn stdout_of_a_globals_snapshot_streams_the_dump_and_latest_follows_the_kind() {
    let pg = postgres::PgServer::start();
    pg.create_db("usdcop_trading");
    pg.psql(
        "usdcop_trading",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g;",
    );
    let repo = TestRepo::new();
    let snap = dr(
        &repo,
        &pg,
        &[
            "--json",
            "backup",
            "postgres",
            "--globals",
            "--source",
            "pg-usdcop",
            "--dsn",
            &pg.dsn("usdcop_trading"),
        ],
    )
    .ok()
    .json();
    let pg_id = snap["snapshot_id"].as_str().unwrap().to_owned();

    // What docs/POSTGRES.md tells an operator to type.
    let r = repo.run(&["restore", "--source", "pg-usdcop", "--stdout"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with(b"PGDMP"), "not a custom-format dump");
    assert!(r.stderr.contains("--path globals.sql"), "{}", r.stderr);
    let dump = repo.dir.path().join("usdcop_trading.dump");
    std::fs::write(&dump, &r.stdout).unwrap();
    let mut list = pg.command("pg_restore");
    list.arg("-l").arg(&dump);
    let toc = list.output().unwrap();
    assert!(
        toc.status.success(),
        "{}",
        String::from_utf8_lossy(&toc.stderr)
    );
    assert!(String::from_utf8_lossy(&toc.stdout).contains("TABLE DATA public t"));
    // --quiet keeps the note out of cron mail; the roles by --path.
    let r = repo.run(&["--quiet", "restore", "--source", "pg-usdcop", "--stdout"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let roles = repo
        .run(&[
            "restore",
            "--source",
            "pg-usdcop",
            "--stdout",
            "--path",
            "globals.sql",
        ])
        .ok();
    assert!(
        roles.stdout_str().contains("CREATE ROLE postgres"),
        "{}",
        roles.stdout_str()
    );

    // A files snapshot taken later: `latest` for `restore postgres` is
    // still the postgres one, plain `restore` takes the files one unless
    // told the kind.
    let src = repo.scratch("src");
    std::fs::write(src.join("app.env"), b"A=1").unwrap();
    let files_id = backup_files(&repo, "config", &src);
    repo.backup_stdin("ticks", "ticks.csv", b"t,p\n1,4000\n");
    pg.psql("postgres", "DROP DATABASE usdcop_trading");
    let r = dr(
        &repo,
        &pg,
        &[
            "--json",
            "restore",
            "postgres",
            "--create",
            "--target-dsn",
            &pg.dsn("usdcop_trading"),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["snapshot_id"], pg_id.as_str());
    assert_eq!(pg.psql("usdcop_trading", "SELECT count(*) FROM t"), "500");
    let r = repo.run(&["restore", "--stdout"]);
    assert_eq!(r.stdout, b"t,p\n1,4000\n", "{}", r.stderr);
    let r = repo.run(&["restore", "--kind", "postgres", "--stdout"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with(b"PGDMP"));
    let r = repo.run(&["restore", "--kind", "stream", "--stdout"]);
    assert_eq!(r.stdout, b"t,p\n1,4000\n", "{}", r.stderr);
    let t = repo.scratch("files-target");
    let r = repo.run(&[
        "--json",
        "restore",
        "--kind",
        "files",
        "--target",
        t.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["snapshot_id"], files_id.as_str());
    // An id of another kind is named as such.
    let r = dr(
        &repo,
        &pg,
        &[
            "restore",
            "postgres",
            "--snapshot",
            &files_id[..10],
            "--target-dsn",
            &pg.dsn("elsewhere"),
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("is a files snapshot, not a postgres one"),
        "{}",
        r.stderr
    );
    // No snapshot of the kind at all.
    let r = repo.run(&["restore", "--kind", "bucket", "--stdout"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no snapshot latest of kind bucket"),
        "{}",
        r.stderr
    );
}

#[test]
fn restore_bucket_takes_the_latest_bucket_snapshot() {
    let server = servers::S3Server::start(servers::ServerKind::Moto);
    server.create_bucket("raw");
    server.create_bucket("restored");
    server.bucket_tool(&["create", "raw", "20"]);
    let repo = TestRepo::new();
    let s3 = |args: &[&str]| {
        let mut c = repo.cmd();
        c.envs(server.env()).args(args);
        run_cmd(c, None)
    };
    let ep = server.endpoint.clone();
    let bucket_id = s3(&[
        "--json",
        "backup",
        "bucket",
        "--source",
        "minio",
        "--endpoint",
        &ep,
        "--bucket",
        "raw",
    ])
    .ok()
    .json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A later snapshot of another kind, even under the same source name.
    repo.run_stdin(
        &["backup", "stdin", "--source", "minio", "--stdin-name", "x"],
        b"not a bucket",
    )
    .ok();
    let r = s3(&[
        "--json",
        "restore",
        "bucket",
        "--source",
        "minio",
        "--endpoint",
        &ep,
        "--bucket",
        "restored",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["snapshot_id"], bucket_id.as_str());
    let cmp = server.bucket_tool(&["compare", "raw", "restored"]);
    assert_eq!(cmp["compared"], 20, "{cmp}");
    assert_eq!(cmp["problems"], serde_json::json!([]), "{cmp}");
    let _ = Id::parse(&bucket_id).unwrap();
}

/// An entry whose chunks hold more than its recorded size (a damaged or
/// forged list: a 1-byte file over many chunks) is reported as damaged and
/// not restored, and its chunks are not gathered past that size; the
/// other files are restored.
#[test]
fn a_file_whose_chunks_exceed_its_size_is_not_restored() {
    let repo = TestRepo::new();
    let src = repo.scratch("src");
    let big = common::random_bytes(3 << 20, 7);
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("ok"), b"fine").unwrap();
    let base = backup_files(&repo, "config", &src);
    let id = craft(&repo, &base, |s| {
        let e = s.iter_mut().find(|e| e.path.ends_with("/big")).unwrap();
        assert!(
            e.chunks.len() > 1,
            "3 MiB of random bytes is several chunks"
        );
        e.size = 1;
    });
    let target = repo.dir.path().join("target");
    let r = repo.restore_into(&id, &target);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("does not match the snapshot's checksum"),
        "{}",
        r.stderr
    );
    let restored = target.join(rel(&src));
    assert!(
        !restored.join("big").exists(),
        "the damaged file was restored"
    );
    assert_eq!(std::fs::read(restored.join("ok")).unwrap(), b"fine");
}
