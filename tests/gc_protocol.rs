//! The two-phase garbage collection through the library, on a repository
//! written by the binary: condemn, then delete; reprieve; repack; a
//! writer's view without condemned packs.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::TestRepo;
use usdcop_dr::format::names;
use usdcop_dr::progress::Silent;
use usdcop_dr::repository::gc::{self, GcOptions, GcReport};
use usdcop_dr::repository::Repository;

fn opts() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    }
}

async fn prune(repo: &Arc<Repository>) -> GcReport {
    let lock = gc::acquire_prune_lock(repo).await.unwrap();
    let r = gc::collect(repo, Some(&lock), &opts(), &Silent)
        .await
        .unwrap();
    lock.release().await.unwrap();
    r
}

fn data_bytes(t: &TestRepo) -> u64 {
    t.objects("data")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn condemn_then_delete_and_nothing_kept_is_lost() {
    let t = TestRepo::new();
    let x = common::random_bytes(2_500_000, 1);
    let y = common::random_bytes(2_500_000, 2);
    let a = t.backup_stdin("s", "x.bin", &x)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = t.backup_stdin("s", "y.bin", &y)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = data_bytes(&t);
    common::runtime().block_on(async {
        let repo = Arc::new(t.open_lib().await);
        // Forget a (what `forget` does).
        let id = usdcop_dr::format::Id::parse(&a).unwrap();
        repo.backend()
            .delete_many(&[names::in_dir(names::SNAPSHOTS, &id)])
            .await
            .unwrap();
        let first = prune(&repo).await;
        assert!(first.deleted.is_empty(), "{first:?}");
        assert!(!first.condemned.is_empty(), "{first:?}");
        // A writer's view leaves the condemned packs out.
        let c = gc::load_condemned(&repo).await.unwrap();
        assert_eq!(c.current.len(), first.condemned.len());
        assert!(c
            .current
            .values()
            .all(|p| p.writers.is_some() && p.since.is_some()));
        let index = repo.load_index().await.unwrap();
        let w = gc::for_writer(&index, &c);
        assert!(w.blob_count() < index.blob_count());
        let second = prune(&repo).await;
        let deleted: HashSet<_> = second.deleted.iter().map(|d| d.pack).collect();
        let condemned: HashSet<_> = first.condemned.iter().map(|d| d.pack).collect();
        assert_eq!(deleted, condemned, "{second:?}");
        assert!(second.condemned.is_empty());
        assert!(gc::load_condemned(&repo).await.unwrap().current.is_empty());
        assert!(
            t.objects("condemned").is_empty(),
            "records left: {:?}",
            t.objects("condemned")
        );
    });
    let after = data_bytes(&t);
    assert!(after < before * 6 / 10, "{before} -> {after}");
    t.run(&["verify", "--read-data"]).ok();
    assert_eq!(t.restore_stdout(&b), y);
    assert_ne!(t.run(&["restore", "--snapshot", &a, "--stdout"]).code, 0);
    // A new backup of x stores it again (nothing of it is left) and restores.
    let a2 = t.backup_stdin("s", "x.bin", &x);
    assert!(a2["bytes_stored_new"].as_u64().unwrap() > 2_000_000, "{a2}");
    assert_eq!(t.restore_stdout(a2["snapshot_id"].as_str().unwrap()), x);
}

/// A backup between the two runs that stores the condemned data again
/// does not deduplicate against the condemned packs; one that references
/// them anyway (a writer that was live at the condemnation, simulated by
/// a snapshot written through a stale index) reprieves them.
#[test]
fn a_snapshot_needing_a_condemned_pack_reprieves_it() {
    let t = TestRepo::new();
    let x = common::random_bytes(1_500_000, 3);
    let a = t.backup_stdin("s", "x.bin", &x)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    t.backup_stdin("s", "other", b"other");
    let a = common::runtime().block_on(async {
        let repo = Arc::new(t.open_lib().await);
        let id = usdcop_dr::format::Id::parse(&a).unwrap();
        let snap = repo.load_snapshot(&id).await.unwrap();
        repo.backend()
            .delete_many(&[names::in_dir(names::SNAPSHOTS, &id)])
            .await
            .unwrap();
        let first = prune(&repo).await;
        assert!(!first.condemned.is_empty());
        // The "stale writer" commits a snapshot naming a's tree.
        let again = repo.save_snapshot(&snap).await.unwrap();
        let second = prune(&repo).await;
        assert!(second.deleted.is_empty(), "{second:?}");
        assert_eq!(second.reprieved.len(), first.condemned.len(), "{second:?}");
        assert!(gc::load_condemned(&repo).await.unwrap().current.is_empty());
        again.to_hex()
    });
    t.run(&["verify", "--read-data"]).ok();
    assert_eq!(t.restore_stdout(&a), x);
}

/// A pack no index lists (left by a killed backup) is condemned, `repair
/// index` does not index it again while it is, and the next prune
/// deletes it.
#[test]
fn an_orphan_pack_is_condemned_not_resurrected_then_deleted() {
    let t = TestRepo::new();
    let x = common::random_bytes(500_000, 4);
    let a = t.backup_stdin("s", "x.bin", &x)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // An orphan under a pack's name (its content is not even a pack: a
    // re-index would fail on it, which is how we see it is not tried).
    let orphan = common::random_bytes(300_000, 9);
    let id = usdcop_dr::format::Id::hash(&orphan);
    let path = t.path.join(names::pack(&id));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &orphan).unwrap();
    common::runtime().block_on(async {
        let repo = Arc::new(t.open_lib().await);
        let first = prune(&repo).await;
        assert_eq!(first.condemned.len(), 1, "{first:?}");
        assert_eq!(first.condemned[0].pack, id);
        assert_eq!(first.condemned[0].reason, "unindexed");
    });
    let r = t.run(&["--json", "repair", "index"]).ok().json();
    assert_eq!(r["packs_condemned"], 1, "{r}");
    assert_eq!(r["packs_reindexed"], 0, "{r}");
    common::runtime().block_on(async {
        let repo = Arc::new(t.open_lib().await);
        let second = prune(&repo).await;
        assert_eq!(second.deleted.len(), 1, "{second:?}");
    });
    assert!(!path.exists());
    t.run(&["verify", "--read-data"]).ok();
    assert_eq!(t.restore_stdout(&a), x);
}

