//! Windowed aggregations: [`TimeWindowedKStream`] (from
//! [`KGroupedStream::windowed_by`]) and the emit-final operator
//! [`KTable::suppress`].
//!
//! Kafka Streams' semantics (`internals/KStreamWindowAggregate.java`,
//! `suppress/KTableSuppressProcessorSupplier.java`):
//! - a record goes into every window that contains its timestamp whose
//!   end is after `stream time − grace`; windows that closed already are
//!   skipped, and a record whose windows all closed is *late*;
//! - every update is emitted (timestamp: the largest record timestamp in
//!   the window), unless suppressed; suppressed, each window emits once,
//!   when stream time reaches `end + grace`.
//!
//! Where we differ, on purpose:
//! - a late record is not only counted but kept: it fails with
//!   `ProcessError::Late` and goes to the dead-letter topic with its window
//!   and the stream time (or is only logged, `StreamsConfig::on_late`);
//! - the suppression buffer is a sled store, changelogged and restored,
//!   never an in-memory map: its size is bounded by disk, not memory;
//! - expired windows are deleted from the store through the changelog
//!   (tombstones), so a restore never brings them back; the changelog is
//!   also `compact,delete` with the store's retention plus a day;
//! - stream time is the task's (largest timestamp of any input record of
//!   the task), kept in its checkpoint, so a restart does not reopen
//!   windows that had closed.

use std::collections::BTreeSet;
use std::sync::Arc;

use stream_core::data::{Data, downcast, downcast_ref};
use stream_core::graph::{Changelog, ProcessorFactory, StoreFormat, StoreSpec};
use stream_core::processor::{Punctuation, PunctuationType};
use stream_core::serde::erase;
use stream_core::serde::{I64Serde, Serde, UnitSerde};
use stream_core::store::window;
use stream_core::{Context, KeyValueStore, ProcessError, Processor, Record, SerdeError};

use crate::change::Change;
use crate::grouped::KGroupedStream;
use crate::kstream::KStream;
use crate::ktable::KTable;
use crate::options::Materialized;
use crate::sliding::SlidingAggregator;
use crate::windows::{Suppressed, TimeWindowing, TimeWindows, Windowed, WindowedSerde};

/// Folds a value into a window's aggregate (`None`: the window is new).
pub(crate) type Adder<K, V, A> = Arc<dyn Fn(&K, V, Option<A>) -> A + Send + Sync>;

/// A grouped stream cut into time windows (tumbling, hopping or
/// sliding), waiting for an aggregation.
pub struct TimeWindowedKStream<K, V> {
    grouped: KGroupedStream<K, V>,
    windows: TimeWindowing,
}

impl<K: Data + Clone, V: Data + Clone> KGroupedStream<K, V> {
    /// Aggregates per key and per time window (tumbling or hopping).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("clicks")
    ///     .group_by_key()
    ///     .windowed_by(TimeWindows::of_size(Duration::from_secs(60)))
    ///     .count(Materialized::as_store("per-minute"))
    ///     .to_topic("counts");
    /// let topology = b.build().unwrap();
    /// assert!(topology.describe("app").contains("[tumbling 60000 ms, grace 0 ms]"));
    /// let mut d = TestDriver::new(topology, "app");
    /// d.pipe_str_at("clicks", "a", "x", 1_000);
    /// d.pipe_str_at("clicks", "a", "x", 59_000);
    /// d.pipe_str_at("clicks", "a", "x", 61_000);
    /// let counts: Vec<i64> = d.records("counts").iter()
    ///     .map(|r| i64::from_be_bytes(r.value.clone().unwrap().try_into().unwrap())).collect();
    /// assert_eq!(counts, vec![1, 2, 1]);
    /// ```
    ///
    /// Sliding windows, [`SlidingWindows`](crate::windows::SlidingWindows), go through the same call:
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("clicks")
    ///     .group_by_key()
    ///     .windowed_by(SlidingWindows::with_time_difference(Duration::from_secs(10)))
    ///     .count(Materialized::as_store("last-10s"))
    ///     .to_stream()
    ///     .map(|w, n| (format!("{}@[{},{}]", w.key, w.window.start, w.window.end), n.to_string()))
    ///     .to_topic("counts");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("clicks", "a", "x", 20_000);
    /// d.pipe_str_at("clicks", "a", "x", 25_000);
    /// assert_eq!(d.output_utf8("counts"), vec![
    ///     ("a@[10000,20000]".to_string(), "1".to_string()), // left window of the first
    ///     ("a@[20001,30001]".to_string(), "1".to_string()), // right window of the first
    ///     ("a@[15000,25000]".to_string(), "2".to_string()), // left window of the second
    /// ]);
    /// ```
    pub fn windowed_by(&self, windows: impl Into<TimeWindowing>) -> TimeWindowedKStream<K, V> {
        TimeWindowedKStream {
            grouped: KGroupedStream::new(
                self.stream.clone(),
                self.key_serde.clone(),
                self.name.clone(),
                self.repartition,
            )
            .with_partitions(self.partitions),
            windows: windows.into(),
        }
    }
}

