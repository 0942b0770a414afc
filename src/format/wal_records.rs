//! Reading the records of one WAL segment (docs/FORMAT.md, "WAL archive",
//! "Reading a segment"). Pure: bytes in, a [`SegmentScan`] out.
//!
//! What it is for: the transaction end times a segment holds (the times a
//! `recovery_target_time` can stop at), its restore points, and where its
//! valid WAL ends. It checks what PostgreSQL's own reader checks (every page
//! header, every record's CRC-32C) and stops where that reader would; it
//! never panics and allocates nothing that grows with the input.
//!
//! The layout (PostgreSQL's `access/xlog_internal.h`, `access/xlogrecord.h`):
//! 8 KiB pages, each opening with a 24-byte `XLogPageHeaderData` (the first
//! page of a segment: the 40-byte `XLogLongPageHeaderData`); records start
//! on 8-byte (MAXALIGN) boundaries and run over page boundaries, their
//! 24-byte `XLogRecord` header included; a page whose first bytes continue
//! the record begun on an earlier page says so (`XLP_FIRST_IS_CONTRECORD`,
//! and `xlp_rem_len`, the bytes of that record still to come).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::wal::{valid_segment_size, Lsn};
use crate::error::{Error, Result};

/// `XLOG_BLCKSZ`: the page size every PostgreSQL build we meet uses.
pub const PAGE: usize = 8192;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
/// `SizeOfXLogRecord`.
const RECORD_HEADER: usize = 24;
/// Offset of `xl_crc` in the record header: the CRC covers the bytes before it.
const CRC_OFFSET: usize = 20;

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
/// PostgreSQL 15: the record continuing onto this page was abandoned
/// (crash recovery ended inside it); a new record follows the header.
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every `xlp_info` flag PostgreSQL defines (`XLP_ALL_FLAGS`).
const XLP_ALL_FLAGS: u16 = 0x000F;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
const XLOG_XACT_OPMASK: u8 = 0x70;

const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

/// Bytes of a record's body kept to read its first fields: the header
/// section of a record without block references is at most 12 bytes, and
/// the times read are the first 8 bytes of the main data.
const PREFIX: usize = 64;

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
const PG_EPOCH_UNIX_S: i64 = 946_684_800;

/// A transaction end, as `recovery_target_time` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XactKind {
    Commit,
    CommitPrepared,
    Abort,
    AbortPrepared,
}

impl XactKind {
    fn of(info: u8) -> Option<XactKind> {
        match info & XLOG_XACT_OPMASK {
            0x00 => Some(XactKind::Commit),
            0x30 => Some(XactKind::CommitPrepared),
            0x20 => Some(XactKind::Abort),
            0x40 => Some(XactKind::AbortPrepared),
            _ => None,
        }
    }
    pub fn is_commit(self) -> bool {
        matches!(self, XactKind::Commit | XactKind::CommitPrepared)
    }
}

/// One timed record: a transaction end or a restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimedRecord {
    /// Where the record starts.
    pub lsn: Lsn,
    pub xid: u32,
    /// `xact_time` / `rp_time`, microseconds since 2000-01-01 UTC.
    pub pg_time_us: i64,
    /// The same time, when chrono can hold it.
    pub time: Option<DateTime<Utc>>,
}

/// Why the scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The valid WAL ran up to the segment's end (a record may continue
    /// into the next segment: it is not counted here).
    SegmentEnd,
    /// An `XLOG_SWITCH` record: the rest of the segment is unused.
    Switch,
    /// A record of length zero: the end of the WAL written so far.
    Zero,
    /// A record header or CRC that does not check.
    BadRecord,
    /// A page header that does not check.
    BadPage,
}

impl Stop {
    /// Did the scan stop where PostgreSQL's reader stops in a sound,
    /// complete segment?
    pub fn is_clean(self) -> bool {
        matches!(self, Stop::SegmentEnd | Stop::Switch)
    }
}

/// What one segment holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentScan {
    /// The segment's first location (its first page's `xlp_pageaddr`).
    pub start_lsn: Lsn,
    pub segment_size: u32,
    pub system_id: u64,
    /// `xlp_tli` of the first and of the last page read.
    pub first_tli: u32,
    pub last_tli: u32,
    /// Complete records whose CRC checked (the continuation of a record
    /// begun in the previous segment is not one).
    pub records: u64,
    /// The end of the last valid record (`None`: none).
    pub end_lsn: Option<Lsn>,
    pub commits: u64,
    pub aborts: u64,
    pub first_xact: Option<TimedRecord>,
    pub last_xact: Option<TimedRecord>,
    /// The kind of [`Self::last_xact`].
    pub last_xact_kind: Option<XactKind>,
    /// The last commit (a time a restore can reach and keep data to).
    pub last_commit: Option<TimedRecord>,
    pub restore_points: u64,
    pub last_restore_point: Option<TimedRecord>,
    pub stop: Stop,
    /// Where it stopped (segment start + offset) and why, for people.
    pub stop_lsn: Lsn,
    pub stop_detail: String,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn maxalign(v: usize) -> usize {
    (v + 7) & !7
}

