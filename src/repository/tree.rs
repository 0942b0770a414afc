//! Reading list trees (format/tree.rs): a snapshot's entries and a big
//! entry's chunk ids, depth first in list order, with a few node reads in
//! flight per level so that a walk over S3 is not one request at a time.
//! Memory: per level, at most [`PREFETCH`] nodes and one node's child list.

use std::collections::VecDeque;
use std::marker::PhantomData;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};

use super::{MasterIndex, Repository};
use crate::error::{Error, Result};
use crate::format::snapshot::{
    unsafe_entries, unsafe_entries_error, unsafe_entries_error_of, unsafe_entry, Entry,
    EntryChecker, EntryType, Snapshot, UNSAFE_SHOWN,
};
use crate::format::tree::{decode_node, ChildRef, Node, TreeItem};
use crate::format::Id;

/// Node reads in flight per level of the tree.
pub const PREFETCH: usize = 8;

type NodeRead<'a> = BoxFuture<'a, (ChildRef, Result<Bytes>)>;

struct Frame<'a> {
    /// The level its children must have (None: the root, any level).
    child_level: Option<u32>,
    /// Whether its children's item counts are known (not for a chunk
    /// tree's root: the entry records only its id).
    counts_known: bool,
    pending: VecDeque<ChildRef>,
    inflight: FuturesOrdered<NodeRead<'a>>,
}

/// Walks one list tree, leaf by leaf, checking every node: its blob id is
/// the SHA-256 of its plaintext (`read_blob`), its level is one below its
/// parent's, and its item count is what its parent says.
pub struct TreeWalker<'a, T> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    stack: Vec<Frame<'a>>,
    nodes_read: u64,
    /// Most node references (pending or being read) held at once.
    peak_held: usize,
    /// Ids of the nodes read, when asked for ([`Self::record_nodes`]).
    visited: Option<Vec<Id>>,
    /// The node whose read or decoding failed, if one did.
    failed: Option<Id>,
    _t: PhantomData<T>,
}

impl<'a, T: TreeItem> TreeWalker<'a, T> {
    pub fn new(repo: &'a Repository, index: &'a MasterIndex, root: ChildRef) -> Self {
        TreeWalker {
            repo,
            index,
            stack: vec![Frame {
                child_level: None,
                counts_known: true,
                pending: VecDeque::from([root]),
                inflight: FuturesOrdered::new(),
            }],
            nodes_read: 0,
            peak_held: 0,
            visited: None,
            failed: None,
            _t: PhantomData,
        }
    }

    /// Record the id of every node read (see [`Self::take_visited`]).
    pub fn record_nodes(mut self) -> Self {
        self.visited = Some(vec![]);
        self
    }

    /// The ids of the nodes read since the last call.
    pub fn take_visited(&mut self) -> Vec<Id> {
        self.visited
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Nodes read so far.
    pub fn nodes_read(&self) -> u64 {
        self.nodes_read
    }

    /// The most node references held at once (pending or in flight): the
    /// walk's memory bound, O(depth × node size).
    pub fn peak_held(&self) -> usize {
        self.peak_held
    }

    /// The next leaf's items and the leaf's id, in list order; `None` at the end.
    pub async fn next_leaf(&mut self) -> Result<Option<(Id, Vec<T>)>> {
        loop {
            let (repo, index) = (self.repo, self.index);
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            while frame.inflight.len() < PREFETCH {
                let Some(c) = frame.pending.pop_front() else {
                    break;
                };
                frame.inflight.push_back(Box::pin(async move {
                    (c, repo.read_blob(index, &c.id).await)
                }));
            }
            let held: usize = self
                .stack
                .iter()
                .map(|f| f.pending.len() + f.inflight.len())
                .sum();
            self.peak_held = self.peak_held.max(held);
            let frame = self.stack.last_mut().expect("not empty");
            let (level, counts_known) = (frame.child_level, frame.counts_known);
            let Some((c, plain)) = frame.inflight.next().await else {
                self.stack.pop();
                continue;
            };
            self.failed = Some(c.id);
            let plain = plain.map_err(|e| e.context(format!("list tree node {}", c.id.short())))?;
            self.nodes_read += 1;
            if let Some(v) = self.visited.as_mut() {
                v.push(c.id);
            }
            let count = counts_known.then_some(c.count);
            let node = decode_node::<T>(&plain, &c.id, count, level)?;
            self.failed = None;
            match node {
                Node::Leaf(items) => return Ok(Some((c.id, items))),
                Node::Inner { level, children } => self.stack.push(Frame {
                    child_level: Some(level - 1),
                    counts_known: true,
                    pending: children.into(),
                    inflight: FuturesOrdered::new(),
                }),
            }
        }
    }

    /// Every item, in order (the whole list in memory).
    pub async fn collect(mut self) -> Result<Vec<T>> {
        let mut out = vec![];
        while let Some((_, items)) = self.next_leaf().await? {
            out.extend(items);
        }
        Ok(out)
    }
}

/// A snapshot's entries one at a time, each checked as it streams (safe
/// path, not below a symlink entry met before it).
pub struct EntryStream<'a> {
    walker: TreeWalker<'a, Entry>,
    leaf: std::vec::IntoIter<Entry>,
    /// None: the caller checks the whole list itself (load_entries).
    checker: Option<EntryChecker>,
    seen: u64,
    expected: u64,
}

