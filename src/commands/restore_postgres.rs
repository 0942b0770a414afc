//! `restore postgres`: a `backup postgres` snapshot back into a database,
//! then proof that it is complete.
//!
//! Order: everything that can be checked without changing anything is
//! checked first (snapshot kind, pg_restore version, TimescaleDB
//! availability, target emptiness); only then is the database created
//! (`--create`) and restored. With `--jobs 1` the dump streams from the
//! repository into pg_restore's stdin; with more jobs it is staged on local
//! disk (pg_restore needs a seekable file to work in parallel) and removed
//! afterwards. Every table of the snapshot's picture is counted (and
//! checksummed where the picture has a checksum) in the target: any
//! difference is an integrity failure. Each table is checked as soon as
//! pg_restore has loaded it ([`super::pg_verify`]); in TimescaleDB's
//! restore mode, after pg_restore.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::pg_verify::{self, Queue, Verifiers};
use crate::error::{Error, ErrorKind, Result};
use crate::format::pgdump::{DumpScanner, RowHash, MAX_TOC_BYTES};
use crate::format::snapshot::{Entry, EntryType, Snapshot};
use crate::format::Id;
use crate::pipeline::{ChunkReader, ReadOptions};
use crate::postgres::picture::{self, DbPicture, Difference, TablePicture};
use crate::postgres::{inspect, tools, Dsn};
use crate::progress::{Collector, Progress, Warning, WarningKind};
use crate::repository::Repository;
use crate::source::postgres::GLOBALS_ENTRY;

pub struct PgRestoreOptions {
    pub target: Dsn,
    pub create: bool,
    pub clean: bool,
    pub jobs: u32,
    pub staging_dir: Option<PathBuf>,
    pub no_owner: bool,
    pub pg_restore: Option<PathBuf>,
    /// Apply the snapshot's roles and tablespaces (`backup postgres
    /// --globals`) before the restore; errors such as "role already
    /// exists" become warnings.
    pub globals: bool,
    /// Ranged reads in flight from the repository (`--read-concurrency`).
    pub read_concurrency: Option<usize>,
}

/// What will be done, decided from the snapshot's picture and the options
/// alone (pure, so every branch is unit-tested, TimescaleDB's included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    pub jobs: u32,
    /// TimescaleDB version to create and wrap the restore in.
    pub timescaledb: Option<String>,
    pub pg_restore_args: Vec<String>,
    /// Options that could not be honoured ([`WarningKind::OptionIgnored`]).
    pub warnings: Vec<Warning>,
}

