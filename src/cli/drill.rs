//! `drill` and `drills`: the configuration's sources and `[drill]`
//! scratch targets, the report (Markdown with `--report`, JSON with
//! `--json`), the exit code of the verdict (0, 3, 4).

use std::sync::Arc;

use usdcop_dr::commands::drill::{self, DrillOptions, PitrMode};
use usdcop_dr::config::Settings;
use usdcop_dr::Result;

use super::args::{Cli, DrillArgs};
use super::nightly;

pub async fn run(cli: &Cli, settings: Option<&Settings>, a: &DrillArgs) -> Result<i32> {
    let s = nightly::require(settings, "drill")?;
    let (_, repo) = nightly::open_repository(cli, s).await?;
    let repo = Arc::new(repo);
    let progress = super::progress::make(cli.quiet, cli.json);
    let opts = DrillOptions {
        sources: a.sources.clone(),
        pitr: if a.point_in_time {
            PitrMode::Require
        } else if a.no_point_in_time {
            PitrMode::Skip
        } else {
            PitrMode::Auto
        },
        read_concurrency: a.read_concurrency.map(usize::from),
    };
    let (id, record) = drill::run(repo.clone(), s, &opts, progress).await?;
    let (history, _) = drill::history(&repo).await?;
    let md = drill::render_markdown(&id, &record, &history, s.objectives.timezone);
    if let Some(path) = &a.report {
        usdcop_dr::metrics::write_atomic(path, md.as_bytes(), 0o644)
            .map_err(|e| e.context(format!("report {}", path.display())))?;
    }
    if cli.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            id: String,
            #[serde(flatten)]
            record: &'a usdcop_dr::format::drill::DrillRecord,
            exit_code: i32,
        }
        super::print_json(&Out {
            id: id.to_hex(),
            record: &record,
            exit_code: record.verdict.exit_code(),
        })?;
    } else if !cli.quiet {
        println!("{md}");
    }
    Ok(record.verdict.exit_code())
}

pub async fn list(cli: &Cli, settings: Option<&Settings>) -> Result<i32> {
    let s = nightly::require(settings, "drills")?;
    let (_, repo) = nightly::open_repository(cli, s).await?;
    let (history, damaged) = drill::history(&repo).await?;
    for (name, why) in &damaged {
        eprintln!("usdcop-dr: warning: drill record {name} is damaged: {why}");
    }
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: String,
        #[serde(flatten)]
        record: &'a usdcop_dr::format::drill::DrillRecord,
    }
    let rows: Vec<Row> = history
        .iter()
        .map(|(id, r)| Row {
            id: id.to_hex(),
            record: r,
        })
        .collect();
    super::emit(cli.json, &rows, || {
        let mut t = format!(
            "{:<10} {:<25} {:<17} {:>12}  {}\n",
            "ID", "STARTED", "VERDICT", "RTO", "SOURCES"
        );
        for (id, r) in &history {
            t += &format!(
                "{:<10} {:<25} {:<17} {:>12}  {}\n",
                id.short(),
                r.started.format("%Y-%m-%d %H:%M:%S UTC"),
                format!("{:?}", r.verdict),
                r.rto
                    .as_ref()
                    .map(|x| format!("{:.1}s", x.achieved_s))
                    .unwrap_or_else(|| "-".into()),
                r.sources
                    .iter()
                    .map(|s| s.source.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        t + &format!("{} drill(s)", history.len())
    })?;
    Ok(if damaged.is_empty() { 0 } else { 3 })
}
