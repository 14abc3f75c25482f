//! An in-process test driver: runs a topology with no broker.
//!
//! It keeps every topic as in-memory partitions, runs the very same
//! [`Task`]s as the Kafka runtime (same operators, same store layers, same
//! restore code), commits like the runtime does, and can simulate a crash:
//! tasks are discarded with their uncommitted state, and new tasks restore
//! from the changelog records the driver captured.
//!
//! ```
//! use std::sync::Arc;
//! use stream_core::driver::TestDriver;
//! use stream_core::graph::{TopicRef, TopologyBuilder};
//! use stream_core::serde::{erase, StringSerde};
//!
//! let s = || erase::<String>(Arc::new(StringSerde));
//! let mut b = TopologyBuilder::new();
//! let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
//! b.add_sink("out", TopicRef::External("out".into()), s(), s(), None, &[src]);
//! let mut driver = TestDriver::new(b.build().unwrap(), "app");
//! driver.pipe("in", Some(b"k"), Some(b"v"));
//! assert_eq!(driver.output_utf8("out"), vec![("k".to_string(), "v".to_string())]);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::coordinates::TopicPartition;
use crate::error::StoreError;
use crate::graph::Topology;
use crate::partitioner::partition_for_key;
use crate::record::{Headers, OutRecord};
mod crash_points;
mod lifecycle;
mod output;

pub use crash_points::{
    CrashGuarantee, CrashInput, CrashPoint, CrashReport, CrashTest, Divergence, LatestOracle,
};
#[cfg(test)]
mod tests;

use crate::task::{
    CommittedOffset, ErrorPolicy, InputRecord, LatePolicy, Task, TaskConfig, TaskError, TaskId,
    TaskLayout,
};

/// A record stored in one of the driver's topics.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Headers,
    /// Timestamp (ms).
    pub timestamp: i64,
}

/// Runs a topology in process. See the [module docs](self).
pub struct TestDriver {
    topology: Arc<Topology>,
    config: Arc<TaskConfig>,
    partitions: HashMap<String, i32>,
    topics: HashMap<String, Vec<Vec<StoredRecord>>>,
    tasks: BTreeMap<TaskId, Task>,
    consumed: HashMap<TopicPartition, i64>,
    committed: BTreeMap<TopicPartition, CommittedOffset>,
    clock: i64,
    round_robin: i64,
    auto_commit: bool,
    exactly_once: bool,
    /// Records produced since the last commit (topic, partition, index),
    /// aborted by a crash under exactly-once.
    uncommitted: Vec<(String, i32, usize)>,
}

impl TestDriver {
    /// A driver for `topology` as application `application_id`; every
    /// external topic has one partition until [`with_partitions`](Self::with_partitions).
    pub fn new(topology: Topology, application_id: &str) -> Self {
        let globals = crate::store::GlobalStores::new(
            topology
                .global_tables()
                .iter()
                .map(|g| (g.store.clone(), crate::store::GlobalTree::memory()))
                .collect(),
        );
        let mut d = TestDriver {
            topology: Arc::new(topology),
            config: Arc::new(TaskConfig::standalone(application_id, globals)),
            partitions: HashMap::new(),
            topics: HashMap::new(),
            tasks: BTreeMap::new(),
            consumed: HashMap::new(),
            committed: BTreeMap::new(),
            clock: 0,
            round_robin: 0,
            auto_commit: true,
            exactly_once: false,
            uncommitted: Vec::new(),
        };
        d.rebuild();
        d
    }

    /// Gives an external topic `n` partitions (re-creates the tasks).
    pub fn with_partitions(mut self, topic: &str, n: i32) -> Self {
        self.partitions.insert(topic.to_string(), n.max(1));
        self.rebuild();
        self
    }

    /// Chooses what failed records do (default: dead-letter topic).
    pub fn with_error_policy(mut self, policy: ErrorPolicy) -> Self {
        Arc::make_mut(&mut self.config).on_error = policy;
        self.rebuild();
        self
    }

    /// One task per sub-topology reads every partition, as the runtime's
    /// single-instance mode does.
    pub fn with_single_task(mut self) -> Self {
        Arc::make_mut(&mut self.config).layout = TaskLayout::SingleInstance;
        self.rebuild();
        self
    }

