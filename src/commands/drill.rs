//! `drill`: restore the newest snapshot of every configured source into
//! the configuration's scratch targets (`[drill]`), prove it intact, time
//! it, judge the RTO and RPO, store the record in the repository
//! (`drills/<id>`, docs/FORMAT.md §15) and remove every scratch target —
//! also after a failure, and on SIGINT/SIGTERM (the clean-ups are
//! registered with [`crate::scratch`] while they are needed).
//!
//! The drill touches only what is its own: a database it creates under a
//! fresh name (and drops), a scratch bucket it found empty (and empties),
//! a directory it creates below `scratch_dir` (and removes).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::backend::{list_all, PutMode};
use crate::config::{DrillSettings, Settings, SourceSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::format::drill::{self, Check, DrillRecord, SourceDrill, Timing};
use crate::format::snapshot::{Snapshot, SourceKind};
use crate::format::Id;
use crate::progress::Progress;
use crate::repository::Repository;

/// Whether the drill runs the point-in-time check of the `[wal]` source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PitrMode {
    /// When `[wal]` is configured and its source is drilled.
    #[default]
    Auto,
    /// Always: an error when it cannot be (`--point-in-time`).
    Require,
    /// Never (`--no-point-in-time`).
    Skip,
}

pub struct DrillOptions {
    /// Only these sources (empty: every configured one).
    pub sources: Vec<String>,
    pub pitr: PitrMode,
    /// Ranged reads in flight from the repository.
    pub read_concurrency: Option<usize>,
}

/// Notes the moment the first restored byte is reported.
struct FirstByte {
    inner: Arc<dyn Progress>,
    started: Instant,
    first: Mutex<Option<f64>>,
    seen: AtomicBool,
}

impl FirstByte {
    fn new(inner: Arc<dyn Progress>) -> Arc<FirstByte> {
        Arc::new(FirstByte {
            inner,
            started: Instant::now(),
            first: Mutex::new(None),
            seen: AtomicBool::new(false),
        })
    }
    fn first_byte_s(&self) -> Option<f64> {
        *self.first.lock().unwrap()
    }
}

impl Progress for FirstByte {
    fn set_total(&self, b: u64) {
        self.inner.set_total(b)
    }
    fn add_bytes(&self, b: u64) {
        if b > 0 && !self.seen.swap(true, Ordering::Relaxed) {
            *self.first.lock().unwrap() = Some(self.started.elapsed().as_secs_f64());
        }
        self.inner.add_bytes(b)
    }
    fn set_item(&self, n: &str) {
        self.inner.set_item(n)
    }
    fn warn(&self, m: &str) {
        self.inner.warn(m)
    }
    fn warning(&self, w: &crate::progress::Warning) {
        self.inner.warning(w)
    }
}

/// A name no one else uses: `usdcop_dr_drill_<utc>_<random>`.
fn scratch_name(now: DateTime<Utc>) -> String {
    use rand::RngCore;
    let mut r = [0u8; 3];
    rand::rngs::OsRng.fill_bytes(&mut r);
    format!(
        "usdcop_dr_drill_{}_{}",
        now.format("%Y%m%d%H%M%S"),
        hex::encode(r)
    )
}

/// The newest snapshot of `name` of `kind`.
fn newest<'a>(
    snaps: &'a [(Id, Snapshot)],
    name: &str,
    kind: SourceKind,
) -> Option<&'a (Id, Snapshot)> {
    snaps
        .iter()
        .filter(|(_, s)| s.source.name == name && s.source.kind == kind)
        .max_by_key(|(_, s)| s.time)
}

