//! `backup`: run a source through the pipeline and commit a snapshot.
//!
//! Order of writes: packs, then index objects, then the snapshot, so a
//! snapshot only ever appears when everything it references is stored.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::meta::LockKind;
use crate::format::snapshot::{Entry, Snapshot, Source, SourceKind, Totals, VERSION};
use crate::format::Id;
use crate::pipeline::{StoredList, WriterTotals};
use crate::pipeline::{Writer, WriterOptions};
use crate::progress::{Collector, Progress, Warning};
use crate::repository::lock::LockGuard;
use crate::repository::{hostname, Repository};
use crate::source::files::{FilesSource, FilesTotals};

pub struct BackupOptions {
    pub source: String,
    pub tags: Vec<String>,
    /// Record this snapshot time instead of now (imports, retention tests).
    pub time: Option<DateTime<Utc>>,
    pub host: Option<String>,
    pub writer: WriterOptions,
    /// Facts the source wants recorded in the snapshot.
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl BackupOptions {
    pub fn new(source: impl Into<String>) -> Self {
        BackupOptions {
            source: source.into(),
            tags: vec![],
            time: None,
            host: None,
            writer: WriterOptions::default(),
            metadata: BTreeMap::new(),
        }
    }
}

pub enum BackupInput {
    Files(Vec<PathBuf>),
    Stream {
        name: String,
        reader: Box<dyn Read + Send>,
    },
    /// Objects of S3 buckets.
    Bucket {
        selection: crate::source::bucket::BucketSelection,
        /// The source store: endpoint, region, profile (or the AWS chain),
        /// apart from the repository's.
        s3: crate::backend::s3::S3Options,
    },
    /// A PostgreSQL database, through `pg_dump` (source/postgres.rs).
    Postgres {
        dsn: crate::postgres::Dsn,
        options: crate::source::postgres::PgBackupOptions,
    },
    /// A physical base backup of a cluster (`pg_basebackup`), the start of
    /// its point-in-time recovery chain: a snapshot of kind `wal`.
    PostgresBase {
        dsn: crate::postgres::Dsn,
        options: super::basebackup::BaseBackupOptions,
    },
}

/// What a PostgreSQL backup saw (the full picture is in the snapshot's
/// metadata, key `postgres`).
#[derive(Debug, Clone, Serialize)]
pub struct PgSummary {
    pub database: String,
    pub server_version: String,
    pub database_size: u64,
    pub tables: u64,
    pub rows: u64,
    pub tables_checksummed: u64,
    pub timescaledb: Option<String>,
}

/// The `backup --json` shape (docs/CLI.md).
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub snapshot_id: Id,
    pub time: DateTime<Utc>,
    pub source: String,
    pub kind: SourceKind,
    pub parent: Option<Id>,
    pub bytes_in: u64,
    pub bytes_stored_new: u64,
    /// Stored bytes of the new nodes of the snapshot's entry list (list
    /// tree blobs); unchanged parts of the list are shared with earlier
    /// snapshots and cost nothing.
    pub tree_bytes_stored_new: u64,
    pub chunks: u64,
    pub chunks_new: u64,
    pub packs_written: u64,
    pub index_objects_written: u64,
    pub files: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub duration_s: f64,
    /// Requests made to the store (S3 repositories only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<crate::backend::RequestCounts>,
    /// Requests made to the source store (bucket sources only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_requests: Option<crate::backend::RequestCounts>,
    /// PostgreSQL sources only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgSummary>,
    /// Base backups only: where the backup starts and becomes consistent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_base: Option<crate::format::basebackup::BaseBackupInfo>,
    /// Clean-up after dead writers done before this backup, if any was needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<super::recover::RecoveryReport>,
    /// Problems that did not stop the backup (skipped files, objects deleted
    /// meanwhile, …), in the order they happened. The snapshot is written
    /// anyway; [`BackupSummary::failed_warnings`] says whether the run failed.
    pub warnings: Vec<Warning>,
}