/// Chunk list trees (an entry of more than 1,024 chunks: several leaves
/// and an inner node here) are needed blobs too: two prunes leave every
/// node of them, and `verify` still reads the whole snapshot.
#[test]
fn chunk_list_trees_survive_prune() {
    let t = TestRepo::new();
    let small = common::random_bytes(10_000, 5);
    let a = t.backup_stdin("s", "small", &small)["snapshot_id"]
        .as_str()
        .unwrap()
        .to_owned();
    common::runtime().block_on(async {
        let repo = Arc::new(t.open_lib().await);
        let id = usdcop_dr::format::Id::parse(&a).unwrap();
        let mut snap = repo.load_snapshot(&id).await.unwrap();
        let index = repo.load_index().await.unwrap();
        let mut entries = repo.load_entries(&index, &snap).await.unwrap();
        let chunk = entries[0].chunks[0];
        entries[0].chunks = vec![chunk; 100_000];
        entries[0].size = 10_000 * 100_000;
        let crafted =
            usdcop_dr::commands::backup::save_snapshot_with_entries(&repo, &mut snap, entries)
                .await
                .unwrap();
        // Only the crafted snapshot is left to need them.
        repo.backend()
            .delete_many(&[names::in_dir(names::SNAPSHOTS, &id)])
            .await
            .unwrap();
        let snap = repo.load_snapshot(&crafted).await.unwrap();
        let index = repo.load_index().await.unwrap();
        let before = repo.snapshot_blob_ids(&index, &snap).await.unwrap();
        assert!(before.ids.len() > 4, "{}", before.ids.len());
        // Prune's own walk (which skips nodes it has seen) finds exactly
        // what the plain walk does, chunk-tree nodes included.
        let needed = gc::needed_blobs(&repo, &index, &[(crafted, snap.clone())], &Silent)
            .await
            .unwrap();
        let want: HashSet<_> = before.ids.iter().copied().collect();
        assert_eq!(needed, want);
        prune(&repo).await;
        prune(&repo).await;
        let index = repo.load_index().await.unwrap();
        for b in &before.ids {
            assert!(index.contains(b), "blob {b} lost");
        }
        let after = repo.snapshot_blob_ids(&index, &snap).await.unwrap();
        assert!(after.unreadable.is_none());
    });
    t.run(&["verify", "--read-data"]).ok();
}
