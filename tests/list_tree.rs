//! Format v2: a snapshot is a small summary and its entries a list tree of
//! blobs (docs/FORMAT.md §8, §9), through the real library on a
//! local-directory repository.
//!
//! - A synthetic snapshot of many entries (generated, never held whole) is
//!   written through the real `Writer`, listed, and iterated with bounded
//!   memory; second snapshots with 1 % of the entries changed (contiguous,
//!   and scattered) store only the changed tree blobs. 200 000 entries in
//!   the suite; 5 000 000 with
//!   `cargo test --test list_tree -- --ignored --nocapture`.
//! - Listing 1 000 snapshots and restoring `latest` read no entry list but
//!   the one restored (bytes read counted by a counting wrapper around the
//!   local backend).

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::runtime;
use usdcop_dr::backend::local::LocalBackend;
use usdcop_dr::backend::{Backend, ListPage, ObjectMeta, Payload, PutMode};
use usdcop_dr::commands::backup::{self, BackupInput, BackupOptions};
use usdcop_dr::commands::restore::{self, RestoreOptions, RestoreTarget};
use usdcop_dr::crypto::KdfParams;
use usdcop_dr::format::snapshot::{Entry, EntryType, Snapshot, Source, SourceKind, Totals};
use usdcop_dr::format::Id;
use usdcop_dr::pipeline::{Writer, WriterOptions, WriterTotals};
use usdcop_dr::progress::Silent;
use usdcop_dr::repository::{InitOptions, Repository};

const PASSWORD: &[u8] = b"list tree test";

async fn init(path: PathBuf) -> Arc<Repository> {
    let backend = Arc::new(LocalBackend::new(path).unwrap());
    let opts = InitOptions {
        kdf: KdfParams {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    };
    Arc::new(Repository::init(backend, PASSWORD, &opts).await.unwrap())
}

/// Entry `i` of the synthetic file tree, as changed in `version`.
fn entry(i: u64, version: u64) -> Entry {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&i.to_le_bytes());
    id[8..16].copy_from_slice(&version.to_le_bytes());
    Entry {
        path: format!("srv/data/d{:05}/file-{i:09}.bin", i / 1000),
        kind: EntryType::File,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_000_000_000 + i as i64 + version as i64,
        ctime_ns: 1_700_000_000_000_000_000 + i as i64,
        inode: 1_000_000 + i,
        size: 4096 + version,
        sha256: Some(Id(id)),
        chunks: vec![Id(id)],
        chunk_tree: None,
        target: None,
        object: None,
    }
}

fn summary(tree: Id, count: u64, time: DateTime<Utc>) -> Snapshot {
    Snapshot {
        version: usdcop_dr::format::snapshot::VERSION,
        time,
        host: "test".into(),
        username: String::new(),
        source: Source {
            kind: SourceKind::Files,
            name: "synthetic".into(),
        },
        tags: vec![],
        parent: None,
        paths: vec!["/srv/data".into()],
        tree,
        entry_count: count,
        totals: Totals::default(),
        started: time,
        duration_s: 0.0,
        program_version: "test".into(),
        metadata: BTreeMap::new(),
    }
}

