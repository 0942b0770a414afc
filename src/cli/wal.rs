//! `wal-push` and `wal-fetch`: PostgreSQL calls them once per file, so
//! they print nothing on success (but with --json or -v), unlock through
//! the WAL key cache, and take every setting from the configuration file.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use usdcop_dr::backend;
use usdcop_dr::commands::{wal, wal_verify};
use usdcop_dr::config::Settings;
use usdcop_dr::repository::key_cache::{self, Unlock};
use usdcop_dr::repository::Repository;
use usdcop_dr::{Error, Result};

use super::args::Cli;
use super::nightly;

/// The configuration's `[wal] source`, or a usage error saying what to add.
fn wal_source<'a>(settings: Option<&'a Settings>, what: &str) -> Result<&'a str> {
    let s = nightly::require(settings, what)?;
    if s.repository.is_none() {
        return Err(
            Error::usage(format!("{what} needs [repository] in {}", s.file.display()))
                .with_hint("set [repository] url and password_file (docs/OPERATIONS.md)"),
        );
    }
    s.wal.as_ref().map(|w| w.source.as_str()).ok_or_else(|| {
        Error::usage(format!("{what} needs a [wal] section in {}", s.file.display()))
            .with_hint("add [wal] source = \"NAME\", naming the postgres [[source]] whose cluster archives here (docs/OPERATIONS.md)")
    })
}

async fn open(cli: &Cli, settings: Option<&Settings>) -> Result<(Repository, Unlock)> {
    let (repo_arg, s3) = nightly::repository(cli, settings)?;
    let backend = backend::open(&repo_arg, &s3).await?;
    let password = super::read_password(nightly::password_file(settings))?;
    let cache = key_cache::path(&usdcop_dr::state::dir(), &repo_arg);
    key_cache::open(backend, &password, &cache).await
}

#[derive(Serialize)]
struct Timed<T: Serialize> {
    #[serde(flatten)]
    outcome: T,
    unlock: Unlock,
    unlock_s: f64,
    total_s: f64,
}

pub async fn push(cli: &Cli, settings: Option<&Settings>, path: &Path) -> Result<i32> {
    let started = Instant::now();
    let source = wal_source(settings, "wal-push")?;
    let (repo, unlock) = open(cli, settings).await?;
    repo.check_writable()?;
    let unlock_s = started.elapsed().as_secs_f64();
    let outcome = wal::push(&repo, source, path).await?;
    let timed = Timed {
        outcome,
        unlock,
        unlock_s,
        total_s: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        "{} {} as {} ({:.3}s, unlock {:?} {:.3}s)",
        if timed.outcome.stored {
            "archived"
        } else {
            "already archived:"
        },
        timed.outcome.file,
        timed.outcome.object,
        timed.total_s,
        timed.unlock,
        timed.unlock_s
    );
    if cli.json {
        super::print_json(&timed)?;
    }
    Ok(0)
}

pub async fn fetch(cli: &Cli, settings: Option<&Settings>, name: &str, dest: &Path) -> Result<i32> {
    let started = Instant::now();
    wal_source(settings, "wal-fetch")?;
    let (repo, unlock) = open(cli, settings).await?;
    let unlock_s = started.elapsed().as_secs_f64();
    match wal::fetch(&repo, name, dest).await? {
        // PostgreSQL asks for files past the end of the archive: that is
        // the normal end of recovery, so one quiet line and exit 1.
        None => {
            eprintln!("usdcop-dr: {name} is not in the WAL archive");
            Ok(1)
        }
        Some(outcome) => {
            let timed = Timed {
                outcome,
                unlock,
                unlock_s,
                total_s: started.elapsed().as_secs_f64(),
            };
            tracing::info!(
                "fetched {} into {} ({:.3}s)",
                timed.outcome.file,
                timed.outcome.dest.display(),
                timed.total_s
            );
            if cli.json {
                super::print_json(&timed)?;
            }
            Ok(0)
        }
    }
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
