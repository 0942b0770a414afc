//! Public error type: a kind callers can match on, the object it concerns,
//! and a hint a person can act on.
//!
//! The binary maps [`ErrorKind`] to an exit code (see [`Error::exit_code`]);
//! library code never prints.

use std::fmt;

/// What went wrong, coarsely: decides the exit code and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad flags, bad configuration, missing or wrong passphrase: exit 2.
    Usage,
    /// The stored data is damaged or inconsistent: exit 3.
    Integrity,
    /// The object, snapshot or file does not exist.
    NotFound,
    /// Atomic create found the object already there.
    AlreadyExists,
    /// Storage, network, source or local I/O failure: exit 1.
    Io,
    /// A source (pg_dump, a file, a stream) failed.
    Source,
    /// The operation was interrupted.
    Interrupted,
    /// Another process is doing the same work (another prune): exit 75
    /// (EX_TEMPFAIL), which systemd and cron wrappers treat as "try later".
    Busy,
}

#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }
    /// Decoding untrusted bytes failed: always an integrity problem.
    pub fn format(what: &str, detail: impl fmt::Display) -> Self {
        Self::integrity(format!("malformed {what}: {detail}"))
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
    /// Prefix the message with where it happened ("pack data/ab/ab12…: …").
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Whether repeating the same operation may succeed (network, throttling).
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Io
    }

    /// 0 success, 1 operational failure, 2 usage or configuration, 3 integrity.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Usage => 2,
            ErrorKind::Integrity => 3,
            ErrorKind::Busy => 75,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            std::io::ErrorKind::Interrupted => ErrorKind::Interrupted,
            _ => ErrorKind::Io,
        };
        Error::new(kind, e.to_string())
    }
}

/// Attach context to any fallible result in one call.
pub trait ResultExt<T> {
    fn ctx(self, context: impl fmt::Display) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn ctx(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
}
