//! `restore bucket` of a snapshot holding several buckets whose keys
//! collide: each source bucket into a target of its own (never merged),
//! ambiguous requests refused with exit 2 before anything is written; and
//! the decrypted spool of a large object: 0600 inside a private 0700
//! directory while the restore runs, gone after success and after
//! SIGTERM / SIGINT (exit 143 / 130); an object whose data is gone
//! reported once.
//!
//! The buckets live on moto; the repository is a local directory (fewer
//! requests to the slow server, same code paths on the bucket side).

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{command, files_under, mode, random_bytes, run_cmd, Run};
use servers::{S3Server, ServerKind};

struct Setup {
    server: S3Server,
    _dir: tempfile::TempDir,
    repo: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let server = S3Server::start(ServerKind::Moto);
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let s = Setup {
            server,
            _dir: dir,
            repo,
        };
        s.run(&["init", "--kdf-memory-kib", "1024"]).ok();
        s
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = command(&self.repo);
        c.envs(self.server.env()).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        run_cmd(self.cmd(args), None)
    }

    fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let r = self
            .server
            .request("PUT", &format!("/{bucket}/{key}"), &[], body)
            .unwrap();
        assert_eq!(
            r.0,
            200,
            "PUT {bucket}/{key}: {}",
            String::from_utf8_lossy(&r.2)
        );
    }

    fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let r = self
            .server
            .request("GET", &format!("/{bucket}/{key}"), &[], b"")
            .unwrap();
        assert_eq!(
            r.0,
            200,
            "GET {bucket}/{key}: {}",
            String::from_utf8_lossy(&r.2)
        );
        r.2
    }

    fn keys(&self, bucket: &str) -> Vec<String> {
        serde_json::from_value(self.server.bucket_tool(&["keys", bucket])).unwrap()
    }

    fn backup(&self, buckets: &[&str]) {
        let ep = self.server.endpoint.clone();
        let mut a = vec!["backup", "bucket", "--source", "minio", "--endpoint", &ep];
        for b in buckets {
            a.extend(["--bucket", b]);
        }
        self.run(&a).ok();
    }

    fn restore(&self, args: &[&str]) -> Run {
        let ep = self.server.endpoint.clone();
        let mut a = vec!["--json", "restore", "bucket", "--endpoint", &ep];
        a.extend_from_slice(args);
        self.run(&a)
    }
}

