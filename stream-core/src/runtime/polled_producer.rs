//! A producer whose delivery reports are served by a thread of its own,
//! without the idle spin of rdkafka's `ThreadedProducer`.
//!
//! `BaseProducer::poll(timeout)` loops until its deadline and hands
//! librdkafka the time left in whole milliseconds. The last fraction of a
//! millisecond becomes a timeout of 0, so the loop spins through it.
//! `ThreadedProducer` polls 100 ms at a time, so an idle producer spun
//! about 1 ms in every 100: 93 ms of CPU per 10 s, half of what an idle
//! instance used (fede1024/rust-rdkafka#748).
//!
//! This thread polls with a deadline 50 µs past a whole number of
//! milliseconds. librdkafka waits the whole milliseconds, and a thread's
//! wake-up comes at least the kernel's default timer slack (50 µs) later,
//! so the deadline has passed when the wait returns, and an idle poll ends
//! without spinning. After a delivery report the time left is again a
//! fraction, so a busy producer still spins below a millisecond per poll,
//! as before.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{BaseProducer, ProducerContext};
use rdkafka::ClientConfig;

/// How long one poll of the thread lasts (see the module's comment for
/// the 50 µs). It bounds how long dropping the producer waits for it.
const POLL: Duration = Duration::from_micros(100_050);

/// A [`BaseProducer`] with a thread that serves its delivery reports.
/// It derefs to the `BaseProducer` for sending, flushing and transactions;
/// dropping it stops the thread.
pub(crate) struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The thread's `/proc` directory, for tests that read its CPU time.
    #[cfg(test)]
    proc_dir: Arc<std::sync::OnceLock<std::path::PathBuf>>,
}

impl<C: ProducerContext + 'static> FromClientConfigAndContext<C> for PolledProducer<C> {
    fn from_config_and_context(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let stop = Arc::new(AtomicBool::new(false));
        #[cfg(test)]
        let proc_dir = Arc::new(std::sync::OnceLock::new());
        let thread = {
            let producer = Arc::clone(&producer);
            let stop = Arc::clone(&stop);
            #[cfg(test)]
            let proc_dir = Arc::clone(&proc_dir);
            std::thread::Builder::new()
                .name("producer-poll".into())
                .spawn(move || {
                    #[cfg(test)]
                    if let Ok(dir) = std::fs::read_link("/proc/thread-self") {
                        let _ = proc_dir.set(std::path::Path::new("/proc").join(dir));
                    }
                    while !stop.load(Ordering::Relaxed) {
                        producer.poll(POLL);
                    }
                })
                .map_err(|e| {
                    rdkafka::error::KafkaError::ClientCreation(format!(
                        "start the producer's polling thread: {e}"
                    ))
                })?
        };
        Ok(PolledProducer {
            producer,
            stop,
            thread: Some(thread),
            #[cfg(test)]
            proc_dir,
        })
    }
}

impl<C: ProducerContext + 'static> Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic in a delivery callback ended the thread; the
            // producer itself is dropped below either way.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer};

    use super::PolledProducer;

    fn unconnected() -> PolledProducer<DefaultProducerContext> {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("log_level", "0")
            .create_with_context(DefaultProducerContext)
            .expect("a producer needs no broker to be created")
    }

    /// The CPU time of the thread whose `/proc` directory is `dir`.
    fn cpu(dir: &Path) -> Option<Duration> {
        let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_nanos(ns))
    }

    /// The polling thread's `/proc` directory, once it has started.
    fn thread_dir(p: &PolledProducer<DefaultProducerContext>) -> Option<&Path> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Some(dir) = p.proc_dir.get() {
                return Some(dir);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// An idle producer's polling thread sleeps: over a second it uses far
    /// less than the ~10 ms that spinning through the last fraction of each
    /// poll's millisecond costs (`ThreadedProducer`).
    #[test]
    fn should_not_spin_while_idle() {
        let p = unconnected();
        let Some(dir) = thread_dir(&p) else {
            // No /proc (not Linux): nothing to measure here.
            return;
        };
        let before = cpu(dir).expect("the thread's schedstat");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let used = cpu(dir).expect("the thread still runs") - before;
        assert!(
            used < Duration::from_millis(4),
            "the idle polling thread used {used:?} in a second"
        );
    }

    /// Records sent through it reach librdkafka, and dropping it stops the
    /// thread within a poll.
    #[test]
    fn should_stop_its_thread_when_dropped() {
        let p = unconnected();
        let dir = thread_dir(&p).map(Path::to_path_buf);
        p.send(BaseRecord::<[u8], [u8]>::to("t").payload(&b"x"[..]))
            .map_err(|(e, _)| e)
            .expect("queued");
        assert_eq!(p.in_flight_count(), 1);
        p.purge(rdkafka::producer::PurgeConfig::default().queue());
        let start = Instant::now();
        drop(p);
        assert!(start.elapsed() < Duration::from_secs(1));
        if let Some(dir) = dir {
            assert!(!dir.exists(), "the polling thread still runs");
        }
    }
}
