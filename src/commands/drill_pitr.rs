//! The drill's point-in-time check (`[wal]` configured; docs/FORMAT.md
//! §15): prove that the source cluster can be brought back to a chosen
//! moment, and measure how soon after a commit it is recoverable.
//!
//! 1. In the source cluster (the `postgres` database, or the source's own
//!    when that is refused) the drill commits a *marker* row, reads the
//!    clock (the recovery target), commits an *after* row, and switches
//!    the WAL segment.
//! 2. It waits until that segment is in the archive: the time from the
//!    marker's commit to then is the achieved RPO (archive_timeout, read
//!    from the server, bounds the wait of a commit on a quiet server: the
//!    worst case is their sum).
//! 3. The newest base backup before the target is restored into a data
//!    directory below `scratch_dir`, recovered privately (no TCP, a
//!    private socket) to the target, and asked: the marker must be there,
//!    the after row must not.
//! 4. The server is stopped, the directory removed, the rows deleted in
//!    the source. A signal on the way stops the server and removes the
//!    directory too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::drill::ScratchCleanup;
use super::restore_pitr::{self, PitrOptions, PrivateServer, Target};
use crate::config::{Settings, SourceSettings, SourceSpec};
use crate::error::{Error, ErrorKind, Result};
use crate::format::drill::{Check, PitrDrill, Timing};
use crate::postgres::inspect::{connect, db_err, quote_ident};
use crate::postgres::Dsn;
use crate::progress::Progress;
use crate::repository::Repository;

/// The marker table, in the source cluster.
pub const MARKER_TABLE: &str = "usdcop_dr_drill_marker";
/// How long the drill waits for its segment to reach the archive.
const ARCHIVE_WAIT: Duration = Duration::from_secs(600);

/// What the source cluster said while the marker was written.
struct Marker {
    /// The DSN of the database holding the marker table.
    dsn: Dsn,
    database: String,
    written: DateTime<Utc>,
    target: DateTime<Utc>,
    /// The segment holding both rows, switched.
    segment: String,
    archive_timeout_s: Option<f64>,
    /// When the marker's commit returned, on this machine's clock.
    committed: Instant,
}

/// What the check works with.
pub struct Ctx<'a> {
    pub repo: &'a Arc<Repository>,
    pub settings: &'a Settings,
    /// The `[wal]` source.
    pub source: &'a SourceSettings,
    /// The drill's run directory below `scratch_dir`.
    pub run_dir: &'a Path,
    /// The drill's unique scratch name (the marker rows' key).
    pub drill_name: &'a str,
    pub read_concurrency: Option<usize>,
    pub progress: Arc<dyn Progress>,
}

/// Run the check for the `[wal]` source; never an error: what went wrong
/// is the check's detail.
pub async fn check(cx: &Ctx<'_>) -> (PitrDrill, Check) {
    let objective_s = cx.settings.objectives.rpo.as_secs_f64();
    let mut p = PitrDrill {
        marker_database: String::new(),
        marker_written: None,
        target: None,
        archived_after_s: None,
        archive_timeout_s: None,
        base_backup: None,
        restore: None,
        recovery_s: None,
        recovered_to: None,
        timeline: None,
        achieved_rpo_s: None,
        worst_rpo_s: None,
        objective_s,
        rpo_met: false,
    };
    let outcome = run(cx, &mut p).await;
    p.judge();
    let target = p
        .target
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| "a recent time".into());
    let what = format!(
        "point-in-time recovery to {target}: the marker row committed before it is there, the row committed after it is not"
    );
    let check = match outcome {
        Ok(()) => Check {
            what,
            ok: true,
            detail: format!(
                "recovered to {} on timeline {}; marker recoverable {:.1} s after its commit",
                p.recovered_to
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "-".into()),
                p.timeline.unwrap_or(0),
                p.achieved_rpo_s.unwrap_or(0.0)
            ),
        },
        Err(e) => {
            p.achieved_rpo_s = None;
            p.judge();
            Check {
                what,
                ok: false,
                detail: e.to_string(),
            }
        }
    };
    (p, check)
}

