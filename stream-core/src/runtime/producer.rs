//! The producer side of an instance: sending output records with retries
//! on a full queue, tracking their delivery (the changelog offsets
//! acknowledged, the failures), the production error handler for records
//! the brokers refuse, the local dead-letter file, and transactions.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext};

use super::polled_producer::PolledProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, TopicPartitionList};

use super::error::RuntimeError;
use super::held::HeldRecords;
use super::pause_watch::PauseCheck;
use super::production::{append_json_line, is_record_error, Rejected};
use super::status::RuntimeStatus;
use super::topic_send::{RecordView, TopicHandles};
use super::topics::ErrorCapture;
use crate::coordinates::TopicPartition;
use crate::record::{OutKind, OutRecord};
use crate::task::ErrorPolicy;

/// How long a transaction call may take.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes a transactional producer (initialized) for a thread.
pub(crate) type MakeProducer =
    Box<dyn Fn() -> Result<PolledProducer<DeliveryTracker>, RuntimeError> + Send>;

/// A fenced producer is replaced at most this many times in a row ...
const RENEWALS_ALLOWED: u32 = 3;
/// ... each within this long of the one before.
const RENEWAL_WINDOW: Duration = Duration::from_secs(600);

/// How often the producer was replaced lately.
#[derive(Default)]
struct Renewals {
    last: Option<Instant>,
    in_a_row: u32,
}

impl Renewals {
    /// Whether another replacement at `now` is allowed (and counts it).
    fn admit(&mut self, now: Instant) -> bool {
        let recent = self
            .last
            .is_some_and(|t| now.duration_since(t) < RENEWAL_WINDOW);
        self.in_a_row = if recent { self.in_a_row + 1 } else { 1 };
        self.last = Some(now);
        self.in_a_row <= RENEWALS_ALLOWED
    }
}

/// How long a transaction call is retried while librdkafka says to retry
/// it, as Kafka Streams retries a commit for `task.timeout.ms` (5 minutes).
const TRANSACTION_RETRY_FOR: Duration = Duration::from_secs(300);

