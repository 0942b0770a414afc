//! The backup pipeline: source bytes → chunker → parallel workers (hash,
//! dedup lookup, compress, encrypt) → packer → uploaders → index objects.
//!
//! ```text
//!  caller thread        stream-hash         N worker threads        packer thread       K uploader threads
//!  read into the  ─job─▶ whole-content ─job─▶ sha256, dedup, zstd, ──blob──▶ append to ──pack──▶ put pack, then
//!  chunker, cut          sha256 (files,      seal                   spool file          write index objects
//!                        objects: WholeHash)
//!       ◀──── (id, new?) in order ────────────────┘
//! ```
//! Every channel is bounded, so a slow store slows the reader instead of
//! filling memory. Peak memory is about the chunker's window (2 maximum
//! chunks and 1 MiB), plus 2·N + N + 2 chunks in flight, 2 sealed blobs
//! and buffers, independent of input size. Packs
//! are spooled to disk (`Backend::spool_dir`), never held in memory.
//!
//! Write order gives crash safety: a pack is uploaded before any index
//! object names it, and [`Writer::finish`] writes the last index before the
//! caller may write a snapshot. A killed backup leaves packs (and indexes
//! of finished packs) that the next backup reuses, and no snapshot.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::backend::Payload;
use crate::chunker::Chunker;
use crate::crypto::Domain;
use crate::error::{Error, Result};
use crate::format::index::{IndexBlob, IndexPack};
use crate::format::pack::{self, BlobKind, Compression, PackEntry};
use crate::format::snapshot::{Entry, MAX_INLINE_CHUNKS};
use crate::format::tree::{ChildRef, TreeBuilder, TreeItem};
use crate::format::{codec, names, Hasher, Id};
use crate::pipeline::level::{LevelChoice, LevelPlan};
use crate::progress::Progress;
use crate::repository::{MasterIndex, Repository};
use crate::scratch::PrivateDir;

/// Index objects are written after this many packs, or this long after the
/// previous one, whichever comes first (bounds what a crash can orphan).
const INDEX_FLUSH_PACKS: usize = 4;
const INDEX_FLUSH_INTERVAL: Duration = Duration::from_secs(15);
/// Spool files older than this are left over from a killed process.
const STALE_SPOOL: Duration = Duration::from_secs(6 * 3600);

#[derive(Clone, Default)]
pub struct WriterOptions {
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Parallel pack uploads; 0 = 2.
    pub uploaders: usize,
    /// The backup lock's lease: once it lapses (refreshes failed for too
    /// long), no more packs or index objects are written and the stream
    /// stops with its error, since others may already judge us dead.
    pub lease: Option<crate::repository::lock::Lease>,
}

/// What one stream became.
#[derive(Debug, Clone)]
pub struct StoredStream {
    pub size: u64,
    /// SHA-256 of the whole content: always with [`WholeHash::Take`];
    /// with [`WholeHash::Skip`] only when it costs nothing (a stream of
    /// at most one chunk, whose id is that hash).
    pub sha256: Option<Id>,
    pub chunks: Vec<Id>,
}

/// Whether [`Writer::store_stream_with`] takes the SHA-256 of the whole
/// content besides the chunk ids.
///
/// The chunk ids (SHA-256 of each chunk), in order, with the size, already
/// prove the content: a restore checks every chunk against its id and the
/// ids against the list, in order (docs/FORMAT.md, "Entries"). The whole
/// hash is one more pass over every byte, on backup and on restore; it is
/// taken where something outside the repository is compared with it (a
/// bucket's live object, a file left in place) and skipped for streams
/// nothing else reads (a database dump, standard input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeHash {
    Take,
    Skip,
}

