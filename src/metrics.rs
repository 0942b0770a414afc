//! Prometheus metrics for node_exporter's textfile collector: rendered with
//! the `prometheus` crate's text encoder (exposition format 0.0.4) from
//! what `backup --all` knows at its end, and written atomically (a temporary
//! file in the same directory, then a rename), so the collector never reads
//! half a file. docs/OPERATIONS.md lists the metrics and contrib/ has alert
//! rules on them.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use prometheus::{Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};

use crate::error::{Error, Result};

/// One configured source, as the metrics show it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceMetrics {
    pub name: String,
    /// postgres, bucket or files.
    pub kind: String,
    /// Time of its newest snapshot (`None`: never backed up; shown as 0).
    pub last_success: Option<DateTime<Utc>>,
    /// Its snapshots in the repository (`None`: the repository could not be read).
    pub snapshots: Option<u64>,
    /// The source's last `backup --all` run (`None`: none recorded).
    pub last_run: Option<RunMetrics>,
    /// The recovery point objective it is held to.
    pub rpo_seconds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunMetrics {
    pub started: DateTime<Utc>,
    pub success: bool,
    pub duration_s: f64,
    pub bytes_read: u64,
    pub bytes_stored_new: u64,
}

/// Everything one metrics file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsInput {
    pub sources: Vec<SourceMetrics>,
    /// Whether this run could open the repository.
    pub repository_up: bool,
    /// Bytes stored in the repository (packs, indexes, snapshots), when known.
    pub repository_size_bytes: Option<u64>,
    /// The last prune, when one is recorded.
    pub last_prune: Option<crate::state::LastPrune>,
    /// The newest restore drill in the repository: `Some(None)` when there
    /// is none, `None` when the repository could not be read.
    pub last_drill: Option<Option<DrillMetrics>>,
}

/// The newest restore drill, as the metrics show it.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillMetrics {
    pub started: DateTime<Utc>,
    /// Every check passed and every objective met (exit 0).
    pub passed: bool,
    pub rto_achieved_s: Option<f64>,
}

fn ts(t: &DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn gauge_vec(registry: &Registry, name: &str, help: &str) -> Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), &["source", "kind"]).map_err(metrics_err)?;
    registry
        .register(Box::new(g.clone()))
        .map_err(metrics_err)?;
    Ok(g)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<Gauge> {
    let g = Gauge::with_opts(Opts::new(name, help)).map_err(metrics_err)?;
    registry
        .register(Box::new(g.clone()))
        .map_err(metrics_err)?;
    Ok(g)
}

fn metrics_err(e: prometheus::Error) -> Error {
    Error::io(format!("building the metrics: {e}"))
}

