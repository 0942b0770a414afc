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
use crate::format::snapshot::{Snapshot, Source, SourceKind, Totals, VERSION};
use crate::format::Id;
use crate::pipeline::{Writer, WriterOptions};
use crate::progress::Progress;
use crate::repository::lock::LockGuard;
use crate::repository::{hostname, Repository};
use crate::source::files::FilesSource;

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
}

pub async fn run(
    repo: Arc<Repository>,
    opts: BackupOptions,
    input: BackupInput,
    progress: Arc<dyn Progress>,
) -> Result<BackupSummary> {
    validate_source_name(&opts.source)?;
    let started = Utc::now();
    let clock = Instant::now();
    let host = opts.host.clone().unwrap_or_else(hostname);
    let kind = match &input {
        BackupInput::Files(_) => SourceKind::Files,
        BackupInput::Stream { .. } => SourceKind::Stdin,
    };
    let index = repo.load_index().await?;
    let parent = match kind {
        SourceKind::Files => repo.snapshots().await?.into_iter().rfind(|(_, s)| {
            s.source.name == opts.source && s.source.kind == kind && s.host == host
        }),
        _ => None,
    };
    // Whatever happens after this, the lock is released (or, if the
    // process dies, expires on its own).
    let lock = LockGuard::acquire(repo.clone(), LockKind::Backup).await?;
    let result = async {
        let time = opts.time.unwrap_or(started);
        let writer = Writer::start(repo.clone(), index, opts.writer)?;
        let parent_snap = parent.as_ref().map(|(_, s)| s.clone());
        let stored = tokio::task::spawn_blocking(move || -> Result<_> {
            let (entries, paths, totals) = match input {
                BackupInput::Files(roots) => {
                    let mut src =
                        FilesSource::new(&writer, parent_snap.as_ref(), progress.as_ref());
                    src.add_roots(&roots)?;
                    let paths = roots.iter().map(|p| p.display().to_string()).collect();
                    (src.entries, paths, src.totals)
                }
                BackupInput::Stream { name, reader } => {
                    let entry = crate::source::stdin::store(
                        &writer,
                        &name,
                        reader,
                        time,
                        progress.as_ref(),
                    )?;
                    let t = crate::source::files::FilesTotals {
                        files: 1,
                        bytes: entry.size,
                        ..Default::default()
                    };
                    (vec![entry], vec![name], t)
                }
            };
            let w = writer.finish()?;
            Ok((entries, paths, totals, w))
        })
        .await
        .map_err(|e| Error::io(format!("backup task failed: {e}")))?;
        let (entries, paths, t, w) = stored?;
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
            entries,
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
            metadata: opts.metadata,
        };
        let snapshot_id = repo.save_snapshot(&snapshot).await?;
        Ok(BackupSummary {
            snapshot_id,
            time,
            source: opts.source,
            kind,
            parent: snapshot.parent,
            bytes_in: t.bytes,
            bytes_stored_new: w.bytes_stored_new,
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
        })
    }
    .await;
    let _ = lock.release().await;
    result
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
