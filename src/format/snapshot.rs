//! Snapshot objects: what was backed up, when, from where, and where its
//! entry list is. Stored as a sealed box (Domain::Snapshot) of
//! zstd-compressed JSON; the JSON shape is documented in docs/FORMAT.md.
//! A snapshot is a small summary: its entries are a list tree of blobs
//! (`tree`, see [`super::tree`]), so listing snapshots never reads them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::codec;
use super::Id;
use crate::error::{Error, Result};

pub const VERSION: u32 = 2;
/// Decompressed snapshot summaries larger than this are refused (by the
/// writer too: it never stores a snapshot a reader would refuse). Only a
/// source's metadata (a database's picture) makes a summary big.
pub const MAX_PLAIN_LEN: usize = 64 << 20;
/// An entry with more chunks than this keeps them out of line, in a list
/// tree of chunk ids (`chunk_tree`), so that every tree node stays small.
pub const MAX_INLINE_CHUNKS: usize = 1024;

/// What kind of source produced a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Files,
    Stdin,
    Postgres,
    Bucket,
    Wal,
}

impl SourceKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Stdin => "stdin",
            SourceKind::Postgres => "postgres",
            SourceKind::Bucket => "bucket",
            SourceKind::Wal => "wal",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    /// An object of an S3 bucket (`object` holds its key and attributes).
    Object,
}

/// Where an [`EntryType::Object`] entry came from and what it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub bucket: String,
    /// The real key (the entry's `path` is an escaped, file-system-safe form).
    pub key: String,
    #[serde(default)]
    pub etag: String,
    /// RFC 3339, as the source store listed it.
    #[serde(default)]
    pub last_modified: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_metadata: BTreeMap<String, String>,
}

/// One file, directory or symlink (or the single stream of a stdin source).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path with `/` separators, no `..`, no leading `/`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub mtime_ns: i64,
    /// Change time and inode: used only to detect unchanged files.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ctime_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    #[serde(default)]
    pub size: u64,
    /// SHA-256 of the whole content, checked end to end on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Id>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id>,
    /// Root of a list tree of chunk ids, used instead of `chunks` when an
    /// entry has more than [`MAX_INLINE_CHUNKS`] chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_tree: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Bucket objects only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectInfo>,
}

impl Entry {
    /// An entry of `kind` at `path` with nothing else set: no content,
    /// mode 0, owner 0, times 0 (a start that callers fill in).
    pub fn bare(path: impl Into<String>, kind: EntryType) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            size: 0,
            sha256: None,
            chunks: vec![],
            chunk_tree: None,
            target: None,
            object: None,
        }
    }
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub kind: SourceKind,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of content read from (or referenced in) the source.
    pub bytes: u64,
    pub chunks: u64,
    pub chunks_new: u64,
    /// Stored (compressed, encrypted) bytes this backup added.
    pub bytes_stored_new: u64,
    pub files_unchanged: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: DateTime<Utc>,
    pub host: String,
    #[serde(default)]
    pub username: String,
    pub source: Source,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// What was asked for: paths given to `backup files`, the stdin name, …
    #[serde(default)]
    pub paths: Vec<String>,
    /// Root node of the entry list (a list tree of entries).
    pub tree: Id,
    /// How many entries the tree holds (checked against it when read).
    pub entry_count: u64,
    pub totals: Totals,
    /// When the backup started and how long it took.
    pub started: DateTime<Utc>,
    pub duration_s: f64,
    pub program_version: String,
    /// Free-form facts a source records (pg_dump version, row counts, …).
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Snapshot {
    pub fn validate(&self) -> Result<()> {
        if self.version != VERSION {
            return Err(Error::format(
                "snapshot",
                format!(
                    "unsupported version {} (this usdcop-dr reads version {VERSION})",
                    self.version
                ),
            ));
        }
        Ok(())
    }
}

/// The error for a list of unsafe entries (see [`unsafe_entries`]).
pub fn unsafe_entries_error(problems: &[String]) -> Error {
    unsafe_entries_error_of(problems, problems.len())
}

/// Problems named in [`unsafe_entries_error`].
pub const UNSAFE_SHOWN: usize = 5;

/// [`unsafe_entries_error`] for `total` problems of which `first` are the
/// first few (at least [`UNSAFE_SHOWN`] of them when there are that many).
pub fn unsafe_entries_error_of(first: &[String], total: usize) -> Error {
    let mut list: Vec<String> = first.iter().take(UNSAFE_SHOWN).cloned().collect();
    if total > list.len() {
        list.push(format!("and {} more", total - list.len()));
    }
    Error::format(
        "snapshot",
        format!(
            "{} unsafe entr{} (a restore could write outside its target): {}",
            total,
            if total == 1 { "y" } else { "ies" },
            list.join("; ")
        ),
    )
}

