//! One behaviour suite for every backend. Each backend's tests call
//! [`run`]; a difference between backends shows up here, not in production.
//! Panics (with the failed contract) on the first violation.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::{list_all, Backend, Payload, PutMode};
use crate::error::ErrorKind;

pub async fn run(b: &dyn Backend) {
    let base = format!(
        "conformance/{}",
        hex::encode(crate::crypto::random_bytes::<6>())
    );
    put_get(b, &base).await;
    create_is_atomic(b, &base).await;
    missing_objects(b, &base).await;
    ranges(b, &base).await;
    file_payload(b, &base).await;
    listing(b, &base).await;
    timestamps(b, &base).await;
    deletes(b, &base).await;
}

async fn put_get(b: &dyn Backend, base: &str) {
    let name = format!("{base}/plain");
    b.put(
        &name,
        Payload::Bytes(Bytes::from_static(b"hello")),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(
        &b.get(&name).await.unwrap()[..],
        b"hello",
        "get returns what put stored"
    );
    assert_eq!(
        b.head(&name).await.unwrap().size,
        5,
        "head reports the size"
    );
    b.put(
        &name,
        Payload::Bytes(Bytes::from_static(b"bye")),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(
        &b.get(&name).await.unwrap()[..],
        b"bye",
        "overwrite replaces"
    );
    let empty = format!("{base}/empty");
    b.put(&empty, Payload::Bytes(Bytes::new()), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(b.get(&empty).await.unwrap().len(), 0, "empty objects exist");
}

/// Listings and HEAD carry the store's modification time, the same in
/// both (to the second: S3 listings have whole seconds); locks are judged
/// by it. On loopback the store's clock is this host's, give or take.
async fn timestamps(b: &dyn Backend, base: &str) {
    let name = format!("{base}/stamped/x");
    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    b.put(
        &name,
        Payload::Bytes(Bytes::from_static(b"t")),
        PutMode::Create,
    )
    .await
    .unwrap();
    let after = chrono::Utc::now() + chrono::Duration::minutes(5);
    let listed = list_all(b, &format!("{base}/stamped/"))
        .await
        .unwrap()
        .pop()
        .and_then(|o| o.last_modified)
        .expect("a listing gives the store's modification time");
    let headed = b
        .head(&name)
        .await
        .unwrap()
        .last_modified
        .expect("HEAD gives the store's modification time");
    assert!(
        (before..after).contains(&listed),
        "modification time {listed} is now"
    );
    assert_eq!(
        listed.timestamp(),
        headed.timestamp(),
        "listing and HEAD agree on the modification time"
    );
}

async fn create_is_atomic(b: &dyn Backend, base: &str) {
    let name = format!("{base}/once");
    b.put(
        &name,
        Payload::Bytes(Bytes::from_static(b"first")),
        PutMode::Create,
    )
    .await
    .unwrap();
    let second = b
        .put(
            &name,
            Payload::Bytes(Bytes::from_static(b"second")),
            PutMode::Create,
        )
        .await;
    if b.atomic_create() {
        let err = second.expect_err("create of an existing object must fail");
        assert_eq!(
            err.kind(),
            ErrorKind::AlreadyExists,
            "create reports AlreadyExists: {err}"
        );
        assert_eq!(
            &b.get(&name).await.unwrap()[..],
            b"first",
            "create never replaces"
        );
    }
}

async fn missing_objects(b: &dyn Backend, base: &str) {
    let name = format!("{base}/missing");
    assert_eq!(
        b.get(&name).await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "get of missing"
    );
    assert_eq!(
        b.head(&name).await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "head of missing"
    );
    assert_eq!(
        b.get_range(&name, 0, 1).await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "range of missing"
    );
}

async fn ranges(b: &dyn Backend, base: &str) {
    let name = format!("{base}/ranged");
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    b.put(&name, data.clone().into(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(&b.get_range(&name, 0, 10).await.unwrap()[..], &data[..10]);
    assert_eq!(
        &b.get_range(&name, 9_990, 10).await.unwrap()[..],
        &data[9_990..]
    );
    assert_eq!(
        &b.get_range(&name, 1234, 4000).await.unwrap()[..],
        &data[1234..5234]
    );
    assert!(
        b.get_range(&name, 9_995, 10).await.is_err(),
        "a range past the end is an error, not a short read"
    );
}

async fn file_payload(b: &dyn Backend, base: &str) {
    let dir = b.spool_dir().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "conformance-{}",
        hex::encode(crate::crypto::random_bytes::<6>())
    ));
    let data = vec![7u8; 300_000];
    std::fs::write(&path, &data).unwrap();
    let name = format!("{base}/from-file");
    b.put(
        &name,
        Payload::File {
            path: path.clone(),
            len: data.len() as u64,
        },
        PutMode::Create,
    )
    .await
    .unwrap();
    assert_eq!(
        b.get(&name).await.unwrap().to_vec(),
        data,
        "file payload stored whole"
    );
    let _ = std::fs::remove_file(&path);
}

async fn listing(b: &dyn Backend, base: &str) {
    let dir = format!("{base}/list/");
    let mut expected = BTreeSet::new();
    for i in 0..1_005 {
        let name = format!("{dir}{:02x}/obj-{i:04}", i % 7);
        b.put(
            &name,
            Payload::Bytes(Bytes::from(vec![1u8; i % 3])),
            PutMode::Create,
        )
        .await
        .unwrap();
        expected.insert((name, (i % 3) as u64));
    }
    b.put(
        &format!("{base}/listed-not"),
        Payload::Bytes(Bytes::new()),
        PutMode::Create,
    )
    .await
    .unwrap();
    let got: Vec<_> = list_all(b, &dir)
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let got_set: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(
        got.len(),
        got_set.len(),
        "no object listed twice across pages"
    );
    assert_eq!(
        got_set, expected,
        "listing returns exactly the objects under the prefix, with sizes"
    );
    assert!(list_all(b, &format!("{base}/nothing-here/"))
        .await
        .unwrap()
        .is_empty());
}

async fn deletes(b: &dyn Backend, base: &str) {
    let names: Vec<String> = (0..5).map(|i| format!("{base}/del/{i}")).collect();
    for n in &names {
        b.put(n, Payload::Bytes(Bytes::from_static(b"x")), PutMode::Create)
            .await
            .unwrap();
    }
    let mut doomed = names[..3].to_vec();
    doomed.push(format!("{base}/del/never-existed"));
    b.delete_many(&doomed).await.unwrap();
    let left: Vec<_> = list_all(b, &format!("{base}/del/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(
        left,
        names[3..].to_vec(),
        "delete removes exactly the named objects"
    );
    let all: Vec<String> = list_all(b, &format!("{base}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    b.delete_many(&all).await.unwrap();
    assert!(
        list_all(b, &format!("{base}/")).await.unwrap().is_empty(),
        "batch delete of everything"
    );
}
