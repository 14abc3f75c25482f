//! A task: one sub-topology running for one input partition, with its own
//! processor instances and store partitions.
//!
//! The task is pure computation: it takes input records, runs them through
//! the graph, and collects what must be produced ([`OutRecord`]s for sinks,
//! changelogs and the dead-letter topic). Sending, committing and restoring
//! are driven from outside: by the Kafka runtime or by the test driver, which
//! therefore run exactly the same operators and stores.
//!
//! | module | what |
//! |---|---|
//! | `graph` | the compiled sub-topology: dispatch, the processors' context |
//! | `collector` | every output record: sinks, changelogs, dead letters |
//! | `progress` | positions, dedup marks, changelog offsets, stream time, rollback, the restore filter |
//! | `restoring` | where input resumes and which changelog records restore applies |
//! | `late_writes` | the restore's guard against replayed and late-written changes |
//! | [`headers`] | the framework's headers `sx.src` and `sx.up` |
//! | [`policy`] | what a failing record does |
//! | `types` | the task's id, configuration, input, counters and errors |

use crate::coordinates::TopicPartition;
use crate::processor::PunctuationType;
use crate::time::TimestampExtractor;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::{DeserializationError, Origin, ProcessError, StoreError};
use crate::graph::{Changelog, Topology};
use crate::record::{Headers, OutRecord, Record};
use crate::store::{StateBackend, StoreSet};

mod collector;
mod graph;
pub mod headers;
mod late_writes;
pub use late_writes::HandedOver;
pub mod lineage;
pub mod policy;
mod progress;
mod restoring;
mod types;

use collector::{RecordCollector, StoreLog};
use graph::TaskGraph;
use headers::UpstreamMark;
pub use headers::{SOURCE_HEADER, UPSTREAM_HEADER};
pub use policy::{ErrorPolicy, FailureStage, LatePolicy};
use progress::Progress;
pub use types::{
    CommittedOffset, InputRecord, RestoreTarget, TaskConfig, TaskError, TaskId, TaskLayout,
    TaskMetrics,
};

/// The name suffix of emit-final buffers: their size is a task metric.
pub const SUPPRESS_BUFFER_SUFFIX: &str = "-suppress-buffer";

/// The origin of punctuation output: no input record (changes it causes
/// are always restored).
fn punctuation_origin(partition: i32) -> Origin {
    Origin {
        topic: String::new(),
        partition,
        offset: -1,
    }
}