impl BackupSummary {
    /// Warnings for data the user asked for that is not in the snapshot
    /// ([`crate::progress::WarningKind::is_failure`]).
    pub fn failed_warnings(&self) -> usize {
        self.warnings.iter().filter(|w| w.kind.is_failure()).count()
    }
}

pub async fn run(
    repo: Arc<Repository>,
    mut opts: BackupOptions,
    input: BackupInput,
    progress: Arc<dyn Progress>,
) -> Result<BackupSummary> {
    validate_source_name(&opts.source)?;
    // Before anything is written (lock, recovery, packs): a binary that
    // does not implement every write feature the repository requires
    // must not write into it (docs/FORMAT.md, "The writer gate").
    repo.check_writable()?;
    // Sources report warnings as they go; the summary carries them all.
    let collector = Collector::new(progress);
    let progress: Arc<dyn Progress> = collector.clone();
    let started = Utc::now();
    let clock = Instant::now();
    let host = opts.host.clone().unwrap_or_else(hostname);
    let kind = match &input {
        BackupInput::Files(_) => SourceKind::Files,
        BackupInput::Stream { .. } => SourceKind::Stdin,
        BackupInput::Bucket { .. } => SourceKind::Bucket,
        BackupInput::Postgres { .. } => SourceKind::Postgres,
        BackupInput::PostgresBase { .. } => SourceKind::Wal,
    };
    // A database that cannot be reached (wrong DSN, password, missing
    // pg_dump) fails here, before anything is written to the repository.
    let input = match input {
        BackupInput::Postgres { dsn, options } => {
            Prepared::Postgres(crate::source::postgres::Session::open(&dsn, &options).await?)
        }
        BackupInput::PostgresBase { dsn, options } => {
            Prepared::Base(super::basebackup::BaseSession::open(&repo, &dsn, options).await?)
        }
        other => Prepared::Input(other),
    };
    let parent = match kind {
        SourceKind::Files | SourceKind::Bucket => {
            repo.snapshots().await?.into_iter().rfind(|(_, s)| {
                s.source.name == opts.source && s.source.kind == kind && s.host == host
            })
        }
        _ => None,
    };
    // Whatever happens after this, the lock is released (or, if the
    // process dies, expires on its own).
    let lock = LockGuard::acquire(repo.clone(), LockKind::Backup).await?;
    // Every pack and index object is written under the lease, and the
    // snapshot only after a last check (docs/FORMAT.md, "Locks").
    let lease = lock.lease();
    opts.writer.lease = Some(lease.clone());
    let result = async {
        let recovery = super::recover::after_dead_writers(&repo, &lock.id().await).await?;
        // Prune's condemned packs, read after our lock was stored and
        // before the index (docs/FORMAT.md §12): never deduplicated against.
        let condemned = crate::repository::gc::load_condemned(&repo).await?;
        for (name, why) in &condemned.damaged {
            progress.warn(&format!(
                "condemned record {name} is damaged ({why}): ignored"
            ));
        }
        // Loaded after the recovery, which may have indexed orphaned packs.
        let full_index = repo.load_index_reporting(progress.as_ref()).await?;
        // What the writer deduplicates against; the parent is read
        // through the full index (its nodes may sit in a condemned pack).
        let index = crate::repository::gc::for_writer(&full_index, &condemned);
        let time = opts.time.unwrap_or(started);
        let parent_snap = parent.as_ref().map(|(id, s)| (*id, s.clone()));
        let stored = match input {
            Prepared::Postgres(session) => {
                backup_postgres(session, &repo, index, opts.writer, time, progress.clone()).await?
            }
            Prepared::Base(session) => {
                backup_postgres_base(session, &repo, index, opts.writer, progress.clone()).await?
            }
            Prepared::Input(BackupInput::Bucket { selection, s3 }) => {
                backup_bucket(
                    &repo,
                    index,
                    full_index.clone(),
                    opts.writer,
                    &selection,
                    &s3,
                    parent.as_ref(),
                    progress.clone(),
                )
                .await?
            }
            Prepared::Input(BackupInput::Files(roots)) => {
                let writer = Writer::start(repo.clone(), index.clone(), opts.writer)?;
                let index = full_index.clone();
                let repo = repo.clone();
                let rt = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || -> Result<_> {
                    let (list, totals) = backup_files_streaming(
                        &writer,
                        &repo,
                        &index,
                        parent_snap.as_ref(),
                        &roots,
                        &rt,
                        progress.as_ref(),
                    )?;
                    let paths = roots.iter().map(|p| p.display().to_string()).collect();
                    let w = writer.finish()?;
                    Ok(Stored::new(list, paths, totals, w))
                })
                .await
                .map_err(|e| Error::io(format!("backup task failed: {e}")))??
            }
            Prepared::Input(input) => {
                let writer = Writer::start(repo.clone(), index, opts.writer)?;
                tokio::task::spawn_blocking(move || -> Result<_> {
                    let (entries, paths, totals) = match input {
                        BackupInput::Files(_) => unreachable!("handled above"),
                        BackupInput::Stream { name, reader } => {
                            let entry = crate::source::stdin::store(
                                &writer,
                                &name,
                                reader,
                                time,
                                progress.as_ref(),
                            )?;
                            let t = FilesTotals {
                                files: 1,
                                bytes: entry.size,
                                ..Default::default()
                            };
                            (vec![entry], vec![name], t)
                        }
                        BackupInput::Bucket { .. }
                        | BackupInput::Postgres { .. }
                        | BackupInput::PostgresBase { .. } => {
                            unreachable!("handled above")
                        }
                    };
                    let list = writer.store_entry_list(entries)?;
                    let w = writer.finish()?;
                    Ok(Stored::new(list, paths, totals, w))
                })
                .await
                .map_err(|e| Error::io(format!("backup task failed: {e}")))??
            }
        };
        let Stored {
            list,
            paths,
            totals: t,
            writer: w,
            source_requests,
            postgres,
            base,
        } = stored;
        let mut metadata = opts.metadata;
        if let Some(info) = &base {
            metadata.insert(
                crate::format::basebackup::METADATA_KEY.to_owned(),
                serde_json::to_value(info).expect("serializable"),
            );
        }
        let pg_summary = postgres.map(|(summary, picture)| {
            metadata.insert(crate::postgres::picture::METADATA_KEY.to_owned(), picture);
            summary
        });
        let snapshot = Snapshot {
            version: VERSION,
            time,
            host,
            username: std::env::var("USER").unwrap_or_default(),
            source: Source {
                kind,
                name: opts.source.clone(),
            },
            tags: opts.tags,
            parent: parent.as_ref().map(|(id, _)| *id),
            paths,
            tree: list.tree,
            entry_count: list.count,
            totals: Totals {
                files: t.files,
                dirs: t.dirs,
                symlinks: t.symlinks,
                bytes: t.bytes,
                chunks: w.chunks,
                chunks_new: w.chunks_new,
                bytes_stored_new: w.bytes_stored_new,
                files_unchanged: t.files_unchanged,
            },
            started,
            duration_s: clock.elapsed().as_secs_f64(),
            program_version: env!("CARGO_PKG_VERSION").into(),
            metadata,
        };
        // A writer never commits after others may have judged it dead: they
        // may have aborted its uploads or condemned its packs meanwhile.
        lease.check()?;
        let snapshot_id = repo.save_snapshot(&snapshot).await?;
        // Every backup adds small index objects; once there are many, merge
        // them (under this backup's lock and lease). The snapshot is stored:
        // a failure here only leaves the objects as they were.
        // Only when no pack was condemned at our start: then no prune can
        // delete a pack while we run (we were live at any condemnation
        // since), so we never copy entries of a pack being deleted into a
        // new index object (docs/FORMAT.md §12).
        let compaction = crate::repository::compact::CompactOptions::auto();
        if condemned.is_empty() {
            match crate::repository::compact::compact(&repo, &compaction, Some(&lease)).await {
                Ok(r) if r.objects_replaced > 0 => tracing::info!(
                    "compacted {} small index objects into {}",
                    r.objects_replaced,
                    r.written.len()
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("index compaction failed (the snapshot is stored): {e}"),
            }
        }
        Ok(BackupSummary {
            snapshot_id,
            time,
            source: opts.source,
            kind,
            parent: snapshot.parent,
            bytes_in: t.bytes,
            bytes_stored_new: w.bytes_stored_new,
            tree_bytes_stored_new: w.tree_bytes_new,
            chunks: w.chunks,
            chunks_new: w.chunks_new,
            packs_written: w.packs,
            index_objects_written: w.index_objects,
            files: t.files,
            files_unchanged: t.files_unchanged,
            dirs: t.dirs,
            symlinks: t.symlinks,
            duration_s: snapshot.duration_s,
            requests: repo.backend().request_counts(),
            source_requests,
            postgres: pg_summary,
            postgres_base: base,
            recovery,
            warnings: collector.take(),
        })
    }
    .await;
    let _ = lock.release().await;
    result
}

