//! Point-in-time recovery end to end, on a real cluster archiving through
//! `usdcop-dr wal-push` (as its `archive_command`, as the server's OS
//! user): a base backup (`backup postgres-base`), then
//! `restore postgres --point-in-time … --start` into empty data
//! directories: to a time between two batches (the first there, the
//! second not), to `latest` (a `pg_dumpall` equal to the source's, amcheck
//! clean), to a time on a new timeline after a promotion (the `.history`
//! file archived and followed), to a time past the archive (refused before
//! anything is written, naming the newest recoverable time), into a
//! non-empty directory (refused); prune keeps the WAL the kept base backup
//! needs and deletes what is below it.

#[path = "common/archive.rs"]
mod archive;
mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use archive::*;
use common::{run_cmd_timeout, Run};
use postgres::*;

/// A restored data directory started by the test (as the server's OS
/// user, its socket in a directory of its own, no TCP), stopped on drop.
struct Restored {
    pgdata: PathBuf,
    sock: tempfile::TempDir,
    port: u16,
    password: String,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
}

impl Restored {
    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("PGPASSWORD", &self.password);
        c
    }

    fn start(pgdata: &Path, pg: &PgServer, port: u16) -> Restored {
        let owner = server_user();
        let sock = tempfile::Builder::new()
            .prefix("usdcop-dr-pitr-sock-")
            .tempdir()
            .unwrap();
        if let Some((u, g)) = owner {
            std::os::unix::fs::chown(sock.path(), Some(u), Some(g)).unwrap();
        }
        let r = Restored {
            pgdata: pgdata.to_owned(),
            sock,
            port,
            password: pg.password().to_owned(),
            bin: pg.bin_dir().to_owned(),
            owner,
        };
        let mut c = r.tool("pg_ctl");
        c.arg("start")
            .arg("-D")
            .arg(pgdata)
            .arg("-l")
            .arg(r.sock.path().join("log"))
            .args(["-w", "-t", "120", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses='' -c fsync=off",
                r.sock.path().display()
            ));
        if let Some((u, g)) = owner {
            c.uid(u).gid(g);
        }
        let out = run_cmd_timeout(c, None, Duration::from_secs(150));
        assert_eq!(
            out.code,
            0,
            "the restored cluster does not start: {}\n{}",
            out.stderr,
            std::fs::read_to_string(r.sock.path().join("log")).unwrap_or_default()
        );
        r
    }

    fn client(&self, tool: &str, db: &str) -> Command {
        let mut c = self.tool(tool);
        c.arg("-h")
            .arg(self.sock.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres"]);
        if tool == "psql" {
            c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db]);
        }
        c
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        let mut c = self.client("psql", db);
        c.arg("-c").arg(sql);
        let r = run_cmd_timeout(c, None, Duration::from_secs(120));
        assert_eq!(r.code, 0, "psql {sql:?}: {}", r.stderr);
        r.stdout_str().trim().to_owned()
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let mut c = self.tool("pg_ctl");
        c.arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "-t", "30"]);
        if let Some((u, g)) = self.owner {
            c.uid(u).gid(g);
        }
        let _ = c.output();
    }
}

