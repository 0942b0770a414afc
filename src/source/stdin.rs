//! A single stream (stdin, or any reader): one file entry.

use std::io::Read;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::format::snapshot::{validate_path, Entry, EntryType};
use crate::pipeline::{WholeHash, Writer};
use crate::progress::Progress;

/// Store `reader` as the single entry `name`. Its chunk ids prove it on
/// restore; the whole-content SHA-256, which nothing outside the
/// repository reads for a stream, is not taken ([`WholeHash::Skip`]).
pub fn store(
    writer: &Writer,
    name: &str,
    reader: impl Read,
    time: DateTime<Utc>,
    progress: &dyn Progress,
) -> Result<Entry> {
    validate_path(name).map_err(|_| {
        crate::Error::usage(format!(
            "--stdin-name {name:?} must be a relative path without `..`"
        ))
    })?;
    progress.set_item(name);
    let stored = writer.store_stream_with(reader, progress, WholeHash::Skip)?;
    Ok(Entry {
        path: name.to_owned(),
        kind: EntryType::File,
        mode: 0o600,
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        mtime_ns: time.timestamp_nanos_opt().unwrap_or(0),
        ctime_ns: 0,
        inode: 0,
        size: stored.size,
        sha256: stored.sha256,
        chunks: stored.chunks,
        target: None,
        chunk_tree: None,
        object: None,
    })
}
