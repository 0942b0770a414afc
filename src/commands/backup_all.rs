//! `backup --all` / `backup --source NAME`: every configured source in
//! turn through [`super::backup::run`], carrying on past a failing one;
//! then the run state and the metrics (also when sources or the repository
//! failed).

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::backup::{self, BackupInput, BackupOptions, BackupSummary};
use crate::config::{SourceSettings, SourceSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::SourceKind;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::state::{LastRun, RunState};

/// An error as the reports show it (the `--json` error object's fields).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorReport {
    pub kind: String,
    pub message: String,
    pub hint: Option<String>,
    pub exit_code: i32,
}

impl From<&Error> for ErrorReport {
    fn from(e: &Error) -> Self {
        ErrorReport {
            kind: format!("{:?}", e.kind()).to_lowercase(),
            message: e.to_string(),
            hint: e.hint().map(str::to_owned),
            exit_code: e.exit_code(),
        }
    }
}

/// One source's part of `backup --all --json`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRun {
    pub source: String,
    pub kind: SourceKind,
    pub ok: bool,
    pub started: DateTime<Utc>,
    pub duration_s: f64,
    /// The backup's report (`backup … --json`'s shape), when a snapshot
    /// was written: also for a run that failed on a warning.
    pub backup: Option<BackupSummary>,
    pub error: Option<ErrorReport>,
}

/// The input `backup` takes for a configured source.
pub fn input_for(spec: &SourceSpec) -> Result<BackupInput> {
    Ok(match spec {
        SourceSpec::Files { paths } => BackupInput::Files(paths.clone()),
        SourceSpec::Bucket {
            endpoint,
            profile,
            buckets,
        } => BackupInput::Bucket {
            selection: crate::source::bucket::BucketSelection {
                buckets: buckets.clone(),
                prefixes: vec![],
            },
            s3: crate::backend::s3::S3Options {
                endpoint: endpoint.clone(),
                profile: profile.clone(),
                ..Default::default()
            },
        },
        SourceSpec::Postgres { dsn, globals } => BackupInput::Postgres {
            dsn: crate::postgres::Dsn::parse(dsn)?,
            options: crate::source::postgres::PgBackupOptions {
                pg_dump: None,
                checksum_max_rows: 1_000_000,
                globals: *globals,
            },
        },
    })
}

/// Back up one configured source; never fails: a failure is in the report.
pub async fn run_one(
    repo: Arc<Repository>,
    source: &SourceSettings,
    progress: Arc<dyn Progress>,
) -> SourceRun {
    let started = Utc::now();
    let clock = Instant::now();
    let result = async {
        let input = input_for(&source.spec)?;
        backup::run(
            repo,
            BackupOptions::new(source.name.clone()),
            input,
            progress,
        )
        .await
    }
    .await;
    let (ok, backup, error) = match result {
        Ok(s) => match failed_on_warnings(&s) {
            None => (true, Some(s), None),
            Some(e) => (false, Some(s), Some(ErrorReport::from(&e))),
        },
        Err(e) => (false, None, Some(ErrorReport::from(&e))),
    };
    SourceRun {
        source: source.name.clone(),
        kind: source.spec.kind(),
        ok,
        started,
        duration_s: clock.elapsed().as_secs_f64(),
        backup,
        error,
    }
}

/// A run fails when data asked for is missing from its snapshot (the same
/// rule as `backup`: docs/CLI.md "Warnings").
fn failed_on_warnings(s: &BackupSummary) -> Option<Error> {
    let n = s.failed_warnings();
    (n > 0).then(|| {
        Error::new(
            ErrorKind::Source,
            format!(
                "snapshot {} was saved without {n} path(s) it was asked for (see its warnings)",
                s.snapshot_id.short()
            ),
        )
    })
}

/// A source that could not even start: the repository could not be opened.
pub fn not_started(source: &SourceSettings, e: &Error) -> SourceRun {
    SourceRun {
        source: source.name.clone(),
        kind: source.spec.kind(),
        ok: false,
        started: Utc::now(),
        duration_s: 0.0,
        backup: None,
        error: Some(ErrorReport::from(e)),
    }
}

