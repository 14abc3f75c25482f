//! Restoring newly assigned tasks from their changelogs, in the
//! background: a [`Restorer`] thread owns the restore consumer, takes the
//! tasks the engine hands it, and hands each back the moment its own
//! stores are restored.
//!
//! The rebalance callback only opens the new tasks and gives them to the
//! restorer; their input partitions stay paused until the task comes back,
//! then the engine seeks them to the positions the restore decided and
//! resumes them. Tasks that are ready keep processing meanwhile, and the
//! stream thread keeps polling its group consumer, so a restore of any
//! length never exceeds `max.poll.interval.ms` (Kafka Streams moved
//! restoration to a state-updater thread for the same reasons).
//!
//! Restoring tasks read together, in one pass of the restore consumer over
//! their changelog partitions: each partition from the task's sled
//! checkpoint (or from the beginning when there is no local state) up to
//! the high watermark taken when its restore began (the last stable
//! offset, as the restore consumer reads committed data only). Progress is
//! written to sled when the restored entries of all tasks pass
//! [`RESTORE_BUFFER_BYTES`] (the task holding the most, once the write
//! before is done), every 30 seconds
//! per task (five for a standby), and when a task is taken away
//! mid-restore (its partition revoked), so that a restore never starts
//! again from scratch on the same instance.
//!
//! A changelog whose log-start offset has moved past the local checkpoint
//! (delete retention, a truncated topic, a replaced cluster) cannot fill
//! the gap: the task's local state is wiped and rebuilt from what the
//! changelog still has, with one warning naming the store's changelog
//! partition and both offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;

use super::batch::{read_batch, BatchBuffer, Batched, BATCH};
use super::client_log::LogQueue;
use super::error::RuntimeError;
use super::log_offsets;
use super::progress::RestoreReporter;
use super::status::{RestoreProgress, RestoreRecord, RuntimeStatus, TaskState, TaskStatus};
use super::tasks::Entry;
use super::topics::ErrorCapture;
use crate::coordinates::TopicPartition;
use crate::task::{CommittedOffset, HandedOver, RestoreTarget, TaskId};

/// Memory the restored entries of all restoring tasks may take before the
/// task holding the most is written to sled. A changelog updates the same
/// keys many times and the buffer keeps only the latest value, so sled
/// writes scale with keys, not records, and every write before the end
/// writes keys that later records may write again: the larger the budget,
/// the fewer sled writes (a changelog of 10 million records over a million
/// count keys fits in about 120 MiB and is written once). Besides the
/// budget, a restore holds the entries of the one write in flight.
pub(crate) const RESTORE_BUFFER_BYTES: usize = 192 * 1024 * 1024;
/// Longest time between two writes of a restoring task's progress to sled:
/// an interrupted restore resumes from its last write.
const RESTORE_FLUSH_INTERVAL: Duration = Duration::from_secs(30);
/// Longest time between two writes of a standby's progress to sled.
const STANDBY_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
const RESTORE_STALL: Duration = Duration::from_secs(120);
/// How many records ahead of the one it applies the restorer hints the
/// store's lookup: enough for the memory waits of that many lookups to
/// overlap, few enough that the hinted lines are still cached when used.
const PREFETCH_AHEAD: usize = 16;
/// How often standbys learn the group's commits and publish their lag.
const STANDBY_REFRESH: Duration = Duration::from_secs(1);
/// How often an idle restorer passes its consumer's log lines on.
const LOG_DRAIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long transient metadata errors are retried during a rebalance.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(90);

/// Whether a client error is a missing permission (never worth retrying).
pub(crate) fn is_authorization(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        )
    )
}

/// What the engine asks of the restorer thread.
enum Command {
    /// Restore these new tasks, with the group's committed offsets.
    Restore(Vec<Entry>, BTreeMap<TopicPartition, CommittedOffset>),
    /// Stop restoring these tasks (their partitions were revoked, or a
    /// standby's task moved here): keep what was restored, close them;
    /// answer when done, with those of them no longer restoring (their
    /// restore had finished: they are on their way back as
    /// [`Restored::Ready`]).
    Abandon(Vec<TaskId>, Sender<Vec<TaskId>>),
    /// Keep standby copies of exactly these tasks.
    Standbys(std::collections::BTreeSet<TaskId>),
}

/// What the restorer needs to open standby tasks itself.
pub(crate) struct Opener {
    pub(crate) topology: Arc<crate::graph::Topology>,
    pub(crate) task_cfg: Arc<crate::task::TaskConfig>,
    pub(crate) state: crate::store::StateDir,
}

/// What the restorer thread hands back.
pub(crate) enum Restored {
    /// A task whose stores are restored, ready to process (boxed: an
    /// entry is large, and a failure is sent through the same channel).
    Ready(Box<Entry>),
    /// Restoring failed; the instance must stop.
    Failed(RuntimeError),
}

