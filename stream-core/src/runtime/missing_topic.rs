//! Noticing that a topic the stream thread reads was deleted while the
//! application runs.
//!
//! librdkafka learns of it from its periodic metadata refresh (after
//! `topic.metadata.propagation.max.ms`, 30 s by default, so that a topic
//! just created is not taken for a deleted one) and then sends an error for
//! each of the topic's partitions once a second. Those errors travel on the
//! partitions' own queues, which forward to the stream thread's input queue,
//! and librdkafka's batch read serves them by writing them to its log
//! ("`<client>: <topic> [<partition>]: topic does not exist (…)`") instead
//! of returning them: the thread never sees an error, only no records, and
//! an instance left that way ran idle for good, logging once a second per
//! partition.
//!
//! So the stream thread's client context hands every such log line to a
//! [`MissingTopicWatch`], and the stream thread, between batches, asks the
//! cluster about the topic named there ([`confirm_missing`]). If the topic
//! is gone the thread stops with [`RuntimeError::MissingTopic`], and the
//! instance with it.
//!
//! Kafka Streams does the like: its assignor finds the source topic missing
//! at the rebalance that follows, and the stream thread throws
//! `MissingSourceTopicException`, which by default shuts the client down.
//! A deleted output topic needs nothing here: its records fail delivery,
//! and a failed delivery stops the instance already.

use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;

use super::error::RuntimeError;

/// How long the confirming metadata request may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// The topic librdkafka last reported missing, waiting for the stream
/// thread to look.
#[derive(Default)]
pub(crate) struct MissingTopicWatch {
    reported: Mutex<Option<String>>,
}

impl MissingTopicWatch {
    /// Looks at one line of librdkafka's log (facility `fac`) and keeps the
    /// topic it reports missing, if it does.
    pub(crate) fn note(&self, fac: &str, message: &str) {
        if fac != "ERROR" {
            return;
        }
        if let Some(topic) = topic_reported_missing(message) {
            *self.reported.lock() = Some(topic.to_string());
        }
    }

    /// The topic reported missing since the last call, if any.
    pub(crate) fn take(&self) -> Option<String> {
        self.reported.lock().take()
    }
}

/// The topic named by librdkafka's "`<client>: <topic> [<partition>]: topic
/// does not exist (<reason>)`". A topic's name has no spaces (Kafka allows
/// letters, digits, `.`, `_` and `-`), so it is the word before the
/// partition, whatever the client's name holds.
pub(crate) fn topic_reported_missing(message: &str) -> Option<&str> {
    let (head, _) = message.split_once("]: topic does not exist")?;
    let (before_partition, _) = head.rsplit_once(" [")?;
    let topic = before_partition
        .rsplit_once(' ')
        .map_or(before_partition, |(_, t)| t);
    (!topic.is_empty()).then_some(topic)
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

    #[test]
    fn should_find_the_topic_in_librdkafkas_report() {
        let line = "[thrd:app]: app-1#consumer-5: in-app-1 [3]: topic does not exist (Broker: Unknown topic or partition)";
        assert_eq!(topic_reported_missing(line), Some("in-app-1"));
    }

    #[test]
    fn should_find_the_topic_when_the_client_name_has_spaces_and_colons() {
        let line = "my app: one#consumer-1: orders.v2 [0]: topic does not exist (Broker: Unknown topic or partition)";
        assert_eq!(topic_reported_missing(line), Some("orders.v2"));
    }

    #[test]
    fn should_ignore_other_errors() {
        for line in [
            "app#consumer-1: in [0]: Fetch failed: Broker: Not leader for partition",
            "app#consumer-1: 127.0.0.1:9092/1: Disconnected",
            "topic does not exist",
        ] {
            assert_eq!(topic_reported_missing(line), None, "{line}");
        }
    }

    #[test]
    fn should_keep_only_error_lines_and_hand_each_report_out_once() {
        let watch = MissingTopicWatch::default();
        let line =
            "app#consumer-1: words [1]: topic does not exist (Broker: Unknown topic or partition)";
        watch.note("FETCH", line);
        assert_eq!(watch.take(), None);
        watch.note("ERROR", line);
        assert_eq!(watch.take().as_deref(), Some("words"));
        assert_eq!(watch.take(), None);
    }
}
