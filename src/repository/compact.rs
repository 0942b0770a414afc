//! Index compaction: rewrite many index objects as few, honouring the
//! `supersedes` protocol (docs/FORMAT.md §7, "Compaction").
//!
//! 1. List `index/`; pick the candidates (every object, or only the small
//!    ones for the automatic compaction at the end of a backup).
//! 2. Read them all (an object gone meanwhile was compacted by someone
//!    else: left out; a damaged one is left alone for `verify`/`repair`).
//! 3. Write their union as new objects of at most `cap` plaintext bytes;
//!    the last one written lists every object read in `supersedes`.
//! 4. Only then delete the objects read.
//!
//! Packs are never touched, and no entry ever exists only in a deleted
//! object: whenever a reader can see the superseding object, the objects
//! holding the content it replaces are stored (they were written first).

use futures::StreamExt;
use serde::Serialize;

use super::index::MasterIndexBuilder;
use super::lock::Lease;
use super::Repository;
use crate::backend::list_all;
use crate::error::{ErrorKind, Result};
use crate::format::index::{self as index_fmt, IndexSplitter};
use crate::format::{names, Id};

/// An index object whose stored size is below this is "small": the
/// automatic compaction merges only these, so a large repository's full
/// objects are not rewritten every few weeks.
pub const SMALL_OBJECT_BYTES: u64 = (index_fmt::TARGET_PLAIN_LEN / 4) as u64;
/// A backup compacts the small index objects when there are more than this.
pub const AUTO_COMPACT_OBJECTS: usize = 64;
/// At most this many objects are replaced by one compaction.
pub const MAX_REPLACED: usize = 100_000;

#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Rewrite every index object, not only the small ones.
    pub all: bool,
    /// Do nothing unless at least this many objects would be replaced.
    pub min_objects: usize,
    /// Plaintext size cap of each object written.
    pub cap: usize,
    /// Packs whose entries are left out of the objects written (prune:
    /// packs about to be deleted, packs already gone).
    pub drop_packs: std::collections::HashSet<Id>,
}

