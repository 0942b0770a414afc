//! Local-directory backend. Object `a/b` lives at `<root>/a/b`.
//!
//! Every write goes through [`durable_write`]-style steps: temp file in
//! `<root>/tmp/`, fsync, then hard-link (create) or rename (overwrite) into
//! place, then fsync the directory. A crash leaves at most a stray temp
//! file, never a partial object. `tmp/` is never listed.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{Backend, ListPage, ObjectMeta, Payload, PutMode};
use crate::error::{Error, ErrorKind, Result};

const TMP: &str = "tmp";
const PAGE: usize = 1000;

#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    /// The sorted entries of the last few directories a paged listing
    /// read, so that its next pages do not read them again (cleared when a
    /// listing starts: a new listing always sees the directory as it is).
    dirs: Arc<Mutex<DirsRead>>,
}

/// A directory entry: sort key (full name, `/` after a directory's),
/// file name, is a directory.
type DirEnt = (String, std::ffi::OsString, bool);
/// Directories read by a listing, with their sorted entries.
type DirsRead = Vec<(PathBuf, Arc<Vec<DirEnt>>)>;
/// Directories kept by [`LocalBackend::dirs`] (root, `data/`, `data/xx/`, spare).
const DIRS_KEPT: usize = 4;

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        if root.as_os_str().is_empty() {
            return Err(Error::usage("empty repository path"));
        }
        Ok(LocalBackend {
            root,
            dirs: Default::default(),
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty()
            || name.starts_with('/')
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::usage(format!("invalid object name {name:?}")));
        }
        Ok(self.root.join(name))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP)
    }

    fn put_blocking(&self, name: &str, payload: Payload, mode: PutMode) -> Result<()> {
        let dest = self.path(name)?;
        let parent = dest.parent().expect("object path has a parent");
        fs::create_dir_all(parent).map_err(|e| io_err(e, name))?;
        let tmp_dir = self.tmp_dir();
        fs::create_dir_all(&tmp_dir).map_err(|e| io_err(e, "tmp"))?;
        let tmp = match payload {
            Payload::Bytes(b) => {
                write_temp(&tmp_dir, |f| f.write_all(&b)).map_err(|e| io_err(e, name))?
            }
            Payload::File { path, .. } => {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_err(e, name))?;
                if path.parent() == Some(tmp_dir.as_path()) {
                    path
                } else {
                    let mut src = File::open(&path).map_err(|e| io_err(e, name))?;
                    let t = write_temp(&tmp_dir, |f| std::io::copy(&mut src, f).map(|_| ()))
                        .map_err(|e| io_err(e, name))?;
                    let _ = fs::remove_file(&path);
                    t
                }
            }
        };
        let result = match mode {
            PutMode::Overwrite => fs::rename(&tmp, &dest),
            PutMode::Create => fs::hard_link(&tmp, &dest).and_then(|_| fs::remove_file(&tmp)),
        };
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("object {name} already exists"),
                ));
            }
            return Err(io_err(e, name));
        }
        sync_dir(parent).map_err(|e| io_err(e, name))
    }

    /// One page: a walk in name order that skips every directory whose
    /// names all sort at or before `token` (or outside `prefix`) and stops
    /// after `PAGE + 1` names. A page costs its own names plus the entries
    /// of the directories on the way to `token` (data/xx/ holds 1/256 of
    /// the packs), so a whole listing is linear in the number of objects,
    /// where walking everything for each page was quadratic.
    fn list_blocking(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let base = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        if token.is_none() {
            self.dirs.lock().unwrap().clear();
        }
        let mut walk = SortedWalk {
            dirs: &self.dirs,
            prefix,
            after: token.as_deref(),
            skip_tmp: dir_part.is_empty(),
            out: Vec::with_capacity(PAGE + 1),
            limit: PAGE + 1,
        };
        walk.dir(&base, dir_part).map_err(|e| io_err(e, prefix))?;
        let mut names = walk.out;
        let more = names.len() > PAGE;
        names.truncate(PAGE);
        let next = if more {
            names.last().map(|(n, _, _)| n.clone())
        } else {
            None
        };
        Ok(ListPage {
            objects: names
                .into_iter()
                .map(|(name, size, last_modified)| ObjectMeta {
                    name,
                    size,
                    last_modified,
                })
                .collect(),
            next,
        })
    }
}

/// Name, size and modification time (the filesystem's clock) of each file.
type Listed = (String, u64, Option<DateTime<Utc>>);

/// A depth-first walk yielding file names in byte order of the full name.
struct SortedWalk<'a> {
    dirs: &'a Mutex<DirsRead>,
    prefix: &'a str,
    /// Only names after this one (the previous page's last).
    after: Option<&'a str>,
    /// Leave out the root's `tmp/`.
    skip_tmp: bool,
    out: Vec<Listed>,
    limit: usize,
}