async fn run(cx: &Ctx<'_>, p: &mut PitrDrill) -> Result<()> {
    let (source, drill_name) = (cx.source, cx.drill_name);
    let SourceSpec::Postgres { dsn, .. } = &source.spec else {
        return Err(Error::usage(format!(
            "the [wal] source {:?} is not a postgres source",
            source.name
        )));
    };
    let dsn = Dsn::parse(dsn)?;
    let marker = write_marker(&dsn, drill_name).await?;
    // The rows are the drill's own: deleted whatever happens, a signal
    // included.
    let rows = {
        let (dsn, name) = (marker.dsn.clone(), drill_name.to_owned());
        ScratchCleanup::register(move || {
            let (dsn, name) = (dsn.clone(), name.clone());
            Box::pin(async move { delete_marker(&dsn, &name).await })
        })
    };
    p.marker_database = marker.database.clone();
    p.marker_written = Some(marker.written);
    p.target = Some(marker.target);
    p.archive_timeout_s = marker.archive_timeout_s;
    let result = recover_and_ask(cx, &marker, p).await;
    if let Err(e) = rows.now().await {
        tracing::warn!("could not delete the drill's marker rows: {e}");
    }
    result
}

async fn recover_and_ask(cx: &Ctx<'_>, marker: &Marker, p: &mut PitrDrill) -> Result<()> {
    let (repo, settings, source, drill_name) = (cx.repo, cx.settings, cx.source, cx.drill_name);
    let missing = super::basebackup::wait_for_segments(
        repo,
        std::slice::from_ref(&marker.segment),
        ARCHIVE_WAIT,
    )
    .await?;
    if !missing.is_empty() {
        return Err(Error::new(
            ErrorKind::Source,
            format!(
                "WAL segment {} (holding the drill's marker, switched by the drill) is not in the archive after {}",
                marker.segment,
                crate::config::duration_text(ARCHIVE_WAIT)
            ),
        )
        .with_hint(super::basebackup::ARCHIVER_HINT));
    }
    let archived = marker.committed.elapsed().as_secs_f64();
    p.archived_after_s = Some(archived);

    let dir: PathBuf = cx.run_dir.join(format!("{}-pitr", source.name));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
    let pgdata = dir.join("pgdata");
    let cleanup = {
        let (dir, pgdata) = (dir.clone(), pgdata.clone());
        ScratchCleanup::register(move || {
            let (dir, pgdata) = (dir.clone(), pgdata.clone());
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    restore_pitr::stop_immediate(&pgdata);
                    match std::fs::remove_dir_all(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            Err(Error::io(format!("cannot remove {}: {e}", dir.display())))
                        }
                        _ => Ok(()),
                    }
                })
                .await
                .map_err(|e| Error::io(format!("clean-up task: {e}")))?
            })
        })
    };
    let timeout = settings
        .objectives
        .rto
        .unwrap_or(Duration::from_secs(4 * 3600));
    let result = async {
        let clock = Instant::now();
        let sum = restore_pitr::run(
            repo.clone(),
            PitrOptions {
                source: source.name.clone(),
                target: Target::Time(marker.target),
                target_text: marker.target.to_rfc3339(),
                pgdata: pgdata.clone(),
                restore_command: restore_pitr::restore_command(&settings.file)?,
                start: false,
                port: None,
                keep_archiving: false,
                timeout,
                no_restart: true,
                read_concurrency: cx.read_concurrency,
            },
            cx.progress.clone(),
        )
        .await?;
        p.base_backup = Some(sum.snapshot_id);
        p.restore = Some(Timing {
            first_byte_s: None,
            total_s: clock.elapsed().as_secs_f64(),
            bytes: sum.bytes,
        });
        // The server's OS user must reach its data directory.
        give_dir(&dir, &pgdata)?;
        let (mut server, promoted) =
            PrivateServer::recover(&pgdata, &sum.base_backup, None, timeout).await?;
        p.recovery_s = Some(promoted.recovery_s);
        p.recovered_to = promoted.recovered_to;
        p.timeline = Some(promoted.timeline);
        let found = ask(&server.dsn(&marker.database)?, drill_name).await;
        let _ = server.stop("immediate");
        let found = found?;
        let has = |k: &str| found.iter().any(|f| f == k);
        if !has("marker") {
            return Err(Error::integrity(format!(
                "recovered to {} but the marker row committed at {} is missing: the WAL archive does not bring the cluster back to the target",
                p.recovered_to.map(|t| t.to_rfc3339()).unwrap_or_else(|| "the base backup".into()),
                marker.written.to_rfc3339()
            )));
        }
        if has("after") {
            return Err(Error::integrity(format!(
                "recovery went past the target {}: the row committed after it is there",
                marker.target.to_rfc3339()
            )));
        }
        p.achieved_rpo_s = Some(archived);
        Ok(())
    }
    .await;
    let removed = cleanup.now().await;
    result?;
    removed
}

