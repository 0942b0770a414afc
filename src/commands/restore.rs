//! `restore`: write a snapshot's entries back, every byte checked.
//!
//! Each file is written to a temporary name beside its destination, its
//! whole-content SHA-256 compared with the snapshot's, and only then
//! renamed into place: a damaged chunk never leaves wrong bytes under the
//! real name. A file that cannot be restored is reported and the others
//! still are.
//!
//! Restores run as root, possibly into a directory that already holds
//! files, from a repository an attacker may have written to: the snapshot
//! is checked again before anything is written (no absolute or `..` path,
//! nothing below one of its own symlinks; exit 3 and nothing restored
//! otherwise), and every write goes through [`super::restore_fs`], which
//! never follows a link — neither one the snapshot restored nor one that
//! was already in the target. Symlinks are still created last.
//!
//! A restore into a directory never holds the entry list: it is read once
//! to check it whole (and count what will be written), then again to
//! restore it a batch of files at a time (see `restore_tree`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{Entry, EntryType, Snapshot, SourceKind};
use crate::format::{Hasher, Id};
use crate::pipeline::{off_runtime, Chunk, ChunkReader, ReadOptions};
use crate::progress::{Collector, Progress, Warning};
use crate::repository::Repository;
use crate::source::postgres::GLOBALS_ENTRY;

use super::restore_fs::{Meta, TargetDir};

pub enum RestoreTarget {
    Dir(PathBuf),
    /// Stream one file entry to this writer (stdout).
    Stream(Box<dyn Write + Send>),
}

/// How a directory restore makes its files durable (`restore --sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// One `syncfs(2)` of the target's filesystem once every file is in
    /// place, before the restore reports success: as durable at the end as
    /// `file`, without a disk wait per file. A crash midway can leave
    /// files renamed into place whose data did not reach the disk (the
    /// restore had not finished: run it again).
    #[default]
    End,
    /// fsync each file before renaming it into place: a crash midway
    /// leaves every file either whole or absent; one disk wait per file.
    File,
    /// No sync (scratch restores such as drills): the kernel writes back
    /// when it likes.
    None,
}

pub struct RestoreOptions {
    pub target: RestoreTarget,
    /// How files are made durable (directory restores).
    pub sync: SyncMode,
    /// Only entries at or under these paths (relative, as in the snapshot).
    pub include: Vec<String>,
    /// Ranged reads in flight (`--read-concurrency`; default by store).
    pub read_concurrency: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedEntry {
    pub path: String,
    pub error: String,
    pub reason: FailureReason,
}

/// Why an entry was not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Its data in the repository is damaged or missing (exit 3).
    Damaged,
    /// Something already in the target is in the way: a symlink or a file
    /// where the snapshot needs a directory, or a directory where it has a
    /// file. Nothing was written through it (exit 1).
    Blocked,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    pub snapshot_id: Id,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub duration_s: f64,
    pub failed: Vec<FailedEntry>,
    /// Things a person should know (e.g. what `--stdout` left out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Problems that did not stop the restore (docs/CLI.md, "Warnings").
    pub warnings: Vec<Warning>,
}

