//! The Kafka clients of one stream thread and their settings: the
//! producer (idempotent; transactional under exactly-once), the restore
//! consumer, and the group consumer.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::Producer;

use super::polled_producer::PolledProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::config::{KafkaClient, StreamsConfig};
use super::error::RuntimeError;
use super::producer::{DeliveryState, DeliveryTracker};
use super::topics::ErrorCapture;

/// Names of one stream thread's clients.
#[derive(Clone)]
pub(crate) struct ThreadIds {
    /// `client.id` of its producer and group consumer.
    pub(crate) client_id: String,
    /// `transactional.id` (used under exactly-once).
    pub(crate) transactional_id: String,
    /// `group.instance.id` (static membership), if any.
    pub(crate) static_id: Option<String>,
}

impl ThreadIds {
    /// The ids of thread `thread` of `threads` of the instance whose state
    /// directory has id `instance_id`.
    pub(crate) fn new(
        cfg: &StreamsConfig,
        thread: usize,
        threads: usize,
        instance_id: &str,
    ) -> Self {
        let base = cfg.client_id.as_deref().unwrap_or(&cfg.application_id);
        let suffix = |s: &str| {
            if threads > 1 {
                format!("{s}-{thread}")
            } else {
                s.to_string()
            }
        };
        let transactional_id = if thread == 0 {
            format!("{}-{instance_id}", cfg.application_id)
        } else {
            format!("{}-{instance_id}-{thread}", cfg.application_id)
        };
        // Single-instance mode: static membership by default, derived from
        // the state directory, so a restart (even after kill -9) replaces
        // the old member instead of looking like a second instance.
        let static_id = cfg.group_instance_id.clone().or_else(|| {
            (cfg.single_instance && !cfg.outside_group)
                .then(|| format!("{}-{instance_id}", cfg.application_id))
        });
        ThreadIds {
            client_id: suffix(base),
            transactional_id,
            static_id: static_id.as_deref().map(suffix),
        }
    }
}

/// How long the producer waits to fill a batch (`linger.ms`), at least
/// once: 100 ms, as Kafka Streams' producer.
const LINGER_MS: &str = "100";

/// `linger.ms` under exactly-once. Each commit flushes the transaction's
/// records, and records produced while the commit runs are held in
/// memory (`super::held`) until it is done. With 100 ms, nearly the whole
/// interval's records were still unsent at the commit, which then took
/// longer and held more: on the watchlist benchmark (1,000,000 users,
/// 100 ms commits, four rounds each, the two in turn), 10 ms lowered peak
/// RSS from 120–124 to 106–114 MiB at one thread and from 148–152 to
/// 126–143 MiB at two, and took 3.9–4.8 s against 4.1–5.2 s at one thread
/// and 3.4–4.3 against 3.7–4.7 s at two, with the same CPU (in an earlier,
/// quieter set at two threads, 2.9–3.5 s against 2.7–3.0 s). Kafka's own
/// producer default is 5 ms. Kafka Streams keeps 100 ms under exactly-once
/// too, but it processes nothing while it commits, so it holds nothing.
/// `producer.linger.ms` overrides either.
const EOS_LINGER_MS: &str = "10";

/// The thread's producer, reporting deliveries to `delivery`; under
/// exactly-once with its transactions initialised (which fences an earlier
/// incarnation and aborts its open transaction).
pub(crate) fn producer(
    cfg: &StreamsConfig,
    ids: &ThreadIds,
    eos: bool,
    delivery: Arc<DeliveryState>,
) -> Result<PolledProducer<DeliveryTracker>, RuntimeError> {
    let mut pc = cfg.client_config();
    pc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", if eos { EOS_LINGER_MS } else { LINGER_MS })
        .set("partitioner", "murmur2_random")
        .set("client.id", &ids.client_id)
        // librdkafka's producer asks the broker to create a topic it looks
        // up (Kafka's brokers do by default): a sink deleted under a running
        // instance would come back with the broker's default partition
        // count. `producer.allow.auto.create.topics=true` opts back in.
        .set("allow.auto.create.topics", "false");
    cfg.apply_extra(&mut pc, KafkaClient::Producer);
    if eos {
        let timeout = cfg.transaction_timeout().map_err(RuntimeError::Config)?;
        pc.set("transactional.id", &ids.transactional_id)
            .set("transaction.timeout.ms", timeout.as_millis().to_string());
    } else {
        // Below the session timeout: see `StreamsConfig::delivery_timeout`.
        let timeout = cfg.delivery_timeout().map_err(RuntimeError::Config)?;
        pc.set("message.timeout.ms", timeout.as_millis().to_string());
    }
    let producer: PolledProducer<DeliveryTracker> = pc
        .create_with_context(DeliveryTracker {
            state: delivery,
            capture: ErrorCapture::default(),
        })
        .map_err(|e| RuntimeError::kafka("create producer", e))?;
    if eos {
        let tid = &ids.transactional_id;
        producer
            .init_transactions(Duration::from_secs(30))
            .map_err(|e| match e.rdkafka_error_code() {
                Some(
                    RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed,
                ) => RuntimeError::NotAuthorized {
                    operation: "Write".into(),
                    resource: format!("transactional id `{tid}`"),
                    hint: format!(
                        "exactly-once needs Write and Describe on transactional id {tid} (prefix {}-); use at-least-once where transactional ids are not allowed",
                        cfg.application_id
                    ),
                },
                _ => RuntimeError::kafka("initialise transactions", e),
            })?;
        tracing::info!(transactional_id = %tid, "exactly-once: transactions initialised");
    }
    Ok(producer)
}

