//! The producer side of an instance: sending output records with retries
//! on a full queue, tracking their delivery (the changelog offsets
//! acknowledged, the failures), the production error handler for records
//! the brokers refuse, the local dead-letter file, and transactions.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

use super::error::RuntimeError;
use super::production::{append_json_line, is_record_error, Rejected};
use super::status::RuntimeStatus;
use super::topics::ErrorCapture;
use crate::coordinates::TopicPartition;
use crate::record::{OutKind, OutRecord};
use crate::task::ErrorPolicy;

/// How long a transaction call may take.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Delivery opaque of a sink record (user or repartition topic).
const SINK: usize = 0;
/// Delivery opaque of a changelog record: its offset is tracked.
const CHANGELOG: usize = 1;
/// Delivery opaque of a dead-letter record.
const DEAD_LETTER: usize = 2;

/// Offsets acknowledged per changelog partition, and delivery failures.
#[derive(Default)]
pub(crate) struct DeliveryState {
    next: Mutex<HashMap<String, HashMap<i32, i64>>>,
    errors: Mutex<Vec<(String, i32, KafkaError)>>,
    rejected: Mutex<Vec<Rejected>>,
}

impl DeliveryState {
    fn snapshot(&self) -> HashMap<TopicPartition, i64> {
        let g = match self.next.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.iter()
            .flat_map(|(t, ps)| {
                ps.iter()
                    .map(move |(p, o)| (TopicPartition::new(t, *p), *o))
            })
            .collect()
    }

    fn errors_pending(&self) -> bool {
        self.errors.lock().map(|g| !g.is_empty()).unwrap_or(true)
    }

    fn take_rejected(&self) -> Vec<Rejected> {
        match self.rejected.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }

    fn take_errors(&self) -> Vec<(String, i32, KafkaError)> {
        match self.errors.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        }
    }
}

/// Producer context: tracks acknowledged changelog offsets and failures.
pub(crate) struct DeliveryTracker {
    pub(crate) state: Arc<DeliveryState>,
    pub(crate) capture: ErrorCapture,
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.capture.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.capture.error(error, reason)
    }
}

impl ProducerContext for DeliveryTracker {
    /// [`SINK`], [`CHANGELOG`] (offsets tracked) or [`DEAD_LETTER`].
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tracked: usize) {
        match result {
            Ok(m) if tracked == CHANGELOG => {
                if let Ok(mut g) = self.state.next.lock() {
                    let parts = match g.get_mut(m.topic()) {
                        Some(p) => p,
                        None => g.entry(m.topic().to_string()).or_default(),
                    };
                    let e = parts.entry(m.partition()).or_insert(0);
                    *e = (*e).max(m.offset() + 1);
                }
            }
            Ok(_) => {}
            Err((e, m)) if tracked == SINK && is_record_error(e.rdkafka_error_code()) => {
                if let Ok(mut g) = self.state.rejected.lock() {
                    g.push(Rejected {
                        topic: m.topic().to_string(),
                        partition: Some(m.partition()),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        error: e.to_string(),
                    });
                }
            }
            Err((e, m)) => {
                if let Ok(mut g) = self.state.errors.lock() {
                    g.push((m.topic().to_string(), m.partition(), e.clone()));
                }
            }
        }
    }
}

/// Sends an instance's output and owns its producer.
pub(crate) struct OutputProducer {
    producer: ThreadedProducer<DeliveryTracker>,
    delivery: Arc<DeliveryState>,
    /// Where dead letters go when the dead-letter topic is unusable.
    dead_letter_file: Option<PathBuf>,
    /// Where refused sink records are kept.
    production_errors: PathBuf,
    on_error: ErrorPolicy,
    status: Arc<RuntimeStatus>,
    /// Exactly-once: outputs, changelogs and offsets commit in one transaction.
    eos: bool,
    in_txn: bool,
}

