//! Looking at a live database with tokio-postgres: connect, export a
//! snapshot for pg_dump, and take its picture (server facts, extensions,
//! per-table exact row counts and content checksums) inside that snapshot.
//! The same queries judge a restored database.

use tokio_postgres::{Client, NoTls};

use super::dsn::Dsn;
use super::picture::{ChecksumAlgorithm, Extension, TablePicture};
use crate::error::{Error, ErrorKind, Result};

/// Settings under which row text (and so the checksum) is canonical: the
/// source and the restored database must render values identically.
const CANONICAL_SETTINGS: &str = "SET LOCAL TimeZone = 'UTC'; \
     SET LOCAL extra_float_digits = 3; \
     SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL bytea_output = 'hex'";

/// Relations in user schemas (not the system's, not TimescaleDB's
/// internal ones) that no extension owns; `c` is pg_class, `n` its schema.
macro_rules! user_relations {
    ($select:literal, $kinds:literal) => {
        concat!(
            "SELECT ",
            $select,
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ",
            $kinds,
            r"
  AND n.nspname NOT IN ('pg_catalog', 'information_schema',
                        'timescaledb_information', 'timescaledb_experimental')
  AND n.nspname NOT LIKE 'pg\_%'
  AND n.nspname NOT LIKE '\_timescaledb%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')"
        )
    };
}

/// User tables: ordinary and partitioned tables. A hypertable's rows are
/// counted through the hypertable (its chunks live in
/// `_timescaledb_internal`).
const TABLES_SQL: &str = concat!(
    user_relations!("n.nspname, c.relname", "('r', 'p')"),
    " ORDER BY 1, 2"
);

/// Relations of any kind a restore could collide with (tables, views,
/// materialized views, sequences, foreign tables).
const USER_RELATIONS_SQL: &str = user_relations!("count(*)", "('r', 'p', 'v', 'm', 'S', 'f')");

/// Connect, turning libpq-style failures into one clear line with a hint
/// for that failure ([`connect_error`]). The password is never part of
/// any message (the DSN shown is redacted). A Unix socket (directory or
/// abstract name) is reached in plain text whatever `sslmode` says, as
/// libpq does; TCP follows `sslmode` ([`super::tls`]).
pub async fn connect(dsn: &Dsn) -> Result<Client> {
    let config = dsn.config();
    let failed = |e: tokio_postgres::Error| connect_error(dsn, &e);
    if let Some(name) = dsn.host.strip_prefix('@') {
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(std::time::Duration::from_secs(15));
        let stream = abstract_socket(name, dsn.port).map_err(|e| io_connect_error(dsn, &e))?;
        let (client, conn) = tokio::time::timeout(timeout, config.connect_raw(stream, NoTls))
            .await
            .map_err(|_| {
                io_connect_error(dsn, &std::io::Error::from(std::io::ErrorKind::TimedOut))
            })?
            .map_err(failed)?;
        drive(conn);
        return Ok(client);
    }
    if dsn.is_socket() {
        let (client, conn) = config.connect(NoTls).await.map_err(failed)?;
        drive(conn);
        return Ok(client);
    }
    match super::tls::client_config(&dsn.ssl)? {
        None => {
            let (client, conn) = config.connect(NoTls).await.map_err(failed)?;
            drive(conn);
            Ok(client)
        }
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, conn) = config.connect(tls).await.map_err(failed)?;
            drive(conn);
            Ok(client)
        }
    }
}

/// Run a connection's I/O until it ends.
fn drive<F, E>(conn: F)
where
    F: std::future::Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
}

/// libpq's abstract Unix socket: `@name` is `\0name/.s.PGSQL.<port>`.
#[cfg(target_os = "linux")]
fn abstract_socket(name: &str, port: u16) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(format!("{name}/.s.PGSQL.{port}"))?;
    // A local connect does not wait for the server: done before it returns.
    let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

#[cfg(not(target_os = "linux"))]
fn abstract_socket(_: &str, _: u16) -> std::io::Result<tokio::net::UnixStream> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract Unix sockets (@name) exist only on Linux",
    ))
}

/// Why a connection failed, as far as a person must act differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The server refused the password (SQLSTATE 28P01).
    Password,
    /// The server asked for a password and none was found.
    NoPassword,
    /// Peer authentication: OS user and role differ.
    Peer,
    /// pg_hba.conf has no line for this connection.
    NoHbaEntry,
    /// The role does not exist (said only where no password is asked).
    NoRole,
    /// The database does not exist (3D000).
    NoDatabase,
    /// Nothing listens there.
    Refused,
    /// No socket file in that directory.
    NoSocket,
    Tls,
    Timeout,
    Other,
}