pub async fn run(
    repo: Arc<Repository>,
    snapshot_id: Id,
    snap: &Snapshot,
    opts: RestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<RestoreSummary> {
    let clock = Instant::now();
    let collector = Collector::new(progress);
    let progress: Arc<dyn Progress> = collector.clone();
    let index = repo.load_index_reporting(progress.as_ref()).await?;
    let reader = ChunkReader::with_options(
        repo.clone(),
        index.clone(),
        ReadOptions::for_location(&repo.backend().location(), opts.read_concurrency),
    );
    let mut summary = RestoreSummary {
        snapshot_id,
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        duration_s: 0.0,
        failed: vec![],
        notes: vec![],
        warnings: vec![],
    };
    let nothing_matches = || {
        Error::not_found(format!(
            "no entry of snapshot {} matches {:?}",
            snapshot_id.short(),
            opts.include
        ))
    };
    match opts.target {
        RestoreTarget::Stream(mut out) => {
            // Whoever handed us the snapshot, it is not trusted: a path
            // that could leave the target, or an entry below one of its own
            // symlinks, refuses the whole snapshot (load_entries).
            let entries = load_entries_checked(&repo, &index, snapshot_id, snap).await?;
            let selected: Vec<&Entry> = entries
                .iter()
                .filter(|e| included(&e.path, &opts.include))
                .collect();
            if selected.is_empty() {
                return Err(nothing_matches());
            }
            progress.set_total(selected.iter().map(|e| e.size).sum());
            let files: Vec<&&Entry> = selected
                .iter()
                .filter(|e| matches!(e.kind, EntryType::File | EntryType::Object))
                .collect();
            let entry = stream_entry(snapshot_id, snap, &files, &opts.include, &mut summary)?;
            let written = copy_entry(&reader, entry, &mut out, progress.as_ref()).await?;
            out.flush().map_err(|e| write_err("stdout", e))?;
            summary.files = 1;
            summary.bytes = written;
        }
        RestoreTarget::Dir(target) => {
            // The same checks over the streamed list, before anything is
            // written: the list is never held whole (see restore_tree).
            let (mut selected, mut total) = (0u64, 0u64);
            check_entries(&repo, &index, snapshot_id, snap, |e| {
                if included(&e.path, &opts.include) {
                    selected += 1;
                    total += e.size;
                }
            })
            .await?;
            if selected == 0 {
                return Err(nothing_matches());
            }
            progress.set_total(total);
            let stream = repo.entries(&index, snap);
            let include = &opts.include;
            restore_tree(
                &reader,
                &repo,
                &index,
                stream,
                |e| included(&e.path, include),
                &target,
                opts.sync,
                progress,
                &mut summary,
            )
            .await?;
        }
    }
    summary.duration_s = clock.elapsed().as_secs_f64();
    summary.warnings = collector.take();
    Ok(summary)
}

/// The one file `--stdout` streams. A `backup postgres --globals`
/// snapshot holds the dump and `globals.sql`: without `--path`, the dump
/// is what an operator wants on stdout (docs/POSTGRES.md), and a note says
/// how to get the roles.
fn stream_entry<'a>(
    snapshot_id: Id,
    snap: &Snapshot,
    files: &[&&'a Entry],
    include: &[String],
    summary: &mut RestoreSummary,
) -> Result<&'a Entry> {
    if let [only] = files {
        return Ok(**only);
    }
    if include.is_empty() && snap.source.kind == SourceKind::Postgres {
        let dumps: Vec<&&Entry> = files
            .iter()
            .copied()
            .filter(|e| e.path != GLOBALS_ENTRY)
            .collect();
        if let [dump] = dumps[..] {
            if files.iter().any(|e| e.path == GLOBALS_ENTRY) {
                summary.notes.push(format!(
                    "streamed the dump {}; snapshot {} also holds the roles and tablespaces: \
                     `usdcop-dr restore --snapshot {} --path {GLOBALS_ENTRY} --stdout`",
                    dump.path,
                    snapshot_id.short(),
                    snapshot_id.short()
                ));
            }
            return Ok(*dump);
        }
    }
    let names: Vec<&str> = files.iter().take(5).map(|e| e.path.as_str()).collect();
    Err(Error::usage(format!(
        "--stdout needs exactly one file, snapshot {} has {} here{}",
        snapshot_id.short(),
        files.len(),
        if names.is_empty() {
            String::new()
        } else {
            format!(
                " ({}{})",
                names.join(", "),
                if files.len() > 5 { ", …" } else { "" }
            )
        }
    ))
    .with_hint("pick one with --path, or restore with --target DIR"))
}

fn included(path: &str, include: &[String]) -> bool {
    include.is_empty()
        || include.iter().any(|i| {
            let i = i.trim_matches('/');
            path == i || path.starts_with(&format!("{i}/"))
        })
}

