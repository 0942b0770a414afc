//! List trees: long lists (a snapshot's entries, a big file's chunk ids)
//! stored as a tree of content-addressed blobs, a Merkle search tree
//! ("prolly tree"). docs/FORMAT.md §9 is the prose version.
//!
//! A node is a blob (pack entry kind `tree`); its plaintext is JSON:
//! ```text
//! leaf  {"v":1,"level":0,"entries":[Entry,…]}       (entry lists)
//! leaf  {"v":1,"level":0,"ids":["<hex>",…]}          (chunk lists)
//! inner {"v":1,"level":L,"children":[{"id":"<hex>","count":n},…]}
//! ```
//! `count` is the number of items below that child. Node boundaries are
//! content-defined on the items' *keys* (an entry's path, a chunk's id),
//! never on positions or node contents: an unchanged run of items gives
//! the same nodes in every snapshot (deduplicated like chunks), and a
//! changed entry changes only its own leaf and the nodes on its path to the
//! root; inserting or removing one changes O(depth) nodes.
//!
//! Boundary rule. Each item has a digest `d = SHA-256("udr-tree" || key)`
//! (key = the entry path's UTF-8 bytes, or the 32 bytes of a chunk id).
//! With `h(i) = u32::from_le_bytes(d[4i..4i+4])`:
//! - a leaf is closed after item e when `h(0)` of e is below
//!   `u32::MAX / LEAF_DIVISOR` (64 for entries, 1024 for chunk ids), or
//!   when its JSON reached [`MAX_LEAF_JSON`] bytes, or it holds the item
//!   type's most items;
//! - an inner node of level L is closed after a child whose *last item* e
//!   has `h(min(L, 7))` below `u32::MAX / INNER_DIVISOR` (128) and the node
//!   has at least 2 children, or when it holds [`MAX_CHILDREN`] children.
//!
//! Keying inner boundaries on the child's last key (rather than on the
//! child's id) is what keeps a content change on its path: with id-keyed
//! boundaries a changed leaf id could start or stop a boundary and so
//! re-split its parent's siblings. The "at least 2 children" rule bounds
//! the depth (every inner level at least halves the node count).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::snapshot::Entry;
use super::Id;
use crate::error::{Error, Result};

/// Node format version (`v`).
pub const NODE_VERSION: u32 = 1;
/// Boundary divisor of inner nodes: avg 128 children.
pub const INNER_DIVISOR: u32 = 128;
/// An inner node holds at most this many children (~370 KiB of JSON).
pub const MAX_CHILDREN: usize = 4096;
/// A leaf is closed once its JSON reaches this many bytes.
pub const MAX_LEAF_JSON: usize = 256 << 10;
/// Readers refuse a node plaintext longer than this; writers refuse an
/// item that would make one (a leaf is at most MAX_LEAF_JSON plus one item).
pub const MAX_NODE_LEN: usize = 4 << 20;
/// Deepest tree a reader accepts (2^24 levels would be needed to exceed it
/// with the at-least-2 rule; real trees have 3–4).
pub const MAX_LEVEL: u32 = 32;
/// Domain prefix of the boundary digest.
pub const BOUNDARY_DOMAIN: &[u8] = b"udr-tree";

/// What a list tree holds.
pub trait TreeItem: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// The JSON field of a leaf's item list.
    const LEAF_FIELD: &'static str;
    /// A leaf closes after an item with `h(0) < u32::MAX / LEAF_DIVISOR`.
    const LEAF_DIVISOR: u32;
    /// A leaf holds at most this many items.
    const MAX_LEAF_ITEMS: usize;
    /// The bytes the boundary digest is computed over.
    fn key_bytes(&self) -> &[u8];
}

impl TreeItem for Entry {
    const LEAF_FIELD: &'static str = "entries";
    const LEAF_DIVISOR: u32 = 64;
    const MAX_LEAF_ITEMS: usize = 1024;
    fn key_bytes(&self) -> &[u8] {
        self.path.as_bytes()
    }
}