    /// Whether every `pipe` ends with a commit (default `true`).
    pub fn with_auto_commit(mut self, on: bool) -> Self {
        self.auto_commit = on;
        self
    }

    /// Whether a crash aborts what the tasks produced since the last commit,
    /// as exactly-once's transactions do for a `read_committed` reader
    /// (default `false`: at-least-once, produced records stay).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use stream_core::driver::TestDriver;
    /// # use stream_core::graph::{TopicRef, TopologyBuilder};
    /// # use stream_core::serde::{erase, StringSerde};
    /// # let s = || erase::<String>(Arc::new(StringSerde));
    /// # let mut b = TopologyBuilder::new();
    /// # let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
    /// # b.add_sink("out", TopicRef::External("out".into()), s(), s(), None, &[src]);
    /// let mut d = TestDriver::new(b.build().unwrap(), "app")
    ///     .with_auto_commit(false)
    ///     .with_exactly_once(true);
    /// d.pipe_str("in", "k", "v");
    /// d.crash_and_restart(); // the transaction aborts; the record is processed again
    /// assert_eq!(d.records("out").len(), 1);
    /// ```
    pub fn with_exactly_once(mut self, on: bool) -> Self {
        self.exactly_once = on;
        self
    }

    fn app(&self) -> &str {
        &self.config.application_id
    }

    fn count_of(&self, topic: &str) -> i32 {
        self.partitions.get(topic).copied().unwrap_or(1)
    }

    /// Appends a record to `topic` (partition by murmur2 of the key, or
    /// round robin for a null key), runs everything it causes, and commits.
    pub fn pipe(&mut self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.pipe_with_headers(topic, key, value, Vec::new());
    }

    /// Like [`pipe`](Self::pipe), with headers.
    pub fn pipe_with_headers(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Headers,
    ) {
        self.clock += 1;
        let ts = self.clock;
        self.pipe_full(topic, key, value, headers, ts);
    }

    /// Like [`pipe`](Self::pipe), with the record timestamp `timestamp`
    /// (ms): how event-time tests feed records in or out of order. The
    /// driver's wall clock is not moved.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use stream_core::driver::TestDriver;
    /// # use stream_core::graph::{TopicRef, TopologyBuilder};
    /// # use stream_core::serde::{erase, StringSerde};
    /// # let s = || erase::<String>(Arc::new(StringSerde));
    /// # let mut b = TopologyBuilder::new();
    /// # let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
    /// # b.add_sink("out", TopicRef::External("out".into()), s(), s(), None, &[src]);
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_at("in", Some(b"k"), Some(b"v"), 60_000);
    /// assert_eq!(d.records("out")[0].timestamp, 60_000);
    /// assert_eq!(d.stream_time(), 60_000);
    /// ```
    pub fn pipe_at(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
    ) {
        self.pipe_full(topic, key, value, Vec::new(), timestamp);
    }

    /// [`pipe_at`](Self::pipe_at) with UTF-8 key and value.
    pub fn pipe_str_at(&mut self, topic: &str, key: &str, value: &str, timestamp: i64) {
        self.pipe_at(
            topic,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            timestamp,
        );
    }

    /// The largest stream time of any task (`-1` before the first record).
    pub fn stream_time(&self) -> i64 {
        self.tasks
            .values()
            .map(|t| t.metrics().stream_time)
            .max()
            .unwrap_or(-1)
    }

    /// Records dropped as late, over all tasks.
    pub fn late_records(&self) -> u64 {
        self.tasks.values().map(|t| t.metrics().late).sum()
    }

    /// What late records do (default: dead-lettered).
    pub fn with_late_policy(mut self, policy: LatePolicy) -> Self {
        Arc::make_mut(&mut self.config).on_late = policy;
        self.rebuild();
        self
    }

    /// Keeps record lineage: the input of the last `depth` updates of every
    /// key of every logged store ([`crate::task::lineage`]).
    pub fn with_lineage(mut self, depth: usize) -> Self {
        Arc::make_mut(&mut self.config).lineage_depth = depth;
        self.rebuild();
        self
    }

