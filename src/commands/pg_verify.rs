//! The check that ends `restore postgres`: every table of the snapshot's
//! picture read back from the target (counted, and checksummed where the
//! picture has a checksum), over several connections, each table as soon
//! as it is queued.
//!
//! A staged, parallel restore queues a table the moment `pg_restore -v`
//! reports its TABLE DATA item finished (each item is its own committed
//! transaction in parallel mode; no later item changes a table's rows:
//! indexes, constraints, triggers and ownership do not), so the check of
//! the first tables overlaps the load of the last ones and the index
//! builds. A streamed restore (one job) queues a table when pg_restore
//! reports its next item: one job restores items in turn, and its COPY
//! has committed by then. Whatever was not queued by the time pg_restore exits (a
//! streamed restore, a line not seen) is queued then, largest first.
//! Each table is read in a transaction of its own, so a worker never holds
//! a lock on a table it has finished with: pg_restore's `ALTER TABLE`
//! (primary keys, foreign keys) waits at most for one table's read.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::postgres::picture::{ChecksumAlgorithm, TablePicture};
use crate::postgres::{inspect, Dsn};

/// Tables queued for checking: cheap to clone into the thread that reads
/// pg_restore's stderr.
#[derive(Clone)]
pub struct Queue {
    tx: Arc<Mutex<Option<UnboundedSender<usize>>>>,
    queued: Arc<Mutex<Vec<bool>>>,
}

impl Queue {
    /// Queue table `i` (of the picture) unless it already is.
    pub fn push(&self, i: usize) {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if i < q.len() && !q[i] {
            q[i] = true;
            if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                let _ = tx.send(i);
            }
        }
    }
}

type Found = Vec<(usize, TablePicture)>;

/// Connections reading restored tables back as they are queued.
pub struct Verifiers {
    queue: Queue,
    expected: Arc<Vec<TablePicture>>,
    set: JoinSet<Result<Found>>,
}

impl Verifiers {
    /// Open `jobs` connections to `target` (at most one per table) that
    /// wait for tables to check.
    pub fn start(
        target: &Dsn,
        expected: &[TablePicture],
        algo: ChecksumAlgorithm,
        jobs: usize,
    ) -> Verifiers {
        let (tx, rx) = unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let expected = Arc::new(expected.to_vec());
        let mut set = JoinSet::new();
        for _ in 0..jobs.clamp(1, expected.len().max(1)) {
            let (rx, target, expected) = (rx.clone(), target.clone(), expected.clone());
            set.spawn(async move { worker(rx, target, expected, algo).await });
        }
        Verifiers {
            queue: Queue {
                tx: Arc::new(Mutex::new(Some(tx))),
                queued: Arc::new(Mutex::new(vec![false; expected.len()])),
            },
            expected,
            set,
        }
    }

    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// Queue every table not queued yet (the largest first), wait for all
    /// checks, and return the target's pictures in the picture's order (a
    /// table the target lacks is absent) and how many tables had been
    /// queued before (as pg_restore loaded them).
    pub async fn finish(mut self) -> Result<(Vec<TablePicture>, u64)> {
        let early = self
            .queue
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|q| **q)
            .count() as u64;
        let mut rest: Vec<usize> = (0..self.expected.len()).collect();
        rest.sort_by_key(|&i| std::cmp::Reverse(self.expected[i].rows));
        for i in rest {
            self.queue.push(i);
        }
        // Closing the channel ends each worker once the queue is empty.
        self.queue
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut all = vec![];
        while let Some(done) = self.set.join_next().await {
            all.extend(done.map_err(|e| Error::io(format!("verification task: {e}")))??);
        }
        all.sort_by_key(|(i, _)| *i);
        Ok((all.into_iter().map(|(_, p)| p).collect(), early))
    }
}