pub fn plan(picture: &DbPicture, opts: &PgRestoreOptions) -> Result<RestorePlan> {
    let mut warnings = vec![];
    let mut jobs = opts.jobs.max(1);
    let timescaledb = picture.timescaledb().map(|e| e.version.clone());
    if let Some(v) = &timescaledb {
        if opts.clean {
            return Err(Error::usage(format!(
                "the snapshot holds TimescaleDB {v}: --clean would drop the extension that \
                 timescaledb_pre_restore() needs"
            ))
            .with_hint("restore into a new database with --create (or an empty one)"));
        }
        if jobs > 1 {
            warnings.push(Warning::new(
                WarningKind::OptionIgnored,
                "",
                format!(
                    "--jobs {jobs} ignored: TimescaleDB's documentation forbids parallel \
                     pg_restore, restoring with one job"
                ),
            ));
            jobs = 1;
        }
    }
    let mut args = vec!["--exit-on-error".to_owned()];
    if opts.clean {
        args.extend(["--clean".to_owned(), "--if-exists".to_owned()]);
    }
    if opts.no_owner {
        args.extend(["--no-owner".to_owned(), "--no-privileges".to_owned()]);
    }
    if jobs > 1 {
        args.push(format!("--jobs={jobs}"));
    }
    Ok(RestorePlan {
        jobs,
        timescaledb,
        pg_restore_args: args,
        warnings,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct PgRestoreSummary {
    pub snapshot_id: Id,
    pub database: String,
    pub created: bool,
    pub bytes: u64,
    pub jobs: u32,
    pub staged: bool,
    pub timescaledb: Option<String>,
    pub tables: u64,
    pub rows: u64,
    pub tables_checksummed: u64,
    /// Tables checked while pg_restore was still running (each table is
    /// checked once pg_restore has loaded it; TimescaleDB's after it).
    pub tables_checked_during_restore: u64,
    /// Empty when every table matches the snapshot.
    pub differences: Vec<Difference>,
    pub warnings: Vec<Warning>,
    pub duration_s: f64,
}

pub fn picture_of(snap: &Snapshot, id: &Id) -> Result<DbPicture> {
    let v = snap.metadata.get(picture::METADATA_KEY).ok_or_else(|| {
        Error::usage(format!(
            "snapshot {} ({} source {:?}) is not a PostgreSQL backup",
            id.short(),
            snap.source.kind.as_str(),
            snap.source.name
        ))
    })?;
    serde_json::from_value(v.clone()).map_err(|e| {
        Error::integrity(format!(
            "snapshot {}: unreadable PostgreSQL metadata: {e}",
            id.short()
        ))
    })
}

pub async fn run(
    repo: Arc<Repository>,
    snapshot_id: Id,
    snap: &Snapshot,
    opts: PgRestoreOptions,
    progress: Arc<dyn Progress>,
) -> Result<PgRestoreSummary> {
    let clock = Instant::now();
    // Shown as they happen and kept for the summary's `warnings`.
    let collector = Collector::new(progress);
    let progress: Arc<dyn Progress> = collector.clone();
    let picture = picture_of(snap, &snapshot_id)?;
    let index = repo.load_index_reporting(progress.as_ref()).await?;
    let entries = super::restore::load_entries_checked(&repo, &index, snapshot_id, snap).await?;
    let entry = entries
        .iter()
        .find(|e| e.kind == EntryType::File && e.path != GLOBALS_ENTRY)
        .ok_or_else(|| {
            Error::integrity(format!("snapshot {} holds no dump", snapshot_id.short()))
        })?;
    let globals = match opts.globals {
        false => None,
        true => Some(
            entries
                .iter()
                .find(|e| e.kind == EntryType::File && e.path == GLOBALS_ENTRY)
                .ok_or_else(|| {
                    Error::usage(format!(
                        "snapshot {} holds no roles: it was taken without --globals",
                        snapshot_id.short()
                    ))
                    .with_hint("restore with --no-owner instead")
                })?,
        ),
    };
    let plan = plan(&picture, &opts)?;
    for w in &plan.warnings {
        progress.warning(w);
    }
    let dump_major = tools::parse_major(&picture.pg_dump_version).unwrap_or(0);
    let pg_restore = tools::find("pg_restore", dump_major, opts.pg_restore.as_deref())?;
    let target = &opts.target;

    // Checks first: nothing is changed until they all pass. With more
    // than one job the dump is staged: its private directory is made now,
    // so that a missing or unwritable --staging-dir stops the restore
    // before a database is created.
    let staging = if plan.jobs > 1 {
        Some(crate::scratch::PrivateDir::create(
            opts.staging_dir.as_deref(),
        )?)
    } else {
        None
    };
    let created = if opts.create {
        create_database(target, &picture, plan.timescaledb.as_deref()).await?
    } else {
        false
    };
    let client = inspect::connect(target).await.map_err(|e| {
        // The usual first restore onto a fresh server.
        let missing = format!("database \"{}\" does not exist", target.dbname);
        if !opts.create && e.message().contains(&missing) {
            e.with_hint(format!(
                "pass --create to create database {:?} from the snapshot (or create it empty \
                 first)",
                target.dbname
            ))
        } else {
            e
        }
    })?;
    let existing = inspect::user_relations(&client).await?;
    if existing > 0 && !opts.clean {
        return Err(Error::usage(format!(
            "target database {:?} is not empty ({existing} tables, views or sequences); nothing was changed",
            target.dbname
        ))
        .with_hint("pass --clean to replace the snapshot's objects, or restore into a new database with --create"));
    }
    check_extensions(&client, &picture.extensions, plan.timescaledb.as_deref()).await?;
    if let Some(v) = &plan.timescaledb {
        check_installed_timescaledb(&client, v, &target.dbname).await?;
    }
    let reader = ChunkReader::with_options(
        repo.clone(),
        index,
        ReadOptions::for_location(&repo.backend().location(), opts.read_concurrency),
    );
    if let Some(g) = globals {
        apply_globals(&reader, g, target, progress.as_ref()).await?;
    }
    if let Some(v) = &plan.timescaledb {
        prepare_timescaledb(&client, v).await?;
    }

    let args: Vec<&str> = plan.pg_restore_args.iter().map(String::as_str).collect();
    let cmd = pg_restore.command(target, &args);
    progress.set_total(entry.size);
    progress.set_item(&entry.path);
    let staged = staging.is_some();
    // At least two connections read the tables back (the server has the
    // cores it restores with).
    let verify_jobs = (plan.jobs as usize).max(VERIFY_JOBS_MIN);
    // Tables are checked as pg_restore reports them loaded, except in
    // TimescaleDB's restore mode, which ends with timescaledb_post_restore():
    // its tables are checked after that.
    let start_verifiers = || {
        Verifiers::start(
            target,
            &picture.tables,
            picture.checksum_algorithm,
            verify_jobs,
        )
    };
    let early = plan.timescaledb.is_none().then(start_verifiers);
    let watch = early
        .as_ref()
        .map(|v| (v.queue(), picture.tables.as_slice()));
    let restored = if let Some(private) = staging {
        restore_staged(&reader, entry, cmd, private, progress.as_ref(), watch).await
    } else {
        restore_streamed(&reader, entry, cmd, progress.as_ref(), watch).await
    };
    if restored.is_err() && plan.timescaledb.is_some() {
        // Leave the database out of TimescaleDB's restore mode (background
        // workers stopped, `timescaledb.restoring` set for every new
        // session) even though the restore failed; best effort, the
        // restore's own error is what is reported.
        let _ = client
            .batch_execute("SELECT timescaledb_post_restore()")
            .await;
    }
    let bytes = restored.map_err(|e| {
        // --clean is refused for TimescaleDB snapshots: only a new database helps.
        let partial = if plan.timescaledb.is_some() {
            format!(
                "database {:?} may now hold a partial restore: drop it and restore again with --create",
                target.dbname
            )
        } else {
            format!(
                "database {:?} may now hold a partial restore: drop it, or restore again with --clean",
                target.dbname
            )
        };
        let missing_role = e.message().contains("role") && e.message().contains("does not exist");
        if missing_role && !opts.no_owner {
            e.with_hint(format!(
                "the target server lacks a role that owns objects in the dump: create the roles \
                 first, or restore with --no-owner; {partial}"
            ))
        } else {
            e.with_hint(partial)
        }
    })?;
    if plan.timescaledb.is_some() {
        client
            .batch_execute("SELECT timescaledb_post_restore()")
            .await
            .map_err(|e| inspect::db_err("timescaledb_post_restore()", e))?;
    }
    drop(client);

    let (actual, checked_early) = early.unwrap_or_else(start_verifiers).finish().await?;
    let differences = picture::compare(&picture.tables, &actual);
    Ok(PgRestoreSummary {
        snapshot_id,
        database: target.dbname.clone(),
        created,
        bytes,
        jobs: plan.jobs,
        staged,
        timescaledb: plan.timescaledb,
        tables: picture.tables.len() as u64,
        rows: actual.iter().map(|t| t.rows).sum(),
        tables_checksummed: picture
            .tables
            .iter()
            .filter(|t| t.checksum.is_some())
            .count() as u64,
        tables_checked_during_restore: checked_early,
        differences,
        warnings: collector.take(),
        duration_s: clock.elapsed().as_secs_f64(),
    })
}

/// Stream the dump from the repository into `pg_restore`'s stdin. With
/// `watch`, pg_restore runs with `--verbose`, and a table is queued for
/// checking once pg_restore has gone on from its data to the next item
/// (one job restores items one after the other, each COPY committed
/// before the next item starts).
async fn restore_streamed(
    reader: &ChunkReader,
    entry: &Entry,
    mut cmd: Command,
    progress: &dyn Progress,
    watch: Option<(Queue, &[TablePicture])>,
) -> Result<u64> {
    let observer = watch.map(|(queue, tables)| {
        cmd.arg("--verbose");
        let names: std::collections::HashMap<String, usize> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("{}.{}", t.schema, t.name), i))
            .collect();
        let mut loading: Option<usize> = None;
        Box::new(move |line: &str| {
            let progress = pg_verify::is_progress(line);
            if progress {
                if let Some(i) = loading.take() {
                    queue.push(i);
                }
                loading = pg_verify::data_started(line).and_then(|t| names.get(t).copied());
            }
            progress
        }) as tools::LineObserver
    });
    let (child, mut stdin) = tools::FedChild::spawn_observed("pg_restore", cmd, observer)?;
    let fed = super::restore::copy_entry(reader, entry, &mut stdin, progress).await;
    drop(stdin);
    let finished = child.finish();
    match (fed, finished) {
        (Ok(n), Ok(())) => Ok(n),
        // pg_restore stopped reading because it failed: its message is the story.
        (Err(e), Err(pg)) if e.kind() != ErrorKind::Integrity => Err(pg),
        (Err(e), _) => Err(e),
        (Ok(_), Err(pg)) => Err(pg),
    }
}

/// Run the snapshot's `globals.sql` through psql in the target database
/// (roles are cluster-wide). psql goes on past errors; each error line
/// (typically "role ... already exists") becomes a [`WarningKind::Globals`]
/// warning about the target database.
async fn apply_globals(
    reader: &ChunkReader,
    entry: &Entry,
    target: &Dsn,
    progress: &dyn Progress,
) -> Result<()> {
    let psql = tools::find("psql", 0, None)?;
    let cmd = psql.command(target, &["-X", "-q", "-v", "ON_ERROR_STOP=0"]);
    let (child, mut stdin) = tools::FedChild::spawn("psql (roles)", cmd)?;
    let fed = super::restore::copy_entry(reader, entry, &mut stdin, progress).await;
    drop(stdin);
    let said = child.finish_with_stderr()?;
    fed?;
    for l in said.iter().filter(|l| l.contains("ERROR:")) {
        progress.warning(&Warning::new(
            WarningKind::Globals,
            target.dbname.as_str(),
            l.trim(),
        ));
    }
    Ok(())
}

/// The staged dump on its way to its file, also fed to a
/// [`DumpScanner::locator`] (a scanner that only finds each table's data).
struct Locating<W> {
    inner: W,
    /// Dropped at the first bytes it cannot read.
    locator: Option<DumpScanner>,
}

impl<W: std::io::Write> std::io::Write for Locating<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(l) = self.locator.as_mut() {
            if l.feed(&buf[..n]).is_err() {
                self.locator = None;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Stage the dump on local disk, then run a parallel `pg_restore` on it.
/// The dump is decrypted data: it is staged as a 0600 file in a private
/// 0700 directory of this run (under `dir`, else `$TMPDIR`), removed with
/// it however the restore ends, SIGINT/SIGTERM included. With `watch`,
/// pg_restore runs with `--verbose` and each table of the picture whose
/// TABLE DATA item it reports finished is queued for checking.
async fn restore_staged(
    reader: &ChunkReader,
    entry: &Entry,
    mut cmd: Command,
    private: crate::scratch::PrivateDir,
    progress: &dyn Progress,
    watch: Option<(Queue, &[TablePicture])>,
) -> Result<u64> {
    let (path, file) = private
        .create_file("dump")
        .map_err(|e| e.with_hint("pick a directory with room for the dump with --staging-dir"))?;
    let where_ = private.path().display().to_string();
    let mut out = Locating {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        locator: Some(DumpScanner::locator()),
    };
    let n = super::restore::copy_entry(reader, entry, &mut out, progress)
        .await
        .map_err(|e| e.context(format!("staging the dump in {where_}")))?;
    let Locating { inner, locator } = out;
    let file = inner
        .into_inner()
        .map_err(|e| Error::io(format!("staging the dump in {where_}: {}", e.error())))?;
    // pg_dump wrote into a pipe, so its TOC does not say where each
    // table's data lies, and `pg_restore -j` would find each by skipping
    // through every block before it (a block per row). Record them as
    // pg_dump does when it can seek. An archive the locator could not
    // read (compressed, say) is left as it is: pg_restore still finds
    // its data, only slower.
    if let Some(Ok(patches)) = locator.map(DumpScanner::into_offset_patches) {
        use std::os::unix::fs::FileExt;
        for (at, field) in patches {
            file.write_all_at(&field, at)
                .map_err(|e| Error::io(format!("staging the dump in {where_}: {e}")))?;
        }
    }
    drop(file);
    let observer = match watch {
        Some((queue, tables)) => {
            let ids = table_data_ids(&path, tables)?;
            cmd.arg("--verbose");
            Some(Box::new(move |line: &str| {
                if let Some(i) = pg_verify::finished_table_data(line).and_then(|id| ids.get(&id)) {
                    queue.push(*i);
                }
                pg_verify::is_progress(line)
            }) as tools::LineObserver)
        }
        None => None,
    };
    cmd.arg(&path);
    let finished = tokio::task::spawn_blocking(move || {
        let (child, stdin) = tools::FedChild::spawn_observed("pg_restore", cmd, observer)?;
        drop(stdin);
        child.finish()
    })
    .await
    .map_err(|e| Error::io(format!("pg_restore task failed: {e}")))?;
    drop(private);
    finished.map(|_| n)
}

/// The picture's table for each TABLE DATA item of the staged dump's TOC
/// (by dump id; matched by schema and name, as the picture was made).
fn table_data_ids(
    path: &std::path::Path,
    tables: &[TablePicture],
) -> Result<std::collections::HashMap<i64, usize>> {
    use std::io::Read;
    let what = |e: std::io::Error| Error::io(format!("reading the staged dump's TOC: {e}"));
    let mut f = std::fs::File::open(path).map_err(what)?;
    let mut scanner = DumpScanner::new(RowHash::Xxh3);
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0usize;
    let entries = loop {
        if let Some(e) = scanner.table_data_entries() {
            break e;
        }
        let n = f.read(&mut buf).map_err(what)?;
        read += n;
        if n == 0 {
            // A small dump, read whole: its data blocks name every table.
            break scanner
                .finish()?
                .tables
                .into_iter()
                .map(|t| (t.dump_id, t.schema, t.name))
                .collect();
        }
        if read > MAX_TOC_BYTES + buf.len() {
            return Err(Error::format(
                "pg_dump custom archive",
                "the staged dump's TOC could not be read",
            ));
        }
        scanner.feed(&buf[..n])?;
    };
    Ok(entries
        .into_iter()
        .filter_map(|(id, schema, name)| {
            let i = tables
                .iter()
                .position(|t| t.schema == schema && t.name == name)?;
            Some((id, i))
        })
        .collect())
}

/// `CREATE DATABASE` from template0 with the dump's encoding; `false` if
/// it already existed (the emptiness check that follows decides). The
/// snapshot's extensions are checked against the server's first, so a
/// server without them is not left with a new empty database.
async fn create_database(
    target: &Dsn,
    picture: &DbPicture,
    timescaledb: Option<&str>,
) -> Result<bool> {
    let encoding = picture.encoding.as_str();
    let mut last = None;
    for maintenance in ["postgres", "template1"] {
        let admin = match inspect::connect(&target.with_dbname(maintenance)?).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&target.dbname],
            )
            .await
            .map_err(|e| inspect::db_err("looking for the target database", e))?
            .is_some();
        check_extensions(&admin, &picture.extensions, timescaledb).await?;
        if exists {
            return Ok(false);
        }
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING '{}'",
                inspect::quote_ident(&target.dbname),
                encoding.replace('\'', "")
            ))
            .await
            .map_err(|e| inspect::db_err(&format!("creating database {:?}", target.dbname), e))?;
        return Ok(true);
    }
    Err(last.expect("tried at least once"))
}