fn corrupt(what: &str) -> SerdeError {
    SerdeError::Other(format!("window store entry too short: {what}"))
}

/// The timestamp and aggregate bytes of a stored window value.
pub(crate) fn unstamp(bytes: &[u8]) -> Result<(i64, &[u8]), SerdeError> {
    window::unstamp(bytes).ok_or_else(|| corrupt("value"))
}

pub(crate) use window::stamp as stamped;

struct WindowAggregator<K, V, A> {
    store: String,
    key: Arc<dyn Serde<K>>,
    agg: Arc<dyn Serde<A>>,
    adder: Adder<K, V, A>,
    windows: TimeWindows,
    /// The expiry cutoff of the last sweep, in window starts (`cutoff /
    /// advance`): windows start on multiples of the advance, so nothing
    /// new can expire until the cutoff crosses the next one.
    swept: Option<i64>,
}

impl<K: Data + Clone, V: Data + Clone, A: Data + Clone> Processor for WindowAggregator<K, V, A> {
    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let stream_time = ctx.stream_time();
        let close = stream_time - self.windows.grace_ms;
        let k = downcast_ref::<K>(&r.key, node)?.clone();
        let kb = self.key.serialize(&k)?;
        let v = downcast::<V>(r.value, node)?;
        let mut updated = false;
        let mut late = None;
        for start in self.windows.windows_for(r.timestamp) {
            let window = self.windows.window(start);
            if window.end <= close {
                late = Some(window);
                continue;
            }
            let sk = window::time_key(start, &kb);
            let mut store = ctx.store(&self.store)?;
            let (ts, current) = match store.get_counted(&sk)? {
                Some(bytes) => {
                    let (ts, a) = unstamp(&bytes)?;
                    (ts, Some(self.agg.deserialize(a)?))
                }
                None => (r.timestamp, None),
            };
            let next = (self.adder)(&k, v.clone(), current.clone());
            let ts = ts.max(r.timestamp);
            store.put(&sk, stamped(ts, &self.agg.serialize(&next)?))?;
            ctx.forward(Record {
                key: Box::new(Windowed {
                    key: k.clone(),
                    window,
                }),
                value: Box::new(Change::new(Some(next), current)),
                timestamp: ts,
                headers: r.headers.clone(),
            });
            updated = true;
        }
        self.expire(ctx, stream_time)?;
        match late {
            Some(window) if !updated => Err(ProcessError::Late {
                node: node.to_string(),
                timestamp: r.timestamp,
                window_start: window.start,
                window_end: window.end,
                stream_time,
                grace_ms: self.windows.grace_ms,
            }),
            _ => Ok(()),
        }
    }

    fn rolled_back(&mut self) {
        self.swept = None;
    }
}

impl<K, V, A> WindowAggregator<K, V, A> {
    /// Deletes every window that started at or before `stream time −
    /// retention` (with the default retention: every closed window), once
    /// per window start the cutoff passes.
    fn expire(&mut self, ctx: &mut Context<'_>, stream_time: i64) -> Result<(), ProcessError> {
        let cutoff = stream_time - self.windows.retention_ms;
        let step = cutoff.div_euclid(self.windows.advance_ms);
        if cutoff < 0 || self.swept == Some(step) {
            return Ok(());
        }
        self.swept = Some(step);
        let mut store = ctx.store(&self.store)?;
        let expired = store.range(
            &window::time_key(0, &[]),
            &window::time_key(cutoff + 1, &[]),
        )?;
        for (k, _) in expired {
            store.delete(&k)?;
        }
        Ok(())
    }
}

