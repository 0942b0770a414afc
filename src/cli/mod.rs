//! The thin layer: flags → library options → rendered results → exit code.

pub mod args;
mod drill;
pub mod nightly;
pub mod pitr;
pub mod progress;
mod prune;
pub mod wal;

use std::io::{Read, Write};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use usdcop_dr::backend;
use usdcop_dr::commands::backup::{self, BackupInput, BackupOptions};
use usdcop_dr::commands::restore::{self, RestoreOptions, RestoreTarget};
use usdcop_dr::commands::{repair, restore_bucket, restore_postgres, snapshots, stats, verify};
use usdcop_dr::crypto::KdfParams;
use usdcop_dr::format::snapshot::SourceKind;
use usdcop_dr::postgres::Dsn;
use usdcop_dr::repository::{InitOptions, Repository};
use usdcop_dr::{Error, Result};
use zeroize::Zeroizing;

use args::{BackupCommand, Cli, Command, RepairCommand};

/// Run one command; returns the process exit code.
/// Open the repository, with the local cache under `cache` if given.
async fn open_repo(
    backend: backend::DynBackend,
    password: &[u8],
    cache: Option<&std::path::Path>,
) -> Result<Repository> {
    let mut repo = Repository::open(backend, password).await?;
    repo.set_cache(cache);
    Ok(repo)
}

/// [`open_repo`] for commands that write: the writer gate applies.
async fn open_repo_for_write(
    backend: backend::DynBackend,
    password: &[u8],
    cache: Option<&std::path::Path>,
) -> Result<Repository> {
    let mut repo = Repository::open_for_write(backend, password).await?;
    repo.set_cache(cache);
    Ok(repo)
}

/// Where the local cache lives (`--cache-dir`, `USDCOP_DR_CACHE_DIR`, the
/// user's cache directory), or `None` with `--no-cache`.
pub fn cache_base(cli: &Cli) -> Option<std::path::PathBuf> {
    if cli.no_cache {
        None
    } else {
        cli.cache_dir
            .clone()
            .or_else(usdcop_dr::repository::cache::default_base)
    }
}