/// Records the group consumer prefetches (librdkafka's
/// `queued.min.messages`, 100,000 by default). librdkafka compares it with
/// the length of the consumer's one queue, which every assigned partition
/// feeds, so it bounds the prefetch of all partitions together (plus up to
/// one fetch per partition, see below). librdkafka keeps about 80
/// bytes of bookkeeping per prefetched record besides its payload: with
/// small records its default held tens of MiB per partition before a task
/// asked for them. Kafka Streams buffers 1,000 per partition
/// (`buffered.records.per.partition`). Overridable through
/// `StreamsConfig::extra`, as the settings below.
const QUEUED_MIN_MESSAGES: &str = "5000";

/// How long a partition's next fetch waits once its prefetch queue is full
/// (librdkafka's `fetch.queue.backoff.ms`, 1 s by default): with the small
/// queue above, a second of idle input after every refill. The stream
/// thread drains 5,000 records in about 12 ms, so even 10 ms left it
/// waiting for input: the watchlist benchmark (1,000,000 users,
/// at-least-once, 100 ms commits, one thread) took 3.68 s against 3.91 s
/// with 10 ms, faster in each of five rounds in turn, with the same CPU and
/// peak RSS (92 against 94 MiB); another five rounds, 3.45 against 3.69 s.
/// The wait applies only while the queue is full, so an idle consumer
/// fetches as before. The restore consumer waits 1 ms too.
const FETCH_QUEUE_BACKOFF_MS: &str = "1";

/// Largest fetch per partition of the group consumer (librdkafka's
/// `max.partition.fetch.bytes`, 1 MiB by default). The prefetch limit above
/// is checked before a fetch, and one fetch is parsed into per-record
/// bookkeeping at once: 1 MiB of 25-byte records is some 40,000 records per
/// partition on top of the limit. 256 KiB kept an emit-final run with
/// 100,000 open windows at 158–168 MiB peak RSS (212–232 MiB with 1 MiB)
/// and did not slow the watchlist benchmark (25.0 s vs 25.7 s, one run
/// each). Restores fetch up to 1 MiB per partition
/// (`RESTORE_PARTITION_FETCH_BYTES`).
const GROUP_FETCH_BYTES: &str = "262144";

/// Records the restore consumer keeps fetched ahead of the restore
/// (`queued.min.messages`). librdkafka checks it against the consumer's
/// one queue, which every assigned partition feeds, so it bounds the whole
/// prefetch, not each partition's. 5,000 records is under a millisecond
/// of restore work, less than a fetch takes to come back: the restore
/// waited for fetches. With 20,000, 1 MiB fetches and a 1 ms back-off, a
/// restore of 1,000,000 changes took 0.19 s against 0.27 s (medians of 8,
/// the two builds in turn), and of 10,000,000 changes 1.7–2.4 s against
/// 2.7–3.1 s (`docs/performance.md`).
const RESTORE_PREFETCH: &str = "20000";

/// Largest fetch per changelog partition. Smaller fetches than the 4 MiB
/// used before come back sooner, so restore starts applying earlier and
/// the broker's next answer overlaps the work on this one.
const RESTORE_PARTITION_FETCH_BYTES: &str = "1048576";

