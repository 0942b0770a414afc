//! `forget` and `prune` from the configuration file: the policies folder
//! (`[retention] policies`), the grace period, the time zone; the report
//! (Markdown with `--report`, JSON with `--json`); the run recorded for
//! `status` and the metrics.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use usdcop_dr::commands::backup_all;
use usdcop_dr::commands::prune::{self, PruneOptions, PruneReport};
use usdcop_dr::config::Settings;
use usdcop_dr::state::{LastPrune, StateStore};
use usdcop_dr::{Error, Result};

use super::args::{Cli, PruneArgs};
use super::nightly;

pub async fn run(
    cli: &Cli,
    settings: Option<&Settings>,
    a: &PruneArgs,
    collect: bool,
) -> Result<i32> {
    let what = if collect { "prune" } else { "forget" };
    let s = nightly::require(settings, what)?;
    if !(0.0..=100.0).contains(&a.repack_unused) {
        return Err(Error::usage("--repack-unused must be between 0 and 100"));
    }
    // A malformed policy, or one that does not fit the configured sources,
    // stops here: nothing has been touched.
    let policies = usdcop_dr::retention::load(&s.retention.policies, &s.source_kinds())?;
    let (repo_arg, _) = nightly::repository(cli, Some(s))?;
    let store = StateStore::new(usdcop_dr::state::dir(), &repo_arg);
    let started = Utc::now();
    let clock = Instant::now();
    let progress = super::progress::make(cli.quiet, cli.json);
    let result = async {
        let (_, repo) = nightly::open_repository(cli, s).await?;
        let repo = Arc::new(repo);
        let opts = PruneOptions {
            dry_run: a.dry_run,
            collect,
            grace: s.retention.grace,
            min_age: s.retention.min_age,
            timezone: s.objectives.timezone,
            repack_unused: a.repack_unused / 100.0,
            now: None,
        };
        let report = prune::run(repo.clone(), &policies, &opts, progress.as_ref()).await?;
        Ok::<_, Error>((repo, report))
    }
    .await;
    // Record the run (not a dry run) for `status` and the metrics.
    if !a.dry_run {
        let mut state = store.load().unwrap_or_default();
        let (ok, rep) = match &result {
            Ok((_, r)) => (true, Some(r)),
            Err(_) => (false, None),
        };
        let gc = rep.and_then(|r| r.gc.as_ref());
        state.last_prune = Some(LastPrune {
            started,
            success: ok,
            duration_s: clock.elapsed().as_secs_f64(),
            snapshots_removed: rep.map_or(0, |r| r.snapshots_removed),
            bytes_freed: gc.map_or(0, |g| g.deleted.iter().map(|p| p.bytes).sum()),
            bytes_condemned: gc.map_or(0, |g| g.condemned.iter().map(|p| p.bytes).sum()),
            error: result.as_ref().err().map(|e| e.to_string()),
        });
        if let Err(e) = store.save(&state) {
            eprintln!("usdcop-dr: warning: run state not saved: {e}");
        }
        if let Some(m) = &s.metrics {
            let facts = match &result {
                Ok((repo, _)) => backup_all::repository_facts(repo).await.ok(),
                Err(_) => None,
            };
            let input = backup_all::metrics_input(
                &s.sources,
                s.objectives.rpo,
                facts.as_ref(),
                &state,
                result.is_ok(),
            );
            if let Err(e) = usdcop_dr::metrics::render(&input)
                .and_then(|text| usdcop_dr::metrics::write_textfile(&m.textfile, &text))
            {
                eprintln!("usdcop-dr: warning: metrics not written: {e}");
            }
        }
    }
    let (_, report) = result?;
    write_report(cli, a, &report)?;
    Ok(0)
}

fn write_report(cli: &Cli, a: &PruneArgs, r: &PruneReport) -> Result<()> {
    let md = prune::render_markdown(r);
    if let Some(path) = &a.report {
        usdcop_dr::metrics::write_atomic(path, md.as_bytes(), 0o644)
            .map_err(|e| e.context(format!("report {}", path.display())))?;
    }
    if cli.json {
        super::print_json(r)?;
    } else if !cli.quiet {
        println!("{}", summary(r));
    }
    Ok(())
}

/// A few lines for the terminal; the whole table is in `--report`.
fn summary(r: &PruneReport) -> String {
    let h = usdcop_dr::progress::human_bytes;
    let dry = if r.dry_run {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    let mut t = format!(
        "{}{dry}: {} snapshots, {} removed, {} kept",
        r.command, r.snapshots_before, r.snapshots_removed, r.snapshots_after
    );
    for s in &r.sources {
        t += &format!(
            "\n  {} ({}): {} kept, {} removed",
            s.source, s.kind, s.kept, s.removed
        );
    }
    if let Some(g) = &r.gc {
        let sum =
            |v: &[usdcop_dr::repository::gc::PackLine]| v.iter().map(|p| p.bytes).sum::<u64>();
        t += &format!(
            "\n  packs: {} deleted ({}), {} condemned ({}), {} waiting, {} reprieved; repository {} -> {}",
            g.deleted.len(),
            h(sum(&g.deleted)),
            g.condemned.len(),
            h(sum(&g.condemned)),
            g.waiting.len(),
            g.reprieved.len(),
            h(g.bytes_before),
            h(g.bytes_after)
        );
    }
    t
}
