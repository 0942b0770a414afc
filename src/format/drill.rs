//! Restore drill records (docs/FORMAT.md §15): what a drill restored,
//! checked and measured, and its verdict. Stored in the repository as
//! `drills/<id>` (id: SHA-256 of the stored bytes), a sealed box
//! ([`Domain::Drill`]) of zstd-compressed JSON, so the drill history lives
//! offsite with the data. Pure: the record, its verdict rule, sealing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::codec;
use super::snapshot::SourceKind;
use super::Id;
use crate::crypto::{Domain, Key};
use crate::error::{Error, Result};

pub const DIR: &str = "drills/";
pub const VERSION: u32 = 1;
/// Records larger than this (decompressed) are refused.
pub const MAX_PLAIN_LEN: usize = 16 << 20;

/// Exit codes of `drill` (docs/CLI.md).
pub const EXIT_PASSED: i32 = 0;
pub const EXIT_CHECK_FAILED: i32 = 3;
pub const EXIT_OBJECTIVE_MISSED: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed and every objective was met.
    Passed,
    /// Every check passed, an objective was missed.
    ObjectiveMissed,
    /// A check failed (damaged data, a table that differs) or a restore
    /// could not be done.
    CheckFailed,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Passed => EXIT_PASSED,
            Verdict::ObjectiveMissed => EXIT_OBJECTIVE_MISSED,
            Verdict::CheckFailed => EXIT_CHECK_FAILED,
        }
    }
}

/// One check of a restored source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked ("stream sha256", "table public.bars rows and checksum", …).
    pub what: String,
    pub ok: bool,
    /// Figures, or what differs and where (source, snapshot, object).
    #[serde(default)]
    pub detail: String,
}

/// How long a restore took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// From the start of the restore to its first byte written.
    pub first_byte_s: Option<f64>,
    pub total_s: f64,
    pub bytes: u64,
}

impl Timing {
    /// MB/s (10^6 bytes) over the whole restore.
    pub fn throughput_mb_s(&self) -> f64 {
        if self.total_s > 0.0 {
            self.bytes as f64 / 1e6 / self.total_s
        } else {
            0.0
        }
    }
}

/// The recovery point of one source at the time of the drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rpo {
    /// The newest restorable point: the newest snapshot, or the newest
    /// recoverable time of the WAL archive when point-in-time recovery is on.
    pub newest_point: Option<DateTime<Utc>>,
    /// `snapshot` or `wal`.
    pub basis: String,
    /// Its age when the drill ran.
    pub age_s: Option<f64>,
    pub objective_s: f64,
    pub met: bool,
}

/// One source's drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceDrill {
    pub source: String,
    pub kind: SourceKind,
    pub snapshot: Option<Id>,
    pub snapshot_time: Option<DateTime<Utc>>,
    /// Where it was restored (a scratch database, bucket or directory).
    pub target: String,
    pub restore: Option<Timing>,
    pub checks: Vec<Check>,
    /// Why the restore could not be done, if it could not.
    pub error: Option<String>,
    pub rpo: Rpo,
    /// The point-in-time check of the `[wal]` source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr: Option<PitrDrill>,
}

impl SourceDrill {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.restore.is_some() && self.checks.iter().all(|c| c.ok)
    }

    /// Its objectives: the RPO of its newest point, and that of the
    /// point-in-time check when there was one.
    pub fn objectives_met(&self) -> bool {
        self.rpo.met && self.pitr.as_ref().is_none_or(|p| p.rpo_met)
    }

    /// The time to bring it back: the longer of its restores (a runbook
    /// restores the database one way: the dump, or base backup and WAL).
    pub fn restore_s(&self) -> Option<f64> {
        let pitr = self.pitr.as_ref().and_then(|p| p.total_s());
        match (self.restore.as_ref().map(|t| t.total_s), pitr) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The point-in-time check (`[wal]` configured): a marker row committed in
/// the source cluster for the purpose, a row committed after a target time
/// chosen between the two, the segment switched and archived; then the
/// newest base backup before the target restored into scratch and
/// recovered to it. Passed when the marker is there and the later row is
/// not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PitrDrill {
    /// The database of the source cluster holding the marker table.
    pub marker_database: String,
    /// When the marker row was committed (read after its commit).
    pub marker_written: Option<DateTime<Utc>>,
    /// The recovery target: after the marker, before the later row.
    pub target: Option<DateTime<Utc>>,
    /// From the marker's commit until its segment was in the archive.
    pub archived_after_s: Option<f64>,
    /// The server's archive_timeout (None: off, a quiet server switches
    /// segments only when one is full).
    pub archive_timeout_s: Option<f64>,
    pub base_backup: Option<Id>,
    /// The base backup's files restored.
    pub restore: Option<Timing>,
    /// From starting the server to its promotion at the target.
    pub recovery_s: Option<f64>,
    /// The last transaction replayed, and the new timeline.
    pub recovered_to: Option<DateTime<Utc>>,
    pub timeline: Option<u32>,
    /// Measured: how long after its commit the marker was recoverable
    /// from the archive (the segment switched by the drill).
    pub achieved_rpo_s: Option<f64>,
    /// The worst case on this server: `achieved_rpo_s` plus
    /// archive_timeout (a commit waits at most that long for its segment
    /// to be switched); None when archive_timeout is off.
    pub worst_rpo_s: Option<f64>,
    pub objective_s: f64,
    pub rpo_met: bool,
}

