//! Files and directories: path, mode, owner, mtime, symlinks.
//!
//! Entry paths are the absolute source paths without the leading `/`, so
//! `/srv/trading/.env` restores to `<target>/srv/trading/.env`. A regular
//! file whose size, mtime, ctime and inode equal the parent snapshot's is
//! not read again: its chunk list is reused (if the chunks are still stored).

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

/// Where the entries of the run go, in walk order (a channel into the
/// list tree builder, or a `Vec` in tests): never all held at once.
pub type EntrySink<'a> = &'a mut dyn FnMut(Entry) -> Result<()>;

/// The parent snapshot's entries, looked up in walk order: a merge-join
/// with a cursor over the parent's list (streamed from its tree), so the
/// parent is never held whole. Lookups must come in increasing
/// [`walk_order`]; one out of order just finds nothing (the file is read
/// again), which costs time, never correctness.
pub trait ParentLookup {
    fn find(&mut self, path: &str) -> Result<Option<Entry>>;
}

/// No parent snapshot.
pub struct NoParent;
impl ParentLookup for NoParent {
    fn find(&mut self, _: &str) -> Result<Option<Entry>> {
        Ok(None)
    }
}

/// The order of the directory walk: paths compared component by component
/// (a directory's children, sorted by name, come right after it).
pub fn walk_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// A merge cursor over entries given in walk order by `next` (the
/// merge-join of [`super::merge::Merge`], keyed by [`walk_order`]).
pub struct MergeCursor<F: FnMut() -> Result<Option<Entry>>> {
    next: F,
    merge: super::merge::Merge<Entry>,
}

impl<F: FnMut() -> Result<Option<Entry>>> MergeCursor<F> {
    pub fn new(next: F) -> Self {
        MergeCursor {
            next,
            merge: super::merge::Merge::new(),
        }
    }
}

impl<F: FnMut() -> Result<Option<Entry>>> ParentLookup for MergeCursor<F> {
    fn find(&mut self, path: &str) -> Result<Option<Entry>> {
        self.merge
            .find(|cur| walk_order(&cur.path, path), &mut self.next)
    }
}

pub struct FilesSource<'a> {
    writer: &'a Writer,
    parent: &'a mut dyn ParentLookup,
    progress: &'a dyn Progress,
    sink: EntrySink<'a>,
    pub totals: FilesTotals,
}

impl<'a> FilesSource<'a> {
    pub fn new(
        writer: &'a Writer,
        parent: &'a mut dyn ParentLookup,
        progress: &'a dyn Progress,
        sink: EntrySink<'a>,
    ) -> Self {
        FilesSource {
            writer,
            parent,
            progress,
            sink,
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
            (self.sink)(base_entry(rel.clone(), EntryType::Dir, &meta))?;
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
            (self.sink)(e)?;
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
        let old = self.parent.find(&entry.path)?;
        if let Some(old) = old.filter(|o| o.kind == EntryType::File) {
            let same = old.size == entry.size
                && old.mtime_ns == entry.mtime_ns
                && old.ctime_ns == entry.ctime_ns
                && old.inode == entry.inode
                && old.sha256.is_some()
                // A chunk list kept out of line (a file of > 1,024 chunks)
                // is not expanded by the streaming lookup: read it again.
                && old.chunk_tree.is_none()
                && old.chunks.iter().all(|c| self.writer.has_chunk(c));
            if same {
                entry.sha256 = old.sha256;
                entry.chunks = old.chunks;
                self.totals.files += 1;
                self.totals.files_unchanged += 1;
                self.totals.bytes += entry.size;
                self.progress.add_bytes(entry.size);
                (self.sink)(entry)?;
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
        entry.sha256 = stored.sha256;
        entry.chunks = stored.chunks;
        self.totals.files += 1;
        self.totals.bytes += entry.size;
        (self.sink)(entry)?;
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

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry::bare(path, EntryType::File)
    }

    /// The walk visits a directory's children right after it, sorted by
    /// name: `a/b/c` before `a.x` although `.` sorts before `/` bytewise.
    #[test]
    fn walk_order_is_the_directory_walk_order() {
        let walk = ["a", "a/b", "a/b/c", "a/z", "a.x", "ab", "b/c"];
        for w in walk.windows(2) {
            assert_eq!(walk_order(w[0], w[1]), std::cmp::Ordering::Less, "{w:?}");
        }
    }

    /// Lookups in walk order find every parent entry that is still there,
    /// skipping removed ones and not finding new ones; a lookup out of
    /// order finds nothing (the file is read again), never a wrong entry.
    #[test]
    fn merge_cursor_finds_parent_entries_in_walk_order() {
        let parent = ["a", "a/b", "a/b/c", "a/gone", "a/z", "a.x", "b/c"];
        let mut it = parent.iter().map(|p| entry(p));
        let mut cursor = MergeCursor::new(|| Ok(it.next()));
        for (path, found) in [
            ("a/b/c", true),
            ("a/new", false),
            ("a/z", true),
            ("a.x", true),
            ("a/b", false), // out of order: passed already
            ("b/c", true),
            ("c", false),
        ] {
            let got = cursor.find(path).unwrap();
            assert_eq!(got.is_some(), found, "{path}");
            if let Some(e) = got {
                assert_eq!(e.path, path);
            }
        }
    }
}
