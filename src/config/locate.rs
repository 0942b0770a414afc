//! Places in a file of settings: byte spans to lines, and to the dotted key
//! they belong to; and the search for secrets written inline. Shared by the
//! configuration file and the retention policy files (`crate::retention`).

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::ConfigError;

pub(super) const PG_SECRET_HINT: &str = "PostgreSQL passwords never go in this file: use peer authentication over the Unix socket (run as the database's OS user), or ~/.pgpass (or the file PGPASSFILE names, mode 0600)";
pub(super) const AWS_SECRET_HINT: &str = "S3 keys never go in this file: put them in an AWS profile (~/.aws/credentials, mode 0600) and name it with `profile`";
const PASSPHRASE_HINT: &str = "the repository passphrase never goes in this file: put it in a root-owned 0600 file and name that file with [repository] password_file";

/// The text of one file, for turning spans into messages.
pub struct Located<'a> {
    text: &'a str,
    file: &'a Path,
}

impl<'a> Located<'a> {
    pub(crate) fn new(text: &'a str, file: &'a Path) -> Self {
        Located { text, file }
    }

    pub(crate) fn file(&self) -> &Path {
        self.file
    }

    /// 1-based line of byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    pub(crate) fn error(
        &self,
        span: Range<usize>,
        key: &str,
        message: String,
        hint: Option<&str>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: self.line(span.start),
            key: Some(key.to_owned()),
            message,
            hint: hint.map(str::to_owned),
        }
    }

    /// A parse or type error of the toml crate, with the key it concerns
    /// when `table` (the same text parsed untyped) can tell.
    pub(crate) fn toml_error(
        &self,
        e: &toml::de::Error,
        table: Option<&DeTable<'_>>,
    ) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let key = table
            .and_then(|t| key_at(t, span.start))
            .or_else(|| self.key_written_at(&span));
        // The crate's message is one line, without the snippet it would
        // add for Display.
        let message = e.message().trim().replace('\n', " ");
        let hint = if message.starts_with("unknown field") {
            Some("see usdcop-dr.example.toml and docs/OPERATIONS.md for the keys of each section")
        } else {
            None
        };
        ConfigError {
            file: self.file.to_owned(),
            line: self.line(span.start),
            key,
            message,
            hint: hint.map(str::to_owned),
        }
    }
}

impl Located<'_> {
    /// The key written at `span` (a duplicate key, which no parsed table
    /// holds), under the last `[table]` header before it.
    fn key_written_at(&self, span: &Range<usize>) -> Option<String> {
        let written = self.text.get(span.clone())?.trim();
        let bare = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        if !bare(written) {
            return None;
        }
        let before = &self.text[..span.start];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let header = before[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
        // A header line itself (`[repository]` twice) is its own key.
        if self.text[line_start..].trim_start().starts_with('[') {
            return Some(written.to_owned());
        }
        Some(match header {
            Some(h) if bare(&h) => format!("{h}.{written}"),
            _ => written.to_owned(),
        })
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && (offset < span.end || span.is_empty() && offset == span.start)
}

/// The dotted path (`source[1].dsn`) of the innermost key whose name or
/// value holds `offset`.
pub(crate) fn key_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    walk(table, "", &mut |path, key, value| {
        for span in [key.span(), value.span()] {
            if contains(&span, offset) {
                let size = span.len();
                if best.as_ref().is_none_or(|(s, _)| size <= *s) {
                    best = Some((size, path.to_owned()));
                }
            }
        }
    });
    best.map(|(_, p)| p)
}

type Visit<'v> = dyn FnMut(&str, &Spanned<std::borrow::Cow<'_, str>>, &Spanned<DeValue<'_>>) + 'v;

/// Every key of the tree, depth first, with its dotted path.
fn walk(table: &DeTable<'_>, prefix: &str, visit: &mut Visit<'_>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        visit(&path, k, v);
        walk_value(v, &path, visit);
    }
}

fn walk_value(v: &Spanned<DeValue<'_>>, path: &str, visit: &mut Visit<'_>) {
    match v.get_ref() {
        DeValue::Table(t) => walk(t, path, visit),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                walk_value(e, &format!("{path}[{i}]"), visit);
            }
        }
        _ => {}
    }
}

/// Key names that hold a secret (compared lower-case, `-` as `_`).
fn secret_kind(key: &str) -> Option<&'static str> {
    let k = key.to_ascii_lowercase().replace('-', "_");
    if k.ends_with("_file") || k.ends_with("_path") {
        return None;
    }
    const AWS: [&str; 5] = [
        "access_key",
        "secret",
        "session_token",
        "security_token",
        "credential",
    ];
    const PASS: [&str; 4] = ["password", "passwd", "passphrase", "token"];
    if AWS.iter().any(|w| k.contains(w)) {
        Some("aws")
    } else if PASS.iter().any(|w| k.contains(w)) || k == "pass" || k == "pwd" {
        Some("password")
    } else {
        None
    }
}

/// The first key anywhere in the file that holds a secret: an error
/// naming it, and where that secret goes instead.
pub(super) fn find_secret(table: &DeTable<'_>, at: &Located<'_>) -> Result<(), ConfigError> {
    let mut found: Option<ConfigError> = None;
    walk(table, "", &mut |path, key, _value| {
        if found.is_some() {
            return;
        }
        let Some(kind) = secret_kind(key.get_ref()) else {
            return;
        };
        let hint = match (kind, path.split(['.', '[']).next()) {
            ("aws", _) => AWS_SECRET_HINT,
            (_, Some("repository")) => PASSPHRASE_HINT,
            (_, Some("source")) => PG_SECRET_HINT,
            _ => "secrets never go in this file: the repository passphrase in [repository] password_file, S3 keys in an AWS profile, PostgreSQL passwords in ~/.pgpass or peer authentication",
        };
        found = Some(at.error(
            key.span(),
            path,
            format!("a secret written inline (`{}`)", key.get_ref()),
            Some(hint),
        ));
    });
    match found {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