pub async fn run(
    repo: Arc<Repository>,
    settings: &Settings,
    opts: &DrillOptions,
    progress: Arc<dyn Progress>,
) -> Result<(Id, DrillRecord)> {
    let d = settings.drill.as_ref().ok_or_else(|| {
        Error::usage(format!("drill needs a [drill] section in {}", settings.file.display()))
            .with_hint("add [drill] scratch_dir = \"/var/tmp/usdcop-dr-drill\" and the scratch targets your sources need (docs/OPERATIONS.md)")
    })?;
    for name in &opts.sources {
        if settings.source(name).is_none() {
            return Err(Error::usage(format!(
                "no source named {name:?} in {}",
                settings.file.display()
            )));
        }
    }
    let chosen: Vec<_> = settings
        .sources
        .iter()
        .filter(|s| opts.sources.is_empty() || opts.sources.contains(&s.name))
        .collect();
    if chosen.is_empty() {
        return Err(Error::usage("no sources configured: nothing to drill"));
    }
    let partial = chosen.len() < settings.sources.len();
    let pitr_source = match (opts.pitr, &settings.wal) {
        (PitrMode::Skip, _) => None,
        (_, Some(w)) if chosen.iter().any(|s| s.name == w.source) => Some(w.source.clone()),
        (PitrMode::Auto, _) => None,
        (PitrMode::Require, None) => {
            return Err(Error::usage(format!(
            "--point-in-time needs a [wal] section in {}: there is no WAL archive to recover from",
            settings.file.display()
        )))
        }
        (PitrMode::Require, Some(w)) => {
            return Err(Error::usage(format!(
                "--point-in-time checks the [wal] source {:?}, which --source leaves out",
                w.source
            )))
        }
    };
    let started = Utc::now();
    let snaps = repo.snapshots().await?;
    let rpo_s = settings.objectives.rpo.as_secs_f64();
    // With WAL archiving the newest restorable point of its source is the
    // archive's newest recoverable time (read before the drill's own
    // marker makes it "now").
    let wal_newest = match &settings.wal {
        Some(_) => match crate::repository::wal_archive::load(&repo).await {
            Ok(map) => map.newest_recoverable_time(),
            Err(e) => {
                progress.warn(&format!("cannot read the WAL archive: {e}"));
                None
            }
        },
        None => None,
    };
    let name = scratch_name(started);
    let run_dir = d.scratch_dir.join(&name);
    // Removed on a signal too (after the clean-ups, which stop a
    // recovered copy's server first).
    let _run_dir_registered = crate::scratch::register_path(&run_dir)
        .map_err(|e| Error::io(format!("not drilling into {}: {e}", run_dir.display())))?;
    let mut results = vec![];
    for s in chosen {
        let kind = s.spec.kind();
        let newest = newest(&snaps, &s.name, kind);
        let snap_time = newest.map(|(_, snap)| snap.time);
        let is_wal = settings.wal.as_ref().is_some_and(|w| w.source == s.name);
        let rpo = match (is_wal, wal_newest) {
            (true, Some(w)) if snap_time.is_none_or(|t| w > t) => {
                drill::rpo(Some(w), "wal", rpo_s, Utc::now())
            }
            _ => drill::rpo(snap_time, "snapshot", rpo_s, Utc::now()),
        };
        let mut sd = SourceDrill {
            source: s.name.clone(),
            kind,
            snapshot: newest.map(|(id, _)| *id),
            snapshot_time: newest.map(|(_, snap)| snap.time),
            target: String::new(),
            restore: None,
            checks: vec![],
            error: None,
            rpo,
            pitr: None,
        };
        if pitr_source.as_deref() == Some(s.name.as_str()) {
            if let Err(e) = std::fs::create_dir_all(&run_dir) {
                return Err(Error::io(format!(
                    "cannot create {}: {e}",
                    run_dir.display()
                )));
            }
            let (p, check) = super::drill_pitr::check(&super::drill_pitr::Ctx {
                repo: &repo,
                settings,
                source: s,
                run_dir: &run_dir,
                drill_name: &name,
                read_concurrency: opts.read_concurrency,
                progress: progress.clone(),
            })
            .await;
            sd.pitr = Some(p);
            sd.checks.push(check);
        }
        let Some((id, snap)) = newest else {
            sd.error = Some(format!(
                "source {:?} has no {} snapshot",
                s.name,
                kind.as_str()
            ));
            results.push(sd);
            continue;
        };
        let fb = FirstByte::new(progress.clone());
        let clock = Instant::now();
        let outcome = match &s.spec {
            SourceSpec::Postgres { .. } => {
                drill_postgres(&repo, d, *id, snap, &mut sd, fb.clone(), opts).await
            }
            SourceSpec::Bucket { .. } => {
                drill_bucket(&repo, d, *id, snap, &mut sd, fb.clone(), opts).await
            }
            SourceSpec::Files { .. } => {
                drill_files(&repo, &run_dir, *id, snap, &mut sd, fb.clone(), opts).await
            }
        };
        match outcome {
            Ok(bytes) => {
                sd.restore = Some(Timing {
                    first_byte_s: fb.first_byte_s(),
                    total_s: clock.elapsed().as_secs_f64(),
                    bytes,
                })
            }
            // A damaged repository is what a drill is for: recorded, the
            // drill goes on. An error of the drill's own (a scratch
            // target that is not scratch, unreachable) stops it.
            Err(e) if matches!(e.kind(), ErrorKind::Integrity | ErrorKind::NotFound) => {
                sd.error = Some(e.to_string());
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                let e = e.context(format!("drill of source {:?}", s.name));
                // Stored as a failed drill: the history and the metrics
                // show a drill that could not be done.
                results.push(sd);
                let record =
                    new_record(&repo, started, partial, results, None, Some(e.to_string()));
                // Not when a signal stopped it (the clean-ups end it).
                if crate::scratch::stopping() {
                    return Err(e);
                }
                if let Err(store) = store(&repo, &record).await {
                    tracing::warn!("the failed drill's record could not be stored: {store}");
                }
                return Err(e);
            }
        }
        results.push(sd);
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    let rto = drill::rto(
        &results,
        settings.objectives.rto.map(|d| d.as_secs_f64()),
        partial,
    );
    let record = new_record(&repo, started, partial, results, rto, None);
    let id = store(&repo, &record).await?;
    Ok((id, record))
}

/// The record of a drill that started at `started`; with `error` (it
/// stopped on an error of its own) it failed, else the verdict rule says.
fn new_record(
    repo: &Repository,
    started: DateTime<Utc>,
    partial: bool,
    sources: Vec<SourceDrill>,
    rto: Option<drill::Rto>,
    error: Option<String>,
) -> DrillRecord {
    let verdict = match error {
        Some(_) => drill::Verdict::CheckFailed,
        None => drill::verdict(&sources, rto.as_ref()),
    };
    DrillRecord {
        version: drill::VERSION,
        started,
        finished: Utc::now(),
        host: crate::repository::hostname(),
        program_version: env!("CARGO_PKG_VERSION").into(),
        repository: repo.backend().location(),
        partial,
        verdict,
        rto,
        sources,
        error,
    }
}

/// Store `record` as `drills/<id>`.
async fn store(repo: &Repository, record: &DrillRecord) -> Result<Id> {
    let sealed = record.seal(repo.key());
    let id = Id::hash(&sealed);
    repo.backend()
        .put(
            &format!("{}{id}", drill::DIR),
            sealed.into(),
            PutMode::Create,
        )
        .await?;
    Ok(id)
}

/// Into a database of its own on the scratch server, created by the
/// restore and dropped after: the picture's counts and checksums checked.
async fn drill_postgres(
    repo: &Arc<Repository>,
    d: &DrillSettings,
    id: Id,
    snap: &Snapshot,
    sd: &mut SourceDrill,
    progress: Arc<FirstByte>,
    opts: &DrillOptions,
) -> Result<u64> {
    let dsn = d.postgres_dsn.as_deref().ok_or_else(|| {
        Error::usage("[drill] postgres_dsn is not set: a postgres source needs a scratch server")
    })?;
    let admin = crate::postgres::Dsn::parse(dsn)?;
    let name = scratch_name(Utc::now());
    let target = admin.with_dbname(&name)?;
    sd.target = format!("database {name} on {}", admin.endpoint());
    let guard = {
        let (admin, name) = (admin.clone(), name.clone());
        ScratchCleanup::register(move || {
            let (admin, name) = (admin.clone(), name.clone());
            Box::pin(async move { drop_database(&admin, &name).await })
        })
    };
    let r = super::restore_postgres::run(
        repo.clone(),
        id,
        snap,
        super::restore_postgres::PgRestoreOptions {
            target,
            create: true,
            clean: false,
            jobs: 1,
            staging_dir: None,
            no_owner: true,
            pg_restore: None,
            globals: false,
            read_concurrency: opts.read_concurrency,
        },
        progress,
    )
    .await;
    let dropped = guard.now().await;
    let r = r?;
    sd.checks.push(Check {
        what: format!(
            "{} tables: row counts ({} rows) and checksums ({} tables) against the snapshot's picture",
            r.tables, r.rows, r.tables_checksummed
        ),
        ok: r.differences.is_empty(),
        detail: r
            .differences
            .iter()
            .map(|x| format!("{}: {}", x.table, x.problem))
            .collect::<Vec<_>>()
            .join("; "),
    });
    if let Err(e) = dropped {
        return Err(e.context(format!("dropping the drill's database {name}")));
    }
    Ok(r.bytes)
}

/// A scratch target's removal, run at the end of its step
/// ([`ScratchCleanup::now`]) or, if the run is stopped first, by the signal
/// handler (registered with [`crate::scratch::register_cleanup`]).
pub(super) struct ScratchCleanup {
    run: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>,
    _registered: crate::scratch::CleanupGuard,
}

impl ScratchCleanup {
    pub(super) fn register(
        run: impl Fn() -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync + 'static,
    ) -> ScratchCleanup {
        let run: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync> =
            Arc::new(run);
        let on_signal = run.clone();
        let registered = crate::scratch::register_cleanup(Box::new(move || {
            Box::pin(async move {
                let _ = on_signal().await;
            })
        }));
        ScratchCleanup {
            run,
            _registered: registered,
        }
    }

    pub(super) async fn now(self) -> Result<()> {
        (self.run)().await
    }
}

async fn drop_database(admin: &crate::postgres::Dsn, name: &str) -> Result<()> {
    let client = crate::postgres::inspect::connect(admin).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            crate::postgres::inspect::quote_ident(name)
        ))
        .await
        .map_err(|e| crate::postgres::inspect::db_err("dropping the drill database", e))
}

