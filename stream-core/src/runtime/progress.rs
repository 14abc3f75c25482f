//! Restore progress for people: a progress bar with rate and ETA when
//! stderr is a terminal, a log line a second otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// Reports one restore pass (all tasks restored together).
pub(crate) struct RestoreReporter {
    bar: Option<ProgressBar>,
    started: Instant,
    last: Instant,
}

impl RestoreReporter {
    /// `total`: changelog offsets to read.
    pub(crate) fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "restoring {bar:40.cyan/blue} {pos}/{len} records  {rate}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            );
            bar.set_style(style);
            bar
        });
        RestoreReporter {
            bar,
            started: Instant::now(),
            last: Instant::now(),
        }
    }

    /// Whether a report is due (every 100 ms for the bar, every second for logs).
    pub(crate) fn due(&self) -> bool {
        let every = if self.bar.is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        self.last.elapsed() >= every
    }

    /// Reports progress if due. `done`: offsets read so far; `read`:
    /// records read so far.
    pub(crate) fn update(&mut self, done: u64, read: u64, total: u64) {
        if !self.due() {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                self.last = Instant::now();
            }
            None => {
                let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 {
                    format!("{:.0}s", total.saturating_sub(done) as f64 / rate)
                } else {
                    "-".into()
                };
                tracing::info!(
                    read,
                    done,
                    total,
                    rate = format!("{rate:.0}/s"),
                    eta,
                    "restore progress"
                );
                self.last = Instant::now();
            }
        }
    }

    /// Clears the bar.
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
