//! Policy files (`policies/*.toml`): their shape, parsed and checked into a
//! [`PolicySet`]. Pure: texts in, policies or a [`PolicyError`] naming file,
//! line and key out ([`super::load`] is the one read of the folder).
//!
//! ```toml
//! [[policy]]
//! name = "database"                # optional; default "<file>#<n>"
//! sources = ["pg-usdcop"]          # names or globs (`*`, `?`), required
//! kinds = ["postgres"]             # optional: postgres bucket files stdin wal
//! keep_last = 3                    # counts: 0 or more, or "all"
//! keep_hourly = 24
//! keep_daily = 30
//! keep_weekly = 12
//! keep_monthly = 24
//! keep_yearly = 7
//! keep_within = "48h"              # a duration, as in the configuration
//! keep_tags = ["release"]
//! pitr_window = "7d"               # for point-in-time recovery (wal)
//! ```
//!
//! Checked against the configured sources: every policy covers at least
//! one, every source is covered by exactly one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use crate::config::{self, ConfigError, Located};
use crate::format::snapshot::SourceKind;

/// What is wrong with a policy file, and where: the configuration's error
/// type (`FILE:LINE: key `policy[2].keep_daily`: message`, and a hint).
pub type PolicyError = ConfigError;

const KEYS_HINT: &str = "see policies/README.md for the keys of a [[policy]]";

/// A bucket rule's count: how many buckets (days, weeks, …) it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    N(u32),
    /// `"all"`: every bucket.
    All,
}

impl Count {
    /// Whether a rule that has kept `kept` buckets may keep one more.
    pub fn allows(self, kept: usize) -> bool {
        match self {
            Count::All => true,
            Count::N(n) => kept < n as usize,
        }
    }
    fn keeps_something(self) -> bool {
        self != Count::N(0)
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::N(n) => write!(f, "{n}"),
            Count::All => f.write_str("all"),
        }
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::N(n) => s.serialize_u32(*n),
            Count::All => s.serialize_str("all"),
        }
    }
}

/// A source name or a glob of names: `*` any run of characters, `?` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// A name or glob made of what source names are made of (letters,
    /// digits, `-`, `_`, `.`) and `*`, `?`.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("is empty".into());
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_.*?".contains(*c)))
        {
            return Err(format!(
                "{pattern:?} is not a source name or glob: {c:?} is not allowed (names are letters, digits, '-', '_', '.'; globs add '*' and '?')"
            ));
        }
        Ok(Glob(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        glob_match(self.0.as_bytes(), name.as_bytes())
    }

    /// Whether it has wildcards (else it is one source's name).
    pub fn is_pattern(&self) -> bool {
        self.0.contains(['*', '?'])
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// `*` and `?` wildcard match, linear backtracking over the last `*`.
pub(crate) fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(c) if *c == b'?' || *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character.
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    p = sp + 1;
                    n = sn + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// The rules of one policy. A snapshot is kept when any rule keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Rules {
    pub keep_last: Option<Count>,
    pub keep_hourly: Option<Count>,
    pub keep_daily: Option<Count>,
    pub keep_weekly: Option<Count>,
    pub keep_monthly: Option<Count>,
    pub keep_yearly: Option<Count>,
    /// Keep every snapshot younger than this (relative to now).
    #[serde(serialize_with = "ser_duration")]
    pub keep_within: Option<Duration>,
    pub keep_tags: Vec<String>,
    /// Keep what point-in-time recovery within this window needs: applied
    /// to sources of a PITR kind (`wal`) only.
    #[serde(serialize_with = "ser_duration")]
    pub pitr_window: Option<Duration>,
}

fn ser_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&config::duration_text(*d)),
        None => s.serialize_none(),
    }
}

