//! The decisions per source, as JSON ([`SourceDecisions`]) and as a
//! Markdown table for people ([`render_markdown`]): the part of the prune
//! report that says what is kept, what is removed, and why.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::evaluate::{Decision, Reason, SnapshotInfo};
use super::policy::PolicySet;
use crate::format::snapshot::SourceKind;
use crate::format::Id;

/// One source's snapshots, newest first, with their decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDecisions {
    pub source: String,
    pub kind: SourceKind,
    /// The policy that decided (none: the source is kept whole).
    pub policy: Option<String>,
    pub kept: usize,
    pub removed: usize,
    pub snapshots: Vec<SnapshotDecision>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDecision {
    pub id: Id,
    pub time: DateTime<Utc>,
    pub host: String,
    pub keep: bool,
    pub reasons: Vec<Reason>,
}

/// Group `decisions` (as [`super::evaluate`] returned them for
/// `snapshots`) per source: sources by name then kind, snapshots newest
/// first.
pub fn by_source(
    snapshots: &[SnapshotInfo],
    decisions: &[Decision],
    policies: &PolicySet,
) -> Vec<SourceDecisions> {
    let mut groups: BTreeMap<(&str, &str), SourceDecisions> = BTreeMap::new();
    for (s, d) in snapshots.iter().zip(decisions) {
        let g = groups
            .entry((s.source_name.as_str(), s.source_kind.as_str()))
            .or_insert_with(|| SourceDecisions {
                source: s.source_name.clone(),
                kind: s.source_kind,
                policy: policies
                    .policy_for(&s.source_name, s.source_kind)
                    .map(|p| p.name.clone()),
                kept: 0,
                removed: 0,
                snapshots: Vec::new(),
            });
        if d.keep {
            g.kept += 1;
        } else {
            g.removed += 1;
        }
        g.snapshots.push(SnapshotDecision {
            id: d.id,
            time: s.time,
            host: s.host.clone(),
            keep: d.keep,
            reasons: d.reasons.clone(),
        });
    }
    groups
        .into_values()
        .map(|mut g| {
            g.snapshots
                .sort_by_key(|s| std::cmp::Reverse((s.time, s.id)));
            g
        })
        .collect()
}

/// A Markdown section per source: a heading with the policy and the
/// counts, then one table row per snapshot (times in `tz`).
pub fn render_markdown(groups: &[SourceDecisions], tz: chrono_tz::Tz) -> String {
    let mut t = String::new();
    for g in groups {
        t += &format!(
            "### {} ({})\n\n{}: {} kept, {} removed\n\n",
            cell(&g.source),
            g.kind.as_str(),
            match &g.policy {
                Some(p) => format!("policy `{}`", cell(p)),
                None => "no policy: kept whole".to_owned(),
            },
            g.kept,
            g.removed
        );
        t += &format!(
            "| snapshot | time ({}) | host | decision | kept by |\n|---|---|---|---|---|\n",
            tz.name()
        );
        for s in &g.snapshots {
            let reasons: Vec<String> = s.reasons.iter().map(|r| cell(&r.to_string())).collect();
            t += &format!(
                "| `{}` | {} | {} | {} | {} |\n",
                s.id.short(),
                s.time.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z"),
                cell(&s.host),
                if s.keep { "keep" } else { "**remove**" },
                if reasons.is_empty() {
                    "-".to_owned()
                } else {
                    reasons.join("; ")
                }
            );
        }
        t += "\n";
    }
    t
}

/// Text safe inside a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}
