//! S3 buckets (AWS, MinIO, Garage, …): every object under some prefixes,
//! with its key, size, ETag, last-modified time, content type and user
//! metadata, and the SHA-256 of its content.
//!
//! - Memory does not grow with the bucket ([`backup`]): the listing
//!   (paginated ListObjectsV2 over each bucket × prefix, keys in byte
//!   order) is read a page at a time, the parent snapshot's entries are
//!   streamed from its list tree and merge-joined with it in `(bucket,
//!   key)` order, and each entry goes to the list tree builder as soon as
//!   it and those before it are done.
//! - An object whose bucket, key, size, ETag and last-modified time equal
//!   the parent snapshot's, and whose chunks are all still stored, is not
//!   downloaded: its chunk list and SHA-256 are reused. A nightly run over
//!   an unchanged bucket costs only the listing.
//! - Other objects are streamed (GetObject body → blocking reader →
//!   [`Writer::store_stream`]), several at a time, never held whole in
//!   memory. A body cut short is resumed with a ranged GET of the same
//!   version ([`ResumableGet`]), a few times at most. Content type and
//!   user metadata come from the GetObject reply.
//! - The ETag is recorded and compared, never trusted as an MD5: the
//!   content's checksum is the pipeline's SHA-256.
//! - The source store has its own client ([`S3Options`]: profile,
//!   endpoint, region, or the standard AWS chain) and its own request
//!   counters, apart from the repository's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};

use crate::backend::s3::{connect, ResumableGet, S3Backend, S3Options, StoreInfo, StoreRole};
use crate::backend::{RequestCounts, RequestStats};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{object_path, Entry, EntryType, ObjectInfo};
use crate::format::Id;
use crate::pipeline::Writer;
use crate::progress::Progress;
use crate::repository::tree::EntryStream;
use crate::repository::{MasterIndex, Repository};
use crate::source::files::FilesTotals;
use crate::source::merge::{Merge, Step};
use aws_sdk_s3::operation::get_object::GetObjectOutput;

/// Objects downloaded and stored at the same time.
pub const DEFAULT_CONCURRENCY: usize = 6;

/// One object as the listing reported it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// RFC 3339.
    pub last_modified: String,
    pub mtime_ns: i64,
}

/// A connection to the store the buckets live in.
#[derive(Clone)]
pub struct BucketClient {
    pub client: Client,
    /// Which store this is, for errors.
    store: Arc<StoreInfo>,
    stats: Arc<RequestStats>,
}