/// Store entries `0..n` (with `version(i)`) as a snapshot's list through a
/// real writer, generated one at a time; returns the snapshot id and the
/// writer's totals.
async fn write_snapshot(
    repo: &Arc<Repository>,
    n: u64,
    version: impl Fn(u64) -> u64 + Send + 'static,
    time: DateTime<Utc>,
) -> (Id, Snapshot, WriterTotals) {
    let index = repo.load_index().await.unwrap();
    let writer = Writer::start(repo.clone(), index, WriterOptions::default()).unwrap();
    let (list, totals) = tokio::task::spawn_blocking(move || {
        let list = writer
            .store_entry_list((0..n).map(|i| entry(i, version(i))))
            .unwrap();
        (list, writer.finish().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(list.count, n);
    let snap = summary(list.tree, list.count, time);
    let id = repo.save_snapshot(&snap).await.unwrap();
    (id, snap, totals)
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"))
}

fn big_snapshot(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let repo = init(dir.path().join("repo")).await;
        let t0 = Instant::now();
        let base = Utc::now();
        let (id, _, first) = write_snapshot(&repo, n, |_| 0, base).await;
        let write_s = t0.elapsed().as_secs_f64();
        eprintln!(
            "{n} entries: written in {write_s:.1} s: {} tree blobs, {} bytes stored",
            first.tree_blobs_new, first.tree_bytes_new
        );
        assert_eq!(first.chunks_new, 0, "no data chunk was stored");

        // Listed: only the summary is read.
        let snaps = repo.snapshots().await.unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].0, id);
        assert_eq!(snaps[0].1.entry_count, n);

        // Iterated with bounded memory: the walk holds a few nodes per
        // level, never the list (5 M entries as a Vec would take ~2 GiB).
        let index = repo.load_index().await.unwrap();
        let rss_before = status_kib("VmRSS:");
        let mut rss_peak = rss_before;
        let t1 = Instant::now();
        let snap = &snaps[0].1;
        let mut stream = repo.entries(&index, snap);
        let mut i = 0u64;
        while let Some(e) = stream.next().await.unwrap() {
            if i.is_multiple_of(4099) {
                assert_eq!(e, entry(i, 0), "entry {i}");
            }
            if i.is_multiple_of(50_000) {
                rss_peak = rss_peak.max(status_kib("VmRSS:"));
            }
            i += 1;
        }
        assert_eq!(i, n);
        let peak_held = stream.walker().peak_held();
        let nodes = stream.walker().nodes_read();
        let growth_mib = (rss_peak - rss_before) / 1024;
        eprintln!(
            "iterated in {:.1} s: {nodes} nodes read, at most {peak_held} node references held, \
             RSS growth {growth_mib} MiB",
            t1.elapsed().as_secs_f64()
        );
        // One node's children (≤ 4096) per level plus the reads in flight.
        assert!(peak_held <= 4 * (4096 + 8), "{peak_held}");
        assert!(growth_mib < 64, "iteration grew RSS by {growth_mib} MiB");

        // 1 % changed, contiguous: only those leaves and their ancestors.
        let k = n / 100;
        let start = n / 3;
        let (_, _, contiguous) = write_snapshot(
            &repo,
            n,
            move |i| u64::from((start..start + k).contains(&i)),
            base + chrono::Duration::seconds(1),
        )
        .await;
        // 1 % changed, scattered at random.
        let (_, _, scattered) = write_snapshot(
            &repo,
            n,
            |i| {
                let h = Id::hash(&i.to_le_bytes()).0;
                u64::from(u16::from_le_bytes([h[0], h[1]]) < 655)
            },
            base + chrono::Duration::seconds(2),
        )
        .await;
        for (what, t) in [("contiguous", &contiguous), ("scattered", &scattered)] {
            eprintln!(
                "1 % changed, {what}: {} of {} tree blobs new, {} bytes added ({:.2} % of the first)",
                t.tree_blobs_new,
                t.tree_blobs,
                t.tree_bytes_new,
                100.0 * t.tree_bytes_new as f64 / first.tree_bytes_new as f64
            );
            assert_eq!(t.chunks_new, 0);
            assert_eq!(t.bytes_stored_new, 0, "data bytes");
        }
        // ~64 entries a leaf: 1 % contiguous touches ~1 % of the leaves
        // (plus one path to the root at each end).
        assert!(
            contiguous.tree_bytes_new * 100 < first.tree_bytes_new * 3,
            "contiguous change stored {} of {} bytes",
            contiguous.tree_bytes_new,
            first.tree_bytes_new
        );
        // Scattered: a leaf of 64 entries holds a changed one with
        // probability 1 - 0.99^64 ≈ 47 %; the rest is deduplicated.
        assert!(
            scattered.tree_bytes_new * 100 < first.tree_bytes_new * 70,
            "scattered change stored {} of {} bytes",
            scattered.tree_bytes_new,
            first.tree_bytes_new
        );
        // Every snapshot reads back whole and checked.
        let snaps = repo.snapshots().await.unwrap();
        let index = repo.load_index().await.unwrap();
        let mut stream = repo.entries(&index, &snaps[1].1);
        let mut i = 0u64;
        while let Some(e) = stream.next().await.unwrap() {
            if i.is_multiple_of(997) || (start..start + k).contains(&i) && i.is_multiple_of(17) {
                let v = u64::from((start..start + k).contains(&i));
                assert_eq!(e, entry(i, v), "entry {i}");
            }
            i += 1;
        }
        assert_eq!(i, n);
    });
}

