//! The in-memory master index: chunk id → (pack, offset, lengths, kind),
//! merged from every index object.
//!
//! Compact form (docs/ARCHITECTURE.md, "Master index"): one flat array of
//! 46-byte records sorted by id, bucketed by the id's first two bytes
//! (65,536 buckets; the two bytes are elided from the records, the bucket
//! table costs 256 KiB). A record is the id's last 30 bytes and a 16-byte
//! little-endian bit-packed location:
//!
//! ```text
//! bits   0..32  pack position (in `packs`)    88..120 raw_len
//!       32..63  offset (< 2^31)              120      compression
//!       63..88  stored_len (< 2^25)          121..123 blob kind
//! ```
//!
//! Lookups are a binary search inside one bucket. About 47.4 bytes a chunk
//! all told (measured: docs/BENCHMARKS.md), against 60–105 for a hash map.
//!
//! Built by [`MasterIndexBuilder`]: index objects are decoded straight into
//! one array of 48-byte build records (full id + location), which is sorted
//! once, de-duplicated and compacted to 46-byte records in place: loading
//! never holds a second copy of the index.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::format::index::{self as index_fmt, IndexBlob, IndexFile, IndexPack};
use crate::format::pack::{BlobKind, Compression};
use crate::format::Id;

const TAIL: usize = 30;
const REC: usize = TAIL + 16;
const BUILD_REC: usize = 32 + 16;
const BUCKETS: usize = 1 << 16;
const NO_OBJECT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position in [`MasterIndex::packs`].
    pub pack: u32,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
    pub kind: BlobKind,
}

impl BlobLocation {
    fn pack_bits(&self) -> [u8; 16] {
        let v = self.pack as u128
            | (self.offset as u128) << 32
            | (self.stored_len as u128) << 63
            | (self.raw_len as u128) << 88
            | (self.compression as u128) << 120
            | (self.kind as u128) << 121;
        v.to_le_bytes()
    }
    fn unpack(b: &[u8]) -> BlobLocation {
        let v = u128::from_le_bytes(b.try_into().expect("16 bytes"));
        let bits = |shift: u32, n: u32| ((v >> shift) & ((1u128 << n) - 1)) as u32;
        BlobLocation {
            pack: bits(0, 32),
            offset: bits(32, 31),
            stored_len: bits(63, 25),
            raw_len: bits(88, 32),
            // Both were checked when the record was built.
            compression: Compression::from_u8(bits(120, 1) as u8).expect("valid compression"),
            kind: BlobKind::from_u8(bits(121, 2) as u8).expect("valid blob kind"),
        }
    }
}

/// The merged index: immutable once built (see [`MasterIndexBuilder`]).
#[derive(Debug, Default)]
pub struct MasterIndex {
    /// `REC`-byte records sorted by id, first two id bytes elided.
    records: Vec<u8>,
    /// Records of ids starting with bytes `p` are `buckets[p]..buckets[p+1]`
    /// (empty table: no records).
    buckets: Vec<u32>,
    packs: Vec<Id>,
    /// Positions in `packs`, sorted by pack id (for `has_pack`).
    packs_sorted: Vec<u32>,
    /// For each pack, the index object (position in `objects`) that listed it first.
    pack_index: Vec<u32>,
    objects: Vec<Id>,
}

impl MasterIndex {
    fn record(&self, i: usize) -> &[u8] {
        &self.records[i * REC..(i + 1) * REC]
    }

