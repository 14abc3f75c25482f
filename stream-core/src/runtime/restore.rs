//! Restoring newly assigned tasks from their changelogs: the
//! [`ChangelogReader`] owns the restore consumer and is handed the tasks.
//!
//! Runs inside the rebalance callback, before the partitions are handed to
//! the consumer, so processing never starts on a half-restored store and the
//! assignment carries the exact start offsets. All tasks assigned in one
//! rebalance restore together, in one pass of the restore consumer over
//! their changelog partitions: each partition from the task's sled
//! checkpoint (or from the beginning when there is no local state) up to the
//! high watermark taken when the restore began (the last stable offset, as
//! the restore consumer reads committed data only). Progress is written to
//! sled every [`RESTORE_FLUSH_KEYS`] buffered keys or every five seconds per
//! task, so an interrupted restore resumes close to where it was.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;

use super::error::RuntimeError;
use super::progress::RestoreReporter;
use super::status::{RestoreProgress, RestoreRecord, RuntimeStatus, TaskState, TaskStatus};
use super::tasks::Entry;
use super::topics::ErrorCapture;
use crate::task::RestoreTarget;

/// Distinct keys buffered in memory before restored state and progress are
/// written to sled (a changelog updates the same keys many times; the buffer
/// keeps only the latest value, so sled writes scale with keys, not records).
pub(crate) const RESTORE_FLUSH_KEYS: usize = 200_000;
/// Longest time between two writes of restore progress to sled.
const RESTORE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
const RESTORE_STALL: Duration = Duration::from_secs(120);
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

struct Job {
    full: bool,
    started: Instant,
    targets: Vec<RestoreTarget>,
    progress: Vec<RestoreProgress>,
    changelog_records: u64,
    last_flush: Instant,
}

/// Reads changelogs into tasks' stores, with its own consumer (never in a
/// group, never committing).
pub(crate) struct ChangelogReader {
    consumer: BaseConsumer<ErrorCapture>,
    status: Arc<RuntimeStatus>,
    /// Whether a task without local state may start empty when its
    /// changelog cannot be read (after this application committed offsets).
    allow_empty_state: bool,
}

impl ChangelogReader {
    /// A reader over `consumer` that reports to `status`.
    pub(crate) fn new(
        consumer: BaseConsumer<ErrorCapture>,
        status: Arc<RuntimeStatus>,
        allow_empty_state: bool,
    ) -> Self {
        ChangelogReader {
            consumer,
            status,
            allow_empty_state,
        }
    }

