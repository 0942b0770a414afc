//! `backup postgres` / `restore postgres` against a real PostgreSQL 15
//! server started by the harness (tests/common/postgres.rs): a USDCOP-like
//! database is dumped, restored into new databases (streamed and with
//! parallel jobs) and compared row by row; a 1 % change stores a small
//! fraction; failures (wrong password, killed pg_dump, dropped connection,
//! non-empty target) leave no snapshot and change nothing.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_cmd, Run, TestRepo};
use postgres::*;

const SOURCE_DB: &str = "usdcop_trading";

fn with_pg(mut c: Command, pg: &PgServer) -> Command {
    for (k, v) in pg.env() {
        c.env(k, v);
    }
    c.env_remove("USDCOP_DR_PG_DSN")
        .env_remove("USDCOP_DR_PG_TARGET_DSN")
        .env("PGPASSFILE", "/nonexistent");
    c
}

fn dr(repo: &TestRepo, pg: &PgServer, args: &[&str]) -> Run {
    let mut c = with_pg(repo.cmd(), pg);
    c.args(args);
    run_cmd(c, None)
}

fn backup(repo: &TestRepo, pg: &PgServer, source: &str) -> serde_json::Value {
    dr(
        repo,
        pg,
        &[
            "--json",
            "backup",
            "postgres",
            "--source",
            source,
            "--dsn",
            &pg.dsn(SOURCE_DB),
        ],
    )
    .ok()
    .json()
}

fn restore(repo: &TestRepo, pg: &PgServer, target: &str, extra: &[&str]) -> Run {
    let dsn = pg.dsn(target);
    let mut args = vec![
        "--json",
        "restore",
        "postgres",
        "--source",
        "pg",
        "--target-dsn",
        &dsn,
    ];
    args.extend_from_slice(extra);
    dr(repo, pg, &args)
}