/// Small files are written on the blocking pool, a job of several at a
/// time, while the restore loop reads the next ones: creating, writing and
/// closing a file is about 35 µs of kernel time, and one thread doing that
/// for 300,000 files was the whole restore's bound (docs/BENCHMARKS.md).
/// A file up to this size is held whole in memory on its way to a writer.
const SMALL_FILE: u64 = 1 << 20;
/// A job closes at this many bytes or this many files (a few files, when
/// each waits for its fsync: jobs, not files, run side by side).
const JOB_BYTES: u64 = 1 << 20;
const JOB_FILES: usize = 256;
const JOB_FILES_SYNCED: usize = 4;
/// A job of at least this many files also closes where the directory
/// changes (see [`Writers::push`]).
const JOB_FILES_PER_DIR_CHANGE: usize = 8;
/// Jobs at once when each file waits for the disk (`--sync file`; many
/// small files must not wait for one another); otherwise one a core and
/// one more. Memory: at most this many jobs of [`JOB_BYTES`].
const JOBS_SYNCED: usize = 16;

/// Files restored together: their chunks are read as one stream and in
/// the order of their first chunk in the repository. A batch closes at
/// this many files or [`BATCH_CHUNKS`] chunk ids (memory: one batch).
const BATCH_FILES: usize = 16_384;
const BATCH_CHUNKS: usize = 1 << 18;

/// Restore the entries of `stream` that `wanted` selects into `target`,
/// one batch of files at a time ([`restore_files`]): directories as they
/// come (a writer emits a directory before what it contains, and a file's
/// missing parents are created anyway), symlinks after every file, and
/// directory metadata last, deepest first. Memory: one batch of files and
/// the directory and symlink entries (not the files'), whatever the
/// snapshot's size. The caller has checked the whole list first
/// ([`check_entries`]); the stream checks each entry again as it comes.
#[allow(clippy::too_many_arguments)]
async fn restore_tree(
    reader: &ChunkReader,
    repo: &Repository,
    index: &crate::repository::MasterIndex,
    mut stream: crate::repository::tree::EntryStream<'_>,
    wanted: impl Fn(&Entry) -> bool,
    target: &Path,
    sync: SyncMode,
    progress: Arc<dyn Progress>,
    summary: &mut RestoreSummary,
) -> Result<()> {
    let dir = Arc::new(
        off_runtime(|| TargetDir::open(target))
            .map_err(|e| write_err(&target.display().to_string(), e))?,
    );
    let is_root = unsafe { libc::geteuid() } == 0;
    // Directories whose metadata is set at the end, in list order.
    let mut dirs: Vec<(String, Meta)> = vec![];
    let mut links: Vec<Entry> = vec![];
    let mut writers = Writers::new(dir.clone(), is_root, sync == SyncMode::File);
    let written = restore_entries(
        reader,
        repo,
        index,
        &mut stream,
        wanted,
        &dir,
        &mut writers,
        &mut dirs,
        &mut links,
        progress.as_ref(),
        summary,
    )
    .await;
    if written.is_err() {
        // Nothing half-written stays behind: every job in flight ends
        // (removing what it did not commit) before the error is reported.
        writers.abandon().await;
    }
    written?;
    off_runtime(|| -> Result<()> {
        // Symlinks after every file and directory (not needed for safety
        // any more, since no write follows a link, but a link never points
        // at a half-restored tree).
        for e in &links {
            match dir.symlink(&e.path, e.target.as_deref().unwrap_or(""), meta(e, is_root)) {
                Ok(()) => summary.symlinks += 1,
                Err(err) => failed(&e.path, err, progress.as_ref(), summary)?,
            }
        }
        // Directory metadata last, deepest first, so writing children does
        // not bump the restored mtimes.
        for (path, m) in dirs.into_iter().rev() {
            if let Err(err) = dir.set_dir_meta(&path, m) {
                failed(&path, err, progress.as_ref(), summary)?;
            }
        }
        if sync == SyncMode::End {
            dir.sync_filesystem().map_err(|e| {
                Error::io(format!(
                    "syncing the restored files to disk ({}): {e}",
                    target.display()
                ))
            })?;
        }
        Ok(())
    })?;
    summary.failed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(())
}

