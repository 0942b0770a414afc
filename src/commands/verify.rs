//! `verify`: prove the repository is whole.
//!
//! Without `--read-data`: every index and snapshot object is read,
//! authenticated and decoded; every chunk a snapshot needs is in the
//! index; every pack the index names exists and is long enough. With
//! `--read-data` (or a percentage subset): packs are downloaded, their
//! SHA-256 compared with their names, headers compared with the index,
//! and every chunk decrypted, decompressed and re-hashed.
//! Each problem names the damaged object and the snapshots it affects.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::backend::list_all;
use crate::crypto::Domain;
use crate::error::{Error, Result};
use crate::format::index::IndexBlob;
use crate::format::snapshot::Snapshot;
use crate::format::{index as index_fmt, names, pack, Id};
use crate::progress::Progress;
use crate::repository::{decode_blob, MasterIndex, Repository};

#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Percentage of packs to read in full (0 = none, 100 = all).
    pub read_data_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub object: String,
    pub message: String,
    /// Short ids of the snapshots that cannot be fully restored because of it.
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub snapshots: u64,
    pub index_objects: u64,
    pub packs: u64,
    pub chunks: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    pub chunks_read: u64,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub async fn run(
    repo: Arc<Repository>,
    opts: VerifyOptions,
    progress: Arc<dyn Progress>,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let index = load_indexes(&repo, &mut report).await?;
    let snaps = load_snapshots(&repo, &mut report).await?;
    let packs = list_all(repo.backend(), names::DATA).await?;
    let pack_sizes: HashMap<Id, u64> = packs
        .iter()
        .filter_map(|o| Some((names::id_of(&o.name)?, o.size)))
        .collect();
    report.packs = pack_sizes.len() as u64;
    report.chunks = index.blob_count() as u64;
    let by_pack = index.blobs_by_pack();
    let affected = |chunks: &HashSet<Id>| affected_snapshots(&snaps, chunks);

    // Chunks snapshots need but no index knows.
    let mut missing: HashSet<Id> = HashSet::new();
    for (_, s) in &snaps {
        missing.extend(s.chunk_ids().filter(|c| !index.contains(c)).copied());
    }
    if !missing.is_empty() {
        let unindexed: Vec<&Id> = pack_sizes.keys().filter(|p| !index.has_pack(p)).collect();
        let hint = if unindexed.is_empty() {
            "their data is gone".to_owned()
        } else {
            format!("{} pack(s) are not in any index: an index object is probably missing; `usdcop-dr repair index` rebuilds it from the packs", unindexed.len())
        };
        report.problems.push(Problem {
            object: names::INDEX.trim_end_matches('/').into(),
            message: format!(
                "{} chunk(s) needed by snapshots are in no index; {hint}",
                missing.len()
            ),
            snapshots: affected(&missing),
        });
    }
    // Packs the index names must exist and be long enough.
    for (pack_id, blobs) in &by_pack {
        let name = names::pack(pack_id);
        let needed = blobs
            .iter()
            .map(|b| b.offset as u64 + b.stored_len as u64)
            .max()
            .unwrap_or(0)
            + 4;
        let problem = match pack_sizes.get(pack_id) {
            None => Some(format!(
                "pack is missing (listed by index {})",
                index
                    .index_of_pack(pack_id)
                    .map(|i| i.short())
                    .unwrap_or_default()
            )),
            Some(&size) if size < needed => Some(format!(
                "pack is {size} bytes, the index needs at least {needed}"
            )),
            _ => None,
        };
        if let Some(message) = problem {
            let chunks = blobs.iter().map(|b| b.id).collect();
            report.problems.push(Problem {
                object: name,
                message,
                snapshots: affected(&chunks),
            });
        }
    }
    let unindexed = pack_sizes.keys().filter(|p| !index.has_pack(p)).count();
    if unindexed > 0 && missing.is_empty() {
        report.warnings.push(format!(
            "{unindexed} pack(s) are in no index (left by an interrupted backup); a later prune removes them"
        ));
    }

    if opts.read_data_percent > 0.0 {
        let mut ids: Vec<Id> = by_pack
            .keys()
            .filter(|p| pack_sizes.contains_key(p))
            .copied()
            .collect();
        ids.sort();
        if opts.read_data_percent < 100.0 {
            ids.shuffle(&mut rand::thread_rng());
            let n = ((ids.len() as f64) * opts.read_data_percent / 100.0).ceil() as usize;
            ids.truncate(n.max(1).min(ids.len()));
        }
        progress.set_total(ids.iter().map(|p| pack_sizes[p]).sum());
        let results: Vec<(Id, u64, u64, Option<String>)> = futures::stream::iter(ids)
            .map(|pack_id| {
                let repo = repo.clone();
                let blobs = by_pack[&pack_id].clone();
                let progress = progress.clone();
                async move {
                    progress.set_item(&names::pack(&pack_id));
                    let (bytes, chunks, err) = check_pack(&repo, pack_id, blobs).await;
                    progress.add_bytes(bytes);
                    (pack_id, bytes, chunks, err)
                }
            })
            .buffer_unordered(2)
            .collect()
            .await;
        for (pack_id, bytes, chunks, err) in results {
            report.packs_read += 1;
            report.bytes_read += bytes;
            report.chunks_read += chunks;
            if let Some(message) = err {
                let chunk_ids = by_pack[&pack_id].iter().map(|b| b.id).collect();
                report.problems.push(Problem {
                    object: names::pack(&pack_id),
                    message,
                    snapshots: affected(&chunk_ids),
                });
            }
        }
    }
    report.problems.sort_by(|a, b| a.object.cmp(&b.object));
    Ok(report)
}

