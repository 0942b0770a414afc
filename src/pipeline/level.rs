//! Which zstd level a new chunk is compressed at (pure: counters only).
//!
//! The repository's `compression_level` (3 by default) is used where it
//! pays. On some data it does not: on `pg_dump` COPY text, level 1 is both
//! about twice as fast and as small or smaller (docs/BENCHMARKS.md), while
//! on source code or binaries level 3 saves 10 % or more. So a writer
//! samples: the first [`SAMPLE`] bytes of new chunks of each period are
//! compressed at both levels (the smaller result is stored); when the
//! configured level saves less than [`MIN_GAIN_PERCENT`] over level 1 on
//! the sample, the rest of the period uses level 1. A period is
//! [`PERIOD`] bytes of new chunks; each time a sample confirms the choice
//! before it the next period is twice as long, up to [`PERIOD_MAX`], and a
//! sample that changes the choice brings it back to [`PERIOD`]. Readers do
//! not care which level made a frame, and chunk ids name plaintext, so the
//! choice changes neither dedup nor the format. The sampling costs about
//! 3 % of the compression work twice while the data keeps changing, under
//! 1 % once the choice has held for a few periods.

use std::sync::Mutex;

/// The fast level compared against.
pub const FAST_LEVEL: i32 = 1;
/// New-chunk bytes per decision, at first and after a change of choice.
pub const PERIOD: u64 = 256 << 20;
/// The longest period, reached while the choice keeps being confirmed.
pub const PERIOD_MAX: u64 = 1 << 30;
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
    /// Taken once per new chunk (a mebibyte on average): no contention.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// New-chunk bytes planned so far.
    new_bytes: u64,
    /// Where the current period began and how long it is.
    period_from: u64,
    period: u64,
    /// The sample being gathered: raw bytes recorded, stored bytes at the
    /// configured level and at the fast level.
    sampled: u64,
    at_level: u64,
    at_fast: u64,
    use_fast: bool,
    /// Whether any sample has decided yet.
    decided: bool,
}

impl LevelChoice {
    pub fn new(level: i32) -> Self {
        LevelChoice {
            level,
            state: Mutex::new(State {
                new_bytes: 0,
                period_from: 0,
                period: PERIOD,
                sampled: 0,
                at_level: 0,
                at_fast: 0,
                use_fast: false,
                decided: false,
            }),
        }
    }

    /// The plan for a new chunk of `len` bytes (called once per chunk).
    pub fn plan(&self, len: usize) -> LevelPlan {
        // A configured level at or below the fast one (or a negative,
        // faster-still level) is never second-guessed.
        if self.level <= FAST_LEVEL {
            return LevelPlan::Level(self.level);
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let before = st.new_bytes;
        st.new_bytes += len as u64;
        if before >= st.period_from + st.period {
            st.period_from = before;
        }
        if before < st.period_from + SAMPLE {
            LevelPlan::Sample {
                level: self.level,
                fast: FAST_LEVEL,
            }
        } else if st.use_fast {
            LevelPlan::Level(FAST_LEVEL)
        } else {
            LevelPlan::Level(self.level)
        }
    }

    /// A sampled chunk of `raw` bytes stored as `at_level` bytes at the
    /// configured level and `at_fast` at the fast one (each at most `raw`:
    /// what would be stored). Decides once the period's sample is full.
    pub fn record(&self, raw: usize, at_level: usize, at_fast: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.at_level += at_level as u64;
        st.at_fast += at_fast as u64;
        st.sampled += raw as u64;
        if st.sampled >= SAMPLE {
            let use_fast = !pays(st.at_level, st.at_fast);
            st.period = if st.decided && use_fast == st.use_fast {
                (st.period * 2).min(PERIOD_MAX)
            } else {
                PERIOD
            };
            st.use_fast = use_fast;
            st.decided = true;
            st.sampled = 0;
            st.at_level = 0;
            st.at_fast = 0;
        }
    }

    /// Whether chunks outside the sample go at the fast level now.
    pub fn uses_fast(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .use_fast
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

    fn samples(plans: &[LevelPlan]) -> Vec<usize> {
        plans
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, LevelPlan::Sample { .. }))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn a_confirmed_choice_is_sampled_less_often_and_a_change_resets() {
        let c = LevelChoice::new(3);
        // 3 GiB of pg_dump-like data: level 3 does not pay.
        let plans = feed(&c, 3072, 297_000, 300_000);
        let starts: Vec<usize> = samples(&plans).into_iter().step_by(8).collect();
        // Periods of 256, 512, 1024 and 1024 MiB (the longest) after the
        // first: each sample confirmed the choice.
        assert_eq!(starts, [0, 256, 768, 1792, 2816]);
        assert_eq!(samples(&plans).len(), 5 * 8);
        assert!(c.uses_fast());
        // The data changes before the next sample (at 3840 MiB, 768 into
        // this feed), which sees it: the next period is short again.
        let plans = feed(&c, 1100, 200_000, 300_000);
        assert!(!c.uses_fast());
        assert_eq!(
            samples(&plans),
            (768..776).chain(1024..1032).collect::<Vec<_>>()
        );
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