pub async fn run(cli: Cli) -> Result<i32> {
    if let Command::Config(args::ConfigCommand::Check { file }) = &cli.command {
        return nightly::config_check(&cli, file.as_deref());
    }
    // A configuration file that does not check stops every command.
    let settings = nightly::settings(&cli)?;
    match &cli.command {
        Command::Backup(args::BackupArgs {
            mode: None,
            sources,
            ..
        }) => return nightly::backup_all(&cli, settings.as_ref(), sources).await,
        Command::Status => return nightly::status(&cli, settings.as_ref()).await,
        Command::Drill(a) => return drill::run(&cli, settings.as_ref(), a).await,
        Command::Drills => return drill::list(&cli, settings.as_ref()).await,
        Command::Forget(a) => return prune::run(&cli, settings.as_ref(), a, false).await,
        Command::Prune(a) => return prune::run(&cli, settings.as_ref(), a, true).await,
        Command::WalPush { path, background } => {
            return match background {
                true => wal::background(&cli, settings.as_ref(), path).await,
                false => wal::push(&cli, settings.as_ref(), path).await,
            }
        }
        Command::WalFetch { name, dest } => {
            return wal::fetch(&cli, settings.as_ref(), name, dest).await
        }
        Command::WalVerify { read_data } => {
            return wal::verify(&cli, settings.as_ref(), *read_data).await
        }
        _ => {}
    }
    let progress = progress::make(cli.quiet, cli.json);
    let (repo_arg, s3) = nightly::repository(&cli, settings.as_ref())?;
    let backend = backend::open(&repo_arg, &s3).await?;
    let password = read_password(nightly::password_file(settings.as_ref()))?;
    // The local cache of the master index (docs/ARCHITECTURE.md, "Local cache").
    let cache = cache_base(&cli);
    match cli.command {
        Command::Init(a) => {
            if password.is_empty() {
                return Err(Error::usage("refusing an empty passphrase"));
            }
            let opts = InitOptions {
                chunk_avg_size: a.chunk_avg_size,
                compression_level: a.compression_level,
                pack_size: a.pack_size,
                kdf: KdfParams {
                    m_cost_kib: a.kdf_memory_kib,
                    ..KdfParams::default()
                },
            };
            let repo = Repository::init(backend, &password, &opts).await?;
            #[derive(Serialize)]
            struct Out<'a> {
                repository_id: &'a str,
                location: String,
            }
            let out = Out {
                repository_id: &repo.config().id,
                location: repo.backend().location(),
            };
            emit(cli.json, &out, || {
                format!(
                    "created repository {} at {}",
                    out.repository_id, out.location
                )
            })?;
        }
        Command::Backup(args::BackupArgs { mode: None, .. })
        | Command::Forget(_)
        | Command::Prune(_)
        | Command::Status
        | Command::Drill(_)
        | Command::Drills
        | Command::WalPush { .. }
        | Command::WalFetch { .. }
        | Command::WalVerify { .. }
        | Command::Config(_) => unreachable!("handled above"),
        Command::Backup(args::BackupArgs {
            mode: Some(cmd), ..
        }) => {
            let repo = Arc::new(open_repo_for_write(backend, &password, cache.as_deref()).await?);
            let (common, input) = match cmd {
                BackupCommand::Files { common, paths } => (common, BackupInput::Files(paths)),
                BackupCommand::Stdin { common, stdin_name } => {
                    let reader: Box<dyn Read + Send> = Box::new(std::io::stdin());
                    (
                        common,
                        BackupInput::Stream {
                            name: stdin_name,
                            reader,
                        },
                    )
                }
                BackupCommand::Bucket {
                    common,
                    store,
                    buckets,
                    prefixes,
                } => (
                    common,
                    BackupInput::Bucket {
                        selection: usdcop_dr::source::bucket::BucketSelection { buckets, prefixes },
                        s3: store.options(),
                    },
                ),
                BackupCommand::Postgres { common, pg } => (
                    common,
                    BackupInput::Postgres {
                        dsn: dsn_from_flag(&pg.dsn, "--dsn", "USDCOP_DR_PG_DSN")?,
                        options: usdcop_dr::source::postgres::PgBackupOptions {
                            pg_dump: pg.pg_dump,
                            checksum_max_rows: pg.checksum_max_rows,
                            globals: pg.globals,
                        },
                    },
                ),
                BackupCommand::PostgresBase { common, base } => {
                    let dsn = match &base.dsn {
                        Some(d) => dsn_from_flag(d, "--dsn", "USDCOP_DR_PG_DSN")?,
                        None => config_dsn(settings.as_ref(), &common.source)?,
                    };
                    let wal_timeout =
                        humantime::parse_duration(base.wal_timeout.trim()).map_err(|e| {
                            Error::usage(format!("--wal-timeout {:?}: {e}", base.wal_timeout))
                        })?;
                    let input = BackupInput::PostgresBase {
                        dsn,
                        options: usdcop_dr::commands::basebackup::BaseBackupOptions {
                            pg_basebackup: base.pg_basebackup,
                            wal_timeout,
                            fast_checkpoint: !base.spread_checkpoint,
                        },
                    };
                    (common, input)
                }
            };
            let mut opts = BackupOptions::new(common.source);
            opts.tags = common.tags;
            opts.host = common.host;
            opts.time = common.time.as_deref().map(parse_time).transpose()?;
            let s = backup::run(repo, opts, input, progress).await?;
            emit(cli.json, &s, || {
                let what = match (&s.postgres, &s.postgres_base) {
                    (_, Some(b)) => format!(
                        "base backup of cluster {} (PostgreSQL {}, WAL {}..{} on timeline {}, archived), ",
                        b.system_identifier, b.pg_version, b.start_lsn, b.stop_lsn, b.timeline
                    ),
                    (pg, None) => match pg {
                    Some(pg) => format!(
                        "database {} ({} tables, {} rows{}), ",
                        pg.database,
                        pg.tables,
                        pg.rows,
                        pg.timescaledb
                            .as_deref()
                            .map(|v| format!(", TimescaleDB {v}"))
                            .unwrap_or_default()
                    ),
                    None => String::new(),
                    },
                };
                format!(
                    "snapshot {} saved: {what}{} in, {} new stored ({} of {} chunks new, {} unchanged files) in {:.1}s",
                    s.snapshot_id.short(),
                    human(s.bytes_in),
                    human(s.bytes_stored_new),
                    s.chunks_new,
                    s.chunks,
                    s.files_unchanged,
                    s.duration_s
                )
            })?;
            fail_on_warnings(&s.warnings, &format!("snapshot {}", s.snapshot_id.short()))?;
        }
        Command::Snapshots { source } => {
            let repo = open_repo(backend, &password, cache.as_deref()).await?;
            let rows = snapshots::list(&repo, source.as_deref()).await?;
            emit(cli.json, &rows, || {
                let mut t = format!(
                    "{:<10} {:<25} {:<16} {:<7} {:>10}  {}\n",
                    "ID", "TIME", "SOURCE", "KIND", "SIZE", "HOST"
                );
                for r in &rows {
                    t += &format!(
                        "{:<10} {:<25} {:<16} {:<7} {:>10}  {}\n",
                        r.short_id,
                        r.time.format("%Y-%m-%d %H:%M:%S UTC"),
                        r.source,
                        r.kind.as_str(),
                        human(r.bytes),
                        r.host
                    );
                }
                t + &format!("{} snapshot(s)", rows.len())
            })?;
        }
        Command::Restore(args::RestoreArgs {
            mode: Some(args::RestoreCommand::Bucket(a)),
            ..
        }) => {
            use restore_bucket::BucketTargets;
            let targets = match (a.bucket, a.to_original_names) {
                (Some(bucket), _) => BucketTargets::Into {
                    bucket,
                    from: a.from_bucket,
                },
                (None, true) => BucketTargets::OriginalNames {
                    only: a.from_bucket,
                },
                (None, false) => BucketTargets::Map(
                    a.map
                        .iter()
                        .map(|m| BucketTargets::parse_mapping(m))
                        .collect::<Result<_>>()?,
                ),
            };
            let repo = Arc::new(open_repo(backend, &password, cache.as_deref()).await?);
            let (id, snap) = repo
                .find_snapshot_of(&a.snapshot, a.source.as_deref(), Some(SourceKind::Bucket))
                .await?;
            let s = restore_bucket::run(
                repo,
                id,
                &snap,
                restore_bucket::BucketRestoreOptions {
                    targets,
                    prefix: a.prefix,
                    overwrite: a.overwrite,
                    staging_dir: a.staging_dir,
                    s3: a.store.options(),
                    read_concurrency: a.read_concurrency.map(usize::from),
                },
                progress,
            )
            .await?;
            emit(cli.json, &s, || {
                let mut t = format!(
                    "restored snapshot {}: {} objects written ({} overwritten), {} already identical, {} in {:.1}s",
                    id.short(),
                    s.objects,
                    s.overwritten,
                    s.skipped_identical,
                    human(s.bytes),
                    s.duration_s
                );
                for b in &s.buckets {
                    t += &format!(
                        "\n  {} -> {}: {} written ({} overwritten), {} identical, {} conflicts, {} failed, {}",
                        b.source,
                        b.bucket,
                        b.objects,
                        b.overwritten,
                        b.skipped_identical,
                        b.conflicts,
                        b.failed,
                        human(b.bytes)
                    );
                }
                t
            })?;
            for c in &s.conflicts {
                eprintln!(
                    "usdcop-dr: conflict: s3://{}/{}: {}",
                    c.bucket, c.key, c.reason
                );
            }
            // Each failed object was printed as it happened ("not
            // restored: s3://…"); conflicts are only known in full here.
            if !s.failed.is_empty() {
                return Err(Error::integrity(format!(
                    "{} object(s) could not be restored intact (listed above)",
                    s.failed.len()
                ))
                .with_hint("run `usdcop-dr verify --read-data` to see the damaged objects"));
            }
            if !s.conflicts.is_empty() {
                return Err(Error::io(format!(
                    "{} existing object(s) differ from the snapshot and were left alone (listed above)",
                    s.conflicts.len()
                ))
                .with_hint("pass --overwrite to replace them"));
            }
        }
        Command::Restore(args::RestoreArgs {
            mode: Some(args::RestoreCommand::Postgres(a)),
            ..
        }) => {
            let repo = Arc::new(open_repo(backend, &password, cache.as_deref()).await?);
            let (id, snap, target) = match &a.point_in_time {
                Some(time) => {
                    match pitr::restore(
                        cli.json,
                        settings.as_ref(),
                        repo.clone(),
                        &a,
                        time,
                        progress.clone(),
                    )
                    .await?
                    {
                        pitr::Outcome::Done(code) => return Ok(code),
                        pitr::Outcome::Dump { id, snap, target } => (id, *snap, target),
                    }
                }
                None => {
                    let target = a.target_dsn.as_deref().ok_or_else(|| {
                        Error::usage("restore postgres needs --target-dsn (or --point-in-time with --pgdata)")
                    })?;
                    let target = dsn_from_flag(target, "--target-dsn", "USDCOP_DR_PG_TARGET_DSN")?;
                    let (id, snap) = repo
                        .find_snapshot_of(
                            &a.snapshot,
                            a.source.as_deref(),
                            Some(SourceKind::Postgres),
                        )
                        .await?;
                    (id, snap, target)
                }
            };
            let s = restore_postgres::run(
                repo,
                id,
                &snap,
                restore_postgres::PgRestoreOptions {
                    target,
                    create: a.create,
                    clean: a.clean,
                    jobs: a.jobs,
                    staging_dir: a.staging_dir,
                    no_owner: a.no_owner,
                    pg_restore: a.pg_restore,
                    globals: a.globals,
                    read_concurrency: a.read_concurrency.map(usize::from),
                },
                progress,
            )
            .await?;
            emit(cli.json, &s, || {
                format!(
                    "restored snapshot {} into database {}: {} tables, {} rows ({} checksummed tables), {} in {:.1}s{}",
                    id.short(),
                    s.database,
                    s.tables,
                    s.rows,
                    s.tables_checksummed,
                    human(s.bytes),
                    s.duration_s,
                    if s.differences.is_empty() { ", every table matches the snapshot" } else { "" }
                )
            })?;
            if !s.differences.is_empty() {
                for d in &s.differences {
                    eprintln!("usdcop-dr: differs: {}: {}", d.table, d.problem);
                }
                return Err(Error::integrity(format!(
                    "{} of {} tables restored into {:?} differ from snapshot {} (listed above)",
                    s.differences.len(),
                    s.tables,
                    s.database,
                    id.short()
                )));
            }
        }
        Command::Restore(a) => {
            let repo = Arc::new(open_repo(backend, &password, cache.as_deref()).await?);
            let kind = a.kind.map(|k| match k {
                args::SnapshotKind::Files => SourceKind::Files,
                args::SnapshotKind::Stdin => SourceKind::Stdin,
                args::SnapshotKind::Postgres => SourceKind::Postgres,
                args::SnapshotKind::Bucket => SourceKind::Bucket,
            });
            let (id, snap) = repo
                .find_snapshot_of(&a.snapshot, a.source.as_deref(), kind)
                .await?;
            let target = match a.target {
                Some(dir) => RestoreTarget::Dir(dir),
                None => RestoreTarget::Stream(Box::new(std::io::stdout())),
            };
            let to_stdout = a.stdout;
            let s = restore::run(
                repo,
                id,
                &snap,
                RestoreOptions {
                    target,
                    sync: a.sync.into(),
                    include: a.paths,
                    read_concurrency: a.read_concurrency.map(usize::from),
                },
                progress,
            )
            .await?;
            if !cli.quiet {
                for n in &s.notes {
                    eprintln!("usdcop-dr: note: {n}");
                }
            }
            if !s.failed.is_empty() {
                // Each failed entry was printed as it happened (the
                // progress sink's "not restored: …" line), so that a long
                // restore shows trouble at once; the error only counts them.
                let e = not_restored(&s, &id);
                if cli.json && !to_stdout {
                    print_json(&s)?;
                }
                return Err(e);
            }
            if !to_stdout {
                emit(cli.json, &s, || {
                    format!(
                        "restored snapshot {}: {} files, {} dirs, {} symlinks, {} in {:.1}s",
                        id.short(),
                        s.files,
                        s.dirs,
                        s.symlinks,
                        human(s.bytes),
                        s.duration_s
                    )
                })?;
            }
        }
        Command::Verify(a) => {
            // Verify reads what the store holds, never a cached copy.
            let repo = Arc::new(open_repo(backend, &password, None).await?);
            let percent = if a.read_data {
                100.0
            } else {
                a.read_data_subset.unwrap_or(0.0)
            };
            if !(0.0..=100.0).contains(&percent) {
                return Err(Error::usage("--read-data-subset must be between 0 and 100"));
            }
            let r = verify::run(
                repo,
                verify::VerifyOptions {
                    read_data_percent: percent,
                },
                progress,
            )
            .await?;
            emit(cli.json, &r, || render_verify(&r))?;
            if !r.ok() {
                return Ok(3);
            }
        }
        Command::Repair(RepairCommand::Index { compact }) => {
            let repo = Arc::new(open_repo_for_write(backend, &password, cache.as_deref()).await?);
            // A writer like a backup: prune sees it live and waits for it.
            let lock = usdcop_dr::repository::lock::LockGuard::acquire(
                repo.clone(),
                usdcop_dr::format::meta::LockKind::Backup,
            )
            .await?;
            let r = if compact {
                repair::index_and_compact(repo).await
            } else {
                repair::index(repo).await
            };
            let _ = lock.release().await;
            let r = r?;
            emit(cli.json, &r, || {
                let mut t = format!(
                    "{} packs, {} not in any index; re-indexed {} packs ({} chunks)",
                    r.packs, r.packs_unindexed, r.packs_reindexed, r.chunks_recovered
                );
                if !r.index_written.is_empty() {
                    let ids: Vec<String> = r.index_written.iter().map(|i| i.short()).collect();
                    t += &format!("; wrote index {}", ids.join(", "));
                }
                if let Some(c) = &r.compaction {
                    t += &format!(
                        "\ncompacted {} of {} index objects into {} ({} chunks)",
                        c.objects_replaced,
                        c.objects_before,
                        c.written.len(),
                        c.blobs
                    );
                    for (name, why) in &c.left_alone {
                        t += &format!("\nleft alone {name}: {why}");
                    }
                }
                for (name, why) in &r.unreadable {
                    t += &format!("\nDAMAGED {name}: {why}");
                }
                t
            })?;
            if !r.unreadable.is_empty() {
                return Ok(3);
            }
        }
        Command::Stats => {
            let repo = open_repo(backend, &password, cache.as_deref()).await?;
            let s = stats::run(&repo).await?;
            emit(cli.json, &s, || {
                format!(
                    "repository {} at {}\n  snapshots: {}\n  packs: {} ({})\n  index objects: {}\n  unique chunks: {} ({} uncompressed)\n  snapshot content: {}, space saving ratio {:.2}x\n  chunk avg {} / zstd level {} / pack size {}",
                    s.repository_id, s.location, s.snapshots, s.packs, human(s.pack_bytes), s.index_objects, s.chunks,
                    human(s.unique_bytes), human(s.snapshot_bytes), s.space_saving_ratio, human(s.chunker_avg_size as u64),
                    s.compression_level, human(s.pack_size as u64)
                )
            })?;
        }
    }
    Ok(0)
}

