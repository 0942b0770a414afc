//! The S3 servers of tests/common/servers.rs start, take a bucket, and
//! store, return and list an object through a real S3 SDK (boto3, from the
//! moto virtualenv). Also pins down how each treats `If-None-Match: *` on
//! PutObject: moto refuses to overwrite (412), Garage 2.5 silently
//! overwrites. If Garage starts honouring it, `garage_put_get_list` fails on
//! purpose: the backend's conditional-write probe and its tests should then
//! be revisited.

#[path = "common/servers.rs"]
mod servers;

use servers::{venv_python, S3Server, ServerKind};
use std::process::Command;
use std::time::Instant;

/// Runs with the server's env; prints one JSON object.
const BOTO3_SCRIPT: &str = r#"
import json, os, sys
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

bucket = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                  config=Config(s3={"addressing_style": "path"},
                                retries={"max_attempts": 1}))
out = {}

def status(fn):
    try:
        r = fn()
        return r["ResponseMetadata"]["HTTPStatusCode"]
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]

s3.put_object(Bucket=bucket, Key="dir/a.txt", Body=b"first")
out["get"] = s3.get_object(Bucket=bucket, Key="dir/a.txt")["Body"].read().decode()
listing = s3.list_objects_v2(Bucket=bucket, Prefix="dir/")
out["list"] = [(o["Key"], o["Size"]) for o in listing.get("Contents", [])]
# If-None-Match: * on a key that does not exist yet: a plain create.
out["create_new"] = status(lambda: s3.put_object(
    Bucket=bucket, Key="dir/b.txt", Body=b"new", IfNoneMatch="*"))
# ... and on a key that exists: 412 where it is honoured.
out["create_existing"] = status(lambda: s3.put_object(
    Bucket=bucket, Key="dir/a.txt", Body=b"second", IfNoneMatch="*"))
out["after"] = s3.get_object(Bucket=bucket, Key="dir/a.txt")["Body"].read().decode()
out["missing"] = status(lambda: s3.get_object(Bucket=bucket, Key="dir/none"))
print(json.dumps(out))
"#;

fn boto3(server: &S3Server, bucket: &str) -> serde_json::Value {
    let python = venv_python();
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    let out = Command::new(&python)
        .arg("-c")
        .arg(BOTO3_SCRIPT)
        .arg(bucket)
        .envs(server.env())
        // Nothing from the developer's own AWS set-up.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .expect("cannot run the venv's python");
    assert!(
        out.status.success(),
        "boto3 against {} failed ({}):\n{}\nserver log:\n{}",
        server.kind,
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "boto3 printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn put_get_list(kind: ServerKind) -> serde_json::Value {
    let t = Instant::now();
    let server = S3Server::start(kind);
    let started = t.elapsed();
    server.create_bucket("smoke");
    let created = t.elapsed();
    assert!(server.endpoint.starts_with("http://127.0.0.1:"));
    let r = boto3(&server, "smoke");
    eprintln!(
        "{kind}: up in {started:?}, bucket in {:?}, boto3 done in {:?}: {r}",
        created - started,
        t.elapsed() - created
    );
    assert_eq!(r["get"], "first", "{r}");
    assert_eq!(r["list"], serde_json::json!([["dir/a.txt", 5]]), "{r}");
    assert_eq!(r["create_new"], 200, "{r}");
    assert_eq!(r["missing"], 404, "{r}");
    r
}

#[test]
fn moto_put_get_list() {
    let r = put_get_list(ServerKind::Moto);
    assert_eq!(
        r["create_existing"], 412,
        "moto should refuse to overwrite: {r}"
    );
    assert_eq!(r["after"], "first", "{r}");
}

#[test]
fn garage_put_get_list() {
    let r = put_get_list(ServerKind::Garage);
    // Known Garage 2.5 behaviour: If-None-Match: * is ignored on PutObject.
    assert_eq!(
        r["create_existing"], 200,
        "Garage now refuses If-None-Match: * overwrites; revisit the backend's probe: {r}"
    );
    assert_eq!(r["after"], "second", "{r}");
}

/// Several servers at once, each on its own ports and directory, and each
/// with its own buckets.
#[test]
fn servers_run_side_by_side() {
    let kinds = [
        ServerKind::Moto,
        ServerKind::Moto,
        ServerKind::Garage,
        ServerKind::Garage,
    ];
    let servers: Vec<S3Server> = std::thread::scope(|s| {
        let handles: Vec<_> = kinds
            .iter()
            .map(|&k| s.spawn(move || S3Server::start(k)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, a) in servers.iter().enumerate() {
        for b in &servers[i + 1..] {
            assert_ne!(a.endpoint, b.endpoint);
            assert_ne!(a.dir(), b.dir());
        }
    }
    for (i, s) in servers.iter().enumerate() {
        s.create_bucket(&format!("side-{i}"));
    }
    for (i, s) in servers.iter().enumerate() {
        let (code, _, body) = s.request("GET", "/", &[], b"").unwrap();
        assert_eq!(code, 200);
        let body = String::from_utf8_lossy(&body);
        for j in 0..servers.len() {
            let name = format!("<Name>side-{j}</Name>");
            assert_eq!(body.contains(&name), i == j, "{}: {body}", s.kind);
        }
    }
    let dirs: Vec<_> = servers.iter().map(|s| s.dir().to_path_buf()).collect();
    drop(servers);
    for d in dirs {
        assert!(!d.exists(), "{} was not removed", d.display());
    }
}