impl<'a> EntryStream<'a> {
    /// The next entry (chunk lists not expanded: an entry may carry a
    /// `chunk_tree`, see [`Repository::entry_chunks`]).
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            if let Some(e) = self.leaf.next() {
                self.seen += 1;
                if let Some(problem) = self.checker.as_mut().and_then(|c| c.check(&e)) {
                    return Err(unsafe_entries_error(&[problem]));
                }
                return Ok(Some(e));
            }
            match self.walker.next_leaf().await? {
                Some((_, items)) => self.leaf = items.into_iter(),
                None => {
                    if self.seen != self.expected {
                        return Err(Error::format(
                            "snapshot",
                            format!(
                                "its entry tree holds {} entries, the snapshot says {}",
                                self.seen, self.expected
                            ),
                        ));
                    }
                    return Ok(None);
                }
            }
        }
    }

    pub fn walker(&self) -> &TreeWalker<'a, Entry> {
        &self.walker
    }

    pub fn walker_mut(&mut self) -> &mut TreeWalker<'a, Entry> {
        &mut self.walker
    }
}

impl Repository {
    /// Walk a snapshot's entry list. `index` must cover its tree blobs.
    pub fn entries<'a>(&'a self, index: &'a MasterIndex, snap: &Snapshot) -> EntryStream<'a> {
        EntryStream {
            walker: TreeWalker::new(
                self,
                index,
                ChildRef {
                    id: snap.tree,
                    count: snap.entry_count,
                },
            ),
            leaf: Vec::new().into_iter(),
            checker: Some(EntryChecker::default()),
            seen: 0,
            expected: snap.entry_count,
        }
    }

    /// An entry's chunk ids, whichever form it stores them in.
    pub async fn entry_chunks(&self, index: &MasterIndex, e: &Entry) -> Result<Vec<Id>> {
        match &e.chunk_tree {
            None => Ok(e.chunks.clone()),
            Some(root) => {
                if !e.chunks.is_empty() {
                    return Err(Error::format(
                        "snapshot",
                        format!("entry {:?} has both chunks and a chunk tree", e.path),
                    ));
                }
                self.chunk_walker(index, *root)
                    .collect()
                    .await
                    .map_err(|err| err.context(format!("chunk list of {:?}", e.path)))
            }
        }
    }

    /// Walk a chunk list tree (its item count is checked by the nodes only).
    pub fn chunk_walker<'a>(&'a self, index: &'a MasterIndex, root: Id) -> TreeWalker<'a, Id> {
        let mut w = TreeWalker::new(self, index, ChildRef { id: root, count: 0 });
        // The root's count is not recorded in the entry: its own is taken.
        w.stack[0].counts_known = false;
        w
    }

    /// Every entry of a snapshot, chunk lists expanded into `chunks`, after
    /// the checks of [`unsafe_entries`] over the whole list (nothing below
    /// any symlink entry of the snapshot, wherever it comes).
    pub async fn load_entries(&self, index: &MasterIndex, snap: &Snapshot) -> Result<Vec<Entry>> {
        let mut stream = self.entries(index, snap);
        // Checked below over the whole list, so that every problem is named.
        stream.checker = None;
        let mut out = Vec::with_capacity(snap.entry_count.min(1 << 20) as usize);
        while let Some(mut e) = stream.next().await? {
            if e.chunk_tree.is_some() {
                e.chunks = self.entry_chunks(index, &e).await?;
                e.chunk_tree = None;
            }
            out.push(e);
        }
        let problems = unsafe_entries(&out);
        if !problems.is_empty() {
            return Err(unsafe_entries_error(&problems));
        }
        Ok(out)
    }
}

