//! `wal-push` and `wal-fetch`: PostgreSQL calls them once per file, so
//! they print nothing on success (but with --json or -v), unlock through
//! the WAL key cache, and take every setting from the configuration file.
//! With `[wal] async`, `wal-push` hands the work to a background pusher
//! (`usdcop_dr::commands::wal_async`), which this module starts as a
//! detached process; `wal-fetch` serves prefetched files from the spool
//! without opening the repository.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use usdcop_dr::backend;
use usdcop_dr::commands::wal::{self, PushOutcome};
use usdcop_dr::commands::wal_async::{self, Foreground, PusherOptions};
use usdcop_dr::commands::wal_spool::{self, FetchSpool, LagFile, PushFailure, PushSpool};
use usdcop_dr::commands::wal_verify;
use usdcop_dr::config::{Settings, WalSettings};
use usdcop_dr::format::wal::WalName;
use usdcop_dr::repository::key_cache::{self, Unlock};
use usdcop_dr::repository::Repository;
use usdcop_dr::{Error, Result};

use super::args::Cli;
use super::nightly;

/// The pusher's log is started anew past this size (the old one kept as
/// `pusher.log.old`).
const LOG_MAX: u64 = 4 << 20;

/// The configuration and its `[wal]` section, or a usage error saying
/// what to add.
fn wal_settings<'a>(
    settings: Option<&'a Settings>,
    what: &str,
) -> Result<(&'a Settings, &'a WalSettings)> {
    let s = nightly::require(settings, what)?;
    if s.repository.is_none() {
        return Err(
            Error::usage(format!("{what} needs [repository] in {}", s.file.display()))
                .with_hint("set [repository] url and password_file (docs/OPERATIONS.md)"),
        );
    }
    let w = s.wal.as_ref().ok_or_else(|| {
        Error::usage(format!("{what} needs a [wal] section in {}", s.file.display()))
            .with_hint("add [wal] source = \"NAME\", naming the postgres [[source]] whose cluster archives here (docs/OPERATIONS.md)")
    })?;
    Ok((s, w))
}

async fn open(cli: &Cli, settings: Option<&Settings>) -> Result<(Repository, Unlock)> {
    let (repo_arg, s3) = nightly::repository(cli, settings)?;
    let backend = backend::open(&repo_arg, &s3).await?;
    let password = super::read_password(nightly::password_file(settings))?;
    let cache = key_cache::path(&usdcop_dr::state::dir(), &repo_arg);
    key_cache::open(backend, &password, &cache).await
}

fn lag_file(cli: &Cli, s: &Settings) -> Result<LagFile> {
    let (repo_arg, _) = nightly::repository(cli, Some(s))?;
    Ok(LagFile::new(
        &usdcop_dr::state::dir(),
        &repo_arg,
        s.metrics.as_ref().map(|m| m.textfile.as_path()),
    ))
}

#[derive(Serialize)]
struct Timed<T: Serialize> {
    #[serde(flatten)]
    outcome: T,
    /// `null`: the repository was not opened (a spool record or file).
    unlock: Option<Unlock>,
    unlock_s: f64,
    total_s: f64,
}

/// How a push was done.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Via {
    /// In this process.
    Sync,
    /// By the background pusher (its record proved it).
    Background,
}

#[derive(Serialize)]
struct PushOut {
    #[serde(flatten)]
    outcome: PushOutcome,
    via: Via,
}

pub async fn push(cli: &Cli, settings: Option<&Settings>, path: &Path) -> Result<i32> {
    let (s, w) = wal_settings(settings, "wal-push")?;
    let lag = lag_file(cli, s)?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Only a file PostgreSQL marked ready goes through the spool: a
    // file pushed by hand is pushed here.
    let spool = (w.async_push && wal_spool::is_ready(path))
        .then(|| push_spool(cli, s, path))
        .transpose()?
        .flatten();
    let result = match &spool {
        Some((spool, pg_wal)) => push_async(cli, s, w, path, spool, pg_wal).await,
        None => push_sync(cli, settings, &w.source, path).await,
    };
    // The lag as PostgreSQL sees it: one failure per failed call; the
    // files it still waits for, but this one once it succeeded.
    let now = chrono::Utc::now();
    let stored = spool
        .as_ref()
        .map(|(s, _)| s.recorded())
        .unwrap_or_default();
    let ready = path
        .parent()
        .filter(|_| wal_spool::is_ready(path))
        .and_then(|d| wal_spool::ready_files(d).ok())
        .unwrap_or_default();
    let timed = match result {
        Ok(t) => t,
        Err(e) => {
            lag.note(|g| {
                g.failure(Some(&file), &e.to_string(), now);
                g.pending(&ready, &stored, now);
            });
            return Err(e);
        }
    };
    lag.note(|g| {
        g.success(&file, now);
        let waiting: Vec<_> = ready.into_iter().filter(|r| r.file != file).collect();
        g.pending(&waiting, &stored, now);
    });
    tracing::info!(
        "{} {} as {} ({:.3}s{})",
        match (&timed.outcome.via, timed.outcome.outcome.stored) {
            (Via::Background, _) => "archived by the background pusher:",
            (Via::Sync, true) => "archived",
            (Via::Sync, false) => "already archived:",
        },
        timed.outcome.outcome.file,
        timed.outcome.outcome.object,
        timed.total_s,
        match timed.unlock {
            Some(u) => format!(", unlock {u:?} {:.3}s", timed.unlock_s),
            None => String::new(),
        }
    );
    if cli.json {
        super::print_json(&timed)?;
    }
    Ok(0)
}