/// The restore loop of [`restore_tree`]: directories made as they come,
/// symlinks and directory metadata collected for the end, files restored a
/// batch at a time; returns once every file job has ended.
#[allow(clippy::too_many_arguments)]
async fn restore_entries(
    reader: &ChunkReader,
    repo: &Repository,
    index: &crate::repository::MasterIndex,
    stream: &mut crate::repository::tree::EntryStream<'_>,
    wanted: impl Fn(&Entry) -> bool,
    dir: &Arc<TargetDir>,
    writers: &mut Writers,
    dirs: &mut Vec<(String, Meta)>,
    links: &mut Vec<Entry>,
    progress: &dyn Progress,
    summary: &mut RestoreSummary,
) -> Result<()> {
    let mut batch: Vec<Entry> = vec![];
    let mut batch_chunks = 0usize;
    while let Some(mut e) = stream.next().await? {
        if !wanted(&e) {
            continue;
        }
        match e.kind {
            EntryType::Dir => {
                let made = off_runtime(|| dir.dir(&e.path, true));
                match made {
                    Ok(_) => {
                        summary.dirs += 1;
                        let m = meta(&e, writers.is_root);
                        dirs.push((e.path, m));
                    }
                    Err(err) => failed(&e.path, err, progress, summary)?,
                }
            }
            EntryType::Symlink => links.push(e),
            EntryType::File | EntryType::Object => {
                // A chunk list kept out of line is read now, for this file.
                if e.chunk_tree.is_some() {
                    match repo.entry_chunks(index, &e).await {
                        Ok(ids) => {
                            e.chunks = ids;
                            e.chunk_tree = None;
                        }
                        Err(err) => {
                            failed(&e.path, err, progress, summary)?;
                            continue;
                        }
                    }
                }
                batch_chunks += e.chunks.len();
                batch.push(e);
                if batch.len() >= BATCH_FILES || batch_chunks >= BATCH_CHUNKS {
                    let files = std::mem::take(&mut batch);
                    batch_chunks = 0;
                    restore_files(reader, dir, files, writers, progress, summary).await?;
                }
            }
        }
    }
    restore_files(reader, dir, batch, writers, progress, summary).await?;
    writers.finish(progress, summary).await
}