/// The engine's handle on its restorer thread.
pub(crate) struct Restorer {
    commands: Sender<Command>,
    restored: Receiver<Restored>,
    /// Tasks handed over and not handed back yet, with their partitions.
    pending: BTreeMap<TaskId, Vec<(String, i32)>>,
    /// Standby tasks kept by the restorer.
    standbys: std::collections::BTreeSet<TaskId>,
    /// Tasks abandoned after their restore had finished, with how many of
    /// their [`Restored::Ready`] hand-backs are still on the way: those
    /// are closed, never taken (their partitions are gone; a task handed
    /// over again is another hand-back, which comes after).
    stale: BTreeMap<TaskId, usize>,
    status: Arc<RuntimeStatus>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Restorer {
    /// Starts the restorer thread around `reader`.
    pub(crate) fn start(reader: ChangelogReader, name: String) -> Result<Restorer, RuntimeError> {
        let (commands, command_rx) = std::sync::mpsc::channel();
        let (restored_tx, restored) = std::sync::mpsc::channel();
        let status = reader.status.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // A panic here (a processor's `init`, which runs once its
                // task is restored, or a bug of ours) is reported as the
                // failure it is: the engine stops the instance, where a
                // silent end of this thread would leave its tasks
                // restoring for good.
                let report = restored_tx.clone();
                let run = std::panic::AssertUnwindSafe(move || reader.run(command_rx, restored_tx));
                if let Err(payload) = std::panic::catch_unwind(run) {
                    let error = RuntimeError::ThreadPanicked(format!(
                        "restore thread: {}",
                        super::app::panic_message(payload.as_ref())
                    ));
                    tracing::error!(%error, "the restore thread stopped; the instance stops");
                    let _ = report.send(Restored::Failed(error));
                }
            })
            .map_err(|e| RuntimeError::Config(format!("cannot start the restore thread: {e}")))?;
        Ok(Restorer {
            commands,
            restored,
            pending: BTreeMap::new(),
            standbys: std::collections::BTreeSet::new(),
            stale: BTreeMap::new(),
            status,
            thread: Some(thread),
        })
    }

    /// Hands new tasks over for restoring.
    pub(crate) fn submit(
        &mut self,
        entries: Vec<Entry>,
        committed: BTreeMap<TopicPartition, CommittedOffset>,
    ) -> Result<(), RuntimeError> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            self.pending.insert(e.task.id(), e.partitions.clone());
        }
        self.commands
            .send(Command::Restore(entries, committed))
            .map_err(|_| RuntimeError::ThreadPanicked("the restore thread stopped".into()))
    }

    /// Tasks restored since the last call (and failures). A task
    /// abandoned after its restore finished is closed here instead: its
    /// partitions were revoked meanwhile, and resuming them would fail
    /// (librdkafka refuses to seek a partition it no longer fetches).
    pub(crate) fn take_restored(&mut self) -> Vec<Restored> {
        let mut out = Vec::new();
        while let Ok(r) = self.restored.try_recv() {
            if let Restored::Ready(e) = &r {
                let id = e.task.id();
                if let Some(n) = self.stale.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        self.stale.remove(&id);
                    }
                    let Restored::Ready(mut e) = r else { continue };
                    e.task.close();
                    if !self.pending.contains_key(&id) {
                        self.status.remove_task(id);
                    }
                    tracing::debug!(task = %id, "a task restored after it moved away is closed");
                    continue;
                }
                self.pending.remove(&id);
            }
            out.push(r);
        }
        out
    }

    /// Whether `id` is being restored.
    pub(crate) fn is_pending(&self, id: &TaskId) -> bool {
        self.pending.contains_key(id)
    }

    /// Input partitions of the tasks being restored.
    pub(crate) fn pending_partitions(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    /// Whether any task is being restored.
    pub(crate) fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the restorer keeps a standby copy of `id`.
    pub(crate) fn is_standby(&self, id: &TaskId) -> bool {
        self.standbys.contains(id)
    }

    /// Keeps standby copies of exactly `ids` (opening new ones, closing
    /// the others).
    pub(crate) fn set_standbys(&mut self, ids: std::collections::BTreeSet<TaskId>) {
        if ids == self.standbys {
            return;
        }
        self.standbys = ids.clone();
        let _ = self.commands.send(Command::Standbys(ids));
    }

    /// Stops restoring `ids`, or keeping them as standbys (what was
    /// restored stays in sled), and waits until the restorer has closed
    /// them.
    pub(crate) fn abandon(&mut self, ids: Vec<TaskId>) {
        let ids: Vec<TaskId> = ids
            .into_iter()
            .filter(|i| self.pending.contains_key(i) || self.standbys.contains(i))
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut was_pending = Vec::with_capacity(ids.len());
        for id in &ids {
            if self.pending.remove(id).is_some() {
                was_pending.push(*id);
            }
            self.standbys.remove(id);
        }
        let (ack, done) = std::sync::mpsc::channel();
        if self.commands.send(Command::Abandon(ids, ack)).is_ok() {
            if let Ok(finished) = done.recv_timeout(Duration::from_secs(60)) {
                for id in finished.into_iter().filter(|id| was_pending.contains(id)) {
                    *self.stale.entry(id).or_insert(0) += 1;
                }
            }
        }
    }

    /// Abandons every task and stops the thread.
    pub(crate) fn stop(&mut self) {
        let all: Vec<TaskId> = self
            .pending
            .keys()
            .chain(self.standbys.iter())
            .copied()
            .collect();
        self.abandon(all);
        // Closing the channel ends the thread's loop.
        let (dummy, _) = std::sync::mpsc::channel();
        self.commands = dummy;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Restorer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Job {
    entry: Entry,
    /// A standby: follows the changelog for good, never handed back.
    standby: bool,
    /// Per target: a standby waits at a record it may not apply yet.
    blocked: Vec<bool>,
    full: bool,
    started: Instant,
    targets: Vec<RestoreTarget>,
    progress: Vec<RestoreProgress>,
    changelog_records: u64,
    last_flush: Instant,
}

impl Job {
    fn done(&self) -> bool {
        !self.standby && self.progress.iter().all(|p| p.done)
    }

    /// Writes what was restored and how far, so that a restart resumes here.
    fn flush(&mut self) -> Result<(), RuntimeError> {
        self.record_progress();
        self.entry.task.flush_restore()?;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// The last [`flush`](Self::flush) of a finished restore, processing
    /// next.
    fn finish(&mut self) -> Result<(), RuntimeError> {
        self.record_progress();
        self.entry.task.finish_restore()?;
        Ok(())
    }

    fn record_progress(&mut self) {
        for p in &self.progress {
            self.entry
                .task
                .restore_progress(&p.topic, p.partition, p.position);
        }
    }
}

/// Reads changelogs into tasks' stores, with its own consumer (never in a
/// group, never committing). Runs on the restorer thread.
pub(crate) struct ChangelogReader {
    /// The consumer's log lines, drained on the restorer thread (before
    /// `consumer`: dropped first).
    log: Option<LogQueue>,
    consumer: BaseConsumer<ErrorCapture>,
    status: Arc<RuntimeStatus>,
    /// Whether a task without local state may start empty when its
    /// changelog cannot be read (after this application committed offsets).
    allow_empty_state: bool,
    jobs: Vec<Job>,
    /// Changelog partition → (job, partition index), looked up for every
    /// record.
    index: PartitionIndex,
    reporter: Option<RestoreReporter>,
    last_progress: Instant,
    last_status: Instant,
    headers: Vec<(String, Vec<u8>)>,
    /// The batch buffer, kept between reads.
    batch: BatchBuffer,
    opener: Opener,
    last_standby_refresh: Instant,
    /// The late-write guards of tasks closed without processing (a
    /// standby, an abandoned restore), for their next restore here.
    handed_over: HashMap<TaskId, HandedOver>,
}

impl ChangelogReader {
    /// A reader over `consumer` that reports to `status`.
    pub(crate) fn new(
        consumer: BaseConsumer<ErrorCapture>,
        status: Arc<RuntimeStatus>,
        allow_empty_state: bool,
        opener: Opener,
    ) -> Self {
        ChangelogReader {
            opener,
            last_standby_refresh: Instant::now(),
            log: LogQueue::attach(&consumer),
            consumer,
            status,
            allow_empty_state,
            jobs: Vec::new(),
            index: PartitionIndex::default(),
            reporter: None,
            last_progress: Instant::now(),
            last_status: Instant::now(),
            headers: Vec::new(),
            batch: BatchBuffer::default(),
            handed_over: HashMap::new(),
        }
    }

    /// Gives `task`, whose restore has just been planned, the late-write
    /// guard its last restore here handed over, if its local state is
    /// still where that restore left it.
    fn carry_on_late_writes(&mut self, task: &mut crate::task::Task, full: bool) {
        if let Some(handed) = self.handed_over.remove(&task.id()) {
            let taken = !full && task.take_over_late_writes(handed);
            tracing::debug!(task = %task.id(), taken, "the late-write guard of the task's last restore here");
        }
    }

    /// The restorer thread: takes commands, reads changelogs while tasks
    /// restore, hands restored tasks back; ends when the engine's handle
    /// is gone.
    fn run(mut self, commands: Receiver<Command>, restored: Sender<Restored>) {
        loop {
            if let Some(log) = &mut self.log {
                log.drain(&self.consumer);
            }
            let next = if self.jobs.is_empty() {
                // Woken now and then to pass the consumer's log lines on.
                match commands.recv_timeout(LOG_DRAIN_INTERVAL) {
                    Ok(c) => Some(c),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        self.serve_idle();
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match commands.try_recv() {
                    Ok(c) => Some(c),
                    Err(std::sync::mpsc::TryRecvError::Empty) => None,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                }
            };
            let result = match next {
                Some(Command::Restore(entries, committed)) => self.begin(entries, &committed),
                Some(Command::Abandon(ids, ack)) => {
                    let finished: Vec<TaskId> = ids
                        .iter()
                        .filter(|id| !self.jobs.iter().any(|j| j.entry.task.id() == **id))
                        .copied()
                        .collect();
                    let r = self.abandon(&ids);
                    let _ = ack.send(finished);
                    r.map(|()| Vec::new())
                }
                Some(Command::Standbys(ids)) => self.set_standbys(&ids).map(|()| Vec::new()),
                None if self.last_standby_refresh.elapsed() >= STANDBY_REFRESH => {
                    self.refresh_standbys().map(|()| Vec::new())
                }
                None => self.step(Duration::from_millis(100)),
            };
            match result {
                Ok(ready) => {
                    for e in ready {
                        if restored.send(Restored::Ready(Box::new(e))).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let ids: Vec<TaskId> = self.jobs.iter().map(|j| j.entry.task.id()).collect();
                    let _ = self.abandon(&ids);
                    let _ = restored.send(Restored::Failed(e));
                }
            }
        }
        let ids: Vec<TaskId> = self.jobs.iter().map(|j| j.entry.task.id()).collect();
        let _ = self.abandon(&ids);
    }

    /// Plans the restore of new tasks; returns those with nothing to read.
    fn begin(
        &mut self,
        entries: Vec<Entry>,
        committed: &BTreeMap<TopicPartition, CommittedOffset>,
    ) -> Result<Vec<Entry>, RuntimeError> {
        let mut ready = Vec::new();
        let mut planned = Vec::with_capacity(entries.len());
        for mut entry in entries {
            let full = entry.task.stores().checkpoint()?.is_none();
            let targets = entry.task.begin_restore(committed)?;
            planned.push((entry, full, targets));
        }
        // Every changelog partition's bounds in two requests; one the
        // answer lacks is read alone, retried while leadership moves.
        let parts: Vec<(String, i32)> = planned
            .iter()
            .flat_map(|(_, _, targets)| targets.iter().map(|t| (t.topic.clone(), t.partition)))
            .collect();
        let bounds = log_offsets::bounds(&self.consumer, &parts);
        for (mut entry, mut full, mut targets) in planned {
            let mut marks = Vec::with_capacity(targets.len());
            for t in &targets {
                marks.push(match bounds.get(&(t.topic.clone(), t.partition)) {
                    Some(&b) => b,
                    None => self.watermarks(&t.topic, t.partition)?,
                });
            }
            // The changelog no longer reaches back to the local checkpoint:
            // the gap cannot be filled, so the state is rebuilt whole. A
            // changelog that ends before the checkpoint is not the log the
            // state was written to (deleted and created again, say by a
            // reset run on another machine, or records lost): the
            // changelog is the truth, so the state is rebuilt from it too,
            // as Kafka Streams' restore does when a checkpointed offset is
            // out of range.
            if !full {
                let gap = targets.iter().zip(&marks).find(|(t, (low, high))| {
                    (t.end.is_none() && t.start > 0 && t.start < *low) || t.start > *high
                });
                if let Some((t, &(low, high))) = gap {
                    let changelog = format!("{}[{}]", t.topic, t.partition);
                    if t.start > high {
                        tracing::warn!(task = %entry.task.id(), %changelog, checkpoint = t.start, log_end = high, "the changelog ends before the local checkpoint (it was deleted and created again, or lost records); wiping the local state and rebuilding it from what the changelog holds");
                    } else {
                        tracing::warn!(task = %entry.task.id(), %changelog, checkpoint = t.start, log_start = low, "the changelog no longer holds the records after the local checkpoint (its log start moved past it); wiping the local state and rebuilding it from what the changelog still has");
                    }
                    entry.task.wipe()?;
                    full = true;
                    targets = entry.task.begin_restore(committed)?;
                }
            }
            self.carry_on_late_writes(&mut entry.task, full);
            let mut progress = Vec::with_capacity(targets.len());
            let mut changelog_records = 0;
            for (t, (low, high)) in targets.iter().zip(marks) {
                let high = t.end.map_or(high, |end| end.min(high));
                changelog_records += (high - low).max(0) as u64;
                let start = t.start.max(low);
                let done = start >= high;
                progress.push(RestoreProgress {
                    topic: t.topic.clone(),
                    partition: t.partition,
                    start,
                    end: high,
                    position: start,
                    read: 0,
                    done,
                });
            }
            let id = entry.task.id();
            self.status.set_task(
                id,
                TaskStatus {
                    state: TaskState::Restoring,
                    restore: progress.clone(),
                    metrics: entry.task.metrics(),
                },
            );
            let total: i64 = progress.iter().map(|p| (p.end - p.start).max(0)).sum();
            if total > 0 {
                tracing::info!(task = %id, records = total, full, "restoring");
            }
            let mut job = Job {
                blocked: vec![false; targets.len()],
                standby: false,
                entry,
                full,
                started: Instant::now(),
                targets,
                progress,
                changelog_records,
                last_flush: Instant::now(),
            };
            if job.done() {
                job.finish()?;
                ready.push(self.hand_back(job)?);
            } else {
                self.jobs.push(job);
            }
        }
        self.reassign()?;
        Ok(ready)
    }

    /// Assigns the restore consumer every unfinished changelog partition at
    /// its position.
    fn reassign(&mut self) -> Result<(), RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        self.reindex();
        // Waiting standbys stay paused until they may go on; every other
        // partition is resumed first, since librdkafka keeps a partition's
        // pause across unassign and assign: a partition a closed standby
        // paused would otherwise never be read by the restore that takes
        // its task over. (Resumed before the assignment, whose start
        // offset a later pause or resume could make stale.)
        let (mut waiting, mut reading) = (TopicPartitionList::new(), TopicPartitionList::new());
        let mut total = 0u64;
        for job in &self.jobs {
            for (i, p) in job.progress.iter().enumerate() {
                if !job.standby {
                    total += (p.end - p.start).max(0) as u64;
                }
                if p.done {
                    continue;
                }
                tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.position))
                    .map_err(|e| RuntimeError::kafka("plan changelog reads", e))?;
                let list = if job.blocked[i] {
                    &mut waiting
                } else {
                    &mut reading
                };
                list.add_partition(&p.topic, p.partition);
            }
        }
        if tpl.count() == 0 {
            let _ = super::assignment::unassign(&self.consumer);
            if let Some(r) = self.reporter.take() {
                r.finish();
            }
            return Ok(());
        }
        if reading.count() > 0 {
            let _ = self.consumer.resume(&reading);
        }
        super::assignment::assign(&self.consumer, &tpl)
            .map_err(|e| RuntimeError::kafka("assign changelog partitions", e))?;
        if waiting.count() > 0 {
            let _ = self.consumer.pause(&waiting);
        }
        if !self.jobs.iter().any(|j| !j.standby) {
            if let Some(r) = self.reporter.take() {
                r.finish();
            }
        } else if self.reporter.is_none() {
            self.reporter = Some(RestoreReporter::new(total));
        }
        self.last_progress = Instant::now();
        Ok(())
    }

    /// A restored task whose final write has begun ([`Job::finish`]):
    /// init, status; handed back.
    fn hand_back(&mut self, mut job: Job) -> Result<Entry, RuntimeError> {
        job.entry.task.init()?;
        let id = job.entry.task.id();
        let read: u64 = job.progress.iter().map(|p| p.read).sum();
        let seconds = job.started.elapsed().as_secs_f64();
        let counts = job.entry.task.metrics();
        tracing::info!(read, changelog_records = job.changelog_records, seconds = format!("{seconds:.3}"), full = job.full, task = %id, applied = counts.restored, skipped = counts.restore_skipped, "restored");
        self.status.record_restore(RestoreRecord {
            task: id,
            full: job.full,
            read,
            changelog_records: job.changelog_records,
            seconds,
            abandoned: false,
        });
        // Still restoring until the stream thread has taken it (it sets
        // the task running then).
        self.status.set_task(
            id,
            TaskStatus {
                state: TaskState::Restoring,
                restore: job.progress,
                metrics: job.entry.task.metrics(),
            },
        );
        Ok(job.entry)
    }

    /// Stops restoring `ids`: writes what was restored, closes them.
    fn abandon(&mut self, ids: &[TaskId]) -> Result<(), RuntimeError> {
        let mut first_error = None;
        let mut kept = Vec::with_capacity(self.jobs.len());
        for mut job in std::mem::take(&mut self.jobs) {
            let id = job.entry.task.id();
            if !ids.contains(&id) {
                kept.push(job);
                continue;
            }
            match job.flush() {
                Ok(()) => {
                    let handed = job.entry.task.hand_over_late_writes();
                    self.handed_over.insert(id, handed);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            job.entry.task.close();
            self.status.remove_task(id);
            let read: u64 = job.progress.iter().map(|p| p.read).sum();
            if job.standby {
                tracing::info!(task = %id, read, "standby closed; its state stays in local state");
                continue;
            }
            tracing::info!(task = %id, read, "restore stopped (the task moved away, or the instance stops); what was restored stays in local state");
            self.status.record_restore(RestoreRecord {
                task: id,
                full: job.full,
                read,
                changelog_records: job.changelog_records,
                seconds: job.started.elapsed().as_secs_f64(),
                abandoned: true,
            });
        }
        self.jobs = kept;
        self.reassign()?;
        first_error.map_or(Ok(()), Err)
    }

    /// Reads changelogs for up to `budget`, or until a task's changelogs
    /// are all read; returns the tasks restored.
    fn step(&mut self, budget: Duration) -> Result<Vec<Entry>, RuntimeError> {
        let until = Instant::now() + budget;
        let mut buf = std::mem::take(&mut self.batch);
        let mut read_since_idle = false;
        while !self.jobs.iter().all(Job::done) {
            let batch = read_batch(&self.consumer, &mut buf, BATCH, Duration::from_millis(50));
            if batch.is_empty() {
                drop(batch);
                if std::mem::take(&mut read_since_idle) {
                    self.last_progress = Instant::now();
                }
                if Instant::now() >= until {
                    break;
                }
                self.trust_positions();
                let restoring = self.jobs.iter().any(|j| !j.standby);
                if restoring && self.last_progress.elapsed() > RESTORE_STALL {
                    self.batch = buf;
                    return Err(self.stalled());
                }
                break;
            }
            let mut unreadable = false;
            let mut failed = None;
            // Each record's store lookup is hinted PREFETCH_AHEAD records
            // before it is applied.
            let mut ahead = batch.iter();
            for a in ahead.by_ref().take(PREFETCH_AHEAD) {
                prefetch(&mut self.index, &self.jobs, &a);
            }
            for item in batch.iter() {
                if let Some(a) = ahead.next() {
                    prefetch(&mut self.index, &self.jobs, &a);
                }
                let m = match item {
                    Batched::Record(m) => m,
                    Batched::Error {
                        code: RDKafkaErrorCode::TopicAuthorizationFailed,
                        ..
                    } => {
                        unreadable = true;
                        break;
                    }
                    Batched::Error {
                        code,
                        topic,
                        partition,
                    } => {
                        tracing::warn!(error = %code, topic = topic.unwrap_or("-"), partition, "changelog read error; retrying");
                        continue;
                    }
                };
                let Some((j, i)) = self.index.get(m.topic(), m.partition()) else {
                    continue;
                };
                let job = &mut self.jobs[j];
                if job.blocked[i] {
                    continue;
                }
                let p = &mut job.progress[i];
                if p.done || m.offset() >= p.end {
                    p.done = true;
                    continue;
                }
                let n = m.copy_headers(&mut self.headers);
                let headers = &self.headers[..n];
                if job.standby && !job.entry.task.restore_admits(headers) {
                    // Its input is not committed yet: wait here (the
                    // batch's later records of this partition are read
                    // again when it resumes from here).
                    job.blocked[i] = true;
                    p.position = m.offset();
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(m.topic(), m.partition());
                    let _ = self.consumer.pause(&tpl);
                    continue;
                }
                job.entry.task.restore_record(
                    job.targets[i].store,
                    m.key(),
                    m.payload(),
                    headers,
                    m.timestamp(),
                );
                p.read += 1;
                p.position = m.offset() + 1;
                if p.position >= p.end {
                    p.done = true;
                }
                read_since_idle = true;
                if p.read.is_multiple_of(1024) && job.last_flush.elapsed() >= RESTORE_FLUSH_INTERVAL
                {
                    if let Err(e) = job.flush() {
                        failed = Some(e);
                        break;
                    }
                }
            }
            drop(ahead);
            drop(batch);
            let kept = if let Some(e) = failed {
                Err(e)
            } else if unreadable {
                self.unreadable_changelog()
            } else {
                self.keep_buffer_budget()
            };
            if let Err(e) = kept {
                self.batch = buf;
                return Err(e);
            }
            if read_since_idle {
                self.last_progress = Instant::now();
                read_since_idle = false;
            }
            // A task whose changelogs are all read goes to processing now,
            // not when the budget runs out.
            if Instant::now() >= until || self.jobs.iter().any(Job::done) {
                break;
            }
        }
        self.batch = buf;
        self.report();
        // Hand back every task whose partitions are all read.
        let mut ready = Vec::new();
        if self.jobs.iter().any(Job::done) {
            let (mut done, rest): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.jobs)
                .into_iter()
                .partition(Job::done);
            self.jobs = rest;
            let finished: Vec<(String, i32)> = done
                .iter()
                .flat_map(|j| j.progress.iter().map(|p| (p.topic.clone(), p.partition)))
                .collect();
            finish_stores(&mut done)?;
            for job in done {
                ready.push(self.hand_back(job)?);
            }
            self.release(&finished)?;
        }
        Ok(ready)
    }

    /// Gives up on a restore that read nothing for [`RESTORE_STALL`]:
    /// unassigns the changelogs and names the partitions still unread.
    fn stalled(&mut self) -> RuntimeError {
        let _ = super::assignment::unassign(&self.consumer);
        let mut topics: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| !j.standby)
            .flat_map(|j| j.progress.iter().filter(|p| !p.done))
            .map(|p| format!("{}[{}]", p.topic, p.partition))
            .collect();
        topics.dedup();
        RuntimeError::RestoreStalled {
            seconds: RESTORE_STALL.as_secs(),
            topics: topics.join(", "),
        }
    }

    /// Hands the restored entries of the task holding the most to the
    /// writer when all tasks' together pass [`RESTORE_BUFFER_BYTES`],
    /// once the entries handed over before are written: one write in
    /// flight at a time, so the restore holds at most the budget and one
    /// task's entries being written. Where the writer is slower than the
    /// reading (a changelog of distinct keys), the restore waits for it
    /// here instead of queueing writes without bound.
    fn keep_buffer_budget(&mut self) -> Result<(), RuntimeError> {
        let mut total = 0;
        let mut largest: Option<(usize, usize)> = None;
        for (j, job) in self.jobs.iter().enumerate() {
            let bytes = job.entry.task.stores().restored_bytes();
            total += bytes;
            if largest.is_none_or(|(_, b)| bytes > b) {
                largest = Some((j, bytes));
            }
        }
        match largest {
            Some((j, _)) if total >= RESTORE_BUFFER_BYTES => {
                for job in &mut self.jobs {
                    job.entry.task.stores_mut().wait_written()?;
                }
                self.jobs[j].flush()
            }
            _ => Ok(()),
        }
    }

    /// Rebuilds the changelog partition → (job, partition) index over every
    /// unfinished partition.
    fn reindex(&mut self) {
        self.index.clear();
        for (j, job) in self.jobs.iter().enumerate() {
            for (i, p) in job.progress.iter().enumerate() {
                if !p.done {
                    self.index.insert(&p.topic, p.partition, (j, i));
                }
            }
        }
    }

    /// Takes `finished` partitions out of the assignment and leaves the
    /// others as they are: a full reassignment would drop every other
    /// partition's prefetched records and fetch them again, a pause of
    /// about a fetch round trip for each task that finishes.
    fn release(&mut self, finished: &[(String, i32)]) -> Result<(), RuntimeError> {
        self.reindex();
        if !self.jobs.iter().any(|j| !j.standby) {
            if let Some(r) = self.reporter.take() {
                r.finish();
            }
        }
        let assigned = match self.consumer.assignment() {
            Ok(a) => a,
            Err(_) => return self.reassign(),
        };
        let mut gone = TopicPartitionList::new();
        for el in assigned.elements() {
            if finished
                .iter()
                .any(|(t, p)| *p == el.partition() && t == el.topic())
            {
                gone.add_partition(el.topic(), el.partition());
            }
        }
        if gone.count() == 0 {
            return Ok(());
        }
        if gone.count() == assigned.count() {
            let _ = super::assignment::unassign(&self.consumer);
            return Ok(());
        }
        if let Err(e) = super::assignment::remove(&self.consumer, &gone) {
            tracing::debug!(error = %e, "incremental unassign refused; reassigning");
            return self.reassign();
        }
        Ok(())
    }

    /// Keeps standby copies of exactly `ids`: closes the others, opens the
    /// new ones over local state, from their checkpoints.
    fn set_standbys(
        &mut self,
        ids: &std::collections::BTreeSet<TaskId>,
    ) -> Result<(), RuntimeError> {
        let current: Vec<TaskId> = self
            .jobs
            .iter()
            .filter(|j| j.standby)
            .map(|j| j.entry.task.id())
            .collect();
        let gone: Vec<TaskId> = current
            .iter()
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        if !gone.is_empty() {
            self.abandon(&gone)?;
        }
        let busy: Vec<TaskId> = self.jobs.iter().map(|j| j.entry.task.id()).collect();
        for id in ids.iter().filter(|id| !busy.contains(id)) {
            let mut task = super::tasks::open_task(
                &self.opener.topology,
                &self.opener.task_cfg,
                &self.opener.state,
                *id,
            )?;
            let full = task.stores().checkpoint()?.is_none();
            let committed = self.committed_for(&task);
            let targets = task.begin_restore(&committed)?;
            self.carry_on_late_writes(&mut task, full);
            let mut progress = Vec::with_capacity(targets.len());
            for t in &targets {
                let (low, high) = self.watermarks(&t.topic, t.partition)?;
                let start = t.start.max(low);
                progress.push(RestoreProgress {
                    topic: t.topic.clone(),
                    partition: t.partition,
                    start,
                    end: i64::MAX,
                    position: start,
                    read: 0,
                    done: false,
                });
                let _ = high;
            }
            tracing::info!(task = %id, full, "standby: following the task's changelog");
            self.jobs.push(Job {
                blocked: vec![false; targets.len()],
                standby: true,
                entry: super::tasks::Entry {
                    task,
                    partitions: Vec::new(),
                },
                full,
                started: Instant::now(),
                targets,
                progress,
                changelog_records: 0,
                last_flush: Instant::now(),
            });
        }
        self.reassign()?;
        self.refresh_standbys()
    }

    /// The group's committed offsets for `task`'s input partitions.
    fn committed_for(&self, task: &crate::task::Task) -> BTreeMap<TopicPartition, CommittedOffset> {
        let mut tpl = TopicPartitionList::new();
        for t in task.input_topics() {
            tpl.add_partition(t, task.id().partition);
        }
        match self.consumer.committed_offsets(tpl, Duration::from_secs(5)) {
            Ok(c) => super::ownership::committed_from(&c, &self.opener.task_cfg.commit_tag),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Standbys learn the group's newer commits (and go on past records
    /// they waited at), write their progress, and publish their lag.
    fn refresh_standbys(&mut self) -> Result<(), RuntimeError> {
        self.last_standby_refresh = Instant::now();
        // Every standby changelog partition's end, in one request.
        let parts: Vec<(String, i32)> = self
            .jobs
            .iter()
            .filter(|j| j.standby)
            .flat_map(|j| j.progress.iter().map(|p| (p.topic.clone(), p.partition)))
            .collect();
        let ends = log_offsets::list(&self.consumer, &parts, Offset::End);
        for j in 0..self.jobs.len() {
            if !self.jobs[j].standby {
                continue;
            }
            let committed = self.committed_for(&self.jobs[j].entry.task);
            let job = &mut self.jobs[j];
            job.entry.task.advance_standby(&committed);
            for i in 0..job.progress.len() {
                if !job.blocked[i] {
                    continue;
                }
                job.blocked[i] = false;
                let p = &job.progress[i];
                let _ = self.consumer.seek(
                    &p.topic,
                    p.partition,
                    Offset::Offset(p.position),
                    Duration::from_secs(5),
                );
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&p.topic, p.partition);
                let _ = self.consumer.resume(&tpl);
            }
            if job.last_flush.elapsed() >= STANDBY_FLUSH_INTERVAL {
                job.flush()?;
            }
            // Lag: the changelog's end against the standby's position.
            let mut shown = job.progress.clone();
            for p in shown.iter_mut() {
                let high = match ends.get(&(p.topic.clone(), p.partition)) {
                    Some(&high) => Some(high),
                    None => self
                        .consumer
                        .fetch_watermarks(&p.topic, p.partition, Duration::from_secs(5))
                        .ok()
                        .map(|(_, high)| high),
                };
                if let Some(high) = high {
                    p.end = high.max(p.position);
                }
            }
            self.status.set_task(
                job.entry.task.id(),
                TaskStatus {
                    state: TaskState::Standby,
                    restore: shown,
                    metrics: job.entry.task.metrics(),
                },
            );
        }
        Ok(())
    }

    /// Serves the idle consumer's queue (nothing assigned: only its
    /// client-wide errors are there), so that what it reports is logged
    /// when it happens, not in a burst at the next restore.
    fn serve_idle(&mut self) {
        let batch = read_batch(&self.consumer, &mut self.batch, BATCH, Duration::ZERO);
        if !batch.is_empty() {
            tracing::debug!(
                records = batch.len(),
                "idle restore consumer read records; dropped"
            );
        }
    }

    /// Gaps at the end of a partition (compaction, transaction markers):
    /// the consumer's position past the end means the partition is read.
    fn trust_positions(&mut self) {
        let Ok(pos) = self.consumer.position() else {
            return;
        };
        for el in pos.elements() {
            let Offset::Offset(o) = el.offset() else {
                continue;
            };
            let Some((j, i)) = self.index.get(el.topic(), el.partition()) else {
                continue;
            };
            let p = &mut self.jobs[j].progress[i];
            if o >= p.end && !p.done {
                p.done = true;
                p.position = p.end;
            }
        }
    }

    /// The progress bar or log line, and the tasks' status once a second.
    fn report(&mut self) {
        if let Some(reporter) = &mut self.reporter {
            if reporter.due() {
                let (read, done, total) = self
                    .jobs
                    .iter()
                    .filter(|j| !j.standby)
                    .flat_map(|j| j.progress.iter())
                    .fold((0u64, 0u64, 0u64), |(r, d, t), p| {
                        (
                            r + p.read,
                            d + (p.position - p.start).max(0) as u64,
                            t + (p.end - p.start).max(0) as u64,
                        )
                    });
                reporter.update(done, read, total);
            }
        }
        if self.last_status.elapsed() >= Duration::from_secs(1) {
            for job in self.jobs.iter().filter(|j| !j.standby) {
                self.status.set_task(
                    job.entry.task.id(),
                    TaskStatus {
                        state: TaskState::Restoring,
                        restore: job.progress.clone(),
                        metrics: job.entry.task.metrics(),
                    },
                );
            }
            self.last_status = Instant::now();
        }
    }

    /// The changelog partition's watermarks, retried while the cluster moves
    /// leadership (a broker just died): transient errors are not fatal.
    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), RuntimeError> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            match self
                .consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
            {
                Ok(w) => return Ok(w),
                Err(e) if Instant::now() < deadline && !is_authorization(&e) => {
                    tracing::warn!(topic, partition, error = %e, "changelog partition not available yet; retrying");
                    // A fresh metadata request: the cached leader may be a dead broker.
                    let _ = self
                        .consumer
                        .fetch_metadata(Some(topic), Duration::from_secs(5));
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(RuntimeError::kafka(
                        format!("watermarks of changelog {topic}[{partition}]"),
                        e,
                    ))
                }
            }
        }
    }

    /// The changelog may not be read: keep local state where it exists,
    /// refuse to start from empty state unless the user allowed it.
    fn unreadable_changelog(&mut self) -> Result<(), RuntimeError> {
        for job in self.jobs.iter_mut() {
            let e = &mut job.entry;
            let Some(topic) = job
                .progress
                .iter()
                .find(|p| !p.done)
                .map(|p| p.topic.clone())
            else {
                continue;
            };
            let id = e.task.id();
            if !job.full {
                tracing::warn!(task = %id, topic = %topic, "cannot read the changelog (no Read permission); continuing from the local state of the last commit");
                for (tp, from, to) in e.task.fall_back_to_checkpoint()? {
                    tracing::warn!(task = %id, "input {tp}: the committed offset {from} is ahead of the local state, which covers up to offset {to}, and the changelog `{topic}` cannot be read to fill the gap; resuming at {to} (records in between are processed again)");
                }
            } else if !e.task.has_positions() {
                tracing::warn!(task = %id, topic = %topic, "first run: no local state and no offsets committed by this application; counting from the beginning of the input (the changelog cannot be read and is not needed)");
            } else if self.allow_empty_state {
                tracing::warn!(task = %id, topic = %topic, "cannot read the changelog (no Read permission) and no local state exists; starting from EMPTY state as allowed");
            } else {
                let _ = super::assignment::unassign(&self.consumer);
                return Err(RuntimeError::NotAuthorized {
                    operation: "Read".into(),
                    resource: format!("topic `{topic}`"),
                    hint: format!(
                        "task {id} has no local state and must restore it from `{topic}`; without Read on it the counts would restart from zero and publish wrong numbers. Grant Read on {topic}, restore the state directory, or pass --allow-empty-state to start from zero anyway"
                    ),
                });
            }
            for p in job.progress.iter_mut() {
                p.done = true;
            }
        }
        Ok(())
    }
}

