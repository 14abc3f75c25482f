//! Noticing that an input the stream thread reads changed under it: the
//! topic deleted, or the log it reads replaced by a shorter one.
//!
//! librdkafka tells the application of neither; it writes both to its log:
//!
//! - **A deleted topic.** librdkafka learns of it from a metadata refresh
//!   and waits `topic.metadata.propagation.max.ms` (30 s by default, so that
//!   a topic just created is not taken for a deleted one); then it sends an
//!   error for each of the topic's partitions once a second. Those errors
//!   travel on the partitions' own queues, which forward to the stream
//!   thread's input queue, and librdkafka's batch read serves them by
//!   logging them ("`<client>: <topic> [<partition>]: topic does not exist
//!   (…)`", facility `ERROR`) instead of returning them. An instance left
//!   that way ran idle for good, logging once a second per partition.
//! - **A log reset.** A fetch from an offset the partition does not hold
//!   makes librdkafka move the fetch where `auto.offset.reset` says and log
//!   "`<topic> [<partition>]: offset reset (at offset …)`" (facility
//!   `OFFSET`), nothing more. When retention deleted the records, that is
//!   forward and harmless. When the topic was deleted and created again
//!   within those 30 s (librdkafka sees a new topic id and fetches the new
//!   log from the old position), it is backward: the new log's records
//!   have offsets below the task's position, and the task took them for
//!   records already processed and dropped every one, silently.
//!
//! So the stream thread's client context hands every warning and error
//! librdkafka logs to an [`InputWatch`], and the stream thread, between
//! batches, looks into what it kept: it asks the cluster whether a topic
//! reported missing is gone ([`confirm_missing`];
//! [`RuntimeError::MissingTopic`] if so), and checks a reset partition
//! against its task's position
//! ([`super::engine::Engine::check_reset`]; [`RuntimeError::InputRewound`]
//! unless retention explains the reset). Either stops the instance.
//!
//! Kafka Streams stops on a deleted source topic too: its assignor finds the
//! topic missing at the rebalance that follows, and the stream thread
//! throws `MissingSourceTopicException`, which by default shuts the client
//! down. A log reset it follows as `auto.offset.reset` says, as it keeps no
//! input positions of its own. A deleted output topic needs nothing here:
//! its records fail delivery, and a failed delivery stops the instance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;

use super::error::RuntimeError;

/// How long the confirming metadata request may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// What librdkafka reported about an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InputReport {
    /// The topic does not exist.
    Missing(String),
    /// The partition's fetch position was reset (`topic`, `partition`).
    Reset(String, i32),
}

/// The reports librdkafka logged since the stream thread last looked.
#[derive(Default)]
pub(crate) struct InputWatch {
    pending: AtomicBool,
    reports: Mutex<Vec<InputReport>>,
}

impl InputWatch {
    /// Looks at one line of librdkafka's log (facility `fac`) and keeps
    /// what it reports about an input, if anything.
    pub(crate) fn note(&self, fac: &str, message: &str) {
        if let Some(report) = report_in(fac, message) {
            let mut reports = self.reports.lock();
            if !reports.contains(&report) {
                reports.push(report);
            }
            self.pending.store(true, Ordering::Release);
        }
    }

    /// Keeps `report` to be looked into again (its answer could not be
    /// had this time).
    pub(crate) fn again(&self, report: InputReport) {
        self.reports.lock().push(report);
        self.pending.store(true, Ordering::Release);
    }

    /// The reports kept since the last call (none, cheaply, most of the
    /// time).
    pub(crate) fn take(&self) -> Vec<InputReport> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.reports.lock())
    }
}

