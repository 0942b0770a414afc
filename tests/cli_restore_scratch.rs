//! Decrypted data a restore puts on local disk is removed when the restore
//! is stopped by a real signal: the dump `restore postgres --jobs 2`
//! stages (0600 in a private 0700 directory while it exists) and the
//! temporary files a directory restore writes beside their destination.
//! Exit codes 143 (SIGTERM) and 130 (SIGINT), as docs/CLI.md says.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{files_under, mode, random_bytes, TestRepo};
use postgres::*;

/// The binary on `repo`, reaching `pg` with its password in the
/// environment only.
fn pg_command(repo: &TestRepo, pg: &PgServer, args: &[&str]) -> Command {
    let mut c = repo.cmd();
    c.envs(pg.env())
        .env_remove("USDCOP_DR_PG_DSN")
        .env_remove("USDCOP_DR_PG_TARGET_DSN")
        .env("PGPASSFILE", "/nonexistent")
        .args(args);
    c
}

/// Spawn `c`, wait (at most 60 s) for a file under `dir` that `pick`
/// accepts, check it with `check`, send `signal`; returns (exit code, stderr).
fn signal_when(
    mut c: Command,
    dir: &Path,
    pick: impl Fn(&Path) -> bool,
    check: impl Fn(&Path),
    signal: i32,
) -> (i32, String) {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child: Child = c.spawn().unwrap();
    let start = Instant::now();
    let found = loop {
        if let Some(f) = files_under(dir).into_iter().find(|p| pick(p)) {
            break f;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the restore ended ({st}) before its file was seen in {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no file appeared in {} within 60 s",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    check(&found);
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server with the USDCOP-like database of `bars` bars, backed up once
/// (source `pg`) into a fresh repository.
fn backed_up_database(bars: usize) -> (PgServer, TestRepo) {
    let pg = PgServer::start();
    pg.create_db("usdcop_trading");
    load_usdcop_like(&pg, "usdcop_trading", bars);
    let repo = TestRepo::with_init_args(&[]);
    let src = pg.dsn("usdcop_trading");
    let backup = pg_command(
        &repo,
        &pg,
        &["backup", "postgres", "--source", "pg", "--dsn", &src],
    );
    common::run_cmd(backup, None).ok();
    (pg, repo)
}

#[test]
fn sigterm_during_a_staged_postgres_restore_removes_the_staged_dump() {
    let (pg, repo) = backed_up_database(20_000);
    let with_pg = |args: &[&str]| pg_command(&repo, &pg, args);

    let staging = tempfile::tempdir().unwrap();
    let target = pg.dsn("restored");
    let staging_arg = staging.path().to_str().unwrap().to_owned();
    let c = with_pg(&[
        "restore",
        "postgres",
        "--target-dsn",
        &target,
        "--create",
        "--jobs",
        "2",
        "--staging-dir",
        &staging_arg,
    ]);
    let (code, stderr) = signal_when(
        c,
        staging.path(),
        |_| true,
        |dump| {
            let private = dump.parent().unwrap();
            assert_eq!(private.parent().unwrap(), staging.path());
            assert!(
                private
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("usdcop-dr-"),
                "{}",
                dump.display()
            );
            assert_eq!(mode(private), 0o700, "{}", private.display());
            assert_eq!(mode(dump), 0o600, "{}", dump.display());
        },
        libc::SIGTERM,
    );
    assert_eq!(code, 143, "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(staging.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "staged dump left behind: {left:?}");
}

#[test]
fn a_missing_staging_directory_stops_a_restore_before_the_database_is_created() {
    let (pg, repo) = backed_up_database(1_000);
    let with_pg = |args: &[&str]| pg_command(&repo, &pg, args);
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("not-there");
    let run = common::run_cmd(
        with_pg(&[
            "restore",
            "postgres",
            "--target-dsn",
            &pg.dsn("restored"),
            "--create",
            "--jobs",
            "2",
            "--staging-dir",
            missing.to_str().unwrap(),
        ]),
        None,
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("not-there"), "{}", run.stderr);
    assert!(!run.stderr.contains("partial restore"), "{}", run.stderr);
    let exists = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname = 'restored'",
    );
    assert_eq!(
        exists.trim(),
        "0",
        "the database was created: {}",
        run.stderr
    );
    assert!(!missing.exists());
}

#[test]
fn sigint_during_a_directory_restore_removes_its_temporary_files() {
    let repo = TestRepo::new();
    let data = random_bytes(96 << 20, 3);
    repo.backup_stdin("big", "big.bin", &data);
    let is_tmp = |p: &Path| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".big.bin.usdcop-dr-")
    };
    let is_big = |p: &Path| p.file_name().unwrap() == "big.bin";

    // Into an empty directory the file is written under its own name
    // (nothing to replace): stopped halfway, the partial file goes.
    let target = repo.scratch("target");
    let mut c = repo.cmd();
    c.args(["restore", "--target", target.to_str().unwrap()]);
    let (code, stderr) = signal_when(
        c,
        &target,
        is_big,
        // Decrypted content is not readable by others before it is verified.
        |f| assert_eq!(mode(f), 0o600, "{}", f.display()),
        libc::SIGINT,
    );
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("stopped by SIGINT"), "{stderr}");
    let left = files_under(&target);
    assert!(left.is_empty(), "partial files left behind: {left:?}");

    // Over a file already there: a temporary file beside it, removed by
    // the signal; the old file untouched.
    let over = repo.scratch("over");
    std::fs::write(over.join("big.bin"), b"old").unwrap();
    let mut c = repo.cmd();
    c.args(["restore", "--target", over.to_str().unwrap()]);
    let (code, stderr) = signal_when(
        c,
        &over,
        is_tmp,
        |tmp| assert_eq!(mode(tmp), 0o600, "{}", tmp.display()),
        libc::SIGINT,
    );
    assert_eq!(code, 130, "{stderr}");
    let left: Vec<_> = files_under(&over)
        .into_iter()
        .filter(|p| is_tmp(p))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    assert_eq!(std::fs::read(over.join("big.bin")).unwrap(), b"old");
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[test]
fn sigterm_during_pg_restore_stops_pg_restore_too() {
    // A SIGTERM to usdcop-dr alone (`kill PID`, systemd's KillMode=mixed)
    // must not leave a pg_restore running on against the database from a
    // staged dump. The "pg_restore" here is a wrapper that records its pid
    // and then waits, standing for a long restore.
    let pg = PgServer::start();
    pg.create_db("usdcop_trading");
    load_usdcop_like(&pg, "usdcop_trading", 2_000);
    let repo = TestRepo::with_init_args(&[]);
    let tools = tempfile::tempdir().unwrap();
    let marker = tools.path().join("pid");
    let wrapper = tools.path().join("pg_restore");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec '{real}' --version; fi\n\
             echo $$ > '{m}.tmp' && mv '{m}.tmp' '{m}'\nexec sleep 120\n",
            real = pg.bin("pg_restore").display(),
            m = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let with_pg = |args: &[&str]| pg_command(&repo, &pg, args);
    let src = pg.dsn("usdcop_trading");
    common::run_cmd(
        with_pg(&["backup", "postgres", "--source", "pg", "--dsn", &src]),
        None,
    )
    .ok();
    let staging = tempfile::tempdir().unwrap();
    let target = pg.dsn("restored");
    let mut c = with_pg(&[
        "restore",
        "postgres",
        "--target-dsn",
        &target,
        "--create",
        "--jobs",
        "2",
        "--staging-dir",
        staging.path().to_str().unwrap(),
        "--pg-restore",
        wrapper.to_str().unwrap(),
    ]);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    let pid: i32 = loop {
        if let Ok(s) = std::fs::read_to_string(&marker) {
            break s.trim().parse().unwrap();
        }
        if let Ok(Some(st)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the restore ended ({st}) before pg_restore started: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "pg_restore did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!dead(pid), "the wrapper stands for a running pg_restore");
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    let gone = Instant::now();
    while !dead(pid) {
        if gone.elapsed() > Duration::from_secs(10) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("pg_restore (pid {pid}) still runs 10 s after usdcop-dr was stopped: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        files_under(staging.path()).is_empty(),
        "staged dump left behind"
    );
}
