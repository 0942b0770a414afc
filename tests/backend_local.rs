//! The backend conformance suite against the local-directory backend.

use usdcop_dr::backend::{conformance, local::LocalBackend, Backend, Payload, PutMode};

#[tokio::test]
async fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::new(dir.path()).unwrap();
    conformance::run(&b).await;
}

#[tokio::test]
async fn local_writes_leave_no_temp_files_and_refuse_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::new(dir.path()).unwrap();
    b.put("data/ab/x", b"1".to_vec().into(), PutMode::Create)
        .await
        .unwrap();
    assert!(b
        .put("data/ab/x", b"2".to_vec().into(), PutMode::Create)
        .await
        .is_err());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
    for bad in ["../x", "/etc/passwd", "a//b", "a/./b"] {
        assert!(
            b.put(bad, Payload::Bytes(Default::default()), PutMode::Overwrite)
                .await
                .is_err(),
            "{bad}"
        );
    }
}
