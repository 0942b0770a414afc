//! `restore bucket`: put a bucket snapshot's objects back into a bucket
//! (the original or another, on any endpoint), with their content type and
//! user metadata, every object checked end to end.
//!
//! - Content streams from the repository ([`ChunkReader`]); objects up to
//!   16 MiB are assembled in memory, larger ones spooled to a temporary
//!   file and uploaded from it (multipart), so memory stays bounded.
//! - Before upload the content's SHA-256 is checked against the snapshot;
//!   after upload the object is read back and checked again.
//! - An object already in the target bucket with the same size and either
//!   the ETag recorded in the snapshot or (read to check) the same SHA-256
//!   is skipped. One that differs is a *conflict*: left alone
//!   and reported, unless `overwrite` is set.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures::StreamExt;
use serde::Serialize;

use crate::backend::s3::{ObjectAttrs, S3Backend, S3Options};
use crate::backend::{Payload, RequestCounts};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{Entry, EntryType, Snapshot};
use crate::format::{Hasher, Id};
use crate::pipeline::ChunkReader;
use crate::progress::{Collector, Progress, Warning};
use crate::repository::Repository;
use crate::source::bucket::{BucketClient, Listed};

/// Objects larger than this are spooled to a file, not held in memory.
pub const SPOOL_THRESHOLD: u64 = 16 << 20;
const CONCURRENCY: usize = 8;

pub struct BucketRestoreOptions {
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Only keys starting with this.
    pub prefix: String,
    pub overwrite: bool,
    /// Explicit credentials/region (library callers); the CLI uses the AWS chain.
    pub s3: S3Options,
}

#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub key: String,
    /// Why the existing object is considered different.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedObject {
    pub key: String,
    pub error: String,
}

/// The `restore bucket --json` shape (docs/CLI.md).
#[derive(Debug, Clone, Serialize)]
pub struct BucketRestoreSummary {
    pub snapshot_id: Id,
    pub bucket: String,
    /// Objects written (new or overwritten).
    pub objects: u64,
    pub bytes: u64,
    pub overwritten: u64,
    /// Already there with the same content: not written.
    pub skipped_identical: u64,
    pub conflicts: Vec<Conflict>,
    pub failed: Vec<FailedObject>,
    pub duration_s: f64,
    /// Requests made to the target store.
    pub target_requests: RequestCounts,
    /// Problems that did not stop the restore (docs/CLI.md, "Warnings").
    pub warnings: Vec<Warning>,
}

enum Outcome {
    Written { bytes: u64, overwrote: bool },
    Identical,
    Conflict(Conflict),
    Failed(FailedObject),
}