/// A running sub-topology for one partition.
pub struct Task {
    id: TaskId,
    config: Arc<TaskConfig>,
    graph: TaskGraph,
    stores: StoreSet,
    out: RecordCollector,
    progress: Progress,
    processed: u64,
    duplicates_skipped: u64,
    restored: u64,
    restore_skipped: u64,
    /// The restore's guard against replayed and late-written changes.
    late_writes: late_writes::LateWriteGuard,
    late: u64,
    /// Wall clock (as given to `punctuate`) when input was last seen.
    last_input_wall: Option<i64>,
    /// Whether a record arrived since the last `punctuate`.
    input_since_punctuate: bool,
    /// Stream time when the input went idle (idle advance counts from it).
    idle_base: Option<i64>,
    /// Whether any sub-topology of the topology has a store.
    topology_keeps_state: bool,
    /// Per store index, the index of its lineage store (lineage on).
    lineage: Vec<Option<usize>>,
    /// The origin of the record being processed, kept between records so
    /// that its topic name is not allocated for each.
    origin: Origin,
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
        let specs: Vec<_> = sub
            .stores
            .iter()
            .filter_map(|s| topology.store(s))
            .collect();
        let logs = specs
            .iter()
            .map(|s| match &s.changelog {
                Changelog::Internal => s.changelog_topic(&app).map(|topic| StoreLog {
                    store: s.name.as_str().into(),
                    topic: topic.into(),
                    codec: None,
                    source: false,
                }),
                Changelog::Existing { topic, codec } => Some(StoreLog {
                    store: s.name.as_str().into(),
                    topic: topic.as_str().into(),
                    codec: Some(codec.clone()),
                    source: false,
                }),
                Changelog::SourceTopic { topic, codec } => Some(StoreLog {
                    store: s.name.as_str().into(),
                    topic: topic.as_str().into(),
                    codec: codec.clone(),
                    source: true,
                }),
                Changelog::Disabled => None,
            })
            .collect();
        let mut names: Vec<(String, bool)> = specs
            .iter()
            .map(|s| (s.name.clone(), !matches!(s.changelog, Changelog::Disabled)))
            .collect();
        let mut lineage = vec![None; names.len()];
        if config.lineage_depth > 0 {
            for (i, s) in specs.iter().enumerate() {
                if matches!(
                    s.changelog,
                    Changelog::Internal | Changelog::Existing { .. }
                ) {
                    lineage[i] = Some(names.len());
                    names.push((lineage::companion_name(&s.name), false));
                }
            }
        }
        Task {
            lineage,
            origin: punctuation_origin(id.partition),
            id,
            graph: TaskGraph::build(topology, sub, &app, config.globals.clone()),
            stores: StoreSet::new(names, backend),
            out: RecordCollector::new(config.clone(), id.partition, logs),
            config,
            progress: Progress::default(),
            processed: 0,
            duplicates_skipped: 0,
            restored: 0,
            restore_skipped: 0,
            late_writes: late_writes::LateWriteGuard::default(),
            late: 0,
            last_input_wall: None,
            input_since_punctuate: false,
            idle_base: None,
            topology_keeps_state: !topology.stores().is_empty(),
        }
    }

    /// The names of the stores a task of sub-topology `sub` keeps in its
    /// backend, by index: the sub-topology's stores, then (lineage on) a
    /// lineage store for each logged one.
    pub fn store_names(topology: &Topology, sub: usize, config: &TaskConfig) -> Vec<String> {
        let st = &topology.subtopologies()[sub];
        let mut names: Vec<String> = st
            .stores
            .iter()
            .filter(|s| topology.store(s).is_some())
            .cloned()
            .collect();
        if config.lineage_depth > 0 {
            let logged: Vec<String> = names
                .iter()
                .filter(|s| {
                    topology.store(s).is_some_and(|spec| {
                        matches!(
                            spec.changelog,
                            Changelog::Internal | Changelog::Existing { .. }
                        )
                    })
                })
                .map(|s| lineage::companion_name(s))
                .collect();
            names.extend(logged);
        }
        names
    }

    /// Records the input behind each change in the lineage stores; returns
    /// each changed key's list for its changelog record.
    fn record_lineage(
        &mut self,
        changes: &[(usize, Vec<crate::store::Change>)],
        origin: &Origin,
        upstream: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<Option<lineage::ChangeLineage>, TaskError> {
        use crate::store::KeyValueStore;
        if self.config.lineage_depth == 0 || changes.is_empty() {
            return Ok(None);
        }
        let entry = match upstream.and_then(UpstreamMark::decode) {
            Some(up) => lineage::LineageEntry {
                topic: up.topic.to_string(),
                partition: up.partition,
                offset: up.offset,
                timestamp,
            },
            None => lineage::LineageEntry {
                topic: origin.topic.clone(),
                partition: origin.partition,
                offset: origin.offset,
                timestamp,
            },
        };
        let mut out = HashMap::new();
        for (idx, list) in changes {
            let Some(companion) = self.lineage.get(*idx).copied().flatten() else {
                continue;
            };
            for (k, v) in list {
                let mut view = self.stores.view(companion);
                if v.is_none() {
                    view.delete(k)?;
                    continue;
                }
                let old = view.get(k)?;
                let new = lineage::append(old.as_deref(), &entry, self.config.lineage_depth);
                view.put(k, new.clone())?;
                out.insert((*idx, k.clone()), new);
            }
        }
        Ok(Some(out))
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Topics (resolved) this task reads.
    pub fn input_topics(&self) -> &[String] {
        self.graph.input_topics()
    }

    /// Counters.
    pub fn metrics(&self) -> TaskMetrics {
        TaskMetrics {
            processed: self.processed,
            dead_lettered: self.out.dead_lettered,
            duplicates_skipped: self.duplicates_skipped,
            produced: self.out.produced,
            restored: self.restored,
            restore_skipped: self.restore_skipped,
            late: self.late,
            stream_time: self.progress.stream_time(),
            suppress_buffered: self
                .stores
                .names()
                .enumerate()
                .filter(|(_, n)| n.ends_with(SUPPRESS_BUFFER_SUFFIX))
                .map(|(i, _)| self.stores.committed_len(i))
                .sum(),
        }
    }

    /// Next offset to process per input partition.
    pub fn positions(&self) -> &BTreeMap<TopicPartition, i64> {
        self.progress.positions()
    }

    /// Next offset to process of `topic`/`partition`, if known.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.progress.position(topic, partition)
    }

    /// Next offset to process of `topic`/`partition` as of the last commit
    /// written to the durable copy.
    pub fn committed_position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.progress.committed_position(topic, partition)
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
        self.out.take()
    }

    /// Takes the records produced since the last call, keeping the
    /// buffer's memory for the next record.
    pub fn drain_output(&mut self) -> std::vec::Drain<'_, OutRecord> {
        self.out.drain()
    }

    /// Whether records wait to be sent.
    pub fn has_output(&self) -> bool {
        self.out.has_output()
    }

    /// Runs `init` on every processor (after restore).
    pub fn init(&mut self) -> Result<(), TaskError> {
        let late = self.late_writes.take_skipped();
        self.late_writes.clear();
        if late > 0 {
            tracing::info!(task = %self.id, skipped = late, "restore skipped changes older than a change already applied to the same key (replays after a crash or rollback, or an instance's writes that arrived after its task had moved on)");
        }
        let partition = self.id.partition;
        self.graph
            .init(&mut self.stores, partition, self.progress.stream_time())
            .map_err(|e| TaskError::Record {
                origin: punctuation_origin(partition),
                reason: format!("init of {}: {}", e.node, e.error),
            })
    }

    /// The wall clock reached `now_ms`: an idle task's stream time moves on
    /// (when [`TaskConfig::idle_advance_ms`] is set and no record arrived
    /// for that long, stream time follows the wall clock from the last
    /// record on), then due stream-time and wall-clock punctuations fire;
    /// what they forward runs through the graph like any record.
    pub fn punctuate(&mut self, now_ms: i64) -> Result<(), TaskError> {
        let origin = punctuation_origin(self.id.partition);
        if std::mem::take(&mut self.input_since_punctuate) || self.last_input_wall.is_none() {
            // Input arrived since the last look at the clock (or the task
            // just started: it counts as input, so a task restarted on a
            // quiet partition goes idle too).
            self.last_input_wall = Some(now_ms);
            self.idle_base = None;
        }
        if let (Some(idle), Some(last)) = (self.config.idle_advance_ms, self.last_input_wall) {
            let quiet = now_ms - last;
            if quiet >= idle && self.progress.stream_time() >= 0 {
                let target = self.idle_base.unwrap_or(self.progress.stream_time()) + quiet;
                self.idle_base.get_or_insert(self.progress.stream_time());
                if self.progress.observe(target) {
                    tracing::debug!(task = %self.id, stream_time = target, "input idle: stream time follows the wall clock");
                }
            }
        }
        self.fire(
            PunctuationType::StreamTime,
            self.progress.stream_time(),
            &origin,
        )?;
        self.fire(PunctuationType::WallClock, now_ms, &origin)
    }

    /// Fires the due punctuations on `kind` at `time`; their store changes
    /// are logged as stemming from `origin`.
    fn fire(&mut self, kind: PunctuationType, time: i64, origin: &Origin) -> Result<(), TaskError> {
        if time < 0 || !self.graph.has_schedule(kind) {
            return Ok(());
        }
        if origin.offset < 0 {
            self.out.begin_punctuation(time);
        }
        let stream_time = self.progress.stream_time();
        let fired = self
            .graph
            .punctuate(
                kind,
                time,
                stream_time,
                &mut self.stores,
                self.id.partition,
                origin,
                &mut self.out,
            )
            .map_err(|e| match e.error {
                ProcessError::TypeMismatch { .. } => TaskError::Construction(e.error.to_string()),
                other => TaskError::Record {
                    origin: origin.clone(),
                    reason: format!("punctuate of {}: {other}", e.node),
                },
            })?;
        if fired > 0 {
            let mut changes = self.stores.take_changes();
            self.out
                .changelog(&mut changes, origin, None, stream_time, None)?;
            self.stores.recycle_changes(changes);
        }
        Ok(())
    }

    /// Runs `close` on every processor and drops uncommitted state.
    pub fn close(&mut self) {
        self.graph.close();
        self.stores.discard_uncommitted();
        self.out.clear();
    }

    /// Processes one input record.
    pub fn process(&mut self, input: &InputRecord<'_>) -> Result<(), TaskError> {
        let mut origin = std::mem::replace(&mut self.origin, punctuation_origin(0));
        origin.topic.clear();
        origin.topic.push_str(input.topic);
        origin.partition = input.partition;
        origin.offset = input.offset;
        let r = self.process_from(input, &origin);
        self.origin = origin;
        r
    }

    /// [`process`](Self::process) of `input`, which came from `origin`.
    fn process_from(&mut self, input: &InputRecord<'_>, origin: &Origin) -> Result<(), TaskError> {
        let Some(source) = self.graph.source(input.topic) else {
            return Err(TaskError::UnknownTopic {
                task: self.id,
                topic: input.topic.to_string(),
            });
        };
        let (node, internal) = (source.node, source.internal);
        self.processed += 1;
        let mut arrival = None;
        let mut upstream_raw = None;
        if internal {
            if let Some(raw) = headers::find(input.headers, UPSTREAM_HEADER) {
                if let Some(up) = UpstreamMark::decode(raw) {
                    match self.progress.arrive(input.topic, &up) {
                        Err(()) => {
                            self.duplicates_skipped += 1;
                            self.progress
                                .advance(input.topic, input.partition, input.offset + 1);
                            return Ok(());
                        }
                        Ok(a) => {
                            arrival = Some(a);
                            upstream_raw = Some(raw);
                        }
                    }
                }
            }
        }
        let key = source.key.deserialize_dyn(input.key.unwrap_or(&[]));
        let value = source.value.deserialize_dyn(input.value.unwrap_or(&[]));
        let extractor = source.timestamps.clone();
        let mut late = Vec::new();
        let result = match (key, value) {
            (Ok(key), Ok(value)) => {
                let now = match extractor {
                    TimestampExtractor::WallClock => crate::time::now_ms(),
                    _ => 0,
                };
                match extractor.extract(&key, &value, input.timestamp, now) {
                    Err(why) => Err((FailureStage::Timestamp, why)),
                    Ok(ts) => {
                        self.progress.observe(ts);
                        self.input_since_punctuate = true;
                        let headers: Headers = input
                            .headers
                            .iter()
                            .filter(|(k, _)| !k.starts_with("sx."))
                            .cloned()
                            .collect();
                        let record = Record {
                            key,
                            value,
                            timestamp: ts,
                            headers,
                        };
                        self.out.begin_input(origin);
                        match self.graph.dispatch(
                            node,
                            record,
                            origin,
                            &mut self.stores,
                            (self.id.partition, self.progress.stream_time()),
                            &mut self.out,
                        ) {
                            Ok(()) => Ok(()),
                            // Every record would fail the same way: stop, never dead-letter.
                            Err(e @ ProcessError::TypeMismatch { .. }) => {
                                return Err(TaskError::Construction(e.to_string()))
                            }
                            Err(e @ ProcessError::Late { .. }) => {
                                late = late_headers(&e);
                                Err((FailureStage::Late, e.to_string()))
                            }
                            Err(e) => Err((FailureStage::Processing, e.to_string())),
                        }
                    }
                }
            }
            (Err(e), _) => Err((FailureStage::Deserialization, deser(origin, "key", e))),
            (_, Err(e)) => Err((FailureStage::Deserialization, deser(origin, "value", e))),
        };
        let mut changes = self.stores.take_changes();
        let lineage = self.record_lineage(&changes, origin, upstream_raw, input.timestamp)?;
        self.out.changelog(
            &mut changes,
            origin,
            upstream_raw,
            self.progress.stream_time(),
            lineage.as_ref(),
        )?;
        self.stores.recycle_changes(changes);
        match result {
            Ok(()) => {}
            Err((FailureStage::Late, reason)) => {
                self.late += 1;
                match self.config.on_late {
                    LatePolicy::DeadLetter => self.out.dead_letter(
                        self.id,
                        input,
                        origin,
                        FailureStage::Late,
                        reason,
                        late,
                    ),
                    LatePolicy::LogOnly => {
                        tracing::warn!(task = %self.id, record = %origin, "{reason}; dropped (late-record policy: log-only)")
                    }
                }
            }
            Err((stage, reason)) => {
                if self.config.on_error == ErrorPolicy::FailFast {
                    return Err(TaskError::Record {
                        origin: origin.clone(),
                        reason: format!("{stage}: {reason}"),
                    });
                }
                self.out
                    .dead_letter(self.id, input, origin, stage, reason, Vec::new());
            }
        }
        self.fire(
            PunctuationType::StreamTime,
            self.progress.stream_time(),
            origin,
        )?;
        self.progress
            .advance(input.topic, input.partition, input.offset + 1);
        if let Some(a) = arrival {
            self.progress.applied(a);
        }
        Ok(())
    }

    /// Changelog partitions of this task: `(store index, topic, partition)`.
    pub fn changelog_partitions(&self) -> Vec<(usize, String, i32)> {
        self.out.changelog_partitions()
    }

    /// Forgets everything since the last commit: buffered store changes,
    /// pending output, input positions and dedup marks go back to what the
    /// last commit recorded (an aborted transaction is then reprocessed).
    pub fn rollback(&mut self) {
        self.stores.discard_uncommitted();
        self.out.clear();
        self.progress.rollback();
        self.graph.rolled_back();
    }

    /// Commits state after every produced record was acknowledged:
    /// [`seal`](Self::seal) and [`commit_sealed`](Self::commit_sealed) in
    /// one step. `next_changelog_offsets` maps changelog partitions to the
    /// offset after the last acknowledged changelog record.
    pub fn commit_state(
        &mut self,
        next_changelog_offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<(), StoreError> {
        self.seal();
        self.commit_sealed(next_changelog_offsets)?;
        self.wait_written()
    }

    /// The commit point: the store changes made so far and the input
    /// positions, dedup marks and stream time reached are set aside to be
    /// written by [`commit_sealed`](Self::commit_sealed) once every record
    /// produced before now is acknowledged; processing goes on meanwhile,
    /// into fresh buffers. Sealing again before that replaces the sealed
    /// commit with a larger one.
    pub fn seal(&mut self) {
        self.stores.seal();
        self.progress.seal();
    }

    /// Whether a sealed commit waits to be written.
    pub fn is_sealed(&self) -> bool {
        self.progress.is_sealed()
    }

    /// Starts writing the sealed commit to the durable copy as one atomic
    /// commit: the sealed store changes and the checkpoint (input positions
    /// and dedup marks as of the seal, and `next_changelog_offsets`, which
    /// must cover exactly the changelog records produced up to the seal:
    /// the offset after the last acknowledged one per changelog partition).
    /// The write runs on the state writer thread while processing goes on;
    /// [`poll_written`](Self::poll_written) says when it is over. From
    /// here on the commit counts as the task's last (a rollback returns to
    /// it). Does nothing without a sealed commit.
    pub fn commit_sealed(
        &mut self,
        next_changelog_offsets: &HashMap<TopicPartition, i64>,
    ) -> Result<(), StoreError> {
        self.progress
            .acknowledged(self.out.changelog_keys(), next_changelog_offsets);
        // A table's source topic is its changelog: the state covers it up
        // to where input resumes.
        let sources = self
            .out
            .source_partitions()
            .into_iter()
            .map(|(_, topic, partition)| TopicPartition::new(&topic, partition));
        let Some(cp) = self.progress.take_sealed(sources) else {
            return Ok(());
        };
        self.stores.commit_sealed(&cp)?;
        self.progress.committed(cp);
        Ok(())
    }

    /// Whether the last commit's write is over (its error if it failed).
    pub fn poll_written(&mut self) -> Result<bool, StoreError> {
        self.stores.poll_written()
    }

    /// Waits until the last commit is written.
    pub fn wait_written(&mut self) -> Result<(), StoreError> {
        self.stores.wait_written()
    }

    /// Empties local state (before a full restore).
    pub fn wipe(&mut self) -> Result<(), StoreError> {
        self.stores.wipe()
    }
}

fn deser(origin: &Origin, part: &'static str, source: crate::error::SerdeError) -> String {
    DeserializationError {
        origin: origin.clone(),
        part,
        source,
    }
    .to_string()
}

/// The dead-letter headers of a late record: its window and the stream
/// time that made it late.
fn late_headers(e: &ProcessError) -> Headers {
    match e {
        ProcessError::Late {
            window_start,
            window_end,
            stream_time,
            ..
        } => vec![
            (
                "dlq.window.start".into(),
                window_start.to_string().into_bytes(),
            ),
            ("dlq.window.end".into(), window_end.to_string().into_bytes()),
            (
                "dlq.stream.time".into(),
                stream_time.to_string().into_bytes(),
            ),
        ],
        _ => Vec::new(),
    }
}
