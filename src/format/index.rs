//! Index objects: which pack holds each blob, at which offset.
//!
//! Stored as a sealed box (Domain::Index) of the zstd-compressed encoding:
//! ```text
//! index     = "UDRI" version:u8=1
//!             supersedes_count:u32le  id*supersedes_count
//!             pack_count:u32le        pack*pack_count
//! pack      = pack_id:[32] blob_count:u32le blob*blob_count
//! blob      = kind:u8 compression:u8 offset:u32le stored_len:u32le raw_len:u32le id:[32]
//! ```
//! `supersedes` lists index objects whose content this one includes, so a
//! later compaction can write the union first and delete the old ones after.

use super::codec::{self, Reader};
use super::pack::{BlobKind, Compression};
use super::Id;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"UDRI";
pub const VERSION: u8 = 1;
const BLOB_LEN: usize = 1 + 1 + 4 + 4 + 4 + 32;
const PACK_MIN_LEN: usize = 32 + 4;
/// Decompressed index objects larger than this are refused.
pub const MAX_PLAIN_LEN: usize = 512 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexBlob {
    pub kind: BlobKind,
    pub compression: Compression,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub id: Id,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    pub id: Id,
    pub blobs: Vec<IndexBlob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexFile {
    pub supersedes: Vec<Id>,
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }
}

/// Encode to the plaintext that gets compressed and sealed.
pub fn encode(index: &IndexFile) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(13 + index.packs.len() * PACK_MIN_LEN + index.blob_count() * BLOB_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(index.supersedes.len() as u32).to_le_bytes());
    for id in &index.supersedes {
        out.extend_from_slice(&id.0);
    }
    out.extend_from_slice(&(index.packs.len() as u32).to_le_bytes());
    for p in &index.packs {
        out.extend_from_slice(&p.id.0);
        out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
        for b in &p.blobs {
            out.push(b.kind as u8);
            out.push(b.compression as u8);
            out.extend_from_slice(&b.offset.to_le_bytes());
            out.extend_from_slice(&b.stored_len.to_le_bytes());
            out.extend_from_slice(&b.raw_len.to_le_bytes());
            out.extend_from_slice(&b.id.0);
        }
    }
    out
}

pub fn decode(plain: &[u8]) -> Result<IndexFile> {
    let mut r = Reader::new(plain, "index");
    r.expect_magic(MAGIC, VERSION)?;
    let ns = r.count(32)?;
    let mut supersedes = Vec::with_capacity(ns);
    for _ in 0..ns {
        supersedes.push(r.id()?);
    }
    let np = r.count(PACK_MIN_LEN)?;
    let mut packs = Vec::with_capacity(np);
    for _ in 0..np {
        let id = r.id()?;
        let nb = r.count(BLOB_LEN)?;
        let mut blobs = Vec::with_capacity(nb);
        for _ in 0..nb {
            let kind = BlobKind::from_u8(r.u8()?)?;
            let compression = Compression::from_u8(r.u8()?)?;
            let offset = r.u32()?;
            let stored_len = r.u32()?;
            let raw_len = r.u32()?;
            if stored_len > super::pack::MAX_BLOB_LEN || offset.checked_add(stored_len).is_none() {
                return Err(Error::format(
                    "index",
                    format!("blob length {stored_len} at {offset} out of range"),
                ));
            }
            blobs.push(IndexBlob {
                kind,
                compression,
                offset,
                stored_len,
                raw_len,
                id: r.id()?,
            });
        }
        packs.push(IndexPack { id, blobs });
    }
    r.finish()?;
    Ok(IndexFile { supersedes, packs })
}

/// Plaintext → stored-body-before-sealing (zstd).
pub fn encode_compressed(index: &IndexFile) -> Vec<u8> {
    codec::compress(&encode(index), 3)
}

pub fn decode_compressed(data: &[u8]) -> Result<IndexFile> {
    decode(&codec::decompress(data, MAX_PLAIN_LEN, "index")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> IndexFile {
        IndexFile {
            supersedes: vec![Id([9; 32])],
            packs: (0..3u8)
                .map(|p| IndexPack {
                    id: Id([p; 32]),
                    blobs: (0..p as u32)
                        .map(|b| IndexBlob {
                            kind: BlobKind::Data,
                            compression: Compression::Zstd,
                            offset: b * 100,
                            stored_len: 100,
                            raw_len: 300,
                            id: Id([(p * 10 + b as u8); 32]),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        let idx = sample();
        assert_eq!(decode(&encode(&idx)).unwrap(), idx);
        assert_eq!(decode_compressed(&encode_compressed(&idx)).unwrap(), idx);
        assert_eq!(
            decode(&encode(&IndexFile::default())).unwrap(),
            IndexFile::default()
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let enc = encode(&sample());
        for n in 0..enc.len() {
            assert!(decode(&enc[..n]).is_err(), "truncation at {n} accepted");
        }
    }
}