/// The per-entry checks of [`unsafe_entries`], for entries read one at a
/// time: a safe path, and not below a symlink entry seen before. Holds the
/// set of symlink paths only. (An entry below a symlink that comes *after*
/// it is caught by [`unsafe_entries`] over the whole list.)
#[derive(Debug, Default)]
pub struct EntryChecker {
    links: std::collections::HashSet<String>,
}

impl EntryChecker {
    /// Why `e` must not be restored, if it must not.
    pub fn check(&mut self, e: &Entry) -> Option<String> {
        if !is_safe_path(&e.path) {
            return Some(format!(
                "entry path {:?} is absolute, empty or not normalised (`..`, `.`, `//`)",
                e.path
            ));
        }
        if !self.links.is_empty() {
            let below = e
                .path
                .match_indices('/')
                .map(|(i, _)| &e.path[..i])
                .find(|ancestor| self.links.contains(*ancestor));
            if let Some(link) = below {
                return Some(format!(
                    "entry {:?} lies below symlink entry {link:?}",
                    e.path
                ));
            }
        }
        if e.kind == EntryType::Symlink {
            self.links.insert(e.path.clone());
        }
        None
    }
}

/// Every entry a restore must not write, with why. The writer never
/// produces these; a snapshot that holds one is damaged or was forged by
/// someone holding the key, and the reader does not trust the repository:
/// - a path that is empty, absolute, or has an empty, `.` or `..` component;
/// - an entry below a symlink entry of the same snapshot (`x -> /etc`
///   then `x/evil`): the backup records a symlink as a leaf and never
///   descends into it, so only a forged snapshot routes a write through one.
pub fn unsafe_entries(entries: &[Entry]) -> Vec<String> {
    let links: std::collections::HashSet<&str> = entries
        .iter()
        .filter(|e| e.kind == EntryType::Symlink)
        .map(|e| e.path.as_str())
        .collect();
    entries
        .iter()
        .filter_map(|e| unsafe_entry(e, |p| links.contains(p)))
        .collect()
}

/// Why `e` must not be restored, given every symlink path of its snapshot
/// (`is_link`): the per-entry rule of [`unsafe_entries`], for a reader that
/// streams the list twice (once for the symlinks, once to check) instead
/// of holding it.
pub fn unsafe_entry(e: &Entry, is_link: impl Fn(&str) -> bool) -> Option<String> {
    if !is_safe_path(&e.path) {
        return Some(format!(
            "entry path {:?} is absolute, empty or not normalised (`..`, `.`, `//`)",
            e.path
        ));
    }
    let link = e
        .path
        .match_indices('/')
        .map(|(i, _)| &e.path[..i])
        .find(|ancestor| is_link(ancestor))?;
    Some(format!(
        "entry {:?} lies below symlink entry {link:?}",
        e.path
    ))
}

/// The entry path of bucket object `key`: `<bucket>/<key>`, made a safe
/// relative path. `%` is written `%25`; a `/` that would start, end or
/// double a component is written `%2F` (so `a//b` → `a%2F/b`, `/x` → `%2Fx`,
/// `d/` → `d%2F`); a `.` or `..` component becomes `%2E` / `%2E%2E`.
/// Percent-decoding the result gives back `<bucket>/<key>`, and distinct
/// keys give distinct paths.
pub fn object_path(bucket: &str, key: &str) -> String {
    fn esc(s: &str) -> String {
        s.replace('%', "%25").replace('\0', "%00")
    }
    fn push(out: &mut Vec<String>, c: String) {
        let c = match c.as_str() {
            "." => "%2E".to_owned(),
            ".." => "%2E%2E".to_owned(),
            _ => c,
        };
        out.push(c);
    }
    let mut parts: Vec<String> = Vec::new();
    push(&mut parts, esc(bucket));
    let mut cur = String::new();
    for (i, seg) in key.split('/').enumerate() {
        if i > 0 {
            if !cur.is_empty() && !seg.is_empty() {
                push(&mut parts, std::mem::take(&mut cur));
            } else {
                cur.push_str("%2F");
            }
        }
        cur.push_str(&esc(seg));
    }
    if cur.is_empty() {
        cur.push_str("%2F%2F"); // the empty key (not a valid S3 key)
    }
    push(&mut parts, cur);
    parts.join("/")
}

/// A relative path of plain components: not empty, no leading `/`, no
/// empty, `.` or `..` component, no NUL.
pub fn is_safe_path(path: &str) -> bool {
    !(path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".."))
}

/// Refuse paths that could escape a restore target.
pub fn validate_path(path: &str) -> Result<()> {
    if !is_safe_path(path) {
        return Err(Error::format(
            "snapshot",
            format!("unsafe entry path {path:?}"),
        ));
    }
    Ok(())
}