    /// Restores `entries` (new tasks) before they process anything.
    pub(crate) fn restore_tasks(
        &mut self,
        entries: &mut [Entry],
        committed: &BTreeMap<crate::coordinates::TopicPartition, crate::task::CommittedOffset>,
    ) -> Result<(), RuntimeError> {
        let mut jobs = Vec::with_capacity(entries.len());
        let mut tpl = TopicPartitionList::new();
        // topic → [(partition, job, target)]
        let mut index: HashMap<String, Vec<(i32, usize, usize)>> = HashMap::new();
        for (j, e) in entries.iter_mut().enumerate() {
            let full = e.task.stores().checkpoint()?.is_none();
            let targets = e.task.begin_restore(committed)?;
            let mut progress = Vec::with_capacity(targets.len());
            let mut changelog_records = 0;
            for (i, t) in targets.iter().enumerate() {
                let (low, high) = self.watermarks(&t.topic, t.partition)?;
                let high = t.end.map_or(high, |end| end.min(high));
                changelog_records += (high - low).max(0) as u64;
                let start = t.start.max(low);
                let done = start >= high;
                if done {
                    e.task
                        .restore_progress(&t.topic, t.partition, start.max(t.start));
                } else {
                    let _ = tpl.add_partition_offset(&t.topic, t.partition, Offset::Offset(start));
                    index
                        .entry(t.topic.clone())
                        .or_default()
                        .push((t.partition, j, i));
                }
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
            let id = e.task.id();
            self.status.set_task(
                id,
                TaskStatus {
                    state: TaskState::Restoring,
                    restore: progress.clone(),
                    metrics: e.task.metrics(),
                },
            );
            let total: i64 = progress.iter().map(|p| (p.end - p.start).max(0)).sum();
            if total > 0 {
                tracing::info!(task = %id, records = total, full, "restoring");
            }
            jobs.push(Job {
                full,
                started: Instant::now(),
                targets,
                progress,
                changelog_records,
                last_flush: Instant::now(),
            });
        }
        if tpl.count() > 0 {
            self.read_changelogs(entries, &mut jobs, &tpl, &index)?;
        }
        for (e, job) in entries.iter_mut().zip(jobs) {
            for p in &job.progress {
                e.task.restore_progress(&p.topic, p.partition, p.position);
            }
            e.task.flush_restore()?;
            e.task.init()?;
            let id = e.task.id();
            let read: u64 = job.progress.iter().map(|p| p.read).sum();
            let seconds = job.started.elapsed().as_secs_f64();
            tracing::info!(read, changelog_records = job.changelog_records, seconds = format!("{seconds:.2}"), full = job.full, task = %id, "restored");
            self.status.record_restore(RestoreRecord {
                task: id,
                full: job.full,
                read,
                changelog_records: job.changelog_records,
                seconds,
            });
            self.status.set_task(
                id,
                TaskStatus {
                    state: TaskState::Running,
                    restore: job.progress,
                    metrics: e.task.metrics(),
                },
            );
        }
        Ok(())
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

    fn read_changelogs(
        &mut self,
        entries: &mut [Entry],
        jobs: &mut [Job],
        tpl: &TopicPartitionList,
        index: &HashMap<String, Vec<(i32, usize, usize)>>,
    ) -> Result<(), RuntimeError> {
        self.consumer
            .assign(tpl)
            .map_err(|e| RuntimeError::kafka("assign changelog partitions", e))?;
        let total: u64 = jobs
            .iter()
            .flat_map(|j| j.progress.iter())
            .map(|p| (p.end - p.start).max(0) as u64)
            .sum();
        let mut reporter = RestoreReporter::new(total);
        let mut last_progress = Instant::now();
        let mut last_log = Instant::now();
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        let pending = |jobs: &[Job]| jobs.iter().any(|j| j.progress.iter().any(|p| !p.done));
        while pending(jobs) {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let Some(&(_, j, i)) = index
                        .get(m.topic())
                        .and_then(|v| v.iter().find(|(p, _, _)| *p == m.partition()))
                    else {
                        continue;
                    };
                    let job = &mut jobs[j];
                    let p = &mut job.progress[i];
                    if p.done || m.offset() >= p.end {
                        p.done = true;
                        continue;
                    }
                    headers.clear();
                    if let Some(hs) = m.headers() {
                        headers.extend(hs.iter().map(|h| {
                            (
                                h.key.to_string(),
                                h.value.map(|v| v.to_vec()).unwrap_or_default(),
                            )
                        }));
                    }
                    let task = &mut entries[j].task;
                    task.restore_record(
                        job.targets[i].store,
                        m.key(),
                        m.payload(),
                        &headers,
                        m.timestamp().to_millis().unwrap_or(-1),
                    );
                    p.read += 1;
                    p.position = m.offset() + 1;
                    if p.position >= p.end {
                        p.done = true;
                    }
                    last_progress = Instant::now();
                    if p.read % 1024 == 0
                        && (task.stores().buffered() >= RESTORE_FLUSH_KEYS
                            || job.last_flush.elapsed() >= RESTORE_FLUSH_INTERVAL)
                    {
                        for p in &job.progress {
                            task.restore_progress(&p.topic, p.partition, p.position);
                        }
                        task.flush_restore()?;
                        job.last_flush = Instant::now();
                    }
                }
                Some(Err(e))
                    if e.rdkafka_error_code()
                        == Some(RDKafkaErrorCode::TopicAuthorizationFailed) =>
                {
                    self.unreadable_changelog(entries, jobs)?;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "changelog read error; retrying"),
                None => {
                    // Gaps (compaction, transaction markers): trust the position.
                    if let Ok(pos) = self.consumer.position() {
                        for el in pos.elements() {
                            let Offset::Offset(o) = el.offset() else {
                                continue;
                            };
                            let Some(&(_, j, i)) = index
                                .get(el.topic())
                                .and_then(|v| v.iter().find(|(p, _, _)| *p == el.partition()))
                            else {
                                continue;
                            };
                            let p = &mut jobs[j].progress[i];
                            if o >= p.end && !p.done {
                                p.done = true;
                                p.position = p.end;
                            }
                        }
                    }
                    if last_progress.elapsed() > RESTORE_STALL {
                        let _ = self.consumer.unassign();
                        let mut topics: Vec<String> = jobs
                            .iter()
                            .flat_map(|j| j.progress.iter().filter(|p| !p.done))
                            .map(|p| format!("{}[{}]", p.topic, p.partition))
                            .collect();
                        topics.dedup();
                        return Err(RuntimeError::RestoreStalled {
                            seconds: RESTORE_STALL.as_secs(),
                            topics: topics.join(", "),
                        });
                    }
                }
            }
            if reporter.due() {
                let (read, done) = jobs
                    .iter()
                    .flat_map(|j| j.progress.iter())
                    .fold((0u64, 0u64), |(r, d), p| {
                        (r + p.read, d + (p.position - p.start).max(0) as u64)
                    });
                reporter.update(done, read, total);
            }
            if last_log.elapsed() >= Duration::from_secs(1) {
                for (e, job) in entries.iter().zip(jobs.iter()) {
                    self.status.set_task(
                        e.task.id(),
                        TaskStatus {
                            state: TaskState::Restoring,
                            restore: job.progress.clone(),
                            metrics: e.task.metrics(),
                        },
                    );
                }
                last_log = Instant::now();
            }
        }
        reporter.finish();
        let _ = self.consumer.unassign();
        Ok(())
    }

    /// The changelog may not be read: keep local state where it exists,
    /// refuse to start from empty state unless the user allowed it.
    fn unreadable_changelog(
        &mut self,
        entries: &mut [Entry],
        jobs: &mut [Job],
    ) -> Result<(), RuntimeError> {
        for (e, job) in entries.iter_mut().zip(jobs.iter_mut()) {
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
                let _ = self.consumer.unassign();
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