#[derive(Debug, Default)]
pub struct WriterStats {
    pub chunks: AtomicU64,
    pub chunks_new: AtomicU64,
    pub bytes_stored_new: AtomicU64,
    pub packs: AtomicU64,
    pub index_objects: AtomicU64,
    pub tree_blobs: AtomicU64,
    pub tree_blobs_new: AtomicU64,
    pub tree_bytes_new: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct WriterTotals {
    pub chunks: u64,
    pub chunks_new: u64,
    /// Stored bytes of new data chunks (tree blobs: `tree_bytes_new`).
    pub bytes_stored_new: u64,
    pub packs: u64,
    pub index_objects: u64,
    /// List tree nodes written (`tree_blobs`), of which new (not already
    /// stored), and the stored bytes of the new ones.
    pub tree_blobs: u64,
    pub tree_blobs_new: u64,
    pub tree_bytes_new: u64,
}

/// Where a stored entry list is: its root node and how many entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredList {
    pub tree: Id,
    pub count: u64,
}

struct Job {
    data: Vec<u8>,
    reply: Sender<Result<Id>>,
}

struct SealedBlob {
    entry: PackEntry,
    bytes: Vec<u8>,
}

struct FinishedPack {
    id: Id,
    path: PathBuf,
    len: u64,
    blobs: Vec<IndexBlob>,
}

struct Shared {
    repo: Arc<Repository>,
    known: Arc<MasterIndex>,
    /// Chunks this backup has queued for storage (dedup within the run).
    inflight: Mutex<HashSet<Id>>,
    stats: WriterStats,
    error: Mutex<Option<Error>>,
    pending_index: Mutex<(Vec<IndexPack>, Instant)>,
    rt: tokio::runtime::Handle,
    compression_level: i32,
    /// The level of each new data chunk (`pipeline::level`).
    level_choice: LevelChoice,
    lease: Option<crate::repository::lock::Lease>,
}

impl Shared {
    /// Fails the pipeline if the lock's lease has lapsed.
    fn check_lease(&self) -> Result<()> {
        match &self.lease {
            Some(l) => l
                .check()
                .inspect_err(|e| self.fail(Error::new(e.kind(), e.to_string()))),
            None => Ok(()),
        }
    }
    fn fail(&self, e: Error) {
        let mut slot = self.error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e);
        }
    }
    fn failed(&self) -> Option<Error> {
        self.error
            .lock()
            .unwrap()
            .as_ref()
            .map(|e| Error::new(e.kind(), e.to_string()))
    }
}

pub struct Writer {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
    /// Tree blobs go straight to the packer (sealed on the caller's thread).
    blobs: Option<Sender<SealedBlob>>,
    threads: Vec<JoinHandle<()>>,
    queue_depth: usize,
    chunker_params: crate::format::meta::ChunkerParams,
    /// The run's own spool directory, when the backend has none: removed
    /// when the writer is dropped, after `Drop` has joined the threads.
    _private_spool: Option<PrivateDir>,
}

