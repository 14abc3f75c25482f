//! librdkafka's log lines of a consumer read in batches, handed to its
//! client context (and so to `tracing`).
//!
//! The rdkafka crate routes a client's log lines to the client's main
//! queue and turns them into `ClientContext::log` calls when its `poll`
//! meets them. A consumer's main queue is forwarded to its consumer queue,
//! and a consumer read with `rd_kafka_consume_batch_queue` (restore,
//! standbys, global tables; `runtime::batch`) never goes through the
//! crate's `poll`: librdkafka serves the log lines it meets there itself,
//! with its default logger, which writes `%3|1796463917.427|ERROR|…`
//! straight to stderr, past `tracing`'s format, its `RUST_LOG` filter and
//! the closed-stderr handling of [`crate::logging`]. While a broker was
//! down the restore consumer wrote some 180 such lines in 15 seconds.
//!
//! [`LogQueue`] gives such a consumer's log a queue of its own and hands
//! each line to the consumer's context when drained, which the reading
//! thread does between batches (and, idle, once a second). A line repeated
//! within [`REPEAT_WINDOW`] is counted, not logged again.

use rdkafka::bindings as rd;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use std::collections::HashMap;
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// A consumer's log lines, on a queue of their own until drained.
///
/// Drop it before the consumer it was attached to (declare it before the
/// consumer in a struct): the queue is the consumer's.
pub(crate) struct LogQueue {
    queue: *mut rd::rd_kafka_queue_t,
    repeats: Repeats,
}

// The queue handle is only used through librdkafka's thread-safe queue
// calls.
unsafe impl Send for LogQueue {}

impl LogQueue {
    /// Moves `consumer`'s log to a new queue. `None` if librdkafka refuses
    /// (the client was made without `log.queue`); the lines then stay
    /// where they were.
    pub(crate) fn attach<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<LogQueue> {
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is a live client; the new queue is owned by this
        // value and released in `drop`.
        unsafe {
            let queue = rd::rd_kafka_queue_new(rk);
            if queue.is_null() {
                return None;
            }
            if rd::rd_kafka_set_log_queue(rk, queue)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                rd::rd_kafka_queue_destroy(queue);
                return None;
            }
            Some(LogQueue {
                queue,
                repeats: Repeats::default(),
            })
        }
    }

    /// Hands every log line queued so far to `consumer`'s context; returns
    /// how many there were. Never waits. A line already passed on within
    /// [`REPEAT_WINDOW`] is counted instead (a consumer reports "2/2
    /// brokers are down" at every failed connect), and the count goes with
    /// the line's next showing.
    pub(crate) fn drain<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> usize {
        self.drain_noting(consumer, |_, _| {})
    }

    /// [`drain`](Self::drain), showing every warning or worse (facility,
    /// text) to `note` first, repeats included. Debug lines are not shown:
    /// with `debug` set, librdkafka writes "offset reset" for every
    /// logical offset it looks up.
    pub(crate) fn drain_noting<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        mut note: impl FnMut(&str, &str),
    ) -> usize {
        let mut n = 0;
        loop {
            // SAFETY: the queue is live (dropped only with `self`); each
            // event is destroyed after its strings were copied out.
            let line = unsafe {
                let ev = rd::rd_kafka_queue_poll(self.queue, 0);
                if ev.is_null() {
                    return n;
                }
                let mut line = None;
                if rd::rd_kafka_event_type(ev) == rd::RD_KAFKA_EVENT_LOG {
                    let (mut fac, mut text, mut level) = (std::ptr::null(), std::ptr::null(), 0);
                    if rd::rd_kafka_event_log(ev, &mut fac, &mut text, &mut level) == 0 {
                        line = Some((level, c_text(fac), c_text(text)));
                    }
                }
                rd::rd_kafka_event_destroy(ev);
                line
            };
            let Some(line) = line else { continue };
            n += 1;
            if line.0 <= WARNING {
                note(&line.1, &line.2);
            }
            if let Some(repeats) = self.repeats.admit(&line, Instant::now()) {
                let (level, fac, text) = line;
                let level = log_level(level);
                if repeats > 0 {
                    let text =
                        format!("{text} (and {repeats} times more since it was last logged)");
                    consumer.context().log(level, &fac, &text);
                } else {
                    consumer.context().log(level, &fac, &text);
                }
            }
        }
    }
}

/// librdkafka's (syslog's) level of a warning.
const WARNING: i32 = 4;

/// How long a log line passed on keeps its repeats from being passed on.
pub(crate) const REPEAT_WINDOW: Duration = Duration::from_secs(30);

/// At most this many distinct lines are remembered.
const REMEMBERED: usize = 256;

/// One log line: syslog level, facility, text.
type Line = (i32, String, String);

/// The lines passed on lately: when, and how often each came since.
#[derive(Default)]
struct Repeats {
    lines: HashMap<Line, (Instant, u64)>,
}

impl Repeats {
    /// Whether to pass `line` on at `now`: `Some(repeats held back since
    /// its last showing)`, or `None` to hold it back.
    fn admit(&mut self, line: &Line, now: Instant) -> Option<u64> {
        if let Some((shown, held)) = self.lines.get_mut(line) {
            if now.duration_since(*shown) < REPEAT_WINDOW {
                *held += 1;
                return None;
            }
            let repeats = *held;
            *shown = now;
            *held = 0;
            return Some(repeats);
        }
        if self.lines.len() >= REMEMBERED {
            self.lines
                .retain(|_, (shown, _)| now.duration_since(*shown) < REPEAT_WINDOW);
            if self.lines.len() >= REMEMBERED {
                self.lines.clear();
            }
        }
        self.lines.insert(line.clone(), (now, 0));
        Some(0)
    }
}

impl Drop for LogQueue {
    fn drop(&mut self) {
        // SAFETY: the queue was created by `attach` and is released once;
        // the client keeps its own reference until it is destroyed.
        unsafe { rd::rd_kafka_queue_destroy(self.queue) }
    }
}

/// A C string of librdkafka's as text (empty for none).
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives the call.
unsafe fn c_text(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: as the caller promises.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A syslog level, as librdkafka gives it, as the crate's log level.
fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_hold_back_repeats_within_the_window_and_count_them() {
        let line = |t: &str| (3, "ERROR".to_string(), t.to_string());
        let t0 = Instant::now();
        let mut r = Repeats::default();
        assert_eq!(r.admit(&line("down"), t0), Some(0));
        assert_eq!(r.admit(&line("down"), t0 + Duration::from_secs(1)), None);
        assert_eq!(r.admit(&line("up"), t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(r.admit(&line("down"), t0 + Duration::from_secs(3)), None);
        assert_eq!(
            r.admit(&line("down"), t0 + REPEAT_WINDOW + Duration::from_secs(1)),
            Some(2),
            "shown again after the window, with the two held back"
        );
        assert_eq!(
            r.admit(&line("down"), t0 + REPEAT_WINDOW + Duration::from_secs(2)),
            None
        );
    }

    #[test]
    fn should_forget_lines_beyond_its_bound() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        for i in 0..REMEMBERED + 10 {
            assert_eq!(r.admit(&(3, "F".into(), i.to_string()), t0), Some(0));
        }
        assert!(r.lines.len() <= REMEMBERED);
    }

    #[test]
    fn should_map_syslog_levels_to_the_crates_levels() {
        assert!(matches!(log_level(3), RDKafkaLogLevel::Error));
        assert!(matches!(log_level(4), RDKafkaLogLevel::Warning));
        assert!(matches!(log_level(7), RDKafkaLogLevel::Debug));
    }
}
