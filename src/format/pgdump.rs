//! A streaming reader of `pg_dump -Fc -Z0` output (PostgreSQL's custom
//! archive format, uncompressed) that counts and digests every table's
//! rows as the dump goes by, so that a backup can know each table's exact
//! row count and content digest without asking the server to read the
//! tables a second time (issue 14). Pure: bytes in, per-table figures out.
//!
//! The archive (src/bin/pg_dump/pg_backup_archiver.c and
//! pg_backup_custom.c, archive versions 1.12 to 1.16):
//!
//! - header: `PGDMP`, version major/minor/revision bytes, int size, offset
//!   size, format (1 = custom); compression (an int level before 1.15, an
//!   algorithm byte since); the creation time (7 ints); the database name,
//!   the server's and pg_dump's versions (strings);
//! - the TOC: a count, then per entry: dump id, had-dumper, table oid, oid,
//!   tag, desc, section (int), defn, drop statement, COPY statement,
//!   namespace, tablespace, table access method (1.14+), relkind (int,
//!   1.16+), owner, "with oids", dependencies (strings up to a NULL), and
//!   the custom format's data offset (a flag byte and `offSize` bytes);
//! - data blocks, in TOC order: a block type byte (1 data, 3 large
//!   objects) and the dump id, then chunks (int length, bytes) up to a
//!   length of 0; large-object blocks hold (oid, chunks…, 0) per object
//!   up to an oid of 0.
//!
//! An int is a sign byte then `intSize` bytes, least significant first; a
//! string is an int length (-1: NULL) then its bytes. A TABLE DATA block
//! holds the table's rows as COPY text, one per line (a newline inside a
//! value is escaped), ended by a `\.` line.
//!
//! A row's digest is a 128-bit hash of its line (without the newline),
//! [`RowHash::Xxh3`] for new backups, [`RowHash::Sha256`] (its first 128
//! bits) in older snapshots; a table's is the wrapping sum of its rows'
//! digests, so it does not depend on row order (`COPY … TO STDOUT` of the
//! restored table gives the same figure under pg_dump's session settings).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::error::{Error, Result};

const MAGIC: &[u8; 5] = b"PGDMP";
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// Oldest and newest archive versions read (PostgreSQL 10 to 17).
const MIN_VERSION: (u8, u8) = (1, 12);
const MAX_VERSION: (u8, u8) = (1, 16);
/// A header and TOC larger than this are refused (a schema of hundreds of
/// thousands of objects stays far below it).
pub const MAX_TOC_BYTES: usize = 256 << 20;

/// One table's rows as the dump holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub dump_id: i64,
    pub schema: String,
    pub name: String,
    /// `COPY schema.name (columns) FROM stdin;` as pg_dump wrote it.
    pub copy_statement: String,
    pub rows: u64,
    /// Wrapping sum of each row line's [`row_digest`].
    pub digest: u128,
}

impl TableDigest {
    /// The digest as text (hex, 32 digits).
    pub fn digest_hex(&self) -> String {
        format!("{:032x}", self.digest)
    }
}

/// What the whole dump said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpSummary {
    pub version: (u8, u8, u8),
    pub database: String,
    pub server_version: String,
    pub pg_dump_version: String,
    /// Every TABLE DATA entry, in the dump's order.
    pub tables: Vec<TableDigest>,
    /// Large objects seen.
    pub large_objects: u64,
}

/// How one row line is hashed into its table's sum.
///
/// The sum guards against restore errors (rows lost, duplicated, changed
/// by a type or encoding conversion), not against an adversary: the dump
/// it is compared with is authenticated by the snapshot, and a wrapping
/// sum of per-row hashes is not collision resistant whatever the hash
/// (docs/POSTGRES.md). XXH3-128 does that job at a tenth of SHA-256's
/// cost on short rows, the largest client-side item of a live backup
/// after compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowHash {
    /// First 128 bits of SHA-256, big-endian (`dump-rows-sha256-sum`).
    Sha256,
    /// XXH3-128 with seed 0 (`dump-rows-xxh3-sum`).
    Xxh3,
}

