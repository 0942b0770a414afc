//! `forget` and `prune`: apply the retention policies (`retention`), remove
//! the snapshots they drop, and (prune) collect garbage in two phases
//! (`repository::gc`, docs/FORMAT.md §12). Names as restic's users know
//! them: `forget` removes snapshots only, `prune` does that and frees the
//! space (restic's `forget --prune`); kopia's users know it as snapshot
//! expiry plus maintenance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::format::{names, Id};
use crate::progress::Progress;
use crate::repository::gc::{self, GcOptions, GcReport};
use crate::repository::Repository;
use crate::retention::{self, Decision, PolicySet, SnapshotInfo};

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Decide and report; change nothing (no lock, no deletion).
    pub dry_run: bool,
    /// Collect garbage after removing snapshots (`prune`), or not (`forget`).
    pub collect: bool,
    pub grace: Duration,
    pub min_age: Duration,
    pub timezone: chrono_tz::Tz,
    pub repack_unused: f64,
    /// The policies' "now" (default: the clock).
    pub now: Option<DateTime<Utc>>,
}

/// One snapshot's verdict, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotLine {
    pub id: Id,
    pub time: DateTime<Utc>,
    pub host: String,
    pub keep: bool,
    /// Every rule that keeps it (empty: removed).
    pub reasons: Vec<String>,
    /// Stored bytes it added when it was made.
    pub bytes_stored_new: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceLines {
    pub source: String,
    pub kind: String,
    pub kept: u64,
    pub removed: u64,
    pub snapshots: Vec<SnapshotLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub command: &'static str,
    pub dry_run: bool,
    pub time: DateTime<Utc>,
    pub timezone: String,
    pub repository: String,
    pub snapshots_before: u64,
    pub snapshots_removed: u64,
    pub snapshots_after: u64,
    pub sources: Vec<SourceLines>,
    /// Garbage collection (`prune` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcReport>,
    /// WAL no kept base backup needs (`prune` only, when base backups exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalPruneReport>,
}

/// What prune did with the WAL archive (docs/FORMAT.md §14).
#[derive(Debug, Clone, Serialize)]
pub struct WalPruneReport {
    /// The first segment kept: the start of the oldest kept base backup.
    pub keep_from: Option<String>,
    pub files_deleted: u64,
    pub bytes_deleted: u64,
    /// Why nothing was deleted this time although files qualified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
}

/// Delete the WAL no kept base backup needs. Deferred while a backup runs
/// (a base backup in progress may have started before the oldest kept
/// one's start; its WAL must stay): the next prune does it.
async fn expire_wal(
    repo: &Repository,
    kept: &[&crate::format::snapshot::Snapshot],
    lock: Option<&crate::repository::lock::LockGuard>,
) -> Result<Option<WalPruneReport>> {
    use crate::format::basebackup::BaseBackupInfo;
    use crate::format::meta::LockKind;
    let mut bases = vec![];
    for s in kept {
        if s.source.kind == crate::format::snapshot::SourceKind::Wal {
            if let Some(b) = BaseBackupInfo::from_metadata(&s.metadata)? {
                bases.push(b);
            }
        }
    }
    if bases.is_empty() {
        return Ok(None);
    }
    let listed = crate::backend::list_all(repo.backend(), crate::format::wal::DIR).await?;
    let names: Vec<String> = listed.iter().map(|o| o.name.clone()).collect();
    let decided = retention::wal::expire(&names, &bases);
    let sizes: BTreeMap<&str, u64> = listed.iter().map(|o| (o.name.as_str(), o.size)).collect();
    let bytes: u64 = decided.delete.iter().map(|n| sizes[n.as_str()]).sum();
    let mut report = WalPruneReport {
        keep_from: decided.keep_from.clone(),
        files_deleted: decided.delete.len() as u64,
        bytes_deleted: bytes,
        deferred: None,
    };
    let Some(lock) = lock else {
        return Ok(Some(report)); // a dry run: what would go
    };
    if decided.delete.is_empty() {
        return Ok(Some(report));
    }
    let locks = crate::repository::lock::all_locks(repo).await?;
    let judge = crate::repository::lock::Judge::after_own_lock(&locks, &lock.id().await);
    if let Some(l) = locks.iter().find(|l| {
        l.lock.kind == LockKind::Backup
            && !judge.is_mine(l)
            && !judge.expired(l)
            && !judge.holder_is_gone(l)
    }) {
        report.deferred = Some(format!(
            "a backup is running ({}, pid {}): WAL is deleted by a later prune",
            l.lock.host, l.lock.pid
        ));
        report.files_deleted = 0;
        report.bytes_deleted = 0;
        return Ok(Some(report));
    }
    lock.lease().check()?;
    for chunk in decided.delete.chunks(1000) {
        repo.backend().delete_many(chunk).await?;
    }
    Ok(Some(report))
}

