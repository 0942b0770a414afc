//! `restore postgres --point-in-time`: the CLI over
//! [`usdcop_dr::commands::restore_pitr`], and the fall-back to the newest
//! logical dump (`--target-dsn`) when no base backup covers the target.

use std::sync::Arc;

use usdcop_dr::commands::restore_pitr::{self, PitrOptions, Target};
use usdcop_dr::config::Settings;
use usdcop_dr::format::snapshot::Snapshot;
use usdcop_dr::format::Id;
use usdcop_dr::postgres::Dsn;
use usdcop_dr::progress::Progress;
use usdcop_dr::repository::Repository;
use usdcop_dr::{Error, Result};

use super::args::RestorePostgresArgs;
use super::{emit, nightly};

// One short-lived value per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The point-in-time restore ran: the exit code.
    Done(i32),
    /// No base backup covers the target: restore this logical dump into
    /// this database instead (the caller's `restore postgres`).
    Dump {
        id: Id,
        snap: Box<Snapshot>,
        target: Dsn,
    },
}

pub async fn restore(
    json: bool,
    settings: Option<&Settings>,
    repo: Arc<Repository>,
    a: &RestorePostgresArgs,
    time: &str,
    progress: Arc<dyn Progress>,
) -> Result<Outcome> {
    let s = nightly::require(settings, "restore postgres --point-in-time")?;
    let source = match (&a.source, &s.wal) {
        (Some(src), _) => src.clone(),
        (None, Some(w)) => w.source.clone(),
        (None, None) => {
            return Err(Error::usage(format!(
                "restore postgres --point-in-time needs --source or a [wal] section in {}",
                s.file.display()
            )))
        }
    };
    let (target, target_text) = Target::parse(time, s.objectives.timezone)?;
    let pgdata = a.pgdata.clone().expect("clap requires --pgdata");
    let timeout = humantime::parse_duration(a.recovery_timeout.trim())
        .map_err(|e| Error::usage(format!("--recovery-timeout {:?}: {e}", a.recovery_timeout)))?;
    // No base backup plus WAL covers the target: with --target-dsn, the
    // newest logical dump before it instead, its gap said.
    if let (Some(dsn), Target::Time(t)) = (&a.target_dsn, target) {
        if let Err(why) = restore_pitr::plan(&repo, &source, target).await? {
            if let Some((id, snap)) = restore_pitr::newest_dump_before(&repo, &source, t).await {
                let gap = t
                    .signed_duration_since(snap.time)
                    .to_std()
                    .unwrap_or_default();
                eprintln!(
                    "usdcop-dr: {why}\nusdcop-dr: restoring the newest logical dump before {target_text} instead: snapshot {} of {} — the {} before the target are NOT restored",
                    id.short(),
                    snap.time.to_rfc3339(),
                    usdcop_dr::config::duration_text(gap)
                );
                let target = super::dsn_from_flag(dsn, "--target-dsn", "USDCOP_DR_PG_TARGET_DSN")?;
                return Ok(Outcome::Dump {
                    id,
                    snap: Box::new(snap),
                    target,
                });
            }
        }
    }
    let restore_command = restore_pitr::restore_command(&s.file)?;
    let opts = PitrOptions {
        source,
        target,
        target_text,
        pgdata,
        restore_command,
        start: a.start,
        port: a.port,
        keep_archiving: a.keep_archiving,
        timeout,
        no_restart: a.no_restart,
        read_concurrency: a.read_concurrency.map(usize::from),
    };
    let sum = restore_pitr::run(repo, opts, progress).await?;
    emit(json, &sum, || {
        let mut t = format!(
            "restored base backup {} (consistent from {}, timeline {}) into {}: {} files, {} in {:.1}s\ntarget: {}",
            sum.snapshot_id.short(),
            sum.base_backup.stop_time.to_rfc3339(),
            sum.base_backup.timeline,
            sum.pgdata.display(),
            sum.files,
            super::human(sum.bytes),
            sum.restore_s,
            sum.target_text
        );
        if let Some(r) = &sum.recovery {
            t += &format!(
                "\nrecovered to {} on timeline {} in {:.1}s; {}",
                r.recovered_to
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "the base backup (no transaction replayed)".into()),
                r.timeline,
                r.recovery_s,
                if r.running {
                    "the server runs with its own settings"
                } else {
                    "the server is stopped"
                }
            );
        }
        for n in &sum.notes {
            t += &format!("\nnote: {n}");
        }
        t
    })?;
    Ok(Outcome::Done(0))
}