impl TreeItem for Id {
    const LEAF_FIELD: &'static str = "ids";
    const LEAF_DIVISOR: u32 = 1024;
    const MAX_LEAF_ITEMS: usize = 4096;
    fn key_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The boundary digest of a key.
pub fn boundary_digest(key: &[u8]) -> [u8; 32] {
    let mut h = super::Hasher::new();
    h.update(BOUNDARY_DOMAIN);
    h.update(key);
    h.finish().0
}

fn h(d: &[u8; 32], i: usize) -> u32 {
    let i = i.min(7);
    u32::from_le_bytes(d[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

/// Whether a leaf closes after an item with digest `d`.
pub fn is_leaf_boundary<T: TreeItem>(d: &[u8; 32]) -> bool {
    h(d, 0) < u32::MAX / T::LEAF_DIVISOR
}

/// Whether an inner node of `level` (≥ 1) closes after a child whose last
/// item has digest `d` (and which is not the node's first child).
pub fn is_inner_boundary(d: &[u8; 32], level: u32) -> bool {
    h(d, level as usize) < u32::MAX / INNER_DIVISOR
}

/// A reference to a node: its blob id and how many items lie below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRef {
    pub id: Id,
    pub count: u64,
}

/// A decoded node.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<T> {
    Leaf(Vec<T>),
    Inner { level: u32, children: Vec<ChildRef> },
}

/// A finished node, ready to be stored as a tree blob.
#[derive(Debug, Clone)]
pub struct EncodedNode {
    pub id: Id,
    pub plain: Vec<u8>,
}

#[derive(Serialize)]
struct InnerOut<'a> {
    v: u32,
    level: u32,
    children: &'a [ChildRef],
}

struct OpenInner {
    children: Vec<ChildRef>,
}

/// Builds a list tree from items pushed in order. Pure: it returns the
/// nodes to store and never does I/O. Holds one open node per level, so
/// its memory is O(depth × node size) whatever the list's length.
pub struct TreeBuilder<T: TreeItem> {
    /// The open leaf's items, JSON-encoded and comma-separated.
    leaf: Vec<u8>,
    leaf_items: usize,
    /// levels[i]: the open inner node of level i+1.
    levels: Vec<OpenInner>,
    total: u64,
    _t: std::marker::PhantomData<T>,
}

impl<T: TreeItem> Default for TreeBuilder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: TreeItem> TreeBuilder<T> {
    pub fn new() -> Self {
        TreeBuilder {
            leaf: Vec::new(),
            leaf_items: 0,
            levels: Vec::new(),
            total: 0,
            _t: std::marker::PhantomData,
        }
    }

    /// Items pushed so far.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Add the next item; returns the nodes this closed (store them).
    pub fn push(&mut self, item: &T) -> Result<Vec<EncodedNode>> {
        let json = serde_json::to_vec(item).expect("tree item serializes");
        if json.len() > MAX_NODE_LEN - MAX_LEAF_JSON - 64 {
            return Err(Error::usage(format!(
                "an item of {} bytes of JSON is too large for a list tree node (at most {} bytes)",
                json.len(),
                MAX_NODE_LEN - MAX_LEAF_JSON - 64
            )));
        }
        if self.leaf_items > 0 {
            self.leaf.push(b',');
        }
        self.leaf.extend_from_slice(&json);
        self.leaf_items += 1;
        self.total += 1;
        let d = boundary_digest(item.key_bytes());
        let mut out = vec![];
        if is_leaf_boundary::<T>(&d)
            || self.leaf.len() >= MAX_LEAF_JSON
            || self.leaf_items >= T::MAX_LEAF_ITEMS
        {
            self.close_leaf(&d, &mut out);
        }
        Ok(out)
    }

    /// Encode the open leaf as a node and empty it.
    fn take_leaf(&mut self) -> (EncodedNode, ChildRef) {
        let mut plain = Vec::with_capacity(self.leaf.len() + 48);
        plain.extend_from_slice(
            format!("{{\"v\":{NODE_VERSION},\"level\":0,\"{}\":[", T::LEAF_FIELD).as_bytes(),
        );
        plain.extend_from_slice(&self.leaf);
        plain.extend_from_slice(b"]}");
        let id = Id::hash(&plain);
        let r = ChildRef {
            id,
            count: self.leaf_items as u64,
        };
        self.leaf.clear();
        self.leaf_items = 0;
        (EncodedNode { id, plain }, r)
    }

    fn close_leaf(&mut self, last: &[u8; 32], out: &mut Vec<EncodedNode>) {
        let (node, r) = self.take_leaf();
        out.push(node);
        self.add_child(1, r, Some(last), out);
    }

