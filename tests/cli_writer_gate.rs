//! The writer gate (docs/FORMAT.md, "The writer gate"): a repository whose
//! config requires a write feature this binary does not know is refused
//! for writing (exit 2, naming the feature and the version to upgrade to,
//! nothing written) and still readable; an unknown read feature refuses
//! everything.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{files_under, runtime, TestRepo};
use usdcop_dr::backend::PutMode;
use usdcop_dr::crypto::Domain;
use usdcop_dr::format::names;

/// Every file under the repository (temp files included) with its bytes.
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Rewrite the repository's config with `edit` applied to its JSON, sealed
/// with the repository's key, as a newer binary would have written it.
fn forge_config(repo: &TestRepo, edit: impl FnOnce(&mut serde_json::Value)) {
    runtime().block_on(async {
        let lib = repo.open_lib().await;
        let mut json = serde_json::to_value(lib.config()).unwrap();
        edit(&mut json);
        let sealed = lib
            .key()
            .seal(Domain::Config, &serde_json::to_vec(&json).unwrap());
        lib.backend()
            .put(names::CONFIG, sealed.into(), PutMode::Overwrite)
            .await
            .unwrap()
    });
}

fn push(json: &mut serde_json::Value, field: &str, value: &str) {
    let shown = json.to_string();
    json[field]
        .as_array_mut()
        .unwrap_or_else(|| panic!("config has no {field} list: {shown}"))
        .push(value.into());
}

#[test]
fn a_new_repository_records_the_features_it_requires() {
    let repo = TestRepo::new();
    let config =
        runtime().block_on(async { serde_json::to_value(repo.open_lib().await.config()).unwrap() });
    for f in ["lock-lease", "store-time-locks", "lock-identity"] {
        assert!(
            config["write_features"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == f)),
            "{config}"
        );
    }
    assert_eq!(config["read_features"], serde_json::json!([]), "{config}");
    assert_eq!(
        config["min_writer_version"],
        env!("CARGO_PKG_VERSION"),
        "{config}"
    );
}

#[test]
fn unknown_write_feature_refuses_writers_but_not_readers() {
    let repo = TestRepo::new();
    let data = common::random_bytes(300_000, 1);
    repo.backup_stdin("db", "dump.sql", &data);
    forge_config(&repo, |c| {
        push(c, "write_features", "prune-v9");
        c["min_writer_version"] = "99.1.0".into();
    });
    let before = contents(&repo.path);

    let more = common::random_bytes(200_000, 2);
    for args in [
        &["backup", "stdin", "--source", "db", "--stdin-name", "x"][..],
        &["repair", "index"][..],
    ] {
        let r = repo.run_stdin(args, &more);
        assert_eq!(r.code, 2, "{args:?} must be refused: {}", r.stderr);
        assert!(
            r.stderr.contains("prune-v9") && r.stderr.contains("upgrade usdcop-dr to ≥ 99.1.0"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("lock-lease"),
            "only unknown features are named: {}",
            r.stderr
        );
    }
    // Nothing written: not a lock, not a temp file, not a pack.
    assert_eq!(
        contents(&repo.path).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(contents(&repo.path) == before, "an object changed");

    // Readers are not affected.
    let list = repo.run(&["--json", "snapshots"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(repo.restore_stdout("latest") == data);
    repo.run(&["verify", "--read-data"]).ok();
}

#[test]
fn a_binary_older_than_min_writer_version_refuses_to_write() {
    let repo = TestRepo::new();
    forge_config(&repo, |c| c["min_writer_version"] = "99.0.0".into());
    let before = contents(&repo.path);
    let r = repo.run_stdin(
        &["backup", "stdin", "--source", "db", "--stdin-name", "x"],
        b"data",
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("99.0.0") && r.stderr.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        r.stderr
    );
    assert!(contents(&repo.path) == before, "something was written");
}

#[test]
fn unknown_read_feature_refuses_everything() {
    let repo = TestRepo::new();
    let data = common::random_bytes(100_000, 3);
    repo.backup_stdin("db", "dump.sql", &data);
    forge_config(&repo, |c| {
        push(c, "read_features", "tree-v9");
        c["min_writer_version"] = "42.0.0".into();
    });
    let before = contents(&repo.path);
    for args in [
        &["snapshots"][..],
        &["restore", "--snapshot", "latest", "--stdout"][..],
        &["verify"][..],
        &["stats"][..],
        &["repair", "index"][..],
        &["backup", "stdin", "--source", "db", "--stdin-name", "x"][..],
    ] {
        let r = repo.run_stdin(args, b"more");
        assert_eq!(r.code, 2, "{args:?} must be refused: {}", r.stderr);
        assert!(
            r.stderr.contains("tree-v9") && r.stderr.contains("≥ 42.0.0"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{args:?} printed {:?}", r.stdout_str());
    }
    assert!(contents(&repo.path) == before, "something was written");
}
