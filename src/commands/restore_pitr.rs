//! `restore postgres --point-in-time`: a base backup written into an
//! empty data directory, recovery settings that replay the archived WAL
//! up to the target, and (`--start`) the recovery itself, watched until
//! PostgreSQL reports the point it reached (docs/POSTGRES.md,
//! "Point-in-time recovery").
//!
//! With `--start` the server first runs privately: no TCP, its socket in
//! a private directory, `trust` for that socket only (so this process can
//! ask it where recovery stopped), `lc_messages = C` (its log is read).
//! Once promoted it is stopped cleanly and, unless told otherwise,
//! started again with its own settings.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::format::basebackup::BaseBackupInfo;
use crate::format::snapshot::{Snapshot, SourceKind};
use crate::format::Id;
use crate::progress::Progress;
use crate::repository::Repository;

/// Where recovery should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "time")]
pub enum Target {
    /// Replay everything archived.
    Latest,
    Time(DateTime<Utc>),
}

impl Target {
    /// `latest`, RFC 3339, or `YYYY-MM-DD HH:MM:SS[.ffffff]` optionally
    /// followed by a zone (an IANA name, `UTC`, or `+HH:MM`); without one,
    /// the time is read in `tz`. Returns the target and how it was read.
    pub fn parse(s: &str, tz: chrono_tz::Tz) -> Result<(Target, String)> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("latest") {
            return Ok((Target::Latest, "latest (everything archived)".into()));
        }
        let bad = || {
            Error::usage(format!("--point-in-time {s:?} is not a time")).with_hint(
                "write `latest`, RFC 3339 (2026-12-03T14:30:00-05:00) or \"2026-12-03 14:30:00\" \
                 (in the configuration's objectives.timezone) optionally followed by a zone",
            )
        };
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            let t = t.with_timezone(&Utc);
            return Ok((Target::Time(t), format!("{} (RFC 3339)", t.to_rfc3339())));
        }
        // "YYYY-MM-DD HH:MM:SS[.f]" then an optional zone.
        let rest = s.get(19..).ok_or_else(bad)?;
        let frac = match rest.strip_prefix('.') {
            Some(r) => 1 + r.bytes().take_while(u8::is_ascii_digit).count(),
            None => 0,
        };
        let (local, zone) = (&s[..19 + frac], s[19 + frac..].trim());
        let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(local, "%Y-%m-%dT%H:%M:%S%.f"))
            .map_err(|_| bad())?;
        let (t, zone_text) = if zone.is_empty() {
            (
                local_to_utc(naive, tz, s)?,
                format!("{tz} (objectives.timezone)"),
            )
        } else if let Ok(z) = zone.parse::<chrono_tz::Tz>() {
            (local_to_utc(naive, z, s)?, z.to_string())
        } else {
            let off = DateTime::parse_from_str(
                &format!("2000-01-01 00:00:00 {zone}"),
                "%Y-%m-%d %H:%M:%S %:z",
            )
            .or_else(|_| {
                DateTime::parse_from_str(
                    &format!("2000-01-01 00:00:00 {zone}"),
                    "%Y-%m-%d %H:%M:%S %z",
                )
            })
            .map_err(|_| bad())?
            .offset()
            .to_owned();
            let t = off
                .from_local_datetime(&naive)
                .single()
                .ok_or_else(bad)?
                .with_timezone(&Utc);
            (t, zone.to_owned())
        };
        Ok((
            Target::Time(t),
            format!("{local} {zone_text} = {}", t.to_rfc3339()),
        ))
    }
}

fn local_to_utc(naive: NaiveDateTime, tz: chrono_tz::Tz, s: &str) -> Result<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(a, b) => Err(Error::usage(format!(
            "{s:?} happens twice in {tz} (a clock change): {} or {}",
            a.to_rfc3339(),
            b.to_rfc3339()
        ))
        .with_hint("give the time in RFC 3339 with its offset")),
        chrono::LocalResult::None => Err(Error::usage(format!(
            "{s:?} does not exist in {tz} (a clock change skips it)"
        ))),
    }
}