/// A source made ready before the lock is taken (a database connection is
/// opened first, so a wrong DSN costs the repository nothing). One value,
/// short-lived: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    Postgres(crate::source::postgres::Session),
    Base(super::basebackup::BaseSession),
    Input(BackupInput),
}

/// What a source stored: the snapshot's entries and recorded paths, the
/// totals, and what some sources report besides.
struct Stored {
    list: StoredList,
    paths: Vec<String>,
    totals: FilesTotals,
    writer: WriterTotals,
    source_requests: Option<crate::backend::RequestCounts>,
    /// The summary and the picture (snapshot metadata) of a database.
    postgres: Option<(PgSummary, serde_json::Value)>,
    /// A base backup's record (snapshot metadata).
    base: Option<crate::format::basebackup::BaseBackupInfo>,
}

impl Stored {
    fn new(
        list: StoredList,
        paths: Vec<String>,
        totals: FilesTotals,
        writer: WriterTotals,
    ) -> Stored {
        Stored {
            list,
            paths,
            totals,
            writer,
            source_requests: None,
            postgres: None,
            base: None,
        }
    }
}

/// The PostgreSQL source: pg_dump into the pipeline, the picture beside it.
async fn backup_postgres(
    session: crate::source::postgres::Session,
    repo: &Arc<Repository>,
    index: Arc<crate::repository::MasterIndex>,
    writer_opts: WriterOptions,
    time: DateTime<Utc>,
    progress: Arc<dyn Progress>,
) -> Result<Stored> {
    let paths = vec![format!("postgres:{}", session.database())];
    let (entries, list, w, picture) = session
        .backup(repo, index, writer_opts, time, progress)
        .await?;
    let summary = PgSummary {
        database: picture.database.clone(),
        server_version: picture.server_version.clone(),
        database_size: picture.database_size,
        tables: picture.tables.len() as u64,
        rows: picture.total_rows,
        tables_checksummed: picture
            .tables
            .iter()
            .filter(|t| t.checksum.is_some())
            .count() as u64,
        timescaledb: picture.timescaledb().map(|e| e.version.clone()),
    };
    let totals = FilesTotals {
        files: entries.len() as u64,
        bytes: entries.iter().map(|e| e.size).sum(),
        ..Default::default()
    };
    let mut stored = Stored::new(list, paths, totals, w);
    stored.postgres = Some((
        summary,
        serde_json::to_value(&picture).expect("picture serializes"),
    ));
    Ok(stored)
}

