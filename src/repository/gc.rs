//! Garbage collection in two phases: packs no kept snapshot needs are
//! first *condemned* (recorded in `condemned/`), and deleted only by a
//! later prune, once the grace period has passed by the store's clock and
//! every writer that was live at the condemnation is gone. No exclusive
//! lock: backups run throughout. docs/FORMAT.md §12 specifies it and
//! argues why nothing a snapshot needs is ever deleted; the pure rules
//! are in `format::condemned`.
//!
//! Writers follow their side of the protocol here too ([`load_condemned`]
//! before the index, [`for_writer`]): a condemned pack is never
//! deduplicated against, re-indexed or compacted by them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::compact::{compact, CompactOptions, CompactReport};
use super::index::MasterIndex;
use super::lock::{all_locks, Judge, LockGuard};
use super::Repository;
use crate::backend::list_all;
use crate::crypto::Domain;
use crate::error::{Error, ErrorKind, Result};
use crate::format::condemned::{
    self as fmt, CondemnedPack, CondemnedRecord, PackState, Reason, Verdict,
};
use crate::format::meta::LockKind;
use crate::format::pack::PackEntry;
use crate::format::{names, Id};
use crate::pipeline::writer::{Writer, WriterOptions};
use crate::progress::Progress;

/// How often a record that vanished while being read makes us list again.
const RELIST_ROUNDS: usize = 3;

/// The condemned records as listed, and the current condemned set.
#[derive(Debug, Default)]
pub struct Condemned {
    /// Every record read: id, object name, store time, content.
    pub records: Vec<(Id, String, Option<DateTime<Utc>>, CondemnedRecord)>,
    /// Records that failed their checks (name, why): writers go on
    /// without them, prune deletes nothing while one exists.
    pub damaged: Vec<(String, String)>,
    pub current: BTreeMap<Id, PackState>,
}

impl Condemned {
    pub fn packs(&self) -> HashSet<Id> {
        self.current.keys().copied().collect()
    }
    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.damaged.is_empty()
    }
}