/// Classify a failed connection from the server's SQLSTATE and message,
/// or the system error beneath (pure, so each branch is unit-tested).
pub fn classify(
    code: Option<&str>,
    message: &str,
    io: Option<std::io::ErrorKind>,
) -> ConnectFailure {
    use std::io::ErrorKind as K;
    use ConnectFailure as F;
    match code {
        Some("28P01") => return F::Password,
        Some("3D000") => return F::NoDatabase,
        Some("28000") if message.contains("Peer authentication failed") => return F::Peer,
        Some("28000") if message.contains("no pg_hba.conf entry") => return F::NoHbaEntry,
        Some("28000") if message.contains("role") && message.contains("does not exist") => {
            return F::NoRole
        }
        _ => {}
    }
    match io {
        Some(K::ConnectionRefused) => return F::Refused,
        Some(K::NotFound) => return F::NoSocket,
        Some(K::TimedOut) => return F::Timeout,
        _ => {}
    }
    if message.contains("password missing") {
        F::NoPassword
    } else if message.contains("TLS") || message.contains("certificate") {
        F::Tls
    } else if message.contains("timeout") || message.contains("timed out") {
        F::Timeout
    } else {
        F::Other
    }
}

/// The hint for a failure: only a password problem hints at passwords.
pub fn connect_hint(dsn: &Dsn, why: ConnectFailure) -> String {
    use ConnectFailure as F;
    let (user, db) = (&dsn.user, &dsn.dbname);
    match why {
        F::Password => format!(
            "the server refused the password for role {user:?}: check the password in the DSN's \
             environment variable (USDCOP_DR_PG_DSN / USDCOP_DR_PG_TARGET_DSN), PGPASSWORD or \
             the passfile (~/.pgpass, PGPASSFILE)"
        ),
        F::NoPassword => format!(
            "the server asks role {user:?} for a password and none was found: set PGPASSWORD, \
             add a ~/.pgpass line (or PGPASSFILE), or put the DSN with its password in \
             USDCOP_DR_PG_DSN; locally, run as the OS user {user:?} over the Unix socket (peer \
             authentication) instead"
        ),
        F::Peer => format!(
            "peer authentication lets an OS user log in only as the role of the same name: run \
             usdcop-dr as the OS user {user:?} (a cron job of that user, or `runuser -u {user} \
             --`), set user= to your own OS user name, or connect over TCP (host=127.0.0.1) with \
             a password"
        ),
        F::NoHbaEntry => "the server's pg_hba.conf allows no connection of this kind (host, \
             role, database, encryption): add a line for it and reload the server, or connect \
             the way it allows (e.g. over the Unix socket, or with sslmode=require)"
            .into(),
        F::NoRole => format!(
            "the server has no role {user:?}: set user= in the DSN (or PGUSER); without either, \
             the OS user's name is used, as libpq does"
        ),
        F::NoDatabase => format!(
            "the server has no database {db:?}: check dbname= in the DSN (or PGDATABASE; \
             without either, the user's name is used); `psql -l` lists them"
        ),
        F::Refused if dsn.is_socket() => format!(
            "no server accepts on {}: is PostgreSQL running, with {} in \
             unix_socket_directories and port {}?",
            dsn.socket_file(),
            dsn.host,
            dsn.port
        ),
        F::Refused => format!(
            "nothing accepts connections at {}: check host and port in the DSN (or PGHOST / \
             PGPORT), that PostgreSQL runs there and listens on that address (listen_addresses)",
            dsn.endpoint()
        ),
        F::NoSocket => format!(
            "no socket {}: is PostgreSQL running, with {} in unix_socket_directories and port \
             {}? Set host= (the socket directory) and port= in the DSN, or PGHOST / PGPORT",
            dsn.socket_file(),
            dsn.host,
            dsn.port
        ),
        F::Tls => "check sslmode and sslrootcert (the CA that issued the server's certificate; \
             verify-full also needs the certificate to name the host in the DSN)"
            .into(),
        F::Timeout => format!(
            "no answer from {} within the connect timeout: check host, port and firewalls \
             (connect_timeout= in the DSN sets the wait)",
            dsn.endpoint()
        ),
        F::Other => "check the DSN: host, port, user and dbname (and PGHOST, PGPORT, PGUSER, \
             PGDATABASE when it leaves them out)"
            .into(),
    }
}

/// A failed connection as one line: where, as whom, the server's (or the
/// system's) own words, and the hint for that failure.
pub fn connect_error(dsn: &Dsn, e: &tokio_postgres::Error) -> Error {
    let db = e.as_db_error();
    let detail = db
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| error_chain(e));
    let io = io_kind(e);
    let why = classify(db.map(|d| d.code().code()), &detail, io);
    failure(dsn, why, &detail)
}

fn io_connect_error(dsn: &Dsn, e: &std::io::Error) -> Error {
    failure(
        dsn,
        classify(None, &e.to_string(), Some(e.kind())),
        &e.to_string(),
    )
}