/// Runs the transaction call `call` (`what`, for the log) again while
/// librdkafka says to ("Timed out waiting for operation to finish, retry
/// call to resume": a broker away, the coordinator loading), for up to
/// [`TRANSACTION_RETRY_FOR`]. librdkafka resumes the same operation on
/// such a retry, so nothing is done twice.
fn retrying(
    what: &str,
    mut call: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    let until = Instant::now() + TRANSACTION_RETRY_FOR;
    loop {
        match call() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && Instant::now() < until => {
                tracing::warn!(error = %e, "{what} did not finish; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Whether `e` says the transaction coordinator fenced this producer (its
/// epoch is no longer the transactional id's).
fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

/// Kind of a sink record (user or repartition topic), in the delivery opaque.
const SINK: usize = 0;
/// Kind of a changelog record: its offset is tracked.
const CHANGELOG: usize = 1;
/// Kind of a dead-letter record.
const DEAD_LETTER: usize = 2;
/// The low bits of the delivery opaque hold the kind; the rest, the epoch.
const KIND_BITS: u32 = 2;

/// Packs a record's kind and commit epoch into its delivery opaque.
fn opaque(kind: usize, epoch: u64) -> usize {
    ((epoch as usize) << KIND_BITS) | kind
}

/// Splits a delivery opaque into kind and epoch.
fn unpack(opaque: usize) -> (usize, u64) {
    (
        opaque & ((1 << KIND_BITS) - 1),
        (opaque >> KIND_BITS) as u64,
    )
}

/// Delivery reports of one commit epoch (the records sent between two
/// commit points).
#[derive(Default)]
struct EpochReports {
    /// Reports received, acknowledgements and failures alike.
    reported: u64,
    /// Per changelog topic and partition: the offset after the last
    /// acknowledged record.
    changelog: HashMap<String, HashMap<i32, i64>>,
}

/// Delivery reports per commit epoch, and delivery failures.
#[derive(Default)]
pub(crate) struct DeliveryState {
    epochs: Mutex<BTreeMap<u64, EpochReports>>,
    /// Failed deliveries: topic, partition, error, and the record's epoch.
    errors: Mutex<Vec<(String, i32, KafkaError, u64)>>,
    rejected: Mutex<Vec<Rejected>>,
    /// At-least-once: reports of epochs below this are ignored (their
    /// records were given up: the tasks rolled back past them).
    abandoned_below: AtomicU64,
}

/// Whether `e` is a record given up by the producer itself, not refused by
/// a broker: its delivery timed out (a broker away longer than
/// `message.timeout.ms`, or a process paused past it), or it was purged.
fn is_lapse(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight
        )
    )
}

/// Locks `m`, through poisoning (the data are counters and lists).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl DeliveryState {
    /// Counts one report of `epoch` (and the offset, for an acknowledged
    /// changelog record).
    fn report(&self, epoch: u64, changelog: Option<(&str, i32, i64)>) {
        let mut g = lock(&self.epochs);
        let e = g.entry(epoch).or_default();
        e.reported += 1;
        if let Some((topic, partition, offset)) = changelog {
            let parts = match e.changelog.get_mut(topic) {
                Some(p) => p,
                None => e.changelog.entry(topic.to_string()).or_default(),
            };
            let next = parts.entry(partition).or_insert(0);
            *next = (*next).max(offset + 1);
        }
    }

    /// Whether every epoch of `sent` (epoch, records sent) has all its reports.
    fn complete<'a>(&self, mut sent: impl Iterator<Item = (&'a u64, &'a u64)>) -> bool {
        let g = lock(&self.epochs);
        sent.all(|(e, n)| *n == 0 || g.get(e).is_some_and(|r| r.reported >= *n))
    }

    /// Removes the reports of epochs up to `epoch`, merging their changelog
    /// offsets into `into`.
    fn drain_through(&self, epoch: u64, into: &mut HashMap<TopicPartition, i64>) {
        let mut g = lock(&self.epochs);
        let later = g.split_off(&(epoch + 1));
        for (_, r) in std::mem::replace(&mut *g, later) {
            for (topic, parts) in r.changelog {
                for (p, next) in parts {
                    let e = into.entry(TopicPartition::new(&topic, p)).or_insert(next);
                    *e = (*e).max(next);
                }
            }
        }
    }

    fn errors_pending(&self) -> bool {
        !lock(&self.errors).is_empty()
    }

    /// Whether reports of `epoch` are ignored.
    fn abandoned(&self, epoch: u64) -> bool {
        epoch < self.abandoned_below.load(Ordering::Acquire)
    }

    /// Ignores every report of epochs up to `epoch` from now on, and
    /// forgets those received (their failures too).
    fn abandon_through(&self, epoch: u64) {
        self.abandoned_below.fetch_max(epoch + 1, Ordering::AcqRel);
        self.drain_through(epoch, &mut HashMap::new());
        lock(&self.errors).clear();
        lock(&self.rejected).clear();
    }

    fn take_rejected(&self) -> Vec<Rejected> {
        std::mem::take(&mut *lock(&self.rejected))
    }

    /// The failures of epochs not abandoned.
    fn take_errors(&self) -> Vec<(String, i32, KafkaError)> {
        let below = self.abandoned_below.load(Ordering::Acquire);
        std::mem::take(&mut *lock(&self.errors))
            .into_iter()
            .filter(|e| e.3 >= below)
            .map(|(t, p, e, _)| (t, p, e))
            .collect()
    }
}

/// Producer context: counts delivery reports per commit epoch, tracks
/// acknowledged changelog offsets and failures.
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
    /// Kind ([`SINK`], [`CHANGELOG`], [`DEAD_LETTER`]) and commit epoch.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: usize) {
        let (kind, epoch) = unpack(tag);
        if self.state.abandoned(epoch) {
            return;
        }
        match result {
            Ok(m) if kind == CHANGELOG => {
                self.state
                    .report(epoch, Some((m.topic(), m.partition(), m.offset())));
                return;
            }
            Ok(_) => {}
            Err((e, m)) if kind == SINK && is_record_error(e.rdkafka_error_code()) => {
                lock(&self.state.rejected).push(Rejected {
                    topic: m.topic().to_string(),
                    partition: Some(m.partition()),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    error: e.to_string(),
                });
            }
            Err((e, m)) => {
                lock(&self.state.errors).push((
                    m.topic().to_string(),
                    m.partition(),
                    e.clone(),
                    epoch,
                ));
            }
        }
        self.state.report(epoch, None);
    }
}

