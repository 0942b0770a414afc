//! The trading system's topology in one test (issue 8, "Must show"), laid
//! out as operators deploy it:
//!
//! - PostgreSQL on this host, reached over its Unix socket with peer
//!   authentication: usdcop-dr runs as the `postgres` OS user, as the
//!   nightly cron job does (non-root, `--dsn dbname=usdcop_trading`,
//!   `PGHOST` naming the socket directory, no password anywhere), with
//!   `--globals`.
//! - The on-prem object store ("minio", a Garage server with its own key
//!   pair) holding the two source buckets `00-raw-usdcop-marketdata` and
//!   `01-l1-ds-usdcop-standardize`, which share keys with different
//!   content, some objects over 16 MiB (spooled and uploaded in parts on
//!   restore).
//! - The deployment's config files (docker-compose.yml, .env, nginx,
//!   prometheus) in a directory tree.
//! - The repository offsite, on a second Garage with a different key pair
//!   that the first refuses (Garage checks signatures). Each store is
//!   chosen by a named profile in `~postgres/.aws/{config,credentials}`
//!   (mode 0600, owned by `postgres`); the repository passphrase comes
//!   from `USDCOP_DR_PASSWORD`.
//!
//! One night's backups (postgres, bucket, files), each restored and
//! compared byte for byte / row for row (the buckets emptied and restored
//! under their own names), `verify --read-data`; then the next night's,
//! after changes to every source, with every S3 request to both stores
//! through a fault-injecting proxy (5 % 503 SlowDown, 3 % resets, 3 % GET
//! bodies cut short): all succeed, the data are equal, and the proxies
//! really injected each kind of fault.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/servers.rs"]
mod servers;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{random_bytes, run_cmd, Run, PASSWORD};
use faultproxy::{FaultCounts, FaultProxy, FaultRates};
use postgres::*;
use servers::{S3Server, ServerKind};

const DB: &str = "usdcop_trading";
const RAW: &str = "00-raw-usdcop-marketdata";
const L1: &str = "01-l1-ds-usdcop-standardize";
const REPO: &str = "s3://dr-backups/usdcop";
/// Above restore bucket's 16 MiB spool threshold.
const BIG: usize = 16 << 20;

/// One object of a source bucket, as the test put it there.
#[derive(Clone, Debug)]
struct Object {
    data: Vec<u8>,
    content_type: Option<&'static str>,
    meta: Vec<(&'static str, String)>,
}

/// Expected content of the two source buckets: bucket -> key -> object.
type Buckets = BTreeMap<&'static str, BTreeMap<String, Object>>;

/// The `postgres` OS user's cron environment: its home (with `.aws/`),
/// and what a crontab line sets.
struct Cron {
    uid: u32,
    gid: u32,
    home: tempfile::TempDir,
    /// What its crontab sets besides PATH, HOME and the passphrase.
    env: Vec<(String, String)>,
}

/// The uid and gid of the `postgres` OS user.
fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read at once,
    // before any other passwd call of this thread.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no `postgres` OS user on this machine");
    // SAFETY: non-null, points at libc's static passwd entry.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

impl Cron {
    /// The `postgres` OS user with a home of its own and `env`.
    fn new(env: &[(&str, &str)]) -> Cron {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test runs as root, to act as the `postgres` OS user"
        );
        let (uid, gid) = postgres_ids();
        let home = tempfile::Builder::new()
            .prefix("usdcop-dr-postgres-home-")
            .tempdir()
            .unwrap();
        std::os::unix::fs::chown(home.path(), Some(uid), Some(gid)).unwrap();
        Cron {
            uid,
            gid,
            home,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// A directory (or file) of the `postgres` user, inside its home.
    fn own(&self, path: &Path, mode: u32) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.home.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        self.own(&p, 0o700);
        p
    }