pub async fn run(
    repo: Arc<Repository>,
    policies: &PolicySet,
    opts: &PruneOptions,
    progress: &dyn Progress,
) -> Result<PruneReport> {
    repo.check_writable()?;
    let now = opts.now.unwrap_or_else(Utc::now);
    // A damaged condemned record stops prune before anything changes.
    if opts.collect {
        let c = gc::load_condemned(&repo).await?;
        if let Some((name, why)) = c.damaged.first() {
            return Err(crate::Error::integrity(format!(
                "condemned record {name} is damaged ({why}); prune changes nothing while it is"
            ))
            .with_hint("run `usdcop-dr verify`"));
        }
    }
    let lock = if opts.dry_run {
        None
    } else {
        Some(gc::acquire_prune_lock(&repo).await?)
    };
    let result = async {
        let snaps = repo.snapshots().await?;
        let infos: Vec<SnapshotInfo> = snaps
            .iter()
            .map(|(id, s)| SnapshotInfo {
                id: *id,
                time: s.time,
                source_name: s.source.name.clone(),
                source_kind: s.source.kind,
                host: s.host.clone(),
                tags: s.tags.clone(),
            })
            .collect();
        let decisions = retention::evaluate(&infos, policies, now, opts.timezone, opts.min_age);
        let by_id: BTreeMap<Id, &Decision> = decisions.iter().map(|d| (d.id, d)).collect();
        let mut sources: BTreeMap<(String, String), SourceLines> = BTreeMap::new();
        let mut remove: Vec<Id> = vec![];
        // Newest first within each source, as people read them.
        for (id, s) in snaps.iter().rev() {
            let d = by_id[id];
            let e = sources
                .entry((s.source.name.clone(), s.source.kind.as_str().to_owned()))
                .or_insert_with(|| SourceLines {
                    source: s.source.name.clone(),
                    kind: s.source.kind.as_str().to_owned(),
                    kept: 0,
                    removed: 0,
                    snapshots: vec![],
                });
            if d.keep {
                e.kept += 1;
            } else {
                e.removed += 1;
                remove.push(*id);
            }
            e.snapshots.push(SnapshotLine {
                id: *id,
                time: s.time,
                host: s.host.clone(),
                keep: d.keep,
                reasons: d.reasons.iter().map(|r| r.to_string()).collect(),
                bytes_stored_new: s.totals.bytes_stored_new,
            });
        }
        let mut report = PruneReport {
            command: if opts.collect { "prune" } else { "forget" },
            dry_run: opts.dry_run,
            time: Utc::now(),
            timezone: opts.timezone.name().to_owned(),
            repository: repo.backend().location(),
            snapshots_before: snaps.len() as u64,
            snapshots_removed: remove.len() as u64,
            snapshots_after: (snaps.len() - remove.len()) as u64,
            sources: sources.into_values().collect(),
            gc: None,
            wal: None,
        };
        if let Some(lock) = &lock {
            if !remove.is_empty() {
                lock.lease().check()?;
                let names: Vec<String> = remove
                    .iter()
                    .map(|id| names::in_dir(names::SNAPSHOTS, id))
                    .collect();
                for chunk in names.chunks(1000) {
                    repo.backend().delete_many(chunk).await?;
                }
                repo.forget_cached_snapshots(&remove);
            }
        }
        if opts.collect {
            let gopts = GcOptions {
                grace: opts.grace,
                dry_run: opts.dry_run,
                repack_unused: opts.repack_unused,
            };
            let mut g = gc::collect(&repo, lock.as_ref(), &gopts, progress).await?;
            if opts.dry_run {
                // The dry run's garbage counts the removed snapshots as gone.
                g.snapshots = report.snapshots_after;
            }
            report.gc = Some(g);
            let removed: std::collections::HashSet<&Id> = remove.iter().collect();
            let kept: Vec<&crate::format::snapshot::Snapshot> = snaps
                .iter()
                .filter(|(id, _)| !removed.contains(id))
                .map(|(_, s)| s)
                .collect();
            report.wal = expire_wal(&repo, &kept, lock.as_ref()).await?;
        }
        Ok(report)
    }
    .await;
    if let Some(lock) = lock {
        let _ = lock.release().await;
    }
    result
}

