//! `repair index`: rebuild index entries from the packs themselves.
//!
//! Packs carry their own encrypted header, so a lost or damaged index
//! object costs nothing but this scan. Only packs that no index lists are
//! read (two small ranged reads each); the result is new index objects,
//! each under the readers' size cap. Nothing is deleted.
//!
//! `repair index --compact` then rewrites all index objects as few (see
//! [`crate::repository::compact`]): the superseded ones are deleted after
//! their union is stored.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::backend::list_all;
use crate::error::Result;
use crate::format::index::{self as index_fmt, IndexBlob, IndexPack};
use crate::format::{names, pack, Id};
use crate::repository::compact::{compact, CompactOptions, CompactReport};
use crate::repository::Repository;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub packs_unindexed: u64,
    pub packs_reindexed: u64,
    pub chunks_recovered: u64,
    /// Index objects written for the re-indexed packs.
    pub index_written: Vec<Id>,
    /// What `--compact` did, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction: Option<CompactReport>,
    /// Packs whose header could not be read (damaged): name and reason.
    pub unreadable: Vec<(String, String)>,
    /// Unindexed packs left alone because prune condemned them.
    pub packs_condemned: u64,
    /// `--compact` not done: prune has condemned packs and compacts itself.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub compaction_deferred: bool,
}

pub async fn index(repo: Arc<Repository>) -> Result<RepairReport> {
    index_with(repo, index_fmt::TARGET_PLAIN_LEN).await
}

/// `repair index --compact`: re-index, then compact every index object —
/// unless prune has condemned packs: then compaction is prune's (a writer
/// must never copy the entries of a pack being deleted, docs/FORMAT.md §12).
pub async fn index_and_compact(repo: Arc<Repository>) -> Result<RepairReport> {
    let condemned = crate::repository::gc::load_condemned(&repo).await?;
    let mut report = index(repo.clone()).await?;
    if condemned.is_empty() {
        report.compaction = Some(compact(&repo, &CompactOptions::all(), None).await?);
    } else {
        report.compaction_deferred = true;
    }
    Ok(report)
}

/// [`index`] with index objects of at most `cap` plaintext bytes.
pub async fn index_with(repo: Arc<Repository>, cap: usize) -> Result<RepairReport> {
    // The store's index objects, not the local cache: an object damaged
    // since it was cached must count as missing here.
    // It writes index objects: the writer gate applies.
    repo.check_writable()?;
    // Condemned packs are never indexed again (docs/FORMAT.md §12): read
    // before the listing, so a pack deleted after this read is not listed.
    let condemned = crate::repository::gc::load_condemned(&repo).await?.packs();
    let index = repo.load_index_from_store().await?;
    let packs = list_all(repo.backend(), names::DATA).await?;
    let mut report = RepairReport {
        packs: packs.len() as u64,
        ..Default::default()
    };
    let todo: Vec<(Id, u64)> = packs
        .iter()
        .filter_map(|o| Some((names::id_of(&o.name)?, o.size)))
        .filter(|(id, _)| !index.has_pack(id))
        .filter(|(id, _)| {
            let c = condemned.contains(id);
            report.packs_condemned += c as u64;
            !c
        })
        .collect();
    report.packs_unindexed = todo.len() as u64;
    let results: Vec<_> = futures::stream::iter(todo)
        .map(|(id, size)| {
            let repo = repo.clone();
            async move { (id, repo.read_pack_header(&id, size).await) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut packs_found = vec![];
    for (id, r) in results {
        match r {
            Ok(entries) => {
                let header_offset: u64 = entries.iter().map(|e| e.stored_len as u64).sum();
                let offsets = pack::blob_offsets(&entries, header_offset)?;
                let blobs: Vec<IndexBlob> = entries
                    .iter()
                    .zip(offsets)
                    .map(|(e, off)| IndexBlob {
                        kind: e.kind,
                        compression: e.compression,
                        offset: off as u32,
                        stored_len: e.stored_len,
                        raw_len: e.raw_len,
                        id: e.id,
                    })
                    .collect();
                report.chunks_recovered += blobs.len() as u64;
                report.packs_reindexed += 1;
                packs_found.push(IndexPack { id, blobs });
            }
            Err(e) => report.unreadable.push((names::pack(&id), e.to_string())),
        }
    }
    // Deterministic output whatever order the reads finished in.
    packs_found.sort_by_key(|p| p.id);
    for file in index_fmt::split(packs_found, vec![], cap)? {
        report.index_written.push(repo.save_index(&file).await?);
    }
    Ok(report)
}