/// Encode a snapshot summary; refuses one a reader would refuse.
pub fn encode_compressed(s: &Snapshot) -> Result<Vec<u8>> {
    let plain = serde_json::to_vec(s).expect("snapshot serializes");
    if plain.len() > MAX_PLAIN_LEN {
        return Err(Error::usage(format!(
            "snapshot summary of {} bytes exceeds the {} MiB limit (its metadata is too large); no snapshot written",
            plain.len(),
            MAX_PLAIN_LEN >> 20
        )));
    }
    Ok(codec::compress(&plain, 3))
}

pub fn decode(plain: &[u8]) -> Result<Snapshot> {
    let s: Snapshot = serde_json::from_slice(plain).map_err(|e| Error::format("snapshot", e))?;
    s.validate()?;
    Ok(s)
}

pub fn decode_compressed(data: &[u8]) -> Result<Snapshot> {
    decode(&codec::decompress(data, MAX_PLAIN_LEN, "snapshot")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_path_safety() {
        let t = Utc::now();
        let s = Snapshot {
            version: VERSION,
            time: t,
            host: "h".into(),
            username: "u".into(),
            source: Source {
                kind: SourceKind::Files,
                name: "config".into(),
            },
            tags: vec!["nightly".into()],
            parent: None,
            paths: vec!["/etc".into()],
            tree: Id([3; 32]),
            entry_count: 7,
            totals: Totals::default(),
            started: t,
            duration_s: 1.5,
            program_version: "x".into(),
            metadata: BTreeMap::new(),
        };
        assert_eq!(
            decode_compressed(&encode_compressed(&s).unwrap()).unwrap(),
            s
        );
        // A summary a reader would refuse is never written.
        let mut big = s.clone();
        big.metadata.insert(
            "huge".into(),
            serde_json::Value::String("x".repeat(MAX_PLAIN_LEN)),
        );
        let e = encode_compressed(&big).unwrap_err();
        assert!(e.to_string().contains("exceeds the 64 MiB limit"), "{e}");
        // A version 1 snapshot (entries inline) is refused.
        let mut v1 = serde_json::to_value(&s).unwrap();
        v1["version"] = 1.into();
        assert!(decode(&serde_json::to_vec(&v1).unwrap()).is_err());
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a/.."] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        validate_path("a/b c/ñ.txt").unwrap();
    }

    #[test]
    fn entries_below_a_symlink_or_with_unsafe_paths_are_named() {
        let e = |path: &str, kind: EntryType| Entry::bare(path, kind);
        let ok = [
            e("a", EntryType::Dir),
            e("a/l", EntryType::Symlink),
            e("a/lx", EntryType::File),
            e("a/l.d/f", EntryType::File),
            e("b/c", EntryType::File),
        ];
        assert!(unsafe_entries(&ok).is_empty());
        let bad = [
            e("x", EntryType::Symlink),
            e("x/evil", EntryType::File),
            e("a/l", EntryType::Symlink),
            e("a/l/deep/er", EntryType::Dir),
            e("../up", EntryType::File),
            e("/abs", EntryType::File),
            e("a//b", EntryType::File),
        ];
        let p = unsafe_entries(&bad);
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(
            p[0].contains(r#""x/evil" lies below symlink entry "x""#),
            "{p:?}"
        );
        assert!(
            p[1].contains(r#""a/l/deep/er" lies below symlink entry "a/l""#),
            "{p:?}"
        );
        assert!(p[2].contains(r#""../up""#), "{p:?}");
        // One entry at a time: the same findings, in order.
        let mut c = EntryChecker::default();
        let streamed: Vec<String> = bad.iter().filter_map(|e| c.check(e)).collect();
        assert_eq!(streamed, p);
        let mut c = EntryChecker::default();
        assert!(ok.iter().all(|e| c.check(e).is_none()));
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn object_paths_are_safe_reversible_and_distinct() {
        let keys = [
            "a",
            "a/b",
            "a//b",
            "/x",
            "//",
            "/",
            "d/",
            "a/../b",
            "..",
            ".",
            "./a",
            "a/./b",
            "%2E",
            "a%2F/b",
            "100%",
            "sp ace/ñ/文件.txt",
            "a/.../b",
            "x//",
            "a\0b",
        ];
        let mut seen = std::collections::HashSet::new();
        for k in keys {
            let p = object_path("bkt", k);
            validate_path(&p).unwrap_or_else(|e| panic!("{k:?} -> {p:?}: {e}"));
            assert_eq!(percent_decode(&p), format!("bkt/{k}"), "{k:?} -> {p:?}");
            assert!(seen.insert(p.clone()), "{k:?} collides: {p:?}");
        }
        assert_eq!(object_path("b", "a//b"), "b/a%2F/b");
        assert_eq!(object_path("b", "a/../c"), "b/a/%2E%2E/c");
        assert_eq!(object_path("b", "plain/key.txt"), "b/plain/key.txt");
    }
}