fn per_bucket(r: &serde_json::Value, source: &str) -> serde_json::Value {
    r["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("no buckets array: {r}"))
        .iter()
        .find(|b| b["source"] == source)
        .unwrap_or_else(|| panic!("no entry for bucket {source}: {r}"))
        .clone()
}

#[test]
fn restore_bucket_selects_by_source_bucket() {
    let s = Setup::new();
    for b in ["raw", "std", "tgt", "xxx", "yyy"] {
        s.server.create_bucket(b);
    }
    // The same keys in both buckets, same sizes, different content.
    let content = |bucket: &str, key: &str| -> Vec<u8> {
        format!("{bucket}:{key}:{}", "z".repeat(40)).into_bytes()
    };
    let shared = ["USDCOP/2026-11-30.csv", "USDCOP/2026-12-01.csv"];
    for b in ["raw", "std"] {
        for k in shared {
            s.put(b, k, &content(b, k));
        }
        s.put(b, &format!("only-in-{b}"), &content(b, "own"));
    }
    s.backup(&["raw", "std"]);

    // Ambiguous: two buckets, one target. Refused with exit 2, the
    // snapshot's buckets listed, nothing written.
    let r = s.restore(&["--bucket", "tgt"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("2 buckets (raw, std)"), "{}", r.stderr);
    assert!(
        r.stderr.contains("--from-bucket raw --bucket tgt"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json()["error"]["exit_code"], 2, "{}", r.stdout_str());
    assert!(
        s.keys("tgt").is_empty(),
        "an ambiguous request wrote {:?}",
        s.keys("tgt")
    );

    // A bucket the snapshot does not hold; two sources into one target.
    for (args, says) in [
        (
            vec!["--map", "raw=xxx", "--map", "nope=yyy"],
            "holds no bucket \"nope\"; its buckets: raw, std",
        ),
        (
            vec!["--from-bucket", "nope", "--bucket", "tgt"],
            "holds no bucket \"nope\"",
        ),
        (
            vec!["--map", "raw=tgt", "--map", "std=tgt"],
            "both map to \"tgt\"",
        ),
        (vec!["--map", "raw"], "not SOURCE=TARGET"),
    ] {
        let r = s.restore(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    for b in ["tgt", "xxx", "yyy"] {
        assert!(s.keys(b).is_empty(), "a refused request wrote into {b}");
    }

    // One source bucket into a target.
    let r = s
        .restore(&["--from-bucket", "std", "--bucket", "tgt"])
        .ok()
        .json();
    assert_eq!(r["objects"], 3, "{r}");
    assert_eq!(per_bucket(&r, "std")["bucket"], "tgt");
    assert_eq!(r["buckets"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(
        s.keys("tgt"),
        vec![
            "USDCOP/2026-11-30.csv",
            "USDCOP/2026-12-01.csv",
            "only-in-std"
        ]
    );
    for k in shared {
        assert_eq!(s.get("tgt", k), content("std", k), "tgt/{k}");
    }

    // Each into its own target, reported per bucket.
    let r = s
        .restore(&["--map", "raw=xxx", "--map", "std=yyy"])
        .ok()
        .json();
    for (src, dst) in [("raw", "xxx"), ("std", "yyy")] {
        let b = per_bucket(&r, src);
        assert_eq!(b["bucket"], dst, "{r}");
        assert_eq!(b["objects"], 3, "{r}");
        assert_eq!(b["conflicts"], 0, "{r}");
        for k in shared {
            assert_eq!(s.get(dst, k), content(src, k), "{dst}/{k}");
        }
        assert_eq!(s.get(dst, &format!("only-in-{src}")), content(src, "own"));
    }
    assert_eq!(r["objects"], 6, "{r}");
    // The target store's requests: the listing of both targets and the
    // writes through their backends, counted on the one connection.
    let t = &r["target_requests"];
    assert!(t["list"].as_u64().unwrap() >= 2, "{r}");
    assert!(t["put"].as_u64().unwrap() >= 6, "{r}");
    assert!(t["bytes_up"].as_u64().unwrap() >= 6 * 40, "{r}");

    // Back under their own names: std's copy of a shared key was changed
    // since; it is a conflict (exit 1) reported with its bucket, then
    // replaced with --overwrite; raw is identical throughout.
    let k = shared[0];
    s.put("std", k, &content("new", k));
    let r = s.restore(&["--to-original-names"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("conflict: s3://std/{k}")),
        "{}",
        r.stderr
    );
    let r = s
        .restore(&["--to-original-names", "--overwrite"])
        .ok()
        .json();
    assert_eq!(per_bucket(&r, "raw")["skipped_identical"], 3, "{r}");
    assert_eq!(per_bucket(&r, "std")["overwritten"], 1, "{r}");
    assert_eq!(s.get("std", k), content("std", k));
    assert_eq!(s.get("raw", k), content("raw", k));
}

/// Start a restore with `TMPDIR=tmp`, wait until it has spooled a file,
/// check where and with which modes, then send `signal`.
fn spool_then_signal(s: &Setup, tmp: &Path, target: &str, signal: i32) -> (i32, String, String) {
    let ep = s.server.endpoint.clone();
    let mut c = s.cmd(&[
        "--json",
        "restore",
        "bucket",
        "--endpoint",
        &ep,
        "--bucket",
        target,
    ]);
    c.env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = c.spawn().unwrap();
    let start = Instant::now();
    let spooled = loop {
        if let Some(f) = files_under(tmp).into_iter().next() {
            break f;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "restore ended ({st}) before a spool file was seen in {}",
                tmp.display()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no spool file appeared in {} within 60 s",
            tmp.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let private = spooled.parent().unwrap();
    assert_eq!(
        private.parent().unwrap(),
        tmp,
        "spool {} not in a directory of its own",
        spooled.display()
    );
    let name = private.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("usdcop-dr-"), "{name}");
    assert_eq!(
        mode(private),
        0o700,
        "private directory {}",
        private.display()
    );
    assert_eq!(mode(&spooled), 0o600, "spool file {}", spooled.display());
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn restore_bucket_spool_is_private_and_removed_on_success_and_signals() {
    let s = Setup::new();
    for b in ["raw", "tgt-1", "tgt-2", "tgt-3"] {
        s.server.create_bucket(b);
    }
    // Above the 16 MiB spool threshold, and above the multipart one.
    let big = random_bytes(40 << 20, 7);
    s.put("raw", "big.bin", &big);
    s.put("raw", "small.txt", b"small");
    s.backup(&["raw"]);

    for (signal, code, name, target) in [
        (libc::SIGTERM, 143, "SIGTERM", "tgt-1"),
        (libc::SIGINT, 130, "SIGINT", "tgt-2"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (got, stdout, stderr) = spool_then_signal(&s, tmp.path(), target, signal);
        assert_eq!(got, code, "exit code after {name}: {stderr}");
        assert!(stderr.contains(&format!("stopped by {name}")), "{stderr}");
        // --json: the error object says so too, with the same exit code.
        let v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout after {name} is not JSON ({e}): {stdout:?}"));
        assert_eq!(v["error"]["exit_code"], code, "{v}");
        assert_eq!(v["error"]["kind"], "interrupted", "{v}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind after {name}: {left:?}");
    }

    // A whole restore: the bytes arrive, and nothing stays in TMPDIR.
    let tmp = tempfile::tempdir().unwrap();
    let mut c = s.cmd(&[
        "--json",
        "restore",
        "bucket",
        "--endpoint",
        &s.server.endpoint,
        "--bucket",
        "tgt-3",
    ]);
    c.env("TMPDIR", tmp.path());
    let r = run_cmd(c, None).ok().json();
    assert_eq!(r["objects"], 2, "{r}");
    assert!(
        s.get("tgt-3", "big.bin") == big,
        "tgt-3/big.bin differs from the source"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind after a restore: {left:?}");
}

/// An object whose data is gone from the repository is reported once on
/// stderr, as it happens, with its full s3:// URL (not again at the end),
/// and the run fails as an integrity error; the others are restored.
#[test]
fn restore_bucket_reports_each_unrestorable_object_once() {
    let s = Setup::new();
    for b in ["raw", "tgt"] {
        s.server.create_bucket(b);
    }
    let keys = ["USDCOP/a.csv", "USDCOP/b.csv"];
    for (i, k) in keys.into_iter().enumerate() {
        s.put("raw", k, &random_bytes(3000, i as u64));
    }
    s.backup(&["raw"]);
    // Every data pack gone (the entry list's tree pack stays): no object
    // can be restored.
    let data_packs = common::runtime().block_on(async {
        use usdcop_dr::format::pack::BlobKind;
        let backend = std::sync::Arc::new(
            usdcop_dr::backend::local::LocalBackend::new(s.repo.clone()).unwrap(),
        );
        let repo = usdcop_dr::repository::Repository::open(backend, common::PASSWORD.as_bytes())
            .await
            .unwrap();
        let mut out = vec![];
        for p in usdcop_dr::backend::list_all(repo.backend(), "data/")
            .await
            .unwrap()
        {
            let id = usdcop_dr::format::names::id_of(&p.name).unwrap();
            let header = repo.read_pack_header(&id, p.size).await.unwrap();
            if header.iter().all(|b| b.kind == BlobKind::Data) {
                out.push(s.repo.join(&p.name));
            }
        }
        out
    });
    assert!(!data_packs.is_empty());
    for p in data_packs {
        std::fs::remove_file(p).unwrap();
    }
    let r = s.restore(&["--from-bucket", "raw", "--bucket", "tgt"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    for k in keys {
        let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains(k)).collect();
        assert_eq!(
            lines.len(),
            1,
            "{k} not reported exactly once: {}",
            r.stderr
        );
        assert!(
            lines[0].contains(&format!("not restored: s3://tgt/{k}: ")),
            "{}",
            r.stderr
        );
    }
    assert!(
        r.stderr
            .contains("2 object(s) could not be restored intact"),
        "{}",
        r.stderr
    );
    assert!(s.keys("tgt").is_empty(), "{:?}", s.keys("tgt"));
}
