//! [`KStream`]: a typed stream of records and its operators.

use std::sync::Arc;

use stream_core::data::Data;
use stream_core::graph::{TopicRef, repartition_suffix};
use stream_core::serde::{Serde, builtin_serde, erase};
use stream_core::{Processor, TopologyError};

use crate::builder::StreamsBuilder;
use crate::grouped::KGroupedStream;
use crate::ops::{self, OpFn};
use crate::options::{Grouped, Produced};

/// Where a record came from, for operators that show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp: i64,
}

impl RecordMeta {
    /// The record being processed in `ctx`, with `timestamp`.
    fn of(ctx: &stream_core::Context<'_>, timestamp: i64) -> Self {
        match ctx.origin() {
            Some(o) => RecordMeta {
                topic: o.topic.clone(),
                partition: o.partition,
                offset: o.offset,
                timestamp,
            },
            None => RecordMeta {
                topic: String::new(),
                partition: -1,
                offset: -1,
                timestamp,
            },
        }
    }
}

/// One branch's test in [`KStream::split`]: does the record belong to it?
pub type Predicate<K, V> = Box<dyn Fn(&K, &V) -> bool + Send + Sync>;

/// A typed stream of key-value records.
///
/// Operators return new streams; the graph they describe is built by
/// [`StreamsBuilder::build`].
pub struct KStream<K, V> {
    pub(crate) b: StreamsBuilder,
    pub(crate) node: usize,
    pub(crate) sources: Vec<String>,
    pub(crate) key_serde: Option<Arc<dyn Serde<K>>>,
    pub(crate) value_serde: Option<Arc<dyn Serde<V>>>,
    pub(crate) key_changed: bool,
}

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        KStream {
            b: self.b.clone(),
            node: self.node,
            sources: self.sources.clone(),
            key_serde: self.key_serde.clone(),
            value_serde: self.value_serde.clone(),
            key_changed: self.key_changed,
        }
    }
}

impl<K: Data + Clone, V: Data + Clone> KStream<K, V> {
    pub(crate) fn new(
        b: StreamsBuilder,
        node: usize,
        sources: Vec<String>,
        key_serde: Option<Arc<dyn Serde<K>>>,
        value_serde: Option<Arc<dyn Serde<V>>>,
        key_changed: bool,
    ) -> Self {
        KStream {
            b,
            node,
            sources,
            key_serde,
            value_serde,
            key_changed,
        }
    }

    fn derive<K2: Data + Clone, V2: Data + Clone>(
        &self,
        node: usize,
        key_serde: Option<Arc<dyn Serde<K2>>>,
        value_serde: Option<Arc<dyn Serde<V2>>>,
        key_changed: bool,
    ) -> KStream<K2, V2> {
        KStream::new(
            self.b.clone(),
            node,
            self.sources.clone(),
            key_serde,
            value_serde,
            key_changed,
        )
    }

    fn op(&self, kind: &'static str, body: OpFn) -> usize {
        self.b
            .add_processor(kind, ops::factory(body), &[self.node], Vec::new())
    }