    fn find(&self, id: &Id) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let p = u16::from_be_bytes([id.0[0], id.0[1]]) as usize;
        let (mut lo, mut hi) = (self.buckets[p] as usize, self.buckets[p + 1] as usize);
        let key = &id.0[2..];
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.record(mid)[..TAIL].cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.find(id)
            .map(|i| BlobLocation::unpack(&self.record(i)[TAIL..]))
    }
    pub fn contains(&self, id: &Id) -> bool {
        self.find(id).is_some()
    }
    pub fn pack_id(&self, loc: &BlobLocation) -> Id {
        self.packs[loc.pack as usize]
    }
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }
    fn pack_pos(&self, id: &Id) -> Option<u32> {
        self.packs_sorted
            .binary_search_by(|&p| self.packs[p as usize].cmp(id))
            .ok()
            .map(|i| self.packs_sorted[i])
    }
    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_pos(id).is_some()
    }
    /// The index object that listed a pack (the first one loaded).
    pub fn index_of_pack(&self, id: &Id) -> Option<Id> {
        let p = self.pack_pos(id)?;
        match self.pack_index[p as usize] {
            NO_OBJECT => None,
            o => Some(self.objects[o as usize]),
        }
    }
    pub fn blob_count(&self) -> usize {
        self.records.len() / REC
    }
    /// Heap bytes held (records, bucket table, pack tables).
    pub fn heap_bytes(&self) -> usize {
        self.records.capacity()
            + self.buckets.capacity() * 4
            + self.packs.capacity() * 32
            + self.packs_sorted.capacity() * 4
            + self.pack_index.capacity() * 4
            + self.objects.capacity() * 32
    }

    /// Every blob, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (Id, BlobLocation)> + '_ {
        let buckets = if self.buckets.is_empty() { 0 } else { BUCKETS };
        (0..buckets).flat_map(move |p| {
            let (lo, hi) = (self.buckets[p] as usize, self.buckets[p + 1] as usize);
            (lo..hi).map(move |i| {
                let r = self.record(i);
                let mut id = [0u8; 32];
                id[..2].copy_from_slice(&(p as u16).to_be_bytes());
                id[2..].copy_from_slice(&r[..TAIL]);
                (Id(id), BlobLocation::unpack(&r[TAIL..]))
            })
        })
    }

    /// Every pack with its blobs (sorted by offset), packs in the order of
    /// [`Self::packs`]. Holds one pack's blobs at a time plus a
    /// 4-byte-per-blob permutation.
    pub fn pack_iter(&self) -> PackIter<'_> {
        let mut order: Vec<u32> = (0..self.blob_count() as u32).collect();
        order.sort_unstable_by_key(|&i| {
            let l = self.loc_at(i as usize);
            (l.pack, l.offset)
        });
        PackIter {
            index: self,
            order,
            next: 0,
        }
    }

    fn loc_at(&self, i: usize) -> BlobLocation {
        BlobLocation::unpack(&self.record(i)[TAIL..])
    }

    /// The id of record `i` (its bucket found by binary search).
    fn id_at(&self, i: usize) -> Id {
        let p = self.buckets.partition_point(|&b| b as usize <= i) - 1;
        let mut id = [0u8; 32];
        id[..2].copy_from_slice(&(p as u16).to_be_bytes());
        id[2..].copy_from_slice(&self.record(i)[..TAIL]);
        Id(id)
    }

    /// The same index without the blobs of `packs` (a writer's view: it
    /// never deduplicates against a condemned pack). A chunk whose kept
    /// location was in one of them is absent here even when another pack
    /// holds a copy: the writer stores it again, the safe side.
    pub fn without_packs(&self, packs: &HashSet<Id>) -> MasterIndex {
        let mut b = MasterIndexBuilder::new(false);
        b.reserve(self.blob_count());
        for p in self.pack_iter() {
            if !packs.contains(&p.id) {
                b.add_pack(&p);
            }
        }
        b.finish()
    }

    /// All blobs, grouped by pack, as index entries (for verify).
    pub fn blobs_by_pack(&self) -> HashMap<Id, Vec<IndexBlob>> {
        let mut out: HashMap<Id, Vec<IndexBlob>> = HashMap::new();
        for p in self.pack_iter() {
            out.entry(p.id).or_default().extend(p.blobs);
        }
        out
    }
}

const CACHE_MAGIC: &[u8; 8] = b"UDRMIDX1";

