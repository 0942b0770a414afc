//! Progress bars on a terminal (indicatif); nothing otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use usdcop_dr::progress::Progress;

pub struct Bar(ProgressBar);

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
                .expect("valid template"),
        );
    }
    fn add_bytes(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn set_item(&self, name: &str) {
        self.0.set_message(name.to_owned());
    }
    fn warn(&self, message: &str) {
        self.0
            .suspend(|| eprintln!("usdcop-dr: warning: {message}"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Warnings still go to stderr when there is no bar.
pub struct Plain;
impl Progress for Plain {
    fn warn(&self, message: &str) {
        eprintln!("usdcop-dr: warning: {message}");
    }
}

pub fn make(quiet: bool, json: bool) -> Arc<dyn Progress> {
    // --quiet silences progress, not problems: a cron job's mail must show
    // a skipped file.
    if quiet {
        return Arc::new(Plain);
    }
    if json || !std::io::stderr().is_terminal() {
        return Arc::new(Plain);
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bytes} {bytes_per_sec} {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    Arc::new(Bar(bar))
}
