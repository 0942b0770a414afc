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

/// Connect, turning libpq-style failures into one clear line. The
/// password is never part of any message (the DSN shown is redacted).
pub async fn connect(dsn: &Dsn) -> Result<Client> {
    let config = dsn.config();
    let failed = |e: tokio_postgres::Error| {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| error_chain(&e));
        let hint = if detail.contains("TLS") || detail.contains("certificate") {
            "check sslmode and sslrootcert (the CA that issued the server's certificate; \
             verify-full also needs the certificate to name the host in the DSN)"
        } else {
            "check the DSN; the password comes from the DSN in USDCOP_DR_PG_DSN, \
             PGPASSWORD or the passfile (~/.pgpass / PGPASSFILE)"
        };
        Error::new(
            ErrorKind::Source,
            format!(
                "cannot connect to PostgreSQL at {}:{} (database {:?}, user {:?}): {detail}",
                dsn.host, dsn.port, dsn.dbname, dsn.user
            ),
        )
        .with_hint(hint)
    };
    match super::tls::client_config(&dsn.ssl)? {
        None => {
            let (client, conn) = config.connect(NoTls).await.map_err(failed)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("PostgreSQL connection ended: {e}");
                }
            });
            Ok(client)
        }
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, conn) = config.connect(tls).await.map_err(failed)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("PostgreSQL connection ended: {e}");
                }
            });
            Ok(client)
        }
    }
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
        None => format!("SELECT count(*)::int8, NULL::text FROM {table}"),
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
    })
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