#[test]
fn a_200k_entry_snapshot_is_streamed_and_a_1_percent_change_stores_little() {
    big_snapshot(200_000);
}

/// `cargo test --test list_tree -- --ignored --nocapture`
#[test]
#[ignore]
fn a_5m_entry_snapshot_is_streamed_and_a_1_percent_change_stores_little() {
    big_snapshot(5_000_000);
}

/// A local backend that counts the bytes read per top-level directory.
#[derive(Debug)]
struct Counting {
    inner: LocalBackend,
    read: Mutex<BTreeMap<String, u64>>,
    gets: AtomicU64,
}

impl Counting {
    fn count(&self, name: &str, n: usize) {
        let dir = name.split('/').next().unwrap_or("").to_owned();
        *self.read.lock().unwrap().entry(dir).or_default() += n as u64;
        self.gets.fetch_add(1, Ordering::Relaxed);
    }
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.read.lock().unwrap())
    }
}

#[async_trait]
impl Backend for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(&self, name: &str, payload: Payload, mode: PutMode) -> usdcop_dr::Result<()> {
        self.inner.put(name, payload, mode).await
    }
    async fn get(&self, name: &str) -> usdcop_dr::Result<Bytes> {
        let b = self.inner.get(name).await?;
        self.count(name, b.len());
        Ok(b)
    }
    async fn get_range(&self, name: &str, offset: u64, len: u64) -> usdcop_dr::Result<Bytes> {
        let b = self.inner.get_range(name, offset, len).await?;
        self.count(name, b.len());
        Ok(b)
    }
    async fn head(&self, name: &str) -> usdcop_dr::Result<ObjectMeta> {
        self.inner.head(name).await
    }
    async fn list_page(&self, prefix: &str, token: Option<String>) -> usdcop_dr::Result<ListPage> {
        self.inner.list_page(prefix, token).await
    }
    async fn delete_many(&self, names: &[String]) -> usdcop_dr::Result<()> {
        self.inner.delete_many(names).await
    }
    fn spool_dir(&self) -> Option<PathBuf> {
        self.inner.spool_dir()
    }
}

