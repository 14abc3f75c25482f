//! The engine of one stream thread: it owns the thread's tasks, its
//! producer and its changelog reader, runs records through the tasks, and
//! handles assignments and revocations.
//!
//! | step | module |
//! |---|---|
//! | find the task for a polled record, open tasks | [`super::tasks`] |
//! | run it through the task | [`crate::task`] |
//! | send what it produced | [`super::producer`] |
//! | commit | [`super::commit`] (the order, and why) |
//! | restore newly assigned tasks (in the background) | [`super::restore`] |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::commit::{self, CommitParts};
use super::config::StreamsConfig;
use super::error::RuntimeError;
use super::log_offsets;
use super::message::Consumed;
use super::producer::OutputProducer;
use super::restore::{ChangelogReader, Restored, Restorer};
use super::status::RuntimeStatus;
use super::tasks::{Entry, OwnedTasks};
use super::time_order::{FetchState, Offer};
use super::topics::TopicPlan;
use crate::coordinates::TopicPartition;
use crate::graph::Topology;
use crate::store::StateDir;
use crate::task::{CommittedOffset, InputRecord, TaskConfig, TaskId};

/// Records produced while a transaction commits that are held in memory
/// at most; beyond, the stream thread waits for the commit.
const MAX_HELD: usize = 100_000;

/// Bytes of such records held at most (their keys, values and headers,
/// packed, see `held`): large records reach this bound long before
/// [`MAX_HELD`] (100,000 records of 1 MiB would be 100 GiB). The
/// watchlist benchmark's threads held up to 95,000 records, some 16 MiB.
const MAX_HELD_BYTES: usize = 32 << 20;

/// Everything one stream thread runs.
pub(crate) struct Engine {
    pub(crate) topology: Arc<Topology>,
    pub(crate) cfg: Arc<StreamsConfig>,
    pub(crate) task_cfg: Arc<TaskConfig>,
    pub(crate) plan: Arc<TopicPlan>,
    pub(crate) state: StateDir,
    pub(crate) status: Arc<RuntimeStatus>,
    pub(crate) fatal: Option<RuntimeError>,
    pub(crate) closing: bool,
    /// Processing panicked: the tasks may hold half of a record's changes,
    /// so nothing more is committed (the revocation that closing runs
    /// drops them as if the partitions were lost, and aborts an open
    /// transaction) — what a crash at that point would leave.
    pub(crate) panicked: bool,
    /// The input positions last committed to the group.
    sent_positions: commit::SentPositions,
    out: OutputProducer,
    restorer: Restorer,
    tasks: OwnedTasks,
    /// Input partitions assigned to tasks still restoring: paused until
    /// their task is restored.
    to_pause: Vec<(String, i32)>,
    /// The last commit point (or synchronous commit).
    last_commit: Instant,
    /// When tasks were last punctuated on the wall clock.
    last_punctuate: Instant,
    /// The pipelined commit waiting for acknowledgements (at-least-once).
    in_flight: Option<commit::InFlight>,
    /// Buffers the input headers are copied into, kept between records.
    headers: Vec<(String, Vec<u8>)>,
    /// When standbys were last worked out (see [`super::standby`]).
    last_standby_check: Option<Instant>,
    /// At-least-once: the process was found paused; nothing is processed
    /// until the group confirms this member still holds its partitions
    /// (see [`Self::resume_after_pause`]).
    suspended: Option<Suspension>,
}

/// A stream thread held after a pause of the process.
#[derive(Debug)]
struct Suspension {
    /// When the pause was noticed.
    since: Instant,
    /// When the group was last asked.
    asked: Option<Instant>,
}