/// A PostgreSQL timestamp (µs since 2000-01-01 UTC) as a UTC time.
pub fn pg_time(us: i64) -> Option<DateTime<Utc>> {
    let secs = us.div_euclid(1_000_000).checked_add(PG_EPOCH_UNIX_S)?;
    let nanos = (us.rem_euclid(1_000_000) * 1000) as u32;
    DateTime::from_timestamp(secs, nanos)
}

/// The facts of the first page's long header.
struct First {
    magic: u16,
    start: u64,
    seg_size: u32,
    system_id: u64,
    tli: u32,
}

fn first_page(bytes: &[u8]) -> Result<First> {
    let bad = |why: String| {
        Error::integrity(format!("not a WAL segment: {why}"))
            .with_hint("the file is damaged, or it is not a segment PostgreSQL wrote")
    };
    if bytes.len() < LONG_HEADER {
        return Err(bad(format!(
            "{} bytes, shorter than a long page header",
            bytes.len()
        )));
    }
    let info = u16_at(bytes, 2);
    if info & XLP_LONG_HEADER == 0 || info & !XLP_ALL_FLAGS != 0 {
        return Err(bad(format!(
            "the first page has no long header (xlp_info {info:#06x})"
        )));
    }
    let seg_size = u32_at(bytes, 32);
    if !valid_segment_size(seg_size) {
        return Err(bad(format!("segment size {seg_size} in the page header")));
    }
    let blcksz = u32_at(bytes, 36);
    if blcksz as usize != PAGE {
        return Err(bad(format!(
            "page size {blcksz} (only {PAGE} is supported)"
        )));
    }
    let start = u64_at(bytes, 8);
    if !start.is_multiple_of(seg_size as u64) {
        return Err(bad(format!(
            "the first page's address {} is not a segment start",
            Lsn(start)
        )));
    }
    let tli = u32_at(bytes, 4);
    if tli == 0 {
        return Err(bad("timeline 0 in the page header".into()));
    }
    Ok(First {
        magic: u16_at(bytes, 0),
        start,
        seg_size,
        system_id: u64_at(bytes, 24),
        tli,
    })
}

/// Scan the segment `bytes` (a whole segment; a shorter prefix is read as
/// far as it goes). `expected_start`: the segment's first location as its
/// name says, when known. An `Err` means the first page is not a long page
/// header of a segment (or not the one named); anything wrong later ends
/// the scan there, as [`SegmentScan::stop`] says.
pub fn scan(bytes: &[u8], expected_start: Option<Lsn>) -> Result<SegmentScan> {
    let first = first_page(bytes)?;
    if let Some(e) = expected_start {
        if e.0 != first.start {
            return Err(Error::integrity(format!(
                "the segment's first page is at {}, not at {e} as its name says",
                Lsn(first.start)
            ))
            .with_hint("the file was stored under another segment's name"));
        }
    }
    let mut s = Scanner {
        // Never read past the segment, even when given more.
        bytes: &bytes[..bytes.len().min(first.seg_size as usize)],
        first,
        last_tli: 0,
    };
    Ok(s.run())
}

struct Scanner<'a> {
    bytes: &'a [u8],
    first: First,
    last_tli: u32,
}

/// The page header at `page`, checked; its length, `xlp_info` and
/// `xlp_rem_len`.
struct PageHeader {
    len: usize,
    info: u16,
    rem_len: u32,
}

/// Why reading stopped inside the walk.
enum Halt {
    Stop(Stop, usize, String),
    /// The record being read was abandoned at the page starting here;
    /// reading goes on with the record after its header.
    Overwritten(usize),
}

fn halt<T>(stop: Stop, at: usize, why: impl Into<String>) -> std::result::Result<T, Halt> {
    Err(Halt::Stop(stop, at, why.into()))
}

/// What a complete record gave.
struct Record {
    header: [u8; RECORD_HEADER],
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Segment offset just past its last byte.
    end: usize,
}