/// Listing 1 000 snapshots and restoring `latest` read summaries only,
/// plus the latest's own entry list and data: a summary that embedded its
/// entries again (500 each here) would multiply the bytes read.
#[test]
fn listing_and_restoring_latest_read_no_entry_lists() {
    const SNAPSHOTS: u64 = 1000;
    const ENTRIES: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    runtime().block_on(async {
        let repo = init(path.clone()).await;
        // 999 synthetic snapshots, each with its own 500-entry list.
        let index = repo.load_index().await.unwrap();
        let writer = Writer::start(repo.clone(), index, WriterOptions::default()).unwrap();
        let lists = tokio::task::spawn_blocking(move || {
            let lists: Vec<_> = (0..SNAPSHOTS - 1)
                .map(|s| {
                    writer
                        .store_entry_list((0..ENTRIES).map(|i| entry(i, s)))
                        .unwrap()
                })
                .collect();
            writer.finish().unwrap();
            lists
        })
        .await
        .unwrap();
        let base = Utc::now() - chrono::Duration::days(1);
        for (s, l) in lists.iter().enumerate() {
            let snap = summary(l.tree, l.count, base + chrono::Duration::seconds(s as i64));
            repo.save_snapshot(&snap).await.unwrap();
        }
        // The latest: a real backup of a small stream.
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let latest = backup::run(
            repo.clone(),
            BackupOptions::new("stream"),
            BackupInput::Stream {
                name: "dump.bin".into(),
                reader: Box::new(Cursor::new(data.clone())),
            },
            Arc::new(Silent),
        )
        .await
        .unwrap();

        // Reopen through the counting backend.
        let counting = Arc::new(Counting {
            inner: LocalBackend::new(path.clone()).unwrap(),
            read: Mutex::new(BTreeMap::new()),
            gets: AtomicU64::new(0),
        });
        let repo = Arc::new(Repository::open(counting.clone(), PASSWORD).await.unwrap());
        counting.take();

        // `snapshots`: summaries only.
        let listed = usdcop_dr::commands::snapshots::list(&repo, None)
            .await
            .unwrap();
        assert_eq!(listed.len() as u64, SNAPSHOTS);
        let read = counting.take();
        let summaries = read.get("snapshots").copied().unwrap_or(0);
        eprintln!("snapshots read {read:?}");
        assert_eq!(read.get("data"), None, "listing read packs: {read:?}");
        assert!(
            summaries < SNAPSHOTS * 1024,
            "{summaries} bytes of summaries read for {SNAPSHOTS} snapshots"
        );

        // `restore --snapshot latest`: the summaries, the index, and the
        // latest's tree and data only.
        let (id, snap) = repo.find_snapshot("latest", None).await.unwrap();
        assert_eq!(id, latest.snapshot_id);
        let out = SharedBuf::default();
        let r = restore::run(
            repo.clone(),
            id,
            &snap,
            RestoreOptions {
                sync: Default::default(),
                target: RestoreTarget::Stream(Box::new(out.clone())),
                include: vec![],
                read_concurrency: None,
            },
            Arc::new(Silent),
        )
        .await
        .unwrap();
        assert_eq!(r.bytes, data.len() as u64);
        assert!(*out.0.lock().unwrap() == data);
        let read = counting.take();
        eprintln!("restore latest read {read:?}");
        let packs = read.get("data").copied().unwrap_or(0);
        // The stream's data (~1.2 MB, stored raw at most) plus one small
        // tree node; the 999 other entry lists (~50 KiB stored each) would
        // add tens of MB.
        assert!(
            packs < data.len() as u64 + 64 * 1024,
            "restore of latest read {packs} bytes of packs"
        );
        assert!(
            read.get("snapshots").copied().unwrap_or(0) < SNAPSHOTS * 1024,
            "{read:?}"
        );
    });
}

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An entry of more than 1 024 chunks keeps them in a chunk list tree;
/// readers get the same chunk list back whichever form it is stored in.
#[test]
fn long_chunk_lists_go_out_of_line_and_read_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let repo = init(dir.path().join("repo")).await;
        let ids = |n: u32, salt: u8| -> Vec<Id> {
            (0..n)
                .map(|i| {
                    let mut b = [salt; 32];
                    b[..4].copy_from_slice(&i.to_le_bytes());
                    Id(b)
                })
                .collect()
        };
        let mut entries: Vec<Entry> = (0..4).map(|i| entry(i, 0)).collect();
        entries[0].chunks = ids(1024, 1); // the most kept inline
        entries[1].chunks = ids(1025, 2);
        entries[2].chunks = ids(200_000, 3); // ~6 MiB of ids: several leaves
        entries[3].chunks = vec![Id([9; 32]); 5000]; // the same chunk over and over
        let mut snap = summary(Id([0; 32]), 0, Utc::now());
        let id = backup::save_snapshot_with_entries(&repo, &mut snap, entries.clone())
            .await
            .unwrap();
        let snap = repo.load_snapshot(&id).await.unwrap();
        assert_eq!(snap.entry_count, 4);
        let index = repo.load_index().await.unwrap();
        // As stored: inline up to 1 024, a chunk tree beyond.
        let mut stream = repo.entries(&index, &snap);
        let mut stored = vec![];
        while let Some(e) = stream.next().await.unwrap() {
            stored.push(e);
        }
        assert_eq!(stored[0].chunks.len(), 1024);
        assert!(stored[0].chunk_tree.is_none());
        for e in &stored[1..] {
            assert!(e.chunks.is_empty() && e.chunk_tree.is_some(), "{}", e.path);
        }
        for (s, e) in stored.iter().zip(&entries) {
            assert_eq!(repo.entry_chunks(&index, s).await.unwrap(), e.chunks);
        }
        // Expanded by load_entries: exactly what was stored.
        assert_eq!(repo.load_entries(&index, &snap).await.unwrap(), entries);
        // Every referenced blob: tree nodes (indexed) and data chunks.
        let refs = repo.snapshot_blob_ids(&index, &snap).await.unwrap();
        assert!(refs.unreadable.is_none());
        let refs = refs.ids;
        let nodes: Vec<&Id> = refs.iter().filter(|r| index.contains(r)).collect();
        assert!(nodes.len() >= 4, "{} tree nodes", nodes.len());
        let data = refs.len() - nodes.len();
        assert_eq!(data, 1024 + 1025 + 200_000 + 1);
    });
}