/// Restore one batch of files. All their chunks are read as one stream,
/// so that the reader can coalesce neighbouring chunks of many small files
/// into one ranged read and keep its full depth of reads in flight across
/// file boundaries; in the order of their first chunk in the repository
/// (pack, offset): files backed up together are read together. Bucket
/// objects restore into a directory as plain files. A small file is
/// gathered whole and handed to the [`Writers`]; a larger one is streamed
/// to disk here.
async fn restore_files(
    reader: &ChunkReader,
    dir: &Arc<TargetDir>,
    mut files: Vec<Entry>,
    writers: &mut Writers,
    progress: &dyn Progress,
    summary: &mut RestoreSummary,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    {
        let index = reader.index();
        files.sort_by_cached_key(|e| {
            e.chunks
                .first()
                .and_then(|c| index.get(c).map(|l| (index.pack_id(&l), l.offset)))
        });
    }
    let ids: Vec<Id> = files
        .iter()
        .flat_map(|e| e.chunks.iter().copied())
        .collect();
    let mut chunks = reader.stream(ids);
    let mut next_chunk = async || {
        chunks
            .next()
            .await
            .unwrap_or_else(|| Err(Error::io("the chunk reader stopped early".to_owned())))
    };
    for mut e in files {
        progress.set_item(&e.path);
        if e.size <= SMALL_FILE {
            let mut data = Vec::with_capacity(e.chunks.len());
            let mut got = 0u64;
            let mut damaged = None;
            for want in &e.chunks {
                match next_chunk().await.and_then(|c| in_order(&e, want, c)) {
                    Ok(c) if damaged.is_none() => {
                        progress.add_bytes(c.len() as u64);
                        got += c.len() as u64;
                        if got > e.size {
                            // More than the entry says (a damaged or forged
                            // list): never gathered past its size.
                            damaged = Some(mismatch(&e, got));
                            data.clear();
                        } else {
                            data.push(c.data);
                        }
                    }
                    Ok(_) => {}
                    // This file failed: its other chunks are not needed.
                    Err(err) => damaged = damaged.or(Some(err)),
                }
            }
            match damaged {
                Some(err) => failed(&e.path, err, progress, summary)?,
                None => {
                    let proven = proven(&e);
                    e.chunks = vec![];
                    let f = SmallFile {
                        entry: e,
                        data,
                        proven,
                    };
                    writers.push(f, progress, summary).await?;
                }
            }
            continue;
        }
        // Removed again if anything below fails (TempFile's Drop).
        let direct = writers.direct();
        let mut out = match off_runtime(|| {
            if direct {
                dir.create_file_direct(&e.path)
            } else {
                dir.create_file(&e.path)
            }
        }) {
            Ok(tmp) => Some((tmp, (!proven(&e)).then(Hasher::new), 0u64)),
            Err(err) => {
                failed(&e.path, err, progress, summary)?;
                None
            }
        };
        for want in &e.chunks {
            let chunk = next_chunk().await;
            let Some((tmp, hasher, n)) = out.as_mut() else {
                continue; // this file failed: its other chunks are not needed
            };
            let written = chunk.and_then(|c| in_order(&e, want, c)).and_then(|c| {
                off_runtime(|| {
                    if let Some(h) = hasher.as_mut() {
                        h.update(&c);
                    }
                    tmp.file().write_all(&c)
                })
                .map_err(|err| write_err(&tmp.temp_path().display().to_string(), err))?;
                Ok(c.len() as u64)
            });
            match written {
                Ok(len) => {
                    *n += len;
                    progress.add_bytes(len);
                }
                Err(err) => {
                    off_runtime(|| drop(out.take()));
                    failed(&e.path, err, progress, summary)?;
                }
            }
        }
        let Some((tmp, hasher, n)) = out else {
            continue;
        };
        if let Err(err) = check_content(&e, n, hasher) {
            off_runtime(|| drop(tmp));
            failed(&e.path, err, progress, summary)?;
            continue;
        }
        let m = meta(&e, writers.is_root);
        if writers.sync_each {
            // Synced, given its metadata and renamed on the blocking pool,
            // while the next files are written.
            writers
                .spawn(progress, summary, move |_| {
                    vec![(e.path, tmp.commit(m, true).map(|()| n))]
                })
                .await?;
        } else {
            // No disk wait: metadata (and a rename, if any) right here.
            let r = off_runtime(|| tmp.commit(m, false)).map(|()| n);
            record(&e.path, r, progress, summary)?;
        }
    }
    Ok(())
}

/// A small file's entry (chunk list dropped) and its content, checked
/// chunk by chunk against their ids, not yet against the entry's hash.
struct SmallFile {
    entry: Entry,
    data: Vec<bytes::Bytes>,
    /// The content's SHA-256 is known to be the entry's: not hashed again.
    proven: bool,
}

/// What a job reports: each file's path and bytes written, or why not.
type JobResults = Vec<(String, Result<u64>)>;

/// Files written (or synced and committed) on the blocking pool while the
/// restore loop reads the next ones: at most `slots` jobs at once, each
/// job some small files ([`SMALL_FILE`]) or one large file's commit. Each
/// file is still hashed against the snapshot before it is committed, and
/// a job that fails leaves nothing uncommitted behind (`TempFile`'s Drop).
struct Writers {
    dir: Arc<TargetDir>,
    is_root: bool,
    /// fsync each file before its commit ([`SyncMode::File`]).
    sync_each: bool,
    slots: Arc<tokio::sync::Semaphore>,
    tasks: tokio::task::JoinSet<JobResults>,
    job: Vec<SmallFile>,
    job_bytes: u64,
}

impl Writers {
    fn new(dir: Arc<TargetDir>, is_root: bool, sync_each: bool) -> Writers {
        let slots = if sync_each {
            JOBS_SYNCED
        } else {
            crate::pipeline::reader::cores() + 1
        };
        Writers {
            dir,
            is_root,
            sync_each,
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            tasks: tokio::task::JoinSet::new(),
            job: vec![],
            job_bytes: 0,
        }
    }

