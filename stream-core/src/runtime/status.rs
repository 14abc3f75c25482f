//! What a running application reports about itself: task states, restore
//! progress and counters, shared with whoever holds the handle.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::task::{TaskId, TaskMetrics};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Reading its changelogs.
    Restoring,
    /// Processing input.
    Running,
    /// A warm copy of a task another instance runs, following its
    /// changelogs (`StreamsConfig::num_standby_replicas`).
    Standby,
}

/// Progress of restoring one changelog partition.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreProgress {
    /// Changelog topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset read.
    pub start: i64,
    /// High watermark taken when the restore began.
    pub end: i64,
    /// Next offset to read.
    pub position: i64,
    /// Records read so far.
    pub read: u64,
    /// Whether the partition is fully read.
    pub done: bool,
}

/// One task as the status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatus {
    /// State.
    pub state: TaskState,
    /// Restore progress per changelog partition (of the latest restore).
    pub restore: Vec<RestoreProgress>,
    /// Counters.
    pub metrics: TaskMetrics,
}

/// A completed restore, kept for inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreRecord {
    /// The task.
    pub task: TaskId,
    /// Whether it started from an empty local state.
    pub full: bool,
    /// Changelog records read.
    pub read: u64,
    /// Records the changelog partitions held at their end (end − low watermark).
    pub changelog_records: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// Whether it was cut short (the task moved away mid-restore; what it
    /// read stays in local state for the next restore to resume from).
    pub abandoned: bool,
}

/// Commit latency so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommitStats {
    /// Commits done.
    pub count: u64,
    /// Seconds spent committing, in all.
    pub total_seconds: f64,
    /// Seconds the latest commit took.
    pub last_seconds: f64,
    /// Seconds the slowest commit took.
    pub max_seconds: f64,
    /// Seconds the stream thread spent in commits, in all (a pipelined
    /// commit takes seconds to be acknowledged, but blocks processing
    /// only to seal and to write the state).
    pub blocked_seconds: f64,
    /// Times at-least-once processing waited for a commit because its
    /// buffered store changes reached `max_buffered_changes` (the state
    /// writer was slower than processing).
    pub buffer_waits: u64,
}

/// Shared status of one application instance.
#[derive(Debug, Default)]
pub struct RuntimeStatus {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: BTreeMap<TaskId, TaskStatus>,
    restores: Vec<RestoreRecord>,
    running: bool,
    assigned: bool,
    started: Option<Instant>,
    commits: CommitStats,
    rate: f64,
    rate_sample: Option<(Instant, u64)>,
    processed_closed: u64,
    production_errors: u64,
    rollbacks: u64,
    enforced: u64,
    awaiting_ack: u64,
}

impl RuntimeStatus {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Snapshot of every task.
    pub fn tasks(&self) -> BTreeMap<TaskId, TaskStatus> {
        self.with(|i| i.tasks.clone())
    }

    /// Every restore completed since start.
    pub fn restores(&self) -> Vec<RestoreRecord> {
        self.with(|i| i.restores.clone())
    }

    /// Whether the instance has started and not stopped.
    pub fn is_running(&self) -> bool {
        self.with(|i| i.running)
    }

    /// Ready: running, the group has given this instance its (possibly
    /// empty) assignment, and every assigned task is done restoring.
    pub fn is_ready(&self) -> bool {
        self.with(|i| {
            i.running && i.assigned && i.tasks.values().all(|t| t.state != TaskState::Restoring)
        })
    }

    pub(crate) fn set_assigned(&self) {
        self.with(|i| i.assigned = true)
    }

    /// Commit latency so far.
    pub fn commits(&self) -> CommitStats {
        self.with(|i| i.commits)
    }

    /// Input records per second over the last sampling interval (about a second).
    pub fn processing_rate(&self) -> f64 {
        self.with(|i| i.rate)
    }

    /// Input records processed since start, by every task this instance
    /// has owned (tasks that moved away included).
    pub fn processed_total(&self) -> u64 {
        self.with(|i| {
            i.processed_closed + i.tasks.values().map(|t| t.metrics.processed).sum::<u64>()
        })
    }