pub struct PitrOptions {
    /// The `[wal] source` (the postgres source's name).
    pub source: String,
    pub target: Target,
    /// How the target was read, for the output.
    pub target_text: String,
    pub pgdata: PathBuf,
    /// The `restore_command` to write (calls `usdcop-dr … wal-fetch %f %p`).
    pub restore_command: String,
    /// Start PostgreSQL and wait for the recovery.
    pub start: bool,
    /// `port` for the restored cluster (written to postgresql.auto.conf).
    pub port: Option<u16>,
    /// Leave archive_mode as the backup had it (for a restore that becomes
    /// the primary); default: off, so a test restore cannot write a new
    /// timeline into the production archive.
    pub keep_archiving: bool,
    /// How long recovery may take (--start).
    pub timeout: Duration,
    /// After the recovery, leave the server stopped.
    pub no_restart: bool,
    pub read_concurrency: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// The commit time of the last transaction replayed: the point the
    /// restored cluster holds.
    pub recovered_to: Option<DateTime<Utc>>,
    pub timeline: u32,
    pub recovery_s: f64,
    /// The server runs with its own settings (false: left stopped).
    pub running: bool,
    pub log_file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct PitrSummary {
    pub snapshot_id: Id,
    pub base_backup: BaseBackupInfo,
    pub target: Target,
    pub target_text: String,
    pub pgdata: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub restore_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryReport>,
    pub notes: Vec<String>,
}

/// The base backups of `source`, oldest first, with their records.
pub async fn base_backups(
    repo: &Repository,
    source: &str,
) -> Result<Vec<(Id, Snapshot, BaseBackupInfo)>> {
    let mut v = vec![];
    for (id, s) in repo.snapshots().await? {
        if s.source.kind != SourceKind::Wal || s.source.name != source {
            continue;
        }
        if let Some(info) = BaseBackupInfo::from_metadata(&s.metadata)? {
            v.push((id, s, info));
        }
    }
    v.sort_by_key(|(_, _, i)| i.stop_time);
    Ok(v)
}

/// The newest base backup that was consistent before `target`.
pub fn choose(
    backups: &[(Id, Snapshot, BaseBackupInfo)],
    target: Target,
) -> Option<&(Id, Snapshot, BaseBackupInfo)> {
    backups.iter().rev().find(|(_, _, i)| match target {
        Target::Latest => true,
        Target::Time(t) => i.stop_time <= t,
    })
}

/// Refuse a data directory that holds anything; create a missing one.
fn prepare_pgdata(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(Error::usage(format!(
                    "{} is not empty: a point-in-time restore writes a whole data directory and overwrites nothing",
                    dir.display()
                ))
                .with_hint("give an empty or missing directory (move the old data directory away first)"));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(dir)
            .map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display()))),
        Err(e) => Err(Error::io(format!("cannot read {}: {e}", dir.display()))),
    }
}

/// A path for a shell command line (PostgreSQL runs restore_command
/// through `sh -c`).
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// The `restore_command` that fetches WAL with this program and the
/// configuration file `config`.
pub fn restore_command(config: &Path) -> Result<String> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io(format!("cannot find this program's path: {e}")))?;
    let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
    Ok(format!(
        "{} --config {} wal-fetch %f %p",
        shell_quote(&exe),
        shell_quote(&config)
    ))
}

/// A value for postgresql.conf, single-quoted.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The recovery settings appended to postgresql.auto.conf (which wins
/// over postgresql.conf).
pub fn recovery_settings(opts: &PitrOptions, now: DateTime<Utc>) -> String {
    let mut s = format!(
        "\n# Added by usdcop-dr restore --point-in-time at {}\nrestore_command = {}\n",
        now.to_rfc3339(),
        conf_quote(&opts.restore_command)
    );
    if let Target::Time(t) = opts.target {
        s += &format!(
            "recovery_target_time = {}\n",
            conf_quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        );
    }
    s += "recovery_target_action = 'promote'\nrecovery_target_timeline = 'latest'\n";
    if !opts.keep_archiving {
        s += "# A restored copy must not archive into the production archive (a new\n\
              # timeline there would be followed by later restores). Remove this line\n\
              # when this cluster becomes the primary.\narchive_mode = 'off'\n";
    }
    if let Some(p) = opts.port {
        s += &format!("port = {p}\n");
    }
    s
}

/// The owner of the restored files (the data directory's owner must be
/// the server's OS user).
fn owner_of(pgdata: &Path) -> Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(pgdata.join("global/pg_control")).map_err(|e| {
        Error::io(format!(
            "restored data directory lacks global/pg_control: {e}"
        ))
    })?;
    Ok((m.uid(), m.gid()))
}