    /// Files are created under their own name unless each is synced
    /// before it appears (see [`TargetDir::create_file_direct`]).
    fn direct(&self) -> bool {
        !self.sync_each
    }

    async fn push(
        &mut self,
        f: SmallFile,
        progress: &dyn Progress,
        summary: &mut RestoreSummary,
    ) -> Result<()> {
        // A job keeps to one directory where it can: writers then create
        // files in different directories (creating takes the directory's
        // lock) and each finds its directory open (TargetDir::parent).
        fn dir_of(p: &str) -> &str {
            p.rsplit_once('/').map_or("", |(d, _)| d)
        }
        if self.job.len() >= JOB_FILES_PER_DIR_CHANGE
            && self
                .job
                .last()
                .is_some_and(|last| dir_of(&last.entry.path) != dir_of(&f.entry.path))
        {
            self.dispatch(progress, summary).await?;
        }
        self.job_bytes += f.entry.size;
        self.job.push(f);
        let most = if self.sync_each {
            JOB_FILES_SYNCED
        } else {
            JOB_FILES
        };
        if self.job.len() >= most || self.job_bytes >= JOB_BYTES {
            self.dispatch(progress, summary).await?;
        }
        Ok(())
    }

    /// Hand the job being gathered to the pool.
    async fn dispatch(
        &mut self,
        progress: &dyn Progress,
        summary: &mut RestoreSummary,
    ) -> Result<()> {
        if self.job.is_empty() {
            return Ok(());
        }
        let job = std::mem::take(&mut self.job);
        self.job_bytes = 0;
        let (is_root, sync_each) = (self.is_root, self.sync_each);
        self.spawn(progress, summary, move |dir| {
            job.into_iter()
                .map(|f| write_small(dir, f, is_root, sync_each))
                .collect()
        })
        .await
    }