    /// Seconds since the instance started running (0 before).
    pub fn uptime_seconds(&self) -> f64 {
        self.with(|i| i.started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0))
    }

    /// Sink records the brokers refused and the production error handler
    /// kept in the production-error file.
    pub fn production_errors(&self) -> u64 {
        self.with(|i| i.production_errors)
    }

    /// Times the stream threads rolled back to their last commit and
    /// processed again: a transaction aborted, records that could not be
    /// delivered in time (at least once), or the process found paused.
    pub fn rollbacks(&self) -> u64 {
        self.with(|i| i.rollbacks)
    }

    pub(crate) fn record_rollback(&self) {
        self.with(|i| i.rollbacks += 1)
    }

    /// Times a task that reads several topics processed a record without
    /// one of them buffered, out of timestamp order if a record of it was
    /// earlier (Kafka Streams' enforced processing; see
    /// `runtime::time_order`).
    pub fn enforced_processing(&self) -> u64 {
        self.with(|i| i.enforced)
    }

    pub(crate) fn record_enforced(&self, n: u64) {
        self.with(|i| i.enforced += n)
    }

    pub(crate) fn record_production_error(&self) {
        self.with(|i| i.production_errors += 1)
    }

    /// A commit finished: `took` from its commit point to its offsets
    /// going out, `blocked` of the stream thread's time in it.
    pub(crate) fn record_commit(&self, took: Duration, blocked: Duration) {
        let secs = took.as_secs_f64();
        self.with(|i| {
            let c = &mut i.commits;
            c.count += 1;
            c.total_seconds += secs;
            c.last_seconds = secs;
            c.max_seconds = c.max_seconds.max(secs);
            c.blocked_seconds += blocked.as_secs_f64();
        })
    }

    /// The stream thread spent `took` on a commit's seal.
    pub(crate) fn record_blocked(&self, took: Duration) {
        self.with(|i| i.commits.blocked_seconds += took.as_secs_f64())
    }

    /// Processing waited for a commit in flight: too many buffered changes.
    pub(crate) fn record_buffer_wait(&self) {
        self.with(|i| i.commits.buffer_waits += 1)
    }

    /// Records produced and not yet acknowledged by the brokers.
    pub fn awaiting_ack(&self) -> u64 {
        self.with(|i| i.awaiting_ack)
    }

    pub(crate) fn set_awaiting_ack(&self, n: u64) {
        self.with(|i| i.awaiting_ack = n)
    }

    /// Samples the processed total to update [`Self::processing_rate`].
    pub(crate) fn sample_rate(&self) {
        let total = self.processed_total();
        self.with(|i| {
            let now = Instant::now();
            if let Some((t, n)) = i.rate_sample {
                let dt = now.duration_since(t).as_secs_f64();
                if dt > 0.0 {
                    i.rate = total.saturating_sub(n) as f64 / dt;
                }
            }
            i.rate_sample = Some((now, total));
        })
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.with(|i| {
            i.running = running;
            if running {
                i.started = Some(Instant::now());
            }
        })
    }

    pub(crate) fn set_task(&self, id: TaskId, status: TaskStatus) {
        self.with(|i| {
            i.tasks.insert(id, status);
        })
    }

    /// Sets a known task's state, keeping its restore progress.
    pub(crate) fn set_state(&self, id: TaskId, state: TaskState) {
        self.with(|i| {
            if let Some(t) = i.tasks.get_mut(&id) {
                t.state = state;
            }
        })
    }

    pub(crate) fn update_metrics(&self, id: TaskId, metrics: TaskMetrics) {
        self.with(|i| {
            if let Some(t) = i.tasks.get_mut(&id) {
                t.metrics = metrics;
            }
        })
    }

    pub(crate) fn remove_task(&self, id: TaskId) {
        self.with(|i| {
            if let Some(t) = i.tasks.remove(&id) {
                i.processed_closed += t.metrics.processed;
            }
        })
    }

    pub(crate) fn record_restore(&self, r: RestoreRecord) {
        self.with(|i| i.restores.push(r))
    }
}
