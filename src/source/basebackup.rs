//! A physical base backup: the tar stream of `pg_basebackup -Ft -D -`
//! split into the data directory's files, each stored through the
//! pipeline as an entry of its own, so that a relation file unchanged
//! since the last base backup costs nothing but its chunk list.
//!
//! Besides storing, the stream is read for what a restore needs: the
//! `backup_label` (start location, timeline), the tail of the injected
//! `backup_manifest` (the WAL range to the consistent point),
//! `global/pg_control` (the system identifier) and `PG_VERSION`. Memory:
//! one chunk in flight per file, those small files, and the manifest's
//! last [`MANIFEST_TAIL`] bytes.

use std::io::{Cursor, Read};

use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{validate_path, Entry, EntryType};
use crate::pipeline::Writer;
use crate::progress::Progress;
use crate::source::files::{EntrySink, FilesTotals};

/// How much of `backup_manifest` is kept: its `WAL-Ranges` come last.
pub const MANIFEST_TAIL: usize = 64 << 10;
/// Small files read whole on the way (they are stored too).
const SMALL_FILE_MAX: u64 = 1 << 20;

/// What the stream said besides its files.
#[derive(Debug, Default)]
pub struct TarFacts {
    pub backup_label: Option<String>,
    pub manifest_tail: Vec<u8>,
    pub pg_control: Option<Vec<u8>>,
    pub pg_version: Option<String>,
    /// Tablespace symlinks (`pg_tblspc/*`): a stream to stdout holds the
    /// main data directory only.
    pub tablespaces: Vec<String>,
    pub totals: FilesTotals,
}

impl TarFacts {
    /// The system identifier: the first field of `pg_control` (native
    /// byte order: the backup is restored on the same architecture).
    pub fn system_identifier(&self) -> Result<u64> {
        let c = self
            .pg_control
            .as_deref()
            .filter(|c| c.len() >= 8)
            .ok_or_else(|| Error::integrity("the base backup holds no global/pg_control"))?;
        Ok(u64::from_ne_bytes(c[..8].try_into().unwrap()))
    }
}

/// Keeps the last `cap` bytes read through it.
struct TailReader<'a, R> {
    inner: R,
    tail: &'a mut Vec<u8>,
    cap: usize,
}

impl<R: Read> Read for TailReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tail.extend_from_slice(&buf[..n]);
        if self.tail.len() > 2 * self.cap {
            let cut = self.tail.len() - self.cap;
            self.tail.drain(..cut);
        }
        Ok(n)
    }
}

/// The entry path of a tar member: its normal components joined by `/`.
fn entry_path(p: &std::path::Path) -> Result<String> {
    use std::path::Component;
    let mut parts = vec![];
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Source,
                            format!("non-UTF-8 path {p:?} in the base backup"),
                        )
                    })?
                    .to_owned(),
            ),
            Component::CurDir => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::Source,
                    format!("unsafe path {p:?} in the base backup stream"),
                ))
            }
        }
    }
    let path = parts.join("/");
    validate_path(&path).map_err(|_| {
        Error::new(
            ErrorKind::Source,
            format!("unsafe path {p:?} in the base backup stream"),
        )
    })?;
    Ok(path)
}

/// Store every member of the tar stream `reader` through `writer`, handing
/// each entry to `sink` in stream order (a directory before its files, as
/// pg_basebackup writes them). Blocking.
pub fn store_tar(
    writer: &Writer,
    reader: impl Read,
    progress: &dyn Progress,
    sink: EntrySink<'_>,
) -> Result<TarFacts> {
    let mut facts = TarFacts::default();
    let mut archive = tar::Archive::new(reader);
    let tar_err = |e: std::io::Error| {
        Error::new(
            ErrorKind::Source,
            format!("reading the base backup stream: {e}"),
        )
    };
    for member in archive.entries().map_err(tar_err)? {
        let mut member = member.map_err(tar_err)?;
        let header = member.header().clone();
        let path = entry_path(&member.path().map_err(tar_err)?)?;
        let mode = header.mode().map_err(tar_err)? & 0o7777;
        let uid = header.uid().map_err(tar_err)? as u32;
        let gid = header.gid().map_err(tar_err)? as u32;
        let mtime_ns = (header.mtime().map_err(tar_err)? as i64).saturating_mul(1_000_000_000);
        let size = header.size().map_err(tar_err)?;
        let mut entry = Entry {
            mode,
            uid,
            gid,
            mtime_ns,
            ..Entry::bare(path.clone(), EntryType::File)
        };
        match header.entry_type() {
            tar::EntryType::Directory => {
                entry.kind = EntryType::Dir;
                facts.totals.dirs += 1;
            }
            tar::EntryType::Symlink => {
                let target = member
                    .link_name()
                    .map_err(tar_err)?
                    .ok_or_else(|| Error::new(ErrorKind::Source, format!("symlink {path} without a target")))?;
                entry.kind = EntryType::Symlink;
                entry.target = Some(target.to_string_lossy().into_owned());
                if path.starts_with("pg_tblspc/") {
                    facts.tablespaces.push(path.clone());
                }
                facts.totals.symlinks += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                progress.set_item(&path);
                let small = matches!(
                    path.as_str(),
                    "backup_label" | "global/pg_control" | "PG_VERSION" | "tablespace_map"
                ) && size <= SMALL_FILE_MAX;
                let stored = if small {
                    let mut bytes = Vec::with_capacity(size as usize);
                    member.read_to_end(&mut bytes).map_err(tar_err)?;
                    let stored = writer.store_stream(Cursor::new(&bytes), progress)?;
                    match path.as_str() {
                        "backup_label" => {
                            facts.backup_label = Some(String::from_utf8_lossy(&bytes).into_owned())
                        }
                        "global/pg_control" => facts.pg_control = Some(bytes),
                        "PG_VERSION" => {
                            facts.pg_version = Some(String::from_utf8_lossy(&bytes).trim().to_owned())
                        }
                        _ => {}
                    }
                    stored
                } else if path == "backup_manifest" {
                    let mut tail = vec![];
                    let stored = writer.store_stream(
                        TailReader {
                            inner: &mut member,
                            tail: &mut tail,
                            cap: MANIFEST_TAIL,
                        },
                        progress,
                    )?;
                    let keep = tail.len().saturating_sub(MANIFEST_TAIL);
                    facts.manifest_tail = tail.split_off(keep);
                    stored
                } else {
                    writer.store_stream(&mut member, progress)?
                };
                if stored.size != size {
                    return Err(Error::new(ErrorKind::Source, format!(
                        "base backup stream: {path} is {size} bytes in its header but {} were read",
                        stored.size
                    )));
                }
                entry.size = stored.size;
                entry.sha256 = stored.sha256;
                entry.chunks = stored.chunks;
                facts.totals.files += 1;
                facts.totals.bytes += stored.size;
            }
            other => {
                return Err(Error::new(ErrorKind::Source, format!(
                    "base backup stream: {path} has tar type {other:?}, which a data directory does not hold"
                )))
            }
        }
        sink(entry)?;
    }
    Ok(facts)
}
