//! `wal-push` and `wal-fetch`: PostgreSQL's `archive_command` and
//! `restore_command` (docs/FORMAT.md, "WAL archive"; docs/CLI.md).
//!
//! No lock is taken: WAL objects are created once under names that carry
//! their content's hash, and prune touches only `data/` and `condemned/`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::{list_all, PutMode};
use crate::error::{Error, ErrorKind, Result};
use crate::format::wal::{self, SystemIdRecord, WalKind, WalName};
use crate::format::Id;
use crate::repository::Repository;

/// What `wal-push` did.
#[derive(Debug, Clone, Serialize)]
pub struct PushOutcome {
    pub file: String,
    pub object: String,
    /// False when the same content was already archived (a retry).
    pub stored: bool,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub system_identifier: String,
}

/// What `wal-fetch` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct FetchOutcome {
    pub file: String,
    pub object: String,
    pub dest: PathBuf,
    pub bytes: u64,
}

/// Archive the file at `path` (PostgreSQL's `%p`) into `repo`. Returns
/// only once the object is durable in the store (or was already there).
pub async fn push(repo: &Repository, source: &str, path: &Path) -> Result<PushOutcome> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::usage(format!("{} names no WAL file", path.display())))?;
    let name = WalName::parse(file_name)?;
    let plain = read_file(path)?;
    let hash = Id::hash(&plain);
    let backend = repo.backend();

    let existing = versions(repo, &name).await?;
    if existing.contains(&hash) {
        let object = name.object_name(&hash);
        let size = backend.head(&object).await?.size;
        return Ok(PushOutcome {
            file: name.name.clone(),
            object,
            stored: false,
            bytes: plain.len() as u64,
            stored_bytes: size,
            system_identifier: String::new(),
        });
    }
    // The cluster first: a foreign cluster's segment is named as such
    // even when its name collides with one of ours.
    let system_id = match name.kind {
        WalKind::Segment => {
            let id = wal::segment_system_id(&name.name, &plain)?;
            check_system_id(repo, source, &name, &plain, id).await?;
            id
        }
        WalKind::History | WalKind::Backup => match load_system_id(repo).await? {
            Some(r) => r.system_id()?,
            None => {
                return Err(Error::usage(format!(
                    "{}: cannot archive {} before any segment: the archive records no cluster yet",
                    backend.location(),
                    name.name
                ))
                .with_hint("the cluster's system identifier is read from a segment; PostgreSQL retries this file after archiving the first segment"))
            }
        },
    };

    if let Some(other) = existing.first() {
        return Err(conflict(&name, other, &hash));
    }

    let sealed = wal::encode(
        repo.key(),
        system_id,
        &name,
        &plain,
        repo.config().compression_level,
    );
    let stored_bytes = sealed.len() as u64;
    let object = name.object_name(&hash);
    match backend.put(&object, sealed.into(), PutMode::Create).await {
        // Same name, same plaintext: a retry whose first answer was lost.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        r => r?,
    }
    // Two different files pushed at once under one name both pass the
    // listing above: the second to look finds the other and fails.
    let after = versions(repo, &name).await?;
    if let Some(other) = after.iter().find(|h| **h != hash) {
        return Err(conflict(&name, other, &hash));
    }
    Ok(PushOutcome {
        file: name.name.clone(),
        object,
        stored: true,
        bytes: plain.len() as u64,
        stored_bytes,
        system_identifier: system_id.to_string(),
    })
}

fn conflict(name: &WalName, stored: &Id, ours: &Id) -> Error {
    Error::integrity(format!(
        "WAL file {} is already archived with other content (stored {}, this file hashes to {}); the stored one is kept",
        name.name,
        name.object_name(stored),
        ours.to_hex()
    ))
    .with_hint("two clusters may archive into this repository, or pg_wal was restored from elsewhere: check every archive_command that uses this configuration")
}

