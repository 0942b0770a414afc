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
//! `supersedes` lists index objects whose content is stored again in this
//! object or in objects written before it (a compaction's output): a reader
//! that loads this object skips the ones it supersedes (docs/FORMAT.md §7).
//!
//! Size: a reader refuses a decompressed object above [`MAX_PLAIN_LEN`];
//! every writer splits its output with [`IndexSplitter`] into objects of at
//! most [`TARGET_PLAIN_LEN`], so no writer makes an object a reader refuses.

use super::codec::{self, Reader};
use super::pack::{BlobKind, Compression};
use super::Id;
use crate::error::{Error, Result};

pub const MAGIC: &[u8; 4] = b"UDRI";
pub const VERSION: u8 = 1;
const BLOB_LEN: usize = 1 + 1 + 4 + 4 + 4 + 32;
const PACK_MIN_LEN: usize = 32 + 4;
/// Decompressed index objects larger than this are refused by readers.
pub const MAX_PLAIN_LEN: usize = 64 << 20;
/// Writers split their output into objects of at most this many plaintext
/// bytes (about 180,000 blobs): well under [`MAX_PLAIN_LEN`], and small
/// enough that loading 16 of them at once stays cheap.
pub const TARGET_PLAIN_LEN: usize = 8 << 20;
/// Encoded size of the fixed header (magic, version, two counts).
pub const HEADER_LEN: usize = 4 + 1 + 4 + 4;
/// Encoded size of one pack record without its blobs.
pub const PACK_LEN: usize = PACK_MIN_LEN;
/// Encoded size of one blob record.
pub const BLOB_RECORD_LEN: usize = BLOB_LEN;
/// Largest blob offset inside a pack an index may name (packs are at most
/// 1 GiB, `Config::pack_size`): the in-memory index packs it in 31 bits.
pub const MAX_OFFSET: u32 = (1 << 31) - 1;

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
    /// Length of [`encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self.supersedes.len() * 32
            + self.packs.len() * PACK_LEN
            + self.blob_count() * BLOB_LEN
    }
}

/// Cuts a stream of packs into index objects of at most `cap` encoded
/// bytes each. A pack too big for the room left is continued in the next
/// object (a pack may appear in several index objects; readers merge them).
/// The `supersedes` list goes into the last object, which a writer stores
/// last: when a reader sees it, every object holding the content it
/// replaces is already stored.
#[derive(Debug)]
pub struct IndexSplitter {
    cap: usize,
    current: IndexFile,
    current_len: usize,
}

impl IndexSplitter {
    /// `cap` must leave room for the header, one pack and one blob.
    pub fn new(cap: usize) -> Result<Self> {
        if !(HEADER_LEN + PACK_LEN + BLOB_LEN..=MAX_PLAIN_LEN).contains(&cap) {
            return Err(Error::usage(format!(
                "index object size cap {cap} out of range ({}..={MAX_PLAIN_LEN})",
                HEADER_LEN + PACK_LEN + BLOB_LEN
            )));
        }
        Ok(IndexSplitter {
            cap,
            current: IndexFile::default(),
            current_len: HEADER_LEN,
        })
    }

    /// Add one pack; returns the objects that are complete.
    pub fn push(&mut self, pack: IndexPack) -> Vec<IndexFile> {
        let mut done = vec![];
        let mut blobs = pack.blobs.into_iter().peekable();
        loop {
            if self.current_len + PACK_LEN + BLOB_LEN > self.cap && !self.current.packs.is_empty() {
                done.push(self.take());
            }
            let room = (self.cap - self.current_len - PACK_LEN) / BLOB_LEN;
            let part: Vec<IndexBlob> = blobs.by_ref().take(room).collect();
            self.current_len += PACK_LEN + part.len() * BLOB_LEN;
            self.current.packs.push(IndexPack {
                id: pack.id,
                blobs: part,
            });
            if blobs.peek().is_none() {
                return done;
            }
            done.push(self.take());
        }
    }

    /// The remaining objects, the last one carrying `supersedes`. Empty if
    /// there is nothing to write (no packs and nothing superseded).
    pub fn finish(mut self, supersedes: Vec<Id>) -> Result<Vec<IndexFile>> {
        let need = supersedes.len() * 32;
        if HEADER_LEN + need > self.cap {
            return Err(Error::usage(format!(
                "{} superseded index objects do not fit in one index object of {} bytes",
                supersedes.len(),
                self.cap
            )));
        }
        let mut done = vec![];
        if self.current_len + need > self.cap {
            done.push(self.take());
        }
        if !supersedes.is_empty() || !self.current.packs.is_empty() {
            self.current.supersedes = supersedes;
            done.push(self.take());
        }
        Ok(done)
    }

    fn take(&mut self) -> IndexFile {
        self.current_len = HEADER_LEN;
        std::mem::take(&mut self.current)
    }
}

/// Split `packs` (and `supersedes`, into the last object) into index
/// objects of at most `cap` encoded bytes each.
pub fn split(packs: Vec<IndexPack>, supersedes: Vec<Id>, cap: usize) -> Result<Vec<IndexFile>> {
    let mut s = IndexSplitter::new(cap)?;
    let mut out = vec![];
    for p in packs {
        out.extend(s.push(p));
    }
    out.extend(s.finish(supersedes)?);
    Ok(out)
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
    let mut packs: Vec<IndexPack> = vec![];
    let supersedes = visit(plain, |pack, blob| match blob {
        None => packs.push(IndexPack {
            id: *pack,
            blobs: vec![],
        }),
        Some(b) => packs.last_mut().expect("pack seen first").blobs.push(b),
    })?;
    Ok(IndexFile { supersedes, packs })
}

