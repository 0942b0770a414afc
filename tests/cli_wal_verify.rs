//! `wal-verify` and the WAL record reader against a real cluster archiving
//! through `usdcop-dr wal-push`:
//!
//! - every archived segment, read by `format::wal_records::scan`, holds the
//!   same commits (count and last time, to the microsecond) as PostgreSQL's
//!   own `pg_waldump` prints for it;
//! - `wal-verify` passes and its newest recoverable time is the last
//!   commit's time (`pg_last_committed_xact()`, track_commit_timestamp);
//!   `--read-data` reads every segment; a flipped byte is named as damage;
//! - one segment deleted in the middle: exit 3, that exact name, and the
//!   two ranges around it; the metrics textfile says so too;
//! - a copy of the cluster recovered from the archive (pg_basebackup,
//!   restore_command = wal-fetch) ends recovery on timeline 2, archives
//!   00000002.history and its segments: the ranges follow the switch.

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{run_cmd, run_cmd_timeout, Run};
use postgres::*;
use usdcop_dr::format::wal::{segment_number, Lsn};
use usdcop_dr::format::wal_records;

const BIN: &str = env!("CARGO_BIN_EXE_usdcop-dr");
const MB16: u32 = 16 << 20;

/// The uid/gid PostgreSQL runs as when the tests run as root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid and getpwnam have no memory-safety preconditions;
    // the record is read before any other call could reuse it.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(!pw.is_null(), "running as root needs a `postgres` OS user");
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// A repository, its passphrase file, configuration (with a metrics
/// textfile) and state directory, all owned by the server's OS user.
struct Archive {
    home: tempfile::TempDir,
    owner: Option<(u32, u32)>,
}

impl Archive {
    fn new() -> Archive {
        let owner = server_user();
        let home = tempfile::Builder::new()
            .prefix("usdcop-dr-walverify-")
            .tempdir()
            .unwrap();
        let a = Archive { home, owner };
        let pass = a.path("passphrase");
        std::fs::write(&pass, format!("{}\n", common::PASSWORD)).unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(a.path("state")).unwrap();
        std::fs::create_dir(a.path("metrics")).unwrap();
        std::fs::write(
            a.config(),
            format!(
                "[repository]\nurl = \"{repo}\"\npassword_file = \"{pass}\"\n\n\
                 [metrics]\ntextfile = \"{metrics}\"\n\n\
                 [[source]]\nname = \"trading\"\nkind = \"postgres\"\ndsn = \"dbname=postgres\"\n\n\
                 [wal]\nsource = \"trading\"\n",
                repo = a.path("repo").display(),
                pass = pass.display(),
                metrics = a.path("metrics/usdcop_dr.prom").display(),
            ),
        )
        .unwrap();
        for p in [
            a.home.path().to_owned(),
            pass,
            a.path("state"),
            a.path("metrics"),
            a.config(),
        ] {
            a.give(&p);
        }
        // A cheap KDF: these tests are not about the unlock cost.
        a.run(&["init", "--kdf-memory-kib", "8192"]).ok();
        a
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("usdcop-dr.toml")
    }

    fn give(&self, p: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
    }

