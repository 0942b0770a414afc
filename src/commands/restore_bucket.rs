//! `restore bucket`: put a bucket snapshot's objects back into buckets
//! (the original ones or others, on any endpoint), with their content type
//! and user metadata, every object checked end to end.
//!
//! - A snapshot may hold several buckets, and their keys may collide: each
//!   source bucket is restored into a target bucket of its own
//!   ([`BucketTargets`], resolved by [`resolve`] before anything is read or
//!   written). An ambiguous request (several buckets, one `--bucket`), a
//!   bucket the snapshot does not hold, or two sources into one target is
//!   a usage error: merging would let colliding keys overwrite each other
//!   in upload order. (Merging on purpose stays possible and
//!   deterministic: restore one source, then the other without
//!   `--overwrite`; collisions are then reported as conflicts.)
//! - The entry list is streamed, never held: checked whole first
//!   ([`super::restore::check_entries`], counting each bucket's objects),
//!   then read again and restored [`CONCURRENCY`] objects at a time. Each
//!   target bucket's listing under the prefix is held in a map.
//! - Content streams from the repository ([`ChunkReader`]); objects up to
//!   16 MiB are assembled in memory, larger ones spooled to a 0600 file in
//!   a private 0700 directory of this run ([`PrivateDir`]) and uploaded
//!   from it (multipart), so memory stays bounded and the decrypted spool
//!   is readable by no one else and removed however the run ends.
//! - Before upload the content's SHA-256 is checked against the snapshot;
//!   after upload the object is read back and checked again.
//! - An object already in the target bucket with the same size and either
//!   the ETag recorded in the snapshot or (read to check) the same SHA-256
//!   is skipped. One that differs is a *conflict*: left alone
//!   and reported, unless `overwrite` is set.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::backend::s3::{ObjectAttrs, S3Backend, S3Options, StoreRole};
use crate::backend::{Payload, RequestCounts};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{Entry, EntryType, Snapshot};
use crate::format::{Hasher, Id};
use crate::pipeline::{off_runtime, ChunkReader, ReadOptions};
use crate::progress::{Collector, Progress, Warning};
use crate::repository::Repository;
use crate::scratch::PrivateDir;
use crate::source::bucket::{BucketClient, Listed};

/// Objects larger than this are spooled to a file, not held in memory.
pub const SPOOL_THRESHOLD: u64 = 16 << 20;
const CONCURRENCY: usize = 8;

/// Which of the snapshot's buckets go into which target bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketTargets {
    /// Into `bucket`: the snapshot's only bucket, or the one in `from`
    /// (more than one source is refused).
    Into { bucket: String, from: Vec<String> },
    /// Each `(source, target)` pair; a target receives one source.
    Map(Vec<(String, String)>),
    /// Every bucket of the snapshot (or those in `only`) under its own name.
    OriginalNames { only: Vec<String> },
}

impl BucketTargets {
    /// Parse one `SRC=DST` mapping (`--map`).
    pub fn parse_mapping(s: &str) -> Result<(String, String)> {
        match s.split_once('=') {
            Some((src, dst)) if !src.is_empty() && !dst.is_empty() => {
                Ok((src.to_owned(), dst.to_owned()))
            }
            _ => Err(Error::usage(format!(
                "--map {s:?} is not SOURCE=TARGET (e.g. --map raw=raw-restored)"
            ))),
        }
    }
}

pub struct BucketRestoreOptions {
    pub targets: BucketTargets,
    /// Only keys starting with this (in every selected bucket).
    pub prefix: String,
    pub overwrite: bool,
    /// Where the private spool directory goes (default `$TMPDIR`).
    pub staging_dir: Option<PathBuf>,
    /// The target store: endpoint, region, profile (or the AWS chain),
    /// apart from the repository's.
    pub s3: S3Options,
    /// Ranged reads in flight from the repository (`--read-concurrency`).
    pub read_concurrency: Option<usize>,
}

/// The buckets a snapshot holds: those of its objects and those it was
/// asked for (`s3://bucket/prefix` in its paths, even if empty), sorted.
pub fn buckets_of<'a>(
    snap: &Snapshot,
    object_buckets: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let mut out: BTreeSet<String> = object_buckets.into_iter().cloned().collect();
    for p in &snap.paths {
        if let Some(rest) = p.strip_prefix("s3://") {
            let b = rest.split('/').next().unwrap_or("");
            if !b.is_empty() {
                out.insert(b.to_owned());
            }
        }
    }
    out.into_iter().collect()
}