/// Sends an instance's output and owns its producer.
pub(crate) struct OutputProducer {
    producer: Arc<PolledProducer<DeliveryTracker>>,
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
    /// The commit epoch records sent now belong to.
    epoch: u64,
    /// Records sent in the current epoch.
    sent_now: u64,
    /// Records sent per sealed epoch whose reports are not all taken.
    sent_sealed: BTreeMap<u64, u64>,
    /// Changelog offsets acknowledged through the last taken epoch.
    confirmed: HashMap<TopicPartition, i64>,
    /// Exactly-once: the transaction commit in flight on a helper thread.
    committing: Option<std::thread::JoinHandle<Result<(), KafkaError>>>,
    /// Records produced while a transaction commit is in flight.
    held: HeldRecords,
    /// Exactly-once: makes a new producer with the same transactional id,
    /// for one the transaction coordinator fenced ([`Self::abort_transaction`]).
    renew: Option<MakeProducer>,
    /// Exactly-once: the producer was fenced while sending (a produce
    /// request met a newer epoch: the coordinator had aborted the
    /// transaction, say while the process was paused), or the open
    /// transaction failed (its records timed out), so it cannot commit.
    /// Records are dropped until the next commit, which aborts instead
    /// (replacing a fenced producer).
    doomed: Option<KafkaError>,
    /// When this producer was last replaced, and how often in a row.
    renewals: Renewals,
    /// At-least-once in a group: asks, before each record is sent, whether
    /// the process was paused long enough to lose its partitions.
    pause: Option<PauseCheck>,
    /// A pause was noticed (its length): records are dropped until the
    /// stream thread has rolled back ([`Self::take_pause`]).
    paused: Option<Duration>,
    /// librdkafka's handle of each topic written to (declared last: its
    /// handles are destroyed before its hold on the client goes).
    topics: TopicHandles,
}

impl OutputProducer {
    /// Wraps `producer` (created with a [`DeliveryTracker`] on `delivery`).
    pub(crate) fn new(
        producer: PolledProducer<DeliveryTracker>,
        delivery: Arc<DeliveryState>,
        dead_letter_file: Option<PathBuf>,
        production_errors: PathBuf,
        on_error: ErrorPolicy,
        status: Arc<RuntimeStatus>,
        eos: bool,
    ) -> Self {
        let producer = Arc::new(producer);
        let mut topics = TopicHandles::new(Arc::clone(&producer));
        if !eos {
            topics = topics.with_endless_repartition();
        }
        OutputProducer {
            topics,
            producer,
            delivery,
            dead_letter_file,
            production_errors,
            on_error,
            status,
            eos,
            in_txn: false,
            epoch: 0,
            sent_now: 0,
            sent_sealed: BTreeMap::new(),
            confirmed: HashMap::new(),
            committing: None,
            held: HeldRecords::default(),
            renew: None,
            doomed: None,
            renewals: Renewals::default(),
            pause: None,
            paused: None,
        }
    }

    /// At-least-once: checks `pause` before each record is sent (see
    /// [`super::pause_watch`]); after a pause, records are dropped until
    /// [`take_pause`](Self::take_pause).
    pub(crate) fn with_pause_check(mut self, pause: PauseCheck) -> Self {
        self.pause = Some(pause);
        self
    }

    /// Whether a pause was noticed and not yet taken: looks now.
    fn noticed_pause(&mut self) -> bool {
        if self.paused.is_none() {
            self.paused = self.pause.as_mut().and_then(PauseCheck::paused);
        }
        self.paused.is_some()
    }

    /// The pause noticed by a send since the last call, if any. The
    /// caller rolls its tasks back to the last commit and abandons what
    /// is unacknowledged ([`Self::abandon_unacknowledged`]).
    pub(crate) fn take_pause(&mut self) -> Option<Duration> {
        self.paused.take()
    }

    /// At-least-once: gives up every record not yet acknowledged (its
    /// tasks rolled back to their last commit and will produce it again):
    /// ends the current epoch and ignores the reports of every epoch so
    /// far. Records librdkafka still holds are delivered or time out
    /// unseen.
    pub(crate) fn abandon_unacknowledged(&mut self) {
        let ended = self.seal_epoch();
        self.delivery.abandon_through(ended);
        self.sent_sealed.clear();
    }