/// Record `runs` in `state` (the last success is kept across failures).
pub fn record(state: &mut RunState, runs: &[SourceRun]) {
    for r in runs {
        let previous = state.sources.get(&r.source).and_then(|l| l.last_success);
        let snapshot_time = r.backup.as_ref().map(|b| b.time);
        state.sources.insert(
            r.source.clone(),
            LastRun {
                started: r.started,
                success: r.ok,
                duration_s: r.duration_s,
                snapshot_id: r.backup.as_ref().map(|b| b.snapshot_id.to_string()),
                bytes_read: r.backup.as_ref().map_or(0, |b| b.bytes_in),
                bytes_stored_new: r.backup.as_ref().map_or(0, |b| b.bytes_stored_new),
                error: r.error.as_ref().map(|e| e.message.clone()),
                last_success: match (previous, snapshot_time) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                },
            },
        );
    }
}

/// What the repository says about each source: newest snapshot time,
/// count and size; and the repository's stored bytes.
#[derive(Debug, Clone, Default)]
pub struct RepositoryFacts {
    pub sources: std::collections::BTreeMap<String, SourceFacts>,
    pub size_bytes: u64,
    /// The newest restore drill (`None`: none stored, or unreadable).
    pub last_drill: Option<super::drill::LastDrill>,
}

#[derive(Debug, Clone)]
pub struct SourceFacts {
    pub snapshots: u64,
    pub newest_id: crate::format::Id,
    pub newest_time: DateTime<Utc>,
    pub newest_bytes: u64,
}

/// Read the snapshots and object sizes of `repo`.
pub async fn repository_facts(repo: &Repository) -> Result<RepositoryFacts> {
    use crate::format::names;
    let mut facts = RepositoryFacts::default();
    for (id, s) in repo.snapshots().await? {
        let e = facts
            .sources
            .entry(s.source.name.clone())
            .or_insert(SourceFacts {
                snapshots: 0,
                newest_id: id,
                newest_time: s.time,
                newest_bytes: s.totals.bytes,
            });
        e.snapshots += 1;
        if s.time >= e.newest_time {
            e.newest_id = id;
            e.newest_time = s.time;
            e.newest_bytes = s.totals.bytes;
        }
    }
    for dir in [names::DATA, names::INDEX, names::SNAPSHOTS] {
        facts.size_bytes += crate::backend::list_all(repo.backend(), dir)
            .await?
            .iter()
            .map(|o| o.size)
            .sum::<u64>();
    }
    facts.last_drill = match super::drill::last(repo).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("cannot read the drill records: {e}");
            None
        }
    };
    Ok(facts)
}

/// The metrics of every configured source after a run: the repository's
/// facts when it could be read, the recorded runs for the rest.
pub fn metrics_input(
    sources: &[SourceSettings],
    rpo: std::time::Duration,
    facts: Option<&RepositoryFacts>,
    state: &RunState,
    repository_up: bool,
) -> crate::metrics::MetricsInput {
    use crate::metrics::{RunMetrics, SourceMetrics};
    let sources = sources
        .iter()
        .map(|s| {
            let recorded = state.sources.get(&s.name);
            let from_repo = facts.map(|f| f.sources.get(&s.name));
            SourceMetrics {
                name: s.name.clone(),
                kind: s.spec.kind().as_str().to_owned(),
                last_success: match from_repo {
                    Some(f) => f.map(|f| f.newest_time),
                    None => recorded.and_then(|r| r.last_success),
                },
                snapshots: from_repo.map(|f| f.map_or(0, |f| f.snapshots)),
                last_run: recorded.map(|r| RunMetrics {
                    started: r.started,
                    success: r.success,
                    duration_s: r.duration_s,
                    bytes_read: r.bytes_read,
                    bytes_stored_new: r.bytes_stored_new,
                }),
                rpo_seconds: rpo.as_secs_f64(),
            }
        })
        .collect();
    crate::metrics::MetricsInput {
        sources,
        repository_up,
        repository_size_bytes: facts.map(|f| f.size_bytes),
        last_prune: state.last_prune.clone(),
        last_drill: facts.map(|f| {
            f.last_drill.as_ref().map(|d| crate::metrics::DrillMetrics {
                started: d.started,
                passed: d.verdict == crate::format::drill::Verdict::Passed,
                rto_achieved_s: d.rto_achieved_s,
            })
        }),
    }
}

/// Take the repository's newest snapshot times into the recorded state
/// (a snapshot made by hand counts too).
pub fn refresh_last_success(state: &mut RunState, facts: &RepositoryFacts) {
    for (name, run) in state.sources.iter_mut() {
        if let Some(f) = facts.sources.get(name) {
            run.last_success = Some(
                run.last_success
                    .map_or(f.newest_time, |t| t.max(f.newest_time)),
            );
        }
    }
}
