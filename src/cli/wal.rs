//! `wal-push` and `wal-fetch`: PostgreSQL calls them once per file, so
//! they print nothing on success (but with --json or -v), unlock through
//! the WAL key cache, and take every setting from the configuration file.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use usdcop_dr::backend;
use usdcop_dr::commands::wal;
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