fn write_owned(path: &Path, bytes: &[u8], append: bool, owner: (u32, u32)) -> Result<()> {
    use std::io::Write;
    let err = |e: std::io::Error| Error::io(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).map_err(err)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(())
}

/// The base backup a restore to `target` starts from, and what the WAL
/// archive lets it reach.
pub struct Plan {
    pub id: Id,
    pub snap: Snapshot,
    pub info: BaseBackupInfo,
    pub coverage: crate::repository::wal_archive::Coverage,
}

/// Choose the base backup and check, before anything is written, that the
/// archived WAL carries it to `target`. `Ok(Err(why))`: no base backup plus
/// WAL covers the target (why, with the recoverable ranges).
pub async fn plan(
    repo: &Repository,
    source: &str,
    target: Target,
) -> Result<std::result::Result<Plan, String>> {
    use crate::repository::wal_archive;
    let backups = base_backups(repo, source).await?;
    let Some((id, snap, info)) = choose(&backups, target).cloned() else {
        let oldest = backups
            .first()
            .map(|(id, _, i)| {
                format!(
                    "the oldest base backup ({}) is consistent from {}",
                    id.short(),
                    i.stop_time.to_rfc3339()
                )
            })
            .unwrap_or_else(|| "there is no base backup".into());
        return Ok(Err(format!(
            "no base backup of {source:?} was consistent before {}: {oldest}",
            match target {
                Target::Time(t) => t.to_rfc3339(),
                Target::Latest => "now".into(),
            }
        )));
    };
    let map = wal_archive::load(repo).await?;
    let want = match target {
        Target::Latest => wal_archive::Target::Latest,
        Target::Time(t) => wal_archive::Target::Time(t),
    };
    let coverage = map.covers(&info.start_segment, info.start_lsn, want)?;
    if coverage.covered {
        return Ok(Ok(Plan {
            id,
            snap,
            info,
            coverage,
        }));
    }
    let reach = match (&coverage.range, coverage.newest_time) {
        (None, _) => format!(
            "its first segment {} is not archived",
            coverage.start_segment
        ),
        (Some(r), Some(t)) => format!(
            "its WAL runs from {} to {} on timeline {}, newest recoverable time {}",
            r.segments.first,
            r.segments.last,
            coverage.timeline,
            t.to_rfc3339()
        ),
        (Some(r), None) => format!(
            "its WAL runs from {} to {} on timeline {}, with no transaction to stop at",
            r.segments.first, r.segments.last, coverage.timeline
        ),
    };
    let missing = if coverage.missing.is_empty() {
        String::new()
    } else {
        format!(
            "; missing after it: {}{}",
            coverage
                .missing
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if coverage.missing.len() > 5 {
                ", …"
            } else {
                ""
            }
        )
    };
    let ranges: Vec<String> = map
        .timeline(coverage.timeline)
        .map(|t| {
            t.ranges
                .iter()
                .map(|r| {
                    format!(
                        "{}..{} (to {})",
                        r.segments.first,
                        r.segments.last,
                        r.newest_time
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "?".into())
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Err(format!(
        "the WAL archive does not carry base backup {} to {}: {reach}{missing}; recoverable ranges on timeline {}: {}",
        id.short(),
        match target {
            Target::Time(t) => t.to_rfc3339(),
            Target::Latest => "the end of the archive (a segment is missing)".into(),
        },
        coverage.timeline,
        if ranges.is_empty() { "none".into() } else { ranges.join(", ") }
    )))
}

pub async fn run(
    repo: Arc<Repository>,
    opts: PitrOptions,
    progress: Arc<dyn Progress>,
) -> Result<PitrSummary> {
    let Plan { id, snap, info, .. } = match plan(&repo, &opts.source, opts.target).await? {
        Ok(p) => p,
        Err(why) => return Err(not_covered(&repo, &opts, why).await),
    };
    prepare_pgdata(&opts.pgdata)?;
    let clock = Instant::now();
    let restored = super::restore::run(
        repo.clone(),
        id,
        &snap,
        super::restore::RestoreOptions {
            // PostgreSQL starts on these files: durable before it does.
            sync: super::restore::SyncMode::End,
            target: super::restore::RestoreTarget::Dir(opts.pgdata.clone()),
            include: vec![],
            read_concurrency: opts.read_concurrency,
        },
        progress,
    )
    .await?;
    if let Some(f) = restored.failed.first() {
        return Err(Error::integrity(format!(
            "{} file(s) of base backup {} could not be restored (first: {}: {}); {} is incomplete and must not be started",
            restored.failed.len(),
            id.short(),
            f.path,
            f.error,
            opts.pgdata.display()
        )));
    }
    let owner = owner_of(&opts.pgdata)?;
    let pgdata_err = |e: std::io::Error| Error::io(format!("{}: {e}", opts.pgdata.display()));
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&opts.pgdata, Some(owner.0), Some(owner.1)).map_err(pgdata_err)?;
    }
    std::fs::set_permissions(&opts.pgdata, std::fs::Permissions::from_mode(0o700))
        .map_err(pgdata_err)?;
    let _ = std::fs::remove_file(opts.pgdata.join("standby.signal"));
    write_owned(
        &opts.pgdata.join("postgresql.auto.conf"),
        recovery_settings(&opts, Utc::now()).as_bytes(),
        true,
        owner,
    )?;
    write_owned(&opts.pgdata.join("recovery.signal"), b"", false, owner)?;
    let restore_s = clock.elapsed().as_secs_f64();
    let mut notes = vec![];
    if !opts.keep_archiving {
        notes.push(format!(
            "archive_mode is off in {}/postgresql.auto.conf: remove that line when this cluster becomes the primary",
            opts.pgdata.display()
        ));
    }
    let recovery = if opts.start {
        Some(recover(&opts, &info).await?)
    } else {
        notes.push(format!(
            "start the server (as its OS user) to replay the WAL: pg_ctl -D {} start; it promotes itself at the target",
            opts.pgdata.display()
        ));
        None
    };
    Ok(PitrSummary {
        snapshot_id: id,
        base_backup: info,
        target: opts.target,
        target_text: opts.target_text.clone(),
        pgdata: opts.pgdata.clone(),
        files: restored.files,
        bytes: restored.bytes,
        restore_s,
        recovery,
        notes,
    })
}

/// No base backup plus WAL covers the target: say why, and name the
/// newest logical dump before it (what `--target-dsn` would restore).
async fn not_covered(repo: &Repository, opts: &PitrOptions, why: String) -> Error {
    let hint = match opts.target {
        Target::Latest => format!(
            "take a base backup (usdcop-dr backup postgres-base --source {}), or choose a time inside a recoverable range",
            opts.source
        ),
        Target::Time(t) => match newest_dump_before(repo, &opts.source, t).await {
            Some((id, s)) => format!(
                "the newest logical dump before it is snapshot {} of {} ({} before the target): add --target-dsn DSN to restore it instead",
                id.short(),
                s.time.to_rfc3339(),
                crate::config::duration_text(
                    t.signed_duration_since(s.time).to_std().unwrap_or_default()
                )
            ),
            None => "no logical dump of this source was taken before it either".into(),
        },
    };
    Error::not_found(why).with_hint(hint)
}

/// The newest `backup postgres` snapshot of `source` taken at or before `t`.
pub async fn newest_dump_before(
    repo: &Repository,
    source: &str,
    t: DateTime<Utc>,
) -> Option<(Id, Snapshot)> {
    repo.snapshots()
        .await
        .ok()?
        .into_iter()
        .filter(|(_, s)| {
            s.source.kind == SourceKind::Postgres && s.source.name == source && s.time <= t
        })
        .max_by_key(|(_, s)| s.time)
}

/// The OS user name of `uid` (the server's superuser is usually named so).
fn user_name(uid: u32) -> String {
    // SAFETY: getpwuid returns a pointer to static storage or null; the
    // name is copied before any other call.
    unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            return "postgres".into();
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn as_owner(c: &mut Command, owner: (u32, u32)) {
    if unsafe { libc::geteuid() } == 0 {
        c.uid(owner.0).gid(owner.1);
    }
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
}

fn run_tool(mut c: Command, what: &str) -> Result<()> {
    let out = c
        .output()
        .map_err(|e| Error::io(format!("cannot run {what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Source,
        format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    ))
}

fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A restored cluster running privately: no TCP, its socket in a private
/// directory, `trust` on that socket only, `lc_messages = C`. Stopped
/// (immediately) when dropped unless [`PrivateServer::stop`] ran.
pub struct PrivateServer {
    pg_ctl: PathBuf,
    pgdata: PathBuf,
    owner: (u32, u32),
    port: u16,
    log: PathBuf,
    _dir: crate::scratch::PrivateDir,
    stopped: bool,
}

/// Where a private recovery stopped.
#[derive(Debug, Clone)]
pub struct Promoted {
    /// The last transaction replayed (None: none was).
    pub recovered_to: Option<DateTime<Utc>>,
    /// The timeline the promotion started.
    pub timeline: u32,
    /// From the start of the server to its promotion.
    pub recovery_s: f64,
}

impl PrivateServer {
    /// Start the restored cluster in `pgdata` privately (recovery
    /// settings written by [`run`]) and wait until it has promoted.
    pub async fn recover(
        pgdata: &Path,
        info: &BaseBackupInfo,
        port: Option<u16>,
        timeout: Duration,
    ) -> Result<(PrivateServer, Promoted)> {
        let owner = owner_of(pgdata)?;
        let major: u32 = info
            .pg_version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let pg_ctl = crate::postgres::tools::find("pg_ctl", major, None)?;
        let clock = Instant::now();
        let private = crate::scratch::PrivateDir::create(None)?;
        let sock = private.path().to_owned();
        let hba = sock.join("pg_hba.conf");
        std::fs::write(&hba, "local all all trust\n")
            .map_err(|e| Error::io(format!("cannot write {}: {e}", hba.display())))?;
        if unsafe { libc::geteuid() } == 0 {
            for p in [&sock, &hba] {
                std::os::unix::fs::chown(p, Some(owner.0), Some(owner.1))
                    .map_err(|e| Error::io(format!("cannot chown {}: {e}", p.display())))?;
            }
        }
        let port = port.unwrap_or(5432);
        let log = pgdata.join("usdcop-dr-recovery.log");
        let private_opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c hba_file='{}' -c port={port} -c lc_messages=C",
            sock.display(),
            hba.display()
        );
        let mut start = Command::new(&pg_ctl.path);
        start
            .arg("start")
            .arg("-D")
            .arg(pgdata)
            .arg("-l")
            .arg(&log)
            .arg("-W")
            .arg("-o")
            .arg(&private_opts);
        as_owner(&mut start, owner);
        run_tool(start, "pg_ctl start")?;
        let mut server = PrivateServer {
            pg_ctl: pg_ctl.path,
            pgdata: pgdata.to_owned(),
            owner,
            port,
            log,
            _dir: private,
            stopped: false,
        };
        match watch(&server, timeout, clock).await {
            Ok((recovered_to, timeline)) => Ok((
                server,
                Promoted {
                    recovered_to,
                    timeline,
                    recovery_s: clock.elapsed().as_secs_f64(),
                },
            )),
            Err(e) => {
                let _ = server.stop("immediate");
                Err(e)
            }
        }
    }

    /// A DSN for `dbname` over the private socket, as the server's OS user.
    pub fn dsn(&self, dbname: &str) -> Result<crate::postgres::Dsn> {
        crate::postgres::Dsn::parse(&format!(
            "host={} port={} user={} dbname={} connect_timeout=5",
            self._dir.path().display(),
            self.port,
            user_name(self.owner.0),
            dbname
        ))
    }

    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// `pg_ctl stop -m MODE` (fast: a clean shut-down; immediate: none).
    pub fn stop(&mut self, mode: &str) -> Result<()> {
        self.stopped = true;
        pg_ctl_stop(&self.pg_ctl, &self.pgdata, self.owner, mode, 600)
    }
}

/// `pg_ctl stop -D PGDATA -m MODE -w -t TIMEOUT` as the cluster's owner.
fn pg_ctl_stop(
    pg_ctl: &Path,
    pgdata: &Path,
    owner: (u32, u32),
    mode: &str,
    timeout_s: u32,
) -> Result<()> {
    let mut c = Command::new(pg_ctl);
    c.arg("stop")
        .arg("-D")
        .arg(pgdata)
        .arg("-m")
        .arg(mode)
        .arg("-w")
        .arg("-t")
        .arg(timeout_s.to_string());
    as_owner(&mut c, owner);
    run_tool(c, "pg_ctl stop")
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop("immediate");
        }
    }
}