/// Largest fetch response of the restore consumer (`fetch.max.bytes`):
/// one partition's fetch, so that a response holds about one partition's
/// records. librdkafka wraps every record of a response in a message that
/// holds a reference to the response's buffer and to its partition, taken
/// by the thread that parses the response and released by the thread that
/// destroys the message. With responses of 16 MiB, four partitions' records
/// shared one buffer: the restorer released references on a buffer the
/// broker thread was still parsing, and the two threads passed its count's
/// cache line back and forth once per record. In a restore of 10,000,000
/// changes over 1,000,000 keys, the broker thread took 1.85–1.90 CPU s
/// against 2.13–2.36 s with 16 MiB, and the restorer 2.58–2.73 s against
/// 2.83–3.00 s (`docs/performance.md`, "Fetch responses of about one
/// partition"). librdkafka refuses a `fetch.max.bytes` below
/// `message.max.bytes`, so a larger `message.max.bytes` in the settings
/// raises it to that ([`restore_consumer_config`]).
const RESTORE_FETCH_BYTES: &str = RESTORE_PARTITION_FETCH_BYTES;

/// How long a partition's next fetch waits once the prefetch is full: a
/// restore drains 20,000 records in a few milliseconds, so the 10 ms of
/// the group consumer would leave it idle.
const RESTORE_FETCH_BACKOFF_MS: &str = "1";

/// How long the broker holds a fetch that finds nothing new
/// (`fetch.wait.max.ms`). A restore always finds records until its end, so
/// this only paces caught-up standbys: with 10 ms, two idle instances with
/// standbys fetched 100 times a second each (25–42 ms of librdkafka's CPU
/// per 10 s each, and the broker's). A new record still comes back at once;
/// what waits is a partition assigned while such a fetch is out (a new
/// restore or standby, or a resumed one): up to this long. Kafka Streams'
/// restore consumer waits 500 ms (the Java consumer's default).
const RESTORE_FETCH_WAIT_MS: &str = "100";

/// How the restore consumer fetches: a bounded long-poll, and a prefetch
/// that keeps ahead of the restore (the constants above). The restore
/// benchmark's ceiling (`bench-read`) reads with these too.
pub const RESTORE_FETCH_SETTINGS: &[(&str, &str)] = &[
    ("fetch.wait.max.ms", RESTORE_FETCH_WAIT_MS),
    ("max.partition.fetch.bytes", RESTORE_PARTITION_FETCH_BYTES),
    ("fetch.max.bytes", RESTORE_FETCH_BYTES),
    ("queued.max.messages.kbytes", "32768"),
    ("queued.min.messages", RESTORE_PREFETCH),
    ("fetch.queue.backoff.ms", RESTORE_FETCH_BACKOFF_MS),
];

/// The thread's restore consumer: reads changelogs by assignment, committed
/// data only, with a deep prefetch.
pub(crate) fn restore_consumer(
    cfg: &StreamsConfig,
    ids: &ThreadIds,
) -> Result<BaseConsumer<ErrorCapture>, RuntimeError> {
    restore_consumer_config(cfg, ids)
        .create_with_context(ErrorCapture::default())
        .map_err(|e| RuntimeError::kafka("create restore consumer", e))
}

/// Settings of the thread's restore consumer. Its fetch tuning wins over
/// `extra`'s shared settings, and settings aimed at it
/// (`restore.consumer.…`, `consumer.…`) win over the tuning; what restore
/// needs to be correct (committed data only, no commits) is set last.
fn restore_consumer_config(cfg: &StreamsConfig, ids: &ThreadIds) -> ClientConfig {
    let mut rc = cfg.client_config();
    for (k, v) in RESTORE_FETCH_SETTINGS {
        rc.set(*k, *v);
    }
    rc.set("client.id", format!("{}-restore", ids.client_id));
    cfg.apply_aimed_extra(&mut rc, KafkaClient::RestoreConsumer);
    let aimed = cfg.aimed_extra(KafkaClient::RestoreConsumer);
    if !aimed.iter().any(|&(k, _)| k == "fetch.max.bytes") {
        raise_fetch_bytes_to_message_size(&mut rc);
    }
    rc.set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        // librdkafka needs a group id even to assign(); this consumer never
        // joins or commits, and the application's own id needs no extra ACL.
        .set("group.id", &cfg.application_id);
    rc
}

/// librdkafka refuses a consumer whose `fetch.max.bytes` is below its
/// `message.max.bytes`: where the settings (shared, or aimed at the restore
/// consumer) raise the latter above the restore consumer's fetch size, the
/// fetch size follows it. A `fetch.max.bytes` aimed at the restore
/// consumer is left as the user set it.
fn raise_fetch_bytes_to_message_size(rc: &mut ClientConfig) {
    let size = |key: &str| rc.get(key).and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(message), Some(fetch)) = (size("message.max.bytes"), size("fetch.max.bytes")) {
        if message > fetch {
            rc.set("fetch.max.bytes", message.to_string());
        }
    }
}

