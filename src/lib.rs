//! usdcop-dr: streaming, deduplicated, encrypted, content-addressed backups.
//!
//! Layers, from pure to I/O (docs/ARCHITECTURE.md has the picture):
//! `format`, `chunker`, `crypto`, `config` and `retention` are pure (but
//! for their one read of files); `backend` is the storage seam;
//! `repository` ties keys, index, snapshots and locks together; `pipeline`
//! moves bytes; `source` reads what is backed up; `commands` are the
//! operations the CLI (in `src/main.rs` and `cli/`) exposes.

pub mod backend;
pub mod chunker;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod error;
pub mod format;
pub mod metrics;
pub mod pipeline;
pub mod postgres;
pub mod progress;
pub mod repository;
pub mod retention;
pub mod scratch;
pub mod source;
pub mod state;

pub use error::{Error, ErrorKind, Result};