impl Scanner<'_> {
    fn run(&mut self) -> SegmentScan {
        let mut out = SegmentScan {
            start_lsn: Lsn(self.first.start),
            segment_size: self.first.seg_size,
            system_id: self.first.system_id,
            first_tli: self.first.tli,
            last_tli: self.first.tli,
            records: 0,
            end_lsn: None,
            commits: 0,
            aborts: 0,
            first_xact: None,
            last_xact: None,
            last_xact_kind: None,
            last_commit: None,
            restore_points: 0,
            last_restore_point: None,
            stop: Stop::SegmentEnd,
            stop_lsn: Lsn(self.first.start),
            stop_detail: String::new(),
        };
        let (stop, at, why) = match self.records(&mut out) {
            Ok(never) => match never {},
            Err(Halt::Stop(stop, at, why)) => (stop, at, why),
            // records() resumes after these; never returned
            Err(Halt::Overwritten(at)) => (Stop::BadPage, at, "abandoned record".into()),
        };
        out.last_tli = self.last_tli.max(self.first.tli);
        out.stop = stop;
        out.stop_lsn = Lsn(self.first.start + at as u64);
        out.stop_detail = why;
        out
    }

    fn lsn(&self, at: usize) -> Lsn {
        Lsn(self.first.start + at as u64)
    }

    /// Check the header of page `page`, which must exist.
    fn page_header(&mut self, page: usize) -> std::result::Result<PageHeader, Halt> {
        let at = page * PAGE;
        let bytes = self.bytes;
        let b = &bytes[at..];
        let len = if page == 0 { LONG_HEADER } else { SHORT_HEADER };
        if b.len() < len {
            return halt(
                Stop::SegmentEnd,
                at,
                "the segment ends inside a page header",
            );
        }
        let magic = u16_at(b, 0);
        let info = u16_at(b, 2);
        let tli = u32_at(b, 4);
        let addr = u64_at(b, 8);
        let expected = self.first.start + at as u64;
        if magic != self.first.magic {
            return halt(
                Stop::BadPage,
                at,
                format!(
                    "page at {}: magic {magic:#06x}, not {:#06x}",
                    self.lsn(at),
                    self.first.magic
                ),
            );
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return halt(
                Stop::BadPage,
                at,
                format!("page at {}: unknown flags {info:#06x}", self.lsn(at)),
            );
        }
        if addr != expected {
            return halt(
                Stop::BadPage,
                at,
                format!("page at {} says it is at {}", self.lsn(at), Lsn(addr)),
            );
        }
        if tli < self.last_tli || tli == 0 {
            return halt(
                Stop::BadPage,
                at,
                format!(
                    "page at {}: timeline {tli} after timeline {}",
                    self.lsn(at),
                    self.last_tli
                ),
            );
        }
        self.last_tli = tli;
        Ok(PageHeader {
            len,
            info,
            rem_len: u32_at(b, 16),
        })
    }

    /// The first offset after the page header of the page starting at
    /// `at`, for a page that must not continue a record.
    fn open_page_for_record(&mut self, at: usize) -> std::result::Result<usize, Halt> {
        if at >= self.bytes.len() {
            return halt(Stop::SegmentEnd, at, "end of the segment");
        }
        let h = self.page_header(at / PAGE)?;
        if h.info & XLP_FIRST_IS_CONTRECORD != 0 {
            return halt(
                Stop::BadPage,
                at,
                format!(
                    "page at {} continues a record, but a new record was due",
                    self.lsn(at)
                ),
            );
        }
        Ok(at + h.len)
    }

    /// Walk the `len` bytes of a record's data starting at `at` (inside a
    /// page, after its header), over page boundaries, checking that each
    /// new page continues it; calls `f` with each piece. Returns the
    /// offset just past the last byte.
    fn walk(
        &mut self,
        mut at: usize,
        len: usize,
        mut f: impl FnMut(&[u8]),
    ) -> std::result::Result<usize, Halt> {
        let mut remaining = len;
        loop {
            let page_end = (at / PAGE + 1) * PAGE;
            let take = remaining.min(page_end - at);
            if at + take > self.bytes.len() {
                return halt(
                    Stop::SegmentEnd,
                    at,
                    "a record runs past the end of the segment",
                );
            }
            let bytes = self.bytes;
            f(&bytes[at..at + take]);
            remaining -= take;
            at += take;
            if remaining == 0 {
                return Ok(at);
            }
            if at >= self.bytes.len() {
                return halt(
                    Stop::SegmentEnd,
                    at,
                    "a record continues in the next segment",
                );
            }
            let h = self.page_header(at / PAGE)?;
            if h.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                return Err(Halt::Overwritten(at));
            }
            if h.info & XLP_FIRST_IS_CONTRECORD == 0 || h.rem_len as usize != remaining {
                return halt(
                    Stop::BadPage,
                    at,
                    format!(
                        "page at {} does not continue the record ({remaining} bytes due, the page says {} (flags {:#06x}))",
                        self.lsn(at),
                        h.rem_len,
                        h.info
                    ),
                );
            }
            at += h.len;
        }
    }

    /// Skip the end of a record begun in the previous segment; the offset
    /// of the first record.
    fn skip_continuation(&mut self) -> std::result::Result<usize, Halt> {
        let h = self.page_header(0)?;
        if h.info & XLP_FIRST_IS_CONTRECORD == 0 {
            return Ok(h.len);
        }
        match self.walk(h.len, h.rem_len as usize, |_| {}) {
            Ok(end) => Ok(maxalign(end)),
            Err(Halt::Overwritten(page)) => Ok(page),
            Err(e) => Err(e),
        }
    }

    /// Read records until something stops the scan (always: the `Ok` type
    /// cannot be built).
    fn records(&mut self, out: &mut SegmentScan) -> std::result::Result<Never, Halt> {
        let mut at = self.skip_continuation()?;
        let mut prev: Option<u64> = None;
        loop {
            if at.is_multiple_of(PAGE) {
                at = self.open_page_for_record(at)?;
            }
            let rec = match self.record(at, prev) {
                Ok(rec) => rec,
                // The abandoned record is not counted; xl_prev of the
                // next one points at the record before it.
                Err(Halt::Overwritten(page)) => {
                    at = page;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let start = self.lsn(at);
            out.records += 1;
            out.end_lsn = Some(self.lsn(rec.end));
            let rmid = rec.header[17];
            let info = rec.header[16];
            if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
                return halt(Stop::Switch, rec.end, format!("XLOG_SWITCH at {start}"));
            }
            note(out, &rec, start);
            prev = Some(start.0);
            at = maxalign(rec.end);
        }
    }

    /// One record at `at`, checked (its header and its CRC).
    fn record(&mut self, at: usize, prev: Option<u64>) -> std::result::Result<Record, Halt> {
        // Records start 8-aligned, so at least 8 bytes of this page remain:
        // xl_tot_len is on it.
        if at + 4 > self.bytes.len() {
            return halt(Stop::SegmentEnd, at, "end of the segment");
        }
        let tot_len = u32_at(self.bytes, at) as usize;
        if tot_len == 0 {
            return halt(
                Stop::Zero,
                at,
                format!("end of WAL at {} (record length 0)", self.lsn(at)),
            );
        }
        if tot_len < RECORD_HEADER {
            return halt(
                Stop::BadRecord,
                at,
                format!("record at {}: length {tot_len}", self.lsn(at)),
            );
        }
        // A record longer than what is left of the segment cannot be whole
        // here: nothing to allocate or read for it.
        if tot_len > self.bytes.len() - at {
            return halt(
                Stop::SegmentEnd,
                at,
                "a record continues in the next segment",
            );
        }
        let mut rec = Record {
            header: [0; RECORD_HEADER],
            prefix: [0; PREFIX],
            prefix_len: 0,
            end: 0,
        };
        let mut seen = 0usize;
        let mut crc = 0u32;
        let end = self.walk(at, tot_len, |piece| {
            let mut piece = piece;
            if seen < RECORD_HEADER {
                let n = piece.len().min(RECORD_HEADER - seen);
                rec.header[seen..seen + n].copy_from_slice(&piece[..n]);
                seen += n;
                piece = &piece[n..];
            }
            if !piece.is_empty() {
                let body = seen - RECORD_HEADER;
                if body < PREFIX {
                    let n = piece.len().min(PREFIX - body);
                    rec.prefix[body..body + n].copy_from_slice(&piece[..n]);
                    rec.prefix_len = body + n;
                }
                crc = crc32c::crc32c_append(crc, piece);
                seen += piece.len();
            }
        })?;
        rec.end = end;
        let xl_prev = u64_at(&rec.header, 8);
        if let Some(p) = prev {
            if xl_prev != p {
                return halt(
                    Stop::BadRecord,
                    at,
                    format!(
                        "record at {}: previous record {} but {} came before",
                        self.lsn(at),
                        Lsn(xl_prev),
                        Lsn(p)
                    ),
                );
            }
        } else if xl_prev >= self.lsn(at).0 {
            return halt(
                Stop::BadRecord,
                at,
                format!(
                    "record at {}: previous record {} is not before it",
                    self.lsn(at),
                    Lsn(xl_prev)
                ),
            );
        }
        let crc = crc32c::crc32c_append(crc, &rec.header[..CRC_OFFSET]);
        let stored = u32_at(&rec.header, CRC_OFFSET);
        if crc != stored {
            return halt(
                Stop::BadRecord,
                at,
                format!(
                    "record at {}: CRC {crc:#010x}, the record says {stored:#010x}",
                    self.lsn(at)
                ),
            );
        }
        Ok(rec)
    }
}

