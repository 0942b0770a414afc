//! The WAL archive (docs/FORMAT.md, "WAL archive"). Pure: names, the
//! sealed object format and the PostgreSQL page header, no I/O.
//!
//! One object per archived file, `wal/<timeline>/<file name>-<sha256>`,
//! where the hash is of the file's plaintext. The object is a sealed box
//! ([`Domain::Wal`]) of:
//!
//! ```text
//! magic "UWAL" | version u8 = 1 | system identifier u64 LE
//! | name length u8 | name (ASCII) | plaintext length u64 LE | zstd frame
//! ```
//!
//! `wal/system-id` is a sealed box ([`Domain::WalSystemId`]) of a JSON
//! [`SystemIdRecord`]: the cluster the archive belongs to.

use serde::{Deserialize, Serialize};

use crate::crypto::{Domain, Key};
use crate::error::{Error, Result};
use crate::format::{codec, Id};

/// Folder of the archive.
pub const DIR: &str = "wal/";
/// The record of the archive's cluster.
pub const SYSTEM_ID: &str = "wal/system-id";
const MAGIC: &[u8; 4] = b"UWAL";
const VERSION: u8 = 1;
/// Largest file accepted: PostgreSQL's largest segment size (1 GiB).
pub const MAX_FILE: u64 = 1 << 30;
/// `XLP_LONG_HEADER` in `xlp_info`.
const XLP_LONG_HEADER: u16 = 0x0002;
/// Offset of `xlp_sysid` in `XLogLongPageHeaderData`: after the 24-byte
/// (aligned) `XLogPageHeaderData` (magic u16, info u16, tli u32,
/// pageaddr u64, rem_len u32, padding).
const SYSID_OFFSET: usize = 24;

/// What kind of file PostgreSQL archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    /// A segment, `TTTTTTTTXXXXXXXXYYYYYYYY` (24 upper-case hex digits).
    Segment,
    /// A timeline history file, `TTTTTTTT.history`.
    History,
    /// A backup history file, `<segment>.XXXXXXXX.backup`.
    Backup,
    /// The unfinished last segment of an old timeline, `<segment>.partial`:
    /// PostgreSQL archives it after a promotion when it was not archived
    /// whole (a standby's). Kept like any archived file (pgBackRest and
    /// WAL-G keep it too); recovery never asks for it.
    Partial,
}

/// A checked WAL file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    pub name: String,
    pub kind: WalKind,
    pub timeline: u32,
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

impl WalName {
    /// Parse a file name as PostgreSQL writes it (upper-case hex only).
    /// Paths, lower-case hex and anything else are refused.
    pub fn parse(name: &str) -> Result<WalName> {
        let bad = |why: &str| {
            Error::usage(format!("{name:?} is not a WAL file name: {why}")).with_hint(
                "give a segment (24 hex digits), a TTTTTTTT.history or a <segment>.XXXXXXXX.backup file",
            )
        };
        let (kind, tl_hex) = if name.len() == 24 && is_hex(name) {
            (WalKind::Segment, &name[..8])
        } else if let Some(seg) = name.strip_suffix(".partial") {
            if seg.len() != 24 || !is_hex(seg) {
                return Err(bad("a partial segment is 24 hex digits + .partial"));
            }
            (WalKind::Partial, &seg[..8])
        } else if let Some(tl) = name.strip_suffix(".history") {
            if tl.len() != 8 || !is_hex(tl) {
                return Err(bad("a history file is 8 hex digits + .history"));
            }
            (WalKind::History, tl)
        } else if let Some(rest) = name.strip_suffix(".backup") {
            let ok = rest.len() == 33
                && is_hex(&rest[..24])
                && rest.as_bytes()[24] == b'.'
                && is_hex(&rest[25..]);
            if !ok {
                return Err(bad("a backup history file is <24 hex>.<8 hex>.backup"));
            }
            (WalKind::Backup, &rest[..8])
        } else {
            return Err(bad("unknown form"));
        };
        let timeline = u32::from_str_radix(tl_hex, 16).map_err(|_| bad("bad timeline"))?;
        if timeline == 0 {
            return Err(bad("timeline 0 does not exist"));
        }
        Ok(WalName {
            name: name.to_owned(),
            kind,
            timeline,
        })
    }

    /// `wal/<timeline 8 hex>/<name>-`: every stored version of this file.
    pub fn prefix(&self) -> String {
        format!("{DIR}{:08X}/{}-", self.timeline, self.name)
    }

    /// The object holding this file with plaintext hash `hash`.
    pub fn object_name(&self, hash: &Id) -> String {
        format!("{}{}", self.prefix(), hash.to_hex())
    }

