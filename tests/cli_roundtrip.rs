//! Backups restore byte-identical, with metadata; unchanged data is not stored twice.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{random_bytes, TestRepo};

#[test]
fn stdin_round_trip_and_json_shapes() {
    let repo = TestRepo::new();
    let data = random_bytes(3_000_000, 1);
    let b = repo.backup_stdin("pg-usdcop", "usdcop.dump", &data);
    for key in ["snapshot_id", "bytes_in", "bytes_stored_new", "duration_s"] {
        assert!(b.get(key).is_some(), "backup --json lacks {key}: {b}");
    }
    assert_eq!(b["bytes_in"], 3_000_000);
    let restored = repo.restore_stdout("latest");
    assert!(restored == data, "restored stream differs");

    let snaps = repo.run(&["snapshots", "--json"]).ok().json();
    let arr = snaps.as_array().unwrap();
    assert_eq!(arr.len(), 1);
    for key in ["id", "time", "source", "kind"] {
        assert!(arr[0].get(key).is_some(), "snapshots --json lacks {key}");
    }
    assert_eq!(arr[0]["source"], "pg-usdcop");
    assert_eq!(arr[0]["kind"], "stdin");
    chrono::DateTime::parse_from_rfc3339(arr[0]["time"].as_str().unwrap()).expect("RFC 3339 time");
}