/// Each bucket of the snapshot into the scratch bucket (found empty),
/// checked after upload, then emptied.
async fn drill_bucket(
    repo: &Arc<Repository>,
    d: &DrillSettings,
    id: Id,
    snap: &Snapshot,
    sd: &mut SourceDrill,
    progress: Arc<FirstByte>,
    opts: &DrillOptions,
) -> Result<u64> {
    let bucket = d.bucket.as_deref().ok_or_else(|| {
        Error::usage("[drill] bucket is not set: a bucket source needs a scratch bucket")
    })?;
    let s3 = crate::backend::s3::S3Options {
        endpoint: d.bucket_endpoint.clone(),
        profile: d.profile.clone(),
        ..Default::default()
    };
    let client =
        crate::source::bucket::BucketClient::connect(&s3, crate::backend::s3::StoreRole::Target)
            .await?;
    let scratch = Arc::new(client.backend(bucket)?);
    sd.target = format!("bucket {bucket} of {}", client.store());
    if !list_all(scratch.as_ref(), "").await?.is_empty() {
        return Err(Error::usage(format!(
            "the drill's scratch bucket {bucket} is not empty: a drill writes only into an empty bucket (it empties it afterwards)"
        ))
        .with_hint("empty it by hand if it holds a killed drill's leftovers, or name another scratch bucket"));
    }
    let index = repo.load_index().await?;
    let mut held = std::collections::BTreeSet::new();
    let mut entries = repo.entries(&index, snap);
    while let Some(e) = entries.next().await? {
        if let Some(o) = &e.object {
            held.insert(o.bucket.clone());
        }
    }
    let buckets = super::restore_bucket::buckets_of(snap, held.iter());
    let mut bytes = 0;
    for b in buckets {
        let guard = {
            let scratch = scratch.clone();
            ScratchCleanup::register(move || {
                let scratch = scratch.clone();
                Box::pin(async move { empty_bucket(&scratch).await })
            })
        };
        let r = super::restore_bucket::run(
            repo.clone(),
            id,
            snap,
            super::restore_bucket::BucketRestoreOptions {
                targets: super::restore_bucket::BucketTargets::Into {
                    bucket: bucket.to_owned(),
                    from: vec![b.clone()],
                },
                prefix: String::new(),
                overwrite: false,
                staging_dir: Some(d.scratch_dir.clone()),
                s3: s3.clone(),
                read_concurrency: opts.read_concurrency,
            },
            progress.clone(),
        )
        .await;
        let emptied = guard.now().await;
        let r = r?;
        bytes += r.bytes;
        let problems: Vec<String> = r
            .failed
            .iter()
            .map(|f| format!("{b}/{}: {}", f.key, f.error))
            .chain(
                r.conflicts
                    .iter()
                    .map(|c| format!("{b}/{}: {}", c.key, c.reason)),
            )
            .collect();
        sd.checks.push(Check {
            what: format!(
                "bucket {b}: {} objects restored and read back (content, content type, metadata)",
                r.objects
            ),
            ok: problems.is_empty(),
            detail: problems.join("; "),
        });
        emptied.map_err(|e| e.context(format!("emptying the scratch bucket {bucket}")))?;
    }
    Ok(bytes)
}