/// `(source bucket, target bucket)` pairs for a request against a snapshot
/// holding `in_snapshot` (pure). Refuses, as usage errors: an ambiguous
/// request, a source the snapshot does not hold, a source named twice,
/// and two sources into one target.
pub fn resolve(
    targets: &BucketTargets,
    in_snapshot: &[String],
    snapshot: &str,
) -> Result<Vec<(String, String)>> {
    let holds = || {
        if in_snapshot.is_empty() {
            "none".to_owned()
        } else {
            in_snapshot.join(", ")
        }
    };
    let known = |b: &str| -> Result<()> {
        if in_snapshot.iter().any(|s| s == b) {
            Ok(())
        } else {
            Err(Error::usage(format!(
                "snapshot {snapshot} holds no bucket {b:?}; its buckets: {}",
                holds()
            )))
        }
    };
    let pairs: Vec<(String, String)> = match targets {
        BucketTargets::Into { bucket, from } => match (from.as_slice(), in_snapshot) {
            ([src], _) => {
                known(src)?;
                vec![(src.clone(), bucket.clone())]
            }
            ([], [only]) => vec![(only.clone(), bucket.clone())],
            ([], []) => vec![],
            ([], _) => {
                return Err(Error::usage(format!(
                    "snapshot {snapshot} holds {} buckets ({}): restoring them all into {bucket:?} \
                     would mix their objects; say which bucket goes where",
                    in_snapshot.len(),
                    holds()
                ))
                .with_hint(format!(
                    "--from-bucket {} --bucket {bucket}; or --map SOURCE=TARGET for each; \
                     or --to-original-names",
                    in_snapshot[0]
                )))
            }
            (_, _) => {
                return Err(Error::usage(format!(
                    "{} source buckets ({}) into the one bucket {bucket:?}: their keys may collide",
                    from.len(),
                    from.join(", ")
                ))
                .with_hint("restore one --from-bucket per run, or use --map SOURCE=TARGET"))
            }
        },
        BucketTargets::Map(pairs) => {
            if pairs.is_empty() {
                return Err(Error::usage("no --map SOURCE=TARGET given"));
            }
            pairs.clone()
        }
        BucketTargets::OriginalNames { only } if only.is_empty() => {
            in_snapshot.iter().map(|b| (b.clone(), b.clone())).collect()
        }
        BucketTargets::OriginalNames { only } => {
            only.iter().map(|b| (b.clone(), b.clone())).collect()
        }
    };
    let mut sources = BTreeSet::new();
    let mut into: HashMap<&str, &str> = HashMap::new();
    for (src, dst) in &pairs {
        known(src)?;
        if !sources.insert(src.as_str()) {
            return Err(Error::usage(format!(
                "source bucket {src:?} is named twice"
            )));
        }
        if let Some(other) = into.insert(dst.as_str(), src.as_str()) {
            return Err(Error::usage(format!(
                "source buckets {other:?} and {src:?} both map to {dst:?}: their keys may collide"
            ))
            .with_hint(
                "give each source its own target; to merge on purpose, restore one, then \
                 the other without --overwrite (collisions are reported as conflicts)",
            ));
        }
    }
    Ok(pairs)
}

#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    /// The target bucket.
    pub bucket: String,
    pub key: String,
    /// Why the existing object is considered different.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedObject {
    /// The target bucket.
    pub bucket: String,
    pub key: String,
    pub error: String,
}

/// One source bucket's restore into its target.
#[derive(Debug, Clone, Serialize)]
pub struct BucketResult {
    /// The bucket as recorded in the snapshot.
    pub source: String,
    /// The bucket written into.
    pub bucket: String,
    pub objects: u64,
    pub bytes: u64,
    pub overwritten: u64,
    pub skipped_identical: u64,
    pub conflicts: u64,
    pub failed: u64,
}

