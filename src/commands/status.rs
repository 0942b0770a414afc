//! `status`: for every configured source, its newest snapshot and that
//! snapshot's age against the RPO, and its last run; whether the
//! repository can be reached. The verdict ([`judge`]) is pure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::backup_all::{ErrorReport, RepositoryFacts};
use crate::config::SourceSettings;
use crate::format::snapshot::SourceKind;
use crate::state::{LastRun, RunState};

/// Exit code of `status` when a source is outside its RPO or has never
/// been backed up (docs/CLI.md, exit codes).
pub const EXIT_RPO_MISSED: i32 = 4;

/// Where a source stands against its RPO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its newest snapshot is younger than the RPO.
    WithinRpo,
    /// Its newest snapshot is older than the RPO.
    RpoMissed,
    /// It has no snapshot at all.
    Never,
    /// The repository could not be read: not known.
    Unknown,
}

/// The verdict for a newest snapshot taken at `newest` (None: no snapshot).
pub fn judge(newest: Option<DateTime<Utc>>, rpo: Duration, now: DateTime<Utc>) -> Verdict {
    match newest {
        None => Verdict::Never,
        Some(t) => {
            let age = now.signed_duration_since(t);
            // A snapshot dated in the future (a clock step) is not late.
            if age.to_std().map_or(true, |a| a <= rpo) {
                Verdict::WithinRpo
            } else {
                Verdict::RpoMissed
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NewestSnapshot {
    pub id: String,
    pub short_id: String,
    pub time: DateTime<Utc>,
    pub age_s: f64,
    /// Content size of that snapshot.
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub kind: SourceKind,
    pub verdict: Verdict,
    pub within_rpo: bool,
    /// `null` when it has none, or the repository could not be read.
    pub newest_snapshot: Option<NewestSnapshot>,
    pub snapshots: Option<u64>,
    /// The last `backup --all` / `backup --source` run on this host (`null`: none recorded).
    pub last_run: Option<LastRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepositoryStatus {
    pub location: String,
    pub reachable: bool,
    pub error: Option<ErrorReport>,
    pub size_bytes: Option<u64>,
}

/// `status --json` (docs/CLI.md).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub checked_at: DateTime<Utc>,
    pub rpo_s: f64,
    pub timezone: String,
    pub repository: RepositoryStatus,
    pub sources: Vec<SourceStatus>,
    /// The last prune recorded on this host (not a dry run).
    pub last_prune: Option<crate::state::LastPrune>,
    /// The WAL archive's lag as the pushes on this host recorded it
    /// (`null`: no `[wal]`, or nothing recorded yet).
    pub wal_lag: Option<crate::commands::wal_spool::WalLag>,
    /// Every source within its RPO, the repository reachable, and the
    /// last WAL push (if any) not failed.
    pub ok: bool,
    /// The WAL archive, when the configuration has `[wal]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalStatus>,
    /// The newest restore drill in the repository (`null`: none, or the
    /// repository could not be read).
    pub last_drill: Option<super::drill::LastDrill>,
}

/// The WAL archive in `status`: how far back a point-in-time recovery
/// could go right now.
#[derive(Debug, Clone, Serialize)]
pub struct WalStatus {
    /// The last transaction end recovery can reach (`null`: none, or the
    /// archive could not be read).
    pub newest_recoverable_time: Option<DateTime<Utc>>,
    pub age_s: Option<f64>,
    pub newest_segment: Option<String>,
    pub segments: u64,
    /// Segments missing between archived ranges (`wal-verify` says which
    /// of them recovery needs).
    pub gaps: u64,
    pub error: Option<String>,
}

impl WalStatus {
    pub fn of(map: &crate::repository::wal_archive::ArchiveMap, now: DateTime<Utc>) -> WalStatus {
        let newest = map.newest_recoverable_time();
        WalStatus {
            newest_recoverable_time: newest,
            age_s: newest.map(|t| now.signed_duration_since(t).num_milliseconds() as f64 / 1000.0),
            newest_segment: map.newest_segment(),
            segments: map.segments,
            gaps: map.gap_count(),
            error: None,
        }
    }
}

impl StatusReport {
    /// Whether the last WAL push failed and files wait.
    pub fn wal_failing(&self) -> bool {
        self.wal_lag
            .as_ref()
            .is_some_and(|w| w.consecutive_failures > 0 && w.pending_files > 0)
    }

    /// Add the WAL archive's lag; a failing archive makes the report not ok.
    pub fn with_wal_lag(mut self, lag: Option<crate::commands::wal_spool::WalLag>) -> Self {
        self.wal_lag = lag;
        self.ok = self.ok && !self.wal_failing();
        self
    }

    /// 0 every source within its RPO; the repository error's code when it
    /// could not be read; else [`EXIT_RPO_MISSED`].
    pub fn exit_code(&self) -> i32 {
        if let Some(e) = &self.repository.error {
            return e.exit_code;
        }
        if self.sources.iter().all(|s| s.within_rpo) && !self.wal_failing() {
            0
        } else {
            EXIT_RPO_MISSED
        }
    }
}

/// Build the report from what the repository said (`Err`: it could not be
/// read) and the recorded runs.
pub fn report(
    sources: &[SourceSettings],
    objectives: &crate::config::Objectives,
    location: String,
    facts: std::result::Result<&RepositoryFacts, ErrorReport>,
    state: &RunState,
    now: DateTime<Utc>,
) -> StatusReport {
    let rpo = objectives.rpo;
    let statuses = sources
        .iter()
        .map(|s| {
            let last_run = state.sources.get(&s.name).cloned();
            let (verdict, newest, count) = match &facts {
                Ok(f) => {
                    let sf = f.sources.get(&s.name);
                    let newest = sf.map(|f| NewestSnapshot {
                        id: f.newest_id.to_string(),
                        short_id: f.newest_id.short(),
                        time: f.newest_time,
                        age_s: now.signed_duration_since(f.newest_time).num_milliseconds() as f64
                            / 1000.0,
                        bytes: f.newest_bytes,
                    });
                    (
                        judge(sf.map(|f| f.newest_time), rpo, now),
                        newest,
                        Some(sf.map_or(0, |f| f.snapshots)),
                    )
                }
                Err(_) => (Verdict::Unknown, None, None),
            };
            SourceStatus {
                source: s.name.clone(),
                kind: s.spec.kind(),
                verdict,
                within_rpo: verdict == Verdict::WithinRpo,
                newest_snapshot: newest,
                snapshots: count,
                last_run,
            }
        })
        .collect::<Vec<_>>();
    let (reachable, error, size) = match &facts {
        Ok(f) => (true, None, Some(f.size_bytes)),
        Err(e) => (false, Some(e.clone()), None),
    };
    let ok = reachable && statuses.iter().all(|s| s.within_rpo);
    StatusReport {
        checked_at: now,
        rpo_s: rpo.as_secs_f64(),
        timezone: objectives.timezone.name().to_owned(),
        repository: RepositoryStatus {
            location,
            reachable,
            error,
            size_bytes: size,
        },
        sources: statuses,
        last_prune: state.last_prune.clone(),
        wal_lag: None,
        ok,
        wal: None,
        last_drill: facts.as_ref().ok().and_then(|f| f.last_drill.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_compares_the_newest_snapshots_age_with_the_rpo() {
        let now = Utc::now();
        let rpo = Duration::from_secs(24 * 3600);
        let ago = |h: i64| Some(now - chrono::Duration::hours(h));
        assert_eq!(judge(None, rpo, now), Verdict::Never);
        assert_eq!(judge(ago(1), rpo, now), Verdict::WithinRpo);
        assert_eq!(judge(ago(24), rpo, now), Verdict::WithinRpo);
        assert_eq!(judge(ago(25), rpo, now), Verdict::RpoMissed);
        assert_eq!(judge(ago(-2), rpo, now), Verdict::WithinRpo);
    }
}
