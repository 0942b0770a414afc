//! `backup postgres-base`: a physical base backup of a cluster whose WAL
//! this repository archives (docs/POSTGRES.md, "Point-in-time recovery").
//!
//! 1. [`BaseSession::open`] (before anything is written): connect, read
//!    the cluster's facts, refuse a cluster that does not archive (a base
//!    backup without its WAL restores nothing) or whose system identifier
//!    is not the archive's, find a `pg_basebackup` at least as new.
//! 2. The backup (commands/backup.rs): `pg_basebackup -Ft -D - -X none`
//!    streamed and split into the data directory's files
//!    ([`crate::source::basebackup`]).
//! 3. [`wait_for_wal`]: the snapshot is written only once every segment
//!    from the backup's start to its consistent point is in the archive,
//!    as pgBackRest does: a base backup whose WAL is not archived cannot
//!    be restored, and must not count as one.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::backend::list_all;
use crate::error::{Error, ErrorKind, Result};
use crate::format::basebackup::{
    parse_backup_label, parse_manifest_wal_ranges, stop_segment, BaseBackupInfo,
};
use crate::format::wal::{segment_name, valid_segment_size, WalName};
use crate::postgres::inspect::{self, db_err};
use crate::postgres::tools::{self, PgTool};
use crate::postgres::Dsn;
use crate::repository::Repository;
use crate::source::basebackup::TarFacts;

#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    /// `pg_basebackup` to use instead of searching for one.
    pub pg_basebackup: Option<PathBuf>,
    /// How long to wait for the backup's WAL to reach the archive.
    pub wal_timeout: Duration,
    /// Request an immediate checkpoint (an I/O burst) instead of waiting
    /// for a spread one (up to `checkpoint_timeout`).
    pub fast_checkpoint: bool,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            pg_basebackup: None,
            wal_timeout: Duration::from_secs(600),
            fast_checkpoint: true,
        }
    }
}

/// A cluster checked and ready for `pg_basebackup`.
pub struct BaseSession {
    dsn: Dsn,
    tool: PgTool,
    pub server_version: String,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub options: BaseBackupOptions,
}

impl BaseSession {
    pub async fn open(repo: &Repository, dsn: &Dsn, options: BaseBackupOptions) -> Result<Self> {
        let client = inspect::connect(dsn).await?;
        let row = client
            .query_one(
                "SELECT current_setting('server_version'), \
                        current_setting('server_version_num')::int4, \
                        current_setting('archive_mode'), \
                        current_setting('archive_command'), \
                        pg_size_bytes(current_setting('wal_segment_size'))::int8, \
                        (SELECT system_identifier FROM pg_control_system())::text",
                &[],
            )
            .await
            .map_err(|e| db_err("reading the cluster's settings", e))?;
        let server_version: String = row.get(0);
        let num: i32 = row.get(1);
        let archive_mode: String = row.get(2);
        let archive_command: String = row.get(3);
        let seg: i64 = row.get(4);
        let sysid: String = row.get(5);
        let system_identifier: u64 = sysid
            .parse()
            .map_err(|_| Error::io(format!("bad system identifier {sysid:?}")))?;
        let segment_size = u32::try_from(seg)
            .ok()
            .filter(|s| valid_segment_size(*s))
            .ok_or_else(|| Error::io(format!("bad wal_segment_size {seg}")))?;
        if archive_mode == "off" || archive_command.trim().is_empty() {
            return Err(Error::usage(format!(
                "the cluster at {} does not archive its WAL (archive_mode = {archive_mode}, archive_command = {archive_command:?}): a base backup without its WAL cannot be restored",
                dsn.endpoint()
            ))
            .with_hint("set archive_mode = on and archive_command = 'usdcop-dr --config FILE wal-push %p', restart the server, then back up (docs/POSTGRES.md)"));
        }
        if !archive_command.contains("wal-push") {
            tracing::warn!(
                "archive_command is {archive_command:?}, not usdcop-dr wal-push: the backup waits for its WAL to appear in this repository's archive"
            );
        }
        if let Some(record) = crate::repository::wal_archive::load_system_id(repo).await? {
            let archived = record.system_id()?;
            if archived != system_identifier {
                return Err(Error::usage(format!(
                    "the cluster at {} has system identifier {system_identifier}, but the WAL archive in {} holds the cluster {archived} (source {:?})",
                    dsn.endpoint(),
                    repo.backend().location(),
                    record.source
                ))
                .with_hint("each cluster needs its own repository for its WAL and base backups"));
            }
        }
        let major = num as u32 / 10_000;
        let tool = tools::find("pg_basebackup", major, options.pg_basebackup.as_deref())?;
        Ok(BaseSession {
            dsn: dsn.clone(),
            tool,
            server_version,
            system_identifier,
            segment_size,
            options,
        })
    }

