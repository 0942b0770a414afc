//! Retention: which snapshots to keep. Policy files (`policies/*.toml`,
//! [`policy`]) say it per source; [`evaluate()`] is the pure function that
//! decides every snapshot with the rules that keep it; [`report`] shows the
//! decisions. [`load`] is the one read (the folder); the rest is pure.
//!
//! The prune command (issue 11) loads the policies, evaluates them over
//! the repository's snapshots and removes what no rule keeps.

pub mod evaluate;
pub mod policy;
pub mod report;
pub mod wal;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use evaluate::{evaluate, Decision, Reason, SnapshotInfo};
pub use policy::{Count, Glob, Policy, PolicyError, PolicySet, Rules};
pub use report::{render_markdown, SourceDecisions};

use crate::error::{Error, Result};
use crate::format::snapshot::SourceKind;

/// Read every `*.toml` of `dir` (sorted by name) and check the policies
/// against the configured `sources` (`(name, kind)`, e.g.
/// [`crate::config::Settings::source_kinds`]).
pub fn load(dir: &Path, sources: &[(String, SourceKind)]) -> Result<PolicySet> {
    let files = policy_files(dir)?;
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| {
            Error::from(e)
                .context(format!("policy file {}", f.display()))
                .with_hint("make the file readable by the user that runs prune")
        })?;
        texts.push((f, text));
    }
    Ok(PolicySet::parse(dir, &texts, sources)?)
}

/// The policy files of `dir`: its `*.toml`, sorted by name.
pub fn policy_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Error::from(e)
            .context(format!("policy folder {}", dir.display()))
            .with_hint("create it (the source tree's policies/ is a start) or name another with [retention] policies")
    })?;
    let mut files = Vec::new();
    for e in entries {
        let e =
            e.map_err(|e| Error::from(e).context(format!("policy folder {}", dir.display())))?;
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) == Some("toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
