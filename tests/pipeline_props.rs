//! Library-level properties of the backup pipeline: any stream stored
//! through `commands::backup` comes back byte-identical through
//! `commands::restore`, at every size around the chunker's limits; and a
//! stream far larger than memory budgets is stored and restored without
//! ever being held whole.

use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use usdcop_dr::backend::local::LocalBackend;
use usdcop_dr::commands::backup::{self, BackupInput, BackupOptions, BackupSummary};
use usdcop_dr::commands::restore::{self, RestoreOptions, RestoreTarget};
use usdcop_dr::crypto::KdfParams;
use usdcop_dr::progress::Silent;
use usdcop_dr::repository::{InitOptions, Repository};

const PASS: &[u8] = b"pipeline property passphrase";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn small_opts() -> InitOptions {
    InitOptions {
        chunk_avg_size: 4096,
        pack_size: 1 << 20,
        kdf: KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        },
        ..Default::default()
    }
}

async fn new_repo(dir: &std::path::Path, opts: &InitOptions) -> Arc<Repository> {
    let backend = Arc::new(LocalBackend::new(dir.join("repo")).unwrap());
    Arc::new(Repository::init(backend, PASS, opts).await.unwrap())
}

async fn backup_stream(
    repo: &Arc<Repository>,
    name: &str,
    reader: Box<dyn Read + Send>,
) -> BackupSummary {
    backup::run(
        repo.clone(),
        BackupOptions::new("props"),
        BackupInput::Stream {
            name: name.to_owned(),
            reader,
        },
        Arc::new(Silent),
    )
    .await
    .unwrap()
}

/// Restore snapshot `id`'s single file into `out`.
async fn restore_stream(
    repo: &Arc<Repository>,
    id: usdcop_dr::format::Id,
    out: Box<dyn Write + Send>,
) -> u64 {
    let snap = repo.load_snapshot(&id).await.unwrap();
    let s = restore::run(
        repo.clone(),
        id,
        &snap,
        RestoreOptions {
            sync: Default::default(),
            target: RestoreTarget::Stream(out),
            include: vec![],
            read_concurrency: None,
        },
        Arc::new(Silent),
    )
    .await
    .unwrap();
    assert_eq!(s.files, 1);
    assert!(s.failed.is_empty());
    s.bytes
}

/// A `Write + Send` into a shared Vec.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn round_trip(repo: &Arc<Repository>, data: &[u8]) -> BackupSummary {
    let s = backup_stream(repo, "stream.bin", Box::new(Cursor::new(data.to_vec()))).await;
    assert_eq!(s.bytes_in, data.len() as u64);
    let buf = SharedBuf::default();
    let n = restore_stream(repo, s.snapshot_id, Box::new(buf.clone())).await;
    assert_eq!(n, data.len() as u64);
    let restored = buf.0.lock().unwrap();
    assert!(
        restored[..] == data[..],
        "restored {} bytes differ from the {} stored",
        restored.len(),
        data.len()
    );
    s
}