/// A physical base backup: pg_basebackup's tar stream split into files by
/// one thread while the list tree builder takes the entries (bounded
/// channel), then the wait for the backup's WAL in the archive: the
/// snapshot is written only after that.
async fn backup_postgres_base(
    session: super::basebackup::BaseSession,
    repo: &Arc<Repository>,
    index: Arc<crate::repository::MasterIndex>,
    writer_opts: WriterOptions,
    progress: Arc<dyn Progress>,
) -> Result<Stored> {
    let started = Utc::now();
    let label = format!("usdcop-dr {}", started.format("%Y-%m-%dT%H:%M:%SZ"));
    let stream =
        crate::postgres::tools::ChildStream::spawn("pg_basebackup", session.command(&label))?;
    let writer = Writer::start(repo.clone(), index, writer_opts)?;
    let (list, facts, w) = tokio::task::spawn_blocking(move || -> Result<_> {
        let (tx, rx) = crossbeam_channel::bounded::<Entry>(1024);
        let (list, facts) = std::thread::scope(|scope| {
            let writer = &writer;
            let progress = progress.as_ref();
            let split = scope.spawn(move || -> Result<_> {
                let mut send = |e: Entry| {
                    tx.send(e)
                        .map_err(|_| Error::io("the entry list builder stopped"))
                };
                let mut stream = stream;
                let facts =
                    crate::source::basebackup::store_tar(writer, &mut stream, progress, &mut send)?;
                // The tar's end marker is not the program's end: read to
                // the end, where a failed pg_basebackup turns into an error.
                std::io::copy(&mut stream, &mut std::io::sink())
                    .map_err(|e| Error::new(crate::ErrorKind::Source, e.to_string()))?;
                Ok(facts)
            });
            let list = writer.store_entry_list(rx);
            let facts = split
                .join()
                .map_err(|_| Error::io("the base backup reader panicked"))??;
            Ok::<_, Error>((list?, facts))
        })?;
        let w = writer.finish()?;
        Ok((list, facts, w))
    })
    .await
    .map_err(|e| Error::io(format!("backup task failed: {e}")))??;
    let info = super::basebackup::base_info(&session, &facts, started, Utc::now())?;
    tracing::info!(
        "base backup streamed ({} files); waiting for WAL {}..{} in the archive",
        facts.totals.files,
        info.start_segment,
        info.stop_segment
    );
    super::basebackup::wait_for_wal(repo, &info, session.options.wal_timeout).await?;
    let mut stored = Stored::new(
        list,
        vec![format!("pgdata:{}", session.endpoint())],
        facts.totals,
        w,
    );
    stored.base = Some(info);
    Ok(stored)
}

