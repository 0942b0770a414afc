//! Files and directories: path, mode, owner, mtime, symlinks.
//!
//! Entry paths are the absolute source paths without the leading `/`, so
//! `/srv/trading/.env` restores to `<target>/srv/trading/.env`. A regular
//! file whose size, mtime, ctime and inode equal the parent snapshot's is
//! not read again: its chunk list is reused (if the chunks are still stored).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{Entry, EntryType};
use crate::pipeline::Writer;
use crate::progress::{Progress, Warning, WarningKind};

#[derive(Debug, Default, Clone, Copy)]
pub struct FilesTotals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub files_unchanged: u64,
}

pub struct FilesSource<'a> {
    writer: &'a Writer,
    parent: HashMap<&'a str, &'a Entry>,
    progress: &'a dyn Progress,
    pub entries: Vec<Entry>,
    pub totals: FilesTotals,
}

impl<'a> FilesSource<'a> {
    pub fn new(
        writer: &'a Writer,
        parent: Option<&'a [Entry]>,
        progress: &'a dyn Progress,
    ) -> Self {
        let parent = parent
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e.kind == EntryType::File)
                    .map(|e| (e.path.as_str(), e))
                    .collect()
            })
            .unwrap_or_default();
        FilesSource {
            writer,
            parent,
            progress,
            entries: Vec::new(),
            totals: FilesTotals::default(),
        }
    }

    /// Back up each root path (file, directory or symlink) recursively.
    pub fn add_roots(&mut self, roots: &[PathBuf]) -> Result<()> {
        let mut abs_roots = roots
            .iter()
            .map(|r| absolute(r))
            .collect::<Result<Vec<_>>>()?;
        abs_roots.sort();
        let mut taken: Vec<PathBuf> = Vec::new();
        for abs in abs_roots {
            // A root inside another root is already covered by it.
            if taken.iter().any(|t| abs.starts_with(t)) {
                continue;
            }
            taken.push(abs.clone());
            let rel = entry_path(&abs)?;
            let meta = fs::symlink_metadata(&abs).map_err(|e| {
                Error::new(
                    ErrorKind::Source,
                    format!("cannot back up {}: {e}", abs.display()),
                )
            })?;
            self.add(&abs, rel, meta)?;
        }
        Ok(())
    }

    fn add(&mut self, path: &Path, rel: String, meta: fs::Metadata) -> Result<()> {
        let ft = meta.file_type();
        if ft.is_dir() {
            self.entries
                .push(base_entry(rel.clone(), EntryType::Dir, &meta));
            self.totals.dirs += 1;
            let mut children: Vec<_> = fs::read_dir(path)
                .map_err(|e| source_err(path, e))?
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| source_err(path, e))?;
            children.sort_by_key(|c| c.file_name());
            for child in children {
                let name = child.file_name();
                let Some(name) = name.to_str() else {
                    // Snapshots hold UTF-8 paths only: this file is not
                    // backed up, and the run fails (WarningKind::is_failure).
                    self.progress.warning(&Warning::new(
                        WarningKind::NotUtf8Name,
                        child.path().to_string_lossy(),
                        "skipped: the name is not UTF-8 (snapshots store UTF-8 paths only); rename it to back it up",
                    ));
                    continue;
                };
                match fs::symlink_metadata(child.path()) {
                    Ok(m) => self.add(&child.path(), format!("{rel}/{name}"), m)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.vanished(&child.path())
                    }
                    Err(e) => return Err(source_err(&child.path(), e)),
                }
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| source_err(path, e))?;
            let mut e = base_entry(rel, EntryType::Symlink, &meta);
            e.target = Some(target.to_string_lossy().into_owned());
            self.entries.push(e);
            self.totals.symlinks += 1;
        } else if ft.is_file() {
            self.add_file(path, rel, &meta)?;
        } else {
            let what = if ft.is_socket() {
                "a socket"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_block_device() || ft.is_char_device() {
                "a device"
            } else {
                "not a regular file, directory or symlink"
            };
            self.progress.warning(&Warning::new(
                WarningKind::SpecialFile,
                path.to_string_lossy(),
                format!("skipped: {what} has no content to back up"),
            ));
        }
        Ok(())
    }

    fn vanished(&self, path: &Path) {
        self.progress.warning(&Warning::new(
            WarningKind::Vanished,
            path.to_string_lossy(),
            "skipped: deleted during the backup",
        ));
    }

    fn add_file(&mut self, path: &Path, rel: String, meta: &fs::Metadata) -> Result<()> {
        self.progress.set_item(&rel);
        let mut entry = base_entry(rel, EntryType::File, meta);
        if let Some(old) = self.parent.get(entry.path.as_str()) {
            let same = old.size == entry.size
                && old.mtime_ns == entry.mtime_ns
                && old.ctime_ns == entry.ctime_ns
                && old.inode == entry.inode
                && old.sha256.is_some()
                && old.chunks.iter().all(|c| self.writer.has_chunk(c));
            if same {
                entry.sha256 = old.sha256;
                entry.chunks = old.chunks.clone();
                self.totals.files += 1;
                self.totals.files_unchanged += 1;
                self.totals.bytes += entry.size;
                self.progress.add_bytes(entry.size);
                self.entries.push(entry);
                return Ok(());
            }
        }
        let mut file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.vanished(path);
                return Ok(());
            }
            Err(e) => return Err(source_err(path, e)),
        };
        let stored = self
            .writer
            .store_stream(&mut file, self.progress)
            .map_err(|e| e.context(path.display()))?;
        // Written to while we read it (a log, a live database file): the
        // stored bytes are what was read, but may mix old and new content.
        if let Ok(after) = file.metadata() {
            let before_ns = (meta.mtime(), meta.mtime_nsec());
            if stored.size != meta.len()
                || after.len() != stored.size
                || (after.mtime(), after.mtime_nsec()) != before_ns
            {
                self.progress.warning(&Warning::new(
                    WarningKind::Changed,
                    path.to_string_lossy(),
                    format!(
                        "changed while being read ({} bytes when listed, {} read, {} now): \
                         the stored copy may mix old and new content",
                        meta.len(),
                        stored.size,
                        after.len()
                    ),
                ));
            }
        }
        entry.size = stored.size;
        entry.sha256 = Some(stored.sha256);
        entry.chunks = stored.chunks;
        self.totals.files += 1;
        self.totals.bytes += entry.size;
        self.entries.push(entry);
        Ok(())
    }
}

fn base_entry(path: String, kind: EntryType, m: &fs::Metadata) -> Entry {
    Entry {
        path,
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        inode: m.ino(),
        size: if kind == EntryType::File { m.len() } else { 0 },
        sha256: None,
        chunks: Vec::new(),
        target: None,
        chunk_tree: None,
        object: None,
    }
}

fn source_err(path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Source,
        format!("cannot read {}: {e}", path.display()),
    )
    .with_hint("fix the permissions or leave the path out; no snapshot was written")
}

/// Absolute, lexically normalised (no `.`/`..`), symlinks not resolved.
fn absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p)
        .map_err(|e| Error::usage(format!("bad path {}: {e}", p.display())))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

fn entry_path(abs: &Path) -> Result<String> {
    let s = abs
        .to_str()
        .ok_or_else(|| Error::usage(format!("path {} is not UTF-8", abs.display())))?;
    let rel = s.trim_start_matches('/').to_owned();
    if rel.is_empty() {
        return Err(Error::usage(
            "backing up / as a whole is not supported; name the directories",
        ));
    }
    Ok(rel)
}