fn failure(dsn: &Dsn, why: ConnectFailure, detail: &str) -> Error {
    Error::new(
        ErrorKind::Source,
        format!(
            "cannot connect to PostgreSQL at {} (database {:?}, user {:?}): {detail}",
            dsn.endpoint(),
            dsn.dbname,
            dsn.user
        ),
    )
    .with_hint(connect_hint(dsn, why))
}

/// The system error kind beneath a tokio-postgres error, if any.
fn io_kind(e: &tokio_postgres::Error) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = c.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s += &format!(": {m}");
        }
        cur = c.source();
    }
    s
}

pub fn db_err(what: &str, e: tokio_postgres::Error) -> Error {
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| error_chain(&e));
    Error::new(ErrorKind::Source, format!("PostgreSQL: {what}: {detail}"))
}

/// Open a read-only REPEATABLE READ transaction with canonical output
/// settings; with `export`, also export its snapshot for `pg_dump
/// --snapshot` and return the snapshot's name.
pub async fn begin(client: &Client, export: bool) -> Result<Option<String>> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; {CANONICAL_SETTINGS}"
        ))
        .await
        .map_err(|e| db_err("starting a snapshot transaction", e))?;
    if !export {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| db_err("pg_export_snapshot()", e))?;
    Ok(Some(row.get(0)))
}

/// Server facts: (version string, version number, encoding, database name,
/// database size in bytes).
pub async fn server_facts(client: &Client) -> Result<(String, u32, String, String, u64)> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), \
                    current_setting('server_version_num')::int4, \
                    pg_encoding_to_char(encoding), current_database(), \
                    pg_database_size(current_database())::int8 \
             FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| db_err("reading server facts", e))?;
    let num: i32 = row.get(1);
    let size: i64 = row.get(4);
    Ok((
        row.get(0),
        num as u32,
        row.get(2),
        row.get(3),
        size.max(0) as u64,
    ))
}