impl Rules {
    /// Whether some rule can keep a snapshot (a policy whose rules keep
    /// nothing would remove everything but the newest: refused).
    pub fn keeps_something(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ]
        .iter()
        .flatten()
        .any(|c| c.keeps_something())
            || self.keep_within.is_some()
            || !self.keep_tags.is_empty()
            || self.pitr_window.is_some()
    }
}

/// One `[[policy]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// `name`, or "<file name>#<n>" (n counted from 1 in its file).
    pub name: String,
    pub file: PathBuf,
    /// Line of its `sources` key.
    pub line: usize,
    /// Its place among its file's `[[policy]]` tables, from 0 (`policy[i]`).
    pub index: usize,
    pub sources: Vec<Glob>,
    /// The kinds it applies to; empty: every kind.
    pub kinds: Vec<SourceKind>,
    pub rules: Rules,
}

impl Policy {
    /// Whether this policy selects source `name` of `kind`.
    pub fn covers(&self, name: &str, kind: SourceKind) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && self.sources.iter().any(|g| g.matches(name))
    }

    /// `file:line`, for messages.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// Every policy of the folder, files sorted by name, tables in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
}

impl PolicySet {
    /// The policy of a source: the first that covers it (a checked set has
    /// at most one for each configured source; a source that is no longer
    /// configured but still has snapshots gets the first in folder order).
    pub fn policy_for(&self, name: &str, kind: SourceKind) -> Option<&Policy> {
        self.policies.iter().find(|p| p.covers(name, kind))
    }

    /// Parse the files (`(path, text)`, in the order given) and check them
    /// against the configured sources (`(name, kind)`). `dir` names the
    /// folder in errors that concern no single file.
    pub fn parse(
        dir: &Path,
        files: &[(PathBuf, String)],
        sources: &[(String, SourceKind)],
    ) -> Result<PolicySet, PolicyError> {
        let mut policies = Vec::new();
        for (path, text) in files {
            policies.extend(parse_file(text, path)?);
        }
        let set = PolicySet { policies };
        set.check(dir, sources)?;
        Ok(set)
    }