    /// Keeps the records for which `predicate` holds.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").filter(|_k, v| v.len() > 2).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "a", "hi");
    /// d.pipe_str("in", "b", "hello");
    /// assert_eq!(d.output_utf8("out"), vec![("b".to_string(), "hello".to_string())]);
    /// ```
    pub fn filter(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KStream<K, V> {
        let node = self.op(
            "filter",
            Arc::new(move |ctx, r| {
                let (k, v) = ops::borrow_kv::<K, V>(ctx, &r)?;
                if predicate(k, v) {
                    ctx.forward(r);
                }
                Ok(())
            }),
        );
        self.derive(
            node,
            self.key_serde.clone(),
            self.value_serde.clone(),
            self.key_changed,
        )
    }

    /// Drops the records for which `predicate` holds.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").filter_not(|_k, v| v.is_empty()).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "a", "");
    /// d.pipe_str("in", "b", "x");
    /// assert_eq!(d.output_utf8("out"), vec![("b".to_string(), "x".to_string())]);
    /// ```
    pub fn filter_not(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KStream<K, V> {
        self.filter(move |k, v| !predicate(k, v))
    }

    /// Replaces each record's key and value. The key changes, so a later
    /// grouping repartitions.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").map(|k, v| (v, k)).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "key", "value");
    /// assert_eq!(d.output_utf8("out"), vec![("value".to_string(), "key".to_string())]);
    /// ```
    pub fn map<K2: Data + Clone, V2: Data + Clone>(
        &self,
        f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let node = self.op(
            "map",
            Arc::new(move |ctx, r| {
                let (k, v, ts, h) = ops::take_kv::<K, V>(ctx, r)?;
                let (k2, v2) = f(k, v);
                ctx.forward(ops::record(k2, v2, ts, h));
                Ok(())
            }),
        );
        self.derive(node, builtin_serde::<K2>(), builtin_serde::<V2>(), true)
    }

    /// Replaces each record's value; the key is kept.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").map_values(|v| v.to_uppercase()).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "abc");
    /// assert_eq!(d.output_utf8("out"), vec![("k".to_string(), "ABC".to_string())]);
    /// ```
    pub fn map_values<V2: Data + Clone>(
        &self,
        f: impl Fn(V) -> V2 + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let node = self.op(
            "map-values",
            Arc::new(move |ctx, r| {
                let node = ctx.node_name();
                let v = stream_core::data::downcast::<V>(r.value, node)?;
                ctx.forward(stream_core::Record {
                    key: r.key,
                    value: Box::new(f(v)),
                    timestamp: r.timestamp,
                    headers: r.headers,
                });
                Ok(())
            }),
        );
        self.derive(
            node,
            self.key_serde.clone(),
            builtin_serde::<V2>(),
            self.key_changed,
        )
    }

    /// Turns each record into zero or more records.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .flat_map(|_k, v| v.split(' ').map(|w| (w.to_string(), v.clone())).collect::<Vec<_>>())
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "a b");
    /// assert_eq!(d.output_utf8("out").len(), 2);
    /// ```
    pub fn flat_map<K2: Data + Clone, V2: Data + Clone, I: IntoIterator<Item = (K2, V2)>>(
        &self,
        f: impl Fn(K, V) -> I + Send + Sync + 'static,
    ) -> KStream<K2, V2> {
        let node = self.op(
            "flat-map",
            Arc::new(move |ctx, r| {
                let (k, v, ts, h) = ops::take_kv::<K, V>(ctx, r)?;
                for (k2, v2) in f(k, v) {
                    ctx.forward(ops::record(k2, v2, ts, h.clone()));
                }
                Ok(())
            }),
        );
        self.derive(node, builtin_serde::<K2>(), builtin_serde::<V2>(), true)
    }

    /// Turns each value into zero or more values; the key is kept.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .flat_map_values(|v| v.split(',').map(str::to_string).collect::<Vec<_>>())
    ///     .to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "x,y,z");
    /// let values: Vec<String> = d.output_utf8("out").into_iter().map(|(_, v)| v).collect();
    /// assert_eq!(values, vec!["x", "y", "z"]);
    /// ```
    pub fn flat_map_values<V2: Data + Clone, I: IntoIterator<Item = V2>>(
        &self,
        f: impl Fn(V) -> I + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let node = self.op(
            "flat-map-values",
            Arc::new(move |ctx, r| {
                let (k, v, ts, h) = ops::take_kv::<K, V>(ctx, r)?;
                for v2 in f(v) {
                    ctx.forward(ops::record(k.clone(), v2, ts, h.clone()));
                }
                Ok(())
            }),
        );
        self.derive(
            node,
            self.key_serde.clone(),
            builtin_serde::<V2>(),
            self.key_changed,
        )
    }

    /// Replaces each record's key with `f(key, value)`.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").select_key(|_k, v| v.len() as i64).map_values(|v| v).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "four");
    /// assert_eq!(d.records("out")[0].key.as_deref(), Some(&4i64.to_be_bytes()[..]));
    /// ```
    pub fn select_key<K2: Data + Clone>(
        &self,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
    ) -> KStream<K2, V> {
        let node = self.op(
            "select-key",
            Arc::new(move |ctx, r| {
                let (k, v) = ops::borrow_kv::<K, V>(ctx, &r)?;
                let k2 = f(k, v);
                ctx.forward(stream_core::Record {
                    key: Box::new(k2),
                    value: r.value,
                    timestamp: r.timestamp,
                    headers: r.headers,
                });
                Ok(())
            }),
        );
        self.derive(node, builtin_serde::<K2>(), self.value_serde.clone(), true)
    }

    /// Calls `f` on each record and passes it on unchanged.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use stream_dsl::prelude::*;
    ///
    /// let seen = Arc::new(Mutex::new(0));
    /// let counter = seen.clone();
    /// let b = StreamsBuilder::new();
    /// b.source("in").peek(move |_, _| *counter.lock().unwrap() += 1).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "v");
    /// assert_eq!(*seen.lock().unwrap(), 1);
    /// assert_eq!(d.output_utf8("out").len(), 1);
    /// ```
    pub fn peek(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) -> KStream<K, V> {
        let node = self.op(
            "peek",
            Arc::new(move |ctx, r| {
                let (k, v) = ops::borrow_kv::<K, V>(ctx, &r)?;
                f(k, v);
                ctx.forward(r);
                Ok(())
            }),
        );
        self.derive(
            node,
            self.key_serde.clone(),
            self.value_serde.clone(),
            self.key_changed,
        )
    }

    /// Calls `f` on each record; ends the stream.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use stream_dsl::prelude::*;
    ///
    /// let got = Arc::new(Mutex::new(Vec::new()));
    /// let sink = got.clone();
    /// let b = StreamsBuilder::new();
    /// b.source("in").for_each(move |k, v| sink.lock().unwrap().push(format!("{k}={v}")));
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "a", "1");
    /// assert_eq!(*got.lock().unwrap(), vec!["a=1"]);
    /// ```
    pub fn for_each(&self, f: impl Fn(&K, &V) + Send + Sync + 'static) {
        self.op(
            "for-each",
            Arc::new(move |ctx, r| {
                let (k, v) = ops::borrow_kv::<K, V>(ctx, &r)?;
                f(k, v);
                Ok(())
            }),
        );
    }