fn rows(pg: &PgServer, db: &str) -> u64 {
    USDCOP_TABLES
        .iter()
        .map(|t| {
            pg.psql(db, &format!("SELECT count(*) FROM {t}"))
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

#[test]
fn a_database_is_restored_row_for_row_and_a_small_change_stores_little() {
    let t0 = Instant::now();
    let pg = PgServer::start();
    pg.create_db(SOURCE_DB);
    load_usdcop_like(&pg, SOURCE_DB, 60_000);
    // An extension (contrib), which the restore checks the target has.
    pg.psql(SOURCE_DB, "CREATE EXTENSION hstore");
    let source_rows = rows(&pg, SOURCE_DB);
    eprintln!("loaded {source_rows} rows in {:?}", t0.elapsed());
    let repo = TestRepo::with_init_args(&[]);

    let first = backup(&repo, &pg, "pg");
    eprintln!("first backup: {first}");
    assert_eq!(first["kind"], "postgres");
    assert_eq!(first["postgres"]["tables"], USDCOP_TABLES.len() as u64);
    assert_eq!(first["postgres"]["rows"], source_rows);
    assert_eq!(
        first["postgres"]["tables_checksummed"],
        USDCOP_TABLES.len() as u64
    );
    let snaps = dr(&repo, &pg, &["--json", "snapshots"]).ok().json();
    let picture = &snaps[0]["metadata"]["postgres"];
    let extensions: Vec<&str> = picture["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(extensions.contains(&"hstore"), "{picture}");
    let dump_size = first["bytes_in"].as_u64().unwrap();

    // Streamed restore into a new database: identical rows, verified.
    let r = restore(&repo, &pg, "restored", &["--create"]).ok().json();
    eprintln!("restore: {r}");
    assert_eq!(r["created"], true);
    assert_eq!(r["differences"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["rows"], source_rows);
    // Each table was checked once pg_restore went on to its next item
    // (the last one's successor may be none: checked after pg_restore).
    let early = r["tables_checked_during_restore"].as_u64().unwrap();
    assert!(
        early + 1 >= r["tables"].as_u64().unwrap() && early > 0,
        "{r}"
    );
    assert_same_data(&pg, SOURCE_DB, &pg, "restored");

    // Parallel restore (staged on disk, then removed) onto another server.
    let other = PgServer::start();
    let staging = tempfile::tempdir().unwrap();
    let r = restore(
        &repo,
        &other,
        "restored_parallel",
        &[
            "--create",
            "--jobs",
            "3",
            "--staging-dir",
            staging.path().to_str().unwrap(),
        ],
    )
    .ok()
    .json();
    assert_eq!(
        (r["jobs"].as_u64(), r["staged"].as_bool()),
        (Some(3), Some(true))
    );
    assert_eq!(r["differences"].as_array().unwrap().len(), 0, "{r}");
    // Every table was checked as soon as pg_restore reported its data
    // loaded, not after pg_restore: the check overlaps the restore.
    assert_eq!(r["tables_checked_during_restore"], r["tables"], "{r}");
    assert_same_data(&pg, SOURCE_DB, &other, "restored_parallel");
    let left: Vec<_> = std::fs::read_dir(staging.path()).unwrap().collect();
    assert!(left.is_empty(), "staged dump left behind: {left:?}");

    // A non-empty target without --clean: refused, nothing changed.
    pg.psql(
        "restored",
        "UPDATE pipeline_status SET status = 'edited' WHERE id = 1",
    );
    let before = database_fingerprints(&pg, "restored");
    let refused = restore(&repo, &pg, "restored", &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("not empty"), "{}", refused.stderr);
    assert_eq!(database_fingerprints(&pg, "restored"), before);
    // With --clean it is replaced by the snapshot's content.
    let r = restore(&repo, &pg, "restored", &["--clean"]).ok().json();
    assert_eq!(r["differences"].as_array().unwrap().len(), 0, "{r}");
    assert_same_data(&pg, SOURCE_DB, &pg, "restored");

    // About 1 % of the rows change: the most recent bars are corrected
    // and a day of new bars arrives (how the trading database changes).
    let bars: u64 = pg
        .psql(SOURCE_DB, "SELECT count(*) FROM usdcop_m5_ohlcv")
        .parse()
        .unwrap();
    pg.psql(
        SOURCE_DB,
        &format!(
            "UPDATE usdcop_m5_ohlcv SET close = close + 0.0001 WHERE time > \
             (SELECT max(time) FROM usdcop_m5_ohlcv) - interval '5 minutes' * {};
             INSERT INTO usdcop_m5_ohlcv (time, symbol, open, high, low, close, volume)
             SELECT max_t + g * interval '5 minutes', 'USDCOP', 4000, 4001, 3999, 4000.5, g
             FROM (SELECT max(time) AS max_t FROM usdcop_m5_ohlcv) m, generate_series(1, 288) g;",
            bars / 200
        ),
    );
    let second = backup(&repo, &pg, "pg");
    let stored = second["bytes_stored_new"].as_u64().unwrap();
    let fraction = stored as f64 / second["bytes_in"].as_f64().unwrap();
    eprintln!(
        "second backup after ~1 % clustered changes: {stored} of {} bytes stored ({:.1} %); first dump {dump_size}",
        second["bytes_in"],
        fraction * 100.0
    );
    assert!(fraction < 0.15, "{second}");
    let r = restore(&repo, &pg, "restored_second", &["--create"])
        .ok()
        .json();
    assert_eq!(r["differences"].as_array().unwrap().len(), 0, "{r}");
    assert_same_data(&pg, SOURCE_DB, &pg, "restored_second");
    eprintln!("total {:?}", t0.elapsed());
}

/// The dumping pg_dump child of a running usdcop-dr process (from /proc,
/// so no pgrep is needed).
fn pg_dump_child(parent: u32) -> Option<i32> {
    for ent in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = ent.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(ent.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        // The dump itself, not the `pg_dump --version` probe before it.
        let dumping = std::fs::read(ent.path().join("cmdline"))
            .is_ok_and(|c| c.windows(10).any(|w| w == b"--snapshot"));
        if comm == "pg_dump" && ppid == Some(parent.to_string().as_str()) && dumping {
            return Some(pid);
        }
    }
    None
}

/// Start a backup that will block inside pg_dump (a lock on one table is
/// held by another session); returns the running backup.
fn blocked_backup(
    repo: &TestRepo,
    pg: &PgServer,
) -> (std::process::Child, std::process::Child, i32) {
    let mut locker = pg.command("psql");
    locker
        .args(["-X", "-q", "-d", &pg.dsn(SOURCE_DB), "-c"])
        .arg("BEGIN; LOCK TABLE pipeline_status IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);")
        .stdout(Stdio::null());
    let mut locker = locker.spawn().unwrap();
    // Wait until the lock is held.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg
        .psql(
            SOURCE_DB,
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'pipeline_status'::regclass",
        )
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the lock was never taken ({:?}): {}",
            locker.try_wait(),
            pg.psql(SOURCE_DB, "SELECT pid, state, wait_event, left(query, 60), application_name FROM pg_stat_activity")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = with_pg(repo.cmd(), pg);
    c.args([
        "backup",
        "postgres",
        "--source",
        "pg",
        "--dsn",
        &pg.dsn(SOURCE_DB),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let dump = loop {
        if let Some(pid) = pg_dump_child(child.id()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "pg_dump never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    (child, locker, dump)
}

/// End the lock holder and every other session (a killed client's backend
/// would otherwise sleep on, holding its lock).
fn release(pg: &PgServer, mut locker: std::process::Child) {
    let _ = locker.kill();
    let _ = locker.wait();
    pg.psql(
        SOURCE_DB,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
    );
}

fn finish(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn failures_leave_no_snapshot_and_never_show_the_password() {
    let pg = PgServer::start();
    pg.create_db(SOURCE_DB);
    load_usdcop_like(&pg, SOURCE_DB, 2_000);
    let repo = TestRepo::new();

    // Wrong password: one clear line, exit 1, nothing written.
    let secret = "Wr0ng-Passw0rd-0f-The-Day";
    let mut c = repo.cmd();
    c.env("PGPASSWORD", secret)
        .env("PGPASSFILE", "/nonexistent")
        .args([
            "backup",
            "postgres",
            "--source",
            "pg",
            "--dsn",
            &pg.dsn(SOURCE_DB),
        ]);
    let r = run_cmd(c, None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("password authentication failed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(secret) && !r.stdout_str().contains(secret));
    assert!(r
        .stderr
        .lines()
        .next()
        .unwrap()
        .starts_with("usdcop-dr: error: cannot connect"));
    for dir in ["snapshots", "locks", "data", "index"] {
        assert!(
            repo.objects(dir).is_empty(),
            "{dir} written after a failed connection"
        );
    }

    // A password on the command line is refused without being echoed.
    let url = format!(
        "postgresql://postgres:{secret}@127.0.0.1:{}/{SOURCE_DB}",
        pg.port()
    );
    let r = dr(
        &repo,
        &pg,
        &["backup", "postgres", "--source", "pg", "--dsn", &url],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("carries a password"), "{}", r.stderr);
    assert!(!r.stderr.contains(secret));
    // The same DSN from the environment is fine, and the password is not
    // in the output or in the snapshot's recorded DSN.
    let mut c = repo.cmd();
    c.env("USDCOP_DR_PG_DSN", url.replace(secret, pg.password()))
        .env("PGPASSFILE", "/nonexistent")
        .args(["--json", "backup", "postgres", "--source", "pg-env"]);
    let r = run_cmd(c, None).ok();
    assert!(!r.stdout_str().contains(pg.password()) && !r.stderr.contains(pg.password()));
    let meta = repo
        .run(&["--json", "snapshots", "--source", "pg-env"])
        .ok()
        .json();
    let recorded = &meta[0]["metadata"]["postgres"];
    assert_eq!(
        recorded["dsn"],
        format!("postgresql://postgres@127.0.0.1:{}/{SOURCE_DB}", pg.port()),
        "{meta}"
    );
    assert!(!meta.to_string().contains(pg.password()));

    // pg_dump killed mid-dump: its failure is the error, no snapshot.
    let (child, locker, dump) = blocked_backup(&repo, &pg);
    unsafe { libc_kill(dump, 9) };
    let (code, stderr) = finish(child);
    release(&pg, locker);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("pg_dump was killed by signal 9"),
        "{stderr}"
    );
    let snaps = repo
        .run(&["--json", "snapshots", "--source", "pg"])
        .ok()
        .json();
    assert_eq!(snaps.as_array().unwrap().len(), 0, "{snaps}");

    // The connection dropped mid-dump (pg_dump's backend terminated).
    let (child, locker, _) = blocked_backup(&repo, &pg);
    // pg_dump may not have connected yet: until its backend is ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg.psql(
        SOURCE_DB,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pg_dump'",
    ) == "0"
    {
        assert!(Instant::now() < deadline, "pg_dump never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, stderr) = finish(child);
    release(&pg, locker);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("pg_dump exited with code 1"), "{stderr}");
    let snaps = repo
        .run(&["--json", "snapshots", "--source", "pg"])
        .ok()
        .json();
    assert_eq!(snaps.as_array().unwrap().len(), 0, "{snaps}");
    repo.run(&["verify"]).ok();

    // A restore that silently changed data (here a pg_restore wrapper
    // that edits one value of the COPY data on its way in, as a broken
    // load or conversion would) is caught by the checksum: exit 3, the
    // table named. (The check reads each table once pg_restore has gone
    // past it: what the load wrote is what is checked.)
    dr(
        &repo,
        &pg,
        &[
            "backup",
            "postgres",
            "--source",
            "pg",
            "--dsn",
            &pg.dsn(SOURCE_DB),
        ],
    )
    .ok();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("pg_restore");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             [ \"$1\" = --version ] && exec \"{real}\" --version\n\
             set -e\n\
             perl -0777 -pe 's/\\tret_5m\\t/\\tret_5x\\t/' | \"{real}\" \"$@\"\n",
            real = pg.bin("pg_restore").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let r = restore(
        &repo,
        &pg,
        "tampered",
        &["--create", "--pg-restore", wrapper.to_str().unwrap()],
    );
    assert_eq!(r.code, 3, "{}\n{}", r.stdout_str(), r.stderr);
    assert!(
        r.stderr
            .contains("differs: public.features: content checksum"),
        "{}",
        r.stderr
    );
}

unsafe fn libc_kill(pid: i32, sig: i32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    kill(pid, sig);
}

/// Our own connection honours libpq's sslmode (pg_dump does its own TLS):
/// a server that accepts only TLS, with a certificate for "pg.internal"
/// issued by a test CA, reached as 127.0.0.1.
#[test]
fn tls_modes_follow_libpq() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use std::os::unix::fs::MetadataExt;

    let pg = PgServer::start();
    pg.create_db(SOURCE_DB);
    load_usdcop_like(&pg, SOURCE_DB, 200);

    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca_cert, ca_key) = ca("usdcop-dr test CA");
    let (other_ca, _) = ca("some other CA");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["pg.internal".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();

    // Server side: certificate, key, TLS-only pg_hba, reload.
    let data = pg.data_dir().to_path_buf();
    let owner = std::fs::metadata(&data).unwrap();
    let put = |name: &str, text: &str, mode: u32| {
        let p = data.join(name);
        std::fs::write(&p, text).unwrap();
        std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        p
    };
    let crt = put("server.crt", &leaf.pem(), 0o644);
    let key = put("server.key", &leaf_key.serialize_pem(), 0o600);
    put(
        "pg_hba.conf",
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostnossl all all 127.0.0.1/32 reject\n",
        0o600,
    );
    pg.psql(
        SOURCE_DB,
        &format!(
            "ALTER SYSTEM SET ssl = on; ALTER SYSTEM SET ssl_cert_file = '{}'; \
             ALTER SYSTEM SET ssl_key_file = '{}'; SELECT pg_reload_conf();",
            crt.display(),
            key.display()
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while pg
        .try_psql(
            SOURCE_DB,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .ok()
        .as_deref()
        != Some("t")
    {
        assert!(
            Instant::now() < deadline,
            "TLS never came up:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let home = tempfile::tempdir().unwrap();
    let ca_file = home.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let other_file = home.path().join("other-ca.pem");
    std::fs::write(&other_file, other_ca.pem()).unwrap();
    let repo = TestRepo::new();
    let try_backup = |source: &str, query: &str| {
        let dsn = format!("{}?{query}", pg.dsn(SOURCE_DB));
        let mut c = with_pg(repo.cmd(), &pg);
        c.env("HOME", home.path())
            .env_remove("PGSSLMODE")
            .env_remove("PGSSLROOTCERT")
            .args([
                "--json", "backup", "postgres", "--source", source, "--dsn", &dsn,
            ]);
        run_cmd(c, None)
    };

    let r = try_backup("plain", "sslmode=disable");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no encryption"), "{}", r.stderr);

    let r = try_backup("require", "sslmode=require");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["postgres"]["tables"], USDCOP_TABLES.len() as u64);

    let r = try_backup(
        "verify-ca",
        &format!("sslmode=verify-ca&sslrootcert={}", ca_file.display()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // The certificate names pg.internal, not 127.0.0.1.
    let r = try_backup(
        "verify-full",
        &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
    eprintln!("verify-full, wrong name: {}", r.stderr);

    let r = try_backup(
        "wrong-ca",
        &format!("sslmode=verify-ca&sslrootcert={}", other_file.display()),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
    eprintln!("verify-ca, wrong CA: {}", r.stderr);

    let snaps = repo.run(&["--json", "snapshots"]).ok().json();
    let sources: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["require", "verify-ca"]);
}

/// Disaster recovery onto a fresh server: the dump's objects belong to a
/// role the new server does not have. pg_restore's failure says so, with
/// the way out; `--no-owner` restores, and the data is identical.
#[test]
fn a_fresh_server_without_the_owning_role_needs_no_owner() {
    let pg = PgServer::start();
    pg.create_db(SOURCE_DB);
    load_usdcop_like(&pg, SOURCE_DB, 2_000);
    pg.psql(
        SOURCE_DB,
        "CREATE ROLE trader; ALTER TABLE usdcop_m5_ohlcv OWNER TO trader;",
    );
    let repo = TestRepo::new();
    backup(&repo, &pg, "pg");

    let fresh = PgServer::start();
    let r = restore(&repo, &fresh, "recovered", &["--create"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("role \"trader\" does not exist"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("restore with --no-owner"), "{}", r.stderr);

    let r = restore(&repo, &fresh, "recovered", &["--clean", "--no-owner"])
        .ok()
        .json();
    assert_eq!(r["differences"].as_array().unwrap().len(), 0, "{r}");
    assert_same_data(&pg, SOURCE_DB, &fresh, "recovered");
    // Without roles in the snapshot, --globals is refused.
    let r = restore(&repo, &fresh, "other", &["--create", "--globals"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("without --globals"), "{}", r.stderr);

    // With --globals the snapshot carries the roles (not their password
    // hashes): a fresh server gets them, and the owners are kept.
    pg.psql(
        SOURCE_DB,
        "ALTER ROLE trader LOGIN PASSWORD 'trader-secret-pw'",
    );
    let b = dr(
        &repo,
        &pg,
        &[
            "--json",
            "backup",
            "postgres",
            "--source",
            "pg",
            "--globals",
            "--dsn",
            &pg.dsn(SOURCE_DB),
        ],
    )
    .ok()
    .json();
    assert_eq!(b["files"], 2, "{b}");
    let globals = repo
        .run(&[
            "restore",
            "--snapshot",
            "latest",
            "--path",
            "globals.sql",
            "--stdout",
        ])
        .ok();
    let globals = String::from_utf8_lossy(&globals.stdout).into_owned();
    assert!(globals.contains("CREATE ROLE trader"), "{globals}");
    assert!(
        !globals.contains("SCRAM-SHA-256"),
        "password hashes stored: {globals}"
    );
    let fresh2 = PgServer::start();
    let r = restore(&repo, &fresh2, "recovered", &["--create", "--globals"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = r.json();
    assert_eq!(r["differences"].as_array().unwrap().len(), 0, "{r}");
    let warned = r["warnings"].as_array().unwrap().iter().any(|w| {
        w["kind"] == "globals"
            && w["path"] == "recovered"
            && w["message"]
                .as_str()
                .unwrap()
                .contains("role \"postgres\" already exists")
    });
    assert!(warned, "{r}");
    assert_eq!(
        fresh2.psql(
            "recovered",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'usdcop_m5_ohlcv'"
        ),
        "trader"
    );
    assert_same_data(&pg, SOURCE_DB, &fresh2, "recovered");
}

/// The dump's own rows give every table's exact count and content digest
/// (issue 14: no second read of the tables by the server): the figures
/// from `pg_dump -Fc -Z0` output, fed in pieces of any size, equal
/// `count(*)` and the digest of `COPY … TO STDOUT` under pg_dump's
/// session settings; an archive cut short is an error.
#[test]
fn the_dump_stream_gives_each_tables_rows_and_digest() {
    use usdcop_dr::format::pgdump::{row_digest, DumpScanner, RowHash};
    let pg = PgServer::start();
    pg.create_db("usdcop_trading");
    load_usdcop_like(&pg, "usdcop_trading", 3_000);
    let mut c = pg.command("pg_dump");
    c.args([
        "-Fc",
        "-Z0",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "usdcop_trading",
    ]);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = out.stdout;
    let scan = |piece: usize| {
        let mut s = DumpScanner::new(RowHash::Xxh3);
        for part in dump.chunks(piece) {
            s.feed(part).unwrap();
        }
        s.finish().unwrap()
    };
    let summary = scan(1 << 16);
    assert_eq!(summary.database, "usdcop_trading");
    assert_eq!(
        summary.tables.len(),
        USDCOP_TABLES.len(),
        "{:?}",
        summary.tables
    );
    assert_eq!(scan(4093), summary);
    for t in &summary.tables {
        let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
        let count: u64 = pg
            .psql("usdcop_trading", &format!("SELECT count(*) FROM {table}"))
            .parse()
            .unwrap();
        assert_eq!(t.rows, count, "{table}");
        assert!(count > 0, "{table}");
        // COPY out the columns pg_dump named, with its settings.
        let copy_out = t
            .copy_statement
            .trim()
            .strip_suffix("FROM stdin;")
            .unwrap_or_else(|| panic!("{:?}", t.copy_statement))
            .to_owned()
            + "TO STDOUT";
        let mut c = pg.command("psql");
        c.args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "usdcop_trading",
        ])
        .args([
            "-c",
            "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3",
        ])
        .args(["-c", &copy_out]);
        let rows = c.output().unwrap();
        assert!(
            rows.status.success(),
            "{}",
            String::from_utf8_lossy(&rows.stderr)
        );
        let sum = rows
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty() && *l != b"SET")
            .fold(0u128, |s, l| s.wrapping_add(row_digest(RowHash::Xxh3, l)));
        assert_eq!(t.digest, sum, "{table}");
    }
    // Cut short: an error, not a smaller count.
    let mut s = DumpScanner::new(RowHash::Xxh3);
    s.feed(&dump[..dump.len() * 2 / 3]).unwrap();
    assert!(s.finish().is_err());
}

/// A dump pg_dump wrote into a pipe has no data offsets in its TOC; the
/// locator's patches give exactly the offsets pg_dump writes when its
/// output is a file it can seek in (what `restore postgres --jobs N` does
/// to its staged copy, so that `pg_restore -j` seeks to each table).
#[test]
fn the_locator_writes_the_data_offsets_pg_dump_writes_into_a_file() {
    use usdcop_dr::format::pgdump::DumpScanner;
    let pg = PgServer::start();
    pg.create_db("usdcop_trading");
    load_usdcop_like(&pg, "usdcop_trading", 2_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seekable.dump");
    let dump = |to_file: bool| {
        let mut c = pg.command("pg_dump");
        c.args(["-Fc", "-Z0", "-h", "127.0.0.1", "-U", "postgres"]);
        if to_file {
            c.arg("-f").arg(&file);
        }
        c.arg("usdcop_trading");
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let piped = dump(false);
    dump(true);
    let seekable = std::fs::read(&file).unwrap();
    assert_eq!(piped.len(), seekable.len());
    let mut locator = DumpScanner::locator();
    for part in piped.chunks(7919) {
        locator.feed(part).unwrap();
    }
    let patches = locator.into_offset_patches().unwrap();
    // One per table with data (the USDCOP-like set's four) at least.
    assert!(patches.len() >= USDCOP_TABLES.len(), "{patches:?}");
    for (at, field) in &patches {
        let at = *at as usize;
        assert_eq!(piped[at], 1, "the piped dump's offset was set already");
        assert_eq!(&seekable[at..at + field.len()], &field[..], "at {at}");
    }
    // The seekable dump leaves no offset unset that would need a patch.
    let mut again = DumpScanner::locator();
    again.feed(&seekable).unwrap();
    assert!(again.into_offset_patches().unwrap().is_empty());
}
