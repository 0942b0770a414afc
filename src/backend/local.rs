//! Local-directory backend. Object `a/b` lives at `<root>/a/b`.
//!
//! Every write goes through [`durable_write`]-style steps: temp file in
//! `<root>/tmp/`, fsync, then hard-link (create) or rename (overwrite) into
//! place, then fsync the directory. A crash leaves at most a stray temp
//! file, never a partial object. `tmp/` is never listed.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        if root.as_os_str().is_empty() {
            return Err(Error::usage("empty repository path"));
        }
        Ok(LocalBackend { root })
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
        let mut names = Vec::new();
        walk(&base, dir_part, &mut names).map_err(|e| io_err(e, prefix))?;
        names.retain(|(n, _, _)| {
            n.starts_with(prefix) && !(dir_part.is_empty() && n.starts_with("tmp/"))
        });
        names.sort();
        if let Some(t) = &token {
            names.retain(|(n, _, _)| n > t);
        }
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

fn walk(dir: &Path, rel: &str, out: &mut Vec<Listed>) -> std::io::Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let rel_name = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = ent.file_type()?;
        if ft.is_dir() {
            walk(&ent.path(), &rel_name, out)?;
        } else if ft.is_file() {
            let m = ent.metadata()?;
            out.push((rel_name, m.len(), mtime(&m)));
        }
    }
    Ok(())
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
