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
             [[source]]\nname = \"pg-usdcop\"\nkind = \"postgres\"\ndsn = \"host={sock} port={port} dbname={DB}\"\n\n\
             [[source]]\nname = \"minio-raw\"\nkind = \"bucket\"\nprofile = \"minio\"\nbuckets = [\"{BUCKET}\"]\n\n\
             [[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{files:?}]\n",
            repo = self.path("repo").display().to_string(),
            pass = self.path("etc/passphrase").display().to_string(),
            sport = scratch.port(),
            endpoint = s3.endpoint,
            scratch_dir = self.path("drill").display().to_string(),
            sock = pg.dir().display(),
            port = pg.port(),
            files = self.path("srv/trading").display().to_string(),
        );
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
    let pg = PgServer::start_with(&PgOptions {
        peer: true,
        socket_dirs: vec![],
    });
    pg.create_db(DB);
    load_usdcop_like(&pg, DB, bars);
    let scratch = PgServer::start();
    let s3 = S3Server::start(ServerKind::Moto);
    s3.create_bucket(BUCKET);
    s3.create_bucket(SCRATCH_BUCKET);
    s3.bucket_tool(&["create", BUCKET, "30"]);
    let user = pg.os_user_ids().expect("these tests run as root");
    let root = tempfile::Builder::new()
        .prefix("usdcop-dr-drill-")
        .tempdir()
        .unwrap();
    let host = Host { root, user };
    for d in ["etc", "state", "drill", "srv/trading/nginx", ".aws"] {
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

#[test]
fn a_drill_stopped_by_sigterm_leaves_no_scratch_behind() {
    let w = world(20_000);
    let mut c = w.host.command(&["drill"]);
    let child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the drill has made its scratch database, then stop it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while drill_databases(&w.scratch).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the drill made no scratch database"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_scratch_left(&w);
    // The stopped drill stored no record.
    let l = run_cmd(w.host.command(&["--json", "drills"]), None)
        .ok()
        .json();
    assert_eq!(l.as_array().unwrap().len(), 0, "{l}");
}