fn human(n: u64) -> String {
    crate::progress::human_bytes(n)
}

/// The report for people (`--report FILE`, and the terminal).
pub fn render_markdown(r: &PruneReport) -> String {
    let tz: chrono_tz::Tz = r.timezone.parse().unwrap_or(chrono_tz::UTC);
    let local = |t: &DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string();
    let mut o = String::new();
    let what = if r.dry_run {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    o += &format!("# Retention {} report{what}\n\n", r.command);
    o += &format!(
        "- Repository: `{}`\n- Run: {} (times in {})\n- Snapshots: {} before, {} removed, {} after\n",
        r.repository,
        local(&r.time),
        r.timezone,
        r.snapshots_before,
        r.snapshots_removed,
        r.snapshots_after
    );
    if let Some(g) = &r.gc {
        let sum = |v: &[gc::PackLine]| v.iter().map(|p| p.bytes).sum::<u64>();
        o += &format!(
            "- Stored: {} in {} packs before, {} in {} packs after; snapshots reference {}\n",
            human(g.bytes_before),
            g.packs_before,
            human(g.bytes_after),
            g.packs_after,
            human(g.bytes_referenced)
        );
        o += &format!(
            "- Freed now: {} packs, {}{}\n",
            g.deleted.len(),
            human(sum(&g.deleted)),
            if r.dry_run { " (would be)" } else { "" }
        );
        o += &format!(
            "- Condemned now (deleted by a prune at least {} later): {} packs, {}\n",
            humantime::format_duration(Duration::from_secs(g.grace_s)),
            g.condemned.len(),
            human(sum(&g.condemned))
        );
        if g.repacked_packs > 0 {
            o += &format!(
                "- Repacked: {} packs ({} blobs, {} copied)\n",
                g.repacked_packs,
                g.repacked_blobs,
                human(g.repacked_bytes)
            );
        }
        if !g.waiting.is_empty() {
            o += &format!(
                "- Condemned, waiting: {} packs, {}\n",
                g.waiting.len(),
                human(sum(&g.waiting))
            );
        }
        if !g.reprieved.is_empty() {
            o += &format!("- Reprieved (needed again): {} packs\n", g.reprieved.len());
        }
    }
    if let Some(w) = &r.wal {
        o += &format!(
            "- WAL archive: kept from {} (the oldest kept base backup's start); {} files, {} {}{}\n",
            w.keep_from.as_deref().unwrap_or("-"),
            w.files_deleted,
            human(w.bytes_deleted),
            if r.dry_run { "would be deleted" } else { "deleted" },
            w.deferred
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    for s in &r.sources {
        o += &format!(
            "\n## {} ({}): {} kept, {} removed\n\n| snapshot | time | host | decision | why |\n|---|---|---|---|---|\n",
            s.source, s.kind, s.kept, s.removed
        );
        for l in &s.snapshots {
            o += &format!(
                "| `{}` | {} | {} | {} | {} |\n",
                l.id.short(),
                local(&l.time),
                l.host,
                if l.keep { "keep" } else { "**remove**" },
                if l.reasons.is_empty() {
                    "no rule keeps it".to_owned()
                } else {
                    l.reasons.join("; ")
                }
            );
        }
    }
    if let Some(g) = &r.gc {
        let section = |o: &mut String, title: &str, v: &[gc::PackLine]| {
            if v.is_empty() {
                return;
            }
            *o += &format!("\n## {title}\n\n| pack | size | reason |\n|---|---|---|\n");
            for p in v {
                *o += &format!(
                    "| `{}` | {} | {} |\n",
                    p.pack.short(),
                    human(p.bytes),
                    p.reason
                );
            }
        };
        section(&mut o, "Packs deleted", &g.deleted);
        section(&mut o, "Packs condemned", &g.condemned);
        section(&mut o, "Packs condemned, waiting", &g.waiting);
        section(&mut o, "Packs reprieved", &g.reprieved);
    }
    o
}
