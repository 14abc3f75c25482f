//! The global reader: keeps every global table of the instance whole.
//!
//! Before any stream thread processes a record, each global table's topic
//! is read by assignment (every partition, no consumer group, committed
//! records only) from the offsets kept beside its rows in sled up to the
//! end the topic had when reading began: the first output of the instance
//! already sees the whole table. Then a thread of its own follows the
//! topic until the instance stops. Records that do not deserialize are
//! skipped with a warning (they are no rows); tombstones delete.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::batch::{read_batch, BatchBuffer, Batched, BATCH};
use super::client_log::LogQueue;
use super::config::StreamsConfig;
use super::error::RuntimeError;
use super::input_watch::{self, InputReport};
use crate::graph::{GlobalTableSpec, Topology};
use crate::store::{GlobalStores, GlobalTree, StateDir};

/// One global table being read.
struct Table {
    spec: GlobalTableSpec,
    tree: GlobalTree,
    /// Next offset per partition, as read and written to the rows.
    next: HashMap<i32, i64>,
    /// Rows read by the current poll, not yet written (last value per key).
    rows: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Next offset per partition including the rows not yet written.
    read: HashMap<i32, i64>,
    skipped: u64,
}

impl Table {
    /// Writes the rows read so far, in one pass over the tree's runs, and
    /// only then counts their offsets as done.
    fn write_rows(&mut self) -> Result<(), RuntimeError> {
        if !self.rows.is_empty() {
            let rows: Vec<(&[u8], Option<&[u8]>)> = self
                .rows
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref()))
                .collect();
            self.tree.apply_all(&rows)?;
            self.rows.clear();
        }
        self.next.extend(self.read.drain());
        Ok(())
    }
}

/// How much one poll reads before its rows are written.
#[derive(Clone, Copy)]
struct Budget {
    records: u64,
    /// Keys, values and [`ROW_BYTES`] per row.
    bytes: usize,
}

/// Memory a row waiting to be written takes beside its key and value.
const ROW_BYTES: usize = 64;

/// The first read of a table: large writes, since each write rewrites
/// every run of entries it touches once, and a million rows land in tens
/// of thousands of runs: a table of 1,000,000 rows (`global-join-app`
/// over a `bench-fill` topic) loaded in 6.5 s with writes of 10,000 rows
/// and peak RSS 86 MiB, in 3.4 s with writes of up to 32 MiB and 109 MiB
/// (16 MiB: 4.4 s at the same peak). Nothing reads the table before it
/// is loaded.
const LOAD: Budget = Budget {
    records: u64::MAX,
    bytes: 32 << 20,
};

/// Following the topics: rows become readable after each write, so
/// writes stay small.
const FOLLOW: Budget = Budget {
    records: 10_000,
    bytes: 32 << 20,
};

/// What the global reader runs with.
pub(crate) struct GlobalReader {
    /// The consumer's log lines, drained at every read (before `consumer`:
    /// dropped first).
    log: Option<LogQueue>,
    consumer: BaseConsumer,
    tables: HashMap<String, Table>,
    /// The batch buffer, kept between reads.
    batch: BatchBuffer,
}