fn pg_dumpall(mut c: Command) -> String {
    c.arg("--no-role-passwords");
    let r = run_cmd_timeout(c, None, Duration::from_secs(120));
    assert_eq!(r.code, 0, "pg_dumpall: {}", r.stderr);
    // The psql meta-commands newer dumps wrap around each database carry
    // a random key per run: everything else must be equal.
    r.stdout_str()
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `restore postgres --point-in-time TIME --pgdata DIR --start
/// --no-restart`, as root (the files get the backup's owner).
fn pitr(a: &Archive, time: &str, pgdata: &Path, extra: &[&str]) -> Run {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("USDCOP_DR_STATE_DIR", a.path("state-root"))
        .env("USDCOP_DR_CACHE_DIR", a.path("cache-root"))
        .arg("--config")
        .arg(a.config())
        .arg("--json")
        .args(["restore", "postgres", "--point-in-time", time, "--pgdata"])
        .arg(pgdata)
        .args(extra);
    run_cmd_timeout(c, None, Duration::from_secs(300))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until the restored cluster has archived WAL segment `segment`
/// (by name: a count read after `pg_switch_wal()` may already include it,
/// and then waits for a segment that an idle cluster never writes).
fn wait_archived_on(r: &Restored, segment: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let row = r.psql(
            "postgres",
            &format!(
                "SELECT coalesce(last_archived_wal >= '{segment}', false), failed_count \
                 FROM pg_stat_archiver"
            ),
        );
        let (done, failed) = row.split_once('|').unwrap();
        let failed: u64 = failed.parse().unwrap();
        assert_eq!(failed, 0, "archive_command failed on the restored cluster");
        if done == "t" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{segment} not archived after 120 s ({row})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn point_in_time_recovery_end_to_end() {
    let a = Archive::new();
    let conf = format!(
        "archive_mode = on\narchive_command = '{}'\narchive_timeout = 2s\nwal_level = replica\n",
        a.archive_command()
    );
    let pg = PgServer::start_with_conf(&PgOptions::default(), &conf);
    pg.psql(
        "postgres",
        "CREATE TABLE ticks (id int PRIMARY KEY, batch text NOT NULL, px numeric); \
         CREATE INDEX ticks_batch ON ticks (batch); \
         INSERT INTO ticks SELECT g, 'seed', g * 1.5 FROM generate_series(1, 5000) g;",
    );

    // The base backup, as the server's OS user, over TCP with the
    // password in the environment (never argv).
    let mut c = a.cmd(&["--json", "backup", "postgres-base", "--source", "trading"]);
    c.env("USDCOP_DR_PG_DSN", pg.dsn("postgres"))
        .env("PGPASSWORD", pg.password());
    let b = run_cmd_timeout(c, None, Duration::from_secs(300));
    assert_eq!(b.code, 0, "backup postgres-base: {}", b.stderr);
    let base = b.json();
    assert_eq!(base["kind"], "wal");
    let info = &base["postgres_base"];
    assert_eq!(info["system_identifier"], system_identifier(&pg));
    assert_eq!(info["pg_version"], "15");
    assert!(info["start_lsn"].as_str().unwrap().contains('/'));
    // Its WAL is in the archive: the snapshot waited for it.
    let stop = info["stop_segment"].as_str().unwrap();
    assert!(
        a.archived("00000001").iter().any(|(n, _)| n == stop),
        "{stop} not archived"
    );

    // A second base backup right away stores little: every relation file
    // is unchanged, so only its chunk list is new.
    let mut c = a.cmd(&["--json", "backup", "postgres-base", "--source", "trading"]);
    c.env("USDCOP_DR_PG_DSN", pg.dsn("postgres"))
        .env("PGPASSWORD", pg.password());
    let again = run_cmd_timeout(c, None, Duration::from_secs(300));
    assert_eq!(again.code, 0, "second base backup: {}", again.stderr);
    let (bytes_in, new) = (
        again.json()["bytes_in"].as_u64().unwrap(),
        again.json()["bytes_stored_new"].as_u64().unwrap(),
    );
    eprintln!("unchanged base backup: {bytes_in} bytes read, {new} stored new");
    assert!(
        bytes_in > 20 << 20 && new < bytes_in / 10,
        "{bytes_in} in, {new} new"
    );

    // Batch A, the target time, batch B.
    pg.psql(
        "postgres",
        "INSERT INTO ticks SELECT g, 'A', g FROM generate_series(10001, 11000) g",
    );
    std::thread::sleep(Duration::from_millis(700));
    let t = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(700));
    pg.psql(
        "postgres",
        "INSERT INTO ticks SELECT g, 'B', g FROM generate_series(20001, 22000) g",
    );
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let archived = pg.psql("postgres", "SELECT archived_count FROM pg_stat_archiver");
    wait_archived(&pg, archived.parse::<u64>().unwrap() + 1);
    let source_dump = pg_dumpall({
        let mut c = pg.command("pg_dumpall");
        c.arg("-h").arg("127.0.0.1");
        c
    });

    let scratch = tempfile::Builder::new()
        .prefix("usdcop-dr-pitr-")
        .tempdir()
        .unwrap();
    let dir = |n: &str| scratch.path().join(n);

    // To T: A without B. The time is given in Bogotá local time without a
    // zone (objectives.timezone is UTC here: the default) … in RFC 3339.
    let r = pitr(
        &a,
        &t.to_rfc3339(),
        &dir("at_t"),
        &[
            "--start",
            "--no-restart",
            "--port",
            &free_port().to_string(),
        ],
    );
    assert_eq!(r.code, 0, "restore to T: {}", r.stderr);
    let out = r.json();
    let reached = out["recovery"]["recovered_to"].as_str().unwrap();
    let reached = chrono::DateTime::parse_from_rfc3339(reached).unwrap();
    assert!(reached <= t, "recovered to {reached}, after the target {t}");
    assert!(
        std::fs::metadata(dir("at_t"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap()
            == 0o700
    );
    {
        let restored = Restored::start(&dir("at_t"), &pg, free_port());
        assert_eq!(
            restored.psql(
                "postgres",
                "SELECT count(*) FILTER (WHERE batch = 'A') || ',' || count(*) FILTER (WHERE batch = 'B') FROM ticks"
            ),
            "1000,0"
        );
    }

    // To latest, archiving kept (it becomes the primary of timeline 2).
    let r = pitr(
        &a,
        "latest",
        &dir("latest"),
        &[
            "--start",
            "--no-restart",
            "--keep-archiving",
            "--port",
            &free_port().to_string(),
        ],
    );
    assert_eq!(r.code, 0, "restore to latest: {}", r.stderr);
    assert_eq!(r.json()["recovery"]["timeline"], 2);
    let primary = Restored::start(&dir("latest"), &pg, free_port());
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT count(*) FILTER (WHERE batch = 'A') || ',' || count(*) FILTER (WHERE batch = 'B') FROM ticks"
        ),
        "1000,2000"
    );
    let restored_dump = pg_dumpall(primary.client("pg_dumpall", "postgres"));
    if restored_dump != source_dump {
        let diff: Vec<String> = source_dump
            .lines()
            .zip(restored_dump.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("source:   {a}\nrestored: {b}"))
            .collect();
        panic!(
            "pg_dumpall of the restored cluster differs from the source's ({} vs {} lines):\n{}",
            source_dump.lines().count(),
            restored_dump.lines().count(),
            diff.join("\n")
        );
    }
    primary.psql("postgres", "CREATE EXTENSION amcheck");
    let checked = primary.psql(
        "postgres",
        "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
         WHERE am.amname = 'btree' AND c.relpersistence <> 't'",
    );
    assert!(
        checked.parse::<u32>().unwrap() > 100,
        "{checked} indexes checked"
    );

    // On timeline 2: batch C, the target T2, batch D.
    primary.psql(
        "postgres",
        "INSERT INTO ticks SELECT g, 'C', g FROM generate_series(30001, 30500) g",
    );
    std::thread::sleep(Duration::from_millis(700));
    let t2 = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(700));
    primary.psql(
        "postgres",
        "INSERT INTO ticks SELECT g, 'D', g FROM generate_series(40001, 40500) g",
    );
    let segment = primary.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived_on(&primary, &segment);
    assert!(
        a.archived("00000002")
            .iter()
            .any(|(n, _)| n == "00000002.history"),
        "the new timeline's history file is archived"
    );
    // T2 as "YYYY-MM-DD HH:MM:SS.ffffff UTC".
    let t2_text = t2.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string();
    let r = pitr(
        &a,
        &t2_text,
        &dir("at_t2"),
        &[
            "--start",
            "--no-restart",
            "--port",
            &free_port().to_string(),
        ],
    );
    assert_eq!(r.code, 0, "restore to T2 on timeline 2: {}", r.stderr);
    assert_eq!(r.json()["recovery"]["timeline"], 3);
    {
        let restored = Restored::start(&dir("at_t2"), &pg, free_port());
        assert_eq!(
            restored.psql(
                "postgres",
                "SELECT string_agg(batch || '=' || n, ',' ORDER BY batch) FROM \
                 (SELECT batch, count(*) n FROM ticks GROUP BY batch) s"
            ),
            "A=1000,B=2000,C=500,seed=5000"
        );
    }
    // The second base backup, of the new primary (timeline 2): after a
    // failover the old primary is retired and backups follow the new one.
    let mut c = a.cmd(&["--json", "backup", "postgres-base", "--source", "trading"]);
    c.env(
        "USDCOP_DR_PG_DSN",
        format!(
            "host={} port={} user=postgres dbname=postgres",
            primary.sock.path().display(),
            primary.port
        ),
    )
    .env("PGPASSWORD", pg.password());
    let b2 = run_cmd_timeout(c, None, Duration::from_secs(300));
    assert_eq!(b2.code, 0, "second base backup: {}", b2.stderr);
    assert_eq!(b2.json()["postgres_base"]["timeline"], 2);
    let keep_from = b2.json()["postgres_base"]["start_segment"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(primary);

    // Past the archive: a clear error, not a recovered cluster.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = pitr(
        &a,
        &later,
        &dir("too_late"),
        &[
            "--start",
            "--no-restart",
            "--port",
            &free_port().to_string(),
        ],
    );
    assert_ne!(
        r.code,
        0,
        "a target past the archive must fail: {}",
        r.stdout_str()
    );
    // Refused before anything is written, naming the newest recoverable
    // time and the ranges.
    assert!(
        r.stderr.contains("does not carry base backup")
            && r.stderr.contains("newest recoverable time")
            && r.stderr.contains("recoverable ranges"),
        "{}",
        r.stderr
    );
    assert!(!dir("too_late").join("PG_VERSION").exists());

    // A non-empty data directory is refused, and left as it was.
    std::fs::create_dir(dir("busy")).unwrap();
    std::fs::write(dir("busy").join("keep.txt"), b"mine").unwrap();
    let r = pitr(&a, "latest", &dir("busy"), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(dir("busy").join("keep.txt")).unwrap(),
        b"mine"
    );
    assert_eq!(std::fs::read_dir(dir("busy")).unwrap().count(), 1);

    // Retention: a policy keeping the newest base backup only (the second);
    // prune deletes the first and the WAL below the second's start, keeps
    // the history files, and `latest` still restores.
    let policies = a.path("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("all.toml"),
        "[[policy]]\nsources = [\"trading\"]\nkeep_last = 1\n",
    )
    .unwrap();
    let mut cfg = std::fs::read_to_string(a.config()).unwrap();
    cfg += "\n[retention]\npolicies = \"policies\"\ngrace = \"0s\"\nmin_age = \"0s\"\n";
    std::fs::write(a.config(), cfg).unwrap();
    for p in [policies.clone(), policies.join("all.toml")] {
        a.give(&p);
    }
    let below = |n: &str| n.len() == 24 && n[8..] < keep_from[8..];
    assert!(a.archived("00000001").iter().any(|(n, _)| below(n)));
    let r = a.run(&["--json", "prune"]);
    assert_eq!(r.code, 0, "prune: {}", r.stderr);
    let wal = &r.json()["wal"];
    assert_eq!(wal["keep_from"], keep_from.as_str());
    assert!(wal["files_deleted"].as_u64().unwrap() > 0, "{wal}");
    for tl in ["00000001", "00000002"] {
        let left: Vec<String> = a
            .archived(tl)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| below(n))
            .collect();
        assert!(left.is_empty(), "WAL below {keep_from} left: {left:?}");
    }
    assert!(a
        .archived("00000002")
        .iter()
        .any(|(n, _)| n == "00000002.history"));
    let r = pitr(
        &a,
        "latest",
        &dir("after_prune"),
        &[
            "--start",
            "--no-restart",
            "--port",
            &free_port().to_string(),
        ],
    );
    assert_eq!(r.code, 0, "latest after prune: {}", r.stderr);
    // T is before the only base backup left: said so, with the gap.
    let r = pitr(&a, &t.to_rfc3339(), &dir("before_base"), &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no base backup") && r.stderr.contains("consistent"),
        "{}",
        r.stderr
    );
}

/// Refused before anything is written: a cluster that does not archive
/// (a base backup without its WAL restores nothing), and a cluster that is
/// not the one whose WAL the archive holds.
#[test]
fn base_backups_of_the_wrong_cluster_are_refused() {
    let a = Archive::new();
    let backup = |pg: &PgServer| {
        let mut c = a.cmd(&["backup", "postgres-base", "--source", "trading"]);
        c.env("USDCOP_DR_PG_DSN", pg.dsn("postgres"))
            .env("PGPASSWORD", pg.password());
        run_cmd_timeout(c, None, Duration::from_secs(120))
    };
    let plain = PgServer::start();
    let r = backup(&plain);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("does not archive its WAL"),
        "{}",
        r.stderr
    );
    assert!(a.objects_under("snapshots").is_empty());
    assert!(a.objects_under("data").is_empty(), "nothing written");

    // The archive belongs to the first cluster that pushed into it.
    let conf = format!(
        "archive_mode = on\narchive_command = '{}'\narchive_timeout = 1s\n",
        a.archive_command()
    );
    let first = PgServer::start_with_conf(&PgOptions::default(), &conf);
    first.psql(
        "postgres",
        "CREATE TABLE t AS SELECT 1; SELECT pg_switch_wal()",
    );
    wait_archived(&first, 1);
    let second = PgServer::start_with_conf(
        &PgOptions::default(),
        &conf.replace("archive_mode = on", "archive_mode = on\n# second"),
    );
    let r = backup(&second);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&system_identifier(&second))
            && r.stderr.contains(&system_identifier(&first)),
        "{}",
        r.stderr
    );
    assert!(a.objects_under("snapshots").is_empty());
}