/// Every node of every snapshot's tree is read by `verify`: a lost tree
/// pack is reported against the snapshot, and restore refuses it.
#[test]
fn verify_reads_every_tree_node_and_reports_a_lost_one() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let repo = init(dir.path().join("repo")).await;
        let s = backup::run(
            repo.clone(),
            BackupOptions::new("stream"),
            BackupInput::Stream {
                name: "dump.bin".into(),
                reader: Box::new(Cursor::new(vec![7u8; 100_000])),
            },
            Arc::new(Silent),
        )
        .await
        .unwrap();
        let verify = || async {
            usdcop_dr::commands::verify::run(repo.clone(), Default::default(), Arc::new(Silent))
                .await
                .unwrap()
        };
        let ok = verify().await;
        assert!(ok.ok(), "{:?}", ok.problems);
        // Remove the packs holding tree blobs (their headers say which).
        let packs = usdcop_dr::backend::list_all(repo.backend(), "data/")
            .await
            .unwrap();
        let mut removed = 0;
        for p in packs {
            let pid = usdcop_dr::format::names::id_of(&p.name).unwrap();
            let header = repo.read_pack_header(&pid, p.size).await.unwrap();
            if header
                .iter()
                .any(|b| b.kind == usdcop_dr::format::pack::BlobKind::Tree)
            {
                assert!(header
                    .iter()
                    .all(|b| b.kind == usdcop_dr::format::pack::BlobKind::Tree));
                repo.backend()
                    .delete_many(std::slice::from_ref(&p.name))
                    .await
                    .unwrap();
                removed += 1;
            }
        }
        assert_eq!(removed, 1, "tree blobs go into a pack of their own");
        let report = verify().await;
        let short = s.snapshot_id.short();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.snapshots.contains(&short)
                    && p.message.contains("entry list cannot be read")),
            "{:?}",
            report.problems
        );
        let snap = repo.load_snapshot(&s.snapshot_id).await.unwrap();
        let e = restore::run(
            repo.clone(),
            s.snapshot_id,
            &snap,
            RestoreOptions {
                sync: Default::default(),
                target: RestoreTarget::Stream(Box::new(SharedBuf::default())),
                include: vec![],
                read_concurrency: None,
            },
            Arc::new(Silent),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), usdcop_dr::ErrorKind::Integrity, "{e}");
    });
}