/// The bucket source with bounded memory: async listing and downloads
/// feed the list tree builder (a blocking task) through a bounded channel,
/// and the parent's entries are streamed from its tree and merge-joined
/// with the listing (source/bucket.rs).
#[allow(clippy::too_many_arguments)]
async fn backup_bucket(
    repo: &Arc<Repository>,
    index: Arc<crate::repository::MasterIndex>,
    full_index: Arc<crate::repository::MasterIndex>,
    writer_opts: WriterOptions,
    selection: &crate::source::bucket::BucketSelection,
    s3: &crate::backend::s3::S3Options,
    parent: Option<&(Id, Snapshot)>,
    progress: Arc<dyn Progress>,
) -> Result<Stored> {
    use crate::source::bucket;
    if selection.buckets.is_empty() {
        return Err(Error::usage("no --bucket given"));
    }
    let src = bucket::BucketClient::connect(s3, crate::backend::s3::StoreRole::Source).await?;
    let writer = Arc::new(Writer::start(repo.clone(), index.clone(), writer_opts)?);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Entry>(1024);
    let builder = {
        let writer = writer.clone();
        tokio::task::spawn_blocking(move || {
            writer.store_entry_list(std::iter::from_fn(move || rx.blocking_recv()))
        })
    };
    let parent = parent.map(|(id, s)| bucket::Parent {
        id: *id,
        repo: repo.as_ref(),
        index: full_index.as_ref(),
        entries: repo.entries(&full_index, s),
    });
    let result = bucket::backup(
        &src,
        selection,
        writer.clone(),
        parent,
        progress,
        bucket::DEFAULT_CONCURRENCY,
        tx,
    )
    .await;
    let list = builder
        .await
        .map_err(|e| Error::io(format!("backup task failed: {e}")))?;
    let (list, totals) = match (list, result) {
        (Ok(list), Ok(totals)) => (list, totals),
        // The builder's own error says why it stopped taking entries.
        (Err(e), Err(src_err)) if src_err.to_string().contains(bucket::SINK_STOPPED) => {
            return Err(e)
        }
        (_, Err(e)) | (Err(e), _) => return Err(e),
    };
    // Joining the pipeline threads blocks: never on a runtime thread.
    let w = tokio::task::spawn_blocking(move || match Arc::try_unwrap(writer) {
        Ok(w) => w.finish(),
        Err(_) => Err(Error::io("backup pipeline still in use")),
    })
    .await
    .map_err(|e| Error::io(format!("backup task failed: {e}")))??;
    let mut stored = Stored::new(list, selection.urls(), totals, w);
    stored.source_requests = Some(src.requests());
    Ok(stored)
}

