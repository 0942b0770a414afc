//! Pure encoding and decoding of everything a repository stores. No I/O;
//! every decoder bounds its allocations and is fuzzed (see `fuzz/`).
//! docs/FORMAT.md is the prose version of this module.

pub mod basebackup;
pub mod codec;
pub mod condemned;
pub mod drill;
pub mod id;
pub mod index;
pub mod meta;
pub mod pack;
pub mod pgdump;
pub mod snapshot;
pub mod tree;
pub mod wal;
pub mod wal_records;
pub mod wal_timeline;

pub use id::{Hasher, Id};

/// Object names inside a repository. Every object except `config` is named
/// by the SHA-256 of its stored bytes.
pub mod names {
    use super::Id;

    pub const CONFIG: &str = "config";
    pub const DATA: &str = "data/";
    pub const INDEX: &str = "index/";
    pub const SNAPSHOTS: &str = "snapshots/";
    pub const KEYS: &str = "keys/";
    pub const LOCKS: &str = "locks/";
    pub const CONDEMNED: &str = "condemned/";
    pub const DRILLS: &str = "drills/";

    pub fn pack(id: &Id) -> String {
        let hex = id.to_hex();
        format!("data/{}/{hex}", &hex[..2])
    }
    pub fn in_dir(dir: &str, id: &Id) -> String {
        format!("{dir}{id}")
    }
    /// The pack id named by `name` when it is exactly a pack's name
    /// (`data/xx/<64 hex>`, as [`pack`] writes it), else `None`: what
    /// clean-up uses to touch only this repository's own objects.
    pub fn pack_id_of(name: &str) -> Option<Id> {
        let id = Id::parse(name.strip_prefix(DATA)?.get(3..)?).ok()?;
        (pack(&id) == name).then_some(id)
    }
    /// Parse the id out of `<dir>…/<hex>`.
    pub fn id_of(name: &str) -> Option<Id> {
        Id::parse(name.rsplit('/').next()?).ok()
    }
}
