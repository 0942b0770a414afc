//! The PostgreSQL test harness itself (tests/common/postgres.rs): a server
//! starts, needs its password, loads the USDCOP-like data deterministically,
//! fingerprints notice a one-value change, several servers run at once, and
//! a server is gone after its owner is dropped, also by a panic.

#[path = "common/postgres.rs"]
mod postgres;

use postgres::*;
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BARS: usize = 20_000;

fn count(pg: &PgServer, db: &str, table: &str) -> usize {
    pg.psql(db, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap()
}

/// Is a process with this pid alive (and not a zombie)?
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) STATE ...": comm may hold spaces, so look after ')'.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    )
    .is_ok()
}

#[test]
fn loads_usdcop_data_and_fingerprints_see_one_change() {
    let t = Instant::now();
    let pg = PgServer::start();
    eprintln!("initdb + start: {:?}", t.elapsed());
    assert_eq!(pg.psql("postgres", "SELECT 1"), "1");
    assert_eq!(pg.psql("postgres", "SHOW server_version_num")[..2], *"15");

    pg.create_db("usdcop");
    let t = Instant::now();
    load_usdcop_like(&pg, "usdcop", BARS);
    eprintln!("load of {BARS} bars: {:?}", t.elapsed());

    assert_eq!(user_tables(&pg, "usdcop"), USDCOP_TABLES);
    assert_eq!(count(&pg, "usdcop", "usdcop_m5_ohlcv"), BARS);
    assert_eq!(count(&pg, "usdcop", "features"), BARS * FEATURES_PER_BAR);
    assert_eq!(count(&pg, "usdcop", "pipeline_status"), PIPELINE_ROWS);
    assert_eq!(count(&pg, "usdcop", "model_registry"), MODEL_ROWS);
    // The shapes the backup tests rely on.
    let q = |sql: &str| pg.psql("usdcop", sql);
    assert!(
        q("SELECT count(*) FROM usdcop_m5_ohlcv WHERE volume IS NULL")
            .parse::<usize>()
            .unwrap()
            > 0
    );
    assert_eq!(
        q(
            "SELECT count(*) FROM usdcop_m5_ohlcv WHERE NOT (low <= least(open, close) \
           AND high >= greatest(open, close) AND low > 0)"
        ),
        "0"
    );
    let sizes: Vec<i64> =
        q("SELECT coalesce(octet_length(artifact), -1) FROM model_registry ORDER BY id")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
    assert_eq!(sizes, ARTIFACT_SIZES);
    // Incompressible: a 1 MiB artifact stays about 1 MiB stored.
    let stored: i64 = q("SELECT max(pg_column_size(artifact)) FROM model_registry")
        .parse()
        .unwrap();
    assert!(stored > 1_000_000, "artifact compressed to {stored} bytes");
    let nans = (1..=BARS * FEATURES_PER_BAR)
        .filter(|n| n % 211 != 0 && n % 10007 == 1)
        .count();
    assert_eq!(
        q("SELECT count(*) FROM features WHERE value = 'NaN'"),
        nans.to_string()
    );
    assert!(
        q("SELECT max(length(note)) FROM features")
            .parse::<usize>()
            .unwrap()
            > 30_000
    );
    assert_eq!(
        q("SELECT count(*) FROM pipeline_status WHERE finished_at IS NULL"),
        "10"
    );
    assert_eq!(
        sequence_values(&pg, "usdcop")["pipeline_status_id_seq"],
        "1000"
    );

    // Deterministic: a second load gives the same rows.
    pg.create_db("usdcop_again");
    load_usdcop_like(&pg, "usdcop_again", BARS);
    assert_same_data(&pg, "usdcop", &pg, "usdcop_again");
    let before = database_fingerprints(&pg, "usdcop");
    assert_eq!(before.len(), 4);

    // One changed value in one row changes that table's fingerprint only.
    q("UPDATE usdcop_m5_ohlcv SET close = close + 0.0001 \
       WHERE time = (SELECT min(time) + interval '1 day' FROM usdcop_m5_ohlcv)");
    // One byte of a 1 MiB artifact.
    q("UPDATE model_registry SET artifact = set_byte(artifact, 500000, get_byte(artifact, 500000) # 1) \
       WHERE id = 3");
    let after = database_fingerprints(&pg, "usdcop");
    for (table, fp) in &before {
        let changed = table == "usdcop_m5_ohlcv" || table == "model_registry";
        assert_eq!(
            fp != &after[table],
            changed,
            "{table}: {fp} → {}",
            after[table]
        );
    }
    // The count is part of it: same rows, one fewer.
    assert!(after["usdcop_m5_ohlcv"].starts_with(&format!("{BARS}:")));
}