/// The push spool of the cluster whose `pg_wal` holds `path`, created;
/// `None` (with a warning: the push is then done in this process) when
/// it cannot be.
fn push_spool(cli: &Cli, s: &Settings, path: &Path) -> Result<Option<(PushSpool, PathBuf)>> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let pg_wal = std::path::absolute(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .map_err(|e| Error::io(format!("cannot resolve {}: {e}", dir.display())))?;
    let (repo_arg, _) = nightly::repository(cli, Some(s))?;
    let spool = PushSpool::new(&usdcop_dr::state::dir(), &repo_arg, &pg_wal);
    match spool.create() {
        Ok(()) => Ok(Some((spool, pg_wal))),
        Err(e) => {
            tracing::warn!("[wal] async: no spool ({e}); pushing in this process");
            Ok(None)
        }
    }
}

async fn push_sync(
    cli: &Cli,
    settings: Option<&Settings>,
    source: &str,
    path: &Path,
) -> Result<Timed<PushOut>> {
    let started = Instant::now();
    let (repo, unlock) = open(cli, settings).await?;
    repo.check_writable()?;
    let unlock_s = started.elapsed().as_secs_f64();
    let outcome = wal::push(&repo, source, path).await?;
    Ok(Timed {
        outcome: PushOut {
            outcome,
            via: Via::Sync,
        },
        unlock: Some(unlock),
        unlock_s,
        total_s: started.elapsed().as_secs_f64(),
    })
}

async fn push_async(
    cli: &Cli,
    s: &Settings,
    w: &WalSettings,
    path: &Path,
    spool: &PushSpool,
    pg_wal: &Path,
) -> Result<Timed<PushOut>> {
    let started = Instant::now();
    let file = wal::prepare(path)?;
    let (repo_arg, _) = nightly::repository(cli, Some(s))?;
    let cache = key_cache::path(&usdcop_dr::state::dir(), &repo_arg);
    let repository_id = || key_cache::cached_repository_id(&cache);
    let spawn = || spawn_pusher(cli, s, pg_wal, spool);
    match wal_async::foreground(spool, &file, &repository_id, &spawn, wal_async::WAIT).await? {
        Foreground::Recorded(r) => Ok(Timed {
            outcome: PushOut {
                outcome: PushOutcome {
                    file: r.file,
                    object: r.object,
                    stored: true,
                    bytes: file.plain.len() as u64,
                    stored_bytes: r.stored_bytes,
                    system_identifier: r.system_identifier,
                },
                via: Via::Background,
            },
            unlock: None,
            unlock_s: 0.0,
            total_s: started.elapsed().as_secs_f64(),
        }),
        Foreground::PushYourself(why) => {
            tracing::info!("pushing {} in this process: {why}", file.name.name);
            push_sync(cli, Some(s), &w.source, path).await
        }
    }
}

/// Start `usdcop-dr wal-push --background <pg_wal>` detached: its own
/// session, no terminal, stdout to nothing, its log to the spool's
/// `pusher.log`; the same configuration and repository flags as this
/// process (secrets only as this process has them: file or environment).
fn spawn_pusher(
    cli: &Cli,
    s: &Settings,
    pg_wal: &Path,
    spool: &PushSpool,
) -> Result<std::process::Child> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io(format!("cannot find this program to start the pusher: {e}")))?;
    let log_path = spool.log_path();
    if std::fs::metadata(&log_path).is_ok_and(|m| m.len() > LOG_MAX) {
        let _ = std::fs::rename(&log_path, log_path.with_extension("log.old"));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(format!("cannot open {}: {e}", log_path.display())))?;
    let mut c = std::process::Command::new(exe);
    c.arg("--config").arg(&s.file);
    for (flag, v) in [
        ("--repo", &cli.repo),
        ("--s3-endpoint", &cli.s3_endpoint),
        ("--s3-profile", &cli.s3_profile),
        ("--s3-region", &cli.s3_region),
    ] {
        if let Some(v) = v {
            c.arg(flag).arg(v);
        }
    }
    for _ in 0..cli.verbose.max(1) {
        c.arg("-v");
    }
    c.args(["wal-push", "--background"])
        .arg(pg_wal)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.spawn()
        .map_err(|e| Error::io(format!("cannot start the WAL pusher: {e}")))
}