/// What a line of librdkafka's log reports about an input. A topic's name
/// has no spaces (Kafka allows letters, digits, `.`, `_` and `-`), so it is
/// the word before the partition, whatever the line's prefix (thread,
/// client name) holds.
pub(crate) fn report_in(fac: &str, message: &str) -> Option<InputReport> {
    let (marker, missing) = match fac {
        "ERROR" => ("]: topic does not exist", true),
        "OFFSET" => ("]: offset reset (at ", false),
        _ => return None,
    };
    let (head, _) = message.split_once(marker)?;
    let (before, partition) = head.rsplit_once(" [")?;
    let topic = before.rsplit_once(' ').map_or(before, |(_, t)| t);
    if topic.is_empty() {
        return None;
    }
    if missing {
        Some(InputReport::Missing(topic.to_string()))
    } else {
        let partition = partition.parse().ok()?;
        Some(InputReport::Reset(topic.to_string(), partition))
    }
}

/// Asks the cluster whether `topic` exists; the error that stops the stream
/// thread if it does not. Anything short of the cluster saying so (no
/// answer, a broker away) is not taken as the topic missing: librdkafka
/// reports the topic again a second later, and the question is asked again.
pub(crate) fn confirm_missing<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Option<RuntimeError> {
    let metadata = match consumer.fetch_metadata(Some(topic), CONFIRM_TIMEOUT) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(topic, error = %e, "could not ask the cluster whether a topic exists");
            return None;
        }
    };
    let gone = match metadata.topics().iter().find(|t| t.name() == topic) {
        None => true,
        Some(t) => match t.error().map(RDKafkaErrorCode::from) {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => true,
            Some(_) => false,
            None => t.partitions().is_empty(),
        },
    };
    gone.then(|| RuntimeError::MissingTopic {
        topic: topic.to_string(),
        hint: "it was deleted while the application ran; once it exists again, reset the application (the programs' --reset) before restarting: its state names offsets of the deleted topic".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(t: &str) -> Option<InputReport> {
        Some(InputReport::Missing(t.into()))
    }

    #[test]
    fn should_find_the_topic_in_librdkafkas_missing_topic_report() {
        let line = "[thrd:app]: app-1#consumer-5: in-app-1 [3]: topic does not exist (Broker: Unknown topic or partition)";
        assert_eq!(report_in("ERROR", line), missing("in-app-1"));
    }

    #[test]
    fn should_find_the_topic_when_the_client_name_has_spaces_and_colons() {
        let line = "my app: one#consumer-1: orders.v2 [0]: topic does not exist (Broker: Unknown topic or partition)";
        assert_eq!(report_in("ERROR", line), missing("orders.v2"));
    }

    #[test]
    fn should_find_the_partition_in_librdkafkas_offset_reset_report() {
        let line = "[thrd:main]: in-rec-12955 [1]: offset reset (at offset 240 (leader epoch 0), broker 1) to offset BEGINNING (leader epoch -1): fetch failed due to requested offset not available on the broker: Broker: Offset out of range";
        assert_eq!(
            report_in("OFFSET", line),
            Some(InputReport::Reset("in-rec-12955".into(), 1))
        );
    }

    #[test]
    fn should_ignore_other_lines() {
        for (fac, line) in [
            (
                "FETCH",
                "app#consumer-1: in [0]: Fetch failed: Broker: Not leader for partition",
            ),
            ("ERROR", "app#consumer-1: 127.0.0.1:9092/1: Disconnected"),
            ("ERROR", "topic does not exist"),
            (
                "FETCH",
                "words [1]: topic does not exist (Broker: Unknown topic or partition)",
            ),
            (
                "OFFSET",
                "words [x]: offset reset (at offset 3, broker 1) to offset END",
            ),
        ] {
            assert_eq!(report_in(fac, line), None, "{fac}: {line}");
        }
    }

    #[test]
    fn should_hand_each_report_out_once() {
        let watch = InputWatch::default();
        let line =
            "app#consumer-1: words [1]: topic does not exist (Broker: Unknown topic or partition)";
        assert!(watch.take().is_empty());
        watch.note("ERROR", line);
        watch.note("ERROR", line);
        assert_eq!(watch.take(), vec![InputReport::Missing("words".into())]);
        assert!(watch.take().is_empty());
    }
}
