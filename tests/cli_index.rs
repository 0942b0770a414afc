//! Index objects at scale (issue 9 §1–2): `repair index` splits its output
//! under the size cap, `repair index --compact` rewrites many objects as
//! few, and a backup compacts once small objects pile up. Every case
//! checks the snapshots still restore byte for byte and `verify` passes.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::sync::Arc;

use common::{random_bytes, runtime, TestRepo};
use usdcop_dr::crypto::Domain;
use usdcop_dr::format::index::{self as index_fmt, IndexFile};
use usdcop_dr::format::{codec, names};

fn index_count(repo: &TestRepo) -> usize {
    repo.objects("index").len()
}

fn snapshot_id(summary: &serde_json::Value) -> String {
    summary["snapshot_id"].as_str().unwrap().to_owned()
}

fn verify_ok(repo: &TestRepo) {
    let v = repo.run(&["--json", "verify"]).ok().json();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
}

/// `repair index` with a small cap writes several objects, each within
/// the cap, that together index every chunk again.
#[test]
fn repair_index_splits_its_output_under_the_cap() {
    let repo = TestRepo::new();
    let data = random_bytes(3_000_000, 11);
    let s = repo.backup_stdin("db", "d.dump", &data);
    // Data chunks and the snapshot's list tree node(s): every blob indexed.
    let chunks = runtime().block_on(async {
        repo.open_lib()
            .await
            .load_index()
            .await
            .unwrap()
            .blob_count() as u64
    });
    assert!(chunks > s["chunks"].as_u64().unwrap(), "{s}");
    for p in repo.objects("index") {
        std::fs::remove_file(p).unwrap();
    }
    let cap = 1000;
    runtime().block_on(async {
        let lib = Arc::new(repo.open_lib().await);
        let r = usdcop_dr::commands::repair::index_with(lib.clone(), cap)
            .await
            .unwrap();
        assert_eq!(r.chunks_recovered, chunks);
        assert!(
            r.index_written.len() as u64 >= chunks * 46 / cap as u64,
            "{} objects for {chunks} chunks",
            r.index_written.len()
        );
        for id in &r.index_written {
            let sealed = lib
                .load_sealed(&names::in_dir(names::INDEX, id), Domain::Index)
                .await
                .unwrap();
            let plain = codec::decompress(&sealed, index_fmt::MAX_PLAIN_LEN, "index").unwrap();
            assert!(plain.len() <= cap, "index object of {} bytes", plain.len());
        }
        // A cap no object fits in is refused, nothing written.
        let before = index_count(&repo);
        for p in repo.objects("index") {
            std::fs::remove_file(p).unwrap();
        }
        assert!(usdcop_dr::commands::repair::index_with(lib.clone(), 40)
            .await
            .is_err());
        assert!(index_count(&repo) == 0 && before > 0);
        usdcop_dr::commands::repair::index(lib).await.unwrap();
    });
    assert_eq!(repo.restore_stdout(&snapshot_id(&s)), data);
    verify_ok(&repo);
}

/// `repair index --compact` replaces every index object by one (small
/// repository), deletes the ones replaced, and changes nothing a restore
/// sees; run again, it has nothing to do.
#[test]
fn repair_index_compact_rewrites_many_objects_as_few() {
    let repo = TestRepo::new();
    let mut snaps = vec![];
    for i in 0..5 {
        let data = random_bytes(1_200_000 + i * 100_000, 20 + i as u64);
        let s = repo.backup_stdin("db", "d.dump", &data);
        snaps.push((snapshot_id(&s), data));
    }
    let before = repo.objects("index");
    assert!(before.len() >= 5, "{before:?}");
    let r = repo
        .run(&["--json", "repair", "index", "--compact"])
        .ok()
        .json();
    let c = &r["compaction"];
    assert_eq!(
        c["objects_before"].as_u64(),
        Some(before.len() as u64),
        "{r}"
    );
    assert_eq!(
        c["objects_replaced"].as_u64(),
        Some(before.len() as u64),
        "{r}"
    );
    assert_eq!(c["written"].as_array().unwrap().len(), 1, "{r}");
    let after = repo.objects("index");
    assert_eq!(after.len(), 1);
    assert!(before.iter().all(|p| !p.exists()));
    for (id, data) in &snaps {
        assert_eq!(&repo.restore_stdout(id), data);
    }
    verify_ok(&repo);
    let again = repo
        .run(&["--json", "repair", "index", "--compact"])
        .ok()
        .json();
    assert_eq!(again["compaction"]["objects_replaced"].as_u64(), Some(0));
    assert_eq!(repo.objects("index"), after);
}