/// Stop `pgdata`'s server at once if it runs (a clean-up after a signal).
pub fn stop_immediate(pgdata: &Path) {
    if !pgdata.join("postmaster.pid").exists() {
        return;
    }
    let major: u32 = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
        .unwrap_or(0);
    let (Ok(owner), Ok(pg_ctl)) = (
        owner_of(pgdata),
        crate::postgres::tools::find("pg_ctl", major, None),
    ) else {
        return;
    };
    let _ = pg_ctl_stop(&pg_ctl.path, pgdata, owner, "immediate", 30);
}

/// Start the server privately, wait for it to promote, read the point it
/// reached, stop it, and start it again with its own settings.
async fn recover(opts: &PitrOptions, info: &BaseBackupInfo) -> Result<RecoveryReport> {
    let (mut server, promoted) =
        PrivateServer::recover(&opts.pgdata, info, opts.port, opts.timeout).await?;
    let recovered_to = promoted.recovered_to;
    server.stop("fast")?;
    let log = server.log.clone();
    let (pg_ctl, owner) = (server.pg_ctl.clone(), server.owner);
    drop(server);
    let mut running = false;
    if !opts.no_restart {
        let mut c = Command::new(&pg_ctl);
        c.arg("start")
            .arg("-D")
            .arg(&opts.pgdata)
            .arg("-l")
            .arg(&log)
            .arg("-w")
            .arg("-t")
            .arg("300");
        as_owner(&mut c, owner);
        run_tool(c, "pg_ctl start").map_err(|e| {
            Error::new(
                ErrorKind::Source,
                format!(
                    "recovered to {} and stopped cleanly, but starting it with its own settings failed: {}",
                    recovered_to.map(|t| t.to_rfc3339()).unwrap_or_else(|| "the start".into()),
                    e.message()
                ),
            )
            .with_hint(format!(
                "fix the cause (a port in use: --port), then pg_ctl -D {} start",
                opts.pgdata.display()
            ))
        })?;
        running = true;
    }
    Ok(RecoveryReport {
        recovered_to,
        timeline: promoted.timeline,
        recovery_s: promoted.recovery_s,
        running,
        log_file: log,
    })
}

