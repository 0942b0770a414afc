//! A real PostgreSQL 15 server on loopback for integration tests: `initdb` in
//! a fresh temporary directory, started on a free loopback port with
//! password (SCRAM) authentication, and stopped (directory removed) on drop.
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "common/postgres.rs"]
//! mod postgres;
//! use postgres::PgServer;
//! ```
//!
//! The server binaries come from `$USDCOP_DR_PG_BIN`, else
//! `/usr/lib/postgresql/15/bin`, else `pg_config --bindir`; on Debian
//! `scripts/install-test-deps.sh` installs them (postgresql-15). No shared
//! or pre-existing server is used. `initdb` refuses to run as root, so when
//! the tests run as root the server runs as the `postgres` system user
//! (through `runuser`; the user is created if missing), and its directory
//! is handed to that user.
//!
//! Every test may start its own servers, in parallel: each has its own
//! directory, port, Unix socket directory and password. `Drop` stops the
//! server (`pg_ctl stop -m immediate`) also when a test panics; a server kept
//! in a `static` is never dropped, so prefer one server per test (start-up,
//! initdb included, takes about a second).
//!
//! Clients connect over TCP to 127.0.0.1 as the superuser `postgres`; the
//! password is never in a DSN: give it through `PGPASSWORD` ([`PgServer::env`]).
//! Sessions opened by this module use `TimeZone=UTC` (the server's default
//! too), so `timestamptz` text is the same on every server.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The database superuser initdb creates (`-U`).
pub const SUPERUSER: &str = "postgres";
/// The system user the server runs as when the tests run as root.
const OS_USER: &str = "postgres";
/// Start attempts on fresh ports when another process takes ours meanwhile.
const START_ATTEMPTS: usize = 5;

/// Client and server variables that could point a tool at another server,
/// user, password or service file; removed from every command run here.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGGSSENCMODE",
    "PGTARGETSESSIONATTRS",
    "PGCONNECT_TIMEOUT",
    "PGCLIENTENCODING",
    "PGAPPNAME",
    "PGTZ",
    "PGDATESTYLE",
    "PGDATA",
    "PGSYSCONFDIR",
];

/// What [`PgServer::start_with`] sets up beyond [`PgServer::start`]'s
/// defaults (TCP + SCRAM, one socket in the server's own directory).
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// `local all all peer` (and `local replication all peer`) in
    /// pg_hba.conf, as Debian installs it: over a
    /// Unix socket an OS user logs in, without a password, as the role of
    /// its own name (run the client as the `postgres` system user, see
    /// [`PgServer::os_user_ids`]). TCP keeps SCRAM with the password.
    pub peer: bool,
    /// More Unix socket directories besides the server's own (e.g.
    /// `/var/run/postgresql`, libpq's default), or `@name` for a Linux
    /// abstract socket. The socket file is `.s.PGSQL.<port>` in each.
    pub socket_dirs: Vec<String>,
}

/// A running server, owned by the test that started it.
pub struct PgServer {
    port: u16,
    password: String,
    bin_dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// `Some` when we are root: server commands run as this user.
    os_user: Option<OsUser>,
    dir: tempfile::TempDir,
}

#[derive(Clone, Copy, Debug)]
struct OsUser {
    uid: u32,
    gid: u32,
}