/// The files source with bounded memory: the directory walk runs in a
/// thread of its own and hands each entry through a bounded channel to the
/// list tree builder (never a `Vec` of the whole run), and the parent's
/// entries are streamed from its tree and merge-joined with the walk
/// (never a map of the whole parent). A parent whose entry list turns out
/// damaged stops being used (a warning; the rest is read again); a store
/// error fails the backup.
fn backup_files_streaming(
    writer: &Writer,
    repo: &Repository,
    index: &crate::repository::MasterIndex,
    parent: Option<&(Id, Snapshot)>,
    roots: &[PathBuf],
    rt: &tokio::runtime::Handle,
    progress: &dyn Progress,
) -> Result<(crate::pipeline::StoredList, FilesTotals)> {
    use crate::source::files::{MergeCursor, NoParent, ParentLookup};
    let (tx, rx) = crossbeam_channel::bounded::<Entry>(1024);
    std::thread::scope(|scope| {
        let walk = scope.spawn(move || -> Result<FilesTotals> {
            let mut stream = parent.map(|(_, s)| repo.entries(index, s));
            let mut broken = false;
            let mut cursor = MergeCursor::new(|| {
                let Some(stream) = stream.as_mut().filter(|_| !broken) else {
                    return Ok(None);
                };
                match rt.block_on(stream.next()) {
                    Ok(e) => Ok(e),
                    Err(e) if e.kind() == crate::ErrorKind::Integrity => {
                        broken = true;
                        tracing::warn!(
                            "parent snapshot {} is unreadable, backing up the rest without it: {e}",
                            parent.map(|(id, _)| id.short()).unwrap_or_default()
                        );
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            });
            let mut none = NoParent;
            let lookup: &mut dyn ParentLookup = if parent.is_some() {
                &mut cursor
            } else {
                &mut none
            };
            let mut send = |e: Entry| {
                tx.send(e)
                    .map_err(|_| Error::io("the entry list builder stopped"))
            };
            let mut src = FilesSource::new(writer, lookup, progress, &mut send);
            src.add_roots(roots)?;
            Ok(src.totals)
        });
        let list = writer.store_entry_list(rx);
        // The walk's own error first: a list cut short by it is never used.
        let totals = walk
            .join()
            .map_err(|_| Error::io("the directory walk panicked"))??;
        Ok((list?, totals))
    })
}

/// Source names end up in reports and filters: keep them plain.
pub fn validate_source_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "invalid source name {name:?}: use letters, digits, '-', '_' and '.'"
        )))
    }
}

/// Store `entries` as `snap`'s entry list (a list tree, through a writer
/// of its own) and then `snap` itself; returns the new snapshot's id. For
/// tools and tests that make a snapshot from entries they already have
/// (no lock is taken: the caller's business).
pub async fn save_snapshot_with_entries(
    repo: &Arc<Repository>,
    snap: &mut Snapshot,
    entries: Vec<Entry>,
) -> Result<Id> {
    let condemned = crate::repository::gc::load_condemned(repo).await?;
    let index = repo.load_index().await?;
    let index = crate::repository::gc::for_writer(&index, &condemned);
    let writer = Writer::start(repo.clone(), index, WriterOptions::default())?;
    let list = tokio::task::spawn_blocking(move || -> Result<StoredList> {
        let list = writer.store_entry_list(entries)?;
        writer.finish()?;
        Ok(list)
    })
    .await
    .map_err(|e| Error::io(format!("writer task failed: {e}")))??;
    snap.tree = list.tree;
    snap.entry_count = list.count;
    repo.save_snapshot(snap).await
}