fn inc(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl BucketClient {
    /// A client for the store `opts` configures (see [`S3Options`]),
    /// named in errors as `role`. Fails if no credentials can be found.
    pub async fn connect(opts: &S3Options, role: StoreRole) -> Result<BucketClient> {
        let (client, store) = connect(opts, role).await?;
        Ok(BucketClient {
            client,
            store: Arc::new(store),
            stats: Arc::new(RequestStats::default()),
        })
    }

    /// The whole of `bucket` as a [`S3Backend`] on this client: same
    /// connection and credentials, its requests counted in this client's
    /// stats ([`BucketClient::requests`] covers both). Refuses a name
    /// that is empty or holds a `/` (no one bucket).
    pub fn backend(&self, bucket: &str) -> Result<S3Backend> {
        if bucket.is_empty() || bucket.contains('/') {
            return Err(Error::usage(format!(
                "{bucket:?} is not a bucket name (of {})",
                self.store
            )));
        }
        Ok(S3Backend::from_client(
            self.client.clone(),
            self.store.clone(),
            bucket.to_owned(),
            String::new(),
            self.stats.clone(),
        ))
    }

    /// Which store this is (role, endpoint, profile, access key id).
    pub fn store(&self) -> &StoreInfo {
        &self.store
    }

    pub fn stats(&self) -> &RequestStats {
        &self.stats
    }

    pub fn requests(&self) -> RequestCounts {
        self.stats.snapshot()
    }

    /// Every object under `bucket/prefix`, following pages.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (page, next) = self.list_page(bucket, prefix, token.take()).await?;
            out.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// One page of the objects under `bucket/prefix` (S3 lists keys in
    /// UTF-8 byte order), and the token of the next page if there is one.
    pub async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        token: Option<String>,
    ) -> Result<(Vec<Listed>, Option<String>)> {
        inc(&self.stats.list, 1);
        let page = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.err(e, bucket, prefix, "LIST"))?;
        let mut out = Vec::with_capacity(page.contents().len());
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            let (last_modified, mtime_ns) = o.last_modified().map(time).unwrap_or_default();
            out.push(Listed {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().unwrap_or("").to_owned(),
                last_modified,
                mtime_ns,
            });
        }
        let next = match (page.is_truncated(), page.next_continuation_token()) {
            (Some(true), Some(t)) => Some(t.to_owned()),
            _ => None,
        };
        Ok((out, next))
    }

    /// Size and SHA-256 of an object's content, streamed (one GET, and
    /// a ranged one per body cut short: [`ResumableGet`]).
    pub async fn sha256(&self, bucket: &str, key: &str) -> Result<(u64, crate::format::Id)> {
        let (_, mut body) = self.get(bucket, key).await?;
        let mut hasher = crate::format::Hasher::new();
        let mut n = 0u64;
        while let Some(bytes) = body.next().await? {
            hasher.update(&bytes);
            n += bytes.len() as u64;
        }
        Ok((n, hasher.finish()))
    }

    /// A counted GetObject whose body survives being cut short.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<(GetObjectOutput, ResumableGet)> {
        ResumableGet::open(
            &self.client,
            &self.store,
            bucket,
            key,
            key,
            None,
            self.stats.clone(),
        )
        .await
    }

    /// One clear error line for a failed request on the source store.
    pub fn err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        bucket: &str,
        key: &str,
        op: &str,
    ) -> Error {
        let what = format!("s3://{bucket}/{key}");
        crate::backend::s3::sdk_error(e, &self.store, bucket, &what, key, op)
    }
}

/// (RFC 3339, nanoseconds since the epoch) of an S3 timestamp.
pub fn time(t: &aws_smithy_types::DateTime) -> (String, i64) {
    let dt = chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default();
    (
        dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        dt.timestamp_nanos_opt().unwrap_or(0),
    )
}

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BucketSelection {
    pub buckets: Vec<String>,
    /// Key prefixes, applied to every bucket; none = the whole bucket.
    pub prefixes: Vec<String>,
}

impl BucketSelection {
    /// `s3://bucket/prefix` for each pair, as recorded in `Snapshot::paths`.
    pub fn urls(&self) -> Vec<String> {
        let mut out = Vec::new();
        for b in &self.buckets {
            if self.prefixes.is_empty() {
                out.push(format!("s3://{b}/"));
            }
            for p in &self.prefixes {
                out.push(format!("s3://{b}/{p}"));
            }
        }
        out
    }
}

impl BucketSelection {
    /// The `(bucket, prefix)` pairs to list, in an order that lists every
    /// selected object exactly once, in `(bucket, key)` byte order (S3
    /// lists one prefix's keys in UTF-8 byte order): buckets sorted and
    /// deduplicated; prefixes sorted, and one that starts with another
    /// left out (its keys are listed under the shorter one). Two kept
    /// prefixes differ before either ends, so every key of the first sorts
    /// before every key of the second. PURE.
    pub fn listing_plan(&self) -> Vec<(String, String)> {
        let mut buckets = self.buckets.clone();
        buckets.sort();
        buckets.dedup();
        let mut prefixes = self.prefixes.clone();
        if prefixes.is_empty() {
            prefixes.push(String::new());
        }
        prefixes.sort();
        let mut kept: Vec<String> = Vec::new();
        for p in prefixes {
            // Sorted: the strings starting with a kept prefix come right
            // after it, so the last kept one is the only candidate.
            if kept.last().is_some_and(|k| p.starts_with(k.as_str())) {
                continue;
            }
            kept.push(p);
        }
        buckets
            .iter()
            .flat_map(|b| kept.iter().map(move |p| (b.clone(), p.clone())))
            .collect()
    }
}

