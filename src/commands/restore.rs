//! `restore`: write a snapshot's entries back, every byte checked.
//!
//! Each file is written to a temporary name beside its destination, its
//! whole-content SHA-256 compared with the snapshot's, and only then
//! renamed into place: a damaged chunk never leaves wrong bytes under the
//! real name. A file that cannot be restored is reported and the others
//! still are. Symlinks are created last, so a symlink in a snapshot can
//! never redirect where a later file of the same snapshot is written.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{Entry, EntryType, Snapshot};
use crate::format::{Hasher, Id};
use crate::pipeline::ChunkReader;
use crate::progress::{Collector, Progress, Warning};
use crate::repository::Repository;

pub enum RestoreTarget {
    Dir(PathBuf),
    /// Stream one file entry to this writer (stdout).
    Stream(Box<dyn Write + Send>),
}

pub struct RestoreOptions {
    pub target: RestoreTarget,
    /// Only entries at or under these paths (relative, as in the snapshot).
    pub include: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedEntry {
    pub path: String,
    pub error: String,
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
    let index = repo.load_index().await?;
    let reader = ChunkReader::new(repo.clone(), index);
    let selected: Vec<&Entry> = snap
        .entries
        .iter()
        .filter(|e| included(&e.path, &opts.include))
        .collect();
    if selected.is_empty() {
        return Err(Error::not_found(format!(
            "no entry of snapshot {} matches {:?}",
            snapshot_id.short(),
            opts.include
        )));
    }
    progress.set_total(selected.iter().map(|e| e.size).sum());
    let mut summary = RestoreSummary {
        snapshot_id,
        files: 0,
        dirs: 0,
        symlinks: 0,
        bytes: 0,
        duration_s: 0.0,
        failed: vec![],
        warnings: vec![],
    };
    match opts.target {
        RestoreTarget::Stream(mut out) => {
            let files: Vec<&&Entry> = selected
                .iter()
                .filter(|e| matches!(e.kind, EntryType::File | EntryType::Object))
                .collect();
            if files.len() != 1 {
                return Err(Error::usage(format!(
                    "--stdout needs exactly one file, snapshot {} has {} here",
                    snapshot_id.short(),
                    files.len()
                ))
                .with_hint("pick one with --path, or restore with --target DIR"));
            }
            let entry = files[0];
            let written = copy_entry(&reader, entry, &mut out, progress.as_ref()).await?;
            out.flush().map_err(|e| write_err("stdout", e))?;
            summary.files = 1;
            summary.bytes = written;
        }
        RestoreTarget::Dir(target) => {
            restore_tree(&reader, &selected, &target, progress, &mut summary).await?;
        }
    }
    summary.duration_s = clock.elapsed().as_secs_f64();
    summary.warnings = collector.take();
    Ok(summary)
}

fn included(path: &str, include: &[String]) -> bool {
    include.is_empty()
        || include.iter().any(|i| {
            let i = i.trim_matches('/');
            path == i || path.starts_with(&format!("{i}/"))
        })
}

/// Files up to this size are restored [`SMALL_FILES_AT_ONCE`] at a time
/// (a bucket snapshot holds thousands of them, and each costs a request's
/// latency plus an fsync); larger ones one after the other, each with its
/// own parallel chunk reads, which keeps memory bounded.
const SMALL_FILE: u64 = 1 << 20;
const SMALL_FILES_AT_ONCE: usize = 16;

async fn restore_tree(
    reader: &ChunkReader,
    entries: &[&Entry],
    target: &Path,
    progress: Arc<dyn Progress>,
    summary: &mut RestoreSummary,
) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| write_err(&target.display().to_string(), e))?;
    let is_root = unsafe { libc::geteuid() } == 0;
    for e in entries.iter().filter(|e| e.kind == EntryType::Dir) {
        let p = target.join(&e.path);
        std::fs::create_dir_all(&p).map_err(|err| write_err(&p.display().to_string(), err))?;
        summary.dirs += 1;
    }
    // Bucket objects restore into a directory as plain files.
    let (small, large): (Vec<&Entry>, Vec<&Entry>) = entries
        .iter()
        .copied()
        .filter(|e| matches!(e.kind, EntryType::File | EntryType::Object))
        .partition(|e| e.size <= SMALL_FILE);
    let mut done = futures::stream::iter(small)
        .map(|e| {
            let (reader, e, target) = (reader.clone(), e.clone(), target.to_path_buf());
            let progress = progress.clone();
            tokio::spawn(async move {
                progress.set_item(&e.path);
                let r = restore_file(&reader, &e, &target, is_root, progress.as_ref()).await;
                (e.path, r)
            })
        })
        .buffer_unordered(SMALL_FILES_AT_ONCE);
    while let Some(joined) = done.next().await {
        let (path, r) = joined.map_err(|e| Error::io(format!("restore task failed: {e}")))?;
        record(&path, r, progress.as_ref(), summary)?;
    }
    for e in large {
        progress.set_item(&e.path);
        let r = restore_file(reader, e, target, is_root, progress.as_ref()).await;
        record(&e.path, r, progress.as_ref(), summary)?;
    }
    summary.failed.sort_by(|a, b| a.path.cmp(&b.path));
    for e in entries.iter().filter(|e| e.kind == EntryType::Symlink) {
        let p = target.join(&e.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|err| write_err(&parent.display().to_string(), err))?;
        }
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(e.target.as_deref().unwrap_or(""), &p)
            .map_err(|err| write_err(&p.display().to_string(), err))?;
        set_owner(&p, e, is_root, true);
        let t = filetime::FileTime::from_unix_time(
            e.mtime_ns.div_euclid(1_000_000_000),
            e.mtime_ns.rem_euclid(1_000_000_000) as u32,
        );
        let _ = filetime::set_symlink_file_times(&p, t, t);
        summary.symlinks += 1;
    }
    // Directory metadata last, deepest first, so writing children does not
    // bump the restored mtimes.
    for e in entries.iter().rev().filter(|e| e.kind == EntryType::Dir) {
        let p = target.join(&e.path);
        set_metadata(&p, e, is_root).map_err(|err| write_err(&p.display().to_string(), err))?;
    }
    Ok(())
}