/// The uninhabited type: the record loop only ends by a [`Halt`].
enum Never {}

/// The main data of a record without block references: its first bytes.
fn main_data(body: &[u8]) -> Option<&[u8]> {
    let mut i = 0usize;
    loop {
        let id = *body.get(i)?;
        match id {
            XLR_BLOCK_ID_ORIGIN => i += 1 + 2,
            XLR_BLOCK_ID_TOPLEVEL_XID => i += 1 + 4,
            XLR_BLOCK_ID_DATA_SHORT => return body.get(i + 2..),
            XLR_BLOCK_ID_DATA_LONG => return body.get(i + 5..),
            // A block reference (0..=32) or anything else: not read.
            _ => return None,
        }
    }
}

fn timed(rec: &Record, start: Lsn) -> Option<TimedRecord> {
    let data = main_data(&rec.prefix[..rec.prefix_len])?;
    let t = i64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    Some(TimedRecord {
        lsn: start,
        xid: u32_at(&rec.header, 4),
        pg_time_us: t,
        time: pg_time(t),
    })
}

fn note(out: &mut SegmentScan, rec: &Record, start: Lsn) {
    let rmid = rec.header[17];
    let info = rec.header[16];
    if rmid == RM_XACT_ID {
        let Some(kind) = XactKind::of(info) else {
            return;
        };
        let Some(t) = timed(rec, start) else { return };
        if kind.is_commit() {
            out.commits += 1;
            out.last_commit = Some(t.clone());
        } else {
            out.aborts += 1;
        }
        if out.first_xact.is_none() {
            out.first_xact = Some(t.clone());
        }
        out.last_xact = Some(t);
        out.last_xact_kind = Some(kind);
    } else if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_RESTORE_POINT {
        if let Some(t) = timed(rec, start) {
            out.restore_points += 1;
            out.last_restore_point = Some(t);
        }
    }
}

