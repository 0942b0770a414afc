//! Which zstd level a new chunk is compressed at (pure: counters only).
//!
//! The repository's `compression_level` (3 by default) is used where it
//! pays. On some data it does not: on `pg_dump` COPY text, level 1 is both
//! about twice as fast and as small or smaller (docs/BENCHMARKS.md), while
//! on source code or binaries level 3 saves 10 % or more. So a writer
//! samples: of every [`PERIOD`] bytes of new chunks, the first [`SAMPLE`]
//! are compressed at both levels (the smaller result is stored); when the
//! configured level saves less than [`MIN_GAIN_PERCENT`] over level 1 on
//! the sample, the rest of the period uses level 1. Readers do not care
//! which level made a frame, and chunk ids name plaintext, so the choice
//! changes neither dedup nor the format. It costs SAMPLE / PERIOD (about
//! 3 %) of the compression work, twice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The fast level compared against.
pub const FAST_LEVEL: i32 = 1;
/// New-chunk bytes per decision.
pub const PERIOD: u64 = 256 << 20;
/// Of each period, the first bytes compressed at both levels.
pub const SAMPLE: u64 = 8 << 20;
/// The configured level is kept when it makes the sample this much smaller.
pub const MIN_GAIN_PERCENT: u64 = 3;

/// What to do with one new chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelPlan {
    /// Compress at this level.
    Level(i32),
    /// Compress at both levels, keep the smaller, then [`LevelChoice::record`].
    Sample { level: i32, fast: i32 },
}

#[derive(Debug)]
pub struct LevelChoice {
    level: i32,
    new_bytes: AtomicU64,
    /// The sample of the current period: raw bytes, stored bytes at the
    /// configured level and at the fast level.
    sampled: AtomicU64,
    at_level: AtomicU64,
    at_fast: AtomicU64,
    use_fast: AtomicBool,
}

impl LevelChoice {
    pub fn new(level: i32) -> Self {
        LevelChoice {
            level,
            new_bytes: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
            at_level: AtomicU64::new(0),
            at_fast: AtomicU64::new(0),
            use_fast: AtomicBool::new(false),
        }
    }

    /// The plan for a new chunk of `len` bytes (called once per chunk).
    pub fn plan(&self, len: usize) -> LevelPlan {
        // A configured level at or below the fast one (or a negative,
        // faster-still level) is never second-guessed.
        if self.level <= FAST_LEVEL {
            return LevelPlan::Level(self.level);
        }
        let before = self.new_bytes.fetch_add(len as u64, Ordering::Relaxed);
        if before % PERIOD < SAMPLE {
            LevelPlan::Sample {
                level: self.level,
                fast: FAST_LEVEL,
            }
        } else if self.use_fast.load(Ordering::Relaxed) {
            LevelPlan::Level(FAST_LEVEL)
        } else {
            LevelPlan::Level(self.level)
        }
    }

    /// A sampled chunk of `raw` bytes stored as `at_level` bytes at the
    /// configured level and `at_fast` at the fast one (each at most `raw`:
    /// what would be stored). Decides once the period's sample is full.
    pub fn record(&self, raw: usize, at_level: usize, at_fast: usize) {
        let l = self.at_level.fetch_add(at_level as u64, Ordering::Relaxed) + at_level as u64;
        let f = self.at_fast.fetch_add(at_fast as u64, Ordering::Relaxed) + at_fast as u64;
        let before = self.sampled.fetch_add(raw as u64, Ordering::Relaxed);
        if before < SAMPLE && before + raw as u64 >= SAMPLE {
            self.use_fast.store(!pays(l, f), Ordering::Relaxed);
            self.sampled.store(0, Ordering::Relaxed);
            self.at_level.store(0, Ordering::Relaxed);
            self.at_fast.store(0, Ordering::Relaxed);
        }
    }

    /// Whether chunks outside the sample go at the fast level now.
    pub fn uses_fast(&self) -> bool {
        self.use_fast.load(Ordering::Relaxed)
    }
}

/// Whether `at_level` stored bytes are at least [`MIN_GAIN_PERCENT`] fewer
/// than `at_fast`.
fn pays(at_level: u64, at_fast: u64) -> bool {
    at_level as u128 * 100 <= at_fast as u128 * (100 - MIN_GAIN_PERCENT) as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// Feed `n` chunks of 1 MiB whose sizes at the two levels are given.
    fn feed(c: &LevelChoice, n: usize, at_level: usize, at_fast: usize) -> Vec<LevelPlan> {
        (0..n)
            .map(|_| {
                let p = c.plan(MIB);
                if let LevelPlan::Sample { .. } = p {
                    c.record(MIB, at_level, at_fast);
                }
                p
            })
            .collect()
    }

    #[test]
    fn the_configured_level_is_kept_where_it_pays() {
        let c = LevelChoice::new(3);
        let plans = feed(&c, 300, 300_000, 340_000);
        let samples = plans
            .iter()
            .filter(|p| matches!(p, LevelPlan::Sample { .. }))
            .count();
        // 8 MiB of the first 256 MiB, then 8 of the next period.
        assert_eq!(samples, 16);
        assert!(plans[8..256].iter().all(|p| *p == LevelPlan::Level(3)));
        assert!(!c.uses_fast());
    }

    #[test]
    fn level_one_is_used_where_the_configured_level_does_not_pay() {
        let c = LevelChoice::new(3);
        // Level 3 only 1 % smaller: not worth its time.
        let plans = feed(&c, 260, 297_000, 300_000);
        assert!(c.uses_fast());
        assert!(plans[8..256].iter().all(|p| *p == LevelPlan::Level(1)));
        assert!(matches!(plans[256], LevelPlan::Sample { .. }));
        // The data changes: the next period's sample decides again.
        let plans = feed(&c, 260, 200_000, 300_000);
        assert!(!c.uses_fast());
        assert!(plans[10..250].iter().all(|p| *p == LevelPlan::Level(3)));
    }

    #[test]
    fn a_fast_configured_level_is_never_sampled() {
        for level in [1, 0, -5] {
            let c = LevelChoice::new(level);
            assert!(feed(&c, 20, 1, 2)
                .iter()
                .all(|p| *p == LevelPlan::Level(level)));
        }
    }

    #[test]
    fn the_threshold_is_three_percent() {
        assert!(pays(97, 100));
        assert!(!pays(98, 100));
        assert!(pays(0, 0));
        assert!(!pays(u64::MAX, u64::MAX - 1));
    }
}