/// Deletes every object of the scratch bucket (which the drill found empty).
async fn empty_bucket(b: &crate::backend::s3::S3Backend) -> Result<()> {
    use crate::backend::Backend;
    let names: Vec<String> = list_all(b, "").await?.into_iter().map(|o| o.name).collect();
    for chunk in names.chunks(1000) {
        b.delete_many(chunk).await?;
    }
    Ok(())
}

/// Into a directory of the run below `scratch_dir` (every file's SHA-256
/// checked as it is written), removed after.
async fn drill_files(
    repo: &Arc<Repository>,
    run_dir: &Path,
    id: Id,
    snap: &Snapshot,
    sd: &mut SourceDrill,
    progress: Arc<FirstByte>,
    opts: &DrillOptions,
) -> Result<u64> {
    let dir: PathBuf = run_dir.join(&sd.source);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
    let _registered = crate::scratch::register_path(&dir)
        .map_err(|e| Error::io(format!("not drilling into {}: {e}", dir.display())))?;
    sd.target = format!("directory {}", dir.display());
    let r = super::restore::run(
        repo.clone(),
        id,
        snap,
        super::restore::RestoreOptions {
            // As a real restore does by default: the RTO measures it.
            sync: super::restore::SyncMode::End,
            target: super::restore::RestoreTarget::Dir(dir.clone()),
            include: vec![],
            read_concurrency: opts.read_concurrency,
        },
        progress,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    sd.checks.push(Check {
        what: format!(
            "{} files, {} directories, {} symlinks: every file's SHA-256, mode, owner and time",
            r.files, r.dirs, r.symlinks
        ),
        ok: r.failed.is_empty(),
        detail: r
            .failed
            .iter()
            .take(20)
            .map(|f| format!("{}: {}", f.path, f.error))
            .collect::<Vec<_>>()
            .join("; "),
    });
    Ok(r.bytes)
}

/// The newest drill, as `status` and the metrics show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastDrill {
    pub id: String,
    pub short_id: String,
    pub started: DateTime<Utc>,
    pub verdict: drill::Verdict,
    pub exit_code: i32,
    /// Only some sources were drilled.
    pub partial: bool,
    /// The measured RTO (`null`: partial, or nothing restored).
    pub rto_achieved_s: Option<f64>,
    pub rto_met: Option<bool>,
    /// Why the drill stopped, when it could not finish.
    pub error: Option<String>,
}

