//! Asynchronous WAL archiving against a real cluster (issue 12, "speed is
//! part of correctness"): PostgreSQL's archive_command runs `usdcop-dr
//! wal-push %p` with `[wal] async` (the default), as the server's OS user.
//!
//! - Under pgbench load every archived segment fetches back identical, no
//!   archive_command fails, and the lag file, `status --json` and the
//!   metrics textfile show the archive caught up. Sustained archive rate
//!   against the WAL generation rate is printed (`USDCOP_DR_WAL_BENCH=1`:
//!   `pgbench -c 4 -T 60`, sync and async, docs/BENCHMARKS.md).
//! - Pushers SIGKILLed mid-upload (a repository on S3 behind a slow proxy)
//!   and a killed first archive_command lose nothing, with `async` and
//!   without: every segment from the first to the last archived is in the
//!   archive, the right one (its page header's address).
//!   A restore-style sequence of `wal-fetch` calls then needs fewer store
//!   round trips than files (prefetch).
//! - The store unreachable (the proxy stopped): pushes fail non-zero, the
//!   lag file, `status --json` and the metrics show the pending files
//!   growing and the last failure; when the store returns, the archive
//!   catches up by itself.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/servers.rs"]
mod servers;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run_cmd, Run};
use faultproxy::{FaultProxy, FaultRates};
use postgres::*;
use servers::{S3Server, ServerKind};
use sha2::{Digest, Sha256};
use usdcop_dr::format::wal::{segment_name, segment_number};

const BIN: &str = env!("CARGO_BIN_EXE_usdcop-dr");
const SEG: u32 = 16 << 20;
const BUCKET: &str = "usdcop-dr-wal";

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

/// Where the archive goes.
enum Store<'a> {
    Local,
    /// An S3 bucket reached through `endpoint` (a proxy in front of it).
    S3 {
        server: &'a S3Server,
        endpoint: String,
    },
}

/// Repository, passphrase, configuration, AWS profile, state directory
/// and metrics folder, all owned by the server's OS user (its HOME).
struct Archive {
    home: tempfile::TempDir,
    owner: Option<(u32, u32)>,
    wal: String,
    repo: String,
    endpoint: Option<String>,
}

impl Archive {
    fn new(store: Store<'_>, wal: &str) -> Archive {
        let owner = server_user();
        let home = tempfile::Builder::new()
            .prefix("usdcop-dr-walasync-")
            .tempdir()
            .unwrap();
        let mut a = Archive {
            home,
            owner,
            wal: wal.to_owned(),
            repo: String::new(),
            endpoint: None,
        };
        let pass = a.path("passphrase");
        std::fs::write(&pass, format!("{}\n", common::PASSWORD)).unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        for d in ["state", "metrics", ".aws"] {
            std::fs::create_dir(a.path(d)).unwrap();
        }
        match store {
            Store::Local => a.repo = a.path("repo").display().to_string(),
            Store::S3 { server, endpoint } => {
                server.create_bucket(BUCKET);
                // A prefix of its own: archives may share the bucket.
                let prefix = a
                    .home
                    .path()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                a.repo = format!("s3://{BUCKET}/{prefix}");
                a.endpoint = Some(endpoint);
                std::fs::write(
                    a.path(".aws/credentials"),
                    format!(
                        "[walarchive]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                        server.access_key, server.secret_key
                    ),
                )
                .unwrap();
                std::fs::write(
                    a.path(".aws/config"),
                    "[profile walarchive]\nregion = us-east-1\n",
                )
                .unwrap();
            }
        }
        a.write_config();
        a.give_all();
        a.run(&["init", "--kdf-memory-kib", "8192"]).ok();
        a
    }

    fn write_config(&self) {
        let repo = match &self.endpoint {
            None => format!("url = {:?}\n", self.repo),
            Some(e) => format!(
                "url = {:?}\nendpoint = {e:?}\nprofile = \"walarchive\"\n",
                self.repo
            ),
        };
        std::fs::write(
            self.config(),
            format!(
                "[repository]\n{repo}password_file = {:?}\n\n[metrics]\ntextfile = {:?}\n\n\
                 [[source]]\nname = \"trading\"\nkind = \"postgres\"\ndsn = \"dbname=postgres\"\n\n\
                 [wal]\nsource = \"trading\"\n{}\n",
                self.path("passphrase").display().to_string(),
                self.path("metrics/usdcop_dr.prom").display().to_string(),
                self.wal
            ),
        )
        .unwrap();
        self.give(&self.config());
    }