/// Every chunk of snapshot `id` but the last is within [min, max]; the last
/// is within [1, max]; together they are the stream's length (`data`'s).
/// The entry's whole-content SHA-256 is there only where it costs nothing:
/// a stream of at most one chunk, whose id it is.
async fn check_chunk_sizes(repo: &Arc<Repository>, id: usdcop_dr::format::Id, data: &[u8]) {
    let len = data.len();
    let snap = repo.load_snapshot(&id).await.unwrap();
    let index = repo.load_index().await.unwrap();
    let p = repo.config().chunker;
    let entries = repo.load_entries(&index, &snap).await.unwrap();
    let chunks = &entries[0].chunks;
    let whole = usdcop_dr::format::Id::hash(data);
    match chunks.len() {
        0 | 1 => assert_eq!(entries[0].sha256, Some(whole), "{len} bytes"),
        n => assert_eq!(entries[0].sha256, None, "{len} bytes in {n} chunks"),
    }
    let sizes: Vec<u32> = chunks
        .iter()
        .map(|c| index.get(c).expect("chunk indexed").raw_len)
        .collect();
    assert_eq!(
        sizes.iter().map(|&s| s as usize).sum::<usize>(),
        len,
        "chunk sizes {sizes:?}"
    );
    if len == 0 {
        assert!(sizes.is_empty(), "an empty stream has no chunk: {sizes:?}");
    }
    for (i, &s) in sizes.iter().enumerate() {
        let last = i + 1 == sizes.len();
        assert!(s <= p.max_size && s >= 1, "chunk {i} of {len}: {s} bytes");
        assert!(
            last || s >= p.min_size,
            "chunk {i} of {len} (not last) is {s} < min {}",
            p.min_size
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Content {
    Random(u64),
    Zeros,
    /// A short repeating pattern: compressible, and cut into identical chunks.
    Pattern(u8),
    /// One random block of this many bytes, repeated: duplicate chunks
    /// inside the stream, at shifting offsets.
    RepeatedBlock(u64, usize),
}

fn make(content: Content, len: usize) -> Vec<u8> {
    match content {
        Content::Random(seed) => random_bytes(len, seed),
        Content::Zeros => vec![0; len],
        Content::Pattern(p) => (0..len).map(|i| (i % 251) as u8 ^ p).collect(),
        Content::RepeatedBlock(seed, block) => random_bytes(block, seed)
            .into_iter()
            .cycle()
            .take(len)
            .collect(),
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut g = XorShift::new(seed);
    let mut out = vec![0u8; len];
    g.fill(&mut out);
    out
}

struct XorShift {
    x: u64,
    word: [u8; 8],
    used: usize,
}

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift {
            x: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            used: 8,
        }
    }
    fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.used == 8 {
                self.x ^= self.x << 13;
                self.x ^= self.x >> 7;
                self.x ^= self.x << 17;
                self.word = self.x.to_le_bytes();
                self.used = 0;
            }
            let n = (8 - self.used).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&self.word[self.used..self.used + n]);
            self.used += n;
            i += n;
        }
    }
}

/// Sizes where chunking decisions change (for avg 4096: min 1024, max 16384),
/// and around the pipeline's 256 KiB read buffer.
fn edge_sizes() -> Vec<usize> {
    let (min, avg, max, rd) = (1024usize, 4096usize, 16384usize, 256 * 1024usize);
    let mut v = vec![0, 1, 2];
    for s in [min, avg, max, 2 * max, min + max, rd, rd + max] {
        v.extend([s - 1, s, s + 1]);
    }
    v
}

fn content_strategy() -> impl Strategy<Value = Content> {
    prop_oneof![
        4 => any::<u64>().prop_map(Content::Random),
        1 => Just(Content::Zeros),
        1 => any::<u8>().prop_map(Content::Pattern),
        2 => (any::<u64>(), 1usize..40_000).prop_map(|(s, b)| Content::RepeatedBlock(s, b)),
    ]
}

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => proptest::sample::select(edge_sizes()),
        2 => 0usize..300_000,
    ]
}

#[test]
fn chunker_parameters_are_what_the_edge_sizes_assume() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), &small_opts()).await;
        let p = repo.config().chunker;
        assert_eq!((p.min_size, p.avg_size, p.max_size), (1024, 4096, 16384));
    });
}

/// Every edge size, for each kind of content, in one repository (so later
/// streams also deduplicate against earlier ones).
#[test]
fn every_edge_size_round_trips() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), &small_opts()).await;
        for (k, content) in [
            Content::Random(5),
            Content::Zeros,
            Content::Pattern(9),
            Content::RepeatedBlock(3, 5000),
        ]
        .into_iter()
        .enumerate()
        {
            for len in edge_sizes() {
                let data = make(content, len);
                let s = round_trip(&repo, &data).await;
                check_chunk_sizes(&repo, s.snapshot_id, &data).await;
                if k == 0 && len > 0 && len <= 1024 {
                    // A stream no longer than the minimum chunk is one chunk.
                    assert_eq!(s.chunks, 1, "{len} random bytes");
                }
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_stream_round_trips_and_a_repeat_stores_nothing(content in content_strategy(), len in size_strategy()) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let repo = new_repo(dir.path(), &small_opts()).await;
            let data = make(content, len);
            let first = round_trip(&repo, &data).await;
            check_chunk_sizes(&repo, first.snapshot_id, &data).await;
            assert!(first.chunks_new <= first.chunks);
            if let Content::Random(_) = content {
                // Incompressible: everything is stored, plus per-chunk overhead.
                assert!(first.bytes_stored_new >= len as u64, "{first:?}");
            }
            let again = round_trip(&repo, &data).await;
            assert_eq!(again.bytes_stored_new, 0, "a repeated stream stored new bytes: {again:?}");
            assert_eq!(again.chunks_new, 0);
            assert_eq!(again.chunks, first.chunks);
            assert_ne!(again.snapshot_id, first.snapshot_id);
        });
    }
}

