//! `backup bucket` / `restore bucket` against real S3 servers (moto with
//! 1,000 objects, Garage with 2,000) of varied keys, sizes, content types
//! and user metadata,
//! backed up into an S3 repository on the same server, restored into
//! another bucket and compared object by object; an incremental run
//! downloads exactly the changed objects.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::time::Instant;

use common::{command, run_cmd, Run};
use servers::{S3Server, ServerKind};

fn cmd(server: &S3Server, repo: &str, args: &[&str]) -> Run {
    let mut c = command(std::path::Path::new(repo));
    c.envs(server.env()).args(args);
    run_cmd(c, None)
}

fn tool(server: &S3Server, args: &[&str]) -> serde_json::Value {
    server.bucket_tool(args)
}

fn json_u64(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

fn bucket_round_trip(kind: ServerKind, objects: usize) {
    let t0 = Instant::now();
    let server = S3Server::start(kind);
    for b in ["source-bucket", "repo-bucket", "restored"] {
        server.create_bucket(b);
    }
    let n = objects.to_string();
    let created = tool(&server, &["create", "source-bucket", &n]);
    eprintln!("{kind}: created {created} in {:?}", t0.elapsed());
    let repo = "s3://repo-bucket/prefix";
    let ep = server.endpoint.clone();
    cmd(
        &server,
        repo,
        &[
            "init",
            "--kdf-memory-kib",
            "1024",
            "--chunk-avg-size",
            "65536",
            "--pack-size",
            "4194304",
        ],
    )
    .ok();

    let backup = |args: &[&str]| {
        let mut a = vec![
            "--json",
            "backup",
            "bucket",
            "--source",
            "minio",
            "--endpoint",
            &ep,
            "--bucket",
            "source-bucket",
        ];
        a.extend_from_slice(args);
        cmd(&server, repo, &a).ok().json()
    };
    let t = Instant::now();
    let first = backup(&[]);
    eprintln!("{kind}: first backup {:?}: {first}", t.elapsed());
    assert_eq!(json_u64(&first, &["files"]), objects as u64);
    assert_eq!(json_u64(&first, &["files_unchanged"]), 0);
    assert_eq!(
        json_u64(&first, &["bytes_in"]),
        json_u64(&created, &["bytes"])
    );
    assert_eq!(
        json_u64(&first, &["source_requests", "get"]),
        objects as u64,
        "one GET per object: {first}"
    );
    assert_eq!(first["kind"], "bucket");

    // Unchanged bucket: only the listing.
    let t = Instant::now();
    let again = backup(&[]);
    eprintln!("{kind}: unchanged backup {:?}", t.elapsed());
    assert_eq!(json_u64(&again, &["source_requests", "get"]), 0, "{again}");
    assert_eq!(json_u64(&again, &["files_unchanged"]), objects as u64);
    assert_eq!(json_u64(&again, &["bytes_stored_new"]), 0);

    // Restore (into a directory) works for bucket snapshots too: every
    // key, including `..`, `//` and a leading `/`, lands under the target.
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let r = cmd(
        &server,
        repo,
        &[
            "--json",
            "restore",
            "--target",
            dir.path().to_str().unwrap(),
        ],
    )
    .ok()
    .json();
    eprintln!("{kind}: restore to a directory {:?}", t.elapsed());
    assert_eq!(json_u64(&r, &["files"]), objects as u64);
    // Some stores normalise such keys away (Garage stores "/leading" as
    // "leading" and drops "weird/../dotdot"): check the ones the source has.
    let keys = tool(&server, &["keys", "source-bucket"]);
    let has = |k: &str| keys.as_array().unwrap().iter().any(|v| v == k);
    for (key, file) in [
        ("weird/../dotdot", "source-bucket/weird/%2E%2E/dotdot"),
        ("/leading", "source-bucket/%2Fleading"),
    ] {
        if has(key) || kind == ServerKind::Moto {
            let p = dir.path().join(file);
            assert!(p.is_file(), "{} missing (key {key:?})", p.display());
        }
    }

    // Restore into another bucket; every object compared with the source.
    let restore = |args: &[&str]| {
        let mut a = vec![
            "--json",
            "restore",
            "bucket",
            "--endpoint",
            &ep,
            "--bucket",
            "restored",
        ];
        a.extend_from_slice(args);
        cmd(&server, repo, &a)
    };
    let t = Instant::now();
    let r = restore(&[]).ok().json();
    eprintln!("{kind}: bucket restore {:?}: {r}", t.elapsed());
    assert_eq!(json_u64(&r, &["objects"]), objects as u64);
    assert_eq!(r["conflicts"].as_array().unwrap().len(), 0);
    let cmp = tool(&server, &["compare", "source-bucket", "restored"]);
    assert_eq!(cmp["problems"].as_array().unwrap().len(), 0, "{cmp}");
    assert_eq!(json_u64(&cmp, &["compared"]), objects as u64);

    // 1 % of the objects change: exactly those are downloaded.
    let changed_count = (objects / 100).max(1);
    let changed = tool(
        &server,
        &["modify", "source-bucket", &n, &changed_count.to_string()],
    );
    let t = Instant::now();
    let third = backup(&[]);
    eprintln!(
        "{kind}: backup after changing {changed_count} objects {:?}",
        t.elapsed()
    );
    assert_eq!(
        json_u64(&third, &["source_requests", "get"]),
        changed_count as u64,
        "GETs must equal the changed objects ({changed}): {third}"
    );
    assert_eq!(
        json_u64(&third, &["files_unchanged"]),
        (objects - changed_count) as u64
    );

    // The restored bucket now differs in exactly those objects: refused
    // by default (exit 1, each listed), replaced with --overwrite.
    let t = Instant::now();
    let refused = restore(&[]);
    eprintln!("{kind}: refused restore {:?}", t.elapsed());
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    let first_json: serde_json::Value = serde_json::Deserializer::from_slice(&refused.stdout)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let mut conflicts: Vec<String> = first_json["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> = changed["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    conflicts.sort();
    expected.sort();
    assert_eq!(conflicts, expected, "{first_json}");
    assert_eq!(json_u64(&first_json, &["objects"]), 0);
    assert_eq!(
        json_u64(&first_json, &["skipped_identical"]),
        (objects - changed_count) as u64
    );
    assert!(refused.stderr.contains("--overwrite"), "{}", refused.stderr);
    let t = Instant::now();
    let over = restore(&["--overwrite"]).ok().json();
    eprintln!("{kind}: --overwrite restore {:?}: {over}", t.elapsed());
    assert_eq!(
        json_u64(&over, &["overwritten"]),
        changed_count as u64,
        "{over}"
    );
    assert_eq!(
        json_u64(&over, &["objects"]),
        changed_count as u64,
        "{over}"
    );
    let cmp = tool(&server, &["compare", "source-bucket", "restored"]);
    assert_eq!(cmp["problems"].as_array().unwrap().len(), 0, "{cmp}");
    eprintln!("{kind}: total {:?}", t0.elapsed());
}

#[test]
fn bucket_backup_and_restore_on_moto() {
    // moto answers ~150 requests/s: 1,000 objects keep this under a minute.
    // USDCOP_DR_BUCKET_TEST_OBJECTS=2000 runs the full-size variant.
    let n = std::env::var("USDCOP_DR_BUCKET_TEST_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    bucket_round_trip(ServerKind::Moto, n);
}

#[test]
fn bucket_backup_and_restore_on_garage() {
    // Garage is a real distributed store (and ignores If-None-Match); it
    // answers much faster than moto, so it gets the full-size bucket.
    let n = std::env::var("USDCOP_DR_BUCKET_TEST_OBJECTS_GARAGE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    bucket_round_trip(ServerKind::Garage, n);
}
