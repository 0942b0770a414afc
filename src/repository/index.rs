//! The in-memory master index: chunk id → (pack, offset, lengths), merged
//! from every index object. About 90 bytes a chunk, i.e. ~90 KiB per GiB
//! of unique data at the default 1 MiB average chunk.

use std::collections::HashMap;

use crate::format::index::{IndexBlob, IndexFile, IndexPack};
use crate::format::pack::Compression;
use crate::format::Id;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position in [`MasterIndex::packs`].
    pub pack: u32,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
}

#[derive(Debug, Default)]
pub struct MasterIndex {
    packs: Vec<Id>,
    pack_pos: HashMap<Id, u32>,
    blobs: HashMap<Id, BlobLocation>,
    /// Which index object listed each pack (the first one seen).
    pack_index: Vec<Option<Id>>,
}

impl MasterIndex {
    pub fn add_file(&mut self, index_id: Option<Id>, file: &IndexFile) {
        for p in &file.packs {
            self.add_pack(index_id, p);
        }
    }

    pub fn add_pack(&mut self, index_id: Option<Id>, pack: &IndexPack) {
        let pos = match self.pack_pos.get(&pack.id) {
            Some(&p) => p,
            None => {
                let p = self.packs.len() as u32;
                self.packs.push(pack.id);
                self.pack_index.push(index_id);
                self.pack_pos.insert(pack.id, p);
                p
            }
        };
        if self.pack_index[pos as usize].is_none() {
            self.pack_index[pos as usize] = index_id;
        }
        for b in &pack.blobs {
            self.blobs.entry(b.id).or_insert(BlobLocation {
                pack: pos,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
                compression: b.compression,
            });
        }
    }

    pub fn get(&self, id: &Id) -> Option<BlobLocation> {
        self.blobs.get(id).copied()
    }
    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }
    pub fn pack_id(&self, loc: &BlobLocation) -> Id {
        self.packs[loc.pack as usize]
    }
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }
    pub fn has_pack(&self, id: &Id) -> bool {
        self.pack_pos.contains_key(id)
    }
    pub fn index_of_pack(&self, id: &Id) -> Option<Id> {
        self.pack_pos
            .get(id)
            .and_then(|&p| self.pack_index[p as usize])
    }
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
    /// All blobs, grouped by pack, as index entries (for verify and repair).
    pub fn blobs_by_pack(&self) -> HashMap<Id, Vec<IndexBlob>> {
        let mut out: HashMap<Id, Vec<IndexBlob>> = HashMap::new();
        for (id, loc) in &self.blobs {
            out.entry(self.pack_id(loc)).or_default().push(IndexBlob {
                kind: crate::format::pack::BlobKind::Data,
                compression: loc.compression,
                offset: loc.offset,
                stored_len: loc.stored_len,
                raw_len: loc.raw_len,
                id: *id,
            });
        }
        for v in out.values_mut() {
            v.sort_by_key(|b| b.offset);
        }
        out
    }
}