impl MasterIndex {
    /// Serialise (for the local cache, which seals the stream).
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        w.write_all(CACHE_MAGIC)?;
        for n in [
            self.blob_count(),
            self.buckets.len(),
            self.packs.len(),
            self.packs_sorted.len(),
            self.objects.len(),
        ] {
            w.write_all(&(n as u64).to_le_bytes())?;
        }
        w.write_all(&self.records)?;
        for v in [&self.buckets, &self.packs_sorted, &self.pack_index] {
            for x in v.iter() {
                w.write_all(&x.to_le_bytes())?;
            }
        }
        for id in self.packs.iter().chain(&self.objects) {
            w.write_all(&id.0)?;
        }
        Ok(())
    }

    /// Read what [`Self::write_to`] wrote, checking every count against
    /// `max_len` (the bytes available) and every record for consistency,
    /// so that a damaged cache is an error, never a wrong lookup or a panic.
    pub fn read_from(r: &mut impl std::io::Read, max_len: u64) -> Result<MasterIndex> {
        use crate::error::Error;
        let bad = |what: &str| Error::integrity(format!("index cache: {what}"));
        let io = |e: std::io::Error| Error::integrity(format!("index cache: {e}"));
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(io)?;
        if &magic != CACHE_MAGIC {
            return Err(bad("bad magic"));
        }
        let mut counts = [0u64; 5];
        for c in counts.iter_mut() {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).map_err(io)?;
            *c = u64::from_le_bytes(b);
        }
        let [n, nb, np, nps, no] = counts;
        let need = n
            .checked_mul(REC as u64)
            .and_then(|x| x.checked_add(nb.checked_mul(4)?))
            .and_then(|x| x.checked_add(nps.checked_mul(4)?))
            .and_then(|x| x.checked_add(np.checked_mul(4 + 32)?))
            .and_then(|x| x.checked_add(no.checked_mul(32)?));
        if need.is_none_or(|need| need > max_len)
            || !(nb == 0 && n == 0 || nb == BUCKETS as u64 + 1)
            || nps > np
            || n > u32::MAX as u64
        {
            return Err(bad("counts out of range"));
        }
        let mut records = vec![0u8; n as usize * REC];
        r.read_exact(&mut records).map_err(io)?;
        let mut u32s = |len: u64| -> Result<Vec<u32>> {
            let mut buf = vec![0u8; len as usize * 4];
            r.read_exact(&mut buf).map_err(io)?;
            Ok(buf
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect())
        };
        let buckets = u32s(nb)?;
        let packs_sorted = u32s(nps)?;
        let pack_index = u32s(np)?;
        let mut ids = |len: u64| -> Result<Vec<Id>> {
            let mut buf = vec![0u8; len as usize * 32];
            r.read_exact(&mut buf).map_err(io)?;
            Ok(buf
                .chunks_exact(32)
                .map(|c| Id(c.try_into().expect("32 bytes")))
                .collect())
        };
        let packs = ids(np)?;
        let objects = ids(no)?;
        let m = MasterIndex {
            records,
            buckets,
            packs,
            packs_sorted,
            pack_index,
            objects,
        };
        // Consistency: buckets ascend to n, records ascend within a
        // bucket, every field decodes and names a pack that exists.
        if let (Some(first), Some(last)) = (m.buckets.first(), m.buckets.last()) {
            if *first != 0 || *last as u64 != n || m.buckets.windows(2).any(|w| w[0] > w[1]) {
                return Err(bad("bucket table inconsistent"));
            }
            for p in 0..BUCKETS {
                let (lo, hi) = (m.buckets[p] as usize, m.buckets[p + 1] as usize);
                if (lo + 1..hi).any(|i| m.record(i - 1)[..TAIL] >= m.record(i)[..TAIL]) {
                    return Err(bad("records out of order"));
                }
            }
        }
        for i in 0..n as usize {
            let v = u128::from_le_bytes(m.record(i)[TAIL..].try_into().expect("16 bytes"));
            let pack = (v & 0xffff_ffff) as usize;
            let compression = ((v >> 120) & 1) as u8;
            let kind = ((v >> 121) & 3) as u8;
            if pack >= m.packs.len()
                || v >> 123 != 0
                || Compression::from_u8(compression).is_err()
                || BlobKind::from_u8(kind).is_err()
            {
                return Err(bad("record out of range"));
            }
        }
        if m.packs_sorted.iter().any(|&p| p as usize >= m.packs.len())
            || m.packs_sorted
                .windows(2)
                .any(|w| m.packs[w[0] as usize] >= m.packs[w[1] as usize])
            || m.pack_index
                .iter()
                .any(|&o| o != NO_OBJECT && o as usize >= m.objects.len())
        {
            return Err(bad("pack table inconsistent"));
        }
        Ok(m)
    }
}

/// See [`MasterIndex::pack_iter`].
pub struct PackIter<'a> {
    index: &'a MasterIndex,
    order: Vec<u32>,
    next: usize,
}

impl Iterator for PackIter<'_> {
    type Item = IndexPack;
    fn next(&mut self) -> Option<IndexPack> {
        let first = *self.order.get(self.next)? as usize;
        let pack = self.index.loc_at(first).pack;
        let mut out = IndexPack {
            id: self.index.packs[pack as usize],
            blobs: vec![],
        };
        while let Some(&i) = self.order.get(self.next) {
            let l = self.index.loc_at(i as usize);
            if l.pack != pack {
                break;
            }
            out.blobs.push(IndexBlob {
                kind: l.kind,
                compression: l.compression,
                offset: l.offset,
                stored_len: l.stored_len,
                raw_len: l.raw_len,
                id: self.index.id_at(i as usize),
            });
            self.next += 1;
        }
        Some(out)
    }
}

/// One index object's records in the build array.
#[derive(Debug)]
struct Span {
    id: Id,
    start: usize,
    end: usize,
}

