//! A PostgreSQL database: `pg_dump` streamed straight into the pipeline,
//! and the database's picture taken in the very snapshot pg_dump reads.
//!
//! 1. [`Session::open`] (before anything is written to the repository):
//!    connect with tokio-postgres, open a REPEATABLE READ transaction,
//!    `pg_export_snapshot()`, read the server facts, find a `pg_dump` at
//!    least as new as the server. A wrong DSN or password fails here.
//! 2. [`Session::backup`]: start `pg_dump --snapshot=… -Fc -Z0` (password in
//!    its environment, never argv) and store its stdout as one entry, while
//!    the same transaction counts (and checksums) every table. pg_dump's
//!    failure (non-zero exit, signal, lost connection) ends the stream with
//!    its own message, so the backup fails and no snapshot is written.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::format::pgdump::DumpScanner;
use crate::format::snapshot::Entry;
use crate::pipeline::{StoredList, Writer, WriterOptions, WriterTotals};
use crate::postgres::picture::{ChecksumAlgorithm, DbPicture, TablePicture, DUMP_FORMAT};
use crate::postgres::tools::{self, ChildStream, PgTool};
use crate::postgres::{inspect, Dsn};
use crate::progress::Progress;
use crate::repository::{MasterIndex, Repository};

#[derive(Debug, Clone)]
pub struct PgBackupOptions {
    /// `pg_dump` to use instead of searching for one.
    pub pg_dump: Option<PathBuf>,
    /// Tables with at most this many rows also get a content checksum.
    pub checksum_max_rows: u64,
    /// Also store the cluster's roles and tablespaces (`pg_dumpall
    /// --globals-only --no-role-passwords`) as `globals.sql`.
    pub globals: bool,
}

impl Default for PgBackupOptions {
    fn default() -> Self {
        PgBackupOptions {
            pg_dump: None,
            checksum_max_rows: 1_000_000,
            globals: false,
        }
    }
}

/// A connected database with an exported snapshot, ready to dump.
pub struct Session {
    dsn: Dsn,
    client: Client,
    exported_snapshot: String,
    pg_dump: PgTool,
    picture: DbPicture,
    checksum_max_rows: u64,
    pg_dumpall: Option<PgTool>,
}

/// The entry holding the roles and tablespaces, with `--globals`.
pub const GLOBALS_ENTRY: &str = "globals.sql";

impl Session {
    pub async fn open(dsn: &Dsn, opts: &PgBackupOptions) -> Result<Session> {
        let client = inspect::connect(dsn).await?;
        let exported_snapshot = inspect::begin(&client, true)
            .await?
            .expect("export requested");
        let (server_version, num, encoding, database, size) =
            inspect::server_facts(&client).await?;
        // 150018 → 15. Before 10 a major was two numbers (90624 → 9): the
        // check is coarser there, for servers long out of support.
        let major = num / 10_000;
        let pg_dump = tools::find("pg_dump", major, opts.pg_dump.as_deref())?;
        let pg_dumpall = match opts.globals {
            true => Some(tools::find("pg_dumpall", major, None)?),
            false => None,
        };
        let picture = DbPicture {
            database,
            dsn: dsn.redacted().to_owned(),
            server_version,
            server_version_num: num,
            pg_dump_version: pg_dump.version.clone(),
            dump_format: DUMP_FORMAT.into(),
            exported_snapshot: exported_snapshot.clone(),
            encoding,
            database_size: size,
            extensions: vec![],
            tables: vec![],
            total_rows: 0,
            checksum_max_rows: opts.checksum_max_rows,
            checksum_algorithm: ChecksumAlgorithm::CURRENT,
            globals: false,
        };
        Ok(Session {
            dsn: dsn.clone(),
            client,
            exported_snapshot,
            pg_dump,
            picture,
            checksum_max_rows: opts.checksum_max_rows,
            pg_dumpall,
        })
    }

    pub fn database(&self) -> &str {
        &self.picture.database
    }

    fn dump_command(&self) -> Command {
        let snapshot = format!("--snapshot={}", self.exported_snapshot);
        self.pg_dump.command(
            &self.dsn,
            &["--format=custom", "--compress=0", snapshot.as_str()],
        )
    }

    /// `pg_dumpall --globals-only`: roles (without their password hashes,
    /// which stay out of backups) and tablespaces.
    fn globals_command(&self, tool: &PgTool) -> Command {
        tool.command(&self.dsn, &["--globals-only", "--no-role-passwords"])
    }