/// Poll the private server until it has promoted; fail with the log's
/// words when it stops (e.g. the archive ends before the target).
async fn watch(
    server: &PrivateServer,
    timeout: Duration,
    clock: Instant,
) -> Result<(Option<DateTime<Utc>>, u32)> {
    let dsn = server.dsn("postgres")?;
    let log = server.log.as_path();
    let pid_file = server.pgdata.join("postmaster.pid");
    let mut last_note = Instant::now();
    let mut seen_pid = false;
    loop {
        if clock.elapsed() > timeout {
            return Err(Error::new(
                ErrorKind::Source,
                format!(
                    "recovery did not finish within {}; last log lines:\n{}",
                    crate::config::duration_text(timeout),
                    log_tail(log, 10)
                ),
            ));
        }
        // `pg_ctl start -W` returns before the server writes its pid
        // file: gone only once seen, or after a generous start-up time.
        if pid_file.exists() {
            seen_pid = true;
        } else if seen_pid || clock.elapsed() > Duration::from_secs(60) {
            return Err(recovery_failed(log));
        }
        if let Ok(client) = crate::postgres::inspect::connect(&dsn).await {
            let q = client
                .query_one(
                    "SELECT pg_is_in_recovery(), to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', \
                            'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                    &[],
                )
                .await;
            match q {
                Ok(row) => {
                    let in_recovery: bool = row.get(0);
                    let at: Option<String> = row.get(1);
                    let at = at
                        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.with_timezone(&Utc));
                    if !in_recovery {
                        // Promoted: new WAL goes to the new timeline.
                        let tl: i32 = client
                            .query_one(
                                "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4",
                                &[],
                            )
                            .await
                            .map_err(|e| crate::postgres::inspect::db_err("reading the timeline", e))?
                            .get(0);
                        return Ok((at, tl as u32));
                    }
                    if last_note.elapsed() > Duration::from_secs(10) {
                        tracing::info!(
                            "recovering: replayed up to {}",
                            at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
                        );
                        last_note = Instant::now();
                    }
                }
                Err(_) if seen_pid && !pid_file.exists() => return Err(recovery_failed(log)),
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn recovery_failed(log: &Path) -> Error {
    let tail = log_tail(log, 12);
    let short = tail.contains("recovery ended before configured recovery target was reached");
    let last = tail
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once("last completed transaction was at log time ")
                .map(|(_, t)| t.trim().to_owned())
        })
        .unwrap_or_default();
    if short {
        return Error::not_found(format!(
            "the archive ends before the target: recovery replayed everything archived{} and stopped without reaching it; the restored cluster is not usable\n{tail}",
            if last.is_empty() {
                String::new()
            } else {
                format!(" (newest transaction: {last})")
            }
        ))
        .with_hint("choose an earlier time (usdcop-dr wal-verify shows the newest recoverable time) or `latest`");
    }
    Error::new(
        ErrorKind::Source,
        format!("the server stopped during recovery; last log lines:\n{tail}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let bog: chrono_tz::Tz = "America/Bogota".parse().unwrap();
        assert_eq!(Target::parse("latest", bog).unwrap().0, Target::Latest);
        let t = |s: &str| match Target::parse(s, bog).unwrap().0 {
            Target::Time(t) => t.to_rfc3339(),
            Target::Latest => "latest".into(),
        };
        assert_eq!(t("2026-12-03T14:30:00-05:00"), "2026-12-03T19:30:00+00:00");
        assert_eq!(t("2026-12-03 14:30:00"), "2026-12-03T19:30:00+00:00");
        assert_eq!(t("2026-12-03 14:30:00 UTC"), "2026-12-03T14:30:00+00:00");
        assert_eq!(
            t("2026-12-03 14:30:00 Europe/London"),
            "2026-12-03T14:30:00+00:00"
        );
        assert_eq!(t("2026-12-03 14:30:00 +02:00"), "2026-12-03T12:30:00+00:00");
        assert_eq!(
            t("2026-12-03 14:30:00.250 UTC"),
            "2026-12-03T14:30:00.250+00:00"
        );
        assert!(Target::parse("2026-12-03 14:30:00", bog)
            .unwrap()
            .1
            .contains("America/Bogota"));
        for bad in [
            "",
            "yesterday",
            "2026-12-03",
            "2026-13-03 14:30:00",
            "2026-12-03 14:30:00 Mars/Base",
        ] {
            assert!(Target::parse(bad, bog).is_err(), "{bad:?}");
        }
        let london: chrono_tz::Tz = "Europe/London".parse().unwrap();
        // 01:30 happens twice on 2026-10-25 in London, never on 2026-03-29
        assert!(Target::parse("2026-10-25 01:30:00", london).is_err());
        assert!(Target::parse("2026-03-29 01:30:00", london).is_err());
    }

    #[test]
    fn settings_quote_and_target() {
        let opts = PitrOptions {
            source: "trading".into(),
            target: Target::Time("2026-12-03T19:30:00.5Z".parse().unwrap()),
            target_text: String::new(),
            pgdata: "/x".into(),
            restore_command: "/usr/bin/usdcop-dr --config '/etc/it's.toml' wal-fetch %f %p".into(),
            start: false,
            port: Some(5499),
            keep_archiving: false,
            timeout: Duration::from_secs(1),
            no_restart: false,
            read_concurrency: None,
        };
        let s = recovery_settings(&opts, Utc::now());
        assert!(s.contains("restore_command = '/usr/bin/usdcop-dr --config ''/etc/it''s.toml'' wal-fetch %f %p'"), "{s}");
        assert!(
            s.contains("recovery_target_time = '2026-12-03 19:30:00.500000+00'"),
            "{s}"
        );
        assert!(s.contains("recovery_target_action = 'promote'"));
        assert!(s.contains("archive_mode = 'off'"));
        assert!(s.contains("port = 5499"));
        let latest = PitrOptions {
            target: Target::Latest,
            keep_archiving: true,
            port: None,
            ..opts
        };
        let s = recovery_settings(&latest, Utc::now());
        assert!(!s.contains("recovery_target_time ="), "{s}");
        assert!(!s.contains("archive_mode"), "{s}");
        assert!(!s.contains("\nport"), "{s}");
    }
}
