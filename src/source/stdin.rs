//! A single stream (stdin, or any reader): one file entry.

use std::io::Read;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::format::snapshot::{validate_path, Entry, EntryType};
use crate::pipeline::Writer;
use crate::progress::Progress;

/// Store `reader` as the single entry `name`.
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
    let stored = writer.store_stream(reader, progress)?;
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
        sha256: Some(stored.sha256),
        chunks: stored.chunks,
        target: None,
        chunk_tree: None,
        object: None,
    })
}