/// The text exposition of `input`.
pub fn render(input: &MetricsInput) -> Result<String> {
    let r = Registry::new();
    let last_success = gauge_vec(
        &r,
        "usdcop_dr_last_success_timestamp_seconds",
        "Time of the newest snapshot of the source (0: none)",
    )?;
    let rpo = gauge_vec(
        &r,
        "usdcop_dr_rpo_seconds",
        "Recovery point objective of the source ([objectives] rpo)",
    )?;
    let snapshots = gauge_vec(
        &r,
        "usdcop_dr_snapshots",
        "Snapshots of the source in the repository",
    )?;
    let run_success = gauge_vec(
        &r,
        "usdcop_dr_last_run_success",
        "1 if the source's last backup run succeeded, 0 if it failed",
    )?;
    let run_started = gauge_vec(
        &r,
        "usdcop_dr_last_run_timestamp_seconds",
        "Start time of the source's last backup run",
    )?;
    let duration = gauge_vec(
        &r,
        "usdcop_dr_last_duration_seconds",
        "Duration of the source's last backup run",
    )?;
    let read = gauge_vec(
        &r,
        "usdcop_dr_last_read_bytes",
        "Bytes the source's last backup run read from the source",
    )?;
    let stored = gauge_vec(
        &r,
        "usdcop_dr_last_stored_new_bytes",
        "Bytes the source's last backup run added to the repository (after deduplication and compression)",
    )?;
    let up = gauge(
        &r,
        "usdcop_dr_repository_up",
        "1 if the last run could open the repository",
    )?;
    up.set(if input.repository_up { 1.0 } else { 0.0 });
    if let Some(size) = input.repository_size_bytes {
        gauge(
            &r,
            "usdcop_dr_repository_size_bytes",
            "Bytes stored in the repository (packs, indexes, snapshots)",
        )?
        .set(size as f64);
    }
    if let Some(p) = &input.last_prune {
        for (name, help, v) in [
            (
                "usdcop_dr_last_prune_success",
                "1 if the last prune succeeded, 0 if it failed",
                if p.success { 1.0 } else { 0.0 },
            ),
            (
                "usdcop_dr_last_prune_timestamp_seconds",
                "Start time of the last prune",
                ts(&p.started),
            ),
            (
                "usdcop_dr_last_prune_duration_seconds",
                "Duration of the last prune",
                p.duration_s,
            ),
            (
                "usdcop_dr_last_prune_snapshots_removed",
                "Snapshots the last prune removed",
                p.snapshots_removed as f64,
            ),
            (
                "usdcop_dr_last_prune_freed_bytes",
                "Bytes of packs the last prune deleted",
                p.bytes_freed as f64,
            ),
            (
                "usdcop_dr_last_prune_condemned_bytes",
                "Bytes of packs the last prune condemned (deleted by a later prune)",
                p.bytes_condemned as f64,
            ),
        ] {
            gauge(&r, name, help)?.set(v);
        }
    }
    if let Some(d) = &input.last_drill {
        // Never drilled: the time is 0 (a drill alert fires), no verdict.
        gauge(
            &r,
            "usdcop_dr_last_drill_timestamp_seconds",
            "Start time of the newest restore drill in the repository (0: none)",
        )?
        .set(d.as_ref().map_or(0.0, |d| ts(&d.started)));
        if let Some(d) = d {
            gauge(
                &r,
                "usdcop_dr_last_drill_success",
                "1 if the newest restore drill passed every check and met every objective, 0 if not",
            )?
            .set(if d.passed { 1.0 } else { 0.0 });
            if let Some(rto) = d.rto_achieved_s {
                gauge(
                    &r,
                    "usdcop_dr_last_drill_rto_seconds",
                    "The RTO the newest whole-system restore drill measured",
                )?
                .set(rto);
            }
        }
    }
    for s in &input.sources {
        let labels = [s.name.as_str(), s.kind.as_str()];
        last_success
            .with_label_values(&labels)
            .set(s.last_success.as_ref().map_or(0.0, ts));
        rpo.with_label_values(&labels).set(s.rpo_seconds);
        if let Some(n) = s.snapshots {
            snapshots.with_label_values(&labels).set(n as f64);
        }
        if let Some(run) = &s.last_run {
            run_success
                .with_label_values(&labels)
                .set(if run.success { 1.0 } else { 0.0 });
            run_started.with_label_values(&labels).set(ts(&run.started));
            duration.with_label_values(&labels).set(run.duration_s);
            read.with_label_values(&labels).set(run.bytes_read as f64);
            stored
                .with_label_values(&labels)
                .set(run.bytes_stored_new as f64);
        }
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .map_err(metrics_err)?;
    String::from_utf8(out).map_err(|e| Error::io(format!("metrics are not UTF-8: {e}")))
}

/// A textfile of plain gauges: (name, help, value).
fn render_gauges(gauges: &[(&str, &str, f64)]) -> Result<String> {
    let r = Registry::new();
    for &(name, help, v) in gauges {
        gauge(&r, name, help)?.set(v);
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .map_err(metrics_err)?;
    String::from_utf8(out).map_err(|e| Error::io(format!("metrics are not UTF-8: {e}")))
}

/// The WAL archive's series (`<stem>_wal_push.prom`, rewritten by every
/// `wal-push`; docs/OPERATIONS.md, "Archive lag").
pub fn render_wal_lag(lag: &crate::commands::wal_spool::WalLag) -> Result<String> {
    render_gauges(&[
        (
            "usdcop_dr_wal_last_push_timestamp_seconds",
            "Time of the last successful wal-push (0: none recorded)",
            lag.last_success.as_ref().map_or(0.0, ts),
        ),
        (
            "usdcop_dr_wal_last_failure_timestamp_seconds",
            "Time of the last failed wal-push (0: none recorded)",
            lag.last_failure.as_ref().map_or(0.0, ts),
        ),
        (
            "usdcop_dr_wal_push_failures",
            "Failed wal-pushes since the last success",
            lag.consecutive_failures as f64,
        ),
        (
            "usdcop_dr_wal_pending_files",
            "WAL files PostgreSQL marked ready that are not in the store yet",
            lag.pending_files as f64,
        ),
        (
            "usdcop_dr_wal_pending_bytes",
            "Bytes of the WAL files PostgreSQL marked ready that are not in the store yet",
            lag.pending_bytes as f64,
        ),
    ])
}

/// What `wal-verify` found, for its own textfile ([`wal_textfile`]):
/// `backup --all` runs nightly, the WAL archive moves every minute.
#[derive(Debug, Clone, PartialEq)]
pub struct WalMetrics {
    pub checked_at: DateTime<Utc>,
    pub ok: bool,
    /// The newest recoverable time (`None`: none; shown as 0).
    pub newest_recoverable: Option<DateTime<Utc>>,
    /// Segments missing where recovery needs them.
    pub gaps: u64,
    pub segments: u64,
}

/// The text exposition of `m`.
pub fn render_wal(m: &WalMetrics) -> Result<String> {
    render_gauges(&[
        (
            "usdcop_dr_wal_newest_recoverable_timestamp_seconds",
            "Time of the last transaction end in the WAL archive that recovery can reach (0: none)",
            m.newest_recoverable.as_ref().map_or(0.0, ts),
        ),
        (
            "usdcop_dr_wal_archive_gaps",
            "WAL segments missing where recovery from a kept base backup needs them",
            m.gaps as f64,
        ),
        (
            "usdcop_dr_wal_archive_segments",
            "WAL segments in the archive",
            m.segments as f64,
        ),
        (
            "usdcop_dr_wal_verify_success",
            "1 if the last wal-verify found no gap and no damage",
            if m.ok { 1.0 } else { 0.0 },
        ),
        (
            "usdcop_dr_wal_verify_timestamp_seconds",
            "Time of the last wal-verify",
            ts(&m.checked_at),
        ),
    ])
}

/// `wal-verify`'s textfile: next to `[metrics] textfile`, named after it
/// with `_wal` (`usdcop_dr.prom` → `usdcop_dr_wal.prom`), so the two
/// writers never replace each other's series.
pub fn wal_textfile(main: &Path) -> std::path::PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "usdcop_dr".into());
    main.with_file_name(format!("{stem}_wal.prom"))
}