/// Whether the server offers every extension the snapshot's database had
/// (pg_restore would stop half-way at the first missing one), and
/// TimescaleDB at exactly the recorded version.
async fn check_extensions(
    client: &tokio_postgres::Client,
    extensions: &[picture::Extension],
    timescaledb: Option<&str>,
) -> Result<()> {
    let rows = client
        .query(
            "SELECT name, version FROM pg_available_extension_versions",
            &[],
        )
        .await
        .map_err(|e| inspect::db_err("listing the target server's extensions", e))?;
    let available: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let missing: Vec<String> = extensions
        .iter()
        .filter(|e| !available.iter().any(|(n, _)| *n == e.name))
        .map(|e| format!("{} {}", e.name, e.version))
        .collect();
    if !missing.is_empty() {
        return Err(Error::usage(format!(
            "the target server lacks extension(s) the snapshot's database uses: {}; nothing was restored",
            missing.join(", ")
        ))
        .with_hint("install them on the target server (Debian: postgresql-15-<name> or contrib)"));
    }
    if let Some(version) = timescaledb {
        let versions: Vec<&str> = available
            .iter()
            .filter(|(n, _)| n == "timescaledb")
            .map(|(_, v)| v.as_str())
            .collect();
        if !versions.contains(&version) {
            return Err(Error::usage(format!(
                "the snapshot holds TimescaleDB {version}, which the target server does not have \
                 (available: {}); nothing was restored",
                versions.join(", ")
            ))
            .with_hint(format!(
                "install TimescaleDB {version} on the target server"
            )));
        }
    }
    Ok(())
}