impl PitrDrill {
    /// Restore plus recovery, when both were done.
    pub fn total_s(&self) -> Option<f64> {
        Some(self.restore.as_ref()?.total_s + self.recovery_s?)
    }

    /// Judge the RPO: the worst case when archive_timeout bounds it, else
    /// what was measured.
    pub fn judge(&mut self) {
        self.worst_rpo_s = match (self.achieved_rpo_s, self.archive_timeout_s) {
            (Some(a), Some(t)) => Some(a + t),
            _ => None,
        };
        self.rpo_met = self
            .worst_rpo_s
            .or(self.achieved_rpo_s)
            .is_some_and(|a| a <= self.objective_s);
    }
}

/// The time to bring the whole system back, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rto {
    /// The restores one after the other, as the runbook runs them.
    pub achieved_s: f64,
    pub objective_s: Option<f64>,
    pub met: bool,
}

/// A drill: what it restored, checked and measured, and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub version: u32,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub host: String,
    pub program_version: String,
    pub repository: String,
    /// Only some sources were drilled (`--source`): no RTO is claimed for
    /// the whole system.
    pub partial: bool,
    pub sources: Vec<SourceDrill>,
    /// `None` when partial, or when nothing was restored.
    pub rto: Option<Rto>,
    pub verdict: Verdict,
    /// Why the drill stopped before its end (a scratch target that cannot
    /// be used, say): a failed drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The verdict of a drill over `sources`: a failed check or restore wins
/// (exit 3), then a missed objective (exit 4).
pub fn verdict(sources: &[SourceDrill], rto: Option<&Rto>) -> Verdict {
    if sources.is_empty() || sources.iter().any(|s| !s.passed()) {
        Verdict::CheckFailed
    } else if sources.iter().any(|s| !s.objectives_met()) || rto.is_some_and(|r| !r.met) {
        Verdict::ObjectiveMissed
    } else {
        Verdict::Passed
    }
}

/// The RTO of a whole-system drill: the restores in order (the runbook's
/// way), against the objective (none configured: met).
pub fn rto(sources: &[SourceDrill], objective_s: Option<f64>, partial: bool) -> Option<Rto> {
    if partial {
        return None;
    }
    let timings: Vec<f64> = sources.iter().filter_map(|s| s.restore_s()).collect();
    if timings.is_empty() {
        return None;
    }
    let achieved_s: f64 = timings.iter().sum();
    Some(Rto {
        achieved_s,
        objective_s,
        met: objective_s.is_none_or(|o| achieved_s <= o),
    })
}

/// The RPO judgement of a source whose newest restorable point is
/// `newest` (None: nothing to restore) at `now`.
pub fn rpo(
    newest: Option<DateTime<Utc>>,
    basis: &str,
    objective_s: f64,
    now: DateTime<Utc>,
) -> Rpo {
    let age_s = newest.map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    Rpo {
        newest_point: newest,
        basis: basis.to_owned(),
        age_s,
        objective_s,
        met: age_s.is_some_and(|a| a <= objective_s),
    }
}