/// Entries (reused or being downloaded) held between the listing and the
/// list builder at most, so that one slow object does not stall the
/// others (downloads run [`DEFAULT_CONCURRENCY`] at a time).
pub const WINDOW: usize = 512;

/// Listing pages fetched ahead of the objects being worked on.
const PAGES_AHEAD: usize = 2;

/// The error [`backup`] returns when the list builder stopped taking
/// entries (its own error says why).
pub const SINK_STOPPED: &str = "the entry list builder stopped";

/// The parent snapshot of a bucket backup: its entries, streamed from its
/// list tree (see [`backup`]).
pub struct Parent<'a> {
    pub id: Id,
    pub repo: &'a Repository,
    pub index: &'a MasterIndex,
    pub entries: EntryStream<'a>,
}

/// The order of a bucket snapshot's entries: `(bucket, key)`, byte-wise.
/// Other entries (none in a bucket snapshot) sort first and are skipped.
fn object_order(e: &Entry, bucket: &str, key: &str) -> std::cmp::Ordering {
    match &e.object {
        Some(o) => (o.bucket.as_str(), o.key.as_str()).cmp(&(bucket, key)),
        None => std::cmp::Ordering::Less,
    }
}

/// The parent's entries looked up in `(bucket, key)` order: a merge-join
/// ([`Merge`]) over the parent's streamed list, one entry held at a time.
struct ParentCursor<'a> {
    parent: Option<Parent<'a>>,
    merge: Merge<Entry>,
}