    /// Lets [`abort_transaction`](Self::abort_transaction) replace a
    /// producer the transaction coordinator fenced with one from `make`
    /// (exactly-once).
    pub(crate) fn with_renewal(mut self, make: MakeProducer) -> Self {
        self.renew = Some(make);
        self
    }

    /// Whether this producer runs transactions.
    pub(crate) fn exactly_once(&self) -> bool {
        self.eos
    }

    /// Whether a transaction is open.
    pub(crate) fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// Ends the current commit epoch: records sent from now on belong to
    /// the next. Returns the epoch ended.
    pub(crate) fn seal_epoch(&mut self) -> u64 {
        let ended = self.epoch;
        self.sent_sealed
            .insert(ended, std::mem::take(&mut self.sent_now));
        self.epoch += 1;
        ended
    }

    /// Whether every record of epochs up to `epoch` has its delivery report.
    pub(crate) fn epoch_reported(&self, epoch: u64) -> bool {
        self.delivery.complete(self.sent_sealed.range(..=epoch))
    }

    /// Takes the delivery reports of epochs up to `epoch` (all reported):
    /// fails on a delivery failure among them, else returns the changelog
    /// offsets acknowledged through it (`topic/partition` → next). `None`
    /// when records lapsed (at least once, see [`Self::flush`]).
    pub(crate) fn take_acknowledged(
        &mut self,
        epoch: u64,
    ) -> Result<Option<HashMap<TopicPartition, i64>>, RuntimeError> {
        if !self.check_delivery()? {
            return Ok(None);
        }
        self.delivery.drain_through(epoch, &mut self.confirmed);
        self.sent_sealed = self.sent_sealed.split_off(&(epoch + 1));
        Ok(Some(self.confirmed.clone()))
    }

    /// Drops the reports of epochs up to `epoch` (an aborted transaction's).
    pub(crate) fn forget_through(&mut self, epoch: u64) {
        let mut ignored = HashMap::new();
        self.delivery.drain_through(epoch, &mut ignored);
        self.sent_sealed = self.sent_sealed.split_off(&(epoch + 1));
    }

    /// Records handed to the client and not yet acknowledged.
    pub(crate) fn awaiting_ack(&self) -> u64 {
        self.producer.in_flight_count().max(0) as u64
    }

    fn begin_transaction(&mut self) -> Result<(), RuntimeError> {
        if self.eos && !self.in_txn && self.doomed.is_none() {
            match self.producer.begin_transaction() {
                Ok(()) => {}
                Err(e) if self.fenced_in_transaction(&e) => {
                    self.doomed = Some(e);
                    return Ok(());
                }
                Err(e) => return Err(RuntimeError::kafka("begin transaction", e)),
            }
            self.in_txn = true;
        }
        Ok(())
    }