/// Begins the final write of every task in `jobs` ([`Job::finish`]), in
/// turn; the first error ends it.
///
/// A task's final write hands its restored entries to the store writer,
/// which builds their key order as it writes (`RestoredBatch::order`), so
/// it is a hand-over and takes a thread no longer than that. A task read
/// to its end goes to processing at once, while the others read on.
///
/// Tasks once waited here for peers close to their ends (200 ms at most)
/// and did their final writes on one thread per core, when each final
/// write sorted its entries on this thread (about 50 ms for 250,000 keys).
/// With the sort on the store writer, restores ran as fast without both
/// and a restore of ten million distinct keys faster (six rounds each,
/// `docs/performance.md`, "Tasks that finish together").
fn finish_stores(jobs: &mut [Job]) -> Result<(), RuntimeError> {
    jobs.iter_mut().try_for_each(Job::finish)
}

/// Hints the store that `item` is for to bring where its key's entry
/// lies into the cache (see `RestoredEntries::prefetch`).
fn prefetch(index: &mut PartitionIndex, jobs: &[Job], item: &Batched<'_>) {
    let Batched::Record(m) = item else {
        return;
    };
    if let Some((j, i)) = index.get(m.topic(), m.partition()) {
        let job = &jobs[j];
        job.entry
            .task
            .prefetch_restore(job.targets[i].store, m.key());
    }
}