/// Reads every global table of `topology` to its end, then returns the
/// stores and, when there are any, the thread that follows the topics
/// until `stop`.
pub(crate) fn start(
    topology: &Topology,
    cfg: &StreamsConfig,
    state: &StateDir,
    stop: Arc<AtomicBool>,
) -> Result<(GlobalStores, Option<std::thread::JoinHandle<()>>), RuntimeError> {
    if topology.global_tables().is_empty() {
        return Ok((GlobalStores::default(), None));
    }
    let mut cc = cfg.client_config();
    cc.set("group.id", &cfg.application_id)
        .set("client.id", format!("{}-global", cfg.application_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    cfg.apply_aimed_extra(&mut cc, super::config::KafkaClient::GlobalConsumer);
    let consumer: BaseConsumer = cc
        .create()
        .map_err(|e| RuntimeError::kafka("create the global reader", e))?;
    let mut reader = GlobalReader {
        log: LogQueue::attach(&consumer),
        consumer,
        tables: HashMap::new(),
        batch: BatchBuffer::default(),
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for spec in topology.global_tables() {
        let tree = state.global_tree(&spec.store)?;
        // A topic the cluster does not list yet (created a moment ago) is
        // asked for again, as the sources are (`topics::PROPAGATION_GRACE`).
        let until = std::time::Instant::now() + super::topics::PROPAGATION_GRACE;
        let parts = loop {
            let md = reader
                .consumer
                .fetch_metadata(Some(&spec.topic), Duration::from_secs(10))
                .map_err(|e| {
                    RuntimeError::kafka(format!("metadata of global table topic {}", spec.topic), e)
                })?;
            let parts = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
            if parts > 0 || std::time::Instant::now() >= until {
                break parts;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if parts == 0 {
            return Err(RuntimeError::TopicMismatch {
                topic: spec.topic.clone(),
                reason: format!(
                    "it is the topic of global table `{}` and does not exist",
                    spec.store
                ),
            });
        }
        let mut next = HashMap::new();
        // Every partition's bounds in two requests; one the answer lacks
        // is read alone.
        let all: Vec<(String, i32)> = (0..parts).map(|p| (spec.topic.clone(), p)).collect();
        let bounds = super::log_offsets::bounds(&reader.consumer, &all);
        for p in 0..parts {
            let from = tree.offset(p)?;
            let (low, high) = match bounds.get(&(spec.topic.clone(), p)) {
                Some(&b) => b,
                None => reader
                    .consumer
                    .fetch_watermarks(&spec.topic, p, Duration::from_secs(10))
                    .map_err(|e| {
                        RuntimeError::kafka(format!("watermarks of {}[{p}]", spec.topic), e)
                    })?,
            };
            // Offsets before the log start are gone, or the log ends before
            // the local copy's checkpoint (the topic was deleted and
            // created again): the rows must be rebuilt. Read on from the
            // checkpoint, a re-created topic's records would land on the
            // old rows, and rows the new topic lacks would stay for good.
            if from.is_some_and(|f| f < low || f > high) {
                tracing::warn!(store = %spec.store, topic = %spec.topic, partition = p, checkpoint = from.unwrap_or(0), log_start = low, log_end = high,
                    "the global table's topic does not hold what its local copy was read from (records deleted, or the topic created anew); rebuilding it from the topic");
                tree.clear()?;
                return start(topology, cfg, state, stop);
            }
            let start = from.unwrap_or(low);
            next.insert(p, start);
            if start < high {
                ends.insert((spec.store.clone(), p), high);
            }
            let _ = tpl.add_partition_offset(&spec.topic, p, Offset::Offset(start));
        }
        reader.tables.insert(
            spec.topic.clone(),
            Table {
                spec: spec.clone(),
                tree,
                next,
                rows: BTreeMap::new(),
                read: HashMap::new(),
                skipped: 0,
            },
        );
    }
    reader
        .consumer
        .assign(&tpl)
        .map_err(|e| RuntimeError::kafka("assign the global tables' topics", e))?;
    let began = Instant::now();
    let mut read = 0u64;
    while !ends.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return Ok((reader.stores(), None));
        }
        read += reader.poll(Duration::from_millis(100), LOAD)?;
        ends.retain(|(store, p), end| {
            reader
                .tables
                .values()
                .find(|t| &t.spec.store == store)
                .is_some_and(|t| t.next.get(p).copied().unwrap_or(0) < *end)
                && reader.position_before(store, *p, *end)
        });
    }
    reader.save_offsets()?;
    for t in reader.tables.values() {
        tracing::info!(store = %t.spec.store, topic = %t.spec.topic, rows = t.tree.len(), read, skipped = t.skipped,
            seconds = format!("{:.2}", began.elapsed().as_secs_f64()), "global table restored");
    }
    let stores = reader.stores();
    let handle = std::thread::Builder::new()
        .name("global-reader".into())
        .spawn(move || reader.follow(&stop))
        .map_err(|e| {
            RuntimeError::ThreadPanicked(format!("cannot start the global reader: {e}"))
        })?;
    Ok((stores, Some(handle)))
}

impl GlobalReader {
    fn stores(&self) -> GlobalStores {
        GlobalStores::new(
            self.tables
                .values()
                .map(|t| (t.spec.store.clone(), t.tree.clone()))
                .collect(),
        )
    }

    /// Whether the consumer's position in `store`'s partition `p` is still
    /// before `end` (transaction markers advance it past the last record).
    fn position_before(&self, store: &str, p: i32, end: i64) -> bool {
        let Some(t) = self.tables.values().find(|t| t.spec.store == store) else {
            return false;
        };
        match self.consumer.position() {
            Ok(tpl) => match tpl.find_partition(&t.spec.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o < end,
                _ => true,
            },
            Err(_) => true,
        }
    }

    /// Reads what the consumer has, up to `budget`; returns how many
    /// records it read. The rows are written together at the end, also
    /// when reading fails.
    fn poll(&mut self, timeout: Duration, budget: Budget) -> Result<u64, RuntimeError> {
        let mut resets = Vec::new();
        if let Some(log) = &mut self.log {
            log.drain_noting(&self.consumer, |fac, text| {
                if let Some(InputReport::Reset(topic, partition)) =
                    input_watch::report_in(fac, text)
                {
                    resets.push((topic, partition));
                }
            });
        }
        for (topic, partition) in resets {
            self.reset_seen(&topic, partition)?;
        }
        let read = self.read_rows(timeout, budget);
        for t in self.tables.values_mut() {
            t.write_rows()?;
        }
        read
    }

    /// Reads records into the tables' unwritten rows until `budget` is
    /// used or the consumer has no more. An error for a partition is
    /// returned after the records read with it.
    fn read_rows(&mut self, timeout: Duration, budget: Budget) -> Result<u64, RuntimeError> {
        let mut n = 0;
        let mut bytes = 0;
        let mut wait = timeout;
        let mut failed = None;
        while n < budget.records && bytes < budget.bytes && failed.is_none() {
            let batch = read_batch(&self.consumer, &mut self.batch, BATCH, wait);
            if batch.is_empty() {
                break;
            }
            wait = Duration::ZERO;
            for item in batch.iter() {
                let m = match item {
                    Batched::Record(m) => m,
                    Batched::Error { code, .. } => {
                        failed.get_or_insert(code);
                        continue;
                    }
                };
                let Some(t) = self.tables.get_mut(m.topic()) else {
                    continue;
                };
                let key = m.key().unwrap_or(&[]);
                let row = match m.payload() {
                    None => Some((key.to_vec(), None)),
                    Some(v) => t.spec.codec.decode(key, v).map(|(k, v)| (k, Some(v))),
                };
                match row {
                    Some((k, v)) => {
                        bytes += ROW_BYTES + k.len() + v.as_ref().map_or(0, Vec::len);
                        t.rows.insert(k, v);
                    }
                    None => {
                        if t.skipped == 0 {
                            tracing::warn!(store = %t.spec.store, topic = %t.spec.topic, partition = m.partition(), offset = m.offset(),
                                "a global table record does not deserialize; it is no row (skipped, counted)");
                        }
                        t.skipped += 1;
                    }
                }
                t.read.insert(m.partition(), m.offset() + 1);
                n += 1;
            }
        }
        match failed {
            None => Ok(n),
            Some(code) => Err(RuntimeError::kafka(
                "read a global table's topic",
                KafkaError::MessageConsumption(code),
            )),
        }
    }

    /// librdkafka moved the fetch of `topic`'s `partition` because the
    /// position was out of range. If the log now starts past it, retention
    /// deleted records and the rows stand. Otherwise the topic was deleted
    /// and created again while the instance ran: its table is rebuilt from
    /// the new topic's start (emptied first, so that rows the new topic
    /// lacks do not stay), as at a start whose local copy the topic does
    /// not hold. Lookups meanwhile see the table filling again; Kafka
    /// Streams' global thread likewise wipes and re-reads its store on an
    /// invalid offset.
    fn reset_seen(&mut self, topic: &str, partition: i32) -> Result<(), RuntimeError> {
        let Some(t) = self.tables.get_mut(topic) else {
            return Ok(());
        };
        let position = t.read.get(&partition).or(t.next.get(&partition)).copied();
        if position.is_none_or(|p| p <= 0) {
            // Nothing of this partition is in the table (after a rebuild,
            // say: each partition of a replaced topic reports its reset).
            return Ok(());
        }
        let bounds = super::log_offsets::bounds(&self.consumer, &[(topic.to_string(), partition)]);
        let low = bounds
            .get(&(topic.to_string(), partition))
            .map(|&(low, _)| low);
        if let (Some(position), Some(low)) = (position, low) {
            if position < low {
                return Ok(());
            }
        }
        tracing::warn!(store = %t.spec.store, topic, partition, position = position.unwrap_or(-1), log_start = low.unwrap_or(-1),
            "the global table's topic was replaced while the instance ran (deleted and created again); rebuilding the table from the new topic");
        t.rows.clear();
        t.read.clear();
        t.tree.clear()?;
        let parts: Vec<i32> = t.next.keys().copied().collect();
        for p in &parts {
            t.next.insert(*p, 0);
            if let Err(e) =
                self.consumer
                    .seek(topic, *p, Offset::Beginning, Duration::from_secs(10))
            {
                tracing::warn!(topic, partition = p, error = %e, "global reader: seek to the new topic's start failed");
            }
        }
        Ok(())
    }

    fn save_offsets(&self) -> Result<(), RuntimeError> {
        for t in self.tables.values() {
            for (&p, &o) in &t.next {
                t.tree.set_offset(p, o)?;
            }
        }
        Ok(())
    }

    /// Follows the topics until `stop`, saving offsets twice a second.
    fn follow(mut self, stop: &AtomicBool) {
        let mut saved = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = self.poll(Duration::from_millis(100), FOLLOW) {
                tracing::warn!(error = %e, "global reader: read failed; retrying");
            }
            if saved.elapsed() > Duration::from_millis(500) {
                if let Err(e) = self.save_offsets() {
                    tracing::warn!(error = %e, "global reader: cannot save offsets");
                }
                saved = Instant::now();
            }
        }
        let _ = self.save_offsets();
    }
}