impl SortedWalk<'_> {
    /// `dir`'s entries, sorted: from the listing's earlier pages if it
    /// read them, else read now.
    fn entries(&mut self, dir: &Path, rel: &str) -> std::io::Result<Arc<Vec<DirEnt>>> {
        if self.after.is_some() {
            if let Some((_, e)) = self.dirs.lock().unwrap().iter().find(|(d, _)| d == dir) {
                return Ok(e.clone());
            }
        }
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
            Err(e) => return Err(e),
        };
        // Sort key: the full name, with a `/` after a directory's, so that
        // `a.x` (0x2E) comes before everything in `a/` (0x2F) as in a
        // sorted list of full names.
        let mut entries = vec![];
        for ent in rd {
            let ent = ent?;
            let file_name = ent.file_name();
            let name = file_name.to_string_lossy();
            let mut key = if rel.is_empty() {
                name.into_owned()
            } else {
                format!("{rel}/{name}")
            };
            let ft = ent.file_type()?;
            if ft.is_dir() {
                key.push('/');
            } else if !ft.is_file() {
                continue;
            }
            entries.push((key, file_name, ft.is_dir()));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let entries = Arc::new(entries);
        let mut dirs = self.dirs.lock().unwrap();
        dirs.retain(|(d, _)| d != dir);
        if dirs.len() >= DIRS_KEPT {
            dirs.remove(0);
        }
        dirs.push((dir.to_owned(), entries.clone()));
        Ok(entries)
    }

    fn dir(&mut self, dir: &Path, rel: &str) -> std::io::Result<()> {
        let entries = self.entries(dir, rel)?;
        // Start after `after`, or at the directory `after` is inside (the
        // entry just before: no sibling sorts between `a/` and `a/…`).
        let mut start = 0;
        if let Some(a) = self.after {
            start = entries.partition_point(|e| e.0.as_str() <= a);
            if start > 0 && entries[start - 1].2 && a.starts_with(entries[start - 1].0.as_str()) {
                start -= 1;
            }
        }
        for (key, name, is_dir) in &entries[start..] {
            if self.out.len() >= self.limit {
                break;
            }
            if *is_dir {
                let dir_key = key.strip_suffix('/').unwrap_or(key);
                // Every name below starts with `key`: skip the directory if
                // all of them sort at or before `after`, or none can match.
                let all_before = self
                    .after
                    .is_some_and(|a| key.as_str() < a && !a.starts_with(key.as_str()));
                let outside =
                    !(key.starts_with(self.prefix) || self.prefix.starts_with(key.as_str()));
                if all_before || outside || (self.skip_tmp && key == "tmp/") {
                    continue;
                }
                self.dir(&dir.join(name), dir_key)?;
            } else {
                if self.after.is_some_and(|a| key.as_str() <= a) || !key.starts_with(self.prefix) {
                    continue;
                }
                let (len, modified) = match fs::symlink_metadata(dir.join(name)) {
                    Ok(m) => (m.len(), mtime(&m)),
                    // Deleted since the directory was read.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                self.out.push((key.clone(), len, modified));
            }
        }
        Ok(())
    }
}

fn mtime(m: &fs::Metadata) -> Option<DateTime<Utc>> {
    m.modified().ok().map(DateTime::<Utc>::from)
}

