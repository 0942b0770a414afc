//! What a database looked like when it was dumped, stored in the
//! snapshot's metadata (key `postgres`), and the comparison a restore is
//! judged by. Pure data: gathered by [`super::inspect`].

use serde::{Deserialize, Serialize};

use crate::format::pgdump::RowHash;

/// The metadata key of a PostgreSQL snapshot.
pub const METADATA_KEY: &str = "postgres";

/// How the dump inside the snapshot was made (docs/POSTGRES.md says why).
pub const DUMP_FORMAT: &str = "pg_dump custom format, uncompressed (-Fc -Z0)";

/// How a table's content checksum is computed (`inspect::table_picture`):
/// an order-independent sum over rows of a hash of the row's text.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChecksumAlgorithm {
    /// Sum of the first 60 bits of `md5(row text)`.
    Md5Sum60,
    /// Sum of `hashtextextended(row text, 0)` (64 bits; about 3× cheaper
    /// for the server than md5). Its value depends on the server's byte
    /// order, so it compares databases on machines of the same endianness.
    HashtextextendedSum,
    /// Read from the dump itself as it streams (`format::pgdump`): the
    /// wrapping sum of the first 128 bits of SHA-256 of each row's COPY
    /// text line; the server reads each table once (pg_dump's read). The
    /// restore side sums the lines of `COPY … TO STDOUT` under pg_dump's
    /// session settings. Every table gets one, whatever its size.
    DumpRowsSha256Sum,
    /// As `dump-rows-sha256-sum`, each row hashed with XXH3-128 instead
    /// (`format::pgdump::RowHash`): a tenth of the client CPU per row,
    /// the same protection against restore errors.
    DumpRowsXxh3Sum,
}

impl ChecksumAlgorithm {
    /// What new backups of a UTF8 database record (others: the server's
    /// hashtextextended sum, see [`ChecksumAlgorithm::SERVER`]).
    pub const CURRENT: ChecksumAlgorithm = ChecksumAlgorithm::DumpRowsXxh3Sum;
    /// When the dump cannot be read for it (a non-UTF8 database, an
    /// archive version this program does not know).
    pub const SERVER: ChecksumAlgorithm = ChecksumAlgorithm::HashtextextendedSum;

    /// The row hash of an algorithm read from the dump stream (and read
    /// back with `COPY … TO STDOUT`); `None` for the server's sums.
    pub fn row_hash(self) -> Option<RowHash> {
        match self {
            ChecksumAlgorithm::DumpRowsSha256Sum => Some(RowHash::Sha256),
            ChecksumAlgorithm::DumpRowsXxh3Sum => Some(RowHash::Xxh3),
            ChecksumAlgorithm::Md5Sum60 | ChecksumAlgorithm::HashtextextendedSum => None,
        }
    }

    fn first() -> ChecksumAlgorithm {
        ChecksumAlgorithm::Md5Sum60
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Extension {
    pub name: String,
    pub version: String,
    pub schema: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TablePicture {
    pub schema: String,
    pub name: String,
    /// Exact `count(*)` in the dump's snapshot.
    pub rows: u64,
    /// Order-independent content checksum (see [`ChecksumAlgorithm`]),
    /// for tables of at most `checksum_max_rows` rows (the server's
    /// algorithms) or every table (`dump-rows-sha256-sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// `COPY schema.table (columns) FROM stdin;` as pg_dump wrote it: the
    /// columns the restore side reads back (`dump-rows-sha256-sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_statement: Option<String>,
}

impl TablePicture {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DbPicture {
    pub database: String,
    /// Connection string with the password removed.
    pub dsn: String,
    pub server_version: String,
    pub server_version_num: u32,
    pub pg_dump_version: String,
    pub dump_format: String,
    /// The exported snapshot pg_dump and these counts shared.
    pub exported_snapshot: String,
    pub encoding: String,
    pub database_size: u64,
    pub extensions: Vec<Extension>,
    pub tables: Vec<TablePicture>,
    pub total_rows: u64,
    pub checksum_max_rows: u64,
    /// Whether the snapshot also holds `globals.sql` (roles, tablespaces).
    #[serde(default)]
    pub globals: bool,
    /// Pictures written before this field existed used md5.
    #[serde(default = "ChecksumAlgorithm::first")]
    pub checksum_algorithm: ChecksumAlgorithm,
}

impl DbPicture {
    pub fn extension(&self, name: &str) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.name == name)
    }

    pub fn timescaledb(&self) -> Option<&Extension> {
        self.extension("timescaledb")
    }
}

/// One way a restored database differs from its snapshot's picture.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub table: String,
    pub problem: String,
}

/// Compare a restored database's tables with the snapshot's picture:
/// every table present with the same row count, and the same checksum
/// where one was recorded. Tables that exist only in the target are not
/// differences (a `--clean` restore may leave unrelated tables).
pub fn compare(expected: &[TablePicture], actual: &[TablePicture]) -> Vec<Difference> {
    let mut out = vec![];
    for e in expected {
        let name = e.qualified();
        match actual
            .iter()
            .find(|a| a.schema == e.schema && a.name == e.name)
        {
            None => out.push(Difference {
                table: name,
                problem: "missing after restore".into(),
            }),
            Some(a) if a.rows != e.rows => out.push(Difference {
                table: name,
                problem: format!("{} rows restored, {} in the snapshot", a.rows, e.rows),
            }),
            Some(a) => {
                if let (Some(want), Some(got)) = (&e.checksum, &a.checksum) {
                    if want != got {
                        out.push(Difference {
                            table: name,
                            problem: format!(
                                "content checksum {got} differs from the snapshot's {want}"
                            ),
                        });
                    }
                } else if e.checksum.is_some() {
                    out.push(Difference {
                        table: name,
                        problem: "content checksum could not be computed after restore".into(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, rows: u64, sum: Option<&str>) -> TablePicture {
        TablePicture {
            schema: "public".into(),
            name: name.into(),
            rows,
            checksum: sum.map(str::to_owned),
            copy_statement: None,
        }
    }

    #[test]
    fn compare_names_each_difference() {
        let want = vec![t("a", 10, Some("x")), t("b", 5, None), t("c", 1, Some("y"))];
        assert!(compare(&want, &want).is_empty());
        let got = vec![t("a", 10, Some("z")), t("b", 4, None), t("extra", 1, None)];
        let d = compare(&want, &got);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].table == "public.a" && d[0].problem.contains("checksum"));
        assert!(d[1].table == "public.b" && d[1].problem.contains("4 rows"));
        assert!(d[2].table == "public.c" && d[2].problem.contains("missing"));
    }

    #[test]
    fn checksum_algorithms_keep_their_names_and_row_hashes() {
        for (a, name, hash) in [
            (ChecksumAlgorithm::Md5Sum60, "md5-sum60", None),
            (
                ChecksumAlgorithm::HashtextextendedSum,
                "hashtextextended-sum",
                None,
            ),
            (
                ChecksumAlgorithm::DumpRowsSha256Sum,
                "dump-rows-sha256-sum",
                Some(RowHash::Sha256),
            ),
            (
                ChecksumAlgorithm::DumpRowsXxh3Sum,
                "dump-rows-xxh3-sum",
                Some(RowHash::Xxh3),
            ),
        ] {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<ChecksumAlgorithm>(&format!("\"{name}\"")).unwrap(),
                a
            );
            assert_eq!(a.row_hash(), hash);
        }
        assert_eq!(ChecksumAlgorithm::CURRENT.row_hash(), Some(RowHash::Xxh3));
    }
}