/// Decode without building an [`IndexFile`]: `f(pack, None)` at each pack,
/// then `f(pack, Some(blob))` for each of its blobs. Returns `supersedes`.
/// On error, `f` may have seen part of the object: callers roll back.
pub fn visit(plain: &[u8], mut f: impl FnMut(&Id, Option<IndexBlob>)) -> Result<Vec<Id>> {
    let mut r = Reader::new(plain, "index");
    r.expect_magic(MAGIC, VERSION)?;
    let ns = r.count(32)?;
    let mut supersedes = Vec::with_capacity(ns);
    for _ in 0..ns {
        supersedes.push(r.id()?);
    }
    let np = r.count(PACK_MIN_LEN)?;
    for _ in 0..np {
        let id = r.id()?;
        let nb = r.count(BLOB_LEN)?;
        f(&id, None);
        for _ in 0..nb {
            let kind = BlobKind::from_u8(r.u8()?)?;
            let compression = Compression::from_u8(r.u8()?)?;
            let offset = r.u32()?;
            let stored_len = r.u32()?;
            let raw_len = r.u32()?;
            if stored_len > super::pack::MAX_BLOB_LEN
                || offset > MAX_OFFSET
                || offset.checked_add(stored_len).is_none()
            {
                return Err(Error::format(
                    "index",
                    format!("blob length {stored_len} at {offset} out of range"),
                ));
            }
            f(
                &id,
                Some(IndexBlob {
                    kind,
                    compression,
                    offset,
                    stored_len,
                    raw_len,
                    id: r.id()?,
                }),
            );
        }
    }
    r.finish()?;
    Ok(supersedes)
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

    fn packs(n: u8, blobs: u32) -> Vec<IndexPack> {
        (0..n)
            .map(|p| IndexPack {
                id: Id([p; 32]),
                blobs: (0..blobs)
                    .map(|b| IndexBlob {
                        kind: BlobKind::Data,
                        compression: Compression::None,
                        offset: b * 10,
                        stored_len: 10,
                        raw_len: 10,
                        id: Id::hash(&[p, b as u8, (b >> 8) as u8]),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every object the splitter makes is within the cap, together they
    /// hold exactly the input, and only the last one carries `supersedes`.
    #[test]
    fn split_respects_cap_and_keeps_everything() {
        let input = packs(7, 23);
        let supersedes: Vec<Id> = (0..5u8).map(|i| Id([100 + i; 32])).collect();
        for cap in [
            HEADER_LEN + PACK_LEN + BLOB_LEN + 5 * 32,
            300,
            1000,
            4096,
            1 << 20,
        ] {
            let out = split(input.clone(), supersedes.clone(), cap).unwrap();
            let mut blobs: Vec<(Id, IndexBlob)> = vec![];
            for (i, f) in out.iter().enumerate() {
                let enc = encode(f);
                assert_eq!(enc.len(), f.encoded_len());
                assert!(
                    enc.len() <= cap,
                    "object of {} bytes over cap {cap}",
                    enc.len()
                );
                assert_eq!(decode(&enc).unwrap(), *f);
                if i + 1 < out.len() {
                    assert!(f.supersedes.is_empty());
                } else {
                    assert_eq!(f.supersedes, supersedes);
                }
                for p in &f.packs {
                    assert!(
                        !p.blobs.is_empty()
                            || input.iter().any(|q| q.id == p.id && q.blobs.is_empty())
                    );
                    blobs.extend(p.blobs.iter().map(|b| (p.id, b.clone())));
                }
            }
            let want: Vec<(Id, IndexBlob)> = input
                .iter()
                .flat_map(|p| p.blobs.iter().map(|b| (p.id, b.clone())))
                .collect();
            assert_eq!(blobs, want, "cap {cap}");
            if cap < 1000 {
                assert!(out.len() > 7, "cap {cap} should split packs too");
            } else if cap == 1 << 20 {
                assert_eq!(out.len(), 1);
            }
        }
        // Nothing to write: nothing written.
        assert!(split(vec![], vec![], 1000).unwrap().is_empty());
        // Supersedes alone: one object.
        assert_eq!(split(vec![], vec![Id([1; 32])], 1000).unwrap().len(), 1);
        // A cap too small for the supersedes list or for any blob is refused.
        assert!(split(vec![], supersedes, HEADER_LEN + 4 * 32).is_err());
        assert!(IndexSplitter::new(HEADER_LEN + PACK_LEN).is_err());
        assert!(IndexSplitter::new(MAX_PLAIN_LEN + 1).is_err());
    }

    #[test]
    fn offsets_beyond_the_packed_range_are_refused() {
        let mut idx = sample();
        idx.packs[1].blobs[0].offset = MAX_OFFSET + 1;
        idx.packs[1].blobs[0].stored_len = 100;
        assert!(decode(&encode(&idx)).is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let enc = encode(&sample());
        for n in 0..enc.len() {
            assert!(decode(&enc[..n]).is_err(), "truncation at {n} accepted");
        }
    }
}
