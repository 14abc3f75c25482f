//! Waiting, after creating topics, until every broker lists them.
//!
//! The controller accepts a topic's creation before the brokers know it,
//! and each broker learns it from the metadata log at its own pace: on a
//! three-broker test cluster a lookup right after the creation missed the
//! topic in half of the creations, for up to 0.44 s. A lookup asks one
//! broker, so one lookup that lists the topic says nothing of the others.
//! A consumer's group looks its subscription up on any broker, and
//! librdkafka reports a subscribed topic missing from that answer as a
//! consumer error at once, which stops the stream thread. So after
//! creating internal topics the instance asks every broker, each through a
//! client of its own whose only bootstrap address is that broker (a new
//! client sends its lookups over the one connection it has), until each
//! lists every created topic with its partitions.
//!
//! Kafka Streams' own test cluster waits the same way, on every broker,
//! for a topic it created (`IntegrationTestUtils.waitForTopicPartitions`).
//! A cluster of one broker needs none of this: the admin client's lookup
//! after the creation has asked it already.

use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::config::StreamsConfig;
use super::connect::{ErrorCapture, METADATA_TIMEOUT};
use super::error::RuntimeError;

/// Waits until every broker of the cluster lists each of `topics` (name,
/// partition count), for up to [`METADATA_TIMEOUT`] in all. An error names
/// the first broker that did not list a topic in time.
pub(crate) fn wait_for_every_broker(
    cfg: &StreamsConfig,
    admin: &AdminClient<ErrorCapture>,
    topics: &[(&str, i32)],
) -> Result<(), RuntimeError> {
    let Some(&(first, _)) = topics.first() else {
        return Ok(());
    };
    let metadata = admin
        .inner()
        .fetch_metadata(Some(first), METADATA_TIMEOUT)
        .map_err(|e| RuntimeError::kafka("list the brokers", e))?;
    let brokers: Vec<String> = metadata
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect();
    if brokers.len() < 2 {
        return Ok(());
    }
    let started = Instant::now();
    let until = started + METADATA_TIMEOUT;
    let mut silent = 0;
    'brokers: for broker in &brokers {
        let mut config = cfg.admin_config();
        config.set("bootstrap.servers", broker);
        let client: BaseConsumer<ErrorCapture> = config
            .create_with_context(ErrorCapture::default())
            .map_err(|e| RuntimeError::kafka(format!("a client for broker {broker}"), e))?;
        for &(topic, partitions) in topics {
            loop {
                match listing(&client, topic, partitions) {
                    Listing::Listed => break,
                    // A broker that does not answer (down, and not yet
                    // dropped from the metadata) cannot answer a group's
                    // lookup either.
                    Listing::NoAnswer(e) => {
                        tracing::warn!(broker = %broker, topic, error = %e, "a broker did not answer whether it lists a topic just created; not waiting for it");
                        silent += 1;
                        continue 'brokers;
                    }
                    Listing::Missing => {}
                }
                if Instant::now() >= until {
                    return Err(RuntimeError::MissingTopic {
                        topic: topic.to_string(),
                        hint: format!(
                            "the cluster accepted its creation, but broker {broker} did not list it within {} s; retry, and check that broker's log",
                            METADATA_TIMEOUT.as_secs()
                        ),
                    });
                }
                // Blocking, as the lookup itself is.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    tracing::info!(
        brokers = brokers.len(),
        not_answering = silent,
        topics = topics.len(),
        waited_ms = started.elapsed().as_millis() as u64,
        "every broker that answers lists the topics created"
    );
    Ok(())
}

/// What one broker said of a topic.
enum Listing {
    /// It lists the topic with the partitions expected.
    Listed,
    /// It answered without the topic (or with fewer partitions).
    Missing,
    /// The lookup failed.
    NoAnswer(rdkafka::error::KafkaError),
}

/// Asks the broker `client` reaches whether it lists `topic` with
/// `partitions` partitions.
fn listing(client: &BaseConsumer<ErrorCapture>, topic: &str, partitions: i32) -> Listing {
    match client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
        Err(e) => Listing::NoAnswer(e),
        Ok(md) => {
            let listed = md.topics().iter().any(|t| {
                t.name() == topic
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
            });
            if listed {
                Listing::Listed
            } else {
                Listing::Missing
            }
        }
    }
}
