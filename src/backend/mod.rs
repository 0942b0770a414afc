//! The storage seam. A backend stores opaque objects under `/`-separated
//! names; it knows nothing of packs, keys or snapshots.
//!
//! Contracts every implementation keeps (checked by [`conformance`], which
//! runs against each backend):
//! - `put` is atomic: a reader sees the whole object or no object, never a
//!   prefix. After `put` returns `Ok`, the object is durable.
//! - `put` with [`PutMode::Create`] fails with `ErrorKind::AlreadyExists`
//!   if the name exists, and never replaces it. With [`PutMode::Overwrite`]
//!   it replaces. Content-addressed names make overwrite harmless.
//! - `get`/`get_range`/`head` of a missing object fail with `ErrorKind::NotFound`.
//! - `list` returns every object under a prefix exactly once, with sizes
//!   and (where the store keeps them) modification times by the store's
//!   clock, in pages; temporary files of unfinished writes are never listed.
//! - `delete` of a missing object is not an error.

pub mod conformance;
pub mod local;
pub mod s3;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};

/// What to upload: bytes in memory, or a file that can be re-read (so a
/// failed upload can be retried without holding the object in memory).
#[derive(Debug)]
pub enum Payload {
    Bytes(Bytes),
    /// A spooled temporary file the backend may consume (rename) or copy.
    File {
        path: PathBuf,
        len: u64,
    },
}

impl Payload {
    pub fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => b.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::Bytes(Bytes::from(v))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Atomic create: fail with AlreadyExists rather than replace.
    Create,
    Overwrite,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: String,
    pub size: u64,
    /// When the store last wrote the object, by the store's own clock (S3
    /// `LastModified`, whole seconds; a local file's mtime), when the
    /// store says. Locks are judged by it rather than by the writer's
    /// clock (docs/FORMAT.md, "Locks").
    pub last_modified: Option<DateTime<Utc>>,
}

/// One page of a listing; pass `next` back to get the following page.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    pub next: Option<String>,
}

#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Human-readable location, without credentials.
    fn location(&self) -> String;

    async fn put(&self, name: &str, payload: Payload, mode: PutMode) -> Result<()>;
    async fn get(&self, name: &str) -> Result<Bytes>;
    /// `len` bytes from `offset`; fails if the object is shorter.
    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes>;
    async fn head(&self, name: &str) -> Result<ObjectMeta>;
    /// One page of objects whose names start with `prefix`.
    async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage>;
    async fn delete_many(&self, names: &[String]) -> Result<()>;

    /// Where to spool large uploads so that `put(Payload::File)` can move
    /// them into place without copying (local backend: same filesystem).
    fn spool_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Whether `PutMode::Create` is really atomic on this store.
    fn atomic_create(&self) -> bool {
        true
    }

    /// Find out (by trying) whether `PutMode::Create` is atomic here; the
    /// answer is also what [`Backend::atomic_create`] reports afterwards.
    async fn probe_atomic_create(&self) -> Result<bool> {
        Ok(self.atomic_create())
    }

    /// Requests made so far, for stores that charge per request.
    fn request_counts(&self) -> Option<RequestCounts> {
        None
    }

    /// Abort writes of this repository's own objects that were started
    /// before `cutoff` and never finished (S3 multipart uploads of pack
    /// names, local temp files), returning how many. Writes of any other
    /// name (another application's, a nested repository's) and writes
    /// started at or after `cutoff` are left alone. The store cannot tell
    /// which writer started a write, so call this only when no other
    /// writer is running (`commands::recover` decides, and picks a cut-off
    /// that a writer starting meanwhile cannot precede). Aborting a live
    /// writer's upload cannot lose data, it only fails that writer: its
    /// pack never appears, so neither does an index or snapshot that
    /// names it.
    async fn abort_unfinished_writes(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let _ = cutoff;
        Ok(0)
    }
}
/// Requests by type and bytes moved, for cost reports.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    pub multipart: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RequestCounts {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    /// Create/complete/abort multipart and upload-part requests.
    pub multipart: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Counts of several clients of one store, added up.
impl std::ops::AddAssign for RequestCounts {
    fn add_assign(&mut self, o: RequestCounts) {
        // Destructured, so that a new field cannot be left out of the sum.
        let RequestCounts {
            put,
            get,
            head,
            list,
            delete,
            multipart,
            bytes_up,
            bytes_down,
        } = o;
        self.put += put;
        self.get += get;
        self.head += head;
        self.list += list;
        self.delete += delete;
        self.multipart += multipart;
        self.bytes_up += bytes_up;
        self.bytes_down += bytes_down;
    }
}

impl std::iter::Sum for RequestCounts {
    fn sum<I: Iterator<Item = RequestCounts>>(iter: I) -> RequestCounts {
        iter.fold(RequestCounts::default(), |mut a, c| {
            a += c;
            a
        })
    }
}

impl RequestStats {
    pub fn snapshot(&self) -> RequestCounts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            put: l(&self.put),
            get: l(&self.get),
            head: l(&self.head),
            list: l(&self.list),
            delete: l(&self.delete),
            multipart: l(&self.multipart),
            bytes_up: l(&self.bytes_up),
            bytes_down: l(&self.bytes_down),
        }
    }
}

pub type DynBackend = Arc<dyn Backend>;

/// List every object under `prefix`, following pages.
pub async fn list_all(backend: &dyn Backend, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = backend.list_page(prefix, token).await?;
        out.extend(page.objects);
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Open the backend a `--repo` string names.
pub async fn open(repo: &str, s3: &s3::S3Options) -> Result<DynBackend> {
    if let Some(rest) = repo.strip_prefix("file://") {
        return Ok(Arc::new(local::LocalBackend::new(rest)?));
    }
    if repo.starts_with("s3://") {
        return Ok(Arc::new(s3::S3Backend::open(repo, s3).await?));
    }
    if repo.contains("://") {
        return Err(
            Error::usage(format!("unknown repository scheme in {repo:?}"))
                .with_hint("use a path, file:///path or s3://bucket/prefix"),
        );
    }
    Ok(Arc::new(local::LocalBackend::new(repo)?))
}

#[cfg(test)]
mod tests {
    use super::RequestCounts;

    #[test]
    fn request_counts_add_up_field_by_field() {
        let a = RequestCounts {
            put: 1,
            get: 2,
            head: 3,
            list: 4,
            delete: 5,
            multipart: 6,
            bytes_up: 7,
            bytes_down: 8,
        };
        let b = RequestCounts {
            put: 10,
            get: 20,
            head: 30,
            list: 40,
            delete: 50,
            multipart: 60,
            bytes_up: 70,
            bytes_down: 80,
        };
        let mut c = a;
        c += b;
        let want = RequestCounts {
            put: 11,
            get: 22,
            head: 33,
            list: 44,
            delete: 55,
            multipart: 66,
            bytes_up: 77,
            bytes_down: 88,
        };
        assert_eq!(c, want);
        assert_eq!([a, b].into_iter().sum::<RequestCounts>(), want);
        assert_eq!(
            std::iter::empty().sum::<RequestCounts>(),
            RequestCounts::default()
        );
    }
}