    /// Append `r` to the open node of `level`; close it on a boundary
    /// (`last` = the digest of the child's last item; None = never).
    fn add_child(
        &mut self,
        level: u32,
        r: ChildRef,
        last: Option<&[u8; 32]>,
        out: &mut Vec<EncodedNode>,
    ) {
        let i = level as usize - 1;
        if self.levels.len() <= i {
            self.levels.push(OpenInner { children: vec![] });
        }
        self.levels[i].children.push(r);
        let n = self.levels[i].children.len();
        let boundary = last.is_some_and(|d| n >= 2 && is_inner_boundary(d, level));
        if boundary || n >= MAX_CHILDREN {
            let (node, r) = self.close_inner(level);
            out.push(node);
            self.add_child(level + 1, r, last, out);
        }
    }

    fn close_inner(&mut self, level: u32) -> (EncodedNode, ChildRef) {
        let children = std::mem::take(&mut self.levels[level as usize - 1].children);
        let count = children.iter().map(|c| c.count).sum();
        let plain = serde_json::to_vec(&InnerOut {
            v: NODE_VERSION,
            level,
            children: &children,
        })
        .expect("inner node serializes");
        let id = Id::hash(&plain);
        (EncodedNode { id, plain }, ChildRef { id, count })
    }

    /// Close every open node; returns the root and the nodes to store.
    /// An empty list is a single empty leaf.
    pub fn finish(mut self) -> (ChildRef, Vec<EncodedNode>) {
        let mut out = vec![];
        if self.leaf_items > 0 || self.total == 0 {
            // The last leaf's end is the list's end, not a key boundary:
            // it adds no inner boundary (`None`).
            let (node, r) = self.take_leaf();
            out.push(node);
            if self.total == 0 {
                return (r, out);
            }
            self.add_child(1, r, None, &mut out);
        }
        let mut level = 1u32;
        loop {
            let i = level as usize - 1;
            let top = i + 1 == self.levels.len();
            let n = self.levels[i].children.len();
            if top && n == 1 {
                return (self.levels[i].children[0], out);
            }
            if n > 0 {
                let (node, r) = self.close_inner(level);
                out.push(node);
                self.add_child(level + 1, r, None, &mut out);
            }
            level += 1;
        }
    }
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: DeserializeOwned"))]
struct RawNode<T> {
    v: u32,
    level: u32,
    #[serde(default)]
    entries: Option<Vec<T>>,
    #[serde(default)]
    ids: Option<Vec<T>>,
    #[serde(default)]
    children: Option<Vec<ChildRef>>,
}

/// Decode and check node `id`: its level must be `level` when given (one
/// below its parent's; any level for a root), and its items must number
/// `count` when given (what its parent says; unknown for a chunk tree's
/// root). Unknown JSON fields are ignored.
pub fn decode_node<T: TreeItem>(
    plain: &[u8],
    id: &Id,
    count: Option<u64>,
    level: Option<u32>,
) -> Result<Node<T>> {
    let what = "list tree node";
    let bad = |m: String| Error::format(what, format!("node {}: {m}", id.short()));
    if plain.len() > MAX_NODE_LEN {
        return Err(bad(format!(
            "{} bytes, more than {MAX_NODE_LEN}",
            plain.len()
        )));
    }
    let raw: RawNode<T> = serde_json::from_slice(plain).map_err(|e| bad(e.to_string()))?;
    if raw.v != NODE_VERSION {
        return Err(bad(format!("unsupported node version {}", raw.v)));
    }
    if let Some(want) = level {
        if raw.level != want {
            return Err(bad(format!(
                "level {} where its parent requires level {want}",
                raw.level
            )));
        }
    }
    if raw.level > MAX_LEVEL {
        return Err(bad(format!("level {} too deep", raw.level)));
    }
    let (items, other) = if T::LEAF_FIELD == "entries" {
        (raw.entries, raw.ids)
    } else {
        (raw.ids, raw.entries)
    };
    if other.is_some() {
        return Err(bad("holds the wrong kind of items".into()));
    }
    let node = match (raw.level, items, raw.children) {
        (0, Some(items), None) => {
            if count.is_some_and(|n| n != items.len() as u64) {
                return Err(bad(format!(
                    "holds {} items, its parent says {count:?}",
                    items.len(),
                )));
            }
            Node::Leaf(items)
        }
        (l, None, Some(children)) if l > 0 => {
            let sum = children
                .iter()
                .try_fold(0u64, |a, c| a.checked_add(c.count));
            let count_ok = count.is_none_or(|n| sum == Some(n)) && sum.is_some();
            if children.is_empty() || !count_ok || children.iter().any(|c| c.count == 0) {
                return Err(bad(format!(
                    "children count {sum:?} items (none may be empty), its parent says {count:?}"
                )));
            }
            Node::Inner { level: l, children }
        }
        _ => return Err(bad("neither a leaf nor an inner node".into())),
    };
    Ok(node)
}

/// In-order iteration over a tree held in a map (tests, fuzzing): the same
/// checks as the repository's reader.
pub fn collect_in_memory<T: TreeItem>(
    root: &ChildRef,
    get: &dyn Fn(&Id) -> Option<Vec<u8>>,
) -> Result<Vec<T>> {
    let mut out = vec![];
    let mut stack: Vec<(ChildRef, Option<u32>)> = vec![(*root, None)];
    while let Some((r, level)) = stack.pop() {
        let plain = get(&r.id)
            .ok_or_else(|| Error::integrity(format!("tree node {} missing", r.id.short())))?;
        if Id::hash(&plain) != r.id {
            return Err(Error::integrity("tree node does not match its id"));
        }
        match decode_node::<T>(&plain, &r.id, Some(r.count), level)? {
            Node::Leaf(items) => out.extend(items),
            Node::Inner { level, children } => {
                for c in children.into_iter().rev() {
                    stack.push((c, Some(level - 1)));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::EntryType;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn entry(path: String, size: u64) -> Entry {
        Entry {
            mode: 0o644,
            mtime_ns: 1,
            size,
            ..Entry::bare(path, EntryType::File)
        }
    }

    fn build<T: TreeItem>(items: &[T]) -> (ChildRef, HashMap<Id, Vec<u8>>) {
        let mut b = TreeBuilder::new();
        let mut store = HashMap::new();
        for i in items {
            for n in b.push(i).unwrap() {
                store.insert(n.id, n.plain);
            }
        }
        let (root, nodes) = b.finish();
        for n in nodes {
            store.insert(n.id, n.plain);
        }
        (root, store)
    }

    /// Nodes reachable from root.
    fn reachable(root: &ChildRef, store: &HashMap<Id, Vec<u8>>) -> HashSet<Id> {
        let mut seen = HashSet::new();
        let mut stack = vec![root.id];
        while let Some(id) = stack.pop() {
            seen.insert(id);
            let v: serde_json::Value = serde_json::from_slice(&store[&id]).unwrap();
            if let Some(c) = v.get("children") {
                for c in c.as_array().unwrap() {
                    stack.push(Id::parse(c["id"].as_str().unwrap()).unwrap());
                }
            }
        }
        seen
    }

    fn depth(root: &ChildRef, store: &HashMap<Id, Vec<u8>>) -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&store[&root.id]).unwrap();
        v["level"].as_u64().unwrap() + 1
    }

    fn entries(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| entry(format!("d{}/f{i:07}", i / 1000), i as u64))
            .collect()
    }

    #[test]
    fn empty_list_is_one_empty_leaf() {
        let (root, store) = build::<Entry>(&[]);
        assert_eq!(root.count, 0);
        assert_eq!(store.len(), 1);
        assert_eq!(
            &store[&root.id][..],
            br#"{"v":1,"level":0,"entries":[]}"#.as_slice()
        );
        let got: Vec<Entry> = collect_in_memory(&root, &|id| store.get(id).cloned()).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn big_list_round_trips_with_expected_shape() {
        let items = entries(100_000);
        let (root, store) = build(&items);
        assert_eq!(root.count, 100_000);
        let got: Vec<Entry> = collect_in_memory(&root, &|id| store.get(id).cloned()).unwrap();
        assert_eq!(got, items);
        // ~64 entries a leaf, ~128 children a node: 3 levels.
        let leaves = store
            .values()
            .filter(|p| p.starts_with(br#"{"v":1,"level":0"#))
            .count();
        assert!((100_000 / 100..100_000 / 40).contains(&leaves), "{leaves}");
        assert_eq!(depth(&root, &store), 3);
        for p in store.values() {
            assert!(p.len() < MAX_NODE_LEN);
        }
    }

    #[test]
    fn chunk_id_lists_round_trip() {
        let ids: Vec<Id> = (0..20_000u32).map(|i| Id::hash(&i.to_le_bytes())).collect();
        let (root, store) = build(&ids);
        let got: Vec<Id> = collect_in_memory(&root, &|id| store.get(id).cloned()).unwrap();
        assert_eq!(got, ids);
        // The same id 100k times (a file of zeros): few, bounded nodes.
        let same = vec![Id([7; 32]); 100_000];
        let (root, store) = build(&same);
        let got: Vec<Id> = collect_in_memory(&root, &|id| store.get(id).cloned()).unwrap();
        assert_eq!(got, same);
        assert!(store.len() < 10, "{}", store.len());
        // An entry tree is not a chunk tree.
        assert!(collect_in_memory::<Entry>(&root, &|id| store.get(id).cloned()).is_err());
    }

    #[test]
    fn damaged_trees_are_refused() {
        let items = entries(3000);
        let (root, store) = build(&items);
        let get = |s: &HashMap<Id, Vec<u8>>, id: &Id| s.get(id).cloned();
        // Wrong count at the root.
        let wrong = ChildRef {
            id: root.id,
            count: root.count + 1,
        };
        assert!(collect_in_memory::<Entry>(&wrong, &|id| get(&store, id)).is_err());
        // A node whose level is not one below its parent's: a leaf under
        // a level-2 node.
        let (leaf, mut s2) = build(&[entry("a".into(), 1)]);
        assert_eq!(leaf.count, 1);
        let inner = format!(
            r#"{{"v":1,"level":2,"children":[{{"id":"{}","count":1}}]}}"#,
            leaf.id
        );
        let r = ChildRef {
            id: Id::hash(inner.as_bytes()),
            count: 1,
        };
        s2.insert(r.id, inner.into_bytes());
        let e = collect_in_memory::<Entry>(&r, &|id| get(&s2, id)).unwrap_err();
        assert!(
            e.to_string()
                .contains("level 0 where its parent requires level 1"),
            "{e}"
        );
        // Unknown version, missing node.
        let v2 = br#"{"v":2,"level":0,"entries":[]}"#;
        assert!(decode_node::<Entry>(v2, &leaf.id, None, None).is_err());
        let mut s3 = store.clone();
        s3.retain(|id, _| *id == root.id);
        assert!(collect_in_memory::<Entry>(&root, &|id| get(&s3, id)).is_err());
    }

    fn changed_nodes(a: &[Entry], b: &[Entry]) -> (usize, u64) {
        let (ra, sa) = build(a);
        let (rb, sb) = build(b);
        let old = reachable(&ra, &sa);
        let new = reachable(&rb, &sb);
        (new.difference(&old).count(), depth(&rb, &sb))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn any_list_round_trips(
            paths in proptest::collection::vec("[a-z]{1,6}(/[a-z0-9.]{1,8}){0,3}", 0..3000),
            sizes in proptest::collection::vec(any::<u64>(), 3000),
        ) {
            let items: Vec<Entry> = paths
                .into_iter()
                .zip(sizes)
                .map(|(p, s)| entry(p, s))
                .collect();
            let (root, store) = build(&items);
            prop_assert_eq!(root.count, items.len() as u64);
            let got: Vec<Entry> = collect_in_memory(&root, &|id| store.get(id).cloned()).unwrap();
            prop_assert_eq!(got, items);
        }

        /// Changing one entry's content changes exactly the nodes on its
        /// path to the root: one per level.
        #[test]
        fn a_changed_entry_changes_only_its_path(n in 1usize..20_000, pick in any::<prop::sample::Index>()) {
            let a = entries(n);
            let mut b = a.clone();
            let i = pick.index(n);
            b[i].size += 1;
            let (changed, depth) = changed_nodes(&a, &b);
            prop_assert_eq!(changed as u64, depth);
        }

        /// Inserting or removing one entry changes O(depth) nodes.
        #[test]
        fn an_inserted_entry_changes_o_depth_nodes(n in 1usize..20_000, pick in any::<prop::sample::Index>()) {
            let a = entries(n);
            let i = pick.index(n);
            let mut b = a.clone();
            b.insert(i, entry(format!("{}x", a[i].path), 5));
            let (changed, depth) = changed_nodes(&a, &b);
            prop_assert!(changed as u64 <= 2 * depth + 1, "{} nodes changed, depth {}", changed, depth);
            let mut c = a.clone();
            c.remove(i);
            let (changed, depth) = changed_nodes(&a, &c);
            prop_assert!(changed as u64 <= 2 * depth + 1, "{} nodes changed, depth {}", changed, depth);
        }
    }
}
