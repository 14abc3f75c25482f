//! The task's id, configuration, input record, counters, errors, and the
//! committed offsets and changelog partitions its restore works with.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use super::policy::ErrorPolicy;
use crate::error::{Origin, StoreError};

/// Identifies a task: sub-topology and partition, shown as `1_0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// Sub-topology.
    pub subtopology: usize,
    /// Input partition.
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.subtopology, self.partition)
    }
}

/// Settings shared by all tasks of an application.
#[derive(Clone)]
pub struct TaskConfig {
    /// `application.id`.
    pub application_id: String,
    /// Partition counts of every topic the tasks write to or read from.
    pub partition_counts: Arc<HashMap<String, i32>>,
    /// Where failed records go.
    pub dead_letter_topic: String,
    /// What failures do.
    pub on_error: ErrorPolicy,
    /// What late records do.
    pub on_late: super::LatePolicy,
    /// Wall-clock ms without input after which a task's stream time
    /// follows the wall clock (`None`: stream time moves only with records).
    pub idle_advance_ms: Option<i64>,
    /// How input partitions map to tasks.
    pub layout: TaskLayout,
    /// The metadata of every offset commit (see
    /// [`crate::runtime::ownership`]).
    pub commit_tag: String,
    /// The instance's global tables.
    pub globals: crate::store::GlobalStores,
    /// Input records kept per key of every logged store ([`super::lineage`];
    /// 0: lineage off).
    pub lineage_depth: usize,
}

impl TaskConfig {
    /// The settings of tasks run on their own (the test driver): one task
    /// per input partition, failed and late records dead-lettered to the
    /// application's dead-letter topic, stream time moved by records only,
    /// lineage off, no partition counts known.
    pub fn standalone(application_id: &str, globals: crate::store::GlobalStores) -> TaskConfig {
        TaskConfig {
            application_id: application_id.to_string(),
            partition_counts: Arc::new(HashMap::new()),
            dead_letter_topic: crate::graph::dead_letter_topic_name(application_id),
            on_error: ErrorPolicy::DeadLetter,
            on_late: super::LatePolicy::DeadLetter,
            idle_advance_ms: None,
            layout: TaskLayout::PerPartition,
            commit_tag: String::new(),
            lineage_depth: 0,
            globals,
        }
    }
}

/// How a sub-topology's input partitions map to tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TaskLayout {
    /// One task per input partition, as Kafka Streams runs them: task `p`
    /// reads partition `p` of every source topic and writes partition `p`
    /// of its changelogs.
    #[default]
    PerPartition,
    /// Single-instance mode: one task per sub-topology reads every
    /// partition; its changelog records are partitioned by key.
    SingleInstance,
}

impl TaskLayout {
    /// The task partition that reads input partition `partition`.
    ///
    /// ```
    /// use stream_core::task::TaskLayout;
    /// assert_eq!(TaskLayout::PerPartition.task_of(3), 3);
    /// assert_eq!(TaskLayout::SingleInstance.task_of(3), 0);
    /// ```
    pub fn task_of(self, partition: i32) -> i32 {
        match self {
            TaskLayout::PerPartition => partition,
            TaskLayout::SingleInstance => 0,
        }
    }

    /// Whether one task reads every partition.
    pub fn is_single(self) -> bool {
        self == TaskLayout::SingleInstance
    }
}

/// A task failed in a way its error policy does not absorb.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TaskError {
    /// A record failed and the policy is fail-fast.
    #[error("record {origin} failed: {reason}")]
    Record {
        /// The record.
        origin: Origin,
        /// Why.
        reason: String,
    },
    /// The topology itself is wrong (e.g. an operator declared with other
    /// types than it receives): no record can pass, whatever the policy.
    #[error("the topology is built wrong: {0} (a bug in its construction, not in the data)")]
    Construction(String),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task got a record from a topic it does not read.
    #[error("task {task} does not read topic {topic}")]
    UnknownTopic {
        /// The task.
        task: TaskId,
        /// The topic.
        topic: String,
    },
}

/// An input record as it arrives from Kafka (or the test driver).
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp: i64,
    /// Key bytes.
    pub key: Option<&'a [u8]>,
    /// Value bytes.
    pub value: Option<&'a [u8]>,
    /// Headers.
    pub headers: &'a [(String, Vec<u8>)],
}

/// Counters of one task.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TaskMetrics {
    /// Input records processed (including failed ones).
    pub processed: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Repartition records dropped as already applied.
    pub duplicates_skipped: u64,
    /// Records produced (sinks and changelogs).
    pub produced: u64,
    /// Changelog records applied by restore.
    pub restored: u64,
    /// Changelog records read but skipped by restore (not ours, or not committed).
    pub restore_skipped: u64,
    /// Records a window aggregation dropped as late.
    pub late: u64,
    /// The task's stream time (`-1` before the first record).
    pub stream_time: i64,
    /// Window results waiting for emit-final: entries of the task's
    /// suppression buffers (stores named `*-suppress-buffer`), as of the
    /// last commit.
    pub suppress_buffered: u64,
}

/// An offset committed to the consumer group for one input partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset to read, as committed.
    pub offset: i64,
    /// Whether this application (same id, same topology) committed it.
    pub ours: bool,
    /// The commit's metadata as stored (shown when it is not ours).
    pub metadata: String,
}

impl CommittedOffset {
    /// Classifies an offset committed with `metadata` against `tag`.
    pub fn classify(offset: i64, metadata: &str, tag: &str) -> Self {
        CommittedOffset {
            offset,
            ours: metadata == tag,
            metadata: metadata.to_string(),
        }
    }

    /// Who committed it, for a log line.
    pub fn committer(&self) -> String {
        if self.metadata.is_empty() {
            "another program (no commit metadata)".to_string()
        } else if self.metadata.starts_with("stream-rs/") {
            format!("another stream-rs program or topology ({})", self.metadata)
        } else {
            format!("another program (metadata {:?})", self.metadata)
        }
    }
}

/// One changelog partition a task restores from, and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTarget {
    /// Store index in the task.
    pub store: usize,
    /// Changelog topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// Offset to stop before, when not the partition's end: a table's
    /// source topic is read only up to where input resumes (the rest is
    /// processed as input).
    pub end: Option<i64>,
}