    /// Whether `e`, refusing a record, says the open transaction is in an
    /// abortable error state (librdkafka answers `_STATE` then: its records
    /// timed out, say, while the process was paused): the transaction is
    /// lost and must be aborted, not the instance.
    fn failed_transaction(&self, e: &KafkaError) -> bool {
        self.eos
            && self.in_txn
            && matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::State))
    }

    /// Whether `e` fences this exactly-once producer, which can be
    /// replaced: the transaction is lost, not the instance.
    fn fenced_in_transaction(&self, e: &KafkaError) -> bool {
        self.eos && self.renew.is_some() && is_fenced(e)
    }

    /// Sends every record.
    pub(crate) fn send_all(
        &mut self,
        records: impl IntoIterator<Item = OutRecord>,
    ) -> Result<(), RuntimeError> {
        for r in records {
            self.send(r)?;
        }
        Ok(())
    }

    /// Sends one record (into the open transaction under exactly-once).
    pub(crate) fn send(&mut self, r: OutRecord) -> Result<(), RuntimeError> {
        if self.pause.is_some() && self.noticed_pause() {
            // Computed from state another instance may own by now; the
            // stream thread rolls back before going on.
            return Ok(());
        }
        if r.kind == OutKind::DeadLetter && self.dead_letter_file.is_some() {
            return self.write_dead_letter_file(&r);
        }
        if self.committing.is_some() {
            self.held.push(r);
            return Ok(());
        }
        self.produce(&RecordView::of(&r), &r.kind)
    }

    /// Hands one record to the producer (into the open transaction under
    /// exactly-once), waiting while its queue is full.
    fn produce(&mut self, r: &RecordView<'_>, kind: &OutKind) -> Result<(), RuntimeError> {
        self.begin_transaction()?;
        if self.doomed.is_some() {
            // The transaction is lost; the commit rolls everything back.
            return Ok(());
        }
        let tracked = match kind {
            OutKind::Sink => SINK,
            OutKind::Changelog(_) => CHANGELOG,
            OutKind::DeadLetter => DEAD_LETTER,
        };
        let opaque = opaque(tracked, self.epoch);
        loop {
            match self.topics.send(r, opaque) {
                Ok(()) => {
                    self.sent_now += 1;
                    return Ok(());
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) if self.fenced_in_transaction(&e) => {
                    tracing::warn!(error = %e, "this producer was fenced while sending: the transaction was aborted; the next commit replaces the producer and reprocesses from the last commit");
                    self.doomed = Some(e);
                    return Ok(());
                }
                Err(e) if self.failed_transaction(&e) => {
                    tracing::warn!(error = %e, "the open transaction failed (its records timed out, say after a pause); the next commit aborts it and reprocesses from the last commit");
                    self.doomed = Some(e);
                    return Ok(());
                }
                Err(e) if tracked == SINK && is_record_error(e.rdkafka_error_code()) => {
                    return self.refused(Rejected {
                        topic: r.topic.to_string(),
                        partition: r.partition,
                        key: r.key.map(<[u8]>::to_vec),
                        value: r.value.map(<[u8]>::to_vec),
                        error: e.to_string(),
                    });
                }
                Err(e) => return Err(self.explain_send_failure(r.topic, e)),
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
    /// `false` when, at least once, records lapsed (timed out undelivered,
    /// see [`StreamsConfig::delivery_timeout`](super::config::StreamsConfig::delivery_timeout)):
    /// the caller rolls back to the last commit and abandons the rest
    /// ([`Self::abandon_unacknowledged`]).
    pub(crate) fn flush(&mut self) -> Result<bool, RuntimeError> {
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

    /// Handles the refused records and delivery failures reported so far:
    /// `Ok(false)` when every failure is a lapse under at-least-once.
    fn check_delivery(&mut self) -> Result<bool, RuntimeError> {
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
        if !errors.is_empty() && !self.eos && errors.iter().all(|(_, _, e)| is_lapse(e)) {
            let (topic, partition, e) = &errors[0];
            tracing::warn!(
                records = errors.len(),
                example = %format!("{topic}[{partition}]: {e}"),
                "records could not be delivered in time (a broker away, or this process was paused); rolling back to the last commit and processing again"
            );
            return Ok(false);
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
        Ok(true)
    }

    /// Commits the open transaction with the input offsets `tpl`. Returns
    /// `false` when it had to be aborted (the caller rolls its tasks back
    /// and rewinds the consumer, so the batch is processed again).
    pub(crate) fn commit_transaction(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
        tpl: &TopicPartitionList,
    ) -> Result<bool, RuntimeError> {
        self.start_transaction_commit(consumer, tpl)?;
        match self.finish_transaction_commit(true)? {
            Some(committed) => Ok(committed),
            None => Err(RuntimeError::Delivery(
                "the transaction commit did not finish".into(),
            )),
        }
    }

    /// Starts committing the open transaction with the input offsets `tpl`
    /// on a helper thread. Until [`finish_transaction_commit`]
    /// (Self::finish_transaction_commit) reports it done, records sent are
    /// held in memory: the transaction protocol allows no new records
    /// while a commit is in flight; they go into the next transaction.
    pub(crate) fn start_transaction_commit(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
        tpl: &TopicPartitionList,
    ) -> Result<(), RuntimeError> {
        self.begin_transaction()?;
        if self.doomed.is_some() {
            // Nothing to commit: finish_transaction_commit aborts.
            return Ok(());
        }
        let Some(meta) = consumer.group_metadata() else {
            return Err(RuntimeError::NoGroupMetadata);
        };
        let producer = self.producer.clone();
        let tpl = tpl.clone();
        let committer = std::thread::Builder::new()
            .name("txn-commit".into())
            .spawn(move || {
                if tpl.count() > 0 {
                    retrying("sending the offsets to the transaction", || {
                        producer.send_offsets_to_transaction(&tpl, &meta, CLIENT_TIMEOUT)
                    })?;
                }
                retrying("committing the transaction", || {
                    producer.commit_transaction(CLIENT_TIMEOUT)
                })
            })
            .map_err(|e| RuntimeError::Delivery(format!("start the transaction commit: {e}")))?;
        self.committing = Some(committer);
        Ok(())
    }

    /// Whether a transaction commit is in flight.
    pub(crate) fn transaction_committing(&self) -> bool {
        self.committing.is_some()
    }

    /// Records held while a transaction commit is in flight.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Bytes held while a transaction commit is in flight (see
    /// [`HeldRecords::bytes`]).
    pub(crate) fn held_bytes(&self) -> usize {
        self.held.bytes()
    }

    /// The transaction commit in flight: `None` while it runs (unless
    /// `wait`), `Some(true)` once committed, `Some(false)` if it had to be
    /// aborted (the held records are dropped: the caller rolls its tasks
    /// back and rewinds). Call [`release_held`](Self::release_held) after
    /// a commit to send the held records.
    pub(crate) fn finish_transaction_commit(
        &mut self,
        wait: bool,
    ) -> Result<Option<bool>, RuntimeError> {
        if let Some(e) = self.doomed.take() {
            if !is_fenced(&e) {
                // Abortable: aborted (or the producer replaced if it cannot).
                tracing::warn!(error = %e, "aborting the failed transaction; reprocessing from the last commit");
                self.held.clear();
                self.abort_transaction()?;
                return Ok(Some(false));
            }
            return self.renew_after_fence(e).map(|()| Some(false));
        }
        let Some(committer) = self.committing.take() else {
            return Ok(Some(true));
        };
        if !wait && !committer.is_finished() {
            self.committing = Some(committer);
            return Ok(None);
        }
        let Ok(r) = committer.join() else {
            return Err(RuntimeError::Delivery(
                "the transaction commit thread panicked".into(),
            ));
        };
        match r {
            Ok(()) => {
                self.in_txn = false;
                // Everything is delivered; this waits until the delivery
                // reports are served, so the checkpoint records the latest
                // changelog offsets.
                let _ = self.producer.flush(CLIENT_TIMEOUT);
                self.check_delivery()?;
                Ok(Some(true))
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                tracing::warn!(error = %e, "transaction aborted; reprocessing from the last commit");
                self.held.clear();
                self.abort_transaction()?;
                Ok(Some(false))
            }
            // A commit that ends fenced did not commit: the coordinator
            // fences a producer's epoch only by aborting its open
            // transaction (on the transaction timeout, say, after a broker
            // restart, or for a newer producer with this transactional
            // id), and answers a retried commit of a transaction it
            // completed with success. So this is an abort, with a new
            // producer ([`Self::abort_transaction`]); Kafka Streams treats
            // it as its tasks migrating and re-initializes the producer.
            Err(e) if self.fenced_in_transaction(&e) => {
                tracing::warn!(
                    error = %e,
                    "this producer was fenced while committing: the transaction was aborted; replacing the producer and reprocessing from the last commit"
                );
                self.renew_after_fence(e).map(|()| Some(false))
            }
            Err(e) => Err(RuntimeError::kafka(
                "commit transaction (this instance may have been fenced by a newer one)",
                e,
            )),
        }
    }

    /// Sends the records held while the last transaction commit was in
    /// flight (into a new transaction).
    pub(crate) fn release_held(&mut self) -> Result<(), RuntimeError> {
        // Only exactly-once holds records, and it has no pause check; no
        // dead letter for a file is held either (`send` writes those).
        let mut held = std::mem::take(&mut self.held);
        let sent = held.iter().try_for_each(|(r, kind)| self.produce(&r, kind));
        held.clear();
        // The buffers, kept for the next commit.
        self.held = held;
        sent
    }

    /// Aborts the open transaction, if any, and forgets its failures.
    ///
    /// A producer that cannot abort (exactly-once) is replaced by a new one
    /// with the same transactional id, whose initialization fences the old
    /// one and aborts whatever it left open, as Kafka Streams replaces a
    /// fenced thread producer; the caller rolls its tasks back to the last
    /// commit as after any abort. Since the transaction is to be aborted
    /// anyway, nothing is uncertain. It happens without any other
    /// instance: after a broker restart the coordinator may have ended the
    /// transaction and bumped the producer's epoch while the abort waited
    /// ("fenced"; a single broker killed for 15 seconds did it), or, in a
    /// rolling restart of three brokers, answered the abort with
    /// `INVALID_TXN_STATE`.
    /// A producer fenced again and again within [`RENEWAL_WINDOW`] is
    /// another live instance using this state directory's id: that stops
    /// the instance.
    pub(crate) fn abort_transaction(&mut self) -> Result<(), RuntimeError> {
        if self.in_txn {
            match retrying("aborting the transaction", || {
                self.producer.abort_transaction(CLIENT_TIMEOUT)
            }) {
                Ok(()) => {}
                Err(e) if self.renew.is_some() => {
                    tracing::warn!(
                        error = %e,
                        "this producer could not abort its transaction; replacing it (which aborts it) and resuming from the last commit"
                    );
                    self.replace_producer(e)?;
                }
                Err(e) => return Err(RuntimeError::kafka("abort transaction", e)),
            }
            self.in_txn = false;
        }
        let _ = self.delivery.take_errors();
        Ok(())
    }

    /// The transaction of a fenced producer is gone (the coordinator
    /// aborted it): drops the held records, replaces the producer; the
    /// caller rolls its tasks back as after an abort.
    fn renew_after_fence(&mut self, e: KafkaError) -> Result<(), RuntimeError> {
        self.held.clear();
        self.replace_producer(e)?;
        self.in_txn = false;
        let _ = self.delivery.take_errors();
        Ok(())
    }

    /// Replaces the producer (fenced with `cause`) by a new one with the
    /// same transactional id.
    fn replace_producer(&mut self, cause: KafkaError) -> Result<(), RuntimeError> {
        let Some(make) = &self.renew else {
            return Err(RuntimeError::kafka("abort transaction", cause));
        };
        if !self.renewals.admit(Instant::now()) {
            return Err(RuntimeError::kafka(
                format!(
                    "abort transaction (the producer was fenced {} times within {} s: another instance runs with this state directory's transactional id)",
                    RENEWALS_ALLOWED + 1,
                    RENEWAL_WINDOW.as_secs()
                ),
                cause,
            ));
        }
        let fresh = Arc::new(make()?);
        // The old client's topic handles go before it; dropping the client
        // purges what it still held, whose failed reports are forgotten.
        self.topics = TopicHandles::new(Arc::clone(&fresh));
        drop(std::mem::replace(&mut self.producer, fresh));
        self.doomed = None;
        let _ = self.delivery.take_errors();
        tracing::info!("a new transactional producer replaced the fenced one");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_allow_a_few_renewals_in_a_row_and_more_after_a_quiet_window() {
        let t0 = Instant::now();
        let mut r = Renewals::default();
        for i in 0..RENEWALS_ALLOWED {
            assert!(
                r.admit(t0 + Duration::from_secs(u64::from(i))),
                "renewal {i}"
            );
        }
        assert!(
            !r.admit(t0 + Duration::from_secs(10)),
            "one too many in a row"
        );
        assert!(
            r.admit(t0 + Duration::from_secs(10) + RENEWAL_WINDOW),
            "a quiet window starts the count again"
        );
    }

    #[test]
    fn should_pack_kind_and_epoch_into_the_opaque() {
        for (kind, epoch) in [(SINK, 0), (CHANGELOG, 7), (DEAD_LETTER, 1 << 40)] {
            assert_eq!(unpack(opaque(kind, epoch)), (kind, epoch));
        }
    }

    #[test]
    fn should_report_an_epoch_complete_only_when_all_its_records_and_earlier_ones_are() {
        let d = DeliveryState::default();
        let sent: BTreeMap<u64, u64> = [(0, 2), (1, 1)].into();
        d.report(0, Some(("cl", 0, 10)));
        assert!(!d.complete(sent.range(..=0)), "one of two reported");
        d.report(1, Some(("cl", 0, 12)));
        assert!(!d.complete(sent.range(..=1)), "epoch 0 is not complete yet");
        d.report(0, Some(("cl", 0, 11)));
        assert!(d.complete(sent.range(..=0)));
        assert!(d.complete(sent.range(..=1)));
        // the offsets taken through epoch 0 are epoch 0's only
        let mut acked = HashMap::new();
        d.drain_through(0, &mut acked);
        assert_eq!(acked.get(&TopicPartition::new("cl", 0)), Some(&12));
        d.drain_through(1, &mut acked);
        assert_eq!(acked.get(&TopicPartition::new("cl", 0)), Some(&13));
        let empty: BTreeMap<u64, u64> = [(2, 0)].into();
        assert!(
            d.complete(empty.range(..)),
            "an epoch with nothing sent is complete"
        );
    }

    /// A producer whose broker never answers (records wait in its queue
    /// until purged) and the delivery state it reports to.
    fn unconnected_producer(
        max_bytes: &str,
    ) -> (Arc<PolledProducer<DeliveryTracker>>, Arc<DeliveryState>) {
        let state = Arc::new(DeliveryState::default());
        let p = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.max.bytes", max_bytes)
            .set("log_level", "0")
            .create_with_context(DeliveryTracker {
                state: Arc::clone(&state),
                capture: ErrorCapture::default(),
            })
            .expect("a producer needs no broker to be created");
        (Arc::new(p), state)
    }

    fn out_record(topic: &Arc<str>, value: Option<Vec<u8>>, headers: usize) -> OutRecord {
        OutRecord {
            topic: Arc::clone(topic),
            partition: None,
            key: Some(b"k".to_vec()),
            value,
            headers: (0..headers)
                .map(|i| (format!("h{i}"), vec![i as u8; i]))
                .collect(),
            timestamp: 1_700_000_000_000,
            kind: OutKind::Sink,
        }
    }

    #[test]
    fn should_send_through_one_topic_handle_per_topic_with_the_opaque_intact() {
        let (p, state) = unconnected_producer("1000000");
        let mut h = TopicHandles::new(Arc::clone(&p));
        let a: Arc<str> = "topic-a".into();
        let b: Arc<str> = "topic-b".into();
        // the same name in another allocation finds the same handle
        let a_again: Arc<str> = "topic-a".into();
        let tag = opaque(SINK, 3);
        for (t, headers) in [(&a, 0), (&b, 2), (&a_again, 1), (&a, 3)] {
            h.send(
                &RecordView::of(&out_record(t, Some(b"v".to_vec()), headers)),
                tag,
            )
            .expect("queued");
        }
        h.send(&RecordView::of(&out_record(&b, None, 0)), tag)
            .expect("a tombstone is queued");
        assert_eq!(h.len(), 2);
        // Purged, every record gets its delivery report, with the epoch and
        // kind it was sent with and its topic.
        p.purge(rdkafka::producer::PurgeConfig::default().queue());
        let sent: BTreeMap<u64, u64> = [(3, 5)].into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !state.complete(sent.range(..)) {
            assert!(
                Instant::now() < deadline,
                "delivery reports of the purged records"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut topics: Vec<String> = lock(&state.errors).iter().map(|e| e.0.clone()).collect();
        topics.sort();
        assert_eq!(
            topics,
            ["topic-a", "topic-a", "topic-a", "topic-b", "topic-b"]
        );
    }

    #[test]
    fn should_refuse_a_record_too_large_and_take_the_next() {
        let (p, _) = unconnected_producer("1000");
        let mut h = TopicHandles::new(p);
        let t: Arc<str> = "topic".into();
        let err = h
            .send(&RecordView::of(&out_record(&t, Some(vec![0; 5_000]), 2)), 0)
            .expect_err("over message.max.bytes");
        assert_eq!(
            err.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge)
        );
        h.send(&RecordView::of(&out_record(&t, Some(vec![0; 10]), 2)), 0)
            .expect("queued");
    }

    #[test]
    fn should_refuse_a_topic_name_with_a_nul_byte() {
        let (p, _) = unconnected_producer("1000000");
        let mut h = TopicHandles::new(p);
        let t: Arc<str> = "bad\0name".into();
        assert!(matches!(
            h.send(&RecordView::of(&out_record(&t, None, 0)), 0),
            Err(KafkaError::Nul(_))
        ));
        assert_eq!(h.len(), 0);
    }
}
