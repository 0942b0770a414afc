//! The commands that run from the configuration file: `backup --all` /
//! `backup --source NAME`, `status`, `config check`; and how the file's
//! `[repository]` fills in what flags leave out.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use usdcop_dr::backend;
use usdcop_dr::commands::backup_all::{self, ErrorReport, SourceRun};
use usdcop_dr::commands::status;
use usdcop_dr::config::{self, duration_text, Settings, SourceSettings};
use usdcop_dr::repository::Repository;
use usdcop_dr::retention;
use usdcop_dr::state::StateStore;
use usdcop_dr::{Error, Result};

use super::args::Cli;
use super::{emit, human, print_json, read_password};

/// Exit code of a `backup --all` that did not start because another one
/// of the same repository is running (EX_TEMPFAIL; docs/CLI.md).
pub const EXIT_BUSY: i32 = 75;

/// The configuration: the file `--config` / `USDCOP_DR_CONFIG` names (it
/// must exist), else the default path when it exists, else none.
pub fn settings(cli: &Cli) -> Result<Option<Settings>> {
    match &cli.config {
        Some(p) => Ok(Some(config::load(p)?)),
        None if Path::new(config::DEFAULT_PATH).exists() => {
            Ok(Some(config::load(Path::new(config::DEFAULT_PATH))?))
        }
        None => Ok(None),
    }
}

pub fn require<'a>(settings: Option<&'a Settings>, what: &str) -> Result<&'a Settings> {
    settings.ok_or_else(|| {
        Error::usage(format!("{what} needs a configuration file, and none was found"))
            .with_hint(format!(
                "pass --config FILE or set {}; without either, {} is read (usdcop-dr.example.toml shows the keys)",
                config::ENV_VAR,
                config::DEFAULT_PATH
            ))
    })
}

/// The repository and its store's options: each flag (or its environment
/// variable) wins over the file's `[repository]` key.
pub fn repository(
    cli: &Cli,
    settings: Option<&Settings>,
) -> Result<(String, backend::s3::S3Options)> {
    let file = settings.and_then(|s| s.repository.as_ref());
    let repo = cli
        .repo
        .clone()
        .or_else(|| file.map(|r| r.url.clone()))
        .ok_or_else(|| {
            Error::usage("no repository given").with_hint(
                "pass --repo PATH, set USDCOP_DR_REPO, or set [repository] url in the configuration file",
            )
        })?;
    let s3 = backend::s3::S3Options {
        endpoint: cli
            .s3_endpoint
            .clone()
            .or_else(|| file.and_then(|r| r.endpoint.clone())),
        region: cli.s3_region.clone(),
        profile: cli
            .s3_profile
            .clone()
            .or_else(|| file.and_then(|r| r.profile.clone())),
        data_storage_class: cli.s3_data_storage_class.clone(),
        credentials: None,
    };
    Ok((repo, s3))
}

/// The file's `[repository] password_file`, used when neither passphrase
/// variable is set.
pub fn password_file(settings: Option<&Settings>) -> Option<(&Path, &Path)> {
    let s = settings?;
    let f = s.repository.as_ref()?.password_file.as_deref()?;
    Some((f, s.file.as_path()))
}

pub async fn open_repository(cli: &Cli, settings: &Settings) -> Result<(String, Repository)> {
    let (repo_arg, s3) = repository(cli, Some(settings))?;
    let backend = backend::open(&repo_arg, &s3).await?;
    let location = backend.location();
    let password = read_password(password_file(Some(settings)))?;
    let mut repo = Repository::open(backend, &password).await?;
    repo.set_cache(super::cache_base(cli).as_deref());
    Ok((location, repo))
}

// ---- config check ---------------------------------------------------------

#[derive(Serialize)]
struct CheckOut {
    file: PathBuf,
    ok: bool,
    repository: Option<String>,
    rpo_s: f64,
    rto_s: Option<f64>,
    timezone: String,
    metrics_textfile: Option<PathBuf>,
    retention: CheckRetention,
    sources: Vec<CheckSource>,
}

#[derive(Serialize)]
struct CheckRetention {
    policies_dir: PathBuf,
    /// Whether the folder exists (checked when it does).
    policies_found: bool,
    policies: usize,
    sources_covered: usize,
    grace_s: f64,
    min_age_s: f64,
}

