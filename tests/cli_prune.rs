//! Retention and prune (issue 11), through the binary on a local
//! repository: 60 simulated days with the database policy's rules, the
//! survivors checked against an independent computation and restored
//! byte for byte; a backup that deduplicates against a snapshot prune
//! forgets while it runs; prune killed at random points; a dry run that
//! changes nothing; bad policies that change nothing.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use common::{run_cmd, Run, TestRepo};

const TZ: chrono_tz::Tz = chrono_tz::America::Bogota;

/// A repository, a configuration file with one files source ("config")
/// over `data/`, and a policies folder.
struct Setup {
    repo: TestRepo,
    config: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn new(policy: &str, grace: &str) -> Setup {
        let repo = TestRepo::new();
        let root = repo.dir.path().to_owned();
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(root.join("policies")).unwrap();
        std::fs::write(root.join("policies/files.toml"), policy).unwrap();
        let config = root.join("usdcop-dr.toml");
        std::fs::write(
            &config,
            format!(
                "[objectives]\ntimezone = \"America/Bogota\"\n\n\
                 [retention]\npolicies = \"policies\"\ngrace = \"{grace}\"\nmin_age = \"0s\"\n\n\
                 [[source]]\nname = \"config\"\nkind = \"files\"\npaths = [\"{}\"]\n",
                data.display()
            ),
        )
        .unwrap();
        Setup { repo, config, data }
    }

    fn cmd(&self) -> Command {
        let mut c = self.repo.cmd();
        c.arg("--config").arg(&self.config);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        run_cmd(c, None)
    }