    /// The plaintext hash of an object listed under [`Self::prefix`], or
    /// `None` if the name is not one of ours.
    pub fn hash_of(&self, object: &str) -> Option<Id> {
        let hex = object.strip_prefix(&self.prefix())?;
        (hex.len() == 64).then(|| Id::parse(hex).ok()).flatten()
    }
}

/// A WAL location (`XLogRecPtr`), printed as PostgreSQL prints it
/// (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(s: &str) -> Result<Lsn> {
        let bad = || Error::usage(format!("{s:?} is not a WAL location (like 16/B374D848)"));
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }

    /// The segment number holding this location.
    pub fn segment(self, seg_size: u32) -> u64 {
        self.0 / seg_size as u64
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl TryFrom<String> for Lsn {
    type Error = Error;
    fn try_from(s: String) -> Result<Lsn> {
        Lsn::parse(&s)
    }
}

impl From<Lsn> for String {
    fn from(l: Lsn) -> String {
        l.to_string()
    }
}

/// Is `seg_size` a segment size PostgreSQL allows (a power of two from
/// 1 MiB to 1 GiB)?
pub fn valid_segment_size(seg_size: u32) -> bool {
    seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size)
}

/// Segments per "xlogid" (the middle 8 hex digits of a segment name).
fn segments_per_id(seg_size: u32) -> u64 {
    0x1_0000_0000 / seg_size as u64
}

/// The file name of segment `segno` on `timeline` (PostgreSQL's
/// `XLogFileName`).
pub fn segment_name(timeline: u32, segno: u64, seg_size: u32) -> String {
    let per = segments_per_id(seg_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// The timeline and segment number of segment file `name`
/// (`XLogFromFileName`); `None` for another kind of name, or a low part
/// out of range for `seg_size`.
pub fn segment_number(name: &str, seg_size: u32) -> Option<(u32, u64)> {
    if name.len() != 24 || !is_hex(name) {
        return None;
    }
    let tl = u32::from_str_radix(&name[..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..], 16).ok()?;
    let per = segments_per_id(seg_size);
    (lo < per).then_some((tl, hi * per + lo))
}

/// Offset of `xlp_seg_size` in the long page header.
const SEG_SIZE_OFFSET: usize = 32;

/// The segment size in a segment's first (long) page header.
pub fn segment_size_of(name: &str, bytes: &[u8]) -> Result<u32> {
    segment_system_id(name, bytes)?;
    let size = bytes
        .get(SEG_SIZE_OFFSET..SEG_SIZE_OFFSET + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0);
    if !valid_segment_size(size) {
        return Err(Error::integrity(format!(
            "WAL segment {name} gives segment size {size} in its page header"
        )));
    }
    Ok(size)
}

/// The system identifier in a segment's first (long) page header.
pub fn segment_system_id(name: &str, bytes: &[u8]) -> Result<u64> {
    if bytes.len() < SYSID_OFFSET + 8 {
        return Err(Error::integrity(format!(
            "WAL segment {name} is {} bytes, too short for a page header",
            bytes.len()
        )));
    }
    let info = u16::from_le_bytes([bytes[2], bytes[3]]);
    if info & XLP_LONG_HEADER == 0 {
        return Err(Error::integrity(format!(
            "WAL segment {name} does not start with a long page header (xlp_info {info:#06x})"
        ))
        .with_hint("the file is not a WAL segment, or it is damaged"));
    }
    Ok(u64::from_le_bytes(
        bytes[SYSID_OFFSET..SYSID_OFFSET + 8].try_into().unwrap(),
    ))
}

/// Seal one WAL file into its stored object.
pub fn encode(key: &Key, system_id: u64, name: &WalName, plain: &[u8], level: i32) -> Vec<u8> {
    let z = codec::compress(plain, level);
    let mut inner = Vec::with_capacity(z.len() + 64);
    inner.extend_from_slice(MAGIC);
    inner.push(VERSION);
    inner.extend_from_slice(&system_id.to_le_bytes());
    inner.push(name.name.len() as u8);
    inner.extend_from_slice(name.name.as_bytes());
    inner.extend_from_slice(&(plain.len() as u64).to_le_bytes());
    inner.extend_from_slice(&z);
    key.seal(Domain::Wal, &inner)
}

/// A WAL file read back and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub system_id: u64,
    pub plain: Vec<u8>,
}

/// Open a stored object `object` (its full name) holding `name`: checks
/// the AEAD, the header's name, the length and the name's hash.
pub fn decode(key: &Key, name: &WalName, object: &str, sealed: &[u8]) -> Result<Decoded> {
    let what = "WAL object";
    let expected = name.hash_of(object).ok_or_else(|| {
        Error::integrity(format!(
            "{object} is not a WAL object name for {}",
            name.name
        ))
    })?;
    let inner = key
        .open(Domain::Wal, sealed)
        .map_err(|e| e.context(format!("object {object}")))?;
    let mut r = codec::Reader::new(&inner, what);
    r.expect_magic(MAGIC, VERSION)
        .map_err(|e| e.context(format!("object {object}")))?;
    let system_id = r.u64()?;
    let n = r.u8()? as usize;
    let stored_name = r.take(n)?;
    if stored_name != name.name.as_bytes() {
        return Err(Error::integrity(format!(
            "object {object} holds {:?}, not {}",
            String::from_utf8_lossy(stored_name),
            name.name
        )));
    }
    let len = r.u64()?;
    if len > MAX_FILE {
        return Err(Error::format(what, format!("length {len} too large")));
    }
    let z = r.take(r.remaining())?;
    let plain = codec::decompress(z, len as usize, "WAL object")?;
    if plain.len() as u64 != len || Id::hash(&plain) != expected {
        return Err(
            Error::integrity(format!("object {object} does not match its checksum")).with_hint(
                "the archived WAL file is damaged; restore it from a copy of the repository",
            ),
        );
    }
    Ok(Decoded { system_id, plain })
}

/// `wal/system-id`: the cluster whose WAL this archive holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemIdRecord {
    pub version: u32,
    /// As a decimal string, as `pg_controldata` prints it.
    pub system_identifier: String,
    /// The `[wal] source` of the first push.
    pub source: String,
    /// The file whose push wrote the record.
    pub first_file: String,
    pub created: chrono::DateTime<chrono::Utc>,
    /// The cluster's WAL segment size (`xlp_seg_size` of the first
    /// segment): what "the next segment" means when looking for gaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_size: Option<u32>,
}