/// `wal-push --background PG_WAL`: the background pusher. Exits 0 at once
/// when another one runs.
pub async fn background(cli: &Cli, settings: Option<&Settings>, pg_wal: &Path) -> Result<i32> {
    let (s, w) = wal_settings(settings, "wal-push --background")?;
    let (repo_arg, _) = nightly::repository(cli, settings)?;
    let spool = PushSpool::new(&usdcop_dr::state::dir(), &repo_arg, pg_wal);
    spool.create()?;
    let Some(_lock) = spool.lock_as_pusher()? else {
        tracing::info!("another pusher runs for {}", pg_wal.display());
        return Ok(0);
    };
    let lag = lag_file(cli, s)?;
    let opened = match open(cli, settings).await {
        Ok((repo, _)) => repo.check_writable().map(|()| repo),
        Err(e) => Err(e),
    };
    let repo = match opened {
        Ok(r) => r,
        Err(e) => {
            // The foreground calls waiting for it report it (and count it
            // in the lag file).
            spool.write_failure(&PushFailure::new(None, &e, chrono::Utc::now()));
            return Err(e);
        }
    };
    let opts = PusherOptions {
        source: w.source.clone(),
        parallel: w.push_parallel,
        idle: wal_async::IDLE,
    };
    tracing::info!(
        "pusher {} started for {} ({} at once)",
        std::process::id(),
        pg_wal.display(),
        opts.parallel
    );
    let report = wal_async::run_pusher(Arc::new(repo), &spool, pg_wal, &lag, &opts).await?;
    tracing::info!(
        "pusher {} idle, exiting: {} pushed, {} already archived, {} bytes stored",
        std::process::id(),
        report.pushed,
        report.already_archived,
        report.bytes
    );
    Ok(0)
}

pub async fn fetch(cli: &Cli, settings: Option<&Settings>, name: &str, dest: &Path) -> Result<i32> {
    let started = Instant::now();
    let (_, w) = wal_settings(settings, "wal-fetch")?;
    let parsed = WalName::parse(name)?;
    let (repo_arg, _) = nightly::repository(cli, settings)?;
    let state_dir = usdcop_dr::state::dir();
    let spool = FetchSpool::new(&state_dir, &repo_arg);
    let now = chrono::Utc::now();
    if w.prefetch > 0 {
        spool.clean(&parsed, None, now);
        let id = key_cache::cached_repository_id(&key_cache::path(&state_dir, &repo_arg));
        if let Some(id) = id {
            if let Some(served) = spool.take(&parsed, dest, &id, now)? {
                let outcome = wal::FetchOutcome {
                    file: served.record.file,
                    object: served.record.object,
                    dest: dest.to_owned(),
                    bytes: served.record.bytes,
                    from_spool: true,
                    prefetched: 0,
                };
                return fetched(cli, outcome, None, 0.0, started);
            }
        }
    }
    let (repo, unlock) = open(cli, settings).await?;
    let unlock_s = started.elapsed().as_secs_f64();
    let outcome = if w.prefetch > 0 {
        spool.clean(&parsed, Some(&repo.config().id), now);
        wal::fetch_ahead(&repo, name, dest, &spool, w.prefetch).await?
    } else {
        wal::fetch(&repo, name, dest).await?
    };
    match outcome {
        // PostgreSQL asks for files past the end of the archive: that is
        // the normal end of recovery, so one quiet line and exit 1.
        None => {
            eprintln!("usdcop-dr: {name} is not in the WAL archive");
            Ok(1)
        }
        Some(outcome) => fetched(cli, outcome, Some(unlock), unlock_s, started),
    }
}

fn fetched(
    cli: &Cli,
    outcome: wal::FetchOutcome,
    unlock: Option<Unlock>,
    unlock_s: f64,
    started: Instant,
) -> Result<i32> {
    let timed = Timed {
        outcome,
        unlock,
        unlock_s,
        total_s: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        "fetched {} into {} ({:.3}s{}{})",
        timed.outcome.file,
        timed.outcome.dest.display(),
        timed.total_s,
        if timed.outcome.from_spool {
            ", prefetched"
        } else {
            ""
        },
        match timed.outcome.prefetched {
            0 => String::new(),
            n => format!(", {n} more prefetched"),
        }
    );
    if cli.json {
        super::print_json(&timed)?;
    }
    Ok(0)
}