// ---------------------------------------------------------------- streaming

/// `len` deterministic pseudo-random bytes, generated as read, hashed as
/// handed out; never held.
struct GenReader {
    g: XorShift,
    left: u64,
    hash: Arc<Mutex<Sha256>>,
}

impl Read for GenReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.g.fill(&mut buf[..n]);
        self.left -= n as u64;
        self.hash.lock().unwrap().update(&buf[..n]);
        Ok(n)
    }
}

/// Hashes what is written; keeps nothing.
#[derive(Clone)]
struct HashWriter(Arc<Mutex<(Sha256, u64)>>);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut g = self.0.lock().unwrap();
        g.0.update(buf);
        g.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_300_mib_stream_round_trips_in_bounded_memory() {
    const LEN: u64 = 300 << 20;
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            kdf: KdfParams {
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            },
            ..Default::default() // 1 MiB chunks, 32 MiB packs
        };
        let repo = new_repo(dir.path(), &opts).await;
        let src_hash = Arc::new(Mutex::new(Sha256::new()));
        let reader = GenReader {
            g: XorShift::new(300),
            left: LEN,
            hash: src_hash.clone(),
        };
        let s = backup_stream(&repo, "big.bin", Box::new(reader)).await;
        assert_eq!(s.bytes_in, LEN);
        assert!(s.packs_written >= 9, "300 MiB in 32 MiB packs: {s:?}");
        let src_hash = src_hash.lock().unwrap().clone().finalize();

        let out = HashWriter(Arc::new(Mutex::new((Sha256::new(), 0))));
        let n = restore_stream(&repo, s.snapshot_id, Box::new(out.clone())).await;
        assert_eq!(n, LEN);
        let (h, written) = out.0.lock().unwrap().clone();
        assert_eq!(written, LEN);
        assert_eq!(h.finalize(), src_hash, "restored stream hashes differently");
    });
    let peak = peak_rss_kib();
    eprintln!("peak RSS after 300 MiB round trip: {} MiB", peak / 1024);
    assert!(
        peak < 200 * 1024,
        "peak RSS {} MiB: something holds the stream",
        peak / 1024
    );
}

/// Files keep their whole-content SHA-256 (a live file or object is
/// compared with it), whether one chunk (its id, not hashed twice) or many.
#[test]
fn every_file_entry_has_its_whole_sha256() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let repo = new_repo(dir.path(), &small_opts()).await;
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let files: Vec<(String, Vec<u8>)> = [0usize, 1, 1000, 5000, 16_384, 100_000, 300_000]
            .iter()
            .enumerate()
            .map(|(k, &len)| (format!("f{k}"), random_bytes(len, 40 + k as u64)))
            .collect();
        for (name, data) in &files {
            std::fs::write(tree.join(name), data).unwrap();
        }
        let s = backup::run(
            repo.clone(),
            BackupOptions::new("files"),
            BackupInput::Files(vec![tree.clone()]),
            Arc::new(Silent),
        )
        .await
        .unwrap();
        let snap = repo.load_snapshot(&s.snapshot_id).await.unwrap();
        let index = repo.load_index().await.unwrap();
        let entries = repo.load_entries(&index, &snap).await.unwrap();
        let mut many = 0;
        for (name, data) in &files {
            let e = entries
                .iter()
                .find(|e| e.path.ends_with(&format!("/{name}")))
                .unwrap_or_else(|| panic!("{name} not in the snapshot"));
            let want: [u8; 32] = Sha256::digest(data).into();
            assert_eq!(
                e.sha256.map(|h| h.0),
                Some(want),
                "{name}: {} bytes in {} chunks",
                data.len(),
                e.chunks.len()
            );
            many += usize::from(e.chunks.len() > 1);
        }
        assert!(many >= 2, "some files span several chunks");
    });
}
