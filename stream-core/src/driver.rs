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
use crate::graph::{dead_letter_topic_name, TopicRef, Topology};
use crate::partitioner::partition_for_key;
use crate::record::{Headers, OutRecord};
use crate::store::MemoryBackend;
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
}

impl TestDriver {
    /// A driver for `topology` as application `application_id`; every
    /// external topic has one partition until [`with_partitions`](Self::with_partitions).
    pub fn new(topology: Topology, application_id: &str) -> Self {
        let mut d = TestDriver {
            topology: Arc::new(topology),
            config: Arc::new(TaskConfig {
                application_id: application_id.to_string(),
                partition_counts: Arc::new(HashMap::new()),
                dead_letter_topic: dead_letter_topic_name(application_id),
                on_error: ErrorPolicy::DeadLetter,
                on_late: LatePolicy::DeadLetter,
                idle_advance_ms: None,
                layout: TaskLayout::PerPartition,
                commit_tag: String::new(),
            }),
            partitions: HashMap::new(),
            topics: HashMap::new(),
            tasks: BTreeMap::new(),
            consumed: HashMap::new(),
            committed: BTreeMap::new(),
            clock: 0,
            round_robin: 0,
            auto_commit: true,
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

    fn app(&self) -> &str {
        &self.config.application_id
    }

    fn count_of(&self, topic: &str) -> i32 {
        self.partitions.get(topic).copied().unwrap_or(1)
    }

    /// Computes partition counts (repartition topics take their upstream's),
    /// then creates fresh tasks and restores them.
    fn rebuild(&mut self) {
        let app = self.app().to_string();
        let external: HashMap<String, i32> = self
            .topology
            .subtopologies()
            .iter()
            .flat_map(|st| st.sources.iter())
            .filter_map(|t| match t {
                TopicRef::External(name) => Some((name.clone(), self.count_of(name))),
                TopicRef::Internal(_) => None,
            })
            .collect();
        let mut counts = match self.topology.plan_partitions(&app, &external) {
            Ok(plan) => plan.partitions,
            Err(e) => panic!("the topology cannot run: {e}"),
        };
        // A changelog topic given a count of its own (a shared one) keeps it.
        for st in self.topology.subtopologies() {
            for s in &st.stores {
                if let Some(cl) = self
                    .topology
                    .store(s)
                    .and_then(|spec| spec.changelog_topic(&app))
                {
                    if let Some(&fixed) = self.partitions.get(&cl) {
                        counts.insert(cl, fixed);
                    } else {
                        let n = st
                            .sources
                            .iter()
                            .filter_map(|t| counts.get(&t.resolve(&app)).copied())
                            .max()
                            .unwrap_or(1);
                        counts.entry(cl).or_insert(n);
                    }
                }
            }
        }
        for (t, n) in &counts {
            self.partitions.insert(t.clone(), *n);
        }
        Arc::make_mut(&mut self.config).partition_counts = Arc::new(counts);
        self.restart();
    }

    fn restart(&mut self) {
        self.tasks.clear();
        let app = self.app().to_string();
        for st in self.topology.subtopologies() {
            let n = st
                .sources
                .iter()
                .map(|t| self.count_of(&t.resolve(&app)))
                .max()
                .unwrap_or(1);
            let n = if self.config.layout.is_single() { 1 } else { n };
            for p in 0..n {
                let id = TaskId {
                    subtopology: st.id,
                    partition: p,
                };
                let backend = Box::new(MemoryBackend::new(st.stores.len()));
                self.tasks.insert(
                    id,
                    Task::new(&self.topology, id, self.config.clone(), backend),
                );
            }
        }
        let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        for id in ids {
            self.restore(id);
        }
        // The tasks' first look at the clock (wall-clock schedules start here).
        let now = self.clock;
        let mut out = Vec::new();
        for t in self.tasks.values_mut() {
            if let Err(e) = t.punctuate(now) {
                panic!("punctuation at start failed: {e}");
            }
            out.extend(t.take_output());
        }
        self.deliver(out);
        // Input resumes where each task's restore decided (a foreign
        // commit is not trusted), the beginning where it decided nothing.
        self.consumed = self
            .tasks
            .values()
            .flat_map(|t| t.positions().iter().map(|(k, v)| (k.clone(), *v)))
            .collect();
    }

    /// Restores one task from the captured changelogs, like the runtime does.
    fn restore(&mut self, id: TaskId) {
        let committed = &self.committed;
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let targets = match task.begin_restore(committed) {
            Ok(t) => t,
            Err(e) => panic!("restore of {id} failed: {e}"),
        };
        for t in targets {
            let records = self
                .topics
                .get(&t.topic)
                .and_then(|ps| ps.get(t.partition as usize))
                .cloned()
                .unwrap_or_default();
            let end = records.len() as i64;
            for r in records.iter().skip(t.start as usize) {
                task.restore_record(
                    t.store,
                    r.key.as_deref(),
                    r.value.as_deref(),
                    &r.headers,
                    r.timestamp,
                );
            }
            task.restore_progress(&t.topic, t.partition, end);
        }
        if let Err(e) = task
            .flush_restore()
            .and_then(|_| task.init().map_err(to_store_error))
        {
            panic!("restore of {id} failed: {e}");
        }
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

    fn append(&mut self, topic: &str, partition: i32, rec: StoredRecord) {
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
            self.append(&r.topic, partition, rec);
        }
    }

    /// Processes every pending record of every task until nothing moves.
    pub fn run(&mut self) -> Result<(), TaskError> {
        loop {
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

    /// Every record in `topic`, partition by partition.
    pub fn records(&self, topic: &str) -> Vec<StoredRecord> {
        self.topics
            .get(topic)
            .map(|ps| ps.iter().flatten().cloned().collect())
            .unwrap_or_default()
    }

    /// Key and value of every record in `topic` as UTF-8 (lossy).
    pub fn output_utf8(&self, topic: &str) -> Vec<(String, String)> {
        self.records(topic)
            .into_iter()
            .map(|r| {
                (
                    String::from_utf8_lossy(&r.key.unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    /// The latest value per key of `topic`, as a compacted topic would keep it.
    pub fn latest_per_key(&self, topic: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut m = BTreeMap::new();
        for r in self.records(topic) {
            match r.value {
                Some(v) => m.insert(r.key.unwrap_or_default(), v),
                None => m.remove(&r.key.unwrap_or_default()),
            };
        }
        m
    }

    /// The records parked in the dead-letter topic.
    pub fn dead_letters(&self) -> Vec<StoredRecord> {
        self.records(&dead_letter_topic_name(self.app()))
    }

    /// All entries of a store across its tasks, committed and buffered.
    pub fn store_entries(&self, store: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut m = BTreeMap::new();
        for t in self.tasks.values() {
            if let Some(i) = t.stores().index_of(store) {
                if let Ok(es) = t.stores().entries(i) {
                    m.extend(es);
                }
            }
        }
        m
    }

    /// The resolved name of an internal topic suffix for this application.
    pub fn internal_topic(&self, suffix: &str) -> String {
        TopicRef::Internal(suffix.to_string()).resolve(self.app())
    }

    /// The tasks, for inspection.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::data::downcast_ref;
    use crate::graph::TopologyBuilder;
    use crate::processor::{Context, Processor};
    use crate::record::Record;
    use crate::serde::{erase, StringSerde};
    use crate::{KeyValueStore, ProcessError};

    /// Remembers keys; on punctuation forwards how many it has seen.
    struct Tally;
    impl Processor for Tally {
        fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
            let k = downcast_ref::<String>(&r.key, "tally")?.clone();
            ctx.store("seen")?.put(k.as_bytes(), vec![1])?;
            Ok(())
        }
        fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
            ctx.schedule(1000, crate::processor::PunctuationType::WallClock);
            Ok(())
        }
        fn punctuate(
            &mut self,
            ctx: &mut Context<'_>,
            p: crate::processor::Punctuation,
        ) -> Result<(), ProcessError> {
            let now_ms = p.time;
            let n = ctx.store("seen")?.scan_prefix(b"")?.len();
            ctx.forward(Record::new(
                Box::new(format!("t{now_ms}")),
                Box::new(n.to_string()),
                now_ms,
            ));
            Ok(())
        }
    }

    #[test]
    fn should_punctuate_processors_when_time_advances() {
        let s = || erase::<String>(Arc::new(StringSerde));
        let mut b = TopologyBuilder::new();
        let src = b.add_source("in", vec![TopicRef::External("in".into())], s(), s());
        b.add_store(crate::graph::StoreSpec {
            retention_ms: None,
            name: "seen".into(),
            changelog: crate::graph::Changelog::Internal,
            format: None,
        });
        let p = b.add_processor(
            "tally",
            Arc::new(|| Box::new(Tally) as Box<dyn Processor>),
            &[src],
            vec!["seen".into()],
        );
        b.add_sink(
            "out",
            TopicRef::External("out".into()),
            s(),
            s(),
            None,
            &[p],
        );
        let mut d = TestDriver::new(b.build().unwrap(), "app");
        d.pipe_str("in", "a", "x");
        d.pipe_str("in", "b", "x");
        assert!(
            d.output_utf8("out").is_empty(),
            "nothing before punctuation"
        );
        d.advance_time(1000);
        assert_eq!(
            d.output_utf8("out"),
            vec![("t1002".to_string(), "2".to_string())]
        );
    }
}

fn to_store_error(e: TaskError) -> StoreError {
    StoreError::Damaged {
        store: "init".into(),
        reason: e.to_string(),
    }
}
