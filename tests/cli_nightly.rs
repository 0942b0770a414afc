//! The nightly job from one configuration file (issue 10): `backup --all`
//! over a real PostgreSQL reached over its Unix socket with peer
//! authentication (usdcop-dr runs as the `postgres` OS user, as the cron
//! job does), a bucket on a real S3 server (moto) reached through an AWS
//! profile, and a files source; `status`; the metrics file, parsed by the
//! Python `prometheus_client` package's text parser (installed by
//! scripts/install-test-deps.sh); one source unreachable; a source never
//! backed up or older than the RPO; each kind of bad configuration; a
//! second `backup --all` while one runs.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/servers.rs"]
mod servers;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_cmd, Run};
use postgres::*;
use servers::{S3Server, ServerKind};

const DB: &str = "usdcop_trading";
const BUCKET: &str = "00-raw-usdcop-marketdata";

/// A host laid out as docs/OPERATIONS.md says, under one temporary root:
/// the configuration, the passphrase file, the state directory, the
/// textfile directory, the repository, the files to back up; all owned by
/// the user usdcop-dr runs as.
struct Host {
    root: tempfile::TempDir,
    user: Option<(u32, u32)>,
}

impl Host {
    fn new(user: Option<(u32, u32)>) -> Host {
        let root = tempfile::Builder::new()
            .prefix("usdcop-dr-nightly-")
            .tempdir()
            .unwrap();
        let h = Host { root, user };
        for d in ["etc", "state", "textfile", "srv/trading/nginx", ".aws"] {
            std::fs::create_dir_all(h.path(d)).unwrap();
        }
        std::fs::write(h.path("etc/passphrase"), format!("{}\n", common::PASSWORD)).unwrap();
        set_mode(&h.path("etc/passphrase"), 0o600);
        std::fs::write(h.path("srv/trading/docker-compose.yml"), "services: {}\n").unwrap();
        std::fs::write(h.path("srv/trading/.env"), "TZ=America/Bogota\n").unwrap();
        set_mode(&h.path("srv/trading/.env"), 0o600);
        std::fs::write(
            h.path("srv/trading/nginx/nginx.conf"),
            common::random_bytes(300_000, 7),
        )
        .unwrap();
        h.own_all();
        h
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("etc/usdcop-dr.toml")
    }

    fn metrics_file(&self) -> PathBuf {
        self.path("textfile/usdcop_dr.prom")
    }

    /// Everything under the root belongs to the user usdcop-dr runs as.
    fn own_all(&self) {
        if let Some((uid, gid)) = self.user {
            let mut all = vec![self.root.path().to_owned()];
            let mut i = 0;
            while i < all.len() {
                if let Ok(rd) = std::fs::read_dir(&all[i]) {
                    all.extend(rd.flatten().map(|e| e.path()));
                }
                i += 1;
            }
            for p in all {
                std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
            }
        }
    }

    /// `[repository]`, `[objectives]` and `[metrics]` for this host, then `sources`.
    fn write_config(&self, rpo: &str, sources: &str) {
        let text = format!(
            "[repository]\nurl = {:?}\npassword_file = {:?}\n\n[objectives]\nrpo = {rpo:?}\nrto = \"4h\"\ntimezone = \"America/Bogota\"\n\n[metrics]\ntextfile = {:?}\n\n{sources}",
            self.path("repo").display().to_string(),
            self.path("etc/passphrase").display().to_string(),
            self.metrics_file().display().to_string(),
        );
        std::fs::write(self.config(), text).unwrap();
        self.own_all();
    }

    /// An AWS profile `name` for `server`, as the backup user's ~/.aws has it.
    fn aws_profile(&self, name: &str, endpoint: &str, key: &str, secret: &str) {
        std::fs::write(
            self.path(".aws/config"),
            format!("[profile {name}]\nendpoint_url = {endpoint}\nregion = us-east-1\n"),
        )
        .unwrap();
        std::fs::write(
            self.path(".aws/credentials"),
            format!("[{name}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"),
        )
        .unwrap();
        set_mode(&self.path(".aws/credentials"), 0o600);
        self.own_all();
    }

    fn command(&self, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
        // What cron gives a job, plus where the configuration and the state
        // are: no passphrase variable (the file's password_file), no
        // PostgreSQL or AWS secret anywhere in the environment.
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.root.path())
            .env("USDCOP_DR_CONFIG", self.config())
            .env("USDCOP_DR_STATE_DIR", self.path("state"))
            .envs(env.iter().copied())
            .current_dir(self.root.path())
            .args(args);
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        run_cmd(self.command(&[], args), None)
    }

    /// The repository's files (path → size), to show that nothing was written.
    fn repository_listing(&self) -> Vec<(PathBuf, u64)> {
        let mut out: Vec<_> = common::files_under(&self.path("repo"))
            .into_iter()
            .map(|p| {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p, len)
            })
            .collect();
        out.sort();
        out
    }

    /// The metrics file, parsed by prometheus_client's text parser.
    fn metrics(&self) -> Metrics {
        let script = r#"import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        out.append({'family': fam.name, 'type': fam.type, 'name': s.name, 'labels': s.labels, 'value': s.value})
print(json.dumps(out))
"#;
        let out = Command::new(servers::venv_python())
            .arg("-c")
            .arg(script)
            .arg(self.metrics_file())
            .output()
            .expect("run the moto venv's Python");
        assert!(
            out.status.success(),
            "prometheus_client could not parse {} (scripts/install-test-deps.sh installs it): {}\n{}",
            self.metrics_file().display(),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.metrics_file()).unwrap_or_default()
        );
        Metrics(serde_json::from_slice(&out.stdout).unwrap())
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

