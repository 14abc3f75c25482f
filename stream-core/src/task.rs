//! A task: one sub-topology running for one input partition, with its own
//! processor instances and store partitions.
//!
//! The task is pure computation: it takes input records, runs them through
//! the graph, and collects what must be produced ([`OutRecord`]s for sinks,
//! changelogs and the dead-letter topic). Sending, committing and restoring
//! are driven from outside: by the Kafka runtime or by the test driver, which
//! therefore run exactly the same operators and stores.
//!
//! # Headers the framework writes
//!
//! - `sx.src` on changelog records: the input record that caused the change
//!   (offset, partition, topic). Restore applies a change only if its input
//!   was committed, so replaying the uncommitted tail never counts twice.
//! - `sx.up` on repartition records: the upstream input (offset, sequence,
//!   partition, topic). The downstream task drops a repartition record it has
//!   already applied, so an upstream replay after a crash is not counted twice.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::error::{DeserializationError, Origin, ProcessError, StoreError};
use crate::graph::{Changelog, ChangelogCodec, NodeKind, Partitioner, TopicRef, Topology};
use crate::partitioner::partition_for_key;
use crate::processor::{Context, Forward, Processor};
use crate::record::{Headers, OutKind, OutRecord, Record};
use crate::serde::DynSerde;
use crate::store::{Checkpoint, StateBackend, StoreSet};

/// Header naming the input record behind a changelog record.
pub const SOURCE_HEADER: &str = "sx.src";
/// Header naming the upstream input behind a repartition record.
pub const UPSTREAM_HEADER: &str = "sx.up";

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

/// What to do with a record that fails to deserialize or process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Log it, count it, park it in the dead-letter topic, and go on.
    #[default]
    DeadLetter,
    /// Stop with the error.
    FailFast,
}

impl std::str::FromStr for ErrorPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "dead-letter" | "continue" => Ok(ErrorPolicy::DeadLetter),
            "fail-fast" | "fail" => Ok(ErrorPolicy::FailFast),
            other => Err(format!(
                "unknown error policy `{other}` (dead-letter, fail-fast)"
            )),
        }
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
    /// One task per sub-topology reads every partition (single-instance
    /// mode); changelog records are then partitioned by key.
    pub grouped: bool,
    /// The metadata of every offset commit (see
    /// [`crate::runtime::ownership`]).
    pub commit_tag: String,
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
}

enum TaskNode {
    Absent,
    Source {
        key: Arc<dyn DynSerde>,
        value: Arc<dyn DynSerde>,
    },
    Proc {
        processor: Box<dyn Processor>,
        stores: Vec<usize>,
    },
    Sink {
        topic: String,
        key: Arc<dyn DynSerde>,
        value: Arc<dyn DynSerde>,
        partitioner: Option<Partitioner>,
        internal: bool,
    },
}

struct Slot {
    name: String,
    children: Vec<usize>,
    node: TaskNode,
}

struct StoreLog {
    topic: String,
    codec: Option<Arc<dyn ChangelogCodec>>,
}

/// The position key `topic/partition` used in checkpoints.
pub fn tp_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// A running sub-topology for one partition.
pub struct Task {
    id: TaskId,
    config: Arc<TaskConfig>,
    slots: Vec<Slot>,
    sources: HashMap<String, (usize, bool)>,
    input_topics: Vec<String>,
    stores: StoreSet,
    logs: Vec<Option<StoreLog>>,
    output: Vec<OutRecord>,
    positions: BTreeMap<String, i64>,
    dedup: BTreeMap<String, (i64, u32)>,
    changelog_offsets: BTreeMap<String, i64>,
    restore_limits: BTreeMap<String, i64>,
    committed_positions: BTreeMap<String, i64>,
    committed_dedup: BTreeMap<String, (i64, u32)>,
    metrics: TaskMetrics,
    seq: u32,
    /// Whether any sub-topology of the topology has a store.
    topology_keeps_state: bool,
}

fn header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// Encodes `(offset, partition, topic)` for [`SOURCE_HEADER`].
fn encode_src(origin: &Origin) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + origin.topic.len());
    v.extend_from_slice(&origin.offset.to_be_bytes());
    v.extend_from_slice(&origin.partition.to_be_bytes());
    v.extend_from_slice(origin.topic.as_bytes());
    v
}

