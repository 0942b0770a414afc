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
use crate::format::{index as index_fmt, names, pack, Hasher, Id};
use crate::progress::Progress;
use crate::repository::{decode_blob, MasterIndex, MasterIndexBuilder, Repository};

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
    /// Things worth knowing that are not damage (docs/CLI.md, "Warnings").
    pub warnings: Vec<crate::progress::Warning>,
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
    // Every blob each snapshot references: its list tree nodes (every one
    // read and checked) and its data chunks.
    let mut refs: Vec<(Id, Vec<Id>)> = Vec::with_capacity(snaps.len());
    for (id, s) in &snaps {
        let r = repo.snapshot_blob_ids(&index, s).await?;
        // A node that no index knows is reported with the other missing
        // chunks below (with the repair hint); any other damage here.
        if let Some((node, e)) = &r.unreadable {
            if index.contains(node) {
                report.problems.push(Problem {
                    object: names::in_dir(names::SNAPSHOTS, id),
                    message: format!("its entry list cannot be read: {e}"),
                    snapshots: vec![id.short()],
                });
            }
        }
        refs.push((*id, r.ids));
    }
    let affected = |chunks: &HashSet<Id>| affected_snapshots(&refs, chunks);

    // Chunks snapshots need but no index knows.
    let mut missing: HashSet<Id> = HashSet::new();
    for (_, ids) in &refs {
        missing.extend(ids.iter().filter(|c| !index.contains(c)).copied());
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
    // Prune's records: a damaged one stops prune, so it is a problem;
    // packs they condemn are known garbage, not "left by a backup".
    let condemned = crate::repository::gc::load_condemned(&repo).await?;
    for (name, why) in &condemned.damaged {
        report.problems.push(Problem {
            object: name.clone(),
            message: format!("damaged condemned record: {why}; prune deletes nothing while it is"),
            snapshots: vec![],
        });
    }
    let condemned = condemned.packs();
    let unindexed = pack_sizes
        .keys()
        .filter(|p| !index.has_pack(p) && !condemned.contains(p))
        .count();
    if unindexed > 0 && missing.is_empty() {
        report.warnings.push(crate::progress::Warning::new(
            crate::progress::WarningKind::UnindexedPacks,
            names::DATA.trim_end_matches('/'),
            format!(
                "{unindexed} pack(s) are in no index (left by an interrupted backup); a later prune removes them"
            ),
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
                let size = pack_sizes[&pack_id];
                let progress = progress.clone();
                async move {
                    progress.set_item(&names::pack(&pack_id));
                    let (bytes, chunks, err) = check_pack(&repo, pack_id, size, blobs).await;
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
    let mut master = MasterIndexBuilder::new(true);
    for obj in list_all(repo.backend(), names::INDEX).await? {
        // A stray object (an S3 console folder object `index/`, an NFS
        // silly-rename file) is no index and no damage: a warning, as in
        // every other command (`Repository::load_index_reporting`). A
        // damaged index object below stays a problem (exit 3).
        let Some(id) = names::id_of(&obj.name) else {
            report.warnings.push(crate::progress::Warning::new(
                crate::progress::WarningKind::SkippedObject,
                obj.name.clone(),
                format!(
                    "stray object ({} bytes) in index/, not an index object: ignored",
                    obj.size
                ),
            ));
            continue;
        };
        report.index_objects += 1;
        let loaded = async {
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
    Ok(master.finish())
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

fn affected_snapshots(refs: &[(Id, Vec<Id>)], chunks: &HashSet<Id>) -> Vec<String> {
    let set: BTreeSet<String> = refs
        .iter()
        .filter(|(_, ids)| ids.iter().any(|c| chunks.contains(c)))
        .map(|(id, _)| id.short())
        .collect();
    set.into_iter().collect()
}

/// Bytes fetched per ranged read when checking a pack: memory per pack
/// being checked is one window plus the largest blob, never the pack.
const WINDOW: u64 = 4 << 20;

struct Scan {
    hasher: Hasher,
    buf: Vec<u8>,
    buf_start: u64,
    checked: u64,
    first_bad: Option<String>,
    bad: u64,
}

/// Stream one pack through ranged reads: hash it whole, decode every blob
/// the index places in it, and compare its own header with the index.
/// Returns bytes read, chunks checked and the problem found, if any.
async fn check_pack(
    repo: &Arc<Repository>,
    pack_id: Id,
    pack_len: u64,
    mut blobs: Vec<IndexBlob>,
) -> (u64, u64, Option<String>) {
    blobs.sort_by_key(|b| b.offset);
    let name = names::pack(&pack_id);
    let key = repo.key().clone();
    let mut scan = Scan {
        hasher: Hasher::new(),
        buf: Vec::new(),
        buf_start: 0,
        checked: 0,
        first_bad: None,
        bad: 0,
    };
    let mut pos = 0u64;
    let mut next = 0usize;
    while pos < pack_len {
        let n = WINDOW.min(pack_len - pos);
        let seg = match repo.backend().get_range(&name, pos, n).await {
            Ok(b) => b,
            Err(e) => return (pos, scan.checked, Some(format!("cannot read: {e}"))),
        };
        pos += n;
        let end = blobs[next..]
            .iter()
            .take_while(|b| b.offset as u64 + b.stored_len as u64 <= pos)
            .count();
        let ready: Vec<IndexBlob> = blobs[next..next + end].to_vec();
        next += end;
        let keep_from = blobs.get(next).map_or(pos, |b| b.offset as u64);
        let key = key.clone();
        scan = match tokio::task::spawn_blocking(move || {
            scan.hasher.update(&seg);
            scan.buf.extend_from_slice(&seg);
            for b in &ready {
                let start = (b.offset as u64 - scan.buf_start) as usize;
                let stored = &scan.buf[start..start + b.stored_len as usize];
                match decode_blob(&key, stored, b.compression, b.raw_len, &b.id) {
                    Ok(_) => scan.checked += 1,
                    Err(e) => {
                        scan.bad += 1;
                        scan.first_bad.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            let keep_from = keep_from.clamp(scan.buf_start, pos);
            scan.buf.drain(..(keep_from - scan.buf_start) as usize);
            scan.buf_start = keep_from;
            scan
        })
        .await
        {
            Ok(s) => s,
            Err(e) => return (pos, 0, Some(format!("check task failed: {e}"))),
        };
    }
    let mut problems = Vec::new();
    if scan.hasher.finish() != pack_id {
        problems.push("content does not match its name (SHA-256 mismatch)".to_owned());
    }
    if scan.bad > 0 {
        problems.push(format!(
            "{} of {} chunks damaged (first: {})",
            scan.bad,
            blobs.len(),
            scan.first_bad.unwrap_or_default()
        ));
    }
    if next < blobs.len() {
        problems.push(format!(
            "{} chunks lie outside the pack",
            blobs.len() - next
        ));
    }
    if let Err(e) = header_matches(repo, &pack_id, pack_len, &blobs).await {
        problems.push(e.to_string());
    }
    let problem = if problems.is_empty() {
        None
    } else {
        Some(problems.join("; "))
    };
    (pos, scan.checked, problem)
}

async fn header_matches(
    repo: &Repository,
    pack_id: &Id,
    pack_len: u64,
    blobs: &[IndexBlob],
) -> Result<()> {
    let entries = repo.read_pack_header(pack_id, pack_len).await?;
    let header_offset: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
    let offsets = pack::blob_offsets(&entries, header_offset)?;
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