impl<K: Data + Clone, V: Data + Clone> TimeWindowedKStream<K, V> {
    /// Lowers a windowed aggregation: optional repartition, the window
    /// store, the aggregator.
    fn lower<VIn: Data + Clone, A: Data + Clone>(
        &self,
        op: &str,
        input: KStream<K, VIn>,
        value_serde: Option<Arc<dyn Serde<VIn>>>,
        adder: Adder<K, VIn, A>,
        mat: Materialized<K, A>,
    ) -> KTable<Windowed<K>, A> {
        let g = &self.grouped;
        let p = match g.prepare(op, &input, value_serde, &mat) {
            Ok(p) => p,
            Err(e) => return g.unbuilt(e),
        };
        let (b, store, key_serde, agg_serde, parent) = (p.b, p.store, p.key, p.agg, p.parent);
        b.with_graph(|gr| {
            gr.add_store(StoreSpec {
                name: store.clone(),
                changelog: if mat.logged {
                    Changelog::Internal
                } else {
                    Changelog::Disabled
                },
                format: Some(StoreFormat {
                    key: erase(key_serde.clone()),
                    value: erase(agg_serde.clone()),
                }),
                retention_ms: Some(self.windows.retention_ms()),
                window: Some(self.windows.layout()),
            })
        });
        let factory = self.factory(&store, &key_serde, &agg_serde, adder);
        let kind = match op {
            "count" => "window-count",
            "reduce" => "window-reduce",
            _ => "window-aggregate",
        };
        let node = b.add_processor(kind, factory, &[parent], vec![store.clone()]);
        let spec = self.windows.spec();
        b.with_graph(|gr| gr.set_note(node, spec.describe()));
        let windowed: Arc<dyn Serde<Windowed<K>>> =
            Arc::new(WindowedSerde::new(key_serde, self.windows.size_ms()));
        KTable::new(
            b,
            node,
            g.stream.sources.clone(),
            Some(windowed),
            Some(agg_serde),
            store,
        )
        .with_windows(spec)
    }

    /// The aggregation processor for the windows.
    fn factory<VIn: Data + Clone, A: Data + Clone>(
        &self,
        store: &str,
        key: &Arc<dyn Serde<K>>,
        agg: &Arc<dyn Serde<A>>,
        adder: Adder<K, VIn, A>,
    ) -> ProcessorFactory {
        let (store, key, agg) = (store.to_string(), key.clone(), agg.clone());
        match self.windows {
            TimeWindowing::Fixed(windows) => Arc::new(move || {
                Box::new(WindowAggregator {
                    store: store.clone(),
                    key: key.clone(),
                    agg: agg.clone(),
                    adder: adder.clone(),
                    windows,
                    swept: None,
                }) as Box<dyn Processor>
            }),
            TimeWindowing::Sliding(windows) => Arc::new(move || {
                Box::new(SlidingAggregator {
                    store: store.clone(),
                    key: key.clone(),
                    agg: agg.clone(),
                    adder: adder.clone(),
                    windows,
                }) as Box<dyn Processor>
            }),
        }
    }

    /// Counts records per key and window; every change is emitted.
    /// See [`KGroupedStream::windowed_by`] for an example.
    pub fn count(&self, mat: Materialized<K, i64>) -> KTable<Windowed<K>, i64> {
        let mat = if mat.value.is_none() {
            mat.with_value_serde(I64Serde)
        } else {
            mat
        };
        let g = &self.grouped;
        if g.repartition {
            let units = g.stream.map_values(|_| ());
            self.lower(
                "count",
                units,
                Some(Arc::new(UnitSerde)),
                Arc::new(|_, _, n| n.unwrap_or(0) + 1),
                mat,
            )
        } else {
            self.lower(
                "count",
                g.stream.clone(),
                g.stream.value_serde.clone(),
                Arc::new(|_, _, n| n.unwrap_or(0) + 1),
                mat,
            )
        }
    }

    /// Folds each window's values into an aggregate.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .group_by_key()
    ///     .windowed_by(TimeWindows::of_size(Duration::from_secs(10)))
    ///     .aggregate(|| 0i64, |_k, v, sum| sum + v.len() as i64, Materialized::as_store("lengths"))
    ///     .to_stream()
    ///     .map(|w, n| (format!("{}@{}", w.key, w.window.start), n.to_string()))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("in", "k", "abc", 1_000);
    /// d.pipe_str_at("in", "k", "de", 2_000);
    /// assert_eq!(d.output_utf8("out").last(), Some(&("k@0".to_string(), "5".to_string())));
    /// ```
    pub fn aggregate<A: Data + Clone>(
        &self,
        init: impl Fn() -> A + Send + Sync + 'static,
        adder: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
        mat: Materialized<K, A>,
    ) -> KTable<Windowed<K>, A> {
        let g = &self.grouped;
        let adder: Adder<K, V, A> = Arc::new(move |k, v, a| adder(k, v, a.unwrap_or_else(&init)));
        self.lower(
            "aggregate",
            g.stream.clone(),
            g.stream.value_serde.clone(),
            adder,
            mat,
        )
    }

