//! Reading chunks back: planned per pack, fetched with coalesced ranged
//! reads, decoded on a bounded CPU pool, handed out in order.
//!
//! - **Plan** ([`Planner`], pure): the chunk ids a consumer needs, in the
//!   order it needs them, are cut into [`Span`]s. A span is one ranged
//!   read of one pack: consecutive chunks of the list that lie in the same
//!   pack, each within [`ReadOptions::max_gap`] of the bytes already
//!   covered, up to [`ReadOptions::max_span`] stored (and decoded) bytes.
//!   A chunk needed again inside a span (a file whose chunks repeat) is
//!   fetched and decoded once and handed out at each place it is needed.
//! - **I/O depth** is its own setting ([`ReadOptions::concurrency`]: ranged
//!   reads in flight, shared by every stream of one reader), apart from
//!   CPU parallelism: each span is fetched in a task of its own, then its
//!   blobs are decrypted, decompressed and hash-checked
//!   (`repository::decode_blob`) on tokio's blocking pool, at most one
//!   span per core at a time. No byte leaves here unchecked.
//! - **Memory** is bounded: a span reserves its stored plus decoded bytes
//!   from a budget ([`ReadOptions::budget`]) before it is fetched, in plan
//!   order (so the span a consumer waits for always holds its share), and
//!   gives them back when the consumer has taken its chunks.
//!
//! Writes of the restored bytes (files, spool files, stdout, a child's
//! stdin) go through [`off_runtime`], so a slow disk never stalls the
//! runtime threads that drive the reads.

use std::collections::HashMap;
use std::future::Future;
use std::iter::Peekable;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::format::Id;
use crate::repository::{decode_blob, BlobLocation, MasterIndex, Repository};

/// Ranged reads in flight against an S3 store by default: each waits a
/// round trip (30–50 ms to a real store), so depth, not CPU, sets the pace.
pub const DEFAULT_S3_READ_CONCURRENCY: usize = 32;
/// Chunks of one pack at most this far apart are read together (the gap
/// is read and thrown away: cheaper than another round trip).
pub const DEFAULT_MAX_GAP: u64 = 256 << 10;
/// One coalesced read covers at most this many stored bytes, and its
/// chunks at most this many decoded bytes.
pub const DEFAULT_MAX_SPAN: u64 = 8 << 20;
/// Stored plus decoded bytes of the spans in flight or waiting to be taken.
pub const DEFAULT_READ_BUDGET: u64 = 128 << 20;
/// A local repository needs no depth to hide round trips: smaller spans
/// and budget keep a restore's peak RSS under 64 MiB, whatever the size of
/// what is restored (8 MiB spans peaked at 88 MiB on a 10 GiB stream, 4 MiB
/// ones at 57 MiB, at the same speed; docs/BENCHMARKS.md).
pub const LOCAL_MAX_SPAN: u64 = 4 << 20;
pub const LOCAL_READ_BUDGET: u64 = 32 << 20;

/// CPUs available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Reads in flight by default for a repository at `location`: a local
/// directory needs little depth (cores + 2), an S3 store a lot.
pub fn default_concurrency(location: &str) -> usize {
    if location.starts_with("s3://") {
        DEFAULT_S3_READ_CONCURRENCY
    } else {
        cores() + 2
    }
}

/// How a [`ChunkReader`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Ranged reads in flight (`--read-concurrency`).
    pub concurrency: usize,
    pub max_gap: u64,
    pub max_span: u64,
    pub budget: u64,
}

impl ReadOptions {
    /// The defaults for a repository at `location`, with `concurrency`
    /// instead of the default one if given.
    pub fn for_location(location: &str, concurrency: Option<usize>) -> ReadOptions {
        let s3 = location.starts_with("s3://");
        ReadOptions {
            concurrency: concurrency
                .unwrap_or_else(|| default_concurrency(location))
                .max(1),
            max_gap: DEFAULT_MAX_GAP,
            max_span: if s3 { DEFAULT_MAX_SPAN } else { LOCAL_MAX_SPAN },
            budget: if s3 {
                DEFAULT_READ_BUDGET
            } else {
                LOCAL_READ_BUDGET
            },
        }
    }
}

/// One planned ranged read: bytes `start..end` of `pack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub pack: Id,
    pub start: u64,
    pub end: u64,
    /// The distinct chunks it covers, in the order first needed.
    pub blobs: Vec<(Id, BlobLocation)>,
    /// For each chunk the consumer asked for, in its order: which of
    /// `blobs` it is.
    pub order: Vec<usize>,
    /// Decoded bytes of `blobs`.
    pub raw: u64,
}

/// A step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    Span(Span),
    /// A chunk the index does not know: an error at its place.
    Missing(Id),
}