/// Settings of the thread's group consumer (created by the caller with its
/// own context, which runs rebalances).
pub(crate) fn group_consumer_config(cfg: &StreamsConfig, ids: &ThreadIds) -> ClientConfig {
    let mut cc = cfg.client_config();
    cc.set("group.id", &cfg.application_id)
        .set("client.id", &ids.client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // A bounded prefetch (see QUEUED_MIN_MESSAGES).
        .set("queued.min.messages", QUEUED_MIN_MESSAGES)
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("max.partition.fetch.bytes", GROUP_FETCH_BYTES)
        .set(
            "session.timeout.ms",
            super::config::DEFAULT_SESSION_TIMEOUT
                .as_millis()
                .to_string(),
        )
        .set("heartbeat.interval.ms", "1000")
        // One strategy for every program, so that programs sharing a
        // group (a classroom team's) never disagree on the protocol.
        .set("partition.assignment.strategy", &cfg.assignment_strategy);
    if let Some(id) = &ids.static_id {
        cc.set("group.instance.id", id);
    }
    if let Some(server) = cfg.advertised_server() {
        // Other instances find this one's HTTP server through the group.
        cc.set("client.id", format!("{}@{server}", ids.client_id));
    }
    cfg.apply_extra(&mut cc, KafkaClient::MainConsumer);
    // A task that reads several topics learns from these events that a
    // partition is caught up (`time_order`); they never reach the user.
    cc.set("enable.partition.eof", "true");
    cc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> ThreadIds {
        ThreadIds {
            client_id: "app".into(),
            transactional_id: "app-1".into(),
            static_id: None,
        }
    }

    /// The restore consumer keeps its fetch tuning against a shared
    /// setting, takes one aimed at it, and keeps reading committed data
    /// whatever is aimed at it.
    #[test]
    fn should_let_settings_aimed_at_the_restore_consumer_change_its_tuning() {
        let mut cfg = StreamsConfig::new("app", "127.0.0.1:9092");
        cfg.extra
            .insert("queued.min.messages".into(), "1000".into());
        cfg.extra
            .insert("restore.consumer.fetch.wait.max.ms".into(), "500".into());
        cfg.extra.insert(
            "restore.consumer.isolation.level".into(),
            "read_uncommitted".into(),
        );
        cfg.extra
            .insert("main.consumer.fetch.wait.max.ms".into(), "7".into());
        let rc = restore_consumer_config(&cfg, &ids());
        assert_eq!(rc.get("queued.min.messages"), Some(RESTORE_PREFETCH));
        assert_eq!(rc.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(rc.get("isolation.level"), Some("read_committed"));

        let cc = group_consumer_config(&cfg, &ids());
        assert_eq!(cc.get("queued.min.messages"), Some("1000"));
        assert_eq!(cc.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(cc.get("restore.consumer.fetch.wait.max.ms"), None);
    }

    /// The restore consumer fetches one partition's worth per response; a
    /// `message.max.bytes` above that (shared, or aimed at the restore
    /// consumer) raises its fetch size rather than making librdkafka refuse
    /// the consumer, and a `fetch.max.bytes` aimed at it stays as set.
    #[test]
    fn should_raise_the_restore_fetch_size_to_a_larger_message_size() {
        let cfg = StreamsConfig::new("app", "127.0.0.1:9092");
        let rc = restore_consumer_config(&cfg, &ids());
        assert_eq!(rc.get("fetch.max.bytes"), Some(RESTORE_FETCH_BYTES));
        assert_eq!(
            rc.get("fetch.max.bytes"),
            rc.get("max.partition.fetch.bytes")
        );

        let mut cfg = StreamsConfig::new("app", "127.0.0.1:9092");
        cfg.extra
            .insert("message.max.bytes".into(), "4000000".into());
        let rc = restore_consumer_config(&cfg, &ids());
        assert_eq!(rc.get("fetch.max.bytes"), Some("4000000"));
        let created: Result<rdkafka::consumer::BaseConsumer, _> = rc.create();
        assert!(
            created.is_ok(),
            "librdkafka refused the restore consumer: {:?}",
            created.err()
        );

        let mut cfg = StreamsConfig::new("app", "127.0.0.1:9092");
        cfg.extra.insert(
            "restore.consumer.message.max.bytes".into(),
            "3000000".into(),
        );
        let rc = restore_consumer_config(&cfg, &ids());
        assert_eq!(rc.get("fetch.max.bytes"), Some("3000000"));

        cfg.extra
            .insert("restore.consumer.fetch.max.bytes".into(), "5000000".into());
        let rc = restore_consumer_config(&cfg, &ids());
        assert_eq!(rc.get("fetch.max.bytes"), Some("5000000"));
    }
}
