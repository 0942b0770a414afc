//! `snapshots`: list what is in the repository.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::format::snapshot::{Snapshot, SourceKind};
use crate::format::Id;
use crate::repository::Repository;

/// One row of `snapshots --json` (docs/CLI.md).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRow {
    pub id: Id,
    pub short_id: String,
    pub time: DateTime<Utc>,
    pub source: String,
    pub kind: SourceKind,
    pub host: String,
    pub tags: Vec<String>,
    pub paths: Vec<String>,
    pub parent: Option<Id>,
    pub files: u64,
    pub bytes: u64,
    pub bytes_stored_new: u64,
    pub duration_s: f64,
    /// What the source recorded (PostgreSQL: the database's picture).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, serde_json::Value>,
}

impl SnapshotRow {
    pub fn new(id: Id, s: &Snapshot) -> Self {
        SnapshotRow {
            id,
            short_id: id.short(),
            time: s.time,
            source: s.source.name.clone(),
            kind: s.source.kind,
            host: s.host.clone(),
            tags: s.tags.clone(),
            paths: s.paths.clone(),
            parent: s.parent,
            files: s.totals.files,
            bytes: s.totals.bytes,
            bytes_stored_new: s.totals.bytes_stored_new,
            duration_s: s.duration_s,
            metadata: s.metadata.clone(),
        }
    }
}

/// Snapshots, oldest first, optionally of one source.
pub async fn list(repo: &Repository, source: Option<&str>) -> Result<Vec<SnapshotRow>> {
    Ok(repo
        .snapshots()
        .await?
        .iter()
        .filter(|(_, s)| source.is_none_or(|n| s.source.name == n))
        .map(|(id, s)| SnapshotRow::new(*id, s))
        .collect())
}