    /// `~/.aws/config` and `~/.aws/credentials` with the profiles `minio`
    /// (the source store) and `offsite` (the repository's), each with its
    /// server's keys and `endpoint_url` (the server itself, or a proxy in
    /// front of it). Mode 0600, owned by `postgres`.
    fn write_profiles(
        &self,
        minio: &S3Server,
        minio_url: &str,
        offsite: &S3Server,
        offsite_url: &str,
    ) {
        let dir = self.mkdir(".aws");
        let mut config = String::new();
        let mut creds = String::new();
        for (name, s, url) in [
            ("minio", minio, minio_url),
            ("offsite", offsite, offsite_url),
        ] {
            config += &format!(
                "[profile {name}]\nregion = {}\nendpoint_url = {url}\n\n",
                s.region
            );
            creds += &format!(
                "[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n",
                s.access_key, s.secret_key
            );
        }
        for (file, text) in [("config", config), ("credentials", creds)] {
            let p = dir.join(file);
            std::fs::write(&p, text).unwrap();
            self.own(&p, 0o600);
        }
    }

    /// usdcop-dr as the `postgres` OS user with what its crontab gives it:
    /// PATH, HOME, the passphrase, the repository's profile, and its
    /// `env`. No password and no AWS key in the environment.
    fn run(&self, args: &[&str]) -> Run {
        let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.home.path())
            .env("USDCOP_DR_PASSWORD", PASSWORD)
            .env("USDCOP_DR_S3_PROFILE", "offsite")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.home.path())
            .uid(self.uid)
            .gid(self.gid)
            .args(["--repo", REPO])
            .args(args);
        run_cmd(c, None)
    }

    /// [`run`](Self::run), which must succeed; its `--json` answer. No
    /// secret (either store's secret key, the passphrase) in its output.
    fn ok(&self, secrets: &[&str], args: &[&str]) -> serde_json::Value {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "usdcop-dr {args:?} failed (exit {}): {}",
            r.code, r.stderr
        );
        let out = format!("{}{}", r.stderr, r.stdout_str());
        for s in secrets {
            assert!(
                !out.contains(s),
                "a secret leaked into the output of {args:?}"
            );
        }
        r.json()
    }
}

/// Deterministic CSV text of 5-minute bars, `rows` lines.
fn csv(rows: usize, seed: u64) -> Vec<u8> {
    let r = random_bytes(rows * 4, seed);
    let mut out = String::from("time,symbol,open,high,low,close,volume\n");
    for i in 0..rows {
        let x = u32::from_le_bytes(r[i * 4..i * 4 + 4].try_into().unwrap());
        let p = 4000.0 + (x % 20000) as f64 / 100.0;
        out += &format!(
            "2026-11-{:02}T{:02}:{:02}:00Z,USD/COP,{p:.4},{:.4},{:.4},{:.4},{}\n",
            1 + (seed % 28),
            (i / 12) % 24,
            (i % 12) * 5,
            p + 1.5,
            p - 1.25,
            p + 0.5,
            x % 1_000_000
        );
    }
    out.into_bytes()
}

fn object(data: Vec<u8>, content_type: Option<&'static str>) -> Object {
    Object {
        data,
        content_type,
        meta: Vec::new(),
    }
}

/// The source buckets on the first night. Both hold `USDCOP/m5/…csv` days
/// 1–20, `USDCOP/ticks/2026-11.bin` (over 16 MiB) and `manifest.json`, with
/// different content: the raw and the standardised data.
fn first_night() -> Buckets {
    let mut raw = BTreeMap::new();
    for d in 1..=30u64 {
        raw.insert(
            format!("USDCOP/m5/2026-11-{d:02}.csv"),
            object(csv(288 * 3, d), Some("text/csv")),
        );
    }
    raw.insert(
        "USDCOP/ticks/2026-11.bin".into(),
        object(random_bytes(BIG + 3_000_017, 7001), None),
    );
    let mut manifest = object(
        br#"{"layer":"l0","source":"twelvedata","symbols":["USD/COP"]}"#.to_vec(),
        Some("application/json"),
    );
    manifest.meta = vec![("pipeline", "l0_ingest".into()), ("run", "4211".into())];
    raw.insert("manifest.json".into(), manifest);

    let mut l1 = BTreeMap::new();
    for d in 1..=20u64 {
        l1.insert(
            format!("USDCOP/m5/2026-11-{d:02}.csv"),
            object(csv(288, 100 + d), Some("text/csv")),
        );
    }
    l1.insert(
        "USDCOP/ticks/2026-11.bin".into(),
        object(random_bytes(BIG + 1_000_003, 7002), None),
    );
    l1.insert(
        "USDCOP/features/2026-11.parquet".into(),
        object(
            random_bytes(BIG + 65_537, 7003),
            Some("application/vnd.apache.parquet"),
        ),
    );
    let mut manifest = object(
        br#"{"layer":"l1","standardized":true,"tz":"UTC"}"#.to_vec(),
        Some("application/json"),
    );
    manifest.meta = vec![("pipeline", "l1_features".into())];
    l1.insert("manifest.json".into(), manifest);
    l1.insert("USDCOP/_SUCCESS".into(), object(Vec::new(), None));
    BTreeMap::from([(RAW, raw), (L1, l1)])
}