impl OutputProducer {
    /// Wraps `producer` (created with a [`DeliveryTracker`] on `delivery`).
    pub(crate) fn new(
        producer: ThreadedProducer<DeliveryTracker>,
        delivery: Arc<DeliveryState>,
        dead_letter_file: Option<PathBuf>,
        production_errors: PathBuf,
        on_error: ErrorPolicy,
        status: Arc<RuntimeStatus>,
        eos: bool,
    ) -> Self {
        OutputProducer {
            producer,
            delivery,
            dead_letter_file,
            production_errors,
            on_error,
            status,
            eos,
            in_txn: false,
        }
    }

    /// Whether this producer runs transactions.
    pub(crate) fn exactly_once(&self) -> bool {
        self.eos
    }

    /// Whether a transaction is open.
    pub(crate) fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// The changelog offsets acknowledged so far (`topic/partition` → next).
    pub(crate) fn acknowledged(&self) -> HashMap<TopicPartition, i64> {
        self.delivery.snapshot()
    }

    fn begin_transaction(&mut self) -> Result<(), RuntimeError> {
        if self.eos && !self.in_txn {
            self.producer
                .begin_transaction()
                .map_err(|e| RuntimeError::kafka("begin transaction", e))?;
            self.in_txn = true;
        }
        Ok(())
    }

    /// Sends every record.
    pub(crate) fn send_all(&mut self, records: Vec<OutRecord>) -> Result<(), RuntimeError> {
        for r in records {
            self.send(r)?;
        }
        Ok(())
    }

