//! The WAL archive against a real cluster: PostgreSQL's own
//! archive_command runs `usdcop-dr wal-push %p` (as the server's OS
//! user, settings and passphrase from the configuration file only), and
//! `wal-fetch` gives back every archived file byte for byte. Also: a retry
//! is idempotent, a different file under an archived name is refused and
//! the stored one kept, a foreign cluster's segment is refused naming both
//! system identifiers, a missing name exits 1 with one line, and the
//! per-segment cost with and without the WAL key cache is measured.

#[path = "common/archive.rs"]
mod archive;
mod common;
#[path = "common/postgres.rs"]
mod postgres;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

use archive::*;
use postgres::*;

#[test]
fn postgres_archives_through_wal_push_and_wal_fetch_gives_it_back() {
    let archive = Archive::new();
    let conf = format!(
        "archive_mode = on\narchive_command = '{}'\narchive_timeout = 1s\nwal_level = replica\n",
        archive.archive_command()
    );
    let pg = PgServer::start_with_conf(&PgOptions::default(), &conf);
    pg.psql(
        "postgres",
        "CREATE TABLE ticks (i int, pad text); \
         INSERT INTO ticks SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g; \
         SELECT pg_switch_wal();",
    );
    for _ in 0..2 {
        pg.psql(
            "postgres",
            "INSERT INTO ticks SELECT g, md5(g::text) FROM generate_series(1, 5000) g; \
             SELECT pg_switch_wal();",
        );
    }
    wait_archived(&pg, 3);
    let archived = archive.archived("00000001");
    assert!(archived.len() >= 3, "{archived:?}");

    // The record of the cluster is this cluster's system identifier,
    // read from the segments' long page headers.
    let sysid = system_identifier(&pg);
    let first = &archived[0].0;
    let pg_wal = pg.data_dir().join("pg_wal");
    let seg = std::fs::read(pg_wal.join(first)).unwrap_or_else(|_| archive.fetch(first).1);
    let again = archive.push_copy(first, &seg).ok();
    assert_eq!(again.json()["stored"], false, "a retry stores nothing");
    assert_eq!(again.json()["unlock"], "cached");

    // Every archived file comes back byte for byte.
    for (name, hash) in &archived {
        let (r, bytes) = archive.fetch(name);
        assert_eq!(r.code, 0, "wal-fetch {name}: {}", r.stderr);
        assert_eq!(&sha256_hex(&bytes), hash, "{name}");
        if let Ok(orig) = std::fs::read(pg_wal.join(name)) {
            assert!(orig == bytes, "{name} differs from pg_wal's copy");
        }
    }

    // Another file under an archived name: refused, the stored one kept.
    let mut other = seg.clone();
    let last = other.len() - 1;
    other[last] ^= 0xFF;
    let r = archive.push_copy(first, &other);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("already archived with other content") && r.stderr.contains(first),
        "{}",
        r.stderr
    );
    assert_eq!(archive.fetch(first).1, seg, "the stored file was kept");

    // A segment of another cluster (a second initdb) is refused, naming
    // both system identifiers.
    let foreign = PgServer::start();
    let foreign_id = system_identifier(&foreign);
    assert_ne!(foreign_id, sysid);
    let foreign_wal = foreign.data_dir().join("pg_wal");
    let foreign_seg = std::fs::read_dir(&foreign_wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .min()
        .expect("a new cluster has a segment");
    let bytes = std::fs::read(foreign_wal.join(&foreign_seg)).unwrap();
    let r = archive.push_copy("00000001000000FE00000001", &bytes);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&foreign_id) && r.stderr.contains(&sysid),
        "{}",
        r.stderr
    );
    assert!(archive
        .archived("00000001")
        .iter()
        .all(|(n, _)| n != "00000001000000FE00000001"));

    // A history file is archived under its timeline and comes back.
    let history = b"1\t0/3000000\tno recovery target specified\n";
    archive.push_copy("00000002.history", history).ok();
    assert_eq!(archive.archived("00000002").len(), 1);
    assert_eq!(archive.fetch("00000002.history").1, history);
    // A .partial segment (what PostgreSQL archives of the old timeline
    // after a standby's promotion) is archived, and comes back.
    let r = archive.push_copy("00000001000000FE00000002.partial", &seg);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(archive.fetch("00000001000000FE00000002.partial").1, seg);

    // A name the archive does not hold: exit 1, one line (the normal end
    // of recovery).
    let (r, _) = archive.fetch("00000001000000FF000000FF");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("00000001000000FF000000FF"));

    // Per-segment cost: the same kind of segment under fresh names, with
    // the key cache and without it (the cache file removed first).
    let cache_files: Vec<PathBuf> = std::fs::read_dir(archive.path("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("wal-key-"))
        .collect();
    assert_eq!(cache_files.len(), 1, "{cache_files:?}");
    let mode = std::fs::metadata(&cache_files[0])
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // (wall time of the process, its own unlock time)
    let timed = |cached: bool, i: u32| -> (f64, f64) {
        if !cached {
            std::fs::remove_file(&cache_files[0]).unwrap();
        }
        let name = format!("00000001000000FD{i:08X}");
        let t = Instant::now();
        let r = archive.push_copy(&name, &seg).ok();
        let wall = t.elapsed().as_secs_f64();
        let want = if cached { "cached" } else { "passphrase" };
        assert_eq!(r.json()["unlock"], want);
        assert_eq!(r.json()["stored"], true);
        (wall, r.json()["unlock_s"].as_f64().unwrap())
    };
    let n = 5;
    let with: Vec<(f64, f64)> = (0..n).map(|i| timed(true, i)).collect();
    let without: Vec<(f64, f64)> = (n..2 * n).map(|i| timed(false, i)).collect();
    let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = v.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    eprintln!(
        "wal-push of a {} MiB segment, per process (median of {n}): with the key cache \
         {:.3} s wall ({:.3} s to unlock), without {:.3} s wall ({:.3} s to unlock)",
        seg.len() >> 20,
        median(&with, |x| x.0),
        median(&with, |x| x.1),
        median(&without, |x| x.0),
        median(&without, |x| x.1),
    );
}