    /// Run `work` on the blocking pool once a slot is free, and record what
    /// the jobs that have ended meanwhile report.
    async fn spawn(
        &mut self,
        progress: &dyn Progress,
        summary: &mut RestoreSummary,
        work: impl FnOnce(&TargetDir) -> JobResults + Send + 'static,
    ) -> Result<()> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let dir = self.dir.clone();
        self.tasks.spawn_blocking(move || {
            let r = work(&dir);
            drop(permit);
            r
        });
        while let Some(done) = self.tasks.try_join_next() {
            record_job(done, progress, summary)?;
        }
        Ok(())
    }

    /// Write what is gathered, and wait for every job.
    async fn finish(
        &mut self,
        progress: &dyn Progress,
        summary: &mut RestoreSummary,
    ) -> Result<()> {
        self.dispatch(progress, summary).await?;
        while let Some(done) = self.tasks.join_next().await {
            record_job(done, progress, summary)?;
        }
        Ok(())
    }

    /// After an error: wait for the jobs in flight, whatever they report.
    async fn abandon(&mut self) {
        self.job.clear();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn record_job(
    done: std::result::Result<JobResults, tokio::task::JoinError>,
    progress: &dyn Progress,
    summary: &mut RestoreSummary,
) -> Result<()> {
    let results = done.map_err(|e| Error::io(format!("restore task failed: {e}")))?;
    for (path, r) in results {
        record(&path, r, progress, summary)?;
    }
    Ok(())
}

/// Create, write, check and commit one small file (on a writer thread):
/// under a temporary name and fsynced when `sync_each`, else under its own
/// name ([`Writers::direct`]).
fn write_small(
    dir: &TargetDir,
    f: SmallFile,
    is_root: bool,
    sync_each: bool,
) -> (String, Result<u64>) {
    let e = f.entry;
    let r = (|| {
        let mut tmp = if sync_each {
            dir.create_file(&e.path)?
        } else {
            dir.create_file_direct(&e.path)?
        };
        let mut hasher = (!f.proven).then(Hasher::new);
        let mut n = 0u64;
        for c in &f.data {
            if let Some(h) = hasher.as_mut() {
                h.update(c);
            }
            tmp.file()
                .write_all(c)
                .map_err(|err| write_err(&tmp.temp_path().display().to_string(), err))?;
            n += c.len() as u64;
        }
        check_content(&e, n, hasher)?;
        tmp.commit(meta(&e, is_root), sync_each)?;
        Ok(n)
    })();
    (e.path, r)
}

/// Owners are restored only when running as root (as tar and restic do).
fn meta(e: &Entry, is_root: bool) -> Meta {
    Meta {
        uid: e.uid,
        gid: e.gid,
        mode: e.mode,
        mtime_ns: e.mtime_ns,
        owner: is_root,
    }
}

/// Count a restored file, or list it as failed; see [`failed`].
fn record(
    path: &str,
    r: Result<u64>,
    progress: &dyn Progress,
    summary: &mut RestoreSummary,
) -> Result<()> {
    match r {
        Ok(n) => {
            summary.files += 1;
            summary.bytes += n;
            Ok(())
        }
        Err(err) => failed(path, err, progress, summary),
    }
}

/// List an entry as not restored when only that entry is affected
/// (damaged or missing data, something in the target in the way): the
/// others are still restored. Any other error stops the restore.
fn failed(
    path: &str,
    err: Error,
    progress: &dyn Progress,
    summary: &mut RestoreSummary,
) -> Result<()> {
    let reason = match err.kind() {
        ErrorKind::Integrity | ErrorKind::NotFound => FailureReason::Damaged,
        ErrorKind::AlreadyExists => FailureReason::Blocked,
        _ => return Err(err.context(path)),
    };
    // The one report of it on stderr, as it happens (the CLI's final
    // error only counts them).
    progress.warn(&format!("not restored: {path}: {err}"));
    summary.failed.push(FailedEntry {
        path: path.to_owned(),
        error: err.to_string(),
        reason,
    });
    Ok(())
}

/// Stream one entry's chunks into `out`, checking what proves it: every
/// chunk against its id (the reader), the ids against the entry's list in
/// order, the length, and the whole content's SHA-256 where the snapshot
/// has one that the chunk ids do not already prove. Hashing and writing
/// run off the runtime's threads ([`off_runtime`]).
pub(crate) async fn copy_entry(
    reader: &ChunkReader,
    e: &Entry,
    out: &mut (dyn Write + Send),
    progress: &dyn Progress,
) -> Result<u64> {
    let mut hasher = (!proven(e)).then(Hasher::new);
    let mut n = 0u64;
    let mut expected = e.chunks.iter();
    let mut chunks = reader.stream(e.chunks.clone());
    while let Some(chunk) = chunks.next().await {
        let chunk = match expected.next() {
            Some(want) => in_order(e, want, chunk?)?,
            None => return Err(Error::io("the chunk reader gave more chunks than asked")),
        };
        off_runtime(|| {
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            out.write_all(&chunk)
        })
        .map_err(|err| write_err(&e.path, err))?;
        n += chunk.len() as u64;
        progress.add_bytes(chunk.len() as u64);
    }
    if expected.next().is_some() {
        return Err(mismatch(e, n));
    }
    check_content(e, n, hasher)?;
    Ok(n)
}

/// Whether the chunks alone prove an entry's content: the reader checks
/// each chunk against its id, the restore each id against the entry's list
/// ([`in_order`]) and the length. The whole content's SHA-256 is checked
/// besides where the snapshot has one that is not just the one chunk's id
/// (entries of streams since `WholeHash::Skip` have none: docs/FORMAT.md).
pub(crate) fn proven(e: &Entry) -> bool {
    match e.sha256 {
        None => true,
        Some(h) => e.chunks.len() == 1 && e.chunks[0] == h,
    }
}

/// `c` if it is the chunk the entry lists at this place (`want`): with
/// every chunk checked against its id by the reader, this proves the
/// order.
pub(crate) fn in_order(e: &Entry, want: &Id, c: Chunk) -> Result<Chunk> {
    if c.id != *want {
        return Err(Error::integrity(format!(
            "{}: chunk {} came where the snapshot lists {}",
            e.path,
            c.id.short(),
            want.short()
        )));
    }
    Ok(c)
}

/// The restored content's length and SHA-256 (when taken) against the
/// snapshot's.
fn check_content(e: &Entry, n: u64, hasher: Option<Hasher>) -> Result<()> {
    if let (Some(want), Some(h)) = (e.sha256, hasher) {
        if want != h.finish() {
            return Err(mismatch(e, n));
        }
    }
    if n != e.size {
        return Err(mismatch(e, n));
    }
    Ok(())
}

fn mismatch(e: &Entry, n: u64) -> Error {
    Error::integrity(format!(
        "{}: restored content does not match the snapshot's checksum ({n} of {} bytes)",
        e.path, e.size
    ))
}

fn write_err(what: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Error::new(ErrorKind::Interrupted, "output closed");
    }
    let full = e.kind() == std::io::ErrorKind::StorageFull;
    let err = Error::io(format!("writing {what}: {e}"));
    if full {
        err.with_hint("the restore target is full; free space or choose another --target")
    } else {
        err
    }
}