fn decode_src(b: &[u8]) -> Option<(i64, i32, &str)> {
    if b.len() < 12 {
        return None;
    }
    let off = i64::from_be_bytes(b[0..8].try_into().ok()?);
    let p = i32::from_be_bytes(b[8..12].try_into().ok()?);
    Some((off, p, std::str::from_utf8(&b[12..]).ok()?))
}

/// Encodes `(offset, seq, partition, topic)` for [`UPSTREAM_HEADER`].
fn encode_up(origin: &Origin, seq: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + origin.topic.len());
    v.extend_from_slice(&origin.offset.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&origin.partition.to_be_bytes());
    v.extend_from_slice(origin.topic.as_bytes());
    v
}

fn decode_up(b: &[u8]) -> Option<(i64, u32, i32, &str)> {
    if b.len() < 16 {
        return None;
    }
    let off = i64::from_be_bytes(b[0..8].try_into().ok()?);
    let seq = u32::from_be_bytes(b[8..12].try_into().ok()?);
    let p = i32::from_be_bytes(b[12..16].try_into().ok()?);
    Some((off, seq, p, std::str::from_utf8(&b[16..]).ok()?))
}

fn dedup_key(topic: &str, up_topic: &str, up_partition: i32) -> String {
    format!("{topic}/{up_topic}/{up_partition}")
}