/// The PostgreSQL 15 binaries: `$USDCOP_DR_PG_BIN`, else
/// `/usr/lib/postgresql/15/bin`, else `pg_config --bindir`. Panics with a
/// hint when none has the server tools.
pub fn bin_dir() -> PathBuf {
    const TOOLS: &[&str] = &[
        "initdb",
        "pg_ctl",
        "postgres",
        "psql",
        "pg_dump",
        "pg_restore",
    ];
    let complete = |d: &Path| TOOLS.iter().all(|t| d.join(t).is_file());
    if let Some(d) = std::env::var_os("USDCOP_DR_PG_BIN").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        if !complete(&d) {
            panic!("USDCOP_DR_PG_BIN={} lacks one of {TOOLS:?}", d.display());
        }
        return d;
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if complete(&debian) {
        return debian;
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match from_pg_config {
        Some(d) if complete(&d) => d,
        _ => panic!(
            "PostgreSQL 15 server not installed: no {TOOLS:?} in /usr/lib/postgresql/15/bin \
             nor in `pg_config --bindir`; run scripts/install-test-deps.sh (Debian: \
             postgresql-15 postgresql-client-15) or set USDCOP_DR_PG_BIN"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn id_of(flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, OS_USER]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The `postgres` system user, created (as Debian's package does) if
/// missing. Only called when we are root.
fn os_user() -> OsUser {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if id_of("-u").is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--home-dir",
                "/var/lib/postgresql",
                "--no-create-home",
                "--shell",
                "/bin/bash",
                OS_USER,
            ])
            .output();
        // Another test binary may have created it meanwhile: look again.
        if id_of("-u").is_none() {
            panic!(
                "the tests run as root, initdb refuses root, and there is no `{OS_USER}` user; \
                 useradd failed: {out:?}; run scripts/install-test-deps.sh"
            );
        }
    }
    match (id_of("-u"), id_of("-g")) {
        (Some(uid), Some(gid)) => OsUser { uid, gid },
        _ => panic!("cannot read the uid/gid of `{OS_USER}` with id(1)"),
    }
}

/// A loopback port that was free a moment ago. Another process may take it
/// before the server binds it: `start` retries with new ports if so.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port")
}

/// A fresh superuser password: different for every server, even across
/// test processes.
fn new_password() -> String {
    use sha2::Digest;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let digest = sha2::Sha256::digest(seed.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn read_tail(path: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let _ = f.read_to_end(&mut bytes);
    }
    let mut s = String::from_utf8_lossy(&bytes).into_owned();
    // The tail is what tells why it stopped.
    const MAX: usize = 8000;
    if s.len() > MAX {
        let mut cut = s.len() - MAX;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = format!("[... log cut ...]\n{}", &s[cut..]);
    }
    s
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `"name"`, with inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PgServer {
    /// initdb (superuser `postgres`, SCRAM password for every connection,
    /// UTF8, C locale) and a server on a free loopback port, its Unix socket
    /// in its own directory, tuned for tests (no fsync). Returns once it
    /// accepts connections. Panics, with initdb's output or the server log,
    /// if it cannot.
    pub fn start() -> PgServer {
        Self::start_with(&PgOptions::default())
    }

    /// [`start`](Self::start), with [`PgOptions`].
    pub fn start_with(opts: &PgOptions) -> PgServer {
        Self::start_with_conf(opts, "")
    }

    /// [`start_with`](Self::start_with), with `conf` appended to
    /// postgresql.conf before the first start (e.g. `archive_mode = on`).
    pub fn start_with_conf(opts: &PgOptions, conf: &str) -> PgServer {
        let bin_dir = bin_dir();
        let os_user = if is_root() { Some(os_user()) } else { None };
        let dir = tempfile::Builder::new()
            .prefix("usdcop-dr-pg-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let mut pg = PgServer {
            port: 0,
            password: new_password(),
            data: dir.path().join("data"),
            log: dir.path().join("postgres.log"),
            bin_dir,
            os_user,
            dir,
        };
        pg.give_to_server_user(pg.dir.path());

        // The password file is read by initdb only.
        let pwfile = pg.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", pg.password)).expect("cannot write pwfile");
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
            .expect("cannot chmod pwfile");
        pg.give_to_server_user(&pwfile);
        let out = pg
            .server_cmd("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", SUPERUSER, "--auth=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
            .output()
            .expect("cannot run initdb");
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            panic!("initdb failed: {}", show(&out));
        }

        if opts.peer {
            let hba = pg.data.join("pg_hba.conf");
            std::fs::write(
                &hba,
                "local all all peer\nlocal replication all peer\nhost all all 127.0.0.1/32 scram-sha-256\n",
            )
            .expect("cannot write pg_hba.conf");
            pg.give_to_server_user(&hba);
        }
        if !conf.is_empty() {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(pg.data.join("postgresql.conf"))
                .expect("cannot open postgresql.conf");
            writeln!(f, "\n{conf}").expect("cannot write postgresql.conf");
        }
        let mut socket_dirs = vec![pg.dir.path().display().to_string()];
        socket_dirs.extend(opts.socket_dirs.iter().cloned());

        for attempt in 1..=START_ATTEMPTS {
            pg.port = free_port();
            let log_start = std::fs::metadata(&pg.log).map(|m| m.len()).unwrap_or(0);
            let options = format!(
                "-p {port} -k '{dirs}' -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c full_page_writes=off -c synchronous_commit=off -c shared_buffers=32MB \
                 -c max_connections=40 -c TimeZone=UTC -c log_timezone=UTC",
                port = pg.port,
                dirs = socket_dirs.join(","),
            );
            let out = pg
                .server_cmd("pg_ctl")
                .arg("-D")
                .arg(&pg.data)
                .arg("-l")
                .arg(&pg.log)
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output()
                .expect("cannot run pg_ctl");
            if out.status.success() {
                return pg;
            }
            let log = read_tail(&pg.log, log_start);
            // Stop whatever may have started (e.g. after a timeout), so the
            // next attempt starts clean; drop would do it too.
            pg.stop();
            let port_taken = log.contains("could not bind") || log.contains("already in use");
            if !port_taken || attempt == START_ATTEMPTS {
                panic!(
                    "PostgreSQL did not start on port {} (attempt {attempt}): pg_ctl {}\n\
                     server log:\n{log}",
                    pg.port,
                    show(&out)
                );
            }
        }
        unreachable!()
    }

    /// A server binary as the server's system user (`runuser -u postgres`
    /// when we are root), in the server's directory, without PG* variables.
    fn server_cmd(&self, tool: &str) -> Command {
        let mut c = match self.os_user {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", OS_USER, "--"]).arg(self.bin(tool));
                c
            }
            None => Command::new(self.bin(tool)),
        };
        for v in PG_ENV {
            c.env_remove(v);
        }
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    fn give_to_server_user(&self, path: &Path) {
        if let Some(u) = self.os_user {
            std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
                .unwrap_or_else(|e| panic!("cannot chown {} to {OS_USER}: {e}", path.display()));
        }
    }

    /// The postmaster's pid, while its `postmaster.pid` exists.
    pub fn pid(&self) -> Option<i32> {
        let s = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// Immediate shutdown; SIGKILL if pg_ctl cannot.
    fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        let stopped = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !stopped && pid > 0 {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The uid and gid of the system user the server runs as, when the
    /// tests run as root (`None` otherwise): a client run as them passes
    /// peer authentication as the superuser `postgres`.
    pub fn os_user_ids(&self) -> Option<(u32, u32)> {
        self.os_user.map(|u| (u.uid, u.gid))
    }

    /// The superuser's password (give it through `PGPASSWORD`).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A PostgreSQL tool of the server's version: `pg_dump`, `pg_restore`,
    /// `psql`, ...
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DB`, without the password.
    pub fn dsn(&self, db: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// `PGPASSWORD` only: what a client given [`dsn`](Self::dsn) needs.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("PGPASSWORD".into(), self.password.clone())]
    }

    /// `PGHOST`, `PGPORT`, `PGUSER` and `PGPASSWORD`: enough for a client
    /// given only a database name.
    pub fn env_full(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), SUPERUSER.into()),
            ("PGPASSWORD".into(), self.password.clone()),
        ]
    }

    /// A client tool (`psql`, `pg_dump`, ...) run as us, with no inherited
    /// PG* variables but [`env_full`](Self::env_full), `PGTZ=UTC`, a
    /// 10-second connect timeout, and no `~/.pgpass`.
    pub fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin(tool));
        for v in PG_ENV {
            c.env_remove(v);
        }
        c.envs(self.env_full())
            .env("PGTZ", "UTC")
            .env("PGCONNECT_TIMEOUT", "10")
            // A path that does not exist: libpq then reads no password file.
            .env("PGPASSFILE", self.dir.path().join("no-pgpass"));
        c
    }

    /// Runs `sql` (any number of statements) in `db` with
    /// `psql -X -A -t -q -v ON_ERROR_STOP=1` over TCP. Returns the rows,
    /// one a line, columns split by `|`, without the final newline; Err
    /// with psql's stderr if a statement fails.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = self.command("psql");
        c.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.dsn(db))
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("cannot run psql");
        let mut pipe = child.stdin.take().unwrap();
        let sql = sql.to_string();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(sql.as_bytes());
        });
        let out = child.wait_with_output().expect("cannot wait for psql");
        writer.join().unwrap();
        if out.status.success() {
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            while s.ends_with('\n') {
                s.pop();
            }
            Ok(s)
        } else {
            Err(format!(
                "psql {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// [`try_psql`](Self::try_psql), panicking with psql's stderr and the
    /// server log's tail on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql).unwrap_or_else(|e| {
            panic!(
                "SQL failed in {db} on port {}: {e}\nSQL: {}\nserver log:\n{}",
                self.port,
                sql.chars().take(2000).collect::<String>(),
                self.log()
            )
        })
    }

    pub fn create_db(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    /// The server log so far (its tail), for messages.
    pub fn log(&self) -> String {
        read_tail(&self.log, 0)
    }

    /// The server's private directory (its Unix socket is here too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        // `dir` (a TempDir) removes itself after this.
    }
}

// ---- a USDCOP-like database ----------------------------------------------

/// Rows of `pipeline_status` that [`load_usdcop_like`] writes.
pub const PIPELINE_ROWS: usize = 1000;
/// Rows of `model_registry` (one with a NULL and one with an empty artifact).
pub const MODEL_ROWS: usize = 8;
/// Sizes of the `model_registry.artifact` values, by id (-1: NULL).
pub const ARTIFACT_SIZES: [i64; MODEL_ROWS] = [
    102_400, 262_144, 1_048_573, 524_288, 131_071, 786_432, 0, -1,
];
/// Rows of `features` per bar.
pub const FEATURES_PER_BAR: usize = 2;
/// The tables [`load_usdcop_like`] creates, sorted.
pub const USDCOP_TABLES: [&str; 4] = [
    "features",
    "model_registry",
    "pipeline_status",
    "usdcop_m5_ohlcv",
];

/// Creates and fills, in one transaction, server-side with
/// `generate_series`, a database shaped like the USDCOP trading system's:
///
/// - `usdcop_m5_ohlcv`: `bars` 5-minute bars (a deterministic integer random
///   walk; numeric(12,4) prices; ~2 % NULL volumes), primary key (time, symbol)
/// - `pipeline_status`: [`PIPELINE_ROWS`] runs (serial id, jsonb details,
///   NULL `finished_at` for running ones)
/// - `model_registry`: [`MODEL_ROWS`] models with incompressible bytea
///   artifacts of [`ARTIFACT_SIZES`] (up to 1 MiB; one empty, one NULL)
/// - `features`: [`FEATURES_PER_BAR`] × `bars` rows of double precision
///   (with NaN, ±Infinity, -0 and NULLs) and notes: mostly NULL, some long
///   (TOASTed) texts with non-ASCII, tabs, newlines, quotes and backslashes
///
/// Everything is a pure function of the row number: loading twice gives
/// identical tables. `db` must exist. 100 000 bars (300 000 rows) load in a
/// few seconds.
pub fn load_usdcop_like(pg: &PgServer, db: &str, bars: usize) {
    let sizes = ARTIFACT_SIZES
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sql = include_str!("../data/usdcop_like.sql")
        .replace("{bars}", &bars.to_string())
        .replace("{pipeline_rows}", &PIPELINE_ROWS.to_string())
        .replace("{per_bar}", &FEATURES_PER_BAR.to_string())
        .replace("{sizes}", &sizes);
    pg.psql(db, &sql);
}

/// `COUNT:MD5` of a table in schema `public`: the row count and the MD5 of
/// all rows' text forms, sorted, one a line. Equal fingerprints mean equal
/// rows (as a multiset); one changed value changes it.
pub fn table_fingerprint(pg: &PgServer, db: &str, table: &str) -> String {
    pg.psql(
        db,
        &format!(
            "SELECT count(*) || ':' || md5(coalesce(string_agg(fp_row_::text, E'\\n' \
             ORDER BY fp_row_::text), '')) FROM public.{} AS fp_row_",
            quote_ident(table)
        ),
    )
}

/// The tables of schema `public`, sorted.
pub fn user_tables(pg: &PgServer, db: &str) -> Vec<String> {
    let out = pg.psql(
        db,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    );
    out.lines().map(str::to_string).collect()
}

/// Every table of schema `public` with its [`table_fingerprint`].
pub fn database_fingerprints(pg: &PgServer, db: &str) -> BTreeMap<String, String> {
    user_tables(pg, db)
        .into_iter()
        .map(|t| {
            let fp = table_fingerprint(pg, db, &t);
            (t, fp)
        })
        .collect()
}

/// The sequences of schema `public` with `last_value` (NULL → empty) and
/// whether they were used, e.g. `pipeline_status_id_seq` → `1000`.
pub fn sequence_values(pg: &PgServer, db: &str) -> BTreeMap<String, String> {
    let out = pg.psql(
        db,
        "SELECT sequencename, coalesce(last_value::text, '') FROM pg_sequences \
         WHERE schemaname = 'public' ORDER BY sequencename",
    );
    out.lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Panics, naming what differs, unless the two databases have the same
/// public tables with the same rows and the same sequence values.
pub fn assert_same_data(a: &PgServer, db_a: &str, b: &PgServer, db_b: &str) {
    let (fa, fb) = (
        database_fingerprints(a, db_a),
        database_fingerprints(b, db_b),
    );
    if fa != fb {
        let mut diff = Vec::new();
        for t in fa.keys().chain(fb.keys().filter(|k| !fa.contains_key(*k))) {
            let (x, y) = (fa.get(t), fb.get(t));
            if x != y {
                diff.push(format!("  {t}: {x:?} vs {y:?}"));
            }
        }
        panic!(
            "tables differ between {db_a} (port {}) and {db_b} (port {}):\n{}",
            a.port(),
            b.port(),
            diff.join("\n")
        );
    }
    let (sa, sb) = (sequence_values(a, db_a), sequence_values(b, db_b));
    assert_eq!(
        sa,
        sb,
        "sequences differ between {db_a} (port {}) and {db_b} (port {})",
        a.port(),
        b.port()
    );
}

// ---- a TimescaleDB stand-in ------------------------------------------------

/// The versions the stand-in offers; [`STANDIN_OLD`] is not the default, so
/// a restore that forgets `CREATE EXTENSION … VERSION` gets the wrong one.
pub const STANDIN_OLD: &str = "2.13.1-usdcopdr-standin";
pub const STANDIN_NEW: &str = "2.14.2-usdcopdr-standin";
/// Marks our control file, so a real TimescaleDB's is never touched.
const STANDIN_MARK: &str = "usdcop-dr test stand-in for TimescaleDB";

/// The SQL of one stand-in version: what `restore postgres` relies on.
/// `timescaledb_pre_restore()` / `timescaledb_post_restore()` behave like
/// TimescaleDB's (the database's `timescaledb.restoring` setting, which
/// every new session such as pg_restore's sees) and record each call in
/// `_timescaledb_catalog.usdcopdr_standin_calls`, as does an event
/// trigger for each `CREATE TABLE` (with the session's
/// `timescaledb.restoring`), so a test sees pg_restore ran between them in
/// restore mode. The catalog is an extension member table: pg_dump leaves
/// its rows out, as with TimescaleDB's own catalog.
fn standin_sql(version: &str) -> String {
    format!(
        r#"-- {STANDIN_MARK}, version {version}; not TimescaleDB.
\echo Use "CREATE EXTENSION timescaledb" to load this file. \quit
CREATE SCHEMA _timescaledb_catalog;
CREATE TABLE _timescaledb_catalog.usdcopdr_standin_calls (
    seq bigserial PRIMARY KEY,
    call text NOT NULL,
    restoring text,
    version text NOT NULL DEFAULT '{version}');
CREATE FUNCTION @extschema@.timescaledb_pre_restore() RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET timescaledb.restoring = ''on''', current_database());
    SET SESSION timescaledb.restoring = 'on';
    INSERT INTO _timescaledb_catalog.usdcopdr_standin_calls (call, restoring)
        VALUES ('pre_restore', current_setting('timescaledb.restoring', true));
    RETURN true;
END $$;
CREATE FUNCTION @extschema@.timescaledb_post_restore() RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER DATABASE %I RESET timescaledb.restoring', current_database());
    SET SESSION timescaledb.restoring = 'off';
    INSERT INTO _timescaledb_catalog.usdcopdr_standin_calls (call, restoring)
        VALUES ('post_restore', current_setting('timescaledb.restoring', true));
    RETURN true;
END $$;
CREATE FUNCTION _timescaledb_catalog.usdcopdr_standin_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO _timescaledb_catalog.usdcopdr_standin_calls (call, restoring)
        SELECT 'create table ' || object_identity, current_setting('timescaledb.restoring', true)
        FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE';
END $$;
CREATE EVENT TRIGGER usdcopdr_standin_ddl ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION _timescaledb_catalog.usdcopdr_standin_ddl();
"#
    )
}

/// Installed stand-in files, removed when the last user in this test
/// process drops its guard.
static STANDIN_USERS: Mutex<usize> = Mutex::new(0);

/// Keeps the TimescaleDB stand-in installed (see [`PgServer::install_timescaledb_standin`]).
pub struct TimescaleStandin {
    dir: PathBuf,
}

impl TimescaleStandin {
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut f = vec![dir.join("timescaledb.control")];
        for v in [STANDIN_OLD, STANDIN_NEW] {
            f.push(dir.join(format!("timescaledb--{v}.sql")));
        }
        f
    }
}

impl Drop for TimescaleStandin {
    fn drop(&mut self) {
        let mut users = STANDIN_USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users -= 1;
        if *users == 0 {
            for f in Self::files(&self.dir) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

impl PgServer {
    /// The server's extension directory (`SHAREDIR/extension`, asked of
    /// the server itself, so it is this server's and not another
    /// installation's).
    pub fn extension_dir(&self) -> PathBuf {
        let share = self.psql(
            "postgres",
            "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'",
        );
        PathBuf::from(share.trim()).join("extension")
    }

    /// Install a stand-in extension named `timescaledb` (versions
    /// [`STANDIN_OLD`] and [`STANDIN_NEW`], the latter the default) into
    /// the server's extension directory, for as long as the guard lives.
    /// Err (a reason to skip the test) when a real TimescaleDB is installed
    /// there, or the directory is not writable (the tests are not root).
    pub fn install_timescaledb_standin(&self) -> Result<TimescaleStandin, String> {
        let dir = self.extension_dir();
        let control = dir.join("timescaledb.control");
        let mut users = STANDIN_USERS.lock().unwrap_or_else(|e| e.into_inner());
        match std::fs::read_to_string(&control) {
            Ok(text) if !text.contains(STANDIN_MARK) => {
                return Err(format!(
                    "{} belongs to a real TimescaleDB; the stand-in is not installed over it",
                    control.display()
                ))
            }
            _ => {}
        }
        let write = |path: &Path, text: &str| -> Result<(), String> {
            // Written beside, then renamed: another test process may be
            // reading the same files right now.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    format!(
                        "cannot install the TimescaleDB stand-in into {}: {e} (run the tests as root)",
                        dir.display()
                    )
                })
        };
        write(
            &control,
            &format!(
                "# {STANDIN_MARK}: installed and removed by usdcop-dr's tests (tests/common/postgres.rs)\n\
                 comment = '{STANDIN_MARK} (not TimescaleDB)'\n\
                 default_version = '{STANDIN_NEW}'\n\
                 relocatable = false\n\
                 superuser = true\n"
            ),
        )?;
        for v in [STANDIN_OLD, STANDIN_NEW] {
            write(&dir.join(format!("timescaledb--{v}.sql")), &standin_sql(v))?;
        }
        *users += 1;
        Ok(TimescaleStandin { dir })
    }
}