/// Changelog partition → (job, partition index): a map, and the last hit
/// (records arrive in runs of one partition, so most lookups compare one
/// name instead of hashing it).
#[derive(Default)]
struct PartitionIndex {
    map: HashMap<String, HashMap<i32, (usize, usize)>>,
    last: Option<(String, i32, (usize, usize))>,
}

impl PartitionIndex {
    fn clear(&mut self) {
        self.map.clear();
        self.last = None;
    }

    fn insert(&mut self, topic: &str, partition: i32, at: (usize, usize)) {
        self.map
            .entry(topic.to_string())
            .or_default()
            .insert(partition, at);
        self.last = None;
    }

    fn get(&mut self, topic: &str, partition: i32) -> Option<(usize, usize)> {
        if let Some((t, p, at)) = &self.last {
            if *p == partition && t == topic {
                return Some(*at);
            }
        }
        let at = *self.map.get(topic)?.get(&partition)?;
        match &mut self.last {
            Some((t, p, a)) => {
                t.clear();
                t.push_str(topic);
                *p = partition;
                *a = at;
            }
            None => self.last = Some((topic.to_string(), partition, at)),
        }
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use std::time::Instant;

    use super::{finish_stores, Command, Job, Restored, Restorer};
    use crate::graph::{Changelog, StoreSpec, TopicRef, Topology, TopologyBuilder};
    use crate::processor::{Context, Processor};
    use crate::record::Record;
    use crate::runtime::status::{RuntimeStatus, TaskState, TaskStatus};
    use crate::runtime::tasks::{open_task, Entry};
    use crate::serde::{erase, StringSerde};
    use crate::store::{GlobalStores, StateDir};
    use crate::task::{TaskConfig, TaskId};

    /// A task whose restore finished just as its partitions were revoked
    /// (the restorer had handed it back when the abandon reached it) is
    /// closed when it arrives, not resumed: its partitions are gone, and
    /// seeking them stopped the instance ("seek … after its restore:
    /// Erroneous state"). Handed over again, the task comes back as usual.
    #[test]
    fn should_close_a_task_restored_after_it_was_abandoned_and_take_it_handed_over_again() {
        let topology = crate::graph::test_topologies::in_to_out();
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = StateDir::open(dir.path(), "app").unwrap();
        let cfg = Arc::new(TaskConfig::standalone("app", GlobalStores::default()));
        let id = TaskId {
            subtopology: 0,
            partition: 1,
        };
        let entry = || Entry {
            task: open_task(&topology, &cfg, &state, id).unwrap(),
            partitions: vec![("in".into(), 1)],
        };
        let status = Arc::new(RuntimeStatus::default());
        let (commands, command_rx) = std::sync::mpsc::channel();
        let (ready, restored) = std::sync::mpsc::channel();
        // The restorer thread's part: every task it is asked to abandon
        // had already been handed back.
        let thread = std::thread::spawn(move || {
            while let Ok(c) = command_rx.recv() {
                if let Command::Abandon(ids, ack) = c {
                    let _ = ack.send(ids);
                }
            }
        });
        let mut r = Restorer {
            commands,
            restored,
            pending: BTreeMap::from([(id, vec![("in".to_string(), 1)])]),
            standbys: Default::default(),
            stale: BTreeMap::new(),
            status: status.clone(),
            thread: None,
        };
        let restoring = || TaskStatus {
            state: TaskState::Restoring,
            restore: Vec::new(),
            metrics: Default::default(),
        };
        status.set_task(id, restoring());
        ready.send(Restored::Ready(Box::new(entry()))).unwrap();
        r.abandon(vec![id]);
        assert!(r.take_restored().is_empty(), "an abandoned task was taken");
        assert!(!r.busy());
        assert!(status.tasks().is_empty(), "its status stayed");

        // Handed over again: taken when its restore is done.
        r.pending.insert(id, vec![("in".into(), 1)]);
        ready.send(Restored::Ready(Box::new(entry()))).unwrap();
        let taken = r.take_restored();
        assert!(
            matches!(taken.as_slice(), [Restored::Ready(e)] if e.task.id() == id),
            "the task handed over again was not taken"
        );
        assert!(!r.busy());
        drop(r);
        thread.join().unwrap();
    }

    /// Writes nothing: the topology only needs a store.
    struct Noop;
    impl Processor for Noop {
        fn process(&mut self, _: &mut Context<'_>, _: Record) -> Result<(), crate::ProcessError> {
            Ok(())
        }
    }

    /// `in` into a processor with a changelogged store `seen`.
    fn with_store() -> Topology {
        let s = || erase::<String>(Arc::new(StringSerde));
        let mut b = TopologyBuilder::new();
        let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
        b.add_store(StoreSpec {
            retention_ms: None,
            window: None,
            name: "seen".into(),
            changelog: Changelog::Internal,
            format: None,
        });
        b.add_processor(
            "noop",
            Arc::new(|| Box::new(Noop) as Box<dyn Processor>),
            &[src],
            vec!["seen".into()],
        );
        b.build().expect("a valid topology")
    }

    /// Tasks finished together each hand their own restored entries,
    /// every one of them, to their own store, large or small.
    #[test]
    fn should_write_every_tasks_own_entries_when_tasks_finish_together() {
        let topology = with_store();
        let cfg = Arc::new(TaskConfig::standalone("app", GlobalStores::default()));
        for keys in [20_000usize, 10] {
            let dir = tempfile::tempdir().unwrap();
            let (state, _) = StateDir::open(dir.path(), "app").unwrap();
            let mut jobs: Vec<Job> = (0..4)
                .map(|partition| {
                    let id = TaskId {
                        subtopology: 0,
                        partition,
                    };
                    let mut task = open_task(&topology, &cfg, &state, id).unwrap();
                    let targets = task.begin_restore(&BTreeMap::new()).unwrap();
                    assert_eq!(targets.len(), 1);
                    for k in 0..keys {
                        let key = format!("key-{k:06}");
                        let value = format!("p{partition}-{k}-{}", "v".repeat(40));
                        task.restore_record(
                            targets[0].store,
                            Some(key.as_bytes()),
                            Some(value.as_bytes()),
                            &[],
                            0,
                        );
                    }
                    Job {
                        entry: Entry {
                            task,
                            partitions: vec![("in".into(), partition)],
                        },
                        standby: false,
                        blocked: vec![false],
                        full: true,
                        started: Instant::now(),
                        targets,
                        progress: Vec::new(),
                        changelog_records: keys as u64,
                        last_flush: Instant::now(),
                    }
                })
                .collect();
            assert!(
                jobs.iter()
                    .all(|j| j.entry.task.stores().restored_bytes() > 0),
                "{keys} keys a task: nothing restored"
            );
            finish_stores(&mut jobs).unwrap();
            for (partition, job) in jobs.iter_mut().enumerate() {
                let store = job.targets[0].store;
                let stores = job.entry.task.stores();
                assert_eq!(stores.restored_bytes(), 0, "entries left behind");
                for k in [0, keys / 2, keys - 1] {
                    let got = stores.get(store, format!("key-{k:06}").as_bytes()).unwrap();
                    let want = format!("p{partition}-{k}-{}", "v".repeat(40));
                    assert_eq!(
                        got.as_deref(),
                        Some(want.as_bytes()),
                        "task {partition}, key {k}"
                    );
                }
                job.entry.task.init().unwrap();
                let entries = job.entry.task.stores().entries(store).unwrap();
                assert_eq!(entries.len(), keys, "task {partition}");
                let own = format!("p{partition}-");
                assert!(
                    entries.iter().all(|(_, v)| v.starts_with(own.as_bytes())),
                    "task {partition} holds another task's entries"
                );
            }
            for mut job in jobs {
                job.entry.task.close();
            }
        }
    }
}