/// Count a restored file, or list it as failed (damaged or missing data:
/// the other files are still restored); any other error stops the restore.
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
        Err(err) if err.kind() == ErrorKind::Integrity || err.kind() == ErrorKind::NotFound => {
            progress.warn(&format!("{path}: {err}"));
            summary.failed.push(FailedEntry {
                path: path.to_owned(),
                error: err.to_string(),
            });
            Ok(())
        }
        Err(err) => Err(err.context(path)),
    }
}

async fn restore_file(
    reader: &ChunkReader,
    e: &Entry,
    target: &Path,
    is_root: bool,
    progress: &dyn Progress,
) -> Result<u64> {
    let dest = target.join(&e.path);
    let dir = dest.parent().expect("entry path has a parent under target");
    std::fs::create_dir_all(dir).map_err(|err| write_err(&dir.display().to_string(), err))?;
    let name = dest
        .file_name()
        .expect("entry has a file name")
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.usdcop-dr-{}",
        hex::encode(crate::crypto::random_bytes::<4>())
    ));
    let result = async {
        let file = std::fs::File::create(&tmp)
            .map_err(|err| write_err(&tmp.display().to_string(), err))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let n = copy_entry(reader, e, &mut out, progress).await?;
        let file = out
            .into_inner()
            .map_err(|err| write_err(&tmp.display().to_string(), err.into_error()))?;
        file.sync_all()
            .map_err(|err| write_err(&tmp.display().to_string(), err))?;
        set_metadata(&tmp, e, is_root).map_err(|err| write_err(&tmp.display().to_string(), err))?;
        std::fs::rename(&tmp, &dest).map_err(|err| write_err(&dest.display().to_string(), err))?;
        Ok(n)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Stream one entry's chunks into `out`, checking the whole-content hash.
pub(crate) async fn copy_entry(
    reader: &ChunkReader,
    e: &Entry,
    out: &mut (dyn Write + Send),
    progress: &dyn Progress,
) -> Result<u64> {
    let mut hasher = Hasher::new();
    let mut n = 0u64;
    let mut chunks = reader.stream(e.chunks.clone());
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        out.write_all(&chunk)
            .map_err(|err| write_err(&e.path, err))?;
        n += chunk.len() as u64;
        progress.add_bytes(chunk.len() as u64);
    }
    if n != e.size || e.sha256.is_some_and(|h| h != hasher.finish()) {
        return Err(Error::integrity(format!(
            "{}: restored content does not match the snapshot's checksum ({n} of {} bytes)",
            e.path, e.size
        )));
    }
    Ok(n)
}

fn set_metadata(p: &Path, e: &Entry, is_root: bool) -> std::io::Result<()> {
    set_owner(p, e, is_root, false);
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(e.mode & 0o7777))?;
    let t = filetime::FileTime::from_unix_time(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_times(p, t, t)
}

/// Owners are restored only when running as root (as tar and restic do).
fn set_owner(p: &Path, e: &Entry, is_root: bool, symlink: bool) {
    if is_root {
        let _ = if symlink {
            std::os::unix::fs::lchown(p, Some(e.uid), Some(e.gid))
        } else {
            std::os::unix::fs::chown(p, Some(e.uid), Some(e.gid))
        };
    }
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