#[derive(Serialize)]
struct CheckSource {
    name: String,
    kind: &'static str,
    line: usize,
}

/// `config check [FILE]`: parse and check, touch nothing else.
pub fn config_check(cli: &Cli, file: Option<&Path>) -> Result<i32> {
    let path = file
        .map(Path::to_path_buf)
        .or_else(|| cli.config.clone())
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let s = config::load(&path)?;
    // The policies are checked against the sources when their folder is
    // there; prune refuses to run without it.
    let dir = &s.retention.policies;
    let configured = s.source_kinds();
    let policies = if dir.is_dir() {
        Some(retention::load(dir, &configured)?)
    } else {
        None
    };
    let out = CheckOut {
        file: path.clone(),
        ok: true,
        repository: s.repository.as_ref().map(|r| r.url.clone()),
        rpo_s: s.objectives.rpo.as_secs_f64(),
        rto_s: s.objectives.rto.map(|d| d.as_secs_f64()),
        timezone: s.objectives.timezone.name().to_owned(),
        metrics_textfile: s.metrics.as_ref().map(|m| m.textfile.clone()),
        retention: CheckRetention {
            policies_dir: dir.clone(),
            policies_found: policies.is_some(),
            policies: policies.as_ref().map_or(0, |p| p.policies.len()),
            sources_covered: policies.as_ref().map_or(0, |p| p.covered(&configured)),
            grace_s: s.retention.grace.as_secs_f64(),
            min_age_s: s.retention.min_age.as_secs_f64(),
        },
        sources: s
            .sources
            .iter()
            .map(|x| CheckSource {
                name: x.name.clone(),
                kind: x.spec.kind().as_str(),
                line: x.line,
            })
            .collect(),
    };
    emit(cli.json, &out, || {
        let mut t = format!("{}: ok", path.display());
        t += &format!(
            "\n  repository: {}",
            out.repository
                .as_deref()
                .unwrap_or("(none: --repo or USDCOP_DR_REPO)")
        );
        t += &format!(
            "\n  objectives: rpo {}, rto {}, times in {}",
            duration_text(s.objectives.rpo),
            s.objectives.rto.map_or("-".to_owned(), duration_text),
            out.timezone
        );
        if let Some(m) = &out.metrics_textfile {
            t += &format!("\n  metrics: {}", m.display());
        }
        let r = &out.retention;
        t += &if r.policies_found {
            format!(
                "\n  retention: {} polic{} in {}, covering {} of {} source(s)",
                r.policies,
                if r.policies == 1 { "y" } else { "ies" },
                r.policies_dir.display(),
                r.sources_covered,
                out.sources.len()
            )
        } else {
            format!(
                "\n  retention: no policy folder {} (prune needs it)",
                r.policies_dir.display()
            )
        };
        t += &format!(
            ", grace {}, min_age {}",
            duration_text(s.retention.grace),
            duration_text(s.retention.min_age)
        );
        t += &format!("\n  {} source(s):", out.sources.len());
        for x in &out.sources {
            t += &format!("\n    {} ({}, line {})", x.name, x.kind, x.line);
        }
        t
    })?;
    Ok(0)
}

// ---- backup --all ---------------------------------------------------------

#[derive(Serialize)]
struct AllOut<'a> {
    ok: bool,
    failed: Vec<&'a str>,
    repository: RepoOut,
    sources: &'a [SourceRun],
    metrics_file: Option<&'a Path>,
    state_file: PathBuf,
    /// Problems after the backups (state or metrics not written).
    errors: Vec<String>,
}

#[derive(Serialize)]
struct RepoOut {
    location: String,
    reachable: bool,
    error: Option<ErrorReport>,
}