/// Replace `path` with `text` atomically: node_exporter sees the old file
/// or the new one, never a part. Readable by all (0644): the collector
/// usually runs as another user, and metrics hold no secret.
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes(), 0o644)
}

/// Write `bytes` to a temporary file next to `path`, flush it to disk,
/// and rename it over `path`. The temporary name does not end in `.prom`,
/// so the textfile collector never reads it.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::usage(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let err = |what: &str, e: std::io::Error| {
        Error::io(format!("{what} {}: {e}", path.display())).with_hint(format!(
            "the directory {} must exist and be writable by this user",
            dir.display()
        ))
    };
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // Whatever the umask: the collector must be able to read it.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err("cannot write", e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn renders_every_series_with_its_labels() {
        let input = MetricsInput {
            sources: vec![
                SourceMetrics {
                    name: "pg-usdcop".into(),
                    kind: "postgres".into(),
                    last_success: Some(t("2026-12-01T02:00:00.5Z")),
                    snapshots: Some(3),
                    last_run: Some(RunMetrics {
                        started: t("2026-12-02T02:00:00Z"),
                        success: false,
                        duration_s: 1.25,
                        bytes_read: 0,
                        bytes_stored_new: 0,
                    }),
                    rpo_seconds: 86400.0,
                },
                SourceMetrics {
                    name: "config".into(),
                    kind: "files".into(),
                    last_success: None,
                    snapshots: None,
                    last_run: None,
                    rpo_seconds: 86400.0,
                },
            ],
            repository_up: true,
            repository_size_bytes: Some(12345),
            last_prune: Some(crate::state::LastPrune {
                started: t("2026-12-02T03:00:00Z"),
                success: true,
                duration_s: 2.0,
                snapshots_removed: 4,
                bytes_freed: 1000,
                bytes_condemned: 500,
                error: None,
            }),
            last_drill: Some(Some(DrillMetrics {
                started: t("2026-12-06T08:00:00Z"),
                passed: false,
                rto_achieved_s: Some(1234.5),
            })),
        };
        let text = render(&input).unwrap();
        for line in [
            "# TYPE usdcop_dr_last_success_timestamp_seconds gauge",
            "usdcop_dr_last_success_timestamp_seconds{kind=\"postgres\",source=\"pg-usdcop\"} 1796090400.5",
            "usdcop_dr_last_success_timestamp_seconds{kind=\"files\",source=\"config\"} 0",
            "usdcop_dr_last_run_success{kind=\"postgres\",source=\"pg-usdcop\"} 0",
            "usdcop_dr_last_prune_success 1",
            "usdcop_dr_last_prune_freed_bytes 1000",
            "usdcop_dr_last_prune_snapshots_removed 4",
            "usdcop_dr_last_duration_seconds{kind=\"postgres\",source=\"pg-usdcop\"} 1.25",
            "usdcop_dr_snapshots{kind=\"postgres\",source=\"pg-usdcop\"} 3",
            "usdcop_dr_rpo_seconds{kind=\"files\",source=\"config\"} 86400",
            "usdcop_dr_repository_up 1",
            "usdcop_dr_repository_size_bytes 12345",
            "usdcop_dr_last_drill_timestamp_seconds 1796544000",
            "usdcop_dr_last_drill_success 0",
            "usdcop_dr_last_drill_rto_seconds 1234.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
        }
        // Never drilled: time 0 (the drill alert fires), no verdict; the
        // repository unread: nothing said.
        let never = render(&MetricsInput {
            last_drill: Some(None),
            ..input.clone()
        })
        .unwrap();
        assert!(never
            .lines()
            .any(|l| l == "usdcop_dr_last_drill_timestamp_seconds 0"));
        assert!(!never.contains("usdcop_dr_last_drill_success"));
        let unread = render(&MetricsInput {
            last_drill: None,
            ..input.clone()
        })
        .unwrap();
        assert!(!unread.contains("usdcop_dr_last_drill"));
        // Nothing recorded, nothing claimed.
        assert!(
            !text.contains("usdcop_dr_last_run_success{kind=\"files\""),
            "{text}"
        );
        assert!(
            !text.contains("usdcop_dr_snapshots{kind=\"files\""),
            "{text}"
        );
    }

    #[test]
    fn wal_metrics() {
        let text = render_wal(&WalMetrics {
            checked_at: t("2026-12-03T08:00:00Z"),
            ok: false,
            newest_recoverable: Some(t("2026-12-03T07:59:30.25Z")),
            gaps: 1,
            segments: 12,
        })
        .unwrap();
        for line in [
            "usdcop_dr_wal_newest_recoverable_timestamp_seconds 1796284770.25",
            "usdcop_dr_wal_archive_gaps 1",
            "usdcop_dr_wal_verify_success 0",
            "usdcop_dr_wal_archive_segments 12",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
        assert_eq!(
            wal_textfile(Path::new("/var/lib/ne/usdcop_dr.prom")),
            Path::new("/var/lib/ne/usdcop_dr_wal.prom")
        );
    }

    #[test]
    fn the_textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usdcop_dr.prom");
        write_textfile(&p, "a 1\n").unwrap();
        write_textfile(&p, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["usdcop_dr.prom"], "no temporary file left");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let missing = dir.path().join("nodir/x.prom");
        let e = write_textfile(&missing, "a 1\n").unwrap_err();
        assert!(e.to_string().contains("cannot write"), "{e}");
    }
}