    /// Sends one record (into the open transaction under exactly-once).
    pub(crate) fn send(&mut self, r: OutRecord) -> Result<(), RuntimeError> {
        if r.kind == OutKind::DeadLetter && self.dead_letter_file.is_some() {
            return self.write_dead_letter_file(&r);
        }
        self.begin_transaction()?;
        let tracked = match r.kind {
            OutKind::Sink => SINK,
            OutKind::Changelog(_) => CHANGELOG,
            OutKind::DeadLetter => DEAD_LETTER,
        };
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&r.topic, tracked)
                .headers(headers)
                .timestamp(r.timestamp);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) if tracked == SINK && is_record_error(e.rdkafka_error_code()) => {
                    return self.refused(Rejected {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        key: r.key.clone(),
                        value: r.value.clone(),
                        error: e.to_string(),
                    });
                }
                Err((e, _)) => return Err(self.explain_send_failure(&r.topic, e)),
            }
        }
    }

    /// A fatal producer error, explained where the client said why.
    fn explain_send_failure(&self, topic: &str, e: KafkaError) -> RuntimeError {
        let last = self.producer.context().capture.last();
        let denied = matches!(
            last.as_ref().and_then(|(c, _)| *c),
            Some(
                RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::TopicAuthorizationFailed
            )
        );
        if denied {
            return RuntimeError::NotAuthorized {
                operation: "Write".into(),
                resource: format!("topic `{topic}`"),
                hint: format!(
                    "allow Write and Describe on topic {topic}; the broker refused the producer ({})",
                    last.map(|(_, r)| r).unwrap_or_default()
                ),
            };
        }
        RuntimeError::Delivery(format!("{topic}: {e}"))
    }

    fn write_dead_letter_file(&self, r: &OutRecord) -> Result<(), RuntimeError> {
        let Some(path) = &self.dead_letter_file else {
            return Ok(());
        };
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let line = serde_json::json!({
            "topic": header("dlq.topic"),
            "partition": header("dlq.partition"),
            "offset": header("dlq.offset"),
            "stage": header("dlq.stage"),
            "error": header("dlq.error"),
            "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "value": r.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
        });
        append_json_line(path, "dead-letter", &line)
    }

    /// Waits until everything produced is acknowledged (through broker
    /// outages: librdkafka fails a record only after its delivery timeout).
    pub(crate) fn flush(&mut self) -> Result<(), RuntimeError> {
        let waiting_since = Instant::now();
        while let Err(e) = self.producer.flush(Duration::from_secs(5)) {
            if !self.delivery.errors_pending() {
                tracing::warn!(
                    in_flight = self.producer.in_flight_count(),
                    waited_s = waiting_since.elapsed().as_secs(),
                    error = %e,
                    "waiting for the brokers to acknowledge produced records before committing"
                );
                continue;
            }
            break;
        }
        self.check_delivery()
    }

    /// The production error handler (see [`super::production`]).
    fn refused(&mut self, r: Rejected) -> Result<(), RuntimeError> {
        if self.on_error == ErrorPolicy::FailFast || self.eos {
            let why = if self.eos {
                " (under exactly-once the transaction cannot commit without it)"
            } else {
                ""
            };
            return Err(RuntimeError::Delivery(format!("{}{why}", r.describe())));
        }
        let path = self.production_errors.clone();
        tracing::warn!(file = %path.display(), "{}; kept in the production-error file, going on", r.describe());
        r.park(&path)?;
        self.status.record_production_error();
        Ok(())
    }

    fn check_delivery(&mut self) -> Result<(), RuntimeError> {
        for r in self.delivery.take_rejected() {
            self.refused(r)?;
        }
        let errors = self.delivery.take_errors();
        if let Some((topic, _, _)) = errors.iter().find(|(_, _, e)| {
            e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed)
        }) {
            return Err(RuntimeError::NotAuthorized {
                operation: "Write".into(),
                resource: format!("topic `{topic}`"),
                hint: format!("allow Write and Describe on topic {topic} for this user"),
            });
        }
        if let Some((topic, _, e)) = errors.first() {
            if let err @ RuntimeError::NotAuthorized { .. } =
                self.explain_send_failure(topic, e.clone())
            {
                return Err(err);
            }
        }
        if !errors.is_empty() {
            let text: Vec<String> = errors
                .iter()
                .take(5)
                .map(|(t, p, e)| format!("{t}[{p}]: {e}"))
                .collect();
            return Err(RuntimeError::Delivery(format!(
                "{} record(s) failed, e.g. {}",
                errors.len(),
                text.join("; ")
            )));
        }
        Ok(())
    }

    /// Commits the open transaction with the input offsets `tpl`. Returns
    /// `false` when it had to be aborted (the caller rolls its tasks back
    /// and rewinds the consumer, so the batch is processed again).
    pub(crate) fn commit_transaction(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
        tpl: &TopicPartitionList,
    ) -> Result<bool, RuntimeError> {
        self.begin_transaction()?;
        let Some(meta) = consumer.group_metadata() else {
            return Err(RuntimeError::NoGroupMetadata);
        };
        let r = if tpl.count() > 0 {
            self.producer
                .send_offsets_to_transaction(tpl, &meta, CLIENT_TIMEOUT)
        } else {
            Ok(())
        }
        .and_then(|()| self.producer.commit_transaction(CLIENT_TIMEOUT));
        match r {
            Ok(()) => {
                self.in_txn = false;
                // Everything is delivered; this waits until the delivery
                // reports are served, so the checkpoint records the latest
                // changelog offsets.
                let _ = self.producer.flush(CLIENT_TIMEOUT);
                self.check_delivery()?;
                Ok(true)
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                tracing::warn!(error = %e, "transaction aborted; reprocessing from the last commit");
                self.abort_transaction()?;
                Ok(false)
            }
            Err(e) => Err(RuntimeError::kafka(
                "commit transaction (this instance may have been fenced by a newer one)",
                e,
            )),
        }
    }

    /// Aborts the open transaction, if any, and forgets its failures.
    pub(crate) fn abort_transaction(&mut self) -> Result<(), RuntimeError> {
        if self.in_txn {
            self.producer
                .abort_transaction(CLIENT_TIMEOUT)
                .map_err(|e| RuntimeError::kafka("abort transaction", e))?;
            self.in_txn = false;
        }
        let _ = self.delivery.take_errors();
        Ok(())
    }
}