/// Builds a [`MasterIndex`] from index objects, one at a time.
///
/// With `honour_supersedes` (readers), the records of an index object that
/// another added object supersedes are left out.
#[derive(Debug)]
pub struct MasterIndexBuilder {
    recs: Vec<[u8; BUILD_REC]>,
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    pack_index: Vec<u32>,
    objects: Vec<Id>,
    spans: Vec<Span>,
    superseded: HashSet<Id>,
    honour_supersedes: bool,
    /// Packs whose copy of a chunk is kept only when no other pack has one.
    disfavored: HashSet<Id>,
}

impl Default for MasterIndexBuilder {
    fn default() -> Self {
        Self::new(true)
    }
}

impl MasterIndexBuilder {
    pub fn new(honour_supersedes: bool) -> Self {
        MasterIndexBuilder {
            recs: vec![],
            packs: vec![],
            pack_pos: HashMap::new(),
            pack_index: vec![],
            objects: vec![],
            spans: vec![],
            superseded: HashSet::new(),
            honour_supersedes,
            disfavored: HashSet::new(),
        }
    }

    /// When a chunk is in several packs, keep a location outside `packs`
    /// if there is one (prune: a condemned pack's copy is the last resort).
    pub fn disfavor(&mut self, packs: HashSet<Id>) {
        self.disfavored = packs;
    }