impl SystemIdRecord {
    pub fn system_id(&self) -> Result<u64> {
        self.system_identifier.parse().map_err(|_| {
            Error::format(
                "wal/system-id",
                format!("bad system identifier {:?}", self.system_identifier),
            )
        })
    }
    pub fn seal(&self, key: &Key) -> Vec<u8> {
        key.seal(
            Domain::WalSystemId,
            &serde_json::to_vec(self).expect("serializable"),
        )
    }
    pub fn open(key: &Key, sealed: &[u8]) -> Result<SystemIdRecord> {
        let plain = key
            .open(Domain::WalSystemId, sealed)
            .map_err(|e| e.context(SYSTEM_ID))?;
        let r: SystemIdRecord = crate::format::meta::decode_json(SYSTEM_ID, &plain)?;
        r.system_id()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        let s = WalName::parse("000000010000000000000003").unwrap();
        assert_eq!((s.kind, s.timeline), (WalKind::Segment, 1));
        assert_eq!(s.prefix(), "wal/00000001/000000010000000000000003-");
        let h = WalName::parse("0000000A.history").unwrap();
        assert_eq!((h.kind, h.timeline), (WalKind::History, 10));
        assert_eq!(h.prefix(), "wal/0000000A/0000000A.history-");
        let b = WalName::parse("000000020000000000000003.00000028.backup").unwrap();
        assert_eq!((b.kind, b.timeline), (WalKind::Backup, 2));
        for bad in [
            "",
            "00000001000000000000000",
            "0000000100000000000000030",
            "00000001000000000000000a",
            "000000000000000000000003",
            "00000001.history.partial",
            "00000001000000000000003.partial",
            "1.history",
            "0000000g.history",
            "000000010000000000000003.0000028.backup",
            "000000010000000000000003-00000028.backup",
            "../00000001.history",
            "pg_wal/000000010000000000000003",
            "00000001.HISTORY",
        ] {
            assert!(WalName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let p = WalName::parse("000000010000000000000003.partial").unwrap();
        assert_eq!((p.kind, p.timeline), (WalKind::Partial, 1));
        assert_eq!(p.prefix(), "wal/00000001/000000010000000000000003.partial-");
    }

    #[test]
    fn hash_of_only_our_names() {
        let s = WalName::parse("000000010000000000000003").unwrap();
        let id = Id::hash(b"x");
        assert_eq!(s.hash_of(&s.object_name(&id)), Some(id));
        assert_eq!(s.hash_of("wal/00000001/000000010000000000000003-abc"), None);
        assert_eq!(s.hash_of("wal/00000001/000000010000000000000004-"), None);
    }

    fn segment(sysid: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        v[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        v[24..32].copy_from_slice(&sysid.to_le_bytes());
        v
    }

    #[test]
    fn system_id_from_long_header() {
        let seg = segment(7_312_345_678_901_234_567, 8192);
        assert_eq!(
            segment_system_id("x", &seg).unwrap(),
            7_312_345_678_901_234_567
        );
        let mut short = seg.clone();
        short[2] = 0;
        assert!(segment_system_id("x", &short).is_err());
        assert!(segment_system_id("x", &seg[..20]).is_err());
    }

    #[test]
    fn decode_checks_name_hash_and_domain() {
        let k = Key::random();
        let n = WalName::parse("000000010000000000000003").unwrap();
        let other = WalName::parse("000000010000000000000004").unwrap();
        let plain = segment(42, 65536);
        let obj = n.object_name(&Id::hash(&plain));
        let sealed = encode(&k, 42, &n, &plain, 3);
        let d = decode(&k, &n, &obj, &sealed).unwrap();
        assert_eq!((d.system_id, &d.plain), (42, &plain));
        // renamed to another file: the header's name differs
        let moved = other.object_name(&Id::hash(&plain));
        assert!(decode(&k, &other, &moved, &sealed).is_err());
        // a wrong hash in the name
        let wrong = n.object_name(&Id::hash(b"other"));
        assert!(decode(&k, &n, &wrong, &sealed).is_err());
        // another domain, another key, a flipped bit
        let rec = SystemIdRecord {
            version: 1,
            system_identifier: "42".into(),
            source: "pg".into(),
            first_file: n.name.clone(),
            created: chrono::Utc::now(),
            segment_size: Some(16 << 20),
        };
        assert!(decode(&k, &n, &obj, &rec.seal(&k)).is_err());
        assert!(SystemIdRecord::open(&k, &sealed).is_err());
        assert_eq!(SystemIdRecord::open(&k, &rec.seal(&k)).unwrap(), rec);
        assert!(decode(&Key::random(), &n, &obj, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[50] ^= 1;
        assert!(decode(&k, &n, &obj, &bad).is_err());
    }

    #[test]
    fn lsn_and_segment_names() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/2000028").unwrap().to_string(), "0/2000028");
        for bad in ["", "0", "/1", "1/", "x/1", "123456789/0", "0/2000028/1"] {
            assert!(Lsn::parse(bad).is_err(), "{bad:?}");
        }
        let mb16 = 16 << 20;
        // 0/2000028 is in segment 2 of timeline 1
        assert_eq!(Lsn::parse("0/2000028").unwrap().segment(mb16), 2);
        assert_eq!(segment_name(1, 2, mb16), "000000010000000000000002");
        // 16/B374D848 with 16 MiB segments: xlogid 0x16, segment 0xB3
        let seg = l.segment(mb16);
        assert_eq!(segment_name(3, seg, mb16), "0000000300000016000000B3");
        assert_eq!(
            segment_number("0000000300000016000000B3", mb16),
            Some((3, seg))
        );
        // the low part runs to 0xFF with 16 MiB segments, then the id rolls
        assert_eq!(segment_name(1, 0x100, mb16), "000000010000000100000000");
        assert_eq!(segment_number("000000010000000000000100", mb16), None);
        assert_eq!(segment_number("00000001.history", mb16), None);
        // 1 GiB segments: four per id
        assert_eq!(segment_name(1, 5, 1 << 30), "000000010000000100000001");
        assert!(valid_segment_size(1 << 20) && !valid_segment_size(3 << 20));
    }

    proptest! {
        #[test]
        fn segment_names_round_trip(tl in 1u32.., segno in any::<u64>(), shift in 20u32..=30) {
            let size = 1u32 << shift;
            // Every segment number a 64-bit location can reach.
            let segno = segno >> shift;
            let n = segment_name(tl, segno, size);
            prop_assert_eq!(segment_number(&n, size), Some((tl, segno)));
            prop_assert!(WalName::parse(&n).is_ok());
        }

        #[test]
        fn lsn_round_trip(v in any::<u64>()) {
            prop_assert_eq!(Lsn::parse(&Lsn(v).to_string()).unwrap(), Lsn(v));
        }

        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), sysid in any::<u64>(), seg in 1u32..0xFFFF) {
            let k = Key::random();
            let n = WalName::parse(&format!("{seg:08X}0000000100000002")).unwrap();
            let obj = n.object_name(&Id::hash(&data));
            let sealed = encode(&k, sysid, &n, &data, 1);
            let d = decode(&k, &n, &obj, &sealed).unwrap();
            prop_assert_eq!(d.system_id, sysid);
            prop_assert_eq!(d.plain, data);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,48}") {
            if let Ok(n) = WalName::parse(&s) {
                prop_assert_eq!(n.name, s);
                prop_assert!(n.timeline > 0);
            }
        }
    }
}