    fn command(&self, sub: &str) -> String {
        format!(
            "USDCOP_DR_STATE_DIR={} {BIN} --config {} {sub}",
            self.path("state").display(),
            self.config().display()
        )
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("USDCOP_DR_STATE_DIR", self.path("state"))
            .env("USDCOP_DR_CACHE_DIR", self.path("cache"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .current_dir(self.home.path());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        run_cmd(self.cmd(args), None)
    }

    /// Archived segment objects of `timeline`: (file name, object path).
    fn segments(&self, timeline: &str) -> Vec<(String, PathBuf)> {
        let dir = self.path("repo").join("wal").join(timeline);
        let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().path())
                    .filter_map(|p| {
                        let n = p.file_name()?.to_string_lossy().into_owned();
                        let (name, _) = n.rsplit_once('-')?;
                        (name.len() == 24).then(|| (name.to_owned(), p.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `wal-fetch NAME` into `out/`; the bytes.
    fn fetch(&self, name: &str) -> Vec<u8> {
        let dir = self.path("out");
        let _ = std::fs::create_dir(&dir);
        self.give(&dir);
        let dest = dir.join(name);
        let _ = std::fs::remove_file(&dest);
        self.run(&["wal-fetch", name, dest.to_str().unwrap()]).ok();
        std::fs::read(&dest).unwrap()
    }

    fn verify(&self, extra: &[&str]) -> Run {
        let mut args = vec!["--json", "wal-verify"];
        args.extend_from_slice(extra);
        run_cmd_timeout(self.cmd(&args), None, Duration::from_secs(300))
    }
}

fn conf(a: &Archive) -> String {
    format!(
        "archive_mode = on\narchive_command = '{}'\nwal_level = replica\n\
         autovacuum = off\ntrack_commit_timestamp = on\n",
        a.command("wal-push %p")
    )
}

/// A `timestamptz` as psql prints it (`2026-12-03 07:40:00.123456+00`).
fn pg_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f%#z")
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .with_timezone(&Utc)
}

fn json_ts(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// `n` transactions of inserts, then the last commit's time; then a WAL
/// switch, whose segment name is returned too.
fn commits_then_switch(run_sql: &dyn Fn(&str) -> String, n: usize) -> (DateTime<Utc>, String) {
    for i in 0..n {
        run_sql(&format!(
            "INSERT INTO ticks SELECT g, md5((g * {i})::text) FROM generate_series(1, 3000) g"
        ));
    }
    let last = run_sql("SELECT timestamp FROM pg_last_committed_xact()");
    let seg = run_sql("SELECT pg_walfile_name(pg_switch_wal())");
    (pg_ts(&last), seg)
}

/// Waits (with a deadline) until `last_archived_wal` is `name`; fails at
/// once when an archive_command failed.
fn wait_archived(stat: &dyn Fn() -> String, name: &str, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let row = stat();
        let parts: Vec<&str> = row.split('|').collect();
        assert_eq!(
            parts[1],
            "0",
            "archive_command failed; server log:\n{}",
            log()
        );
        if parts[0] >= name {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not archived after 120 s (last {row}); server log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const STAT: &str = "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver";

/// Commits in a segment according to pg_waldump: (commits, aborts, last
/// commit time).
fn waldump(bin: &Path, file: &Path) -> (u64, u64, Option<DateTime<Utc>>) {
    let mut c = Command::new(bin.join("pg_waldump"));
    c.arg(file).env("TZ", "UTC");
    // pg_waldump exits non-zero at the end of the last segment's valid
    // WAL; what it printed before is what counts.
    let r = run_cmd(c, None);
    let out = r.stdout_str();
    let (mut commits, mut aborts, mut last) = (0, 0, None);
    for line in out.lines() {
        let Some((_, desc)) = line.split_once("desc: ") else {
            continue;
        };
        let (kind, rest) = desc.split_once(' ').unwrap_or((desc, ""));
        match kind {
            "COMMIT" | "COMMIT_PREPARED" => {
                commits += 1;
                let ts = rest.get(..26).unwrap_or_else(|| panic!("{line}"));
                last = Some(
                    chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S%.f")
                        .unwrap_or_else(|e| panic!("{line}: {e}"))
                        .and_utc(),
                );
            }
            "ABORT" | "ABORT_PREPARED" => aborts += 1,
            _ => {}
        }
    }
    assert!(
        out.lines().count() > 0,
        "pg_waldump printed nothing for {}: {}",
        file.display(),
        r.stderr
    );
    (commits, aborts, last)
}

#[test]
fn wal_verify_reads_the_archive_as_postgres_wrote_it() {
    let archive = Archive::new();
    let pg = PgServer::start_with_conf(&PgOptions::default(), &conf(&archive));
    let sql = |q: &str| pg.psql("postgres", q);
    sql("CREATE TABLE ticks (i int, pad text)");
    let mut last = None;
    let mut last_seg = String::new();
    for _ in 0..5 {
        let (t, s) = commits_then_switch(&sql, 3);
        last = Some(t);
        last_seg = s;
    }
    let last = last.unwrap();
    wait_archived(&|| sql(STAT), &last_seg, &|| pg.log());
    let segs = archive.segments("00000001");
    assert!(segs.len() >= 5, "{segs:?}");

    // Each segment: our reader and pg_waldump agree.
    let out = archive.path("out");
    let started = Instant::now();
    let mut total = 0;
    for (name, _) in &segs {
        let bytes = archive.fetch(name);
        let (_, segno) = segment_number(name, MB16).unwrap();
        let scan = wal_records::scan(&bytes, Some(Lsn(segno * MB16 as u64))).unwrap();
        let (commits, aborts, last_commit) = waldump(pg.bin_dir(), &out.join(name));
        assert_eq!(scan.commits, commits, "{name}: {scan:?}");
        assert_eq!(scan.aborts, aborts, "{name}");
        assert_eq!(
            scan.last_commit.as_ref().and_then(|c| c.time),
            last_commit,
            "{name}"
        );
        assert!(scan.stop.is_clean(), "{name}: {scan:?}");
        total += commits;
    }
    assert!(total >= 12, "{total} commits");
    // The reader's own cost on a full segment (the process, fetch and
    // pg_waldump above dominate the loop's time).
    let bytes = archive.fetch(&segs[1].0);
    let t = Instant::now();
    let rounds = 10;
    let mut wal = 0;
    for _ in 0..rounds {
        let s = wal_records::scan(&bytes, None).unwrap();
        assert!(s.records > 0);
        wal = s.end_lsn.unwrap().0 - s.start_lsn.0;
    }
    let per = t.elapsed().as_secs_f64() / rounds as f64;
    eprintln!(
        "scan of a segment with {:.2} MiB of WAL before its switch: {:.2} ms ({:.0} MiB/s)",
        wal as f64 / (1 << 20) as f64,
        per * 1e3,
        wal as f64 / (1 << 20) as f64 / per
    );
    eprintln!(
        "{} segments scanned and compared with pg_waldump in {:.1?}",
        segs.len(),
        started.elapsed()
    );

    // wal-verify: complete; the newest recoverable time is the last commit.
    let r = archive.verify(&[]).ok();
    let j = r.json();
    assert_eq!(json_ts(&j["newest_recoverable_time"]), last, "{j:#}");
    assert_eq!(j["gaps"].as_array().unwrap().len(), 0);
    assert_eq!(j["newest_segment"], last_seg);
    let ranges = j["timelines"][0]["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "{j:#}");
    assert_eq!(ranges[0]["first"], segs[0].0);
    assert_eq!(ranges[0]["last"], last_seg);
    let started = Instant::now();
    let r = archive.verify(&["--read-data"]).ok();
    assert_eq!(r.json()["segments_read"], segs.len() as u64);
    eprintln!(
        "wal-verify --read-data of {} segments: {:.1?}",
        segs.len(),
        started.elapsed()
    );
    let prom = std::fs::read_to_string(archive.path("metrics/usdcop_dr_wal.prom")).unwrap();
    assert!(prom.contains("usdcop_dr_wal_archive_gaps 0"), "{prom}");
    // Every metric the WAL alert rules use is one wal-verify writes.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus/usdcop-dr-wal.rules.yml"),
    )
    .unwrap();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("usdcop_dr_") {
            assert!(
                prom.contains(&format!("# TYPE {word} gauge")),
                "the rules use {word}, which the metrics do not have:\n{prom}"
            );
        }
    }
    let newest: f64 = prom
        .lines()
        .find_map(|l| l.strip_prefix("usdcop_dr_wal_newest_recoverable_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no newest recoverable time in\n{prom}"))
        .parse()
        .unwrap();
    assert!(
        (newest - last.timestamp_micros() as f64 / 1e6).abs() < 0.002,
        "{newest} for {last}"
    );

    // A flipped byte in a stored object: named as damage by --read-data.
    let (victim_name, victim) = &segs[1];
    let orig = std::fs::read(victim).unwrap();
    let mut bad = orig.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    std::fs::write(victim, &bad).unwrap();
    let r = archive.verify(&["--read-data"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let problems = r.json()["problems"].to_string();
    assert!(problems.contains(victim_name.as_str()), "{problems}");
    std::fs::write(victim, &orig).unwrap();

    // One segment deleted in the middle: exit 3, its exact name, the two
    // ranges around it.
    let mid = segs.len() / 2;
    let (gone, path) = &segs[mid];
    std::fs::remove_file(path).unwrap();
    let r = archive.verify(&[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let j = r.json();
    let gaps = j["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{j:#}");
    assert_eq!(gaps[0]["missing"], serde_json::json!([gone]));
    let ranges = j["timelines"][0]["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 2, "{j:#}");
    assert_eq!(ranges[0]["first"], segs[0].0);
    assert_eq!(ranges[0]["last"], segs[mid - 1].0);
    assert_eq!(ranges[1]["first"], segs[mid + 1].0);
    assert_eq!(ranges[1]["last"], last_seg);
    // the range after the gap still reaches the last commit; the one
    // before it stops earlier
    assert_eq!(json_ts(&ranges[1]["newest_time"]), last);
    assert!(json_ts(&ranges[0]["newest_time"]) < last);
    // The text names it too, and the metrics count it.
    let r = archive.run(&["wal-verify"]);
    assert_eq!(r.code, 3);
    let text = r.stdout_str();
    eprintln!("wal-verify with a segment missing:\n{text}");
    assert!(
        text.contains(&format!("missing 1 segment(s): {gone}")) && text.contains("GAP"),
        "{text}"
    );
    let prom = std::fs::read_to_string(archive.path("metrics/usdcop_dr_wal.prom")).unwrap();
    assert!(prom.contains("usdcop_dr_wal_archive_gaps 1"), "{prom}");
    assert!(prom.contains("usdcop_dr_wal_verify_success 0"), "{prom}");

    // status shows the newest recoverable time and its age.
    let r = archive.run(&["--json", "status"]);
    let j = r.json();
    assert_eq!(json_ts(&j["wal"]["newest_recoverable_time"]), last, "{j:#}");
    assert_eq!(j["wal"]["gaps"], 1);
    assert!(j["wal"]["age_s"].as_f64().unwrap() >= 0.0);
}

/// A second server, made from a base backup of the first, recovering from
/// the archive through wal-fetch (no PgServer: it is not initdb'ed).
struct Copy {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    password: String,
}

impl Copy {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_server_user(&self, tool: &str) -> Command {
        let mut c = if server_user().is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            c
        } else {
            Command::new(self.bin.join(tool))
        };
        c.env("PGPASSWORD", &self.password).env("PGTZ", "UTC");
        c
    }

    fn psql(&self, q: &str) -> String {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            q,
        ])
        .env("PGPASSWORD", &self.password)
        .env("PGTZ", "UTC");
        let r = run_cmd(c, None);
        assert_eq!(r.code, 0, "{q}: {}\n{}", r.stderr, self.log());
        r.stdout_str().trim().to_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let mut c = self.as_server_user("pg_ctl");
        c.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        let _ = run_cmd(c, None);
    }
}

#[test]
fn a_recovered_copy_on_timeline_2_is_followed_through_its_history() {
    let archive = Archive::new();
    let pg = PgServer::start_with_conf(&PgOptions::default(), &conf(&archive));
    let sql = |q: &str| pg.psql("postgres", q);
    sql("CREATE TABLE ticks (i int, pad text)");
    commits_then_switch(&sql, 2);

    // The copy: pg_basebackup (WAL from the archive), restore_command =
    // wal-fetch, recovery.signal; it replays what is archived and ends
    // recovery on timeline 2.
    let dir = tempfile::Builder::new()
        .prefix("usdcop-dr-walverify-copy-")
        .tempdir()
        .unwrap();
    archive.give(dir.path());
    let mut copy = Copy {
        dir,
        port: 0,
        bin: pg.bin_dir().to_owned(),
        password: pg.password().to_owned(),
    };
    let mut c = copy.as_server_user("pg_basebackup");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port().to_string(),
        "-U",
        "postgres",
    ])
    .arg("-D")
    .arg(copy.data())
    .args(["-X", "none", "-c", "fast", "--no-sync"]);
    let r = run_cmd(c, None);
    assert_eq!(r.code, 0, "pg_basebackup: {}", r.stderr);
    let (_, seg) = commits_then_switch(&sql, 2);
    wait_archived(&|| sql(STAT), &seg, &|| pg.log());
    let tl1_last = seg;

    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(copy.data().join("postgresql.conf"))
        .unwrap();
    writeln!(
        f,
        "\nrestore_command = '{}'",
        archive.command("wal-fetch %f %p")
    )
    .unwrap();
    std::fs::write(copy.data().join("recovery.signal"), "").unwrap();
    archive.give(&copy.data().join("recovery.signal"));
    copy.port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = format!(
        "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
        copy.port,
        copy.dir.path().display()
    );
    let mut c = copy.as_server_user("pg_ctl");
    c.arg("-D")
        .arg(copy.data())
        .arg("-l")
        .arg(copy.dir.path().join("log"))
        .args(["-w", "-t", "120", "-o", &opts, "start"]);
    let r = run_cmd(c, None);
    assert_eq!(r.code, 0, "pg_ctl start: {}\n{}", r.stderr, copy.log());
    let deadline = Instant::now() + Duration::from_secs(120);
    while copy.psql("SELECT pg_is_in_recovery()") != "f" {
        assert!(
            Instant::now() < deadline,
            "still recovering:\n{}",
            copy.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        copy.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002",
        "{}",
        copy.log()
    );
    let csql = |q: &str| copy.psql(q);
    commits_then_switch(&csql, 2);
    let (last, seg) = commits_then_switch(&csql, 2);
    wait_archived(&|| csql(STAT), &seg, &|| copy.log());
    assert!(seg.starts_with("00000002"), "{seg}");

    let r = archive.verify(&["--read-data"]).ok();
    let j = r.json();
    let tls = j["timelines"].as_array().unwrap();
    assert_eq!(tls.len(), 2, "{j:#}");
    let tl2 = &tls[1];
    assert_eq!(tl2["timeline"], 2);
    assert_eq!(tl2["history"][0]["parent"], 1);
    let ranges = tl2["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "{j:#}");
    let tl1_first = archive.segments("00000001")[0].0.clone();
    assert_eq!(ranges[0]["first"], tl1_first);
    assert_eq!(ranges[0]["last"], seg);
    assert_eq!(tls[0]["ranges"][0]["last"], tl1_last);
    assert_eq!(json_ts(&j["newest_recoverable_time"]), last);
    assert_eq!(j["newest_segment"], seg);
    // The switch point is where timeline 2's first segment begins or
    // inside it; timeline 1's segments after it are not on the path.
    let sp = Lsn::parse(tl2["history"][0]["switchpoint"].as_str().unwrap()).unwrap();
    let first2 = archive.segments("00000002")[0].0.clone();
    assert_eq!(
        segment_number(&first2, MB16).unwrap().1,
        sp.segment(MB16),
        "{j:#}"
    );

    // Timeline 2's copy of the switch segment deleted: named on timeline 2.
    std::fs::remove_file(&archive.segments("00000002")[0].1).unwrap();
    let r = archive.verify(&[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let j = r.json();
    assert_eq!(
        j["gaps"][0]["missing"],
        serde_json::json!([first2]),
        "{j:#}"
    );
    assert_eq!(j["gaps"][0]["timeline"], 2);
}