impl args::BucketStoreArgs {
    /// The bucket store's options: no explicit keys (the CLI takes none).
    fn options(&self) -> backend::s3::S3Options {
        backend::s3::S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            profile: self.profile.clone(),
            ..Default::default()
        }
    }
}

/// The error of a files restore that left entries out: integrity (exit 3)
/// when repository data is damaged, else operational (exit 1: something
/// in the target was in the way).
fn not_restored(s: &restore::RestoreSummary, id: &usdcop_dr::format::Id) -> Error {
    let damaged = s
        .failed
        .iter()
        .filter(|f| f.reason == restore::FailureReason::Damaged)
        .count();
    let of = format!(
        "{} of {} entries of snapshot {}",
        s.failed.len(),
        s.failed.len() as u64 + s.files + s.dirs + s.symlinks,
        id.short()
    );
    if damaged > 0 {
        Error::integrity(format!(
            "{of} could not be restored ({damaged} damaged in the repository; listed above); nothing wrong was written"
        ))
        .with_hint("run `usdcop-dr verify --read-data` to see the damaged objects")
    } else {
        Error::io(format!(
            "{of} were not restored: something in the target is in their way (listed above); nothing was written through a link"
        ))
        .with_hint("remove the links or files in the way, or restore into an empty directory")
    }
}