async fn worker(
    rx: Arc<tokio::sync::Mutex<UnboundedReceiver<usize>>>,
    target: Dsn,
    expected: Arc<Vec<TablePicture>>,
    algo: ChecksumAlgorithm,
) -> Result<Found> {
    let client = inspect::connect(&target).await?;
    if algo.row_hash().is_some() {
        client
            .batch_execute(inspect::DUMP_COPY_SETTINGS)
            .await
            .map_err(|e| inspect::db_err("setting pg_dump's COPY settings", e))?;
    }
    let mut got = vec![];
    loop {
        let next = rx.lock().await.recv().await;
        let Some(i) = next else { break };
        let t = &expected[i];
        inspect::begin(&client, false).await?;
        let name = format!(
            "{}.{}",
            inspect::quote_ident(&t.schema),
            inspect::quote_ident(&t.name)
        );
        let exists = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map_err(|e| inspect::db_err("looking up restored tables", e))?
            .get::<_, bool>(0);
        if exists {
            let p = match (&t.copy_statement, algo.row_hash()) {
                (Some(copy), Some(hash)) => {
                    let (rows, sum) = inspect::copy_digest(&client, copy, hash).await?;
                    TablePicture {
                        schema: t.schema.clone(),
                        name: t.name.clone(),
                        rows,
                        checksum: Some(sum),
                        copy_statement: None,
                    }
                }
                _ => {
                    inspect::table_picture(
                        &client,
                        &t.schema,
                        &t.name,
                        t.checksum.as_ref().map(|_| algo),
                    )
                    .await?
                }
            };
            got.push((i, p));
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| inspect::db_err("ending a verification transaction", e))?;
    }
    Ok(got)
}

/// The dump id of a TABLE DATA item that `pg_restore -v` reports finished
/// in parallel mode (`pg_restore: finished item 3421 TABLE DATA bars`).
pub fn finished_table_data(line: &str) -> Option<i64> {
    let rest = line.strip_prefix("pg_restore: finished item ")?;
    let (id, what) = rest.split_once(' ')?;
    what.starts_with("TABLE DATA ")
        .then(|| id.parse().ok())
        .flatten()
}

/// The table (`schema.name`) whose data `pg_restore -v` starts loading
/// with one job (`pg_restore: processing data for table "public.bars"`).
pub fn data_started(line: &str) -> Option<&str> {
    line.strip_prefix("pg_restore: processing data for table \"")?
        .strip_suffix('"')
}

/// A progress line of `pg_restore -v` (kept out of the error tail that a
/// failure reports); errors, warnings, details and anything unknown are
/// not.
pub fn is_progress(line: &str) -> bool {
    const PROGRESS: &[&str] = &[
        "connecting to database",
        "creating ",
        "processing ",
        "launching item",
        "finished item",
        "entering main parallel loop",
        "finished main parallel loop",
        "entering restore_toc_entries",
        "executing ",
        "setting owner",
        "transferring dependency",
        "skipping item",
        "dropping ",
    ];
    line.strip_prefix("pg_restore: ")
        .is_some_and(|rest| PROGRESS.iter().any(|p| rest.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_table_data_items_are_recognised_and_nothing_else() {
        assert_eq!(
            finished_table_data("pg_restore: finished item 3421 TABLE DATA usdcop_m5_ohlcv"),
            Some(3421)
        );
        assert_eq!(
            finished_table_data("pg_restore: finished item 7 TABLE DATA a table with spaces"),
            Some(7)
        );
        for other in [
            "pg_restore: finished item 3422 INDEX usdcop_m5_ohlcv_pkey",
            "pg_restore: launching item 3421 TABLE DATA usdcop_m5_ohlcv",
            "pg_restore: finished item x TABLE DATA t",
            "pg_restore: error: finished item 1 TABLE DATA t",
            "finished item 1 TABLE DATA t",
        ] {
            assert_eq!(finished_table_data(other), None, "{other}");
        }
    }

    #[test]
    fn a_tables_data_start_names_it() {
        assert_eq!(
            data_started("pg_restore: processing data for table \"public.usdcop_m5_ohlcv\""),
            Some("public.usdcop_m5_ohlcv")
        );
        assert!(is_progress(
            "pg_restore: processing data for table \"public.usdcop_m5_ohlcv\""
        ));
        assert_eq!(
            data_started("pg_restore: creating TABLE \"public.bars\""),
            None
        );
    }

    #[test]
    fn progress_lines_are_told_from_errors() {
        assert!(is_progress(
            "pg_restore: launching item 3421 TABLE DATA bars"
        ));
        assert!(is_progress(
            "pg_restore: processing data for table \"public.bars\""
        ));
        assert!(is_progress(
            "pg_restore: creating INDEX \"public.bars_pkey\""
        ));
        for kept in [
            "pg_restore: error: could not execute query: ERROR:  role \"x\" does not exist",
            "pg_restore: warning: errors ignored on restore: 1",
            "Command was: ALTER TABLE public.bars OWNER TO x;",
            "pg_restore: from TOC entry 215; 1259 16390 TABLE bars x",
            "pg_restore: detail: something",
        ] {
            assert!(!is_progress(kept), "{kept}");
        }
    }
}