/// Running as root, the restored data directory belongs to the backup's
/// owner (the server's OS user): so does its parent, which the drill made.
fn give_dir(dir: &Path, pgdata: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let m =
        std::fs::metadata(pgdata).map_err(|e| Error::io(format!("{}: {e}", pgdata.display())))?;
    std::os::unix::fs::chown(dir, Some(m.uid()), Some(m.gid()))
        .map_err(|e| Error::io(format!("cannot chown {}: {e}", dir.display())))
}

/// Commit the marker, read the target, commit the after row, switch the
/// segment; in the `postgres` database, or the source's own database when
/// that is refused (a non-superuser may not create tables there).
async fn write_marker(source: &Dsn, drill: &str) -> Result<Marker> {
    let mut tried = vec![];
    let mut candidates = vec![];
    if source.dbname != "postgres" {
        candidates.push(source.with_dbname("postgres")?);
    }
    candidates.push(source.clone());
    for dsn in candidates {
        match write_marker_in(&dsn, drill).await {
            Ok(m) => return Ok(m),
            Err(e) => tried.push(format!("database {}: {e}", dsn.dbname)),
        }
    }
    Err(Error::new(
        ErrorKind::Source,
        format!(
            "cannot write the drill's marker row in the source cluster: {}",
            tried.join("; ")
        ),
    )
    .with_hint(format!(
        "the source's role needs to create table {MARKER_TABLE} (once) in the postgres database or its own, and to run pg_switch_wal()"
    )))
}

async fn write_marker_in(dsn: &Dsn, drill: &str) -> Result<Marker> {
    let client = connect(dsn).await?;
    let table = quote_ident(MARKER_TABLE);
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (drill text NOT NULL, row_kind text NOT NULL, \
             written_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (drill, row_kind))"
        ))
        .await
        .map_err(|e| db_err("creating the marker table", e))?;
    let insert = format!(
        "INSERT INTO {table} (drill, row_kind) VALUES ($1, $2) RETURNING {}",
        utc_text("written_at")
    );
    let written: String = client
        .query_one(&insert, &[&drill, &"marker"])
        .await
        .map_err(|e| db_err("writing the marker row", e))?
        .get(0);
    let committed = Instant::now();
    // Read after the marker's commit returned: later than its commit time.
    let target: String = client
        .query_one(&format!("SELECT {}", utc_text("clock_timestamp()")), &[])
        .await
        .map_err(|e| db_err("reading the clock", e))?
        .get(0);
    let (written, target) = (parse_utc(&written)?, parse_utc(&target)?);
    // A commit after the target: recovery stops at it (PostgreSQL stops at
    // a transaction end), and it must not be restored.
    tokio::time::sleep(Duration::from_millis(20)).await;
    client
        .query_one(&insert, &[&drill, &"after"])
        .await
        .map_err(|e| db_err("writing the after row", e))?;
    // pg_walfile_name of the switch's end location names the segment just
    // completed (the one holding both rows).
    let row = client
        .query_one(
            "SELECT pg_walfile_name(pg_switch_wal()), \
                    extract(epoch FROM current_setting('archive_timeout')::interval)::float8",
            &[],
        )
        .await
        .map_err(|e| db_err("switching the WAL segment (pg_switch_wal)", e))?;
    let segment: String = row.get(0);
    let timeout: f64 = row.get(1);
    Ok(Marker {
        dsn: dsn.clone(),
        database: dsn.dbname.clone(),
        written,
        target,
        segment,
        archive_timeout_s: (timeout > 0.0).then_some(timeout),
        committed,
    })
}

/// SQL for a timestamptz as RFC 3339 text in UTC, to the microsecond.
fn utc_text(expr: &str) -> String {
    format!("to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

fn parse_utc(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::format("server time", format!("{s:?}: {e}")))
}

/// The drill's rows in the recovered cluster.
async fn ask(dsn: &Dsn, drill: &str) -> Result<Vec<String>> {
    let client = connect(dsn).await?;
    let rows = client
        .query(
            &format!(
                "SELECT row_kind FROM {} WHERE drill = $1",
                quote_ident(MARKER_TABLE)
            ),
            &[&drill],
        )
        .await
        .map_err(|e| db_err("reading the marker rows in the recovered cluster", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn delete_marker(dsn: &Dsn, drill: &str) -> Result<()> {
    let client = connect(dsn).await?;
    client
        .execute(
            &format!("DELETE FROM {} WHERE drill = $1", quote_ident(MARKER_TABLE)),
            &[&drill],
        )
        .await
        .map_err(|e| db_err("deleting the marker rows", e))?;
    Ok(())
}