/// The digest of one row line (no newline), as added to a table's sum.
pub fn row_digest(hash: RowHash, line: &[u8]) -> u128 {
    match hash {
        RowHash::Sha256 => {
            let h = Sha256::digest(line);
            u128::from_be_bytes(h[..16].try_into().expect("16 bytes"))
        }
        RowHash::Xxh3 => xxh3_128(line),
    }
}

/// The hash state of a line that spans pieces.
enum LineState {
    Sha256(Sha256),
    Xxh3(Box<Xxh3>),
}

impl std::fmt::Debug for LineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LineState::Sha256(_) => "LineState::Sha256",
            LineState::Xxh3(_) => "LineState::Xxh3",
        })
    }
}

impl LineState {
    fn new(hash: RowHash) -> LineState {
        match hash {
            RowHash::Sha256 => LineState::Sha256(Sha256::new()),
            RowHash::Xxh3 => LineState::Xxh3(Box::new(Xxh3::new())),
        }
    }

    fn update(&mut self, part: &[u8]) {
        match self {
            LineState::Sha256(h) => h.update(part),
            LineState::Xxh3(h) => h.update(part),
        }
    }

    fn finish(self) -> u128 {
        match self {
            LineState::Sha256(h) => {
                let h = h.finalize();
                u128::from_be_bytes(h[..16].try_into().expect("16 bytes"))
            }
            LineState::Xxh3(h) => h.digest128(),
        }
    }
}

/// Counts and digests COPY text lines, one line at a time, never holding
/// more than the current line's hash state. A line that lies whole in one
/// piece is hashed in one call; only a line that spans pieces gets a
/// streaming state.
#[derive(Debug)]
pub struct CopyLines {
    hash: RowHash,
    /// The current line's state, once a first part of it was seen.
    partial: Option<LineState>,
    /// Length of the current line so far, and its first two bytes (only
    /// whether it is `\.` matters).
    line_len: u64,
    first: [u8; 2],
    pub rows: u64,
    pub digest: u128,
    /// The `\.` line was seen: what follows is not rows.
    pub ended: bool,
}

