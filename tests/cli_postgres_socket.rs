//! PostgreSQL over Unix sockets, the way a local database is reached on
//! Debian: a nightly cron job of the `postgres` OS user, peer
//! authentication, no password anywhere, `--dsn dbname=usdcop_trading`.
//! The harness's server also listens on libpq's default socket directory
//! (when this machine has one) and on an abstract socket; usdcop-dr runs
//! as the `postgres` OS user (setuid from root, as the tests run in CI).
//! Also: each kind of connection failure gets its own hint, and only a
//! refused password hints at passwords.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_cmd, Run, TestRepo};
use postgres::*;

const SOURCE_DB: &str = "usdcop_trading";

/// libpq's default socket directory on Debian (this machine's libpq).
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// A home and a repository that the `postgres` OS user owns.
struct CronUser {
    uid: u32,
    gid: u32,
    home: tempfile::TempDir,
}

impl CronUser {
    fn new(pg: &PgServer) -> CronUser {
        let (uid, gid) = pg
            .os_user_ids()
            .expect("these tests run as root, to act as the `postgres` OS user");
        let home = tempfile::Builder::new()
            .prefix("usdcop-dr-cron-")
            .tempdir()
            .unwrap();
        std::os::unix::fs::chown(home.path(), Some(uid), Some(gid)).unwrap();
        CronUser { uid, gid, home }
    }

    fn repo(&self) -> PathBuf {
        self.home.path().join("repo")
    }

    /// usdcop-dr as the `postgres` OS user with what cron gives a job
    /// (PATH, HOME, no USER) plus the repository passphrase and `env`:
    /// no PostgreSQL password anywhere.
    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.home.path())
            .env("USDCOP_DR_PASSWORD", common::PASSWORD)
            .envs(env.iter().copied())
            .current_dir(self.home.path())
            .uid(self.uid)
            .gid(self.gid)
            .arg("--repo")
            .arg(self.repo())
            .args(args);
        run_cmd(c, None)
    }
}

/// Backup then `restore --create` into `restored`, both with `dsn(db)`
/// and `env`; the restored rows must equal the source's.
fn round_trip(
    pg: &PgServer,
    cron: &CronUser,
    label: &str,
    dsn: &dyn Fn(&str) -> String,
    env: &[(&str, &str)],
) {
    let b = cron.run(
        env,
        &[
            "--json",
            "backup",
            "postgres",
            "--source",
            label,
            "--dsn",
            &dsn(SOURCE_DB),
        ],
    );
    assert_eq!(b.code, 0, "{label}: backup failed: {}", b.stderr);
    let b = b.json();
    assert_eq!(
        b["postgres"]["tables"],
        USDCOP_TABLES.len() as u64,
        "{label}: {b}"
    );
    let restored = format!("restored_{}", label.replace('-', "_"));
    let r = cron.run(
        env,
        &[
            "--json",
            "restore",
            "postgres",
            "--source",
            label,
            "--create",
            "--target-dsn",
            &dsn(&restored),
        ],
    );
    assert_eq!(r.code, 0, "{label}: restore failed: {}", r.stderr);
    let r = r.json();
    assert_eq!(r["created"], true, "{label}: {r}");
    assert_eq!(
        r["differences"].as_array().unwrap().len(),
        0,
        "{label}: {r}"
    );
    assert_same_data(pg, SOURCE_DB, pg, &restored);
    eprintln!("{label}: backup and restore over the socket: {r}");
}

