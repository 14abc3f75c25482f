//! The record collector: everything a task produces becomes an
//! [`OutRecord`] here — sink records (serialized and partitioned),
//! changelog records of store changes, and dead letters.

use std::sync::Arc;

use super::headers::{SourceMark, UpstreamMark, SOURCE_HEADER, UPSTREAM_HEADER};
use super::policy::FailureStage;
use super::{InputRecord, TaskConfig, TaskError};
use crate::coordinates::TopicPartition;
use crate::error::{Origin, ProcessError};
use crate::graph::{ChangelogCodec, Partitioner};
use crate::partitioner::partition_for_key;
use crate::record::{Headers, OutKind, OutRecord, Record};
use crate::serde::DynSerde;
use crate::store::Change;

/// A sink of the task's graph.
pub(crate) struct SinkNode {
    pub(crate) topic: Arc<str>,
    pub(crate) key: Arc<dyn DynSerde>,
    pub(crate) value: Arc<dyn DynSerde>,
    pub(crate) partitioner: Option<Partitioner>,
    /// A repartition topic of this application.
    pub(crate) internal: bool,
}

/// Where one store's changes go.
pub(crate) struct StoreLog {
    pub(crate) store: Arc<str>,
    pub(crate) topic: Arc<str>,
    /// For an existing topic with its own record format.
    pub(crate) codec: Option<Arc<dyn ChangelogCodec>>,
    /// The topic is the table's own source: nothing is written to it.
    pub(crate) source: bool,
}

/// The upstream identity of the records a sink writes now, for `sx.up`.
struct Upstream {
    topic: String,
    partition: i32,
    offset: i64,
    seq: u32,
}

/// Collects a task's output records.
pub(crate) struct RecordCollector {
    config: Arc<TaskConfig>,
    /// The task's partition.
    partition: i32,
    /// Per store index: its changelog, if logged.
    logs: Vec<Option<StoreLog>>,
    output: Vec<OutRecord>,
    upstream: Upstream,
    pub(crate) produced: u64,
    pub(crate) dead_lettered: u64,
}

impl RecordCollector {
    pub(crate) fn new(
        config: Arc<TaskConfig>,
        partition: i32,
        logs: Vec<Option<StoreLog>>,
    ) -> Self {
        RecordCollector {
            config,
            partition,
            logs,
            output: Vec::new(),
            upstream: Upstream {
                topic: String::new(),
                partition,
                offset: -1,
                seq: 0,
            },
            produced: 0,
            dead_lettered: 0,
        }
    }

    /// Sink records written from now on stem from input record `origin`.
    pub(crate) fn begin_input(&mut self, origin: &Origin) {
        self.upstream.topic.clone_from(&origin.topic);
        self.upstream.partition = origin.partition;
        self.upstream.offset = origin.offset;
        self.upstream.seq = 0;
    }

    /// Sink records written from now on stem from a punctuation at
    /// `now_ms`. Their upstream mark is `("", partition, now_ms, seq)` with
    /// the sequence continuing while the time stands still, so that every
    /// punctuation's output is newer downstream than the last one's (a
    /// clock that steps back keeps the last time).
    pub(crate) fn begin_punctuation(&mut self, now_ms: i64) {
        let u = &mut self.upstream;
        let offset = now_ms.max(if u.topic.is_empty() { u.offset } else { -1 });
        if !u.topic.is_empty() || offset != u.offset {
            u.seq = 0;
        }
        u.topic.clear();
        u.partition = self.partition;
        u.offset = offset;
    }

    /// Serializes `rec` for `sink` and queues it.
    pub(crate) fn sink(&mut self, sink: &SinkNode, rec: Record) -> Result<(), ProcessError> {
        let k = sink.key.serialize_dyn(&rec.key)?;
        let v = sink.value.serialize_nullable_dyn(&rec.value)?;
        let count = self.config.partition_counts.get(&*sink.topic).copied();
        let part = match (&sink.partitioner, count) {
            (Some(p), Some(n)) => Some(p(&k, v.as_deref().unwrap_or(&[]), n)),
            (None, Some(n)) if sink.internal => Some(partition_for_key(&k, n)),
            _ => None,
        };
        let mut headers = rec.headers;
        if sink.internal {
            let u = &mut self.upstream;
            let mark = UpstreamMark {
                offset: u.offset,
                seq: u.seq,
                partition: u.partition,
                topic: &u.topic,
            };
            headers.push((UPSTREAM_HEADER.into(), mark.encode()));
            u.seq += 1;
        }
        self.produced += 1;
        self.output.push(OutRecord {
            topic: sink.topic.clone(),
            partition: part,
            key: if k.is_empty() && !sink.internal {
                None
            } else {
                Some(k)
            },
            value: v,
            headers,
            timestamp: rec.timestamp,
            kind: OutKind::Sink,
        });
        Ok(())
    }

    /// The changelog partition of `key` in `topic`.
    fn changelog_partition(&self, topic: &str, key: &[u8]) -> i32 {
        if self.config.layout.is_single() {
            let n = self
                .config
                .partition_counts
                .get(topic)
                .copied()
                .unwrap_or(1);
            partition_for_key(key, n)
        } else {
            self.partition
        }
    }