impl Writer {
    /// Start the pipeline threads. Must be called inside a tokio runtime.
    pub fn start(
        repo: Arc<Repository>,
        known: Arc<MasterIndex>,
        opts: WriterOptions,
    ) -> Result<Writer> {
        let workers = if opts.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            opts.workers
        };
        let uploaders = if opts.uploaders == 0 {
            2
        } else {
            opts.uploaders
        };
        // A backend without a spool directory of its own (S3) spools packs
        // into a directory made for this run (mode 0700, removed with the
        // writer and on SIGINT/SIGTERM), never into a shared fixed name
        // under /tmp: one made by a root run would refuse the `postgres`
        // cron job, and one planted by another user would hold our packs
        // between their hashing and their upload.
        let (spool, private_spool) = match repo.backend().spool_dir() {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::io(format!(
                        "cannot create spool directory {}: {e}",
                        dir.display()
                    ))
                })?;
                clean_stale_spool(&dir);
                (dir, None)
            }
            None => {
                let dir = PrivateDir::create(None)?;
                (dir.path().to_owned(), Some(dir))
            }
        };
        let config = repo.config().clone();
        let shared = Arc::new(Shared {
            repo,
            known,
            inflight: Mutex::new(HashSet::new()),
            stats: WriterStats::default(),
            error: Mutex::new(None),
            pending_index: Mutex::new((Vec::new(), Instant::now())),
            rt: tokio::runtime::Handle::current(),
            compression_level: config.compression_level,
            level_choice: LevelChoice::new(config.compression_level),
            lease: opts.lease,
        });
        let (job_tx, job_rx) = bounded::<Job>(workers * 2);
        let (blob_tx, blob_rx) = bounded::<SealedBlob>(2);
        let (pack_tx, pack_rx) = bounded::<FinishedPack>(1);
        let mut threads = Vec::new();
        for i in 0..workers {
            let (s, rx, tx) = (shared.clone(), job_rx.clone(), blob_tx.clone());
            threads.push(spawn(format!("chunk-worker-{i}"), move || {
                worker(s, rx, tx)
            }));
        }
        let s = shared.clone();
        let pack_size = config.pack_size as u64;
        threads.push(spawn("packer".into(), move || {
            packer(s, blob_rx, pack_tx, spool, pack_size)
        }));
        for i in 0..uploaders {
            let (s, rx) = (shared.clone(), pack_rx.clone());
            threads.push(spawn(format!("uploader-{i}"), move || uploader(s, rx)));
        }
        Ok(Writer {
            shared,
            jobs: Some(job_tx),
            blobs: Some(blob_tx),
            threads,
            queue_depth: workers * 2,
            chunker_params: config.chunker,
            _private_spool: private_spool,
        })
    }

    /// Chunk and store one stream; returns its chunk list and the SHA-256
    /// of the whole content. Blocking: call from a blocking thread.
    pub fn store_stream(&self, reader: impl Read, progress: &dyn Progress) -> Result<StoredStream> {
        self.store_stream_with(reader, progress, WholeHash::Take)
    }

    /// [`Writer::store_stream`], with the whole content's SHA-256 taken
    /// or not ([`WholeHash`]).
    pub fn store_stream_with(
        &self,
        mut reader: impl Read,
        progress: &dyn Progress,
        whole: WholeHash,
    ) -> Result<StoredStream> {
        let jobs = self.jobs.as_ref().expect("writer not finished");
        let mut chunker = Chunker::new(self.chunker_params);
        let mut hasher = match whole {
            WholeHash::Take => StreamHasher::Inline(Hasher::new()),
            WholeHash::Skip => StreamHasher::Off,
        };
        let mut size = 0u64;
        let mut chunked = 0u64;
        let mut pending: VecDeque<Receiver<Result<Id>>> = VecDeque::new();
        let mut chunks = Vec::new();
        let mut eof = false;
        while !eof {
            let n = chunker.read_from(&mut reader).map_err(|e| {
                Error::new(crate::ErrorKind::Source, format!("reading the source: {e}"))
            })?;
            // Checked at every read, so a slow source cannot keep a
            // writer going long after its lock has lapsed.
            self.shared.check_lease()?;
            eof = n == 0;
            size += n as u64;
            progress.add_bytes(n as u64);
            while let Some(data) = chunker.next_chunk(eof) {
                if let Some(e) = self.shared.failed() {
                    return Err(e);
                }
                if pending.len() >= self.queue_depth {
                    chunks.push(self.wait(pending.pop_front().unwrap())?);
                }
                let first = chunked == 0;
                chunked += data.len() as u64;
                let (reply, rx) = bounded(1);
                let job = Job { data, reply };
                if first && eof && chunked == size {
                    // The stream is this one chunk: its id is the whole
                    // content's SHA-256, so it is not hashed twice (most
                    // files and objects of a tree or bucket).
                    jobs.send(job).map_err(|_| self.broken())?;
                } else {
                    hasher.send(job, chunked, jobs).map_err(|_| self.broken())?;
                }
                pending.push_back(rx);
            }
        }
        for rx in pending {
            chunks.push(self.wait(rx)?);
        }
        let whole = hasher.finish()?;
        // One chunk's id is the SHA-256 of the whole, taken or not.
        let sha256 = match chunks.len() {
            0 => Some(whole.unwrap_or_else(|| Id::hash(b""))),
            1 => Some(chunks[0]),
            _ => whole,
        };
        // The chunk ids and the stream hash are taken over the chunks; their
        // lengths must add up to what was read (the chunker is
        // property-tested to cut its input exactly; this keeps a defect
        // there from passing silently).
        if chunked != size {
            return Err(Error::io(format!(
                "internal error: {size} bytes read but {chunked} chunked"
            )));
        }
        Ok(StoredStream {
            size,
            sha256,
            chunks,
        })
    }

    fn wait(&self, rx: Receiver<Result<Id>>) -> Result<Id> {
        rx.recv().map_err(|_| self.broken())?
    }

    fn broken(&self) -> Error {
        self.shared
            .failed()
            .unwrap_or_else(|| Error::io("backup pipeline stopped unexpectedly"))
    }

    /// Whether a chunk is already stored (or queued by this backup).
    pub fn has_chunk(&self, id: &Id) -> bool {
        self.shared.known.contains(id) || self.shared.inflight.lock().unwrap().contains(id)
    }

    pub fn totals(&self) -> WriterTotals {
        let s = &self.shared.stats;
        WriterTotals {
            chunks: s.chunks.load(Ordering::Relaxed),
            chunks_new: s.chunks_new.load(Ordering::Relaxed),
            bytes_stored_new: s.bytes_stored_new.load(Ordering::Relaxed),
            packs: s.packs.load(Ordering::Relaxed),
            index_objects: s.index_objects.load(Ordering::Relaxed),
            tree_blobs: s.tree_blobs.load(Ordering::Relaxed),
            tree_blobs_new: s.tree_blobs_new.load(Ordering::Relaxed),
            tree_bytes_new: s.tree_bytes_new.load(Ordering::Relaxed),
        }
    }

    /// Store one list tree node (format/tree.rs): named by the SHA-256 of
    /// its plaintext, deduplicated against the index and this run,
    /// compressed, sealed and packed (into tree packs, apart from data).
    /// Blocking: call from a blocking thread.
    pub fn store_tree_blob(&self, plain: &[u8]) -> Result<Id> {
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        let s = &self.shared;
        let id = Id::hash(plain);
        s.stats.tree_blobs.fetch_add(1, Ordering::Relaxed);
        if s.known.contains(&id) || !s.inflight.lock().unwrap().insert(id) {
            return Ok(id);
        }
        let level = LevelPlan::Level(s.compression_level);
        let blob = seal_blob(s, BlobKind::Tree, id, plain.to_vec(), level);
        s.stats.tree_blobs_new.fetch_add(1, Ordering::Relaxed);
        s.stats
            .tree_bytes_new
            .fetch_add(blob.bytes.len() as u64, Ordering::Relaxed);
        self.blobs
            .as_ref()
            .expect("writer not finished")
            .send(blob)
            .map_err(|_| self.broken())?;
        Ok(id)
    }

    /// Store a blob as it is already sealed (prune's repack copies the
    /// stored bytes of a blob it has just decoded and checked, without
    /// sealing it again), deduplicated like any other. Blocking.
    pub fn copy_sealed_blob(&self, entry: PackEntry, bytes: Vec<u8>) -> Result<()> {
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        let s = &self.shared;
        if s.known.contains(&entry.id) || !s.inflight.lock().unwrap().insert(entry.id) {
            return Ok(());
        }
        self.blobs
            .as_ref()
            .expect("writer not finished")
            .send(SealedBlob { entry, bytes })
            .map_err(|_| self.broken())
    }

    fn store_list<T: TreeItem>(
        &self,
        items: impl IntoIterator<Item = Result<T>>,
    ) -> Result<ChildRef> {
        let mut b = TreeBuilder::<T>::new();
        for item in items {
            for n in b.push(&item?)? {
                self.store_tree_blob(&n.plain)?;
            }
        }
        let (root, nodes) = b.finish();
        for n in nodes {
            self.store_tree_blob(&n.plain)?;
        }
        Ok(root)
    }

    /// Store a snapshot's entry list as a list tree (docs/FORMAT.md §9),
    /// entries with more than [`MAX_INLINE_CHUNKS`] chunks getting a chunk
    /// list tree of their own. Memory: one open node per level. Call
    /// before [`Self::finish`], which then indexes the tree blobs before
    /// the caller writes the snapshot. Blocking.
    pub fn store_entry_list(&self, entries: impl IntoIterator<Item = Entry>) -> Result<StoredList> {
        let root = self.store_list(entries.into_iter().map(|mut e| {
            if e.chunks.len() > MAX_INLINE_CHUNKS {
                let chunks = std::mem::take(&mut e.chunks);
                e.chunk_tree = Some(self.store_list(chunks.into_iter().map(Ok))?.id);
            }
            Ok(e)
        }))?;
        Ok(StoredList {
            tree: root.id,
            count: root.count,
        })
    }

    /// Drain the pipeline: last pack uploaded, last index written. Only
    /// after this returns `Ok` is everything stored referenced by an index.
    pub fn finish(mut self) -> Result<WriterTotals> {
        drop(self.jobs.take());
        drop(self.blobs.take());
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.shared
                    .fail(Error::io("a backup pipeline thread panicked"));
            }
        }
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        flush_index(&self.shared, true)?;
        Ok(self.totals())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        drop(self.blobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The whole-stream SHA-256, taken over the chunks in order on their way
/// to the workers (no copy of the stream). Small streams are hashed on the
/// reader thread; past [`HASH_THREAD_AFTER`] bytes the hasher becomes a
/// stage of its own between the reader and the workers, so that reading
/// and chunking are not serialised behind it (that serial path bounds an
/// all-duplicate backup to one core).
const HASH_THREAD_AFTER: u64 = 4 << 20;

enum StreamHasher {
    Inline(Hasher),
    Thread(Sender<Job>, JoinHandle<Id>),
    /// No whole-stream hash ([`WholeHash::Skip`]).
    Off,
}

impl StreamHasher {
    /// Hash `job`'s chunk and pass it on to the workers (`jobs`); `seen`
    /// counts the stream's bytes chunked so far, this chunk included. An
    /// error means the pipeline has stopped.
    fn send(&mut self, job: Job, seen: u64, jobs: &Sender<Job>) -> std::result::Result<(), ()> {
        match self {
            StreamHasher::Inline(h) if seen < HASH_THREAD_AFTER => {
                h.update(&job.data);
                jobs.send(job).map_err(|_| ())
            }
            StreamHasher::Inline(h) => {
                let mut h = std::mem::take(h);
                let (tx, rx) = bounded::<Job>(1);
                let jobs = jobs.clone();
                let handle = std::thread::Builder::new()
                    .name("stream-hash".into())
                    .spawn(move || {
                        for job in rx {
                            h.update(&job.data);
                            // Workers gone: the pipeline failed, and the
                            // reader learns it from the dropped reply.
                            if jobs.send(job).is_err() {
                                break;
                            }
                        }
                        h.finish()
                    })
                    .expect("spawn stream hasher");
                let sent = tx.send(job).map_err(|_| ());
                *self = StreamHasher::Thread(tx, handle);
                sent
            }
            StreamHasher::Thread(tx, _) => tx.send(job).map_err(|_| ()),
            StreamHasher::Off => jobs.send(job).map_err(|_| ()),
        }
    }

    fn finish(self) -> Result<Option<Id>> {
        match self {
            StreamHasher::Inline(h) => Ok(Some(h.finish())),
            StreamHasher::Thread(tx, handle) => {
                drop(tx);
                handle
                    .join()
                    .map(Some)
                    .map_err(|_| Error::io("stream hasher thread panicked"))
            }
            StreamHasher::Off => Ok(None),
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn pipeline thread")
}

fn worker(s: Arc<Shared>, jobs: Receiver<Job>, blobs: Sender<SealedBlob>) {
    for job in jobs {
        let result = process_chunk(&s, job.data, &blobs);
        if let Err(e) = &result {
            s.fail(Error::new(e.kind(), e.to_string()));
        }
        let _ = job.reply.send(result);
    }
}

fn process_chunk(s: &Shared, data: Vec<u8>, blobs: &Sender<SealedBlob>) -> Result<Id> {
    let id = Id::hash(&data);
    s.stats.chunks.fetch_add(1, Ordering::Relaxed);
    if s.known.contains(&id) || !s.inflight.lock().unwrap().insert(id) {
        return Ok(id);
    }
    let plan = s.level_choice.plan(data.len());
    let blob = seal_blob(s, BlobKind::Data, id, data, plan);
    s.stats.chunks_new.fetch_add(1, Ordering::Relaxed);
    s.stats
        .bytes_stored_new
        .fetch_add(blob.bytes.len() as u64, Ordering::Relaxed);
    blobs.send(blob).map_err(|_| {
        s.failed()
            .unwrap_or_else(|| Error::io("pack writer stopped"))
    })?;
    Ok(id)
}

/// Compress (when it helps, at the level `plan` says) and seal one blob.
fn seal_blob(s: &Shared, kind: BlobKind, id: Id, data: Vec<u8>, plan: LevelPlan) -> SealedBlob {
    let raw_len = data.len() as u32;
    let compressed = match plan {
        LevelPlan::Level(level) => codec::compress(&data, level),
        LevelPlan::Sample { level, fast } => {
            let (a, b) = (codec::compress(&data, level), codec::compress(&data, fast));
            s.level_choice
                .record(data.len(), a.len().min(data.len()), b.len().min(data.len()));
            if a.len() <= b.len() {
                a
            } else {
                b
            }
        }
    };
    let (compression, inner) = if compressed.len() < data.len() {
        (Compression::Zstd, compressed)
    } else {
        (Compression::None, data)
    };
    let bytes = s.repo.key().seal(Domain::Blob, &inner);
    let entry = PackEntry {
        kind,
        compression,
        stored_len: bytes.len() as u32,
        raw_len,
        id,
    };
    SealedBlob { entry, bytes }
}

struct OpenPack {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: Hasher,
    len: u64,
    entries: Vec<PackEntry>,
}

impl OpenPack {
    fn create(dir: &std::path::Path) -> Result<OpenPack> {
        let path = dir.join(format!(
            "pack-{}.tmp",
            hex::encode(crate::crypto::random_bytes::<12>())
        ));
        let file = File::create(&path).map_err(|e| spool_err(&path, e))?;
        Ok(OpenPack {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: Hasher::new(),
            len: 0,
            entries: Vec::new(),
        })
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| spool_err(&self.path, e))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn finish(mut self, s: &Shared) -> Result<FinishedPack> {
        let header = s
            .repo
            .key()
            .seal(Domain::PackHeader, &pack::encode_header(&self.entries));
        self.append(&header)?;
        self.append(&(header.len() as u32).to_le_bytes())?;
        // Durability is the backend's job (the local backend fsyncs before
        // linking the pack into place); syncing here would stall the packer.
        self.out
            .into_inner()
            .map_err(|e| spool_err(&self.path, e.into_error()))?;
        let mut offset = 0u32;
        let blobs = self
            .entries
            .iter()
            .map(|e| {
                let b = IndexBlob {
                    kind: e.kind,
                    compression: e.compression,
                    offset,
                    stored_len: e.stored_len,
                    raw_len: e.raw_len,
                    id: e.id,
                };
                offset += e.stored_len;
                b
            })
            .collect();
        Ok(FinishedPack {
            id: self.hasher.finish(),
            path: self.path,
            len: self.len,
            blobs,
        })
    }
}

fn spool_err(path: &std::path::Path, e: std::io::Error) -> Error {
    let full = e.kind() == std::io::ErrorKind::StorageFull;
    let err = Error::io(format!("writing spool file {}: {e}", path.display()));
    if full {
        err.with_hint("the spool directory's disk is full; free space (no snapshot was written)")
    } else {
        err
    }
}

fn packer(
    s: Arc<Shared>,
    blobs: Receiver<SealedBlob>,
    packs: Sender<FinishedPack>,
    dir: PathBuf,
    pack_size: u64,
) {
    // One open pack per blob kind: tree blobs go into packs of their own,
    // so that reading a snapshot's entries touches few, small packs.
    let mut open: [Option<OpenPack>; 2] = [None, None];
    let result = (|| -> Result<()> {
        for blob in blobs.iter() {
            let slot = &mut open[blob.entry.kind as usize];
            let p = match slot.as_mut() {
                Some(p) => p,
                None => slot.insert(OpenPack::create(&dir)?),
            };
            p.append(&blob.bytes)?;
            p.entries.push(blob.entry);
            // Closed by bytes, or by count before its header could exceed
            // what readers accept (pack::MAX_HEADER_LEN).
            if p.len >= pack_size || p.entries.len() >= pack::MAX_PACK_BLOBS {
                let done = slot.take().unwrap().finish(&s)?;
                packs
                    .send(done)
                    .map_err(|_| Error::io("pack uploader stopped"))?;
            }
        }
        for slot in open.iter_mut() {
            if let Some(p) = slot.take() {
                let done = p.finish(&s)?;
                packs
                    .send(done)
                    .map_err(|_| Error::io("pack uploader stopped"))?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in open.into_iter().flatten() {
            let _ = std::fs::remove_file(&p.path);
        }
        s.fail(e);
        // Keep draining so workers never block on a dead packer.
        for _ in blobs.iter() {}
    }
}

fn uploader(s: Arc<Shared>, packs: Receiver<FinishedPack>) {
    for p in packs.iter() {
        if s.failed().is_some() {
            let _ = std::fs::remove_file(&p.path);
            continue;
        }
        if let Err(e) = s.check_lease() {
            let _ = std::fs::remove_file(&p.path);
            s.fail(e);
            continue;
        }
        let name = names::pack(&p.id);
        let path = p.path.clone();
        // Named by its content: a pack stored already (by another writer,
        // or by an attempt whose answer was lost) counts as stored.
        let put = s.rt.block_on(s.repo.put_named_by_content(
            &name,
            Payload::File {
                path: p.path,
                len: p.len,
            },
        ));
        let _ = std::fs::remove_file(&path);
        match put {
            Ok(()) => {}
            Err(e) => {
                s.fail(e.context(format!("uploading pack {name}")));
                continue;
            }
        }
        s.stats.packs.fetch_add(1, Ordering::Relaxed);
        s.pending_index.lock().unwrap().0.push(IndexPack {
            id: p.id,
            blobs: p.blobs,
        });
        if let Err(e) = flush_index(&s, false) {
            s.fail(e);
        }
    }
}

/// Write pending pack entries as an index object if due (or if `force`).
fn flush_index(s: &Shared, force: bool) -> Result<()> {
    let packs = {
        let mut pending = s.pending_index.lock().unwrap();
        let due =
            pending.0.len() >= INDEX_FLUSH_PACKS || pending.1.elapsed() >= INDEX_FLUSH_INTERVAL;
        if pending.0.is_empty() || !(force || due) {
            return Ok(());
        }
        pending.1 = Instant::now();
        std::mem::take(&mut pending.0)
    };
    // Packs left unindexed are orphans the next backup's recovery indexes.
    s.check_lease()?;
    // A few packs are far below the cap; split anyway, so that no writer
    // can make an object the readers refuse.
    for file in crate::format::index::split(packs, vec![], crate::format::index::TARGET_PLAIN_LEN)?
    {
        s.rt.block_on(s.repo.save_index(&file))
            .map_err(|e| e.context("writing index object"))?;
        s.stats.index_objects.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn clean_stale_spool(dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let is_ours = name.to_string_lossy().ends_with(".tmp");
        let old = ent
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_SPOOL);
        if is_ours && old {
            let _ = std::fs::remove_file(ent.path());
        }
    }
}
