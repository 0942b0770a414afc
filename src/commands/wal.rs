//! `wal-push` and `wal-fetch`: PostgreSQL's `archive_command` and
//! `restore_command` (docs/FORMAT.md, "WAL archive"; docs/CLI.md).
//!
//! No lock is taken: WAL objects are created once under names that carry
//! their content's hash, and prune touches only `data/` and `condemned/`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Serialize;

use super::wal_spool::{FetchRecord, FetchSpool};

use crate::backend::{list_all, PutMode};
use crate::error::{Error, ErrorKind, Result};
use crate::format::wal::{self, SystemIdRecord, WalKind, WalName};
use crate::format::Id;
use crate::repository::wal_archive::load_system_id;
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
    /// Served from the prefetch spool (no store request).
    pub from_spool: bool,
    /// Later segments fetched into the spool by this call.
    pub prefetched: u64,
}

/// A WAL file read and checked locally: what a push stores.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub name: WalName,
    pub plain: Vec<u8>,
    pub hash: Id,
    /// A segment's system identifier (its first page's long header).
    pub segment_system_id: Option<u64>,
}

/// Read the file at `path` (PostgreSQL's `%p`) and hash it (blocking).
pub fn prepare(path: &Path) -> Result<Prepared> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::usage(format!("{} names no WAL file", path.display())))?;
    let name = WalName::parse(file_name)?;
    let plain = read_file(path)?;
    let hash = Id::hash(&plain);
    let segment_system_id = match name.kind {
        WalKind::Segment | WalKind::Partial => Some(wal::segment_system_id(&name.name, &plain)?),
        _ => None,
    };
    Ok(Prepared {
        name,
        plain,
        hash,
        segment_system_id,
    })
}

/// The archive's `wal/system-id`, read once per process (a background
/// pusher pushes many files with one repository).
#[derive(Default)]
pub struct SystemIdCache(tokio::sync::OnceCell<SystemIdRecord>);

/// Archive the file at `path` (PostgreSQL's `%p`) into `repo`. Returns
/// only once the object is durable in the store (or was already there).
pub async fn push(repo: &Repository, source: &str, path: &Path) -> Result<PushOutcome> {
    let prepared = prepare(path)?;
    push_prepared(repo, source, prepared, &SystemIdCache::default()).await
}