impl DrillRecord {
    pub fn seal(&self, key: &Key) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("serializable");
        key.seal(Domain::Drill, &codec::compress(&json, 3))
    }

    /// Open `drills/<id>`: the seal, the id (hash of the stored bytes),
    /// the size bound, the version.
    pub fn open(key: &Key, id: &Id, sealed: &[u8]) -> Result<DrillRecord> {
        let name = format!("{DIR}{id}");
        if Id::hash(sealed) != *id {
            return Err(Error::integrity(format!(
                "{name} does not match its name (damaged)"
            )));
        }
        let z = key
            .open(Domain::Drill, sealed)
            .map_err(|e| e.context(&name))?;
        let json = codec::decompress(&z, MAX_PLAIN_LEN, "drill record")?;
        let r: DrillRecord = crate::format::meta::decode_json("drill record", &json)?;
        if r.version != VERSION {
            return Err(Error::format(
                "drill record",
                format!("unsupported version {}", r.version),
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, ok: bool, total_s: f64, age_s: i64) -> SourceDrill {
        let now = Utc::now();
        SourceDrill {
            source: name.into(),
            kind: SourceKind::Files,
            snapshot: Some(Id::hash(name.as_bytes())),
            snapshot_time: Some(now - chrono::Duration::seconds(age_s)),
            target: "/var/tmp/d".into(),
            restore: Some(Timing {
                first_byte_s: Some(0.1),
                total_s,
                bytes: 10_000_000,
            }),
            checks: vec![Check {
                what: "sha256".into(),
                ok,
                detail: String::new(),
            }],
            error: None,
            rpo: rpo(
                Some(now - chrono::Duration::seconds(age_s)),
                "snapshot",
                86_400.0,
                now,
            ),
            pitr: None,
        }
    }

    #[test]
    fn verdicts_and_exit_codes() {
        let good = vec![src("a", true, 10.0, 3600), src("b", true, 20.0, 7200)];
        let r = rto(&good, Some(4.0 * 3600.0), false).unwrap();
        assert_eq!(r.achieved_s, 30.0);
        assert!(r.met);
        assert_eq!(verdict(&good, Some(&r)), Verdict::Passed);
        assert_eq!(Verdict::Passed.exit_code(), 0);
        // a failed check wins over a missed objective
        let mut bad = good.clone();
        bad[1].checks[0].ok = false;
        bad[0].rpo.met = false;
        assert_eq!(verdict(&bad, Some(&r)), Verdict::CheckFailed);
        assert_eq!(Verdict::CheckFailed.exit_code(), 3);
        // a restore that could not be done is a failed check
        let mut failed = good.clone();
        failed[0].restore = None;
        failed[0].error = Some("pack missing".into());
        assert_eq!(verdict(&failed, Some(&r)), Verdict::CheckFailed);
        // an RPO miss
        let old = vec![src("a", true, 10.0, 2 * 86_400)];
        assert!(!old[0].rpo.met);
        assert_eq!(verdict(&old, None), Verdict::ObjectiveMissed);
        assert_eq!(Verdict::ObjectiveMissed.exit_code(), 4);
        // an RTO miss
        let slow = rto(&good, Some(29.0), false).unwrap();
        assert!(!slow.met);
        assert_eq!(verdict(&good, Some(&slow)), Verdict::ObjectiveMissed);
        // partial: no RTO claimed
        assert_eq!(rto(&good, Some(1.0), true), None);
        // nothing drilled is not a pass
        assert_eq!(verdict(&[], None), Verdict::CheckFailed);
        // no snapshot: RPO missed
        assert!(!rpo(None, "snapshot", 1.0, Utc::now()).met);
    }

    fn pitr(achieved: f64, timeout: Option<f64>, restore_s: f64) -> PitrDrill {
        let mut p = PitrDrill {
            marker_database: "postgres".into(),
            marker_written: Some(Utc::now()),
            target: Some(Utc::now()),
            archived_after_s: Some(achieved),
            archive_timeout_s: timeout,
            base_backup: None,
            restore: Some(Timing {
                first_byte_s: None,
                total_s: restore_s,
                bytes: 1,
            }),
            recovery_s: Some(2.0),
            recovered_to: Some(Utc::now()),
            timeline: Some(2),
            achieved_rpo_s: Some(achieved),
            worst_rpo_s: None,
            objective_s: 60.0,
            rpo_met: false,
        };
        p.judge();
        p
    }

    #[test]
    fn point_in_time_judgement_and_rto() {
        // measured 1.5 s, archive_timeout 30 s: worst 31.5 s against 60 s
        let p = pitr(1.5, Some(30.0), 5.0);
        assert_eq!(p.worst_rpo_s, Some(31.5));
        assert!(p.rpo_met);
        // archive_timeout 60 s: the worst case misses 60 s
        assert!(!pitr(1.5, Some(60.0), 5.0).rpo_met);
        // archive_timeout off: what was measured
        let off = pitr(1.5, None, 5.0);
        assert_eq!(off.worst_rpo_s, None);
        assert!(off.rpo_met);
        assert!(!pitr(61.0, None, 5.0).rpo_met);
        // the RTO counts the longer of the dump's restore and the PITR's
        let mut s = src("db", true, 10.0, 60);
        s.pitr = Some(pitr(1.5, None, 30.0));
        assert_eq!(s.restore_s(), Some(32.0));
        assert_eq!(rto(&[s.clone()], None, false).unwrap().achieved_s, 32.0);
        assert_eq!(verdict(&[s.clone()], None), Verdict::Passed);
        // a missed PITR objective is a missed objective, not a failure
        s.pitr = Some(pitr(100.0, None, 1.0));
        assert_eq!(verdict(&[s], None), Verdict::ObjectiveMissed);
    }

    #[test]
    fn records_seal_and_open() {
        let k = Key::random();
        let sources = vec![src("a", true, 10.0, 60)];
        let rto_ = rto(&sources, Some(14_400.0), false);
        let rec = DrillRecord {
            version: VERSION,
            started: Utc::now(),
            finished: Utc::now(),
            host: "h".into(),
            program_version: "0".into(),
            repository: "/r".into(),
            partial: false,
            verdict: verdict(&sources, rto_.as_ref()),
            rto: rto_,
            sources,
            error: None,
        };
        let sealed = rec.seal(&k);
        let id = Id::hash(&sealed);
        assert_eq!(DrillRecord::open(&k, &id, &sealed).unwrap(), rec);
        assert!(DrillRecord::open(&k, &Id::hash(b"x"), &sealed).is_err());
        assert!(DrillRecord::open(&Key::random(), &id, &sealed).is_err());
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert!(DrillRecord::open(&k, &Id::hash(&bad), &bad).is_err());
    }
}