impl Repository {
    /// The checks of [`Repository::load_entries`] (those of
    /// [`unsafe_entries`] over the whole list) without holding the list:
    /// a first read gathers the symlink paths, and only if there are any a
    /// second read checks every entry against all of them. Memory: the
    /// symlink paths. `visit` sees every entry of the first read (to count
    /// what a restore will write before it writes anything). Fails with
    /// [`unsafe_entries_error`]-style text naming the first problems.
    pub async fn check_entries(
        &self,
        index: &MasterIndex,
        snap: &Snapshot,
        mut visit: impl FnMut(&Entry),
    ) -> Result<()> {
        let mut links = std::collections::HashSet::new();
        let mut first = vec![];
        let mut total = 0usize;
        let mut stream = self.entries(index, snap);
        stream.checker = None;
        while let Some(e) = stream.next().await? {
            visit(&e);
            // Without symlinks, the path check is the whole rule.
            note(unsafe_entry(&e, |_| false), &mut first, &mut total);
            if e.kind == EntryType::Symlink {
                links.insert(e.path);
            }
        }
        if !links.is_empty() {
            (first, total) = (vec![], 0);
            let mut stream = self.entries(index, snap);
            stream.checker = None;
            while let Some(e) = stream.next().await? {
                note(
                    unsafe_entry(&e, |p| links.contains(p)),
                    &mut first,
                    &mut total,
                );
            }
        }
        if total > 0 {
            return Err(unsafe_entries_error_of(&first, total));
        }
        Ok(())
    }
}

/// What a snapshot references, as far as it could be read.
#[derive(Debug)]
pub struct BlobRefs {
    /// Tree nodes read and data chunks named, sorted, without repeats.
    pub ids: Vec<Id>,
    /// The node that could not be read or was malformed (also in `ids`),
    /// and why: the rest of the list is unknown.
    pub unreadable: Option<(Id, Error)>,
}

impl Repository {
    /// Every blob a snapshot references: the nodes of its entry tree and
    /// of its entries' chunk trees, and every data chunk. Reading it checks
    /// every node (what `verify` needs). A node that cannot be read or is
    /// malformed (an integrity error) ends the walk and is reported in
    /// [`BlobRefs::unreadable`]; any other error (transport) fails.
    pub async fn snapshot_blob_ids(
        &self,
        index: &MasterIndex,
        snap: &Snapshot,
    ) -> Result<BlobRefs> {
        let mut out = vec![];
        let mut stream = self.entries(index, snap);
        stream.walker = stream.walker.record_nodes();
        let r: Result<()> = async {
            while let Some(e) = stream.next().await? {
                out.extend(stream.walker.take_visited());
                out.extend(e.chunks.iter().copied());
                if let Some(root) = e.chunk_tree {
                    let mut w = self.chunk_walker(index, root).record_nodes();
                    let r = async {
                        while let Some((_, ids)) = w.next_leaf().await? {
                            out.extend(ids);
                            out.extend(w.take_visited());
                        }
                        Ok::<_, Error>(())
                    }
                    .await;
                    out.extend(w.take_visited());
                    if let Err(err) = r {
                        stream.walker.failed = w.failed.or(Some(root));
                        return Err(err);
                    }
                }
            }
            Ok(())
        }
        .await;
        out.extend(stream.walker.take_visited());
        let unreadable = match r {
            Ok(()) => None,
            Err(e) if e.kind() == crate::ErrorKind::Integrity => {
                let node = stream.walker.failed.unwrap_or(snap.tree);
                out.push(node);
                Some((node, e))
            }
            Err(e) => return Err(e),
        };
        out.sort_unstable();
        out.dedup();
        Ok(BlobRefs {
            ids: out,
            unreadable,
        })
    }
}

/// Count a problem and keep the first [`UNSAFE_SHOWN`] of them.
fn note(problem: Option<String>, first: &mut Vec<String>, total: &mut usize) {
    if let Some(p) = problem {
        *total += 1;
        if first.len() < UNSAFE_SHOWN {
            first.push(p);
        }
    }
}