#[test]
fn empty_and_tiny_streams() {
    let repo = TestRepo::new();
    for (i, data) in [vec![], vec![42u8], random_bytes(100, 2)]
        .into_iter()
        .enumerate()
    {
        let id = repo.backup_stdin("s", &format!("f{i}"), &data)["snapshot_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(repo.restore_stdout(&id), data, "stream {i}");
    }
}

#[test]
fn backup_time_is_recorded() {
    let repo = TestRepo::new();
    let out = repo
        .run_stdin(
            &[
                "--json",
                "backup",
                "stdin",
                "--source",
                "old",
                "--stdin-name",
                "x",
                "--time",
                "2025-01-02T03:04:05Z",
            ],
            b"x",
        )
        .ok()
        .json();
    assert_eq!(out["time"], "2025-01-02T03:04:05Z");
    let bad = repo.run_stdin(
        &[
            "backup",
            "stdin",
            "--source",
            "old",
            "--stdin-name",
            "x",
            "--time",
            "yesterday",
        ],
        b"x",
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[test]
fn files_round_trip_with_metadata() {
    let repo = TestRepo::new();
    let src = repo.scratch("trading");
    std::fs::create_dir_all(src.join("nginx")).unwrap();
    std::fs::create_dir_all(src.join("prometheus")).unwrap();
    std::fs::create_dir_all(src.join("empty dir")).unwrap();
    std::fs::write(
        src.join("docker-compose.yml"),
        b"services:\n  postgres:\n    image: timescale/timescaledb\n",
    )
    .unwrap();
    std::fs::write(src.join(".env"), b"POSTGRES_PASSWORD=not-a-real-secret\n").unwrap();
    std::fs::write(src.join("nginx/nginx.conf"), b"events {}\nhttp {}\n").unwrap();
    std::fs::write(
        src.join("prometheus/prometheus.yml"),
        b"scrape_configs: []\n",
    )
    .unwrap();
    std::fs::write(src.join("model ñ.bin"), random_bytes(700_000, 3)).unwrap();
    std::os::unix::fs::symlink("nginx/nginx.conf", src.join("current.conf")).unwrap();
    std::fs::set_permissions(src.join(".env"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(src.join("nginx"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_file_times(src.join("docker-compose.yml"), old, old).unwrap();
    filetime::set_file_times(src.join("nginx"), old, old).unwrap();

    let src_str = src.to_str().unwrap();
    repo.run(&["backup", "files", "--source", "config", src_str])
        .ok();
    let target = repo.scratch("restore");
    repo.run(&[
        "restore",
        "--snapshot",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    let restored = target.join(src_str.trim_start_matches('/'));

    for rel in [
        "docker-compose.yml",
        ".env",
        "nginx/nginx.conf",
        "prometheus/prometheus.yml",
        "model ñ.bin",
    ] {
        assert_eq!(
            std::fs::read(src.join(rel)).unwrap(),
            std::fs::read(restored.join(rel)).unwrap(),
            "{rel}"
        );
        let (a, b) = (
            std::fs::metadata(src.join(rel)).unwrap(),
            std::fs::metadata(restored.join(rel)).unwrap(),
        );
        assert_eq!(a.mode(), b.mode(), "mode of {rel}");
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "mtime of {rel}"
        );
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "owner of {rel}");
    }
    let d = std::fs::metadata(restored.join("nginx")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o750);
    assert_eq!(
        d.mtime(),
        1_600_000_000,
        "directory mtime restored after its children"
    );
    assert!(restored.join("empty dir").is_dir());
    assert_eq!(
        std::fs::read_link(restored.join("current.conf"))
            .unwrap()
            .to_str()
            .unwrap(),
        "nginx/nginx.conf"
    );

    // Each way of reaching the disk restores the same bytes.
    for sync in ["file", "none"] {
        let t = repo.scratch(&format!("restore-{sync}"));
        repo.run(&["restore", "--sync", sync, "--target", t.to_str().unwrap()])
            .ok();
        let r = t.join(src_str.trim_start_matches('/'));
        for rel in ["docker-compose.yml", "nginx/nginx.conf", "model ñ.bin"] {
            assert_eq!(
                std::fs::read(src.join(rel)).unwrap(),
                std::fs::read(r.join(rel)).unwrap(),
                "--sync {sync}: {rel}"
            );
        }
    }
    assert_eq!(
        repo.run(&["restore", "--sync", "later", "--target", "/tmp/x"])
            .code,
        2
    );

    // --path restores a subset; --stdout streams one file.
    let one = repo
        .run(&[
            "restore",
            "--stdout",
            "--path",
            &format!("{}/nginx/nginx.conf", src_str.trim_start_matches('/')),
        ])
        .ok();
    assert_eq!(one.stdout, b"events {}\nhttp {}\n");
    let many = repo.run(&["restore", "--stdout"]);
    assert_eq!(
        many.code, 2,
        "--stdout of a multi-file snapshot is a usage error: {}",
        many.stderr
    );
}

#[test]
fn unchanged_files_are_not_read_again_and_add_nothing() {
    let repo = TestRepo::new();
    let src = repo.scratch("cfg");
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}")), random_bytes(50_000, i)).unwrap();
    }
    let s = src.to_str().unwrap();
    let first = repo
        .run(&["--json", "backup", "files", "--source", "cfg", s])
        .ok()
        .json();
    assert_eq!(first["files_unchanged"], 0);
    let packs_before = repo.objects("data").len();
    let second = repo
        .run(&["--json", "backup", "files", "--source", "cfg", s])
        .ok()
        .json();
    assert_eq!(second["files_unchanged"], 20);
    assert_eq!(second["bytes_stored_new"], 0);
    assert_eq!(second["parent"], first["snapshot_id"]);
    assert_eq!(
        repo.objects("data").len(),
        packs_before,
        "an unchanged backup adds no pack"
    );
    std::fs::write(src.join("f3"), random_bytes(50_000, 999)).unwrap();
    let third = repo
        .run(&["--json", "backup", "files", "--source", "cfg", s])
        .ok()
        .json();
    assert_eq!(third["files_unchanged"], 19);
    assert!(third["bytes_stored_new"].as_u64().unwrap() > 40_000);
}

#[test]
fn dedup_of_a_large_stream_with_one_percent_changed() {
    let repo = TestRepo::new();
    let mut data = random_bytes(20_000_000, 7);
    let first = repo.backup_stdin("dump", "d", &data);
    let stored_first = first["bytes_stored_new"].as_u64().unwrap();
    let packs = repo.objects("data").len();
    let again = repo.backup_stdin("dump", "d", &data);
    assert_eq!(
        again["bytes_stored_new"], 0,
        "unchanged stream stores nothing"
    );
    // Only the new snapshot's entry list: one small leaf (the entry's
    // mtime is the backup time), in a tree pack of its own.
    assert!(
        again["tree_bytes_stored_new"].as_u64().unwrap() < 64 << 10,
        "{again}"
    );
    assert_eq!(
        repo.objects("data").len(),
        packs + 1,
        "unchanged stream adds no data pack"
    );

    // Change ~1 % of the bytes in 4 places, and append 1 %. (Chunk
    // boundaries depend on the repository's random chunker seed, so the
    // stored amount varies a little from run to run: about 4–6 % here.)
    for i in 0..4 {
        let at = 1_000_000 + i * 4_700_000;
        data[at..at + 50_000].copy_from_slice(&random_bytes(50_000, 100 + i as u64));
    }
    data.extend_from_slice(&random_bytes(200_000, 55));
    let changed = repo.backup_stdin("dump", "d", &data);
    let new = changed["bytes_stored_new"].as_u64().unwrap();
    let fraction = new as f64 / stored_first as f64;
    eprintln!(
        "dedup: stored {:.2} % after changing 1 % and appending 1 %",
        fraction * 100.0
    );
    assert!(
        fraction < 0.10,
        "2 % changed/appended stored {new} bytes = {:.1} % of the first backup",
        fraction * 100.0
    );
    assert_eq!(
        repo.restore_stdout(changed["snapshot_id"].as_str().unwrap()),
        data
    );
    assert_eq!(
        repo.restore_stdout(first["snapshot_id"].as_str().unwrap())[..1_000_000],
        data[..1_000_000]
    );
}
