//! One stray or damaged object must not stop the repository (issue 9 §3):
//! an S3 console "folder" object (`index/`, 0 bytes), an NFS silly-rename
//! file (`.nfs…`) or a damaged index object is skipped with a warning by
//! backup, restore and `repair index` (which re-indexes the packs a damaged
//! index object listed); `verify` still reports the damaged object (exit 3).
//! A malformed key object next to a good one does not stop `open`.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::path::Path;

use common::{command, random_bytes, run_cmd, Run, TestRepo};
use servers::{S3Server, ServerKind};

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn warnings_of(json: &serde_json::Value) -> Vec<(String, String)> {
    json["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings array: {json}"))
        .iter()
        .map(|w| {
            (
                w["kind"].as_str().unwrap().to_owned(),
                w["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn stray_and_damaged_index_objects_are_skipped_and_repaired() {
    let repo = TestRepo::new();
    let first = random_bytes(1_500_000, 91);
    let s1 = repo.backup_stdin("db", "d.dump", &first);
    let id1 = s1["snapshot_id"].as_str().unwrap().to_owned();
    let real_index = repo.objects("index");
    assert_eq!(real_index.len(), 1, "{real_index:?}");

    // An NFS silly-rename file and a garbage object named by its own hash
    // (it passes the name check, then fails to authenticate).
    let index_dir = real_index[0].parent().unwrap().to_path_buf();
    std::fs::write(index_dir.join(".nfs000000000001a2b300000001"), b"old index").unwrap();
    let garbage = b"not an index object at all".to_vec();
    let garbage_name = format!("index/{}", sha256_hex(&garbage));
    std::fs::write(repo.path.join(&garbage_name), &garbage).unwrap();

    // Backup still works, saying what it skipped.
    let second = random_bytes(700_000, 92);
    let b = repo
        .run_stdin(
            &[
                "--json",
                "backup",
                "stdin",
                "--source",
                "db",
                "--stdin-name",
                "d.dump",
            ],
            &second,
        )
        .ok();
    let w = warnings_of(&b.json());
    assert!(
        w.iter()
            .any(|(k, p)| k == "skipped_object" && p.ends_with(".nfs000000000001a2b300000001")),
        "no warning for the .nfs file: {w:?}"
    );
    assert!(
        w.iter()
            .any(|(k, p)| k == "skipped_object" && *p == garbage_name),
        "no warning for the damaged index object: {w:?}"
    );
    let id2 = b.json()["snapshot_id"].as_str().unwrap().to_owned();

    // Restore still works, with the warning on stderr.
    let out = repo.run(&["restore", "--snapshot", &id1, "--stdout"]).ok();
    assert!(
        out.stdout == first,
        "restore of the first snapshot: wrong bytes"
    );
    assert!(
        out.stderr.contains(&garbage_name),
        "restore does not warn about {garbage_name}: {}",
        out.stderr
    );
    assert!(
        repo.restore_stdout(&id2) == second,
        "second snapshot: wrong bytes"
    );

    // Verify: the damaged object is a problem (exit 3); the stray one a warning.
    let v = repo.run(&["--json", "verify"]);
    assert_eq!(v.code, 3, "verify: {}\n{}", v.stdout_str(), v.stderr);
    let report = v.json();
    let problems: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["object"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(problems, vec![garbage_name.clone()], "{report}");
    assert!(
        warnings_of(&report)
            .iter()
            .any(|(k, p)| k == "skipped_object" && p.contains(".nfs")),
        "{report}"
    );

    // A real index object truncated: its packs are unindexed until
    // `repair index`, which itself must not stop at the damaged objects.
    let bytes = std::fs::read(&real_index[0]).unwrap();
    std::fs::write(&real_index[0], &bytes[..bytes.len() / 2]).unwrap();
    // (`--no-cache`: the local cache still holds what the object said
    // before it was damaged in place; `repair index` and `verify` never
    // trust it.)
    let broken = repo.run(&["--no-cache", "restore", "--snapshot", &id1, "--stdout"]);
    assert_ne!(broken.code, 0, "restore without the first snapshot's index");
    let r = repo.run(&["--json", "repair", "index"]).ok();
    let rj = r.json();
    assert!(
        rj["packs_reindexed"].as_u64().unwrap() >= 1
            && rj["chunks_recovered"].as_u64().unwrap() >= 1,
        "repair index re-indexed nothing: {rj}"
    );
    assert!(
        repo.restore_stdout(&id1) == first,
        "restore after repair index: wrong bytes"
    );
    // The damaged objects are still there: verify still says so.
    let v = repo.run(&["verify"]);
    assert_eq!(
        v.code,
        3,
        "verify after repair: {}\n{}",
        v.stdout_str(),
        v.stderr
    );
    assert!(v.stdout_str().contains(&garbage_name), "{}", v.stdout_str());
}

#[test]
fn a_malformed_key_object_next_to_a_good_one_does_not_stop_open() {
    let repo = TestRepo::new();
    let data = random_bytes(300_000, 93);
    let s = repo.backup_stdin("db", "d.dump", &data);
    let id = s["snapshot_id"].as_str().unwrap().to_owned();
    let good_key = repo.objects("keys");
    assert_eq!(good_key.len(), 1);
    let good_key = good_key[0].clone();
    // Sorted before the good key, so it is read first: a damaged key
    // (its content does not hash to its name) and a stray file.
    std::fs::write(
        repo.path.join(format!("keys/{}", "0".repeat(64))),
        b"{\"trunc",
    )
    .unwrap();
    std::fs::write(repo.path.join("keys/.nfs0000000000000001"), b"garbage").unwrap();
    // A well-formed key object whose KDF parameters are out of range.
    let good = std::fs::read(&good_key).unwrap();
    let mut hostile: serde_json::Value = serde_json::from_slice(&good).unwrap();
    hostile["kdf_params"]["t_cost"] = 1000.into();
    let hostile = serde_json::to_vec(&hostile).unwrap();
    std::fs::write(
        repo.path.join(format!("keys/{}", sha256_hex(&hostile))),
        &hostile,
    )
    .unwrap();

    let out = repo.run(&["restore", "--snapshot", &id, "--stdout"]).ok();
    assert!(out.stdout == data, "restore: wrong bytes");
    assert!(
        out.stderr.contains("malformed key object") && out.stderr.contains(&"0".repeat(64)),
        "no warning about the malformed key: {}",
        out.stderr
    );
    repo.run(&["snapshots"]).ok();

    // Only malformed keys: a clear integrity error, not "wrong passphrase".
    std::fs::remove_file(&good_key).unwrap();
    let r = repo.run(&["snapshots"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    // The hostile key (whichever order it was read in) is now read too.
    assert!(
        r.stderr.contains("KDF parameters out of range"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("every key object is malformed"),
        "{}",
        r.stderr
    );
}

fn s3(server: &S3Server, repo: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut c = command(Path::new(repo));
    c.envs(server.env()).args(args);
    run_cmd(c, stdin)
}

/// The S3 console's "Create folder" stores a 0-byte object named `index/`
/// (and `keys/`): listed under the prefix, it must be skipped.
#[test]
fn s3_console_folder_objects_are_skipped_on_moto() {
    let server = S3Server::start(ServerKind::Moto);
    server.create_bucket("backups");
    let repo = "s3://backups/usdcop";
    s3(&server, repo, &["init", "--kdf-memory-kib", "1024"], None).ok();
    let data = random_bytes(800_000, 94);
    let args = [
        "--json",
        "backup",
        "stdin",
        "--source",
        "db",
        "--stdin-name",
        "d.dump",
    ];
    let id = s3(&server, repo, &args, Some(&data)).ok().json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for folder in ["/backups/usdcop/index/", "/backups/usdcop/keys/"] {
        let (code, _, body) = server.request("PUT", folder, &[], b"").unwrap();
        assert_eq!(
            code,
            200,
            "PUT {folder}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    let more = random_bytes(300_000, 95);
    let b = s3(&server, repo, &args, Some(&more)).ok();
    let w = warnings_of(&b.json());
    assert!(
        w.iter()
            .any(|(k, p)| k == "skipped_object" && p == "index/"),
        "no warning for the folder object: {w:?}"
    );
    let out = s3(
        &server,
        repo,
        &["restore", "--snapshot", &id, "--stdout"],
        None,
    )
    .ok();
    assert!(out.stdout == data, "restore from S3: wrong bytes");
    assert!(out.stderr.contains("index/"), "{}", out.stderr);
    s3(&server, repo, &["repair", "index"], None).ok();
    // A folder object is no damage: verify passes, with a warning.
    let v = s3(&server, repo, &["--json", "verify"], None).ok().json();
    assert!(
        warnings_of(&v)
            .iter()
            .any(|(k, p)| k == "skipped_object" && p == "index/"),
        "{v}"
    );
}