struct Metrics(Vec<serde_json::Value>);

impl Metrics {
    /// The value of `name` for `source` (`None`: no such sample).
    fn get(&self, name: &str, source: Option<&str>) -> Option<f64> {
        self.0
            .iter()
            .find(|s| s["name"] == name && source.is_none_or(|src| s["labels"]["source"] == src))
            .map(|s| s["value"].as_f64().unwrap())
    }
    fn of(&self, name: &str, source: &str) -> f64 {
        self.get(name, Some(source))
            .unwrap_or_else(|| panic!("no {name}{{source={source:?}}} in {:?}", self.0))
    }
    fn all_gauges(&self) -> bool {
        self.0.iter().all(|s| s["type"] == "gauge")
    }
}

fn json_time(v: &serde_json::Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    t.timestamp_millis() as f64 / 1000.0
}

fn source<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {report}"))
}

/// The three sources of the trading system, on this host's servers.
fn three_sources(host: &Host, pg: &PgServer) -> String {
    format!(
        "[[source]]\nname = \"pg-usdcop\"\nkind = \"postgres\"\ndsn = \"host={} port={} dbname={DB}\"\nglobals = true\n\n\
         [[source]]\nname = \"minio-raw\"\nkind = \"bucket\"\nprofile = \"minio\"\nbuckets = [\"{BUCKET}\"]\n\n\
         [[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}, {:?}, {:?}]\n",
        pg.dir().display(),
        pg.port(),
        host.path("srv/trading/docker-compose.yml").display().to_string(),
        host.path("srv/trading/.env").display().to_string(),
        host.path("srv/trading/nginx").display().to_string(),
    )
}

