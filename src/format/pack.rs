//! Pack files: many encrypted blobs followed by an encrypted header that
//! lists them, so a pack describes itself and the index can be rebuilt
//! from packs alone.
//!
//! ```text
//! pack        = blob_0 … blob_n-1  sealed_header  header_len:u32le
//! blob_i      = sealed box (Domain::Blob) of the chunk, zstd-compressed or raw
//! header      = "UDRP" version:u8=1 count:u32le entry*count
//! entry       = kind:u8 compression:u8 stored_len:u32le raw_len:u32le id:[32]
//! ```
//! Blob offsets are implicit: blob i starts where blob i-1 ended.

use super::codec::Reader;
use super::Id;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"UDRP";
pub const VERSION: u8 = 1;
pub const ENTRY_LEN: usize = 1 + 1 + 4 + 4 + 32;
/// A pack header may describe at most this many bytes of plaintext (~400k blobs).
pub const MAX_HEADER_LEN: usize = 16 << 20;
/// Largest stored blob (max chunk 16 MiB + zstd worst case + envelope).
pub const MAX_BLOB_LEN: u32 = (17 << 20) + 1024;
/// Writers close a pack before it holds this many blobs, so that its sealed
/// header (9 + 42 bytes a blob, + 40 of envelope) stays within
/// [`MAX_HEADER_LEN`] whatever the blobs' sizes.
pub const MAX_PACK_BLOBS: usize = (MAX_HEADER_LEN - 9 - 64) / ENTRY_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// A chunk of source data.
    Data = 0,
    /// A list tree node (format/tree.rs): JSON, read by snapshots' readers.
    Tree = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

impl Compression {
    pub fn from_u8(v: u8) -> Result<Self> {
        match v {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Zstd),
            _ => Err(Error::format(
                "pack header",
                format!("unknown compression {v}"),
            )),
        }
    }
}

impl BlobKind {
    pub fn from_u8(v: u8) -> Result<Self> {
        match v {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            _ => Err(Error::format(
                "pack header",
                format!("unknown blob kind {v}"),
            )),
        }
    }
}

/// One blob as listed in a pack header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub compression: Compression,
    pub stored_len: u32,
    pub raw_len: u32,
    pub id: Id,
}

pub fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + entries.len() * ENTRY_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.push(e.kind as u8);
        out.push(e.compression as u8);
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
        out.extend_from_slice(&e.id.0);
    }
    out
}

/// Decode a decrypted pack header.
pub fn decode_header(plain: &[u8]) -> Result<Vec<PackEntry>> {
    let mut r = Reader::new(plain, "pack header");
    r.expect_magic(MAGIC, VERSION)?;
    let n = r.count(ENTRY_LEN)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = BlobKind::from_u8(r.u8()?)?;
        let compression = Compression::from_u8(r.u8()?)?;
        let stored_len = r.u32()?;
        let raw_len = r.u32()?;
        if stored_len > MAX_BLOB_LEN || stored_len < crate::crypto::OVERHEAD as u32 {
            return Err(Error::format(
                "pack header",
                format!("blob length {stored_len} out of range"),
            ));
        }
        entries.push(PackEntry {
            kind,
            compression,
            stored_len,
            raw_len,
            id: r.id()?,
        });
    }
    r.finish()?;
    Ok(entries)
}

/// Where the sealed header sits, given the pack's last 4 bytes and its size.
/// Returns (offset, length) of the sealed header.
pub fn header_location(pack_len: u64, trailer: [u8; 4]) -> Result<(u64, u32)> {
    let hlen = u32::from_le_bytes(trailer);
    if hlen as usize > MAX_HEADER_LEN || (hlen as u64) + 4 > pack_len {
        return Err(Error::format(
            "pack",
            format!("header length {hlen} impossible for a {pack_len}-byte pack"),
        ));
    }
    Ok((pack_len - 4 - hlen as u64, hlen))
}

/// Check that the blobs a header lists exactly fill the pack before the
/// header, and return each blob's offset.
pub fn blob_offsets(entries: &[PackEntry], header_offset: u64) -> Result<Vec<u64>> {
    let mut offsets = Vec::with_capacity(entries.len());
    let mut pos = 0u64;
    for e in entries {
        offsets.push(pos);
        pos += e.stored_len as u64;
    }
    if pos != header_offset {
        return Err(Error::format(
            "pack",
            format!("header lists {pos} bytes of blobs but the header starts at {header_offset}"),
        ));
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> PackEntry {
        PackEntry {
            kind: BlobKind::Data,
            compression: if i.is_multiple_of(2) {
                Compression::Zstd
            } else {
                Compression::None
            },
            stored_len: 100 + i as u32,
            raw_len: 1000 + i as u32,
            id: Id([i; 32]),
        }
    }

    #[test]
    fn header_round_trip() {
        let entries: Vec<_> = (0..5).map(entry).collect();
        let enc = encode_header(&entries);
        assert_eq!(enc.len(), 9 + 5 * ENTRY_LEN);
        assert_eq!(decode_header(&enc).unwrap(), entries);
        assert_eq!(decode_header(&encode_header(&[])).unwrap(), vec![]);
        let mut tree = entry(3);
        tree.kind = BlobKind::Tree;
        assert_eq!(
            decode_header(&encode_header(&[tree.clone()])).unwrap(),
            vec![tree]
        );
        let mut bad = encode_header(&[entry(3)]);
        bad[9] = 2;
        assert!(decode_header(&bad).is_err());
    }

    #[test]
    fn a_full_pack_header_fits_the_reader_cap() {
        let n = MAX_PACK_BLOBS;
        let len = 9 + n * ENTRY_LEN + crate::crypto::OVERHEAD;
        assert!(len <= MAX_HEADER_LEN, "{len}");
    }

    #[test]
    fn header_rejects_damage() {
        let enc = encode_header(&[entry(1)]);
        assert!(decode_header(&enc[..enc.len() - 1]).is_err());
        let mut extra = enc.clone();
        extra.push(0);
        assert!(decode_header(&extra).is_err());
        let mut bad_count = enc.clone();
        bad_count[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_header(&bad_count).is_err());
        let mut bad_magic = enc;
        bad_magic[0] = b'X';
        assert!(decode_header(&bad_magic).is_err());
    }

    #[test]
    fn offsets_must_fill_pack() {
        let entries: Vec<_> = (0..3).map(entry).collect();
        let total: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
        assert_eq!(blob_offsets(&entries, total).unwrap(), vec![0, 100, 201]);
        assert!(blob_offsets(&entries, total + 1).is_err());
        assert!(header_location(10, 7u32.to_le_bytes()).is_err());
        assert_eq!(header_location(100, 10u32.to_le_bytes()).unwrap(), (86, 10));
    }
}
