//! S3 buckets (AWS, MinIO, Garage, …): every object under some prefixes,
//! with its key, size, ETag, last-modified time, content type and user
//! metadata, and the SHA-256 of its content.
//!
//! - Listing is paginated ListObjectsV2 over each bucket × prefix.
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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};

use crate::backend::s3::{connect, ResumableGet, S3Backend, S3Options, StoreInfo, StoreRole};
use crate::backend::{RequestCounts, RequestStats};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{object_path, Entry, EntryType, ObjectInfo};
use crate::pipeline::Writer;
use crate::progress::Progress;
use crate::source::files::FilesTotals;
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
            inc(&self.stats.list, 1);
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.err(e, bucket, prefix, "LIST"))?;
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
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
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

/// Back up the selected objects; entries come back sorted by bucket and key.
pub async fn backup(
    src: &BucketClient,
    sel: &BucketSelection,
    writer: Arc<Writer>,
    parent: Option<&[Entry]>,
    progress: Arc<dyn Progress>,
    concurrency: usize,
) -> Result<(Vec<Entry>, FilesTotals)> {
    let mut listed: BTreeMap<(String, String), Listed> = BTreeMap::new();
    for b in &sel.buckets {
        let prefixes = if sel.prefixes.is_empty() {
            vec![String::new()]
        } else {
            sel.prefixes.clone()
        };
        for p in &prefixes {
            for o in src.list(b, p).await? {
                listed.insert((o.bucket.clone(), o.key.clone()), o);
            }
        }
    }
    progress.set_total(listed.values().map(|o| o.size).sum());
    let parent: HashMap<(&str, &str), &Entry> = parent
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let o = e.object.as_ref()?;
                    (e.kind == EntryType::Object)
                        .then_some(((o.bucket.as_str(), o.key.as_str()), e))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut totals = FilesTotals::default();
    let mut entries = Vec::with_capacity(listed.len());
    let mut todo = Vec::new();
    for o in listed.into_values() {
        let old = parent.get(&(o.bucket.as_str(), o.key.as_str())).copied();
        let reuse = old.filter(|old| {
            let info = old.object.as_ref().expect("filtered on object");
            old.size == o.size
                && info.etag == o.etag
                && info.last_modified == o.last_modified
                && old.sha256.is_some()
                && old.chunks.iter().all(|c| writer.has_chunk(c))
        });
        match reuse {
            Some(old) => {
                let prev = old.object.as_ref().expect("filtered on object");
                let mut e = entry(&o, prev.content_type.clone(), prev.user_metadata.clone());
                e.sha256 = old.sha256;
                e.chunks = old.chunks.clone();
                totals.files += 1;
                totals.files_unchanged += 1;
                totals.bytes += e.size;
                progress.add_bytes(e.size);
                entries.push(e);
            }
            None => todo.push(o),
        }
    }
    let fetched: Vec<Option<Entry>> = futures::stream::iter(todo)
        .map(|o| fetch(src, o, writer.clone(), progress.clone()))
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    for e in fetched.into_iter().flatten() {
        totals.files += 1;
        totals.bytes += e.size;
        entries.push(e);
    }
    entries.sort_by(|a, b| {
        let (a, b) = (a.object.as_ref().unwrap(), b.object.as_ref().unwrap());
        (&a.bucket, &a.key).cmp(&(&b.bucket, &b.key))
    });
    Ok((entries, totals))
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
                e.sha256 = Some(stored.sha256);
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