    /// Calls `f` with each record's origin (topic, partition, offset,
    /// timestamp) and its key and value; ends the stream.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use stream_dsl::prelude::*;
    ///
    /// let lines = Arc::new(Mutex::new(Vec::new()));
    /// let out = lines.clone();
    /// let b = StreamsBuilder::new();
    /// b.source("in").for_each_with_meta(move |m, _k, v| out.lock().unwrap().push(format!("{}:{}:{}: {v}", m.topic, m.partition, m.offset)));
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "hello");
    /// assert_eq!(*lines.lock().unwrap(), vec!["in:0:0: hello"]);
    /// ```
    pub fn for_each_with_meta(&self, f: impl Fn(&RecordMeta, &K, &V) + Send + Sync + 'static) {
        self.op(
            "for-each",
            Arc::new(move |ctx, r| {
                let (k, v) = ops::borrow_kv::<K, V>(ctx, &r)?;
                f(&RecordMeta::of(ctx, r.timestamp), k, v);
                Ok(())
            }),
        );
    }

    /// Maps each value with its record's origin and timestamp at hand
    /// (Kafka Streams reaches them through a processor's context).
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").map_values_with_meta(|m, v| format!("{v}@{}", m.timestamp)).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str_at("in", "k", "hello", 42);
    /// assert_eq!(d.output_utf8("out")[0].1, "hello@42");
    /// ```
    pub fn map_values_with_meta<V2: Data + Clone>(
        &self,
        f: impl Fn(&RecordMeta, V) -> V2 + Send + Sync + 'static,
    ) -> KStream<K, V2> {
        let node = self.op(
            "map-values",
            Arc::new(move |ctx, r| {
                let meta = RecordMeta::of(ctx, r.timestamp);
                let v = stream_core::data::downcast::<V>(r.value, ctx.node_name())?;
                ctx.forward(ops::record_dyn(r.key, f(&meta, v), r.timestamp, r.headers));
                Ok(())
            }),
        );
        self.derive(
            node,
            self.key_serde.clone(),
            builtin_serde::<V2>(),
            self.key_changed,
        )
    }

    /// Splits the stream by predicates: each record goes to the first branch
    /// whose predicate holds; records that match none are dropped (end with
    /// `|_, _| true` for a default branch).
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// let branches = b.source("in").split(vec![
    ///     Box::new(|_k: &String, v: &String| v.starts_with('a')),
    ///     Box::new(|_k: &String, _v: &String| true),
    /// ]);
    /// branches[0].to_topic("a");
    /// branches[1].to_topic("rest");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "1", "apple");
    /// d.pipe_str("in", "2", "pear");
    /// assert_eq!(d.output_utf8("a"), vec![("1".to_string(), "apple".to_string())]);
    /// assert_eq!(d.output_utf8("rest"), vec![("2".to_string(), "pear".to_string())]);
    /// ```
    pub fn split(&self, predicates: Vec<Predicate<K, V>>) -> Vec<KStream<K, V>> {
        let n = predicates.len();
        let predicates = Arc::new(predicates);
        let split = self.op(
            "split",
            Arc::new(move |ctx, r| {
                let (k, v) = ops::borrow_kv::<K, V>(ctx, &r)?;
                if let Some(i) = predicates.iter().position(|p| p(k, v)) {
                    ctx.forward_to(i, r);
                }
                Ok(())
            }),
        );
        (0..n)
            .map(|_| {
                let node = self.b.add_processor(
                    "branch",
                    ops::factory(Arc::new(|ctx, r| {
                        ctx.forward(r);
                        Ok(())
                    })),
                    &[split],
                    Vec::new(),
                );
                self.derive(
                    node,
                    self.key_serde.clone(),
                    self.value_serde.clone(),
                    self.key_changed,
                )
            })
            .collect()
    }

    /// Merges another stream of the same types into this one.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("a").merge(&b.source("b")).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("a", "k", "1");
    /// d.pipe_str("b", "k", "2");
    /// assert_eq!(d.output_utf8("out").len(), 2);
    /// ```
    pub fn merge(&self, other: &KStream<K, V>) -> KStream<K, V> {
        let node = self.b.add_processor(
            "merge",
            ops::factory(Arc::new(|ctx, r| {
                ctx.forward(r);
                Ok(())
            })),
            &[self.node, other.node],
            Vec::new(),
        );
        let mut sources = self.sources.clone();
        sources.extend(other.sources.iter().cloned());
        sources.sort();
        sources.dedup();
        KStream::new(
            self.b.clone(),
            node,
            sources,
            self.key_serde.clone(),
            self.value_serde.clone(),
            self.key_changed || other.key_changed,
        )
    }

    /// Sends the stream through an internal topic
    /// (`<app>-<name>-repartition`), partitioned by murmur2 of the key, so
    /// that downstream each key is handled by exactly one task.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").select_key(|_k, v| v.clone()).repartition().to_topic("out");
    /// let topology = b.build().unwrap();
    /// assert!(topology.describe("app").contains("app-in-repartition-repartition"));
    /// let mut d = TestDriver::new(topology, "app");
    /// d.pipe_str("in", "k", "v");
    /// assert_eq!(d.output_utf8("out"), vec![("v".to_string(), "v".to_string())]);
    /// ```
    pub fn repartition(&self) -> KStream<K, V> {
        let name = self.b.derived_name(&self.sources, "repartition");
        match (self.key_serde.clone(), self.value_serde.clone()) {
            (Some(k), Some(v)) => self.through_internal(&repartition_suffix(&name), k, v),
            _ => {
                self.b.record_error(TopologyError::MissingSerde(format!(
                    "repartition after {}: no serde known for key {} or value {}; set them with with_serdes",
                    self.sources.join("+"),
                    std::any::type_name::<K>(),
                    std::any::type_name::<V>()
                )));
                self.clone()
            }
        }
    }

    pub(crate) fn through_internal(
        &self,
        suffix: &str,
        k: Arc<dyn Serde<K>>,
        v: Arc<dyn Serde<V>>,
    ) -> KStream<K, V> {
        self.through_internal_with(suffix, k, v, None)
    }

    /// [`through_internal`](Self::through_internal) with a fixed partition
    /// count (`None`: its input's).
    pub(crate) fn through_internal_with(
        &self,
        suffix: &str,
        k: Arc<dyn Serde<K>>,
        v: Arc<dyn Serde<V>>,
        partitions: Option<i32>,
    ) -> KStream<K, V> {
        let sink_name = self.b.node_name("repartition-sink");
        let source_name = self.b.node_name("repartition-source");
        let node = self.b.with_graph(|g| {
            g.add_repartition_topic(suffix, partitions);
            g.add_sink(
                sink_name,
                TopicRef::Internal(suffix.to_string()),
                erase(k.clone()),
                erase(v.clone()),
                None,
                &[self.node],
            );
            g.add_source(
                source_name,
                vec![TopicRef::Internal(suffix.to_string())],
                erase(k.clone()),
                erase(v.clone()),
            )
        });
        KStream::new(
            self.b.clone(),
            node,
            self.sources.clone(),
            Some(k),
            Some(v),
            false,
        )
    }

    /// Sets the serdes used where this stream is written (sinks, repartition topics).
    pub fn with_serdes(&self, key: impl Serde<K>, value: impl Serde<V>) -> KStream<K, V> {
        let mut s = self.clone();
        s.key_serde = Some(Arc::new(key));
        s.value_serde = Some(Arc::new(value));
        s
    }

    /// Runs a custom processor with access to the named stores (declared
    /// with [`StreamsBuilder::add_store`]); it forwards records of types
    /// `K2`, `V2`.
    ///
    /// ```
    /// use stream_core::data::downcast_ref;
    /// use stream_core::{Context, KeyValueStore, ProcessError, Processor, Record};
    /// use stream_dsl::prelude::*;
    ///
    /// /// Forwards only the first record of each key.
    /// struct FirstOnly;
    /// impl Processor for FirstOnly {
    ///     fn process(&mut self, ctx: &mut Context<'_>, r: Record) -> Result<(), ProcessError> {
    ///         let key = downcast_ref::<String>(&r.key, "first-only")?.clone();
    ///         let mut seen = ctx.store("seen")?;
    ///         if seen.get(key.as_bytes())?.is_none() {
    ///             seen.put(key.as_bytes(), vec![1])?;
    ///             ctx.forward(r);
    ///         }
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let b = StreamsBuilder::new();
    /// b.add_store("seen");
    /// b.source("in").process::<String, String, _>(|| FirstOnly, &["seen"]).to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "a", "1");
    /// d.pipe_str("in", "a", "2");
    /// assert_eq!(d.output_utf8("out"), vec![("a".to_string(), "1".to_string())]);
    /// ```
    pub fn process<K2: Data + Clone, V2: Data + Clone, P: Processor + 'static>(
        &self,
        make: impl Fn() -> P + Send + Sync + 'static,
        stores: &[&str],
    ) -> KStream<K2, V2> {
        let factory: stream_core::graph::ProcessorFactory =
            Arc::new(move || Box::new(make()) as Box<dyn Processor>);
        let node = self.b.add_processor(
            "process",
            factory,
            &[self.node],
            stores.iter().map(|s| s.to_string()).collect(),
        );
        self.derive(node, builtin_serde::<K2>(), builtin_serde::<V2>(), true)
    }

    /// Writes the stream to `topic` with the stream's serdes (built-in types
    /// have them; others need [`to_topic_with`](Self::to_topic_with)).
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").to_topic("out");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "v");
    /// assert_eq!(d.output_utf8("out").len(), 1);
    /// ```
    pub fn to_topic(&self, topic: &str) {
        match (self.key_serde.clone(), self.value_serde.clone()) {
            (Some(k), Some(v)) => self.to_topic_with(topic, Produced { key: k, value: v, partitioner: None }),
            _ => self.b.record_error(TopologyError::MissingSerde(format!(
                "sink to `{topic}`: no serde known for key {} or value {}; use to_topic_with(topic, Produced::with(..))",
                std::any::type_name::<K>(),
                std::any::type_name::<V>()
            ))),
        }
    }

    /// Writes the stream to `topic` with the given serdes and partitioner.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, Clone)]
    /// struct Action { customer: String }
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .map_values(|email| Action { customer: email })
    ///     .to_topic_with("actions", Produced::<String, Action>::json().with_partitioner(|_, _, _| 0));
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// d.pipe_str("in", "k", "a@b.c");
    /// assert_eq!(d.output_utf8("actions")[0].1, r#"{"customer":"a@b.c"}"#);
    /// ```
    pub fn to_topic_with(&self, topic: &str, produced: Produced<K, V>) {
        let name = self.b.node_name("sink");
        let node = self.node;
        self.b.with_graph(|g| {
            g.add_sink(
                name,
                TopicRef::External(topic.to_string()),
                erase(produced.key),
                erase(produced.value),
                produced.partitioner,
                &[node],
            )
        });
    }

    /// Groups by a new key computed from each record. The grouping goes
    /// through a repartition topic so that each key is aggregated in exactly
    /// one task however the input was partitioned.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("words")
    ///     .group_by(|_k, word| word.clone())
    ///     .count(Materialized::as_store("word-counts"))
    ///     .to_topic("counts");
    /// let mut d = TestDriver::new(b.build().unwrap(), "app");
    /// for w in ["a", "b", "a"] { d.pipe_str("words", "", w); }
    /// let latest = d.latest_per_key("counts");
    /// assert_eq!(latest[&b"a".to_vec()], 2i64.to_be_bytes().to_vec());
    /// ```
    pub fn group_by<K2: Data + Clone>(
        &self,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
    ) -> KGroupedStream<K2, V> {
        let keyed = self.select_key(f);
        KGroupedStream::new(keyed, builtin_serde::<K2>(), None, true)
    }

    /// Like [`group_by`](Self::group_by), with explicit serdes and name.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    /// use stream_core::serde::StringSerde;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in")
    ///     .group_by_with(|_k, v| v.clone(), Grouped::with(StringSerde, StringSerde).named("by-value"))
    ///     .count(Materialized::default())
    ///     .to_topic("out");
    /// assert!(b.build().unwrap().describe("app").contains("app-by-value-repartition"));
    /// ```
    pub fn group_by_with<K2: Data + Clone>(
        &self,
        f: impl Fn(&K, &V) -> K2 + Send + Sync + 'static,
        grouped: Grouped<K2, V>,
    ) -> KGroupedStream<K2, V> {
        let mut keyed = self.select_key(f);
        if let Some(v) = grouped.value.clone() {
            keyed.value_serde = Some(v);
        }
        KGroupedStream::new(keyed, Some(grouped.key), grouped.name, grouped.repartition)
            .with_partitions(grouped.partitions)
    }

    /// Groups by the current key. Repartitions only if an upstream operator
    /// changed the key.
    ///
    /// ```
    /// use stream_dsl::prelude::*;
    ///
    /// let b = StreamsBuilder::new();
    /// b.source("in").group_by_key().count(Materialized::default()).to_topic("out");
    /// let topology = b.build().unwrap();
    /// assert!(!topology.describe("app").contains("repartition"));
    /// let mut d = TestDriver::new(topology, "app");
    /// d.pipe_str("in", "k", "x");
    /// d.pipe_str("in", "k", "y");
    /// assert_eq!(d.latest_per_key("out")[&b"k".to_vec()], 2i64.to_be_bytes().to_vec());
    /// ```
    pub fn group_by_key(&self) -> KGroupedStream<K, V> {
        KGroupedStream::new(self.clone(), self.key_serde.clone(), None, self.key_changed)
    }
}