/// An empty target database may still have TimescaleDB installed (an
/// earlier attempt, a template): `CREATE EXTENSION IF NOT EXISTS … VERSION`
/// would then silently keep that version and restore the snapshot's
/// catalog into another one. Refused before anything is changed.
async fn check_installed_timescaledb(
    client: &tokio_postgres::Client,
    version: &str,
    dbname: &str,
) -> Result<()> {
    let installed: Option<String> = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .map_err(|e| inspect::db_err("looking for TimescaleDB in the target", e))?
        .map(|r| r.get(0));
    match installed {
        Some(have) if have != version => Err(Error::usage(format!(
            "target database {dbname:?} already has TimescaleDB {have}, the snapshot holds \
             TimescaleDB {version}; nothing was restored"
        ))
        .with_hint(format!(
            "restore into a new database with --create, or `ALTER EXTENSION timescaledb UPDATE TO '{version}'` in the target first"
        ))),
        _ => Ok(()),
    }
}

/// Create TimescaleDB at the snapshot's version and enter restore mode.
async fn prepare_timescaledb(client: &tokio_postgres::Client, version: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE EXTENSION IF NOT EXISTS timescaledb VERSION '{}'; SELECT timescaledb_pre_restore();",
            version.replace('\'', "")
        ))
        .await
        .map_err(|e| inspect::db_err("preparing TimescaleDB for the restore", e))
}