#[test]
fn a_cron_job_of_postgres_backs_up_and_restores_over_unix_sockets_with_peer_auth() {
    let default_dir = Path::new(DEFAULT_SOCKET_DIR).is_dir();
    let abstract_name = format!("@usdcop-dr-test-{}", std::process::id());
    let mut socket_dirs = vec![abstract_name.clone()];
    if default_dir {
        socket_dirs.push(DEFAULT_SOCKET_DIR.into());
    } else {
        eprintln!("{DEFAULT_SOCKET_DIR} does not exist here: libpq's default is not tested");
    }
    let pg = PgServer::start_with(&PgOptions {
        peer: true,
        socket_dirs,
    });
    pg.create_db(SOURCE_DB);
    load_usdcop_like(&pg, SOURCE_DB, 2_000);
    let cron = CronUser::new(&pg);
    let r = cron.run(&[], &["init", "--kdf-memory-kib", "1024"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let dir = pg.dir().display().to_string();
    let port = pg.port().to_string();

    // An explicit socket directory, under the default sslmode=prefer
    // (which once tried TLS on the socket and failed).
    round_trip(
        &pg,
        &cron,
        "host",
        &|db| format!("host={dir} port={port} dbname={db}"),
        &[],
    );
    // sslmode=verify-full over a socket: libpq uses no TLS there, nor may we.
    round_trip(
        &pg,
        &cron,
        "verify-full",
        &|db| format!("host={dir} port={port} dbname={db} sslmode=verify-full"),
        &[],
    );
    // PGHOST names the socket directory, the DSN only the database.
    round_trip(
        &pg,
        &cron,
        "pghost",
        &|db| format!("dbname={db}"),
        &[("PGHOST", &dir), ("PGPORT", &port)],
    );
    // Linux's abstract namespace, as libpq spells it.
    round_trip(
        &pg,
        &cron,
        "abstract",
        &|db| format!("host={abstract_name} port={port} dbname={db}"),
        &[],
    );
    // Nothing but the database: libpq's default socket directory, the OS
    // user as role (PGPORT only because the test server has its own port).
    if default_dir {
        round_trip(
            &pg,
            &cron,
            "default",
            &|db| format!("dbname={db}"),
            &[("PGPORT", &port)],
        );
        let snaps = cron
            .run(&[], &["--json", "snapshots", "--source", "default"])
            .ok()
            .json();
        assert_eq!(
            snaps[0]["metadata"]["postgres"]["dsn"], "dbname=usdcop_trading",
            "{snaps}"
        );
    }

    // Peer authentication for another role: refused, and the hint says
    // how peer works, not to look for a password.
    pg.psql("postgres", "CREATE ROLE trader LOGIN");
    let r = cron.run(
        &[],
        &[
            "--json",
            "backup",
            "postgres",
            "--source",
            "x",
            "--dsn",
            &format!("host={dir} port={port} user=trader dbname={SOURCE_DB}"),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("Peer authentication failed"),
        "{}",
        r.stderr
    );
    let hint = r.json()["error"]["hint"].as_str().unwrap().to_owned();
    assert!(hint.contains("peer authentication"), "{hint}");
    assert!(!hint.contains("PGPASSWORD"), "{hint}");

    // A database that does not exist: said so, no password hint; for a
    // restore, the way out is --create.
    let r = cron.run(
        &[("PGHOST", &dir), ("PGPORT", &port)],
        &[
            "--json",
            "restore",
            "postgres",
            "--source",
            "host",
            "--target-dsn",
            "dbname=nosuch",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("database \"nosuch\" does not exist"),
        "{}",
        r.stderr
    );
    let hint = r.json()["error"]["hint"].as_str().unwrap().to_owned();
    assert!(hint.contains("--create"), "{hint}");
    assert!(!hint.contains("password"), "{hint}");

    // As root (no role "root"): the role is named, with how the user is
    // chosen.
    let mut c = common::command(&cron.repo());
    c.env_remove("PGUSER")
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent")
        .args([
            "backup",
            "postgres",
            "--source",
            "x",
            "--dsn",
            &format!("host={dir} port={port} dbname={SOURCE_DB}"),
        ]);
    let r = run_cmd(c, None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("role \"root\" does not exist"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("hint: the server has no role"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("PGPASSWORD"), "{}", r.stderr);
}

/// The failures a person meets before anything works, each with its own
/// hint; only the refused password hints at passwords.
#[test]
fn each_connection_failure_has_its_own_hint() {
    let pg = PgServer::start();
    pg.create_db(SOURCE_DB);
    let repo = TestRepo::new();
    let fail = |dsn: &str, env: &[(&str, &str)]| -> (String, String) {
        let mut c = repo.cmd();
        c.env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env("PGPASSFILE", "/nonexistent")
            .envs(env.iter().copied())
            .args([
                "--json", "backup", "postgres", "--source", "x", "--dsn", dsn,
            ]);
        let r = run_cmd(c, None);
        assert_eq!(r.code, 1, "{dsn}: {}", r.stderr);
        let e = r.json()["error"].clone();
        (
            e["message"].as_str().unwrap().to_owned(),
            e["hint"].as_str().unwrap().to_owned(),
        )
    };
    let password = [("PGPASSWORD", pg.password())];

    let (msg, hint) = fail(&pg.dsn("nosuch"), &password);
    assert!(msg.contains("database \"nosuch\" does not exist"), "{msg}");
    assert!(hint.contains("no database \"nosuch\""), "{hint}");
    assert!(!hint.contains("password"), "{hint}");

    let (msg, hint) = fail(&pg.dsn(SOURCE_DB), &[("PGPASSWORD", "wrong")]);
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(hint.contains("refused the password"), "{hint}");
    assert!(hint.contains("PGPASSWORD"), "{hint}");

    let (msg, hint) = fail(&pg.dsn(SOURCE_DB), &[]);
    assert!(msg.contains("password missing"), "{msg}");
    assert!(hint.contains("none was found"), "{hint}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (msg, hint) = fail(
        &format!("host=127.0.0.1 port={port} dbname=x user=postgres"),
        &password,
    );
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(hint.contains("nothing accepts connections"), "{hint}");
    assert!(!hint.contains("password"), "{hint}");

    let (msg, hint) = fail("host=/nonexistent/socket/dir port=5999 dbname=x", &password);
    assert!(
        msg.contains("Unix socket /nonexistent/socket/dir/.s.PGSQL.5999"),
        "{msg}"
    );
    assert!(hint.contains("unix_socket_directories"), "{hint}");
    assert!(!hint.contains("password"), "{hint}");
}