    /// Idle tasks' stream time follows the wall clock ([`advance_time`](Self::advance_time))
    /// after `ms` without input, as `StreamsConfig::idle_advance` does.
    pub fn with_idle_advance(mut self, ms: i64) -> Self {
        Arc::make_mut(&mut self.config).idle_advance_ms = Some(ms);
        self.rebuild();
        self
    }

    fn pipe_full(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Headers,
        timestamp: i64,
    ) {
        let n = self.count_of(topic);
        let partition = match key {
            Some(k) if !k.is_empty() => partition_for_key(k, n),
            _ => {
                self.round_robin += 1;
                (self.round_robin % n as i64) as i32
            }
        };
        let rec = StoredRecord {
            key: key.map(|k| k.to_vec()),
            value: value.map(|v| v.to_vec()),
            headers,
            timestamp,
        };
        self.append(topic, partition, rec);
        if let Err(e) = self.run() {
            panic!("processing failed: {e}");
        }
        // The tasks look at the clock after each record, as the runtime's
        // poll loop does.
        self.advance_time(0);
    }

    /// Like [`pipe`](Self::pipe) with UTF-8 key and value.
    pub fn pipe_str(&mut self, topic: &str, key: &str, value: &str) {
        self.pipe(topic, Some(key.as_bytes()), Some(value.as_bytes()));
    }

    /// Like [`pipe`](Self::pipe), returning the task error instead of panicking
    /// (to test fail-fast policies).
    pub fn try_pipe(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), TaskError> {
        let n = self.count_of(topic);
        let partition = key
            .filter(|k| !k.is_empty())
            .map(|k| partition_for_key(k, n))
            .unwrap_or(0);
        self.clock += 1;
        let rec = StoredRecord {
            key: key.map(|k| k.to_vec()),
            value: value.map(|v| v.to_vec()),
            headers: Vec::new(),
            timestamp: self.clock,
        };
        self.append(topic, partition, rec);
        self.run()
    }

    /// Appends `rec`; returns its offset.
    fn append(&mut self, topic: &str, partition: i32, rec: StoredRecord) -> usize {
        let n = self
            .partitions
            .get(topic)
            .copied()
            .unwrap_or(1)
            .max(partition + 1) as usize;
        let parts = self.topics.entry(topic.to_string()).or_default();
        if parts.len() < n {
            parts.resize(n, Vec::new());
        }
        parts[partition as usize].push(rec);
        parts[partition as usize].len() - 1
    }