/// Write a new temp file in `dir` with `fill`, fsync it, return its path.
fn write_temp(
    dir: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
    let path = dir.join(format!(
        "{}.tmp",
        hex::encode(crate::crypto::random_bytes::<12>())
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        fill(&mut f)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_err(e: std::io::Error, name: &str) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::not_found(format!("object {name} not found")),
        std::io::ErrorKind::StorageFull => {
            Error::io(format!("writing {name}: no space left on device"))
                .with_hint("free disk space and run the backup again")
        }
        _ => Error::io(format!("{name}: {e}")),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io(format!("I/O task failed: {e}")))?
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, name: &str, payload: Payload, mode: PutMode) -> Result<()> {
        let this = self.clone();
        let name = name.to_owned();
        blocking(move || this.put_blocking(&name, payload, mode)).await
    }

    async fn get(&self, name: &str) -> Result<Bytes> {
        let path = self.path(name)?;
        let name = name.to_owned();
        blocking(move || {
            fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| io_err(e, &name))
        })
        .await
    }

    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Bytes> {
        let path = self.path(name)?;
        let name = name.to_owned();
        blocking(move || {
            let mut f = File::open(&path).map_err(|e| io_err(e, &name))?;
            let size = f.metadata().map_err(|e| io_err(e, &name))?.len();
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(Error::integrity(format!(
                    "object {name} is {size} bytes, cannot read {len} bytes at {offset}"
                )));
            }
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| io_err(e, &name))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf).map_err(|e| io_err(e, &name))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        let path = self.path(name)?;
        let name = name.to_owned();
        blocking(move || {
            let m = fs::metadata(&path).map_err(|e| io_err(e, &name))?;
            if !m.is_file() {
                return Err(Error::not_found(format!("object {name} not found")));
            }
            Ok(ObjectMeta {
                name,
                size: m.len(),
                last_modified: mtime(&m),
            })
        })
        .await
    }

    async fn list_page(&self, prefix: &str, token: Option<String>) -> Result<ListPage> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        blocking(move || this.list_blocking(&prefix, token)).await
    }

    async fn delete_many(&self, names: &[String]) -> Result<()> {
        let paths = names
            .iter()
            .map(|n| self.path(n).map(|p| (n.clone(), p)))
            .collect::<Result<Vec<_>>>()?;
        blocking(move || {
            for (name, p) in paths {
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(e, &name)),
                }
            }
            Ok(())
        })
        .await
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        Some(self.tmp_dir())
    }

    /// Temp files in `tmp/` (this repository's own) last written before
    /// `cutoff`: a killed writer's half-written objects and spooled packs.
    async fn abort_unfinished_writes(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let dir = self.tmp_dir();
        blocking(move || {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io_err(e, "tmp")),
            };
            let mut n = 0;
            for ent in rd {
                let ent = ent.map_err(|e| io_err(e, "tmp"))?;
                // A file written at or after the cut-off may be a writer's
                // that started after recovery looked at the locks.
                let written = match ent.metadata().and_then(|m| m.modified()) {
                    Ok(t) => DateTime::<Utc>::from(t),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(e, "tmp")),
                };
                if written >= cutoff {
                    continue;
                }
                match fs::remove_file(ent.path()) {
                    Ok(()) => n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(e, "tmp")),
                }
            }
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paged listings return every name once, in byte order of the full
    /// name (a file `a.x` before the directory `a/`'s names), whatever the
    /// prefix, and leave out the root's `tmp/`.
    #[test]
    fn pages_are_sorted_complete_and_resume_after_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path()).unwrap();
        let mut all = vec![];
        let mut add = |name: String, size: usize| {
            let p = dir.path().join(&name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, vec![0u8; size]).unwrap();
            all.push((name, size as u64));
        };
        for i in 0..2500 {
            add(format!("data/{:02x}/{i:06}", i % 7), i % 5);
        }
        for n in [
            "d/a.x", "d/a/b", "d/a/c/d", "d/a-", "d/a0", "d/ab", "data.x", "z",
        ] {
            add(n.to_owned(), 1);
        }
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp/x.tmp"), b"t").unwrap();
        all.sort();
        let list = |prefix: &str| {
            let mut got = vec![];
            let mut token = None;
            let mut pages = 0;
            loop {
                let page = b.list_blocking(prefix, token.take()).unwrap();
                pages += 1;
                assert!(page.objects.len() <= PAGE);
                got.extend(page.objects.into_iter().map(|o| (o.name, o.size)));
                match page.next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            (got, pages)
        };
        for prefix in [
            "", "data/", "data/0", "data/03/", "d/a", "d/a/", "data", "nothing/",
        ] {
            let want: Vec<_> = all
                .iter()
                .filter(|n| n.0.starts_with(prefix))
                .cloned()
                .collect();
            let (got, pages) = list(prefix);
            assert_eq!(got, want, "prefix {prefix:?}");
            assert_eq!(pages, want.len().max(1).div_ceil(PAGE), "prefix {prefix:?}");
        }
    }

    /// 1 M objects in `data/xx/` (256 directories), listed in full: the
    /// figure for docs/BENCHMARKS.md. `cargo test --release --lib
    /// local_list_million -- --ignored --nocapture` (USDCOP_DR_LIST_OBJECTS
    /// sets the count).
    #[test]
    #[ignore]
    fn local_list_million() {
        let n: usize = std::env::var("USDCOP_DR_LIST_OBJECTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let dir = tempfile::tempdir().unwrap();
        for d in 0..256 {
            fs::create_dir_all(dir.path().join(format!("data/{d:02x}"))).unwrap();
        }
        let t = std::time::Instant::now();
        for i in 0..n {
            let id = crate::format::Id::hash(&i.to_le_bytes()).to_hex();
            File::create(dir.path().join(format!("data/{}/{id}", &id[..2]))).unwrap();
        }
        eprintln!("created {n} files in {:.1?}", t.elapsed());
        let b = LocalBackend::new(dir.path()).unwrap();
        let t = std::time::Instant::now();
        let (mut count, mut pages, mut token) = (0, 0, None);
        loop {
            let page = b.list_blocking("data/", token.take()).unwrap();
            count += page.objects.len();
            pages += 1;
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        eprintln!(
            "listed {count} objects in {pages} pages in {:.2?}",
            t.elapsed()
        );
        assert_eq!(count, n);
    }
}