fn put(server: &S3Server, bucket: &str, key: &str, o: &Object) {
    let mut headers: Vec<(String, String)> = o
        .meta
        .iter()
        .map(|(k, v)| (format!("x-amz-meta-{k}"), v.clone()))
        .collect();
    if let Some(ct) = o.content_type {
        headers.push(("content-type".into(), ct.into()));
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = server
        .request("PUT", &format!("/{bucket}/{key}"), &headers, &o.data)
        .unwrap_or_else(|e| panic!("PUT {bucket}/{key}: {e}"));
    assert_eq!(
        r.0,
        200,
        "PUT {bucket}/{key}: {}",
        String::from_utf8_lossy(&r.2)
    );
}

fn delete(server: &S3Server, bucket: &str, key: &str) {
    let r = server
        .request("DELETE", &format!("/{bucket}/{key}"), &[], b"")
        .unwrap_or_else(|e| panic!("DELETE {bucket}/{key}: {e}"));
    assert_eq!(
        r.0,
        204,
        "DELETE {bucket}/{key}: {}",
        String::from_utf8_lossy(&r.2)
    );
}

fn keys(server: &S3Server, bucket: &str) -> Vec<String> {
    serde_json::from_value(server.bucket_tool(&["keys", bucket])).unwrap()
}

/// The disaster: every object of both source buckets is gone.
fn empty_buckets(server: &S3Server) {
    for b in [RAW, L1] {
        for k in keys(server, b) {
            delete(server, b, &k);
        }
        assert!(keys(server, b).is_empty(), "{b} still holds objects");
    }
}

/// Each bucket holds exactly the expected keys, each object with the
/// expected bytes, content type and user metadata.
fn assert_buckets(server: &S3Server, want: &Buckets) {
    for (bucket, objects) in want {
        let got = keys(server, bucket);
        let expected: Vec<&String> = objects.keys().collect();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            expected,
            "keys of the restored {bucket}"
        );
        for (key, o) in objects {
            let (code, headers, body) = server
                .request("GET", &format!("/{bucket}/{key}"), &[], b"")
                .unwrap_or_else(|e| panic!("GET {bucket}/{key}: {e}"));
            assert_eq!(code, 200, "GET {bucket}/{key}");
            assert!(
                body == o.data,
                "{bucket}/{key}: restored {} bytes differ from the original {} bytes",
                body.len(),
                o.data.len()
            );
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            if let Some(ct) = o.content_type {
                assert_eq!(header("content-type"), Some(ct), "{bucket}/{key}");
            }
            for (k, v) in &o.meta {
                assert_eq!(
                    header(&format!("x-amz-meta-{k}")),
                    Some(v.as_str()),
                    "{bucket}/{key}: user metadata {k}"
                );
            }
        }
    }
}