impl CompactOptions {
    /// `repair index --compact`: everything, when there are two or more.
    pub fn all() -> Self {
        CompactOptions {
            all: true,
            min_objects: 2,
            cap: index_fmt::TARGET_PLAIN_LEN,
            drop_packs: Default::default(),
        }
    }
    /// After a backup: the small objects, when there are many.
    pub fn auto() -> Self {
        CompactOptions {
            all: false,
            min_objects: AUTO_COMPACT_OBJECTS + 1,
            cap: index_fmt::TARGET_PLAIN_LEN,
            drop_packs: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactReport {
    /// Index objects listed.
    pub objects_before: u64,
    /// Objects read, replaced and deleted.
    pub objects_replaced: u64,
    /// Objects written (their union).
    pub written: Vec<Id>,
    /// Blobs in the objects written.
    pub blobs: u64,
    /// Candidates left alone: gone meanwhile, or damaged (name, reason).
    pub left_alone: Vec<(String, String)>,
}

/// Compact the index objects of `repo` (see the module doc). With a
/// `lease`, nothing is written or deleted once it has lapsed.
pub async fn compact(
    repo: &Repository,
    opts: &CompactOptions,
    lease: Option<&Lease>,
) -> Result<CompactReport> {
    let check = || lease.map_or(Ok(()), |l| l.check());
    let listed: Vec<(Id, String, u64)> = list_all(repo.backend(), names::INDEX)
        .await?
        .into_iter()
        .filter_map(|o| Some((names::id_of(&o.name)?, o.name, o.size)))
        .collect();
    let mut report = CompactReport {
        objects_before: listed.len() as u64,
        ..Default::default()
    };
    let max = MAX_REPLACED.min(opts.cap.saturating_sub(index_fmt::HEADER_LEN) / 32 / 2);
    let candidates: Vec<(Id, String)> = listed
        .iter()
        .filter(|o| opts.all || o.2 < SMALL_OBJECT_BYTES)
        .take(max)
        .map(|o| (o.0, o.1.clone()))
        .collect();
    if candidates.len() < opts.min_objects.max(1) {
        return Ok(report);
    }
    // The union, keeping every entry (superseded objects' too).
    let mut builder = MasterIndexBuilder::new(false);
    let mut replaced: Vec<(Id, String)> = vec![];
    let mut loads = futures::stream::iter(candidates)
        .map(|(id, name)| async move {
            let r = repo.load_index_plain(&name).await;
            (id, name, r)
        })
        .buffered(super::LOAD_CONCURRENCY);
    while let Some((id, name, r)) = loads.next().await {
        match r.and_then(|plain| builder.add_plain(id, &plain)) {
            Ok(()) => replaced.push((id, name)),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Integrity) => {
                report.left_alone.push((name, e.to_string()))
            }
            Err(e) => return Err(e),
        }
    }
    drop(loads);
    if replaced.len() < opts.min_objects.max(1) {
        return Ok(report);
    }
    // What the objects read superseded (and is still listed) stays
    // superseded: its content is in them or in objects stored before them.
    let listed_ids: std::collections::HashSet<Id> = listed.iter().map(|o| o.0).collect();
    let mut supersedes: Vec<Id> = replaced.iter().map(|r| r.0).collect();
    supersedes.extend(
        builder
            .superseded()
            .iter()
            .filter(|id| listed_ids.contains(id))
            .copied(),
    );
    supersedes.sort();
    supersedes.dedup();
    let union = builder.finish();
    report.blobs = union.blob_count() as u64;
    let mut splitter = IndexSplitter::new(opts.cap)?;
    // Each object is stored as soon as it is complete; the last one,
    // carrying `supersedes`, last.
    for p in union.pack_iter() {
        if opts.drop_packs.contains(&p.id) {
            continue;
        }
        for f in splitter.push(p) {
            check()?;
            report.written.push(repo.save_index(&f).await?);
        }
    }
    drop(union);
    for f in splitter.finish(supersedes)? {
        check()?;
        report.written.push(repo.save_index(&f).await?);
    }
    check()?;
    let names: Vec<String> = replaced
        .iter()
        .filter(|(id, _)| !report.written.contains(id))
        .map(|r| r.1.clone())
        .collect();
    repo.backend().delete_many(&names).await?;
    report.objects_replaced = replaced.len() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::backend::local::LocalBackend;
    use crate::backend::{Backend, ListPage, ObjectMeta, Payload, PutMode};
    use crate::crypto::KdfParams;
    use crate::format::index::{IndexBlob, IndexFile, IndexPack};
    use crate::format::pack::{BlobKind, Compression};
    use crate::repository::InitOptions;

    /// A local store where the first GET of `victim` finds it gone: just
    /// before, a "concurrent compaction" stores its replacement (which
    /// supersedes the victim) and deletes the victim.
    #[derive(Debug)]
    struct Compacting {
        inner: LocalBackend,
        plan: Mutex<Option<(String, String, Bytes)>>,
    }

    #[async_trait]
    impl Backend for Compacting {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn put(&self, name: &str, payload: Payload, mode: PutMode) -> Result<()> {
            self.inner.put(name, payload, mode).await
        }
        async fn get(&self, name: &str) -> Result<Bytes> {
            let due = {
                let mut plan = self.plan.lock().unwrap();
                match plan.as_ref() {
                    Some((victim, _, _)) if victim == name => plan.take(),
                    _ => None,
                }
            };
            if let Some((victim, replacement, bytes)) = due {
                self.inner
                    .put(&replacement, Payload::Bytes(bytes), PutMode::Create)
                    .await?;
                self.inner.delete_many(&[victim]).await?;
            }
            self.inner.get(name).await
        }
        async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes> {
            self.inner.get_range(name, offset, len).await
        }
        async fn head(&self, name: &str) -> Result<ObjectMeta> {
            self.inner.head(name).await
        }
        async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
            self.inner.list_page(prefix, token).await
        }
        async fn delete_many(&self, names: &[String]) -> Result<()> {
            self.inner.delete_many(names).await
        }
    }

    async fn repo(dir: &std::path::Path) -> (Arc<Compacting>, Repository) {
        let backend = Arc::new(Compacting {
            inner: LocalBackend::new(dir).unwrap(),
            plan: Mutex::new(None),
        });
        let opts = InitOptions {
            kdf: KdfParams {
                m_cost_kib: 1024,
                t_cost: 1,
                p_cost: 1,
            },
            ..Default::default()
        };
        let repo = Repository::init(backend.clone(), b"pw", &opts)
            .await
            .unwrap();
        (backend, repo)
    }

    /// Index entries of `packs` made-up packs with `per_pack` blobs each.
    fn file(seed: u8, packs: u8, per_pack: u8) -> IndexFile {
        IndexFile {
            supersedes: vec![],
            packs: (0..packs)
                .map(|p| IndexPack {
                    id: Id::hash(&[b'p', seed, p]),
                    blobs: (0..per_pack)
                        .map(|b| IndexBlob {
                            kind: BlobKind::Data,
                            compression: Compression::Zstd,
                            offset: b as u32 * 100,
                            stored_len: 100,
                            raw_len: 300,
                            id: Id::hash(&[b'b', seed, p, b]),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn ids(f: &IndexFile) -> BTreeSet<Id> {
        f.packs
            .iter()
            .flat_map(|p| p.blobs.iter().map(|b| b.id))
            .collect()
    }

    async fn index_names(repo: &Repository) -> BTreeSet<String> {
        list_all(repo.backend(), names::INDEX)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect()
    }

    async fn load_plain(repo: &Repository, id: &Id) -> Vec<u8> {
        repo.load_index_plain(&names::in_dir(names::INDEX, id))
            .await
            .unwrap()
    }

    /// An index object listed but deleted before it is read (a concurrent
    /// compaction replaced it) does not fail the load: the loader lists
    /// again and reads the replacement. (Before: "object … not found".)
    #[tokio::test]
    async fn reader_relists_when_an_index_object_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let (backend, repo) = repo(dir.path()).await;
        let (a, b) = (file(1, 3, 20), file(2, 2, 20));
        let ia = repo.save_index(&a).await.unwrap();
        repo.save_index(&b).await.unwrap();
        // The replacement: a's content, superseding a; stored by the
        // "compaction" only once the reader has listed.
        let s = IndexFile {
            supersedes: vec![ia],
            packs: a.packs.clone(),
        };
        let is = repo.save_index(&s).await.unwrap();
        let s_name = names::in_dir(names::INDEX, &is);
        let s_bytes = backend.inner.get(&s_name).await.unwrap();
        backend
            .inner
            .delete_many(std::slice::from_ref(&s_name))
            .await
            .unwrap();
        *backend.plan.lock().unwrap() = Some((names::in_dir(names::INDEX, &ia), s_name, s_bytes));
        let index = repo.load_index().await.unwrap();
        assert!(
            backend.plan.lock().unwrap().is_none(),
            "the race did not happen"
        );
        let want: BTreeSet<Id> = ids(&a).union(&ids(&b)).copied().collect();
        let got: BTreeSet<Id> = index.iter().map(|(id, _)| id).collect();
        assert_eq!(got, want);
    }

    /// A reader leaves out what a loaded object supersedes, and reads it
    /// again when the superseding object is damaged.
    #[tokio::test]
    async fn reader_skips_superseded_objects() {
        let dir = tempfile::tempdir().unwrap();
        let (_backend, repo) = repo(dir.path()).await;
        let mut x = file(1, 2, 10);
        let keep = x.packs[0].clone();
        // An entry only the superseded object has.
        let stale = x.packs[1].blobs[0].id;
        x.packs[1].blobs.truncate(1);
        let ix = repo.save_index(&x).await.unwrap();
        let s = IndexFile {
            supersedes: vec![ix],
            packs: vec![keep.clone()],
        };
        let is = repo.save_index(&s).await.unwrap();
        let index = repo.load_index().await.unwrap();
        assert!(!index.contains(&stale));
        assert!(!index.has_pack(&x.packs[1].id));
        assert!(index.contains(&keep.blobs[3].id));
        assert_eq!(index.blob_count(), 10);
        // Damage the superseding object: the superseded one counts again.
        let path = dir.path().join(names::in_dir(names::INDEX, &is));
        std::fs::write(&path, b"damaged").unwrap();
        let index = repo.load_index().await.unwrap();
        assert!(index.contains(&stale));
        assert_eq!(index.blob_count(), 11);
    }

    /// Compaction writes the union under the cap, puts `supersedes` in the
    /// last object only, deletes what it replaced, leaves a damaged object
    /// alone, and the loaded index is the same before and after.
    #[tokio::test]
    async fn compaction_keeps_every_entry_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (_backend, repo) = repo(dir.path()).await;
        let mut replaced = BTreeSet::new();
        for seed in 0..10u8 {
            // Overlapping: seed and seed+1 share nothing, seed 3 repeats 2.
            let f = file(if seed == 3 { 2 } else { seed }, 2, 15);
            replaced.insert(repo.save_index(&f).await.unwrap());
        }
        let garbage = b"not an index object".to_vec();
        let garbage_name = names::in_dir(names::INDEX, &Id::hash(&garbage));
        repo.backend()
            .put(&garbage_name, garbage.into(), PutMode::Create)
            .await
            .unwrap();
        let before: Vec<(Id, BlobLocationView)> = view(&repo).await;
        // Nothing to do below the threshold.
        let auto = compact(&repo, &CompactOptions::auto(), None).await.unwrap();
        assert_eq!(auto.objects_replaced, 0);
        assert!(auto.written.is_empty());
        assert_eq!(index_names(&repo).await.len(), 11);

        let cap = 2000;
        let opts = CompactOptions {
            cap,
            ..CompactOptions::all()
        };
        let r = compact(&repo, &opts, None).await.unwrap();
        assert_eq!(r.objects_before, 11);
        assert_eq!(r.objects_replaced, 10);
        assert_eq!(r.blobs, 9 * 30);
        assert_eq!(r.left_alone.len(), 1, "{:?}", r.left_alone);
        assert_eq!(r.left_alone[0].0, garbage_name);
        assert!(r.written.len() >= 270 * 46 / cap, "{}", r.written.len());
        for (i, id) in r.written.iter().enumerate() {
            let plain = load_plain(&repo, id).await;
            assert!(plain.len() <= cap, "object of {} bytes", plain.len());
            let f = index_fmt::decode(&plain).unwrap();
            if i + 1 == r.written.len() {
                let got: BTreeSet<Id> = f.supersedes.iter().copied().collect();
                assert_eq!(got, replaced);
            } else {
                assert!(f.supersedes.is_empty());
            }
        }
        let mut want: BTreeSet<String> = r
            .written
            .iter()
            .map(|id| names::in_dir(names::INDEX, id))
            .collect();
        want.insert(garbage_name);
        assert_eq!(index_names(&repo).await, want);
        assert_eq!(view(&repo).await, before);
    }

    type BlobLocationView = (Id, u32, u32, u32);

    /// The loaded index as (chunk, (pack, offset, stored, raw)).
    async fn view(repo: &Repository) -> Vec<(Id, BlobLocationView)> {
        let index = repo.load_index().await.unwrap();
        index
            .iter()
            .map(|(id, l)| (id, (index.pack_id(&l), l.offset, l.stored_len, l.raw_len)))
            .collect()
    }
}