/// Plaintext hashes of the stored versions of `name`.
async fn versions(repo: &Repository, name: &WalName) -> Result<Vec<Id>> {
    Ok(list_all(repo.backend(), &name.prefix())
        .await?
        .iter()
        .filter_map(|o| name.hash_of(&o.name))
        .collect())
}

async fn load_system_id(repo: &Repository) -> Result<Option<SystemIdRecord>> {
    match repo.backend().get(wal::SYSTEM_ID).await {
        Ok(b) => Ok(Some(SystemIdRecord::open(repo.key(), &b)?)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Refuse a segment of another cluster; the first segment records its own.
async fn check_system_id(
    repo: &Repository,
    source: &str,
    name: &WalName,
    segment: &[u8],
    id: u64,
) -> Result<()> {
    let record = match load_system_id(repo).await? {
        Some(r) => r,
        None => {
            let r = SystemIdRecord {
                version: 1,
                system_identifier: id.to_string(),
                source: source.to_owned(),
                first_file: name.name.clone(),
                created: chrono::Utc::now(),
                segment_size: Some(wal::segment_size_of(&name.name, segment)?),
            };
            match repo
                .backend()
                .put(wal::SYSTEM_ID, r.seal(repo.key()).into(), PutMode::Create)
                .await
            {
                Ok(()) => return Ok(()),
                // Another push recorded first: judge by its record.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => load_system_id(repo)
                    .await?
                    .ok_or_else(|| Error::io(format!("{} vanished", wal::SYSTEM_ID)))?,
                Err(e) => return Err(e),
            }
        }
    };
    let archived = record.system_id()?;
    if archived != id {
        return Err(Error::usage(format!(
            "WAL segment {} belongs to the cluster with system identifier {id}, but the archive in {} holds the cluster {archived} (source {:?}, since {})",
            name.name,
            repo.backend().location(),
            record.source,
            record.created.to_rfc3339()
        ))
        .with_hint("each cluster needs its own repository (or prefix) for its WAL; a re-initialized cluster needs a new archive"));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))?
        .len();
    if len > wal::MAX_FILE {
        return Err(Error::usage(format!(
            "{} is {len} bytes, larger than any WAL file",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))
}

/// Fetch `name` (PostgreSQL's `%f`) into `dest` (`%p`), atomically.
/// `Ok(None)` when the archive does not hold it.
pub async fn fetch(repo: &Repository, name: &str, dest: &Path) -> Result<Option<FetchOutcome>> {
    let name = WalName::parse(name)?;
    let found = versions(repo, &name).await?;
    let hash = match found.as_slice() {
        [] => return Ok(None),
        [h] => *h,
        many => {
            return Err(Error::integrity(format!(
                "WAL file {} is archived {} times with different content ({})",
                name.name,
                many.len(),
                many.iter()
                    .map(|h| name.object_name(h))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .with_hint("two clusters wrote into this archive; remove the foreign object after checking which one belongs to this cluster"))
        }
    };
    let object = name.object_name(&hash);
    let sealed = match repo.backend().get(&object).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let decoded = wal::decode(repo.key(), &name, &object, &sealed)?;
    write_atomic(dest, &decoded.plain)?;
    Ok(Some(FetchOutcome {
        file: name.name,
        object,
        dest: dest.to_owned(),
        bytes: decoded.plain.len() as u64,
    }))
}

/// Temp file in `dest`'s directory, fsync, rename, fsync the directory.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| Error::usage(format!("{} names no file", dest.display())))?;
    let tmp = dir.join(format!(
        ".{}.usdcop-dr-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let err = |what: &str, p: &Path, e: std::io::Error| {
        Error::io(format!("cannot {what} {}: {e}", p.display()))
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| err("create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| err("write", &tmp, e))?;
        f.sync_all().map_err(|e| err("fsync", &tmp, e))?;
        std::fs::rename(&tmp, dest).map_err(|e| err("rename into", dest, e))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("fsync", &dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