/// The hint of a snapshot refused for unsafe entries.
const UNSAFE_HINT: &str = "nothing was restored; backups never write such entries, so the snapshot is damaged or was forged: restore another snapshot and run `usdcop-dr verify`";

/// Every entry of a snapshot checked as [`load_entries_checked`] does,
/// streaming ([`Repository::check_entries`]); `visit` sees each entry.
pub async fn check_entries(
    repo: &Repository,
    index: &crate::repository::MasterIndex,
    snapshot_id: Id,
    snap: &Snapshot,
    visit: impl FnMut(&Entry),
) -> Result<()> {
    repo.check_entries(index, snap, visit).await.map_err(|e| {
        let unsafe_entry = e.to_string().contains("unsafe entr");
        let e = e.context(format!("snapshot {}", snapshot_id.short()));
        if unsafe_entry {
            e.with_hint(UNSAFE_HINT)
        } else {
            e
        }
    })
}

/// A snapshot's entries (chunk lists expanded), every path checked; an
/// unsafe one refuses the whole snapshot, saying nothing was restored.
pub async fn load_entries_checked(
    repo: &Repository,
    index: &crate::repository::MasterIndex,
    snapshot_id: Id,
    snap: &Snapshot,
) -> Result<Vec<Entry>> {
    repo.load_entries(index, snap).await.map_err(|e| {
        let unsafe_entry = e.to_string().contains("unsafe entr");
        let e = e.context(format!("snapshot {}", snapshot_id.short()));
        if unsafe_entry {
            e.with_hint(UNSAFE_HINT)
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::EntryType;

    fn entry(sha256: Option<Id>, chunks: Vec<Id>) -> Entry {
        Entry {
            sha256,
            chunks,
            ..Entry::bare("db.dump", EntryType::File)
        }
    }

    #[test]
    fn the_whole_hash_is_checked_only_where_the_chunk_ids_do_not_prove_it() {
        let (a, b) = (Id::hash(b"a"), Id::hash(b"b"));
        // A stream's entry without a whole hash: its chunk ids prove it.
        assert!(proven(&entry(None, vec![a, b])));
        // One chunk whose id is the whole hash.
        assert!(proven(&entry(Some(a), vec![a])));
        // A whole hash the chunk ids do not give: checked.
        assert!(!proven(&entry(Some(Id::hash(b"ab")), vec![a, b])));
        assert!(!proven(&entry(Some(b), vec![a])));
    }

    #[test]
    fn a_chunk_out_of_the_entry_order_is_an_integrity_error() {
        let (a, b) = (Id::hash(b"a"), Id::hash(b"b"));
        let e = entry(None, vec![a, b]);
        let chunk = |id: Id, data: &'static [u8]| Chunk {
            id,
            data: bytes::Bytes::from_static(data),
        };
        assert_eq!(&*in_order(&e, &a, chunk(a, b"a")).unwrap(), b"a");
        let err = in_order(&e, &a, chunk(b, b"b")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity);
        assert!(err.to_string().contains(&b.short()), "{err}");
    }
}