    fn deliver(&mut self, out: Vec<OutRecord>) {
        for r in out {
            let partition = match (r.partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, self.count_of(&r.topic)),
                (None, None) => 0,
            };
            let rec = StoredRecord {
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp: r.timestamp,
            };
            let index = self.append(&r.topic, partition, rec);
            if self.exactly_once {
                self.uncommitted
                    .push((r.topic.to_string(), partition, index));
            }
        }
    }

    /// Removes what was produced since the last commit (an aborted
    /// transaction).
    fn abort_uncommitted(&mut self) {
        let mut aborted = std::mem::take(&mut self.uncommitted);
        aborted.sort();
        for (topic, partition, index) in aborted.into_iter().rev() {
            if let Some(part) = self
                .topics
                .get_mut(&topic)
                .and_then(|ps| ps.get_mut(partition as usize))
            {
                if index < part.len() {
                    part.remove(index);
                }
            }
        }
    }

    /// Processes every pending record of every task until nothing moves.
    pub fn run(&mut self) -> Result<(), TaskError> {
        loop {
            self.read_globals();
            let mut progressed = false;
            let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
            for id in ids {
                let topics = self.tasks[&id].input_topics().to_vec();
                let reads: Vec<(String, i32)> = topics
                    .iter()
                    .flat_map(|t| {
                        let parts: Vec<i32> = if self.config.layout.is_single() {
                            (0..self.count_of(t)).collect()
                        } else {
                            vec![id.partition]
                        };
                        parts.into_iter().map(move |p| (t.clone(), p))
                    })
                    .collect();
                for (topic, partition) in reads {
                    let key = TopicPartition::new(&topic, partition);
                    let start = self.consumed.get(&key).copied().unwrap_or(0) as usize;
                    let records: Vec<StoredRecord> = match self
                        .topics
                        .get(&topic)
                        .and_then(|ps| ps.get(partition as usize))
                    {
                        Some(rs) if rs.len() > start => rs[start..].to_vec(),
                        _ => continue,
                    };
                    for (i, r) in records.iter().enumerate() {
                        let offset = start + i;
                        let input = InputRecord {
                            topic: &topic,
                            partition,
                            offset: offset as i64,
                            timestamp: r.timestamp,
                            key: r.key.as_deref(),
                            value: r.value.as_deref(),
                            headers: &r.headers,
                        };
                        let task = self.tasks.get_mut(&id).ok_or(TaskError::UnknownTopic {
                            task: id,
                            topic: topic.clone(),
                        })?;
                        task.process(&input)?;
                        let out = task.take_output();
                        self.deliver(out);
                        self.consumed.insert(key.clone(), offset as i64 + 1);
                        progressed = true;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if self.auto_commit {
            self.commit()?;
        }
        Ok(())
    }

    /// Commits every task: state with its changelog positions, then input offsets.
    pub fn commit(&mut self) -> Result<(), TaskError> {
        let ends: HashMap<TopicPartition, i64> = self
            .topics
            .iter()
            .flat_map(|(t, ps)| {
                ps.iter()
                    .enumerate()
                    .map(move |(p, rs)| (TopicPartition::new(t, p as i32), rs.len() as i64))
            })
            .collect();
        self.uncommitted.clear();
        for task in self.tasks.values_mut() {
            task.commit_state(&ends)?;
            for (k, v) in task.positions() {
                self.committed.insert(
                    k.clone(),
                    CommittedOffset {
                        offset: *v,
                        ours: true,
                        metadata: String::new(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Another program in the same consumer group commits `offset` for
    /// `topic`'s `partition` (as a second program of a classroom team,
    /// which shares the team's one group, does). The application does not
    /// trust it: the next restart resumes from what its state proves.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use stream_core::driver::TestDriver;
    /// # use stream_core::graph::{TopicRef, TopologyBuilder};
    /// # use stream_core::serde::{erase, StringSerde};
    /// # let s = || erase::<String>(Arc::new(StringSerde));
    /// # let mut b = TopologyBuilder::new();
    /// # let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
    /// # b.add_sink("out", TopicRef::External("out".into()), s(), s(), None, &[src]);
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe("in", Some(b"k"), Some(b"v"));
    /// d.commit_as_another_program("in", 0, 1_000);
    /// d.crash_and_restart();
    /// // Nothing keeps state here, so the foreign offset is taken: no replay.
    /// assert_eq!(d.records("out").len(), 1);
    /// ```
    pub fn commit_as_another_program(&mut self, topic: &str, partition: i32, offset: i64) {
        self.committed.insert(
            TopicPartition::new(topic, partition),
            CommittedOffset {
                offset,
                ours: false,
                metadata: "another-program".into(),
            },
        );
    }

    /// Simulates a crash and restart: every task is dropped with its
    /// uncommitted work and local state; what was produced stays in the
    /// topics; new tasks restore from the changelogs and processing resumes
    /// from the committed offsets.
    pub fn crash_and_restart(&mut self) {
        for t in self.tasks.values_mut() {
            t.close();
        }
        if self.exactly_once {
            self.abort_uncommitted();
        }
        self.restart();
        if let Err(e) = self.run() {
            panic!("processing after restart failed: {e}");
        }
    }

    /// Advances the driver's clock (timestamps of piped records) and
    /// punctuates every task with the new time.
    pub fn advance_time(&mut self, ms: i64) {
        self.clock += ms;
        let now = self.clock;
        let mut out = Vec::new();
        for t in self.tasks.values_mut() {
            if let Err(e) = t.punctuate(now) {
                panic!("punctuation failed: {e}");
            }
            out.extend(t.take_output());
        }
        self.deliver(out);
        if let Err(e) = self.run() {
            panic!("processing after punctuation failed: {e}");
        }
    }
}

fn to_store_error(e: TaskError) -> StoreError {
    StoreError::Damaged {
        store: "init".into(),
        reason: e.to_string(),
    }
}