async fn load_indexes(repo: &Repository, report: &mut VerifyReport) -> Result<MasterIndex> {
    let mut master = MasterIndex::default();
    for obj in list_all(repo.backend(), names::INDEX).await? {
        report.index_objects += 1;
        let loaded = async {
            let id =
                names::id_of(&obj.name).ok_or_else(|| Error::integrity("name is not a SHA-256"))?;
            let plain = repo.load_sealed(&obj.name, Domain::Index).await?;
            Ok::<_, Error>((id, index_fmt::decode_compressed(&plain)?))
        }
        .await;
        match loaded {
            Ok((id, file)) => master.add_file(Some(id), &file),
            Err(e) => report.problems.push(Problem {
                object: obj.name.clone(),
                message: e.to_string(),
                snapshots: vec![],
            }),
        }
    }
    Ok(master)
}

async fn load_snapshots(
    repo: &Repository,
    report: &mut VerifyReport,
) -> Result<Vec<(Id, Snapshot)>> {
    let mut out = Vec::new();
    for obj in list_all(repo.backend(), names::SNAPSHOTS).await? {
        report.snapshots += 1;
        let Some(id) = names::id_of(&obj.name) else {
            report.problems.push(Problem {
                object: obj.name.clone(),
                message: "name is not a SHA-256".into(),
                snapshots: vec![],
            });
            continue;
        };
        match repo.load_snapshot(&id).await {
            Ok(s) => out.push((id, s)),
            Err(e) => report.problems.push(Problem {
                object: obj.name.clone(),
                message: e.to_string(),
                snapshots: vec![id.short()],
            }),
        }
    }
    Ok(out)
}

fn affected_snapshots(snaps: &[(Id, Snapshot)], chunks: &HashSet<Id>) -> Vec<String> {
    let set: BTreeSet<String> = snaps
        .iter()
        .filter(|(_, s)| s.chunk_ids().any(|c| chunks.contains(c)))
        .map(|(id, _)| id.short())
        .collect();
    set.into_iter().collect()
}

/// Download one pack and check everything in it. Returns bytes read,
/// chunks checked and the first problem found.
async fn check_pack(
    repo: &Arc<Repository>,
    pack_id: Id,
    blobs: Vec<IndexBlob>,
) -> (u64, u64, Option<String>) {
    let name = names::pack(&pack_id);
    let bytes = match repo.backend().get(&name).await {
        Ok(b) => b,
        Err(e) => return (0, 0, Some(format!("cannot read: {e}"))),
    };
    let len = bytes.len() as u64;
    let key = repo.key().clone();
    let checked = tokio::task::spawn_blocking(move || -> (u64, Option<String>) {
        if Id::hash(&bytes) != pack_id {
            // Still try each chunk, to say which ones are damaged.
            let bad = blobs.iter().filter(|b| blob_ok(&key, &bytes, b).is_err()).count();
            return (0, Some(format!("content does not match its name (SHA-256 mismatch; {bad} of {} chunks damaged)", blobs.len())));
        }
        if let Err(e) = header_matches(&key, &bytes, &blobs) {
            return (0, Some(e.to_string()));
        }
        for (n, b) in blobs.iter().enumerate() {
            if let Err(e) = blob_ok(&key, &bytes, b) {
                return (n as u64, Some(e.to_string()));
            }
        }
        (blobs.len() as u64, None)
    })
    .await
    .unwrap_or_else(|e| (0, Some(format!("check task failed: {e}"))));
    (len, checked.0, checked.1)
}

fn blob_ok(key: &crate::crypto::Key, pack_bytes: &[u8], b: &IndexBlob) -> Result<()> {
    let start = b.offset as usize;
    let end = start + b.stored_len as usize;
    let stored = pack_bytes
        .get(start..end)
        .ok_or_else(|| Error::integrity("blob outside the pack"))?;
    decode_blob(key, stored, b.compression, b.raw_len, &b.id).map(|_| ())
}

fn header_matches(key: &crate::crypto::Key, bytes: &[u8], blobs: &[IndexBlob]) -> Result<()> {
    let entries = crate::repository::parse_pack_header(key, bytes.len() as u64, |off, len| {
        bytes
            .get(off as usize..(off + len) as usize)
            .map(|s| s.to_vec())
            .ok_or_else(|| Error::integrity("header outside the pack"))
    })?;
    let offsets = pack::blob_offsets(&entries, bytes.len() as u64 - 4 - header_len(bytes) as u64)?;
    let from_header: HashMap<Id, (u32, u32)> = entries
        .iter()
        .zip(offsets)
        .map(|(e, o)| (e.id, (o as u32, e.stored_len)))
        .collect();
    for b in blobs {
        if from_header.get(&b.id) != Some(&(b.offset, b.stored_len)) {
            return Err(Error::integrity(format!(
                "pack header disagrees with the index about chunk {}",
                b.id.short()
            )));
        }
    }
    Ok(())
}

fn header_len(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap())
}