pub async fn run(
    repo: Arc<Repository>,
    snapshot_id: Id,
    snap: &Snapshot,
    opts: BucketRestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<BucketRestoreSummary> {
    let clock = Instant::now();
    let collector = Collector::new(progress);
    let progress: Arc<dyn Progress> = collector.clone();
    let selected: Vec<&Entry> = snap
        .entries
        .iter()
        .filter(|e| e.kind == EntryType::Object)
        .filter(|e| {
            e.object
                .as_ref()
                .is_some_and(|o| o.key.starts_with(&opts.prefix))
        })
        .collect();
    if selected.is_empty() {
        return Err(Error::not_found(format!(
            "snapshot {} has no bucket object under prefix {:?}",
            snapshot_id.short(),
            opts.prefix
        ))
        .with_hint("restore bucket needs a snapshot made by `backup bucket`"));
    }
    let index = repo.load_index().await?;
    let reader = ChunkReader::new(repo.clone(), index);
    let target = S3Backend::open(
        &format!("s3://{}", opts.bucket),
        &S3Options {
            endpoint: opts.endpoint.clone(),
            ..opts.s3.clone()
        },
    )
    .await?;
    let client = BucketClient::connect(opts.endpoint.as_deref(), &opts.s3).await;
    let existing: HashMap<String, Listed> = client
        .list(&opts.bucket, &opts.prefix)
        .await?
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    progress.set_total(selected.iter().map(|e| e.size).sum());
    let outcomes: Vec<Result<Outcome>> = futures::stream::iter(selected)
        .map(|e| {
            restore_one(
                &reader,
                &target,
                &client,
                &opts,
                e,
                existing.get(&e.object.as_ref().unwrap().key),
                progress.as_ref(),
            )
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut s = BucketRestoreSummary {
        snapshot_id,
        bucket: opts.bucket.clone(),
        objects: 0,
        bytes: 0,
        overwritten: 0,
        skipped_identical: 0,
        conflicts: vec![],
        failed: vec![],
        duration_s: 0.0,
        target_requests: RequestCounts::default(),
        warnings: vec![],
    };
    for o in outcomes {
        match o? {
            Outcome::Written { bytes, overwrote } => {
                s.objects += 1;
                s.bytes += bytes;
                s.overwritten += overwrote as u64;
            }
            Outcome::Identical => s.skipped_identical += 1,
            Outcome::Conflict(c) => s.conflicts.push(c),
            Outcome::Failed(f) => s.failed.push(f),
        }
    }
    s.conflicts.sort_by(|a, b| a.key.cmp(&b.key));
    s.failed.sort_by(|a, b| a.key.cmp(&b.key));
    let (t, c) = (target.stats(), client.requests());
    s.target_requests = RequestCounts {
        put: t.put + c.put,
        get: t.get + c.get,
        head: t.head + c.head,
        list: t.list + c.list,
        delete: t.delete + c.delete,
        multipart: t.multipart + c.multipart,
        bytes_up: t.bytes_up + c.bytes_up,
        bytes_down: t.bytes_down + c.bytes_down,
    };
    s.duration_s = clock.elapsed().as_secs_f64();
    s.warnings = collector.take();
    Ok(s)
}

async fn restore_one(
    reader: &ChunkReader,
    target: &S3Backend,
    client: &BucketClient,
    opts: &BucketRestoreOptions,
    e: &Entry,
    existing: Option<&Listed>,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let info = e.object.as_ref().expect("object entry");
    let key = info.key.as_str();
    let failed = |err: Error| -> Result<Outcome> {
        if matches!(err.kind(), ErrorKind::Integrity | ErrorKind::NotFound) {
            progress.warn(&format!("{key}: {err}"));
            Ok(Outcome::Failed(FailedObject {
                key: key.to_owned(),
                error: err.to_string(),
            }))
        } else {
            Err(err.context(format!("s3://{}/{key}", opts.bucket)))
        }
    };
    let mut overwrote = false;
    if let Some(ex) = existing {
        let reason = if ex.size != e.size {
            Some(format!(
                "existing object has {} bytes, the snapshot's {}",
                ex.size, e.size
            ))
        } else if !ex.etag.is_empty() && ex.etag == info.etag {
            // Same size and the very ETag the source listed: the object
            // the snapshot was taken of (no download needed).
            return Ok(Outcome::Identical);
        } else {
            match client.sha256(&opts.bucket, key).await {
                Ok((_, h)) if Some(h) == e.sha256 => return Ok(Outcome::Identical),
                Ok(_) => Some("same size, different content (SHA-256)".to_owned()),
                // Deleted meanwhile: just write it.
                Err(err) if err.kind() == ErrorKind::NotFound => None,
                Err(err) => return Err(err),
            }
        };
        if let Some(reason) = reason {
            if !opts.overwrite {
                return Ok(Outcome::Conflict(Conflict {
                    key: key.to_owned(),
                    reason,
                }));
            }
            overwrote = true;
        }
    }
    progress.set_item(key);
    let payload = match read_content(reader, e, progress).await {
        Ok(p) => p,
        Err(err) => return failed(err),
    };
    let attrs = ObjectAttrs {
        content_type: info.content_type.clone(),
        metadata: info.user_metadata.clone(),
    };
    target.put_object_with(key, payload, &attrs).await?;
    // Read back what the store now holds.
    match client.sha256(&opts.bucket, key).await {
        Ok((n, h)) if n == e.size && Some(h) == e.sha256 => Ok(Outcome::Written {
            bytes: n,
            overwrote,
        }),
        Ok((n, _)) => failed(Error::integrity(format!(
            "read back {n} bytes whose SHA-256 differs from the snapshot's ({} bytes)",
            e.size
        ))),
        Err(err) => failed(err),
    }
}

/// The object's content from the repository, checked against the
/// snapshot: in memory up to [`SPOOL_THRESHOLD`], else in a spool file.
async fn read_content(reader: &ChunkReader, e: &Entry, progress: &dyn Progress) -> Result<Payload> {
    let mut hasher = Hasher::new();
    let mut n = 0u64;
    let mut chunks = reader.stream(e.chunks.clone());
    let spool = (e.size > SPOOL_THRESHOLD).then(|| {
        std::env::temp_dir().join(format!(
            "usdcop-dr-restore-{}",
            hex::encode(crate::crypto::random_bytes::<8>())
        ))
    });
    let result = async {
        let mut file = match &spool {
            Some(p) => Some(std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(p)
                    .map_err(|err| Error::io(format!("creating {}: {err}", p.display())))?,
            )),
            None => None,
        };
        let mut mem = BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            n += chunk.len() as u64;
            progress.add_bytes(chunk.len() as u64);
            match &mut file {
                Some(f) => f
                    .write_all(&chunk)
                    .map_err(|err| Error::io(format!("writing spool file: {err}")))?,
                None => mem.extend_from_slice(&chunk),
            }
        }
        if n != e.size || e.sha256.is_some_and(|h| h != hasher.finish()) {
            return Err(Error::integrity(format!(
                "content does not match the snapshot's checksum ({n} of {} bytes)",
                e.size
            )));
        }
        Ok(match (file, &spool) {
            (Some(f), Some(p)) => {
                f.into_inner()
                    .map_err(|err| Error::io(format!("writing spool file: {err}")))?;
                Payload::File {
                    path: p.clone(),
                    len: n,
                }
            }
            _ => Payload::Bytes(mem.freeze()),
        })
    }
    .await;
    if result.is_err() {
        if let Some(p) = &spool {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}