pub async fn extensions(client: &Client) -> Result<Vec<Extension>> {
    let rows = client
        .query(
            "SELECT e.extname, e.extversion, n.nspname FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| db_err("listing extensions", e))?;
    Ok(rows
        .iter()
        .map(|r| Extension {
            name: r.get(0),
            version: r.get(1),
            schema: r.get(2),
        })
        .collect())
}

pub async fn tables(client: &Client) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(TABLES_SQL, &[])
        .await
        .map_err(|e| db_err("listing tables", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// How many relations a restore could collide with.
pub async fn user_relations(client: &Client) -> Result<u64> {
    let row = client
        .query_one(USER_RELATIONS_SQL, &[])
        .await
        .map_err(|e| db_err("looking for existing tables", e))?;
    let n: i64 = row.get(0);
    Ok(n.max(0) as u64)
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Exact row count and, with `checksum`, the order-independent content
/// checksum (see [`ChecksumAlgorithm`]) as a decimal string. Row text is
/// rendered under [`CANONICAL_SETTINGS`]. One streaming aggregate: no row
/// set is held in memory on either side.
pub async fn table_picture(
    client: &Client,
    schema: &str,
    name: &str,
    checksum: Option<ChecksumAlgorithm>,
) -> Result<TablePicture> {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let row_text = "ROW(usdcop_dr_row.*)::text";
    let sql = match checksum {
        Some(ChecksumAlgorithm::Md5Sum60) => format!(
            "SELECT count(*)::int8, coalesce(sum(('x' || substr(md5({row_text}), 1, 15))\
             ::bit(60)::int8::numeric), 0)::text FROM {table} AS usdcop_dr_row"
        ),
        Some(ChecksumAlgorithm::HashtextextendedSum) => format!(
            "SELECT count(*)::int8, coalesce(sum(hashtextextended({row_text}, 0)::numeric), 0)::text \
             FROM {table} AS usdcop_dr_row"
        ),
        // Not a server-side sum: read back with `copy_digest`.
        Some(ChecksumAlgorithm::DumpRowsSha256Sum | ChecksumAlgorithm::DumpRowsXxh3Sum) | None => {
            format!("SELECT count(*)::int8, NULL::text FROM {table}")
        }
    };
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| db_err(&format!("reading {schema}.{name}"), e))?;
    let rows: i64 = row.get(0);
    Ok(TablePicture {
        schema: schema.to_owned(),
        name: name.to_owned(),
        rows: rows.max(0) as u64,
        checksum: row.get(1),
        copy_statement: None,
    })
}

/// pg_dump's session settings that shape COPY text (src/bin/pg_dump:
/// setup_connection): the same rows give the same lines.
pub const DUMP_COPY_SETTINGS: &str =
    "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3";

/// Rows and row-hash sum (`dump-rows-sha256-sum`, `dump-rows-xxh3-sum`)
/// of a table as `copy_statement` (from the dump: `COPY schema.table
/// (columns) FROM stdin;`) reads it back with `COPY … TO STDOUT`, streamed
/// (one line's hash state held). The session must have
/// [`DUMP_COPY_SETTINGS`].
pub async fn copy_digest(
    client: &Client,
    copy_statement: &str,
    hash: crate::format::pgdump::RowHash,
) -> Result<(u64, String)> {
    use futures::StreamExt;
    let stmt = copy_statement
        .trim()
        .strip_suffix("FROM stdin;")
        .filter(|s| s.starts_with("COPY "))
        .ok_or_else(|| {
            Error::format(
                "postgres picture",
                format!("unexpected COPY statement {copy_statement:?}"),
            )
        })?;
    let sql = format!("{stmt}TO STDOUT");
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(|e| db_err("reading a restored table back (COPY TO STDOUT)", e))?;
    let mut stream = std::pin::pin!(stream);
    let mut lines = crate::format::pgdump::CopyLines::new(hash);
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| db_err("reading a restored table back", e))?;
        lines.feed(&piece);
    }
    Ok((lines.rows, format!("{:032x}", lines.digest)))
}

/// Pictures of `tables`: exact counts for all, checksums for tables of at
/// most `checksum_max_rows` rows. Each table is read once where the
/// planner's row estimate is clearly on one side of the limit (the
/// checksum query also counts); only near the limit, or without an
/// estimate (never analysed, or a parent such as a hypertable whose rows
/// live elsewhere), is it counted first and then checksummed if small.
pub async fn table_pictures(
    client: &Client,
    tables: &[(String, String)],
    checksum_max_rows: u64,
    algo: ChecksumAlgorithm,
) -> Result<Vec<TablePicture>> {
    let mut out = Vec::with_capacity(tables.len());
    for (schema, name) in tables {
        let estimate = row_estimate(client, schema, name).await?;
        let max = checksum_max_rows as f64;
        let picture = match estimate {
            Some(e) if e <= max / 2.0 => table_picture(client, schema, name, Some(algo)).await?,
            Some(e) if e >= max * 2.0 => table_picture(client, schema, name, None).await?,
            _ => {
                let counted = table_picture(client, schema, name, None).await?;
                if counted.rows <= checksum_max_rows {
                    table_picture(client, schema, name, Some(algo)).await?
                } else {
                    counted
                }
            }
        };
        out.push(picture);
    }
    Ok(out)
}

/// The planner's row estimate (`pg_class.reltuples`), when it has a
/// positive one.
async fn row_estimate(client: &Client, schema: &str, name: &str) -> Result<Option<f64>> {
    let table = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let row = client
        .query_one(
            "SELECT reltuples::float8 FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .await
        .map_err(|e| db_err(&format!("reading the row estimate of {schema}.{name}"), e))?;
    let e: f64 = row.get(0);
    Ok((e > 0.0).then_some(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind as K;
    use ConnectFailure as F;

    #[test]
    fn each_failure_is_told_apart_and_only_passwords_hint_at_passwords() {
        let cases = [
            (Some("28P01"), "password authentication failed for user \"u\"", None, F::Password),
            (Some("3D000"), "database \"nosuch\" does not exist", None, F::NoDatabase),
            (Some("28000"), "Peer authentication failed for user \"u\"", None, F::Peer),
            (Some("28000"), "role \"root\" does not exist", None, F::NoRole),
            (
                Some("28000"),
                "no pg_hba.conf entry for host \"10.0.0.5\", user \"u\", database \"d\", no encryption",
                None,
                F::NoHbaEntry,
            ),
            (None, "error connecting to server: Connection refused (os error 111)", Some(K::ConnectionRefused), F::Refused),
            (None, "error connecting to server: No such file or directory (os error 2)", Some(K::NotFound), F::NoSocket),
            (None, "invalid configuration: password missing", None, F::NoPassword),
            (None, "error performing TLS handshake: invalid peer certificate", None, F::Tls),
            (None, "timeout waiting for server", None, F::Timeout),
            (None, "something else", None, F::Other),
        ];
        let dsn = Dsn::parse_with("host=db port=5433 user=u dbname=d", &|_| None).unwrap();
        for (code, message, io, want) in cases {
            let why = classify(code, message, io);
            assert_eq!(why, want, "{message}");
            let hint = connect_hint(&dsn, why);
            let about_passwords = hint.contains("PGPASSWORD");
            assert_eq!(
                about_passwords,
                matches!(why, F::Password | F::NoPassword),
                "{why:?}: {hint}"
            );
        }
        let socket = Dsn::parse_with("host=/run/pg port=5433 dbname=d", &|_| None).unwrap();
        assert!(connect_hint(&socket, F::NoSocket).contains("/run/pg/.s.PGSQL.5433"));
        assert!(connect_hint(&socket, F::Refused).contains("no server accepts"));
    }
}
