//! The operations usdcop-dr offers, as library calls that return reports.
//! The CLI parses flags into these option structs and renders the results.

pub mod backup;
pub mod backup_all;
pub mod basebackup;
pub mod drill;
mod drill_pitr;
pub mod pg_verify;
pub mod prune;
pub mod recover;
pub mod repair;
pub mod restore;
pub mod restore_bucket;
pub(crate) mod restore_fs;
pub mod restore_pitr;
pub mod restore_postgres;
pub mod snapshots;
pub mod stats;
pub mod status;
pub mod verify;
pub mod wal;
pub mod wal_async;
pub mod wal_spool;
pub mod wal_verify;