/// The run fails (exit 1) when a warning says that data the user asked for
/// is missing from `what` (already written: it holds everything else). Each
/// warning was printed on stderr as it happened, and is in the `--json` report.
fn fail_on_warnings(warnings: &[usdcop_dr::progress::Warning], what: &str) -> Result<()> {
    let failed: Vec<_> = warnings.iter().filter(|w| w.kind.is_failure()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let kinds: std::collections::BTreeSet<&str> = failed.iter().map(|w| w.kind.as_str()).collect();
    Err(Error::new(
        usdcop_dr::ErrorKind::Source,
        format!(
            "{what} was saved without {} path(s) it was asked for ({}; listed above as warnings)",
            failed.len(),
            kinds.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
    .with_hint(
        "rename or leave out those paths; everything else is in the snapshot and restorable",
    ))
}

fn render_verify(r: &verify::VerifyReport) -> String {
    let mut t = format!(
        "checked {} snapshots, {} index objects, {} packs, {} chunks",
        r.snapshots, r.index_objects, r.packs, r.chunks
    );
    if r.packs_read > 0 {
        t += &format!(
            "; read {} packs ({}), {} chunks re-hashed",
            r.packs_read,
            human(r.bytes_read),
            r.chunks_read
        );
    }
    for w in &r.warnings {
        t += &format!("\nwarning: {w}");
    }
    if r.ok() {
        t += "\nno problems found";
    } else {
        for p in &r.problems {
            t += &format!("\nDAMAGED {}: {}", p.object, p.message);
            if !p.snapshots.is_empty() {
                t += &format!("\n  affects snapshots: {}", p.snapshots.join(", "));
            }
        }
        t += &format!("\n{} problem(s) found", r.problems.len());
    }
    t
}

/// The passphrase, from the environment or a file; never from argv.
/// `config_file` is the configuration's `[repository] password_file` (and
/// the configuration file naming it), used when neither variable is set.
pub(crate) fn read_password(
    config_file: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Zeroizing<Vec<u8>>> {
    let env = std::env::var_os("USDCOP_DR_PASSWORD");
    let file = std::env::var_os("USDCOP_DR_PASSWORD_FILE");
    match (env, file) {
        (None, None) if config_file.is_some() => {
            let (f, from) = config_file.expect("checked");
            let mut bytes = std::fs::read(f).map_err(|e| {
                Error::usage(format!(
                    "cannot read the passphrase file {} ([repository] password_file of {}): {e}",
                    f.display(),
                    from.display()
                ))
                .with_hint("the backup user must be able to read it (docs/OPERATIONS.md, passphrase custody)")
            })?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            Ok(Zeroizing::new(bytes))
        }
        (Some(_), Some(_)) => Err(Error::usage(
            "both USDCOP_DR_PASSWORD and USDCOP_DR_PASSWORD_FILE are set; set only one",
        )),
        (Some(p), None) => Ok(Zeroizing::new(p.into_encoded_bytes())),
        (None, Some(f)) => {
            let mut bytes = std::fs::read(&f).map_err(|e| {
                Error::usage(format!(
                    "cannot read USDCOP_DR_PASSWORD_FILE {}: {e}",
                    std::path::Path::new(&f).display()
                ))
            })?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            Ok(Zeroizing::new(bytes))
        }
        (None, None) => Err(Error::usage("no repository passphrase").with_hint(
            "set USDCOP_DR_PASSWORD or USDCOP_DR_PASSWORD_FILE, or [repository] password_file in the configuration file",
        )),
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Error::usage(format!(
                "--time {s:?} is not RFC 3339 (e.g. 2026-11-29T02:00:00Z): {e}"
            ))
        })
}

/// The `dsn` of the configuration's postgres source `name`.
fn config_dsn(settings: Option<&usdcop_dr::config::Settings>, name: &str) -> Result<Dsn> {
    let s = settings.ok_or_else(|| {
        Error::usage("no --dsn and no configuration file to take the source's dsn from")
            .with_hint("give --dsn, or --config FILE with a [[source]] of kind postgres")
    })?;
    match s.source(name).map(|src| &src.spec) {
        Some(usdcop_dr::config::SourceSpec::Postgres { dsn, .. }) => Dsn::parse(dsn),
        Some(_) => Err(Error::usage(format!(
            "source {name:?} in {} is not of kind postgres",
            s.file.display()
        ))),
        None => Err(Error::usage(format!(
            "no --dsn, and {} has no source named {name:?}",
            s.file.display()
        ))),
    }
}

/// A DSN from a flag that clap may also have filled from `env_var`: a
/// password is accepted only from the environment, never from argv.
pub(crate) fn dsn_from_flag(value: &str, flag: &str, env_var: &str) -> Result<Dsn> {
    let from_env = std::env::var(env_var).ok().as_deref() == Some(value);
    if !from_env && Dsn::had_inline_password(value) {
        return Err(Error::usage(format!(
            "{flag} carries a password: every user of this machine can read the command line"
        ))
        .with_hint(format!(
            "put the DSN in {env_var} instead, or the password in PGPASSWORD or ~/.pgpass"
        )));
    }
    Dsn::parse(value)
}

pub(crate) fn emit<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        print_json(value)
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", text()).map_err(|e| Error::io(format!("writing output: {e}")))
    }
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(|e| Error::io(format!("writing output: {e}")))?;
    writeln!(out).map_err(|e| Error::io(format!("writing output: {e}")))
}

/// Print an error for a person (stderr) and, with --json, for a machine (stdout).
pub fn report_error(e: &Error, json: bool) {
    eprintln!("usdcop-dr: error: {e}");
    if let Some(h) = e.hint() {
        eprintln!("usdcop-dr: hint: {h}");
    }
    if json {
        let v = serde_json::json!({"error": {"kind": format!("{:?}", e.kind()).to_lowercase(), "message": e.to_string(), "hint": e.hint(), "exit_code": e.exit_code()}});
        println!("{v}");
    }
}

pub fn human(bytes: u64) -> String {
    usdcop_dr::progress::human_bytes(bytes)
}
