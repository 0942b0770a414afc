//! The TimescaleDB restore path against a real PostgreSQL 15 server.
//!
//! TimescaleDB is not packaged for the test machines, so the harness
//! installs a stand-in extension named `timescaledb` (two versions, SQL
//! only; tests/common/postgres.rs): its `timescaledb_pre_restore()` /
//! `timescaledb_post_restore()` set and reset the database's
//! `timescaledb.restoring` as TimescaleDB's do and record every call, and an
//! event trigger records each `CREATE TABLE` with the session's
//! `timescaledb.restoring`. The test is skipped, saying why, when a real
//! TimescaleDB is installed or the extension directory is not writable.
//!
//! Covered: the version check on the target (a version the server lacks, a
//! database that already has another version), `CREATE EXTENSION …
//! VERSION` with the recorded (non-default) version, pre-restore → every
//! table created in restore mode → post-restore, the single-job rule, and
//! the `--clean` refusal.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use common::{run_cmd, runtime, Run, TestRepo};
use postgres::*;

const SOURCE_DB: &str = "usdcop_trading";

fn dr(repo: &TestRepo, pg: &PgServer, args: &[&str]) -> Run {
    let mut c = repo.cmd();
    for (k, v) in pg.env() {
        c.env(k, v);
    }
    c.env_remove("USDCOP_DR_PG_DSN")
        .env_remove("USDCOP_DR_PG_TARGET_DSN")
        .env("PGPASSFILE", "/nonexistent")
        .args(args);
    run_cmd(c, None)
}

fn restore(repo: &TestRepo, pg: &PgServer, snapshot: &str, db: &str, extra: &[&str]) -> Run {
    let dsn = pg.dsn(db);
    let mut args = vec![
        "--json",
        "restore",
        "postgres",
        "--snapshot",
        snapshot,
        "--target-dsn",
        &dsn,
    ];
    args.extend_from_slice(extra);
    dr(repo, pg, &args)
}