/// How often a suspended stream thread asks the group whether it is
/// still a member.
const ASK_EVERY: Duration = Duration::from_millis(500);

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        topology: Arc<Topology>,
        cfg: Arc<StreamsConfig>,
        task_cfg: Arc<TaskConfig>,
        plan: Arc<TopicPlan>,
        state: StateDir,
        out: OutputProducer,
        reader: ChangelogReader,
        status: Arc<RuntimeStatus>,
    ) -> Result<Self, RuntimeError> {
        let restorer = Restorer::start(reader, format!("restore-{}", cfg.application_id))?;
        Ok(Engine {
            tasks: OwnedTasks::new(topology.clone(), task_cfg.clone(), cfg.max_task_idle),
            topology,
            cfg,
            task_cfg,
            plan,
            state,
            status,
            fatal: None,
            closing: false,
            panicked: false,
            sent_positions: Default::default(),
            out,
            restorer,
            to_pause: Vec::new(),
            last_commit: Instant::now(),
            last_punctuate: Instant::now(),
            in_flight: None,
            headers: Vec::new(),
            last_standby_check: None,
            suspended: None,
        })
    }

    /// How many rollbacks rewound the input so far (see
    /// [`OwnedTasks::rewound`]).
    pub(crate) fn rewound(&self) -> u64 {
        self.tasks.rewound()
    }

    /// Records processed and tasks owned, for the periodic progress line.
    pub(crate) fn progress(&self) -> (u64, usize) {
        (
            self.tasks
                .iter()
                .map(|(_, e)| e.task.metrics().processed)
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
        if self.suspended.is_some() {
            return Ok(());
        }
        for (_, e) in self.tasks.iter_mut() {
            e.task.punctuate(now)?;
            self.out.send_all(e.task.drain_output())?;
        }
        self.suspend_if_paused();
        Ok(())
    }

    /// Punctuates on the wall clock once per commit interval.
    pub(crate) fn punctuate_if_due(&mut self) -> Result<(), RuntimeError> {
        if self.last_punctuate.elapsed() < self.cfg.commit_interval {
            return Ok(());
        }
        self.last_punctuate = Instant::now();
        self.punctuate()
    }

    /// A record from the consumer: processed now, or held until its turn
    /// in timestamp order when its task reads more than one topic (see
    /// [`super::time_order`]; [`process_ready`](Self::process_ready)
    /// processes it then).
    pub(crate) fn accept(&mut self, msg: &impl Consumed) -> Result<(), RuntimeError> {
        if self.suspended.is_some() {
            // Read again from the last commit once resumed.
            return Ok(());
        }
        match self.tasks.offer(msg) {
            Offer::Now => self.process(msg),
            Offer::Held => Ok(()),
        }
    }

    /// The consumer reached the end of `partition` of `topic` (a
    /// partition-EOF event): a task reading it with other topics need not
    /// wait for it.
    pub(crate) fn caught_up(&mut self, topic: &str, partition: i32) {
        self.tasks.caught_up(topic, partition);
    }

    /// Processes up to `max` held records whose turn has come; returns how
    /// many. Stops early after a rollback (which drops the rest).
    pub(crate) fn process_ready(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
        max: usize,
    ) -> Result<usize, RuntimeError> {
        if !self.tasks.order.is_on() {
            return Ok(0);
        }
        self.apply_flow(consumer)?;
        if self.tasks.order.held() == 0 {
            return Ok(0);
        }
        let marks = FetchedWatermark(consumer.client().native_ptr());
        let now = Instant::now();
        self.tasks.order.begin_round();
        let rewound = self.tasks.rewound();
        let mut n = 0;
        while n < max && self.tasks.rewound() == rewound {
            let Some(held) = self.tasks.order.next(now, &marks) else {
                break;
            };
            let r = self.process(&held);
            self.tasks.order.recycle(held);
            r?;
            n += 1;
        }
        let enforced = self.tasks.order.take_enforced();
        if enforced > 0 {
            self.status.record_enforced(enforced);
        }
        self.apply_flow(consumer)?;
        Ok(n)
    }

    /// Pauses the partitions that hold too many records for timestamp
    /// order, and resumes those processed down, each from the offset after
    /// the last record it handed out (see [`super::time_order`]).
    fn apply_flow(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        let flow = self.tasks.order.take_flow();
        if !flow.pause.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &flow.pause {
                tpl.add_partition(t, *p);
            }
            consumer.pause(&tpl).map_err(|e| {
                RuntimeError::kafka("pause a partition holding records for timestamp order", e)
            })?;
            tracing::debug!(partitions = ?flow.pause, "paused: holding records for timestamp order");
        }
        for (t, p, next) in &flow.resume {
            consumer
                .seek(t, *p, Offset::Offset(*next), Duration::from_secs(10))
                .map_err(|e| RuntimeError::kafka(format!("seek {t}[{p}] to resume it"), e))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(t, *p);
            consumer
                .resume(&tpl)
                .map_err(|e| RuntimeError::kafka(format!("resume {t}[{p}]"), e))?;
            tracing::debug!(topic = %t, partition = p, from = next, "resumed");
        }
        Ok(())
    }

    /// Processes one input record and sends what it produced.
    pub(crate) fn process(&mut self, msg: &impl Consumed) -> Result<(), RuntimeError> {
        if self.suspended.is_some() {
            // Read again from the last commit once resumed.
            return Ok(());
        }
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let Some(id) = self.tasks.task_for(topic, partition) else {
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
        if let Some(pos) = entry.task.position(topic, partition) {
            if offset < pos {
                return Ok(()); // already reflected in the state
            }
        }
        // The headers are copied into buffers kept between records.
        let mut headers = std::mem::take(&mut self.headers);
        let n = msg.copy_headers(&mut headers);
        let r = self.process_with(id, msg, &headers[..n]);
        self.headers = headers;
        self.suspend_if_paused();
        r
    }

    /// At-least-once: if the producer found the process paused (it then
    /// sends nothing more), rolls every task back to its last commit,
    /// gives up what is unacknowledged and holds processing until
    /// [`resume_after_pause`](Self::resume_after_pause).
    ///
    /// A pause longer than the session timeout (SIGSTOP, a frozen VM)
    /// lets the group hand this member's partitions to another instance,
    /// which restores their state from the changelogs and goes on. What
    /// this one computed from its older state must not reach Kafka after
    /// the new owner's records: compaction would keep the stale value.
    /// Records it had queued time out before librdkafka sends them
    /// ([`StreamsConfig::delivery_timeout`](super::config::StreamsConfig::delivery_timeout)),
    /// and the check before each send stops the rest. Kafka Streams'
    /// at-least-once has no such guard (its zombie writes land).
    fn suspend_if_paused(&mut self) {
        let Some(pause) = self.out.take_pause() else {
            return;
        };
        tracing::warn!(
            paused_s = pause.as_secs_f64(),
            "this process was paused; its partitions may have moved to another instance meanwhile: rolling back to the last commit and waiting for the group before processing again"
        );
        self.in_flight = None;
        self.out.abandon_unacknowledged();
        for (_, e) in self.tasks.iter_mut() {
            e.task.rollback();
        }
        // Read again once resumed (from the positions rolled back to).
        self.tasks.order.reset();
        self.status.record_rollback();
        self.suspended = Some(Suspension {
            since: Instant::now(),
            asked: None,
        });
    }

    /// A stream thread held after a pause goes on once the group confirms
    /// this member still holds its partitions (a synchronous commit of
    /// its last committed positions succeeds): its tasks read their input
    /// again from their last commit. If the group took the partitions
    /// away instead, the revocation closes the tasks and there is nothing
    /// left to confirm. Tasks without a committed position wait one
    /// session timeout: a member removed by the group learns it within
    /// a heartbeat.
    pub(crate) fn resume_after_pause(&mut self, consumer: &BaseConsumer<impl ConsumerContext>) {
        let Some(s) = &mut self.suspended else {
            return;
        };
        if s.asked.is_some_and(|t| t.elapsed() < ASK_EVERY) {
            return;
        }
        s.asked = Some(Instant::now());
        let since = s.since;
        let confirmed = if self.tasks.is_empty() {
            true
        } else {
            match commit::still_a_member(&self.tasks, &self.task_cfg.commit_tag, consumer) {
                Some(Ok(())) => true,
                Some(Err(e)) => {
                    tracing::info!(error = %e, "after the pause: the group does not confirm this member yet");
                    false
                }
                None => {
                    since.elapsed()
                        > self
                            .cfg
                            .session_timeout()
                            .unwrap_or(super::config::DEFAULT_SESSION_TIMEOUT)
                }
            }
        };
        if confirmed {
            commit::rewind(&mut self.tasks, consumer);
            self.suspended = None;
            tracing::info!(
                tasks = self.tasks.len(),
                waited_s = since.elapsed().as_secs_f64(),
                "after the pause: processing again from the last commit"
            );
        }
    }

    /// [`process`](Self::process) of `msg` for owned task `id`, its headers copied.
    fn process_with(
        &mut self,
        id: TaskId,
        msg: &impl Consumed,
        headers: &[(String, Vec<u8>)],
    ) -> Result<(), RuntimeError> {
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        let Some(entry) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        let input = InputRecord {
            topic,
            partition,
            offset,
            timestamp: msg.timestamp_ms(),
            key: msg.key(),
            value: msg.value(),
            headers,
        };
        entry.task.process(&input)?;
        self.out.send_all(entry.task.drain_output())
    }

    fn commit_parts(&mut self) -> CommitParts<'_> {
        CommitParts {
            tasks: &mut self.tasks,
            out: &mut self.out,
            status: &self.status,
            cfg: &self.cfg,
            commit_tag: &self.task_cfg.commit_tag,
            sent: &mut self.sent_positions,
        }
    }

    /// Commits now, waiting for every acknowledgement (rebalances,
    /// shutdown, exactly-once): see [`super::commit`] for the order and why.
    pub(crate) fn commit(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let had_tasks = !self.tasks.is_empty();
        // A synchronous commit covers the one in flight (a transaction
        // commit in flight is finished first).
        self.settle_transaction(consumer)?;
        self.in_flight = None;
        let r = commit::commit(self.commit_parts(), consumer);
        if had_tasks {
            let took = started.elapsed();
            self.status.record_commit(took, took);
        }
        self.last_commit = Instant::now();
        r
    }

    /// Exactly-once: waits for the transaction commit in flight, if any,
    /// and finishes it.
    fn settle_transaction(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        if !self.out.transaction_committing() {
            return Ok(());
        }
        self.finish_in_flight(consumer, true)
    }

    /// Finishes the commit in flight if it is done (or, exactly-once, waits
    /// for it when `wait`).
    fn finish_in_flight(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
        wait: bool,
    ) -> Result<(), RuntimeError> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let sealed_at = flight.sealed_at;
        self.in_flight = if self.out.exactly_once() {
            commit::finish_transaction(self.commit_parts(), flight, consumer, wait)?
        } else {
            commit::complete(self.commit_parts(), flight, consumer, wait)?
        };
        if self.in_flight.is_none() {
            let blocked = started.elapsed();
            if blocked > Duration::from_secs(1) {
                tracing::warn!(
                    seconds = blocked.as_secs_f64(),
                    "writing a commit's state took over a second (local state store busy)"
                );
            }
            self.status.record_commit(sealed_at.elapsed(), blocked);
        }
        Ok(())
    }

    /// Moves the commit on, called after every poll: finishes the commit in
    /// flight once it is done (its records acknowledged, or its transaction
    /// committed); at the commit interval, starts the next (at-least-once:
    /// seals it; exactly-once: seals it and commits its transaction in the
    /// background). One commit is in flight at a time.
    pub(crate) fn advance_commit(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        // Exactly-once holds output while its transaction commits, and
        // at-least-once buffers store changes while a commit's state is
        // written: wait rather than hold either without bound.
        let wait = if self.out.exactly_once() {
            self.out.held() >= MAX_HELD || self.out.held_bytes() >= MAX_HELD_BYTES
        } else {
            let over =
                self.in_flight.is_some() && self.tasks.buffered() >= self.cfg.max_buffered_changes;
            if over {
                self.status.record_buffer_wait();
            }
            over
        };
        if self.suspended.is_some() {
            return Ok(());
        }
        self.finish_in_flight(consumer, wait)?;
        if self.in_flight.is_none() {
            // drops written layers; surfaces a failed write
            commit::written(&mut self.tasks)?;
        }
        if self.in_flight.is_some() || self.last_commit.elapsed() < self.cfg.commit_interval {
            return Ok(());
        }
        let started = Instant::now();
        self.in_flight = if self.out.exactly_once() {
            commit::start_transaction(self.commit_parts(), consumer)?
        } else {
            commit::seal(self.commit_parts())
        };
        self.status.record_blocked(started.elapsed());
        self.last_commit = Instant::now();
        Ok(())
    }

    /// The stores of owned task `id` and the index of `store` among them;
    /// `None` if the task is not owned here or has no such store.
    pub(crate) fn task_stores(
        &self,
        id: TaskId,
        store: &str,
    ) -> Option<(&crate::store::StoreSet, usize)> {
        let e = self.tasks.get(&id)?;
        let idx = e.task.stores().index_of(store)?;
        Some((e.task.stores(), idx))
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
        for (id, e) in self.tasks.iter() {
            self.status.update_metrics(*id, e.task.metrics());
        }
        self.status.set_awaiting_ack(self.out.awaiting_ack());
        self.status.sample_rate();
    }

    /// New partitions: create their tasks, restore them, and set the
    /// positions to start from in `tpl`.
    pub(crate) fn on_assign(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), RuntimeError> {
        let assigned: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if self.closing {
            // The consumer is closing and a rebalance that was under way
            // when it began still completes inside the close (a member
            // joined just before): the close revokes the partitions again
            // at once, so no task opens. Reading the group's offsets here
            // would never succeed: librdkafka answers every offset fetch
            // of a closing consumer with "waiting for the coordinator", so
            // the close (and the group, waiting for this member's next
            // join) hung for the whole retry period.
            tracing::debug!(
                partitions = assigned.len(),
                "assignment while closing: no task opens"
            );
            return Ok(());
        }
        if self.task_cfg.layout.is_single() {
            let total: i32 = self
                .topology
                .source_topics(&self.cfg.application_id)
                .iter()
                .map(|t| self.plan.partitions.get(t).copied().unwrap_or(0))
                .sum();
            let held = self.tasks.partition_count() + self.restorer.pending_partitions();
            if ((assigned.len() + held) as i32) < total {
                return Err(RuntimeError::SecondMember {
                    group: self.cfg.application_id.clone(),
                });
            }
        }
        let by_task = self.tasks.by_task(&assigned);
        self.tasks.order.assigned();
        let committed = if self.cfg.outside_group {
            // Not a member: the group's offsets are other programs'.
            BTreeMap::new()
        } else {
            self.group_offsets(consumer, tpl)?
        };
        let mut fresh = Vec::new();
        for (id, parts) in by_task {
            if let Some(e) = self.tasks.get_mut(&id) {
                e.partitions.extend(parts);
                continue;
            }
            if self.restorer.is_pending(&id) || self.restorer.is_standby(&id) {
                // A standby's task moves here (its copy is closed with its
                // checkpoint; the restore reads only what came after), or a
                // restoring task gains a partition (single-instance layout,
                // incremental assignment): restore it from where it got to.
                self.restorer.abandon(vec![id]);
            }
            let task = self.tasks.open(&self.state, id)?;
            fresh.push(Entry {
                task,
                partitions: parts,
            });
        }
        // The new tasks restore in the background; their partitions are
        // assigned paused, and resumed at the positions their restore
        // decides (never at an offset the group holds that restore did
        // not trust).
        for e in &fresh {
            for (t, p) in &e.partitions {
                let _ = tpl.set_partition_offset(t, *p, Offset::Beginning);
                self.to_pause.push((t.clone(), *p));
            }
            // Restoring from now: the instance is not ready before the
            // restorer has even looked at it.
            self.status.set_task(
                e.task.id(),
                super::status::TaskStatus {
                    state: super::status::TaskState::Restoring,
                    restore: Vec::new(),
                    metrics: e.task.metrics(),
                },
            );
        }
        // Standbys are worked out again with the new assignment.
        self.last_standby_check = None;
        self.restorer.submit(fresh, committed)
    }

    /// Works out which tasks this member keeps standby copies of, every few
    /// seconds and after each assignment (see [`super::standby`]).
    pub(crate) fn refresh_standbys(&mut self, consumer: &BaseConsumer<impl ConsumerContext>) {
        let replicas = self.cfg.num_standby_replicas;
        if replicas == 0 || self.cfg.outside_group || self.task_cfg.layout.is_single() {
            return;
        }
        if self
            .last_standby_check
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3))
        {
            return;
        }
        self.last_standby_check = Some(Instant::now());
        let Ok(list) =
            consumer.fetch_group_list(Some(&self.cfg.application_id), Duration::from_secs(2))
        else {
            return;
        };
        let members: Vec<super::standby::GroupMember> = list
            .groups()
            .iter()
            .flat_map(|g| g.members())
            .map(|m| super::standby::GroupMember {
                id: m.id().to_string(),
                partitions: m
                    .assignment()
                    .map(crate::http::probe::parse_assignment)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })
            .collect();
        let Some(me) = super::standby::member_id(consumer) else {
            return;
        };
        let tasks = super::standby::stateful_tasks(
            &self.topology,
            &self.cfg.application_id,
            &self.plan.tasks,
        );
        let wanted = super::standby::standby_tasks(&members, &me, &tasks, replicas)
            .into_iter()
            .filter(|id| self.tasks.get_mut(id).is_none() && !self.restorer.is_pending(id))
            .collect();
        self.restorer.set_standbys(wanted);
    }

    /// Pauses the partitions of tasks still restoring; called right after
    /// the consumer took an assignment.
    pub(crate) fn pause_restoring(&mut self, consumer: &BaseConsumer<impl ConsumerContext>) {
        if self.to_pause.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in self.to_pause.drain(..) {
            tpl.add_partition(&t, p);
        }
        if let Err(e) = consumer.pause(&tpl) {
            self.fatal
                .get_or_insert(RuntimeError::kafka("pause restoring partitions", e));
        }
    }

    /// Takes the tasks whose restore finished: seeks their partitions to
    /// where each resumes and resumes them.
    pub(crate) fn collect_restored(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        let restored = self.restorer.take_restored();
        if restored.is_empty() {
            return Ok(());
        }
        self.state.sync()?;
        // The log bounds of every partition resuming, in two requests
        // however many there are: the start for all of them, the end for
        // those with a position (to check it is still in the log). A
        // partition without a position is sought to its log start as a
        // number, never to `Offset::Beginning`: that seek makes librdkafka
        // look the offset up after the seek returns, the resume right after
        // starts a new version of the partition's state, the answer arrives
        // outdated and is dropped, and librdkafka asks again only after
        // 500 ms (`rd_kafka_toppar_offset_retry(rktp, 500, "outdated offset
        // response")`): a new application read its first record half a
        // second after its tasks were ready.
        let (mut every, mut placed) = (Vec::new(), Vec::new());
        for r in &restored {
            let Restored::Ready(e) = r else { continue };
            for (t, p) in &e.partitions {
                every.push((t.clone(), *p));
                if e.task.position(t, *p).is_some() {
                    placed.push((t.clone(), *p));
                }
            }
        }
        let starts = log_offsets::list(consumer, &every, Offset::Beginning);
        let ends = log_offsets::list(consumer, &placed, Offset::End);
        for r in restored {
            let e = match r {
                Restored::Ready(e) => *e,
                Restored::Failed(err) => return Err(err),
            };
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &e.partitions {
                let key = (t.clone(), *p);
                let offset = match e.task.position(t, *p) {
                    Some(pos) => {
                        let bounds = starts.get(&key).zip(ends.get(&key));
                        let bounds = bounds.map(|(&low, &high)| (low, high));
                        Offset::Offset(self.in_range(consumer, t, *p, pos, bounds)?)
                    }
                    None => starts
                        .get(&key)
                        .map_or(Offset::Beginning, |&start| Offset::Offset(start)),
                };
                consumer
                    .seek(t, *p, offset, Duration::from_secs(10))
                    .map_err(|err| {
                        RuntimeError::kafka(format!("seek {t}[{p}] after its restore"), err)
                    })?;
                tpl.add_partition(t, *p);
            }
            consumer
                .resume(&tpl)
                .map_err(|err| RuntimeError::kafka("resume restored partitions", err))?;
            // Running once this thread owns it (queries find it from now).
            self.status
                .set_state(e.task.id(), super::status::TaskState::Running);
            self.tasks.insert(e);
        }
        Ok(())
    }

    /// `pos` if input partition `topic[partition]` still holds it; if the
    /// log starts after it (retention deleted records), where the reset
    /// policy (`auto.offset.reset`, earliest unless set through
    /// `StreamsConfig::extra`) puts it, said in one line. A log that ends
    /// before it is not the log the state was built from:
    /// [`RuntimeError::InputRewound`]. `bounds` are the partition's log
    /// start and end when already read; else they are read here.
    fn in_range(
        &self,
        consumer: &BaseConsumer<impl ConsumerContext>,
        topic: &str,
        partition: i32,
        pos: i64,
        bounds: Option<(i64, i64)>,
    ) -> Result<i64, RuntimeError> {
        let read = || consumer.fetch_watermarks(topic, partition, Duration::from_secs(5));
        let Some((low, high)) = bounds.or_else(|| read().ok()) else {
            return Ok(pos);
        };
        if pos > high {
            return Err(RuntimeError::InputRewound {
                input: format!("{topic}[{partition}]"),
                position: pos,
                found: format!("its log ends at offset {high}"),
            });
        }
        if pos >= low {
            return Ok(pos);
        }
        let policy = self
            .cfg
            .extra_setting(
                super::config::KafkaClient::MainConsumer,
                "auto.offset.reset",
            )
            .unwrap_or("earliest");
        let to = if matches!(policy, "latest" | "largest" | "end") {
            high
        } else {
            low
        };
        tracing::warn!(input = %format!("{topic}[{partition}]"), position = pos, log_start = low, log_end = high, resume = to, policy, "the input no longer holds the position to resume from (out of range); resuming where auto.offset.reset says");
        Ok(to)
    }

    /// librdkafka reset the fetch position of input `topic[partition]`
    /// (see [`super::input_watch`]). A reset forward (retention deleted
    /// records past the position its task holds) is harmless: the task
    /// processes from where the fetch resumes. Any other reset means the
    /// log was replaced under the task (a fetch from at or after its
    /// position, which the log starts before, was out of range):
    /// [`RuntimeError::InputRewound`]. `Ok(false)` when the log's bounds
    /// could not be read, to ask again.
    pub(crate) fn check_reset(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
        topic: &str,
        partition: i32,
    ) -> Result<bool, RuntimeError> {
        let Some(id) = self.tasks.task_for(topic, partition) else {
            return Ok(true);
        };
        let Some(pos) = self
            .tasks
            .get_mut(&id)
            .and_then(|e| e.task.position(topic, partition))
        else {
            return Ok(true);
        };
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))
        else {
            return Ok(false);
        };
        if pos < low {
            // Retention deleted the position: the fetch moved forward.
            self.in_range(consumer, topic, partition, pos, Some((low, high)))?;
            return Ok(true);
        }
        // The log holds the position, or ends before it, yet a fetch from
        // at or after it was out of range: the log was replaced (and may
        // have grown past the position since).
        Err(RuntimeError::InputRewound {
            input: format!("{topic}[{partition}]"),
            position: pos,
            found: format!("a fetch found its log replaced while the application ran (the log now spans offsets {low} to {high})"),
        })
    }

    /// Whether tasks are restoring in the background.
    pub(crate) fn restoring(&self) -> bool {
        self.restorer.busy()
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

    /// The offsets the group holds for `tpl`, classified by who committed
    /// them; transient errors are retried for a while.
    fn group_offsets(
        &self,
        consumer: &BaseConsumer<impl ConsumerContext>,
        tpl: &TopicPartitionList,
    ) -> Result<BTreeMap<TopicPartition, CommittedOffset>, RuntimeError> {
        let deadline = Instant::now() + super::restore::RETRY_FOR;
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

    /// Partitions taken away: commit everything, then close their tasks.
    pub(crate) fn on_revoke(
        &mut self,
        consumer: &BaseConsumer<impl ConsumerContext>,
        tpl: &TopicPartitionList,
        lost: bool,
    ) -> Result<(), RuntimeError> {
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        // Restored tasks join the owned ones first (to be committed and
        // closed like them); tasks still restoring stop, keeping what they
        // restored.
        if let Err(e) = self.collect_restored(consumer) {
            self.fatal.get_or_insert(e);
        }
        let moving: Vec<TaskId> = revoked
            .iter()
            .filter_map(|(t, p)| self.tasks.task_for(t, *p))
            .filter(|id| self.restorer.is_pending(id))
            .collect();
        self.restorer.abandon(moving);
        self.to_pause.retain(|tp| !revoked.contains(tp));
        let lost = lost || self.panicked;
        let result = if !lost {
            self.commit(consumer)
        } else if self.out.in_transaction() {
            // A transaction commit in flight finishes first (it cannot be
            // aborted halfway); whatever is open after it is aborted.
            if let Err(e) = self.settle_transaction(consumer) {
                self.fatal.get_or_insert(e);
            }
            self.in_flight = None;
            commit::abort(&mut self.tasks, &mut self.out, consumer)
        } else {
            // The commit in flight may cover partitions lost to another
            // member: dropped; the next seal covers its tasks' changes.
            self.in_flight = None;
            Ok(())
        };
        // Held records of the partitions taken away are not processed here.
        self.tasks.order.forget(&revoked);
        let mut affected: Vec<TaskId> = revoked
            .iter()
            .filter_map(|(t, p)| self.tasks.task_for(t, *p))
            .collect();
        affected.sort();
        affected.dedup();
        for id in affected {
            if let Some(mut e) = self.tasks.remove(&id) {
                e.partitions.retain(|tp| !revoked.contains(tp));
                if e.partitions.is_empty() || !self.task_cfg.layout.is_single() {
                    e.task.close();
                    self.status.remove_task(id);
                } else {
                    self.tasks.insert(e);
                }
            }
        }
        if self.task_cfg.layout.is_single()
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
        consumer: &BaseConsumer<impl ConsumerContext>,
    ) -> Result<(), RuntimeError> {
        let r = self
            .commit(consumer)
            .and_then(|()| self.state.sync().map_err(RuntimeError::from));
        self.restorer.stop();
        for (id, mut e) in self.tasks.take_all() {
            e.task.close();
            self.status.remove_task(id);
        }
        r
    }
}

/// What a consumer knows of its partitions' ends: librdkafka's last
/// fetched high watermark (`rd_kafka_get_watermark_offsets`) against its
/// position (`rd_kafka_position`, which moves past transaction markers
/// too). Neither makes a request.
struct FetchedWatermark(*mut rdkafka::bindings::rd_kafka_t);

impl FetchState for FetchedWatermark {
    fn caught_up(&self, topic: &std::ffi::CString, partition: i32, next: Option<i64>) -> bool {
        use rdkafka::bindings as rd;
        let ok = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the consumer's live handle (borrowed for the lookup's
        // duration by `process_ready`) and a NUL-terminated topic name.
        let err = unsafe {
            rd::rd_kafka_get_watermark_offsets(
                self.0,
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        if err != ok || high < 0 {
            return false;
        }
        if high <= low {
            return true; // nothing to read
        }
        // SAFETY: a list of one partition, made, read and destroyed here;
        // `rd_kafka_position` only reads the consumer's state.
        let position = unsafe {
            let list = rd::rd_kafka_topic_partition_list_new(1);
            let tp = rd::rd_kafka_topic_partition_list_add(list, topic.as_ptr(), partition);
            let at = if rd::rd_kafka_position(self.0, list) == ok && (*tp).err == ok {
                (*tp).offset
            } else {
                -1
            };
            rd::rd_kafka_topic_partition_list_destroy(list);
            at
        };
        position.max(next.unwrap_or(-1)) >= high
    }
}