/// [`push`] of a file already read; the compression and encryption run on
/// a blocking thread, so that several pushes of one process run in
/// parallel.
pub async fn push_prepared(
    repo: &Repository,
    source: &str,
    prepared: Prepared,
    known: &SystemIdCache,
) -> Result<PushOutcome> {
    let Prepared {
        name,
        plain,
        hash,
        segment_system_id,
    } = prepared;
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
            system_identifier: segment_system_id.map(|i| i.to_string()).unwrap_or_default(),
        });
    }
    // The cluster first: a foreign cluster's segment is named as such
    // even when its name collides with one of ours.
    let system_id = match segment_system_id {
        Some(id) => {
            check_system_id(repo, source, &name, &plain, id, known).await?;
            id
        }
        None => match cached_system_id(repo, known).await? {
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

    let key = repo.key().clone();
    let level = repo.config().compression_level;
    let bytes = plain.len() as u64;
    let (sealed, name) = tokio::task::spawn_blocking(move || {
        let sealed = wal::encode(&key, system_id, &name, &plain, level);
        (sealed, name)
    })
    .await
    .map_err(|e| Error::io(format!("WAL encoder task failed: {e}")))?;
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
        bytes,
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

/// The archive's record, from `known` or the store (remembered once found).
async fn cached_system_id(
    repo: &Repository,
    known: &SystemIdCache,
) -> Result<Option<SystemIdRecord>> {
    if let Some(r) = known.0.get() {
        return Ok(Some(r.clone()));
    }
    let r = load_system_id(repo).await?;
    if let Some(r) = &r {
        let _ = known.0.set(r.clone());
    }
    Ok(r)
}

/// Refuse a segment of another cluster; the first segment records its own.
async fn check_system_id(
    repo: &Repository,
    source: &str,
    name: &WalName,
    segment: &[u8],
    id: u64,
    known: &SystemIdCache,
) -> Result<()> {
    let record = match cached_system_id(repo, known).await? {
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
                Ok(()) => {
                    let _ = known.0.set(r);
                    return Ok(());
                }
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
    let Some(hash) = single(&name, &found)? else {
        return Ok(None);
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
        from_spool: false,
        prefetched: 0,
    }))
}

/// The single stored version of a file among `found`, or an error naming
/// them all when there are several.
fn single(name: &WalName, found: &[Id]) -> Result<Option<Id>> {
    match found {
        [] => Ok(None),
        [h] => Ok(Some(*h)),
        many => Err(Error::integrity(format!(
            "WAL file {} is archived {} times with different content ({})",
            name.name,
            many.len(),
            many.iter()
                .map(|h| name.object_name(h))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_hint("two clusters wrote into this archive; remove the foreign object after checking which one belongs to this cluster")),
    }
}

/// Stored versions of every file under `wal/<timeline>/<start>`, by name.
async fn versions_under(
    repo: &Repository,
    timeline: u32,
    start: &str,
) -> Result<BTreeMap<String, Vec<Id>>> {
    let prefix = format!("{}{timeline:08X}/{start}", wal::DIR);
    let mut out: BTreeMap<String, Vec<Id>> = BTreeMap::new();
    for o in list_all(repo.backend(), &prefix).await? {
        let Some((file, _)) = o.name.rsplit('/').next().and_then(|n| n.rsplit_once('-')) else {
            continue;
        };
        if let Ok(n) = WalName::parse(file) {
            if let Some(h) = n.hash_of(&o.name) {
                out.entry(n.name).or_default().push(h);
            }
        }
    }
    Ok(out)
}

/// [`fetch`] of a segment that also fetches the next `count` segments
/// the archive holds into `spool` (concurrently, at most `count + 1`
/// files in flight), so that the next calls need no store request. One
/// listing finds them all; each is decoded and checked against its
/// object's name, as `name` itself is. A failed prefetch only warns.
pub async fn fetch_ahead(
    repo: &Repository,
    name: &str,
    dest: &Path,
    spool: &FetchSpool,
    count: usize,
) -> Result<Option<FetchOutcome>> {
    let name = WalName::parse(name)?;
    if count == 0 || name.kind != WalKind::Segment {
        return fetch(repo, &name.name, dest).await;
    }
    let (listed, record) = tokio::join!(
        versions_under(repo, name.timeline, &name.name[..16]),
        load_system_id(repo)
    );
    let mut listed = listed?;
    let Some(hash) = single(
        &name,
        listed.get(&name.name).map_or(&[][..], |v| v.as_slice()),
    )?
    else {
        return Ok(None);
    };
    let mut jobs = vec![(name.clone(), hash, true)];
    let repository_id = repo.config().id.clone();
    let now = chrono::Utc::now();
    if let Some(size) = record.ok().flatten().and_then(|r| r.segment_size) {
        if let Some((tl, segno)) = wal::segment_number(&name.name, size) {
            for i in 1..=count as u64 {
                let next = wal::segment_name(tl, segno + i, size);
                if !listed.contains_key(&next) && next[..16] != name.name[..16] {
                    // The next xlogid: one more listing.
                    listed.extend(versions_under(repo, tl, &next[..16]).await?);
                }
                let Some([h]) = listed.get(&next).map(|v| v.as_slice()) else {
                    break;
                };
                if spool.record(&next, &repository_id, now).is_none() {
                    jobs.push((WalName::parse(&next)?, *h, false));
                }
            }
        }
    }
    if jobs.len() > 1 {
        if let Err(e) = spool.create() {
            tracing::warn!("no prefetch: {e}");
            jobs.truncate(1);
        }
    }
    let in_flight = jobs.len();
    let results: Vec<(bool, Result<Option<FetchOutcome>>)> = futures::stream::iter(jobs)
        .map(|(n, h, asked)| {
            let repository_id = repository_id.clone();
            async move {
                let r = fetch_one(
                    repo,
                    &n,
                    h,
                    if asked { Some(dest) } else { None },
                    spool,
                    &repository_id,
                )
                .await;
                (asked, r)
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let mut outcome = None;
    let mut prefetched = 0;
    for (asked, r) in results {
        match (asked, r) {
            (true, r) => outcome = r?,
            (false, Ok(_)) => prefetched += 1,
            (false, Err(e)) => tracing::warn!("prefetch: {e}"),
        }
    }
    Ok(outcome.map(|o| FetchOutcome { prefetched, ..o }))
}

/// GET, decode and check one object; write it to `dest`, or into the
/// spool when `dest` is `None`.
async fn fetch_one(
    repo: &Repository,
    name: &WalName,
    hash: Id,
    dest: Option<&Path>,
    spool: &FetchSpool,
    repository_id: &str,
) -> Result<Option<FetchOutcome>> {
    let object = name.object_name(&hash);
    let sealed = match repo.backend().get(&object).await {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let key = repo.key().clone();
    let (n, o) = (name.clone(), object.clone());
    let plain = tokio::task::spawn_blocking(move || wal::decode(&key, &n, &o, &sealed))
        .await
        .map_err(|e| Error::io(format!("WAL decoder task failed: {e}")))??
        .plain;
    let bytes = plain.len() as u64;
    match dest {
        Some(d) => write_atomic(d, &plain)?,
        None => spool.put(
            &FetchRecord {
                version: 1,
                repository_id: repository_id.to_owned(),
                file: name.name.clone(),
                object: object.clone(),
                sha256: hash.to_hex(),
                bytes,
                fetched: chrono::Utc::now(),
            },
            &plain,
        )?,
    }
    Ok(Some(FetchOutcome {
        file: name.name.clone(),
        object,
        dest: dest
            .map(Path::to_owned)
            .unwrap_or_else(|| spool.dir().join(&name.name)),
        bytes,
        from_spool: false,
        prefetched: 0,
    }))
}

/// fsync the directory holding `path` (after a rename into it).
pub(crate) fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot fsync {}: {e}", dir.display())))
}

/// Temp file in `dest`'s directory, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
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