/// The stand-in's record of calls in `db`, one `call|restoring` a line.
fn calls(pg: &PgServer, db: &str) -> Vec<String> {
    pg.psql(
        db,
        "SELECT call || '|' || coalesce(restoring, '') \
         FROM _timescaledb_catalog.usdcopdr_standin_calls ORDER BY seq",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

fn database_exists(pg: &PgServer, db: &str) -> bool {
    pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    ) == "1"
}

/// A copy of snapshot `base` whose picture records TimescaleDB `version`
/// (what a backup of a server with that version would hold).
fn with_timescaledb_version(repo: &TestRepo, base: &str, version: &str) -> String {
    runtime().block_on(async {
        let r = repo.open_lib().await;
        let (_, mut snap) = r.find_snapshot(base, None).await.unwrap();
        snap.time += chrono::Duration::seconds(1);
        let picture = snap.metadata.get_mut("postgres").unwrap();
        for e in picture["extensions"].as_array_mut().unwrap() {
            if e["name"] == "timescaledb" {
                e["version"] = version.into();
            }
        }
        r.save_snapshot(&snap).await.unwrap().to_hex()
    })
}

#[test]
fn a_timescaledb_snapshot_restores_by_timescaledb_rules() {
    let pg = PgServer::start();
    let _standin = match pg.install_timescaledb_standin() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("SKIPPED a_timescaledb_snapshot_restores_by_timescaledb_rules: {why}");
            return;
        }
    };
    pg.create_db(SOURCE_DB);
    // The older version on purpose: the server's default is the newer one.
    pg.psql(
        SOURCE_DB,
        &format!("CREATE EXTENSION timescaledb VERSION '{STANDIN_OLD}'"),
    );
    load_usdcop_like(&pg, SOURCE_DB, 2_000);
    let repo = TestRepo::new();
    let b = dr(
        &repo,
        &pg,
        &[
            "--json",
            "backup",
            "postgres",
            "--source",
            "pg-usdcop",
            "--dsn",
            &pg.dsn(SOURCE_DB),
        ],
    )
    .ok()
    .json();
    assert_eq!(b["postgres"]["timescaledb"], STANDIN_OLD, "{b}");
    // The stand-in's own catalog is TimescaleDB-internal: not a table of the picture.
    assert_eq!(b["postgres"]["tables"], USDCOP_TABLES.len() as u64, "{b}");
    let id = b["snapshot_id"].as_str().unwrap().to_owned();

    // --clean is refused before anything is touched.
    pg.create_db("scratch");
    pg.psql(
        "scratch",
        "CREATE TABLE keep (x int); INSERT INTO keep VALUES (7)",
    );
    let r = restore(&repo, &pg, &id, "scratch", &["--clean"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("TimescaleDB {STANDIN_OLD}")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("--clean would drop the extension"),
        "{}",
        r.stderr
    );
    assert_eq!(pg.psql("scratch", "SELECT x FROM keep"), "7");
    assert_eq!(
        pg.psql(
            "scratch",
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        ),
        "0"
    );

    // A version the target server does not offer: refused, and --create
    // leaves no new empty database behind.
    let missing = with_timescaledb_version(&repo, &id, "9.9.9-absent");
    let r = restore(&repo, &pg, &missing, "never_created", &["--create"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("TimescaleDB 9.9.9-absent, which the target server does not have"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(STANDIN_OLD) && r.stderr.contains(STANDIN_NEW),
        "{}",
        r.stderr
    );
    assert!(!database_exists(&pg, "never_created"));

    // An empty database that already has another TimescaleDB version:
    // `CREATE EXTENSION IF NOT EXISTS … VERSION` would keep that one.
    pg.create_db("has_new");
    pg.psql(
        "has_new",
        &format!("CREATE EXTENSION timescaledb VERSION '{STANDIN_NEW}'"),
    );
    let r = restore(&repo, &pg, &id, "has_new", &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "already has TimescaleDB {STANDIN_NEW}, the snapshot holds TimescaleDB {STANDIN_OLD}"
        )),
        "{}",
        r.stderr
    );
    assert!(
        calls(&pg, "has_new").is_empty(),
        "{:?}",
        calls(&pg, "has_new")
    );
    assert!(user_tables(&pg, "has_new").is_empty());

    // The restore: the recorded version, one job whatever --jobs says,
    // pre-restore, every table created in restore mode, post-restore.
    let r = restore(&repo, &pg, &id, "restored", &["--create", "--jobs", "4"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = r.json();
    assert_eq!(s["timescaledb"], STANDIN_OLD, "{s}");
    assert_eq!(
        (s["jobs"].as_u64(), s["staged"].as_bool()),
        (Some(1), Some(false)),
        "{s}"
    );
    assert!(
        s["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "option_ignored"
                && w["message"].as_str().unwrap().contains("--jobs 4 ignored")),
        "{s}"
    );
    assert_eq!(s["differences"], serde_json::json!([]), "{s}");
    assert_eq!(
        pg.psql(
            "restored",
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ),
        STANDIN_OLD
    );
    let got = calls(&pg, "restored");
    let mut want = vec!["pre_restore|on".to_owned()];
    want.extend(
        USDCOP_TABLES
            .iter()
            .map(|t| format!("create table public.{t}|on")),
    );
    want.push("post_restore|off".to_owned());
    let mut sorted_middle = got.clone();
    if sorted_middle.len() > 2 {
        let n = sorted_middle.len();
        sorted_middle[1..n - 1].sort();
    }
    assert_eq!(sorted_middle, want, "calls in order: {got:?}");
    // Not left in restore mode.
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = 'restored' AND array_to_string(s.setconfig, ',') LIKE '%timescaledb.restoring%'"
        ),
        "0"
    );
    assert_same_data(&pg, SOURCE_DB, &pg, "restored");

    // pg_restore fails half-way: the database is not left in restore
    // mode, and the hint does not suggest the refused --clean.
    let fake = repo.dir.path().join("failing_pg_restore");
    std::fs::write(
        &fake,
        "#!/bin/sh
         if [ \"$1\" = --version ]; then echo 'pg_restore (PostgreSQL) 15.99'; exit 0; fi
         cat >/dev/null
         echo 'pg_restore: error: simulated failure half-way' >&2
         exit 1
",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = restore(
        &repo,
        &pg,
        &id,
        "failing",
        &["--create", "--pg-restore", fake.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("simulated failure half-way"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("drop it and restore again with --create"),
        "{}",
        r.stderr
    );
    assert_eq!(
        calls(&pg, "failing"),
        vec!["pre_restore|on".to_owned(), "post_restore|off".to_owned()]
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = 'failing' AND array_to_string(s.setconfig, ',') LIKE '%timescaledb.restoring%'"
        ),
        "0",
        "left in restore mode"
    );
}
