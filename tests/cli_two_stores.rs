//! Two S3 stores with their own keys in one run: bucket sources on one
//! server (moto) and the repository on another (Garage, which checks
//! signatures), each chosen by a named AWS profile in temporary
//! AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE, with ambient AWS_*
//! variables pointing elsewhere to prove that the profiles win. The wrong
//! pairings fail with an error naming the store and the refused key, and
//! a store without any credentials says so, without SDK log noise.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::process::Command;

use common::{run_cmd, Run, PASSWORD};
use servers::{S3Server, ServerKind};

/// Ambient AWS variables that point at nothing usable: a store that
/// follows them instead of its profile fails.
const AMBIENT: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIAAMBIENTWRONGKEY0"),
    ("AWS_SECRET_ACCESS_KEY", "ambient-wrong-secret"),
    ("AWS_REGION", "eu-west-3"),
    ("AWS_DEFAULT_REGION", "eu-west-3"),
    ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
    ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9"),
];

/// Temporary AWS config and credentials files, plus an empty HOME.
struct AwsFiles {
    dir: tempfile::TempDir,
}

impl AwsFiles {
    /// `profiles`: (name, server) — each profile gets the server's keys,
    /// endpoint_url and region, split over the two files as usual.
    fn new(profiles: &[(&str, &S3Server)]) -> AwsFiles {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::new();
        let mut creds = String::new();
        for (name, s) in profiles {
            config += &format!(
                "[profile {name}]\nregion = {}\nendpoint_url = {}\n\n",
                s.region, s.endpoint
            );
            creds += &format!(
                "[{name}]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n",
                s.access_key, s.secret_key
            );
        }
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(dir.path().join("credentials"), creds).unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        AwsFiles { dir }
    }

    /// The binary with only these files, an empty HOME and `ambient`.
    fn command(&self, repo: &str, ambient: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_usdcop-dr"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"))
            .env("AWS_CONFIG_FILE", self.dir.path().join("config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("credentials"),
            )
            .env("USDCOP_DR_PASSWORD", PASSWORD)
            .args(["--repo", repo]);
        for (k, v) in ambient {
            c.env(k, v);
        }
        c
    }

    fn run(&self, repo: &str, args: &[&str]) -> Run {
        let mut c = self.command(repo, AMBIENT);
        c.args(args);
        run_cmd(c, None)
    }
}

fn no_secret_in(r: &Run, secrets: &[&str]) {
    let out = format!("{}{}", r.stderr, r.stdout_str());
    for s in secrets {
        assert!(
            !out.contains(s),
            "a secret key leaked into the output: {out}"
        );
    }
}

#[test]
fn bucket_backup_and_restore_across_two_stores_with_their_own_profiles() {
    let source = S3Server::start(ServerKind::Moto);
    let offsite = S3Server::start(ServerKind::Garage);
    // A second Garage, with keys of its own, as a source store that
    // checks signatures (moto accepts any key).
    let other = S3Server::start(ServerKind::Garage);
    for b in ["raw", "restored"] {
        source.create_bucket(b);
    }
    offsite.create_bucket("backups");
    other.create_bucket("raw");
    let created = source.bucket_tool(&["create", "raw", "40"]);
    assert_eq!(created["objects"], 40, "{created}");

    let aws = AwsFiles::new(&[("minio", &source), ("offsite", &offsite)]);
    let repo = "s3://backups/usdcop";
    // The repository's profile by flag here, by USDCOP_DR_S3_PROFILE below.
    aws.run(
        repo,
        &[
            "--s3-profile",
            "offsite",
            "init",
            "--kdf-memory-kib",
            "1024",
        ],
    )
    .ok();

    let backup = |extra: &[&str]| {
        let mut c = aws.command(repo, AMBIENT);
        c.env("USDCOP_DR_S3_PROFILE", "offsite")
            .args(["--json", "backup", "bucket", "--source", "minio"])
            .args(extra);
        run_cmd(c, None)
    };
    let b = backup(&["--profile", "minio", "--bucket", "raw"])
        .ok()
        .json();
    assert_eq!(b["files"], 40, "{b}");
    assert!(
        b["source_requests"]["get"].as_u64().unwrap() >= 40,
        "the objects came from the source store: {b}"
    );
    assert!(
        b["requests"]["put"].as_u64().unwrap() >= 2,
        "the packs went to the repository store: {b}"
    );

    let mut c = aws.command(repo, AMBIENT);
    c.env("USDCOP_DR_S3_PROFILE", "offsite").args([
        "--json",
        "restore",
        "bucket",
        "--profile",
        "minio",
        "--bucket",
        "restored",
    ]);
    let r = run_cmd(c, None).ok().json();
    assert_eq!(r["objects"], 40, "{r}");
    let cmp = source.bucket_tool(&["compare", "raw", "restored"]);
    assert_eq!(cmp["compared"], 40, "{cmp}");
    assert_eq!(cmp["problems"], serde_json::json!([]), "{cmp}");
    aws.run(repo, &["--s3-profile", "offsite", "verify", "--read-data"])
        .ok();

    let secrets = [
        source.secret_key.as_str(),
        offsite.secret_key.as_str(),
        other.secret_key.as_str(),
        "ambient-wrong-secret",
    ];

    // The repository store (Garage) with the source's key pair: refused,
    // and the error names the store, the key id and the profile.
    let wrong_repo = aws.run(
        repo,
        &[
            "--s3-profile",
            "minio",
            "--s3-endpoint",
            &offsite.endpoint,
            "snapshots",
        ],
    );
    assert_eq!(wrong_repo.code, 1, "{}", wrong_repo.stderr);
    let want = format!(
        "the repository store {} refused access key {} (profile minio)",
        offsite.endpoint, source.access_key
    );
    assert!(
        wrong_repo.stderr.contains(&want),
        "want {want:?} in: {}",
        wrong_repo.stderr
    );
    no_secret_in(&wrong_repo, &secrets);

    // A source store (a second Garage) given the repository's profile:
    // refused, named as the source store with the repository's key id.
    let wrong_source = backup(&[
        "--profile",
        "offsite",
        "--endpoint",
        &other.endpoint,
        "--bucket",
        "raw",
    ]);
    assert_eq!(wrong_source.code, 1, "{}", wrong_source.stderr);
    let want = format!(
        "the source store {} refused access key {} (profile offsite)",
        other.endpoint, offsite.access_key
    );
    assert!(
        wrong_source.stderr.contains(&want),
        "want {want:?} in: {}",
        wrong_source.stderr
    );
    no_secret_in(&wrong_source, &secrets);

    // Without a profile the ambient variables apply, as before: they point
    // at a port where nothing listens.
    let ambient = aws.run(repo, &["snapshots"]);
    assert_eq!(ambient.code, 1, "{}", ambient.stderr);
    assert!(
        ambient
            .stderr
            .contains("cannot reach the S3 endpoint http://127.0.0.1:9 of the repository store"),
        "{}",
        ambient.stderr
    );
    for r in [&wrong_repo, &wrong_source, &ambient] {
        assert_eq!(
            r.stderr.lines().filter(|l| l.contains("error:")).count(),
            1,
            "one error line: {}",
            r.stderr
        );
    }
}

