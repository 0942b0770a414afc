//! Progress reporting. The library reports; only the binary draws bars.

/// Receives progress events from long operations. All methods have no-op
/// defaults, so a sink implements only what it shows.
pub trait Progress: Send + Sync {
    /// Total bytes expected, when known.
    fn set_total(&self, _bytes: u64) {}
    /// Bytes read from the source (backup) or written out (restore).
    fn add_bytes(&self, _bytes: u64) {}
    /// The file or object being worked on.
    fn set_item(&self, _name: &str) {}
    /// A non-fatal problem worth telling a person (skipped file, …).
    fn warn(&self, _message: &str) {}
}

/// Reports nothing: for cron jobs and tests.
pub struct Silent;
impl Progress for Silent {}
