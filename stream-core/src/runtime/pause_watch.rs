//! Noticing that the whole process was stopped for a while (SIGSTOP,
//! Ctrl-Z, a frozen VM), so that an at-least-once instance does not write
//! from state another instance may have taken over meanwhile.
//!
//! A watchdog thread ticks every [`TICK`] and notes every gap between two
//! of its ticks longer than [`NOTED_GAP`]: its own sleep being that late
//! means every thread of the process was held, not just one busy with a
//! long commit. A stream thread asks before each record it sends
//! ([`PauseCheck::paused`]): it is told of a gap longer than its limit
//! that it has not been told of, whether the watchdog already noted it
//! or, having woken with everyone else, has not ticked since (then the
//! last tick is too old). The check is two atomic loads and a read of a
//! coarse clock.
//!
//! A stop of the whole machine (a laptop's sleep) does not show: the
//! monotonic clock, librdkafka's included, stands still through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often the watchdog ticks.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Gaps between ticks the watchdog notes (a late wake-up on a busy
/// machine is far shorter).
pub(crate) const NOTED_GAP: Duration = Duration::from_secs(1);

/// The process's watchdog: its last tick and the last long gap it saw.
pub(crate) struct PauseWatch {
    /// Milliseconds of [`now_ms`] at the last tick.
    last_tick: AtomicU64,
    /// How many gaps were noted (read on every check).
    noted: AtomicU64,
    /// The last gap noted: `(start, end)` in milliseconds of [`now_ms`].
    last_gap: Mutex<(u64, u64)>,
}

impl PauseWatch {
    fn new() -> Self {
        PauseWatch {
            last_tick: AtomicU64::new(now_ms()),
            noted: AtomicU64::new(0),
            last_gap: Mutex::new((0, 0)),
        }
    }

    /// One tick at `now` (milliseconds of [`now_ms`]).
    fn tick(&self, now: u64) {
        let last = self.last_tick.swap(now, Ordering::AcqRel);
        if now.saturating_sub(last) > NOTED_GAP.as_millis() as u64 {
            if let Ok(mut g) = self.last_gap.lock() {
                *g = (last, now);
            }
            self.noted.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The process's watchdog, started on first use.
pub(crate) fn watch() -> &'static PauseWatch {
    static WATCH: OnceLock<&'static PauseWatch> = OnceLock::new();
    WATCH.get_or_init(|| {
        let w: &'static PauseWatch = Box::leak(Box::new(PauseWatch::new()));
        let spawned = std::thread::Builder::new()
            .name("pause-watch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                w.tick(now_ms());
            });
        if let Err(e) = spawned {
            // The checks still see a pause through the stale last tick.
            tracing::warn!(error = %e, "could not start the pause watchdog thread");
        }
        w
    })
}

/// A monotonic clock in milliseconds, cheap to read (coarse: a few
/// milliseconds of resolution, plenty for gaps of seconds).
fn now_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0 {
            return ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        }
    }
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One stream thread's view of the watchdog.
pub(crate) struct PauseCheck {
    watch: &'static PauseWatch,
    /// Gaps longer than this count as a pause.
    limit_ms: u64,
    /// The watchdog's count of noted gaps when last looked at.
    seen: u64,
    /// The start of the last pause reported (a gap is reported once).
    reported_start: u64,
}

impl PauseCheck {
    /// Checks against the process's watchdog, for gaps longer than `limit`.
    pub(crate) fn new(limit: Duration) -> Self {
        Self::on(watch(), limit)
    }

    fn on(watch: &'static PauseWatch, limit: Duration) -> Self {
        PauseCheck {
            watch,
            limit_ms: limit.as_millis() as u64,
            seen: watch.noted.load(Ordering::Acquire),
            reported_start: 0,
        }
    }

    /// The length of a pause longer than the limit that ended since the
    /// last call, if any.
    pub(crate) fn paused(&mut self) -> Option<Duration> {
        self.paused_at(now_ms())
    }

    fn paused_at(&mut self, now: u64) -> Option<Duration> {
        let last = self.watch.last_tick.load(Ordering::Acquire);
        let noted = self.watch.noted.load(Ordering::Acquire);
        if noted == self.seen && now.saturating_sub(last) <= self.limit_ms {
            return None;
        }
        // The watchdog has not ticked since the process woke up.
        let mut found = (now.saturating_sub(last) > self.limit_ms).then_some((last, now));
        if noted != self.seen {
            self.seen = noted;
            if let Ok(g) = self.watch.last_gap.lock() {
                let (start, end) = *g;
                if end - start > self.limit_ms && found.is_none() {
                    found = Some((start, end));
                }
            }
        }
        let (start, end) = found?;
        if start <= self.reported_start {
            return None;
        }
        self.reported_start = start;
        Some(Duration::from_millis(end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked(at: u64) -> &'static PauseWatch {
        let w = Box::leak(Box::new(PauseWatch::new()));
        w.last_tick.store(at, Ordering::Release);
        w
    }

    #[test]
    fn should_see_no_pause_while_the_watchdog_ticks() {
        let w = leaked(1_000);
        let mut c = PauseCheck::on(w, Duration::from_secs(5));
        for t in (1_100..20_000).step_by(100) {
            w.tick(t);
            assert_eq!(c.paused_at(t + 50), None, "at {t}");
        }
    }

    #[test]
    fn should_report_a_pause_once_whether_or_not_the_watchdog_ticked_since() {
        // Seen before the watchdog's first tick after the pause ...
        let w = leaked(1_000);
        let mut c = PauseCheck::on(w, Duration::from_secs(5));
        assert_eq!(c.paused_at(13_000), Some(Duration::from_secs(12)));
        assert_eq!(c.paused_at(13_001), None, "reported once");
        w.tick(13_010);
        assert_eq!(c.paused_at(13_020), None, "the watchdog's note of it too");
        // ... or after it.
        w.tick(40_000);
        assert_eq!(c.paused_at(40_005), Some(Duration::from_millis(26_990)));
        assert_eq!(c.paused_at(40_006), None);
    }

    #[test]
    fn should_ignore_gaps_under_its_limit() {
        let w = leaked(1_000);
        let mut c = PauseCheck::on(w, Duration::from_secs(5));
        w.tick(4_000); // a 3 s gap: noted, under the limit
        assert_eq!(c.paused_at(4_010), None);
        let mut strict = PauseCheck::on(w, Duration::from_secs(2));
        w.tick(8_000);
        assert_eq!(strict.paused_at(8_001), Some(Duration::from_secs(4)));
        assert_eq!(c.paused_at(8_001), None);
    }
}
