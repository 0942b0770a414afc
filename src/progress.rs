//! Progress reporting. The library reports; only the binary draws bars.
//!
//! Problems that do not stop a command are [`Warning`]s: each goes to the
//! [`Progress`] sink as it happens (so a person sees it at once) and into the
//! command's result (`warnings` in every `--json` report), so a cron job sees
//! it too. Which kinds make the command fail is decided by
//! [`WarningKind::is_failure`] (docs/CLI.md, "Warnings").

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What a warning is about. Serialized in snake_case (`"not_utf8_name"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A file whose name is not UTF-8 was skipped: snapshots store UTF-8
    /// paths only. The file is not in the snapshot: a failure.
    NotUtf8Name,
    /// A socket, FIFO or device was skipped: it has no content to back up.
    SpecialFile,
    /// A file or object listed at the start was gone when it was read
    /// (deleted meanwhile): the snapshot matches the source as it is now.
    Vanished,
    /// A file's size or modification time changed while it was read: the
    /// stored copy may mix old and new content.
    Changed,
    /// Packs in no index (verify).
    UnindexedPacks,
    /// An option that could not be honoured (restore postgres `--jobs`).
    OptionIgnored,
    /// An error psql reported while applying roles (restore postgres `--globals`).
    Globals,
    /// A stray or damaged repository object that was skipped (an S3
    /// console folder object or an NFS silly-rename file under `index/`,
    /// a damaged index object, a malformed key object).
    SkippedObject,
}

impl WarningKind {
    /// Whether the command fails (exit 1) because of it, after writing its
    /// result. Only data that the user asked for and that is missing from
    /// the result fails: a cron job must not report success for a snapshot
    /// that silently lacks a file. Things that have nothing to save
    /// (sockets, FIFOs, devices) or no longer exist (deleted during the run)
    /// are warnings only.
    pub fn is_failure(self) -> bool {
        matches!(self, WarningKind::NotUtf8Name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::NotUtf8Name => "not_utf8_name",
            WarningKind::SpecialFile => "special_file",
            WarningKind::Vanished => "vanished",
            WarningKind::Changed => "changed",
            WarningKind::UnindexedPacks => "unindexed_packs",
            WarningKind::OptionIgnored => "option_ignored",
            WarningKind::Globals => "globals",
            WarningKind::SkippedObject => "skipped_object",
        }
    }
}

/// A non-fatal problem: `{"kind", "path", "message"}` in `--json` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub kind: WarningKind,
    /// The file path, `s3://bucket/key`, object or option concerned.
    pub path: String,
    /// What happened, for a person (does not repeat the path).
    pub message: String,
}

impl Warning {
    pub fn new(kind: WarningKind, path: impl Into<String>, message: impl Into<String>) -> Self {
        Warning {
            kind,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Receives progress events from long operations. All methods have no-op
/// defaults, so a sink implements only what it shows.
pub trait Progress: Send + Sync {
    /// Total bytes expected, when known.
    fn set_total(&self, _bytes: u64) {}
    /// Bytes read from the source (backup) or written out (restore).
    fn add_bytes(&self, _bytes: u64) {}
    /// The file or object being worked on.
    fn set_item(&self, _name: &str) {}
    /// A message worth telling a person now about a problem that the
    /// command's result also reports in its own way (a failed file, …).
    fn warn(&self, _message: &str) {}
    /// A problem that must reach the command's `warnings` (see [`Collector`]).
    fn warning(&self, w: &Warning) {
        self.warn(&w.to_string());
    }
}

/// Reports nothing: for cron jobs and tests.
pub struct Silent;
impl Progress for Silent {}

/// Passes everything on to another sink and keeps every [`Warning`], so a
/// command can put them in its result.
pub struct Collector {
    inner: Arc<dyn Progress>,
    warnings: Mutex<Vec<Warning>>,
}

impl Collector {
    pub fn new(inner: Arc<dyn Progress>) -> Arc<Collector> {
        Arc::new(Collector {
            inner,
            warnings: Mutex::new(Vec::new()),
        })
    }

    /// The warnings so far, in the order they happened, leaving none.
    pub fn take(&self) -> Vec<Warning> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Progress for Collector {
    fn set_total(&self, bytes: u64) {
        self.inner.set_total(bytes);
    }
    fn add_bytes(&self, bytes: u64) {
        self.inner.add_bytes(bytes);
    }
    fn set_item(&self, name: &str) {
        self.inner.set_item(name);
    }
    fn warn(&self, message: &str) {
        self.inner.warn(message);
    }
    fn warning(&self, w: &Warning) {
        self.inner.warning(w);
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w.clone());
    }
}

/// Bytes as people read them: "512 B", "1.5 MiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_keeps_warnings_and_passes_them_on() {
        struct Count(Mutex<Vec<String>>);
        impl Progress for Count {
            fn warn(&self, m: &str) {
                self.0.lock().unwrap().push(m.to_owned());
            }
        }
        let inner = Arc::new(Count(Mutex::new(vec![])));
        let c = Collector::new(inner.clone());
        c.warn("already reported elsewhere");
        c.warning(&Warning::new(
            WarningKind::SpecialFile,
            "/run/x.sock",
            "a socket",
        ));
        assert_eq!(
            *inner.0.lock().unwrap(),
            ["already reported elsewhere", "/run/x.sock: a socket"]
        );
        let w = c.take();
        assert_eq!(w.len(), 1);
        assert_eq!(
            serde_json::to_value(&w[0]).unwrap(),
            serde_json::json!({"kind": "special_file", "path": "/run/x.sock", "message": "a socket"})
        );
        assert!(c.take().is_empty());
    }
}