    /// The checks against the configured sources: every policy covers one,
    /// every source has exactly one policy.
    pub fn check(&self, dir: &Path, sources: &[(String, SourceKind)]) -> Result<(), PolicyError> {
        let listed = || {
            sources
                .iter()
                .map(|(n, k)| format!("{n} ({})", k.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for p in &self.policies {
            // A name (no wildcard) that is not a configured source of the
            // policy's kinds is a typo or a source that is gone. A policy
            // of globs only may match nothing: the shipped folder has one
            // per kind, for sites that have no source of some kind.
            let literal_unmatched = p.sources.iter().any(|g| {
                !g.is_pattern() && !sources.iter().any(|(n, k)| g.matches(n) && p.covers(n, *k))
            });
            if literal_unmatched {
                return Err(policy_error(
                    p,
                    "sources",
                    format!(
                        "policy {:?} names a source that is not configured (configured: {})",
                        p.name,
                        if sources.is_empty() {
                            "none".to_owned()
                        } else {
                            listed()
                        }
                    ),
                    "fix the name or kinds, or remove it: a name that matches nothing is a typo or a source that is gone",
                ));
            }
        }
        for (name, kind) in sources {
            let claimed: Vec<&Policy> = self
                .policies
                .iter()
                .filter(|p| p.covers(name, *kind))
                .collect();
            match claimed.as_slice() {
                [] => {
                    return Err(PolicyError {
                        file: dir.to_owned(),
                        line: 0,
                        key: None,
                        message: format!(
                            "source {name:?} ({}) is covered by no policy in {}",
                            kind.as_str(),
                            dir.display()
                        ),
                        hint: Some(format!(
                            "add a [[policy]] whose sources match {name:?} (sources = [\"*\"] with kinds = [\"{}\"] covers every {} source)",
                            kind.as_str(),
                            kind.as_str()
                        )),
                    })
                }
                [_] => {}
                [first, second, ..] => {
                    return Err(policy_error(
                        second,
                        "sources",
                        format!(
                            "source {name:?} ({}) is claimed by two policies: {:?} at {} and {:?} at {}",
                            kind.as_str(),
                            first.name,
                            first.place(),
                            second.name,
                            second.place()
                        ),
                        "narrow `sources` or `kinds` so that every source has exactly one policy",
                    ))
                }
            }
        }
        Ok(())
    }

    /// How many configured sources the set covers.
    pub fn covered(&self, sources: &[(String, SourceKind)]) -> usize {
        sources
            .iter()
            .filter(|(n, k)| self.policy_for(n, *k).is_some())
            .count()
    }
}

fn policy_error(p: &Policy, key: &str, message: String, hint: &str) -> PolicyError {
    PolicyError {
        file: p.file.clone(),
        line: p.line,
        key: Some(format!("policy[{}].{key}", p.index)),
        message,
        hint: Some(hint.to_owned()),
    }
}

// ---- the file as written --------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policy: Vec<RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<Spanned<String>>,
    sources: Spanned<Vec<Spanned<String>>>,
    kinds: Option<Spanned<Vec<Spanned<SourceKind>>>>,
    keep_last: Option<Spanned<toml::Value>>,
    keep_hourly: Option<Spanned<toml::Value>>,
    keep_daily: Option<Spanned<toml::Value>>,
    keep_weekly: Option<Spanned<toml::Value>>,
    keep_monthly: Option<Spanned<toml::Value>>,
    keep_yearly: Option<Spanned<toml::Value>>,
    keep_within: Option<Spanned<String>>,
    keep_tags: Option<Spanned<Vec<Spanned<String>>>>,
    pitr_window: Option<Spanned<String>>,
}

/// Parse one policy file (`text`, the content of `file`), without the
/// checks against the configured sources.
pub fn parse_file(text: &str, file: &Path) -> Result<Vec<Policy>, PolicyError> {
    let at = Located::new(text, file);
    let table = toml::de::DeTable::parse(text).map_err(|e| {
        let (partial, _) = toml::de::DeTable::parse_recoverable(text);
        toml_error(&at, &e, Some(partial.get_ref()))
    })?;
    let raw: RawFile =
        toml::from_str(text).map_err(|e| toml_error(&at, &e, Some(table.get_ref())))?;
    if raw.policy.is_empty() {
        return Err(PolicyError {
            file: file.to_owned(),
            line: 0,
            key: None,
            message: "holds no [[policy]] table".into(),
            hint: Some(
                "write one or more [[policy]] tables (policies/README.md), or remove the file"
                    .into(),
            ),
        });
    }
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let mut out: Vec<Policy> = Vec::new();
    for (i, p) in raw.policy.into_iter().enumerate() {
        out.push(check_policy(p, i, &file_name, &at)?);
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &out {
        if let Some(first) = names.insert(p.name.as_str(), p.line) {
            return Err(policy_error(
                p,
                "name",
                format!("duplicate policy name {:?} (first at line {first})", p.name),
                "every policy of a file needs its own name: reports name policies",
            ));
        }
    }
    Ok(out)
}

fn toml_error(
    at: &Located<'_>,
    e: &toml::de::Error,
    table: Option<&toml::de::DeTable<'_>>,
) -> PolicyError {
    let mut err = at.toml_error(e, table);
    if err.message.starts_with("unknown field") {
        err.hint = Some(KEYS_HINT.into());
    }
    err
}

fn check_policy(
    p: RawPolicy,
    i: usize,
    file_name: &str,
    at: &Located<'_>,
) -> Result<Policy, PolicyError> {
    let key = |k: &str| format!("policy[{i}].{k}");
    let line = at.line(p.sources.span().start);
    let name = match &p.name {
        Some(n) => {
            let t = n.get_ref().trim();
            if t.is_empty() {
                return Err(at.error(n.span(), &key("name"), "is empty".into(), None));
            }
            t.to_owned()
        }
        None => format!("{file_name}#{}", i + 1),
    };
    if p.sources.get_ref().is_empty() {
        return Err(at.error(
            p.sources.span(),
            &key("sources"),
            "is empty".into(),
            Some("name the sources, or write [\"*\"] (with `kinds`) for all of a kind"),
        ));
    }
    let mut sources = Vec::new();
    for s in p.sources.get_ref() {
        let g = Glob::new(s.get_ref().trim()).map_err(|m| {
            at.error(
                s.span(),
                &key("sources"),
                m,
                Some("write a source name or a glob with `*` and `?`"),
            )
        })?;
        sources.push(g);
    }
    let kinds = match &p.kinds {
        None => Vec::new(),
        Some(k) if k.get_ref().is_empty() => {
            return Err(at.error(
                k.span(),
                &key("kinds"),
                "is empty".into(),
                Some("leave `kinds` out for every kind, or name some: postgres, bucket, files, stdin, wal"),
            ))
        }
        Some(k) => k.get_ref().iter().map(|k| *k.get_ref()).collect(),
    };
    let count = |v: &Option<Spanned<toml::Value>>, k: &str| -> Result<Option<Count>, PolicyError> {
        let Some(v) = v else { return Ok(None) };
        let hint = Some("write a count of 0 or more, or \"all\"");
        match v.get_ref() {
            toml::Value::Integer(n) if *n < 0 => {
                Err(at.error(v.span(), &key(k), format!("negative count {n}"), hint))
            }
            toml::Value::Integer(n) => u32::try_from(*n)
                .map(|n| Some(Count::N(n)))
                .map_err(|_| at.error(v.span(), &key(k), format!("count {n} is too large"), hint)),
            toml::Value::String(s) if s.trim() == "all" => Ok(Some(Count::All)),
            toml::Value::String(s) => {
                Err(at.error(v.span(), &key(k), format!("{s:?} is not a count"), hint))
            }
            other => Err(at.error(
                v.span(),
                &key(k),
                format!(
                    "invalid type: {}, expected a count or \"all\"",
                    other.type_str()
                ),
                hint,
            )),
        }
    };
    let window = |v: &Option<Spanned<String>>, k: &str| -> Result<Option<Duration>, PolicyError> {
        v.as_ref()
            .map(|v| config::positive_duration(v, &key(k), at))
            .transpose()
    };
    let keep_tags = match &p.keep_tags {
        None => Vec::new(),
        Some(t) => {
            let mut tags = Vec::new();
            for tag in t.get_ref() {
                let s = tag.get_ref().trim();
                if s.is_empty() {
                    return Err(at.error(
                        tag.span(),
                        &key("keep_tags"),
                        "an empty tag".into(),
                        None,
                    ));
                }
                tags.push(s.to_owned());
            }
            tags
        }
    };
    let rules = Rules {
        keep_last: count(&p.keep_last, "keep_last")?,
        keep_hourly: count(&p.keep_hourly, "keep_hourly")?,
        keep_daily: count(&p.keep_daily, "keep_daily")?,
        keep_weekly: count(&p.keep_weekly, "keep_weekly")?,
        keep_monthly: count(&p.keep_monthly, "keep_monthly")?,
        keep_yearly: count(&p.keep_yearly, "keep_yearly")?,
        keep_within: window(&p.keep_within, "keep_within")?,
        keep_tags,
        pitr_window: window(&p.pitr_window, "pitr_window")?,
    };
    if !rules.keeps_something() {
        return Err(at.error(
            p.sources.span(),
            &format!("policy[{i}]"),
            format!("policy {name:?} keeps nothing: it would remove every snapshot but the newest"),
            Some("add a rule (keep_daily, keep_within, …); keep_last = 1 keeps only the newest on purpose"),
        ));
    }
    Ok(Policy {
        name,
        file: at.file().to_owned(),
        line,
        index: i,
        sources,
        kinds,
        rules,
    })
}