#[test]
fn a_store_without_credentials_says_so_without_sdk_noise() {
    let aws = AwsFiles::new(&[]);
    // No AWS_* variable at all, empty HOME, config files that do not exist:
    // the SDK's chain ends at the instance metadata service, whose failed
    // attempts it logs as WARN lines of several KiB.
    std::fs::remove_file(aws.dir.path().join("config")).ok();
    std::fs::remove_file(aws.dir.path().join("credentials")).ok();
    let quiet = |r: &Run| {
        assert!(
            !r.stderr.contains("WARN") && r.stderr.lines().count() <= 3,
            "SDK log lines on stderr without -v: {}",
            r.stderr
        );
    };

    let mut c = aws.command("s3://backups/r", &[]);
    c.args(["--s3-endpoint", "http://127.0.0.1:9", "snapshots"]);
    let r = run_cmd(c, None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("no AWS credentials found for the repository store http://127.0.0.1:9"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("cannot reach"), "{}", r.stderr);
    assert!(r.stderr.contains("--s3-profile"), "hint: {}", r.stderr);
    quiet(&r);

    // The bucket source of a local repository: named as the source store.
    let local = tempfile::tempdir().unwrap();
    let repo = local.path().join("repo");
    let repo = repo.to_str().unwrap();
    let mut c = aws.command(repo, &[]);
    c.args(["init", "--kdf-memory-kib", "1024"]);
    run_cmd(c, None).ok();
    let mut c = aws.command(repo, &[]);
    c.args([
        "backup",
        "bucket",
        "--source",
        "minio",
        "--endpoint",
        "http://127.0.0.1:9",
        "--bucket",
        "raw",
    ]);
    let r = run_cmd(c, None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("no AWS credentials found for the source store http://127.0.0.1:9"),
        "{}",
        r.stderr
    );
    quiet(&r);

    // A profile that is not defined: named, with the files looked in.
    let mut c = aws.command("s3://backups/r", &[]);
    c.args(["--s3-profile", "offsite", "snapshots"]);
    let r = run_cmd(c, None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("AWS profile \"offsite\" (for the repository store) is not defined"),
        "{}",
        r.stderr
    );
    quiet(&r);
}

/// The SDK's logs are only hidden without -v: -vv shows them.
#[test]
fn sdk_logs_come_back_with_verbose() {
    let aws = AwsFiles::new(&[]);
    let mut c = aws.command("s3://backups/r", &[]);
    c.args(["-vv", "--s3-endpoint", "http://127.0.0.1:9", "snapshots"]);
    let r = run_cmd(c, None);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.lines().filter(|l| l.contains("DEBUG")).count() > 3,
        "SDK debug logs with -vv: {}",
        r.stderr
    );
}