/// The `restore bucket --json` shape (docs/CLI.md): per bucket, then totals.
#[derive(Debug, Clone, Serialize)]
pub struct BucketRestoreSummary {
    pub snapshot_id: Id,
    pub buckets: Vec<BucketResult>,
    /// Objects written (new or overwritten), over every bucket.
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

/// What a snapshot holds of one bucket under the prefix.
#[derive(Debug, Default, Clone, Copy)]
struct Selected {
    objects: u64,
    bytes: u64,
    /// Some object needs the spool.
    large: bool,
}

/// An object whose data cannot be read (damaged or missing in the
/// repository): listed as failed, the others are still restored; any other
/// error stops the restore.
fn damaged(t: &Target, e: &Entry, err: Error, progress: &dyn Progress) -> Result<Outcome> {
    let key = e.object.as_ref().map(|o| o.key.as_str()).unwrap_or("");
    let bucket = t.bucket.as_str();
    if matches!(err.kind(), ErrorKind::Integrity | ErrorKind::NotFound) {
        // The one report of it on stderr, as it happens (the CLI's final
        // error only counts them).
        progress.warn(&format!("not restored: s3://{bucket}/{key}: {err}"));
        Ok(Outcome::Failed(FailedObject {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            error: err.to_string(),
        }))
    } else {
        Err(err.context(format!("s3://{bucket}/{key}")))
    }
}

/// A target bucket, what it already holds, and where its objects come from.
struct Target {
    source: String,
    bucket: String,
    backend: S3Backend,
    existing: HashMap<String, Listed>,
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
    let index = repo.load_index_reporting(progress.as_ref()).await?;
    // Checked whole before anything is written, streaming: the objects
    // each bucket has under the prefix, counted (never held).
    let mut per_bucket: HashMap<String, Selected> = HashMap::new();
    super::restore::check_entries(&repo, &index, snapshot_id, snap, |e| {
        let Some(o) = e.object.as_ref().filter(|_| e.kind == EntryType::Object) else {
            return;
        };
        let b = match per_bucket.get_mut(&o.bucket) {
            Some(b) => b,
            None => per_bucket.entry(o.bucket.clone()).or_default(),
        };
        if o.key.starts_with(&opts.prefix) {
            b.objects += 1;
            b.bytes += e.size;
            b.large |= e.size > SPOOL_THRESHOLD;
        }
    })
    .await?;
    // Decided from the snapshot alone, before any request to a target.
    let pairs = resolve(
        &opts.targets,
        &buckets_of(snap, per_bucket.keys()),
        &snapshot_id.short(),
    )?;
    let slot: HashMap<String, usize> = pairs
        .iter()
        .enumerate()
        .map(|(i, (src, _))| (src.clone(), i))
        .collect();
    let selected = pairs
        .iter()
        .filter_map(|(src, _)| per_bucket.get(src))
        .fold(Selected::default(), |a, b| Selected {
            objects: a.objects + b.objects,
            bytes: a.bytes + b.bytes,
            large: a.large || b.large,
        });
    if selected.objects == 0 {
        let sources: Vec<&str> = pairs.iter().map(|(s, _)| s.as_str()).collect();
        return Err(Error::not_found(format!(
            "snapshot {} has no object of bucket(s) [{}] under prefix {:?}",
            snapshot_id.short(),
            sources.join(", "),
            opts.prefix
        ))
        .with_hint("restore bucket needs a snapshot made by `backup bucket`"));
    }
    // Only a run with large objects needs local disk.
    let spool = match selected.large {
        true => Some(PrivateDir::create(opts.staging_dir.as_deref())?),
        false => None,
    };
    let reader = ChunkReader::with_options(
        repo.clone(),
        index.clone(),
        ReadOptions::for_location(&repo.backend().location(), opts.read_concurrency),
    );
    let client = BucketClient::connect(&opts.s3, StoreRole::Target).await?;
    let mut targets = Vec::with_capacity(pairs.len());
    for (source, bucket) in pairs {
        // On the one connection: its requests count in `client`'s stats.
        let backend = client.backend(&bucket)?;
        let existing = client
            .list(&bucket, &opts.prefix)
            .await?
            .into_iter()
            .map(|o| (o.key.clone(), o))
            .collect();
        targets.push(Target {
            source,
            bucket,
            backend,
            existing,
        });
    }
    progress.set_total(selected.bytes);
    let mut s = BucketRestoreSummary {
        snapshot_id,
        buckets: targets
            .iter()
            .map(|t| BucketResult {
                source: t.source.clone(),
                bucket: t.bucket.clone(),
                objects: 0,
                bytes: 0,
                overwritten: 0,
                skipped_identical: 0,
                conflicts: 0,
                failed: 0,
            })
            .collect(),
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
    // The snapshot's objects streamed again (each checked as it comes),
    // CONCURRENCY at a time; only the outcomes' counts are kept.
    let (repo_ref, index_ref) = (repo.as_ref(), index.as_ref());
    let entries = futures::stream::try_unfold(repo.entries(&index, snap), |mut st| async move {
        Ok::<_, Error>(st.next().await?.map(|e| (e, st)))
    });
    let mut outcomes = Box::pin(
        entries
            .try_filter_map(|e| {
                let i = e
                    .object
                    .as_ref()
                    .filter(|o| e.kind == EntryType::Object && o.key.starts_with(&opts.prefix))
                    .and_then(|o| slot.get(&o.bucket).copied());
                futures::future::ready(Ok(i.map(|i| (i, e))))
            })
            .map_ok(|(i, mut e)| {
                let (t, reader, client, opts) = (&targets[i], &reader, &client, &opts);
                let (spool, progress) = (spool.as_ref(), progress.as_ref());
                async move {
                    // A chunk list kept out of line is read for this object.
                    if e.chunk_tree.is_some() {
                        match repo_ref.entry_chunks(index_ref, &e).await {
                            Ok(ids) => {
                                e.chunks = ids;
                                e.chunk_tree = None;
                            }
                            Err(err) => return Ok((i, damaged(t, &e, err, progress)?)),
                        }
                    }
                    let o = restore_one(reader, t, client, opts, &e, spool, progress).await?;
                    Ok::<_, Error>((i, o))
                }
            })
            .try_buffer_unordered(CONCURRENCY),
    );
    while let Some((i, o)) = outcomes.try_next().await? {
        let b = &mut s.buckets[i];
        match o {
            Outcome::Written { bytes, overwrote } => {
                b.objects += 1;
                b.bytes += bytes;
                b.overwritten += overwrote as u64;
            }
            Outcome::Identical => b.skipped_identical += 1,
            Outcome::Conflict(c) => {
                b.conflicts += 1;
                s.conflicts.push(c);
            }
            Outcome::Failed(f) => {
                b.failed += 1;
                s.failed.push(f);
            }
        }
    }
    drop(outcomes);
    for b in &s.buckets {
        s.objects += b.objects;
        s.bytes += b.bytes;
        s.overwritten += b.overwritten;
        s.skipped_identical += b.skipped_identical;
    }
    s.conflicts
        .sort_by(|a, b| (&a.bucket, &a.key).cmp(&(&b.bucket, &b.key)));
    s.failed
        .sort_by(|a, b| (&a.bucket, &a.key).cmp(&(&b.bucket, &b.key)));
    // The target backends share the client's counters.
    s.target_requests = client.requests();
    // Any spool a failed upload left behind goes with the directory.
    drop(spool);
    s.duration_s = clock.elapsed().as_secs_f64();
    s.warnings = collector.take();
    Ok(s)
}

async fn restore_one(
    reader: &ChunkReader,
    t: &Target,
    client: &BucketClient,
    opts: &BucketRestoreOptions,
    e: &Entry,
    spool: Option<&PrivateDir>,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let bucket = t.bucket.as_str();
    let info = e.object.as_ref().expect("object entry");
    let key = info.key.as_str();
    let existing = t.existing.get(key);
    let failed = |err: Error| damaged(t, e, err, progress);
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
            match client.sha256(bucket, key).await {
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
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    reason,
                }));
            }
            overwrote = true;
        }
    }
    progress.set_item(key);
    let payload = match read_content(reader, e, spool, progress).await {
        Ok(p) => p,
        Err(err) => return failed(err),
    };
    let attrs = ObjectAttrs {
        content_type: info.content_type.clone(),
        metadata: info.user_metadata.clone(),
    };
    t.backend.put_object_with(key, payload, &attrs).await?;
    // Read back what the store now holds.
    match client.sha256(bucket, key).await {
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
/// snapshot: in memory up to [`SPOOL_THRESHOLD`], else in a spool file
/// (0600, in the run's private directory; the upload removes it).
async fn read_content(
    reader: &ChunkReader,
    e: &Entry,
    spool_dir: Option<&PrivateDir>,
    progress: &dyn Progress,
) -> Result<Payload> {
    let mut hasher = (!super::restore::proven(e)).then(Hasher::new);
    let mut n = 0u64;
    let mut expected = e.chunks.iter();
    let mut chunks = reader.stream(e.chunks.clone());
    let (spool, mut file) = match spool_dir {
        Some(dir) if e.size > SPOOL_THRESHOLD => {
            let name = format!("object-{}", hex::encode(crate::crypto::random_bytes::<8>()));
            let (path, f) = dir.create_file(&name)?;
            (
                Some(path),
                Some(std::io::BufWriter::with_capacity(1 << 20, f)),
            )
        }
        _ => (None, None),
    };
    let result = async {
        let mut mem = BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = match expected.next() {
                Some(want) => super::restore::in_order(e, want, chunk?)?,
                None => return Err(Error::io("the chunk reader gave more chunks than asked")),
            };
            n += chunk.len() as u64;
            progress.add_bytes(chunk.len() as u64);
            off_runtime(|| {
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                match &mut file {
                    Some(f) => f.write_all(&chunk),
                    None => {
                        mem.extend_from_slice(&chunk);
                        Ok(())
                    }
                }
            })
            .map_err(|err| Error::io(format!("writing spool file: {err}")))?;
        }
        let whole = hasher.map(|h| h.finish());
        if n != e.size || expected.next().is_some() || (whole.is_some() && whole != e.sha256) {
            return Err(Error::integrity(format!(
                "content does not match the snapshot's checksum ({n} of {} bytes)",
                e.size
            )));
        }
        Ok(match (file, &spool) {
            (Some(f), Some(p)) => {
                off_runtime(|| f.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn into(bucket: &str, from: &[&str]) -> BucketTargets {
        BucketTargets::Into {
            bucket: bucket.into(),
            from: names(from),
        }
    }

    #[test]
    fn one_bucket_snapshot_goes_into_the_named_bucket() {
        let r = resolve(&into("t", &[]), &names(&["raw"]), "ab12").unwrap();
        assert_eq!(r, pairs(&[("raw", "t")]));
    }

    #[test]
    fn several_buckets_into_one_target_is_refused_and_lists_them() {
        let e = resolve(&into("t", &[]), &names(&["a", "b"]), "ab12").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("2 buckets (a, b)"), "{e}");
        assert!(e.hint().unwrap().contains("--from-bucket a --bucket t"));
        let e = resolve(&into("t", &["a", "b"]), &names(&["a", "b"]), "ab12").unwrap_err();
        assert!(e.message().contains("collide"), "{e}");
    }

    #[test]
    fn from_bucket_picks_one_source() {
        let r = resolve(&into("t", &["b"]), &names(&["a", "b"]), "ab12").unwrap();
        assert_eq!(r, pairs(&[("b", "t")]));
        let e = resolve(&into("t", &["c"]), &names(&["a", "b"]), "ab12").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.message()
                .contains("holds no bucket \"c\"; its buckets: a, b"),
            "{e}"
        );
    }

    #[test]
    fn maps_are_checked_against_the_snapshot_and_each_other() {
        let have = names(&["a", "b"]);
        let ok = BucketTargets::Map(pairs(&[("a", "x"), ("b", "y")]));
        assert_eq!(
            resolve(&ok, &have, "s").unwrap(),
            pairs(&[("a", "x"), ("b", "y")])
        );
        // Swapping names is fine: each target still has one source.
        let swap = BucketTargets::Map(pairs(&[("a", "b"), ("b", "a")]));
        assert!(resolve(&swap, &have, "s").is_ok());
        for (bad, says) in [
            (pairs(&[("a", "x"), ("z", "y")]), "holds no bucket \"z\""),
            (pairs(&[("a", "x"), ("b", "x")]), "both map to \"x\""),
            (pairs(&[("a", "x"), ("a", "y")]), "named twice"),
        ] {
            let e = resolve(&BucketTargets::Map(bad), &have, "s").unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.message().contains(says), "{e}");
        }
    }

    #[test]
    fn original_names_restore_every_bucket_or_the_chosen_ones() {
        let have = names(&["a", "b"]);
        let all = BucketTargets::OriginalNames { only: vec![] };
        assert_eq!(
            resolve(&all, &have, "s").unwrap(),
            pairs(&[("a", "a"), ("b", "b")])
        );
        let one = BucketTargets::OriginalNames {
            only: names(&["b"]),
        };
        assert_eq!(resolve(&one, &have, "s").unwrap(), pairs(&[("b", "b")]));
        let bad = BucketTargets::OriginalNames {
            only: names(&["c"]),
        };
        assert_eq!(resolve(&bad, &have, "s").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn mappings_parse() {
        assert_eq!(
            BucketTargets::parse_mapping("raw=raw-2").unwrap(),
            ("raw".to_owned(), "raw-2".to_owned())
        );
        for bad in ["raw", "=x", "x=", ""] {
            assert_eq!(
                BucketTargets::parse_mapping(bad).unwrap_err().exit_code(),
                2
            );
        }
    }
}
