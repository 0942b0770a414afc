//! Restore drills (issue 13) over the trading system's three kinds of
//! source, on real servers: a PostgreSQL database reached over its Unix
//! socket with peer authentication (usdcop-dr runs as the `postgres` OS
//! user, as cron does), a bucket on a real S3 server (moto, through an AWS
//! profile), config files; scratch targets: a second PostgreSQL server, a
//! scratch bucket, a scratch directory. Shown: a passing drill (exit 0,
//! figures in the report, the record stored in the repository, every
//! scratch target gone); an RPO of one second (exit 4, the miss with its
//! figures); a damaged pack (exit 3, the source and object named); a drill
//! stopped by SIGTERM halfway leaves no scratch database, bucket content or
//! file behind.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/servers.rs"]
mod servers;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_cmd, run_cmd_timeout, Run};
use postgres::*;
use servers::{S3Server, ServerKind};

const DB: &str = "usdcop_trading";
const BUCKET: &str = "00-raw-usdcop-marketdata";
const SCRATCH_BUCKET: &str = "usdcop-dr-drill";

struct Host {
    root: tempfile::TempDir,
    user: (u32, u32),
    /// The PostgreSQL source archives its WAL here (`[wal]`).
    wal: bool,
}

impl Host {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn own_all(&self) {
        let mut all = vec![self.root.path().to_owned()];
        let mut i = 0;
        while i < all.len() {
            if let Ok(rd) = std::fs::read_dir(&all[i]) {
                all.extend(rd.flatten().map(|e| e.path()));
            }
            i += 1;
        }
        for p in all {
            std::os::unix::fs::lchown(&p, Some(self.user.0), Some(self.user.1)).unwrap();
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.root.path())
            .env("USDCOP_DR_CONFIG", self.path("etc/usdcop-dr.toml"))
            .env("USDCOP_DR_STATE_DIR", self.path("state"))
            .current_dir(self.root.path())
            .args(args)
            .uid(self.user.0)
            .gid(self.user.1);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        run_cmd_timeout(self.command(args), None, Duration::from_secs(300))
    }

    fn write_config(&self, rpo: &str, pg: &PgServer, scratch: &PgServer, s3: &S3Server) {
        let text = format!(
            "[repository]\nurl = {repo:?}\npassword_file = {pass:?}\n\n\
             [objectives]\nrpo = {rpo:?}\nrto = \"4h\"\ntimezone = \"America/Bogota\"\n\n\
             [drill]\npostgres_dsn = \"host=127.0.0.1 port={sport} user=postgres dbname=postgres\"\n\
             bucket_endpoint = {endpoint:?}\nprofile = \"minio\"\nbucket = \"{SCRATCH_BUCKET}\"\n\
             scratch_dir = {scratch_dir:?}\n\n\
             [metrics]\ntextfile = {prom:?}\n\n\
             [[source]]\nname = \"pg-usdcop\"\nkind = \"postgres\"\ndsn = \"host={sock} port={port} dbname={DB}\"\n\n\
             [[source]]\nname = \"minio-raw\"\nkind = \"bucket\"\nprofile = \"minio\"\nbuckets = [\"{BUCKET}\"]\n\n\
             [[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{files:?}]\n",
            repo = self.path("repo").display().to_string(),
            pass = self.path("etc/passphrase").display().to_string(),
            sport = scratch.port(),
            endpoint = s3.endpoint,
            scratch_dir = self.path("drill").display().to_string(),
            prom = self.path("metrics/usdcop_dr.prom").display().to_string(),
            sock = pg.dir().display(),
            port = pg.port(),
            files = self.path("srv/trading").display().to_string(),
        );
        let text = if self.wal {
            text + "\n[wal]\nsource = \"pg-usdcop\"\n"
        } else {
            text
        };
        std::fs::write(self.path("etc/usdcop-dr.toml"), text).unwrap();
        self.own_all();
    }
}

struct World {
    pg: PgServer,
    scratch: PgServer,
    s3: S3Server,
    host: Host,
}

fn world(bars: usize) -> World {
    world_with(bars, false)
}

