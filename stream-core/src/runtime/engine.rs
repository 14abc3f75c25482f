//! The engine of one instance: its tasks, the producer, restore and commit.
//!
//! # The commit, in order
//!
//! 1. Flush the producer: every sink, changelog and dead-letter record
//!    produced so far is acknowledged by the brokers (or the commit fails
//!    and nothing below happens).
//! 2. For each task, write its buffered store changes, the changelog
//!    offsets reached, its input positions and its repartition dedup marks
//!    to sled in one atomic batch (a syncer thread flushes it to disk right after).
//! 3. Commit the input positions to the consumer group.
//!
//! A crash before 2 leaves sled and the group at the previous commit: the
//! changelog holds records past sled's checkpoint, but each carries the
//! input offset that caused it, and restore skips those whose input was not
//! committed; reprocessing writes them again. A crash between 2 and 3 leaves
//! sled ahead of the group: restore starts input at the larger of the two
//! positions, which is exact because everything before it was acknowledged.
//! Only offsets this application committed count (their metadata says so,
//! see [`super::ownership`]): another program's commit in the same group is
//! never trusted.
//!
//! Restore lives in [`super::restore`].

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::StreamsConfig;
use super::error::RuntimeError;
use super::production::{is_record_error, Rejected};
use super::status::RuntimeStatus;
use super::topics::{ErrorCapture, TopicPlan};
use crate::graph::Topology;
use crate::record::{OutKind, OutRecord};
use crate::store::StateDir;
use crate::task::{tp_key, ErrorPolicy, InputRecord, Task, TaskConfig, TaskId};

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
    fn snapshot(&self) -> HashMap<String, i64> {
        let g = match self.next.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (tp_key(t, *p), *o)))
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

pub(crate) struct Entry {
    pub(crate) task: Task,
    pub(crate) partitions: Vec<(String, i32)>,
}