    /// Queues a changelog record for each store change, marked with the
    /// input `origin` (and the upstream mark of a repartition record) and
    /// timestamped with the task's `stream_time` (the wall clock before the
    /// first record), as Kafka Streams timestamps changelog records with
    /// event time: a window changelog's `retention.ms` then expires windows
    /// by their time, and restore recovers stream time from it.
    pub(crate) fn changelog(
        &mut self,
        changes: &mut [(usize, Vec<Change>)],
        origin: &Origin,
        upstream: Option<&[u8]>,
        stream_time: i64,
        lineage: Option<&super::lineage::ChangeLineage>,
    ) -> Result<(), TaskError> {
        let timestamp = if stream_time >= 0 {
            stream_time
        } else {
            now_ms()
        };
        for (idx, changes) in changes.iter_mut() {
            let idx = *idx;
            for (k, v) in changes.drain(..) {
                let Some(log) = self.logs.get(idx).and_then(Option::as_ref) else {
                    break;
                };
                if log.source {
                    break;
                }
                let traced = lineage.and_then(|l| l.get(&(idx, k.clone()))).cloned();
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
                let mut headers: Headers = Vec::with_capacity(
                    1 + usize::from(upstream.is_some()) + usize::from(traced.is_some()),
                );
                headers.push((SOURCE_HEADER.into(), SourceMark::of(origin).encode()));
                if let Some(up) = upstream {
                    headers.push((UPSTREAM_HEADER.into(), up.to_vec()));
                }
                if let Some(list) = traced {
                    headers.push((super::lineage::LINEAGE_HEADER.into(), list));
                }
                let (topic, store) = (log.topic.clone(), log.store.clone());
                let partition = self.changelog_partition(&topic, &key);
                self.produced += 1;
                self.output.push(OutRecord {
                    topic,
                    partition: Some(partition),
                    key: Some(key),
                    value,
                    headers,
                    timestamp,
                    kind: OutKind::Changelog(store),
                });
            }
        }
        Ok(())
    }

    /// Queues `input` for the dead-letter topic, with headers saying where
    /// it came from and why it failed.
    pub(crate) fn dead_letter(
        &mut self,
        task: super::TaskId,
        input: &InputRecord<'_>,
        origin: &Origin,
        stage: FailureStage,
        reason: String,
        extra: Headers,
    ) {
        self.dead_lettered += 1;
        tracing::warn!(task = %task, record = %origin, stage = %stage, error = %reason, dead_letter_topic = %self.config.dead_letter_topic, "record failed; sent to the dead-letter topic");
        let mut headers: Headers = input.headers.to_vec();
        headers.push(("dlq.topic".into(), origin.topic.as_bytes().to_vec()));
        headers.push((
            "dlq.partition".into(),
            origin.partition.to_string().into_bytes(),
        ));
        headers.push(("dlq.offset".into(), origin.offset.to_string().into_bytes()));
        headers.push(("dlq.stage".into(), stage.as_str().as_bytes().to_vec()));
        headers.push(("dlq.error".into(), reason.into_bytes()));
        headers.extend(extra);
        self.output.push(OutRecord {
            topic: self.config.dead_letter_topic.as_str().into(),
            partition: None,
            key: input.key.map(|k| k.to_vec()),
            value: input.value.map(|v| v.to_vec()),
            headers,
            timestamp: input.timestamp,
            kind: OutKind::DeadLetter,
        });
    }

    /// Changelog partitions: `(store index, topic, partition)`.
    pub(crate) fn changelog_partitions(&self) -> Vec<(usize, String, i32)> {
        let mut out = Vec::new();
        for (idx, log) in self.logs.iter().enumerate() {
            let Some(log) = log else { continue };
            if self.config.layout.is_single() {
                let n = self
                    .config
                    .partition_counts
                    .get(&*log.topic)
                    .copied()
                    .unwrap_or(1);
                out.extend((0..n).map(|p| (idx, log.topic.to_string(), p)));
            } else {
                out.push((idx, log.topic.to_string(), self.partition));
            }
        }
        out
    }

    /// The changelog partitions.
    pub(crate) fn changelog_keys(&self) -> impl Iterator<Item = TopicPartition> + '_ {
        self.changelog_partitions()
            .into_iter()
            .map(|(_, t, p)| TopicPartition {
                topic: t,
                partition: p,
            })
    }

    /// Changelog partitions that are a table's own source topic.
    pub(crate) fn source_partitions(&self) -> Vec<(usize, String, i32)> {
        let mut all = self.changelog_partitions();
        all.retain(|(idx, _, _)| self.is_source(*idx));
        all
    }

    /// Whether store `idx` is changelogged to its own source topic.
    pub(crate) fn is_source(&self, idx: usize) -> bool {
        self.logs
            .get(idx)
            .and_then(Option::as_ref)
            .is_some_and(|l| l.source)
    }

    /// The codec of store `idx`'s changelog, if it has its own format.
    pub(crate) fn codec(&self, idx: usize) -> Option<&Arc<dyn ChangelogCodec>> {
        self.logs.get(idx)?.as_ref()?.codec.as_ref()
    }

    /// Takes the records queued since the last call.
    pub(crate) fn take(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.output)
    }

    /// Drains the records queued since the last call (the buffer keeps its capacity).
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, OutRecord> {
        self.output.drain(..)
    }

    /// Whether records are queued.
    pub(crate) fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Drops queued records (rollback, close).
    pub(crate) fn clear(&mut self) {
        self.output.clear();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