/// With `wal`, the PostgreSQL source archives through `usdcop-dr
/// wal-push` (as its OS user, the configuration's `[wal]`), and has a
/// base backup besides its dump.
fn world_with(bars: usize, wal: bool) -> World {
    let root = tempfile::Builder::new()
        .prefix("usdcop-dr-drill-")
        .tempdir()
        .unwrap();
    let conf = if wal {
        format!(
            "archive_mode = on\narchive_command = 'USDCOP_DR_STATE_DIR={state} {bin} --config {cfg} wal-push %p'\n\
             archive_timeout = 60s\nwal_level = replica\n",
            state = root.path().join("state").display(),
            bin = env!("CARGO_BIN_EXE_usdcop-dr"),
            cfg = root.path().join("etc/usdcop-dr.toml").display()
        )
    } else {
        String::new()
    };
    let pg = PgServer::start_with_conf(
        &PgOptions {
            peer: true,
            socket_dirs: vec![],
        },
        &conf,
    );
    pg.create_db(DB);
    load_usdcop_like(&pg, DB, bars);
    let scratch = PgServer::start();
    let s3 = S3Server::start(ServerKind::Moto);
    s3.create_bucket(BUCKET);
    s3.create_bucket(SCRATCH_BUCKET);
    s3.bucket_tool(&["create", BUCKET, "30"]);
    let user = pg.os_user_ids().expect("these tests run as root");
    let host = Host { root, user, wal };
    for d in [
        "etc",
        "state",
        "drill",
        "srv/trading/nginx",
        ".aws",
        "metrics",
    ] {
        std::fs::create_dir_all(host.path(d)).unwrap();
    }
    std::fs::write(
        host.path("etc/passphrase"),
        format!("{}\n", common::PASSWORD),
    )
    .unwrap();
    std::fs::write(
        host.path("srv/trading/docker-compose.yml"),
        "services: {}\n",
    )
    .unwrap();
    std::fs::write(host.path("srv/trading/.env"), "TZ=America/Bogota\n").unwrap();
    std::fs::write(
        host.path("srv/trading/nginx/nginx.conf"),
        common::random_bytes(400_000, 11),
    )
    .unwrap();
    std::fs::write(
        host.path(".aws/config"),
        format!(
            "[profile minio]\nendpoint_url = {}\nregion = us-east-1\n",
            s3.endpoint
        ),
    )
    .unwrap();
    std::fs::write(
        host.path(".aws/credentials"),
        format!(
            "[minio]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    // The scratch server's password, where libpq looks for it.
    std::fs::write(
        host.path(".pgpass"),
        format!(
            "127.0.0.1:{}:*:postgres:{}\n",
            scratch.port(),
            scratch.password()
        ),
    )
    .unwrap();
    for f in ["etc/passphrase", ".aws/credentials", ".pgpass"] {
        std::fs::set_permissions(
            host.path(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    host.write_config("24h", &pg, &scratch, &s3);
    host.run(&["init", "--kdf-memory-kib", "1024"]).ok();
    let r = host.run(&["--json", "backup", "--all"]);
    assert_eq!(r.code, 0, "backup --all: {}", r.stderr);
    if wal {
        let r = host.run(&["--json", "backup", "postgres-base", "--source", "pg-usdcop"]);
        assert_eq!(r.code, 0, "backup postgres-base: {}", r.stderr);
    }
    World {
        pg,
        scratch,
        s3,
        host,
    }
}

/// Databases on the scratch server that a drill made.
fn drill_databases(scratch: &PgServer) -> String {
    scratch.psql(
        "postgres",
        "SELECT coalesce(string_agg(datname, ','), '') FROM pg_database WHERE datname LIKE 'usdcop_dr_drill%'",
    )
}

fn assert_no_scratch_left(w: &World) {
    assert_eq!(drill_databases(&w.scratch), "", "a drill database is left");
    let keys = w.s3.bucket_tool(&["keys", SCRATCH_BUCKET]);
    assert_eq!(
        keys.as_array().unwrap().len(),
        0,
        "scratch bucket not emptied: {keys}"
    );
    let left = common::files_under(&w.host.path("drill"));
    assert!(left.is_empty(), "scratch files left: {left:?}");
    let dirs: Vec<_> = std::fs::read_dir(w.host.path("drill")).unwrap().collect();
    assert!(dirs.is_empty(), "scratch directories left: {dirs:?}");
}

fn source<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {v}"))
}

#[test]
fn a_drill_passes_misses_the_rpo_and_finds_damage() {
    let w = world(300);
    let report = w.host.path("drill-report.md");
    let r = w
        .host
        .run(&["--json", "drill", "--report", report.to_str().unwrap()]);
    assert_eq!(r.code, 0, "drill: {}\n{}", r.stderr, r.stdout_str());
    let d = r.json();
    assert_eq!(d["verdict"], "passed", "{d}");
    assert_eq!(d["partial"], false);
    for name in ["pg-usdcop", "minio-raw", "config"] {
        let s = source(&d, name);
        assert!(s["error"].is_null(), "{s}");
        let checks = s["checks"].as_array().unwrap();
        assert!(
            !checks.is_empty() && checks.iter().all(|c| c["ok"] == true),
            "{s}"
        );
        assert!(s["restore"]["total_s"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["restore"]["bytes"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["rpo"]["met"], true, "{s}");
        assert!(s["rpo"]["age_s"].as_f64().unwrap() < 600.0, "{s}");
    }
    let pg_checks = source(&d, "pg-usdcop")["checks"][0]["what"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        pg_checks.contains(&format!("{} tables", USDCOP_TABLES.len())),
        "{pg_checks}"
    );
    let rto = &d["rto"];
    assert_eq!(rto["met"], true, "{d}");
    assert_eq!(rto["objective_s"], 14400.0);
    let sum: f64 = ["pg-usdcop", "minio-raw", "config"]
        .iter()
        .map(|n| source(&d, n)["restore"]["total_s"].as_f64().unwrap())
        .sum();
    assert!((rto["achieved_s"].as_f64().unwrap() - sum).abs() < 1e-6);
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("PASSED") && md.contains("RTO:") && md.contains("MB/s"),
        "{md}"
    );
    assert!(md.contains("## History"), "{md}");
    assert_no_scratch_left(&w);
    // The record lives in the repository.
    let listed = w.host.run(&["--json", "drills"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let l = listed.json();
    assert_eq!(l.as_array().unwrap().len(), 1);
    assert_eq!(l[0]["id"], d["id"]);
    assert!(common::files_under(&w.host.path("repo/drills")).len() == 1);
    // `status` shows it; the nightly metrics carry it, with every series
    // the drill alert rules use.
    let st = w.host.run(&["status"]);
    let short = &d["id"].as_str().unwrap()[..8];
    assert!(
        st.stdout_str().contains(&format!("last drill: {short}"))
            && st.stdout_str().contains("passed"),
        "{}",
        st.stdout_str()
    );
    let js = w.host.run(&["--json", "status"]).json();
    assert_eq!(js["last_drill"]["verdict"], "passed", "{js}");
    let r = w.host.run(&["backup", "--all"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let prom = std::fs::read_to_string(w.host.path("metrics/usdcop_dr.prom")).unwrap();
    assert!(
        prom.lines().any(|l| l == "usdcop_dr_last_drill_success 1"),
        "{prom}"
    );
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/prometheus/usdcop-dr-drill.rules.yml"),
    )
    .unwrap();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("usdcop_dr_") {
            assert!(
                prom.contains(&format!("# TYPE {word} gauge")),
                "{word} not in:\n{prom}"
            );
        }
    }

    // No [wal]: the point-in-time check cannot be required.
    let r = w.host.run(&["drill", "--point-in-time"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("[wal]"), "{}", r.stderr);

    // Only one source: no RTO claimed for the whole.
    let r = w.host.run(&["--json", "drill", "--source", "config"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()["partial"], true);
    assert!(r.json()["rto"].is_null());

    // An RPO of one second: every check passes, the objective is missed.
    std::thread::sleep(Duration::from_millis(1100));
    w.host.write_config("1s", &w.pg, &w.scratch, &w.s3);
    let r = w.host.run(&["--json", "drill"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stderr, r.stdout_str());
    let d = r.json();
    assert_eq!(d["verdict"], "objective_missed");
    for name in ["pg-usdcop", "minio-raw", "config"] {
        let rpo = &source(&d, name)["rpo"];
        assert_eq!(rpo["met"], false, "{rpo}");
        assert_eq!(rpo["objective_s"], 1.0);
        assert!(rpo["age_s"].as_f64().unwrap() > 1.0, "{rpo}");
    }
    assert_no_scratch_left(&w);
    w.host.write_config("24h", &w.pg, &w.scratch, &w.s3);

    // A scratch bucket that is not the drill's: refused, the object left
    // alone, and the drill that could not be done is stored as failed.
    w.s3.bucket_tool(&["put", SCRATCH_BUCKET, "someone-elses"]);
    let r = w.host.run(&["drill"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is not empty"), "{}", r.stderr);
    assert_eq!(
        w.s3.bucket_tool(&["keys", SCRATCH_BUCKET]),
        serde_json::json!(["someone-elses"])
    );
    let l = w.host.run(&["--json", "drills"]).json();
    let newest = l.as_array().unwrap().last().unwrap();
    assert_eq!(newest["verdict"], "check_failed", "{newest}");
    assert!(
        newest["error"].as_str().unwrap().contains("is not empty"),
        "{newest}"
    );
    let st = w.host.run(&["status"]).stdout_str();
    assert!(st.contains("FAILED: drill of source"), "{st}");
    w.s3.bucket_tool(&["delete", SCRATCH_BUCKET, "someone-elses"]);

    // One byte flipped in a pack (the smallest first, one at a time,
    // until a drill fails: the packs are encrypted, so which one holds what
    // is not visible from outside).
    let mut packs: Vec<PathBuf> = common::files_under(&w.host.path("repo/data"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let mut damaged = None;
    for p in &packs {
        let mut bytes = std::fs::read(p).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(p, &bytes).unwrap();
        let r = w.host.run(&["--json", "drill"]);
        if r.code == 3 {
            damaged = Some((p.clone(), r));
            break;
        }
        bytes[at] ^= 0x01;
        std::fs::write(p, &bytes).unwrap();
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let (pack, r) = damaged.expect("a flipped byte in some pack fails the drill");
    let d = r.json();
    assert_eq!(d["verdict"], "check_failed", "{d}");
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();
    let failing: Vec<&serde_json::Value> = d["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            !s["error"].is_null()
                || s["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["ok"] == false)
        })
        .collect();
    assert!(!failing.is_empty(), "{d}");
    let said = serde_json::to_string(&failing).unwrap();
    assert!(
        said.contains(&pack_name[..12]),
        "the damaged pack is named: {said}"
    );
    assert_no_scratch_left(&w);
}

/// Run usdcop-dr `args`, wait (polling every 5 ms, at most 120 s) until
/// `ready` gives a value, SIGTERM it, and check it exits 143.
fn sigterm_when<T>(w: &World, args: &[&str], never: &str, ready: impl Fn() -> Option<T>) -> T {
    let child = w
        .host
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        if let Some(v) = ready() {
            break v;
        }
        assert!(Instant::now() < deadline, "{never}");
        std::thread::sleep(Duration::from_millis(5));
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    got
}

#[test]
fn a_drill_stopped_by_sigterm_leaves_no_scratch_behind() {
    let w = world(20_000);
    // Wait until the drill has made its scratch database, then stop it.
    sigterm_when(&w, &["drill"], "the drill made no scratch database", || {
        (!drill_databases(&w.scratch).is_empty()).then_some(())
    });
    assert_no_scratch_left(&w);
    // The stopped drill stored no record.
    let l = run_cmd(w.host.command(&["--json", "drills"]), None)
        .ok()
        .json();
    assert_eq!(l.as_array().unwrap().len(), 0, "{l}");
}

/// Processes whose command line names `dir` (a server left running on a
/// scratch data directory).
fn processes_under(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn a_drill_recovers_to_its_marker_row_from_the_wal_archive() {
    let w = world_with(300, true);
    // A commit after the dump, archived: the newest restorable point is
    // now the archive's.
    let before: u64 =
        w.pg.psql("postgres", "SELECT archived_count FROM pg_stat_archiver")
            .parse()
            .unwrap();
    w.pg.psql(
        DB,
        "CREATE TABLE after_dump (x int); INSERT INTO after_dump VALUES (1)",
    );
    w.pg.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while w
        .pg
        .psql("postgres", "SELECT archived_count FROM pg_stat_archiver")
        .parse::<u64>()
        .unwrap()
        <= before
    {
        assert!(
            Instant::now() < deadline,
            "the switched segment is not archived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = w.host.path("report.md");
    let r = w.host.run(&[
        "--json",
        "drill",
        "--point-in-time",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "drill: {}\n{}", r.stderr, r.stdout_str());
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("## Point-in-time recovery (pg-usdcop)") && md.contains("RPO: achieved"),
        "{md}"
    );
    let d = r.json();
    assert_eq!(d["verdict"], "passed", "{d}");
    let s = source(&d, "pg-usdcop");
    // The newest restorable point is the archive's, not the dump's.
    assert_eq!(s["rpo"]["basis"], "wal", "{s}");
    assert!(s["rpo"]["met"] == true, "{s}");
    let p = &s["pitr"];
    assert_eq!(p["marker_database"], "postgres", "{p}");
    let t = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(p[k].as_str().unwrap_or_else(|| panic!("{k}: {p}")))
            .unwrap()
    };
    let (written, target, reached) = (t("marker_written"), t("target"), t("recovered_to"));
    assert!(written < target, "{p}");
    assert!(
        reached >= written && reached <= target,
        "recovered to {reached}: not between the marker ({written}) and the target ({target})"
    );
    let achieved = p["achieved_rpo_s"].as_f64().unwrap();
    assert!(achieved > 0.0 && achieved < 60.0, "{p}");
    // archive_timeout = 60 s bounds a commit's wait on a quiet server.
    assert_eq!(p["archive_timeout_s"], 60.0);
    assert!((p["worst_rpo_s"].as_f64().unwrap() - (achieved + 60.0)).abs() < 1e-6);
    assert_eq!(p["rpo_met"], true);
    assert!(p["timeline"].as_u64().unwrap() >= 2, "{p}");
    assert!(p["restore"]["bytes"].as_u64().unwrap() > 10 << 20, "{p}");
    let check = s["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"].as_str().unwrap().starts_with("point-in-time"))
        .unwrap_or_else(|| panic!("no point-in-time check: {s}"));
    assert_eq!(check["ok"], true, "{check}");
    // The RTO counts the longer of the two ways back for the database.
    let pitr_s = p["restore"]["total_s"].as_f64().unwrap() + p["recovery_s"].as_f64().unwrap();
    let dump_s = s["restore"]["total_s"].as_f64().unwrap();
    let others: f64 = ["minio-raw", "config"]
        .iter()
        .map(|n| source(&d, n)["restore"]["total_s"].as_f64().unwrap())
        .sum();
    assert!(
        (d["rto"]["achieved_s"].as_f64().unwrap() - (pitr_s.max(dump_s) + others)).abs() < 1e-6
    );
    // Nothing left: no data directory, no server on it, no marker rows in
    // the source, no scratch database or bucket content.
    assert_no_scratch_left(&w);
    assert!(processes_under(&w.host.path("drill")).is_empty());
    assert_eq!(
        w.pg.psql("postgres", "SELECT count(*) FROM usdcop_dr_drill_marker"),
        "0"
    );
    // The production archive got no new timeline from the recovered copy
    // (archiving is off there).
    let timelines: Vec<String> = std::fs::read_dir(w.host.path("repo/wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 8)
        .collect();
    assert_eq!(timelines, vec!["00000001".to_string()], "{timelines:?}");

    // Stopped by SIGTERM while the recovered copy runs: its server is
    // stopped, its directory removed, the marker rows deleted.
    let running = sigterm_when(
        &w,
        &["drill", "--source", "pg-usdcop"],
        "the drill started no recovery",
        || {
            std::fs::read_dir(w.host.path("drill"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("pg-usdcop-pitr/pgdata/postmaster.pid"))
                .find(|p| p.exists())
        },
    );
    assert!(!running.exists());
    assert_no_scratch_left(&w);
    assert!(processes_under(&w.host.path("drill")).is_empty());
    assert_eq!(
        w.pg.psql("postgres", "SELECT count(*) FROM usdcop_dr_drill_marker"),
        "0"
    );
}