/// `backup --all` (`names` empty) or `backup --source NAME…`.
pub async fn backup_all(cli: &Cli, settings: Option<&Settings>, names: &[String]) -> Result<i32> {
    let s = require(settings, "backup --all")?;
    let selected: Vec<&SourceSettings> = if names.is_empty() {
        if s.sources.is_empty() {
            return Err(Error::usage(format!(
                "{} has no [[source]] to back up",
                s.file.display()
            )));
        }
        s.sources.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                s.source(n).ok_or_else(|| {
                    Error::usage(format!("no source {n:?} in {}", s.file.display())).with_hint(
                        format!(
                            "configured sources: {}",
                            s.sources
                                .iter()
                                .map(|x| x.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let (repo_arg, _) = repository(cli, Some(s))?;
    let store = StateStore::new(usdcop_dr::state::dir(), &repo_arg);
    let _lock = match store.try_lock()? {
        Ok(lock) => lock,
        Err(busy) => {
            let e =
                Error::new(
                    usdcop_dr::ErrorKind::Io,
                    format!(
                    "another backup --all of {repo_arg} is running ({}); not starting a second one",
                    if busy.holder.is_empty() { "holder unknown" } else { &busy.holder }
                ),
                )
                .with_hint(format!(
                    "wait for it to finish (lock file {}); exit {EXIT_BUSY} means nothing was done",
                    busy.lock_file.display()
                ));
            eprintln!("usdcop-dr: {e}");
            if let Some(h) = e.hint() {
                eprintln!("usdcop-dr: hint: {h}");
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"error": {"kind": "busy", "message": e.to_string(), "hint": e.hint(), "exit_code": EXIT_BUSY}})
                );
            }
            return Ok(EXIT_BUSY);
        }
    };
    let progress = super::progress::make(cli.quiet, cli.json);
    let opened = open_repository(cli, s).await;
    let mut runs: Vec<SourceRun> = Vec::new();
    let (location, repo_error, repo) = match opened {
        Ok((location, repo)) => (location, None, Some(Arc::new(repo))),
        Err(e) => {
            report_source_error("repository", &e);
            (repo_arg.clone(), Some(ErrorReport::from(&e)), None)
        }
    };
    for src in &selected {
        let run = match &repo {
            Some(repo) => backup_all::run_one(repo.clone(), src, progress.clone()).await,
            None => backup_all::not_started(
                src,
                &Error::io(format!(
                    "not started: the repository could not be opened: {}",
                    repo_error.as_ref().map_or("", |e| e.message.as_str())
                )),
            ),
        };
        if !cli.json {
            println!("{}", summary_line(&run));
        }
        if let (Some(e), Some(_)) = (&run.error, &repo) {
            eprintln!("usdcop-dr: error: source {}: {}", run.source, e.message);
            if let Some(h) = &e.hint {
                eprintln!("usdcop-dr: hint: {h}");
            }
        }
        runs.push(run);
    }

    // After the sources: what they did, recorded; then the metrics.
    let mut errors = Vec::new();
    let mut state = store.load().unwrap_or_else(|e| {
        errors.push(format!("run state: {e}; starting a new one"));
        Default::default()
    });
    backup_all::record(&mut state, &runs);
    let facts = match &repo {
        Some(repo) => match backup_all::repository_facts(repo).await {
            Ok(f) => Some(f),
            Err(e) => {
                errors.push(format!("reading the repository for the metrics: {e}"));
                None
            }
        },
        None => None,
    };
    if let Some(f) = &facts {
        backup_all::refresh_last_success(&mut state, f);
    }
    if let Err(e) = store.save(&state) {
        errors.push(format!("run state not saved: {e}"));
    }
    if let Some(m) = &s.metrics {
        let input = backup_all::metrics_input(
            &s.sources,
            s.objectives.rpo,
            facts.as_ref(),
            &state,
            repo.is_some(),
        );
        if let Err(e) = usdcop_dr::metrics::render(&input)
            .and_then(|text| usdcop_dr::metrics::write_textfile(&m.textfile, &text))
        {
            errors.push(format!("metrics not written: {e}"));
        }
    }
    for e in &errors {
        eprintln!("usdcop-dr: error: {e}");
    }
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.source.as_str())
        .collect();
    let ok = failed.is_empty() && errors.is_empty();
    if cli.json {
        print_json(&AllOut {
            ok,
            failed: failed.clone(),
            repository: RepoOut {
                location,
                reachable: repo.is_some(),
                error: repo_error.clone(),
            },
            sources: &runs,
            metrics_file: s.metrics.as_ref().map(|m| m.textfile.as_path()),
            state_file: store.runs_path(),
            errors: errors.clone(),
        })?;
    }
    if !failed.is_empty() {
        eprintln!(
            "usdcop-dr: error: {} of {} source(s) failed: {}",
            failed.len(),
            runs.len(),
            failed.join(", ")
        );
    }
    Ok(match (&repo_error, ok) {
        (Some(e), _) => e.exit_code,
        (None, true) => 0,
        (None, false) => 1,
    })
}

fn report_source_error(what: &str, e: &Error) {
    eprintln!("usdcop-dr: error: {what}: {e}");
    if let Some(h) = e.hint() {
        eprintln!("usdcop-dr: hint: {h}");
    }
}

/// One line per source: result, name, kind, what it did.
fn summary_line(r: &SourceRun) -> String {
    let head = format!(
        "{:<6} {:<20} {:<8}",
        if r.ok { "ok" } else { "FAILED" },
        r.source,
        r.kind.as_str()
    );
    match (&r.backup, &r.error) {
        (Some(b), None) => format!(
            "{head} snapshot {}: {} read, {} new stored, {:.1}s",
            b.snapshot_id.short(),
            human(b.bytes_in),
            human(b.bytes_stored_new),
            r.duration_s
        ),
        (_, Some(e)) => format!("{head} {} ({:.1}s)", e.message, r.duration_s),
        (None, None) => head,
    }
}

// ---- status -----------------------------------------------------------------

/// `status`: exit 0 when every source is within the RPO.
pub async fn status(cli: &Cli, settings: Option<&Settings>) -> Result<i32> {
    let s = require(settings, "status")?;
    let (repo_arg, _) = repository(cli, Some(s))?;
    let repo_arg_for_wal = repo_arg.clone();
    let store = StateStore::new(usdcop_dr::state::dir(), &repo_arg);
    let state = store.load().unwrap_or_else(|e| {
        eprintln!("usdcop-dr: warning: {e}");
        Default::default()
    });
    let mut wal_map = None;
    let facts = async {
        let (location, repo) = open_repository(cli, s).await?;
        let facts = backup_all::repository_facts(&repo).await?;
        if s.wal.is_some() {
            wal_map = Some(usdcop_dr::repository::wal_archive::load(&repo).await);
        }
        Ok::<_, Error>((location, facts))
    }
    .await;
    let (location, facts) = match facts {
        Ok((l, f)) => (l, Ok(f)),
        Err(e) => {
            report_source_error("repository", &e);
            (repo_arg, Err(ErrorReport::from(&e)))
        }
    };
    let now = Utc::now();
    let mut r = status::report(
        &s.sources,
        &s.objectives,
        location,
        facts.as_ref().map_err(Clone::clone),
        &state,
        now,
    )
    .with_wal_lag(s.wal.as_ref().and_then(|_| {
        usdcop_dr::commands::wal_spool::LagFile::new(
            &usdcop_dr::state::dir(),
            &repo_arg_for_wal,
            None,
        )
        .load()
    }));
    r.wal = wal_map.map(|m| match m {
        Ok(map) => status::WalStatus::of(&map, now),
        Err(e) => status::WalStatus {
            newest_recoverable_time: None,
            age_s: None,
            newest_segment: None,
            segments: 0,
            gaps: 0,
            error: Some(e.to_string()),
        },
    });
    let tz = s.objectives.timezone;
    emit(cli.json, &r, || render_status(&r, tz))?;
    Ok(r.exit_code())
}

/// The WAL archive's push lag in `status`.
fn render_wal_lag(
    w: &usdcop_dr::commands::wal_spool::WalLag,
    local: &dyn Fn(&DateTime<Utc>) -> String,
) -> String {
    let mut t = match (&w.last_success, &w.last_success_file) {
        (Some(at), Some(f)) => format!("\nWAL pushes: last {} ({f})", local(at)),
        _ => "\nWAL pushes: none successful recorded".to_owned(),
    };
    t += &format!(
        ", {} file(s) ({}) waiting",
        w.pending_files,
        human(w.pending_bytes)
    );
    if let Some(f) = &w.oldest_pending {
        t += &format!(" from {f}");
    }
    if w.consecutive_failures > 0 {
        t += &format!(
            "\nWAL pushes: FAILING, {} failed since the last success; last at {}: {}",
            w.consecutive_failures,
            w.last_failure.as_ref().map_or("-".to_owned(), local),
            w.last_failure_message.as_deref().unwrap_or("")
        );
    }
    t
}

fn render_status(r: &status::StatusReport, tz: chrono_tz::Tz) -> String {
    let local = |t: &DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string();
    let age = |secs: f64| {
        humantime::format_duration(std::time::Duration::from_secs(secs.max(0.0) as u64)).to_string()
    };
    let mut t = match (&r.repository.error, r.repository.size_bytes) {
        (Some(e), _) => format!(
            "repository {}: UNREACHABLE: {}",
            r.repository.location, e.message
        ),
        (None, Some(size)) => format!(
            "repository {}: reachable, {} stored",
            r.repository.location,
            human(size)
        ),
        (None, None) => format!("repository {}", r.repository.location),
    };
    t += &format!(
        "\nRPO {}; times in {}",
        duration_text(std::time::Duration::from_secs_f64(r.rpo_s)),
        r.timezone
    );
    t += &format!(
        "\n{:<20} {:<8} {:<10} {:<22} {:<16} {:>10}  {}",
        "SOURCE", "KIND", "STATE", "NEWEST", "AGE", "SIZE", "LAST RUN"
    );
    for s in &r.sources {
        let state = match s.verdict {
            status::Verdict::WithinRpo => "ok",
            status::Verdict::RpoMissed => "RPO-MISSED",
            status::Verdict::Never => "NEVER",
            status::Verdict::Unknown => "UNKNOWN",
        };
        let (newest, age_s, size) = match &s.newest_snapshot {
            Some(n) => (local(&n.time), age(n.age_s), human(n.bytes)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let last = match &s.last_run {
            None => "none recorded".to_owned(),
            Some(l) if l.success => format!("ok {}", local(&l.started)),
            Some(l) => format!(
                "FAILED {}: {}",
                local(&l.started),
                l.error.as_deref().unwrap_or("")
            ),
        };
        t += &format!(
            "\n{:<20} {:<8} {:<10} {:<22} {:<16} {:>10}  {}",
            s.source,
            s.kind.as_str(),
            state,
            newest,
            age_s,
            size,
            last
        );
    }
    match &r.last_prune {
        None => t += "\nlast prune: none recorded",
        Some(p) if p.success => {
            t += &format!(
                "\nlast prune: ok {}, {} snapshots removed, {} freed, {} condemned",
                local(&p.started),
                p.snapshots_removed,
                human(p.bytes_freed),
                human(p.bytes_condemned)
            )
        }
        Some(p) => {
            t += &format!(
                "\nlast prune: FAILED {}: {}",
                local(&p.started),
                p.error.as_deref().unwrap_or("")
            )
        }
    }
    if r.repository.error.is_none() {
        t += &match &r.last_drill {
            None => "\nlast drill: none in the repository (run usdcop-dr drill)".to_owned(),
            Some(d) => format!(
                "\nlast drill: {} {} ({} ago), {}{}{}",
                d.short_id,
                local(&d.started),
                age((r.checked_at - d.started).num_seconds() as f64),
                match d.verdict {
                    usdcop_dr::format::drill::Verdict::Passed => "passed",
                    usdcop_dr::format::drill::Verdict::ObjectiveMissed => "OBJECTIVE MISSED",
                    usdcop_dr::format::drill::Verdict::CheckFailed => "FAILED",
                },
                match (d.rto_achieved_s, d.partial) {
                    (_, true) => ", partial (no RTO)".to_owned(),
                    (Some(x), false) => format!(", RTO {}", age(x)),
                    (None, false) => String::new(),
                },
                d.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        };
    }
    if let Some(w) = &r.wal {
        t += &match (&w.error, &w.newest_recoverable_time, w.age_s) {
            (Some(e), _, _) => format!("\nWAL archive: UNREADABLE: {e}"),
            (None, Some(n), Some(a)) => format!(
                "\nWAL archive: newest recoverable {} ({} ago), newest segment {}, {} segment(s), {} missing between ranges",
                local(n),
                age(a),
                w.newest_segment.as_deref().unwrap_or("-"),
                w.segments,
                w.gaps
            ),
            _ => format!(
                "\nWAL archive: NO RECOVERABLE TIME ({} segment(s))",
                w.segments
            ),
        };
    }
    if let Some(w) = &r.wal_lag {
        t += &render_wal_lag(w, &local);
    }
    let late: Vec<&str> = r
        .sources
        .iter()
        .filter(|s| !s.within_rpo)
        .map(|s| s.source.as_str())
        .collect();
    if r.repository.reachable {
        if late.is_empty() {
            t += &format!("\nall {} source(s) within the RPO", r.sources.len());
        } else {
            t += &format!("\noutside the RPO or never backed up: {}", late.join(", "));
        }
    }
    t
}