/// The deployment's config files under `root/srv/usdcop-trading`, owned by
/// root and world-readable except `.env` (root:postgres 0640, secrets the
/// cron user may read), with the usual sites-enabled symlink.
fn config_tree(root: &Path, gid: u32) -> PathBuf {
    let base = root.join("srv/usdcop-trading");
    let files: &[(&str, &str)] = &[
        (
            "docker-compose.yml",
            "services:\n  postgres:\n    image: postgres:15\n    volumes: [\"/var/run/postgresql:/var/run/postgresql\"]\n  minio:\n    image: minio/minio\n    command: server /data\n  airflow:\n    image: apache/airflow:2.9.3\n    env_file: .env\n",
        ),
        (
            ".env",
            "POSTGRES_DB=usdcop_trading\nMINIO_ENDPOINT=http://minio:9000\nTWELVEDATA_API_KEY=td-0123456789abcdef\nAIRFLOW_UID=50000\n",
        ),
        (
            "nginx/nginx.conf",
            "events {}\nhttp {\n  include /etc/nginx/sites-enabled/*;\n  upstream dashboard { server dashboard:3000; }\n}\n",
        ),
        (
            "nginx/sites-available/usdcop.conf",
            "server {\n  listen 80;\n  location / { proxy_pass http://dashboard; }\n}\n",
        ),
        (
            "prometheus/prometheus.yml",
            "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: usdcop\n    static_configs:\n      - targets: ['airflow:8080', 'minio:9000']\n",
        ),
    ];
    for (path, text) in files {
        let p = base.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let env = base.join(".env");
    std::os::unix::fs::chown(&env, None, Some(gid)).unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::create_dir_all(base.join("nginx/sites-enabled")).unwrap();
    std::os::unix::fs::symlink(
        "../sites-available/usdcop.conf",
        base.join("nginx/sites-enabled/usdcop.conf"),
    )
    .unwrap();
    // The temporary root is 0700; the cron user must reach the tree.
    let mut p = base.clone();
    while p != root.parent().unwrap() {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p = p.parent().unwrap().to_path_buf();
    }
    base
}

/// What a tree holds: relative path -> (kind and content, permission bits).
fn read_tree(dir: &Path) -> BTreeMap<String, (String, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                let to = std::fs::read_link(&p).unwrap();
                out.insert(rel, (format!("-> {}", to.display()), 0));
            } else if m.is_dir() {
                out.insert(rel, ("dir".into(), m.mode() & 0o7777));
                walk(base, &p, out);
            } else {
                let data = std::fs::read(&p).unwrap();
                out.insert(rel, (String::from_utf8(data).unwrap(), m.mode() & 0o7777));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// One night's backups and restores, each compared.
#[allow(clippy::too_many_arguments)]
fn night(
    label: &str,
    first: bool,
    cron: &Cron,
    pg: &PgServer,
    minio: &S3Server,
    buckets: &Buckets,
    config: &Path,
    secrets: &[&str],
) {
    let t = Instant::now();
    // PostgreSQL over the socket, peer authentication, with the roles.
    let b = cron.ok(
        secrets,
        &[
            "--json",
            "backup",
            "postgres",
            "--source",
            "pg-usdcop",
            "--dsn",
            &format!("dbname={DB}"),
            "--globals",
        ],
    );
    assert_eq!(b["files"], 2, "the dump and globals.sql: {b}");
    assert_eq!(b["postgres"]["tables"], USDCOP_TABLES.len() as u64, "{b}");
    assert_eq!(b["warnings"], serde_json::json!([]), "{b}");

    // Both buckets of the on-prem store into the offsite repository.
    let b = cron.ok(
        secrets,
        &[
            "--json",
            "backup",
            "bucket",
            "--source",
            "minio-usdcop",
            "--profile",
            "minio",
            "--bucket",
            RAW,
            "--bucket",
            L1,
        ],
    );
    let objects: usize = buckets.values().map(|b| b.len()).sum();
    assert_eq!(b["files"], objects as u64, "{b}");
    assert_eq!(b["warnings"], serde_json::json!([]), "{b}");
    // Every object is downloaded both nights (the restore of the first
    // night rewrote them all, so none matches its listing any more), but
    // the second night stores only what changed.
    let (bytes_in, stored) = (
        b["bytes_in"].as_u64().unwrap(),
        b["bytes_stored_new"].as_u64().unwrap(),
    );
    // (A GET retried or resumed after a fault counts again.)
    assert!(
        b["source_requests"]["get"].as_u64().unwrap() >= objects as u64,
        "{b}"
    );
    if !first {
        assert!(stored < bytes_in / 2, "unchanged content stored again: {b}");
    }

    // The config tree.
    let c = config.to_str().unwrap();
    let b = cron.ok(
        secrets,
        &["--json", "backup", "files", "--source", "config", c],
    );
    assert_eq!(b["warnings"], serde_json::json!([]), "{b}");
    eprintln!("{label}: three backups in {:?}", t.elapsed());

    // The on-prem store loses its objects; both buckets come back under
    // their own names (colliding keys each into its own bucket).
    empty_buckets(minio);
    let r = cron.ok(
        secrets,
        &[
            "--json",
            "restore",
            "bucket",
            "--source",
            "minio-usdcop",
            "--profile",
            "minio",
            "--to-original-names",
        ],
    );
    assert_eq!(r["objects"], objects as u64, "{r}");
    assert!(
        r["target_requests"]["multipart"].as_u64().unwrap() > 0,
        "the objects over 16 MiB went up in parts: {r}"
    );
    let mut targets: Vec<(String, String)> = r["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["source"].as_str().unwrap().to_owned(),
                b["bucket"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [(RAW.into(), RAW.into()), (L1.into(), L1.into())],
        "{r}"
    );
    assert_buckets(minio, buckets);

    // PostgreSQL into a new database, over the socket, with the roles.
    let restored = format!("{DB}_{label}");
    let r = cron.ok(
        secrets,
        &[
            "--json",
            "restore",
            "postgres",
            "--source",
            "pg-usdcop",
            "--create",
            "--globals",
            "--target-dsn",
            &format!("dbname={restored}"),
        ],
    );
    assert_eq!(r["created"], true, "{r}");
    assert_eq!(r["differences"], serde_json::json!([]), "{r}");
    // Into the same cluster, the roles exist already: reported, not fatal.
    for w in r["warnings"].as_array().unwrap() {
        assert_eq!(w["kind"], "globals", "{r}");
        assert!(
            w["message"].as_str().unwrap().contains("already exists"),
            "{r}"
        );
    }
    assert_same_data(pg, DB, pg, &restored);
    let globals = cron.run(&[
        "restore",
        "--source",
        "pg-usdcop",
        "--stdout",
        "--path",
        "globals.sql",
    ]);
    assert_eq!(globals.code, 0, "{}", globals.stderr);
    assert!(
        globals.stdout_str().contains("CREATE ROLE usdcop_reader;"),
        "globals.sql lacks the role: {}",
        globals.stdout_str()
    );

    // The config tree into an empty directory of the cron user.
    let target = cron.mkdir(&format!("restore-{label}"));
    let r = cron.ok(
        secrets,
        &[
            "--json",
            "restore",
            "--source",
            "config",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(r["failed"], serde_json::json!([]), "{r}");
    let got = read_tree(&target.join(c.trim_start_matches('/')));
    let want = read_tree(config);
    assert_eq!(got, want, "restored config tree");

    let v = cron.ok(secrets, &["--json", "verify", "--read-data"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    eprintln!(
        "{label}: backups, restores and verify in {:?}: {v}",
        t.elapsed()
    );
}

/// The next day: new and changed objects (one over 16 MiB), one deleted;
/// rows inserted and updated; a config file changed and one added.
fn next_day(pg: &PgServer, minio: &S3Server, buckets: &mut Buckets, config: &Path) {
    let changes: Vec<(&str, String, Option<Object>)> = vec![
        (
            RAW,
            "USDCOP/m5/2026-11-13.csv".into(),
            Some(object(csv(288 * 3, 13), Some("text/csv"))),
        ),
        (
            RAW,
            "USDCOP/m5/2026-11-03.csv".into(),
            Some(object(csv(288 * 3, 1003), Some("text/csv"))),
        ),
        (RAW, "USDCOP/m5/2026-11-01.csv".into(), None),
        (
            L1,
            "USDCOP/ticks/2026-11.bin".into(),
            Some(object(random_bytes(BIG + 2_000_029, 7004), None)),
        ),
        (
            L1,
            "USDCOP/m5/2026-11-02.csv".into(),
            Some(object(csv(288, 202), Some("text/csv"))),
        ),
    ];
    for (bucket, key, change) in changes {
        let objects = buckets.get_mut(bucket).unwrap();
        match change {
            Some(o) => {
                put(minio, bucket, &key, &o);
                objects.insert(key, o);
            }
            None => {
                delete(minio, bucket, &key);
                objects.remove(&key);
            }
        }
    }

    pg.psql(
        DB,
        "INSERT INTO pipeline_status (pipeline, status, started_at, details) \
         SELECT 'l0_ingest', 'running', timestamptz '2026-12-02 02:00:00+00' + i * interval '1 minute', \
                jsonb_build_object('night', 2, 'i', i) FROM generate_series(1, 25) AS i; \
         UPDATE usdcop_m5_ohlcv SET volume = coalesce(volume, 0) + 1 WHERE time < '2019-01-03';",
    );

    std::fs::write(
        config.join(".env"),
        "POSTGRES_DB=usdcop_trading\nMINIO_ENDPOINT=http://minio:9000\nTWELVEDATA_API_KEY=td-fedcba9876543210\nAIRFLOW_UID=50000\n",
    )
    .unwrap();
    let rules = config.join("prometheus/rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::set_permissions(&rules, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        rules.join("alerts.yml"),
        "groups:\n  - name: usdcop\n    rules:\n      - alert: BackupMissing\n        expr: time() - usdcop_dr_last_backup > 90000\n",
    )
    .unwrap();
    std::fs::set_permissions(
        rules.join("alerts.yml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
}

fn sum(a: FaultCounts, b: FaultCounts) -> FaultCounts {
    FaultCounts {
        requests: a.requests + b.requests,
        gets: a.gets + b.gets,
        forwarded: a.forwarded + b.forwarded,
        slow_down: a.slow_down + b.slow_down,
        reset: a.reset + b.reset,
        cut_body: a.cut_body + b.cut_body,
        reset_after: a.reset_after + b.reset_after,
        conflict: a.conflict + b.conflict,
    }
}

#[test]
fn the_trading_systems_topology_backs_up_and_restores_through_faults() {
    let t0 = Instant::now();
    // Debian's layout: peer authentication on the socket.
    let pg = PgServer::start_with(&PgOptions {
        peer: true,
        socket_dirs: Vec::new(),
    });
    pg.create_db(DB);
    load_usdcop_like(&pg, DB, 5_000);
    pg.psql(
        DB,
        "CREATE ROLE usdcop_reader; GRANT SELECT ON ALL TABLES IN SCHEMA public TO usdcop_reader;",
    );
    // PGHOST: the socket directory; PGPORT: the test server's own port.
    let (host, port) = (pg.dir().display().to_string(), pg.port().to_string());
    let cron = Cron::new(&[("PGHOST", &host), ("PGPORT", &port)]);
    assert_eq!(pg.os_user_ids(), Some((cron.uid, cron.gid)));

    // On-prem and offsite stores, each a Garage with its own key pair.
    let minio = S3Server::start(ServerKind::Garage);
    let offsite = S3Server::start(ServerKind::Garage);
    assert_ne!(minio.access_key, offsite.access_key);
    for b in [RAW, L1] {
        minio.create_bucket(b);
    }
    offsite.create_bucket("dr-backups");
    let mut buckets = first_night();
    for (bucket, objects) in &buckets {
        for (k, o) in objects {
            put(&minio, bucket, k, o);
        }
    }
    let root = tempfile::tempdir().unwrap();
    let config = config_tree(root.path(), cron.gid);
    let secrets = [
        minio.secret_key.as_str(),
        offsite.secret_key.as_str(),
        PASSWORD,
    ];
    eprintln!("set-up in {:?}", t0.elapsed());

    // First night: straight to the stores.
    cron.write_profiles(&minio, &minio.endpoint, &offsite, &offsite.endpoint);
    cron.ok(
        &secrets,
        &[
            "--json",
            "init",
            "--kdf-memory-kib",
            "1024",
            "--chunk-avg-size",
            "262144",
            "--pack-size",
            "8388608",
        ],
    );
    // Each store refuses the other's key pair, so a profile mix-up cannot
    // pass unnoticed: the repository's store with the on-prem profile, and
    // the on-prem store with the repository's profile.
    let wrong = cron.run(&[
        "--s3-profile",
        "minio",
        "--s3-endpoint",
        &offsite.endpoint,
        "snapshots",
    ]);
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    let want = format!(
        "the repository store {} refused access key {} (profile minio)",
        offsite.endpoint, minio.access_key
    );
    assert!(
        wrong.stderr.contains(&want),
        "want {want:?} in: {}",
        wrong.stderr
    );
    let wrong = cron.run(&[
        "backup",
        "bucket",
        "--source",
        "minio-usdcop",
        "--profile",
        "offsite",
        "--endpoint",
        &minio.endpoint,
        "--bucket",
        RAW,
    ]);
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    let want = format!(
        "the source store {} refused access key {} (profile offsite)",
        minio.endpoint, offsite.access_key
    );
    assert!(
        wrong.stderr.contains(&want),
        "want {want:?} in: {}",
        wrong.stderr
    );
    for s in &secrets {
        assert!(
            !wrong.stderr.contains(s),
            "a secret leaked: {}",
            wrong.stderr
        );
    }

    night(
        "night1", true, &cron, &pg, &minio, &buckets, &config, &secrets,
    );

    // Second night: every S3 request of both stores through a faulty
    // network; the profiles' endpoint_url are the proxies.
    next_day(&pg, &minio, &mut buckets, &config);
    let minio_proxy = FaultProxy::start(&minio.endpoint, FaultRates::issue(), 81);
    let offsite_proxy = FaultProxy::start(&offsite.endpoint, FaultRates::issue(), 82);
    cron.write_profiles(
        &minio,
        &minio_proxy.endpoint,
        &offsite,
        &offsite_proxy.endpoint,
    );
    night(
        "night2", false, &cron, &pg, &minio, &buckets, &config, &secrets,
    );
    let (m, o) = (minio_proxy.counts(), offsite_proxy.counts());
    let all = sum(m, o);
    eprintln!(
        "faults: on-prem store {m:?}; offsite store {o:?}; whole test {:?}",
        t0.elapsed()
    );
    for (store, c) in [("on-prem", m), ("offsite", o)] {
        assert!(
            c.slow_down + c.reset + c.cut_body > 0,
            "no fault injected into the {store} store's requests: {c:?}"
        );
    }
    assert!(all.slow_down > 0, "no 503 SlowDown injected: {all:?}");
    assert!(all.reset > 0, "no connection reset injected: {all:?}");
    assert!(all.cut_body > 0, "no GET body cut short: {all:?}");
}

/// The S3 backend spooled packs into a fixed `$TMPDIR/usdcop-dr-spool`,
/// shared by every user: once a root run had made it (mode 0755), every
/// backup of the `postgres` cron job failed with "writing spool file
/// …/usdcop-dr-spool/pack-….tmp: Permission denied" (and another user
/// could own it and change our packs before their upload). Each run now
/// spools into a private directory of its own, removed at the end.
#[test]
fn a_cron_job_does_not_share_a_spool_directory_with_root() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // What a backup run as root left behind.
    let planted = tmp.path().join("usdcop-dr-spool");
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();

    let offsite = S3Server::start(ServerKind::Garage);
    offsite.create_bucket("dr-backups");
    let cron = Cron::new(&[("TMPDIR", tmp.path().to_str().unwrap())]);
    cron.write_profiles(&offsite, &offsite.endpoint, &offsite, &offsite.endpoint);
    let secrets = [offsite.secret_key.as_str(), PASSWORD];
    cron.ok(
        &secrets,
        &[
            "--json",
            "init",
            "--kdf-memory-kib",
            "1024",
            "--pack-size",
            "1048576",
        ],
    );
    let data = random_bytes(5 << 20, 5);
    let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", cron.home.path())
        .env("USDCOP_DR_PASSWORD", PASSWORD)
        .env("USDCOP_DR_S3_PROFILE", "offsite")
        .env("TMPDIR", tmp.path())
        .uid(cron.uid)
        .gid(cron.gid)
        .args(["--repo", REPO, "--json", "backup", "stdin", "--source", "s"])
        .args(["--stdin-name", "dump.bin"]);
    let r = run_cmd(c, Some(&data));
    assert_eq!(r.code, 0, "backup as postgres failed: {}", r.stderr);
    assert!(
        r.json()["packs_written"].as_u64().unwrap() >= 2,
        "{}",
        r.stdout_str()
    );
    let restored = cron.run(&["restore", "--source", "s", "--stdout"]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert!(restored.stdout == data, "restored bytes differ");
    // Nothing left behind, and nothing written into the planted directory.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["usdcop-dr-spool"], "left in TMPDIR");
    assert_eq!(std::fs::read_dir(&planted).unwrap().count(), 0);
}