/// Everything one instance runs.
pub(crate) struct Engine {
    pub(crate) topology: Arc<Topology>,
    pub(crate) cfg: Arc<StreamsConfig>,
    pub(crate) task_cfg: Arc<TaskConfig>,
    pub(crate) plan: Arc<TopicPlan>,
    pub(crate) state: StateDir,
    pub(crate) producer: ThreadedProducer<DeliveryTracker>,
    pub(crate) delivery: Arc<DeliveryState>,
    pub(crate) restore_consumer: BaseConsumer<ErrorCapture>,
    pub(crate) status: Arc<RuntimeStatus>,
    pub(crate) dead_letter_file: Option<PathBuf>,
    pub(crate) fatal: Option<RuntimeError>,
    pub(crate) closing: bool,
    /// Exactly-once: outputs, changelogs and offsets commit in one transaction.
    pub(crate) eos: bool,
    in_txn: bool,
    tasks: BTreeMap<TaskId, Entry>,
    last_commit: Instant,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        topology: Arc<Topology>,
        cfg: Arc<StreamsConfig>,
        task_cfg: Arc<TaskConfig>,
        plan: Arc<TopicPlan>,
        state: StateDir,
        producer: ThreadedProducer<DeliveryTracker>,
        delivery: Arc<DeliveryState>,
        restore_consumer: BaseConsumer<ErrorCapture>,
        status: Arc<RuntimeStatus>,
        dead_letter_file: Option<PathBuf>,
    ) -> Self {
        Engine {
            topology,
            cfg,
            task_cfg,
            plan,
            state,
            producer,
            delivery,
            restore_consumer,
            status,
            dead_letter_file,
            fatal: None,
            closing: false,
            eos: false,
            in_txn: false,
            tasks: BTreeMap::new(),
            last_commit: Instant::now(),
        }
    }

    fn task_for(&self, topic: &str, partition: i32) -> Option<TaskId> {
        let st = self
            .topology
            .subtopology_reading(&self.cfg.application_id, topic)?;
        let partition = if self.task_cfg.grouped { 0 } else { partition };
        Some(TaskId {
            subtopology: st.id,
            partition,
        })
    }

    /// Records processed and tasks owned, for the periodic progress line.
    pub(crate) fn progress(&self) -> (u64, usize) {
        (
            self.tasks
                .values()
                .map(|e| e.task.metrics().processed)
                .sum(),
            self.tasks.len(),
        )
    }

    /// Punctuates every task with the wall clock and sends what it produced.
    pub(crate) fn punctuate(&mut self) -> Result<(), RuntimeError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut out = Vec::new();
        for e in self.tasks.values_mut() {
            e.task.punctuate(now)?;
            out.extend(e.task.take_output());
        }
        for r in out {
            self.send(r)?;
        }
        Ok(())
    }

    /// Whether the commit interval has passed.
    pub(crate) fn commit_due(&self) -> bool {
        self.last_commit.elapsed() >= self.cfg.commit_interval
    }

    /// Processes one input record and sends what it produced.
    pub(crate) fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), RuntimeError> {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let Some(id) = self.task_for(topic, partition) else {
            return Ok(());
        };
        let Some(entry) = self.tasks.get_mut(&id) else {
            tracing::debug!(
                topic,
                partition,
                offset,
                "record for a task this instance does not own; ignored"
            );
            return Ok(());
        };
        if let Some(&pos) = entry.task.positions().get(&tp_key(topic, partition)) {
            if offset < pos {
                return Ok(()); // already reflected in the state
            }
        }
        let headers: Vec<(String, Vec<u8>)> = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(|v| v.to_vec()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let input = InputRecord {
            topic,
            partition,
            offset,
            timestamp: msg.timestamp().to_millis().unwrap_or(0),
            key: msg.key(),
            value: msg.payload(),
            headers: &headers,
        };
        entry.task.process(&input)?;
        let out = entry.task.take_output();
        for r in out {
            self.send(r)?;
        }
        Ok(())
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

    fn send(&mut self, r: OutRecord) -> Result<(), RuntimeError> {
        if r.kind == OutKind::DeadLetter && !self.plan.dead_letter_topic_ok {
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
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                RuntimeError::Config(format!(
                    "cannot write the dead-letter file {}: {e}",
                    path.display()
                ))
            })?;
        writeln!(f, "{line}").map_err(|e| {
            RuntimeError::Config(format!(
                "cannot write the dead-letter file {}: {e}",
                path.display()
            ))
        })
    }

    /// The commit: see the module docs for the order and why.
    pub(crate) fn commit(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let r = self.commit_inner(consumer);
        if !self.tasks.is_empty() {
            self.status.record_commit(started.elapsed());
        }
        self.last_commit = Instant::now();
        r
    }

    /// Reads a store of an owned task with `f(stores, store index)`;
    /// `None` if the task is not owned here or has no such store.
    pub(crate) fn read_store<R>(
        &self,
        id: TaskId,
        store: &str,
        f: impl FnOnce(&crate::store::StoreSet, usize) -> R,
    ) -> Option<R> {
        let e = self.tasks.get(&id)?;
        let idx = e.task.stores().index_of(store)?;
        Some(f(e.task.stores(), idx))
    }

    /// The owned tasks that have `store`.
    pub(crate) fn tasks_with_store(&self, store: &str) -> Vec<TaskId> {
        self.tasks
            .iter()
            .filter(|(_, e)| e.task.stores().index_of(store).is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Publishes every task's counters and the processing rate to the status.
    pub(crate) fn publish_metrics(&self) {
        for (id, e) in &self.tasks {
            self.status.update_metrics(*id, e.task.metrics());
        }
        self.status.sample_rate();
    }

    fn commit_inner(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        if self.tasks.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for e in self.tasks.values() {
            for (topic, p) in &e.partitions {
                if let Some(&pos) = e.task.positions().get(&tp_key(topic, *p)) {
                    let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(pos));
                }
            }
        }
        // Every commit names this application and topology (see ownership).
        super::ownership::stamp(&mut tpl, &self.task_cfg.commit_tag);
        if self.eos {
            // 1+3. records, changelogs and input offsets in one transaction
            if !self.commit_transaction(consumer, &tpl)? {
                return Ok(()); // aborted and rolled back: nothing to record
            }
        } else {
            // 1. everything produced is acknowledged (waiting out broker outages;
            //    librdkafka fails a record only after its delivery timeout)
            self.flush_producer()?;
        }
        // 2. state + changelog offsets + positions, atomically in sled
        let acked = self.delivery.snapshot();
        for (id, e) in &mut self.tasks {
            e.task.commit_state(&acked)?;
            self.status.update_metrics(*id, e.task.metrics());
        }
        // No fsync on this thread: sled writes the batch atomically with its
        // checkpoint and the syncer thread flushes it right after, so a crash
        // loses at most the last commit, and restore reads it from the tail.
        self.state.sync_soon();
        // 3. input offsets to the group (at-least-once; exactly-once sent them
        //    in the transaction; outside the group sled holds them alone)
        if !self.eos && !self.cfg.outside_group && tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                // sled is ahead of the group now; a restart starts from sled's position.
                tracing::warn!(error = %e, "offset commit failed; local state keeps the position");
            }
        }
        Ok(())
    }

    fn flush_producer(&mut self) -> Result<(), RuntimeError> {
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
        if self.task_cfg.on_error == ErrorPolicy::FailFast || self.eos {
            let why = if self.eos {
                " (under exactly-once the transaction cannot commit without it)"
            } else {
                ""
            };
            return Err(RuntimeError::Delivery(format!("{}{why}", r.describe())));
        }
        let path = self.state.path().join("production-errors.jsonl");
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

    /// Commits the open transaction with the input offsets. Returns `false`
    /// when it had to be aborted (every task is then rolled back to its last
    /// commit and the consumer rewound, so the batch is processed again).
    fn commit_transaction(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
        tpl: &TopicPartitionList,
    ) -> Result<bool, RuntimeError> {
        self.begin_transaction()?;
        let Some(meta) = consumer.group_metadata() else {
            return Err(RuntimeError::Config(
                "exactly-once needs the consumer's group metadata".into(),
            ));
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
                self.abort_and_rollback(consumer)?;
                Ok(false)
            }
            Err(e) => Err(RuntimeError::kafka(
                "commit transaction (this instance may have been fenced by a newer one)",
                e,
            )),
        }
    }

    /// Aborts the open transaction and rolls every task back to its last commit.
    fn abort_and_rollback(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        if self.in_txn {
            self.producer
                .abort_transaction(CLIENT_TIMEOUT)
                .map_err(|e| RuntimeError::kafka("abort transaction", e))?;
            self.in_txn = false;
        }
        let _ = self.delivery.take_errors();
        for e in self.tasks.values_mut() {
            e.task.rollback();
            for (topic, p) in &e.partitions {
                let offset = match e.task.positions().get(&tp_key(topic, *p)) {
                    Some(&pos) => Offset::Offset(pos),
                    None => Offset::Beginning,
                };
                if let Err(err) = consumer.seek(topic, *p, offset, CLIENT_TIMEOUT) {
                    tracing::warn!(topic = %topic, partition = p, error = %err, "rewind after abort failed");
                }
            }
        }
        Ok(())
    }

    /// New partitions: create their tasks, restore them, and set the
    /// positions to start from in `tpl`.
    pub(crate) fn on_assign(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), RuntimeError> {
        let assigned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if self.task_cfg.grouped {
            let total: i32 = self
                .topology
                .source_topics(&self.cfg.application_id)
                .iter()
                .map(|t| self.plan.partitions.get(t).copied().unwrap_or(0))
                .sum();
            let have = assigned.len() as i32
                + self
                    .tasks
                    .values()
                    .map(|e| e.partitions.len() as i32)
                    .sum::<i32>();
            if have < total {
                return Err(RuntimeError::SecondMember {
                    group: self.cfg.application_id.clone(),
                });
            }
        }
        let mut by_task: BTreeMap<TaskId, Vec<(String, i32)>> = BTreeMap::new();
        for (t, p) in &assigned {
            if let Some(id) = self.task_for(t, *p) {
                by_task.entry(id).or_default().push((t.clone(), *p));
            }
        }
        let deadline = Instant::now() + super::restore::RETRY_FOR;
        let committed = if self.cfg.outside_group {
            // Not a member: the group's offsets are other programs'.
            BTreeMap::new()
        } else {
            self.group_offsets(consumer, tpl, deadline)?
        };
        let mut fresh = Vec::new();
        for (id, parts) in by_task {
            if let Some(e) = self.tasks.get_mut(&id) {
                e.partitions.extend(parts);
                continue;
            }
            let task = self.open_task(id)?;
            fresh.push(Entry {
                task,
                partitions: parts,
            });
        }
        self.restore_tasks(&mut fresh, &committed)?;
        // A new task resumes where its restore decided, or at the beginning:
        // never at an offset the group holds that restore did not trust.
        for e in &fresh {
            for (t, p) in &e.partitions {
                let offset = match e.task.positions().get(&tp_key(t, *p)) {
                    Some(&pos) => Offset::Offset(pos),
                    None => Offset::Beginning,
                };
                let _ = tpl.set_partition_offset(t, *p, offset);
            }
        }
        for e in fresh {
            self.tasks.insert(e.task.id(), e);
        }
        Ok(())
    }

    /// Every partition of every source topic (for an instance outside the group).
    pub(crate) fn all_source_partitions(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for t in self.topology.source_topics(&self.cfg.application_id) {
            for p in 0..self.plan.partitions.get(&t).copied().unwrap_or(0) {
                tpl.add_partition(&t, p);
            }
        }
        tpl
    }

    /// The offsets the group holds for `tpl`, classified by who committed them.
    fn group_offsets(
        &self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
        tpl: &TopicPartitionList,
        deadline: Instant,
    ) -> Result<BTreeMap<String, crate::task::CommittedOffset>, RuntimeError> {
        let committed = loop {
            match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline && !super::restore::is_authorization(&e) => {
                    tracing::warn!(error = %e, "committed offsets not available yet; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(RuntimeError::kafka("read committed offsets", e)),
            }
        };
        Ok(super::ownership::committed_from(
            &committed,
            &self.task_cfg.commit_tag,
        ))
    }

    fn open_task(&mut self, id: TaskId) -> Result<Task, RuntimeError> {
        let sub = &self.topology.subtopologies()[id.subtopology];
        let backend = self.state.backend(&id.to_string(), &sub.stores)?;
        let damaged = backend.verify().err();
        let mut task = Task::new(&self.topology, id, self.task_cfg.clone(), Box::new(backend));
        if let Some(why) = damaged {
            tracing::warn!(task = %id, error = %why, "local state does not match its checkpoint; rebuilding it from the changelog");
            task.wipe()?;
        }
        Ok(task)
    }

    /// Partitions taken away: commit everything, then close their tasks.
    pub(crate) fn on_revoke(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
        tpl: &TopicPartitionList,
        lost: bool,
    ) -> Result<(), RuntimeError> {
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let result = if !lost {
            self.commit(consumer)
        } else if self.eos && self.in_txn {
            self.abort_and_rollback(consumer)
        } else {
            Ok(())
        };
        let mut affected: Vec<TaskId> = revoked
            .iter()
            .filter_map(|(t, p)| self.task_for(t, *p))
            .collect();
        affected.sort();
        affected.dedup();
        for id in affected {
            if let Some(mut e) = self.tasks.remove(&id) {
                e.partitions.retain(|tp| !revoked.contains(tp));
                if e.partitions.is_empty() || !self.task_cfg.grouped {
                    e.task.close();
                    self.status.remove_task(id);
                } else {
                    self.tasks.insert(id, e);
                }
            }
        }
        if self.task_cfg.grouped
            && !self.closing
            && !revoked.is_empty()
            && !lost
            && result.is_ok()
            && self.fatal.is_none()
        {
            // In single-instance mode a revocation means another member arrived
            // (or we are shutting down, in which case the caller ignores this).
            return Err(RuntimeError::SecondMember {
                group: self.cfg.application_id.clone(),
            });
        }
        result
    }

    /// Closes every task after a final commit.
    pub(crate) fn shutdown(
        &mut self,
        consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        let r = self
            .commit(consumer)
            .and_then(|()| self.state.sync().map_err(RuntimeError::from));
        for (id, mut e) in std::mem::take(&mut self.tasks) {
            e.task.close();
            self.status.remove_task(id);
        }
        r
    }
}
