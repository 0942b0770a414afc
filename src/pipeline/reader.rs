//! Reading streams back: chunks fetched and decoded in parallel, handed
//! out in order, with a bounded number in flight.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};

use crate::error::Result;
use crate::format::Id;
use crate::repository::{MasterIndex, Repository};

/// Chunks in flight per stream: enough to keep every core decoding and the
/// store busy, few enough that memory stays at a few dozen MiB.
pub fn default_depth() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) + 2
}

#[derive(Clone)]
pub struct ChunkReader {
    repo: Arc<Repository>,
    index: Arc<MasterIndex>,
    depth: usize,
}

impl ChunkReader {
    pub fn new(repo: Arc<Repository>, index: Arc<MasterIndex>) -> Self {
        ChunkReader {
            repo,
            index,
            depth: default_depth(),
        }
    }

    /// The chunks' plaintext, in order, each already checked against its id.
    pub fn stream(&self, ids: Vec<Id>) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let repo = self.repo.clone();
        let index = self.index.clone();
        stream::iter(ids)
            .map(move |id| {
                let repo = repo.clone();
                let index = index.clone();
                async move { repo.read_blob(&index, &id).await }
            })
            .buffered(self.depth)
    }
}
