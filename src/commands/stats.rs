//! `stats`: how big the repository is and how well it deduplicates.

use std::collections::HashSet;

use serde::Serialize;

use crate::backend::list_all;
use crate::error::Result;
use crate::format::names;
use crate::repository::Repository;

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub repository_id: String,
    pub location: String,
    pub snapshots: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    pub index_objects: u64,
    pub chunks: u64,
    /// Uncompressed size of all unique chunks.
    pub unique_bytes: u64,
    /// Sum of every snapshot's content size (what a full copy each time would store).
    pub snapshot_bytes: u64,
    /// snapshot_bytes / pack_bytes.
    pub space_saving_ratio: f64,
    pub chunker_avg_size: u32,
    pub compression_level: i32,
    pub pack_size: u32,
    /// Requests this command made to the store (S3 repositories only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<crate::backend::RequestCounts>,
}

pub async fn run(repo: &Repository) -> Result<Stats> {
    let index = repo.load_index().await?;
    let packs = list_all(repo.backend(), names::DATA).await?;
    let index_objects = list_all(repo.backend(), names::INDEX).await?.len() as u64;
    let snaps = repo.snapshots().await?;
    let pack_bytes: u64 = packs.iter().map(|p| p.size).sum();
    let mut unique_bytes = 0u64;
    let mut seen = HashSet::new();
    for (_, s) in &snaps {
        for id in repo.snapshot_blob_ids(&index, s).await?.ids {
            if seen.insert(id) {
                unique_bytes += index.get(&id).map_or(0, |l| l.raw_len as u64);
            }
        }
    }
    let snapshot_bytes: u64 = snaps.iter().map(|(_, s)| s.totals.bytes).sum();
    let c = repo.config();
    Ok(Stats {
        repository_id: c.id.clone(),
        location: repo.backend().location(),
        snapshots: snaps.len() as u64,
        packs: packs.len() as u64,
        pack_bytes,
        index_objects,
        chunks: index.blob_count() as u64,
        unique_bytes,
        snapshot_bytes,
        space_saving_ratio: if pack_bytes == 0 {
            0.0
        } else {
            snapshot_bytes as f64 / pack_bytes as f64
        },
        chunker_avg_size: c.chunker.avg_size,
        compression_level: c.compression_level,
        pack_size: c.pack_size,
        requests: repo.backend().request_counts(),
    })
}