    /// Combines each window's values with `f(aggregate, value)`; needs a
    /// value serde (given or built in).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .group_by_key()
    ///     .windowed_by(TimeWindows::of_size(Duration::from_secs(10)))
    ///     .reduce(|a, v| format!("{a}{v}"), Materialized::as_store("concat"))
    ///     .to_stream()
    ///     .map(|w, s| (w.key, s))
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("in", "k", "a", 1_000);
    /// d.pipe_str_at("in", "k", "b", 2_000);
    /// d.pipe_str_at("in", "k", "c", 12_000);
    /// let out: Vec<String> = d.output_utf8("out").into_iter().map(|(_, v)| v).collect();
    /// assert_eq!(out, vec!["a", "ab", "c"]);
    /// ```
    pub fn reduce(
        &self,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
        mat: Materialized<K, V>,
    ) -> KTable<Windowed<K>, V> {
        let g = &self.grouped;
        let vs = mat.value.clone().or_else(|| g.stream.value_serde.clone());
        let Some(vs) = vs else {
            g.missing("the value");
            return KTable::new(
                g.stream.b.clone(),
                g.stream.node,
                g.stream.sources.clone(),
                None,
                None,
                String::new(),
            );
        };
        let mat = Materialized {
            value: Some(vs),
            ..mat
        };
        let adder: Adder<K, V, V> = Arc::new(move |_, v, acc| match acc {
            None => v,
            Some(a) => f(a, v),
        });
        self.lower(
            "reduce",
            g.stream.clone(),
            g.stream.value_serde.clone(),
            adder,
            mat,
        )
    }
}

/// Emit-final: buffers each window's latest value in a sled store keyed
/// by close time (`end + grace`, for sessions `end + gap + grace`; 8 bytes
/// big-endian) and the windowed key, and forwards it once stream time
/// reaches the close time. A tombstone (a session merged into another)
/// removes the window's pending value.
struct Suppress<K, V> {
    buffer: String,
    key: Arc<dyn Serde<Windowed<K>>>,
    value: Arc<dyn Serde<V>>,
    close_after_end: i64,
    /// The close times that may have results waiting (loaded from the
    /// buffer once): one entry per distinct window end, not per key, so
    /// it stays small however many keys a window holds. It spares a scan of
    /// the buffer for every record while nothing is due.
    due: Option<BTreeSet<i64>>,
}

impl<K: Data + Clone, V: Data + Clone> Suppress<K, V> {
    /// The close times of the buffered results, read once from the store.
    fn due<'a>(&'a mut self, ctx: &mut Context<'_>) -> Result<&'a mut BTreeSet<i64>, ProcessError> {
        if self.due.is_none() {
            let mut set = BTreeSet::new();
            for (bk, _) in ctx.store(&self.buffer)?.scan_prefix(&[])? {
                if let Some((close, _)) = window::split_time_key(&bk) {
                    set.insert(close);
                }
            }
            self.due = Some(set);
        }
        Ok(self.due.get_or_insert_with(BTreeSet::new))
    }

    /// Forwards, oldest close time first, every buffered window whose close
    /// time is at or before `stream_time`, and removes it from the buffer.
    fn flush(&mut self, ctx: &mut Context<'_>, stream_time: i64) -> Result<(), ProcessError> {
        if stream_time < 0 {
            return Ok(());
        }
        let due = self.due(ctx)?;
        if due.first().is_none_or(|first| *first > stream_time) {
            return Ok(());
        }
        *due = due.split_off(&(stream_time + 1));
        let ready = ctx
            .store(&self.buffer)?
            .range(&0i64.to_be_bytes(), &(stream_time + 1).to_be_bytes())?;
        for (bk, bv) in ready {
            let (_, wk) = window::split_time_key(&bk).ok_or_else(|| corrupt("buffer key"))?;
            let (ts, v) = unstamp(&bv)?;
            let key = self.key.deserialize(wk)?;
            let value = self.value.deserialize(v)?;
            ctx.store(&self.buffer)?.delete(&bk)?;
            ctx.forward(Record::new(
                Box::new(key),
                Box::new(Change::new(Some(value), None)),
                ts,
            ));
        }
        Ok(())
    }
}