impl Planned {
    /// Bytes it holds in memory at most: stored plus decoded.
    pub fn weight(&self) -> u64 {
        match self {
            Planned::Span(s) => (s.end - s.start) + s.raw,
            Planned::Missing(_) => 0,
        }
    }
    /// How many chunks it hands out.
    pub fn len(&self) -> usize {
        match self {
            Planned::Span(s) => s.order.len(),
            Planned::Missing(_) => 1,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cuts a list of chunk ids into [`Planned`] reads, lazily (pure: index
/// lookups only).
pub struct Planner<I: Iterator<Item = Id>> {
    ids: Peekable<I>,
    index: Arc<MasterIndex>,
    max_gap: u64,
    max_span: u64,
}

impl<I: Iterator<Item = Id>> Planner<I> {
    pub fn new(ids: I, index: Arc<MasterIndex>, opts: &ReadOptions) -> Self {
        Planner {
            ids: ids.peekable(),
            index,
            max_gap: opts.max_gap,
            max_span: opts.max_span.max(1),
        }
    }
}

impl<I: Iterator<Item = Id>> Iterator for Planner<I> {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        let first = self.ids.next()?;
        let Some(loc) = self.index.get(&first) else {
            return Some(Planned::Missing(first));
        };
        let pack = self.index.pack_id(&loc);
        let mut span = Span {
            pack,
            start: loc.offset as u64,
            end: loc.offset as u64 + loc.stored_len as u64,
            blobs: vec![(first, loc)],
            order: vec![0],
            raw: loc.raw_len as u64,
        };
        let mut seen: HashMap<Id, usize> = HashMap::from([(first, 0)]);
        while let Some(id) = self.ids.peek() {
            if let Some(&k) = seen.get(id) {
                // Needed again: already fetched by this span.
                span.order.push(k);
                self.ids.next();
                continue;
            }
            let Some(l) = self.index.get(id) else { break };
            if self.index.pack_id(&l) != pack {
                break;
            }
            let (s, e) = (l.offset as u64, l.offset as u64 + l.stored_len as u64);
            // Within the gap of what is covered, on either side.
            let near = s <= span.end + self.max_gap && e + self.max_gap >= span.start;
            let (ns, ne) = (span.start.min(s), span.end.max(e));
            if !near || ne - ns > self.max_span || span.raw + l.raw_len as u64 > self.max_span {
                break;
            }
            span.start = ns;
            span.end = ne;
            span.raw += l.raw_len as u64;
            seen.insert(*id, span.blobs.len());
            span.order.push(span.blobs.len());
            span.blobs.push((*id, l));
            self.ids.next();
        }
        Some(Planned::Span(span))
    }
}

/// Run `f` (blocking file I/O, hashing) without stalling the runtime: on a
/// multi-threaded runtime the worker hands its other tasks on first
/// (`block_in_place`); elsewhere it just runs.
pub fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[derive(Clone)]
pub struct ChunkReader {
    repo: Arc<Repository>,
    index: Arc<MasterIndex>,
    opts: ReadOptions,
    /// Ranged reads in flight, over every stream of this reader.
    gets: Arc<Semaphore>,
    /// Spans being decoded: one per core.
    cpu: Arc<Semaphore>,
    /// KiB of stored plus decoded bytes held.
    budget: Arc<Semaphore>,
}

impl ChunkReader {
    /// A reader with the defaults for the repository's store.
    pub fn new(repo: Arc<Repository>, index: Arc<MasterIndex>) -> Self {
        let opts = ReadOptions::for_location(&repo.backend().location(), None);
        Self::with_options(repo, index, opts)
    }

    pub fn with_options(repo: Arc<Repository>, index: Arc<MasterIndex>, opts: ReadOptions) -> Self {
        ChunkReader {
            repo,
            index,
            gets: Arc::new(Semaphore::new(opts.concurrency.max(1))),
            cpu: Arc::new(Semaphore::new(cores())),
            budget: Arc::new(Semaphore::new(budget_kib(opts.budget) as usize)),
            opts,
        }
    }

    pub fn options(&self) -> &ReadOptions {
        &self.opts
    }

    pub fn index(&self) -> &Arc<MasterIndex> {
        &self.index
    }

    /// The chunks' plaintext, in order, one item per id, each already
    /// checked against its id. A chunk that cannot be read intact is an
    /// error at its place (integrity: damaged or missing; I/O: the store
    /// failed); the chunks after it still come.
    pub fn stream<I>(&self, ids: I) -> BoxStream<'static, Result<Chunk>>
    where
        I: IntoIterator<Item = Id>,
        I::IntoIter: Send + 'static,
    {
        let planner = Planner::new(ids.into_iter(), self.index.clone(), &self.opts);
        let budget = self.budget.clone();
        let cap = budget_kib(self.opts.budget);
        let this = self.clone();
        stream::iter(planner)
            // Reserved in plan order, before the read is started: the span
            // a consumer waits for never waits behind the ones after it.
            .then(move |p| {
                let budget = budget.clone();
                async move {
                    let kib = (p.weight().div_ceil(1024) as u32).min(cap);
                    let permit = budget
                        .acquire_many_owned(kib)
                        .await
                        .expect("the budget is never closed");
                    (p, permit)
                }
            })
            .map(move |(p, permit)| {
                let this = this.clone();
                let n = p.len();
                Spawned(tokio::spawn(async move { (this.read(p).await, permit) }), n)
            })
            .buffered(self.opts.concurrency.max(1))
            .flat_map(|(items, permit)| {
                stream::iter(Held {
                    items: items.into_iter(),
                    _permit: permit,
                })
            })
            .boxed()
    }

    /// Fetch and decode one planned read: one result per chunk asked for.
    async fn read(&self, p: Planned) -> Vec<Result<Chunk>> {
        let span = match p {
            Planned::Missing(id) => {
                return vec![Err(Error::integrity(format!(
                    "chunk {id} is not in the index"
                ))
                .with_hint(
                    "run `usdcop-dr verify` to see which index or pack is missing",
                ))]
            }
            Planned::Span(s) => s,
        };
        let fetched = {
            let _get = self.gets.acquire().await.expect("never closed");
            let what = || {
                let ids: Vec<String> = span.blobs.iter().take(3).map(|b| b.0.short()).collect();
                format!(
                    "chunk {}{}",
                    ids.join(", "),
                    if span.blobs.len() > 3 { ", …" } else { "" }
                )
            };
            self.repo
                .read_pack_range(&span.pack, span.start, span.end - span.start, what)
                .await
        };
        let bytes = match fetched {
            Ok(b) => b,
            Err(e) => return span.order.iter().map(|_| Err(copy_err(&e))).collect(),
        };
        let decoded = {
            let _cpu = self.cpu.acquire().await.expect("never closed");
            let key = self.repo.key().clone();
            let (blobs, start, pack) = (span.blobs, span.start, span.pack);
            tokio::task::spawn_blocking(move || {
                let name = crate::format::names::pack(&pack);
                blobs
                    .iter()
                    .map(|(id, loc)| {
                        let off = (loc.offset as u64 - start) as usize;
                        let stored = &bytes[off..off + loc.stored_len as usize];
                        decode_blob(&key, stored, loc.compression, loc.raw_len, id)
                            .map(|b| Chunk {
                                id: *id,
                                data: Bytes::from(b),
                            })
                            .map_err(|e| e.context(format!("pack {name}")))
                    })
                    .collect::<Vec<_>>()
            })
            .await
        };
        match decoded {
            Ok(d) => span
                .order
                .iter()
                .map(|&k| match &d[k] {
                    Ok(c) => Ok(c.clone()),
                    Err(e) => Err(copy_err(e)),
                })
                .collect(),
            Err(e) => span
                .order
                .iter()
                .map(|_| Err(Error::io(format!("decode task failed: {e}"))))
                .collect(),
        }
    }
}

fn budget_kib(bytes: u64) -> u32 {
    (bytes / 1024).clamp(1, u32::MAX as u64 >> 4) as u32
}

/// The same error again, for each chunk one failed read covered.
fn copy_err(e: &Error) -> Error {
    let c = Error::new(e.kind(), e.message());
    match e.hint() {
        Some(h) => c.with_hint(h),
        None => c,
    }
}

/// A span's task, aborted if the stream is dropped (a consumer that
/// stopped early does not leave reads running); a task that died yields
/// one error per chunk it owed.
struct Spawned(
    tokio::task::JoinHandle<(Vec<Result<Chunk>>, OwnedSemaphorePermit)>,
    usize,
);

impl Future for Spawned {
    type Output = (Vec<Result<Chunk>>, Option<OwnedSemaphorePermit>);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let n = self.1;
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok((items, permit)) => (items, Some(permit)),
            Err(e) => (
                (0..n)
                    .map(|_| Err(Error::io(format!("read task failed: {e}"))))
                    .collect(),
                None,
            ),
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A span's chunks with its share of the budget, given back once taken.
struct Held {
    items: std::vec::IntoIter<Result<Chunk>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Iterator for Held {
    type Item = Result<Chunk>;
    fn next(&mut self) -> Option<Result<Chunk>> {
        self.items.next()
    }
}

/// One chunk of [`ChunkReader::stream`]: its plaintext, checked against
/// `id`, the id it was read for (a consumer compares it with the list it
/// asked for, which proves the order). Derefs to the bytes.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub id: Id,
    pub data: Bytes,
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index::{IndexBlob, IndexPack};
    use crate::format::pack::{BlobKind, Compression};

    fn id(n: u32) -> Id {
        Id::hash(&n.to_le_bytes())
    }

    /// Packs of blobs: (pack number, [(blob number, offset, stored_len)]).
    /// (blob number, offset, stored_len)
    type Blobs<'a> = &'a [(u32, u32, u32)];

    fn index(packs: &[(u32, Blobs<'_>)]) -> Arc<MasterIndex> {
        let mut m = crate::repository::index::MasterIndexBuilder::default();
        for (p, blobs) in packs {
            m.add_pack(&IndexPack {
                id: id(1_000_000 + p),
                blobs: blobs
                    .iter()
                    .map(|&(b, offset, stored_len)| IndexBlob {
                        kind: BlobKind::Data,
                        compression: Compression::None,
                        offset,
                        stored_len,
                        raw_len: stored_len,
                        id: id(b),
                    })
                    .collect(),
            });
        }
        Arc::new(m.finish())
    }

    fn opts(gap: u64, span: u64) -> ReadOptions {
        ReadOptions {
            concurrency: 4,
            max_gap: gap,
            max_span: span,
            budget: 1 << 30,
        }
    }

    /// (pack number, start, end, blob numbers handed out) per step.
    fn plan(ix: &Arc<MasterIndex>, ids: &[u32], o: ReadOptions) -> Vec<(u32, u64, u64, Vec<u32>)> {
        let names: HashMap<Id, u32> = (0..100).map(|n| (id(n), n)).collect();
        let packs: HashMap<Id, u32> = (0..10).map(|n| (id(1_000_000 + n), n)).collect();
        Planner::new(ids.iter().map(|&n| id(n)), ix.clone(), &o)
            .map(|p| match p {
                Planned::Span(s) => (
                    packs[&s.pack],
                    s.start,
                    s.end,
                    s.order.iter().map(|&k| names[&s.blobs[k].0]).collect(),
                ),
                Planned::Missing(i) => (u32::MAX, 0, 0, vec![names[&i]]),
            })
            .collect()
    }

    #[test]
    fn neighbours_in_one_pack_are_read_together() {
        let ix = index(&[
            (
                0,
                &[(1, 0, 100), (2, 100, 100), (3, 200, 100), (4, 10_000, 100)],
            ),
            (1, &[(5, 0, 50)]),
        ]);
        // 1–3 adjacent; 4 beyond the gap; 5 in another pack.
        assert_eq!(
            plan(&ix, &[1, 2, 3, 4, 5], opts(1000, 1 << 20)),
            vec![
                (0, 0, 300, vec![1, 2, 3]),
                (0, 10_000, 10_100, vec![4]),
                (1, 0, 50, vec![5]),
            ]
        );
        // A wide enough gap takes 4 too (the gap is read and dropped).
        assert_eq!(
            plan(&ix, &[1, 2, 3, 4], opts(10_000, 1 << 20))[0],
            (0, 0, 10_100, vec![1, 2, 3, 4])
        );
    }

    #[test]
    fn repeats_are_read_once_and_handed_out_at_each_place() {
        let ix = index(&[(0, &[(1, 0, 100), (2, 100, 100)])]);
        let p: Vec<Planned> = Planner::new(
            [1, 2, 1, 1, 2].map(id).into_iter(),
            ix.clone(),
            &opts(0, 1 << 20),
        )
        .collect();
        assert_eq!(p.len(), 1);
        let Planned::Span(s) = &p[0] else { panic!() };
        assert_eq!(s.blobs.len(), 2);
        assert_eq!(s.order, vec![0, 1, 0, 0, 1]);
        assert_eq!(p[0].weight(), 200 + 200);
    }

    #[test]
    fn spans_are_capped_and_backward_neighbours_join() {
        let ix = index(&[(
            0,
            &[(1, 0, 100), (2, 100, 100), (3, 200, 100), (4, 300, 100)],
        )]);
        // At most 250 bytes a span.
        assert_eq!(
            plan(&ix, &[1, 2, 3, 4], opts(0, 250)),
            vec![(0, 0, 200, vec![1, 2]), (0, 200, 400, vec![3, 4])]
        );
        // Reverse order still coalesces (each one is next to the covered bytes).
        assert_eq!(
            plan(&ix, &[4, 3, 2, 1], opts(0, 1 << 20)),
            vec![(0, 0, 400, vec![4, 3, 2, 1])]
        );
    }

    #[test]
    fn an_unknown_chunk_is_its_own_step() {
        let ix = index(&[(0, &[(1, 0, 100), (2, 100, 100)])]);
        assert_eq!(
            plan(&ix, &[1, 9, 2], opts(1000, 1 << 20)),
            vec![
                (0, 0, 100, vec![1]),
                (u32::MAX, 0, 0, vec![9]),
                (0, 100, 200, vec![2]),
            ]
        );
    }
}