/// `wal-verify`: exit 0 when recovery from every base backup can reach the
/// newest segment of every timeline, 3 on a gap or damage. Writes
/// `wal-verify`'s metrics textfile when the configuration has `[metrics]`.
pub async fn verify(cli: &Cli, settings: Option<&Settings>, read_data: bool) -> Result<i32> {
    let (repo_arg, s3) = nightly::repository(cli, settings)?;
    let backend = backend::open(&repo_arg, &s3).await?;
    let password = super::read_password(nightly::password_file(settings))?;
    // What the store holds, never a cached copy.
    let repo = Repository::open(backend, &password).await?;
    let r = wal_verify::run(
        &repo,
        wal_verify::WalVerifyOptions {
            read_data,
            now: chrono::Utc::now(),
        },
    )
    .await?;
    if let Some(m) = settings.and_then(|s| s.metrics.as_ref()) {
        let input = usdcop_dr::metrics::WalMetrics {
            checked_at: r.checked_at,
            ok: r.ok(),
            newest_recoverable: r.newest_recoverable_time,
            gaps: r.gaps.iter().map(|g| g.gap.count).sum(),
            segments: r.segments,
        };
        let file = usdcop_dr::metrics::wal_textfile(&m.textfile);
        if let Err(e) = usdcop_dr::metrics::render_wal(&input)
            .and_then(|text| usdcop_dr::metrics::write_textfile(&file, &text))
        {
            eprintln!("usdcop-dr: error: metrics not written: {e}");
        }
    }
    super::emit(cli.json, &r, || render_verify(&r))?;
    Ok(if r.ok() { 0 } else { 3 })
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string()
}

fn render_verify(r: &wal_verify::WalVerifyReport) -> String {
    let mut t = format!(
        "WAL archive in {}: cluster {}, {} segment(s) of {} MiB",
        r.location,
        r.system_identifier.as_deref().unwrap_or("(none recorded)"),
        r.segments,
        r.segment_size >> 20
    );
    for tl in &r.timelines {
        t += &format!("\ntimeline {}", tl.timeline);
        if let Some(h) = tl.history.last() {
            t += &format!(" (from timeline {} at {})", h.parent, h.switchpoint);
        }
        t += ":";
        for (i, range) in tl.ranges.iter().enumerate() {
            let s = &range.segments;
            t += &format!(
                "\n  range {} .. {} ({} segments), newest time {}",
                s.first,
                s.last,
                s.segments,
                range
                    .newest_time
                    .as_ref()
                    .map_or("unknown".to_owned(), time)
            );
            if let Some(g) = tl.gaps.get(i) {
                t += &format!(
                    "\n  missing {} segment(s): {}{}",
                    g.count,
                    g.missing.join(" "),
                    if (g.missing.len() as u64) < g.count {
                        " …"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    if r.base_backups.is_empty() {
        t += "\nno base backup: checked from the oldest archived segment";
    }
    for b in &r.base_backups {
        t += &format!(
            "\nbase backup {} ({}, timeline {}, {} .. {}): {}, recoverable to {} on timeline {}",
            b.short_id,
            time(&b.time),
            b.timeline,
            b.start_segment,
            b.stop_segment,
            if b.consistent {
                "consistent"
            } else {
                "NOT CONSISTENT"
            },
            b.recoverable_to.as_ref().map_or("unknown".to_owned(), time),
            b.follows_timeline
        );
    }
    if r.segments_read > 0 {
        t += &format!(
            "\nread {} segment(s) ({})",
            r.segments_read,
            super::human(r.bytes_read)
        );
    }
    t += &format!(
        "\nnewest recoverable time: {}",
        match (&r.newest_recoverable_time, r.newest_recoverable_age_s) {
            (Some(n), Some(age)) => format!(
                "{} ({} ago), newest segment {}",
                time(n),
                humantime::format_duration(std::time::Duration::from_secs(age.max(0.0) as u64)),
                r.newest_segment.as_deref().unwrap_or("-")
            ),
            _ => "none".to_owned(),
        }
    );
    for w in &r.warnings {
        t += &format!("\nwarning: {}: {}", w.object, w.message);
    }
    for g in &r.gaps {
        t += &format!(
            "\nGAP on timeline {}: {} segment(s) missing, needed from {}: {}",
            g.timeline,
            g.gap.count,
            g.needed_from,
            g.gap.missing.join(" ")
        );
    }
    for p in &r.problems {
        t += &format!("\nDAMAGED {}: {}", p.object, p.message);
    }
    if r.ok() {
        t += "\nno gaps, no damage";
    } else {
        t += &format!(
            "\n{} gap(s), {} problem(s) found",
            r.gaps.len(),
            r.problems.len()
        );
    }
    t
}