#[test]
fn backup_all_backs_up_a_database_a_bucket_and_files_then_survives_a_failing_source() {
    let pg = PgServer::start_with(&PgOptions {
        peer: true,
        socket_dirs: vec![],
    });
    pg.create_db(DB);
    load_usdcop_like(&pg, DB, 300);
    let s3 = S3Server::start(ServerKind::Moto);
    s3.create_bucket(BUCKET);
    let created = s3.bucket_tool(&["create", BUCKET, "40"]);
    let user = pg
        .os_user_ids()
        .expect("these tests run as root, to act as the `postgres` OS user");
    let host = Host::new(Some(user));
    host.aws_profile("minio", &s3.endpoint, &s3.access_key, &s3.secret_key);
    host.write_config("24h", &three_sources(&host, &pg));

    host.run(&["config", "check"]).ok();
    host.run(&["init", "--kdf-memory-kib", "1024"]).ok();

    // ---- all three sources -------------------------------------------------
    let r = host.run(&["--json", "backup", "--all"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout_str());
    let all = r.json();
    assert_eq!(all["ok"], true, "{all}");
    assert_eq!(all["failed"].as_array().unwrap().len(), 0, "{all}");
    let pg_run = source(&all, "pg-usdcop");
    assert_eq!(pg_run["ok"], true, "{all}");
    assert_eq!(
        pg_run["backup"]["postgres"]["tables"],
        USDCOP_TABLES.len() as u64,
        "{all}"
    );
    let bucket_run = source(&all, "minio-raw");
    assert_eq!(bucket_run["ok"], true, "{all}");
    assert_eq!(bucket_run["backup"]["files"], 40, "{all}");
    assert_eq!(bucket_run["backup"]["bytes_in"], created["bytes"], "{all}");
    let files_run = source(&all, "config");
    assert_eq!(files_run["ok"], true, "{all}");
    assert_eq!(files_run["backup"]["files"], 3, "{all}");
    // The files came back byte for byte.
    let restored = host.path("restored");
    std::fs::create_dir_all(&restored).unwrap();
    host.own_all();
    host.run(&[
        "restore",
        "--source",
        "config",
        "--target",
        restored.to_str().unwrap(),
    ])
    .ok();
    let nginx = host.path("srv/trading/nginx/nginx.conf");
    let back = common::files_under(&restored)
        .into_iter()
        .find(|p| p.ends_with("nginx/nginx.conf"))
        .expect("nginx.conf restored");
    assert_eq!(std::fs::read(back).unwrap(), std::fs::read(&nginx).unwrap());

    // status: all three within the RPO.
    let r = host.run(&["--json", "status"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout_str());
    let st = r.json();
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["repository"]["reachable"], true, "{st}");
    assert_eq!(st["sources"].as_array().unwrap().len(), 3, "{st}");
    for name in ["pg-usdcop", "minio-raw", "config"] {
        let s = source(&st, name);
        assert_eq!(s["verdict"], "within_rpo", "{st}");
        assert_eq!(s["snapshots"], 1, "{st}");
        assert_eq!(s["last_run"]["success"], true, "{st}");
        assert_eq!(
            s["newest_snapshot"]["id"],
            source(&all, name)["backup"]["snapshot_id"],
            "{st}"
        );
        assert!(
            s["newest_snapshot"]["age_s"].as_f64().unwrap() < 3600.0,
            "{st}"
        );
    }
    let text = host.run(&["status"]).ok().stdout_str();
    assert!(text.contains("all 3 source(s) within the RPO"), "{text}");

    // The metrics: what the run did, per source.
    let m = host.metrics();
    assert!(m.all_gauges());
    for name in ["pg-usdcop", "minio-raw", "config"] {
        let run = source(&all, name);
        assert_eq!(m.of("usdcop_dr_last_run_success", name), 1.0);
        assert_eq!(
            m.of("usdcop_dr_last_success_timestamp_seconds", name),
            json_time(&run["backup"]["time"]),
            "{name}"
        );
        assert_eq!(
            m.of("usdcop_dr_last_read_bytes", name),
            run["backup"]["bytes_in"].as_f64().unwrap()
        );
        assert_eq!(
            m.of("usdcop_dr_last_stored_new_bytes", name),
            run["backup"]["bytes_stored_new"].as_f64().unwrap()
        );
        assert!(m.of("usdcop_dr_last_duration_seconds", name) > 0.0);
        assert_eq!(m.of("usdcop_dr_snapshots", name), 1.0);
        assert_eq!(m.of("usdcop_dr_rpo_seconds", name), 86400.0);
    }
    assert_eq!(m.get("usdcop_dr_repository_up", None), Some(1.0));
    let stored: u64 = common::files_under(&host.path("repo"))
        .iter()
        .filter(|p| {
            let rel = p.strip_prefix(host.path("repo")).unwrap();
            ["data", "index", "snapshots"]
                .iter()
                .any(|d| rel.starts_with(d))
        })
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(
        m.get("usdcop_dr_repository_size_bytes", None),
        Some(stored as f64)
    );

    // ---- the bucket store goes away ------------------------------------------
    let first_bucket_time = json_time(&bucket_run["backup"]["time"]);
    drop(s3);
    let r = host.run(&["--json", "backup", "--all"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stderr, r.stdout_str());
    let all2 = r.json();
    assert_eq!(all2["ok"], false, "{all2}");
    assert_eq!(all2["failed"], serde_json::json!(["minio-raw"]), "{all2}");
    assert_eq!(source(&all2, "pg-usdcop")["ok"], true, "{all2}");
    assert_eq!(source(&all2, "config")["ok"], true, "{all2}");
    let failed = source(&all2, "minio-raw");
    assert!(failed["backup"].is_null(), "{all2}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "the error names the store: {all2}"
    );
    assert!(
        r.stderr.contains("1 of 3 source(s) failed: minio-raw"),
        "{}",
        r.stderr
    );
    let m = host.metrics();
    assert_eq!(m.of("usdcop_dr_last_run_success", "minio-raw"), 0.0);
    assert_eq!(m.of("usdcop_dr_last_run_success", "pg-usdcop"), 1.0);
    assert_eq!(m.of("usdcop_dr_last_run_success", "config"), 1.0);
    // Its last success is the first run's snapshot, still.
    assert_eq!(
        m.of("usdcop_dr_last_success_timestamp_seconds", "minio-raw"),
        first_bucket_time
    );
    assert_eq!(m.of("usdcop_dr_snapshots", "minio-raw"), 1.0);
    assert_eq!(m.of("usdcop_dr_snapshots", "config"), 2.0);
    // status: within the RPO still (exit 0), the failed last run shown.
    let r = host.run(&["--json", "status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let st = r.json();
    let b = source(&st, "minio-raw");
    assert_eq!(b["verdict"], "within_rpo", "{st}");
    assert_eq!(b["last_run"]["success"], false, "{st}");
    assert!(
        b["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{st}"
    );
    let text = host.run(&["status"]).ok().stdout_str();
    assert!(
        text.lines()
            .any(|l| l.starts_with("minio-raw") && l.contains("FAILED")),
        "{text}"
    );

    // ---- a source that never succeeded ------------------------------------------
    host.write_config(
        "24h",
        &format!(
            "{}\n[[source]]\nname = \"nas\"\nkind = \"files\"\npaths = [\"/nonexistent/nas\"]\n",
            three_sources(&host, &pg)
        ),
    );
    let r = host.run(&["backup", "--source", "nas"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stderr, r.stdout_str());
    assert!(
        r.stdout_str()
            .lines()
            .any(|l| l.starts_with("FAILED") && l.contains("nas")),
        "one summary line: {}",
        r.stdout_str()
    );
    let r = host.run(&["--json", "status"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stderr, r.stdout_str());
    let st = r.json();
    assert_eq!(st["ok"], false, "{st}");
    let nas = source(&st, "nas");
    assert_eq!(nas["verdict"], "never", "{st}");
    assert_eq!(nas["last_run"]["success"], false, "{st}");
    assert_eq!(source(&st, "pg-usdcop")["verdict"], "within_rpo", "{st}");
    // The metrics cover every configured source, also those not run now.
    let m = host.metrics();
    assert_eq!(m.of("usdcop_dr_last_run_success", "nas"), 0.0);
    assert_eq!(m.of("usdcop_dr_last_success_timestamp_seconds", "nas"), 0.0);
    assert_eq!(m.of("usdcop_dr_last_run_success", "minio-raw"), 0.0);
    assert_eq!(m.of("usdcop_dr_last_run_success", "pg-usdcop"), 1.0);
}

/// A source whose newest snapshot is older than the RPO: `status` exits 4
/// until a new backup is made.
#[test]
fn status_exits_4_for_a_source_older_than_the_rpo() {
    let host = Host::new(None);
    let etc = host.path("srv/trading");
    host.write_config(
        "24h",
        &format!(
            "[[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}]\n",
            etc.display().to_string()
        ),
    );
    host.run(&["init", "--kdf-memory-kib", "1024"]).ok();
    let old = (chrono::Utc::now() - chrono::Duration::hours(30)).to_rfc3339();
    host.run(&[
        "backup",
        "files",
        "--source",
        "config",
        "--time",
        &old,
        etc.to_str().unwrap(),
    ])
    .ok();
    let r = host.run(&["--json", "status"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stderr, r.stdout_str());
    let st = r.json();
    let s = source(&st, "config");
    assert_eq!(s["verdict"], "rpo_missed", "{st}");
    assert!(
        s["newest_snapshot"]["age_s"].as_f64().unwrap() > 29.0 * 3600.0,
        "{st}"
    );
    assert!(s["last_run"].is_null(), "made by hand, not recorded: {st}");
    let text = host.run(&["status"]).stdout_str();
    assert!(
        text.contains("outside the RPO or never backed up: config"),
        "{text}"
    );

    host.run(&["backup", "--all"]).ok();
    let st = host.run(&["--json", "status"]).ok().json();
    assert_eq!(source(&st, "config")["verdict"], "within_rpo", "{st}");
    assert_eq!(source(&st, "config")["snapshots"], 2, "{st}");
}

/// Each kind of bad configuration: the error names file, line and key, and
/// nothing is written: not to the repository, not the metrics, not the state.
#[test]
fn a_bad_configuration_names_file_line_and_key_and_writes_nothing() {
    let host = Host::new(None);
    let good = format!(
        "[[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}]\n",
        host.path("srv/trading").display().to_string()
    );
    host.write_config("24h", &good);
    host.run(&["init", "--kdf-memory-kib", "1024"]).ok();
    let before = host.repository_listing();
    let cases: [(&str, String, usize, &str, &str); 5] = [
        (
            "unknown key",
            format!("{good}compress = true\n"),
            17,
            "source[0].compress",
            "unknown field `compress`",
        ),
        (
            "bad type",
            format!("{good}\n[[source]]\nname = \"pg\"\nkind = \"postgres\"\ndsn = \"dbname=x\"\nglobals = \"yes\"\n"),
            22,
            "source[1].globals",
            "invalid type",
        ),
        (
            "duplicate name",
            format!("{good}\n{good}"),
            19,
            "source[1].name",
            "duplicate source name \"config\" (first at line 14)",
        ),
        (
            "inline password",
            format!("{good}\n[[source]]\nname = \"pg\"\nkind = \"postgres\"\ndsn = \"dbname=x\"\npassword = \"hunter2\"\n"),
            22,
            "source[1].password",
            "a secret written inline",
        ),
        (
            "password in the DSN",
            format!("{good}\n[[source]]\nname = \"pg\"\nkind = \"postgres\"\ndsn = \"dbname=x password=hunter2\"\n"),
            21,
            "source[1].dsn",
            "the DSN carries a password",
        ),
    ];
    for (what, sources, line, key, says) in cases {
        host.write_config("24h", &sources);
        let file = host.config().display().to_string();
        let want = format!("usdcop-dr: error: {file}:{line}: key `{key}`: ");
        for args in [
            &["backup", "--all"][..],
            &["status"][..],
            &["config", "check"][..],
            &["snapshots"][..],
        ] {
            let r = host.run(args);
            assert_eq!(r.code, 2, "{what}: {args:?}: {}", r.stderr);
            assert!(
                r.stderr.contains(&want),
                "{what}: {args:?}: want {want:?} in {}",
                r.stderr
            );
            assert!(r.stderr.contains(says), "{what}: {args:?}: {}", r.stderr);
            assert!(r.stdout.is_empty(), "{what}: {}", r.stdout_str());
            assert!(
                !r.stderr.contains("hunter2"),
                "{what}: the secret is not repeated: {}",
                r.stderr
            );
        }
        assert_eq!(
            host.repository_listing(),
            before,
            "{what}: the repository is untouched"
        );
        assert!(!host.metrics_file().exists(), "{what}: no metrics");
        assert_eq!(
            std::fs::read_dir(host.path("state")).unwrap().count(),
            0,
            "{what}: no state"
        );
    }
    // The secrets' errors say where the secret goes.
    std::fs::write(
        host.config(),
        "[repository]\nurl = \"/r\"\npassphrase = \"p\"\n",
    )
    .unwrap();
    let r = host.run(&["config", "check"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("hint: ") && r.stderr.contains("password_file"),
        "{}",
        r.stderr
    );
}

/// The shipped example checks (CI runs this).
#[test]
fn config_check_validates_the_shipped_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("usdcop-dr.example.toml");
    let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
    c.env_remove("USDCOP_DR_CONFIG")
        .args(["--json", "config", "check"])
        .arg(&example);
    let r = run_cmd(c, None).ok();
    let v = r.json();
    assert_eq!(v["ok"], true, "{v}");
    let names: Vec<_> = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["pg-usdcop", "minio-raw", "config"]);
    assert_eq!(v["timezone"], "America/Bogota");
    assert_eq!(v["rpo_s"], 86400.0);
}

/// `config check` also checks the policy folder next to the file when it
/// exists: the shipped policies cover the example's three sources; a bad
/// policy fails the check with its file, line and key.
#[test]
fn config_check_checks_the_policy_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("usdcop-dr.toml");
    std::fs::copy(root.join("usdcop-dr.example.toml"), &config).unwrap();
    let check = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
        c.env_remove("USDCOP_DR_CONFIG")
            .args(["--json", "config", "check"])
            .arg(&config);
        run_cmd(c, None)
    };
    // No folder yet: still ok, and it says so.
    let v = check().ok().json();
    assert_eq!(v["retention"]["policies_found"], false, "{v}");
    assert_eq!(v["retention"]["grace_s"], 23.0 * 3600.0, "{v}");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for f in ["database.toml", "buckets.toml", "files.toml", "README.md"] {
        std::fs::copy(root.join("policies").join(f), policies.join(f)).unwrap();
    }
    let v = check().ok().json();
    assert_eq!(v["retention"]["policies_found"], true, "{v}");
    assert_eq!(v["retention"]["policies"], 4, "{v}");
    assert_eq!(v["retention"]["sources_covered"], 3, "{v}");
    // Human output says how many.
    let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
    c.env_remove("USDCOP_DR_CONFIG")
        .args(["config", "check"])
        .arg(&config);
    let out = run_cmd(c, None).ok().stdout_str();
    assert!(out.contains("retention: 4 policies in"), "{out}");
    assert!(out.contains("covering 3 of 3 source(s)"), "{out}");
    // A source claimed twice: exit 2, both places named.
    std::fs::write(
        policies.join("extra.toml"),
        "[[policy]]\nsources = [\"config\"]\nkeep_last = 5\n",
    )
    .unwrap();
    let r = check();
    assert_eq!(r.code, 2, "{}", r.stderr);
    // Files are read in name order: extra.toml first, files.toml second.
    assert!(
        r.stderr.contains(
            "files.toml:8: key `policy[0].sources`: source \"config\" (files) is claimed by two policies"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("extra.toml:2"), "{}", r.stderr);
    // A negative count: its line and key.
    std::fs::write(
        policies.join("extra.toml"),
        "[[policy]]\nsources = [\"nothing\"]\n\nkeep_daily = -1\n",
    )
    .unwrap();
    let r = check();
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("extra.toml:4: key `policy[0].keep_daily`: negative count -1"),
        "{}",
        r.stderr
    );
}

/// A second `backup --all` of the same repository while one runs: it says
/// so and exits 75, doing nothing; once the first is gone, runs start again.
#[test]
fn a_second_backup_all_does_not_start_while_one_runs() {
    let host = Host::new(None);
    // A bucket store that accepts connections and never answers: the first
    // run waits in its first source, holding the lock.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    host.aws_profile("stuck", &endpoint, "AKIATEST", "not-a-real-secret");
    host.write_config(
        "24h",
        &format!(
            "[[source]]\nname = \"stuck\"\nkind = \"bucket\"\nprofile = \"stuck\"\nbuckets = [\"b\"]\n\n\
             [[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}]\n",
            host.path("srv/trading").display().to_string()
        ),
    );
    host.run(&["init", "--kdf-memory-kib", "1024"]).ok();
    let mut first = host
        .command(&[], &["backup", "--all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let _held = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the first run never reached its source"
                );
                assert!(
                    first.try_wait().unwrap().is_none(),
                    "the first run ended early"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let before = host.repository_listing();
    let r = host.run(&["--json", "backup", "--all"]);
    assert_eq!(r.code, 75, "{}\n{}", r.stderr, r.stdout_str());
    assert!(
        r.stderr.contains("another backup --all of ")
            && r.stderr.contains("not starting a second one"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("pid {}", first.id())),
        "names the running one: {}",
        r.stderr
    );
    assert_eq!(r.json()["error"]["exit_code"], 75);
    assert_eq!(
        host.repository_listing(),
        before,
        "the second run wrote nothing"
    );
    // `backup --source` of the same repository is a run too.
    let r = host.run(&["backup", "--source", "config"]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    // status does not wait for it.
    let r = host.run(&["--json", "status"]);
    assert_eq!(r.code, 4, "nothing backed up yet: {}", r.stderr);

    // The first run is killed: its lock goes with it.
    first.kill().unwrap();
    first.wait().unwrap();
    drop(listener);
    let r = host.run(&["backup", "--source", "config"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// The ```sh blocks of a Markdown text, in order.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match &mut cur {
            None if line.trim() == "```sh" => cur = Some(String::new()),
            Some(b) if line.trim() == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// The uid and gid of an OS user.
fn os_user(name: &str) -> (u32, u32) {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    assert!(!pw.is_null(), "no OS user {name}");
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

/// docs/OPERATIONS.md, every `sh` block in order, as root on a scratch
/// root (the guide's last section says how).
#[test]
fn operations_guide_runs_as_written() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(manifest.join("docs/OPERATIONS.md")).unwrap();
    let blocks = sh_blocks(&guide);
    assert!(blocks.len() >= 7, "{blocks:?}");
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the guide's commands run as root"
    );
    let (pg_uid, pg_gid) = os_user("postgres");

    let tmp = tempfile::Builder::new()
        .prefix("usdcop-dr-ops-")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    set_mode(root, 0o755);
    let r = |p: &str| root.join(p.trim_start_matches('/'));
    // What a Debian host already has, and the trading system's files.
    for d in [
        "usr/local/bin",
        "etc/systemd/system",
        "etc/cron.d",
        "var/lib",
        "srv/trading/nginx",
        "work/target/release",
        "shims",
    ] {
        std::fs::create_dir_all(r(d)).unwrap();
        set_mode(&r(d), 0o755);
    }
    std::fs::write(r("srv/trading/docker-compose.yml"), "services: {}\n").unwrap();
    std::fs::write(r("srv/trading/.env"), "MINIO_ROOT_PASSWORD=x\n").unwrap();
    set_mode(&r("srv/trading/.env"), 0o600);
    std::fs::write(
        r("srv/trading/nginx/nginx.conf"),
        common::random_bytes(100_000, 3),
    )
    .unwrap();
    // The checkout the guide's commands start from.
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_usdcop-dr"),
        r("work/target/release/usdcop-dr"),
    )
    .unwrap();
    for f in ["usdcop-dr.example.toml", "contrib", "policies"] {
        std::os::unix::fs::symlink(manifest.join(f), r("work").join(f)).unwrap();
    }
    // Stand-ins for what needs a running systemd.
    std::fs::write(
        r("shims/systemctl"),
        r#"#!/bin/bash
# Test stand-in: checks the units exist (and their timers' calendars).
set -eu
cmd=$1; shift
[ "${1:-}" = --now ] && shift
case $cmd in
  daemon-reload) ;;
  enable|start|list-timers|status)
    for u in "$@"; do
      f=$ROOT/etc/systemd/system/$u
      [ -f "$f" ] || { echo "systemctl: no unit $u" >&2; exit 1; }
      if [ "${u##*.}" = timer ]; then
        grep -q '^Persistent=true$' "$f" || { echo "$u: no Persistent=true" >&2; exit 1; }
        cal=$(sed -n 's/^OnCalendar=//p' "$f")
        systemd-analyze calendar "$cal" >/dev/null
        s=${u%.timer}.service
        [ -f "$ROOT/etc/systemd/system/$s" ] || { echo "systemctl: no unit $s" >&2; exit 1; }
      fi
      echo "$cmd $u: ok (stand-in)"
    done ;;
  *) echo "systemctl stand-in: $cmd not known" >&2; exit 1 ;;
esac
"#,
    )
    .unwrap();
    std::fs::write(
        r("shims/journalctl"),
        "#!/bin/sh\necho \"journalctl $* (stand-in)\"\n",
    )
    .unwrap();
    for s in ["shims/systemctl", "shims/journalctl"] {
        set_mode(&r(s), 0o755);
    }

    let site_config = format!(
        "[repository]\nurl = {:?}\npassword_file = {:?}\n\n[objectives]\nrpo = \"24h\"\nrto = \"4h\"\ntimezone = \"America/Bogota\"\n\n\
         [metrics]\ntextfile = {:?}\n\n[[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}, {:?}, {:?}]\n",
        r("srv/usdcop-dr-repo").display().to_string(),
        r("etc/usdcop-dr/passphrase").display().to_string(),
        r("var/lib/node_exporter/textfile/usdcop_dr.prom").display().to_string(),
        r("srv/trading/docker-compose.yml").display().to_string(),
        r("srv/trading/.env").display().to_string(),
        r("srv/trading/nginx/nginx.conf").display().to_string(),
    );
    let path = format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        r("usr/local/bin").display(),
        r("shims").display()
    );
    for (i, block) in blocks.iter().enumerate() {
        let mut script = block.clone();
        for prefix in ["/etc/", "/var/lib/", "/usr/local/", "/srv/"] {
            script = script.replace(prefix, &format!("{}{prefix}", root.display()));
        }
        let mut c = Command::new("bash");
        c.env_clear()
            .env("PATH", &path)
            .env("HOME", "/root")
            .env("ROOT", root)
            .env("USDCOP_DR_CONFIG", r("etc/usdcop-dr/usdcop-dr.toml"))
            .env("USDCOP_DR_STATE_DIR", r("var/lib/usdcop-dr"))
            .current_dir(r("work"))
            .args(["-euo", "pipefail", "-c", &script]);
        let out = run_cmd(c, None);
        assert_eq!(
            out.code, 0,
            "block {} of docs/OPERATIONS.md failed:\n{block}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            i + 1,
            out.stdout_str(),
            out.stderr
        );
        eprintln!(
            "block {}:\n{block}{}{}",
            i + 1,
            out.stdout_str(),
            out.stderr
        );
        if block.contains("usdcop-dr.example.toml") {
            // The human step: the example, edited for this site.
            std::fs::write(r("etc/usdcop-dr/usdcop-dr.toml"), &site_config).unwrap();
            std::fs::create_dir_all(r("srv/usdcop-dr-repo")).unwrap();
            std::os::unix::fs::chown(r("srv/usdcop-dr-repo"), Some(pg_uid), Some(pg_gid)).unwrap();
        }
    }

    // What the guide promised: the files' snapshots (the first run and the
    // re-run of the failed source), the metrics, a clean status.
    let passphrase = r("etc/usdcop-dr/passphrase");
    assert_eq!(common::mode(&passphrase), 0o640);
    assert_eq!(common::mode(&r("srv/trading/.env")), 0o640);
    let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
    c.env_clear()
        .env("USDCOP_DR_CONFIG", r("etc/usdcop-dr/usdcop-dr.toml"))
        .env("USDCOP_DR_STATE_DIR", r("var/lib/usdcop-dr"))
        .args(["--json", "status"]);
    let st = run_cmd(c, None).ok().json();
    let s = source(&st, "config");
    assert_eq!(s["verdict"], "within_rpo", "{st}");
    assert_eq!(s["snapshots"], 2, "{st}");
    assert_eq!(s["last_run"]["success"], true, "{st}");
    let prom = std::fs::read_to_string(r("var/lib/node_exporter/textfile/usdcop_dr.prom")).unwrap();
    assert!(
        prom.lines()
            .any(|l| l == "usdcop_dr_last_run_success{kind=\"files\",source=\"config\"} 1"),
        "{prom}"
    );
    // Every metric the alert rules use is one the run writes.
    let rules =
        std::fs::read_to_string(manifest.join("contrib/prometheus/usdcop-dr.rules.yml")).unwrap();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("usdcop_dr_") {
            assert!(
                prom.contains(&format!("# TYPE {word} gauge")),
                "the rules use {word}, which the metrics do not have:\n{prom}"
            );
        }
    }
}

/// Flags and their variables win over the file's `[repository]`; the file
/// fills in what they leave out.
#[test]
fn flags_win_over_the_configuration_file() {
    let host = Host::new(None);
    host.write_config(
        "24h",
        &format!(
            "[[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}]\n",
            host.path("srv/trading").display().to_string()
        ),
    );
    host.run(&["init", "--kdf-memory-kib", "1024"]).ok();
    host.run(&["backup", "--all"]).ok();
    // Another repository named by --repo: the file's is not touched.
    let other = host.path("other-repo");
    let other_s = other.to_str().unwrap();
    host.run(&["--repo", other_s, "init", "--kdf-memory-kib", "1024"])
        .ok();
    let rows = host
        .run(&["--repo", other_s, "--json", "snapshots"])
        .ok()
        .json();
    assert_eq!(rows.as_array().unwrap().len(), 0, "{rows}");
    let rows = host.run(&["--json", "snapshots"]).ok().json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    // USDCOP_DR_PASSWORD wins over password_file.
    let r = run_cmd(
        host.command(&[("USDCOP_DR_PASSWORD", "wrong")], &["snapshots"]),
        None,
    );
    assert_eq!(
        r.code, 2,
        "a wrong passphrase from the variable: {}",
        r.stderr
    );
    // No --config, no variable, no /etc file: the commands that need one say so.
    let mut c = host.command(&[], &["status"]);
    c.env_remove("USDCOP_DR_CONFIG");
    let r = run_cmd(c, None);
    if !Path::new("/etc/usdcop-dr/usdcop-dr.toml").exists() {
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.contains("status needs a configuration file"),
            "{}",
            r.stderr
        );
    }
    // An unknown --source is refused before anything runs.
    let r = host.run(&["backup", "--source", "nosuch"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("configured sources: config"),
        "{}",
        r.stderr
    );
}

/// The repository cannot be opened: no source runs, every one is reported
/// failed, the metrics are still written (repository down, each source's
/// last success kept from the recorded runs), and `status` says so.
#[test]
fn an_unreachable_repository_fails_every_source_and_keeps_the_last_success() {
    let host = Host::new(None);
    host.write_config(
        "24h",
        &format!(
            "[[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}]\n",
            host.path("srv/trading").display().to_string()
        ),
    );
    host.run(&["init", "--kdf-memory-kib", "1024"]).ok();
    let first = host.run(&["--json", "backup", "--all"]).ok().json();
    let snapshot_time = json_time(&source(&first, "config")["backup"]["time"]);
    std::fs::rename(host.path("repo"), host.path("repo.away")).unwrap();

    let r = host.run(&["--json", "backup", "--all"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let all = r.json();
    assert_eq!(all["repository"]["reachable"], false, "{all}");
    assert_eq!(all["failed"], serde_json::json!(["config"]), "{all}");
    assert!(
        source(&all, "config")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not started: the repository could not be opened"),
        "{all}"
    );
    let m = host.metrics();
    assert_eq!(m.get("usdcop_dr_repository_up", None), Some(0.0));
    assert_eq!(m.get("usdcop_dr_repository_size_bytes", None), None);
    assert_eq!(m.of("usdcop_dr_last_run_success", "config"), 0.0);
    assert_eq!(
        m.of("usdcop_dr_last_success_timestamp_seconds", "config"),
        snapshot_time
    );
    let r = host.run(&["--json", "status"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    let st = r.json();
    assert_eq!(st["repository"]["reachable"], false, "{st}");
    assert_eq!(source(&st, "config")["verdict"], "unknown", "{st}");
    assert_eq!(source(&st, "config")["last_run"]["success"], false, "{st}");

    std::fs::rename(host.path("repo.away"), host.path("repo")).unwrap();
    let r = host.run(&["--json", "status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// An offsite repository on S3, reached through the file's `[repository]
/// endpoint` and `profile` (the profile holds only the keys).
#[test]
fn the_repository_on_s3_comes_from_the_file() {
    let s3 = S3Server::start(ServerKind::Moto);
    s3.create_bucket("usdcop-dr-offsite");
    let host = Host::new(None);
    std::fs::write(
        host.path(".aws/credentials"),
        format!(
            "[offsite]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    std::fs::write(
        host.path(".aws/config"),
        "[profile offsite]\nregion = us-east-1\n",
    )
    .unwrap();
    let text = format!(
        "[repository]\nurl = \"s3://usdcop-dr-offsite/prod\"\nendpoint = {:?}\nprofile = \"offsite\"\npassword_file = {:?}\n\n\
         [metrics]\ntextfile = {:?}\n\n[[source]]\nname = \"config\"\nkind = \"files\"\npaths = [{:?}]\n",
        s3.endpoint,
        host.path("etc/passphrase").display().to_string(),
        host.metrics_file().display().to_string(),
        host.path("srv/trading").display().to_string(),
    );
    std::fs::write(host.config(), text).unwrap();
    host.run(&["init", "--kdf-memory-kib", "1024"]).ok();
    let all = host.run(&["--json", "backup", "--all"]).ok().json();
    assert_eq!(
        all["repository"]["location"],
        format!("s3://usdcop-dr-offsite/prod/ at {}", s3.endpoint),
        "the file's endpoint: {all}"
    );
    assert!(
        source(&all, "config")["backup"]["requests"]["put"]
            .as_u64()
            .unwrap()
            > 0,
        "{all}"
    );
    let st = host.run(&["--json", "status"]).ok().json();
    assert_eq!(source(&st, "config")["verdict"], "within_rpo", "{st}");
    assert!(st["repository"]["size_bytes"].as_u64().unwrap() > 0, "{st}");
    let objects = s3.bucket_tool(&["keys", "usdcop-dr-offsite"]);
    assert!(objects.to_string().contains("prod/snapshots/"), "{objects}");
    assert_eq!(
        host.metrics().get("usdcop_dr_repository_up", None),
        Some(1.0)
    );
}