    /// Point the repository at another endpoint (the store "moves").
    fn set_endpoint(&mut self, endpoint: &str) {
        self.endpoint = Some(endpoint.to_owned());
        self.write_config();
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

    fn give_all(&self) {
        for p in common::files_under(self.home.path()) {
            self.give(&p);
        }
        for d in ["", "state", "metrics", ".aws"] {
            self.give(&self.path(d));
        }
    }

    /// The archive_command: HOME (for the AWS profile) and the state
    /// directory, nothing secret.
    fn archive_command(&self, wrapper: Option<&Path>) -> String {
        let cmd = format!(
            "HOME={} USDCOP_DR_STATE_DIR={} {BIN} --config {} wal-push %p",
            self.home.path().display(),
            self.path("state").display(),
            self.config().display()
        );
        match wrapper {
            Some(w) => format!("{} %p", w.display()),
            None => cmd,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.home.path())
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

    /// `wal-fetch --json NAME` into `out/`: (run, bytes, JSON).
    fn fetch(&self, name: &str) -> (Run, Vec<u8>) {
        let dir = self.path("out");
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            self.give(&dir);
        }
        let dest = dir.join(name);
        let _ = std::fs::remove_file(&dest);
        let r = self.run(&["--json", "wal-fetch", name, dest.to_str().unwrap()]);
        let bytes = std::fs::read(&dest).unwrap_or_default();
        (r, bytes)
    }

    fn lag(&self) -> serde_json::Value {
        let f = std::fs::read_dir(self.path("state"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("wal-") && n.ends_with(".json") && !n.starts_with("wal-key-")
            })
            .expect("a WAL lag file in the state directory");
        serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()
    }

    fn wal_metrics(&self) -> String {
        std::fs::read_to_string(self.path("metrics/usdcop_dr_wal_push.prom")).unwrap_or_default()
    }

    /// The pids of the pushers the lock files name (running or not).
    fn pusher_pids(&self) -> Vec<i32> {
        let spool = self.path("state/wal-spool");
        std::fs::read_dir(&spool)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path().join("pusher.lock")).ok())
                    .filter_map(|t| t.strip_prefix("pid ")?.split(' ').next()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn pusher_log(&self) -> String {
        let spool = self.path("state/wal-spool");
        std::fs::read_dir(&spool)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path().join("pusher.log")).ok())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn archiver(pg: &PgServer) -> (u64, u64, String) {
    let row = pg.psql(
        "postgres",
        "SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    );
    let mut it = row.split('|');
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().to_owned(),
    )
}

/// Files PostgreSQL still waits to archive.
fn ready(pg: &PgServer) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(pg.data_dir().join("pg_wal/archive_status"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

/// Waits until nothing is left to archive; fails on any archive failure
/// when `no_failures`.
fn wait_drained(pg: &PgServer, no_failures: bool, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let (_, failed, _) = archiver(pg);
        if no_failures {
            assert_eq!(
                failed,
                0,
                "archive_command failed; server log:\n{}",
                pg.log()
            );
        }
        if ready(pg).is_empty() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "still waiting to archive {:?} after {within:?}; server log:\n{}",
            ready(pg),
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lsn(pg: &PgServer) -> u64 {
    let s = pg.psql("postgres", "SELECT pg_current_wal_lsn()");
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The page address in a segment's first page header: which segment of
/// the WAL stream this file really is.
fn page_segment(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[8..16].try_into().unwrap()) / SEG as u64
}

/// Every segment from the cluster's first (1: archive_mode is on from
/// the first start) to `last` comes back from the archive, and is that
/// segment; where pg_wal still has it, byte for byte. Returns (segments,
/// calls of those that opened the repository).
fn check_archive(archive: &Archive, pg: &PgServer, last: &str) -> (usize, usize) {
    let (tl, last_no) = segment_number(last, SEG).unwrap();
    let first = 1;
    let mut store_calls = 0;
    for n in first..=last_no {
        let name = segment_name(tl, n, SEG);
        let (r, bytes) = archive.fetch(&name);
        let j = r.json();
        if !j["unlock"].is_null() {
            store_calls += 1;
        }
        eprintln!(
            "  wal-fetch {name}: {:.3} s{}",
            j["total_s"].as_f64().unwrap_or(0.0),
            if j["from_spool"] == true {
                " (prefetched)".to_owned()
            } else {
                format!(", {} prefetched", j["prefetched"])
            }
        );
        assert_eq!(
            r.code, 0,
            "segment {name} missing from the archive: {}",
            r.stderr
        );
        assert_eq!(bytes.len(), SEG as usize, "{name}");
        assert_eq!(page_segment(&bytes), n, "{name} holds another segment");
        assert_eq!(
            r.json()["object"].as_str().unwrap().rsplit('-').next(),
            Some(sha256_hex(&bytes).as_str())
        );
        if let Ok(orig) = std::fs::read(pg.data_dir().join("pg_wal").join(&name)) {
            assert!(orig == bytes, "{name} differs from pg_wal's copy");
        }
    }
    ((last_no - first + 1) as usize, store_calls)
}

fn start_cluster(archive: &Archive, wrapper: Option<&Path>) -> PgServer {
    let conf = format!(
        "archive_mode = on\narchive_command = '{}'\narchive_timeout = 2s\nwal_level = replica\n\
         max_wal_size = 4GB\ncheckpoint_timeout = 30min\n",
        archive.archive_command(wrapper)
    );
    PgServer::start_with_conf(&PgOptions::default(), &conf)
}

fn pgbench(pg: &PgServer, args: &[&str]) {
    let mut c = pg.command("pgbench");
    c.args(args).arg("postgres");
    let r = run_cmd(c, None);
    assert_eq!(r.code, 0, "pgbench {args:?}: {}", r.stderr);
}

/// One load run: pgbench for `secs` seconds; returns (MB/s of WAL
/// generated, MB/s archived until drained, files waiting at the end of
/// the load, seconds to drain after it).
fn load(pg: &PgServer, secs: u64) -> (f64, f64, usize, f64) {
    let start = lsn(pg);
    let t = Instant::now();
    pgbench(pg, &["-n", "-c", "4", "-j", "2", "-T", &secs.to_string()]);
    let gen_s = t.elapsed().as_secs_f64();
    let end = lsn(pg);
    let waiting = ready(pg).len();
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let drain = wait_drained(pg, true, Duration::from_secs(600));
    let mb = (end - start) as f64 / 1e6;
    (
        mb / gen_s,
        mb / t.elapsed().as_secs_f64(),
        waiting,
        drain.as_secs_f64(),
    )
}

#[test]
fn async_archive_keeps_up_under_pgbench_and_every_segment_fetches_back() {
    let bench = std::env::var_os("USDCOP_DR_WAL_BENCH").is_some();
    let secs = if bench { 60 } else { 15 };
    let modes: &[(&str, &str)] = if bench {
        &[("sync", "async = false\n"), ("async", "")]
    } else {
        &[("async", "")]
    };
    for (mode, wal) in modes {
        let archive = Archive::new(Store::Local, wal);
        let pg = start_cluster(&archive, None);
        pgbench(&pg, &["-i", "-s", "10", "-q"]);
        pg.psql("postgres", "SELECT pg_switch_wal()");
        wait_drained(&pg, true, Duration::from_secs(300));
        let (gen, arch, waiting, drain) = load(&pg, secs);
        let (archived, failed, last) = archiver(&pg);
        assert_eq!(failed, 0, "{}", pg.log());
        eprintln!(
            "\nBENCH [{mode}] pgbench -c 4 -T {secs}: WAL generated {gen:.1} MB/s, archived {arch:.1} MB/s \
             (load start to drained); {waiting} file(s) waiting when the load ended, drained {drain:.1} s later; \
             {archived} files archived"
        );
        let lag = archive.lag();
        assert_eq!(lag["consecutive_failures"], 0, "{lag}");
        assert!(lag["last_success"].is_string(), "{lag}");
        if *mode == "async" {
            assert!(
                archive.pusher_log().contains(" started for "),
                "no background pusher ran: {}",
                archive.pusher_log()
            );
        }
        let (n, _) = check_archive(&archive, &pg, &last);
        assert!(n >= 3, "only {n} segments archived");
        // `status --json` and the metrics show the archive caught up.
        let st = archive.run(&["--json", "status"]);
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        assert_eq!(st["wal_lag"]["consecutive_failures"], 0, "{st}");
        let prom = archive.wal_metrics();
        assert!(prom.contains("usdcop_dr_wal_push_failures 0"), "{prom}");
        assert!(
            prom.lines().any(
                |l| l.starts_with("usdcop_dr_wal_last_push_timestamp_seconds ")
                    && !l.ends_with(" 0")
            ),
            "{prom}"
        );
    }
}

/// Kills (SIGKILL) every process named by a pusher lock file that is not
/// `spared`, once it has run `after`; returns the pids killed.
fn kill_pushers(archive: &Archive, spared: &mut Vec<i32>, after: Duration) -> Vec<i32> {
    let mut killed = Vec::new();
    for pid in archive.pusher_pids() {
        if spared.contains(&pid) {
            continue;
        }
        std::thread::sleep(after);
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
            killed.push(pid);
        }
        spared.push(pid);
    }
    killed
}

/// An archive_command whose first call is killed (SIGKILL) 300 ms into
/// its push and fails; later calls run `wal-push` as usual.
fn kill_first_push(archive: &Archive) -> PathBuf {
    let wrapper = archive.path("archive.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nset -u\nif [ ! -e {marker} ]; then\n  touch {marker}\n  env {cmd} &\n  \
             pid=$!\n  sleep 0.3\n  kill -9 $pid\n  exit 1\nfi\nexec env {cmd}\n",
            marker = archive.path("killed-once").display(),
            cmd = archive.archive_command(None).replace("%p", "\"$1\"")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    archive.give(&wrapper);
    wrapper
}

/// `async = false`: the push PostgreSQL runs is the upload, and it is
/// killed under way (every request 150 ms away); PostgreSQL retries.
#[test]
fn a_sync_push_killed_mid_upload_loses_nothing() {
    let s3 = S3Server::start(ServerKind::Moto);
    let proxy = FaultProxy::start(
        &s3.endpoint,
        FaultRates::latency(Duration::from_millis(150)),
        5,
    );
    let archive = Archive::new(
        Store::S3 {
            server: &s3,
            endpoint: proxy.endpoint.clone(),
        },
        "async = false\n",
    );
    let wrapper = kill_first_push(&archive);
    let pg = start_cluster(&archive, Some(&wrapper));
    pg.psql("postgres", "CREATE TABLE ticks (i int, pad text)");
    for _ in 0..5 {
        pg.psql(
            "postgres",
            "INSERT INTO ticks SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
             SELECT pg_switch_wal();",
        );
    }
    wait_drained(&pg, false, Duration::from_secs(240));
    let (_, failed, last) = archiver(&pg);
    assert!(archive.path("killed-once").exists());
    assert!(failed >= 1, "the killed push was not seen failing");
    assert!(
        archive.pusher_pids().is_empty(),
        "async = false started a pusher"
    );
    let (n, _) = check_archive(&archive, &pg, &last);
    assert!(n >= 5, "only {n} segments");
}

#[test]
fn pushers_killed_mid_upload_lose_nothing_and_prefetch_saves_round_trips() {
    let s3 = S3Server::start(ServerKind::Moto);
    // Every request 150 ms away: an upload is under way for a while.
    let delay = Duration::from_millis(150);
    let proxy = FaultProxy::start(&s3.endpoint, FaultRates::latency(delay), 1);
    let archive = Archive::new(
        Store::S3 {
            server: &s3,
            endpoint: proxy.endpoint.clone(),
        },
        "push_parallel = 4\nprefetch = 8\n",
    );
    let wrapper = kill_first_push(&archive);
    let pg = start_cluster(&archive, Some(&wrapper));
    pg.psql("postgres", "CREATE TABLE ticks (i int, pad text)");
    // Segments keep coming while pushers are killed under way.
    let mut spared = Vec::new();
    let mut killed = Vec::new();
    let t = Instant::now();
    for round in 0..12 {
        pg.psql(
            "postgres",
            "INSERT INTO ticks SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
             SELECT pg_switch_wal();",
        );
        if round < 6 && killed.len() < 3 {
            killed.extend(kill_pushers(
                &archive,
                &mut spared,
                Duration::from_millis(400),
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while killed.is_empty() && Instant::now() < deadline {
        killed.extend(kill_pushers(
            &archive,
            &mut spared,
            Duration::from_millis(200),
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !killed.is_empty(),
        "no pusher was killed: {}",
        archive.pusher_log()
    );
    pg.psql("postgres", "SELECT pg_switch_wal()");
    wait_drained(&pg, false, Duration::from_secs(240));
    let (archived, failed, last) = archiver(&pg);
    assert!(archive.path("killed-once").exists());
    eprintln!(
        "killed {} pusher(s) and the first archive_command; {archived} files archived, \
         {failed} archive_command failure(s), {:.1} s",
        killed.len(),
        t.elapsed().as_secs_f64()
    );

    // A restore-style sequence: every segment, in order, through the
    // same 150 ms store. Without prefetch each call needs three round
    // trips one after the other (config, listing, object); with it, a
    // call that goes to the store needs three (config; listing and
    // wal/system-id at once; the objects at once) for up to 9 files, and
    // the others none.
    let before = proxy.counts().requests;
    let t = Instant::now();
    let (n, store_calls) = check_archive(&archive, &pg, &last);
    let took = t.elapsed();
    let requests = proxy.counts().requests - before;
    eprintln!(
        "wal-fetch of {n} segments through {delay:?} per request: {:.2} s ({:.0} ms per file), \
         {store_calls} call(s) went to the store, {requests} requests in all (without prefetch: \
         at least {} requests, {} round trips)",
        took.as_secs_f64(),
        took.as_millis() as f64 / n as f64,
        3 * n,
        3 * n
    );
    assert!(n >= 10, "only {n} segments");
    assert!(
        3 * store_calls < n,
        "{store_calls} of {n} fetches went to the store: not fewer round trips than files"
    );
    assert!(requests < 3 * n as u64, "{requests} requests for {n} files");
}

#[test]
fn store_unreachable_pushes_fail_lag_shows_and_the_archive_catches_up() {
    let s3 = S3Server::start(ServerKind::Moto);
    let proxy = FaultProxy::start(&s3.endpoint, FaultRates::NONE, 2);
    let mut archive = Archive::new(
        Store::S3 {
            server: &s3,
            endpoint: proxy.endpoint.clone(),
        },
        "",
    );
    let pg = start_cluster(&archive, None);
    pg.psql(
        "postgres",
        "CREATE TABLE ticks (i int, pad text); SELECT pg_switch_wal();",
    );
    wait_drained(&pg, true, Duration::from_secs(60));

    // The store goes away: the proxy stops, running pushers die (their
    // pooled connections would otherwise still reach the store).
    drop(proxy);
    kill_pushers(&archive, &mut Vec::new(), Duration::ZERO);
    let switch = |n: usize| {
        for _ in 0..n {
            pg.psql(
                "postgres",
                "INSERT INTO ticks SELECT g, md5(g::text) FROM generate_series(1, 5000) g; \
                 SELECT pg_switch_wal();",
            );
        }
    };
    let failing = |at_least: u64, pending: u64| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let lag = archive.lag();
            if lag["consecutive_failures"].as_u64().unwrap() >= at_least
                && lag["pending_files"].as_u64().unwrap() >= pending
            {
                return lag;
            }
            assert!(
                Instant::now() < deadline,
                "lag never showed the outage: {lag}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    switch(2);
    let first = failing(1, 2);
    assert!(
        first["last_failure_message"].as_str().unwrap().len() > 10,
        "{first}"
    );
    let (_, failed, _) = archiver(&pg);
    assert!(failed >= 1, "PostgreSQL saw no failure");
    // A push by hand fails non-zero too.
    let waiting = ready(&pg);
    let r = archive.run(&[
        "wal-push",
        pg.data_dir()
            .join("pg_wal")
            .join(&waiting[0])
            .to_str()
            .unwrap(),
    ]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    switch(2);
    let later = failing(first["consecutive_failures"].as_u64().unwrap() + 1, 4);
    assert!(
        later["pending_bytes"].as_u64() > first["pending_bytes"].as_u64(),
        "pending bytes did not grow: {first} -> {later}"
    );
    let st = archive.run(&["--json", "status"]);
    assert_ne!(st.code, 0);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(
        st["wal_lag"]["pending_files"].as_u64().unwrap() >= 4,
        "{st}"
    );
    assert!(st["wal_lag"]["last_failure"].is_string(), "{st}");
    assert_eq!(st["ok"], false, "{st}");
    let text = archive.run(&["status"]).stdout_str();
    assert!(
        text.contains("WAL pushes: FAILING") && text.contains("file(s)"),
        "{text}"
    );
    let prom = archive.wal_metrics();
    let gauge = |name: &str| -> f64 {
        prom.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {prom}"))
            .parse()
            .unwrap()
    };
    assert!(gauge("usdcop_dr_wal_pending_files") >= 4.0, "{prom}");
    assert!(gauge("usdcop_dr_wal_push_failures") >= 2.0, "{prom}");
    // Every metric the push alert rules use is one wal-push writes.
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/prometheus/usdcop-dr-wal-push.rules.yml"),
    )
    .unwrap();
    let exprs: String = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .collect();
    for word in exprs.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("usdcop_dr_") {
            assert!(
                prom.contains(&format!("# TYPE {word} gauge")),
                "the rules use {word}, which the push metrics do not have:\n{prom}"
            );
        }
    }
    // Nothing was dropped: the files wait in pg_wal.
    for f in ready(&pg) {
        assert!(pg.data_dir().join("pg_wal").join(&f).exists(), "{f}");
    }

    // The store returns (at a new address): the archive catches up.
    let back = FaultProxy::start(&s3.endpoint, FaultRates::NONE, 3);
    archive.set_endpoint(&back.endpoint);
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let t = Instant::now();
    wait_drained(&pg, false, Duration::from_secs(150));
    eprintln!(
        "after the outage the archive caught up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let lag = archive.lag();
    assert_eq!(lag["consecutive_failures"], 0, "{lag}");
    let (_, _, last) = archiver(&pg);
    let (n, _) = check_archive(&archive, &pg, &last);
    assert!(n >= 5, "only {n} segments");
}

/// `USDCOP_DR_WAL_BENCH=1` only: the per-segment cost of archiving, sync
/// against async, as the rate at which a backlog drains. The cluster
/// starts with `archive_command = '/bin/false'`, `pgbench -i -s 30` piles
/// up WAL in pg_wal, then the real command is set (ALTER SYSTEM, reload)
/// and the time until nothing waits is taken: into a local repository,
/// and into S3 (moto) behind a proxy adding 20 ms to every request.
#[test]
fn bench_backlog_drain_sync_against_async() {
    if std::env::var_os("USDCOP_DR_WAL_BENCH").is_none() {
        return;
    }
    let s3 = S3Server::start(ServerKind::Moto);
    let proxy = FaultProxy::start(
        &s3.endpoint,
        FaultRates::latency(Duration::from_millis(20)),
        4,
    );
    for (store, mode, wal) in [
        ("local", "sync", "async = false\n"),
        ("local", "async", ""),
        ("s3+20ms", "sync", "async = false\n"),
        ("s3+20ms", "async", ""),
    ] {
        let archive = if store == "local" {
            Archive::new(Store::Local, wal)
        } else {
            Archive::new(
                Store::S3 {
                    server: &s3,
                    endpoint: proxy.endpoint.clone(),
                },
                wal,
            )
        };
        let pg = PgServer::start_with_conf(
            &PgOptions::default(),
            "archive_mode = on\narchive_command = '/bin/false'\nwal_level = replica\n\
             max_wal_size = 4GB\ncheckpoint_timeout = 30min\n",
        );
        pgbench(&pg, &["-i", "-s", "30", "-q"]);
        pg.psql("postgres", "SELECT pg_switch_wal()");
        let waiting = ready(&pg);
        let bytes: u64 = waiting
            .iter()
            .map(|f| {
                std::fs::metadata(pg.data_dir().join("pg_wal").join(f))
                    .unwrap()
                    .len()
            })
            .sum();
        pg.psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET archive_command = '{}'",
                archive.archive_command(None)
            ),
        );
        let t = Instant::now();
        pg.psql("postgres", "SELECT pg_reload_conf()");
        let took = wait_drained(&pg, false, Duration::from_secs(900)).as_secs_f64();
        let _ = t;
        eprintln!(
            "BENCH [{store} {mode}] backlog of {} files ({:.0} MB) drained in {took:.1} s: \
             {:.3} s per file, {:.1} MB/s",
            waiting.len(),
            bytes as f64 / 1e6,
            took / waiting.len() as f64,
            bytes as f64 / 1e6 / took
        );
        // The archive is whole.
        let (_, _, last) = archiver(&pg);
        let (tl, last_no) = segment_number(&last, SEG).unwrap();
        let (r, bytes) = archive.fetch(&segment_name(tl, last_no, SEG));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(page_segment(&bytes), last_no);
    }
}