/// Read every condemned record. A writer calls this after storing its
/// lock and before loading the index (docs/FORMAT.md §12).
pub async fn load_condemned(repo: &Repository) -> Result<Condemned> {
    let mut out = Condemned::default();
    let mut done: HashSet<Id> = HashSet::new();
    for round in 0..=RELIST_ROUNDS {
        let mut vanished = false;
        for o in list_all(repo.backend(), names::CONDEMNED).await? {
            let Some(id) = names::id_of(&o.name) else {
                tracing::warn!("ignoring stray object {} in condemned/", o.name);
                continue;
            };
            if !done.insert(id) {
                continue;
            }
            let r = repo
                .load_sealed(&o.name, Domain::Condemned)
                .await
                .and_then(|plain| fmt::decode(&plain));
            match r {
                Ok(rec) => out.records.push((id, o.name, o.last_modified, rec)),
                // Deleted after a newer record superseding it was stored.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    done.remove(&id);
                    vanished = true;
                }
                Err(e) if e.kind() == ErrorKind::Integrity => {
                    tracing::warn!("damaged condemned record {}: {e}", o.name);
                    out.damaged.push((o.name, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        if !vanished {
            break;
        }
        if round == RELIST_ROUNDS {
            return Err(
                Error::not_found("condemned records keep vanishing while being read")
                    .with_hint("another prune is finishing; retry when it is done"),
            );
        }
    }
    // Drop records another listed record supersedes (already skipped by
    // `current`) from what a prune carries over? No: it supersedes them all.
    let recs: Vec<_> = out
        .records
        .iter()
        .map(|(id, _, t, r)| (*id, *t, r.clone()))
        .collect();
    out.current = fmt::current(&recs);
    Ok(out)
}

/// The index a writer deduplicates against: without condemned packs.
pub fn for_writer(index: &Arc<MasterIndex>, condemned: &Condemned) -> Arc<MasterIndex> {
    let packs = condemned.packs();
    if packs.is_empty() || !packs.iter().any(|p| index.has_pack(p)) {
        return index.clone();
    }
    Arc::new(index.without_packs(&packs))
}

/// Take the prune lock; refuse (deleting nothing) when another prune holds
/// a live one. Two prunes started at once may both refuse: harmless.
pub async fn acquire_prune_lock(repo: &Arc<Repository>) -> Result<LockGuard> {
    let lock = LockGuard::acquire(repo.clone(), LockKind::Prune).await?;
    let own = lock.id().await;
    let locks = all_locks(repo).await?;
    let judge = Judge::after_own_lock(&locks, &own);
    let other = locks.iter().find(|l| {
        l.lock.kind == LockKind::Prune
            && l.lock.holder.as_deref() != Some(lock.holder())
            && !judge.is_mine(l)
            && !judge.holder_is_gone(l)
    });
    if let Some(l) = other {
        let (host, pid) = (l.lock.host.clone(), l.lock.pid);
        let _ = lock.release().await;
        return Err(Error::new(
            ErrorKind::Busy,
            format!("another prune is running ({host}, pid {pid})"),
        )
        .with_hint(
            "only one prune runs at a time; the next scheduled run will do this one's work",
        ));
    }
    Ok(lock)
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// How long a condemned pack stays before it may be deleted.
    pub grace: Duration,
    /// Decide and report, change nothing.
    pub dry_run: bool,
    /// Repack a pack when at least this fraction of its bytes is unused.
    pub repack_unused: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(23 * 3600),
            dry_run: false,
            repack_unused: DEFAULT_REPACK_UNUSED,
        }
    }
}

/// A pack is repacked when at least half of it is unused.
pub const DEFAULT_REPACK_UNUSED: f64 = 0.5;
/// ... and at least this many bytes of it: copying a small pack's few
/// live blobs into yet another pack would win nothing.
pub const MIN_REPACK_UNUSED: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PackLine {
    pub pack: Id,
    pub bytes: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub grace_s: u64,
    /// The store's clock at the start (judging grace and locks).
    pub store_now: Option<DateTime<Utc>>,
    pub snapshots: u64,
    pub packs_before: u64,
    pub bytes_before: u64,
    /// Stored bytes of the blobs the snapshots need.
    pub bytes_referenced: u64,
    pub packs_after: u64,
    pub bytes_after: u64,
    /// Deleted in this run (condemned by an earlier one).
    pub deleted: Vec<PackLine>,
    /// Condemned in this run: deleted by a run after the grace period.
    pub condemned: Vec<PackLine>,
    /// Condemned earlier, needed again: not condemned any more.
    pub reprieved: Vec<PackLine>,
    /// Condemned, not deletable yet (why).
    pub waiting: Vec<PackLine>,
    /// Packs whose needed blobs were copied into new packs.
    pub repacked_packs: u64,
    pub repacked_blobs: u64,
    pub repacked_bytes: u64,
    /// Live writers seen (holder ids) that hold condemned packs back.
    pub live_writers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<CompactReport>,
}

/// Live holders (other than us) in a fresh listing, and the store's now.
/// Without a lock of our own (a dry run), the local clock judges.
async fn live_holders(
    repo: &Repository,
    lock: Option<&LockGuard>,
) -> Result<(HashSet<String>, Option<DateTime<Utc>>)> {
    let locks = all_locks(repo).await?;
    let (judge, holder) = match lock {
        Some(lock) => (
            Judge::after_own_lock(&locks, &lock.id().await),
            Some(lock.holder()),
        ),
        None => (Judge::at(None, Utc::now()), None),
    };
    let live = locks
        .iter()
        .filter(|l| (holder.is_none() || l.lock.holder.as_deref() != holder) && !judge.is_mine(l))
        .filter(|l| !judge.holder_is_gone(l))
        .map(|l| l.lock.holder_key())
        .collect();
    Ok((live, judge.store_now()))
}

/// Collect garbage (see the module doc). The caller holds the prune lock
/// `lock` (none only for a dry run) and has already removed the snapshots
/// the policies drop.
pub async fn collect(
    repo: &Arc<Repository>,
    lock: Option<&LockGuard>,
    opts: &GcOptions,
    progress: &dyn Progress,
) -> Result<GcReport> {
    let mut report = GcReport {
        dry_run: opts.dry_run,
        grace_s: opts.grace.as_secs(),
        ..Default::default()
    };
    // 1. Locks first, then records, then snapshots: a writer not live in
    //    this listing has stored its snapshot (if any) before we list them.
    let (live, store_now) = live_holders(repo, lock).await?;
    report.store_now = store_now;
    let condemned = load_condemned(repo).await?;
    if let Some((name, why)) = condemned.damaged.first() {
        return Err(Error::integrity(format!(
            "condemned record {name} is damaged ({why}); prune deletes nothing while it is"
        ))
        .with_hint(
            "run `usdcop-dr verify`; a damaged record can be removed by hand once no backup runs",
        ));
    }
    // 2. What the snapshots need (listed after the locks).
    // A damaged summary stops the prune: what it references is unknown.
    let (snaps, damaged) = repo
        .load_snapshots_checked(repo.snapshot_ids().await?)
        .await?;
    if let Some((id, e)) = damaged.first() {
        return Err(Error::integrity(format!(
            "snapshot {} is damaged ({e}); prune deletes nothing while it is",
            id.short()
        ))
        .with_hint("run `usdcop-dr verify`; remove the damaged snapshot object once it is known to be lost"));
    }
    report.snapshots = snaps.len() as u64;
    let index = repo.load_index_preferring(condemned.packs()).await?;
    let needed = needed_blobs(repo, &index, &snaps, progress).await?;
    // Bytes each pack holds that a snapshot needs (its chosen copy).
    let mut used: HashMap<Id, u64> = HashMap::new();
    for id in &needed {
        let Some(loc) = index.get(id) else {
            return Err(Error::integrity(format!(
                "chunk {id} is needed by a snapshot but no index lists it; prune deletes nothing"
            ))
            .with_hint("run `usdcop-dr repair index`, then `usdcop-dr verify`"));
        };
        *used.entry(index.pack_id(&loc)).or_default() += loc.stored_len as u64;
        report.bytes_referenced += loc.stored_len as u64;
    }
    // 3. The packs stored (listed after the index was loaded: every
    //    indexed pack is in it unless it is really gone).
    let stored: BTreeMap<Id, u64> = list_all(repo.backend(), names::DATA)
        .await?
        .into_iter()
        .filter_map(|o| Some((names::pack_id_of(&o.name)?, o.size)))
        .collect();
    report.packs_before = stored.len() as u64;
    report.bytes_before = stored.values().sum();
    if let Some(p) = used.keys().find(|p| !stored.contains_key(p)) {
        return Err(Error::integrity(format!(
            "pack {} holds chunks a snapshot needs but is missing; prune deletes nothing",
            names::pack(p)
        ))
        .with_hint("run `usdcop-dr verify` to see which snapshots are damaged"));
    }
    // Index entries of packs that are gone (never needed, checked above).
    let mut drop_entries: HashSet<Id> = index
        .packs()
        .iter()
        .filter(|p| !stored.contains_key(p))
        .copied()
        .collect();

    // 4. Sweep: what the current records say, pack by pack.
    let mut delete: Vec<(Id, u64, Reason)> = vec![];
    let mut carried: Vec<CondemnedPack> = vec![];
    for (p, st) in &condemned.current {
        let Some(&size) = stored.get(p) else {
            // Deleted by an earlier run that died before its last record.
            continue;
        };
        let needed_here = used.get(p).copied().unwrap_or(0) > 0;
        match fmt::verdict(st, store_now, opts.grace, &live, needed_here) {
            Verdict::Delete => delete.push((*p, size, st.reason)),
            Verdict::Reprieve => report.reprieved.push(PackLine {
                pack: *p,
                bytes: size,
                reason: "a snapshot needs it again".into(),
            }),
            Verdict::Wait(why) => {
                report.waiting.push(PackLine {
                    pack: *p,
                    bytes: size,
                    reason: why,
                });
                // A pack whose writers are unknown (a prune died between
                // its records) is condemned afresh below, with a new time.
                if st.writers.is_some() {
                    carried.push(CondemnedPack {
                        id: *p,
                        size,
                        reason: st.reason,
                        since: st.since,
                        writers: st.writers.as_ref().map(|w| w.iter().cloned().collect()),
                    });
                }
            }
        }
    }
    // 5. Mark: packs not condemned that no snapshot needs, and mostly
    //    unused ones to repack.
    let carried_ids: HashSet<Id> = carried.iter().map(|c| c.id).collect();
    let deleting: HashSet<Id> = delete.iter().map(|d| d.0).collect();
    let mut fresh: Vec<CondemnedPack> = vec![];
    let mut repack: Vec<Id> = vec![];
    for (p, &size) in &stored {
        if carried_ids.contains(p) || deleting.contains(p) {
            continue;
        }
        let u = used.get(p).copied().unwrap_or(0);
        let reason = if !index.has_pack(p) {
            Reason::Unindexed
        } else if u == 0 {
            Reason::Unreferenced
        } else {
            let unused = size - u.min(size);
            if unused >= MIN_REPACK_UNUSED && unused as f64 / size as f64 >= opts.repack_unused {
                repack.push(*p);
            }
            continue;
        };
        fresh.push(CondemnedPack {
            id: *p,
            size,
            reason,
            since: None,
            writers: None,
        });
    }
    report.live_writers = live.iter().cloned().collect();
    report.live_writers.sort();

    let Some(lock) = lock.filter(|_| !opts.dry_run) else {
        for (p, size, reason) in &delete {
            report.deleted.push(PackLine {
                pack: *p,
                bytes: *size,
                reason: reason.as_str().into(),
            });
        }
        for c in &fresh {
            report.condemned.push(line(c));
        }
        for p in &repack {
            report.condemned.push(PackLine {
                pack: *p,
                bytes: stored[p],
                reason: "repacked".into(),
            });
        }
        report.repacked_packs = repack.len() as u64;
        finish_sizes(&mut report, &stored);
        return Ok(report);
    };
    let lease = lock.lease();

    // 6. Repack: copy the needed blobs of mostly unused packs into new
    //    packs (indexed before the old ones are condemned).
    if !repack.is_empty() {
        let (blobs, bytes) = repack_packs(repo, &index, &needed, &repack, &lease).await?;
        report.repacked_packs = repack.len() as u64;
        report.repacked_blobs = blobs;
        report.repacked_bytes = bytes;
        for p in &repack {
            fresh.push(CondemnedPack {
                id: *p,
                size: stored[p],
                reason: Reason::Repacked,
                since: None,
                writers: None,
            });
        }
    }
    drop(needed);
    let old_records: Vec<(Id, String)> = condemned
        .records
        .iter()
        .map(|(id, name, _, _)| (*id, name.clone()))
        .collect();
    let changed = !fresh.is_empty() || !delete.is_empty() || !report.reprieved.is_empty();

    // 7. Pending record: the new condemnations (writers not known yet),
    //    the carried ones, and the ones about to be deleted (condemned
    //    until they are gone). Stored before we list the locks.
    let mut pending_id = None;
    let mut pending_time = None;
    if changed {
        let mut packs = carried.clone();
        packs.extend(fresh.iter().cloned());
        for (p, size, reason) in &delete {
            packs.push(CondemnedPack {
                id: *p,
                size: *size,
                reason: *reason,
                since: condemned.current[p].since,
                writers: condemned.current[p]
                    .writers
                    .as_ref()
                    .map(|w| w.iter().cloned().collect()),
            });
        }
        let rec = CondemnedRecord {
            version: fmt::VERSION,
            supersedes: old_records.iter().map(|r| r.0).collect(),
            packs,
        };
        lease.check()?;
        let id = save_record(repo, &rec).await?;
        let meta = repo
            .backend()
            .head(&names::in_dir(names::CONDEMNED, &id))
            .await?;
        pending_id = Some(id);
        pending_time = meta.last_modified;
    }
    // 8. Who could still use a freshly condemned pack: every holder live
    //    in a listing taken after the pending record was stored.
    let (live_after, _) = live_holders(repo, Some(lock)).await?;

    // 9. Index without the packs to delete (and without entries of packs
    //    that are gone), then the packs themselves.
    drop_entries.extend(delete.iter().map(|d| d.0));
    lease.check()?;
    let copts = CompactOptions {
        drop_packs: drop_entries.clone(),
        min_objects: if drop_entries.is_empty() { 2 } else { 1 },
        ..CompactOptions::all()
    };
    let creport = compact(repo, &copts, Some(&lease)).await?;
    report.index = Some(creport);
    let mut still_indexed: HashSet<Id> = HashSet::new();
    if !delete.is_empty() {
        // Only packs no index object names any more are deleted (a
        // compaction cut short by its object limit leaves some).
        let check = repo.load_index_preferring(HashSet::new()).await?;
        still_indexed = delete
            .iter()
            .map(|d| d.0)
            .filter(|p| check.has_pack(p))
            .collect();
    }
    let mut gone_names = vec![];
    for (p, size, reason) in &delete {
        if still_indexed.contains(p) {
            report.waiting.push(PackLine {
                pack: *p,
                bytes: *size,
                reason: "its index entries could not all be removed in this run".into(),
            });
            continue;
        }
        gone_names.push(names::pack(p));
        report.deleted.push(PackLine {
            pack: *p,
            bytes: *size,
            reason: reason.as_str().into(),
        });
    }
    lease.check()?;
    for chunk in gone_names.chunks(1000) {
        repo.backend().delete_many(chunk).await?;
    }

    // 10. The final record: carried packs, packs kept back, and the fresh
    //     ones with their time and writers; then the older records go.
    if let Some(pid) = pending_id {
        let mut packs = carried;
        for (p, size, reason) in &delete {
            if still_indexed.contains(p) {
                let st = &condemned.current[p];
                packs.push(CondemnedPack {
                    id: *p,
                    size: *size,
                    reason: *reason,
                    since: st.since,
                    writers: st.writers.as_ref().map(|w| w.iter().cloned().collect()),
                });
            }
        }
        let mut writers: Vec<String> = live_after.iter().cloned().collect();
        writers.sort();
        for mut c in fresh {
            c.since = pending_time;
            c.writers = Some(writers.clone());
            report.condemned.push(line(&c));
            packs.push(c);
        }
        let mut supersedes: Vec<Id> = old_records.iter().map(|r| r.0).collect();
        supersedes.push(pid);
        lease.check()?;
        let rec = CondemnedRecord {
            version: fmt::VERSION,
            supersedes,
            packs,
        };
        // An empty set needs no record: deleting the old ones says it.
        let mut old: Vec<String> = old_records.into_iter().map(|r| r.1).collect();
        old.push(names::in_dir(names::CONDEMNED, &pid));
        if !rec.packs.is_empty() {
            save_record(repo, &rec).await?;
        }
        repo.backend().delete_many(&old).await?;
    }
    finish_sizes(&mut report, &stored);
    Ok(report)
}

fn line(c: &CondemnedPack) -> PackLine {
    PackLine {
        pack: c.id,
        bytes: c.size,
        reason: c.reason.as_str().into(),
    }
}

fn finish_sizes(report: &mut GcReport, stored: &BTreeMap<Id, u64>) {
    let freed: u64 = report.deleted.iter().map(|d| d.bytes).sum();
    report.packs_after = stored.len() as u64 - report.deleted.len() as u64;
    report.bytes_after = report.bytes_before - freed;
}

async fn save_record(repo: &Repository, rec: &CondemnedRecord) -> Result<Id> {
    repo.save_sealed(names::CONDEMNED, Domain::Condemned, &fmt::encode(rec))
        .await
}

/// Copy the needed blobs of `packs` into new packs (checked on the way:
/// each is decoded and its hash compared before its stored bytes are
/// copied). Returns blobs and stored bytes copied.
async fn repack_packs(
    repo: &Arc<Repository>,
    index: &MasterIndex,
    needed: &HashSet<Id>,
    packs: &[Id],
    lease: &super::lock::Lease,
) -> Result<(u64, u64)> {
    let wanted: HashSet<Id> = packs.iter().copied().collect();
    let opts = WriterOptions {
        lease: Some(lease.clone()),
        ..Default::default()
    };
    let mut writer = Writer::start(repo.clone(), Arc::new(MasterIndex::default()), opts)?;
    let (mut blobs, mut bytes) = (0u64, 0u64);
    for p in index.pack_iter() {
        if !wanted.contains(&p.id) {
            continue;
        }
        let keep: Vec<_> = p
            .blobs
            .into_iter()
            .filter(|b| needed.contains(&b.id))
            .collect();
        for b in keep {
            let stored = repo
                .read_pack_range(&p.id, b.offset as u64, b.stored_len as u64, || {
                    format!("chunk {}", b.id.short())
                })
                .await?;
            let key = repo.key().clone();
            let entry = PackEntry {
                kind: b.kind,
                compression: b.compression,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
                id: b.id,
            };
            blobs += 1;
            bytes += b.stored_len as u64;
            writer = tokio::task::spawn_blocking(move || -> Result<Writer> {
                super::decode_blob(&key, &stored, entry.compression, entry.raw_len, &entry.id)?;
                writer.copy_sealed_blob(entry, stored.to_vec())?;
                Ok(writer)
            })
            .await
            .map_err(|e| Error::io(format!("repack task failed: {e}")))??;
        }
    }
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| Error::io(format!("repack task failed: {e}")))??;
    Ok((blobs, bytes))
}

/// A tree node still to read: which snapshot led to it first (for
/// messages), its id, what its parent says of it, and what it lists.
struct NodeRef {
    snapshot: Id,
    id: Id,
    count: Option<u64>,
    level: Option<u32>,
    chunk_list: bool,
}

/// Every blob the snapshots need: their tree nodes, their entries' chunk
/// tree nodes and data chunks. Nodes are content-addressed, so a node met
/// before (in this snapshot or another) is not read again, nor anything
/// below it: an unchanged directory of 365 nightly snapshots is read once.
/// Level by level, [`READ_CONCURRENCY`] node reads in flight. Any node
/// that cannot be read or decoded fails the whole (prune deletes nothing).
pub async fn needed_blobs(
    repo: &Repository,
    index: &MasterIndex,
    snaps: &[(Id, crate::format::snapshot::Snapshot)],
    progress: &dyn Progress,
) -> Result<HashSet<Id>> {
    use crate::format::snapshot::Entry;
    use crate::format::tree::{decode_node, Node};
    use futures::StreamExt;
    let mut needed: HashSet<Id> = HashSet::new();
    let mut frontier: Vec<NodeRef> = vec![];
    for (sid, s) in snaps {
        if needed.insert(s.tree) {
            frontier.push(NodeRef {
                snapshot: *sid,
                id: s.tree,
                count: Some(s.entry_count),
                level: None,
                chunk_list: false,
            });
        }
    }
    let mut nodes = 0u64;
    while !frontier.is_empty() {
        let reads: Vec<_> = futures::stream::iter(std::mem::take(&mut frontier))
            .map(|r| async move {
                let plain = repo.read_blob(index, &r.id).await;
                (r, plain)
            })
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        for (r, plain) in reads {
            nodes += 1;
            let fail = |e: Error| {
                Error::new(
                    e.kind(),
                    format!(
                        "snapshot {}: list tree node {}: {e}; prune deletes nothing",
                        r.snapshot.short(),
                        r.id.short()
                    ),
                )
                .with_hint("run `usdcop-dr verify` and repair or forget that snapshot first")
            };
            let plain = plain.map_err(fail)?;
            // Children to read (id, count, level, chunk list?) and data chunks.
            let mut kids: Vec<(Id, Option<u64>, Option<u32>, bool)> = vec![];
            if r.chunk_list {
                match decode_node::<Id>(&plain, &r.id, r.count, r.level).map_err(fail)? {
                    Node::Leaf(ids) => needed.extend(ids),
                    Node::Inner { level, children } => {
                        kids.extend(
                            children
                                .into_iter()
                                .map(|c| (c.id, Some(c.count), Some(level - 1), true)),
                        );
                    }
                }
            } else {
                match decode_node::<Entry>(&plain, &r.id, r.count, r.level).map_err(fail)? {
                    Node::Leaf(entries) => {
                        for e in entries {
                            if let Some(root) = e.chunk_tree {
                                kids.push((root, None, None, true));
                            }
                            needed.extend(e.chunks);
                        }
                    }
                    Node::Inner { level, children } => {
                        kids.extend(
                            children
                                .into_iter()
                                .map(|c| (c.id, Some(c.count), Some(level - 1), false)),
                        );
                    }
                }
            }
            for (id, count, level, chunk_list) in kids {
                if needed.insert(id) {
                    frontier.push(NodeRef {
                        snapshot: r.snapshot,
                        id,
                        count,
                        level,
                        chunk_list,
                    });
                }
            }
        }
        progress.set_item(&format!(
            "{nodes} tree nodes read, {} blobs needed",
            needed.len()
        ));
    }
    Ok(needed)
}

/// Tree node reads in flight while prune reads the snapshots.
const READ_CONCURRENCY: usize = 16;
