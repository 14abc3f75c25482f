//! What a running application reports about itself: task states, restore
//! progress and counters, shared with whoever holds the handle.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::task::{TaskId, TaskMetrics};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Reading its changelogs.
    Restoring,
    /// Processing input.
    Running,
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
    started: Option<Instant>,
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

    /// Ready: running, with every assigned task done restoring.
    pub fn is_ready(&self) -> bool {
        self.with(|i| i.running && i.tasks.values().all(|t| t.state == TaskState::Running))
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

    pub(crate) fn update_metrics(&self, id: TaskId, metrics: TaskMetrics) {
        self.with(|i| {
            if let Some(t) = i.tasks.get_mut(&id) {
                t.metrics = metrics;
            }
        })
    }

    pub(crate) fn remove_task(&self, id: TaskId) {
        self.with(|i| {
            i.tasks.remove(&id);
        })
    }

    pub(crate) fn record_restore(&self, r: RestoreRecord) {
        self.with(|i| i.restores.push(r))
    }
}