#[test]
fn two_servers_at_once_each_with_its_own_password() {
    let t = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(PgServer::start);
        let b = s.spawn(PgServer::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("two servers started in parallel: {:?}", t.elapsed());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.password(), b.password());

    a.psql(
        "postgres",
        "CREATE TABLE only_on_a (x int); INSERT INTO only_on_a VALUES (1), (2)",
    );
    assert_eq!(a.psql("postgres", "SELECT sum(x) FROM only_on_a"), "3");
    assert_eq!(
        b.psql("postgres", "SELECT to_regclass('only_on_a') IS NULL"),
        "t"
    );

    // The password is required, over TCP: a wrong one, none, or the other
    // server's are refused.
    let connect = |pg: &PgServer, password: Option<&str>| {
        let mut c = pg.command("psql");
        c.env_remove("PGPASSWORD");
        if let Some(p) = password {
            c.env("PGPASSWORD", p);
        }
        c.args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-d",
            &pg.dsn("postgres"),
            "-c",
            "SELECT 42",
        ])
        .output()
        .unwrap()
    };
    let ok = connect(&a, Some(a.password()));
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "42");
    for (what, password) in [
        ("a wrong password", Some("wrong")),
        ("the other server's password", Some(b.password())),
    ] {
        let out = connect(&a, password);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "connected with {what}");
        assert!(
            err.contains("password authentication failed"),
            "{what}: {err}"
        );
    }
    let out = connect(&a, None);
    assert!(!out.status.success(), "connected without a password");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no password supplied"));
    // try_psql reports SQL errors instead of panicking.
    let err = a
        .try_psql("postgres", "SELECT * FROM no_such_table")
        .unwrap_err();
    assert!(err.contains("no_such_table"), "{err}");
    // The DSN carries no password; env() does.
    assert!(!a.dsn("x").contains(a.password()));
    assert_eq!(
        a.env(),
        vec![("PGPASSWORD".to_string(), a.password().to_string())]
    );

    // Dropping one stops it and removes its directory; the other runs on.
    let (pid, port, dir) = (a.pid().unwrap(), a.port(), a.dir().to_path_buf());
    assert!(alive(pid));
    drop(a);
    assert!(!alive(pid), "postmaster {pid} still running");
    assert!(!accepts(port), "port {port} still accepts connections");
    assert!(!dir.exists());
    assert_eq!(b.psql("postgres", "SELECT 1"), "1");
}

#[test]
fn a_panicking_test_leaves_no_server() {
    let seen: std::sync::Mutex<Option<(i32, u16, PathBuf)>> = Default::default();
    let result = std::panic::catch_unwind(|| {
        let pg = PgServer::start();
        *seen.lock().unwrap() = Some((pg.pid().unwrap(), pg.port(), pg.dir().to_path_buf()));
        pg.psql("postgres", "SELECT 1/0");
    });
    let err = result.unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("division by zero"), "{msg}");
    let (pid, port, dir) = seen.lock().unwrap().clone().unwrap();
    assert!(!alive(pid), "postmaster {pid} still running");
    assert!(!accepts(port), "port {port} still accepts connections");
    assert!(!dir.exists());
}