    /// Write day `d`'s content: a stable file and one of the day's own.
    fn write_day(&self, d: u64) {
        std::fs::write(
            self.data.join("stable.bin"),
            common::random_bytes(300_000, 1),
        )
        .unwrap();
        for e in std::fs::read_dir(&self.data).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "stable.bin" {
                std::fs::remove_file(p).unwrap();
            }
        }
        std::fs::write(
            self.data.join(format!("day-{d}.bin")),
            common::random_bytes(150_000, 1000 + d),
        )
        .unwrap();
    }

    fn backup_at(&self, t: DateTime<Utc>) -> String {
        let r = self
            .run(&[
                "--json",
                "backup",
                "files",
                "--source",
                "config",
                "--time",
                &t.to_rfc3339(),
                self.data.to_str().unwrap(),
            ])
            .ok()
            .json();
        r["snapshot_id"].as_str().unwrap().to_owned()
    }

    /// Snapshot id → time.
    fn snapshots(&self) -> BTreeMap<String, DateTime<Utc>> {
        let v = self.run(&["--json", "snapshots"]).ok().json();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_owned(),
                    s["time"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    /// Restore snapshot `id` and compare it with what day `d` wrote.
    fn assert_restores(&self, id: &str, d: u64) {
        let target = self.repo.dir.path().join(format!("restore-{id}"));
        self.run(&[
            "restore",
            "--snapshot",
            id,
            "--target",
            target.to_str().unwrap(),
        ])
        .ok();
        let root = target.join(self.data.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read(root.join("stable.bin")).unwrap(),
            common::random_bytes(300_000, 1),
            "snapshot {id}"
        );
        assert_eq!(
            std::fs::read(root.join(format!("day-{d}.bin"))).unwrap(),
            common::random_bytes(150_000, 1000 + d),
            "snapshot {id}"
        );
        std::fs::remove_dir_all(&target).unwrap();
    }

    fn data_bytes(&self) -> u64 {
        self.repo
            .objects("data")
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    }
}

/// The database policy's rules (policies/database.toml), for this source.
const DATABASE_RULES: &str = "[[policy]]\nsources = [\"config\"]\nkeep_within = \"48h\"\n\
    keep_daily = 30\nkeep_weekly = 12\nkeep_monthly = 24\nkeep_yearly = 7\n";

/// restic's rule, written independently: newest first, a snapshot is kept
/// for a bucket rule when its bucket (in `TZ`) differs from the last one
/// that rule kept, until `n` are kept.
fn expected(times: &BTreeMap<String, DateTime<Utc>>, now: DateTime<Utc>) -> BTreeSet<String> {
    let mut by_time: Vec<(&String, &DateTime<Utc>)> = times.iter().collect();
    by_time.sort_by(|a, b| b.1.cmp(a.1).then(b.0.cmp(a.0)));
    let mut keep = BTreeSet::new();
    keep.insert(by_time[0].0.clone());
    for (id, t) in &by_time {
        if **t > now - chrono::Duration::hours(48) {
            keep.insert((*id).clone());
        }
    }
    type Bucket = fn(&DateTime<chrono_tz::Tz>) -> String;
    let rules: [(Bucket, usize); 4] = [
        (|t| t.format("%Y-%m-%d").to_string(), 30),
        (
            |t| {
                let w = t.iso_week();
                format!("{}-W{}", w.year(), w.week())
            },
            12,
        ),
        (|t| t.format("%Y-%m").to_string(), 24),
        (|t| t.format("%Y").to_string(), 7),
    ];
    for (bucket, n) in rules {
        let mut last: Option<String> = None;
        let mut kept = 0;
        for (id, t) in &by_time {
            if kept == n {
                break;
            }
            let b = bucket(&t.with_timezone(&TZ));
            if last.as_ref() != Some(&b) {
                keep.insert((*id).clone());
                kept += 1;
                last = Some(b);
            }
        }
    }
    keep
}

/// 60 days of nightly backups at 21:30 Bogota (02:30 UTC the next day:
/// the day buckets must be Bogota's), two a day in the last three days;
/// prune twice with grace 0: the survivors are exactly the expected set,
/// the repository verifies with every byte read, every survivor restores
/// byte-identical, and what is left is close to what the survivors use.
#[test]
fn sixty_days_with_the_database_rules() {
    let s = Setup::new(DATABASE_RULES, "0s");
    let now = Utc::now();
    let today = now.with_timezone(&TZ).date_naive();
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    for back in (1..=60u64).rev() {
        let day = today - chrono::Days::new(back);
        let t = TZ
            .from_local_datetime(&day.and_hms_opt(21, 30, 0).unwrap())
            .unwrap()
            .with_timezone(&Utc);
        s.write_day(back);
        written.insert(s.backup_at(t), back);
        if back <= 3 {
            s.write_day(back + 1000);
            written.insert(s.backup_at(t + chrono::Duration::hours(1)), back + 1000);
        }
    }
    let before = s.snapshots();
    assert_eq!(before.len(), 63);
    let want = expected(&before, now);
    let bytes_all = s.data_bytes();

    // A dry run changes nothing and says what the real run will do.
    let dry = s.run(&["--json", "prune", "--dry-run"]).ok().json();
    assert_eq!(s.snapshots(), before);
    assert_eq!(s.data_bytes(), bytes_all);
    assert!(s.repo.objects("condemned").is_empty());

    let report = s.repo.dir.path().join("prune.md");
    let first = s
        .run(&["--json", "prune", "--report", report.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(first["snapshots_removed"], dry["snapshots_removed"]);
    let after: BTreeSet<String> = s.snapshots().into_keys().collect();
    assert_eq!(
        after, want,
        "survivors differ from the independent computation"
    );
    // First run: condemned, nothing deleted yet.
    assert!(first["gc"]["deleted"].as_array().unwrap().is_empty());
    assert!(!first["gc"]["condemned"].as_array().unwrap().is_empty());
    let md = std::fs::read_to_string(&report).unwrap();
    for id in before.keys() {
        assert!(md.contains(&id[..8]), "report lacks snapshot {id}");
    }
    assert!(md.contains("remove") && md.contains("daily"), "{md}");

    let second = s.run(&["--json", "prune"]).ok().json();
    assert!(!second["gc"]["deleted"].as_array().unwrap().is_empty());
    assert_eq!(second["snapshots_removed"], 0);
    let referenced = second["gc"]["bytes_referenced"].as_u64().unwrap();
    let left = s.data_bytes();
    eprintln!(
        "60 days: {} → {} snapshots, data {} → {} bytes, referenced {}",
        before.len(),
        after.len(),
        bytes_all,
        left,
        referenced
    );
    assert!(left < bytes_all);
    assert!(
        (left as f64) < referenced as f64 * 1.10 + 64.0 * 1024.0,
        "{left} bytes left for {referenced} referenced"
    );

    s.run(&["verify", "--read-data"]).ok();
    for id in &after {
        s.assert_restores(id, written[id]);
    }
    // A third run finds nothing more to do.
    let third = s.run(&["--json", "prune"]).ok().json();
    assert!(third["gc"]["deleted"].as_array().unwrap().is_empty());
    assert!(third["gc"]["condemned"].as_array().unwrap().is_empty());
}

/// A `backup stdin` that started before prune, and deduplicates against a
/// snapshot prune then forgets, is paused while prune condemns and tries
/// to delete that snapshot's packs (grace 0): prune must wait for it (it
/// was live at the condemnation), and once it has finished its snapshot
/// reprieves the packs. Its snapshot restores byte-identical.
#[test]
fn a_backup_running_through_prune_loses_nothing() {
    let s = Setup::new("[[policy]]\nsources = [\"config\"]\nkeep_last = 1\n", "0s");
    let old = common::random_bytes(3_000_000, 77);
    std::fs::write(s.data.join("old.bin"), &old).unwrap();
    let t0 = Utc::now() - chrono::Duration::days(3);
    s.backup_at(t0);
    // The backup that will reuse old.bin's chunks: started, fed half.
    let mut child = spawn_stdin_backup(&s.repo, "old.bin");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(&old[..1_500_000]).unwrap();
    pipe.flush().unwrap();
    // Let it load the index (before prune condemns anything).
    wait_for_lock(&s.repo.path, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    // A newer snapshot of "config": keep_last = 1 drops the old one.
    std::fs::remove_file(s.data.join("old.bin")).unwrap();
    std::fs::write(s.data.join("new.bin"), common::random_bytes(10_000, 5)).unwrap();
    s.backup_at(Utc::now() - chrono::Duration::hours(1));
    let p1 = s.run(&["--json", "prune"]).ok().json();
    assert_eq!(p1["snapshots_removed"], 1);
    assert!(!p1["gc"]["condemned"].as_array().unwrap().is_empty());
    let p2 = s.run(&["--json", "prune"]).ok().json();
    assert!(
        p2["gc"]["deleted"].as_array().unwrap().is_empty(),
        "prune deleted a condemned pack while a writer live at its condemnation ran: {p2}"
    );
    assert!(!p2["gc"]["waiting"].as_array().unwrap().is_empty(), "{p2}");
    // The backup finishes.
    pipe.write_all(&old[1_500_000..]).unwrap();
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = snap["snapshot_id"].as_str().unwrap().to_owned();
    // Now its snapshot needs the condemned packs: reprieved, not deleted.
    let p3 = s.run(&["--json", "prune"]).ok().json();
    assert!(
        !p3["gc"]["reprieved"].as_array().unwrap().is_empty(),
        "{p3}"
    );
    s.run(&["prune"]).ok();
    s.run(&["verify", "--read-data"]).ok();
    assert_eq!(s.repo.restore_stdout(&id), old);
}

/// `backup stdin --json --source stream` started, its pipes open.
fn spawn_stdin_backup(repo: &TestRepo, name: &str) -> std::process::Child {
    let mut c = repo.cmd();
    c.args([
        "--json",
        "backup",
        "stdin",
        "--source",
        "stream",
        "--stdin-name",
        name,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Wait until some lock object exists in the repository.
fn wait_for_lock(repo: &Path, limit: Duration) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if std::fs::read_dir(repo.join("locks")).is_ok_and(|mut d| d.next().is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no lock appeared within {limit:?}");
}

/// Prune is killed (SIGKILL) at random points while it condemns, compacts
/// and deletes; after each kill the repository verifies, every kept
/// snapshot restores, and a clean prune afterwards finishes the work.
#[test]
fn prune_killed_anywhere_loses_nothing_kept() {
    let s = Setup::new("[[policy]]\nsources = [\"config\"]\nkeep_last = 3\n", "0s");
    let mut contents: BTreeMap<String, u64> = BTreeMap::new();
    let mut seed = 0u64;
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..6 {
        for _ in 0..3 {
            seed += 1;
            s.write_day(seed);
            let t = Utc::now() - chrono::Duration::minutes(100 - seed as i64);
            contents.insert(s.backup_at(t), seed);
        }
        // Kill prune after a random delay (0–400 ms), twice per round.
        for _ in 0..2 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let delay = Duration::from_millis(rng % 400);
            let mut c = s.cmd();
            c.args(["--quiet", "prune"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = c.spawn().unwrap();
            std::thread::sleep(delay);
            let _ = child.kill();
            let _ = child.wait();
        }
        // The locks of killed prunes expire by time only on another host;
        // here their pids are gone, so the next prune judges them dead.
        s.run(&["verify", "--read-data"]).ok();
        let snaps = s.snapshots();
        for id in snaps.keys() {
            s.assert_restores(id, contents[id]);
        }
    }
    // Clean runs finish the job: three snapshots left, garbage gone.
    s.run(&["prune"]).ok();
    let last = s.run(&["--json", "prune"]).ok().json();
    assert_eq!(s.snapshots().len(), 3);
    s.run(&["verify", "--read-data"]).ok();
    let referenced = last["gc"]["bytes_referenced"].as_u64().unwrap();
    // A pack less than half unused is left as it is (the first backup's
    // pack holds the stable file and day 1's, now unused: a third of it).
    assert!(
        (s.data_bytes() as f64) < referenced as f64 * 1.5,
        "{} bytes for {referenced} referenced: {last}",
        s.data_bytes()
    );
}

/// A policy file with an unknown key, and one that leaves the configured
/// source uncovered: exit 2 naming file, line and key; nothing changes.
#[test]
fn bad_policies_change_nothing() {
    let s = Setup::new("[[policy]]\nsources = [\"config\"]\nkeep_dayly = 3\n", "0s");
    s.write_day(1);
    s.backup_at(Utc::now() - chrono::Duration::days(2));
    s.write_day(2);
    s.backup_at(Utc::now() - chrono::Duration::days(1));
    let before = s.snapshots();
    let r = s.run(&["prune"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("files.toml:3") && r.stderr.contains("keep_dayly"),
        "{}",
        r.stderr
    );
    let root = s.repo.dir.path();
    std::fs::write(
        root.join("policies/files.toml"),
        "[[policy]]\nsources = [\"pg-*\"]\nkeep_last = 1\n",
    )
    .unwrap();
    let r = s.run(&["prune"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("config"), "{}", r.stderr);
    assert_eq!(s.snapshots(), before);
    assert!(s.repo.objects("condemned").is_empty());
}

/// Backups (real processes) started at random moments while prunes run
/// (grace 0, so each prune may delete what the previous one condemned):
/// afterwards every snapshot of every backup that succeeded restores
/// byte-identical and the repository verifies with every byte read.
#[test]
fn backups_racing_prunes_at_random_moments_lose_nothing() {
    let s = Setup::new("[[policy]]\nsources = [\"config\"]\nkeep_last = 2\n", "0s");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut streams: Vec<(Vec<u8>, std::process::Child)> = vec![];
    for round in 0..8u64 {
        // Files snapshots to forget, so every prune has work to do.
        s.write_day(round);
        s.backup_at(Utc::now() - chrono::Duration::minutes(60 - round as i64));
        let mut prune = s.cmd();
        prune
            .args(["--quiet", "prune"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let prune = prune.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(next() % 300));
        // A stream sharing most of its chunks with the files being forgotten.
        let mut data = common::random_bytes(150_000, 1000 + round);
        data.extend(common::random_bytes(50_000, next()));
        let mut child = spawn_stdin_backup(&s.repo, "x");
        child.stdin.take().unwrap().write_all(&data).unwrap();
        streams.push((data, child));
        let out = prune.wait_with_output().unwrap();
        assert!(
            out.status.success() || out.status.code() == Some(75),
            "prune failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut ids = vec![];
    for (data, child) in streams {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push((v["snapshot_id"].as_str().unwrap().to_owned(), data));
    }
    s.run(&["prune"]).ok();
    s.run(&["prune"]).ok();
    s.run(&["verify", "--read-data"]).ok();
    for (id, data) in ids {
        assert_eq!(s.repo.restore_stdout(&id), data, "snapshot {id}");
    }
}

/// On real S3 servers (moto and Garage: store times from `LastModified`,
/// whole seconds; Garage overwrites conditional creates): forget by
/// policy, two prunes reclaim the forgotten snapshot's packs, the kept
/// one restores and verifies.
fn prune_on_s3(kind: servers::ServerKind) {
    let server = servers::S3Server::start(kind);
    server.create_bucket("backups");
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(root.path().join("policies")).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        root.path().join("policies/p.toml"),
        "[[policy]]\nsources = [\"config\"]\nkeep_last = 1\n",
    )
    .unwrap();
    let config = root.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[retention]\ngrace = \"0s\"\nmin_age = \"0s\"\n\n[[source]]\nname = \"config\"\nkind = \"files\"\npaths = [\"{}\"]\n",
            data.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = common::command(Path::new("s3://backups/repo"));
        c.envs(server.env()).arg("--config").arg(&config).args(args);
        run_cmd(c, None)
    };
    run(&["init", "--kdf-memory-kib", "1024", "--pack-size", "1048576"]).ok();
    let old = common::random_bytes(2_000_000, 31);
    std::fs::write(data.join("f.bin"), &old).unwrap();
    run(&[
        "backup",
        "files",
        "--source",
        "config",
        data.to_str().unwrap(),
    ])
    .ok();
    let new = common::random_bytes(1_000_000, 32);
    std::fs::write(data.join("f.bin"), &new).unwrap();
    let kept = run(&[
        "--json",
        "backup",
        "files",
        "--source",
        "config",
        data.to_str().unwrap(),
    ])
    .ok()
    .json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = run(&["--json", "prune"]).ok().json();
    assert_eq!(first["snapshots_removed"], 1, "{first}");
    assert!(
        !first["gc"]["condemned"].as_array().unwrap().is_empty(),
        "{first}"
    );
    let second = run(&["--json", "prune"]).ok().json();
    let freed: u64 = second["gc"]["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bytes"].as_u64().unwrap())
        .sum();
    assert!(freed > 1_900_000, "{second}");
    run(&["verify", "--read-data"]).ok();
    let target = root.path().join("out");
    run(&[
        "restore",
        "--snapshot",
        &kept,
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    let back = target.join(data.strip_prefix("/").unwrap()).join("f.bin");
    assert_eq!(std::fs::read(back).unwrap(), new);
}

#[test]
fn prune_on_moto() {
    prune_on_s3(servers::ServerKind::Moto);
}

#[test]
fn prune_on_garage() {
    prune_on_s3(servers::ServerKind::Garage);
}