/// A synthetic segment writer for tests and fuzz seeds: pages, headers and
/// records laid out as PostgreSQL lays them out.
pub mod synth {
    use super::*;

    /// PostgreSQL 15's `XLOG_PAGE_MAGIC`.
    pub const MAGIC: u16 = 0xD110;

    pub struct Writer {
        pub bytes: Vec<u8>,
        start: u64,
        seg_size: u32,
        tli: u32,
        sysid: u64,
        at: usize,
        pub prev: u64,
        /// Size the segment is cut to (a short one for fuzz seeds).
        limit: usize,
    }

    impl Writer {
        /// A segment starting at `start`, `limit` bytes long; its first
        /// page begins with a continuation of `cont` bytes (0: none).
        pub fn new(start: u64, seg_size: u32, tli: u32, limit: usize, cont: u32) -> Writer {
            let mut w = Writer {
                bytes: vec![0; limit],
                start,
                seg_size,
                tli,
                sysid: 7_300_000_000_000_000_001,
                at: 0,
                prev: start.saturating_sub(64),
                limit,
            };
            w.page_header(0, cont);
            w.at = LONG_HEADER;
            if cont > 0 {
                w.fill(cont as usize, 0xAB);
                w.at = maxalign(w.at);
            }
            w
        }

        fn page_header(&mut self, page: usize, rem: u32) {
            let at = page * PAGE;
            if at + SHORT_HEADER > self.limit {
                return;
            }
            let mut info = if rem > 0 { XLP_FIRST_IS_CONTRECORD } else { 0 };
            if page == 0 {
                info |= XLP_LONG_HEADER;
            }
            let b = &mut self.bytes[at..];
            b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
            b[2..4].copy_from_slice(&info.to_le_bytes());
            b[4..8].copy_from_slice(&self.tli.to_le_bytes());
            b[8..16].copy_from_slice(&(self.start + at as u64).to_le_bytes());
            b[16..20].copy_from_slice(&rem.to_le_bytes());
            if page == 0 && self.limit >= LONG_HEADER {
                b[24..32].copy_from_slice(&self.sysid.to_le_bytes());
                b[32..36].copy_from_slice(&self.seg_size.to_le_bytes());
                b[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
        }

        /// Write `data` from the cursor, starting page headers as needed
        /// (with `remaining` counted down for continuation flags). Bytes
        /// past the limit are dropped.
        fn put(&mut self, data: &[u8]) {
            let mut remaining = data.len();
            let mut i = 0;
            while remaining > 0 {
                if self.at.is_multiple_of(PAGE) {
                    let page = self.at / PAGE;
                    self.page_header(page, remaining as u32);
                    self.at += SHORT_HEADER;
                }
                let page_end = (self.at / PAGE + 1) * PAGE;
                let n = remaining.min(page_end - self.at);
                for k in 0..n {
                    if self.at + k < self.limit {
                        self.bytes[self.at + k] = data[i + k];
                    }
                }
                self.at += n;
                i += n;
                remaining -= n;
            }
        }

        fn fill(&mut self, n: usize, byte: u8) {
            self.put(&vec![byte; n]);
        }

        /// Append one record with body `body` (after the 24-byte header);
        /// returns its start.
        pub fn record(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> u64 {
            if self.at.is_multiple_of(PAGE) {
                self.page_header(self.at / PAGE, 0);
                self.at += SHORT_HEADER;
            }
            let start = self.start + self.at as u64;
            let all = self.raw(rmid, info, xid, body);
            self.put(&all);
            self.at = maxalign(self.at);
            self.prev = start;
            start
        }

        /// The bytes of a record (header and body) as `record` would
        /// write them, without writing them.
        pub fn raw(&self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> Vec<u8> {
            let tot = (RECORD_HEADER + body.len()) as u32;
            let mut h = [0u8; RECORD_HEADER];
            h[0..4].copy_from_slice(&tot.to_le_bytes());
            h[4..8].copy_from_slice(&xid.to_le_bytes());
            h[8..16].copy_from_slice(&self.prev.to_le_bytes());
            h[16] = info;
            h[17] = rmid;
            let crc = crc32c::crc32c_append(crc32c::crc32c(body), &h[..CRC_OFFSET]);
            h[20..24].copy_from_slice(&crc.to_le_bytes());
            let mut all = h.to_vec();
            all.extend_from_slice(body);
            all
        }

        /// A commit (or another xact `info`) at `pg_time_us`, with an
        /// origin and a top-level-xid block before the data when asked.
        pub fn xact(&mut self, info: u8, xid: u32, pg_time_us: i64, origin: bool) -> u64 {
            let mut body = Vec::new();
            if origin {
                body.extend_from_slice(&[XLR_BLOCK_ID_ORIGIN, 1, 0]);
                body.extend_from_slice(&[XLR_BLOCK_ID_TOPLEVEL_XID, 9, 0, 0, 0]);
            }
            let mut data = pg_time_us.to_le_bytes().to_vec();
            data.extend_from_slice(&[0u8; 8]);
            body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, data.len() as u8]);
            body.extend_from_slice(&data);
            self.record(RM_XACT_ID, info, xid, &body)
        }

        /// A record of `n` body bytes that is neither timed nor a switch.
        pub fn filler(&mut self, n: usize) -> u64 {
            let mut body = vec![XLR_BLOCK_ID_DATA_LONG];
            body.extend_from_slice(&(n as u32).to_le_bytes());
            body.extend(std::iter::repeat_n(0x5A, n));
            self.record(10, 0x00, 0, &body)
        }

        pub fn switch(&mut self) -> u64 {
            self.record(RM_XLOG_ID, XLOG_SWITCH, 0, &[])
        }

        /// The cursor's segment offset.
        pub fn offset(&self) -> usize {
            self.at
        }
    }

    /// µs since 2000-01-01 of a UTC time.
    pub fn pg_us(t: DateTime<Utc>) -> i64 {
        (t.timestamp() - PG_EPOCH_UNIX_S) * 1_000_000 + t.timestamp_subsec_micros() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::synth::*;
    use super::*;
    use proptest::prelude::*;

    const MB16: u32 = 16 << 20;
    const START: u64 = 5 * MB16 as u64;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn reads_commits_over_page_boundaries_and_stops_at_zero() {
        let mut w = Writer::new(START, MB16, 1, 4 * PAGE, 0);
        let t1 = pg_us(t("2026-12-03T07:00:00.000001Z"));
        let t2 = pg_us(t("2026-12-03T07:00:05.5Z"));
        w.xact(0x00, 700, t1, false);
        // filler that crosses the first page boundary, then a commit
        // whose header is split by the next one
        w.filler(PAGE);
        let gap = PAGE * 2 - w.offset() - 16;
        w.filler(gap - RECORD_HEADER - 5);
        assert_eq!(w.offset() % PAGE, PAGE - 16);
        let split = w.xact(0x20, 701, t1 + 10, true);
        w.xact(0x30, 702, t2, true);
        let end = w.offset();
        let s = scan(&w.bytes, Some(Lsn(START))).unwrap();
        assert_eq!(s.stop, Stop::Zero, "{}", s.stop_detail);
        assert_eq!(s.records, 5);
        assert_eq!((s.commits, s.aborts), (2, 1));
        assert_eq!(
            s.first_xact.as_ref().unwrap().time,
            Some(t("2026-12-03T07:00:00.000001Z"))
        );
        assert_eq!(
            s.last_xact.as_ref().unwrap().time,
            Some(t("2026-12-03T07:00:05.5Z"))
        );
        assert_eq!(s.last_xact_kind, Some(XactKind::CommitPrepared));
        assert_eq!(s.last_commit.as_ref().unwrap().xid, 702);
        assert!(split % PAGE as u64 == (PAGE - 16) as u64);
        assert!(s.end_lsn.unwrap().0 <= START + end as u64);
        assert_eq!(s.stop_lsn.0, START + end as u64);
    }

    #[test]
    fn skips_a_continuation_and_stops_at_a_switch() {
        let mut w = Writer::new(START, MB16, 2, 3 * PAGE, 9000);
        let first = w.xact(0x00, 1, 1_000, false);
        assert!(
            first > START + PAGE as u64,
            "the continuation ran over a page"
        );
        w.switch();
        w.xact(0x00, 2, 2_000, false);
        let s = scan(&w.bytes, None).unwrap();
        assert_eq!(s.stop, Stop::Switch);
        assert_eq!((s.records, s.commits), (2, 1));
        assert_eq!(s.last_xact.unwrap().pg_time_us, 1_000);
        assert_eq!((s.first_tli, s.last_tli), (2, 2));
    }

    #[test]
    fn a_bad_crc_a_bad_page_or_a_cut_record_ends_the_scan() {
        let mut w = Writer::new(START, MB16, 1, 2 * PAGE, 0);
        w.xact(0x00, 1, 1_000, false);
        let second = w.xact(0x00, 2, 2_000, false) - START;
        let good = w.bytes.clone();

        let mut bad = good.clone();
        bad[second as usize + 30] ^= 1;
        let s = scan(&bad, None).unwrap();
        assert_eq!((s.stop, s.commits), (Stop::BadRecord, 1));
        assert!(s.stop_detail.contains("CRC"), "{}", s.stop_detail);

        // a record crossing into page 1, whose header is wrong
        let mut w = Writer::new(START, MB16, 1, 2 * PAGE, 0);
        w.filler(PAGE);
        let mut bad = w.bytes.clone();
        bad[PAGE + 8] ^= 1;
        let s = scan(&bad, None).unwrap();
        assert_eq!((s.stop, s.records), (Stop::BadPage, 0));
        // the same record cut by the end of the data
        let s = scan(&w.bytes[..PAGE + 50], None).unwrap();
        assert_eq!((s.stop, s.records), (Stop::SegmentEnd, 0));

        // xl_prev that does not point at the previous record
        let mut w = Writer::new(START, MB16, 1, PAGE, 0);
        w.xact(0x00, 1, 1_000, false);
        w.prev = 12345;
        w.xact(0x00, 2, 2_000, false);
        let s = scan(&w.bytes, None).unwrap();
        assert_eq!((s.stop, s.commits), (Stop::BadRecord, 1));
    }

    #[test]
    fn an_abandoned_record_is_skipped_as_postgres_15_does() {
        // A record begun on page 0 whose continuation on page 1 was
        // overwritten: page 1 says so, and a record follows its header.
        let mut w = Writer::new(START, MB16, 1, 2 * PAGE, 0);
        w.xact(0x00, 1, 1_000, false);
        let prev = w.prev;
        w.filler(PAGE);
        let mut b = w.bytes.clone();
        // page 1: no continuation, the overwrite flag; a commit after it
        b[PAGE + 2..PAGE + 4].copy_from_slice(&XLP_FIRST_IS_OVERWRITE_CONTRECORD.to_le_bytes());
        b[PAGE + 16..PAGE + 20].copy_from_slice(&0u32.to_le_bytes());
        let mut w2 = Writer::new(START, MB16, 1, 2 * PAGE, 0);
        w2.prev = prev;
        let mut body = vec![XLR_BLOCK_ID_DATA_SHORT, 16];
        body.extend_from_slice(&2_000i64.to_le_bytes());
        body.extend_from_slice(&[0u8; 8]);
        let rec = w2.raw(RM_XACT_ID, 0x00, 2, &body);
        b[PAGE + SHORT_HEADER..PAGE + SHORT_HEADER + rec.len()].copy_from_slice(&rec);
        b[PAGE + SHORT_HEADER + rec.len()..].fill(0);
        let s = scan(&b, None).unwrap();
        assert_eq!(s.stop, Stop::Zero, "{}", s.stop_detail);
        assert_eq!((s.records, s.commits), (2, 2));
        assert_eq!(s.last_xact.unwrap().pg_time_us, 2_000);
    }

    #[test]
    fn restore_points_and_records_with_blocks() {
        let mut w = Writer::new(START, MB16, 1, PAGE, 0);
        let mut body = vec![XLR_BLOCK_ID_DATA_SHORT, 16];
        body.extend_from_slice(&77i64.to_le_bytes());
        body.extend_from_slice(b"before-x");
        w.record(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &body);
        // a commit with a block reference (id 0) is not read
        let mut body = vec![0u8, 0x10, 0, 0];
        body.extend_from_slice(&[0u8; 20]);
        w.record(RM_XACT_ID, 0x00, 5, &body);
        let s = scan(&w.bytes, None).unwrap();
        assert_eq!((s.records, s.commits, s.restore_points), (2, 0, 1));
        assert_eq!(s.last_restore_point.unwrap().pg_time_us, 77);
    }

    #[test]
    fn the_first_page_must_be_a_long_header_of_the_named_segment() {
        let w = Writer::new(START, MB16, 1, PAGE, 0);
        assert!(scan(&w.bytes, Some(Lsn(START))).is_ok());
        assert!(scan(&w.bytes, Some(Lsn(START + MB16 as u64))).is_err());
        assert!(scan(&w.bytes[..39], None).is_err());
        let mut b = w.bytes.clone();
        b[2] = 0;
        assert!(scan(&b, None).is_err());
        let mut b = w.bytes.clone();
        b[37] = 0;
        assert!(scan(&b, None).is_err());
        let mut b = w.bytes.clone();
        b[8] = 1;
        assert!(scan(&b, None).is_err());
    }

    #[test]
    fn pg_times() {
        assert_eq!(pg_time(0), Some(t("2000-01-01T00:00:00Z")));
        assert_eq!(pg_time(-1), Some(t("1999-12-31T23:59:59.999999Z")));
        assert_eq!(
            pg_us(t("2026-12-03T07:00:00.25Z")),
            pg_us(pg_time(pg_us(t("2026-12-03T07:00:00.25Z"))).unwrap())
        );
        assert_eq!(pg_time(i64::MAX), None);
        assert_eq!(pg_time(i64::MIN), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Random records come back in order with their times; any damage
        /// or truncation never panics and never invents a record.
        #[test]
        fn random_segments(
            sizes in proptest::collection::vec(0usize..20000, 1..12),
            cont in 0u32..30000,
            cut in 0usize..(6 * PAGE),
            flip in any::<(usize, u8)>(),
        ) {
            let mut w = Writer::new(START, MB16, 1, 6 * PAGE, cont);
            let mut times = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                if w.offset() + n + 200 > 6 * PAGE { break; }
                w.filler(*n);
                times.push(i as i64 * 1000);
                w.xact(0x00, i as u32, i as i64 * 1000, i % 2 == 0);
            }
            let s = scan(&w.bytes, None).unwrap();
            prop_assert_eq!(s.commits as usize, times.len());
            prop_assert_eq!(s.last_xact.map(|x| x.pg_time_us), times.last().copied());
            let short = scan(&w.bytes[..cut.min(w.bytes.len())], None);
            if let Ok(sh) = short {
                prop_assert!(sh.commits <= s.commits);
            }
            let mut bad = w.bytes.clone();
            let at = flip.0 % bad.len();
            bad[at] ^= flip.1 | 1;
            if let Ok(b) = scan(&bad, None) {
                prop_assert!(b.records <= s.records + 1);
            }
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..20000), fix in any::<bool>()) {
            let mut data = data;
            if fix && data.len() >= LONG_HEADER {
                // a valid long header, so the scan gets past page 0
                let w = Writer::new(START, MB16, 1, LONG_HEADER, 0);
                data[..LONG_HEADER].copy_from_slice(&w.bytes[..LONG_HEADER]);
            }
            let _ = scan(&data, None);
        }
    }
}