    /// `pg_basebackup`: one tar stream (the main data directory, the
    /// manifest injected) on stdout, no WAL in it (the archive has it).
    pub fn command(&self, label: &str) -> Command {
        let label = format!("--label={label}");
        let mut args = vec![
            "--format=tar",
            "--pgdata=-",
            "--wal-method=none",
            label.as_str(),
        ];
        if self.options.fast_checkpoint {
            args.push("--checkpoint=fast");
        }
        self.tool.command(&self.dsn, &args)
    }

    pub fn endpoint(&self) -> String {
        self.dsn.endpoint()
    }
}

/// What the stream said, checked and turned into the snapshot's record.
pub fn base_info(
    session: &BaseSession,
    facts: &TarFacts,
    started: DateTime<Utc>,
    stopped: DateTime<Utc>,
) -> Result<BaseBackupInfo> {
    if !facts.tablespaces.is_empty() {
        return Err(Error::usage(format!(
            "the cluster has tablespaces outside its data directory ({}); a streamed base backup holds the main data directory only",
            facts.tablespaces.join(", ")
        )));
    }
    let label = facts
        .backup_label
        .as_deref()
        .ok_or_else(|| Error::integrity("the base backup stream holds no backup_label"))?;
    let label = parse_backup_label(label)?;
    let ranges = parse_manifest_wal_ranges(&facts.manifest_tail)
        .map_err(|e| e.context("the base backup stream's backup_manifest"))?;
    let last = ranges.last().expect("parse refuses an empty list");
    let sysid = facts.system_identifier()?;
    if sysid != session.system_identifier {
        return Err(Error::integrity(format!(
            "the base backup's pg_control names system identifier {sysid}, the server said {}",
            session.system_identifier
        )));
    }
    Ok(BaseBackupInfo {
        start_lsn: label.start_lsn,
        stop_lsn: last.end,
        timeline: label.timeline,
        stop_timeline: last.timeline,
        system_identifier: sysid.to_string(),
        pg_version: facts.pg_version.clone().unwrap_or_default(),
        segment_size: session.segment_size,
        start_segment: label.start_segment,
        stop_segment: stop_segment(last.timeline, last.end, session.segment_size),
        start_time: label.start_time.unwrap_or(started),
        stop_time: stopped,
        label: label.label,
    })
}

/// Every segment a base backup needs to become consistent: from its
/// start to its stop location, per timeline of the manifest's ranges
/// (one, unless the server was promoted during the backup).
pub fn needed_segments(info: &BaseBackupInfo) -> Vec<String> {
    let seg = info.segment_size;
    let first = info.start_lsn.segment(seg);
    let last = info.stop_lsn.0.saturating_sub(1) / seg as u64;
    (first..=last.max(first))
        .map(|n| {
            // The last segments are on the stop timeline, the first on
            // the start one; with a switch in between PostgreSQL reads the
            // switch segment from the new timeline.
            let tl = if n == last {
                info.stop_timeline
            } else {
                info.timeline
            };
            segment_name(tl, n, seg)
        })
        .collect()
}

/// Wait until every segment [`needed_segments`] names is archived.
pub async fn wait_for_wal(
    repo: &Repository,
    info: &BaseBackupInfo,
    timeout: Duration,
) -> Result<()> {
    let missing = wait_for_segments(repo, &needed_segments(info), timeout).await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Source,
        format!(
            "the base backup's WAL is not in the archive after {}s: missing {}; no snapshot was written",
            timeout.as_secs(),
            missing.join(", ")
        ),
    )
    .with_hint(ARCHIVER_HINT))
}

/// Where to look when the archive does not keep up.
pub const ARCHIVER_HINT: &str = "check archive_command and pg_stat_archiver on the server (failed_count, last_failed_wal) and the server log";

/// Wait until every WAL file named is listed in the archive, for at most
/// `timeout`; returns those still missing then.
pub async fn wait_for_segments(
    repo: &Repository,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut missing = vec![];
        for name in names {
            let n = WalName::parse(name)?;
            let listed = list_all(repo.backend(), &n.prefix()).await?;
            if !listed.iter().any(|o| n.hash_of(&o.name).is_some()) {
                missing.push(name.clone());
            }
        }
        if missing.is_empty() || Instant::now() >= deadline {
            return Ok(missing);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