impl<K: Data + Clone, V: Data + Clone> Processor for Suppress<K, V> {
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        // Idle advance moves stream time without a record: flush then too.
        ctx.schedule(1, PunctuationType::StreamTime);
        // Restore may have changed the buffer since this processor last ran.
        self.due = None;
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
        let node = ctx.node_name();
        let wk = downcast_ref::<Windowed<K>>(&r.key, node)?;
        let close = wk.window.end.saturating_add(self.close_after_end).max(0);
        let mut bk = close.to_be_bytes().to_vec();
        bk.extend_from_slice(&self.key.serialize(wk)?);
        let c = downcast_ref::<Change<V>>(&r.value, node)?;
        let bytes = match &c.new {
            Some(v) => self.value.serialize_nullable(v)?,
            None => None,
        };
        match bytes {
            Some(bytes) => {
                ctx.store(&self.buffer)?
                    .put(&bk, stamped(r.timestamp, &bytes))?;
                self.due(ctx)?.insert(close);
            }
            None => ctx.store(&self.buffer)?.delete(&bk)?,
        }
        self.flush(ctx, ctx.stream_time())
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, p: Punctuation) -> Result<(), ProcessError> {
        self.flush(ctx, p.time)
    }

    fn rolled_back(&mut self) {
        self.due = None;
    }
}

impl<K: Data + Clone, V: Data + Clone> KTable<Windowed<K>, V> {
    /// Emits one final result per window, when stream time passes the
    /// window's end + grace, instead of every update (Kafka Streams'
    /// `suppress(Suppressed.untilWindowCloses(...))`). The pending results
    /// wait in the sled store `<table store>-suppress-buffer`, changelogged
    /// and restored: memory does not grow with the number of open windows.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .group_by_key()
    ///     .windowed_by(TimeWindows::of_size(Duration::from_secs(60)).grace(Duration::from_secs(10)))
    ///     .count(Materialized::as_store("per-minute"))
    ///     .suppress(Suppressed::until_window_closes())
    ///     .to_stream()
    ///     .map(|w, n| (format!("{}@{}", w.key, w.window.start), n.to_string()))
    ///     .to_topic("final");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("in", "a", "x", 1_000);
    /// d.pipe_str_at("in", "a", "x", 2_000);
    /// d.pipe_str_at("in", "a", "x", 65_000); // window [0, 60 s) still open: grace
    /// assert!(d.output_utf8("final").is_empty());
    /// d.pipe_str_at("in", "b", "x", 70_000); // stream time 70 s = end + grace
    /// assert_eq!(d.output_utf8("final"), vec![("a@0".to_string(), "2".to_string())]);
    /// ```
    pub fn suppress(&self, _until: Suppressed) -> KTable<Windowed<K>, V> {
        let b = self.builder();
        let buffer = format!(
            "{}{}",
            self.store_name(),
            stream_core::task::SUPPRESS_BUFFER_SUFFIX
        );
        let (Some(ks), Some(vs), Some(w)) = (self.key_serde(), self.value_serde(), self.windows())
        else {
            b.record_error(stream_core::TopologyError::MissingSerde(format!(
                "suppress after {}: a windowed table with known serdes is needed",
                self.store_name()
            )));
            return self.clone_table();
        };
        b.with_graph(|g| {
            g.add_store(StoreSpec {
                name: buffer.clone(),
                changelog: Changelog::Internal,
                format: None,
                retention_ms: None,
                window: None,
            })
        });
        let (bn, k, v, close) = (buffer.clone(), ks.clone(), vs.clone(), w.close_after_end());
        let factory: ProcessorFactory = Arc::new(move || {
            Box::new(Suppress {
                buffer: bn.clone(),
                key: k.clone(),
                value: v.clone(),
                close_after_end: close,
                due: None,
            }) as Box<dyn Processor>
        });
        let node = b.add_processor("suppress", factory, &[self.node()], vec![buffer]);
        b.with_graph(|g| g.set_note(node, "emit final: until window closes"));
        KTable::new(
            b,
            node,
            self.sources(),
            Some(ks),
            Some(vs),
            self.store_name().to_string(),
        )
        .with_windows(w)
    }
}