/// Connections that read the restored tables back, at the least.
const VERIFY_JOBS_MIN: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::picture::Extension;

    fn picture(ext: &[(&str, &str)]) -> DbPicture {
        DbPicture {
            database: "usdcop_trading".into(),
            dsn: "host=db dbname=usdcop_trading".into(),
            server_version: "15.18".into(),
            server_version_num: 150018,
            pg_dump_version: "pg_dump (PostgreSQL) 15.18".into(),
            dump_format: picture::DUMP_FORMAT.into(),
            exported_snapshot: "00000003-00000002-1".into(),
            encoding: "UTF8".into(),
            database_size: 1,
            extensions: ext
                .iter()
                .map(|(n, v)| Extension {
                    name: (*n).into(),
                    version: (*v).into(),
                    schema: "public".into(),
                })
                .collect(),
            tables: vec![],
            total_rows: 0,
            checksum_max_rows: 1,
            checksum_algorithm: picture::ChecksumAlgorithm::CURRENT,
            globals: false,
        }
    }

    fn opts(jobs: u32, clean: bool) -> PgRestoreOptions {
        PgRestoreOptions {
            target: Dsn::parse_with("host=h dbname=t user=u", &|_| None).unwrap(),
            create: false,
            clean,
            jobs,
            staging_dir: None,
            no_owner: true,
            pg_restore: None,
            globals: false,
            read_concurrency: None,
        }
    }

    #[test]
    fn plain_postgres_restores_in_parallel_when_asked() {
        let p = plan(&picture(&[("plpgsql", "1.0")]), &opts(4, true)).unwrap();
        assert_eq!(p.jobs, 4);
        assert!(p.timescaledb.is_none() && p.warnings.is_empty());
        for a in [
            "--clean",
            "--if-exists",
            "--jobs=4",
            "--no-owner",
            "--exit-on-error",
        ] {
            assert!(p.pg_restore_args.iter().any(|x| x == a), "{a}: {p:?}");
        }
        let p = plan(&picture(&[]), &opts(1, false)).unwrap();
        assert_eq!(p.jobs, 1);
        assert!(!p
            .pg_restore_args
            .iter()
            .any(|x| x.starts_with("--jobs") || x == "--clean"));
    }

    #[test]
    fn timescaledb_restores_serially_with_its_version_and_says_so() {
        let p = plan(&picture(&[("timescaledb", "2.14.2")]), &opts(4, false)).unwrap();
        assert_eq!(p.jobs, 1);
        assert_eq!(p.timescaledb.as_deref(), Some("2.14.2"));
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(p.warnings[0].kind, WarningKind::OptionIgnored, "{p:?}");
        assert!(p.warnings[0].message.contains("--jobs 4 ignored"), "{p:?}");
        assert!(!p.pg_restore_args.iter().any(|x| x.starts_with("--jobs")));
        let p = plan(&picture(&[("timescaledb", "2.14.2")]), &opts(1, false)).unwrap();
        assert!(p.warnings.is_empty());
        let e = plan(&picture(&[("timescaledb", "2.14.2")]), &opts(1, true)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
    }
}