impl CopyLines {
    pub fn new(hash: RowHash) -> CopyLines {
        CopyLines {
            hash,
            partial: None,
            line_len: 0,
            first: [0; 2],
            rows: 0,
            digest: 0,
            ended: false,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.ended {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    self.end_line(&data[..i]);
                    data = &data[i + 1..];
                }
                None => {
                    self.add(data);
                    data = &[];
                }
            }
        }
    }

    /// A part of the current line that does not end it.
    fn add(&mut self, part: &[u8]) {
        self.add_first(part);
        let hash = self.hash;
        self.partial
            .get_or_insert_with(|| LineState::new(hash))
            .update(part);
        self.line_len += part.len() as u64;
    }

    /// The current line's last part (no newline).
    fn end_line(&mut self, tail: &[u8]) {
        let h = match self.partial.take() {
            None => {
                if tail == b"\\." {
                    self.ended = true;
                    return;
                }
                row_digest(self.hash, tail)
            }
            Some(mut state) => {
                self.add_first(tail);
                state.update(tail);
                let len = self.line_len + tail.len() as u64;
                self.line_len = 0;
                let first = std::mem::take(&mut self.first);
                if len == 2 && first == *b"\\." {
                    self.ended = true;
                    return;
                }
                state.finish()
            }
        };
        self.rows += 1;
        self.digest = self.digest.wrapping_add(h);
    }

    fn add_first(&mut self, part: &[u8]) {
        for (i, b) in part.iter().take(2).enumerate() {
            let at = self.line_len as usize + i;
            if at < 2 {
                self.first[at] = *b;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct TocEntry {
    desc: String,
    namespace: String,
    tag: String,
    copy_statement: String,
    /// Where the entry's data offset field (a flag byte, then the offset)
    /// lies in the archive, and its flag.
    offset_field: u64,
    offset_flag: u8,
}

/// A TOC entry's data offset flag: pg_dump could not seek back to record
/// where the data lies (its output was a pipe).
const K_OFFS_NOT_SET: u8 = 1;
/// The data lies at the recorded offset.
const K_OFFS_POS_SET: u8 = 2;

#[derive(Debug)]
enum State {
    /// Header and TOC, gathered whole (they are small) and parsed.
    Head,
    BlockType,
    BlockId {
        kind: u8,
        /// Where the block's type byte lies in the archive.
        at: u64,
    },
    /// A data block's next chunk length.
    ChunkLen {
        blob: bool,
    },
    Chunk {
        left: u64,
        blob: bool,
    },
    /// A large-object block's next object oid (0: the block ends).
    BlobOid,
}

/// Feed it the dump as it streams ([`DumpScanner::feed`]), then
/// [`DumpScanner::finish`].
pub struct DumpScanner {
    state: State,
    /// Bytes not yet consumed: the header and TOC, or a partial int.
    pending: Vec<u8>,
    /// `pending`'s length at the last failed attempt to parse the head.
    tried_at: usize,
    int_size: usize,
    head: Option<DumpSummary>,
    toc: HashMap<i64, TocEntry>,
    current: Option<(usize, CopyLines)>,
    tables: Vec<TableDigest>,
    large_objects: u64,
    hash: RowHash,
    /// Rows are counted and digested; without, only the blocks are found.
    digest_rows: bool,
    /// Archive bytes fed before the current `feed` call's data.
    fed: u64,
    /// Where each entry's data block begins (its block type byte).
    data_at: Vec<(i64, u64)>,
    off_size: usize,
}

fn bad(detail: impl std::fmt::Display) -> Error {
    Error::format("pg_dump custom archive", detail)
}

/// A cursor over a byte slice; `None` means "not enough bytes yet".
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    int_size: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn int(&mut self) -> Option<Result<i64>> {
        let sign = self.byte()?;
        let raw = self.take(self.int_size)?;
        Some(decode_int(sign, raw))
    }
    fn string(&mut self) -> Option<Result<Option<String>>> {
        let len = match self.int()? {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if len < 0 {
            return Some(Ok(None));
        }
        if len as usize > MAX_TOC_BYTES {
            return Some(Err(bad(format!("a string of {len} bytes"))));
        }
        let s = self.take(len as usize)?;
        Some(Ok(Some(String::from_utf8_lossy(s).into_owned())))
    }
}

fn decode_int(sign: u8, raw: &[u8]) -> Result<i64> {
    if raw.len() > 8 {
        return Err(bad(format!("int size {}", raw.len())));
    }
    let mut v: u64 = 0;
    for (i, b) in raw.iter().enumerate() {
        v |= (*b as u64) << (8 * i);
    }
    let v = i64::try_from(v).map_err(|_| bad("an int out of range"))?;
    Ok(if sign != 0 { -v } else { v })
}

/// `?` for the parse of the head: not enough bytes yet → `Ok(None)`.
macro_rules! need {
    ($e:expr) => {
        match $e {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

impl DumpScanner {
    /// A scanner that digests rows with `hash`.
    pub fn new(hash: RowHash) -> DumpScanner {
        DumpScanner {
            hash,
            state: State::Head,
            pending: Vec::new(),
            tried_at: 0,
            int_size: 4,
            head: None,
            toc: HashMap::new(),
            current: None,
            tables: Vec::new(),
            large_objects: 0,
            digest_rows: true,
            fed: 0,
            data_at: Vec::new(),
            off_size: 8,
        }
    }

    /// A scanner that only finds where each entry's data lies (for
    /// [`DumpScanner::into_offset_patches`]), digesting no rows.
    pub fn locator() -> DumpScanner {
        DumpScanner {
            digest_rows: false,
            ..DumpScanner::new(RowHash::Xxh3)
        }
    }

    /// For an archive written where pg_dump could not seek (a pipe), whose
    /// TOC therefore does not say where each entry's data lies: the bytes
    /// to write at which archive positions so that it does, as pg_dump
    /// itself writes them when it can seek. Only entries whose offset is
    /// "not set" and whose data block was seen are patched; the fields are
    /// fixed-width, so the archive keeps its length. Call once the whole
    /// archive was fed; an archive cut short is an error. `pg_restore -j`
    /// then seeks straight to each table's data instead of skipping
    /// through every block before it (at `-Z0` a block per row).
    pub fn into_offset_patches(mut self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.complete()?;
        let mut out = Vec::new();
        for (id, at) in &self.data_at {
            let Some(e) = self.toc.get(id) else { continue };
            if e.offset_flag != K_OFFS_NOT_SET {
                continue;
            }
            let bytes = at.to_le_bytes();
            // An offset too large for the archive's offset size (never
            // with pg_dump's 8 bytes) stays unset: pg_restore finds it.
            if bytes[self.off_size.min(8)..].iter().any(|b| *b != 0) {
                continue;
            }
            let mut field = vec![K_OFFS_POS_SET];
            field.extend_from_slice(&bytes[..self.off_size.min(8)]);
            out.push((e.offset_field, field));
        }
        Ok(out)
    }

    /// The TOC's TABLE DATA entries (dump id, schema, table), once the
    /// header and TOC have been fed; `None` before.
    pub fn table_data_entries(&self) -> Option<Vec<(i64, String, String)>> {
        if matches!(self.state, State::Head) {
            return None;
        }
        let mut v: Vec<_> = self
            .toc
            .iter()
            .filter(|(_, e)| e.desc == "TABLE DATA")
            .map(|(id, e)| (*id, e.namespace.clone(), e.tag.clone()))
            .collect();
        v.sort();
        Some(v)
    }

    /// Parse the header and TOC from `pending`; `Ok(None)` when more
    /// bytes are needed; else how many bytes they took.
    fn parse_head(&mut self) -> Result<Option<usize>> {
        let b = &self.pending;
        let mut c = Cursor {
            b,
            at: 0,
            int_size: 4,
        };
        let magic = need!(c.take(5));
        if magic != MAGIC {
            return Err(bad("no PGDMP magic: not a custom-format archive"));
        }
        let (maj, min, rev) = (need!(c.byte()), need!(c.byte()), need!(c.byte()));
        if (maj, min) < MIN_VERSION || (maj, min) > MAX_VERSION {
            return Err(bad(format!(
                "archive version {maj}.{min}.{rev} (read: {}.{} to {}.{})",
                MIN_VERSION.0, MIN_VERSION.1, MAX_VERSION.0, MAX_VERSION.1
            )));
        }
        let int_size = need!(c.byte()) as usize;
        let off_size = need!(c.byte()) as usize;
        if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
            return Err(bad(format!("int size {int_size}, offset size {off_size}")));
        }
        c.int_size = int_size;
        let format = need!(c.byte());
        if format != 1 {
            return Err(bad(format!("archive format {format}, not custom (1)")));
        }
        let compressed = if (maj, min) >= (1, 15) {
            need!(c.byte()) != 0
        } else {
            need!(c.int())? != 0
        };
        if compressed {
            return Err(bad(
                "the archive is compressed: its rows can only be read with -Z0",
            ));
        }
        for _ in 0..7 {
            need!(c.int())?;
        }
        let database = need!(c.string())?.unwrap_or_default();
        let server_version = need!(c.string())?.unwrap_or_default();
        let pg_dump_version = need!(c.string())?.unwrap_or_default();
        let count = need!(c.int())?;
        if count < 0 {
            return Err(bad(format!("{count} TOC entries")));
        }
        let mut toc = HashMap::new();
        for _ in 0..count {
            let id = need!(c.int())?;
            need!(c.int())?; // had dumper
            need!(c.string())?; // table oid
            need!(c.string())?; // oid
            let tag = need!(c.string())?.unwrap_or_default();
            let desc = need!(c.string())?.unwrap_or_default();
            need!(c.int())?; // section
            need!(c.string())?; // defn
            need!(c.string())?; // drop statement
            let copy_statement = need!(c.string())?.unwrap_or_default();
            let namespace = need!(c.string())?.unwrap_or_default();
            need!(c.string())?; // tablespace
            if (maj, min) >= (1, 14) {
                need!(c.string())?; // table access method
            }
            if (maj, min) >= (1, 16) {
                need!(c.int())?; // relkind
            }
            need!(c.string())?; // owner
            need!(c.string())?; // with oids
            while need!(c.string())?.is_some() {}
            let offset_field = c.at as u64;
            let offset_flag = need!(c.byte());
            need!(c.take(off_size));
            toc.insert(
                id,
                TocEntry {
                    desc,
                    namespace,
                    tag,
                    copy_statement,
                    offset_field,
                    offset_flag,
                },
            );
        }
        let used = c.at;
        self.int_size = int_size;
        self.off_size = off_size;
        self.toc = toc;
        self.head = Some(DumpSummary {
            version: (maj, min, rev),
            database,
            server_version,
            pg_dump_version,
            tables: vec![],
            large_objects: 0,
        });
        Ok(Some(used))
    }

    /// The next int from `pending` + `data` (`None`: not enough yet; the
    /// bytes are kept in `pending`).
    fn take_int(&mut self, data: &mut &[u8]) -> Result<Option<i64>> {
        let want = 1 + self.int_size;
        // pg_dump writes every row of a table's data as a chunk of its
        // own, so this runs once per row: the whole int is mostly there.
        if self.pending.is_empty() && data.len() >= want {
            let v = decode_int(data[0], &data[1..want])?;
            *data = &data[want..];
            return Ok(Some(v));
        }
        let take = (want - self.pending.len()).min(data.len());
        self.pending.extend_from_slice(&data[..take]);
        *data = &data[take..];
        if self.pending.len() < want {
            return Ok(None);
        }
        let v = decode_int(self.pending[0], &self.pending[1..want])?;
        self.pending.clear();
        Ok(Some(v))
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        let end = self.fed + data.len() as u64;
        let r = self.feed_at(data);
        self.fed = end;
        r
    }

    fn feed_at(&mut self, mut data: &[u8]) -> Result<()> {
        let (base, total) = (self.fed, data.len());
        while !data.is_empty() {
            match self.state {
                State::Head => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                    // Parse again only once the buffer has doubled: a big
                    // TOC arriving in small pieces costs linear time.
                    if self.pending.len() < self.tried_at * 2 {
                        continue;
                    }
                    match self.parse_head()? {
                        None => {
                            self.tried_at = self.pending.len().max(4096);
                            if self.pending.len() > MAX_TOC_BYTES {
                                return Err(bad(format!(
                                    "header and TOC larger than {MAX_TOC_BYTES} bytes"
                                )));
                            }
                        }
                        Some(used) => self.after_head(used)?,
                    }
                }
                State::BlockType => {
                    let at = base + (total - data.len()) as u64;
                    let kind = data[0];
                    data = &data[1..];
                    if kind != BLK_DATA && kind != BLK_BLOBS {
                        return Err(bad(format!("block type {kind}")));
                    }
                    self.state = State::BlockId { kind, at };
                }
                State::BlockId { kind, at } => {
                    let Some(id) = self.take_int(&mut data)? else {
                        continue;
                    };
                    self.data_at.push((id, at));
                    if kind == BLK_BLOBS {
                        self.state = State::BlobOid;
                        continue;
                    }
                    let entry = self
                        .toc
                        .get(&id)
                        .ok_or_else(|| bad(format!("a data block for unknown entry {id}")))?;
                    if entry.desc == "TABLE DATA" && self.digest_rows {
                        self.tables.push(TableDigest {
                            dump_id: id,
                            schema: entry.namespace.clone(),
                            name: entry.tag.clone(),
                            copy_statement: entry.copy_statement.clone(),
                            rows: 0,
                            digest: 0,
                        });
                        self.current = Some((self.tables.len() - 1, CopyLines::new(self.hash)));
                    } else {
                        self.current = None;
                    }
                    self.state = State::ChunkLen { blob: false };
                }
                State::ChunkLen { blob } => {
                    let Some(len) = self.take_int(&mut data)? else {
                        continue;
                    };
                    if len < 0 {
                        return Err(bad(format!("a chunk of {len} bytes")));
                    }
                    if len > 0 {
                        self.state = State::Chunk {
                            left: len as u64,
                            blob,
                        };
                    } else if blob {
                        self.large_objects += 1;
                        self.state = State::BlobOid;
                    } else {
                        if let Some((i, lines)) = self.current.take() {
                            if !lines.ended {
                                return Err(bad(format!(
                                    "the data of {}.{} ends without its \\. line",
                                    self.tables[i].schema, self.tables[i].name
                                )));
                            }
                            self.tables[i].rows = lines.rows;
                            self.tables[i].digest = lines.digest;
                        }
                        self.state = State::BlockType;
                    }
                }
                State::Chunk { left, blob } => {
                    let n = (left as usize).min(data.len());
                    if let Some((_, lines)) = self.current.as_mut().filter(|_| !blob) {
                        lines.feed(&data[..n]);
                    }
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkLen { blob }
                    } else {
                        State::Chunk { left, blob }
                    };
                }
                State::BlobOid => {
                    let Some(oid) = self.take_int(&mut data)? else {
                        continue;
                    };
                    self.state = if oid == 0 {
                        State::BlockType
                    } else {
                        State::ChunkLen { blob: true }
                    };
                }
            }
        }
        Ok(())
    }

    /// The archive was fed to its end: the head parsed (a small archive's
    /// only now) and no block left open.
    fn complete(&mut self) -> Result<()> {
        if matches!(self.state, State::Head) {
            match self.parse_head()? {
                Some(used) => self.after_head(used)?,
                None => return Err(bad("the archive ends inside its header or TOC")),
            }
        }
        if !matches!(self.state, State::BlockType) || !self.pending.is_empty() {
            return Err(bad("the archive ends inside a data block"));
        }
        Ok(())
    }

    /// The head took the first `used` bytes of `pending`: read on from the
    /// rest.
    fn after_head(&mut self, used: usize) -> Result<()> {
        let rest = self.pending.split_off(used);
        self.pending.clear();
        self.state = State::BlockType;
        self.fed = used as u64;
        self.feed_at(&rest)
    }

    /// The figures, once the whole dump was fed; an archive cut short is
    /// an error.
    pub fn finish(mut self) -> Result<DumpSummary> {
        self.complete()?;
        let mut s = self.head.take().expect("parsed");
        s.tables = self.tables;
        s.large_objects = self.large_objects;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i64) -> Vec<u8> {
        let mut o = vec![u8::from(v < 0)];
        o.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        o
    }
    fn string(s: Option<&str>) -> Vec<u8> {
        match s {
            None => int(-1),
            Some(s) => [int(s.len() as i64), s.as_bytes().to_vec()].concat(),
        }
    }

    /// A small archive as pg_dump 15 writes it (version 1.14).
    fn archive(tables: &[(&str, &[&str])]) -> Vec<u8> {
        let mut o = b"PGDMP".to_vec();
        o.extend_from_slice(&[1, 14, 0, 4, 8, 1]);
        o.extend(int(0)); // compression
        for _ in 0..7 {
            o.extend(int(1));
        }
        for s in ["trading", "15.4", "15.4"] {
            o.extend(string(Some(s)));
        }
        o.extend(int(tables.len() as i64 + 1));
        let entry = |o: &mut Vec<u8>, id: i64, tag: &str, desc: &str, copy: &str| {
            o.extend(int(id));
            o.extend(int(1));
            o.extend(string(Some("0")));
            o.extend(string(Some("0")));
            o.extend(string(Some(tag)));
            o.extend(string(Some(desc)));
            o.extend(int(2));
            o.extend(string(Some("")));
            o.extend(string(Some("")));
            o.extend(string(Some(copy)));
            o.extend(string(Some("public")));
            o.extend(string(Some("")));
            o.extend(string(Some("heap")));
            o.extend(string(Some("postgres")));
            o.extend(string(Some("false")));
            o.extend(string(Some("3")));
            o.extend(string(None));
            o.push(1);
            o.extend_from_slice(&[0; 8]);
        };
        entry(&mut o, 1, "bars", "TABLE", "");
        for (i, (name, _)) in tables.iter().enumerate() {
            entry(
                &mut o,
                10 + i as i64,
                name,
                "TABLE DATA",
                &format!("COPY public.{name} (a, b) FROM stdin;\n"),
            );
        }
        for (i, (_, rows)) in tables.iter().enumerate() {
            o.push(BLK_DATA);
            o.extend(int(10 + i as i64));
            let text: String =
                rows.iter().map(|r| format!("{r}\n")).collect::<String>() + "\\.\n\n";
            // in two chunks, split mid-line
            let (a, b) = text.as_bytes().split_at(text.len() / 2);
            for part in [a, b] {
                o.extend(int(part.len() as i64));
                o.extend_from_slice(part);
            }
            o.extend(int(0));
        }
        o
    }

    fn scan(bytes: &[u8], piece: usize) -> Result<DumpSummary> {
        scan_with(RowHash::Xxh3, bytes, piece)
    }

    fn scan_with(hash: RowHash, bytes: &[u8], piece: usize) -> Result<DumpSummary> {
        let mut s = DumpScanner::new(hash);
        for c in bytes.chunks(piece) {
            s.feed(c)?;
        }
        s.finish()
    }

    #[test]
    fn rows_are_counted_and_digested_whatever_the_pieces() {
        for hash in [RowHash::Xxh3, RowHash::Sha256] {
            let a = archive(&[
                ("bars", &["1\tx", "2\ty\\nz", "3\t\\N"]),
                ("empty", &[]),
                ("one", &["\\.x"]),
            ]);
            let want = scan_with(hash, &a, a.len()).unwrap();
            assert_eq!(want.database, "trading");
            assert_eq!(want.tables.len(), 3);
            assert_eq!(want.tables[0].rows, 3);
            assert_eq!(want.tables[1].rows, 0);
            assert_eq!(want.tables[1].digest, 0);
            // a row that merely starts with \. is a row
            assert_eq!(want.tables[2].rows, 1);
            let sum = ["1\tx", "2\ty\\nz", "3\t\\N"]
                .iter()
                .fold(0u128, |s, r| s.wrapping_add(row_digest(hash, r.as_bytes())));
            assert_eq!(want.tables[0].digest, sum);
            assert!(want.tables[0]
                .copy_statement
                .starts_with("COPY public.bars (a, b)"));
            for piece in [1, 2, 3, 7, 64, 1000] {
                assert_eq!(
                    scan_with(hash, &a, piece).unwrap(),
                    want,
                    "pieces of {piece}"
                );
            }
            // the order of rows does not matter
            let b = archive(&[
                ("bars", &["3\t\\N", "1\tx", "2\ty\\nz"]),
                ("empty", &[]),
                ("one", &["\\.x"]),
            ]);
            assert_eq!(scan_with(hash, &b, 5).unwrap().tables[0].digest, sum);
        }
    }

    #[test]
    fn offset_patches_point_each_entry_at_its_data_block() {
        let bytes = archive(&[("bars", &["1\t2", "3\t4"]), ("ticks", &["5\t6"])]);
        for piece in [1, 3, 7, 64, bytes.len()] {
            let mut loc = DumpScanner::locator();
            for p in bytes.chunks(piece) {
                loc.feed(p).unwrap();
            }
            let patches = loc.into_offset_patches().unwrap();
            assert_eq!(patches.len(), 2, "piece {piece}");
            let mut patched = bytes.clone();
            for (at, field) in &patches {
                let at = *at as usize;
                // The field was "not set" and keeps its length.
                assert_eq!(patched[at], K_OFFS_NOT_SET);
                assert_eq!(field.len(), 9);
                patched[at..at + field.len()].copy_from_slice(field);
            }
            for (i, (at, field)) in patches.iter().enumerate() {
                assert_eq!(field[0], K_OFFS_POS_SET);
                let data = u64::from_le_bytes(field[1..9].try_into().unwrap()) as usize;
                assert!(*at < data as u64);
                assert_eq!(patched[data], BLK_DATA, "piece {piece}");
                assert_eq!(patched[data + 1..data + 6], int(10 + i as i64)[..]);
            }
            // The patched archive reads the same, and needs no patch.
            assert_eq!(
                format!("{:?}", scan(&patched, 5).unwrap().tables),
                format!("{:?}", scan(&bytes, 5).unwrap().tables)
            );
            let mut again = DumpScanner::locator();
            again.feed(&patched).unwrap();
            assert!(again.into_offset_patches().unwrap().is_empty());
        }
    }

    #[test]
    fn the_tocs_table_data_entries_are_known_once_the_head_is_read() {
        let a = archive(&[("bars", &["1\tx"]), ("empty", &[])]);
        let mut s = DumpScanner::new(RowHash::Xxh3);
        assert_eq!(s.table_data_entries(), None);
        s.feed(&a).unwrap();
        let e = s.table_data_entries().unwrap();
        let names: Vec<_> = e.iter().map(|(_, ns, t)| format!("{ns}.{t}")).collect();
        assert_eq!(names, ["public.bars", "public.empty"]);
        // the ids are the data blocks' ids
        let summary = scan(&a, 7).unwrap();
        let ids: Vec<_> = summary.tables.iter().map(|t| t.dump_id).collect();
        assert_eq!(e.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), ids);
    }

    #[test]
    fn the_two_row_hashes_differ_and_are_the_documented_functions() {
        let line = b"2026-12-03 14:55:00-05\t4012.5\t4013.25";
        let sha = Sha256::digest(line);
        assert_eq!(
            row_digest(RowHash::Sha256, line),
            u128::from_be_bytes(sha[..16].try_into().unwrap())
        );
        assert_eq!(row_digest(RowHash::Xxh3, line), xxh3_128(line));
        assert_ne!(
            row_digest(RowHash::Sha256, line),
            row_digest(RowHash::Xxh3, line)
        );
    }

    use proptest::prelude::*;

    proptest! {
        /// Lines hashed in one call or streamed across any split give the
        /// same count and sum, and `\.` ends the rows wherever it is cut.
        #[test]
        fn one_call_and_streamed_lines_agree(
            lines in proptest::collection::vec(
                proptest::collection::vec(any::<u8>()
                    .prop_filter("no newline", |b| *b != b'\n'), 0..300), 0..40),
            cuts in proptest::collection::vec(1usize..97, 1..8),
            sha in any::<bool>(),
        ) {
            let hash = if sha { RowHash::Sha256 } else { RowHash::Xxh3 };
            let rows: Vec<&Vec<u8>> = lines.iter().take_while(|l| l.as_slice() != b"\\.").collect();
            let mut text = Vec::new();
            for l in &lines {
                text.extend_from_slice(l);
                text.push(b'\n');
            }
            text.extend_from_slice(b"\\.\nafter\n");
            let mut c = CopyLines::new(hash);
            let mut rest = text.as_slice();
            let mut k = 0;
            while !rest.is_empty() {
                let n = cuts[k % cuts.len()].min(rest.len());
                c.feed(&rest[..n]);
                rest = &rest[n..];
                k += 1;
            }
            let want = rows.iter().fold(0u128, |s, r| s.wrapping_add(row_digest(hash, r)));
            prop_assert!(c.ended);
            prop_assert_eq!(c.rows, rows.len() as u64);
            prop_assert_eq!(c.digest, want);
        }
    }

    #[test]
    fn damage_is_an_error_never_a_wrong_figure() {
        let a = archive(&[("bars", &["1\tx", "2\ty"])]);
        // cut anywhere: an error
        for cut in [3, 20, a.len() / 2, a.len() - 1] {
            assert!(scan(&a[..cut], 7).is_err(), "cut at {cut}");
        }
        assert!(scan(b"PGDMX", 5).is_err());
        let mut compressed = a.clone();
        compressed[12] = 1; // the compression level's low byte
        assert!(scan(&compressed, 64).is_err());
        let mut newer = a.clone();
        newer[6] = 99;
        assert!(scan(&newer, 64).is_err());
    }
}