impl ParentCursor<'_> {
    /// The parent's entry of `bucket/key`. A parent whose entry list turns
    /// out damaged stops being used (a warning; the rest is downloaded
    /// again); a store error fails the backup.
    async fn find(&mut self, bucket: &str, key: &str) -> Result<Option<Entry>> {
        let Some(parent) = self.parent.as_mut() else {
            return Ok(None);
        };
        loop {
            match self.merge.step(|e| object_order(e, bucket, key)) {
                Step::Found(e) => return Ok(Some(e)),
                Step::Absent => return Ok(None),
                Step::Need => {
                    let next = match parent.entries.next().await {
                        Ok(e) => e,
                        Err(e) if e.kind() == ErrorKind::Integrity => {
                            tracing::warn!(
                                "parent snapshot {} is unreadable, backing up the rest without it: {e}",
                                parent.id.short()
                            );
                            None
                        }
                        Err(e) => return Err(e),
                    };
                    self.merge.feed(next);
                }
            }
        }
    }

    /// `old`'s content as the new entry of `o`, if `o` is unchanged since
    /// (same size, ETag and last-modified time) and every chunk is still
    /// stored. A chunk list kept out of line (`chunk_tree`, an object of
    /// more than 1,024 chunks) is walked to check its chunks and then
    /// reused as it is; one that cannot be read means downloading again.
    async fn reuse(&self, old: Entry, o: &Listed, writer: &Writer) -> Result<Option<Entry>> {
        let Some(info) = old.object.as_ref() else {
            return Ok(None);
        };
        let same = old.kind == EntryType::Object
            && old.size == o.size
            && info.etag == o.etag
            && info.last_modified == o.last_modified
            && old.sha256.is_some()
            && old.chunks.iter().all(|c| writer.has_chunk(c));
        if !same {
            return Ok(None);
        }
        if let (Some(root), Some(p)) = (old.chunk_tree, self.parent.as_ref()) {
            // The tree's own nodes are reused too: they must be in packs
            // the writer may reference (not condemned), like the chunks.
            let mut walk = p.repo.chunk_walker(p.index, root).record_nodes();
            loop {
                match walk.next_leaf().await {
                    Ok(Some((_, ids)))
                        if ids.iter().all(|c| writer.has_chunk(c))
                            && walk.take_visited().iter().all(|n| writer.has_chunk(n)) => {}
                    Ok(Some(_)) => return Ok(None),
                    Ok(None) => break,
                    Err(e) if e.kind() == ErrorKind::Integrity => {
                        tracing::warn!(
                            "chunk list of s3://{}/{} in parent snapshot {} is unreadable, \
                             downloading the object again: {e}",
                            o.bucket,
                            o.key,
                            p.id.short()
                        );
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut e = entry(o, info.content_type.clone(), info.user_metadata.clone());
        e.sha256 = old.sha256;
        e.chunks = old.chunks;
        e.chunk_tree = old.chunk_tree;
        Ok(Some(e))
    }
}

/// List `plan` page by page into `pages` (stops when the receiver is gone).
async fn list_pages(
    src: BucketClient,
    plan: Vec<(String, String)>,
    pages: tokio::sync::mpsc::Sender<Result<Vec<Listed>>>,
) {
    for (bucket, prefix) in plan {
        let mut token = None;
        loop {
            match src.list_page(&bucket, &prefix, token.take()).await {
                Ok((page, next)) => {
                    if pages.send(Ok(page)).await.is_err() {
                        return;
                    }
                    match next {
                        Some(t) => token = Some(t),
                        None => break,
                    }
                }
                Err(e) => {
                    let _ = pages.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}

/// A spawned task, aborted when dropped (a backup that fails stops its
/// downloads and its listing).
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Task<T> {
    type Output = Result<T>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<T>> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map_err(|e| Error::io(format!("bucket download task failed: {e}")))
    }
}

/// Back up the selected objects with bounded memory, whatever the number
/// of objects: the listing is read a page at a time ([`list_pages`], a
/// task of its own, [`PAGES_AHEAD`] pages ahead); each object is looked up
/// in the parent by a merge-join in `(bucket, key)` order and either reused
/// or downloaded (`concurrency` downloads at a time, at most [`WINDOW`]
/// objects between the listing and `sink`); and the entries are handed to `sink`
/// (the list tree builder) in listing order as they complete, which for a
/// conforming store is `(bucket, key)` byte order, the order of a bucket
/// snapshot's entries (docs/FORMAT.md §8). A key listed out of order is
/// still backed up (a warning; its parent entry is not found, so it is
/// downloaded again); a key listed twice is backed up once.
pub async fn backup(
    src: &BucketClient,
    sel: &BucketSelection,
    writer: Arc<Writer>,
    parent: Option<Parent<'_>>,
    progress: Arc<dyn Progress>,
    concurrency: usize,
    sink: tokio::sync::mpsc::Sender<Entry>,
) -> Result<FilesTotals> {
    /// An object's entry, and whether it was reused; `None` if it was
    /// deleted since the listing.
    type Pending = futures::future::BoxFuture<'static, Result<Option<(Entry, bool)>>>;
    let (pages_tx, mut pages) = tokio::sync::mpsc::channel(PAGES_AHEAD);
    let _lister = Task(tokio::spawn(list_pages(
        src.clone(),
        sel.listing_plan(),
        pages_tx,
    )));
    let downloads = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut cursor = ParentCursor {
        parent,
        merge: Merge::new(),
    };
    let mut window: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut page = Vec::new().into_iter();
    let mut listing_done = false;
    let mut last: Option<(String, String)> = None;
    let mut warned_order = false;
    let mut listed_bytes = 0u64;
    let mut totals = FilesTotals::default();
    loop {
        while window.len() < WINDOW && !listing_done {
            let Some(o) = page.next() else {
                match pages.recv().await {
                    Some(p) => {
                        let p: Vec<Listed> = p?;
                        listed_bytes += p.iter().map(|o| o.size).sum::<u64>();
                        // What is known so far: the listing grows the total.
                        progress.set_total(listed_bytes);
                        page = p.into_iter();
                    }
                    None => listing_done = true,
                }
                continue;
            };
            if let Some((b, k)) = &last {
                match (b.as_str(), k.as_str()).cmp(&(o.bucket.as_str(), o.key.as_str())) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => continue,
                    std::cmp::Ordering::Greater => {
                        if !warned_order {
                            warned_order = true;
                            tracing::warn!(
                                "s3://{}/{} was listed after s3://{b}/{k}: the store does not list \
                                 keys in byte order, so unchanged objects may be downloaded again",
                                o.bucket,
                                o.key
                            );
                        }
                    }
                }
            }
            last = Some((o.bucket.clone(), o.key.clone()));
            let old = cursor.find(&o.bucket, &o.key).await?;
            let reused = match old {
                Some(old) => cursor.reuse(old, &o, &writer).await?,
                None => None,
            };
            match reused {
                Some(e) => {
                    window.push_back(Box::pin(futures::future::ready(Ok(Some((e, true))))));
                }
                None => {
                    let (src, writer, progress) = (src.clone(), writer.clone(), progress.clone());
                    let downloads = downloads.clone();
                    let task = Task(tokio::spawn(async move {
                        let _permit = downloads.acquire_owned().await.expect("never closed");
                        let e = fetch(&src, o, writer, progress).await?;
                        Ok::<_, Error>(e.map(|e| (e, false)))
                    }));
                    window.push_back(Box::pin(async move { task.await? }));
                }
            }
        }
        let Some(done) = window.next().await else {
            break;
        };
        let Some((e, reused)) = done? else {
            continue; // deleted since the listing (a warning was given)
        };
        totals.files += 1;
        totals.bytes += e.size;
        if reused {
            totals.files_unchanged += 1;
            progress.add_bytes(e.size);
        }
        sink.send(e).await.map_err(|_| Error::io(SINK_STOPPED))?;
    }
    Ok(totals)
}

fn entry(
    o: &Listed,
    content_type: Option<String>,
    user_metadata: BTreeMap<String, String>,
) -> Entry {
    Entry {
        path: object_path(&o.bucket, &o.key),
        kind: EntryType::Object,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: o.mtime_ns,
        ctime_ns: 0,
        inode: 0,
        size: o.size,
        sha256: None,
        chunks: Vec::new(),
        chunk_tree: None,
        target: None,
        object: Some(ObjectInfo {
            bucket: o.bucket.clone(),
            key: o.key.clone(),
            etag: o.etag.clone(),
            last_modified: o.last_modified.clone(),
            content_type,
            user_metadata,
        }),
    }
}

/// A body cut short and the object replaced before the rest could be
/// fetched: nothing is joined, and the new version is read from its first
/// byte, at most this many times. (The chunks stored from the abandoned
/// read are referenced by no snapshot; prune removes them.)
const REREADS_AFTER_REPLACE: u32 = 2;

/// Download one object through the pipeline. `None` if it vanished since
/// the listing.
async fn fetch(
    src: &BucketClient,
    o: Listed,
    writer: Arc<Writer>,
    progress: Arc<dyn Progress>,
) -> Result<Option<Entry>> {
    progress.set_item(&format!("{}/{}", o.bucket, o.key));
    let mut rereads = 0;
    loop {
        let (out, body) = match src.get(&o.bucket, &o.key).await {
            Ok(got) => got,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                progress.warning(&crate::progress::Warning::new(
                    crate::progress::WarningKind::Vanished,
                    format!("s3://{}/{}", o.bucket, o.key),
                    "skipped: deleted after the listing",
                ));
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        let content_type = out.content_type().map(str::to_owned);
        let user_metadata: BTreeMap<String, String> = out
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut e = entry(&o, content_type, user_metadata);
        // Changed between the listing and the GET: record what was read.
        if let Some(etag) = out.e_tag() {
            if etag != o.etag {
                e.object.as_mut().unwrap().etag = etag.to_owned();
            }
        }
        let replaced = body.replaced_flag();
        match store_body(body, writer.clone(), progress.clone(), &o).await {
            Ok(stored) => {
                e.size = stored.size;
                e.sha256 = stored.sha256;
                e.chunks = stored.chunks;
                return Ok(Some(e));
            }
            Err(err)
                if replaced.load(std::sync::atomic::Ordering::Relaxed)
                    && rereads < REREADS_AFTER_REPLACE =>
            {
                rereads += 1;
                tracing::info!("{err}; reading the new version from the start");
            }
            Err(err) => return Err(err),
        }
    }
}

/// Stream one GetObject body through the pipeline.
async fn store_body(
    body: ResumableGet,
    writer: Arc<Writer>,
    progress: Arc<dyn Progress>,
    o: &Listed,
) -> Result<crate::pipeline::StoredStream> {
    // The body reaches the (blocking) pipeline as a reader. A read that
    // fails for good (a body cut short too often, the object replaced
    // mid-read) reaches the pipeline as an io::Error, which keeps only
    // text; the original error, with its kind and hint, is kept here and
    // reported instead.
    let failure: Arc<Mutex<Option<Error>>> = Arc::default();
    let slot = failure.clone();
    let pieces = futures::stream::try_unfold(body, |mut body| async move {
        Ok::<_, Error>(body.next().await?.map(|piece| (piece, body)))
    })
    .map_err(move |err| {
        let text = err.to_string();
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
        std::io::Error::other(text)
    });
    let reader =
        tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(Box::pin(pieces)));
    let p = progress.clone();
    tokio::task::spawn_blocking(move || writer.store_stream(reader, p.as_ref()))
        .await
        .map_err(|err| Error::io(format!("backup task failed: {err}")))?
        .map_err(
            |err| match failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(read) => read,
                None => err.context(format!("s3://{}/{}", o.bucket, o.key)),
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn sel(buckets: &[&str], prefixes: &[&str]) -> BucketSelection {
        BucketSelection {
            buckets: buckets.iter().map(|s| s.to_string()).collect(),
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn listing_plan_sorts_buckets_and_drops_covered_prefixes() {
        assert_eq!(
            sel(&["b", "a", "b"], &[]).listing_plan(),
            pairs(&[("a", ""), ("b", "")])
        );
        assert_eq!(
            sel(&["m"], &["logs/2026", "logs/", "data", "logs/2025", "dat"]).listing_plan(),
            pairs(&[("m", "dat"), ("m", "logs/")])
        );
        assert_eq!(sel(&["m"], &["x", ""]).listing_plan(), pairs(&[("m", "")]));
    }

    proptest! {
        /// Listing the plan's pairs one after another (each in key order,
        /// as S3 does) gives every selected object exactly once, in
        /// `(bucket, key)` byte order: what the collecting source gave
        /// (a sorted map of everything listed).
        #[test]
        fn listing_plan_lists_each_object_once_in_order(
            keys in proptest::collection::btree_set(("[ab]", "[ab/é]{0,5}"), 0..60),
            buckets in proptest::collection::vec("[ab]", 1..4),
            prefixes in proptest::collection::vec("[ab/é]{0,3}", 0..4),
        ) {
            let s = BucketSelection { buckets: buckets.clone(), prefixes: prefixes.clone() };
            let mut listed = vec![];
            for (b, p) in s.listing_plan() {
                let mut page: Vec<&(String, String)> = keys
                    .iter()
                    .filter(|(kb, k)| *kb == b && k.starts_with(&p))
                    .collect();
                page.sort_by(|x, y| x.1.as_bytes().cmp(y.1.as_bytes()));
                listed.extend(page.into_iter().cloned());
            }
            let expected: BTreeSet<(String, String)> = keys
                .iter()
                .filter(|(b, k)| {
                    buckets.contains(b)
                        && (prefixes.is_empty() || prefixes.iter().any(|p| k.starts_with(p.as_str())))
                })
                .cloned()
                .collect();
            prop_assert_eq!(listed, expected.into_iter().collect::<Vec<_>>());
        }
    }
}