/// The newest drill stored in the repository (`None`: there is none).
pub async fn last(repo: &Repository) -> Result<Option<LastDrill>> {
    let (history, _) = history(repo).await?;
    Ok(history.last().map(|(id, r)| LastDrill {
        id: id.to_hex(),
        short_id: id.short(),
        started: r.started,
        verdict: r.verdict,
        exit_code: r.verdict.exit_code(),
        partial: r.partial,
        rto_achieved_s: r.rto.as_ref().map(|x| x.achieved_s),
        rto_met: r.rto.as_ref().map(|x| x.met),
        error: r.error.clone(),
    }))
}

/// Every stored drill record, oldest first; damaged ones named apart.
pub async fn history(repo: &Repository) -> Result<(Vec<(Id, DrillRecord)>, Vec<(String, String)>)> {
    let mut ok = vec![];
    let mut damaged = vec![];
    for o in list_all(repo.backend(), drill::DIR).await? {
        let Some(id) = crate::format::names::id_of(&o.name) else {
            continue;
        };
        let opened = match repo.backend().get(&o.name).await {
            Ok(b) => DrillRecord::open(repo.key(), &id, &b),
            Err(e) => Err(e),
        };
        match opened {
            Ok(r) => ok.push((id, r)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => damaged.push((o.name.clone(), e.to_string())),
        }
    }
    ok.sort_by_key(|(_, r)| r.started);
    Ok((ok, damaged))
}

fn secs(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.2} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// The drill report for the monthly review (`--report FILE`): what was
/// restored, the checks, the timings, the objectives with figures, and
/// the history of past drills (from the repository).
pub fn render_markdown(
    id: &Id,
    r: &DrillRecord,
    history: &[(Id, DrillRecord)],
    tz: chrono_tz::Tz,
) -> String {
    let local = |t: &DateTime<Utc>| {
        t.with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    };
    let verdict = match r.verdict {
        drill::Verdict::Passed => "PASSED: every check passed, every objective met",
        drill::Verdict::ObjectiveMissed => {
            "OBJECTIVE MISSED: every check passed, an objective was missed"
        }
        drill::Verdict::CheckFailed => "FAILED: a check failed or a restore could not be done",
    };
    let mut o = format!("# Restore drill {} — {verdict}\n\n", id.short());
    o += &format!(
        "- Run: {} to {} on {} (usdcop-dr {})\n- Repository: `{}`\n- Record: `drills/{id}` in the repository\n",
        local(&r.started),
        local(&r.finished),
        r.host,
        r.program_version,
        r.repository
    );
    match (&r.rto, r.partial) {
        (_, true) => {
            o += "- RTO: not claimed — only some sources were drilled (`--source`)\n";
        }
        (Some(rto), false) => {
            o += &format!(
                "- RTO: {} to restore every source one after the other (a database with WAL archiving: the longer of its dump's restore and its point-in-time recovery), against {} — {}\n",
                secs(rto.achieved_s),
                rto.objective_s
                    .map(secs)
                    .unwrap_or_else(|| "no objective".into()),
                if rto.met { "met" } else { "**MISSED**" }
            );
        }
        (None, false) => o += "- RTO: not measured (nothing could be restored)\n",
    }
    o += "\n## Sources\n\n| source | kind | snapshot | restored into | time to first byte | total | throughput | RPO (age of newest point) | checks |\n|---|---|---|---|---|---|---|---|---|\n";
    for s in &r.sources {
        let (fb, total, tp) = match &s.restore {
            Some(t) => (
                t.first_byte_s.map(secs).unwrap_or_else(|| "-".into()),
                secs(t.total_s),
                format!("{:.0} MB/s", t.throughput_mb_s()),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let rpo = match s.rpo.age_s {
            Some(a) => format!(
                "{} ({}) against {} — {}",
                secs(a),
                s.rpo.basis,
                secs(s.rpo.objective_s),
                if s.rpo.met { "met" } else { "**MISSED**" }
            ),
            None => "no restorable point — **MISSED**".into(),
        };
        let checks = if let Some(e) = &s.error {
            format!("**FAILED**: {e}")
        } else if s.passed() {
            format!("{} passed", s.checks.len())
        } else {
            format!(
                "**FAILED**: {}",
                s.checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{} — {}", c.what, c.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        o += &format!(
            "| {} | {} | {} | {} | {fb} | {total} | {tp} | {rpo} | {checks} |\n",
            s.source,
            s.kind.as_str(),
            s.snapshot
                .map(|i| format!("`{}`", i.short()))
                .unwrap_or_else(|| "-".into()),
            s.target.replace('|', "\\|"),
        );
    }
    for s in &r.sources {
        let Some(p) = &s.pitr else { continue };
        let t = |x: &Option<DateTime<Utc>>| x.as_ref().map(local).unwrap_or_else(|| "-".into());
        o += &format!("\n## Point-in-time recovery ({})\n\n", s.source);
        o += &format!(
            "- Marker row committed at {} (database `{}`); target {}; a row committed after the target\n",
            t(&p.marker_written),
            p.marker_database,
            t(&p.target)
        );
        if let Some(a) = p.archived_after_s {
            o += &format!("- The marker's WAL was in the archive {} after its commit (segment switched by the drill)\n", secs(a));
        }
        o += &match (p.achieved_rpo_s, p.worst_rpo_s) {
            (Some(a), Some(w)) => format!(
                "- RPO: achieved {}; worst case with archive_timeout {}: {} against {} — {}\n",
                secs(a),
                secs(p.archive_timeout_s.unwrap_or(0.0)),
                secs(w),
                secs(p.objective_s),
                if p.rpo_met { "met" } else { "**MISSED**" }
            ),
            (Some(a), None) => format!(
                "- RPO: achieved {} against {} — {}; archive_timeout is off, so on a quiet server a commit waits until its segment fills\n",
                secs(a),
                secs(p.objective_s),
                if p.rpo_met { "met" } else { "**MISSED**" }
            ),
            (None, _) => "- RPO: not achieved — the check failed\n".into(),
        };
        if let Some(rs) = &p.restore {
            o += &format!(
                "- Base backup {} restored: {} MB in {}; recovery to the target {}; recovered to {} on timeline {}\n",
                p.base_backup.map(|i| format!("`{}`", i.short())).unwrap_or_default(),
                rs.bytes / 1_000_000,
                secs(rs.total_s),
                p.recovery_s.map(secs).unwrap_or_else(|| "-".into()),
                t(&p.recovered_to),
                p.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
            );
        }
    }
    o += "\n## Checks\n\n";
    for s in &r.sources {
        for c in &s.checks {
            o += &format!(
                "- {} {}: {}{}\n",
                if c.ok { "✔" } else { "✘" },
                s.source,
                c.what,
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", c.detail)
                }
            );
        }
    }
    o += "\n## History (every drill stored in the repository)\n\n| drill | started | verdict | RTO achieved | worst RPO age |\n|---|---|---|---|---|\n";
    for (hid, h) in history {
        let worst = h
            .sources
            .iter()
            .filter_map(|s| s.rpo.age_s)
            .fold(None::<f64>, |m, a| Some(m.map_or(a, |m| m.max(a))));
        o += &format!(
            "| `{}` | {} | {} | {} | {} |\n",
            hid.short(),
            local(&h.started),
            match h.verdict {
                drill::Verdict::Passed => "passed",
                drill::Verdict::ObjectiveMissed => "objective missed",
                drill::Verdict::CheckFailed => "failed",
            },
            h.rto
                .as_ref()
                .map(|r| secs(r.achieved_s))
                .unwrap_or_else(|| if h.partial {
                    "partial".into()
                } else {
                    "-".into()
                }),
            worst.map(secs).unwrap_or_else(|| "-".into())
        );
    }
    o
}