/// A backup that finds more than 64 small index objects merges them at its
/// end: the repository is left with a handful, and every snapshot restores.
#[test]
fn backup_compacts_many_small_index_objects() {
    let repo = TestRepo::new();
    let first = random_bytes(2_500_000, 31);
    let s1 = repo.backup_stdin("db", "d.dump", &first);
    // 70 small index objects: one per pack (duplicating the originals),
    // then empty ones.
    runtime().block_on(async {
        let lib = repo.open_lib().await;
        let index = lib.load_index().await.unwrap();
        let mut n = 0;
        for p in index.pack_iter() {
            lib.save_index(&IndexFile {
                supersedes: vec![],
                packs: vec![p],
            })
            .await
            .unwrap();
            n += 1;
        }
        for _ in n..70 {
            lib.save_index(&IndexFile::default()).await.unwrap();
        }
    });
    let many = index_count(&repo);
    assert!(many > 70, "{many}");
    let second = random_bytes(600_000, 32);
    let s2 = repo.backup_stdin("db", "d.dump", &second);
    let after = index_count(&repo);
    assert!(after <= 2, "{after} index objects left of {many}");
    assert_eq!(repo.restore_stdout(&snapshot_id(&s1)), first);
    assert_eq!(repo.restore_stdout(&snapshot_id(&s2)), second);
    verify_ok(&repo);
    // The chunks of both are still known: a third backup of the same bytes
    // stores nothing new.
    let s3 = repo.backup_stdin("db", "d.dump", &first);
    assert_eq!(s3["chunks_new"].as_u64(), Some(0), "{s3}");
}

/// Issue 9 "must show": a no-change nightly backup of a files source with
/// a warm local cache reads no index object from a real S3 server (moto):
/// against the same backup without the cache, it makes exactly one GET
/// less per index object (the others are the snapshot and lock reads).
#[test]
fn warm_cache_nightly_backup_reads_no_index_objects_from_s3() {
    let server = servers::S3Server::start(servers::ServerKind::Moto);
    server.create_bucket("backups");
    let repo = "s3://backups/nightly";
    let cache = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut c = common::command(std::path::Path::new(repo));
        c.envs(server.env())
            .env("USDCOP_DR_CACHE_DIR", cache.path())
            .args(args);
        common::run_cmd(c, None).ok()
    };
    run(&[
        "init",
        "--kdf-memory-kib",
        "1024",
        "--chunk-avg-size",
        "65536",
        "--pack-size",
        "1048576",
    ]);
    let src = cache.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let backup = |extra: &[&str]| {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "backup",
            "files",
            "--source",
            "files",
            src.to_str().unwrap(),
        ]);
        run(&args).json()
    };
    // Five days of changes: several index objects.
    for day in 0..5u64 {
        std::fs::write(
            src.join(format!("day{day}.bin")),
            random_bytes(1_500_000, 40 + day),
        )
        .unwrap();
        backup(&[]);
    }
    let listing = run(&["--json", "stats"]).json();
    let index_objects = listing["index_objects"].as_u64().unwrap();
    assert!(index_objects >= 5, "{listing}");
    // The cache is warm after the last backup's load: it covers every
    // object but those that backup wrote. One more no-change run catches up.
    backup(&[]);
    let cold = backup(&["--no-cache"]);
    let warm = backup(&[]);
    for b in [&cold, &warm] {
        assert_eq!(b["chunks_new"].as_u64(), Some(0), "{b}");
        assert_eq!(b["index_objects_written"].as_u64(), Some(0), "{b}");
    }
    let (c, w) = (&cold["requests"], &warm["requests"]);
    let get = |r: &serde_json::Value| r["get"].as_u64().unwrap();
    eprintln!("no-change backup, {index_objects} index objects: cold {c}, warm {w}");
    // The warm run reads no index object; the snapshot summaries it had
    // not seen yet (the catch-up's and the cold run's) it GETs once and
    // keeps. A second warm run then GETs only the first warm run's: the
    // cold run's GETs (every index object, the 6 summaries there were, the
    // lock reads) minus every index object and 5 of those 6 summaries.
    let warm2 = backup(&[]);
    let w2 = &warm2["requests"];
    eprintln!("second warm run: {w2}");
    assert!(get(c) - get(w) >= index_objects, "cold {c}\nwarm {w}");
    assert_eq!(get(c) - get(w2), index_objects + 5, "cold {c}\nwarm2 {w2}");
    // Writes: the lock and the snapshot only.
    assert_eq!(w["multipart"].as_u64(), Some(0), "{w}");
    assert!(w["put"].as_u64().unwrap() <= 3, "{w}");
    // And the cache holds nothing readable: no chunk id or pack name in clear.
    let files = common::files_under(cache.path());
    assert!(files.iter().any(|f| f.ends_with("index")), "{files:?}");
}
