//! The CLI against S3 repositories on real servers: round trip, dedup,
//! request counts, and one clear error line for each S3 misconfiguration.

mod common;
#[path = "common/servers.rs"]
mod servers;

use common::{command, random_bytes, run_cmd, Run, PASSWORD};
use servers::{S3Server, ServerKind};

fn cmd(server: &S3Server, repo: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut c = command(std::path::Path::new(repo));
    c.envs(server.env()).args(args);
    run_cmd(c, stdin)
}

fn round_trip(kind: ServerKind) {
    let server = S3Server::start(kind);
    server.create_bucket("backups");
    let repo = "s3://backups/usdcop";
    cmd(
        &server,
        repo,
        &["init", "--kdf-memory-kib", "1024", "--pack-size", "4194304"],
        None,
    )
    .ok();
    let again = cmd(&server, repo, &["init"], None);
    assert_eq!(
        again.code, 2,
        "init refuses an existing S3 repository: {}",
        again.stderr
    );

    let data = random_bytes(12_000_000, 11);
    let b = cmd(
        &server,
        repo,
        &[
            "--json",
            "backup",
            "stdin",
            "--source",
            "pg",
            "--stdin-name",
            "db.dump",
        ],
        Some(&data),
    )
    .ok()
    .json();
    let requests = &b["requests"];
    assert!(
        requests["put"].as_u64().unwrap() >= 3,
        "packs, index, snapshot, lock: {b}"
    );
    // One PUT per pack plus a fixed few (index, snapshot, lock): with 4 MiB
    // packs that is well under one per MiB of new data.
    let puts = requests["put"].as_u64().unwrap() + requests["multipart"].as_u64().unwrap();
    let packs = b["packs_written"].as_u64().unwrap();
    assert!(
        puts <= packs + 3,
        "{puts} upload requests for {packs} packs: {b}"
    );
    assert!(
        (puts as f64) < 12.0 / 1.5,
        "{puts} upload requests for 12 MB"
    );
    let again = cmd(
        &server,
        repo,
        &[
            "--json",
            "backup",
            "stdin",
            "--source",
            "pg",
            "--stdin-name",
            "db.dump",
        ],
        Some(&data),
    )
    .ok()
    .json();
    assert_eq!(again["bytes_stored_new"], 0);
    let out = cmd(
        &server,
        repo,
        &["restore", "--snapshot", "latest", "--stdout"],
        None,
    )
    .ok();
    assert!(out.stdout == data, "restored bytes differ");
    let v = cmd(&server, repo, &["--json", "verify", "--read-data"], None)
        .ok()
        .json();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    let stats = cmd(&server, repo, &["--json", "stats"], None).ok().json();
    assert!(stats["requests"]["list"].as_u64().unwrap() >= 1);
}

#[test]
fn s3_round_trip_on_moto() {
    round_trip(ServerKind::Moto);
}

#[test]
fn s3_round_trip_on_garage() {
    round_trip(ServerKind::Garage);
}

/// On Garage, which checks signatures (moto accepts any key, so a
/// refused-key assertion there would never run).
#[test]
fn s3_misconfiguration_gives_one_clear_line_and_exit_1() {
    let server = S3Server::start(ServerKind::Garage);
    server.create_bucket("backups");
    let repo = "s3://backups/r";
    cmd(&server, repo, &["init", "--kdf-memory-kib", "1024"], None).ok();

    let missing = cmd(&server, "s3://no-such-bucket/r", &["snapshots"], None);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("no-such-bucket"),
        "{}",
        missing.stderr
    );

    // A wrong secret for a known key, then a key the store does not know.
    let unknown_key = "GK0123456789abcdef01234567";
    let mut refused = Vec::new();
    for (key_id, secret) in [
        (server.access_key.as_str(), "wrong-secret"),
        (unknown_key, "wrong-secret"),
    ] {
        let mut bad_creds = std::process::Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
        bad_creds.env("USDCOP_DR_PASSWORD", PASSWORD);
        for (k, v) in server.env() {
            let v = match k.as_str() {
                "AWS_SECRET_ACCESS_KEY" => secret.to_owned(),
                "AWS_ACCESS_KEY_ID" => key_id.to_owned(),
                _ => v,
            };
            bad_creds.env(&k, v);
        }
        bad_creds.args(["--repo", repo, "snapshots"]);
        let r = run_cmd(bad_creds, None);
        assert_eq!(r.code, 1, "Garage must refuse {key_id}: {}", r.stderr);
        let want = format!(
            "the repository store {} refused access key {key_id} (environment AWS_ACCESS_KEY_ID)",
            server.endpoint
        );
        assert!(r.stderr.contains(&want), "want {want:?} in: {}", r.stderr);
        assert!(
            !r.stderr.contains("wrong-secret") && !r.stderr.contains(&server.secret_key),
            "secret leaked: {}",
            r.stderr
        );
        refused.push(r);
    }

    let mut nowhere = std::process::Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
    nowhere
        .env("USDCOP_DR_PASSWORD", PASSWORD)
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .env("AWS_REGION", "us-east-1")
        .args([
            "--repo",
            "s3://b/r",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "snapshots",
        ]);
    let r = run_cmd(nowhere, None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("cannot reach the S3 endpoint http://127.0.0.1:9"),
        "{}",
        r.stderr
    );
    for r in [&missing, &r, &refused[0], &refused[1]] {
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("backtrace"),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.lines().filter(|l| l.contains("error:")).count() == 1,
            "one error line: {}",
            r.stderr
        );
    }
}