    /// Dump into `writer`'s repository; returns the entries (the dump, and
    /// with `--globals` the roles), the pipeline's totals and the
    /// database's picture.
    pub async fn backup(
        self,
        repo: &Arc<Repository>,
        index: Arc<MasterIndex>,
        writer_opts: WriterOptions,
        time: DateTime<Utc>,
        progress: Arc<dyn Progress>,
    ) -> Result<(Vec<Entry>, StoredList, WriterTotals, DbPicture)> {
        let globals = self.pg_dumpall.as_ref().map(|t| self.globals_command(t));
        let stream = ChildStream::spawn("pg_dump", self.dump_command())?;
        let pg_dump_pid = stream.pid();
        // Each table's rows counted and digested from the dump as it goes
        // by (format::pgdump): the server reads every table once. COPY text
        // is in the database's encoding, and the restore side reads it back
        // as UTF8: other encodings keep the server-side picture.
        let from_dump = self.picture.encoding == "UTF8";
        let scan = Arc::new(std::sync::Mutex::new(ScanState {
            scanner: from_dump.then(|| {
                DumpScanner::new(
                    ChecksumAlgorithm::CURRENT
                        .row_hash()
                        .expect("the current algorithm reads the dump"),
                )
            }),
            error: None,
        }));
        let stream = Scanned {
            inner: stream,
            scan: scan.clone(),
        };
        let writer = Writer::start(repo.clone(), index, writer_opts)?;
        let name = format!("{}.dump", sanitize(&self.picture.database));
        let store = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut entries = vec![crate::source::stdin::store(
                &writer,
                &name,
                stream,
                time,
                progress.as_ref(),
            )?];
            if let Some(cmd) = globals {
                let stream = ChildStream::spawn("pg_dumpall", cmd)?;
                entries.push(crate::source::stdin::store(
                    &writer,
                    GLOBALS_ENTRY,
                    stream,
                    time,
                    progress.as_ref(),
                )?);
            }
            let list = writer.store_entry_list(entries.clone())?;
            let w = writer.finish()?;
            Ok((entries, list, w))
        });
        let client = &self.client;
        let max = self.checksum_max_rows;
        let look = async move {
            let extensions = inspect::extensions(client).await?;
            if from_dump {
                return Ok::<_, Error>((extensions, None));
            }
            let tables = inspect::tables(client).await?;
            let pictures =
                inspect::table_pictures(client, &tables, max, ChecksumAlgorithm::SERVER).await?;
            Ok::<_, Error>((extensions, Some(pictures)))
        };
        let store = async move {
            store
                .await
                .map_err(|e| Error::io(format!("backup task failed: {e}")))?
        };
        // The first failure ends both. A failed pg_dump must not wait for
        // the counts (they may be stuck behind the lock that stopped it):
        // the session is dropped on return, closing the connection. Failed
        // counts make the dump useless: pg_dump is stopped, and the store
        // awaited so that nothing keeps writing after we return.
        let mut store = std::pin::pin!(store);
        let mut look = std::pin::pin!(look);
        let ((entries, list, w), (extensions, tables)) = tokio::select! {
            // A finished store is seen first, so pg_dump is only signalled
            // while it is still ours.
            biased;
            stored = &mut store => {
                let stored = stored?;
                (stored, look.await?)
            }
            looked = &mut look => match looked {
                Ok(looked) => (store.await?, looked),
                Err(e) => {
                    // SAFETY: signalling our own child, still unreaped
                    // (the stream holding it waits for it).
                    unsafe { libc::kill(pg_dump_pid as libc::pid_t, libc::SIGTERM) };
                    let _ = store.await;
                    return Err(e);
                }
            },
        };
        let mut picture = self.picture;
        let tables = match tables {
            Some(t) => {
                picture.checksum_algorithm = ChecksumAlgorithm::SERVER;
                t
            }
            None => {
                let state = std::mem::replace(
                    &mut *scan.lock().unwrap_or_else(|p| p.into_inner()),
                    ScanState {
                        scanner: None,
                        error: None,
                    },
                );
                let summary = match (state.scanner, state.error) {
                    (Some(s), None) => s.finish(),
                    (_, Some(e)) => Err(Error::format("pg_dump custom archive", e)),
                    (None, None) => Err(Error::format("pg_dump custom archive", "not read")),
                };
                match summary {
                    Ok(sum) => {
                        picture.checksum_algorithm = ChecksumAlgorithm::CURRENT;
                        sum.tables
                            .into_iter()
                            .map(|t| TablePicture {
                                checksum: Some(t.digest_hex()),
                                schema: t.schema,
                                name: t.name,
                                rows: t.rows,
                                copy_statement: Some(t.copy_statement),
                            })
                            .collect()
                    }
                    Err(e) => {
                        // Still inside the exported snapshot: the server
                        // takes the picture instead.
                        tracing::warn!(
                            "the dump could not be read for its rows ({e}); the server counts them instead"
                        );
                        picture.checksum_algorithm = ChecksumAlgorithm::SERVER;
                        let tables = inspect::tables(&self.client).await?;
                        inspect::table_pictures(
                            &self.client,
                            &tables,
                            self.checksum_max_rows,
                            ChecksumAlgorithm::SERVER,
                        )
                        .await?
                    }
                }
            }
        };
        // Keeping the transaction open until pg_dump finished kept the
        // exported snapshot valid for it.
        let _ = self.client.batch_execute("COMMIT").await;
        picture.total_rows = tables.iter().map(|t| t.rows).sum();
        picture.extensions = extensions;
        picture.tables = tables;
        picture.globals = self.pg_dumpall.is_some();
        Ok((entries, list, w, picture))
    }
}

/// The dump reader fed by [`Scanned`].
struct ScanState {
    scanner: Option<DumpScanner>,
    /// Why the dump could not be read for its rows (the scanner dropped).
    error: Option<String>,
}

/// pg_dump's output on its way to the repository, fed to the
/// [`DumpScanner`] too.
struct Scanned<R> {
    inner: R,
    scan: Arc<std::sync::Mutex<ScanState>>,
}

impl<R: std::io::Read> std::io::Read for Scanned<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let mut st = self.scan.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = st.scanner.as_mut() {
                if let Err(e) = s.feed(&buf[..n]) {
                    st.scanner = None;
                    st.error = Some(e.to_string());
                }
            }
        }
        Ok(n)
    }
}

/// A database name as a file name in the snapshot.
fn sanitize(db: &str) -> String {
    let s: String = db
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("db{s}")
    } else {
        s
    }
}
