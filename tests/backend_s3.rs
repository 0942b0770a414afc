//! The backend conformance suite against real S3-compatible servers on
//! loopback (moto and Garage), plus the atomic-create probe's answer on each.

#[path = "common/servers.rs"]
mod servers;

use servers::{S3Server, ServerKind};
use usdcop_dr::backend::s3::{S3Backend, S3Options};
use usdcop_dr::backend::{conformance, Backend, Payload, PutMode};

async fn backend(server: &S3Server, bucket: &str, prefix: &str) -> S3Backend {
    let opts = S3Options {
        endpoint: Some(server.endpoint.clone()),
        credentials: Some((server.access_key.clone(), server.secret_key.clone())),
        region: Some(server.region.clone()),
        ..Default::default()
    };
    S3Backend::open(&format!("s3://{bucket}/{prefix}"), &opts)
        .await
        .unwrap()
}

async fn conforms(kind: ServerKind, expect_atomic: bool) {
    let server = S3Server::start(kind);
    server.create_bucket("repo");
    let b = backend(&server, "repo", "some/prefix").await;
    assert_eq!(
        b.probe_atomic_create().await.unwrap(),
        expect_atomic,
        "atomic-create probe on {kind:?}"
    );
    assert_eq!(b.atomic_create(), expect_atomic);
    conformance::run(&b).await;

    // A multipart upload (file payload above the threshold) lands whole.
    let data: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let path = std::env::temp_dir().join(format!("usdcop-s3-mp-{}", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    b.put(
        "data/mp/big",
        Payload::File {
            path,
            len: data.len() as u64,
        },
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(b.head("data/mp/big").await.unwrap().size, data.len() as u64);
    let got = b.get_range("data/mp/big", 17 << 20, 1 << 20).await.unwrap();
    assert_eq!(
        &got[..],
        &data[17 << 20..18 << 20],
        "multipart object content"
    );
    let counts = b.request_counts().unwrap();
    assert!(
        counts.multipart >= 7,
        "40 MiB in 8 MiB parts: create + 5 parts + complete, got {counts:?}"
    );
    assert!(counts.bytes_up >= 40 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_conforms_and_creates_atomically() {
    conforms(ServerKind::Moto, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_conforms_and_is_detected_as_overwriting() {
    conforms(ServerKind::Garage, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_missing_bucket_bad_credentials_and_no_endpoint() {
    let server = S3Server::start(ServerKind::Moto);
    server.create_bucket("exists");
    let missing = backend(&server, "no-such-bucket", "").await;
    let e = missing.get("config").await.unwrap_err();
    assert!(e.to_string().contains("no-such-bucket"), "{e}");

    let opts = S3Options {
        endpoint: Some("http://127.0.0.1:9".into()),
        credentials: Some(("x".into(), "y".into())),
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    let nowhere = S3Backend::open("s3://b/p", &opts).await.unwrap();
    let e = nowhere.get("config").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot reach the S3 endpoint http://127.0.0.1:9"),
        "{e}"
    );
}

/// On Garage, which checks signatures (moto accepts any key): a wrong
/// secret and an unknown key are refused, and the error names the store,
/// the access key id and where it came from, never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_name_the_store_and_key_on_garage() {
    let server = S3Server::start(ServerKind::Garage);
    server.create_bucket("repo");
    for key_id in [server.access_key.as_str(), "GK0123456789abcdef01234567"] {
        let opts = S3Options {
            endpoint: Some(server.endpoint.clone()),
            credentials: Some((key_id.to_owned(), "not-the-secret".into())),
            region: Some(server.region.clone()),
            ..Default::default()
        };
        let b = S3Backend::open("s3://repo/p", &opts).await.unwrap();
        let e = b.get("config").await.unwrap_err().to_string();
        let want = format!(
            "the repository store {} refused access key {key_id} (explicit credentials)",
            server.endpoint
        );
        assert!(e.contains(&want), "want {want:?} in {e}");
        assert!(
            !e.contains("not-the-secret") && !e.contains(&server.secret_key),
            "{e}"
        );
    }
}

/// Recovery's abort of unfinished uploads, at a repository with an empty
/// prefix in a shared bucket: only this repository's own pack uploads that
/// started before the cut-off go; another application's upload, a nested
/// repository's pack upload and non-pack keys under `data/` survive, and
/// (where the store stamps real start times: Garage; moto answers one fixed
/// `Initiated` of 2010) so does an upload started after the cut-off.
async fn abort_spares_foreign_nested_and_young_uploads(kind: ServerKind) {
    let server = S3Server::start(kind);
    server.create_bucket("shared");
    let b = backend(&server, "shared", "").await;
    let hex = |c: char| c.to_string().repeat(64);
    let ours_old = format!("data/aa/{}", hex('a'));
    let ours_young = format!("data/bb/{}", hex('b'));
    let foreign = [
        "other-app/big.bin".to_owned(),
        format!("sub/data/cc/{}", hex('c')),
        "data/dd/not-a-pack.bin".to_owned(),
        format!("data/ee/{}", hex('f')),
    ];
    let start = |key: &str| {
        server.bucket_tool(&["start-upload", "shared", key]);
    };
    let pending = || {
        let mut keys: Vec<String> = server
            .bucket_tool(&["uploads", "shared"])
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    start(&ours_old);
    for k in &foreign {
        start(k);
    }
    if kind == ServerKind::Moto {
        start(&ours_young);
        let later = chrono::Utc::now() + chrono::Duration::seconds(5);
        assert_eq!(b.abort_unfinished_writes(later).await.unwrap(), 2);
        assert_eq!(pending(), sorted(foreign.to_vec()), "only our own packs");
        return;
    }
    // The store stamps `Initiated`; keep clear of its resolution.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    start(&ours_young);

    assert_eq!(b.abort_unfinished_writes(cutoff).await.unwrap(), 1);
    let mut expected = foreign.to_vec();
    expected.push(ours_young.clone());
    assert_eq!(pending(), sorted(expected), "only {ours_old} may go");

    // Once the young upload is older than a later cut-off it goes too.
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(b.abort_unfinished_writes(later).await.unwrap(), 1);
    assert_eq!(pending(), sorted(foreign.to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_abort_spares_foreign_and_nested_uploads() {
    abort_spares_foreign_nested_and_young_uploads(ServerKind::Moto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_abort_spares_foreign_nested_and_young_uploads() {
    abort_spares_foreign_nested_and_young_uploads(ServerKind::Garage).await;
}