impl Task {
    /// Creates the task `id` of `topology` over `backend`.
    pub fn new(
        topology: &Topology,
        id: TaskId,
        config: Arc<TaskConfig>,
        backend: Box<dyn StateBackend>,
    ) -> Task {
        let app = config.application_id.clone();
        let sub = &topology.subtopologies()[id.subtopology];
        let mut slots: Vec<Slot> = Vec::with_capacity(topology.nodes().len());
        let mut sources = HashMap::new();
        for (i, n) in topology.nodes().iter().enumerate() {
            let node = if !sub.nodes.contains(&i) {
                TaskNode::Absent
            } else {
                match &n.kind {
                    NodeKind::Source { topics, key, value } => {
                        for t in topics {
                            sources
                                .insert(t.resolve(&app), (i, matches!(t, TopicRef::Internal(_))));
                        }
                        TaskNode::Source {
                            key: key.clone(),
                            value: value.clone(),
                        }
                    }
                    NodeKind::Processor { factory, stores } => TaskNode::Proc {
                        processor: factory(),
                        stores: stores
                            .iter()
                            .filter_map(|s| sub.stores.iter().position(|x| x == s))
                            .collect(),
                    },
                    NodeKind::Sink {
                        topic,
                        key,
                        value,
                        partitioner,
                    } => TaskNode::Sink {
                        topic: topic.resolve(&app),
                        key: key.clone(),
                        value: value.clone(),
                        partitioner: partitioner.clone(),
                        internal: matches!(topic, TopicRef::Internal(_)),
                    },
                }
            };
            slots.push(Slot {
                name: n.name.clone(),
                children: n.children.clone(),
                node,
            });
        }
        let specs: Vec<_> = sub
            .stores
            .iter()
            .filter_map(|s| topology.store(s))
            .collect();
        let logs = specs
            .iter()
            .map(|s| match &s.changelog {
                Changelog::Internal => s
                    .changelog_topic(&app)
                    .map(|topic| StoreLog { topic, codec: None }),
                Changelog::Existing { topic, codec } => Some(StoreLog {
                    topic: topic.clone(),
                    codec: Some(codec.clone()),
                }),
                Changelog::Disabled => None,
            })
            .collect();
        let names = specs
            .iter()
            .map(|s| (s.name.clone(), !matches!(s.changelog, Changelog::Disabled)))
            .collect();
        let mut input_topics: Vec<String> = sources.keys().cloned().collect();
        input_topics.sort();
        Task {
            id,
            config,
            slots,
            sources,
            input_topics,
            stores: StoreSet::new(names, backend),
            logs,
            output: Vec::new(),
            positions: BTreeMap::new(),
            dedup: BTreeMap::new(),
            changelog_offsets: BTreeMap::new(),
            restore_limits: BTreeMap::new(),
            committed_positions: BTreeMap::new(),
            committed_dedup: BTreeMap::new(),
            metrics: TaskMetrics::default(),
            seq: 0,
            topology_keeps_state: !topology.stores().is_empty(),
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Topics (resolved) this task reads.
    pub fn input_topics(&self) -> &[String] {
        &self.input_topics
    }

    /// Counters.
    pub fn metrics(&self) -> TaskMetrics {
        self.metrics
    }

    /// Next offset to process per `topic/partition`.
    pub fn positions(&self) -> &BTreeMap<String, i64> {
        &self.positions
    }

    /// The stores of this task.
    pub fn stores(&self) -> &StoreSet {
        &self.stores
    }

    /// Mutable access to the stores (tests and interactive queries).
    pub fn stores_mut(&mut self) -> &mut StoreSet {
        &mut self.stores
    }

    /// Takes the records produced since the last call.
    pub fn take_output(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.output)
    }

    /// Whether records wait to be sent.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Runs `init` on every processor (after restore).
    pub fn init(&mut self) -> Result<(), TaskError> {
        let partition = self.id.partition;
        let mut fwd = Vec::new();
        for slot in &mut self.slots {
            if let TaskNode::Proc { processor, stores } = &mut slot.node {
                let mut ctx = Context {
                    node: &slot.name,
                    allowed_stores: stores,
                    stores: &mut self.stores,
                    forwarded: &mut fwd,
                    origin: None,
                    partition,
                };
                processor.init(&mut ctx).map_err(|e| TaskError::Record {
                    origin: Origin {
                        topic: String::new(),
                        partition,
                        offset: -1,
                    },
                    reason: format!("init of {}: {e}", slot.name),
                })?;
            }
        }
        Ok(())
    }

    /// Calls `punctuate(now_ms)` on every processor; what they forward runs
    /// through the graph like any record.
    pub fn punctuate(&mut self, now_ms: i64) -> Result<(), TaskError> {
        let partition = self.id.partition;
        let origin = Origin {
            topic: String::new(),
            partition,
            offset: -1,
        };
        for idx in 0..self.slots.len() {
            let mut fwd = Vec::new();
            let children = self.slots[idx].children.clone();
            let slot = &mut self.slots[idx];
            if let TaskNode::Proc { processor, stores } = &mut slot.node {
                let mut ctx = Context {
                    node: &slot.name,
                    allowed_stores: stores,
                    stores: &mut self.stores,
                    forwarded: &mut fwd,
                    origin: None,
                    partition,
                };
                processor
                    .punctuate(&mut ctx, now_ms)
                    .map_err(|e| TaskError::Record {
                        origin: origin.clone(),
                        reason: format!("punctuate of {}: {e}", slot.name),
                    })?;
            }
            for f in fwd {
                let targets: Vec<usize> = match f.child {
                    Some(i) => children.get(i).copied().into_iter().collect(),
                    None => children.clone(),
                };
                for c in targets {
                    self.seq = 0;
                    self.dispatch(c, f.record.duplicate(), &origin)
                        .map_err(|e| TaskError::Record {
                            origin: origin.clone(),
                            reason: format!("punctuate: {e}"),
                        })?;
                }
            }
        }
        self.log_changes(&origin, None)
    }

    /// Runs `close` on every processor and drops uncommitted state.
    pub fn close(&mut self) {
        for slot in &mut self.slots {
            if let TaskNode::Proc { processor, .. } = &mut slot.node {
                processor.close();
            }
        }
        self.stores.discard_uncommitted();
        self.output.clear();
    }

    /// Processes one input record.
    pub fn process(&mut self, input: &InputRecord<'_>) -> Result<(), TaskError> {
        let Some(&(source, internal)) = self.sources.get(input.topic) else {
            return Err(TaskError::UnknownTopic {
                task: self.id,
                topic: input.topic.to_string(),
            });
        };
        self.metrics.processed += 1;
        let origin = Origin {
            topic: input.topic.to_string(),
            partition: input.partition,
            offset: input.offset,
        };
        let pos_key = tp_key(input.topic, input.partition);
        let mut upstream: Option<(String, (i64, u32), Vec<u8>)> = None;
        if internal {
            if let Some(raw) = header(input.headers, UPSTREAM_HEADER) {
                if let Some((off, seq, up_p, up_t)) = decode_up(raw) {
                    let key = dedup_key(input.topic, up_t, up_p);
                    if let Some(&mark) = self.dedup.get(&key) {
                        if (off, seq) <= mark {
                            self.metrics.duplicates_skipped += 1;
                            self.positions.insert(pos_key, input.offset + 1);
                            return Ok(());
                        }
                    }
                    upstream = Some((key, (off, seq), raw.to_vec()));
                }
            }
        }
        let TaskNode::Source {
            key: kser,
            value: vser,
        } = &self.slots[source].node
        else {
            return Err(TaskError::UnknownTopic {
                task: self.id,
                topic: input.topic.to_string(),
            });
        };
        let key = kser.deserialize_dyn(input.key.unwrap_or(&[]));
        let value = vser.deserialize_dyn(input.value.unwrap_or(&[]));
        let result = match (key, value) {
            (Ok(key), Ok(value)) => {
                let headers: Headers = input
                    .headers
                    .iter()
                    .filter(|(k, _)| !k.starts_with("sx."))
                    .cloned()
                    .collect();
                let record = Record {
                    key,
                    value,
                    timestamp: input.timestamp,
                    headers,
                };
                self.seq = 0;
                self.dispatch(source, record, &origin)
                    .map_err(|e| ("processing", e.to_string()))
            }
            (Err(e), _) => Err((
                "deserialization",
                DeserializationError {
                    origin: origin.clone(),
                    part: "key",
                    source: e,
                }
                .to_string(),
            )),
            (_, Err(e)) => Err((
                "deserialization",
                DeserializationError {
                    origin: origin.clone(),
                    part: "value",
                    source: e,
                }
                .to_string(),
            )),
        };
        self.log_changes(&origin, upstream.as_ref().map(|u| u.2.as_slice()))?;
        if let Err((stage, reason)) = result {
            self.fail(input, &origin, stage, reason)?;
        }
        self.positions.insert(pos_key, input.offset + 1);
        if let Some((key, mark, _)) = upstream {
            self.dedup.insert(key, mark);
        }
        Ok(())
    }

    fn fail(
        &mut self,
        input: &InputRecord<'_>,
        origin: &Origin,
        stage: &str,
        reason: String,
    ) -> Result<(), TaskError> {
        if self.config.on_error == ErrorPolicy::FailFast {
            return Err(TaskError::Record {
                origin: origin.clone(),
                reason: format!("{stage}: {reason}"),
            });
        }
        self.metrics.dead_lettered += 1;
        tracing::warn!(task = %self.id, record = %origin, stage, error = %reason, dead_letter_topic = %self.config.dead_letter_topic, "record failed; sent to the dead-letter topic");
        let mut headers: Headers = input.headers.to_vec();
        headers.push(("dlq.topic".into(), origin.topic.as_bytes().to_vec()));
        headers.push((
            "dlq.partition".into(),
            origin.partition.to_string().into_bytes(),
        ));
        headers.push(("dlq.offset".into(), origin.offset.to_string().into_bytes()));
        headers.push(("dlq.stage".into(), stage.as_bytes().to_vec()));
        headers.push(("dlq.error".into(), reason.into_bytes()));
        self.output.push(OutRecord {
            topic: self.config.dead_letter_topic.clone(),
            partition: None,
            key: input.key.map(|k| k.to_vec()),
            value: input.value.map(|v| v.to_vec()),
            headers,
            timestamp: input.timestamp,
            kind: OutKind::DeadLetter,
        });
        Ok(())
    }

    fn dispatch(
        &mut self,
        start: usize,
        record: Record,
        origin: &Origin,
    ) -> Result<(), ProcessError> {
        let partition = self.id.partition;
        let mut stack = vec![(start, record)];
        let mut fwd: Vec<Forward> = Vec::new();
        while let Some((idx, rec)) = stack.pop() {
            let slot = &mut self.slots[idx];
            match &mut slot.node {
                TaskNode::Absent => continue,
                TaskNode::Source { .. } => fwd.push(Forward {
                    child: None,
                    record: rec,
                }),
                TaskNode::Proc { processor, stores } => {
                    let mut ctx = Context {
                        node: &slot.name,
                        allowed_stores: stores,
                        stores: &mut self.stores,
                        forwarded: &mut fwd,
                        origin: Some(origin),
                        partition,
                    };
                    processor.process(&mut ctx, rec)?;
                }
                TaskNode::Sink {
                    topic,
                    key,
                    value,
                    partitioner,
                    internal,
                } => {
                    let k = key.serialize_dyn(&rec.key)?;
                    let v = value.serialize_dyn(&rec.value)?;
                    let count = self.config.partition_counts.get(topic.as_str()).copied();
                    let part = match (partitioner, count) {
                        (Some(p), Some(n)) => Some(p(&k, &v, n)),
                        (None, Some(n)) if *internal => Some(partition_for_key(&k, n)),
                        _ => None,
                    };
                    let mut headers = rec.headers;
                    if *internal {
                        headers.push((UPSTREAM_HEADER.into(), encode_up(origin, self.seq)));
                        self.seq += 1;
                    }
                    self.metrics.produced += 1;
                    self.output.push(OutRecord {
                        topic: topic.clone(),
                        partition: part,
                        key: if k.is_empty() && !*internal {
                            None
                        } else {
                            Some(k)
                        },
                        value: Some(v),
                        headers,
                        timestamp: rec.timestamp,
                        kind: OutKind::Sink,
                    });
                    continue;
                }
            }
            let children = &self.slots[idx].children;
            for f in fwd.drain(..).rev() {
                match f.child {
                    Some(i) => {
                        if let Some(&c) = children.get(i) {
                            stack.push((c, f.record));
                        }
                    }
                    None => {
                        if let Some((&first, rest)) = children.split_first() {
                            for &c in rest.iter().rev() {
                                stack.push((c, f.record.duplicate()));
                            }
                            stack.push((first, f.record));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn changelog_partition(&self, topic: &str, key: &[u8]) -> i32 {
        if self.config.grouped {
            let n = self
                .config
                .partition_counts
                .get(topic)
                .copied()
                .unwrap_or(1);
            partition_for_key(key, n)
        } else {
            self.id.partition
        }
    }

    fn log_changes(&mut self, origin: &Origin, upstream: Option<&[u8]>) -> Result<(), TaskError> {
        for (idx, changes) in self.stores.take_changes() {
            let Some(log) = &self.logs[idx] else { continue };
            for (k, v) in changes {
                let (key, value) = match (&log.codec, v) {
                    (None, v) => (k, v),
                    (Some(codec), Some(v)) => match codec.encode(&k, &v) {
                        Ok((k2, v2)) => (k2, Some(v2)),
                        Err(e) => {
                            return Err(TaskError::Record {
                                origin: origin.clone(),
                                reason: format!(
                                    "cannot encode changelog record for {}: {e}",
                                    log.topic
                                ),
                            })
                        }
                    },
                    // A shared topic with its own schema gets no tombstones:
                    // they would delete other applications' records.
                    (Some(_), None) => continue,
                };
                let mut headers: Headers = vec![(SOURCE_HEADER.into(), encode_src(origin))];
                if let Some(up) = upstream {
                    headers.push((UPSTREAM_HEADER.into(), up.to_vec()));
                }
                let partition = self.changelog_partition(&log.topic, &key);
                self.metrics.produced += 1;
                self.output.push(OutRecord {
                    topic: log.topic.clone(),
                    partition: Some(partition),
                    key: Some(key),
                    value,
                    headers,
                    timestamp: now_ms(),
                    kind: OutKind::Changelog(
                        self.stores.names().nth(idx).unwrap_or_default().to_string(),
                    ),
                });
            }
        }
        Ok(())
    }

    /// Changelog partitions of this task: `(store index, topic, partition)`.
    pub fn changelog_partitions(&self) -> Vec<(usize, String, i32)> {
        let mut out = Vec::new();
        for (idx, log) in self.logs.iter().enumerate() {
            let Some(log) = log else { continue };
            if self.config.grouped {
                let n = self
                    .config
                    .partition_counts
                    .get(&log.topic)
                    .copied()
                    .unwrap_or(1);
                out.extend((0..n).map(|p| (idx, log.topic.clone(), p)));
            } else {
                out.push((idx, log.topic.clone(), self.id.partition));
            }
        }
        out
    }

    /// Prepares a restore. `committed` holds the input offsets the consumer
    /// group holds (`topic/partition` → offset, and whether this
    /// application committed it). Returns the changelog partitions to read
    /// and their start offsets: the checkpoint's offsets when local state
    /// exists, the beginning otherwise.
    ///
    /// Where input resumes, per partition:
    /// - an offset this application committed: the larger of it and the
    ///   local checkpoint's position (everything before either was
    ///   acknowledged, and the changelog's tail fills the gap);
    /// - an offset another program committed in the same group is not
    ///   trusted: the local checkpoint's position when local state exists,
    ///   else the beginning of the partition for a task with stores (only a
    ///   recount is exact: the changelog cannot tell which of its records
    ///   were committed); in a topology without stores there is nothing to
    ///   recount and the task continues at the foreign offset (a stateless
    ///   task that feeds a stateful one through a repartition topic
    ///   recounts too: the downstream task drops what it already applied).
    ///   Each case logs one warning line naming the partition and both
    ///   offsets;
    /// - no committed offset: the checkpoint's position, or the beginning.
    pub fn begin_restore(
        &mut self,
        committed: &BTreeMap<String, CommittedOffset>,
    ) -> Result<Vec<RestoreTarget>, StoreError> {
        let checkpoint = self.stores.checkpoint()?;
        let stateless = !self.topology_keeps_state;
        let local = checkpoint.as_ref().map(|c| &c.positions);
        let mut limits: BTreeMap<String, i64> = BTreeMap::new();
        for (tp, c) in committed.iter().filter(|(tp, _)| self.reads(tp)) {
            if c.ours {
                limits.insert(tp.clone(), c.offset);
                continue;
            }
            match local.and_then(|l| l.get(tp)) {
                Some(&at) if at != c.offset => tracing::warn!(
                    task = %self.id,
                    "input {tp}: the group's committed offset {} was committed by {}; resuming at offset {at}, the position of this application's local state (records in between are processed, not skipped)",
                    c.offset,
                    c.committer()
                ),
                Some(_) => {}
                None if stateless => {
                    tracing::warn!(
                        task = %self.id,
                        "input {tp}: the group's committed offset {} was committed by {}; this task keeps no state, so it continues at offset {}",
                        c.offset,
                        c.committer(),
                        c.offset
                    );
                    limits.insert(tp.clone(), c.offset);
                }
                None => tracing::warn!(
                    task = %self.id,
                    "input {tp}: the group's committed offset {} was committed by {} and no local state proves what this application processed; counting from offset 0, the beginning of the partition",
                    c.offset,
                    c.committer()
                ),
            }
        }
        if let Some(cp) = &checkpoint {
            for (k, &v) in &cp.positions {
                let e = limits.entry(k.clone()).or_insert(v);
                *e = (*e).max(v);
            }
            self.dedup = cp.dedup.clone();
            self.changelog_offsets = cp.changelog_offsets.clone();
        } else {
            self.dedup.clear();
            self.changelog_offsets.clear();
        }
        self.positions = limits.clone();
        self.restore_limits = limits;
        Ok(self
            .changelog_partitions()
            .into_iter()
            .map(|(store, topic, partition)| {
                let start = self
                    .changelog_offsets
                    .get(&tp_key(&topic, partition))
                    .copied()
                    .unwrap_or(0);
                RestoreTarget {
                    store,
                    topic,
                    partition,
                    start,
                }
            })
            .collect())
    }

    /// The changelog cannot be read, so nothing past the local checkpoint
    /// can be restored: input positions ahead of the checkpoint's (an
    /// offset this application committed after a sled write that a crash
    /// lost) go back to it, and restore skips nothing. Returns the moved
    /// partitions as `(topic/partition, from, to)`.
    pub fn fall_back_to_checkpoint(&mut self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let local = self
            .stores
            .checkpoint()?
            .map(|c| c.positions)
            .unwrap_or_default();
        let mut moved = Vec::new();
        for (tp, pos) in self.positions.iter_mut() {
            let at = local.get(tp).copied().unwrap_or(0);
            if *pos > at {
                moved.push((tp.clone(), *pos, at));
                *pos = at;
            }
        }
        self.restore_limits = self.positions.clone();
        Ok(moved)
    }

    /// Whether `tp` (a [`tp_key`]) is one of this task's input partitions.
    fn reads(&self, tp: &str) -> bool {
        let Some((topic, partition)) = tp.rsplit_once('/') else {
            return false;
        };
        self.sources.contains_key(topic)
            && (self.config.grouped || partition.parse() == Ok(self.id.partition))
    }

    /// Whether input resumes anywhere but the beginning (a position is
    /// known for some input partition).
    pub fn has_positions(&self) -> bool {
        !self.positions.is_empty()
    }

    /// Applies one changelog record read during restore. Returns whether it
    /// changed the store (records of others and uncommitted ones are skipped).
    pub fn restore_record(
        &mut self,
        store: usize,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
    ) -> bool {
        if let Some((off, p, topic)) = header(headers, SOURCE_HEADER).and_then(decode_src) {
            let limit = self
                .restore_limits
                .get(&tp_key(topic, p))
                .copied()
                .unwrap_or(0);
            if off >= limit {
                self.metrics.restore_skipped += 1;
                return false;
            }
        }
        let key = key.unwrap_or(&[]);
        let entry = match self
            .logs
            .get(store)
            .and_then(|l| l.as_ref())
            .and_then(|l| l.codec.clone())
        {
            None => Some((key.to_vec(), value.map(|v| v.to_vec()))),
            Some(codec) => value
                .and_then(|v| codec.decode(key, v))
                .map(|(k, v)| (k, Some(v))),
        };
        let Some((k, v)) = entry else {
            self.metrics.restore_skipped += 1;
            return false;
        };
        self.stores.apply_restored(store, k, v);
        if let Some((off, seq, up_p, up_t)) = header(headers, UPSTREAM_HEADER).and_then(decode_up) {
            if let Some((_, _, rt)) = header(headers, SOURCE_HEADER).and_then(decode_src) {
                let key = dedup_key(rt, up_t, up_p);
                let e = self.dedup.entry(key).or_insert((off, seq));
                if (off, seq) > *e {
                    *e = (off, seq);
                }
            }
        }
        self.metrics.restored += 1;
        true
    }

    /// Records how far restore has read a changelog partition.
    pub fn restore_progress(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.changelog_offsets
            .insert(tp_key(topic, partition), next_offset);
    }

    /// Writes restored state and the restore position durably, so that an
    /// interrupted restore resumes here.
    pub fn flush_restore(&mut self) -> Result<(), StoreError> {
        let cp = self.checkpoint_now();
        self.stores.commit_restored(&cp)?;
        self.mark_committed();
        Ok(())
    }

    fn mark_committed(&mut self) {
        self.committed_positions = self.positions.clone();
        self.committed_dedup = self.dedup.clone();
    }

    /// Forgets everything since the last commit: buffered store changes,
    /// pending output, input positions and dedup marks go back to what the
    /// last commit recorded (an aborted transaction is then reprocessed).
    pub fn rollback(&mut self) {
        self.stores.discard_uncommitted();
        self.output.clear();
        self.positions = self.committed_positions.clone();
        self.dedup = self.committed_dedup.clone();
    }

    fn checkpoint_now(&self) -> Checkpoint {
        Checkpoint {
            changelog_offsets: self.changelog_offsets.clone(),
            positions: self.positions.clone(),
            dedup: self.dedup.clone(),
            entries: Vec::new(),
        }
    }

    /// Commits state after every produced record was acknowledged.
    /// `next_changelog_offsets` maps `topic/partition` to the offset after
    /// the last acknowledged changelog record.
    pub fn commit_state(
        &mut self,
        next_changelog_offsets: &HashMap<String, i64>,
    ) -> Result<(), StoreError> {
        for (_, topic, p) in self.changelog_partitions() {
            let k = tp_key(&topic, p);
            if let Some(&o) = next_changelog_offsets.get(&k) {
                let e = self.changelog_offsets.entry(k).or_insert(o);
                *e = (*e).max(o);
            }
        }
        let cp = self.checkpoint_now();
        self.stores.commit(&cp)?;
        self.mark_committed();
        Ok(())
    }

    /// Empties local state (before a full restore).
    pub fn wipe(&mut self) -> Result<(), StoreError> {
        self.stores.wipe()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_round_trip_framework_headers() {
        let o = Origin {
            topic: "in".into(),
            partition: 3,
            offset: 42,
        };
        assert_eq!(decode_src(&encode_src(&o)), Some((42, 3, "in")));
        assert_eq!(decode_up(&encode_up(&o, 7)), Some((42, 7, 3, "in")));
        assert_eq!(decode_src(b"short"), None);
    }
}