    /// Continue from a built index (the local cache): its records are
    /// expanded back to build records in place. Objects added afterwards
    /// can only supersede each other, not what `index` holds (the caller
    /// checks [`Self::superseded`] against the objects `index` covers).
    pub fn from_index(index: MasterIndex, honour_supersedes: bool) -> Self {
        let MasterIndex {
            records: mut flat,
            buckets,
            packs,
            pack_index,
            objects,
            ..
        } = index;
        let n = flat.len() / REC;
        flat.truncate(n * REC);
        flat.reserve_exact(n * (BUILD_REC - REC));
        flat.resize(n * BUILD_REC, 0);
        if !buckets.is_empty() {
            // From the back: a record's destination never overlaps a record
            // not yet moved (48·i ≥ 46·i + 46 once i ≥ 23; below, copy_within
            // handles the overlap with the record itself).
            for p in (0..BUCKETS).rev() {
                for i in (buckets[p] as usize..buckets[p + 1] as usize).rev() {
                    flat.copy_within(i * REC..(i + 1) * REC, i * BUILD_REC + 2);
                    flat[i * BUILD_REC..i * BUILD_REC + 2]
                        .copy_from_slice(&(p as u16).to_be_bytes());
                }
            }
        }
        let recs: Vec<[u8; BUILD_REC]> = if flat.capacity() % BUILD_REC == 0 {
            let mut flat = std::mem::ManuallyDrop::new(flat);
            let (ptr, cap) = (flat.as_mut_ptr(), flat.capacity());
            // SAFETY: as in `finish`, the other way round: the allocation of
            // `cap` bytes, `cap` a multiple of 48, is that of `cap / 48`
            // records of alignment 1; `n` of them are initialised.
            unsafe { Vec::from_raw_parts(ptr as *mut [u8; BUILD_REC], n, cap / BUILD_REC) }
        } else {
            flat.chunks_exact(BUILD_REC)
                .map(|c| c.try_into().expect("48 bytes"))
                .collect()
        };
        let pack_pos = packs
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, i as u32))
            .collect();
        MasterIndexBuilder {
            recs,
            packs,
            pack_pos,
            pack_index,
            objects,
            spans: vec![],
            superseded: HashSet::new(),
            honour_supersedes,
            disfavored: HashSet::new(),
        }
    }

    /// Reserve room for about `n` more blobs.
    pub fn reserve(&mut self, n: usize) {
        self.recs.reserve(n);
    }

    /// Index objects that an added object supersedes.
    pub fn superseded(&self) -> &HashSet<Id> {
        &self.superseded
    }

    fn object(&mut self, id: Option<Id>) -> u32 {
        match id {
            Some(id) => {
                self.objects.push(id);
                (self.objects.len() - 1) as u32
            }
            None => NO_OBJECT,
        }
    }

    fn pack(&mut self, id: &Id, object: u32) -> u32 {
        let pos = match self.pack_pos.get(id) {
            Some(&p) => p,
            None => {
                let p = self.packs.len() as u32;
                self.packs.push(*id);
                self.pack_index.push(object);
                self.pack_pos.insert(*id, p);
                p
            }
        };
        if self.pack_index[pos as usize] == NO_OBJECT {
            self.pack_index[pos as usize] = object;
        }
        pos
    }

    fn push(&mut self, pack: u32, b: &IndexBlob) {
        let loc = BlobLocation {
            pack,
            offset: b.offset,
            stored_len: b.stored_len,
            raw_len: b.raw_len,
            compression: b.compression,
            kind: b.kind,
        };
        let mut r = [0u8; BUILD_REC];
        r[..32].copy_from_slice(&b.id.0);
        r[32..].copy_from_slice(&loc.pack_bits());
        self.recs.push(r);
    }

    fn span(&mut self, id: Option<Id>, start: usize, supersedes: &[Id]) {
        if let Some(id) = id {
            self.spans.push(Span {
                id,
                start,
                end: self.recs.len(),
            });
        }
        self.superseded.extend(supersedes.iter().copied());
    }

    /// Add a decoded index object (tests, verify).
    pub fn add_file(&mut self, index_id: Option<Id>, file: &IndexFile) {
        let start = self.recs.len();
        let object = self.object(index_id);
        for p in &file.packs {
            self.add_pack_of(object, p);
        }
        self.span(index_id, start, &file.supersedes);
    }

    /// Add the entries of one pack, listed by no index object.
    pub fn add_pack(&mut self, pack: &IndexPack) {
        self.add_pack_of(NO_OBJECT, pack);
    }

    fn add_pack_of(&mut self, object: u32, p: &IndexPack) {
        let pos = self.pack(&p.id, object);
        for b in &p.blobs {
            self.push(pos, b);
        }
    }

    /// Decode an index object's plaintext straight into the build array.
    /// A malformed object adds nothing.
    pub fn add_plain(&mut self, index_id: Id, plain: &[u8]) -> Result<()> {
        let start = self.recs.len();
        let (packs_before, objects_before) = (self.packs.len(), self.objects.len());
        let object = self.object(Some(index_id));
        let mut pos = 0u32;
        let r = index_fmt::visit(plain, |pack, blob| match blob {
            None => pos = self.pack(pack, object),
            Some(b) => self.push(pos, &b),
        });
        match r {
            Ok(supersedes) => {
                self.span(Some(index_id), start, &supersedes);
                Ok(())
            }
            Err(e) => {
                // Roll back: records, new packs, the object.
                self.recs.truncate(start);
                for p in self.packs.drain(packs_before..) {
                    self.pack_pos.remove(&p);
                }
                self.pack_index.truncate(packs_before);
                for o in self.pack_index.iter_mut() {
                    if *o == object {
                        *o = NO_OBJECT;
                    }
                }
                self.objects.truncate(objects_before);
                Err(e)
            }
        }
    }

    /// Sort once, drop duplicates (and superseded objects' records), and
    /// compact in place into the final form.
    pub fn finish(self) -> MasterIndex {
        let MasterIndexBuilder {
            mut recs,
            packs,
            pack_index,
            objects,
            spans,
            superseded,
            honour_supersedes,
            disfavored,
            ..
        } = self;
        let mut pack_listed: Option<Vec<bool>> = None;
        if honour_supersedes && spans.iter().any(|s| superseded.contains(&s.id)) {
            // Remove superseded objects' records in place.
            let mut keep = vec![true; recs.len()];
            for s in spans.iter().filter(|s| superseded.contains(&s.id)) {
                keep[s.start..s.end].iter_mut().for_each(|k| *k = false);
            }
            let mut i = 0;
            recs.retain(|_| {
                i += 1;
                keep[i - 1]
            });
            // A pack only superseded objects listed is listed by none
            // (its blobs are in the superseding objects, under this pack or
            // another copy): `has_pack` must say so, so that `repair index`
            // re-indexes it if the superseding objects are damaged.
            let mut listed = vec![false; packs.len()];
            for r in &recs {
                listed[BlobLocation::unpack(&r[32..]).pack as usize] = true;
            }
            pack_listed = Some(listed);
        }
        if disfavored.is_empty() {
            recs.sort_unstable();
        } else {
            let bad: Vec<bool> = packs.iter().map(|p| disfavored.contains(p)).collect();
            let bad_rec = |r: &[u8; BUILD_REC]| bad[BlobLocation::unpack(&r[32..]).pack as usize];
            recs.sort_unstable_by(|a, b| {
                a[..32]
                    .cmp(&b[..32])
                    .then_with(|| bad_rec(a).cmp(&bad_rec(b)))
                    .then_with(|| a.cmp(b))
            });
        }
        recs.dedup_by(|a, b| a[..32] == b[..32]);
        let n = recs.len();
        // Reinterpret the build array as bytes, then compact each 48-byte
        // record to 46 bytes in place (the destination never passes the source).
        let mut recs = std::mem::ManuallyDrop::new(recs);
        let (ptr, cap) = (recs.as_mut_ptr() as *mut u8, recs.capacity());
        // SAFETY: `[u8; 48]` has alignment 1 and size 48, so the allocation
        // of `cap` build records is exactly the allocation of `cap * 48`
        // bytes (same layout); `n * 48` of them are initialised.
        let mut flat = unsafe { Vec::from_raw_parts(ptr, n * BUILD_REC, cap * BUILD_REC) };
        let mut counts = vec![0u32; BUCKETS + 1];
        for i in 0..n {
            let src = i * BUILD_REC;
            let p = u16::from_be_bytes([flat[src], flat[src + 1]]) as usize;
            counts[p + 1] += 1;
            flat.copy_within(src + 2..src + BUILD_REC, i * REC);
        }
        flat.truncate(n * REC);
        flat.shrink_to_fit();
        for p in 0..BUCKETS {
            counts[p + 1] += counts[p];
        }
        let buckets = if n == 0 { vec![] } else { counts };
        let (mut packs, mut pack_index, mut objects) = (packs, pack_index, objects);
        packs.shrink_to_fit();
        pack_index.shrink_to_fit();
        objects.shrink_to_fit();
        let mut packs_sorted: Vec<u32> = (0..packs.len() as u32)
            .filter(|&p| pack_listed.as_ref().is_none_or(|l| l[p as usize]))
            .collect();
        packs_sorted.sort_unstable_by_key(|&p| packs[p as usize]);
        MasterIndex {
            records: flat,
            buckets,
            packs,
            packs_sorted,
            pack_index,
            objects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(id: Id, offset: u32, kind: BlobKind) -> IndexBlob {
        IndexBlob {
            kind,
            compression: if offset.is_multiple_of(2) {
                Compression::Zstd
            } else {
                Compression::None
            },
            offset,
            stored_len: (17 << 20) + 1024,
            raw_len: u32::MAX - offset,
            id,
        }
    }

    fn file(seed: u8, packs: u8, per_pack: u32) -> IndexFile {
        IndexFile {
            supersedes: vec![],
            packs: (0..packs)
                .map(|p| IndexPack {
                    id: Id::hash(&[seed, p]),
                    blobs: (0..per_pack)
                        .map(|b| {
                            blob(
                                Id::hash(&[seed, p, b as u8, (b >> 8) as u8]),
                                b * 7 + (index_fmt::MAX_OFFSET - 100_000),
                                BlobKind::Data,
                            )
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn location_bits_round_trip_at_their_limits() {
        for loc in [
            BlobLocation {
                pack: u32::MAX,
                offset: index_fmt::MAX_OFFSET,
                stored_len: crate::format::pack::MAX_BLOB_LEN,
                raw_len: u32::MAX,
                compression: Compression::Zstd,
                kind: BlobKind::Data,
            },
            BlobLocation {
                pack: 0,
                offset: 0,
                stored_len: 0,
                raw_len: 0,
                compression: Compression::None,
                kind: BlobKind::Data,
            },
        ] {
            assert_eq!(BlobLocation::unpack(&loc.pack_bits()), loc);
        }
        const { assert!(crate::format::pack::MAX_BLOB_LEN < 1 << 25) };
    }

    /// Every blob added is found with its exact location, absent ids are
    /// not, and iteration yields every blob once in id order.
    #[test]
    fn lookups_match_a_hash_map() {
        let mut b = MasterIndexBuilder::default();
        let mut want = HashMap::new();
        for seed in 0..5u8 {
            let f = file(seed, 3, 400);
            for p in &f.packs {
                for x in &p.blobs {
                    want.entry(x.id).or_insert((p.id, x.clone()));
                }
            }
            let id = Id::hash(&[b'o', seed]);
            b.add_plain(id, &index_fmt::encode(&f)).unwrap();
        }
        // A malformed object adds nothing.
        let mut bad = index_fmt::encode(&file(9, 2, 10));
        bad.truncate(bad.len() - 3);
        assert!(b.add_plain(Id([7; 32]), &bad).is_err());
        let m = b.finish();
        assert_eq!(m.blob_count(), want.len());
        for (id, (pack, x)) in &want {
            let loc = m.get(id).expect("present");
            assert_eq!(m.pack_id(&loc), *pack);
            assert_eq!(
                (
                    loc.offset,
                    loc.stored_len,
                    loc.raw_len,
                    loc.compression,
                    loc.kind
                ),
                (x.offset, x.stored_len, x.raw_len, x.compression, x.kind)
            );
            assert!(m.has_pack(pack));
            assert!(m.index_of_pack(pack).is_some());
        }
        assert!(!m.contains(&Id::hash(b"absent")));
        assert!(!m.has_pack(&Id::hash(b"absent")));
        assert!(!m.contains(&file(9, 2, 10).packs[0].blobs[0].id));
        assert!(!m.has_pack(&file(9, 2, 10).packs[0].id));
        let ids: Vec<Id> = m.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), want.len());
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let mut n = 0;
        let mut seen = HashSet::new();
        for p in m.pack_iter() {
            assert!(seen.insert(p.id), "pack {} twice", p.id);
            n += p.blobs.len();
            assert!(p.blobs.windows(2).all(|w| w[0].offset < w[1].offset));
            for x in &p.blobs {
                assert_eq!(want[&x.id], (p.id, x.clone()));
            }
        }
        assert_eq!(n, want.len());
        assert!(m.heap_bytes() < want.len() * REC + (BUCKETS + 1) * 4 + 1500);
        // Empty index.
        let e = MasterIndexBuilder::default().finish();
        assert_eq!(e.blob_count(), 0);
        assert!(e.get(&Id([0; 32])).is_none());
        assert_eq!(e.iter().count(), 0);
    }

    /// Serialised and read back, or turned back into a builder and
    /// extended, the index is the same; a damaged serialisation is refused.
    #[test]
    fn serialisation_and_rebuild_round_trip() {
        let mut b = MasterIndexBuilder::default();
        for seed in 0..3u8 {
            b.add_plain(Id::hash(&[seed]), &index_fmt::encode(&file(seed, 4, 300)))
                .unwrap();
        }
        let m = b.finish();
        let all: Vec<(Id, BlobLocation)> = m.iter().collect();
        let mut buf = vec![];
        m.write_to(&mut buf).unwrap();
        let back = MasterIndex::read_from(&mut &buf[..], buf.len() as u64).unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), all);
        assert_eq!(back.packs(), m.packs());
        assert!(MasterIndex::read_from(&mut &buf[..buf.len() - 1], buf.len() as u64).is_err());
        assert!(MasterIndex::read_from(&mut &buf[..], 1000).is_err());
        for at in [3, 20, 60, 100 * REC + 70, buf.len() - 40] {
            let mut bad = buf.clone();
            bad[at] ^= 0x80;
            let r = MasterIndex::read_from(&mut &bad[..], bad.len() as u64);
            if let Ok(x) = r {
                // A flipped bit inside a location can still be a valid one;
                // never a panic and never a changed id set.
                assert_eq!(x.blob_count(), all.len());
            }
        }
        let mut b = MasterIndexBuilder::from_index(back, true);
        let extra = file(7, 2, 100);
        b.add_plain(Id::hash(b"x"), &index_fmt::encode(&extra))
            .unwrap();
        let m2 = b.finish();
        assert_eq!(m2.blob_count(), all.len() + 200);
        for (id, loc) in &all {
            let l = m2.get(id).unwrap();
            assert_eq!((m2.pack_id(&l), l.offset), (m.pack_id(loc), loc.offset));
        }
        assert!(m2.contains(&extra.packs[1].blobs[99].id));
        let empty = MasterIndexBuilder::from_index(MasterIndex::default(), true).finish();
        assert_eq!(empty.blob_count(), 0);
    }

    /// A duplicate id (the same chunk stored twice) keeps one location;
    /// a superseded object's records are dropped only when honoured.
    #[test]
    fn duplicates_and_supersedes() {
        let a = file(1, 2, 50);
        let b = file(2, 2, 50);
        let (ia, ib, ic) = (Id([1; 32]), Id([2; 32]), Id([3; 32]));
        // c supersedes a and holds only part of it: what a reader sees is c + b.
        let c = IndexFile {
            supersedes: vec![ia],
            packs: vec![a.packs[0].clone()],
        };
        for honour in [true, false] {
            let mut m = MasterIndexBuilder::new(honour);
            m.add_file(Some(ia), &a);
            m.add_file(Some(ib), &b);
            m.add_file(Some(ic), &c);
            m.add_file(Some(ic), &c);
            let m = m.finish();
            let dropped = &a.packs[1].blobs[0].id;
            assert_eq!(m.contains(dropped), !honour);
            assert_eq!(m.has_pack(&a.packs[1].id), !honour);
            assert!(m.has_pack(&a.packs[0].id));
            assert_eq!(m.blob_count(), if honour { 150 } else { 200 });
            assert!(m.contains(&c.packs[0].blobs[3].id));
        }
    }

    /// A chunk in two packs is located outside the disfavored pack
    /// whichever it is; `without_packs` drops a pack's blobs.
    #[test]
    fn disfavored_copies_are_the_last_resort() {
        let a = file(1, 1, 20);
        let mut b = file(2, 1, 20);
        // Pack b holds a copy of every chunk of pack a, and its own.
        b.packs[0].blobs.extend(a.packs[0].blobs.iter().cloned());
        let (pa, pb) = (a.packs[0].id, b.packs[0].id);
        let shared = a.packs[0].blobs[5].id;
        for (bad, want) in [(pa, pb), (pb, pa)] {
            let mut m = MasterIndexBuilder::new(true);
            m.add_file(Some(Id([1; 32])), &a);
            m.add_file(Some(Id([2; 32])), &b);
            m.disfavor([bad].into());
            let m = m.finish();
            assert_eq!(m.pack_id(&m.get(&shared).unwrap()), want);
            assert_eq!(m.blob_count(), 40);
        }
        let mut m = MasterIndexBuilder::new(true);
        m.add_file(Some(Id([1; 32])), &a);
        m.add_file(Some(Id([2; 32])), &b);
        m.disfavor([pa].into());
        let w = m.finish().without_packs(&[pb].into());
        // Everything located in b (all 40) is gone, a's copies were not kept.
        assert_eq!(w.blob_count(), 0);
        assert!(!w.has_pack(&pb));
    }
}

/// The figure for docs/BENCHMARKS.md: heap bytes per chunk of the master
/// index at 10 M synthetic chunks (32 chunks a pack, as 1 MiB chunks in
/// 32 MiB packs), and the process's peak RSS while building it.
/// `cargo test --release --lib master_index_10m -- --ignored --nocapture`
/// (USDCOP_DR_INDEX_CHUNKS sets the count).
#[cfg(test)]
mod bench {
    use super::*;

    fn rss_kib(field: &str) -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    #[ignore]
    fn master_index_10m() {
        let n: u64 = std::env::var("USDCOP_DR_INDEX_CHUNKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000_000);
        let per_pack = 32u64;
        let per_object = 170_000u64;
        let rss0 = rss_kib("VmRSS:");
        let t = std::time::Instant::now();
        let mut b = MasterIndexBuilder::default();
        let mut chunk = 0u64;
        let mut object = 0u64;
        while chunk < n {
            let mut f = IndexFile::default();
            let end = (chunk + per_object).min(n);
            while chunk < end {
                let pack = chunk / per_pack;
                let blobs = (chunk..end.min((pack + 1) * per_pack))
                    .map(|c| IndexBlob {
                        kind: BlobKind::Data,
                        compression: Compression::Zstd,
                        offset: (c % per_pack) as u32 * (1 << 20),
                        stored_len: 700_000,
                        raw_len: 1 << 20,
                        id: Id::hash(&c.to_le_bytes()),
                    })
                    .collect::<Vec<_>>();
                chunk += blobs.len() as u64;
                f.packs.push(IndexPack {
                    id: Id::hash(&(u64::MAX - pack).to_le_bytes()),
                    blobs,
                });
            }
            let plain = index_fmt::encode(&f);
            assert!(plain.len() <= index_fmt::TARGET_PLAIN_LEN);
            drop(f);
            b.add_plain(Id::hash(&object.to_be_bytes()), &plain)
                .unwrap();
            object += 1;
        }
        let m = b.finish();
        let built = t.elapsed();
        let peak = rss_kib("VmHWM:");
        let rss = rss_kib("VmRSS:");
        assert_eq!(m.blob_count() as u64, n);
        let t = std::time::Instant::now();
        for c in (0..n).step_by(97) {
            assert!(m.contains(&Id::hash(&c.to_le_bytes())));
        }
        let lookups = n / 97;
        let per_lookup = t.elapsed() / lookups as u32;
        eprintln!(
            "{n} chunks in {} packs, {object} objects: {} heap bytes = {:.1} bytes/chunk; \
             built in {built:.1?}; RSS {} MiB after (peak {} MiB, {} MiB before); lookup {per_lookup:?}",
            m.packs().len(),
            m.heap_bytes(),
            m.heap_bytes() as f64 / n as f64,
            rss >> 10,
            peak >> 10,
            rss0 >> 10
        );
        assert!((m.heap_bytes() as f64 / n as f64) < 50.0);
    }
}
